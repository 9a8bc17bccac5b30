//! The one place that turns values into bytes and back (bincode 1, fixed-width little-endian
//! integers, trailing bytes refused, a byte limit checked before anything is allocated).

use bincode::Options;
use serde::{Serialize, de::DeserializeOwned};

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not hold a well-formed value (or one that breaks a record rule).
    #[error("malformed bytes: {0}")]
    Malformed(String),
    /// Decoding would need more than the allowed number of bytes.
    #[error("value larger than the {0}-byte limit")]
    TooLarge(u64),
}

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().reject_trailing_bytes().with_limit(limit)
}

/// Canonical bytes of a value: the same value always gives the same bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own types to a Vec cannot fail: no maps with non-string keys, no
    // unsupported types, and the limit is the whole address space.
    match options(u64::MAX).serialize(value) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("encoding a protocol value failed: {e}"),
    }
}

/// Decodes exactly one value from `bytes`, allocating at most `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, DecodeError> {
    options(limit).deserialize(bytes).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => DecodeError::TooLarge(limit),
        other => DecodeError::Malformed(other.to_string()),
    })
}
