//! The clinician page in a real browser: headless Chromium driven through ChromeDriver signs in,
//! searches, sees the alert, sees a stopped council as not confirmed and every hub down as
//! "could not check", with a screenshot of each step under `target/browser-screenshots/` and
//! axe-core's accessibility check of each kind of page. `.ci/browser` installs what it needs and
//! runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::accounts::{AccountRole, Accounts};
use cpis_node::gateway::RunningGateway;
use cpis_node::runtime::RunningNode;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::records::SettingType;
use cpis_tests::webdriver::Browser;
use cpis_tests::{Fed, api_json, hub_caught_up, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// In Hackney's care and on Newham's child protection plan: two councils.
const TWO_COUNCILS: &str = "9434765919";
const PASSWORD: &str = "correct horse battery staple";

struct World {
    fed: Fed,
    nodes: BTreeMap<&'static str, RunningNode>,
    gateway: RunningGateway,
}

/// Two hubs, Hackney and Newham with a plan each for one child and their phone numbers, and a
/// gateway for RXH01 with a clinician. Heads go stale after 4 s.
async fn world() -> World {
    let spec = FederationSpec::new("browser")
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS", "HUBN"]);
    let fed = Fed::create(spec);
    let mut nodes = BTreeMap::new();
    for code in ["HUBN", "HUBS", "204", "316"] {
        nodes.insert(code, fed.start(code).await);
    }
    let plans = [
        ("204", json!({ "reference": "LAC-204-1", "nhs": TWO_COUNCILS, "plan_type": "LAC", "start": "2025-03-01" })),
        ("316", json!({ "reference": "CPP-316-9", "nhs": TWO_COUNCILS, "plan_type": "CPP", "start": "2026-01-05" })),
    ];
    for (code, plan) in plans {
        let (status, answer) = api_json(&fed, code, "POST", "/plans", Some(plan)).await;
        assert_eq!(status, 200, "{answer}");
    }
    for (code, name, office, ooh) in [
        ("204", "Hackney CSC", "020 8356 5500", "020 8356 2710"),
        ("316", "Newham CSC", "020 8430 2000", "020 8430 2001"),
    ] {
        let contacts = json!({ "name": name, "office_phone": office, "out_of_hours_phone": ooh });
        assert_eq!(api_json(&fed, code, "PUT", "/contacts", Some(contacts)).await.0, 200);
    }
    for hub in ["HUBN", "HUBS"] {
        wait_until("plans and contacts reach both hubs", Duration::from_secs(30), || async {
            hub_caught_up(&fed, hub, "204").await && hub_caught_up(&fed, hub, "316").await
        })
        .await;
    }
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

/// The steps' screenshots, numbered.
struct Steps<'a> {
    browser: &'a Browser,
    dir: PathBuf,
    taken: Vec<String>,
}

impl Steps<'_> {
    async fn shot(&mut self, name: &str) {
        let file = format!("{:02}-{name}.png", self.taken.len() + 1);
        self.browser.full_page_screenshot(&self.dir.join(&file), 6_000).await.expect("a screenshot");
        self.taken.push(file);
    }
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

/// Types an NHS number into the search form and presses Check.
async fn search(browser: &Browser, nhs: &str) {
    let field = browser.find("#nhs").await.expect("the NHS number field");
    browser.clear(&field).await.unwrap();
    browser.send_keys(&field, nhs).await.unwrap();
    let button = browser.find("form[action='/search'] button[type='submit']").await.expect("the Check button");
    browser.click(&button).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and ChromeDriver: run .ci/browser"]
async fn clinician_page_in_chromium__sign_in_search_alert_council_down_hubs_down__and_axe_finds_nothing_serious() {
    let axe = axe_source();
    let mut world = world().await;
    let browser = Browser::start().await.expect("Chromium starts under ChromeDriver");
    let dir = target_dir().join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for old in std::fs::read_dir(&dir).unwrap().flatten() {
        if old.path().extension().is_some_and(|e| e == "png") {
            std::fs::remove_file(old.path()).unwrap();
        }
    }
    let mut steps = Steps { browser: &browser, dir, taken: vec![] };
    let mut accessibility: Vec<(&str, Value)> = vec![];
    let wait = Duration::from_secs(30);

    // (a) Signed out, the gateway sends the browser to sign in; typing and clicking signs in.
    browser.goto(&format!("{}/", world.gateway.url())).await.unwrap();
    wait_for_text(&browser, "h1", "Sign in", wait).await;
    assert!(browser.url().await.unwrap().ends_with("/sign-in"), "sent to sign in");
    assert!(browser.title().await.unwrap().starts_with("Sign in"));
    steps.shot("sign-in").await;
    accessibility.push(("sign-in", run_axe(&browser, &axe).await));
    browser.send_keys(&browser.find("#user").await.unwrap(), "sam.patel").await.unwrap();
    browser.send_keys(&browser.find("#password").await.unwrap(), PASSWORD).await.unwrap();
    browser.click(&browser.find("form[action='/sign-in'] button[type='submit']").await.unwrap()).await.unwrap();
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
    println!("every hub down: the page answered in {} ms", started.elapsed().as_millis());
    assert!(down.starts_with("Could not check\n"), "{down}");
    let main = browser.text(&browser.find("main").await.unwrap()).await.unwrap();
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
    let mut serious = vec![];
    for (page, results) in &accessibility {
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
    browser.quit().await.unwrap();
    let gateway = world.gateway;
    for node in world.nodes.into_values() {
        node.shutdown().await;
    }
    gateway.shutdown().await;
    assert!(serious.is_empty(), "axe found serious or critical violations:\n{}", serious.join("\n"));
}
