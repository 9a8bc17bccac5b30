//! A snapshot of a running node, taken by the event loop, and its two renderings: the status
//! document (`GET /status`, `cpis status`) and the Prometheus text of `GET /metrics`.

use crate::metrics::Metrics;
use cpis_protocol::directory::Role;
use cpis_protocol::ids::OdsCode;
use cpis_protocol::sign::KeyId;
use cpis_protocol::time::Timestamp;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;

/// A peer this node keeps (or has) a connection with.
#[derive(Clone, Debug)]
pub struct PeerState {
    pub code: OdsCode,
    pub role: Role,
    pub connected: bool,
    /// Frames queued towards it and not yet written.
    pub queued: usize,
    /// The key it last connected with, if it connected since this node started.
    pub key: Option<KeyId>,
    /// The directory version its last sync named.
    pub directory_version: Option<u64>,
}

/// An authority's own state.
#[derive(Clone, Debug)]
pub struct AuthorityState {
    pub feed_seq: u64,
    pub head_at: Option<Timestamp>,
    pub plans: usize,
    pub notifications: usize,
    pub unacknowledged: usize,
}

/// One authority's replica at a hub.
#[derive(Clone, Debug)]
pub struct OriginState {
    pub origin: OdsCode,
    pub seq: u64,
    /// When the authority signed the head the replica matches.
    pub head_at: Option<Timestamp>,
}

/// A hub's state.
#[derive(Clone, Debug)]
pub struct HubState {
    pub origins: Vec<OriginState>,
    /// Hubs' visit feeds held (their own included), with their marks.
    pub visit_feeds: Vec<(OdsCode, u64)>,
    pub waiting: BTreeMap<OdsCode, usize>,
    pub oldest_waiting: Option<Timestamp>,
    pub equivocations: usize,
}

/// Everything status and metrics show, read from the event loop in one go.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub role: Role,
    pub code: OdsCode,
    pub name: String,
    pub now: Timestamp,
    pub key_id: KeyId,
    /// `active`, `retired`, `revoked`, `outside its validity window` or `not in the directory`.
    pub key_status: &'static str,
    pub key_valid_until: Option<Timestamp>,
    pub directory_version: u64,
    pub directory_expires_at: Timestamp,
    pub uptime_s: u64,
    pub peers: Vec<PeerState>,
    pub settings_connected: usize,
    pub inputs_queued: usize,
    pub writes_in_flight: u64,
    pub metrics: Metrics,
    pub authority: Option<AuthorityState>,
    pub hub: Option<HubState>,
}

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

impl Snapshot {
    /// Why this node cannot do its work now (empty when it can): its key is not active, its
    /// directory expired, or it is connected to no member at all (a hub with no peer, an
    /// authority with none of its home hubs).
    pub fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.key_status != "active" {
            reasons.push(format!("the key this node runs on ({}) is {}", self.key_id, self.key_status));
        }
        if self.now >= self.directory_expires_at {
            reasons
                .push(format!("directory version {} expired at {}", self.directory_version, self.directory_expires_at));
        }
        if !self.peers.is_empty() && !self.peers.iter().any(|p| p.connected) {
            reasons.push(format!("connected to none of its {} peers", self.peers.len()));
        }
        reasons
    }

    /// The status document (`GET /status`).
    pub fn json(&self) -> Value {
        let peers: Vec<Value> = self
            .peers
            .iter()
            .map(|p| {
                let state = if p.connected { "connected" } else { "disconnected" };
                json!({
                    "code": p.code.as_str(),
                    "role": p.role.name(),
                    "state": state,
                    "key": p.key.map(|k| k.to_string()),
                    "directory_version": p.directory_version,
                })
            })
            .collect();
        let mut doc = json!({
            "role": self.role.name(),
            "code": self.code.as_str(),
            "name": self.name,
            "key": { "id": self.key_id.to_string(), "status": self.key_status, "valid_until": time(self.key_valid_until) },
            "directory_version": self.directory_version,
            "directory_expires_at": self.directory_expires_at.to_string(),
            "peers": peers,
            "uptime_s": self.uptime_s,
        });
        if let Some(a) = &self.authority {
            doc["feed_seq"] = json!(a.feed_seq);
            doc["head_signed_at"] = time(a.head_at);
            doc["plans"] = json!(a.plans);
            doc["notifications"] = json!(a.notifications);
            doc["notifications_unacknowledged"] = json!(a.unacknowledged);
        }
        if let Some(h) = &self.hub {
            let origins: Vec<Value> = h
                .origins
                .iter()
                .map(|o| {
                    json!({
                        "origin": o.origin.as_str(),
                        "seq": o.seq,
                        "as_of": time(o.head_at),
                        "lag_ms": o.head_at.map(|t| self.now.since(t)),
                    })
                })
                .collect();
            let waiting: Vec<Value> =
                h.waiting.iter().map(|(a, n)| json!({ "authority": a.as_str(), "waiting": n })).collect();
            doc["settings_connected"] = json!(self.settings_connected);
            doc["origins"] = json!(origins);
            doc["visit_feeds"] =
                json!(h.visit_feeds.iter().map(|(o, s)| json!({ "origin": o.as_str(), "seq": s })).collect::<Vec<_>>());
            doc["notifications_waiting"] = json!(waiting);
            doc["oldest_waiting_since"] = time(h.oldest_waiting);
            doc["equivocations"] = json!(h.equivocations);
        }
        doc
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        self.metrics.render(&mut out);
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge("cpis_directory_version", "The directory version this node trusts.", self.directory_version.to_string());
        let expiry = self.directory_expires_at.since(self.now) as f64 / 1000.0;
        gauge("cpis_directory_expires_in_seconds", "Time until the trusted directory expires.", format!("{expiry:.0}"));
        let key_ok = u8::from(self.key_status == "active");
        gauge(
            "cpis_own_key_active",
            "1 if the key this node runs on is an active key in the directory.",
            key_ok.to_string(),
        );
        if let Some(until) = self.key_valid_until {
            let left = until.since(self.now) as f64 / 1000.0;
            gauge(
                "cpis_own_key_expires_in_seconds",
                "Time until the key this node runs on expires.",
                format!("{left:.0}"),
            );
        }
        let connected = self.peers.iter().filter(|p| p.connected).count();
        gauge("cpis_peers_connected", "Members connected now.", connected.to_string());
        gauge("cpis_inputs_queued", "Inputs waiting for the event loop.", self.inputs_queued.to_string());
        gauge(
            "cpis_writes_in_flight",
            "Writes handed to the store and not yet durable.",
            self.writes_in_flight.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP cpis_own_key_info The key this node runs on, and its status in the directory.\n\
             # TYPE cpis_own_key_info gauge\ncpis_own_key_info{{key=\"{}\",status=\"{}\"}} 1",
            self.key_id, self.key_status
        );
        let _ = writeln!(
            out,
            "# HELP cpis_peer_queue_frames Frames queued towards each peer.\n# TYPE cpis_peer_queue_frames gauge"
        );
        for p in self.peers.iter().filter(|p| p.connected) {
            let _ = writeln!(out, "cpis_peer_queue_frames{{peer=\"{}\"}} {}", p.code, p.queued);
        }
        if let Some(h) = &self.hub {
            let _ = writeln!(
                out,
                "# HELP cpis_replica_head_age_seconds Age of the newest head of each authority this hub's replica matches.\n# TYPE cpis_replica_head_age_seconds gauge"
            );
            for o in &h.origins {
                if let Some(t) = o.head_at {
                    let _ = writeln!(
                        out,
                        "cpis_replica_head_age_seconds{{origin=\"{}\"}} {:.3}",
                        o.origin,
                        self.now.since(t) as f64 / 1000.0
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP cpis_notifications_waiting Notifications not yet acknowledged, by destination authority.\n# TYPE cpis_notifications_waiting gauge"
            );
            for (authority, n) in &h.waiting {
                let _ = writeln!(out, "cpis_notifications_waiting{{authority=\"{authority}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP cpis_equivocations Equivocations proven.\n# TYPE cpis_equivocations gauge\ncpis_equivocations {}",
                h.equivocations
            );
            let _ = writeln!(
                out,
                "# HELP cpis_settings_connected Setting sessions open.\n# TYPE cpis_settings_connected gauge\ncpis_settings_connected {}",
                self.settings_connected
            );
        }
        if let Some(a) = &self.authority {
            let _ = writeln!(
                out,
                "# HELP cpis_inbox_unacknowledged Notifications not yet acknowledged.\n# TYPE cpis_inbox_unacknowledged gauge\ncpis_inbox_unacknowledged {}",
                a.unacknowledged
            );
        }
        out
    }
}
