//! Scenario tests on the in-crate harness: the role machines over a simulated network.
#![allow(non_snake_case)]

use cpis_protocol::directory::KeyStatus;
use cpis_protocol::feed::{EntryBody, FeedEntry};
use cpis_protocol::harness::{FederationSpec, Net, NetConfig, TestFederation};
use cpis_protocol::ids::{NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::Event;
use cpis_protocol::records::{LookupKind, Plan, PlanType, SettingType};
use cpis_protocol::store::Table;
use cpis_protocol::time::{DAY_MS, Date, Timestamp};
use cpis_protocol::wire::{FeedBatch, Message};

const CHILD: &str = "9434765919";
const OTHER_CHILD: &str = "4010232137";

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
    net.with_authority(authority, |a, now| a.record_plan(p, now)).unwrap();
}

fn answer_plans(net: &Net, lookup: cpis_protocol::ids::LookupId) -> Vec<(OdsCode, Plan)> {
    match net.reply_to(lookup) {
        Some(Message::Answer(a)) => a
            .plans
            .iter()
            .filter_map(|e| match &e.body.body {
                EntryBody::Plan(p) => Some((e.body.origin.clone(), p.clone())),
                _ => None,
            })
            .collect(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn inbox_len(net: &Net, authority: &str) -> usize {
    net.authority(authority).inbox().count()
}

#[test]
fn replication__authority_to_home_hub_to_far_hub__plan_visible_at_both() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let today = net.now;
    assert_eq!(net.hub("HUBN").visible_plans(nhs(CHILD), today).len(), 1, "home hub holds the plan");
    assert_eq!(net.hub("HUBS").visible_plans(nhs(CHILD), today).len(), 1, "far hub holds the plan via the home hub");
    let hw = net.hub("HUBS").high_waters();
    assert!(hw.iter().any(|h| h.origin.as_str() == "204" && h.seq == 1));
}

#[test]
fn lookup_at_far_hub__two_authorities__plans_contacts_and_history_returned() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "316", plan("CPP-9", CHILD, PlanType::ChildProtection));
    net.with_authority("204", |a, now| {
        a.set_contacts(
            cpis_protocol::records::Contacts {
                name: "Hackney CSC".into(),
                office_phone: "020 8356 5500".into(),
                out_of_hours_phone: "020 8356 2710".into(),
            },
            now,
        )
    })
    .unwrap();
    net.run_for(2_000);
    let first = net.lookup("RXH02", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(2_000);
    let second = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(2_000);

    let Some(Message::Answer(answer)) = net.reply_to(second).cloned() else { panic!("no answer") };
    let setting = net.setting("RXH01");
    let lookup = cpis_protocol::records::AccessEvent {
        lookup_id: second,
        setting: OdsCode::parse("RXH01").unwrap(),
        setting_name: String::new(),
        setting_type: SettingType::UrgentTreatmentCentre,
        person: cpis_protocol::records::Person { id: String::new(), name: String::new(), role: String::new() },
        at: Timestamp(0),
        nhs: nhs(CHILD),
        kind: LookupKind::Unscheduled,
    };
    let verified = setting.verify_answer(&lookup, answer).expect("every record verifies end to end");
    let authorities: Vec<&str> = verified.plans.iter().map(|p| p.authority.as_str()).collect();
    assert_eq!(authorities, ["204", "316"]);
    let hackney = &verified.plans[0];
    assert_eq!(hackney.contacts.as_ref().unwrap().out_of_hours_phone, "020 8356 2710");
    let freshness = hackney.freshness.as_ref().expect("freshness per authority");
    assert_eq!(freshness.seq, 2);
    assert!(
        freshness.as_of.as_millis() > 0,
        "the far hub knows how fresh its copy is without waiting for a periodic sync"
    );
    assert_eq!(
        verified.plans[1].contacts.as_ref().unwrap().name,
        "Newham children's social care",
        "directory contacts as fallback"
    );
    assert_eq!(verified.history.len(), 1, "the first visit shows in the second lookup's history");
    assert_eq!(verified.history[0].setting.as_str(), "RXH02");
    assert!(
        matches!(net.reply_to(first), Some(Message::Answer(a)) if a.history.is_empty()),
        "a lookup is not its own history"
    );
}

#[test]
fn unscheduled_lookup__each_owning_authority__notified_exactly_once() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "316", plan("CPP-9", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(120_000);
    for authority in ["204", "316"] {
        let items: Vec<_> = net.authority(authority).inbox().collect();
        assert_eq!(items.len(), 1, "{authority} has the notification once");
        assert_eq!(items[0].notification.body.event.body.lookup_id, lookup);
    }
    assert_eq!(inbox_len(&net, "E5A1B"), 0, "an authority with no plan hears nothing");
    let delivered = net.events_of("HUBS", |e| matches!(e, Event::NotificationDelivered { .. }));
    assert_eq!(delivered.len(), 2, "the answering hub saw both receipts");
    assert!(net.hub("HUBS").outbox_depths().is_empty());
    assert!(net.hub("HUBN").outbox_depths().is_empty(), "the relay hub let go once the receipt passed");
}

#[test]
fn hub_partitioned_from_owner__lookup_answered__notice_delivered_once_on_heal() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.isolate("204");
    net.cut("HUBN", "HUBS");
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(600_000);
    assert!(matches!(net.reply_to(lookup), Some(Message::Answer(_))), "answered from the replica");
    assert_eq!(inbox_len(&net, "204"), 0);
    assert_eq!(net.hub("HUBS").outbox_depths().values().sum::<usize>(), 1, "waiting, not dropped");
    net.heal();
    net.run_for(120_000);
    assert_eq!(inbox_len(&net, "204"), 1, "delivered once after the heal");
    net.run_for(600_000);
    assert_eq!(inbox_len(&net, "204"), 1, "and only once");
    assert!(net.hub("HUBS").outbox_depths().is_empty());
}

#[test]
fn notification_waiting_past_limit__reported_overdue_once() {
    let mut cfg = NetConfig::default();
    cfg.hub.overdue_after_ms = 60_000;
    let mut net = Net::new(federation(), cfg);
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(600_000);
    assert_eq!(net.events_of("HUBS", |e| matches!(e, Event::NotificationOverdue { .. })).len(), 1);
}

#[test]
fn authority_crashes_and_restarts__notification_delivered_once_after_restart() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
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
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(5_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
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
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
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
fn ended_plan__stops_showing_after_visibility_window() {
    let mut net = net();
    record(&mut net, "204", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let today = net.now.date();
    net.with_authority("204", |a, now| a.end_plan(&PlanRef::parse("CPP-1").unwrap(), today, now)).unwrap();
    net.run_for(2_000);
    let shown = net.hub("HUBS").visible_plans(nhs(CHILD), net.now);
    assert_eq!(shown.len(), 1, "an ended plan shows for a year after its end");
    assert!(matches!(&shown[0].body.body, EntryBody::Plan(p) if p.end == Some(today)));
    let later = net.now.plus_ms(366 * DAY_MS);
    assert!(net.hub("HUBS").visible_plans(nhs(CHILD), later).is_empty(), "and not after");
    net.with_hub("HUBS", |h, _| h.handle_tick(later));
    assert!(net.hub("HUBS").entries().all(|e| !matches!(e.body.body, EntryBody::Plan(_))), "pruned from the replica");
}

#[test]
fn withdrawn_plan__disappears_everywhere() {
    let mut net = net();
    record(&mut net, "204", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    net.with_authority("204", |a, now| a.withdraw_plan(&PlanRef::parse("CPP-1").unwrap(), now)).unwrap();
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(60_000);
    assert!(answer_plans(&net, lookup).is_empty());
    assert_eq!(inbox_len(&net, "204"), 0, "no plan, no notification");
}

fn forged_batch(fed: &TestFederation, origin: &str, signer: &str, seq: u64) -> Message {
    let entry = FeedEntry {
        origin: OdsCode::parse(origin).unwrap(),
        seq,
        at: fed.start,
        body: EntryBody::Plan(plan("FAKE-1", OTHER_CHILD, PlanType::ChildProtection)),
    };
    let signed = fed.identity(signer).sign(entry);
    Message::Feed(FeedBatch {
        origin: OdsCode::parse(origin).unwrap(),
        after: seq - 1,
        upto: seq,
        entries: vec![signed],
        as_of: fed.start,
    })
}

#[test]
fn summary_signed_by_wrong_authority__refused__nothing_changes() {
    let mut net = net();
    net.run_for(1_000);
    let before = net.disk("HUBN").clone();
    let fed = net.fed.clone();
    // Brighton's key signs an entry claiming to be Hackney's, sent by HUBS to HUBN.
    net.with_hub("HUBN", |h, now| {
        h.handle_message(&OdsCode::parse("HUBS").unwrap(), forged_batch(&fed, "204", "E5A1B", 1), now)
    });
    net.run_for(1_000);
    assert_eq!(net.disk("HUBN"), &before);
    assert!(net.hub("HUBN").visible_plans(nhs(OTHER_CHILD), net.now).is_empty());
    let refused = net
        .events_of("HUBN", |e| matches!(e, Event::BatchRefused { reason, .. } if reason.contains("not a key of 204")));
    assert_eq!(refused.len(), 1);
}

#[test]
fn summary_signed_by_revoked_key__refused__and_held_entries_purged() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let fed = net.fed.clone();
    let current = net.hub("HUBN").directory().directory().clone();
    let revoked = fed.next_directory(&current, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == "E5A1B").unwrap();
        m.keys[0].status = KeyStatus::Revoked { at: fed.start };
    });
    net.with_hub("HUBN", |h, now| h.handle_directories(vec![revoked], now)).unwrap();
    net.run_for(2_000);
    assert_eq!(net.hub("HUBS").directory().version(), 2, "the new directory spread to the other hub");
    let before = net.disk("HUBN").clone();
    net.with_hub("HUBN", |h, now| {
        h.handle_message(&OdsCode::parse("HUBS").unwrap(), forged_batch(&fed, "E5A1B", "E5A1B", 1), now)
    });
    net.run_for(1_000);
    assert_eq!(net.disk("HUBN"), &before, "nothing stored");
    assert!(
        !net.events_of("HUBN", |e| matches!(e, Event::BatchRefused { reason, .. } if reason.contains("revoked")))
            .is_empty()
    );
}

#[test]
fn authority_equivocates__second_entry_refused__proof_kept__alarm_raised() {
    let mut net = net();
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    let fed = net.fed.clone();
    // Newham's key signs a different entry 1 and a hub is handed it.
    let other = forged_batch(&fed, "316", "316", 1);
    net.with_hub("HUBS", |h, now| h.handle_message(&OdsCode::parse("HUBN").unwrap(), other, now));
    net.run_for(1_000);
    assert_eq!(net.events_of("HUBS", |e| matches!(e, Event::Equivocation { seq: 1, .. })).len(), 1);
    assert!(net.disk("HUBS").keys().any(|(t, _)| *t == Table::Equivocations), "proof kept");
    let shown = net.hub("HUBS").visible_plans(nhs(CHILD), net.now);
    assert_eq!(shown.len(), 1, "the first entry stands");
    assert!(net.hub("HUBS").visible_plans(nhs(OTHER_CHILD), net.now).is_empty(), "the second is refused");
}

#[test]
fn scheduled_lookup__neither_notifies_nor_enters_history() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let scheduled = net.lookup("GP001", "HUBS", nhs(CHILD), LookupKind::Scheduled);
    net.run_for(60_000);
    assert_eq!(answer_plans(&net, scheduled).len(), 1, "a scheduled lookup still sees the plan");
    assert_eq!(inbox_len(&net, "204"), 0);
    assert!(net.hub("HUBS").history(nhs(CHILD)).is_empty());
    assert!(net.disk("HUBS").keys().any(|(t, _)| *t == Table::AccessLog), "but it is audited");
}

#[test]
fn invalid_nhs_number__refused_before_any_state_changes() {
    assert!(NhsNumber::parse("9876544321").is_err(), "the setting cannot even build the lookup");
    // A hostile setting hand-encodes a lookup with an invalid number: the wire refuses it.
    let mut net = net();
    net.run_for(1_000);
    let good = net.setting("RXH01").lookup(
        nhs(CHILD),
        cpis_protocol::records::Person { id: "U1".into(), name: "N".into(), role: "R".into() },
        LookupKind::Unscheduled,
        cpis_protocol::ids::LookupId([7; 16]),
        net.now,
    );
    let mut frame = cpis_protocol::wire::encode_frame(&Message::Lookup(good.unwrap()));
    let digits = 9_434_765_919u64.to_le_bytes();
    let at = frame.windows(8).position(|w| w == digits).expect("number in frame");
    frame[at..at + 8].copy_from_slice(&9_876_544_321u64.to_le_bytes());
    let before = net.disk("HUBS").clone();
    net.send_from_setting("RXH01", "HUBS", Message::Sync { directory_version: 1, have: vec![] });
    net.send_raw("RXH01", "HUBS", frame);
    net.run_for(1_000);
    assert_eq!(net.disk("HUBS"), &before);
    let refused =
        net.events_of("HUBS", |e| matches!(e, Event::MessageRefused { reason, .. } if reason.contains("check digit")));
    assert_eq!(refused.len(), 1);
}

fn stored_lookup(net: &Net) -> cpis_protocol::sign::Signed<cpis_protocol::records::AccessEvent> {
    let Some((_, access)) = net.disk("HUBS").iter().find(|((t, _), _)| *t == Table::AccessLog) else {
        panic!("no access log")
    };
    cpis_protocol::codec::decode(access, 1 << 20).unwrap()
}

fn access_rows(net: &Net) -> usize {
    net.disk("HUBS").keys().filter(|(t, _)| *t == Table::AccessLog).count()
}

#[test]
fn same_signed_lookup_sent_again__answered_again__no_second_notification_or_visit() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(2_000);
    let signed = stored_lookup(&net);
    assert_eq!(signed.body.lookup_id, lookup);
    let before = access_rows(&net);
    net.send_from_setting("RXH01", "HUBS", Message::Lookup(signed));
    net.run_for(60_000);
    let answers = net.received.iter().filter(|r| matches!(&r.message, Message::Answer(a) if a.lookup_id == lookup));
    assert_eq!(answers.count(), 2, "a setting retrying after a lost answer gets it again");
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(access_rows(&net), before);
    assert_eq!(net.hub("HUBS").history(nhs(CHILD)).len(), 1);
}

#[test]
fn replayed_lookup_id_with_other_content__refused__nothing_changes() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let lookup = net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(2_000);
    let mut event = stored_lookup(&net).body;
    event.person.id = "SOMEONE-ELSE".into();
    let replay = net.fed.identity("RXH01").sign(event);
    let before = net.disk("HUBS").clone();
    net.send_from_setting("RXH01", "HUBS", Message::Lookup(replay));
    net.run_for(60_000);
    let refused =
        net.events_of("HUBS", |e| matches!(e, Event::LookupRefused { reason, .. } if reason.contains("replay")));
    assert_eq!(refused.len(), 1);
    assert!(matches!(net.reply_to(lookup), Some(Message::Answer(_))));
    assert_eq!(inbox_len(&net, "204"), 1);
    assert_eq!(net.disk("HUBS"), &before);
}

#[test]
fn duplicate_notification_before_the_first_is_durable__receipt_waits_for_the_write() {
    let cfg = NetConfig { durable_delay_ms: 2_000, latency_ms: 5, jitter_ms: 0, ..Default::default() };
    let mut net = Net::new(federation(), cfg);
    record(&mut net, "316", plan("CPP-1", CHILD, PlanType::ChildProtection));
    net.run_for(10_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
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
fn relaying_hub_claims_a_higher_mark_than_it_sends__others_do_not_skip_entries() {
    let mut net = net();
    net.run_for(1_000);
    let lie = Message::Feed(FeedBatch {
        origin: OdsCode::parse("204").unwrap(),
        after: 0,
        upto: 1_000_000,
        entries: vec![],
        as_of: net.now,
    });
    net.with_hub("HUBS", |h, now| h.handle_message(&OdsCode::parse("HUBN").unwrap(), lie, now));
    assert!(net.hub("HUBS").high_waters().iter().all(|h| h.origin.as_str() != "204" || h.seq == 0));
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(5_000);
    assert_eq!(net.hub("HUBS").visible_plans(nhs(CHILD), net.now).len(), 1, "the real entry still arrives");
}

#[test]
fn setting_claims_freshness_for_an_authority__ignored() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let before = net.hub("HUBS").high_waters();
    let claim = cpis_protocol::wire::HighWater {
        origin: OdsCode::parse("204").unwrap(),
        seq: 0,
        as_of: net.now.plus_ms(365 * DAY_MS),
    };
    net.send_from_setting("RXH01", "HUBS", Message::Sync { directory_version: 1, have: vec![claim] });
    net.run_for(100);
    assert_eq!(net.hub("HUBS").high_waters(), before);
}

#[test]
fn authority_restored_from_an_old_backup__skips_past_what_hubs_hold__new_plans_replicate() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    let backup = net.disk("204").clone();
    record(&mut net, "204", plan("LAC-2", OTHER_CHILD, PlanType::LookedAfter));
    record(&mut net, "204", plan("LAC-3", OTHER_CHILD, PlanType::LookedAfter));
    net.run_for(2_000);
    net.crash("204");
    net.replace_disk("204", backup);
    net.restart("204");
    net.run_for(2_000);
    record(&mut net, "204", plan("LAC-4", "9990001235", PlanType::LookedAfter));
    net.run_for(5_000);
    assert_eq!(net.events_of("204", |e| matches!(e, Event::FeedBehindHub { .. })).len(), 1);
    assert!(
        net.events.iter().all(|(_, e)| !matches!(e, Event::Equivocation { .. })),
        "an honest authority is not an equivocator"
    );
    assert_eq!(net.hub("HUBS").visible_plans(nhs("9990001235"), net.now).len(), 1);
}

#[test]
fn hub_recovers_from_empty_database__catches_up_from_peer() {
    let mut net = net();
    record(&mut net, "204", plan("LAC-1", CHILD, PlanType::LookedAfter));
    record(&mut net, "E5A1B", plan("CPP-2", OTHER_CHILD, PlanType::ChildProtection));
    net.run_for(2_000);
    net.lookup("RXH01", "HUBS", nhs(CHILD), LookupKind::Unscheduled);
    net.run_for(60_000);
    net.wipe("HUBS");
    net.restart("HUBS");
    net.run_for(60_000);
    let h = net.hub("HUBS");
    assert_eq!(h.visible_plans(nhs(CHILD), net.now).len(), 1);
    assert_eq!(h.visible_plans(nhs(OTHER_CHILD), net.now).len(), 1);
    assert_eq!(h.history(nhs(CHILD)).len(), 1, "its own visits came back from the peer hub");
}

#[test]
fn lossy_network__everything_converges_and_every_notice_arrives_once() {
    let cfg = NetConfig { loss_per_million: 200_000, seed: 42, ..Default::default() };
    let mut net = Net::new(federation(), cfg);
    let mut children = Vec::new();
    for i in 0..20 {
        let child = format!("{:09}", 100_000_000 + i * 7919);
        let Some(n) = (0..10).find_map(|d| NhsNumber::parse(&format!("{child}{d}")).ok()) else {
            continue;
        };
        record(&mut net, "204", Plan { nhs: n, ..plan(&format!("LAC-{i}"), CHILD, PlanType::LookedAfter) });
        children.push(n);
    }
    net.run_for(5_000);
    let lookups: Vec<_> =
        children.iter().take(5).map(|&n| net.lookup("RXH01", "HUBS", n, LookupKind::Unscheduled)).collect();
    net.run_for(600_000);
    let hn: Vec<_> = net.hub("HUBN").entries().map(|e| e.body.clone()).collect();
    let hs: Vec<_> =
        net.hub("HUBS").entries().filter(|e| e.body.origin.as_str() != "HUBS").map(|e| e.body.clone()).collect();
    let recorded = net.authority("204").plans().count();
    assert!(recorded >= 15, "most stems have a valid check digit");
    assert_eq!(hn.iter().filter(|e| e.origin.as_str() == "204").count(), recorded);
    assert_eq!(
        hn.iter().filter(|e| e.origin.as_str() == "204").collect::<Vec<_>>(),
        hs.iter().filter(|e| e.origin.as_str() == "204").collect::<Vec<_>>()
    );
    let answered: Vec<_> = lookups.iter().filter(|l| matches!(net.reply_to(**l), Some(Message::Answer(_)))).collect();
    assert!(!answered.is_empty(), "some lookups got through the loss");
    let inbox: Vec<_> = net.authority("204").inbox().map(|i| i.notification.body.event.body.lookup_id).collect();
    for l in &answered {
        assert_eq!(inbox.iter().filter(|i| i == l).count(), 1, "each answered lookup notified exactly once");
    }
}
