//! The wire: messages between members, and the frames that carry them.
//!
//! A frame is a 4-byte big-endian payload length, then the payload. The payload is the protocol
//! version (u16 big-endian) followed by the canonical encoding of one [`Message`]. The length is
//! checked against [`FRAME_BYTES_MAX`] before anything is allocated; decoding any bytes gives a
//! message or an error, never a panic.

use crate::codec::{self, DecodeError};
use crate::directory::SignedDirectory;
use crate::feed::SignedEntry;
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::records::AccessEvent;
use crate::sign::{Signable, Signed};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The version of the messages below; peers speaking another are refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame payload, in bytes.
pub const FRAME_BYTES_MAX: usize = 4 << 20;
/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Most entries in one feed batch.
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Most high-water marks in one sync message (one per origin).
pub const SYNC_ORIGINS_MAX: usize = crate::directory::MEMBERS_MAX;
/// Most directory versions sent in one message.
pub const DIRECTORY_CHAIN_MAX: usize = 64;
/// Most visits a lookup answer shows.
pub const HISTORY_LEN_MAX: usize = 25;
/// Most plans a lookup answer shows.
pub const ANSWER_PLANS_MAX: usize = 64;

/// How far a peer has an origin's feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighWater {
    pub origin: OdsCode,
    /// Every entry of the origin up to here has been seen.
    pub seq: u64,
    /// When the sender last knew this to be the origin's latest (it heard from the origin, or from a
    /// peer that had).
    pub as_of: Timestamp,
}

/// A run of an origin's entries: all the sender holds of `origin` with `after < seq <= upto`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBatch {
    pub origin: OdsCode,
    pub after: u64,
    pub upto: u64,
    pub entries: Vec<SignedEntry>,
    /// When the sender last knew `upto` to be the origin's latest (a hub's freshness for the
    /// origin; an authority's batches carry their newest entry's time, and hubs use their own
    /// clock for what an authority sends directly).
    pub as_of: Timestamp,
}

/// A notification that a child with a plan at `authority` was looked up: signed by the hub that
/// answered; it carries the care setting's own signed access event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub event: Signed<AccessEvent>,
    pub authority: OdsCode,
    /// The authority's plans that matched.
    pub matched: Vec<PlanRef>,
    /// The hub that answered the lookup (the receipt goes back to it).
    pub hub: OdsCode,
    pub answered_at: Timestamp,
}

impl Signable for Notification {
    const DOMAIN: &'static str = "cpis/notification";
}

/// An authority's signed word that it has stored a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub lookup_id: LookupId,
    pub authority: OdsCode,
    /// The hub that answered the lookup.
    pub hub: OdsCode,
    pub stored_at: Timestamp,
}

impl Signable for Receipt {
    const DOMAIN: &'static str = "cpis/receipt";
}

/// How fresh a hub's copy of an authority's feed is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub authority: OdsCode,
    pub seq: u64,
    pub as_of: Timestamp,
}

/// A hub's answer to a lookup: every visible plan (as its authority signed it), each authority's
/// contacts and freshness, and the visit history (as hubs and settings signed it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub lookup_id: LookupId,
    pub nhs: NhsNumber,
    pub hub: OdsCode,
    pub answered_at: Timestamp,
    pub plans: Vec<SignedEntry>,
    pub contacts: Vec<SignedEntry>,
    pub freshness: Vec<Freshness>,
    pub history: Vec<SignedEntry>,
}

/// Why a request was refused, told to the peer that sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub lookup_id: Option<LookupId>,
    pub reason: String,
}

/// Every message of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sent on connect and periodically: the sender's directory version and high-water marks.
    /// The receiver answers with what the sender lacks.
    Sync { directory_version: u64, have: Vec<HighWater> },
    /// Directory versions, oldest first, each the successor of the one before.
    Directories(Vec<SignedDirectory>),
    /// Feed entries.
    Feed(FeedBatch),
    /// A care setting's lookup.
    Lookup(Signed<AccessEvent>),
    /// The answer to a lookup.
    Answer(LookupAnswer),
    /// A notification on its way to its authority.
    Notify(Signed<Notification>),
    /// A receipt on its way back to the hub that answered.
    Receipt(Signed<Receipt>),
    /// A request was refused.
    Refused(Refusal),
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Sync { .. } => "sync",
            Message::Directories(_) => "directories",
            Message::Feed(_) => "feed",
            Message::Lookup(_) => "lookup",
            Message::Answer(_) => "answer",
            Message::Notify(_) => "notify",
            Message::Receipt(_) => "receipt",
            Message::Refused(_) => "refused",
        }
    }
}

/// Why bytes from a peer are not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame's declared length is above the maximum.
    #[error("frame of {len} bytes is larger than the {max}-byte maximum")]
    FrameTooLarge { len: usize, max: usize },
    /// Fewer bytes than the frame header or the declared length.
    #[error("truncated frame")]
    Truncated,
    /// The peer speaks another protocol version.
    #[error("protocol version {0} is not supported (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// The payload does not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A list in the message is longer than its maximum.
    #[error("too many {what}: {len} (at most {max})")]
    TooMany { what: &'static str, len: usize, max: usize },
}

/// Encodes a message as a frame payload (version + message), without the length prefix.
pub fn encode_payload(message: &Message) -> Vec<u8> {
    let mut out = PROTOCOL_VERSION.to_be_bytes().to_vec();
    out.extend_from_slice(&codec::encode(message));
    out
}

/// Encodes a message as a whole frame (length prefix + payload).
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let payload = encode_payload(message);
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The payload length a frame header declares, refused if above [`FRAME_BYTES_MAX`].
pub fn frame_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge { len, max: FRAME_BYTES_MAX });
    }
    Ok(len)
}

/// Decodes a frame payload into a message and checks its list limits.
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge { len: payload.len(), max: FRAME_BYTES_MAX });
    }
    let (version, body) = payload.split_at_checked(2).ok_or(WireError::Truncated)?;
    let version = u16::from_be_bytes([version[0], version[1]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let message: Message = codec::decode(body, FRAME_BYTES_MAX as u64)?;
    check_limits(&message)?;
    Ok(message)
}

/// Decodes one whole frame (length prefix + payload) from `bytes`, which must hold exactly it.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, WireError> {
    let (header, payload) = bytes.split_at_checked(FRAME_HEADER_BYTES).ok_or(WireError::Truncated)?;
    let len = frame_len([header[0], header[1], header[2], header[3]])?;
    if payload.len() != len {
        return Err(WireError::Truncated);
    }
    decode_payload(payload)
}

fn limit(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooMany { what, len, max });
    }
    Ok(())
}

fn check_limits(message: &Message) -> Result<(), WireError> {
    match message {
        Message::Sync { have, .. } => limit("high-water marks", have.len(), SYNC_ORIGINS_MAX),
        Message::Directories(chain) => limit("directory versions", chain.len(), DIRECTORY_CHAIN_MAX),
        Message::Feed(batch) => limit("batch entries", batch.entries.len(), BATCH_ENTRIES_MAX),
        Message::Answer(a) => {
            limit("plans in an answer", a.plans.len(), ANSWER_PLANS_MAX)?;
            limit("visits in an answer", a.history.len(), HISTORY_LEN_MAX)
        }
        Message::Notify(n) => limit("matched plans", n.body.matched.len(), ANSWER_PLANS_MAX),
        Message::Lookup(_) | Message::Receipt(_) | Message::Refused(_) => Ok(()),
    }
}
