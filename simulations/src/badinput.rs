//! Bad input (DESIGN §7 invariant 6): garbage and oversized frames, a wrong protocol version,
//! entries signed by the wrong key, another origin's feed, replayed lookups, messages a role may
//! not send, forged notifications and receipts. Each is handed straight to its target machine;
//! the machine must refuse it (an error event, at most a refusal or a sync sent back), write
//! nothing, and keep every figure of its state as it was.

use crate::sim::Sim;
use crate::world::{FEDERATION, NodeId};
use cpis_protocol::feed::{EntryBody, FeedEntry};
use cpis_protocol::harness::{Machine, test_identity};
use cpis_protocol::ids::LookupId;
use cpis_protocol::machine::Event;
use cpis_protocol::sign::Signed;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, FRAME_BYTES_MAX, FeedBatch, Message, Notification, Receipt};

/// The kinds of bad input, in the order they are drawn.
pub const BAD_INPUT_KINDS: [&str; 10] = [
    "garbage-frame",
    "oversized-frame",
    "wrong-version",
    "entry-signed-by-wrong-key",
    "another-origins-feed",
    "replayed-lookup",
    "message-not-allowed-for-role",
    "forged-notification",
    "forged-receipt",
    "lookup-id-reused-for-another-lookup",
];

impl Sim {
    /// A compact account of a machine's state that no refused message may change.
    pub fn fingerprint(&self, n: NodeId) -> String {
        match &self.nodes[n].machine {
            Some(Machine::Hub(h)) => {
                let hw: Vec<u64> = h.high_waters().iter().map(|w| w.seq).collect();
                format!("{hw:?}|{:?}|{}", h.outbox_depths(), h.entries().count())
            }
            Some(Machine::Authority(a)) => format!("{}|{}|{}", a.last_seq(), a.inbox().count(), a.plans().count()),
            None => String::new(),
        }
    }

    /// Injects one bad input of a kind drawn at random.
    pub fn inject_bad_input(&mut self) {
        let kind = self.rng.below(BAD_INPUT_KINDS.len() as u64) as usize;
        self.inject_bad_input_of(kind);
    }

    /// Injects one bad input of kind `kind` (an index into [`BAD_INPUT_KINDS`]).
    pub fn inject_bad_input_of(&mut self, kind: usize) {
        let hub = self.rng.below(self.world.hubs.len() as u64) as usize;
        let auths = self.world.authorities.clone();
        let authority = auths.start + self.rng.below(auths.len() as u64) as usize;
        let other = auths.start + (authority - auths.start + 1) % auths.len();
        let setting = self.world.settings.start + self.rng.below(self.world.settings.len() as u64) as usize;
        let made = match kind {
            0 => Some((hub, authority, self.garbage())),
            1 => Some((hub, authority, oversized())),
            2 => Some((hub, authority, wrong_version())),
            3 => Some((hub, authority, self.forged_batch(hub, authority, authority, "FORGER"))),
            4 => Some((
                hub,
                authority,
                self.forged_batch(hub, other, other, self.world.code(other).to_string().as_str()),
            )),
            5 => self.replayed_lookup(),
            6 => Some((
                hub,
                setting,
                self.forged_batch(hub, authority, authority, self.world.code(authority).to_string().as_str()),
            )),
            7 => Some((authority, hub, self.forged_notification(hub, authority, setting))),
            8 => Some((hub, authority, self.forged_receipt(hub, authority))),
            _ => self.reused_lookup_id(),
        };
        let Some((to, from, frame)) = made else { return };
        self.check_refused(to, from, &frame, BAD_INPUT_KINDS[kind]);
    }

    /// Hands `frame` to `to` as if from `from`, and checks nothing changed.
    fn check_refused(&mut self, to: NodeId, from: NodeId, frame: &[u8], what: &str) {
        if self.nodes[to].machine.is_none() {
            return;
        }
        self.counters.bad_inputs += 1;
        let message = match wire::decode_frame(frame) {
            Ok(m) => m,
            Err(_) => {
                // The driver refuses it and closes the connection; no machine sees it.
                self.counters.bad_inputs_refused += 1;
                return;
            }
        };
        let before = self.fingerprint(to);
        let (now, code) = (self.node_now(to), self.world.code(from).clone());
        if let Some(m) = self.nodes[to].machine.as_mut() {
            m.as_dyn().handle_message(&code, message, now);
        }
        let out = self.drain(to);
        let refusal = |e: &Event| {
            matches!(e, Event::MessageRefused { .. } | Event::BatchRefused { .. } | Event::LookupRefused { .. })
        };
        // The very same signed lookup again is a setting's retry: the hub may answer it again,
        // as long as nothing changes (no write, no new notification or visit).
        // (Its answer may also wait behind a write still pending: then nothing is sent yet.)
        let retry = what == "replayed-lookup" && out.events.is_empty();
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
        self.route(to, out);
        if self.fingerprint(to) != before {
            broken.push("its state changed".into());
        }
        if broken.is_empty() {
            self.counters.bad_inputs_refused += 1;
        } else {
            let detail =
                format!("{what} from {} to {}: {}", self.world.code(from), self.world.code(to), broken.join("; "));
            self.history.unexpected("bad-input", detail);
        }
    }

    fn garbage(&mut self) -> Vec<u8> {
        let len = self.rng.below(64) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        if len >= 4 {
            frame[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
        }
        frame
    }

    /// A feed batch of `origin` sent by `sender`, whose one entry is signed by `signer`'s key but
    /// names `origin`'s key id.
    fn forged_batch(&mut self, hub: NodeId, origin: NodeId, _sender: NodeId, signer: &str) -> Vec<u8> {
        let origin_code = self.world.code(origin).clone();
        let hw = self.nodes[hub]
            .hub()
            .and_then(|h| h.high_waters().into_iter().find(|w| w.origin == origin_code))
            .map_or(0, |w| w.seq);
        let today = Timestamp(self.now).date();
        let plan = self.work.new_plan(origin, "FORGED", today);
        self.work.registry.pop();
        let entry = FeedEntry {
            origin: origin_code.clone(),
            seq: hw + 1,
            at: Timestamp(self.now),
            body: EntryBody::Plan(plan),
        };
        let forged = test_identity(FEDERATION, signer).sign(entry);
        let key_id = self.world.fed.identity(origin_code.as_str()).key_id();
        let entry = Signed { body: forged.body, key_id, signature: forged.signature };
        let batch = FeedBatch {
            origin: origin_code,
            after: hw,
            upto: hw + 1,
            entries: vec![entry],
            as_of: cpis_protocol::time::Timestamp(0),
        };
        wire::encode_frame(&Message::Feed(batch))
    }

    /// A lookup a setting made and was answered for, sent again.
    fn replayed_lookup(&mut self) -> Option<(NodeId, NodeId, Vec<u8>)> {
        let (setting, hub, signed) = self.work.answered_recently.front().cloned()?;
        Some((hub, setting, wire::encode_frame(&Message::Lookup(signed))))
    }

    /// A lookup answered lately, its id reused by its setting for a different lookup.
    fn reused_lookup_id(&mut self) -> Option<(NodeId, NodeId, Vec<u8>)> {
        let (setting, hub, signed) = self.work.answered_recently.back().cloned()?;
        let mut event = signed.body;
        event.nhs = crate::world::unflagged_child(&mut self.rng);
        let again = self.world.fed.identity(self.world.code(setting).as_str()).sign(event);
        Some((hub, setting, wire::encode_frame(&Message::Lookup(again))))
    }

    /// A notification claiming to come from `hub`, signed by a stranger.
    fn forged_notification(&mut self, hub: NodeId, authority: NodeId, setting: NodeId) -> Vec<u8> {
        let s = self.world.code(setting).as_str().to_string();
        let nhs = crate::world::unflagged_child(&mut self.rng);
        let event = cpis_protocol::records::AccessEvent {
            lookup_id: LookupId([7; 16]),
            setting: self.world.code(setting).clone(),
            setting_name: "Forged".into(),
            setting_type: cpis_protocol::records::SettingType::EmergencyDepartment,
            person: cpis_protocol::records::Person { id: "X".into(), name: "X".into(), role: "X".into() },
            at: Timestamp(self.now),
            nhs,
            kind: cpis_protocol::records::LookupKind::Unscheduled,
        };
        let event = self.world.fed.identity(&s).sign(event);
        let n = Notification {
            event,
            authority: self.world.code(authority).clone(),
            matched: vec![],
            hub: self.world.code(hub).clone(),
            answered_at: Timestamp(self.now),
        };
        let forged = test_identity(FEDERATION, "FORGER").sign(n);
        let key_id = self.world.fed.identity(self.world.code(hub).as_str()).key_id();
        wire::encode_frame(&Message::Notify(Signed { body: forged.body, key_id, signature: forged.signature }))
    }

    /// A receipt claiming to come from `authority`, signed by a stranger.
    fn forged_receipt(&mut self, hub: NodeId, authority: NodeId) -> Vec<u8> {
        let r = Receipt {
            lookup_id: LookupId([9; 16]),
            authority: self.world.code(authority).clone(),
            hub: self.world.code(hub).clone(),
            stored_at: Timestamp(self.now),
        };
        let forged = test_identity(FEDERATION, "FORGER").sign(r);
        let key_id = self.world.fed.identity(self.world.code(authority).as_str()).key_id();
        wire::encode_frame(&Message::Receipt(Signed { body: forged.body, key_id, signature: forged.signature }))
    }
}

fn oversized() -> Vec<u8> {
    let mut frame = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16]);
    frame
}

fn wrong_version() -> Vec<u8> {
    let message = Message::Sync { directory_version: 1, have: vec![] };
    let mut payload = wire::encode_payload(&message);
    payload[..2].copy_from_slice(&99u16.to_be_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}
