//! A bounded swarm sweep: every seed draws its own faults (and, in some, a hostile member);
//! every invariant must hold. Longer sweeps: `cpis-sim --seeds 1..1001 --scale 0.01` (see
//! docs/simulation.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;
use cpis_simulations::run::run;

fn sweep(seeds: std::ops::RangeInclusive<u64>) -> usize {
    let mut with_faults = 0;
    for seed in seeds {
        let r = run(&common::tiny(seed, 1));
        common::assert_ok(&r);
        with_faults += usize::from(!r.faults.is_empty());
    }
    with_faults
}

#[test]
fn swarm_seeds_1_to_3__every_invariant_holds() {
    assert!(sweep(1..=3) >= 2, "the swarm drew faults in too few seeds");
}

#[test]
fn swarm_seeds_4_to_6__every_invariant_holds() {
    assert!(sweep(4..=6) >= 2, "the swarm drew faults in too few seeds");
}
