//! A streaming packet decoder: feed bytes as they arrive, take whole packets out.
//!
//! Shaped like tokio-util's `Decoder`: [`PacketDecoder::decode`] takes the receive buffer and
//! returns `Ok(Some(packet))` once a whole packet is buffered, `Ok(None)` when more bytes are
//! needed. Bodies larger than the configured maximum are refused before they are buffered.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::header::{Header, Status, HEADER_LEN, MAX_BODY};

/// Why the stream cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The header announces a body larger than the decoder accepts.
    TooLarge {
        /// Size announced by the header.
        size: usize,
        /// The decoder's maximum.
        max: usize,
    },
    /// The stream ended in the middle of a packet.
    Truncated {
        /// Bytes left over.
        buffered: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet body of {size} bytes exceeds the limit of {max}")
            }
            DecodeError::Truncated { buffered } => {
                write!(
                    f,
                    "stream ended inside a packet ({buffered} bytes buffered)"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A whole packet taken out of a stream. The body shares the receive buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPacket {
    /// The header.
    pub header: Header,
    /// The body.
    pub body: Bytes,
}

/// Streaming decoder with a bounded body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketDecoder {
    max_body: usize,
}

impl Default for PacketDecoder {
    fn default() -> Self {
        PacketDecoder { max_body: MAX_BODY }
    }
}

impl PacketDecoder {
    /// A decoder accepting bodies up to `max_body` bytes (at most 65535 can ever be announced).
    pub fn new(max_body: usize) -> Self {
        PacketDecoder {
            max_body: max_body.min(MAX_BODY),
        }
    }

    /// The configured maximum body size.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Takes one packet out of `buf` if it is complete. On `TooLarge` nothing is consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<OwnedPacket>, DecodeError> {
        let header = match Header::decode(buf) {
            Status::Complete(h) => h,
            Status::Partial { .. } => return Ok(None),
        };
        let size = header.body_len();
        if size > self.max_body {
            return Err(DecodeError::TooLarge {
                size,
                max: self.max_body,
            });
        }
        if buf.len() < HEADER_LEN + size {
            buf.reserve(HEADER_LEN + size - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(size).freeze();
        Ok(Some(OwnedPacket { header, body }))
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: leftover bytes that do not
    /// form a packet are an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<OwnedPacket>, DecodeError> {
        match self.decode(buf)? {
            Some(p) => Ok(Some(p)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::Truncated {
                buffered: buf.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_by_byte() {
        let wire = [1, 2, 0, 9, b'h', b'i', 3, 0, 0, 4];
        let mut dec = PacketDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header, Header::new(1, 2, 9));
        assert_eq!(&got[0].body[..], b"hi");
        assert_eq!(got[1].header, Header::new(3, 0, 4));
        assert!(got[1].body.is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn too_large_is_refused_before_buffering() {
        let mut dec = PacketDecoder::new(10);
        let mut buf = BytesMut::from(&[0u8, 11, 0, 0][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(DecodeError::TooLarge { size: 11, max: 10 })
        );
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn eof_inside_packet() {
        let mut dec = PacketDecoder::default();
        let mut buf = BytesMut::from(&[0u8, 5, 0, 0, 1][..]);
        assert_eq!(
            dec.decode_eof(&mut buf),
            Err(DecodeError::Truncated { buffered: 5 })
        );
        let mut empty = BytesMut::new();
        assert_eq!(dec.decode_eof(&mut empty), Ok(None));
    }
}
