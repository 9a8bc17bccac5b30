//! One run: build the world, load the caseloads, run the measured period under faults, heal,
//! wait the liveness bound, check, report.
//!
//! Timeline (true time): the federation starts at 00:00; caseloads are recorded and replicated
//! (the load, not measured) until 01:00; the measured period with its workload and faults runs
//! from 01:00 for `hours`; then every fault heals. From the heal the simulator waits for
//! everything acknowledged before it to reach every hub and inbox (the convergence time); lookups
//! made from one bound after the heal are checked strictly; the workload stops two bounds after
//! the heal, and the final checks run one bound later.

use crate::checker::{History, HubView, Violations};
use crate::faults::FaultPlan;
use crate::fnv::FnvMap;
use crate::report::{MessageReport, NotificationReport, Percentiles, RunReport};
use crate::scenarios::Scenario;
use crate::sim::{Ev, Sim};
use crate::workload::{WorkEv, Workload, WorkloadSpec};
use crate::world::{NodeId, World, WorldSpec};
use cpis_protocol::feed::EntryBody;
use cpis_protocol::store::Table;
use std::collections::BTreeSet;
use std::hash::Hasher;
use std::time::Instant;

const HOUR_MS: u64 = 3_600_000;

/// A row's place on a simulated disk.
type DiskKey = (Table, Vec<u8>);

/// How the caseloads reach the hubs before the measured period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Through the protocol: each authority connects and pushes its feed; hubs verify every
    /// entry and forward it to each other.
    Replicate,
    /// Each hub's disk starts with a copy of every authority's rows (a federation that has been
    /// running); hubs restore from it.
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
    /// Run the seed's workload with no faults at all.
    pub no_faults: bool,
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

/// Runs one seed or scenario and checks it.
pub fn run(config: &RunConfig) -> RunReport {
    let started = Instant::now();
    let spec = WorldSpec::england(config.scale);
    let world = World::build(spec.clone());
    let mut wspec = WorkloadSpec::england(spec.scale);
    wspec.lookups_per_day *= config.intensity;
    if let Some(s) = config.scenario {
        wspec.peak_factor = s.peak_factor();
    }
    let mut work = Workload::new(&world, wspec, config.seed);
    work.intensity = config.intensity;
    let mut sim = Sim::new(world, config.seed, work);
    sim.scenario = config.scenario;
    sim.history.bound_ms = config.bound_ms;
    let period = config.hours() * HOUR_MS;
    let plan = match config.scenario {
        Some(s) => s.faults(&sim.world),
        None if config.no_faults => FaultPlan::default(),
        None => FaultPlan::swarm(config.seed, &sim.world, period),
    };
    sim.apply_static_faults(&plan, config.seed);
    sim.history.measure_from = sim.now + HOUR_MS;
    load(&mut sim, config.plans.unwrap_or(spec.plans), config.load);
    let load_real_ms = started.elapsed().as_millis() as u64;
    let measured = Instant::now();
    let start = sim.now;
    let convergence = measured_period(&mut sim, &plan, config, period);
    let run_real_ms = measured.elapsed().as_millis() as u64;
    let checking = Instant::now();
    let mut report = final_report(&mut sim, config, &plan, convergence);
    report.load_real_ms = load_real_ms;
    report.check_real_ms = checking.elapsed().as_millis() as u64;
    report.real_ms = run_real_ms;
    report.simulated_ms = sim.now - start;
    report.sim_to_real = report.simulated_ms as f64 / report.real_ms.max(1) as f64;
    report
}

/// Records the caseloads, gets them to the hubs, and runs until 01:00.
fn load(sim: &mut Sim, plans: usize, mode: LoadMode) {
    let auths: Vec<NodeId> = sim.world.authorities.clone().collect();
    for a in &auths {
        sim.start_machine(*a);
    }
    sim.seed_caseloads(plans);
    sim.run_until(sim.now + 1_000);
    if mode == LoadMode::Snapshot {
        for h in sim.world.hubs.clone() {
            for a in &auths {
                copy_feed(sim, *a, h);
            }
        }
    }
    for h in sim.world.hubs.clone() {
        sim.start_machine(h);
    }
    sim.refresh_links();
    let t1 = sim.world.fed.start.as_millis() + HOUR_MS;
    sim.run_until(t1);
    if !sim.history.settled_before(t1, sim.now) {
        sim.history.lost.push(
            "load",
            format!("{} entries had not reached every hub an hour after the load", sim.history.incomplete.len()),
        );
    }
}

/// Copies an authority's entries and high-water mark into a hub's disk.
fn copy_feed(sim: &mut Sim, a: NodeId, h: NodeId) {
    let rows: Vec<(DiskKey, Vec<u8>)> = sim.nodes[a]
        .disk
        .iter()
        .filter(|((t, _), _)| *t == Table::Entries)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let code = sim.world.code(a).clone();
    let last = sim.nodes[a].authority().map_or(0, |x| x.last_seq());
    let batch = cpis_protocol::store::WriteBatch {
        id: 0,
        ops: rows
            .iter()
            .map(|((t, k), v)| cpis_protocol::store::StoreOp::Put { table: *t, key: k.clone(), value: v.clone() })
            .collect(),
    };
    sim.history.on_durable(h, std::slice::from_ref(&batch), sim.now);
    let disk = &mut sim.nodes[h].disk;
    for (k, v) in rows {
        disk.insert(k, v);
    }
    disk.insert((Table::HighWater, code.as_str().as_bytes().to_vec()), last.to_be_bytes().to_vec());
}

/// Runs the measured period, heals, and measures convergence. Returns the convergence time.
fn measured_period(sim: &mut Sim, plan: &FaultPlan, config: &RunConfig, period: u64) -> Option<u64> {
    let t1 = sim.now;
    // Figures count from here: the load is not measured.
    sim.counters = Default::default();
    for node in &mut sim.nodes {
        node.sent_msgs = 0;
        node.sent_bytes = 0;
    }
    sim.work.running = true;
    sim.schedule(t1, Ev::Work(WorkEv::Hour));
    sim.schedule_faults(plan, t1, period);
    if let Some(s) = config.scenario {
        s.prepare(sim, t1, config.intensity);
    }
    let heal = t1 + period;
    sim.run_until(heal);
    let bound = config.bound_ms;
    let mut convergence = None;
    while sim.now <= heal + 3 * bound {
        if sim.history.settled_before(heal, sim.now) {
            convergence = Some(sim.now - heal);
            break;
        }
        sim.run_until(sim.now + 1_000);
    }
    sim.run_until(heal + 2 * bound);
    sim.work.running = false;
    sim.run_until(heal + 3 * bound);
    convergence
}

fn hub_view(sim: &Sim, h: NodeId) -> Option<HubView> {
    let hub = sim.nodes[h].hub()?;
    let now = sim.node_now(h);
    let held: BTreeSet<(NodeId, u64)> =
        hub.entries().filter_map(|e| Some((sim.world.id(&e.body.origin)?, e.body.seq))).collect();
    let mut shown = FnvMap::default();
    for nhs in sim.history.by_nhs.keys() {
        let plans: Vec<_> = hub
            .visible_plans(*nhs, now)
            .into_iter()
            .filter_map(|e| match &e.body.body {
                EntryBody::Plan(p) => Some((sim.world.id(&e.body.origin)?, p.reference.clone(), e.body.seq)),
                _ => None,
            })
            .collect();
        shown.insert(*nhs, plans);
    }
    Some(HubView { hub: h, now: now.as_millis(), held, shown })
}

/// The final checks, then the report.
fn final_report(sim: &mut Sim, config: &RunConfig, plan: &FaultPlan, convergence: Option<u64>) -> RunReport {
    let inboxes: Vec<_> = sim
        .world
        .authorities
        .clone()
        .filter_map(|a| {
            Some((a, sim.nodes[a].authority()?.inbox().map(|i| i.notification.body.event.body.lookup_id).collect()))
        })
        .collect();
    sim.history.check_notifications(&inboxes);
    let views: Vec<HubView> = sim.world.hubs.clone().filter_map(|h| hub_view(sim, h)).collect();
    if views.len() != sim.world.hubs.len() {
        sim.history.lost.push("hub", "a hub was not running at the end".into());
    }
    sim.history.check_hubs(&views);
    let scenario_checks = config.scenario.map(|s| s.check(sim)).unwrap_or_default();
    sim.history.lost.merge(scenario_checks);
    let mut trace = sim.trace;
    trace.write_u64(sim.history.lost.count);
    trace.write_u64(sim.history.unexpected.count);
    build_report(sim, config, plan, convergence, trace.finish())
}

fn build_report(sim: &Sim, config: &RunConfig, plan: &FaultPlan, convergence: Option<u64>, trace: u64) -> RunReport {
    let h: &History = &sim.history;
    let w = &sim.world;
    let delivered = h.promised.values().filter(|p| p.received > 0).count();
    let notifications = NotificationReport {
        promised: h.promised.len(),
        delivered,
        outstanding: h.promised.len() - delivered,
        backlog_max: sim.backlog_at_heal.max(sim.scenario_backlog),
        latency_ms: Percentiles::of(&h.delivery_ms),
        overdue_events: h.overdue,
    };
    let ok = h.lost.is_empty() && h.unexpected.is_empty();
    RunReport {
        seed: config.seed,
        scenario: config.scenario.map_or("swarm".into(), |s| s.name().into()),
        scale: config.scale,
        world: format!(
            "{} hubs, {} authorities, {} settings, {} plans",
            w.hubs.len(),
            w.authorities.len(),
            w.settings.len(),
            h.plans.len()
        ),
        faults: plan.describe(w),
        trace_hash: format!("{trace:016x}"),
        lookups: sim.work.stats.clone(),
        notifications,
        convergence_after_heal_ms: convergence,
        ended_plan_shown_ms: Percentiles::of(&h.end_shown_ms),
        withdrawn_plan_shown_ms: Percentiles::of(&h.withdraw_shown_ms),
        new_plan_everywhere_ms: Percentiles::of(&h.start_seen_ms),
        messages: message_report(sim),
        network: sim.counters.clone(),
        equivocation_alarms: h.equivocations.len(),
        refusals: h.refusals.clone(),
        lost: h.lost.clone(),
        unexpected: h.unexpected.clone(),
        ok,
        reproduce: config.command(),
        ..RunReport::default()
    }
}

fn message_report(sim: &Sim) -> MessageReport {
    let nodes = sim.world.hubs.start..sim.world.authorities.end;
    let n = nodes.len().max(1) as u64;
    let mut r = MessageReport::default();
    let mut busiest = (0, 0);
    for i in nodes {
        let node = &sim.nodes[i];
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
    r.busiest = sim.world.code(busiest.0).to_string();
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
