//! What a node counts while it runs, kept in `prometheus-client` metrics (shared, atomic: the
//! event loop, the store's forwarder, the API and the import jobs each hold a clone), and the
//! registry `GET /metrics` encodes with the gauges of a [`crate::status::Snapshot`].

use cpis_protocol::machine::Event;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// One label: its name and value.
type Label = [(&'static str, &'static str); 1];

/// Upper bounds of the lookup and store-commit histograms, in seconds.
const FAST_BUCKETS_S: [f64; 14] =
    [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Upper bounds of the notification delivery histogram, in seconds (a council may be down for hours).
const DELIVERY_BUCKETS_S: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 60.0, 600.0, 3600.0, 86400.0];

#[derive(Clone, Debug)]
pub struct Metrics {
    messages_in: Family<Label, Counter>,
    messages_out: Family<Label, Counter>,
    messages_dropped: Family<Label, Counter>,
    messages_refused: Family<Label, Counter>,
    connections_refused: Family<Label, Counter>,
    events: Family<Label, Counter>,
    bytes_out: Counter,
    writes: Counter,
    lookup: Histogram,
    store_commit: Histogram,
    delivery: Histogram,
    api_requests: Family<[(&'static str, String); 1], Counter>,
    import_rows: Family<Label, Counter>,
    council_audit_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics {
            messages_in: Family::default(),
            messages_out: Family::default(),
            messages_dropped: Family::default(),
            messages_refused: Family::default(),
            connections_refused: Family::default(),
            events: Family::default(),
            bytes_out: Counter::default(),
            writes: Counter::default(),
            lookup: Histogram::new(FAST_BUCKETS_S),
            store_commit: Histogram::new(FAST_BUCKETS_S),
            delivery: Histogram::new(DELIVERY_BUCKETS_S),
            api_requests: Family::default(),
            import_rows: Family::default(),
            council_audit_failures: Counter::default(),
        };
        // Series an alert watches exist from the start at 0, so that their first increase shows.
        for outcome in ["applied", "unchanged", "refused"] {
            metrics.import_rows(outcome, 0);
        }
        let _ = metrics.messages_refused.get_or_create(&[("reason", "bad_frame")]);
        let _ = metrics.events.get_or_create(&[("event", "directory_forked")]);
        metrics
    }
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::EntriesAccepted { .. } => "entries_accepted",
        Event::BatchRefused { .. } => "batch_refused",
        Event::Equivocation { .. } => "equivocation",
        Event::DirectoryUpdated { .. } => "directory_updated",
        Event::DirectoryRefused { reason: cpis_protocol::directory::DirectoryError::Forked { .. }, .. } => {
            "directory_forked"
        }
        Event::DirectoryRefused { .. } => "directory_refused",
        Event::LookupAnswered { .. } => "lookup_answered",
        Event::LookupRefused { .. } => "lookup_refused",
        Event::RateLimited { .. } => "rate_limited",
        Event::NotificationDelivered { .. } => "notification_delivered",
        Event::NotificationOverdue { .. } => "notification_overdue",
        Event::NotificationReceived { .. } => "notification_received",
        Event::FeedRecovered { .. } => "feed_recovered",
        Event::MessageRefused { .. } => "message_refused",
        Event::RefusedByPeer { .. } => "refused_by_peer",
        Event::PeerNotAdmitted { .. } => "peer_not_admitted",
        Event::Replied { .. } => "command_replied",
    }
}

impl Metrics {
    pub fn received(&self, kind: &'static str) {
        self.messages_in.get_or_create(&[("kind", kind)]).inc();
    }
    pub fn sent(&self, kind: &'static str, bytes: usize) {
        self.messages_out.get_or_create(&[("kind", kind)]).inc();
        self.bytes_out.inc_by(bytes as u64);
    }
    /// A message not sent: its peer's queue was full (or the connection closing).
    pub fn dropped(&self, kind: &'static str) {
        self.messages_dropped.get_or_create(&[("kind", kind)]).inc();
    }
    /// A connection turned away (handshake, admission, role, session limit).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&[("reason", reason)]).inc();
    }
    /// A frame or message refused (the connection may stay open).
    pub fn message_refused(&self, reason: &'static str) {
        self.messages_refused.get_or_create(&[("reason", reason)]).inc();
    }
    pub fn event(&self, e: &Event) {
        let name = event_name(e);
        self.events.get_or_create(&[("event", name)]).inc();
        match e {
            // A rate-limited lookup is also a refused lookup: counted once, as that.
            Event::BatchRefused { .. }
            | Event::MessageRefused { .. }
            | Event::LookupRefused { .. }
            | Event::DirectoryRefused { .. } => self.message_refused(name),
            Event::NotificationDelivered { latency_ms, .. } => self.delivery.observe(*latency_ms as f64 / 1000.0),
            _ => {}
        }
    }
    pub fn write_submitted(&self) {
        self.writes.inc();
    }
    pub fn write_durable(&self, latency: Duration) {
        self.store_commit.observe(latency.as_secs_f64());
    }
    pub fn lookup_answered(&self, latency: Duration) {
        self.lookup.observe(latency.as_secs_f64());
    }
    pub fn api_request(&self, status: u16) {
        self.api_requests.get_or_create(&[("code", status.to_string())]).inc();
    }
    /// Rows of a (not dry-run) import with one outcome: `applied`, `unchanged` or `refused`.
    pub fn import_rows(&self, outcome: &'static str, rows: u64) {
        self.import_rows.get_or_create(&[("outcome", outcome)]).inc_by(rows);
    }

    /// An action on the council's pages that its audit log could not record.
    pub fn council_audit_failed(&self) {
        self.council_audit_failures.inc();
    }

    /// Registers the counters and histograms (names without the `_total` the encoder adds).
    pub fn register(&self, r: &mut Registry) {
        r.register("cpis_messages_received", "Messages received from peers, by kind", self.messages_in.clone());
        r.register("cpis_messages_sent", "Messages sent to peers and settings, by kind", self.messages_out.clone());
        r.register(
            "cpis_messages_dropped",
            "Messages not sent because their peer's queue was full, by kind",
            self.messages_dropped.clone(),
        );
        r.register(
            "cpis_messages_refused",
            "Frames and messages refused (bad frames, refused batches, lookups and directories), by reason",
            self.messages_refused.clone(),
        );
        r.register(
            "cpis_connections_refused",
            "Connections turned away (handshake, admission, role, session limit), by reason",
            self.connections_refused.clone(),
        );
        r.register("cpis_events", "State machine events, by kind", self.events.clone());
        r.register("cpis_bytes_sent", "Bytes of frames sent", self.bytes_out.clone());
        r.register("cpis_store_writes", "Write batches handed to the store", self.writes.clone());
        r.register_with_unit(
            "cpis_lookup",
            "Time from a lookup's arrival at a hub to its answer leaving (includes the durable write)",
            Unit::Seconds,
            self.lookup.clone(),
        );
        r.register_with_unit(
            "cpis_store_commit",
            "Time from a write batch handed to the store until it is durable",
            Unit::Seconds,
            self.store_commit.clone(),
        );
        r.register_with_unit(
            "cpis_notification_delivery",
            "Time from a lookup answered at this hub until the council's node receipted its notification (stored it)",
            Unit::Seconds,
            self.delivery.clone(),
        );
        r.register(
            "cpis_api_requests",
            "Requests to the node's HTTP API and pages, by status code",
            self.api_requests.clone(),
        );
        r.register(
            "cpis_import_rows",
            "Rows of plan imports, by outcome (applied, unchanged, refused)",
            self.import_rows.clone(),
        );
        r.register(
            "cpis_council_audit_failures",
            "Actions on the council's pages that their audit log could not record (each stood; the person was told)",
            self.council_audit_failures.clone(),
        );
    }
}

/// What a setting gateway counts: its lookups by result and door, their time, and lookups its
/// audit log could not record. Its `GET /metrics` renders them with [`register_process`].
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    lookups: Family<[(&'static str, &'static str); 2], Counter>,
    lookup: Histogram,
    audit_failures: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> GatewayMetrics {
        let metrics = GatewayMetrics {
            lookups: Family::default(),
            lookup: Histogram::new(FAST_BUCKETS_S),
            audit_failures: Counter::default(),
        };
        // The series an alert watches exist from the start at 0.
        for via in ["page", "fhir"] {
            let _ = metrics.lookups.get_or_create(&[("result", "could-not-check"), ("via", via)]);
        }
        metrics
    }
}

impl GatewayMetrics {
    /// A lookup made, with its result: `alert`, `no-records`, `could-not-check` or `refused`;
    /// `via` is `page` or `fhir`.
    pub fn lookup(&self, result: &'static str, via: &'static str, took: Duration) {
        self.lookups.get_or_create(&[("result", result), ("via", via)]).inc();
        self.lookup.observe(took.as_secs_f64());
    }

    /// An answer reused for a visit history (no lookup made): counted as `cached`.
    pub fn reused(&self, via: &'static str) {
        self.lookups.get_or_create(&[("result", "cached"), ("via", via)]).inc();
    }

    /// `lines` of the audit log that could not be written.
    pub fn audit_failed(&self, lines: u64) {
        self.audit_failures.inc_by(lines);
    }

    /// The Prometheus text (version 0.0.4) of the gateway's `GET /metrics`; `tokens` are the
    /// enabled calling systems whose tokens expire, with the seconds left.
    pub fn prometheus(&self, start_time_s: f64, tokens: &[(String, f64)]) -> String {
        let mut r = Registry::default();
        let expiry = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
        for (system, seconds) in tokens {
            expiry.get_or_create(&[("system", system.clone())]).set(*seconds);
        }
        r.register(
            "cpis_gateway_system_token_expires_in_seconds",
            "Time until each calling system's bearer token stops being accepted (negative: expired)",
            expiry,
        );
        r.register(
            "cpis_gateway_lookups",
            "Lookups through this gateway, by result (alert, no-records, could-not-check, refused, cached) and door (page, fhir)",
            self.lookups.clone(),
        );
        r.register_with_unit(
            "cpis_gateway_lookup",
            "Time from a lookup asked at the gateway to its verified answer, or to giving up",
            Unit::Seconds,
            self.lookup.clone(),
        );
        r.register(
            "cpis_gateway_audit_failures",
            "Audit log lines that could not be written (the answer was still given)",
            self.audit_failures.clone(),
        );
        register_process(&mut r, start_time_s);
        encode(&r)
    }
}

/// The Prometheus text (version 0.0.4) of a registry.
pub fn encode(r: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, r);
    out
}

/// Registers a gauge holding `value`.
pub fn gauge(r: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    r.register(name, help, g);
}

/// Registers the build and the process's gauges (resident memory, open files, CPU time, start
/// time), with the names Prometheus's own clients use.
pub fn register_process(r: &mut Registry, start_time_s: f64) {
    r.register("cpis_build", "The version of cpis-node running", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
    let process = ProcessStats::read();
    if let Some(b) = process.resident_bytes {
        gauge(r, "process_resident_memory_bytes", "Resident memory size in bytes", b as f64);
    }
    if let Some(n) = process.open_fds {
        gauge(r, "process_open_fds", "Number of open file descriptors", n as f64);
    }
    if let Some(s) = process.cpu_seconds {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(s);
        r.register("process_cpu_seconds", "Total user and system CPU time spent in seconds", c);
    }
    gauge(r, "process_start_time_seconds", "Start time of the process since the Unix epoch in seconds", start_time_s);
}

/// The process's resident memory, open file descriptors and CPU time (Linux `/proc`; `None`
/// where it cannot be read).
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 by Linux's ABI).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024);
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let cpu_seconds = stat.rsplit_once(')').and_then(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / USER_HZ)
        });
        ProcessStats { resident_bytes, open_fds, cpu_seconds }
    }
}
