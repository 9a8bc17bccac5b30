//! The authority's state machine: its feed of plans and contacts, pushed to its home hubs, and
//! its inbox of notifications.
//!
//! Call order: `restore` once with the stored rows; then, as things happen, `handle_connected`,
//! `handle_disconnected`, `handle_message`, `handle_tick` and the operator's commands
//! (`record_plan`, `end_plan`, `withdraw_plan`, `set_contacts`, `acknowledge`); after each, drain
//! `poll_write` (make each batch durable, then `handle_durable`), `poll_transmit` and `poll_event`.
//! A command's change is acknowledged to the operator only once its write id is durable.

use crate::codec;
use crate::directory::{KeyStatus, Role, TrustedDirectory};
use crate::feed::{EntryBody, EntryKey, FeedEntry, SignedEntry};
use crate::ids::{LookupId, OdsCode, PlanRef};
use crate::machine::{DirectoryState, Event, Outputs, Transmit, entry_key};
use crate::records::{Contacts, Plan, PlanError};
use crate::sign::{Identity, Signed};
use crate::store::{StoreOp, StoredRow, Table, WriteBatch};
use crate::time::{Date, Timestamp};
use crate::wire::{BATCH_ENTRIES_MAX, FeedBatch, HighWater, Message, Notification, Receipt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A notification as the authority keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub notification: Signed<Notification>,
    pub received_at: Timestamp,
    /// When and by whom a social worker acknowledged it.
    pub acknowledged: Option<(Timestamp, String)>,
}

/// The result of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Applied; acknowledge once write `write_id` is durable.
    Applied { write_id: u64 },
    /// Nothing to change: the state already says this.
    Unchanged,
}

/// Why an operator's command was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The plan breaks a plan rule.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// No plan has this reference.
    #[error("no plan with reference {0}")]
    UnknownPlan(PlanRef),
    /// No notification has this lookup id.
    #[error("no notification with lookup id {0}")]
    UnknownNotification(LookupId),
    /// The contacts break a text rule.
    #[error(transparent)]
    Text(#[from] crate::records::TextError),
    /// The node's own key is not an active key of this authority in the directory.
    #[error("this node's key {0} is not an active key of the authority in the directory")]
    KeyNotActive(crate::sign::KeyId),
}

/// Work held until a write is durable.
enum After {
    Push(SignedEntry),
    Send(Transmit),
    Event(Event),
}

/// An authority's state machine.
pub struct Authority {
    code: OdsCode,
    identity: Identity,
    dir: DirectoryState,
    last_seq: u64,
    /// Highest sequence known durable: only entries up to it are ever sent, so a crash can never
    /// make the authority reuse a sequence a hub has seen.
    durable_seq: u64,
    /// Live entries: the latest for each key.
    entries: BTreeMap<u64, SignedEntry>,
    latest: BTreeMap<EntryKey, u64>,
    inbox: BTreeMap<LookupId, InboxItem>,
    hubs: BTreeSet<OdsCode>,
    next_sync_at: Timestamp,
    out: Outputs<After>,
}

/// Highest sequence an authority will skip to when a hub has seen more of its feed than it
/// holds (far beyond any real feed; keeps a lying peer from exhausting the sequence space).
pub const SEQ_SKIP_MAX: u64 = 1 << 48;

/// How often an authority re-announces its feed head to its hubs.
pub const AUTHORITY_SYNC_INTERVAL_MS: u64 = 30_000;

impl Authority {
    /// A fresh machine, then the stored rows applied.
    pub fn restore(
        code: OdsCode,
        identity: Identity,
        directory: TrustedDirectory,
        rows: &[StoredRow],
        now: Timestamp,
    ) -> Result<Authority, codec::DecodeError> {
        let mut a = Authority {
            code,
            identity,
            dir: DirectoryState::new(directory),
            last_seq: 0,
            durable_seq: 0,
            entries: BTreeMap::new(),
            latest: BTreeMap::new(),
            inbox: BTreeMap::new(),
            hubs: BTreeSet::new(),
            next_sync_at: now,
            out: Outputs::new(),
        };
        a.dir.restore(rows, now);
        for row in rows {
            match row.table {
                Table::Entries => {
                    let e: SignedEntry = codec::decode(&row.value, u64::MAX)?;
                    a.last_seq = a.last_seq.max(e.body.seq);
                    a.latest.insert(e.body.key(), e.body.seq);
                    a.entries.insert(e.body.seq, e);
                }
                Table::Inbox => {
                    let item: InboxItem = codec::decode(&row.value, u64::MAX)?;
                    a.inbox.insert(item.notification.body.event.body.lookup_id, item);
                }
                _ => {}
            }
        }
        a.durable_seq = a.last_seq;
        a.republish_revoked(now);
        Ok(a)
    }

    pub fn code(&self) -> &OdsCode {
        &self.code
    }
    pub fn directory(&self) -> &TrustedDirectory {
        &self.dir.trusted
    }
    /// Highest sequence number of the feed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Every plan the authority holds, by reference.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.entries.values().filter_map(|e| match &e.body.body {
            EntryBody::Plan(p) => Some(p),
            _ => None,
        })
    }

    pub fn plan(&self, reference: &PlanRef) -> Option<&Plan> {
        let seq = self.latest.get(&EntryKey::Plan(reference.clone()))?;
        match &self.entries.get(seq)?.body.body {
            EntryBody::Plan(p) => Some(p),
            _ => None,
        }
    }

    pub fn contacts(&self) -> Option<&Contacts> {
        let seq = self.latest.get(&EntryKey::Contacts)?;
        match &self.entries.get(seq)?.body.body {
            EntryBody::Contacts(c) => Some(c),
            _ => None,
        }
    }

    pub fn inbox(&self) -> impl Iterator<Item = &InboxItem> {
        self.inbox.values()
    }

    /// Hubs currently connected.
    pub fn connected_hubs(&self) -> impl Iterator<Item = &OdsCode> {
        self.hubs.iter()
    }

    /// Records a new plan or a new state of an existing one (same reference).
    pub fn record_plan(&mut self, plan: Plan, now: Timestamp) -> Result<Change, CommandError> {
        plan.check()?;
        if self.plan(&plan.reference) == Some(&plan) {
            return Ok(Change::Unchanged);
        }
        self.append(EntryBody::Plan(plan), now)
    }

    /// Ends a plan on `end`.
    pub fn end_plan(&mut self, reference: &PlanRef, end: Date, now: Timestamp) -> Result<Change, CommandError> {
        let mut plan = self.plan(reference).cloned().ok_or_else(|| CommandError::UnknownPlan(reference.clone()))?;
        plan.end = Some(end);
        self.record_plan(plan, now)
    }

    /// Withdraws a plan entered in error: it is shown nowhere from now on.
    pub fn withdraw_plan(&mut self, reference: &PlanRef, now: Timestamp) -> Result<Change, CommandError> {
        let mut plan = self.plan(reference).cloned().ok_or_else(|| CommandError::UnknownPlan(reference.clone()))?;
        plan.withdrawn = true;
        self.record_plan(plan, now)
    }

    pub fn set_contacts(&mut self, contacts: Contacts, now: Timestamp) -> Result<Change, CommandError> {
        contacts.check()?;
        if self.contacts() == Some(&contacts) {
            return Ok(Change::Unchanged);
        }
        self.append(EntryBody::Contacts(contacts), now)
    }

    /// Marks a notification as read by `by`.
    pub fn acknowledge(&mut self, lookup_id: LookupId, by: &str, now: Timestamp) -> Result<Change, CommandError> {
        crate::records::check_text("acknowledged by", by)?;
        let item = self.inbox.get_mut(&lookup_id).ok_or(CommandError::UnknownNotification(lookup_id))?;
        if item.acknowledged.is_some() {
            return Ok(Change::Unchanged);
        }
        item.acknowledged = Some((now, by.to_string()));
        let op = StoreOp::Put { table: Table::Inbox, key: lookup_id.0.to_vec(), value: codec::encode(item) };
        Ok(Change::Applied { write_id: self.out.write(vec![op], vec![]) })
    }

    fn append(&mut self, body: EntryBody, now: Timestamp) -> Result<Change, CommandError> {
        self.check_own_key(now)?;
        let seq = self.last_seq + 1;
        let entry = self.identity.sign(FeedEntry { origin: self.code.clone(), seq, at: now, body });
        let mut ops =
            vec![StoreOp::Put { table: Table::Entries, key: entry_key(&self.code, seq), value: codec::encode(&entry) }];
        if let Some(old) = self.latest.insert(entry.body.key(), seq) {
            self.entries.remove(&old);
            ops.push(StoreOp::Delete { table: Table::Entries, key: entry_key(&self.code, old) });
        }
        self.last_seq = seq;
        self.entries.insert(seq, entry.clone());
        Ok(Change::Applied { write_id: self.out.write(ops, vec![After::Push(entry)]) })
    }

    fn check_own_key(&self, now: Timestamp) -> Result<(), CommandError> {
        let usable = self
            .dir
            .trusted
            .member(&self.code)
            .and_then(|m| m.key(self.identity.key_id()))
            .is_some_and(|k| k.usable_at(now));
        if !usable {
            return Err(CommandError::KeyNotActive(self.identity.key_id()));
        }
        Ok(())
    }

    /// A hub connected (the driver has checked its key against the directory).
    pub fn handle_connected(&mut self, hub: &OdsCode, now: Timestamp) {
        self.hubs.insert(hub.clone());
        let have = vec![HighWater { origin: self.code.clone(), seq: self.durable_seq, as_of: now }];
        self.out.send(hub, Message::Sync { directory_version: self.dir.version(), have });
    }

    pub fn handle_disconnected(&mut self, hub: &OdsCode) {
        self.hubs.remove(hub);
    }

    /// Periodic work: nothing is timed at an authority beyond its hubs' syncs, but a tick lets it
    /// re-announce its feed head so hubs can tell how fresh their copy is.
    pub fn handle_tick(&mut self, now: Timestamp) {
        if now < self.next_sync_at {
            return;
        }
        self.next_sync_at = now.plus_ms(AUTHORITY_SYNC_INTERVAL_MS);
        for hub in self.hubs.clone() {
            let have = vec![HighWater { origin: self.code.clone(), seq: self.durable_seq, as_of: now }];
            self.out.send(&hub, Message::Sync { directory_version: self.dir.version(), have });
        }
    }

    /// A message from a connected peer.
    pub fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
        let kind = message.kind();
        match message {
            Message::Sync { directory_version, have } => self.on_sync(from, directory_version, &have, now),
            Message::Directories(chain) => self.on_directories(Some(from), chain, now),
            Message::Notify(n) => self.on_notify(from, n, now),
            _ => self.refuse(from, kind, "an authority does not take this message".into()),
        }
    }

    /// A directory chain given by the operator (or a peer).
    pub fn handle_directories(
        &mut self,
        chain: Vec<crate::directory::SignedDirectory>,
        now: Timestamp,
    ) -> Result<u64, crate::directory::DirectoryError> {
        let ops = self.dir.accept(chain, now)?;
        if !ops.is_empty() {
            self.out.write(ops, vec![After::Event(Event::DirectoryUpdated { version: self.dir.version() })]);
            self.republish_revoked(now);
        }
        Ok(self.dir.version())
    }

    fn on_directories(
        &mut self,
        from: Option<&OdsCode>,
        chain: Vec<crate::directory::SignedDirectory>,
        now: Timestamp,
    ) {
        if let Err(e) = self.handle_directories(chain, now) {
            self.out.event(Event::DirectoryRefused { from: from.cloned(), reason: e.to_string() });
        }
    }

    fn on_sync(&mut self, hub: &OdsCode, directory_version: u64, have: &[HighWater], now: Timestamp) {
        if directory_version < self.dir.version() {
            self.out.send(hub, Message::Directories(self.dir.after(directory_version)));
        }
        let Some(h) = have.iter().find(|h| h.origin == self.code) else { return };
        if h.seq > self.last_seq && h.seq < SEQ_SKIP_MAX {
            self.skip_past(hub, h.seq, now);
        }
        self.push_from(hub, h.seq);
    }

    /// A hub has seen more of our feed than we hold (we were restored from an old backup): never
    /// reuse those sequences; re-sign every live record after them so hubs converge on ours.
    fn skip_past(&mut self, hub: &OdsCode, hub_seq: u64, now: Timestamp) {
        self.out.event(Event::FeedBehindHub { hub: hub.clone(), hub_seq, own_seq: self.last_seq });
        self.last_seq = hub_seq;
        self.durable_seq = self.durable_seq.max(hub_seq);
        let live: Vec<SignedEntry> = self.entries.values().cloned().collect();
        for e in live {
            if self.append(e.body.body, now).is_err() {
                return;
            }
        }
    }

    /// Sends `hub` every live, durable entry after `seq`, in batches.
    fn push_from(&mut self, hub: &OdsCode, seq: u64) {
        if seq >= self.durable_seq {
            return;
        }
        let mut after = seq;
        let live: Vec<SignedEntry> = self.entries.range(seq + 1..=self.durable_seq).map(|(_, e)| e.clone()).collect();
        let chunks: Vec<&[SignedEntry]> = live.chunks(BATCH_ENTRIES_MAX).collect();
        if chunks.is_empty() {
            // Everything after `seq` was superseded: an empty batch still moves the hub on.
            let as_of = Timestamp(0);
            let batch = FeedBatch { origin: self.code.clone(), after, upto: self.durable_seq, entries: vec![], as_of };
            return self.out.send(hub, Message::Feed(batch));
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let upto = if i + 1 == chunks.len() { self.durable_seq } else { chunk[chunk.len() - 1].body.seq };
            let as_of = chunk.iter().map(|e| e.body.at).max().unwrap_or_default();
            let batch = FeedBatch { origin: self.code.clone(), after, upto, entries: chunk.to_vec(), as_of };
            self.out.send(hub, Message::Feed(batch));
            after = upto;
        }
    }

    fn on_notify(&mut self, from: &OdsCode, signed: Signed<Notification>, now: Timestamp) {
        let lookup_id = signed.body.event.body.lookup_id;
        if let Err(reason) = self.check_notification(&signed) {
            return self.refuse(from, "notify", reason);
        }
        if let Some(item) = self.inbox.get(&lookup_id) {
            // A retry: answer with the same receipt, but only once the first copy's write (and
            // every write before it) is durable.
            let receipt = self.receipt(&item.notification.body, item.received_at);
            let send = After::Send(Transmit { to: from.clone(), message: Message::Receipt(receipt) });
            if let Some(After::Send(t)) = self.out.after_pending(send) {
                self.out.transmits.push_back(t);
            }
            return;
        }
        let hub = signed.body.hub.clone();
        let item = InboxItem { notification: signed, received_at: now, acknowledged: None };
        let receipt = self.receipt(&item.notification.body, now);
        let op = StoreOp::Put { table: Table::Inbox, key: lookup_id.0.to_vec(), value: codec::encode(&item) };
        self.inbox.insert(lookup_id, item);
        let after = vec![
            After::Send(Transmit { to: from.clone(), message: Message::Receipt(receipt) }),
            After::Event(Event::NotificationReceived { lookup_id, hub }),
        ];
        self.out.write(vec![op], after);
    }

    fn check_notification(&self, signed: &Signed<Notification>) -> Result<(), String> {
        let n = &signed.body;
        if n.authority != self.code {
            return Err(format!("notification is for {}, not {}", n.authority, self.code));
        }
        let dir = &self.dir.trusted;
        dir.verify(signed.clone(), &n.hub, Role::Hub).map_err(|e| e.to_string())?;
        dir.verify(n.event.clone(), &n.event.body.setting, Role::Setting).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn receipt(&self, n: &Notification, stored_at: Timestamp) -> Signed<Receipt> {
        self.identity.sign(Receipt {
            lookup_id: n.event.body.lookup_id,
            authority: self.code.clone(),
            hub: n.hub.clone(),
            stored_at,
        })
    }

    /// Re-signs, as new entries, every live entry whose key is now revoked.
    fn republish_revoked(&mut self, now: Timestamp) {
        let Some(me) = self.dir.trusted.member(&self.code).cloned() else {
            return;
        };
        let revoked: Vec<SignedEntry> = self
            .entries
            .values()
            .filter(|e| me.key(e.key_id).is_none_or(|k| matches!(k.status, KeyStatus::Revoked { .. })))
            .cloned()
            .collect();
        for e in revoked {
            // A command error here means our own key is unusable: nothing can be re-signed until
            // the operator installs the new key; the next restart tries again.
            if self.append(e.body.body, now).is_err() {
                return;
            }
        }
    }

    fn refuse(&mut self, from: &OdsCode, kind: &'static str, reason: String) {
        self.out.event(Event::MessageRefused { from: from.clone(), kind, reason });
    }

    /// Every write up to `write_id` is durable.
    pub fn handle_durable(&mut self, write_id: u64) {
        for action in self.out.durable(write_id) {
            match action {
                After::Push(entry) => {
                    let seq = entry.body.seq;
                    self.durable_seq = self.durable_seq.max(seq);
                    for hub in &self.hubs {
                        let batch = FeedBatch {
                            origin: self.code.clone(),
                            after: seq - 1,
                            upto: seq,
                            entries: vec![entry.clone()],
                            as_of: entry.body.at,
                        };
                        self.out.transmits.push_back(Transmit { to: hub.clone(), message: Message::Feed(batch) });
                    }
                }
                After::Send(t) => self.out.transmits.push_back(t),
                After::Event(e) => self.out.event(e),
            }
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
}

crate::machine::impl_state_machine!(Authority,
    connected: |a, peer, _role, now| Authority::handle_connected(a, peer, now),
    durable: |a, id, _now| Authority::handle_durable(a, id));
