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
use cpis_protocol::directory::{Directory, KeyStatus, MemberKey};
use cpis_protocol::driver::MemDisk;
use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead, SignedEntry};
use cpis_protocol::harness::test_identity;
use cpis_protocol::ids::PlanRef;
use cpis_protocol::machine::Command;
use cpis_protocol::records::Plan;
use cpis_protocol::sign::{Identity, PublicKey};
use cpis_protocol::time::Timestamp;
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
    KeyRotationStorm,
    AuthorityKeyRevokedWhileOffline,
    HubKeyRevokedWithFullOutbox,
    NodesDownDuringTheirRotation,
    AuthorityRestoredFromAWeekOldCopy,
}

impl Scenario {
    /// The scenarios `--scenario all` runs.
    pub const ALL: [Scenario; 20] = [
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
        Scenario::KeyRotationStorm,
        Scenario::AuthorityKeyRevokedWhileOffline,
        Scenario::HubKeyRevokedWithFullOutbox,
        Scenario::NodesDownDuringTheirRotation,
        Scenario::AuthorityRestoredFromAWeekOldCopy,
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
            Scenario::KeyRotationStorm => "key-rotation-storm",
            Scenario::AuthorityKeyRevokedWhileOffline => "authority-key-revoked-while-offline",
            Scenario::HubKeyRevokedWithFullOutbox => "hub-key-revoked-with-full-outbox",
            Scenario::NodesDownDuringTheirRotation => "nodes-down-during-their-rotation",
            Scenario::AuthorityRestoredFromAWeekOldCopy => "authority-restored-from-a-week-old-copy",
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
            Scenario::KeyRotationStorm => {
                "Every hub and authority rotates its key twice in five hours, restarting on the new key, while lookups go on."
            }
            Scenario::AuthorityKeyRevokedWhileOffline => {
                "An authority's only key is revoked, with its replacement, while the authority is down: its plans are unavailable, never absent, until it republishes."
            }
            Scenario::HubKeyRevokedWithFullOutbox => {
                "A hub's key is revoked while notifications for a cut-off authority wait in its outbox; it restarts on its new key and re-signs them."
            }
            Scenario::NodesDownDuringTheirRotation => {
                "An authority and a hub are down while their keys are rotated and the old ones retired; they start on the new keys with their old directories."
            }
            Scenario::AuthorityRestoredFromAWeekOldCopy => {
                "An authority's store is replaced by a copy a week old: it takes back its later plans, withdrawals and notifications from its hubs."
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
            Scenario::KeyRotationStorm => 5,
            Scenario::AuthorityKeyRevokedWhileOffline | Scenario::HubKeyRevokedWithFullOutbox => 4,
            Scenario::AuthorityRestoredFromAWeekOldCopy => 7 * 24 + 3,
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
            Scenario::AuthorityKeyRevokedWhileOffline => Some((60.0, 3 * HOUR_MS)),
            Scenario::HubKeyRevokedWithFullOutbox => Some((120.0, 3 * HOUR_MS)),
            Scenario::NodesDownDuringTheirRotation => Some((30.0, 3 * HOUR_MS)),
            Scenario::AuthorityRestoredFromAWeekOldCopy => Some((1.0, (7 * 24 + 3) * HOUR_MS)),
            s if s.is_hostile() => Some((60.0, 3 * HOUR_MS)),
            _ => None,
        }
    }

    /// How many of the target authority's children the focus lookups are of. Stale answers need
    /// a child looked up again through the hostile hub after its authority signed a newer head: a
    /// few children, looked up often, make that certain (with 500, one seed in twenty saw no child
    /// twice there).
    fn focus_children(self) -> usize {
        match self {
            Scenario::HostileHubServesStaleAnswers => 20,
            _ => 500,
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
            Scenario::WithdrawalReachesACutOffHub | Scenario::KeyRotationStorm => 4.0,
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
            Scenario::AuthorityKeyRevokedWhileOffline => {
                vec![ep(10 * MINUTE_MS, 110 * MINUTE_MS, EpisodeKind::Crash(a))]
            }
            Scenario::HubKeyRevokedWithFullOutbox => vec![ep(10 * MINUTE_MS, 110 * MINUTE_MS, EpisodeKind::Isolate(a))],
            Scenario::NodesDownDuringTheirRotation => vec![
                ep(10 * MINUTE_MS, 60 * MINUTE_MS, EpisodeKind::Crash(a)),
                ep(15 * MINUTE_MS, 60 * MINUTE_MS, EpisodeKind::Crash(h2)),
            ],
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
    /// Every hub and authority gets a new key in the directory, then restarts on it.
    RotateEveryKey,
    /// Member `n` restarts on its newest key.
    RestartOnNewKey(NodeId),
    /// Every hub's and authority's keys but the one it runs on are retired.
    RetireOldKeys,
    /// Member `n`'s keys are revoked and a new one added, in one version.
    RevokeAndReplace(NodeId),
    /// The target authority and its second home hub (both down) get new keys and their old
    /// ones are retired.
    RotateWhileDown,
    TakeCopy,
    /// The target authority records a plan of a new child, which only its hubs hold once its
    /// store is replaced by the copy.
    RecordPlanAfterCopy,
    RestoreCopy,
    /// The restored authority ends a plan it recorded after the copy was taken.
    EndPlanAddedAfterCopy,
}

/// Member `n`'s key of rotation `round` (round 0 is the key it starts with).
pub fn key_of(world: &World, n: NodeId, round: u32) -> Identity {
    let code = world.code(n).as_str();
    if round == 0 { world.fed.identity(code) } else { test_identity(&world.fed.name, &format!("{code}/key{round}")) }
}

/// The members a rotation storm rotates: every hub and authority.
fn rotating(world: &World) -> Vec<NodeId> {
    world.hubs.clone().chain(world.authorities.clone()).collect()
}

/// Adds `key` to member `n`'s keys, valid from an hour ago (clocks differ) until its other
/// keys' end.
fn add_key(d: &mut Directory, world: &World, n: NodeId, key: PublicKey, now: Timestamp) {
    let Some(m) = d.members.iter_mut().find(|m| m.code == *world.code(n)) else { return };
    let valid_until = m.keys.iter().map(|k| k.valid_until).max().unwrap_or(now);
    let valid_from = now.minus_ms(HOUR_MS);
    m.keys.push(MemberKey { public: key, valid_from, valid_until, status: KeyStatus::Active });
}

/// Sets the status of every active key of member `n` but `keep`.
fn set_others(d: &mut Directory, world: &World, n: NodeId, keep: Option<&Identity>, status: KeyStatus) {
    let Some(m) = d.members.iter_mut().find(|m| m.code == *world.code(n)) else { return };
    for k in m.keys.iter_mut().filter(|k| k.status == KeyStatus::Active) {
        if keep.is_none_or(|keep| k.public != keep.public()) {
            k.status = status;
        }
    }
}

/// An administrator publishes the next directory version, made by `change`, at a hub that is up
/// (not `avoid`); the checkers learn it.
fn publish(
    cluster: &mut Cluster,
    history: &mut History,
    avoid: Option<NodeId>,
    change: impl FnOnce(&mut Directory, &World),
) -> bool {
    let world = &cluster.world;
    let next = world.fed.next_directory(cluster.latest_directory().directory(), |d| change(d, world));
    let Some(at) = world.hubs.clone().find(|h| Some(*h) != avoid && !cluster.is_down(*h)) else {
        history.unexpected("scenario", "no hub was up to publish a directory at".into());
        return false;
    };
    if let Err(e) = cluster.publish(at, next) {
        history.unexpected("scenario", format!("a hub refused the administrator's directory: {e}"));
        return false;
    }
    history.on_directory(cluster.latest_directory().clone());
    true
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
    /// Key rotations done so far (each member's newest key is [`key_of`] this round).
    round: u32,
    /// The copy of the target authority's store, and when it was taken (true time).
    copy: Option<(u64, MemDisk)>,
    restored: bool,
    /// Notifications the restored authority had stored after the copy (they must come again).
    pub redelivery_due: usize,
    /// The plan the restored authority ended, recorded after the copy.
    ended_after_restore: Option<PlanRef>,
    /// Notifications waiting in the hub's outbox when its key was revoked.
    pub outbox_at_revocation: usize,
}

impl ScenarioActor {
    pub fn new(scenario: Scenario) -> ScenarioActor {
        ScenarioActor {
            scenario,
            agenda: Agenda::new(),
            equivocated: None,
            backlog: 0,
            changes: 0,
            round: 0,
            copy: None,
            restored: false,
            redelivery_due: 0,
            ended_after_restore: None,
            outbox_at_revocation: 0,
        }
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
            let children = s.focus_children();
            work.focus = Some(Focus { authority: a, per_hour: per_hour * intensity, until: start + for_ms, children });
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
                // For omission, a change every 10 minutes: a dozen runs reach the third hub only
                // through the hostile hub (which relays only what the authority sent it).
                let every = if s == Scenario::HostileHubOmitsEntries { 10 } else { 20 };
                for k in 1..(s.hours() * 60 / every) {
                    self.agenda.at(start + k * every * MINUTE_MS, Step::ChangeTargetPlan);
                }
            }
            Scenario::KeyRotationStorm => {
                for round_start in [20 * MINUTE_MS, 130 * MINUTE_MS] {
                    self.agenda.at(start + round_start, Step::RotateEveryKey);
                    self.agenda.at(start + round_start + 80 * MINUTE_MS, Step::RetireOldKeys);
                }
            }
            Scenario::AuthorityKeyRevokedWhileOffline => {
                self.agenda.at(start + 30 * MINUTE_MS, Step::RevokeAndReplace(a))
            }
            Scenario::HubKeyRevokedWithFullOutbox => {
                self.agenda.at(start + 90 * MINUTE_MS, Step::RevokeAndReplace(world.home_hubs[a][0]))
            }
            Scenario::NodesDownDuringTheirRotation => self.agenda.at(start + 30 * MINUTE_MS, Step::RotateWhileDown),
            Scenario::AuthorityRestoredFromAWeekOldCopy => {
                self.agenda.at(start + HOUR_MS, Step::TakeCopy);
                for k in 0..14 {
                    self.agenda.at(start + 2 * HOUR_MS + k * 12 * HOUR_MS, Step::ChangeTargetPlan);
                }
                // After the last change: the workload may record none for this authority in the
                // week, and its random ends and withdrawals may take the ones it does record.
                self.agenda.at(start + 160 * HOUR_MS, Step::RecordPlanAfterCopy);
                self.agenda.at(start + (7 * 24 + 1) * HOUR_MS, Step::RestoreCopy);
                self.agenda.at(start + (7 * 24 + 2) * HOUR_MS, Step::EndPlanAddedAfterCopy);
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
            Step::RotateEveryKey => self.rotate_every_key(cluster, history),
            Step::RestartOnNewKey(n) => {
                let key = key_of(&cluster.world, n, self.round);
                cluster.crash(n);
                history.on_restarted_on_new_key(n);
                cluster.set_identity(n, key);
                cluster.restart(n);
            }
            Step::RetireOldKeys => {
                let now = Timestamp(cluster.now());
                let members = rotating(&cluster.world);
                let keys: Vec<(NodeId, Identity)> =
                    members.iter().map(|n| (*n, Identity::from_seed(cluster.identity(*n).seed()))).collect();
                publish(cluster, history, None, |d, w| {
                    for (n, key) in &keys {
                        set_others(d, w, *n, Some(key), KeyStatus::Retired { at: now });
                    }
                });
            }
            Step::RevokeAndReplace(n) => {
                self.round += 1;
                let key = key_of(&cluster.world, n, self.round);
                let now = Timestamp(cluster.now());
                self.outbox_at_revocation = cluster.hub(n).map_or(0, |h| h.outbox_depths().values().sum());
                history.on_key_revoked(n);
                let new = key.public();
                if !publish(cluster, history, Some(n), |d, w| {
                    set_others(d, w, n, None, KeyStatus::Revoked { at: now });
                    add_key(d, w, n, new, now);
                }) {
                    return;
                }
                if cluster.is_down(n) {
                    // Installed while it is down: it starts on it.
                    cluster.set_identity(n, key);
                } else {
                    self.agenda.at(cluster.now() + 5 * MINUTE_MS, Step::RestartOnNewKey(n));
                }
            }
            Step::RotateWhileDown => {
                self.round += 1;
                let h2 = cluster.world.home_hubs[a][1];
                let now = Timestamp(cluster.now());
                let keys: Vec<(NodeId, Identity)> =
                    [a, h2].into_iter().map(|n| (n, key_of(&cluster.world, n, self.round))).collect();
                let published = publish(cluster, history, Some(h2), |d, w| {
                    for (n, key) in &keys {
                        set_others(d, w, *n, None, KeyStatus::Retired { at: now });
                        add_key(d, w, *n, key.public(), now);
                    }
                });
                if published {
                    for (n, key) in keys {
                        cluster.set_identity(n, key);
                    }
                }
            }
            Step::TakeCopy => self.copy = Some((cluster.now(), cluster.disk(a).clone())),
            Step::RestoreCopy => {
                let Some((copied_at, disk)) = self.copy.clone() else { return };
                cluster.crash(a);
                *cluster.disk_mut(a) = disk;
                cluster.restart(a);
                self.redelivery_due = history.on_restored_from_copy(a, copied_at);
                self.restored = true;
            }
            Step::RecordPlanAfterCopy => {
                let code = cluster.world.code(a).to_string();
                let plan = work.new_plan(a, &code, cluster.node_now(a).date());
                // Out of reach of the workload's random ends and withdrawals: it is for this step.
                work.registry.retain(|p| p.reference != plan.reference);
                work.command(cluster, a, Command::RecordPlan(plan));
            }
            Step::EndPlanAddedAfterCopy => {
                let Some((copied_at, _)) = self.copy else { return };
                let today = cluster.node_now(a).date();
                let later = history.plans_of(a).into_iter().find_map(|(r, (first, plan))| {
                    (first > copied_at && plan.is_some_and(|p| p.end.is_none() && p.visible_on(today))).then_some(r)
                });
                let Some(reference) = later else { return };
                self.ended_after_restore = Some(reference.clone());
                work.command(cluster, a, Command::EndPlan { reference, end: today });
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

    /// A new key for every hub and authority; each restarts on it in turn over the next hour.
    fn rotate_every_key(&mut self, cluster: &mut Cluster, history: &mut History) {
        self.round += 1;
        let members = rotating(&cluster.world);
        let now = Timestamp(cluster.now());
        let keys: Vec<(NodeId, Identity)> =
            members.iter().map(|n| (*n, key_of(&cluster.world, *n, self.round))).collect();
        if !publish(cluster, history, None, |d, w| {
            for (n, key) in &keys {
                add_key(d, w, *n, key.public(), now);
            }
        }) {
            return;
        }
        let gap = HOUR_MS / members.len().max(1) as u64;
        for (i, n) in members.into_iter().enumerate() {
            self.agenda.at(cluster.now() + 5 * MINUTE_MS + i as u64 * gap, Step::RestartOnNewKey(n));
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
                need(
                    c.counters.tampered_runs_applicable == 0 || h.refusals_of("head-mismatch") > 0,
                    "no hub refused a run that omitted an entry it lacked",
                );
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
            Scenario::KeyRotationStorm => {
                need(self.round == 2, "the keys were not rotated twice");
                for n in rotating(&c.world) {
                    self.check_runs_on(sim, n, &mut need);
                }
            }
            Scenario::AuthorityKeyRevokedWhileOffline => {
                self.check_runs_on(sim, a, &mut need);
                need(sim.work.stats.answered_some_unavailable > 0, "no answer showed the authority unavailable");
            }
            Scenario::HubKeyRevokedWithFullOutbox => {
                self.check_runs_on(sim, c.world.home_hubs[a][0], &mut need);
                need(self.outbox_at_revocation > 0, "no notification waited in the hub's outbox at the revocation");
            }
            Scenario::NodesDownDuringTheirRotation => {
                self.check_runs_on(sim, a, &mut need);
                self.check_runs_on(sim, c.world.home_hubs[a][1], &mut need);
            }
            Scenario::AuthorityRestoredFromAWeekOldCopy => {
                need(self.restored, "the authority was not restored from its copy");
                need(self.redelivery_due > 0, "the authority had stored no notification after the copy");
                let copied_at = self.copy.as_ref().map_or(0, |x| x.0);
                let truth = h.plans_of(a);
                need(truth.values().any(|(first, _)| *first > copied_at), "no plan was recorded after the copy");
                need(
                    self.ended_after_restore.as_ref().is_some_and(|r| {
                        truth.get(r).is_some_and(|(_, p)| p.as_ref().is_some_and(|p| p.end.is_some()))
                    }),
                    "the restored authority did not end a plan recorded after the copy",
                );
                let Some(auth) = c.authority(a) else { return v };
                let today = c.node_now(a).date();
                for (reference, (_, published)) in &truth {
                    let held = auth.plan(reference);
                    let ok = match published {
                        Some(p) => held == Some(p),
                        None => held.is_none_or(|p| !p.visible_on(today)),
                    };
                    if !ok {
                        let detail = format!(
                            "the restored authority holds plan {reference} as {} though it last published it as {}",
                            held.map_or("absent".into(), |p| format!("{p:?}")),
                            published.as_ref().map_or("removed".into(), |p| format!("{p:?}")),
                        );
                        v.push("scenario", detail);
                    }
                }
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

    /// Member `n` runs on its newest key, holds the newest directory and (an authority) heads
    /// its feed with that key.
    fn check_runs_on(&self, sim: &Sim, n: NodeId, need: &mut impl FnMut(bool, &str)) {
        let c = &sim.cluster;
        let key = c.identity(n).key_id();
        let newest = c.latest_directory().member(c.world.code(n)).and_then(|m| m.keys.last()).map(|k| k.id());
        need(newest == Some(key), "a member does not run on its newest key");
        let Some(m) = c.machine(n) else { return need(false, "a rotated member is not running") };
        need(m.directory().version() == c.latest_directory().version(), "a rotated member lacks the newest directory");
        if let Some(auth) = m.as_authority() {
            need(auth.head().is_some_and(|h| h.key_id == key), "an authority's head is not signed by its new key");
        }
    }
}
