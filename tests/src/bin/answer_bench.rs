//! What a verifiable answer costs at national scale (release build):
//! `cargo run --release -p cpis-tests --bin cpis-answer-bench -- [authorities] [plans]`
//! (defaults: England, 152 authorities and 135,000 plans).
//!
//! Builds every authority's published feed and signed head, restores a hub from those rows (as a
//! hub that has replicated the nation holds them), and asks it, through its own state machine, to
//! answer lookups: of a child with no plan, and of a child with plans at two councils. Prints the
//! answer's size on the wire, the hub's time to build it, and the setting's time to verify it with
//! no head seen before (a one-shot lookup) and with every head already verified (a gateway that
//! keeps its verified heads). Asserts nothing about speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: a failed precondition panics.

use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead, LiveFeed};
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::{Machine, RoleConfig};
use cpis_protocol::records::{Person, Plan, PlanType, SettingType};
use cpis_protocol::schema::{self, StoreOp, StoredRow};
use cpis_protocol::setting::Setting;
use cpis_protocol::time::Date;
use cpis_protocol::wire::{self, Message};
use std::time::{Duration, Instant};

fn child(i: u64) -> NhsNumber {
    (0..10)
        .find_map(|d| NhsNumber::try_from((100_000_000 + i * 7) * 10 + d).ok())
        .unwrap_or_else(|| child(i + 1_000_000))
}

fn put(rows: &mut Vec<StoredRow>, op: StoreOp) {
    if let StoreOp::Put { table, key, value } = op {
        rows.push(StoredRow { table, key, value });
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let authorities = args.first().copied().unwrap_or(152);
    let plans = args.get(1).copied().unwrap_or(135_000);
    let codes: Vec<String> = (0..authorities).map(|i| format!("{}", 100 + i)).collect();
    let mut spec = FederationSpec::new("answer-bench").hub("HUB01");
    for c in &codes {
        spec = spec.authority(c, &format!("Council {c}"), &["HUB01"]);
    }
    let fed = spec.setting("RXH01", "Bench ED", SettingType::EmergencyDepartment, &["HUB01"]).build();
    let now = fed.start;
    let start = Date::parse("2026-01-05").unwrap();

    let built = Instant::now();
    let mut rows = Vec::new();
    let per = plans / authorities.max(1);
    for (a, code) in codes.iter().enumerate() {
        let origin = OdsCode::parse(code).unwrap();
        let identity = fed.identity(code);
        let mut feed = LiveFeed::new();
        for k in 0..per {
            let plan = Plan {
                reference: PlanRef::parse(&format!("P-{a}-{k}")).unwrap(),
                nhs: child(a as u64 * per + k),
                plan_type: if k % 3 == 0 { PlanType::ChildProtection } else { PlanType::LookedAfter },
                start,
                end: None,
                due: None,
                withdrawn: false,
            };
            let entry =
                identity.sign(FeedEntry { origin: origin.clone(), seq: k + 1, at: now, body: EntryBody::Plan(plan) });
            put(&mut rows, schema::ENTRIES.put(&(origin.clone(), k + 1), &entry));
            feed.apply(entry);
        }
        let (plans_root, children, contacts) = feed.commitment();
        let head =
            identity.sign(FeedHead { origin: origin.clone(), seq: per, at: now, plans_root, children, contacts });
        put(&mut rows, schema::HEADS.put(&origin, &head));
    }
    put(&mut rows, schema::schema_op());
    // The child with plans at two councils: the first council's first child, also at the second.
    let twin = child(0);
    let second = OdsCode::parse(&codes[1]).unwrap();
    {
        let identity = fed.identity(&codes[1]);
        let extra = Plan {
            reference: PlanRef::parse("TWIN-1").unwrap(),
            nhs: twin,
            plan_type: PlanType::ChildProtection,
            start,
            end: None,
            due: None,
            withdrawn: false,
        };
        // Rebuild the second council's feed with the extra plan and a new head.
        rows.retain(|r| !(r.table == schema::Table::Heads && r.key == schema::HEADS.key(&second)));
        let mut feed = LiveFeed::new();
        for r in schema::ENTRIES.decode_all(&rows) {
            let ((o, _), e) = r.unwrap();
            if o == second {
                feed.apply(e);
            }
        }
        let entry =
            identity.sign(FeedEntry { origin: second.clone(), seq: per + 1, at: now, body: EntryBody::Plan(extra) });
        put(&mut rows, schema::ENTRIES.put(&(second.clone(), per + 1), &entry));
        feed.apply(entry);
        let (plans_root, children, contacts) = feed.commitment();
        let head =
            identity.sign(FeedHead { origin: second.clone(), seq: per + 1, at: now, plans_root, children, contacts });
        put(&mut rows, schema::HEADS.put(&second, &head));
    }
    println!("{authorities} authorities, {} plans: built and signed in {:.2?}", per * authorities + 1, built.elapsed());

    let restored = Instant::now();
    let config = RoleConfig::Hub(Default::default());
    let hub_code = OdsCode::parse("HUB01").unwrap();
    let count = rows.len();
    let mut hub = Machine::restore(hub_code, fed.identity("HUB01"), fed.trusted(), config, rows, now).unwrap();
    println!("hub restored from {count} rows in {:.2?}", restored.elapsed());
    let setting_code = OdsCode::parse("RXH01").unwrap();
    hub.handle_connected(&setting_code, fed.identity("RXH01").key_id(), now);
    let _ = hub.drain();

    let person = Person { id: "B1".into(), name: "Bench".into(), role: "Nurse".into() };
    let mut warm = Setting::new(setting_code.clone(), fed.identity("RXH01"), fed.trusted()).unwrap();
    let mut json = Vec::new();
    for (label, nhs) in [("no plan", child(10_000_000)), ("plans at two councils", twin)] {
        let (mut hub_ms, mut cold_ms, mut warm_ms, mut parallel_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut bytes = 0;
        for round in 0..20u64 {
            let at = now.plus_ms(round);
            let id = LookupId([round as u8 + if nhs == twin { 100 } else { 0 }; 16]);
            let signed = warm.lookup(nhs, person.clone(), id, at).unwrap();
            let event = signed.body.clone();
            let t = Instant::now();
            hub.handle_message(&setting_code, Message::Lookup(signed), at);
            let mut out = hub.drain();
            for w in &out.writes {
                hub.handle_durable(w.id, at);
            }
            out.transmits.extend(hub.drain().transmits);
            if !out.transmits.iter().any(|t| matches!(t.message, Message::Answer(_))) {
                panic!("no answer: {:?}", out.events);
            }
            let answer = out
                .transmits
                .into_iter()
                .find_map(|t| match t.message {
                    Message::Answer(a) => Some(a),
                    _ => None,
                })
                .expect("an answer");
            hub_ms.push(t.elapsed());
            bytes = wire::encode_frame(&Message::Answer(answer.clone())).len();
            let mut cold = Setting::new(setting_code.clone(), fed.identity("RXH01"), fed.trusted()).unwrap();
            let t = Instant::now();
            let v = cold.verify_answer(&event, answer.clone(), at).unwrap();
            cold_ms.push(t.elapsed());
            let mut parallel = Setting::new(setting_code.clone(), fed.identity("RXH01"), fed.trusted()).unwrap();
            let t = Instant::now();
            cpis_node::client::verify_heads_in_parallel(&mut parallel, &answer);
            let p = parallel.verify_answer(&event, answer.clone(), at).unwrap();
            parallel_ms.push(t.elapsed());
            assert_eq!(v, p);
            let t = Instant::now();
            let w = warm.verify_answer(&event, answer, at).unwrap();
            warm_ms.push(t.elapsed());
            assert_eq!(v, w);
            assert!(v.authorities.iter().all(|a| a.checked()));
            assert_eq!(v.plans().count(), if nhs == twin { 2 } else { 0 });
        }
        let (hub_p50, cold_p50, warm_p50, parallel_p50) = (
            percentile(&mut hub_ms, 0.5),
            percentile(&mut cold_ms, 0.5),
            percentile(&mut warm_ms, 0.5),
            percentile(&mut parallel_ms, 0.5),
        );
        println!(
            "{label}: answer {bytes} bytes ({:.1} KiB); hub builds it in {hub_p50:.2?} (p50, incl. the durable write's bookkeeping);\n  \
             setting verifies it with no head known in {cold_p50:.2?} on one core, {parallel_p50:.2?} with heads checked on every core \
             (as `cpis lookup` does), {warm_p50:.2?} with every head already verified (a gateway)",
            bytes as f64 / 1024.0
        );
        json.push(format!(
            "\"{}\":{{\"bytes\":{bytes},\"hub_ms\":{:.3},\"verify_one_core_ms\":{:.3},\"verify_all_cores_ms\":{:.3},\"verify_warm_ms\":{:.3}}}",
            label.replace(' ', "_"),
            hub_p50.as_secs_f64() * 1e3,
            cold_p50.as_secs_f64() * 1e3,
            parallel_p50.as_secs_f64() * 1e3,
            warm_p50.as_secs_f64() * 1e3
        ));
    }
    println!("{{{}}}", json.join(","));
}
