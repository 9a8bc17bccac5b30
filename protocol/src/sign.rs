//! Identities and signatures.
//!
//! A record is signed over `domain || 0x00 || format version (u16 BE) || canonical bytes`, where
//! the domain names the kind of record, so that a signature made for one kind can never be passed
//! off as another. Verification is always `verify_strict`.
//!
//! The only way to get a [`Verified<T>`] is to verify a [`Signed<T>`]; handlers that act on
//! records take `Verified<T>`.

use crate::codec;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Version of the signed byte format. A change to any signed structure bumps it.
pub const FORMAT_VERSION: u16 = 2;

/// A type that can be signed, with its domain-separation prefix.
pub trait Signable: Serialize {
    /// Names the kind of record in the signed bytes, e.g. `cpis/entry`.
    const DOMAIN: &'static str;
}

/// The exact bytes a signature covers.
pub fn signing_bytes<T: Signable>(body: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(T::DOMAIN.len() + 3 + 256);
    bytes.extend_from_slice(T::DOMAIN.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    bytes.extend_from_slice(&codec::encode(body));
    bytes
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// Names a key: the first 8 bytes of SHA-256 of the public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl PublicKey {
    pub fn id(&self) -> KeyId {
        let hash = Sha256::digest(self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        KeyId(id)
    }

    /// Whether this is a usable, non-weak (not small-order) key.
    pub fn is_strong(&self) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok_and(|k| !k.is_weak())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<PublicKey> {
        Some(PublicKey(hex::decode(text.trim()).ok()?.try_into().ok()?))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An ed25519 signature, stored as its two 32-byte halves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignatureBytes(pub [u8; 32], pub [u8; 32]);

impl SignatureBytes {
    fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.0);
        b[32..].copy_from_slice(&self.1);
        b
    }
}

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

/// A member's private signing key. Never printed: `Debug` shows the key id only.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// The identity whose secret is this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// The secret seed, for the node to keep in its key file.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn key_id(&self) -> KeyId {
        self.public().id()
    }

    /// Signs `body`.
    pub fn sign<T: Signable>(&self, body: T) -> Signed<T> {
        let signature = self.sign_raw(&signing_bytes(&body));
        Signed { body, key_id: self.key_id(), signature }
    }

    pub(crate) fn sign_raw(&self, bytes: &[u8]) -> SignatureBytes {
        let sig = self.key.sign(bytes).to_bytes();
        let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
        r.copy_from_slice(&sig[..32]);
        s.copy_from_slice(&sig[32..]);
        SignatureBytes(r, s)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.key_id())
    }
}

/// Why a signature does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key is not a valid (or is a weak) ed25519 key.
    #[error("the signing key is not a valid ed25519 key")]
    BadKey,
    /// The signature does not verify strictly over the record's bytes.
    #[error("the signature does not verify")]
    BadSignature,
}

/// Strictly verifies `signature` over `bytes` with `key`.
pub fn verify_raw(key: &PublicKey, bytes: &[u8], signature: &SignatureBytes) -> Result<(), SignatureError> {
    let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| SignatureError::BadKey)?;
    if vk.is_weak() {
        return Err(SignatureError::BadKey);
    }
    let sig = ed25519_dalek::Signature::from_bytes(&signature.to_bytes());
    vk.verify_strict(bytes, &sig).map_err(|_| SignatureError::BadSignature)
}

/// A record with its signer's key id and signature, not yet checked.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub key_id: KeyId,
    pub signature: SignatureBytes,
}

impl<T: fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed").field("body", &self.body).field("key_id", &self.key_id).finish()
    }
}

impl<T: Signable> Signed<T> {
    /// Checks the signature against `key` (which the caller has found valid for the signer).
    pub fn verify_with(self, key: &PublicKey) -> Result<Verified<T>, SignatureError> {
        if key.id() != self.key_id {
            return Err(SignatureError::BadSignature);
        }
        verify_raw(key, &signing_bytes(&self.body), &self.signature)?;
        Ok(Verified(self))
    }

    /// Checks the signature against a key already decoded and checked strong (the directory
    /// keeps its members' keys so), with `verify_strict` as always.
    pub(crate) fn verify_prepared(self, key: &PreparedKey) -> Result<Verified<T>, SignatureError> {
        if !self.holds_with(key) {
            return Err(SignatureError::BadSignature);
        }
        Ok(Verified(self))
    }

    /// [`Self::verify_prepared`], giving the record back as it was if it does not hold.
    pub(crate) fn verify_prepared_or_back(self, key: &PreparedKey) -> Result<Verified<T>, Signed<T>> {
        if self.holds_with(key) { Ok(Verified(self)) } else { Err(self) }
    }

    fn holds_with(&self, key: &PreparedKey) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature.to_bytes());
        key.id == self.key_id && key.key.verify_strict(&signing_bytes(&self.body), &sig).is_ok()
    }
}

/// Checks every record's signature with the key `key_of` gives for it, all or nothing: if any
/// has no key or does not hold, the records come back as they were.
pub(crate) fn verify_all_prepared<'k, T: Signable>(
    records: Vec<Signed<T>>,
    key_of: impl Fn(&Signed<T>) -> Option<&'k PreparedKey>,
) -> Result<Vec<Verified<T>>, Vec<Signed<T>>> {
    if records.iter().all(|r| key_of(r).is_some_and(|k| r.holds_with(k))) {
        Ok(records.into_iter().map(Verified).collect())
    } else {
        Err(records)
    }
}

/// A public key decoded once (point decompression costs about a third of a verification) and
/// checked not weak.
#[derive(Clone)]
pub(crate) struct PreparedKey {
    id: KeyId,
    key: VerifyingKey,
}

impl PreparedKey {
    /// The decoded key, if it is a usable, non-weak ed25519 key.
    pub(crate) fn new(public: &PublicKey) -> Option<PreparedKey> {
        let key = VerifyingKey::from_bytes(&public.0).ok().filter(|k| !k.is_weak())?;
        Some(PreparedKey { id: public.id(), key })
    }
}

/// A signed record whose signature has been checked against a key valid for its signer.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified<T>(Signed<T>);

impl<T> Verified<T> {
    /// A record identical to one this node verified when it took it (see
    /// [`crate::directory::TrustedDirectory::verify_at_or_held`]).
    pub(crate) fn held(signed: Signed<T>) -> Verified<T> {
        Verified(signed)
    }
    pub fn body(&self) -> &T {
        &self.0.body
    }
    pub fn signed(&self) -> &Signed<T> {
        &self.0
    }
    pub fn into_signed(self) -> Signed<T> {
        self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Verified<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verified({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Debug, Clone)]
    struct Note(u32);
    impl Signable for Note {
        const DOMAIN: &'static str = "cpis/test-note";
    }
    #[derive(Serialize, Debug, Clone)]
    struct Other(u32);
    impl Signable for Other {
        const DOMAIN: &'static str = "cpis/test-other";
    }

    #[test]
    fn signature_verifies_only_with_its_key_and_its_bytes() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let signed = a.sign(Note(7));
        assert!(signed.clone().verify_with(&a.public()).is_ok());
        assert!(signed.clone().verify_with(&b.public()).is_err());
        let mut tampered = signed;
        tampered.body.0 = 8;
        assert_eq!(tampered.verify_with(&a.public()).unwrap_err(), SignatureError::BadSignature);
    }

    #[test]
    fn domain_separation_keeps_one_kind_from_passing_as_another() {
        let a = Identity::from_seed([1; 32]);
        let note = a.sign(Note(7));
        let forged = Signed { body: Other(7), key_id: note.key_id, signature: note.signature };
        assert!(forged.verify_with(&a.public()).is_err());
    }

    #[test]
    fn identity_debug_shows_no_secret() {
        let a = Identity::from_seed([9; 32]);
        let text = format!("{a:?}");
        assert!(text.starts_with("Identity("));
        assert!(!text.contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn weak_keys_are_not_strong() {
        assert!(!PublicKey([0; 32]).is_strong());
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(!PublicKey(identity_point).is_strong());
        assert!(Identity::from_seed([3; 32]).public().is_strong());
    }
}
