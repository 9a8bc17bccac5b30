//! The clinician page and the council's pages in a real browser: headless Chromium driven through
//! ChromeDriver signs in, searches, sees the alert, sees a stopped council as not confirmed and
//! every hub down as "could not check"; and at the council a social worker acknowledges the
//! notification of that lookup and is kept from the import, which a team manager uses with a file
//! with broken rows. A screenshot of each step goes under `target/browser-screenshots/` (01–10 the
//! gateway's, 11 on the council's) and axe-core checks each kind of page. `.ci/browser` installs
//! what they need and runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::accounts::{AccountRole, Accounts};
use cpis_node::config::PagesConfig;
use cpis_node::gateway::RunningGateway;
use cpis_node::runtime::RunningNode;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::records::SettingType;
use cpis_tests::webdriver::Browser;
use cpis_tests::{Fed, api_json, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// In Hackney's care and on Newham's child protection plan: two councils.
const TWO_COUNCILS: &str = "9434765919";
const PASSWORD: &str = "correct horse battery staple";

/// One browser test at a time: two Chromiums and two federations at once would make the gateway
/// test's timings (heads stale after 4 s, hubs given 1.5 s) depend on the other test's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    fed: Fed,
    nodes: BTreeMap<&'static str, RunningNode>,
    gateway: RunningGateway,
}

/// Two hubs, Hackney and Newham with a plan each for one child and their phone numbers, and a
/// gateway for RXH01 with a clinician. Heads go stale after 4 s. With `council_pages`, Hackney
/// also serves its pages, to a social worker and a team manager.
async fn world(council_pages: bool) -> World {
    let spec = FederationSpec::new("browser")
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS", "HUBN"]);
    let fed = Fed::create(spec);
    let mut nodes = BTreeMap::new();
    for code in ["HUBN", "HUBS", "204", "316"] {
        let node = if code == "204" && council_pages {
            fed.start_with(code, |config| {
                let mut people = Accounts::default();
                let social_worker = ("ali.khan", "Ali Khan", "Duty social worker", AccountRole::SocialWorker);
                let manager = ("jo.smith", "Jo Smith", "Team manager", AccountRole::TeamManager);
                for (user, name, job, role) in [social_worker, manager] {
                    people.add_user(user, name, job, role, PASSWORD).unwrap();
                }
                people.save(&config.users_path()).unwrap();
                config.pages = Some(PagesConfig::default());
            })
            .await
        } else {
            fed.start(code).await
        };
        nodes.insert(code, node);
    }
    let plans = [
        ("204", json!({ "reference": "LAC-204-1", "nhs": TWO_COUNCILS, "plan_type": "LAC", "start": "2025-03-01" })),
        ("316", json!({ "reference": "CPP-316-9", "nhs": TWO_COUNCILS, "plan_type": "CPP", "start": "2026-01-05" })),
    ];
    for (code, plan) in plans {
        let (status, answer) = api_json(&fed, code, "POST", "/plans", Some(plan)).await;
        assert_eq!(status, 200, "{answer}");
    }
    cpis_tests::two_councils_with_contacts_at_both_hubs(&fed).await;
    let mut config = fed.setting_config("RXH01");
    config.gateway.data_dir = fed.home("RXH01").join("gateway");
    config.stale_after_ms = 4_000;
    config.hub_timeout_ms = 1_500;
    let mut accounts = Accounts::default();
    accounts.add_user("sam.patel", "Sam Patel", "Staff nurse", AccountRole::Clinician, PASSWORD).unwrap();
    accounts.save(&config.gateway.users_path()).unwrap();
    let gateway = RunningGateway::start(config).await.expect("the gateway starts");
    World { fed, nodes, gateway }
}

impl World {
    /// Stops the nodes still running, then the gateway.
    async fn shutdown(self) {
        for node in self.nodes.into_values() {
            node.shutdown().await;
        }
        self.gateway.shutdown().await;
    }
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// axe-core, which `.ci/browser` puts in `target/axe/`.
fn axe_source() -> String {
    let path = target_dir().join("axe").join("axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("axe-core is missing at {} ({e}): run .ci/browser, which fetches it", path.display())
    })
}

/// Runs axe-core on the current page (injecting it first) and returns its results, trimmed.
async fn run_axe(browser: &Browser, axe: &str) -> Value {
    // The source is the body of the script itself, not a string evaluated by it: the page's CSP
    // (`script-src 'none'`) forbids eval, but not what the driver itself runs.
    let loaded = browser.execute(&format!("{axe}\n;return typeof window.axe;"), vec![]).await.expect("axe-core loads");
    assert_eq!(loaded, "object", "axe-core did not load into the page");
    let script = r#"
        const done = arguments[arguments.length - 1];
        window.axe.run(document, { resultTypes: ['violations'] }).then(
            (r) => done({
                violations: r.violations.map((v) => ({
                    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                    nodes: v.nodes.map((n) => ({ target: n.target, html: n.html, summary: n.failureSummary })),
                })),
                passes: r.passes.length,
                incomplete: r.incomplete.map((i) => i.id),
                inapplicable: r.inapplicable.length,
            }),
            (e) => done({ error: String(e) }),
        );
    "#;
    let results = browser.execute_async(script, vec![]).await.expect("axe.run answers");
    assert!(results["error"].is_null(), "axe.run failed: {}", results["error"]);
    results
}

/// The steps' screenshots, numbered from the start of a test's own range of numbers.
struct Steps<'a> {
    browser: &'a Browser,
    dir: PathBuf,
    numbers: RangeInclusive<usize>,
    taken: Vec<String>,
}

impl Steps<'_> {
    /// Screenshots numbered within `numbers`; the last run's screenshots with those numbers go
    /// (and no others: each test has its own numbers).
    fn new(browser: &Browser, numbers: RangeInclusive<usize>) -> Steps<'_> {
        let dir = target_dir().join("browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        for old in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = old.file_name().to_string_lossy().to_string();
            let number = name.split('-').next().and_then(|n| n.parse::<usize>().ok());
            if name.ends_with(".png") && number.is_some_and(|n| numbers.contains(&n)) {
                std::fs::remove_file(old.path()).unwrap();
            }
        }
        Steps { browser, dir, numbers, taken: vec![] }
    }

    async fn shot(&mut self, name: &str) {
        let number = self.numbers.start() + self.taken.len();
        assert!(self.numbers.contains(&number), "more screenshots than the numbers {:?}", self.numbers);
        let file = format!("{number:02}-{name}.png");
        self.browser.full_page_screenshot(&self.dir.join(&file), 6_000).await.expect("a screenshot");
        self.taken.push(file);
    }
}

/// Prints axe's findings on each page; the serious and critical ones, in full.
fn serious_violations(accessibility: &[(&str, Value)]) -> Vec<String> {
    let mut serious = vec![];
    for (page, results) in accessibility {
        let violations = results["violations"].as_array().cloned().unwrap_or_default();
        let summary: Vec<String> = violations
            .iter()
            .map(|v| format!("{} ({}, {} nodes)", v["id"], v["impact"], v["nodes"].as_array().map_or(0, Vec::len)))
            .collect();
        println!(
            "axe on {page}: {} violations [{}], {} rules passed, incomplete {}, {} inapplicable",
            violations.len(),
            summary.join(", "),
            results["passes"],
            results["incomplete"],
            results["inapplicable"]
        );
        for v in violations {
            if v["impact"] == "serious" || v["impact"] == "critical" {
                serious.push(format!("{page}: {}", serde_json::to_string_pretty(&v).unwrap()));
            }
        }
    }
    serious
}

/// Waits until an element matching `css` has text containing `wanted`; returns that text.
async fn wait_for_text(browser: &Browser, css: &str, wanted: &str, timeout: Duration) -> String {
    let started = Instant::now();
    for _ in 0..(timeout.as_millis() / 100).max(1) {
        for element in browser.find_all(css).await.unwrap_or_default() {
            if let Ok(text) = browser.text(&element).await
                && text.contains(wanted)
            {
                return text;
            }
        }
        if started.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = browser.url().await.unwrap_or_default();
    let source = browser.source().await.unwrap_or_default();
    panic!("no {css} with text {wanted:?} after {timeout:?} at {url}:\n{source}");
}

/// Clicks the first element matching `css`.
async fn click(browser: &Browser, css: &str) {
    let element = browser.find(css).await.unwrap_or_else(|e| panic!("nothing to click: {e:#}"));
    browser.click(&element).await.unwrap();
}

/// The text of the first element matching `css`.
async fn text_of(browser: &Browser, css: &str) -> String {
    browser.text(&browser.find(css).await.unwrap()).await.unwrap()
}

/// Types a user name and the password into the sign-in form (the gateway's and the council's are
/// alike) and presses Sign in.
async fn sign_in(browser: &Browser, user: &str) {
    browser.send_keys(&browser.find("#user").await.unwrap(), user).await.unwrap();
    browser.send_keys(&browser.find("#password").await.unwrap(), PASSWORD).await.unwrap();
    click(browser, "form[action='/sign-in'] button[type='submit']").await;
}

/// Types an NHS number into the search form and presses Check.
async fn search(browser: &Browser, nhs: &str) {
    let field = browser.find("#nhs").await.expect("the NHS number field");
    browser.clear(&field).await.unwrap();
    browser.send_keys(&field, nhs).await.unwrap();
    click(browser, "form[action='/search'] button[type='submit']").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and ChromeDriver: run .ci/browser"]
async fn clinician_page_in_chromium__sign_in_search_alert_council_down_hubs_down__and_axe_finds_nothing_serious() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let axe = axe_source();
    let mut world = world(false).await;
    let browser = Browser::start().await.expect("Chromium starts under ChromeDriver");
    let mut steps = Steps::new(&browser, 1..=10);
    let mut accessibility: Vec<(&str, Value)> = vec![];
    let wait = Duration::from_secs(30);

    // (a) Signed out, the gateway sends the browser to sign in; typing and clicking signs in.
    browser.goto(&format!("{}/", world.gateway.url())).await.unwrap();
    wait_for_text(&browser, "h1", "Sign in", wait).await;
    assert!(browser.url().await.unwrap().ends_with("/sign-in"), "sent to sign in");
    assert!(browser.title().await.unwrap().starts_with("Sign in"));
    steps.shot("sign-in").await;
    accessibility.push(("sign-in", run_axe(&browser, &axe).await));
    sign_in(&browser, "sam.patel").await;
    wait_for_text(&browser, "h1", "Check for a child protection alert", wait).await;
    wait_for_text(&browser, ".nhsuk-header__account-item", "Sam Patel (Staff nurse)", wait).await;
    steps.shot("search").await;
    accessibility.push(("search", run_axe(&browser, &axe).await));

    // (b) A number whose check digit is wrong: the error summary names the rule.
    search(&browser, "943 476 5918").await;
    let summary = wait_for_text(&browser, ".nhsuk-error-summary", "There is a problem", wait).await;
    assert!(summary.contains("check digit"), "the rule is named: {summary}");
    let message = wait_for_text(&browser, "#nhs-error", "check digit", wait).await;
    assert!(message.starts_with("Error:"), "the field's message: {message}");
    steps.shot("invalid-number").await;
    accessibility.push(("invalid-number", run_axe(&browser, &axe).await));

    // (c) The flagged child: both councils' alerts with their phone numbers.
    search(&browser, TWO_COUNCILS).await;
    wait_for_text(&browser, "h1", "943 476 5919", wait).await;
    let main =
        wait_for_text(&browser, "main", "Child care alert: This child is looked after by a local authority", wait)
            .await;
    assert!(main.contains("Child care alert: This child has a child protection plan"), "{main}");
    for phone in ["020 8356 5500", "020 8356 2710", "020 8430 2000", "020 8430 2001"] {
        assert!(main.contains(phone), "{phone} is shown: {main}");
    }
    assert!(main.contains("Checked against the council's signed data as of"), "{main}");
    assert!(main.contains("Hackney, Newham will be told"), "{main}");
    assert!(browser.find_all("#could-not-check").await.unwrap().is_empty(), "every council checked");
    steps.shot("alert").await;
    accessibility.push(("alert", run_axe(&browser, &axe).await));

    // (f) Newham learns who looked: the person signed in.
    wait_until("Newham's inbox names Sam Patel", Duration::from_secs(20), || async {
        let (_, inbox) = api_json(&world.fed, "316", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["person"]["name"] == "Sam Patel"))
    })
    .await;

    // (d) Hackney stops: its plan is still shown, not confirmed, with a warning naming it.
    world.nodes.remove("204").unwrap().shutdown().await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    search(&browser, TWO_COUNCILS).await;
    let warning = wait_for_text(&browser, "#could-not-check", "Could not check 1 council", wait).await;
    assert!(warning.contains("Hackney (204)") && warning.contains("020 8356 2710"), "{warning}");
    let main = wait_for_text(&browser, "main", "NOT CONFIRMED since", wait).await;
    assert!(main.contains("LAC-204-1") && main.contains("Hackney (204)"), "Hackney's plan is still shown: {main}");
    assert!(main.contains("Child care alert: This child is looked after by a local authority"), "{main}");
    assert!(main.contains("CPP-316-9"), "Newham's plan too: {main}");
    steps.shot("council-not-confirmed").await;
    accessibility.push(("council-not-confirmed", run_axe(&browser, &axe).await));

    // (e) Every hub stops: "could not check", and nothing claimed about the child.
    for hub in ["HUBN", "HUBS"] {
        world.nodes.remove(hub).unwrap().shutdown().await;
    }
    let started = Instant::now();
    search(&browser, TWO_COUNCILS).await;
    // (Waiting for text the previous page did not have, so as not to read that page.)
    let down = wait_for_text(&browser, "#could-not-check", "Nothing is known about this child", wait).await;
    let typed_to_shown = started.elapsed().as_millis();
    // The browser's own timing of the page it shows: from the form's submission to the page
    // loaded (what the clinician waits for), apart from the driver's typing and polling above.
    let timing = "const n = performance.getEntriesByType('navigation')[0]; \
                  return [n.requestStart, n.responseStart, n.loadEventEnd];";
    let timing = browser.execute(timing, vec![]).await.unwrap();
    let ms = |i: usize| timing[i].as_f64().unwrap_or(f64::NAN);
    println!(
        "every hub down: submitted to loaded {:.0} ms (the gateway's answer took {:.0} ms of it); \
         typed, submitted and seen by the test's polling {typed_to_shown} ms",
        ms(2),
        ms(1) - ms(0),
    );
    assert!(down.starts_with("Could not check\n"), "{down}");
    let main = text_of(&browser, "main").await;
    assert!(!main.contains("Child care alert"), "no alert claimed while nothing could be checked: {main}");
    steps.shot("could-not-check").await;
    accessibility.push(("could-not-check", run_axe(&browser, &axe).await));

    // axe itself, on this page made wrong on purpose: an image without a text alternative.
    let planted = "const img = document.createElement('img'); img.src = '/assets/images/favicon.ico'; \
                   document.querySelector('main').appendChild(img); return true;";
    browser.execute(planted, vec![]).await.unwrap();
    let canary = run_axe(&browser, &axe).await;
    let found: Vec<&str> = canary["violations"].as_array().unwrap().iter().filter_map(|v| v["id"].as_str()).collect();
    assert!(found.contains(&"image-alt"), "axe must find a planted image without alt text, found {found:?}");

    println!("screenshots in {}: {}", steps.dir.display(), steps.taken.join(", "));
    let serious = serious_violations(&accessibility);
    browser.quit().await.unwrap();
    world.shutdown().await;
    assert!(serious.is_empty(), "axe found serious or critical violations:\n{}", serious.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and ChromeDriver: run .ci/browser"]
async fn council_pages_in_chromium__acknowledge_a_lookup_no_import_for_social_worker_broken_rows__axe_finds_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let axe = axe_source();
    let world = world(true).await;
    // The council's pages by another name for the same loopback address: browsers keep cookies
    // by host, not port, so the clinician's session and the social worker's stay apart.
    let pages = world.nodes["204"].pages_url().expect("Hackney serves its pages");
    let council = pages.replacen("http://127.0.0.1:", "http://localhost:", 1);
    assert_ne!(council, pages, "the pages listen on 127.0.0.1: {pages}");
    let browser = Browser::start().await.expect("Chromium starts under ChromeDriver");
    let mut steps = Steps::new(&browser, 11..=29);
    let mut accessibility: Vec<(&str, Value)> = vec![];
    let wait = Duration::from_secs(30);

    // A clinician at the UTC checks the child on the gateway's page: Hackney is told.
    browser.goto(&format!("{}/sign-in", world.gateway.url())).await.unwrap();
    sign_in(&browser, "sam.patel").await;
    wait_for_text(&browser, "h1", "Check for a child protection alert", wait).await;
    search(&browser, TWO_COUNCILS).await;
    wait_for_text(&browser, "main", "Hackney, Newham will be told", wait).await;
    wait_until("Hackney's inbox has Sam Patel's lookup", Duration::from_secs(20), || async {
        let (_, inbox) = api_json(&world.fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["person"]["name"] == "Sam Patel"))
    })
    .await;

    // (1) Signed out, the council's pages send a social worker to sign in.
    browser.goto(&format!("{council}/inbox")).await.unwrap();
    wait_for_text(&browser, "h1", "Sign in", wait).await;
    assert!(browser.url().await.unwrap().ends_with("/sign-in"), "sent to sign in");
    assert!(browser.title().await.unwrap().starts_with("Sign in"));
    steps.shot("council-sign-in").await;
    accessibility.push(("council sign-in", run_axe(&browser, &axe).await));
    sign_in(&browser, "ali.khan").await;
    wait_for_text(&browser, "h1", "Inbox", wait).await;
    let counts = wait_for_text(&browser, "#counts", "Signed in as Ali Khan (social-worker)", wait).await;
    assert!(counts.contains("1 not acknowledged, of which 0 overdue"), "{counts}");
    let row = wait_for_text(&browser, "main tbody tr", "Sam Patel, Staff nurse", wait).await;
    for want in ["9434765919", "Royal Sussex County UTC (RXH01)", "Not acknowledged"] {
        assert!(row.contains(want), "the inbox row has {want:?}: {row}");
    }
    assert!(browser.find_all("a[href='/import']").await.unwrap().is_empty(), "a social worker is not offered imports");
    steps.shot("council-inbox").await;
    accessibility.push(("council inbox", run_axe(&browser, &axe).await));

    // It opens the notification, types a note and acknowledges it.
    click(&browser, "main tbody tr a.govuk-link").await;
    wait_for_text(&browser, "h1", "Child 9434765919 was looked up", wait).await;
    let main = text_of(&browser, "main").await;
    for want in ["Sam Patel (Staff nurse)", "Royal Sussex County UTC (RXH01)", "LAC-204-1", "Acknowledge"] {
        assert!(main.contains(want), "the notification shows {want:?}: {main}");
    }
    steps.shot("council-notification").await;
    accessibility.push(("council notification", run_axe(&browser, &axe).await));
    let note = "Called the UTC; child safe, visit planned";
    browser.send_keys(&browser.find("#note").await.unwrap(), note).await.unwrap();
    click(&browser, "form[action$='/ack'] button[type='submit']").await;
    let acknowledged = wait_for_text(&browser, "#acknowledged", "Acknowledged by Ali Khan (ali.khan)", wait).await;
    assert!(acknowledged.ends_with(&format!(": {note}")), "the note is kept: {acknowledged}");
    assert!(browser.find_all("#note").await.unwrap().is_empty(), "nothing more to acknowledge");
    wait_for_text(&browser, "#counts", "0 not acknowledged", wait).await;
    steps.shot("council-acknowledged").await;

    // It has left the list of those not acknowledged; it is still among all of them.
    click(&browser, "main a[href='/inbox']").await;
    wait_for_text(&browser, "#empty", "No notifications match.", wait).await;
    steps.shot("council-inbox-after-acknowledging").await;
    click(&browser, "#show-all").await;
    click(&browser, "form[action='/inbox'] button[type='submit']").await;
    let row = wait_for_text(&browser, "main tbody tr", "Acknowledged", wait).await;
    assert!(row.contains("Sam Patel, Staff nurse") && !row.contains("Not acknowledged"), "{row}");
    assert!(browser.url().await.unwrap().contains("show=all"), "the filter is in the address");

    // (2) A social worker cannot reach the import page.
    browser.goto(&format!("{council}/import")).await.unwrap();
    wait_for_text(&browser, "h1", "You cannot do that", wait).await;
    assert!(browser.title().await.unwrap().starts_with("You cannot do that"));
    let main = text_of(&browser, "main").await;
    assert!(main.contains("Only team managers and administrators can import plans."), "{main}");
    assert!(browser.find_all("input[type='file']").await.unwrap().is_empty(), "no import form: {main}");
    steps.shot("council-import-forbidden").await;
    accessibility.push(("council forbidden", run_axe(&browser, &axe).await));
    click(&browser, "form[action='/sign-out'] button[type='submit']").await;
    wait_for_text(&browser, "h1", "Sign in", wait).await;

    // (3) A team manager imports a file with broken rows.
    sign_in(&browser, "jo.smith").await;
    wait_for_text(&browser, "#counts", "Signed in as Jo Smith (team-manager)", wait).await;
    click(&browser, "a.govuk-service-navigation__link[href='/import']").await;
    wait_for_text(&browser, "h1", "Import plans", wait).await;
    let folder = tempfile::tempdir().unwrap();
    let csv = folder.path().join("plans.csv");
    let rows = "reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n\
                CPP-10,4010232137,CPP,2026-03-01,,,\n\
                CPP-11,4010232138,CPP,2026-03-01,,,\n\
                LAC-12,9434765870,LAC,2026-13-01,,,\n";
    std::fs::write(&csv, rows).unwrap();
    browser.choose_file(&browser.find("#file").await.unwrap(), &csv).await.unwrap();
    let chosen = browser.execute("return document.getElementById('file').files[0].name;", vec![]).await.unwrap();
    assert_eq!(chosen, "plans.csv", "the file input holds the file");
    steps.shot("council-import-form").await;
    accessibility.push(("council import form", run_axe(&browser, &axe).await));
    let started = Instant::now();
    click(&browser, "form[action='/import'] button[type='submit']").await;
    // The upload is answered with a redirect to the job's page, which refreshes itself every
    // second until the results are there. (The click may return before the browser has moved.)
    wait_until("the browser reaches the import's job page", Duration::from_secs(20), || async {
        browser.url().await.is_ok_and(|u| u.contains("/import/jobs/"))
    })
    .await;
    let job = browser.url().await.unwrap();
    let path = job.strip_prefix(&council).unwrap_or_else(|| panic!("on the council's pages: {job}")).to_string();
    assert!(path.starts_with("/import/jobs/"), "sent to the import's job page: {job}");
    let progress = browser.find_all("#progress").await.unwrap();
    let progressed = match progress.first() {
        // (Read while the page may refresh: an element gone reads as nothing.)
        Some(bar) => {
            let value = browser.attribute(bar, "value").await.ok().flatten().unwrap_or_default();
            let max = browser.attribute(bar, "max").await.ok().flatten().unwrap_or_default();
            format!("a progress bar at {value} of {max} rows")
        }
        None => "the results already".into(),
    };
    let results = wait_for_text(&browser, "#results", "refused", wait).await;
    println!(
        "the import's results after {} ms (the job page first showed {progressed})",
        started.elapsed().as_millis()
    );
    assert_eq!(results, "1 applied, 0 unchanged, 2 refused");
    assert!(browser.find_all("#progress").await.unwrap().is_empty(), "no progress bar once done");
    let mut table = vec![];
    for row in browser.find_all("#results + table tbody tr").await.unwrap() {
        table.push(browser.text(&row).await.unwrap());
    }
    assert_eq!(table.len(), 3, "a row of results for each row of the file: {table:?}");
    assert_eq!(table[0], "2 CPP-10 applied", "{table:?}");
    assert!(table[1].starts_with("3 CPP-11 refused") && table[1].contains("check digit"), "{table:?}");
    assert!(table[2].starts_with("4 LAC-12 refused") && table[2].contains("start_date: no such day"), "{table:?}");
    let download = browser.find("a[href$='/results.csv']").await.expect("a link to the results as CSV");
    assert_eq!(browser.attribute(&download, "href").await.unwrap(), Some(format!("{path}/results.csv")));
    assert!(browser.attribute(&download, "download").await.unwrap().is_some(), "the link downloads");
    steps.shot("council-import-results").await;
    accessibility.push(("council import results", run_axe(&browser, &axe).await));

    // The imported plan is among the council's plans, which a team manager can change.
    click(&browser, "a.govuk-service-navigation__link[href='/plans']").await;
    wait_for_text(&browser, "caption", "2 of 2 plans", wait).await;
    let main = text_of(&browser, "main").await;
    for want in ["LAC-204-1", "CPP-10", "Withdraw (entered in error)", "Record a plan"] {
        assert!(main.contains(want), "the plans page shows {want:?}: {main}");
    }
    steps.shot("council-plans").await;
    accessibility.push(("council plans", run_axe(&browser, &axe).await));

    println!("screenshots in {}: {}", steps.dir.display(), steps.taken.join(", "));
    let serious = serious_violations(&accessibility);
    browser.quit().await.unwrap();
    world.shutdown().await;
    assert!(serious.is_empty(), "axe found serious or critical violations:\n{}", serious.join("\n"));
}
