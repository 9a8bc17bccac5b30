//! The one contract between the protocol and its drivers: [`Machine`], a node of any role.
//!
//! Inputs go in through `handle_*`, outputs come out through `poll_*`; see the crate's top doc
//! for the call sequence every driver follows. The node's event loop, the test harness and the
//! simulator all drive this type, restored from stored rows by [`Machine::restore`].

use crate::authority::{Authority, AuthorityConfig, Change, CommandError, ImportReport};
use crate::codec;
use crate::directory::{AdmissionError, DirectoryError, Role, SignedDirectory, TrustedDirectory};
use crate::feed::FeedHead;
use crate::hub::{Hub, HubConfig};
use crate::ids::{LookupId, OdsCode, PlanRef};
use crate::records::{AccessEvent, Contacts, LookupKind, Plan};
use crate::refusal::Refusal;
use crate::schema::{self, RowError, StoreOp, StoredRow, WriteBatch};
use crate::sign::{Identity, KeyId, Verified};
use crate::time::{Date, Timestamp};
use crate::wire::{DIRECTORY_CHAIN_MAX, FRAME_BYTES_MAX, Message, VerifiedBatch};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// A message for the driver to send to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: OdsCode,
    pub message: Message,
}

/// Names a command so that its reply can find its way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

/// What an operator (or a council's system) asks of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Newer directory versions, oldest first (any role).
    PublishDirectories(Vec<SignedDirectory>),
    /// Record a new plan, or a new state of one (same reference). Authority only.
    RecordPlan(Plan),
    /// End a plan on a date. Authority only.
    EndPlan { reference: PlanRef, end: Date },
    /// Withdraw a plan entered in error. Authority only.
    WithdrawPlan(PlanRef),
    /// Set the contacts shown to clinicians. Authority only.
    SetContacts(Contacts),
    /// A member of staff has read a notification. Authority only.
    Acknowledge { lookup_id: LookupId, by: String, note: String },
    /// Record many plans (a bulk file's rows that parsed): each row's number and plan. Authority
    /// only.
    ImportPlans(Vec<(usize, Plan)>),
}

/// The answer to a command, released only once every write it depends on is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The directory version now trusted.
    Directory { version: u64 },
    /// A change was applied, or there was nothing to change.
    Changed(Change),
    /// Per row of an import.
    Imported(ImportReport),
    /// Refused; nothing changed.
    Refused(CommandError),
}

/// Something a machine reports: to logs, metrics, alarms, the simulator's checkers, and command
/// replies to whoever asked. Never carries a whole NHS number or a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// New entries of `origin` were accepted.
    EntriesAccepted { origin: OdsCode, from: OdsCode, count: usize, upto: u64 },
    /// A feed batch was refused; nothing changed.
    BatchRefused { from: OdsCode, origin: OdsCode, reason: Refusal },
    /// Two different signed entries (or heads) with one origin and sequence: the proof is kept.
    Equivocation { origin: OdsCode, seq: u64, from: OdsCode },
    /// A new directory version is trusted.
    DirectoryUpdated { version: u64 },
    /// A directory version was refused.
    DirectoryRefused { from: Option<OdsCode>, reason: DirectoryError },
    /// A lookup was made durable and answered; `notified` are the authorities it notifies.
    LookupAnswered { lookup_id: LookupId, setting: OdsCode, kind: LookupKind, notified: Vec<OdsCode> },
    /// A lookup was refused; nothing changed.
    LookupRefused { lookup_id: LookupId, from: OdsCode, reason: Refusal },
    /// A setting or a person at it went over a lookup rate limit (an alarm: enumeration?).
    RateLimited { setting: OdsCode, per_person: bool },
    /// The owning authority stored a notification this hub queued.
    NotificationDelivered { lookup_id: LookupId, authority: OdsCode, latency_ms: u64 },
    /// A notification has waited longer than the overdue limit (reported once).
    NotificationOverdue { lookup_id: LookupId, authority: OdsCode, waiting_ms: u64 },
    /// An authority stored a new notification.
    NotificationReceived { lookup_id: LookupId, hub: OdsCode },
    /// An authority took back entries of its own feed from a hub (it was restored from an older
    /// copy of its store) and re-signed them.
    FeedRecovered { hub: OdsCode, entries: usize },
    /// A message was refused; nothing changed.
    MessageRefused { from: OdsCode, kind: &'static str, reason: Refusal },
    /// A peer refused something we sent (a notification stays queued, and is reported overdue
    /// in time).
    RefusedByPeer { from: OdsCode, lookup_id: Option<LookupId>, code: crate::refusal::RefusalCode },
    /// A connected peer's key is no longer admitted (revoked, retired, expired, or the directory
    /// expired): the driver must close its connections.
    PeerNotAdmitted { peer: OdsCode, reason: AdmissionError },
    /// A command's reply.
    Replied { command: CommandId, reply: Reply },
}

/// What a role needs besides its identity and directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleConfig {
    Hub(HubConfig),
    Authority(AuthorityConfig),
}

impl RoleConfig {
    /// The first key of `table` (keys sort as bytes) whose row [`Machine::restore`] at `now`
    /// uses, if it does not use them all, so that a driver need not read the rows before it: a
    /// hub's records of lookups answered before its replay window stay on disk, as its record of
    /// them, and are not read at start.
    pub fn first_restored_key(&self, table: schema::Table, now: Timestamp) -> Option<Vec<u8>> {
        match (self, table) {
            (RoleConfig::Hub(c), schema::Table::AccessLog) => {
                Some(schema::ACCESS_LOG.key(&(c.oldest_answer_remembered(now), LookupId([0; 16]))))
            }
            _ => None,
        }
    }

    /// Whether [`Machine::restore`] at `now` uses the stored row of `table` at `key` (see
    /// [`RoleConfig::first_restored_key`]). A row whose key is not of the table's length is used,
    /// for restore to name what is wrong.
    pub fn restores(&self, table: schema::Table, key: &[u8], now: Timestamp) -> bool {
        if table == schema::Table::MeshUploads {
            return false; // the node's own record, not the machine's
        }
        match self.first_restored_key(table, now) {
            Some(first) => key.len() != first.len() || key >= first.as_slice(),
            None => true,
        }
    }
}

/// Why a machine could not be restored from its rows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A stored row is corrupt, foreign or contradicts the others.
    #[error("the store is not readable: {0}")]
    Row(#[from] RowError),
    /// The code is not a member of the directory with this role.
    #[error("{code} is not a {role} of the directory")]
    NotAMember { code: OdsCode, role: &'static str },
}

/// A node of the federation, of any role.
pub enum Machine {
    Hub(Box<Hub>),
    Authority(Box<Authority>),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Machine::Hub($m) => $e,
            Machine::Authority($m) => $e,
        }
    };
}

impl Machine {
    /// A machine for member `code` with `identity`, trusting `directory`, restored from `rows`
    /// (the rows of its store that [`RoleConfig::restores`] accepts, or every row; none for a
    /// new node).
    pub fn restore(
        code: OdsCode,
        identity: Identity,
        directory: TrustedDirectory,
        config: RoleConfig,
        rows: impl Into<schema::Rows>,
        now: Timestamp,
    ) -> Result<Machine, RestoreError> {
        let rows = &mut rows.into();
        schema::check_schema(rows)?;
        let role = match config {
            RoleConfig::Hub(_) => Role::Hub,
            RoleConfig::Authority(_) => Role::Authority,
        };
        if directory.member(&code).map(|m| m.role) != Some(role) {
            return Err(RestoreError::NotAMember { code, role: role.name() });
        }
        let mut dir = DirectoryState::new(directory);
        dir.restore(rows, now)?;
        // The trusted version is kept in the store too (a node's first comes from its file): a
        // later version's predecessor is then at hand to check a fork against after a restart.
        let stored = schema::DIRECTORY.read(rows).any(|r| r.is_ok_and(|(v, _)| v == dir.version()));
        let keep = (!stored).then(|| schema::DIRECTORY.put(&dir.version(), dir.trusted.signed()));
        let mut machine = match config {
            RoleConfig::Hub(c) => Machine::Hub(Box::new(Hub::restore(code, identity, dir, c, rows, now)?)),
            RoleConfig::Authority(c) => {
                Machine::Authority(Box::new(Authority::restore(code, identity, dir, c, rows, now)?))
            }
        };
        if let Some(op) = keep {
            each!(&mut machine, m => m.out.write(vec![op], vec![]));
        }
        Ok(machine)
    }

    pub fn role(&self) -> Role {
        match self {
            Machine::Hub(_) => Role::Hub,
            Machine::Authority(_) => Role::Authority,
        }
    }

    pub fn code(&self) -> &OdsCode {
        each!(self, m => m.code())
    }

    pub fn directory(&self) -> &TrustedDirectory {
        each!(self, m => m.directory())
    }

    pub fn as_hub(&self) -> Option<&Hub> {
        match self {
            Machine::Hub(h) => Some(h),
            Machine::Authority(_) => None,
        }
    }

    pub fn as_authority(&self) -> Option<&Authority> {
        match self {
            Machine::Authority(a) => Some(a),
            Machine::Hub(_) => None,
        }
    }

    /// A peer connected with `key`; the driver checked the key against its copy of the
    /// directory in the handshake.
    pub fn handle_connected(&mut self, peer: &OdsCode, key: KeyId, now: Timestamp) {
        each!(self, m => m.handle_connected(peer, key, now))
    }

    /// The peer's last connection ended.
    pub fn handle_disconnected(&mut self, peer: &OdsCode) {
        each!(self, m => m.handle_disconnected(peer))
    }

    /// A message from a connected peer.
    pub fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
        each!(self, m => m.handle_message(from, message, now))
    }

    /// A care setting's lookup whose signature the driver already checked, off its event loop,
    /// with the key the directory lists for the setting under the lookup's key id
    /// ([`verify_signature_only`](crate::directory::TrustedDirectory::verify_signature_only)).
    /// The hub makes every other check of [`Message::Lookup`] (key window, kind, replay,
    /// limits); an authority refuses it as it refuses any lookup.
    pub fn handle_verified_lookup(&mut self, from: &OdsCode, lookup: Verified<AccessEvent>, now: Timestamp) {
        match self {
            Machine::Hub(h) => h.handle_verified_lookup(from, lookup, now),
            Machine::Authority(a) => a.handle_message(from, Message::Lookup(lookup.into_signed()), now),
        }
    }

    /// An authority's head whose signature the driver already checked, off its event loop, with
    /// the key the directory lists for the head's origin under its key id
    /// ([`verify_signature_only`](crate::directory::TrustedDirectory::verify_signature_only)).
    /// A hub makes every other check of [`Message::Head`]; an authority takes it as off the wire.
    pub fn handle_verified_head(&mut self, from: &OdsCode, head: Verified<FeedHead>, now: Timestamp) {
        match self {
            Machine::Hub(h) => h.handle_verified_head(from, head, now),
            Machine::Authority(a) => a.handle_message(from, Message::Head(head.into_signed()), now),
        }
    }

    /// A feed batch whose entries' signatures the driver already checked, off its event loop
    /// ([`FeedBatch::verify_signatures`](crate::wire::FeedBatch::verify_signatures)). The machine
    /// makes every other check, as for [`Message::Feed`].
    pub fn handle_verified_feed(&mut self, from: &OdsCode, batch: VerifiedBatch, now: Timestamp) {
        match self {
            Machine::Hub(h) => h.handle_verified_feed(from, batch, now),
            Machine::Authority(a) => a.handle_message(from, Message::Feed(batch.into_batch()), now),
        }
    }

    /// The time [`Machine::poll_timeout`] gave has come (calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        each!(self, m => m.handle_timeout(now))
    }

    /// Every write up to `write_id` is durable.
    pub fn handle_durable(&mut self, write_id: u64, now: Timestamp) {
        each!(self, m => m.handle_durable(write_id, now))
    }

    /// An operator's command; its reply comes as [`Event::Replied`] once it is safe to give.
    pub fn handle_command(&mut self, id: CommandId, command: Command, now: Timestamp) {
        match (self, command) {
            (Machine::Hub(h), Command::PublishDirectories(chain)) => h.publish_directories(id, chain, now),
            (Machine::Authority(a), command) => a.handle_command(id, command, now),
            (Machine::Hub(h), _) => h.refuse_command(id, CommandError::NotAnAuthority),
        }
    }

    /// The next batch of rows to make durable, in order.
    pub fn poll_write(&mut self) -> Option<WriteBatch> {
        each!(self, m => m.out.writes.pop_front())
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        each!(self, m => m.out.transmits.pop_front())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        each!(self, m => m.out.events.pop_front())
    }

    /// When to call [`Machine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        each!(self, m => m.poll_timeout())
    }

    /// The next rows the machine asks to read back from the store (what it keeps there rather
    /// than in memory); the driver answers with [`Machine::handle_read`].
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        each!(self, m => m.out.reads.pop_front())
    }

    /// The rows of one [`ReadRequest`] that the store holds (durable ones; a key it lacks is left
    /// out), with the request they answer: one call for each request, even when no row came.
    pub fn handle_read(&mut self, request: &ReadRequest, rows: Vec<StoredRow>, now: Timestamp) {
        match self {
            Machine::Hub(h) => h.handle_read(request, rows, now),
            // An authority asks for nothing.
            Machine::Authority(_) => {}
        }
    }

    /// Every output queued now, in the order a driver handles them: writes, transmits, events,
    /// reads.
    pub fn drain(&mut self) -> Outputs {
        each!(self, m => Outputs {
            writes: m.out.writes.drain(..).collect(),
            transmits: m.out.transmits.drain(..).collect(),
            events: m.out.events.drain(..).collect(),
            reads: m.out.reads.drain(..).collect(),
        })
    }
}

/// Rows a machine asks its driver to read from the store: the keys of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: schema::Table,
    pub keys: Vec<Vec<u8>>,
}

/// A machine's outputs after one call, as [`Machine::drain`] takes them.
#[derive(Debug, Default)]
pub struct Outputs {
    pub writes: Vec<WriteBatch>,
    pub transmits: Vec<Transmit>,
    pub events: Vec<Event>,
    pub reads: Vec<ReadRequest>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.transmits.is_empty() && self.events.is_empty() && self.reads.is_empty()
    }
}

/// Most writes a machine hands out whose durability it has not yet heard of. Past it, a machine
/// keeps working but a driver that stopped reporting durability is visible in this count.
pub const WRITES_IN_FLIGHT_MAX: usize = 65_536;

/// The output queues of a machine, with actions held until writes are durable.
pub(crate) struct Queues<A> {
    pub transmits: VecDeque<Transmit>,
    pub writes: VecDeque<WriteBatch>,
    pub events: VecDeque<Event>,
    pub reads: VecDeque<ReadRequest>,
    next_write_id: u64,
    held: BTreeMap<u64, Vec<A>>,
}

impl<A> Queues<A> {
    pub(crate) fn new() -> Self {
        Queues {
            transmits: VecDeque::new(),
            writes: VecDeque::new(),
            events: VecDeque::new(),
            reads: VecDeque::new(),
            next_write_id: 1,
            held: BTreeMap::new(),
        }
    }

    pub(crate) fn send(&mut self, to: &OdsCode, message: Message) {
        self.transmits.push_back(Transmit { to: to.clone(), message });
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// How many writes were queued so far: a state that changes only with a write is unchanged
    /// while this is.
    pub(crate) fn writes_queued(&self) -> u64 {
        self.next_write_id
    }

    /// Queues `ops` as one write; `after` runs once it is durable. Returns the write's id.
    pub(crate) fn write(&mut self, ops: Vec<StoreOp>, after: Vec<A>) -> u64 {
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.writes.push_back(WriteBatch { id, ops });
        self.held.insert(id, after);
        debug_assert!(self.held.len() <= WRITES_IN_FLIGHT_MAX, "the driver stopped reporting durable writes");
        id
    }

    /// Writes are durable in order: every write up to `id` is now durable. Returns the actions
    /// they held, oldest first.
    pub(crate) fn durable(&mut self, id: u64) -> Vec<A> {
        assert!(id < self.next_write_id, "write {id} was never handed out");
        let rest = self.held.split_off(&(id + 1));
        let done = std::mem::replace(&mut self.held, rest);
        done.into_values().flatten().collect()
    }

    /// Holds `action` until every write handed out so far is durable; if none is pending, gives
    /// it back to be done now.
    pub(crate) fn after_pending(&mut self, action: A) -> Option<A> {
        match self.held.values_mut().next_back() {
            Some(actions) => {
                actions.push(action);
                None
            }
            None => Some(action),
        }
    }
}

/// The trusted directory and the chain of versions this node has seen, to pass on to peers that
/// are behind.
pub(crate) struct DirectoryState {
    pub trusted: TrustedDirectory,
    /// [`crate::wire::directory_fingerprint`] of the trusted version.
    fingerprint: u64,
    /// The version before the trusted one, when this node accepted the trusted one as its
    /// update: what a different version with the trusted one's number is checked against.
    previous: Option<TrustedDirectory>,
    /// The versions kept to pass on; the trusted one shares its copy.
    chain: BTreeMap<u64, Arc<SignedDirectory>>,
}

/// Most directory versions a node keeps to pass on (older ones are dropped, oldest first).
pub const DIRECTORY_VERSIONS_KEPT_MAX: usize = 256;

impl DirectoryState {
    pub(crate) fn new(trusted: TrustedDirectory) -> Self {
        let mut chain = BTreeMap::new();
        chain.insert(trusted.version(), trusted.shared_signed());
        let fingerprint = crate::wire::directory_fingerprint(trusted.directory());
        DirectoryState { trusted, fingerprint, previous: None, chain }
    }

    pub(crate) fn version(&self) -> u64 {
        self.trusted.version()
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Applies the versions of `chain` newer than the trusted one, in order. On error nothing
    /// changes. Returns the store ops for the versions accepted (empty if none were new). A
    /// version with the trusted one's number but other content, signed as validly, is refused as
    /// [`DirectoryError::Forked`] (one with bad signatures is ignored like any older version).
    pub(crate) fn accept(
        &mut self,
        chain: Vec<SignedDirectory>,
        now: Timestamp,
    ) -> Result<Vec<StoreOp>, DirectoryError> {
        let mut trusted = self.trusted.clone();
        let mut previous = None;
        let mut accepted = Vec::new();
        for next in chain.into_iter().take(DIRECTORY_CHAIN_MAX) {
            if next.directory.version <= trusted.version() {
                self.check_fork(&next)?;
                continue;
            }
            // Versions passed through on the way may have expired since; only the newest must
            // be current (as in TUF).
            let newer = trusted.accept_update(next, Timestamp(0))?;
            accepted.push(newer.shared_signed());
            previous = Some(std::mem::replace(&mut trusted, newer));
        }
        if !accepted.is_empty() {
            trusted.check_unexpired(now)?;
        }
        let mut ops: Vec<StoreOp> =
            accepted.iter().map(|d| schema::DIRECTORY.put(&d.directory.version, &**d)).collect();
        for d in accepted {
            self.chain.insert(d.directory.version, d);
        }
        while self.chain.len() > DIRECTORY_VERSIONS_KEPT_MAX {
            if let Some((v, _)) = self.chain.pop_first() {
                ops.push(schema::DIRECTORY.delete(&v));
            }
        }
        if previous.is_some() {
            self.fingerprint = crate::wire::directory_fingerprint(trusted.directory());
            self.previous = previous;
        }
        self.trusted = trusted;
        Ok(ops)
    }

    /// A version numbered as the trusted one, with other content and the signatures its
    /// predecessor's roots require, is a fork.
    fn check_fork(&self, other: &SignedDirectory) -> Result<(), DirectoryError> {
        let version = other.directory.version;
        let differs = version == self.trusted.version() && other.directory != *self.trusted.directory();
        match &self.previous {
            Some(previous) if differs && previous.accept_update(other.clone(), Timestamp(0)).is_ok() => {
                Err(DirectoryError::Forked { version })
            }
            _ => Ok(()),
        }
    }

    /// Versions after `version`, oldest first: at most [`DIRECTORY_CHAIN_MAX`] and half a frame
    /// of bytes (a peer still behind asks again on its next sync).
    pub(crate) fn after(&self, version: u64) -> Vec<SignedDirectory> {
        let mut bytes = 0usize;
        let mut chain = Vec::new();
        for (_, d) in self.chain.range(version.saturating_add(1)..).take(DIRECTORY_CHAIN_MAX) {
            bytes += codec::encode(&**d).len();
            if !chain.is_empty() && bytes > FRAME_BYTES_MAX / 2 {
                break;
            }
            chain.push(SignedDirectory::clone(d));
        }
        chain
    }

    /// Restores the stored versions: those that chain on from the trusted one are applied in
    /// order, one pass; a stored version that does not decode is an error.
    pub(crate) fn restore(&mut self, rows: &schema::Rows, now: Timestamp) -> Result<(), RowError> {
        let mut stored = BTreeMap::new();
        for row in schema::DIRECTORY.read(rows) {
            let (version, d) = row?;
            if d.directory.version != version {
                return Err(RowError::Mismatch(schema::Table::Directory.name()));
            }
            stored.insert(version, d);
        }
        let mut trusted = self.trusted.clone();
        let mut previous = None;
        for (_, d) in stored.range(trusted.version() + 1..) {
            match trusted.accept_update(d.clone(), Timestamp(0)) {
                Ok(next) => {
                    self.chain.insert(d.directory.version, next.shared_signed());
                    previous = Some(std::mem::replace(&mut trusted, next));
                }
                // A gap or a version from another chain: keep the longest chain that holds.
                Err(_) => break,
            }
        }
        // The newest must be current; an expired newest means running on what the file gave.
        if trusted.check_unexpired(now).is_ok() {
            self.fingerprint = crate::wire::directory_fingerprint(trusted.directory());
            self.trusted = trusted;
            self.previous = previous;
        }
        // Started from the newest version (the directory file): its predecessor, if stored and
        // the trusted version follows from it, is what a fork is checked against.
        if self.previous.is_none() {
            let before = stored.get(&self.trusted.version().saturating_sub(1)).cloned();
            let follows = |p: &TrustedDirectory| p.accept_update(self.trusted.signed().clone(), Timestamp(0)).is_ok();
            self.previous =
                before.and_then(|p| TrustedDirectory::bootstrap(p, Timestamp(0)).ok()).filter(|p| follows(p));
        }
        Ok(())
    }

    /// The first instant after `now` at which a key this directory lists enters or leaves its
    /// window, or the directory expires: until then, and until the directory changes, what
    /// [`Self::admits`] says of a connected peer cannot change. None once nothing is left to pass.
    pub(crate) fn next_admission_change(&self, now: Timestamp) -> Option<Timestamp> {
        let d = self.trusted.directory();
        let windows = d.members.iter().flat_map(|m| &m.keys).flat_map(|k| [k.valid_from, k.valid_until]);
        windows.chain([d.expires_at]).filter(|t| *t > now).min()
    }

    /// Whether `peer` with `key` is still admitted in the role the machine knows it by.
    pub(crate) fn admits(&self, peer: &OdsCode, key: KeyId, now: Timestamp) -> Result<Role, AdmissionError> {
        self.trusted.check_unexpired(now).map_err(|_| AdmissionError::DirectoryExpired)?;
        let member = self.trusted.member(peer).ok_or(AdmissionError::UnknownKey(key))?;
        let mk = member.key(key).ok_or(AdmissionError::UnknownKey(key))?;
        if mk.status != crate::directory::KeyStatus::Active {
            return Err(AdmissionError::NotActive { code: peer.clone(), key });
        }
        if !mk.usable_at(now) {
            return Err(AdmissionError::OutsideWindow { code: peer.clone(), key });
        }
        Ok(member.role)
    }
}

/// Capped exponential backoff with a deterministic jitter of up to a quarter, drawn from `salt`.
pub(crate) fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64, salt: u64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << attempt.min(20)).min(cap_ms);
    let jitter = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (exp / 4 + 1);
    exp - jitter
}

/// The earliest of some optional deadlines.
pub(crate) fn earliest(times: impl IntoIterator<Item = Option<Timestamp>>) -> Option<Timestamp> {
    times.into_iter().flatten().min()
}
