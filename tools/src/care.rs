//! `cpis lookup`: what a clinician sees, as text or as one JSON document.
//!
//! Every council the directory lists is accounted for: its plans for the child (checked against
//! its signed head), or, if its data could not be checked as fresh, a warning with its phones.
//! "No records" is said only when every council's fresh head proves it has none.
//!
//! The whole NHS number is shown here: it is the clinician's own lookup, on their own screen.
//! Nothing in this module logs.

use crate::render::ago;
use cpis_node::client::{ClientError, HubFailure, LookupOutcome};
use cpis_protocol::records::{Contacts, LookupKind, Plan};
use cpis_protocol::setting::{AuthorityStatus, AuthorityView, ShownVisit, Unavailable};
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

fn contacts_json(c: &Option<Contacts>) -> Value {
    c.as_ref().map_or(
        Value::Null,
        |c| json!({ "name": c.name, "office_phone": c.office_phone, "out_of_hours_phone": c.out_of_hours_phone }),
    )
}

fn plan_json(a: &AuthorityView, plan: &Plan, now: Timestamp) -> Value {
    let as_of = a.as_of();
    json!({
        "authority": a.code.as_str(),
        "authority_name": a.name,
        "reference": plan.reference.as_str(),
        "plan_type": plan.plan_type.short_name(),
        "snomed": plan.plan_type.snomed_code(),
        "description": plan.plan_type.description(),
        "start": plan.start.to_string(),
        "end": plan.end.map(|d| d.to_string()),
        "due": plan.due.map(|d| d.to_string()),
        "open": plan.open_on(now.date()),
        "contacts": contacts_json(&a.contacts),
        "as_of": as_of.map(|t| t.to_string()),
        "as_of_age_ms": as_of.map(|t| now.since(t)),
        "checked": a.checked(),
    })
}

/// Why a council could not be checked, in words.
fn why(a: &AuthorityView, now: Timestamp) -> String {
    match &a.status {
        AuthorityStatus::Checked { .. } => "checked".into(),
        AuthorityStatus::Stale { as_of } => format!("its data was last confirmed {} ({as_of})", ago(now, *as_of)),
        AuthorityStatus::Unavailable(Unavailable::NoHead) => "the hub holds no signed copy of its data".into(),
        AuthorityStatus::Unavailable(u) => u.to_string(),
    }
}

fn unavailable_json(a: &AuthorityView, now: Timestamp) -> Value {
    json!({
        "authority": a.code.as_str(),
        "authority_name": a.name,
        "reason": why(a, now),
        "as_of": a.as_of().map(|t| t.to_string()),
        "contacts": contacts_json(&a.contacts),
    })
}

fn visit_json(v: &ShownVisit) -> Value {
    json!({
        "at": v.at.to_string(),
        "setting": v.setting.as_str(),
        "setting_name": v.setting_name,
        "setting_type": v.setting_type.map(|t| t.name()),
        "role": v.role,
        "hub": v.hub.as_str(),
    })
}

/// `alert`, `no-records` or `could-not-check`: what the answer comes to.
pub use cpis_node::gateway::result_name;

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
        "result": result_name(o),
        "records": a.plans().count(),
        "plans": a.plans().map(|(auth, p)| plan_json(auth, p, now)).collect::<Vec<_>>(),
        "authorities_checked": a.authorities.iter().filter(|x| x.checked()).count(),
        "unavailable": a.unavailable().map(|x| unavailable_json(x, now)).collect::<Vec<_>>(),
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

fn phones_text(out: &mut String, contacts: &Option<Contacts>) {
    match contacts {
        Some(c) => {
            let _ = writeln!(out, "    office hours:  {}  ({})", c.office_phone, c.name);
            let _ = writeln!(out, "    out of hours:  {}  (emergency duty team)", c.out_of_hours_phone);
        }
        None => {
            let _ = writeln!(out, "    contacts:      none on record: call the council's switchboard");
        }
    }
}

fn plan_text(out: &mut String, a: &AuthorityView, plan: &Plan, now: Timestamp) {
    let banner = if plan.open_on(now.date()) { "ALERT" } else { "ENDED PLAN (shown for a year after its end)" };
    let _ = writeln!(
        out,
        "\n  {banner}: {} ({}, SNOMED CT {})",
        plan.plan_type.description().to_uppercase(),
        plan.plan_type.short_name(),
        plan.plan_type.snomed_code()
    );
    let _ = writeln!(out, "    council:       {} ({})", a.name, a.code);
    let _ = writeln!(out, "    plan:          {}, {}", plan.reference, plan_dates(plan));
    phones_text(out, &a.contacts);
    let fresh = match a.as_of() {
        Some(t) if a.checked() => format!("checked against its signed data as of {} ({t})", ago(now, t)),
        Some(t) => format!("NOT CONFIRMED SINCE {} ({t}): see below", ago(now, t)),
        None => "not confirmed".into(),
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
    let plans: Vec<(&AuthorityView, &Plan)> = a.plans().collect();
    let unavailable: Vec<&AuthorityView> = a.unavailable().collect();
    if !plans.is_empty() {
        let _ = writeln!(out, "\nCHILD CARE ALERT: {} plan(s)", plans.len());
        for (auth, p) in &plans {
            plan_text(&mut out, auth, p, now);
        }
    } else if a.no_records() {
        let _ = writeln!(
            out,
            "\nNo records: every council's signed data ({}) confirms no visible child protection or looked after child plan for this NHS number.",
            a.authorities.len()
        );
    }
    if !unavailable.is_empty() {
        let _ = writeln!(
            out,
            "\nCOULD NOT CHECK {} council(s): their data could not be confirmed as current.\nFollow local safeguarding procedure; call them if there is any concern:",
            unavailable.len()
        );
        for auth in &unavailable {
            let _ = writeln!(out, "\n  {} ({}): {}", auth.name, auth.code, why(auth, now));
            phones_text(&mut out, &auth.contacts);
        }
    }
    history_text(&mut out, &a.history, now);
    let _ = writeln!(out);
    match (o.kind, plans.is_empty()) {
        (LookupKind::Unscheduled, false) => {
            let mut names: Vec<&str> =
                plans.iter().filter(|(_, p)| p.visible_on(now.date())).map(|(x, _)| x.name.as_str()).collect();
            names.dedup();
            let _ = writeln!(out, "This visit is recorded and {} will be notified.", names.join(", "));
        }
        (LookupKind::Unscheduled, true) => {
            let _ = writeln!(out, "Nobody is notified: no plan was found for this number.");
        }
        (LookupKind::Scheduled, _) => {
            let _ = writeln!(
                out,
                "Scheduled lookup (this setting's type): audited, but no council is notified and no visit is recorded."
            );
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
        let kind = v.setting_type.map_or("setting", |t| t.name());
        let _ = writeln!(
            out,
            "  {}  ({:>8})  {} ({}, {}), seen by a {}, via hub {}",
            v.at,
            ago(now, v.at),
            v.setting_name,
            v.setting,
            kind,
            v.role,
            v.hub
        );
    }
}

/// The lookup kind a gateway's CapabilityStatement declares, if any.
pub fn gateway_lookup_kind(metadata: &Value) -> Option<&str> {
    metadata["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == cpis_node::gateway::fhir::LOOKUP_KIND_EXTENSION)
        .and_then(|e| e["valueCode"].as_str())
}

/// The texts of an OperationOutcome's issues.
pub fn outcome_text(outcome: &Value) -> String {
    let issues = outcome["issue"].as_array().map_or(&[][..], Vec::as_slice);
    issues.iter().filter_map(|i| i["details"]["text"].as_str()).collect::<Vec<_>>().join("; ")
}

/// What a clinician reads of a gateway's `CareTeam` Bundle.
pub fn bundle_text(bundle: &Value, nhs: cpis_protocol::ids::NhsNumber) -> String {
    let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
    let resources: Vec<&Value> = entries.iter().map(|e| &e["resource"]).collect();
    let teams: Vec<&&Value> = resources.iter().filter(|r| r["resourceType"] == "CareTeam").collect();
    let warnings: Vec<&&Value> = resources.iter().filter(|r| r["resourceType"] == "OperationOutcome").collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NHS number {} (through the setting gateway, lookup {})",
        nhs.grouped(),
        bundle["id"].as_str().unwrap_or("?")
    );
    if !teams.is_empty() {
        let _ = writeln!(out, "\nCHILD CARE ALERT: {} plan(s)", teams.len());
    }
    for t in &teams {
        let banner = if t["status"] == "active" { "ALERT" } else { "ENDED PLAN (shown for a year after its end)" };
        let council = &t["managingOrganization"][0];
        let _ = writeln!(out, "\n  {banner}: {}", t["name"].as_str().unwrap_or("").to_uppercase());
        let _ = writeln!(
            out,
            "    council:       {} ({})",
            council["display"].as_str().unwrap_or("?"),
            council["identifier"]["value"].as_str().unwrap_or("?")
        );
        let end = t["period"]["end"].as_str().map_or(", open".to_string(), |e| format!(", ended {e}"));
        let _ = writeln!(out, "    plan:          started {}{end}", t["period"]["start"].as_str().unwrap_or("?"));
        let phones: Vec<&str> =
            t["telecom"].as_array().map_or(vec![], |p| p.iter().filter_map(|x| x["value"].as_str()).collect());
        match phones.as_slice() {
            [office, out_of_hours, ..] => {
                let _ = writeln!(
                    out,
                    "    office hours:  {office}\n    out of hours:  {out_of_hours}  (emergency duty team)"
                );
            }
            _ => {
                let _ = writeln!(out, "    contacts:      none on record: call the council's switchboard");
            }
        }
        for note in t["note"].as_array().map_or(&[][..], Vec::as_slice) {
            let _ = writeln!(out, "    note:          {}", note["text"].as_str().unwrap_or(""));
        }
    }
    if teams.is_empty() && warnings.is_empty() {
        let _ = writeln!(
            out,
            "\nNo records: every council's signed data confirms no visible child protection or looked after child plan for this NHS number."
        );
    }
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nCOULD NOT CHECK {} council(s). Follow local safeguarding procedure:", warnings.len());
        for w in &warnings {
            let _ = writeln!(out, "  {}", outcome_text(w));
        }
    }
    out
}
