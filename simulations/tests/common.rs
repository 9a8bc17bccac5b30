//! Configurations small enough for a debug build: signatures and proofs cost milliseconds there.

#![allow(dead_code)] // Not every test file uses every helper.

use cpis_simulations::report::RunReport;
use cpis_simulations::run::{LoadMode, RunConfig};
use cpis_simulations::scenarios::Scenario;

/// A tiny federation: 3 hubs, 6 authorities, 6 settings, 30 plans, a light workload, and a
/// liveness bound of 5 minutes (a tiny federation converges well within it).
pub(crate) fn tiny(seed: u64, hours: u64) -> RunConfig {
    RunConfig {
        seed,
        scale: 0.002,
        plans: Some(30),
        hours: Some(hours),
        load: LoadMode::Snapshot,
        intensity: 0.5,
        bound_ms: 5 * 60_000,
        ..RunConfig::default()
    }
}

/// A named scenario on the tiny federation, at `intensity`.
pub(crate) fn scenario(s: Scenario, intensity: f64) -> RunConfig {
    RunConfig { scenario: Some(s), hours: None, intensity, ..tiny(1, 0) }
}

/// Fails with every violation and the command that repeats the run.
pub(crate) fn assert_ok(r: &RunReport) {
    assert!(
        r.ok,
        "run failed: lost {:?}\nunexpected {:?}\nfaults {:?}\nreproduce with: {}",
        r.lost.first, r.unexpected.first, r.faults, r.reproduce
    );
}
