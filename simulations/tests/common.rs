//! Configurations small enough for a debug build: signatures cost milliseconds there.

use cpis_simulations::run::{LoadMode, RunConfig};

/// A tiny federation: 3 hubs, 6 authorities, 6 settings, 30 plans, a light workload.
pub fn tiny(seed: u64, hours: u64) -> RunConfig {
    RunConfig {
        seed,
        scale: 0.002,
        plans: Some(30),
        hours: Some(hours),
        load: LoadMode::Snapshot,
        intensity: 0.5,
        ..RunConfig::default()
    }
}

#[allow(dead_code)] // Not every test file uses it.
/// Fails with every violation and the command that repeats the run.
pub fn assert_ok(r: &cpis_simulations::report::RunReport) {
    assert!(
        r.ok,
        "run failed: lost {:?}\nunexpected {:?}\nfaults {:?}\nreproduce with: {}",
        r.lost.first, r.unexpected.first, r.faults, r.reproduce
    );
}
