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
    if role == "authority" {
        let _ = writeln!(out, "Feed:          {} entries published", number(s, "feed_seq"));
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
    let mut rows = vec![vec!["  CODE".to_string(), "ROLE".into(), "STATE".into()]];
    for p in peers {
        rows.push(vec![format!("  {}", text(p, "code")), text(p, "role").to_string(), text(p, "state").to_string()]);
    }
    out.push_str(&table(&rows));
}

fn hub_text(out: &mut String, s: &Value) {
    let _ = writeln!(out, "Care-setting sessions open: {}", number(s, "settings_connected"));
    let origins = items(s, "origins");
    let _ = writeln!(out, "\nReplication ({} origins):", origins.len());
    let mut rows = vec![vec!["  ORIGIN".to_string(), "SEQ".into(), "AS OF".into(), "LAG".into()]];
    for o in origins {
        // An `as_of` of the epoch means the hub has not yet heard how current its copy is.
        let known = !text(o, "as_of").starts_with("1970-01-01");
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
