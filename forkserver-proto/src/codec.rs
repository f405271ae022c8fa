//! Sans-IO codec for the fork-server request and reply.
//!
//! Request (client → server): header `[35, size_lo, size_hi, mask]`, where the mask says which
//! fds ride along with the first byte in one `SCM_RIGHTS` message (0x01 channel, always; 0x02
//! config channel; 0x04 on-demand listener, in that order), and a body that is the vassal's argv
//! as a uwsgi array. Reply (server → client): header `[35, size_lo, size_hi, 0]` and a vars body
//! holding `pid=<decimal>`, the pid of the adopted vassal.
//!
//! Nothing here touches a socket. Every length is bounded (the body by the u16 size field, the
//! argv by [`MAX_ARGS`], the pid by [`MAX_PID_DIGITS`]) and every malformed input is a typed
//! error, never a panic.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use uwsgi_proto::array::{ArrayBuilder, ArrayError, ArrayIter};
use uwsgi_proto::header::{EncodeError, Header, Packet, Status, HEADER_LEN};
use uwsgi_proto::vars::{self, VarsBuilder, VarsError};

/// modifier1 of both the request and the reply.
pub const MODIFIER1: u8 = uwsgi_proto::modifier::FORK_SERVER;

/// modifier2 of the reply.
pub const REPLY_MODIFIER2: u8 = 0;

/// Most argv items a request may carry.
pub const MAX_ARGS: usize = 1024;

/// Most digits accepted in the reply's pid value (pid_t is a positive i32).
pub const MAX_PID_DIGITS: usize = 10;

/// Most fds a request can announce (channel, config, on-demand).
pub const MAX_FDS: usize = 3;

/// The request's modifier2: which fds accompany the request.
///
/// The channel is always present; the config channel and the on-demand listener are optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FdMask {
    /// 0x02: the vassal's config channel is the second fd.
    pub config: bool,
    /// 0x04: the on-demand listener is the last fd.
    pub on_demand: bool,
}

impl FdMask {
    /// Bit for the emperor channel (always set).
    pub const CHANNEL_BIT: u8 = 0x01;
    /// Bit for the config channel.
    pub const CONFIG_BIT: u8 = 0x02;
    /// Bit for the on-demand listener.
    pub const ON_DEMAND_BIT: u8 = 0x04;

    /// Only the channel.
    pub const CHANNEL_ONLY: FdMask = FdMask {
        config: false,
        on_demand: false,
    };

    /// The wire byte.
    pub const fn bits(self) -> u8 {
        let mut b = Self::CHANNEL_BIT;
        if self.config {
            b |= Self::CONFIG_BIT;
        }
        if self.on_demand {
            b |= Self::ON_DEMAND_BIT;
        }
        b
    }

    /// Decodes the wire byte. Unknown bits and a missing channel bit are errors.
    pub const fn from_bits(bits: u8) -> Result<FdMask, RequestError> {
        let known = Self::CHANNEL_BIT | Self::CONFIG_BIT | Self::ON_DEMAND_BIT;
        if bits & !known != 0 {
            return Err(RequestError::UnknownMaskBits { mask: bits });
        }
        if bits & Self::CHANNEL_BIT == 0 {
            return Err(RequestError::NoChannelBit { mask: bits });
        }
        Ok(FdMask {
            config: bits & Self::CONFIG_BIT != 0,
            on_demand: bits & Self::ON_DEMAND_BIT != 0,
        })
    }

    /// How many fds the request carries (1 to 3).
    pub const fn fd_count(self) -> usize {
        1 + self.config as usize + self.on_demand as usize
    }

    /// Splits the received fds, in wire order, into (channel, config, on-demand). Errors unless
    /// exactly [`fd_count`](Self::fd_count) fds were received.
    pub fn split<T>(self, fds: Vec<T>) -> Result<(T, Option<T>, Option<T>), RequestError> {
        if fds.len() != self.fd_count() {
            return Err(RequestError::FdCount {
                expected: self.fd_count(),
                got: fds.len(),
            });
        }
        let mut it = fds.into_iter();
        // The length check above guarantees each `next()` below yields an item; the
        // `ok_or` keeps this free of panicking paths anyway.
        let missing = RequestError::FdCount {
            expected: self.fd_count(),
            got: 0,
        };
        let channel = it.next().ok_or(missing)?;
        let config = if self.config {
            Some(it.next().ok_or(missing)?)
        } else {
            None
        };
        let on_demand = if self.on_demand {
            Some(it.next().ok_or(missing)?)
        } else {
            None
        };
        Ok((channel, config, on_demand))
    }
}

/// Why a request is malformed or cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// modifier1 is not 35.
    WrongModifier1 {
        /// The byte received.
        modifier1: u8,
    },
    /// modifier2 has bits other than 0x01, 0x02, 0x04.
    UnknownMaskBits {
        /// The byte received.
        mask: u8,
    },
    /// modifier2 lacks the channel bit 0x01.
    NoChannelBit {
        /// The byte received.
        mask: u8,
    },
    /// The number of fds received differs from what the mask announces.
    FdCount {
        /// What the mask announces.
        expected: usize,
        /// What arrived.
        got: usize,
    },
    /// The argv array is malformed.
    Array(ArrayError),
    /// The argv is empty (there must be at least `argv[0]`).
    EmptyArgv,
    /// More than [`MAX_ARGS`] argv items.
    TooManyArgs {
        /// How many items there are (counted up to `MAX_ARGS + 1`).
        count: usize,
    },
    /// An argv item contains a NUL byte, which no argv can hold.
    NulInArg {
        /// Index of the item.
        index: usize,
    },
    /// The argv does not fit in one packet.
    Encode(EncodeError),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::WrongModifier1 { modifier1 } => write!(
                f,
                "not a fork-server request: modifier1 is {modifier1}, expected {MODIFIER1}"
            ),
            RequestError::UnknownMaskBits { mask } => {
                write!(
                    f,
                    "fork-server request fd mask {mask:#04x} has unknown bits"
                )
            }
            RequestError::NoChannelBit { mask } => write!(
                f,
                "fork-server request fd mask {mask:#04x} lacks the channel bit 0x01"
            ),
            RequestError::FdCount { expected, got } => write!(
                f,
                "fork-server request announces {expected} fds but {got} arrived with its first byte"
            ),
            RequestError::Array(e) => write!(f, "fork-server request argv: {e}"),
            RequestError::EmptyArgv => f.write_str("fork-server request has an empty argv"),
            RequestError::TooManyArgs { count } => write!(
                f,
                "fork-server request argv has {count} items, more than the limit of {MAX_ARGS}"
            ),
            RequestError::NulInArg { index } => {
                write!(f, "fork-server request argv[{index}] contains a NUL byte")
            }
            RequestError::Encode(e) => write!(f, "cannot encode fork-server request: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<ArrayError> for RequestError {
    fn from(e: ArrayError) -> Self {
        RequestError::Array(e)
    }
}

/// Encodes a request for `argv` with the fds described by `mask`.
pub fn encode_request<I, S>(argv: I, mask: FdMask) -> Result<Vec<u8>, RequestError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut b = ArrayBuilder::new();
    let mut count = 0usize;
    for (index, arg) in argv.into_iter().enumerate() {
        let arg = arg.as_ref().as_bytes();
        if arg.contains(&0) {
            return Err(RequestError::NulInArg { index });
        }
        count += 1;
        if count > MAX_ARGS {
            return Err(RequestError::TooManyArgs { count });
        }
        b.push(arg).map_err(RequestError::Encode)?;
    }
    if count == 0 {
        return Err(RequestError::EmptyArgv);
    }
    Ok(b.into_packet(MODIFIER1, mask.bits()))
}

/// Checks a request header (modifier1 and the fd mask) and returns the mask.
pub fn check_request_header(header: &Header) -> Result<FdMask, RequestError> {
    if header.modifier1 != MODIFIER1 {
        return Err(RequestError::WrongModifier1 {
            modifier1: header.modifier1,
        });
    }
    FdMask::from_bits(header.modifier2)
}

/// A decoded request, borrowing its argv from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Which fds accompany the request.
    pub mask: FdMask,
    /// The raw argv array body, already validated.
    pub argv_body: &'a [u8],
    /// Number of argv items (1 to [`MAX_ARGS`]).
    pub argc: usize,
}

impl<'a> Request<'a> {
    /// Decodes one request from the start of `buf`; on success also returns the bytes it
    /// occupies. The argv is fully validated (well formed, 1 to [`MAX_ARGS`] items, no NUL).
    pub fn decode(buf: &'a [u8]) -> Result<Status<(Request<'a>, usize)>, RequestError> {
        // Check the header as soon as it is there, before waiting for the body.
        if let Status::Complete(h) = Header::decode(buf) {
            check_request_header(&h)?;
        }
        let (packet, used) = match Packet::decode(buf) {
            Status::Complete(p) => p,
            Status::Partial { needed } => return Ok(Status::Partial { needed }),
        };
        let mask = check_request_header(&packet.header)?;
        let argc = validate_argv(packet.body)?;
        Ok(Status::Complete((
            Request {
                mask,
                argv_body: packet.body,
                argc,
            },
            used,
        )))
    }

    /// The argv items as borrowed bytes.
    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The body was validated in `decode`, so errors cannot occur; filter them anyway.
        ArrayIter::new(self.argv_body).filter_map(Result::ok)
    }

    /// The argv as owned strings.
    pub fn argv(&self) -> Vec<OsString> {
        let mut out = Vec::with_capacity(self.argc);
        out.extend(self.args().map(|a| OsString::from_vec(a.to_vec())));
        out
    }
}

/// Validates an argv array body and returns its number of items.
pub fn validate_argv(body: &[u8]) -> Result<usize, RequestError> {
    let mut count = 0usize;
    for item in ArrayIter::new(body) {
        let item = item?;
        if item.contains(&0) {
            return Err(RequestError::NulInArg { index: count });
        }
        count += 1;
        if count > MAX_ARGS {
            return Err(RequestError::TooManyArgs { count });
        }
    }
    if count == 0 {
        return Err(RequestError::EmptyArgv);
    }
    Ok(count)
}

/// Why a reply is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// modifier1 is not 35.
    WrongModifier1 {
        /// The byte received.
        modifier1: u8,
    },
    /// The vars body is malformed.
    Vars(VarsError),
    /// No `pid` key.
    NoPid,
    /// The `pid` value is not a decimal number in 1..=i32::MAX.
    BadPid,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::WrongModifier1 { modifier1 } => write!(
                f,
                "not a fork-server reply: modifier1 is {modifier1}, expected {MODIFIER1}"
            ),
            ReplyError::Vars(e) => write!(f, "fork-server reply vars: {e}"),
            ReplyError::NoPid => f.write_str("fork-server reply has no pid"),
            ReplyError::BadPid => {
                f.write_str("fork-server reply pid is not a positive decimal number")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

/// Encodes the reply announcing `pid`.
pub fn encode_reply(pid: i32) -> Vec<u8> {
    let mut b = VarsBuilder::with_capacity(16);
    // "pid" plus at most 11 digits is far below every limit, so this cannot fail.
    let _ = b.push_num("pid", i64::from(pid));
    b.into_packet(MODIFIER1, REPLY_MODIFIER2)
}

/// Decodes a reply from the start of `buf`: the adopted vassal's pid and the bytes used.
///
/// modifier1 must be 35; modifier2 is not checked (uWSGI's emperor does not check it either).
pub fn decode_reply(buf: &[u8]) -> Result<Status<(i32, usize)>, ReplyError> {
    if let Status::Complete(h) = Header::decode(buf) {
        if h.modifier1 != MODIFIER1 {
            return Err(ReplyError::WrongModifier1 {
                modifier1: h.modifier1,
            });
        }
    }
    let (packet, used) = match Packet::decode(buf) {
        Status::Complete(p) => p,
        Status::Partial { needed } => return Ok(Status::Partial { needed }),
    };
    let value = vars::get(packet.body, b"pid")
        .map_err(ReplyError::Vars)?
        .ok_or(ReplyError::NoPid)?;
    Ok(Status::Complete((parse_pid(value)?, used)))
}

/// Parses a positive decimal pid.
pub fn parse_pid(value: &[u8]) -> Result<i32, ReplyError> {
    if value.is_empty() || value.len() > MAX_PID_DIGITS || !value.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::BadPid);
    }
    let mut n: i64 = 0;
    for d in value {
        n = n * 10 + i64::from(d - b'0');
    }
    match i32::try_from(n) {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(ReplyError::BadPid),
    }
}

/// Length of the reply header, re-exported for readers that read it first.
pub const REPLY_HEADER_LEN: usize = HEADER_LEN;

#[cfg(test)]
mod tests;
