//! What every role's state machine shares: its outputs, held back until writes are durable, and
//! the events it reports.

use crate::codec;
use crate::directory::{DirectoryError, SignedDirectory, TrustedDirectory};
use crate::ids::{LookupId, OdsCode};
use crate::records::LookupKind;
use crate::store::{StoreOp, StoredRow, Table, WriteBatch};
use crate::time::Timestamp;
use crate::wire::{DIRECTORY_CHAIN_MAX, Message};
use std::collections::{BTreeMap, VecDeque};

/// A message for the driver to send to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: OdsCode,
    pub message: Message,
}

/// Something a state machine reports to its operator (logs, metrics, alarms, the simulator's
/// checkers). Never carries a whole NHS number or a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// New entries of `origin` were accepted.
    EntriesAccepted { origin: OdsCode, from: OdsCode, count: usize, upto: u64 },
    /// A feed batch was refused; nothing changed.
    BatchRefused { from: OdsCode, origin: OdsCode, reason: String },
    /// Two different signed entries with one origin and sequence: the proof is kept.
    Equivocation { origin: OdsCode, seq: u64, from: OdsCode },
    /// A new directory version is trusted.
    DirectoryUpdated { version: u64 },
    /// A directory version was refused.
    DirectoryRefused { from: Option<OdsCode>, reason: String },
    /// A lookup was made durable and answered.
    LookupAnswered { lookup_id: LookupId, setting: OdsCode, kind: LookupKind, authorities: Vec<OdsCode> },
    /// A lookup was refused; nothing changed.
    LookupRefused { lookup_id: LookupId, from: OdsCode, reason: String },
    /// The owning authority stored a notification this hub queued.
    NotificationDelivered { lookup_id: LookupId, authority: OdsCode, latency_ms: u64 },
    /// A notification has waited longer than the overdue limit (reported once).
    NotificationOverdue { lookup_id: LookupId, authority: OdsCode, waiting_ms: u64 },
    /// An authority stored a new notification.
    NotificationReceived { lookup_id: LookupId, hub: OdsCode },
    /// A hub holds more of this authority's feed than the authority itself (restored from an old
    /// backup): the authority skips past it and re-signs its live records.
    FeedBehindHub { hub: OdsCode, hub_seq: u64, own_seq: u64 },
    /// A message was refused; nothing changed.
    MessageRefused { from: OdsCode, kind: &'static str, reason: String },
}

/// The output queues of a machine, with transmits and actions held until writes are durable.
pub(crate) struct Outputs<A> {
    pub transmits: VecDeque<Transmit>,
    pub writes: VecDeque<WriteBatch>,
    pub events: VecDeque<Event>,
    next_write_id: u64,
    held: BTreeMap<u64, Vec<A>>,
}

impl<A> Outputs<A> {
    pub fn new() -> Self {
        Outputs {
            transmits: VecDeque::new(),
            writes: VecDeque::new(),
            events: VecDeque::new(),
            next_write_id: 1,
            held: BTreeMap::new(),
        }
    }

    pub fn send(&mut self, to: &OdsCode, message: Message) {
        self.transmits.push_back(Transmit { to: to.clone(), message });
    }

    pub fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Queues `ops` as one write; `after` runs once it is durable. Returns the write's id.
    pub fn write(&mut self, ops: Vec<StoreOp>, after: Vec<A>) -> u64 {
        let id = self.next_write_id;
        self.next_write_id += 1;
        self.writes.push_back(WriteBatch { id, ops });
        self.held.insert(id, after);
        id
    }

    /// Writes are durable in order: every write up to `id` is now durable. Returns the actions
    /// they held, oldest first.
    pub fn durable(&mut self, id: u64) -> Vec<A> {
        let rest = self.held.split_off(&(id + 1));
        let done = std::mem::replace(&mut self.held, rest);
        done.into_values().flatten().collect()
    }

    /// Holds `action` until every write handed out so far is durable; if none is pending, gives
    /// it back to be done now.
    pub fn after_pending(&mut self, action: A) -> Option<A> {
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
    chain: BTreeMap<u64, SignedDirectory>,
}

impl DirectoryState {
    pub fn new(trusted: TrustedDirectory) -> Self {
        let mut chain = BTreeMap::new();
        chain.insert(trusted.version(), trusted.signed().clone());
        DirectoryState { trusted, chain }
    }

    pub fn version(&self) -> u64 {
        self.trusted.version()
    }

    /// Applies the versions of `chain` newer than the trusted one, in order. On error nothing
    /// changes. Returns the store ops for the versions accepted (empty if none were new).
    pub fn accept(&mut self, chain: Vec<SignedDirectory>, now: Timestamp) -> Result<Vec<StoreOp>, DirectoryError> {
        let mut trusted = self.trusted.clone();
        let mut accepted = Vec::new();
        for next in chain {
            if next.directory.version <= trusted.version() {
                continue;
            }
            // Versions passed through on the way may have expired since; only the newest must
            // be current (as in TUF).
            trusted = trusted.accept_update(next.clone(), Timestamp(0))?;
            accepted.push(next);
        }
        if !accepted.is_empty() {
            trusted.check_unexpired(now)?;
        }
        let ops = accepted.iter().map(directory_op).collect();
        for d in accepted {
            self.chain.insert(d.directory.version, d);
        }
        self.trusted = trusted;
        Ok(ops)
    }

    /// Versions after `version`, oldest first: at most [`DIRECTORY_CHAIN_MAX`] and half a frame
    /// of bytes (a peer still behind asks again on its next sync). Always at least one.
    pub fn after(&self, version: u64) -> Vec<SignedDirectory> {
        let mut bytes = 0usize;
        let mut chain = Vec::new();
        for (_, d) in self.chain.range(version.saturating_add(1)..).take(DIRECTORY_CHAIN_MAX) {
            bytes += codec::encode(d).len();
            if !chain.is_empty() && bytes > crate::wire::FRAME_BYTES_MAX / 2 {
                break;
            }
            chain.push(d.clone());
        }
        chain
    }

    /// Restores stored versions (rows of [`Table::Directory`]), silently keeping only those that
    /// chain from the trusted one.
    pub fn restore(&mut self, rows: &[StoredRow], now: Timestamp) {
        let mut stored: Vec<SignedDirectory> = rows
            .iter()
            .filter(|r| r.table == Table::Directory)
            .filter_map(|r| codec::decode(&r.value, crate::wire::FRAME_BYTES_MAX as u64).ok())
            .collect();
        stored.sort_by_key(|d: &SignedDirectory| d.directory.version);
        // The longest prefix that chains and ends in a current version.
        for len in (1..=stored.len()).rev() {
            if self.accept(stored[..len].to_vec(), now).is_ok() {
                return;
            }
        }
    }
}

pub(crate) fn directory_op(d: &SignedDirectory) -> StoreOp {
    StoreOp::Put { table: Table::Directory, key: d.directory.version.to_be_bytes().to_vec(), value: codec::encode(d) }
}

/// Key of an entry row: origin, 0x00, sequence big-endian.
pub(crate) fn entry_key(origin: &OdsCode, seq: u64) -> Vec<u8> {
    let mut k = origin.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of an outbox row: lookup id then authority code.
pub(crate) fn outbox_key(lookup_id: LookupId, authority: &OdsCode) -> Vec<u8> {
    let mut k = lookup_id.0.to_vec();
    k.extend_from_slice(authority.as_str().as_bytes());
    k
}

/// Capped exponential backoff with a deterministic jitter of up to a quarter, drawn from `salt`.
pub(crate) fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64, salt: u64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << attempt.min(20)).min(cap_ms);
    let jitter = (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (exp / 4 + 1);
    exp - jitter
}

/// What a driver (the node, the simulator, the test harness) needs of every role's machine.
pub trait StateMachine {
    /// A peer connected; the driver has checked its key and role against the directory.
    fn handle_connected(&mut self, peer: &OdsCode, role: crate::directory::Role, now: Timestamp);
    fn handle_disconnected(&mut self, peer: &OdsCode);
    /// A message from a connected peer.
    fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp);
    fn handle_tick(&mut self, now: Timestamp);
    /// Every write up to `write_id` is durable.
    fn handle_durable(&mut self, write_id: u64, now: Timestamp);
    /// Directory versions from the operator.
    fn handle_directories(&mut self, chain: Vec<SignedDirectory>, now: Timestamp) -> Result<u64, DirectoryError>;
    fn poll_write(&mut self) -> Option<WriteBatch>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<Event>;
    fn directory(&self) -> &TrustedDirectory;
}

macro_rules! impl_state_machine {
    ($t:ty, connected: |$s:ident, $p:ident, $r:ident, $n:ident| $conn:expr, durable: |$s2:ident, $id:ident, $n2:ident| $dur:expr) => {
        impl $crate::machine::StateMachine for $t {
            fn handle_connected(&mut self, peer: &OdsCode, role: $crate::directory::Role, now: Timestamp) {
                let ($s, $p, $r, $n) = (self, peer, role, now);
                $conn
            }
            fn handle_disconnected(&mut self, peer: &OdsCode) {
                <$t>::handle_disconnected(self, peer)
            }
            fn handle_message(&mut self, from: &OdsCode, message: Message, now: Timestamp) {
                <$t>::handle_message(self, from, message, now)
            }
            fn handle_tick(&mut self, now: Timestamp) {
                <$t>::handle_tick(self, now)
            }
            fn handle_durable(&mut self, write_id: u64, now: Timestamp) {
                let ($s2, $id, $n2) = (self, write_id, now);
                $dur
            }
            fn handle_directories(
                &mut self,
                chain: Vec<$crate::directory::SignedDirectory>,
                now: Timestamp,
            ) -> Result<u64, $crate::directory::DirectoryError> {
                <$t>::handle_directories(self, chain, now)
            }
            fn poll_write(&mut self) -> Option<$crate::store::WriteBatch> {
                <$t>::poll_write(self)
            }
            fn poll_transmit(&mut self) -> Option<Transmit> {
                <$t>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<Event> {
                <$t>::poll_event(self)
            }
            fn directory(&self) -> &$crate::directory::TrustedDirectory {
                <$t>::directory(self)
            }
        }
    };
}
pub(crate) use impl_state_machine;
