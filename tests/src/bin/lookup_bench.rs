//! Lookup throughput and latency of one hub on loopback (release build):
//! `cargo run --release -p cpis-tests --bin cpis-lookup-bench -- [workers] [lookups_per_worker] [plans]`
//!
//! Starts a hub and an authority in this process, loads plans through the authority's CSV
//! import, waits until the hub holds them, then runs `workers` care settings, each on one QUIC
//! connection doing one lookup session per stream (sign, Sync + Lookup, read the Answer). One
//! lookup in ten is of a flagged child (so it is notified and enters the history). Prints the
//! rate and the latency percentiles; asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

use cpis_node::transport;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::{LookupId, NhsNumber};
use cpis_protocol::records::{Person, SettingType};
use cpis_protocol::wire::{self, Message};
use cpis_tests::{Fed, children, http, hub_caught_up, wait_until};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn worker(
    fed: Arc<Fed>,
    code: String,
    flagged: Arc<Vec<NhsNumber>>,
    others: Arc<Vec<NhsNumber>>,
    n: usize,
) -> Vec<Duration> {
    let setting = cpis_protocol::setting::Setting::new(code.parse_code(), fed.fed.identity(&code), fed.fed.trusted())
        .expect("setting in directory");
    let admit: transport::Admit = Arc::new(|_| Ok(()));
    let endpoint = transport::endpoint("127.0.0.1:0".parse().unwrap(), &fed.fed.identity(&code).seed(), admit).unwrap();
    let conn = transport::connect(&endpoint, fed.hub_addresses["HUBS"]).await.expect("connect");
    let person = Person { id: "B1".into(), name: "Bench".into(), role: "Nurse".into() };
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let nhs = if i % 10 == 0 { flagged[i % flagged.len()] } else { others[i % others.len()] };
        let started = Instant::now();
        let id = LookupId(rand::random());
        let now = cpis_node::net::now();
        let signed = setting.lookup(nhs, person.clone(), id, now).unwrap();
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let sync = Message::Sync { directory_version: setting.directory_version(), marks: vec![] };
        transport::write_frame(&mut send, &wire::encode_frame(&sync)).await.unwrap();
        transport::write_frame(&mut send, &wire::encode_frame(&Message::Lookup(signed))).await.unwrap();
        let _ = send.finish();
        loop {
            match transport::read_message(&mut recv).await.expect("read").expect("a reply") {
                Message::Answer(_) => break,
                Message::Refused(r) => panic!("refused: {}", r.code),
                _ => continue,
            }
        }
        latencies.push(started.elapsed());
    }
    conn.close(0u32.into(), b"done");
    latencies
}

trait ParseCode {
    fn parse_code(&self) -> cpis_protocol::ids::OdsCode;
}
impl ParseCode for String {
    fn parse_code(&self) -> cpis_protocol::ids::OdsCode {
        cpis_protocol::ids::OdsCode::parse(self).expect("code")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (workers, per_worker, plans) = (
        args.first().copied().unwrap_or(16),
        args.get(1).copied().unwrap_or(500),
        args.get(2).copied().unwrap_or(20_000),
    );
    let mut spec = FederationSpec::new("bench").hub("HUBS").authority("204", "Hackney", &["HUBS"]);
    let codes: Vec<String> = (0..workers).map(|i| format!("S{i:04}")).collect();
    for code in &codes {
        spec = spec.setting(code, "Bench ED", SettingType::EmergencyDepartment, &["HUBS"]);
    }
    let fed = Arc::new(Fed::create(spec));
    // Benchmark settings look up far faster than any clinician: lift the rate limits.
    let hub = fed
        .start_with("HUBS", |c| {
            c.limits.setting_lookups_per_hour = u64::MAX / 4;
            c.limits.person_lookups_per_hour = u64::MAX / 4;
        })
        .await;
    let authority = fed.start("204").await;
    let flagged = Arc::new(children(plans, 0));
    let others = Arc::new(children(10_000, 500_000_000));
    let mut csv = String::from("reference,nhs_number,plan_type,start_date\n");
    for (i, nhs) in flagged.iter().enumerate() {
        csv += &format!("LAC-{i},{},LAC,2026-01-05\n", nhs.digits());
    }
    let (addr, token) = fed.api_of("204");
    let load = Instant::now();
    let (status, _) = http(addr, &token, "POST", "/plans/import", Some(("text/csv", csv.as_bytes()))).await;
    anyhow::ensure!(status == 200, "import failed");
    let imported = load.elapsed();
    let (hub_addr, hub_token) = fed.api_of("HUBS");
    let _ = (hub_addr, hub_token);
    wait_until("the hub holds every plan", Duration::from_secs(120), || hub_caught_up(&fed, "HUBS", "204")).await;
    println!("loaded {} plans: import {:.2?}, replicated after {:.2?}", flagged.len(), imported, load.elapsed());

    let started = Instant::now();
    let tasks: Vec<_> = codes
        .iter()
        .map(|c| tokio::spawn(worker(fed.clone(), c.clone(), flagged.clone(), others.clone(), per_worker)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} lookups by {workers} settings in {:.2?}: {:.0} lookups/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    authority.shutdown().await;
    hub.shutdown().await;
    Ok(())
}
