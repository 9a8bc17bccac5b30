//! A compact sparse Merkle map from NHS numbers to digests, with proofs of inclusion and of
//! absence (docs/protocol.md, "Heads and proofs").
//!
//! Each authority keeps one over its published plans: the key is the SHA-256 of the NHS number,
//! the value commits to every plan the authority publishes for that number. The root goes into
//! the authority's signed [`FeedHead`](crate::feed::FeedHead), so a hub can prove to a care setting
//! both that the plans it shows are exactly the authority's plans for a child and, where it shows
//! none, that the authority has none.
//!
//! Every hash here is SHA-256 truncated to 128 bits ([`Digest`]). Forging a proof against a root
//! an authority signed needs a second preimage, which costs 2¹²⁸ hashes: the strength of the
//! ed25519 signatures themselves. Collisions (2⁶⁴) would help only whoever builds the tree, the
//! authority, which can misstate its own records anyway; a hub chooses nothing in it. Halving the
//! hashes halves the proofs that every answer carries for every authority.
//!
//! The tree is a binary trie over the 128 bits of the key in which a subtree holding a single
//! leaf is represented by that leaf (as in the compact sparse Merkle trees of Diem's Jellyfish
//! tree):
//!
//! - the empty subtree hashes to 16 zero bytes;
//! - a leaf hashes to `SHA-256(0x00 || key || value)`;
//! - a subtree with two or more leaves hashes to `SHA-256(0x01 || left || right)`.
//!
//! A proof for a key walks from the root along the key's bits to where the path ends (an empty
//! subtree, the key's own leaf, or another key's leaf that alone occupies the key's place) and
//! carries the sibling hashes met on the way; empty siblings are marked in a bitmap rather than
//! sent. Updates cost one hash per level touched (about log₂ of the number of keys), hashes are
//! cached and recomputed lazily, and an answer's proof is about log₂(n) hashes long.

use crate::ids::NhsNumber;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Bytes of a [`Digest`].
pub const DIGEST_BYTES: usize = 16;

/// A SHA-256 digest truncated to 128 bits (see the module doc for why that is enough).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; DIGEST_BYTES]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}..)", hex::encode(&self.0[..6]))
    }
}

impl Digest {
    /// The digest of the empty subtree.
    pub const EMPTY: Digest = Digest([0; DIGEST_BYTES]);

    /// SHA-256 of `parts`, in order, truncated.
    pub fn of(parts: &[&[u8]]) -> Digest {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        let full: [u8; 32] = h.finalize().into();
        let mut out = [0u8; DIGEST_BYTES];
        out.copy_from_slice(&full[..DIGEST_BYTES]);
        Digest(out)
    }

    fn bit(&self, depth: usize) -> bool {
        self.0[depth / 8] & (0x80 >> (depth % 8)) != 0
    }

    /// Whether the first `depth` bits of both are equal.
    fn same_prefix(&self, other: &Digest, depth: usize) -> bool {
        (0..depth).all(|d| self.bit(d) == other.bit(d))
    }
}

/// Bits in a key: the deepest a path can go.
pub const KEY_BITS: usize = DIGEST_BYTES * 8;

/// The map key of an NHS number.
pub fn key_of(nhs: NhsNumber) -> Digest {
    Digest::of(&[b"cpis/map-key\0", &nhs.as_u64().to_be_bytes()])
}

fn leaf_hash(key: &Digest, value: &Digest) -> Digest {
    Digest::of(&[&[0x00], &key.0, &value.0])
}

fn branch_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::of(&[&[0x01], &left.0, &right.0])
}

#[derive(Clone, Default)]
enum Node {
    #[default]
    Empty,
    Leaf(Box<(Digest, Digest)>),
    Branch(Box<Branch>),
}

#[derive(Clone)]
struct Branch {
    left: Node,
    right: Node,
    /// Cached hash; `None` once a change below it is not yet hashed.
    hash: Option<Digest>,
}

impl Node {
    fn hash(&self) -> Digest {
        match self {
            Node::Empty => Digest::EMPTY,
            Node::Leaf(l) => leaf_hash(&l.0, &l.1),
            Node::Branch(b) => b.hash.unwrap_or_else(|| branch_hash(&b.left.hash(), &b.right.hash())),
        }
    }

    /// The hash, caching every branch hash computed on the way.
    fn hash_mut(&mut self) -> Digest {
        match self {
            Node::Branch(b) => match b.hash {
                Some(h) => h,
                None => {
                    let h = branch_hash(&b.left.hash_mut(), &b.right.hash_mut());
                    b.hash = Some(h);
                    h
                }
            },
            other => other.hash(),
        }
    }

    fn insert(&mut self, depth: usize, key: Digest, value: Digest) -> bool {
        match self {
            Node::Empty => {
                *self = Node::Leaf(Box::new((key, value)));
                true
            }
            Node::Leaf(l) if l.0 == key => {
                l.1 = value;
                false
            }
            Node::Leaf(_) if depth >= KEY_BITS => false,
            Node::Leaf(l) => {
                let (old_key, old_value) = **l;
                let mut branch = Node::Branch(Box::new(Branch { left: Node::Empty, right: Node::Empty, hash: None }));
                branch.insert(depth, old_key, old_value);
                let added = branch.insert(depth, key, value);
                *self = branch;
                added
            }
            Node::Branch(b) => {
                b.hash = None;
                let child = if key.bit(depth) { &mut b.right } else { &mut b.left };
                child.insert(depth + 1, key, value)
            }
        }
    }

    fn remove(&mut self, depth: usize, key: &Digest) -> bool {
        match self {
            Node::Empty => false,
            Node::Leaf(l) => {
                if l.0 != *key {
                    return false;
                }
                *self = Node::Empty;
                true
            }
            Node::Branch(b) => {
                let child = if key.bit(depth) { &mut b.right } else { &mut b.left };
                if !child.remove(depth + 1, key) {
                    return false;
                }
                b.hash = None;
                // A branch left with a single leaf below it collapses into that leaf.
                let collapsed = match (&mut b.left, &mut b.right) {
                    (Node::Empty, Node::Empty) => Some(Node::Empty),
                    (Node::Empty, leaf @ Node::Leaf(_)) | (leaf @ Node::Leaf(_), Node::Empty) => {
                        Some(std::mem::take(leaf))
                    }
                    _ => None,
                };
                if let Some(node) = collapsed {
                    *self = node;
                }
                true
            }
        }
    }
}

/// A sparse Merkle map of keys (digests of NHS numbers) to values.
#[derive(Clone, Default)]
pub struct PlanMap {
    root: Node,
    len: usize,
}

impl fmt::Debug for PlanMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanMap({} keys)", self.len)
    }
}

impl PlanMap {
    pub fn new() -> PlanMap {
        PlanMap::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the value of `key`.
    pub fn insert(&mut self, key: Digest, value: Digest) {
        if self.root.insert(0, key, value) {
            self.len += 1;
        }
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &Digest) {
        if self.root.remove(0, key) {
            self.len -= 1;
        }
    }

    /// The root hash (hashing whatever changed since it was last asked).
    pub fn root(&mut self) -> Digest {
        self.root.hash_mut()
    }

    /// A proof for `key`: of inclusion if it is present, of absence otherwise. Cheapest right
    /// after [`PlanMap::root`], which caches every hash the proof reads.
    pub fn prove(&self, key: &Digest) -> MapProof {
        let mut node = &self.root;
        let mut depth = 0usize;
        let mut present = Vec::new();
        let mut siblings = Vec::new();
        loop {
            match node {
                Node::Empty => break,
                Node::Leaf(l) => {
                    let terminal = if l.0 == *key { Terminal::Found } else { Terminal::Other { key: l.0, value: l.1 } };
                    return MapProof { depth: depth as u16, present, siblings, terminal };
                }
                Node::Branch(b) => {
                    let (next, sibling) = if key.bit(depth) { (&b.right, &b.left) } else { (&b.left, &b.right) };
                    let h = sibling.hash();
                    if depth.is_multiple_of(8) {
                        present.push(0);
                    }
                    if h != Digest::EMPTY {
                        if let Some(byte) = present.last_mut() {
                            *byte |= 0x80 >> (depth % 8);
                        }
                        siblings.push(h);
                    }
                    node = next;
                    depth += 1;
                }
            }
        }
        MapProof { depth: depth as u16, present, siblings, terminal: Terminal::Empty }
    }
}

/// Where a proof's path ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Terminal {
    /// An empty subtree: the key is absent.
    Empty,
    /// The key's own leaf: the verifier supplies the value it expects.
    Found,
    /// Another key's leaf, alone where the key would be: the key is absent.
    Other { key: Digest, value: Digest },
}

/// A proof that a key has a given value, or none, under a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapProof {
    /// How many bits of the key the path follows.
    pub depth: u16,
    /// One bit per level (most significant bit first): set where the sibling is not empty.
    pub present: Vec<u8>,
    /// The siblings that are not empty, from the root down.
    pub siblings: Vec<Digest>,
    pub terminal: Terminal,
}

/// Why a proof does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof's shape is wrong (lengths, depth, bits).
    #[error("the proof is malformed")]
    Malformed,
    /// The proof ends at the key's leaf but absence was to be proved, or the reverse.
    #[error("the proof proves the other thing (presence for absence, or absence for presence)")]
    WrongKind,
    /// The leaf the proof ends at could not be where the key is.
    #[error("the proof's leaf is not on the key's path")]
    OffPath,
    /// The proof does not lead to the signed root.
    #[error("the proof does not lead to the signed root")]
    RootMismatch,
}

impl MapProof {
    /// Checks that under `root`, `key` has `value` (`Some`) or is absent (`None`).
    pub fn verify(&self, root: &Digest, key: &Digest, value: Option<&Digest>) -> Result<(), ProofError> {
        let depth = usize::from(self.depth);
        if depth > KEY_BITS || self.present.len() != depth.div_ceil(8) {
            return Err(ProofError::Malformed);
        }
        let is_present = |d: usize| self.present[d / 8] & (0x80 >> (d % 8)) != 0;
        let listed = (0..depth).filter(|d| is_present(*d)).count();
        if listed != self.siblings.len() || (depth % 8 != 0 && self.present[depth / 8] & (0xFF >> (depth % 8)) != 0) {
            return Err(ProofError::Malformed);
        }
        let (mut hash, mut single) = match (&self.terminal, value) {
            (Terminal::Found, Some(v)) => (leaf_hash(key, v), true),
            (Terminal::Empty, None) => (Digest::EMPTY, false),
            (Terminal::Other { key: other, value: v }, None) => {
                if other == key || !other.same_prefix(key, depth) {
                    return Err(ProofError::OffPath);
                }
                (leaf_hash(other, v), true)
            }
            _ => return Err(ProofError::WrongKind),
        };
        let mut siblings = self.siblings.iter().rev();
        for d in (0..depth).rev() {
            if !is_present(d) {
                if single {
                    continue;
                }
                if hash == Digest::EMPTY {
                    return Err(ProofError::Malformed);
                }
                hash = if key.bit(d) { branch_hash(&Digest::EMPTY, &hash) } else { branch_hash(&hash, &Digest::EMPTY) };
                continue;
            }
            let sibling = siblings.next().ok_or(ProofError::Malformed)?;
            hash = if key.bit(d) { branch_hash(sibling, &hash) } else { branch_hash(&hash, sibling) };
            single = false;
        }
        if hash != *root {
            return Err(ProofError::RootMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u64) -> Digest {
        Digest::of(&[&n.to_be_bytes()])
    }

    fn value(n: u64) -> Digest {
        Digest::of(&[b"v", &n.to_be_bytes()])
    }

    /// The root by the definition, from the sorted keys.
    fn naive(leaves: &[(Digest, Digest)], depth: usize) -> Digest {
        match leaves {
            [] => Digest::EMPTY,
            [(k, v)] => leaf_hash(k, v),
            _ => {
                let (l, r): (Vec<_>, Vec<_>) = leaves.iter().partition(|(k, _)| !k.bit(depth));
                branch_hash(&naive(&l, depth + 1), &naive(&r, depth + 1))
            }
        }
    }

    #[test]
    fn empty_map_proves_absence_of_anything() {
        let mut m = PlanMap::new();
        let root = m.root();
        assert_eq!(root, Digest::EMPTY);
        assert_eq!(m.prove(&key(1)).verify(&root, &key(1), None), Ok(()));
    }

    #[test]
    fn a_present_key_cannot_be_proved_absent_nor_given_another_value() {
        let mut m = PlanMap::new();
        for n in 0..50 {
            m.insert(key(n), value(n));
        }
        let root = m.root();
        let p = m.prove(&key(7));
        assert_eq!(p.verify(&root, &key(7), Some(&value(7))), Ok(()));
        assert_eq!(p.verify(&root, &key(7), Some(&value(8))), Err(ProofError::RootMismatch));
        assert_eq!(p.verify(&root, &key(7), None), Err(ProofError::WrongKind));
        // Another key's absence proof cannot be passed off for a present key.
        let absent = m.prove(&key(1000));
        assert!(absent.verify(&root, &key(7), None).is_err());
    }

    #[test]
    fn removing_every_key_gives_back_the_empty_root() {
        let mut m = PlanMap::new();
        for n in 0..200 {
            m.insert(key(n), value(n));
        }
        for n in 0..200 {
            m.remove(&key(n));
        }
        assert!(m.is_empty());
        assert_eq!(m.root(), Digest::EMPTY);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn root_matches_the_definition_and_every_proof_verifies(
            present in proptest::collection::btree_set(0u64..400, 0..80),
            removed in proptest::collection::btree_set(0u64..400, 0..40),
            probe in 0u64..400,
        ) {
            let mut m = PlanMap::new();
            for n in &present {
                m.insert(key(*n), value(*n));
            }
            for n in &removed {
                m.remove(&key(*n));
            }
            let mut leaves: Vec<(Digest, Digest)> =
                present.difference(&removed).map(|n| (key(*n), value(*n))).collect();
            leaves.sort();
            let root = m.root();
            prop_assert_eq!(root, naive(&leaves, 0));
            prop_assert_eq!(m.len(), leaves.len());
            let k = key(probe);
            let found = leaves.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v);
            let proof = m.prove(&k);
            prop_assert_eq!(proof.verify(&root, &k, found.as_ref()), Ok(()));
            // The opposite claim never verifies.
            let wrong = if found.is_some() { None } else { Some(value(probe)) };
            prop_assert!(proof.verify(&root, &k, wrong.as_ref()).is_err());
        }

        #[test]
        fn a_tampered_proof_never_verifies(
            present in proptest::collection::btree_set(0u64..300, 2..60),
            probe in 0u64..300,
            flip in 0usize..64,
        ) {
            let mut m = PlanMap::new();
            for n in &present {
                m.insert(key(*n), value(*n));
            }
            let root = m.root();
            let k = key(probe);
            let found = present.contains(&probe).then(|| value(probe));
            let mut proof = m.prove(&k);
            if proof.siblings.is_empty() {
                return Ok(());
            }
            let i = flip % proof.siblings.len();
            proof.siblings[i].0[flip % DIGEST_BYTES] ^= 1;
            prop_assert!(proof.verify(&root, &k, found.as_ref()).is_err());
        }
    }
}
