//! A deterministic test network (behind the `test-support` feature): role machines over a
//! simulated network in virtual time, with message delay, loss, cut links, crashes and restarts,
//! every message crossing as the very frames the node sends.
//!
//! ```
//! use cpis_protocol::harness::{FederationSpec, Net, NetConfig};
//! let spec = FederationSpec::new("doc").hub("HUB01").authority("204", "Hackney", &["HUB01"]);
//! let mut net = Net::new(spec.build(), NetConfig::default());
//! net.run_for(5_000);
//! assert_eq!(net.hub("HUB01").peers().count(), 1);
//! ```
//!
//! Identities here are derived from the member's code: fine for tests and simulation, never for a
//! real federation.

use crate::authority::{Authority, AuthorityConfig};
use crate::directory::{Directory, KeyStatus, Member, MemberKey, Role, SignedDirectory, TrustedDirectory};
use crate::driver::MemDisk;
use crate::hub::{Hub, HubConfig};
use crate::ids::{LookupId, NhsNumber, OdsCode};
use crate::machine::{Command, CommandId, Event, Machine, Reply, RoleConfig, Transmit};
use crate::records::{AccessEvent, Contacts, Person, SettingType};
use crate::setting::{AnswerError, Setting, VerifiedAnswer};
use crate::sign::{Identity, Signed};
use crate::time::{DAY_MS, Date, Timestamp};
use crate::wire::{self, Message};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The deterministic identity of a member (or root `ROOT<n>`) in a test federation.
pub fn test_identity(federation: &str, code: &str) -> Identity {
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&Sha256::digest(format!("cpis-test-identity/{federation}/{code}"))[..32]);
    Identity::from_seed(seed)
}

/// A small, seeded generator (SplitMix64): the only randomness the harness uses.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `per_million / 1e6`.
    pub fn chance(&mut self, per_million: u32) -> bool {
        self.below(1_000_000) < u64::from(per_million)
    }
    /// A fresh random lookup id.
    pub fn lookup_id(&mut self) -> LookupId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        LookupId(id)
    }
}

/// Who is in a test federation.
#[derive(Clone, Debug)]
pub struct FederationSpec {
    pub name: String,
    pub start: Timestamp,
    members: Vec<Member>,
}

/// A built test federation: its signed directory and the seeds of every identity.
#[derive(Clone, Debug)]
pub struct TestFederation {
    pub name: String,
    pub start: Timestamp,
    pub directory: SignedDirectory,
}

impl TestFederation {
    pub fn identity(&self, code: &str) -> Identity {
        test_identity(&self.name, code)
    }
    pub fn trusted(&self) -> TrustedDirectory {
        match TrustedDirectory::bootstrap(self.directory.clone(), self.start) {
            Ok(t) => t,
            Err(e) => panic!("test federation directory is invalid: {e}"),
        }
    }
    /// Signs the next directory version (2 of the 3 test roots), after `change` edits it.
    pub fn next_directory(&self, current: &Directory, change: impl FnOnce(&mut Directory)) -> SignedDirectory {
        let mut d = current.clone();
        d.version += 1;
        change(&mut d);
        let roots = [test_identity(&self.name, "ROOT1"), test_identity(&self.name, "ROOT2")];
        SignedDirectory::sign(d, &[&roots[0], &roots[1]])
    }
}

pub fn code(text: &str) -> OdsCode {
    match OdsCode::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("bad test code {text:?}: {e}"),
    }
}

impl FederationSpec {
    /// A federation starting on 2026-11-24.
    pub fn new(name: &str) -> Self {
        let start = Date::from_ymd(2026, 11, 24).map(Date::start).unwrap_or_default();
        FederationSpec { name: name.to_string(), start, members: Vec::new() }
    }

    fn key(&self, code: &str) -> MemberKey {
        MemberKey {
            public: test_identity(&self.name, code).public(),
            valid_from: self.start.minus_ms(60 * DAY_MS),
            valid_until: self.start.plus_ms(3 * 365 * DAY_MS),
            status: KeyStatus::Active,
        }
    }

    fn add(mut self, code_text: &str, role: Role, name: &str, home_hubs: &[&str]) -> Self {
        let member = Member {
            code: code(code_text),
            role,
            name: name.to_string(),
            contacts: None,
            addresses: vec![],
            home_hubs: home_hubs.iter().map(|h| code(h)).collect(),
            setting_type: None,
            keys: vec![self.key(code_text)],
        };
        self.members.push(member);
        self
    }

    pub fn hub(self, code: &str) -> Self {
        let name = format!("Hub {code}");
        self.add(code, Role::Hub, &name, &[])
    }

    pub fn authority(self, code: &str, name: &str, home_hubs: &[&str]) -> Self {
        let mut s = self.add(code, Role::Authority, name, home_hubs);
        if let Some(m) = s.members.last_mut() {
            m.contacts = Some(Contacts {
                name: format!("{name} children's social care"),
                office_phone: "020 7000 0000".into(),
                out_of_hours_phone: "020 7000 0001".into(),
            });
        }
        s
    }

    pub fn setting(self, code: &str, name: &str, setting_type: SettingType, home_hubs: &[&str]) -> Self {
        let mut s = self.add(code, Role::Setting, name, home_hubs);
        if let Some(m) = s.members.last_mut() {
            m.setting_type = Some(setting_type);
        }
        s
    }

    pub fn build(self) -> TestFederation {
        let roots: Vec<Identity> = (1..=3).map(|i| test_identity(&self.name, &format!("ROOT{i}"))).collect();
        let directory = Directory {
            federation: self.name.clone(),
            version: 1,
            expires_at: self.start.plus_ms(365 * DAY_MS),
            roots: roots.iter().map(Identity::public).collect(),
            threshold: 2,
            members: self.members,
        };
        let directory = SignedDirectory::sign(directory, &[&roots[0], &roots[1]]);
        TestFederation { name: self.name, start: self.start, directory }
    }
}

/// Network behaviour of a test run.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub seed: u64,
    /// One-way delay of every message.
    pub latency_ms: u64,
    /// Extra random delay, up to this much.
    pub jitter_ms: u64,
    /// Chance that a message is lost, per million.
    pub loss_per_million: u32,
    /// How long after a write is handed out it becomes durable (0: at once).
    pub durable_delay_ms: u64,
    pub hub: HubConfig,
    pub authority: AuthorityConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            seed: 1,
            latency_ms: 20,
            jitter_ms: 10,
            loss_per_million: 0,
            durable_delay_ms: 0,
            hub: HubConfig::default(),
            authority: AuthorityConfig::default(),
        }
    }
}

/// What a setting received.
#[derive(Clone, Debug)]
pub struct Received {
    pub setting: OdsCode,
    pub from: OdsCode,
    pub message: Message,
}

struct InFlight {
    from: OdsCode,
    to: OdsCode,
    /// Encoded frame: every message crosses the simulated wire as bytes.
    frame: Vec<u8>,
}

/// The simulated network.
pub struct Net {
    pub fed: TestFederation,
    pub config: NetConfig,
    pub now: Timestamp,
    pub rng: SplitMix64,
    machines: BTreeMap<OdsCode, Machine>,
    roles: BTreeMap<OdsCode, Role>,
    disks: BTreeMap<OdsCode, MemDisk>,
    pending_writes: Vec<(Timestamp, OdsCode, crate::schema::WriteBatch)>,
    inflight: BTreeMap<(Timestamp, u64), InFlight>,
    next_msg: u64,
    next_command: u64,
    down: BTreeSet<OdsCode>,
    cut: BTreeSet<(OdsCode, OdsCode)>,
    connections: BTreeSet<(OdsCode, OdsCode)>,
    /// Lookups sent, for checking their answers.
    lookups: BTreeMap<LookupId, (OdsCode, Signed<AccessEvent>)>,
    /// Every event reported, with the node that reported it.
    pub events: Vec<(OdsCode, Event)>,
    /// Every message a setting received.
    pub received: Vec<Received>,
    /// Messages and bytes sent, per node.
    pub sent: BTreeMap<OdsCode, (u64, u64)>,
    /// Messages sent, per sender, receiver and kind.
    pub traffic: BTreeMap<(OdsCode, OdsCode, &'static str), u64>,
    /// Messages to lose once each: the next of this kind on this link (see [`Net::lose_next`]).
    lose: Vec<(OdsCode, OdsCode, &'static str)>,
}

fn ordered(a: &OdsCode, b: &OdsCode) -> (OdsCode, OdsCode) {
    if a <= b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) }
}

impl Net {
    pub fn new(fed: TestFederation, config: NetConfig) -> Net {
        let mut net = Net {
            now: fed.start,
            rng: SplitMix64::new(config.seed),
            machines: BTreeMap::new(),
            roles: BTreeMap::new(),
            disks: BTreeMap::new(),
            pending_writes: Vec::new(),
            inflight: BTreeMap::new(),
            next_msg: 0,
            next_command: 0,
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            connections: BTreeSet::new(),
            lookups: BTreeMap::new(),
            events: Vec::new(),
            received: Vec::new(),
            sent: BTreeMap::new(),
            traffic: BTreeMap::new(),
            lose: Vec::new(),
            config,
            fed,
        };
        for m in net.fed.trusted().members().to_vec() {
            net.roles.insert(m.code.clone(), m.role);
            if m.role != Role::Setting {
                net.disks.insert(m.code.clone(), MemDisk::new());
                net.start_machine(&m.code);
            }
        }
        net.refresh_connections();
        net
    }

    fn start_machine(&mut self, code: &OdsCode) {
        let identity = self.fed.identity(code.as_str());
        let config = match self.roles[code] {
            Role::Hub => RoleConfig::Hub(self.config.hub.clone()),
            _ => RoleConfig::Authority(self.config.authority.clone()),
        };
        let rows = self.disks[code].load(|table, key| config.restores(table, key, self.now));
        match Machine::restore(code.clone(), identity, self.fed.trusted(), config, rows, self.now) {
            Ok(m) => {
                self.machines.insert(code.clone(), m);
            }
            Err(e) => panic!("restoring {code} from its own store failed: {e}"),
        }
        self.pump(code);
    }

    pub fn machine(&self, code: &str) -> &Machine {
        match self.machines.get(&self::code(code)) {
            Some(m) => m,
            None => panic!("{code} is not running"),
        }
    }

    pub fn hub(&self, code: &str) -> &Hub {
        match self.machine(code).as_hub() {
            Some(h) => h,
            None => panic!("{code} is not a hub"),
        }
    }

    pub fn authority(&self, code: &str) -> &Authority {
        match self.machine(code).as_authority() {
            Some(a) => a,
            None => panic!("{code} is not an authority"),
        }
    }

    /// Runs an operator's command at `node` and lets its outputs out; returns the reply if it is
    /// already released (writes become durable at once unless `durable_delay_ms` is set).
    pub fn command(&mut self, node: &str, command: Command) -> Option<Reply> {
        self.next_command += 1;
        let id = CommandId(self.next_command);
        let (c, now) = (self::code(node), self.now);
        let seen = self.events.len();
        match self.machines.get_mut(&c) {
            Some(m) => m.handle_command(id, command, now),
            None => panic!("{node} is not running"),
        }
        self.pump(&c);
        self.events[seen..].iter().find_map(|(_, e)| match e {
            Event::Replied { command, reply } if *command == id => Some(reply.clone()),
            _ => None,
        })
    }

    /// Lets a driver's hand into a machine (a test's own step), then lets its outputs out.
    pub fn with_machine<R>(&mut self, node: &str, f: impl FnOnce(&mut Machine, Timestamp) -> R) -> R {
        let (c, now) = (self::code(node), self.now);
        let r = match self.machines.get_mut(&c) {
            Some(m) => f(m, now),
            None => panic!("{node} is not running"),
        };
        self.pump(&c);
        r
    }

    /// The durable rows of a node.
    pub fn disk(&self, code: &str) -> &MemDisk {
        &self.disks[&self::code(code)]
    }

    fn wanted_links(&self) -> BTreeSet<(OdsCode, OdsCode)> {
        let dir = self.fed.trusted();
        let mut want = BTreeSet::new();
        let hubs: Vec<&OdsCode> = dir.with_role(Role::Hub).map(|m| &m.code).collect();
        for (i, a) in hubs.iter().enumerate() {
            for b in &hubs[i + 1..] {
                want.insert(ordered(a, b));
            }
        }
        for m in dir.with_role(Role::Authority) {
            for h in &m.home_hubs {
                want.insert(ordered(&m.code, h));
            }
        }
        want
    }

    fn link_up(&self, a: &OdsCode, b: &OdsCode) -> bool {
        !self.down.contains(a) && !self.down.contains(b) && !self.cut.contains(&ordered(a, b))
    }

    /// Connects and disconnects pairs to match who is up and which links are cut.
    fn refresh_connections(&mut self) {
        let mut want: BTreeSet<_> = self.wanted_links().into_iter().filter(|(a, b)| self.link_up(a, b)).collect();
        // Setting sessions stand while their link is up.
        for (a, b) in &self.connections {
            let setting = self.roles.get(a) == Some(&Role::Setting) || self.roles.get(b) == Some(&Role::Setting);
            if setting && self.link_up(a, b) {
                want.insert((a.clone(), b.clone()));
            }
        }
        let gone: Vec<_> = self.connections.difference(&want).cloned().collect();
        let new: Vec<_> = want.difference(&self.connections).cloned().collect();
        for (a, b) in gone {
            self.connections.remove(&(a.clone(), b.clone()));
            self.notify_link(&a, &b, false);
            self.notify_link(&b, &a, false);
        }
        for (a, b) in new {
            self.connections.insert((a.clone(), b.clone()));
            self.notify_link(&a, &b, true);
            self.notify_link(&b, &a, true);
        }
    }

    fn notify_link(&mut self, node: &OdsCode, peer: &OdsCode, up: bool) {
        let now = self.now;
        let key = self.fed.identity(peer.as_str()).key_id();
        let Some(m) = self.machines.get_mut(node) else {
            return;
        };
        if up {
            m.handle_connected(peer, key, now);
        } else {
            m.handle_disconnected(peer);
        }
        self.pump(node);
    }

    /// Cuts the link between two members (both directions).
    pub fn cut(&mut self, a: &str, b: &str) {
        self.cut.insert(ordered(&code(a), &code(b)));
        self.refresh_connections();
    }

    /// Cuts every link of `node`.
    pub fn isolate(&mut self, node: &str) {
        let n = code(node);
        for other in self.roles.keys().cloned().collect::<Vec<_>>() {
            if other != n {
                self.cut.insert(ordered(&n, &other));
            }
        }
        self.refresh_connections();
    }

    /// Heals every cut link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.refresh_connections();
    }

    /// Crashes a node: its memory and writes not yet durable are lost.
    pub fn crash(&mut self, node: &str) {
        let n = code(node);
        self.machines.remove(&n);
        self.pending_writes.retain(|(_, who, _)| *who != n);
        self.down.insert(n);
        self.refresh_connections();
    }

    /// Restarts a crashed node from its durable rows.
    pub fn restart(&mut self, node: &str) {
        let n = code(node);
        self.down.remove(&n);
        self.start_machine(&n);
        self.refresh_connections();
    }

    /// Replaces a (crashed) node's durable rows, as a restore from a backup would.
    pub fn replace_disk(&mut self, node: &str, disk: MemDisk) {
        self.disks.insert(code(node), disk);
    }

    /// Crashes a node and throws away its store too.
    pub fn wipe(&mut self, node: &str) {
        self.crash(node);
        if let Some(d) = self.disks.get_mut(&code(node)) {
            d.clear();
        }
    }

    /// A setting looks up `nhs` at hub `hub`. Returns the lookup id.
    pub fn lookup(&mut self, setting: &str, hub: &str, nhs: NhsNumber) -> LookupId {
        let lookup_id = self.rng.lookup_id();
        let person = Person { id: "U1".into(), name: "Dr A Clinician".into(), role: "Nurse".into() };
        let signed = match self.setting(setting).lookup(nhs, person, lookup_id, self.now) {
            Ok(s) => s,
            Err(e) => panic!("test lookup is invalid: {e}"),
        };
        self.lookups.insert(lookup_id, (code(hub), signed.clone()));
        self.send_from_setting(setting, hub, Message::Lookup(signed));
        lookup_id
    }

    /// The setting's side, for verifying answers.
    pub fn setting(&self, setting: &str) -> Setting {
        match Setting::new(code(setting), self.fed.identity(setting), self.fed.trusted()) {
            Some(s) => s,
            None => panic!("{setting} is not a setting"),
        }
    }

    /// The answer a lookup got, checked by its setting at the current time.
    pub fn verified(&self, setting: &str, lookup_id: LookupId) -> Result<VerifiedAnswer, AnswerError> {
        let Some((_, signed)) = self.lookups.get(&lookup_id) else { panic!("no lookup {lookup_id}") };
        let Some(Message::Answer(answer)) = self.reply_to(lookup_id).cloned() else {
            panic!("lookup {lookup_id} got no answer: {:?}", self.reply_to(lookup_id))
        };
        self.setting(setting).verify_answer(&signed.body, answer, self.now)
    }

    /// Sends a message as a setting (connecting it to the hub for the purpose).
    pub fn send_from_setting(&mut self, setting: &str, hub: &str, message: Message) {
        let (s, h) = (code(setting), code(hub));
        if !self.connections.contains(&ordered(&s, &h)) && self.link_up(&s, &h) {
            self.connections.insert(ordered(&s, &h));
            self.notify_link(&h, &s, true);
        }
        self.transmit(&s, Transmit { to: h, message });
    }

    /// Sends a message as `from` to `to`, as a hostile or broken peer would.
    pub fn send_as(&mut self, from: &str, to: &str, message: Message) {
        self.transmit(&code(from), Transmit { to: code(to), message });
    }

    /// Sends raw bytes as `from` to `to`, as a hostile or broken peer would.
    pub fn send_raw(&mut self, from: &str, to: &str, frame: Vec<u8>) {
        self.enqueue(code(from), code(to), frame);
    }

    /// Loses the next message of `kind` that `from` sends `to`, while their connection stays up.
    pub fn lose_next(&mut self, from: &str, to: &str, kind: &'static str) {
        self.lose.push((code(from), code(to), kind));
    }

    /// Messages of `kind` sent from `from` to `to` so far.
    pub fn traffic(&self, from: &str, to: &str, kind: &'static str) -> u64 {
        self.traffic.get(&(code(from), code(to), kind)).copied().unwrap_or(0)
    }

    fn transmit(&mut self, from: &OdsCode, t: Transmit) {
        let kind = t.message.kind();
        *self.traffic.entry((from.clone(), t.to.clone(), kind)).or_default() += 1;
        let link = (from.clone(), t.to.clone(), kind);
        if let Some(i) = self.lose.iter().position(|l| *l == link) {
            self.lose.remove(i);
            return;
        }
        let frame = wire::encode_frame(&t.message);
        self.enqueue(from.clone(), t.to, frame);
    }

    fn enqueue(&mut self, from: OdsCode, to: OdsCode, frame: Vec<u8>) {
        let stats = self.sent.entry(from.clone()).or_default();
        stats.0 += 1;
        stats.1 += frame.len() as u64;
        if self.rng.chance(self.config.loss_per_million) {
            return;
        }
        let delay = self.config.latency_ms + self.rng.below(self.config.jitter_ms + 1);
        self.next_msg += 1;
        self.inflight.insert((self.now.plus_ms(delay), self.next_msg), InFlight { from, to, frame });
    }

    /// Lets a machine's outputs out: writes to its disk, messages onto the network, events to
    /// the log.
    fn pump(&mut self, node: &OdsCode) {
        for _round in 0..1_000 {
            let Some(m) = self.machines.get_mut(node) else {
                return;
            };
            let out = m.drain();
            for request in &out.reads {
                let rows = self.disks.get(node).map(|d| d.read(request)).unwrap_or_default();
                m.handle_read(request, rows, self.now);
            }
            let read = !out.reads.is_empty();
            for e in out.events {
                self.events.push((node.clone(), e));
            }
            for t in out.transmits {
                self.transmit(node, t);
            }
            if out.writes.is_empty() {
                // What a read brought is let out in the next round.
                if read {
                    continue;
                }
                return;
            }
            let due = self.now.plus_ms(self.config.durable_delay_ms);
            for w in out.writes {
                self.pending_writes.push((due, node.clone(), w));
            }
            if self.config.durable_delay_ms > 0 {
                return;
            }
            self.flush_writes();
        }
    }

    /// Makes every write that is due durable and tells its machine.
    fn flush_writes(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending_writes).into_iter().partition(|(t, _, _)| *t <= now);
        self.pending_writes = rest;
        let mut touched = BTreeSet::new();
        for (_, node, batch) in due {
            self.disks.entry(node.clone()).or_default().apply(&batch);
            if let Some(m) = self.machines.get_mut(&node) {
                m.handle_durable(batch.id, now);
            }
            touched.insert(node);
        }
        for node in touched {
            self.pump(&node);
        }
    }

    fn deliver(&mut self, m: InFlight) {
        if !self.connections.contains(&ordered(&m.from, &m.to)) {
            return;
        }
        let now = self.now;
        let decoded = wire::decode_frame(&m.frame);
        if self.roles.get(&m.to) == Some(&Role::Setting) {
            if let Ok(message) = decoded {
                self.received.push(Received { setting: m.to, from: m.from, message });
            }
            return;
        }
        let Ok(message) = decoded else {
            // A driver closes a connection that carries a bad frame.
            self.connections.remove(&ordered(&m.from, &m.to));
            self.notify_link(&m.to, &m.from, false);
            return;
        };
        let Some(machine) = self.machines.get_mut(&m.to) else {
            return;
        };
        machine.handle_message(&m.from, message, now);
        self.pump(&m.to);
    }

    fn timeouts(&mut self) {
        let now = self.now;
        let due: Vec<OdsCode> = self
            .machines
            .iter()
            .filter(|(_, m)| m.poll_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for node in due {
            if let Some(m) = self.machines.get_mut(&node) {
                m.handle_timeout(now);
            }
            self.pump(&node);
        }
    }

    /// Runs the network for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        // Bounded: each step delivers a message, makes writes durable or fires timeouts.
        for _step in 0..10_000_000u64 {
            self.timeouts();
            let next_msg = self.inflight.keys().next().map(|k| k.0);
            let next_write = self.pending_writes.iter().map(|w| w.0).min();
            let next_timeout = self.machines.values().filter_map(Machine::poll_timeout).min();
            let Some(next) = [next_msg, next_write, next_timeout].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            self.now = next.max(self.now);
            if next_write == Some(next) {
                self.flush_writes();
            } else if next_msg == Some(next)
                && let Some((_, m)) = self.inflight.pop_first()
            {
                self.deliver(m);
            }
        }
        self.now = end;
        self.timeouts();
    }

    /// Events reported so far by `node` that match `f`.
    pub fn events_of(&self, node: &str, f: impl Fn(&Event) -> bool) -> Vec<&Event> {
        let n = code(node);
        self.events.iter().filter(|(who, e)| *who == n && f(e)).map(|(_, e)| e).collect()
    }

    /// The answer (or refusal) a setting received for a lookup.
    pub fn reply_to(&self, lookup_id: LookupId) -> Option<&Message> {
        self.received.iter().map(|r| &r.message).find(|m| match m {
            Message::Answer(a) => a.lookup_id == lookup_id,
            Message::Refused(r) => r.lookup_id == Some(lookup_id),
            _ => false,
        })
    }
}
