//! The server (preloaded base) side: accept, authenticate, receive, double-fork, adopt.
//!
//! # Single-threaded, by design
//!
//! The grandchild of every adoption keeps running the program's Rust code (Zygote style), which
//! is only sound when the forking process has exactly one thread: a lock held by another thread
//! at fork time (the allocator's, stdout's, a logger's) would stay locked forever in the child.
//! [`ForkServer::serve`] checks `/proc/self/task` before every fork and fails with
//! [`ServerError::NotSingleThreaded`] instead of forking a multi-threaded process. The
//! intermediate child only calls `fork` and `_exit`, both async-signal-safe.
//!
//! # Signals
//!
//! While a [`ForkServer`] exists (with [`ServerConfig::handle_signals`], the default), SIGTERM
//! and SIGINT are blocked in the process and read from a signalfd by [`ForkServer::serve`],
//! which then returns [`Outcome::Stopped`]. The adopted grandchild gets the original signal mask
//! back. Dropping the server (in the process that bound it) restores the mask and removes the
//! socket file.
//!
//! # Descriptors
//!
//! Every fd the server opens is CLOEXEC, and received fds arrive with `MSG_CMSG_CLOEXEC`. That
//! matters only if the vassal later execs: an adopted vassal does not exec, so the grandchild
//! closes the listener, the signalfd and every other connection before it returns the
//! [`Adoption`]. Fds the *program* owns (its own emperor channel, files, sockets) are the

mod adopt;
mod conn;
mod error;
mod types;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{getpid, Pid};

use crate::client::poll_timeout;
use adopt::waitpid_blocking;
use conn::{Conn, SCM_MAX_FD};

pub use adopt::thread_count;
pub use error::ServerError;
pub use types::{Adoption, Outcome, PeerCred, ServerConfig, ServerStats};

/// A fork server bound to a unix socket.
#[derive(Debug)]
pub struct ForkServer {
    listener: Option<UnixListener>,
    path: PathBuf,
    ident: (u64, u64),
    owner: Pid,
    config: ServerConfig,
    signals: Option<SignalFd>,
    old_mask: Option<SigSet>,
    conns: Vec<Conn>,
    /// Intermediate children not reaped yet, each with a pidfd to poll for its exit.
    intermediates: Vec<(Pid, OwnedFd)>,
    cmsg: Vec<u8>,
    stats: ServerStats,
}

impl ForkServer {
    /// Binds `path` (replacing a stale socket nobody listens on) and, with
    /// [`ServerConfig::handle_signals`], blocks SIGTERM/SIGINT in favour of a signalfd.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<ForkServer, ServerError> {
        let path = path.as_ref().to_owned();
        let io = |op, source| ServerError::Io {
            op,
            path: path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket { path });
            }
            match UnixStream::connect(&path) {
                Ok(_) => return Err(ServerError::InUse { path }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(&path).map_err(|e| io("remove stale socket", e))?;
                }
                Err(e) => return Err(io("probe existing socket", e)),
            }
        }
        let listener = UnixListener::bind(&path).map_err(|e| io("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("set_nonblocking", e))?;
        if let Some(mode) = config.socket_mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io("stat", e))?;
        let (signals, old_mask) = if config.handle_signals {
            let mut mask = SigSet::empty();
            mask.add(Signal::SIGTERM);
            mask.add(Signal::SIGINT);
            let mut old = SigSet::empty();
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old))
                .map_err(|e| io("sigprocmask", e.into()))?;
            let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(|e| io("signalfd", e.into()))?;
            (Some(sfd), Some(old))
        } else {
            (None, None)
        };
        let cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD], libc::ucred);
        tracing::info!(path = %path.display(), "fork server listening");
        Ok(ForkServer {
            listener: Some(listener),
            ident: (meta.dev(), meta.ino()),
            path,
            owner: getpid(),
            config,
            signals,
            old_mask,
            conns: Vec::new(),
            intermediates: Vec::new(),
            cmsg,
            stats: ServerStats::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connections currently being read.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    fn err(&self, op: &'static str, source: impl Into<io::Error>) -> ServerError {
        ServerError::Io {
            op,
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// Serves until an adoption happens (then returns, in the grandchild only,
    /// [`Outcome::Adopted`]), a stop signal arrives, or one of `watch` becomes readable.
    ///
    /// Many clients are served at once: each connection has its own buffer and deadline, and
    /// nothing blocks: the intermediate child of each adoption is reaped when its pidfd says it
    /// has exited (a blocking `waitpid` only where pidfds are unavailable).
    pub fn serve(&mut self, watch: &[BorrowedFd<'_>]) -> Result<Outcome, ServerError> {
        loop {
            self.expire(Instant::now());
            let Some(polled) = self.poll_once(watch)? else {
                continue; // EINTR
            };
            if let Some(outcome) = self.handle_polled(&polled, watch.len())? {
                return Ok(outcome);
            }
        }
    }

    /// One `poll` over the signalfd, the listener (while a slot may free up), the
    /// connections, `watch` and the intermediate children's pidfds. `None` on EINTR.
    fn poll_once(&self, watch: &[BorrowedFd<'_>]) -> Result<Option<Polled>, ServerError> {
        let now = Instant::now();
        // Full: keep listening only while some connection may be silent (then a newcomer
        // evicts it); otherwise newcomers wait in the backlog until a slot frees up.
        let accepting = self.conns.len() < self.config.max_connections.max(1)
            || self.conns.iter().any(|c| !c.got_bytes);
        let Some(listener) = self.listener.as_ref() else {
            return Err(ServerError::Closed {
                path: self.path.clone(),
            });
        };
        let next_deadline = self.conns.iter().map(Conn::next_deadline).min();
        let timeout = next_deadline
            .map(|d| poll_timeout(d.saturating_duration_since(now)))
            .unwrap_or(PollTimeout::NONE);

        let mut pfds = Vec::with_capacity(2 + self.conns.len() + watch.len());
        let sig_at = self.signals.as_ref().map(|s| {
            pfds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            pfds.len() - 1
        });
        let listen_at = accepting.then(|| {
            pfds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            pfds.len() - 1
        });
        let conns_at = pfds.len();
        pfds.extend(
            self.conns
                .iter()
                .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLIN)),
        );
        let watch_at = pfds.len();
        pfds.extend(watch.iter().map(|w| PollFd::new(*w, PollFlags::POLLIN)));
        let inter_at = pfds.len();
        pfds.extend(
            self.intermediates
                .iter()
                .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );

        match nix::poll::poll(&mut pfds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(self.err("poll", e)),
        }
        let revents = pfds
            .iter()
            .map(|p| p.revents().unwrap_or(PollFlags::empty()))
            .collect();
        Ok(Some(Polled {
            revents,
            sig_at,
            listen_at,
            conns_at,
            watch_at,
            inter_at,
        }))
    }

    /// Acts on one poll's readiness: reaps intermediate children, then a stop signal, a
    /// watched fd, the connections (at most one adoption), and finally new clients.
    fn handle_polled(
        &mut self,
        polled: &Polled,
        watched: usize,
    ) -> Result<Option<Outcome>, ServerError> {
        // Reap intermediate children whose pidfd says they exited.
        for i in (0..self.intermediates.len()).rev() {
            if polled.ready(polled.inter_at + i) {
                let (pid, _fd) = self.intermediates.swap_remove(i);
                self.account_intermediate(pid, waitpid(pid, Some(WaitPidFlag::WNOHANG)));
            }
        }
        if let Some(i) = polled.sig_at {
            if polled.ready(i) {
                if let Some(sig) = self.read_signal()? {
                    tracing::info!(path = %self.path.display(), signal = %sig, "fork server stopping");
                    return Ok(Some(Outcome::Stopped(sig)));
                }
            }
        }
        for index in 0..watched {
            let r = polled.revents[polled.watch_at + index];
            if r.contains(PollFlags::POLLNVAL) {
                return Err(ServerError::InvalidWatchedFd { index });
            }
            if !r.is_empty() {
                return Ok(Some(Outcome::Readable(index)));
            }
        }
        if let Some((conn, req)) = self.read_ready_conns(|i| polled.ready(polled.conns_at + i)) {
            if let Some(adoption) = self.adopt(conn, req)? {
                return Ok(Some(Outcome::Adopted(adoption)));
            }
        }
        if let Some(i) = polled.listen_at {
            if polled.ready(i) {
                self.accept_all()?;
            }
        }
        Ok(None)
    }

    fn read_signal(&mut self) -> Result<Option<Signal>, ServerError> {
        let Some(sfd) = self.signals.as_mut() else {
            return Ok(None);
        };
        match sfd.read_signal() {
            Ok(Some(info)) => Ok(Signal::try_from(info.ssi_signo as i32).ok()),
            Ok(None) | Err(Errno::EINTR) | Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(self.err("read signalfd", e)),
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        if getpid() != self.owner {
            return;
        }
        self.listener = None;
        self.signals = None;
        for (pid, _fd) in std::mem::take(&mut self.intermediates) {
            let _ = waitpid_blocking(pid); // exiting already; do not leave zombies
        }
        if let Some(old) = self.old_mask.take() {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The readiness of one `poll`, and where each kind of source starts in it.
#[derive(Debug)]
struct Polled {
    revents: Vec<PollFlags>,
    sig_at: Option<usize>,
    listen_at: Option<usize>,
    conns_at: usize,
    watch_at: usize,
    inter_at: usize,
}

impl Polled {
    fn ready(&self, i: usize) -> bool {
        !self.revents[i].is_empty()
    }
}
