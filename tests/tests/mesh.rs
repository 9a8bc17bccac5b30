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
use cpis_node::runtime::RunningNode;
use cpis_node::store::Store;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::{LookupId, NhsNumber};
use cpis_protocol::records::{Person, SettingType};
use cpis_protocol::schema::Table;
use cpis_tests::{Fed, api_json, hub_caught_up, request, spawn_node, wait_until};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const CHILD: &str = "9434765919";
const NODE: &str = env!("CARGO_BIN_EXE_cpis-node-under-test");

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

/// The first message the proxy saw posted to an outbox: its local id and MESH's status, which the
/// proxy kept from the node.
#[derive(Debug)]
struct Withheld {
    local_id: String,
    status: u16,
}

/// A proxy on 127.0.0.1 between a node and MESH. It passes each request to MESH and MESH's answer
/// back, one request per connection (it asks MESH to close after answering and tells the node
/// the same, so no connection is reused), except MESH's answer to the first message posted to an
/// outbox: that message reaches MESH and MESH's whole answer is read, but the answer is reported
/// on the returned channel instead of passed on, and the node's connection is held open, the node
/// waiting, until the node goes away.
async fn withholding_proxy(mesh: SocketAddr) -> (SocketAddr, oneshot::Receiver<Withheld>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, withheld) = oneshot::channel();
    let report = Arc::new(Mutex::new(Some(report)));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, mesh, report.clone()));
        }
    });
    (addr, withheld)
}

async fn relay(mut client: TcpStream, mesh: SocketAddr, report: Arc<Mutex<Option<oneshot::Sender<Withheld>>>>) {
    let Some((head, body)) = read_request(&mut client).await else { return };
    let mut upstream = TcpStream::connect(mesh).await.expect("MESH answers");
    upstream.write_all(&closing(&head)).await.unwrap();
    upstream.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), upstream.read_to_end(&mut answer))
        .await
        .expect("MESH answers within 30 s")
        .unwrap();
    let (answer_head, answer_body) = split_head(&answer).expect("an HTTP answer from MESH");
    let request_line = head.lines().next().unwrap_or_default();
    let posted_to_outbox = request_line.starts_with("POST ")
        && request_line.split(' ').nth(1).is_some_and(|path| path.trim_end_matches('/').ends_with("/outbox"));
    let to_withhold = if posted_to_outbox { report.lock().unwrap().take() } else { None };
    if let Some(report) = to_withhold {
        let status = answer_head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let local_id = header_value(&head, "mex-localid").unwrap_or_default();
        let _ = report.send(Withheld { local_id, status });
        // Nothing more comes on this connection: the read ends when the node is killed.
        let _ = tokio::time::timeout(Duration::from_secs(120), client.read(&mut [0u8; 1])).await;
        return;
    }
    let _ = client.write_all(&closing(&answer_head)).await;
    let _ = client.write_all(answer_body).await;
    let _ = client.shutdown().await;
}

/// One request from a connection: its head (without the blank line) and its body
/// (`Content-Length` bytes). `None` if the connection closes first.
async fn read_request(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 8192];
    let (head, mut body) = loop {
        if let Some((head, body)) = split_head(&bytes) {
            break (head, body.to_vec());
        }
        assert!(bytes.len() < 64 << 10, "a request head under 64 KiB");
        let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buffer)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..n]);
    };
    assert!(header_value(&head, "transfer-encoding").is_none(), "the node's requests have a Content-Length");
    let length: usize = header_value(&head, "content-length").map_or(0, |v| v.parse().expect("a Content-Length"));
    while body.len() < length {
        let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buffer)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    body.truncate(length);
    Some((head, body))
}

/// The head of an HTTP message (text up to the blank line) and what follows it.
fn split_head(bytes: &[u8]) -> Option<(String, &[u8])> {
    let at = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((String::from_utf8_lossy(&bytes[..at]).into_owned(), &bytes[at + 4..]))
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// `head` with `Connection: close` in place of any connection header, and the blank line.
fn closing(head: &str) -> Vec<u8> {
    let mut text: String = head
        .lines()
        .filter(|line| {
            let name = line.split_once(':').map_or("", |(k, _)| k.trim());
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .map(|line| format!("{line}\r\n"))
        .collect();
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

/// The `[mesh]` table of a node's config file.
fn mesh_toml(mesh: &MeshConfig) -> String {
    format!(
        "[mesh]\nurl = \"{}\"\nmailbox = \"{}\"\npassword_file = {:?}\nshared_key_file = {:?}\nto_mailbox = \"{}\"\n\
         workflow_id = \"{}\"\nupload_workflow_id = \"{}\"\nresult_workflow_id = \"{}\"\nretry_max_ms = {}\n",
        mesh.url,
        mesh.mailbox,
        mesh.password_file.display().to_string(),
        mesh.shared_key_file.display().to_string(),
        mesh.to_mailbox,
        mesh.workflow_id,
        mesh.upload_workflow_id,
        mesh.result_workflow_id,
        mesh.retry_max_ms
    )
}

/// Starts the node of `config` as a process and waits until its API answers.
async fn start_process(fed: &Fed, code: &str, config: &Path) -> std::process::Child {
    let addr_file = fed.home(code).join("api.addr");
    let _ = std::fs::remove_file(&addr_file);
    let node = spawn_node(NODE, config);
    wait_until("the node's API is up", Duration::from_secs(20), || async {
        addr_file.exists() && TcpStream::connect(fed.api_of(code).0).await.is_ok()
    })
    .await;
    node
}

/// Whether the store in `data_dir` holds the notification `id`, and whether it recorded it as
/// handed on.
fn stored_and_handed(data_dir: &Path, id: &str) -> (bool, bool) {
    let store = Store::open(&data_dir.join("node.redb")).unwrap();
    let key = LookupId::from_hex(id).unwrap().0;
    (store.get(Table::Inbox, &key).unwrap().is_some(), store.get(Table::Handed, &key).unwrap().is_some())
}

/// A federation of one hub (started), Hackney homed on it and a UTC; and Hackney's MESH config
/// for the sandbox at `url` (its password and the shared key written to its folder; `tls`: the
/// folder of the test CA and the mailbox's client certificate).
async fn hackney_and_its_hub(name: &str, url: String, key: &str, tls: Option<&Path>) -> (Fed, RunningNode, MeshConfig) {
    let fed = Fed::create(FederationSpec::new(name).hub("HUBN").authority("204", "Hackney", &["HUBN"]).setting(
        "RXH01",
        "Royal Sussex County UTC",
        SettingType::UrgentTreatmentCentre,
        &["HUBN"],
    ));
    let hub = fed.start("HUBN").await;
    let home = fed.home("204");
    std::fs::write(home.join("mesh.password"), "password").unwrap();
    std::fs::write(home.join("mesh.key"), key).unwrap();
    let mesh = MeshConfig {
        url,
        mailbox: "X26ABC1".into(),
        password_file: home.join("mesh.password"),
        shared_key_file: home.join("mesh.key"),
        to_mailbox: "X26ABC2".into(),
        workflow_id: "TEST_WORKFLOW".into(),
        upload_workflow_id: "TEST_WORKFLOW_ACK".into(),
        result_workflow_id: "TEST_WORKFLOW".into(),
        retry_max_ms: 1_000,
        ca_file: tls.map(|t| t.join("ca.pem")),
        client_cert_file: tls.map(|t| t.join("client.pem")),
        client_key_file: tls.map(|t| t.join("client.key")),
    };
    (fed, hub, mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NHS England's MESH sandbox: run .ci/mesh"]
async fn mesh__one_message_per_notification__also_when_the_node_is_killed_after_mesh_accepted_it_and_before_it_read_the_answer__and_a_plan_file_is_imported_and_answered()
 {
    let (addr, key) = sandbox();
    let (fed, hub, mesh) = hackney_and_its_hub("mesh", format!("http://{addr}"), &key, None).await;
    let home = fed.home("204");
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

    // Hackney's node, a process, reaches MESH through a proxy that keeps MESH's answer to its
    // first message from it. Once MESH has taken the message, the node is killed (SIGKILL).
    let (proxy, withheld) = withholding_proxy(addr).await;
    let config = fed.write_node_config("204");
    let through_proxy = MeshConfig { url: format!("http://{proxy}"), ..mesh.clone() };
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&mesh_toml(&through_proxy));
    std::fs::write(&config, text).unwrap();
    let mut node = start_process(&fed, "204", &config).await;
    let withheld = tokio::time::timeout(Duration::from_secs(30), withheld)
        .await
        .expect("the node posts the notification to MESH within 30 s")
        .expect("the proxy reports it");
    assert_eq!((withheld.local_id.as_str(), withheld.status), (first.as_str(), 202), "MESH took the notification");
    assert_eq!(sent_with_local_id(addr, &key, &first).await, 200, "MESH holds the message before the kill");
    node.kill().expect("SIGKILL");
    let _ = node.wait();
    assert_eq!(
        stored_and_handed(&home, &first),
        (true, false),
        "killed after MESH took the notification and before the node recorded it as handed on"
    );

    // Restarted, the node finds the message in MESH's tracking, records it and sends nothing.
    let mut node = start_process(&fed, "204", &config).await;
    wait_until("the first notification is recorded as handed on", Duration::from_secs(30), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.len() == 1 && n[0]["handed_at"].is_string())
    })
    .await;
    assert_eq!(sent_with_local_id(addr, &key, &first).await, 200, "exactly one message: nothing sent again");
    node.kill().expect("stop");
    let _ = node.wait();

    // From here Hackney's node runs in this process and reaches MESH directly. A lookup while it
    // is up: one message; a restart sends nothing more.
    let hackney = fed.start_with("204", with_mesh).await;
    let second = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();
    wait_until("the second notification reaches MESH", Duration::from_secs(30), || async {
        sent_with_local_id(addr, &key, &second).await == 200
    })
    .await;
    hackney.shutdown().await;

    // While Hackney is down, MESH comes to hold one notification twice (as some earlier fault could
    // leave it: tracking by its local id answers 300), and another notification follows it.
    let twice = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();
    let la = mesh_authorization("X26ABC1", "password", &key);
    for _ in 0..2 {
        let headers = [
            ("Authorization", la.as_str()),
            ("Content-Type", "application/json"),
            ("mex-from", "X26ABC1"),
            ("mex-to", "X26ABC2"),
            ("mex-workflowid", "TEST_WORKFLOW"),
            ("mex-localid", twice.as_str()),
        ];
        let (status, _, body) = request(addr, "POST", "/messageexchange/X26ABC1/outbox", &headers, "{}").await;
        assert_eq!(status, 202, "the sandbox takes the message: {body}");
    }
    assert_eq!(sent_with_local_id(addr, &key, &twice).await, 300, "MESH's tracking: several messages");
    let after = lookup(&fed.setting_config("RXH01"), look()).await.unwrap().lookup_id.to_hex();

    // Restarted, Hackney counts the one MESH holds twice as sent, sends nothing more for it, and
    // goes on to the next; a restart after that sends nothing more either.
    let hackney = fed.start_with("204", with_mesh).await;
    wait_until("the notification after the one MESH holds twice reaches MESH", Duration::from_secs(30), || async {
        sent_with_local_id(addr, &key, &after).await == 200
    })
    .await;
    // The two reached Hackney in the same second, perhaps: either may be handed on first.
    wait_until("the notification MESH holds twice is recorded as handed on", Duration::from_secs(30), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().unwrap().iter().any(|n| n["lookup_id"] == twice && n["handed_at"].is_string())
    })
    .await;
    hackney.shutdown().await;
    let hackney = fed.start_with("204", with_mesh).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&first, &second, &after] {
        assert_eq!(sent_with_local_id(addr, &key, id).await, 200, "still exactly one message for {id}");
    }

    // The case-management system sends a plan file in two chunks and a file that is not CSV, which
    // can never be imported, and then a plan file with a broken row. Hackney answers the first two
    // with why, and imports the third and answers it with the report; it acknowledges all three.
    let chunked = {
        let cms = mesh_authorization("X26ABC2", "password", &key);
        let mut headers = vec![
            ("Authorization", cms.as_str()),
            ("Content-Type", "text/csv"),
            ("mex-from", "X26ABC2"),
            ("mex-to", "X26ABC1"),
            ("mex-workflowid", "TEST_WORKFLOW_ACK"),
            ("mex-localid", "export-2026-11-29"),
            ("mex-chunk-range", "1:2"),
            ("Accept", "application/vnd.mesh.v2+json"),
        ];
        let first_chunk = "reference,nhs_number,plan_type,start_date\n";
        let (status, _, sent) = request(addr, "POST", "/messageexchange/X26ABC2/outbox", &headers, first_chunk).await;
        assert_eq!(status, 202, "{sent}");
        let id = serde_json::from_str::<serde_json::Value>(&sent).unwrap()["message_id"].as_str().unwrap().to_string();
        headers.retain(|(name, _)| ["Authorization", "Accept"].contains(name));
        headers.push(("mex-chunk-range", "2:2"));
        let path = format!("/messageexchange/X26ABC2/outbox/{id}/2");
        let (status, _, sent) = request(addr, "POST", &path, &headers, "CPP-9,4010232137,CPP,2026-02-01\n").await;
        assert_eq!(status, 202, "{sent}");
        id
    };
    let cms = mesh_authorization("X26ABC2", "password", &key);
    let headers = [
        ("Authorization", cms.as_str()),
        ("Content-Type", "application/pdf"),
        ("mex-from", "X26ABC2"),
        ("mex-to", "X26ABC1"),
        ("mex-workflowid", "TEST_WORKFLOW_ACK"),
        ("mex-localid", "export-2026-11-29-letter"),
        ("Accept", "application/vnd.mesh.v2+json"),
    ];
    let (status, _, sent) = request(addr, "POST", "/messageexchange/X26ABC2/outbox", &headers, "%PDF-1.7\n%\n").await;
    assert_eq!(status, 202, "{sent}");
    let not_csv = serde_json::from_str::<serde_json::Value>(&sent).unwrap()["message_id"].as_str().unwrap().to_string();
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
    wait_until("Hackney answers the three files", Duration::from_secs(30), || async {
        for id in [&chunked, &not_csv, &upload] {
            if sent_with_local_id(addr, &key, &format!("result-{id}")).await != 200 {
                return false;
            }
        }
        true
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
    let mut answers = std::collections::HashMap::new();
    let mut held_twice = 0;
    for id in ids {
        let path = format!("/messageexchange/X26ABC2/inbox/{id}");
        let (_, headers, body) = request(addr, "GET", &path, &[("Authorization", &cms())], "").await;
        let local_id = cpis_tests::header(&headers, "mex-localid").unwrap_or_default().to_string();
        if local_id == twice {
            held_twice += 1;
        }
        if let Some(upload) = local_id.strip_prefix("result-") {
            answers.insert(upload.to_string(), serde_json::from_str::<serde_json::Value>(&body).unwrap());
        }
    }
    assert_eq!(held_twice, 2, "nothing more was sent for the notification MESH held twice");
    let answer = answers.get(&upload).expect("the answer is in the case-management mailbox");
    assert_eq!((answer["applied"].as_u64(), answer["refused"].as_u64()), (Some(1), Some(1)), "{answer}");
    assert!(answer["rows"][1]["reason"].as_str().unwrap().contains("check digit"), "{answer}");
    let error = |id: &str| answers.get(id).and_then(|a| a["error"].as_str()).unwrap_or_default().to_string();
    assert!(error(&chunked).contains("2 chunks"), "the chunked file is answered with why: {answers:?}");
    assert!(!error(&not_csv).is_empty(), "the file that is not CSV is answered with why: {answers:?}");
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    assert!(!plans.to_string().contains("CPP-9"), "nothing of the chunked file is imported");
    let auth = mesh_authorization("X26ABC1", "password", &key);
    let (_, _, left) = request(addr, "GET", "/messageexchange/X26ABC1/inbox", &[("Authorization", &auth)], "").await;
    for id in [&chunked, &not_csv, &upload] {
        assert!(!left.contains(id.as_str()), "every plan file was acknowledged: {left}");
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NHS England's MESH sandbox over HTTPS: run .ci/mesh"]
async fn mesh_over_https__the_mailbox_presents_its_client_certificate__and_a_notification_is_handed_on() {
    let url = std::env::var("CPIS_MESH_TLS_SANDBOX").expect("CPIS_MESH_TLS_SANDBOX: run this test with .ci/mesh");
    let tls = std::path::PathBuf::from(std::env::var("CPIS_MESH_TLS_DIR").expect("CPIS_MESH_TLS_DIR"));
    let (_, key) = sandbox();
    let (fed, hub, mesh) = hackney_and_its_hub("mesh-tls", url, &key, Some(&tls)).await;
    let hackney = fed.start_with("204", |c| c.mesh = Some(mesh)).await;
    let plan = json!({ "reference": "LAC-1", "nhs": CHILD, "plan_type": "LAC", "start": "2026-01-05" });
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan)).await.0, 200);
    wait_until("the plan reaches the hub", Duration::from_secs(20), || hub_caught_up(&fed, "HUBN", "204")).await;
    let nurse = Person { id: "N1".into(), name: "Sam Patel".into(), role: "Staff nurse".into() };
    lookup(&fed.setting_config("RXH01"), LookupRequest { nhs: NhsNumber::parse(CHILD).unwrap(), person: nurse })
        .await
        .unwrap();
    // Handed on: MESH's tracking (over HTTPS) knew no such message, and MESH took the post.
    wait_until("the notification is handed on over HTTPS", Duration::from_secs(30), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.len() == 1 && n[0]["handed_at"].is_string())
    })
    .await;
    hackney.shutdown().await;
    hub.shutdown().await;
}
