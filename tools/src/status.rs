//! `cpis status`: a node's `/status` document, rendered for people.

use crate::api::{ApiError, NodeApi};
use crate::render::{duration, items, number, table, text};
use serde_json::Value;
use std::fmt::Write;

pub async fn status(api: &NodeApi) -> Result<Value, ApiError> {
    api.get("/status").await
}

/// The status as readable text, for either role.
pub fn status_text(s: &Value) -> String {
    let mut out = String::new();
    let role = text(s, "role");
    let _ = writeln!(
        out,
        "{role} {} ({}): directory version {}, up {}",
        text(s, "code"),
        text(s, "name"),
        number(s, "directory_version"),
        duration(number(s, "uptime_s") * 1000)
    );
    let key = s.get("key").cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "Key:           {} ({}, valid until {}); directory expires {}",
        text(&key, "id"),
        text(&key, "status"),
        text(&key, "valid_until"),
        text(s, "directory_expires_at")
    );
    if role == "authority" {
        let _ = writeln!(
            out,
            "Feed:          sequence {}, head signed {}",
            number(s, "feed_seq"),
            text(s, "head_signed_at")
        );
        let held: Vec<String> = items(s, "hubs_holding")
            .iter()
            .map(|h| match h.get("seq").and_then(Value::as_u64) {
                Some(seq) => format!("{} {seq}", text(h, "hub")),
                None => format!("{} not known", text(h, "hub")),
            })
            .collect();
        if !held.is_empty() {
            let _ = writeln!(out, "Held by hubs:  {} (as the home hubs last said)", held.join(", "));
        }
        let _ = writeln!(out, "Plans:         {}", number(s, "plans"));
        let _ = writeln!(
            out,
            "Notifications: {} received, {} not acknowledged",
            number(s, "notifications"),
            number(s, "notifications_unacknowledged")
        );
    }
    peers_text(&mut out, s);
    if role == "hub" {
        hub_text(&mut out, s);
    }
    out
}

fn peers_text(out: &mut String, s: &Value) {
    let peers = items(s, "peers");
    let _ = writeln!(out, "\nPeers ({}):", peers.len());
    if peers.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    let mut rows = vec![vec!["  CODE".to_string(), "ROLE".into(), "STATE".into(), "KEY".into(), "DIRECTORY".into()]];
    for p in peers {
        let version = p.get("directory_version").and_then(Value::as_u64).map_or("-".to_string(), |v| v.to_string());
        let key = p.get("key").and_then(Value::as_str).unwrap_or("-").to_string();
        rows.push(vec![
            format!("  {}", text(p, "code")),
            text(p, "role").to_string(),
            text(p, "state").to_string(),
            key,
            version,
        ]);
    }
    out.push_str(&table(&rows));
}

fn hub_text(out: &mut String, s: &Value) {
    let _ = writeln!(out, "Care-setting sessions open: {}", number(s, "settings_connected"));
    let origins = items(s, "origins");
    let _ = writeln!(out, "\nReplicas of councils' feeds ({}):", origins.len());
    let mut rows = vec![vec!["  ORIGIN".to_string(), "SEQ".into(), "HEAD SIGNED".into(), "AGE".into()]];
    for o in origins {
        // No `as_of`: the hub holds no signed head of this council yet.
        let known = o.get("as_of").is_some_and(|v| v.is_string());
        rows.push(vec![
            format!("  {}", text(o, "origin")),
            number(o, "seq").to_string(),
            if known { text(o, "as_of").to_string() } else { "not yet known".into() },
            if known { duration(number(o, "lag_ms")) } else { "-".into() },
        ]);
    }
    if origins.is_empty() {
        let _ = writeln!(out, "  nothing replicated yet");
    } else {
        out.push_str(&table(&rows));
    }
    let waiting = items(s, "notifications_waiting");
    let total: u64 = waiting.iter().map(|w| number(w, "waiting")).sum();
    let _ = writeln!(out, "\nNotifications waiting for delivery: {total}");
    for w in waiting {
        let _ = writeln!(out, "  to {}: {}", text(w, "authority"), number(w, "waiting"));
    }
    let _ = writeln!(out, "Equivocations detected: {}", number(s, "equivocations"));
}
