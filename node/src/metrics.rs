//! Counters kept by the event loop and rendered as Prometheus text by `GET /metrics`.

use cpis_protocol::machine::Event;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds of the lookup latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    messages_in: BTreeMap<&'static str, u64>,
    messages_out: BTreeMap<&'static str, u64>,
    bytes_out: u64,
    refused: BTreeMap<&'static str, u64>,
    events: BTreeMap<&'static str, u64>,
    writes: u64,
    lookup_buckets: [u64; LATENCY_BUCKETS_S.len()],
    lookup_count: u64,
    lookup_sum_s: f64,
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::EntriesAccepted { .. } => "entries_accepted",
        Event::BatchRefused { .. } => "batch_refused",
        Event::Equivocation { .. } => "equivocation",
        Event::DirectoryUpdated { .. } => "directory_updated",
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
    pub fn received(&mut self, kind: &'static str) {
        *self.messages_in.entry(kind).or_default() += 1;
    }
    pub fn sent(&mut self, kind: &'static str, bytes: usize) {
        *self.messages_out.entry(kind).or_default() += 1;
        self.bytes_out += bytes as u64;
    }
    pub fn refused(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
    }
    pub fn event(&mut self, e: &Event) {
        *self.events.entry(event_name(e)).or_default() += 1;
    }
    pub fn write_submitted(&mut self) {
        self.writes += 1;
    }
    pub fn lookup_answered(&mut self, latency: Duration) {
        let s = latency.as_secs_f64();
        self.lookup_count += 1;
        self.lookup_sum_s += s;
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.lookup_buckets[i] += 1;
            }
        }
    }

    /// Prometheus text for the counters (gauges are added by the caller).
    pub fn render(&self, out: &mut String) {
        let mut counter = |name: &str, help: &str, label: &str, values: &BTreeMap<&'static str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
        counter("cpis_messages_received_total", "Messages received, by kind.", "kind", &self.messages_in);
        counter("cpis_messages_sent_total", "Messages sent, by kind.", "kind", &self.messages_out);
        counter("cpis_connections_refused_total", "Connections refused, by reason.", "reason", &self.refused);
        counter("cpis_events_total", "State machine events, by kind.", "event", &self.events);
        let _ = writeln!(
            out,
            "# HELP cpis_bytes_sent_total Bytes of frames sent.\n# TYPE cpis_bytes_sent_total counter\ncpis_bytes_sent_total {}",
            self.bytes_out
        );
        let _ = writeln!(
            out,
            "# HELP cpis_store_writes_total Write batches handed to the store.\n# TYPE cpis_store_writes_total counter\ncpis_store_writes_total {}",
            self.writes
        );
        let _ = writeln!(
            out,
            "# HELP cpis_lookup_seconds Time from a lookup's arrival to its answer leaving (includes the durable write)."
        );
        let _ = writeln!(out, "# TYPE cpis_lookup_seconds histogram");
        for (bound, count) in LATENCY_BUCKETS_S.iter().zip(self.lookup_buckets) {
            let _ = writeln!(out, "cpis_lookup_seconds_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "cpis_lookup_seconds_bucket{{le=\"+Inf\"}} {}", self.lookup_count);
        let _ = writeln!(out, "cpis_lookup_seconds_sum {}", self.lookup_sum_s);
        let _ = writeln!(out, "cpis_lookup_seconds_count {}", self.lookup_count);
    }
}
