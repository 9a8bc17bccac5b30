//! Named scenarios, drawn from failures that other federations have suffered. Each sets its own
//! faults (no random swarm), may steer the workload, and adds its own checks to the general ones.

use crate::checker::Violations;
use crate::faults::{Episode, EpisodeKind, FaultAction, FaultPlan};
use crate::sim::{Ev, Sim};
use crate::workload::Focus;
use crate::world::{NodeId, World};
use cpis_protocol::feed::{EntryBody, FeedEntry, SignedEntry};
use cpis_protocol::records::Plan;
use cpis_protocol::store::Table;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{FeedBatch, Message};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// A named scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Hubs holding notifications for an authority restart while it is down; an authority
    /// restarts while its home hub is down.
    SenderRestartsWhileReceiverDown,
    /// A hub loses its disk and comes back empty.
    HubRecoversFromEmptyDatabase,
    /// An authority is cut off for a simulated week while its children keep being seen.
    AuthorityOfflineForAWeek,
    /// London is cut off from the rest from 10:00 to 16:00 on a busy day.
    LondonCutOffAtPeak,
    /// An authority's key signs two different entries with one sequence number.
    AuthorityEquivocates,
    /// An authority comes back after four hours away, during a burst of lookups of its
    /// children, to thousands of notifications.
    BacklogAfterLongPartition,
    /// A hub restored from an empty store answers lookups before it has caught up with its
    /// peers; it must still take back its own earlier visits (once a protocol bug the simulator
    /// found).
    FindingWipedHubLosesOwnVisits,
    /// A withdrawal made while a hub is cut off must reach it after the cut heals, although the
    /// other hubs no longer show the plan (once a protocol bug the simulator found: they pruned
    /// the withdrawal and moved the cut-off hub past it).
    FindingPrunedWithdrawalNeverArrives,
}

impl Scenario {
    /// The scenarios `--scenario all` runs.
    pub const ALL: [Scenario; 8] = [
        Scenario::SenderRestartsWhileReceiverDown,
        Scenario::HubRecoversFromEmptyDatabase,
        Scenario::AuthorityOfflineForAWeek,
        Scenario::LondonCutOffAtPeak,
        Scenario::AuthorityEquivocates,
        Scenario::BacklogAfterLongPartition,
        Scenario::FindingPrunedWithdrawalNeverArrives,
        Scenario::FindingWipedHubLosesOwnVisits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => "sender-restarts-while-receiver-down",
            Scenario::HubRecoversFromEmptyDatabase => "hub-recovers-from-empty-database",
            Scenario::AuthorityOfflineForAWeek => "authority-offline-for-a-week",
            Scenario::LondonCutOffAtPeak => "london-cut-off-six-hours-at-peak",
            Scenario::AuthorityEquivocates => "authority-equivocates",
            Scenario::BacklogAfterLongPartition => "backlog-after-long-partition",
            Scenario::FindingWipedHubLosesOwnVisits => "wiped-hub-takes-back-its-own-visits",
            Scenario::FindingPrunedWithdrawalNeverArrives => "withdrawal-reaches-a-cut-off-hub",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Hours of the faulty period.
    pub fn hours(self) -> u64 {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => 6,
            Scenario::HubRecoversFromEmptyDatabase | Scenario::FindingWipedHubLosesOwnVisits => 3,
            Scenario::AuthorityOfflineForAWeek => 7 * 24 + 2,
            Scenario::LondonCutOffAtPeak => 18,
            Scenario::AuthorityEquivocates => 2,
            Scenario::FindingPrunedWithdrawalNeverArrives => 4,
            Scenario::BacklogAfterLongPartition => 6,
        }
    }

    /// Lookups of the target authority's children per hour, on top of the usual workload, and
    /// for how long from the start. While an authority is unreachable every waiting
    /// notification costs its hubs a relay and two signature checks a minute (see
    /// docs/simulation.md), so the long scenarios keep their backlog to what they test.
    fn focus(self) -> Option<(f64, u64)> {
        match self {
            Scenario::SenderRestartsWhileReceiverDown => Some((30.0, 6 * HOUR_MS)),
            Scenario::AuthorityOfflineForAWeek => Some((0.1, 8 * 24 * HOUR_MS)),
            Scenario::BacklogAfterLongPartition => Some((600.0, 4 * HOUR_MS)),
            Scenario::FindingWipedHubLosesOwnVisits => Some((30.0, 3 * HOUR_MS)),
            _ => None,
        }
    }

    /// Lookups per hour multiplied by this (the usual workload is light at night, when the
    /// short scenarios run).
    pub fn peak_factor(self) -> f64 {
        match self {
            Scenario::LondonCutOffAtPeak => 2.0,
            Scenario::HubRecoversFromEmptyDatabase | Scenario::AuthorityEquivocates => 8.0,
            Scenario::FindingPrunedWithdrawalNeverArrives => 4.0,
            _ => 1.0,
        }
    }

    /// The authority the scenario is about: London's first.
    fn target(world: &World) -> NodeId {
        world.authorities.start
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
            Scenario::FindingWipedHubLosesOwnVisits => {
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
            Scenario::AuthorityEquivocates => vec![],
            Scenario::FindingPrunedWithdrawalNeverArrives => {
                vec![ep(30 * MINUTE_MS, 2 * HOUR_MS, EpisodeKind::RegionCut(0))]
            }
            Scenario::BacklogAfterLongPartition => vec![ep(HOUR_MS, 4 * HOUR_MS, EpisodeKind::Isolate(a))],
        };
        FaultPlan { episodes, ..FaultPlan::default() }
    }

    /// Steers the workload and schedules the scenario's own steps; `start` is when the measured
    /// period begins.
    pub fn prepare(self, sim: &mut Sim, start: u64, intensity: f64) {
        let a = Scenario::target(&sim.world);
        if let Some((per_hour, for_ms)) = self.focus() {
            sim.work.focus = Some(Focus { authority: a, per_hour: per_hour * intensity, until: start + for_ms });
        }
        if self == Scenario::AuthorityEquivocates {
            sim.schedule(start + 30 * MINUTE_MS, Ev::Fault(FaultAction::Scenario(1)));
            sim.schedule(start + 60 * MINUTE_MS, Ev::Fault(FaultAction::Scenario(2)));
        }
        if self == Scenario::FindingPrunedWithdrawalNeverArrives {
            sim.schedule(start + 45 * MINUTE_MS, Ev::Fault(FaultAction::Scenario(4)));
        }
        // Just before the authority comes back: how many notifications wait for it.
        let back = match self {
            Scenario::BacklogAfterLongPartition => Some(start + 5 * HOUR_MS - 1),
            Scenario::AuthorityOfflineForAWeek => Some(start + (7 * 24 + 1) * HOUR_MS - 1),
            _ => None,
        };
        if let Some(at) = back {
            sim.schedule(at, Ev::Fault(FaultAction::Scenario(3)));
        }
    }

    /// The scenario's own checks, after the general ones.
    pub fn check(self, sim: &Sim) -> Violations {
        let mut v = Violations::default();
        let a = Scenario::target(&sim.world);
        match self {
            Scenario::AuthorityEquivocates => {
                if sim.history.equivocations.is_empty() {
                    v.push("equivocation", "no hub raised the equivocation alarm".into());
                }
                let kept =
                    sim.world.hubs.clone().any(|h| sim.nodes[h].disk.keys().any(|(t, _)| *t == Table::Equivocations));
                if !kept {
                    v.push("equivocation", "no hub kept the proof of the equivocation".into());
                }
            }
            Scenario::BacklogAfterLongPartition if (sim.scenario_backlog as f64) < 1_000.0 * sim.work.intensity => {
                let detail =
                    format!("only {} notifications were waiting for #{a} when it came back", sim.scenario_backlog);
                v.push("scenario", detail);
            }
            Scenario::SenderRestartsWhileReceiverDown | Scenario::AuthorityOfflineForAWeek => {
                let promised = sim.history.promised.keys().filter(|(_, who)| *who == a).count();
                if (promised as f64) < 10.0 * sim.work.intensity {
                    v.push(
                        "scenario",
                        format!("only {promised} notifications for #{a}: the scenario did not exercise it"),
                    );
                }
            }
            _ => {}
        }
        v
    }
}

impl Sim {
    /// A scenario's own step.
    pub fn scenario_step(&mut self, step: u32) {
        match (self.scenario, step) {
            (Some(Scenario::AuthorityEquivocates), 1) => self.equivocate(),
            (Some(Scenario::AuthorityEquivocates), 2) => self.supersede_equivocated(),
            (Some(Scenario::FindingPrunedWithdrawalNeverArrives), 4) => self.withdraw_outside_london(),
            (_, 3) => {
                let a = self.world.authorities.start;
                self.scenario_backlog =
                    self.history.promised.iter().filter(|((_, who), p)| *who == a && p.received == 0).count();
            }
            _ => {}
        }
    }

    /// The target authority records a change to a plan (entry Z at its next sequence); at the
    /// same moment its key signs a different entry Y with the same sequence, handed straight to
    /// its second home hub.
    fn equivocate(&mut self) {
        let a = Scenario::target(&self.world);
        let Some(auth) = self.nodes[a].authority() else { return };
        let seq = auth.last_seq() + 1;
        let Some(plan) = auth.plans().find(|p| p.visible_on(Timestamp(self.now).date())).cloned() else { return };
        let mut z = plan.clone();
        z.start = z.start.plus_days(-1);
        let mut y: Plan = plan.clone();
        y.start = y.start.plus_days(-2);
        self.equivocated = Some(plan.reference.clone());
        self.command(a, |auth, now| auth.record_plan(z, now));
        let code = self.world.code(a).clone();
        let (entry, bytes) = forge_plan_entry(&self.world, a, seq, Timestamp(self.now), y);
        self.history.declare_signed(a, seq, &bytes);
        let h2 = self.world.home_hubs[a][1];
        let batch = FeedBatch {
            origin: code,
            after: seq - 1,
            upto: seq,
            entries: vec![entry],
            as_of: cpis_protocol::time::Timestamp(0),
        };
        self.deliver_now(h2, a, Message::Feed(batch));
    }

    /// An authority with no London home hub withdraws one of its visible plans while London is
    /// cut off.
    fn withdraw_outside_london(&mut self) {
        let Some(a) = self.world.authorities.clone().find(|a| !self.world.home_hubs[*a].contains(&0)) else { return };
        let today = Timestamp(self.now).date();
        let Some(reference) = self.nodes[a]
            .authority()
            .and_then(|x| x.plans().find(|p| p.visible_on(today)).map(|p| p.reference.clone()))
        else {
            return;
        };
        self.command(a, |auth, now| auth.withdraw_plan(&reference, now));
    }

    /// The authority changes the equivocated plan again: the new entry supersedes both.
    fn supersede_equivocated(&mut self) {
        let a = Scenario::target(&self.world);
        let Some(reference) = self.equivocated.clone() else { return };
        self.command(a, |auth, now| {
            let mut plan = auth
                .plan(&reference)
                .cloned()
                .ok_or(cpis_protocol::authority::CommandError::UnknownPlan(reference.clone()))?;
            plan.start = plan.start.plus_days(-3);
            auth.record_plan(plan, now)
        });
    }
}

/// An entry of `origin` at `seq` signed with the origin's own (test) identity, and its bytes.
pub fn forge_plan_entry(world: &World, origin: NodeId, seq: u64, at: Timestamp, plan: Plan) -> (SignedEntry, Vec<u8>) {
    let code = world.code(origin).clone();
    let entry =
        world.fed.identity(code.as_str()).sign(FeedEntry { origin: code, seq, at, body: EntryBody::Plan(plan) });
    let bytes = cpis_protocol::codec::encode(&entry);
    (entry, bytes)
}
