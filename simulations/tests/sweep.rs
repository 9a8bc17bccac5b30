//! A bounded swarm sweep: every seed draws its own faults; every invariant must hold.
//! Longer sweeps: `cpis-sim --seeds 1..1000 --scale 0.01` (see docs/simulation.md).

#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;
use cpis_simulations::run::run;

#[test]
fn swarm_of_small_federations__every_invariant_holds() {
    let mut with_faults = 0;
    for seed in 1..=24 {
        let r = run(&common::tiny(seed, 3));
        common::assert_ok(&r);
        with_faults += usize::from(!r.faults.is_empty());
    }
    assert!(with_faults >= 20, "the swarm drew faults for only {with_faults} of 24 seeds");
}
