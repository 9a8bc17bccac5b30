//! `cpis lookup`: what a clinician sees, as text or as one JSON document.
//!
//! The whole NHS number is shown here: it is the clinician's own lookup, on their own screen.
//! Nothing in this module logs.

use crate::render::ago;
use cpis_node::client::{ClientError, HubFailure, LookupOutcome};
use cpis_protocol::records::{LookupKind, Plan};
use cpis_protocol::setting::{ShownPlan, ShownVisit};
use cpis_protocol::time::Timestamp;
use serde_json::{Value, json};
use std::fmt::Write;

fn kind_name(kind: LookupKind) -> &'static str {
    match kind {
        LookupKind::Unscheduled => "unscheduled",
        LookupKind::Scheduled => "scheduled",
    }
}

pub fn failure_json(f: &HubFailure) -> Value {
    json!({ "hub": f.hub.as_str(), "address": f.address, "kind": f.kind.name(), "reason": f.reason })
}

fn plan_json(p: &ShownPlan, now: Timestamp) -> Value {
    let plan = &p.plan;
    let as_of = p.freshness.as_ref().filter(|f| f.as_of.0 > 0).map(|f| f.as_of);
    json!({
        "authority": p.authority.as_str(),
        "authority_name": p.authority_name,
        "reference": plan.reference.as_str(),
        "plan_type": plan.plan_type.short_name(),
        "snomed": plan.plan_type.snomed_code(),
        "description": plan.plan_type.description(),
        "start": plan.start.to_string(),
        "end": plan.end.map(|d| d.to_string()),
        "due": plan.due.map(|d| d.to_string()),
        "open": plan.open_on(now.date()),
        "contacts": p.contacts.as_ref().map(|c| json!({
            "name": c.name, "office_phone": c.office_phone, "out_of_hours_phone": c.out_of_hours_phone,
        })),
        "as_of": as_of.map(|t| t.to_string()),
        "as_of_age_ms": as_of.map(|t| now.since(t)),
    })
}

fn visit_json(v: &ShownVisit) -> Value {
    json!({
        "at": v.at.to_string(),
        "setting": v.setting.as_str(),
        "setting_name": v.setting_name,
        "setting_type": v.setting_type.name(),
        "hub": v.hub.as_str(),
    })
}

/// The outcome as one JSON document (shape in docs/cli.md).
pub fn lookup_json(o: &LookupOutcome, now: Timestamp) -> Value {
    let a = &o.answer;
    json!({
        "nhs": a.nhs.digits(),
        "kind": kind_name(o.kind),
        "lookup_id": o.lookup_id.to_hex(),
        "looked_at": o.at.to_string(),
        "hub": a.hub.as_str(),
        "hub_name": o.hub_name,
        "hub_address": o.hub_address.to_string(),
        "failed_hubs": o.failed.iter().map(failure_json).collect::<Vec<_>>(),
        "directory_version": o.directory_version,
        "directory_saved": o.directory_saved,
        "records": a.plans.len(),
        "plans": a.plans.iter().map(|p| plan_json(p, now)).collect::<Vec<_>>(),
        "history": a.history.iter().map(visit_json).collect::<Vec<_>>(),
        "warnings": o.warnings,
    })
}

/// A failed lookup as one JSON document: `{"error", "failed_hubs"}`.
pub fn error_json(e: &ClientError) -> Value {
    let failed: &[HubFailure] = match e {
        ClientError::AllHubsUnreachable { failures }
        | ClientError::AnswerUnverified { failures }
        | ClientError::Refused { failed: failures, .. } => failures,
        _ => &[],
    };
    json!({ "error": e.to_string(), "failed_hubs": failed.iter().map(failure_json).collect::<Vec<_>>() })
}

fn plan_dates(plan: &Plan) -> String {
    let mut s = format!("started {}", plan.start);
    match plan.end {
        Some(end) => {
            let _ = write!(s, ", ended {end}");
        }
        None => s.push_str(", open"),
    }
    if let Some(due) = plan.due {
        let _ = write!(s, ", baby due {due}");
    }
    s
}

fn plan_text(out: &mut String, p: &ShownPlan, now: Timestamp) {
    let plan = &p.plan;
    let _ = writeln!(
        out,
        "\n  ALERT: {} ({}, SNOMED CT {})",
        plan.plan_type.description().to_uppercase(),
        plan.plan_type.short_name(),
        plan.plan_type.snomed_code()
    );
    let _ = writeln!(out, "    authority:     {} ({})", p.authority_name, p.authority);
    let _ = writeln!(out, "    plan:          {}, {}", plan.reference, plan_dates(plan));
    match &p.contacts {
        Some(c) => {
            let _ = writeln!(out, "    office hours:  {}  ({})", c.office_phone, c.name);
            let _ = writeln!(out, "    out of hours:  {}  (emergency duty team)", c.out_of_hours_phone);
        }
        None => {
            let _ = writeln!(out, "    contacts:      none on record: call the authority's switchboard");
        }
    }
    let fresh = match p.freshness.as_ref().filter(|f| f.as_of.0 > 0) {
        Some(f) => format!("as of {} ({})", ago(now, f.as_of), f.as_of),
        None => "freshness unknown: the hub has not yet confirmed its copy is current".to_string(),
    };
    let _ = writeln!(out, "    data:          {fresh}");
}

/// What the clinician reads.
pub fn lookup_text(o: &LookupOutcome, now: Timestamp) -> String {
    let a = &o.answer;
    let mut out = String::new();
    let _ = writeln!(out, "NHS number {} ({} lookup {})", a.nhs.grouped(), kind_name(o.kind), o.lookup_id);
    let _ = writeln!(out, "Answered by hub {} ({}) at {}", a.hub, o.hub_name, o.hub_address);
    for f in &o.failed {
        let _ = writeln!(out, "  tried first: {f}");
    }
    if a.plans.is_empty() {
        let _ =
            writeln!(out, "\nNo records: no visible child protection or looked after child plan for this NHS number.");
    } else {
        let _ = writeln!(out, "\n{} visible plan(s):", a.plans.len());
        for p in &a.plans {
            plan_text(&mut out, p, now);
        }
    }
    history_text(&mut out, &a.history, now);
    let _ = writeln!(out);
    match (o.kind, a.plans.is_empty()) {
        (LookupKind::Unscheduled, false) => {
            let mut names: Vec<&str> = a.plans.iter().map(|p| p.authority_name.as_str()).collect();
            names.dedup();
            let _ = writeln!(out, "This visit is recorded and {} will be notified.", names.join(", "));
        }
        (LookupKind::Unscheduled, true) => {
            let _ = writeln!(out, "Nobody is notified: there is no plan for this number.");
        }
        (LookupKind::Scheduled, _) => {
            let _ = writeln!(out, "Scheduled lookup: audited, but no authority is notified and no visit is recorded.");
        }
    }
    for w in &o.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(v) = o.directory_saved {
        let _ = writeln!(out, "The hub passed on directory version {v}; it was saved to the directory file.");
    }
    out
}

fn history_text(out: &mut String, history: &[ShownVisit], now: Timestamp) {
    if history.is_empty() {
        let _ = writeln!(out, "\nNo previous unscheduled visits recorded.");
        return;
    }
    let _ = writeln!(out, "\nPrevious unscheduled visits ({}, newest first):", history.len());
    for v in history {
        let _ = writeln!(
            out,
            "  {}  ({:>8})  {} ({}, {}), via hub {}",
            v.at,
            ago(now, v.at),
            v.setting_name,
            v.setting,
            v.setting_type.name(),
            v.hub
        );
    }
}
