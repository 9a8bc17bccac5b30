//! Writes the seed corpora of the fuzz targets: real frames and payloads (a Sync, a Digest, a
//! Feed batch with its head, a Lookup, an Answer, and the other messages a small federation
//! exchanges), the fixed federation's signed directory and its next version, and the example plan
//! file.
//!
//! `.ci/fuzz seeds` runs it: `seeds <corpus dir>` (tests/fuzz/corpus) writes `<dir>/<target>/<name>`.

use cpis_protocol::codec;
use cpis_protocol::harness::{Net, NetConfig, code};
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::machine::{Command, Transmit};
use cpis_protocol::records::{Person, Plan, PlanType};
use cpis_protocol::refusal::RefusalCode;
use cpis_protocol::time::Date;
use cpis_protocol::wire::{self, FeedBatch, Message, Notification, Receipt, Refused};
use libfuzzer_sys as _; // The coverage hooks of the instrumented code live in libFuzzer.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PLANS_CSV: &[u8] = include_bytes!("../../../../tools/examples/plans.csv");

fn plan(reference: &str, nhs: &str, plan_type: PlanType) -> Plan {
    Plan {
        reference: must(PlanRef::parse(reference)),
        nhs: must(NhsNumber::parse(nhs)),
        plan_type,
        start: must(Date::parse("2026-01-05")),
        end: None,
        due: None,
        withdrawn: false,
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("seed fixture is invalid: {e}"))
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    must(std::fs::create_dir_all(&d));
    must(std::fs::write(d.join(name), bytes));
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn describe(m: &Message) -> String {
    match m {
        Message::Sync { marks, .. } => format!("{} marks", marks.len()),
        Message::Feed(b) => format!("{} entries of {}, head {}", b.entries.len(), b.origin, b.head.is_some()),
        Message::Answer(a) => format!(
            "{} authorities, {} plans, {} visits",
            a.authorities.len(),
            a.authorities.iter().map(|x| x.plans.len()).sum::<usize>(),
            a.history.len()
        ),
        Message::Directories(c) => format!("{} versions", c.len()),
        other => other.kind().to_string(),
    }
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "tests/fuzz/corpus".into()));
    let fed = cpis_fuzz::federation();
    let mut net = Net::new(fed.clone(), NetConfig::default());
    net.command("204", Command::RecordPlan(plan("LAC-2026-0001", "943 476 5919", PlanType::LookedAfter)));
    net.command("204", Command::RecordPlan(plan("CPP-2026-0002", "401 023 2137", PlanType::ChildProtection)));
    net.command("E5A1B", Command::RecordPlan(plan("CPP-9", "943 476 5919", PlanType::ChildProtection)));
    net.run_for(5_000);

    // Messages as the machines send them, first of each kind (drained, so never delivered).
    let mut seen: BTreeMap<&'static str, Message> = BTreeMap::new();
    let mut keep = |ts: Vec<Transmit>| {
        for t in ts {
            let kind = t.message.kind();
            let better = match (&t.message, seen.get(kind)) {
                (_, None) => true,
                // Prefer a feed batch that carries entries and its head.
                (Message::Feed(b), Some(Message::Feed(old))) => {
                    b.head.is_some() && !b.entries.is_empty() && (old.head.is_none() || old.entries.is_empty())
                }
                _ => false,
            };
            if better {
                seen.insert(kind, t.message);
            }
        }
    };
    let hubn = code("HUBN");
    let key = fed.identity("HUBN").key_id();
    // An authority's Sync on (re)connecting to its hub, and its whole feed with its head when the
    // hub says it holds nothing.
    keep(net.with_machine("204", |m, now| {
        m.handle_connected(&hubn, key, now);
        m.drain().transmits
    }));
    keep(net.with_machine("204", |m, now| {
        m.handle_message(&hubn, Message::Sync { directory_version: 1, marks: vec![] }, now);
        m.drain().transmits
    }));

    // A lookup by the setting; the hub's answer to its second one (with proofs, contacts and the
    // first visit); the notification the hub would send, the authority's receipt, a refusal.
    let nhs = must(NhsNumber::parse("9434765919"));
    let setting = net.setting("RXH01");
    let person = Person { id: "U1".into(), name: "Dr A Clinician".into(), role: "Nurse".into() };
    let lookup = must(setting.lookup(nhs, person, LookupId([7; 16]), net.now));
    net.lookup("RXH01", "HUBS", nhs);
    net.run_for(5_000);
    let id = net.lookup("RXH01", "HUBS", nhs);
    net.run_for(5_000);
    if let Some(answer) = net.reply_to(id).cloned() {
        seen.insert(answer.kind(), answer);
    }
    let notification = Notification {
        event: lookup.clone(),
        authority: code("204"),
        matched: vec![must(PlanRef::parse("LAC-2026-0001"))],
        hub: code("HUBS"),
        answered_at: net.now,
        signed_at: net.now,
    };
    let notification = fed.identity("HUBS").sign(notification);
    seen.insert("notify", Message::Notify(notification.clone()));
    let receipt =
        Receipt { lookup_id: lookup.body.lookup_id, authority: code("204"), hub: code("HUBS"), stored_at: net.now };
    let receipt = fed.identity("204").sign(receipt);
    seen.insert("receipt", Message::Receipt(receipt.clone()));
    seen.insert("redelivered", Message::Redelivered { notification: Box::new(notification), receipt });
    seen.insert(
        "refused",
        Message::Refused(Refused { lookup_id: Some(LookupId([7; 16])), code: RefusalCode::ClockSkew }),
    );
    seen.insert("lookup", Message::Lookup(lookup));
    seen.insert("redeliver", Message::Redeliver { since: fed.start, from: LookupId([0; 16]) });
    seen.insert("redeliver-page", Message::RedeliverPage { next: Some((net.now, LookupId([9; 16]))) });
    // The periodic sync between hubs: a digest, and the marks of a bucket that differed.
    let marks = vec![wire::Mark { origin: code("204"), seq: 2, head_at: net.now }];
    let (directory, fingerprints) = (wire::directory_fingerprint(&fed.directory.directory), wire::fingerprints(&marks));
    seen.insert("digest", Message::Digest { directory_version: 1, directory, fingerprints });
    let buckets = 1 << wire::bucket_of(&code("204"));
    seen.insert("sync-part", Message::SyncPart { directory_version: 1, buckets, marks });
    // A hub telling an authority how far each hub holds its feed.
    let hubs = vec![wire::HeldBy { hub: code("HUBN"), seq: 2 }, wire::HeldBy { hub: code("HUBS"), seq: 1 }];
    seen.insert("held", Message::Held { hubs });
    if let Some(Message::Feed(FeedBatch { head: Some(head), .. })) = seen.get("feed") {
        let head = head.clone();
        seen.insert("head", Message::Head(head));
    }
    // A newer directory version, as a Directories message.
    let v2 = fed.next_directory(&fed.directory.directory, |d| d.members.retain(|m| m.code.as_str() != "RXH01"));
    seen.insert("directories", Message::Directories(vec![v2.clone()]));

    for name in ["sync", "feed", "lookup", "answer", "head"] {
        assert!(seen.contains_key(name), "no {name} message was captured");
    }
    for (kind, message) in &seen {
        println!("{kind}: {}", describe(message));
        write(&dir, "frame", kind, &wire::encode_frame(message));
        write(&dir, "message", kind, &wire::encode_payload(message));
    }

    write(&dir, "directory", "v1", &codec::encode(&fed.directory));
    write(&dir, "directory", "v2", &codec::encode(&v2));
    write(&dir, "csv", "plans.csv", PLANS_CSV);
}
