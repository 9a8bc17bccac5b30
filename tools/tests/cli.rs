//! The `cpis` binary against real nodes: each test builds a small federation with fresh keys
//! (through the administrator's code), runs its hubs and authority in this process on
//! 127.0.0.1 with OS-chosen ports, and runs the real `cpis` binary against them. Every wait is
//! a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::config::{NodeConfig, SettingConfig, Timing};
use cpis_node::runtime::RunningNode;
use cpis_protocol::directory::Role;
use cpis_tools::admin::{self, CreateOptions, EnrolOptions};
use cpis_tools::api::NodeApi;
use cpis_tools::render::{items, number, text};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const POLL_INTERVAL_MS: u64 = 100;
const POLL_TRIES: u32 = 200;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run of the `cpis` binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.stdout))
    }
}

async fn cpis(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis")).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child).await.expect("cpis finished in time").expect("cpis ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn poll<F, Fut>(what: &str, mut check: F)
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
struct Federation {
    _dir: tempfile::TempDir,
    root: PathBuf,
    hubs: Vec<(String, RunningNode)>,
    hackney: RunningNode,
    hackney_config: PathBuf,
    setting_config: PathBuf,
}

fn enrol(root: &Path, role: Role, code: &str, name: &str, extra: impl FnOnce(&mut EnrolOptions)) -> PathBuf {
    let mut options = EnrolOptions {
        dir: root.join("fed"),
        roots_dir: None,
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

async fn start(config: &Path) -> RunningNode {
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
    RunningNode::start(config).await.unwrap()
}

fn api(node: &RunningNode) -> NodeApi {
    NodeApi::new(node.api_addr(), node.api_token())
}

impl Federation {
    async fn start() -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let create =
            CreateOptions { dir: root.join("fed"), name: "Test".into(), roots: 3, threshold: 2, valid_days: 30 };
        admin::create(&create, cpis_tools::render::now()).unwrap();
        let mut hub_configs = Vec::new();
        for (code, name) in [("HUBA", "Hub A"), ("HUBB", "Hub B")] {
            let address = format!("127.0.0.1:{}", free_udp_port());
            hub_configs.push((code, enrol(&root, Role::Hub, code, name, |o| o.addresses = vec![address])));
        }
        let hackney_config = enrol(&root, Role::Authority, "204", "Hackney", |o| {
            o.home_hubs = vec!["HUBA".into()];
            o.office_phone = Some("020 7946 0204".into());
            o.out_of_hours_phone = Some("020 7946 0999".into());
        });
        let setting_config = enrol(&root, Role::Setting, "RXH01", "Royal Sussex UTC", |o| {
            o.home_hubs = vec!["HUBA".into()];
            o.setting_type = Some("urgent-treatment-centre".into());
        });
        let mut hubs = Vec::new();
        for (code, config) in hub_configs {
            let hub = start(&config).await;
            admin::publish(&root.join("fed"), &api(&hub), None).await.unwrap();
            hubs.push((code.to_string(), hub));
        }
        let hackney = start(&hackney_config).await;
        let fed = Federation { _dir: dir, root, hubs, hackney, hackney_config, setting_config };
        fed.whole().await;
        fed
    }

    /// Waits until every node is connected to every peer it expects.
    async fn whole(&self) {
        let nodes = self.hubs.iter().map(|(c, n)| (c.as_str(), n)).chain([("204", &self.hackney)]);
        for (code, node) in nodes {
            let node = api(node);
            poll(&format!("{code} connected to all its peers"), || async {
                let Ok(status) = node.get("/status").await else { return false };
                let peers = items(&status, "peers");
                !peers.is_empty() && peers.iter().all(|p| text(p, "state") == "connected")
            })
            .await;
        }
    }

    fn node_arg(&self) -> String {
        self.hackney_config.display().to_string()
    }

    fn setting_arg(&self) -> String {
        self.setting_config.display().to_string()
    }

    /// Waits until every hub holds Hackney's feed as far as Hackney has written it.
    async fn replicated(&self) {
        let seq = number(&api(&self.hackney).get("/status").await.unwrap(), "feed_seq");
        for (code, hub) in &self.hubs {
            let hub = api(hub);
            poll(&format!("{code} holds Hackney's feed up to {seq}"), || async {
                let Ok(status) = hub.get("/status").await else { return false };
                items(&status, "origins").iter().any(|o| text(o, "origin") == "204" && number(o, "seq") >= seq)
            })
            .await;
        }
    }

    /// Writes a copy of the setting's config with `hub_addresses` and a timeout.
    fn setting_with(&self, overrides: &[(&str, String)], timeout_ms: u64) -> String {
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
    async fn stop(self) {
        let mut all = vec![self.hackney];
        all.extend(self.hubs.into_iter().map(|(_, hub)| hub));
        let stops = all.into_iter().map(|n| tokio::spawn(n.shutdown()));
        for stop in stops {
            let _ = stop.await;
        }
    }
}

fn example_csv() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plans.csv").display().to_string()
}

async fn lookup(setting: &str, nhs: &str, json: bool) -> Run {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import__good_bad_and_repeated_file__each_row_answered_and_second_import_changes_nothing() {
    let fed = Federation::start().await;
    let node = fed.node_arg();
    let csv = example_csv();

    let first = cpis(&["plans", "import", &csv, "--node", &node, "--json"]).await;
    assert_eq!(first.code, 3, "refused rows make exit code 3: {}", first.stderr);
    let report = first.json();
    assert_eq!(
        (number(&report, "applied"), number(&report, "unchanged"), number(&report, "refused")),
        (6, 0, 8),
        "{report}"
    );
    let refused: Vec<(u64, String)> = items(&report, "rows")
        .iter()
        .filter(|r| text(r, "result") == "refused")
        .map(|r| (number(r, "row"), text(r, "reason").to_string()))
        .collect();
    let expect = [
        (8, "check digit"),
        (9, "unknown plan type"),
        (10, "end date is before the start date"),
        (11, "needs an expected due date"),
        (12, "only an unborn-child plan has an expected due date"),
        (13, "no such day"),
        (14, "twice"),
        (15, "reference"),
    ];
    for ((row, reason), (want_row, want)) in refused.iter().zip(expect) {
        assert_eq!(*row, want_row);
        assert!(reason.contains(want), "row {row}: {reason:?} should say {want:?}");
    }
    let reasons = refused.iter().map(|(_, r)| r.as_str()).collect::<String>();
    assert!(!reasons.contains("9876544321"), "a reason must not repeat the whole NHS number");

    let second = cpis(&["plans", "import", &csv, "--node", &node]).await;
    assert_eq!(second.code, 3);
    assert!(second.stdout.contains("0 applied, 6 unchanged, 8 refused"), "{}", second.stdout);
    assert!(
        second.stdout.contains("row     14  LAC-2026-0001             refused: this reference appears twice"),
        "{}",
        second.stdout
    );

    let good = fed.root.join("good.csv");
    std::fs::write(&good, "reference,nhs_number,plan_type,start_date\nCPP-9,9990000069,CPP,2026-01-05\n").unwrap();
    let clean = cpis(&["plans", "import", &good.display().to_string(), "--node", &node]).await;
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    assert!(clean.stdout.contains("1 applied, 0 unchanged, 0 refused"), "{}", clean.stdout);

    let list = cpis(&["plans", "list", "--node", &node, "--json"]).await;
    assert_eq!(items(&list.json(), "plans").len(), 7);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__flagged_child__plan_shown_with_contacts_freshness_and_notification() {
    let fed = Federation::start().await;
    let node = fed.node_arg();
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &node]).await.code, 3);
    fed.replicated().await;

    let text_run = lookup(&fed.setting_arg(), "943 476 5919", false).await;
    assert_eq!(text_run.code, 0, "{}", text_run.stderr);
    for want in
        ["LOOKED AFTER CHILD", "Hackney (204)", "020 7946 0204", "020 7946 0999", "as of", "Answered by hub HUBA"]
    {
        assert!(text_run.stdout.contains(want), "missing {want:?} in:\n{}", text_run.stdout);
    }

    let json_run = lookup(&fed.setting_arg(), "9434765919", true).await;
    assert_eq!(json_run.code, 0, "{}", json_run.stderr);
    let doc = json_run.json();
    assert_eq!(number(&doc, "records"), 1);
    assert_eq!(text(&doc, "hub"), "HUBA");
    let plan = &items(&doc, "plans")[0];
    assert_eq!(
        (text(plan, "authority"), text(plan, "plan_type"), text(plan, "reference")),
        ("204", "LAC", "LAC-2026-0001")
    );
    assert_eq!(text(&plan["contacts"], "out_of_hours_phone"), "020 7946 0999");
    assert!(plan["as_of_age_ms"].is_u64(), "freshness is given: {plan}");
    // The first lookup is now in the visit history.
    assert_eq!(items(&doc, "history").len(), 1, "{doc}");

    let inbox = api(&fed.hackney);
    poll("both lookups reach Hackney's inbox", || async {
        inbox.get("/notifications").await.is_ok_and(|n| items(&n, "notifications").len() == 2)
    })
    .await;
    let listed = cpis(&["inbox", "list", "--node", &node]).await;
    assert!(listed.stdout.contains("Sam Patel, Staff nurse") && listed.stdout.contains("RXH01"), "{}", listed.stdout);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__number_without_plans__says_no_records() {
    let fed = Federation::start().await;
    // "No records" needs every council's signed head at the hub.
    fed.replicated().await;
    let run = lookup(&fed.setting_arg(), "401 023 2137", false).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("No records"), "{}", run.stdout);
    let doc = lookup(&fed.setting_arg(), "4010232137", true).await.json();
    assert_eq!((number(&doc, "records"), items(&doc, "plans").len()), (0, 0));
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__invalid_number__refused_with_the_rule_before_anything_is_sent() {
    // A fake hub: a UDP socket that records whatever reaches it.
    let fed = Federation::start().await;
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let setting = fed.setting_with(&[("HUBA", trap_addr.clone()), ("HUBB", trap_addr)], 500);

    let run = lookup(&setting, "987 654 4321", true).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("check digit is wrong") && run.stderr.contains("Nothing was sent"), "{}", run.stderr);
    assert!(!run.stderr.contains("4321") && !run.stdout.contains("4321"), "the number is not repeated");
    assert!(text(&run.json(), "error").contains("check digit"));
    let short = lookup("/no/such/setting.toml", "943476591", false).await;
    assert_eq!(short.code, 2, "the number is checked before the config is even read");
    assert!(short.stderr.contains("10 digits, this has 9"), "{}", short.stderr);
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(300), trap.recv_from(&mut buf)).await;
    assert!(got.is_err(), "nothing may be sent for an invalid number");

    // The trap does see a valid lookup's packets: the check above can fail.
    let valid = lookup(&setting, "943 476 5919", true).await;
    assert_eq!(valid.code, 1);
    let failed = items(&valid.json(), "failed_hubs").len();
    assert_eq!(failed, 2, "{}", valid.stdout);
    let got = tokio::time::timeout(Duration::from_millis(300), trap.recv_from(&mut buf)).await;
    assert!(got.is_ok(), "a valid lookup reaches the (fake) hub");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__home_hub_unreachable__fails_over_to_the_next_hub() {
    let fed = Federation::start().await;
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &fed.node_arg()]).await.code, 3);
    fed.replicated().await;
    // The home hub's address leads to a socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let setting = fed.setting_with(&[("HUBA", silent.local_addr().unwrap().to_string())], 1_000);

    let run = lookup(&setting, "943 476 5919", true).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(text(&doc, "hub"), "HUBB", "{doc}");
    let failed = items(&doc, "failed_hubs");
    assert_eq!(failed.len(), 1, "{doc}");
    assert_eq!((text(&failed[0], "hub"), text(&failed[0], "kind")), ("HUBA", "timed-out"));
    assert_eq!(text(&items(&doc, "plans")[0], "authority_name"), "Hackney");

    let text_run = lookup(&setting, "943 476 5919", false).await;
    assert!(text_run.stdout.contains("Answered by hub HUBB"), "{}", text_run.stdout);
    assert!(text_run.stdout.contains("tried first: hub HUBA"), "{}", text_run.stdout);
    drop(silent);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_json__every_step_of_the_story_holds() {
    let run = cpis(&["demo", "--json"]).await;
    let doc = run.json();
    let steps = items(&doc, "steps");
    assert_eq!(steps.len(), 8, "{doc}");
    for step in steps {
        assert_eq!(step["held"], Value::Bool(true), "step did not hold: {step}");
        assert!(step["ms"].is_u64() && step["detail"].is_string());
    }
    assert_eq!(doc["held"], Value::Bool(true));
    assert_eq!(run.code, 0);
}
