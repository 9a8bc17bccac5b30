//! Support for the end-to-end tests: a federation written to disk (keys, directory, configs) in a
//! temporary folder, nodes started in this process or as real processes, a tiny HTTP client for
//! the operator API, and bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

use cpis_node::config::{self, LogFormat, NodeConfig, NodeRole, SettingConfig, Timing};
use cpis_node::runtime::RunningNode;
use cpis_protocol::directory::Role;
use cpis_protocol::harness::{FederationSpec, TestFederation};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod webdriver;

/// A federation on disk.
pub struct Fed {
    pub dir: tempfile::TempDir,
    pub fed: TestFederation,
    pub hub_addresses: BTreeMap<String, SocketAddr>,
}

/// A UDP port on 127.0.0.1 that the OS just handed out (and is free again).
pub fn free_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("its address")
}

impl Fed {
    /// Writes every member's key, the directory and each node's config.
    pub fn create(spec: FederationSpec) -> Fed {
        let fed = spec.build();
        let dir = tempfile::tempdir().expect("temp dir");
        let trusted = fed.trusted();
        let mut hub_addresses = BTreeMap::new();
        for m in trusted.with_role(Role::Hub) {
            hub_addresses.insert(m.code.to_string(), free_udp_port());
        }
        let fed_on_disk = Fed { dir, fed, hub_addresses };
        for m in trusted.members() {
            let home = fed_on_disk.home(m.code.as_str());
            std::fs::create_dir_all(&home).expect("member dir");
            config::write_key(&home.join("node.key"), &fed_on_disk.fed.identity(m.code.as_str()).seed()).expect("key");
            config::write_directory(&home.join("directory.cpis"), &fed_on_disk.fed.directory).expect("directory");
        }
        fed_on_disk
    }

    /// A member's folder.
    pub fn home(&self, code: &str) -> PathBuf {
        self.dir.path().join(code)
    }

    pub fn node_config(&self, code: &str) -> NodeConfig {
        let role = match self.fed.trusted().member(&code.parse_code()).map(|m| m.role) {
            Some(Role::Hub) => NodeRole::Hub,
            Some(Role::Authority) => NodeRole::Authority,
            other => panic!("{code} is not a node ({other:?})"),
        };
        NodeConfig {
            role,
            code: code.to_string(),
            data_dir: self.home(code),
            key_file: None,
            directory_file: None,
            listen: self.hub_addresses.get(code).copied(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_public: false,
            hub_addresses: self.hub_addresses.clone(),
            log_format: LogFormat::Text,
            timing: Timing::short(),
            limits: Default::default(),
        }
    }

    /// Writes a node's config file and returns its path.
    pub fn write_node_config(&self, code: &str) -> PathBuf {
        let path = self.home(code).join("node.toml");
        let text = toml_of(&self.node_config(code));
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn setting_config(&self, code: &str) -> SettingConfig {
        let home = self.home(code);
        SettingConfig {
            role: None,
            gateway: Default::default(),
            code: code.to_string(),
            key_file: home.join("node.key"),
            directory_file: home.join("directory.cpis"),
            hub_addresses: self.hub_addresses.clone(),
            hub_timeout_ms: 3_000,
            stale_after_ms: cpis_protocol::setting::STALE_AFTER_MS_DEFAULT,
        }
    }

    pub async fn start(&self, code: &str) -> RunningNode {
        self.start_with(code, |_| {}).await
    }

    /// Starts a node after `change` edits its config.
    pub async fn start_with(&self, code: &str, change: impl FnOnce(&mut NodeConfig)) -> RunningNode {
        let mut config = self.node_config(code);
        change(&mut config);
        RunningNode::start(config).await.unwrap_or_else(|e| panic!("starting {code}: {e:#}"))
    }

    /// The API address and token a node wrote to its folder.
    pub fn api_of(&self, code: &str) -> (SocketAddr, String) {
        let home = self.home(code);
        let addr = std::fs::read_to_string(home.join("api.addr")).expect("api.addr");
        let token = std::fs::read_to_string(home.join("api.token")).expect("api.token");
        (addr.trim().parse().expect("address"), token.trim().to_string())
    }
}

trait ParseCode {
    fn parse_code(&self) -> cpis_protocol::ids::OdsCode;
}

impl ParseCode for str {
    fn parse_code(&self) -> cpis_protocol::ids::OdsCode {
        cpis_protocol::ids::OdsCode::parse(self).expect("test code")
    }
}

fn toml_of(c: &NodeConfig) -> String {
    let role = match c.role {
        NodeRole::Hub => "hub",
        NodeRole::Authority => "authority",
    };
    let mut text =
        format!("role = \"{role}\"\ncode = \"{}\"\ndata_dir = {:?}\n", c.code, c.data_dir.display().to_string());
    if let Some(listen) = c.listen {
        text += &format!("listen = \"{listen}\"\n");
    }
    text += "[hub_addresses]\n";
    for (code, addr) in &c.hub_addresses {
        text += &format!("{code} = \"{addr}\"\n");
    }
    let t = &c.timing;
    text += &format!(
        "[timing]\ntick_ms = {}\nsync_interval_ms = {}\nretry_base_ms = {}\nretry_cap_ms = {}\nreconnect_base_ms = {}\nreconnect_cap_ms = {}\nhead_interval_ms = {}\n",
        t.tick_ms,
        t.sync_interval_ms,
        t.retry_base_ms,
        t.retry_cap_ms,
        t.reconnect_base_ms,
        t.reconnect_cap_ms,
        t.head_interval_ms
    );
    text
}

/// One HTTP/1.1 request to a node's API; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> (u16, String) {
    try_http(addr, token, method, path, body).await.expect("the API answers")
}

/// Like [`http`], but `None` when the node does not answer (it was killed, say).
pub async fn try_http(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (content_type, bytes) = body.unwrap_or(("application/json", b""));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(bytes).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Calls the API and parses the JSON answer.
pub async fn api_json(
    fed: &Fed,
    code: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (addr, token) = fed.api_of(code);
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (status, text) = http(addr, &token, method, path, bytes.as_deref().map(|b| ("application/json", b))).await;
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// The sequence an authority's feed is at (its status `feed_seq`).
pub async fn authority_seq(fed: &Fed, authority: &str) -> u64 {
    let (_, status) = api_json(fed, authority, "GET", "/status", None).await;
    status["feed_seq"].as_u64().unwrap_or(0)
}

/// The sequence of the head a hub's replica of `origin` matches (0 if none).
pub async fn hub_seq(fed: &Fed, hub: &str, origin: &str) -> u64 {
    let (_, status) = api_json(fed, hub, "GET", "/status", None).await;
    status["origins"]
        .as_array()
        .and_then(|o| o.iter().find(|x| x["origin"] == origin))
        .and_then(|x| x["seq"].as_u64())
        .unwrap_or(0)
}

/// Whether `hub` holds `authority`'s feed as far as the authority has published it.
pub async fn hub_caught_up(fed: &Fed, hub: &str, authority: &str) -> bool {
    let seq = authority_seq(fed, authority).await;
    seq > 0 && hub_seq(fed, hub, authority).await >= seq
}

/// Polls `check` every 50 ms until it is true or `timeout` passes; panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let rounds = (timeout.as_millis() / 50).max(1);
    for _ in 0..rounds {
        if check().await {
            return;
        }
        if start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting until {what}");
}

/// Spawns a node as a real process; `binary` is `env!("CARGO_BIN_EXE_cpis-node-under-test")`.
pub fn spawn_node(binary: &str, config: &Path) -> std::process::Child {
    std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the node")
}
