//! The cluster core: every hub and authority as a protocol [`Machine`] with its [`MemDisk`], its
//! clock skew and its writes not yet durable; the links between members; an event queue in
//! virtual (true) time; and the faults of the wire. Nothing else lives here: workload, faults,
//! scenarios and the adversary are actors that drive the cluster through a narrow API
//! ([`Cluster::cut`], [`Cluster::isolate`], [`Cluster::heal`], [`Cluster::crash`],
//! [`Cluster::restart`], [`Cluster::wipe`], [`Cluster::send`], [`Cluster::command`], ...) and
//! keep their own state.
//!
//! What the machines do comes out as [`Report`]s, in order: writes made durable, events, frames
//! delivered to care settings (which have no machine: an actor plays them) and, for a member an
//! adversary has taken over ([`Cluster::intercept`]), every message it would send.
//!
//! Each node has its own clock (`true time + skew`), passed as `now` to every `handle_*` call. A
//! write a machine hands out becomes durable after the node's disk latency, in order, as one
//! group commit; a crash before then loses it. A message is encoded to a frame by
//! [`wire::encode_frame`], may be lost, duplicated or delayed, and is delivered (decoded by
//! [`wire::decode_frame`]) only if the connection it was sent on still stands. A machine is
//! woken when its own [`Machine::poll_timeout`] says.

use crate::agenda::Agenda;
use crate::fnv::{Fnv, FnvMap};
use crate::report::{Counters, KindCount};
use crate::world::{NodeId, World};
use cpis_protocol::authority::{Authority, AuthorityConfig};
use cpis_protocol::directory::{Directory, Role, SignedDirectory, TrustedDirectory};
use cpis_protocol::driver::{MemDisk, SharedEntries};
use cpis_protocol::feed::{FeedHead, SignedHead};
use cpis_protocol::harness::SplitMix64;
use cpis_protocol::hub::{Hub, HubConfig};
use cpis_protocol::ids::OdsCode;
use cpis_protocol::machine::{Command, CommandId, Event, Machine, Outputs, RoleConfig, Transmit};
use cpis_protocol::schema::WriteBatch;
use cpis_protocol::sign::{Identity, KeyId, SignatureBytes, Verified};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, FeedBatch, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hasher;
use std::rc::Rc;

/// How long a node waits to dial again a peer that refused it (the nodes' reconnection cap).
pub const REFUSED_RETRY_MS: u64 = 30_000;

/// Most reports waiting to be taken (a driver takes them after every step; past this the oldest
/// are dropped and counted, which a run reports as a failure).
pub const REPORTS_MAX: usize = 1 << 20;

/// Tampered runs watched at once (more are sent than this only in very long runs).
const TAMPERED_RUNS_MAX: usize = 4096;

/// One member: its machine (none while down, none ever for a setting), disk and clock.
pub struct Node {
    pub machine: Option<Machine>,
    pub disk: MemDisk,
    pending: Vec<WriteBatch>,
    flush_due: bool,
    incarnation: u32,
    pub down: bool,
    /// This node's clock minus true time.
    pub skew_ms: i64,
    /// Time from a write being handed out to it being durable.
    pub disk_ms: u64,
    /// When the node's timer event is set for (true time).
    timer_at: Option<u64>,
    /// When the timer last fired (true time): a deadline that does not move goes 1 ms later.
    fired_at: u64,
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    /// Bytes of the frames delivered to it.
    pub received_bytes: u64,
}

impl Node {
    fn fresh(disk_ms: u64, shared: &SharedEntries) -> Node {
        Node {
            machine: None,
            disk: MemDisk::sharing(shared.clone()),
            pending: vec![],
            flush_due: false,
            incarnation: 0,
            down: false,
            skew_ms: 0,
            disk_ms,
            timer_at: None,
            fired_at: 0,
            sent_msgs: 0,
            sent_bytes: 0,
            received_bytes: 0,
        }
    }

    pub fn hub(&self) -> Option<&Hub> {
        self.machine.as_ref().and_then(Machine::as_hub)
    }

    pub fn authority(&self) -> Option<&Authority> {
        self.machine.as_ref().and_then(Machine::as_authority)
    }
}

/// A connection that stands while both ends are up and no cut separates them.
pub struct Link {
    pub a: NodeId,
    pub b: NodeId,
    pub connected: bool,
    /// Bumped on every connect and disconnect: frames of an old connection are lost.
    pub epoch: u32,
    pub latency_ms: u64,
    /// A peer's key was not admitted: the link stays down until then (true time), when the
    /// dialling side tries again, or until a heal or a restart of either end.
    refused_until: u64,
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

/// What the cluster tells its observers, in the order it happened.
pub enum Report {
    /// Writes of `node` became durable (in this order, as one commit).
    Durable { node: NodeId, batches: Vec<WriteBatch> },
    /// A machine reported an event.
    Event { node: NodeId, event: Event },
    /// A frame arrived at a care setting (settings have no machine: an actor plays them).
    ToSetting { setting: NodeId, from: NodeId, frame: Rc<Vec<u8>> },
    /// A message the intercepted member would send: the adversary decides what goes out.
    Intercepted { from: NodeId, transmit: Box<Transmit> },
    /// A machine could not be restored from its own disk.
    RestoreFailed { node: NodeId, error: String },
}

enum CoreEv {
    Deliver {
        from: NodeId,
        to: NodeId,
        link: usize,
        epoch: u32,
        frame: Rc<Vec<u8>>,
    },
    Flush {
        node: NodeId,
        incarnation: u32,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
    },
    /// Links refused a while ago are dialled again.
    Redial,
}

/// The cluster.
pub struct Cluster {
    pub world: World,
    trusted: TrustedDirectory,
    hub_config: HubConfig,
    authority_config: AuthorityConfig,
    /// True time, in ms since the epoch.
    now: u64,
    queue: Agenda<CoreEv>,
    nodes: Vec<Node>,
    links: Vec<Link>,
    link_of: FnvMap<(NodeId, NodeId), usize>,
    /// The key each member runs on (a machine takes it at its next start).
    identities: Vec<Identity>,
    key_ids: Vec<KeyId>,
    /// Every directory version published after the first, in order; `latest` is the newest.
    published: Vec<SignedDirectory>,
    latest: TrustedDirectory,
    cuts: Vec<(u64, Cut)>,
    /// Directed drops `(id, from, to)`: the connection stands, frames one way are lost.
    oneway: Vec<(u64, NodeId, NodeId)>,
    wire: WireFaults,
    rng: SplitMix64,
    trace: Fnv,
    intercepted: Option<NodeId>,
    /// Runs the adversary cut an entry from, `(to, origin, upto)`, until they arrive.
    tampered_runs: BTreeSet<(NodeId, OdsCode, u64)>,
    reports: VecDeque<Report>,
    next_command: u64,
    checked_heads: CheckedHeads,
    pub counters: Counters,
}

/// Heads whose signatures were checked, by signature. A node's driver checks a head's signature
/// beside its event loop and the hub makes every other check; here every hub is driven by one
/// process, which checks each head's signature once however many hubs it reaches.
#[derive(Default)]
struct CheckedHeads(FnvMap<SignatureBytes, Verified<FeedHead>>);

/// Most heads [`CheckedHeads`] keeps; a head reaches every hub within seconds.
const CHECKED_HEADS_KEPT: usize = 4096;

impl CheckedHeads {
    /// The head, its signature checked with the key `dir` lists for its origin; as it came if
    /// there is none or the signature does not hold (the hub then refuses it with its reason).
    #[allow(clippy::result_large_err)] // The `Err` is the head given back, as large as the `Ok`.
    fn check(&mut self, dir: &TrustedDirectory, head: SignedHead) -> Result<Verified<FeedHead>, SignedHead> {
        if let Some(v) = self.0.get(&head.signature)
            && *v.signed() == head
        {
            return Ok(v.clone());
        }
        let origin = head.body.origin.clone();
        let verified = dir.verify_signature_only(&origin, head)?;
        if self.0.len() >= CHECKED_HEADS_KEPT {
            self.0.clear();
        }
        self.0.insert(verified.signed().signature, verified.clone());
        Ok(verified)
    }
}

impl Cluster {
    /// Every member, down and empty; no link connected yet.
    pub fn new(world: World, seed: u64, hub_config: HubConfig, authority_config: AuthorityConfig) -> Cluster {
        let trusted = world.fed.trusted();
        let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_C915);
        let shared = SharedEntries::default();
        let nodes = (0..world.codes.len())
            .map(|_| {
                let mut n = Node::fresh(1 + rng.below(5), &shared);
                n.down = true;
                n
            })
            .collect();
        let mut links = vec![];
        let mut link_of = FnvMap::default();
        for (i, (a, b)) in world.links.iter().enumerate() {
            let latency_ms = if world.is_hub(*a) && world.is_hub(*b) { 5 + rng.below(11) } else { 10 + rng.below(31) };
            links.push(Link { a: *a, b: *b, connected: false, epoch: 0, latency_ms, refused_until: 0 });
            link_of.insert((*a, *b), i);
        }
        let identities: Vec<Identity> = world.codes.iter().map(|c| world.fed.identity(c.as_str())).collect();
        let key_ids = identities.iter().map(Identity::key_id).collect();
        let now = world.fed.start.as_millis();
        Cluster {
            latest: trusted.clone(),
            published: vec![],
            identities,
            trusted,
            hub_config,
            authority_config,
            now,
            queue: Agenda::new(),
            nodes,
            links,
            link_of,
            key_ids,
            cuts: vec![],
            oneway: vec![],
            wire: WireFaults::default(),
            rng,
            trace: Fnv::default(),
            intercepted: None,
            tampered_runs: BTreeSet::new(),
            reports: VecDeque::new(),
            next_command: 0,
            checked_heads: CheckedHeads::default(),
            counters: Counters::default(),
            world,
        }
    }

    // ---- Time ----

    /// True time now.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves true time on to `t` (never back).
    pub fn advance_to(&mut self, t: u64) {
        self.now = self.now.max(t);
    }

    /// The clock of node `n` now.
    pub fn node_now(&self, n: NodeId) -> Timestamp {
        Timestamp((self.now as i64).saturating_add(self.nodes[n].skew_ms).max(0) as u64)
    }

    /// Events the core's queue dropped (it was full).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// When the core's next event is due.
    pub fn next_at(&self) -> Option<u64> {
        self.queue.next_at()
    }

    /// Handles the core's next event (moving time on to it).
    pub fn step(&mut self) {
        let Some((at, ev)) = self.queue.pop() else { return };
        self.advance_to(at);
        match ev {
            CoreEv::Deliver { from, to, link, epoch, frame } => self.deliver(from, to, link, epoch, frame),
            CoreEv::Flush { node, incarnation } => self.flush(node, incarnation),
            CoreEv::Timer { node, incarnation } => self.on_timer(node, incarnation, at),
            CoreEv::Redial => self.refresh_links(),
        }
    }

    /// The next report, in order.
    pub fn pop_report(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    fn report(&mut self, r: Report) {
        if self.reports.len() >= REPORTS_MAX {
            self.reports.pop_front();
            self.counters.reports_dropped += 1;
        }
        self.reports.push_back(r);
    }

    // ---- Reading ----

    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn machine(&self, n: NodeId) -> Option<&Machine> {
        self.nodes[n].machine.as_ref()
    }

    pub fn hub(&self, n: NodeId) -> Option<&Hub> {
        self.nodes[n].hub()
    }

    pub fn authority(&self, n: NodeId) -> Option<&Authority> {
        self.nodes[n].authority()
    }

    pub fn disk(&self, n: NodeId) -> &MemDisk {
        &self.nodes[n].disk
    }

    /// A node's disk to write rows into directly (loading a snapshot before it starts).
    pub fn disk_mut(&mut self, n: NodeId) -> &mut MemDisk {
        &mut self.nodes[n].disk
    }

    pub fn is_down(&self, n: NodeId) -> bool {
        self.nodes[n].down
    }

    /// The directory every member starts with.
    pub fn directory(&self) -> &TrustedDirectory {
        &self.trusted
    }

    /// The newest directory version published.
    pub fn latest_directory(&self) -> &TrustedDirectory {
        &self.latest
    }

    /// The versions after the first, up to `version`: what a member holding `version` passes on.
    pub fn chain_upto(&self, version: u64) -> Vec<SignedDirectory> {
        self.published.iter().filter(|d| d.directory.version <= version).cloned().collect()
    }

    /// The key member `n` runs on.
    pub fn identity(&self, n: NodeId) -> &Identity {
        &self.identities[n]
    }

    /// Whether `a` and `b` are connected now.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.link_of.get(&(a.min(b), a.max(b))).is_some_and(|i| self.links[*i].connected)
    }

    /// The hash of every frame delivered and every event, in order.
    pub fn trace(&self) -> Fnv {
        self.trace
    }

    /// Forgets message counts (the load is not measured).
    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
        for n in &mut self.nodes {
            n.sent_msgs = 0;
            n.sent_bytes = 0;
            n.received_bytes = 0;
        }
    }

    // ---- Clocks, disks, the wire ----

    pub fn set_skew(&mut self, n: NodeId, skew_ms: i64) {
        self.nodes[n].skew_ms = skew_ms;
    }

    pub fn set_disk_ms(&mut self, n: NodeId, ms: u64) {
        self.nodes[n].disk_ms = ms;
    }

    pub fn set_wire(&mut self, wire: WireFaults) {
        self.wire = wire;
    }

    /// Hands every message member `n` would send to the adversary instead ([`Report::Intercepted`]).
    pub fn intercept(&mut self, n: NodeId) {
        self.intercepted = Some(n);
    }

    /// Notes a run the adversary cut an entry from, to judge at its arrival whether the
    /// receiving hub could have been misled by it.
    pub fn watch_tampered_run(&mut self, to: NodeId, origin: &OdsCode, upto: u64) {
        if self.tampered_runs.len() < TAMPERED_RUNS_MAX {
            self.tampered_runs.insert((to, origin.clone(), upto));
        }
    }

    /// Whether hub `to` would apply this run rather than ignore it (it holds the run already) or
    /// ask for what comes before it.
    fn would_apply(&self, to: NodeId, b: &FeedBatch) -> bool {
        let held = self.hub(to).and_then(|h| h.replicas().get(&b.origin)).and_then(|r| r.head());
        match held {
            None => b.after == 0,
            Some(h) => h.body.seq < b.upto && b.after <= h.body.seq,
        }
    }

    // ---- Lifecycle ----

    /// Restores node `n`'s machine from its durable rows (settings have none).
    pub fn start(&mut self, n: NodeId) {
        if self.world.roles[n] == Role::Setting {
            self.nodes[n].down = false;
            return;
        }
        let code = self.world.code(n).clone();
        let identity = Identity::from_seed(self.identities[n].seed());
        let config = match self.world.roles[n] {
            Role::Hub => RoleConfig::Hub(self.hub_config.clone()),
            _ => RoleConfig::Authority(self.authority_config.clone()),
        };
        let now = self.node_now(n);
        let rows = self.nodes[n].disk.load(|table, key| config.restores(table, key, now));
        match Machine::restore(code, identity, self.trusted.clone(), config, rows, now) {
            Ok(m) => self.nodes[n].machine = Some(m),
            Err(e) => {
                self.report(Report::RestoreFailed { node: n, error: e.to_string() });
                return;
            }
        }
        let node = &mut self.nodes[n];
        node.down = false;
        node.incarnation += 1;
        node.timer_at = None;
        // A node that starts dials its peers afresh, whoever refused it before.
        for l in self.links.iter_mut().filter(|l| l.a == n || l.b == n) {
            l.refused_until = 0;
        }
        self.pump(n);
    }

    /// Member `n` runs on `identity` from its next start (an administrator installed a new key
    /// while it was down).
    pub fn set_identity(&mut self, n: NodeId, identity: Identity) {
        self.key_ids[n] = identity.key_id();
        self.identities[n] = identity;
    }

    /// An administrator publishes the next directory version at node `at`, which passes it on.
    /// Refused (and nothing changes) unless it follows the newest version under the root keys.
    pub fn publish(&mut self, at: NodeId, next: SignedDirectory) -> Result<(), String> {
        let now = self.node_now(at);
        self.latest = self.latest.accept_update(next.clone(), now).map_err(|e| e.to_string())?;
        self.published.push(next.clone());
        self.command(at, Command::PublishDirectories(vec![next])).ok_or("the node is down")?;
        Ok(())
    }

    /// The directory now in force, for an administrator to edit into the next version.
    pub fn editable_directory(&self) -> Directory {
        self.latest.directory().clone()
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
        node.timer_at = None;
        node.down = true;
        self.refresh_links();
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, n: NodeId) {
        if !self.nodes[n].down {
            return;
        }
        self.start(n);
        self.refresh_links();
    }

    /// Crashes node `n` and loses its disk too.
    pub fn wipe(&mut self, n: NodeId) {
        self.crash(n);
        self.nodes[n].disk.clear();
    }

    // ---- Links ----

    /// Separates nodes until [`Cluster::uncut`] with the same `id` (or a heal).
    pub fn cut(&mut self, id: u64, cut: Cut) {
        self.cuts.push((id, cut));
        self.refresh_links();
    }

    /// Every link of node `n` cut until [`Cluster::uncut`] with `id`.
    pub fn isolate(&mut self, id: u64, n: NodeId) {
        self.cut(id, Cut::Isolate(n));
    }

    /// Frames from `from` to `to` lost while the connection stands, until [`Cluster::uncut`].
    pub fn drop_one_way(&mut self, id: u64, from: NodeId, to: NodeId) {
        self.oneway.push((id, from, to));
    }

    /// Ends the cut or one-way loss `id`.
    pub fn uncut(&mut self, id: u64) {
        self.cuts.retain(|(c, _)| *c != id);
        self.oneway.retain(|(c, _, _)| *c != id);
        self.refresh_links();
    }

    /// Whether cut `id` is in force.
    pub fn is_cut(&self, id: u64) -> bool {
        self.cuts.iter().any(|(c, _)| *c == id)
    }

    /// How many cuts and one-way losses are in force.
    pub fn cuts_in_force(&self) -> usize {
        self.cuts.len() + self.oneway.len()
    }

    /// Every cut and one-way loss ends, and the wire stops losing, duplicating and delaying.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.oneway.clear();
        self.wire = WireFaults::default();
        for l in &mut self.links {
            l.refused_until = 0;
        }
        self.refresh_links();
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
            let up = self.link_up(a, b) && self.now >= self.links[i].refused_until;
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
        if up {
            self.learn_directory(node, peer);
        }
        let now = self.node_now(node);
        let (code, key) = (self.world.codes[peer].clone(), self.key_ids[peer]);
        let Some(m) = self.nodes[node].machine.as_mut() else { return };
        if up {
            m.handle_connected(&code, key, now);
        } else {
            m.handle_disconnected(&code);
        }
        self.pump(node);
    }

    /// What a node's driver does when a hub it dials shows a key its directory does not admit:
    /// it takes the newer versions the hub holds (each checked against the root keys by the
    /// machine) before the handshake goes on.
    fn learn_directory(&mut self, node: NodeId, peer: NodeId) {
        if self.world.roles[peer] != Role::Hub {
            return;
        }
        let now = self.node_now(node);
        let (Some(mine), Some(theirs)) = (self.machine(node), self.machine(peer)) else { return };
        let (held, offered) = (mine.directory().version(), theirs.directory().version());
        if offered <= held || mine.directory().admit(&self.identities[peer].public(), now, &[Role::Hub]).is_ok() {
            return;
        }
        let chain: Vec<SignedDirectory> =
            self.chain_upto(offered).into_iter().filter(|d| d.directory.version > held).collect();
        self.counters.directories_learned += 1;
        self.command(node, Command::PublishDirectories(chain));
    }

    /// Closes a connection and opens a new one at once (a driver closes a connection that
    /// carried a bad frame; the peer reconnects).
    fn reset_link(&mut self, link: usize) {
        let (a, b) = (self.links[link].a, self.links[link].b);
        if !self.links[link].connected {
            return;
        }
        self.links[link].epoch += 1;
        self.notify_link(a, b, false);
        self.notify_link(b, a, false);
        self.links[link].epoch += 1;
        self.notify_link(a, b, true);
        self.notify_link(b, a, true);
    }

    /// A machine says a peer's key is not admitted: the link closes, and is dialled again after
    /// [`REFUSED_RETRY_MS`].
    fn refuse_link(&mut self, a: NodeId, b: NodeId) {
        let Some(&i) = self.link_of.get(&(a.min(b), a.max(b))) else { return };
        self.links[i].refused_until = self.now + REFUSED_RETRY_MS;
        self.queue.at(self.now + REFUSED_RETRY_MS, CoreEv::Redial);
        if self.links[i].connected {
            self.links[i].connected = false;
            self.links[i].epoch += 1;
            self.notify_link(a, b, false);
            self.notify_link(b, a, false);
        }
    }

    // ---- Inputs ----

    /// Runs an operator's command on node `n`; its reply comes as [`Event::Replied`]. `None` if
    /// the node is down.
    pub fn command(&mut self, n: NodeId, command: Command) -> Option<CommandId> {
        let now = self.node_now(n);
        let m = self.nodes[n].machine.as_mut()?;
        self.next_command += 1;
        let id = CommandId(self.next_command);
        m.handle_command(id, command, now);
        self.pump(n);
        Some(id)
    }

    /// Hands `message` straight to `to`'s machine as if from `from` (outside the network), and
    /// returns a copy of what the machine put out in answer (which then goes its way as usual).
    pub fn inject(&mut self, to: NodeId, from: NodeId, message: Message) -> Option<Outputs> {
        let now = self.node_now(to);
        let code = self.world.codes[from].clone();
        let m = self.nodes[to].machine.as_mut()?;
        m.handle_message(&code, message, now);
        let out = m.drain();
        let copy = Outputs {
            writes: out.writes.clone(),
            transmits: out.transmits.clone(),
            events: out.events.clone(),
            reads: out.reads.clone(),
        };
        self.route(to, out);
        Some(copy)
    }

    /// Sends `message` from `from` to `to` over the network.
    pub fn send(&mut self, from: NodeId, to: NodeId, message: &Message) {
        let frame = wire::encode_frame(message);
        let count = |counts: &mut BTreeMap<&'static str, KindCount>| {
            let kind = counts.entry(message.kind()).or_default();
            kind.messages += 1;
            kind.bytes += frame.len() as u64;
        };
        count(&mut self.counters.by_kind);
        if self.world.hubs.contains(&from) && self.world.hubs.contains(&to) {
            count(&mut self.counters.between_hubs);
        }
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
        if self.oneway.iter().any(|(_, f, t)| (*f, *t) == (from, to)) || self.rng.chance(self.wire.loss_per_million) {
            self.counters.frames_lost += 1;
            return;
        }
        let epoch = self.links[link].epoch;
        let frame = Rc::new(frame);
        let copies = if self.rng.chance(self.wire.dup_per_million) { 2 } else { 1 };
        self.counters.frames_duplicated += copies - 1;
        for _ in 0..copies {
            let delay = self.links[link].latency_ms + self.rng.below(self.wire.jitter_ms + 3);
            let ev = CoreEv::Deliver { from, to, link, epoch, frame: Rc::clone(&frame) };
            self.queue.at(self.now + delay, ev);
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, link: usize, epoch: u32, frame: Rc<Vec<u8>>) {
        let l = &self.links[link];
        if !l.connected || l.epoch != epoch {
            self.counters.frames_lost_with_connection += 1;
            return;
        }
        self.counters.frames_delivered += 1;
        self.nodes[to].received_bytes += frame.len() as u64;
        self.trace.write_u64(self.now);
        self.trace.write_u64(((from as u64) << 32) | to as u64);
        self.trace.write_words(&frame);
        if self.world.roles[to] == Role::Setting {
            self.report(Report::ToSetting { setting: to, from, frame });
            return;
        }
        let message = match wire::decode_frame(&frame) {
            Ok(m) => m,
            Err(_) => {
                // The receiving driver refuses the frame and closes the connection.
                self.counters.frames_refused_undecodable += 1;
                self.reset_link(link);
                return;
            }
        };
        if let Message::Feed(b) = &message
            && self.intercepted == Some(from)
            && self.tampered_runs.remove(&(to, b.origin.clone(), b.upto))
            && self.would_apply(to, b)
        {
            self.counters.tampered_runs_applicable += 1;
        }
        let now = self.node_now(to);
        let code = self.world.codes[from].clone();
        let Some(m) = self.nodes[to].machine.as_mut() else { return };
        match message {
            Message::Head(head) if self.world.roles[to] == Role::Hub => {
                match self.checked_heads.check(&self.latest, head) {
                    Ok(head) => m.handle_verified_head(&code, head, now),
                    Err(head) => m.handle_message(&code, Message::Head(head), now),
                }
            }
            message => m.handle_message(&code, message, now),
        }
        self.pump(to);
    }

    /// `head` with its signature checked (once for every hub and setting it reaches) with the
    /// key the newest directory lists for its origin; none if that does not hold.
    pub fn checked_head(&mut self, head: &SignedHead) -> Option<Verified<FeedHead>> {
        self.checked_heads.check(&self.latest, head.clone()).ok()
    }

    // ---- Outputs ----

    /// Carries a machine's outputs out: writes to its pending queue, frames to the network (or
    /// to the adversary), events to the reports; then sets its timer.
    fn pump(&mut self, n: NodeId) {
        let Some(m) = self.nodes[n].machine.as_mut() else { return };
        let out = m.drain();
        self.route(n, out);
    }

    fn route(&mut self, n: NodeId, out: Outputs) {
        let Outputs { writes, transmits, events, reads } = out;
        // Rows the machine asked for come from its disk at once; what they bring goes out below.
        let now = self.node_now(n);
        let node = &mut self.nodes[n];
        for request in &reads {
            let rows = node.disk.read(request);
            if let Some(m) = node.machine.as_mut() {
                m.handle_read(request, rows, now);
            }
        }
        let read = !reads.is_empty();
        let node = &mut self.nodes[n];
        node.pending.extend(writes);
        if !node.pending.is_empty() && !node.flush_due {
            node.flush_due = true;
            let (at, incarnation) = (self.now + node.disk_ms, node.incarnation);
            self.queue.at(at, CoreEv::Flush { node: n, incarnation });
        }
        for t in transmits {
            if self.intercepted == Some(n) {
                self.report(Report::Intercepted { from: n, transmit: Box::new(t) });
                continue;
            }
            match self.world.id(&t.to) {
                Some(to) => self.send(n, to, &t.message),
                None => self.counters.frames_to_unknown += 1,
            }
        }
        for e in events {
            self.trace.write_u64(n as u64);
            self.trace.write_words(format!("{e:?}").as_bytes());
            let refused = match &e {
                Event::PeerNotAdmitted { peer, .. } => self.world.id(peer),
                _ => None,
            };
            self.report(Report::Event { node: n, event: e });
            if let Some(peer) = refused {
                self.refuse_link(n, peer);
            }
        }
        if read {
            self.pump(n);
        }
        self.arm_timer(n);
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
            node.disk.apply(b);
        }
        self.report(Report::Durable { node: n, batches });
        let now = self.node_now(n);
        if let Some(m) = self.nodes[n].machine.as_mut() {
            m.handle_durable(last, now);
        }
        self.pump(n);
    }

    /// Sets the node's timer for the machine's next deadline, if that is earlier than the one set.
    fn arm_timer(&mut self, n: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[n];
        let Some(deadline) = node.machine.as_ref().and_then(Machine::poll_timeout) else { return };
        let mut at = (deadline.as_millis() as i64).saturating_sub(node.skew_ms).max(now as i64) as u64;
        if at <= node.fired_at {
            at = node.fired_at + 1;
        }
        if node.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        node.timer_at = Some(at);
        let incarnation = node.incarnation;
        self.queue.at(at, CoreEv::Timer { node: n, incarnation });
    }

    fn on_timer(&mut self, n: NodeId, incarnation: u32, at: u64) {
        let node = &mut self.nodes[n];
        if node.incarnation != incarnation || node.timer_at != Some(at) {
            return;
        }
        node.timer_at = None;
        node.fired_at = at;
        let now = self.node_now(n);
        let Some(m) = self.nodes[n].machine.as_mut() else { return };
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
        self.pump(n);
    }
}
