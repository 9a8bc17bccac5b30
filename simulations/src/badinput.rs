//! Bad input (invariant 6 of docs/overview.md): garbage, oversized and wrong-version frames, a
//! feed signed by the wrong key, another origin's feed, replayed lookups, messages a role may not
//! send, forged notifications and receipts. Frames the wire decoder refuses never reach a machine
//! (the receiving driver closes the connection); every other input is handed straight to its
//! target machine, which must refuse it with a typed [`Refusal`] of the expected kind (at most a
//! `Refused` or a `Sync` sent back), write nothing, and keep every figure of its state as it was.

use crate::checker::History;
use crate::cluster::Cluster;
use crate::fnv::Fnv;
use crate::world::{FEDERATION, NodeId};
use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead};
use cpis_protocol::harness::{SplitMix64, test_identity};
use cpis_protocol::ids::{LookupId, PlanRef};
use cpis_protocol::machine::{Event, Machine};
use cpis_protocol::records::{AccessEvent, Plan, PlanType};
use cpis_protocol::refusal::Refusal;
use cpis_protocol::schema::{self, StoredRow, Table};
use cpis_protocol::sign::{Identity, KeyId, Signable, Signed};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, FRAME_BYTES_MAX, FeedBatch, Message, Notification, Receipt, WireError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::hash::Hasher;

/// The kinds of bad input, in the order they are drawn.
pub const BAD_INPUT_KINDS: [&str; 10] = [
    "garbage-frame",
    "oversized-frame",
    "wrong-version",
    "feed-signed-by-wrong-key",
    "another-origins-feed",
    "replayed-lookup",
    "message-not-allowed-for-role",
    "forged-notification",
    "forged-receipt",
    "lookup-id-reused-for-another-lookup",
];

/// Figures of the bad input injected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BadInputStats {
    pub injected: u64,
    pub refused: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

/// The bad-input injector (part of the faults actor).
pub struct BadInput {
    rng: SplitMix64,
    forger: Identity,
    pub stats: BadInputStats,
}

/// A record signed by a stranger under `key_id` (a key it does not hold).
pub fn forge<T: Signable>(forger: &Identity, body: T, key_id: KeyId) -> Signed<T> {
    let s = forger.sign(body);
    Signed { body: s.body, key_id, signature: s.signature }
}

/// A compact account of a machine's state that no refused message may change.
pub fn fingerprint(m: Option<&Machine>) -> u64 {
    let mut h = Fnv::default();
    match m {
        Some(Machine::Hub(hub)) => {
            for (origin, r) in hub.replicas() {
                let at = r.head().map(|x| x.body.at);
                h.write_words(format!("{origin}|{}|{at:?}|{}", r.seq(), r.feed().len()).as_bytes());
            }
            let marks: Vec<(String, u64)> = hub.visit_marks().map(|(o, s)| (o.to_string(), s)).collect();
            h.write_words(format!("{marks:?}|{:?}|{}", hub.outbox_depths(), hub.entries().count()).as_bytes());
        }
        Some(Machine::Authority(a)) => {
            let head = a.head().map(|x| (x.body.seq, x.body.at));
            let s =
                format!("{}|{head:?}|{:?}|{}|{}", a.last_seq(), a.inbox_counts(), a.plans().count(), a.feed().len());
            h.write_words(s.as_bytes());
        }
        None => {}
    }
    h.finish()
}

/// What a bad input is expected to meet.
enum Expect {
    /// The machine refuses it with a refusal of this kind.
    Refusal(fn(&Refusal) -> bool),
    /// As `Refusal`, or (the very same signed lookup again) a retry answered with nothing changed.
    RefusalOrRetry(fn(&Refusal) -> bool),
}

impl BadInput {
    pub fn new(seed: u64) -> BadInput {
        BadInput {
            rng: SplitMix64::new(seed ^ 0xBAD0_1A9E),
            forger: test_identity(FEDERATION, "FORGER"),
            stats: BadInputStats::default(),
        }
    }

    /// Injects one bad input of a kind drawn at random.
    pub fn inject_random(&mut self, cluster: &mut Cluster, history: &mut History) {
        let kind = self.rng.below(BAD_INPUT_KINDS.len() as u64) as usize;
        self.inject(cluster, history, kind);
    }

    /// Injects one bad input of kind `kind` (an index into [`BAD_INPUT_KINDS`]).
    pub fn inject(&mut self, cluster: &mut Cluster, history: &mut History, kind: usize) {
        let w = &cluster.world;
        let hub = w.hubs.start + self.rng.below(w.hubs.len() as u64) as usize;
        let other_hub = w.hubs.start + (hub - w.hubs.start + 1) % w.hubs.len();
        let auths = w.authorities.clone();
        let authority = auths.start + self.rng.below(auths.len() as u64) as usize;
        let other = auths.start + (authority - auths.start + 1) % auths.len();
        let setting = w.settings.start + self.rng.below(w.settings.len() as u64) as usize;
        let made: Option<(NodeId, NodeId, Message, Expect)> = match kind {
            0 => {
                let frame = self.garbage();
                return self.wire(cluster, history, (hub, authority), frame, "garbage-frame", |e| {
                    matches!(e, WireError::Truncated)
                });
            }
            1 => {
                return self.wire(cluster, history, (hub, authority), oversized(), "oversized-frame", |e| {
                    matches!(e, WireError::FrameTooLarge { .. })
                });
            }
            2 => {
                return self.wire(cluster, history, (hub, authority), wrong_version(), "wrong-version", |e| {
                    matches!(e, WireError::UnsupportedVersion(_))
                });
            }
            3 => Some((
                hub,
                other_hub,
                Message::Feed(self.forged_feed(cluster, hub, authority)),
                Expect::Refusal(|r| matches!(r, Refusal::Head { .. } | Refusal::NotConnected)),
            )),
            4 => Some((
                hub,
                authority,
                Message::Feed(self.forged_feed(cluster, hub, other)),
                Expect::Refusal(|r| matches!(r, Refusal::NotOwnFeed | Refusal::NotConnected)),
            )),
            5 => self.logged_lookup(cluster, hub).map(|(from, signed)| {
                let expect = Expect::RefusalOrRetry(|r| {
                    matches!(r, Refusal::ClockSkew { .. } | Refusal::Replayed(_) | Refusal::NotConnected)
                });
                (hub, from, Message::Lookup(signed), expect)
            }),
            6 => Some((
                hub,
                setting,
                Message::Feed(self.forged_feed(cluster, hub, authority)),
                Expect::Refusal(|r| matches!(r, Refusal::NotAllowed { .. } | Refusal::NotConnected)),
            )),
            7 => Some((
                authority,
                hub,
                Message::Notify(self.forged_notification(cluster, hub, authority, setting)),
                Expect::Refusal(|r| matches!(r, Refusal::Signature(_) | Refusal::NotConnected)),
            )),
            8 => Some((
                hub,
                authority,
                Message::Receipt(self.forged_receipt(cluster, hub, authority)),
                Expect::Refusal(|r| matches!(r, Refusal::Signature(_) | Refusal::NotConnected)),
            )),
            _ => self.logged_lookup(cluster, hub).map(|(from, signed)| {
                let mut event = signed.body;
                event.nhs = crate::world::unflagged_child(&mut self.rng);
                let again = cluster.world.fed.identity(cluster.world.code(from).as_str()).sign(event);
                let expect = Expect::Refusal(|r| {
                    matches!(r, Refusal::ClockSkew { .. } | Refusal::Replayed(_) | Refusal::NotConnected)
                });
                (hub, from, Message::Lookup(again), expect)
            }),
        };
        let Some((to, from, message, expect)) = made else { return };
        self.check(cluster, history, to, from, message, expect, BAD_INPUT_KINDS[kind]);
    }

    fn count(&mut self, what: &'static str, refused: bool) {
        self.stats.injected += 1;
        self.stats.refused += u64::from(refused);
        *self.stats.by_kind.entry(what).or_default() += 1;
    }

    /// A frame the wire decoder must refuse; sent over the link too (the receiver closes it).
    fn wire(
        &mut self,
        cluster: &mut Cluster,
        history: &mut History,
        (to, from): (NodeId, NodeId),
        frame: Vec<u8>,
        what: &'static str,
        expect: fn(&WireError) -> bool,
    ) {
        let ok = matches!(wire::decode_frame(&frame), Err(e) if expect(&e));
        self.count(what, ok);
        if !ok {
            history.unexpected("bad-input", format!("{what}: the wire decoder did not refuse it as expected"));
        }
        cluster.send_frame(from, to, frame);
    }

    /// Hands `message` to `to` as if from `from`, and checks it was refused and nothing changed.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        cluster: &mut Cluster,
        history: &mut History,
        to: NodeId,
        from: NodeId,
        message: Message,
        expect: Expect,
        what: &'static str,
    ) {
        if cluster.machine(to).is_none() {
            return;
        }
        let before = fingerprint(cluster.machine(to));
        let Some(out) = cluster.inject(to, from, message) else { return };
        let (expected, retry_ok): (fn(&Refusal) -> bool, bool) = match expect {
            Expect::Refusal(f) => (f, false),
            Expect::RefusalOrRetry(f) => (f, true),
        };
        let refusal = |e: &Event| match e {
            Event::MessageRefused { reason, .. }
            | Event::BatchRefused { reason, .. }
            | Event::LookupRefused { reason, .. } => expected(reason),
            _ => false,
        };
        // The very same signed lookup again is a setting's retry: the hub may answer it again
        // (or hold the answer behind a pending write), changing nothing.
        let retry = retry_ok && out.events.is_empty();
        let mut broken = vec![];
        if !out.writes.is_empty() {
            broken.push(format!("{} writes", out.writes.len()));
        }
        if !retry && (out.events.is_empty() || !out.events.iter().all(refusal)) {
            broken.push(format!("events {:?}", out.events));
        }
        let allowed = |m: &Message| {
            matches!(m, Message::Refused(_) | Message::Sync { .. }) || (retry && matches!(m, Message::Answer(_)))
        };
        if let Some(t) = out.transmits.iter().find(|t| !allowed(&t.message)) {
            broken.push(format!("sent a {} message", t.message.kind()));
        }
        if fingerprint(cluster.machine(to)) != before {
            broken.push("its state changed".into());
        }
        self.count(what, broken.is_empty());
        if !broken.is_empty() {
            let w = &cluster.world;
            let detail = format!("{what} from {} to {}: {}", w.code(from), w.code(to), broken.join("; "));
            history.unexpected("bad-input", detail);
        }
    }

    /// Random bytes whose length prefix says one byte more than follows.
    fn garbage(&mut self) -> Vec<u8> {
        let len = 4 + self.rng.below(60) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        frame[..4].copy_from_slice(&((len - 3) as u32).to_be_bytes());
        frame
    }

    /// A feed batch of `origin` whose entry and head are signed by a stranger under the origin's
    /// key id.
    fn forged_feed(&mut self, cluster: &Cluster, hub: NodeId, origin: NodeId) -> FeedBatch {
        let code = cluster.world.code(origin).clone();
        let held = cluster.hub(hub).and_then(|h| h.replicas().get(&code)).and_then(|r| r.head().cloned());
        let seq = held.as_ref().map_or(0, |h| h.body.seq) + 1;
        let now = cluster.node_now(hub);
        let plan = Plan {
            reference: PlanRef::parse("FORGED-1").unwrap_or_else(|e| panic!("simulator built a bad reference: {e}")),
            nhs: crate::world::unflagged_child(&mut self.rng),
            plan_type: PlanType::LookedAfter,
            start: now.date().plus_days(-10),
            end: None,
            due: None,
            withdrawn: false,
        };
        let key_id = cluster.world.fed.identity(code.as_str()).key_id();
        let entry =
            forge(&self.forger, FeedEntry { origin: code.clone(), seq, at: now, body: EntryBody::Plan(plan) }, key_id);
        let head = FeedHead {
            origin: code.clone(),
            seq,
            at: now,
            plans_root: held.as_ref().map(|h| h.body.plans_root).unwrap_or_default(),
            children: held.as_ref().map_or(0, |h| h.body.children) + 1,
            contacts: held.as_ref().and_then(|h| h.body.contacts),
        };
        let head = forge(&self.forger, head, key_id);
        FeedBatch { origin: code, after: seq - 1, upto: seq, entries: vec![entry], head: Some(head), more: false }
    }

    /// A lookup from `hub`'s access log, with the setting that made it.
    fn logged_lookup(&mut self, cluster: &Cluster, hub: NodeId) -> Option<(NodeId, Signed<AccessEvent>)> {
        let disk = cluster.disk(hub);
        let k = self.rng.below(8) as usize;
        let (key, value) = disk.table(Table::AccessLog).nth(k).or_else(|| disk.table(Table::AccessLog).next())?;
        let row = StoredRow { table: Table::AccessLog, key: key.to_vec(), value: value.to_vec() };
        let (_, signed) = schema::ACCESS_LOG.decode(&row).ok()?;
        let from = cluster.world.id(&signed.body.setting)?;
        Some((from, signed))
    }

    /// A notification claiming to come from `hub`, signed by a stranger.
    fn forged_notification(
        &mut self,
        cluster: &Cluster,
        hub: NodeId,
        authority: NodeId,
        setting: NodeId,
    ) -> Signed<Notification> {
        let w = &cluster.world;
        let now = cluster.node_now(hub);
        let event = AccessEvent {
            lookup_id: LookupId([7; 16]),
            setting: w.code(setting).clone(),
            person: cpis_protocol::records::Person { id: "X".into(), name: "X".into(), role: "X".into() },
            at: now,
            nhs: crate::world::unflagged_child(&mut self.rng),
        };
        let event = w.fed.identity(w.code(setting).as_str()).sign(event);
        let n = Notification {
            event,
            authority: w.code(authority).clone(),
            matched: vec![],
            hub: w.code(hub).clone(),
            answered_at: now,
            signed_at: now,
        };
        forge(&self.forger, n, w.fed.identity(w.code(hub).as_str()).key_id())
    }

    /// A receipt claiming to come from `authority`, signed by a stranger.
    fn forged_receipt(&mut self, cluster: &Cluster, hub: NodeId, authority: NodeId) -> Signed<Receipt> {
        let w = &cluster.world;
        let r = Receipt {
            lookup_id: LookupId([9; 16]),
            authority: w.code(authority).clone(),
            hub: w.code(hub).clone(),
            stored_at: Timestamp(cluster.now()),
        };
        forge(&self.forger, r, w.fed.identity(w.code(authority).as_str()).key_id())
    }
}

/// A frame whose header declares more than [`FRAME_BYTES_MAX`] bytes.
pub fn oversized() -> Vec<u8> {
    let mut frame = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16]);
    frame
}

/// A well-formed frame of another protocol version.
pub fn wrong_version() -> Vec<u8> {
    let mut frame = wire::encode_frame(&Message::Sync { directory_version: 1, marks: vec![] });
    frame[4..6].copy_from_slice(&99u16.to_be_bytes());
    frame
}
