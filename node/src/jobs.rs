//! Import jobs: a CSV import run in the background, a chunk of rows at a time, whose progress and
//! per-row report the council's pages (`/import/jobs/N`) and the operator API
//! (`/plans/import/jobs/N`) both read. One runner for both doors.

use crate::api::{self, ApiState};
use crate::import::{ImportReport, ImportRow};
use cpis_protocol::authority::RowOutcome;
use cpis_protocol::machine::{Command, Reply};
use cpis_protocol::records::Plan;
use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};

/// Rows a job sends to the node at a time (its progress moves by this much); each chunk is
/// durable before the next is sent.
pub const CHUNK_ROWS: usize = 1_000;
/// Jobs remembered (when full, the oldest finished one goes first; a running one never does, so
/// at most this many run at once).
pub const JOBS_MAX: usize = 32;
/// Rows of the jobs remembered, together (their reports are held in memory): two of the largest
/// files a job takes. Finished jobs go, oldest first, to make room for a new one.
pub const JOBS_ROWS_MAX: usize = 400_000;

/// Imports running or finished, newest last (at most [`JOBS_MAX`]).
#[derive(Default)]
pub struct Jobs {
    next: u64,
    list: Vec<(u64, Arc<Mutex<Job>>)>,
}

/// One import: who started it, how far it is, and its per-row report once done.
#[derive(Clone)]
pub struct Job {
    /// The account that started it through the pages, or [`API_OWNER`].
    pub owner: String,
    pub dry_run: bool,
    pub rows_total: usize,
    pub rows_done: usize,
    /// Shared, as every read of the job copies it: a report may have 200,000 rows. A job that
    /// stopped part way has the report of the rows sent before it stopped.
    pub report: Option<Arc<ImportReport>>,
    /// Why it stopped part way.
    pub error: Option<String>,
    /// Why its audit line could not be written (the import stands).
    pub audit: Option<String>,
}

/// The owner of jobs started through the API (its token holder, who may read every job).
pub const API_OWNER: &str = "(api)";

impl Job {
    pub fn running(&self) -> bool {
        self.report.is_none() && self.error.is_none()
    }

    /// The job as `GET /plans/import/jobs/N` shows it.
    pub fn json(&self, id: u64) -> JobView<'_> {
        let state = match (&self.report, &self.error) {
            (_, Some(_)) => "failed",
            (Some(_), None) => "done",
            (None, None) => "running",
        };
        JobView {
            job: id,
            state,
            dry_run: self.dry_run,
            rows_total: self.rows_total,
            rows_done: self.rows_done,
            report: self.report.as_deref(),
            error: self.error.as_deref(),
        }
    }
}

/// A job as the API shows it (docs/api.md).
#[derive(Serialize)]
pub struct JobView<'a> {
    job: u64,
    state: &'static str,
    dry_run: bool,
    rows_total: usize,
    rows_done: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<&'a ImportReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Starts importing `rows` (already parsed: the file as a whole was accepted) in the background
/// and returns the job's number, or why it cannot start (every remembered job still running).
/// `on_done` gets the report of an import that stored something (not a dry run), with why it
/// stopped if it stopped part way (its report then has the rows sent before), for the caller's
/// audit line; before the job shows as ended, it returns why that line could not be written.
pub fn start(
    state: &ApiState,
    owner: String,
    rows: Vec<ImportRow>,
    dry_run: bool,
    on_done: impl FnOnce(&ImportReport, Option<&str>) -> Result<(), String> + Send + 'static,
) -> Result<u64, String> {
    let job = Job { owner, dry_run, rows_total: rows.len(), rows_done: 0, report: None, error: None, audit: None };
    let job = Arc::new(Mutex::new(job));
    let id = {
        let mut jobs = state.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        make_room(&mut jobs, rows.len())?;
        jobs.next += 1;
        let id = jobs.next;
        jobs.list.push((id, job.clone()));
        id
    };
    tokio::spawn(run(state.clone(), rows, job, on_done));
    Ok(id)
}

/// Lets the oldest finished jobs go until one more of `rows` rows fits within [`JOBS_MAX`] and
/// [`JOBS_ROWS_MAX`]; refuses if the running ones leave no room.
fn make_room(jobs: &mut Jobs, rows: usize) -> Result<(), String> {
    loop {
        let held: usize = jobs.list.iter().map(|(_, j)| lock(j).rows_total).sum();
        if jobs.list.len() < JOBS_MAX && held + rows <= JOBS_ROWS_MAX {
            return Ok(());
        }
        let Some(finished) = jobs.list.iter().position(|(_, j)| !lock(j).running()) else {
            return Err(format!(
                "the imports running hold {held} rows, and at most {JOBS_ROWS_MAX} are held together: \
                 start this one when one of them has ended"
            ));
        };
        jobs.list.remove(finished);
    }
}

/// A copy of job `id` as it is now, if it is remembered.
pub fn get(state: &ApiState, id: u64) -> Option<Job> {
    let jobs = state.jobs.lock().unwrap_or_else(PoisonError::into_inner);
    jobs.list.iter().find(|(i, _)| *i == id).map(|(_, j)| lock(j).clone())
}

fn lock(job: &Mutex<Job>) -> std::sync::MutexGuard<'_, Job> {
    job.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why an import stopped part way, and the outcomes of the rows sent before: they stay applied.
pub(crate) struct Partial {
    pub(crate) stopped: Stopped,
    /// The rows sent before it stopped (the first ones; their chunks were durable).
    pub(crate) rows_sent: usize,
    pub(crate) outcomes: Vec<(usize, RowOutcome)>,
}

/// Why an import stopped part way.
pub(crate) enum Stopped {
    Refused(cpis_protocol::authority::CommandError),
    NodeStopping,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Refused(e) => e.fmt(f),
            Stopped::NodeStopping => f.write_str(
                "the node stopped during the import: rows already applied stay applied; import the file again",
            ),
        }
    }
}

/// Sends the valid rows to the node [`CHUNK_ROWS`] at a time (each chunk durable before the
/// next, so that the node's event loop is never held by one large file), telling `done` of each
/// chunk's rows; every valid row's outcome.
pub(crate) async fn apply_in_chunks(
    state: &ApiState,
    rows: &[ImportRow],
    dry_run: bool,
    mut done: impl FnMut(usize),
) -> Result<Vec<(usize, RowOutcome)>, Partial> {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut rows_sent = 0;
    for chunk in rows.chunks(CHUNK_ROWS) {
        let valid: Vec<(usize, Plan)> =
            chunk.iter().filter_map(|r| r.plan.as_ref().ok().map(|p| (r.row, p.clone()))).collect();
        if dry_run {
            outcomes.extend(valid.iter().map(|(row, _)| (*row, RowOutcome::Applied)));
        } else {
            match api::ask(state, Command::ImportPlans(valid)).await {
                Ok(Reply::Imported(report)) => outcomes.extend(report.rows),
                Ok(Reply::Refused(e)) => return Err(Partial { stopped: Stopped::Refused(e), rows_sent, outcomes }),
                Ok(_) | Err(_) => return Err(Partial { stopped: Stopped::NodeStopping, rows_sent, outcomes }),
            }
        }
        rows_sent += chunk.len();
        done(chunk.len());
    }
    Ok(outcomes)
}

/// Applies the rows in chunks, moving the job's progress, then builds the per-row report (of
/// the rows sent, if it stopped part way) and has its audit line written before it shows as ended.
async fn run(
    state: ApiState,
    mut rows: Vec<ImportRow>,
    job: Arc<Mutex<Job>>,
    on_done: impl FnOnce(&ImportReport, Option<&str>) -> Result<(), String>,
) {
    let dry_run = lock(&job).dry_run;
    let (outcomes, error) = match apply_in_chunks(&state, &rows, dry_run, |n| lock(&job).rows_done += n).await {
        Ok(outcomes) => (outcomes, None),
        Err(Partial { stopped, rows_sent, outcomes }) => {
            rows.truncate(rows_sent);
            (outcomes, Some(stopped.to_string()))
        }
    };
    let mut report = ImportReport { dry_run, ..ImportReport::new(rows, outcomes) };
    let mut audit = None;
    if !dry_run {
        report = api::count_import(&state, report);
        audit = on_done(&report, error.as_deref()).err();
    }
    let mut job = lock(&job);
    (job.report, job.error, job.audit) = (Some(Arc::new(report)), error, audit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rows: usize, finished: bool) -> Arc<Mutex<Job>> {
        let error = finished.then(|| "ended".to_string());
        let owner = API_OWNER.to_string();
        let job = Job { owner, dry_run: false, rows_total: rows, rows_done: 0, report: None, error, audit: None };
        Arc::new(Mutex::new(job))
    }

    /// Finished jobs go, oldest first, until the rows held with the new job's are within the
    /// bound; running ones never do, and a job that cannot fit beside them is refused.
    #[test]
    fn the_jobs_remembered_hold_a_bounded_number_of_rows() {
        let list = vec![(1, job(150_000, true)), (2, job(150_000, false)), (3, job(50_000, true))];
        let mut jobs = Jobs { list, ..Jobs::default() };
        assert!(make_room(&mut jobs, 100_000).is_ok());
        let kept: Vec<u64> = jobs.list.iter().map(|(id, _)| *id).collect();
        assert_eq!(kept, [2, 3], "the oldest finished job went; 200,000 held, 100,000 more fit");
        assert!(make_room(&mut jobs, 250_000).is_ok(), "the other finished one goes too");
        assert_eq!(jobs.list.len(), 1);
        let refused = make_room(&mut jobs, 300_000).unwrap_err();
        assert!(refused.contains("the imports running hold 150000 rows"), "{refused}");
        assert_eq!(jobs.list.len(), 1, "a running job is never let go");
    }
}
