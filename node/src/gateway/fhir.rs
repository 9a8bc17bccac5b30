//! The CP-IS FHIR R4 API, as clinical systems call the national one (base `/FHIR/R4`):
//! `CareTeam` and `AuditEvent` searches by NHS number, and the `metadata` CapabilityStatement.
//! docs/gateway.md shows every request and response.
//!
//! Every plan a verified answer shows becomes one `CareTeam`; every council whose data could not
//! be checked as current becomes an `OperationOutcome` entry in the same Bundle that names it
//! and gives its phones, so that no council is ever silently absent. Errors are
//! `OperationOutcome`s with the national Spine codes.

use super::{Caller, Gateway, Via};
use crate::accounts::Access;
use crate::client::{ClientError, LookupOutcome};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Contacts, LookupKind, Person, Plan, check_text};
use cpis_protocol::setting::{AuthorityStatus, AuthorityView, ShownVisit};
use cpis_protocol::time::Timestamp;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
const SPINE_CODES: &str = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode";
const FHIR_JSON: &str = "application/fhir+json";
/// Most visits an `AuditEvent` search returns, newest first.
pub const AUDIT_EVENTS_MAX: usize = 25;
/// Longest `TraceID` echoed back.
const TRACE_ID_CHARS_MAX: usize = 128;

/// An error as the national API gives it.
pub struct FhirError {
    status: StatusCode,
    code: &'static str,
    issue: &'static str,
    text: String,
}

impl FhirError {
    fn new(status: StatusCode, code: &'static str, issue: &'static str, text: impl Into<String>) -> FhirError {
        FhirError { status, code, issue, text: text.into() }
    }
    fn invalid_search(text: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::BAD_REQUEST, "INVALID_SEARCH_DATA", "invalid", text)
    }
    fn precondition(text: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::BAD_REQUEST, "PRECONDITION_FAILED", "required", text)
    }
    fn access_denied(text: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::FORBIDDEN, "ACCESS_DENIED", "forbidden", text)
    }
}

fn operation_outcome(severity: &str, issue: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity,
            "code": issue,
            "details": { "coding": [{ "system": SPINE_CODES, "code": code, "display": code.replace('_', " ").to_lowercase() }], "text": text },
        }],
    })
}

fn fhir_response(status: StatusCode, body: &Value, trace_id: Option<&str>) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    if let Some(value) = trace_id.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert("TraceID", value);
    }
    response
}

impl FhirError {
    fn into_response_with(self, trace_id: Option<&str>) -> Response {
        let body = operation_outcome("error", self.issue, self.code, &self.text);
        fhir_response(self.status, &body, trace_id)
    }
}

/// What every search checks before a lookup: the token, the headers and the NHS number.
struct Search {
    nhs: NhsNumber,
    caller: Caller,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, FhirError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| FhirError::precondition(format!("the {name} header is not plain text"))),
    }
}

fn required<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, FhirError> {
    header_text(headers, name)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| FhirError::precondition(format!("the {name} header is required")))
}

/// The trace id to echo, if the caller sent a usable one.
fn trace_id(headers: &HeaderMap) -> Result<Option<String>, FhirError> {
    match header_text(headers, "TraceID")? {
        None => Ok(None),
        Some(t) if !t.is_empty() && t.len() <= TRACE_ID_CHARS_MAX && t.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(t.to_string()))
        }
        Some(_) => Err(FhirError::precondition(format!(
            "the TraceID header must be 1 to {TRACE_ID_CHARS_MAX} printable characters with no spaces"
        ))),
    }
}

/// `https://fhir.nhs.uk/Id/nhs-number|9434765919` → the NHS number, or the rule it breaks.
fn patient_identifier(query: &HashMap<String, String>) -> Result<NhsNumber, FhirError> {
    let value = query.get("patient:identifier").ok_or_else(|| {
        FhirError::invalid_search(format!("the search needs patient:identifier={NHS_NUMBER_SYSTEM}|{{NHS number}}"))
    })?;
    let (system, number) = value.split_once('|').ok_or_else(|| {
        FhirError::invalid_search(format!("patient:identifier must be {NHS_NUMBER_SYSTEM}|{{NHS number}}"))
    })?;
    if system != NHS_NUMBER_SYSTEM {
        return Err(FhirError::invalid_search(format!("the identifier system must be {NHS_NUMBER_SYSTEM}")));
    }
    NhsNumber::parse(number).map_err(|e| FhirError::invalid_search(format!("invalid NHS number: {e}")))
}

impl Gateway {
    /// Checks a search: the bearer token, `IsUnscheduledAccessEvent` against what this setting
    /// may do, the person headers, and the NHS number.
    fn check_search(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        of: SearchOf,
    ) -> Result<Search, FhirError> {
        let token =
            header_text(headers, "Authorization")?.and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
                FhirError::access_denied("an Authorization: Bearer token for the calling system is required")
            })?;
        let accounts = self.door.accounts();
        let system = accounts
            .system_with_token(token.trim())
            .ok_or_else(|| FhirError::access_denied("the bearer token is not one of this gateway's calling systems"))?;
        let access = match of {
            SearchOf::CareTeam => Access::Alerts,
            SearchOf::AuditEvent => Access::History,
        };
        if let Some(refusal) = system.refusal(access, super::now().date()) {
            tracing::warn!(system = %system.system, reason = %refusal, "FHIR request refused");
            return Err(FhirError::access_denied(refusal));
        }
        let unscheduled = match required(headers, "IsUnscheduledAccessEvent")?.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(FhirError::precondition("the IsUnscheduledAccessEvent header must be true or false")),
        };
        let (_, _, setting_type, kind) = self.client.describe();
        if unscheduled != (kind == LookupKind::Unscheduled) {
            let what = setting_type.map_or("this setting", |t| t.name());
            let may = if kind == LookupKind::Unscheduled { "unscheduled" } else { "scheduled" };
            return Err(FhirError::access_denied(format!(
                "the directory lets {what} make {may} lookups only (IsUnscheduledAccessEvent: {unscheduled})"
            )));
        }
        let mut person = Person { id: String::new(), name: String::new(), role: String::new() };
        for (header, field) in
            [("X-User-Id", &mut person.id), ("X-User-Name", &mut person.name), ("X-User-Role", &mut person.role)]
        {
            let value = required(headers, header)?;
            check_text("value", value).map_err(|e| FhirError::precondition(format!("the {header} header: {e}")))?;
            *field = value.to_string();
        }
        let nhs = patient_identifier(query)?;
        let caller = Caller { person, via: Via::Fhir { system: system.system.clone() }, trace_id: trace_id(headers)? };
        Ok(Search { nhs, caller })
    }
}

fn lookup_error(e: &ClientError) -> FhirError {
    match e {
        ClientError::AllHubsUnreachable { .. } | ClientError::AnswerUnverified { .. } | ClientError::NoHubs => {
            FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NO_HUB_AVAILABLE",
                "transient",
                format!(
                    "could not check: {e}. Nothing is known about this child from the child protection federation; follow local safeguarding procedure"
                ),
            )
        }
        ClientError::Refused { code, .. } => FhirError::access_denied(format!("the hub refused the lookup: {code}")),
        ClientError::Request(e) => FhirError::precondition(format!("the X-User-* headers: {e}")),
        other => {
            FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "exception", other.to_string())
        }
    }
}

/// Which search: the plans, or the visit history.
#[derive(Clone, Copy)]
enum SearchOf {
    CareTeam,
    AuditEvent,
}

/// `GET /FHIR/R4/CareTeam?patient:identifier=…`
pub async fn care_team(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    search(&gateway, &headers, &query, SearchOf::CareTeam).await
}

/// `GET /FHIR/R4/AuditEvent?patient:identifier=…`: the visit history of the latest lookup of
/// this child at this gateway within the last minutes, or of a new lookup.
pub async fn audit_event(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    search(&gateway, &headers, &query, SearchOf::AuditEvent).await
}

async fn search(gateway: &Gateway, headers: &HeaderMap, query: &HashMap<String, String>, of: SearchOf) -> Response {
    let trace = trace_id(headers).ok().flatten();
    let search = match gateway.check_search(headers, query, of) {
        Ok(s) => s,
        Err(e) => return e.into_response_with(trace.as_deref()),
    };
    let outcome = match of {
        SearchOf::CareTeam => gateway.look_up(search.nhs, search.caller).await,
        SearchOf::AuditEvent => gateway.history(search.nhs, search.caller).await,
    };
    match outcome {
        Ok(outcome) => {
            let body = match of {
                SearchOf::CareTeam => care_team_bundle(&outcome, &gateway.fhir_base(), super::now()),
                SearchOf::AuditEvent => audit_event_bundle(&outcome, &gateway.fhir_base()),
            };
            fhir_response(StatusCode::OK, &body, trace.as_deref())
        }
        Err(e) => lookup_error(&e).into_response_with(trace.as_deref()),
    }
}

/// `GET /FHIR/R4/metadata` (no token needed).
pub async fn metadata(State(gateway): State<Arc<Gateway>>) -> Response {
    let kind = gateway.client.describe().3;
    fhir_response(StatusCode::OK, &capability_statement(&gateway.fhir_base(), super::now(), kind), None)
}

/// Any other path under `/FHIR/R4`.
pub async fn not_found() -> Response {
    FhirError::new(
        StatusCode::NOT_FOUND,
        "INVALID_RESOURCE_TYPE",
        "not-supported",
        "only CareTeam and AuditEvent searches and metadata are served",
    )
    .into_response_with(None)
}

fn reference_id(a: &AuthorityView, p: &Plan) -> String {
    format!("{}-{}", a.code, p.reference)
}

fn phones(contacts: &Option<Contacts>) -> Value {
    match contacts {
        Some(c) => json!([
            { "system": "phone", "value": c.office_phone, "use": "work", "rank": 1 },
            { "system": "phone", "value": c.out_of_hours_phone, "use": "work", "rank": 2 },
        ]),
        None => json!([]),
    }
}

/// The council as a contained Organization: ODS code, name, and its two phones as contacts
/// whose purpose says which is which.
fn organisation(a: &AuthorityView) -> Value {
    let mut org = json!({
        "resourceType": "Organization",
        "id": "council",
        "identifier": [{ "system": ODS_SYSTEM, "value": a.code.as_str() }],
        "name": a.name,
    });
    if let Some(c) = &a.contacts {
        org["telecom"] = phones(&a.contacts);
        org["contact"] = json!([
            { "purpose": { "text": "Office hours" }, "name": { "text": c.name }, "telecom": [{ "system": "phone", "value": c.office_phone, "use": "work" }] },
            { "purpose": { "text": "Out of hours (emergency duty team)" }, "telecom": [{ "system": "phone", "value": c.out_of_hours_phone, "use": "work" }] },
        ]);
    }
    org
}

fn care_team_resource(a: &AuthorityView, p: &Plan, now: Timestamp) -> Value {
    let open = p.open_on(now.date());
    let mut period = json!({ "start": p.start.to_string() });
    if let Some(end) = p.end {
        period["end"] = json!(end.to_string());
    }
    let mut notes = Vec::new();
    if let Some(due) = p.due {
        notes.push(json!({ "text": format!("Expected date of delivery: {due}") }));
    }
    match &a.status {
        AuthorityStatus::Checked { as_of } => {
            notes.push(json!({ "text": format!("Checked against {}'s signed data as of {as_of}", a.name) }));
        }
        AuthorityStatus::Stale { as_of } => notes.push(json!({
            "text": format!("NOT CONFIRMED since {as_of}: {}'s data could not be checked as current", a.name)
        })),
        AuthorityStatus::Unavailable(_) => {}
    }
    let mut team = json!({
        "resourceType": "CareTeam",
        "id": reference_id(a, p),
        "contained": [organisation(a)],
        "identifier": [{ "system": "urn:cpis:plan-reference", "value": format!("{}/{}", a.code, p.reference) }],
        "status": if open { "active" } else { "inactive" },
        "category": [{ "coding": [{ "system": SNOMED_SYSTEM, "code": p.plan_type.snomed_code(), "display": p.plan_type.description() }] }],
        "name": p.plan_type.description(),
        "subject": { "identifier": { "system": NHS_NUMBER_SYSTEM, "value": p.nhs.digits() } },
        "period": period,
        "managingOrganization": [{
            "reference": "#council",
            "identifier": { "system": ODS_SYSTEM, "value": a.code.as_str() },
            "display": a.name,
        }],
        "telecom": phones(&a.contacts),
        "note": notes,
    });
    if let Some(as_of) = a.as_of() {
        team["meta"] = json!({ "lastUpdated": as_of.to_string() });
    }
    team
}

/// The warning for a council whose data could not be checked as current.
pub fn unavailable_text(a: &AuthorityView) -> String {
    let why = match &a.status {
        AuthorityStatus::Stale { as_of } => format!("its data was last confirmed at {as_of}"),
        AuthorityStatus::Unavailable(u) => u.to_string(),
        AuthorityStatus::Checked { .. } => "checked".into(),
    };
    let phones =
        a.contacts.as_ref().map_or(String::from(" No phone is on record: call the council's switchboard."), |c| {
            format!(" Office hours {}, out of hours {}.", c.office_phone, c.out_of_hours_phone)
        });
    format!(
        "{} ({}) could not be checked: {why}. Follow local safeguarding procedure and call them if there is any concern.{phones}",
        a.name, a.code
    )
}

/// A `uuid`-shaped id from a lookup id and an index (for Bundle entries that are not resources
/// of their own).
fn urn(lookup_hex: &str, n: usize) -> String {
    let h = format!("{lookup_hex:0<32}");
    let tail = format!("{:012x}", n);
    format!("urn:uuid:{}-{}-4{}-8{}-{tail}", &h[..8], &h[8..12], &h[13..16], &h[17..20])
}

/// The `searchset` Bundle of CareTeams (and OperationOutcomes for councils not checked).
pub fn care_team_bundle(outcome: &LookupOutcome, base: &str, now: Timestamp) -> Value {
    let answer = &outcome.answer;
    let lookup = outcome.lookup_id.to_hex();
    let mut entries: Vec<Value> = answer
        .plans()
        .map(|(a, p)| {
            json!({
                "fullUrl": format!("{base}/CareTeam/{}", reference_id(a, p)),
                "resource": care_team_resource(a, p, now),
                "search": { "mode": "match" },
            })
        })
        .collect();
    let total = entries.len();
    for (n, a) in answer.unavailable().enumerate() {
        entries.push(json!({
            "fullUrl": urn(&lookup, n),
            "resource": operation_outcome("warning", "incomplete", "AUTHORITY_NOT_CHECKED", &unavailable_text(a)),
            "search": { "mode": "outcome" },
        }));
    }
    json!({
        "resourceType": "Bundle",
        "id": lookup,
        "meta": { "lastUpdated": outcome.at.to_string() },
        "type": "searchset",
        "timestamp": outcome.at.to_string(),
        "total": total,
        "link": [{ "relation": "self", "url": format!("{base}/CareTeam?patient:identifier={NHS_NUMBER_SYSTEM}|{}", answer.nhs.digits()) }],
        "entry": entries,
    })
}

fn audit_event_resource(v: &ShownVisit, nhs: &NhsNumber, id: String) -> Value {
    let setting_type = v.setting_type.map_or("Care setting", |t| t.description());
    json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation" },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search type" }],
        "action": "R",
        "recorded": v.at.to_string(),
        "outcome": "0",
        "agent": [{
            "type": { "text": setting_type },
            "role": [{ "text": v.role }],
            "who": { "identifier": { "system": ODS_SYSTEM, "value": v.setting.as_str() }, "display": v.setting_name },
            "requestor": true,
        }],
        "source": {
            "site": format!("recorded by hub {}", v.hub),
            "observer": { "identifier": { "system": ODS_SYSTEM, "value": v.setting.as_str() }, "display": v.setting_name },
        },
        "entity": [{ "what": { "identifier": { "system": NHS_NUMBER_SYSTEM, "value": nhs.digits() } } }],
    })
}

/// The `searchset` Bundle of AuditEvents: the visit history, newest first, at most 25.
pub fn audit_event_bundle(outcome: &LookupOutcome, base: &str) -> Value {
    let answer = &outcome.answer;
    let lookup = outcome.lookup_id.to_hex();
    let entries: Vec<Value> = answer
        .history
        .iter()
        .take(AUDIT_EVENTS_MAX)
        .enumerate()
        .map(|(n, v)| {
            let id = format!("{}-{n}", &lookup[..16]);
            json!({
                "fullUrl": format!("{base}/AuditEvent/{id}"),
                "resource": audit_event_resource(v, &answer.nhs, id),
                "search": { "mode": "match" },
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": lookup,
        "type": "searchset",
        "timestamp": outcome.at.to_string(),
        "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{base}/AuditEvent?patient:identifier={NHS_NUMBER_SYSTEM}|{}", answer.nhs.digits()) }],
        "entry": entries,
    })
}

/// What this API serves, exactly.
/// The extension of the CapabilityStatement that says which kind of lookup this setting makes
/// (`unscheduled` or `scheduled`), the value `IsUnscheduledAccessEvent` must agree with.
pub const LOOKUP_KIND_EXTENSION: &str = "urn:cpis:lookup-kind";

pub fn capability_statement(base: &str, now: Timestamp, kind: LookupKind) -> Value {
    let search = |doc: &str| {
        json!([{
            "name": "patient",
            "type": "reference",
            "documentation": format!("patient:identifier={NHS_NUMBER_SYSTEM}|{{NHS number}} (required). {doc}"),
        }])
    };
    json!({
        "resourceType": "CapabilityStatement",
        "extension": [{ "url": LOOKUP_KIND_EXTENSION, "valueCode": super::kind_name(kind) }],
        "status": "active",
        "date": now.to_string(),
        "publisher": "Child protection federation setting gateway",
        "kind": "instance",
        "software": { "name": "cpis-node (setting gateway)", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "A care setting's gateway to the child protection federation", "url": base },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON],
        "rest": [{
            "mode": "server",
            "documentation": "Headers on every search: Authorization: Bearer {calling system's token}; IsUnscheduledAccessEvent: true|false (must match what the directory lets this setting do); X-User-Id, X-User-Name, X-User-Role (the person looking); TraceID (optional, echoed).",
            "security": { "description": "Each calling system has its own bearer token, made with `cpis gateway system add`." },
            "resource": [
                {
                    "type": "CareTeam",
                    "interaction": [{ "code": "search-type" }],
                    "searchParam": search("One CareTeam per visible plan; an OperationOutcome entry per council that could not be checked."),
                },
                {
                    "type": "AuditEvent",
                    "interaction": [{ "code": "search-type" }],
                    "searchParam": search("The child's previous unscheduled visits, newest first, at most 25."),
                },
            ],
        }],
    })
}
