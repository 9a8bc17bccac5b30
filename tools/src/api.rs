//! A small client for a node's local HTTP API (docs/api.md): plain HTTP/1.1 on loopback, one
//! connection per request, the bearer token from the node's data folder.

use cpis_node::config::{ConfigError, NodeConfig};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest reply accepted from a node.
pub const REPLY_BYTES_MAX: usize = 256 << 20;
/// How long one request may take by default (a large import is the slowest).
pub const REQUEST_TIMEOUT_MS: u64 = 120_000;

static REQUEST_TIMEOUT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(REQUEST_TIMEOUT_MS);

/// Sets how long each request may take (`cpis --timeout`), for the whole process.
pub fn set_request_timeout(timeout: Duration) {
    REQUEST_TIMEOUT.store(timeout.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
}

fn request_timeout_ms() -> u64 {
    REQUEST_TIMEOUT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Why a call to the node's API gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The node's config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node has not written its API address or token: it has not started.
    #[error("cannot read {path}: {source}; is the node running? Start it with `cpis-node run --config {config}`")]
    NotStarted { path: PathBuf, config: PathBuf, source: std::io::Error },
    /// The API address file does not hold an address.
    #[error("{0} does not hold an address: restart the node")]
    BadAddress(PathBuf),
    /// Nothing answers at the API address.
    #[error("cannot reach the node's API at {addr}: {reason}; is the node running?")]
    Unreachable { addr: SocketAddr, reason: String },
    /// The node took too long.
    #[error("the node did not answer within {0} ms (give more with --timeout SECONDS)")]
    TimedOut(u64),
    /// The HTTP exchange failed half way.
    #[error("HTTP exchange with the node failed: {0}")]
    Http(String),
    /// The token was refused.
    #[error("the node refused the API token: check that {0} is this node's api.token")]
    Unauthorized(String),
    /// The node answered with an error; its message says what was wrong.
    #[error("the node refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The node's reply is not JSON.
    #[error("the node's reply is not JSON: {0}")]
    BadReply(String),
}

/// Where a node's API is and how to authenticate.
#[derive(Clone)]
pub struct NodeApi {
    addr: SocketAddr,
    token: String,
    token_source: String,
}

impl std::fmt::Debug for NodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeApi({})", self.addr)
    }
}

impl NodeApi {
    pub fn new(addr: SocketAddr, token: String) -> NodeApi {
        NodeApi { addr, token, token_source: "the token given".into() }
    }

    /// The API of the node a config file describes (reads `api.addr` and `api.token`).
    pub fn from_config(path: &Path) -> Result<NodeApi, ApiError> {
        let config = NodeConfig::load(path)?;
        let read = |file: PathBuf| {
            std::fs::read_to_string(&file).map_err(|source| ApiError::NotStarted {
                path: file,
                config: path.to_path_buf(),
                source,
            })
        };
        let addr_path = config.api_addr_path();
        let addr = read(addr_path.clone())?.trim().parse().map_err(|_| ApiError::BadAddress(addr_path))?;
        let token = read(config.token_path())?.trim().to_string();
        Ok(NodeApi { addr, token, token_source: config.token_path().display().to_string() })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Result<Value, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Http(e.to_string()))?;
        self.call(method, path, Some(("application/json", bytes))).await
    }

    pub async fn send_bytes(&self, path: &str, content_type: &'static str, bytes: Vec<u8>) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some((content_type, bytes))).await
    }

    /// A GET with extra headers, answered whatever its status: `(status, JSON body)`.
    pub async fn get_with(&self, path: &str, headers: &[(&'static str, String)]) -> Result<(u16, Value), ApiError> {
        let ms = request_timeout_ms();
        let (status, bytes) =
            tokio::time::timeout(Duration::from_millis(ms), self.exchange(Method::GET, path, None, headers))
                .await
                .map_err(|_| ApiError::TimedOut(ms))??;
        let value = serde_json::from_slice::<Value>(&bytes).map_err(|e| ApiError::BadReply(e.to_string()))?;
        Ok((status, value))
    }

    async fn call(&self, method: Method, path: &str, body: Option<(&'static str, Vec<u8>)>) -> Result<Value, ApiError> {
        let ms = request_timeout_ms();
        let (status, bytes) = tokio::time::timeout(Duration::from_millis(ms), self.exchange(method, path, body, &[]))
            .await
            .map_err(|_| ApiError::TimedOut(ms))??;
        let value = serde_json::from_slice::<Value>(&bytes);
        match (status, value) {
            (200..=299, Ok(value)) => Ok(value),
            (200..=299, Err(e)) => Err(ApiError::BadReply(e.to_string())),
            (401, _) => Err(ApiError::Unauthorized(self.token_source.clone())),
            (_, Ok(value)) => {
                Err(ApiError::Refused { status, message: crate::render::text(&value, "error").to_string() })
            }
            (_, Err(_)) => Err(ApiError::Refused {
                status,
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        headers: &[(&'static str, String)],
    ) -> Result<(u16, Bytes), ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| ApiError::Unreachable { addr: self.addr, reason: e.to_string() };
        let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let http = |e: &dyn std::fmt::Display| ApiError::Http(e.to_string());
        let request = request.body(Full::new(payload)).map_err(|e| http(&e))?;
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status().as_u16();
        let collected = Limited::new(response.into_body(), REPLY_BYTES_MAX).collect().await.map_err(|e| http(&e))?;
        driver.abort();
        Ok((status, collected.to_bytes()))
    }
}

/// Percent-encodes one path segment (a plan reference may hold any printable character).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_everything_but_unreserved() {
        assert_eq!(path_segment("LAC-2026_01.a~"), "LAC-2026_01.a~");
        assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let api = NodeApi::new(SocketAddr::from(([127, 0, 0, 1], 1)), "secret-token".into());
        assert!(!format!("{api:?}").contains("secret"));
    }
}
