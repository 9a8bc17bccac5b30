//! The same seed gives the same run, to the last delivered byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;
use cpis_simulations::run::run;

#[test]
fn same_seed_twice__same_trace_hash__same_figures() {
    let config = common::tiny(42, 1);
    let (a, b) = (run(&config), run(&config));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.lookups.answered, b.lookups.answered);
    assert_eq!(a.notifications.delivered, b.notifications.delivered);
    assert_eq!(a.network.frames_delivered, b.network.frames_delivered);
    assert!(a.network.frames_delivered > 0, "the run delivered nothing");
}

#[test]
fn another_seed__another_trace() {
    assert_ne!(run(&common::tiny(1, 1)).trace_hash, run(&common::tiny(2, 1)).trace_hash);
}
