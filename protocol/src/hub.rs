//! The hub's state machine: a replica of every feed, lookups answered from it, notifications
//! routed store-and-forward to their authorities, and visit histories spread between hubs.
//!
//! Call order: `restore` once with the stored rows; then `handle_connected`,
//! `handle_disconnected`, `handle_message` and `handle_tick` as things happen; after each, drain
//! `poll_write` (make each batch durable in order, then `handle_durable(id)`), `poll_transmit`
//! and `poll_event`. A lookup's answer and its notifications are released only once the write
//! holding its access event is durable.

use crate::codec;
use crate::directory::{KeyStatus, Role, SignedDirectory, TrustedDirectory};
use crate::feed::{EntryBody, EntryKey, SignedEntry};
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::machine::{DirectoryState, Event, Outputs, Transmit};
use crate::records::AccessEvent;
use crate::sign::{Identity, Signed};
use crate::store::{StoreOp, StoredRow, Table, WriteBatch};
use crate::time::Timestamp;
use crate::wire::{ANSWER_PLANS_MAX, FeedBatch, HighWater, Message, Notification, Refusal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Timings of a hub; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// How often to compare high-water marks with every connected peer. Default 30 s.
    pub sync_interval_ms: u64,
    /// First retry delay for a notification. Default 1 s.
    pub retry_base_ms: u64,
    /// Longest retry delay for a notification. Default 60 s.
    pub retry_cap_ms: u64,
    /// A notification waiting longer than this is reported overdue. Default 1 hour.
    pub overdue_after_ms: u64,
    /// A lookup whose time is further than this from the hub's clock is refused. Default 5 min.
    pub clock_skew_max_ms: u64,
    /// How often to drop summaries past visibility and old visits. Default 1 hour.
    pub prune_interval_ms: u64,
    /// How long visits are kept for the history. Default 365 days.
    pub visit_retention_days: u64,
    /// How long a plan's last entry is kept once the plan is no longer visible (withdrawn, or
    /// past its window), so that a hub cut off when it changed still learns of it. Default 30.
    pub tombstone_retention_days: u64,
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
        }
    }
}

/// Why a lookup was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The event names another setting than the connected one.
    #[error("lookup is signed for setting {claimed} but came from {from}")]
    NotFromSetting { claimed: OdsCode, from: OdsCode },
    /// The setting's signature does not hold.
    #[error(transparent)]
    Signature(#[from] crate::directory::RecordError),
    /// A text field breaks a rule.
    #[error(transparent)]
    Text(#[from] crate::records::TextError),
    /// The event's time is too far from the hub's clock.
    #[error("lookup time {at} is more than {skew_ms} ms from the hub's clock {now}")]
    Stale { at: Timestamp, now: Timestamp, skew_ms: u64 },
    /// This lookup id was seen before with other content.
    #[error("lookup {0} was already made: a replay is refused")]
    Replayed(LookupId),
    /// The event's setting type is not the one the directory lists for the setting.
    #[error("the setting is listed as {listed}, not {claimed}")]
    WrongSettingType { listed: &'static str, claimed: &'static str },
}

/// A notification the hub must still see acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub notification: Signed<Notification>,
    pub queued_at: Timestamp,
}

struct OutboxItem {
    record: OutboxRecord,
    attempts: u32,
    next_attempt_at: Timestamp,
    overdue_reported: bool,
}

#[derive(Default)]
struct OriginFeed {
    hw: u64,
    as_of: Timestamp,
    entries: BTreeMap<u64, SignedEntry>,
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
enum After {
    Send(Box<Transmit>),
    Event(Event),
    Queue(Box<OutboxRecord>),
    Forward(FeedBatch, Option<OdsCode>),
}

/// A hub's state machine.
pub struct Hub {
    code: OdsCode,
    identity: Identity,
    dir: DirectoryState,
    config: HubConfig,
    feeds: BTreeMap<OdsCode, OriginFeed>,
    latest: HashMap<(OdsCode, EntryKey), u64>,
    plans_by_nhs: HashMap<NhsNumber, BTreeSet<(OdsCode, PlanRef)>>,
    visits_by_nhs: HashMap<NhsNumber, BTreeSet<(Timestamp, OdsCode, u64)>>,
    /// Lookups seen within the replay window: their time and signature.
    recent_lookups: HashMap<LookupId, (Timestamp, crate::sign::SignatureBytes)>,
    outbox: BTreeMap<(LookupId, OdsCode), OutboxItem>,
    peers: BTreeMap<OdsCode, Role>,
    /// Origins and sequences at which an equivocation was proven (proof in the store).
    equivocations: BTreeSet<(OdsCode, u64)>,
    own_recovery: OwnRecovery,
    next_sync_at: Timestamp,
    next_prune_at: Timestamp,
    out: Outputs<After>,
}

mod lookups;
mod notify;
mod replica;

impl Hub {
    /// A fresh machine, then the stored rows applied.
    pub fn restore(
        code: OdsCode,
        identity: Identity,
        directory: TrustedDirectory,
        config: HubConfig,
        rows: &[StoredRow],
        now: Timestamp,
    ) -> Result<Hub, codec::DecodeError> {
        let mut hub = Hub {
            code,
            identity,
            dir: DirectoryState::new(directory),
            config,
            feeds: BTreeMap::new(),
            latest: HashMap::new(),
            plans_by_nhs: HashMap::new(),
            visits_by_nhs: HashMap::new(),
            recent_lookups: HashMap::new(),
            outbox: BTreeMap::new(),
            peers: BTreeMap::new(),
            equivocations: BTreeSet::new(),
            own_recovery: if rows.is_empty() { OwnRecovery::AwaitingPeer } else { OwnRecovery::Done },
            next_sync_at: now,
            next_prune_at: now,
            out: Outputs::new(),
        };
        hub.dir.restore(rows, now);
        hub.restore_rows(rows, now)?;
        Ok(hub)
    }

    fn restore_rows(&mut self, rows: &[StoredRow], now: Timestamp) -> Result<(), codec::DecodeError> {
        for row in rows {
            match row.table {
                Table::Entries => {
                    let e: SignedEntry = codec::decode(&row.value, u64::MAX)?;
                    self.index_entry(e);
                }
                Table::HighWater => {
                    let origin = OdsCode::parse(&String::from_utf8_lossy(&row.key))
                        .map_err(|e| codec::DecodeError::Malformed(e.to_string()))?;
                    let seq = u64::from_be_bytes(row.value.as_slice().try_into().unwrap_or([0; 8]));
                    let feed = self.feeds.entry(origin).or_default();
                    feed.hw = feed.hw.max(seq);
                }
                Table::AccessLog => {
                    let e: Signed<AccessEvent> = codec::decode(&row.value, u64::MAX)?;
                    if now.since(e.body.at) <= self.config.clock_skew_max_ms.saturating_mul(2) {
                        self.recent_lookups.insert(e.body.lookup_id, (e.body.at, e.signature));
                    }
                }
                Table::Equivocations => {
                    let (mine, _): (SignedEntry, SignedEntry) = codec::decode(&row.value, u64::MAX)?;
                    self.equivocations.insert((mine.body.origin, mine.body.seq));
                }
                Table::Outbox => {
                    let record: OutboxRecord = codec::decode(&row.value, u64::MAX)?;
                    self.queue(record, now);
                }
                _ => {}
            }
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

    /// High-water mark and freshness of every origin held.
    pub fn high_waters(&self) -> Vec<HighWater> {
        self.feeds.iter().map(|(origin, f)| HighWater { origin: origin.clone(), seq: f.hw, as_of: f.as_of }).collect()
    }

    /// Every entry held, in origin and sequence order.
    pub fn entries(&self) -> impl Iterator<Item = &SignedEntry> {
        self.feeds.values().flat_map(|f| f.entries.values())
    }

    /// Notifications waiting, per destination authority.
    pub fn outbox_depths(&self) -> BTreeMap<OdsCode, usize> {
        let mut depths = BTreeMap::new();
        for (_, authority) in self.outbox.keys() {
            *depths.entry(authority.clone()).or_insert(0) += 1;
        }
        depths
    }

    /// Where equivocations were proven.
    pub fn equivocations(&self) -> &BTreeSet<(OdsCode, u64)> {
        &self.equivocations
    }

    /// Peers connected now, with their roles.
    pub fn peers(&self) -> &BTreeMap<OdsCode, Role> {
        &self.peers
    }

    /// A peer connected (the driver has checked its key against the directory).
    pub fn handle_connected(&mut self, peer: &OdsCode, role: Role, now: Timestamp) {
        self.peers.insert(peer.clone(), role);
        match role {
            Role::Hub => {
                if self.own_recovery == OwnRecovery::AwaitingPeer {
                    let until = now.plus_ms(self.config.sync_interval_ms.saturating_mul(2));
                    self.own_recovery = OwnRecovery::Until(until);
                }
                self.send_sync(peer)
            }
            Role::Authority => {
                let seq = self.feeds.get(peer).map_or(0, |f| f.hw);
                let have = vec![HighWater { origin: peer.clone(), seq, as_of: now }];
                self.out.send(peer, Message::Sync { directory_version: self.dir.version(), have });
            }
            Role::Setting => {}
        }
        self.wake_notifications_for(peer, now);
    }

    pub fn handle_disconnected(&mut self, peer: &OdsCode) {
        self.peers.remove(peer);
    }

    /// Periodic work: anti-entropy, notification retries, pruning.
    pub fn handle_tick(&mut self, now: Timestamp) {
        if matches!(self.own_recovery, OwnRecovery::Until(t) if now >= t) {
            self.own_recovery = OwnRecovery::Done;
        }
        if now >= self.next_sync_at {
            self.next_sync_at = now.plus_ms(self.config.sync_interval_ms);
            let peers: Vec<(OdsCode, Role)> = self.peers.iter().map(|(p, r)| (p.clone(), *r)).collect();
            for (peer, role) in peers {
                if role != Role::Setting {
                    self.send_sync(&peer);
                }
            }
        }
        self.deliver_due(now);
        if now >= self.next_prune_at {
            self.next_prune_at = now.plus_ms(self.config.prune_interval_ms);
            self.prune(now);
        }
    }

    /// A message from a connected peer whose role the driver checked.
    pub fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
        let role = self.peers.get(from).copied();
        let kind = message.kind();
        match (role, message) {
            (Some(_), Message::Sync { directory_version, have }) => self.on_sync(from, directory_version, &have, now),
            (Some(_), Message::Directories(chain)) => self.on_directories(Some(from), chain, now),
            (Some(Role::Hub | Role::Authority), Message::Feed(batch)) => self.on_feed(from, batch, now),
            (Some(Role::Setting), Message::Lookup(event)) => self.on_lookup(from, event, now),
            (Some(Role::Hub), Message::Notify(n)) => self.on_relay(from, n, now),
            (Some(Role::Hub | Role::Authority), Message::Receipt(r)) => self.on_receipt(from, r, now),
            (Some(Role::Hub), Message::Refused(r)) => {
                self.refuse(from, kind, format!("peer refused something: {}", r.reason));
            }
            (None, _) => self.refuse(from, kind, "not connected".into()),
            (Some(role), _) => self.refuse(from, kind, format!("a {} may not send this to a hub", role.name())),
        }
    }

    /// A directory chain given by the operator or a peer; spread to every peer once accepted.
    pub fn handle_directories(
        &mut self,
        chain: Vec<SignedDirectory>,
        now: Timestamp,
    ) -> Result<u64, crate::directory::DirectoryError> {
        self.accept_directories(None, chain, now)
    }

    fn on_directories(&mut self, from: Option<&OdsCode>, chain: Vec<SignedDirectory>, now: Timestamp) {
        if let Err(e) = self.accept_directories(from, chain, now) {
            self.out.event(Event::DirectoryRefused { from: from.cloned(), reason: e.to_string() });
        }
    }

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
        let version = self.dir.version();
        let mut after = vec![After::Event(Event::DirectoryUpdated { version })];
        for (peer, role) in &self.peers {
            if Some(peer) != from && *role != Role::Setting {
                let chain = self.dir.after(before);
                let message = Message::Directories(chain);
                after.push(After::Send(Box::new(Transmit { to: peer.clone(), message })));
            }
        }
        self.out.write(ops, after);
        Ok(version)
    }

    /// Drops every entry signed by a key now revoked (its origin re-signs what is still live).
    fn purge_revoked(&mut self) -> Vec<StoreOp> {
        let dir = &self.dir.trusted;
        let revoked = |code: &OdsCode, key_id: crate::sign::KeyId| {
            dir.member(code).and_then(|m| m.key(key_id)).is_none_or(|k| matches!(k.status, KeyStatus::Revoked { .. }))
        };
        let doomed: Vec<(OdsCode, u64)> = self
            .entries()
            .filter(|e| {
                revoked(&e.body.origin, e.key_id)
                    || matches!(&e.body.body, EntryBody::Visit(v) if revoked(&v.body.setting, v.key_id))
            })
            .map(|e| (e.body.origin.clone(), e.body.seq))
            .collect();
        doomed.into_iter().filter_map(|(origin, seq)| self.remove_entry(&origin, seq)).collect()
    }

    fn send_sync(&mut self, peer: &OdsCode) {
        let mut have = self.high_waters();
        if self.own_recovery != OwnRecovery::Done {
            // Ask peers for every visit of ours they hold: our store started empty.
            have.retain(|h| h.origin != self.code);
        }
        self.out.send(peer, Message::Sync { directory_version: self.dir.version(), have });
    }

    fn refuse(&mut self, from: &OdsCode, kind: &'static str, reason: String) {
        self.out.event(Event::MessageRefused { from: from.clone(), kind, reason });
    }

    fn refuse_lookup(&mut self, from: &OdsCode, lookup_id: LookupId, reason: String) {
        self.out.send(from, Message::Refused(Refusal { lookup_id: Some(lookup_id), reason: reason.clone() }));
        self.out.event(Event::LookupRefused { lookup_id, from: from.clone(), reason });
    }

    /// Every write up to `write_id` is durable.
    pub fn handle_durable(&mut self, write_id: u64, now: Timestamp) {
        let mut queued = false;
        for action in self.out.durable(write_id) {
            match action {
                After::Send(t) => self.out.transmits.push_back(*t),
                After::Event(e) => self.out.event(e),
                After::Queue(record) => {
                    self.queue(*record, now);
                    queued = true;
                }
                After::Forward(batch, except) => self.forward(batch, except.as_ref()),
            }
        }
        // Only new notifications become due here; the rest wait for the tick (which scans the
        // outbox), so a busy hub does not scan it on every write.
        if queued {
            self.deliver_due(now);
        }
    }

    pub fn poll_write(&mut self) -> Option<WriteBatch> {
        self.out.writes.pop_front()
    }
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    fn today_visible(&self, origin: &OdsCode, reference: &PlanRef, now: Timestamp) -> Option<&SignedEntry> {
        let seq = self.latest.get(&(origin.clone(), EntryKey::Plan(reference.clone())))?;
        let entry = self.feeds.get(origin)?.entries.get(seq)?;
        match &entry.body.body {
            EntryBody::Plan(p) if p.visible_on(now.date()) => Some(entry),
            _ => None,
        }
    }

    /// Every visible plan for `nhs`, as signed entries, at most [`ANSWER_PLANS_MAX`].
    pub fn visible_plans(&self, nhs: NhsNumber, now: Timestamp) -> Vec<SignedEntry> {
        let Some(keys) = self.plans_by_nhs.get(&nhs) else {
            return vec![];
        };
        keys.iter()
            .filter_map(|(origin, reference)| self.today_visible(origin, reference, now))
            .take(ANSWER_PLANS_MAX)
            .cloned()
            .collect()
    }

    fn feed_entry(&self, origin: &OdsCode, key: EntryKey) -> Option<&SignedEntry> {
        let seq = self.latest.get(&(origin.clone(), key))?;
        self.feeds.get(origin)?.entries.get(seq)
    }
}

crate::machine::impl_state_machine!(Hub,
    connected: |hub, peer, role, now| Hub::handle_connected(hub, peer, role, now),
    durable: |hub, id, now| Hub::handle_durable(hub, id, now));
