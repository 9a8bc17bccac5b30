//! The adversary: one hub made hostile for a run, and a hostile care setting.
//!
//! The hostile hub runs the honest protocol machine (its store and replicas are what the
//! protocol makes of its inputs), but the adversary stands between it and the network: every
//! message it would send is handed to [`HostileHub::on_transmit`] ([`Cluster::intercept`]), which
//! passes it on, tampers with it or adds to it, with only what such a hub holds: its own key, its
//! own store and what passed through it. Its attacks:
//!
//! - **omission**: an entry dropped from a run of an authority's feed it relays to a peer hub; a
//!   plan dropped from an answer, or an authority left out of it;
//! - **stale answers and freshness lies**: an authority's part of an answer replaced by an older
//!   one it captured (an older head, with the plans and proof of then), or a whole old answer
//!   given for a new lookup of the same child;
//! - **replays**: frames it sent before, sent again (old heads, old runs, old notifications);
//! - **invented notifications**: notifications it signs itself, naming plans the authority does
//!   not hold, for a child the authority has no plan for, for a scheduled lookup, or for a lookup
//!   no setting signed; sent to the authority or relayed through another of its home hubs;
//! - **forged heads**: an authority's head signed with the hub's own key (the wrong key), claiming
//!   a later sequence or a time in the future, alone or closing a run;
//! - **directory bombs**: an unsigned directory version listing thousands of members, a chain of
//!   versions longer than the wire allows, and a frame claiming more than the largest frame.
//!
//! The hostile setting signs lookups for another setting, replays lookups other settings signed
//! (taken from visit histories it was shown), and bursts over the hub's rate limit.
//!
//! The checkers hold the honest members to every invariant all the same: no setting accepts an
//! answer missing a plan its authority published under the head shown, or showing one it had
//! withdrawn; a head shown as fresh is fresh; no authority stores an invented notification.

use crate::agenda::Agenda;
use crate::badinput::{forge, oversized};
use crate::checker::History;
use crate::cluster::Cluster;
use crate::fnv::FnvMap;
use crate::world::{self, NodeId};
use cpis_protocol::directory::{Directory, Member, SignedDirectory};
use cpis_protocol::feed::{FeedHead, SignedHead};
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::machine::{Event, Transmit};
use cpis_protocol::records::{AccessEvent, LookupKind, Person};
use cpis_protocol::refusal::RefusalCode;
use cpis_protocol::schema::{self, StoredRow, Table};
use cpis_protocol::sign::{Identity, Signed};
use cpis_protocol::time::{DAY_MS, Timestamp};
use cpis_protocol::wire::{self, AuthorityAnswer, DIRECTORY_CHAIN_MAX, FeedBatch, LookupAnswer, Message, Notification};
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

const MINUTE_MS: u64 = 60_000;
/// Most old answer parts the hostile hub keeps for stale answers.
pub const PARTS_KEPT_MAX: usize = 4_096;
/// Most frames it keeps to replay.
pub const FRAMES_KEPT_MAX: usize = 64;
/// Most of its own lookups it remembers (to build invented notifications from).
pub const LOOKUPS_KEPT_MAX: usize = 256;
/// Members in the unsigned directory of a directory bomb (more than a directory may list).
pub const BOMB_MEMBERS: usize = cpis_protocol::directory::MEMBERS_MAX + 4;

/// The attacks a hostile hub makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attacks {
    pub omit_entries: bool,
    pub stale_answers: bool,
    pub replays: bool,
    pub invent_notifications: bool,
    pub forge_heads: bool,
    pub directory_bombs: bool,
}

impl Attacks {
    pub fn all() -> Attacks {
        Attacks {
            omit_entries: true,
            stale_answers: true,
            replays: true,
            invent_notifications: true,
            forge_heads: true,
            directory_bombs: true,
        }
    }

    /// A random non-empty subset.
    pub fn draw(rng: &mut SplitMix64) -> Attacks {
        let mut a = Attacks {
            omit_entries: rng.below(2) == 0,
            stale_answers: rng.below(2) == 0,
            replays: rng.below(2) == 0,
            invent_notifications: rng.below(2) == 0,
            forge_heads: rng.below(2) == 0,
            directory_bombs: rng.below(2) == 0,
        };
        if a == Attacks::default() {
            a.stale_answers = true;
        }
        a
    }

    pub fn describe(&self) -> Vec<&'static str> {
        let mut v = vec![];
        for (on, name) in [
            (self.omit_entries, "omission"),
            (self.stale_answers, "stale answers"),
            (self.replays, "replays"),
            (self.invent_notifications, "invented notifications"),
            (self.forge_heads, "forged heads"),
            (self.directory_bombs, "directory bombs"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// What the hostile hub did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AdversaryStats {
    pub messages_seen: u64,
    pub entries_omitted: u64,
    pub plans_omitted_from_answers: u64,
    pub authorities_left_out_of_answers: u64,
    pub parts_replaced_with_older: u64,
    pub answers_replayed: u64,
    pub frames_replayed: u64,
    pub notifications_invented: u64,
    pub notifications_relayed_invented: u64,
    pub heads_forged: u64,
    pub directory_bombs: u64,
}

#[derive(Clone, Copy, Debug)]
enum AdvEv {
    Tick,
}

/// An encoded frame, shared.
type Frame = Rc<Vec<u8>>;

/// A hub made hostile.
pub struct HostileHub {
    pub hub: NodeId,
    pub attacks: Attacks,
    rng: SplitMix64,
    identity: Identity,
    agenda: Agenda<AdvEv>,
    /// The oldest answer part seen per child and authority.
    parts: FnvMap<(NhsNumber, OdsCode), AuthorityAnswer>,
    /// The oldest whole answer seen per child.
    answers: FnvMap<NhsNumber, LookupAnswer>,
    frames: VecDeque<(NodeId, Rc<Vec<u8>>)>,
    lookups: VecDeque<(LookupId, LookupKind, Vec<OdsCode>)>,
    /// The directory bombs' frames, made once: a huge unsigned directory, an over-long chain.
    bomb: Option<(Frame, Frame)>,
    pub stats: AdversaryStats,
}

impl HostileHub {
    pub fn new(cluster: &mut Cluster, hub: NodeId, attacks: Attacks, seed: u64, start: u64) -> HostileHub {
        cluster.intercept(hub);
        let identity = cluster.world.fed.identity(cluster.world.code(hub).as_str());
        let mut h = HostileHub {
            hub,
            attacks,
            rng: SplitMix64::new(seed ^ 0x0BAD_4B0B),
            identity,
            agenda: Agenda::new(),
            parts: FnvMap::default(),
            answers: FnvMap::default(),
            frames: VecDeque::new(),
            lookups: VecDeque::new(),
            bomb: None,
            stats: AdversaryStats::default(),
        };
        let first = start + MINUTE_MS + h.rng.below(5 * MINUTE_MS);
        h.agenda.at(first, AdvEv::Tick);
        h
    }

    pub fn next_at(&self) -> Option<u64> {
        self.agenda.next_at()
    }

    /// Chance in a million that one message is tampered with.
    const TAMPER_PER_MILLION: u32 = 400_000;

    /// Events the actor's agenda dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.agenda.dropped()
    }

    /// An event of its own hub (it reads its own logs).
    pub fn on_own_event(&mut self, e: &Event) {
        if let Event::LookupAnswered { lookup_id, kind, notified, .. } = e {
            if self.lookups.len() >= LOOKUPS_KEPT_MAX {
                self.lookups.pop_front();
            }
            self.lookups.push_back((*lookup_id, *kind, notified.clone()));
        }
    }

    /// A message its hub would send: passed on, tampered with, or added to.
    pub fn on_transmit(&mut self, cluster: &mut Cluster, t: Transmit) {
        let Some(to) = cluster.world.id(&t.to) else { return };
        self.stats.messages_seen += 1;
        let mut message = t.message;
        self.capture(to, &message);
        let w = &cluster.world;
        let tamper = self.rng.chance(Self::TAMPER_PER_MILLION);
        let mut extra: Vec<Message> = vec![];
        match &mut message {
            Message::Feed(b) if tamper && self.attacks.omit_entries && w.is_hub(to) => {
                let authority = w.id(&b.origin).is_some_and(|o| w.authorities.contains(&o));
                if authority && !b.entries.is_empty() {
                    let i = self.rng.below(b.entries.len() as u64) as usize;
                    b.entries.remove(i);
                    self.stats.entries_omitted += 1;
                    cluster.watch_tampered_run(to, &b.origin, b.upto);
                }
            }
            Message::Head(h) if tamper && self.attacks.forge_heads && w.is_hub(to) => {
                extra.push(Message::Head(self.forged_head(cluster, &h.body)));
            }
            Message::Answer(a) if tamper => {
                let now = cluster.node_now(self.hub);
                self.tamper_answer(cluster, a, now);
                if self.attacks.directory_bombs && self.rng.below(4) == 0 {
                    self.stats.directory_bombs += 1;
                    extra.push(Message::Directories(vec![self.unsigned_directory(cluster, 8)]));
                }
            }
            _ => {}
        }
        cluster.send(self.hub, to, &message);
        for m in extra {
            cluster.send(self.hub, to, &m);
        }
    }

    /// Keeps what it may replay later.
    fn capture(&mut self, to: NodeId, m: &Message) {
        match m {
            Message::Answer(a) if self.attacks.stale_answers || self.attacks.replays => {
                self.answers.entry(a.nhs).or_insert_with(|| a.clone());
                for part in &a.authorities {
                    if self.parts.len() < PARTS_KEPT_MAX {
                        self.parts.entry((a.nhs, part.head.body.origin.clone())).or_insert_with(|| part.clone());
                    }
                }
                if self.answers.len() > PARTS_KEPT_MAX {
                    self.answers.clear();
                }
            }
            Message::Head(_) | Message::Feed(_) | Message::Notify(_) | Message::Receipt(_) if self.attacks.replays => {
                if self.frames.len() >= FRAMES_KEPT_MAX {
                    // Older frames make better replays: once full, the oldest stay, and one new
                    // frame in eight takes the place of the newest.
                    if self.rng.below(8) != 0 {
                        return;
                    }
                    self.frames.pop_back();
                }
                self.frames.push_back((to, Rc::new(wire::encode_frame(m))));
            }
            _ => {}
        }
    }

    /// Omission, stale parts, replayed answers, forged heads: one of those it makes.
    fn tamper_answer(&mut self, cluster: &Cluster, a: &mut LookupAnswer, now: Timestamp) {
        let mut options = vec![];
        if self.attacks.omit_entries {
            options.push(0);
        }
        if self.attacks.stale_answers {
            options.extend([1, 1]);
        }
        if self.attacks.replays {
            options.push(2);
        }
        if self.attacks.forge_heads {
            options.push(3);
        }
        if options.is_empty() {
            return;
        }
        match options[self.rng.below(options.len() as u64) as usize] {
            0 => {
                let with_plans: Vec<usize> =
                    (0..a.authorities.len()).filter(|i| !a.authorities[*i].plans.is_empty()).collect();
                if let Some(&i) = with_plans.get(self.rng.below(with_plans.len().max(1) as u64) as usize) {
                    let part = &mut a.authorities[i];
                    let j = self.rng.below(part.plans.len() as u64) as usize;
                    part.plans.remove(j);
                    self.stats.plans_omitted_from_answers += 1;
                } else if !a.authorities.is_empty() {
                    let i = self.rng.below(a.authorities.len() as u64) as usize;
                    a.authorities.remove(i);
                    self.stats.authorities_left_out_of_answers += 1;
                }
            }
            1 => {
                for part in &mut a.authorities {
                    let key = (a.nhs, part.head.body.origin.clone());
                    if let Some(old) = self.parts.get(&key).filter(|o| o.head.body.at < part.head.body.at) {
                        *part = old.clone();
                        self.stats.parts_replaced_with_older += 1;
                    }
                }
            }
            2 => {
                if let Some(old) = self.answers.get(&a.nhs).filter(|o| o.answered_at < a.answered_at) {
                    let lookup_id = a.lookup_id;
                    *a = old.clone();
                    a.lookup_id = lookup_id;
                    self.stats.answers_replayed += 1;
                }
            }
            _ => {
                if a.authorities.is_empty() {
                    return;
                }
                let i = self.rng.below(a.authorities.len() as u64) as usize;
                let mut body = a.authorities[i].head.body.clone();
                body.at = now.plus_ms(if self.rng.below(2) == 0 { DAY_MS } else { 0 });
                a.authorities[i].head = self.sign_as(cluster, body);
                self.stats.heads_forged += 1;
            }
        }
    }

    /// An authority's head signed with this hub's key under the authority's key id.
    fn sign_as(&self, cluster: &Cluster, body: FeedHead) -> SignedHead {
        let key_id = cluster.world.fed.identity(body.origin.as_str()).key_id();
        forge(&self.identity, body, key_id)
    }

    /// A later head of the same authority, forged: a higher sequence, now or a day ahead.
    fn forged_head(&mut self, cluster: &Cluster, real: &FeedHead) -> SignedHead {
        let mut body = real.clone();
        body.seq += 1 + self.rng.below(1_000);
        body.children += 1;
        let now = cluster.node_now(self.hub);
        body.at = if self.rng.below(2) == 0 { now.plus_ms(DAY_MS) } else { now };
        self.stats.heads_forged += 1;
        self.sign_as(cluster, body)
    }

    /// The next directory version, with `members` more members than the current one and no
    /// signature.
    fn unsigned_directory(&self, cluster: &Cluster, members: usize) -> SignedDirectory {
        let current = cluster.directory().directory();
        let template: Option<Member> = current.members.last().cloned();
        let mut d: Directory = current.clone();
        d.version += 1;
        if let Some(t) = template {
            for i in 0..members {
                let mut m = t.clone();
                if let Ok(code) = OdsCode::parse(&format!("BOMB{i:05}")) {
                    m.code = code;
                    d.members.push(m);
                }
            }
        }
        SignedDirectory { directory: d, signatures: vec![] }
    }

    /// Handles the actor's next event (the driver moved time on to it).
    pub fn step(&mut self, cluster: &mut Cluster) {
        let Some((_, AdvEv::Tick)) = self.agenda.pop() else { return };
        if cluster.machine(self.hub).is_some() {
            if self.attacks.invent_notifications {
                self.invent_notification(cluster);
            }
            if self.attacks.forge_heads {
                self.forge_heads_to_peers(cluster);
            }
            if self.attacks.replays {
                self.replay(cluster);
            }
            if self.attacks.directory_bombs && self.rng.below(3) == 0 {
                self.directory_bomb(cluster);
            }
        }
        let next = cluster.now() + MINUTE_MS + self.rng.below(4 * MINUTE_MS);
        self.agenda.at(next, AdvEv::Tick);
    }

    /// A signed lookup from its own access log.
    fn logged(&self, cluster: &Cluster, id: &LookupId) -> Option<Signed<AccessEvent>> {
        let disk = cluster.disk(self.hub);
        let mut rows = disk.table(Table::AccessLog);
        let (key, value) = rows.find(|(key, _)| schema::ACCESS_LOG.parse_key(key).is_some_and(|(_, i)| i == *id))?;
        let row = StoredRow { table: Table::AccessLog, key: key.to_vec(), value: value.to_vec() };
        schema::ACCESS_LOG.decode(&row).ok().map(|(_, s)| s)
    }

    /// A notification it signs itself that no honest hub would: invented matches, a child
    /// without a plan there, a scheduled lookup, or a lookup no setting signed.
    fn invent_notification(&mut self, cluster: &mut Cluster) {
        if self.lookups.is_empty() {
            return;
        }
        let (id, _, notified) = self.lookups[self.rng.below(self.lookups.len() as u64) as usize].clone();
        let Some(mut event) = self.logged(cluster, &id) else { return };
        let w = &cluster.world;
        let now = cluster.node_now(self.hub);
        let connected: Vec<NodeId> = w.authorities.clone().filter(|a| cluster.connected(self.hub, *a)).collect();
        let variant = self.rng.below(4);
        let (target, matched) = match variant {
            // Invented matches: an authority it did notify, a plan it never had.
            0 if !notified.is_empty() => {
                let a = notified[self.rng.below(notified.len() as u64) as usize].clone();
                (w.id(&a), vec![invented_ref()])
            }
            // A child the authority has no plan for (or a scheduled lookup, whatever it is).
            _ => {
                let a = w.authorities.start + self.rng.below(w.authorities.len() as u64) as usize;
                (Some(a), vec![invented_ref()])
            }
        };
        let Some(target) = target else { return };
        if variant == 3 {
            // A lookup no setting signed: the hub signs the access event itself.
            event = forge(&self.identity, event.body, self.identity.key_id());
        }
        let n = Notification {
            event,
            authority: w.code(target).clone(),
            matched,
            hub: w.code(self.hub).clone(),
            answered_at: now,
            signed_at: now,
        };
        let signed = self.identity.sign(n);
        if connected.contains(&target) {
            self.stats.notifications_invented += 1;
            cluster.send(self.hub, target, &Message::Notify(signed));
            return;
        }
        // Relayed through another home hub of the authority, which stores and delivers it.
        let homes: Vec<NodeId> =
            w.home_hubs[target].iter().copied().filter(|h| *h != self.hub && cluster.connected(self.hub, *h)).collect();
        if let Some(&relay) = homes.first() {
            self.stats.notifications_relayed_invented += 1;
            cluster.send(self.hub, relay, &Message::Notify(signed));
        }
    }

    /// Forged heads of an authority sent to every peer hub, alone and closing a run.
    fn forge_heads_to_peers(&mut self, cluster: &mut Cluster) {
        let Some(h) = cluster.hub(self.hub) else { return };
        let heads: Vec<SignedHead> = h.replicas().values().filter_map(|r| r.head().cloned()).collect();
        if heads.is_empty() {
            return;
        }
        let real = heads[self.rng.below(heads.len() as u64) as usize].body.clone();
        let forged = self.forged_head(cluster, &real);
        let peers: Vec<NodeId> =
            cluster.world.hubs.clone().filter(|p| *p != self.hub && cluster.connected(self.hub, *p)).collect();
        for p in peers {
            cluster.send(self.hub, p, &Message::Head(forged.clone()));
            let run = FeedBatch {
                origin: forged.body.origin.clone(),
                after: real.seq,
                upto: forged.body.seq,
                entries: vec![],
                head: Some(forged.clone()),
                more: false,
            };
            cluster.send(self.hub, p, &Message::Feed(run));
        }
    }

    /// Frames it sent before, sent again to whom they went to.
    fn replay(&mut self, cluster: &mut Cluster) {
        for _ in 0..3 {
            if self.frames.is_empty() {
                return;
            }
            let (to, frame) = self.frames[self.rng.below(self.frames.len() as u64) as usize].clone();
            self.stats.frames_replayed += 1;
            cluster.send_frame(self.hub, to, frame.as_ref().clone());
        }
    }

    /// An unsigned directory with thousands of members, a chain longer than allowed, and a frame
    /// claiming more than the largest frame, to every peer hub.
    fn directory_bomb(&mut self, cluster: &mut Cluster) {
        let (bomb, too_long) = match &self.bomb {
            Some(b) => (Rc::clone(&b.0), Rc::clone(&b.1)),
            None => {
                let d = self.unsigned_directory(cluster, BOMB_MEMBERS);
                let bomb = Rc::new(wire::encode_frame(&Message::Directories(vec![d])));
                let chain: Vec<SignedDirectory> =
                    (0..=DIRECTORY_CHAIN_MAX).map(|_| self.unsigned_directory(cluster, 0)).collect();
                let too_long = Rc::new(wire::encode_frame(&Message::Directories(chain)));
                self.bomb = Some((Rc::clone(&bomb), Rc::clone(&too_long)));
                (bomb, too_long)
            }
        };
        let peers: Vec<NodeId> =
            cluster.world.hubs.clone().filter(|p| *p != self.hub && cluster.connected(self.hub, *p)).collect();
        let Some(&p) = peers.get(self.rng.below(peers.len().max(1) as u64) as usize) else { return };
        self.stats.directory_bombs += 1;
        cluster.send_frame(self.hub, p, bomb.as_ref().clone());
        cluster.send_frame(self.hub, p, too_long.as_ref().clone());
        cluster.send_frame(self.hub, p, oversized());
    }
}

fn invented_ref() -> PlanRef {
    PlanRef::parse("INVENTED-1").unwrap_or_else(|e| panic!("simulator built a bad reference: {e}"))
}

// ---- The hostile setting ----

/// What the hostile setting did and met.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostileSettingStats {
    pub signed_for_another: u64,
    pub replayed_anothers: u64,
    pub burst_lookups: u64,
    pub probes: u64,
    pub refused_not_from_setting: u64,
    pub refused_rate_limited: u64,
    pub refused_other: u64,
    pub answered: u64,
}

#[derive(Clone, Copy, Debug)]
enum HsEv {
    Tick,
    Burst,
}

/// Lookups over the per-person limit in one burst.
pub const BURST_LOOKUPS: u64 = 130;

/// A care setting that lies about itself.
pub struct HostileSetting {
    pub setting: NodeId,
    rng: SplitMix64,
    identity: Identity,
    agenda: Agenda<HsEv>,
    /// Lookups other settings signed, taken from visit histories it was shown.
    captured: VecDeque<Signed<AccessEvent>>,
    /// Lookups that must never be answered.
    forged: BTreeSet<LookupId>,
    pub stats: HostileSettingStats,
}

impl HostileSetting {
    pub fn new(cluster: &Cluster, setting: NodeId, seed: u64, start: u64) -> HostileSetting {
        let mut agenda = Agenda::new();
        agenda.at(start + 10 * MINUTE_MS, HsEv::Burst);
        agenda.at(start + 5 * MINUTE_MS, HsEv::Tick);
        HostileSetting {
            setting,
            rng: SplitMix64::new(seed ^ 0x5E77_1B06),
            identity: cluster.world.fed.identity(cluster.world.code(setting).as_str()),
            agenda,
            captured: VecDeque::new(),
            forged: BTreeSet::new(),
            stats: HostileSettingStats::default(),
        }
    }

    pub fn next_at(&self) -> Option<u64> {
        self.agenda.next_at()
    }

    /// Events the actor's agenda dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.agenda.dropped()
    }

    fn hub(&self, cluster: &Cluster) -> Option<NodeId> {
        cluster.world.home_hubs[self.setting].iter().copied().find(|h| cluster.connected(self.setting, *h))
    }

    fn lookup(
        &mut self,
        cluster: &mut Cluster,
        hub: NodeId,
        nhs: NhsNumber,
        person: &str,
        setting: &OdsCode,
    ) -> LookupId {
        let id = self.rng.lookup_id();
        let event = AccessEvent {
            lookup_id: id,
            setting: setting.clone(),
            person: Person { id: person.into(), name: "A Person".into(), role: "Nurse".into() },
            at: cluster.node_now(self.setting),
            nhs,
        };
        cluster.send(self.setting, hub, &Message::Lookup(self.identity.sign(event)));
        id
    }

    /// Handles the actor's next event (the driver moved time on to it).
    pub fn step(&mut self, cluster: &mut Cluster) {
        let Some((_, ev)) = self.agenda.pop() else { return };
        let Some(hub) = self.hub(cluster) else {
            self.agenda.at(cluster.now() + 5 * MINUTE_MS, ev);
            return;
        };
        let own = cluster.world.code(self.setting).clone();
        match ev {
            HsEv::Burst => {
                for _ in 0..BURST_LOOKUPS {
                    let nhs = world::unflagged_child(&mut self.rng);
                    self.lookup(cluster, hub, nhs, "BURST", &own);
                    self.stats.burst_lookups += 1;
                }
                self.agenda.at(cluster.now() + 120 * MINUTE_MS, HsEv::Burst);
            }
            HsEv::Tick => {
                // Probes of children with plans (their answers show visits other settings signed).
                for _ in 0..2 {
                    let nhs = world::nhs_number(world::FLAGGED_STEM_BASE + self.rng.below(64));
                    self.lookup(cluster, hub, nhs, "PROBE", &own);
                    self.stats.probes += 1;
                }
                let settings = cluster.world.settings.clone();
                let victim = settings.start + (self.setting - settings.start + 1) % settings.len();
                let victim_code = cluster.world.code(victim).clone();
                let nhs = world::unflagged_child(&mut self.rng);
                let id = self.lookup(cluster, hub, nhs, "LIAR", &victim_code);
                self.forged.insert(id);
                self.stats.signed_for_another += 1;
                if let Some(signed) = self.captured.pop_front() {
                    self.forged.insert(signed.body.lookup_id);
                    self.stats.replayed_anothers += 1;
                    cluster.send(self.setting, hub, &Message::Lookup(signed));
                }
                self.agenda.at(cluster.now() + 5 * MINUTE_MS + self.rng.below(10 * MINUTE_MS), HsEv::Tick);
            }
        }
    }

    /// A frame for the hostile setting.
    pub fn on_frame(&mut self, cluster: &Cluster, history: &mut History, frame: &[u8]) {
        match wire::decode_frame(frame) {
            Ok(Message::Answer(a)) => {
                if self.forged.contains(&a.lookup_id) {
                    let detail = format!("hub answered lookup {} the hostile setting made for another", a.lookup_id);
                    history.unexpected("hostile-setting", detail);
                }
                self.stats.answered += 1;
                for v in a.history {
                    let cpis_protocol::feed::EntryBody::Visit(event) = v.body.body else { continue };
                    let other = cluster.world.id(&event.body.setting).is_some_and(|s| s != self.setting);
                    if other && self.captured.len() < 16 {
                        self.captured.push_back(*event);
                    }
                }
            }
            Ok(Message::Refused(r)) => match r.code {
                RefusalCode::NotFromSetting => self.stats.refused_not_from_setting += 1,
                RefusalCode::RateLimited => self.stats.refused_rate_limited += 1,
                _ => self.stats.refused_other += 1,
            },
            _ => {}
        }
    }
}
