//! One run: build the world, load the caseloads, run the measured period under faults (and,
//! perhaps, a hostile member), heal, wait the liveness bound, check, report.
//!
//! Timeline (true time): the federation starts at 00:00; caseloads are recorded and replicated
//! (the load, not measured) until 01:00; the measured period with its workload, faults and
//! adversary runs from 01:00 for `hours`; then every fault heals (a hostile member stays
//! hostile). From the heal the simulator waits for every hub to hold every authority's published
//! feed and every visit, and every notification promised before the heal to be stored (the
//! convergence time); lookups made from one bound after the heal are checked strictly; the
//! workload stops two bounds after the heal, and the final checks run one bound later.

use crate::adversary::{Attacks, HostileHub, HostileSetting};
use crate::checker::{FeedView, History, HubView, Violations, feed_view};
use crate::cluster::{Cluster, Node};
use crate::faults::{FaultPlan, Faults};
use crate::human;
use crate::report::{HostileReport, HostileSettingReport, MessageReport, NotificationReport, Percentiles, RunReport};
use crate::scenarios::{Scenario, ScenarioActor};
use crate::sim::Sim;
use crate::timeline::{Sampler, Timeline, fault_spans};
use crate::workload::{Workload, WorkloadSpec};
use crate::world::{NodeId, World, WorldSpec};
use cpis_protocol::authority::AuthorityConfig;
use cpis_protocol::feed::EntryBody;
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::hub::HubConfig;
use cpis_protocol::schema::{self, StoreOp, Table, WriteBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::time::Instant;

const HOUR_MS: u64 = 3_600_000;

/// How the caseloads reach the hubs before the measured period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Through the protocol: each authority connects and pushes its feed; hubs verify every
    /// entry and forward it to each other.
    Replicate,
    /// Each hub's disk starts with a copy of every authority's entries and head (a federation
    /// that has been running); hubs restore from it.
    Snapshot,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub scale: f64,
    /// Length of the measured (faulty) period; a scenario's own if `None`, else 24.
    pub hours: Option<u64>,
    pub load: LoadMode,
    /// The liveness bound: how long the network must have been whole before checks are strict.
    pub bound_ms: u64,
    pub scenario: Option<Scenario>,
    /// Run the seed's workload with no faults and no hostile member.
    pub no_faults: bool,
    /// Never draw a hostile member in a swarm run.
    pub no_hostile: bool,
    /// Open plans nationally at the start, instead of the scale's share of 135,000.
    pub plans: Option<usize>,
    /// Scales every lookup rate (1.0 is the real workload; tests run lighter).
    pub intensity: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 1,
            scale: 1.0,
            hours: None,
            load: LoadMode::Replicate,
            bound_ms: 10 * 60_000,
            scenario: None,
            no_faults: false,
            no_hostile: false,
            plans: None,
            intensity: 1.0,
        }
    }
}

impl RunConfig {
    pub fn hours(&self) -> u64 {
        self.hours.or(self.scenario.map(Scenario::hours)).unwrap_or(24)
    }

    /// The one command that repeats this run.
    pub fn command(&self) -> String {
        let mut c = format!(
            "cargo run --release -p cpis-simulations --bin cpis-sim -- --seed {} --scale {}",
            self.seed, self.scale
        );
        if let Some(s) = self.scenario {
            c += &format!(" --scenario {}", s.name());
        }
        if let Some(h) = self.hours {
            c += &format!(" --hours {h}");
        }
        if self.load == LoadMode::Snapshot {
            c += " --load snapshot";
        }
        if self.no_faults {
            c += " --no-faults";
        }
        if self.no_hostile {
            c += " --no-hostile";
        }
        if self.bound_ms != RunConfig::default().bound_ms {
            c += &format!(" --bound-ms {}", self.bound_ms);
        }
        if let Some(p) = self.plans {
            c += &format!(" --plans {p}");
        }
        if self.intensity != 1.0 {
            c += &format!(" --intensity {}", self.intensity);
        }
        c
    }
}

/// The hostile members of a swarm run, drawn from its seed: a hub in one run in eight (with a
/// random set of attacks), a setting in one run in eight.
pub fn draw_hostile(seed: u64, world: &World) -> (Option<(NodeId, Attacks)>, Option<NodeId>) {
    let mut rng = SplitMix64::new(seed ^ 0x4057_11E5);
    let hub = (rng.below(8) == 0).then(|| {
        let h = world.hubs.start + rng.below(world.hubs.len() as u64) as usize;
        (h, Attacks::draw(&mut rng))
    });
    let unscheduled: Vec<NodeId> = world
        .settings
        .clone()
        .filter(|s| world.lookup_kind(*s) == cpis_protocol::records::LookupKind::Unscheduled)
        .collect();
    let setting = (rng.below(8) == 0 && !unscheduled.is_empty())
        .then(|| unscheduled[rng.below(unscheduled.len() as u64) as usize]);
    (hub, setting)
}

/// Where a run is, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Building the world and loading the caseloads.
    Loading,
    /// The measured period and the wait after the heal: simulated time done of the most there is.
    Measuring { done_ms: u64, total_ms: u64 },
    /// The final checks.
    Checking,
}

/// Runs one seed or scenario and checks it.
pub fn run(config: &RunConfig) -> RunReport {
    run_with_progress(config, &mut |_| {})
}

/// Runs one seed or scenario and checks it, telling `progress` where it is.
pub fn run_with_progress(config: &RunConfig, progress: &mut dyn FnMut(Progress)) -> RunReport {
    progress(Progress::Loading);
    let started = Instant::now();
    let spec = WorldSpec::england(config.scale);
    let world = World::build(spec.clone());
    let mut wspec = WorkloadSpec::england(spec.scale);
    wspec.lookups_per_day *= config.intensity;
    if let Some(s) = config.scenario {
        wspec.peak_factor = s.peak_factor();
    }
    let period = config.hours() * HOUR_MS;
    let (plan, hostile_hub, hostile_setting) = match config.scenario {
        Some(s) => (s.faults(&world), s.hostile_hub(&world), s.hostile_setting(&world)),
        None if config.no_faults => (FaultPlan::default(), None, None),
        None if config.no_hostile => (FaultPlan::swarm(config.seed, &world, period), None, None),
        None => {
            let (h, s) = draw_hostile(config.seed, &world);
            (FaultPlan::swarm(config.seed, &world, period), h, s)
        }
    };
    let excluded: BTreeSet<NodeId> = hostile_setting.into_iter().collect();
    let work = Workload::new(&world, wspec, config.seed, &excluded);
    let mut history = History::new(&world);
    history.bound_ms = config.bound_ms;
    history.hostile_hub = hostile_hub.map(|(h, _)| h);
    let cluster = Cluster::new(world, config.seed, HubConfig::default(), AuthorityConfig::default());
    let mut sim = Sim {
        cluster,
        history,
        work,
        faults: Faults::new(plan, config.seed),
        scenario: config.scenario.map(ScenarioActor::new),
        hostile_hub: None,
        hostile_setting: None,
        intensity: config.intensity,
    };
    sim.faults.apply_static(&mut sim.cluster, &mut sim.history, config.seed);
    sim.history.measure_from = sim.cluster.now() + HOUR_MS;
    load(&mut sim, config.plans.unwrap_or(spec.plans), config.load);
    let load_real_ms = started.elapsed().as_millis() as u64;
    let measured = Instant::now();
    let start = sim.cluster.now();
    if let Some((hub, attacks)) = hostile_hub {
        sim.hostile_hub = Some(HostileHub::new(&mut sim.cluster, hub, attacks, config.seed, start));
    }
    if let Some(s) = hostile_setting {
        sim.hostile_setting = Some(HostileSetting::new(&sim.cluster, s, config.seed, start));
    }
    let total_ms = period + 3 * config.bound_ms + SETTLE_MS_MAX;
    let mut sampler = Sampler::new(start, total_ms);
    let mut tick = |done_ms| progress(Progress::Measuring { done_ms, total_ms });
    let convergence = measured_period(&mut sim, config, period, &mut sampler, &mut tick);
    let run_real_ms = measured.elapsed().as_millis() as u64;
    progress(Progress::Checking);
    let checking = Instant::now();
    let mut report = final_report(&mut sim, config, convergence);
    report.timeline = timeline(&sim, &report, sampler, start, period);
    report.load_real_ms = load_real_ms;
    report.check_real_ms = checking.elapsed().as_millis() as u64;
    report.real_ms = run_real_ms;
    report.simulated_ms = sim.cluster.now() - start;
    report.sim_to_real = report.simulated_ms as f64 / report.real_ms.max(1) as f64;
    report
}

/// Records the caseloads, gets them to the hubs, and runs until 01:00.
fn load(sim: &mut Sim, plans: usize, mode: LoadMode) {
    let c = &mut sim.cluster;
    let auths: Vec<NodeId> = c.world.authorities.clone().collect();
    for n in c.world.authorities.start..c.world.settings.end {
        c.start(n);
    }
    sim.work.seed_caseloads(&mut sim.cluster, plans);
    let now = sim.cluster.now();
    sim.run_until(now + 1_000);
    let c = &mut sim.cluster;
    if mode == LoadMode::Snapshot {
        for h in c.world.hubs.clone() {
            let mut ops = vec![schema::schema_op()];
            for a in &auths {
                ops.extend(copy_feed(c, *a));
            }
            c.disk_mut(h).apply(&WriteBatch { id: 0, ops });
        }
    }
    for h in c.world.hubs.clone() {
        c.start(h);
    }
    c.refresh_links();
    let t1 = c.world.fed.start.as_millis() + HOUR_MS;
    sim.run_until(t1);
    if !settle(sim) {
        sim.history.lost.push("load", "the hubs had not caught up with every authority an hour after the load".into());
    }
}

/// An authority's entries and head, as puts for a hub's disk.
fn copy_feed(c: &Cluster, a: NodeId) -> Vec<StoreOp> {
    let disk = c.disk(a);
    let mut ops: Vec<StoreOp> = disk
        .table(Table::Entries)
        .map(|(k, v)| StoreOp::Put { table: Table::Entries, key: k.to_vec(), value: v.to_vec() })
        .collect();
    let head_key = schema::HEADS.key(c.world.code(a));
    if let Some(v) = disk.get(Table::Heads, &head_key) {
        ops.push(StoreOp::Put { table: Table::Heads, key: head_key, value: v.to_vec() });
    }
    ops
}

/// Whether every hub holds every authority at its published head.
fn replicas_caught_up(c: &Cluster) -> bool {
    c.world.hubs.clone().all(|h| {
        let Some(hub) = c.hub(h) else { return false };
        c.world.authorities.clone().all(|a| {
            let Some(auth) = c.authority(a) else { return false };
            let want = auth.head().map_or(0, |x| x.body.seq);
            hub.replicas().get(c.world.code(a)).map_or(0, |r| r.seq()) == want
        })
    })
}

/// Longest the simulator waits, at a check, for a change an authority made a moment before (an
/// hourly sweep of its plans, say) to reach every hub.
const SETTLE_MS_MAX: u64 = 60_000;

/// Runs on, a second at a time and for at most [`SETTLE_MS_MAX`], until every hub holds every
/// authority at its published head; returns whether they do.
fn settle(sim: &mut Sim) -> bool {
    for _ in 0..SETTLE_MS_MAX / 1_000 {
        if replicas_caught_up(&sim.cluster) {
            return true;
        }
        let next = sim.cluster.now() + 1_000;
        sim.run_until(next);
    }
    replicas_caught_up(&sim.cluster)
}

/// Whether everything acknowledged or answered by `heal` has reached every hub and inbox.
fn converged(sim: &Sim, heal: u64) -> bool {
    let c = &sim.cluster;
    if !replicas_caught_up(c) || sim.history.outstanding_before(heal) > 0 {
        return false;
    }
    let due = sim.history.visits_due(heal);
    c.world.hubs.clone().all(|h| {
        let disk = c.disk(h);
        due.iter().all(|(origin, seq)| {
            disk.get(Table::Entries, &schema::ENTRIES.key(&(c.world.code(*origin).clone(), *seq))).is_some()
        })
    })
}

/// Runs the measured period, heals, and measures convergence, sampling as it goes. Returns the
/// convergence time.
fn measured_period(
    sim: &mut Sim,
    config: &RunConfig,
    period: u64,
    sampler: &mut Sampler,
    tick: &mut dyn FnMut(u64),
) -> Option<u64> {
    let t1 = sim.cluster.now();
    // Figures count from here: the load is not measured.
    sim.cluster.reset_counters();
    sim.work.start(t1);
    sim.faults.schedule(&mut sim.cluster, &mut sim.history, t1, period);
    if let Some(s) = sim.scenario.as_mut() {
        s.prepare(&sim.cluster.world, &mut sim.work, t1, config.intensity);
    }
    let heal = t1 + period;
    sampler.run_until(sim, heal, tick);
    let bound = config.bound_ms;
    let mut convergence = None;
    for _ in 0..=3 * bound / 1_000 {
        if sim.cluster.now() > heal + 3 * bound {
            break;
        }
        if converged(sim, heal) {
            convergence = Some(sim.cluster.now() - heal);
            break;
        }
        let next = sim.cluster.now() + 1_000;
        sampler.run_until(sim, next, tick);
    }
    sampler.run_until(sim, heal + 2 * bound, tick);
    sim.work.running = false;
    sampler.run_until(sim, heal + 3 * bound, tick);
    settle(sim);
    sampler.finish(sim);
    convergence
}

/// What the run recorded over time, with the spans of its faults and its notifications.
fn timeline(sim: &Sim, report: &RunReport, sampler: Sampler, start: u64, period: u64) -> Timeline {
    let c = &sim.cluster;
    let end_ms = c.now() - start;
    let mut hostile = vec![];
    if let Some(h) = &report.hostile_hub {
        hostile.push(format!("hub {} ({})", h.hub, h.attacks.join(", ")));
    }
    if let Some(s) = &report.hostile_setting {
        hostile.push(format!("setting {}", s.setting));
    }
    let delivered = sim.history.promised.values().filter_map(|p| Some((p.answered_at, p.received_at?)));
    let (notices, notice_bins) = crate::timeline::notices(delivered, start);
    Timeline {
        every_ms: sampler.every_ms(),
        heal_ms: period,
        end_ms,
        hubs: c.world.hubs.clone().map(|h| c.world.code(h).to_string()).collect(),
        faults: fault_spans(&sim.faults.plan, &c.world, period, end_ms, &hostile),
        bad_inputs_ms: sim.faults.bad_inputs_at.iter().map(|t| t.saturating_sub(start)).collect(),
        samples: sampler.samples,
        notices,
        notice_bins,
        notices_outstanding: report.notifications.outstanding,
    }
}

fn hub_view(c: &Cluster, h: NodeId) -> Option<HubView> {
    let hub = c.hub(h)?;
    let replicas: BTreeMap<NodeId, FeedView> = hub
        .replicas()
        .iter()
        .filter_map(|(code, r)| Some((c.world.id(code)?, feed_view(r.head(), r.feed().entries()))))
        .collect();
    let visits = hub
        .entries()
        .filter(|e| matches!(e.body.body, EntryBody::Visit(_)))
        .filter_map(|e| Some((c.world.id(&e.body.origin)?, e.body.seq)))
        .collect();
    Some(HubView { hub: h, now: c.node_now(h), replicas, visits })
}

/// The final checks, then the report.
fn final_report(sim: &mut Sim, config: &RunConfig, convergence: Option<u64>) -> RunReport {
    let c = &sim.cluster;
    let inboxes: Vec<_> = c
        .world
        .authorities
        .clone()
        .map(|a| (a, c.authority(a).map(|x| x.inbox_ids().copied().collect::<BTreeSet<_>>())))
        .collect();
    let feeds: BTreeMap<NodeId, FeedView> = c
        .world
        .authorities
        .clone()
        .filter_map(|a| c.authority(a).map(|x| (a, feed_view(x.head(), x.feed().entries()))))
        .collect();
    let down: Vec<String> = (c.world.hubs.start..c.world.authorities.end)
        .filter(|n| c.machine(*n).is_none())
        .map(|n| c.world.code(n).to_string())
        .collect();
    sim.history.check_notifications(&inboxes);
    sim.history.check_hubs(&feeds, c.world.hubs.clone().filter_map(|h| hub_view(c, h)));
    match convergence {
        Some(ms) if ms <= config.bound_ms => {}
        Some(ms) => {
            let detail = format!("converged {} after the heal, past the bound", human::duration(ms));
            sim.history.lost.push("convergence", detail);
        }
        None => sim.history.lost.push("convergence", "did not converge within three bounds of the heal".into()),
    }
    if !down.is_empty() {
        sim.history.lost.push("node-down", format!("not running at the end: {}", down.join(", ")));
    }
    let hostile = sim.history.hostile_hub;
    for h in c.world.hubs.clone().filter(|h| Some(*h) != hostile) {
        let left: usize = c.hub(h).map_or(0, |x| x.outbox_depths().values().sum());
        if left > 0 {
            let detail = format!("hub {} still holds {left} notifications in its outbox at the end", c.world.code(h));
            sim.history.unexpected("outbox-stuck", detail);
        }
    }
    if sim.queues_overflowed() {
        sim.history.unexpected("queues", "an agenda overflowed: events were dropped".into());
    }
    if sim.cluster.counters.reports_dropped > 0 {
        sim.history.unexpected("reports", "the cluster dropped reports".into());
    }
    let scenario_checks = sim.scenario.as_ref().map(|s| s.check(sim)).unwrap_or_default();
    sim.history.lost.merge(scenario_checks);
    let mut trace = sim.cluster.trace();
    trace.write_u64(sim.history.lost.count);
    trace.write_u64(sim.history.unexpected.count);
    build_report(sim, config, convergence, trace.finish())
}

fn build_report(sim: &Sim, config: &RunConfig, convergence: Option<u64>, trace: u64) -> RunReport {
    let h: &History = &sim.history;
    let c = &sim.cluster;
    let w = &c.world;
    let delivered = h.promised.values().filter(|p| p.received > 0).count();
    let outbox_left = w.hubs.clone().filter_map(|x| c.hub(x)).map(|x| x.outbox_depths().values().sum::<usize>()).sum();
    let backlog = sim.faults.backlog_at_heal.max(sim.scenario.as_ref().map_or(0, |s| s.backlog));
    let notifications = NotificationReport {
        promised: h.promised.len(),
        delivered,
        outstanding: h.promised.len() - delivered,
        lost_with_wiped_disk: h
            .excused_promises
            .iter()
            .filter(|k| h.promised.get(k).is_some_and(|p| p.received == 0))
            .count(),
        unpromised_accepted: h.unpromised_accepted,
        backlog_max: backlog,
        latency_ms: Percentiles::of(&h.delivery_ms),
        overdue_events: h.overdue,
        outbox_left,
    };
    let ok = h.lost.is_empty() && h.unexpected.is_empty();
    let plans: usize = sim.work.registry.len();
    RunReport {
        seed: config.seed,
        scenario: config.scenario.map_or("swarm".into(), |s| s.name().into()),
        scale: config.scale,
        world: format!(
            "{} hubs, {} authorities, {} settings, {} plans",
            w.hubs.len(),
            w.authorities.len(),
            w.settings.len(),
            plans
        ),
        faults: sim.faults.plan.describe(w),
        trace_hash: format!("{trace:016x}"),
        lookups: sim.work.stats.clone(),
        notifications,
        convergence_after_heal_ms: convergence,
        ended_plan_shown_ms: Percentiles::of(&h.end_shown_ms),
        withdrawn_plan_shown_ms: Percentiles::of(&h.withdraw_shown_ms),
        new_plan_everywhere_ms: Percentiles::of(&h.start_seen_ms),
        messages: message_report(c),
        network: c.counters.clone(),
        bad_inputs: sim.faults.bad.stats.clone(),
        hostile_hub: sim.hostile_hub.as_ref().map(|x| HostileReport {
            hub: w.code(x.hub).to_string(),
            attacks: x.attacks.describe(),
            stats: x.stats.clone(),
        }),
        hostile_setting: sim
            .hostile_setting
            .as_ref()
            .map(|x| HostileSettingReport { setting: w.code(x.setting).to_string(), stats: x.stats.clone() }),
        equivocation_alarms: h.equivocations.len(),
        equivocation_proofs: h.equivocation_proofs,
        visits_before_durable: h.visits_before_durable().0,
        visits_never_durable_at_origin: h.visits_before_durable().1,
        refusals: h.refusals.clone(),
        lost: h.lost.clone(),
        unexpected: h.unexpected.clone(),
        ok,
        reproduce: config.command(),
        ..RunReport::default()
    }
}

fn message_report(c: &Cluster) -> MessageReport {
    let nodes = c.world.hubs.start..c.world.authorities.end;
    let n = nodes.len().max(1) as u64;
    let mut r = MessageReport::default();
    let mut busiest = (0, 0);
    for i in nodes {
        let node = c.node(i);
        r.total += node.sent_msgs;
        r.bytes += node.sent_bytes;
        r.per_node_max_bytes = r.per_node_max_bytes.max(node.sent_bytes);
        if node.sent_msgs > busiest.1 {
            busiest = (i, node.sent_msgs);
        }
    }
    r.per_node_max = busiest.1;
    r.per_node_mean = r.total / n;
    r.per_node_mean_bytes = r.bytes / n;
    let hubs = c.world.hubs.clone();
    let per_hub = |f: fn(&Node) -> u64| hubs.clone().map(|h| f(c.node(h))).sum::<u64>() / hubs.len().max(1) as u64;
    r.per_hub_mean_sent_bytes = per_hub(|n| n.sent_bytes);
    r.per_hub_mean_received_bytes = per_hub(|n| n.received_bytes);
    r.busiest = c.world.code(busiest.0).to_string();
    r
}

/// Runs several configurations; stops at none (every failure is reported).
pub fn run_all(configs: &[RunConfig], mut each: impl FnMut(&RunReport)) -> Vec<RunReport> {
    configs
        .iter()
        .map(|c| {
            let r = run(c);
            each(&r);
            r
        })
        .collect()
}

/// The violations of a report, as lines.
pub fn violation_lines(v: &Violations) -> Vec<String> {
    let mut lines: Vec<String> = v.first.iter().map(|x| format!("[{}] {}", x.check, x.detail)).collect();
    if v.count > v.first.len() as u64 {
        lines.push(format!("... and {} more", v.count - v.first.len() as u64));
    }
    lines
}
