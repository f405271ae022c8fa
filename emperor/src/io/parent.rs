//! Our own emperor's channel (sub-emperor mode, `UWSGI_EMPEROR_FD` set): this emperor speaks
//! the vassal side to it like a uWSGI sub-emperor; its bytes go to the core as
//! `Event::FromEmperor`, its end as `Event::EmperorGone`.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use mio::net::UnixStream;
use mio::{Interest, Token};
use tracing::{info, warn};

use super::registry::Owner;
use super::source::Cx;
use crate::core::Event;

/// The channel to our emperor.
#[derive(Debug)]
pub struct Parent {
    stream: UnixStream,
    token: Token,
}

impl Parent {
    /// The channel named by `UWSGI_EMPEROR_FD`, when this emperor runs as a vassal.
    pub fn from_env(cx: &mut Cx<'_>) -> Option<Parent> {
        let fd = std::env::var("UWSGI_EMPEROR_FD")
            .ok()
            .and_then(|v| v.trim().parse::<RawFd>().ok())?;
        let is_socket = nix::sys::stat::fstat(
            // SAFETY: the fd number comes from our emperor; borrowing it for fstat only.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        )
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false);
        if !is_socket {
            warn!("UWSGI_EMPEROR_FD={fd} is not a socket: ignoring it");
            return None;
        }
        // SAFETY: per the emperor protocol this fd is the vassal end of our emperor's channel,
        // handed to this process to own; nothing else in the process uses it.
        let std_stream =
            unsafe { <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let p = Parent::new(std_stream, cx).ok()?;
        info!("has_emperor mode detected (fd: {fd}): governing vassals for my own emperor");
        Some(p)
    }

    /// Watches `stream` (CLOEXEC, non-blocking) as the channel to our emperor.
    pub fn new(stream: std::os::unix::net::UnixStream, cx: &mut Cx<'_>) -> io::Result<Parent> {
        let _ = nix::fcntl::fcntl(
            &stream,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream);
        let token = cx.register(&mut stream, Owner::Parent, Interest::READABLE)?;
        Ok(Parent { stream, token })
    }

    /// "ready" (1) once initialised, "loyal" (17) once governing.
    pub fn announce(&mut self) {
        let _ = self.stream.write_all(&[1, 17]);
    }

    /// Reads what our emperor sent. `false` once it is gone (then `EmperorGone` was reported
    /// and the channel deregistered: drop this source).
    pub fn on_ready(&mut self, cx: &mut Cx<'_>) -> bool {
        let mut buf = [0u8; 64];
        loop {
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                cx.deregister(&mut self.stream, self.token);
                cx.core(Event::EmperorGone);
                return false;
            }
            for &b in &buf[..n] {
                cx.core(Event::FromEmperor(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::Tokens;
    use super::super::source::Output;
    use super::*;

    #[test]
    fn bytes_go_to_the_core_and_eof_says_gone() {
        let poll = mio::Poll::new().unwrap();
        let mut tokens = Tokens::new();
        let mut out = Vec::new();
        let mut cx = Cx {
            now: std::time::Instant::now(),
            registry: poll.registry(),
            tokens: &mut tokens,
            out: &mut out,
        };
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Parent::new(ours, &mut cx).unwrap();
        p.announce();
        let mut hello = [0u8; 2];
        theirs.read_exact(&mut hello).unwrap();
        assert_eq!(hello, [1, 17]);
        theirs.write_all(&[1, 99, 0]).unwrap();
        assert!(p.on_ready(&mut cx));
        drop(theirs);
        assert!(!p.on_ready(&mut cx));
        let got: Vec<String> = out
            .iter()
            .map(|o| match o {
                Output::Core(ev) => format!("{ev:?}"),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "FromEmperor(1)",
                "FromEmperor(99)",
                "FromEmperor(0)",
                "EmperorGone"
            ]
        );
        assert!(tokens.is_empty());
    }
}
