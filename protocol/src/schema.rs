//! What the state machines ask their driver to keep durably: every table, with its key and value
//! codecs, declared once (docs/storage.md).
//!
//! A state machine never writes: it hands out [`WriteBatch`]es through `poll_write`; the driver
//! makes each one durable in a single transaction, in order, and then calls `handle_durable`.
//! Anything the machine must only say once a change is durable (an acknowledgement, a lookup
//! answer, a delivery receipt) is held back until that call. On restart the driver reads every
//! row back and hands them to [`Machine::restore`](crate::machine::Machine::restore), which
//! decodes them through the definitions below: a row that does not decode is an error naming its
//! table, never a default.

use crate::codec::{self, DecodeError};
use crate::ids::{LookupId, OdsCode, PlanRef};
use crate::time::Timestamp;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// The version of the tables below. A store written with another version is refused.
pub const SCHEMA_VERSION: u32 = 3;

/// Largest value a row may hold, checked before decoding allocates.
pub const ROW_BYTES_MAX: u64 = 16 << 20;

/// A table of the node's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// The store's schema version. Key `schema`; value u32 big-endian.
    Meta,
    /// Live feed entries: an authority's own feed, a hub's replicas. Key: origin, `0x00`,
    /// sequence (u64 big-endian). Value: `SignedEntry`.
    Entries,
    /// The newest signed head of an authority's feed that the live set matches (a hub's per
    /// authority; an authority's own). Key: origin. Value: `SignedHead`.
    Heads,
    /// How far each origin's live set is held (the sequence of the head, or the last visit).
    /// Key: origin. Value: u64 big-endian.
    Marks,
    /// Every directory version seen after the first. Key: version (u64 big-endian). Value:
    /// `SignedDirectory`.
    Directory,
    /// Lookups a hub accepted (replay protection and audit). Key: when the hub answered (ms since
    /// the epoch, u64 big-endian), then the lookup id (16 bytes), so that new rows go at the end
    /// and a restart reads only the recent ones. Value: `Signed<AccessEvent>`.
    AccessLog,
    /// Notifications a hub must still see acknowledged end to end. Key: lookup id (16 bytes) then
    /// authority code. Value: `OutboxRecord`.
    Outbox,
    /// Notifications an authority received. Key: lookup id (16 bytes). Value: `InboxItem`.
    Inbox,
    /// Acknowledgements of notifications by a council's staff. Key: lookup id (16 bytes). Value:
    /// `Acknowledgement`.
    InboxAcks,
    /// An authority's own records of its plans (what it publishes, and what it no longer does).
    /// Key: plan reference. Value: `Plan`.
    Plans,
    /// Proofs of equivocation: two signed entries (or heads) with one origin and sequence.
    /// Key: origin, `0x00`, sequence. Value: `EquivocationProof`.
    Equivocations,
    /// Notifications a hub delivered to an authority and holds the receipt for, kept for 30 days
    /// so that an authority restored from an older copy can have them again. Key: lookup id
    /// (16 bytes) then authority code. Value: `DeliveredRecord`.
    Delivered,
    /// Notifications an authority's node handed to the council's case-management system (its
    /// webhook answered 2xx). Written by the node, not by the machine. Key: lookup id (16 bytes).
    /// Value: when, in ms since the epoch (u64 big-endian).
    Handed,
    /// Plan files an authority's node took from MESH and imported, whose answer or
    /// acknowledgement has not yet gone through: a retry sends the answer again rather than
    /// import the file again. Written and read by the node, not the machine. Key: the MESH
    /// message id. Value: the answer (JSON).
    MeshUploads,
}

impl Table {
    /// Every table, in the order a driver creates them.
    pub const ALL: [Table; 14] = [
        Table::Meta,
        Table::Entries,
        Table::Heads,
        Table::Marks,
        Table::Directory,
        Table::AccessLog,
        Table::Outbox,
        Table::Inbox,
        Table::InboxAcks,
        Table::Plans,
        Table::Equivocations,
        Table::Delivered,
        Table::Handed,
        Table::MeshUploads,
    ];

    /// The table's name in the node's database file.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Entries => "entries",
            Table::Heads => "heads",
            Table::Marks => "marks",
            Table::Directory => "directory",
            Table::AccessLog => "access_log_by_time",
            Table::Outbox => "outbox",
            Table::Inbox => "inbox",
            Table::InboxAcks => "inbox_acks",
            Table::Plans => "plans",
            Table::Equivocations => "equivocations",
            Table::Delivered => "delivered",
            Table::Handed => "handed",
            Table::MeshUploads => "mesh_uploads",
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
            StoreOp::Delete { table, key } => write!(f, "Delete({}, {} key bytes)", table.name(), key.len()),
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

/// A store's rows as read at start, by table. Restore takes the large tables' rows
/// ([`Rows::TAKEN`]) as it decodes them, so that each row's bytes are freed once what it holds is
/// in memory; a driver may also hand those tables over unread, as sources it reads as restore
/// goes ([`Rows::streaming`]), so that the store is never held in memory whole.
pub struct Rows {
    by_table: BTreeMap<Table, Vec<StoredRow>>,
    streamed: BTreeMap<Table, RowSource>,
    empty: bool,
}

impl From<Vec<StoredRow>> for Rows {
    fn from(rows: Vec<StoredRow>) -> Rows {
        Rows::new(rows)
    }
}

/// One table's rows, read from a driver's store as restore takes them, or why they could not be.
pub type RowSource = Box<dyn Iterator<Item = Result<StoredRow, String>> + Send>;

impl Rows {
    /// The tables restore takes row by row rather than reading in place: a store's largest.
    pub const TAKEN: [Table; 4] = [Table::Entries, Table::Plans, Table::Inbox, Table::AccessLog];

    pub fn new(rows: Vec<StoredRow>) -> Rows {
        let empty = rows.is_empty();
        let mut by_table = BTreeMap::<Table, Vec<StoredRow>>::new();
        for row in rows {
            by_table.entry(row.table).or_default().push(row);
        }
        Rows { by_table, streamed: BTreeMap::new(), empty }
    }

    /// These rows, with each of the [`Rows::TAKEN`] tables read from the source `source_of` gives
    /// for it, as restore takes them (`rows` then leaves those tables out).
    pub fn streaming(mut self, mut source_of: impl FnMut(Table) -> RowSource) -> Rows {
        for table in Rows::TAKEN {
            let mut source = source_of(table).peekable();
            self.empty &= source.peek().is_none();
            self.streamed.insert(table, Box::new(source));
        }
        self
    }

    /// Whether the store held no row at all (a new node).
    pub fn store_was_empty(&self) -> bool {
        self.empty
    }
}

/// Why a stored row cannot be read: the local store is corrupt or foreign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A key does not have the table's form.
    #[error("table {0}: a key is malformed")]
    Key(&'static str),
    /// The store could not be read.
    #[error("table {table}: the store could not be read: {reason}")]
    Read { table: &'static str, reason: String },
    /// A value does not decode.
    #[error("table {table}: a value does not decode: {source}")]
    Value { table: &'static str, source: DecodeError },
    /// A row's key and value disagree (an entry filed under another origin or sequence...).
    #[error("table {0}: a row's key does not match its value")]
    Mismatch(&'static str),
    /// The store was written with another schema version.
    #[error("the store has schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { found: u32 },
    /// The rows contradict each other (a head whose root its entries do not reproduce...).
    #[error("table {table}: {problem}")]
    Inconsistent { table: &'static str, problem: &'static str },
}

/// A table with typed keys and values.
pub struct TableDef<K, V> {
    pub table: Table,
    encode_key: fn(&K) -> Vec<u8>,
    decode_key: fn(&[u8]) -> Option<K>,
    _value: PhantomData<fn() -> V>,
}

impl<K, V: Serialize + DeserializeOwned> TableDef<K, V> {
    /// The op that writes `value` at `key`.
    pub fn put(&self, key: &K, value: &V) -> StoreOp {
        StoreOp::Put { table: self.table, key: (self.encode_key)(key), value: codec::encode(value) }
    }

    /// The op that deletes the row at `key`.
    pub fn delete(&self, key: &K) -> StoreOp {
        StoreOp::Delete { table: self.table, key: (self.encode_key)(key) }
    }

    /// The key bytes of `key`.
    pub fn key(&self, key: &K) -> Vec<u8> {
        (self.encode_key)(key)
    }

    /// The key these bytes hold, if they have the table's form.
    pub fn parse_key(&self, bytes: &[u8]) -> Option<K> {
        (self.decode_key)(bytes)
    }

    /// Decodes a row of this table.
    pub fn decode(&self, row: &StoredRow) -> Result<(K, V), RowError> {
        let name = self.table.name();
        let key = (self.decode_key)(&row.key).ok_or(RowError::Key(name))?;
        let value =
            codec::decode(&row.value, ROW_BYTES_MAX).map_err(|source| RowError::Value { table: name, source })?;
        Ok((key, value))
    }

    /// Decodes every row of this table among `rows`.
    pub fn decode_all<'a>(&'a self, rows: &'a [StoredRow]) -> impl Iterator<Item = Result<(K, V), RowError>> + 'a {
        rows.iter().filter(move |r| r.table == self.table).map(move |r| self.decode(r))
    }

    /// Decodes every row of this table among `rows`, leaving them there. Not for the
    /// [`Rows::TAKEN`] tables, which a driver may hand over as sources: those are taken.
    pub fn read<'a>(&'a self, rows: &'a Rows) -> impl Iterator<Item = Result<(K, V), RowError>> + 'a {
        rows.by_table.get(&self.table).into_iter().flatten().map(move |r| self.decode(r))
    }

    /// Takes this table's rows out of `rows`, decoding each and freeing its bytes in turn.
    pub fn take<'a>(&'a self, rows: &mut Rows) -> impl Iterator<Item = Result<(K, V), RowError>> + 'a {
        let held = rows.by_table.remove(&self.table).unwrap_or_default().into_iter().map(Ok);
        let streamed = rows.streamed.remove(&self.table).into_iter().flatten();
        let name = self.table.name();
        held.chain(streamed).map(move |r| match r {
            Ok(row) => self.decode(&row),
            Err(reason) => Err(RowError::Read { table: name, reason }),
        })
    }
}

fn origin_seq(key: &(OdsCode, u64)) -> Vec<u8> {
    let mut k = key.0.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&key.1.to_be_bytes());
    k
}

fn parse_origin_seq(bytes: &[u8]) -> Option<(OdsCode, u64)> {
    let zero = bytes.iter().position(|b| *b == 0)?;
    let origin = OdsCode::parse(std::str::from_utf8(&bytes[..zero]).ok()?).ok()?;
    let seq: [u8; 8] = bytes.get(zero + 1..)?.try_into().ok()?;
    Some((origin, u64::from_be_bytes(seq)))
}

fn origin(key: &OdsCode) -> Vec<u8> {
    key.as_str().as_bytes().to_vec()
}

fn parse_origin(bytes: &[u8]) -> Option<OdsCode> {
    OdsCode::parse(std::str::from_utf8(bytes).ok()?).ok()
}

fn lookup(key: &LookupId) -> Vec<u8> {
    key.0.to_vec()
}

fn parse_lookup(bytes: &[u8]) -> Option<LookupId> {
    Some(LookupId(bytes.try_into().ok()?))
}

fn at_lookup(key: &(Timestamp, LookupId)) -> Vec<u8> {
    let mut k = key.0.as_millis().to_be_bytes().to_vec();
    k.extend_from_slice(&key.1.0);
    k
}

fn parse_at_lookup(bytes: &[u8]) -> Option<(Timestamp, LookupId)> {
    let (at, id) = bytes.split_at_checked(8)?;
    Some((Timestamp(u64::from_be_bytes(at.try_into().ok()?)), parse_lookup(id)?))
}

fn outbox(key: &(LookupId, OdsCode)) -> Vec<u8> {
    let mut k = key.0.0.to_vec();
    k.extend_from_slice(key.1.as_str().as_bytes());
    k
}

fn parse_outbox(bytes: &[u8]) -> Option<(LookupId, OdsCode)> {
    let (id, code) = bytes.split_at_checked(16)?;
    Some((parse_lookup(id)?, parse_origin(code)?))
}

fn version(key: &u64) -> Vec<u8> {
    key.to_be_bytes().to_vec()
}

fn parse_version(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn plan(key: &PlanRef) -> Vec<u8> {
    key.as_str().as_bytes().to_vec()
}

fn parse_plan(bytes: &[u8]) -> Option<PlanRef> {
    PlanRef::parse(std::str::from_utf8(bytes).ok()?).ok().filter(|r| r.as_str().as_bytes() == bytes)
}

fn meta(key: &&'static str) -> Vec<u8> {
    key.as_bytes().to_vec()
}

fn parse_meta(bytes: &[u8]) -> Option<&'static str> {
    (bytes == b"schema").then_some("schema")
}

const fn def<K, V>(table: Table, encode_key: fn(&K) -> Vec<u8>, decode_key: fn(&[u8]) -> Option<K>) -> TableDef<K, V> {
    TableDef { table, encode_key, decode_key, _value: PhantomData }
}

use crate::authority::{Acknowledgement, InboxItem};
use crate::directory::SignedDirectory;
use crate::feed::{SignedEntry, SignedHead};
use crate::hub::{DeliveredRecord, OutboxRecord};
use crate::records::{AccessEvent, Plan};
use crate::sign::Signed;

/// Two signed records of one origin and sequence that differ.
pub type EquivocationProof = (Vec<u8>, Vec<u8>);

pub const META: TableDef<&'static str, u32> = def(Table::Meta, meta, parse_meta);
pub const ENTRIES: TableDef<(OdsCode, u64), SignedEntry> = def(Table::Entries, origin_seq, parse_origin_seq);
pub const HEADS: TableDef<OdsCode, SignedHead> = def(Table::Heads, origin, parse_origin);
pub const MARKS: TableDef<OdsCode, u64> = def(Table::Marks, origin, parse_origin);
pub const DIRECTORY: TableDef<u64, SignedDirectory> = def(Table::Directory, version, parse_version);
pub const ACCESS_LOG: TableDef<(Timestamp, LookupId), Signed<AccessEvent>> =
    def(Table::AccessLog, at_lookup, parse_at_lookup);
pub const OUTBOX: TableDef<(LookupId, OdsCode), OutboxRecord> = def(Table::Outbox, outbox, parse_outbox);
pub const DELIVERED: TableDef<(LookupId, OdsCode), DeliveredRecord> = def(Table::Delivered, outbox, parse_outbox);
pub const INBOX: TableDef<LookupId, InboxItem> = def(Table::Inbox, lookup, parse_lookup);
pub const INBOX_ACKS: TableDef<LookupId, Acknowledgement> = def(Table::InboxAcks, lookup, parse_lookup);
pub const PLANS: TableDef<PlanRef, Plan> = def(Table::Plans, plan, parse_plan);
pub const EQUIVOCATIONS: TableDef<(OdsCode, u64), EquivocationProof> =
    def(Table::Equivocations, origin_seq, parse_origin_seq);

/// The table in which schema version 2 kept the access log, keyed by lookup id alone.
pub const ACCESS_LOG_V2: &str = "access_log";

/// A row of version 2's access log ([`ACCESS_LOG_V2`]) as this version keeps it. The hub's
/// answer time was not recorded then, so the row is filed under the lookup's own time (within
/// the clock skew of it).
pub fn access_row_from_v2(key: &[u8], value: &[u8]) -> Result<StoredRow, RowError> {
    let id = parse_lookup(key).ok_or(RowError::Key(ACCESS_LOG_V2))?;
    let signed: Signed<AccessEvent> =
        codec::decode(value, ROW_BYTES_MAX).map_err(|source| RowError::Value { table: ACCESS_LOG_V2, source })?;
    if signed.body.lookup_id != id {
        return Err(RowError::Mismatch(ACCESS_LOG_V2));
    }
    Ok(StoredRow { table: Table::AccessLog, key: ACCESS_LOG.key(&(signed.body.at, id)), value: value.to_vec() })
}

/// The op that records this build's schema version (a driver writes it into a new store).
pub fn schema_op() -> StoreOp {
    META.put(&"schema", &SCHEMA_VERSION)
}

/// Checks the stored schema version: a store with rows must carry this build's.
pub fn check_schema(rows: &Rows) -> Result<(), RowError> {
    let mut found = None;
    for r in META.read(rows) {
        found = Some(r?.1);
    }
    match found {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(RowError::Schema { found: v }),
        None if rows.store_was_empty() => Ok(()),
        // Rows but no version: written before versions were recorded.
        None => Err(RowError::Schema { found: 1 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_malformed_keys_are_refused_by_table_name() {
        let code = OdsCode::parse("204").unwrap();
        let row = StoredRow { table: Table::Marks, key: MARKS.key(&code), value: codec::encode(&7u64) };
        assert_eq!(MARKS.decode(&row).unwrap(), (code.clone(), 7));
        let bad = StoredRow { table: Table::Marks, key: b"lower".to_vec(), value: codec::encode(&7u64) };
        assert_eq!(MARKS.decode(&bad).unwrap_err(), RowError::Key("marks"));
        let truncated = StoredRow { table: Table::Marks, key: MARKS.key(&code), value: vec![1, 2] };
        assert!(matches!(MARKS.decode(&truncated), Err(RowError::Value { table: "marks", .. })));
        let k = (LookupId([3; 16]), code);
        assert_eq!(parse_outbox(&outbox(&k)), Some(k));
    }

    #[test]
    fn streamed_rows_are_decoded_as_restore_takes_them_once_and_a_failed_read_is_named() {
        let at = crate::time::Timestamp(5);
        let (id, setting) = (LookupId([1; 16]), OdsCode::parse("RXH01").unwrap());
        let person = crate::records::Person { id: "U1".into(), name: "A Nurse".into(), role: "Nurse".into() };
        let nhs = crate::ids::NhsNumber::parse("943 476 5919").unwrap();
        let signed =
            crate::sign::Identity::from_seed([7; 32]).sign(AccessEvent { lookup_id: id, setting, person, at, nhs });
        let StoreOp::Put { table, key, value } = ACCESS_LOG.put(&(at, id), &signed) else { unreachable!() };
        let row = StoredRow { table, key, value };
        let mut rows = Rows::new(vec![]).streaming(|table| match table {
            Table::AccessLog => Box::new(vec![Ok(row.clone())].into_iter()),
            Table::Entries => Box::new(vec![Err("the disk failed".to_string())].into_iter()),
            _ => Box::new(std::iter::empty()),
        });
        assert!(!rows.store_was_empty());
        assert_eq!(ACCESS_LOG.take(&mut rows).collect::<Vec<_>>(), vec![Ok(((at, id), signed))]);
        assert_eq!(ACCESS_LOG.take(&mut rows).count(), 0, "taken once");
        let failed = ENTRIES.take(&mut rows).next().map(|r| r.map(|_| ()));
        assert_eq!(failed, Some(Err(RowError::Read { table: "entries", reason: "the disk failed".into() })));
        assert!(Rows::new(vec![]).streaming(|_| Box::new(std::iter::empty())).store_was_empty());
    }

    #[test]
    fn a_store_of_another_schema_version_is_refused() {
        assert_eq!(check_schema(&Rows::new(vec![])), Ok(()));
        let StoreOp::Put { table, key, .. } = schema_op() else { unreachable!() };
        let old = StoredRow { table, key, value: codec::encode(&1u32) };
        assert_eq!(check_schema(&Rows::new(vec![old])), Err(RowError::Schema { found: 1 }));
        let unversioned = StoredRow { table: Table::Marks, key: b"204".to_vec(), value: codec::encode(&1u64) };
        assert_eq!(check_schema(&Rows::new(vec![unversioned])), Err(RowError::Schema { found: 1 }));
    }
}
