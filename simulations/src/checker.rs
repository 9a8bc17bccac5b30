//! The checkers of DESIGN §7, in the manner of Jepsen's set checker: what the federation
//! acknowledged is recorded as it happens, then compared with what the nodes hold and show.
//! Two lists must end empty: `lost` (acknowledged, then missing) and `unexpected` (present but
//! never acknowledged, or shown when it must not be).
//!
//! The history is fed by the driver: every write a machine hands out ([`History::on_write`]),
//! every write made durable ([`History::on_durable`]) and every event ([`History::on_event`]).
//! It never looks inside a machine; the final checks take plain snapshots of the nodes' state,
//! so a test can feed a fabricated history and see a checker fire.

use crate::fnv::{Fnv, FnvMap};
use crate::world::{NodeId, World};
use cpis_protocol::codec;
use cpis_protocol::directory::Role;
use cpis_protocol::feed::{EntryBody, SignedEntry};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::Event;
use cpis_protocol::records::{LookupKind, Plan};
use cpis_protocol::store::{StoreOp, Table, WriteBatch};
use cpis_protocol::time::Timestamp;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Most violations kept word for word per list (the rest are counted).
pub const VIOLATIONS_KEPT_MAX: usize = 50;

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which check: `notification`, `plan-at-hub`, `visit-at-hub`, `forged`, `shown-after-end`...
    pub check: &'static str,
    pub detail: String,
}

/// A list of violations, bounded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Violations {
    pub count: u64,
    pub first: Vec<Violation>,
}

impl Violations {
    pub fn push(&mut self, check: &'static str, detail: String) {
        self.count += 1;
        if self.first.len() < VIOLATIONS_KEPT_MAX {
            self.first.push(Violation { check, detail });
        }
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Adds every violation of `more` (those it kept word for word, and its count).
    pub fn merge(&mut self, more: Violations) {
        let unkept = more.count - more.first.len() as u64;
        for v in more.first {
            self.push(v.check, v.detail);
        }
        self.count += unkept;
    }
}

/// The latest state of a plan its authority acknowledged (made durable).
#[derive(Clone, Debug)]
pub struct TruthPlan {
    pub seq: u64,
    pub plan: Plan,
    pub acked_at: u64,
}

/// What a tracked entry is, for the latency figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Loaded before the measured period.
    Load,
    Start,
    End,
    Withdraw,
    Visit,
}

/// An acknowledged entry and the hubs that hold it (or a later version of its key).
#[derive(Clone, Debug)]
struct Track {
    acked_at: u64,
    change: Change,
    hubs: u32,
    /// The plan's reference, for a plan entry (whose visibility decides if hubs need it).
    reference: Option<PlanRef>,
}

/// A notification an answered lookup promised.
#[derive(Clone, Debug)]
pub struct Promised {
    pub answered_at: u64,
    pub hub: NodeId,
    pub received: u32,
    pub received_at: Option<u64>,
}

/// Everything the checkers know of the run.
pub struct History {
    roles: Vec<Role>,
    codes: Vec<OdsCode>,
    index: FnvMap<OdsCode, NodeId>,
    hub_count: usize,
    /// Every entry an origin produced: (origin, seq, digest of its bytes) → made durable.
    signed: FnvMap<(NodeId, u64, u64), bool>,
    pub plans: FnvMap<(NodeId, PlanRef), TruthPlan>,
    pub by_nhs: FnvMap<NhsNumber, Vec<(NodeId, PlanRef)>>,
    tracks: FnvMap<(NodeId, u64), Track>,
    /// Hubs that hold an entry its origin has not (or not yet) acknowledged: a hub's own visit
    /// may reach a peer before the write is durable, or come back to it after a wipe.
    held_unacknowledged: FnvMap<(NodeId, u64), u32>,
    /// Acknowledged, latest entries not yet held by every hub.
    pub incomplete: BTreeSet<(NodeId, u64)>,
    pub promised: FnvMap<(LookupId, NodeId), Promised>,
    pub lost: Violations,
    pub unexpected: Violations,
    pub delivery_ms: Vec<u64>,
    pub end_shown_ms: Vec<u64>,
    pub withdraw_shown_ms: Vec<u64>,
    pub start_seen_ms: Vec<u64>,
    pub equivocations: Vec<(NodeId, OdsCode, u64)>,
    pub overdue: u64,
    pub refusals: BTreeMap<String, u64>,
    /// From when the network has been whole (no fault in force), if it is.
    pub whole_since: Option<u64>,
    pub bound_ms: u64,
    /// Changes before this time are the initial load, not measured.
    pub measure_from: u64,
}

/// The origin and sequence of an entry row's key.
pub fn parse_entry_key(key: &[u8]) -> Option<(OdsCode, u64)> {
    let zero = key.iter().position(|b| *b == 0)?;
    let origin = OdsCode::parse(std::str::from_utf8(&key[..zero]).ok()?).ok()?;
    let seq: [u8; 8] = key.get(zero + 1..)?.try_into().ok()?;
    Some((origin, u64::from_be_bytes(seq)))
}

fn entry_puts(batch: &WriteBatch) -> impl Iterator<Item = (&[u8], &[u8])> {
    batch.ops.iter().filter_map(|op| match op {
        StoreOp::Put { table: Table::Entries, key, value } => Some((key.as_slice(), value.as_slice())),
        _ => None,
    })
}

impl History {
    pub fn new(world: &World) -> History {
        History {
            roles: world.roles.clone(),
            codes: world.codes.clone(),
            index: world.index.clone(),
            hub_count: world.hubs.len(),
            signed: FnvMap::default(),
            plans: FnvMap::default(),
            by_nhs: FnvMap::default(),
            tracks: FnvMap::default(),
            held_unacknowledged: FnvMap::default(),
            incomplete: BTreeSet::new(),
            promised: FnvMap::default(),
            lost: Violations::default(),
            unexpected: Violations::default(),
            delivery_ms: vec![],
            end_shown_ms: vec![],
            withdraw_shown_ms: vec![],
            start_seen_ms: vec![],
            equivocations: vec![],
            overdue: 0,
            refusals: BTreeMap::new(),
            whole_since: None,
            bound_ms: 600_000,
            measure_from: 0,
        }
    }

    /// A member's code, for messages.
    fn name(&self, n: NodeId) -> String {
        self.codes.get(n).map_or_else(|| format!("#{n}"), |c| c.to_string())
    }

    fn all_hubs(&self) -> u32 {
        (1u32 << self.hub_count) - 1
    }

    pub fn unexpected(&mut self, check: &'static str, detail: String) {
        self.unexpected.push(check, detail);
    }

    /// Declares an entry signed by its origin's key outside its machine (the equivocation
    /// scenario signs two with the authority's own identity).
    pub fn declare_signed(&mut self, origin: NodeId, seq: u64, entry_bytes: &[u8]) {
        self.signed.insert((origin, seq, Fnv::digest(entry_bytes)), true);
    }

    /// A machine handed out a write: its own entries are signed by it; a hub's replicas must
    /// be entries their origin signed (invariant 3).
    pub fn on_write(&mut self, node: NodeId, batch: &WriteBatch, _now: u64) {
        for (key, value) in entry_puts(batch) {
            let Some((origin, seq)) = parse_entry_key(key) else {
                self.unexpected("store", format!("{} wrote an entry row with a malformed key", self.name(node)));
                continue;
            };
            let origin = self.index.get(&origin).copied().unwrap_or(usize::MAX);
            let digest = Fnv::digest(value);
            if origin == node {
                self.signed.entry((origin, seq, digest)).or_insert(false);
            } else if !self.signed.contains_key(&(origin, seq, digest)) {
                let detail = format!(
                    "hub {} stored entry {seq} of {} that its origin never signed",
                    self.name(node),
                    self.name(origin)
                );
                self.unexpected("forged", detail);
            }
        }
    }

    /// Writes became durable: an authority's entries are acknowledged; a hub now holds entries.
    pub fn on_durable(&mut self, node: NodeId, batches: &[WriteBatch], now: u64) {
        for batch in batches {
            for (key, value) in entry_puts(batch) {
                let Some((origin, seq)) = parse_entry_key(key) else { continue };
                let Some(origin) = self.index.get(&origin).copied() else { continue };
                if origin == node {
                    self.signed.insert((origin, seq, Fnv::digest(value)), true);
                    self.acknowledge(node, seq, value, now);
                }
                if self.roles[node] == Role::Hub {
                    self.hub_holds(node, origin, seq, now);
                }
            }
        }
    }

    fn acknowledge(&mut self, origin: NodeId, seq: u64, value: &[u8], now: u64) {
        if self.tracks.contains_key(&(origin, seq)) {
            // A hub taking back its own entry from a peer (after a wipe): already acknowledged.
            return;
        }
        let mut reference = None;
        let change = match codec::decode::<SignedEntry>(value, u64::MAX) {
            Ok(e) => match e.body.body {
                EntryBody::Plan(plan) => {
                    reference = Some(plan.reference.clone());
                    self.acknowledge_plan(origin, seq, plan, now)
                }
                EntryBody::Visit(_) => Change::Visit,
                EntryBody::Contacts(_) => Change::Start,
            },
            Err(e) => {
                self.unexpected("store", format!("{} wrote an entry that does not decode: {e}", self.name(origin)));
                return;
            }
        };
        let change = if now < self.measure_from { Change::Load } else { change };
        let hubs = self.held_unacknowledged.remove(&(origin, seq)).unwrap_or(0);
        self.tracks.insert((origin, seq), Track { acked_at: now, change, hubs, reference });
        if hubs != self.all_hubs() {
            self.incomplete.insert((origin, seq));
        }
    }

    fn acknowledge_plan(&mut self, origin: NodeId, seq: u64, plan: Plan, now: u64) -> Change {
        let key = (origin, plan.reference.clone());
        let change = match self.plans.get(&key) {
            None => Change::Start,
            Some(old) if plan.withdrawn && !old.plan.withdrawn => Change::Withdraw,
            Some(old) if plan.end.is_some() && old.plan.end.is_none() => Change::End,
            Some(_) => Change::Start,
        };
        if let Some(old) = self.plans.get(&key) {
            // Superseded: no hub needs the older version any more.
            self.incomplete.remove(&(origin, old.seq));
            self.tracks.remove(&(origin, old.seq));
        } else {
            self.by_nhs.entry(plan.nhs).or_default().push(key.clone());
        }
        self.plans.insert(key, TruthPlan { seq, plan, acked_at: now });
        change
    }

    fn hub_holds(&mut self, hub: NodeId, origin: NodeId, seq: u64, now: u64) {
        let all = self.all_hubs();
        let Some(t) = self.tracks.get_mut(&(origin, seq)) else {
            *self.held_unacknowledged.entry((origin, seq)).or_default() |= 1 << hub;
            return;
        };
        if t.hubs & (1 << hub) != 0 {
            return;
        }
        t.hubs |= 1 << hub;
        if t.hubs != all {
            return;
        }
        self.incomplete.remove(&(origin, seq));
        let ms = now.saturating_sub(t.acked_at);
        match t.change {
            Change::End => self.end_shown_ms.push(ms),
            Change::Withdraw => self.withdraw_shown_ms.push(ms),
            Change::Start => self.start_seen_ms.push(ms),
            Change::Load | Change::Visit => {}
        }
    }

    /// A hub lost its disk: everything must reach it again.
    pub fn on_wipe(&mut self, hub: NodeId) {
        if self.roles[hub] != Role::Hub {
            return;
        }
        for (key, t) in self.tracks.iter_mut() {
            if t.hubs & (1 << hub) != 0 {
                t.hubs &= !(1 << hub);
                self.incomplete.insert(*key);
            }
        }
    }

    pub fn on_event(&mut self, node: NodeId, e: &Event, now: u64) {
        match e {
            Event::LookupAnswered { lookup_id, kind: LookupKind::Unscheduled, authorities, .. } => {
                for a in authorities {
                    let Some(a) = self.index.get(a).copied() else { continue };
                    let p = Promised { answered_at: now, hub: node, received: 0, received_at: None };
                    self.promised.entry((*lookup_id, a)).or_insert(p);
                }
            }
            Event::NotificationReceived { lookup_id, .. } => self.on_received(node, *lookup_id, now),
            Event::Equivocation { origin, seq, .. } => self.equivocations.push((node, origin.clone(), *seq)),
            Event::NotificationOverdue { .. } => self.overdue += 1,
            Event::LookupRefused { reason, .. } => self.refused("lookup", reason),
            Event::BatchRefused { reason, .. } => self.refused("batch", reason),
            Event::MessageRefused { kind, reason, .. } => self.refused(kind, reason),
            Event::DirectoryRefused { reason, .. } => self.refused("directory", reason),
            _ => {}
        }
    }

    fn refused(&mut self, kind: &str, reason: &str) {
        // Group by the reason's words, without numbers or codes.
        let words: String = reason
            .split_whitespace()
            .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        *self.refusals.entry(format!("{kind}: {words}")).or_default() += 1;
    }

    fn on_received(&mut self, authority: NodeId, lookup_id: LookupId, now: u64) {
        let Some(p) = self.promised.get_mut(&(lookup_id, authority)) else {
            let detail =
                format!("authority {} stored notification {lookup_id} that no hub answered", self.name(authority));
            return self.unexpected("notification", detail);
        };
        p.received += 1;
        if p.received == 1 {
            p.received_at = Some(now);
            self.delivery_ms.push(now.saturating_sub(p.answered_at));
        } else {
            let times = p.received;
            let detail = format!("authority {} stored notification {lookup_id} {times} times", self.name(authority));
            self.unexpected("duplicate-inbox", detail);
        }
    }

    /// Whether everything acknowledged or answered by `t` has reached every hub and inbox
    /// (plans that are no longer visible on `now`'s date need not).
    pub fn settled_before(&self, t: u64, now: u64) -> bool {
        let today = Timestamp(now).date();
        let entries_settled = self.incomplete.iter().all(|key| {
            let Some(track) = self.tracks.get(key) else { return true };
            if track.acked_at > t {
                return true;
            }
            match &track.reference {
                Some(r) => {
                    self.plans.get(&(key.0, r.clone())).is_none_or(|p| p.seq != key.1 || !p.plan.visible_on(today))
                }
                None => false,
            }
        });
        entries_settled && !self.promised.values().any(|p| p.received == 0 && p.answered_at <= t)
    }

    /// Notifications promised and not yet stored.
    pub fn outstanding(&self) -> usize {
        self.promised.values().filter(|p| p.received == 0).count()
    }

    /// Plans of `nhs` its authorities have acknowledged and that are visible on `at`'s date.
    pub fn visible_truth(&self, nhs: NhsNumber, at: u64) -> Vec<(NodeId, &PlanRef, &TruthPlan)> {
        let Some(keys) = self.by_nhs.get(&nhs) else { return vec![] };
        let today = Timestamp(at).date();
        keys.iter()
            .filter_map(|k| self.plans.get(k).map(|t| (k.0, &k.1, t)))
            .filter(|(_, _, t)| t.plan.visible_on(today))
            .collect()
    }

    /// Whether a plan's visibility changes within `margin_ms` of `at` (clocks disagree there).
    pub fn near_visibility_edge(plan: &Plan, at: u64, margin_ms: u64) -> bool {
        let before = plan.visible_on(Timestamp(at.saturating_sub(margin_ms)).date());
        let after = plan.visible_on(Timestamp(at + margin_ms).date());
        before != after
    }
}

/// What the final checks read from the nodes.
pub struct Snapshot {
    /// Per authority, the lookup ids in its inbox (none for an authority that is down).
    pub inboxes: Vec<(NodeId, BTreeSet<LookupId>)>,
    /// Per hub, its clock and every entry it holds as (origin, seq).
    pub hubs: Vec<HubView>,
}

/// A hub's holdings as the final checks see them.
pub struct HubView {
    pub hub: NodeId,
    pub now: u64,
    pub held: BTreeSet<(NodeId, u64)>,
    /// Visible plans per NHS number as the hub would show them: (origin, reference, seq).
    pub shown: FnvMap<NhsNumber, Vec<(NodeId, PlanRef, u64)>>,
}

impl History {
    /// Invariant 2: every promised notification is in its authority's inbox, once; nothing
    /// else is.
    pub fn check_notifications(&mut self, inboxes: &[(NodeId, BTreeSet<LookupId>)]) {
        let mut by_authority: BTreeMap<NodeId, &BTreeSet<LookupId>> = BTreeMap::new();
        for (a, ids) in inboxes {
            by_authority.insert(*a, ids);
        }
        let mut promised: Vec<(&(LookupId, NodeId), &Promised)> = self.promised.iter().collect();
        promised.sort_by_key(|(k, _)| **k);
        let mut lost = Violations::default();
        for ((lookup, a), p) in promised {
            let stored = by_authority.get(a).is_some_and(|ids| ids.contains(lookup));
            if !stored || p.received == 0 {
                let detail = format!(
                    "lookup {lookup} answered by hub {} at {} never reached authority {}'s inbox",
                    self.name(p.hub),
                    Timestamp(p.answered_at),
                    self.name(*a)
                );
                lost.push("notification", detail);
            }
        }
        for (a, ids) in inboxes {
            let invented: Vec<&LookupId> = ids.iter().filter(|id| !self.promised.contains_key(&(**id, *a))).collect();
            for id in invented {
                let detail = format!("authority {} holds notification {id} that no hub answered", self.name(*a));
                self.unexpected("notification", detail);
            }
        }
        self.merge_lost(lost);
    }

    fn merge_lost(&mut self, more: Violations) {
        self.lost.merge(more);
    }

    /// Invariants 1, 4 and 5 at rest: every hub shows exactly the latest acknowledged visible
    /// version of every plan and holds every acknowledged visit.
    pub fn check_hubs(&mut self, hubs: &[HubView]) {
        for view in hubs {
            self.check_hub_plans(view);
            let visits: Vec<(NodeId, u64)> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.change == Change::Visit)
                .map(|(k, _)| *k)
                .filter(|k| !view.held.contains(k))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for (origin, seq) in visits {
                let detail = format!("hub {} lacks visit {seq} of hub {}", self.name(view.hub), self.name(origin));
                self.lost.push("visit-at-hub", detail);
            }
        }
    }

    fn check_hub_plans(&mut self, view: &HubView) {
        let mut keys: Vec<(&(NodeId, PlanRef), &TruthPlan)> = self.plans.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        let mut lost = Violations::default();
        let mut unexpected = Violations::default();
        let hub = self.name(view.hub);
        for ((origin, reference), truth) in keys {
            let owner = self.name(*origin);
            if History::near_visibility_edge(&truth.plan, view.now, 600_000) {
                continue;
            }
            let visible = truth.plan.visible_on(Timestamp(view.now).date());
            let shown =
                view.shown.get(&truth.plan.nhs).and_then(|v| v.iter().find(|(o, r, _)| o == origin && r == reference));
            match (visible, shown) {
                (true, Some((_, _, seq))) if *seq == truth.seq => {}
                (true, Some((_, _, seq))) => lost.push(
                    "plan-at-hub",
                    format!("hub {hub} shows version {seq} of plan {reference} of {owner}, acknowledged {}", truth.seq),
                ),
                (true, None) => lost.push("plan-at-hub", format!("hub {hub} lacks plan {reference} of {owner}")),
                (false, Some((_, _, seq))) => unexpected.push(
                    "shown-after-end",
                    format!("hub {hub} still shows version {seq} of plan {reference} of {owner}, after it ended or was withdrawn"),
                ),
                (false, None) => {}
            }
        }
        self.merge_lost(lost);
        self.unexpected.merge(unexpected);
    }
}
