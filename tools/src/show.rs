//! `cpis federation show`: a directory as JSON or as text.

use crate::render::{ago, duration};
use cpis_protocol::directory::{KeyStatus, Member, SignedDirectory, TrustedDirectory};
use cpis_protocol::time::Timestamp;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The key and directory version a member's node last connected with, as a hub reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub key_id: String,
    pub directory_version: Option<u64>,
}

/// What a hub's `/status` says each node runs on: the hub itself, and every hub and authority
/// that has connected to it since it started (settings connect only to look up, and are not
/// listed).
pub fn running_from_status(status: &Value) -> BTreeMap<String, Running> {
    let mut running = BTreeMap::new();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    if let (Some(code), Some(key_id)) = (text(status, "code"), status.get("key").and_then(|k| text(k, "id"))) {
        let directory_version = status.get("directory_version").and_then(Value::as_u64);
        running.insert(code, Running { key_id, directory_version });
    }
    for peer in status.get("peers").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(code), Some(key_id)) = (text(peer, "code"), text(peer, "key")) {
            let directory_version = peer.get("directory_version").and_then(Value::as_u64);
            running.insert(code, Running { key_id, directory_version });
        }
    }
    running
}

fn key_status(status: KeyStatus) -> (&'static str, Option<Timestamp>) {
    match status {
        KeyStatus::Active => ("active", None),
        KeyStatus::Retired { at } => ("retired", Some(at)),
        KeyStatus::Revoked { at } => ("revoked", Some(at)),
    }
}

fn member_json(m: &Member, now: Timestamp, running: Option<&Running>) -> Value {
    let keys: Vec<Value> = m
        .keys
        .iter()
        .map(|k| {
            let (status, at) = key_status(k.status);
            json!({
                "key_id": k.id().to_string(),
                "public_key": k.public.to_hex(),
                "valid_from": k.valid_from.to_string(),
                "valid_until": k.valid_until.to_string(),
                "status": status,
                "status_at": at.map(|t| t.to_string()),
                "usable_now": k.usable_at(now),
            })
        })
        .collect();
    json!({
        "code": m.code.as_str(),
        "role": m.role.name(),
        "name": m.name,
        "setting_type": m.setting_type.map(|t| t.name()),
        "home_hubs": m.home_hubs.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        "addresses": m.addresses,
        "contacts": m.contacts.as_ref().map(|c| json!({
            "name": c.name, "office_phone": c.office_phone, "out_of_hours_phone": c.out_of_hours_phone,
        })),
        "keys": keys,
        "running": running.map(|r| json!({ "key_id": r.key_id, "directory_version": r.directory_version })),
    })
}

/// The directory as one JSON document (shape in docs/cli.md).
/// `running` (from [`running_from_status`]) adds what each member's node runs on.
pub fn directory_json(signed: &SignedDirectory, now: Timestamp, running: &BTreeMap<String, Running>) -> Value {
    let d = &signed.directory;
    let problem = TrustedDirectory::bootstrap(signed.clone(), now).err().map(|e| e.to_string());
    let signed_by: Vec<_> = signed.signatures.iter().map(|s| s.key_id).collect();
    json!({
        "federation": d.federation,
        "version": d.version,
        "expires_at": d.expires_at.to_string(),
        "expired": now >= d.expires_at,
        "verified": problem.is_none(),
        "problem": problem,
        "threshold": d.threshold,
        "roots": d.roots.iter().map(|r| json!({
            "key_id": r.id().to_string(),
            "signed": signed_by.contains(&r.id()),
        })).collect::<Vec<_>>(),
        "members": d.members.iter().map(|m| member_json(m, now, running.get(m.code.as_str()))).collect::<Vec<_>>(),
    })
}

/// The directory as readable text.
pub fn directory_text(signed: &SignedDirectory, now: Timestamp, running: &BTreeMap<String, Running>) -> String {
    let d = &signed.directory;
    let mut out = String::new();
    let expiry = if now >= d.expires_at {
        format!("EXPIRED {}", ago(now, d.expires_at))
    } else {
        format!("in {}", duration(d.expires_at.since(now)))
    };
    let _ = writeln!(out, "Federation \"{}\": directory version {}", d.federation, d.version);
    let _ = writeln!(out, "Expires:    {} ({expiry})", d.expires_at);
    let check = match TrustedDirectory::bootstrap(signed.clone(), now) {
        Ok(_) => "valid".to_string(),
        Err(e) => format!("NOT VALID: {e}"),
    };
    let _ = writeln!(out, "Signatures: {check}");
    let roots: Vec<String> = d.roots.iter().map(|r| r.id().to_string()).collect();
    let _ = writeln!(out, "Root keys:  {} of {} must sign: {}", d.threshold, d.roots.len(), roots.join(", "));
    let _ = writeln!(out, "Members:    {}", d.members.len());
    for m in &d.members {
        member_text(&mut out, m, now, running.get(m.code.as_str()));
    }
    out
}

fn member_text(out: &mut String, m: &Member, now: Timestamp, running: Option<&Running>) {
    let _ = writeln!(out, "\n  {} {}  {}", m.role.name(), m.code, m.name);
    if let Some(t) = m.setting_type {
        let _ = writeln!(out, "    type:       {}", t.name());
    }
    if !m.home_hubs.is_empty() {
        let hubs: Vec<&str> = m.home_hubs.iter().map(|h| h.as_str()).collect();
        let _ = writeln!(out, "    home hubs:  {}", hubs.join(", "));
    }
    if !m.addresses.is_empty() {
        let _ = writeln!(out, "    addresses:  {}", m.addresses.join(", "));
    }
    if let Some(c) = &m.contacts {
        let _ = writeln!(
            out,
            "    contacts:   {}; office hours {}; out of hours {}",
            c.name, c.office_phone, c.out_of_hours_phone
        );
    }
    for k in &m.keys {
        let (status, at) = key_status(k.status);
        let when = at.map(|t| format!(" since {t}")).unwrap_or_default();
        let usable = if k.usable_at(now) { "" } else { " (not usable now)" };
        let in_use = match running {
            Some(r) if r.key_id == k.id().to_string() => "  <- its node runs on this key",
            _ => "",
        };
        let _ = writeln!(
            out,
            "    key {}  {status}{when}, valid {} to {}{usable}{in_use}",
            k.id(),
            k.valid_from.date(),
            k.valid_until.date()
        );
    }
    if let Some(version) = running.and_then(|r| r.directory_version) {
        let _ = writeln!(out, "    its node holds directory version {version}");
    }
}
