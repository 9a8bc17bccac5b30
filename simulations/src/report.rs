//! What a run reports, and the summary of many runs.

use crate::checker::Violations;
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
    pub frames_refused_undecodable: u64,
    pub bad_inputs: u64,
    pub bad_inputs_refused: u64,
    /// Messages the machines sent, by kind.
    pub by_kind: BTreeMap<&'static str, KindCount>,
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
    /// Notifications answered lookups promised (one per owning authority).
    pub promised: usize,
    pub delivered: usize,
    pub outstanding: usize,
    /// Most outstanding at once for one authority (the backlog).
    pub backlog_max: usize,
    pub latency_ms: Percentiles,
    pub overdue_events: u64,
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
    pub busiest: String,
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
    /// From the heal until every change made and lookup answered before it had reached every
    /// hub and inbox.
    pub convergence_after_heal_ms: Option<u64>,
    /// From an end (or withdrawal) being acknowledged until every hub held it.
    pub ended_plan_shown_ms: Percentiles,
    pub withdrawn_plan_shown_ms: Percentiles,
    pub new_plan_everywhere_ms: Percentiles,
    pub messages: MessageReport,
    pub network: Counters,
    pub equivocation_alarms: usize,
    pub refusals: BTreeMap<String, u64>,
    pub lost: Violations,
    pub unexpected: Violations,
    pub ok: bool,
    pub reproduce: String,
}

impl RunReport {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        let l = &self.lookups;
        let n = &self.notifications;
        format!(
            "seed {:>6} {:<36} {} trace {} | lookups {}/{} answered, flagged {} (missed: {} no hub, {} not caught up, {} no answer, {} refused) | notices {}/{} p50 {} p99 {} max {} ms | converged {} | ended shown p99 {} ms | {:.0}x real | lost {} unexpected {}",
            self.seed,
            self.scenario,
            if self.ok { "ok  " } else { "FAIL" },
            self.trace_hash,
            l.answered,
            l.requests,
            l.flagged,
            l.flagged_missed_no_hub_reachable,
            l.flagged_missed_hub_not_caught_up,
            l.flagged_missed_no_answer,
            l.flagged_missed_refused,
            n.delivered,
            n.promised,
            n.latency_ms.p50,
            n.latency_ms.p99,
            n.latency_ms.max,
            self.convergence_after_heal_ms.map_or("never".into(), |ms| format!("{ms} ms")),
            self.ended_plan_shown_ms.p99.max(self.withdrawn_plan_shown_ms.p99),
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
    pub lookups_answered: u64,
    pub flagged_lookups: u64,
    pub flagged_missed_no_hub_reachable: u64,
    pub flagged_missed_hub_not_caught_up: u64,
    pub flagged_missed_no_answer: u64,
    pub flagged_missed_refused: u64,
    pub refused_clock_skew: u64,
    pub notifications_promised: u64,
    pub notifications_delivered: u64,
    pub notifications_outstanding: u64,
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
    pub lost: u64,
    pub unexpected: u64,
    pub simulated_ms: u64,
    pub real_ms: u64,
    pub sim_to_real: f64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
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
            s.lookups_answered += l.answered;
            s.flagged_lookups += l.flagged;
            s.flagged_missed_no_hub_reachable += l.flagged_missed_no_hub_reachable;
            s.flagged_missed_hub_not_caught_up += l.flagged_missed_hub_not_caught_up;
            s.flagged_missed_no_answer += l.flagged_missed_no_answer;
            s.flagged_missed_refused += l.flagged_missed_refused;
            s.refused_clock_skew += l.refused_clock_skew;
            let n = &r.notifications;
            s.notifications_promised += n.promised as u64;
            s.notifications_delivered += n.delivered as u64;
            s.notifications_outstanding += n.outstanding as u64;
            p50s.push(n.latency_ms.p50);
            s.notification_latency_p99_max_ms = s.notification_latency_p99_max_ms.max(n.latency_ms.p99);
            s.notification_latency_max_ms = s.notification_latency_max_ms.max(n.latency_ms.max);
            match r.convergence_after_heal_ms {
                Some(ms) => conv.push(ms),
                None => s.not_converged += 1,
            }
            s.ended_plan_shown_max_ms =
                s.ended_plan_shown_max_ms.max(r.ended_plan_shown_ms.max).max(r.withdrawn_plan_shown_ms.max);
            s.bad_inputs += r.network.bad_inputs;
            s.bad_inputs_refused += r.network.bad_inputs_refused;
            s.equivocation_alarms += r.equivocation_alarms;
            s.lost += r.lost.count;
            s.unexpected += r.unexpected.count;
            s.simulated_ms += r.simulated_ms;
            s.real_ms += r.real_ms;
        }
        s.notification_latency_p50_median_ms = median(p50s);
        s.convergence_after_heal_max_ms = conv.iter().copied().max().unwrap_or(0);
        s.convergence_after_heal_median_ms = median(conv);
        s.sim_to_real = s.simulated_ms as f64 / (s.real_ms.max(1)) as f64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let p = Percentiles::of(&(1..=100).collect::<Vec<u64>>());
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 51, 99, 100));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }
}
