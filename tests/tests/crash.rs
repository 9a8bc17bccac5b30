//! Nodes killed with SIGKILL mid-work: nothing they acknowledged is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::client::{LookupRequest, lookup};
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Person, SettingType};
use cpis_tests::{Fed, api_json, hub_caught_up, spawn_node, wait_until};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

const NODE: &str = env!("CARGO_BIN_EXE_cpis-node-under-test");

fn spec() -> FederationSpec {
    FederationSpec::new("crash").hub("HUBN").hub("HUBS").authority("204", "Hackney", &["HUBN"]).setting(
        "RXH01",
        "Royal Sussex County UTC",
        SettingType::UrgentTreatmentCentre,
        &["HUBS"],
    )
}

/// Valid NHS numbers, deterministically.
fn children(n: usize) -> Vec<NhsNumber> {
    (0..)
        .map(|i| 400_000_000u64 + i * 7_919)
        .filter_map(|stem| (0..10).find_map(|d| NhsNumber::try_from(stem * 10 + d).ok()))
        .take(n)
        .collect()
}

fn plan_json(i: usize, nhs: NhsNumber) -> serde_json::Value {
    json!({ "reference": format!("LAC-{i}"), "nhs": nhs.digits(), "plan_type": "LAC", "start": "2026-01-05" })
}

/// Starts the node of `config` as a process and waits (20 s at most) until its API answers. The
/// address file a run before left is removed first, so that the wait is for this run's.
async fn start_process(fed: &Fed, code: &str, config: &Path) -> Child {
    let path = fed.home(code).join("api.addr");
    let _ = std::fs::remove_file(&path);
    let node = spawn_node(NODE, config);
    wait_until("the node's API is up", Duration::from_secs(20), || async {
        path.exists() && tokio::net::TcpStream::connect(fed.api_of(code).0).await.is_ok()
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_while_answering_and_replicating__restarted__nothing_acknowledged_lost_and_converges() {
    let fed = Fed::create(spec());
    let hubn = fed.start("HUBN").await;
    let hackney = fed.start("204").await;
    let config = fed.write_node_config("HUBS");
    let mut hubs = start_process(&fed, "HUBS", &config).await;
    let kids = children(120);
    for (i, nhs) in kids.iter().take(20).enumerate() {
        assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan_json(i, *nhs))).await.0, 200);
    }
    wait_until("the first plans reach HUBS", Duration::from_secs(20), || async {
        hub_caught_up(&fed, "HUBS", "204").await
    })
    .await;

    // Lookups at HUBS and new plans at Hackney, while HUBS is killed.
    let mut setting = fed.setting_config("RXH01");
    setting.hub_timeout_ms = 500;
    let mut answered = BTreeSet::new();
    for (i, nhs) in kids.iter().enumerate().skip(20) {
        let _ = api_json(&fed, "204", "POST", "/plans", Some(plan_json(i, *nhs))).await;
        let child = kids[i % 20];
        let request = LookupRequest {
            nhs: child,
            person: Person { id: format!("N{}", i % 10), name: "A Nurse".into(), role: "Nurse".into() },
        };
        if let Ok(outcome) = lookup(&setting, request).await {
            assert_eq!(outcome.answer.plans().count(), 1, "every answer shows the plan");
            answered.insert(outcome.lookup_id.to_hex());
        }
        if i == 50 {
            hubs.kill().expect("SIGKILL");
            let _ = hubs.wait();
        }
        if i == 65 {
            hubs = start_process(&fed, "HUBS", &config).await;
        }
    }
    assert!(
        answered.len() >= 60,
        "most lookups were answered (by HUBS or, while it was down, by HUBN): {}",
        answered.len()
    );

    wait_until("every answered lookup reached Hackney's inbox", Duration::from_secs(60), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        let ids: BTreeSet<String> = inbox["notifications"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["lookup_id"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        answered.is_subset(&ids)
    })
    .await;
    let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
    let all: Vec<String> = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["lookup_id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "no notification twice");

    let (_, status) = api_json(&fed, "204", "GET", "/status", None).await;
    let feed_seq = status["feed_seq"].as_u64().unwrap();
    wait_until("HUBS converges with Hackney's feed", Duration::from_secs(30), || async {
        let (_, s) = api_json(&fed, "HUBS", "GET", "/status", None).await;
        s["origins"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x["origin"] == "204" && x["seq"].as_u64() == Some(feed_seq)))
    })
    .await;
    hubs.kill().expect("stop");
    let _ = hubs.wait();
    hackney.shutdown().await;
    hubn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_killed_during_plan_writes__every_acknowledged_plan_survives() {
    let fed = Fed::create(spec());
    let config = fed.write_node_config("204");
    let mut node = start_process(&fed, "204", &config).await;
    const PLANS: usize = 20_000;
    let kids = children(PLANS);
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (addr, token) = fed.api_of("204");
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for (i, nhs) in kids.iter().enumerate() {
                let body = plan_json(i, *nhs).to_string();
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    cpis_tests::try_http(addr, &token, "POST", "/plans", Some(("application/json", body.as_bytes()))),
                )
                .await;
                match reply {
                    Ok(Some((200, _))) => acknowledged.push(format!("LAC-{i}")),
                    _ => break,
                }
                progress.store(acknowledged.len(), std::sync::atomic::Ordering::Relaxed);
            }
            acknowledged
        })
    };
    // Kill it in the middle of the writes, whatever the speed of the machine.
    wait_until("a hundred plans are acknowledged", Duration::from_secs(60), || {
        let done = progress.load(std::sync::atomic::Ordering::Relaxed);
        async move { done >= 100 }
    })
    .await;
    node.kill().expect("SIGKILL");
    let _ = node.wait();
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 100 && acknowledged.len() < PLANS,
        "killed mid-way: {} acknowledged",
        acknowledged.len()
    );

    let mut node = start_process(&fed, "204", &config).await;
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    let held: BTreeSet<String> =
        plans["plans"].as_array().unwrap().iter().map(|p| p["reference"].as_str().unwrap().to_string()).collect();
    let lost: Vec<_> = acknowledged.iter().filter(|r| !held.contains(*r)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    node.kill().expect("stop");
    let _ = node.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_after_answering__every_answered_lookup_is_in_its_audit_log() {
    let fed = Fed::create(spec());
    let hubn = fed.start("HUBN").await;
    let hubs = fed.start("HUBS").await;
    let home = fed.home("RXH01");
    let mut accounts = cpis_node::accounts::Accounts::default();
    let token = accounts
        .add_system("EHR", "Clinical system", &cpis_node::accounts::Access::ALL, 30, cpis_node::net::now().date())
        .unwrap();
    accounts.save(&home.join("gateway").join("users.json")).unwrap();
    let hubs_toml: String = fed.hub_addresses.iter().map(|(code, addr)| format!("{code} = \"{addr}\"\n")).collect();
    let config = home.join("setting.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"setting\"\ncode = \"RXH01\"\nkey_file = \"node.key\"\ndirectory_file = \"directory.cpis\"\n\
             [hub_addresses]\n{hubs_toml}[gateway]\ndata_dir = \"gateway\"\n"
        ),
    )
    .unwrap();
    let mut gateway = spawn_node(NODE, &config);
    let addr_file = home.join("gateway").join("http.addr");
    wait_until("the gateway listens", Duration::from_secs(20), || async { addr_file.exists() }).await;
    let url = std::fs::read_to_string(&addr_file).unwrap();
    let addr: std::net::SocketAddr = url.trim().trim_start_matches("http://").parse().unwrap();

    let mut answered = 0;
    for nhs in children(12) {
        let path = format!("/FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{}", nhs.digits());
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nIsUnscheduledAccessEvent: true\r\n\
             X-User-Id: D1\r\nX-User-Name: A Doctor\r\nX-User-Role: Doctor\r\nConnection: close\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{}", &reply[..reply.len().min(300)]);
        answered += 1;
    }
    // Killed the moment the last answer arrived: no chance to flush anything on the way out.
    gateway.kill().expect("SIGKILL");
    let _ = gateway.wait();
    let audit = std::fs::read_to_string(home.join("gateway").join("audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let asked: Vec<&serde_json::Value> = lines.iter().filter(|l| l["result"] == "asked").collect();
    assert_eq!(asked.len(), answered, "every answered lookup was on disk before its answer left");
    // What each came to is synced with the next lookup's line: only the last may be missing.
    assert!(lines.len() - asked.len() >= answered - 1, "{audit}");
    let numbers: BTreeSet<String> = asked.iter().filter_map(|l| l["nhs"].as_str().map(String::from)).collect();
    assert_eq!(numbers, children(12).iter().map(|n| n.digits()).collect());
    hubn.shutdown().await;
    hubs.shutdown().await;
}
