//! Scenario tests on the in-crate harness: the role machines over a simulated network.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_protocol::authority::{Change, CommandError, RowOutcome};
use cpis_protocol::directory::{AdmissionError, DirectoryError, KeyStatus, MemberKey, SignedDirectory};
use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead, SignedEntry};
use cpis_protocol::harness::{FederationSpec, Net, NetConfig, TestFederation, code};
use cpis_protocol::hub::{HubConfig, REDELIVER_PAGE_MAX};
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::machine::{Command, Event, Reply, RoleConfig};
use cpis_protocol::records::{AccessEvent, Person, Plan, PlanError, PlanType, SettingType};
use cpis_protocol::refusal::{Refusal, RefusalCode};
use cpis_protocol::schema::{self, Table, WriteBatch};
use cpis_protocol::setting::{AnswerError, AuthorityStatus, VerifiedAnswer};
use cpis_protocol::sign::Signed;
use cpis_protocol::time::{DAY_MS, Date, Timestamp};
use cpis_protocol::wire::{FeedBatch, Mark, Message, Notification};

const CHILD: &str = "9434765919";
const OTHER_CHILD: &str = "4010232137";
const THIRD_CHILD: &str = "4857773457";

fn federation() -> TestFederation {
    FederationSpec::new("scenarios")
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("E5A1B", "Brighton and Hove", &["HUBS"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS"])
        .setting("RXH02", "Brighton Walk-in Centre", SettingType::WalkInCentre, &["HUBS"])
        .setting("GP001", "Hove Medical Practice", SettingType::GeneralPractice, &["HUBS"])
        .build()
}

fn nhs(text: &str) -> NhsNumber {
    NhsNumber::parse(text).unwrap()
}

fn plan(reference: &str, child: &str, plan_type: PlanType) -> Plan {
    Plan {
        reference: PlanRef::parse(reference).unwrap(),
        nhs: nhs(child),
        plan_type,
        start: Date::parse("2026-01-05").unwrap(),
        end: None,
        due: None,
        withdrawn: false,
    }
}

fn net() -> Net {
    Net::new(federation(), NetConfig::default())
}

fn record(net: &mut Net, authority: &str, p: Plan) {
    let reply = net.command(authority, Command::RecordPlan(p));
    assert_eq!(reply, Some(Reply::Changed(Change::Applied)));
}

fn verified(net: &Net, setting: &str, lookup: LookupId) -> VerifiedAnswer {
    net.verified(setting, lookup).unwrap_or_else(|e| panic!("the answer did not verify: {e}"))
}

/// Plans an answer shows: (authority, reference).
fn shown(v: &VerifiedAnswer) -> Vec<(String, String)> {
    v.plans().map(|(a, p)| (a.code.to_string(), p.reference.to_string())).collect()
}

fn inbox_len(net: &Net, authority: &str) -> usize {
    net.authority(authority).inbox_counts().0
}

/// Whether a hub's replica of `authority` publishes a plan for `child`.
fn hub_holds(net: &Net, hub: &str, authority: &str, child: &str) -> bool {
    net.hub(hub).replicas().get(&code(authority)).is_some_and(|r| !r.feed().plans_of(nhs(child)).is_empty())
}

fn refused<'a>(net: &'a Net, node: &str, f: impl Fn(&Refusal) -> bool + 'a) -> usize {
    net.events_of(node, |e| match e {
        Event::BatchRefused { reason, .. }
        | Event::LookupRefused { reason, .. }
        | Event::MessageRefused { reason, .. } => f(reason),
        _ => false,
    })
    .len()
}

#[test]
fn replication__authority_to_home_hub_to_far_hub__plan_held_at_both_under_the_authoritys_head() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    assert!(hub_holds(&net, "HUBN", "204", CHILD), "home hub holds the plan");
    assert!(hub_holds(&net, "HUBS", "204", CHILD), "far hub holds the plan via the home hub");
    let head = net.authority("204").head().unwrap().body.clone();
    for hub in ["HUBN", "HUBS"] {
        assert_eq!(net.hub(hub).replicas()[&code("204")].head().map(|h| h.body.seq), Some(head.seq));
    }
}

#[test]
fn lookup_at_far_hub__two_authorities__plans_contacts_history_and_every_other_authority_proven_empty() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "E5A1B", plan("CPP-9", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let first = net.lookup("RXH02", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let v = verified(&net, "RXH01", lookup);
    let mut plans = shown(&v);
    plans.sort();
    assert_eq!(plans, vec![("204".into(), "LAC-1".into()), ("E5A1B".into(), "CPP-9".into())]);
    assert!(v.authorities.iter().all(|a| a.checked()), "every authority's fresh head was checked");
    assert!(!v.no_records());
    let hackney = v.authorities.iter().find(|a| a.code.as_str() == "204").unwrap();
    assert_eq!(hackney.contacts.as_ref().unwrap().out_of_hours_phone, "020 7000 0001");
    assert_eq!(v.history.len(), 1, "the walk-in centre's visit");
    assert_eq!(v.history[0].setting.as_str(), "RXH02");
    let _ = first;
}

#[test]
fn child_with_no_plan__every_fresh_head_proves_absence__no_records() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(1_000);
    let v = verified(&net, "RXH01", lookup);
    assert!(v.no_records());
    assert_eq!(v.authorities.len(), 3);
}

#[test]
fn unscheduled_lookup__each_owning_authority__notified_exactly_once() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(inbox_len(&net, "316"), 1);
    assert_eq!(inbox_len(&net, "E5A1B"), 0);
}

#[test]
fn lookup_kind_follows_the_setting_type_in_the_directory__a_gp_lookup_is_scheduled() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let scheduled = net.lookup("GP001", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    assert_eq!(shown(&verified(&net, "GP001", scheduled)).len(), 1, "a scheduled lookup still sees the plan");
    assert_eq!(inbox_len(&net, "204"), 0, "but notifies no one");
    assert!(net.hub("HUBS").history(nhs(CHILD)).is_empty(), "nor enters the history");
    assert!(net.disk("HUBS").table(Table::AccessLog).count() == 1, "it is audited");
}

#[test]
fn hub_partitioned_from_owner__lookup_answered__notice_delivered_once_on_heal() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.isolate("204");
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    assert_eq!(shown(&verified(&net, "RXH01", lookup)).len(), 1, "answered from the replica");
    assert_eq!(inbox_len(&net, "204"), 0);
    net.heal();
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 1);
}

#[test]
fn owner_offline_past_stale_after__its_plans_shown_as_of_its_head__unavailable_never_no_records() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.run_for(20 * 60_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let v = verified(&net, "RXH01", lookup);
    let hackney = v.authorities.iter().find(|a| a.code.as_str() == "204").unwrap();
    assert!(matches!(hackney.status, AuthorityStatus::Stale { .. }), "{:?}", hackney.status);
    assert_eq!(hackney.plans.len(), 1, "its plan still shows, as of its last head");
    let nobody = net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(1_000);
    let v = verified(&net, "RXH01", nobody);
    assert!(!v.no_records(), "absence at Hackney is not proven now");
    assert_eq!(v.unavailable().map(|a| a.code.to_string()).collect::<Vec<_>>(), vec!["204".to_string()]);
}

#[test]
fn notification_waiting_past_limit__reported_overdue_once() {
    let mut cfg = NetConfig::default();
    cfg.hub.overdue_after_ms = 60_000;
    let mut net = Net::new(federation(), cfg);
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(600_000);
    assert_eq!(net.events_of("HUBS", |e| matches!(e, Event::NotificationOverdue { .. })).len(), 1);
}

#[test]
fn authority_crashes_and_restarts__notification_delivered_once_after_restart() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    net.restart("204");
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(net.authority("204").plans().count(), 1, "its plans survived the crash");
}

#[test]
fn hub_crashes_before_lookup_is_durable__no_answer_released__nothing_half_done() {
    let cfg = NetConfig { durable_delay_ms: 500, ..Default::default() };
    let mut net = Net::new(federation(), cfg);
    net.command("204", Command::RecordPlan(plan("LAC-1", CHILD, PlanType::LookedAfter)));
    net.run_for(5_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(100); // delivered, but its write is not yet durable
    net.crash("HUBS");
    net.run_for(5_000);
    assert!(net.reply_to(lookup).is_none(), "no answer before the access event is durable");
    net.restart("HUBS");
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 0, "an unanswered lookup leaves no notification");
}

#[test]
fn hub_crashes_after_answering__notification_survives_and_is_delivered() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(5_000);
    assert!(matches!(net.reply_to(lookup), Some(Message::Answer(_))));
    net.crash("HUBS");
    net.restart("204");
    net.run_for(5_000);
    net.restart("HUBS");
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 1);
}

#[test]
fn ended_plan__shown_until_its_window_passes__then_removed_from_every_hub() {
    let mut net = net();
    let today = net.now.date();
    let mut p = plan("CPP-1", CHILD, PlanType::ChildProtection);
    p.start = today.plus_days(-400);
    p.end = Some(today.plus_days(-365));
    record(&mut net, "204", p);
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    assert_eq!(shown(&verified(&net, "RXH01", lookup)).len(), 1, "shown on the last day of its window");
    net.run_for(DAY_MS);
    assert!(!hub_holds(&net, "HUBS", "204", CHILD), "removed once past it");
    let later = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    assert!(shown(&verified(&net, "RXH01", later)).is_empty());
}

#[test]
fn withdrawn_plan__disappears_everywhere__no_notification() {
    let mut net = net();
    record(&mut net, "204", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    net.command("204", Command::WithdrawPlan(PlanRef::parse("CPP-1").unwrap()));
    net.run_for(2_000);
    assert!(!hub_holds(&net, "HUBS", "204", CHILD));
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    assert!(verified(&net, "RXH01", lookup).no_records());
    assert_eq!(inbox_len(&net, "204"), 0, "no plan, no notification");
    assert!(net.authority("204").plan(&PlanRef::parse("CPP-1").unwrap()).is_some_and(|p| p.withdrawn));
}

fn entry(fed: &TestFederation, origin: &str, signer: &str, seq: u64, p: Plan) -> SignedEntry {
    let body = FeedEntry { origin: code(origin), seq, at: fed.start, body: EntryBody::Plan(p) };
    fed.identity(signer).sign(body)
}

#[test]
fn summary_signed_by_wrong_authority__refused__nothing_changes() {
    let mut net = net();
    net.run_for(1_000);
    let fed = net.fed.clone();
    let head = net.authority("204").head().unwrap().clone();
    let forged = entry(&fed, "204", "E5A1B", head.body.seq + 1, plan("FAKE-1", OTHER_CHILD, PlanType::ChildProtection));
    let batch = FeedBatch {
        origin: code("204"),
        after: head.body.seq,
        upto: head.body.seq,
        entries: vec![forged],
        head: Some(head),
        more: false,
    };
    let before = net.disk("HUBN").clone();
    net.send_as("HUBS", "HUBN", Message::Feed(batch));
    net.run_for(1_000);
    assert_eq!(net.disk("HUBN"), &before);
    assert!(!hub_holds(&net, "HUBN", "204", OTHER_CHILD));
    assert_eq!(refused(&net, "HUBN", |r| matches!(r, Refusal::EntryOrder { .. } | Refusal::Entry(_))), 1);
}

#[test]
fn relaying_hub_omits_an_entry__run_refused__replica_unchanged__fetched_whole_from_another() {
    let fed = FederationSpec::new("omission")
        .hub("HUBA")
        .hub("HUBB")
        .hub("HUBC")
        .authority("204", "Hackney", &["HUBA"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBC"])
        .build();
    let mut net = Net::new(fed, NetConfig::default());
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    // HUBC is cut from the authority's home hub; two changes follow; HUBB relays only the second.
    net.cut("HUBA", "HUBC");
    net.cut("HUBB", "HUBC");
    record(&mut net, "204", plan("CPP-2", OTHER_CHILD, PlanType::ChildProtection));
    net.command("204", Command::WithdrawPlan(PlanRef::parse("LAC-1").unwrap()));
    net.run_for(2_000);
    let mark = net.hub("HUBC").replicas()[&code("204")].seq();
    let feed = net.authority("204").feed().clone();
    let head = net.authority("204").head().unwrap().clone();
    let last: Vec<SignedEntry> = feed.entries_after(mark).skip(1).cloned().collect();
    let omission = FeedBatch {
        origin: code("204"),
        after: mark,
        upto: head.body.seq,
        entries: last,
        head: Some(head),
        more: false,
    };
    net.heal();
    net.cut("HUBA", "HUBC");
    let before = net.disk("HUBC").clone();
    net.with_machine("HUBC", |m, now| m.handle_message(&code("HUBB"), Message::Feed(omission), now));
    assert_eq!(refused(&net, "HUBC", |r| matches!(r, Refusal::HeadMismatch { .. })), 1);
    assert_eq!(net.hub("HUBC").replicas()[&code("204")].seq(), mark, "the mark did not move past the gap");
    assert_eq!(net.disk("HUBC").table(Table::Entries).count(), before.table(Table::Entries).count());
    net.run_for(5_000);
    assert!(hub_holds(&net, "HUBC", "204", OTHER_CHILD), "the whole run came from an honest peer");
    assert!(!hub_holds(&net, "HUBC", "204", CHILD), "and the withdrawal with it");
}

#[test]
fn hub_answer_omitting_a_plan__proof_fails__setting_refuses_the_answer() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let Some(Message::Answer(mut answer)) = net.reply_to(lookup).cloned() else { panic!("no answer") };
    let hackney = answer.authorities.iter_mut().find(|a| a.head.body.origin.as_str() == "204").unwrap();
    hackney.plans.clear();
    hackney.contacts = None;
    let mut setting = net.setting("RXH01");
    let event = setting.lookup(nhs(CHILD), person(), lookup, net.now).unwrap().body;
    assert!(matches!(setting.verify_answer(&event, answer, net.now), Err(AnswerError::Proof { .. })));
}

#[test]
fn visit_checked_once__another_under_its_signature_refused__all_checked_again_after_a_revocation() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.lookup("RXH02", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let Some(Message::Answer(answer)) = net.reply_to(lookup).cloned() else { panic!("no answer") };
    let mut setting = net.setting("RXH01");
    let event = setting.lookup(nhs(CHILD), person(), lookup, net.now).unwrap().body;
    let shown = setting.verify_answer(&event, answer.clone(), net.now).unwrap().history;
    assert_eq!(shown.len(), 1, "the walk-in centre's visit");
    // The hub's signature on a visit the setting already took, under another role.
    let mut forged = answer.clone();
    let EntryBody::Visit(visit) = &mut forged.history[0].body.body else { panic!("not a visit") };
    visit.body.person.role = "Receptionist".into();
    assert!(matches!(setting.verify_answer(&event, forged, net.now), Err(AnswerError::Record(_))));
    assert_eq!(setting.verify_answer(&event, answer.clone(), net.now).unwrap().history, shown);
    // The hub's key is revoked: the visit it signed is no longer taken.
    let current = net.hub("HUBS").directory().directory().clone();
    let at = net.now;
    let v2 = net.fed.next_directory(&current, |d| {
        let hub = d.members.iter_mut().find(|m| m.code.as_str() == "HUBS").unwrap();
        hub.keys[0].status = KeyStatus::Revoked { at };
    });
    setting.handle_directories(vec![v2], net.now).unwrap();
    assert!(matches!(setting.verify_answer(&event, answer, net.now), Err(AnswerError::Record(_))));
}

fn person() -> Person {
    Person { id: "U1".into(), name: "Dr A Clinician".into(), role: "Nurse".into() }
}

#[test]
fn hub_answer_leaving_an_authority_out__shown_unavailable_with_its_phones__never_no_records() {
    let mut net = net();
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(1_000);
    let Some(Message::Answer(mut answer)) = net.reply_to(lookup).cloned() else { panic!("no answer") };
    answer.authorities.retain(|a| a.head.body.origin.as_str() != "316");
    let mut setting = net.setting("RXH01");
    let event = setting.lookup(nhs(OTHER_CHILD), person(), lookup, net.now).unwrap().body;
    let v = setting.verify_answer(&event, answer, net.now).unwrap();
    assert!(!v.no_records());
    let newham: Vec<_> = v.unavailable().collect();
    assert_eq!(newham.len(), 1);
    assert_eq!(newham[0].contacts.as_ref().unwrap().office_phone, "020 7000 0000");
}

#[test]
fn hub_serving_an_old_head_from_before_a_withdrawal__shown_stale__never_as_current() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let old_lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let Some(Message::Answer(old)) = net.reply_to(old_lookup).cloned() else { panic!("no answer") };
    net.command("204", Command::WithdrawPlan(PlanRef::parse("LAC-1").unwrap()));
    net.run_for(20 * 60_000);
    // A hostile hub replays the old answer's Hackney part for a new lookup.
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let Some(Message::Answer(mut answer)) = net.reply_to(lookup).cloned() else { panic!("no answer") };
    let stale = old.authorities.into_iter().find(|a| a.head.body.origin.as_str() == "204").unwrap();
    answer.authorities.retain(|a| a.head.body.origin.as_str() != "204");
    answer.authorities.push(stale);
    let mut setting = net.setting("RXH01");
    let event = setting.lookup(nhs(CHILD), person(), lookup, net.now).unwrap().body;
    let v = setting.verify_answer(&event, answer, net.now).unwrap();
    let hackney = v.authorities.iter().find(|a| a.code.as_str() == "204").unwrap();
    assert!(matches!(hackney.status, AuthorityStatus::Stale { .. }), "the old head is seen for what it is");
    assert!(!v.no_records());
}

#[test]
fn head_claiming_a_future_time__refused_by_hubs__nothing_changes() {
    let mut net = net();
    net.run_for(2_000);
    let fed = net.fed.clone();
    let mut head: FeedHead = net.authority("204").head().unwrap().body.clone();
    head.at = head.at.plus_ms(DAY_MS);
    let forged = fed.identity("204").sign(head);
    let before = net.disk("HUBN").clone();
    net.send_as("HUBS", "HUBN", Message::Head(forged));
    net.run_for(1_000);
    assert_eq!(refused(&net, "HUBN", |r| matches!(r, Refusal::HeadFromTheFuture { .. })), 1);
    assert_eq!(net.disk("HUBN"), &before);
}

#[test]
fn two_heads_with_one_sequence__equivocation_proven_and_kept() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let mut head: FeedHead = net.authority("204").head().unwrap().body.clone();
    head.children += 1;
    let other = fed.identity("204").sign(head);
    net.send_as("HUBS", "HUBN", Message::Head(other));
    net.run_for(1_000);
    assert_eq!(net.events_of("HUBN", |e| matches!(e, Event::Equivocation { .. })).len(), 1);
    assert!(net.disk("HUBN").table(Table::Equivocations).count() == 1, "proof kept");
}

#[test]
fn visits_relayed_by_a_third_hub__refused() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let visit = net.hub("HUBS").history(nhs(CHILD))[0].clone();
    let batch = FeedBatch {
        origin: code("HUBS"),
        after: 0,
        upto: visit.body.seq,
        entries: vec![visit],
        head: None,
        more: false,
    };
    // HUBN forwards HUBS's visit to... HUBN itself is the receiver here: sent as if from 204's hub.
    net.send_as("204", "HUBN", Message::Feed(batch));
    net.run_for(1_000);
    assert!(refused(&net, "HUBN", |r| matches!(r, Refusal::NotOwnFeed | Refusal::RelayedVisits(_))) >= 1);
}

#[test]
fn a_hub_wrapping_one_lookup_in_several_visits_of_its_own__only_the_first_is_kept() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    // HUBN, hostile, wraps the access event of HUBS's visit in three visits of its own.
    let visit = net.hub("HUBS").history(nhs(CHILD))[0].clone();
    let fed = net.fed.clone();
    let wrap = |seq| {
        let mut entry = visit.body.clone();
        (entry.origin, entry.seq) = (code("HUBN"), seq);
        fed.identity("HUBN").sign(entry)
    };
    let stored = |net: &Net| net.disk("HUBS").table(Table::Entries).count();
    let before = stored(&net);
    let first =
        FeedBatch { origin: code("HUBN"), after: 0, upto: 2, entries: vec![wrap(1), wrap(2)], head: None, more: false };
    net.send_as("HUBN", "HUBS", Message::Feed(first));
    net.run_for(1_000);
    let again = FeedBatch { origin: code("HUBN"), after: 2, upto: 3, entries: vec![wrap(3)], head: None, more: false };
    net.send_as("HUBN", "HUBS", Message::Feed(again));
    net.run_for(1_000);
    assert_eq!(stored(&net) - before, 1, "one visit of that lookup from HUBN, the first");
}

#[test]
fn a_run_begun_with_an_entry_its_origin_did_not_sign__refused_before_it_is_kept() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let held = net.hub("HUBN").replicas()[&code("204")].feed().entries().next().unwrap().clone();
    // A later entry of Hackney's in a run with no head yet, its signature Hackney's over another body.
    let mut forged = held.clone();
    forged.body.seq = held.body.seq + 1;
    let batch = FeedBatch {
        origin: code("204"),
        after: held.body.seq,
        upto: held.body.seq + 10,
        entries: vec![forged],
        head: None,
        more: true,
    };
    let before = refused(&net, "HUBN", |_| true);
    net.send_as("HUBS", "HUBN", Message::Feed(batch));
    net.run_for(100);
    assert_eq!(refused(&net, "HUBN", |_| true) - before, 1, "refused as it comes, not kept for its head");
}

#[test]
fn record_signed_after_its_key_was_retired__refused() {
    let mut net = net();
    net.run_for(2_000);
    let fed = net.fed.clone();
    let current = net.hub("HUBN").directory().directory().clone();
    let retired_at = net.now;
    let v2 = fed.next_directory(&current, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == "E5A1B").unwrap();
        m.keys[0].status = KeyStatus::Retired { at: retired_at };
    });
    assert_eq!(net.command("HUBN", Command::PublishDirectories(vec![v2])), Some(Reply::Directory { version: 2 }));
    net.run_for(2_000);
    let mut head = net.authority("E5A1B").head().unwrap().body.clone();
    head.at = retired_at.plus_ms(1_000);
    head.seq += 1;
    let after_retirement = fed.identity("E5A1B").sign(head);
    net.send_as("HUBS", "HUBN", Message::Head(after_retirement));
    net.run_for(1_000);
    assert!(refused(&net, "HUBN", |r| matches!(r, Refusal::Head { .. })) >= 1);
}

#[test]
fn a_different_directory_with_the_trusted_version_and_valid_signatures__refused_as_a_fork__the_trusted_one_kept() {
    let mut net = net();
    net.run_for(1_000);
    let fed = net.fed.clone();
    let current = net.hub("HUBN").directory().directory().clone();
    let v2 = fed.next_directory(&current, |_| {});
    assert_eq!(
        net.command("HUBN", Command::PublishDirectories(vec![v2.clone()])),
        Some(Reply::Directory { version: 2 })
    );
    net.run_for(2_000);
    let forked = fed.next_directory(&current, |d| d.members.retain(|m| m.code.as_str() != "RXH01"));
    let reply = net.command("HUBN", Command::PublishDirectories(vec![forked.clone()]));
    let forked_at_2 = |r: &Option<Reply>| {
        matches!(r, Some(Reply::Refused(CommandError::Directory(DirectoryError::Forked { version: 2 }))))
    };
    assert!(forked_at_2(&reply), "{reply:?}");
    // From a peer hub: refused the same way, as an event.
    net.send_as("HUBS", "HUBN", Message::Directories(vec![forked.clone()]));
    net.run_for(1_000);
    let forks =
        net.events_of("HUBN", |e| matches!(e, Event::DirectoryRefused { reason: DirectoryError::Forked { .. }, .. }));
    let forks = forks.len();
    assert_eq!(forks, 2, "the fork posted by an operator and the one sent by a peer are both reported");
    // Without the roots' signatures it proves nothing: ignored, as any older version.
    let unsigned = SignedDirectory { signatures: vec![], ..forked.clone() };
    assert_eq!(net.command("HUBN", Command::PublishDirectories(vec![unsigned])), Some(Reply::Directory { version: 2 }));
    // The trusted version again (the same content): nothing happens.
    assert_eq!(net.command("HUBN", Command::PublishDirectories(vec![v2])), Some(Reply::Directory { version: 2 }));
    assert!(net.hub("HUBN").directory().member(&code("RXH01")).is_some(), "the trusted version is kept");
    // After a restart, the fork is still recognised.
    net.crash("HUBN");
    net.restart("HUBN");
    net.run_for(1_000);
    let reply = net.command("HUBN", Command::PublishDirectories(vec![forked]));
    assert!(forked_at_2(&reply), "after a restart: {reply:?}");
}

#[test]
fn two_hubs_given_different_versions_with_one_number_while_apart__each_finds_the_fork_by_the_others_digest() {
    let mut net = net();
    net.run_for(1_000);
    let fed = net.fed.clone();
    let current = net.hub("HUBN").directory().directory().clone();
    // While the hubs cannot reach each other, each is given its own version 2.
    net.cut("HUBN", "HUBS");
    let v2 = fed.next_directory(&current, |_| {});
    let other = fed.next_directory(&current, |d| d.members.retain(|m| m.code.as_str() != "RXH02"));
    assert_eq!(net.command("HUBN", Command::PublishDirectories(vec![v2])), Some(Reply::Directory { version: 2 }));
    assert_eq!(net.command("HUBS", Command::PublishDirectories(vec![other])), Some(Reply::Directory { version: 2 }));
    net.run_for(2_000);
    net.heal();
    net.run_for(3 * net.config.hub.sync_interval_ms);
    for hub in ["HUBN", "HUBS"] {
        let forks =
            net.events_of(hub, |e| matches!(e, Event::DirectoryRefused { reason: DirectoryError::Forked { .. }, .. }));
        assert_eq!(forks.len(), 1, "{hub} finds the fork once");
    }
    assert!(net.hub("HUBN").directory().member(&code("RXH02")).is_some(), "each keeps its own version");
    assert!(net.hub("HUBS").directory().member(&code("RXH02")).is_none());
}

/// RXH01 connected to HUBS (it made a lookup there), then HUBS given a directory version in
/// which `change` was made to RXH01's key at the time `now`.
fn connected_setting_key_changed(change: impl Fn(&mut MemberKey, Timestamp)) -> Net {
    let mut net = net();
    net.run_for(1_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let current = net.hub("HUBS").directory().directory().clone();
    let now = net.now;
    let v2 = net.fed.next_directory(&current, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == "RXH01").unwrap();
        change(&mut m.keys[0], now);
    });
    net.command("HUBS", Command::PublishDirectories(vec![v2]));
    net
}

#[test]
fn setting_connection_opened_before_its_key_was_revoked__closed_at_once() {
    let mut net = connected_setting_key_changed(|key, now| key.status = KeyStatus::Revoked { at: now });
    net.run_for(2_000);
    let closed =
        net.events_of("HUBS", |e| matches!(e, Event::PeerNotAdmitted { peer, .. } if peer.as_str() == "RXH01"));
    assert_eq!(closed.len(), 1);
    assert!(net.hub("HUBS").peers().all(|(p, _)| p.as_str() != "RXH01"));
}

#[test]
fn setting_connection_whose_key_window_ends__closed_when_it_ends_not_before() {
    let mut net = connected_setting_key_changed(|key, now| key.valid_until = now.plus_ms(10_000));
    let closed = |net: &Net| {
        let outside = |e: &Event| {
            matches!(e, Event::PeerNotAdmitted { peer, reason: AdmissionError::OutsideWindow { .. } }
                if peer.as_str() == "RXH01")
        };
        net.events_of("HUBS", outside).len()
    };
    net.run_for(7_000);
    assert_eq!(closed(&net), 0, "admitted until its window ends");
    assert!(net.hub("HUBS").peers().any(|(p, _)| p.as_str() == "RXH01"));
    net.run_for(5_000);
    assert!(closed(&net) >= 1, "closed once its window ended");
    assert!(net.hub("HUBS").peers().all(|(p, _)| p.as_str() != "RXH01"));
}

#[test]
fn unproven_sync_claim_about_an_authoritys_own_feed__changes_nothing_there() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let seq = net.authority("204").last_seq();
    let before = net.disk("204").clone();
    let claim = Mark { origin: code("204"), seq: 1 << 47, head_at: net.now };
    net.send_as("HUBN", "204", Message::Sync { directory_version: 1, marks: vec![claim] });
    net.run_for(100);
    assert_eq!(net.authority("204").last_seq(), seq, "no jump of the sequence");
    assert_eq!(
        net.disk("204").table(Table::Entries).count(),
        before.table(Table::Entries).count(),
        "nothing re-signed"
    );
}

#[test]
fn setting_over_its_rate_limit__refused_with_an_alarm__nothing_stored() {
    let mut cfg = NetConfig::default();
    cfg.hub.person_lookups_per_hour = 3;
    let mut net = Net::new(federation(), cfg);
    net.run_for(1_000);
    let ids: Vec<LookupId> = (0..4).map(|_| net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD))).collect();
    net.run_for(1_000);
    let answered = ids.iter().filter(|l| matches!(net.reply_to(**l), Some(Message::Answer(_)))).count();
    let limited = ids
        .iter()
        .filter(|l| matches!(net.reply_to(**l), Some(Message::Refused(r)) if r.code == RefusalCode::RateLimited))
        .count();
    assert_eq!((answered, limited), (3, 1));
    assert_eq!(net.events_of("HUBS", |e| matches!(e, Event::RateLimited { per_person: true, .. })).len(), 1);
    assert_eq!(net.disk("HUBS").table(Table::AccessLog).count(), 3);
}

#[test]
fn invented_notifications__refused_by_the_authority__inbox_unchanged() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let notify = |setting: &str, child: &str, matched: &str, at| {
        let event = fed.identity(setting).sign(cpis_protocol::records::AccessEvent {
            lookup_id: LookupId([child.as_bytes()[0]; 16]),
            setting: code(setting),
            person: person(),
            at,
            nhs: nhs(child),
        });
        let n = cpis_protocol::wire::Notification {
            event,
            authority: code("204"),
            matched: vec![PlanRef::parse(matched).unwrap()],
            hub: code("HUBN"),
            answered_at: at,
            signed_at: at,
        };
        Message::Notify(fed.identity("HUBN").sign(n))
    };
    let now = net.now;
    net.send_as("HUBN", "204", notify("RXH01", OTHER_CHILD, "LAC-1", now)); // a child Hackney has no plan for
    net.send_as("HUBN", "204", notify("RXH01", CHILD, "LAC-99", now)); // a plan it never had
    net.send_as("HUBN", "204", notify("GP001", CHILD, "LAC-1", now)); // a scheduled lookup
    net.send_as("HUBN", "204", notify("RXH01", CHILD, "LAC-1", now.minus_ms(40 * DAY_MS))); // older than the window
    net.run_for(1_000);
    assert_eq!(inbox_len(&net, "204"), 0);
    for (what, n) in [
        ("no matching plan", refused(&net, "204", |r| *r == Refusal::NoMatchingPlan)),
        ("matches differ", refused(&net, "204", |r| *r == Refusal::MatchesDiffer)),
        ("scheduled", refused(&net, "204", |r| *r == Refusal::Scheduled)),
        ("too old", refused(&net, "204", |r| matches!(r, Refusal::TooOld { .. }))),
    ] {
        assert_eq!(n, 1, "{what}");
    }
}

#[test]
fn plan_moved_to_a_corrected_nhs_number__notifications_match_the_new_number_only__also_after_a_restart() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", OTHER_CHILD, PlanType::LookedAfter));
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter)); // the number corrected
    net.run_for(2_000);
    let fed = net.fed.clone();
    let notify = |child: &str, id: u8, at| {
        let event = fed.identity("RXH01").sign(cpis_protocol::records::AccessEvent {
            lookup_id: LookupId([id; 16]),
            setting: code("RXH01"),
            person: person(),
            at,
            nhs: nhs(child),
        });
        let n = cpis_protocol::wire::Notification {
            event,
            authority: code("204"),
            matched: vec![PlanRef::parse("LAC-1").unwrap()],
            hub: code("HUBN"),
            answered_at: at,
            signed_at: at,
        };
        Message::Notify(fed.identity("HUBN").sign(n))
    };
    let now = net.now;
    net.send_as("HUBN", "204", notify(OTHER_CHILD, 1, now));
    net.send_as("HUBN", "204", notify(CHILD, 2, now));
    net.run_for(1_000);
    assert_eq!(refused(&net, "204", |r| *r == Refusal::NoMatchingPlan), 1, "the old number no longer matches");
    assert_eq!(inbox_len(&net, "204"), 1, "the corrected number does");
    net.crash("204");
    net.restart("204");
    net.run_for(1_000);
    let now = net.now;
    net.send_as("HUBN", "204", notify(OTHER_CHILD, 3, now));
    net.send_as("HUBN", "204", notify(CHILD, 4, now));
    net.run_for(1_000);
    assert_eq!(inbox_len(&net, "204"), 2, "restored from its store: the corrected number matches");
    assert!(net.authority("204").inbox_state(&LookupId([3; 16])).is_none(), "and the old one does not");
    assert!(net.authority("204").inbox_state(&LookupId([4; 16])).is_some());
}

#[test]
fn plan_ended_with_a_past_date_while_a_hub_was_cut_off__its_notification_is_still_taken() {
    let mut net = net();
    let mut p = plan("CPP-1", CHILD, PlanType::ChildProtection);
    p.start = net.now.date().plus_days(-500);
    record(&mut net, "204", p);
    net.run_for(2_000);
    net.cut("HUBS", "HUBN");
    // The plan ended long ago, recorded only now: past its window, shown nowhere from now on.
    let long_ago = net.now.date().plus_days(-400);
    let reply = net.command("204", Command::EndPlan { reference: PlanRef::parse("CPP-1").unwrap(), end: long_ago });
    assert_eq!(reply, Some(Reply::Changed(Change::Applied)));
    net.run_for(2_000);
    assert!(!hub_holds(&net, "HUBN", "204", CHILD), "the connected hub no longer shows it");
    // The cut-off hub still holds the open plan, answers with it, and owes Hackney a notice.
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    assert_eq!(shown(&verified(&net, "RXH01", lookup)), vec![("204".into(), "CPP-1".into())]);
    net.heal();
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 1, "the lookup happened: the later end does not undo it");
    assert_eq!(refused(&net, "204", |r| *r == Refusal::NoMatchingPlan), 0);
    assert!(net.hub("HUBS").outbox_depths().values().all(|n| *n == 0), "nothing left waiting");
}

#[test]
fn authority_equivocates__second_entry_refused__proof_kept__alarm_raised() {
    let mut net = net();
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let held = net.hub("HUBS").replicas()[&code("316")].feed().plans_of(nhs(CHILD))[0].clone();
    let other = entry(&fed, "316", "316", held.body.seq, plan("CPP-1", OTHER_CHILD, PlanType::ChildProtection));
    let mut head = net.authority("316").head().unwrap().body.clone();
    head.seq += 1;
    let head = fed.identity("316").sign(head);
    let batch = FeedBatch {
        origin: code("316"),
        after: held.body.seq - 1,
        upto: head.body.seq,
        entries: vec![other],
        head: Some(head),
        more: false,
    };
    net.send_as("HUBN", "HUBS", Message::Feed(batch));
    net.run_for(1_000);
    assert_eq!(net.events_of("HUBS", |e| matches!(e, Event::Equivocation { .. })).len(), 1);
    assert!(net.disk("HUBS").table(Table::Equivocations).count() == 1, "proof kept");
    assert!(hub_holds(&net, "HUBS", "316", CHILD), "the first entry stands");
}

#[test]
fn same_signed_lookup_sent_again__answered_again__no_second_notification_or_visit() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let (_, row) = net.disk("HUBS").table(Table::AccessLog).next().map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap();
    let signed: cpis_protocol::sign::Signed<cpis_protocol::records::AccessEvent> =
        cpis_protocol::codec::decode(&row, 1 << 20).unwrap();
    net.send_from_setting("RXH01", "HUBS", Message::Lookup(signed));
    net.run_for(60_000);
    let answers = net.received.iter().filter(|r| matches!(&r.message, Message::Answer(a) if a.lookup_id == lookup));
    assert_eq!(answers.count(), 2, "a setting retrying after a lost answer gets it again");
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(net.disk("HUBS").table(Table::AccessLog).count(), 1);
    assert_eq!(net.hub("HUBS").history(nhs(CHILD)).len(), 1);
}

#[test]
fn replayed_lookup_id_with_other_content__refused__nothing_changes() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let replay = net.setting("RXH01").lookup(nhs(OTHER_CHILD), person(), lookup, net.now).unwrap();
    let before = net.disk("HUBS").clone();
    net.send_from_setting("RXH01", "HUBS", Message::Lookup(replay));
    net.run_for(60_000);
    assert_eq!(refused(&net, "HUBS", |r| matches!(r, Refusal::Replayed(_))), 1);
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(net.disk("HUBS").table(Table::AccessLog).count(), before.table(Table::AccessLog).count());
}

#[test]
fn hub_restarted__recent_lookups_still_refused_as_replays__older_records_kept_on_disk_not_read() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    // Answered more than three times the clock skew before the restart: its own time is then
    // more than twice the skew before it, outside the replay window.
    net.run_for(net.config.hub.clock_skew_max_ms * 3 + 60_000);
    let recent = net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(2_000);
    net.crash("HUBS");
    net.restart("HUBS");

    let config = RoleConfig::Hub(net.config.hub.clone());
    let read = net.disk("HUBS").load(|table, key| config.restores(table, key, net.now));
    let read: Vec<LookupId> = schema::ACCESS_LOG.decode_all(&read).map(|r| r.unwrap().0.1).collect();
    assert_eq!(read, vec![recent], "only the lookup within the replay window is read at start");
    assert_eq!(net.disk("HUBS").table(Table::AccessLog).count(), 2, "both stay on disk");
    let first = config.first_restored_key(Table::AccessLog, net.now).unwrap();
    let keys: Vec<Vec<u8>> = net.disk("HUBS").table(Table::AccessLog).map(|(k, _)| k.to_vec()).collect();
    assert!(keys[0] < first && first <= keys[1], "kept in time order: the older before the first key read");
    assert!(config.restores(Table::AccessLog, b"not a key", net.now), "a malformed key is read, for restore to name");

    let replay = net.setting("RXH01").lookup(nhs(CHILD), person(), recent, net.now).unwrap();
    net.send_from_setting("RXH01", "HUBS", Message::Lookup(replay));
    net.run_for(10_000);
    assert_eq!(refused(&net, "HUBS", |r| matches!(r, Refusal::Replayed(_))), 1, "remembered after the restart");
}

#[test]
fn duplicate_notification_before_the_first_is_durable__receipt_waits_for_the_write() {
    let cfg = NetConfig { durable_delay_ms: 2_000, latency_ms: 5, jitter_ms: 0, ..Default::default() };
    let mut net = Net::new(federation(), cfg);
    net.command("316", Command::RecordPlan(plan("CPP-1", CHILD, PlanType::ChildProtection)));
    net.run_for(10_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    // The hub's first send arrives at about 2 s; its retry at about 3 s, while Newham's first copy
    // is still being written (durable at about 4 s). Newham crashes in between.
    net.run_for(3_500);
    net.crash("316");
    net.restart("316");
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "316"), 1, "the notification survived the crash, once");
    assert!(net.hub("HUBS").outbox_depths().is_empty() && net.hub("HUBN").outbox_depths().is_empty());
}

#[test]
fn authority_restored_from_an_older_copy__takes_back_later_plans_and_withdrawals_from_its_hubs() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    let mut old = plan("LAC-3", THIRD_CHILD, PlanType::ChildProtection);
    old.start = Date::parse("2020-01-06").unwrap();
    record(&mut net, "204", old);
    net.run_for(2_000);
    let backup = net.disk("204").clone();
    record(&mut net, "204", plan("LAC-2", OTHER_CHILD, PlanType::LookedAfter));
    net.command("204", Command::WithdrawPlan(PlanRef::parse("LAC-1").unwrap()));
    // Made and withdrawn after the copy: only its removal is at the hubs.
    record(&mut net, "204", plan("CPP-9", THIRD_CHILD, PlanType::ChildProtection));
    net.command("204", Command::WithdrawPlan(PlanRef::parse("CPP-9").unwrap()));
    // Ended long ago: it leaves the feed as past its visibility.
    let long_ago = Date::parse("2021-01-04").unwrap();
    net.command("204", Command::EndPlan { reference: PlanRef::parse("LAC-3").unwrap(), end: long_ago });
    net.run_for(2_000);
    net.crash("204");
    net.replace_disk("204", backup);
    net.restart("204");
    net.run_for(5_000);
    let a = net.authority("204");
    assert!(a.plan(&PlanRef::parse("LAC-2").unwrap()).is_some(), "the plan added after the copy is back");
    assert!(a.plan(&PlanRef::parse("LAC-1").unwrap()).is_some_and(|p| p.withdrawn), "the withdrawal stays");
    let today = net.now.date();
    assert!(
        a.plan(&PlanRef::parse("LAC-3").unwrap()).is_some_and(|p| !p.visible_on(today)),
        "the plan ended after the copy is not open again"
    );
    assert_eq!(net.events_of("204", |e| matches!(e, Event::FeedRecovered { .. })).len(), 1);
    assert!(net.events.iter().all(|(_, e)| !matches!(e, Event::Equivocation { .. })), "no equivocation");
    // The hubs hold exactly the feed the council publishes again, that removal included.
    for hub in ["HUBN", "HUBS"] {
        assert_eq!(
            net.hub(hub).replicas()[&code("204")].feed().entries().collect::<Vec<_>>(),
            net.authority("204").feed().entries().collect::<Vec<_>>(),
            "{hub}"
        );
    }
    net.command("204", Command::EndPlan { reference: PlanRef::parse("LAC-2").unwrap(), end: net.now.date() });
    net.run_for(5_000);
    assert!(!hub_holds(&net, "HUBS", "204", CHILD), "the withdrawn plan stays withdrawn at the hubs");
    let held = &net.hub("HUBS").replicas()[&code("204")];
    let plans = held.feed().plans_of(nhs(OTHER_CHILD));
    assert!(
        matches!(&plans[0].body.body, EntryBody::Plan(p) if p.end.is_some()),
        "and the recovered plan could be ended"
    );
}

#[test]
fn hub_recovers_from_empty_database__catches_up_from_peer() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "E5A1B", plan("CPP-2", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(60_000);
    net.wipe("HUBS");
    net.restart("HUBS");
    net.run_for(60_000);
    assert!(hub_holds(&net, "HUBS", "204", CHILD));
    assert!(hub_holds(&net, "HUBS", "E5A1B", OTHER_CHILD));
    assert_eq!(net.hub("HUBS").history(nhs(CHILD)).len(), 1, "its own visits came back from the peer hub");
}

#[test]
fn empty_sync_from_a_hub__reply_bounded_by_its_budget__the_rest_follows_on_request() {
    let mut cfg = NetConfig::default();
    cfg.hub.sync_reply_bytes_max = 1;
    let mut net = Net::new(federation(), cfg);
    for (a, c) in [("204", CHILD), ("E5A1B", OTHER_CHILD), ("316", CHILD)] {
        record(&mut net, a, plan("P-1", c, PlanType::LookedAfter));
    }
    net.run_for(2_000);
    net.wipe("HUBS");
    net.restart("HUBS");
    net.run_for(10_000);
    for a in ["204", "E5A1B", "316"] {
        assert!(net.hub("HUBS").replicas()[&code(a)].head().is_some(), "{a} caught up in bounded replies");
    }
}

/// Three hubs in a full mesh; 204 has one home hub, 316 two.
fn three_hubs() -> Net {
    let fed = FederationSpec::new("three hubs")
        .hub("HUBN")
        .hub("HUBS")
        .hub("HUBW")
        .authority("204", "Hackney", &["HUBN"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS"])
        .build();
    // Heads every ten minutes: the harness starts every timer at one instant, so a head re-signed
    // every minute would be in flight at every other sync and make a digest differ.
    let mut cfg = NetConfig::default();
    cfg.authority.head_interval_ms = 600_000;
    let mut net = Net::new(fed, cfg);
    // Past the first syncs, which carry every mark while each hub takes back its own visits.
    net.run_for(3 * net.config.hub.sync_interval_ms);
    net
}

const HUBS3: [&str; 3] = ["HUBN", "HUBS", "HUBW"];

/// Messages of `kind` sent per ordered pair of hubs, in the order (N,N) (N,S) (N,W) (S,N) … (W,W).
fn per_pair(net: &Net, kind: &'static str) -> Vec<u64> {
    HUBS3.iter().flat_map(|a| HUBS3.iter().map(move |b| net.traffic(a, b, kind))).collect()
}

/// Messages of `kind` between hubs, summed over every ordered pair.
fn between_hubs(net: &Net, kind: &'static str) -> u64 {
    per_pair(net, kind).iter().sum()
}

/// Messages of `kind` per ordered pair of hubs while `run` goes on.
fn sent_per_pair(net: &mut Net, kind: &'static str, run: impl FnOnce(&mut Net)) -> Vec<u64> {
    let before = per_pair(net, kind);
    run(net);
    per_pair(net, kind).iter().zip(&before).map(|(now, then)| now - then).collect()
}

#[test]
fn a_change_is_passed_on_by_its_home_hubs_only__each_hub_receives_it_once_per_home_hub() {
    let mut net = three_hubs();
    record(&mut net, "316", plan("CP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let sent = sent_per_pair(&mut net, "feed", |net| {
        record(net, "316", plan("CP-2", OTHER_CHILD, PlanType::ChildProtection));
        net.run_for(2_000);
    });
    for hub in HUBS3 {
        assert!(hub_holds(&net, hub, "316", OTHER_CHILD), "{hub} holds the plan");
    }
    // Each home hub sends the run to both other hubs; the far hub passes nothing on.
    assert_eq!(sent, [0, 1, 1, 1, 0, 1, 0, 0, 0], "runs between hubs, per ordered pair");
    // A re-signed head (one per authority in the window) goes from one home hub (the first) to
    // every hub but the authority's home hubs: 204's (home N) to S and W, 316's (homes N, S)
    // from N to W only.
    let interval = net.config.authority.head_interval_ms;
    let sent = sent_per_pair(&mut net, "head", |net| net.run_for(interval));
    assert_eq!(sent, [0, 1, 2, 0, 0, 0, 0, 0, 0], "heads between hubs, per ordered pair");
}

#[test]
fn equal_replicas__each_periodic_sync_is_one_digest__no_marks_and_no_entries() {
    let mut net = three_hubs();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "316", plan("CP-1", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(5_000);
    let kinds = ["digest", "sync", "sync-part", "feed"];
    let before: Vec<u64> = kinds.iter().map(|k| between_hubs(&net, k)).collect();
    let intervals = 4;
    net.run_for(intervals * net.config.hub.sync_interval_ms);
    let during: Vec<u64> = kinds.iter().zip(&before).map(|(k, b)| between_hubs(&net, k) - b).collect();
    // Six ordered pairs of hubs, one digest each per interval; nothing else needed saying.
    assert_eq!(during, [6 * intervals, 0, 0, 0], "digest, sync, sync-part, feed between hubs");
}

#[test]
fn hub_that_missed_a_run_on_a_live_connection__finds_it_by_digest__takes_only_that_bucket() {
    let mut net = three_hubs();
    record(&mut net, "316", plan("CP-1", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(5_000);
    // HUBW loses the run from 204's only home hub; its connection stays up.
    net.lose_next("HUBN", "HUBW", "feed");
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    assert!(hub_holds(&net, "HUBS", "204", CHILD));
    assert!(!hub_holds(&net, "HUBW", "204", CHILD), "the run to HUBW was lost");
    let (parts, whole) = (between_hubs(&net, "sync-part"), between_hubs(&net, "sync"));
    net.run_for(2 * net.config.hub.sync_interval_ms);
    assert!(hub_holds(&net, "HUBW", "204", CHILD), "HUBW took the run after a digest showed the gap");
    assert!(between_hubs(&net, "sync-part") > parts, "the gap was settled by a partial sync");
    assert_eq!(between_hubs(&net, "sync"), whole, "no hub sent every mark");
    let head = |hub: &str| net.hub(hub).replicas()[&code("204")].head().cloned();
    assert_eq!(head("HUBW"), head("HUBN"), "under the same head");
}

/// How far each of the three hubs holds 204's feed, as 204 was told.
fn held_by(net: &Net) -> Vec<(String, Option<u64>)> {
    net.authority("204").held_by_hubs().into_iter().map(|(h, seq)| (h.as_str().to_string(), seq)).collect()
}

#[test]
fn authority_learns_from_its_home_hub_how_far_every_hub_holds_its_feed__a_cut_off_hub_shows_behind_until_healed() {
    let mut net = three_hubs();
    record(&mut net, "204", plan("CP-1", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(3 * net.config.hub.sync_interval_ms);
    let first = net.authority("204").plan_seq(&PlanRef::parse("CP-1").unwrap()).expect("CP-1 is in the feed");
    let seq = net.authority("204").last_seq();
    let all_at = |seq| HUBS3.iter().map(|h| (h.to_string(), Some(seq))).collect::<Vec<_>>();
    assert_eq!(held_by(&net), all_at(seq), "every hub holds the whole feed, as its home hub HUBN says");

    // HUBW is cut off from both other hubs: HUBN still says where it last saw it.
    net.cut("HUBN", "HUBW");
    net.cut("HUBS", "HUBW");
    record(&mut net, "204", plan("LAC-2", CHILD, PlanType::LookedAfter));
    net.run_for(3 * net.config.hub.sync_interval_ms);
    let second = net.authority("204").plan_seq(&PlanRef::parse("LAC-2").unwrap()).expect("LAC-2 is in the feed");
    let now = net.authority("204").last_seq();
    assert!(second > seq && first <= seq);
    let held = held_by(&net);
    assert_eq!(held[..2], all_at(now)[..2], "HUBN and HUBS hold the change");
    assert_eq!(held[2], ("HUBW".to_string(), Some(seq)), "HUBW is known to be behind");

    net.heal();
    net.run_for(3 * net.config.hub.sync_interval_ms);
    assert_eq!(held_by(&net), all_at(now), "healed: every hub holds the change, and 204 knows it");
    assert!(between_hubs(&net, "held") == 0, "the report goes to authorities only");
}

#[test]
fn a_home_hub_cut_off_from_its_authority__its_spread_comes_from_the_other_home_hub_not_its_last_report() {
    let mut net = three_hubs();
    record(&mut net, "316", plan("CP-1", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(3 * net.config.hub.sync_interval_ms);
    // Newham loses its link to HUBS, one of its two home hubs; HUBS still syncs with HUBN.
    net.cut("316", "HUBS");
    record(&mut net, "316", plan("CP-2", CHILD, PlanType::ChildProtection));
    net.run_for(3 * net.config.hub.sync_interval_ms);
    let seq = net.authority("316").last_seq();
    let held = net.authority("316").held_by_hubs();
    let hubs = held.iter().find(|(h, _)| h.as_str() == "HUBS").map(|(_, s)| *s);
    assert_eq!(hubs, Some(Some(seq)), "HUBN's word that HUBS holds the change, not HUBS's report from before the cut");
}

#[test]
fn outbox_beyond_its_memory_budget__waits_in_the_store__every_notification_arrives_once_after_a_restart_too() {
    let mut cfg = NetConfig::default();
    cfg.hub.outbox_bodies_max = 1;
    let mut net = Net::new(federation(), cfg);
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    // Hackney is cut off: five notifications wait at its home hub, HUBN, relayed by HUBS.
    net.isolate("204");
    for _ in 0..5 {
        net.lookup("RXH01", "HUBS", nhs(CHILD));
        net.run_for(1_000);
    }
    net.run_for(60_000);
    let waiting = |net: &Net| net.hub("HUBN").outbox_depths().get(&code("204")).copied().unwrap_or(0);
    assert_eq!(waiting(&net), 5);
    assert!(net.hub("HUBN").outbox_in_memory() <= 1, "at most the budget in memory: the rest wait in the store");
    // A restart restores within the budget too; then Hackney comes back and gets each one once.
    net.crash("HUBN");
    net.restart("HUBN");
    net.run_for(1_000);
    assert!(net.hub("HUBN").outbox_in_memory() <= 1);
    net.heal();
    for _ in 0..120 {
        net.run_for(1_000);
        assert!(net.hub("HUBN").outbox_in_memory() <= 1, "within the budget while delivering too");
    }
    assert_eq!(inbox_len(&net, "204"), 5, "every notification arrived once");
    assert_eq!(waiting(&net), 0, "and every receipt came back");
    assert_eq!(net.hub("HUBN").outbox_in_memory(), 0);
}

/// A fifth of all messages lost, over several seeds.
#[test]
fn lossy_network__everything_converges_and_every_notice_arrives_once() {
    let notified: usize = [42, 1, 2, 3, 4, 5, 6, 7, 8].into_iter().map(lossy_network).sum();
    assert!(notified >= 9, "{notified} notified over nine seeds");
}

/// One seed's run: the lookups that notified.
fn lossy_network(seed: u64) -> usize {
    let cfg = NetConfig { loss_per_million: 200_000, seed, ..Default::default() };
    let mut net = Net::new(federation(), cfg);
    let mut children = Vec::new();
    for i in 0..20 {
        let child = format!("{:09}", 100_000_000 + i * 7919);
        let Some(n) = (0..10).find_map(|d| NhsNumber::parse(&format!("{child}{d}")).ok()) else { continue };
        record(&mut net, "204", Plan { nhs: n, ..plan(&format!("LAC-{i}"), CHILD, PlanType::LookedAfter) });
        children.push(n);
    }
    net.run_for(5_000);
    let lookups: Vec<_> = children.iter().take(5).map(|&n| net.lookup("RXH01", "HUBS", n)).collect();
    net.run_for(600_000);
    let published = |hub: &str| net.hub(hub).replicas()[&code("204")].feed().entries().cloned().collect::<Vec<_>>();
    assert_eq!(published("HUBN"), published("HUBS"), "both hubs hold the same live set");
    assert_eq!(published("HUBN").len(), net.authority("204").feed().len());
    let answered: Vec<_> = lookups.iter().filter(|l| matches!(net.reply_to(**l), Some(Message::Answer(_)))).collect();
    assert!(!answered.is_empty(), "seed {seed}: some lookups got through the loss");
    for l in &answered {
        // A hub whose copy did not hold the plan yet (the loss delayed it) answered as of its
        // copy, showing no plan: nothing to notify. Every answer that showed the plan notified.
        let shown = net.verified("RXH01", **l).map(|v| shown(&v).len()).unwrap_or(0);
        let notified = net.authority("204").inbox_state(l).is_some();
        assert_eq!(notified, shown > 0, "seed {seed}: notified exactly when the answer showed the plan");
    }
    // Lookups whose answers were lost were made all the same: each may notify, once (by id).
    assert!(net.authority("204").inbox_ids().all(|id| lookups.contains(id)));
    net.authority("204").inbox_ids().count()
}

/// The access event of the first lookup in a hub's access log.
fn first_access_event(net: &Net, hub: &str) -> Signed<AccessEvent> {
    let (_, row) = net.disk(hub).table(Table::AccessLog).next().unwrap();
    cpis_protocol::codec::decode(row, 1 << 20).unwrap()
}

/// A notification of `event` for `authority` naming `matched`, signed by `hub` as its answering hub.
fn signed_notification(
    net: &Net,
    event: Signed<AccessEvent>,
    authority: &str,
    matched: Vec<PlanRef>,
    hub: &str,
) -> Signed<Notification> {
    let n = Notification {
        event,
        authority: code(authority),
        matched,
        hub: code(hub),
        answered_at: net.now,
        signed_at: net.now,
    };
    net.fed.identity(hub).sign(n)
}

#[test]
fn invented_notification_relayed_through_an_honest_home_hub__refused_by_the_authority__the_relay_drops_it() {
    let mut net = net();
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    // A real lookup of a child Newham has no plan for, answered at HUBS.
    net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(2_000);
    let event = first_access_event(&net, "HUBS");
    // HUBS, hostile, signs a notification of it for Newham naming Newham's plan of another child,
    // and hands it to HUBN (Newham's other home hub) to relay.
    let n = signed_notification(&net, event, "316", vec![PlanRef::parse("CPP-1").unwrap()], "HUBS");
    net.send_as("HUBS", "HUBN", Message::Notify(n));
    net.run_for(600_000);
    assert!(refused(&net, "316", |r| *r == Refusal::NoMatchingPlan) >= 1, "Newham refuses it");
    assert_eq!(inbox_len(&net, "316"), 0);
    assert!(net.hub("HUBN").outbox_depths().is_empty(), "the relay stops retrying what the authority refused");
    assert!(net.events_of("HUBN", |e| matches!(e, Event::NotificationOverdue { .. })).is_empty());
}

#[test]
fn another_hubs_copy_with_other_matches__does_not_replace_the_answering_hubs_own__the_notification_arrives() {
    let mut net = net();
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    // Newham is away while HUBS answers a lookup of its child: HUBS holds its own notification.
    net.isolate("316");
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(2_000);
    let event = first_access_event(&net, "HUBS");
    // HUBN, hostile (and never reaching Newham itself), signs its own copy of that lookup naming
    // no plan, and hands it to HUBS: were it to replace HUBS's, Newham would refuse it and HUBS
    // would drop it, and the notification would be lost.
    let n = signed_notification(&net, event, "316", vec![], "HUBN");
    net.send_as("HUBN", "HUBS", Message::Notify(n));
    net.run_for(1_000);
    net.heal();
    net.cut("316", "HUBN");
    net.run_for(60_000);
    assert!(net.authority("316").inbox_state(&lookup).is_some(), "HUBS delivered its own");
    assert_eq!(refused(&net, "316", |_| true), 0, "the hostile copy never reached Newham");
}

/// Feed batches a hub sends peer hub HUBN in answer to one sync naming `marks`, by origin.
fn feeds_for_sync(net: &mut Net, marks: Vec<Mark>) -> Vec<String> {
    let version = net.hub("HUBS").directory().version();
    net.with_machine("HUBS", |m, now| {
        m.handle_message(&code("HUBN"), Message::Sync { directory_version: version, marks }, now);
        std::iter::from_fn(|| m.poll_transmit())
            .filter_map(|t| match t.message {
                Message::Feed(b) if t.to == code("HUBN") => Some(b.origin.to_string()),
                _ => None,
            })
            .collect()
    })
}

#[test]
fn a_peer_hub_naming_other_marks_in_each_sync__draws_a_run_once_while_it_may_be_on_its_way__a_top_mark_panics_nothing()
{
    let mut net = net();
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    record(&mut net, "316", plan("CPP-2", OTHER_CHILD, PlanType::ChildProtection));
    // A lookup answered at HUBN: HUBS holds HUBN's visits too.
    net.lookup("RXH01", "HUBN", nhs(CHILD));
    net.run_for(5_000);
    let mark = |origin: &str, seq: u64| Mark { origin: code(origin), seq, head_at: Timestamp(0) };
    // HUBN names its own visits at the top of the range: nothing of them comes back (nor panics).
    let first = feeds_for_sync(&mut net, vec![mark("316", 1), mark("HUBN", u64::MAX)]);
    assert!(first.contains(&"316".to_string()) && !first.contains(&"HUBN".to_string()), "{first:?}");
    // Naming another start for the same run draws nothing while the run may be on its way.
    assert_eq!(feeds_for_sync(&mut net, vec![mark("316", 0), mark("HUBN", u64::MAX)]), Vec::<String>::new());
    assert_eq!(feeds_for_sync(&mut net, vec![mark("316", 1), mark("HUBN", u64::MAX)]), Vec::<String>::new());
    net.run_for(31_000);
    let again = feeds_for_sync(&mut net, vec![mark("316", 0), mark("HUBN", u64::MAX)]);
    assert!(again.contains(&"316".to_string()), "a run that may have been lost goes again after a while: {again:?}");
}

#[test]
fn a_peer_hub_whose_sync_budget_is_spent__draws_no_run_until_it_has_refilled() {
    // A budget of one byte a second: each sync may draw one run (the one that crosses it goes
    // whole), then none until a second has refilled it.
    let hub = HubConfig { sync_reply_bytes_max: 1, ..HubConfig::default() };
    let mut net = Net::new(federation(), NetConfig { hub, ..NetConfig::default() });
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "E5A1B", plan("CPP-1", OTHER_CHILD, PlanType::ChildProtection));
    // Long enough that the runs the hubs sent each other as the plans came may be sent again.
    net.run_for(31_000);
    let behind =
        || ["204", "E5A1B"].map(|origin| Mark { origin: code(origin), seq: 0, head_at: Timestamp(0) }).to_vec();
    assert_eq!(feeds_for_sync(&mut net, behind()), vec!["204".to_string()], "one run, then the budget is spent");
    assert_eq!(feeds_for_sync(&mut net, behind()), Vec::<String>::new(), "a spent budget sends nothing");
    net.run_for(1_000);
    assert_eq!(feeds_for_sync(&mut net, behind()), vec!["E5A1B".to_string()], "refilled: the next run");
}

#[test]
fn conflicting_head_seen_again__equivocation_alarm_raised_once() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let mut head: FeedHead = net.authority("204").head().unwrap().body.clone();
    head.children += 1;
    for _ in 0..3 {
        head.at = head.at.plus_ms(1);
        net.send_as("HUBS", "HUBN", Message::Head(fed.identity("204").sign(head.clone())));
    }
    net.run_for(1_000);
    assert_eq!(net.events_of("HUBN", |e| matches!(e, Event::Equivocation { .. })).len(), 1, "one alarm");
    assert_eq!(refused(&net, "HUBN", |r| matches!(r, Refusal::KnownEquivocation(_))), 2, "then refused as known");
    assert_eq!(net.disk("HUBN").table(Table::Equivocations).count(), 1, "one proof kept");
}

#[test]
fn equivocation_alarm__raised_only_once_its_proof_is_durable() {
    let mut net = Net::new(federation(), NetConfig { durable_delay_ms: 50, ..NetConfig::default() });
    // Its reply comes once durable, later: the plan is recorded all the same.
    net.command("204", Command::RecordPlan(plan("LAC-1", CHILD, PlanType::LookedAfter)));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let mut head: FeedHead = net.authority("204").head().unwrap().body.clone();
    (head.children, head.at) = (head.children + 1, head.at.plus_ms(1));
    net.send_as("HUBS", "HUBN", Message::Head(fed.identity("204").sign(head)));
    let alarm = |net: &Net| net.events_of("HUBN", |e| matches!(e, Event::Equivocation { .. })).len();
    for _ in 0..1_000 {
        if alarm(&net) > 0 {
            break;
        }
        net.run_for(1);
    }
    assert_eq!(alarm(&net), 1, "the alarm is raised");
    assert_eq!(net.disk("HUBN").table(Table::Equivocations).count(), 1, "and its proof was durable by then");
}

#[test]
fn authority_restored_from_an_older_copy__gets_back_a_notification_naming_a_plan_recorded_after_the_copy() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let backup = net.disk("204").clone();
    record(&mut net, "204", plan("LAC-2", OTHER_CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(OTHER_CHILD));
    net.run_for(60_000);
    // Withdrawn after the lookup: the hubs hold only its removal, not the plan itself.
    net.command("204", Command::WithdrawPlan(PlanRef::parse("LAC-2").unwrap()));
    net.run_for(2_000);
    assert!(net.authority("204").inbox_ids().any(|id| *id == lookup));
    net.crash("204");
    net.replace_disk("204", backup);
    net.restart("204");
    net.run_for(60_000);
    let a = net.authority("204");
    assert!(a.inbox_ids().any(|id| *id == lookup), "the notification delivered after the copy is back");
    assert_eq!(refused(&net, "204", |_| true), 0, "nothing refused on the way back");
}

/// An authority that had more than two pages of notifications delivered, crashed and restored
/// from a copy taken before any: the net, and how many were delivered.
fn authority_restored_from_before_more_than_two_pages() -> (Net, usize) {
    let hub = HubConfig { setting_lookups_per_hour: 100_000, person_lookups_per_hour: 100_000, ..HubConfig::default() };
    let mut net = Net::new(federation(), NetConfig { hub, ..NetConfig::default() });
    record(&mut net, "E5A1B", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let backup = net.disk("E5A1B").clone();
    let lookups = 2 * REDELIVER_PAGE_MAX + 100;
    for _ in 0..lookups {
        net.lookup("RXH01", "HUBS", nhs(CHILD));
        net.run_for(10);
    }
    net.run_for(60_000);
    assert_eq!(inbox_len(&net, "E5A1B"), lookups);
    net.crash("E5A1B");
    net.replace_disk("E5A1B", backup);
    (net, lookups)
}

#[test]
fn authority_restored_from_an_older_copy__gets_back_more_notifications_than_a_page__a_page_at_a_time() {
    let (mut net, lookups) = authority_restored_from_before_more_than_two_pages();
    let (asked, pages) = (net.traffic("E5A1B", "HUBS", "redeliver"), net.traffic("HUBS", "E5A1B", "redeliver-page"));
    net.restart("E5A1B");
    net.run_for(60_000);
    assert_eq!(inbox_len(&net, "E5A1B"), lookups, "every notification is back");
    assert_eq!(net.traffic("E5A1B", "HUBS", "redeliver") - asked, 3, "asked for three pages, one after another");
    assert_eq!(net.traffic("HUBS", "E5A1B", "redeliver-page") - pages, 3);
    assert_eq!(refused(&net, "E5A1B", |_| true), 0, "nothing refused on the way back");
}

#[test]
fn authority_restored_from_an_older_copy__whose_hub_drops_between_pages__asks_again_from_the_start() {
    let (mut net, lookups) = authority_restored_from_before_more_than_two_pages();
    net.restart("E5A1B");
    for _ in 0..10_000 {
        if inbox_len(&net, "E5A1B") >= REDELIVER_PAGE_MAX {
            break;
        }
        net.run_for(1);
    }
    net.cut("E5A1B", "HUBS");
    net.run_for(1_000);
    assert_eq!(inbox_len(&net, "E5A1B"), REDELIVER_PAGE_MAX, "one page came back before the link dropped");
    let asked = net.traffic("E5A1B", "HUBS", "redeliver");
    net.heal();
    net.run_for(60_000);
    assert_eq!(inbox_len(&net, "E5A1B"), lookups, "every notification is back");
    assert_eq!(net.traffic("E5A1B", "HUBS", "redeliver") - asked, 3, "three pages, from the start again");
    assert_eq!(refused(&net, "E5A1B", |_| true), 0, "what came twice is not refused, nor stored twice");
}

#[test]
fn authority_restored_from_an_older_copy__gets_the_pages_after_one_whose_rows_the_hub_no_longer_holds() {
    let (mut net, lookups) = authority_restored_from_before_more_than_two_pages();
    // The rows of the first page are gone from the hub's store, though its index still names
    // them (pruned or lost between the two): the page sends none, and must still say where the
    // next one starts.
    let mut hub_disk = net.disk("HUBS").clone();
    let mut delivered: Vec<_> = hub_disk
        .load(|table, _| table == Table::Delivered)
        .iter()
        .map(|row| schema::DELIVERED.decode(row).unwrap())
        .map(|((id, authority), record)| (record.receipted_at, id, authority))
        .collect();
    delivered.sort();
    let ops = delivered[..REDELIVER_PAGE_MAX].iter().map(|(_, id, a)| schema::DELIVERED.delete(&(*id, a.clone())));
    hub_disk.apply(&WriteBatch { id: 0, ops: ops.collect() });
    net.replace_disk("HUBS", hub_disk);
    let asked = net.traffic("E5A1B", "HUBS", "redeliver");
    net.restart("E5A1B");
    net.run_for(60_000);
    assert_eq!(
        inbox_len(&net, "E5A1B"),
        lookups - REDELIVER_PAGE_MAX,
        "every notification the hub still holds is back"
    );
    assert_eq!(net.traffic("E5A1B", "HUBS", "redeliver") - asked, 3, "asked for the pages after the empty one");
}

#[test]
fn hub_whose_own_key_is_revoked__refuses_lookups_so_that_settings_ask_another_hub() {
    let mut net = net();
    record(&mut net, "E5A1B", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let current = net.hub("HUBS").directory().directory().clone();
    let at = net.now;
    let v2 = fed.next_directory(&current, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == "HUBS").unwrap();
        m.keys[0].status = KeyStatus::Revoked { at };
    });
    assert_eq!(net.command("HUBS", Command::PublishDirectories(vec![v2])), Some(Reply::Directory { version: 2 }));
    let before = net.disk("HUBS").table(Table::AccessLog).count();
    let id = net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    assert!(
        matches!(net.reply_to(id), Some(Message::Refused(r)) if r.code == RefusalCode::HubUnavailable),
        "refused as unavailable: {:?}",
        net.reply_to(id)
    );
    assert!(refused(&net, "HUBS", |r| matches!(r, Refusal::OwnKeyNotUsable(_))) >= 1);
    assert_eq!(net.disk("HUBS").table(Table::AccessLog).count(), before, "no visit signed with a revoked key");
}

#[test]
fn lookup_whose_signature_the_driver_checked__answered__and_refused_once_the_key_is_retired() {
    let mut net = net();
    net.run_for(1_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD));
    net.run_for(1_000);
    let fed = net.fed.clone();
    let key = fed.identity("RXH01").public();
    let person = Person { id: "U1".into(), name: "Dr A Clinician".into(), role: "Nurse".into() };
    let driver_checked = |net: &Net, id: LookupId| {
        let signed = net.setting("RXH01").lookup(nhs(CHILD), person.clone(), id, net.now).unwrap();
        signed.verify_with(&key).expect("the setting's own signature verifies")
    };
    let first = LookupId([7; 16]);
    let verified = driver_checked(&net, first);
    net.with_machine("HUBS", |m, now| m.handle_verified_lookup(&code("RXH01"), verified, now));
    net.run_for(1_000);
    assert!(matches!(net.reply_to(first), Some(Message::Answer(_))), "{:?}", net.reply_to(first));

    // The key is retired: the hub closes the session at once, so a lookup the driver verified
    // with it afterwards is refused as from no connected setting. (The key's window and
    // retirement checks of `admit_verified_at` are unit tests of the directory.)
    let current = net.hub("HUBS").directory().directory().clone();
    let retired_at = net.now;
    let v2 = fed.next_directory(&current, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == "RXH01").unwrap();
        m.keys[0].status = KeyStatus::Retired { at: retired_at };
    });
    assert_eq!(net.command("HUBS", Command::PublishDirectories(vec![v2])), Some(Reply::Directory { version: 2 }));
    net.run_for(1_000);
    let not_connected = |r: &Refusal| matches!(r, Refusal::NotConnected);
    let before = refused(&net, "HUBS", not_connected);
    let second = LookupId([8; 16]);
    let verified = driver_checked(&net, second);
    net.with_machine("HUBS", |m, now| m.handle_verified_lookup(&code("RXH01"), verified, now));
    assert_eq!(refused(&net, "HUBS", not_connected), before + 1);
    net.run_for(1_000);
    assert!(!matches!(net.reply_to(second), Some(Message::Answer(_))), "no answer once the key is retired");
}

#[test]
fn plan_stored_with_a_date_the_rules_now_refuse__can_still_be_ended_and_withdrawn_and_reimported_unchanged() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    // As if stored before the date rules: a start in 1985.
    let mut old = plan("LAC-1", CHILD, PlanType::LookedAfter);
    old.start = Date::parse("1985-03-01").unwrap();
    net.crash("204");
    let mut disk = net.disk("204").clone();
    disk.apply(&WriteBatch { id: 0, ops: vec![schema::PLANS.put(&old.reference, &old)] });
    net.replace_disk("204", disk);
    net.restart("204");
    net.run_for(2_000);
    let reply = net.command("204", Command::ImportPlans(vec![(2, old.clone())]));
    let Some(Reply::Imported(report)) = reply else { panic!("{reply:?}") };
    assert!(matches!(report.rows[..], [(2, RowOutcome::Unchanged)]), "{:?}", report.rows);
    let reply = net.command("204", Command::WithdrawPlan(old.reference.clone()));
    assert_eq!(reply, Some(Reply::Changed(Change::Applied)));
    let mut new = plan("LAC-2", OTHER_CHILD, PlanType::LookedAfter);
    new.start = Date::parse("1985-03-01").unwrap();
    let reply = net.command("204", Command::RecordPlan(new));
    assert!(matches!(reply, Some(Reply::Refused(CommandError::Plan(PlanError::StartTooEarly(_))))), "{reply:?}");
}

#[test]
fn feed_batch_verified_beside_the_loop__applied_as_if_checked_on_it__a_misattributed_or_altered_entry_still_refused() {
    let mut net = net();
    record(&mut net, "204", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(1_000);
    // HUBS misses two changes while cut from 204's home hub; the run it lacks is taken as a
    // driver would take it off the wire, its signatures checked beside the event loop.
    net.cut("HUBN", "HUBS");
    record(&mut net, "204", plan("CPP-2", OTHER_CHILD, PlanType::ChildProtection));
    record(&mut net, "204", plan("LAC-3", THIRD_CHILD, PlanType::LookedAfter));
    net.run_for(1_000);
    let fed = net.fed.clone();
    let dir = fed.trusted();
    let mark = net.hub("HUBS").replicas()[&code("204")].seq();
    let head = net.authority("204").head().unwrap().clone();
    let entries: Vec<SignedEntry> = net.authority("204").feed().entries_after(mark).cloned().collect();
    assert_eq!(entries.len(), 2);
    let run =
        FeedBatch { origin: code("204"), after: mark, upto: head.body.seq, entries, head: Some(head), more: false };
    // Connected again, the run is handed to HUBS before anything else reaches it.
    net.heal();

    // An altered entry does not verify: the batch comes back as it was, for the loop to refuse.
    let mut altered = run.clone();
    altered.entries[1].body.at = Timestamp(altered.entries[1].body.at.0 + 1);
    let back = altered.clone().verify_signatures(&dir).expect_err("an altered entry's signature does not hold");
    assert_eq!(back, altered);

    // 204's own entry signed with another authority's key holds under that key, so it passes the
    // signature check, and the run still matches 204's head; the hub refuses it all the same (the
    // key is not 204's), and stores nothing.
    let mut misattributed = run.clone();
    misattributed.entries[1] = fed.identity("E5A1B").sign(misattributed.entries[1].body.clone());
    let verified = misattributed.verify_signatures(&dir).expect("the signature holds under E5A1B's key");
    let before = net.disk("HUBS").clone();
    net.with_machine("HUBS", |m, now| m.handle_verified_feed(&code("HUBN"), verified, now));
    assert_eq!(refused(&net, "HUBS", |r| matches!(r, Refusal::Entry(_))), 1);
    assert_eq!(net.disk("HUBS"), &before);
    assert!(!hub_holds(&net, "HUBS", "204", THIRD_CHILD));

    // The genuine run, verified beside the loop, gives the replica 204's home hub holds.
    let verified = run.verify_signatures(&dir).expect("the authority's own signatures hold");
    net.with_machine("HUBS", |m, now| m.handle_verified_feed(&code("HUBN"), verified, now));
    net.run_for(100);
    let (s, n) = (&net.hub("HUBS").replicas()[&code("204")], &net.hub("HUBN").replicas()[&code("204")]);
    assert_eq!(s.head(), n.head());
    assert!(s.feed().entries().eq(n.feed().entries()));
    assert!(hub_holds(&net, "HUBS", "204", OTHER_CHILD) && hub_holds(&net, "HUBS", "204", THIRD_CHILD));
}

#[test]
fn peer_hub_syncing_again_while_a_run_is_on_its_way__run_not_sent_twice__sent_again_once_lost() {
    let mut net = net();
    net.run_for(1_000);
    net.cut("HUBN", "HUBS");
    record(&mut net, "204", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(1_000);
    let behind = Mark { origin: code("204"), seq: net.hub("HUBS").replicas()[&code("204")].seq(), head_at: net.now };
    // Connected again, HUBN sends the run HUBS lacks; it is lost on the way.
    net.lose_next("HUBN", "HUBS", "feed");
    net.heal();
    net.run_for(500);
    let sent = net.traffic("HUBN", "HUBS", "feed");
    assert_eq!(sent, 1);
    assert!(!hub_holds(&net, "HUBS", "204", CHILD));
    // Syncs from HUBS while the run may still be on its way bring nothing more.
    for _ in 0..3 {
        net.send_as("HUBS", "HUBN", Message::Sync { directory_version: 1, marks: vec![behind.clone()] });
        net.run_for(1_000);
    }
    assert_eq!(net.traffic("HUBN", "HUBS", "feed"), sent, "the run is not sent at every sync");
    // Once the wait has passed, the next sync brings it again.
    net.run_for(90_000);
    assert!(hub_holds(&net, "HUBS", "204", CHILD), "sent again once the wait passed");
}

#[test]
fn authority_run_still_arriving__its_home_hub_does_not_ask_for_it_again__asks_once_it_stops() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(1_000);
    let interval = HubConfig::default().sync_interval_ms;
    let before = net.traffic("HUBN", "204", "sync");
    let mark = net.hub("HUBN").replicas()[&code("204")].seq();
    // The batches of a long run keep coming, one every half interval, its head still to come:
    // a sync meanwhile would have the authority send the whole run again.
    for _ in 0..6 {
        let part = FeedBatch {
            origin: code("204"),
            after: mark,
            upto: mark + 10_000,
            entries: vec![],
            head: None,
            more: false,
        };
        net.send_as("204", "HUBN", Message::Feed(part));
        net.run_for(interval / 2);
    }
    assert_eq!(net.traffic("HUBN", "204", "sync"), before, "no sync while the run arrives");
    net.run_for(interval * 2);
    assert!(net.traffic("HUBN", "204", "sync") > before, "asked again once it stopped");
}
