//! What a run reports, and the summary of many runs.

use crate::adversary::{AdversaryStats, HostileSettingStats};
use crate::badinput::BadInputStats;
use crate::checker::Violations;
use crate::human;
use crate::timeline::Timeline;
use crate::workload::LookupStats;
use serde::Serialize;
use std::collections::BTreeMap;

/// Frame-level counts of the simulated network.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub frames_delivered: u64,
    pub frames_lost: u64,
    pub frames_duplicated: u64,
    pub frames_lost_with_connection: u64,
    pub frames_not_connected: u64,
    pub frames_without_link: u64,
    pub frames_to_unknown: u64,
    /// Frames the receiving driver could not decode (it closed the connection).
    pub frames_refused_undecodable: u64,
    pub reports_dropped: u64,
    /// Runs the hostile hub cut an entry from that arrived at a hub able to apply them (not
    /// holding the run already, not missing what comes before it): each must be refused.
    pub tampered_runs_applicable: u64,
    /// Directories a node's driver took from a hub whose key it did not know yet.
    pub directories_learned: u64,
    /// Messages sent, by kind.
    pub by_kind: BTreeMap<&'static str, KindCount>,
    /// Messages sent from a hub to a hub, by kind (also counted in `by_kind`).
    pub between_hubs: BTreeMap<&'static str, KindCount>,
}

/// Messages and bytes of one kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KindCount {
    pub messages: u64,
    pub bytes: u64,
}

/// A distribution in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(samples: &[u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Percentiles { count: s.len(), p50: at(0.5), p99: at(0.99), max: s[s.len() - 1] }
    }
}

/// Notifications of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NotificationReport {
    /// Notifications answered lookups promised (one per notified authority).
    pub promised: usize,
    pub delivered: usize,
    pub outstanding: usize,
    /// Promises whose only copy was on a wiped disk (lost by the fault, not the protocol).
    pub lost_with_wiped_disk: usize,
    /// Notifications an authority accepted that no answer promised it (true ones, relayed).
    pub unpromised_accepted: u64,
    /// Most outstanding at once for one authority (the backlog).
    pub backlog_max: usize,
    pub latency_ms: Percentiles,
    pub overdue_events: u64,
    /// Items still in hubs' outboxes at the end.
    pub outbox_left: usize,
}

/// Messages and bytes sent per node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MessageReport {
    pub total: u64,
    pub bytes: u64,
    pub per_node_max: u64,
    pub per_node_mean: u64,
    pub per_node_max_bytes: u64,
    pub per_node_mean_bytes: u64,
    /// Bytes sent and received by a hub, on average over the hubs.
    pub per_hub_mean_sent_bytes: u64,
    pub per_hub_mean_received_bytes: u64,
    pub busiest: String,
}

/// The hostile hub of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostileReport {
    pub hub: String,
    pub attacks: Vec<&'static str>,
    pub stats: AdversaryStats,
}

/// The hostile setting of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostileSettingReport {
    pub setting: String,
    pub stats: HostileSettingStats,
}

/// Everything one run reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub scale: f64,
    pub world: String,
    pub faults: Vec<String>,
    pub trace_hash: String,
    /// Simulated time from the start of the measured period to the end of the run.
    pub simulated_ms: u64,
    /// Real time of the measured period (without the load and the final checks).
    pub real_ms: u64,
    /// Real time of building the world and loading the caseloads.
    pub load_real_ms: u64,
    /// Real time of the final checks.
    pub check_real_ms: u64,
    pub sim_to_real: f64,
    pub lookups: LookupStats,
    pub notifications: NotificationReport,
    /// From the heal until every hub held every authority's published feed and every visit, and
    /// every notification promised before the heal was stored.
    pub convergence_after_heal_ms: Option<u64>,
    /// From an end (or withdrawal) being acknowledged until every hub held it.
    pub ended_plan_shown_ms: Percentiles,
    pub withdrawn_plan_shown_ms: Percentiles,
    pub new_plan_everywhere_ms: Percentiles,
    pub messages: MessageReport,
    pub network: Counters,
    pub bad_inputs: BadInputStats,
    pub hostile_hub: Option<HostileReport>,
    pub hostile_setting: Option<HostileSettingReport>,
    pub equivocation_alarms: usize,
    pub equivocation_proofs: u64,
    /// Visits a hub served to a peer before its own write of them was durable, and of those,
    /// how many it never made durable (it crashed first).
    pub visits_before_durable: usize,
    pub visits_never_durable_at_origin: usize,
    pub refusals: BTreeMap<String, u64>,
    pub lost: Violations,
    pub unexpected: Violations,
    pub ok: bool,
    pub reproduce: String,
    /// What the run recorded over time, for the assurer's report (not in the JSON).
    #[serde(skip)]
    pub timeline: Timeline,
}

impl RunReport {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        let l = &self.lookups;
        let n = &self.notifications;
        let hostile = match (&self.hostile_hub, &self.hostile_setting) {
            (None, None) => String::new(),
            (h, s) => {
                let mut parts = vec![];
                if let Some(h) = h {
                    parts.push(format!("hub {} ({})", h.hub, h.attacks.join(", ")));
                }
                if let Some(s) = s {
                    parts.push(format!("setting {}", s.setting));
                }
                format!(" | hostile {}", parts.join(" and "))
            }
        };
        format!(
            "seed {:>6} {:<36} {} trace {} | lookups {}/{} answered (checked {}, stale {}, unavailable {}; forged refused {}), flagged {} (missed: {} no hub, {} not caught up, {} unavailable, {} no answer, {} refused, {} forged) | notices {}/{} p50 {} p99 {} max {} | converged {} | ended shown p99 {}{} | {:.0}x real | lost {} unexpected {}",
            self.seed,
            self.scenario,
            if self.ok { "ok  " } else { "FAIL" },
            self.trace_hash,
            l.answered,
            l.requests,
            l.answered_all_checked,
            l.answered_some_stale,
            l.answered_some_unavailable,
            l.answers_refused_forged,
            l.flagged,
            l.flagged_missed_no_hub_reachable,
            l.flagged_missed_hub_not_caught_up,
            l.flagged_missed_authority_unavailable,
            l.flagged_missed_no_answer,
            l.flagged_missed_refused,
            l.flagged_missed_forged,
            n.delivered,
            n.promised,
            human::duration(n.latency_ms.p50),
            human::duration(n.latency_ms.p99),
            human::duration(n.latency_ms.max),
            human::duration_or(self.convergence_after_heal_ms, "never"),
            human::duration(self.ended_plan_shown_ms.p99.max(self.withdrawn_plan_shown_ms.p99)),
            hostile,
            self.sim_to_real,
            self.lost.count,
            self.unexpected.count,
        )
    }
}

/// Figures over many runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub passed: usize,
    pub failed_seeds: Vec<String>,
    pub lookups_requested: u64,
    pub lookups_answered: u64,
    pub answered_all_checked: u64,
    pub answered_some_stale: u64,
    pub answered_some_unavailable: u64,
    pub answers_refused_forged: u64,
    pub retried_after_forged: u64,
    pub forged_unresolved: u64,
    pub flagged_lookups: u64,
    pub flagged_complete: u64,
    pub flagged_missed_no_hub_reachable: u64,
    pub flagged_missed_hub_not_caught_up: u64,
    pub flagged_missed_authority_unavailable: u64,
    pub flagged_missed_no_answer: u64,
    pub flagged_missed_refused: u64,
    pub flagged_missed_forged: u64,
    pub refused_clock_skew: u64,
    pub strict_checked: u64,
    pub notifications_promised: u64,
    pub notifications_delivered: u64,
    pub notifications_outstanding: u64,
    pub notifications_lost_with_wiped_disk: u64,
    pub notification_latency_p50_median_ms: u64,
    pub notification_latency_p99_max_ms: u64,
    pub notification_latency_max_ms: u64,
    pub convergence_after_heal_median_ms: u64,
    pub convergence_after_heal_max_ms: u64,
    pub not_converged: usize,
    pub ended_plan_shown_max_ms: u64,
    pub bad_inputs: u64,
    pub bad_inputs_refused: u64,
    pub equivocation_alarms: usize,
    pub hostile_hub_runs: usize,
    pub hostile_setting_runs: usize,
    pub adversary: AdversaryStats,
    pub hostile_setting: HostileSettingStats,
    pub lost: u64,
    pub unexpected: u64,
    pub simulated_ms: u64,
    pub real_ms: u64,
    /// Real time of everything: loads, measured periods and checks.
    pub wall_ms: u64,
    pub sim_to_real: f64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn add_adversary(total: &mut AdversaryStats, s: &AdversaryStats) {
    total.messages_seen += s.messages_seen;
    total.entries_omitted += s.entries_omitted;
    total.plans_omitted_from_answers += s.plans_omitted_from_answers;
    total.authorities_left_out_of_answers += s.authorities_left_out_of_answers;
    total.parts_replaced_with_older += s.parts_replaced_with_older;
    total.answers_replayed += s.answers_replayed;
    total.frames_replayed += s.frames_replayed;
    total.notifications_invented += s.notifications_invented;
    total.notifications_relayed_invented += s.notifications_relayed_invented;
    total.heads_forged += s.heads_forged;
    total.directory_bombs += s.directory_bombs;
}

fn add_setting(total: &mut HostileSettingStats, s: &HostileSettingStats) {
    total.signed_for_another += s.signed_for_another;
    total.replayed_anothers += s.replayed_anothers;
    total.burst_lookups += s.burst_lookups;
    total.probes += s.probes;
    total.refused_not_from_setting += s.refused_not_from_setting;
    total.refused_rate_limited += s.refused_rate_limited;
    total.refused_other += s.refused_other;
    total.answered += s.answered;
}

impl Summary {
    pub fn of(runs: &[RunReport]) -> Summary {
        let mut s = Summary { runs: runs.len(), ..Summary::default() };
        let mut p50s = vec![];
        let mut conv = vec![];
        for r in runs {
            s.passed += usize::from(r.ok);
            if !r.ok {
                s.failed_seeds.push(format!("{} ({})", r.seed, r.scenario));
            }
            let l = &r.lookups;
            s.lookups_requested += l.requests;
            s.lookups_answered += l.answered;
            s.answered_all_checked += l.answered_all_checked;
            s.answered_some_stale += l.answered_some_stale;
            s.answered_some_unavailable += l.answered_some_unavailable;
            s.answers_refused_forged += l.answers_refused_forged;
            s.retried_after_forged += l.retried_after_forged;
            s.forged_unresolved += l.forged_unresolved;
            s.flagged_lookups += l.flagged;
            s.flagged_complete += l.flagged_complete;
            s.flagged_missed_no_hub_reachable += l.flagged_missed_no_hub_reachable;
            s.flagged_missed_hub_not_caught_up += l.flagged_missed_hub_not_caught_up;
            s.flagged_missed_authority_unavailable += l.flagged_missed_authority_unavailable;
            s.flagged_missed_no_answer += l.flagged_missed_no_answer;
            s.flagged_missed_refused += l.flagged_missed_refused;
            s.flagged_missed_forged += l.flagged_missed_forged;
            s.refused_clock_skew += l.refused_clock_skew;
            s.strict_checked += l.strict_checked;
            let n = &r.notifications;
            s.notifications_promised += n.promised as u64;
            s.notifications_delivered += n.delivered as u64;
            s.notifications_outstanding += n.outstanding as u64;
            s.notifications_lost_with_wiped_disk += n.lost_with_wiped_disk as u64;
            p50s.push(n.latency_ms.p50);
            s.notification_latency_p99_max_ms = s.notification_latency_p99_max_ms.max(n.latency_ms.p99);
            s.notification_latency_max_ms = s.notification_latency_max_ms.max(n.latency_ms.max);
            match r.convergence_after_heal_ms {
                Some(ms) => conv.push(ms),
                None => s.not_converged += 1,
            }
            s.ended_plan_shown_max_ms =
                s.ended_plan_shown_max_ms.max(r.ended_plan_shown_ms.max).max(r.withdrawn_plan_shown_ms.max);
            s.bad_inputs += r.bad_inputs.injected;
            s.bad_inputs_refused += r.bad_inputs.refused;
            s.equivocation_alarms += r.equivocation_alarms;
            if let Some(h) = &r.hostile_hub {
                s.hostile_hub_runs += 1;
                add_adversary(&mut s.adversary, &h.stats);
            }
            if let Some(h) = &r.hostile_setting {
                s.hostile_setting_runs += 1;
                add_setting(&mut s.hostile_setting, &h.stats);
            }
            s.lost += r.lost.count;
            s.unexpected += r.unexpected.count;
            s.simulated_ms += r.simulated_ms;
            s.real_ms += r.real_ms;
            s.wall_ms += r.load_real_ms + r.real_ms + r.check_real_ms;
        }
        s.notification_latency_p50_median_ms = median(p50s);
        s.convergence_after_heal_max_ms = conv.iter().copied().max().unwrap_or(0);
        s.convergence_after_heal_median_ms = median(conv);
        s.sim_to_real = s.simulated_ms as f64 / (s.real_ms.max(1)) as f64;
        s
    }

    /// The summary in a few lines for a terminal.
    pub fn text(&self) -> String {
        let mut out = vec![];
        out.push(format!(
            "{} runs: {} passed, {} failed{}; simulated {} in {} of measured periods ({:.0}x real time), {} in all",
            self.runs,
            self.passed,
            self.runs - self.passed,
            if self.failed_seeds.is_empty() { String::new() } else { format!(" ({})", self.failed_seeds.join(", ")) },
            human::duration(self.simulated_ms),
            human::duration(self.real_ms),
            self.sim_to_real,
            human::duration(self.wall_ms),
        ));
        out.push(format!(
            "  lookups: {} made, {} answered: {} all checked, {} some stale, {} some unavailable; {} answers refused as forged ({} retried at another hub, {} never resolved); {} checked strictly",
            self.lookups_requested,
            self.lookups_answered,
            self.answered_all_checked,
            self.answered_some_stale,
            self.answered_some_unavailable,
            self.answers_refused_forged,
            self.retried_after_forged,
            self.forged_unresolved,
            self.strict_checked,
        ));
        out.push(format!(
            "  flagged: {} ({} complete; missed: {} no hub, {} not caught up, {} shown unavailable, {} no answer, {} refused, {} forged)",
            self.flagged_lookups,
            self.flagged_complete,
            self.flagged_missed_no_hub_reachable,
            self.flagged_missed_hub_not_caught_up,
            self.flagged_missed_authority_unavailable,
            self.flagged_missed_no_answer,
            self.flagged_missed_refused,
            self.flagged_missed_forged,
        ));
        out.push(format!(
            "  notifications: {} promised, {} delivered, {} outstanding, {} lost with a wiped disk; latency p50 (median of runs) {}, p99 (worst run) {}, max {}",
            self.notifications_promised,
            self.notifications_delivered,
            self.notifications_outstanding,
            self.notifications_lost_with_wiped_disk,
            human::duration(self.notification_latency_p50_median_ms),
            human::duration(self.notification_latency_p99_max_ms),
            human::duration(self.notification_latency_max_ms),
        ));
        out.push(format!(
            "  convergence after heal: median {}, max {}, {} runs not converged; ended plan shown at most {}",
            human::duration(self.convergence_after_heal_median_ms),
            human::duration(self.convergence_after_heal_max_ms),
            self.not_converged,
            human::duration(self.ended_plan_shown_max_ms),
        ));
        let a = &self.adversary;
        out.push(format!(
            "  hostile: {} runs with a hostile hub ({} entries omitted, {} plans omitted from answers, {} parts served stale, {} answers replayed, {} frames replayed, {} notifications invented (+{} relayed), {} heads forged, {} directory bombs), {} with a hostile setting; {} bad inputs, {} refused; {} equivocation alarms",
            self.hostile_hub_runs,
            a.entries_omitted,
            a.plans_omitted_from_answers,
            a.parts_replaced_with_older,
            a.answers_replayed,
            a.frames_replayed,
            a.notifications_invented,
            a.notifications_relayed_invented,
            a.heads_forged,
            a.directory_bombs,
            self.hostile_setting_runs,
            self.bad_inputs,
            self.bad_inputs_refused,
            self.equivocation_alarms,
        ));
        out.push(format!("  violations: {} lost, {} unexpected", self.lost, self.unexpected));
        out.join("\n")
    }
}

#[cfg(test)]
#[allow(non_snake_case)] // Test names read as specifications: situation__expectation.
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred__p50_51_p99_99_max_100() {
        let p = Percentiles::of(&(1..=100).collect::<Vec<u64>>());
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 51, 99, 100));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }
}
