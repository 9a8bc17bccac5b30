//! What every driver needs besides the [`Machine`](crate::machine::Machine) itself: an
//! in-memory disk with the same semantics as the node's store (batches applied whole, in order),
//! for the test harness and the simulator.

use crate::machine::ReadRequest;
use crate::schema::{StoreOp, StoredRow, Table, WriteBatch};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// A node's durable rows, by table and key.
#[derive(Clone, Default)]
pub struct MemDisk {
    /// A map for each table: a row's key is then its own bytes, looked up without a copy.
    rows: BTreeMap<Table, TableRows>,
    shared: Option<SharedEntries>,
}

/// One table's rows: key to value.
type TableRows = BTreeMap<Box<[u8]>, Arc<[u8]>>;

/// Entry rows that several disks hold byte for byte alike (every hub's copy of an authority's
/// entry), kept once for all the disks made with it. In a simulation of England each entry is on
/// eight disks, and without this the copies are the largest part of its memory.
#[derive(Clone, Default)]
pub struct SharedEntries(Arc<Mutex<Interned>>);

#[derive(Default)]
struct Interned {
    values: HashSet<Arc<[u8]>>,
    /// How many values were held after the last sweep of those no disk holds any more.
    after_sweep: usize,
}

/// The values no disk holds any more are let go once the values held have doubled since the
/// last sweep, and never below twice this many.
const SWEEP_FROM: usize = 1024;

impl SharedEntries {
    /// The one copy of `value`.
    fn intern(&self, value: &[u8]) -> Arc<[u8]> {
        let mut interned = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = interned.values.get(value) {
            return held.clone();
        }
        if interned.values.len() >= 2 * interned.after_sweep.max(SWEEP_FROM) {
            interned.values.retain(|v| Arc::strong_count(v) > 1);
            interned.after_sweep = interned.values.len();
        }
        let value: Arc<[u8]> = Arc::from(value);
        interned.values.insert(value.clone());
        value
    }
}

/// How many rows each table holds: the rows themselves are case data.
impl std::fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.rows.iter().map(|(t, rows)| (t, rows.len()))).finish()
    }
}

impl PartialEq for MemDisk {
    fn eq(&self, other: &MemDisk) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for MemDisk {}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// A disk that keeps its entry rows in `shared`, once with every other disk made with it.
    pub fn sharing(shared: SharedEntries) -> MemDisk {
        MemDisk { rows: BTreeMap::new(), shared: Some(shared) }
    }

    fn value(&self, table: Table, value: &[u8]) -> Arc<[u8]> {
        match &self.shared {
            Some(shared) if table == Table::Entries => shared.intern(value),
            _ => Arc::from(value),
        }
    }

    /// Applies a batch whole, its operations in order.
    pub fn apply(&mut self, batch: &WriteBatch) {
        for op in &batch.ops {
            match op {
                StoreOp::Put { table, key, value } => {
                    let value = self.value(*table, value);
                    self.rows.entry(*table).or_default().insert(key.as_slice().into(), value);
                }
                StoreOp::Delete { table, key } => {
                    if let Some(rows) = self.rows.get_mut(table) {
                        rows.remove(key.as_slice());
                    }
                }
            }
        }
    }

    /// Every row.
    pub fn rows(&self) -> Vec<StoredRow> {
        self.load(|_, _| true)
    }

    /// The rows whose table and key `keep` accepts; a driver hands `Machine::restore` those
    /// [`crate::machine::RoleConfig::restores`] accepts.
    pub fn load(&self, mut keep: impl FnMut(Table, &[u8]) -> bool) -> Vec<StoredRow> {
        let kept = self.iter().filter(|(table, key, _)| keep(*table, key));
        kept.map(|(table, key, value)| StoredRow { table, key: key.to_vec(), value: value.to_vec() }).collect()
    }

    fn iter(&self) -> impl Iterator<Item = (Table, &[u8], &[u8])> {
        self.rows.iter().flat_map(|(t, rows)| rows.iter().map(|(k, v)| (*t, &**k, &**v)))
    }

    /// The rows of one table.
    pub fn table(&self, table: Table) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.rows.get(&table).into_iter().flat_map(|rows| rows.iter().map(|(k, v)| (&**k, &**v)))
    }

    /// The rows a machine asked to read back, those the disk holds.
    pub fn read(&self, request: &ReadRequest) -> Vec<StoredRow> {
        let row = |key: &Vec<u8>| {
            let value = self.get(request.table, key)?.to_vec();
            Some(StoredRow { table: request.table, key: key.clone(), value })
        };
        request.keys.iter().filter_map(row).collect()
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Option<&[u8]> {
        self.rows.get(&table)?.get(key).map(|v| &**v)
    }

    pub fn insert(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        let value = self.value(table, &value);
        self.rows.entry(table).or_default().insert(key.into(), value);
    }

    pub fn len(&self) -> usize {
        self.rows.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.values().all(BTreeMap::is_empty)
    }

    pub fn clear(&mut self) {
        self.rows.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(table: Table, key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch { id: 1, ops: vec![StoreOp::Put { table, key: key.to_vec(), value: value.to_vec() }] }
    }

    fn held(shared: &SharedEntries) -> usize {
        shared.0.lock().unwrap().values.len()
    }

    #[test]
    fn disks_sharing_entries_hold_one_copy_each_disk_its_own_rows() {
        let shared = SharedEntries::default();
        let (mut a, mut b) = (MemDisk::sharing(shared.clone()), MemDisk::sharing(shared.clone()));
        a.apply(&put(Table::Entries, b"204/1", b"entry one"));
        b.apply(&put(Table::Entries, b"204/1", b"entry one"));
        let (in_a, in_b) = (a.get(Table::Entries, b"204/1").unwrap(), b.get(Table::Entries, b"204/1").unwrap());
        assert!(std::ptr::eq(in_a, in_b), "one copy for both disks");
        // Other tables are each disk's own.
        a.apply(&put(Table::Heads, b"204", b"head"));
        b.apply(&put(Table::Heads, b"204", b"head"));
        assert!(!std::ptr::eq(a.get(Table::Heads, b"204").unwrap(), b.get(Table::Heads, b"204").unwrap()));
        assert_eq!(held(&shared), 1);
        // A delete or a wipe on one disk leaves the other's row as it was.
        b.apply(&WriteBatch { id: 2, ops: vec![StoreOp::Delete { table: Table::Entries, key: b"204/1".to_vec() }] });
        b.clear();
        assert_eq!(a.get(Table::Entries, b"204/1"), Some(&b"entry one"[..]));
        assert_eq!(a.rows().len(), 2);
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
    }

    #[test]
    fn shared_entries_no_disk_holds_are_let_go() {
        let shared = SharedEntries::default();
        let mut disk = MemDisk::sharing(shared.clone());
        let last = 2 * SWEEP_FROM - 1;
        for n in 0..=last {
            disk.apply(&put(Table::Entries, b"204/1", n.to_string().as_bytes()));
        }
        assert_eq!(held(&shared), 2 * SWEEP_FROM, "each value replaced the one before it on the disk");
        disk.apply(&put(Table::Entries, b"204/2", b"another"));
        // The sweep before the new value kept only what a disk still holds: the last value.
        assert_eq!(held(&shared), 2);
        assert_eq!(disk.get(Table::Entries, b"204/1"), Some(last.to_string().as_bytes()));
    }
}
