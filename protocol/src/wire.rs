//! The wire: messages between members, and the frames that carry them. This is the only framing
//! code: the node's streams and the simulator's links both use it.
//!
//! A frame is a 4-byte big-endian payload length, then the payload. The payload is the protocol
//! version (u16 big-endian) followed by the canonical encoding of one [`Message`]. A reader takes
//! the 4 header bytes to [`frame_len`] (which refuses a length above [`FRAME_BYTES_MAX`] before
//! anything is allocated), reads that many bytes, and gives them to [`decode_payload`]; a writer
//! sends [`encode_frame`]. Decoding any bytes gives a message or an error, never a panic.

use crate::codec::{self, DecodeError};
use crate::directory::{SignedDirectory, TrustedDirectory};
use crate::feed::{EntryBody, FeedEntry, SignedEntry, SignedHead};
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::merkle::MapProof;
use crate::records::AccessEvent;
use crate::refusal::RefusalCode;
use crate::sign::{self, Signable, Signed, Verified};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The version of the messages below; peers speaking another are refused.
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest frame payload, in bytes.
pub const FRAME_BYTES_MAX: usize = 4 << 20;
/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Most entries in one feed batch.
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Most marks in one sync message (one per origin).
pub const SYNC_MARKS_MAX: usize = crate::directory::MEMBERS_MAX;
/// Most directory versions sent in one message.
pub const DIRECTORY_CHAIN_MAX: usize = 64;
/// Most visits a lookup answer shows.
pub const HISTORY_LEN_MAX: usize = 25;
/// Most plans of one authority for one child an answer carries (and a notification names).
pub const ANSWER_PLANS_MAX: usize = 64;
/// Most authorities an answer speaks for.
pub const ANSWER_AUTHORITIES_MAX: usize = crate::directory::MEMBERS_MAX;

/// How far a peer has an origin's feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub origin: OdsCode,
    /// The sender holds the origin's live set as of this sequence.
    pub seq: u64,
    /// When the head the sender holds for it was signed (zero for feeds without heads).
    pub head_at: Timestamp,
}

impl Mark {
    /// Whether it says anything is held: a mark at zero counts as no mark.
    pub fn held(&self) -> bool {
        self.seq != 0 || self.head_at != Timestamp(0)
    }
}

/// How far one hub holds an authority's feed (the sequence of the head its replica matches; 0
/// for none), as the hub reporting it last learnt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBy {
    pub hub: OdsCode,
    pub seq: u64,
}

/// Buckets of a [`Message::Digest`]: an origin's mark falls in bucket [`bucket_of`] its code.
pub const DIGEST_BUCKETS: usize = 16;
const _: () = assert!(DIGEST_BUCKETS <= u16::BITS as usize, "a SyncPart names its buckets in a u16");

/// The bucket of an origin's mark: the first byte of the SHA-256 of its code, modulo
/// [`DIGEST_BUCKETS`].
pub fn bucket_of(origin: &OdsCode) -> usize {
    usize::from(Sha256::digest(origin.as_str().as_bytes())[0]) % DIGEST_BUCKETS
}

/// Per bucket, a fingerprint of the marks in it: the first 8 bytes of the SHA-256 of the
/// bucket's marks, encoded, in origin order. Equal sets of marks give equal fingerprints; a mark
/// at zero (nothing held) counts as no mark.
pub fn fingerprints(marks: &[Mark]) -> [u64; DIGEST_BUCKETS] {
    let mut sorted: Vec<&Mark> = marks.iter().filter(|m| m.held()).collect();
    sorted.sort_by(|a, b| a.origin.cmp(&b.origin));
    let mut hashers: [Sha256; DIGEST_BUCKETS] = std::array::from_fn(|_| Sha256::new());
    for mark in sorted {
        hashers[bucket_of(&mark.origin)].update(codec::encode(mark));
    }
    hashers.map(|h| {
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize()[..8]);
        u64::from_be_bytes(first)
    })
}

/// The first 8 bytes of the SHA-256 of a directory's content (not of its signatures: one version
/// signed by other roots is the same directory).
pub fn directory_fingerprint(directory: &crate::directory::Directory) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&Sha256::digest(codec::encode(directory))[..8]);
    u64::from_be_bytes(first)
}

/// A run of an origin's feed: every live entry the sender holds of `origin` with
/// `after < seq <= upto`. A run of an authority's feed ends with the authority's head at `upto`
/// (longer runs come in several batches, the head on the last); `after == 0` means the run is the
/// whole live set, to replace what the receiver holds.
///
/// `E` is how its entries are held: as signed on the wire, or verified ([`VerifiedBatch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBatch<E = SignedEntry> {
    pub origin: OdsCode,
    pub after: u64,
    pub upto: u64,
    pub entries: Vec<E>,
    /// The origin's signed head at `upto`, on the last batch of an authority's run.
    pub head: Option<SignedHead>,
    /// The sender stopped early (a reply's byte budget): ask again.
    pub more: bool,
}

/// A [`FeedBatch`] of an authority's entries whose signatures a driver already checked, off its
/// event loop ([`FeedBatch::verify_signatures`]). The machine makes every other check of each
/// entry (its body's rules, that its key is the origin's and valid at its time) as for any batch.
pub type VerifiedBatch = FeedBatch<Verified<FeedEntry>>;

impl<E> FeedBatch<E> {
    /// The same batch, each entry turned by `f`.
    pub fn map_entries<F>(self, f: impl FnMut(E) -> F) -> FeedBatch<F> {
        let FeedBatch { origin, after, upto, entries, head, more } = self;
        FeedBatch { origin, after, upto, entries: entries.into_iter().map(f).collect(), head, more }
    }
}

impl VerifiedBatch {
    /// The batch as it came.
    pub fn into_batch(self) -> FeedBatch {
        self.map_entries(Verified::into_signed)
    }
}

impl FeedBatch {
    /// Checks every entry's signature with the key `dir` lists under its key id, for a driver
    /// that verifies beside its event loop rather than on it (`verify_strict`, as everywhere).
    /// Only a batch of an authority's entries (no visits) with every signature holding is
    /// verified; any other comes back as it was, for the machine to check and refuse with its
    /// reason.
    #[allow(clippy::result_large_err)] // The `Err` is the batch given back, as large as the `Ok`.
    pub fn verify_signatures(self, dir: &TrustedDirectory) -> Result<VerifiedBatch, FeedBatch> {
        let FeedBatch { origin, after, upto, entries, head, more } = self;
        let visits = entries.iter().any(|e| matches!(e.body.body, EntryBody::Visit(_)));
        let verified = if visits || entries.is_empty() {
            Err(entries)
        } else {
            sign::verify_all_prepared(entries, |e| dir.prepared_key(e.key_id))
        };
        match verified {
            Ok(entries) => Ok(FeedBatch { origin, after, upto, entries, head, more }),
            Err(entries) => Err(FeedBatch { origin, after, upto, entries, head, more }),
        }
    }
}

/// A notification that a child with a plan at `authority` was looked up: signed by the hub that
/// answered; it carries the care setting's own signed access event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub event: Signed<AccessEvent>,
    pub authority: OdsCode,
    /// The authority's plans that matched (the authority checks them against its own).
    pub matched: Vec<PlanRef>,
    /// The hub that answered the lookup (the receipt goes back to it).
    pub hub: OdsCode,
    pub answered_at: Timestamp,
    /// When the hub signed it: when it answered, or later when it re-signed what waited in its
    /// outbox under a new key. The hub's key must be valid then.
    pub signed_at: Timestamp,
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

/// What one authority's head says about one child, with the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityAnswer {
    /// The authority's newest head the hub holds a matching copy for.
    pub head: SignedHead,
    /// Every plan entry the authority publishes for the child (empty: none), in order of
    /// reference. The head commits to them, so they travel without their own signatures.
    pub plans: Vec<FeedEntry>,
    /// The contacts entry the head commits to, when there are plans.
    pub contacts: Option<FeedEntry>,
    /// Proof of the plans (inclusion) or of their absence under the head's root.
    pub proof: MapProof,
}

/// A hub's answer to a lookup: for every authority it holds a head of, that head and a proof of
/// exactly which plans that authority publishes for the child; and the visit history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub lookup_id: LookupId,
    pub nhs: NhsNumber,
    pub hub: OdsCode,
    pub answered_at: Timestamp,
    pub authorities: Vec<AuthorityAnswer>,
    pub history: Vec<SignedEntry>,
}

/// A request was refused: the code says why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub lookup_id: Option<LookupId>,
    pub code: RefusalCode,
}

/// Every message of this protocol version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sent on connect and periodically: the sender's directory version and, per origin, how far
    /// it holds the feed. The receiver answers with what the sender lacks.
    Sync { directory_version: u64, marks: Vec<Mark> },
    /// Directory versions, oldest first, each the successor of the one before.
    Directories(Vec<SignedDirectory>),
    /// A run of feed entries.
    Feed(FeedBatch),
    /// An authority's newer head for a live set the receiver holds (freshness).
    Head(SignedHead),
    /// A care setting's lookup.
    Lookup(Signed<AccessEvent>),
    /// The answer to a lookup.
    Answer(LookupAnswer),
    /// A notification on its way to its authority.
    Notify(Signed<Notification>),
    /// A receipt on its way back to the hub that answered.
    Receipt(Signed<Receipt>),
    /// A request was refused.
    Refused(Refused),
    /// An authority to its home hub, on connect: send again the notifications you delivered to
    /// me, and hold my receipt for, from this point on (the hub's clock when the receipt came,
    /// then the lookup id), a page at a time. An authority restored from an older copy of its
    /// store gets back what reached it after the copy.
    Redeliver { since: Timestamp, from: LookupId },
    /// A hub to an authority that asked with [`Message::Redeliver`]: a notification it delivered,
    /// with the authority's own receipt for it.
    Redelivered { notification: Box<Signed<Notification>>, receipt: Signed<Receipt> },
    /// A hub to a peer hub every sync interval: its directory version and a
    /// [`directory_fingerprint`] of that version's content, and per bucket of origins a
    /// [`fingerprints`] of its marks there. Equal replicas settle with this one message; the
    /// receiver answers with its own marks in the buckets that differ ([`Message::SyncPart`]),
    /// and with its own directory version if the version is the same but the content differs
    /// (a fork, which the sender then finds).
    Digest { directory_version: u64, directory: u64, fingerprints: [u64; DIGEST_BUCKETS] },
    /// The sender's marks in the buckets set in `buckets` (bit `i` for bucket `i`), and no
    /// others: the receiver answers, as to a [`Message::Sync`], with what the sender lacks there.
    SyncPart { directory_version: u64, buckets: u16, marks: Vec<Mark> },
    /// A hub to an authority, on connect and then every sync interval when it changed: how far
    /// each hub it knows of holds the authority's feed (itself, and its peer hubs as their last
    /// syncs and digests showed). The authority shows it to the council (whether a change has
    /// reached every hub); it is the hub's unsigned word and changes nothing.
    Held { hubs: Vec<HeldBy> },
    /// A hub to an authority, after a page of [`Message::Redelivered`]: the point the next page
    /// starts from (the authority asks again from there once it has this one), or none: that was
    /// all.
    RedeliverPage { next: Option<(Timestamp, LookupId)> },
}

impl Message {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Sync { .. } => "sync",
            Message::Directories(_) => "directories",
            Message::Feed(_) => "feed",
            Message::Head(_) => "head",
            Message::Lookup(_) => "lookup",
            Message::Answer(_) => "answer",
            Message::Notify(_) => "notify",
            Message::Receipt(_) => "receipt",
            Message::Refused(_) => "refused",
            Message::Redeliver { .. } => "redeliver",
            Message::Redelivered { .. } => "redelivered",
            Message::Digest { .. } => "digest",
            Message::SyncPart { .. } => "sync-part",
            Message::Held { .. } => "held",
            Message::RedeliverPage { .. } => "redeliver-page",
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

/// Encodes a message as a whole frame (length prefix + payload): what goes on a stream.
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let body = codec::encode(message);
    let len = 2 + body.len();
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&body);
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
        Message::Sync { marks, .. } | Message::SyncPart { marks, .. } => limit("marks", marks.len(), SYNC_MARKS_MAX),
        Message::Directories(chain) => limit("directory versions", chain.len(), DIRECTORY_CHAIN_MAX),
        Message::Held { hubs } => limit("hubs", hubs.len(), SYNC_MARKS_MAX),
        Message::Feed(batch) => limit("batch entries", batch.entries.len(), BATCH_ENTRIES_MAX),
        Message::Answer(a) => {
            limit("authorities in an answer", a.authorities.len(), ANSWER_AUTHORITIES_MAX)?;
            for x in &a.authorities {
                limit("plans of one authority in an answer", x.plans.len(), ANSWER_PLANS_MAX)?;
            }
            limit("visits in an answer", a.history.len(), HISTORY_LEN_MAX)
        }
        Message::Notify(n) => limit("matched plans", n.body.matched.len(), ANSWER_PLANS_MAX),
        Message::Redelivered { notification, .. } => {
            limit("matched plans", notification.body.matched.len(), ANSWER_PLANS_MAX)
        }
        Message::Head(_)
        | Message::Lookup(_)
        | Message::Receipt(_)
        | Message::Refused(_)
        | Message::Redeliver { .. }
        | Message::RedeliverPage { .. }
        | Message::Digest { .. } => Ok(()),
    }
}
