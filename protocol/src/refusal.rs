//! Why something a peer sent was refused, as types (in the manner of rustls's `PeerMisbehaved`).
//!
//! A [`Refusal`] is what a machine reports in its events, with the detail a log or an assurer
//! needs. Its [`RefusalCode`] is what travels on the wire to the peer (only codes travel: a peer
//! never receives our detail, and never sends us text). Every refusal leaves the machine's state
//! as it was. Human text is derived from the type; nothing matches on text.

use crate::directory::{DirectoryError, RecordError};
use crate::feed::EntryError;
use crate::ids::{LookupId, OdsCode};
use crate::merkle::ProofError;
use crate::records::TextError;
use crate::sign::KeyId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Why a message from a peer was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender is not (or no longer) a connected, admitted peer.
    #[error("the sender is not connected")]
    NotConnected,
    /// This kind of message may not come from this kind of member to this one.
    #[error("a {sender} may not send a {kind} message to a {receiver}")]
    NotAllowed { sender: &'static str, kind: &'static str, receiver: &'static str },

    /// A lookup signed for one setting came over another's connection.
    #[error("the lookup is signed for setting {claimed} but came from {from}")]
    NotFromSetting { claimed: OdsCode, from: OdsCode },
    /// A signature does not hold (unknown signer, wrong role, revoked or retired key...).
    #[error(transparent)]
    Signature(#[from] RecordError),
    /// A text field breaks a rule.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The lookup's time is too far from the hub's clock.
    #[error("lookup time {at} is more than {skew_ms} ms from the hub's clock {now}")]
    ClockSkew { at: Timestamp, now: Timestamp, skew_ms: u64 },
    /// This lookup id was seen before with other content.
    #[error("lookup {0} was already made: a replay is refused")]
    Replayed(LookupId),
    /// The setting made more lookups than its limit allows.
    #[error("setting {0} is over its lookup rate limit")]
    SettingRateLimited(OdsCode),
    /// One person at a setting made more lookups than the limit allows.
    #[error("a person at setting {0} is over the per-person lookup rate limit")]
    PersonRateLimited(OdsCode),

    /// A feed batch's bounds are wrong.
    #[error("batch bounds are wrong: after {after}, upto {upto}")]
    BatchBounds { after: u64, upto: u64 },
    /// An entry lies outside its batch's bounds or out of order.
    #[error("entry {seq} is outside the batch or out of order")]
    EntryOrder { seq: u64 },
    /// An entry of one origin in a batch of another.
    #[error("entry of {0} in a batch of another origin")]
    EntryOrigin(OdsCode),
    /// An authority sent a feed other than its own.
    #[error("an authority may send only its own feed")]
    NotOwnFeed,
    /// The origin is not a member that writes a feed.
    #[error("{0} is not a member that writes a feed")]
    UnknownOrigin(OdsCode),
    /// A relaying hub sent another hub's visits: visits are taken only from the hub that made them.
    #[error("visits of {0} are taken only from {0} itself")]
    RelayedVisits(OdsCode),
    /// An entry does not verify.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// Two different signed entries with one origin and sequence.
    #[error("equivocation at sequence {0}")]
    Equivocation(u64),
    /// An entry at a sequence already proven to equivocate.
    #[error("entry {0} equivocates (already proven)")]
    KnownEquivocation(u64),
    /// An authority's batch came without the signed head that covers it.
    #[error("the batch of {0} carries no signed head")]
    MissingHead(OdsCode),
    /// The batch's head is for another origin or sequence than the batch.
    #[error("the head (sequence {head_seq}) does not close the batch (upto {upto})")]
    HeadNotAtUpto { head_seq: u64, upto: u64 },
    /// The head's signature does not hold.
    #[error("the head of {origin}: {source}")]
    Head { origin: OdsCode, source: RecordError },
    /// The head says it was signed further in the future than clocks can drift.
    #[error("the head of {origin} is dated {at}, ahead of the clock {now}")]
    HeadFromTheFuture { origin: OdsCode, at: Timestamp, now: Timestamp },
    /// The entries do not add up to what the head signs: the sender omitted or altered some.
    #[error("the entries of {origin} do not match its head at sequence {seq}")]
    HeadMismatch { origin: OdsCode, seq: u64 },
    /// Two different heads signed for one origin and sequence.
    #[error("two different heads of {origin} at sequence {seq}")]
    HeadEquivocation { origin: OdsCode, seq: u64 },
    /// A batch run is longer than the most entries a feed may hold.
    #[error("a run of more than {0} entries")]
    RunTooLong(usize),

    /// A notification for another authority.
    #[error("the notification is for {0}")]
    WrongAuthority(OdsCode),
    /// A relayed notification for an authority this hub is not a home hub of.
    #[error("this hub is not a home hub of {0}")]
    NotHomeHub(OdsCode),
    /// A notification of a scheduled lookup (those notify no one).
    #[error("the lookup was made at a setting whose lookups are scheduled: it notifies no one")]
    Scheduled,
    /// A notification for a child the authority publishes no plan for (at the lookup's date).
    #[error("the authority has no plan visible for the child looked up")]
    NoMatchingPlan,
    /// A notification names plans other than the authority's own matches.
    #[error("the notification names other plans than those the authority holds for the child")]
    MatchesDiffer,
    /// A notification sent again with a receipt for another lookup or hub.
    #[error("the receipt sent with the notification is for another lookup or hub")]
    ReceiptMismatch,
    /// A notification older than the authority's age window.
    #[error("the lookup at {at} is older than the {days}-day window for notifications")]
    TooOld { at: Timestamp, days: u64 },

    /// A directory version was refused.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// A sync claims more of our own feed than we hold without our signed head to prove it.
    #[error("a sync claims sequence {claimed} of our own feed, which we never signed")]
    UnprovenClaim { claimed: u64 },
    /// A proof in an answer does not hold.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The hub's own key is not usable (revoked, retired, expired, or not yet in its directory):
    /// what it would sign now could not be checked.
    #[error("this hub's own key {0} is not active in its directory: it answers no lookup until it runs on one that is")]
    OwnKeyNotUsable(KeyId),
}

/// The code of a refusal, as it travels to the peer that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The sender is not connected or may not send this.
    NotAllowed,
    /// A lookup signed for another setting.
    NotFromSetting,
    /// A signature does not hold.
    BadSignature,
    /// A text field breaks a rule.
    BadText,
    /// The lookup's time is too far from the hub's clock.
    ClockSkew,
    /// A lookup id seen before with other content.
    Replayed,
    /// Over a lookup rate limit.
    RateLimited,
    /// A feed batch that breaks a rule of the feed.
    BadBatch,
    /// Entries that do not match their signed head.
    HeadMismatch,
    /// A notification the authority does not accept.
    BadNotification,
    /// A directory version that breaks a rule.
    BadDirectory,
    /// The hub cannot answer now (its own key is not active): another hub can.
    HubUnavailable,
}

impl RefusalCode {
    /// Text for a person reading a refusal the peer sent.
    pub fn describe(self) -> &'static str {
        match self {
            RefusalCode::NotAllowed => "not allowed: the sender may not send this message",
            RefusalCode::NotFromSetting => "the lookup is signed for another setting than the one connected",
            RefusalCode::BadSignature => "a signature does not hold (unknown, revoked or retired key)",
            RefusalCode::BadText => "a text field is empty, too long or holds a control character",
            RefusalCode::ClockSkew => "the lookup's time is too far from the hub's clock: check this machine's clock",
            RefusalCode::Replayed => "this lookup id was already used for another lookup",
            RefusalCode::RateLimited => "too many lookups: the rate limit for this setting or person is reached",
            RefusalCode::BadBatch => "a feed batch breaks a rule of the feed",
            RefusalCode::HeadMismatch => "the entries do not match their signed head",
            RefusalCode::BadNotification => "the notification is not one this authority accepts",
            RefusalCode::BadDirectory => "a directory version breaks a rule",
            RefusalCode::HubUnavailable => "the hub cannot answer now (its own key is not active): ask another hub",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Refusal {
    /// The code told to the peer.
    pub fn code(&self) -> RefusalCode {
        use Refusal::*;
        match self {
            NotConnected | NotAllowed { .. } | UnprovenClaim { .. } => RefusalCode::NotAllowed,
            NotFromSetting { .. } => RefusalCode::NotFromSetting,
            Signature(_) | Head { .. } => RefusalCode::BadSignature,
            Text(_) => RefusalCode::BadText,
            ClockSkew { .. } | HeadFromTheFuture { .. } => RefusalCode::ClockSkew,
            Replayed(_) => RefusalCode::Replayed,
            SettingRateLimited(_) | PersonRateLimited(_) => RefusalCode::RateLimited,
            BatchBounds { .. }
            | EntryOrder { .. }
            | EntryOrigin(_)
            | NotOwnFeed
            | UnknownOrigin(_)
            | RelayedVisits(_)
            | Entry(_)
            | Equivocation(_)
            | KnownEquivocation(_)
            | MissingHead(_)
            | HeadNotAtUpto { .. }
            | HeadEquivocation { .. }
            | RunTooLong(_) => RefusalCode::BadBatch,
            HeadMismatch { .. } | Proof(_) => RefusalCode::HeadMismatch,
            WrongAuthority(_)
            | NotHomeHub(_)
            | Scheduled
            | NoMatchingPlan
            | MatchesDiffer
            | ReceiptMismatch
            | TooOld { .. } => RefusalCode::BadNotification,
            Directory(_) => RefusalCode::BadDirectory,
            OwnKeyNotUsable(_) => RefusalCode::HubUnavailable,
        }
    }
}
