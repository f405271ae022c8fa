//! The array body: `u16le len, bytes` repeated. Zero-length items are delivered.

use std::fmt;

use crate::header::{read_u16, EncodeError, PacketBuf};

/// Why an array body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayError {
    /// One byte was left where a length was expected.
    TruncatedLength {
        /// Offset of the partial length field.
        offset: usize,
    },
    /// An item runs past the end of the body.
    Overrun {
        /// Offset of the length field.
        offset: usize,
        /// The declared length.
        len: usize,
        /// Bytes left after the length field.
        available: usize,
    },
}

impl fmt::Display for ArrayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArrayError::TruncatedLength { offset } => {
                write!(f, "array length field cut short at offset {offset}")
            }
            ArrayError::Overrun {
                offset,
                len,
                available,
            } => write!(
                f,
                "array item at offset {offset} declares {len} bytes but only {available} remain"
            ),
        }
    }
}

impl std::error::Error for ArrayError {}

/// Borrowing iterator over the items of an array body. Stops after the first error.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    body: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> ArrayIter<'a> {
    /// Iterates over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        ArrayIter {
            body,
            pos: 0,
            failed: false,
        }
    }

    fn item(&mut self) -> Result<&'a [u8], ArrayError> {
        let (data, next) = field(self.body, self.pos)?;
        self.pos = next;
        Ok(data)
    }
}

/// The length-prefixed field (`u16le len, bytes`) of `body` at `offset`: its bytes and the
/// offset after it. Both the array and the vars body are made of these.
#[inline]
pub(crate) fn field(body: &[u8], offset: usize) -> Result<(&[u8], usize), ArrayError> {
    let len = read_u16(body, offset).ok_or(ArrayError::TruncatedLength { offset })? as usize;
    let start = offset + 2;
    let data = body.get(start..start + len).ok_or(ArrayError::Overrun {
        offset,
        len,
        available: body.len() - start,
    })?;
    Ok((data, start + len))
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Result<&'a [u8], ArrayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.body.len() {
            return None;
        }
        let item = self.item();
        self.failed = item.is_err();
        Some(item)
    }
}

impl std::iter::FusedIterator for ArrayIter<'_> {}

/// Iterates over the items of an array body.
pub fn iter(body: &[u8]) -> ArrayIter<'_> {
    ArrayIter::new(body)
}

/// Checks a whole body and returns its number of items.
pub fn validate(body: &[u8]) -> Result<usize, ArrayError> {
    iter(body).try_fold(0usize, |n, item| item.map(|_| n + 1))
}

/// What every packet builder over a [`PacketBuf`] field `buf` has in common: `Default` (the
/// builder's `new`) and the accessors of the body and the packet.
macro_rules! packet_builder {
    ($name:ident) => {
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            /// Current body length.
            pub fn body_len(&self) -> usize {
                self.buf.body_len()
            }

            /// The body built so far.
            pub fn body(&self) -> &[u8] {
                self.buf.body()
            }

            /// The body alone.
            pub fn into_body(self) -> Vec<u8> {
                self.buf.into_body()
            }

            /// The whole packet (header plus body) with the given modifiers.
            pub fn into_packet(self, modifier1: u8, modifier2: u8) -> Vec<u8> {
                self.buf.into_packet(modifier1, modifier2)
            }
        }
    };
}
pub(crate) use packet_builder;

/// Builds an array body, leaving room for the header.
#[derive(Debug, Clone)]
pub struct ArrayBuilder {
    buf: PacketBuf,
}

packet_builder!(ArrayBuilder);

impl ArrayBuilder {
    /// An empty array.
    pub fn new() -> Self {
        Self::with_capacity(128)
    }

    /// An empty array with room for `capacity` body bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        ArrayBuilder {
            buf: PacketBuf::with_capacity(capacity),
        }
    }

    /// Appends one item; errors, leaving the array unchanged, when the item or the body would
    /// exceed 65535 bytes.
    pub fn push(&mut self, item: impl AsRef<[u8]>) -> Result<&mut Self, EncodeError> {
        self.buf.push_fields(&[item.as_ref()])?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_items_are_delivered() {
        let mut b = ArrayBuilder::new();
        b.push("a").unwrap().push("").unwrap().push("ccc").unwrap();
        let body = b.into_body();
        let items: Vec<_> = iter(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(items, [&b"a"[..], b"", b"ccc"]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            iter(&[7]).next(),
            Some(Err(ArrayError::TruncatedLength { offset: 0 }))
        );
        assert_eq!(
            iter(&[0, 0, 4, 0, 1]).collect::<Vec<_>>(),
            vec![
                Ok(&b""[..]),
                Err(ArrayError::Overrun {
                    offset: 2,
                    len: 4,
                    available: 1
                })
            ]
        );
    }

    #[test]
    fn limits() {
        let mut b = ArrayBuilder::new();
        assert!(b.push(vec![0u8; 65536]).is_err());
        b.push(vec![0u8; 65533]).unwrap();
        assert!(b.push("").is_err());
        assert_eq!(b.body_len(), 65535);
    }
}
