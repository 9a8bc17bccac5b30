//! The gateway's own audit log (`audit.jsonl` in its data folder, owner-only): one JSON line when
//! a lookup is asked, synced to disk while the hubs are asked and before the answer leaves the
//! gateway, and one line with what it came to, synced with the next batch.
//!
//! It is a record the setting keeps of who looked up which child, so it holds the whole NHS
//! number; the operator's log (tracing) never does. A writer thread appends lines in batches,
//! syncing once per batch, so that concurrent lookups share one sync.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Entries the gateway keeps in memory for its audit page.
pub const AUDIT_RECENT_MAX: usize = 500;
/// Most bytes read back from the end of the log at start, for the newest entries: the file grows
/// for as long as the gateway runs, and [`AUDIT_RECENT_MAX`] lookups of two lines take about
/// 400 KB.
const AUDIT_TAIL_BYTES: u64 = 2 << 20;
/// Lines waiting for the writer before new lookups wait.
const AUDIT_QUEUE_MAX: usize = 4_096;
/// The `result` of the line written when a lookup is asked, before its answer is known. On its
/// own (no later line with the same `lookup_id`) it is a lookup whose answer was never recorded:
/// the gateway stopped first.
pub const ASKED: &str = "asked";

/// One lookup, as the audit log keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the gateway answered (RFC 3339).
    pub at: String,
    /// `page` (a signed-in person) or `fhir` (a calling system).
    pub via: String,
    /// The person's id: their gateway user name, or the id a calling system passed.
    pub user_id: String,
    pub user_name: String,
    /// The person's job, as recorded in the access event.
    pub job: String,
    /// The calling system, for `fhir`.
    pub system: Option<String>,
    pub nhs: String,
    /// `unscheduled` or `scheduled`.
    pub kind: String,
    /// `asked` (the lookup is on its way; see [`ASKED`]), then `alert`, `no-records`,
    /// `could-not-check` or `refused`; or `cached` (history served from an earlier lookup, with
    /// no new one).
    pub result: String,
    pub lookup_id: Option<String>,
    pub hub: Option<String>,
    pub trace_id: Option<String>,
}

/// Without the child's NHS number or the person: `Debug` output may reach a log.
impl std::fmt::Debug for AuditEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEntry")
            .field("at", &self.at)
            .field("via", &self.via)
            .field("kind", &self.kind)
            .field("result", &self.result)
            .field("lookup_id", &self.lookup_id)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// Appends entries durably and keeps the most recent in memory.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Waiting>,
    recent: Arc<Mutex<VecDeque<AuditEntry>>>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates) the log and starts its writer thread; the newest entries already in the
    /// file are read back for the audit page from its last [`AUDIT_TAIL_BYTES`] (lines that do
    /// not parse are skipped). `lost(n)` is called when `n` lines appended without waiting (see
    /// [`AuditLog::append`]) could not be written: nobody else learns of those.
    pub fn open(path: &Path, lost: impl Fn(u64) + Send + 'static) -> std::io::Result<AuditLog> {
        let mut recent = VecDeque::new();
        if let Ok(text) = read_tail(path, AUDIT_TAIL_BYTES) {
            for line in text.lines() {
                if let Ok(entry) = serde_json::from_str::<AuditEntry>(line) {
                    remember(&mut recent, entry);
                }
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        let (queue, lines) = mpsc::channel(AUDIT_QUEUE_MAX);
        let recent = Arc::new(Mutex::new(recent));
        let for_writer = recent.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(file, lines, for_writer, lost))?;
        Ok(AuditLog { queue, recent, path: path.to_path_buf() })
    }

    /// Appends one entry; returns once it is on disk.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.queue(entry, Some(done)).await?;
        written.await.map_err(|_| format!("the audit log {} stopped", self.path.display()))?
    }

    /// Appends one entry without waiting for it to reach the disk (it is synced with the next
    /// batch); returns once the writer has it.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), String> {
        self.queue(entry, None).await
    }

    async fn queue(&self, entry: AuditEntry, done: Option<Done>) -> Result<(), String> {
        self.queue.send((entry, done)).await.map_err(|_| format!("the audit log {} is closed", self.path.display()))
    }

    /// The newest entries, newest first; a lookup's `asked` line is replaced by its outcome's.
    pub fn recent(&self, count: usize) -> Vec<AuditEntry> {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().rev().take(count).cloned().collect()
    }
}

type Done = oneshot::Sender<Result<(), String>>;
type Waiting = (AuditEntry, Option<Done>);

/// Keeps `entry` among the newest: in place of the `asked` line of the same lookup, if it is still
/// there, else as the newest.
fn remember(recent: &mut VecDeque<AuditEntry>, entry: AuditEntry) {
    let asked = entry
        .lookup_id
        .as_ref()
        .and_then(|id| recent.iter().rposition(|e| e.result == ASKED && e.lookup_id.as_ref() == Some(id)));
    match asked {
        Some(at) if entry.result != ASKED => recent[at] = entry,
        _ => {
            if recent.len() == AUDIT_RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }
}

/// The whole lines in the last `max` bytes of the file at `path`.
fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // From one byte before the cut, so that a line starting at the cut follows a newline.
    let cut = len > max;
    file.seek(SeekFrom::Start(if cut { len - max - 1 } else { 0 }))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let start = if cut { bytes.iter().position(|b| *b == b'\n').map_or(bytes.len(), |i| i + 1) } else { 0 };
    Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// What the writer appends to: written, then made durable.
trait AuditFile: Write {
    fn sync(&mut self) -> std::io::Result<()>;
}

impl AuditFile for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

fn write_loop(
    mut file: impl AuditFile,
    mut lines: mpsc::Receiver<Waiting>,
    recent: Arc<Mutex<VecDeque<AuditEntry>>>,
    lost: impl Fn(u64),
) {
    // Set by a failed write, which may have left part of a line at the end of the file.
    let mut torn = false;
    while let Some(first) = lines.blocking_recv() {
        let mut batch = vec![first];
        while let (true, Ok(next)) = (batch.len() < AUDIT_QUEUE_MAX, lines.try_recv()) {
            batch.push(next);
        }
        // After a failed write, a newline first ends whatever it left (read back, that part
        // does not parse and is skipped), so that this batch's first line stays whole.
        let mut bytes = if torn { vec![b'\n'] } else { Vec::new() };
        for (entry, _) in &batch {
            if let Ok(line) = serde_json::to_string(entry) {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
        }
        let result = file.write_all(&bytes).and_then(|()| file.sync()).map_err(|e| e.to_string());
        torn = result.is_err();
        if let Err(reason) = &result {
            // Lines appended without a waiter have no one else to tell.
            lost(batch.iter().filter(|(_, done)| done.is_none()).count() as u64);
            tracing::error!(%reason, lines = batch.len(), "audit log lines could not be written");
        }
        if result.is_ok() {
            let mut recent = recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (entry, _) in &batch {
                remember(&mut recent, entry.clone());
            }
        }
        for done in batch.into_iter().filter_map(|(_, done)| done) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(n: u32) -> AuditEntry {
        AuditEntry {
            at: format!("2026-11-29T10:00:{n:02}Z"),
            via: "page".into(),
            user_id: "sam".into(),
            user_name: "Sam Patel".into(),
            job: "Staff nurse".into(),
            system: None,
            nhs: "9434765919".into(),
            kind: "unscheduled".into(),
            result: "alert".into(),
            lookup_id: Some(format!("{n:032x}")),
            hub: Some("HUBN".into()),
            trace_id: None,
        }
    }

    #[tokio::test]
    async fn entries_are_on_disk_when_recorded_and_read_back_newest_first_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, |_| {}).unwrap();
        for n in 0..3 {
            log.record(entry(n)).await.unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk.lines().count(), 3);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"not json\n").unwrap();
        let reopened = AuditLog::open(&path, |_| {}).unwrap();
        let ids: Vec<String> = reopened.recent(10).into_iter().filter_map(|e| e.lookup_id).collect();
        assert_eq!(ids, [format!("{:032x}", 2), format!("{:032x}", 1), format!("{:032x}", 0)]);
    }

    #[test]
    fn only_the_whole_lines_at_the_end_of_the_file_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "first\nsecond\nthird\n").unwrap();
        assert_eq!(read_tail(&path, 9).unwrap(), "third\n", "the cut line is left out");
        assert_eq!(read_tail(&path, 13).unwrap(), "second\nthird\n", "a whole line at the cut is kept");
        assert_eq!(read_tail(&path, 100).unwrap(), "first\nsecond\nthird\n");
    }

    #[tokio::test]
    async fn a_lookups_asked_line_is_shown_as_its_outcome_once_that_is_written_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, |_| {}).unwrap();
        let asked = |n| AuditEntry { result: ASKED.into(), hub: None, ..entry(n) };
        log.record(asked(1)).await.unwrap();
        log.record(asked(2)).await.unwrap();
        let results = |log: &AuditLog| log.recent(10).into_iter().map(|e| e.result).collect::<Vec<_>>();
        assert_eq!(results(&log), [ASKED, ASKED]);
        log.append(entry(1)).await.unwrap();
        // Appended lines are written in order: once the next recorded line is on disk, so is it.
        log.record(entry(3)).await.unwrap();
        assert_eq!(results(&log), ["alert", ASKED, "alert"]);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk.lines().count(), 4, "both lines of a lookup stay in the file");
        drop(log);
        // Lookup 2's answer was never recorded: it stays `asked`.
        let reopened = AuditLog::open(&path, |_| {}).unwrap();
        let shown: Vec<(String, String)> =
            reopened.recent(10).into_iter().map(|e| (e.lookup_id.unwrap(), e.result)).collect();
        let id = |n: u32| format!("{n:032x}");
        assert_eq!(shown, [(id(3), "alert".into()), (id(2), ASKED.into()), (id(1), "alert".into())]);
    }

    /// A disk that writes part of each batch and fails while `failing` is set.
    struct Flaky {
        written: Arc<Mutex<Vec<u8>>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Flaky {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut written = self.written.lock().unwrap();
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                written.extend_from_slice(&bytes[..bytes.len() / 2]);
                return Err(std::io::Error::other("the disk is full"));
            }
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl AuditFile for Flaky {
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn lines_a_failed_write_loses_are_counted_and_the_next_batch_is_whole_after_the_torn_one() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (queue, lines) = mpsc::channel(AUDIT_QUEUE_MAX);
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let file = Flaky { written: written.clone(), failing: failing.clone() };
        let counted = lost.clone();
        let count = move |n| {
            counted.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        };
        let writer = std::thread::spawn({
            let recent = recent.clone();
            move || write_loop(file, lines, recent, count)
        });
        let log = AuditLog { queue, recent, path: "audit.jsonl".into() };

        log.record(entry(1)).await.unwrap();
        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        log.append(entry(2)).await.unwrap();
        log.append(entry(3)).await.unwrap();
        assert!(log.record(entry(4)).await.is_err(), "the waiter learns its line was not written");
        assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 2, "the two lines nobody waited for");
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        log.record(entry(5)).await.unwrap();
        drop(log);
        writer.join().unwrap();

        let text = String::from_utf8_lossy(&written.lock().unwrap()).into_owned();
        let parsed: Vec<String> =
            text.lines().filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok()?.lookup_id).collect();
        // A line may have reached the file whole before the write failed; none is glued to the
        // torn one after it.
        assert_eq!(parsed.first(), Some(&format!("{:032x}", 1)), "{text}");
        assert_eq!(parsed.last(), Some(&format!("{:032x}", 5)), "the line after the torn one is whole: {text}");
    }

    #[test]
    fn an_entrys_debug_shows_neither_the_child_nor_the_person() {
        let debug = format!("{:?}", entry(1));
        assert!(debug.contains("alert"), "{debug}");
        assert!(!debug.contains("9434765919") && !debug.contains("Sam Patel") && !debug.contains("sam"), "{debug}");
    }
}
