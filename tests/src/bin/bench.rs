//! The benchmark suite, release build, real nodes on loopback:
//!
//! `cargo run --release -p cpis-tests --bin cpis-bench -- all [--json]` (or `lookups` for the
//! lookup part only).
//!
//! - **bound**: this machine's ed25519 signing and `verify_strict` rates, measured in the same run,
//!   and the lookup rate they allow if a lookup cost only the setting's signature and the hub's
//!   verification, on every core; and the disk's sync (a 4 KiB write made durable), the floor of
//!   one setting's lookup;
//! - **lookups** at 1, 16 and 64 care settings against one hub (20,000 plans loaded through the
//!   council's CSV import; one lookup in ten of a flagged child), and the ratio to the bound;
//! - **notified**: a lookup of a flagged child answered → its notification in the council's inbox;
//! - **visible at all hubs**: a plan recorded at a council → held by each of 7 hubs;
//! - **scale** (separate processes, so that memory is per node): a hub holding 200,000 plans (peak
//!   RSS), a fresh hub catching up those 200,000 summaries from it, and a council with 100,000
//!   notifications in its inbox (peak RSS), and that hub restarting with 1,100,000 lookups on
//!   record (time to its API answering, peak RSS), then answering 16 settings' lookups.
//!
//! Prints a table; with `--json` the last line is one JSON object. Asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

use cpis_node::transport;
use cpis_protocol::harness::{FederationSpec, code};
use cpis_protocol::ids::{LookupId, NhsNumber, OdsCode};
use cpis_protocol::records::{AccessEvent, Person, SettingType};
use cpis_protocol::schema;
use cpis_protocol::time::Timestamp;
use cpis_protocol::wire::{self, Message};
use cpis_tests::{Fed, api_json, authority_seq, children, http, hub_caught_up, hub_seq, wait_until};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set in the environment of the node processes this bench starts (it runs them itself).
const RUN_AS_NODE: &str = "CPIS_BENCH_RUN_AS_NODE";
/// Plans loaded for the lookup runs.
const LOOKUP_PLANS: usize = 20_000;
/// Plans of the scale run, imported in two files of half each.
const SCALE_PLANS: usize = 200_000;
/// Notifications the scale run's council receives.
const SCALE_NOTIFICATIONS: usize = 100_000;
/// The children those notifications are about.
const NOTIFIED_CHILDREN: usize = 2_000;
/// Lookups of a day before that the scale run's hub finds in its store when it restarts.
const OLD_LOOKUPS: usize = 1_000_000;
/// Samples of the latency runs.
const SAMPLES: usize = 100;
const LONG_WAIT: Duration = Duration::from_secs(900);

fn person() -> Person {
    Person { id: "B1".into(), name: "Bench".into(), role: "Nurse".into() }
}

/// Lifts a hub's per-setting and per-person lookup limits: benchmark settings look up far faster
/// than any clinician.
fn unlimited(c: &mut cpis_node::config::NodeConfig) {
    c.limits.setting_lookups_per_hour = u64::MAX / 4;
    c.limits.person_lookups_per_hour = u64::MAX / 4;
}

/// One care setting on one QUIC connection to `hub`, one lookup session per stream, for each
/// child of `nhs` in turn; the latency of each.
async fn setting_lookups(fed: Arc<Fed>, code: String, hub: String, nhs: Vec<NhsNumber>) -> Vec<Duration> {
    let identity = fed.fed.identity(&code);
    let setting = cpis_protocol::setting::Setting::new(OdsCode::parse(&code).unwrap(), identity, fed.fed.trusted())
        .expect("setting in directory");
    let admit: transport::Admit = Arc::new(|_| Ok(()));
    let endpoint = transport::endpoint("127.0.0.1:0".parse().unwrap(), &fed.fed.identity(&code).seed(), admit).unwrap();
    let conn = transport::connect(&endpoint, fed.hub_addresses[&hub]).await.expect("connect");
    let mut latencies = Vec::with_capacity(nhs.len());
    for child in nhs {
        let started = Instant::now();
        let signed = setting.lookup(child, person(), LookupId(rand::random()), cpis_node::net::now()).unwrap();
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

/// `per` lookups by each of `settings` at once; one in ten of a flagged child.
async fn run_lookups(
    fed: &Arc<Fed>,
    settings: &[String],
    per: usize,
    flagged: &[NhsNumber],
    others: &[NhsNumber],
) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let tasks: Vec<_> = settings
        .iter()
        .enumerate()
        .map(|(s, code)| {
            let nhs = (0..per)
                .map(|i| {
                    if i % 10 == 0 {
                        flagged[(s * per + i) % flagged.len()]
                    } else {
                        others[(s * per + i) % others.len()]
                    }
                })
                .collect();
            tokio::spawn(setting_lookups(fed.clone(), code.clone(), "HUBS".into(), nhs))
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("a setting's lookups"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// The `q` quantile in ms.
fn ms(sorted: &[Duration], q: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Polls `check` every half millisecond until it holds; panics naming `what` after 30 s (a
/// stall is a finding, never a figure).
async fn poll_fast(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    panic!("{what}: not within 30 s");
}

/// A CSV of one LAC plan per child.
fn plans_csv(children: &[NhsNumber], first: usize) -> String {
    let mut csv = String::from("reference,nhs_number,plan_type,start_date\n");
    for (i, nhs) in children.iter().enumerate() {
        csv += &format!("LAC-{},{},LAC,2026-01-05\n", first + i, nhs.digits());
    }
    csv
}

async fn import(fed: &Fed, authority: &str, csv: &str) {
    let (addr, token) = fed.api_of(authority);
    let (status, text) = http(addr, &token, "POST", "/plans/import", Some(("text/csv", csv.as_bytes()))).await;
    assert_eq!(status, 200, "import: {text}");
}

/// ed25519 signing and `verify_strict` per second on one core, each measured for about a second,
/// over the bytes a lookup signs.
fn signature_rates() -> (f64, f64) {
    use ed25519_dalek::{Signer, SigningKey};
    let event = cpis_protocol::records::AccessEvent {
        lookup_id: LookupId([1; 16]),
        setting: OdsCode::parse("S0000").unwrap(),
        person: person(),
        at: cpis_node::net::now(),
        nhs: children(1, 0)[0],
    };
    let message = cpis_protocol::sign::signing_bytes(&event);
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let rate = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(1) {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let sign = rate(&mut || {
        std::hint::black_box(key.sign(std::hint::black_box(&message)));
    });
    let signature = key.sign(&message);
    let verify = rate(&mut || {
        std::hint::black_box(public.verify_strict(std::hint::black_box(&message), &signature)).expect("verifies");
    });
    (sign, verify)
}

/// Reads a process's peak resident memory (`VmHWM`) in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// How long the disk under `dir` takes to make a 4 KiB write durable (`fdatasync`), p50 and
/// p99 in ms: a lookup's answer waits for its access record's commit, which costs at least one.
fn disk_sync_ms(dir: &std::path::Path) -> (f64, f64) {
    use std::io::Write;
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path).expect("a probe file");
    let mut samples: Vec<Duration> = (0..300)
        .map(|_| {
            file.write_all(&[0u8; 4096]).expect("write the probe");
            let started = Instant::now();
            file.sync_data().expect("sync the probe");
            started.elapsed()
        })
        .collect();
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort();
    (ms(&samples, 0.5), ms(&samples, 0.99))
}

/// A node process, killed when dropped (also when the bench panics).
struct NodeProcess(std::process::Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node as its own process (this binary, run as the node daemon).
async fn spawn(fed: &Fed, code: &str) -> NodeProcess {
    let config = fed.write_node_config_with(code, unlimited);
    let _ = std::fs::remove_file(fed.home(code).join("api.addr"));
    let child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["run", "--config"])
        .arg(&config)
        .env(RUN_AS_NODE, "1")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(fed.home(code).join("node.log")).expect("a log file"))
        .spawn()
        .map(NodeProcess)
        .expect("spawn a node");
    let addr = fed.home(code).join("api.addr");
    wait_until(&format!("{code}'s API is up"), Duration::from_secs(30), || async {
        addr.exists() && tokio::net::TcpStream::connect(fed.api_of(code).0).await.is_ok()
    })
    .await;
    child
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn add(&mut self, key: &str, what: &str, value: f64, unit: &str) {
        let shown = if value >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") };
        self.rows.push((what.to_string(), shown, unit.to_string()));
        self.json.insert(key.to_string(), json!((value * 100.0).round() / 100.0));
    }
}

async fn lookups(report: &mut Report) {
    eprintln!("signature rates…");
    let (sign, verify) = signature_rates();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = cores / (1.0 / sign + 1.0 / verify);
    report.add("sign_per_s", "ed25519 signatures per second, one core", sign, "/s");
    report.add("verify_per_s", "verify_strict per second, one core", verify, "/s");
    report.add("bound_lookups_per_s", &format!("bound: lookups/s if only sign + verify, {cores} cores"), bound, "/s");

    let codes: Vec<String> = (0..64).map(|i| format!("S{i:04}")).collect();
    let mut spec = FederationSpec::new("bench").hub("HUBS").authority("204", "Hackney", &["HUBS"]);
    for code in &codes {
        spec = spec.setting(code, "Bench ED", SettingType::EmergencyDepartment, &["HUBS"]);
    }
    let fed = Arc::new(Fed::create(spec));
    let (sync_p50, sync_p99) = disk_sync_ms(fed.dir.path());
    report.add("disk_sync_p50_ms", "the disk: a 4 KiB write made durable (fdatasync), p50", sync_p50, "ms");
    report.add("disk_sync_p99_ms", "the disk: a 4 KiB write made durable (fdatasync), p99", sync_p99, "ms");
    let hub = fed.start_with("HUBS", unlimited).await;
    let authority = fed.start("204").await;
    let flagged = children(LOOKUP_PLANS, 0);
    let others = children(10_000, 500_000_000);
    import(&fed, "204", &plans_csv(&flagged, 0)).await;
    wait_until("the hub holds every plan", LONG_WAIT, || hub_caught_up(&fed, "HUBS", "204")).await;

    let mut ratio = 0.0;
    for (settings, per) in [(1, 2_000), (16, 500), (64, 200)] {
        eprintln!("lookups by {settings} setting(s)…");
        let (rate, latencies) = run_lookups(&fed, &codes[..settings], per, &flagged, &others).await;
        report.add(&format!("lookups_per_s_{settings}"), &format!("lookups/s, {settings} settings"), rate, "/s");
        report.add(
            &format!("p50_ms_{settings}"),
            &format!("lookup p50, {settings} settings"),
            ms(&latencies, 0.5),
            "ms",
        );
        report.add(
            &format!("p99_ms_{settings}"),
            &format!("lookup p99, {settings} settings"),
            ms(&latencies, 0.99),
            "ms",
        );
        ratio = rate / bound;
    }
    report.add("ratio_to_bound", "lookups/s at 64 settings / bound", ratio, "");

    eprintln!("lookup → notification…");
    // A flagged child not looked up before, one at a time: answered → in the council's inbox.
    let mut notified = Vec::with_capacity(SAMPLES);
    let (addr, token) = fed.api_of("204");
    for nhs in &flagged[LOOKUP_PLANS - SAMPLES..] {
        setting_lookups(fed.clone(), codes[0].clone(), "HUBS".into(), vec![*nhs]).await;
        let answered = Instant::now();
        let path = format!("/notifications?nhs={}&limit=1", nhs.digits());
        let arrived = async || {
            let (_, text) = http(addr, &token, "GET", &path, None).await;
            serde_json::from_str::<Value>(&text).is_ok_and(|v| v["total"].as_u64() >= Some(1))
        };
        poll_fast("the notification reaches the council's inbox", arrived).await;
        notified.push(answered.elapsed());
    }
    notified.sort();
    report.add("notified_p50_ms", "answered → notification in the council's inbox, p50", ms(&notified, 0.5), "ms");
    report.add("notified_p99_ms", "answered → notification in the council's inbox, p99", ms(&notified, 0.99), "ms");
    authority.shutdown().await;
    hub.shutdown().await;
}

/// A plan recorded at a council → held by each of 7 hubs (the slowest of the 7).
async fn visible_at_all_hubs(report: &mut Report) {
    eprintln!("a plan reaching 7 hubs…");
    let hubs: Vec<String> = (1..=7).map(|i| format!("HUB{i}")).collect();
    let mut spec = FederationSpec::new("seven");
    for h in &hubs {
        spec = spec.hub(h);
    }
    let fed = Fed::create(spec.authority("204", "Hackney", &["HUB1"]));
    let mut nodes = Vec::new();
    for h in &hubs {
        nodes.push(fed.start(h).await);
    }
    nodes.push(fed.start("204").await);
    // A first plan, so that every hub is connected and holds the council's feed before timing.
    let first = json!({ "reference": "V-first", "nhs": children(1, 800_000_000)[0].digits(), "plan_type": "LAC", "start": "2026-01-05" });
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(first)).await.0, 200);
    for h in &hubs {
        wait_until("every hub holds the council's feed", LONG_WAIT, || hub_caught_up(&fed, h, "204")).await;
    }
    let mut samples = Vec::with_capacity(SAMPLES / 2);
    for (i, nhs) in children(SAMPLES / 2, 0).iter().enumerate() {
        let plan =
            json!({ "reference": format!("V-{i}"), "nhs": nhs.digits(), "plan_type": "LAC", "start": "2026-01-05" });
        let (status, _) = api_json(&fed, "204", "POST", "/plans", Some(plan)).await;
        assert_eq!(status, 200);
        let recorded = Instant::now();
        let seq = authority_seq(&fed, "204").await;
        for h in &hubs {
            poll_fast("the plan reaches every hub", async || hub_seq(&fed, h, "204").await >= seq).await;
        }
        samples.push(recorded.elapsed());
    }
    samples.sort();
    report.add("visible_all_hubs_p50_ms", "plan recorded → held by all 7 hubs, p50", ms(&samples, 0.5), "ms");
    report.add("visible_all_hubs_p99_ms", "plan recorded → held by all 7 hubs, p99", ms(&samples, 0.99), "ms");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Separate processes: a hub with 200,000 plans (all of one council's), a fresh hub catching them
/// up, and another council, with 2,000 plans, receiving 100,000 notifications (50 unscheduled
/// lookups of each of its children).
async fn scale(report: &mut Report) {
    eprintln!("scale: 200,000 plans, a hub catching up, 100,000 notifications…");
    let codes: Vec<String> = (0..16).map(|i| format!("S{i:04}")).collect();
    let mut spec = FederationSpec::new("scale")
        .hub("HUBS")
        .hub("HUBT")
        .authority("204", "Hackney", &["HUBS"])
        .authority("202", "Camden", &["HUBS"]);
    for code in &codes {
        spec = spec.setting(code, "Bench ED", SettingType::EmergencyDepartment, &["HUBS"]);
    }
    let fed = Arc::new(Fed::create(spec));
    let hubs = spawn(&fed, "HUBS").await;
    let authority = spawn(&fed, "204").await;
    let notified = spawn(&fed, "202").await;
    let plans = children(SCALE_PLANS, 0);
    for (i, half) in plans.chunks(SCALE_PLANS / 2).enumerate() {
        import(&fed, "204", &plans_csv(half, i * SCALE_PLANS / 2)).await;
    }
    wait_until("HUBS holds 200,000 plans", LONG_WAIT, || hub_caught_up(&fed, "HUBS", "204")).await;
    report.add("hub_rss_mb_200k", "hub holding 200,000 plans, peak RSS", peak_rss_mb(hubs.0.id()), "MB");
    let rss = peak_rss_mb(authority.0.id());
    report.add("authority_rss_mb_200k_plans", "council with those 200,000 plans, peak RSS", rss, "MB");

    let started = Instant::now();
    let hubt = spawn(&fed, "HUBT").await;
    wait_until("HUBT catches up", LONG_WAIT, || hub_caught_up(&fed, "HUBT", "204")).await;
    report.add(
        "catch_up_200k_s",
        "fresh hub catching up 200,000 summaries (start included)",
        started.elapsed().as_secs_f64(),
        "s",
    );
    report.add("catch_up_hub_rss_mb", "that hub, peak RSS", peak_rss_mb(hubt.0.id()), "MB");
    drop((hubt, authority));

    let flagged = children(NOTIFIED_CHILDREN, 500_000_000);
    import(&fed, "202", &plans_csv(&flagged, SCALE_PLANS)).await;
    wait_until("HUBS holds Camden's plans", LONG_WAIT, || hub_caught_up(&fed, "HUBS", "202")).await;
    let per = SCALE_NOTIFICATIONS / codes.len();
    let tasks: Vec<_> = codes
        .iter()
        .enumerate()
        .map(|(s, code)| {
            let nhs = (0..per).map(|i| flagged[(s * per + i) % flagged.len()]).collect();
            tokio::spawn(setting_lookups(fed.clone(), code.clone(), "HUBS".into(), nhs))
        })
        .collect();
    for t in tasks {
        t.await.expect("lookups");
    }
    wait_until("the council holds 100,000 notifications", LONG_WAIT, || async {
        api_json(&fed, "202", "GET", "/status", None).await.1["notifications"].as_u64()
            >= Some(SCALE_NOTIFICATIONS as u64)
    })
    .await;
    let rss = peak_rss_mb(notified.0.id());
    report.add("authority_rss_mb_100k_notifications", "council with 100,000 notifications, peak RSS", rss, "MB");
    drop((notified, hubs));

    // The hub restarts with a long history of lookups: its own 100,000 and a million more from
    // a day before, as a hub in the field holds after some weeks.
    let at = cpis_node::net::now().minus_ms(cpis_protocol::time::DAY_MS);
    add_old_lookups(&fed, "HUBS", &codes, at, OLD_LOOKUPS).await;
    eprintln!("scale: the hub restarts with 1,100,000 lookups on record…");
    let started = Instant::now();
    let hubs = spawn(&fed, "HUBS").await;
    report.add(
        "hub_restart_s",
        "that hub restarting with 1,100,000 lookups on record",
        started.elapsed().as_secs_f64(),
        "s",
    );
    report.add("hub_restart_rss_mb", "its peak RSS", peak_rss_mb(hubs.0.id()), "MB");

    // Lookups at that hub, whose access log is long: each new record goes at its end.
    eprintln!("scale: lookups by 16 settings at that hub…");
    let others = children(10_000, 600_000_000);
    let (rate, latencies) = run_lookups(&fed, &codes, 500, &flagged, &others).await;
    report.add("lookups_per_s_16_long_log", "lookups/s, 16 settings, at that hub", rate, "/s");
    report.add("p50_ms_16_long_log", "lookup p50, 16 settings, at that hub", ms(&latencies, 0.5), "ms");
    report.add("p99_ms_16_long_log", "lookup p99, 16 settings, at that hub", ms(&latencies, 0.99), "ms");
}

/// Writes `count` access records of lookups made at `at` into a stopped hub's store, signed by
/// `settings` in turn (on every core).
async fn add_old_lookups(fed: &Fed, hub: &str, settings: &[String], at: Timestamp, count: usize) {
    let store = cpis_node::store::Store::open(&fed.node_config(hub).store_path()).expect("the hub's store");
    let settings: Vec<_> = settings.iter().map(|c| (code(c), fed.fed.identity(c))).collect();
    let nhs = children(1, 800_000_000)[0];
    let record = |i: usize| {
        let (setting, identity) = &settings[i % settings.len()];
        let lookup_id = LookupId(rand::random());
        let event = AccessEvent { lookup_id, setting: setting.clone(), person: person(), at, nhs };
        schema::ACCESS_LOG.put(&(at, lookup_id), &identity.sign(event))
    };
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    for (id, first) in (0..count).step_by(50_000).enumerate() {
        let chunk: Vec<usize> = (first..count.min(first + 50_000)).collect();
        let ops = std::thread::scope(|scope| {
            let parts: Vec<_> = chunk
                .chunks(chunk.len().div_ceil(threads))
                .map(|part| scope.spawn(move || part.iter().map(|i| record(*i)).collect::<Vec<_>>()))
                .collect();
            parts.into_iter().flat_map(|p| p.join().expect("signing")).collect()
        });
        store.commit(schema::WriteBatch { id: id as u64, ops }).await.expect("access records written");
    }
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(RUN_AS_NODE).is_some() {
        return cpis_node::cli::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json_out = args.iter().any(|a| a == "--json");
    let part = args.iter().find(|a| !a.starts_with('-')).map_or("all", String::as_str);
    let usage = "usage: cpis-bench [all|lookups|scale] [--json]";
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        return std::process::ExitCode::SUCCESS;
    }
    let unknown = args.iter().find(|a| a.starts_with('-') && *a != "--json");
    if !matches!(part, "all" | "lookups" | "scale") || unknown.is_some() {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut report = Report { rows: Vec::new(), json: serde_json::Map::new() };
    let started = Instant::now();
    runtime.block_on(async {
        if part != "scale" {
            lookups(&mut report).await;
        }
        if part == "all" {
            visible_at_all_hubs(&mut report).await;
        }
        if part != "lookups" {
            scale(&mut report).await;
        }
    });
    println!("{:<62} {:>12}", "figure", "value");
    for (what, value, unit) in &report.rows {
        println!("{what:<62} {value:>12} {unit}");
    }
    println!("(the suite ran {:.0} s)", started.elapsed().as_secs_f64());
    if json_out {
        println!("{}", Value::Object(report.json));
    }
    std::process::ExitCode::SUCCESS
}
