//! The checkers of the invariants in docs/overview.md, in the manner of Jepsen's set checker:
//! what the federation acknowledged is recorded as it happens, then compared with what the nodes
//! hold and show. Two lists must end empty: `lost` (acknowledged, then missing) and `unexpected`
//! (present but never acknowledged, or shown when it must not be).
//!
//! The history is fed by the driver with what the cluster reports: every write made durable
//! ([`History::on_durable`]) and every event ([`History::on_event`]); the workload hands it every
//! answer a setting checked ([`History::on_answer`]). It never looks inside a machine: the final
//! checks take plain views of the nodes' state ([`FeedView`], [`HubView`]), so a test can feed a
//! fabricated history and see a checker fire.
//!
//! The truth is the authorities' own durable writes: every version of every plan with the
//! sequence its authority gave it and the true time it became durable. A head signed at sequence
//! `S` covers exactly the durable entries up to `S`, so an answer can be judged exactly, with no
//! allowance for dates near a visibility edge: the plans a setting shows for an authority must be
//! the authority's published plans at the head's sequence that are visible on the setting's own
//! date.

use crate::fnv::{Fnv, FnvMap, FnvSet};
use crate::world::{NodeId, World};
use cpis_protocol::authority::InboxItem;
use cpis_protocol::directory::{AdmissionError, DirectoryError, Role, TrustedDirectory};
use cpis_protocol::feed::{EntryBody, RemovalReason, SignedEntry, SignedHead, verify_entry};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::Event;
use cpis_protocol::records::{LookupKind, Plan};
use cpis_protocol::refusal::Refusal;
use cpis_protocol::schema::{self, StoreOp, StoredRow, Table, WriteBatch};
use cpis_protocol::setting::{AnswerError, AuthorityStatus, VerifiedAnswer};
use cpis_protocol::time::{DAY_MS, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Most violations kept word for word per list (the rest are counted).
pub const VIOLATIONS_KEPT_MAX: usize = 50;
/// How far from a visibility edge (in time) a lookup-time expectation is too close to call:
/// clocks of settings differ from true time by up to the worst skew (bad clocks included).
pub const EDGE_MARGIN_MS: u64 = 30 * 60_000;

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which check: `notification`, `replica`, `visit-at-hub`, `forged`, `answer-wrong`...
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
    /// Whether any violation of `check` was kept.
    pub fn has(&self, check: &str) -> bool {
        self.first.iter().any(|v| v.check == check)
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

/// One durable version of a plan at its authority (`None`: removed from the feed).
#[derive(Clone, Debug)]
struct Version {
    seq: u64,
    acked_at: u64,
    plan: Option<Plan>,
}

/// What a change was, for the latency figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Before the measured period.
    Load,
    Start,
    End,
    Withdraw,
    Other,
}

/// A measured change on its way to every hub.
#[derive(Clone, Copy, Debug)]
struct Spread {
    acked_at: u64,
    change: Change,
    hubs: u64,
}

/// A notification an answered lookup promised.
#[derive(Clone, Debug)]
pub struct Promised {
    pub answered_at: u64,
    pub hub: NodeId,
    pub received: u32,
    pub received_at: Option<u64>,
}

/// A lookup a hub answered.
#[derive(Clone, Copy, Debug)]
struct Answered {
    kind: LookupKind,
}

/// An answer a setting checked, for the checkers.
pub struct AnswerRecord<'a> {
    pub setting: NodeId,
    pub hub: NodeId,
    pub nhs: NhsNumber,
    /// True time the lookup was sent.
    pub sent_at: u64,
    /// Whether the network had been whole for the bound when it was sent.
    pub strict: bool,
    /// The setting's clock when it checked the answer.
    pub setting_now: Timestamp,
    /// Per authority in the answer, its head's sequence and time.
    pub heads: Vec<(OdsCode, u64, Timestamp)>,
    pub result: &'a Result<VerifiedAnswer, AnswerError>,
}

/// What the checkers made of an answer, for the workload's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerVerdict {
    /// The child had a visible, acknowledged plan when the lookup was made.
    pub flagged: bool,
    /// Every such plan was shown.
    pub complete: bool,
    /// A plan missing, its authority shown as stale or unavailable.
    pub missed_unavailable: bool,
    /// A plan missing under a fresh head older than the plan (within the staleness window).
    pub missed_behind: bool,
    pub all_checked: bool,
    pub any_stale: bool,
    pub any_unavailable: bool,
    /// Plans shown (as of an older head) that had ended or been withdrawn when the lookup was made.
    pub stale_shown: u64,
}

/// What a wiped hub's disk held alone when it was lost.
#[derive(Clone, Debug, Default)]
pub struct WipeView {
    /// Notifications waiting in another hub's outbox: (lookup, authority).
    pub outbox_elsewhere: BTreeSet<(LookupId, NodeId)>,
    /// The wiped hub's own visits another hub holds durably.
    pub visits_elsewhere: BTreeSet<u64>,
}

/// An authority's published feed, as the final checks see it.
#[derive(Clone, Debug, Default)]
pub struct FeedView {
    pub head_seq: u64,
    /// Entry by sequence: a digest of the signed entry, whether it is a tombstone, and its time.
    pub entries: BTreeMap<u64, EntryView>,
}

/// One entry of a feed, as the final checks compare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub digest: u64,
    pub tombstone: bool,
    pub at: Timestamp,
}

impl EntryView {
    pub fn of(e: &SignedEntry) -> EntryView {
        EntryView {
            digest: Fnv::digest(&cpis_protocol::codec::encode(e)),
            tombstone: matches!(e.body.body, EntryBody::Removed(_)),
            at: e.body.at,
        }
    }
}

/// A hub's holdings, as the final checks see them.
#[derive(Clone, Debug, Default)]
pub struct HubView {
    pub hub: NodeId,
    /// The hub's clock.
    pub now: Timestamp,
    /// Per authority, its replica.
    pub replicas: BTreeMap<NodeId, FeedView>,
    /// Every visit held, as (origin hub, seq).
    pub visits: BTreeSet<(NodeId, u64)>,
}

/// Everything the checkers know of the run.
pub struct History {
    codes: Vec<OdsCode>,
    roles: Vec<Role>,
    index: FnvMap<OdsCode, NodeId>,
    hubs: Range<NodeId>,
    /// From when the network has been whole (no fault in force), if it is.
    pub whole_since: Option<u64>,
    /// The liveness bound.
    pub bound_ms: u64,
    /// How old a head may be and still count as fresh at a setting.
    pub stale_after_ms: u64,
    /// How long hubs keep tombstones.
    pub tombstone_retention_ms: u64,
    /// Changes before this time are the initial load, not measured.
    pub measure_from: u64,
    /// The hub an adversary controls, if any: its answers are judged but never trusted.
    pub hostile_hub: Option<NodeId>,
    /// Each node's clock minus true time.
    pub skews: Vec<i64>,
    versions: FnvMap<(NodeId, PlanRef), Vec<Version>>,
    /// The plans of each child: one or two, so a vector (a set's node is hundreds of bytes).
    by_nhs: FnvMap<NhsNumber, Vec<(NodeId, PlanRef)>>,
    /// Per authority: (true time durable, seq) of every entry, in order.
    acks: Vec<Vec<(u64, u64)>>,
    /// Every entry an origin made durable itself: (origin, seq, digest).
    signed: FnvSet<(NodeId, u64, u64)>,
    /// Visits (origin, seq, digest) a peer stored before their origin's write was durable.
    visits_before_durable: BTreeSet<(NodeId, u64, u64)>,
    /// Every directory version in force during the run, oldest first: a record is genuine if one
    /// of them admits its signature.
    directories: Vec<TrustedDirectory>,
    /// Members whose key in use was revoked: their peers closing them is expected.
    revoked_in_use: BTreeSet<OdsCode>,
    /// Members given a new key: a peer whose directory does not list it yet may refuse it until
    /// it learns the version that does.
    rekeyed: BTreeSet<OdsCode>,
    /// Plans an equivocating authority signed two ways: excused from the answer check.
    declared: BTreeSet<(NodeId, PlanRef)>,
    /// Visits hubs made durable: (hub, seq) → true time.
    visits: BTreeMap<(NodeId, u64), u64>,
    excused_visits: BTreeSet<(NodeId, u64)>,
    spread: Vec<BTreeMap<u64, Spread>>,
    answered: FnvMap<LookupId, Answered>,
    pub promised: FnvMap<(LookupId, NodeId), Promised>,
    /// Promises whose only copy was on a wiped hub's disk.
    pub excused_promises: BTreeSet<(LookupId, NodeId)>,
    pub lost: Violations,
    pub unexpected: Violations,
    pub delivery_ms: Vec<u64>,
    pub end_shown_ms: Vec<u64>,
    pub withdraw_shown_ms: Vec<u64>,
    pub start_seen_ms: Vec<u64>,
    pub equivocations: Vec<(NodeId, OdsCode, u64)>,
    pub equivocation_proofs: u64,
    pub overdue: u64,
    pub rate_limited: u64,
    /// Notifications an authority accepted that no answer promised it (a true lookup of a child
    /// it holds a plan for, relayed by a hub that did not answer it).
    pub unpromised_accepted: u64,
    /// Refusals by kind and typed reason.
    pub refusals: BTreeMap<String, u64>,
}

/// The kebab-case name of a refusal's variant (for figures; nothing matches on text).
pub fn refusal_name(r: &Refusal) -> &'static str {
    match r {
        Refusal::NotConnected => "not-connected",
        Refusal::NotAllowed { .. } => "not-allowed",
        Refusal::NotFromSetting { .. } => "not-from-setting",
        Refusal::Signature(_) => "signature",
        Refusal::Text(_) => "text",
        Refusal::ClockSkew { .. } => "clock-skew",
        Refusal::Replayed(_) => "replayed",
        Refusal::SettingRateLimited(_) => "setting-rate-limited",
        Refusal::PersonRateLimited(_) => "person-rate-limited",
        Refusal::BatchBounds { .. } => "batch-bounds",
        Refusal::EntryOrder { .. } => "entry-order",
        Refusal::EntryOrigin(_) => "entry-origin",
        Refusal::NotOwnFeed => "not-own-feed",
        Refusal::UnknownOrigin(_) => "unknown-origin",
        Refusal::RelayedVisits(_) => "relayed-visits",
        Refusal::Entry(_) => "entry",
        Refusal::Equivocation(_) => "equivocation",
        Refusal::KnownEquivocation(_) => "known-equivocation",
        Refusal::MissingHead(_) => "missing-head",
        Refusal::HeadNotAtUpto { .. } => "head-not-at-upto",
        Refusal::Head { .. } => "head",
        Refusal::HeadFromTheFuture { .. } => "head-from-the-future",
        Refusal::HeadMismatch { .. } => "head-mismatch",
        Refusal::HeadEquivocation { .. } => "head-equivocation",
        Refusal::RunTooLong(_) => "run-too-long",
        Refusal::WrongAuthority(_) => "wrong-authority",
        Refusal::NotHomeHub(_) => "not-home-hub",
        Refusal::Scheduled => "scheduled",
        Refusal::NoMatchingPlan => "no-matching-plan",
        Refusal::MatchesDiffer => "matches-differ",
        Refusal::ReceiptMismatch => "receipt-mismatch",
        Refusal::TooOld { .. } => "too-old",
        Refusal::Directory(e) => directory_error_name(e),
        Refusal::UnprovenClaim { .. } => "unproven-claim",
        Refusal::Proof(_) => "proof",
        Refusal::OwnKeyNotUsable(_) => "own-key-not-usable",
    }
}

/// The kebab-case name of a directory refusal's variant.
pub fn directory_error_name(e: &DirectoryError) -> &'static str {
    match e {
        DirectoryError::NotNewer { .. } => "directory-not-newer",
        DirectoryError::SkipsVersion { .. } => "directory-skips-version",
        DirectoryError::Expired { .. } => "directory-expired",
        DirectoryError::ThresholdNotMet { .. } => "directory-threshold-not-met",
        DirectoryError::BadRootSignature(_) => "directory-bad-root-signature",
        DirectoryError::OtherFederation { .. } => "directory-other-federation",
        DirectoryError::BadThreshold { .. } => "directory-bad-threshold",
        DirectoryError::WeakRootKey(_) => "directory-weak-root-key",
        DirectoryError::DuplicateKey(_) => "directory-duplicate-key",
        DirectoryError::DuplicateMember(_) => "directory-duplicate-member",
        DirectoryError::BadMember { .. } => "directory-bad-member",
        DirectoryError::TooMany { .. } => "directory-too-many",
        DirectoryError::Forked { .. } => "directory-forked",
    }
}

fn row(op: &StoreOp) -> Option<StoredRow> {
    match op {
        StoreOp::Put { table, key, value } => Some(StoredRow { table: *table, key: key.clone(), value: value.clone() }),
        StoreOp::Delete { .. } => None,
    }
}

impl History {
    pub fn new(world: &World) -> History {
        let n = world.codes.len();
        History {
            codes: world.codes.clone(),
            roles: world.roles.clone(),
            index: world.index.clone(),
            hubs: world.hubs.clone(),
            whole_since: None,
            bound_ms: 600_000,
            stale_after_ms: cpis_protocol::setting::STALE_AFTER_MS_DEFAULT,
            tombstone_retention_ms: 30 * DAY_MS,
            measure_from: 0,
            hostile_hub: None,
            skews: vec![0; n],
            versions: FnvMap::default(),
            by_nhs: FnvMap::default(),
            acks: vec![vec![]; n],
            signed: FnvSet::default(),
            visits_before_durable: BTreeSet::new(),
            directories: vec![world.fed.trusted()],
            revoked_in_use: BTreeSet::new(),
            rekeyed: BTreeSet::new(),
            declared: BTreeSet::new(),
            visits: BTreeMap::new(),
            excused_visits: BTreeSet::new(),
            spread: vec![BTreeMap::new(); n],
            answered: FnvMap::default(),
            promised: FnvMap::default(),
            excused_promises: BTreeSet::new(),
            lost: Violations::default(),
            unexpected: Violations::default(),
            delivery_ms: vec![],
            end_shown_ms: vec![],
            withdraw_shown_ms: vec![],
            start_seen_ms: vec![],
            equivocations: vec![],
            equivocation_proofs: 0,
            overdue: 0,
            rate_limited: 0,
            unpromised_accepted: 0,
            refusals: BTreeMap::new(),
        }
    }

    /// A member's code, for messages.
    fn name(&self, n: NodeId) -> String {
        self.codes.get(n).map_or_else(|| format!("#{n}"), |c| c.to_string())
    }

    fn all_hubs(&self) -> u64 {
        (1u64 << self.hubs.len().min(63)) - 1
    }

    pub fn unexpected(&mut self, check: &'static str, detail: String) {
        self.unexpected.push(check, detail);
    }

    /// Whether a lookup sent at `t` is judged strictly: the network had been whole for the bound.
    pub fn strict_at(&self, t: u64) -> bool {
        self.whole_since.is_some_and(|w| t >= w + self.bound_ms)
    }

    /// Declares an entry an authority's key signed outside its machine (an equivocation): hubs
    /// may store it, and answers may show either version of its plan.
    pub fn declare_equivocation(&mut self, origin: NodeId, entry: &SignedEntry) {
        let digest = Fnv::digest(&cpis_protocol::codec::encode(entry));
        self.signed.insert((origin, entry.body.seq, digest));
        if let EntryBody::Plan(p) = &entry.body.body {
            self.declared.insert((origin, p.reference.clone()));
        }
    }

    /// An administrator published a new directory version.
    pub fn on_directory(&mut self, directory: TrustedDirectory) {
        if let Some(before) = self.directories.last() {
            for m in directory.members() {
                if before.member(&m.code).is_none_or(|old| old.keys.len() != m.keys.len()) {
                    self.rekeyed.insert(m.code.clone());
                }
            }
        }
        self.directories.push(directory);
    }

    /// The newest directory version published.
    pub fn directory_version(&self) -> u64 {
        self.directories.last().map_or(0, TrustedDirectory::version)
    }

    /// A member's key in use was revoked: its peers close its connections.
    pub fn on_key_revoked(&mut self, n: NodeId) {
        self.revoked_in_use.insert(self.codes[n].clone());
    }

    /// Member `n` restarted on a new key. If its old key was revoked, everything it signed with
    /// that key is dropped everywhere: its visits so far, up to this restart, are no longer due at
    /// every hub (a hub cut off by its peers for a revoked key does not learn of the revocation
    /// until it restarts, and signs visits no one can check).
    pub fn on_restarted_on_new_key(&mut self, n: NodeId) {
        if self.roles[n] == Role::Hub && self.revoked_in_use.contains(&self.codes[n]) {
            let mine: Vec<(NodeId, u64)> = self.visits.keys().filter(|(h, _)| *h == n).copied().collect();
            self.excused_visits.extend(mine);
        }
    }

    /// Authority `a` was restored from a copy of its store taken at true time `copied_at`: the
    /// notifications it stored after that are gone from its inbox and must come again.
    /// Returns how many.
    pub fn on_restored_from_copy(&mut self, a: NodeId, copied_at: u64) -> usize {
        let mut again = 0;
        for ((_, who), p) in self.promised.iter_mut() {
            if *who == a && p.received_at.is_some_and(|t| t > copied_at) {
                p.received = 0;
                p.received_at = None;
                again += 1;
            }
        }
        again
    }

    /// Authority `a`'s plans as it last published each (`None`: withdrawn or past its
    /// visibility), with when each was first acknowledged (true time).
    pub fn plans_of(&self, a: NodeId) -> BTreeMap<PlanRef, (u64, Option<Plan>)> {
        self.versions
            .iter()
            .filter(|((o, _), _)| *o == a)
            .filter_map(|((_, r), vs)| Some((r.clone(), (vs.first()?.acked_at, vs.last()?.plan.clone()))))
            .collect()
    }

    /// Writes of `node` became durable at true time `now`.
    pub fn on_durable(&mut self, node: NodeId, batches: &[WriteBatch], now: u64) {
        for batch in batches {
            for op in &batch.ops {
                let Some(row) = row(op) else { continue };
                match row.table {
                    Table::Entries => self.on_entry(node, &row, now),
                    Table::Heads if self.roles[node] == Role::Hub => self.on_hub_head(node, &row, now),
                    Table::Inbox if self.roles[node] == Role::Authority => self.on_inbox(node, &row),
                    Table::Equivocations => self.equivocation_proofs += 1,
                    _ => {}
                }
            }
        }
    }

    fn on_entry(&mut self, node: NodeId, row: &StoredRow, now: u64) {
        let ((origin_code, seq), entry) = match schema::ENTRIES.decode(row) {
            Ok(x) => x,
            Err(e) => return self.unexpected("store", format!("{} wrote an unreadable entry: {e}", self.name(node))),
        };
        let Some(origin) = self.index.get(&origin_code).copied() else {
            return self
                .unexpected("forged", format!("{} stored an entry of unknown origin {origin_code}", self.name(node)));
        };
        let digest = Fnv::digest(&row.value);
        if origin == node {
            let new = self.signed.insert((origin, seq, digest));
            match self.roles[node] {
                Role::Authority if new => self.acknowledge(node, seq, entry, now),
                Role::Hub => {
                    self.visits.entry((node, seq)).or_insert(now);
                }
                _ => {}
            }
        } else if !self.signed.contains(&(origin, seq, digest)) {
            // A hub serves its own visits to peers from memory, so a peer may store one before
            // its origin's write is durable (or one its origin then loses in a crash): allowed if
            // the origin signed it, and counted.
            if self.roles[origin] == Role::Hub
                && self.directories.iter().any(|d| verify_entry(d, entry.clone()).is_ok())
            {
                self.visits_before_durable.insert((origin, seq, digest));
                return;
            }
            let detail = format!("{} stored entry {seq} of {origin_code} that its origin never made", self.name(node));
            self.unexpected("forged", detail);
        }
    }

    /// Visits a peer stored before their origin made them durable, and how many of those the
    /// origin never made durable (it crashed first).
    pub fn visits_before_durable(&self) -> (usize, usize) {
        let never = self.visits_before_durable.iter().filter(|k| !self.signed.contains(k)).count();
        (self.visits_before_durable.len(), never)
    }

    /// An authority's entry became durable: the truth moves on.
    fn acknowledge(&mut self, a: NodeId, seq: u64, entry: SignedEntry, now: u64) {
        self.acks[a].push((now, seq));
        let (reference, plan, change) = match entry.body.body {
            EntryBody::Plan(p) => {
                let prev = self.versions.get(&(a, p.reference.clone())).and_then(|v| v.last());
                let change = match prev.and_then(|v| v.plan.as_ref()) {
                    Some(old) if p.end.is_some() && old.end.is_none() => Change::End,
                    _ => Change::Start,
                };
                (p.reference.clone(), Some(p), change)
            }
            EntryBody::Removed(r) => {
                let change = if r.reason == RemovalReason::Withdrawn { Change::Withdraw } else { Change::Other };
                (r.reference, None, change)
            }
            EntryBody::Contacts(_) | EntryBody::Visit(_) => return,
        };
        if let Some(p) = &plan {
            let plans = self.by_nhs.entry(p.nhs).or_default();
            if !plans.iter().any(|(o, r)| *o == a && *r == reference) {
                plans.push((a, reference.clone()));
            }
        }
        // Most plans have one version: room for one, where a vector's first push makes four.
        let versions = self.versions.entry((a, reference)).or_insert_with(|| Vec::with_capacity(1));
        versions.push(Version { seq, acked_at: now, plan });
        let change = if now < self.measure_from { Change::Load } else { change };
        if matches!(change, Change::Start | Change::End | Change::Withdraw) {
            self.spread[a].insert(seq, Spread { acked_at: now, change, hubs: 0 });
        }
    }

    /// A hub's head of an authority became durable: changes up to its sequence are there.
    fn on_hub_head(&mut self, hub: NodeId, row: &StoredRow, now: u64) {
        let Ok((origin, head)) = schema::HEADS.decode(row) else {
            return self.unexpected("store", format!("{} wrote an unreadable head", self.name(hub)));
        };
        let Some(a) = self.index.get(&origin).copied() else { return };
        let bit = 1u64 << (hub - self.hubs.start).min(63);
        let all = self.all_hubs();
        let mut done = vec![];
        for (seq, s) in self.spread[a].range_mut(..=head.body.seq) {
            s.hubs |= bit;
            if s.hubs & all == all {
                done.push(*seq);
            }
        }
        for seq in done {
            let Some(s) = self.spread[a].remove(&seq) else { continue };
            let ms = now.saturating_sub(s.acked_at);
            match s.change {
                Change::End => self.end_shown_ms.push(ms),
                Change::Withdraw => self.withdraw_shown_ms.push(ms),
                Change::Start => self.start_seen_ms.push(ms),
                Change::Load | Change::Other => {}
            }
        }
    }

    /// Invariant (c): an authority stored a notification. It must be of a lookup a hub answered,
    /// unscheduled, for a child the authority holds the plans it names for.
    fn on_inbox(&mut self, a: NodeId, row: &StoredRow) {
        let (id, item): (LookupId, InboxItem) = match schema::INBOX.decode(row) {
            Ok(x) => x,
            Err(e) => return self.unexpected("store", format!("{} wrote an unreadable inbox item: {e}", self.name(a))),
        };
        let n = &item.notification.body;
        let nhs = n.event.body.nhs;
        let who = self.name(a);
        let problem = match self.answered.get(&id) {
            None => Some("of a lookup no hub answered"),
            Some(x) if x.kind != LookupKind::Unscheduled => Some("of a scheduled lookup"),
            Some(_) if n.authority != self.codes[a] => Some("addressed to another authority"),
            Some(_) if n.matched.is_empty() => Some("naming no plan"),
            Some(_) => {
                let holds = |r: &PlanRef| self.by_nhs.get(&nhs).is_some_and(|s| s.contains(&(a, r.clone())));
                (!n.matched.iter().all(holds)).then_some("naming plans the authority does not hold for the child")
            }
        };
        if let Some(problem) = problem {
            return self
                .unexpected("invented-notification", format!("authority {who} stored notification {id} {problem}"));
        }
        if !self.promised.contains_key(&(id, a)) {
            self.unpromised_accepted += 1;
        }
    }

    pub fn on_event(&mut self, node: NodeId, e: &Event, now: u64) {
        match e {
            Event::LookupAnswered { lookup_id, kind, notified, .. } => {
                self.answered.insert(*lookup_id, Answered { kind: *kind });
                for a in notified {
                    let Some(a) = self.index.get(a).copied() else { continue };
                    let p = Promised { answered_at: now, hub: node, received: 0, received_at: None };
                    self.promised.entry((*lookup_id, a)).or_insert(p);
                }
            }
            Event::NotificationReceived { lookup_id, .. } => self.on_received(node, *lookup_id, now),
            Event::Equivocation { origin, seq, .. } => self.equivocations.push((node, origin.clone(), *seq)),
            Event::NotificationOverdue { .. } => self.overdue += 1,
            Event::RateLimited { .. } => self.rate_limited += 1,
            Event::LookupRefused { reason, .. } => self.refused("lookup", refusal_name(reason)),
            Event::BatchRefused { reason, .. } => self.refused("batch", refusal_name(reason)),
            Event::MessageRefused { kind, reason, .. } => self.refused(kind, refusal_name(reason)),
            Event::DirectoryRefused { reason, .. } => self.refused("directory", directory_error_name(reason)),
            Event::RefusedByPeer { code, .. } => self.refused("refused-by-peer", &format!("{code:?}")),
            Event::PeerNotAdmitted { peer, .. } if self.revoked_in_use.contains(peer) => {}
            Event::PeerNotAdmitted { peer, reason: AdmissionError::UnknownKey(_) } if self.rekeyed.contains(peer) => {}
            Event::PeerNotAdmitted { peer, .. } => {
                let detail = format!("{} refused to admit {peer}, a member in good standing", self.name(node));
                self.unexpected("peer-not-admitted", detail);
            }
            _ => {}
        }
    }

    fn refused(&mut self, kind: &str, reason: &str) {
        *self.refusals.entry(format!("{kind}/{reason}")).or_default() += 1;
    }

    /// How many refusals of `reason` (a [`refusal_name`]) were reported, of any kind.
    pub fn refusals_of(&self, reason: &str) -> u64 {
        self.refusals.iter().filter(|(k, _)| k.rsplit('/').next() == Some(reason)).map(|(_, n)| n).sum()
    }

    fn on_received(&mut self, authority: NodeId, lookup_id: LookupId, now: u64) {
        let Some(p) = self.promised.get_mut(&(lookup_id, authority)) else { return };
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

    /// A hub lost its disk: what only it held is lost by the fault itself, not by the protocol.
    pub fn on_wipe(&mut self, hub: NodeId, view: &WipeView) {
        for ((id, a), p) in &self.promised {
            if p.hub == hub && p.received == 0 && !view.outbox_elsewhere.contains(&(*id, *a)) {
                self.excused_promises.insert((*id, *a));
            }
        }
        for (h, seq) in self.visits.keys() {
            if *h == hub && !view.visits_elsewhere.contains(seq) {
                self.excused_visits.insert((*h, *seq));
            }
        }
    }

    // ---- The truth ----

    /// The plans authority `a` published for `nhs` at sequence `seq` that are visible on the
    /// date of `clock`, in order of reference.
    pub fn published_at(&self, a: NodeId, nhs: NhsNumber, seq: u64, clock: Timestamp) -> Vec<Plan> {
        let Some(refs) = self.by_nhs.get(&nhs) else { return vec![] };
        let today = clock.date();
        let mut out: Vec<Plan> = refs
            .iter()
            .filter(|(o, _)| *o == a)
            .filter_map(|k| self.versions.get(k))
            .filter_map(|vs| vs.iter().take_while(|v| v.seq <= seq).last())
            .filter_map(|v| v.plan.clone())
            .filter(|p| p.visible_on(today))
            .collect();
        out.sort_by(|x, y| x.reference.cmp(&y.reference));
        out
    }

    /// Plans of `nhs` acknowledged by true time `t` and visible on its date (not too near an
    /// edge to call): (authority, reference, acknowledged at).
    pub fn visible_truth(&self, nhs: NhsNumber, t: u64) -> Vec<(NodeId, PlanRef, u64)> {
        let Some(refs) = self.by_nhs.get(&nhs) else { return vec![] };
        let mut out = vec![];
        for k in refs {
            let Some(v) = self.versions.get(k).and_then(|vs| vs.iter().take_while(|v| v.acked_at <= t).last()) else {
                continue;
            };
            let Some(p) = &v.plan else { continue };
            if p.visible_on(Timestamp(t).date()) && !near_visibility_edge(p, t, EDGE_MARGIN_MS) {
                out.push((k.0, k.1.clone(), v.acked_at));
            }
        }
        out
    }

    /// Whether the child had an acknowledged plan visible at `t`.
    pub fn flagged_at(&self, nhs: NhsNumber, t: u64) -> bool {
        !self.visible_truth(nhs, t).is_empty()
    }

    /// The highest sequence authority `a` had made durable strictly before true time `t`.
    pub fn acked_seq_before(&self, a: NodeId, t: u64) -> u64 {
        let acks = &self.acks[a];
        let k = acks.partition_point(|(at, _)| *at < t);
        if k == 0 { 0 } else { acks[k - 1].1 }
    }

    /// Invariants 1, 5 and 7 on one answer: what a setting accepted must be what each
    /// authority published under the head shown; a head shown as fresh must be; a strict lookup at
    /// an honest hub must see every authority fresh and caught up.
    pub fn on_answer(&mut self, r: &AnswerRecord<'_>) -> AnswerVerdict {
        let hostile = self.hostile_hub == Some(r.hub);
        let v = match r.result {
            Ok(v) => v,
            Err(e) => {
                if !hostile {
                    let detail = format!(
                        "setting {} refused an answer of honest hub {}: {e}",
                        self.name(r.setting),
                        self.name(r.hub)
                    );
                    self.unexpected("honest-answer-refused", detail);
                }
                return AnswerVerdict::default();
            }
        };
        let heads: BTreeMap<&OdsCode, (u64, Timestamp)> = r.heads.iter().map(|(o, s, at)| (o, (*s, *at))).collect();
        let mut verdict = AnswerVerdict { all_checked: true, ..AnswerVerdict::default() };
        let mut shown: BTreeSet<(NodeId, PlanRef)> = BTreeSet::new();
        let mut status_of: BTreeMap<NodeId, bool> = BTreeMap::new();
        for view in &v.authorities {
            let Some(a) = self.index.get(&view.code).copied() else {
                self.unexpected("answer-wrong", format!("an answer speaks for {}, not an authority", view.code));
                continue;
            };
            let checked = matches!(view.status, AuthorityStatus::Checked { .. });
            status_of.insert(a, checked);
            verdict.all_checked &= checked;
            match view.status {
                AuthorityStatus::Unavailable(_) => {
                    verdict.any_unavailable = true;
                    if !view.plans.is_empty() {
                        self.unexpected(
                            "answer-wrong",
                            format!("authority {} shown unavailable with plans", view.code),
                        );
                    }
                }
                AuthorityStatus::Checked { as_of } | AuthorityStatus::Stale { as_of } => {
                    verdict.any_stale |= !checked;
                    let Some((seq, at)) = heads.get(&view.code).copied() else {
                        self.unexpected("answer-wrong", format!("authority {} shown without a head", view.code));
                        continue;
                    };
                    if at != as_of {
                        self.unexpected("answer-wrong", format!("authority {} shown as of another head", view.code));
                    }
                    self.check_view(r, a, seq, at, checked, &view.plans);
                    shown.extend(view.plans.iter().map(|p| (a, p.reference.clone())));
                }
            }
            if r.strict && !hostile {
                self.check_strict(r, a, checked, heads.get(&view.code).map(|h| h.0));
            }
        }
        // Against what was true when the lookup was made (figures only).
        let expected = self.visible_truth(r.nhs, r.sent_at);
        verdict.flagged = !expected.is_empty();
        verdict.complete = true;
        for (a, reference, _) in &expected {
            if shown.contains(&(*a, reference.clone())) {
                continue;
            }
            verdict.complete = false;
            match status_of.get(a) {
                Some(true) => verdict.missed_behind = true,
                _ => verdict.missed_unavailable = true,
            }
        }
        let now_date = Timestamp(r.sent_at).date();
        for (a, reference) in &shown {
            let current = self
                .versions
                .get(&(*a, reference.clone()))
                .and_then(|vs| vs.iter().take_while(|v| v.acked_at <= r.sent_at).last().map(|v| v.plan.clone()));
            if let Some(current) = current
                && current
                    .is_none_or(|p| !p.visible_on(now_date) && !near_visibility_edge(&p, r.sent_at, EDGE_MARGIN_MS))
            {
                verdict.stale_shown += 1;
            }
        }
        verdict
    }

    /// The plans shown for authority `a` under its head (`seq`, `at`) must be exactly those it
    /// published at `seq`, visible on the setting's date; a head shown as fresh must cover every
    /// change made more than the staleness window before the setting's clock.
    fn check_view(&mut self, r: &AnswerRecord<'_>, a: NodeId, seq: u64, at: Timestamp, checked: bool, plans: &[Plan]) {
        let mut truth = self.published_at(a, r.nhs, seq, r.setting_now);
        let mut shown: Vec<Plan> = plans.to_vec();
        shown.sort_by(|x, y| x.reference.cmp(&y.reference));
        let excused = |p: &Plan| self.declared.contains(&(a, p.reference.clone()));
        truth.retain(|p| !excused(p));
        shown.retain(|p| !excused(p));
        if truth != shown {
            let missing: Vec<String> =
                truth.iter().filter(|p| !shown.contains(p)).map(|p| p.reference.to_string()).collect();
            let extra: Vec<String> =
                shown.iter().filter(|p| !truth.contains(p)).map(|p| p.reference.to_string()).collect();
            let detail = format!(
                "setting {} accepted from hub {} an answer for {} under head {seq} of {} (status {}) missing {missing:?} and showing {extra:?}",
                self.name(r.setting),
                self.name(r.hub),
                r.nhs,
                self.name(a),
                if checked { "checked" } else { "stale" },
            );
            self.unexpected("answer-wrong", detail);
        }
        if checked {
            // The head was signed at true time (at - skew) >= setting_now - stale_after - skew.
            let cutoff = (r.setting_now.as_millis() as i64)
                .saturating_sub(self.skews[a])
                .saturating_sub(self.stale_after_ms as i64)
                .max(0) as u64;
            let needed = self.acked_seq_before(a, cutoff);
            if needed > seq {
                let detail = format!(
                    "setting {} was shown head {seq} (at {at}) of {} as fresh, though {} had made sequence {needed} durable before {}",
                    self.name(r.setting),
                    self.name(a),
                    self.name(a),
                    Timestamp(cutoff)
                );
                self.unexpected("fresh-but-behind", detail);
            }
        }
    }

    /// A strict lookup (the network whole for the bound) at an honest hub: every authority
    /// checked fresh, with every change made a bound before.
    fn check_strict(&mut self, r: &AnswerRecord<'_>, a: NodeId, checked: bool, seq: Option<u64>) {
        // An authority that signed two states with one sequence is shown stale by the hubs that
        // hold the other one until it moves on: it has no single truth to be fresh with.
        if self.declared.iter().any(|(o, _)| *o == a) {
            return;
        }
        let needed = self.acked_seq_before(a, r.sent_at.saturating_sub(self.bound_ms));
        if !checked || seq.is_none_or(|s| s < needed) {
            let detail = format!(
                "a lookup at hub {} when the network had been whole for the bound showed {} {} (head {seq:?}, needed {needed})",
                self.name(r.hub),
                self.name(a),
                if checked { "behind" } else { "not checked" },
            );
            self.lost.push("strict-lookup", detail);
        }
    }

    // ---- Progress ----

    /// Promises of lookups answered by `t` not yet delivered (those lost with a wiped disk aside).
    pub fn outstanding_before(&self, t: u64) -> usize {
        self.promised
            .iter()
            .filter(|(k, p)| p.received == 0 && p.answered_at <= t && !self.excused_promises.contains(k))
            .count()
    }

    /// Visits made durable by `t` that every hub must hold: those of the hostile hub (which may
    /// withhold its own) and those lost with a wiped disk aside.
    pub fn visits_due(&self, t: u64) -> Vec<(NodeId, u64)> {
        self.visits
            .iter()
            .filter(|(k, at)| **at <= t && Some(k.0) != self.hostile_hub && !self.excused_visits.contains(k))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The visits a hub made durable (for a wipe's view).
    pub fn visits_of(&self, hub: NodeId) -> Vec<u64> {
        self.visits.keys().filter(|(h, _)| *h == hub).map(|(_, s)| *s).collect()
    }

    // ---- Final checks ----

    /// Invariant (b): every promised notification is in its authority's inbox (once: a second
    /// store is caught as it happens). `None`: the authority is down.
    pub fn check_notifications(&mut self, inboxes: &[(NodeId, Option<BTreeSet<LookupId>>)]) {
        let by: BTreeMap<NodeId, &Option<BTreeSet<LookupId>>> = inboxes.iter().map(|(a, i)| (*a, i)).collect();
        let mut promised: Vec<(&(LookupId, NodeId), &Promised)> = self.promised.iter().collect();
        promised.sort_by_key(|(k, _)| **k);
        let mut lost = Violations::default();
        for ((lookup, a), p) in promised {
            if self.excused_promises.contains(&(*lookup, *a)) {
                continue;
            }
            let stored = by.get(a).is_some_and(|ids| ids.as_ref().is_some_and(|ids| ids.contains(lookup)));
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
        self.lost.merge(lost);
    }

    /// Invariants 1, 4 and 5 at rest: every hub's replica of every authority is that authority's
    /// published feed (same entries by sequence, same head), but for tombstones past retention;
    /// and every hub holds every visit it must.
    ///
    /// The hubs' views come one at a time: all of them at once would be every replica again.
    pub fn check_hubs(&mut self, feeds: &BTreeMap<NodeId, FeedView>, hubs: impl Iterator<Item = HubView>) {
        let mut lost = Violations::default();
        let mut unexpected = Violations::default();
        for h in hubs {
            let hub = self.name(h.hub);
            for (a, feed) in feeds {
                let owner = self.name(*a);
                let Some(replica) = h.replicas.get(a) else {
                    if !feed.entries.is_empty() {
                        lost.push("replica", format!("hub {hub} holds no replica of {owner}"));
                    }
                    continue;
                };
                if replica.head_seq != feed.head_seq {
                    let detail =
                        format!("hub {hub} holds {owner} at head {}, published {}", replica.head_seq, feed.head_seq);
                    lost.push("replica", detail);
                }
                let cutoff = h.now.minus_ms(self.tombstone_retention_ms);
                for (seq, e) in &feed.entries {
                    match replica.entries.get(seq) {
                        Some(x) if x == e => {}
                        Some(_) => {
                            unexpected.push("replica", format!("hub {hub} holds another entry {seq} of {owner}"))
                        }
                        None if e.tombstone && e.at < cutoff => {}
                        None => lost.push("replica", format!("hub {hub} lacks entry {seq} of {owner}")),
                    }
                }
                for seq in replica.entries.keys().filter(|s| !feed.entries.contains_key(s)) {
                    unexpected
                        .push("replica", format!("hub {hub} holds entry {seq} of {owner} it no longer publishes"));
                }
            }
            for (origin, seq) in self.visits_due(u64::MAX) {
                if !h.visits.contains(&(origin, seq)) {
                    lost.push("visit-at-hub", format!("hub {hub} lacks visit {seq} of hub {}", self.name(origin)));
                }
            }
        }
        self.lost.merge(lost);
        self.unexpected.merge(unexpected);
    }
}

/// Whether a plan's visibility changes within `margin_ms` of true time `at`.
pub fn near_visibility_edge(plan: &Plan, at: u64, margin_ms: u64) -> bool {
    let before = plan.visible_on(Timestamp(at.saturating_sub(margin_ms)).date());
    let after = plan.visible_on(Timestamp(at + margin_ms).date());
    before != after
}

/// A feed as the final checks see it.
pub fn feed_view<'a>(head: Option<&SignedHead>, entries: impl Iterator<Item = &'a SignedEntry>) -> FeedView {
    FeedView {
        head_seq: head.map_or(0, |h| h.body.seq),
        entries: entries.map(|e| (e.body.seq, EntryView::of(e))).collect(),
    }
}
