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
//! node asks MESH's tracking whether a message with that local id already left its mailbox (it
//! may have stopped after MESH accepted one and before recording it): if so, it records it and
//! sends nothing. So MESH holds exactly one message per notification.

use crate::api::{self, ApiState};
use crate::config::{MeshConfig, NodeConfig, WebhookConfig};
use crate::store::Store;
use cpis_protocol::ids::LookupId;
use cpis_protocol::schema::{StoreOp, Table, WriteBatch};
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde_json::Value;
use std::collections::HashSet;
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

/// Where notifications go, with the secrets to get them there.
pub enum Sink {
    Webhook { config: WebhookConfig, secret: Vec<u8> },
    Mesh { config: MeshConfig, password: String, shared_key: String },
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
            return Ok(Some(Sink::Webhook { config: webhook.clone(), secret: secret.into_bytes() }));
        }
        if let Some(mesh) = &config.mesh {
            let password = read_secret_file(&mesh.password_file, "MESH mailbox password", 1)?;
            let shared_key = read_secret_file(&mesh.shared_key_file, "MESH shared key", 1)?;
            return Ok(Some(Sink::Mesh { config: mesh.clone(), password, shared_key }));
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

    /// Hands one notification on; `Err` says why it was not taken (no case data in it).
    async fn hand(&self, id: &str, item: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(item).map_err(|e| e.to_string())?;
        match self {
            Sink::Webhook { config, secret } => {
                let timestamp = crate::net::now().as_millis() / 1000;
                let headers = vec![
                    ("content-type", "application/json".to_string()),
                    ("x-cpis-delivery", id.to_string()),
                    ("x-cpis-timestamp", timestamp.to_string()),
                    ("x-cpis-signature", signature(secret, timestamp, &body)),
                ];
                let (authority, path) = split_url(&config.url)?;
                let status = exchange(authority, hyper::Method::POST, &path, headers, body).await?;
                if (200..300).contains(&status) { Ok(()) } else { Err(format!("it answered {status}")) }
            }
            Sink::Mesh { config, password, shared_key } => {
                let (authority, _) = split_url(&config.url)?;
                let auth = || ("authorization", mesh_authorization(&config.mailbox, password, shared_key));
                let message = MeshMessage {
                    to: &config.to_mailbox,
                    workflow: &config.workflow_id,
                    local_id: id.to_string(),
                    subject: "Child protection notification",
                };
                mesh_send_once(config, authority, auth, message, body).await
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

/// Sends a MESH message unless MESH's tracking shows that one with its local id already left the
/// mailbox (sent before a stop): so a message is never sent twice.
async fn mesh_send_once(
    config: &MeshConfig,
    authority: &str,
    auth: impl Fn() -> (&'static str, String),
    message: MeshMessage<'_>,
    body: Vec<u8>,
) -> Result<(), String> {
    let mailbox = &config.mailbox;
    let tracking = format!("/messageexchange/{mailbox}/outbox/tracking/{}", message.local_id);
    match exchange(authority, hyper::Method::GET, &tracking, vec![auth()], vec![]).await? {
        200 => return Ok(()),
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
    match exchange(authority, hyper::Method::POST, &format!("/messageexchange/{mailbox}/outbox"), headers, body).await?
    {
        200..=299 => Ok(()),
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
/// id), then acknowledges the upload. Run again after a stop, an upload is imported again (which
/// changes nothing) and its answer is not sent twice (MESH's tracking is asked first). Other
/// messages are left in the mailbox.
pub async fn run_mesh_inbox(
    config: MeshConfig,
    password: String,
    shared_key: String,
    state: ApiState,
    mut stop: watch::Receiver<bool>,
) {
    let mut left = HashSet::new();
    loop {
        if let Err(reason) = mesh_inbox_once(&config, &password, &shared_key, &state, &mut left).await {
            warn!(%reason, "the MESH inbox could not be read or answered: trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(MESH_INBOX_POLL_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn mesh_inbox_once(
    config: &MeshConfig,
    password: &str,
    shared_key: &str,
    state: &ApiState,
    left: &mut HashSet<String>,
) -> Result<(), String> {
    let (authority, _) = split_url(&config.url)?;
    let mailbox = &config.mailbox;
    let auth = || ("authorization", mesh_authorization(mailbox, password, shared_key));
    let inbox = format!("/messageexchange/{mailbox}/inbox");
    let (status, _, body) = fetch(authority, hyper::Method::GET, &inbox, vec![auth()], vec![], 0).await?;
    if status != 200 {
        return Err(format!("MESH answered {status} to listing the inbox"));
    }
    let listed: Value = serde_json::from_slice(&body).map_err(|e| format!("MESH's inbox list: {e}"))?;
    let ids: Vec<String> = listed["messages"]
        .as_array()
        .map_or(vec![], |m| m.iter().filter_map(|x| x.as_str().map(String::from)).collect());
    let new: Vec<String> = ids.into_iter().filter(|id| !left.contains(id)).collect();
    for id in new {
        let path = format!("{inbox}/{id}");
        let (status, headers, body) =
            fetch(authority, hyper::Method::GET, &path, vec![auth()], vec![], UPLOAD_BYTES_MAX).await?;
        if status != 200 {
            return Err(format!("MESH answered {status} to reading message {id}"));
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if header("mex-workflowid") != config.upload_workflow_id {
            info!(message = %id, workflow = %header("mex-workflowid"), "a MESH message of another workflow is left in the mailbox");
            left.insert(id);
            continue;
        }
        let from = header("mex-from");
        let report = match crate::api::run_import(state, &body, false).await {
            Ok(report) => report,
            Err(refused) => {
                let bytes = axum::body::to_bytes(refused.into_body(), ANSWER_BYTES_MAX).await.unwrap_or_default();
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| serde_json::json!({ "error": "the file was refused" }))
            }
        };
        info!(message = %id, applied = %report["applied"], refused = %report["refused"], "plan file from MESH imported");
        let mut answer = report;
        answer["upload"] = Value::String(id.clone());
        let message = MeshMessage {
            to: &from,
            workflow: &config.result_workflow_id,
            local_id: format!("result-{id}"),
            subject: "Plan file import results",
        };
        let body = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
        mesh_send_once(config, authority, auth, message, body).await?;
        let acknowledge = format!("{inbox}/{id}/status/acknowledged");
        let status = exchange(authority, hyper::Method::PUT, &acknowledge, vec![auth()], vec![]).await?;
        if !(200..300).contains(&status) {
            return Err(format!("MESH answered {status} to acknowledging message {id}"));
        }
    }
    Ok(())
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, String), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    Ok(rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}"))))
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
    let mut done = match handed(&store) {
        Ok(done) => done,
        Err(e) => {
            warn!(reason = %e, "cannot read which notifications were handed on: notifications are not handed on");
            return;
        }
    };
    let mut wait_ms = RETRY_FIRST_MS;
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
        let pending: Vec<Value> = match api::read_inbox(&state) {
            Ok(items) => items.into_iter().rev().filter(|i| !done.contains(&api::text(i, "lookup_id"))).collect(),
            Err(e) => {
                warn!(reason = %e, "cannot read the inbox to hand notifications on");
                vec![]
            }
        };
        let mut pause = Duration::from_millis(POLL_MS);
        all_handed = true;
        for item in pending {
            let id = api::text(&item, "lookup_id");
            match sink.hand(&id, &item).await {
                Ok(()) => {
                    if let Err(e) = record(&store, &id).await {
                        warn!(reason = %e, "a notification was handed on but could not be recorded: it will be sent again");
                        all_handed = false;
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
    authority: &str,
    method: hyper::Method,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Result<u16, String> {
    fetch(authority, method, path, headers, body, 0).await.map(|(status, _, _)| status)
}

/// One HTTP/1.1 exchange: the status, the answer's headers, and at most `answer_max` bytes of it.
async fn fetch(
    authority: &str,
    method: hyper::Method,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    answer_max: usize,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let run = async {
        let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, authority);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let answer_headers = response.headers().clone();
        let answer = Limited::new(response.into_body(), answer_max.max(ANSWER_BYTES_MAX))
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the answer: {e}"))?;
        driver.abort();
        Ok((status, answer_headers, answer))
    };
    tokio::time::timeout(Duration::from_millis(POST_TIMEOUT_MS), run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {POST_TIMEOUT_MS} ms")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
