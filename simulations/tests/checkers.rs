//! The checkers catch violations: each is fed a fabricated history that breaks one promise.

#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

use cpis_protocol::codec;
use cpis_protocol::feed::{EntryBody, FeedEntry};
use cpis_protocol::ids::{LookupId, PlanRef};
use cpis_protocol::machine::Event;
use cpis_protocol::records::{LookupKind, Plan, PlanType};
use cpis_protocol::store::{StoreOp, Table, WriteBatch};
use cpis_protocol::time::Timestamp;
use cpis_simulations::checker::{History, HubView};
use cpis_simulations::fnv::FnvMap;
use cpis_simulations::world::{NodeId, World, WorldSpec, nhs_number};
use std::collections::BTreeSet;

fn world() -> World {
    World::build(WorldSpec::england(0.002))
}

fn answered(w: &World, lookup: LookupId, authority: NodeId) -> Event {
    Event::LookupAnswered {
        lookup_id: lookup,
        setting: w.code(w.settings.start).clone(),
        kind: LookupKind::Unscheduled,
        authorities: vec![w.code(authority).clone()],
    }
}

fn received(w: &World, lookup: LookupId) -> Event {
    Event::NotificationReceived { lookup_id: lookup, hub: w.code(w.hubs.start).clone() }
}

/// A plan entry of `origin` at `seq`, signed by `origin`, as a write of one row.
fn plan_write(w: &World, origin: NodeId, seq: u64, withdrawn: bool) -> (WriteBatch, Plan) {
    let start = w.fed.start.date().plus_days(-10);
    let plan = Plan {
        reference: PlanRef::parse("REF-1").unwrap_or_else(|e| panic!("{e}")),
        nhs: nhs_number(400_000_000),
        plan_type: PlanType::LookedAfter,
        start,
        end: None,
        due: None,
        withdrawn,
    };
    let code = w.code(origin).clone();
    let entry = w.fed.identity(code.as_str()).sign(FeedEntry {
        origin: code.clone(),
        seq,
        at: w.fed.start,
        body: EntryBody::Plan(plan.clone()),
    });
    let mut key = code.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    let op = StoreOp::Put { table: Table::Entries, key, value: codec::encode(&entry) };
    (WriteBatch { id: seq, ops: vec![op] }, plan)
}

fn view(hub: NodeId, now: u64, shown: Vec<(Plan, NodeId, u64)>) -> HubView {
    let mut map = FnvMap::default();
    for (p, origin, seq) in shown {
        map.entry(p.nhs).or_insert_with(Vec::new).push((origin, p.reference.clone(), seq));
    }
    HubView { hub, now, held: BTreeSet::new(), shown: map }
}

#[test]
fn answered_lookup_whose_notification_never_arrived__is_lost() {
    let w = world();
    let mut h = History::new(&w);
    let (a, lookup) = (w.authorities.start, LookupId([1; 16]));
    h.on_event(w.hubs.start, &answered(&w, lookup, a), 1_000);
    h.check_notifications(&[(a, BTreeSet::new())]);
    assert_eq!(h.lost.count, 1, "{:?}", h.lost);
    assert_eq!(h.lost.first[0].check, "notification");
}

#[test]
fn notification_stored_twice__is_unexpected() {
    let w = world();
    let mut h = History::new(&w);
    let (a, lookup) = (w.authorities.start, LookupId([2; 16]));
    h.on_event(w.hubs.start, &answered(&w, lookup, a), 1_000);
    h.on_event(a, &received(&w, lookup), 2_000);
    h.on_event(a, &received(&w, lookup), 3_000);
    h.check_notifications(&[(a, BTreeSet::from([lookup]))]);
    assert!(h.lost.is_empty());
    assert!(h.unexpected.first.iter().any(|v| v.check == "duplicate-inbox"), "{:?}", h.unexpected);
}

#[test]
fn notification_nobody_answered__is_unexpected() {
    let w = world();
    let mut h = History::new(&w);
    h.check_notifications(&[(w.authorities.start, BTreeSet::from([LookupId([3; 16])]))]);
    assert_eq!(h.unexpected.count, 1);
}

#[test]
fn hub_storing_an_entry_its_origin_never_signed__is_unexpected() {
    let w = world();
    let mut h = History::new(&w);
    let (batch, _) = plan_write(&w, w.authorities.start, 1, false);
    h.on_write(w.hubs.start, &batch, 0);
    assert!(h.unexpected.first.iter().any(|v| v.check == "forged"), "{:?}", h.unexpected);
}

#[test]
fn acknowledged_plan_missing_at_a_hub__is_lost() {
    let w = world();
    let mut h = History::new(&w);
    let a = w.authorities.start;
    let (batch, _) = plan_write(&w, a, 1, false);
    h.on_write(a, &batch, 0);
    h.on_durable(a, &[batch], 0);
    h.check_hubs(&[view(w.hubs.start, w.fed.start.as_millis() + 3_600_000, vec![])]);
    assert!(h.lost.first.iter().any(|v| v.check == "plan-at-hub"), "{:?}", h.lost);
    assert!(!h.settled_before(u64::MAX, w.fed.start.as_millis()));
}

#[test]
fn withdrawn_plan_still_shown_at_a_hub__is_unexpected() {
    let w = world();
    let mut h = History::new(&w);
    let a = w.authorities.start;
    let (open, plan) = plan_write(&w, a, 1, false);
    let (withdrawn, _) = plan_write(&w, a, 2, true);
    h.on_durable(a, &[open, withdrawn], 0);
    let now = Timestamp(w.fed.start.as_millis() + 3_600_000).as_millis();
    h.check_hubs(&[view(w.hubs.start, now, vec![(plan, a, 1)])]);
    assert!(h.unexpected.first.iter().any(|v| v.check == "shown-after-end"), "{:?}", h.unexpected);
}

#[test]
fn a_clean_history__passes() {
    let w = world();
    let mut h = History::new(&w);
    let (a, lookup) = (w.authorities.start, LookupId([4; 16]));
    h.on_event(w.hubs.start, &answered(&w, lookup, a), 1_000);
    h.on_event(a, &received(&w, lookup), 2_000);
    let (batch, plan) = plan_write(&w, a, 1, false);
    h.on_write(a, &batch, 0);
    h.on_durable(a, &[batch], 0);
    h.check_notifications(&[(a, BTreeSet::from([lookup]))]);
    let now = w.fed.start.as_millis() + 3_600_000;
    let views: Vec<HubView> = w.hubs.clone().map(|hub| view(hub, now, vec![(plan.clone(), a, 1)])).collect();
    h.check_hubs(&views);
    assert!(h.lost.is_empty() && h.unexpected.is_empty(), "{:?} {:?}", h.lost, h.unexpected);
}
