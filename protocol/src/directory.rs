//! The directory: who is in the federation, with which keys (docs/keys.md).
//!
//! A [`SignedDirectory`] is signed by a threshold of the federation's root keys. A node starts
//! from one it is given ([`TrustedDirectory::bootstrap`]) and then accepts only the next version
//! ([`TrustedDirectory::accept_update`]), in the manner of TUF: version N+1 must be signed by a
//! threshold of version N's roots, and also of its own roots when they change; each root key
//! counts once; an expired version is refused.

use crate::ids::OdsCode;
use crate::records::{Contacts, SettingType, check_text};
use crate::sign::{
    KeyId, PreparedKey, PublicKey, Signable, SignatureBytes, Signed, Verified, signing_bytes, verify_raw,
};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// Most members a directory may list.
pub const MEMBERS_MAX: usize = 4096;
/// Most keys one member may list.
pub const MEMBER_KEYS_MAX: usize = 8;
/// Most root keys.
pub const ROOTS_MAX: usize = 16;
/// Most network addresses a hub may list.
pub const ADDRESSES_MAX: usize = 8;
/// Most home hubs an authority or a setting may list.
pub const HOME_HUBS_MAX: usize = 8;
/// Longest network address (`host:port`) a hub may list, in bytes.
pub const ADDRESS_LEN_MAX: usize = 255;

/// What a member does in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Replicates every feed, answers lookups, relays notifications.
    Hub,
    /// A council: owns its children's plans, receives notifications.
    Authority,
    /// A care setting: looks children up.
    Setting,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Hub => "hub",
            Role::Authority => "authority",
            Role::Setting => "setting",
        }
    }
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Signs records and opens connections.
    Active,
    /// Replaced: records it signed stay valid; it opens no connections.
    Retired { at: Timestamp },
    /// Believed stolen: every record it signed is invalid.
    Revoked { at: Timestamp },
}

/// One of a member's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberKey {
    pub public: PublicKey,
    pub valid_from: Timestamp,
    pub valid_until: Timestamp,
    pub status: KeyStatus,
}

impl MemberKey {
    pub fn id(&self) -> KeyId {
        self.public.id()
    }
    /// Whether the key may open a connection or sign something new at `now`.
    pub fn usable_at(&self, now: Timestamp) -> bool {
        self.status == KeyStatus::Active && self.valid_from <= now && now < self.valid_until
    }
}

/// A member of the federation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub code: OdsCode,
    pub role: Role,
    pub name: String,
    /// An authority's contacts (its feed may carry newer ones).
    pub contacts: Option<Contacts>,
    /// A hub's network addresses (`host:port`), in order of preference.
    pub addresses: Vec<String>,
    /// For authorities and settings: the hubs they connect to, in order of preference.
    pub home_hubs: Vec<OdsCode>,
    /// For settings: what kind of care setting it is.
    pub setting_type: Option<SettingType>,
    pub keys: Vec<MemberKey>,
}

impl Member {
    pub fn key(&self, id: KeyId) -> Option<&MemberKey> {
        self.keys.iter().find(|k| k.id() == id)
    }
}

/// The list of members, with its version and expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// The federation's name; never changes.
    pub federation: String,
    pub version: u64,
    pub expires_at: Timestamp,
    pub roots: Vec<PublicKey>,
    /// How many distinct root keys must sign.
    pub threshold: u8,
    pub members: Vec<Member>,
}

impl Signable for Directory {
    const DOMAIN: &'static str = "cpis/directory";
}

/// A root key's signature over a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSignature {
    pub key_id: KeyId,
    pub signature: SignatureBytes,
}

/// A directory with its root signatures, not yet checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDirectory {
    pub directory: Directory,
    pub signatures: Vec<RootSignature>,
}

impl SignedDirectory {
    /// Signs `directory` with each of `roots`.
    pub fn sign(directory: Directory, roots: &[&crate::sign::Identity]) -> SignedDirectory {
        let bytes = signing_bytes(&directory);
        let signatures =
            roots.iter().map(|r| RootSignature { key_id: r.key_id(), signature: r.sign_raw(&bytes) }).collect();
        SignedDirectory { directory, signatures }
    }
}

/// Which set of roots a threshold was counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSet {
    /// The roots of the version already trusted.
    Previous,
    /// The roots listed by the version offered.
    Offered,
}

impl fmt::Display for RootSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RootSet::Previous => "the trusted version's",
            RootSet::Offered => "its own",
        })
    }
}

/// Why a directory version was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The offered version is not above the trusted one.
    #[error("directory version {offered} is not newer than the trusted version {current}")]
    NotNewer { current: u64, offered: u64 },
    /// The offered version skips one or more versions.
    #[error("directory version {offered} skips versions after {current}: only {current}+1 is accepted")]
    SkipsVersion { current: u64, offered: u64 },
    /// The offered version has expired.
    #[error("directory version {version} expired at {expires_at}")]
    Expired { version: u64, expires_at: Timestamp },
    /// Too few distinct valid root signatures.
    #[error("directory signed by {valid} of {set} root keys, {need} needed")]
    ThresholdNotMet { set: RootSet, valid: usize, need: usize },
    /// A signature by a root key does not verify.
    #[error("the signature by root key {0} does not verify")]
    BadRootSignature(KeyId),
    /// The offered version names another federation.
    #[error("directory is for federation {offered:?}, not {current:?}")]
    OtherFederation { current: String, offered: String },
    /// The threshold is zero or above the number of roots.
    #[error("threshold {threshold} does not fit {roots} root keys")]
    BadThreshold { threshold: u8, roots: usize },
    /// A root key is malformed or weak.
    #[error("root key {0} is weak or malformed")]
    WeakRootKey(KeyId),
    /// Two root keys, or two keys anywhere in the directory, share an id.
    #[error("key {0} is listed twice")]
    DuplicateKey(KeyId),
    /// Two members share a code.
    #[error("member {0} is listed twice")]
    DuplicateMember(OdsCode),
    /// A member's entry breaks a rule.
    #[error("member {code}: {rule}")]
    BadMember { code: OdsCode, rule: MemberRule },
    /// A list is longer than its maximum.
    #[error("too many {what}: {len} (at most {max})")]
    TooMany { what: &'static str, len: usize, max: usize },
    /// A version other than the trusted one, with the same number, signed by the roots as well:
    /// the root key holders signed two different directories (or a root key is in other hands).
    #[error(
        "ALARM: a different directory version {version}, also signed by the root keys: the directory forked; the trusted version is kept"
    )]
    Forked { version: u64 },
}

/// The rule a member's entry in the directory breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberRule {
    /// The member's name (or its contacts) breaks a text rule.
    #[error(transparent)]
    Text(#[from] crate::records::TextError),
    /// An authority's code is not of an authority's form.
    #[error("an authority's code is 3 digits or letter-digit-letter-digit-letter")]
    AuthorityCode,
    /// A home hub is not a hub of the directory.
    #[error("home hub {0} is not a hub of the directory")]
    UnknownHomeHub(OdsCode),
    /// A setting does not say what type of setting it is.
    #[error("a setting must say what type of setting it is")]
    MissingSettingType,
    /// One of its keys is weak or malformed.
    #[error("key {0} is weak or malformed")]
    WeakKey(KeyId),
    /// One of its keys is valid from after it is valid until.
    #[error("key {0} is valid from after it is valid until")]
    EmptyKeyWindow(KeyId),
    /// A hub address is empty, too long or holds a control character.
    #[error("a hub address is empty, longer than 255 bytes or holds a control character")]
    BadAddress,
}

/// Why a peer's key is not admitted to a connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// No member lists this key.
    #[error("key {0} belongs to no member of the directory")]
    UnknownKey(KeyId),
    /// The key is revoked or retired.
    #[error("key {key} of {code} is not active")]
    NotActive { code: OdsCode, key: KeyId },
    /// The key is outside its validity window.
    #[error("key {key} of {code} is outside its validity window")]
    OutsideWindow { code: OdsCode, key: KeyId },
    /// The member does not have the role the connection needs.
    #[error("{code} is a {actual}, not one of the roles allowed here")]
    WrongRole { code: OdsCode, actual: &'static str },
    /// The directory itself has expired: nobody is admitted until a newer one arrives.
    #[error("the directory has expired")]
    DirectoryExpired,
}

/// Why a signed record is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The signer is not in the directory.
    #[error("{0} is not a member of the federation")]
    UnknownSigner(OdsCode),
    /// The signer may not sign this kind of record.
    #[error("{code} is a {actual}; this record must be signed by a {expected}")]
    WrongRole { code: OdsCode, expected: &'static str, actual: &'static str },
    /// The key id is not one of the signer's keys.
    #[error("key {key} is not a key of {code}")]
    UnknownKey { code: OdsCode, key: KeyId },
    /// The key was revoked: everything it signed is invalid.
    #[error("key {key} of {code} is revoked")]
    RevokedKey { code: OdsCode, key: KeyId },
    /// The signature does not verify.
    #[error("the signature by {code} does not verify")]
    BadSignature { code: OdsCode },
    /// The record's time is outside the signing key's validity window.
    #[error("key {key} of {code} was not valid at {at}")]
    OutsideWindow { code: OdsCode, key: KeyId, at: Timestamp },
    /// The record says it was made after its key was retired.
    #[error("key {key} of {code} was retired at {retired_at}: it signs nothing made at {at}")]
    SignedAfterRetirement { code: OdsCode, key: KeyId, at: Timestamp, retired_at: Timestamp },
}

/// A directory whose signatures and rules have been checked; what a node trusts. It never
/// changes once trusted (a newer version is a new value), so its clones share one copy.
#[derive(Clone)]
pub struct TrustedDirectory(Arc<Indexed>);

/// A trusted directory with its indexes.
struct Indexed {
    signed: Arc<SignedDirectory>,
    by_code: HashMap<OdsCode, usize>,
    by_key: HashMap<KeyId, usize>,
    /// Every member key, decoded once.
    prepared: HashMap<KeyId, PreparedKey>,
}

impl fmt::Debug for TrustedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedDirectory(v{}, {} members)", self.version(), self.0.signed.directory.members.len())
    }
}

impl TrustedDirectory {
    /// Trusts a first directory: well formed, unexpired, signed by a threshold of its own roots.
    pub fn bootstrap(signed: SignedDirectory, now: Timestamp) -> Result<TrustedDirectory, DirectoryError> {
        let d = &signed.directory;
        check_unexpired(d, now)?;
        check_roots(d)?;
        // Signatures before the member rules: an unsigned directory costs only its signatures.
        check_threshold(&signed, &d.roots, d.threshold, RootSet::Offered)?;
        check_rules(d)?;
        Ok(TrustedDirectory::index(signed))
    }

    /// Accepts the next version, or says which rule it breaks. `self` is unchanged either way.
    pub fn accept_update(&self, next: SignedDirectory, now: Timestamp) -> Result<TrustedDirectory, DirectoryError> {
        let (cur, new) = (self.directory(), &next.directory);
        if new.version <= cur.version {
            return Err(DirectoryError::NotNewer { current: cur.version, offered: new.version });
        }
        if new.version != cur.version + 1 {
            return Err(DirectoryError::SkipsVersion { current: cur.version, offered: new.version });
        }
        if new.federation != cur.federation {
            return Err(DirectoryError::OtherFederation {
                current: cur.federation.clone(),
                offered: new.federation.clone(),
            });
        }
        check_unexpired(new, now)?;
        // Signatures by the trusted roots before anything else: a version no root signed costs
        // only the signatures it carries.
        check_threshold(&next, &cur.roots, cur.threshold, RootSet::Previous)?;
        check_roots(new)?;
        if new.roots != cur.roots || new.threshold != cur.threshold {
            check_threshold(&next, &new.roots, new.threshold, RootSet::Offered)?;
        }
        check_rules(new)?;
        Ok(TrustedDirectory::index(next))
    }

    fn index(signed: SignedDirectory) -> TrustedDirectory {
        let mut by_code = HashMap::new();
        let mut by_key = HashMap::new();
        let mut prepared = HashMap::new();
        for (i, m) in signed.directory.members.iter().enumerate() {
            by_code.insert(m.code.clone(), i);
            for k in &m.keys {
                by_key.insert(k.id(), i);
                // The rules refused weak or malformed keys: every key prepares.
                if let Some(p) = PreparedKey::new(&k.public) {
                    prepared.insert(k.id(), p);
                }
            }
        }
        TrustedDirectory(Arc::new(Indexed { signed: Arc::new(signed), by_code, by_key, prepared }))
    }

    pub fn directory(&self) -> &Directory {
        &self.0.signed.directory
    }

    /// Refuses a directory that has expired at `now`.
    pub fn check_unexpired(&self, now: Timestamp) -> Result<(), DirectoryError> {
        check_unexpired(self.directory(), now)
    }
    pub fn signed(&self) -> &SignedDirectory {
        &self.0.signed
    }
    /// The signed directory, shared rather than copied.
    pub fn shared_signed(&self) -> Arc<SignedDirectory> {
        Arc::clone(&self.0.signed)
    }
    pub fn version(&self) -> u64 {
        self.0.signed.directory.version
    }
    pub fn members(&self) -> &[Member] {
        &self.0.signed.directory.members
    }
    pub fn member(&self, code: &OdsCode) -> Option<&Member> {
        self.0.by_code.get(code).map(|&i| &self.0.signed.directory.members[i])
    }

    /// Members with a role, in directory order.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.members().iter().filter(move |m| m.role == role)
    }

    /// The member a connecting peer's key belongs to, if the key is active and in its window
    /// and the member has one of `roles`.
    pub fn admit(&self, key: &PublicKey, now: Timestamp, roles: &[Role]) -> Result<&Member, AdmissionError> {
        let id = key.id();
        let member = self.0.by_key.get(&id).map(|&i| &self.0.signed.directory.members[i]);
        let (member, mk) = member
            .and_then(|m| m.key(id).filter(|k| k.public == *key).map(|k| (m, k)))
            .ok_or(AdmissionError::UnknownKey(id))?;
        if mk.status != KeyStatus::Active {
            return Err(AdmissionError::NotActive { code: member.code.clone(), key: id });
        }
        if !mk.usable_at(now) {
            return Err(AdmissionError::OutsideWindow { code: member.code.clone(), key: id });
        }
        if !roles.contains(&member.role) {
            return Err(AdmissionError::WrongRole { code: member.code.clone(), actual: member.role.name() });
        }
        Ok(member)
    }

    /// Verifies a record `signer` signed as a `role`, with a key of its that is not revoked
    /// (records signed by retired keys stay valid).
    pub fn verify<T: Signable>(
        &self,
        signed: Signed<T>,
        signer: &OdsCode,
        role: Role,
    ) -> Result<Verified<T>, RecordError> {
        self.signer_key(signed.key_id, signer, role)?;
        self.check_signature(signed, signer)
    }

    /// [`Self::verify`], and the record's own time `at` must fall in the key's validity window.
    pub fn verify_at<T: Signable>(
        &self,
        signed: Signed<T>,
        signer: &OdsCode,
        role: Role,
        at: Timestamp,
    ) -> Result<Verified<T>, RecordError> {
        let key = self.signer_key(signed.key_id, signer, role)?;
        let verified = self.check_signature(signed, signer)?;
        self.check_window(key, signer, at)?;
        Ok(verified)
    }

    /// [`Self::verify_at`] of a record identical to `held`, one this node verified when it took
    /// it: the signature cannot give another verdict, so only the key's standing and window are
    /// checked again, against this directory now. Any other record is verified in full.
    pub fn verify_at_or_held<T: Signable + PartialEq>(
        &self,
        signed: Signed<T>,
        held: Option<&Signed<T>>,
        signer: &OdsCode,
        role: Role,
        at: Timestamp,
    ) -> Result<Verified<T>, RecordError> {
        if held != Some(&signed) {
            return self.verify_at(signed, signer, role, at);
        }
        self.check_window(self.signer_key(signed.key_id, signer, role)?, signer, at)?;
        Ok(Verified::held(signed))
    }

    /// The signature only, with the key `signer` lists under the record's key id (decoded once,
    /// when the directory was taken): for a driver that checks signatures beside its event loop,
    /// which then makes every other check (`admit_verified_at`). The record comes back as it was
    /// if the key is not the signer's or the signature does not hold.
    #[allow(clippy::result_large_err)] // The `Err` is the record given back, as large as the `Ok`.
    pub fn verify_signature_only<T: Signable>(
        &self,
        signer: &OdsCode,
        signed: Signed<T>,
    ) -> Result<Verified<T>, Signed<T>> {
        let listed = self.member(signer).is_some_and(|m| m.key(signed.key_id).is_some());
        match self.0.prepared.get(&signed.key_id) {
            Some(key) if listed => signed.verify_prepared_or_back(key),
            _ => Err(signed),
        }
    }

    /// The key listed under `id`, decoded and checked strong.
    pub(crate) fn prepared_key(&self, id: KeyId) -> Option<&PreparedKey> {
        self.0.prepared.get(&id)
    }

    /// The signature, with the key prepared for its key id (after [`Self::signer_key`]).
    fn check_signature<T: Signable>(&self, signed: Signed<T>, signer: &OdsCode) -> Result<Verified<T>, RecordError> {
        let bad = || RecordError::BadSignature { code: signer.clone() };
        let prepared = self.0.prepared.get(&signed.key_id).ok_or_else(bad)?;
        signed.verify_prepared(prepared).map_err(|_| bad())
    }

    /// For a record whose signature a driver already checked (off its event loop) with the key
    /// this directory lists under the record's key id: every check of [`Self::verify_at`] but
    /// the signature's, against this directory now.
    pub fn admit_verified_at<T>(
        &self,
        verified: &Verified<T>,
        signer: &OdsCode,
        role: Role,
        at: Timestamp,
    ) -> Result<(), RecordError> {
        self.check_window(self.signer_key(verified.signed().key_id, signer, role)?, signer, at)
    }

    /// The key `signer` signs with as a `role`: a member's, of that role, known and not revoked.
    fn signer_key(&self, key_id: KeyId, signer: &OdsCode, role: Role) -> Result<&MemberKey, RecordError> {
        let member = self.member(signer).ok_or_else(|| RecordError::UnknownSigner(signer.clone()))?;
        if member.role != role {
            return Err(RecordError::WrongRole {
                code: signer.clone(),
                expected: role.name(),
                actual: member.role.name(),
            });
        }
        let key = member.key(key_id).ok_or_else(|| RecordError::UnknownKey { code: signer.clone(), key: key_id })?;
        if matches!(key.status, KeyStatus::Revoked { .. }) {
            return Err(RecordError::RevokedKey { code: signer.clone(), key: key_id });
        }
        Ok(key)
    }

    /// `at` falls in the key's validity window, and not at or after its retirement.
    fn check_window(&self, key: &MemberKey, signer: &OdsCode, at: Timestamp) -> Result<(), RecordError> {
        let key_id = key.id();
        if !(key.valid_from <= at && at < key.valid_until) {
            return Err(RecordError::OutsideWindow { code: signer.clone(), key: key_id, at });
        }
        if let KeyStatus::Retired { at: retired_at } = key.status
            && at >= retired_at
        {
            return Err(RecordError::SignedAfterRetirement { code: signer.clone(), key: key_id, at, retired_at });
        }
        Ok(())
    }
}

fn check_unexpired(d: &Directory, now: Timestamp) -> Result<(), DirectoryError> {
    if now >= d.expires_at {
        return Err(DirectoryError::Expired { version: d.version, expires_at: d.expires_at });
    }
    Ok(())
}

/// Counts distinct valid signatures by `roots`; any signature by one of them that fails refuses
/// the directory, signatures by other keys are ignored. At most [`ROOTS_MAX`] signatures are
/// looked at, and each root key's signature is verified once.
fn check_threshold(
    signed: &SignedDirectory,
    roots: &[PublicKey],
    threshold: u8,
    set: RootSet,
) -> Result<(), DirectoryError> {
    too_many("root signatures", signed.signatures.len(), ROOTS_MAX)?;
    let bytes = signing_bytes(&signed.directory);
    let mut counted = BTreeSet::new();
    for sig in &signed.signatures {
        let Some(root) = roots.iter().find(|r| r.id() == sig.key_id) else {
            continue;
        };
        if counted.contains(&sig.key_id) {
            continue;
        }
        verify_raw(root, &bytes, &sig.signature).map_err(|_| DirectoryError::BadRootSignature(sig.key_id))?;
        counted.insert(sig.key_id);
    }
    let need = usize::from(threshold).max(1);
    if counted.len() < need {
        return Err(DirectoryError::ThresholdNotMet { set, valid: counted.len(), need });
    }
    Ok(())
}

fn too_many(what: &'static str, len: usize, max: usize) -> Result<(), DirectoryError> {
    if len > max {
        return Err(DirectoryError::TooMany { what, len, max });
    }
    Ok(())
}

/// The root keys and threshold: checked before any signature is, since the signatures are
/// counted against them.
fn check_roots(d: &Directory) -> Result<(), DirectoryError> {
    too_many("root keys", d.roots.len(), ROOTS_MAX)?;
    if d.threshold == 0 || usize::from(d.threshold) > d.roots.len() {
        return Err(DirectoryError::BadThreshold { threshold: d.threshold, roots: d.roots.len() });
    }
    let mut ids = BTreeSet::new();
    for root in &d.roots {
        if !root.is_strong() {
            return Err(DirectoryError::WeakRootKey(root.id()));
        }
        if !ids.insert(root.id()) {
            return Err(DirectoryError::DuplicateKey(root.id()));
        }
    }
    Ok(())
}

fn check_rules(d: &Directory) -> Result<(), DirectoryError> {
    too_many("members", d.members.len(), MEMBERS_MAX)?;
    let mut key_ids: BTreeSet<KeyId> = d.roots.iter().map(PublicKey::id).collect();
    let hubs: BTreeSet<&OdsCode> = d.members.iter().filter(|m| m.role == Role::Hub).map(|m| &m.code).collect();
    let mut codes = BTreeSet::new();
    for m in &d.members {
        if !codes.insert(&m.code) {
            return Err(DirectoryError::DuplicateMember(m.code.clone()));
        }
        check_member(&hubs, m, &mut key_ids)?;
    }
    Ok(())
}

fn check_member(hubs: &BTreeSet<&OdsCode>, m: &Member, key_ids: &mut BTreeSet<KeyId>) -> Result<(), DirectoryError> {
    let bad = |rule: MemberRule| DirectoryError::BadMember { code: m.code.clone(), rule };
    too_many("keys of one member", m.keys.len(), MEMBER_KEYS_MAX)?;
    too_many("addresses of one hub", m.addresses.len(), ADDRESSES_MAX)?;
    too_many("home hubs of one member", m.home_hubs.len(), HOME_HUBS_MAX)?;
    check_text("member name", &m.name).map_err(|e| bad(e.into()))?;
    if m.role == Role::Authority && !m.code.is_authority_form() {
        return Err(bad(MemberRule::AuthorityCode));
    }
    if let Some(c) = &m.contacts {
        c.check().map_err(|e| bad(e.into()))?;
    }
    if let Some(hub) = m.home_hubs.iter().find(|h| !hubs.contains(h)) {
        return Err(bad(MemberRule::UnknownHomeHub(hub.clone())));
    }
    if m.addresses.iter().any(|a| a.is_empty() || a.len() > ADDRESS_LEN_MAX || a.chars().any(char::is_control)) {
        return Err(bad(MemberRule::BadAddress));
    }
    if m.role == Role::Setting && m.setting_type.is_none() {
        return Err(bad(MemberRule::MissingSettingType));
    }
    for k in &m.keys {
        if !k.public.is_strong() {
            return Err(bad(MemberRule::WeakKey(k.id())));
        }
        if !key_ids.insert(k.id()) {
            return Err(DirectoryError::DuplicateKey(k.id()));
        }
        if k.valid_from >= k.valid_until {
            return Err(bad(MemberRule::EmptyKeyWindow(k.id())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::Identity;

    const DAY: u64 = crate::time::DAY_MS;

    fn roots() -> Vec<Identity> {
        (1..=3).map(|i| Identity::from_seed([i; 32])).collect()
    }

    fn member(code: &str, role: Role, seed: u8) -> Member {
        Member {
            code: OdsCode::parse(code).unwrap(),
            role,
            name: format!("Member {code}"),
            contacts: None,
            addresses: vec![],
            home_hubs: vec![],
            setting_type: (role == Role::Setting).then_some(SettingType::EmergencyDepartment),
            keys: vec![MemberKey {
                public: Identity::from_seed([seed; 32]).public(),
                valid_from: Timestamp(0),
                valid_until: Timestamp(1000 * DAY),
                status: KeyStatus::Active,
            }],
        }
    }

    fn directory(version: u64, roots: &[Identity]) -> Directory {
        Directory {
            federation: "test".into(),
            version,
            expires_at: Timestamp(100 * DAY),
            roots: roots.iter().map(Identity::public).collect(),
            threshold: 2,
            members: vec![member("HUB01", Role::Hub, 10), member("204", Role::Authority, 11)],
        }
    }

    fn now() -> Timestamp {
        Timestamp(DAY)
    }

    #[test]
    fn a_record_verified_by_the_driver_is_admitted_only_in_its_keys_window_and_before_its_retirement() {
        let r = roots();
        let mut d = directory(1, &r);
        d.members[1].keys[0].status = KeyStatus::Retired { at: Timestamp(5 * DAY) };
        let trusted = TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap();
        let signer = Identity::from_seed([11; 32]);
        let verified = signer.sign(directory(9, &r)).verify_with(&signer.public()).unwrap();
        let code = OdsCode::parse("204").unwrap();
        let admit = |role, at| trusted.admit_verified_at(&verified, &code, role, Timestamp(at));
        assert!(admit(Role::Authority, DAY).is_ok());
        assert!(matches!(admit(Role::Authority, 6 * DAY), Err(RecordError::SignedAfterRetirement { .. })));
        assert!(matches!(admit(Role::Authority, 2000 * DAY), Err(RecordError::OutsideWindow { .. })));
        assert!(matches!(admit(Role::Hub, DAY), Err(RecordError::WrongRole { .. })));
        // The same verdicts as checking the signature here.
        let here = |at| trusted.verify_at(verified.signed().clone(), &code, Role::Authority, Timestamp(at)).map(drop);
        assert!(here(DAY).is_ok());
        assert!(matches!(here(6 * DAY), Err(RecordError::SignedAfterRetirement { .. })));
        assert!(matches!(here(2000 * DAY), Err(RecordError::OutsideWindow { .. })));
    }

    #[test]
    fn a_signature_checked_beside_the_loop_holds_only_under_a_key_of_the_named_signer() {
        let r = roots();
        let trusted =
            TrustedDirectory::bootstrap(SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1]]), now()).unwrap();
        let (authority, hub) = (OdsCode::parse("204").unwrap(), OdsCode::parse("HUB01").unwrap());
        let signed = Identity::from_seed([11; 32]).sign(directory(9, &r));
        assert!(trusted.verify_signature_only(&authority, signed.clone()).is_ok());
        // The key is in the directory, but not the hub's: given back as it came.
        assert_eq!(trusted.verify_signature_only(&hub, signed.clone()).unwrap_err(), signed);
        let mut tampered = signed.clone();
        tampered.body.version = 10;
        assert_eq!(trusted.verify_signature_only(&authority, tampered.clone()).unwrap_err(), tampered);
        let stranger = Identity::from_seed([99; 32]).sign(directory(9, &r));
        assert!(trusted.verify_signature_only(&authority, stranger).is_err());
    }

    #[test]
    fn a_record_identical_to_one_held_is_still_refused_when_its_key_no_longer_stands() {
        let r = roots();
        let code = OdsCode::parse("204").unwrap();
        let signed = Identity::from_seed([11; 32]).sign(directory(9, &r));
        let trust =
            |d: Directory| TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap();
        let check = |dir: &TrustedDirectory, record: &Signed<Directory>, at| {
            dir.verify_at_or_held(record.clone(), Some(&signed), &code, Role::Authority, Timestamp(at)).map(drop)
        };
        let trusted = trust(directory(1, &r));
        assert!(check(&trusted, &signed, DAY).is_ok());
        assert!(matches!(check(&trusted, &signed, 2000 * DAY), Err(RecordError::OutsideWindow { .. })));
        // Anything but the very record held is verified in full.
        let mut forged = signed.clone();
        forged.body.version = 10;
        assert!(matches!(check(&trusted, &forged, DAY), Err(RecordError::BadSignature { .. })));
        let mut revoked = directory(1, &r);
        revoked.members[1].keys[0].status = KeyStatus::Revoked { at: Timestamp(DAY) };
        assert!(matches!(check(&trust(revoked), &signed, DAY), Err(RecordError::RevokedKey { .. })));
        let mut rotated = directory(1, &r);
        rotated.members[1].keys[0].public = Identity::from_seed([12; 32]).public();
        assert!(matches!(check(&trust(rotated), &signed, DAY), Err(RecordError::UnknownKey { .. })));
    }

    #[test]
    fn bootstrap_needs_threshold_of_own_roots() {
        let r = roots();
        assert!(TrustedDirectory::bootstrap(SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1]]), now()).is_ok());
        assert_eq!(
            TrustedDirectory::bootstrap(SignedDirectory::sign(directory(1, &r), &[&r[0]]), now()).unwrap_err(),
            DirectoryError::ThresholdNotMet { set: RootSet::Offered, valid: 1, need: 2 }
        );
    }

    #[test]
    fn one_root_signing_twice_counts_once() {
        let r = roots();
        let d = SignedDirectory::sign(directory(1, &r), &[&r[0], &r[0]]);
        assert!(matches!(TrustedDirectory::bootstrap(d, now()), Err(DirectoryError::ThresholdNotMet { valid: 1, .. })));
    }

    #[test]
    fn update_must_be_exactly_next_version_and_unexpired() {
        let r = roots();
        let v1 = TrustedDirectory::bootstrap(SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1]]), now()).unwrap();
        let same = SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1]]);
        assert_eq!(v1.accept_update(same, now()).unwrap_err(), DirectoryError::NotNewer { current: 1, offered: 1 });
        let skip = SignedDirectory::sign(directory(3, &r), &[&r[0], &r[1]]);
        assert_eq!(v1.accept_update(skip, now()).unwrap_err(), DirectoryError::SkipsVersion { current: 1, offered: 3 });
        let v2 = SignedDirectory::sign(directory(2, &r), &[&r[1], &r[2]]);
        assert!(matches!(v1.accept_update(v2.clone(), Timestamp(200 * DAY)), Err(DirectoryError::Expired { .. })));
        assert_eq!(v1.accept_update(v2, now()).unwrap().version(), 2);
    }

    #[test]
    fn rotating_roots_needs_threshold_of_old_and_new() {
        let r = roots();
        let v1 = TrustedDirectory::bootstrap(SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1]]), now()).unwrap();
        let new_roots: Vec<Identity> = (4..=6).map(|i| Identity::from_seed([i; 32])).collect();
        let d2 = directory(2, &new_roots);
        // Only the new roots sign: the old ones did not agree.
        let only_new = SignedDirectory::sign(d2.clone(), &[&new_roots[0], &new_roots[1]]);
        assert_eq!(
            v1.accept_update(only_new, now()).unwrap_err(),
            DirectoryError::ThresholdNotMet { set: RootSet::Previous, valid: 0, need: 2 }
        );
        // Only the old roots sign: the new ones never proved they hold their keys.
        let only_old = SignedDirectory::sign(d2.clone(), &[&r[0], &r[1]]);
        assert_eq!(
            v1.accept_update(only_old, now()).unwrap_err(),
            DirectoryError::ThresholdNotMet { set: RootSet::Offered, valid: 0, need: 2 }
        );
        let both = SignedDirectory::sign(d2, &[&r[0], &r[1], &new_roots[0], &new_roots[2]]);
        assert!(v1.accept_update(both, now()).is_ok());
    }

    #[test]
    fn a_bad_root_signature_is_named() {
        let r = roots();
        let mut d = SignedDirectory::sign(directory(1, &r), &[&r[0], &r[1], &r[2]]);
        d.signatures[2].signature.0[0] ^= 1;
        assert_eq!(TrustedDirectory::bootstrap(d, now()).unwrap_err(), DirectoryError::BadRootSignature(r[2].key_id()));
    }

    #[test]
    fn rule_breaking_directories_are_refused_with_the_rule() {
        let r = roots();
        let mut d = directory(1, &r);
        d.members.push(member("204", Role::Authority, 12));
        let signed = SignedDirectory::sign(d, &[&r[0], &r[1]]);
        assert_eq!(
            TrustedDirectory::bootstrap(signed, now()).unwrap_err(),
            DirectoryError::DuplicateMember(OdsCode::parse("204").unwrap())
        );

        let mut d = directory(1, &r);
        d.members[1].home_hubs.push(OdsCode::parse("NOHUB").unwrap());
        let err = TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap_err();
        assert!(
            matches!(err, DirectoryError::BadMember { rule: MemberRule::UnknownHomeHub(ref h), .. } if h.as_str() == "NOHUB")
        );

        let mut d = directory(1, &r);
        d.members[1].keys[0].public = PublicKey([0; 32]);
        let err = TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap_err();
        assert!(matches!(err, DirectoryError::BadMember { rule: MemberRule::WeakKey(_), .. }));

        let mut d = directory(1, &r);
        d.threshold = 4;
        let err = TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap_err();
        assert_eq!(err, DirectoryError::BadThreshold { threshold: 4, roots: 3 });
    }

    #[test]
    fn admission_needs_an_active_key_in_window_with_an_allowed_role() {
        let r = roots();
        let mut d = directory(1, &r);
        d.members.push(member("RXH01", Role::Setting, 13));
        d.members[2].keys[0].status = KeyStatus::Revoked { at: Timestamp(0) };
        let t = TrustedDirectory::bootstrap(SignedDirectory::sign(d, &[&r[0], &r[1]]), now()).unwrap();
        let hub_key = Identity::from_seed([10; 32]).public();
        assert!(t.admit(&hub_key, now(), &[Role::Hub]).is_ok());
        assert!(matches!(t.admit(&hub_key, now(), &[Role::Setting]), Err(AdmissionError::WrongRole { .. })));
        assert!(matches!(
            t.admit(&hub_key, Timestamp(2000 * DAY), &[Role::Hub]),
            Err(AdmissionError::OutsideWindow { .. })
        ));
        let revoked = Identity::from_seed([13; 32]).public();
        assert!(matches!(t.admit(&revoked, now(), &[Role::Setting]), Err(AdmissionError::NotActive { .. })));
        let stranger = Identity::from_seed([99; 32]).public();
        assert!(matches!(t.admit(&stranger, now(), &[Role::Hub]), Err(AdmissionError::UnknownKey(_))));
    }
}
