//! The status page and the gauges of `/metrics`, read from the running machine.

use crate::runtime::{Node, NodeMachine};
use cpis_protocol::directory::Role;
use cpis_protocol::ids::OdsCode;
use serde_json::{Value, json};
use std::fmt::Write;

/// Members this node keeps a connection with, and whether it is up.
fn peers(node: &Node) -> Vec<Value> {
    let dir = node.machine.directory();
    let me = dir.member(&node.config.code());
    let mut expected: Vec<(OdsCode, Role)> = match &node.machine {
        NodeMachine::Authority(_) => {
            me.map(|m| m.home_hubs.iter().map(|h| (h.clone(), Role::Hub)).collect()).unwrap_or_default()
        }
        NodeMachine::Hub(h) => dir
            .members()
            .iter()
            .filter(|m| {
                (m.role == Role::Hub && m.code != *h.code())
                    || (m.role == Role::Authority && m.home_hubs.contains(h.code()))
            })
            .map(|m| (m.code.clone(), m.role))
            .collect(),
    };
    for (code, p) in &node.peers {
        if !expected.iter().any(|(c, _)| c == code) {
            expected.push((code.clone(), p.role));
        }
    }
    expected
        .into_iter()
        .map(|(code, role)| {
            let state = if node.peers.contains_key(&code) { "connected" } else { "disconnected" };
            json!({ "code": code.as_str(), "role": role.name(), "state": state })
        })
        .collect()
}

pub fn status(node: &Node) -> Value {
    let dir = node.machine.directory();
    let code = node.config.code();
    let name = dir.member(&code).map(|m| m.name.clone()).unwrap_or_default();
    let now = crate::net::now();
    match &node.machine {
        NodeMachine::Authority(a) => {
            let inbox: Vec<_> = a.inbox().collect();
            json!({
                "role": "authority", "code": code.as_str(), "name": name,
                "directory_version": dir.version(), "feed_seq": a.last_seq(), "plans": a.plans().count(),
                "notifications": inbox.len(),
                "notifications_unacknowledged": inbox.iter().filter(|i| i.acknowledged.is_none()).count(),
                "peers": peers(node), "uptime_s": node.started.elapsed().as_secs(),
            })
        }
        NodeMachine::Hub(h) => {
            let origins: Vec<Value> = h
                .high_waters()
                .into_iter()
                .map(|hw| {
                    // Zero: the hub has not yet heard how current its copy is.
                    let known = hw.as_of.as_millis() > 0;
                    json!({
                        "origin": hw.origin.as_str(),
                        "seq": hw.seq,
                        "as_of": known.then(|| hw.as_of.to_string()),
                        "lag_ms": known.then(|| now.since(hw.as_of)),
                    })
                })
                .collect();
            let waiting: Vec<Value> =
                h.outbox_depths().into_iter().map(|(a, n)| json!({ "authority": a.as_str(), "waiting": n })).collect();
            json!({
                "role": "hub", "code": code.as_str(), "name": name, "directory_version": dir.version(),
                "peers": peers(node), "settings_connected": node.setting_sessions(),
                "origins": origins, "notifications_waiting": waiting, "equivocations": h.equivocations().len(),
                "uptime_s": node.started.elapsed().as_secs(),
            })
        }
    }
}

pub fn metrics(node: &Node) -> String {
    let mut out = String::new();
    node.metrics.render(&mut out);
    let now = crate::net::now();
    let _ = writeln!(
        out,
        "# TYPE cpis_directory_version gauge\ncpis_directory_version {}",
        node.machine.directory().version()
    );
    let _ = writeln!(out, "# TYPE cpis_peers_connected gauge\ncpis_peers_connected {}", node.peers.len());
    let _ = writeln!(out, "# HELP cpis_queue_depth Items waiting: the event loop's inputs, frames towards each peer.");
    let _ =
        writeln!(out, "# TYPE cpis_queue_depth gauge\ncpis_queue_depth{{queue=\"inputs\"}} {}", node.inputs_queued());
    for (code, peer) in &node.peers {
        let _ = writeln!(out, "cpis_queue_depth{{queue=\"peer\",peer=\"{code}\"}} {}", peer.queued());
    }
    let _ = writeln!(out, "# TYPE cpis_api_waiting_durable gauge\ncpis_api_waiting_durable {}", node.waiting_api.len());
    if let NodeMachine::Hub(h) = &node.machine {
        let _ = writeln!(
            out,
            "# HELP cpis_replication_lag_seconds Time since the hub last knew its copy of an origin's feed to be current."
        );
        let _ = writeln!(out, "# TYPE cpis_replication_lag_seconds gauge");
        for hw in h.high_waters().into_iter().filter(|hw| hw.as_of.as_millis() > 0) {
            let _ = writeln!(
                out,
                "cpis_replication_lag_seconds{{origin=\"{}\"}} {:.3}",
                hw.origin,
                now.since(hw.as_of) as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP cpis_notifications_waiting Notifications not yet acknowledged, by destination authority."
        );
        let _ = writeln!(out, "# TYPE cpis_notifications_waiting gauge");
        for (authority, n) in h.outbox_depths() {
            let _ = writeln!(out, "cpis_notifications_waiting{{authority=\"{authority}\"}} {n}");
        }
        let _ = writeln!(out, "# TYPE cpis_equivocations gauge\ncpis_equivocations {}", h.equivocations().len());
    }
    if let NodeMachine::Authority(a) = &node.machine {
        let unread = a.inbox().filter(|i| i.acknowledged.is_none()).count();
        let _ = writeln!(out, "# TYPE cpis_inbox_unacknowledged gauge\ncpis_inbox_unacknowledged {unread}");
    }
    out
}
