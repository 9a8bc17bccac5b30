//! A council's commands against its authority node's API: plans, contacts and the inbox of
//! notifications. Each call returns the node's JSON answer unchanged (docs/api.md); the
//! `*_text` functions render it for people.

use crate::api::{ApiError, NodeApi, path_segment};
use crate::render::{items, number, table, text};
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::records::{Contacts, PlanType};
use cpis_protocol::time::Date;
use hyper::Method;
use serde_json::{Value, json};
use std::fmt::Write;

/// Largest CSV file accepted for import (the node's limit).
pub const IMPORT_BYTES_MAX: u64 = 64 << 20;

/// A plan to record, already parsed.
#[derive(Clone, Debug)]
pub struct NewPlan {
    pub reference: PlanRef,
    pub nhs: NhsNumber,
    pub plan_type: PlanType,
    pub start: Date,
    pub end: Option<Date>,
    pub due: Option<Date>,
}

pub async fn add_plan(api: &NodeApi, plan: &NewPlan) -> Result<Value, ApiError> {
    let body = json!({
        "reference": plan.reference.as_str(),
        "nhs": plan.nhs.digits(),
        "plan_type": plan.plan_type.short_name(),
        "start": plan.start.to_string(),
        "end": plan.end.map(|d| d.to_string()),
        "due": plan.due.map(|d| d.to_string()),
    });
    api.send_json(Method::POST, "/plans", &body).await
}

pub async fn end_plan(api: &NodeApi, reference: &PlanRef, end: Date) -> Result<Value, ApiError> {
    let path = format!("/plans/{}/end", path_segment(reference.as_str()));
    api.send_json(Method::POST, &path, &json!({ "end": end.to_string() })).await
}

pub async fn withdraw_plan(api: &NodeApi, reference: &PlanRef) -> Result<Value, ApiError> {
    let path = format!("/plans/{}/withdraw", path_segment(reference.as_str()));
    api.send_json(Method::POST, &path, &json!({})).await
}

pub async fn list_plans(api: &NodeApi) -> Result<Value, ApiError> {
    api.get("/plans").await
}

/// Imports a CSV file; with `dry_run` the node checks every row and stores nothing.
pub async fn import(api: &NodeApi, csv: Vec<u8>, dry_run: bool) -> Result<Value, ApiError> {
    let path = if dry_run { "/plans/import?dry_run=true" } else { "/plans/import" };
    api.send_bytes(path, "text/csv", csv).await
}

pub async fn set_contacts(api: &NodeApi, contacts: &Contacts) -> Result<Value, ApiError> {
    let body = json!({
        "name": contacts.name,
        "office_phone": contacts.office_phone,
        "out_of_hours_phone": contacts.out_of_hours_phone,
    });
    api.send_json(Method::PUT, "/contacts", &body).await
}

/// One page of the inbox, newest first: `open` ones only or all.
pub async fn notifications(api: &NodeApi, open_only: bool, limit: u64, offset: u64) -> Result<Value, ApiError> {
    let show = if open_only { "open" } else { "all" };
    api.get(&format!("/notifications?show={show}&limit={limit}&offset={offset}")).await
}

pub async fn acknowledge(api: &NodeApi, lookup_id: LookupId, by: &str) -> Result<Value, ApiError> {
    let path = format!("/notifications/{}/ack", lookup_id.to_hex());
    api.send_json(Method::POST, &path, &json!({ "by": by })).await
}

/// `applied` or `unchanged`, said in words; `spreads` for changes that go to the hubs.
pub fn result_text(what: &str, spreads: bool, value: &Value) -> String {
    match text(value, "result") {
        "applied" if spreads => {
            format!("{what}: applied (durable at the node; the hubs receive it within seconds)\n")
        }
        "applied" => format!("{what}: applied (durable at the node)\n"),
        "unchanged" => format!("{what}: unchanged (the node already holds exactly this)\n"),
        other => format!("{what}: {other}\n"),
    }
}

fn grouped(nhs: &str) -> String {
    NhsNumber::parse(nhs).map_or_else(|_| nhs.to_string(), NhsNumber::grouped)
}

fn plan_state(plan: &Value) -> &'static str {
    if plan.get("withdrawn").and_then(Value::as_bool) == Some(true) {
        "withdrawn"
    } else if plan.get("end").is_some_and(|e| !e.is_null()) {
        "ended"
    } else {
        "open"
    }
}

/// The plans list as a table.
pub fn plans_text(value: &Value) -> String {
    let plans = items(value, "plans");
    if plans.is_empty() {
        return "No plans recorded at this node.\n".to_string();
    }
    let mut rows = vec![["REFERENCE", "TYPE", "NHS NUMBER", "START", "END", "DUE", "STATE"].map(String::from).to_vec()];
    for p in plans {
        let dash = |field: &str| match text(p, field) {
            "" => "-".to_string(),
            t => t.to_string(),
        };
        rows.push(vec![
            text(p, "reference").to_string(),
            text(p, "plan_type").to_string(),
            grouped(text(p, "nhs")),
            text(p, "start").to_string(),
            dash("end"),
            dash("due"),
            plan_state(p).to_string(),
        ]);
    }
    format!("{}{} plans\n", table(&rows), plans.len())
}

/// The import report: one line per row, then the counts.
pub fn import_text(report: &Value) -> String {
    let mut out = String::new();
    for row in items(report, "rows") {
        let reference = match text(row, "reference") {
            "" => "(no reference)",
            r => r,
        };
        let line = match text(row, "result") {
            "refused" => format!("refused: {}", text(row, "reason")),
            other => other.to_string(),
        };
        let _ = writeln!(out, "row {:>6}  {reference:<24}  {line}", number(row, "row"));
    }
    let (applied, unchanged, refused) =
        (number(report, "applied"), number(report, "unchanged"), number(report, "refused"));
    let _ = writeln!(
        out,
        "\n{applied} applied, {unchanged} unchanged, {refused} refused (of {} rows)",
        applied + unchanged + refused
    );
    if report["dry_run"] == true {
        let _ = writeln!(out, "A dry run: nothing was stored (\"applied\" means the row would be sent to the node).");
    }
    if refused > 0 {
        let _ = writeln!(
            out,
            "The refused rows were not applied: correct them in the file and import it again (rows already applied stay unchanged)."
        );
    }
    out
}

/// One page of the inbox in words, and where it sits among all that match.
pub fn inbox_text(value: &Value, unacknowledged_only: bool) -> String {
    let shown = items(value, "notifications");
    let total = value["total"].as_u64().unwrap_or(shown.len() as u64);
    let offset = value["offset"].as_u64().unwrap_or(0);
    let which = if unacknowledged_only { "notifications not acknowledged" } else { "notifications" };
    if shown.is_empty() {
        return if total == 0 { format!("No {which}.\n") } else { format!("No more {which} ({total} in all).\n") };
    }
    let mut out = String::new();
    for n in shown {
        notification_text(&mut out, n);
    }
    let (first, last) = (offset + 1, offset + shown.len() as u64);
    let _ = writeln!(out, "{which} {first} to {last} of {total}, newest first");
    if last < total {
        let _ = writeln!(out, "the next page: --offset {last}");
    }
    out
}

fn notification_text(out: &mut String, n: &Value) {
    let setting = n.get("setting").unwrap_or(&Value::Null);
    let person = n.get("person").unwrap_or(&Value::Null);
    let matched: Vec<&str> = items(n, "matched").iter().filter_map(Value::as_str).collect();
    let _ = writeln!(out, "Lookup {}", text(n, "lookup_id"));
    let _ = writeln!(
        out,
        "  when:   {} (received {} via hub {})",
        text(n, "looked_at"),
        text(n, "received_at"),
        text(n, "hub")
    );
    let _ = writeln!(out, "  child:  NHS number {}; plans {}", grouped(text(n, "nhs")), matched.join(", "));
    let _ = writeln!(out, "  where:  {} ({}, {})", text(setting, "name"), text(setting, "code"), text(setting, "type"));
    let _ =
        writeln!(out, "  who:    {}, {} (user id {})", text(person, "name"), text(person, "role"), text(person, "id"));
    let status = match n.get("acknowledged") {
        Some(a) if !a.is_null() => format!("acknowledged by {} at {}", text(a, "by"), text(a, "at")),
        _ => "NOT ACKNOWLEDGED".to_string(),
    };
    let _ = writeln!(out, "  status: {status}\n");
}
