//! The command socket (`--emperor-command-socket`): uWSGI 2.1's datagram format, one command
//! per datagram.
//!
//! A datagram is a 4-byte uwsgi header (not checked) followed by a vars body with the keys
//! `cmd` (or `command`), `vassal` and `msg`. Commands: `spawn` (start a suspended or on-demand
//! vassal), `respawn` (reload), `stop` (stop it and keep it suspended until a `spawn`),
//! `reset` (lift its backoff; an addition of this emperor) and `log` (print `msg`, control
//! characters escaped). A malformed datagram or an unknown command/vassal is logged (at most
//! [`WARN_BURST`] lines per 10 s, then one with a count) and dropped; nothing is answered. Only root and the emperor's own
//! user may command (checked by credentials on a unix socket; UDP must be allowed explicitly).

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::net::{UdpSocket, UnixDatagram};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use tracing::{info, warn};
use uwsgi_proto::header::HEADER_LEN;
use uwsgi_proto::vars::{self, VarsBuilder};

use crate::core::garbage::{LogLimit, WARN_INTERVAL};
use crate::core::{Core, VassalCommand};

/// The command socket's token in the loop.
pub const TOKEN: Token = Token(1 << 33);
/// Largest datagram read (as uWSGI).
pub const MAX_DATAGRAM: usize = 4096;
/// Warnings about datagrams (malformed, failed, refused) written per [`WARN_INTERVAL`]; the
/// rest are counted in the next one.
pub const WARN_BURST: u32 = 10;

/// One parsed command datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `cmd` / `command`.
    pub cmd: &'a str,
    /// `vassal`, when given.
    pub vassal: Option<&'a str>,
    /// `msg`, when given.
    pub msg: Option<&'a str>,
}

/// Parses a datagram (never panics; every problem is an error that says what is wrong).
pub fn parse(dgram: &[u8]) -> Result<Request<'_>, String> {
    let body = dgram.get(HEADER_LEN..).ok_or_else(|| {
        format!(
            "datagram of {} bytes is shorter than the {HEADER_LEN}-byte uwsgi header",
            dgram.len()
        )
    })?;
    let (mut cmd, mut vassal, mut msg) = (None, None, None);
    for pair in vars::iter(body) {
        let (k, v) = pair.map_err(|e| format!("malformed vars: {e}"))?;
        let slot = match k {
            b"cmd" | b"command" => &mut cmd,
            b"vassal" => &mut vassal,
            b"msg" => &mut msg,
            _ => continue,
        };
        let s = std::str::from_utf8(v)
            .map_err(|_| format!("the value of `{}` is not UTF-8", String::from_utf8_lossy(k)))?;
        *slot = Some(s);
    }
    let cmd = cmd.ok_or("no `cmd` (or `command`) var")?;
    Ok(Request { cmd, vassal, msg })
}

/// Builds a command datagram (what `emperor ctl` sends).
pub fn encode(cmd: &str, vassal: Option<&str>, msg: Option<&str>) -> Result<Vec<u8>, String> {
    let mut b = VarsBuilder::new();
    let e = |e: uwsgi_proto::header::EncodeError| e.to_string();
    b.push("cmd", cmd).map_err(e)?;
    if let Some(v) = vassal {
        b.push("vassal", v).map_err(e)?;
    }
    if let Some(m) = msg {
        b.push("msg", m).map_err(e)?;
    }
    Ok(b.into_packet(0, 0))
}

/// Applies one request to the core; returns what happened (also logged).
pub fn apply(core: &mut Core, now: Instant, req: &Request<'_>) -> Result<String, String> {
    if req.cmd == "log" {
        let msg = crate::sanitize::esc(req.msg.unwrap_or(""));
        info!("{msg}");
        return Ok(format!("logged {msg}"));
    }
    let Some(cmd) = VassalCommand::parse(req.cmd) else {
        return Err(format!(
            "unknown command `{}` (known: spawn, respawn, stop, reset, log)",
            req.cmd
        ));
    };
    let Some(name) = req.vassal.filter(|v| !v.is_empty()) else {
        return Err(format!("command `{}` needs a `vassal` var", req.cmd));
    };
    core.command(now, cmd, name)
}

/// Whether a datagram from `uid` is obeyed by an emperor running as `own`: root and the
/// emperor's own user only.
pub fn may_command(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

#[derive(Debug)]
enum Sock {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket),
}

/// The bound command socket.
#[derive(Debug)]
pub struct CommandSocket {
    sock: Sock,
    /// Malformed or failed commands.
    warn: LogLimit,
    /// Datagrams from a user who may not command.
    refused: LogLimit,
}

impl CommandSocket {
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

    /// Binds `addr` (a unix path relative to `cwd`, or `host:port` for UDP, which needs
    /// `allow_udp`) and registers it.
    ///
    /// A unix socket gets mode 0600 and passes its senders' credentials, checked per datagram
    /// ([`may_command`]). UDP senders cannot be identified, so UDP is refused unless allowed;
    /// `:PORT` means 127.0.0.1, never every interface.
    pub fn bind(
        addr: &str,
        cwd: &Path,
        registry: &Registry,
        allow_udp: bool,
    ) -> Result<CommandSocket, String> {
        let mut sock = if crate::ondemand::is_tcp(addr) {
            if !allow_udp {
                return Err(format!(
                    "command socket {addr} is UDP: any local user (and any host that reaches it) could stop and start vassals, as its senders cannot be identified; use a unix socket path, or pass --emperor-command-allow-udp to accept that"
                ));
            }
            let a = match addr.strip_prefix(':') {
                Some(port) => format!("127.0.0.1:{port}"),
                None => addr.to_string(),
            };
            let sa = std::net::ToSocketAddrs::to_socket_addrs(&a)
                .map_err(|e| format!("bad command socket address {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("bad command socket address {addr}"))?;
            warn!("command socket {sa} is UDP (--emperor-command-allow-udp): every local user can send it commands");
            Sock::Udp(
                UdpSocket::bind(sa)
                    .map_err(|e| format!("cannot bind the command socket {addr}: {e}"))?,
            )
        } else {
            let path = cwd.join(addr);
            if path.as_os_str().len() > crate::ondemand::MAX_UNIX_PATH {
                return Err(format!(
                    "command socket path {} is too long for a unix socket address (at most {} bytes): use a shorter path",
                    path.display(),
                    crate::ondemand::MAX_UNIX_PATH
                ));
            }
            let _ = std::fs::remove_file(&path);
            let s = UnixDatagram::bind(&path)
                .map_err(|e| format!("cannot bind the command socket {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| {
                    format!(
                        "cannot make the command socket {} private (chmod 600): {e}",
                        path.display()
                    )
                },
            )?;
            setsockopt(&s, sockopt::PassCred, &true).map_err(|e| {
                format!(
                    "cannot ask for the senders' credentials on the command socket {}: {e}",
                    path.display()
                )
            })?;
            Sock::Unix(s, path)
        };
        let src: &mut dyn mio::event::Source = match &mut sock {
            Sock::Unix(s, _) => s,
            Sock::Udp(s) => s,
        };
        registry
            .register(src, TOKEN, Interest::READABLE)
            .map_err(|e| format!("cannot watch the command socket: {e}"))?;
        info!("command socket enabled on {addr}");
        Ok(CommandSocket {
            sock,
            warn: LogLimit::default(),
            refused: LogLimit::default(),
        })
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
            // Longer than any command: dropped as malformed below.
            0
        } else {
            msg.bytes
        };
        Ok((n, cred))
    }

    /// Reads every pending datagram and applies those its sender may send.
    pub fn drain(&mut self, core: &mut Core) {
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
            let now = Instant::now();
            if let Sock::Unix(..) = self.sock {
                let refused = match cred {
                    Some((uid, _)) => !may_command(uid, own),
                    None => true,
                };
                if refused {
                    if let Some(more) = self.refused.hit(now, WARN_INTERVAL, WARN_BURST) {
                        let who = match cred {
                            Some((uid, pid)) => format!("uid {uid} (pid {pid})"),
                            None => "a sender without credentials".to_string(),
                        };
                        warn!(
                            "command socket: refused a datagram from {who}: only root and the emperor's user (uid {own}) may send commands{}",
                            suppressed(more)
                        );
                    }
                    continue;
                }
            }
            let result = match parse(&buf[..n]) {
                Ok(req) => apply(core, now, &req).map_err(|e| format!("{}: {e}", req.cmd)),
                Err(e) => Err(format!("ignoring a malformed datagram ({n} bytes): {e}")),
            };
            if let Err(e) = result {
                if let Some(more) = self.warn.hit(now, WARN_INTERVAL, WARN_BURST) {
                    warn!(
                        "command socket: {}{}",
                        crate::sanitize::esc(&e),
                        suppressed(more)
                    );
                }
            }
        }
    }

    /// Removes the socket file.
    pub fn cleanup(&self) {
        if let Sock::Unix(_, p) = &self.sock {
            let _ = std::fs::remove_file(p);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aliases() {
        let d = encode("spawn", Some("w.ini"), None).unwrap();
        assert_eq!(
            parse(&d).unwrap(),
            Request {
                cmd: "spawn",
                vassal: Some("w.ini"),
                msg: None
            }
        );
        let mut b = VarsBuilder::new();
        b.push("command", "log").unwrap();
        b.push("msg", "hello").unwrap();
        b.push("other", "x").unwrap();
        // The header is skipped unchecked, as uWSGI does.
        let mut d = b.into_packet(0, 0);
        d[0] = 99;
        d[1] = 0;
        let r = parse(&d).unwrap();
        assert_eq!((r.cmd, r.msg), ("log", Some("hello")));
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        assert!(parse(b"").unwrap_err().contains("shorter"));
        assert!(parse(b"\0\0\0").unwrap_err().contains("shorter"));
        assert!(parse(b"\0\0\0\0").unwrap_err().contains("no `cmd`"));
        assert!(parse(b"\0\0\0\0\x03\0cmd\x09\0sp")
            .unwrap_err()
            .contains("malformed"));
        assert!(parse(b"\0\0\0\0\0\0").unwrap_err().contains("malformed"));
        assert!(parse(b"\0\0\0\0\x03\0cmd\x01\0\xff")
            .unwrap_err()
            .contains("UTF-8"));
        // Every prefix of a valid datagram parses or errors, never panics.
        let d = encode("stop", Some("a.ini"), Some("m")).unwrap();
        for i in 0..d.len() {
            let _ = parse(&d[..i]);
        }
    }

    #[test]
    fn only_root_and_the_emperors_user_may_command() {
        assert!(may_command(0, 1000));
        assert!(may_command(1000, 1000));
        assert!(!may_command(65534, 1000));
        assert!(may_command(0, 0));
        assert!(!may_command(1000, 0));
    }
}
