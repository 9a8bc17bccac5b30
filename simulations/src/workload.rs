//! The workload: caseloads loaded at the start, then over simulated days plan starts, ends and
//! withdrawals at the authorities, and lookups at care settings (mostly of children with no
//! plan, some of flagged children, some scheduled), each sent to the setting's first reachable
//! home hub, answered, verified end to end and compared with what the authorities acknowledged.

use crate::checker::History;
use crate::fnv::FnvMap;
use crate::sim::{Ev, Sim};
use crate::world::{self, NodeId, World};
use cpis_protocol::authority::{Change as Command, CommandError};
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::records::{AccessEvent, LookupKind, Person, Plan, PlanType};
use cpis_protocol::setting::{Setting, VerifiedAnswer};
use cpis_protocol::sign::Signed;
use cpis_protocol::time::{DAY_MS, Date, Timestamp};
use cpis_protocol::wire::{self, Message};
use serde::Serialize;
use std::collections::VecDeque;

/// How long a setting waits for an answer before trying again.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// Attempts of one clinical lookup (each with a fresh lookup id).
pub const ATTEMPTS_MAX: u8 = 3;
/// Signed lookups kept for the replay injector.
pub const RECENT_LOOKUPS_MAX: usize = 16;
const HOUR_MS: u64 = 3_600_000;

/// Relative lookup rate by hour of day (urgent care is busiest from late morning to evening).
const DIURNAL: [f64; 24] = [
    0.4, 0.3, 0.3, 0.3, 0.3, 0.4, 0.6, 0.9, 1.2, 1.4, 1.5, 1.5, 1.5, 1.5, 1.5, 1.4, 1.4, 1.4, 1.4, 1.3, 1.2, 1.0, 0.8,
    0.6,
];

/// Rates of the workload, per simulated day.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSpec {
    pub lookups_per_day: f64,
    /// Share of lookups that are of a child with a plan.
    pub flagged_share: f64,
    pub starts_per_day: f64,
    pub ends_per_day: f64,
    pub withdrawals_per_day: f64,
    /// Share of new plans for a child another authority already has a plan for.
    pub twin_share: f64,
    /// Lookups per hour multiplied by this (a busy day).
    pub peak_factor: f64,
}

impl WorkloadSpec {
    /// England's rates at `scale`: 30,000 lookups, 350 starts, 330 ends, 10 withdrawals a day.
    pub fn england(scale: f64) -> WorkloadSpec {
        WorkloadSpec {
            lookups_per_day: 30_000.0 * scale,
            flagged_share: 0.2,
            starts_per_day: 350.0 * scale,
            ends_per_day: 330.0 * scale,
            withdrawals_per_day: 10.0 * scale.max(0.1),
            twin_share: 0.02,
            peak_factor: 1.0,
        }
    }
}

/// Extra lookups of one authority's children, at unscheduled settings all over the country.
#[derive(Clone, Copy, Debug)]
pub struct Focus {
    pub authority: NodeId,
    pub per_hour: f64,
    /// No focus lookups are planned from this time on.
    pub until: u64,
}

/// A plan the workload created.
#[derive(Clone, Debug)]
pub struct RegisteredPlan {
    pub authority: NodeId,
    pub reference: PlanRef,
    pub nhs: NhsNumber,
}

/// Scheduled workload events.
#[derive(Clone, Debug)]
pub enum WorkEv {
    /// Plan the coming hour.
    Hour,
    Lookup {
        setting: NodeId,
        nhs: NhsNumber,
    },
    Timeout {
        lookup: LookupId,
    },
    PlanStart {
        authority: NodeId,
    },
    PlanEnd,
    PlanWithdraw,
}

/// How a clinical lookup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Answered,
    NoHub,
    NoAnswer,
    RefusedClock,
    Refused,
}

struct Request {
    setting: NodeId,
    nhs: NhsNumber,
    kind: LookupKind,
    sent_at: u64,
    /// (authority, reference, acknowledged at) of plans visible when the lookup was made.
    expected: Vec<(NodeId, PlanRef, u64)>,
    strict: bool,
    attempts: u8,
    outcome: Outcome,
}

struct Attempt {
    request: usize,
    hub: NodeId,
    signed: Signed<AccessEvent>,
    done: bool,
}

/// Lookup figures of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LookupStats {
    pub requests: u64,
    pub attempts: u64,
    pub answered: u64,
    pub unscheduled: u64,
    pub scheduled: u64,
    pub no_hub_reachable: u64,
    pub no_answer: u64,
    pub refused_clock_skew: u64,
    pub refused_other: u64,
    pub flagged: u64,
    pub flagged_complete: u64,
    pub flagged_missed_no_hub_reachable: u64,
    pub flagged_missed_hub_not_caught_up: u64,
    pub flagged_missed_no_answer: u64,
    pub flagged_missed_refused: u64,
    /// Answers that showed a plan its authority had already ended or withdrawn.
    pub stale_shown: u64,
    pub strict_checked: u64,
    pub commands: u64,
    pub commands_refused: u64,
    pub commands_node_down: u64,
}

/// The workload's state.
pub struct Workload {
    pub spec: WorkloadSpec,
    pub rng: SplitMix64,
    pub registry: Vec<RegisteredPlan>,
    next_stem: u64,
    next_ref: u64,
    /// Whether new operations are being planned.
    pub running: bool,
    /// Scales lookup rates (tests run lighter than the real thing).
    pub intensity: f64,
    /// Extra lookups of one authority's children (a scenario's).
    pub focus: Option<Focus>,
    settings: Vec<Setting>,
    requests: Vec<Request>,
    attempts: FnvMap<LookupId, Attempt>,
    /// Lookups answered lately, for the replay injector: (setting, hub, signed lookup).
    pub answered_recently: VecDeque<(NodeId, NodeId, Signed<AccessEvent>)>,
    pub stats: LookupStats,
}

impl Workload {
    pub fn new(world: &World, spec: WorkloadSpec, seed: u64) -> Workload {
        let trusted = world.fed.trusted();
        let settings = world
            .settings
            .clone()
            .filter_map(|s| {
                Setting::new(world.code(s).clone(), world.fed.identity(world.code(s).as_str()), trusted.clone())
            })
            .collect();
        Workload {
            spec,
            rng: SplitMix64::new(seed ^ 0x00C0_FFEE),
            registry: vec![],
            next_stem: world::FLAGGED_STEM_BASE,
            next_ref: 1,
            running: false,
            intensity: 1.0,
            focus: None,
            settings,
            requests: vec![],
            attempts: FnvMap::default(),
            answered_recently: VecDeque::new(),
            stats: LookupStats::default(),
        }
    }

    fn new_child(&mut self) -> NhsNumber {
        let n = world::nhs_number(self.next_stem);
        self.next_stem = n.as_u64() / 10 + 1;
        n
    }

    /// A new plan for authority `a` starting on `start` (the child is new, or a twin).
    pub fn new_plan(&mut self, a: NodeId, code: &str, start: Date) -> Plan {
        let twin = !self.registry.is_empty() && self.rng.below(1_000_000) < (self.spec.twin_share * 1e6) as u64;
        let nhs = if twin {
            self.registry[self.rng.below(self.registry.len() as u64) as usize].nhs
        } else {
            self.new_child()
        };
        let plan_type = match self.rng.below(100) {
            0 => PlanType::UnbornChildProtection,
            1..=37 => PlanType::ChildProtection,
            _ => PlanType::LookedAfter,
        };
        let due =
            (plan_type == PlanType::UnbornChildProtection).then(|| start.plus_days(30 + self.rng.below(220) as i32));
        let reference = match PlanRef::parse(&format!("{code}-{:06}", self.next_ref)) {
            Ok(r) => r,
            Err(e) => panic!("simulator built a bad plan reference: {e}"),
        };
        self.next_ref += 1;
        self.registry.push(RegisteredPlan { authority: a, reference: reference.clone(), nhs });
        Plan { reference, nhs, plan_type, start, end: None, due, withdrawn: false }
    }
}

impl Sim {
    /// Records each authority's caseload (its share of `plans`) while it is not yet connected.
    pub fn seed_caseloads(&mut self, plans: usize) {
        let auths: Vec<NodeId> = self.world.authorities.clone().collect();
        let weights: Vec<u64> = auths.iter().map(|_| 40 + self.work.rng.below(160)).collect();
        let total: u64 = weights.iter().sum();
        let today = Timestamp(self.now).date();
        for (a, w) in auths.into_iter().zip(weights) {
            let n = (plans as u64 * w / total.max(1)).max(1);
            let code = self.world.code(a).to_string();
            for _ in 0..n {
                let start = today.plus_days(-(1 + self.work.rng.below(3 * 365) as i32));
                let mut plan = self.work.new_plan(a, &code, start);
                if let Some(due) = plan.due.as_mut() {
                    // Some unborn-child plans pass their visibility window during the run.
                    *due = today.plus_days(self.work.rng.below(240) as i32 - 27);
                }
                self.command(a, |auth, now| auth.record_plan(plan, now));
            }
        }
    }

    /// Runs an operator's command on an authority, if it is up.
    pub fn command(
        &mut self,
        a: NodeId,
        f: impl FnOnce(&mut cpis_protocol::authority::Authority, Timestamp) -> Result<Command, CommandError>,
    ) {
        let now = self.node_now(a);
        let Some(auth) = self.nodes[a].authority_mut() else {
            self.work.stats.commands_node_down += 1;
            return;
        };
        self.work.stats.commands += 1;
        if f(auth, now).is_err() {
            self.work.stats.commands_refused += 1;
        }
        self.pump(a);
    }

    pub fn on_work(&mut self, w: WorkEv) {
        let new_work = !matches!(w, WorkEv::Timeout { .. } | WorkEv::Hour);
        if new_work && !self.work.running {
            return;
        }
        match w {
            WorkEv::Hour => self.plan_hour(),
            WorkEv::Lookup { setting, nhs } => self.start_request(setting, nhs),
            WorkEv::Timeout { lookup } => self.on_timeout(lookup),
            WorkEv::PlanStart { authority } => {
                let code = self.world.code(authority).to_string();
                let plan = self.work.new_plan(authority, &code, Timestamp(self.now).date());
                self.command(authority, |auth, now| auth.record_plan(plan, now));
            }
            WorkEv::PlanEnd | WorkEv::PlanWithdraw => self.change_plan(matches!(w, WorkEv::PlanWithdraw)),
        }
    }

    fn change_plan(&mut self, withdraw: bool) {
        if self.work.registry.is_empty() {
            return;
        }
        let i = self.work.rng.below(self.work.registry.len() as u64) as usize;
        let p = self.work.registry[i].clone();
        let today = Timestamp(self.now).date();
        if withdraw {
            self.command(p.authority, |auth, now| auth.withdraw_plan(&p.reference, now));
        } else {
            self.command(p.authority, |auth, now| auth.end_plan(&p.reference, today, now));
        }
    }

    /// Count of events in an hour for a daily rate, with the fraction drawn at random.
    fn per_hour(&mut self, per_day: f64, weight: f64) -> u64 {
        // DIURNAL sums to 24.8: a weight of 1 gives per_day / 24.8.
        let sum: f64 = DIURNAL.iter().sum();
        let x = per_day * weight / sum;
        x.floor() as u64 + u64::from((self.work.rng.below(1_000_000) as f64) < x.fract() * 1e6)
    }

    /// Schedules the coming hour's operations at random moments within it.
    fn plan_hour(&mut self) {
        if !self.work.running {
            return;
        }
        let hour = (self.now % DAY_MS / HOUR_MS) as usize;
        let spec = self.work.spec.clone();
        let lookups = self.per_hour(spec.lookups_per_day * spec.peak_factor, DIURNAL[hour]);
        for _ in 0..lookups {
            let setting = self.world.settings.start + self.work.rng.below(self.world.settings.len() as u64) as usize;
            let nhs = self.pick_child(spec.flagged_share);
            self.schedule_within_hour(WorkEv::Lookup { setting, nhs });
        }
        if let Some(f) = self.work.focus.filter(|f| self.now < f.until) {
            let n = self.per_hour(f.per_hour * 24.8, 1.0);
            self.plan_focus(f.authority, n);
        }
        let starts = self.per_hour(spec.starts_per_day, 1.0);
        for _ in 0..starts {
            let a = self.world.authorities.start + self.work.rng.below(self.world.authorities.len() as u64) as usize;
            self.schedule_within_hour(WorkEv::PlanStart { authority: a });
        }
        for _ in 0..self.per_hour(spec.ends_per_day, 1.0) {
            self.schedule_within_hour(WorkEv::PlanEnd);
        }
        for _ in 0..self.per_hour(spec.withdrawals_per_day, 1.0) {
            self.schedule_within_hour(WorkEv::PlanWithdraw);
        }
        let next = (self.now / HOUR_MS + 1) * HOUR_MS;
        self.schedule(next, Ev::Work(WorkEv::Hour));
    }

    fn plan_focus(&mut self, authority: NodeId, n: u64) {
        let theirs: Vec<NhsNumber> =
            self.work.registry.iter().filter(|p| p.authority == authority).map(|p| p.nhs).take(500).collect();
        let unscheduled: Vec<NodeId> = self
            .world
            .settings
            .clone()
            .filter(|s| self.world.setting_types[*s].is_some_and(|t| world::lookup_kind(t) == LookupKind::Unscheduled))
            .collect();
        if theirs.is_empty() || unscheduled.is_empty() {
            return;
        }
        for _ in 0..n {
            let nhs = theirs[self.work.rng.below(theirs.len() as u64) as usize];
            let setting = unscheduled[self.work.rng.below(unscheduled.len() as u64) as usize];
            self.schedule_within_hour(WorkEv::Lookup { setting, nhs });
        }
    }

    fn schedule_within_hour(&mut self, w: WorkEv) {
        let at = self.now + self.work.rng.below(HOUR_MS);
        self.schedule(at, Ev::Work(w));
    }

    fn pick_child(&mut self, flagged_share: f64) -> NhsNumber {
        let flagged = (self.work.rng.below(1_000_000) as f64) < flagged_share * 1e6;
        if flagged && !self.work.registry.is_empty() {
            let i = self.work.rng.below(self.work.registry.len() as u64) as usize;
            return self.work.registry[i].nhs;
        }
        world::unflagged_child(&mut self.work.rng)
    }
}

impl Sim {
    fn start_request(&mut self, setting: NodeId, nhs: NhsNumber) {
        let kind = self.world.setting_types[setting].map_or(LookupKind::Unscheduled, world::lookup_kind);
        let expected: Vec<(NodeId, PlanRef, u64)> = self
            .history
            .visible_truth(nhs, self.now)
            .into_iter()
            .filter(|(_, _, t)| !History::near_visibility_edge(&t.plan, self.now, 600_000))
            .map(|(a, r, t)| (a, r.clone(), t.acked_at))
            .collect();
        let strict = self.history.whole_since.is_some_and(|w| self.now >= w + self.history.bound_ms);
        self.work.stats.requests += 1;
        match kind {
            LookupKind::Unscheduled => self.work.stats.unscheduled += 1,
            LookupKind::Scheduled => self.work.stats.scheduled += 1,
        }
        if !expected.is_empty() {
            self.work.stats.flagged += 1;
        }
        let r =
            Request { setting, nhs, kind, sent_at: self.now, expected, strict, attempts: 0, outcome: Outcome::Pending };
        self.work.requests.push(r);
        self.attempt(self.work.requests.len() - 1);
    }

    /// Sends request `r` to the next connected home hub of its setting.
    fn attempt(&mut self, r: usize) {
        let (setting, tried) = (self.work.requests[r].setting, self.work.requests[r].attempts);
        let homes = self.world.home_hubs[setting].clone();
        let hub =
            (0..homes.len()).map(|i| homes[(i + tried as usize) % homes.len()]).find(|h| self.connected(setting, *h));
        let Some(hub) = hub else { return self.finish(r, Outcome::NoHub, None) };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.work.rng.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&self.work.rng.next_u64().to_le_bytes());
        let lookup_id = LookupId(id);
        let now = self.node_now(setting);
        let req = &mut self.work.requests[r];
        req.attempts += 1;
        let person = Person { id: format!("U{}", setting % 7), name: "Dr A Clinician".into(), role: "Nurse".into() };
        let Some(s) = self.work.settings.get(setting - self.world.settings.start) else { return };
        let signed = match s.lookup(req.nhs, person, req.kind, lookup_id, now) {
            Ok(signed) => signed,
            Err(e) => panic!("simulator built an invalid lookup: {e}"),
        };
        self.work.stats.attempts += 1;
        self.work.attempts.insert(lookup_id, Attempt { request: r, hub, signed: signed.clone(), done: false });
        let frame = wire::encode_frame(&Message::Lookup(signed));
        self.send_frame(setting, hub, frame);
        self.schedule(self.now + ANSWER_TIMEOUT_MS, Ev::Work(WorkEv::Timeout { lookup: lookup_id }));
    }

    fn on_timeout(&mut self, lookup: LookupId) {
        let Some(a) = self.work.attempts.get_mut(&lookup) else { return };
        if a.done {
            return;
        }
        a.done = true;
        let r = a.request;
        if self.work.requests[r].attempts < ATTEMPTS_MAX {
            self.attempt(r);
        } else {
            self.finish(r, Outcome::NoAnswer, None);
        }
    }

    /// A frame for a setting: an answer to check, or a refusal.
    pub fn setting_receive(&mut self, _setting: NodeId, _from: NodeId, frame: &[u8]) {
        match wire::decode_frame(frame) {
            Ok(Message::Answer(answer)) => {
                let Some(a) = self.work.attempts.get_mut(&answer.lookup_id) else { return };
                if a.done {
                    return;
                }
                a.done = true;
                let (r, hub, signed) = (a.request, a.hub, a.signed.clone());
                let setting = self.work.requests[r].setting;
                let checked = self
                    .work
                    .settings
                    .get(setting - self.world.settings.start)
                    .map(|s| s.verify_answer(&signed.body, answer));
                self.work.answered_recently.push_back((setting, hub, signed));
                if self.work.answered_recently.len() > RECENT_LOOKUPS_MAX {
                    self.work.answered_recently.pop_front();
                }
                match checked {
                    Some(Ok(v)) => self.finish(r, Outcome::Answered, Some(v)),
                    Some(Err(e)) => {
                        self.history.unexpected("forged", format!("an answer failed the setting's checks: {e}"))
                    }
                    None => {}
                }
            }
            Ok(Message::Refused(refusal)) => {
                let Some(id) = refusal.lookup_id else { return };
                let Some(a) = self.work.attempts.get_mut(&id) else { return };
                // A duplicated lookup is refused as a replay while the first copy is answered.
                if a.done || refusal.reason.contains("replay") {
                    return;
                }
                a.done = true;
                let stale = refusal.reason.contains("from the hub's clock");
                let r = a.request;
                self.finish(r, if stale { Outcome::RefusedClock } else { Outcome::Refused }, None);
            }
            _ => {}
        }
    }

    fn finish(&mut self, r: usize, outcome: Outcome, answer: Option<VerifiedAnswer>) {
        if self.work.requests[r].outcome == Outcome::Answered {
            return;
        }
        self.work.requests[r].outcome = outcome;
        let st = &mut self.work.stats;
        match outcome {
            Outcome::Answered => st.answered += 1,
            Outcome::NoHub => st.no_hub_reachable += 1,
            Outcome::NoAnswer => st.no_answer += 1,
            Outcome::RefusedClock => st.refused_clock_skew += 1,
            Outcome::Refused => st.refused_other += 1,
            Outcome::Pending => {}
        }
        if self.work.requests[r].expected.is_empty() && answer.is_none() {
            return;
        }
        match (outcome, answer) {
            (Outcome::Answered, Some(v)) => self.compare_answer(r, &v),
            (Outcome::NoHub, _) => self.work.stats.flagged_missed_no_hub_reachable += 1,
            (Outcome::NoAnswer, _) => self.work.stats.flagged_missed_no_answer += 1,
            _ => self.work.stats.flagged_missed_refused += 1,
        }
    }

    /// Compares an answer with what the authorities had acknowledged (invariants 1 and 5).
    fn compare_answer(&mut self, r: usize, v: &VerifiedAnswer) {
        let req = &self.work.requests[r];
        let (strict, sent_at, bound) = (req.strict, req.sent_at, self.history.bound_ms);
        let mut missing = vec![];
        for (a, reference, acked_at) in &req.expected {
            let code = self.world.code(*a);
            if !v.plans.iter().any(|p| &p.authority == code && &p.plan.reference == reference) {
                missing.push((*a, reference.clone(), *acked_at));
            }
        }
        let stale: Vec<String> = v
            .plans
            .iter()
            .filter(|p| {
                let a = self.world.id(&p.authority).unwrap_or(usize::MAX);
                self.history.plans.get(&(a, p.plan.reference.clone())).is_some_and(|t| {
                    !t.plan.visible_on(Timestamp(self.now).date())
                        && !History::near_visibility_edge(&t.plan, self.now, 600_000)
                        && (!strict || t.acked_at + bound <= sent_at)
                })
            })
            .map(|p| format!("{} of {}", p.plan.reference, p.authority))
            .collect();
        let expected = !req.expected.is_empty();
        self.work.stats.stale_shown += stale.len() as u64;
        if strict {
            self.work.stats.strict_checked += 1;
            for s in &stale {
                self.history.unexpected(
                    "shown-after-end",
                    format!("an answer showed plan {s} after it ended or was withdrawn and the network had healed"),
                );
            }
            for (a, reference, acked_at) in missing.iter().filter(|m| m.2 + bound <= sent_at) {
                let detail = format!(
                    "a lookup of {} missed plan {reference} of #{a} acknowledged at {}, network whole since {:?}",
                    v.nhs,
                    Timestamp(*acked_at),
                    self.history.whole_since.map(Timestamp)
                );
                self.history.lost.push("flagged-missed", detail);
            }
        }
        if expected && missing.is_empty() {
            self.work.stats.flagged_complete += 1;
        } else if expected {
            self.work.stats.flagged_missed_hub_not_caught_up += 1;
        }
    }
}
