//! What crosses the network, counted (the simulator's byte counts are deterministic): between
//! hubs, the periodic sync is a digest, and a change is passed on by a home hub, not flooded.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;
use cpis_simulations::run::{RunConfig, run};

#[test]
fn two_quiet_hours_on_three_hubs__syncs_are_digests__heads_go_one_hop() {
    let r = run(&RunConfig { no_faults: true, ..common::tiny(1, 2) });
    common::assert_ok(&r);
    let hubs = &r.network.between_hubs;
    let count = |kind: &str| hubs.get(kind).map_or(0, |k| k.messages);
    // Three hubs, six ordered pairs, a sync every 30 s: more than 1,400 periodic syncs in two
    // hours. Every mark is sent only while a hub starts (and takes back its own visits).
    assert!(count("digest") >= 6 * 2 * 120, "periodic digests: {}", count("digest"));
    assert!(count("sync") <= 6 * 4, "syncs with every mark between hubs: {}", count("sync"));
    assert!(count("sync-part") * 20 <= count("digest"), "digests that differed: {}", count("sync-part"));
    // Each head an authority sends a home hub goes on to at most the two other hubs.
    let from_authorities = r.network.by_kind["head"].messages - count("head");
    assert!(
        count("head") <= 2 * from_authorities,
        "heads: {} between hubs, {from_authorities} from authorities",
        count("head")
    );
}
