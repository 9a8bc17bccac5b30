//! The hostile-input catalogue (docs/hostile-inputs.md): bad inputs sent to a running hub and a
//! running authority (real QUIC with mutual TLS on 127.0.0.1, real redb stores, the operator
//! API over HTTP), each checked for its clear refusal and for leaving stored state as it was.
//!
//! **Layout.** Each layer (handshake, frames, lookups, feeds, notifications, directory, operator
//! API, CSV import) is one `#[tokio::test]` that starts one small federation and runs the layer's
//! entries on it one after another. Every entry is an `async fn` whose name is its name in the
//! catalogue; it runs in its own task, so that a failing entry is reported by name and the others
//! still run. The test `catalogue_is_listed_in_the_docs` checks that docs/hostile-inputs.md lists
//! exactly the entries here.
//!
//! **The federation.** Hub `HUBS` and authority `204` run in-process. The tests hold every test
//! member's key, so they also play: hub `HUBT` (a hostile hub dialling `HUBS`), authority `205`
//! (never runs: a hostile authority, and a signer of foreign records), hub `HUBX` (a home hub of
//! `204`: the tests listen at its address, so the authority dials the tests), and the settings.
//!
//! **"Nothing stored changed" is checked twice.**
//! 1. Per entry: the number of write batches each node handed to its store
//!    (`cpis_store_writes_total`) is the same after the refusal as before. Every change to a store
//!    goes through such a batch (the API only reads the store), so an unchanged count means that no
//!    row of either node changed. To make this exact, the authority runs with its head heartbeat
//!    turned off (`head_interval_ms` of an hour instead of `Timing::short`'s second): with it, the
//!    authority re-signs its head every second and the hub stores each one as a freshness update.
//!    Nothing else writes on its own in a quiet federation.
//! 2. Per layer: every row of both stores is read (with the nodes stopped) after the layer's own
//!    legitimate setup and again after its last entry, and compared, with the directory files. One
//!    difference is allowed, because the nodes must be restarted between the first reading and the
//!    entries (a running node holds its store exclusively): an authority signs a fresh head at
//!    every start (docs/storage.md), and the hub stores it as a freshness update. So a `heads` row
//!    may differ only by a later time and its signature: same origin, sequence, root, children,
//!    contacts digest and key. Any other added, removed or changed row fails the layer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::net::{CLOSE_BAD_FRAME, CLOSE_NOT_ADMITTED};
use cpis_node::runtime::RunningNode;
use cpis_node::store::Store;
use cpis_node::transport::{self, read_message};
use cpis_protocol::codec;
use cpis_protocol::directory::{Directory, KeyStatus, MEMBERS_MAX, SignedDirectory};
use cpis_protocol::feed::{EntryBody, FeedEntry, FeedHead, LiveFeed, SignedEntry, SignedHead};
use cpis_protocol::harness::{FederationSpec, test_identity};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode, PlanRef};
use cpis_protocol::records::{AccessEvent, Person, Plan, PlanType, SettingType};
use cpis_protocol::refusal::RefusalCode;
use cpis_protocol::schema::{self, StoredRow};
use cpis_protocol::sign::{Identity, SignatureBytes, Signed};
use cpis_protocol::time::{DAY_MS, Date, Timestamp};
use cpis_protocol::wire::{
    self, FeedBatch, Mark, Message, Notification, PROTOCOL_VERSION, Receipt, Refused, SYNC_MARKS_MAX,
};
use cpis_tests::{Fed, api_json, hub_caught_up, hub_seq, wait_until};
use quinn::rustls;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------------
// The federation
// ---------------------------------------------------------------------------------------------

const HUB: &str = "HUBS";
const AUTH: &str = "204";
/// An authority that never runs: a hostile authority, and a signer of foreign records.
const OTHER_AUTH: &str = "205";
/// An authority whose only home hub is `HUBX`: `HUBS` is not one of its home hubs.
const FAR_AUTH: &str = "206";
/// A hub whose key the tests use to dial `HUBS` as a hostile hub.
const ROGUE_HUB: &str = "HUBT";
/// A home hub of `204` that the tests play: they listen at its address.
const FAKE_HUB: &str = "HUBX";
/// An urgent treatment centre: its lookups are unscheduled (they notify).
const SETTING: &str = "RXH01";
const OTHER_SETTING: &str = "RXH02";
/// A general practice: its lookups are scheduled (they notify no one).
const GP: &str = "GPP01";

/// How long a node has to answer an input.
const WAIT: Duration = Duration::from_secs(5);
/// Longest any one entry may take.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(40);
/// The authority's head interval here: no heartbeat during a test (see the top of the file).
const HEAD_INTERVAL_MS: u64 = 3_600_000;
const WRITES: &str = "cpis_store_writes_total";

fn spec() -> FederationSpec {
    let utc = SettingType::UrgentTreatmentCentre;
    FederationSpec::new("catalogue")
        .hub(HUB)
        .hub(ROGUE_HUB)
        .hub(FAKE_HUB)
        .authority(AUTH, "Hackney", &[HUB, FAKE_HUB])
        .authority(OTHER_AUTH, "Camden", &[HUB])
        .authority(FAR_AUTH, "Islington", &[FAKE_HUB])
        .setting(SETTING, "Royal Sussex County UTC", utc, &[HUB])
        .setting(OTHER_SETTING, "Brighton ED", SettingType::EmergencyDepartment, &[HUB])
        .setting(GP, "Preston Park Surgery", SettingType::GeneralPractice, &[HUB])
        // Settings whose keys the handshake layer's directory revokes, retires or moves out of
        // their validity window.
        .setting("RXV01", "Revoked UTC", utc, &[HUB])
        .setting("RXR01", "Retired UTC", utc, &[HUB])
        .setting("RXE01", "Expired UTC", utc, &[HUB])
        .setting("RXF01", "Future UTC", utc, &[HUB])
}

fn code(text: &str) -> OdsCode {
    OdsCode::parse(text).unwrap()
}

fn now() -> Timestamp {
    cpis_node::net::now()
}

fn new_id() -> LookupId {
    LookupId(rand::random())
}

fn person(id: &str) -> Person {
    Person { id: id.into(), name: "A Nurse".into(), role: "Nurse".into() }
}

/// The child 204 has a plan (LAC-1) for.
fn flagged() -> NhsNumber {
    NhsNumber::parse("9434765919").unwrap()
}

/// A child nobody has a plan for.
fn unflagged() -> NhsNumber {
    NhsNumber::parse("4010232137").unwrap()
}

/// A valid NHS number from nine digits (the next one that has a check digit).
fn nhs_from(mut nine: u64) -> NhsNumber {
    for _ in 0..100 {
        let digits: Vec<u64> = (0..9).rev().map(|i| nine / 10u64.pow(i) % 10).collect();
        let sum: u64 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u64)).sum();
        let check = (11 - sum % 11) % 11;
        if check != 10 {
            return NhsNumber::parse(&format!("{nine:09}{check}")).unwrap();
        }
        nine += 1;
    }
    unreachable!("one number in eleven lacks a check digit")
}

/// The child 205 has a plan (CAM-1) for, in the notifications layer.
fn camden_child() -> NhsNumber {
    nhs_from(123_456_780)
}

fn plan(reference: &str, nhs: NhsNumber) -> Plan {
    Plan {
        reference: PlanRef::parse(reference).unwrap(),
        nhs,
        plan_type: PlanType::LookedAfter,
        start: Date::parse("2026-01-05").unwrap(),
        end: None,
        due: None,
        withdrawn: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Running a layer: the world, the baseline, the entries, the final comparison
// ---------------------------------------------------------------------------------------------

type EntryFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type EntryFn<L> = fn(Arc<Ctx<L>>) -> EntryFuture;
type Entries<L> = Vec<(&'static str, EntryFn<L>)>;

/// A list of entries, each named after its function.
macro_rules! entries {
    ($($name:ident),+ $(,)?) => {
        vec![$((stringify!($name), (|c| -> EntryFuture { Box::pin($name(c)) }) as EntryFn<_>)),+]
    };
}

/// What an entry sees: the running world and the layer's own setup.
struct Ctx<L> {
    w: World,
    l: L,
}

#[derive(Clone, Copy, Default)]
struct Options {
    /// Listen at `HUBT`'s address (which `HUBS` dials) presenting other members' keys.
    impostor: bool,
    /// The per-person lookup limit the hub runs with once the baseline is taken.
    person_limit_after_baseline: Option<u64>,
}

/// The federation on disk, the tests' own endpoints, and what they learnt.
struct World {
    fed: Fed,
    opts: Options,
    restarted: AtomicBool,
    /// The tests' endpoint at `HUBX`'s address, and the connections the authority made to it.
    hubx_endpoint: quinn::Endpoint,
    hubx_incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<quinn::Connection>>,
    /// The authority's current connection to `HUBX`.
    hubx: tokio::sync::Mutex<Option<Peer>>,
    /// The authority's whole feed, as it sent it to `HUBX` on connecting (its head on it).
    hubx_run: Mutex<Option<FeedBatch>>,
    impostor: Option<Impostor>,
    /// An endpoint at `HUBT`'s address refusing `HUBS`'s dials, when there is no impostor.
    refuser: Option<quinn::Endpoint>,
}

struct Nodes {
    hub: RunningNode,
    authority: RunningNode,
}

impl Nodes {
    async fn shutdown(self) {
        self.authority.shutdown().await;
        self.hub.shutdown().await;
    }
}

/// Write batches each node has handed to its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quiet {
    hub: u64,
    authority: u64,
}

impl World {
    /// A federation with the hub and the authority running, the authority holding plan LAC-1
    /// for [`flagged`], replicated at the hub.
    async fn start(opts: Options) -> (World, Nodes) {
        let fed = Fed::create(spec());
        let (hubx_endpoint, incoming) = bind_fake_hub(&fed);
        // Something answers at every hub address `HUBS` dials, so that no dial is left hanging (a
        // connection abandoned in its handshake keeps the hub's port for seconds after it stops).
        let impostor = opts.impostor.then(|| Impostor::bind(&fed));
        let refuser = (!opts.impostor).then(|| refuse_dials_at(&fed, ROGUE_HUB));
        let w = World {
            fed,
            opts,
            restarted: AtomicBool::new(false),
            hubx_endpoint,
            hubx_incoming: tokio::sync::Mutex::new(incoming),
            hubx: tokio::sync::Mutex::new(None),
            hubx_run: Mutex::new(None),
            impostor,
            refuser,
        };
        let nodes = w.start_nodes().await;
        let body = json!({"reference": "LAC-1", "nhs": "9434765919", "plan_type": "LAC", "start": "2026-01-05"});
        let (status, answer) = api_json(&w.fed, AUTH, "POST", "/plans", Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        wait_until("the hub holds the authority's plan", Duration::from_secs(20), || hub_caught_up(&w.fed, HUB, AUTH))
            .await;
        (w, nodes)
    }

    async fn start_nodes(&self) -> Nodes {
        let limit = if self.restarted.load(Ordering::SeqCst) { self.opts.person_limit_after_baseline } else { None };
        let mut hub = self.fed.node_config(HUB);
        if let Some(limit) = limit {
            hub.limits.person_lookups_per_hour = limit;
        }
        let mut authority = self.fed.node_config(AUTH);
        authority.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        authority.timing.head_interval_ms = HEAD_INTERVAL_MS;
        let hub = start_node(hub).await;
        let authority = start_node(authority).await;
        self.accept_authority().await;
        Nodes { hub, authority }
    }

    /// Takes the authority's connection to `HUBX`, asks for its feed (as a hub behind would) and
    /// keeps the run it sends.
    async fn accept_authority(&self) {
        let conn = {
            let mut incoming = self.hubx_incoming.lock().await;
            let next = async {
                loop {
                    let conn = incoming.recv().await.expect("the fake hub's acceptor runs");
                    if conn.close_reason().is_none() {
                        return conn;
                    }
                }
            };
            timeout(Duration::from_secs(20), next).await.expect("the authority dials its home hub HUBX")
        };
        let mut peer = Peer::over(conn, None).await;
        peer.send(&Message::Sync { directory_version: 1, marks: vec![] }).await;
        // An authority with an empty feed sends only its head.
        let mut run: Option<FeedBatch> = None;
        for _ in 0..64 {
            let batch = peer
                .expect(WAIT, |m| match m {
                    Message::Feed(b) if b.origin.as_str() == AUTH => Some(Some(b.clone())),
                    Message::Head(h) if h.body.origin.as_str() == AUTH => Some(None),
                    _ => None,
                })
                .await
                .expect("the authority sends its feed (or head) to a hub that has none of it");
            let Some(batch) = batch else { break };
            let done = batch.head.is_some();
            match &mut run {
                Some(r) => {
                    r.entries.extend(batch.entries);
                    r.head = batch.head;
                }
                None => run = Some(batch),
            }
            if done {
                break;
            }
        }
        *self.hubx_run.lock().unwrap() = run;
        *self.hubx.lock().await = Some(peer);
    }

    /// After a restart: waits until the hub holds the head the authority signed at its start,
    /// then until neither node writes any more.
    async fn settle(&self) {
        wait_until("the hub holds the head the authority signed at its start", Duration::from_secs(20), || async {
            let auth = self.status(AUTH).await;
            let hub = self.status(HUB).await;
            let held = hub["origins"].as_array().and_then(|o| o.iter().find(|x| x["origin"] == AUTH)).cloned();
            let signed = &auth["head_signed_at"];
            // The hub's first write after a restart is that head (a freshness update).
            !signed.is_null() && held.is_some_and(|o| o["as_of"] == *signed) && self.metric(HUB, WRITES).await >= 1
        })
        .await;
        let mut last = self.quiet().await;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let next = self.quiet().await;
            if next == last {
                return;
            }
            last = next;
        }
        panic!("the nodes kept writing after their restart: {last:?}");
    }

    fn id(&self, member: &str) -> Identity {
        self.fed.fed.identity(member)
    }

    fn seed(&self, member: &str) -> [u8; 32] {
        self.id(member).seed()
    }

    fn hub_addr(&self) -> SocketAddr {
        self.fed.hub_addresses[HUB]
    }

    fn authority_quic_addr(&self) -> SocketAddr {
        let text = std::fs::read_to_string(self.fed.home(AUTH).join("quic.addr")).expect("quic.addr");
        text.trim().parse().expect("an address")
    }

    fn token(&self, node: &str) -> String {
        self.fed.api_of(node).1
    }

    async fn status(&self, node: &str) -> Value {
        api_json(&self.fed, node, "GET", "/status", None).await.1
    }

    async fn directory_version(&self, node: &str) -> u64 {
        self.status(node).await["directory_version"].as_u64().unwrap_or(0)
    }

    /// A counter of the node's `/metrics`, by its full name with labels (0 if absent).
    async fn metric(&self, node: &str, name: &str) -> u64 {
        let (addr, token) = self.fed.api_of(node);
        let (_, text) = cpis_tests::http(addr, &token, "GET", "/metrics", None).await;
        let prefix = format!("{name} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits until a counter is above `before`.
    async fn counted(&self, node: &str, name: &str, before: u64) {
        let what = format!("{node} counts {name} (was {before})");
        wait_until(&what, WAIT, || async { self.metric(node, name).await > before }).await;
    }

    async fn quiet(&self) -> Quiet {
        Quiet { hub: self.metric(HUB, WRITES).await, authority: self.metric(AUTH, WRITES).await }
    }

    /// Neither node has handed a write to its store since `before`: nothing stored changed.
    async fn still_quiet(&self, before: Quiet) {
        let now = self.quiet().await;
        assert_eq!(
            now, before,
            "a node handed a write to its store (write batches before, after): something was stored"
        );
    }

    /// Publishes a directory chain through a node's API; it must be accepted.
    async fn publish(&self, node: &'static str, chain: &[SignedDirectory]) {
        let (status, body) = Req::post(node, "/directory")
            .bytes("application/octet-stream", codec::encode(&chain.to_vec()))
            .send(self)
            .await;
        assert_eq!(status, 200, "{node} refused a good directory: {body}");
    }
}

/// Starts a node; a port a node stopped a moment ago may still be draining its connections, so
/// a failed start is tried again (a bounded number of times).
async fn start_node(config: cpis_node::config::NodeConfig) -> RunningNode {
    let mut last = String::new();
    for _ in 0..50 {
        match RunningNode::start(config.clone()).await {
            Ok(node) => return node,
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("starting {}: {last}", config.code);
}

/// An endpoint at `member`'s address that refuses every connection at once.
fn refuse_dials_at(fed: &Fed, member: &str) -> quinn::Endpoint {
    let seed = fed.fed.identity(member).seed();
    let endpoint = transport::endpoint(fed.hub_addresses[member], &seed, admit_all()).expect("bind the address");
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        // Ends when the endpoint is closed.
        while let Some(incoming) = acceptor.accept().await {
            incoming.refuse();
        }
    });
    endpoint
}

fn event(name: &str) -> String {
    format!("cpis_events_total{{event=\"{name}\"}}")
}

fn refused_connection(reason: &str) -> String {
    format!("cpis_connections_refused_total{{reason=\"{reason}\"}}")
}

/// Bad frames are counted as refused messages, not refused connections.
const BAD_FRAMES: &str = "cpis_messages_refused_total{reason=\"bad_frame\"}";

/// One layer: its world, the stores read before the entries, the entries' verdicts.
struct Run<L> {
    ctx: Arc<Ctx<L>>,
    nodes: Option<Nodes>,
    before: Vec<(&'static str, Stored)>,
}

impl<L: Send + Sync + 'static> Run<L> {
    /// Stops the nodes after the layer's setup, reads both stores, starts them again and waits
    /// until they are quiet.
    async fn new(w: World, nodes: Nodes, l: L) -> Run<L> {
        nodes.shutdown().await;
        let before = vec![(HUB, read_store(&w.fed, HUB).await), (AUTH, read_store(&w.fed, AUTH).await)];
        w.restarted.store(true, Ordering::SeqCst);
        let nodes = w.start_nodes().await;
        w.settle().await;
        Run { ctx: Arc::new(Ctx { w, l }), nodes: Some(nodes), before }
    }

    /// Runs every entry (each in its own task, one after another), then stops the nodes and
    /// compares their stores with the reading taken before the entries.
    async fn check(mut self, layer: &str, entries: Entries<L>) {
        let total = entries.len();
        let mut failed = Vec::new();
        let started = std::time::Instant::now();
        for (name, entry) in entries {
            let began = std::time::Instant::now();
            let task = tokio::spawn(timeout(ENTRY_TIMEOUT, entry(self.ctx.clone())));
            match task.await {
                Ok(Ok(())) => println!("catalogue {layer}: {name} ... ok ({} ms)", began.elapsed().as_millis()),
                Ok(Err(_)) => failed.push(format!("{name}: did not finish within {ENTRY_TIMEOUT:?}")),
                Err(e) => failed.push(format!("{name}: {}", panic_text(e))),
            }
        }
        if let Some(nodes) = self.nodes.take() {
            nodes.shutdown().await;
        }
        let w = &self.ctx.w;
        w.hubx_endpoint.close(0u32.into(), b"done");
        if let Some(i) = &w.impostor {
            i.endpoint.close(0u32.into(), b"done");
        }
        if let Some(r) = &w.refuser {
            r.close(0u32.into(), b"done");
        }
        for (node, before) in &self.before {
            let after = read_store(&w.fed, node).await;
            for change in changes(node, before, &after) {
                failed.push(format!("the {layer} layer changed stored state: {change}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of the {total} {layer} entries failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
        println!("catalogue {layer}: {total} entries in {:?}, nothing stored changed", started.elapsed());
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}

/// Every row of a stopped node's store, and its directory file.
struct Stored {
    rows: Vec<StoredRow>,
    directory_file: Vec<u8>,
}

async fn read_store(fed: &Fed, node: &str) -> Stored {
    let path = fed.home(node).join("node.redb");
    // The last handle of a node that just stopped may take a moment to close the file.
    for _ in 0..100 {
        if let Ok(store) = Store::open(&path) {
            let rows = store.load_all().expect("every row reads");
            drop(store);
            let directory_file = std::fs::read(fed.home(node).join("directory.cpis")).expect("directory file");
            return Stored { rows, directory_file };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store of {node} cannot be opened after the node stopped");
}

/// What differs between two readings of a node's store, but for the head re-signed at a start.
fn changes(node: &str, before: &Stored, after: &Stored) -> Vec<String> {
    let index = |s: &Stored| -> BTreeMap<(&'static str, Vec<u8>), StoredRow> {
        s.rows.iter().map(|r| ((r.table.name(), r.key.clone()), r.clone())).collect()
    };
    let (b, a) = (index(before), index(after));
    let keys: BTreeSet<&(&'static str, Vec<u8>)> = b.keys().chain(a.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let what = match (b.get(key), a.get(key)) {
            (Some(x), Some(y)) if x.value == y.value => continue,
            (Some(x), Some(y)) if key.0 == "heads" && re_signed(x, y) => continue,
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        let hex: String = key.1.iter().map(|b| format!("{b:02x}")).collect();
        out.push(format!("{node}: table {} row {hex} {what}", key.0));
    }
    if before.directory_file != after.directory_file {
        out.push(format!("{node}: the directory file changed"));
    }
    out
}

/// Whether `after` is `before` signed again later by the same key: same origin, sequence, root,
/// children and contacts (what an authority does at every start).
fn re_signed(before: &StoredRow, after: &StoredRow) -> bool {
    let head = |r: &StoredRow| schema::HEADS.decode(r).ok().map(|(_, h)| h);
    let (Some(b), Some(a)) = (head(before), head(after)) else { return false };
    a.key_id == b.key_id && a.body.at >= b.body.at && FeedHead { at: b.body.at, ..a.body.clone() } == b.body
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

fn admit_all() -> transport::Admit {
    Arc::new(|_: &[u8; 32]| Ok(()))
}

/// A client endpoint on loopback with a member's key.
fn client_endpoint(seed: [u8; 32]) -> quinn::Endpoint {
    transport::endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &seed, admit_all()).expect("a client endpoint")
}

/// How a session with a node ended.
#[derive(Debug)]
enum Ended {
    /// The node answered with this message.
    Reply(Box<Message>),
    /// The node finished its side of the stream without a message.
    Finished,
    /// The node closed the connection with this application code.
    Closed(u64),
    /// Nothing within the wait.
    Silent,
    /// Anything else (the text is for the failure message).
    Broken(#[allow(dead_code)] String),
}

impl Ended {
    /// The message the node answered with, if it did.
    fn reply(&self) -> Option<&Message> {
        match self {
            Ended::Reply(m) => Some(m),
            _ => None,
        }
    }
}

fn closed(e: &quinn::ConnectionError) -> Ended {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Ended::Closed(c.error_code.into_inner()),
        other => Ended::Broken(other.to_string()),
    }
}

fn is_closed_with(ended: &Ended, code: u32) -> bool {
    matches!(ended, Ended::Closed(c) if *c == u64::from(code))
}

/// A care setting's lookup session: one bidirectional stream to the hub.
struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    _send: quinn::SendStream,
}

/// Opens a session to the hub with `setting`'s key and writes `bytes` on it (then finishes).
async fn open_session(w: &World, setting: &str, bytes: &[u8]) -> Session {
    let endpoint = client_endpoint(w.seed(setting));
    let conn = timeout(WAIT, transport::connect(&endpoint, w.hub_addr()))
        .await
        .expect("the hub answers in time")
        .expect("the hub admits the setting");
    let (mut send, recv) = conn.open_bi().await.expect("a stream");
    // The hub may close the connection before it has read everything: that is an outcome.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    Session { endpoint, conn, recv, _send: send }
}

impl Session {
    /// The first message the hub sends back, or how the session ended without one.
    async fn outcome(mut self, wait: Duration) -> Ended {
        let ended = match timeout(wait, read_message(&mut self.recv)).await {
            Ok(Ok(Some(m))) => Ended::Reply(Box::new(m)),
            Ok(Ok(None)) => Ended::Finished,
            Ok(Err(e)) => self.conn.close_reason().map_or(Ended::Broken(e.to_string()), |r| closed(&r)),
            Err(_) => self.conn.close_reason().map_or(Ended::Silent, |r| closed(&r)),
        };
        self.conn.close(0u32.into(), b"done");
        self.endpoint.close(0u32.into(), b"done");
        ended
    }
}

/// A lookup session: the lookup alone, and the hub's first reply.
async fn ask(w: &World, via: &str, lookup: &Signed<AccessEvent>) -> Ended {
    open_session(w, via, &wire::encode_frame(&Message::Lookup(lookup.clone()))).await.outcome(WAIT).await
}

/// A member connection: one unidirectional stream each way; what the other side sends is
/// collected in `rx`.
struct Peer {
    endpoint: Option<quinn::Endpoint>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Peer {
    async fn over(conn: quinn::Connection, endpoint: Option<quinn::Endpoint>) -> Peer {
        let send = conn.open_uni().await.expect("a stream to the peer");
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = conn.clone();
        tokio::spawn(async move {
            let Ok(mut recv) = reader.accept_uni().await else { return };
            // Ends with the connection.
            while let Ok(Some(message)) = read_message(&mut recv).await {
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Peer { endpoint, conn, send, rx }
    }

    async fn send(&mut self, message: &Message) {
        self.send.write_all(&wire::encode_frame(message)).await.expect("the peer takes our frames");
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        // The node may close the connection as soon as it has seen enough.
        let _ = self.send.write_all(bytes).await;
    }

    /// The first message from the peer (within `wait`) for which `f` says something.
    async fn expect<T>(&mut self, wait: Duration, mut f: impl FnMut(&Message) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    if let Some(t) = f(&m) {
                        return Some(t);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// How the connection ended, if it ends within `wait`.
    async fn ended(&self, wait: Duration) -> Ended {
        match timeout(wait, self.conn.closed()).await {
            Ok(e) => closed(&e),
            Err(_) => Ended::Silent,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
        if let Some(e) = &self.endpoint {
            e.close(0u32.into(), b"done");
        }
    }
}

/// Dials the hub as `member` (a hub or an authority).
async fn member(w: &World, member: &str) -> Peer {
    let endpoint = client_endpoint(w.seed(member));
    let conn = timeout(WAIT, transport::connect(&endpoint, w.hub_addr()))
        .await
        .expect("the hub answers in time")
        .expect("the hub admits the member");
    Peer::over(conn, Some(endpoint)).await
}

/// The tests' endpoint at `HUBX`'s address: it admits only the authority's key, and hands every
/// connection the authority makes to the channel (the hub's own dials to `HUBX` are refused).
fn bind_fake_hub(fed: &Fed) -> (quinn::Endpoint, mpsc::UnboundedReceiver<quinn::Connection>) {
    let authority = fed.fed.identity(AUTH).public().0;
    let admit: transport::Admit =
        Arc::new(move |key: &[u8; 32]| if *key == authority { Ok(()) } else { Err("not the authority".into()) });
    let endpoint = transport::endpoint(fed.hub_addresses[FAKE_HUB], &fed.fed.identity(FAKE_HUB).seed(), admit)
        .expect("bind HUBX's address");
    let hub = fed.hub_addresses[HUB];
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        // Ends when the endpoint is closed.
        while let Some(incoming) = acceptor.accept().await {
            if incoming.remote_address() == hub {
                incoming.refuse();
                continue;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = tx.send(conn);
                }
            });
        }
    });
    (endpoint, rx)
}

/// How a handshake went, seen from the dialling side.
#[derive(Debug)]
enum Shake {
    /// Connected, and still connected a moment later.
    Admitted,
    /// Closed by a TLS alert (QUIC CRYPTO_ERROR, 0x100 + the alert).
    TlsAlert(u64),
    /// Closed after the handshake with this application code.
    Closed(u64),
    /// Anything else (the text is for the failure message).
    Failed(#[allow(dead_code)] String),
}

/// TLS alerts (RFC 8446) as QUIC carries them.
const ALERT_CERTIFICATE_UNKNOWN: u64 = 0x100 + 46;
const ALERT_CERTIFICATE_REQUIRED: u64 = 0x100 + 116;
const ALERT_NO_APPLICATION_PROTOCOL: u64 = 0x100 + 120;

fn shaken(e: &quinn::ConnectionError) -> Shake {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => Shake::TlsAlert(u64::from(c.error_code)),
        quinn::ConnectionError::ApplicationClosed(c) => Shake::Closed(c.error_code.into_inner()),
        other => Shake::Failed(other.to_string()),
    }
}

/// Dials `addr`, with `config` or the endpoint's own, and says how the handshake went.
async fn shake(endpoint: &quinn::Endpoint, config: Option<quinn::ClientConfig>, addr: SocketAddr) -> Shake {
    let connecting = match config {
        Some(c) => endpoint.connect_with(c, addr, transport::SERVER_NAME),
        None => endpoint.connect(addr, transport::SERVER_NAME),
    };
    let connecting = match connecting {
        Ok(c) => c,
        Err(e) => return Shake::Failed(e.to_string()),
    };
    let conn = match timeout(WAIT, connecting).await {
        Err(_) => return Shake::Failed("no handshake within the wait".into()),
        Ok(Err(e)) => return shaken(&e),
        Ok(Ok(conn)) => conn,
    };
    // In TLS 1.3 a refused client learns it only after its side of the handshake is done.
    let outcome = match timeout(Duration::from_millis(1500), conn.closed()).await {
        Ok(e) => shaken(&e),
        Err(_) => Shake::Admitted,
    };
    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    outcome
}

/// A TLS client that accepts any server, offers `alpn` and no client certificate.
fn bare_tls_client(alpn: &[u8]) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC TLS config");
    quinn::ClientConfig::new(Arc::new(quic))
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

/// A listener at `HUBT`'s address, which `HUBS` dials (and redials): it presents whichever key
/// it is told to and records how each of `HUBS`'s connections ended, by phase.
struct Impostor {
    endpoint: quinn::Endpoint,
    phase: Arc<AtomicU64>,
    closes: Arc<Mutex<Vec<(u64, Ended)>>>,
}

impl Impostor {
    fn bind(fed: &Fed) -> Impostor {
        let seed = fed.fed.identity(SETTING).seed();
        let endpoint =
            transport::endpoint(fed.hub_addresses[ROGUE_HUB], &seed, admit_all()).expect("bind HUBT's address");
        let phase = Arc::new(AtomicU64::new(0));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let (acceptor, tag, record) = (endpoint.clone(), phase.clone(), closes.clone());
        tokio::spawn(async move {
            // Ends when the endpoint is closed.
            while let Some(incoming) = acceptor.accept().await {
                let phase = tag.load(Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        // Bounded by the idle timeout.
                        let e = conn.closed().await;
                        record.lock().unwrap().push((phase, closed(&e)));
                    }
                });
            }
        });
        Impostor { endpoint, phase, closes }
    }

    /// Presents `seed`'s key from now on; returns the phase that connections made with it carry.
    async fn present(&self, seed: [u8; 32]) -> u64 {
        let config = transport::server_config(&seed, admit_all()).expect("a server config");
        self.endpoint.set_server_config(Some(config));
        // Connections whose first packet came before the change still carry the old phase.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.phase.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How the first of `HUBS`'s connections of `phase` ended.
    async fn first_close(&self, phase: u64) -> String {
        for _ in 0..200 {
            if let Some((_, ended)) = self.closes.lock().unwrap().iter().find(|(p, _)| *p == phase) {
                return format!("{ended:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        "no connection from the hub".into()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// The Authorization header of a request.
enum Auth {
    /// `Bearer <the node's token>`.
    Token,
    Missing,
    Header(String),
}

/// One HTTP request to a node's API.
struct Req {
    node: &'static str,
    method: &'static str,
    path: String,
    auth: Auth,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &'static str, node: &'static str, path: &str) -> Req {
        Req { node, method, path: path.into(), auth: Auth::Token, content_type: "application/json", body: vec![] }
    }
    fn post(node: &'static str, path: &str) -> Req {
        Req::new("POST", node, path)
    }
    fn json(self, v: Value) -> Req {
        self.bytes("application/json", v.to_string().into_bytes())
    }
    fn text(self, content_type: &'static str, text: &str) -> Req {
        self.bytes(content_type, text.as_bytes().to_vec())
    }
    fn bytes(mut self, content_type: &'static str, body: Vec<u8>) -> Req {
        self.content_type = content_type;
        self.body = body;
        self
    }
    fn auth(mut self, auth: Auth) -> Req {
        self.auth = auth;
        self
    }

    /// Sends the request; returns the status and the body.
    async fn send(&self, w: &World) -> (u16, String) {
        let (addr, token) = w.fed.api_of(self.node);
        let auth = match &self.auth {
            Auth::Token => format!("Authorization: Bearer {token}\r\n"),
            Auth::Missing => String::new(),
            Auth::Header(h) => format!("Authorization: {h}\r\n"),
        };
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.method,
            self.path,
            self.content_type,
            self.body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the API listens");
        stream.write_all(head.as_bytes()).await.expect("send the request head");
        // The node may answer (and close) before it has read the whole body: that is an answer.
        let _ = stream.write_all(&self.body).await;
        let mut response = Vec::new();
        let _ = timeout(WAIT, stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

/// The API answers `status`, with a JSON error naming each of `names` (when there is a body to
/// name them in), and nothing is stored.
async fn refused_by_api(w: &World, req: Req, status: u16, names: &[&str]) {
    let q = w.quiet().await;
    let (got, body) = req.send(w).await;
    assert_eq!(got, status, "{} {}: {body}", req.method, req.path);
    if !names.is_empty() {
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("a JSON error, got {body:?}"));
        let text = error["error"].as_str().unwrap_or_else(|| panic!("an \"error\" field, got {body}")).to_lowercase();
        for name in names {
            assert!(text.contains(name), "the error does not name {name:?}: {text}");
        }
    }
    w.still_quiet(q).await;
}

// ---------------------------------------------------------------------------------------------
// Records the tests make
// ---------------------------------------------------------------------------------------------

/// A lookup made at `setting`, signed with `signer`'s key.
fn lookup_by(
    w: &World,
    signer: &str,
    setting: &str,
    who: Person,
    nhs: NhsNumber,
    at: Timestamp,
) -> Signed<AccessEvent> {
    w.id(signer).sign(AccessEvent { lookup_id: new_id(), setting: code(setting), person: who, at, nhs })
}

/// A good lookup at [`SETTING`] by a person called `who`.
fn lookup(w: &World, who: &str, nhs: NhsNumber) -> Signed<AccessEvent> {
    lookup_by(w, SETTING, SETTING, person(who), nhs, now())
}

fn entry(w: &World, signer: &str, origin: &str, seq: u64, at: Timestamp, body: EntryBody) -> SignedEntry {
    w.id(signer).sign(FeedEntry { origin: code(origin), seq, at, body })
}

/// A head over the live set of `entries`, signed by `signer`.
fn head(w: &World, signer: &str, origin: &str, seq: u64, at: Timestamp, entries: &[SignedEntry]) -> SignedHead {
    let mut live = LiveFeed::new();
    for e in entries {
        live.apply(e.clone());
    }
    let (plans_root, children, contacts) = live.commitment();
    w.id(signer).sign(FeedHead { origin: code(origin), seq, at, plans_root, children, contacts })
}

fn feed(origin: &str, after: u64, upto: u64, entries: Vec<SignedEntry>, head: Option<SignedHead>) -> Message {
    Message::Feed(FeedBatch { origin: code(origin), after, upto, entries, head, more: false })
}

/// A plan entry of 205 (`CAM-<n>`), signed by 205, at the clock's sequence.
fn camden_entry(w: &World, n: u64) -> SignedEntry {
    let at = now();
    let reference = format!("CAM-{n}");
    entry(w, OTHER_AUTH, OTHER_AUTH, at.as_millis() + n, at, EntryBody::Plan(plan(&reference, camden_child())))
}

/// A visit of `hub`'s own feed: a lookup `signer` signed as [`SETTING`].
fn visit(w: &World, hub: &str, signer: &str, seq: u64) -> SignedEntry {
    let at = now();
    let event = lookup_by(w, signer, SETTING, person("N-V"), flagged(), at);
    entry(w, hub, hub, seq, at, EntryBody::Visit(Box::new(event)))
}

/// A notification of a lookup at `setting`, as `HUBX` would send it to 204 (not yet signed).
fn notification(w: &World, setting: &str, nhs: NhsNumber, at: Timestamp, matched: &[&str]) -> Notification {
    let event =
        w.id(setting).sign(AccessEvent { lookup_id: new_id(), setting: code(setting), person: person("N-1"), at, nhs });
    Notification {
        event,
        authority: code(AUTH),
        matched: matched.iter().map(|r| PlanRef::parse(r).unwrap()).collect(),
        hub: code(FAKE_HUB),
        answered_at: at,
        signed_at: at,
    }
}

/// A notification 204 would take, were it signed by `HUBX`: one thing is then spoilt.
fn good_notification(w: &World) -> Notification {
    notification(w, SETTING, flagged(), now(), &["LAC-1"])
}

fn root(w: &World, n: u8) -> Identity {
    test_identity(&w.fed.fed.name, &format!("ROOT{n}"))
}

fn days(n: u64) -> u64 {
    n * DAY_MS
}

// =============================================================================================
// Layer 1: the TLS handshake
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_handshake() {
    let (w, nodes) = World::start(Options { impostor: true, ..Options::default() }).await;
    // Directory version 2 revokes, retires and moves keys out of their windows.
    let start = w.fed.fed.start;
    let at = now();
    let v2 = w.fed.fed.next_directory(&w.fed.fed.directory.directory, |d| {
        for m in &mut d.members {
            let key = &mut m.keys[0];
            match m.code.as_str() {
                "RXV01" => key.status = KeyStatus::Revoked { at: start },
                "RXR01" => key.status = KeyStatus::Retired { at: start },
                "RXE01" => key.valid_until = start,
                "RXF01" => key.valid_from = at.plus_ms(days(30)),
                _ => {}
            }
        }
    });
    w.publish(HUB, std::slice::from_ref(&v2)).await;
    w.publish(AUTH, &[v2]).await;
    Run::new(w, nodes, ()).await.check("handshake", handshake_entries()).await;
}

fn handshake_entries() -> Entries<()> {
    entries![
        key_not_in_the_directory__refused_in_the_handshake__nothing_stored,
        revoked_key__refused_in_the_handshake__nothing_stored,
        retired_key__refused_in_the_handshake__nothing_stored,
        key_past_its_validity_window__refused_in_the_handshake__nothing_stored,
        key_not_yet_valid__refused_in_the_handshake__nothing_stored,
        member_dialling_an_authority__closed_not_admitted__nothing_stored,
        wrong_alpn__handshake_fails__nothing_stored,
        no_client_certificate__handshake_fails__nothing_stored,
        hub_address_answering_with_a_settings_key__closed_not_admitted__nothing_stored,
        hub_address_answering_with_another_hubs_key__closed_not_admitted__nothing_stored,
    ]
}

/// A client with `seed`'s key is refused by the hub in the handshake with a TLS alert, and the
/// hub counts the refusal under `reason`.
async fn refused_in_the_handshake(w: &World, seed: [u8; 32], reason: &str) {
    let q = w.quiet().await;
    let before = w.metric(HUB, &refused_connection(reason)).await;
    let outcome = shake(&client_endpoint(seed), None, w.hub_addr()).await;
    assert!(matches!(outcome, Shake::TlsAlert(ALERT_CERTIFICATE_UNKNOWN)), "{outcome:?}");
    w.counted(HUB, &refused_connection(reason), before).await;
    w.still_quiet(q).await;
}

async fn key_not_in_the_directory__refused_in_the_handshake__nothing_stored(c: Arc<Ctx<()>>) {
    refused_in_the_handshake(&c.w, [42; 32], "unknown_key").await;
}

async fn revoked_key__refused_in_the_handshake__nothing_stored(c: Arc<Ctx<()>>) {
    refused_in_the_handshake(&c.w, c.w.seed("RXV01"), "key_not_active").await;
}

async fn retired_key__refused_in_the_handshake__nothing_stored(c: Arc<Ctx<()>>) {
    refused_in_the_handshake(&c.w, c.w.seed("RXR01"), "key_not_active").await;
}

async fn key_past_its_validity_window__refused_in_the_handshake__nothing_stored(c: Arc<Ctx<()>>) {
    refused_in_the_handshake(&c.w, c.w.seed("RXE01"), "key_outside_window").await;
}

async fn key_not_yet_valid__refused_in_the_handshake__nothing_stored(c: Arc<Ctx<()>>) {
    refused_in_the_handshake(&c.w, c.w.seed("RXF01"), "key_outside_window").await;
}

async fn member_dialling_an_authority__closed_not_admitted__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let name = refused_connection("role_not_allowed");
    let before = w.metric(AUTH, &name).await;
    // An authority only dials out: it admits no role at all.
    let outcome = shake(&client_endpoint(w.seed(SETTING)), None, w.authority_quic_addr()).await;
    assert!(matches!(outcome, Shake::Closed(code) if code == u64::from(CLOSE_NOT_ADMITTED)), "{outcome:?}");
    w.counted(AUTH, &name, before).await;
    w.still_quiet(q).await;
}

async fn wrong_alpn__handshake_fails__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let before = w.metric(HUB, &refused_connection("handshake_failed")).await;
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a client endpoint");
    let outcome = shake(&endpoint, Some(bare_tls_client(b"h3")), w.hub_addr()).await;
    assert!(matches!(outcome, Shake::TlsAlert(ALERT_NO_APPLICATION_PROTOCOL)), "{outcome:?}");
    w.counted(HUB, &refused_connection("handshake_failed"), before).await;
    w.still_quiet(q).await;
}

async fn no_client_certificate__handshake_fails__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let before = w.metric(HUB, &refused_connection("handshake_failed")).await;
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a client endpoint");
    let outcome = shake(&endpoint, Some(bare_tls_client(transport::ALPN)), w.hub_addr()).await;
    assert!(matches!(outcome, Shake::TlsAlert(ALERT_CERTIFICATE_REQUIRED)), "{outcome:?}");
    w.counted(HUB, &refused_connection("handshake_failed"), before).await;
    w.still_quiet(q).await;
}

/// `HUBS` dials `HUBT`'s address, where the impostor presents `seed`'s key: `HUBS` must close
/// the connection as not admitted.
async fn hub_dials_an_impostor(w: &World, seed: [u8; 32]) {
    let q = w.quiet().await;
    let impostor = w.impostor.as_ref().expect("this layer runs an impostor");
    let phase = impostor.present(seed).await;
    let ended = impostor.first_close(phase).await;
    assert_eq!(ended, format!("{:?}", Ended::Closed(u64::from(CLOSE_NOT_ADMITTED))));
    w.still_quiet(q).await;
}

async fn hub_address_answering_with_a_settings_key__closed_not_admitted__nothing_stored(c: Arc<Ctx<()>>) {
    hub_dials_an_impostor(&c.w, c.w.seed(SETTING)).await;
}

async fn hub_address_answering_with_another_hubs_key__closed_not_admitted__nothing_stored(c: Arc<Ctx<()>>) {
    hub_dials_an_impostor(&c.w, c.w.seed(FAKE_HUB)).await;
}

// =============================================================================================
// Layer 2: QUIC streams and frames
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_frames() {
    let (w, nodes) = World::start(Options::default()).await;
    Run::new(w, nodes, ()).await.check("frames", frame_entries()).await;
}

fn frame_entries() -> Entries<()> {
    entries![
        garbage_payload__closed_bad_frame__nothing_stored,
        length_above_the_frame_maximum__closed_bad_frame__nothing_stored,
        empty_frame__closed_bad_frame__nothing_stored,
        frame_cut_short_in_its_payload__closed_bad_frame__nothing_stored,
        frame_cut_short_in_its_header__closed_bad_frame__nothing_stored,
        other_protocol_version__closed_bad_frame__nothing_stored,
        trailing_bytes_after_a_message__closed_bad_frame__nothing_stored,
        unknown_message_kind__closed_bad_frame__nothing_stored,
        list_longer_than_its_maximum__closed_bad_frame__nothing_stored,
        length_bomb_inside_a_message__closed_bad_frame__nothing_stored,
        nhs_number_with_a_wrong_check_digit_in_a_lookup__closed_bad_frame__nothing_stored,
        lowercase_member_code_in_a_lookup__closed_bad_frame__nothing_stored,
        garbage_on_a_members_stream__closed_bad_frame__nothing_stored,
        length_above_the_frame_maximum_on_a_members_stream__closed_bad_frame__nothing_stored,
        setting_sends_a_feed_batch__refused_not_allowed__nothing_stored,
        setting_sends_a_directory_chain__refused_not_allowed__nothing_stored,
        setting_sends_a_digest__refused_not_allowed__nothing_stored,
        hub_sends_a_lookup__refused_not_allowed__nothing_stored,
        too_many_frames_in_a_setting_session__closed_bad_frame__nothing_stored,
    ]
}

/// A setting writes `bytes` on a lookup session: the hub closes the connection with
/// `CLOSE_BAD_FRAME` and counts a bad frame.
async fn bad_frame_from_a_setting(w: &World, bytes: Vec<u8>) {
    let q = w.quiet().await;
    let name = BAD_FRAMES;
    let before = w.metric(HUB, name).await;
    let ended = open_session(w, SETTING, &bytes).await.outcome(WAIT).await;
    assert!(is_closed_with(&ended, CLOSE_BAD_FRAME), "{ended:?}");
    w.counted(HUB, name, before).await;
    w.still_quiet(q).await;
}

/// A hub writes `bytes` on its stream: the hub closes the connection with `CLOSE_BAD_FRAME`.
async fn bad_frame_from_a_hub(w: &World, bytes: Vec<u8>) {
    let q = w.quiet().await;
    let name = BAD_FRAMES;
    let before = w.metric(HUB, name).await;
    let mut peer = member(w, ROGUE_HUB).await;
    peer.send_bytes(&bytes).await;
    let ended = peer.ended(WAIT).await;
    assert!(is_closed_with(&ended, CLOSE_BAD_FRAME), "{ended:?}");
    w.counted(HUB, name, before).await;
    w.still_quiet(q).await;
}

/// A length prefix and then `payload`.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn sync_frame() -> Vec<u8> {
    wire::encode_frame(&Message::Sync { directory_version: 1, marks: vec![] })
}

/// Replaces the only occurrence of `from` in `bytes` by `to`.
fn patched(mut bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let at: Vec<usize> =
        (0..bytes.len().saturating_sub(from.len() - 1)).filter(|&i| bytes[i..].starts_with(from)).collect();
    assert_eq!(at.len(), 1, "the bytes to patch occur once");
    bytes[at[0]..at[0] + from.len()].copy_from_slice(to);
    bytes
}

async fn garbage_payload__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    // The right protocol version, then bytes that are no message.
    let mut payload = PROTOCOL_VERSION.to_be_bytes().to_vec();
    payload.extend((0..62u8).map(|i| i.wrapping_mul(37).wrapping_add(200)));
    bad_frame_from_a_setting(&c.w, framed(&payload)).await;
}

async fn length_above_the_frame_maximum__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    bad_frame_from_a_setting(&c.w, ((wire::FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec()).await;
}

async fn empty_frame__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    bad_frame_from_a_setting(&c.w, framed(&[])).await;
}

async fn frame_cut_short_in_its_payload__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend([7u8; 10]);
    bad_frame_from_a_setting(&c.w, bytes).await;
}

async fn frame_cut_short_in_its_header__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    bad_frame_from_a_setting(&c.w, vec![0, 0]).await;
}

async fn other_protocol_version__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mut bytes = sync_frame();
    bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION - 1).to_be_bytes());
    bad_frame_from_a_setting(&c.w, bytes).await;
}

async fn trailing_bytes_after_a_message__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mut payload = sync_frame()[4..].to_vec();
    payload.push(0);
    bad_frame_from_a_setting(&c.w, framed(&payload)).await;
}

async fn unknown_message_kind__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mut payload = PROTOCOL_VERSION.to_be_bytes().to_vec();
    payload.extend(200u32.to_le_bytes());
    payload.extend([0u8; 8]);
    bad_frame_from_a_setting(&c.w, framed(&payload)).await;
}

async fn list_longer_than_its_maximum__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mark = Mark { origin: code(AUTH), seq: 1, head_at: Timestamp(0) };
    let sync = Message::Sync { directory_version: 1, marks: vec![mark; SYNC_MARKS_MAX + 1] };
    bad_frame_from_a_setting(&c.w, wire::encode_frame(&sync)).await;
}

async fn length_bomb_inside_a_message__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    // A Sync whose list of marks claims 2^60 of them, and holds none.
    let mut payload = PROTOCOL_VERSION.to_be_bytes().to_vec();
    payload.extend(0u32.to_le_bytes());
    payload.extend(1u64.to_le_bytes());
    payload.extend((1u64 << 60).to_le_bytes());
    bad_frame_from_a_setting(&c.w, framed(&payload)).await;
}

async fn nhs_number_with_a_wrong_check_digit_in_a_lookup__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let frame = wire::encode_frame(&Message::Lookup(lookup(&c.w, "N-1", flagged())));
    let bytes = patched(frame, &9_434_765_919u64.to_le_bytes(), &9_434_765_910u64.to_le_bytes());
    bad_frame_from_a_setting(&c.w, bytes).await;
}

async fn lowercase_member_code_in_a_lookup__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let frame = wire::encode_frame(&Message::Lookup(lookup(&c.w, "N-1", flagged())));
    bad_frame_from_a_setting(&c.w, patched(frame, b"RXH01", b"rxh01")).await;
}

async fn garbage_on_a_members_stream__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let mut payload = PROTOCOL_VERSION.to_be_bytes().to_vec();
    payload.extend((0..62u8).map(|i| i.wrapping_mul(91).wrapping_add(13)));
    bad_frame_from_a_hub(&c.w, framed(&payload)).await;
}

async fn length_above_the_frame_maximum_on_a_members_stream__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    bad_frame_from_a_hub(&c.w, (u32::MAX).to_be_bytes().to_vec()).await;
}

/// `message` from a setting's lookup session is refused as not allowed: the hub counts it and
/// answers `Refused(NotAllowed)` at once, so that the session does not wait for a time-out.
async fn not_allowed_from_a_setting(w: &World, message: Message) {
    let q = w.quiet().await;
    let name = event("message_refused");
    let before = w.metric(HUB, &name).await;
    let session = open_session(w, SETTING, &wire::encode_frame(&message)).await;
    let answered = Instant::now();
    match session.outcome(WAIT).await {
        Ended::Reply(m) => {
            assert!(matches!(*m, Message::Refused(Refused { lookup_id: None, code: RefusalCode::NotAllowed })), "{m:?}")
        }
        other => panic!("expected Refused(NotAllowed), got {other:?}"),
    }
    println!("refused message answered in {} ms", answered.elapsed().as_millis());
    w.counted(HUB, &name, before).await;
    w.still_quiet(q).await;
}

async fn setting_sends_a_feed_batch__refused_not_allowed__nothing_stored(c: Arc<Ctx<()>>) {
    let e = camden_entry(&c.w, 1);
    let h = head(&c.w, OTHER_AUTH, OTHER_AUTH, e.body.seq, e.body.at, std::slice::from_ref(&e));
    not_allowed_from_a_setting(&c.w, feed(OTHER_AUTH, 0, e.body.seq, vec![e], Some(h))).await;
}

async fn setting_sends_a_directory_chain__refused_not_allowed__nothing_stored(c: Arc<Ctx<()>>) {
    let v2 = c.w.fed.fed.next_directory(&c.w.fed.fed.directory.directory, |_| {});
    not_allowed_from_a_setting(&c.w, Message::Directories(vec![v2])).await;
}

async fn setting_sends_a_digest__refused_not_allowed__nothing_stored(c: Arc<Ctx<()>>) {
    let fingerprints = wire::fingerprints(&[]);
    not_allowed_from_a_setting(&c.w, Message::Digest { directory_version: 1, directory: 0, fingerprints }).await;
}

async fn hub_sends_a_lookup__refused_not_allowed__nothing_stored(c: Arc<Ctx<()>>) {
    let lookup = lookup(&c.w, "N-1", flagged());
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Lookup(lookup), "message_refused").await;
}

// =============================================================================================
// Layer 3: lookups
// =============================================================================================

/// What the lookups layer set up: a lookup the hub answered (and stored).
struct Lookups {
    answered: Signed<AccessEvent>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_lookups() {
    // After the baseline the hub allows no lookup per person and hour: any new lookup that passes
    // every other check is over the limit (rate buckets live in memory; a restart refills them).
    let opts = Options { person_limit_after_baseline: Some(0), ..Options::default() };
    let (w, nodes) = World::start(opts).await;
    let answered = lookup(&w, "P-REPLAY", unflagged());
    let ended = ask(&w, SETTING, &answered).await;
    assert!(matches!(ended.reply(), Some(Message::Answer(a)) if a.lookup_id == answered.body.lookup_id), "{ended:?}");
    Run::new(w, nodes, Lookups { answered }).await.check("lookups", lookup_entries()).await;
}

fn lookup_entries() -> Entries<Lookups> {
    entries![
        lookup_signed_for_another_setting__refused_not_from_setting__nothing_stored,
        lookup_signed_with_another_settings_key__refused_bad_signature__nothing_stored,
        lookup_altered_after_signing__refused_bad_signature__nothing_stored,
        lookup_signed_by_a_stranger_under_the_settings_key_id__refused_bad_signature__nothing_stored,
        lookup_with_an_empty_person_id__refused_bad_text__nothing_stored,
        lookup_with_a_person_name_too_long__refused_bad_text__nothing_stored,
        lookup_with_a_control_character_in_the_role__refused_bad_text__nothing_stored,
        lookup_id_replayed_with_other_content__refused_replayed__nothing_stored,
        same_signed_lookup_again__answered_again__nothing_stored,
        lookup_dated_ten_minutes_ago__refused_clock_skew__nothing_stored,
        lookup_dated_ten_minutes_ahead__refused_clock_skew__nothing_stored,
        lookup_dated_before_its_keys_validity__refused_bad_signature__nothing_stored,
        lookup_over_the_per_person_rate_limit__refused_rate_limited__nothing_stored,
    ]
}

/// The hub answers `lookup` (sent over [`SETTING`]'s connection) with `Refused(code)`, counts
/// a refused lookup, and stores nothing.
async fn lookup_refused(w: &World, lookup: Signed<AccessEvent>, code: RefusalCode) {
    let q = w.quiet().await;
    let name = event("lookup_refused");
    let before = w.metric(HUB, &name).await;
    let id = lookup.body.lookup_id;
    let ended = ask(w, SETTING, &lookup).await;
    match ended.reply() {
        Some(Message::Refused(r)) => {
            assert_eq!(r.code, code, "refused with the wrong code");
            assert_eq!(r.lookup_id, Some(id), "the refusal names the lookup");
        }
        _ => panic!("expected Refused({code:?}), got {ended:?}"),
    }
    w.counted(HUB, &name, before).await;
    w.still_quiet(q).await;
}

async fn lookup_signed_for_another_setting__refused_not_from_setting__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let l = lookup_by(&c.w, OTHER_SETTING, OTHER_SETTING, person("N-1"), flagged(), now());
    lookup_refused(&c.w, l, RefusalCode::NotFromSetting).await;
}

async fn lookup_signed_with_another_settings_key__refused_bad_signature__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let l = lookup_by(&c.w, OTHER_SETTING, SETTING, person("N-1"), flagged(), now());
    lookup_refused(&c.w, l, RefusalCode::BadSignature).await;
}

async fn lookup_altered_after_signing__refused_bad_signature__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let mut l = lookup(&c.w, "N-1", unflagged());
    l.body.nhs = flagged();
    lookup_refused(&c.w, l, RefusalCode::BadSignature).await;
}

async fn lookup_signed_by_a_stranger_under_the_settings_key_id__refused_bad_signature__nothing_stored(
    c: Arc<Ctx<Lookups>>,
) {
    let mut l = Identity::from_seed([7; 32]).sign(lookup(&c.w, "N-1", flagged()).body);
    l.key_id = c.w.id(SETTING).key_id();
    lookup_refused(&c.w, l, RefusalCode::BadSignature).await;
}

async fn lookup_with_an_empty_person_id__refused_bad_text__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let who = Person { id: " ".into(), ..person("x") };
    lookup_refused(&c.w, lookup_by(&c.w, SETTING, SETTING, who, flagged(), now()), RefusalCode::BadText).await;
}

async fn lookup_with_a_person_name_too_long__refused_bad_text__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let who = Person { name: "N".repeat(129), ..person("N-1") };
    lookup_refused(&c.w, lookup_by(&c.w, SETTING, SETTING, who, flagged(), now()), RefusalCode::BadText).await;
}

async fn lookup_with_a_control_character_in_the_role__refused_bad_text__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let who = Person { role: "Nurse\u{1b}[2J".into(), ..person("N-1") };
    lookup_refused(&c.w, lookup_by(&c.w, SETTING, SETTING, who, flagged(), now()), RefusalCode::BadText).await;
}

async fn lookup_id_replayed_with_other_content__refused_replayed__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let first = &c.l.answered.body;
    let replay = c.w.id(SETTING).sign(AccessEvent { nhs: flagged(), at: now(), ..first.clone() });
    lookup_refused(&c.w, replay, RefusalCode::Replayed).await;
}

async fn same_signed_lookup_again__answered_again__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let q = c.w.quiet().await;
    let ended = ask(&c.w, SETTING, &c.l.answered).await;
    let id = c.l.answered.body.lookup_id;
    assert!(matches!(ended.reply(), Some(Message::Answer(a)) if a.lookup_id == id), "{ended:?}");
    c.w.still_quiet(q).await;
}

async fn lookup_dated_ten_minutes_ago__refused_clock_skew__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let l = lookup_by(&c.w, SETTING, SETTING, person("N-1"), flagged(), now().minus_ms(600_000));
    lookup_refused(&c.w, l, RefusalCode::ClockSkew).await;
}

async fn lookup_dated_ten_minutes_ahead__refused_clock_skew__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let l = lookup_by(&c.w, SETTING, SETTING, person("N-1"), flagged(), now().plus_ms(600_000));
    lookup_refused(&c.w, l, RefusalCode::ClockSkew).await;
}

async fn lookup_dated_before_its_keys_validity__refused_bad_signature__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let at = c.w.fed.fed.start.minus_ms(days(61));
    let l = lookup_by(&c.w, SETTING, SETTING, person("N-1"), flagged(), at);
    lookup_refused(&c.w, l, RefusalCode::BadSignature).await;
}

async fn lookup_over_the_per_person_rate_limit__refused_rate_limited__nothing_stored(c: Arc<Ctx<Lookups>>) {
    let before = c.w.metric(HUB, &event("rate_limited")).await;
    lookup_refused(&c.w, lookup(&c.w, "P-RATE", flagged()), RefusalCode::RateLimited).await;
    // The alarm is raised as well.
    c.w.counted(HUB, &event("rate_limited"), before).await;
}

// =============================================================================================
// Layer 4: feed batches and heads
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_feeds() {
    let (w, nodes) = World::start(Options::default()).await;
    Run::new(w, nodes, ()).await.check("feeds", feed_entries()).await;
}

fn feed_entries() -> Entries<()> {
    entries![
        batch_whose_after_is_above_its_upto__refused_bad_batch__nothing_stored,
        batch_holding_an_entry_of_another_origin__refused_bad_batch__nothing_stored,
        batch_holding_an_entry_beyond_its_upto__refused_bad_batch__nothing_stored,
        batch_with_an_unsigned_entry__refused_bad_batch__nothing_stored,
        batch_with_an_entry_signed_by_another_authority__refused_bad_batch__nothing_stored,
        entry_dated_before_its_keys_validity__refused_bad_batch__nothing_stored,
        entry_whose_plan_breaks_a_plan_rule__refused_bad_batch__nothing_stored,
        batch_whose_head_is_dated_in_the_future__refused_clock_skew__nothing_stored,
        head_message_dated_in_the_future__refused_clock_skew__nothing_stored,
        batch_under_a_head_signed_by_another_authority__refused_bad_signature__nothing_stored,
        head_dated_before_its_keys_validity__refused_bad_signature__nothing_stored,
        batch_closed_by_the_head_of_another_origin__refused_bad_batch__nothing_stored,
        batch_whose_entries_do_not_match_its_head__refused_head_mismatch__nothing_stored,
        batch_with_an_entry_left_out__refused_head_mismatch__nothing_stored,
        authoritys_own_batch_that_does_not_match_its_head__refused_head_mismatch__nothing_stored,
        authority_sends_another_authoritys_feed__refused_not_own_feed__nothing_stored,
        authority_sends_another_authoritys_head__refused_not_own_feed__nothing_stored,
        visits_relayed_by_a_third_hub__refused_relayed_visits__nothing_stored,
        visit_whose_lookup_the_setting_did_not_sign__refused_bad_batch__nothing_stored,
        visit_batch_whose_after_is_not_below_its_upto__refused_bad_batch__nothing_stored,
        visit_feed_holding_a_plan__refused_bad_batch__nothing_stored,
        feed_of_a_setting__refused_unknown_origin__nothing_stored,
        feed_of_a_code_not_in_the_directory__refused_unknown_origin__nothing_stored,
        run_whose_head_never_comes__refused_missing_head__nothing_stored,
        batch_whose_head_is_not_at_its_upto__refused_bad_batch__nothing_stored,
    ]
}

/// `message` from `sender` (a hub or an authority connection) is refused by the hub, which
/// counts `event_name` (feeds, heads and relays are refused without a reply, by design).
async fn refused_at_the_hub(w: &World, sender: &str, message: Message, event_name: &str) {
    let q = w.quiet().await;
    let name = event(event_name);
    let before = w.metric(HUB, &name).await;
    let mut peer = member(w, sender).await;
    peer.send(&message).await;
    w.counted(HUB, &name, before).await;
    drop(peer);
    w.still_quiet(q).await;
}

async fn batch_refused(w: &World, sender: &str, message: Message) {
    refused_at_the_hub(w, sender, message, "batch_refused").await;
}

/// A whole run of 205's feed (after 0) holding `entries`, closed by `head`.
fn run_205(entries: Vec<SignedEntry>, head: SignedHead) -> Message {
    feed(OTHER_AUTH, 0, head.body.seq, entries, Some(head))
}

/// A good head of 205 over `entries`, at the last entry's sequence.
fn head_205(w: &World, entries: &[SignedEntry]) -> SignedHead {
    let last = entries.last().expect("an entry");
    head(w, OTHER_AUTH, OTHER_AUTH, last.body.seq, now(), entries)
}

async fn batch_whose_after_is_above_its_upto__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    batch_refused(&c.w, ROGUE_HUB, feed(OTHER_AUTH, 10, 5, vec![], None)).await;
}

async fn batch_holding_an_entry_of_another_origin__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let theirs = entry(w, AUTH, AUTH, now().as_millis(), now(), EntryBody::Plan(plan("LAC-9", flagged())));
    let h = head_205(w, std::slice::from_ref(&theirs));
    batch_refused(w, ROGUE_HUB, run_205(vec![theirs], h)).await;
}

async fn batch_holding_an_entry_beyond_its_upto__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let e = camden_entry(&c.w, 1);
    batch_refused(&c.w, ROGUE_HUB, feed(OTHER_AUTH, 0, e.body.seq - 1, vec![e], None)).await;
}

async fn batch_with_an_unsigned_entry__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let mut e = camden_entry(&c.w, 1);
    e.signature = SignatureBytes([0; 32], [0; 32]);
    let h = head_205(&c.w, std::slice::from_ref(&e));
    batch_refused(&c.w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn batch_with_an_entry_signed_by_another_authority__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = entry(w, AUTH, OTHER_AUTH, now().as_millis(), now(), EntryBody::Plan(plan("CAM-1", camden_child())));
    let h = head_205(w, std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn entry_dated_before_its_keys_validity__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let at = w.fed.fed.start.minus_ms(days(61));
    let e = entry(w, OTHER_AUTH, OTHER_AUTH, now().as_millis(), at, EntryBody::Plan(plan("CAM-1", camden_child())));
    let h = head_205(w, std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn entry_whose_plan_breaks_a_plan_rule__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let mut p = plan("CAM-1", camden_child());
    p.end = Some(Date::parse("2025-01-01").unwrap());
    let e = entry(w, OTHER_AUTH, OTHER_AUTH, now().as_millis(), now(), EntryBody::Plan(p));
    let h = head_205(w, std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn batch_whose_head_is_dated_in_the_future__refused_clock_skew__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    let h = head(w, OTHER_AUTH, OTHER_AUTH, e.body.seq, now().plus_ms(600_000), std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn head_message_dated_in_the_future__refused_clock_skew__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    let h = head(w, OTHER_AUTH, OTHER_AUTH, e.body.seq, now().plus_ms(600_000), &[e]);
    batch_refused(w, ROGUE_HUB, Message::Head(h)).await;
}

async fn batch_under_a_head_signed_by_another_authority__refused_bad_signature__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    // A head that says it is 205's, signed with 204's key.
    let h = head(w, AUTH, OTHER_AUTH, e.body.seq, now(), std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn head_dated_before_its_keys_validity__refused_bad_signature__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    let at = w.fed.fed.start.minus_ms(days(61));
    let h = head(w, OTHER_AUTH, OTHER_AUTH, e.body.seq, at, std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn batch_closed_by_the_head_of_another_origin__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    // A good head, but of 204's feed, closing a run of 205's.
    let h = head(w, AUTH, AUTH, e.body.seq, now(), std::slice::from_ref(&e));
    batch_refused(w, ROGUE_HUB, run_205(vec![e], h)).await;
}

async fn batch_whose_entries_do_not_match_its_head__refused_head_mismatch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = camden_entry(w, 1);
    let h = head_205(w, std::slice::from_ref(&e));
    // The same plan, altered (and signed again by 205), under the head of the original.
    let mut altered = e.body.clone();
    altered.body = EntryBody::Plan(plan("CAM-1", unflagged()));
    batch_refused(w, ROGUE_HUB, run_205(vec![w.id(OTHER_AUTH).sign(altered)], h)).await;
}

async fn batch_with_an_entry_left_out__refused_head_mismatch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let (first, second) = (camden_entry(w, 1), camden_entry(w, 2));
    let h = head_205(w, &[first.clone(), second]);
    batch_refused(w, ROGUE_HUB, run_205(vec![first], h)).await;
}

async fn authoritys_own_batch_that_does_not_match_its_head__refused_head_mismatch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let (first, second) = (camden_entry(w, 1), camden_entry(w, 2));
    let h = head_205(w, &[first.clone(), second]);
    batch_refused(w, OTHER_AUTH, run_205(vec![first], h)).await;
}

async fn authority_sends_another_authoritys_feed__refused_not_own_feed__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = entry(w, AUTH, AUTH, now().as_millis(), now(), EntryBody::Plan(plan("LAC-9", flagged())));
    let h = head(w, AUTH, AUTH, e.body.seq, now(), std::slice::from_ref(&e));
    batch_refused(w, OTHER_AUTH, feed(AUTH, 0, e.body.seq, vec![e], Some(h))).await;
}

async fn authority_sends_another_authoritys_head__refused_not_own_feed__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let h = head(w, AUTH, AUTH, now().as_millis(), now(), &[]);
    batch_refused(w, OTHER_AUTH, Message::Head(h)).await;
}

async fn visits_relayed_by_a_third_hub__refused_relayed_visits__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let v = visit(w, FAKE_HUB, SETTING, now().as_millis());
    batch_refused(w, ROGUE_HUB, feed(FAKE_HUB, 0, v.body.seq, vec![v], None)).await;
}

async fn visit_whose_lookup_the_setting_did_not_sign__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let v = visit(w, ROGUE_HUB, OTHER_SETTING, now().as_millis());
    batch_refused(w, ROGUE_HUB, feed(ROGUE_HUB, 0, v.body.seq, vec![v], None)).await;
}

async fn visit_batch_whose_after_is_not_below_its_upto__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let v = visit(w, ROGUE_HUB, SETTING, now().as_millis());
    batch_refused(w, ROGUE_HUB, feed(ROGUE_HUB, v.body.seq, v.body.seq, vec![v], None)).await;
}

async fn visit_feed_holding_a_plan__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let e = entry(w, ROGUE_HUB, ROGUE_HUB, now().as_millis(), now(), EntryBody::Plan(plan("X-1", flagged())));
    batch_refused(w, ROGUE_HUB, feed(ROGUE_HUB, 0, e.body.seq, vec![e], None)).await;
}

async fn feed_of_a_setting__refused_unknown_origin__nothing_stored(c: Arc<Ctx<()>>) {
    batch_refused(&c.w, ROGUE_HUB, feed(SETTING, 0, 1, vec![], None)).await;
}

async fn feed_of_a_code_not_in_the_directory__refused_unknown_origin__nothing_stored(c: Arc<Ctx<()>>) {
    batch_refused(&c.w, ROGUE_HUB, feed("ZZZ99", 0, 1, vec![], None)).await;
}

// =============================================================================================
// Layer 5: notifications, receipts, and what a hub may send an authority
// =============================================================================================

/// What the notifications layer set up: a notification the hub holds for 205 (which never
/// connects to take it).
struct Notes {
    pending: LookupId,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_notifications() {
    let (w, nodes) = World::start(Options::default()).await;
    // 205 publishes one plan, and leaves; a setting then looks that child up.
    let e = camden_entry(&w, 1);
    let h = head_205(&w, std::slice::from_ref(&e));
    let seq = e.body.seq;
    let mut camden = member(&w, OTHER_AUTH).await;
    camden.send(&run_205(vec![e], h)).await;
    wait_until("the hub holds 205's plan", Duration::from_secs(10), || async {
        hub_seq(&w.fed, HUB, OTHER_AUTH).await == seq
    })
    .await;
    drop(camden);
    let looked = lookup(&w, "P-205", camden_child());
    let ended = ask(&w, SETTING, &looked).await;
    assert!(matches!(ended.reply(), Some(Message::Answer(_))), "{ended:?}");
    wait_until("the hub holds a notification for 205", Duration::from_secs(10), || async {
        waiting(&w, OTHER_AUTH).await == 1
    })
    .await;
    Run::new(w, nodes, Notes { pending: looked.body.lookup_id })
        .await
        .check("notifications", notification_entries())
        .await;
}

/// Notifications the hub holds for `authority`.
async fn waiting(w: &World, authority: &str) -> u64 {
    let status = w.status(HUB).await;
    let found = status["notifications_waiting"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["authority"] == authority))
        .cloned();
    found.and_then(|x| x["waiting"].as_u64()).unwrap_or(0)
}

fn notification_entries() -> Entries<Notes> {
    entries![
        notification_for_another_authority__refused_bad_notification__nothing_stored,
        notification_for_a_child_without_a_plan__refused_bad_notification__nothing_stored,
        notification_naming_a_plan_the_authority_does_not_hold__refused_bad_notification__nothing_stored,
        notification_naming_no_plan__refused_bad_notification__nothing_stored,
        notification_of_a_scheduled_setting__refused_bad_notification__nothing_stored,
        notification_of_a_lookup_older_than_thirty_days__refused_bad_notification__nothing_stored,
        notification_of_a_lookup_dated_ahead_of_the_clock__refused_bad_notification__nothing_stored,
        notification_signed_by_a_stranger__refused_bad_signature__nothing_stored,
        notification_signed_by_another_hub_than_it_names__refused_bad_signature__nothing_stored,
        notification_naming_a_setting_as_its_hub__refused_bad_signature__nothing_stored,
        notification_whose_lookup_was_altered__refused_bad_signature__nothing_stored,
        notification_signed_before_the_hubs_key_was_valid__refused_bad_signature__nothing_stored,
        hub_sends_an_authority_a_lookup__refused_not_allowed__nothing_stored,
        sync_claiming_more_of_the_authoritys_feed_than_it_signed__asked_for_the_whole_feed__nothing_stored,
        run_of_the_authoritys_own_feed_under_a_head_it_did_not_sign__refused__nothing_stored,
        run_of_the_authoritys_own_feed_with_an_entry_left_out__refused__nothing_stored,
        batch_of_another_origin_sent_to_an_authority__refused_not_allowed__nothing_stored,
        partial_run_of_the_authoritys_own_feed__refused_not_allowed__nothing_stored,
        notification_relayed_to_a_hub_that_is_not_a_home_hub_of_its_authority__refused__nothing_stored,
        relayed_notification_signed_by_a_stranger__refused__nothing_stored,
        relayed_notification_of_a_scheduled_setting__refused__nothing_stored,
        receipt_signed_by_a_hub_in_an_authoritys_name__refused__notification_kept,
        receipt_signed_by_another_authority__refused__notification_kept,
        notification_sent_again_with_a_receipt_the_authority_never_signed__refused_bad_signature__nothing_stored,
        notification_sent_again_with_the_receipt_of_another_lookup__refused_bad_notification__nothing_stored,
    ]
}

/// `HUBX` sends the authority a notification again with a receipt (made by `change`, signed by
/// `signer`) as the authority's own: refused with `code`, counted, nothing stored.
async fn redelivery_refused(w: &World, change: impl FnOnce(&mut Receipt), signer: &str, refusal: RefusalCode) {
    let q = w.quiet().await;
    let name = event("message_refused");
    let before = w.metric(AUTH, &name).await;
    let n = good_notification(w);
    let id = n.event.body.lookup_id;
    let mut receipt = Receipt { lookup_id: id, authority: code(AUTH), hub: code(FAKE_HUB), stored_at: now() };
    change(&mut receipt);
    let notification = Box::new(w.id(FAKE_HUB).sign(n));
    let message = Message::Redelivered { notification, receipt: w.id(signer).sign(receipt) };
    let got = to_the_authority(w, message, Some(id)).await;
    assert_eq!(got, Some(refusal), "the authority's answer to the notification sent again");
    w.counted(AUTH, &name, before).await;
    w.still_quiet(q).await;
}

async fn notification_sent_again_with_a_receipt_the_authority_never_signed__refused_bad_signature__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    redelivery_refused(&c.w, |_| {}, FAKE_HUB, RefusalCode::BadSignature).await;
}

async fn notification_sent_again_with_the_receipt_of_another_lookup__refused_bad_notification__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    redelivery_refused(&c.w, |r| r.lookup_id = LookupId([0x5a; 16]), AUTH, RefusalCode::BadNotification).await;
}

/// `HUBX` sends `message` to the authority; returns the code of the `Refused` the authority
/// sends back about `lookup_id`, if any.
async fn to_the_authority(w: &World, message: Message, lookup_id: Option<LookupId>) -> Option<RefusalCode> {
    let mut hubx = w.hubx.lock().await;
    let hubx = hubx.as_mut().expect("the authority is connected to HUBX");
    hubx.send(&message).await;
    let id = lookup_id?;
    hubx.expect(WAIT, |m| match m {
        Message::Refused(r) if r.lookup_id == Some(id) => Some(r.code),
        _ => None,
    })
    .await
}

/// The authority refuses `n` (signed by `signer`) with `Refused(code)`, counts it, and stores
/// nothing.
async fn notification_refused(w: &World, signer: &str, n: Notification, code: RefusalCode) {
    let q = w.quiet().await;
    let name = event("message_refused");
    let before = w.metric(AUTH, &name).await;
    let id = n.event.body.lookup_id;
    let signed = match signer {
        "stranger" => Identity::from_seed([9; 32]).sign(n),
        member => w.id(member).sign(n),
    };
    let got = to_the_authority(w, Message::Notify(signed), Some(id)).await;
    assert_eq!(got, Some(code), "the authority's answer to the notification");
    w.counted(AUTH, &name, before).await;
    w.still_quiet(q).await;
}

/// `HUBX` sends `message` to the authority, which refuses it without a reply (as it refuses
/// everything but notifications) and counts it.
async fn silently_refused_by_the_authority(w: &World, message: Message) {
    let q = w.quiet().await;
    let name = event("message_refused");
    let before = w.metric(AUTH, &name).await;
    to_the_authority(w, message, None).await;
    w.counted(AUTH, &name, before).await;
    w.still_quiet(q).await;
}

async fn notification_for_another_authority__refused_bad_notification__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut n = good_notification(&c.w);
    n.authority = code(OTHER_AUTH);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_for_a_child_without_a_plan__refused_bad_notification__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = notification(&c.w, SETTING, unflagged(), now(), &["LAC-1"]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_naming_a_plan_the_authority_does_not_hold__refused_bad_notification__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    let n = notification(&c.w, SETTING, flagged(), now(), &["LAC-1", "INVENTED-9"]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_naming_no_plan__refused_bad_notification__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = notification(&c.w, SETTING, flagged(), now(), &[]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_of_a_scheduled_setting__refused_bad_notification__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = notification(&c.w, GP, flagged(), now(), &["LAC-1"]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_of_a_lookup_older_than_thirty_days__refused_bad_notification__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = notification(&c.w, SETTING, flagged(), now().minus_ms(days(31)), &["LAC-1"]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_of_a_lookup_dated_ahead_of_the_clock__refused_bad_notification__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    let n = notification(&c.w, SETTING, flagged(), now().plus_ms(600_000), &["LAC-1"]);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadNotification).await;
}

async fn notification_signed_by_a_stranger__refused_bad_signature__nothing_stored(c: Arc<Ctx<Notes>>) {
    notification_refused(&c.w, "stranger", good_notification(&c.w), RefusalCode::BadSignature).await;
}

async fn notification_signed_by_another_hub_than_it_names__refused_bad_signature__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut n = good_notification(&c.w);
    n.hub = code(HUB);
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadSignature).await;
}

async fn notification_naming_a_setting_as_its_hub__refused_bad_signature__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut n = good_notification(&c.w);
    n.hub = code(SETTING);
    notification_refused(&c.w, SETTING, n, RefusalCode::BadSignature).await;
}

async fn notification_whose_lookup_was_altered__refused_bad_signature__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut n = good_notification(&c.w);
    n.event.body.person.name = "Someone Else".into();
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadSignature).await;
}

async fn notification_signed_before_the_hubs_key_was_valid__refused_bad_signature__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut n = good_notification(&c.w);
    n.signed_at = c.w.fed.fed.start.minus_ms(days(61));
    notification_refused(&c.w, FAKE_HUB, n, RefusalCode::BadSignature).await;
}

async fn hub_sends_an_authority_a_lookup__refused_not_allowed__nothing_stored(c: Arc<Ctx<Notes>>) {
    silently_refused_by_the_authority(&c.w, Message::Lookup(lookup(&c.w, "N-1", flagged()))).await;
}

async fn sync_claiming_more_of_the_authoritys_feed_than_it_signed__asked_for_the_whole_feed__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    let w = &c.w;
    let q = w.quiet().await;
    let claim = Mark { origin: code(AUTH), seq: u64::MAX / 2, head_at: now() };
    let mut hubx = w.hubx.lock().await;
    let hubx = hubx.as_mut().expect("the authority is connected to HUBX");
    hubx.send(&Message::Sync { directory_version: 1, marks: vec![claim] }).await;
    // A claim alone changes nothing: the authority asks for its whole feed, to check it under
    // its own signature.
    let asked = hubx
        .expect(WAIT, |m| match m {
            Message::Sync { marks, .. } => {
                marks.iter().find(|m| m.origin.as_str() == AUTH && m.seq == 0).map(|m| m.seq)
            }
            _ => None,
        })
        .await;
    assert_eq!(asked, Some(0), "the authority asks for its whole feed");
    w.still_quiet(q).await;
}

/// The run of its own feed the authority sent `HUBX` when it connected.
fn authoritys_run(w: &World) -> FeedBatch {
    w.hubx_run.lock().unwrap().clone().expect("the authority sent its feed")
}

async fn run_of_the_authoritys_own_feed_under_a_head_it_did_not_sign__refused__nothing_stored(c: Arc<Ctx<Notes>>) {
    let w = &c.w;
    let mut run = authoritys_run(w);
    let real = run.head.clone().expect("a head");
    // Its own head's words, signed with 205's key.
    run.head = Some(w.id(OTHER_AUTH).sign(real.body));
    silently_refused_by_the_authority(w, Message::Feed(run)).await;
}

async fn run_of_the_authoritys_own_feed_with_an_entry_left_out__refused__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut run = authoritys_run(&c.w);
    assert!(!run.entries.is_empty(), "the authority's feed holds LAC-1");
    run.entries.pop();
    silently_refused_by_the_authority(&c.w, Message::Feed(run)).await;
}

async fn batch_of_another_origin_sent_to_an_authority__refused_not_allowed__nothing_stored(c: Arc<Ctx<Notes>>) {
    let e = camden_entry(&c.w, 1);
    let h = head_205(&c.w, std::slice::from_ref(&e));
    silently_refused_by_the_authority(&c.w, run_205(vec![e], h)).await;
}

async fn partial_run_of_the_authoritys_own_feed__refused_not_allowed__nothing_stored(c: Arc<Ctx<Notes>>) {
    let mut run = authoritys_run(&c.w);
    run.after = 1;
    silently_refused_by_the_authority(&c.w, Message::Feed(run)).await;
}

/// A relayed notification from `HUBT` to `HUBS`, signed by `HUBT`, for `authority`.
fn relayed(w: &World, setting: &str, authority: &str) -> Notification {
    let mut n = notification(w, setting, flagged(), now(), &["LAC-1"]);
    n.authority = code(authority);
    n.hub = code(ROGUE_HUB);
    n
}

async fn notification_relayed_to_a_hub_that_is_not_a_home_hub_of_its_authority__refused__nothing_stored(
    c: Arc<Ctx<Notes>>,
) {
    let n = c.w.id(ROGUE_HUB).sign(relayed(&c.w, SETTING, FAR_AUTH));
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Notify(n), "message_refused").await;
}

async fn relayed_notification_signed_by_a_stranger__refused__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = Identity::from_seed([9; 32]).sign(relayed(&c.w, SETTING, AUTH));
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Notify(n), "message_refused").await;
}

async fn relayed_notification_of_a_scheduled_setting__refused__nothing_stored(c: Arc<Ctx<Notes>>) {
    let n = c.w.id(ROGUE_HUB).sign(relayed(&c.w, GP, AUTH));
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Notify(n), "message_refused").await;
}

/// A receipt for the notification the hub holds for 205, signed by `signer`: refused, and the
/// notification stays queued.
async fn forged_receipt(c: &Ctx<Notes>, signer: &str) {
    let receipt = Receipt { lookup_id: c.l.pending, authority: code(OTHER_AUTH), hub: code(HUB), stored_at: now() };
    let signed = c.w.id(signer).sign(receipt);
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Receipt(signed), "message_refused").await;
    assert_eq!(waiting(&c.w, OTHER_AUTH).await, 1, "the notification for 205 is still queued");
}

async fn receipt_signed_by_a_hub_in_an_authoritys_name__refused__notification_kept(c: Arc<Ctx<Notes>>) {
    forged_receipt(&c, ROGUE_HUB).await;
}

async fn receipt_signed_by_another_authority__refused__notification_kept(c: Arc<Ctx<Notes>>) {
    forged_receipt(&c, AUTH).await;
}

// =============================================================================================
// Layer 6: the directory
// =============================================================================================

/// What the directory layer set up: version 2, trusted by both nodes.
struct Dirs {
    v2: Directory,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_directory() {
    let (w, nodes) = World::start(Options::default()).await;
    let v2 = w.fed.fed.next_directory(&w.fed.fed.directory.directory, |_| {});
    w.publish(HUB, std::slice::from_ref(&v2)).await;
    w.publish(AUTH, std::slice::from_ref(&v2)).await;
    Run::new(w, nodes, Dirs { v2: v2.directory }).await.check("directory", directory_entries()).await;
}

fn directory_entries() -> Entries<Dirs> {
    entries![
        directory_without_signatures__400_names_root_keys__nothing_stored,
        directory_signed_by_one_root_of_two_needed__400_names_root_keys__nothing_stored,
        directory_with_a_bad_root_signature__400_names_root_key__nothing_stored,
        directory_with_more_root_signatures_than_allowed__400_names_root_signatures__nothing_stored,
        roots_replaced_without_the_old_roots_signing__400_names_root_keys__nothing_stored,
        threshold_of_zero__400_names_threshold__nothing_stored,
        directory_skipping_a_version__400_names_version__nothing_stored,
        directory_at_a_version_already_trusted__ignored_200__nothing_stored,
        another_directory_with_the_trusted_version_signed_by_the_roots__400_names_forked__alarm__nothing_stored,
        directory_of_another_federation__400_names_federation__nothing_stored,
        expired_directory__400_names_expired__nothing_stored,
        directory_with_thousands_of_members__400_names_members__nothing_stored,
        member_with_thousands_of_home_hubs__400_names_home_hubs__nothing_stored,
        member_with_too_many_keys__400_names_keys__nothing_stored,
        two_members_sharing_a_key__400_names_key__nothing_stored,
        two_members_with_one_code__400_names_member__nothing_stored,
        member_with_a_weak_key__400_names_weak__nothing_stored,
        member_naming_an_unknown_home_hub__400_names_home_hub__nothing_stored,
        setting_without_a_type__400_names_type__nothing_stored,
        hub_address_with_a_control_character__400_names_address__nothing_stored,
        key_valid_from_after_it_is_valid_until__400_names_valid__nothing_stored,
        authority_code_not_of_an_authoritys_form__400_names_authority__nothing_stored,
        member_name_with_a_control_character__400_names_name__nothing_stored,
        unsigned_directory_posted_to_an_authority__400_names_root_keys__nothing_stored,
        bad_directory_chain_from_a_hub__refused__nothing_stored,
        bad_directory_chain_from_a_hub_to_an_authority__refused__nothing_stored,
    ]
}

/// Version 3 (signed by two roots) after `change` edits it.
fn v3(c: &Ctx<Dirs>, change: impl FnOnce(&mut Directory)) -> SignedDirectory {
    c.w.fed.fed.next_directory(&c.l.v2, change)
}

/// `node`'s API refuses `chain` with 400 naming `names`, keeps trusting version 2, stores nothing.
async fn directory_refused_at(w: &World, node: &'static str, chain: Vec<SignedDirectory>, names: &[&str]) {
    let req = Req::post(node, "/directory").bytes("application/octet-stream", codec::encode(&chain));
    refused_by_api(w, req, 400, names).await;
    assert_eq!(w.directory_version(node).await, 2, "{node} still trusts version 2");
}

async fn directory_refused(c: &Ctx<Dirs>, chain: SignedDirectory, names: &[&str]) {
    directory_refused_at(&c.w, HUB, vec![chain], names).await;
}

async fn directory_without_signatures__400_names_root_keys__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let mut d = v3(&c, |_| {});
    d.signatures.clear();
    directory_refused(&c, d, &["root keys"]).await;
}

async fn directory_signed_by_one_root_of_two_needed__400_names_root_keys__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = SignedDirectory::sign(v3(&c, |_| {}).directory, &[&root(&c.w, 1)]);
    directory_refused(&c, d, &["root keys"]).await;
}

async fn directory_with_a_bad_root_signature__400_names_root_key__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let mut d = v3(&c, |_| {});
    d.signatures[1].signature.0[0] ^= 1;
    directory_refused(&c, d, &["root key"]).await;
}

async fn directory_with_more_root_signatures_than_allowed__400_names_root_signatures__nothing_stored(
    c: Arc<Ctx<Dirs>>,
) {
    let mut d = v3(&c, |_| {});
    let first = d.signatures[0].clone();
    d.signatures.extend(std::iter::repeat_n(first, 16));
    directory_refused(&c, d, &["root signatures"]).await;
}

async fn roots_replaced_without_the_old_roots_signing__400_names_root_keys__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let new: Vec<Identity> = (1..=3).map(|i| Identity::from_seed([100 + i; 32])).collect();
    let mut d = v3(&c, |_| {}).directory;
    d.roots = new.iter().map(Identity::public).collect();
    directory_refused(&c, SignedDirectory::sign(d, &[&new[0], &new[1]]), &["root keys"]).await;
}

async fn threshold_of_zero__400_names_threshold__nothing_stored(c: Arc<Ctx<Dirs>>) {
    directory_refused(&c, v3(&c, |d| d.threshold = 0), &["threshold"]).await;
}

async fn directory_skipping_a_version__400_names_version__nothing_stored(c: Arc<Ctx<Dirs>>) {
    directory_refused(&c, v3(&c, |d| d.version += 1), &["version"]).await;
}

/// Another version 2 (with another name for a member), signed by the roots two of three.
fn other_v2(c: &Ctx<Dirs>) -> SignedDirectory {
    c.w.fed.fed.next_directory(&c.l.v2, |d| {
        d.version = 2;
        d.members[0].name = "Hub of Another Version Two".into();
    })
}

async fn directory_at_a_version_already_trusted__ignored_200__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let w = &c.w;
    let q = w.quiet().await;
    // Another version 2 whose signatures do not hold proves nothing: skipped as known.
    let mut other = other_v2(&c);
    other.signatures[0].signature.0[0] ^= 1;
    let req = Req::post(HUB, "/directory").bytes("application/octet-stream", codec::encode(&vec![other]));
    let (status, body) = req.send(w).await;
    // Versions at or below the trusted one are skipped as known: the answer is the version kept.
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["directory_version"], 2, "{body}");
    w.still_quiet(q).await;
}

async fn another_directory_with_the_trusted_version_signed_by_the_roots__400_names_forked__alarm__nothing_stored(
    c: Arc<Ctx<Dirs>>,
) {
    // Posted by an operator: refused, naming the fork.
    directory_refused(&c, other_v2(&c), &["forked"]).await;
    // Sent by a peer hub: refused, counted as a fork (the alert CpisDirectoryForked watches it).
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Directories(vec![other_v2(&c)]), "directory_forked").await;
    assert_eq!(c.w.directory_version(HUB).await, 2);
}

async fn directory_of_another_federation__400_names_federation__nothing_stored(c: Arc<Ctx<Dirs>>) {
    directory_refused(&c, v3(&c, |d| d.federation = "another".into()), &["federation"]).await;
}

async fn expired_directory__400_names_expired__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let at = now().minus_ms(days(1));
    directory_refused(&c, v3(&c, |d| d.expires_at = at), &["expired"]).await;
}

async fn directory_with_thousands_of_members__400_names_members__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let one = d.members[0].clone();
        d.members = vec![one; MEMBERS_MAX + 1];
    });
    directory_refused(&c, d, &["members"]).await;
}

async fn member_with_thousands_of_home_hubs__400_names_home_hubs__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == AUTH).unwrap();
        m.home_hubs = vec![code(HUB); 5_000];
    });
    directory_refused(&c, d, &["home hubs"]).await;
}

async fn member_with_too_many_keys__400_names_keys__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let m = d.members.iter_mut().find(|m| m.code.as_str() == AUTH).unwrap();
        let key = m.keys[0].clone();
        m.keys = (0..9u8)
            .map(|i| cpis_protocol::directory::MemberKey {
                public: Identity::from_seed([200 + i; 32]).public(),
                ..key.clone()
            })
            .collect();
    });
    directory_refused(&c, d, &["keys"]).await;
}

async fn two_members_sharing_a_key__400_names_key__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let key = d.members.iter().find(|m| m.code.as_str() == SETTING).unwrap().keys[0].clone();
        d.members.iter_mut().find(|m| m.code.as_str() == OTHER_SETTING).unwrap().keys = vec![key];
    });
    directory_refused(&c, d, &["key"]).await;
}

async fn two_members_with_one_code__400_names_member__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let mut twin = d.members.iter().find(|m| m.code.as_str() == SETTING).unwrap().clone();
        twin.keys[0].public = Identity::from_seed([77; 32]).public();
        d.members.push(twin);
    });
    directory_refused(&c, d, &["member"]).await;
}

async fn member_with_a_weak_key__400_names_weak__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        d.members.iter_mut().find(|m| m.code.as_str() == SETTING).unwrap().keys[0].public =
            cpis_protocol::sign::PublicKey([0; 32]);
    });
    directory_refused(&c, d, &["weak"]).await;
}

async fn member_naming_an_unknown_home_hub__400_names_home_hub__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| d.members.iter_mut().find(|m| m.code.as_str() == AUTH).unwrap().home_hubs.push(code("NOHUB")));
    directory_refused(&c, d, &["home hub"]).await;
}

async fn setting_without_a_type__400_names_type__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| d.members.iter_mut().find(|m| m.code.as_str() == SETTING).unwrap().setting_type = None);
    directory_refused(&c, d, &["type"]).await;
}

async fn hub_address_with_a_control_character__400_names_address__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        d.members.iter_mut().find(|m| m.code.as_str() == HUB).unwrap().addresses = vec!["127.0.0.1:1\n".into()];
    });
    directory_refused(&c, d, &["address"]).await;
}

async fn key_valid_from_after_it_is_valid_until__400_names_valid__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let key = &mut d.members.iter_mut().find(|m| m.code.as_str() == SETTING).unwrap().keys[0];
        key.valid_from = key.valid_until;
    });
    directory_refused(&c, d, &["valid"]).await;
}

async fn authority_code_not_of_an_authoritys_form__400_names_authority__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| {
        let mut m = d.members.iter().find(|m| m.code.as_str() == OTHER_AUTH).unwrap().clone();
        m.code = code("CAMDEN");
        m.keys[0].public = Identity::from_seed([78; 32]).public();
        d.members.push(m);
    });
    directory_refused(&c, d, &["authority"]).await;
}

async fn member_name_with_a_control_character__400_names_name__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let d = v3(&c, |d| d.members[0].name = "Hub\u{7}North".into());
    directory_refused(&c, d, &["name"]).await;
}

async fn unsigned_directory_posted_to_an_authority__400_names_root_keys__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let mut d = v3(&c, |_| {});
    d.signatures.clear();
    directory_refused_at(&c.w, AUTH, vec![d], &["root keys"]).await;
}

async fn bad_directory_chain_from_a_hub__refused__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let skipping = v3(&c, |d| d.version += 1);
    refused_at_the_hub(&c.w, ROGUE_HUB, Message::Directories(vec![skipping]), "directory_refused").await;
    assert_eq!(c.w.directory_version(HUB).await, 2);
}

async fn bad_directory_chain_from_a_hub_to_an_authority__refused__nothing_stored(c: Arc<Ctx<Dirs>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let name = event("directory_refused");
    let before = w.metric(AUTH, &name).await;
    let mut unsigned = v3(&c, |_| {});
    unsigned.signatures.clear();
    to_the_authority(w, Message::Directories(vec![unsigned]), None).await;
    w.counted(AUTH, &name, before).await;
    assert_eq!(w.directory_version(AUTH).await, 2);
    w.still_quiet(q).await;
}

// =============================================================================================
// Layer 7: the operator API
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_api() {
    let (w, nodes) = World::start(Options::default()).await;
    Run::new(w, nodes, ()).await.check("api", api_entries()).await;
}

fn api_entries() -> Entries<()> {
    entries![
        request_without_a_token__401__nothing_stored,
        request_with_a_wrong_token__401__nothing_stored,
        lowercase_bearer_with_a_wrong_token__401__nothing_stored,
        basic_authorization__401__nothing_stored,
        malformed_json_without_a_token__401__nothing_stored,
        end_with_a_malformed_body_without_a_token__401__nothing_stored,
        garbage_directory_without_a_token__401__nothing_stored,
        malformed_json__400__nothing_stored,
        plan_missing_a_required_field__400_names_it__nothing_stored,
        plan_field_of_the_wrong_type__400__nothing_stored,
        nhs_number_with_a_wrong_check_digit__400_names_nhs__nothing_stored,
        nhs_number_with_letters__400_names_nhs__nothing_stored,
        unknown_plan_type__400_names_plan_type__nothing_stored,
        plan_ending_before_it_starts__400_names_end_date__nothing_stored,
        due_date_on_a_plan_that_is_not_unborn__400_names_due_date__nothing_stored,
        unborn_plan_without_a_due_date__400_names_due_date__nothing_stored,
        start_that_is_not_a_date__400_names_start__nothing_stored,
        reference_longer_than_64_characters__400_names_reference__nothing_stored,
        end_of_an_unknown_plan__404_names_reference__nothing_stored,
        withdrawal_of_an_unknown_plan__404_names_reference__nothing_stored,
        end_that_is_not_a_date__400_names_end__nothing_stored,
        reference_with_a_control_character_in_the_path__400_names_reference__nothing_stored,
        ack_of_a_lookup_id_that_is_not_hex__400_names_lookup_id__nothing_stored,
        ack_of_an_unknown_lookup__404_names_notification__nothing_stored,
        ack_by_nobody__400_names_acknowledged_by__nothing_stored,
        ack_with_a_note_too_long__400_names_note__nothing_stored,
        contacts_with_an_empty_name__400_names_contact_name__nothing_stored,
        contacts_with_a_control_character__400_names_phone__nothing_stored,
        body_above_the_size_limit__413__nothing_stored,
        wrong_method__405__nothing_stored,
        directory_body_that_is_not_a_directory__400_names_directory__nothing_stored,
        plan_sent_to_a_hub__404_names_authority__nothing_stored,
    ]
}

fn good_plan() -> Value {
    json!({"reference": "LAC-2", "nhs": "4010232137", "plan_type": "LAC", "start": "2026-01-05"})
}

/// [`good_plan`] with one field replaced (or removed, for `null`).
fn plan_with(field: &str, value: Value) -> Value {
    let mut p = good_plan();
    if value.is_null() {
        p.as_object_mut().unwrap().remove(field);
    } else {
        p[field] = value;
    }
    p
}

async fn plan_refused(c: &Ctx<()>, body: Value, names: &[&str]) {
    refused_by_api(&c.w, Req::post(AUTH, "/plans").json(body), 400, names).await;
}

async fn request_without_a_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans").json(good_plan()).auth(Auth::Missing);
    refused_by_api(&c.w, req, 401, &["token"]).await;
}

async fn request_with_a_wrong_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans").json(good_plan()).auth(Auth::Header(format!("Bearer {}", "0".repeat(64))));
    refused_by_api(&c.w, req, 401, &["token"]).await;
}

/// The scheme's case does not matter (HTTP says so: `bearer <token>` is accepted); the token does.
async fn lowercase_bearer_with_a_wrong_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let header = format!("bearer {}", c.w.token(AUTH).to_uppercase());
    refused_by_api(&c.w, Req::post(AUTH, "/plans").json(good_plan()).auth(Auth::Header(header)), 401, &["token"]).await;
}

async fn basic_authorization__401__nothing_stored(c: Arc<Ctx<()>>) {
    let header = "Basic YWRtaW46YWRtaW4=".to_string();
    refused_by_api(&c.w, Req::post(AUTH, "/plans").json(good_plan()).auth(Auth::Header(header)), 401, &["token"]).await;
}

async fn malformed_json_without_a_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans").text("application/json", "{\"reference\": ").auth(Auth::Missing);
    refused_by_api(&c.w, req, 401, &["token"]).await;
}

async fn end_with_a_malformed_body_without_a_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans/LAC-1/end").text("application/json", "end=tomorrow").auth(Auth::Missing);
    refused_by_api(&c.w, req, 401, &["token"]).await;
}

async fn garbage_directory_without_a_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(HUB, "/directory").bytes("application/octet-stream", vec![0xff; 64]).auth(Auth::Missing);
    refused_by_api(&c.w, req, 401, &["token"]).await;
}

async fn malformed_json__400__nothing_stored(c: Arc<Ctx<()>>) {
    refused_by_api(&c.w, Req::post(AUTH, "/plans").text("application/json", "{\"reference\": "), 400, &[]).await;
}

async fn plan_missing_a_required_field__400_names_it__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("start", Value::Null), &["start"]).await;
}

async fn plan_field_of_the_wrong_type__400__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("nhs", json!(4010232137u64)), &[]).await;
}

async fn nhs_number_with_a_wrong_check_digit__400_names_nhs__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("nhs", json!("4010232138")), &["nhs", "check digit"]).await;
}

async fn nhs_number_with_letters__400_names_nhs__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("nhs", json!("40102321AB")), &["nhs"]).await;
}

async fn unknown_plan_type__400_names_plan_type__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("plan_type", json!("XYZ")), &["plan_type"]).await;
}

async fn plan_ending_before_it_starts__400_names_end_date__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("end", json!("2025-12-31")), &["end date"]).await;
}

async fn due_date_on_a_plan_that_is_not_unborn__400_names_due_date__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("due", json!("2027-01-01")), &["due date"]).await;
}

async fn unborn_plan_without_a_due_date__400_names_due_date__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("plan_type", json!("UCPP")), &["due date"]).await;
}

async fn start_that_is_not_a_date__400_names_start__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("start", json!("2026-13-45")), &["start"]).await;
}

async fn reference_longer_than_64_characters__400_names_reference__nothing_stored(c: Arc<Ctx<()>>) {
    plan_refused(&c, plan_with("reference", json!("R".repeat(65))), &["reference"]).await;
}

async fn end_of_an_unknown_plan__404_names_reference__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans/NOPE-1/end").json(json!({"end": "2026-02-01"}));
    refused_by_api(&c.w, req, 404, &["reference"]).await;
}

async fn withdrawal_of_an_unknown_plan__404_names_reference__nothing_stored(c: Arc<Ctx<()>>) {
    refused_by_api(&c.w, Req::post(AUTH, "/plans/NOPE-1/withdraw"), 404, &["reference"]).await;
}

async fn end_that_is_not_a_date__400_names_end__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/plans/LAC-1/end").json(json!({"end": "yesterday"}));
    refused_by_api(&c.w, req, 400, &["end"]).await;
}

async fn reference_with_a_control_character_in_the_path__400_names_reference__nothing_stored(c: Arc<Ctx<()>>) {
    refused_by_api(&c.w, Req::post(AUTH, "/plans/LAC%07-1/withdraw"), 400, &["reference"]).await;
}

async fn ack_of_a_lookup_id_that_is_not_hex__400_names_lookup_id__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/notifications/not-a-lookup-id/ack").json(json!({"by": "A Social Worker"}));
    refused_by_api(&c.w, req, 400, &["lookup_id"]).await;
}

async fn ack_of_an_unknown_lookup__404_names_notification__nothing_stored(c: Arc<Ctx<()>>) {
    let path = format!("/notifications/{}/ack", "ab".repeat(16));
    refused_by_api(&c.w, Req::post(AUTH, &path).json(json!({"by": "A Social Worker"})), 404, &["notification"]).await;
}

async fn ack_by_nobody__400_names_acknowledged_by__nothing_stored(c: Arc<Ctx<()>>) {
    let path = format!("/notifications/{}/ack", "ab".repeat(16));
    refused_by_api(&c.w, Req::post(AUTH, &path).json(json!({"by": "  "})), 400, &["acknowledged by"]).await;
}

async fn ack_with_a_note_too_long__400_names_note__nothing_stored(c: Arc<Ctx<()>>) {
    let path = format!("/notifications/{}/ack", "ab".repeat(16));
    let body = json!({"by": "A Social Worker", "note": "n".repeat(2_001)});
    refused_by_api(&c.w, Req::post(AUTH, &path).json(body), 400, &["note"]).await;
}

async fn contacts_with_an_empty_name__400_names_contact_name__nothing_stored(c: Arc<Ctx<()>>) {
    let body = json!({"name": "", "office_phone": "020 7000 0000", "out_of_hours_phone": "020 7000 0001"});
    refused_by_api(&c.w, Req::new("PUT", AUTH, "/contacts").json(body), 400, &["contact name"]).await;
}

async fn contacts_with_a_control_character__400_names_phone__nothing_stored(c: Arc<Ctx<()>>) {
    let body = json!({"name": "Hackney", "office_phone": "020 7000\r\n0000", "out_of_hours_phone": "020 7000 0001"});
    refused_by_api(&c.w, Req::new("PUT", AUTH, "/contacts").json(body), 400, &["phone"]).await;
}

async fn body_above_the_size_limit__413__nothing_stored(c: Arc<Ctx<()>>) {
    let body = vec![b'a'; cpis_node::api::BODY_BYTES_MAX + 1];
    refused_by_api(&c.w, Req::post(AUTH, "/plans/import").bytes("text/csv", body), 413, &[]).await;
}

async fn wrong_method__405__nothing_stored(c: Arc<Ctx<()>>) {
    refused_by_api(&c.w, Req::new("DELETE", AUTH, "/plans"), 405, &[]).await;
}

async fn directory_body_that_is_not_a_directory__400_names_directory__nothing_stored(c: Arc<Ctx<()>>) {
    let req = Req::post(AUTH, "/directory").json(json!({"version": 3, "members": []}));
    refused_by_api(&c.w, req, 400, &["directory"]).await;
}

async fn plan_sent_to_a_hub__404_names_authority__nothing_stored(c: Arc<Ctx<()>>) {
    refused_by_api(&c.w, Req::post(HUB, "/plans").json(good_plan()), 404, &["authority"]).await;
}

// =============================================================================================
// Layer 8: CSV import
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_csv() {
    let (w, nodes) = World::start(Options::default()).await;
    Run::new(w, nodes, ()).await.check("csv", csv_entries()).await;
}

fn csv_entries() -> Entries<()> {
    entries![
        empty_file__400_names_reference_column__nothing_stored,
        file_without_a_header_row__400_names_reference_column__nothing_stored,
        header_missing_a_required_column__400_names_it__nothing_stored,
        binary_file__400_names_header__nothing_stored,
        more_rows_than_allowed__400_names_rows__nothing_stored,
        a_line_of_a_million_commas__400_names_its_fields__nothing_stored,
        import_without_a_token__401__nothing_stored,
        import_sent_to_a_hub__404__nothing_stored,
        rows_with_invalid_nhs_numbers__each_refused__nothing_stored,
        rows_with_bad_dates__each_refused__nothing_stored,
        rows_with_implausible_dates__each_refused__nothing_stored,
        row_with_an_unknown_plan_type__refused__nothing_stored,
        row_ending_before_it_starts__refused__nothing_stored,
        rows_breaking_the_due_date_rules__each_refused__nothing_stored,
        row_with_a_withdrawn_value_that_is_not_yes_or_no__refused__nothing_stored,
        row_with_fewer_fields_than_the_header__refused__nothing_stored,
        header_with_a_misspelt_column__400_names_it_and_the_right_one__nothing_stored,
        header_without_rows__400_says_the_export_is_empty__nothing_stored,
        row_with_an_unclosed_quote__400_names_its_line__nothing_stored,
        row_that_is_not_utf8__refused__nothing_stored,
        row_repeating_a_reference__every_row_of_it_refused__nothing_stored,
    ]
}

const HEADER: &str = "reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n";

fn import(node: &'static str, body: Vec<u8>) -> Req {
    Req::post(node, "/plans/import").bytes("text/csv", body)
}

/// The file is refused whole with `status`, naming `names`.
async fn file_refused(c: &Ctx<()>, body: Vec<u8>, status: u16, names: &[&str]) {
    refused_by_api(&c.w, import(AUTH, body), status, names).await;
}

/// Every data row of `rows` (after [`HEADER`]) is refused, each naming what is wrong: `expected`
/// holds each row's number and a word its reason must hold. Nothing is stored.
async fn rows_refused(c: &Ctx<()>, rows: &[u8], expected: &[(u64, &str)]) {
    let w = &c.w;
    let q = w.quiet().await;
    let mut body = HEADER.as_bytes().to_vec();
    body.extend_from_slice(rows);
    let (status, text) = import(AUTH, body).send(w).await;
    assert_eq!(status, 200, "{text}");
    let report: Value = serde_json::from_str(&text).expect("a JSON report");
    assert_eq!((report["applied"].as_u64(), report["unchanged"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["refused"].as_u64(), Some(expected.len() as u64), "{report}");
    for (row, word) in expected {
        let line = report["rows"].as_array().and_then(|r| r.iter().find(|x| x["row"] == *row)).cloned();
        let line = line.unwrap_or_else(|| panic!("row {row} is reported: {report}"));
        assert_eq!(line["result"], "refused", "{line}");
        let reason = line["reason"].as_str().unwrap_or_default().to_lowercase();
        assert!(reason.contains(word), "row {row}'s reason does not name {word:?}: {reason}");
    }
    w.still_quiet(q).await;
}

async fn empty_file__400_names_reference_column__nothing_stored(c: Arc<Ctx<()>>) {
    file_refused(&c, vec![], 400, &["`reference`"]).await;
}

async fn file_without_a_header_row__400_names_reference_column__nothing_stored(c: Arc<Ctx<()>>) {
    file_refused(&c, b"LAC-9,9434765919,LAC,2026-01-05,,,\n".to_vec(), 400, &["`reference`"]).await;
}

async fn header_missing_a_required_column__400_names_it__nothing_stored(c: Arc<Ctx<()>>) {
    let body = b"reference,nhs_number,plan_type,end_date\nLAC-9,9434765919,LAC,\n".to_vec();
    file_refused(&c, body, 400, &["`start_date`"]).await;
}

async fn binary_file__400_names_header__nothing_stored(c: Arc<Ctx<()>>) {
    let body: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
    file_refused(&c, body, 400, &["header"]).await;
}

async fn more_rows_than_allowed__400_names_rows__nothing_stored(c: Arc<Ctx<()>>) {
    let mut body = HEADER.as_bytes().to_vec();
    for _ in 0..=cpis_node::import::IMPORT_ROWS_MAX {
        body.extend_from_slice(b"R,1,X,2\n");
    }
    file_refused(&c, body, 400, &["rows"]).await;
}

async fn a_line_of_a_million_commas__400_names_its_fields__nothing_stored(c: Arc<Ctx<()>>) {
    let mut body = HEADER.as_bytes().to_vec();
    body.extend_from_slice(format!("LAC-9{}\n", ",".repeat(1 << 20)).as_bytes());
    file_refused(&c, body, 400, &["line 2", "fields"]).await;
}

async fn import_without_a_token__401__nothing_stored(c: Arc<Ctx<()>>) {
    let body = format!("{HEADER}LAC-9,9434765919,LAC,2026-01-05,,,\n").into_bytes();
    refused_by_api(&c.w, import(AUTH, body).auth(Auth::Missing), 401, &["token"]).await;
}

async fn import_sent_to_a_hub__404__nothing_stored(c: Arc<Ctx<()>>) {
    let body = format!("{HEADER}LAC-9,9434765919,LAC,2026-01-05,,,\n").into_bytes();
    refused_by_api(&c.w, import(HUB, body), 404, &["authority"]).await;
}

async fn rows_with_invalid_nhs_numbers__each_refused__nothing_stored(c: Arc<Ctx<()>>) {
    let rows = b"A-1,9434765910,LAC,2026-01-05,,,\nA-2,943476591,LAC,2026-01-05,,,\nA-3,94347659X9,LAC,2026-01-05,,,\n\
                 A-4,0000000000,LAC,2026-01-05,,,\n";
    rows_refused(&c, rows, &[(2, "nhs_number"), (3, "nhs_number"), (4, "nhs_number"), (5, "repeated")]).await;
}

async fn rows_with_bad_dates__each_refused__nothing_stored(c: Arc<Ctx<()>>) {
    let rows =
        b"A-1,9434765919,LAC,2026-02-30,,,\nA-2,9434765919,LAC,05/01/2026,,,\nA-3,9434765919,LAC,2026-01-05,never,,\n";
    rows_refused(&c, rows, &[(2, "start_date"), (3, "start_date"), (4, "end_date")]).await;
}

async fn rows_with_implausible_dates__each_refused__nothing_stored(c: Arc<Ctx<()>>) {
    let rows = b"A-1,9434765919,LAC,2099-01-05,,,\nA-2,9434765919,LAC,1900-01-05,,,\nA-3,9434765919,UCPP,2026-01-05,,2099-06-01,\n";
    rows_refused(&c, rows, &[(2, "in the future"), (3, "before 1990"), (4, "more than a year away")]).await;
}

async fn row_with_an_unknown_plan_type__refused__nothing_stored(c: Arc<Ctx<()>>) {
    rows_refused(&c, b"A-1,9434765919,FOSTER,2026-01-05,,,\n", &[(2, "plan_type")]).await;
}

async fn row_ending_before_it_starts__refused__nothing_stored(c: Arc<Ctx<()>>) {
    rows_refused(&c, b"A-1,9434765919,CPP,2026-01-05,2026-01-04,,\n", &[(2, "end date")]).await;
}

async fn rows_breaking_the_due_date_rules__each_refused__nothing_stored(c: Arc<Ctx<()>>) {
    let rows = b"A-1,9434765919,LAC,2026-01-05,,2026-06-01,\nA-2,9434765919,UCPP,2026-01-05,,,\n";
    rows_refused(&c, rows, &[(2, "due date"), (3, "due date")]).await;
}

async fn row_with_a_withdrawn_value_that_is_not_yes_or_no__refused__nothing_stored(c: Arc<Ctx<()>>) {
    rows_refused(&c, b"A-1,9434765919,LAC,2026-01-05,,,maybe\n", &[(2, "withdrawn")]).await;
}

async fn header_with_a_misspelt_column__400_names_it_and_the_right_one__nothing_stored(c: Arc<Ctx<()>>) {
    // A row meant to be withdrawn would otherwise be stored open.
    let body = b"reference,nhs_number,plan_type,start_date,withdrawl\nLAC-9,9434765919,LAC,2026-01-05,yes\n".to_vec();
    file_refused(&c, body, 400, &["`withdrawl`", "`withdrawn`"]).await;
}

async fn header_without_rows__400_says_the_export_is_empty__nothing_stored(c: Arc<Ctx<()>>) {
    file_refused(&c, HEADER.as_bytes().to_vec(), 400, &["no rows"]).await;
}

async fn row_with_an_unclosed_quote__400_names_its_line__nothing_stored(c: Arc<Ctx<()>>) {
    let body = format!("{HEADER}\"A-1,9434765919,LAC,2026-01-05,,,\nA-2,4010232137,CPP,2026-01-05,,,\n");
    file_refused(&c, body.into_bytes(), 400, &["line 2", "quote"]).await;
}

async fn row_with_fewer_fields_than_the_header__refused__nothing_stored(c: Arc<Ctx<()>>) {
    rows_refused(&c, b"A-1,9434765919\n", &[(2, "2 fields, the header has 7")]).await;
}

async fn row_that_is_not_utf8__refused__nothing_stored(c: Arc<Ctx<()>>) {
    rows_refused(&c, b"A-\xff\xfe1,9434765919,LAC,2026-01-05,,,\n", &[(2, "utf-8")]).await;
}

async fn row_repeating_a_reference__every_row_of_it_refused__nothing_stored(c: Arc<Ctx<()>>) {
    // LAC-1 exactly as the authority holds it, then again ended: which is meant is not guessed.
    let rows = b"LAC-1,9434765919,LAC,2026-01-05,,,\nLAC-1,9434765919,LAC,2026-01-05,2026-02-01,,\n";
    rows_refused(&c, rows, &[(2, "on 2 rows (lines 2, 3)"), (3, "on 2 rows (lines 2, 3)")]).await;
}

// =============================================================================================
// Inputs once found not refused cleanly (now in the frames and feeds layers)
// =============================================================================================

async fn too_many_frames_in_a_setting_session__closed_bad_frame__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let mut bytes = Vec::new();
    for _ in 0..4 {
        bytes.extend(sync_frame());
    }
    bytes.extend(wire::encode_frame(&Message::Lookup(lookup(w, "N-1", flagged()))));
    let ended = open_session(w, SETTING, &bytes).await.outcome(WAIT).await;
    assert!(is_closed_with(&ended, CLOSE_BAD_FRAME), "a session of more than a Sync and a Lookup: {ended:?}");
    w.still_quiet(q).await;
}

async fn run_whose_head_never_comes__refused_missing_head__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    let q = w.quiet().await;
    let name = event("batch_refused");
    let before = w.metric(HUB, &name).await;
    let mut peer = member(w, ROGUE_HUB).await;
    let e = camden_entry(w, 1);
    // A run of 205's feed without its head, then a run with other bounds: the first is
    // abandoned, its head never came.
    peer.send(&feed(OTHER_AUTH, 0, e.body.seq, vec![e.clone()], None)).await;
    peer.send(&feed(OTHER_AUTH, 0, e.body.seq + 1, vec![], None)).await;
    w.counted(HUB, &name, before).await;
    w.still_quiet(q).await;
}

async fn batch_whose_head_is_not_at_its_upto__refused_bad_batch__nothing_stored(c: Arc<Ctx<()>>) {
    let w = &c.w;
    // The run 204 sent HUBX: good entries under 204's own head, but claiming to go further.
    let mut run = authoritys_run(w);
    run.upto += 1_000;
    batch_refused(w, ROGUE_HUB, Message::Feed(run)).await;
}

// =============================================================================================
// The catalogue in the docs
// =============================================================================================

/// Every entry's name, by layer.
fn catalogue() -> Vec<(&'static str, Vec<&'static str>)> {
    fn names<L>(entries: Entries<L>) -> Vec<&'static str> {
        entries.into_iter().map(|(n, _)| n).collect()
    }
    vec![
        ("handshake", names(handshake_entries())),
        ("frames", names(frame_entries())),
        ("lookups", names(lookup_entries())),
        ("feeds", names(feed_entries())),
        ("notifications", names(notification_entries())),
        ("directory", names(directory_entries())),
        ("api", names(api_entries())),
        ("csv", names(csv_entries())),
    ]
}

#[test]
fn catalogue_is_listed_in_the_docs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/hostile-inputs.md");
    let doc = std::fs::read_to_string(path).expect("docs/hostile-inputs.md");
    // The test column of every table row: a name with a double underscore, in backticks.
    let listed: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_end().trim_end_matches('|').rsplit('|').next())
        .map(|cell| cell.trim().trim_matches('`'))
        .filter(|name| name.contains("__"))
        .collect();
    let mut in_code: Vec<&str> = catalogue().into_iter().flat_map(|(_, names)| names).collect();
    let total = in_code.len();
    in_code.sort_unstable();
    in_code.dedup();
    assert_eq!(in_code.len(), total, "an entry name is used twice");
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed_set.len(), listed.len(), "the docs list an entry twice");
    let code_set: BTreeSet<&str> = in_code.into_iter().collect();
    let missing: Vec<_> = code_set.difference(&listed_set).collect();
    let extra: Vec<_> = listed_set.difference(&code_set).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not in the docs: {missing:?}; not in the code: {extra:?}");
    for (layer, names) in catalogue() {
        println!("{layer}: {} entries", names.len());
    }
}
