//! A deterministic test network: the role state machines over a simulated network in virtual
//! time, with message delay, loss, cut links, crashes and restarts.
//!
//! ```
//! use cpis_protocol::harness::{FederationSpec, Net, NetConfig};
//! let spec = FederationSpec::new("doc").hub("HUB01").authority("204", "Hackney", &["HUB01"]);
//! let mut net = Net::new(spec.build(), NetConfig::default());
//! net.run_for(5_000);
//! assert!(net.hub("HUB01").peers().len() == 1);
//! ```
//!
//! Identities here are derived from the member's code: fine for tests and simulation, never for a
//! real federation.

use crate::authority::Authority;
use crate::directory::{Directory, KeyStatus, Member, MemberKey, Role, SignedDirectory, TrustedDirectory};
use crate::hub::{Hub, HubConfig};
use crate::ids::{LookupId, NhsNumber, OdsCode};
use crate::machine::{Event, StateMachine, Transmit};
use crate::records::{Contacts, LookupKind, Person, SettingType};
use crate::setting::Setting;
use crate::sign::Identity;
use crate::store::{StoreOp, StoredRow, Table, WriteBatch};
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

fn code(text: &str) -> OdsCode {
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
            valid_from: self.start.minus_ms(DAY_MS),
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
    /// How often every machine is ticked.
    pub tick_ms: u64,
    /// How long after a write is handed out it becomes durable (0: at once).
    pub durable_delay_ms: u64,
    pub hub: HubConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            seed: 1,
            latency_ms: 20,
            jitter_ms: 10,
            loss_per_million: 0,
            tick_ms: 1_000,
            durable_delay_ms: 0,
            hub: HubConfig::default(),
        }
    }
}

/// The durable rows of one node, by table and key.
pub type Disk = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// A machine under test.
pub enum Machine {
    Hub(Box<Hub>),
    Authority(Box<Authority>),
}

impl Machine {
    pub fn as_dyn(&mut self) -> &mut dyn StateMachine {
        match self {
            Machine::Hub(h) => h.as_mut(),
            Machine::Authority(a) => a.as_mut(),
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
    /// Durable rows per node.
    disks: BTreeMap<OdsCode, Disk>,
    pending_writes: Vec<(Timestamp, OdsCode, WriteBatch)>,
    inflight: BTreeMap<(Timestamp, u64), InFlight>,
    next_msg: u64,
    down: BTreeSet<OdsCode>,
    cut: BTreeSet<(OdsCode, OdsCode)>,
    connections: BTreeSet<(OdsCode, OdsCode)>,
    next_tick_at: Timestamp,
    /// Every event reported, with the node that reported it.
    pub events: Vec<(OdsCode, Event)>,
    /// Every message a setting received.
    pub received: Vec<Received>,
    /// Messages sent, per node.
    pub sent: BTreeMap<OdsCode, (u64, u64)>,
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
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            connections: BTreeSet::new(),
            next_tick_at: fed.start,
            events: Vec::new(),
            received: Vec::new(),
            sent: BTreeMap::new(),
            config,
            fed,
        };
        for m in net.fed.trusted().members().to_vec() {
            net.roles.insert(m.code.clone(), m.role);
            if m.role != Role::Setting {
                net.disks.insert(m.code.clone(), BTreeMap::new());
                net.start_machine(&m.code);
            }
        }
        net.refresh_connections();
        net
    }

    fn start_machine(&mut self, code: &OdsCode) {
        let rows: Vec<StoredRow> = self.disks[code]
            .iter()
            .map(|((table, key), value)| StoredRow { table: *table, key: key.clone(), value: value.clone() })
            .collect();
        let identity = self.fed.identity(code.as_str());
        let trusted = self.fed.trusted();
        let machine = match self.roles[code] {
            Role::Hub => Hub::restore(code.clone(), identity, trusted, self.config.hub.clone(), &rows, self.now)
                .map(|h| Machine::Hub(Box::new(h))),
            _ => Authority::restore(code.clone(), identity, trusted, &rows, self.now)
                .map(|a| Machine::Authority(Box::new(a))),
        };
        match machine {
            Ok(m) => {
                self.machines.insert(code.clone(), m);
            }
            Err(e) => panic!("restoring {code} from its own store failed: {e}"),
        }
        self.pump(code);
    }

    pub fn hub(&self, code: &str) -> &Hub {
        match self.machines.get(&self::code(code)) {
            Some(Machine::Hub(h)) => h,
            _ => panic!("{code} is not a running hub"),
        }
    }
    pub fn hub_mut(&mut self, code: &str) -> &mut Hub {
        match self.machines.get_mut(&self::code(code)) {
            Some(Machine::Hub(h)) => h,
            _ => panic!("{code} is not a running hub"),
        }
    }
    pub fn authority(&self, code: &str) -> &Authority {
        match self.machines.get(&self::code(code)) {
            Some(Machine::Authority(a)) => a,
            _ => panic!("{code} is not a running authority"),
        }
    }

    /// Runs `f` on an authority (an operator command), then lets its outputs out.
    pub fn with_authority<R>(&mut self, code: &str, f: impl FnOnce(&mut Authority, Timestamp) -> R) -> R {
        let now = self.now;
        let c = self::code(code);
        let r = match self.machines.get_mut(&c) {
            Some(Machine::Authority(a)) => f(a, now),
            _ => panic!("{code} is not a running authority"),
        };
        self.pump(&c);
        r
    }

    /// Runs `f` on a hub, then lets its outputs out.
    pub fn with_hub<R>(&mut self, code: &str, f: impl FnOnce(&mut Hub, Timestamp) -> R) -> R {
        let now = self.now;
        let c = self::code(code);
        let r = f(self.hub_mut(code), now);
        self.pump(&c);
        r
    }

    /// The durable rows of a node.
    pub fn disk(&self, code: &str) -> &Disk {
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
        for m in dir.with_role(Role::Authority).chain(dir.with_role(Role::Setting)) {
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
        let want: BTreeSet<_> = self.wanted_links().into_iter().filter(|(a, b)| self.link_up(a, b)).collect();
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
        let (now, role) = (self.now, self.roles[peer]);
        let Some(m) = self.machines.get_mut(node) else {
            return;
        };
        if up {
            m.as_dyn().handle_connected(peer, role, now);
        } else {
            m.as_dyn().handle_disconnected(peer);
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
    pub fn replace_disk(&mut self, node: &str, rows: Disk) {
        self.disks.insert(code(node), rows);
    }

    /// Crashes a node and throws away its store too.
    pub fn wipe(&mut self, node: &str) {
        self.crash(node);
        if let Some(d) = self.disks.get_mut(&code(node)) {
            d.clear();
        }
    }

    /// A setting looks up `nhs` at hub `hub`. Returns the lookup id.
    pub fn lookup(&mut self, setting: &str, hub: &str, nhs: NhsNumber, kind: LookupKind) -> LookupId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let lookup_id = LookupId(id);
        let person = Person { id: "U1".into(), name: "Dr A Clinician".into(), role: "Nurse".into() };
        let s = self.setting(setting);
        let signed = match s.lookup(nhs, person, kind, lookup_id, self.now) {
            Ok(s) => s,
            Err(e) => panic!("test lookup is invalid: {e}"),
        };
        self.send_from_setting(setting, hub, Message::Lookup(signed));
        lookup_id
    }

    /// The setting's machine, for verifying answers.
    pub fn setting(&self, setting: &str) -> Setting {
        match Setting::new(code(setting), self.fed.identity(setting), self.fed.trusted()) {
            Some(s) => s,
            None => panic!("{setting} is not a setting"),
        }
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

    /// Sends raw bytes as `from` to `to`, as a hostile or broken peer would.
    pub fn send_raw(&mut self, from: &str, to: &str, frame: Vec<u8>) {
        self.enqueue(code(from), code(to), frame);
    }

    fn transmit(&mut self, from: &OdsCode, t: Transmit) {
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
            let m = m.as_dyn();
            let writes: Vec<WriteBatch> = std::iter::from_fn(|| m.poll_write()).collect();
            let transmits: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
            let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
            for e in events {
                self.events.push((node.clone(), e));
            }
            for t in transmits {
                self.transmit(node, t);
            }
            if writes.is_empty() {
                return;
            }
            let due = self.now.plus_ms(self.config.durable_delay_ms);
            for w in writes {
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
            let disk = self.disks.entry(node.clone()).or_default();
            for op in batch.ops {
                match op {
                    StoreOp::Put { table, key, value } => {
                        disk.insert((table, key), value);
                    }
                    StoreOp::Delete { table, key } => {
                        disk.remove(&(table, key));
                    }
                }
            }
            if let Some(m) = self.machines.get_mut(&node) {
                m.as_dyn().handle_durable(batch.id, now);
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
        if self.roles.get(&m.to) == Some(&Role::Setting) {
            if let Ok(message) = wire::decode_frame(&m.frame) {
                self.received.push(Received { setting: m.to, from: m.from, message });
            }
            return;
        }
        let message = match wire::decode_frame(&m.frame) {
            Ok(message) => message,
            Err(e) => {
                let event = Event::MessageRefused { from: m.from.clone(), kind: "frame", reason: e.to_string() };
                self.events.push((m.to.clone(), event));
                return;
            }
        };
        let Some(machine) = self.machines.get_mut(&m.to) else {
            return;
        };
        machine.as_dyn().handle_message(&m.from, message, now);
        self.pump(&m.to);
    }

    fn tick_all(&mut self) {
        let now = self.now;
        let nodes: Vec<OdsCode> = self.machines.keys().cloned().collect();
        for node in nodes {
            let Some(m) = self.machines.get_mut(&node) else {
                continue;
            };
            m.as_dyn().handle_tick(now);
            self.pump(&node);
        }
    }

    /// Runs the network for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        // Bounded: each step either delivers a message, makes writes durable or ticks.
        for _step in 0..10_000_000u64 {
            let next_msg = self.inflight.keys().next().map(|k| k.0);
            let next_write = self.pending_writes.iter().map(|w| w.0).min();
            let next = [next_msg, next_write, Some(self.next_tick_at)].into_iter().flatten().min().unwrap_or(end);
            if next > end {
                break;
            }
            self.now = next.max(self.now);
            if next_write == Some(next) {
                self.flush_writes();
            } else if next_msg == Some(next) {
                if let Some((_, m)) = self.inflight.pop_first() {
                    self.deliver(m);
                }
            } else {
                self.next_tick_at = self.now.plus_ms(self.config.tick_ms);
                self.tick_all();
            }
        }
        self.now = end;
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
