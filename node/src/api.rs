//! The local operator API (docs/api.md): axum handlers that turn HTTP requests into
//! [`ApiRequest`]s for the event loop, and the loop's side that answers them, holding each
//! change's answer until its write is durable.

use crate::import::{self, ImportRow};
use crate::runtime::{Input, Node, NodeMachine};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cpis_protocol::authority::{Change, CommandError, InboxItem};
use cpis_protocol::directory::SignedDirectory;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::records::{Contacts, LookupKind, Plan, PlanType};
use cpis_protocol::time::Date;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Largest request body (a CSV import).
pub const BODY_BYTES_MAX: usize = 64 << 20;

/// What the operator asked for.
pub enum ApiCall {
    Status,
    Metrics,
    ListPlans,
    RecordPlan(Plan),
    EndPlan(PlanRef, Date),
    WithdrawPlan(PlanRef),
    Import(Vec<ImportRow>),
    SetContacts(Contacts),
    ListNotifications,
    Acknowledge(LookupId, String),
    Directories(Vec<SignedDirectory>),
}

/// A request and where to send its answer.
pub struct ApiRequest {
    pub call: ApiCall,
    pub reply: oneshot::Sender<ApiReply>,
}

/// An answer: a status and a JSON body (or Prometheus text).
pub enum ApiReply {
    Json(StatusCode, Value),
    Text(String),
}

/// An answer held until a write is durable.
pub struct Pending {
    reply: oneshot::Sender<ApiReply>,
    body: Value,
}

#[derive(Clone)]
struct ApiState {
    inputs: mpsc::Sender<Input>,
    token: String,
}

/// Reads the API token, creating it (owner-only) on first start.
pub fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_string());
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    crate::config::write_private(path, token.as_bytes())?;
    Ok(token)
}

pub fn router(inputs: mpsc::Sender<Input>, token: String) -> Router {
    Router::new()
        .route("/status", get(|s, h| call(s, h, ApiCall::Status)))
        .route("/metrics", get(metrics))
        .route("/plans", get(|s, h| call(s, h, ApiCall::ListPlans)).post(record_plan))
        .route("/plans/import", post(import_csv))
        .route("/plans/{reference}/end", post(end_plan))
        .route("/plans/{reference}/withdraw", post(withdraw_plan))
        .route("/contacts", put(set_contacts))
        .route("/notifications", get(|s, h| call(s, h, ApiCall::ListNotifications)))
        .route("/notifications/{lookup_id}/ack", post(acknowledge))
        .route("/directory", post(publish_directory))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(ApiState { inputs, token })
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn authorised(state: &ApiState, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", state.token);
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    // Constant time in the content: compare every byte whatever differs first.
    given.len() == expected.len() && given.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn call(State(state): State<ApiState>, headers: HeaderMap, call_: ApiCall) -> Response {
    if !authorised(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see <data_dir>/api.token)");
    }
    ask(&state, call_).await
}

async fn ask(state: &ApiState, call: ApiCall) -> Response {
    let (reply, rx) = oneshot::channel();
    if state.inputs.send(Input::Api(ApiRequest { call, reply })).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    match rx.await {
        Ok(ApiReply::Json(status, body)) => (status, axum::Json(body)).into_response(),
        Ok(ApiReply::Text(text)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node stopped before the change was durable"),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    ask(&state, ApiCall::Metrics).await
}

#[derive(Deserialize)]
struct PlanBody {
    reference: String,
    nhs: String,
    plan_type: String,
    start: String,
    end: Option<String>,
    due: Option<String>,
}

fn optional_date(field: &str, text: Option<&str>) -> Result<Option<Date>, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => Date::parse(t).map(Some).map_err(|e| format!("{field}: {e}")),
    }
}

fn parse_plan(b: &PlanBody) -> Result<Plan, String> {
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

async fn record_plan(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<PlanBody>(&body).map_err(|e| e.to_string()).and_then(|b| parse_plan(&b));
    match parsed {
        Ok(plan) => call(State(state), headers, ApiCall::RecordPlan(plan)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn end_plan(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct EndBody {
        end: String,
    }
    let parsed = PlanRef::parse(&reference).map_err(|e| format!("reference: {e}")).and_then(|r| {
        let b: EndBody = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok((r, Date::parse(&b.end).map_err(|e| format!("end: {e}"))?))
    });
    match parsed {
        Ok((r, end)) => call(State(state), headers, ApiCall::EndPlan(r, end)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn withdraw_plan(State(state): State<ApiState>, headers: HeaderMap, Path(reference): Path<String>) -> Response {
    match PlanRef::parse(&reference) {
        Ok(r) => call(State(state), headers, ApiCall::WithdrawPlan(r)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("reference: {e}")),
    }
}

async fn import_csv(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see <data_dir>/api.token)");
    }
    match import::parse_csv(&body) {
        Ok(rows) => ask(&state, ApiCall::Import(rows)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn set_contacts(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    match serde_json::from_slice::<Contacts>(&body) {
        Ok(c) => call(State(state), headers, ApiCall::SetContacts(c)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn acknowledge(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct AckBody {
        by: String,
    }
    let Some(lookup_id) = LookupId::from_hex(&id) else {
        return error(StatusCode::BAD_REQUEST, "lookup_id: 32 hex characters");
    };
    match serde_json::from_slice::<AckBody>(&body) {
        Ok(b) => call(State(state), headers, ApiCall::Acknowledge(lookup_id, b.by)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn publish_directory(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    match cpis_protocol::codec::decode::<Vec<SignedDirectory>>(&body, crate::config::DIRECTORY_FILE_BYTES_MAX) {
        Ok(chain) => call(State(state), headers, ApiCall::Directories(chain)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("not a list of signed directory versions: {e}")),
    }
}

// ---- The event loop's side ----

fn reply(sender: oneshot::Sender<ApiReply>, status: StatusCode, body: Value) {
    let _ = sender.send(ApiReply::Json(status, body));
}

fn result_json(change: Change) -> Value {
    match change {
        Change::Applied { .. } => json!({ "result": "applied" }),
        Change::Unchanged => json!({ "result": "unchanged" }),
    }
}

/// Answers what can be answered now; holds the rest until durable.
pub fn handle(node: &mut Node, request: ApiRequest) {
    let ApiRequest { call, reply: sender } = request;
    let now = crate::net::now();
    match call {
        ApiCall::Status => reply(sender, StatusCode::OK, crate::status::status(node)),
        ApiCall::Metrics => {
            let _ = sender.send(ApiReply::Text(crate::status::metrics(node)));
        }
        ApiCall::Directories(chain) => match node.machine.as_dyn().handle_directories(chain, now) {
            Ok(version) => reply_when_durable(node, sender, json!({ "directory_version": version })),
            Err(e) => reply(sender, StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
        },
        call => {
            let NodeMachine::Authority(authority) = &mut node.machine else {
                return reply(
                    sender,
                    StatusCode::NOT_FOUND,
                    json!({ "error": "only an authority node keeps plans and notifications" }),
                );
            };
            let read_only = matches!(call, ApiCall::ListPlans | ApiCall::ListNotifications);
            match authority_call(authority, call, now) {
                Ok(body) if read_only => reply(sender, StatusCode::OK, body),
                Ok(body) => reply_when_durable(node, sender, body),
                Err((status, e)) => reply(sender, status, json!({ "error": e })),
            }
        }
    }
}

type CallResult = Result<Value, (StatusCode, String)>;

fn command(r: Result<Change, CommandError>) -> CallResult {
    match r {
        Ok(change) => Ok(result_json(change)),
        Err(e @ (CommandError::UnknownPlan(_) | CommandError::UnknownNotification(_))) => {
            Err((StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ CommandError::KeyNotActive(_)) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
    }
}

fn authority_call(
    a: &mut cpis_protocol::authority::Authority,
    call: ApiCall,
    now: cpis_protocol::time::Timestamp,
) -> CallResult {
    match call {
        ApiCall::ListPlans => Ok(json!({ "plans": a.plans().map(plan_json).collect::<Vec<_>>() })),
        ApiCall::ListNotifications => {
            Ok(json!({ "notifications": a.inbox().map(notification_json).collect::<Vec<_>>() }))
        }
        ApiCall::RecordPlan(plan) => command(a.record_plan(plan, now)),
        ApiCall::EndPlan(r, end) => command(a.end_plan(&r, end, now)),
        ApiCall::WithdrawPlan(r) => command(a.withdraw_plan(&r, now)),
        ApiCall::SetContacts(c) => command(a.set_contacts(c, now)),
        ApiCall::Acknowledge(id, by) => command(a.acknowledge(id, &by, now)),
        ApiCall::Import(rows) => Ok(import::apply(a, rows, now)),
        ApiCall::Status | ApiCall::Metrics | ApiCall::Directories(_) => {
            Err((StatusCode::INTERNAL_SERVER_ERROR, "misrouted call".into()))
        }
    }
}

/// Answers once every write handed out so far is durable: a change's own write, and any earlier
/// one its answer depends on ("unchanged" may describe a change still being written).
fn reply_when_durable(node: &mut Node, sender: oneshot::Sender<ApiReply>, body: Value) {
    node.drain();
    if node.writes_submitted > node.writes_durable {
        node.waiting_api.entry(node.writes_submitted).or_default().push(Pending { reply: sender, body });
    } else {
        reply(sender, StatusCode::OK, body);
    }
}

/// Answers every request held for writes up to `write_id`.
pub fn release(node: &mut Node, write_id: u64) {
    let rest = node.waiting_api.split_off(&(write_id + 1));
    let done = std::mem::replace(&mut node.waiting_api, rest);
    for pending in done.into_values().flatten() {
        reply(pending.reply, StatusCode::OK, pending.body);
    }
}

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

fn notification_json(item: &InboxItem) -> Value {
    let n = &item.notification.body;
    let e = &n.event.body;
    json!({
        "lookup_id": e.lookup_id.to_hex(),
        "received_at": item.received_at.to_string(),
        "hub": n.hub.as_str(),
        "looked_at": e.at.to_string(),
        "nhs": e.nhs.digits(),
        "kind": match e.kind { LookupKind::Unscheduled => "unscheduled", LookupKind::Scheduled => "scheduled" },
        "setting": { "code": e.setting.as_str(), "name": e.setting_name, "type": e.setting_type.name() },
        "person": { "id": e.person.id, "name": e.person.name, "role": e.person.role },
        "matched": n.matched.iter().map(PlanRef::as_str).collect::<Vec<_>>(),
        "acknowledged": item.acknowledged.as_ref().map(|(at, by)| json!({ "at": at.to_string(), "by": by })),
    })
}
