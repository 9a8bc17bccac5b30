//! Feeds: each origin's signed, numbered entries, and the signed heads that commit to them
//! (docs/protocol.md).
//!
//! An authority's feed holds every change to the plans it publishes and to its contacts; a hub's
//! feed holds the visits (unscheduled lookups of flagged children) it answered. Only the origin
//! writes its feed, so for one key the entry with the higher sequence wins; two different entries
//! with one origin and sequence are an equivocation.
//!
//! An authority also signs a [`FeedHead`]: its sequence, its time, the root of the
//! [`PlanMap`](crate::merkle::PlanMap) of the plans it publishes, and the digest of its contacts
//! entry. [`LiveFeed`] is the live set of one origin (the latest entry of each key) with that map
//! kept up to date, shared by the authority (its own feed) and the hubs (their replicas): both
//! compute the same root from the same entries, which is how a hub proves what it holds.

use crate::directory::{RecordError, Role, TrustedDirectory};
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::merkle::{Digest, MapProof, PlanMap, key_of};
use crate::records::{AccessEvent, Contacts, Plan, PlanError, TextError};
use crate::sign::{Signable, Signed, Verified, signing_bytes};
use crate::time::Timestamp;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};

impl Signable for AccessEvent {
    const DOMAIN: &'static str = "cpis/access-event";
}

/// One entry of an origin's feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub origin: OdsCode,
    /// Increases with every entry of the origin (not necessarily by one).
    pub seq: u64,
    /// When the origin made the entry.
    pub at: Timestamp,
    pub body: EntryBody,
}

/// What an entry says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// A plan's current state at its authority (the alert summary).
    Plan(Plan),
    /// The authority's contacts (boxed, as the visit: an entry in memory is the size of its
    /// largest variant, and most entries are plans).
    Contacts(Box<Contacts>),
    /// The authority no longer publishes this plan: hubs drop it (a tombstone).
    Removed(Removal),
    /// An unscheduled lookup a hub answered, as the care setting signed it.
    Visit(Box<Signed<AccessEvent>>),
}

/// A plan the authority stops publishing, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub reference: PlanRef,
    pub reason: RemovalReason,
}

/// Why a plan stopped being published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemovalReason {
    /// Entered in error: shown nowhere.
    Withdrawn,
    /// Past its visibility window (365 days after its end, 28 after an unborn child's due date).
    PastVisibility,
}

impl Signable for FeedEntry {
    const DOMAIN: &'static str = "cpis/entry";
}

/// A signed feed entry as it travels and is stored.
pub type SignedEntry = Signed<FeedEntry>;

/// What a newer entry of the same origin replaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKey {
    Plan(PlanRef),
    Contacts,
    Visit(LookupId),
}

impl FeedEntry {
    pub fn key(&self) -> EntryKey {
        match KeyRef::of(self) {
            KeyRef::Plan(reference) => EntryKey::Plan(reference.clone()),
            KeyRef::Contacts => EntryKey::Contacts,
            KeyRef::Visit(id) => EntryKey::Visit(*id),
        }
    }

    /// The role whose members may write this kind of entry.
    pub fn writer_role(&self) -> Role {
        match self.body {
            EntryBody::Plan(_) | EntryBody::Contacts(_) | EntryBody::Removed(_) => Role::Authority,
            EntryBody::Visit(_) => Role::Hub,
        }
    }

    /// The digest a head commits to: SHA-256 of the entry's signed bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&[&signing_bytes(self)])
    }
}

/// Why an entry is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The origin's signature does not hold (unknown signer, wrong role, revoked key...).
    #[error("entry {seq} of {origin}: {source}")]
    Signature { origin: OdsCode, seq: u64, source: RecordError },
    /// The care setting's signature inside a visit does not hold.
    #[error("visit in entry {seq} of {origin}: {source}")]
    VisitSignature { origin: OdsCode, seq: u64, source: RecordError },
    /// The plan breaks a plan rule.
    #[error("entry {seq} of {origin}: {source}")]
    Plan { origin: OdsCode, seq: u64, source: PlanError },
    /// A text field breaks a rule.
    #[error("entry {seq} of {origin}: {source}")]
    Text { origin: OdsCode, seq: u64, source: TextError },
    /// Sequence zero is never used.
    #[error("entry of {0} has sequence 0")]
    ZeroSequence(OdsCode),
}

/// Checks the rules of an entry's body (not its signature).
pub fn check_body(entry: &FeedEntry) -> Result<(), EntryError> {
    let (origin, seq) = (entry.origin.clone(), entry.seq);
    if seq == 0 {
        return Err(EntryError::ZeroSequence(origin));
    }
    match &entry.body {
        EntryBody::Plan(p) => p.check().map_err(|source| EntryError::Plan { origin, seq, source }),
        EntryBody::Contacts(c) => c.check().map_err(|source| EntryError::Text { origin, seq, source }),
        EntryBody::Visit(v) => v.body.check().map_err(|source| EntryError::Text { origin, seq, source }),
        EntryBody::Removed(_) => Ok(()),
    }
}

/// Verifies an entry end to end: the origin's signature with a key valid at the entry's time, the
/// rules of its body, and for a visit the care setting's signature too.
pub fn verify_entry(dir: &TrustedDirectory, entry: SignedEntry) -> Result<Verified<FeedEntry>, EntryError> {
    check_inside(dir, &entry.body)?;
    let (origin, seq, role, at) = (entry.body.origin.clone(), entry.body.seq, entry.body.writer_role(), entry.body.at);
    dir.verify_at(entry, &origin, role, at).map_err(|source| EntryError::Signature { origin, seq, source })
}

/// [`verify_entry`] for an entry whose signature a driver already checked, off its event loop,
/// with the key the directory lists under its key id: every other check, against `dir` now.
pub fn admit_verified_entry(
    dir: &TrustedDirectory,
    entry: Verified<FeedEntry>,
) -> Result<Verified<FeedEntry>, EntryError> {
    let body = entry.body();
    check_inside(dir, body)?;
    dir.admit_verified_at(&entry, &body.origin, body.writer_role(), body.at)
        .map_err(|source| EntryError::Signature { origin: body.origin.clone(), seq: body.seq, source })?;
    Ok(entry)
}

/// The body's rules, and the care setting's signature inside a visit.
fn check_inside(dir: &TrustedDirectory, entry: &FeedEntry) -> Result<(), EntryError> {
    check_body(entry)?;
    if let EntryBody::Visit(v) = &entry.body {
        dir.verify_at((**v).clone(), &v.body.setting, Role::Setting, v.body.at)
            .map_err(|source| EntryError::VisitSignature { origin: entry.origin.clone(), seq: entry.seq, source })?;
    }
    Ok(())
}

/// An authority's signed word on its whole feed at `seq`: the plans it publishes and its contacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHead {
    pub origin: OdsCode,
    /// Every entry up to this sequence is reflected.
    pub seq: u64,
    /// When the authority signed it: how fresh a copy under this head is.
    pub at: Timestamp,
    /// Root of the map from NHS numbers to the plans published for them.
    pub plans_root: Digest,
    /// How many NHS numbers have published plans.
    pub children: u64,
    /// Digest of the latest contacts entry, if any.
    pub contacts: Option<Digest>,
}

impl Signable for FeedHead {
    const DOMAIN: &'static str = "cpis/head";
}

/// A signed head as it travels and is stored.
pub type SignedHead = Signed<FeedHead>;

impl FeedHead {
    /// Whether `self` is newer than `other` (a higher sequence, or the same one signed later).
    pub fn newer_than(&self, other: &FeedHead) -> bool {
        (self.seq, self.at) > (other.seq, other.at)
    }

    /// Whether two heads of one origin and sequence say different things (an equivocation).
    pub fn conflicts_with(&self, other: &FeedHead) -> bool {
        self.origin == other.origin
            && self.seq == other.seq
            && (self.plans_root, self.children, self.contacts) != (other.plans_root, other.children, other.contacts)
    }
}

/// Verifies a head: signed by its origin, an authority, with a key valid at the head's time.
pub fn verify_head(dir: &TrustedDirectory, head: SignedHead) -> Result<Verified<FeedHead>, RecordError> {
    let (origin, at) = (head.body.origin.clone(), head.body.at);
    dir.verify_at(head, &origin, Role::Authority, at)
}

/// The value a plan map holds for one NHS number: a digest of every published plan entry for it,
/// in order of plan reference.
pub fn plans_value<'a>(nhs: NhsNumber, entries: impl Iterator<Item = &'a FeedEntry>) -> Digest {
    let mut sorted: Vec<(&PlanRef, Digest)> = entries
        .filter_map(|e| match &e.body {
            EntryBody::Plan(p) => Some((&p.reference, e.digest())),
            _ => None,
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut parts: Vec<Vec<u8>> = vec![b"cpis/plans\0".to_vec(), nhs.as_u64().to_be_bytes().to_vec()];
    parts.push((sorted.len() as u64).to_be_bytes().to_vec());
    parts.extend(sorted.iter().map(|(_, d)| d.0.to_vec()));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Digest::of(&refs)
}

/// The reference of a plan entry (None for any other entry).
fn plan_reference(e: &SignedEntry) -> Option<&PlanRef> {
    match &e.body.body {
        EntryBody::Plan(p) => Some(&p.reference),
        _ => None,
    }
}

/// An entry's key borrowed from the entry ([`FeedEntry::key`] is its owned copy), as
/// [`LiveFeed`] hashes and compares it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Plan(&'a PlanRef),
    Contacts,
    Visit(&'a LookupId),
}

impl<'a> KeyRef<'a> {
    fn of(entry: &'a FeedEntry) -> KeyRef<'a> {
        match &entry.body {
            EntryBody::Plan(p) => KeyRef::Plan(&p.reference),
            EntryBody::Removed(r) => KeyRef::Plan(&r.reference),
            EntryBody::Contacts(_) => KeyRef::Contacts,
            EntryBody::Visit(v) => KeyRef::Visit(&v.body.lookup_id),
        }
    }

    fn of_key(key: &'a EntryKey) -> KeyRef<'a> {
        match key {
            EntryKey::Plan(r) => KeyRef::Plan(r),
            EntryKey::Contacts => KeyRef::Contacts,
            EntryKey::Visit(id) => KeyRef::Visit(id),
        }
    }
}

/// The live set of one origin's feed: the latest entry of every key (tombstones included), the
/// plans it publishes by NHS number, and the map whose root a head signs.
#[derive(Clone, Default)]
pub struct LiveFeed {
    /// Boxed: a map filled in order of sequence keeps its nodes about half full, and a node of
    /// pointers wastes far less than a node of whole entries.
    entries: BTreeMap<u64, Box<SignedEntry>>,
    /// The sequence of the live entry of each key, found by the key's hash and compared with
    /// the entry itself: the keys (a plan's reference, mostly) are not held a second time.
    latest: HashTable<u64>,
    hasher: RandomState,
    /// (NHS number, sequence) of every plan entry, so that a child's plans are one range: about
    /// 16 bytes a plan, where a map of maps cost hundreds.
    by_nhs: BTreeSet<(NhsNumber, u64)>,
    /// How many NHS numbers `by_nhs` holds.
    children: u64,
    map: PlanMap,
}

impl std::fmt::Debug for LiveFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveFeed({} entries, {} children)", self.entries.len(), self.children)
    }
}

/// What [`LiveFeed::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The entry is the newest of its key; the older one at `superseded` (if any) left.
    New { superseded: Option<Box<SignedEntry>> },
    /// A newer entry of the key is already held: nothing changed.
    Stale,
    /// The very same entry is already held.
    Held,
}

impl LiveFeed {
    pub fn new() -> LiveFeed {
        LiveFeed::default()
    }

    /// Every live entry, by sequence.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &SignedEntry> + '_ {
        self.entries.values().map(|e| &**e)
    }

    /// The live entries after sequence `seq`, by sequence.
    pub fn entries_after(&self, seq: u64) -> impl Iterator<Item = &SignedEntry> + '_ {
        self.entries.range(seq.saturating_add(1)..).map(|(_, e)| &**e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live entry of `key`.
    pub fn latest(&self, key: &EntryKey) -> Option<&SignedEntry> {
        let key = KeyRef::of_key(key);
        self.at(self.latest_seq(key, self.hasher.hash_one(key))?)
    }

    /// The sequence of the live entry of `key`, whose hash is `hash`.
    fn latest_seq(&self, key: KeyRef<'_>, hash: u64) -> Option<u64> {
        let live_of = |seq: &u64| self.at(*seq).is_some_and(|e| KeyRef::of(&e.body) == key);
        self.latest.find(hash, live_of).copied()
    }

    /// The entry held at `seq`, if it is live.
    pub fn at(&self, seq: u64) -> Option<&SignedEntry> {
        self.entries.get(&seq).map(|e| &**e)
    }

    /// Puts `entry` in if it is the newest of its key.
    pub fn apply(&mut self, entry: SignedEntry) -> Applied {
        let (key, seq) = (KeyRef::of(&entry.body), entry.body.seq);
        let hash = self.hasher.hash_one(key);
        let held = self.latest_seq(key, hash);
        match held {
            Some(held) if held == seq => return Applied::Held,
            Some(held) if held > seq => return Applied::Stale,
            _ => {}
        }
        let superseded = held.and_then(|seq| self.take(seq));
        let nhs = match &entry.body.body {
            EntryBody::Plan(p) => {
                if self.seqs_of(p.nhs).next().is_none() {
                    self.children += 1;
                }
                self.by_nhs.insert((p.nhs, seq));
                Some(p.nhs)
            }
            _ => None,
        };
        self.entries.insert(seq, Box::new(entry));
        let (entries, hasher) = (&self.entries, &self.hasher);
        let rehash = |s: &u64| entries.get(s).map_or(0, |e| hasher.hash_one(KeyRef::of(&e.body)));
        self.latest.insert_unique(hash, seq, rehash);
        if let Some(nhs) = nhs {
            self.refresh(nhs);
        }
        Applied::New { superseded }
    }

    /// Takes the entry at `seq` out (pruning, or a newer one replacing it); returns it.
    pub fn take(&mut self, seq: u64) -> Option<Box<SignedEntry>> {
        let e = self.entries.remove(&seq)?;
        let hash = self.hasher.hash_one(KeyRef::of(&e.body));
        if let Ok(live) = self.latest.find_entry(hash, |s| *s == seq) {
            live.remove();
        }
        if let EntryBody::Plan(p) = &e.body.body {
            if self.by_nhs.remove(&(p.nhs, seq)) && self.seqs_of(p.nhs).next().is_none() {
                self.children -= 1;
            }
            self.refresh(p.nhs);
        }
        Some(e)
    }

    /// Recomputes the map's value for `nhs` from the plans held for it.
    fn refresh(&mut self, nhs: NhsNumber) {
        let key = key_of(nhs);
        if self.seqs_of(nhs).next().is_none() {
            self.map.remove(&key);
        } else {
            let entries = self.seqs_of(nhs).filter_map(|seq| self.at(seq)).map(|e| &e.body);
            self.map.insert(key, plans_value(nhs, entries));
        }
    }

    /// The sequences of the plan entries held for `nhs`.
    fn seqs_of(&self, nhs: NhsNumber) -> impl Iterator<Item = u64> + '_ {
        self.by_nhs.range((nhs, 0)..=(nhs, u64::MAX)).map(|&(_, seq)| seq)
    }

    /// Every published plan entry for `nhs`, in order of reference.
    pub fn plans_of(&self, nhs: NhsNumber) -> Vec<&SignedEntry> {
        let mut plans: Vec<&SignedEntry> = self.seqs_of(nhs).filter_map(|seq| self.at(seq)).collect();
        plans.sort_by(|a, b| plan_reference(a).cmp(&plan_reference(b)));
        plans
    }

    /// The map's root, the number of children and the contacts digest: what a head signs.
    pub fn commitment(&mut self) -> (Digest, u64, Option<Digest>) {
        let contacts = self.latest(&EntryKey::Contacts).map(|e| e.body.digest());
        (self.map.root(), self.children, contacts)
    }

    /// Whether `head` signs exactly this live set.
    pub fn matches(&mut self, head: &FeedHead) -> bool {
        self.commitment() == (head.plans_root, head.children, head.contacts)
    }

    /// A proof for `nhs` under the current root ([`LiveFeed::commitment`] first caches it).
    pub fn prove(&self, nhs: NhsNumber) -> MapProof {
        self.map.prove(&key_of(nhs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::PlanType;
    use crate::sign::Identity;
    use crate::time::Date;

    fn entry(seq: u64, reference: &str, nhs: &str, withdrawn: bool) -> SignedEntry {
        let body = if withdrawn {
            EntryBody::Removed(Removal {
                reference: PlanRef::parse(reference).unwrap(),
                reason: RemovalReason::Withdrawn,
            })
        } else {
            EntryBody::Plan(Plan {
                reference: PlanRef::parse(reference).unwrap(),
                nhs: NhsNumber::parse(nhs).unwrap(),
                plan_type: PlanType::LookedAfter,
                start: Date::parse("2026-01-05").unwrap(),
                end: None,
                due: None,
                withdrawn: false,
            })
        };
        Identity::from_seed([4; 32]).sign(FeedEntry {
            origin: OdsCode::parse("204").unwrap(),
            seq,
            at: Timestamp(seq),
            body,
        })
    }

    #[test]
    fn the_same_live_set_gives_the_same_commitment_in_any_order() {
        let es =
            [entry(1, "A", "9434765919", false), entry(2, "B", "4010232137", false), entry(3, "A", "9434765919", true)];
        let mut forward = LiveFeed::new();
        for e in es.iter().cloned() {
            forward.apply(e);
        }
        let mut backward = LiveFeed::new();
        for e in es.iter().rev().cloned() {
            backward.apply(e);
        }
        assert_eq!(forward.commitment(), backward.commitment());
        assert_eq!(forward.plans_of(NhsNumber::parse("9434765919").unwrap()).len(), 0, "removed");
        assert_eq!(forward.commitment().1, 1, "one child has a published plan");
    }

    #[test]
    fn a_missing_entry_changes_the_commitment() {
        let mut full = LiveFeed::new();
        let mut partial = LiveFeed::new();
        for e in [entry(1, "A", "9434765919", false), entry(2, "B", "4010232137", false)] {
            full.apply(e.clone());
            if e.body.seq != 2 {
                partial.apply(e);
            }
        }
        assert_ne!(full.commitment(), partial.commitment());
    }

    #[test]
    fn a_childs_plans_come_in_order_of_reference_and_children_are_counted_once() {
        let child = NhsNumber::parse("9434765919").unwrap();
        let mut f = LiveFeed::new();
        f.apply(entry(1, "B", "9434765919", false));
        f.apply(entry(2, "A", "9434765919", false));
        let refs = |f: &LiveFeed| f.plans_of(child).iter().map(|e| e.body.key()).collect::<Vec<_>>();
        let plan = |r: &str| EntryKey::Plan(PlanRef::parse(r).unwrap());
        assert_eq!(refs(&f), [plan("A"), plan("B")], "by reference, not by sequence");
        assert_eq!(f.commitment().1, 1, "two plans, one child");
        // Plan B moves to another child (a corrected NHS number), then A is withdrawn.
        f.apply(entry(3, "B", "4010232137", false));
        assert_eq!((refs(&f), f.commitment().1), (vec![plan("A")], 2));
        f.apply(entry(4, "A", "9434765919", true));
        assert_eq!((refs(&f), f.commitment().1), (vec![], 1));
        let mut same = LiveFeed::new();
        for e in [entry(3, "B", "4010232137", false), entry(4, "A", "9434765919", true)] {
            same.apply(e);
        }
        assert_eq!(f.commitment(), same.commitment(), "the same live set, reached another way");
    }

    #[test]
    fn an_older_entry_of_a_key_is_stale() {
        let mut f = LiveFeed::new();
        f.apply(entry(5, "A", "9434765919", false));
        assert_eq!(f.apply(entry(3, "A", "9434765919", true)), Applied::Stale);
        assert_eq!(f.apply(entry(5, "A", "9434765919", false)), Applied::Held);
    }

    #[test]
    fn the_live_entry_of_each_key_is_found_as_the_feed_grows_and_shrinks() {
        let key = |n: u64| EntryKey::Plan(PlanRef::parse(&format!("LAC-{n}")).unwrap());
        let live_seq = |f: &LiveFeed, n: u64| f.latest(&key(n)).map(|e| e.body.seq);
        let mut f = LiveFeed::new();
        for n in 1..=1_000 {
            f.apply(entry(n, &format!("LAC-{n}"), "9434765919", false));
        }
        // The even plans withdrawn (a tombstone takes each one's place), then the tombstones of
        // the first hundred pruned.
        for n in (2..=1_000).step_by(2) {
            let applied = f.apply(entry(1_000 + n, &format!("LAC-{n}"), "9434765919", true));
            assert!(matches!(applied, Applied::New { superseded: Some(ref old) } if old.body.seq == n));
        }
        for n in (2..=100).step_by(2) {
            assert_eq!(f.take(1_000 + n).map(|e| e.body.seq), Some(1_000 + n));
        }
        for n in 1..=1_000 {
            let expected = match n {
                n if n % 2 == 1 => Some(n),
                n if n <= 100 => None,
                n => Some(1_000 + n),
            };
            assert_eq!(live_seq(&f, n), expected, "LAC-{n}");
        }
        assert_eq!(f.len(), 950);
        assert_eq!(live_seq(&f, 1_001), None);
        assert_eq!(f.apply(entry(2, "LAC-2", "9434765919", false)), Applied::New { superseded: None });
    }
}
