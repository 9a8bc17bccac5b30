//! Named scenarios: failures other federations have suffered, and one per attack of a hostile
//! member. Each sets its own faults (no random swarm), may steer the workload, may make a hub or
//! a setting hostile, and adds its own checks to the general ones. Its own state and steps live
//! in a [`ScenarioActor`], outside the cluster.

use crate::adversary::Attacks;
use crate::agenda::Agenda;
use crate::checker::{History, Violations};
use crate::cluster::Cluster;
use crate::faults::{Episode, EpisodeKind, FaultPlan};
use crate::sim::Sim;
use crate::workload::{Focus, Workload};
use crate::world::{NodeId, World};
use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead, SignedEntry};
use cpis_protocol::ids::PlanRef;
use cpis_protocol::machine::Command;
use cpis_protocol::records::Plan;
use cpis_protocol::wire::{FeedBatch, Message};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// A named scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    SenderRestartsWhileReceiverDown,
    HubRecoversFromEmptyDatabase,
    AuthorityOfflineForAWeek,
    LondonCutOffAtPeak,
    AuthorityEquivocates,
    BacklogAfterLongPartition,
    WithdrawalReachesACutOffHub,
    WipedHubTakesBackItsOwnVisits,
    HostileHubOmitsEntries,
    HostileHubServesStaleAnswers,
    HostileHubInventsNotifications,
    HostileHubForgesHeads,
    HostileHubReplays,
    HostileHubDirectoryBomb,
    HostileSetting,
}

impl Scenario {
    /// The scenarios `--scenario all` runs.
    pub const ALL: [Scenario; 15] = [
        Scenario::SenderRestartsWhileReceiverDown,
        Scenario::HubRecoversFromEmptyDatabase,
        Scenario::AuthorityOfflineForAWeek,
        Scenario::LondonCutOffAtPeak,
        Scenario::AuthorityEquivocates,
        Scenario::BacklogAfterLongPartition,
        Scenario::WithdrawalReachesACutOffHub,
        Scenario::WipedHubTakesBackItsOwnVisits,
        Scenario::HostileHubOmitsEntries,
        Scenario::HostileHubServesStaleAnswers,
        Scenario::HostileHubInventsNotifications,
        Scenario::HostileHubForgesHeads,
        Scenario::HostileHubReplays,
        Scenario::HostileHubDirectoryBomb,
        Scenario::HostileSetting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => "sender-restarts-while-receiver-down",
            Scenario::HubRecoversFromEmptyDatabase => "hub-recovers-from-empty-database",
            Scenario::AuthorityOfflineForAWeek => "authority-offline-for-a-week",
            Scenario::LondonCutOffAtPeak => "london-cut-off-six-hours-at-peak",
            Scenario::AuthorityEquivocates => "authority-equivocates",
            Scenario::BacklogAfterLongPartition => "backlog-after-long-partition",
            Scenario::WithdrawalReachesACutOffHub => "withdrawal-reaches-a-cut-off-hub",
            Scenario::WipedHubTakesBackItsOwnVisits => "wiped-hub-takes-back-its-own-visits",
            Scenario::HostileHubOmitsEntries => "hostile-hub-omits-entries",
            Scenario::HostileHubServesStaleAnswers => "hostile-hub-serves-stale-answers",
            Scenario::HostileHubInventsNotifications => "hostile-hub-invents-notifications",
            Scenario::HostileHubForgesHeads => "hostile-hub-forges-heads",
            Scenario::HostileHubReplays => "hostile-hub-replays",
            Scenario::HostileHubDirectoryBomb => "hostile-hub-directory-bomb",
            Scenario::HostileSetting => "hostile-setting",
        }
    }

    /// One sentence: what happens.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => {
                "Hubs holding notifications for an authority restart while it is down, and it restarts while its home hub is down."
            }
            Scenario::HubRecoversFromEmptyDatabase => {
                "A hub loses its disk during a busy period and comes back empty, then catches up from its peers."
            }
            Scenario::AuthorityOfflineForAWeek => {
                "An authority is cut off for a simulated week while its children keep being seen, then takes its backlog."
            }
            Scenario::LondonCutOffAtPeak => {
                "London is cut off from the rest of the country from 10:00 to 16:00 on a busy day."
            }
            Scenario::AuthorityEquivocates => {
                "An authority's key signs two different entries and two heads with one sequence; hubs must prove it and raise the alarm."
            }
            Scenario::BacklogAfterLongPartition => {
                "An authority comes back after four hours away, during a burst of lookups of its children, to thousands of notifications."
            }
            Scenario::WithdrawalReachesACutOffHub => {
                "A withdrawal made while a hub is cut off reaches it after the cut heals, though the other hubs no longer show the plan."
            }
            Scenario::WipedHubTakesBackItsOwnVisits => {
                "A hub restored from an empty store answers lookups before it has caught up, and still takes back its own earlier visits."
            }
            Scenario::HostileHubOmitsEntries => {
                "A hostile hub drops entries from the feed runs it relays and plans from its answers: peers and settings refuse them."
            }
            Scenario::HostileHubServesStaleAnswers => {
                "A hostile hub answers with older heads and plans it captured while plans are withdrawn: settings show them as of then, never as fresh."
            }
            Scenario::HostileHubInventsNotifications => {
                "A hostile hub signs notifications of its own: invented matches, children without plans, scheduled lookups, unsigned lookups."
            }
            Scenario::HostileHubForgesHeads => {
                "A hostile hub sends authorities' heads signed with its own key, later or in the future: hubs refuse them, settings show unavailable."
            }
            Scenario::HostileHubReplays => {
                "A hostile hub sends old heads, runs, notifications and answers again: nothing moves backwards or happens twice."
            }
            Scenario::HostileHubDirectoryBomb => {
                "A hostile hub sends unsigned directories of thousands of members, over-long chains and oversized frames to hubs and settings."
            }
            Scenario::HostileSetting => {
                "A hostile setting signs lookups for another setting, replays lookups others signed, and bursts over the rate limit."
            }
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Hours of the faulty period.
    pub fn hours(self) -> u64 {
        match self {
            Scenario::SenderRestartsWhileReceiverDown | Scenario::BacklogAfterLongPartition => 6,
            Scenario::HubRecoversFromEmptyDatabase | Scenario::WipedHubTakesBackItsOwnVisits => 3,
            Scenario::AuthorityOfflineForAWeek => 7 * 24 + 2,
            Scenario::LondonCutOffAtPeak => 18,
            Scenario::AuthorityEquivocates => 2,
            Scenario::WithdrawalReachesACutOffHub => 4,
            _ => 3,
        }
    }

    /// Lookups of the target authority's children per hour, on top of the usual workload, and
    /// for how long from the start.
    fn focus(self) -> Option<(f64, u64)> {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => Some((30.0, 6 * HOUR_MS)),
            Scenario::AuthorityOfflineForAWeek => Some((0.1, 8 * 24 * HOUR_MS)),
            Scenario::BacklogAfterLongPartition => Some((600.0, 4 * HOUR_MS)),
            Scenario::WipedHubTakesBackItsOwnVisits => Some((30.0, 3 * HOUR_MS)),
            s if s.is_hostile() => Some((60.0, 3 * HOUR_MS)),
            _ => None,
        }
    }

    /// Whether a member is hostile in this scenario.
    pub fn is_hostile(self) -> bool {
        matches!(
            self,
            Scenario::HostileHubOmitsEntries
                | Scenario::HostileHubServesStaleAnswers
                | Scenario::HostileHubInventsNotifications
                | Scenario::HostileHubForgesHeads
                | Scenario::HostileHubReplays
                | Scenario::HostileHubDirectoryBomb
                | Scenario::HostileSetting
        )
    }

    /// Lookups per hour multiplied by this (the usual workload is light at night, when the
    /// short scenarios run).
    pub fn peak_factor(self) -> f64 {
        match self {
            Scenario::LondonCutOffAtPeak => 2.0,
            Scenario::HubRecoversFromEmptyDatabase | Scenario::AuthorityEquivocates => 8.0,
            Scenario::WithdrawalReachesACutOffHub => 4.0,
            s if s.is_hostile() => 4.0,
            _ => 1.0,
        }
    }

    /// The authority the scenario is about: London's first.
    pub fn target(world: &World) -> NodeId {
        world.authorities.start
    }

    /// The hub made hostile, and how: the target authority's first home hub.
    pub fn hostile_hub(self, world: &World) -> Option<(NodeId, Attacks)> {
        let none = Attacks::default();
        let attacks = match self {
            Scenario::HostileHubOmitsEntries => Attacks { omit_entries: true, ..none },
            Scenario::HostileHubServesStaleAnswers => Attacks { stale_answers: true, ..none },
            Scenario::HostileHubInventsNotifications => Attacks { invent_notifications: true, ..none },
            Scenario::HostileHubForgesHeads => Attacks { forge_heads: true, ..none },
            Scenario::HostileHubReplays => Attacks { replays: true, ..none },
            Scenario::HostileHubDirectoryBomb => Attacks { directory_bombs: true, ..none },
            _ => return None,
        };
        Some((world.home_hubs[Scenario::target(world)][0], attacks))
    }

    /// The setting made hostile: London's first unscheduled setting.
    pub fn hostile_setting(self, world: &World) -> Option<NodeId> {
        if self != Scenario::HostileSetting {
            return None;
        }
        world
            .settings
            .clone()
            .find(|s| world.region[*s] == 0 && world.lookup_kind(*s) == cpis_protocol::records::LookupKind::Unscheduled)
    }

    /// The scenario's faults.
    pub fn faults(self, world: &World) -> FaultPlan {
        let a = Scenario::target(world);
        let (h1, h2) = (world.home_hubs[a][0], world.home_hubs[a][1]);
        let b = world.authorities.clone().find(|x| *x != a && world.home_hubs[*x].contains(&h1)).unwrap_or(a + 1);
        let ep = |at_ms, duration_ms, kind| Episode { at_ms, duration_ms, kind };
        let episodes = match self {
            Scenario::SenderRestartsWhileReceiverDown => vec![
                ep(10 * MINUTE_MS, 170 * MINUTE_MS, EpisodeKind::Crash(a)),
                ep(60 * MINUTE_MS, 5 * MINUTE_MS, EpisodeKind::Crash(h1)),
                ep(120 * MINUTE_MS, MINUTE_MS, EpisodeKind::Crash(h2)),
                ep(240 * MINUTE_MS, 60 * MINUTE_MS, EpisodeKind::Crash(h1)),
                ep(260 * MINUTE_MS, 2 * MINUTE_MS, EpisodeKind::Crash(b)),
            ],
            Scenario::HubRecoversFromEmptyDatabase => vec![ep(HOUR_MS, 5 * MINUTE_MS, EpisodeKind::Wipe(1))],
            Scenario::WipedHubTakesBackItsOwnVisits => {
                // The hub comes back empty while its links to the other hubs are still down.
                let mut v = vec![ep(HOUR_MS, 5 * MINUTE_MS, EpisodeKind::Wipe(h1))];
                for h in world.hubs.clone().filter(|h| *h != h1) {
                    v.push(ep(HOUR_MS, 20 * MINUTE_MS, EpisodeKind::Flap { a: h1, b: h, period_ms: 40 * MINUTE_MS }));
                }
                v
            }
            Scenario::AuthorityOfflineForAWeek => vec![ep(HOUR_MS, 7 * 24 * HOUR_MS, EpisodeKind::Isolate(a))],
            // The measured period starts at 01:00: London is cut off from 10:00 to 16:00.
            Scenario::LondonCutOffAtPeak => vec![ep(9 * HOUR_MS, 6 * HOUR_MS, EpisodeKind::RegionCut(0))],
            Scenario::WithdrawalReachesACutOffHub => vec![ep(30 * MINUTE_MS, 2 * HOUR_MS, EpisodeKind::RegionCut(0))],
            Scenario::BacklogAfterLongPartition => vec![ep(HOUR_MS, 4 * HOUR_MS, EpisodeKind::Isolate(a))],
            // The third hub hears the authority only through the hostile hub for two hours; then
            // the honest home hub crashes and restarts.
            Scenario::HostileHubOmitsEntries => {
                let h3 = world.hubs.clone().find(|h| *h != h1 && *h != h2).unwrap_or(h2);
                vec![
                    ep(10 * MINUTE_MS, 2 * HOUR_MS, EpisodeKind::Flap { a: h2, b: h3, period_ms: 3 * HOUR_MS }),
                    ep(150 * MINUTE_MS, 10 * MINUTE_MS, EpisodeKind::Crash(h2)),
                ]
            }
            _ => vec![],
        };
        FaultPlan { episodes, ..FaultPlan::default() }
    }
}

/// A scenario's own step.
#[derive(Clone, Copy, Debug)]
enum Step {
    Equivocate,
    Supersede,
    CountBacklog,
    WithdrawOutsideLondon,
    /// The target authority withdraws or ends a plan of one of its children.
    ChangeTargetPlan,
}

/// A scenario's own state and steps.
pub struct ScenarioActor {
    pub scenario: Scenario,
    agenda: Agenda<Step>,
    /// The plan an equivocating authority signed two ways.
    equivocated: Option<PlanRef>,
    /// Notifications waiting for the target authority when it came back.
    pub backlog: usize,
    /// Plans the target authority changed during the scenario.
    pub changes: u64,
}

impl ScenarioActor {
    pub fn new(scenario: Scenario) -> ScenarioActor {
        ScenarioActor { scenario, agenda: Agenda::new(), equivocated: None, backlog: 0, changes: 0 }
    }

    pub fn next_at(&self) -> Option<u64> {
        self.agenda.next_at()
    }

    /// Steps the actor's agenda dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.agenda.dropped()
    }

    /// Steers the workload and schedules the scenario's own steps; `start` is when the measured
    /// period begins.
    pub fn prepare(&mut self, world: &World, work: &mut Workload, start: u64, intensity: f64) {
        let s = self.scenario;
        let a = Scenario::target(world);
        if let Some((per_hour, for_ms)) = s.focus() {
            work.focus = Some(Focus { authority: a, per_hour: per_hour * intensity, until: start + for_ms });
        }
        match s {
            Scenario::AuthorityEquivocates => {
                self.agenda.at(start + 30 * MINUTE_MS, Step::Equivocate);
                self.agenda.at(start + 60 * MINUTE_MS, Step::Supersede);
            }
            Scenario::WithdrawalReachesACutOffHub => {
                self.agenda.at(start + 45 * MINUTE_MS, Step::WithdrawOutsideLondon)
            }
            Scenario::HostileHubServesStaleAnswers | Scenario::HostileHubOmitsEntries => {
                for k in 1..(s.hours() * 3) {
                    self.agenda.at(start + k * 20 * MINUTE_MS, Step::ChangeTargetPlan);
                }
            }
            _ => {}
        }
        // Just before the authority comes back: how many notifications wait for it.
        let back = match s {
            Scenario::BacklogAfterLongPartition => Some(start + 5 * HOUR_MS - 1),
            Scenario::AuthorityOfflineForAWeek => Some(start + (7 * 24 + 1) * HOUR_MS - 1),
            _ => None,
        };
        if let Some(at) = back {
            self.agenda.at(at, Step::CountBacklog);
        }
    }

    /// Handles the scenario's next step (the driver moved time on to it).
    pub fn step(&mut self, cluster: &mut Cluster, history: &mut History, work: &mut Workload) {
        let Some((_, step)) = self.agenda.pop() else { return };
        let a = Scenario::target(&cluster.world);
        match step {
            Step::Equivocate => self.equivocate(cluster, history, work),
            Step::Supersede => {
                let Some(reference) = self.equivocated.clone() else { return };
                let Some(mut plan) = cluster.authority(a).and_then(|x| x.plan(&reference)).cloned() else { return };
                plan.start = plan.start.plus_days(-3);
                work.command(cluster, a, Command::RecordPlan(plan));
            }
            Step::CountBacklog => {
                self.backlog = history.promised.iter().filter(|((_, who), p)| *who == a && p.received == 0).count();
            }
            Step::WithdrawOutsideLondon => {
                let w = &cluster.world;
                let Some(b) = w.authorities.clone().find(|x| !w.home_hubs[*x].contains(&0)) else { return };
                let today = cluster.node_now(b).date();
                let Some(reference) = cluster
                    .authority(b)
                    .and_then(|x| x.plans().find(|p| p.visible_on(today)).map(|p| p.reference.clone()))
                else {
                    return;
                };
                work.command(cluster, b, Command::WithdrawPlan(reference));
            }
            Step::ChangeTargetPlan => {
                let today = cluster.node_now(a).date();
                let Some(auth) = cluster.authority(a) else { return };
                let visible: Vec<PlanRef> =
                    auth.plans().filter(|p| p.visible_on(today)).map(|p| p.reference.clone()).collect();
                if visible.is_empty() {
                    return;
                }
                let i = (self.changes as usize * 7919) % visible.len();
                let reference = visible[i].clone();
                let start = auth.plan(&reference).map_or(today, |p| p.start);
                let command = if self.changes.is_multiple_of(2) {
                    Command::WithdrawPlan(reference)
                } else {
                    // Ended long ago (if it started long ago): it leaves the feed at once.
                    Command::EndPlan { reference, end: start.max(today.plus_days(-400)) }
                };
                self.changes += 1;
                work.command(cluster, a, command);
            }
        }
    }

    /// The target authority records a change to a plan (entry Z at its next sequence); at the
    /// same moment its key signs a different entry Y with the same sequence, and a head over its
    /// second home hub's copy with Y in it, handed straight to that hub.
    fn equivocate(&mut self, cluster: &mut Cluster, history: &mut History, work: &mut Workload) {
        let a = Scenario::target(&cluster.world);
        let h2 = cluster.world.home_hubs[a][1];
        let now = cluster.node_now(a);
        let Some(auth) = cluster.authority(a) else { return };
        let Some(plan) = auth.plans().find(|p| p.visible_on(now.date())).cloned() else { return };
        let code = cluster.world.code(a).clone();
        let Some(mut copy) = cluster.hub(h2).and_then(|h| h.replicas().get(&code)).map(|r| (r.feed().clone(), r.seq()))
        else {
            return;
        };
        let mut z = plan.clone();
        z.start = z.start.plus_days(-1);
        let mut y: Plan = plan.clone();
        y.start = y.start.plus_days(-2);
        self.equivocated = Some(plan.reference.clone());
        work.command(cluster, a, Command::RecordPlan(z));
        let Some(seq) = cluster.authority(a).map(|x| x.last_seq()) else { return };
        let identity = cluster.world.fed.identity(code.as_str());
        let entry: SignedEntry =
            identity.sign(FeedEntry { origin: code.clone(), seq, at: now, body: EntryBody::Plan(y) });
        history.declare_equivocation(a, &entry);
        copy.0.apply(entry.clone());
        let (plans_root, children, contacts) = copy.0.commitment();
        let head = identity.sign(FeedHead { origin: code.clone(), seq, at: now, plans_root, children, contacts });
        let batch =
            FeedBatch { origin: code, after: copy.1, upto: seq, entries: vec![entry], head: Some(head), more: false };
        cluster.inject(h2, a, Message::Feed(batch));
    }

    /// The scenario's own checks, after the general ones.
    pub fn check(&self, sim: &Sim) -> Violations {
        let mut v = Violations::default();
        let h = &sim.history;
        let c = &sim.cluster;
        let a = Scenario::target(&c.world);
        let intensity = sim.intensity;
        let adv = sim.hostile_hub.as_ref().map(|x| x.stats.clone()).unwrap_or_default();
        let mut need = |ok: bool, what: &str| {
            if !ok {
                v.push("scenario", what.to_string());
            }
        };
        match self.scenario {
            Scenario::AuthorityEquivocates => {
                need(!h.equivocations.is_empty(), "no hub raised the equivocation alarm");
                need(h.equivocation_proofs > 0, "no hub kept the proof of the equivocation");
            }
            Scenario::BacklogAfterLongPartition => need(
                self.backlog as f64 >= 1_000.0 * intensity,
                "fewer than 1,000 notifications waited for the authority",
            ),
            Scenario::SenderRestartsWhileReceiverDown | Scenario::AuthorityOfflineForAWeek => {
                let promised = h.promised.keys().filter(|(_, who)| *who == a).count();
                need(promised as f64 >= 10.0 * intensity, "too few notifications for the authority to exercise it");
            }
            Scenario::HostileHubOmitsEntries => {
                need(adv.entries_omitted > 0, "the hostile hub omitted no entry");
                need(h.refusals_of("head-mismatch") > 0, "no hub refused a run that omitted an entry");
                let refused = sim.work.stats.answers_refused_forged;
                need(
                    adv.plans_omitted_from_answers == 0 || refused > 0,
                    "no setting refused an answer that omitted a plan",
                );
            }
            Scenario::HostileHubServesStaleAnswers => {
                need(adv.parts_replaced_with_older + adv.answers_replayed > 0, "the hostile hub served nothing stale");
                need(self.changes > 0, "the authority changed no plan");
            }
            Scenario::HostileHubInventsNotifications => {
                need(adv.notifications_invented > 0, "the hostile hub invented no notification");
                let refused = ["no-matching-plan", "matches-differ", "scheduled", "signature"]
                    .iter()
                    .map(|r| h.refusals_of(r))
                    .sum::<u64>();
                need(refused > 0, "no authority refused an invented notification");
            }
            Scenario::HostileHubForgesHeads => {
                need(adv.heads_forged > 0, "the hostile hub forged no head");
                need(h.refusals_of("head") > 0, "no hub refused a forged head");
            }
            Scenario::HostileHubReplays => need(adv.frames_replayed + adv.answers_replayed > 0, "nothing was replayed"),
            Scenario::HostileHubDirectoryBomb => {
                need(adv.directory_bombs > 0, "no directory bomb was sent");
                let refused =
                    h.refusals.iter().filter(|(k, _)| k.starts_with("directory/")).map(|(_, n)| n).sum::<u64>();
                need(refused > 0, "no hub refused an unsigned directory");
                need(c.counters.frames_refused_undecodable > 0, "no oversized frame was refused");
            }
            Scenario::HostileSetting => {
                let s = sim.hostile_setting.as_ref().map(|x| x.stats.clone()).unwrap_or_default();
                need(s.refused_not_from_setting > 0, "no lookup signed for another setting was refused");
                need(s.refused_rate_limited > 0, "no lookup over the rate limit was refused");
                need(h.rate_limited > 0, "no hub raised the rate-limit alarm");
            }
            _ => {}
        }
        v
    }
}
