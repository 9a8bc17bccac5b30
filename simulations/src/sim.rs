//! The simulated world in virtual time: an event queue, every node's machine and disk, the links
//! between them, and the pump that carries a machine's outputs to disk, network and checkers.
//!
//! Each node has its own clock (`true time + skew`), passed as `now` to its `handle_*` calls. A
//! write a machine hands out becomes durable after the node's disk latency (group commit, in
//! order); a crash before then loses it. A message is encoded to a frame, may be lost,
//! duplicated or delayed, and is delivered only if the connection it was sent on still stands.

use crate::checker::History;
use crate::fnv::{Fnv, FnvMap};
use crate::report::Counters;
use crate::workload::Workload;
use crate::world::{NodeId, World};
use cpis_protocol::authority::Authority;
use cpis_protocol::directory::{Role, TrustedDirectory};
use cpis_protocol::harness::{Machine, SplitMix64};
use cpis_protocol::hub::{Hub, HubConfig};
use cpis_protocol::machine::{Event, Transmit};
use cpis_protocol::store::{StoreOp, StoredRow, Table, WriteBatch};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher;
use std::rc::Rc;

/// How often a hub is ticked (its own timers decide what is due).
pub const HUB_TICK_MS: u64 = 1_000;
/// How often an authority is ticked (each tick re-announces its feed head to its hubs).
pub const AUTHORITY_TICK_MS: u64 = 30_000;

/// A node's durable rows.
pub type Disk = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// One member: its machine (none while down, none ever for a setting), disk and clock.
pub struct Node {
    pub machine: Option<Machine>,
    pub disk: Disk,
    pending: Vec<WriteBatch>,
    flush_due: bool,
    pub incarnation: u32,
    pub down: bool,
    /// This node's clock minus true time.
    pub skew_ms: i64,
    /// Time from a write being handed out to it being durable.
    pub disk_ms: u64,
    pub sent_msgs: u64,
    pub sent_bytes: u64,
}

/// A connection that stands while both ends are up and no cut separates them.
pub struct Link {
    pub a: NodeId,
    pub b: NodeId,
    pub connected: bool,
    /// Bumped on every connect and disconnect: frames of an old connection are lost.
    pub epoch: u32,
    pub latency_ms: u64,
}

/// Something that separates nodes while it lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every link of one node.
    Isolate(NodeId),
    /// Every link between a region's members and the rest.
    Region(usize),
    /// One link.
    Pair(NodeId, NodeId),
}

/// Message-level faults in force.
#[derive(Clone, Debug, Default)]
pub struct WireFaults {
    pub loss_per_million: u32,
    pub dup_per_million: u32,
    /// Extra random delay, up to this much (reorders messages).
    pub jitter_ms: u64,
}

/// What the event queue holds.
pub enum Ev {
    Deliver { from: NodeId, to: NodeId, link: usize, epoch: u32, frame: Rc<Vec<u8>> },
    Flush { node: NodeId, incarnation: u32 },
    Tick { node: NodeId, incarnation: u32 },
    Work(crate::workload::WorkEv),
    Fault(crate::faults::FaultAction),
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    // Reversed: the heap pops the earliest, ties in the order they were queued.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The whole simulation.
pub struct Sim {
    pub world: World,
    pub trusted: TrustedDirectory,
    pub hub_config: HubConfig,
    /// True time, in ms since the epoch.
    pub now: u64,
    queue: BinaryHeap<Queued>,
    next_seq: u64,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    link_of: FnvMap<(NodeId, NodeId), usize>,
    pub cuts: Vec<(u64, Cut)>,
    /// Directed drops `(from, to, id)`: the connection stands, frames one way are lost.
    pub oneway: Vec<(NodeId, NodeId, u64)>,
    pub wire: WireFaults,
    pub rng: SplitMix64,
    pub trace: Fnv,
    pub history: History,
    pub work: Workload,
    pub counters: Counters,
    pub episodes: Vec<crate::faults::Episode>,
    pub active_episodes: std::collections::BTreeSet<usize>,
    pub healed: bool,
    pub healed_at: Option<u64>,
    /// Most notifications waiting for one authority at the heal.
    pub backlog_at_heal: usize,
    pub scenario: Option<crate::scenarios::Scenario>,
    pub scenario_backlog: usize,
    pub equivocated: Option<cpis_protocol::ids::PlanRef>,
}

/// A machine's outputs after one call.
pub struct Outputs {
    pub writes: Vec<WriteBatch>,
    pub transmits: Vec<Transmit>,
    pub events: Vec<Event>,
}

impl Sim {
    /// A world with every node up and empty, no link connected yet.
    pub fn new(world: World, seed: u64, work: Workload) -> Sim {
        let trusted = world.fed.trusted();
        let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_C915);
        let nodes = (0..world.codes.len()).map(|_| Node::fresh(1 + rng.below(5))).collect();
        let mut links = vec![];
        let mut link_of = FnvMap::default();
        for (i, (a, b)) in world.links.iter().enumerate() {
            let latency_ms = if world.is_hub(*a) && world.is_hub(*b) { 5 + rng.below(11) } else { 10 + rng.below(31) };
            links.push(Link { a: *a, b: *b, connected: false, epoch: 0, latency_ms });
            link_of.insert((*a, *b), i);
        }
        let now = world.fed.start.as_millis();
        let history = History::new(&world);
        Sim {
            trusted,
            hub_config: HubConfig::default(),
            now,
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes,
            links,
            link_of,
            cuts: vec![],
            oneway: vec![],
            wire: WireFaults::default(),
            rng,
            trace: Fnv::default(),
            history,
            work,
            counters: Counters::default(),
            episodes: vec![],
            active_episodes: Default::default(),
            healed: false,
            healed_at: None,
            backlog_at_heal: 0,
            scenario: None,
            scenario_backlog: 0,
            equivocated: None,
            world,
        }
    }

    pub fn schedule(&mut self, at: u64, ev: Ev) {
        self.next_seq += 1;
        self.queue.push(Queued { at: at.max(self.now), seq: self.next_seq, ev });
    }

    /// The clock of node `n` now.
    pub fn node_now(&self, n: NodeId) -> Timestamp {
        Timestamp((self.now as i64).saturating_add(self.nodes[n].skew_ms).max(0) as u64)
    }

    /// Runs every event due up to `until` (true time), then sets the clock to it.
    pub fn run_until(&mut self, until: u64) {
        while self.queue.peek().is_some_and(|q| q.at <= until) {
            let Some(q) = self.queue.pop() else { break };
            self.now = q.at.max(self.now);
            self.dispatch(q.ev);
        }
        self.now = self.now.max(until);
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, link, epoch, frame } => self.deliver(from, to, link, epoch, &frame),
            Ev::Flush { node, incarnation } => self.flush(node, incarnation),
            Ev::Tick { node, incarnation } => self.tick(node, incarnation),
            Ev::Work(w) => self.on_work(w),
            Ev::Fault(f) => self.on_fault(f),
        }
    }

    /// Restores node `n`'s machine from its durable rows.
    pub fn start_machine(&mut self, n: NodeId) {
        let rows: Vec<StoredRow> = self.nodes[n]
            .disk
            .iter()
            .map(|((table, key), value)| StoredRow { table: *table, key: key.clone(), value: value.clone() })
            .collect();
        let code = self.world.code(n).clone();
        let identity = self.world.fed.identity(code.as_str());
        let now = self.node_now(n);
        let machine = match self.world.roles[n] {
            Role::Hub => Hub::restore(code, identity, self.trusted.clone(), self.hub_config.clone(), &rows, now)
                .map(|h| Machine::Hub(Box::new(h))),
            _ => Authority::restore(code, identity, self.trusted.clone(), &rows, now)
                .map(|a| Machine::Authority(Box::new(a))),
        };
        match machine {
            Ok(m) => self.nodes[n].machine = Some(m),
            Err(e) => {
                let what = format!("{} could not restore from its own store: {e}", self.world.code(n));
                self.history.unexpected("restore", what);
                return;
            }
        }
        self.nodes[n].down = false;
        self.nodes[n].incarnation += 1;
        let tick = if self.world.is_hub(n) { HUB_TICK_MS } else { AUTHORITY_TICK_MS };
        let first = self.now + 1 + self.rng.below(tick);
        let incarnation = self.nodes[n].incarnation;
        self.schedule(first, Ev::Tick { node: n, incarnation });
        self.pump(n);
    }

    /// Crashes node `n`: memory and writes not yet durable are lost; connections drop.
    pub fn crash(&mut self, n: NodeId) {
        let node = &mut self.nodes[n];
        if node.down {
            return;
        }
        node.machine = None;
        node.pending.clear();
        node.flush_due = false;
        node.incarnation += 1;
        node.down = true;
        self.refresh_links();
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, n: NodeId) {
        if !self.nodes[n].down {
            return;
        }
        self.start_machine(n);
        self.refresh_links();
    }

    /// Crashes node `n` and loses its disk too.
    pub fn wipe(&mut self, n: NodeId) {
        self.crash(n);
        self.nodes[n].disk.clear();
        self.history.on_wipe(n);
    }
}

impl Node {
    fn fresh(disk_ms: u64) -> Node {
        Node {
            machine: None,
            disk: Disk::new(),
            pending: vec![],
            flush_due: false,
            incarnation: 0,
            down: false,
            skew_ms: 0,
            disk_ms,
            sent_msgs: 0,
            sent_bytes: 0,
        }
    }

    pub fn hub(&self) -> Option<&Hub> {
        match &self.machine {
            Some(Machine::Hub(h)) => Some(h),
            _ => None,
        }
    }

    pub fn authority(&self) -> Option<&Authority> {
        match &self.machine {
            Some(Machine::Authority(a)) => Some(a),
            _ => None,
        }
    }

    pub fn authority_mut(&mut self) -> Option<&mut Authority> {
        match &mut self.machine {
            Some(Machine::Authority(a)) => Some(a),
            _ => None,
        }
    }
}

impl Sim {
    /// Carries a machine's outputs out: writes to its pending queue, frames to the network,
    /// events to the checkers.
    pub fn pump(&mut self, n: NodeId) {
        let out = self.drain(n);
        self.route(n, out);
    }

    /// Takes every output a machine has queued.
    pub fn drain(&mut self, n: NodeId) -> Outputs {
        let Some(m) = self.nodes[n].machine.as_mut() else {
            return Outputs { writes: vec![], transmits: vec![], events: vec![] };
        };
        let m = m.as_dyn();
        let writes: Vec<WriteBatch> = std::iter::from_fn(|| m.poll_write()).collect();
        let transmits: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
        let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
        Outputs { writes, transmits, events }
    }

    /// Carries outputs out: writes to the pending queue, frames to the network, events on.
    pub fn route(&mut self, n: NodeId, out: Outputs) {
        let Outputs { writes, transmits, events } = out;
        for w in writes {
            self.history.on_write(n, &w, self.now);
            self.nodes[n].pending.push(w);
        }
        for t in transmits {
            self.send(n, t);
        }
        for e in events {
            self.on_event(n, e);
        }
        let node = &mut self.nodes[n];
        if !node.pending.is_empty() && !node.flush_due {
            node.flush_due = true;
            let (at, incarnation) = (self.now + node.disk_ms, node.incarnation);
            self.schedule(at, Ev::Flush { node: n, incarnation });
        }
    }

    /// Makes every pending write of `n` durable, in order, and tells its machine.
    fn flush(&mut self, n: NodeId, incarnation: u32) {
        let node = &mut self.nodes[n];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        node.flush_due = false;
        let batches = std::mem::take(&mut node.pending);
        let Some(last) = batches.last().map(|b| b.id) else { return };
        for b in &batches {
            for op in &b.ops {
                match op {
                    StoreOp::Put { table, key, value } => {
                        node.disk.insert((*table, key.clone()), value.clone());
                    }
                    StoreOp::Delete { table, key } => {
                        node.disk.remove(&(*table, key.clone()));
                    }
                }
            }
        }
        self.history.on_durable(n, &batches, self.now);
        let now = self.node_now(n);
        if let Some(m) = self.nodes[n].machine.as_mut() {
            m.as_dyn().handle_durable(last, now);
        }
        self.pump(n);
    }

    fn tick(&mut self, n: NodeId, incarnation: u32) {
        if self.nodes[n].incarnation != incarnation {
            return;
        }
        let now = self.node_now(n);
        let Some(m) = self.nodes[n].machine.as_mut() else { return };
        m.as_dyn().handle_tick(now);
        self.pump(n);
        let tick = if self.world.is_hub(n) { HUB_TICK_MS } else { AUTHORITY_TICK_MS };
        self.schedule(self.now + tick, Ev::Tick { node: n, incarnation });
    }

    fn on_event(&mut self, n: NodeId, e: Event) {
        self.trace.write_u64(n as u64);
        self.trace.write_words(format!("{e:?}").as_bytes());
        self.history.on_event(n, &e, self.now);
    }

    /// Whether no cut or crash separates `a` and `b`.
    pub fn link_up(&self, a: NodeId, b: NodeId) -> bool {
        if self.nodes[a].down || self.nodes[b].down {
            return false;
        }
        let region = &self.world.region;
        !self.cuts.iter().any(|(_, c)| match c {
            Cut::Isolate(n) => a == *n || b == *n,
            Cut::Region(r) => (region[a] == *r) != (region[b] == *r),
            Cut::Pair(x, y) => (a, b) == (*x, *y) || (a, b) == (*y, *x),
        })
    }

    /// Connects and disconnects links to match who is up and what is cut.
    pub fn refresh_links(&mut self) {
        for i in 0..self.links.len() {
            let (a, b) = (self.links[i].a, self.links[i].b);
            let up = self.link_up(a, b);
            if up == self.links[i].connected {
                continue;
            }
            self.links[i].connected = up;
            self.links[i].epoch += 1;
            self.notify_link(a, b, up);
            self.notify_link(b, a, up);
        }
    }

    fn notify_link(&mut self, node: NodeId, peer: NodeId, up: bool) {
        let now = self.node_now(node);
        let (code, role) = (self.world.codes[peer].clone(), self.world.roles[peer]);
        let Some(m) = self.nodes[node].machine.as_mut() else { return };
        if up {
            m.as_dyn().handle_connected(&code, role, now);
        } else {
            m.as_dyn().handle_disconnected(&code);
        }
        self.pump(node);
    }

    /// Whether `a` and `b` are connected now.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.link_of.get(&(a.min(b), a.max(b))).is_some_and(|i| self.links[*i].connected)
    }

    fn send(&mut self, from: NodeId, t: Transmit) {
        let Some(to) = self.world.id(&t.to) else {
            self.counters.frames_to_unknown += 1;
            return;
        };
        let frame = wire::encode_frame(&t.message);
        let kind = self.counters.by_kind.entry(t.message.kind()).or_default();
        kind.messages += 1;
        kind.bytes += frame.len() as u64;
        self.send_frame(from, to, frame);
    }

    /// Puts a frame on the wire from `from` to `to`, with the wire faults in force.
    pub fn send_frame(&mut self, from: NodeId, to: NodeId, frame: Vec<u8>) {
        self.nodes[from].sent_msgs += 1;
        self.nodes[from].sent_bytes += frame.len() as u64;
        let Some(link) = self.link_of.get(&(from.min(to), from.max(to))).copied() else {
            self.counters.frames_without_link += 1;
            return;
        };
        if !self.links[link].connected {
            self.counters.frames_not_connected += 1;
            return;
        }
        if self.oneway.iter().any(|(f, t, _)| (*f, *t) == (from, to)) || self.rng.chance(self.wire.loss_per_million) {
            self.counters.frames_lost += 1;
            return;
        }
        let epoch = self.links[link].epoch;
        let frame = Rc::new(frame);
        let copies = if self.rng.chance(self.wire.dup_per_million) { 2 } else { 1 };
        self.counters.frames_duplicated += copies - 1;
        for _ in 0..copies {
            let delay = self.links[link].latency_ms + self.rng.below(self.wire.jitter_ms + 3);
            let ev = Ev::Deliver { from, to, link, epoch, frame: Rc::clone(&frame) };
            self.schedule(self.now + delay, ev);
        }
    }

    /// Hands a message to a machine at once, outside the network (a scenario's own step).
    pub fn deliver_now(&mut self, to: NodeId, from: NodeId, message: cpis_protocol::wire::Message) {
        let now = self.node_now(to);
        let code = self.world.codes[from].clone();
        let Some(m) = self.nodes[to].machine.as_mut() else { return };
        m.as_dyn().handle_message(&code, message, now);
        self.pump(to);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, link: usize, epoch: u32, frame: &[u8]) {
        let l = &self.links[link];
        if !l.connected || l.epoch != epoch {
            self.counters.frames_lost_with_connection += 1;
            return;
        }
        self.counters.frames_delivered += 1;
        self.trace.write_u64(self.now);
        self.trace.write_u64(((from as u64) << 32) | to as u64);
        self.trace.write_words(frame);
        if self.world.roles[to] == Role::Setting {
            return self.setting_receive(to, from, frame);
        }
        let message = match wire::decode_frame(frame) {
            Ok(m) => m,
            Err(_) => {
                self.counters.frames_refused_undecodable += 1;
                return;
            }
        };
        let now = self.node_now(to);
        let code = self.world.codes[from].clone();
        let Some(m) = self.nodes[to].machine.as_mut() else { return };
        m.as_dyn().handle_message(&code, message, now);
        self.pump(to);
    }
}
