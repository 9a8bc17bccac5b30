//! The authority's state machine: its own records of its plans, the feed it publishes from them
//! with a signed head, pushed to its home hubs, and its inbox of notifications.
//!
//! A plan is published (as an entry of the feed) while it is visible; once withdrawn, or past its
//! visibility window, a `Removed` entry takes its place and hubs drop it. Entries are numbered by
//! the authority's clock (`max(last + 1, now in ms)`), so a node restored from an older copy of
//! its store never reuses a number; it takes back from its hubs what it signed since the copy
//! (they hold it under its own signature) and re-signs it.
//!
//! Every change is acknowledged (its command's reply released) only once durable; only durable
//! entries are ever sent; a head is signed over the durable live set whenever it changes and at
//! least every `head_interval_ms` while the node is up.

use crate::directory::{DirectoryError, KeyStatus, Role, SignedDirectory, TrustedDirectory};
use crate::feed::{
    Applied, EntryBody, EntryKey, FeedEntry, FeedHead, LiveFeed, Removal, RemovalReason, SignedEntry, SignedHead,
    verify_entry, verify_head,
};
use crate::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use crate::machine::{Command, CommandId, DirectoryState, Event, Queues, Reply, RestoreError, Transmit, earliest};
use crate::records::{Contacts, LookupKind, Plan, PlanError, TextError, VISIBLE_AFTER_END_DAYS, check_text};
use crate::refusal::Refusal;
use crate::schema::{self, RowError, StoreOp};
use crate::sign::{Identity, KeyId, Signed};
use crate::time::{DAY_MS, Date, Timestamp};
use crate::wire::{BATCH_ENTRIES_MAX, FeedBatch, Mark, Message, Notification, Receipt, Refused};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Timings and windows of an authority; every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// How often the head is re-signed while nothing changes (hubs and settings judge freshness
    /// by it). Default 60 s.
    pub head_interval_ms: u64,
    /// How often plans past their visibility window are looked for and removed. Default 1 hour.
    pub sweep_interval_ms: u64,
    /// Notifications of lookups older than this are refused. Default 30 days.
    pub notification_age_max_days: u64,
    /// How far a lookup's time may be ahead of this node's clock. Default 5 minutes.
    pub clock_skew_max_ms: u64,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            head_interval_ms: 60_000,
            sweep_interval_ms: 3_600_000,
            notification_age_max_days: 30,
            clock_skew_max_ms: 300_000,
        }
    }
}

/// A notification as the authority keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    pub notification: Signed<Notification>,
    pub received_at: Timestamp,
}

/// A member of staff's acknowledgement of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub at: Timestamp,
    pub by: String,
    pub note: String,
}

/// Longest note on an acknowledgement, in bytes.
pub const NOTE_LEN_MAX: usize = 2_000;

/// The result of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Applied (and durable by the time it is reported).
    Applied,
    /// Nothing to change: the state already says this.
    Unchanged,
}

/// How one row of an import went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowOutcome {
    Applied,
    Unchanged,
    Refused(CommandError),
}

/// Per row of an import: its number and outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: Vec<(usize, RowOutcome)>,
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
    /// A text field breaks a rule.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A note is longer than [`NOTE_LEN_MAX`].
    #[error("the note is longer than {NOTE_LEN_MAX} bytes")]
    NoteTooLong,
    /// The node's own key is not an active key of this authority in the directory.
    #[error("this node's key {0} is not an active key of the authority in the directory")]
    KeyNotActive(KeyId),
    /// Plans and notifications are kept by authorities only.
    #[error("only an authority node keeps plans and notifications")]
    NotAnAuthority,
    /// A directory version was refused.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Work held until a write is durable.
pub(crate) enum After {
    /// The feed entry of this sequence (the oldest pending) became durable.
    Durable(u64),
    /// Boxed: an import holds one `Durable` per row until its write is durable.
    Send(Box<Transmit>),
    Event(Event),
}

/// What the authority knows of a notification without holding it in memory.
#[derive(Clone, Copy, Debug)]
struct InboxEntry {
    received_at: Timestamp,
    acknowledged: bool,
}

/// How often connected peers' keys are checked against the directory.
pub const ADMISSION_CHECK_INTERVAL_MS: u64 = 1_000;
/// Most entries of its own feed an authority takes back from a hub in one run.
pub const FEED_ENTRIES_MAX: usize = 1 << 20;

/// An authority's state machine.
pub struct Authority {
    code: OdsCode,
    identity: Identity,
    config: AuthorityConfig,
    dir: DirectoryState,
    /// The authority's own records, with every command applied (durable or not).
    plans: BTreeMap<PlanRef, Plan>,
    /// The references of `plans` by NHS number (a notification is checked against the plans for
    /// its child: a scan of every plan would cost each notification the whole register). Sorted
    /// vectors, as most children have one plan: a set per child would cost hundreds of bytes each.
    plans_by_nhs: BTreeMap<NhsNumber, Vec<PlanRef>>,
    contacts: Option<Contacts>,
    /// The published live set, durable entries only.
    feed: LiveFeed,
    /// Entries appended and not yet durable, oldest first.
    pending: VecDeque<SignedEntry>,
    /// The sequence of the newest pending entry of each key (an import of many plans looks
    /// each one up: a scan of `pending` would make it quadratic).
    pending_latest: HashMap<EntryKey, u64>,
    last_seq: u64,
    durable_seq: u64,
    head: Option<SignedHead>,
    inbox: BTreeMap<LookupId, InboxEntry>,
    hubs: BTreeMap<OdsCode, KeyId>,
    /// How far each hub holds our feed, as each home hub last told ([`Message::Held`]): the
    /// reporting hub, then the hubs it named.
    held: BTreeMap<OdsCode, BTreeMap<OdsCode, u64>>,
    /// From when each hub is asked to deliver again what it delivered (the newest notification
    /// held at the start, less the clock margin: after a restore from an older copy, what the
    /// copy lacks).
    redeliver_since: Timestamp,
    /// Hubs asked this start to deliver again what they delivered, a page at a time (true: every
    /// page came; one that left before the last is asked again from the start when it is back).
    redelivery: BTreeMap<OdsCode, bool>,
    /// Chunks of a run of our own feed a hub is sending back, until its head arrives.
    staging: BTreeMap<OdsCode, Vec<SignedEntry>>,
    next_head_at: Timestamp,
    next_sweep_at: Timestamp,
    next_admission_at: Timestamp,
    /// Until when every connected hub stays admitted, as the last check of them found (see
    /// [`crate::machine::DirectoryState::next_admission_change`]).
    admitted_until: Timestamp,
    pub(crate) out: Queues<After>,
}

impl Authority {
    /// The machine for `code`, restored from its rows (see [`crate::machine::Machine::restore`]).
    pub(crate) fn restore(
        code: OdsCode,
        identity: Identity,
        dir: DirectoryState,
        config: AuthorityConfig,
        rows: &mut schema::Rows,
        now: Timestamp,
    ) -> Result<Authority, RestoreError> {
        let mut a = Authority {
            code,
            identity,
            config,
            dir,
            plans: BTreeMap::new(),
            plans_by_nhs: BTreeMap::new(),
            contacts: None,
            feed: LiveFeed::new(),
            pending: VecDeque::new(),
            pending_latest: HashMap::new(),
            last_seq: 0,
            durable_seq: 0,
            head: None,
            inbox: BTreeMap::new(),
            hubs: BTreeMap::new(),
            held: BTreeMap::new(),
            redeliver_since: Timestamp(0),
            redelivery: BTreeMap::new(),
            staging: BTreeMap::new(),
            next_head_at: now,
            next_sweep_at: now,
            next_admission_at: now,
            admitted_until: now,
            out: Queues::new(),
        };
        a.restore_rows(rows)?;
        let newest = a.inbox.values().map(|e| e.received_at).max().unwrap_or(Timestamp(0));
        a.redeliver_since = newest.minus_ms(a.config.clock_skew_max_ms);
        if rows.store_was_empty() {
            a.out.write(vec![schema::schema_op()], vec![]);
        }
        // Entries under a key revoked while the node was down are re-signed first (their head
        // follows once they are durable).
        if !a.republish_revoked(now) {
            a.sign_head(now);
        }
        Ok(a)
    }

    fn restore_rows(&mut self, rows: &mut schema::Rows) -> Result<(), RowError> {
        let mismatch = |t: schema::Table| RowError::Mismatch(t.name());
        for row in schema::PLANS.take(rows) {
            let (reference, plan) = row?;
            if plan.reference != reference {
                return Err(mismatch(schema::Table::Plans));
            }
            self.put_plan(plan);
        }
        for row in schema::ENTRIES.take(rows) {
            let ((origin, seq), entry) = row?;
            if origin != self.code || entry.body.origin != origin || entry.body.seq != seq {
                return Err(mismatch(schema::Table::Entries));
            }
            if let EntryBody::Contacts(c) = &entry.body.body {
                self.contacts = Some((**c).clone());
            }
            self.last_seq = self.last_seq.max(seq);
            self.feed.apply(entry);
        }
        for row in schema::MARKS.read(rows) {
            let (origin, seq) = row?;
            if origin == self.code {
                self.last_seq = self.last_seq.max(seq);
            }
        }
        self.durable_seq = self.last_seq;
        for row in schema::HEADS.read(rows) {
            let (origin, head) = row?;
            // The head is written after its entries: it may lag them, never disagree with them.
            if origin == self.code && head.body.seq == self.durable_seq && !self.feed.matches(&head.body) {
                return Err(RowError::Inconsistent {
                    table: schema::Table::Heads.name(),
                    problem: "the stored head does not match the stored feed",
                });
            }
        }
        for row in schema::INBOX.take(rows) {
            let (id, item) = row?;
            if item.notification.body.event.body.lookup_id != id {
                return Err(mismatch(schema::Table::Inbox));
            }
            self.inbox.insert(id, InboxEntry { received_at: item.received_at, acknowledged: false });
        }
        for row in schema::INBOX_ACKS.read(rows) {
            let (id, _) = row?;
            let entry = self.inbox.get_mut(&id).ok_or(mismatch(schema::Table::InboxAcks))?;
            entry.acknowledged = true;
        }
        Ok(())
    }

    pub fn code(&self) -> &OdsCode {
        &self.code
    }
    pub fn directory(&self) -> &TrustedDirectory {
        &self.dir.trusted
    }
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }
    /// Highest sequence of the feed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    /// The newest head signed.
    pub fn head(&self) -> Option<&SignedHead> {
        self.head.as_ref()
    }
    /// The key this node signs with.
    pub fn key_id(&self) -> KeyId {
        self.identity.key_id()
    }

    /// Every plan the authority holds, by reference.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }

    pub fn plan(&self, reference: &PlanRef) -> Option<&Plan> {
        self.plans.get(reference)
    }

    /// The published live feed (durable entries).
    pub fn feed(&self) -> &LiveFeed {
        &self.feed
    }

    pub fn contacts(&self) -> Option<&Contacts> {
        self.contacts.as_ref()
    }

    /// Notifications held: how many, and how many not yet acknowledged.
    pub fn inbox_counts(&self) -> (usize, usize) {
        (self.inbox.len(), self.inbox.values().filter(|e| !e.acknowledged).count())
    }

    /// When the oldest notification not yet acknowledged arrived.
    pub fn oldest_unacknowledged(&self) -> Option<Timestamp> {
        self.inbox.values().filter(|e| !e.acknowledged).map(|e| e.received_at).min()
    }

    /// Lookup ids of every notification held (their bodies are in the store only).
    pub fn inbox_ids(&self) -> impl Iterator<Item = &LookupId> {
        self.inbox.keys()
    }

    /// When each notification arrived, and whether it is acknowledged.
    pub fn inbox_state(&self, id: &LookupId) -> Option<(Timestamp, bool)> {
        self.inbox.get(id).map(|e| (e.received_at, e.acknowledged))
    }

    /// The sequence of the newest durable entry of a plan (its latest version, or its removal):
    /// what a hub must hold to show the plan as it now is.
    pub fn plan_seq(&self, reference: &PlanRef) -> Option<u64> {
        self.feed.latest(&EntryKey::Plan(reference.clone())).map(|e| e.body.seq)
    }

    /// How far every hub of the directory holds this authority's feed, as its home hubs last
    /// reported (a hub's word on itself first, else the furthest another hub saw it at); `None`
    /// for a hub no report has named. Hubs' unsigned word: for the council to see whether its
    /// changes have spread, never for a decision.
    pub fn held_by_hubs(&self) -> Vec<(OdsCode, Option<u64>)> {
        self.dir
            .trusted
            .with_role(Role::Hub)
            .map(|hub| {
                let own = self.held.get(&hub.code).and_then(|r| r.get(&hub.code)).copied();
                let seen = self.held.values().filter_map(|r| r.get(&hub.code)).max().copied();
                (hub.code.clone(), own.or(seen))
            })
            .collect()
    }

    /// Hubs currently connected.
    pub fn connected_hubs(&self) -> impl Iterator<Item = &OdsCode> {
        self.hubs.keys()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        let admission = (!self.hubs.is_empty()).then_some(self.next_admission_at);
        earliest([Some(self.next_head_at), Some(self.next_sweep_at), admission])
    }

    // ---- Commands ----

    pub(crate) fn handle_command(&mut self, id: CommandId, command: Command, now: Timestamp) {
        let result = match command {
            Command::PublishDirectories(chain) => return self.publish_directories(id, chain, now),
            Command::ImportPlans(rows) => return self.import(id, rows, now),
            Command::RecordPlan(plan) => self.change(now, |a, ops, after| a.record(plan, now, ops, after)),
            Command::EndPlan { reference, end } => self.change(now, |a, ops, after| {
                let mut plan = a.plans.get(&reference).cloned().ok_or(CommandError::UnknownPlan(reference))?;
                plan.end = Some(end);
                a.record(plan, now, ops, after)
            }),
            Command::WithdrawPlan(reference) => self.change(now, |a, ops, after| {
                let mut plan = a.plans.get(&reference).cloned().ok_or(CommandError::UnknownPlan(reference))?;
                plan.withdrawn = true;
                a.record(plan, now, ops, after)
            }),
            Command::SetContacts(contacts) => {
                self.change(now, |a, ops, after| a.set_contacts(contacts, now, ops, after))
            }
            Command::Acknowledge { lookup_id, by, note } => self.acknowledge(lookup_id, &by, note, now),
        };
        self.reply(id, result.map_or_else(Reply::Refused, Reply::Changed));
    }

    /// Runs one change, writing whatever it produced in one batch.
    fn change(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Self, &mut Vec<StoreOp>, &mut Vec<After>) -> Result<Change, CommandError>,
    ) -> Result<Change, CommandError> {
        self.check_own_key(now)?;
        let (mut ops, mut after) = (Vec::new(), Vec::new());
        let change = f(self, &mut ops, &mut after)?;
        if !ops.is_empty() {
            self.out.write(ops, after);
        }
        Ok(change)
    }

    /// Releases a reply once every write handed out so far is durable.
    fn reply(&mut self, id: CommandId, reply: Reply) {
        let event = After::Event(Event::Replied { command: id, reply });
        if let Some(After::Event(e)) = self.out.after_pending(event) {
            self.out.event(e);
        }
    }

    fn publish_directories(&mut self, id: CommandId, chain: Vec<SignedDirectory>, now: Timestamp) {
        let reply = match self.accept_directories(chain, now) {
            Ok(version) => Reply::Directory { version },
            Err(e) => {
                if matches!(e, DirectoryError::Forked { .. }) {
                    self.out.event(Event::DirectoryRefused { from: None, reason: e.clone() });
                }
                Reply::Refused(e.into())
            }
        };
        self.reply(id, reply);
    }

    fn import(&mut self, id: CommandId, rows: Vec<(usize, Plan)>, now: Timestamp) {
        let mut report = ImportReport::default();
        if let Err(e) = self.check_own_key(now) {
            report.rows = rows.into_iter().map(|(row, _)| (row, RowOutcome::Refused(e.clone()))).collect();
            return self.reply(id, Reply::Imported(report));
        }
        let (mut ops, mut after) = (Vec::new(), Vec::new());
        for (row, plan) in rows {
            let outcome = match self.record(plan, now, &mut ops, &mut after) {
                Ok(Change::Applied) => RowOutcome::Applied,
                Ok(Change::Unchanged) => RowOutcome::Unchanged,
                Err(e) => RowOutcome::Refused(e),
            };
            report.rows.push((row, outcome));
        }
        if !ops.is_empty() {
            self.out.write(ops, after);
        }
        self.reply(id, Reply::Imported(report));
    }

    /// Records a new plan or a new state of one, and publishes what changed.
    fn record(
        &mut self,
        plan: Plan,
        now: Timestamp,
        ops: &mut Vec<StoreOp>,
        after: &mut Vec<After>,
    ) -> Result<Change, CommandError> {
        // Dates are judged against today when they are new: a plan stored long ago can still be
        // ended or withdrawn, and an unchanged row of a nightly export stays unchanged.
        let stored = self.plans.get(&plan.reference);
        if stored.is_none_or(|s| s.start != plan.start || s.due != plan.due) {
            plan.check_recorded_on(now.date())?;
        } else {
            plan.check()?;
        }
        if stored == Some(&plan) {
            return Ok(Change::Unchanged);
        }
        ops.push(schema::PLANS.put(&plan.reference, &plan));
        let reference = plan.reference.clone();
        self.put_plan(plan);
        self.publish(&reference, now, ops, after);
        Ok(Change::Applied)
    }

    fn set_contacts(
        &mut self,
        contacts: Contacts,
        now: Timestamp,
        ops: &mut Vec<StoreOp>,
        after: &mut Vec<After>,
    ) -> Result<Change, CommandError> {
        contacts.check()?;
        if self.contacts.as_ref() == Some(&contacts) {
            return Ok(Change::Unchanged);
        }
        self.contacts = Some(contacts.clone());
        self.append(EntryBody::Contacts(Box::new(contacts)), now, ops, after);
        Ok(Change::Applied)
    }

    fn acknowledge(
        &mut self,
        lookup_id: LookupId,
        by: &str,
        note: String,
        now: Timestamp,
    ) -> Result<Change, CommandError> {
        check_text("acknowledged by", by)?;
        if note.len() > NOTE_LEN_MAX {
            return Err(CommandError::NoteTooLong);
        }
        let entry = self.inbox.get_mut(&lookup_id).ok_or(CommandError::UnknownNotification(lookup_id))?;
        if entry.acknowledged {
            return Ok(Change::Unchanged);
        }
        entry.acknowledged = true;
        let ack = Acknowledgement { at: now, by: by.to_string(), note };
        self.out.write(vec![schema::INBOX_ACKS.put(&lookup_id, &ack)], vec![]);
        Ok(Change::Applied)
    }

    /// What the feed should say of a plan today.
    fn desired(plan: &Plan, today: Date) -> EntryBody {
        let removed = |reason| EntryBody::Removed(Removal { reference: plan.reference.clone(), reason });
        if plan.withdrawn {
            removed(RemovalReason::Withdrawn)
        } else if !plan.visible_on(today) {
            removed(RemovalReason::PastVisibility)
        } else {
            EntryBody::Plan(plan.clone())
        }
    }

    /// The newest entry of `key`, pending or durable.
    fn published(&self, key: &EntryKey) -> Option<&SignedEntry> {
        let pending = self.pending_latest.get(key).and_then(|seq| {
            let i = self.pending.binary_search_by_key(seq, |e| e.body.seq).ok()?;
            self.pending.get(i)
        });
        pending.or_else(|| self.feed.latest(key))
    }

    /// Appends the entry the plan's record calls for, if the feed does not say it already.
    fn publish(&mut self, reference: &PlanRef, now: Timestamp, ops: &mut Vec<StoreOp>, after: &mut Vec<After>) {
        let Some(plan) = self.plans.get(reference) else { return };
        let desired = Authority::desired(plan, now.date());
        let key = EntryKey::Plan(reference.clone());
        let same = match (self.published(&key).map(|e| &e.body.body), &desired) {
            (None, EntryBody::Removed(_)) => true,
            (Some(EntryBody::Removed(_)), EntryBody::Removed(_)) => true,
            (Some(current), wanted) => current == wanted,
            (None, _) => false,
        };
        if !same {
            self.append(desired, now, ops, after);
        }
    }

    /// Signs `body` as the next entry; it becomes part of the live feed once durable.
    fn append(&mut self, body: EntryBody, now: Timestamp, ops: &mut Vec<StoreOp>, after: &mut Vec<After>) {
        // Numbered by the clock: a node restored from an older copy never reuses a number.
        let seq = self.last_seq.saturating_add(1).max(now.as_millis());
        let entry = self.identity.sign(FeedEntry { origin: self.code.clone(), seq, at: now, body });
        if let Some(old) = self.published(&entry.body.key()) {
            ops.push(schema::ENTRIES.delete(&(self.code.clone(), old.body.seq)));
        }
        ops.push(schema::ENTRIES.put(&(self.code.clone(), seq), &entry));
        ops.push(schema::MARKS.put(&self.code, &seq));
        self.last_seq = seq;
        self.pending_latest.insert(entry.body.key(), seq);
        self.pending.push_back(entry);
        after.push(After::Durable(seq));
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

    /// Signs a head over the durable live set (if our key may sign), and stores it.
    fn sign_head(&mut self, now: Timestamp) {
        self.next_head_at = now.plus_ms(self.config.head_interval_ms);
        if self.check_own_key(now).is_err() {
            return;
        }
        let (plans_root, children, contacts) = self.feed.commitment();
        let head = self.identity.sign(FeedHead {
            origin: self.code.clone(),
            seq: self.durable_seq,
            at: now,
            plans_root,
            children,
            contacts,
        });
        self.out.write(vec![schema::HEADS.put(&self.code, &head)], vec![]);
        self.head = Some(head);
    }

    fn mark(&self) -> Mark {
        let head_at = self.head.as_ref().map_or(Timestamp(0), |h| h.body.at);
        Mark { origin: self.code.clone(), seq: self.durable_seq, head_at }
    }

    // ---- Peers and time ----

    pub(crate) fn handle_connected(&mut self, hub: &OdsCode, key: KeyId, now: Timestamp) {
        match self.dir.admits(hub, key, now) {
            Ok(Role::Hub) => {}
            Ok(role) => {
                let reason = crate::directory::AdmissionError::WrongRole { code: hub.clone(), actual: role.name() };
                return self.out.event(Event::PeerNotAdmitted { peer: hub.clone(), reason });
            }
            Err(reason) => return self.out.event(Event::PeerNotAdmitted { peer: hub.clone(), reason }),
        }
        self.hubs.insert(hub.clone(), key);
        let marks = vec![self.mark()];
        self.out.send(hub, Message::Sync { directory_version: self.dir.version(), marks });
    }

    pub(crate) fn handle_disconnected(&mut self, hub: &OdsCode) {
        self.hubs.remove(hub);
        self.staging.remove(hub);
        // Pages not all come yet: asked again, from the start, when it is back.
        if self.redelivery.get(hub) == Some(&false) {
            self.redelivery.remove(hub);
        }
        // Its report would go stale: the other home hubs' word on it stands meanwhile.
        self.held.remove(hub);
    }

    pub(crate) fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.next_admission_at {
            self.next_admission_at = now.plus_ms(ADMISSION_CHECK_INTERVAL_MS);
            if now >= self.admitted_until {
                self.check_admissions(now);
            }
        }
        if now >= self.next_sweep_at {
            self.next_sweep_at = now.plus_ms(self.config.sweep_interval_ms);
            self.sweep(now);
        }
        if now >= self.next_head_at {
            self.sign_head(now);
            if let Some(head) = self.head.clone() {
                for hub in self.hubs.keys() {
                    self.out.transmits.push_back(Transmit { to: hub.clone(), message: Message::Head(head.clone()) });
                }
            }
        }
    }

    fn check_admissions(&mut self, now: Timestamp) {
        self.admitted_until = self.dir.next_admission_change(now).unwrap_or(Timestamp(u64::MAX));
        let refused: Vec<(OdsCode, crate::directory::AdmissionError)> =
            self.hubs.iter().filter_map(|(h, k)| self.dir.admits(h, *k, now).err().map(|e| (h.clone(), e))).collect();
        for (peer, reason) in refused {
            self.handle_disconnected(&peer);
            self.out.event(Event::PeerNotAdmitted { peer, reason });
        }
    }

    /// Removes, from the feed, plans whose visibility window has passed.
    fn sweep(&mut self, now: Timestamp) {
        if self.check_own_key(now).is_err() {
            return;
        }
        let today = now.date();
        let due: Vec<PlanRef> = self
            .feed
            .entries()
            .filter_map(|e| match &e.body.body {
                EntryBody::Plan(p) if !p.visible_on(today) => Some(p.reference.clone()),
                _ => None,
            })
            .collect();
        let (mut ops, mut after) = (Vec::new(), Vec::new());
        for reference in due {
            self.publish(&reference, now, &mut ops, &mut after);
        }
        if !ops.is_empty() {
            self.out.write(ops, after);
        }
    }

    // ---- Messages ----

    pub(crate) fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
        if !self.hubs.contains_key(from) {
            return self.refuse(from, message.kind(), Refusal::NotConnected);
        }
        let kind = message.kind();
        match message {
            Message::Sync { directory_version, marks } => self.on_sync(from, directory_version, &marks),
            Message::Directories(chain) => {
                if let Err(reason) = self.accept_directories(chain, now) {
                    self.out.event(Event::DirectoryRefused { from: Some(from.clone()), reason });
                }
            }
            Message::Feed(batch) => self.on_own_feed(from, batch, now),
            Message::Notify(n) => self.on_notify(from, n, now),
            Message::Redelivered { notification, receipt } => self.on_redelivered(from, *notification, receipt),
            Message::RedeliverPage { next } => self.on_redeliver_page(from, next),
            Message::Held { hubs } => {
                let dir = &self.dir.trusted;
                let named = hubs.into_iter().filter(|h| dir.member(&h.hub).is_some_and(|m| m.role == Role::Hub));
                let report = named.map(|h| (h.hub, h.seq)).collect();
                self.held.insert(from.clone(), report);
            }
            Message::Refused(_) => {}
            _ => self.refuse(from, kind, Refusal::NotAllowed { sender: "hub", kind, receiver: "authority" }),
        }
    }

    /// A directory chain from the operator or a peer.
    fn accept_directories(&mut self, chain: Vec<SignedDirectory>, now: Timestamp) -> Result<u64, DirectoryError> {
        let ops = self.dir.accept(chain, now)?;
        if !ops.is_empty() {
            self.out.write(ops, vec![After::Event(Event::DirectoryUpdated { version: self.dir.version() })]);
            let _ = self.republish_revoked(now);
            self.check_admissions(now);
            // Tell the hubs the version we now hold.
            let hubs: Vec<OdsCode> = self.hubs.keys().cloned().collect();
            for hub in hubs {
                self.out.send(&hub, Message::Sync { directory_version: self.dir.version(), marks: vec![self.mark()] });
            }
        }
        Ok(self.dir.version())
    }

    fn on_sync(&mut self, hub: &OdsCode, directory_version: u64, marks: &[Mark]) {
        if directory_version < self.dir.version() {
            self.out.send(hub, Message::Directories(self.dir.after(directory_version)));
        }
        let theirs = marks.iter().find(|m| m.origin == self.code).map_or(0, |m| m.seq);
        if theirs <= self.durable_seq {
            // Nothing of our own feed to take back from this hub first.
            self.ask_redelivery(hub);
        }
        match theirs.cmp(&self.durable_seq) {
            std::cmp::Ordering::Less => self.push_from(hub, theirs),
            // The hub holds more of our feed than we do: ask it for all of it (it must come
            // under our own signature; a claim alone changes nothing).
            std::cmp::Ordering::Greater => {
                let marks = vec![Mark { origin: self.code.clone(), seq: 0, head_at: Timestamp(0) }];
                self.out.send(hub, Message::Sync { directory_version: self.dir.version(), marks });
            }
            std::cmp::Ordering::Equal => {
                let newer = marks
                    .iter()
                    .find(|m| m.origin == self.code)
                    .is_none_or(|m| self.head.as_ref().is_some_and(|h| h.body.at > m.head_at));
                if let Some(head) = self.head.clone().filter(|_| newer) {
                    self.out.send(hub, Message::Head(head));
                }
            }
        }
    }

    /// Asks `hub`, once per start, to send again what it delivered since the newest notification
    /// we held at the start (after a restore from an older copy, what the copy lacks). Asked of
    /// every hub, as what reaches us from one first must not hide what only another delivered;
    /// and only once our own feed is taken back from it, so that a notification naming a plan
    /// recorded after the copy finds that plan here.
    fn ask_redelivery(&mut self, hub: &OdsCode) {
        if !self.redelivery.contains_key(hub) {
            self.redelivery.insert(hub.clone(), false);
            self.out.send(hub, Message::Redeliver { since: self.redeliver_since, from: LookupId([0; 16]) });
        }
    }

    /// A page of redelivered notifications has come from `hub`: ask for the next, if any.
    fn on_redeliver_page(&mut self, hub: &OdsCode, next: Option<(Timestamp, LookupId)>) {
        if self.redelivery.get(hub) != Some(&false) {
            return; // Not asked of it this start, or every page came already.
        }
        match next {
            Some((since, from)) => self.out.send(hub, Message::Redeliver { since, from }),
            None => {
                self.redelivery.insert(hub.clone(), true);
            }
        }
    }

    /// Sends `hub` every live, durable entry after `seq`, in batches, the head on the last.
    fn push_from(&mut self, hub: &OdsCode, seq: u64) {
        let Some(head) = self.head.clone().filter(|h| h.body.seq == self.durable_seq) else { return };
        let live = self.feed.entries_after(seq).cloned();
        for batch in run_batches(&self.code, seq, live, head) {
            self.out.send(hub, Message::Feed(batch));
        }
    }

    /// A hub sends back our own feed (we were restored from an older copy): take back, under our
    /// own signature and head, what we lack, and re-sign it as new entries.
    fn on_own_feed(&mut self, hub: &OdsCode, batch: FeedBatch, now: Timestamp) {
        if batch.origin != self.code || batch.after != 0 {
            let reason = Refusal::NotAllowed { sender: "hub", kind: "feed of another origin", receiver: "authority" };
            return self.refuse(hub, "feed", reason);
        }
        let staged = self.staging.entry(hub.clone()).or_default();
        if staged.len() + batch.entries.len() > FEED_ENTRIES_MAX {
            self.staging.remove(hub);
            return self.refuse(hub, "feed", Refusal::RunTooLong(FEED_ENTRIES_MAX));
        }
        staged.extend(batch.entries);
        let Some(head) = batch.head else { return };
        let entries = self.staging.remove(hub).unwrap_or_default();
        match self.check_own_run(entries, head, batch.upto) {
            Ok(held) => self.take_back(hub, held, now),
            Err(reason) => self.refuse(hub, "feed", reason),
        }
    }

    /// Checks a run of our own feed against our own head; returns the live set it holds.
    fn check_own_run(&self, entries: Vec<SignedEntry>, head: SignedHead, upto: u64) -> Result<LiveFeed, Refusal> {
        let head = verify_head(&self.dir.trusted, head)
            .map_err(|source| Refusal::Head { origin: self.code.clone(), source })?;
        if head.body().origin != self.code || head.body().seq != upto {
            return Err(Refusal::HeadNotAtUpto { head_seq: head.body().seq, upto });
        }
        let mut held = LiveFeed::new();
        for e in entries {
            if e.body.origin != self.code || e.body.seq > upto {
                return Err(Refusal::EntryOrder { seq: e.body.seq });
            }
            held.apply(verify_entry(&self.dir.trusted, e)?.into_signed());
        }
        if !held.matches(head.body()) {
            return Err(Refusal::HeadMismatch { origin: self.code.clone(), seq: upto });
        }
        Ok(held)
    }

    /// Re-signs, as new entries, what a hub holds of our feed that is newer than what we hold.
    fn take_back(&mut self, hub: &OdsCode, held: LiveFeed, now: Timestamp) {
        if self.check_own_key(now).is_err() {
            return;
        }
        let newer: Vec<SignedEntry> = held
            .entries()
            .filter(|e| self.published(&e.body.key()).is_none_or(|mine| mine.body.seq < e.body.seq))
            .cloned()
            .collect();
        // Never number a new entry at or below one we signed before the copy was taken.
        self.last_seq = self.last_seq.max(held.entries().next_back().map_or(0, |e| e.body.seq));
        let (mut ops, mut after) = (Vec::new(), Vec::new());
        for e in &newer {
            match &e.body.body {
                EntryBody::Plan(p) => {
                    self.put_plan(p.clone());
                    ops.push(schema::PLANS.put(&p.reference, p));
                }
                // A plan both made and removed after the copy is not known here: only its removal
                // is published again (the hubs hold it, and it stays theirs until it expires).
                EntryBody::Removed(r) => {
                    if let Some(mut plan) = self.plans.get(&r.reference).cloned() {
                        let removed_on = e.body.at.date();
                        match r.reason {
                            RemovalReason::Withdrawn => plan.withdrawn = true,
                            // Ended after the copy: the removal does not say on which day, only
                            // that the plan was past its visibility by then. The latest end that
                            // agrees keeps it from being published as open again.
                            RemovalReason::PastVisibility if plan.visible_on(removed_on) => {
                                plan.end = Some(removed_on.plus_days(-VISIBLE_AFTER_END_DAYS - 1));
                            }
                            RemovalReason::PastVisibility => {}
                        }
                        ops.push(schema::PLANS.put(&plan.reference, &plan));
                        self.put_plan(plan);
                    }
                }
                EntryBody::Contacts(c) => self.contacts = Some((**c).clone()),
                EntryBody::Visit(_) => continue,
            }
            self.append(e.body.body.clone(), now, &mut ops, &mut after);
        }
        if !newer.is_empty() {
            after.push(After::Event(Event::FeedRecovered { hub: hub.clone(), entries: newer.len() }));
            self.out.write(ops, after);
        }
        self.ask_redelivery(hub);
    }

    fn on_notify(&mut self, from: &OdsCode, signed: Signed<Notification>, now: Timestamp) {
        let lookup_id = signed.body.event.body.lookup_id;
        if let Err(reason) = self.check_notification(&signed, now) {
            self.out.send(from, Message::Refused(Refused { lookup_id: Some(lookup_id), code: reason.code() }));
            return self.refuse(from, "notify", reason);
        }
        if let Some(entry) = self.inbox.get(&lookup_id) {
            // A retry: answer with a receipt, but only once the first copy's write (and every
            // write before it) is durable.
            let receipt = self.receipt(&signed.body, entry.received_at);
            let send = After::Send(Box::new(Transmit { to: from.clone(), message: Message::Receipt(receipt) }));
            if let Some(After::Send(t)) = self.out.after_pending(send) {
                self.out.transmits.push_back(*t);
            }
            return;
        }
        let hub = signed.body.hub.clone();
        let receipt = self.receipt(&signed.body, now);
        let item = InboxItem { notification: signed, received_at: now };
        self.inbox.insert(lookup_id, InboxEntry { received_at: now, acknowledged: false });
        let after = vec![
            After::Send(Box::new(Transmit { to: from.clone(), message: Message::Receipt(receipt) })),
            After::Event(Event::NotificationReceived { lookup_id, hub }),
        ];
        self.out.write(vec![schema::INBOX.put(&lookup_id, &item)], after);
    }

    /// A notification a hub delivered to us before, sent again with our own receipt for it (we
    /// asked: we may have been restored from an older copy). Our signature on the receipt shows
    /// we took it then, so it is not judged again against plans we may no longer hold; it is
    /// stored as received when the receipt says.
    fn on_redelivered(&mut self, from: &OdsCode, signed: Signed<Notification>, receipt: Signed<Receipt>) {
        let lookup_id = signed.body.event.body.lookup_id;
        if let Err(reason) = self.check_redelivered(&signed, &receipt) {
            self.out.send(from, Message::Refused(Refused { lookup_id: Some(lookup_id), code: reason.code() }));
            return self.refuse(from, "redelivered", reason);
        }
        if self.inbox.contains_key(&lookup_id) {
            return;
        }
        let (hub, received_at) = (signed.body.hub.clone(), receipt.body.stored_at);
        let item = InboxItem { notification: signed, received_at };
        self.inbox.insert(lookup_id, InboxEntry { received_at, acknowledged: false });
        let after = vec![After::Event(Event::NotificationReceived { lookup_id, hub })];
        self.out.write(vec![schema::INBOX.put(&lookup_id, &item)], after);
    }

    fn check_redelivered(&self, signed: &Signed<Notification>, receipt: &Signed<Receipt>) -> Result<(), Refusal> {
        let (n, r) = (&signed.body, &receipt.body);
        if n.authority != self.code || r.authority != self.code {
            return Err(Refusal::WrongAuthority(n.authority.clone()));
        }
        if r.lookup_id != n.event.body.lookup_id || r.hub != n.hub {
            return Err(Refusal::ReceiptMismatch);
        }
        let dir = &self.dir.trusted;
        dir.verify_at(receipt.clone(), &self.code, Role::Authority, r.stored_at)?;
        dir.verify_at(signed.clone(), &n.hub, Role::Hub, n.signed_at)?;
        dir.verify_at(n.event.clone(), &n.event.body.setting, Role::Setting, n.event.body.at)?;
        Ok(())
    }

    /// A notification is taken only if it is for us, signed by the hub that answered and the
    /// setting that looked, of an unscheduled lookup within the age window, and the plans it
    /// names are our own plans for that child, in their window on the day of the lookup.
    fn check_notification(&self, signed: &Signed<Notification>, now: Timestamp) -> Result<(), Refusal> {
        let n = &signed.body;
        let e = &n.event.body;
        if n.authority != self.code {
            return Err(Refusal::WrongAuthority(n.authority.clone()));
        }
        let dir = &self.dir.trusted;
        dir.verify_at(signed.clone(), &n.hub, Role::Hub, n.signed_at)?;
        dir.verify_at(n.event.clone(), &e.setting, Role::Setting, e.at)?;
        let kind = dir.member(&e.setting).and_then(|m| m.setting_type).map(|t| t.lookup_kind());
        if kind != Some(LookupKind::Unscheduled) {
            return Err(Refusal::Scheduled);
        }
        let days = self.config.notification_age_max_days;
        if now.since(e.at) > days.saturating_mul(DAY_MS) || e.at.since(now) > self.config.clock_skew_max_ms {
            return Err(Refusal::TooOld { at: e.at, days });
        }
        let ours = self.plans_in_window(e.nhs, e.at);
        if ours.is_empty() {
            return Err(Refusal::NoMatchingPlan);
        }
        if n.matched.is_empty() || !n.matched.iter().all(|r| ours.contains(&r)) {
            return Err(Refusal::MatchesDiffer);
        }
        Ok(())
    }

    /// Records a plan (new or changed), keeping the index by NHS number in step.
    fn put_plan(&mut self, plan: Plan) {
        if let Some(old) = self.plans.get(&plan.reference).filter(|old| old.nhs != plan.nhs) {
            let old_nhs = old.nhs;
            if let Some(refs) = self.plans_by_nhs.get_mut(&old_nhs) {
                refs.retain(|r| *r != plan.reference);
                if refs.is_empty() {
                    self.plans_by_nhs.remove(&old_nhs);
                }
            }
        }
        let refs = self.plans_by_nhs.entry(plan.nhs).or_default();
        if let Err(at) = refs.binary_search(&plan.reference) {
            refs.insert(at, plan.reference.clone());
        }
        self.plans.insert(plan.reference.clone(), plan);
    }

    /// Our plans for `nhs` that a hub may have shown at `at`. A hub shows the version of a plan
    /// it holds, which may be older than ours (it was cut off from us, or had not yet taken the
    /// change), so an end or a withdrawal recorded since, even with an earlier date, does not
    /// undo a lookup that happened; an unborn child's plan is still bounded by its due date.
    fn plans_in_window(&self, nhs: NhsNumber, at: Timestamp) -> Vec<&PlanRef> {
        let skew = self.config.clock_skew_max_ms;
        let days = [at.minus_ms(skew).date(), at.date(), at.plus_ms(skew).date()];
        self.plans_by_nhs
            .get(&nhs)
            .into_iter()
            .flatten()
            .filter_map(|reference| self.plans.get(reference))
            .filter(|p| {
                let as_published_before = Plan { withdrawn: false, end: None, ..(*p).clone() };
                days.iter().any(|d| as_published_before.visible_on(*d))
            })
            .map(|p| &p.reference)
            .collect()
    }

    fn receipt(&self, n: &Notification, stored_at: Timestamp) -> Signed<Receipt> {
        self.identity.sign(Receipt {
            lookup_id: n.event.body.lookup_id,
            authority: self.code.clone(),
            hub: n.hub.clone(),
            stored_at,
        })
    }

    /// Re-signs, as new entries, every live entry whose key is now revoked. Whether it wrote any.
    fn republish_revoked(&mut self, now: Timestamp) -> bool {
        if self.check_own_key(now).is_err() {
            // Nothing can be re-signed until the node runs on an active key.
            return false;
        }
        let Some(me) = self.dir.trusted.member(&self.code).cloned() else { return false };
        let revoked: Vec<EntryBody> = self
            .feed
            .entries()
            .chain(self.pending.iter())
            .filter(|e| me.key(e.key_id).is_none_or(|k| matches!(k.status, KeyStatus::Revoked { .. })))
            .map(|e| e.body.body.clone())
            .collect();
        let (mut ops, mut after) = (Vec::new(), Vec::new());
        for body in revoked {
            self.append(body, now, &mut ops, &mut after);
        }
        if !ops.is_empty() {
            self.out.write(ops, after);
            return true;
        }
        if self.head.as_ref().is_some_and(|h| me.key(h.key_id).is_none_or(|k| k.status != KeyStatus::Active)) {
            // Nothing to re-sign, but the head itself must be under an active key.
            self.sign_head(now);
        }
        false
    }

    fn refuse(&mut self, from: &OdsCode, kind: &'static str, reason: Refusal) {
        self.out.event(Event::MessageRefused { from: from.clone(), kind, reason });
    }

    pub(crate) fn handle_durable(&mut self, write_id: u64, now: Timestamp) {
        let before = self.durable_seq;
        let mut fresh = Vec::new();
        for action in self.out.durable(write_id) {
            match action {
                After::Durable(seq) => {
                    let Some(entry) = self.pending.pop_front().filter(|e| e.body.seq == seq) else {
                        panic!("entries become durable in order: {seq} was not the oldest pending");
                    };
                    let key = entry.body.key();
                    if self.pending_latest.get(&key) == Some(&entry.body.seq) {
                        self.pending_latest.remove(&key);
                    }
                    self.durable_seq = self.durable_seq.max(entry.body.seq);
                    if matches!(self.feed.apply(entry), Applied::New { .. }) {
                        fresh.push(seq);
                    }
                }
                After::Send(t) => self.out.transmits.push_back(*t),
                After::Event(e) => self.out.event(e),
            }
        }
        if fresh.is_empty() {
            return;
        }
        self.sign_head(now);
        let Some(head) = self.head.clone() else { return };
        // Cloned from the feed batch by batch, for each hub: a long import is not held again whole.
        for hub in self.hubs.keys() {
            let live = fresh.iter().filter_map(|s| self.feed.at(*s).cloned());
            for batch in run_batches(&self.code, before, live, head.clone()) {
                self.out.transmits.push_back(Transmit { to: hub.clone(), message: Message::Feed(batch) });
            }
        }
    }
}

/// A run of `origin`'s live entries after `after` cut into batches, the head on the last.
/// `live` is taken entry by entry: given the replica's entries cloned one at a time, a long run is
/// held once, in its batches.
pub(crate) fn run_batches(
    origin: &OdsCode,
    after: u64,
    live: impl IntoIterator<Item = SignedEntry>,
    head: SignedHead,
) -> Vec<FeedBatch> {
    let upto = head.body.seq;
    let mut live = live.into_iter().peekable();
    let mut batches: Vec<FeedBatch> = Vec::new();
    while live.peek().is_some() {
        let entries = live.by_ref().take(BATCH_ENTRIES_MAX).collect();
        batches.push(FeedBatch { origin: origin.clone(), after, upto, entries, head: None, more: false });
    }
    match batches.last_mut() {
        Some(last) => last.head = Some(head),
        None => batches.push(FeedBatch {
            origin: origin.clone(),
            after,
            upto,
            entries: vec![],
            head: Some(head),
            more: false,
        }),
    }
    batches
}
