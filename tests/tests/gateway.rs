//! The setting gateway against real nodes: its FHIR API (every kind of answer and error, each
//! saved under `target/fhir-responses/` for `.ci/fhir-validate` to check as FHIR R4) and its
//! clinician page (sign-in, CSRF, lockout, search, roles), over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::accounts::{Access, AccountRole, Accounts};
use cpis_node::config::SettingConfig;
use cpis_node::gateway::RunningGateway;
use cpis_node::runtime::RunningNode;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::records::SettingType;
use cpis_tests::{Fed, Page, api_json, csrf, header, request, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// In Hackney's care and on Newham's child protection plan: two councils.
const TWO_COUNCILS: &str = "9434765919";
/// An unborn child's plan at Hackney (held against the pregnant woman's number).
const UNBORN: &str = "9434765870";
/// Nobody holds a plan.
const NONE: &str = "4010232137";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const PASSWORD: &str = "correct horse battery staple";

fn spec() -> FederationSpec {
    FederationSpec::new("gateway")
        .hub("HUBN")
        .hub("HUBS")
        .authority("204", "Hackney", &["HUBN"])
        .authority("316", "Newham", &["HUBN", "HUBS"])
        .setting("RXH01", "Royal Sussex County UTC", SettingType::UrgentTreatmentCentre, &["HUBS", "HUBN"])
}

struct World {
    fed: Fed,
    nodes: BTreeMap<&'static str, RunningNode>,
    gateway: RunningGateway,
    token: String,
}

async fn add_plan(fed: &Fed, authority: &str, body: Value) {
    let (status, answer) = api_json(fed, authority, "POST", "/plans", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
}

/// Two hubs, two councils with plans and contacts, and a gateway for RXH01 with a clinician, a
/// safeguarding lead and a calling system. Heads go stale after 4 s, so that a stopped council
/// shows as not checked quickly.
async fn world() -> World {
    let fed = Fed::create(spec());
    let mut nodes = BTreeMap::new();
    for code in ["HUBN", "HUBS", "204", "316"] {
        nodes.insert(code, fed.start(code).await);
    }
    add_plan(
        &fed,
        "204",
        json!({ "reference": "LAC-204-1", "nhs": TWO_COUNCILS, "plan_type": "LAC", "start": "2025-03-01" }),
    )
    .await;
    add_plan(
        &fed,
        "316",
        json!({ "reference": "CPP-316-9", "nhs": TWO_COUNCILS, "plan_type": "CPP", "start": "2026-01-05" }),
    )
    .await;
    let due = cpis_node::net::now().date().plus_days(60).to_string();
    add_plan(
        &fed,
        "204",
        json!({ "reference": "UCPP-204-2", "nhs": UNBORN, "plan_type": "UCPP", "start": "2026-09-01", "due": due }),
    )
    .await;
    cpis_tests::two_councils_with_contacts_at_both_hubs(&fed).await;
    let config = gateway_config(&fed);
    let mut accounts = Accounts::default();
    accounts.add_user("sam.patel", "Sam Patel", "Staff nurse", AccountRole::Clinician, PASSWORD).unwrap();
    accounts.add_user("lee.jones", "Lee Jones", "Named nurse", AccountRole::SafeguardingLead, PASSWORD).unwrap();
    let token = accounts
        .add_system("EPIC-ED", "Epic, urgent treatment centre", &Access::ALL, 30, cpis_node::net::now().date())
        .unwrap();
    accounts.save(&config.gateway.users_path()).unwrap();
    let gateway = RunningGateway::start(config).await.expect("the gateway starts");
    World { fed, nodes, gateway, token }
}

fn gateway_config(fed: &Fed) -> SettingConfig {
    let mut config = fed.setting_config("RXH01");
    config.gateway.data_dir = fed.home("RXH01").join("gateway");
    config.stale_after_ms = 4_000;
    config.hub_timeout_ms = 1_500;
    config
}

/// Where FHIR responses are saved for the independent validator.
fn responses_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fhir-responses");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Fhir<'a> {
    world: &'a World,
}

impl Fhir<'_> {
    /// A search with every header right but those in `change` (a `None` value drops one).
    async fn search(
        &self,
        resource: &str,
        nhs: &str,
        change: &[(&str, Option<&str>)],
    ) -> (u16, Vec<(String, String)>, Value) {
        let bearer = format!("Bearer {}", self.world.token);
        let mut headers: Vec<(&str, Option<&str>)> = vec![
            ("Authorization", Some(bearer.as_str())),
            ("IsUnscheduledAccessEvent", Some("true")),
            ("X-User-Id", Some("C0042")),
            ("X-User-Name", Some("Dr Ada Okafor")),
            ("X-User-Role", Some("Emergency medicine doctor")),
            ("TraceID", Some("trace-0001")),
        ];
        for (name, value) in change {
            match headers.iter_mut().find(|(n, _)| n == name) {
                Some(h) => h.1 = *value,
                None => headers.push((name, *value)),
            }
        }
        let headers: Vec<(&str, &str)> = headers.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))).collect();
        let path = format!("/FHIR/R4/{resource}?patient:identifier={NHS}|{nhs}");
        let (status, headers, body) = request(self.world.gateway.addr(), "GET", &path, &headers, "").await;
        (status, headers, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// Saves a response for the validator, under `name`.
    fn save(&self, name: &str, body: &Value) {
        std::fs::write(responses_dir().join(format!("{name}.json")), serde_json::to_string_pretty(body).unwrap())
            .unwrap();
    }
}

fn resources<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map_or(vec![], |e| e.iter().map(|x| &x["resource"]).filter(|r| r["resourceType"] == kind).collect())
}

fn error_code(outcome: &Value) -> &str {
    outcome["issue"][0]["details"]["coding"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_api__found_two_councils_unborn_none_history_unavailable_every_error_and_no_hub() {
    let mut world = world().await;
    let fhir = Fhir { world: &world };

    let (status, headers, metadata) = request(world.gateway.addr(), "GET", "/FHIR/R4/metadata", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/fhir+json"));
    let metadata: Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(metadata["resourceType"], "CapabilityStatement");
    fhir.save("metadata", &metadata);

    let (status, headers, found) = fhir.search("CareTeam", TWO_COUNCILS, &[]).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(header(&headers, "traceid"), Some("trace-0001"), "the TraceID is echoed");
    assert_eq!(
        (found["resourceType"].as_str(), found["type"].as_str(), found["total"].as_u64()),
        (Some("Bundle"), Some("searchset"), Some(2))
    );
    let teams = resources(&found, "CareTeam");
    let codes: Vec<&str> = teams.iter().filter_map(|t| t["category"][0]["coding"][0]["code"].as_str()).collect();
    assert_eq!(codes, ["764841000000100", "342191000000101"], "Hackney's LAC then Newham's CPP, with SNOMED CT codes");
    assert_eq!(teams[0]["managingOrganization"][0]["identifier"]["value"], "204");
    assert_eq!(teams[0]["managingOrganization"][0]["display"], "Hackney");
    let phones: Vec<&str> =
        teams[0]["telecom"].as_array().unwrap().iter().filter_map(|t| t["value"].as_str()).collect();
    assert_eq!(phones, ["020 8356 5500", "020 8356 2710"]);
    assert_eq!(teams[0]["period"]["start"], "2025-03-01");
    assert!(teams[0]["meta"]["lastUpdated"].as_str().is_some(), "each council's as-of time");
    assert!(resources(&found, "OperationOutcome").is_empty(), "every council checked");
    fhir.save("care-team-two-councils", &found);
    let (status, _, again) = fhir.search("CareTeam", TWO_COUNCILS, &[]).await;
    assert_eq!((status, again["total"].as_u64()), (200, Some(2)), "a second lookup, whose history holds the first");

    let (status, _, unborn) = fhir.search("CareTeam", UNBORN, &[]).await;
    assert_eq!(status, 200);
    let team = resources(&unborn, "CareTeam")[0];
    assert_eq!(team["category"][0]["coding"][0]["code"], "818901000000100");
    assert!(team["note"].to_string().contains("Expected date of delivery"), "{team}");
    fhir.save("care-team-unborn", &unborn);

    let (status, _, none) = fhir.search("CareTeam", NONE, &[]).await;
    assert_eq!((status, none["total"].as_u64()), (200, Some(0)), "{none}");
    assert!(none["entry"].as_array().unwrap().is_empty(), "no plan and every council checked: nothing to say");
    fhir.save("care-team-none", &none);

    let (status, _, history) = fhir.search("AuditEvent", TWO_COUNCILS, &[]).await;
    assert_eq!(status, 200, "{history}");
    let events = resources(&history, "AuditEvent");
    assert_eq!(events.len(), 1, "the latest lookup's history (no new lookup): the first visit");
    assert_eq!(events[0]["agent"][0]["who"]["identifier"]["value"], "RXH01");
    assert_eq!(events[0]["agent"][0]["role"][0]["text"], "Emergency medicine doctor");
    fhir.save("audit-event", &history);

    /// A saved name, the NHS number, the headers changed, and the status and Spine code expected.
    type ErrorCase<'a> = (&'a str, &'a str, Vec<(&'a str, Option<&'a str>)>, u16, &'a str);
    let errors: [ErrorCase; 7] = [
        ("error-bad-nhs-number", "9434765918", vec![], 400, "INVALID_SEARCH_DATA"),
        ("error-not-an-nhs-number", "12345", vec![], 400, "INVALID_SEARCH_DATA"),
        ("error-missing-header", TWO_COUNCILS, vec![("X-User-Name", None)], 400, "PRECONDITION_FAILED"),
        (
            "error-bad-unscheduled-header",
            TWO_COUNCILS,
            vec![("IsUnscheduledAccessEvent", Some("maybe"))],
            400,
            "PRECONDITION_FAILED",
        ),
        (
            "error-kind-not-allowed",
            TWO_COUNCILS,
            vec![("IsUnscheduledAccessEvent", Some("false"))],
            403,
            "ACCESS_DENIED",
        ),
        ("error-no-token", TWO_COUNCILS, vec![("Authorization", None)], 403, "ACCESS_DENIED"),
        ("error-wrong-token", TWO_COUNCILS, vec![("Authorization", Some("Bearer 0000"))], 403, "ACCESS_DENIED"),
    ];
    for (name, nhs, change, status, code) in errors {
        let (got, _, outcome) = fhir.search("CareTeam", nhs, &change).await;
        assert_eq!(
            (got, outcome["resourceType"].as_str(), error_code(&outcome)),
            (status, Some("OperationOutcome"), code),
            "{name}: {outcome}"
        );
        fhir.save(name, &outcome);
    }
    let (_, _, bad) = fhir.search("CareTeam", "9434765918", &[]).await;
    assert!(bad["issue"][0]["details"]["text"].as_str().unwrap().contains("check digit"), "the rule is named: {bad}");

    // Per-system rights and expiry: a system that may read alerts only, and one whose token
    // expired yesterday (the gateway reads the accounts file again when it changes).
    let users = world.fed.home("RXH01").join("gateway").join("users.json");
    let mut accounts = Accounts::load(&users).unwrap();
    let today = cpis_node::net::now().date();
    let alerts_only = accounts.add_system("PAS", "Patient administration", &[Access::Alerts], 30, today).unwrap();
    let expired = accounts.add_system("OLD-EHR", "Retired system", &Access::ALL, 1, today.plus_days(-1)).unwrap();
    accounts.save(&users).unwrap();
    let refusals = [
        ("error-system-may-not-read-history", "AuditEvent", alerts_only.as_str(), "may not read visit histories"),
        ("error-system-token-expired", "CareTeam", expired.as_str(), "expired after"),
    ];
    for (name, resource, token, why) in refusals {
        let bearer = format!("Bearer {token}");
        let (status, _, outcome) = fhir.search(resource, TWO_COUNCILS, &[("Authorization", Some(&bearer))]).await;
        assert_eq!((status, error_code(&outcome)), (403, "ACCESS_DENIED"), "{name}: {outcome}");
        assert!(outcome["issue"][0]["details"]["text"].as_str().unwrap().contains(why), "{name}: {outcome}");
        fhir.save(name, &outcome);
    }
    let bearer = format!("Bearer {alerts_only}");
    let (status, _, _) = fhir.search("CareTeam", NONE, &[("Authorization", Some(&bearer))]).await;
    assert_eq!(status, 200, "the alerts-only system may still look children up");

    // Hackney stops: its plans are still shown, as of its last head, with a warning naming it.
    world.nodes.remove("204").unwrap().shutdown().await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let fhir = Fhir { world: &world };
    let (status, _, stale) = fhir.search("CareTeam", TWO_COUNCILS, &[]).await;
    assert_eq!(status, 200, "{stale}");
    assert_eq!(resources(&stale, "CareTeam").len(), 2, "Hackney's plan is still shown");
    let warnings = resources(&stale, "OperationOutcome");
    assert_eq!(warnings.len(), 1, "{stale}");
    let text = warnings[0]["issue"][0]["details"]["text"].as_str().unwrap();
    assert!(text.contains("Hackney (204) could not be checked") && text.contains("020 8356 2710"), "{text}");
    fhir.save("care-team-council-unavailable", &stale);
    let (_, _, none_now) = fhir.search("CareTeam", NONE, &[]).await;
    assert_eq!(
        resources(&none_now, "OperationOutcome").len(),
        1,
        "never 'no records' while a council cannot be checked"
    );

    // Every hub stops: "could not check", in the gateway's deadline.
    for hub in ["HUBN", "HUBS"] {
        world.nodes.remove(hub).unwrap().shutdown().await;
    }
    let fhir = Fhir { world: &world };
    let started = Instant::now();
    let (status, _, down) = fhir.search("CareTeam", TWO_COUNCILS, &[]).await;
    println!("every hub down: answered {status} in {} ms", started.elapsed().as_millis());
    assert_eq!((status, error_code(&down)), (503, "NO_HUB_AVAILABLE"), "{down}");
    fhir.save("error-no-hub", &down);

    let audit = std::fs::read_to_string(world.fed.home("RXH01").join("gateway").join("audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|e| e["via"] == "fhir" && e["user_name"] == "Dr Ada Okafor"), "{audit}");
    // Each new lookup: its `asked` line, then what it came to.
    let (asked, entries): (Vec<Value>, Vec<Value>) = lines.into_iter().partition(|e| e["result"] == "asked");
    let ids = |lines: &[Value], skip: &str| -> Vec<String> {
        lines.iter().filter(|e| e["result"] != skip).map(|e| e["lookup_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&asked, ""), ids(&entries, "cached"), "{audit}");
    assert_eq!(
        entries.iter().map(|e| e["system"].as_str().unwrap()).filter(|s| *s == "PAS").count(),
        1,
        "the lookup by the alerts-only system is recorded as its own"
    );
    let results: Vec<&str> = entries.iter().filter_map(|e| e["result"].as_str()).collect();
    assert_eq!(
        results,
        [
            "alert",
            "alert",
            "alert",
            "no-records",
            "cached",
            "no-records",
            "alert",
            "could-not-check",
            "could-not-check"
        ]
    );

    // The gateway's own metrics: for the bearer of its metrics token only, and counting the same.
    let addr = world.gateway.addr();
    let (status, _, _) = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401, "no token");
    let system = format!("Bearer {}", world.token);
    let (status, _, _) = request(addr, "GET", "/metrics", &[("Authorization", system.as_str())], "").await;
    assert_eq!(status, 401, "a calling system's token is not the metrics token");
    let token = std::fs::read_to_string(world.fed.home("RXH01").join("gateway").join("metrics.token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (status, headers, text) = request(addr, "GET", "/metrics", &[("Authorization", bearer.as_str())], "").await;
    assert_eq!(status, 200, "{text}");
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("text/plain")));
    for (result, count) in [("alert", 4), ("no-records", 2), ("cached", 1), ("could-not-check", 2)] {
        let line = format!("cpis_gateway_lookups_total{{result=\"{result}\",via=\"fhir\"}} {count}\n");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
    assert!(text.contains("cpis_gateway_lookup_seconds_count 8\n"), "a time for each lookup made:\n{text}");
    let expiry = |system: &str| -> f64 {
        let prefix = format!("cpis_gateway_system_token_expires_in_seconds{{system=\"{system}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix} in:\n{text}"));
        line[prefix.len()..].parse().unwrap()
    };
    assert!(expiry("OLD-EHR") < 0.0 && expiry("EPIC-ED") > 28.0 * 86_400.0, "{text}");
    assert!(text.contains("cpis_gateway_audit_failures_total 0\n"));
    assert!(text.contains("process_resident_memory_bytes "));
    assert!(text.contains("# HELP cpis_gateway_lookups_total Lookups through this gateway"), "{text}");

    let gateway = world.gateway;
    for node in world.nodes.into_values() {
        node.shutdown().await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinician_page__sign_in_search_alert_roles_csrf_lockout__and_the_council_is_told_who_looked() {
    let world = world().await;
    let addr = world.gateway.addr();
    let mut page = Page::new(addr);

    let (status, headers, _) = page.send("GET", "/", None).await;
    assert_eq!((status, header(&headers, "location")), (303, Some("/sign-in")), "signed out: sent to sign in");
    let (status, headers, css) = page.send("GET", "/assets/nhsuk-frontend.min.css", None).await;
    assert_eq!((status, header(&headers, "content-type")), (200, Some("text/css")));
    assert!(css.contains(".nhsuk-header"), "the vendored NHS.UK frontend is served");

    let (status, body) = page.sign_in("sam.patel", "not the password").await;
    assert_eq!(status, 401);
    assert!(body.contains("The user name or password is not right"));
    let (status, body) = page.sign_in("sam.patel", PASSWORD).await;
    assert_eq!(status, 303, "{body}");
    let (status, _, search) = page.send("GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(
        search.contains("Sam Patel (Staff nurse)")
            && search.contains("label class=\"nhsuk-label nhsuk-label--m\" for=\"nhs\"")
    );
    let token = csrf(&search);

    let (status, _, refused) = page.send("POST", "/search", Some(&[("nhs", "943 476 5918"), ("csrf", &token)])).await;
    assert_eq!(status, 400);
    assert!(refused.contains("nhsuk-error-summary") && refused.contains("check digit is wrong"), "the rule is named");
    let (status, _, forged) = page.send("POST", "/search", Some(&[("nhs", TWO_COUNCILS), ("csrf", "forged")])).await;
    assert_eq!(status, 403, "a form without the session's CSRF token does nothing: {forged}");

    let (status, _, alert) = page.send("POST", "/search", Some(&[("nhs", "943-476-5919"), ("csrf", &token)])).await;
    assert_eq!(status, 200);
    assert!(alert.contains("Child care alert: This child is looked after by a local authority"), "{alert}");
    assert!(alert.contains("Child care alert: This child has a child protection plan"));
    assert!(alert.contains("020 8356 2710") && alert.contains("020 8430 2001"), "each council's phones");
    assert!(alert.contains("Checked against the council's signed data as of"));
    assert!(alert.contains("Hackney, Newham will be told"));
    let (_, _, none) = page.send("POST", "/search", Some(&[("nhs", NONE), ("csrf", &token)])).await;
    assert!(none.contains("id=\"no-records\""), "{none}");
    let (status, _, _) = page.send("GET", "/audit", None).await;
    assert_eq!(status, 403, "a clinician cannot read the audit log");

    // The council learns who looked: the signed-in person, never a form field.
    wait_until("Hackney's inbox has the lookup", Duration::from_secs(20), || async {
        let (_, inbox) = api_json(&world.fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.iter().any(|x| x["person"]["name"] == "Sam Patel"))
    })
    .await;

    let mut lead = Page::new(addr);
    assert_eq!(lead.sign_in("lee.jones", PASSWORD).await.0, 303);
    let (status, _, audit) = lead.send("GET", "/audit", None).await;
    assert_eq!(status, 200);
    assert!(audit.contains("Sam Patel (Staff nurse, sam.patel)") && audit.contains("9434765919"), "{audit}");

    let (status, headers, _) = page.send("POST", "/sign-out", Some(&[("csrf", "forged")])).await;
    assert_eq!((status, header(&headers, "set-cookie")), (303, None), "a sign-out from elsewhere clears nothing");
    let (status, _, again) = page.send("GET", "/", None).await;
    assert_eq!(status, 200, "still signed in");
    let (status, _, _) = page.send("POST", "/sign-out", Some(&[("csrf", &csrf(&again))])).await;
    assert_eq!(status, 303);
    assert_eq!(page.send("GET", "/", None).await.0, 303, "signed out");

    let mut guesser = Page::new(addr);
    for _ in 0..5 {
        assert_eq!(guesser.sign_in("lee.jones", "a wrong guess here").await.0, 401);
    }
    let (status, body) = guesser.sign_in("lee.jones", PASSWORD).await;
    assert_eq!(status, 401, "locked after five failures, even with the right password");
    assert!(body.contains("locked"), "{body}");

    // A council that cannot be checked: a child with no plan elsewhere is not "no plan found".
    let mut world = world;
    world.nodes.remove("204").unwrap().shutdown().await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let (_, _, search) = lead.send("GET", "/", None).await;
    let (status, _, unchecked) = lead.send("POST", "/search", Some(&[("nhs", NONE), ("csrf", &csrf(&search))])).await;
    assert_eq!(status, 200);
    assert!(unchecked.contains("id=\"could-not-check\"") && unchecked.contains("Hackney (204)"), "{unchecked}");
    assert!(!unchecked.contains("id=\"no-records\"") && !unchecked.contains("no plan was found"), "{unchecked}");
    assert!(unchecked.contains("1 could not be checked"), "{unchecked}");

    let gateway = world.gateway;
    for node in world.nodes.into_values() {
        node.shutdown().await;
    }
    gateway.shutdown().await;
}
