//! One hostile member is not enough: a bounded slice of the hostile scenarios and of swarm seeds
//! that drew a hostile hub. The attack must have been made, and every invariant must still hold
//! for the honest members. Every hostile scenario runs in release with `--scenario all`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;

/// A hostile scenario on the tiny federation, one hour long.
fn scenario(s: Scenario, intensity: f64) -> RunConfig {
    RunConfig { hours: Some(1), ..common::scenario(s, intensity) }
}
use common::assert_ok;
use cpis_simulations::run::{RunConfig, draw_hostile, run};
use cpis_simulations::scenarios::Scenario;
use cpis_simulations::world::{World, WorldSpec};

#[test]
fn hostile_hub_omits_entries__runs_and_answers_refused__nothing_missed_under_a_fresh_head() {
    let r = run(&scenario(Scenario::HostileHubOmitsEntries, 0.5));
    assert_ok(&r);
    let adv = r.hostile_hub.as_ref().map(|h| h.stats.clone()).unwrap_or_default();
    assert!(adv.entries_omitted + adv.plans_omitted_from_answers > 0, "{adv:?}");
}

#[test]
fn hostile_hub_serves_stale_answers__shown_as_of_their_heads__never_fresh() {
    let r = run(&scenario(Scenario::HostileHubServesStaleAnswers, 0.5));
    assert_ok(&r);
}

#[test]
fn hostile_hub_invents_notifications__every_one_refused__inboxes_and_outboxes_clean() {
    let r = run(&scenario(Scenario::HostileHubInventsNotifications, 0.5));
    assert_ok(&r);
    assert_eq!(r.notifications.outbox_left, 0);
}

#[test]
fn hostile_hub_forges_heads__refused_by_hubs__shown_unavailable_by_settings() {
    let r = run(&scenario(Scenario::HostileHubForgesHeads, 0.5));
    assert_ok(&r);
}

#[test]
fn hostile_setting__lies_and_bursts_refused__others_served() {
    let r = run(&scenario(Scenario::HostileSetting, 0.5));
    assert_ok(&r);
}

#[test]
fn swarm_seeds_with_a_hostile_hub__every_invariant_holds() {
    let world = World::build(WorldSpec::england(0.002));
    let seeds: Vec<u64> = (1..200).filter(|s| draw_hostile(*s, &world).0.is_some()).take(2).collect();
    assert_eq!(seeds.len(), 2, "the swarm draws a hostile hub in some seeds");
    for seed in seeds {
        let r = run(&common::tiny(seed, 1));
        assert!(r.hostile_hub.is_some());
        assert_ok(&r);
    }
}
