//! The command socket (`--emperor-command-socket`): uWSGI 2.1's datagram format, one command
//! per datagram.
//!
//! A datagram is a 4-byte uwsgi header (not checked) followed by a vars body with the keys
//! `cmd` (or `command`), `vassal` and `msg`. Commands: `spawn` (start a suspended or on-demand
//! vassal), `respawn` (reload), `stop` (stop it and keep it suspended until a `spawn`),
//! `reset` (lift its backoff; an addition of this emperor) and `log` (print `msg`, control
//! characters escaped). A vassal command goes to the core as [`Event::Command`], which applies
//! it and logs the outcome. A malformed datagram or an unknown command is logged here (at most
//! [`WARN_BURST`] lines per 10 s, then one with a count) and dropped; nothing is answered.
//! Only root and the emperor's own user may command (checked by credentials on a unix socket;
//! UDP must be allowed explicitly).

mod datagram;
#[cfg(test)]
mod tests;

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mio::net::{UdpSocket, UnixDatagram};
use mio::Interest;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use tracing::{info, warn};

pub use self::datagram::{encode, may_command, parse, DatagramError, Order, Request, RequestError};
use super::addr::{self, AddrError, BindAddr};
use super::registry::Owner;
use super::source::Cx;
use crate::core::garbage::{LogLimit, WARN_INTERVAL};
use crate::core::Event;

/// Largest datagram read (as uWSGI).
pub const MAX_DATAGRAM: usize = 4096;
/// Warnings about datagrams (malformed, failed, refused) written per [`WARN_INTERVAL`]; the
/// rest are counted in the next one.
pub const WARN_BURST: u32 = 10;

/// Why the command socket cannot be set up (the emperor does not start).
#[derive(Debug, thiserror::Error)]
pub enum CommandSocketError {
    /// A UDP address without `--emperor-command-allow-udp`.
    #[error(
        "command socket {addr} is UDP: any local user (and any host that reaches it) could stop \
         and start vassals, as its senders cannot be identified; use a unix socket path, or pass \
         --emperor-command-allow-udp to accept that"
    )]
    UdpRefused {
        /// The address as given.
        addr: String,
    },
    /// The address does not parse or resolve, or the path is too long.
    #[error("command socket: {0}")]
    Addr(#[from] AddrError),
    /// `bind` failed.
    #[error("cannot bind the command socket {addr}: {source}")]
    Bind {
        /// The address (the path for a unix socket).
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The socket file cannot be made private.
    #[error("cannot make the command socket {} private (chmod 600): {source}", path.display())]
    Chmod {
        /// The socket file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `SO_PASSCRED` failed.
    #[error(
        "cannot ask for the senders' credentials on the command socket {}: {source}",
        path.display()
    )]
    PassCred {
        /// The socket file.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// The loop cannot watch it.
    #[error("cannot watch the command socket: {0}")]
    Watch(io::Error),
}

#[derive(Debug)]
enum Sock {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket),
}

impl Sock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Unix(s, _) => s,
            Sock::Udp(s) => s,
        }
    }
}

/// The bound command socket, a source of the loop ([`Owner::Command`]).
#[derive(Debug)]
pub struct CommandSocket {
    sock: Sock,
    /// Malformed datagrams and unknown commands.
    warn: LogLimit,
    /// Datagrams from a user who may not command.
    refused: LogLimit,
}

impl CommandSocket {
    /// Binds `addr` (a unix path relative to `cwd`, or `host:port` for UDP, which needs
    /// `allow_udp`) and registers it.
    ///
    /// A unix socket gets mode 0600 and passes its senders' credentials, checked per datagram
    /// ([`may_command`]). UDP senders cannot be identified, so UDP is refused unless allowed;
    /// `:PORT` means 127.0.0.1, never every interface.
    pub fn bind(
        addr: &str,
        cwd: &Path,
        allow_udp: bool,
        cx: &mut Cx<'_>,
    ) -> Result<CommandSocket, CommandSocketError> {
        if addr::is_inet(addr) && !allow_udp {
            return Err(CommandSocketError::UdpRefused {
                addr: addr.to_string(),
            });
        }
        let mut sock = match addr::parse(addr, cwd, addr::LOCALHOST)? {
            BindAddr::Inet(sa) => {
                warn!("command socket {sa} is UDP (--emperor-command-allow-udp): every local user can send it commands");
                Sock::Udp(
                    UdpSocket::bind(sa).map_err(|source| CommandSocketError::Bind {
                        addr: addr.to_string(),
                        source,
                    })?,
                )
            }
            BindAddr::Unix(path) => bind_unix(path)?,
        };
        cx.register(sock.source(), Owner::Command, Interest::READABLE)
            .map_err(CommandSocketError::Watch)?;
        info!("command socket enabled on {addr}");
        Ok(CommandSocket {
            sock,
            warn: LogLimit::default(),
            refused: LogLimit::default(),
        })
    }

    /// About to run as `uid`:`gid`: the unix socket file becomes theirs, so the user the
    /// emperor runs as can still send it commands (mode 0600 keeps everyone else out).
    pub fn hand_over(&self, uid: u32, gid: u32) {
        if let Sock::Unix(_, path) = &self.sock {
            if let Err(e) = std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
                warn!(
                    "cannot hand the command socket {} to uid {uid}: {e}; only root can send it commands",
                    crate::sanitize::esc_path(path)
                );
            }
        }
    }

    /// Readable: reads every pending datagram and reports the commands its senders may send.
    pub fn ready(&mut self, cx: &mut Cx<'_>) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let own = nix::unistd::geteuid().as_raw();
        loop {
            let (n, cred) = match self.recv(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("command socket read failed: {e}");
                    return;
                }
            };
            if matches!(self.sock, Sock::Unix(..)) && !self.allowed(cx, cred, own) {
                continue;
            }
            let problem = match parse(&buf[..n]) {
                Ok(req) => match req.order() {
                    Ok(Order::Log(msg)) => {
                        info!("{}", crate::sanitize::esc(msg));
                        None
                    }
                    Ok(Order::Vassal { cmd, name }) => {
                        cx.core(Event::Command {
                            cmd,
                            name: name.to_string(),
                        });
                        None
                    }
                    Err(e) => Some(format!("{}: {e}", req.cmd)),
                },
                Err(e) => Some(format!("ignoring a malformed datagram ({n} bytes): {e}")),
            };
            if let Some(e) = problem {
                if let Some(more) = self.warn.hit(cx.now, WARN_INTERVAL, WARN_BURST) {
                    warn!(
                        "command socket: {}{}",
                        crate::sanitize::esc(&e),
                        suppressed(more)
                    );
                }
            }
        }
    }

    /// Whether the sender `cred` (`(uid, pid)`, `None` without credentials) may command an
    /// emperor running as `own`; a refusal is logged (rate limited).
    fn allowed(&mut self, cx: &Cx<'_>, cred: Option<(u32, i32)>, own: u32) -> bool {
        if cred.is_some_and(|(uid, _)| may_command(uid, own)) {
            return true;
        }
        if let Some(more) = self.refused.hit(cx.now, WARN_INTERVAL, WARN_BURST) {
            let who = match cred {
                Some((uid, pid)) => format!("uid {uid} (pid {pid})"),
                None => "a sender without credentials".to_string(),
            };
            warn!(
                "command socket: refused a datagram from {who}: only root and the emperor's user (uid {own}) may send commands{}",
                suppressed(more)
            );
        }
        false
    }

    /// Reads one datagram into `buf`: its length and, on a unix socket, the sender's
    /// `(uid, pid)` (`None` if it sent none).
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<(u32, i32)>)> {
        let s = match &self.sock {
            Sock::Udp(s) => return s.recv(buf).map(|n| (n, None)),
            Sock::Unix(s, _) => s,
        };
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut cred = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmCredentials(u) = c {
                    cred = Some((u.uid(), u.pid()));
                }
            }
        }
        let n = if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            // Longer than any command: dropped as malformed.
            0
        } else {
            msg.bytes
        };
        Ok((n, cred))
    }

    /// Removes the socket file.
    pub fn cleanup(&self) {
        if let Sock::Unix(_, p) = &self.sock {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the unix datagram socket `path` (a stale file is removed), private (0600), passing
/// its senders' credentials.
fn bind_unix(path: PathBuf) -> Result<Sock, CommandSocketError> {
    let _ = std::fs::remove_file(&path);
    let s = UnixDatagram::bind(&path).map_err(|source| CommandSocketError::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        CommandSocketError::Chmod {
            path: path.clone(),
            source,
        }
    })?;
    setsockopt(&s, sockopt::PassCred, &true).map_err(|source| CommandSocketError::PassCred {
        path: path.clone(),
        source,
    })?;
    Ok(Sock::Unix(s, path))
}

/// The tail of a rate-limited line: how many like it were not logged.
fn suppressed(more: u64) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(
            " ({more} more like it not logged in the last {} s)",
            WARN_INTERVAL.as_secs()
        )
    }
}
