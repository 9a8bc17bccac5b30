//! The workload actor: caseloads loaded at the start, then over simulated days plan starts, ends
//! and withdrawals at the authorities (operator commands), and lookups at care settings (mostly
//! of children with no plan, some of flagged children, some scheduled). A lookup goes to the
//! setting's first connected home hub; every answer is checked by the protocol's own
//! [`Setting::verify_answer`] and handed to the checkers. An answer that fails the setting's
//! checks (a hostile hub's) is refused and the lookup is tried again at the next home hub.

use crate::agenda::Agenda;
use crate::checker::{AnswerRecord, AnswerVerdict, History};
use crate::cluster::Cluster;
use crate::fnv::FnvMap;
use crate::world::{self, NodeId, World};
use cpis_protocol::authority::RowOutcome;
use cpis_protocol::directory::Role;
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::machine::{Command, CommandId, Reply};
use cpis_protocol::records::{AccessEvent, LookupKind, Person, Plan, PlanType};
use cpis_protocol::refusal::RefusalCode;
use cpis_protocol::setting::Setting;
use cpis_protocol::sign::Signed;
use cpis_protocol::time::{DAY_MS, Date, Timestamp};
use cpis_protocol::wire::{self, LookupAnswer, Message};
use serde::Serialize;
use std::collections::BTreeSet;

/// How long a setting waits for an answer before trying again.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;
/// Attempts of one clinical lookup (each with a fresh lookup id).
pub const ATTEMPTS_MAX: u8 = 3;
/// People at one setting who make lookups (each has the hub's per-person rate limit).
pub const PEOPLE_PER_SETTING: u64 = 20;
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
    /// Lookups are of the authority's first this many children.
    pub children: usize,
}

/// A plan the workload created.
#[derive(Clone, Debug)]
pub struct RegisteredPlan {
    pub authority: NodeId,
    pub reference: PlanRef,
    pub nhs: NhsNumber,
}

/// The workload's own timed events.
#[derive(Clone, Debug)]
enum WorkEv {
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
    RefusedRate,
    Refused,
    /// Every attempt's answer failed the setting's checks.
    Forged,
}

struct Request {
    setting: NodeId,
    nhs: NhsNumber,
    sent_at: u64,
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
    /// Clinical lookups made (each up to three attempts).
    pub requests: u64,
    pub attempts: u64,
    pub answered: u64,
    pub unscheduled: u64,
    pub scheduled: u64,
    /// Answered with every authority checked under a fresh head.
    pub answered_all_checked: u64,
    /// Answered with some authority stale (an old head) but none unavailable.
    pub answered_some_stale: u64,
    /// Answered with some authority unavailable (no valid head): its phones shown, never "no records".
    pub answered_some_unavailable: u64,
    /// Answers the setting refused as forged (a proof or record did not hold).
    pub answers_refused_forged: u64,
    /// Lookups tried again at another hub after a forged answer.
    pub retried_after_forged: u64,
    /// Lookups whose every attempt got a forged answer.
    pub forged_unresolved: u64,
    pub no_hub_reachable: u64,
    pub no_answer: u64,
    pub refused_clock_skew: u64,
    pub refused_rate_limited: u64,
    pub refused_other: u64,
    /// Lookups of a child with a visible, acknowledged plan.
    pub flagged: u64,
    pub flagged_complete: u64,
    pub flagged_missed_no_hub_reachable: u64,
    /// A plan missing under a fresh head older than the plan.
    pub flagged_missed_hub_not_caught_up: u64,
    /// A plan missing, its authority shown stale or unavailable (with its phones).
    pub flagged_missed_authority_unavailable: u64,
    pub flagged_missed_no_answer: u64,
    pub flagged_missed_refused: u64,
    pub flagged_missed_forged: u64,
    /// Plans shown (under an older head) that had ended or been withdrawn at the lookup.
    pub stale_shown: u64,
    /// Lookups made once the network had been whole for the bound, checked strictly.
    pub strict_checked: u64,
    /// Directory versions a hub pushed on a setting that it refused.
    pub directories_refused: u64,
    pub commands: u64,
    pub commands_refused: u64,
    pub commands_node_down: u64,
}

/// The workload's state.
pub struct Workload {
    pub spec: WorkloadSpec,
    rng: SplitMix64,
    pub registry: Vec<RegisteredPlan>,
    next_stem: u64,
    next_ref: u64,
    /// Whether new operations are being planned.
    pub running: bool,
    /// Extra lookups of one authority's children (a scenario's).
    pub focus: Option<Focus>,
    /// Settings the workload plays, by setting offset (none for a setting an adversary plays).
    settings: Vec<Option<Setting>>,
    unscheduled: Vec<NodeId>,
    requests: Vec<Request>,
    attempts: FnvMap<LookupId, Attempt>,
    commands: FnvMap<CommandId, NodeId>,
    agenda: Agenda<WorkEv>,
    pub stats: LookupStats,
}

/// Gives `setting` the heads of `answer` it does not hold yet, as a node's client does
/// ([`Setting::remember_heads`]) after checking them on its own cores. Here every setting and hub
/// is played by one process, which checks each head's signature once for all of them (as it does
/// for the hubs), then each setting's directory makes every other check of its own. A head
/// refused by either is left to the setting to judge.
fn give_checked_heads(cluster: &mut Cluster, setting: &mut Setting, answer: &LookupAnswer) {
    let mut checked = vec![];
    for head in answer.authorities.iter().map(|a| &a.head).filter(|h| !setting.knows_head(h)) {
        let Some(verified) = cluster.checked_head(head) else { continue };
        let (origin, at) = (&head.body.origin, head.body.at);
        if setting.directory().admit_verified_at(&verified, origin, Role::Authority, at).is_ok() {
            checked.push(verified);
        }
    }
    setting.remember_heads(checked);
}

impl Workload {
    /// The workload over `world`'s settings but those in `excluded`.
    pub fn new(world: &World, spec: WorkloadSpec, seed: u64, excluded: &BTreeSet<NodeId>) -> Workload {
        let trusted = world.fed.trusted();
        let settings = world
            .settings
            .clone()
            .map(|s| {
                if excluded.contains(&s) {
                    return None;
                }
                Setting::new(world.code(s).clone(), world.fed.identity(world.code(s).as_str()), trusted.clone())
            })
            .collect();
        let unscheduled = world
            .settings
            .clone()
            .filter(|s| !excluded.contains(s) && world.lookup_kind(*s) == LookupKind::Unscheduled)
            .collect();
        Workload {
            spec,
            rng: SplitMix64::new(seed ^ 0x00C0_FFEE),
            registry: vec![],
            next_stem: world::FLAGGED_STEM_BASE,
            next_ref: 1,
            running: false,
            focus: None,
            settings,
            unscheduled,
            requests: vec![],
            attempts: FnvMap::default(),
            commands: FnvMap::default(),
            agenda: Agenda::new(),
            stats: LookupStats::default(),
        }
    }

    pub fn next_at(&self) -> Option<u64> {
        self.agenda.next_at()
    }

    /// Events the workload's agenda dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.agenda.dropped()
    }

    /// Starts planning operations from `now`.
    pub fn start(&mut self, now: u64) {
        self.running = true;
        self.agenda.at(now, WorkEv::Hour);
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

    /// Records each authority's caseload (its share of `plans`) in one import.
    pub fn seed_caseloads(&mut self, cluster: &mut Cluster, plans: usize) {
        let auths: Vec<NodeId> = cluster.world.authorities.clone().collect();
        let weights: Vec<u64> = auths.iter().map(|_| 40 + self.rng.below(160)).collect();
        let total: u64 = weights.iter().sum();
        let today = Timestamp(cluster.now()).date();
        for (a, w) in auths.into_iter().zip(weights) {
            let n = (plans as u64 * w / total.max(1)).max(1);
            let code = cluster.world.code(a).to_string();
            let mut rows = Vec::with_capacity(n as usize);
            for i in 0..n {
                let start = today.plus_days(-(1 + self.rng.below(3 * 365) as i32));
                let mut plan = self.new_plan(a, &code, start);
                if let Some(due) = plan.due.as_mut() {
                    // Some unborn-child plans pass their visibility window during the run.
                    *due = today.plus_days(self.rng.below(240) as i32 - 27);
                }
                rows.push((i as usize, plan));
            }
            self.command(cluster, a, Command::ImportPlans(rows));
        }
    }

    /// Runs an operator's command on an authority, if it is up.
    pub fn command(&mut self, cluster: &mut Cluster, a: NodeId, command: Command) {
        match cluster.command(a, command) {
            Some(id) => {
                self.stats.commands += 1;
                self.commands.insert(id, a);
            }
            None => self.stats.commands_node_down += 1,
        }
    }

    /// A command's reply came back.
    pub fn on_replied(&mut self, command: CommandId, reply: &Reply) {
        if self.commands.remove(&command).is_none() {
            return;
        }
        match reply {
            Reply::Refused(_) => self.stats.commands_refused += 1,
            Reply::Imported(report) => {
                let refused = report.rows.iter().filter(|(_, o)| matches!(o, RowOutcome::Refused(_))).count();
                self.stats.commands_refused += refused as u64;
            }
            Reply::Changed(_) | Reply::Directory { .. } => {}
        }
    }

    /// Handles the workload's next event (the driver moved time on to it).
    pub fn step(&mut self, cluster: &mut Cluster, history: &mut History) {
        let Some((_, ev)) = self.agenda.pop() else { return };
        let new_work = !matches!(ev, WorkEv::Timeout { .. } | WorkEv::Hour);
        if new_work && !self.running {
            return;
        }
        match ev {
            WorkEv::Hour => self.plan_hour(cluster),
            WorkEv::Lookup { setting, nhs } => self.start_request(cluster, history, setting, nhs),
            WorkEv::Timeout { lookup } => self.on_timeout(cluster, history, lookup),
            WorkEv::PlanStart { authority } => {
                let code = cluster.world.code(authority).to_string();
                let plan = self.new_plan(authority, &code, cluster.node_now(authority).date());
                self.command(cluster, authority, Command::RecordPlan(plan));
            }
            WorkEv::PlanEnd | WorkEv::PlanWithdraw => {
                if self.registry.is_empty() {
                    return;
                }
                let p = self.registry[self.rng.below(self.registry.len() as u64) as usize].clone();
                let command = if matches!(ev, WorkEv::PlanWithdraw) {
                    Command::WithdrawPlan(p.reference)
                } else {
                    Command::EndPlan { reference: p.reference, end: cluster.node_now(p.authority).date() }
                };
                self.command(cluster, p.authority, command);
            }
        }
    }

    /// Count of events in an hour for a daily rate, with the fraction drawn at random.
    fn per_hour(&mut self, per_day: f64, weight: f64) -> u64 {
        // DIURNAL sums to 24.8: a weight of 1 gives per_day / 24.8.
        let sum: f64 = DIURNAL.iter().sum();
        let x = per_day * weight / sum;
        x.floor() as u64 + u64::from((self.rng.below(1_000_000) as f64) < x.fract() * 1e6)
    }

    /// Schedules the coming hour's operations at random moments within it.
    fn plan_hour(&mut self, cluster: &Cluster) {
        if !self.running {
            return;
        }
        let now = cluster.now();
        let hour = (now % DAY_MS / HOUR_MS) as usize;
        let spec = self.spec.clone();
        let w = &cluster.world;
        let playable: Vec<NodeId> = w
            .settings
            .clone()
            .filter(|s| self.settings.get(s - w.settings.start).is_some_and(Option::is_some))
            .collect();
        let lookups = self.per_hour(spec.lookups_per_day * spec.peak_factor, DIURNAL[hour]);
        for _ in 0..lookups {
            if playable.is_empty() {
                break;
            }
            let setting = playable[self.rng.below(playable.len() as u64) as usize];
            let nhs = self.pick_child(spec.flagged_share);
            self.within_hour(now, WorkEv::Lookup { setting, nhs });
        }
        if let Some(f) = self.focus.filter(|f| now < f.until) {
            let n = self.per_hour(f.per_hour * 24.8, 1.0);
            self.plan_focus(now, f.authority, f.children, n);
        }
        for _ in 0..self.per_hour(spec.starts_per_day, 1.0) {
            let a = w.authorities.start + self.rng.below(w.authorities.len() as u64) as usize;
            self.within_hour(now, WorkEv::PlanStart { authority: a });
        }
        for _ in 0..self.per_hour(spec.ends_per_day, 1.0) {
            self.within_hour(now, WorkEv::PlanEnd);
        }
        for _ in 0..self.per_hour(spec.withdrawals_per_day, 1.0) {
            self.within_hour(now, WorkEv::PlanWithdraw);
        }
        self.agenda.at((now / HOUR_MS + 1) * HOUR_MS, WorkEv::Hour);
    }

    fn plan_focus(&mut self, now: u64, authority: NodeId, children: usize, n: u64) {
        let theirs: Vec<NhsNumber> =
            self.registry.iter().filter(|p| p.authority == authority).map(|p| p.nhs).take(children).collect();
        if theirs.is_empty() || self.unscheduled.is_empty() {
            return;
        }
        for _ in 0..n {
            let nhs = theirs[self.rng.below(theirs.len() as u64) as usize];
            let setting = self.unscheduled[self.rng.below(self.unscheduled.len() as u64) as usize];
            self.within_hour(now, WorkEv::Lookup { setting, nhs });
        }
    }

    fn within_hour(&mut self, now: u64, w: WorkEv) {
        let at = now + self.rng.below(HOUR_MS);
        self.agenda.at(at, w);
    }

    fn pick_child(&mut self, flagged_share: f64) -> NhsNumber {
        let flagged = (self.rng.below(1_000_000) as f64) < flagged_share * 1e6;
        if flagged && !self.registry.is_empty() {
            let i = self.rng.below(self.registry.len() as u64) as usize;
            return self.registry[i].nhs;
        }
        world::unflagged_child(&mut self.rng)
    }

    // ---- Lookups ----

    fn start_request(&mut self, cluster: &mut Cluster, history: &mut History, setting: NodeId, nhs: NhsNumber) {
        let now = cluster.now();
        self.stats.requests += 1;
        match cluster.world.lookup_kind(setting) {
            LookupKind::Unscheduled => self.stats.unscheduled += 1,
            LookupKind::Scheduled => self.stats.scheduled += 1,
        }
        let strict = history.strict_at(now);
        self.requests.push(Request { setting, nhs, sent_at: now, strict, attempts: 0, outcome: Outcome::Pending });
        self.attempt(cluster, history, self.requests.len() - 1);
    }

    /// Sends request `r` to the next connected home hub of its setting.
    fn attempt(&mut self, cluster: &mut Cluster, history: &mut History, r: usize) {
        let (setting, tried, nhs) = (self.requests[r].setting, self.requests[r].attempts, self.requests[r].nhs);
        let homes = cluster.world.home_hubs[setting].clone();
        let hub = (0..homes.len())
            .map(|i| homes[(i + tried as usize) % homes.len()])
            .find(|h| cluster.connected(setting, *h));
        let Some(hub) = hub else { return self.finish(history, r, Outcome::NoHub, None) };
        let lookup_id = self.rng.lookup_id();
        let person = Person {
            id: format!("U{}", self.rng.below(PEOPLE_PER_SETTING)),
            name: "Dr A Clinician".into(),
            role: "Nurse".into(),
        };
        let offset = setting - cluster.world.settings.start;
        let Some(s) = self.settings.get_mut(offset).and_then(Option::as_mut) else { return };
        // A setting takes the hub's newer directory versions as it connects (each lookup is a
        // connection of its own), so it knows keys rotated since its copy.
        let offered = cluster.machine(hub).map_or(0, |m| m.directory().version());
        if offered > s.directory_version()
            && s.handle_directories(cluster.chain_upto(offered), cluster.node_now(setting)).is_err()
        {
            self.stats.directories_refused += 1;
        }
        let signed = match s.lookup(nhs, person, lookup_id, cluster.node_now(setting)) {
            Ok(signed) => signed,
            Err(e) => panic!("simulator built an invalid lookup: {e}"),
        };
        self.requests[r].attempts += 1;
        self.stats.attempts += 1;
        self.attempts.insert(lookup_id, Attempt { request: r, hub, signed: signed.clone(), done: false });
        cluster.send(setting, hub, &Message::Lookup(signed));
        self.agenda.at(cluster.now() + ANSWER_TIMEOUT_MS, WorkEv::Timeout { lookup: lookup_id });
    }

    fn on_timeout(&mut self, cluster: &mut Cluster, history: &mut History, lookup: LookupId) {
        let Some(a) = self.attempts.get_mut(&lookup) else { return };
        if a.done {
            return;
        }
        a.done = true;
        let r = a.request;
        self.retry_or(cluster, history, r, Outcome::NoAnswer);
    }

    fn retry_or(&mut self, cluster: &mut Cluster, history: &mut History, r: usize, outcome: Outcome) {
        if self.requests[r].attempts < ATTEMPTS_MAX && self.requests[r].outcome == Outcome::Pending {
            self.attempt(cluster, history, r);
        } else {
            self.finish(history, r, outcome, None);
        }
    }

    /// A frame for a setting the workload plays: an answer to check, a refusal, or directory
    /// versions pushed on it.
    pub fn on_frame(&mut self, cluster: &mut Cluster, history: &mut History, setting: NodeId, frame: &[u8]) {
        match wire::decode_frame(frame) {
            Ok(Message::Answer(answer)) => self.on_answer(cluster, history, answer),
            Ok(Message::Refused(refused)) => {
                let Some(id) = refused.lookup_id else { return };
                let Some(a) = self.attempts.get_mut(&id) else { return };
                // A lookup id seen twice (a duplicated frame) is not this attempt's answer.
                if a.done || refused.code == RefusalCode::Replayed {
                    return;
                }
                a.done = true;
                let r = a.request;
                if refused.code == RefusalCode::HubUnavailable {
                    return self.retry_or(cluster, history, r, Outcome::Refused);
                }
                let outcome = match refused.code {
                    RefusalCode::ClockSkew => Outcome::RefusedClock,
                    RefusalCode::RateLimited => Outcome::RefusedRate,
                    _ => Outcome::Refused,
                };
                self.finish(history, r, outcome, None);
            }
            Ok(Message::Directories(chain)) => {
                let offset = setting - cluster.world.settings.start;
                let now = cluster.node_now(setting);
                let Some(s) = self.settings.get_mut(offset).and_then(Option::as_mut) else { return };
                let before = s.directory_version();
                match s.handle_directories(chain, now) {
                    Err(_) => self.stats.directories_refused += 1,
                    Ok(v) if v != before && v > history.directory_version() => {
                        let detail =
                            format!("setting {} took directory version {v} from a hub", cluster.world.code(setting));
                        history.unexpected("bad-directory-accepted", detail);
                    }
                    Ok(_) => {}
                }
            }
            _ => {}
        }
    }

    fn on_answer(&mut self, cluster: &mut Cluster, history: &mut History, answer: LookupAnswer) {
        let Some(a) = self.attempts.get_mut(&answer.lookup_id) else { return };
        if a.done {
            return;
        }
        a.done = true;
        let (r, hub, event) = (a.request, a.hub, a.signed.body.clone());
        let setting = self.requests[r].setting;
        let setting_now = cluster.node_now(setting);
        let heads =
            answer.authorities.iter().map(|x| (x.head.body.origin.clone(), x.head.body.seq, x.head.body.at)).collect();
        let offset = setting - cluster.world.settings.start;
        let Some(s) = self.settings.get_mut(offset).and_then(Option::as_mut) else { return };
        give_checked_heads(cluster, s, &answer);
        let result = s.verify_answer(&event, answer, setting_now);
        let req = &self.requests[r];
        let record = AnswerRecord {
            setting,
            hub,
            nhs: req.nhs,
            sent_at: req.sent_at,
            strict: req.strict,
            setting_now,
            heads,
            result: &result,
        };
        let verdict = history.on_answer(&record);
        if req.strict && history.hostile_hub != Some(hub) {
            self.stats.strict_checked += 1;
        }
        match result {
            Ok(_) => self.finish(history, r, Outcome::Answered, Some(verdict)),
            Err(_) => {
                self.stats.answers_refused_forged += 1;
                if self.requests[r].attempts < ATTEMPTS_MAX {
                    self.stats.retried_after_forged += 1;
                }
                self.retry_or(cluster, history, r, Outcome::Forged);
            }
        }
    }

    fn finish(&mut self, history: &History, r: usize, outcome: Outcome, verdict: Option<AnswerVerdict>) {
        if self.requests[r].outcome != Outcome::Pending {
            return;
        }
        self.requests[r].outcome = outcome;
        let st = &mut self.stats;
        match outcome {
            Outcome::Answered => st.answered += 1,
            Outcome::NoHub => st.no_hub_reachable += 1,
            Outcome::NoAnswer => st.no_answer += 1,
            Outcome::RefusedClock => st.refused_clock_skew += 1,
            Outcome::RefusedRate => st.refused_rate_limited += 1,
            Outcome::Refused => st.refused_other += 1,
            Outcome::Forged => st.forged_unresolved += 1,
            Outcome::Pending => {}
        }
        if let Some(v) = verdict {
            if v.all_checked {
                st.answered_all_checked += 1;
            } else if v.any_unavailable {
                st.answered_some_unavailable += 1;
            } else {
                st.answered_some_stale += 1;
            }
            st.stale_shown += v.stale_shown;
            if v.flagged {
                st.flagged += 1;
                if v.complete {
                    st.flagged_complete += 1;
                } else if v.missed_unavailable {
                    st.flagged_missed_authority_unavailable += 1;
                } else if v.missed_behind {
                    st.flagged_missed_hub_not_caught_up += 1;
                }
            }
            return;
        }
        let req = &self.requests[r];
        if !history.flagged_at(req.nhs, req.sent_at) {
            return;
        }
        st.flagged += 1;
        match outcome {
            Outcome::NoHub => st.flagged_missed_no_hub_reachable += 1,
            Outcome::NoAnswer => st.flagged_missed_no_answer += 1,
            Outcome::Forged => st.flagged_missed_forged += 1,
            _ => st.flagged_missed_refused += 1,
        }
    }
}
