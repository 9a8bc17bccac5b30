//! The node's durable storage: one redb file holding every table the protocol declares.
//!
//! # What it stores
//!
//! Every table in [`Table::ALL`] (docs/storage.md), each a redb table of raw `&[u8]` keys and
//! values named by [`Table::name`]. The encodings of keys and values belong to the protocol
//! crate's `schema`; this module never looks inside them, and never puts them in an error or a
//! log line. The schema version is a row like any other, checked when the machine is restored.
//!
//! # Group commit
//!
//! The state machines hand out [`WriteBatch`]es. [`Store::submit`] (or the async
//! [`Store::commit`]) queues a batch on a channel to one dedicated writer thread, the only place
//! that writes to the file. The writer takes the oldest queued batch and everything queued behind
//! it, up to [`MAX_BATCHES_PER_COMMIT`] batches and [`MAX_OPS_PER_COMMIT`] operations (a single
//! larger batch is committed on its own), applies them in order in **one** write transaction with
//! [`Durability::Immediate`], commits, and only then wakes each batch's waiter with `Ok(batch.id)`.
//! One fsync thus covers every batch that arrived while the previous commit was on disk.
//!
//! # Guarantees
//!
//! - **Durability:** a batch's waiter is woken with `Ok` only after the commit that holds it is
//!   durable (redb's `commit` with [`Durability::Immediate`] has returned).
//! - **Atomicity:** every batch is applied whole or not at all. If a group's commit fails, nothing
//!   in that group is applied, and every waiter of the group gets the error.
//! - **Ordering:** batches become durable in submission order (the order in which `submit` /
//!   `commit` calls enqueue them; calls made one after another from one task are in that order).
//!   Within a group, batches and the operations inside each batch are applied in order, so a later
//!   operation on a key wins. Groups are committed one after another.
//! - **Fail-stop:** after a failed commit the writer applies nothing more: every later batch gets
//!   [`StoreError::Poisoned`]. The set of durable batches is therefore always a prefix of the
//!   submission order; the node should stop and restart from what [`Store::load_all`] returns.
//!
//! # Reads
//!
//! [`Store::rows_to_restore`] reads the rows the node needs once at start; [`Store::get`] and
//! [`Store::scan`] serve API queries from a fresh read transaction each, which sees every commit
//! whose waiter has been woken. Reads never wait for the writer.
//!
//! # Sharing and shutdown
//!
//! [`Store`] is a cheap handle: clones share the same file and writer. When the last clone is
//! dropped the channel closes, the writer commits every batch still queued (waking their waiters),
//! the thread is joined and the file is closed; that drop therefore blocks for the final commit.
//! The queue is unbounded, so `submit` never blocks the event loop; callers bound the number of
//! batches they keep in flight.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use cpis_protocol::machine::RoleConfig;
use cpis_protocol::schema::{self, RowSource, Rows, StoreOp, StoredRow, Table, WriteBatch};
use cpis_protocol::time::Timestamp;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

/// Most batches one write transaction takes from the queue.
pub const MAX_BATCHES_PER_COMMIT: usize = 1024;

/// Most operations one write transaction takes from the queue, unless a single batch holds more
/// (a batch is never split: it is then committed on its own).
pub const MAX_OPS_PER_COMMIT: usize = 65_536;

/// Most memory redb's page cache may take (its own default is 1 GiB). The node keeps what it
/// needs on every request in its own memory and reads the store only for bodies and history, so
/// a small cache costs a lookup nothing; 32 MiB holds the interior pages of every table at
/// national size.
const CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What a batch's waiter receives: the batch id once durable, or why it is not.
pub type CommitResult = Result<u64, StoreError>;

/// The receiving end [`Store::submit`] returns; resolves once the batch's commit is durable or
/// has failed.
pub type CommitReceiver = oneshot::Receiver<CommitResult>;

/// One row of a table as [`Store::scan`] returns it: `(key, value)`.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Why the store could not do what was asked. Never holds a row's key or value.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created or opened, or its tables created.
    #[error("cannot open the store file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    /// A read or write transaction could not be started on the store file.
    #[error("cannot begin a transaction on the store file {}", path.display())]
    Begin {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    /// A table could not be opened inside a transaction.
    #[error("cannot open table {table}")]
    Table {
        table: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    /// A row of a table could not be read.
    #[error("cannot read from table {table}")]
    Read {
        table: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    /// A put or delete could not be applied to a table; its whole group was abandoned.
    #[error("cannot write to table {table}")]
    Write {
        table: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    /// The group's transaction could not be made durable; nothing in it was applied.
    #[error("cannot commit to the store file {}", path.display())]
    Commit {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    /// An earlier commit failed, so the writer applies nothing more (durable batches must stay a
    /// prefix of the submission order); restart the node.
    #[error("an earlier commit failed; the store accepts no more writes")]
    Poisoned,
    /// The writer thread has stopped (the store is shutting down, or the writer panicked).
    #[error("the store's writer has stopped")]
    Closed,
    /// A store of an earlier schema version could not be brought up to this one: a row did not
    /// convert. Nothing was changed by the commit that met it.
    #[error("cannot bring the store file {} up to schema version {}: {source}", path.display(), schema::SCHEMA_VERSION)]
    Upgrade { path: PathBuf, source: schema::RowError },
}

/// Rows of an earlier schema version converted in one commit when a store is brought up to date.
const UPGRADE_ROWS_PER_COMMIT: usize = 50_000;

/// Counters of the writer's work since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed durably.
    pub commits: u64,
    /// Batches made durable by those commits.
    pub batches: u64,
    /// Operations applied by those commits.
    pub ops: u64,
}

/// A handle on the node's redb file. Cheap to clone; every clone shares one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    stats: Arc<Counters>,
    /// `None` only while dropping: taking it closes the channel and stops the writer.
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what is queued and return.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
    }
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
}

/// One queued batch and the waiter to wake once it is durable.
struct Job {
    batch: WriteBatch,
    reply: oneshot::Sender<CommitResult>,
}

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The redb definition of a protocol table; the one place tables are named.
fn definition(table: Table) -> Def {
    TableDefinition::new(table.name())
}

/// The position of a table in [`Table::ALL`] (its declaration order).
fn index(table: Table) -> usize {
    table as usize
}

fn arc(e: impl Into<redb::Error>) -> Arc<redb::Error> {
    Arc::new(e.into())
}

impl Store {
    /// Opens the store file at `path`, creating it if missing, creates every table in
    /// [`Table::ALL`] that does not exist yet, and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: redb::Error| StoreError::Open { path: path.to_path_buf(), source: Arc::new(e) };
        let db = Database::builder().set_cache_size(CACHE_BYTES_MAX).create(path).map_err(|e| open_err(e.into()))?;
        // Owner-only, whatever the umask (and tightened if an older file was looser).
        #[cfg(unix)]
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        let mut txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        txn.set_durability(Durability::Immediate).map_err(|e| open_err(e.into()))?;
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(|e| open_err(e.into()))?;
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        upgrade_from_v2(&db, path)?;

        let db = Arc::new(db);
        let stats = Arc::new(Counters::default());
        let (queue, jobs) = mpsc::channel();
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.to_path_buf(),
            stats: Arc::clone(&stats),
            jobs,
            carried: None,
            poisoned: false,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| open_err(e.into()))?;
        Ok(Store {
            inner: Arc::new(Inner { db, path: path.to_path_buf(), stats, queue: Some(queue), writer: Some(writer) }),
        })
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Every row of every table, table by table in [`Table::ALL`] order, keys ascending within a
    /// table.
    pub fn load_all(&self) -> Result<Vec<StoredRow>, StoreError> {
        load_from(&self.begin_read()?, Table::ALL, |_, _| true)
    }

    /// What a machine restores from at start: the rows
    /// [`cpis_protocol::machine::RoleConfig::restores`] accepts, those of the large tables
    /// ([`Rows::TAKEN`]) read one by one as restore takes them, from one read transaction.
    pub fn rows_to_restore(&self, role: &RoleConfig, now: Timestamp) -> Result<Rows, StoreError> {
        let txn = self.begin_read()?;
        let held_tables = Table::ALL.into_iter().filter(|t| !Rows::TAKEN.contains(t));
        let held = load_from(&txn, held_tables, |table, key| role.restores(table, key, now))?;
        let mut sources = std::collections::BTreeMap::new();
        for table in Rows::TAKEN {
            let read_err = move |e: redb::StorageError| StoreError::Read { table: table.name(), source: arc(e) };
            let t = open_read(&txn, table)?;
            // Rows before the first key restore uses are not read at all; every one after it is.
            let range = match role.first_restored_key(table, now) {
                Some(first) => t.range::<&[u8]>(first.as_slice()..),
                None => t.range::<&[u8]>(..),
            }
            .map_err(read_err)?;
            let rows = range.map(move |entry| match entry {
                Ok((key, value)) => Ok(StoredRow { table, key: key.value().to_vec(), value: value.value().to_vec() }),
                Err(e) => Err(read_err(e).to_string()),
            });
            sources.insert(table, Box::new(rows) as RowSource);
        }
        let empty = || Box::new(std::iter::empty()) as RowSource;
        Ok(Rows::new(held).streaming(|table| sources.remove(&table).unwrap_or_else(empty)))
    }

    /// The value at `key` in `table`, as of the latest durable commit.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let t = open_read(&txn, table)?;
        let read_err = |e: redb::StorageError| StoreError::Read { table: table.name(), source: arc(e) };
        Ok(t.get(key).map_err(read_err)?.map(|v| v.value().to_vec()))
    }

    /// The rows at `keys` in `table` (those it holds), in one read transaction.
    pub fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, StoreError> {
        let txn = self.begin_read()?;
        let t = open_read(&txn, table)?;
        let read_err = |e: redb::StorageError| StoreError::Read { table: table.name(), source: arc(e) };
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = t.get(key.as_slice()).map_err(read_err)? {
                rows.push((key.clone(), value.value().to_vec()));
            }
        }
        Ok(rows)
    }

    /// Every `(key, value)` of `table`, keys ascending, as of the latest durable commit.
    pub fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        let txn = self.begin_read()?;
        let mut rows = Vec::new();
        scan_into(&txn, table, |key, value| rows.push((key.to_vec(), value.to_vec())))?;
        Ok(rows)
    }

    /// Every key of `table`, ascending, as of the latest durable commit (without copying values).
    pub fn keys(&self, table: Table) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let t = open_read(&txn, table)?;
        let read_err = |e: redb::StorageError| StoreError::Read { table: table.name(), source: arc(e) };
        let mut keys = Vec::new();
        for entry in t.iter().map_err(read_err)? {
            keys.push(entry.map_err(read_err)?.0.value().to_vec());
        }
        Ok(keys)
    }

    /// Queues `batch` for the writer and returns at once. The receiver resolves with
    /// `Ok(batch.id)` once the batch is durable, or with the error that kept it from being so.
    /// Batches become durable in the order they are submitted.
    pub fn submit(&self, batch: WriteBatch) -> CommitReceiver {
        let (reply, waiter) = oneshot::channel();
        let job = Job { batch, reply };
        let sent = match &self.inner.queue {
            Some(queue) => queue.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        };
        if let Err(job) = sent {
            // The writer has gone: answer here so that the waiter never hangs.
            let _ = job.reply.send(Err(StoreError::Closed));
        }
        waiter
    }

    /// Queues `batch` and waits until it is durable; returns its id. The batch is queued when the
    /// future is first polled (use [`Store::submit`] to queue it at once); once queued, dropping
    /// the future does not withdraw it.
    pub async fn commit(&self, batch: WriteBatch) -> CommitResult {
        self.submit(batch).await.unwrap_or(Err(StoreError::Closed))
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.stats;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
        }
    }

    /// Writes a consistent copy of the store, as of the latest durable commit, to a new file at
    /// `to` (refused if it exists; created owner-only). Safe while the node writes: the copy is
    /// read from one read transaction, which sees a fixed snapshot. Returns the rows copied.
    pub fn backup_to(&self, to: &Path) -> Result<u64, StoreError> {
        let open_err = |e: redb::Error| StoreError::Open { path: to.to_path_buf(), source: Arc::new(e) };
        let file = create_private_file(to).map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        drop(file);
        let copy = Database::create(to).map_err(|e| open_err(e.into()))?;
        let read = self.begin_read()?;
        let mut write = copy.begin_write().map_err(|e| open_err(e.into()))?;
        write.set_durability(Durability::Immediate).map_err(|e| open_err(e.into()))?;
        let mut rows = 0u64;
        for table in Table::ALL {
            let mut target = write
                .open_table(definition(table))
                .map_err(|e| StoreError::Table { table: table.name(), source: arc(e) })?;
            let write_err = |e: redb::StorageError| StoreError::Write { table: table.name(), source: arc(e) };
            let mut failed = None;
            scan_into(&read, table, |key, value| {
                if failed.is_none()
                    && let Err(e) = target.insert(key, value)
                {
                    failed = Some(write_err(e));
                }
                rows += 1;
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        write.commit().map_err(|e| StoreError::Commit { path: to.to_path_buf(), source: arc(e) })?;
        Ok(rows)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.inner.db.begin_read().map_err(|e| StoreError::Begin { path: self.inner.path.clone(), source: arc(e) })
    }
}

/// Brings a store of schema version 2 up to this version: its access log moves from the table
/// keyed by lookup id ([`schema::ACCESS_LOG_V2`]) to the one keyed by time
/// ([`schema::access_row_from_v2`]), [`UPGRADE_ROWS_PER_COMMIT`] rows a commit, and the last
/// commit drops the old table and writes the new version. A node stopped half way goes on from
/// where it stopped at its next start. Any other version is left for restore to refuse.
fn upgrade_from_v2(db: &Database, path: &Path) -> Result<(), StoreError> {
    let begin_err = |e: redb::Error| StoreError::Begin { path: path.to_path_buf(), source: Arc::new(e) };
    let table_err = |table: &'static str| move |e: redb::TableError| StoreError::Table { table, source: arc(e) };
    let read = db.begin_read().map_err(|e| begin_err(e.into()))?;
    let meta = open_read(&read, Table::Meta)?;
    let version = meta.get(b"schema".as_slice()).map_err(|e| StoreError::Read { table: "meta", source: arc(e) })?;
    let version = version.map(|v| StoredRow { table: Table::Meta, key: b"schema".to_vec(), value: v.value().to_vec() });
    if !version.is_some_and(|row| schema::META.decode(&row).is_ok_and(|(_, v)| v == 2)) {
        return Ok(());
    }
    drop((meta, read));
    let old: Def = TableDefinition::new(schema::ACCESS_LOG_V2);
    loop {
        let mut txn = db.begin_write().map_err(|e| begin_err(e.into()))?;
        txn.set_durability(Durability::Immediate).map_err(|e| begin_err(e.into()))?;
        let last = {
            let mut from = txn.open_table(old).map_err(table_err(schema::ACCESS_LOG_V2))?;
            let mut to = txn.open_table(definition(Table::AccessLog)).map_err(table_err(Table::AccessLog.name()))?;
            let read_err = |e: redb::StorageError| StoreError::Read { table: schema::ACCESS_LOG_V2, source: arc(e) };
            let mut rows = Vec::new();
            for entry in from.iter().map_err(read_err)?.take(UPGRADE_ROWS_PER_COMMIT) {
                let (key, value) = entry.map_err(read_err)?;
                rows.push((key.value().to_vec(), value.value().to_vec()));
            }
            for (key, value) in &rows {
                let row = schema::access_row_from_v2(key, value)
                    .map_err(|source| StoreError::Upgrade { path: path.to_path_buf(), source })?;
                let write_err = |table| move |e: redb::StorageError| StoreError::Write { table, source: arc(e) };
                to.insert(row.key.as_slice(), row.value.as_slice()).map_err(write_err(Table::AccessLog.name()))?;
                from.remove(key.as_slice()).map_err(write_err(schema::ACCESS_LOG_V2))?;
            }
            rows.len() < UPGRADE_ROWS_PER_COMMIT
        };
        if last {
            txn.delete_table(old).map_err(table_err(schema::ACCESS_LOG_V2))?;
            apply_ops(&txn, [schema::schema_op()].iter())?;
        }
        txn.commit().map_err(|e| StoreError::Commit { path: path.to_path_buf(), source: arc(e) })?;
        if last {
            tracing::info!(path = %path.display(), version = schema::SCHEMA_VERSION, "store brought up to date");
            return Ok(());
        }
    }
}

/// Creates a new file readable only by its owner; refuses an existing one.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn open_read(
    txn: &redb::ReadTransaction,
    table: Table,
) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
    txn.open_table(definition(table)).map_err(|e| StoreError::Table { table: table.name(), source: arc(e) })
}

/// The rows of `tables` whose key `keep` accepts; the others are read past, never held.
fn load_from(
    txn: &redb::ReadTransaction,
    tables: impl IntoIterator<Item = Table>,
    mut keep: impl FnMut(Table, &[u8]) -> bool,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut rows = Vec::new();
    for table in tables {
        scan_into(txn, table, |key, value| {
            if keep(table, key) {
                rows.push(StoredRow { table, key: key.to_vec(), value: value.to_vec() })
            }
        })?;
    }
    Ok(rows)
}

fn scan_into(txn: &redb::ReadTransaction, table: Table, mut row: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
    let t = open_read(txn, table)?;
    let read_err = |e: redb::StorageError| StoreError::Read { table: table.name(), source: arc(e) };
    for entry in t.iter().map_err(read_err)? {
        let (key, value) = entry.map_err(read_err)?;
        row(key.value(), value.value());
    }
    Ok(())
}

/// The write side, owned by the writer thread.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    stats: Arc<Counters>,
    jobs: mpsc::Receiver<Job>,
    /// A job taken from the queue that did not fit in the previous group; it leads the next one.
    carried: Option<Job>,
    /// Set by a failed commit: nothing more is applied.
    poisoned: bool,
}

impl Writer {
    fn run(mut self) {
        while let Some(group) = self.next_group() {
            if self.poisoned {
                for job in group {
                    let _ = job.reply.send(Err(StoreError::Poisoned));
                }
                continue;
            }
            let ops: usize = group.iter().map(|j| j.batch.ops.len()).sum();
            match self.apply(&group) {
                Ok(()) => {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.batches.fetch_add(group.len() as u64, Ordering::Relaxed);
                    self.stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
                    tracing::trace!(batches = group.len(), ops, "store group committed");
                    for job in group {
                        let _ = job.reply.send(Ok(job.batch.id));
                    }
                }
                Err(error) => {
                    self.poisoned = true;
                    tracing::error!(
                        path = %self.path.display(),
                        batches = group.len(),
                        ops,
                        %error,
                        "store commit failed; refusing further writes"
                    );
                    for job in group {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Waits for the oldest queued job and takes it with whatever is queued behind it, within
    /// the per-commit limits. `None` once the channel is closed and drained.
    fn next_group(&mut self) -> Option<Vec<Job>> {
        let first = match self.carried.take() {
            Some(job) => job,
            None => self.jobs.recv().ok()?,
        };
        let mut ops = first.batch.ops.len();
        let mut group = vec![first];
        while group.len() < MAX_BATCHES_PER_COMMIT {
            let Ok(job) = self.jobs.try_recv() else { break };
            if ops + job.batch.ops.len() > MAX_OPS_PER_COMMIT {
                self.carried = Some(job);
                break;
            }
            ops += job.batch.ops.len();
            group.push(job);
        }
        Some(group)
    }

    /// Applies every batch of `group`, in order, in one durable transaction.
    fn apply(&self, group: &[Job]) -> Result<(), StoreError> {
        let mut txn =
            self.db.begin_write().map_err(|e| StoreError::Begin { path: self.path.clone(), source: arc(e) })?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.commit_err(e))?;
        // On an error the transaction is dropped here, which aborts it.
        apply_ops(&txn, group.iter().flat_map(|j| &j.batch.ops))?;
        txn.commit().map_err(|e| self.commit_err(e))?;
        #[cfg(debug_assertions)]
        self.assert_read_back(group);
        Ok(())
    }

    /// The pair of every commit, in debug builds: what was written is what is read back.
    #[cfg(debug_assertions)]
    fn assert_read_back(&self, group: &[Job]) {
        let mut last: std::collections::HashMap<(usize, &[u8]), Option<&[u8]>> = std::collections::HashMap::new();
        for op in group.iter().flat_map(|j| &j.batch.ops) {
            match op {
                StoreOp::Put { table, key, value } => last.insert((index(*table), key), Some(value)),
                StoreOp::Delete { table, key } => last.insert((index(*table), key), None),
            };
        }
        let Ok(txn) = self.db.begin_read() else { return };
        for ((table, key), want) in last {
            let definition = definition(Table::ALL[table]);
            let Ok(t) = txn.open_table(definition) else { continue };
            let got = t.get(key).ok().flatten().map(|v| v.value().to_vec());
            assert_eq!(got.as_deref(), want, "table {}: a committed row does not read back", Table::ALL[table].name());
        }
    }

    fn commit_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Commit { path: self.path.clone(), source: arc(e) }
    }
}

fn apply_ops<'a>(txn: &WriteTransaction, ops: impl Iterator<Item = &'a StoreOp>) -> Result<(), StoreError> {
    // Each table is opened at most once per transaction, when first written.
    let mut tables: [Option<redb::Table<'_, &'static [u8], &'static [u8]>>; Table::ALL.len()] = Default::default();
    for op in ops {
        let table = match op {
            StoreOp::Put { table, .. } | StoreOp::Delete { table, .. } => *table,
        };
        let slot = &mut tables[index(table)];
        let t = match slot {
            Some(t) => t,
            None => {
                let opened = txn.open_table(definition(table));
                slot.insert(opened.map_err(|e| StoreError::Table { table: table.name(), source: arc(e) })?)
            }
        };
        let write_err = |e: redb::StorageError| StoreError::Write { table: table.name(), source: arc(e) };
        match op {
            StoreOp::Put { key, value, .. } => {
                t.insert(key.as_slice(), value.as_slice()).map_err(write_err)?;
            }
            StoreOp::Delete { key, .. } => {
                t.remove(key.as_slice()).map_err(write_err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn put(table: Table, key: &[u8], value: &[u8]) -> StoreOp {
        StoreOp::Put { table, key: key.to_vec(), value: value.to_vec() }
    }

    fn del(table: Table, key: &[u8]) -> StoreOp {
        StoreOp::Delete { table, key: key.to_vec() }
    }

    fn batch(id: u64, ops: Vec<StoreOp>) -> WriteBatch {
        WriteBatch { id, ops }
    }

    fn sorted(mut rows: Vec<StoredRow>) -> Vec<StoredRow> {
        rows.sort_by(|a, b| (a.table, &a.key).cmp(&(b.table, &b.key)));
        rows
    }

    fn row(table: Table, key: &[u8], value: &[u8]) -> StoredRow {
        StoredRow { table, key: key.to_vec(), value: value.to_vec() }
    }

    #[tokio::test]
    async fn store_round_trip_put_delete_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        {
            let store = Store::open(&path).unwrap();
            assert!(store.load_all().unwrap().is_empty());
            let id = store
                .commit(batch(
                    1,
                    vec![
                        put(Table::Entries, b"ab\0\0\0\0\0\0\0\0\x01", b"entry-1"),
                        put(Table::Entries, b"ab\0\0\0\0\0\0\0\0\x02", b"entry-2"),
                        put(Table::Marks, b"ab", &2u64.to_be_bytes()),
                        put(Table::Directory, b"current", b"dir-v1"),
                        put(Table::Outbox, b"lookup-0000000001xx", b"out"),
                    ],
                ))
                .await
                .unwrap();
            assert_eq!(id, 1);
            store
                .commit(batch(
                    2,
                    vec![
                        del(Table::Outbox, b"lookup-0000000001xx"),
                        put(Table::Directory, b"current", b"dir-v2"),
                        del(Table::Entries, b"ab\0\0\0\0\0\0\0\0\x01"),
                        put(Table::Inbox, b"lookup-0000000002", b"in"),
                    ],
                ))
                .await
                .unwrap();
            assert_eq!(store.get(Table::Directory, b"current").unwrap(), Some(b"dir-v2".to_vec()));
            assert_eq!(store.get(Table::Outbox, b"lookup-0000000001xx").unwrap(), None);
            assert_eq!(
                store.scan(Table::Entries).unwrap(),
                vec![(b"ab\0\0\0\0\0\0\0\0\x02".to_vec(), b"entry-2".to_vec())]
            );
            assert_eq!(store.stats().batches, 2);
        }
        let store = Store::open(&path).unwrap();
        let expected = sorted(vec![
            row(Table::Entries, b"ab\0\0\0\0\0\0\0\0\x02", b"entry-2"),
            row(Table::Marks, b"ab", &2u64.to_be_bytes()),
            row(Table::Directory, b"current", b"dir-v2"),
            row(Table::Inbox, b"lookup-0000000002", b"in"),
        ]);
        assert_eq!(sorted(store.load_all().unwrap()), expected);
    }

    #[tokio::test]
    async fn the_rows_to_restore_leave_a_hubs_older_lookups_on_disk_unread_and_read_the_rest() {
        use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode};
        use cpis_protocol::records::{AccessEvent, Person};
        use cpis_protocol::schema::{ACCESS_LOG, MARKS};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let now = Timestamp(1_800_000_000_000);
        let identity = cpis_protocol::sign::Identity::from_seed([7; 32]);
        let lookup = |n: u8, at: Timestamp| {
            let person = Person { id: "U1".into(), name: "A Nurse".into(), role: "Nurse".into() };
            let (setting, nhs) = (OdsCode::parse("RXH01").unwrap(), NhsNumber::parse("943 476 5919").unwrap());
            let event = AccessEvent { lookup_id: LookupId([n; 16]), setting, person, at, nhs };
            ACCESS_LOG.put(&(at, LookupId([n; 16])), &identity.sign(event))
        };
        let hub = OdsCode::parse("HUBS").unwrap();
        let ops = vec![lookup(1, now.minus_ms(86_400_000)), lookup(2, now.minus_ms(1_000)), MARKS.put(&hub, &3)];
        store.commit(batch(1, ops)).await.unwrap();

        let role = RoleConfig::Hub(Default::default());
        let mut rows = store.rows_to_restore(&role, now).unwrap();
        let lookups: Vec<LookupId> = ACCESS_LOG.take(&mut rows).map(|r| r.unwrap().0.1).collect();
        assert_eq!(lookups, vec![LookupId([2; 16])], "only the lookup within the replay window");
        assert_eq!(MARKS.read(&rows).map(|r| r.unwrap()).collect::<Vec<_>>(), vec![(hub, 3)]);
        assert!(!rows.store_was_empty());
        assert_eq!(store.scan(Table::AccessLog).unwrap().len(), 2, "both stay on disk");
    }

    /// A hub's store of schema version 2 (its access log keyed by lookup id) is brought up to
    /// date at open, in several commits: every lookup is kept, now in time order, the old table
    /// is gone and the version is this one; a row that does not convert stops it, naming why.
    #[test]
    fn a_version_2_store_is_brought_up_to_date_at_open_with_every_lookup_kept_in_time_order() {
        use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode};
        use cpis_protocol::records::{AccessEvent, Person};
        use cpis_protocol::schema::{ACCESS_LOG, ACCESS_LOG_V2, META};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let identity = cpis_protocol::sign::Identity::from_seed([7; 32]);
        let count = UPGRADE_ROWS_PER_COMMIT + 10;
        let at = |i: usize| Timestamp(1_800_000_000_000 - i as u64 * 1_000);
        // Ids in the opposite order to the times: the old table was in id order.
        let id = |i: usize| {
            let mut id = [0xA5; 16];
            id[8..].copy_from_slice(&(i as u64).to_be_bytes());
            LookupId(id)
        };
        let person = Person { id: "U1".into(), name: "A Nurse".into(), role: "Nurse".into() };
        let (setting, nhs) = (OdsCode::parse("RXH01").unwrap(), NhsNumber::parse("943 476 5919").unwrap());
        let write_v2 = |rows: &[(Vec<u8>, Vec<u8>)]| {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(definition(Table::Meta)).unwrap();
                meta.insert(b"schema".as_slice(), cpis_protocol::codec::encode(&2u32).as_slice()).unwrap();
                let mut log = txn.open_table(Def::new(ACCESS_LOG_V2)).unwrap();
                for (key, value) in rows {
                    log.insert(key.as_slice(), value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        };
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
            .map(|i| {
                let event =
                    AccessEvent { lookup_id: id(i), setting: setting.clone(), person: person.clone(), at: at(i), nhs };
                (id(i).0.to_vec(), cpis_protocol::codec::encode(&identity.sign(event)))
            })
            .collect();
        write_v2(&rows);

        let store = Store::open(&path).unwrap();
        let upgraded = store.scan(Table::AccessLog).unwrap();
        assert_eq!(upgraded.len(), count, "every lookup kept");
        let times: Vec<Timestamp> = upgraded.iter().map(|(k, _)| ACCESS_LOG.parse_key(k).unwrap().0).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]) && times[0] == at(count - 1), "in time order");
        let meta = store.get(Table::Meta, b"schema").unwrap().unwrap();
        let row = StoredRow { table: Table::Meta, key: b"schema".to_vec(), value: meta };
        assert_eq!(META.decode(&row).unwrap().1, cpis_protocol::schema::SCHEMA_VERSION);
        let txn = store.inner.db.begin_read().unwrap();
        assert!(txn.open_table(Def::new(ACCESS_LOG_V2)).is_err(), "the old table is gone");
        drop((txn, store));
        let reopened = Store::open(&path).unwrap();
        assert_eq!(reopened.scan(Table::AccessLog).unwrap().len(), count, "opening again changes nothing");
        drop(reopened);

        std::fs::remove_file(&path).unwrap();
        let mut broken = rows[..3].to_vec();
        broken[1].1 = b"not a record".to_vec();
        write_v2(&broken);
        let refused = Store::open(&path).unwrap_err().to_string();
        assert!(refused.contains("schema version") && refused.contains("access_log"), "{refused}");
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(Def::new(ACCESS_LOG_V2)).unwrap().iter().unwrap().count(), 3, "nothing moved");
    }

    #[tokio::test]
    async fn backup_while_writing_gives_a_consistent_copy_that_opens_and_holds_every_durable_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for id in 0..200u64 {
            store.commit(batch(id, vec![put(Table::Entries, &id.to_be_bytes(), b"entry")])).await.unwrap();
        }
        // Writes keep coming while the copy is taken.
        let waiters: Vec<_> = (200..400u64)
            .map(|id| store.submit(batch(id, vec![put(Table::Entries, &id.to_be_bytes(), b"entry")])))
            .collect();
        let copy = dir.path().join("backup.redb");
        let copied = store.backup_to(&copy).unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(copied >= 200, "every row durable before the copy is in it: {copied}");
        assert!(store.backup_to(&copy).is_err(), "an existing file is never overwritten");
        let restored = Store::open(&copy).unwrap().load_all().unwrap();
        assert_eq!(restored.len() as u64, copied);
        let keys: Vec<u64> =
            restored.iter().map(|r| u64::from_be_bytes(r.key.as_slice().try_into().unwrap())).collect();
        assert_eq!(keys, (0..copied).collect::<Vec<_>>(), "a prefix of the writes, in order: consistent");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn store_delete_of_missing_key_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let id = store
            .commit(batch(7, vec![del(Table::AccessLog, b"never-written"), del(Table::Equivocations, b"")]))
            .await
            .unwrap();
        assert_eq!(id, 7);
        assert_eq!(store.commit(batch(8, vec![])).await.unwrap(), 8);
        assert!(store.load_all().unwrap().is_empty());
    }

    #[tokio::test]
    async fn store_ops_applied_in_order_within_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            // Submitted without waiting, so that they are likely to share a group.
            let waiters = [
                store.submit(batch(1, vec![put(Table::Inbox, b"k", b"v1")])),
                store.submit(batch(2, vec![del(Table::Inbox, b"k")])),
                store.submit(batch(
                    3,
                    vec![
                        put(Table::Inbox, b"j", b"a"),
                        put(Table::Inbox, b"j", b"b"),
                        del(Table::Inbox, b"i"),
                        put(Table::Inbox, b"i", b"c"),
                    ],
                )),
                store.submit(batch(4, vec![put(Table::Inbox, b"h", b"x")])),
                store.submit(batch(5, vec![del(Table::Inbox, b"h")])),
                store.submit(batch(6, vec![put(Table::Inbox, b"h", b"y")])),
            ];
            for (i, w) in waiters.into_iter().enumerate() {
                assert_eq!(w.await.unwrap().unwrap(), i as u64 + 1);
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.scan(Table::Inbox).unwrap(),
            vec![(b"h".to_vec(), b"y".to_vec()), (b"i".to_vec(), b"c".to_vec()), (b"j".to_vec(), b"b".to_vec()),]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_many_concurrent_submits_all_durable() {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 250;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            let mut handles = Vec::new();
            for t in 0..TASKS {
                let store = store.clone();
                handles.push(tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let id = t * PER_TASK + i;
                        let key = id.to_be_bytes();
                        let got = store.commit(batch(id, vec![put(Table::Entries, &key, &key)])).await.unwrap();
                        assert_eq!(got, id);
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            let stats = store.stats();
            assert_eq!(stats.batches, TASKS * PER_TASK);
            assert!(stats.commits <= stats.batches);
        }
        let store = Store::open(&path).unwrap();
        let rows = store.load_all().unwrap();
        assert_eq!(rows.len() as u64, TASKS * PER_TASK);
        let keys: Vec<u64> = rows
            .iter()
            .map(|r| {
                assert_eq!(r.table, Table::Entries);
                assert_eq!(r.key, r.value);
                u64::from_be_bytes(r.key.as_slice().try_into().unwrap())
            })
            .collect();
        assert_eq!(keys, (0..TASKS * PER_TASK).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn store_drop_commits_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut waiters = Vec::new();
        {
            let store = Store::open(&path).unwrap();
            for id in 0..500u64 {
                let ops = vec![put(Table::AccessLog, &id.to_be_bytes(), b"event")];
                waiters.push(store.submit(batch(id, ops)));
            }
        }
        for (id, w) in waiters.into_iter().enumerate() {
            assert_eq!(w.await.unwrap().unwrap(), id as u64);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.scan(Table::AccessLog).unwrap().len(), 500);
    }

    #[test]
    fn store_large_batch_is_committed_whole_and_groups_respect_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let big: Vec<StoreOp> =
            (0..MAX_OPS_PER_COMMIT as u64 + 10).map(|i| put(Table::Entries, &i.to_be_bytes(), b"")).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let a = store.submit(batch(1, vec![put(Table::Inbox, b"a", b"1")]));
        let b = store.submit(batch(2, big));
        let c = store.submit(batch(3, vec![put(Table::Inbox, b"c", b"3")]));
        rt.block_on(async {
            assert_eq!(a.await.unwrap().unwrap(), 1);
            assert_eq!(b.await.unwrap().unwrap(), 2);
            assert_eq!(c.await.unwrap().unwrap(), 3);
        });
        // The oversized batch cannot share a commit with either neighbour.
        assert!(store.stats().commits >= 3);
        assert_eq!(store.scan(Table::Entries).unwrap().len(), MAX_OPS_PER_COMMIT + 10);
    }

    #[test]
    fn store_open_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is not a database file.
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn store_errors_never_show_values() {
        let secret = "child-name-secret";
        let err = StoreError::Write {
            table: Table::Inbox.name(),
            source: Arc::new(redb::Error::ValueTooLarge(secret.len())),
        };
        assert!(!format!("{err} {err:?}").contains(secret));
        let op = put(Table::Inbox, b"k", secret.as_bytes());
        assert!(!format!("{:?}", batch(1, vec![op])).contains(secret));
    }

    /// Prints commit throughput; run with
    /// `cargo test -p cpis-node --release store_bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: prints figures, asserts no timing"]
    fn store_bench_commit_throughput() {
        const N: u64 = 10_000;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let one = |id: u64| batch(id, vec![put(Table::Entries, &id.to_be_bytes(), &[0u8; 200])]);
        let report = |label: &str, store: &Store, start: Instant| {
            let secs = start.elapsed().as_secs_f64();
            let s = store.stats();
            println!(
                "{label}: {N} single-op batches in {secs:.3} s = {:.0} batches/s, \
                 {} commits ({:.0} commits/s, {:.1} batches per commit)",
                N as f64 / secs,
                s.commits,
                s.commits as f64 / secs,
                s.batches as f64 / s.commits as f64,
            );
        };
        let dir = tempfile::tempdir().unwrap();

        // One at a time: each batch waits for its own fsync.
        let store = Store::open(&dir.path().join("seq")).unwrap();
        let start = Instant::now();
        rt.block_on(async {
            for id in 0..N {
                store.commit(one(id)).await.unwrap();
            }
        });
        report("one at a time", &store, start);

        // 100 tasks, each waiting for its batch before submitting the next.
        let store = Store::open(&dir.path().join("tasks")).unwrap();
        let start = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..N / 100 {
                            store.commit(one(t * (N / 100) + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        report("100 concurrent tasks", &store, start);

        // Everything submitted at once, then awaited (an event loop pipelining its batches).
        let store = Store::open(&dir.path().join("pipelined")).unwrap();
        let start = Instant::now();
        rt.block_on(async {
            let waiters: Vec<_> = (0..N).map(|id| store.submit(one(id))).collect();
            for w in waiters {
                w.await.unwrap().unwrap();
            }
        });
        report("all submitted at once", &store, start);
    }

    /// What the order of a table's keys costs a hub's access log: 64 callers each committing one
    /// 300-byte record at a time into a table already holding 300,000, keyed by random lookup
    /// ids (schema version 2) or by time first (version 3). Run with
    /// `cargo test -p cpis-node --release store_bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: prints figures, asserts no timing"]
    fn store_bench_access_log_keys() {
        const HELD: u64 = 300_000;
        const CALLERS: u64 = 64;
        const EACH: u64 = 200;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let value = [7u8; 300];
        for (label, time_first) in
            [("random ids", false), ("time first", true), ("random ids", false), ("time first", true)]
        {
            let key = move |n: u64| -> Vec<u8> {
                let id: [u8; 16] = rand::random();
                if time_first { n.to_be_bytes().into_iter().chain(id).collect() } else { id.to_vec() }
            };
            let path = dir.path().join(format!("{label}-{}", rand::random::<u32>()));
            let store = Store::open(&path).unwrap();
            rt.block_on(async {
                for first in (0..HELD).step_by(50_000) {
                    let ops = (first..first + 50_000).map(|n| put(Table::AccessLog, &key(n), &value)).collect();
                    store.commit(batch(first + 1, ops)).await.unwrap();
                }
            });
            let before = store.stats();
            let start = Instant::now();
            rt.block_on(async {
                let callers: Vec<_> = (0..CALLERS)
                    .map(|c| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for i in 0..EACH {
                                let n = HELD + i * CALLERS + c;
                                store.commit(batch(n, vec![put(Table::AccessLog, &key(n), &value)])).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for c in callers {
                    c.await.unwrap();
                }
            });
            let secs = start.elapsed().as_secs_f64();
            let commits = store.stats().commits - before.commits;
            println!(
                "{label}: {} records in {secs:.2} s = {:.0}/s, {commits} commits of {:.1} records, {:.2} ms a commit",
                CALLERS * EACH,
                (CALLERS * EACH) as f64 / secs,
                (CALLERS * EACH) as f64 / commits as f64,
                secs * 1000.0 / commits as f64,
            );
        }
    }
}
