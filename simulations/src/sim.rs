//! The simulation: the cluster core, the actors that drive it, and the checkers that watch it,
//! wired together by one loop in virtual time.
//!
//! Each actor keeps its own agenda; the loop takes whichever of the core and the actors has the
//! earliest thing to do (ties in a fixed order: core, faults, scenario, hostile hub, hostile
//! setting, workload), moves time on to it and lets it act. After every step it hands what the
//! cluster reported to whoever it concerns: durable writes and events to the checkers, replies to
//! the workload, frames for care settings to the actor that plays the setting, and the hostile
//! hub's messages to the adversary.

use crate::adversary::{HostileHub, HostileSetting};
use crate::checker::History;
use crate::cluster::{Cluster, Report};
use crate::faults::Faults;
use crate::scenarios::ScenarioActor;
use crate::workload::Workload;
use cpis_protocol::machine::Event;

/// Most steps one call of [`Sim::run_until`] takes (a run that needs more is broken).
pub const STEPS_MAX: u64 = 1 << 36;
/// Most reports handled after one step.
pub const REPORTS_PER_STEP_MAX: usize = 1 << 24;

/// Everything of one run.
pub struct Sim {
    pub cluster: Cluster,
    pub history: History,
    pub work: Workload,
    pub faults: Faults,
    pub scenario: Option<ScenarioActor>,
    pub hostile_hub: Option<HostileHub>,
    pub hostile_setting: Option<HostileSetting>,
    /// Scales lookup rates (tests run lighter than the real thing).
    pub intensity: f64,
}

impl Sim {
    /// Runs everything due up to true time `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: u64) {
        for _ in 0..STEPS_MAX {
            self.drain_reports();
            let candidates = [
                self.cluster.next_at(),
                self.faults.next_at(),
                self.scenario.as_ref().and_then(ScenarioActor::next_at),
                self.hostile_hub.as_ref().and_then(HostileHub::next_at),
                self.hostile_setting.as_ref().and_then(HostileSetting::next_at),
                self.work.next_at(),
            ];
            let Some((at, who)) = candidates.iter().enumerate().filter_map(|(i, t)| t.map(|t| (t, i))).min() else {
                break;
            };
            if at > until {
                break;
            }
            self.cluster.advance_to(at);
            match who {
                0 => self.cluster.step(),
                1 => self.faults.step(&mut self.cluster, &mut self.history),
                2 => {
                    if let Some(s) = self.scenario.as_mut() {
                        s.step(&mut self.cluster, &mut self.history, &mut self.work);
                    }
                }
                3 => {
                    if let Some(h) = self.hostile_hub.as_mut() {
                        h.step(&mut self.cluster);
                    }
                }
                4 => {
                    if let Some(h) = self.hostile_setting.as_mut() {
                        h.step(&mut self.cluster);
                    }
                }
                _ => self.work.step(&mut self.cluster, &mut self.history),
            }
        }
        self.drain_reports();
        self.cluster.advance_to(until);
    }

    /// Whether the core's queue or an actor's agenda dropped anything.
    pub fn queues_overflowed(&self) -> bool {
        let dropped = self.cluster.dropped()
            + self.faults.dropped()
            + self.work.dropped()
            + self.scenario.as_ref().map_or(0, ScenarioActor::dropped)
            + self.hostile_hub.as_ref().map_or(0, HostileHub::dropped)
            + self.hostile_setting.as_ref().map_or(0, HostileSetting::dropped);
        dropped > 0
    }

    /// Hands every report of the cluster to whoever it concerns.
    fn drain_reports(&mut self) {
        for _ in 0..REPORTS_PER_STEP_MAX {
            let Some(r) = self.cluster.pop_report() else { return };
            let now = self.cluster.now();
            match r {
                Report::Durable { node, batches } => self.history.on_durable(node, &batches, now),
                Report::Event { node, event } => {
                    self.history.on_event(node, &event, now);
                    if let Event::Replied { command, reply } = &event {
                        self.work.on_replied(*command, reply);
                    }
                    if let Some(h) = self.hostile_hub.as_mut().filter(|h| h.hub == node) {
                        h.on_own_event(&event);
                    }
                }
                Report::ToSetting { setting, frame, .. } => match self.hostile_setting.as_mut() {
                    Some(hs) if hs.setting == setting => hs.on_frame(&self.cluster, &mut self.history, &frame),
                    _ => self.work.on_frame(&mut self.cluster, &mut self.history, setting, &frame),
                },
                Report::Intercepted { from, transmit } => match self.hostile_hub.as_mut() {
                    Some(h) => h.on_transmit(&mut self.cluster, *transmit),
                    None => {
                        if let Some(to) = self.cluster.world.id(&transmit.to) {
                            self.cluster.send(from, to, &transmit.message);
                        }
                    }
                },
                Report::RestoreFailed { node, error } => {
                    let detail =
                        format!("{} could not restore from its own store: {error}", self.cluster.world.code(node));
                    self.history.unexpected("restore", detail);
                }
            }
        }
        self.history.unexpected("reports", "more reports after one step than the simulator handles".into());
    }
}
