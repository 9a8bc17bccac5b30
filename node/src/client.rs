//! The care setting's lookup client: one signed lookup, asked of the setting's home hubs first and
//! then of every other hub, with each answer verified end to end before anything is shown.
//!
//! A care setting runs no daemon. [`lookup`] reads the setting's key and directory (from a
//! [`SettingConfig`]), signs one access event with a fresh random lookup id, and tries the hubs
//! in order: the setting's home hubs in the order the directory lists them, then the other hubs
//! in directory order. Each address gets `hub_timeout_ms` for the whole session. The same signed
//! lookup goes to every hub tried, so that if two hubs both record it, the owning authority
//! still keeps one notification (notifications are deduplicated by lookup id).
//!
//! **One session** is a QUIC connection with mutual TLS (the setting's key on our side; on the
//! other side the key must be an active key of the very hub we dialled), and on it one
//! bidirectional stream: we write `Sync { directory_version, have: [] }` and `Lookup(signed)`,
//! finish our side, then read frames until `Answer` or `Refused`. A `Directories` reply is
//! applied and the newer directory saved to the setting's directory file.
//!
//! What can go wrong per hub (unreachable, timed out, protocol error, an answer that does not
//! verify, a hub that says it cannot answer now because its own key is not active) is recorded
//! and the next hub is tried; any other refusal ends the lookup, since every hub applies the same
//! rules. Nothing unverified is ever returned.
//!
//! ```no_run
//! # async fn example() -> Result<(), cpis_node::client::ClientError> {
//! use cpis_node::client::{LookupRequest, lookup};
//! use cpis_node::config::SettingConfig;
//! use cpis_protocol::ids::NhsNumber;
//! use cpis_protocol::records::Person;
//!
//! let config = SettingConfig::load(std::path::Path::new("setting.toml"))?;
//! let nhs = NhsNumber::parse("943 476 5919").expect("a valid NHS number");
//! let person = Person { id: "N123".into(), name: "A Nurse".into(), role: "Nurse".into() };
//! let outcome = lookup(&config, LookupRequest { nhs, person }).await?;
//! println!("{} plans, answered by {}", outcome.answer.plans().count(), outcome.answer.hub);
//! # Ok(()) }
//! ```

use crate::config::{ConfigError, SettingConfig, read_directory, read_key, write_directory};
use crate::transport::{self, FrameError, TransportError, read_message as read_frame_message, write_frame};
use cpis_protocol::directory::{AdmissionError, DirectoryError, Role, TrustedDirectory};
use cpis_protocol::feed::{FeedHead, SignedHead, verify_head};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode};
use cpis_protocol::records::{AccessEvent, LookupKind, Person, SettingType, TextError};
use cpis_protocol::refusal::RefusalCode;
use cpis_protocol::setting::{Setting, VerifiedAnswer};
use cpis_protocol::sign::{Identity, PublicKey, Signed, Verified};
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, Message};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most frames read in one session before the hub is deemed to misbehave.
pub const SESSION_FRAMES_MAX: usize = 16;
/// Longest wait for a closed connection to drain before the client returns.
const CLOSE_WAIT_MS: u64 = 100;

/// What to look up, and who is looking. Whether the lookup notifies follows the setting's type
/// in the directory; nobody chooses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    pub nhs: NhsNumber,
    pub person: Person,
}

/// Why one hub (at one address) gave no usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The address did not resolve, or the connection could not be made or was refused.
    Unreachable,
    /// No answer within `hub_timeout_ms`.
    TimedOut,
    /// The hub broke the session protocol (bad frame, stream ended early, wrong message).
    Protocol,
    /// The hub answered, but the answer did not verify: it was not shown.
    Unverified,
    /// The hub cannot answer now (its own key is not active) and said so.
    Unavailable,
}

impl FailureKind {
    /// A stable name for machine-readable output.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::TimedOut => "timed-out",
            FailureKind::Protocol => "protocol",
            FailureKind::Unverified => "unverified",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

/// One hub tried without a usable answer, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubFailure {
    pub hub: OdsCode,
    /// The address tried (`host:port`), if the hub has one.
    pub address: Option<String>,
    pub kind: FailureKind,
    pub reason: String,
}

impl fmt::Display for HubFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(a) => write!(f, "hub {} at {a}: {}", self.hub, self.reason),
            None => write!(f, "hub {}: {}", self.hub, self.reason),
        }
    }
}

/// A verified answer, with which hub gave it and which failed before it.
#[derive(Clone, Debug)]
pub struct LookupOutcome {
    /// Every record in it was verified against the directory.
    pub answer: VerifiedAnswer,
    pub lookup_id: LookupId,
    pub kind: LookupKind,
    /// The name of the hub that answered, from the directory.
    pub hub_name: String,
    pub hub_address: SocketAddr,
    /// Hubs tried first, in order, and why each gave nothing.
    pub failed: Vec<HubFailure>,
    /// The directory version the answer was checked against.
    pub directory_version: u64,
    /// Set when a hub passed on a newer directory and it was saved to the directory file.
    pub directory_saved: Option<u64>,
    /// Things worth telling the operator that did not stop the lookup.
    pub warnings: Vec<String>,
    /// When the lookup was signed.
    pub at: Timestamp,
}

/// Why a lookup gave no answer. Nothing is shown in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The setting's config, key file or directory file cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The directory file does not verify (expired, or not signed by enough root keys).
    #[error(
        "the directory file {path} cannot be trusted: {source}; ask the federation administrator for a current one"
    )]
    Directory { path: PathBuf, source: DirectoryError },
    /// The config's code is not a care setting of the directory.
    #[error(
        "{code} is not a care setting in directory version {version}: check `code` in the setting config, or ask the administrator to enrol it"
    )]
    NotASetting { code: String, version: u64 },
    /// The key file holds a key the directory does not admit for this setting now.
    #[error(
        "the setting's key {key_id} is not admitted by directory version {version} ({reason}): check `key_file`, or ask the administrator"
    )]
    KeyNotAdmitted { key_id: String, version: u64, reason: String },
    /// The person's id, name or role breaks a rule (the error names the field).
    #[error("{0}")]
    Request(#[from] TextError),
    /// The directory lists no hub at all.
    #[error("the directory lists no hub: there is nobody to ask")]
    NoHubs,
    /// Every hub was tried and none answered; each is listed with why.
    #[error("no hub could be reached: {}", list(failures))]
    AllHubsUnreachable { failures: Vec<HubFailure> },
    /// At least one hub answered but no answer verified, so nothing is shown; each hub is listed.
    #[error("no hub gave an answer that verifies (nothing is shown): {}", list(failures))]
    AnswerUnverified { failures: Vec<HubFailure> },
    /// A hub refused the lookup; every hub applies the same rules, so no other is asked.
    #[error("hub {hub} refused the lookup: {code}")]
    Refused { hub: OdsCode, code: RefusalCode, failed: Vec<HubFailure> },
    /// The QUIC client could not be set up (TLS configuration or local socket).
    #[error("cannot set up the QUIC client: {0}")]
    Transport(#[from] TransportError),
}

fn list(failures: &[HubFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A hub to try, with its addresses in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubTarget {
    pub code: OdsCode,
    pub name: String,
    pub addresses: Vec<String>,
    /// One of the setting's home hubs.
    pub home: bool,
}

/// The hubs to try, in order: the setting's home hubs as the directory lists them, then every
/// other hub in directory order. Addresses come from `overrides` when it names the hub.
pub fn hub_targets(
    directory: &TrustedDirectory,
    setting: &OdsCode,
    overrides: &std::collections::BTreeMap<String, SocketAddr>,
) -> Vec<HubTarget> {
    let homes: Vec<OdsCode> = directory.member(setting).map(|m| m.home_hubs.clone()).unwrap_or_default();
    let target = |code: &OdsCode, home: bool| {
        let member = directory.member(code).filter(|m| m.role == Role::Hub)?;
        let addresses = match overrides.get(code.as_str()) {
            Some(addr) => vec![addr.to_string()],
            None => member.addresses.clone(),
        };
        Some(HubTarget { code: code.clone(), name: member.name.clone(), addresses, home })
    };
    let mut targets: Vec<HubTarget> = homes.iter().filter_map(|h| target(h, true)).collect();
    for hub in directory.with_role(Role::Hub) {
        if !homes.contains(&hub.code) {
            targets.extend(target(&hub.code, false));
        }
    }
    targets
}

/// The current time as a protocol timestamp.
fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

/// Loads the setting's key and directory and checks that they fit together.
fn load_setting(config: &SettingConfig, now: Timestamp) -> Result<(Setting, [u8; 32]), ClientError> {
    let seed = read_key(&config.key_file)?;
    let signed = read_directory(&config.directory_file)?;
    let trusted = TrustedDirectory::bootstrap(signed, now)
        .map_err(|source| ClientError::Directory { path: config.directory_file.clone(), source })?;
    let version = trusted.version();
    let code = OdsCode::parse(&config.code)
        .ok()
        .filter(|c| trusted.member(c).is_some_and(|m| m.role == Role::Setting))
        .ok_or_else(|| ClientError::NotASetting { code: config.code.clone(), version })?;
    let identity = Identity::from_seed(seed);
    let admitted = trusted
        .admit(&identity.public(), now, &[Role::Setting])
        .map_err(|e| e.to_string())
        .and_then(|m| if m.code == code { Ok(()) } else { Err(format!("it is a key of {}, not of {code}", m.code)) });
    if let Err(reason) = admitted {
        return Err(ClientError::KeyNotAdmitted { key_id: identity.key_id().to_string(), version, reason });
    }
    let setting = Setting::new(code, identity, trusted)
        .ok_or_else(|| ClientError::NotASetting { code: config.code.clone(), version })?
        .with_stale_after_ms(config.stale_after_ms);
    Ok((setting, seed))
}

/// Looks a child up once: see the module documentation for the order of hubs and what is
/// checked. Each hub gets `hub_timeout_ms` before the next is asked.
pub async fn lookup(config: &SettingConfig, request: LookupRequest) -> Result<LookupOutcome, ClientError> {
    let client = Arc::new(Client::open(config.clone())?);
    let timeout = Duration::from_millis(config.hub_timeout_ms);
    let pace = Pace { hedge_after: timeout, deadline: timeout.saturating_mul(HUB_ADDRESSES_MAX as u32) };
    let outcome = client.lookup(request, pace).await;
    client.close().await;
    outcome
}

/// Most hub addresses one lookup tries.
const HUB_ADDRESSES_MAX: usize = 64;

/// When to ask the next hub, and when to give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// With no answer yet after this long, the next hub is asked too (the first may still answer).
    pub hedge_after: Duration,
    /// With no answer after this long, the lookup ends as "could not check".
    pub deadline: Duration,
}

/// A care setting's lookup client that keeps its QUIC connections to hubs between lookups (the
/// setting gateway holds one; [`lookup`] makes one for a single lookup and closes it).
pub struct Client {
    config: SettingConfig,
    seed: [u8; 32],
    setting: Mutex<Setting>,
    /// Open connections by hub and address.
    warm: tokio::sync::Mutex<HashMap<(OdsCode, String), Warm>>,
}

/// An open connection to one hub.
struct Warm {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    address: SocketAddr,
}

impl Client {
    /// Loads the setting's key and directory; no hub is contacted yet.
    pub fn open(config: SettingConfig) -> Result<Client, ClientError> {
        let (setting, seed) = load_setting(&config, now())?;
        Ok(Client { config, seed, setting: Mutex::new(setting), warm: tokio::sync::Mutex::new(HashMap::new()) })
    }

    fn setting(&self) -> std::sync::MutexGuard<'_, Setting> {
        self.setting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directory version the client trusts now.
    pub fn directory_version(&self) -> u64 {
        self.setting().directory_version()
    }

    /// The setting's code, name and type, from the directory it trusts.
    pub fn describe(&self) -> (OdsCode, String, Option<SettingType>, LookupKind) {
        let setting = self.setting();
        let code = setting.code().clone();
        let member = setting.directory().member(&code);
        let name = member.map(|m| m.name.clone()).unwrap_or_default();
        (code, name, member.and_then(|m| m.setting_type), setting.kind())
    }

    /// The hubs in the order they are asked (home hubs first).
    pub fn hub_targets(&self) -> Vec<HubTarget> {
        let setting = self.setting();
        hub_targets(setting.directory(), setting.code(), &self.config.hub_addresses)
    }

    /// Opens a connection to the first address of each home hub that has none (errors are left
    /// for the next lookup to report). Returns how many home hubs have an open connection.
    pub async fn keep_warm(&self) -> usize {
        let mut open = 0;
        for target in self.hub_targets().into_iter().filter(|t| t.home) {
            let Some(address) = target.addresses.first() else { continue };
            if self.connection(&target.code, address).await.is_ok() {
                open += 1;
            }
        }
        open
    }

    /// Closes every open connection.
    pub async fn close(&self) {
        let warm: Vec<Warm> = self.warm.lock().await.drain().map(|(_, w)| w).collect();
        for w in warm {
            w.conn.close(0u32.into(), b"done");
            w.endpoint.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_millis(CLOSE_WAIT_MS), w.endpoint.wait_idle()).await;
        }
    }

    /// Looks a child up: the first hub in order is asked; the next is asked too when one fails
    /// or gives nothing within `pace.hedge_after`; the first verified answer wins. With none by
    /// `pace.deadline`, every hub still out is listed as timed out.
    pub async fn lookup(self: &Arc<Self>, request: LookupRequest, pace: Pace) -> Result<LookupOutcome, ClientError> {
        self.lookup_as(LookupId(rand::random()), request, pace).await
    }

    /// [`Client::lookup`] under a lookup id the caller chose (fresh and random: a hub takes a
    /// known id for a retry of the same signed lookup, or refuses it as a replay).
    pub async fn lookup_as(
        self: &Arc<Self>,
        lookup_id: LookupId,
        request: LookupRequest,
        pace: Pace,
    ) -> Result<LookupOutcome, ClientError> {
        let at = now();
        let (signed, version_before) = {
            let setting = self.setting();
            let version = setting.directory_version();
            (setting.lookup(request.nhs, request.person, lookup_id, at)?, version)
        };
        let targets = self.hub_targets();
        if targets.is_empty() {
            return Err(ClientError::NoHubs);
        }
        let mut failed = Vec::new();
        let mut queue = VecDeque::new();
        for target in &targets {
            if target.addresses.is_empty() {
                failed.push(HubFailure {
                    hub: target.code.clone(),
                    address: None,
                    kind: FailureKind::Unreachable,
                    reason: "the directory lists no address for it".into(),
                });
            }
            queue.extend(target.addresses.iter().map(|a| (target.clone(), a.clone())));
        }
        queue.truncate(HUB_ADDRESSES_MAX);
        let signed = Arc::new(signed);
        let (session, target) = self.race(&signed, queue, pace, &mut failed).await?;
        Ok(self.finish(session, &target, version_before, at, failed))
    }

    /// Runs attempts, hedged, until one answers, one refuses, all fail or the deadline passes.
    async fn race(
        self: &Arc<Self>,
        signed: &Arc<Signed<AccessEvent>>,
        mut queue: VecDeque<(HubTarget, String)>,
        pace: Pace,
        failed: &mut Vec<HubFailure>,
    ) -> Result<(Session, HubTarget), ClientError> {
        let deadline = tokio::time::Instant::now() + pace.deadline;
        let mut running = tokio::task::JoinSet::new();
        let mut in_flight: Vec<(OdsCode, String)> = Vec::new();
        self.ask_next(signed, &mut queue, &mut running, &mut in_flight);
        while !running.is_empty() {
            tokio::select! {
                done = running.join_next() => {
                    // A task that panicked is only missing from the list of failures.
                    let Some(Ok((target, address, result))) = done else { continue };
                    in_flight.retain(|(hub, a): &(OdsCode, String)| !(*hub == target.code && *a == address));
                    let failure = |kind, reason| HubFailure { hub: target.code.clone(), address: Some(address.clone()), kind, reason };
                    match result {
                        Ok(session) => return Ok((session, target)),
                        Err(SessionError::Refused(RefusalCode::HubUnavailable)) => failed
                            .push(failure(FailureKind::Unavailable, RefusalCode::HubUnavailable.describe().into())),
                        Err(SessionError::Refused(code)) => {
                            let failed = std::mem::take(failed);
                            return Err(ClientError::Refused { hub: target.code, code, failed });
                        }
                        Err(SessionError::Failed(kind, reason)) => failed.push(failure(kind, reason)),
                        Err(SessionError::Setup(e)) => return Err(ClientError::Transport(e)),
                    }
                    self.ask_next(signed, &mut queue, &mut running, &mut in_flight);
                }
                () = tokio::time::sleep(pace.hedge_after) => self.ask_next(signed, &mut queue, &mut running, &mut in_flight),
                () = tokio::time::sleep_until(deadline) => {
                    running.abort_all();
                    let reason = format!("no answer within {} ms", pace.deadline.as_millis());
                    failed.extend(in_flight.drain(..).map(|(hub, address)| HubFailure {
                        hub,
                        address: Some(address),
                        kind: FailureKind::TimedOut,
                        reason: reason.clone(),
                    }));
                    break;
                }
            }
        }
        let failures = std::mem::take(failed);
        if failures.iter().any(|f| f.kind == FailureKind::Unverified) {
            Err(ClientError::AnswerUnverified { failures })
        } else {
            Err(ClientError::AllHubsUnreachable { failures })
        }
    }

    /// Starts asking the next hub address in the queue, if any.
    fn ask_next(
        self: &Arc<Self>,
        signed: &Arc<Signed<AccessEvent>>,
        queue: &mut VecDeque<(HubTarget, String)>,
        running: &mut tokio::task::JoinSet<(HubTarget, String, Result<Session, SessionError>)>,
        in_flight: &mut Vec<(OdsCode, String)>,
    ) {
        let Some((target, address)) = queue.pop_front() else { return };
        in_flight.push((target.code.clone(), address.clone()));
        let (client, signed) = (self.clone(), signed.clone());
        let timeout = Duration::from_millis(self.config.hub_timeout_ms);
        running.spawn(async move {
            let result = tokio::time::timeout(timeout, client.attempt(&target.code, &address, &signed))
                .await
                .unwrap_or_else(|_| {
                    Err(SessionError::Failed(
                        FailureKind::TimedOut,
                        format!("no answer within {} ms", timeout.as_millis()),
                    ))
                });
            (target, address, result)
        });
    }

    /// One session with one hub at one address, on its open connection if it has one.
    async fn attempt(
        &self,
        hub: &OdsCode,
        address: &str,
        signed: &Signed<AccessEvent>,
    ) -> Result<Session, SessionError> {
        let key = (hub.clone(), address.to_string());
        let (conn, addr, provisional) = self.connection(hub, address).await?;
        let result = self.converse(hub, &conn, addr, provisional, signed).await;
        // A provisional connection (a hub key new to us) is used once; after a failure the next
        // lookup connects afresh. Lookups still using the connection keep it open until they end.
        if provisional || matches!(result, Err(SessionError::Failed(..))) {
            let mut warm = self.warm.lock().await;
            if warm.get(&key).is_some_and(|w| w.conn.stable_id() == conn.stable_id()) {
                warm.remove(&key);
            }
        }
        result
    }

    /// The open connection to `hub` at `address`, or a new one: `(connection, address,
    /// provisional)`, where a provisional connection presented a hub key our directory does not
    /// know (see [`Client::converse`]).
    async fn connection(
        &self,
        hub: &OdsCode,
        address: &str,
    ) -> Result<(quinn::Connection, SocketAddr, bool), SessionError> {
        let key = (hub.clone(), address.to_string());
        if let Some(w) = self.warm.lock().await.get(&key).filter(|w| w.conn.close_reason().is_none()) {
            return Ok((w.conn.clone(), w.address, false));
        }
        let addr = resolve(address).await?;
        let provisional = Arc::new(AtomicBool::new(false));
        let endpoint = self.endpoint(hub, addr, provisional.clone())?;
        let unreachable = |e: TransportError| SessionError::Failed(FailureKind::Unreachable, e.to_string());
        let conn = transport::connect(&endpoint, addr).await.map_err(unreachable)?;
        let provisional = provisional.load(Ordering::SeqCst);
        let mut warm = self.warm.lock().await;
        // Another lookup may have connected meanwhile: use its connection, drop ours.
        if let Some(w) = warm.get(&key).filter(|w| w.conn.close_reason().is_none()) {
            conn.close(0u32.into(), b"duplicate");
            return Ok((w.conn.clone(), w.address, false));
        }
        warm.insert(key, Warm { endpoint, conn: conn.clone(), address: addr });
        Ok((conn, addr, provisional))
    }

    /// A client endpoint whose TLS admits only an active key of the hub we mean to reach, or a
    /// key our directory does not know at all (the hub may have rotated its key since our copy):
    /// such a session is `provisional` and sends nothing but its directory version until a newer,
    /// root-signed directory shows the key to be the hub's (see [`Client::converse`]).
    fn endpoint(
        &self,
        hub: &OdsCode,
        addr: SocketAddr,
        provisional: Arc<AtomicBool>,
    ) -> Result<quinn::Endpoint, SessionError> {
        let directory = self.setting().directory().clone();
        let expected = hub.clone();
        let admit: transport::Admit =
            Arc::new(move |key: &[u8; 32]| match directory.admit(&PublicKey(*key), now(), &[Role::Hub]) {
                Ok(member) if member.code == expected => Ok(()),
                Ok(member) => Err(format!("the key belongs to hub {}, not {expected}", member.code)),
                Err(AdmissionError::UnknownKey(_)) => {
                    provisional.store(true, Ordering::SeqCst);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            });
        let config = transport::client_config(&self.seed, admit).map_err(SessionError::Setup)?;
        let mut endpoint =
            quinn::Endpoint::client(local_bind(addr)).map_err(|e| SessionError::Setup(TransportError::Bind(e)))?;
        endpoint.set_default_client_config(config);
        Ok(endpoint)
    }

    /// Writes the sync and the lookup on a new stream, then reads until the answer or a refusal.
    /// In a `provisional` session (a hub key our directory does not know) the lookup is written
    /// only once the hub has passed on a directory, signed by the federation's roots from the one
    /// we trust, in which that key is an active key of this very hub.
    async fn converse(
        &self,
        hub: &OdsCode,
        conn: &quinn::Connection,
        addr: SocketAddr,
        provisional: bool,
        signed: &Signed<AccessEvent>,
    ) -> Result<Session, SessionError> {
        let stream_error = |e: String| SessionError::Failed(FailureKind::Unreachable, e);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_error(e.to_string()))?;
        let sync = Message::Sync { directory_version: self.directory_version(), marks: vec![] };
        write_frame(&mut send, &wire::encode_frame(&sync)).await.map_err(|e| stream_error(e.to_string()))?;
        let mut warnings = Vec::new();
        if provisional {
            self.learn_the_hubs_key(hub, conn, &mut recv, &mut warnings).await?;
        }
        let lookup = Message::Lookup(signed.clone());
        write_frame(&mut send, &wire::encode_frame(&lookup)).await.map_err(|e| stream_error(e.to_string()))?;
        send.finish().map_err(|e| stream_error(e.to_string()))?;
        for _ in 0..SESSION_FRAMES_MAX {
            match read_message(&mut recv).await? {
                Message::Directories(chain) => {
                    if let Err(e) = self.setting().handle_directories(chain, now()) {
                        warnings.push(format!("hub {hub} passed on a directory that was refused: {e}"));
                    }
                }
                Message::Answer(answer) => {
                    let answer = self.check_answer(hub, signed, answer)?;
                    return Ok(Session { answer, kind: self.setting().kind(), address: addr, warnings });
                }
                Message::Refused(refusal) => return Err(SessionError::Refused(refusal.code)),
                other => {
                    return Err(SessionError::Failed(
                        FailureKind::Protocol,
                        format!("the hub sent a {} message in a lookup session", other.kind()),
                    ));
                }
            }
        }
        Err(SessionError::Failed(FailureKind::Protocol, format!("no answer in the first {SESSION_FRAMES_MAX} frames")))
    }

    /// Reads the newer directory the hub passes on and checks that the key it presented in the
    /// handshake is, in that directory, an active key of the hub we meant to reach.
    async fn learn_the_hubs_key(
        &self,
        hub: &OdsCode,
        conn: &quinn::Connection,
        recv: &mut quinn::RecvStream,
        warnings: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        let not_admitted = |why: String| SessionError::Failed(FailureKind::Unreachable, why);
        let Message::Directories(chain) = read_message(recv).await? else {
            return Err(not_admitted(format!("hub {hub}'s key is not in our directory and it passed on no newer one")));
        };
        let key = transport::peer_public_key(conn).map(PublicKey).ok_or_else(|| not_admitted("no hub key".into()))?;
        let mut setting = self.setting();
        let before = setting.directory_version();
        if let Err(e) = setting.handle_directories(chain, now()) {
            return Err(not_admitted(format!("hub {hub} passed on a directory that was refused: {e}")));
        }
        match setting.directory().admit(&key, now(), &[Role::Hub]) {
            Ok(member) if member.code == *hub => {
                warnings.push(format!(
                    "hub {hub}'s key {} is new since directory version {before}: version {} shows it active",
                    key.id(),
                    setting.directory_version()
                ));
                Ok(())
            }
            Ok(member) => Err(not_admitted(format!("the hub's key belongs to {}, not {hub}", member.code))),
            Err(e) => Err(not_admitted(format!("hub {hub}'s key is not admitted by the newer directory either: {e}"))),
        }
    }

    fn check_answer(
        &self,
        hub: &OdsCode,
        signed: &Signed<AccessEvent>,
        answer: wire::LookupAnswer,
    ) -> Result<VerifiedAnswer, SessionError> {
        let unverified = |reason: String| SessionError::Failed(FailureKind::Unverified, reason);
        if answer.hub != *hub {
            return Err(unverified(format!("the answer claims to come from hub {}", answer.hub)));
        }
        let mut setting = self.setting();
        verify_heads_in_parallel(&mut setting, &answer);
        setting.verify_answer(&signed.body, answer, now()).map_err(|e| unverified(e.to_string()))
    }

    /// Builds the outcome, saving a newer directory if a hub passed one on.
    fn finish(
        &self,
        session: Session,
        target: &HubTarget,
        version_before: u64,
        at: Timestamp,
        failed: Vec<HubFailure>,
    ) -> LookupOutcome {
        let mut warnings = session.warnings;
        let setting = self.setting();
        let version = setting.directory_version();
        let mut directory_saved = None;
        if version > version_before {
            match write_directory(&self.config.directory_file, setting.directory().signed()) {
                Ok(()) => directory_saved = Some(version),
                Err(e) => warnings.push(format!(
                    "could not save directory version {version} to {}: {e}",
                    self.config.directory_file.display()
                )),
            }
        }
        LookupOutcome {
            lookup_id: session.answer.lookup_id,
            answer: session.answer,
            kind: session.kind,
            hub_name: target.name.clone(),
            hub_address: session.address,
            failed,
            directory_version: version,
            directory_saved,
            warnings,
            at,
        }
    }
}

/// What one session with one hub gave.
struct Session {
    answer: VerifiedAnswer,
    kind: LookupKind,
    address: SocketAddr,
    warnings: Vec<String>,
}

/// Why one session gave no answer.
enum SessionError {
    /// The hub refused the lookup, with its reason.
    Refused(RefusalCode),
    /// This hub (at this address) gave nothing usable; try the next.
    Failed(FailureKind, String),
    /// The local QUIC client could not be built: no hub will do better.
    Setup(TransportError),
}

/// Fewest heads not yet verified for which threads are started.
const PARALLEL_HEADS_MIN: usize = 8;
/// Most threads used to verify an answer's heads.
const VERIFY_THREADS_MAX: usize = 8;

/// Verifies the heads of an answer on every core and lets the setting remember them, so that a
/// one-shot lookup checks one signature per council (about 150 in England) in a few
/// milliseconds. Heads that do not verify are left for `verify_answer` to judge.
pub fn verify_heads_in_parallel(setting: &mut Setting, answer: &wire::LookupAnswer) {
    // A head verified before (a warm gateway holds most) is not verified again; a few new ones
    // are left to `verify_answer`, on this thread (starting threads would cost more).
    let heads: Vec<&SignedHead> =
        answer.authorities.iter().map(|a| &a.head).filter(|h| !setting.knows_head(h)).collect();
    if heads.len() < PARALLEL_HEADS_MIN {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, VERIFY_THREADS_MAX);
    let dir = setting.directory();
    let verified: Vec<Verified<FeedHead>> = std::thread::scope(|scope| {
        let workers: Vec<_> = heads
            .chunks(heads.len().div_ceil(threads))
            .map(|chunk| {
                scope
                    .spawn(move || chunk.iter().filter_map(|h| verify_head(dir, (*h).clone()).ok()).collect::<Vec<_>>())
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    setting.remember_heads(verified);
}

async fn read_message(recv: &mut quinn::RecvStream) -> Result<Message, SessionError> {
    let protocol = |reason: String| SessionError::Failed(FailureKind::Protocol, reason);
    match read_frame_message(recv).await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(protocol("the hub ended the session without an answer".into())),
        Err(e @ FrameError::Read(_)) => Err(SessionError::Failed(FailureKind::Unreachable, e.to_string())),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// The local address to bind for reaching `target`: loopback for a loopback target, else any
/// address, of the target's family.
fn local_bind(target: SocketAddr) -> SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match (target.is_ipv4(), target.ip().is_loopback()) {
        (true, true) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        (true, false) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        (false, true) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        (false, false) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// The first socket address `host:port` resolves to.
async fn resolve(address: &str) -> Result<SocketAddr, SessionError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let unresolved = |reason: String| SessionError::Failed(FailureKind::Unreachable, reason);
    let mut addrs =
        tokio::net::lookup_host(address).await.map_err(|e| unresolved(format!("cannot resolve the address: {e}")))?;
    addrs.next().ok_or_else(|| unresolved("the address resolves to nothing".into()))
}

#[cfg(test)]
#[allow(non_snake_case)]
mod tests {
    use super::*;
    use crate::config::write_key;
    use cpis_protocol::directory::{Directory, KeyStatus, Member, MemberKey, SignedDirectory};
    use cpis_protocol::records::SettingType;
    use cpis_protocol::time::DAY_MS;
    use cpis_protocol::wire::{LookupAnswer, Refused};
    use std::collections::BTreeMap;

    fn identity(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn member(code: &str, role: Role, seed: u8, home_hubs: &[&str], now: Timestamp) -> Member {
        Member {
            code: OdsCode::parse(code).unwrap(),
            role,
            name: format!("Member {code}"),
            contacts: None,
            addresses: if role == Role::Hub { vec![format!("hub-{code}.invalid:7401")] } else { vec![] },
            home_hubs: home_hubs.iter().map(|h| OdsCode::parse(h).unwrap()).collect(),
            setting_type: (role == Role::Setting).then_some(SettingType::UrgentTreatmentCentre),
            keys: vec![MemberKey {
                public: identity(seed).public(),
                valid_from: now.minus_ms(DAY_MS),
                valid_until: now.plus_ms(30 * DAY_MS),
                status: KeyStatus::Active,
            }],
        }
    }

    /// Hubs HUBA (seed 10), HUBB (11), HUBC (12); setting RXH01 (20) with home hubs HUBC, HUBA.
    fn directory() -> SignedDirectory {
        let now = now();
        let roots = [identity(1), identity(2)];
        let d = Directory {
            federation: "client-test".into(),
            version: 1,
            expires_at: now.plus_ms(30 * DAY_MS),
            roots: roots.iter().map(Identity::public).collect(),
            threshold: 2,
            members: vec![
                member("HUBA", Role::Hub, 10, &[], now),
                member("HUBB", Role::Hub, 11, &[], now),
                member("HUBC", Role::Hub, 12, &[], now),
                member("RXH01", Role::Setting, 20, &["HUBC", "HUBA"], now),
            ],
        };
        SignedDirectory::sign(d, &[&roots[0], &roots[1]])
    }

    /// A setting config in a temp folder, every hub pointed at `addr` unless `addr` is None.
    fn setting_config(dir: &std::path::Path, seed: u8, addr: Option<SocketAddr>) -> SettingConfig {
        let key_file = dir.join("setting.key");
        write_key(&key_file, &[seed; 32]).unwrap();
        let directory_file = dir.join("directory.cpis");
        write_directory(&directory_file, &directory()).unwrap();
        let hub_addresses = addr
            .map(|a| ["HUBA", "HUBB", "HUBC"].into_iter().map(|h| (h.to_string(), a)).collect())
            .unwrap_or_default();
        SettingConfig {
            role: None,
            gateway: Default::default(),
            code: "RXH01".into(),
            key_file,
            directory_file,
            hub_addresses,
            hub_timeout_ms: 300,
            stale_after_ms: cpis_protocol::setting::STALE_AFTER_MS_DEFAULT,
        }
    }

    fn request() -> LookupRequest {
        LookupRequest {
            nhs: NhsNumber::parse("9434765919").unwrap(),
            person: Person { id: "N1".into(), name: "Sam Patel".into(), role: "Staff nurse".into() },
        }
    }

    #[test]
    fn hubs_are_tried_home_hubs_first_in_directory_order_then_the_others() {
        let trusted = TrustedDirectory::bootstrap(directory(), now()).unwrap();
        let setting = OdsCode::parse("RXH01").unwrap();
        let overrides: BTreeMap<String, SocketAddr> =
            [("HUBA".to_string(), SocketAddr::from(([127, 0, 0, 1], 9)))].into();
        let targets = hub_targets(&trusted, &setting, &overrides);
        let order: Vec<(&str, bool, &str)> =
            targets.iter().map(|t| (t.code.as_str(), t.home, t.addresses[0].as_str())).collect();
        assert_eq!(
            order,
            vec![
                ("HUBC", true, "hub-HUBC.invalid:7401"),
                ("HUBA", true, "127.0.0.1:9"),
                ("HUBB", false, "hub-HUBB.invalid:7401"),
            ]
        );
    }

    #[tokio::test]
    async fn a_key_or_code_that_does_not_fit_the_directory_is_refused_before_any_hub_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let config = setting_config(dir.path(), 99, None);
        let err = lookup(&config, request()).await.unwrap_err();
        assert!(matches!(err, ClientError::KeyNotAdmitted { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let mut config = setting_config(dir.path(), 20, None);
        config.code = "HUBA".into();
        let err = lookup(&config, request()).await.unwrap_err();
        assert!(matches!(err, ClientError::NotASetting { .. }), "{err}");
    }

    #[tokio::test]
    async fn silent_hubs__every_hub_is_listed_with_why__and_no_number_is_shown() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = setting_config(dir.path(), 20, Some(silent.local_addr().unwrap()));
        let err = lookup(&config, request()).await.unwrap_err();
        let ClientError::AllHubsUnreachable { failures } = &err else { panic!("{err}") };
        let tried: Vec<&str> = failures.iter().map(|f| f.hub.as_str()).collect();
        assert_eq!(tried, ["HUBC", "HUBA", "HUBB"]);
        assert!(failures.iter().all(|f| f.kind == FailureKind::TimedOut));
        let text = format!("{err} {err:?}");
        assert!(text.contains("HUBC") && text.contains("no answer within 300 ms"), "{text}");
        assert!(!text.contains("4765919"), "the NHS number never appears in an error: {text}");
    }

    /// A fake hub (key seed 12, HUBC) that reads the sync and the lookup, then sends `reply`.
    async fn fake_hub(
        reply: impl FnOnce(Signed<AccessEvent>) -> Vec<Message> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let admit: transport::Admit = Arc::new(|_| Ok(()));
        let endpoint = transport::endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &[12; 32], admit).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let conn = endpoint.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let sync = read_frame_message(&mut recv).await.unwrap().unwrap();
            assert!(matches!(sync, Message::Sync { directory_version: 1, .. }));
            let lookup = read_frame_message(&mut recv).await.unwrap().unwrap();
            let Message::Lookup(signed) = lookup else { panic!("not a lookup") };
            for message in reply(signed) {
                write_frame(&mut send, &wire::encode_frame(&message)).await.unwrap();
            }
            send.finish().unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        });
        (addr, task)
    }

    fn answer(signed: &Signed<AccessEvent>, hub: &str) -> LookupAnswer {
        LookupAnswer {
            lookup_id: signed.body.lookup_id,
            nhs: signed.body.nhs,
            hub: OdsCode::parse(hub).unwrap(),
            answered_at: signed.body.at,
            authorities: vec![],
            history: vec![],
        }
    }

    #[tokio::test]
    async fn the_home_hub_answers__a_verified_answer_with_no_records() {
        let (addr, hub) = fake_hub(|s| vec![Message::Answer(answer(&s, "HUBC"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = setting_config(dir.path(), 20, None);
        config.hub_addresses.insert("HUBC".into(), addr);
        let outcome = lookup(&config, request()).await.unwrap();
        assert_eq!(outcome.answer.hub.as_str(), "HUBC");
        assert!(outcome.answer.no_records() && outcome.failed.is_empty());
        assert_eq!(outcome.hub_address, addr);
        hub.await.unwrap();
    }

    #[tokio::test]
    async fn a_newer_directory_from_the_hub_is_checked_and_saved() {
        let mut next = directory().directory;
        next.version = 2;
        let (r1, r2) = (identity(1), identity(2));
        let v2 = SignedDirectory::sign(next, &[&r1, &r2]);
        let (addr, hub) =
            fake_hub(move |s| vec![Message::Directories(vec![v2]), Message::Answer(answer(&s, "HUBC"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = setting_config(dir.path(), 20, None);
        config.hub_addresses.insert("HUBC".into(), addr);
        let outcome = lookup(&config, request()).await.unwrap();
        assert_eq!((outcome.directory_version, outcome.directory_saved), (2, Some(2)));
        assert_eq!(read_directory(&config.directory_file).unwrap().directory.version, 2);
        hub.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_ends_the_lookup_with_the_hubs_refusal_code() {
        let (addr, hub) = fake_hub(|s| {
            vec![Message::Refused(Refused { lookup_id: Some(s.body.lookup_id), code: RefusalCode::ClockSkew })]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = setting_config(dir.path(), 20, Some(addr));
        let err = lookup(&config, request()).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused { hub, code: RefusalCode::ClockSkew, .. } if hub.as_str() == "HUBC"),
            "{err}"
        );
        hub.await.unwrap();
    }

    #[tokio::test]
    async fn a_hub_that_cannot_answer_now__is_listed_and_the_next_hub_is_tried() {
        let (addr, hub) = fake_hub(|s| {
            vec![Message::Refused(Refused { lookup_id: Some(s.body.lookup_id), code: RefusalCode::HubUnavailable })]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = setting_config(dir.path(), 20, Some(addr));
        let err = lookup(&config, request()).await.unwrap_err();
        let ClientError::AllHubsUnreachable { failures } = &err else { panic!("not tried elsewhere: {err}") };
        assert!(failures.iter().any(|f| f.hub.as_str() == "HUBC" && f.kind == FailureKind::Unavailable), "{err}");
        assert!(failures.iter().any(|f| f.hub.as_str() != "HUBC"), "the other hubs were tried: {err}");
        hub.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_that_does_not_verify_is_never_shown() {
        // The answer claims another hub: it is refused, and the other hubs (silent) time out.
        let (addr, hub) = fake_hub(|s| vec![Message::Answer(answer(&s, "HUBB"))]).await;
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = setting_config(dir.path(), 20, Some(silent.local_addr().unwrap()));
        config.hub_addresses.insert("HUBC".into(), addr);
        let err = lookup(&config, request()).await.unwrap_err();
        let ClientError::AnswerUnverified { failures } = &err else { panic!("{err}") };
        assert_eq!((failures[0].hub.as_str(), failures[0].kind), ("HUBC", FailureKind::Unverified));
        hub.await.unwrap();
    }

    #[tokio::test]
    async fn a_hub_with_another_members_key_is_refused_in_the_handshake() {
        // The fake hub holds HUBC's key but sits at HUBA's address.
        let (addr, hub) = fake_hub(|s| vec![Message::Answer(answer(&s, "HUBC"))]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = setting_config(dir.path(), 20, None);
        config.hub_addresses = [("HUBA".to_string(), addr)].into();
        config.hub_addresses.insert("HUBC".into(), SocketAddr::from(([127, 0, 0, 1], 9)));
        config.hub_addresses.insert("HUBB".into(), SocketAddr::from(([127, 0, 0, 1], 9)));
        let err = lookup(&config, request()).await.unwrap_err();
        let ClientError::AllHubsUnreachable { failures } = &err else { panic!("{err}") };
        let huba = failures.iter().find(|f| f.hub.as_str() == "HUBA").unwrap();
        assert_eq!(huba.kind, FailureKind::Unreachable, "{huba}");
        hub.abort();
    }
}
