//! The node: one event loop owns the role's state machine and drives it from the network, the
//! store, a ticker and the operator's API. It holds no protocol logic of its own.
//!
//! Inputs arrive on one channel ([`Input`]); after each, the loop drains the machine: writes go
//! to the store (group-committed, durable in order, then `handle_durable`), transmits to the
//! peer's connection queue, events to the log and metrics.

use crate::api::{self, ApiRequest};
use crate::config::{self, NodeConfig, NodeRole};
use crate::metrics::Metrics;
use crate::net::{self, NetContext};
use crate::store::Store;
use crate::transport;
use anyhow::{Context, bail};
use cpis_protocol::authority::Authority;
use cpis_protocol::directory::{Role, TrustedDirectory};
use cpis_protocol::hub::Hub;
use cpis_protocol::ids::{LookupId, OdsCode};
use cpis_protocol::machine::{Event, StateMachine, Transmit};
use cpis_protocol::sign::{Identity, PublicKey};
use cpis_protocol::wire::{self, Message};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, error, info, info_span, warn};

/// Inputs waiting for the event loop before senders wait (back-pressure onto the network).
pub const INPUT_QUEUE_MAX: usize = 16_384;

/// Everything the event loop reacts to.
pub enum Input {
    /// A member or setting connected and was admitted.
    Connected {
        peer: OdsCode,
        role: Role,
        conn_id: u64,
        out: mpsc::Sender<Vec<u8>>,
        key: PublicKey,
        conn: quinn::Connection,
    },
    /// That connection (or setting session) ended.
    Disconnected { peer: OdsCode, conn_id: u64 },
    /// A decoded message from a connection.
    Frame { from: OdsCode, conn_id: u64, message: Box<Message> },
    /// A connection was refused (for metrics).
    Refused { reason: &'static str },
    /// Every write up to this id is durable.
    Durable { write_id: u64 },
    /// The store failed: the node must stop rather than acknowledge what it cannot keep.
    StoreFailed(String),
    /// An operator request.
    Api(ApiRequest),
}

/// The role's machine.
pub enum NodeMachine {
    Hub(Box<Hub>),
    Authority(Box<Authority>),
}

impl NodeMachine {
    pub fn as_dyn(&mut self) -> &mut dyn StateMachine {
        match self {
            NodeMachine::Hub(h) => h.as_mut(),
            NodeMachine::Authority(a) => a.as_mut(),
        }
    }
    pub fn directory(&self) -> &TrustedDirectory {
        match self {
            NodeMachine::Hub(h) => h.directory(),
            NodeMachine::Authority(a) => a.directory(),
        }
    }
}

/// A live connection as the loop knows it.
pub struct PeerConn {
    pub conn_id: u64,
    pub role: Role,
    pub key: PublicKey,
    out: mpsc::Sender<Vec<u8>>,
    conn: quinn::Connection,
}

impl PeerConn {
    /// Frames queued towards this peer and not yet written.
    pub fn queued(&self) -> usize {
        self.out.max_capacity() - self.out.capacity()
    }
}

/// One lookup session of a care setting.
struct SettingSession {
    code: OdsCode,
    out: Option<mpsc::Sender<Vec<u8>>>,
}

/// A running node, in this process.
pub struct RunningNode {
    api_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    token: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
}

impl RunningNode {
    /// Binds QUIC (hubs) and the API, restores from the store, returns once listening.
    pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
        let code = config.code();
        let span = info_span!("node", code = %code);
        start(config, code).instrument(span).await
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }
    pub fn api_token(&self) -> String {
        self.token.clone()
    }

    /// Graceful stop: closes connections, waits for the store's last commit.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(net::CLOSE_SHUTDOWN.into(), b"shutting down");
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // Closing connections is announced to peers; do not wait on a peer that never answers.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Resolves when the node has stopped by itself (a fatal store error).
    pub async fn stopped(&mut self) {
        if let Some(main) = self.tasks.first_mut() {
            let _ = main.await;
        }
    }
}

async fn start(config: NodeConfig, code: OdsCode) -> anyhow::Result<RunningNode> {
    let seed = config::read_key(&config.key_path())?;
    let identity = Identity::from_seed(seed);
    let initial = config::read_directory(&config.directory_path())?;
    let now = net::now();
    let trusted = TrustedDirectory::bootstrap(initial, now).context("the directory file is not trustworthy")?;
    let store = Store::open(&config.store_path())?;
    let rows = store.load_all()?;
    let machine = match config.role {
        NodeRole::Hub => NodeMachine::Hub(Box::new(Hub::restore(
            code.clone(),
            identity,
            trusted,
            config.timing.hub_config(),
            &rows,
            now,
        )?)),
        NodeRole::Authority => {
            NodeMachine::Authority(Box::new(Authority::restore(code.clone(), identity, trusted, &rows, now)?))
        }
    };
    check_own_key(&machine, &code, config.role.role(), PublicKey(Identity::from_seed(seed).public().0))?;
    info!(rows = rows.len(), directory_version = machine.directory().version(), "restored from the store");

    let directory = Arc::new(RwLock::new(machine.directory().clone()));
    let bind = config.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let endpoint = transport::endpoint(bind, &seed, net::admit_fn(directory.clone()))?;
    let quic_addr = config.listen.map(|_| endpoint.local_addr()).transpose()?;
    if let Some(addr) = quic_addr {
        std::fs::write(config.quic_addr_path(), addr.to_string())?;
    }
    let token = api::load_or_create_token(&config.token_path())?;
    let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE_MAX);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API on {}", config.api_listen))?;
    let api_addr = listener.local_addr()?;
    std::fs::write(config.api_addr_path(), api_addr.to_string())?;

    let ctx = NetContext {
        me: code.clone(),
        directory: directory.clone(),
        inputs: inputs_tx.clone(),
        shutdown: shutdown_rx.clone(),
        next_conn_id: Arc::new(AtomicU64::new(1)),
    };
    let span = tracing::Span::current();
    let mut tasks = Vec::new();
    let node = Node::new(machine, store, directory, ctx.clone(), config.clone(), endpoint.clone());
    tasks.push(tokio::spawn(node.run(inputs_rx, shutdown_rx.clone()).instrument(span.clone())));
    let roles: &'static [Role] = match config.role {
        NodeRole::Hub => &[Role::Hub, Role::Authority, Role::Setting],
        NodeRole::Authority => &[],
    };
    tasks.push(tokio::spawn(net::accept_loop(endpoint.clone(), ctx.clone(), roles).instrument(span.clone())));
    let app = api::router(inputs_tx, token.clone());
    let mut api_shutdown = shutdown_rx.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_shutdown.changed().await;
    });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = serve.await {
            error!(error = %e, "the API server stopped");
        }
    }));
    info!(%api_addr, quic = ?quic_addr, "node running");
    Ok(RunningNode { api_addr, quic_addr, token, shutdown: shutdown_tx, tasks, endpoint })
}

fn check_own_key(machine: &NodeMachine, code: &OdsCode, role: Role, key: PublicKey) -> anyhow::Result<()> {
    let dir = machine.directory();
    let Some(member) = dir.member(code) else { bail!("{code} is not a member of the directory") };
    if member.role != role {
        bail!("{code} is a {} in the directory, not a {}", member.role.name(), role.name());
    }
    match member.key(key.id()) {
        None => bail!("this node's key {} is not a key of {code} in the directory", key.id()),
        Some(k) if !k.usable_at(net::now()) => {
            bail!("this node's key {} is not active (retired, revoked or outside its validity window)", key.id())
        }
        Some(_) => {}
    }
    Ok(())
}

/// The event loop's state.
pub struct Node {
    pub machine: NodeMachine,
    store: Store,
    directory: Arc<RwLock<TrustedDirectory>>,
    ctx: NetContext,
    pub config: NodeConfig,
    endpoint: quinn::Endpoint,
    pub peers: BTreeMap<OdsCode, PeerConn>,
    /// Setting sessions by id (one lookup each); the sender is dropped once answered.
    settings: HashMap<u64, SettingSession>,
    /// Sessions waiting for the answer to a lookup id, oldest first (a retry adds one).
    lookup_routes: HashMap<LookupId, VecDeque<(u64, Instant)>>,
    sync_routes: HashMap<OdsCode, u64>,
    dialing: BTreeMap<OdsCode, tokio::task::JoinHandle<()>>,
    durable_queue: mpsc::UnboundedSender<oneshot::Receiver<crate::store::CommitResult>>,
    durable_rx: Option<mpsc::UnboundedReceiver<oneshot::Receiver<crate::store::CommitResult>>>,
    pub waiting_api: BTreeMap<u64, Vec<api::Pending>>,
    /// Highest write id handed to the store, and highest known durable.
    pub writes_submitted: u64,
    pub writes_durable: u64,
    pub metrics: Metrics,
    pub started: Instant,
}

impl Node {
    fn new(
        machine: NodeMachine,
        store: Store,
        directory: Arc<RwLock<TrustedDirectory>>,
        ctx: NetContext,
        config: NodeConfig,
        endpoint: quinn::Endpoint,
    ) -> Node {
        let (durable_queue, durable_rx) = mpsc::unbounded_channel();
        Node {
            machine,
            store,
            directory,
            ctx,
            config,
            endpoint,
            peers: BTreeMap::new(),
            settings: HashMap::new(),
            lookup_routes: HashMap::new(),
            sync_routes: HashMap::new(),
            dialing: BTreeMap::new(),
            durable_queue,
            durable_rx: Some(durable_rx),
            waiting_api: BTreeMap::new(),
            writes_submitted: 0,
            writes_durable: 0,
            metrics: Metrics::default(),
            started: Instant::now(),
        }
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut shutdown: watch::Receiver<bool>) {
        self.spawn_durability_forwarder();
        self.refresh_dialers();
        self.drain();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.timing.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    if !self.handle(input) {
                        break;
                    }
                }
                _ = tick.tick() => self.machine.as_dyn().handle_tick(net::now()),
                _ = shutdown.changed() => break,
            }
            self.drain();
        }
        for (_, handle) in std::mem::take(&mut self.dialing) {
            handle.abort();
        }
        for peer in self.peers.values() {
            peer.conn.close(net::CLOSE_SHUTDOWN.into(), b"shutting down");
        }
        info!("node stopped");
    }

    /// Forwards store completions to the loop in submission order.
    fn spawn_durability_forwarder(&mut self) {
        let Some(mut rx) = self.durable_rx.take() else {
            return;
        };
        let inputs = self.ctx.inputs.clone();
        tokio::spawn(async move {
            while let Some(done) = rx.recv().await {
                let input = match done.await {
                    Ok(Ok(write_id)) => Input::Durable { write_id },
                    Ok(Err(e)) => Input::StoreFailed(e.to_string()),
                    Err(_) => Input::StoreFailed("the store's writer stopped".into()),
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Handles one input; false means stop.
    fn handle(&mut self, input: Input) -> bool {
        let now = net::now();
        match input {
            Input::Connected { peer, role, conn_id, out, key, conn } => {
                self.on_connected(peer, role, conn_id, out, key, conn)
            }
            Input::Disconnected { peer, conn_id } => self.on_disconnected(&peer, conn_id),
            Input::Frame { from, conn_id, message } => self.on_frame(from, conn_id, *message),
            Input::Refused { reason } => self.metrics.refused(reason),
            Input::Durable { write_id } => {
                self.writes_durable = self.writes_durable.max(write_id);
                self.machine.as_dyn().handle_durable(write_id, now);
                api::release(self, write_id);
            }
            Input::StoreFailed(e) => {
                error!(error = %e, "the store failed: stopping rather than acknowledging what is not durable");
                return false;
            }
            Input::Api(request) => api::handle(self, request),
        }
        true
    }

    fn on_connected(
        &mut self,
        peer: OdsCode,
        role: Role,
        conn_id: u64,
        out: mpsc::Sender<Vec<u8>>,
        key: PublicKey,
        conn: quinn::Connection,
    ) {
        let now = net::now();
        if role == Role::Setting {
            let first = !self.settings.values().any(|s| s.code == peer);
            self.settings.insert(conn_id, SettingSession { code: peer.clone(), out: Some(out) });
            if first {
                self.machine.as_dyn().handle_connected(&peer, role, now);
            }
            return;
        }
        let new = PeerConn { conn_id, role, key, out, conn };
        if let Some(old) = self.peers.insert(peer.clone(), new) {
            old.conn.close(net::CLOSE_REPLACED.into(), b"replaced");
            self.machine.as_dyn().handle_disconnected(&peer);
        }
        self.machine.as_dyn().handle_connected(&peer, role, now);
    }

    fn on_disconnected(&mut self, peer: &OdsCode, conn_id: u64) {
        if self.settings.remove(&conn_id).is_some() {
            self.lookup_routes.retain(|_, waiting| {
                waiting.retain(|(c, _)| *c != conn_id);
                !waiting.is_empty()
            });
            if self.sync_routes.get(peer) == Some(&conn_id) {
                self.sync_routes.remove(peer);
            }
            if !self.settings.values().any(|s| s.code == *peer) {
                self.machine.as_dyn().handle_disconnected(peer);
            }
            return;
        }
        if self.peers.get(peer).is_some_and(|p| p.conn_id == conn_id) {
            self.peers.remove(peer);
            self.machine.as_dyn().handle_disconnected(peer);
        }
    }

    fn on_frame(&mut self, from: OdsCode, conn_id: u64, message: Message) {
        let now = net::now();
        let current =
            self.peers.get(&from).is_some_and(|p| p.conn_id == conn_id) || self.settings.contains_key(&conn_id);
        if !current {
            return;
        }
        if self.settings.contains_key(&conn_id) {
            match &message {
                Message::Lookup(l) => {
                    self.lookup_routes.entry(l.body.lookup_id).or_default().push_back((conn_id, Instant::now()));
                }
                Message::Sync { .. } => {
                    self.sync_routes.insert(from.clone(), conn_id);
                }
                _ => {}
            }
        }
        self.metrics.received(message.kind());
        self.machine.as_dyn().handle_message(&from, message, now);
    }

    /// Lets the machine's outputs out.
    pub fn drain(&mut self) {
        // Bounded: each round moves queued outputs; new ones only come from handlers.
        for _ in 0..64 {
            let m = self.machine.as_dyn();
            let writes: Vec<_> = std::iter::from_fn(|| m.poll_write()).collect();
            let transmits: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
            let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
            if writes.is_empty() && transmits.is_empty() && events.is_empty() {
                return;
            }
            for w in writes {
                self.metrics.write_submitted();
                self.writes_submitted = self.writes_submitted.max(w.id);
                let _ = self.durable_queue.send(self.store.submit(w));
            }
            for t in transmits {
                self.send(t);
            }
            for e in events {
                self.on_event(e);
            }
        }
    }

    fn send(&mut self, t: Transmit) {
        let payload = wire::encode_payload(&t.message);
        self.metrics.sent(t.message.kind(), payload.len());
        if let Some(peer) = self.peers.get(&t.to) {
            if peer.out.try_send(payload).is_err() {
                warn!(peer = %t.to, kind = t.message.kind(), "peer queue full or closed: message dropped (anti-entropy will resend)");
            }
            return;
        }
        let route = match &t.message {
            Message::Answer(a) => self.next_lookup_route(a.lookup_id),
            Message::Refused(r) => r.lookup_id.and_then(|id| self.next_lookup_route(id)),
            _ => self.sync_routes.get(&t.to).map(|c| (*c, Instant::now())),
        };
        let Some((conn_id, since)) = route else {
            return;
        };
        let finished = matches!(t.message, Message::Answer(_) | Message::Refused(_));
        if matches!(t.message, Message::Answer(_)) {
            self.metrics.lookup_answered(since.elapsed());
        }
        if let Some(session) = self.settings.get_mut(&conn_id) {
            if let Some(out) = &session.out {
                let _ = out.try_send(payload);
            }
            if finished {
                // Dropping the sender finishes the session's stream once the answer is written.
                session.out = None;
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        self.metrics.event(&e);
        match &e {
            Event::DirectoryUpdated { version } => {
                info!(version, "directory updated");
                // The file a restart begins from follows the newest version (an old one may
                // have expired by then).
                let signed = self.machine.directory().signed().clone();
                if let Err(e) = config::write_directory(&self.config.directory_path(), &signed) {
                    warn!(error = %e, "could not update the directory file");
                }
                self.directory_changed();
            }
            Event::Equivocation { origin, seq, from } => {
                error!(%origin, seq, %from, "EQUIVOCATION: two different entries with one sequence; proof kept")
            }
            Event::NotificationOverdue { lookup_id, authority, waiting_ms } => {
                warn!(%lookup_id, %authority, waiting_ms, "notification overdue")
            }
            Event::BatchRefused { from, origin, reason } => warn!(%from, %origin, %reason, "feed batch refused"),
            Event::MessageRefused { from, kind, reason } => {
                warn!(%from, kind, %reason, "message refused")
            }
            Event::LookupRefused { lookup_id, from, reason } => warn!(%lookup_id, %from, %reason, "lookup refused"),
            Event::DirectoryRefused { from, reason } => {
                warn!(from = ?from, %reason, "directory version refused")
            }
            Event::LookupAnswered { lookup_id, setting, kind, authorities } => {
                info!(%lookup_id, %setting, ?kind, ?authorities, "lookup answered")
            }
            Event::NotificationDelivered { lookup_id, authority, latency_ms } => {
                info!(%lookup_id, %authority, latency_ms, "notification delivered")
            }
            Event::NotificationReceived { lookup_id, hub } => {
                info!(%lookup_id, %hub, "notification received")
            }
            Event::FeedBehindHub { hub, hub_seq, own_seq } => {
                error!(%hub, hub_seq, own_seq, "a hub holds more of our feed than we do (restored from an old backup?): skipping past it and re-signing live records")
            }
            Event::EntriesAccepted { origin, from, count, upto } => {
                tracing::debug!(%origin, %from, count, upto, "entries accepted")
            }
        }
    }

    /// A new directory: admit with it, close connections whose key it no longer admits, dial new
    /// hubs.
    fn directory_changed(&mut self) {
        let dir = self.machine.directory().clone();
        if let Ok(mut shared) = self.directory.write() {
            *shared = dir.clone();
        }
        let now = net::now();
        let doomed: Vec<OdsCode> = self
            .peers
            .iter()
            .filter(|(_, p)| dir.admit(&p.key, now, &[p.role]).is_err())
            .map(|(c, _)| c.clone())
            .collect();
        for code in doomed {
            if let Some(p) = self.peers.remove(&code) {
                warn!(peer = %code, "closing a connection whose key the new directory no longer admits");
                p.conn.close(net::CLOSE_NOT_ADMITTED.into(), b"key no longer admitted");
                self.machine.as_dyn().handle_disconnected(&code);
            }
        }
        self.refresh_dialers();
    }

    /// Starts a dial loop for each peer this node keeps a connection to: an authority its home
    /// hubs; a hub every hub with a greater code (those with a smaller code dial us). A hub also
    /// dials each hub with a smaller code once at start, so that a peer still holding a dead
    /// connection from before a crash replaces it (and redials) at once rather than after the
    /// idle timeout.
    fn refresh_dialers(&mut self) {
        let dir = self.machine.directory().clone();
        let me = self.ctx.me.clone();
        let targets: Vec<(OdsCode, net::Dial)> = match self.config.role {
            NodeRole::Authority => dir
                .member(&me)
                .map(|m| m.home_hubs.iter().map(|h| (h.clone(), net::Dial::Keep)).collect())
                .unwrap_or_default(),
            NodeRole::Hub => dir
                .with_role(Role::Hub)
                .filter(|m| m.code != me)
                .map(|m| (m.code.clone(), if m.code > me { net::Dial::Keep } else { net::Dial::Once }))
                .collect(),
        };
        for (target, dial) in targets {
            if self.dialing.contains_key(&target) {
                continue;
            }
            let Some(addr) = self.address_of(&dir, &target) else {
                warn!(peer = %target, "no usable address for this hub: set hub_addresses in the config");
                continue;
            };
            let (base, cap) = (self.config.timing.reconnect_base_ms, self.config.timing.reconnect_cap_ms);
            let task = net::dial_loop(self.endpoint.clone(), self.ctx.clone(), target.clone(), addr, dial, (base, cap));
            self.dialing.insert(target, tokio::spawn(task.instrument(tracing::Span::current())));
        }
    }

    fn address_of(&self, dir: &TrustedDirectory, hub: &OdsCode) -> Option<SocketAddr> {
        if let Some(addr) = self.config.hub_addresses.get(hub.as_str()) {
            return Some(*addr);
        }
        let member = dir.member(hub)?;
        member.addresses.iter().find_map(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
    }

    /// The oldest session waiting for this lookup's answer.
    fn next_lookup_route(&mut self, id: LookupId) -> Option<(u64, Instant)> {
        let waiting = self.lookup_routes.get_mut(&id)?;
        let route = waiting.pop_front();
        if waiting.is_empty() {
            self.lookup_routes.remove(&id);
        }
        route
    }

    /// Inputs waiting for the event loop.
    pub fn inputs_queued(&self) -> usize {
        self.ctx.inputs.max_capacity() - self.ctx.inputs.capacity()
    }

    pub fn setting_sessions(&self) -> usize {
        self.settings.len()
    }
}
