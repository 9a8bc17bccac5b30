//! Feeds: each origin's signed, numbered entries (DESIGN §6).
//!
//! An authority's feed holds every change to its plans and contacts; a hub's feed holds the visits
//! (unscheduled lookups) it answered. Only the origin writes its feed, so for one key the entry
//! with the higher sequence wins; two different entries with one origin and sequence are an
//! equivocation.

use crate::directory::{RecordError, Role, TrustedDirectory};
use crate::ids::{LookupId, OdsCode, PlanRef};
use crate::records::{AccessEvent, Contacts, Plan, PlanError, TextError};
use crate::sign::{Signable, Signed, Verified};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

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
    /// The authority's contacts.
    Contacts(Contacts),
    /// An unscheduled lookup a hub answered, as the care setting signed it.
    Visit(Signed<AccessEvent>),
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
        match &self.body {
            EntryBody::Plan(p) => EntryKey::Plan(p.reference.clone()),
            EntryBody::Contacts(_) => EntryKey::Contacts,
            EntryBody::Visit(v) => EntryKey::Visit(v.body.lookup_id),
        }
    }

    /// The role whose members may write this kind of entry.
    pub fn writer_role(&self) -> Role {
        match self.body {
            EntryBody::Plan(_) | EntryBody::Contacts(_) => Role::Authority,
            EntryBody::Visit(_) => Role::Hub,
        }
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

/// Verifies an entry end to end: the origin's signature with a non-revoked key, the rules of its
/// body, and for a visit the care setting's signature too.
pub fn verify_entry(dir: &TrustedDirectory, entry: SignedEntry) -> Result<Verified<FeedEntry>, EntryError> {
    let (origin, seq) = (entry.body.origin.clone(), entry.body.seq);
    if seq == 0 {
        return Err(EntryError::ZeroSequence(origin));
    }
    match &entry.body.body {
        EntryBody::Plan(p) => p.check().map_err(|source| EntryError::Plan { origin: origin.clone(), seq, source })?,
        EntryBody::Contacts(c) => {
            c.check().map_err(|source| EntryError::Text { origin: origin.clone(), seq, source })?
        }
        EntryBody::Visit(v) => {
            v.body.check().map_err(|source| EntryError::Text { origin: origin.clone(), seq, source })?;
            dir.verify_at(v.clone(), &v.body.setting, Role::Setting, v.body.at)
                .map_err(|source| EntryError::VisitSignature { origin: origin.clone(), seq, source })?;
        }
    }
    let (role, at) = (entry.body.writer_role(), entry.body.at);
    dir.verify_at(entry, &origin, role, at).map_err(|source| EntryError::Signature { origin, seq, source })
}
