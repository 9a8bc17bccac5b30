//! The node: one event loop owns the role's [`Machine`] and every piece of state around it, and
//! drives it from the network, the store, its timer and the operator's commands. It holds no
//! protocol logic of its own.
//!
//! After each input the loop drains the machine: writes go to the store (group-committed,
//! durable in order, then `handle_durable`), transmits to the peer's connection queue, events to
//! the log and metrics (and command replies back to whoever asked). The timer is the machine's
//! own `poll_timeout`.

use crate::config::{self, NodeConfig, NodeRole};
use crate::inputs::{Delivered, Durability, INPUT_QUEUE_BYTES_MAX, INPUT_QUEUE_MAX, Input, Link};
use crate::logs::{self, throttled};
use crate::metrics::Metrics;
use crate::net::{self, NetContext};
use crate::status::{AuthorityState, HubState, OriginState, PeerState, PlansHeld, Snapshot};
use crate::store::Store;
use crate::transport;
use anyhow::Context;
use cpis_protocol::directory::{DirectoryError, KeyStatus, Role, TrustedDirectory};
use cpis_protocol::ids::{LookupId, OdsCode};
use cpis_protocol::machine::{CommandId, Event, Machine, Reply, Transmit};
use cpis_protocol::schema::StoredRow;
use cpis_protocol::sign::{Identity, PublicKey};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, Message, Refused};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{Instrument, error, info, info_span, warn};

/// Most lookup sessions of care settings open at once; more are turned away.
pub const SETTING_SESSIONS_MAX: usize = 4_096;
/// Most lookup sessions of one care setting open at once (its gateway's callers, hedged): more
/// are turned away, so that one setting (or one stolen key) cannot hold every session.
pub const SETTING_SESSIONS_PER_SETTING_MAX: usize = 256;
/// Writes handed to the store and not yet durable past which the loop takes no new input (what
/// waits goes back to the network as back-pressure): four commits' worth, so that however slow
/// the disk, what waits for it in memory stays a few MB (a notification's write is about 1 KB).
const WRITES_WAITING_MAX: u64 = 4 * crate::store::MAX_BATCHES_PER_COMMIT as u64;
/// Longest the loop sleeps without looking at the clock (clocks can jump).
const TIMER_CAP: Duration = Duration::from_secs(1);

/// A running node, in this process.
pub struct RunningNode {
    api_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    pages_url: Option<String>,
    token: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
}

impl RunningNode {
    /// Binds QUIC (hubs) and the API, restores from the store, returns once listening.
    pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
        config.check_files()?;
        config::create_private_dir(&config.data_dir)?;
        let code = config.code();
        let span = info_span!("node", code = %code);
        start(config, code).instrument(span).await
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }
    /// The council pages' URL, if the config asks for them.
    pub fn pages_url(&self) -> Option<&str> {
        self.pages_url.as_deref()
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
    let role = config.role_config();
    let rows = store.rows_to_restore(&role, now)?;
    let own_key = identity.public();
    let machine = Machine::restore(code.clone(), identity, trusted, role, rows, now)?;
    info!(directory_version = machine.directory().version(), key = %own_key.id(), "restored from the store");
    if let Some(problem) = own_key_problem(machine.directory(), &code, own_key, now) {
        // A key only a newer directory knows: peers that hold it admit us and pass it on.
        warn!(key = %own_key.id(), %problem, "this node's key is not active in its directory: it signs nothing until a newer directory (from a peer, or `cpis federation publish`) makes it so");
    }

    let directory = Arc::new(RwLock::new(machine.directory().clone()));
    let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE_MAX);
    let bind = config.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let endpoint = transport::endpoint(bind, &seed, net::admit_fn(directory.clone(), inputs_tx.clone()))?;
    let quic_addr = config.listen.map(|_| endpoint.local_addr()).transpose()?;
    if let Some(addr) = quic_addr {
        std::fs::write(config.quic_addr_path(), addr.to_string())?;
    }
    let token = crate::api::load_or_create_token(&config.token_path())?;
    let metrics_token = crate::api::load_or_create_token(&config.metrics_token_path())?;
    let metrics = Metrics::default();
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
        input_bytes: Arc::new(Semaphore::new(INPUT_QUEUE_BYTES_MAX)),
        shutdown: shutdown_rx.clone(),
        next_conn_id: Arc::new(AtomicU64::new(1)),
        held: Arc::new(RwLock::new(held_feeds(&machine))),
        member_sessions: Arc::default(),
        dial_config: transport::client_config(&seed, net::dial_admit_fn(directory.clone()))?,
    };
    let span = tracing::Span::current();
    let mut tasks = Vec::new();
    let directory_for_api = directory.clone();
    let node = Node::new(
        machine,
        store.clone(),
        directory,
        ctx.clone(),
        config.clone(),
        (endpoint.clone(), own_key),
        metrics.clone(),
    );
    tasks.push(tokio::spawn(node.run(inputs_rx, shutdown_rx.clone()).instrument(span.clone())));
    let roles: &'static [Role] = match config.role {
        NodeRole::Hub => &[Role::Hub, Role::Authority, Role::Setting],
        NodeRole::Authority => &[],
    };
    tasks.push(tokio::spawn(net::accept_loop(endpoint.clone(), ctx.clone(), roles).instrument(span.clone())));
    let store_for_webhook = store.clone();
    let state = crate::api::ApiState::new(
        inputs_tx,
        store,
        directory_for_api,
        (token.clone(), metrics_token),
        config.role,
        metrics,
    );
    if let Some(sink) = crate::handover::Sink::from_config(&config)? {
        if matches!(sink, crate::handover::Sink::Mesh { .. }) {
            let inbox = crate::handover::run_mesh_inbox(sink.clone(), state.clone(), shutdown_rx.clone());
            tasks.push(tokio::spawn(inbox.instrument(span.clone())));
        }
        let run = crate::handover::run(sink, state.clone(), store_for_webhook, shutdown_rx.clone());
        tasks.push(tokio::spawn(run.instrument(span.clone())));
    }
    let pages_url = match &config.pages {
        Some(pages) => Some(start_pages(&config, pages, state.clone(), shutdown_rx.clone(), &mut tasks).await?),
        None => None,
    };
    let app = crate::api::router(state);
    let mut api_shutdown = shutdown_rx.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_shutdown.changed().await;
    });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = serve.await {
            error!(error = %e, "the API server stopped");
        }
    }));
    info!(%api_addr, quic = ?quic_addr, pages = pages_url.as_deref().unwrap_or("none"), "node running");
    Ok(RunningNode { api_addr, quic_addr, pages_url, token, shutdown: shutdown_tx, tasks, endpoint })
}

/// Binds and serves an authority's council pages; returns their URL.
async fn start_pages(
    config: &NodeConfig,
    pages: &config::PagesConfig,
    state: crate::api::ApiState,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<String> {
    use crate::web::{self, Door, SessionRules};
    let bound = web::bind(pages.listen, (pages.tls_cert.as_ref(), pages.tls_key.as_ref())).await?;
    let url = bound.url.clone();
    std::fs::write(config.pages_addr_path(), &url)?;
    let rules = SessionRules {
        idle_ms: pages.session_idle_ms,
        lockout_failures: pages.lockout_failures,
        lockout_ms: pages.lockout_ms,
    };
    let door = Door::new(config.users_path(), &crate::accounts::AccountRole::COUNCIL, rules, url.starts_with("https:"));
    let name = state.directory().member(&config.code()).map(|m| m.name.clone()).unwrap_or_else(|| config.code.clone());
    let council = crate::council::Council::new(state, door, name, pages.overdue_after_ms, &config.pages_audit_path())
        .with_context(|| format!("opening {}", config.pages_audit_path().display()))?;
    tasks.push(tokio::spawn(web::serve(bound, crate::council::router(std::sync::Arc::new(council)), stop)));
    Ok(url)
}

/// Why this node's key cannot sign, if it cannot.
fn own_key_problem(dir: &TrustedDirectory, code: &OdsCode, key: PublicKey, now: Timestamp) -> Option<String> {
    let member = dir.member(code)?;
    match member.key(key.id()) {
        None => Some(format!("it is not a key of {code} in directory version {}", dir.version())),
        Some(k) if !k.usable_at(now) => Some(format!("it is {}", key_status(k, now))),
        Some(_) => None,
    }
}

/// A key's state in words.
fn key_status(k: &cpis_protocol::directory::MemberKey, now: Timestamp) -> &'static str {
    match k.status {
        KeyStatus::Revoked { .. } => "revoked",
        KeyStatus::Retired { .. } => "retired",
        KeyStatus::Active if !k.usable_at(now) => "outside its validity window",
        KeyStatus::Active => "active",
    }
}

/// How far a hub holds each authority's feed (an authority holds no one's).
fn held_feeds(machine: &Machine) -> HashMap<OdsCode, u64> {
    match machine {
        Machine::Hub(hub) => hub.replicas().iter().map(|(origin, r)| (origin.clone(), r.seq())).collect(),
        Machine::Authority(_) => HashMap::new(),
    }
}

/// Warnings start this long before a key or the directory expires.
const EXPIRY_WARNING_MS: u64 = 30 * cpis_protocol::time::DAY_MS;
/// How often expiries are looked at (and warned about).
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(3_600);

/// A live connection to a member, as the loop knows it.
struct PeerConn {
    conn_id: u64,
    role: Role,
    out: net::FrameSender,
    conn: quinn::Connection,
}

/// What a peer last showed of itself: the key it connected with and the directory version its
/// `Sync` named (for `cpis federation show --node`).
#[derive(Clone, Copy, Debug)]
struct Seen {
    key: PublicKey,
    directory_version: Option<u64>,
}

impl PeerConn {
    fn queued(&self) -> usize {
        self.out.frames()
    }
}

/// One lookup session of a care setting.
struct SettingSession {
    code: OdsCode,
    out: Option<net::FrameSender>,
    conn: quinn::Connection,
}

/// The event loop's state.
struct Node {
    machine: Machine,
    store: Store,
    /// The directory the TLS handshake admits against, kept equal to the machine's.
    directory: Arc<RwLock<TrustedDirectory>>,
    ctx: NetContext,
    config: NodeConfig,
    endpoint: quinn::Endpoint,
    key: PublicKey,
    peers: BTreeMap<OdsCode, PeerConn>,
    /// Every member seen since start (bounded by the directory's size).
    seen: BTreeMap<OdsCode, Seen>,
    /// Setting sessions by connection id (one lookup each); the sender is dropped once answered.
    settings: HashMap<u64, SettingSession>,
    /// Sessions open per setting (those in `settings`).
    sessions_of: HashMap<OdsCode, usize>,
    /// Sessions waiting for the answer to a lookup id, oldest first (a retry adds one).
    lookup_routes: HashMap<LookupId, VecDeque<(u64, Instant)>>,
    /// Each setting's session that last sent something other than a lookup (its `Sync`): where
    /// `Directories`, and the refusal of a message that is no lookup, go.
    sync_routes: HashMap<OdsCode, u64>,
    dialing: BTreeMap<OdsCode, tokio::task::JoinHandle<()>>,
    /// Each write's commit, with when it was handed to the store.
    durable_queue: mpsc::UnboundedSender<(Instant, crate::store::CommitReceiver)>,
    durable_rx: Option<mpsc::UnboundedReceiver<(Instant, crate::store::CommitReceiver)>>,
    writes_submitted: u64,
    writes_durable: u64,
    next_command: u64,
    replies: HashMap<CommandId, oneshot::Sender<Reply>>,
    metrics: Metrics,
    started: Instant,
    /// When the node started, by the wall clock (`process_start_time_seconds`).
    started_at: Timestamp,
}

impl Node {
    fn new(
        machine: Machine,
        store: Store,
        directory: Arc<RwLock<TrustedDirectory>>,
        ctx: NetContext,
        config: NodeConfig,
        (endpoint, key): (quinn::Endpoint, PublicKey),
        metrics: Metrics,
    ) -> Node {
        let (durable_queue, durable_rx) = mpsc::unbounded_channel();
        Node {
            machine,
            store,
            directory,
            ctx,
            config,
            endpoint,
            key,
            peers: BTreeMap::new(),
            seen: BTreeMap::new(),
            settings: HashMap::new(),
            sessions_of: HashMap::new(),
            lookup_routes: HashMap::new(),
            sync_routes: HashMap::new(),
            dialing: BTreeMap::new(),
            durable_queue,
            durable_rx: Some(durable_rx),
            writes_submitted: 0,
            writes_durable: 0,
            next_command: 0,
            replies: HashMap::new(),
            metrics,
            started: Instant::now(),
            started_at: net::now(),
        }
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut shutdown: watch::Receiver<bool>) {
        let mut durability = self.spawn_durability_forwarder();
        self.refresh_dialers(false);
        let mut stopped = !self.drain();
        let mut expiries = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        let mut redials = tokio::time::interval(Duration::from_millis(self.config.timing.reconnect_cap_ms.max(1)));
        while !stopped {
            let wait = self.timer();
            // Writes the store has not yet made durable bound how much new work is taken in.
            let accepting = self.writes_submitted - self.writes_durable < WRITES_WAITING_MAX;
            tokio::select! {
                input = inputs.recv(), if accepting => {
                    let Some(input) = input else { break };
                    self.handle(input);
                }
                done = durability.recv() => match done {
                    Some(Durability::Durable { write_id }) => {
                        self.writes_durable = self.writes_durable.max(write_id);
                        self.machine.handle_durable(write_id, net::now());
                    }
                    Some(Durability::Failed(e)) => {
                        error!(error = %e, "the store failed: stopping rather than acknowledging what is not durable");
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(wait) => self.machine.handle_timeout(net::now()),
                _ = expiries.tick() => self.check_expiries(),
                _ = redials.tick() => self.refresh_dialers(true),
                _ = shutdown.changed() => break,
            }
            stopped = !self.drain();
        }
        for (_, handle) in std::mem::take(&mut self.dialing) {
            handle.abort();
        }
        for peer in self.peers.values() {
            peer.conn.close(net::CLOSE_SHUTDOWN.into(), b"shutting down");
        }
        info!("node stopped");
    }

    /// Warns from 30 days before this node's key or the directory expires; an error once the key
    /// no longer signs.
    fn check_expiries(&self) {
        let now = net::now();
        let dir = self.machine.directory();
        let code = self.machine.code();
        if let Some(problem) = own_key_problem(dir, code, self.key, now) {
            error!(key = %self.key.id(), %problem, "this node's key cannot sign: install the member's new key (docs/keys.md)");
        } else if let Some(k) = dir.member(code).and_then(|m| m.key(self.key.id()))
            && k.valid_until.since(now) < EXPIRY_WARNING_MS
        {
            warn!(key = %self.key.id(), valid_until = %k.valid_until, "this node's key expires within 30 days: rotate it (docs/keys.md)");
        }
        let expires = dir.directory().expires_at;
        if expires.since(now) < EXPIRY_WARNING_MS {
            warn!(version = dir.version(), %expires, "the directory expires within 30 days: ask the administrator to renew it");
        }
    }

    /// How long until the machine's next timeout (at most [`TIMER_CAP`]).
    fn timer(&self) -> Duration {
        let now = net::now();
        let until = self.machine.poll_timeout().map_or(TIMER_CAP, |t| Duration::from_millis(t.since(now)));
        until.min(TIMER_CAP)
    }

    /// Forwards store completions to the loop, in submission order, on their own channel.
    fn spawn_durability_forwarder(&mut self) -> mpsc::Receiver<Durability> {
        let (tx, rx) = mpsc::channel(1024);
        let Some(mut queued) = self.durable_rx.take() else { return rx };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some((submitted, done)) = queued.recv().await {
                let report = match done.await {
                    Ok(Ok(write_id)) => {
                        metrics.write_durable(submitted.elapsed());
                        Durability::Durable { write_id }
                    }
                    Ok(Err(e)) => Durability::Failed(e.to_string()),
                    Err(_) => Durability::Failed("the store's writer stopped".into()),
                };
                if tx.send(report).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Handles one input.
    fn handle(&mut self, input: Input) {
        let now = net::now();
        match input {
            Input::Connected { peer, key, conn_id, link, out, conn } => match link {
                Link::Member => self.on_member(peer, key, conn_id, out, conn),
                Link::Setting => self.on_setting(peer, key, conn_id, out, conn),
            },
            Input::Disconnected { peer, conn_id } => self.on_disconnected(&peer, conn_id),
            Input::Frame { from, conn_id, message, _bytes } => self.on_frame(from, conn_id, *message),
            Input::Refused { reason } => self.metrics.connection_refused(reason),
            Input::BadFrame => self.metrics.message_refused("bad_frame"),
            Input::Command { command, reply } => {
                self.next_command += 1;
                let id = CommandId(self.next_command);
                self.replies.insert(id, reply);
                self.machine.handle_command(id, command, now);
            }
            Input::Status(reply) => {
                let _ = reply.send(Box::new(self.snapshot()));
            }
            Input::PlansHeld { references, reply } => {
                let held = self.machine.as_authority().map_or_else(PlansHeld::default, |a| PlansHeld {
                    hubs: a.held_by_hubs(),
                    seqs: references.iter().map(|r| a.plan_seq(r)).collect(),
                });
                let _ = reply.send(held);
            }
        }
    }

    fn on_member(
        &mut self,
        peer: OdsCode,
        key: PublicKey,
        conn_id: u64,
        out: net::FrameSender,
        conn: quinn::Connection,
    ) {
        let role = self.machine.directory().member(&peer).map_or(Role::Setting, |m| m.role);
        self.saw(&peer, key);
        let new = PeerConn { conn_id, role, out, conn };
        if let Some(old) = self.peers.insert(peer.clone(), new) {
            old.conn.close(net::CLOSE_REPLACED.into(), b"replaced");
            self.machine.handle_disconnected(&peer);
        }
        self.machine.handle_connected(&peer, key.id(), net::now());
    }

    fn on_setting(
        &mut self,
        peer: OdsCode,
        key: PublicKey,
        conn_id: u64,
        out: net::FrameSender,
        conn: quinn::Connection,
    ) {
        let open = self.sessions_of.get(&peer).copied().unwrap_or(0);
        if self.settings.len() >= SETTING_SESSIONS_MAX {
            throttled!(
                logs::SESSION_TURNED_AWAY,
                warn!(setting = %peer, "too many setting sessions open: this one is turned away")
            );
            self.metrics.connection_refused("setting_sessions_full");
            return;
        }
        if open >= SETTING_SESSIONS_PER_SETTING_MAX {
            throttled!(
                logs::SESSION_TURNED_AWAY,
                warn!(setting = %peer, "too many sessions of this setting open: this one is turned away")
            );
            self.metrics.connection_refused("setting_sessions_of_one_setting");
            return;
        }
        self.saw(&peer, key);
        self.settings.insert(conn_id, SettingSession { code: peer.clone(), out: Some(out), conn });
        self.sessions_of.insert(peer.clone(), open + 1);
        if open == 0 {
            self.machine.handle_connected(&peer, key.id(), net::now());
        }
    }

    /// Remembers the key a member connected with (members of the directory only: bounded).
    fn saw(&mut self, peer: &OdsCode, key: PublicKey) {
        if self.machine.directory().member(peer).is_some() {
            let version = self.seen.get(peer).filter(|s| s.key == key).and_then(|s| s.directory_version);
            self.seen.insert(peer.clone(), Seen { key, directory_version: version });
        }
    }

    fn on_disconnected(&mut self, peer: &OdsCode, conn_id: u64) {
        if let Some(session) = self.settings.remove(&conn_id) {
            let open = self.sessions_of.get(&session.code).map_or(0, |n| n.saturating_sub(1));
            if open == 0 {
                self.sessions_of.remove(&session.code);
            } else {
                self.sessions_of.insert(session.code, open);
            }
            self.lookup_routes.retain(|_, waiting| {
                waiting.retain(|(c, _)| *c != conn_id);
                !waiting.is_empty()
            });
            if self.sync_routes.get(peer) == Some(&conn_id) {
                self.sync_routes.remove(peer);
            }
            if open == 0 {
                self.machine.handle_disconnected(peer);
            }
            return;
        }
        if self.peers.get(peer).is_some_and(|p| p.conn_id == conn_id) {
            self.peers.remove(peer);
            self.machine.handle_disconnected(peer);
        }
    }

    fn on_frame(&mut self, from: OdsCode, conn_id: u64, delivered: Delivered) {
        let member = self.peers.get(&from).is_some_and(|p| p.conn_id == conn_id);
        let setting = self.settings.contains_key(&conn_id);
        if !member && !setting {
            return;
        }
        let lookup_id = match &delivered {
            Delivered::VerifiedLookup(l) => Some(l.body().lookup_id),
            Delivered::Message(Message::Lookup(l)) => Some(l.body.lookup_id),
            Delivered::Message(_) | Delivered::VerifiedFeed(_) | Delivered::VerifiedHead(_) => None,
        };
        if setting {
            if let Some(id) = lookup_id {
                self.lookup_routes.entry(id).or_default().push_back((conn_id, Instant::now()));
            }
            if let Delivered::Message(message) = &delivered
                && !matches!(message, Message::Lookup(_))
            {
                self.sync_routes.insert(from.clone(), conn_id);
            }
        }
        let now = net::now();
        match delivered {
            Delivered::VerifiedLookup(lookup) => {
                self.metrics.received("lookup");
                self.machine.handle_verified_lookup(&from, lookup, now);
            }
            Delivered::VerifiedFeed(batch) => {
                self.metrics.received("feed");
                self.machine.handle_verified_feed(&from, batch, now);
            }
            Delivered::VerifiedHead(head) => {
                self.metrics.received("head");
                self.machine.handle_verified_head(&from, head, now);
            }
            Delivered::Message(message) => {
                if let (Message::Sync { directory_version, .. }, Some(seen)) = (&message, self.seen.get_mut(&from)) {
                    seen.directory_version = Some(*directory_version);
                }
                self.metrics.received(message.kind());
                self.machine.handle_message(&from, message, now);
            }
        }
    }

    /// Lets the machine's outputs out; false if the store could not read back what the machine
    /// asked for, and the node must stop (as when it cannot write).
    fn drain(&mut self) -> bool {
        // Bounded: each round moves queued outputs; new ones come only from the previous round.
        for _ in 0..64 {
            let out = self.machine.drain();
            if out.is_empty() {
                return true;
            }
            for w in out.writes {
                self.metrics.write_submitted();
                self.writes_submitted = self.writes_submitted.max(w.id);
                let _ = self.durable_queue.send((Instant::now(), self.store.submit(w)));
            }
            for t in out.transmits {
                self.send(t);
            }
            for e in out.events {
                self.on_event(e);
            }
            // Rows the machine keeps in the store rather than in memory (delivered notifications
            // an authority asked for again): read at once; what they bring goes out next round.
            // A failed read stops the node: answered as rows the store does not hold, it would
            // pass them over for good (a page of redelivery, a waiting notification).
            for request in out.reads {
                let rows = match self.store.get_many(request.table, &request.keys) {
                    Ok(rows) => rows.into_iter().map(|(key, value)| StoredRow { table: request.table, key, value }),
                    Err(e) => {
                        let table = request.table.name();
                        error!(error = %e, table, "the store failed to read back rows: stopping rather than pass them over");
                        return false;
                    }
                };
                self.machine.handle_read(&request, rows.collect(), net::now());
            }
        }
        true
    }

    fn send(&mut self, t: Transmit) {
        let frame = wire::encode_frame(&t.message);
        let (kind, bytes) = (t.message.kind(), frame.len());
        if let Some(peer) = self.peers.get(&t.to) {
            if peer.out.try_send(frame).is_ok() {
                self.metrics.sent(kind, bytes);
            } else {
                self.metrics.dropped(kind);
                throttled!(
                    logs::FRAME_DROPPED,
                    warn!(peer = %t.to, kind, "peer queue full or closed: message dropped (sync will resend)")
                );
            }
            return;
        }
        let route = match &t.message {
            Message::Answer(a) => self.next_lookup_route(a.lookup_id),
            Message::Refused(Refused { lookup_id: Some(id), .. }) => self.next_lookup_route(*id),
            _ => self.sync_routes.get(&t.to).map(|c| (*c, Instant::now())),
        };
        let Some((conn_id, since)) = route else {
            return;
        };
        self.metrics.sent(kind, bytes);
        let finished = matches!(t.message, Message::Answer(_) | Message::Refused(_));
        if matches!(t.message, Message::Answer(_)) {
            self.metrics.lookup_answered(since.elapsed());
        }
        if let Some(session) = self.settings.get_mut(&conn_id) {
            if let Some(out) = &session.out {
                let _ = out.try_send(frame);
            }
            if finished {
                // Dropping the sender finishes the session's stream once the answer is written.
                session.out = None;
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        self.metrics.event(&e);
        match e {
            Event::Replied { command, reply } => {
                if let Some(sender) = self.replies.remove(&command) {
                    let _ = sender.send(reply);
                }
            }
            Event::DirectoryUpdated { version } => {
                info!(version, "directory updated");
                // The file a restart begins from follows the newest version (an old one may
                // have expired by then).
                let signed = self.machine.directory().signed().clone();
                if let Err(e) = config::write_directory(&self.config.directory_path(), &signed) {
                    warn!(error = %e, "could not update the directory file");
                }
                if let Ok(mut shared) = self.directory.write() {
                    *shared = self.machine.directory().clone();
                }
                self.refresh_dialers(false);
            }
            Event::PeerNotAdmitted { peer, reason } => {
                warn!(%peer, %reason, "closing the connections of a peer the directory no longer admits");
                if let Some(p) = self.peers.remove(&peer) {
                    p.conn.close(net::CLOSE_NOT_ADMITTED.into(), b"key no longer admitted");
                }
                for session in self.settings.values().filter(|s| s.code == peer) {
                    session.conn.close(net::CLOSE_NOT_ADMITTED.into(), b"key no longer admitted");
                }
            }
            Event::Equivocation { origin, seq, from } => {
                error!(%origin, seq, %from, "EQUIVOCATION: two different signed records with one sequence; proof kept")
            }
            Event::NotificationOverdue { lookup_id, authority, waiting_ms } => {
                warn!(%lookup_id, %authority, waiting_ms, "notification overdue")
            }
            Event::BatchRefused { from, origin, reason } => {
                throttled!(logs::REFUSED, warn!(%from, %origin, %reason, "feed batch refused"))
            }
            Event::MessageRefused { from, kind, reason } => {
                throttled!(logs::REFUSED, warn!(%from, kind, %reason, "message refused"))
            }
            Event::LookupRefused { lookup_id, from, reason } => {
                throttled!(logs::REFUSED, warn!(%lookup_id, %from, %reason, "lookup refused"))
            }
            Event::RateLimited { setting, per_person } => {
                warn!(%setting, per_person, "ALARM: lookup rate limit reached (enumeration?)")
            }
            Event::DirectoryRefused { from, reason: reason @ DirectoryError::Forked { .. } } => {
                error!(from = ?from, %reason, "directory version refused")
            }
            Event::DirectoryRefused { from, reason } => {
                throttled!(logs::DIRECTORY_REFUSED, warn!(from = ?from, %reason, "directory version refused"))
            }
            Event::RefusedByPeer { from, lookup_id, code } => {
                throttled!(
                    logs::REFUSED_BY_PEER,
                    warn!(%from, lookup = ?lookup_id, %code, "a peer refused what we sent")
                )
            }
            Event::LookupAnswered { lookup_id, setting, kind, notified } => {
                info!(%lookup_id, %setting, ?kind, ?notified, "lookup answered")
            }
            Event::NotificationDelivered { lookup_id, authority, latency_ms } => {
                info!(%lookup_id, %authority, latency_ms, "notification delivered")
            }
            Event::NotificationReceived { lookup_id, hub } => info!(%lookup_id, %hub, "notification received"),
            Event::FeedRecovered { hub, entries } => {
                warn!(%hub, entries, "took back entries of our own feed from a hub (restored from an older copy?) and re-signed them")
            }
            Event::EntriesAccepted { origin, from, count, upto } => {
                tracing::debug!(%origin, %from, count, upto, "entries accepted");
                if let Ok(mut held) = self.ctx.held.write() {
                    let seq = held.entry(origin).or_default();
                    *seq = upto.max(*seq);
                }
            }
        }
    }

    /// Starts a dial loop for each peer this node keeps a connection to: an authority its home
    /// hubs; a hub every hub with a greater code (those with a smaller code dial us). A hub also
    /// dials each hub with a smaller code once at start, so that a peer still holding a dead
    /// connection from before a crash replaces it at once rather than after the idle timeout,
    /// and again (called every `reconnect_cap_ms`) while not connected to it: a hub that rotated
    /// its key while the two could not reach each other is refused when it dials us (we do not
    /// know its new key), and our dial is what fetches the directory that lists it. `again`: only
    /// those dials, and no repeated warnings.
    fn refresh_dialers(&mut self, again: bool) {
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
            let connected = dial == net::Dial::Once && self.peers.contains_key(&target);
            let skip = connected || (again && dial == net::Dial::Keep);
            if skip || self.dialing.get(&target).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let Some(addr) = self.address_of(&dir, &target) else {
                if !again {
                    warn!(peer = %target, "the directory lists no address for this hub: set hub_addresses in the config");
                }
                continue;
            };
            let (base, cap) = (self.config.timing.reconnect_base_ms, self.config.timing.reconnect_cap_ms);
            let task = net::dial_loop(self.endpoint.clone(), self.ctx.clone(), target.clone(), addr, dial, (base, cap));
            self.dialing.insert(target, tokio::spawn(task.instrument(tracing::Span::current())));
        }
    }

    fn address_of(&self, dir: &TrustedDirectory, hub: &OdsCode) -> Option<net::DialAddress> {
        if let Some(addr) = self.config.hub_addresses.get(hub.as_str()) {
            return Some(net::DialAddress::Fixed(*addr));
        }
        let listed = &dir.member(hub)?.addresses;
        (!listed.is_empty()).then(|| net::DialAddress::Listed(listed.clone()))
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

    fn snapshot(&self) -> Snapshot {
        let now = net::now();
        let dir = self.machine.directory();
        let code = self.machine.code().clone();
        let me = dir.member(&code);
        let key = me.and_then(|m| m.key(self.key.id()));
        let key_status = key.map_or("not in the directory", |k| key_status(k, now));
        Snapshot {
            role: self.machine.role(),
            name: me.map(|m| m.name.clone()).unwrap_or_default(),
            now,
            key_id: self.key.id(),
            key_status,
            key_valid_until: key.map(|k| k.valid_until),
            directory_version: dir.version(),
            directory_expires_at: dir.directory().expires_at,
            uptime_s: self.started.elapsed().as_secs(),
            started_at: self.started_at,
            peers: self.peer_states(dir, &code),
            settings_connected: self.settings.len(),
            inputs_queued: self.ctx.inputs.max_capacity() - self.ctx.inputs.capacity(),
            writes_in_flight: self.writes_submitted - self.writes_durable,
            metrics: self.metrics.clone(),
            authority: self.machine.as_authority().map(|a| {
                let (notifications, unacknowledged) = a.inbox_counts();
                AuthorityState {
                    feed_seq: a.last_seq(),
                    head_at: a.head().map(|h| h.body.at),
                    plans: a.plans().count(),
                    notifications,
                    unacknowledged,
                    oldest_unacknowledged: a.oldest_unacknowledged(),
                    held: a.held_by_hubs(),
                }
            }),
            hub: self.machine.as_hub().map(|h| HubState {
                origins: h
                    .replicas()
                    .iter()
                    .map(|(o, r)| OriginState { origin: o.clone(), seq: r.seq(), head_at: r.head().map(|h| h.body.at) })
                    .collect(),
                visit_feeds: h.visit_marks().map(|(o, s)| (o.clone(), s)).collect(),
                waiting: h.outbox_depths(),
                oldest_waiting: h.oldest_waiting(),
                equivocations: h.equivocations().len(),
            }),
            code,
        }
    }

    /// Members this node keeps a connection with, and whether each is up.
    fn peer_states(&self, dir: &TrustedDirectory, code: &OdsCode) -> Vec<PeerState> {
        let mut expected: Vec<(OdsCode, Role)> = match self.config.role {
            NodeRole::Authority => dir
                .member(code)
                .map(|m| m.home_hubs.iter().map(|h| (h.clone(), Role::Hub)).collect())
                .unwrap_or_default(),
            NodeRole::Hub => dir
                .members()
                .iter()
                .filter(|m| {
                    (m.role == Role::Hub && m.code != *code)
                        || (m.role == Role::Authority && m.home_hubs.contains(code))
                })
                .map(|m| (m.code.clone(), m.role))
                .collect(),
        };
        for (c, p) in &self.peers {
            if !expected.iter().any(|(e, _)| e == c) {
                expected.push((c.clone(), p.role));
            }
        }
        // Members seen since start that are no longer expected (settings only look up: they
        // are counted, not listed).
        for c in self.seen.keys() {
            let role = dir.member(c).map_or(Role::Setting, |m| m.role);
            if role != Role::Setting && !expected.iter().any(|(e, _)| e == c) {
                expected.push((c.clone(), role));
            }
        }
        expected
            .into_iter()
            .map(|(c, role)| {
                let conn = self.peers.get(&c);
                let connected = conn.is_some() || self.settings.values().any(|s| s.code == c);
                let seen = self.seen.get(&c);
                PeerState {
                    connected,
                    queued: conn.map_or(0, PeerConn::queued),
                    key: seen.map(|s| s.key.id()),
                    directory_version: seen.and_then(|s| s.directory_version),
                    code: c,
                    role,
                }
            })
            .collect()
    }
}
