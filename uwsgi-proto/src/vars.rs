//! The vars (dictionary) body: `u16le keylen, key, u16le vallen, value` repeated, nothing else.
//!
//! The parser is strict: a zero-length key, a length field cut short and any key or value that
//! runs past the end of the body are errors, where uWSGI would resynchronise on garbage.

use std::fmt;
use std::io::Write as _;

use crate::array::ArrayError;
use crate::header::{EncodeError, PacketBuf};

/// Why a vars body is malformed. `offset` is where the offending field starts in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarsError {
    /// A key length of zero.
    EmptyKey {
        /// Offset of the key length field.
        offset: usize,
    },
    /// Fewer than two bytes were left where a length was expected.
    TruncatedLength {
        /// Offset of the partial length field.
        offset: usize,
    },
    /// A key or value runs past the end of the body.
    Overrun {
        /// Offset of the length field whose data overruns.
        offset: usize,
        /// The declared length.
        len: usize,
        /// Bytes actually left after the length field.
        available: usize,
    },
}

impl fmt::Display for VarsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VarsError::EmptyKey { offset } => write!(f, "empty vars key at offset {offset}"),
            VarsError::TruncatedLength { offset } => {
                write!(f, "vars length field cut short at offset {offset}")
            }
            VarsError::Overrun {
                offset,
                len,
                available,
            } => write!(
                f,
                "vars field at offset {offset} declares {len} bytes but only {available} remain"
            ),
        }
    }
}

impl std::error::Error for VarsError {}

/// Borrowing iterator over the `(key, value)` pairs of a vars body.
///
/// Yields `Err` once at the first malformed field and then stops.
#[derive(Debug, Clone)]
pub struct VarsIter<'a> {
    body: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> VarsIter<'a> {
    /// Iterates over `body` (the bytes after the packet header).
    pub fn new(body: &'a [u8]) -> Self {
        VarsIter {
            body,
            pos: 0,
            failed: false,
        }
    }

    fn field(&mut self) -> Result<&'a [u8], VarsError> {
        let (data, next) = crate::array::field(self.body, self.pos).map_err(|e| match e {
            ArrayError::TruncatedLength { offset } => VarsError::TruncatedLength { offset },
            ArrayError::Overrun {
                offset,
                len,
                available,
            } => VarsError::Overrun {
                offset,
                len,
                available,
            },
        })?;
        self.pos = next;
        Ok(data)
    }

    fn pair(&mut self) -> Result<(&'a [u8], &'a [u8]), VarsError> {
        let offset = self.pos;
        let key = self.field()?;
        if key.is_empty() {
            return Err(VarsError::EmptyKey { offset });
        }
        let value = self.field()?;
        Ok((key, value))
    }
}

impl<'a> Iterator for VarsIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), VarsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.body.len() {
            return None;
        }
        let item = self.pair();
        self.failed = item.is_err();
        Some(item)
    }
}

impl std::iter::FusedIterator for VarsIter<'_> {}

/// Iterates over the pairs of a vars body.
pub fn iter(body: &[u8]) -> VarsIter<'_> {
    VarsIter::new(body)
}

/// The value of the first pair whose key equals `key`, checking the body up to that pair.
pub fn get<'a>(body: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, VarsError> {
    for pair in iter(body) {
        let (k, v) = pair?;
        if k == key {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Checks a whole body and returns its number of pairs.
pub fn validate(body: &[u8]) -> Result<usize, VarsError> {
    iter(body).try_fold(0usize, |n, pair| pair.map(|_| n + 1))
}

/// Builds a vars body, leaving room for the header so a packet is produced without copying.
#[derive(Debug, Clone)]
pub struct VarsBuilder {
    buf: PacketBuf,
}

crate::array::packet_builder!(VarsBuilder);

impl VarsBuilder {
    /// An empty body.
    pub fn new() -> Self {
        Self::with_capacity(256)
    }

    /// An empty body with room for `capacity` body bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        VarsBuilder {
            buf: PacketBuf::with_capacity(capacity),
        }
    }

    /// Appends one pair. Errors, leaving the body unchanged, when the key is empty, a field
    /// exceeds 65535 bytes or the body would exceed 65535 bytes.
    pub fn push(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<&mut Self, EncodeError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.is_empty() {
            return Err(EncodeError::EmptyKey);
        }
        self.buf.push_fields(&[key, value])?;
        Ok(self)
    }

    /// Appends a pair whose value is a number written as decimal ASCII.
    pub fn push_num(
        &mut self,
        key: impl AsRef<[u8]>,
        value: i64,
    ) -> Result<&mut Self, EncodeError> {
        let mut digits = [0u8; 20];
        let mut cursor = &mut digits[..];
        // 20 bytes hold any i64 in decimal, so this write cannot fail.
        let _ = write!(cursor, "{value}");
        let used = 20 - cursor.len();
        self.push(key, &digits[..used])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = VarsBuilder::new();
        for (k, v) in pairs {
            b.push(k, v).unwrap();
        }
        b.into_body()
    }

    #[test]
    fn round_trip_and_lookup() {
        let body = encoded(&[
            (b"REQUEST_METHOD", b"GET"),
            (b"EMPTY", b""),
            (b"PATH_INFO", b"/x"),
        ]);
        let pairs: Vec<_> = iter(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1], (&b"EMPTY"[..], &b""[..]));
        assert_eq!(get(&body, b"PATH_INFO").unwrap(), Some(&b"/x"[..]));
        assert_eq!(get(&body, b"NOPE").unwrap(), None);
        assert_eq!(validate(&body), Ok(3));
    }

    #[test]
    fn numbers_are_decimal_ascii() {
        let mut b = VarsBuilder::new();
        b.push_num("pid", 18204)
            .unwrap()
            .push_num("neg", i64::MIN)
            .unwrap();
        let body = b.into_body();
        assert_eq!(get(&body, b"pid").unwrap(), Some(&b"18204"[..]));
        assert_eq!(
            get(&body, b"neg").unwrap(),
            Some(&b"-9223372036854775808"[..])
        );
    }

    #[test]
    fn strict_errors() {
        assert_eq!(
            iter(&[0, 0, 1, 0, b'x']).next(),
            Some(Err(VarsError::EmptyKey { offset: 0 }))
        );
        assert_eq!(
            iter(&[1]).next(),
            Some(Err(VarsError::TruncatedLength { offset: 0 }))
        );
        // key overruns: uWSGI would resync two bytes further; we reject.
        assert_eq!(
            iter(&[5, 0, b'a', b'b']).next(),
            Some(Err(VarsError::Overrun {
                offset: 0,
                len: 5,
                available: 2
            }))
        );
        // key then missing value length
        assert_eq!(
            iter(&[1, 0, b'a']).next(),
            Some(Err(VarsError::TruncatedLength { offset: 3 }))
        );
        // value overruns
        assert_eq!(
            iter(&[1, 0, b'a', 3, 0, b'z']).next(),
            Some(Err(VarsError::Overrun {
                offset: 3,
                len: 3,
                available: 1
            }))
        );
        // the iterator stops after an error
        let mut it = iter(&[0, 0, 0, 0]);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn value_may_end_exactly_at_the_end() {
        assert_eq!(validate(&[1, 0, b'k', 0, 0]), Ok(1));
    }

    #[test]
    fn builder_limits() {
        let mut b = VarsBuilder::new();
        assert_eq!(b.push("", "v").unwrap_err(), EncodeError::EmptyKey);
        let big = vec![b'x'; 65536];
        assert_eq!(
            b.push("k", &big).unwrap_err(),
            EncodeError::FieldTooLarge { len: 65536 }
        );
        let half = vec![b'x'; 40000];
        b.push("a", &half).unwrap();
        let before = b.body_len();
        assert!(matches!(
            b.push("b", &half),
            Err(EncodeError::BodyTooLarge { .. })
        ));
        assert_eq!(
            b.body_len(),
            before,
            "a failed push leaves the body unchanged"
        );
    }

    #[test]
    fn packet_has_header() {
        let mut b = VarsBuilder::new();
        b.push("pid", "18204").unwrap();
        let pkt = b.into_packet(35, 0);
        assert_eq!(
            pkt,
            [
                0x23, 0x0c, 0x00, 0x00, 0x03, 0x00, b'p', b'i', b'd', 0x05, 0x00, b'1', b'8', b'2',
                b'0', b'4'
            ]
        );
    }
}
