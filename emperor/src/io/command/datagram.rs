//! The command datagram (uWSGI 2.1's format), without I/O: parsing, building, what a request
//! asks for, and who may send one.

use uwsgi_proto::header::{EncodeError, HEADER_LEN};
use uwsgi_proto::vars::{self, VarsBuilder, VarsError};

use crate::core::VassalCommand;

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

/// Why a datagram is not a command (it is dropped with a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Fewer bytes than the uwsgi header.
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte uwsgi header")]
    Short {
        /// The datagram's length.
        len: usize,
    },
    /// The vars body does not parse.
    #[error("malformed vars: {0}")]
    Vars(#[from] VarsError),
    /// A value the emperor reads is not UTF-8.
    #[error("the value of `{key}` is not UTF-8")]
    NotUtf8 {
        /// The key.
        key: String,
    },
    /// No command in it.
    #[error("no `cmd` (or `command`) var")]
    NoCommand,
}

/// Why a well-formed request asks for nothing the emperor does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not one of the known commands.
    #[error("unknown command `{cmd}` (known: spawn, respawn, stop, reset, log)")]
    Unknown {
        /// The command.
        cmd: String,
    },
    /// A vassal command without a vassal.
    #[error("command `{cmd}` needs a `vassal` var")]
    NoVassal {
        /// The command.
        cmd: String,
    },
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order<'a> {
    /// Print `msg` in the emperor's log.
    Log(&'a str),
    /// A command for the vassal named (or keyed) `name`, decided by the core.
    Vassal {
        /// The command.
        cmd: VassalCommand,
        /// The vassal.
        name: &'a str,
    },
}

/// Parses a datagram (never panics; every problem is an error that says what is wrong).
pub fn parse(dgram: &[u8]) -> Result<Request<'_>, DatagramError> {
    let body = dgram
        .get(HEADER_LEN..)
        .ok_or(DatagramError::Short { len: dgram.len() })?;
    let (mut cmd, mut vassal, mut msg) = (None, None, None);
    for pair in vars::iter(body) {
        let (k, v) = pair?;
        let slot = match k {
            b"cmd" | b"command" => &mut cmd,
            b"vassal" => &mut vassal,
            b"msg" => &mut msg,
            _ => continue,
        };
        let s = std::str::from_utf8(v).map_err(|_| DatagramError::NotUtf8 {
            key: String::from_utf8_lossy(k).into_owned(),
        })?;
        *slot = Some(s);
    }
    let cmd = cmd.ok_or(DatagramError::NoCommand)?;
    Ok(Request { cmd, vassal, msg })
}

/// Builds a command datagram (what `emperor ctl` sends).
pub fn encode(cmd: &str, vassal: Option<&str>, msg: Option<&str>) -> Result<Vec<u8>, EncodeError> {
    let mut b = VarsBuilder::new();
    b.push("cmd", cmd)?;
    if let Some(v) = vassal {
        b.push("vassal", v)?;
    }
    if let Some(m) = msg {
        b.push("msg", m)?;
    }
    Ok(b.into_packet(0, 0))
}

impl<'a> Request<'a> {
    /// What the request asks for: the `log` command, or a vassal command with its vassal.
    pub fn order(&self) -> Result<Order<'a>, RequestError> {
        if self.cmd == "log" {
            return Ok(Order::Log(self.msg.unwrap_or("")));
        }
        let Some(cmd) = VassalCommand::parse(self.cmd) else {
            return Err(RequestError::Unknown {
                cmd: self.cmd.to_string(),
            });
        };
        match self.vassal.filter(|v| !v.is_empty()) {
            Some(name) => Ok(Order::Vassal { cmd, name }),
            None => Err(RequestError::NoVassal {
                cmd: self.cmd.to_string(),
            }),
        }
    }
}

/// Whether a datagram from `uid` is obeyed by an emperor running as `own`: root and the
/// emperor's own user only.
pub fn may_command(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
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
        let msg = |d: &[u8]| parse(d).unwrap_err().to_string();
        assert_eq!(parse(b""), Err(DatagramError::Short { len: 0 }));
        assert!(msg(b"\0\0\0").contains("shorter"));
        assert_eq!(parse(b"\0\0\0\0"), Err(DatagramError::NoCommand));
        assert!(msg(b"\0\0\0\0").contains("no `cmd`"));
        assert!(msg(b"\0\0\0\0\x03\0cmd\x09\0sp").contains("malformed vars"));
        assert!(msg(b"\0\0\0\0\0\0").contains("malformed"));
        assert!(msg(b"\0\0\0\0\x03\0cmd\x01\0\xff").contains("`cmd` is not UTF-8"));
        // Every prefix of a valid datagram parses or errors, never panics.
        let d = encode("stop", Some("a.ini"), Some("m")).unwrap();
        for i in 0..d.len() {
            let _ = parse(&d[..i]);
        }
    }

    #[test]
    fn what_a_request_asks_for() {
        let r = |cmd, vassal, msg| Request { cmd, vassal, msg };
        assert_eq!(r("log", None, Some("hi")).order(), Ok(Order::Log("hi")));
        assert_eq!(r("log", None, None).order(), Ok(Order::Log("")));
        assert_eq!(
            r("reload", Some("a.ini"), None).order(),
            Ok(Order::Vassal {
                cmd: VassalCommand::Respawn,
                name: "a.ini"
            })
        );
        let e = r("dance", Some("a.ini"), None).order().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown command `dance` (known: spawn, respawn, stop, reset, log)"
        );
        for vassal in [None, Some("")] {
            let e = r("stop", vassal, None).order().unwrap_err();
            assert_eq!(e.to_string(), "command `stop` needs a `vassal` var");
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
