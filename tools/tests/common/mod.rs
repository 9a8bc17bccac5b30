//! What the `cpis` binary's tests share: a small federation with fresh keys made through the
//! administrator's code, its hubs and authority run in this process on 127.0.0.1 with
//! OS-chosen ports, and the real `cpis` binary run against them. Every wait is a bounded poll.
#![allow(dead_code)] // Each test file uses its own part of this.

use cpis_node::config::{NodeConfig, SettingConfig, Timing};
use cpis_node::runtime::RunningNode;
use cpis_protocol::directory::Role;
use cpis_tools::admin::{self, CreateOptions, EnrolOptions};
use cpis_tools::api::NodeApi;
use cpis_tools::render::{items, number, text};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const POLL_INTERVAL_MS: u64 = 100;
const POLL_TRIES: u32 = 200;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run of the `cpis` binary gave.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.stdout))
    }
}

pub(crate) async fn cpis(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis")).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child).await.expect("cpis finished in time").expect("cpis ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..POLL_TRIES {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    panic!("{what}: not seen after {POLL_TRIES} polls");
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two hubs (HUBA, HUBB), Hackney (204, home hub HUBA) and a setting (RXH01, home hub HUBA).
pub(crate) struct Federation {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    configs: BTreeMap<String, PathBuf>,
    nodes: BTreeMap<String, RunningNode>,
    pub(crate) setting_config: PathBuf,
}

fn enrol(root: &Path, role: Role, code: &str, name: &str, extra: impl FnOnce(&mut EnrolOptions)) -> PathBuf {
    let mut options = EnrolOptions {
        dir: root.join("fed"),
        roots_dir: None,
        propose: None,
        role,
        code: code.into(),
        name: name.into(),
        addresses: vec![],
        home_hubs: vec![],
        setting_type: None,
        contact_name: None,
        office_phone: None,
        out_of_hours_phone: None,
        listen: None,
        out: root.join(code),
        key_valid_days: 30,
        valid_days: 30,
    };
    extra(&mut options);
    admin::enrol(&options, cpis_tools::render::now()).unwrap().config_file
}

/// Starts a node; a restarted hub retries its port while the last run's socket is released.
async fn start(config: &Path) -> RunningNode {
    for _ in 0..POLL_TRIES {
        match RunningNode::start(node_config(config)).await {
            Ok(node) => return node,
            Err(e) if format!("{e:#}").contains("in use") => {
                tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("{}: the port stayed in use", config.display());
}

fn node_config(config: &Path) -> NodeConfig {
    let mut config = NodeConfig::load(config).unwrap();
    config.timing = Timing {
        tick_ms: 100,
        sync_interval_ms: 500,
        retry_base_ms: 100,
        retry_cap_ms: 500,
        reconnect_base_ms: 100,
        reconnect_cap_ms: 500,
        ..Timing::default()
    };
    config
}

pub(crate) fn api(node: &RunningNode) -> NodeApi {
    NodeApi::new(node.api_addr(), node.api_token())
}

impl Federation {
    pub(crate) async fn start() -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let create =
            CreateOptions { dir: root.join("fed"), name: "Test".into(), roots: 3, threshold: 2, valid_days: 30 };
        admin::create(&create, cpis_tools::render::now()).unwrap();
        let mut configs = BTreeMap::new();
        for (code, name) in [("HUBA", "Hub A"), ("HUBB", "Hub B")] {
            let address = format!("127.0.0.1:{}", free_udp_port());
            configs.insert(code.to_string(), enrol(&root, Role::Hub, code, name, |o| o.addresses = vec![address]));
        }
        let hackney = enrol(&root, Role::Authority, "204", "Hackney", |o| {
            o.home_hubs = vec!["HUBA".into()];
            o.office_phone = Some("020 7946 0204".into());
            o.out_of_hours_phone = Some("020 7946 0999".into());
        });
        configs.insert("204".into(), hackney);
        let setting_config = enrol(&root, Role::Setting, "RXH01", "Royal Sussex UTC", |o| {
            o.home_hubs = vec!["HUBA".into()];
            o.setting_type = Some("urgent-treatment-centre".into());
        });
        let mut fed = Federation { _dir: dir, root, configs, nodes: BTreeMap::new(), setting_config };
        for code in ["HUBA", "HUBB", "204"] {
            fed.start_node(code).await;
            if code.starts_with("HUB") {
                admin::publish(&fed.fed_dir(), &api(fed.node(code)), None).await.unwrap();
            }
        }
        fed.whole().await;
        fed
    }

    /// The administrator's federation folder.
    pub(crate) fn fed_dir(&self) -> PathBuf {
        self.root.join("fed")
    }

    pub(crate) fn node(&self, code: &str) -> &RunningNode {
        &self.nodes[code]
    }

    /// A node's config file, as the `--node` argument.
    pub(crate) fn config(&self, code: &str) -> String {
        self.configs[code].display().to_string()
    }

    /// A member's folder (its key, directory and config).
    pub(crate) fn home(&self, code: &str) -> PathBuf {
        self.root.join(code)
    }

    pub(crate) async fn start_node(&mut self, code: &str) {
        let node = start(&self.configs[code]).await;
        self.nodes.insert(code.to_string(), node);
    }

    pub(crate) async fn stop_node(&mut self, code: &str) {
        if let Some(node) = self.nodes.remove(code) {
            node.shutdown().await;
        }
    }

    /// Waits until every running node is connected to every peer it expects.
    pub(crate) async fn whole(&self) {
        for (code, node) in &self.nodes {
            let node = api(node);
            poll(&format!("{code} connected to all its peers"), || async {
                let Ok(status) = node.get("/status").await else { return false };
                let peers = items(&status, "peers");
                !peers.is_empty() && peers.iter().all(|p| text(p, "state") == "connected")
            })
            .await;
        }
    }

    /// Waits until every running node trusts at least directory version `version`.
    pub(crate) async fn holds_version(&self, version: u64) {
        for (code, node) in &self.nodes {
            let node = api(node);
            poll(&format!("{code} holds directory version {version}"), || async {
                node.get("/status").await.is_ok_and(|s| number(&s, "directory_version") >= version)
            })
            .await;
        }
    }

    /// Hackney's config file.
    pub(crate) fn node_arg(&self) -> String {
        self.config("204")
    }

    pub(crate) fn setting_arg(&self) -> String {
        self.setting_config.display().to_string()
    }

    /// Waits until every running hub holds Hackney's feed as far as Hackney has written it.
    pub(crate) async fn replicated(&self) {
        let seq = number(&api(self.node("204")).get("/status").await.unwrap(), "feed_seq");
        for (code, hub) in self.nodes.iter().filter(|(c, _)| c.starts_with("HUB")) {
            let hub = api(hub);
            poll(&format!("{code} holds Hackney's feed up to {seq}"), || async {
                let Ok(status) = hub.get("/status").await else { return false };
                items(&status, "origins").iter().any(|o| text(o, "origin") == "204" && number(o, "seq") >= seq)
            })
            .await;
        }
    }

    /// Writes a copy of the setting's config with `hub_addresses` and a timeout.
    pub(crate) fn setting_with(&self, overrides: &[(&str, String)], timeout_ms: u64) -> String {
        let mut text = std::fs::read_to_string(&self.setting_config).unwrap();
        text = text.replace("hub_timeout_ms = 5000", &format!("hub_timeout_ms = {timeout_ms}"));
        text.push_str("\n[hub_addresses]\n");
        for (code, addr) in overrides {
            text.push_str(&format!("{code} = \"{addr}\"\n"));
        }
        let path = self.root.join("RXH01").join("setting-override.toml");
        std::fs::write(&path, text).unwrap();
        SettingConfig::load(&path).unwrap();
        path.display().to_string()
    }

    /// Stops every node at once (a node's shutdown waits for its connections to close).
    pub(crate) async fn stop(self) {
        let stops = self.nodes.into_values().map(|n| tokio::spawn(n.shutdown()));
        for stop in stops {
            let _ = stop.await;
        }
    }
}

pub(crate) fn example_csv() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans.csv").display().to_string()
}

pub(crate) async fn lookup(setting: &str, nhs: &str, json: bool) -> Run {
    let mut args = vec![
        "lookup",
        "--config",
        setting,
        "--nhs",
        nhs,
        "--user-id",
        "N4521",
        "--user-name",
        "Sam Patel",
        "--role",
        "Staff nurse",
    ];
    if json {
        args.push("--json");
    }
    cpis(&args).await
}
