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
            pages: None,
            webhook: None,
            mesh: None,
        }
    }

    /// Writes a node's config file and returns its path.
    pub fn write_node_config(&self, code: &str) -> PathBuf {
        self.write_node_config_with(code, |_| {})
    }

    /// Writes a node's config file after `change` edits it, and returns its path.
    pub fn write_node_config_with(&self, code: &str, change: impl FnOnce(&mut NodeConfig)) -> PathBuf {
        let path = self.home(code).join("node.toml");
        let mut config = self.node_config(code);
        change(&mut config);
        std::fs::write(&path, toml_of(&config)).expect("write config");
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
    text += &format!(
        "[limits]\nsetting_lookups_per_hour = {}\nperson_lookups_per_hour = {}\n",
        c.limits.setting_lookups_per_hour, c.limits.person_lookups_per_hour
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

// What the web page tests share: raw HTTP/1.1 and a browser without JavaScript.

/// One HTTP/1.1 request: status, headers (lower-case names) and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the gateway answers");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A browser without JavaScript: keeps cookies, posts forms.
pub struct Page {
    pub addr: SocketAddr,
    pub cookies: BTreeMap<String, String>,
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// The value of a hidden `csrf` field in a page.
pub fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

impl Page {
    pub fn new(addr: SocketAddr) -> Page {
        Page { addr, cookies: BTreeMap::new() }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> (u16, Vec<(String, String)>, String) {
        let body = form.map(form_encode);
        let content_type = form.map(|_| "application/x-www-form-urlencoded");
        self.send_body(method, path, content_type, body.as_deref().unwrap_or("")).await
    }

    /// A `multipart/form-data` post, as a form with a file field sends it: `(name, file name if
    /// a file, content)`.
    pub async fn post_multipart(
        &mut self,
        path: &str,
        parts: &[(&str, Option<&str>, &str)],
    ) -> (u16, Vec<(String, String)>, String) {
        let boundary = "----cpis-test-boundary-7f3a";
        let mut body = String::new();
        for (name, file, content) in parts {
            body.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""));
            if let Some(file) = file {
                body.push_str(&format!("; filename=\"{file}\"\r\nContent-Type: text/csv"));
            }
            body.push_str(&format!("\r\n\r\n{content}\r\n"));
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.send_body("POST", path, Some(&content_type), &body).await
    }

    async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut headers = vec![("Cookie", cookie.as_str())];
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type));
        }
        let (status, headers, body) = request(self.addr, method, path, &headers, body).await;
        for (_, value) in headers.iter().filter(|(k, _)| k == "set-cookie") {
            let pair = value.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k)
                } else {
                    self.cookies.insert(k.into(), v.into())
                };
            }
        }
        (status, headers, body)
    }

    pub async fn sign_in(&mut self, user: &str, password: &str) -> (u16, String) {
        let (_, _, form) = self.send("GET", "/sign-in", None).await;
        let token = csrf(&form);
        let (status, _, body) =
            self.send("POST", "/sign-in", Some(&[("user", user), ("password", password), ("csrf", &token)])).await;
        (status, body)
    }
}

/// `n` valid NHS numbers, deterministically, from the stem `100_000_000 + offset` up.
pub fn children(n: usize, offset: u64) -> Vec<cpis_protocol::ids::NhsNumber> {
    (0u64..)
        .map(|i| 100_000_000 + offset + i * 37)
        .filter_map(|stem| (0..10).find_map(|d| cpis_protocol::ids::NhsNumber::try_from(stem * 10 + d).ok()))
        .take(n)
        .collect()
}

/// Gives Hackney (204) and Newham (316) their contacts, then waits until hubs HUBN and HUBS hold
/// both councils' feeds as far as written (the gateway and browser tests' federation).
pub async fn two_councils_with_contacts_at_both_hubs(fed: &Fed) {
    for (code, name, office, ooh) in [
        ("204", "Hackney CSC", "020 8356 5500", "020 8356 2710"),
        ("316", "Newham CSC", "020 8430 2000", "020 8430 2001"),
    ] {
        let contacts = serde_json::json!({ "name": name, "office_phone": office, "out_of_hours_phone": ooh });
        assert_eq!(api_json(fed, code, "PUT", "/contacts", Some(contacts)).await.0, 200);
    }
    for hub in ["HUBN", "HUBS"] {
        wait_until("plans and contacts reach both hubs", Duration::from_secs(30), || async {
            hub_caught_up(fed, hub, "204").await && hub_caught_up(fed, hub, "316").await
        })
        .await;
    }
}
