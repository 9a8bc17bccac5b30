//! Faults, drawn at random for each run from its seed (swarm testing: each run enables a random
//! subset of fault kinds, each at a random intensity), or set by a named scenario.
//!
//! Kinds: message loss, duplication, delay (which reorders); one node isolated; a region cut
//! off; a one-way (asymmetric) link; a flapping link; crash and restart (writes not yet durable
//! are lost); slow disks (a wider window for that loss); clock skew; a setting with a bad
//! clock; bad input (see [`crate::badinput`]). All of them stop at the heal.

use crate::sim::{Cut, Ev, Sim};
use crate::world::{NodeId, World};
use cpis_protocol::harness::SplitMix64;
use serde::Serialize;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
/// Widest clock skew drawn for a node, kept within a hub's tolerance for lookups (5 minutes)
/// even between a setting and a hub skewed the other way.
pub const SKEW_MAX_MS: u64 = 120_000;

/// Something that happens for a while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum EpisodeKind {
    /// Every link of the node is cut.
    Isolate(NodeId),
    /// Every link between the region's members and the rest is cut.
    RegionCut(usize),
    /// Frames from one node to the other are lost; the connection stands.
    OneWay { from: NodeId, to: NodeId },
    /// The link between two nodes goes down and up every `period_ms`.
    Flap { a: NodeId, b: NodeId, period_ms: u64 },
    /// The node crashes, and restarts when the episode ends.
    Crash(NodeId),
    /// The node crashes and loses its disk; it restarts empty when the episode ends.
    Wipe(NodeId),
}

/// A fault episode, `at_ms` after the measured period starts.
#[derive(Clone, Debug, Serialize)]
pub struct Episode {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub kind: EpisodeKind,
}

/// Every fault of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultPlan {
    pub loss_per_million: u32,
    pub dup_per_million: u32,
    pub jitter_ms: u64,
    pub skew_max_ms: u64,
    pub bad_clock_settings: usize,
    /// Disk latency range when disks are slow (else 1 to 5 ms).
    pub slow_disk_ms: Option<u64>,
    pub bad_inputs: u32,
    pub episodes: Vec<Episode>,
}

/// What the fault schedule tells the simulator to do.
#[derive(Clone, Debug)]
pub enum FaultAction {
    Begin(usize),
    End(usize),
    Toggle(usize),
    BadInput,
    Heal,
    /// A named scenario's own step.
    Scenario(u32),
}

/// Log-uniform between `lo` and `hi`.
fn log_uniform(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(lo + 1) as f64).ln());
    let u = rng.below(1_000_000) as f64 / 1e6;
    (l + u * (h - l)).exp() as u64
}

impl FaultPlan {
    /// Draws a random subset of fault kinds and their intensities from `seed`.
    pub fn swarm(seed: u64, world: &World, period_ms: u64) -> FaultPlan {
        let mut rng = SplitMix64::new(seed ^ 0xFA17_5EED);
        let on = |rng: &mut SplitMix64| rng.below(2) == 0;
        let mut plan = FaultPlan::default();
        if on(&mut rng) {
            plan.loss_per_million = log_uniform(&mut rng, 100, 50_000) as u32;
        }
        if on(&mut rng) {
            plan.dup_per_million = log_uniform(&mut rng, 100, 20_000) as u32;
        }
        if on(&mut rng) {
            plan.jitter_ms = log_uniform(&mut rng, 20, 5_000);
        }
        if on(&mut rng) {
            plan.skew_max_ms = log_uniform(&mut rng, 100, SKEW_MAX_MS);
        }
        if rng.below(4) == 0 {
            plan.bad_clock_settings = 1;
        }
        if on(&mut rng) {
            plan.slow_disk_ms = Some(log_uniform(&mut rng, 20, 500));
        }
        if on(&mut rng) {
            plan.bad_inputs = 5 + rng.below(36) as u32;
        }
        let nodes = world.hubs.start..world.authorities.end;
        for kind in 0..5 {
            if !on(&mut rng) {
                continue;
            }
            for _ in 0..1 + rng.below(4) {
                let at_ms = rng.below(period_ms);
                let duration_ms = log_uniform(&mut rng, 10_000, 6 * HOUR_MS);
                let node = nodes.start + rng.below(nodes.len() as u64) as usize;
                let (a, b) = world.links[rng.below(world.links.len() as u64) as usize];
                let kind = match kind {
                    0 => EpisodeKind::Isolate(node),
                    1 => EpisodeKind::RegionCut(rng.below(world.hubs.len() as u64) as usize),
                    2 if rng.below(2) == 0 => EpisodeKind::OneWay { from: a, to: b },
                    2 => EpisodeKind::OneWay { from: b, to: a },
                    3 => EpisodeKind::Flap { a, b, period_ms: log_uniform(&mut rng, 1_000, 10 * MINUTE_MS) },
                    _ => EpisodeKind::Crash(node),
                };
                plan.episodes.push(Episode { at_ms, duration_ms, kind });
            }
        }
        plan
    }

    /// The plan in words, with members' codes (for the report).
    pub fn describe(&self, world: &World) -> Vec<String> {
        let c = |n: &NodeId| world.code(*n).to_string();
        let mut out = vec![];
        if self.loss_per_million > 0 {
            out.push(format!("loss {:.3}%", f64::from(self.loss_per_million) / 1e4));
        }
        if self.dup_per_million > 0 {
            out.push(format!("duplication {:.3}%", f64::from(self.dup_per_million) / 1e4));
        }
        if self.jitter_ms > 0 {
            out.push(format!("delay up to {} ms", self.jitter_ms));
        }
        if self.skew_max_ms > 0 {
            out.push(format!("clock skew up to {} ms", self.skew_max_ms));
        }
        if self.bad_clock_settings > 0 {
            out.push(format!("{} setting(s) with a bad clock", self.bad_clock_settings));
        }
        if let Some(ms) = self.slow_disk_ms {
            out.push(format!("slow disks up to {ms} ms"));
        }
        if self.bad_inputs > 0 {
            out.push(format!("{} bad inputs", self.bad_inputs));
        }
        for e in &self.episodes {
            let what = match &e.kind {
                EpisodeKind::Isolate(n) => format!("isolate {}", c(n)),
                EpisodeKind::RegionCut(r) => format!("cut off {}", world.spec.regions[*r].name),
                EpisodeKind::OneWay { from, to } => format!("one-way loss {}->{}", c(from), c(to)),
                EpisodeKind::Flap { a, b, period_ms } => format!("flap {}-{} every {period_ms} ms", c(a), c(b)),
                EpisodeKind::Crash(n) => format!("crash {}", c(n)),
                EpisodeKind::Wipe(n) => format!("wipe {}", c(n)),
            };
            out.push(format!("{what} at +{}s for {}s", e.at_ms / 1000, e.duration_ms / 1000));
        }
        out
    }
}

impl Sim {
    /// Applies the parts of a plan that hold from the start: clocks and disks.
    pub fn apply_static_faults(&mut self, plan: &FaultPlan, seed: u64) {
        let mut rng = SplitMix64::new(seed ^ 0xC10C_5EED);
        for n in 0..self.nodes.len() {
            if plan.skew_max_ms > 0 {
                let span = 2 * plan.skew_max_ms + 1;
                self.nodes[n].skew_ms = rng.below(span) as i64 - plan.skew_max_ms as i64;
            }
            if let Some(ms) = plan.slow_disk_ms {
                self.nodes[n].disk_ms = 1 + rng.below(ms);
            }
        }
        for i in 0..plan.bad_clock_settings {
            let s = self.world.settings.start
                + (rng.below(self.world.settings.len() as u64) as usize + i) % self.world.settings.len();
            self.nodes[s].skew_ms = (10 * MINUTE_MS + rng.below(10 * MINUTE_MS)) as i64;
        }
    }

    /// Schedules the plan's episodes and bad inputs within `[start, start + period_ms)`, and the
    /// heal at its end.
    pub fn schedule_faults(&mut self, plan: &FaultPlan, start: u64, period_ms: u64) {
        self.wire.loss_per_million = plan.loss_per_million;
        self.wire.dup_per_million = plan.dup_per_million;
        self.wire.jitter_ms = plan.jitter_ms;
        self.episodes = plan.episodes.clone();
        for (i, e) in plan.episodes.iter().enumerate() {
            self.schedule(start + e.at_ms, Ev::Fault(FaultAction::Begin(i)));
            let end = (start + e.at_ms + e.duration_ms).min(start + period_ms);
            self.schedule(end, Ev::Fault(FaultAction::End(i)));
        }
        for _ in 0..plan.bad_inputs {
            let at = start + self.rng.below(period_ms.max(1));
            self.schedule(at, Ev::Fault(FaultAction::BadInput));
        }
        self.schedule(start + period_ms, Ev::Fault(FaultAction::Heal));
        let anything =
            plan.loss_per_million + plan.dup_per_million > 0 || plan.jitter_ms > 0 || !plan.episodes.is_empty();
        self.history.whole_since = if anything { None } else { Some(start) };
    }

    pub fn on_fault(&mut self, f: FaultAction) {
        match f {
            FaultAction::Begin(i) => self.begin_episode(i),
            FaultAction::End(i) => self.end_episode(i),
            FaultAction::Toggle(i) => self.toggle_flap(i),
            FaultAction::BadInput => self.inject_bad_input(),
            FaultAction::Heal => self.heal(),
            FaultAction::Scenario(step) => self.scenario_step(step),
        }
    }

    fn begin_episode(&mut self, i: usize) {
        let Some(e) = self.episodes.get(i).cloned() else { return };
        if self.healed {
            return;
        }
        self.active_episodes.insert(i);
        let id = i as u64;
        match e.kind {
            EpisodeKind::Isolate(n) => self.cuts.push((id, Cut::Isolate(n))),
            EpisodeKind::RegionCut(r) => self.cuts.push((id, Cut::Region(r))),
            EpisodeKind::OneWay { from, to } => self.oneway.push((from, to, id)),
            EpisodeKind::Flap { a, b, period_ms } => {
                self.cuts.push((id, Cut::Pair(a, b)));
                self.schedule(self.now + period_ms, Ev::Fault(FaultAction::Toggle(i)));
            }
            EpisodeKind::Crash(n) => self.crash(n),
            EpisodeKind::Wipe(n) => self.wipe(n),
        }
        self.history.whole_since = None;
        self.refresh_links();
    }

    fn end_episode(&mut self, i: usize) {
        if !self.active_episodes.remove(&i) {
            return;
        }
        let id = i as u64;
        self.cuts.retain(|(c, _)| *c != id);
        self.oneway.retain(|(_, _, c)| *c != id);
        let crashed = self.episodes.get(i).and_then(|e| match e.kind {
            EpisodeKind::Crash(n) | EpisodeKind::Wipe(n) => Some(n),
            _ => None,
        });
        if let Some(n) = crashed.filter(|n| !self.crashed_by_other_episode(*n, i)) {
            self.restart(n);
        }
        self.refresh_links();
    }

    fn crashed_by_other_episode(&self, n: NodeId, except: usize) -> bool {
        self.active_episodes.iter().any(|j| {
            *j != except && matches!(self.episodes[*j].kind, EpisodeKind::Crash(m) | EpisodeKind::Wipe(m) if m == n)
        })
    }

    fn toggle_flap(&mut self, i: usize) {
        if !self.active_episodes.contains(&i) {
            return;
        }
        let Some(EpisodeKind::Flap { a, b, period_ms }) = self.episodes.get(i).map(|e| e.kind.clone()) else { return };
        let id = i as u64;
        if self.cuts.iter().any(|(c, _)| *c == id) {
            self.cuts.retain(|(c, _)| *c != id);
        } else {
            self.cuts.push((id, Cut::Pair(a, b)));
        }
        self.refresh_links();
        self.schedule(self.now + period_ms, Ev::Fault(FaultAction::Toggle(i)));
    }

    /// Every fault stops: links heal, crashed nodes restart, clocks of settings are put right,
    /// the wire stops losing, duplicating and delaying.
    pub fn heal(&mut self) {
        self.healed = true;
        let mut waiting: std::collections::BTreeMap<NodeId, usize> = Default::default();
        for ((_, a), p) in self.history.promised.iter() {
            if p.received == 0 {
                *waiting.entry(*a).or_default() += 1;
            }
        }
        self.backlog_at_heal = waiting.values().copied().max().unwrap_or(0);
        self.active_episodes.clear();
        self.cuts.clear();
        self.oneway.clear();
        self.wire = Default::default();
        for s in self.world.settings.clone() {
            if self.nodes[s].skew_ms.unsigned_abs() > SKEW_MAX_MS {
                self.nodes[s].skew_ms = 0;
            }
        }
        for n in self.world.hubs.start..self.world.authorities.end {
            if self.nodes[n].down {
                self.start_machine(n);
            }
        }
        self.refresh_links();
        self.history.whole_since = Some(self.now);
        self.healed_at = Some(self.now);
    }
}
