//! Notifications into a council's case-management system over MESH, against NHS England's own
//! MESH sandbox (`mesh-sandbox`, started by `.ci/mesh`, which sets `CPIS_MESH_SANDBOX` to its
//! address and `CPIS_MESH_SHARED_KEY` to its shared key). The sandbox's canned mailboxes:
//! `X26ABC1` (the authority's) may send `TEST_WORKFLOW` messages to `X26ABC2` (the
//! case-management system's); both have the password `password`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::client::{LookupRequest, lookup};
use cpis_node::config::MeshConfig;
use cpis_node::handover::mesh_authorization;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Person, SettingType};
use cpis_tests::{Fed, api_json, hub_caught_up, request, wait_until};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const CHILD: &str = "9434765919";

fn sandbox() -> (SocketAddr, String) {
    let url = std::env::var("CPIS_MESH_SANDBOX").expect("CPIS_MESH_SANDBOX: run this test with .ci/mesh");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("CPIS_MESH_SANDBOX is http://ADDRESS:PORT");
    (addr, std::env::var("CPIS_MESH_SHARED_KEY").unwrap_or_else(|_| "TestKey".into()))
}

/// How many messages with this local id left `X26ABC1`: MESH's tracking answers 200 for exactly
/// one, 300 for several, 404 for none.
async fn sent_with_local_id(addr: SocketAddr, key: &str, local_id: &str) -> u16 {
    let auth = mesh_authorization("X26ABC1", "password", key);
    let path = format!("/messageexchange/X26ABC1/outbox/tracking/{local_id}");
    request(addr, "GET", &path, &[("Authorization", &auth)], "").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NHS England's MESH sandbox: run .ci/mesh"]
async fn mesh__one_message_per_notification__also_when_the_node_stopped_after_mesh_took_it__and_a_plan_file_is_imported_and_answered()
 {
    let (addr, key) = sandbox();
    let fed = Fed::create(FederationSpec::new("mesh").hub("HUBN").authority("204", "Hackney", &["HUBN"]).setting(
        "RXH01",
        "Royal Sussex County UTC",
        SettingType::UrgentTreatmentCentre,
        &["HUBN"],
    ));
    let hub = fed.start("HUBN").await;
    let home = fed.home("204");
    std::fs::write(home.join("mesh.password"), "password").unwrap();
    std::fs::write(home.join("mesh.key"), &key).unwrap();
    let mesh = MeshConfig {
        url: format!("http://{addr}"),
        mailbox: "X26ABC1".into(),
        password_file: home.join("mesh.password"),
        shared_key_file: home.join("mesh.key"),
        to_mailbox: "X26ABC2".into(),
        workflow_id: "TEST_WORKFLOW".into(),
        upload_workflow_id: "TEST_WORKFLOW_ACK".into(),
        result_workflow_id: "TEST_WORKFLOW".into(),
        retry_max_ms: 1_000,
    };
    let with_mesh = |c: &mut cpis_node::config::NodeConfig| c.mesh = Some(mesh.clone());

    // Hackney records a plan, then stops; a lookup's notification waits at the hub.
    let hackney = fed.start("204").await;
    let plan = json!({ "reference": "LAC-1", "nhs": CHILD, "plan_type": "LAC", "start": "2026-01-05" });
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan)).await.0, 200);
    wait_until("the plan reaches the hub", Duration::from_secs(20), || hub_caught_up(&fed, "HUBN", "204")).await;
    hackney.shutdown().await;
    let nurse = || Person { id: "N1".into(), name: "Sam Patel".into(), role: "Staff nurse".into() };
    let look = || LookupRequest { nhs: NhsNumber::parse(CHILD).unwrap(), person: nurse() };
    let first = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();

    // As if Hackney's node had sent it and stopped before recording it: MESH already holds it.
    let auth = mesh_authorization("X26ABC1", "password", &key);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("mex-from", "X26ABC1"),
        ("mex-to", "X26ABC2"),
        ("mex-workflowid", "TEST_WORKFLOW"),
        ("mex-localid", first.as_str()),
    ];
    let (status, _, body) = request(addr, "POST", "/messageexchange/X26ABC1/outbox", &headers, "{}").await;
    assert_eq!(status, 202, "the sandbox takes the message: {body}");

    let hackney = fed.start_with("204", with_mesh).await;
    wait_until("the first notification is recorded as handed on", Duration::from_secs(30), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.len() == 1 && n[0]["handed_at"].is_string())
    })
    .await;
    assert_eq!(sent_with_local_id(addr, &key, &first).await, 200, "exactly one message: nothing sent again");

    // A lookup while Hackney is up: one message; a restart sends nothing more.
    let second = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();
    wait_until("the second notification reaches MESH", Duration::from_secs(30), || async {
        sent_with_local_id(addr, &key, &second).await == 200
    })
    .await;
    hackney.shutdown().await;
    let hackney = fed.start_with("204", with_mesh).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&first, &second] {
        assert_eq!(sent_with_local_id(addr, &key, id).await, 200, "still exactly one message for {id}");
    }

    // The case-management system sends a plan file with a broken row; Hackney imports it and
    // answers with the report.
    let cms = mesh_authorization("X26ABC2", "password", &key);
    let csv =
        "reference,nhs_number,plan_type,start_date\nCPP-7,4010232137,CPP,2026-02-01\nCPP-8,4010232138,CPP,2026-02-01\n";
    let headers = [
        ("Authorization", cms.as_str()),
        ("Content-Type", "text/csv"),
        ("mex-from", "X26ABC2"),
        ("mex-to", "X26ABC1"),
        ("mex-workflowid", "TEST_WORKFLOW_ACK"),
        ("mex-localid", "export-2026-11-30"),
        ("Accept", "application/vnd.mesh.v2+json"),
    ];
    let (status, _, sent) = request(addr, "POST", "/messageexchange/X26ABC2/outbox", &headers, csv).await;
    assert_eq!(status, 202, "{sent}");
    let upload = serde_json::from_str::<serde_json::Value>(&sent).unwrap()["message_id"].as_str().unwrap().to_string();
    wait_until("Hackney answers the plan file", Duration::from_secs(30), || async {
        sent_with_local_id(addr, &key, &format!("result-{upload}")).await == 200
    })
    .await;
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    assert!(plans["plans"].as_array().unwrap().iter().any(|p| p["reference"] == "CPP-7"), "the good row is imported");
    let cms = || mesh_authorization("X26ABC2", "password", &key);
    let (_, _, listed) = request(addr, "GET", "/messageexchange/X26ABC2/inbox", &[("Authorization", &cms())], "").await;
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed).unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let mut answer = None;
    for id in ids {
        let path = format!("/messageexchange/X26ABC2/inbox/{id}");
        let (_, headers, body) = request(addr, "GET", &path, &[("Authorization", &cms())], "").await;
        if cpis_tests::header(&headers, "mex-localid") == Some(format!("result-{upload}").as_str()) {
            answer = Some(serde_json::from_str::<serde_json::Value>(&body).unwrap());
        }
    }
    let answer = answer.expect("the answer is in the case-management mailbox");
    assert_eq!((answer["applied"].as_u64(), answer["refused"].as_u64()), (Some(1), Some(1)), "{answer}");
    assert!(answer["rows"][1]["reason"].as_str().unwrap().contains("check digit"), "{answer}");
    let (_, _, left) = request(addr, "GET", "/messageexchange/X26ABC1/inbox", &[("Authorization", &auth)], "").await;
    assert!(!left.contains(&upload), "the plan file was acknowledged: {left}");

    // How long a notification takes to become a MESH message (printed; not a test of speed).
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let id = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();
        wait_until("the notification reaches MESH", Duration::from_secs(30), || async {
            sent_with_local_id(addr, &key, &id).await == 200
        })
        .await;
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "lookup answered -> notification a MESH message in the case-management mailbox, {} lookups: p50 {:.0?}, p99 {:.0?} (tracking polled every 50 ms)",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
    hackney.shutdown().await;
    hub.shutdown().await;
}
