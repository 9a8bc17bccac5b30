//! The hub's state machine: a replica of every authority's published feed under its signed
//! head, lookups answered with proofs a care setting checks, notifications routed
//! store-and-forward to their authorities, and visit histories spread between hubs.
//!
//! A hub changes an authority's replica only by whole runs that reproduce the authority's signed
//! head, so it can neither skip an entry nor serve a state the authority never signed; it takes a
//! hub's visits only from that hub. A lookup's answer and its notifications are released only
//! once the write holding its access event is durable.

use crate::authority::{ADMISSION_CHECK_INTERVAL_MS, CommandError};
use crate::directory::{KeyStatus, Role, SignedDirectory, TrustedDirectory};
use crate::feed::{
    EntryBody, EntryError, FeedEntry, FeedHead, LiveFeed, SignedEntry, SignedHead, admit_verified_entry, verify_entry,
};
use crate::ids::{LookupId, NhsNumber, OdsCode};
use crate::machine::{CommandId, DirectoryState, Event, Queues, ReadRequest, Reply, RestoreError, Transmit, earliest};
use crate::records::AccessEvent;
use crate::refusal::Refusal;
use crate::schema::{self, RowError, StoreOp, StoredRow};
use crate::sign::{Identity, KeyId, Signed, Verified};
use crate::time::Timestamp;
use crate::wire::{FeedBatch, HeldBy, Message, Notification, Receipt, Refused, VerifiedBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

mod lookups;
mod notify;
mod replica;
use replica::ALL_BUCKETS;

pub use lookups::{IncomingLookup, RateLimits};

/// Timings and limits of a hub; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// How often to compare marks with every connected peer. Default 30 s.
    pub sync_interval_ms: u64,
    /// First retry delay for a notification. Default 1 s.
    pub retry_base_ms: u64,
    /// Longest retry delay for a notification. Default 60 s.
    pub retry_cap_ms: u64,
    /// A notification waiting longer than this is reported overdue. Default 1 hour.
    pub overdue_after_ms: u64,
    /// A lookup (or head) whose time is further than this from the hub's clock is refused.
    /// Default 5 min.
    pub clock_skew_max_ms: u64,
    /// How often to drop old tombstones and visits. Default 1 hour.
    pub prune_interval_ms: u64,
    /// How long visits are kept for the history. Default 365 days.
    pub visit_retention_days: u64,
    /// How long a `Removed` entry (a tombstone) is kept, so that a hub behind still learns of it.
    /// Default 30 days.
    pub tombstone_retention_days: u64,
    /// Lookups one setting may make per hour (a bucket of this many, refilled evenly). Default
    /// 1,200.
    pub setting_lookups_per_hour: u64,
    /// Lookups one person at a setting may make per hour. Default 120.
    pub person_lookups_per_hour: u64,
    /// Most bytes of feed a hub sends in answer to one sync (the peer asks again for the rest).
    /// Default 8 MiB.
    pub sync_reply_bytes_max: usize,
    /// Most waiting notifications held in memory; the others stay in the store and are read back
    /// when due, or when their receipt comes. Default 16,384.
    pub outbox_bodies_max: usize,
}

impl HubConfig {
    /// Whether a lookup made at `at` is still remembered at `now`, against its replay: one
    /// further than the clock skew from the hub's clock is refused anyway, so one made more than
    /// twice that ago cannot come again.
    pub fn remembers_lookup(&self, at: Timestamp, now: Timestamp) -> bool {
        now.since(at) <= self.clock_skew_max_ms.saturating_mul(2)
    }

    /// The earliest answer time of a lookup still remembered at `now`: a lookup's own time is
    /// within the clock skew of its answer's, so one answered more than three times the skew ago
    /// was made more than twice the skew ago.
    pub fn oldest_answer_remembered(&self, now: Timestamp) -> Timestamp {
        now.minus_ms(self.clock_skew_max_ms.saturating_mul(3))
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            sync_interval_ms: 30_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            overdue_after_ms: 3_600_000,
            clock_skew_max_ms: 300_000,
            prune_interval_ms: 3_600_000,
            visit_retention_days: 365,
            tombstone_retention_days: 30,
            setting_lookups_per_hour: 1_200,
            person_lookups_per_hour: 120,
            sync_reply_bytes_max: 8 << 20,
            outbox_bodies_max: 16_384,
        }
    }
}

/// A notification the hub must still see acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub notification: Signed<Notification>,
    pub queued_at: Timestamp,
}

/// A notification this hub delivered to its authority, with the authority's receipt for it and
/// when that came (kept [`DELIVERED_KEPT_DAYS`] for [`Message::Redeliver`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredRecord {
    pub notification: Signed<Notification>,
    pub receipt: Signed<Receipt>,
    pub receipted_at: Timestamp,
}

/// How long a hub keeps what it delivered (an authority refuses notifications of lookups older
/// than 30 days anyway).
pub const DELIVERED_KEPT_DAYS: u64 = 30;
/// Most delivered notifications a hub keeps per authority; the oldest go first.
pub const DELIVERED_PER_AUTHORITY_MAX: usize = 65_536;
/// Most delivered notifications sent again for one [`Message::Redeliver`]: the authority asks for
/// the next page once it has this one, so that a connection's queue holds a page or two of them,
/// never the tens of thousands a council restored from an old copy may ask back.
pub const REDELIVER_PAGE_MAX: usize = 512;

/// A notification waiting for its receipt. Its body is held in memory within
/// [`HubConfig::outbox_bodies_max`]; beyond that it stays in the store (the outbox table) and is
/// read back when due, so routing and timing use only what is kept here.
struct OutboxItem {
    notification: Option<Signed<Notification>>,
    queued_at: Timestamp,
    /// The notification's answering hub (this one, or the hub whose copy this relays).
    answered_by: OdsCode,
    answered_at: Timestamp,
    key_id: KeyId,
    attempts: u32,
    next_attempt_at: Timestamp,
    overdue_reported: bool,
    /// Its body was asked of the store and has not come back yet.
    reading: bool,
}

/// A hub's copy of one authority's published feed, and the newest head it matches.
#[derive(Default)]
pub struct Replica {
    feed: LiveFeed,
    head: Option<SignedHead>,
}

impl Replica {
    /// The head the live set matches.
    pub fn head(&self) -> Option<&SignedHead> {
        self.head.as_ref()
    }
    pub fn feed(&self) -> &LiveFeed {
        &self.feed
    }
    /// How far the replica goes: its head's sequence.
    pub fn seq(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.body.seq)
    }
}

/// A hub's visit feed: every visit up to `mark` has been seen.
#[derive(Default)]
struct VisitFeed {
    mark: u64,
    entries: BTreeMap<u64, SignedEntry>,
}

/// Chunks of an authority's run from one peer, until the head on its last chunk arrives.
struct Staging {
    after: u64,
    upto: u64,
    entries: Vec<Incoming>,
}

/// An entry or a head as it came: its signature already checked by the driver, or not yet.
enum Incoming<T = FeedEntry> {
    Signed(Signed<T>),
    Verified(Verified<T>),
}

impl<T> Incoming<T> {
    fn body(&self) -> &T {
        match self {
            Incoming::Signed(e) => &e.body,
            Incoming::Verified(e) => e.body(),
        }
    }

    fn into_signed(self) -> Signed<T> {
        match self {
            Incoming::Signed(e) => e,
            Incoming::Verified(e) => e.into_signed(),
        }
    }
}

impl Incoming {
    /// Every check of the entry; its signature only if the driver did not check it.
    fn verify(self, dir: &TrustedDirectory) -> Result<SignedEntry, EntryError> {
        let verified = match self {
            Incoming::Signed(e) => verify_entry(dir, e)?,
            Incoming::Verified(e) => admit_verified_entry(dir, e)?,
        };
        Ok(verified.into_signed())
    }
}

/// A feed batch as a hub takes it: a [`FeedBatch`], or a [`VerifiedBatch`].
type InBatch = FeedBatch<Incoming>;

/// A hub's marks, as its syncs and digests carry them. Every change of a mark is written (a
/// head, an entry, a mark of visits), so they hold until the hub's next write, or until it ends
/// taking back its own visits (which adds its own mark): a hub computes them once for all the
/// digests it sends and receives meanwhile, whatever the number of authorities.
struct OwnMarks {
    /// The hub's `writes_queued` when they were taken.
    writes: u64,
    recovered: bool,
    /// Each authority's mark, by origin.
    authorities: Vec<crate::wire::Mark>,
    /// The marks of the hubs' visit feeds held.
    visits: Vec<crate::wire::Mark>,
    fingerprints: [u64; crate::wire::DIGEST_BUCKETS],
}

impl OwnMarks {
    fn all(&self) -> impl Iterator<Item = &crate::wire::Mark> {
        self.authorities.iter().chain(&self.visits)
    }

    /// The same marks as `other`, but for marks at zero (nothing held, as good as no mark: a
    /// failed merge may leave an empty replica without a write).
    fn agree(&self, other: &OwnMarks) -> bool {
        self.fingerprints == other.fingerprints && self.all().filter(|m| m.held()).eq(other.all().filter(|m| m.held()))
    }
}

/// How far a peer hub holds each authority's feed.
enum PeerMarks {
    /// Its digest agreed with ours in every bucket: it holds what our marks then said. Kept as
    /// those marks, shared: a digest that agrees costs nothing per authority.
    Agreed(Arc<OwnMarks>),
    /// The sequence of each authority's feed it holds, as its syncs and digests showed.
    Known(BTreeMap<OdsCode, u64>),
}

impl PeerMarks {
    fn seq(&self, authority: &OdsCode) -> Option<u64> {
        match self {
            PeerMarks::Agreed(own) => {
                own.authorities.binary_search_by(|m| m.origin.cmp(authority)).ok().map(|i| own.authorities[i].seq)
            }
            PeerMarks::Known(known) => known.get(authority).copied(),
        }
    }

    /// The marks as a map, to be changed.
    fn known(&mut self) -> &mut BTreeMap<OdsCode, u64> {
        if let PeerMarks::Agreed(own) = self {
            *self = PeerMarks::Known(own.authorities.iter().map(|m| (m.origin.clone(), m.seq)).collect());
        }
        match self {
            PeerMarks::Known(known) => known,
            PeerMarks::Agreed(_) => unreachable!("made known above"),
        }
    }
}

/// A connected peer: its role and the key it connected with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    role: Role,
    key: KeyId,
    /// Bytes of feed its syncs may still draw (a bucket of `sync_reply_bytes_max`, refilled by
    /// as much each second): a stream of tiny syncs cannot make a hub send its replica over and
    /// over.
    sync_budget: usize,
    budget_at: Timestamp,
    /// When it last sent us a feed batch: an authority whose run is still arriving (a long
    /// import takes seconds to check) is not asked for its feed again meanwhile, which would
    /// have it send the whole run once more for every sync.
    feed_at: Timestamp,
}

/// Whether a hub that started from an empty store has taken back its own earlier visits from
/// its peers (it asks for them in its syncs for two sync intervals after first meeting a hub).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnRecovery {
    Done,
    AwaitingPeer,
    Until(Timestamp),
}

/// Work held until a write is durable.
pub(crate) enum After {
    Send(Box<Transmit>),
    Event(Event),
    Queue(Box<OutboxRecord>),
    /// Send to every connected hub (and, for a directory update, authority) but the one named.
    Forward(Box<Message>, Option<OdsCode>),
    /// Send every connected hub but `except` the run of `origin`'s replica after `after`, as the
    /// replica holds it then: a run that came from the authority itself, passed on.
    ForwardRun {
        origin: OdsCode,
        after: u64,
        except: OdsCode,
    },
}

/// A hub's state machine.
pub struct Hub {
    code: OdsCode,
    identity: Identity,
    config: HubConfig,
    pub(crate) dir: DirectoryState,
    authorities: BTreeMap<OdsCode, Replica>,
    visits: BTreeMap<OdsCode, VisitFeed>,
    visits_by_nhs: HashMap<NhsNumber, BTreeSet<(Timestamp, OdsCode, u64)>>,
    staging: BTreeMap<(OdsCode, OdsCode), Staging>,
    /// Lookups seen within the replay window: their time and signature. Bounded by the lookups
    /// the rate limits let in over that window (twice the clock skew); none may leave early, or
    /// a replay inside the window would be answered again.
    recent_lookups: HashMap<LookupId, (Timestamp, crate::sign::SignatureBytes)>,
    limits: RateLimits,
    outbox: BTreeMap<(LookupId, OdsCode), OutboxItem>,
    /// Outbox items whose body is in memory.
    outbox_bodies: usize,
    /// Receipts from an authority for a notification whose body is being read back (to keep it
    /// as delivered): handled once it is.
    receipts_waiting: BTreeMap<(LookupId, OdsCode), (OdsCode, Signed<Receipt>)>,
    /// What this hub delivered, per authority, by receipt time: the keys only (the records stay
    /// in the store, read back for a [`Message::Redeliver`]).
    delivered: BTreeMap<OdsCode, BTreeSet<(Timestamp, LookupId)>>,
    /// Per authority whose page of redelivered notifications is being read back: where its next
    /// page starts (none: it is the last), told the authority once the page has gone.
    redelivery_next: BTreeMap<OdsCode, Option<(Timestamp, LookupId)>>,
    /// Outbox keys by when they are next due.
    due: BTreeSet<(Timestamp, LookupId, OdsCode)>,
    peers: BTreeMap<OdsCode, Peer>,
    /// How far each peer hub holds each authority's feed, as its last sync or digest showed.
    peer_marks: BTreeMap<OdsCode, PeerMarks>,
    /// This hub's own marks and their fingerprints, as of `OwnMarks::writes`.
    own_marks: Option<Arc<OwnMarks>>,
    /// Peer hubs sent our directory because their digest showed the same version with other
    /// content (once per peer and version).
    forks_offered: BTreeSet<OdsCode>,
    /// The last [`Message::Held`] sent to each connected authority (sent again only changed).
    held_sent: BTreeMap<OdsCode, Vec<HeldBy>>,
    /// The last run of each origin (an authority's feed, or a hub's visits) sent to each peer hub,
    /// `(peer, origin) → (upto, when)`: a run up to the same point is not sent again while it may
    /// still be on its way (see `RUN_RESEND_MS`), whatever point the peer says it starts from.
    runs_sent: HashMap<(OdsCode, OdsCode), (u64, Timestamp)>,
    /// Origins and sequences at which an equivocation was proven (proof in the store).
    equivocations: BTreeSet<(OdsCode, u64)>,
    own_recovery: OwnRecovery,
    next_sync_at: Timestamp,
    next_prune_at: Timestamp,
    next_admission_at: Timestamp,
    /// Until when every connected peer stays admitted, as the last check of them found (see
    /// [`crate::machine::DirectoryState::next_admission_change`]).
    admitted_until: Timestamp,
    pub(crate) out: Queues<After>,
}

impl Hub {
    /// The machine for `code`, restored from its rows (see [`crate::machine::Machine::restore`]).
    pub(crate) fn restore(
        code: OdsCode,
        identity: Identity,
        dir: DirectoryState,
        config: HubConfig,
        rows: &mut schema::Rows,
        now: Timestamp,
    ) -> Result<Hub, RestoreError> {
        let mut hub = Hub {
            code,
            identity,
            limits: RateLimits::default(),
            config,
            dir,
            authorities: BTreeMap::new(),
            visits: BTreeMap::new(),
            visits_by_nhs: HashMap::new(),
            staging: BTreeMap::new(),
            recent_lookups: HashMap::new(),
            outbox: BTreeMap::new(),
            outbox_bodies: 0,
            receipts_waiting: BTreeMap::new(),
            delivered: BTreeMap::new(),
            redelivery_next: BTreeMap::new(),
            due: BTreeSet::new(),
            peers: BTreeMap::new(),
            peer_marks: BTreeMap::new(),
            own_marks: None,
            forks_offered: BTreeSet::new(),
            held_sent: BTreeMap::new(),
            runs_sent: HashMap::new(),
            equivocations: BTreeSet::new(),
            own_recovery: if rows.store_was_empty() { OwnRecovery::AwaitingPeer } else { OwnRecovery::Done },
            next_sync_at: now,
            next_prune_at: now,
            next_admission_at: now,
            admitted_until: now,
            out: Queues::new(),
        };
        hub.restore_rows(rows, now)?;
        if rows.store_was_empty() {
            hub.out.write(vec![schema::schema_op()], vec![]);
        }
        hub.resign_outbox(rows, now);
        Ok(hub)
    }

    /// Re-signs, under the key the hub now runs on, the notifications it answered that wait in
    /// its outbox (or that it keeps as delivered, read from its `rows`) under an older key,
    /// revoked or retired since: none is lost to a key change.
    fn resign_outbox(&mut self, rows: &schema::Rows, now: Timestamp) {
        let (code, identity) = (&self.code, &self.identity);
        let resign = |old: &Signed<Notification>| {
            (old.body.hub == *code && old.key_id != identity.key_id())
                .then(|| identity.sign(Notification { signed_at: now, ..old.body.clone() }))
        };
        let mut ops = Vec::new();
        for (key, mut record) in schema::OUTBOX.read(rows).flatten() {
            let (Some(notification), Some(item)) = (resign(&record.notification), self.outbox.get_mut(&key)) else {
                continue;
            };
            item.key_id = notification.key_id;
            if item.notification.is_some() {
                item.notification = Some(notification.clone());
            }
            record.notification = notification;
            ops.push(schema::OUTBOX.put(&key, &record));
        }
        for row in schema::DELIVERED.read(rows).flatten() {
            let (key, mut held) = row;
            if let Some(notification) = resign(&held.notification) {
                held.notification = notification;
                ops.push(schema::DELIVERED.put(&key, &held));
            }
        }
        if !ops.is_empty() {
            self.out.write(ops, vec![]);
        }
    }

    fn restore_rows(&mut self, rows: &mut schema::Rows, now: Timestamp) -> Result<(), RowError> {
        for row in schema::ENTRIES.take(rows) {
            let ((origin, seq), entry) = row?;
            if entry.body.origin != origin || entry.body.seq != seq {
                return Err(RowError::Mismatch(schema::Table::Entries.name()));
            }
            match entry.body.writer_role() {
                Role::Authority => {
                    self.authorities.entry(origin).or_default().feed.apply(entry);
                }
                _ => self.index_visit(entry),
            }
        }
        for row in schema::HEADS.read(rows) {
            let (origin, head) = row?;
            let replica = self.authorities.entry(origin.clone()).or_default();
            // Entries and their head are written in one transaction: they must agree.
            if head.body.origin != origin || !replica.feed.matches(&head.body) {
                return Err(RowError::Inconsistent {
                    table: schema::Table::Heads.name(),
                    problem: "a stored replica does not match its stored head",
                });
            }
            replica.head = Some(head);
        }
        for row in schema::MARKS.read(rows) {
            let (origin, seq) = row?;
            let feed = self.visits.entry(origin).or_default();
            feed.mark = feed.mark.max(seq);
        }
        for row in schema::ACCESS_LOG.take(rows) {
            let ((_, id), e) = row?;
            if e.body.lookup_id != id {
                return Err(RowError::Mismatch(schema::Table::AccessLog.name()));
            }
            if self.config.remembers_lookup(e.body.at, now) {
                self.recent_lookups.insert(id, (e.body.at, e.signature));
            }
        }
        for row in schema::EQUIVOCATIONS.read(rows) {
            let (key, _) = row?;
            self.equivocations.insert(key);
        }
        for row in schema::OUTBOX.read(rows) {
            let (_, record) = row?;
            self.queue(record, now);
        }
        for row in schema::DELIVERED.read(rows) {
            let ((lookup_id, authority), record) = row?;
            if record.notification.body.event.body.lookup_id != lookup_id
                || record.notification.body.authority != authority
                || record.receipt.body.lookup_id != lookup_id
            {
                return Err(RowError::Mismatch(schema::Table::Delivered.name()));
            }
            self.delivered.entry(authority).or_default().insert((record.receipted_at, lookup_id));
        }
        Ok(())
    }

    pub fn code(&self) -> &OdsCode {
        &self.code
    }
    pub fn directory(&self) -> &TrustedDirectory {
        &self.dir.trusted
    }
    pub fn config(&self) -> &HubConfig {
        &self.config
    }
    /// The key this node signs with.
    pub fn key_id(&self) -> KeyId {
        self.identity.key_id()
    }

    /// Every authority replica held.
    pub fn replicas(&self) -> &BTreeMap<OdsCode, Replica> {
        &self.authorities
    }

    /// Every visit feed's origin and mark.
    pub fn visit_marks(&self) -> impl Iterator<Item = (&OdsCode, u64)> {
        self.visits.iter().map(|(o, f)| (o, f.mark))
    }

    /// Every entry held: authorities' published entries, then visits.
    pub fn entries(&self) -> impl Iterator<Item = &SignedEntry> {
        let published = self.authorities.values().flat_map(|r| r.feed.entries());
        published.chain(self.visits.values().flat_map(|f| f.entries.values()))
    }

    /// Notifications waiting, per destination authority.
    pub fn outbox_depths(&self) -> BTreeMap<OdsCode, usize> {
        let mut depths = BTreeMap::new();
        for (_, authority) in self.outbox.keys() {
            *depths.entry(authority.clone()).or_insert(0) += 1;
        }
        depths
    }

    /// Waiting notifications whose body is held in memory (the others are in the store).
    pub fn outbox_in_memory(&self) -> usize {
        self.outbox_bodies
    }

    /// When the longest-waiting notification was queued.
    pub fn oldest_waiting(&self) -> Option<Timestamp> {
        self.outbox.values().map(|i| i.queued_at).min()
    }

    /// Where equivocations were proven.
    pub fn equivocations(&self) -> &BTreeSet<(OdsCode, u64)> {
        &self.equivocations
    }

    /// Peers connected now, with their roles.
    pub fn peers(&self) -> impl Iterator<Item = (&OdsCode, Role)> {
        self.peers.iter().map(|(c, p)| (c, p.role))
    }

    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        let connected = !self.peers.is_empty();
        let next_retry = self.due.first().map(|(t, _, _)| *t);
        earliest([
            connected.then_some(self.next_sync_at),
            connected.then_some(self.next_admission_at),
            Some(self.next_prune_at),
            next_retry,
            match self.own_recovery {
                OwnRecovery::Until(t) => Some(t),
                _ => None,
            },
        ])
    }

    pub(crate) fn handle_connected(&mut self, peer: &OdsCode, key: KeyId, now: Timestamp) {
        let role = match self.dir.admits(peer, key, now) {
            Ok(role) => role,
            Err(reason) => return self.out.event(Event::PeerNotAdmitted { peer: peer.clone(), reason }),
        };
        let budget = self.config.sync_reply_bytes_max;
        self.peers.insert(peer.clone(), Peer { role, key, sync_budget: budget, budget_at: now, feed_at: Timestamp(0) });
        match role {
            Role::Hub => {
                if self.own_recovery == OwnRecovery::AwaitingPeer {
                    let until = now.plus_ms(self.config.sync_interval_ms.saturating_mul(2));
                    self.own_recovery = OwnRecovery::Until(until);
                }
                self.send_sync(peer)
            }
            Role::Authority => {
                let marks = vec![self.authority_mark(peer)];
                self.out.send(peer, Message::Sync { directory_version: self.dir.version(), marks });
                self.send_held(peer);
            }
            Role::Setting => {}
        }
        self.wake_notifications_for(peer, now);
    }

    pub(crate) fn handle_disconnected(&mut self, peer: &OdsCode) {
        self.peers.remove(peer);
        self.held_sent.remove(peer);
        self.runs_sent.retain(|(to, _), _| to != peer);
        self.staging.retain(|(from, _), _| from != peer);
        self.redelivery_next.remove(peer);
    }

    pub(crate) fn handle_timeout(&mut self, now: Timestamp) {
        if matches!(self.own_recovery, OwnRecovery::Until(t) if now >= t) {
            self.own_recovery = OwnRecovery::Done;
        }
        if now >= self.next_admission_at {
            self.next_admission_at = now.plus_ms(ADMISSION_CHECK_INTERVAL_MS);
            if now >= self.admitted_until {
                self.check_admissions(now);
            }
        }
        if now >= self.next_sync_at {
            self.next_sync_at = now.plus_ms(self.config.sync_interval_ms);
            let hubs: Vec<OdsCode> =
                self.peers.iter().filter(|(_, p)| p.role == Role::Hub).map(|(c, _)| c.clone()).collect();
            for peer in hubs {
                self.send_digest(&peer);
            }
            let authorities: Vec<(OdsCode, bool)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.role == Role::Authority)
                .map(|(c, p)| (c.clone(), now.since(p.feed_at) < self.config.sync_interval_ms))
                .collect();
            for (peer, arriving) in authorities {
                if !arriving {
                    let marks = vec![self.authority_mark(&peer)];
                    self.out.send(&peer, Message::Sync { directory_version: self.dir.version(), marks });
                }
                self.send_held(&peer);
            }
        }
        self.deliver_due(now);
        if now >= self.next_prune_at {
            self.next_prune_at = now.plus_ms(self.config.prune_interval_ms);
            self.prune(now);
        }
    }

    /// Closes (in the driver) every connection whose key the directory no longer admits.
    fn check_admissions(&mut self, now: Timestamp) {
        self.admitted_until = self.dir.next_admission_change(now).unwrap_or(Timestamp(u64::MAX));
        let refused: Vec<(OdsCode, crate::directory::AdmissionError)> = self
            .peers
            .iter()
            .filter_map(|(c, p)| self.dir.admits(c, p.key, now).err().map(|e| (c.clone(), e)))
            .collect();
        for (peer, reason) in refused {
            self.handle_disconnected(&peer);
            self.out.event(Event::PeerNotAdmitted { peer, reason });
        }
    }

    /// A lookup whose signature the driver checked (see [`IncomingLookup`]); from anything but a
    /// connected setting it is refused as the same lookup off the wire would be.
    pub(crate) fn handle_verified_lookup(&mut self, from: &OdsCode, lookup: Verified<AccessEvent>, now: Timestamp) {
        match self.peers.get(from).map(|p| p.role) {
            Some(Role::Setting) => self.on_lookup(from, IncomingLookup::Verified(lookup), now),
            _ => self.handle_message(from, Message::Lookup(lookup.into_signed()), now),
        }
    }

    pub(crate) fn handle_verified_head(&mut self, from: &OdsCode, head: Verified<FeedHead>, now: Timestamp) {
        match self.peers.get(from).map(|p| p.role) {
            Some(role @ (Role::Hub | Role::Authority)) => self.on_head(from, role, Incoming::Verified(head), now),
            _ => self.handle_message(from, Message::Head(head.into_signed()), now),
        }
    }

    pub(crate) fn handle_verified_feed(&mut self, from: &OdsCode, batch: VerifiedBatch, now: Timestamp) {
        match self.peers.get(from).map(|p| p.role) {
            Some(role @ (Role::Hub | Role::Authority)) => {
                self.on_feed(from, role, batch.map_entries(Incoming::Verified), now)
            }
            _ => self.handle_message(from, Message::Feed(batch.into_batch()), now),
        }
    }

    pub(crate) fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
        let kind = message.kind();
        let Some(role) = self.peers.get(from).map(|p| p.role) else {
            return self.refuse(from, kind, Refusal::NotConnected);
        };
        match (role, message) {
            (_, Message::Sync { directory_version, marks }) => {
                self.on_sync(from, role, directory_version, &marks, ALL_BUCKETS, now)
            }
            (Role::Hub, Message::Digest { directory_version, directory, fingerprints }) => {
                self.on_digest(from, (directory_version, directory), &fingerprints)
            }
            (Role::Hub, Message::SyncPart { directory_version, buckets, marks }) => {
                self.on_sync(from, role, directory_version, &marks, buckets, now)
            }
            (Role::Hub | Role::Authority, Message::Directories(chain)) => {
                if let Err(reason) = self.accept_directories(Some(from), chain, now) {
                    self.out.event(Event::DirectoryRefused { from: Some(from.clone()), reason });
                }
            }
            (Role::Hub | Role::Authority, Message::Feed(batch)) => {
                self.on_feed(from, role, batch.map_entries(Incoming::Signed), now)
            }
            (Role::Hub | Role::Authority, Message::Head(head)) => self.on_head(from, role, Incoming::Signed(head), now),
            (Role::Setting, Message::Lookup(event)) => self.on_lookup(from, IncomingLookup::Signed(event), now),
            (Role::Hub, Message::Notify(n)) => self.on_relay(from, n, now),
            (Role::Hub | Role::Authority, Message::Receipt(r)) => self.on_receipt(from, r, now),
            (Role::Hub | Role::Authority, Message::Refused(r)) => self.on_refused(from, r),
            (Role::Authority, Message::Redeliver { since, from: start }) => self.redeliver(from, since, start),
            (role, _) => {
                let reason = Refusal::NotAllowed { sender: role.name(), kind, receiver: "hub" };
                self.refuse(from, kind, reason)
            }
        }
    }

    pub(crate) fn publish_directories(&mut self, id: CommandId, chain: Vec<SignedDirectory>, now: Timestamp) {
        let reply = match self.accept_directories(None, chain, now) {
            Ok(version) => Reply::Directory { version },
            Err(e) => {
                // A fork is an alarm whoever brings it (a peer's is reported where it arrives).
                if matches!(e, crate::directory::DirectoryError::Forked { .. }) {
                    self.out.event(Event::DirectoryRefused { from: None, reason: e.clone() });
                }
                Reply::Refused(e.into())
            }
        };
        self.reply(id, reply);
    }

    pub(crate) fn refuse_command(&mut self, id: CommandId, error: CommandError) {
        self.reply(id, Reply::Refused(error));
    }

    fn reply(&mut self, id: CommandId, reply: Reply) {
        self.event_when_durable(Event::Replied { command: id, reply });
    }

    /// An event that tells of what the writes queued so far store: let out once they are durable.
    pub(crate) fn event_when_durable(&mut self, event: Event) {
        if let Some(After::Event(e)) = self.out.after_pending(After::Event(event)) {
            self.out.event(e);
        }
    }

    /// A directory chain from the operator or a peer; spread to every peer hub once accepted.
    fn accept_directories(
        &mut self,
        from: Option<&OdsCode>,
        chain: Vec<SignedDirectory>,
        now: Timestamp,
    ) -> Result<u64, crate::directory::DirectoryError> {
        let before = self.dir.version();
        let mut ops = self.dir.accept(chain, now)?;
        if ops.is_empty() {
            return Ok(before);
        }
        ops.extend(self.purge_revoked());
        self.forks_offered.clear();
        let version = self.dir.version();
        let spread = Message::Directories(self.dir.after(before));
        let mut after = vec![After::Event(Event::DirectoryUpdated { version })];
        after.push(After::Forward(Box::new(spread), from.cloned()));
        self.out.write(ops, after);
        self.check_admissions(now);
        Ok(version)
    }

    /// Drops what a revoked key signed: an authority's replica whose head or any entry it signed
    /// (asked for again in full: the authority republishes under its new key), and visits whose
    /// hub or setting key is revoked.
    fn purge_revoked(&mut self) -> Vec<StoreOp> {
        let dir = &self.dir.trusted;
        let revoked = |code: &OdsCode, key_id: KeyId| {
            dir.member(code).and_then(|m| m.key(key_id)).is_none_or(|k| matches!(k.status, KeyStatus::Revoked { .. }))
        };
        let doomed: Vec<OdsCode> = self
            .authorities
            .iter()
            .filter(|(origin, r)| {
                r.head.as_ref().is_some_and(|h| revoked(origin, h.key_id))
                    || r.feed.entries().any(|e| revoked(origin, e.key_id))
            })
            .map(|(o, _)| o.clone())
            .collect();
        let visits: Vec<(OdsCode, u64)> = self
            .visits
            .iter()
            .flat_map(|(o, f)| f.entries.values().map(move |e| (o, e)))
            .filter(|(o, e)| {
                revoked(o, e.key_id)
                    || matches!(&e.body.body, EntryBody::Visit(v) if revoked(&v.body.setting, v.key_id))
            })
            .map(|(o, e)| (o.clone(), e.body.seq))
            .collect();
        let mut ops = Vec::new();
        for origin in doomed {
            ops.extend(self.drop_replica(&origin));
        }
        for (origin, seq) in visits {
            ops.extend(self.remove_visit(&origin, seq));
        }
        ops
    }

    /// Every mark this hub holds: each authority's sequence and head time, each hub's visits;
    /// computed again only after a write (see [`OwnMarks`]).
    fn own_marks(&mut self) -> Arc<OwnMarks> {
        let (writes, recovered) = (self.out.writes_queued(), self.own_recovery == OwnRecovery::Done);
        if let Some(own) = &self.own_marks
            && own.writes == writes
            && own.recovered == recovered
        {
            debug_assert!(own.agree(&self.marks_now()), "a mark changed without a write");
            return own.clone();
        }
        let own = Arc::new(self.marks_now());
        self.own_marks = Some(own.clone());
        own
    }

    fn marks_now(&self) -> OwnMarks {
        let authorities: Vec<crate::wire::Mark> = self.authorities.keys().map(|o| self.authority_mark(o)).collect();
        let recovered = self.own_recovery == OwnRecovery::Done;
        let visits: Vec<crate::wire::Mark> = self
            .visits
            .iter()
            // A hub whose store started empty asks peers for every visit of its own they hold.
            .filter(|(origin, _)| **origin != self.code || recovered)
            .map(|(origin, feed)| crate::wire::Mark { origin: origin.clone(), seq: feed.mark, head_at: Timestamp(0) })
            .collect();
        let all: Vec<crate::wire::Mark> = authorities.iter().chain(&visits).cloned().collect();
        let fingerprints = crate::wire::fingerprints(&all);
        OwnMarks { writes: self.out.writes_queued(), recovered, authorities, visits, fingerprints }
    }

    fn send_sync(&mut self, peer: &OdsCode) {
        let marks = self.own_marks().all().cloned().collect();
        self.out.send(peer, Message::Sync { directory_version: self.dir.version(), marks });
    }

    /// The periodic sync between hubs: a digest of the marks, which settles equal replicas in
    /// one small message. A hub still taking back its own visits sends every mark instead.
    fn send_digest(&mut self, peer: &OdsCode) {
        if self.own_recovery != OwnRecovery::Done {
            return self.send_sync(peer);
        }
        let fingerprints = self.own_marks().fingerprints;
        let (directory_version, directory) = (self.dir.version(), self.dir.fingerprint());
        self.out.send(peer, Message::Digest { directory_version, directory, fingerprints });
    }

    /// Tells an authority how far each hub known to this one holds its feed, unless that is what
    /// it was last told.
    fn send_held(&mut self, authority: &OdsCode) {
        let mut hubs = vec![HeldBy { hub: self.code.clone(), seq: self.authority_mark(authority).seq }];
        hubs.extend(
            self.peer_marks
                .iter()
                .filter_map(|(hub, marks)| marks.seq(authority).map(|seq| HeldBy { hub: hub.clone(), seq })),
        );
        if self.held_sent.get(authority) != Some(&hubs) {
            self.held_sent.insert(authority.clone(), hubs.clone());
            self.out.send(authority, Message::Held { hubs });
        }
    }

    fn authority_mark(&self, origin: &OdsCode) -> crate::wire::Mark {
        let head = self.authorities.get(origin).and_then(|r| r.head.as_ref());
        crate::wire::Mark {
            origin: origin.clone(),
            seq: head.map_or(0, |h| h.body.seq),
            head_at: head.map_or(Timestamp(0), |h| h.body.at),
        }
    }

    fn refuse(&mut self, from: &OdsCode, kind: &'static str, reason: Refusal) {
        // A setting's session waits for an answer: it is told at once, not left to time out.
        if self.peers.get(from).is_some_and(|p| p.role == Role::Setting) {
            self.out.send(from, Message::Refused(Refused { lookup_id: None, code: reason.code() }));
        }
        self.out.event(Event::MessageRefused { from: from.clone(), kind, reason });
    }

    fn refuse_lookup(&mut self, from: &OdsCode, lookup_id: LookupId, reason: Refusal) {
        self.out.send(from, Message::Refused(Refused { lookup_id: Some(lookup_id), code: reason.code() }));
        self.out.event(Event::LookupRefused { lookup_id, from: from.clone(), reason });
    }

    /// Rows read back at our request: delivered notifications an authority asked for again, and
    /// waiting notifications whose turn has come (or whose receipt came).
    pub(crate) fn handle_read(&mut self, request: &ReadRequest, rows: Vec<StoredRow>, now: Timestamp) {
        // A row that does not decode was refused at restore already; a read cannot add one.
        for row in &rows {
            match row.table {
                schema::Table::Delivered => {
                    let Ok(((_, authority), record)) = schema::DELIVERED.decode(row) else { continue };
                    if self.peers.get(&authority).is_some_and(|p| p.role == Role::Authority) {
                        let notification = Box::new(record.notification);
                        self.out.send(&authority, Message::Redelivered { notification, receipt: record.receipt });
                    }
                }
                schema::Table::Outbox => {
                    let Ok((key, record)) = schema::OUTBOX.decode(row) else { continue };
                    self.restore_body(&key, record.notification);
                    if let Some((from, receipt)) = self.receipts_waiting.remove(&key) {
                        self.on_receipt(&from, receipt, now);
                    }
                }
                _ => {}
            }
        }
        // A page of redelivery (the keys of one authority) then tells it where the next starts,
        // even when none of its rows was left to send (pruned since, or not read back).
        let paged = request.keys.first().and_then(|key| schema::DELIVERED.parse_key(key));
        if let (schema::Table::Delivered, Some((_, authority))) = (request.table, paged)
            && let Some(next) = self.redelivery_next.remove(&authority)
        {
            self.out.send(&authority, Message::RedeliverPage { next });
        }
        // A body this request asked for and did not find is asked for again only after a
        // retry's wait (another request's keys are its own call's to judge).
        let asked = request.keys.iter().filter(|_| request.table == schema::Table::Outbox);
        let missing: Vec<(LookupId, OdsCode)> = asked
            .filter_map(|key| schema::OUTBOX.parse_key(key))
            .filter(|key| self.outbox.get(key).is_some_and(|i| i.reading && i.notification.is_none()))
            .collect();
        for key in missing {
            if let Some(item) = self.outbox.get_mut(&key) {
                item.reading = false;
            }
            self.reschedule(&key, now.plus_ms(self.config.retry_base_ms));
        }
        self.deliver_due(now);
    }

    pub(crate) fn handle_durable(&mut self, write_id: u64, now: Timestamp) {
        let mut queued = false;
        for action in self.out.durable(write_id) {
            match action {
                After::Send(t) => self.out.transmits.push_back(*t),
                After::Event(e) => self.out.event(e),
                After::Queue(record) => {
                    self.queue(*record, now);
                    queued = true;
                }
                After::Forward(message, except) => self.forward(*message, except.as_ref()),
                After::ForwardRun { origin, after, except } => {
                    for peer in self.peers_but(Some(&except), false) {
                        self.send_run(&peer, &origin, after);
                    }
                }
            }
        }
        if queued {
            self.deliver_due(now);
        }
    }

    /// Sends `message` on to every peer hub but `except`; a directory update also to every
    /// connected authority (it would otherwise learn of it only when it next connects).
    fn forward(&mut self, message: Message, except: Option<&OdsCode>) {
        let also_authorities = matches!(message, Message::Directories(_));
        for peer in self.peers_but(except, also_authorities) {
            self.out.send(&peer, message.clone());
        }
    }

    /// Every connected hub (and authority, if asked) but `except`.
    fn peers_but(&self, except: Option<&OdsCode>, also_authorities: bool) -> Vec<OdsCode> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.role == Role::Hub || (also_authorities && peer.role == Role::Authority))
            .filter(|(p, _)| Some(*p) != except)
            .map(|(p, _)| p.clone())
            .collect()
    }
}
