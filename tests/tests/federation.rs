//! Real nodes over real QUIC on 127.0.0.1, with redb stores in temporary folders.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::client::{LookupRequest, lookup};
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Person, SettingType};
use cpis_tests::{Fed, api_json, hub_caught_up, wait_until};
use serde_json::json;
use std::time::Duration;

const CHILD: &str = "9434765919";

fn spec() -> FederationSpec {
    FederationSpec::new("e2e")
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .authority("E5A1B", "Brighton and Hove", &["HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS"])
}

fn nurse() -> Person {
    Person { id: "N1234".into(), name: "A Nurse".into(), role: "Staff nurse".into() }
}

async fn add_plan(fed: &Fed, authority: &str, reference: &str, plan_type: &str) {
    let body = json!({ "reference": reference, "nhs": CHILD, "plan_type": plan_type, "start": "2026-01-05" });
    let (status, answer) = api_json(fed, authority, "POST", "/plans", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "applied");
}

async fn inbox(fed: &Fed, authority: &str) -> Vec<serde_json::Value> {
    let (_, answer) = api_json(fed, authority, "GET", "/notifications", None).await;
    answer["notifications"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_three_authorities__lookup_at_far_hub__plans_contacts_history_and_one_notice_each() {
    let fed = Fed::create(spec());
    let mut nodes = Vec::new();
    for code in ["HUBN", "HUBS", "204", "316", "E5A1B"] {
        nodes.push(fed.start(code).await);
    }
    add_plan(&fed, "204", "LAC-1", "LAC").await;
    add_plan(&fed, "316", "CPP-9", "CPP").await;
    let contacts =
        json!({ "name": "Hackney CSC", "office_phone": "020 8356 5500", "out_of_hours_phone": "020 8356 2710" });
    assert_eq!(api_json(&fed, "204", "PUT", "/contacts", Some(contacts)).await.0, 200);
    for hub in ["HUBN", "HUBS"] {
        wait_until("plans replicate to both hubs", Duration::from_secs(20), || async {
            hub_caught_up(&fed, hub, "204").await && hub_caught_up(&fed, hub, "316").await
        })
        .await;
    }

    let setting = fed.setting_config("RXH01");
    let nhs = NhsNumber::parse(CHILD).unwrap();
    let first = lookup(&setting, LookupRequest { nhs, person: nurse() }).await.expect("first lookup");
    assert_eq!(first.answer.hub.as_str(), "HUBS", "the setting's home hub answers");
    let second = lookup(&setting, LookupRequest { nhs, person: nurse() }).await.expect("second lookup");
    let plans: Vec<_> = second.answer.plans().collect();
    let authorities: Vec<&str> = plans.iter().map(|(a, _)| a.code.as_str()).collect();
    assert_eq!(authorities, ["204", "316"]);
    assert_eq!(plans[0].0.contacts.as_ref().map(|c| c.out_of_hours_phone.as_str()), Some("020 8356 2710"));
    assert!(second.answer.authorities.iter().all(|a| a.checked()), "every council's head checked as fresh");
    assert_eq!(second.answer.history.len(), 1, "the first lookup is in the second's history");

    for authority in ["204", "316"] {
        wait_until("each owning authority has its notifications", Duration::from_secs(20), || async {
            inbox(&fed, authority).await.len() == 2
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for authority in ["204", "316"] {
        let items = inbox(&fed, authority).await;
        let ids: std::collections::BTreeSet<_> =
            items.iter().map(|i| i["lookup_id"].as_str().unwrap_or("").to_string()).collect();
        assert_eq!(items.len(), 2, "{authority}: exactly one notification per lookup");
        assert_eq!(ids.len(), 2);
        assert!(items.iter().all(|i| i["setting"]["code"] == "RXH01" && i["person"]["id"] == "N1234"));
    }
    assert!(inbox(&fed, "E5A1B").await.is_empty(), "no plan, no notification");
    let (addr, token) = fed.api_of("HUBS");
    let (_, metrics) = cpis_tests::http(addr, &token, "GET", "/metrics", None).await;
    for line in ["cpis_lookup_seconds_count 2", "cpis_replica_head_age_seconds{origin=\"204\"}", "cpis_inputs_queued"] {
        assert!(metrics.contains(line), "metrics lack {line}");
    }
    assert!(!metrics.contains(CHILD), "no NHS number in metrics");
    for family in [
        "cpis_build_info{version=",
        "cpis_ready 1",
        "cpis_store_commit_seconds_count",
        "cpis_notification_delivery_seconds_count",
        "cpis_notification_oldest_waiting_seconds",
        "cpis_visit_feed_seq{hub=\"HUBS\"}",
        "cpis_api_requests_total{code=\"200\"}",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(family), "metrics lack {family}");
    }
    let types: Vec<&str> = metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    for name in &types {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
    }
    assert!(!metrics.contains("cpis_replica_head_age_seconds{origin=\"HUB"), "hubs' own feeds are kept apart");
    // The scraper's token reads the metrics and nothing else.
    let scraper = std::fs::read_to_string(fed.node_config("HUBS").metrics_token_path()).expect("metrics.token");
    assert_eq!(cpis_tests::http(addr, scraper.trim(), "GET", "/metrics", None).await.0, 200);
    assert_eq!(cpis_tests::http(addr, scraper.trim(), "GET", "/status", None).await.0, 401);
    assert_eq!(cpis_tests::http(addr, "wrong", "GET", "/metrics", None).await.0, 401);
    let (_, authority) = cpis_tests::http(fed.api_of("204").0, &fed.api_of("204").1, "GET", "/metrics", None).await;
    for family in ["cpis_inbox_unacknowledged 2", "cpis_inbox_oldest_unacknowledged_seconds"] {
        assert!(authority.contains(family), "the authority's metrics lack {family}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owning_authority_down__lookup_still_answered__notice_arrives_after_restart() {
    let fed = Fed::create(spec());
    let hubn = fed.start("HUBN").await;
    let hubs = fed.start("HUBS").await;
    let hackney = fed.start("204").await;
    add_plan(&fed, "204", "LAC-1", "LAC").await;
    wait_until("the plan reaches the far hub", Duration::from_secs(20), || async {
        hub_caught_up(&fed, "HUBS", "204").await
    })
    .await;
    hackney.shutdown().await;

    let setting = fed.setting_config("RXH01");
    let nhs = NhsNumber::parse(CHILD).unwrap();
    let outcome = lookup(&setting, LookupRequest { nhs, person: nurse() }).await.expect("answered");
    assert_eq!(outcome.answer.plans().count(), 1, "answered from the replica while Hackney is down");

    let hackney = fed.start("204").await;
    wait_until("the notification arrives after the restart", Duration::from_secs(20), || async {
        inbox(&fed, "204").await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(inbox(&fed, "204").await.len(), 1, "exactly once");
    for node in [hackney, hubn, hubs] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health__needs_no_token__ready_only_once_connected__and_says_why_not() {
    let fed = Fed::create(spec());
    let hubn = fed.start("HUBN").await;
    let (addr, _) = fed.api_of("HUBN");
    let (status, _, body) = cpis_tests::request(addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, _, body) = cpis_tests::request(addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 503, "a hub with no peer is not ready: {body}");
    assert!(body.contains("connected to none of its"), "{body}");
    let (status, _, _) = cpis_tests::request(addr, "GET", "/status", &[], "").await;
    assert_eq!(status, 401, "everything else still needs the token");
    let hubs = fed.start("HUBS").await;
    wait_until("HUBN is ready once HUBS is up", Duration::from_secs(20), || async {
        cpis_tests::request(addr, "GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
    let (status, _, missing) = cpis_tests::request(
        addr,
        "GET",
        "/no/such/path",
        &[("Authorization", &format!("Bearer {}", fed.api_of("HUBN").1))],
        "",
    )
    .await;
    assert!(status == 404 && missing.contains("no such path"), "{missing}");
    hubn.shutdown().await;
    hubs.shutdown().await;
}
