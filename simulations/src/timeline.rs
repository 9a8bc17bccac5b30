//! What a run records over time, for the assurer's report: a sample of the federation every few
//! simulated minutes (replication lag per hub, lookups closed, members down, cuts in force), the
//! spans of the faults, and every notification's latency.
//!
//! Sampling only reads: the [`Sampler`] looks at the cluster, the checkers and the workload at
//! fixed true times, and changes nothing, so a run's trace hash is the same with or without it.
//! Times are milliseconds from the start of the measured period.

use crate::faults::{EpisodeKind, FaultPlan};
use crate::sim::Sim;
use crate::workload::LookupStats;
use crate::world::World;

const MINUTE_MS: u64 = 60_000;
/// How often a run is sampled, unless it is so long that [`SAMPLES_MAX`] needs a wider interval.
pub const SAMPLE_EVERY_MS: u64 = 5 * MINUTE_MS;
/// Most samples a run keeps (a simulated week at five minutes is about 2,000).
pub const SAMPLES_MAX: usize = 4_096;
/// Most notifications drawn one by one (a stride picks them beyond); the histogram counts all.
pub const NOTICE_POINTS_MAX: usize = 4_000;
/// Upper ends of the notification latency histogram's bins; the last bin is everything longer.
pub const NOTICE_BINS_MS: [u64; 8] =
    [1_000, 10_000, MINUTE_MS, 10 * MINUTE_MS, 60 * MINUTE_MS, 6 * 60 * MINUTE_MS, 24 * 60 * MINUTE_MS, u64::MAX];

/// The federation at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    /// Per hub, in the order of [`Timeline::hubs`]: the replication lag, the age of the
    /// stalest authority's newest head the hub holds (authorities sign one a minute, so a hub
    /// that keeps up shows a minute or two); `None` while the hub is down.
    pub lag_ms: Vec<Option<u64>>,
    /// Lookups closed since the start, by outcome: answered, never answered (no hub, no answer,
    /// refused, forged every time), and lookups of a flagged child that missed a plan.
    pub answered: u64,
    pub unanswered: u64,
    pub flagged_missed: u64,
    /// Hubs and authorities not running.
    pub down: usize,
    /// Cuts of links in force (episodes and scenarios alike).
    pub cuts: usize,
}

/// What kind of fault a span is, for its colour and its legend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultClass {
    /// Loss, duplication and delay on every link.
    Wire,
    /// Skewed clocks, a setting's bad clock.
    Clock,
    /// Slow disks.
    Disk,
    /// A node isolated, a region cut off, a one-way or flapping link.
    Partition,
    /// A crash, a wiped disk.
    Crash,
    /// A hostile hub or setting.
    Hostile,
    /// Bad input handed to a machine (drawn as a tick at each injection).
    BadInput,
}

impl FaultClass {
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Wire => "wire",
            FaultClass::Clock => "clock",
            FaultClass::Disk => "disk",
            FaultClass::Partition => "partition",
            FaultClass::Crash => "crash",
            FaultClass::Hostile => "hostile",
            FaultClass::BadInput => "bad input",
        }
    }
}

/// A fault in force from `from_ms` to `to_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpan {
    pub label: String,
    pub class: FaultClass,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// Everything a run recorded over time.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The interval between samples.
    pub every_ms: u64,
    /// When every fault healed (the length of the measured period).
    pub heal_ms: u64,
    /// When the run ended (the final checks).
    pub end_ms: u64,
    /// Hubs' codes, in the order of [`Sample::lag_ms`].
    pub hubs: Vec<String>,
    pub samples: Vec<Sample>,
    pub faults: Vec<FaultSpan>,
    /// When each bad input was handed to a machine.
    pub bad_inputs_ms: Vec<u64>,
    /// Delivered notifications: (answered at, latency to the authority's durable store), in
    /// order, at most [`NOTICE_POINTS_MAX`].
    pub notices: Vec<(u64, u64)>,
    /// Every delivered notification, counted by [`NOTICE_BINS_MS`].
    pub notice_bins: [u64; NOTICE_BINS_MS.len()],
    /// Notifications promised and never delivered.
    pub notices_outstanding: usize,
}

/// The spans of a fault plan, with a hostile hub and setting (which stay hostile to the end).
pub fn fault_spans(plan: &FaultPlan, world: &World, heal_ms: u64, end_ms: u64, hostile: &[String]) -> Vec<FaultSpan> {
    let whole = |label: String, class| FaultSpan { label, class, from_ms: 0, to_ms: heal_ms };
    let mut spans = vec![];
    for (label, class) in plan.describe_static() {
        if class != FaultClass::BadInput {
            spans.push(whole(label, class));
        }
    }
    for e in &plan.episodes {
        let class = match e.kind {
            EpisodeKind::Crash(_) | EpisodeKind::Wipe(_) => FaultClass::Crash,
            _ => FaultClass::Partition,
        };
        let to_ms = (e.at_ms + e.duration_ms).min(heal_ms);
        spans.push(FaultSpan { label: e.kind.describe(world), class, from_ms: e.at_ms, to_ms });
    }
    for who in hostile {
        spans.push(FaultSpan {
            label: format!("hostile {who}"),
            class: FaultClass::Hostile,
            from_ms: 0,
            to_ms: end_ms,
        });
    }
    spans
}

/// Takes a [`Sample`] at fixed true times.
pub struct Sampler {
    start: u64,
    every_ms: u64,
    next_at: u64,
    pub samples: Vec<Sample>,
}

impl Sampler {
    /// A sampler for a run measured from true time `start` for `span_ms` (the period and what
    /// follows the heal); its first sample is at `start`.
    pub fn new(start: u64, span_ms: u64) -> Sampler {
        let every_ms = SAMPLE_EVERY_MS.max(span_ms.div_ceil(SAMPLES_MAX as u64 - 1).next_multiple_of(MINUTE_MS));
        Sampler { start, every_ms, next_at: start, samples: vec![] }
    }

    pub fn every_ms(&self) -> u64 {
        self.every_ms
    }

    /// Runs the simulation to `until`, stopping at each sample time on the way to take one.
    pub fn run_until(&mut self, sim: &mut Sim, until: u64, progress: &mut dyn FnMut(u64)) {
        while self.next_at <= until && self.samples.len() < SAMPLES_MAX {
            sim.run_until(self.next_at);
            self.take(sim);
            self.next_at += self.every_ms;
            progress(sim.cluster.now() - self.start);
        }
        sim.run_until(until);
    }

    /// Takes a last sample at the end of the run, if time moved on since the last one.
    pub fn finish(&mut self, sim: &Sim) {
        let last = self.samples.last().map(|s| self.start + s.at_ms);
        if last.is_none_or(|t| t < sim.cluster.now()) && self.samples.len() < SAMPLES_MAX {
            self.take(sim);
        }
    }

    fn take(&mut self, sim: &Sim) {
        let c = &sim.cluster;
        let now = c.now();
        let lag_ms = c
            .world
            .hubs
            .clone()
            .map(|h| {
                let hub = c.hub(h)?;
                let lag = c.world.authorities.clone().filter_map(|a| {
                    let head = hub.replicas().get(c.world.code(a))?.head()?;
                    // The head's time is the authority's clock: back to true time.
                    let signed = (head.body.at.as_millis() as i64).saturating_sub(c.node(a).skew_ms);
                    Some(now.saturating_sub(signed.max(0) as u64))
                });
                Some(lag.max().unwrap_or(0))
            })
            .collect();
        let s = &sim.work.stats;
        let down = (c.world.hubs.start..c.world.authorities.end).filter(|n| c.machine(*n).is_none()).count();
        self.samples.push(Sample {
            at_ms: now - self.start,
            lag_ms,
            answered: s.answered,
            unanswered: unanswered(s),
            flagged_missed: flagged_missed(s),
            down,
            cuts: c.cuts_in_force(),
        });
    }
}

/// Lookups closed without an answer.
pub fn unanswered(s: &LookupStats) -> u64 {
    s.no_hub_reachable
        + s.no_answer
        + s.refused_clock_skew
        + s.refused_rate_limited
        + s.refused_other
        + s.forged_unresolved
}

/// Lookups of a flagged child that did not show one of its plans, whatever the cause.
pub fn flagged_missed(s: &LookupStats) -> u64 {
    s.flagged_missed_no_hub_reachable
        + s.flagged_missed_hub_not_caught_up
        + s.flagged_missed_authority_unavailable
        + s.flagged_missed_no_answer
        + s.flagged_missed_refused
        + s.flagged_missed_forged
}

/// Delivered notifications as points (answered at, latency), from `start`, at most
/// [`NOTICE_POINTS_MAX`] (an even stride through them, in time order), and the histogram of all.
pub fn notices(
    delivered: impl Iterator<Item = (u64, u64)>,
    start: u64,
) -> (Vec<(u64, u64)>, [u64; NOTICE_BINS_MS.len()]) {
    let mut all: Vec<(u64, u64)> = delivered
        .filter(|(answered, _)| *answered >= start)
        .map(|(answered, received)| (answered - start, received.saturating_sub(answered)))
        .collect();
    all.sort_unstable();
    let mut bins = [0; NOTICE_BINS_MS.len()];
    for (_, latency) in &all {
        let bin = NOTICE_BINS_MS.iter().position(|top| latency < top).unwrap_or(NOTICE_BINS_MS.len() - 1);
        bins[bin] += 1;
    }
    let stride = all.len().div_ceil(NOTICE_POINTS_MAX).max(1);
    let points = all.into_iter().step_by(stride).collect();
    (points, bins)
}

#[cfg(test)]
#[allow(non_snake_case)] // Test names read as specifications: situation__expectation.
mod tests {
    use super::*;

    #[test]
    fn a_day__sampled_every_five_minutes__a_year_sampled_wider_within_the_maximum() {
        assert_eq!(Sampler::new(0, 24 * 60 * MINUTE_MS).every_ms(), SAMPLE_EVERY_MS);
        let year = 365 * 24 * 60 * MINUTE_MS;
        let every = Sampler::new(0, year).every_ms();
        assert!(year / every < SAMPLES_MAX as u64, "{every}");
        assert_eq!(every % MINUTE_MS, 0);
    }

    #[test]
    fn notices__latencies_binned__points_from_the_start_in_time_order() {
        let delivered = [(5_000, 5_500), (1_000, 2_000), (2_000, 2_000 + 2 * 3_600_000), (500, 600)];
        let (points, bins) = notices(delivered.into_iter(), 1_000);
        assert_eq!(points, vec![(0, 1_000), (1_000, 2 * 3_600_000), (4_000, 500)]);
        assert_eq!(bins, [1, 1, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn many_notices__at_most_the_maximum_drawn__all_counted() {
        let delivered = (0..3 * NOTICE_POINTS_MAX as u64 + 1).map(|t| (t, t + 20_000));
        let (points, bins) = notices(delivered, 0);
        assert!(points.len() <= NOTICE_POINTS_MAX);
        assert_eq!(bins[2], 3 * NOTICE_POINTS_MAX as u64 + 1);
    }
}
