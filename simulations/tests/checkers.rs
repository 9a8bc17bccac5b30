//! The checkers catch violations: each is fed a fabricated history that breaks one promise, and
//! a clean one passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

use cpis_protocol::authority::InboxItem;
use cpis_protocol::feed::{EntryBody, FeedEntry, Removal, RemovalReason, SignedEntry};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::Event;
use cpis_protocol::records::{AccessEvent, LookupKind, Person, Plan, PlanType};
use cpis_protocol::schema::{self, WriteBatch};
use cpis_protocol::setting::{AnswerError, AuthorityStatus, AuthorityView, Unavailable, VerifiedAnswer};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::Notification;
use cpis_simulations::checker::{AnswerRecord, EntryView, FeedView, History, HubView};
use cpis_simulations::world::{NodeId, World, WorldSpec, nhs_number};
use std::collections::{BTreeMap, BTreeSet};

const MINUTE: u64 = 60_000;

struct Fixture {
    w: World,
    h: History,
    a: NodeId,
    hub: NodeId,
    setting: NodeId,
    t0: u64,
}

fn fixture() -> Fixture {
    let w = World::build(WorldSpec::england(0.002));
    let h = History::new(&w);
    let (a, hub, setting) = (w.authorities.start, w.hubs.start, w.settings.start);
    let t0 = w.fed.start.as_millis() + 2 * 3_600_000;
    Fixture { h, a, hub, setting, t0, w }
}

fn child() -> NhsNumber {
    nhs_number(400_000_000)
}

fn plan() -> Plan {
    Plan {
        reference: PlanRef::parse("REF-1").unwrap(),
        nhs: child(),
        plan_type: PlanType::LookedAfter,
        start: Timestamp(1_790_000_000_000).date(),
        end: None,
        due: None,
        withdrawn: false,
    }
}

impl Fixture {
    fn code(&self, n: NodeId) -> OdsCode {
        self.w.code(n).clone()
    }

    fn entry(&self, seq: u64, body: EntryBody) -> SignedEntry {
        let code = self.code(self.a);
        self.w.fed.identity(code.as_str()).sign(FeedEntry { origin: code, seq, at: Timestamp(self.t0), body })
    }

    /// The authority makes an entry durable at `at`.
    fn ack(&mut self, seq: u64, body: EntryBody, at: u64) -> SignedEntry {
        let e = self.entry(seq, body);
        let batch = WriteBatch { id: seq, ops: vec![schema::ENTRIES.put(&(self.code(self.a), seq), &e)] };
        self.h.on_durable(self.a, &[batch], at);
        e
    }

    fn withdrawal(&self) -> EntryBody {
        EntryBody::Removed(Removal { reference: plan().reference, reason: RemovalReason::Withdrawn })
    }

    fn answered(&mut self, lookup: LookupId, notified: bool) {
        let e = Event::LookupAnswered {
            lookup_id: lookup,
            setting: self.code(self.setting),
            kind: LookupKind::Unscheduled,
            notified: if notified { vec![self.code(self.a)] } else { vec![] },
        };
        self.h.on_event(self.hub, &e, self.t0);
    }

    fn received(&mut self, lookup: LookupId) {
        let e = Event::NotificationReceived { lookup_id: lookup, hub: self.code(self.hub) };
        self.h.on_event(self.a, &e, self.t0 + 1_000);
    }

    /// The authority stores a notification of `lookup` naming `matched`.
    fn inbox(&mut self, lookup: LookupId, matched: &str) {
        let s = self.code(self.setting);
        let person = Person { id: "U1".into(), name: "A".into(), role: "B".into() };
        let event = AccessEvent { lookup_id: lookup, setting: s.clone(), person, at: Timestamp(self.t0), nhs: child() };
        let n = Notification {
            event: self.w.fed.identity(s.as_str()).sign(event),
            authority: self.code(self.a),
            matched: vec![PlanRef::parse(matched).unwrap()],
            hub: self.code(self.hub),
            answered_at: Timestamp(self.t0),
            signed_at: Timestamp(self.t0),
        };
        let item = InboxItem {
            notification: self.w.fed.identity(self.code(self.hub).as_str()).sign(n),
            received_at: Timestamp(self.t0),
        };
        let batch = WriteBatch { id: 1, ops: vec![schema::INBOX.put(&lookup, &item)] };
        self.h.on_durable(self.a, &[batch], self.t0 + 1_000);
    }

    /// A setting checks an answer showing `plans` of the authority under head (`seq`, `at`) at
    /// its clock `now`; every other authority unavailable.
    fn answer(&mut self, hub: NodeId, seq: u64, at: u64, status: AuthorityStatus, plans: Vec<Plan>, now: u64) {
        let code = self.code(self.a);
        let mut authorities =
            vec![AuthorityView { code: code.clone(), name: "A".into(), contacts: None, status, plans }];
        for other in self.w.authorities.clone().filter(|x| *x != self.a) {
            authorities.push(AuthorityView {
                code: self.code(other),
                name: "B".into(),
                contacts: None,
                status: AuthorityStatus::Unavailable(Unavailable::NoHead),
                plans: vec![],
            });
        }
        let v = VerifiedAnswer {
            lookup_id: LookupId([5; 16]),
            nhs: child(),
            hub: self.code(hub),
            authorities,
            history: vec![],
        };
        let result = Ok(v);
        let record = AnswerRecord {
            setting: self.setting,
            hub,
            nhs: child(),
            sent_at: now,
            strict: false,
            setting_now: Timestamp(now),
            heads: vec![(code, seq, Timestamp(at))],
            result: &result,
        };
        self.h.on_answer(&record);
    }
}

#[test]
fn answered_lookup_whose_notification_never_arrived__is_lost() {
    let mut f = fixture();
    let lookup = LookupId([1; 16]);
    f.answered(lookup, true);
    f.h.check_notifications(&[(f.a, Some(BTreeSet::new()))]);
    assert_eq!(f.h.lost.count, 1, "{:?}", f.h.lost);
    assert!(f.h.lost.has("notification"));
}

#[test]
fn notification_stored_twice__is_unexpected() {
    let mut f = fixture();
    let lookup = LookupId([2; 16]);
    f.answered(lookup, true);
    f.received(lookup);
    f.received(lookup);
    f.h.check_notifications(&[(f.a, Some(BTreeSet::from([lookup])))]);
    assert!(f.h.lost.is_empty());
    assert!(f.h.unexpected.has("duplicate-inbox"), "{:?}", f.h.unexpected);
}

#[test]
fn notification_of_a_lookup_no_hub_answered__is_an_invented_notification() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    f.inbox(LookupId([3; 16]), "REF-1");
    assert!(f.h.unexpected.has("invented-notification"), "{:?}", f.h.unexpected);
}

#[test]
fn notification_naming_a_plan_the_authority_never_had__is_an_invented_notification() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    let lookup = LookupId([4; 16]);
    f.answered(lookup, true);
    f.inbox(lookup, "REF-99");
    assert!(f.h.unexpected.has("invented-notification"), "{:?}", f.h.unexpected);
}

#[test]
fn hub_storing_an_entry_its_origin_never_made__is_forged() {
    let mut f = fixture();
    let e = f.entry(10, EntryBody::Plan(plan()));
    let batch = WriteBatch { id: 1, ops: vec![schema::ENTRIES.put(&(f.code(f.a), 10), &e)] };
    f.h.on_durable(f.hub, &[batch], f.t0);
    assert!(f.h.unexpected.has("forged"), "{:?}", f.h.unexpected);
}

#[test]
fn answer_missing_a_published_plan_under_a_fresh_head__is_unexpected() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    let now = f.t0 + MINUTE;
    f.answer(f.hub, 10, f.t0, AuthorityStatus::Checked { as_of: Timestamp(f.t0) }, vec![], now);
    assert!(f.h.unexpected.has("answer-wrong"), "{:?}", f.h.unexpected);
}

#[test]
fn answer_showing_a_plan_withdrawn_by_its_head__is_unexpected() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    let removal = f.withdrawal();
    f.ack(20, removal, f.t0 + MINUTE);
    let now = f.t0 + 2 * MINUTE;
    f.answer(f.hub, 20, f.t0 + MINUTE, AuthorityStatus::Checked { as_of: Timestamp(f.t0 + MINUTE) }, vec![plan()], now);
    assert!(f.h.unexpected.has("answer-wrong"), "{:?}", f.h.unexpected);
}

#[test]
fn old_head_shown_stale_with_the_plans_of_then__passes() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    let removal = f.withdrawal();
    f.ack(20, removal, f.t0 + 60 * MINUTE);
    let now = f.t0 + 120 * MINUTE;
    f.answer(f.hub, 10, f.t0, AuthorityStatus::Stale { as_of: Timestamp(f.t0) }, vec![plan()], now);
    assert!(f.h.unexpected.is_empty() && f.h.lost.is_empty(), "{:?} {:?}", f.h.unexpected, f.h.lost);
}

#[test]
fn head_shown_fresh_though_changes_older_than_the_staleness_window_are_missing__is_fresh_but_behind() {
    let mut f = fixture();
    f.ack(10, EntryBody::Plan(plan()), f.t0);
    let removal = f.withdrawal();
    f.ack(20, removal, f.t0 + MINUTE);
    let now = f.t0 + 30 * MINUTE;
    f.answer(f.hub, 10, f.t0, AuthorityStatus::Checked { as_of: Timestamp(f.t0) }, vec![plan()], now);
    assert!(f.h.unexpected.has("fresh-but-behind"), "{:?}", f.h.unexpected);
    assert!(!f.h.unexpected.has("answer-wrong"), "as of its head, the answer was right");
}

#[test]
fn answer_failing_verification__unexpected_from_an_honest_hub__allowed_from_the_hostile_one() {
    let mut f = fixture();
    let hostile = f.w.hubs.start + 1;
    f.h.hostile_hub = Some(hostile);
    let result: Result<VerifiedAnswer, AnswerError> = Err(AnswerError::NotOurLookup);
    for hub in [hostile, f.hub] {
        let record = AnswerRecord {
            setting: f.setting,
            hub,
            nhs: child(),
            sent_at: f.t0,
            strict: false,
            setting_now: Timestamp(f.t0),
            heads: vec![],
            result: &result,
        };
        f.h.on_answer(&record);
    }
    assert_eq!(f.h.unexpected.count, 1, "{:?}", f.h.unexpected);
    assert!(f.h.unexpected.has("honest-answer-refused"));
}

fn feed(entries: &[(u64, &SignedEntry)], head_seq: u64) -> FeedView {
    FeedView { head_seq, entries: entries.iter().map(|(s, e)| (*s, EntryView::of(e))).collect() }
}

#[test]
fn replica_lacking_an_entry_or_behind_the_head__is_lost() {
    let mut f = fixture();
    let e10 = f.ack(10, EntryBody::Plan(plan()), f.t0);
    let mut other = plan();
    other.reference = PlanRef::parse("REF-2").unwrap();
    let e20 = f.ack(20, EntryBody::Plan(other), f.t0);
    let feeds = BTreeMap::from([(f.a, feed(&[(10, &e10), (20, &e20)], 20))]);
    let view = HubView {
        hub: f.hub,
        now: Timestamp(f.t0),
        replicas: BTreeMap::from([(f.a, feed(&[(10, &e10)], 10))]),
        visits: BTreeSet::new(),
    };
    f.h.check_hubs(&feeds, [view].into_iter());
    assert!(f.h.lost.has("replica"), "{:?}", f.h.lost);
    assert_eq!(f.h.lost.count, 2, "the head and the entry: {:?}", f.h.lost);
}

#[test]
fn a_clean_history__passes() {
    let mut f = fixture();
    let e10 = f.ack(10, EntryBody::Plan(plan()), f.t0);
    let lookup = LookupId([6; 16]);
    f.answered(lookup, true);
    f.inbox(lookup, "REF-1");
    f.received(lookup);
    f.answer(f.hub, 10, f.t0, AuthorityStatus::Checked { as_of: Timestamp(f.t0) }, vec![plan()], f.t0 + MINUTE);
    f.h.check_notifications(&[(f.a, Some(BTreeSet::from([lookup])))]);
    let feeds = BTreeMap::from([(f.a, feed(&[(10, &e10)], 10))]);
    let views: Vec<HubView> =
        f.w.hubs
            .clone()
            .map(|hub| HubView {
                hub,
                now: Timestamp(f.t0),
                replicas: BTreeMap::from([(f.a, feed(&[(10, &e10)], 10))]),
                visits: BTreeSet::new(),
            })
            .collect();
    f.h.check_hubs(&feeds, views.into_iter());
    assert!(f.h.lost.is_empty() && f.h.unexpected.is_empty(), "{:?} {:?}", f.h.lost, f.h.unexpected);
}
