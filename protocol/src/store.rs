//! What the state machines ask their driver to keep durably.
//!
//! Every table a node keeps is declared here, once, with what its keys and values hold. A state
//! machine never writes: it hands out [`WriteBatch`]es through `poll_write`, the driver makes each
//! one durable in a single transaction, in order, and then calls `handle_durable(batch.id)`.
//! Anything the machine must only say once a change is durable (an acknowledgement, a lookup
//! answer, a delivery receipt) is held back until that call.
//!
//! On restart the driver reads every row back and hands them to the machine's `restore`.

/// A table of the node's store. Keys and values are the bytes given in [`StoreOp`]; the encoding
/// of each is documented on its variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Signed feed entries held (own feed at an authority, replicas at a hub).
    /// Key: origin code bytes, `0x00`, sequence (u64 big-endian). Value: encoded `SignedEntry`.
    Entries,
    /// Per-origin high-water mark: every entry of the origin up to it has been seen.
    /// Key: origin code bytes. Value: u64 big-endian.
    HighWater,
    /// The current signed directory. Key: `b"current"`. Value: encoded `SignedDirectory`.
    Directory,
    /// Lookups accepted by a hub (replay protection and audit). Key: lookup id (16 bytes).
    /// Value: encoded `SignedAccessEvent`.
    AccessLog,
    /// Notifications a hub must still see acknowledged end to end. Key: lookup id (16 bytes) then
    /// authority code bytes. Value: encoded `OutboxItem`.
    Outbox,
    /// Notifications received by an authority. Key: lookup id (16 bytes). Value: encoded `InboxItem`.
    Inbox,
    /// Proofs of equivocation: two signed entries with one origin and sequence.
    /// Key: origin code bytes, `0x00`, sequence (u64 big-endian). Value: encoded `EquivocationProof`.
    Equivocations,
}

impl Table {
    /// Every table, in the order a driver creates them.
    pub const ALL: [Table; 7] = [
        Table::Entries,
        Table::HighWater,
        Table::Directory,
        Table::AccessLog,
        Table::Outbox,
        Table::Inbox,
        Table::Equivocations,
    ];

    /// The table's name in the node's database file.
    pub fn name(self) -> &'static str {
        match self {
            Table::Entries => "entries",
            Table::HighWater => "high_water",
            Table::Directory => "directory",
            Table::AccessLog => "access_log",
            Table::Outbox => "outbox",
            Table::Inbox => "inbox",
            Table::Equivocations => "equivocations",
        }
    }
}

/// One change to one row.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace the row at `key`.
    Put { table: Table, key: Vec<u8>, value: Vec<u8> },
    /// Remove the row at `key`, if any.
    Delete { table: Table, key: Vec<u8> },
}

impl std::fmt::Debug for StoreOp {
    // Values hold case data: show only where the change goes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreOp::Put { table, key, value } => {
                write!(f, "Put({}, {} key bytes, {} value bytes)", table.name(), key.len(), value.len())
            }
            StoreOp::Delete { table, key } => {
                write!(f, "Delete({}, {} key bytes)", table.name(), key.len())
            }
        }
    }
}

/// Changes that must become durable together, in one transaction, before `handle_durable(id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteBatch {
    /// Increases by one for each batch a machine hands out.
    pub id: u64,
    pub ops: Vec<StoreOp>,
}

/// A row read back from the store on restart.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for StoredRow {
    // Values hold case data: show only where the row lives.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredRow({}, {} key bytes, {} value bytes)", self.table.name(), self.key.len(), self.value.len())
    }
}
