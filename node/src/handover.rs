//! Notifications handed to the council's case-management system, by webhook or by MESH: each
//! notification in the authority's inbox is sent, oldest first, as the same JSON document the API
//! shows (docs/api.md), and recorded as handed (`Table::Handed`, durable) once the other side took
//! it. A failure is retried with capped exponential backoff, for ever; nothing is skipped, and the
//! next notification waits behind the one failing, so that they arrive in order.
//!
//! **Webhook.** Each post carries `X-CPIS-Delivery` (the lookup id: the same on every retry, so
//! that the receiver can drop a repeat), `X-CPIS-Timestamp` (seconds since the epoch) and
//! `X-CPIS-Signature: sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` with the shared secret. A
//! notification is posted again only if the node stopped after the endpoint's 2xx and before it
//! recorded it: receivers that keep the delivery id see each notification exactly once.
//!
//! **MESH.** Each notification is one message from the authority's mailbox to the council's
//! case-management mailbox, with the lookup id as its local id (`mex-localid`). Before sending, the
//! node asks MESH's tracking by local id whether a message with that local id already left its
//! mailbox (it may have stopped after MESH accepted one and before recording it): if so (200, or
//! 300 for several, which an earlier fault left behind and which is logged), it records it and
//! sends nothing. So MESH holds exactly one message per notification, as long as MESH's tracking
//! still knows the message: it forgets one once it has left the outbox, so a node stopped for
//! longer than that between sending and recording sends it again (docs/council.md).

use crate::api::{self, ApiState};
use crate::config::{MeshConfig, NodeConfig, WebhookConfig};
use crate::import::ImportReport;
use crate::store::Store;
use cpis_protocol::ids::LookupId;
use cpis_protocol::schema::{StoreOp, Table, WriteBatch};
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the store is asked whether anything was written since (cheap); the inbox is read
/// again only then, or after a failure's wait.
const POLL_MS: u64 = 50;
/// The first wait after a failed post; it doubles up to `retry_max_ms`.
const RETRY_FIRST_MS: u64 = 500;
/// Longest a post may take.
const POST_TIMEOUT_MS: u64 = 10_000;
/// Largest answer read from the endpoint.
const ANSWER_BYTES_MAX: usize = 64 << 10;
/// Shortest shared secret accepted.
pub const SECRET_CHARS_MIN: usize = 32;

/// The signature header's value for `body` sent at `timestamp` (seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = match <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where notifications go, with the secrets to get them there (no `Debug`: it holds secrets).
#[derive(Clone)]
pub enum Sink {
    Webhook { config: WebhookConfig, secret: Vec<u8>, to: Endpoint },
    Mesh { config: Box<MeshConfig>, password: String, shared_key: String, to: Endpoint },
}

/// Where requests go: `host:port`, the URL's path, and for an `https://` URL the TLS to speak
/// there (the server checked against the configured CAs; a client certificate if configured).
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` to connect to (the URL's, with the scheme's port if it names none).
    address: String,
    /// The URL's authority as written, for the `Host` header.
    authority: String,
    path: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// Longest one exchange may take (`POST_TIMEOUT_MS`).
    timeout: Duration,
}

impl Endpoint {
    /// The endpoint of an `http://` or `https://` URL; an https one needs `ca_file`.
    pub fn new(url: &str, ca_file: Option<&Path>, client: Option<(&Path, &Path)>) -> anyhow::Result<Endpoint> {
        let (https, rest) = match url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => {
                (false, url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("{url} is not an http(s):// URL"))?)
            }
        };
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) =
                    v6.split_once(']').ok_or_else(|| anyhow::anyhow!("{url}: an unclosed [ in the host"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| anyhow::anyhow!("{url}: {p:?} is not a port"))?,
            None if https => 443,
            None => 80,
        };
        anyhow::ensure!(!host.is_empty(), "{url} names no host");
        let address = if authority.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let tls = if https {
            let ca = ca_file.ok_or_else(|| anyhow::anyhow!("{url}: an https:// URL needs a CA file"))?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| anyhow::anyhow!("{url}: {host} is not a host name or address: {e}"))?;
            Some((crate::web::tls_connector(ca, client)?, name))
        } else {
            None
        };
        let timeout = Duration::from_millis(POST_TIMEOUT_MS);
        Ok(Endpoint { address, authority: authority.to_string(), path, tls, timeout })
    }
}

fn read_secret_file(path: &std::path::Path, what: &str, min: usize) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    let secret = text.trim().to_string();
    anyhow::ensure!(secret.chars().count() >= min, "the {what} in {} is shorter than {min} characters", path.display());
    Ok(secret)
}

impl Sink {
    /// The sink the config names, if any, with its secrets read.
    pub fn from_config(config: &NodeConfig) -> anyhow::Result<Option<Sink>> {
        if let Some(webhook) = &config.webhook {
            let secret = read_secret_file(&webhook.secret_file, "webhook secret", SECRET_CHARS_MIN)?;
            let to = Endpoint::new(&webhook.url, webhook.ca_file.as_deref(), None)?;
            return Ok(Some(Sink::Webhook { config: webhook.clone(), secret: secret.into_bytes(), to }));
        }
        if let Some(mesh) = &config.mesh {
            let password = read_secret_file(&mesh.password_file, "MESH mailbox password", 1)?;
            let shared_key = read_secret_file(&mesh.shared_key_file, "MESH shared key", 1)?;
            let client = mesh.client_cert_file.as_deref().zip(mesh.client_key_file.as_deref());
            let to = Endpoint::new(&mesh.url, mesh.ca_file.as_deref(), client)?;
            return Ok(Some(Sink::Mesh { config: Box::new(mesh.clone()), password, shared_key, to }));
        }
        Ok(None)
    }

    fn retry_max_ms(&self) -> u64 {
        match self {
            Sink::Webhook { config, .. } => config.retry_max_ms,
            Sink::Mesh { config, .. } => config.retry_max_ms,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Sink::Webhook { .. } => "webhook",
            Sink::Mesh { .. } => "MESH",
        }
    }

    /// What becomes of a notification the other side took but the node could not record as
    /// handed on: the log's words.
    fn unrecorded(&self) -> &'static str {
        match self {
            Sink::Webhook { .. } => {
                "a notification was posted but could not be recorded as handed on: it will be posted again, with \
                 the same X-CPIS-Delivery id, and the receiver drops the repeat by that id"
            }
            Sink::Mesh { .. } => {
                "a notification was sent over MESH but could not be recorded as handed on: it will be recorded on \
                 the next pass, when MESH's tracking shows it left, and not sent again"
            }
        }
    }

    /// Hands one notification on; `Err` says why it was not taken (no case data in it).
    async fn hand(&self, id: &str, item: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(item).map_err(|e| e.to_string())?;
        match self {
            Sink::Webhook { secret, to, .. } => {
                let timestamp = crate::net::now().as_millis() / 1000;
                let headers = vec![
                    ("content-type", "application/json".to_string()),
                    ("x-cpis-delivery", id.to_string()),
                    ("x-cpis-timestamp", timestamp.to_string()),
                    ("x-cpis-signature", signature(secret, timestamp, &body)),
                ];
                let status = exchange(to, hyper::Method::POST, &to.path, headers, body).await?;
                if (200..300).contains(&status) { Ok(()) } else { Err(format!("it answered {status}")) }
            }
            Sink::Mesh { config, password, shared_key, to } => {
                let auth = || ("authorization", mesh_authorization(&config.mailbox, password, shared_key));
                let message = MeshMessage {
                    to: &config.to_mailbox,
                    workflow: &config.workflow_id,
                    local_id: id.to_string(),
                    subject: "Child protection notification",
                };
                if mesh_send_once(config, to, auth, message, body).await? == Sent::SeveralBefore {
                    warn!(
                        lookup = %id,
                        "MESH's tracking shows more than one message for this notification left the mailbox (an earlier \
                         fault): it is recorded as handed on and nothing more is sent; the case-management system may \
                         hold it more than once"
                    );
                }
                Ok(())
            }
        }
    }
}

/// One MESH message to send.
struct MeshMessage<'a> {
    to: &'a str,
    workflow: &'a str,
    local_id: String,
    subject: &'static str,
}

/// How a MESH message came to have left the mailbox.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Sent now.
    Now,
    /// One with its local id had already left (sent before a stop).
    Before,
    /// Several with its local id had already left (through some earlier fault).
    SeveralBefore,
}

/// Sends a MESH message unless MESH's tracking shows that one with its local id already left the
/// mailbox (sent before a stop): so a message is not sent twice while MESH's tracking knows it.
async fn mesh_send_once(
    config: &MeshConfig,
    to: &Endpoint,
    auth: impl Fn() -> (&'static str, String),
    message: MeshMessage<'_>,
    body: Vec<u8>,
) -> Result<Sent, String> {
    let mailbox = &config.mailbox;
    let tracking = format!("/messageexchange/{mailbox}/outbox/tracking/{}", message.local_id);
    match exchange(to, hyper::Method::GET, &tracking, vec![auth()], vec![]).await? {
        200 => return Ok(Sent::Before),
        // It left more than once: sent all the same. Sending another, or waiting for ever (and
        // holding up every message behind it), would only make it worse.
        300 => return Ok(Sent::SeveralBefore),
        404 => {}
        status => return Err(format!("MESH tracking answered {status}")),
    }
    let headers = vec![
        auth(),
        ("content-type", "application/json".to_string()),
        ("accept", "application/vnd.mesh.v2+json".to_string()),
        ("mex-from", mailbox.clone()),
        ("mex-to", message.to.to_string()),
        ("mex-workflowid", message.workflow.to_string()),
        ("mex-localid", message.local_id),
        ("mex-subject", message.subject.to_string()),
    ];
    match exchange(to, hyper::Method::POST, &format!("/messageexchange/{mailbox}/outbox"), headers, body).await? {
        200..=299 => Ok(Sent::Now),
        status => Err(format!("MESH answered {status}")),
    }
}

/// The MESH authorisation header: `NHSMESH mailbox:nonce:1:timestamp:hmac`, the HMAC-SHA256 with
/// the environment's shared key of `mailbox:nonce:1:password:timestamp`.
pub fn mesh_authorization(mailbox: &str, password: &str, shared_key: &str) -> String {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let now = crate::net::now();
    let (y, m, d) = now.date().ymd();
    let minutes = now.as_millis() % cpis_protocol::time::DAY_MS / 60_000;
    let timestamp = format!("{y:04}{m:02}{d:02}{:02}{:02}", minutes / 60, minutes % 60);
    let mut mac = match <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(shared_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    mac.update(format!("{mailbox}:{nonce}:1:{password}:{timestamp}").as_bytes());
    format!("NHSMESH {mailbox}:{nonce}:1:{timestamp}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Largest plan file taken from the MESH inbox (as the import API).
const UPLOAD_BYTES_MAX: usize = crate::api::BODY_BYTES_MAX;
/// How often the MESH inbox is looked at for plan files.
const MESH_INBOX_POLL_MS: u64 = 1_000;

/// Imports plan files that arrive in the authority's MESH mailbox under `upload_workflow_id`
/// (the CSV format of `cpis plans import`) and answers each with a MESH message to its sender:
/// the import report as JSON (`result_workflow_id`, local id `result-` and the upload's message
/// id), then acknowledges the upload. A file that can never be imported (refused whole, larger than
/// the import takes, sent in chunks) is answered with why (`{"upload", "error"}`) and acknowledged
/// too, so that it leaves the mailbox. A message that fails for a while (MESH or the node not
/// answering) is left for the next pass; the others are taken all the same. Run again after a
/// stop, an upload is imported again (which changes nothing) and its answer is not sent twice
/// (MESH's tracking is asked first). Other messages are left in the mailbox.
pub async fn run_mesh_inbox(sink: Sink, state: ApiState, mut stop: watch::Receiver<bool>) {
    let Sink::Mesh { config, password, shared_key, to } = sink else { return };
    let mut left = HashSet::new();
    loop {
        if let Err(reason) = mesh_inbox_once(&config, &to, &password, &shared_key, &state, &mut left).await {
            warn!(%reason, "the MESH inbox could not be read: trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(MESH_INBOX_POLL_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What became of a plan file given to the import.
enum Imported {
    /// The per-row report.
    Report(ImportReport),
    /// Refused whole, and why: it will never be imported as it is.
    Refused(String),
    /// Not imported now (the node is stopping, say), and why: try again later.
    Later(String),
}

/// The answer to an imported plan file: the import report, and which upload it answers.
#[derive(serde::Serialize)]
struct ImportAnswer<'a> {
    upload: &'a str,
    #[serde(flatten)]
    report: &'a ImportReport,
}

/// Where the plan files from MESH are imported, and the answers to those whose answer or
/// acknowledgement has not gone through yet.
trait PlanImport {
    fn import(&self, csv: &[u8]) -> impl Future<Output = Imported> + Send;
    /// The answer to upload `id` if it was imported before (`Err`: it cannot be told now).
    fn answered(&self, id: &str) -> Result<Option<Vec<u8>>, String>;
    /// Keeps the answer to upload `id`, durably, before it is sent.
    fn remember(&self, id: &str, answer: &[u8]) -> impl Future<Output = Result<(), String>> + Send;
    /// Lets the answer to upload `id` go, once MESH has the upload acknowledged.
    fn forget(&self, id: &str) -> impl Future<Output = Result<(), String>> + Send;
}

impl PlanImport for ApiState {
    fn answered(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        self.store.get(Table::MeshUploads, id.as_bytes()).map_err(|e| e.to_string())
    }

    async fn remember(&self, id: &str, answer: &[u8]) -> Result<(), String> {
        let op = StoreOp::Put { table: Table::MeshUploads, key: id.as_bytes().to_vec(), value: answer.to_vec() };
        self.store.commit(WriteBatch { id: 0, ops: vec![op] }).await.map(drop).map_err(|e| e.to_string())
    }

    async fn forget(&self, id: &str) -> Result<(), String> {
        let op = StoreOp::Delete { table: Table::MeshUploads, key: id.as_bytes().to_vec() };
        self.store.commit(WriteBatch { id: 0, ops: vec![op] }).await.map(drop).map_err(|e| e.to_string())
    }

    async fn import(&self, csv: &[u8]) -> Imported {
        match crate::api::run_import(self, axum::body::Bytes::copy_from_slice(csv), false).await {
            Ok(report) => Imported::Report(report),
            Err(refused) => {
                let status = refused.status();
                let bytes = axum::body::to_bytes(refused.into_body(), ANSWER_BYTES_MAX).await.unwrap_or_default();
                let reason = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or_else(|| "the file was refused".into());
                if status.is_server_error() { Imported::Later(reason) } else { Imported::Refused(reason) }
            }
        }
    }
}

/// One pass over the inbox. `Err` only if the inbox could not be listed; a message that could not
/// be taken is logged and left for the next pass.
async fn mesh_inbox_once(
    config: &MeshConfig,
    to: &Endpoint,
    password: &str,
    shared_key: &str,
    importer: &impl PlanImport,
    left: &mut HashSet<String>,
) -> Result<(), String> {
    let mailbox = &config.mailbox;
    let auth = || ("authorization", mesh_authorization(mailbox, password, shared_key));
    let inbox = format!("/messageexchange/{mailbox}/inbox");
    let listed = fetch(to, hyper::Method::GET, &inbox, vec![auth()], vec![], 0).await?;
    if listed.status != 200 {
        return Err(format!("MESH answered {} to listing the inbox", listed.status));
    }
    let listed = listed.body.ok_or("MESH's inbox list is too long")?;
    let listed: Value = serde_json::from_slice(&listed).map_err(|e| format!("MESH's inbox list: {e}"))?;
    let ids: Vec<String> = listed["messages"]
        .as_array()
        .map_or(vec![], |m| m.iter().filter_map(|x| x.as_str().map(String::from)).collect());
    let new: Vec<String> = ids.into_iter().filter(|id| !left.contains(id)).collect();
    for id in new {
        if let Err(reason) = mesh_take(config, to, &auth, importer, &id, left).await {
            warn!(message = %id, %reason, "a MESH message could not be taken now: it is left for the next pass");
        }
    }
    Ok(())
}

/// Takes one message from the inbox: a plan file is imported (if it can be), answered and
/// acknowledged; a message of another workflow is left. `Err`: it could not be done now, and the
/// message stays in the mailbox for the next pass. The answer is kept durably before it is sent,
/// until the message is acknowledged: a file imported once is never imported again (a later
/// change to its plans would be undone), only answered again.
async fn mesh_take(
    config: &MeshConfig,
    to: &Endpoint,
    auth: &impl Fn() -> (&'static str, String),
    importer: &impl PlanImport,
    id: &str,
    left: &mut HashSet<String>,
) -> Result<(), String> {
    let inbox = format!("/messageexchange/{}/inbox", config.mailbox);
    let path = format!("{inbox}/{id}");
    let message = fetch(to, hyper::Method::GET, &path, vec![auth()], vec![], UPLOAD_BYTES_MAX).await?;
    // 200: the whole message; 206: the first of its chunks.
    if !matches!(message.status, 200 | 206) {
        return Err(format!("MESH answered {} to reading it", message.status));
    }
    let header = |name: &str| message.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if header("mex-workflowid") != config.upload_workflow_id {
        info!(message = %id, workflow = %header("mex-workflowid"), "a MESH message of another workflow is left in the mailbox");
        left.insert(id.to_string());
        return Ok(());
    }
    if let Some(body) = importer.answered(id)? {
        info!(message = %id, "a plan file from MESH imported before: answered again, not imported again");
        return answer_and_acknowledge(config, to, auth, importer, id, &header("mex-from"), body).await;
    }
    let most = format!("{} MiB", UPLOAD_BYTES_MAX >> 20);
    let imported = match (message.status, &message.body) {
        (206, _) => Imported::Refused(format!(
            "the file was sent in {} chunks: send it as one message of at most {most}",
            header("mex-total-chunks")
        )),
        (_, None) => Imported::Refused(format!("the file is larger than {most}: split it")),
        (_, Some(csv)) => importer.import(csv).await,
    };
    let body = match imported {
        Imported::Report(report) => {
            info!(message = %id, applied = report.applied, refused = report.refused, "plan file from MESH imported");
            serde_json::to_vec(&ImportAnswer { upload: id, report: &report })
        }
        Imported::Refused(reason) => {
            warn!(message = %id, %reason, "a plan file from MESH was refused whole: its sender is told why");
            serde_json::to_vec(&serde_json::json!({ "upload": id, "error": reason }))
        }
        Imported::Later(reason) => return Err(format!("it could not be imported now: {reason}")),
    }
    .map_err(|e| e.to_string())?;
    importer.remember(id, &body).await.map_err(|e| format!("keeping its answer: {e}"))?;
    answer_and_acknowledge(config, to, auth, importer, id, &header("mex-from"), body).await
}

/// Sends the answer to upload `id` to `from` and acknowledges the upload; then lets the kept
/// answer go.
async fn answer_and_acknowledge(
    config: &MeshConfig,
    to: &Endpoint,
    auth: &impl Fn() -> (&'static str, String),
    importer: &impl PlanImport,
    id: &str,
    from: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let result = MeshMessage {
        to: from,
        workflow: &config.result_workflow_id,
        local_id: format!("result-{id}"),
        subject: "Plan file import results",
    };
    let sent = mesh_send_once(config, to, auth, result, body).await.map_err(|e| format!("answering it: {e}"))?;
    if sent == Sent::SeveralBefore {
        warn!(message = %id, "MESH's tracking shows the answer to this plan file left the mailbox more than once");
    }
    let acknowledge = format!("/messageexchange/{}/inbox/{id}/status/acknowledged", config.mailbox);
    let status = exchange(to, hyper::Method::PUT, &acknowledge, vec![auth()], vec![]).await?;
    if !(200..300).contains(&status) {
        return Err(format!("MESH answered {status} to acknowledging it"));
    }
    if let Err(reason) = importer.forget(id).await {
        // Kept, it only takes room: the message is gone from the mailbox.
        warn!(message = %id, %reason, "the answer to an acknowledged plan file could not be let go");
    }
    Ok(())
}

/// The lookup ids already handed on.
pub fn handed(store: &Store) -> anyhow::Result<HashSet<String>> {
    let rows = store.scan(Table::Handed)?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, _)| <[u8; 16]>::try_from(key.as_slice()).ok())
        .map(|k| LookupId(k).to_hex())
        .collect())
}

/// Hands every notification on, until `stop` changes.
pub async fn run(sink: Sink, state: ApiState, store: Store, mut stop: watch::Receiver<bool>) {
    let mut wait_ms = RETRY_FIRST_MS;
    let mut done = loop {
        match handed(&store) {
            Ok(done) => break done,
            Err(e) => {
                warn!(reason = %e, retry_in_ms = wait_ms, "cannot read which notifications were handed on: none is handed on until it can be");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                    _ = stop.changed() => return,
                }
                wait_ms = (wait_ms * 2).min(sink.retry_max_ms());
            }
        }
    };
    wait_ms = RETRY_FIRST_MS;
    let mut seen_commits = None;
    let mut all_handed = false;
    loop {
        let commits = store.stats().commits;
        if all_handed && seen_commits == Some(commits) {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(POLL_MS)) => continue,
                _ = stop.changed() => return,
            }
        }
        seen_commits = Some(commits);
        // Only the keys of the inbox are read, then the notifications not yet handed on.
        let pending = store.keys(Table::Inbox).and_then(|keys| {
            let new: Vec<LookupId> = keys
                .iter()
                .filter_map(|k| <[u8; 16]>::try_from(k.as_slice()).ok().map(LookupId))
                .filter(|id| !done.contains(&id.to_hex()))
                .collect();
            if new.is_empty() { Ok(vec![]) } else { api::read_notifications(&state, Some(&new)) }
        });
        let mut pause = Duration::from_millis(POLL_MS);
        all_handed = true;
        let pending: Vec<Value> = match pending {
            Ok(items) => items.into_iter().rev().collect(),
            Err(e) => {
                // Read again after a pause, whether or not anything is written meanwhile.
                warn!(reason = %e, retry_in_ms = wait_ms, "cannot read the inbox to hand notifications on");
                (all_handed, pause) = (false, Duration::from_millis(wait_ms));
                wait_ms = (wait_ms * 2).min(sink.retry_max_ms());
                vec![]
            }
        };
        for item in pending {
            let id = api::text(&item, "lookup_id");
            match sink.hand(&id, &item).await {
                Ok(()) => {
                    if let Err(e) = record(&store, &id).await {
                        warn!(lookup = %id, by = sink.name(), reason = %e, retry_in_ms = wait_ms, "{}", sink.unrecorded());
                        (all_handed, pause) = (false, Duration::from_millis(wait_ms));
                        wait_ms = (wait_ms * 2).min(sink.retry_max_ms());
                        break;
                    }
                    info!(lookup = %id, by = sink.name(), "notification handed to the case-management system");
                    done.insert(id);
                    wait_ms = RETRY_FIRST_MS;
                }
                Err(reason) => {
                    warn!(lookup = %id, by = sink.name(), %reason, retry_in_ms = wait_ms, "the case-management system did not take a notification");
                    pause = Duration::from_millis(wait_ms);
                    wait_ms = (wait_ms * 2).min(sink.retry_max_ms());
                    all_handed = false;
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn record(store: &Store, id: &str) -> anyhow::Result<()> {
    let key = LookupId::from_hex(id).ok_or_else(|| anyhow::anyhow!("not a lookup id"))?;
    let now = crate::net::now().as_millis().to_be_bytes().to_vec();
    let op = StoreOp::Put { table: Table::Handed, key: key.0.to_vec(), value: now };
    store.commit(WriteBatch { id: 0, ops: vec![op] }).await?;
    Ok(())
}

/// One HTTP/1.1 exchange: the status, the answer read and dropped.
async fn exchange(
    to: &Endpoint,
    method: hyper::Method,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Result<u16, String> {
    fetch(to, method, path, headers, body, 0).await.map(|answer| answer.status)
}

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    /// The body; `None` if it is longer than the exchange reads.
    body: Option<Bytes>,
}

/// A task aborted when this is dropped: the connection's task ends with its exchange, whichever
/// way that ends (an answer, an error, the timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 exchange, within the endpoint's time limit: the answer, with its body if that is
/// at most `answer_max` bytes (or `ANSWER_BYTES_MAX`, if more).
async fn fetch(
    to: &Endpoint,
    method: hyper::Method,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    answer_max: usize,
) -> Result<Answer, String> {
    let run = async {
        let stream = tokio::net::TcpStream::connect(&to.address).await.map_err(|e| format!("cannot connect: {e}"))?;
        let stream: Box<dyn Io> = match &to.tls {
            None => Box::new(stream),
            Some((connector, name)) => {
                Box::new(connector.connect(name.clone(), stream).await.map_err(|e| format!("TLS: {e}"))?)
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let _connection = AbortOnDrop(tokio::spawn(connection));
        let mut request = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, &to.authority);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let most = answer_max.max(ANSWER_BYTES_MAX);
        let declared = hyper::body::Body::size_hint(response.body()).lower();
        let body = if usize::try_from(declared).map_or(true, |n| n > most) {
            None
        } else {
            match Limited::new(response.into_body(), most).collect().await {
                Ok(body) => Some(body.to_bytes()),
                Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => None,
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        };
        Ok(Answer { status, headers, body })
    };
    tokio::time::timeout(to.timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", to.timeout.as_millis())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap_or_else(|_| unreachable!());
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = signature(b"secret", 1_700_000_000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(a, signature(b"secret", 1_700_000_001, b"{}"), "the timestamp is signed");
        assert_ne!(a, signature(b"other", 1_700_000_000, b"{}"), "the secret matters");
    }

    /// A stand-in for MESH on 127.0.0.1: an inbox, tracking by local id, an outbox.
    #[derive(Default)]
    struct FakeMesh {
        /// The inbox, oldest first: message id and what reading it gives.
        inbox: Vec<(String, Stored)>,
        /// Tracking's answer for a local id (404 if none); a message sent makes it 200.
        tracking: HashMap<String, u16>,
        /// The messages sent: recipient, local id, body.
        sent: Vec<(String, String, Value)>,
        acknowledged: Vec<String>,
        /// Sending is refused (400), as when the sender's mailbox may not receive answers.
        refuse_sends: bool,
    }

    enum Stored {
        /// A message in one piece: its workflow and body (from `X26CMS`).
        Whole(&'static str, Bytes),
        /// The first of two chunks of a plan file.
        Chunked,
        /// Reading it is answered with this status.
        Failing(u16),
    }

    const UPLOAD: &str = "CPIS_PLAN_UPLOAD";
    const GOOD_CSV: &str = "reference,nhs_number,plan_type,start_date\nCPP-7,4010232137,CPP,2026-02-01\n";

    fn fake_answer(
        mesh: &Mutex<FakeMesh>,
        method: &hyper::Method,
        path: &str,
        headers: &hyper::HeaderMap,
        body: &[u8],
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut mesh = lock(mesh);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let parts: Vec<&str> = path.trim_start_matches("/messageexchange/").split('/').collect();
        let from = [("mex-from", "X26CMS")];
        match (method.as_str(), parts.as_slice()) {
            ("GET", [_, "inbox"]) => {
                let ids: Vec<&str> = mesh
                    .inbox
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .filter(|id| !mesh.acknowledged.iter().any(|a| a == id))
                    .collect();
                axum::Json(json!({ "messages": ids })).into_response()
            }
            ("GET", [_, "inbox", id]) => match mesh.inbox.iter().find(|(i, _)| i == id).map(|(_, m)| m) {
                Some(Stored::Whole(workflow, body)) => {
                    (from, [("mex-workflowid", *workflow)], body.clone()).into_response()
                }
                Some(Stored::Chunked) => (
                    hyper::StatusCode::PARTIAL_CONTENT,
                    from,
                    [("mex-workflowid", UPLOAD), ("mex-chunk-range", "1:2"), ("mex-total-chunks", "2")],
                    "reference,nhs_number,plan_type,start_date\n",
                )
                    .into_response(),
                Some(Stored::Failing(status)) => hyper::StatusCode::from_u16(*status)
                    .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response(),
                None => hyper::StatusCode::NOT_FOUND.into_response(),
            },
            ("PUT", [_, "inbox", id, "status", "acknowledged"]) => {
                mesh.acknowledged.push((*id).to_string());
                hyper::StatusCode::OK.into_response()
            }
            ("GET", [_, "outbox", "tracking", local_id]) => {
                let status = mesh.tracking.get(*local_id).copied().unwrap_or(404);
                hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR).into_response()
            }
            ("POST", [_, "outbox"]) if mesh.refuse_sends => hyper::StatusCode::BAD_REQUEST.into_response(),
            ("POST", [_, "outbox"]) => {
                let local_id = header("mex-localid");
                mesh.tracking.insert(local_id.clone(), 200);
                let body = serde_json::from_slice(body).unwrap_or(Value::Null);
                mesh.sent.push((header("mex-to"), local_id, body));
                (hyper::StatusCode::ACCEPTED, axum::Json(json!({ "message_id": "SENT" }))).into_response()
            }
            _ => hyper::StatusCode::NOT_FOUND.into_response(),
        }
    }

    fn lock(mesh: &Mutex<FakeMesh>) -> std::sync::MutexGuard<'_, FakeMesh> {
        mesh.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `mesh` on 127.0.0.1; its URL.
    async fn serve_fake_mesh(mesh: Arc<Mutex<FakeMesh>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("address: {e}")));
        let app = axum::Router::new().fallback(
            move |method: hyper::Method, uri: hyper::Uri, headers: hyper::HeaderMap, body: Bytes| {
                let mesh = mesh.clone();
                async move { fake_answer(&mesh, &method, uri.path(), &headers, &body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn mesh_config(url: String) -> MeshConfig {
        MeshConfig {
            url,
            mailbox: "X26LA".into(),
            password_file: "mesh.password".into(),
            shared_key_file: "mesh.key".into(),
            to_mailbox: "X26CMS".into(),
            workflow_id: "CPIS_NOTIFICATION".into(),
            upload_workflow_id: UPLOAD.into(),
            result_workflow_id: "CPIS_PLAN_UPLOAD_RESULT".into(),
            retry_max_ms: 1_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    fn mesh_sink(url: &str) -> Sink {
        let to = Endpoint::new(url, None, None).unwrap_or_else(|e| panic!("{e}"));
        let config = Box::new(mesh_config(url.into()));
        Sink::Mesh { config, password: "password".into(), shared_key: "key".into(), to }
    }

    /// Imports what the CSV parser takes; refuses the rest, as the node's import does. Counts the
    /// files imported, and keeps answers as the node's store does.
    #[derive(Default)]
    struct ParseOnly {
        imports: std::sync::atomic::AtomicUsize,
        answers: Mutex<HashMap<String, Vec<u8>>>,
    }

    impl PlanImport for ParseOnly {
        async fn import(&self, csv: &[u8]) -> Imported {
            self.imports.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match crate::import::parse_csv(csv) {
                Ok(rows) => Imported::Report(ImportReport { applied: rows.len(), ..ImportReport::default() }),
                Err(e) => Imported::Refused(e),
            }
        }

        fn answered(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned())
        }

        async fn remember(&self, id: &str, answer: &[u8]) -> Result<(), String> {
            let mut answers = self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            answers.insert(id.into(), answer.to_vec());
            Ok(())
        }

        async fn forget(&self, id: &str) -> Result<(), String> {
            self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
            Ok(())
        }
    }

    /// The answer to a plan file cannot be sent for a while (its sender's mailbox may not
    /// receive it): the file stays in the mailbox and is tried again, but it is imported once,
    /// so that a change to its plans made meanwhile is not undone; once answered it is
    /// acknowledged and its kept answer let go.
    #[tokio::test]
    async fn a_plan_file_whose_answer_cannot_be_sent_yet_is_imported_once_and_answered_when_it_can_be() {
        let mesh = Arc::new(Mutex::new(FakeMesh::default()));
        lock(&mesh).inbox = vec![("GOOD".into(), Stored::Whole(UPLOAD, Bytes::from_static(GOOD_CSV.as_bytes())))];
        lock(&mesh).refuse_sends = true;
        let url = serve_fake_mesh(mesh.clone()).await;
        let to = Endpoint::new(&url, None, None).unwrap_or_else(|e| panic!("{e}"));
        let config = mesh_config(url);
        let (importer, mut left) = (ParseOnly::default(), HashSet::new());
        for _ in 0..3 {
            assert_eq!(mesh_inbox_once(&config, &to, "password", "key", &importer, &mut left).await, Ok(()));
        }
        assert_eq!(importer.imports.load(std::sync::atomic::Ordering::SeqCst), 1, "imported once, not each pass");
        assert!(lock(&mesh).acknowledged.is_empty(), "left in the mailbox until answered");
        assert!(importer.answered("GOOD").is_ok_and(|a| a.is_some()), "its answer is kept");

        lock(&mesh).refuse_sends = false;
        assert_eq!(mesh_inbox_once(&config, &to, "password", "key", &importer, &mut left).await, Ok(()));
        assert_eq!(importer.imports.load(std::sync::atomic::Ordering::SeqCst), 1, "answered, not imported again");
        let mesh = lock(&mesh);
        assert_eq!(mesh.acknowledged, ["GOOD"]);
        assert_eq!(mesh.sent.len(), 1);
        assert_eq!(mesh.sent[0].2["applied"], json!(1), "the answer is the first import's report");
        assert!(importer.answered("GOOD").is_ok_and(|a| a.is_none()), "let go once acknowledged");
    }

    #[tokio::test]
    async fn a_tracking_300_counts_as_sent_and_nothing_is_sent_again() {
        let mesh = Arc::new(Mutex::new(FakeMesh::default()));
        let twice = "00112233445566778899aabbccddeeff";
        lock(&mesh).tracking.insert(twice.into(), 300);
        let url = serve_fake_mesh(mesh.clone()).await;
        let sink = mesh_sink(&url);
        assert_eq!(sink.hand(twice, &json!({ "lookup_id": twice })).await, Ok(()), "several left: it was sent");
        let once = "ffeeddccbbaa99887766554433221100";
        assert_eq!(sink.hand(once, &json!({ "lookup_id": once })).await, Ok(()));
        let sent: Vec<String> = lock(&mesh).sent.iter().map(|s| s.1.clone()).collect();
        assert_eq!(sent, [once], "only the notification MESH's tracking did not know was sent");
        lock(&mesh).tracking.insert(twice.into(), 503);
        assert!(sink.hand(twice, &json!({})).await.is_err(), "any other answer is a failure, tried again");
    }

    #[tokio::test]
    async fn plan_files_that_can_never_be_imported_are_answered_and_acknowledged_and_do_not_hold_up_the_others() {
        let mesh = Arc::new(Mutex::new(FakeMesh::default()));
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01");
        lock(&mesh).inbox = vec![
            ("BIG".into(), Stored::Whole(UPLOAD, Bytes::from(vec![b'a'; UPLOAD_BYTES_MAX + 1]))),
            ("CHUNKED".into(), Stored::Chunked),
            ("FAILING".into(), Stored::Failing(503)),
            ("PICTURE".into(), Stored::Whole(UPLOAD, png)),
            ("OTHER".into(), Stored::Whole("SOMETHING_ELSE", Bytes::from_static(b"{}"))),
            ("GOOD".into(), Stored::Whole(UPLOAD, Bytes::from_static(GOOD_CSV.as_bytes()))),
        ];
        let url = serve_fake_mesh(mesh.clone()).await;
        let to = Endpoint::new(&url, None, None).unwrap_or_else(|e| panic!("{e}"));
        let config = mesh_config(url);
        let (importer, mut left) = (ParseOnly::default(), HashSet::new());
        assert_eq!(mesh_inbox_once(&config, &to, "password", "key", &importer, &mut left).await, Ok(()));
        {
            let mesh = lock(&mesh);
            let answers: HashMap<&str, &Value> = mesh
                .sent
                .iter()
                .map(|(to, id, body)| {
                    assert_eq!(to, "X26CMS", "answered to the sender");
                    (id.as_str(), body)
                })
                .collect();
            let error = |id: &str| answers.get(id).and_then(|a| a["error"].as_str()).unwrap_or("").to_string();
            assert!(error("result-BIG").contains("larger than 64 MiB"), "{answers:?}");
            assert!(error("result-CHUNKED").contains("2 chunks"), "{answers:?}");
            assert!(error("result-PICTURE").contains("header row"), "{answers:?}");
            assert_eq!(answers.get("result-GOOD").map(|a| &a["applied"]), Some(&json!(1)), "{answers:?}");
            assert_eq!(answers.get("result-GOOD").map(|a| &a["upload"]), Some(&json!("GOOD")));
            assert_eq!(answers.len(), 4, "nothing else answered: {answers:?}");
            assert_eq!(mesh.acknowledged, ["BIG", "CHUNKED", "PICTURE", "GOOD"]);
        }
        assert!(left.contains("OTHER"), "another workflow's message is left alone");

        // The message that failed for a while is taken on a later pass.
        lock(&mesh).inbox[2].1 = Stored::Whole(UPLOAD, Bytes::from_static(GOOD_CSV.as_bytes()));
        assert_eq!(mesh_inbox_once(&config, &to, "password", "key", &importer, &mut left).await, Ok(()));
        let mesh = lock(&mesh);
        assert_eq!(mesh.acknowledged.last().map(String::as_str), Some("FAILING"));
        assert_eq!(mesh.sent.len(), 5, "each answered once");
    }

    #[tokio::test]
    async fn no_connection_task_outlives_an_exchange_that_timed_out() {
        // A server that takes the request and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}")).to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(1).flatten() {
                held.push(stream);
                std::thread::sleep(Duration::from_secs(30));
            }
        });
        let runtime = tokio::runtime::Handle::current();
        let before = runtime.metrics().num_alive_tasks();
        let mut to = Endpoint::new(&format!("http://{addr}"), None, None).unwrap_or_else(|e| panic!("{e}"));
        to.timeout = Duration::from_millis(300);
        let got = fetch(&to, hyper::Method::GET, "/", vec![], vec![], 0).await;
        assert!(got.is_err_and(|e| e.contains("no answer within 300 ms")));
        assert!(tasks_back_to(before).await, "no connection task outlives the exchange");
    }

    /// Whether the runtime's live tasks come back to `count` within a hundred turns of it.
    async fn tasks_back_to(count: usize) -> bool {
        for _ in 0..100 {
            if tokio::runtime::Handle::current().metrics().num_alive_tasks() == count {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn a_connection_task_is_aborted_when_its_exchange_is_dropped() {
        let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let connection = AbortOnDrop(tokio::spawn(std::future::pending::<()>()));
        assert_eq!(tokio::runtime::Handle::current().metrics().num_alive_tasks(), before + 1);
        drop(connection);
        assert!(tasks_back_to(before).await, "the task that would never end was aborted");
    }

    fn fail<T>(e: impl std::fmt::Display) -> T {
        panic!("{e}")
    }

    /// PEM files of a CA, a server certificate for 127.0.0.1 and a client certificate signed by
    /// it, and a second CA that signed neither.
    struct Pki {
        dir: tempfile::TempDir,
        server: rustls::ServerConfig,
    }

    impl Pki {
        fn new() -> Pki {
            use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap_or_else(fail)).unwrap_or_else(fail);
            let leaf = |name: &str| {
                let key = KeyPair::generate().unwrap_or_else(fail);
                let cert = CertificateParams::new(vec![name.to_string()])
                    .and_then(|p| p.signed_by(&key, &ca))
                    .unwrap_or_else(fail);
                (cert, key)
            };
            let (server_cert, server_key) = leaf("127.0.0.1");
            let (client_cert, client_key) = leaf("X26LA");
            let mut other = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
            other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let other = other.self_signed(&KeyPair::generate().unwrap_or_else(fail)).unwrap_or_else(fail);
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let files = [
                ("ca.pem", ca.pem()),
                ("other-ca.pem", other.pem()),
                ("client.pem", client_cert.pem()),
                ("client.key", client_key.serialize_pem()),
            ];
            for (name, pem) in files {
                std::fs::write(dir.path().join(name), pem).unwrap_or_else(|e| panic!("{e}"));
            }
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap_or_else(|e| panic!("{e}"));
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                .unwrap_or_else(|e| panic!("{e}"));
            let server = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|e| panic!("{e}"))
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![server_cert.der().clone()], key)
                .unwrap_or_else(|e| panic!("{e}"));
            Pki { dir, server }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        /// An HTTPS server that wants a client certificate from this CA and answers every request
        /// 200; its URL.
        async fn serve(&self) -> String {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
            let url = format!("https://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self.server.clone()));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else { return };
                        let mut request = vec![0u8; 4096];
                        let _ = tls.read(&mut request).await;
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            url
        }
    }

    #[test]
    fn an_endpoint_connects_to_host_and_port_and_names_the_host_as_written() {
        let parts = |url: &str| {
            let e = Endpoint::new(url, None, None).unwrap_or_else(|e| panic!("{url}: {e}"));
            (e.address, e.authority, e.path)
        };
        let owned = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(parts("http://127.0.0.1:8700"), owned("127.0.0.1:8700", "127.0.0.1:8700", "/"));
        assert_eq!(parts("http://cms.example.org/cpis/in"), owned("cms.example.org:80", "cms.example.org", "/cpis/in"));
        assert_eq!(parts("http://[::1]/x"), owned("[::1]:80", "[::1]", "/x"));
        assert_eq!(parts("http://[::1]:8080/"), owned("[::1]:8080", "[::1]:8080", "/"));
        for bad in ["http://host:port/", "http://[::1/", "ftp://host/", "http://:80/"] {
            assert!(Endpoint::new(bad, None, None).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn https_with_a_client_certificate_refused_without_one_or_against_the_wrong_ca() {
        let pki = Pki::new();
        let url = pki.serve().await;
        let (ca, other) = (pki.path("ca.pem"), pki.path("other-ca.pem"));
        let client = (pki.path("client.pem"), pki.path("client.key"));
        let client = Some((client.0.as_path(), client.1.as_path()));
        let status = |to: Endpoint| async move { exchange(&to, hyper::Method::GET, "/", vec![], vec![]).await };

        let to = Endpoint::new(&url, Some(&ca), client).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status(to).await, Ok(200), "the CA checks the server, the server takes our certificate");
        let no_client_cert = Endpoint::new(&url, Some(&ca), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(status(no_client_cert).await.is_err(), "the server wants a client certificate");
        let wrong_ca = Endpoint::new(&url, Some(&other), client).unwrap_or_else(|e| panic!("{e}"));
        let refused = status(wrong_ca).await.unwrap_err();
        assert!(refused.starts_with("TLS: ") && refused.contains("certificate"), "{refused}");
        let without_ca = Endpoint::new(&url, None, client).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(without_ca.contains("needs a CA file"), "{without_ca}");
        let not_pem = Endpoint::new(&url, Some(&pki.path("missing.pem")), None).err().map(|e| format!("{e:#}"));
        assert!(not_pem.is_some_and(|e| e.contains("missing.pem")), "a missing CA file is named");
    }

    #[test]
    fn the_log_says_what_becomes_of_a_notification_handed_on_but_not_recorded() {
        let mesh = mesh_sink("http://127.0.0.1:1");
        assert!(
            mesh.unrecorded().contains("recorded on the next pass") && mesh.unrecorded().contains("not sent again")
        );
        let webhook = Sink::Webhook {
            config: WebhookConfig {
                url: "http://127.0.0.1:1/".into(),
                ca_file: None,
                secret_file: "secret".into(),
                retry_max_ms: 1_000,
            },
            secret: vec![],
            to: Endpoint::new("http://127.0.0.1:1/", None, None).unwrap_or_else(|e| panic!("{e}")),
        };
        assert!(webhook.unrecorded().contains("posted again") && webhook.unrecorded().contains("X-CPIS-Delivery"));
    }
}
