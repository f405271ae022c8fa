//! The config-push frame: a uwsgi header with modifier1 115 and the config text as body.
//!
//! The emperor writes one frame when a vassal carrying config content starts and one per
//! config request (byte 2). A uWSGI 2.0 emperor also pushes on every reload, so a vassal may find
//! several frames queued: [`newest`] takes the last complete one.

use std::fmt;

use crate::header::{EncodeError, Header, Status, HEADER_LEN};
use crate::modifier;

/// modifier1 of a config-push frame.
pub const MODIFIER1: u8 = modifier::CONFIG_PUSH;

/// Why a config stream cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// A frame header whose modifier1 is not 115.
    UnexpectedModifier {
        /// The modifier1 found.
        modifier1: u8,
        /// Offset of the frame in the buffer.
        offset: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigError::UnexpectedModifier { modifier1, offset } => write!(
                f,
                "config frame at offset {offset} has modifier1 {modifier1}, expected {MODIFIER1}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The header of a frame carrying `len` config bytes; errors for configs over 65535 bytes
/// (uWSGI truncates the size and desynchronises the stream instead).
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], EncodeError> {
    Ok(Header::for_body(MODIFIER1, len, 0)?.encode())
}

/// Appends a whole frame for `config` to `out`.
pub fn encode(config: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let h = header(config.len())?;
    out.reserve(HEADER_LEN + config.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(config);
    Ok(())
}

/// Decodes the first frame of `buf`: the config body and the bytes the frame occupies.
pub fn decode(buf: &[u8]) -> Result<Status<(&[u8], usize)>, ConfigError> {
    decode_at(buf, 0)
}

fn decode_at(buf: &[u8], offset: usize) -> Result<Status<(&[u8], usize)>, ConfigError> {
    let rest = buf.get(offset..).unwrap_or_default();
    let header = match Header::decode(rest) {
        Status::Complete(h) => h,
        Status::Partial { needed } => return Ok(Status::Partial { needed }),
    };
    if header.modifier1 != MODIFIER1 {
        return Err(ConfigError::UnexpectedModifier {
            modifier1: header.modifier1,
            offset,
        });
    }
    let total = HEADER_LEN + header.body_len();
    match rest.get(HEADER_LEN..total) {
        Some(body) => Ok(Status::Complete((body, total))),
        None => Ok(Status::Partial {
            needed: total - rest.len(),
        }),
    }
}

/// The newest complete frame in `buf` and the number of bytes up to its end (every earlier
/// frame included), so the caller can drop them. A trailing incomplete frame is left alone.
/// `Partial` when not even the first frame is complete.
pub fn newest(buf: &[u8]) -> Result<Status<(&[u8], usize)>, ConfigError> {
    let mut offset = 0;
    let mut last: Option<&[u8]> = None;
    loop {
        match decode_at(buf, offset)? {
            Status::Complete((body, used)) => {
                last = Some(body);
                offset += used;
            }
            Status::Partial { needed } => {
                return Ok(match last {
                    Some(body) => Status::Complete((body, offset)),
                    None => Status::Partial { needed },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        encode(b"[uwsgi]\nmaster = true\n", &mut out).unwrap();
        assert_eq!(&out[..4], &[0x73, 22, 0, 0]);
        let (body, used) = decode(&out).unwrap().complete().unwrap();
        assert_eq!(body, b"[uwsgi]\nmaster = true\n");
        assert_eq!(used, out.len());
    }

    #[test]
    fn oversized_config_is_refused() {
        let mut out = Vec::new();
        assert!(encode(&vec![b'x'; 70_000], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn newest_of_several() {
        let mut out = Vec::new();
        encode(b"one", &mut out).unwrap();
        encode(b"two", &mut out).unwrap();
        let end_of_two = out.len();
        out.extend_from_slice(&[0x73, 5, 0, 0, b't']);
        let (body, used) = newest(&out).unwrap().complete().unwrap();
        assert_eq!(body, b"two");
        assert_eq!(used, end_of_two);
        assert_eq!(newest(&out[..5]).unwrap(), Status::Partial { needed: 2 });
    }

    #[test]
    fn wrong_modifier() {
        assert_eq!(
            decode(&[0, 0, 0, 0]),
            Err(ConfigError::UnexpectedModifier {
                modifier1: 0,
                offset: 0
            })
        );
    }
}
