//! The setting gateway's lookup latency on loopback (release build):
//! `cargo run --release -p cpis-tests --bin cpis-gateway-bench -- [callers] [lookups_per_caller] [plans]`
//!
//! Starts two hubs (HUBS, the setting's first home hub, and HUBN), an authority holding `plans`
//! plans, and the gateway of one emergency department, in this process. Then:
//! 1. `callers` clinical systems, each on one keep-alive HTTP connection, each make
//!    `lookups_per_caller` FHIR `CareTeam` searches (one in ten of a flagged child): rate and
//!    latency percentiles, with the gateway's connections to its hubs warm;
//! 2. the first home hub is stopped: how long the next lookups take (the next hub answers);
//! 3. a gateway whose first home hub's address answers nothing at all (a black hole): how long
//!    lookups take (the gateway asks the next hub after `hedge_after_ms`);
//! 4. every hub stopped: how long until "could not check".
//!
//! Prints figures; asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

use cpis_node::accounts::{Access, Accounts};
use cpis_node::gateway::RunningGateway;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::SettingType;
use cpis_tests::{Fed, children, http, hub_caught_up, wait_until};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One keep-alive HTTP/1.1 connection to the gateway.
struct Caller {
    stream: BufReader<tokio::net::TcpStream>,
    token: String,
    user: String,
}

impl Caller {
    async fn connect(addr: SocketAddr, token: &str, user: String) -> Caller {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("the gateway answers");
        stream.set_nodelay(true).unwrap();
        Caller { stream: BufReader::new(stream), token: token.to_string(), user }
    }

    /// One CareTeam search: the status code.
    async fn care_team(&mut self, nhs: NhsNumber) -> u16 {
        let request = format!(
            "GET /FHIR/R4/CareTeam?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\nIsUnscheduledAccessEvent: true\r\nX-User-Id: {}\r\nX-User-Name: Bench Doctor\r\nX-User-Role: Doctor\r\n\r\n",
            nhs.digits(),
            self.token,
            self.user
        );
        self.stream.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut status = 0;
        let mut length = 0usize;
        for n in 0..64 {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if n == 0 {
                status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if line == "\r\n" {
                break;
            } else if let Some((_, v)) = line.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn timed_lookups(addr: SocketAddr, token: &str, nhs: NhsNumber, n: usize) -> (Vec<Duration>, Vec<u16>) {
    let mut caller = Caller::connect(addr, token, "T1".into()).await;
    let mut times = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        statuses.push(caller.care_team(nhs).await);
        times.push(started.elapsed());
    }
    (times, statuses)
}

async fn start_gateway(
    fed: &Fed,
    name: &str,
    change: impl FnOnce(&mut cpis_node::config::SettingConfig),
) -> (RunningGateway, String) {
    let mut config = fed.setting_config("RXQ01");
    config.gateway.data_dir = fed.home("RXQ01").join(name);
    change(&mut config);
    let mut accounts = Accounts::default();
    let token = accounts.add_system("BENCH", "Bench", &Access::ALL, 30, cpis_node::net::now().date()).unwrap();
    accounts.save(&config.gateway.users_path()).unwrap();
    (RunningGateway::start(config).await.unwrap(), token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (callers, per_caller, plans) = (
        args.first().copied().unwrap_or(16),
        args.get(1).copied().unwrap_or(500),
        args.get(2).copied().unwrap_or(20_000),
    );
    let spec = FederationSpec::new("gateway-bench")
        .hub("HUBS")
        .hub("HUBN")
        .authority("204", "Hackney", &["HUBS", "HUBN"])
        .setting("RXQ01", "Bench emergency department", SettingType::EmergencyDepartment, &["HUBS", "HUBN"]);
    let fed = Arc::new(Fed::create(spec));
    let unlimited = |c: &mut cpis_node::config::NodeConfig| {
        c.limits.setting_lookups_per_hour = u64::MAX / 4;
        c.limits.person_lookups_per_hour = u64::MAX / 4;
    };
    let hubs = fed.start_with("HUBS", unlimited).await;
    let hubn = fed.start_with("HUBN", unlimited).await;
    let authority = fed.start("204").await;
    let flagged = children(plans, 0);
    let others = children(10_000, 500_000_000);
    let mut csv = String::from("reference,nhs_number,plan_type,start_date\n");
    for (i, nhs) in flagged.iter().enumerate() {
        csv += &format!("LAC-{i},{},LAC,2026-01-05\n", nhs.digits());
    }
    let (addr, token) = fed.api_of("204");
    let (status, _) = http(addr, &token, "POST", "/plans/import", Some(("text/csv", csv.as_bytes()))).await;
    anyhow::ensure!(status == 200, "import failed");
    for hub in ["HUBS", "HUBN"] {
        wait_until("the hubs hold every plan", Duration::from_secs(300), || hub_caught_up(&fed, hub, "204")).await;
    }
    println!("{plans} plans at both hubs");

    let (gateway, token) = start_gateway(&fed, "gateway", |_| {}).await;
    let addr = gateway.addr();
    // Warm up: connections to the hubs, and the gateway's cache of verified heads.
    let _ = timed_lookups(addr, &token, others[0], 20).await;
    let (flagged, others) = (Arc::new(flagged), Arc::new(others));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (token, flagged, others) = (token.clone(), flagged.clone(), others.clone());
            tokio::spawn(async move {
                let mut caller = Caller::connect(addr, &token, format!("U{c}")).await;
                let mut times = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let nhs = if i % 10 == 0 {
                        flagged[(c * per_caller + i) % flagged.len()]
                    } else {
                        others[(c * per_caller + i) % others.len()]
                    };
                    let t = Instant::now();
                    let status = caller.care_team(nhs).await;
                    assert_eq!(status, 200, "a lookup failed");
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await?);
    }
    let elapsed = started.elapsed();
    times.sort();
    println!(
        "warm: {} FHIR lookups by {callers} concurrent callers in {:.2?}: {:.0} lookups/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        times.len(),
        elapsed,
        times.len() as f64 / elapsed.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );

    // A gateway whose first home hub's address is a black hole (nothing ever answers).
    let hole = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let hole_addr = hole.local_addr()?;
    let (blackholed, token2) = start_gateway(&fed, "gateway-hole", |c| {
        c.hub_addresses.insert("HUBS".into(), hole_addr);
    })
    .await;
    let (mut hole_times, statuses) = timed_lookups(blackholed.addr(), &token2, others[1], 10).await;
    hole_times.sort();
    println!(
        "first home hub a black hole: {} lookups answered by the next hub ({} of them 200), p50 {:.2?}, max {:.2?}",
        hole_times.len(),
        statuses.iter().filter(|s| **s == 200).count(),
        percentile(&hole_times, 0.5),
        hole_times[hole_times.len() - 1]
    );
    blackholed.shutdown().await;

    hubs.shutdown().await;
    let (mut down_times, statuses) = timed_lookups(addr, &token, others[2], 10).await;
    down_times.sort();
    println!(
        "first home hub stopped: {} lookups ({} of them 200), p50 {:.2?}, max {:.2?}",
        down_times.len(),
        statuses.iter().filter(|s| **s == 200).count(),
        percentile(&down_times, 0.5),
        down_times[down_times.len() - 1]
    );
    hubn.shutdown().await;
    let (mut none_times, statuses) = timed_lookups(addr, &token, others[3], 3).await;
    none_times.sort();
    println!(
        "every hub stopped: {} lookups answered {:?} (could not check), max {:.2?}",
        none_times.len(),
        statuses,
        none_times[none_times.len() - 1]
    );
    gateway.shutdown().await;
    authority.shutdown().await;
    Ok(())
}
