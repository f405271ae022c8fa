//! The command socket (`--emperor-command-socket`): uWSGI 2.1's datagram format, one command
//! per datagram.
//!
//! A datagram is a 4-byte uwsgi header (not checked) followed by a vars body with the keys
//! `cmd` (or `command`), `vassal` and `msg`. Commands: `spawn` (start a suspended or on-demand
//! vassal), `respawn` (reload), `stop` (stop it and keep it suspended until a `spawn`),
//! `reset` (lift its backoff; an addition of this emperor) and `log` (print `msg`). A malformed
//! datagram or an unknown command/vassal is logged and dropped; nothing is answered.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::net::{UdpSocket, UnixDatagram};
use mio::{Interest, Registry, Token};
use tracing::{info, warn};
use uwsgi_proto::header::HEADER_LEN;
use uwsgi_proto::vars::{self, VarsBuilder};

use crate::core::{Core, VassalCommand};

/// The command socket's token in the loop.
pub const TOKEN: Token = Token(1 << 33);
/// Largest datagram read (as uWSGI).
pub const MAX_DATAGRAM: usize = 4096;

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
        let msg = req.msg.unwrap_or("");
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

#[derive(Debug)]
enum Sock {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket),
}

/// The bound command socket.
#[derive(Debug)]
pub struct CommandSocket {
    sock: Sock,
}

impl CommandSocket {
    /// Binds `addr` (a unix path relative to `cwd`, or `host:port` for UDP) and registers it.
    pub fn bind(addr: &str, cwd: &Path, registry: &Registry) -> Result<CommandSocket, String> {
        let mut sock = if crate::ondemand::is_tcp(addr) {
            let a = match addr.strip_prefix(':') {
                Some(port) => format!("0.0.0.0:{port}"),
                None => addr.to_string(),
            };
            let sa = std::net::ToSocketAddrs::to_socket_addrs(&a)
                .map_err(|e| format!("bad command socket address {addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("bad command socket address {addr}"))?;
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
        Ok(CommandSocket { sock })
    }

    /// Reads every pending datagram and applies it.
    pub fn drain(&mut self, core: &mut Core) {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let r = match &self.sock {
                Sock::Unix(s, _) => s.recv(&mut buf),
                Sock::Udp(s) => s.recv(&mut buf),
            };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("command socket read failed: {e}");
                    return;
                }
            };
            match parse(&buf[..n]) {
                Ok(req) => {
                    if let Err(e) = apply(core, Instant::now(), &req) {
                        warn!("command socket: {}: {e}", req.cmd);
                    }
                }
                Err(e) => warn!("command socket: ignoring a malformed datagram ({n} bytes): {e}"),
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
}
