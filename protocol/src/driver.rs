//! What every driver needs besides the [`Machine`](crate::machine::Machine) itself: an
//! in-memory disk with the same semantics as the node's store (batches applied whole, in order),
//! for the test harness and the simulator.

use crate::machine::ReadRequest;
use crate::schema::{StoreOp, StoredRow, Table, WriteBatch};
use std::collections::BTreeMap;

/// A node's durable rows, by table and key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisk {
    rows: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Applies a batch whole, its operations in order.
    pub fn apply(&mut self, batch: &WriteBatch) {
        for op in &batch.ops {
            match op {
                StoreOp::Put { table, key, value } => {
                    self.rows.insert((*table, key.clone()), value.clone());
                }
                StoreOp::Delete { table, key } => {
                    self.rows.remove(&(*table, key.clone()));
                }
            }
        }
    }

    /// Every row, as a driver hands them to `Machine::restore`.
    pub fn rows(&self) -> Vec<StoredRow> {
        self.rows
            .iter()
            .map(|((table, key), value)| StoredRow { table: *table, key: key.clone(), value: value.clone() })
            .collect()
    }

    /// The rows of one table.
    pub fn table(&self, table: Table) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.rows.range((table, vec![])..).take_while(move |((t, _), _)| *t == table).map(|((_, k), v)| (k, v))
    }

    /// The rows a machine asked to read back, those the disk holds.
    pub fn read(&self, request: &ReadRequest) -> Vec<StoredRow> {
        let row = |key: &Vec<u8>| {
            let value = self.get(request.table, key)?.clone();
            Some(StoredRow { table: request.table, key: key.clone(), value })
        };
        request.keys.iter().filter_map(row).collect()
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Option<&Vec<u8>> {
        self.rows.get(&(table, key.to_vec()))
    }

    pub fn insert(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.rows.insert((table, key), value);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn clear(&mut self) {
        self.rows.clear();
    }
}
