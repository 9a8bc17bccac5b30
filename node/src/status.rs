//! A snapshot of a running node, taken by the event loop, and its two renderings: the status
//! document (`GET /status`, `cpis status`) and the Prometheus text of `GET /metrics`.

use crate::metrics::{Metrics, gauge};
use cpis_protocol::directory::Role;
use cpis_protocol::ids::OdsCode;
use cpis_protocol::sign::KeyId;
use cpis_protocol::time::Timestamp;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

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
    pub oldest_unacknowledged: Option<Timestamp>,
    /// How far each hub holds the feed, as the home hubs last said (`None`: not said yet).
    pub held: Vec<(OdsCode, Option<u64>)>,
}

/// How far every hub holds an authority's feed, and the sequence of some plans' latest versions
/// (`None` for a plan no longer in the feed).
#[derive(Clone, Debug, Default)]
pub struct PlansHeld {
    pub hubs: Vec<(OdsCode, Option<u64>)>,
    pub seqs: Vec<Option<u64>>,
}

/// Where one plan's latest version has reached.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spread {
    /// Hubs known to hold an older state of the feed.
    pub behind: Vec<OdsCode>,
    /// Hubs no home hub has said anything of yet.
    pub unknown: Vec<OdsCode>,
}

impl PlansHeld {
    /// Where the `i`th plan's latest version has reached; `None` if it is not in the feed.
    pub fn spread(&self, i: usize) -> Option<Spread> {
        let seq = (*self.seqs.get(i)?)?;
        let mut spread = Spread::default();
        for (hub, held) in &self.hubs {
            match held {
                None => spread.unknown.push(hub.clone()),
                Some(h) if *h < seq => spread.behind.push(hub.clone()),
                Some(_) => {}
            }
        }
        Some(spread)
    }
}

impl Spread {
    /// Whether every hub is known to hold the plan's latest version.
    pub fn everywhere(&self) -> bool {
        self.behind.is_empty() && self.unknown.is_empty()
    }

    /// The plan's fields of the API's plans list: `at_every_hub`, `not_yet_at`, `not_known_at`.
    pub fn json(spread: Option<&Spread>) -> Value {
        fn codes(c: &[OdsCode]) -> Vec<&str> {
            c.iter().map(OdsCode::as_str).collect()
        }
        match spread {
            None => json!({ "at_every_hub": null, "not_yet_at": [], "not_known_at": [] }),
            Some(s) => json!({
                "at_every_hub": s.everywhere(),
                "not_yet_at": codes(&s.behind),
                "not_known_at": codes(&s.unknown),
            }),
        }
    }
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
    pub started_at: Timestamp,
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
            reasons.push(format!("connected to none of its peers ({} in the directory)", self.peers.len()));
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
            doc["hubs_holding"] =
                json!(a.held.iter().map(|(h, seq)| json!({ "hub": h.as_str(), "seq": seq })).collect::<Vec<_>>());
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

    /// The Prometheus text (version 0.0.4) of `GET /metrics`: the counters and histograms kept
    /// while running, and this snapshot's gauges.
    pub fn prometheus(&self) -> String {
        let mut r = Registry::default();
        self.metrics.register(&mut r);
        let seconds = |ms: u64| ms as f64 / 1000.0;
        let family = |r: &mut Registry, name: &str, help: &str, label: &'static str, values: Vec<(String, f64)>| {
            let f = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
            for (k, v) in values {
                f.get_or_create(&[(label, k)]).set(v);
            }
            r.register(name, help, f);
        };
        gauge(
            &mut r,
            "cpis_ready",
            "1 if the node can do its work now (see /readyz for why not)",
            f64::from(u8::from(self.not_ready().is_empty())),
        );
        gauge(
            &mut r,
            "cpis_directory_version",
            "The directory version this node trusts",
            self.directory_version as f64,
        );
        gauge(
            &mut r,
            "cpis_directory_expires_in_seconds",
            "Time until the trusted directory expires",
            seconds(self.directory_expires_at.since(self.now)),
        );
        gauge(
            &mut r,
            "cpis_own_key_active",
            "1 if the key this node runs on is an active key in the directory",
            f64::from(u8::from(self.key_status == "active")),
        );
        if let Some(until) = self.key_valid_until {
            gauge(
                &mut r,
                "cpis_own_key_expires_in_seconds",
                "Time until the key this node runs on expires",
                seconds(until.since(self.now)),
            );
        }
        r.register(
            "cpis_own_key",
            "The key this node runs on, and its status in the directory",
            Info::new([("key", self.key_id.to_string()), ("status", self.key_status.to_string())]),
        );
        let connected = self.peers.iter().filter(|p| p.connected).count();
        gauge(&mut r, "cpis_peers_connected", "Members connected now", connected as f64);
        gauge(&mut r, "cpis_inputs_queued", "Inputs waiting for the event loop", self.inputs_queued as f64);
        gauge(
            &mut r,
            "cpis_writes_in_flight",
            "Writes handed to the store and not yet durable",
            self.writes_in_flight as f64,
        );
        let queues = self.peers.iter().filter(|p| p.connected).map(|p| (p.code.to_string(), p.queued as f64)).collect();
        family(&mut r, "cpis_peer_queue_frames", "Frames queued towards each connected peer", "peer", queues);
        if let Some(h) = &self.hub {
            let ages = h
                .origins
                .iter()
                .filter_map(|o| Some((o.origin.to_string(), seconds(self.now.since(o.head_at?)))))
                .collect();
            family(
                &mut r,
                "cpis_replica_head_age_seconds",
                "Age of the newest signed head of each council's feed this hub holds (councils re-sign it every head_interval_ms, a minute by default)",
                "origin",
                ages,
            );
            let feeds = h.visit_feeds.iter().map(|(o, s)| (o.to_string(), *s as f64)).collect();
            family(
                &mut r,
                "cpis_visit_feed_seq",
                "Mark of each hub's visit feed held here, this hub's own included (visits are numbered by their time in ms; kept apart from councils' feeds)",
                "hub",
                feeds,
            );
            let waiting = h.waiting.iter().map(|(a, n)| (a.to_string(), *n as f64)).collect();
            family(
                &mut r,
                "cpis_notifications_waiting",
                "Notifications not yet acknowledged, by destination council",
                "authority",
                waiting,
            );
            let oldest = h.oldest_waiting.map_or(0.0, |t| seconds(self.now.since(t)));
            gauge(
                &mut r,
                "cpis_notification_oldest_waiting_seconds",
                "Age of the oldest notification not yet acknowledged by its council (0 when none)",
                oldest,
            );
            gauge(
                &mut r,
                "cpis_equivocations",
                "Equivocations proven (a council signed two histories)",
                h.equivocations as f64,
            );
            gauge(&mut r, "cpis_settings_connected", "Setting sessions open", self.settings_connected as f64);
        }
        if let Some(a) = &self.authority {
            gauge(&mut r, "cpis_inbox_unacknowledged", "Notifications not yet acknowledged", a.unacknowledged as f64);
            let oldest = a.oldest_unacknowledged.map_or(0.0, |t| seconds(self.now.since(t)));
            gauge(
                &mut r,
                "cpis_inbox_oldest_unacknowledged_seconds",
                "Age of the oldest notification not yet acknowledged (0 when none)",
                oldest,
            );
        }
        let started = self.now.as_millis().saturating_sub(self.uptime_s * 1000);
        crate::metrics::register_process(&mut r, seconds(started));
        crate::metrics::encode(&r)
    }
}
