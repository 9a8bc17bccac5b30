//! Peers the federation must refuse: unknown and revoked keys, garbage and oversized frames.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::client::{LookupRequest, lookup};
use cpis_node::store::Store;
use cpis_node::transport;
use cpis_protocol::directory::KeyStatus;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Person, SettingType};
use cpis_protocol::schema::StoredRow;
use cpis_tests::{Fed, http, wait_until};
use std::sync::Arc;
use std::time::Duration;

fn spec() -> FederationSpec {
    FederationSpec::new("hostile").hub("HUBS").authority("204", "Hackney", &["HUBS"]).setting(
        "RXH01",
        "Royal Sussex County UTC",
        SettingType::UrgentTreatmentCentre,
        &["HUBS"],
    )
}

/// [`spec`] with a second care setting.
fn two_settings() -> FederationSpec {
    spec().setting("RXH02", "Brighton Walk-in Centre", SettingType::WalkInCentre, &["HUBS"])
}

fn request() -> LookupRequest {
    LookupRequest {
        nhs: NhsNumber::parse("9434765919").unwrap(),
        person: Person { id: "N1".into(), name: "A Nurse".into(), role: "Nurse".into() },
    }
}

async fn metric(fed: &Fed, code: &str, line_start: &str) -> u64 {
    let (addr, token) = fed.api_of(code);
    let (_, text) = http(addr, &token, "GET", "/metrics", None).await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok()) // gauges are written as floats
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_whose_key_is_not_in_the_directory__refused_in_the_handshake() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBS").await;
    // A well-formed session (a Sync frame) from a key no member holds.
    let sync =
        cpis_protocol::wire::encode_frame(&cpis_protocol::wire::Message::Sync { directory_version: 1, marks: vec![] });
    let outcome = send_raw(&fed, [42; 32], sync).await;
    assert!(matches!(outcome, Ended::Other(_)), "no reply to a stranger: {outcome:?}");
    wait_until("the hub counts the refusal", Duration::from_secs(5), || async {
        metric(&fed, "HUBS", "cpis_connections_refused_total{reason=\"unknown_key\"}").await >= 1
    })
    .await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_whose_key_was_revoked__refused_in_the_handshake() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBS").await;
    let setting = fed.setting_config("RXH01");
    lookup(&setting, request()).await.expect("allowed before the revocation");

    let v1 = fed.fed.trusted().directory().clone();
    let v2 = fed.fed.next_directory(&v1, |d| {
        if let Some(m) = d.members.iter_mut().find(|m| m.code.as_str() == "RXH01") {
            m.keys[0].status = KeyStatus::Revoked { at: fed.fed.start };
        }
    });
    let (addr, token) = fed.api_of("HUBS");
    let body = cpis_protocol::codec::encode(&vec![v2]);
    let (status, answer) = http(addr, &token, "POST", "/directory", Some(("application/octet-stream", &body))).await;
    assert_eq!(status, 200, "{answer}");

    let err = lookup(&setting, request()).await.expect_err("a revoked key is refused");
    assert!(
        matches!(
            err,
            cpis_node::client::ClientError::KeyNotAdmitted { .. }
                | cpis_node::client::ClientError::AllHubsUnreachable { .. }
        ),
        "{err}"
    );
    wait_until("the hub counts the refusal", Duration::from_secs(5), || async {
        metric(&fed, "HUBS", "cpis_connections_refused_total{reason=\"key_not_active\"}").await >= 1
    })
    .await;
    hub.shutdown().await;
}

fn rows(fed: &Fed, code: &str) -> Vec<StoredRow> {
    Store::open(&fed.home(code).join("node.redb")).unwrap().load_all().unwrap()
}

/// How a raw session ended (the details are for assertion messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Ended {
    /// The hub replied (or ended the stream cleanly).
    Reply(Option<Box<cpis_protocol::wire::Message>>),
    /// The hub closed the connection with this application code.
    Closed(u64),
    /// Anything else (refused in the handshake, timed out...).
    Other(String),
}

/// Connects with key `seed` and writes `bytes` on a stream; returns how the session ended.
async fn send_raw(fed: &Fed, seed: [u8; 32], bytes: Vec<u8>) -> Ended {
    let admit: transport::Admit = Arc::new(|_| Ok(()));
    let endpoint = match transport::endpoint("127.0.0.1:0".parse().unwrap(), &seed, admit) {
        Ok(e) => e,
        Err(e) => return Ended::Other(e.to_string()),
    };
    let conn = match transport::connect(&endpoint, fed.hub_addresses["HUBS"]).await {
        Ok(c) => c,
        Err(e) => return Ended::Other(e.to_string()),
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else { return Ended::Other("no stream".into()) };
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let reply = tokio::time::timeout(Duration::from_secs(5), transport::read_message(&mut recv)).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    endpoint.close(0u32.into(), b"");
    match (reply, closed) {
        (Ok(Ok(message)), _) => Ended::Reply(message.map(Box::new)),
        (_, Ok(quinn::ConnectionError::ApplicationClosed(close))) => Ended::Closed(close.error_code.into_inner()),
        (_, Ok(other)) => Ended::Other(other.to_string()),
        (Ok(Err(e)), Err(_)) => Ended::Other(e.to_string()),
        (Err(_), Err(_)) => Ended::Other("no reply and no close".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_oversized_frame__connection_closed__nothing_stored_changes() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBS").await;
    hub.shutdown().await;
    let before = rows(&fed, "HUBS");

    let hub = fed.start("HUBS").await;
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    let bad_frame = u64::from(cpis_node::net::CLOSE_BAD_FRAME);
    let outcome = send_raw(&fed, fed.fed.identity("RXH01").seed(), garbage).await;
    assert!(matches!(outcome, Ended::Closed(code) if code == bad_frame), "{outcome:?}");

    let oversized = ((cpis_protocol::wire::FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
    let outcome = send_raw(&fed, fed.fed.identity("RXH01").seed(), oversized).await;
    assert!(matches!(outcome, Ended::Closed(code) if code == bad_frame), "{outcome:?}");
    assert_eq!(metric(&fed, "HUBS", "cpis_messages_refused_total{reason=\"bad_frame\"}").await, 2);
    assert_eq!(
        metric(&fed, "HUBS", "cpis_connections_refused_total{reason=\"bad_frame\"}").await,
        0,
        "bad frames are refused messages, not refused connections"
    );

    let setting = fed.setting_config("RXH01");
    lookup(&setting, request()).await.expect("the hub still serves well-behaved peers");
    hub.shutdown().await;
    let after = rows(&fed, "HUBS");
    let changed: Vec<_> = after.iter().filter(|r| !before.contains(r)).map(|r| r.table).collect();
    assert!(
        changed.iter().all(|t| *t == cpis_protocol::schema::Table::AccessLog),
        "only the good lookup was stored: {changed:?}"
    );
    assert_eq!(changed.len(), 1);
}

/// One setting (or one stolen key) opening lookup streams and sending a byte on each, never a
/// whole frame: it holds no more than its share of the hub's sessions (the rest are turned away
/// and counted), another setting is still answered, and the streams are let go after 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_holding_idle_streams__holds_no_more_than_its_share__is_let_go__another_is_answered() {
    let fed = Fed::create(two_settings());
    let hub = fed.start("HUBS").await;
    let admit: transport::Admit = Arc::new(|_| Ok(()));
    let endpoint =
        transport::endpoint("127.0.0.1:0".parse().unwrap(), &fed.fed.identity("RXH01").seed(), admit).unwrap();
    let per_connection = 16;
    let connections = cpis_node::runtime::SETTING_SESSIONS_PER_SETTING_MAX / per_connection + 2;
    let (mut conns, mut streams) = (Vec::new(), Vec::new());
    for _ in 0..connections {
        let conn = transport::connect(&endpoint, fed.hub_addresses["HUBS"]).await.unwrap();
        for _ in 0..per_connection {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            streams.push((send, recv));
        }
        conns.push(conn);
    }
    let turned_away = "cpis_connections_refused_total{reason=\"setting_sessions_of_one_setting\"}";
    wait_until("the sessions past its share are turned away", Duration::from_secs(10), || async {
        metric(&fed, "HUBS", turned_away).await >= 2 * per_connection as u64
    })
    .await;
    wait_until("its share of sessions open", Duration::from_secs(5), || async {
        metric(&fed, "HUBS", "cpis_settings_connected").await == 256
    })
    .await;
    lookup(&fed.setting_config("RXH02"), request()).await.expect("another setting is answered");
    wait_until("the idle streams are let go", Duration::from_secs(20), || async {
        metric(&fed, "HUBS", "cpis_settings_connected").await == 0
    })
    .await;
    let late = "cpis_connections_refused_total{reason=\"setting_session_frames_late\"}";
    wait_until("each let go is counted", Duration::from_secs(5), || async { metric(&fed, "HUBS", late).await >= 256 })
        .await;
    drop((streams, conns));
    endpoint.close(0u32.into(), b"");
    hub.shutdown().await;
}
