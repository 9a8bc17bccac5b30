//! The local operator API (docs/api.md): a thin axum layer. Changes become typed commands sent to
//! the event loop, whose typed replies come back only once durable; status is a snapshot the loop
//! takes; lists of plans and notifications are read straight from the store (which shows every
//! durable change).

// A handler's early exit is an HTTP response; boxing it would only hide that.
#![allow(clippy::result_large_err)]

use crate::config::NodeRole;
use crate::import::{self, ImportReport};
use crate::inputs::Input;
use crate::jobs;
use crate::metrics::Metrics;
use crate::status::{PlansHeld, Spread};
use crate::store::{Store, StoreError};
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cpis_protocol::authority::{Acknowledgement, Change, CommandError, InboxItem};
use cpis_protocol::directory::{SignedDirectory, TrustedDirectory};
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::machine::{Command, Reply};
use cpis_protocol::records::{Contacts, Plan, PlanType};
use cpis_protocol::schema::{self, Table};
use cpis_protocol::time::{Date, Timestamp};
use prometheus_client::encoding::prometheus_text;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Largest request body (a CSV import).
pub const BODY_BYTES_MAX: usize = 64 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    inputs: mpsc::Sender<Input>,
    pub(crate) store: Store,
    directory: Arc<RwLock<TrustedDirectory>>,
    token: String,
    /// The token of `GET /metrics` alone (a scraper's: it can change nothing).
    metrics_token: String,
    role: NodeRole,
    pub(crate) metrics: Metrics,
    /// CSV imports running in the background (the API's and the council pages').
    pub(crate) jobs: Arc<Mutex<jobs::Jobs>>,
}

impl ApiState {
    /// The directory the node trusts now.
    pub(crate) fn directory(&self) -> TrustedDirectory {
        self.directory.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn new(
        inputs: mpsc::Sender<Input>,
        store: Store,
        directory: Arc<RwLock<TrustedDirectory>>,
        tokens: (String, String),
        role: NodeRole,
        metrics: Metrics,
    ) -> ApiState {
        let (token, metrics_token) = tokens;
        ApiState { inputs, store, directory, token, metrics_token, role, metrics, jobs: Arc::default() }
    }
}

/// Shortest token a node takes from its file (one it makes has 64 hex digits).
const TOKEN_CHARS_MIN: usize = 16;

/// Reads a token (the API's, the metrics'), creating it (owner-only) on first start, or if the
/// file is empty (left so by a crash as it was made: nobody can hold its token).
pub fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            let token = text.trim();
            anyhow::ensure!(
                token.chars().count() >= TOKEN_CHARS_MIN,
                "the token in {} is shorter than {TOKEN_CHARS_MIN} characters: delete the file, and the node makes a new one when it starts",
                path.display()
            );
            return Ok(token.to_string());
        }
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing the empty token {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading the token {}", path.display())),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    crate::config::write_private(path, token.as_bytes())?;
    Ok(token)
}

pub fn router(state: ApiState) -> Router {
    // Health needs no token: a service manager or load balancer asks it, and it says nothing of
    // the node's data.
    let health = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(state.clone());
    // Metrics take their own token (or the API's): a scraper holding it can change nothing.
    let metrics_route = Router::new()
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_metrics_token))
        .with_state(state.clone());
    let counted = state.metrics.clone();
    Router::new()
        .route("/status", get(status))
        .route("/plans", get(list_plans).post(record_plan))
        .route("/plans/import", post(import_csv))
        .route("/plans/import/jobs", post(start_import_job))
        .route("/plans/import/jobs/{id}", get(import_job))
        .route("/plans/{reference}/end", post(end_plan))
        .route("/plans/{reference}/withdraw", post(withdraw_plan))
        .route("/contacts", put(set_contacts))
        .route("/notifications", get(list_notifications))
        .route("/notifications/{lookup_id}/ack", post(acknowledge))
        .route("/directory", post(publish_directory))
        .route("/backup", post(backup))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path: see docs/api.md") })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
        .merge(health)
        .merge(metrics_route)
        .layer(axum::middleware::from_fn_with_state(counted, count_requests))
}

/// Counts every request by its answer's status code (`cpis_api_requests_total`).
pub(crate) async fn count_requests(
    State(metrics): State<Metrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    metrics.api_request(response.status().as_u16());
    response
}

/// Longest the event loop may take to answer a health check.
const HEALTH_TIMEOUT_MS: u64 = 2_000;

async fn snapshot(state: &ApiState) -> Option<Box<crate::status::Snapshot>> {
    let (reply, rx) = oneshot::channel();
    state.inputs.send(Input::Status(reply)).await.ok()?;
    tokio::time::timeout(std::time::Duration::from_millis(HEALTH_TIMEOUT_MS), rx).await.ok()?.ok()
}

/// `GET /healthz`: 200 while the node's event loop answers, else 503.
async fn healthz(State(state): State<ApiState>) -> Response {
    match snapshot(&state).await {
        Some(_) => axum::Json(json!({ "status": "ok" })).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the event loop did not answer within {HEALTH_TIMEOUT_MS} ms"),
        ),
    }
}

/// `GET /readyz`: 200 when the node can do its work, else 503 with every reason.
async fn readyz(State(state): State<ApiState>) -> Response {
    let Some(snapshot) = snapshot(&state).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the event loop did not answer within {HEALTH_TIMEOUT_MS} ms"),
        );
    };
    let reasons = snapshot.not_ready();
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": reasons.is_empty(), "reasons": reasons }))).into_response()
}

/// Every request must carry the token, checked before anything of it is read: a caller without
/// it learns nothing but 401.
async fn require_token(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authorised(&state, request.headers()) {
        tracing::warn!(path = %request.uri().path(), "API request refused: missing or wrong bearer token");
        return unauthorised();
    }
    next.run(request).await
}

async fn require_metrics_token(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    if !bearer_is(headers, &state.metrics_token) && !bearer_is(headers, &state.token) {
        tracing::warn!(path = %request.uri().path(), "metrics request refused: missing or wrong bearer token");
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see <data_dir>/metrics.token)");
    }
    next.run(request).await
}

pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn unauthorised() -> Response {
    error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see <data_dir>/api.token)")
}

fn authorised(state: &ApiState, headers: &HeaderMap) -> bool {
    bearer_is(headers, &state.token)
}

/// Whether the request's `Authorization` is `Bearer <token>` (the scheme in any case, as HTTP
/// says), compared in constant time in the token's content.
pub(crate) fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let Some((scheme, credentials)) = given.split_at_checked(7) else { return false };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    credentials.len() == token.len()
        && credentials.iter().zip(token.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn authority_only(state: &ApiState) -> Result<(), Response> {
    match state.role {
        NodeRole::Authority => Ok(()),
        NodeRole::Hub => Err(error(StatusCode::NOT_FOUND, CommandError::NotAnAuthority)),
    }
}

fn stopping() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping (or stopped before the change was durable)")
}

/// Sends a command to the event loop and waits for its reply.
pub(crate) async fn ask(state: &ApiState, command: Command) -> Result<Reply, Response> {
    let what = describe(&command);
    let (reply, rx) = oneshot::channel();
    state.inputs.send(Input::Command { command, reply }).await.map_err(|_| stopping())?;
    let reply = rx.await.map_err(|_| stopping())?;
    // What changed, for the operator's log: references and counts, never an NHS number.
    match &reply {
        Reply::Refused(e) => tracing::warn!(command = %what, reason = %e, "operator command refused"),
        Reply::Imported(r) => tracing::info!(command = %what, rows = r.rows.len(), "plans imported"),
        Reply::Changed(change) => tracing::info!(command = %what, result = ?change, "operator command applied"),
        Reply::Directory { version } => tracing::info!(command = %what, version, "directory published"),
    }
    Ok(reply)
}

/// A command in words for the log: what and which, with no case data.
fn describe(command: &Command) -> String {
    match command {
        Command::PublishDirectories(chain) => format!("publish {} directory version(s)", chain.len()),
        Command::RecordPlan(p) => format!("record plan {}", p.reference),
        Command::EndPlan { reference, end } => format!("end plan {reference} on {end}"),
        Command::WithdrawPlan(reference) => format!("withdraw plan {reference}"),
        Command::SetContacts(_) => "set contacts".into(),
        Command::Acknowledge { lookup_id, .. } => format!("acknowledge notification {}", lookup_id.to_hex()),
        Command::ImportPlans(rows) => format!("import {} plan(s)", rows.len()),
    }
}

async fn command(state: &ApiState, command: Command) -> Response {
    match ask(state, command).await {
        Ok(reply) => reply_response(reply),
        Err(r) => r,
    }
}

fn reply_response(reply: Reply) -> Response {
    match reply {
        Reply::Changed(Change::Applied) => axum::Json(json!({ "result": "applied" })).into_response(),
        Reply::Changed(Change::Unchanged) => axum::Json(json!({ "result": "unchanged" })).into_response(),
        Reply::Directory { version } => axum::Json(json!({ "directory_version": version })).into_response(),
        Reply::Imported(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "an import report where a change was expected"),
        Reply::Refused(e) => error(refusal_status(&e), e),
    }
}

fn refusal_status(e: &CommandError) -> StatusCode {
    match e {
        CommandError::UnknownPlan(_) | CommandError::UnknownNotification(_) | CommandError::NotAnAuthority => {
            StatusCode::NOT_FOUND
        }
        CommandError::KeyNotActive(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    let (reply, rx) = oneshot::channel();
    if state.inputs.send(Input::Status(reply)).await.is_err() {
        return stopping();
    }
    match rx.await {
        Ok(snapshot) => axum::Json(snapshot.json()).into_response(),
        Err(_) => stopping(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let (reply, rx) = oneshot::channel();
    if state.inputs.send(Input::Status(reply)).await.is_err() {
        return stopping();
    }
    match rx.await {
        Ok(snapshot) => {
            ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], snapshot.prometheus()).into_response()
        }
        Err(_) => stopping(),
    }
}

fn store_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("the store cannot be read: {e}"))
}

async fn list_plans(State(state): State<ApiState>) -> Response {
    if let Err(r) = authority_only(&state) {
        return r;
    }
    let plans = match read_plans(&state) {
        Ok(plans) => plans,
        Err(r) => return r,
    };
    let held = plans_held(&state, &plans).await;
    let plans: Vec<Value> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut doc = plan_json(p);
            if let (Value::Object(doc), Value::Object(spread)) = (&mut doc, Spread::json(held.spread(i).as_ref())) {
                doc.extend(spread);
            }
            doc
        })
        .collect();
    axum::Json(json!({ "plans": plans })).into_response()
}

/// How far every hub holds the feed, and where each of `plans` stands (empty if the event loop
/// does not answer: then no plan says where it has reached).
pub(crate) async fn plans_held(state: &ApiState, plans: &[Plan]) -> PlansHeld {
    let (reply, rx) = oneshot::channel();
    let references = plans.iter().map(|p| p.reference.clone()).collect();
    if state.inputs.send(Input::PlansHeld { references, reply }).await.is_err() {
        return PlansHeld::default();
    }
    rx.await.unwrap_or_default()
}

/// Every plan in the store, by reference.
pub(crate) fn read_plans(state: &ApiState) -> Result<Vec<Plan>, Response> {
    state.store.scan(Table::Plans).map_err(store_error).and_then(|rows| {
        rows.into_iter()
            .map(|(key, value)| {
                let row = cpis_protocol::schema::StoredRow { table: Table::Plans, key, value };
                schema::PLANS.decode(&row).map(|(_, p)| p).map_err(store_error)
            })
            .collect()
    })
}

/// Runs an import of CSV bytes, in chunks of [`crate::jobs::CHUNK_ROWS`] rows: the per-row
/// report, or why the file was refused as a whole (or, after some chunks, why it stopped).
pub(crate) async fn run_import(state: &ApiState, body: Bytes, dry_run: bool) -> Result<ImportReport, Response> {
    let rows = import::parse_csv_apart(body).await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    match crate::jobs::apply_in_chunks(state, &rows, dry_run, |_| {}).await {
        Ok(outcomes) if dry_run => Ok(ImportReport { dry_run: true, ..ImportReport::new(rows, outcomes) }),
        Ok(outcomes) => Ok(count_import(state, ImportReport::new(rows, outcomes))),
        Err(crate::jobs::Partial { stopped: crate::jobs::Stopped::Refused(e), .. }) => {
            Err(error(refusal_status(&e), e))
        }
        Err(partial) => Err(error(StatusCode::SERVICE_UNAVAILABLE, partial.stopped.to_string())),
    }
}

/// A plan as the API and the command line show it.
pub fn plan_json(p: &Plan) -> Value {
    json!({
        "reference": p.reference.as_str(),
        "nhs": p.nhs.digits(),
        "plan_type": p.plan_type.short_name(),
        "snomed": p.plan_type.snomed_code(),
        "start": p.start.to_string(),
        "end": p.end.map(|d| d.to_string()),
        "due": p.due.map(|d| d.to_string()),
        "withdrawn": p.withdrawn,
    })
}

#[derive(Deserialize)]
pub(crate) struct PlanBody {
    pub(crate) reference: String,
    pub(crate) nhs: String,
    pub(crate) plan_type: String,
    pub(crate) start: String,
    pub(crate) end: Option<String>,
    pub(crate) due: Option<String>,
}

pub(crate) fn optional_date(field: &str, text: Option<&str>) -> Result<Option<Date>, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => Date::parse(t).map(Some).map_err(|e| format!("{field}: {e}")),
    }
}

pub(crate) fn parse_plan(b: &PlanBody) -> Result<Plan, String> {
    let plan = Plan {
        reference: PlanRef::parse(&b.reference).map_err(|e| format!("reference: {e}"))?,
        nhs: NhsNumber::parse(&b.nhs).map_err(|e| format!("nhs: {e}"))?,
        plan_type: PlanType::parse(&b.plan_type).ok_or("plan_type: use CPP, LAC, UCPP or the SNOMED CT code")?,
        start: Date::parse(&b.start).map_err(|e| format!("start: {e}"))?,
        end: optional_date("end", b.end.as_deref())?,
        due: optional_date("due", b.due.as_deref())?,
        withdrawn: false,
    };
    plan.check().map_err(|e| e.to_string())?;
    Ok(plan)
}

async fn record_plan(State(state): State<ApiState>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<PlanBody>(&body).map_err(|e| e.to_string()).and_then(|b| parse_plan(&b));
    match parsed {
        Ok(plan) => command(&state, Command::RecordPlan(plan)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn end_plan(State(state): State<ApiState>, Path(reference): Path<String>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct EndBody {
        end: String,
    }
    let parsed = PlanRef::parse(&reference).map_err(|e| format!("reference: {e}")).and_then(|r| {
        let b: EndBody = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((r, Date::parse(&b.end).map_err(|e| format!("end: {e}"))?))
    });
    match parsed {
        Ok((reference, end)) => command(&state, Command::EndPlan { reference, end }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn withdraw_plan(State(state): State<ApiState>, Path(reference): Path<String>) -> Response {
    match PlanRef::parse(&reference) {
        Ok(r) => command(&state, Command::WithdrawPlan(r)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("reference: {e}")),
    }
}

/// `POST /plans/import[?dry_run=true]`.
async fn import_csv(State(state): State<ApiState>, Query(q): Query<ImportQuery>, body: Bytes) -> Response {
    match run_import(&state, body, q.dry_run).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(r) => r,
    }
}

/// `POST /plans/import/jobs[?dry_run=true]`: the file is checked as a whole (header, at least one
/// row), then imported in the background; 202 with the job, to be read at
/// `GET /plans/import/jobs/{job}` until its `state` is `done` (with the report) or `failed`.
async fn start_import_job(State(state): State<ApiState>, Query(q): Query<ImportQuery>, body: Bytes) -> Response {
    if let Err(r) = authority_only(&state) {
        return r;
    }
    let rows = match import::parse_csv_apart(body).await {
        Ok(rows) => rows,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let started = jobs::start(&state, jobs::API_OWNER.into(), rows, q.dry_run, |report, stopped| {
        tracing::info!(
            applied = report.applied,
            unchanged = report.unchanged,
            refused = report.refused,
            stopped,
            "plans imported by an API import job"
        );
        Ok(())
    });
    let id = match started {
        Ok(id) => id,
        Err(e) => return error(StatusCode::TOO_MANY_REQUESTS, e),
    };
    let job = jobs::get(&state, id);
    let location = format!("/plans/import/jobs/{id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], axum::Json(job.as_ref().map(|j| j.json(id)))).into_response()
}

/// `GET /plans/import/jobs/{job}`: how far the job is; its report once done.
async fn import_job(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    if let Err(r) = authority_only(&state) {
        return r;
    }
    match id.parse().ok().and_then(|n| jobs::get(&state, n).map(|j| (n, j))) {
        Some((n, job)) => axum::Json(job.json(n)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "no import job {id} (the node remembers the last {} jobs, of at most {} rows together, until it restarts)",
                jobs::JOBS_MAX,
                jobs::JOBS_ROWS_MAX
            ),
        ),
    }
}

#[derive(Deserialize)]
struct ImportQuery {
    /// Check every row and answer as an import would, storing nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Adds an import's rows to `cpis_import_rows_total` (dry runs are not counted).
pub(crate) fn count_import(state: &ApiState, report: ImportReport) -> ImportReport {
    for (outcome, rows) in [("applied", report.applied), ("unchanged", report.unchanged), ("refused", report.refused)] {
        state.metrics.import_rows(outcome, rows as u64);
    }
    report
}

async fn set_contacts(State(state): State<ApiState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Contacts>(&body) {
        Ok(c) => command(&state, Command::SetContacts(c)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Notifications newest first, filtered and paged (every parameter optional; docs/api.md).
async fn list_notifications(State(state): State<ApiState>, Query(query): Query<InboxQuery>) -> Response {
    if let Err(r) = authority_only(&state) {
        return r;
    }
    let filter = match query.checked() {
        Ok(f) => f,
        Err(errors) => {
            let message = errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>().join("; ");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    match read_inbox(&state) {
        Ok(items) => {
            let (total, page) = filter_inbox(items, &filter, &query);
            let offset = query.offset.unwrap_or(0);
            axum::Json(json!({ "total": total, "offset": offset, "notifications": page })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Most notifications in one answer (`limit` is capped to it).
pub const NOTIFICATIONS_PAGE_MAX: usize = 10_000;

/// The inbox's filters and paging, as a query string gives them (every one optional).
#[derive(Deserialize, Default)]
pub(crate) struct InboxQuery {
    /// `open`: only those not acknowledged; `all` (the API's default): every one.
    #[serde(default)]
    pub(crate) show: String,
    /// The child's NHS number.
    #[serde(default)]
    pub(crate) nhs: String,
    /// A care setting's ODS code, or part of its name.
    #[serde(default)]
    pub(crate) setting: String,
    /// `YYYY-MM-DD`: looked up on or after.
    #[serde(default)]
    pub(crate) from: String,
    /// `YYYY-MM-DD`: looked up on or before.
    #[serde(default)]
    pub(crate) to: String,
    /// Most to return (default and cap [`NOTIFICATIONS_PAGE_MAX`]).
    pub(crate) limit: Option<usize>,
    /// How many of the matching ones to skip first.
    pub(crate) offset: Option<usize>,
}

/// An [`InboxQuery`] whose values were checked.
pub(crate) struct InboxFilter {
    open_only: bool,
    nhs: Option<NhsNumber>,
    setting: String,
    from: Option<Date>,
    to: Option<Date>,
}

impl InboxQuery {
    /// The filter, or every field that is wrong with why (`(field, message)`).
    pub(crate) fn checked(&self) -> Result<InboxFilter, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let open_only = match self.show.trim() {
            "" | "all" => false,
            "open" => true,
            _ => {
                errors.push(("show", "show: use open or all".to_string()));
                false
            }
        };
        let nhs = match self.nhs.trim() {
            "" => None,
            t => NhsNumber::parse(t).map_err(|e| errors.push(("nhs", format!("NHS number: {e}")))).ok(),
        };
        let mut date = |field: &'static str, t: &str| match t.trim() {
            "" => None,
            t => Date::parse(t).map_err(|e| errors.push((field, format!("{field}: {e}")))).ok(),
        };
        let (from, to) = (date("from", &self.from), date("to", &self.to));
        let setting = self.setting.trim().to_lowercase();
        if errors.is_empty() { Ok(InboxFilter { open_only, nhs, setting, from, to }) } else { Err(errors) }
    }
}

/// A time as the API writes it (`2026-11-29T10:00:00Z`).
pub(crate) fn timestamp_of(text: &str) -> Option<Timestamp> {
    let date = Date::parse(text.get(..10)?).ok()?;
    let clock: Vec<u64> = text.get(11..19)?.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, m, s] = clock[..] else { return None };
    let days = u64::try_from(date.0).ok()?;
    Some(Timestamp(days * cpis_protocol::time::DAY_MS + ((h * 60 + m) * 60 + s) * 1000))
}

/// A text field of a JSON object, or "".
pub(crate) fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or("").to_string()
}

impl InboxFilter {
    fn keeps(&self, item: &Value) -> bool {
        let day = item["looked_at"].as_str().and_then(timestamp_of).map(Timestamp::date);
        let setting = &item["setting"];
        (!self.open_only || item["acknowledged"].is_null())
            && self.nhs.is_none_or(|n| text(item, "nhs") == n.digits())
            && (self.setting.is_empty()
                || text(setting, "code").to_lowercase() == self.setting
                || text(setting, "name").to_lowercase().contains(&self.setting))
            && self.from.is_none_or(|d| day.is_some_and(|x| x >= d))
            && self.to.is_none_or(|d| day.is_some_and(|x| x <= d))
    }
}

/// The notifications the filter keeps: how many in all, and the page `query` asks for.
pub(crate) fn filter_inbox(items: Vec<Value>, filter: &InboxFilter, query: &InboxQuery) -> (usize, Vec<Value>) {
    let kept: Vec<Value> = items.into_iter().filter(|i| filter.keeps(i)).collect();
    let limit = query.limit.unwrap_or(NOTIFICATIONS_PAGE_MAX).min(NOTIFICATIONS_PAGE_MAX);
    let total = kept.len();
    (total, kept.into_iter().skip(query.offset.unwrap_or(0)).take(limit).collect())
}

pub(crate) fn read_inbox(state: &ApiState) -> Result<Vec<Value>, StoreError> {
    read_notifications(state, None)
}

/// Notifications as the API shows them, newest first: every one (`None`), or those of `ids`
/// (read one by one, the rest of the inbox untouched).
pub(crate) fn read_notifications(state: &ApiState, ids: Option<&[LookupId]>) -> Result<Vec<Value>, StoreError> {
    let rows = |table: Table| -> Result<Vec<crate::store::KeyValue>, StoreError> {
        let Some(ids) = ids else { return state.store.scan(table) };
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(value) = state.store.get(table, &id.0)? {
                rows.push((id.0.to_vec(), value));
            }
        }
        Ok(rows)
    };
    let decode = |table: Table, rows: Vec<crate::store::KeyValue>| {
        rows.into_iter().map(move |(key, value)| cpis_protocol::schema::StoredRow { table, key, value })
    };
    let acks: BTreeMap<LookupId, Acknowledgement> = decode(Table::InboxAcks, rows(Table::InboxAcks)?)
        .filter_map(|row| schema::INBOX_ACKS.decode(&row).ok())
        .collect();
    let handed: BTreeMap<[u8; 16], Timestamp> = rows(Table::Handed)?
        .into_iter()
        .filter_map(|(k, v)| {
            Some((<[u8; 16]>::try_from(k.as_slice()).ok()?, Timestamp(u64::from_be_bytes(v.try_into().ok()?))))
        })
        .collect();
    let directory = state.directory.read().ok().map(|d| d.clone());
    let mut items: Vec<(LookupId, InboxItem)> = Vec::new();
    for row in decode(Table::Inbox, rows(Table::Inbox)?) {
        match schema::INBOX.decode(&row) {
            Ok(item) => items.push(item),
            Err(e) => tracing::error!(error = %e, "a notification in the store does not decode"),
        }
    }
    items.sort_by_key(|(_, i)| std::cmp::Reverse(i.received_at));
    Ok(items
        .iter()
        .map(|(id, item)| {
            let mut json = notification_json(item, acks.get(id), directory.as_ref());
            json["handed_at"] = handed.get(&id.0).map_or(Value::Null, |t| json!(t.to_string()));
            json
        })
        .collect())
}

fn notification_json(item: &InboxItem, ack: Option<&Acknowledgement>, dir: Option<&TrustedDirectory>) -> Value {
    let n = &item.notification.body;
    let e = &n.event.body;
    let setting = dir.and_then(|d| d.member(&e.setting));
    json!({
        "lookup_id": e.lookup_id.to_hex(),
        "received_at": item.received_at.to_string(),
        "hub": n.hub.as_str(),
        "looked_at": e.at.to_string(),
        "nhs": e.nhs.digits(),
        "setting": {
            "code": e.setting.as_str(),
            "name": setting.map(|s| s.name.clone()),
            "type": setting.and_then(|s| s.setting_type).map(|t| t.name()),
        },
        "person": { "id": e.person.id, "name": e.person.name, "role": e.person.role },
        "matched": n.matched.iter().map(PlanRef::as_str).collect::<Vec<_>>(),
        "acknowledged": ack.map(|a| json!({ "at": a.at.to_string(), "by": a.by, "note": a.note })),
    })
}

async fn acknowledge(State(state): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct AckBody {
        by: String,
        #[serde(default)]
        note: String,
    }
    let Some(lookup_id) = LookupId::from_hex(&id) else {
        return error(StatusCode::BAD_REQUEST, "lookup_id: 32 hex characters");
    };
    match serde_json::from_slice::<AckBody>(&body) {
        Ok(b) => command(&state, Command::Acknowledge { lookup_id, by: b.by, note: b.note }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /backup {"to": "/absolute/path"}`: a consistent copy of the store, taken while the node
/// runs (docs/operations.md).
async fn backup(State(state): State<ApiState>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct BackupBody {
        to: std::path::PathBuf,
    }
    let to = match serde_json::from_slice::<BackupBody>(&body) {
        Ok(b) if b.to.is_absolute() => b.to,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "to: give an absolute path for the backup file"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if to.exists() {
        return error(
            StatusCode::CONFLICT,
            format!("to: {} already exists: a backup never overwrites a file", to.display()),
        );
    }
    let store = state.store.clone();
    let target = to.clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || store.backup_to(&target)).await {
        Ok(Ok(rows)) => {
            tracing::info!(file = %to.display(), rows, "backup written");
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            axum::Json(json!({ "file": to.display().to_string(), "rows": rows, "ms": ms })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the backup failed: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the backup task failed: {e}")),
    }
}

async fn publish_directory(State(state): State<ApiState>, body: Bytes) -> Response {
    match cpis_protocol::codec::decode::<Vec<SignedDirectory>>(&body, crate::config::DIRECTORY_FILE_BYTES_MAX) {
        Ok(chain) => command(&state, Command::PublishDirectories(chain)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("not a list of signed directory versions: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_left_empty_gets_a_new_token_and_one_too_short_stops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let made = load_or_create_token(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), made, "read back");
        std::fs::write(&path, " \n").unwrap();
        let remade = load_or_create_token(&path).unwrap();
        assert!(remade.len() == 64 && remade != made, "an empty file gets a new token");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), remade);
        std::fs::write(&path, "short\n").unwrap();
        let refused = load_or_create_token(&path).unwrap_err().to_string();
        assert!(refused.contains("shorter than 16 characters"), "{refused}");
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_scheme_in_any_case_and_token_exact() {
        for given in ["Bearer abc123", "bearer abc123", "BEARER abc123"] {
            assert!(bearer_is(&with(given), "abc123"), "{given}");
        }
        for given in ["Bearer abc124", "Bearer abc12", "Basic abc123", "Bearerabc123", "Bearer  abc123", ""] {
            assert!(!bearer_is(&with(given), "abc123"), "{given}");
        }
        assert!(!bearer_is(&HeaderMap::new(), "abc123"));
    }
}
