//! The 4-byte uwsgi packet header.

use std::fmt;

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 4;

/// Largest body a header can describe (the size field is a u16).
pub const MAX_BODY: usize = u16::MAX as usize;

/// Result of decoding from a buffer that may not hold a whole item yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole item was decoded.
    Complete(T),
    /// The buffer is too short; at least `needed` more bytes are required.
    Partial {
        /// How many more bytes are needed, at least.
        needed: usize,
    },
}

impl<T> Status<T> {
    /// The decoded item, if complete.
    pub fn complete(self) -> Option<T> {
        match self {
            Status::Complete(t) => Some(t),
            Status::Partial { .. } => None,
        }
    }

    /// True when more bytes are needed.
    pub fn is_partial(&self) -> bool {
        matches!(self, Status::Partial { .. })
    }
}

/// Errors raised while encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The body would exceed 65535 bytes.
    BodyTooLarge {
        /// The length that was requested.
        len: usize,
    },
    /// A single key, value or array item would exceed 65535 bytes.
    FieldTooLarge {
        /// The length of the field.
        len: usize,
    },
    /// A key of zero length cannot be encoded in a vars body.
    EmptyKey,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BodyTooLarge { len } => {
                write!(f, "uwsgi body of {len} bytes exceeds the 65535-byte limit")
            }
            EncodeError::FieldTooLarge { len } => {
                write!(f, "field of {len} bytes exceeds the 65535-byte limit")
            }
            EncodeError::EmptyKey => f.write_str("a vars key cannot be empty"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The uwsgi packet header: `modifier1`, a little-endian u16 body size, `modifier2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Packet type / request handler id.
    pub modifier1: u8,
    /// Length of the body that follows.
    pub size: u16,
    /// Sub-type or flags.
    pub modifier2: u8,
}

impl Header {
    /// A header with the given modifiers and body size.
    pub const fn new(modifier1: u8, size: u16, modifier2: u8) -> Self {
        Header {
            modifier1,
            size,
            modifier2,
        }
    }

    /// A header for a body of `len` bytes; errors when `len` exceeds 65535.
    pub fn for_body(modifier1: u8, len: usize, modifier2: u8) -> Result<Self, EncodeError> {
        let size = u16::try_from(len).map_err(|_| EncodeError::BodyTooLarge { len })?;
        Ok(Header::new(modifier1, size, modifier2))
    }

    /// Decodes a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Status<Header> {
        match buf {
            [m1, lo, hi, m2, ..] => Status::Complete(Header {
                modifier1: *m1,
                size: u16::from_le_bytes([*lo, *hi]),
                modifier2: *m2,
            }),
            _ => Status::Partial {
                needed: HEADER_LEN - buf.len(),
            },
        }
    }

    /// The four header bytes.
    pub const fn encode(&self) -> [u8; HEADER_LEN] {
        let [lo, hi] = self.size.to_le_bytes();
        [self.modifier1, lo, hi, self.modifier2]
    }

    /// Body length as usize.
    pub const fn body_len(&self) -> usize {
        self.size as usize
    }
}

/// A whole packet borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header,
    /// Exactly `header.size` body bytes.
    pub body: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Decodes one packet from the start of `buf`; on success returns it with the number of
    /// bytes it occupies (header plus body). Bytes after it are left alone.
    pub fn decode(buf: &'a [u8]) -> Status<(Packet<'a>, usize)> {
        let header = match Header::decode(buf) {
            Status::Complete(h) => h,
            Status::Partial { needed } => {
                return Status::Partial { needed };
            }
        };
        let total = HEADER_LEN + header.body_len();
        match buf.get(HEADER_LEN..total) {
            Some(body) => Status::Complete((Packet { header, body }, total)),
            None => Status::Partial {
                needed: total - buf.len(),
            },
        }
    }

    /// Appends header and body to `out`; errors when the body exceeds 65535 bytes.
    pub fn encode_into(
        modifier1: u8,
        modifier2: u8,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let header = Header::for_body(modifier1, body.len(), modifier2)?;
        out.reserve(HEADER_LEN + body.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(body);
        Ok(())
    }
}

/// Reads a little-endian u16 at `pos`, if present.
#[inline]
pub(crate) fn read_u16(buf: &[u8], pos: usize) -> Option<u16> {
    let end = pos.checked_add(2)?;
    let b = buf.get(pos..end)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Appends a length-prefixed field; errors when it exceeds u16.
#[inline]
pub(crate) fn push_field(out: &mut Vec<u8>, field: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(field.len()).map_err(|_| EncodeError::FieldTooLarge { len: field.len() })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
    Ok(())
}

/// A packet under construction: room for the header, then the body. The one builder tail of
/// [`ArrayBuilder`](crate::array::ArrayBuilder) and [`VarsBuilder`](crate::vars::VarsBuilder):
/// they differ only in which fields make up one item.
#[derive(Debug, Clone)]
pub(crate) struct PacketBuf {
    buf: Vec<u8>,
}

impl PacketBuf {
    /// An empty body with room for `capacity` body bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity.min(MAX_BODY));
        buf.extend_from_slice(&[0; HEADER_LEN]);
        PacketBuf { buf }
    }

    /// Appends `fields`, each as `u16le len, bytes`, all or none: errors, leaving the body
    /// unchanged, when a field or the body would exceed 65535 bytes.
    pub(crate) fn push_fields(&mut self, fields: &[&[u8]]) -> Result<(), EncodeError> {
        let mut len = self.body_len();
        for field in fields {
            if field.len() > MAX_BODY {
                return Err(EncodeError::FieldTooLarge { len: field.len() });
            }
            len += 2 + field.len();
        }
        if len > MAX_BODY {
            return Err(EncodeError::BodyTooLarge { len });
        }
        for field in fields {
            push_field(&mut self.buf, field)?;
        }
        Ok(())
    }

    /// Current body length.
    pub(crate) fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// The body built so far.
    pub(crate) fn body(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }

    /// The body alone.
    pub(crate) fn into_body(mut self) -> Vec<u8> {
        self.buf.drain(..HEADER_LEN);
        self.buf
    }

    /// The whole packet (header plus body) with the given modifiers.
    pub(crate) fn into_packet(mut self, modifier1: u8, modifier2: u8) -> Vec<u8> {
        // `push_fields` keeps the body within u16, so the size always fits.
        let size = self.body_len() as u16;
        self.buf[..HEADER_LEN].copy_from_slice(&Header::new(modifier1, size, modifier2).encode());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_little_endian() {
        let h = Header::new(0x73, 0x2f, 0);
        assert_eq!(h.encode(), [0x73, 0x2f, 0x00, 0x00]);
        let h = Header::new(35, 0x1234, 1);
        assert_eq!(h.encode(), [35, 0x34, 0x12, 1]);
        assert_eq!(Header::decode(&h.encode()), Status::Complete(h));
    }

    #[test]
    fn header_partial_reports_missing_bytes() {
        assert_eq!(Header::decode(&[]), Status::Partial { needed: 4 });
        assert_eq!(Header::decode(&[1, 2]), Status::Partial { needed: 2 });
    }

    #[test]
    fn body_over_limit_is_an_error_not_a_truncation() {
        assert_eq!(
            Header::for_body(0, 65536, 0),
            Err(EncodeError::BodyTooLarge { len: 65536 })
        );
        assert!(Header::for_body(0, 65535, 0).is_ok());
        let mut out = Vec::new();
        assert!(Packet::encode_into(0, 0, &vec![0u8; 70000], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn packet_partial_and_complete() {
        let bytes = [9, 3, 0, 7, b'a', b'b', b'c', 0xff];
        assert_eq!(Packet::decode(&bytes[..5]), Status::Partial { needed: 2 });
        let (p, used) = Packet::decode(&bytes).complete().unwrap();
        assert_eq!(used, 7);
        assert_eq!(p.header, Header::new(9, 3, 7));
        assert_eq!(p.body, b"abc");
    }
}
