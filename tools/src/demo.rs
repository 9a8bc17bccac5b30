//! `cpis demo`: the federation's founding story (docs/overview.md) played on a real federation
//! running in this process.
//!
//! Two hubs, three authorities (Hackney among them) and two care settings get fresh random keys
//! through the same code as `cpis federation create` and `enrol`; the nodes run in-process
//! ([`RunningNode::start`]) on 127.0.0.1 with OS-chosen ports and short timings; plans are loaded
//! through each authority's API (contacts, then a CSV import). Then each step of the story runs
//! and is checked. Every wait is a bounded poll (a number of tries at a fixed interval), and each
//! step has an overall time limit, so the demonstration always ends.

use crate::admin::{self, CreateOptions, EnrolOptions};
use crate::api::NodeApi;
use crate::care;
use crate::council::{self, NewPlan};
use crate::render::{items, now, number, out, text};
use cpis_node::accounts::{AccountRole, Accounts};
use cpis_node::client::{self, LookupOutcome, LookupRequest};
use cpis_node::config::{NodeConfig, SettingConfig, Timing};
use cpis_node::gateway::RunningGateway;
use cpis_node::runtime::RunningNode;
use cpis_protocol::directory::Role;
use cpis_protocol::ids::{LookupId, NhsNumber, PlanRef};
use cpis_protocol::records::{Person, PlanType};
use cpis_protocol::time::Date;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest any one step may take before it is reported as not held.
pub const STEP_TIMEOUT_MS: u64 = 60_000;
/// Interval of every poll.
const POLL_INTERVAL_MS: u64 = 100;
/// Most tries of any one poll (so at most 30 s of polling).
const POLL_TRIES_MAX: u32 = 300;

/// The child of the story: in Hackney's care.
const CHILD_NHS: &str = "943 476 5919";
const CHILD_PLAN: &str = "LAC-204-0193";
/// Days since the child came into care; the plan's end is later recorded this many days ago.
const IN_CARE_SINCE_DAYS: i32 = 800;
const ENDED_DAYS_AGO: i32 = 400;

/// One step of the story, and whether it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub held: bool,
    pub ms: u64,
    pub detail: String,
}

/// Every step, whether all held, and (with `--serve`) how to reach the running federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub held: bool,
    pub steps: Vec<Step>,
    /// `{"clinician_url", "fhir_base", "fhir_token", "council_url", "users", "nodes",
    /// "flagged_nhs"}` while the federation is served (docs/cli.md).
    pub serve: Option<Value>,
}

impl Report {
    /// `{"held": bool, "steps": [{"name", "held", "ms", "detail"}], "serve"?: {…}}`
    pub fn json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| json!({ "name": s.name, "held": s.held, "ms": s.ms, "detail": s.detail }))
            .collect();
        let mut report = json!({ "held": self.held, "steps": steps });
        if let Some(serve) = &self.serve {
            report["serve"] = serve.clone();
        }
        report
    }
}

/// Told of each step as it happens.
pub trait Observer {
    fn started(&mut self, number: usize, total: usize, name: &str);
    fn finished(&mut self, step: &Step);
    /// What a person at a terminal would see (the clinician's screen, an inbox).
    fn screen(&mut self, text: &str);
    /// The story is over and the federation is being served (`--serve`): `report.serve` says
    /// how to reach it.
    fn serving(&mut self, report: &Report);
}

/// Says nothing but the report (for `--json`): printed when serving starts, or by the caller at
/// the end.
pub struct Silent;

impl Observer for Silent {
    fn started(&mut self, _: usize, _: usize, _: &str) {}
    fn finished(&mut self, _: &Step) {}
    fn screen(&mut self, _: &str) {}
    fn serving(&mut self, report: &Report) {
        use std::io::Write;
        out(&format!("{}\n", report.json()));
        let _ = std::io::stdout().flush();
    }
}

/// Prints each step to stdout as it happens.
pub struct Printer;

impl Observer for Printer {
    fn started(&mut self, number: usize, total: usize, name: &str) {
        out(&format!("\n[{number}/{total}] {name}\n"));
    }
    fn finished(&mut self, step: &Step) {
        let verdict = if step.held { "HELD" } else { "DID NOT HOLD" };
        out(&format!("      {verdict} in {} ms\n", step.ms));
        for line in step.detail.lines() {
            out(&format!("      {line}\n"));
        }
    }
    fn screen(&mut self, text: &str) {
        out("\n");
        for line in text.lines() {
            out(&format!("      | {line}\n"));
        }
    }
    fn serving(&mut self, report: &Report) {
        use std::io::Write;
        if let Some(serve) = &report.serve {
            out(&format!("\n{}\n", serve_text(serve)));
        }
        let _ = std::io::stdout().flush();
    }
}

/// What `--serve` prints for people: where to go and who to be.
pub fn serve_text(serve: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "The federation stays up for {} s (Ctrl-C to stop).", number(serve, "seconds"));
    let _ = writeln!(out, "  Clinician page:  {}", text(serve, "clinician_url"));
    let _ = writeln!(
        out,
        "  FHIR base:       {}   (Authorization: Bearer {})",
        text(serve, "fhir_base"),
        text(serve, "fhir_token")
    );
    let _ = writeln!(out, "  Council page:    {}   (Hackney's inbox, plans and import)", text(serve, "council_url"));
    for u in items(serve, "users") {
        let (user, password, role, member) = (text(u, "user"), text(u, "password"), text(u, "role"), text(u, "member"));
        let _ = writeln!(out, "  Sign in as {user:<12} password {password}  ({role} at {member})");
    }
    let flagged: Vec<String> =
        items(serve, "flagged_nhs").iter().filter_map(|n| n.as_str().map(String::from)).collect();
    let _ = writeln!(out, "  Children with a plan: {}", flagged.join(", "));
    let _ = writeln!(out, "  Nodes (use `cpis … --node CONFIG` or `--config CONFIG`):");
    for n in items(serve, "nodes") {
        let (code, role, config, api) = (text(n, "code"), text(n, "role"), text(n, "config"), text(n, "api_url"));
        let _ = writeln!(out, "    {code:<6} {role:<10} {config}  API {api}");
    }
    out
}

const STEPS: [&str; 8] = [
    "A federation of 2 hubs, 3 authorities and 2 care settings starts on loopback",
    "Hackney records a looked after child",
    "The child presents at an urgent care setting on the south coast",
    "The clinician sees the alert with Hackney's contacts",
    "Hackney's inbox shows who looked, where and when",
    "Hackney's node goes down, and a second lookup is still answered",
    "Hackney's node comes back and receives the second notification exactly once",
    "The plan ends and stops showing",
];

/// Plays the story; never panics, always ends (see the module doc). With `serve`, the
/// federation then stays up that long (or until Ctrl-C) with a setting gateway for RXH01, and
/// `observer.serving` is told how to reach it.
pub async fn run(keep: Option<PathBuf>, serve: Option<Duration>, observer: &mut dyn Observer) -> Report {
    let mut steps = Vec::new();
    let mut demo: Option<Demo> = None;
    for (i, name) in STEPS.iter().enumerate() {
        observer.started(i + 1, STEPS.len(), name);
        let started = Instant::now();
        let result = match (i, demo.as_mut()) {
            (0, _) => match Demo::start(keep.clone()).await {
                Ok((d, detail)) => {
                    demo = Some(d);
                    Ok(detail)
                }
                Err(e) => Err(e),
            },
            (_, Some(d)) if steps.iter().all(|s: &Step| s.held) => d.step(i, observer).await,
            _ => Err("not run: an earlier step did not hold".to_string()),
        };
        let step = Step {
            name: (*name).to_string(),
            held: result.is_ok(),
            ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            detail: result.unwrap_or_else(|e| e),
        };
        observer.finished(&step);
        steps.push(step);
    }
    let mut report = Report { held: steps.iter().all(|s| s.held), steps, serve: None };
    if let Some(mut d) = demo {
        if let (Some(duration), true) = (serve, report.held) {
            match d.serve(duration).await {
                Ok(value) => {
                    report.serve = Some(value);
                    observer.serving(&report);
                    tokio::select! {
                        () = tokio::time::sleep(duration) => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(e) => {
                    report.held = false;
                    report.steps.push(Step { name: "Serve the federation".into(), held: false, ms: 0, detail: e });
                }
            }
        }
        d.stop().await;
    }
    report
}

/// Tries `check` every [`POLL_INTERVAL_MS`] up to `tries` times; the first `Some` wins.
async fn poll<T, F, Fut>(tries: u32, mut check: F) -> Option<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for attempt in 1..=tries.min(POLL_TRIES_MAX) {
        if let Some(found) = check().await {
            return Some((found, attempt));
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    None
}

/// A node of the demonstration: its config (and the file it came from), and the running node
/// while it is up.
struct Slot {
    config: NodeConfig,
    file: PathBuf,
    running: Option<RunningNode>,
}

struct Member {
    code: &'static str,
    role: Role,
    name: &'static str,
    home_hubs: &'static [&'static str],
    setting_type: Option<&'static str>,
    phones: Option<(&'static str, &'static str)>,
}

/// Who is in the demonstration's federation (phone numbers from Ofcom's ranges kept for drama).
const MEMBERS: [Member; 7] = [
    Member { code: "HUBL", role: Role::Hub, name: "Hub London", home_hubs: &[], setting_type: None, phones: None },
    Member { code: "HUBS", role: Role::Hub, name: "Hub South Coast", home_hubs: &[], setting_type: None, phones: None },
    Member {
        code: "204",
        role: Role::Authority,
        name: "Hackney",
        home_hubs: &["HUBL"],
        setting_type: None,
        phones: Some(("020 7946 0204", "020 7946 0999")),
    },
    Member {
        code: "846",
        role: Role::Authority,
        name: "Brighton and Hove",
        home_hubs: &["HUBS"],
        setting_type: None,
        phones: Some(("01632 960 846", "01632 960 999")),
    },
    Member {
        code: "352",
        role: Role::Authority,
        name: "Manchester",
        home_hubs: &["HUBL", "HUBS"],
        setting_type: None,
        phones: Some(("0161 496 0352", "0161 496 0999")),
    },
    Member {
        code: "RXH01",
        role: Role::Setting,
        name: "Royal Sussex urgent treatment centre",
        home_hubs: &["HUBS"],
        setting_type: Some("urgent-treatment-centre"),
        phones: None,
    },
    Member {
        code: "RQX01",
        role: Role::Setting,
        name: "Homerton emergency department",
        home_hubs: &["HUBL"],
        setting_type: Some("emergency-department"),
        phones: None,
    },
];

/// The federation of the demonstration, and what the story has seen so far.
struct Demo {
    _temp: Option<tempfile::TempDir>,
    root: PathBuf,
    nodes: BTreeMap<&'static str, Slot>,
    settings: BTreeMap<&'static str, (SettingConfig, PathBuf)>,
    gateway: Option<RunningGateway>,
    today: Date,
    child: NhsNumber,
    lookups: Vec<LookupId>,
    answer: Option<LookupOutcome>,
}

/// A UDP port free at the moment (bound and released).
fn free_udp_port() -> Result<u16, String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    socket.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Demo {
    async fn start(keep: Option<PathBuf>) -> Result<(Demo, String), String> {
        let (temp, root) = match keep {
            Some(dir) => {
                if dir.exists() {
                    return Err(format!("{} already exists: give --keep a new folder", dir.display()));
                }
                (None, dir)
            }
            None => {
                let t = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
                let root = t.path().to_path_buf();
                (Some(t), root)
            }
        };
        let child = NhsNumber::parse(CHILD_NHS).map_err(|e| e.to_string())?;
        let mut demo = Demo {
            _temp: temp,
            root,
            nodes: BTreeMap::new(),
            settings: BTreeMap::new(),
            gateway: None,
            today: now().date(),
            child,
            lookups: Vec::new(),
            answer: None,
        };
        let begun = Instant::now();
        demo.build().map_err(|e| format!("building the federation: {e}"))?;
        let built_ms = begun.elapsed().as_millis();
        for slot in demo.nodes.values_mut() {
            let node = RunningNode::start(slot.config.clone())
                .await
                .map_err(|e| format!("starting {}: {e:#}", slot.config.code))?;
            slot.running = Some(node);
        }
        // Members enrolled early hold an early directory version: publish the newest to one
        // hub, from where it spreads to the others as they connect.
        let fed = demo.root.join("federation");
        let published = admin::publish(&fed, &demo.api("HUBL")?, None)
            .await
            .map_err(|e| format!("publishing the directory: {e}"))?;
        let rows = demo.load_plans().await?;
        let Some((_, tries)) = poll(POLL_TRIES_MAX, || demo.every_hub_has_every_feed()).await else {
            let summary = demo.replication_summary().await;
            demo.stop().await;
            return Err(format!("the hubs did not replicate every authority's feed in time: {summary}"));
        };
        let detail = format!(
            "Keys and directory (version {}) made in {built_ms} ms in {}.\n\
             Nodes: HUBL, HUBS (hubs); 204 Hackney, 846 Brighton and Hove, 352 Manchester (authorities).\n\
             Settings: RXH01 Royal Sussex urgent treatment centre (home hub HUBS), RQX01 Homerton emergency department (home hub HUBL).\n\
             Directory version {} published to HUBL (it held version {}) and spread from there.\n\
             {rows} plans imported by CSV; both hubs hold every authority's feed (after {tries} polls).",
            MEMBERS.len() + 1,
            demo.root.display(),
            published.node_version,
            published.node_version_before,
        );
        Ok((demo, detail))
    }

    /// Creates the federation and enrols every member, through the administrator's code.
    fn build(&mut self) -> Result<(), admin::AdminError> {
        let fed = self.root.join("federation");
        let create = CreateOptions {
            dir: fed.clone(),
            name: "Demonstration federation".into(),
            roots: 3,
            threshold: 2,
            valid_days: 30,
        };
        admin::create(&create, now())?;
        for m in &MEMBERS {
            let out = self.root.join("nodes").join(m.code);
            let addresses = match m.role {
                Role::Hub => vec![format!("127.0.0.1:{}", free_udp_port().map_err(admin::AdminError::Invalid)?)],
                _ => vec![],
            };
            let options = EnrolOptions {
                dir: fed.clone(),
                roots_dir: None,
                role: m.role,
                code: m.code.into(),
                name: m.name.into(),
                addresses,
                home_hubs: m.home_hubs.iter().map(|h| (*h).to_string()).collect(),
                setting_type: m.setting_type.map(String::from),
                contact_name: None,
                office_phone: m.phones.map(|p| p.0.to_string()),
                out_of_hours_phone: m.phones.map(|p| p.1.to_string()),
                listen: None,
                out,
                key_valid_days: 30,
                valid_days: 30,
                propose: None,
            };
            let enrolled = admin::enrol(&options, now())?;
            self.register(m, &enrolled.config_file)?;
        }
        Ok(())
    }

    fn register(&mut self, m: &Member, config_file: &Path) -> Result<(), admin::AdminError> {
        if m.role == Role::Setting {
            let mut config = SettingConfig::load(config_file)?;
            config.hub_timeout_ms = 3_000;
            self.settings.insert(m.code, (config, config_file.to_path_buf()));
        } else {
            let mut config = NodeConfig::load(config_file)?;
            config.timing = Timing::short();
            if m.code == "204" {
                // Hackney's pages, for `--serve` (their people are made when serving starts).
                config.pages = Some(cpis_node::config::PagesConfig::default());
            }
            self.nodes.insert(m.code, Slot { config, file: config_file.to_path_buf(), running: None });
        }
        Ok(())
    }

    fn api(&self, code: &str) -> Result<NodeApi, String> {
        let node =
            self.nodes.get(code).and_then(|s| s.running.as_ref()).ok_or_else(|| format!("{code} is not running"))?;
        Ok(NodeApi::new(node.api_addr(), node.api_token()))
    }

    /// Sets each authority's contacts and imports its plans; returns how many rows were applied.
    async fn load_plans(&self) -> Result<u64, String> {
        let mut applied = 0;
        for m in MEMBERS.iter().filter(|m| m.role == Role::Authority) {
            let api = self.api(m.code)?;
            if let Some((office, out_of_hours)) = m.phones {
                let contacts = cpis_protocol::records::Contacts {
                    name: format!("{} children's social care", m.name),
                    office_phone: office.into(),
                    out_of_hours_phone: out_of_hours.into(),
                };
                council::set_contacts(&api, &contacts).await.map_err(|e| e.to_string())?;
            }
            let report = council::import(&api, plans_csv(m.code, self.today).into_bytes(), false)
                .await
                .map_err(|e| e.to_string())?;
            if number(&report, "refused") > 0 {
                return Err(format!("{}'s import refused rows: {report}", m.name));
            }
            applied += number(&report, "applied");
        }
        Ok(applied)
    }

    async fn status(&self, code: &str) -> Option<Value> {
        self.api(code).ok()?.get("/status").await.ok()
    }

    /// Whether every hub holds `origin`'s feed up to `seq`.
    async fn hubs_hold(&self, origin: &str, seq: u64) -> bool {
        for hub in ["HUBL", "HUBS"] {
            let Some(status) = self.status(hub).await else { return false };
            let held = items(&status, "origins").iter().any(|o| text(o, "origin") == origin && number(o, "seq") >= seq);
            if !held {
                return false;
            }
        }
        true
    }

    /// Whether every hub has heard within the last minute that its copy of `origin` is current.
    async fn hubs_know_fresh(&self, origin: &str) -> bool {
        for hub in ["HUBL", "HUBS"] {
            let Some(status) = self.status(hub).await else { return false };
            let fresh =
                items(&status, "origins").iter().any(|o| text(o, "origin") == origin && number(o, "lag_ms") < 60_000);
            if !fresh {
                return false;
            }
        }
        true
    }

    async fn every_hub_has_every_feed(&self) -> Option<()> {
        for m in MEMBERS.iter().filter(|m| m.role == Role::Authority) {
            let seq = number(&self.status(m.code).await?, "feed_seq");
            if seq == 0 || !self.hubs_hold(m.code, seq).await {
                return None;
            }
        }
        Some(())
    }

    /// What each authority has published and each hub holds, for a failure message.
    async fn replication_summary(&self) -> String {
        let mut parts = Vec::new();
        for code in self.nodes.keys() {
            let Some(status) = self.status(code).await else {
                parts.push(format!("{code}: no status"));
                continue;
            };
            let held: Vec<String> = items(&status, "origins")
                .iter()
                .map(|o| format!("{}@{}", text(o, "origin"), number(o, "seq")))
                .collect();
            let peers: Vec<String> =
                items(&status, "peers").iter().map(|p| format!("{}:{}", text(p, "code"), text(p, "state"))).collect();
            parts.push(format!(
                "{code} feed_seq={} holds [{}] peers [{}]",
                number(&status, "feed_seq"),
                held.join(" "),
                peers.join(" ")
            ));
        }
        parts.join("; ")
    }

    /// Notifications waiting for `authority`, per hub.
    async fn waiting_at_hubs(&self, authority: &str) -> Option<[(&'static str, u64); 2]> {
        let mut out = [("HUBL", 0), ("HUBS", 0)];
        for (hub, waiting) in out.iter_mut() {
            let status = self.status(hub).await?;
            *waiting = items(&status, "notifications_waiting")
                .iter()
                .filter(|w| text(w, "authority") == authority)
                .map(|w| number(w, "waiting"))
                .sum::<u64>();
        }
        Some(out)
    }

    /// Notifications waiting at the hubs for `authority`, in all.
    async fn waiting_for(&self, authority: &str) -> Option<u64> {
        Some(self.waiting_at_hubs(authority).await?.iter().map(|(_, n)| n).sum())
    }

    async fn look(&self, setting: &str, who: (&str, &str, &str)) -> Result<LookupOutcome, String> {
        let (config, _) = self.settings.get(setting).ok_or_else(|| format!("no setting {setting}"))?;
        let person = Person { id: who.0.into(), name: who.1.into(), role: who.2.into() };
        let request = LookupRequest { nhs: self.child, person };
        client::lookup(config, request).await.map_err(|e| format!("the lookup at {setting} failed: {e}"))
    }

    async fn step(&mut self, i: usize, observer: &mut dyn Observer) -> Result<String, String> {
        let limit = Duration::from_millis(STEP_TIMEOUT_MS);
        let run = async {
            match i {
                1 => self.record_child().await,
                2 => self.first_lookup().await,
                3 => self.alert_shown(observer),
                4 => self.inbox_shows_lookup(observer).await,
                5 => self.owner_down_lookup().await,
                6 => self.owner_back_once().await,
                _ => self.plan_ends().await,
            }
        };
        tokio::time::timeout(limit, run)
            .await
            .unwrap_or_else(|_| Err(format!("did not finish within {STEP_TIMEOUT_MS} ms")))
    }

    async fn record_child(&mut self) -> Result<String, String> {
        let api = self.api("204")?;
        let plan = NewPlan {
            reference: PlanRef::parse(CHILD_PLAN).map_err(|e| e.to_string())?,
            nhs: self.child,
            plan_type: PlanType::LookedAfter,
            start: self.today.plus_days(-IN_CARE_SINCE_DAYS),
            end: None,
            due: None,
        };
        let reply = council::add_plan(&api, &plan).await.map_err(|e| e.to_string())?;
        let seq = number(&self.status("204").await.ok_or("Hackney's status is unavailable")?, "feed_seq");
        let started = Instant::now();
        let (_, tries) = poll(POLL_TRIES_MAX, || async { self.hubs_hold("204", seq).await.then_some(()) })
            .await
            .ok_or("the plan did not reach both hubs in time")?;
        let replicated_ms = started.elapsed().as_millis();
        // A hub knows how fresh its copy is once a peer that heard from Hackney says so.
        poll(POLL_TRIES_MAX, || async { self.hubs_know_fresh("204").await.then_some(()) })
            .await
            .ok_or("the hubs did not learn how fresh Hackney's feed is in time")?;
        Ok(format!(
            "POST /plans at Hackney's node: {} (plan {CHILD_PLAN}, looked after child since {}, NHS number {}).\n\
             Both hubs hold Hackney's feed up to its newest entry under its signed head after {replicated_ms} ms ({tries} polls), and know it to be current after {} ms.",
            text(&reply, "result"),
            plan.start,
            self.child.grouped(),
            started.elapsed().as_millis()
        ))
    }

    async fn first_lookup(&mut self) -> Result<String, String> {
        let started = Instant::now();
        let outcome = self.look("RXH01", ("N4521", "Sam Patel", "Staff nurse")).await?;
        let took = started.elapsed().as_millis();
        if outcome.answer.hub.as_str() != "HUBS" {
            return Err(format!("answered by {} instead of the setting's home hub HUBS", outcome.answer.hub));
        }
        let detail = format!(
            "Sam Patel (staff nurse) at the Royal Sussex urgent treatment centre (RXH01) looks up NHS number {}.\n\
             Asked its home hub HUBS (Hackney's home hub is HUBL): answered and verified in {took} ms, lookup {}.",
            self.child.grouped(),
            outcome.lookup_id
        );
        self.lookups.push(outcome.lookup_id);
        self.answer = Some(outcome);
        Ok(detail)
    }

    fn alert_shown(&mut self, observer: &mut dyn Observer) -> Result<String, String> {
        let outcome = self.answer.as_ref().ok_or("no answer to show")?;
        observer.screen(&care::lookup_text(outcome, now()));
        let (council, _) = outcome
            .answer
            .plans()
            .find(|(a, p)| a.code.as_str() == "204" && p.plan_type == PlanType::LookedAfter)
            .ok_or("the answer shows no looked after child plan from Hackney")?;
        let contacts = council.contacts.as_ref().ok_or("the alert carries no contacts")?;
        if contacts.office_phone != "020 7946 0204" || contacts.out_of_hours_phone != "020 7946 0999" {
            return Err(format!("the alert shows other phones than Hackney's: {contacts:?}"));
        }
        let as_of = council.as_of().filter(|_| council.checked()).ok_or("Hackney's data was not checked as fresh")?;
        let checked = outcome.answer.authorities.iter().filter(|a| a.checked()).count();
        if checked != outcome.answer.authorities.len() {
            return Err(format!("only {checked} of {} councils could be checked", outcome.answer.authorities.len()));
        }
        Ok(format!(
            "Alert: looked after child, {} ({}); office hours {}, out of hours {}; Hackney's signed data as of {}.\n\
             Every council's signed head was checked ({checked} of {checked}): the plans shown are all there are.",
            council.name,
            council.code,
            contacts.office_phone,
            contacts.out_of_hours_phone,
            crate::render::ago(now(), as_of)
        ))
    }

    /// Polls Hackney's inbox until it holds `lookup_id`; returns the notification and the tries.
    async fn notification(&self, lookup_id: LookupId) -> Result<(Value, u32), String> {
        let api = self.api("204")?;
        let id = lookup_id.to_hex();
        poll(POLL_TRIES_MAX, || async {
            let inbox = council::notifications(&api, false, 100, 0).await.ok()?;
            items(&inbox, "notifications").iter().find(|n| text(n, "lookup_id") == id).cloned()
        })
        .await
        .ok_or_else(|| format!("lookup {id} did not reach Hackney's inbox in time"))
    }

    async fn inbox_shows_lookup(&mut self, observer: &mut dyn Observer) -> Result<String, String> {
        let id = *self.lookups.first().ok_or("no lookup was made")?;
        let (n, tries) = self.notification(id).await?;
        observer.screen(&council::inbox_text(&json!({ "notifications": [n.clone()] }), false));
        let person = n.get("person").cloned().unwrap_or_default();
        let setting = n.get("setting").cloned().unwrap_or_default();
        if text(&person, "name") != "Sam Patel" || text(&setting, "code") != "RXH01" {
            return Err(format!(
                "the notification names {} at {} instead of Sam Patel at RXH01",
                text(&person, "name"),
                text(&setting, "code")
            ));
        }
        Ok(format!(
            "GET /notifications at Hackney's node (after {tries} polls): {} ({}) at {} ({}) looked at {}; matched plan {}.",
            text(&person, "name"),
            text(&person, "role"),
            text(&setting, "name"),
            text(&setting, "code"),
            text(&n, "looked_at"),
            items(&n, "matched").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
        ))
    }

    async fn owner_down_lookup(&mut self) -> Result<String, String> {
        // The first notification's receipt travels back to the hubs before Hackney goes down.
        let (_, receipt_polls) = poll(POLL_TRIES_MAX, || async { self.waiting_for("204").await.filter(|w| *w == 0) })
            .await
            .ok_or("the hubs never saw Hackney's receipt for the first notification")?;
        let slot = self.nodes.get_mut("204").ok_or("no Hackney node")?;
        let node = slot.running.take().ok_or("Hackney's node is not running")?;
        node.shutdown().await;
        let started = Instant::now();
        let outcome = self.look("RXH01", ("D7710", "Dr Jo Evans", "Emergency medicine registrar")).await?;
        let took = started.elapsed().as_millis();
        if !outcome.answer.plans().any(|(a, _)| a.code.as_str() == "204") {
            return Err("the answer while Hackney is down lacks Hackney's plan".into());
        }
        self.lookups.push(outcome.lookup_id);
        let (waiting, _) = poll(POLL_TRIES_MAX, || async {
            self.waiting_at_hubs("204").await.filter(|w| w.iter().any(|(_, n)| *n >= 1))
        })
        .await
        .ok_or("no hub holds the notification for Hackney")?;
        let waiting: Vec<String> = waiting.iter().map(|(hub, n)| format!("{n} at {hub}")).collect();
        Ok(format!(
            "Hackney's receipt for the first notification reached the hubs ({receipt_polls} polls); then Hackney's node was shut down.\n\
             Dr Jo Evans at RXH01 looks the child up again: answered by {} in {took} ms with Hackney's plan and contacts,\n\
             from the hub's replica. The notification (lookup {}) waits, stored, for Hackney: {}.",
            outcome.answer.hub,
            outcome.lookup_id,
            waiting.join(", ")
        ))
    }

    async fn owner_back_once(&mut self) -> Result<String, String> {
        let slot = self.nodes.get_mut("204").ok_or("no Hackney node")?;
        let started = Instant::now();
        let node = RunningNode::start(slot.config.clone()).await.map_err(|e| format!("restarting Hackney: {e:#}"))?;
        slot.running = Some(node);
        let second = *self.lookups.get(1).ok_or("no second lookup was made")?;
        let (_, tries) = self.notification(second).await?;
        let arrived = started.elapsed().as_millis();
        // Once no hub holds anything for Hackney, nothing more can be delivered: count then.
        poll(POLL_TRIES_MAX, || async { self.waiting_for("204").await.filter(|w| *w == 0) })
            .await
            .ok_or("the hubs still hold notifications for Hackney")?;
        let inbox = council::notifications(&self.api("204")?, false, 100, 0).await.map_err(|e| e.to_string())?;
        let all = items(&inbox, "notifications");
        let count = |id: LookupId| all.iter().filter(|n| text(n, "lookup_id") == id.to_hex()).count();
        let (first_n, second_n) = (count(self.lookups[0]), count(second));
        if first_n != 1 || second_n != 1 || all.len() != 2 {
            return Err(format!(
                "Hackney's inbox holds {} notifications: the first {first_n} times, the second {second_n} times",
                all.len()
            ));
        }
        Ok(format!(
            "Hackney's node restarted from its store; the second notification arrived {arrived} ms after the restart ({tries} polls).\n\
             The hubs' queues for Hackney are empty (receipts returned), and Hackney's inbox holds exactly 2 notifications, each once."
        ))
    }

    async fn plan_ends(&mut self) -> Result<String, String> {
        let api = self.api("204")?;
        let reference = PlanRef::parse(CHILD_PLAN).map_err(|e| e.to_string())?;
        let end = self.today.plus_days(-ENDED_DAYS_AGO);
        let reply = council::end_plan(&api, &reference, end).await.map_err(|e| e.to_string())?;
        // The plan is past its window: Hackney publishes its removal; the hubs drop it.
        let seq = number(&self.status("204").await.ok_or("Hackney's status is unavailable")?, "feed_seq");
        let started = Instant::now();
        poll(POLL_TRIES_MAX, || async { self.hubs_hold("204", seq).await.then_some(()) })
            .await
            .ok_or("the removal did not reach both hubs in time")?;
        let removed_ms = started.elapsed().as_millis();
        let mut checks = Vec::new();
        for (setting, hub) in [("RQX01", "HUBL"), ("RXH01", "HUBS")] {
            let outcome = self.look(setting, ("S0001", "Demo checker", "Audit")).await?;
            if outcome.answer.hub.as_str() != hub || outcome.answer.plans().any(|(a, _)| a.code.as_str() == "204") {
                return Err(format!("hub {hub} still shows the plan"));
            }
            checks.push(format!("{hub}: {}", crate::care::result_name(&outcome)));
        }
        Ok(format!(
            "Hackney ends plan {CHILD_PLAN} ({}) with an end date of {end}, {ENDED_DAYS_AGO} days ago: a plan is shown for 365 days after its end,\n\
             so this one is past its visibility window (a plan ended today would still show for a year; this demo uses an old end date to show the rule\n\
             at once, rather than withdrawing the plan, which is for plans entered in error). Hackney published its removal; both hubs held it after {removed_ms} ms.\n\
             A lookup at each hub now: {}",
            text(&reply, "result"),
            checks.join("; ")
        ))
    }

    /// Starts RXH01's setting gateway with demonstration people and a calling system, and says
    /// how to reach everything (the `serve` object of the report).
    async fn serve(&mut self, duration: Duration) -> Result<Value, String> {
        let (config, config_file) = self.settings.get("RXH01").cloned().ok_or("no setting RXH01")?;
        let people = [
            ("sam.patel", "Sam Patel", "Staff nurse", AccountRole::Clinician),
            ("lee.jones", "Lee Jones", "Named nurse for safeguarding", AccountRole::SafeguardingLead),
            ("ari.admin", "Ari Khan", "Gateway administrator", AccountRole::Administrator),
        ];
        let mut accounts = Accounts::default();
        let mut users = Vec::new();
        for (user, name, job, role) in people {
            let password = crate::gateway::random_password();
            accounts.add_user(user, name, job, role, &password).map_err(|e| e.to_string())?;
            users.push(json!({ "user": user, "password": password, "role": role.name(), "member": "RXH01" }));
        }
        let token = accounts
            .add_system(
                "DEMO-EHR",
                "Demonstration clinical system",
                &cpis_node::accounts::Access::ALL,
                30,
                now().date(),
            )
            .map_err(|e| e.to_string())?;
        accounts.save(&config.gateway.users_path()).map_err(|e| e.to_string())?;
        let hackney = self.nodes.get("204").ok_or("no node 204")?;
        let council_url = hackney.running.as_ref().and_then(|n| n.pages_url()).map(|u| format!("{u}/"));
        let mut council = Accounts::default();
        let council_people = [
            ("ali.khan", "Ali Khan", "Duty social worker", AccountRole::SocialWorker),
            ("jo.smith", "Jo Smith", "Team manager", AccountRole::TeamManager),
        ];
        for (user, name, job, role) in council_people {
            let password = crate::gateway::random_password();
            council.add_user(user, name, job, role, &password).map_err(|e| e.to_string())?;
            users.push(json!({ "user": user, "password": password, "role": role.name(), "member": "204" }));
        }
        council.save(&hackney.config.users_path()).map_err(|e| e.to_string())?;
        let gateway = RunningGateway::start(config).await.map_err(|e| format!("starting RXH01's gateway: {e:#}"))?;
        let mut nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|(code, slot)| {
                let api = slot.running.as_ref().map(|n| format!("http://{}", n.api_addr()));
                json!({ "code": code, "role": slot.config.role.role().name(), "config": slot.file, "api_url": api })
            })
            .collect();
        for (code, (_, file)) in &self.settings {
            let api = (*code == "RXH01").then(|| gateway.url().to_string());
            nodes.push(json!({ "code": code, "role": "setting", "config": file, "api_url": api }));
        }
        let n = test_numbers();
        let value = json!({
            "seconds": duration.as_secs(),
            "clinician_url": format!("{}/", gateway.url()),
            "fhir_base": format!("{}/FHIR/R4", gateway.url()),
            "fhir_token": token,
            "council_url": council_url,
            "users": users,
            "nodes": nodes,
            "flagged_nhs": [&n[0], &n[2], &n[3], &n[5], &n[8]],
            "setting_config": config_file,
        });
        self.gateway = Some(gateway);
        Ok(value)
    }

    /// Stops every node at once, waiting at most [`STEP_TIMEOUT_MS`] for them to finish.
    async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        let stops: Vec<_> = self
            .nodes
            .values_mut()
            .filter_map(|slot| slot.running.take())
            .map(|node| tokio::spawn(node.shutdown()))
            .collect();
        let all = async {
            for stop in stops {
                let _ = stop.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), all).await;
    }
}

/// Ten valid NHS numbers of the 999 test range, from their first nine digits.
fn test_numbers() -> Vec<String> {
    let mut out = Vec::new();
    let mut stem = 999_000_101u64;
    while out.len() < 12 {
        let found = (0..10).find_map(|d| NhsNumber::parse(&format!("{stem:09}{d}")).ok());
        out.extend(found.map(NhsNumber::digits));
        stem += 37;
    }
    out
}

/// A realistic CSV export for each authority, dated around `today`.
fn plans_csv(code: &str, today: Date) -> String {
    let n = test_numbers();
    let d = |days: i32| today.plus_days(days).to_string();
    let rows: Vec<String> = match code {
        "204" => vec![
            format!("CPP-204-0001,{},CPP,{},,,", n[0], d(-200)),
            format!("CPP-204-0002,{},CPP,{},{},,", n[1], d(-420), d(-60)),
            format!("LAC-204-0003,{},LAC,{},,,", n[2], d(-1500)),
            format!("UCPP-204-0004,{},UCPP,{},,{},", n[3], d(-90), d(120)),
            format!("CPP-204-0005,{},CPP,{},,,", n[4], d(-30)),
        ],
        "846" => vec![
            format!("CPP-846-0001,{},CPP,{},,,", n[0], d(-20)),
            format!("LAC-846-0002,{},LAC,{},,,", n[5], d(-700)),
            format!("CPP-846-0003,{},CPP,{},,,", n[6], d(-150)),
            format!("UCPP-846-0004,{},UCPP,{},,{},", n[7], d(-60), d(30)),
        ],
        _ => vec![
            format!("LAC-352-0001,{},LAC,{},,,", n[8], d(-2000)),
            format!("CPP-352-0002,{},CPP,{},,,", n[9], d(-400)),
            format!("CPP-352-0003,{},CPP,{},{},,", n[10], d(-800), d(-500)),
            format!("LAC-352-0004,{},LAC,{},,,", n[11], d(-100)),
        ],
    };
    format!("reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n{}\n", rows.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_plans_are_all_valid_rows() {
        let numbers = test_numbers();
        assert_eq!(numbers.len(), 12);
        let mut unique = numbers.clone();
        unique.dedup();
        assert_eq!(unique.len(), 12);
        let today = Date::parse("2026-11-24").unwrap();
        for code in ["204", "846", "352"] {
            let rows = cpis_node::import::parse_csv(plans_csv(code, today).as_bytes()).unwrap();
            assert!(
                rows.iter().all(|r| r.plan.is_ok()),
                "{code}: {:?}",
                rows.iter().map(|r| &r.plan).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn the_report_has_the_documented_shape() {
        let report = Report {
            held: true,
            steps: vec![Step { name: "a".into(), held: true, ms: 3, detail: "d".into() }],
            serve: None,
        };
        assert_eq!(
            report.json(),
            json!({"held": true, "steps": [{"name": "a", "held": true, "ms": 3, "detail": "d"}]})
        );
    }
}
