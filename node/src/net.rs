//! Connections: accepting, dialling with capped jittered backoff, admitting peers against the
//! current directory, and moving frames between QUIC streams and the node's event loop.
//!
//! Between members (hub–hub, authority–hub) each side opens one unidirectional stream and writes
//! its frames in order on it. A care setting opens one bidirectional stream per lookup session and
//! reads the hub's replies on it.

use crate::inputs::{Delivered, Input, Link, PEER_INPUT_BYTES_MAX};
use crate::logs::{self, throttled};
use crate::transport::{self, FrameError, read_message, write_frame};
use cpis_protocol::directory::{AdmissionError, Role, TrustedDirectory};
use cpis_protocol::feed::SignedHead;
use cpis_protocol::ids::OdsCode;
use cpis_protocol::machine::{Command, Reply};
use cpis_protocol::sign::PublicKey;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, Message};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

/// Frames queued towards one peer before new ones are dropped (the protocol's anti-entropy and
/// retries recover anything dropped).
pub const PEER_QUEUE_FRAMES_MAX: usize = 8_192;
/// Bytes of frames queued towards one peer before new ones are dropped: a peer that reads slowly,
/// or not at all, holds at most this much of the node's memory.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;
/// A peer that takes none of a frame for this long is let go (a member reconnects and syncs).
const PEER_WRITE_STALL: Duration = Duration::from_secs(60);

/// Longest wait for a QUIC handshake when dialling.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// QUIC application error code: the peer sent bytes that are not a valid frame.
pub const CLOSE_BAD_FRAME: u32 = 1;
/// QUIC application error code: the peer's key is no longer admitted by the directory.
pub const CLOSE_NOT_ADMITTED: u32 = 2;
/// QUIC application error code: replaced by a newer connection from the same peer.
pub const CLOSE_REPLACED: u32 = 3;
/// QUIC application error code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 4;

/// A session with a member that lasts at least this long counts as a success: the next
/// redial starts again from the shortest delay. A shorter one (a refusal shows only on the first
/// stream in TLS 1.3) keeps backing off.
const SESSION_OK_MS: u64 = 10_000;
/// Frames a setting may send in one lookup session (a `Sync` and a `Lookup`).
const SETTING_SESSION_FRAMES_MAX: usize = 4;
/// A lookup session's frames all come within this (a setting sends them at once); a stream that
/// stays open longer is let go, so that idle streams cannot hold the hub's sessions.
const SETTING_SESSION_READ: Duration = Duration::from_secs(10);

/// The sending end of a connection's queue of frames, bounded in frames and in bytes.
#[derive(Clone, Debug)]
pub struct FrameSender {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl FrameSender {
    /// Queues a frame, or gives it back if the queue is full (in frames or in bytes) or closed.
    pub fn try_send(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > PEER_QUEUE_BYTES_MAX {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(frame);
        }
        self.tx.try_send(frame).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            e.into_inner()
        })
    }

    /// Frames queued now.
    pub fn frames(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The receiving end of [`FrameSender`]'s queue, held by the connection's writer.
pub struct FrameReceiver {
    rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl FrameReceiver {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }
}

/// A queue of at most `frames` frames and [`PEER_QUEUE_BYTES_MAX`] bytes.
pub fn frame_queue(frames: usize) -> (FrameSender, FrameReceiver) {
    let (tx, rx) = mpsc::channel(frames);
    let queued = Arc::new(AtomicUsize::new(0));
    (FrameSender { tx, queued: queued.clone() }, FrameReceiver { rx, queued })
}
/// What every connection task shares.
#[derive(Clone)]
pub struct NetContext {
    pub me: OdsCode,
    pub directory: Arc<RwLock<TrustedDirectory>>,
    pub inputs: mpsc::Sender<Input>,
    /// Bytes of decoded frames waiting for the event loop (see `inputs::INPUT_QUEUE_BYTES_MAX`).
    pub input_bytes: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub next_conn_id: Arc<AtomicU64>,
    /// How far this node holds each authority's feed (the event loop keeps it): a run it holds
    /// already is passed on unverified, for the loop to drop, rather than verified again.
    pub held: Arc<RwLock<HashMap<OdsCode, u64>>>,
    /// Members with a session open now, whichever side dialled: a dial loop does not open a
    /// second connection to a member that already has one (the newer would replace it, and
    /// whatever was on its way on the older would be sent again).
    pub member_sessions: Arc<Mutex<HashMap<OdsCode, u32>>>,
    /// The TLS client config for dialling members: as `admit_fn`, and also a key the directory
    /// does not know at all (see [`learn_directory`]).
    pub dial_config: quinn::ClientConfig,
}

/// The current time as a protocol timestamp.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Timestamp(ms)
}

impl NetContext {
    fn conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Who the peer of a finished handshake is, if its key is still admitted with one of `roles`.
    fn identify(&self, conn: &quinn::Connection, roles: &[Role]) -> Result<(OdsCode, Role, PublicKey), String> {
        let key = transport::peer_public_key(conn).map(PublicKey).ok_or("no peer key")?;
        let dir = self.directory.read().map_err(|_| "directory lock poisoned")?;
        let member = dir.admit(&key, now(), roles).map_err(|e| e.to_string())?;
        Ok((member.code.clone(), member.role, key))
    }

    fn has_session(&self, peer: &OdsCode) -> bool {
        self.member_sessions.lock().is_ok_and(|s| s.contains_key(peer))
    }

    /// Whether the peer's key is not in our directory at all.
    fn key_unknown(&self, conn: &quinn::Connection) -> bool {
        let Some(key) = transport::peer_public_key(conn).map(PublicKey) else { return false };
        let Ok(dir) = self.directory.read() else { return false };
        matches!(dir.admit(&key, now(), &[Role::Hub]), Err(AdmissionError::UnknownKey(_)))
    }
}

/// Longest wait for a hub with a key new to us to pass on its directory.
const LEARN_TIMEOUT_MS: u64 = 5_000;
/// Frames read from such a hub while waiting for its directory (it may send others first).
const LEARN_FRAMES_MAX: usize = 16;

/// Asks a hub whose key our directory does not know for the directory versions we lack, by a
/// `Sync` with our version and no marks; nothing else is sent, and nothing else it sends is
/// used. The versions must chain from the directory we trust (signed by its roots) and show the
/// key the hub presented as an active key of `peer`; then the event loop takes them like a
/// published directory. Returns the version now trusted.
async fn learn_directory(conn: &quinn::Connection, peer: &OdsCode, ctx: &NetContext) -> Result<u64, String> {
    let key = transport::peer_public_key(conn).map(PublicKey).ok_or("no peer key")?;
    let trusted = ctx.directory.read().map_err(|_| "directory lock poisoned")?.clone();
    let learn = async {
        let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
        let sync = Message::Sync { directory_version: trusted.version(), marks: vec![] };
        write_frame(&mut send, &wire::encode_frame(&sync)).await.map_err(|e| e.to_string())?;
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        for _ in 0..LEARN_FRAMES_MAX {
            match read_message(&mut recv).await.map_err(|e| e.to_string())? {
                Some(Message::Directories(chain)) => return Ok(chain),
                Some(_) => continue,
                None => break,
            }
        }
        Err(format!("its key {} is not in our directory and it passed on no newer one", key.id()))
    };
    let chain = tokio::time::timeout(Duration::from_millis(LEARN_TIMEOUT_MS), learn)
        .await
        .map_err(|_| format!("its key {} is not in our directory and it passed on no newer one in time", key.id()))??;
    let held = trusted.version();
    let mut newer = trusted;
    for signed in chain.iter().filter(|d| d.directory.version > held).cloned() {
        newer = newer.accept_update(signed, now()).map_err(|e| format!("it passed on a directory we refuse: {e}"))?;
    }
    match newer.admit(&key, now(), &[Role::Hub]) {
        Ok(member) if member.code == *peer => {}
        Ok(member) => return Err(format!("its key belongs to {}, not {peer}", member.code)),
        Err(e) => return Err(format!("its key is not admitted by the newer directory either: {e}")),
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Input::Command { command: Command::PublishDirectories(chain), reply };
    ctx.inputs.send(command).await.map_err(|_| "node stopping")?;
    match answer.await.map_err(|_| "node stopping")? {
        Reply::Directory { version } => Ok(version),
        Reply::Refused(e) => Err(format!("the node refused the directory: {e}")),
        _ => Err("the node gave an unexpected reply to a directory".into()),
    }
}

/// The admission check run inside the TLS handshake: any active key of any member. Each
/// refusal is counted (by its kind) through `inputs`.
pub fn admit_fn(directory: Arc<RwLock<TrustedDirectory>>, inputs: mpsc::Sender<Input>) -> transport::Admit {
    Arc::new(move |key: &[u8; 32]| {
        let dir = directory.read().map_err(|_| "directory unavailable".to_string())?;
        dir.admit(&PublicKey(*key), now(), &[Role::Hub, Role::Authority, Role::Setting]).map(|_| ()).map_err(|e| {
            let _ = inputs.try_send(Input::Refused { reason: admission_label(&e) });
            e.to_string()
        })
    })
}

/// The admission check for dialling a member: any active key of a member, or a key the directory
/// does not know at all (a hub that rotated its key since our copy of the directory). Such a
/// connection carries nothing but a request for newer directory versions: see
/// [`learn_directory`].
pub fn dial_admit_fn(directory: Arc<RwLock<TrustedDirectory>>) -> transport::Admit {
    Arc::new(move |key: &[u8; 32]| {
        let dir = directory.read().map_err(|_| "directory unavailable".to_string())?;
        match dir.admit(&PublicKey(*key), now(), &[Role::Hub, Role::Authority, Role::Setting]) {
            Ok(_) | Err(AdmissionError::UnknownKey(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// A short label for metrics of why a key was not admitted.
pub fn admission_label(e: &AdmissionError) -> &'static str {
    match e {
        AdmissionError::UnknownKey(_) => "unknown_key",
        AdmissionError::NotActive { .. } => "key_not_active",
        AdmissionError::OutsideWindow { .. } => "key_outside_window",
        AdmissionError::WrongRole { .. } => "role_not_allowed",
        AdmissionError::DirectoryExpired => "directory_expired",
    }
}

/// Accepts connections until shutdown: hubs take hubs, authorities and settings.
pub async fn accept_loop(endpoint: quinn::Endpoint, ctx: NetContext, roles: &'static [Role]) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_incoming(conn, ctx, roles).await,
                Err(e) => {
                    throttled!(
                        logs::CONNECTION_REFUSED,
                        info!(%remote, reason = %e, "connection refused in handshake")
                    );
                    let _ = ctx.inputs.send(Input::Refused { reason: "handshake_failed" }).await;
                }
            }
        });
    }
}

async fn serve_incoming(conn: quinn::Connection, ctx: NetContext, roles: &[Role]) {
    let (code, role, key) = match ctx.identify(&conn, roles) {
        Ok(who) => who,
        Err(reason) => {
            throttled!(
                logs::CONNECTION_REFUSED,
                info!(remote = %conn.remote_address(), %reason, "connection refused after handshake")
            );
            let _ = ctx.inputs.send(Input::Refused { reason: "role_not_allowed" }).await;
            conn.close(CLOSE_NOT_ADMITTED.into(), b"not admitted");
            return;
        }
    };
    if role == Role::Setting {
        serve_setting(conn, code, key, ctx).await;
    } else {
        run_member_session(conn, code, key, ctx).await;
    }
}

/// Whether to keep a connection open or dial just once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Redial whenever the connection ends.
    Keep,
    /// One attempt (the session runs until it ends).
    Once,
}

/// Keeps a connection to `peer` open (or dials it once), redialling with capped, jittered
/// backoff (`backoff_ms` = base, cap) until shutdown.
pub async fn dial_loop(
    endpoint: quinn::Endpoint,
    ctx: NetContext,
    peer: OdsCode,
    address: DialAddress,
    dial: Dial,
    backoff_ms: (u64, u64),
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut backoff = Backoff::new(backoff_ms);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if ctx.has_session(&peer) {
            // The peer dialled us: that connection serves; look again later.
            if dial == Dial::Once {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(backoff_ms.0)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        let Some(addr) = address.resolve().await else {
            warn!(%peer, "none of the hub's addresses in the directory could be looked up");
            if dial == Dial::Once {
                return;
            }
            let wait = backoff.next_wait(rand::random());
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = shutdown.changed() => return,
            }
        };
        let connect = transport::connect_with(&endpoint, ctx.dial_config.clone(), addr);
        let attempt = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect);
        match attempt.await {
            Ok(Ok(conn)) => match ctx.identify(&conn, &[Role::Hub]) {
                Ok((code, _, key)) if code == peer => {
                    let started = Instant::now();
                    run_member_session(conn, code, key, ctx.clone()).await;
                    backoff.session_ended(started.elapsed());
                }
                Ok((code, ..)) => {
                    warn!(%peer, %addr, found = %code, "the address answered with another member's key");
                    conn.close(CLOSE_NOT_ADMITTED.into(), b"unexpected member");
                }
                Err(_) if ctx.key_unknown(&conn) => {
                    let learned = learn_directory(&conn, &peer, &ctx).await;
                    conn.close(CLOSE_NOT_ADMITTED.into(), b"directory learned");
                    match learned {
                        Ok(version) => {
                            info!(%peer, version, "the hub's key is new to us: took the newer directory it passed on");
                            continue;
                        }
                        Err(reason) => warn!(%peer, %addr, %reason, "peer not admitted"),
                    }
                }
                Err(reason) => {
                    warn!(%peer, %addr, %reason, "peer not admitted");
                    conn.close(CLOSE_NOT_ADMITTED.into(), b"not admitted");
                }
            },
            Ok(Err(e)) => debug!(%peer, %addr, error = %e, "dial failed"),
            Err(_) => debug!(%peer, %addr, "dial timed out"),
        }
        if dial == Dial::Once {
            return;
        }
        let wait = backoff.next_wait(rand::random());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Where a hub is dialled: the address its config gives, or the names the directory lists, looked
/// up at each attempt (in the dialling task: a slow DNS never holds the event loop).
#[derive(Clone, Debug)]
pub enum DialAddress {
    Fixed(SocketAddr),
    Listed(Vec<String>),
}

impl DialAddress {
    /// The first address a name gives, each name looked up within [`CONNECT_TIMEOUT_MS`].
    async fn resolve(&self) -> Option<SocketAddr> {
        let names = match self {
            DialAddress::Fixed(addr) => return Some(*addr),
            DialAddress::Listed(names) => names,
        };
        for name in names {
            let lookup = tokio::net::lookup_host(name.as_str());
            if let Ok(Ok(mut addrs)) = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), lookup).await
                && let Some(addr) = addrs.next()
            {
                return Some(addr);
            }
        }
        None
    }
}

/// The redial delay: doubles from `base` up to `cap` after every attempt, and starts again
/// from `base` only after a session that lasted [`SESSION_OK_MS`] (a peer that admits the
/// connection and then refuses it at once is backed off like one that cannot be reached).
#[derive(Clone, Copy, Debug)]
struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    delay_ms: u64,
}

impl Backoff {
    fn new((base_ms, cap_ms): (u64, u64)) -> Backoff {
        Backoff { base_ms, cap_ms: cap_ms.max(base_ms), delay_ms: base_ms }
    }

    fn session_ended(&mut self, lasted: Duration) {
        if lasted >= Duration::from_millis(SESSION_OK_MS) {
            self.delay_ms = self.base_ms;
        }
    }

    /// The wait before the next attempt: half the delay plus up to half again of jitter.
    fn next_wait(&mut self, random: u64) -> Duration {
        let wait = self.delay_ms / 2 + random % (self.delay_ms / 2 + 1);
        self.delay_ms = self.delay_ms.saturating_mul(2).min(self.cap_ms);
        Duration::from_millis(wait)
    }
}

/// A member connection: one outgoing and one incoming unidirectional stream.
async fn run_member_session(conn: quinn::Connection, peer: OdsCode, key: PublicKey, ctx: NetContext) {
    let _open = SessionOpen::new(&ctx, &peer);
    let conn_id = ctx.conn_id();
    let (tx, rx) = frame_queue(PEER_QUEUE_FRAMES_MAX);
    let connected =
        Input::Connected { peer: peer.clone(), key, conn_id, link: Link::Member, out: tx, conn: conn.clone() };
    if ctx.inputs.send(connected).await.is_err() {
        return;
    }
    info!(%peer, "connected");
    let writer = tokio::spawn(write_frames_uni(conn.clone(), rx, PEER_WRITE_STALL));
    let reason = read_member_frames(&conn, &peer, conn_id, &ctx).await;
    writer.abort();
    info!(%peer, %reason, "disconnected");
    let _ = ctx.inputs.send(Input::Disconnected { peer, conn_id }).await;
}

/// Counts a member's session in [`NetContext::member_sessions`] for as long as it lives.
struct SessionOpen {
    sessions: Arc<Mutex<HashMap<OdsCode, u32>>>,
    peer: OdsCode,
}

impl SessionOpen {
    fn new(ctx: &NetContext, peer: &OdsCode) -> SessionOpen {
        if let Ok(mut s) = ctx.member_sessions.lock() {
            *s.entry(peer.clone()).or_default() += 1;
        }
        SessionOpen { sessions: ctx.member_sessions.clone(), peer: peer.clone() }
    }
}

impl Drop for SessionOpen {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sessions.lock()
            && let Some(n) = s.get_mut(&self.peer)
        {
            *n -= 1;
            if *n == 0 {
                s.remove(&self.peer);
            }
        }
    }
}

/// Writes the queue's frames to a stream of their own, until the queue closes or `stall` passes
/// with the peer taking none of a frame ([`PEER_WRITE_STALL`]).
async fn write_frames_uni(conn: quinn::Connection, mut rx: FrameReceiver, stall: Duration) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    while let Some(frame) = rx.recv().await {
        if !matches!(tokio::time::timeout(stall, write_frame(&mut send, &frame)).await, Ok(Ok(()))) {
            // A connection that can no longer carry our frames (or whose peer takes none) must
            // not look alive.
            conn.close(CLOSE_BAD_FRAME.into(), b"stream failed or stalled");
            return;
        }
    }
}

/// Hands a frame of `size` bytes to the event loop, once the connection's and the node's byte
/// budgets have room for it.
async fn deliver(
    ctx: &NetContext,
    own: &Arc<Semaphore>,
    from: &OdsCode,
    conn_id: u64,
    (message, size): (Box<Delivered>, usize),
) -> Result<(), ()> {
    let bytes = u32::try_from(size).unwrap_or(u32::MAX).max(1);
    let mine = own.clone().acquire_many_owned(bytes).await.map_err(|_| ())?;
    let node = ctx.input_bytes.clone().acquire_many_owned(bytes).await.map_err(|_| ())?;
    let input = Input::Frame { from: from.clone(), conn_id, message, _bytes: [mine, node] };
    ctx.inputs.send(input).await.map_err(|_| ())
}

/// A setting's lookup checked here, beside the event loop, with the key the directory lists for
/// the setting under the lookup's key id. Anything else, or a lookup that does not verify, goes
/// to the loop as it came (the hub refuses it there, with its reason).
fn pre_verify(ctx: &NetContext, from: &OdsCode, message: Message) -> Delivered {
    let Message::Lookup(signed) = message else { return Delivered::Message(message) };
    let checked = match ctx.directory.read() {
        Ok(dir) => dir.verify_signature_only(from, signed),
        Err(_) => Err(signed),
    };
    match checked {
        Ok(verified) => Delivered::VerifiedLookup(verified),
        Err(signed) => Delivered::Message(Message::Lookup(signed)),
    }
}

fn connection_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(PEER_INPUT_BYTES_MAX))
}

/// Reads frames from the peer until the connection ends; returns why it ended. Feed batches have
/// their signatures checked here, beside the event loop, a few at once on the blocking pool (so
/// that a hub catching up verifies on every core); frames reach the loop in the order they came.
async fn read_member_frames(conn: &quinn::Connection, peer: &OdsCode, conn_id: u64, ctx: &NetContext) -> String {
    let mut shutdown = ctx.shutdown.clone();
    let mut recv = tokio::select! {
        r = conn.accept_uni() => match r {
            Ok(r) => r,
            Err(e) => return e.to_string(),
        },
        _ = shutdown.changed() => return "shutting down".into(),
    };
    let (tx, mut rx) = mpsc::channel::<(Checking, usize)>(BATCHES_VERIFYING_MAX);
    let deliverer = async move {
        let own = connection_budget();
        while let Some((checking, size)) = rx.recv().await {
            let delivered = match checking {
                Checking::Done(d) => d,
                Checking::Pending(task) => Box::new(task.await.map_err(|_| ())?),
            };
            deliver(ctx, &own, peer, conn_id, (delivered, size)).await?;
        }
        Ok::<(), ()>(())
    };
    let reader = async move {
        loop {
            let frame = tokio::select! {
                f = transport::read_frame(&mut recv) => f,
                _ = shutdown.changed() => return "shutting down".into(),
            };
            let (message, size) = match frame {
                Ok(Some(m)) => m,
                Ok(None) => return "stream finished".into(),
                Err(FrameError::Read(e)) => return e.to_string(),
                Err(e) => {
                    let reason = e.to_string();
                    throttled!(logs::BAD_FRAME, warn!(%peer, %reason, "bad frame: closing the connection"));
                    let _ = ctx.inputs.send(Input::BadFrame).await;
                    conn.close(CLOSE_BAD_FRAME.into(), b"bad frame");
                    return reason;
                }
            };
            if tx.send((check_member_frame(ctx, message), size)).await.is_err() {
                return "node stopping".to_string();
            }
        }
    };
    let (reason, delivered) = tokio::join!(reader, deliverer);
    if delivered.is_err() { "node stopping".into() } else { reason }
}

/// Feed batches whose signatures are being checked at once, per connection, on top of the one
/// waiting for the event loop.
const BATCHES_VERIFYING_MAX: usize = 2;
/// A batch this short is checked in the connection's task rather than on the blocking pool.
const BATCH_VERIFIED_INLINE_MAX: usize = 16;

/// A frame on its way to the event loop.
enum Checking {
    Done(Box<Delivered>),
    Pending(tokio::task::JoinHandle<Delivered>),
}

/// A feed batch's signatures checked with the directory's keys, and a head's; anything else
/// passes as it came.
fn check_member_frame(ctx: &NetContext, message: Message) -> Checking {
    let batch = match message {
        Message::Feed(batch) => batch,
        Message::Head(head) => return Checking::Done(Box::new(check_head(ctx, head))),
        message => return Checking::Done(Box::new(Delivered::Message(message))),
    };
    let held = ctx.held.read().is_ok_and(|h| h.get(&batch.origin).is_some_and(|seq| *seq >= batch.upto));
    if held {
        return Checking::Done(Box::new(Delivered::Message(Message::Feed(batch))));
    }
    let inline = batch.entries.len() <= BATCH_VERIFIED_INLINE_MAX;
    let directory = ctx.directory.clone();
    let check = move || match directory.read() {
        Ok(dir) => match batch.verify_signatures(&dir) {
            Ok(verified) => Delivered::VerifiedFeed(verified),
            Err(batch) => Delivered::Message(Message::Feed(batch)),
        },
        Err(_) => Delivered::Message(Message::Feed(batch)),
    };
    if inline { Checking::Done(Box::new(check())) } else { Checking::Pending(tokio::task::spawn_blocking(check)) }
}

/// An authority's head checked with the key the directory lists for its origin; as it came if
/// there is none or the signature does not hold (the machine refuses it with its reason).
fn check_head(ctx: &NetContext, head: SignedHead) -> Delivered {
    let origin = head.body.origin.clone();
    let checked = match ctx.directory.read() {
        Ok(dir) => dir.verify_signature_only(&origin, head),
        Err(_) => Err(head),
    };
    match checked {
        Ok(verified) => Delivered::VerifiedHead(verified),
        Err(head) => Delivered::Message(Message::Head(head)),
    }
}

/// A care setting's connection: each bidirectional stream is one lookup session.
async fn serve_setting(conn: quinn::Connection, code: OdsCode, key: PublicKey, ctx: NetContext) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = shutdown.changed() => return,
        };
        let Ok((send, recv)) = stream else { return };
        tokio::spawn(setting_session(conn.clone(), code.clone(), key, send, recv, ctx.clone()));
    }
}

async fn setting_session(
    conn: quinn::Connection,
    code: OdsCode,
    key: PublicKey,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: NetContext,
) {
    let conn_id = ctx.conn_id();
    let (tx, mut rx) = frame_queue(64);
    let connected =
        Input::Connected { peer: code.clone(), key, conn_id, link: Link::Setting, out: tx, conn: conn.clone() };
    if ctx.inputs.send(connected).await.is_err() {
        return;
    }
    let mut writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    // A session is a Sync then a Lookup: at most a few frames; one more closes the connection.
    let own = connection_budget();
    let reading = read_setting_session(&conn, &code, conn_id, &mut recv, &own, &ctx);
    if tokio::time::timeout(SETTING_SESSION_READ, reading).await.is_ok() {
        // The event loop drops its sender once the session is answered (or the peer left); a
        // setting that does not take its answer is let go.
        if tokio::time::timeout(Duration::from_secs(30), &mut writer).await.is_err() {
            writer.abort();
        }
    } else {
        throttled!(
            logs::SESSION_TURNED_AWAY,
            warn!(setting = %code, "a lookup session's frames did not all come within 10 s: let go")
        );
        let _ = ctx.inputs.send(Input::Refused { reason: "setting_session_frames_late" }).await;
        writer.abort();
    }
    let _ = ctx.inputs.send(Input::Disconnected { peer: code, conn_id }).await;
}

/// Reads a lookup session's frames (at most [`SETTING_SESSION_FRAMES_MAX`]) and hands them on.
async fn read_setting_session(
    conn: &quinn::Connection,
    code: &OdsCode,
    conn_id: u64,
    recv: &mut quinn::RecvStream,
    own: &Arc<Semaphore>,
    ctx: &NetContext,
) {
    for read in 0..=SETTING_SESSION_FRAMES_MAX {
        match transport::read_frame(recv).await {
            Ok(Some(_)) if read == SETTING_SESSION_FRAMES_MAX => {
                throttled!(
                    logs::BAD_FRAME,
                    warn!(setting = %code, "more frames than a lookup session holds: closing the connection")
                );
                let _ = ctx.inputs.send(Input::BadFrame).await;
                conn.close(CLOSE_BAD_FRAME.into(), b"too many frames");
                break;
            }
            Ok(Some((message, size))) => {
                let delivered = pre_verify(ctx, code, message);
                if deliver(ctx, own, code, conn_id, (Box::new(delivered), size)).await.is_err() {
                    break;
                }
            }
            Ok(None) | Err(FrameError::Read(_)) => break,
            Err(e) => {
                throttled!(
                    logs::BAD_FRAME,
                    warn!(setting = %code, reason = %e, "bad frame from a setting: closing the connection")
                );
                let _ = ctx.inputs.send(Input::BadFrame).await;
                conn.close(CLOSE_BAD_FRAME.into(), b"bad frame");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A peer that reads nothing holds at most [`PEER_QUEUE_BYTES_MAX`] of frames (and at most
    /// the queue's frames); what its writer takes is freed.
    #[tokio::test]
    async fn a_frame_queue_holds_at_most_its_bytes_and_frames_freed_as_its_writer_takes_them() {
        let (tx, mut rx) = frame_queue(PEER_QUEUE_FRAMES_MAX);
        let frame = vec![0u8; 4 << 20];
        for _ in 0..PEER_QUEUE_BYTES_MAX / frame.len() {
            tx.try_send(frame.clone()).unwrap();
        }
        assert!(tx.try_send(vec![0]).is_err(), "64 MiB queued: one byte more is refused");
        assert_eq!(tx.frames(), 16);
        assert_eq!(rx.recv().await.map(|f| f.len()), Some(frame.len()));
        assert!(tx.try_send(frame.clone()).is_ok(), "a frame taken frees its bytes");
        assert!(tx.try_send(vec![0]).is_err());
        let (tx, _rx) = frame_queue(2);
        assert!(tx.try_send(vec![0]).is_ok() && tx.try_send(vec![0]).is_ok());
        assert_eq!(tx.try_send(vec![7]), Err(vec![7]), "two frames queued: a third is given back");
    }

    /// A peer that takes none of our frames is disconnected once a frame has waited the stall;
    /// one that reads them is not.
    #[tokio::test]
    async fn a_peer_that_takes_none_of_a_frame_for_the_stall_is_disconnected() {
        let stall = Duration::from_secs(2);
        let (_a, _b, client, server) = transport::tests::pair().await;
        let (tx, rx) = frame_queue(PEER_QUEUE_FRAMES_MAX);
        let writer = tokio::spawn(write_frames_uni(client.clone(), rx, stall));
        // More than the stream's receive window and our send buffer, which a peer that reads
        // nothing fills.
        for _ in 0..32 {
            tx.try_send(vec![0u8; 1 << 20]).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), writer).await.expect("the writer gave up").unwrap();
        match client.close_reason() {
            Some(quinn::ConnectionError::LocallyClosed) => {}
            other => panic!("closed by us for the stall: {other:?}"),
        }
        drop(server);

        let (_a, _b, client, server) = transport::tests::pair().await;
        let (tx, rx) = frame_queue(PEER_QUEUE_FRAMES_MAX);
        let writer = tokio::spawn(write_frames_uni(client.clone(), rx, stall));
        let reader = tokio::spawn(async move {
            let mut recv = server.accept_uni().await.unwrap();
            let mut all = vec![0u8; 32 << 20];
            recv.read_exact(&mut all).await.is_ok()
        });
        for _ in 0..32 {
            tx.try_send(vec![0u8; 1 << 20]).unwrap();
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), writer).await.expect("the writer finished").unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the reader ended").unwrap();
        assert!(read, "every frame came");
        assert!(client.close_reason().is_none(), "a peer that reads stays connected");
    }

    /// A hub's address is looked up in the dialling task, the first name that gives one used.
    #[tokio::test]
    async fn a_hubs_listed_names_are_looked_up_in_turn_a_fixed_address_is_itself() {
        let fixed: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(DialAddress::Fixed(fixed).resolve().await, Some(fixed));
        let listed = DialAddress::Listed(vec!["a name without a port".into(), "localhost:4433".into()]);
        let found = listed.resolve().await.expect("localhost is looked up");
        assert!(found.ip().is_loopback() && found.port() == 4433, "{found}");
        assert_eq!(DialAddress::Listed(vec!["no port".into()]).resolve().await, None);
    }

    fn waits(backoff: &mut Backoff, n: usize, random: u64) -> Vec<u64> {
        (0..n).map(|_| backoff.next_wait(random).as_millis() as u64).collect()
    }

    #[test]
    fn refused_dials_back_off_to_the_cap_and_stay_there() {
        let mut backoff = Backoff::new((100, 2_000));
        // With no jitter each wait is half the delay, which doubles up to the cap.
        assert_eq!(waits(&mut backoff, 7, 0), [50, 100, 200, 400, 800, 1_000, 1_000]);
        // A session refused at once (the peer admitted the handshake, then closed) is no reset.
        backoff.session_ended(Duration::from_millis(30));
        assert_eq!(waits(&mut backoff, 2, 0), [1_000, 1_000]);
    }

    #[test]
    fn a_session_that_lasted_starts_the_backoff_again() {
        let mut backoff = Backoff::new((100, 2_000));
        waits(&mut backoff, 6, 0);
        backoff.session_ended(Duration::from_millis(SESSION_OK_MS));
        assert_eq!(waits(&mut backoff, 1, 0), [50]);
    }

    #[test]
    fn jitter_stays_within_the_delay() {
        let mut backoff = Backoff::new((100, 400));
        for random in [0, 1, 49, 50, 51, u64::MAX] {
            let mut b = backoff;
            let wait = b.next_wait(random).as_millis() as u64;
            assert!((50..=100).contains(&wait), "{wait}");
        }
        let capped = *waits(&mut backoff, 4, u64::MAX).last().unwrap();
        assert!((200..=400).contains(&capped), "{capped}");
    }
}
