//! The faults actor: faults drawn at random for each run from its seed (swarm testing: each run
//! enables a random subset of fault kinds, each at a random intensity), or set by a named
//! scenario, applied to the cluster through its API and all stopped at the heal.
//!
//! Kinds: message loss, duplication, delay (which reorders); one node isolated; a region cut
//! off; a one-way (asymmetric) link; a flapping link; crash and restart (writes not yet durable
//! are lost); a hub's disk wiped; slow disks (a wider window for that loss); clock skew; a
//! setting with a bad clock; bad input (see [`crate::badinput`]).

use crate::agenda::Agenda;
use crate::badinput::BadInput;
use crate::checker::{History, WipeView};
use crate::cluster::{Cluster, Cut, WireFaults};
use crate::human;
use crate::timeline::FaultClass;
use crate::world::{NodeId, World};
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::schema::{self, StoredRow, Table};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

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
    /// The hub crashes and loses its disk; it restarts empty when the episode ends.
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

/// Log-uniform between `lo` and `hi`.
pub fn log_uniform(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
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
        // A wiped disk, in one run in eight (what only it held is lost by the fault itself).
        if rng.below(8) == 0 {
            let hub = world.hubs.start + rng.below(world.hubs.len() as u64) as usize;
            let at_ms = rng.below(period_ms);
            let duration_ms = log_uniform(&mut rng, 10_000, 30 * MINUTE_MS);
            plan.episodes.push(Episode { at_ms, duration_ms, kind: EpisodeKind::Wipe(hub) });
        }
        plan
    }

    /// Whether the network is broken at some time (anything but clocks, disks and bad input).
    pub fn breaks_network(&self) -> bool {
        self.loss_per_million + self.dup_per_million > 0 || self.jitter_ms > 0 || !self.episodes.is_empty()
    }

    /// The plan in words, with members' codes (for the report).
    pub fn describe(&self, world: &World) -> Vec<String> {
        let mut out: Vec<String> = self.describe_static().into_iter().map(|(text, _)| text).collect();
        for e in &self.episodes {
            out.push(format!(
                "{} at +{} for {}",
                e.kind.describe(world),
                human::duration(e.at_ms),
                human::duration(e.duration_ms)
            ));
        }
        out
    }

    /// The faults that hold for the whole period (the wire, clocks, disks, bad input), in words.
    pub fn describe_static(&self) -> Vec<(String, FaultClass)> {
        let mut out = vec![];
        if self.loss_per_million > 0 {
            out.push((format!("loss {:.3}%", f64::from(self.loss_per_million) / 1e4), FaultClass::Wire));
        }
        if self.dup_per_million > 0 {
            out.push((format!("duplication {:.3}%", f64::from(self.dup_per_million) / 1e4), FaultClass::Wire));
        }
        if self.jitter_ms > 0 {
            out.push((format!("delay up to {}", human::duration(self.jitter_ms)), FaultClass::Wire));
        }
        if self.skew_max_ms > 0 {
            out.push((format!("clock skew up to {}", human::duration(self.skew_max_ms)), FaultClass::Clock));
        }
        if self.bad_clock_settings > 0 {
            out.push((format!("{} setting(s) with a bad clock", self.bad_clock_settings), FaultClass::Clock));
        }
        if let Some(ms) = self.slow_disk_ms {
            out.push((format!("slow disks up to {}", human::duration(ms)), FaultClass::Disk));
        }
        if self.bad_inputs > 0 {
            out.push((format!("{} bad inputs", self.bad_inputs), FaultClass::BadInput));
        }
        out
    }
}

impl EpisodeKind {
    /// The episode in words, with members' codes.
    pub fn describe(&self, world: &World) -> String {
        let c = |n: &NodeId| world.code(*n).to_string();
        match self {
            EpisodeKind::Isolate(n) => format!("isolate {}", c(n)),
            EpisodeKind::RegionCut(r) => format!("cut off {}", world.spec.regions[*r].name),
            EpisodeKind::OneWay { from, to } => format!("one-way loss {}->{}", c(from), c(to)),
            EpisodeKind::Flap { a, b, period_ms } => {
                format!("flap {}-{} every {}", c(a), c(b), human::duration(*period_ms))
            }
            EpisodeKind::Crash(n) => format!("crash {}", c(n)),
            EpisodeKind::Wipe(n) => format!("wipe {}", c(n)),
        }
    }
}

/// What the faults actor has to do.
#[derive(Clone, Copy, Debug)]
enum FaultEv {
    Begin(usize),
    End(usize),
    Toggle(usize),
    BadInput,
    Heal,
}

/// The faults actor.
pub struct Faults {
    pub plan: FaultPlan,
    agenda: Agenda<FaultEv>,
    active: BTreeSet<usize>,
    rng: SplitMix64,
    pub bad: BadInput,
    pub healed_at: Option<u64>,
    /// Most notifications waiting for one authority at the heal.
    pub backlog_at_heal: usize,
    /// True times at which bad input was handed to a machine, at most [`BAD_INPUTS_MAX`].
    pub bad_inputs_at: Vec<u64>,
}

/// Most bad inputs a plan injects (a swarm run draws at most 40).
pub const BAD_INPUTS_MAX: usize = 1_000;

/// The id of an episode's cut in the cluster (episodes of scenarios use ids from 1 << 32).
fn cut_id(i: usize) -> u64 {
    i as u64
}

impl Faults {
    pub fn new(plan: FaultPlan, seed: u64) -> Faults {
        Faults {
            plan,
            agenda: Agenda::new(),
            active: BTreeSet::new(),
            rng: SplitMix64::new(seed ^ 0xBAD1_4B07),
            bad: BadInput::new(seed),
            healed_at: None,
            backlog_at_heal: 0,
            bad_inputs_at: vec![],
        }
    }

    pub fn next_at(&self) -> Option<u64> {
        self.agenda.next_at()
    }

    /// Events the actor's agenda dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.agenda.dropped()
    }

    /// Applies the parts of the plan that hold from the start: clocks and disks.
    pub fn apply_static(&self, cluster: &mut Cluster, history: &mut History, seed: u64) {
        let mut rng = SplitMix64::new(seed ^ 0xC10C_5EED);
        let w = cluster.world.hubs.start..cluster.world.settings.end;
        for n in w {
            if self.plan.skew_max_ms > 0 {
                let span = 2 * self.plan.skew_max_ms + 1;
                cluster.set_skew(n, rng.below(span) as i64 - self.plan.skew_max_ms as i64);
            }
            if let Some(ms) = self.plan.slow_disk_ms {
                cluster.set_disk_ms(n, 1 + rng.below(ms));
            }
        }
        let settings = cluster.world.settings.clone();
        for i in 0..self.plan.bad_clock_settings {
            let s = settings.start + (rng.below(settings.len() as u64) as usize + i) % settings.len();
            cluster.set_skew(s, (10 * MINUTE_MS + rng.below(10 * MINUTE_MS)) as i64);
        }
        history.skews = cluster.nodes().iter().map(|n| n.skew_ms).collect();
    }

    /// Schedules the plan's episodes and bad inputs within `[start, start + period_ms)`, and the
    /// heal at its end.
    pub fn schedule(&mut self, cluster: &mut Cluster, history: &mut History, start: u64, period_ms: u64) {
        cluster.set_wire(WireFaults {
            loss_per_million: self.plan.loss_per_million,
            dup_per_million: self.plan.dup_per_million,
            jitter_ms: self.plan.jitter_ms,
        });
        for (i, e) in self.plan.episodes.iter().enumerate() {
            self.agenda.at(start + e.at_ms, FaultEv::Begin(i));
            let end = (start + e.at_ms + e.duration_ms).min(start + period_ms);
            self.agenda.at(end, FaultEv::End(i));
        }
        for _ in 0..self.plan.bad_inputs {
            let at = start + self.rng.below(period_ms.max(1));
            self.agenda.at(at, FaultEv::BadInput);
        }
        self.agenda.at(start + period_ms, FaultEv::Heal);
        history.whole_since = if self.plan.loss_per_million + self.plan.dup_per_million > 0 || self.plan.jitter_ms > 0 {
            None
        } else {
            Some(start)
        };
    }

    /// Handles the actor's next event (the driver moved time on to it).
    pub fn step(&mut self, cluster: &mut Cluster, history: &mut History) {
        let Some((_, ev)) = self.agenda.pop() else { return };
        match ev {
            FaultEv::Begin(i) => self.begin(cluster, history, i),
            FaultEv::End(i) => self.end(cluster, i),
            FaultEv::Toggle(i) => self.toggle(cluster, i),
            FaultEv::BadInput => {
                if self.bad_inputs_at.len() < BAD_INPUTS_MAX {
                    self.bad_inputs_at.push(cluster.now());
                }
                self.bad.inject_random(cluster, history);
            }
            FaultEv::Heal => self.heal(cluster, history),
        }
    }

    fn begin(&mut self, cluster: &mut Cluster, history: &mut History, i: usize) {
        let Some(e) = self.plan.episodes.get(i).cloned() else { return };
        if self.healed_at.is_some() {
            return;
        }
        self.active.insert(i);
        let id = cut_id(i);
        match e.kind {
            EpisodeKind::Isolate(n) => cluster.isolate(id, n),
            EpisodeKind::RegionCut(r) => cluster.cut(id, Cut::Region(r)),
            EpisodeKind::OneWay { from, to } => cluster.drop_one_way(id, from, to),
            EpisodeKind::Flap { a, b, period_ms } => {
                cluster.cut(id, Cut::Pair(a, b));
                self.agenda.at(cluster.now() + period_ms, FaultEv::Toggle(i));
            }
            EpisodeKind::Crash(n) => cluster.crash(n),
            EpisodeKind::Wipe(n) => wipe(cluster, history, n),
        }
        history.whole_since = None;
    }

    fn end(&mut self, cluster: &mut Cluster, i: usize) {
        if !self.active.remove(&i) {
            return;
        }
        cluster.uncut(cut_id(i));
        let crashed = self.plan.episodes.get(i).and_then(|e| match e.kind {
            EpisodeKind::Crash(n) | EpisodeKind::Wipe(n) => Some(n),
            _ => None,
        });
        if let Some(n) = crashed.filter(|n| !self.crashed_by_other(*n, i)) {
            cluster.restart(n);
        }
    }

    fn crashed_by_other(&self, n: NodeId, except: usize) -> bool {
        self.active.iter().any(|j| {
            *j != except
                && matches!(self.plan.episodes[*j].kind, EpisodeKind::Crash(m) | EpisodeKind::Wipe(m) if m == n)
        })
    }

    fn toggle(&mut self, cluster: &mut Cluster, i: usize) {
        if !self.active.contains(&i) {
            return;
        }
        let Some(EpisodeKind::Flap { a, b, period_ms }) = self.plan.episodes.get(i).map(|e| e.kind.clone()) else {
            return;
        };
        let id = cut_id(i);
        if cluster.is_cut(id) {
            cluster.uncut(id);
        } else {
            cluster.cut(id, Cut::Pair(a, b));
        }
        self.agenda.at(cluster.now() + period_ms, FaultEv::Toggle(i));
    }

    /// Every fault stops: links heal, crashed nodes restart, clocks of settings are put right,
    /// the wire stops losing, duplicating and delaying.
    pub fn heal(&mut self, cluster: &mut Cluster, history: &mut History) {
        let mut waiting: BTreeMap<NodeId, usize> = BTreeMap::new();
        for ((_, a), p) in history.promised.iter() {
            if p.received == 0 {
                *waiting.entry(*a).or_default() += 1;
            }
        }
        self.backlog_at_heal = waiting.values().copied().max().unwrap_or(0);
        self.active.clear();
        cluster.heal();
        for s in cluster.world.settings.clone() {
            if cluster.node(s).skew_ms.unsigned_abs() > SKEW_MAX_MS {
                cluster.set_skew(s, 0);
            }
        }
        history.skews = cluster.nodes().iter().map(|n| n.skew_ms).collect();
        for n in cluster.world.hubs.start..cluster.world.authorities.end {
            cluster.restart(n);
        }
        history.whole_since = Some(cluster.now());
        self.healed_at = Some(cluster.now());
    }
}

/// Wipes a hub, first telling the checkers what only its disk held.
pub fn wipe(cluster: &mut Cluster, history: &mut History, hub: NodeId) {
    let mut view = WipeView::default();
    let code = cluster.world.code(hub).clone();
    for h in cluster.world.hubs.clone().filter(|h| *h != hub) {
        let disk = cluster.disk(h);
        for (key, value) in disk.table(Table::Outbox) {
            let row = StoredRow { table: Table::Outbox, key: key.to_vec(), value: value.to_vec() };
            if let Ok(((id, authority), _)) = schema::OUTBOX.decode(&row)
                && let Some(a) = cluster.world.id(&authority)
            {
                view.outbox_elsewhere.insert((id, a));
            }
        }
        for seq in history.visits_of(hub) {
            if disk.get(Table::Entries, &schema::ENTRIES.key(&(code.clone(), seq))).is_some() {
                view.visits_elsewhere.insert(seq);
            }
        }
    }
    history.on_wipe(hub, &view);
    cluster.wipe(hub);
}
