//! Connections: accepting, dialling with capped jittered backoff, admitting peers against the
//! current directory, and moving frames between QUIC streams and the node's event loop.
//!
//! Between members (hub–hub, authority–hub) each side opens one unidirectional stream and writes
//! its frames in order on it. A care setting opens one bidirectional stream per lookup session and
//! reads the hub's replies on it.

use crate::runtime::Input;
use crate::transport::{self, read_frame, write_frame};
use cpis_protocol::directory::{Role, TrustedDirectory};
use cpis_protocol::ids::OdsCode;
use cpis_protocol::sign::PublicKey;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, FRAME_BYTES_MAX, Message};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Frames queued towards one peer before new ones are dropped (the protocol's anti-entropy and
/// retries recover anything dropped).
pub const PEER_QUEUE_FRAMES_MAX: usize = 8_192;
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

/// What every connection task shares.
#[derive(Clone)]
pub struct NetContext {
    pub me: OdsCode,
    pub directory: Arc<RwLock<TrustedDirectory>>,
    pub inputs: mpsc::Sender<Input>,
    pub shutdown: watch::Receiver<bool>,
    pub next_conn_id: Arc<AtomicU64>,
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
}

/// The admission check run inside the TLS handshake: any active key of any member.
pub fn admit_fn(directory: Arc<RwLock<TrustedDirectory>>) -> transport::Admit {
    Arc::new(move |key: &[u8; 32]| {
        let dir = directory.read().map_err(|_| "directory unavailable".to_string())?;
        dir.admit(&PublicKey(*key), now(), &[Role::Hub, Role::Authority, Role::Setting])
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
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
                    info!(%remote, reason = %e, "connection refused in handshake");
                    let _ = ctx.inputs.send(Input::Refused { reason: refusal_reason(&e.to_string()) }).await;
                }
            }
        });
    }
}

/// A short label for metrics from a handshake error.
fn refusal_reason(text: &str) -> &'static str {
    if text.contains("belongs to no member") {
        "unknown_key"
    } else if text.contains("not active") {
        "key_not_active"
    } else if text.contains("validity window") {
        "key_outside_window"
    } else {
        "handshake_failed"
    }
}

async fn serve_incoming(conn: quinn::Connection, ctx: NetContext, roles: &[Role]) {
    let (code, role, key) = match ctx.identify(&conn, roles) {
        Ok(who) => who,
        Err(reason) => {
            info!(remote = %conn.remote_address(), %reason, "connection refused after handshake");
            let _ = ctx.inputs.send(Input::Refused { reason: "role_not_allowed" }).await;
            conn.close(CLOSE_NOT_ADMITTED.into(), b"not admitted");
            return;
        }
    };
    if role == Role::Setting {
        serve_setting(conn, code, key, ctx).await;
    } else {
        run_member_session(conn, code, role, key, ctx).await;
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
    addr: SocketAddr,
    dial: Dial,
    backoff_ms: (u64, u64),
) {
    let mut shutdown = ctx.shutdown.clone();
    let (base_ms, cap_ms) = backoff_ms;
    let mut delay_ms = base_ms;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt =
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), transport::connect(&endpoint, addr));
        match attempt.await {
            Ok(Ok(conn)) => match ctx.identify(&conn, &[Role::Hub]) {
                Ok((code, role, key)) if code == peer => {
                    delay_ms = base_ms;
                    run_member_session(conn, code, role, key, ctx.clone()).await;
                }
                Ok((code, ..)) => {
                    warn!(%peer, %addr, found = %code, "the address answered with another member's key");
                    conn.close(CLOSE_NOT_ADMITTED.into(), b"unexpected member");
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
        let jitter = rand::random::<u64>() % (delay_ms / 2 + 1);
        let wait = Duration::from_millis(delay_ms / 2 + jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        delay_ms = (delay_ms * 2).min(cap_ms);
    }
}

/// A member connection: one outgoing and one incoming unidirectional stream.
async fn run_member_session(conn: quinn::Connection, peer: OdsCode, role: Role, key: PublicKey, ctx: NetContext) {
    let conn_id = ctx.conn_id();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(PEER_QUEUE_FRAMES_MAX);
    let connected = Input::Connected { peer: peer.clone(), role, conn_id, out: tx, key, conn: conn.clone() };
    if ctx.inputs.send(connected).await.is_err() {
        return;
    }
    info!(%peer, role = role.name(), "connected");
    let writer = tokio::spawn(write_frames_uni(conn.clone(), rx));
    let reason = read_member_frames(&conn, &peer, conn_id, &ctx).await;
    writer.abort();
    info!(%peer, %reason, "disconnected");
    let _ = ctx.inputs.send(Input::Disconnected { peer, conn_id }).await;
}

async fn write_frames_uni(conn: quinn::Connection, mut rx: mpsc::Receiver<Vec<u8>>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    while let Some(payload) = rx.recv().await {
        if write_frame(&mut send, &payload).await.is_err() {
            // A connection that can no longer carry our frames must not look alive.
            conn.close(CLOSE_BAD_FRAME.into(), b"stream failed");
            return;
        }
    }
}

/// Reads frames from the peer until the connection ends; returns why it ended.
async fn read_member_frames(conn: &quinn::Connection, peer: &OdsCode, conn_id: u64, ctx: &NetContext) -> String {
    let mut shutdown = ctx.shutdown.clone();
    let mut recv = tokio::select! {
        r = conn.accept_uni() => match r {
            Ok(r) => r,
            Err(e) => return e.to_string(),
        },
        _ = shutdown.changed() => return "shutting down".into(),
    };
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut recv, FRAME_BYTES_MAX) => f,
            _ = shutdown.changed() => return "shutting down".into(),
        };
        let message = match frame.map_err(|e| e.to_string()).and_then(|f| decode(f.as_deref())) {
            Ok(Some(m)) => m,
            Ok(None) => return "stream finished".into(),
            Err(reason) => {
                warn!(%peer, %reason, "bad frame: closing the connection");
                let _ = ctx.inputs.send(Input::Refused { reason: "bad_frame" }).await;
                conn.close(CLOSE_BAD_FRAME.into(), b"bad frame");
                return reason;
            }
        };
        if ctx.inputs.send(Input::Frame { from: peer.clone(), conn_id, message: Box::new(message) }).await.is_err() {
            return "node stopping".into();
        }
    }
}

fn decode(frame: Option<&[u8]>) -> Result<Option<Message>, String> {
    match frame {
        None => Ok(None),
        Some(bytes) => wire::decode_payload(bytes).map(Some).map_err(|e| e.to_string()),
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
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let connected =
        Input::Connected { peer: code.clone(), role: Role::Setting, conn_id, out: tx, key, conn: conn.clone() };
    if ctx.inputs.send(connected).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(payload) = rx.recv().await {
            if write_frame(&mut send, &payload).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    // A session is a Sync then a Lookup: at most a few frames.
    for _ in 0..4 {
        match read_frame(&mut recv, FRAME_BYTES_MAX).await.map_err(|e| e.to_string()).and_then(|f| decode(f.as_deref()))
        {
            Ok(Some(message)) => {
                if ctx
                    .inputs
                    .send(Input::Frame { from: code.clone(), conn_id, message: Box::new(message) })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(reason) => {
                warn!(setting = %code, %reason, "bad frame from a setting: closing the connection");
                let _ = ctx.inputs.send(Input::Refused { reason: "bad_frame" }).await;
                conn.close(CLOSE_BAD_FRAME.into(), b"bad frame");
                break;
            }
        }
    }
    // The event loop drops its sender once the session is answered (or the peer left).
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    let _ = ctx.inputs.send(Input::Disconnected { peer: code, conn_id }).await;
}
