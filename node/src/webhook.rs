//! Notifications handed to the council's case-management system by webhook: each notification in
//! the authority's inbox is posted, oldest first, to the configured URL as the same JSON document
//! the API shows (docs/api.md), and recorded as handed (`Table::Handed`, durable) once the
//! endpoint answered 2xx. A failure is retried with capped exponential backoff, for ever; nothing
//! is skipped, and the next notification waits behind the one failing, so that they arrive in
//! order.
//!
//! Each post carries `X-CPIS-Delivery` (the lookup id: the same on every retry, so that the
//! receiver can drop a repeat), `X-CPIS-Timestamp` (seconds since the epoch) and
//! `X-CPIS-Signature: sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` with the shared secret. A
//! notification is posted again only if the node stopped after the endpoint's 2xx and before it
//! recorded it: receivers that keep the delivery id see each notification exactly once.

use crate::api::{self, ApiState};
use crate::config::WebhookConfig;
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

/// How often the inbox is looked at for notifications not yet handed on.
const POLL_MS: u64 = 500;
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

/// Reads the shared secret (at least [`SECRET_CHARS_MIN`] characters).
pub fn read_secret(config: &WebhookConfig) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(&config.secret_file)
        .map_err(|e| anyhow::anyhow!("cannot read the webhook secret {}: {e}", config.secret_file.display()))?;
    let secret = text.trim();
    anyhow::ensure!(
        secret.chars().count() >= SECRET_CHARS_MIN,
        "the webhook secret in {} is shorter than {SECRET_CHARS_MIN} characters",
        config.secret_file.display()
    );
    Ok(secret.as_bytes().to_vec())
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
pub async fn run(
    config: WebhookConfig,
    secret: Vec<u8>,
    state: ApiState,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    let mut done = match handed(&store) {
        Ok(done) => done,
        Err(e) => {
            warn!(reason = %e, "the webhook cannot read which notifications it handed on: it does not run");
            return;
        }
    };
    let mut wait_ms = RETRY_FIRST_MS;
    loop {
        let pending: Vec<Value> = match api::read_inbox(&state) {
            Ok(items) => items.into_iter().rev().filter(|i| !done.contains(&api::text(i, "lookup_id"))).collect(),
            Err(e) => {
                warn!(reason = %e, "the webhook cannot read the inbox");
                vec![]
            }
        };
        let mut pause = Duration::from_millis(POLL_MS);
        for item in pending {
            let id = api::text(&item, "lookup_id");
            match post(&config, &secret, &id, &item).await {
                Ok(()) => {
                    if let Err(e) = record(&store, &id).await {
                        warn!(reason = %e, "a notification was handed on but could not be recorded: it will be posted again");
                        break;
                    }
                    info!(lookup = %id, "notification handed to the case-management system");
                    done.insert(id);
                    wait_ms = RETRY_FIRST_MS;
                }
                Err(reason) => {
                    warn!(lookup = %id, %reason, retry_in_ms = wait_ms, "the case-management system did not take a notification");
                    pause = Duration::from_millis(wait_ms);
                    wait_ms = (wait_ms * 2).min(config.retry_max_ms);
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

/// One post; `Err` says why it was not taken (no case data in it).
async fn post(config: &WebhookConfig, secret: &[u8], id: &str, item: &Value) -> Result<(), String> {
    let rest = config.url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let body = serde_json::to_vec(item).map_err(|e| e.to_string())?;
    let timestamp = crate::net::now().as_millis() / 1000;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-CPIS-Delivery", id)
            .header("X-CPIS-Timestamp", timestamp.to_string())
            .header("X-CPIS-Signature", signature(secret, timestamp, &body))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let _ = Limited::new(response.into_body(), ANSWER_BYTES_MAX).collect().await;
        driver.abort();
        if status.is_success() { Ok(()) } else { Err(format!("it answered {status}")) }
    };
    tokio::time::timeout(Duration::from_millis(POST_TIMEOUT_MS), exchange)
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
