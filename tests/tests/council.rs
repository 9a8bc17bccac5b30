//! The council's pages on a real authority node: a social worker sees and acknowledges a
//! notification caused by a real lookup; a team manager imports a CSV with broken rows and
//! changes plans; each role reaches only what it may; the audit log says who did what.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

use cpis_node::accounts::{AccountRole, Accounts};
use cpis_node::client::{LookupRequest, lookup};
use cpis_node::config::PagesConfig;
use cpis_protocol::harness::FederationSpec;
use cpis_protocol::ids::NhsNumber;
use cpis_protocol::records::{Person, SettingType};
use cpis_tests::{Fed, Page, api_json, csrf, header, hub_caught_up, wait_until};
use serde_json::json;
use std::time::Duration;

const CHILD: &str = "9434765919";
const PASSWORD: &str = "correct horse battery staple";

fn spec() -> FederationSpec {
    FederationSpec::new("council").hub("HUBN").authority("204", "Hackney", &["HUBN"]).setting(
        "RXH01",
        "Royal Sussex County UTC",
        SettingType::UrgentTreatmentCentre,
        &["HUBN"],
    )
}

/// Posts an import and follows its job page until it ends (a bounded poll): the final page.
async fn import(page: &mut Page, parts: &[(&str, Option<&str>, &str)]) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = page.post_multipart("/import", parts).await;
    let Some(job) = header(&headers, "location").map(String::from) else { return (status, headers, body) };
    assert!(job.starts_with("/import/jobs/"), "{job}");
    for _ in 0..200 {
        let (status, headers, body) = page.send("GET", &job, None).await;
        if !body.contains("http-equiv=\"refresh\"") {
            return (status, headers, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the import job {job} did not end after 200 polls");
}

/// Hackney records LAC-1 for [`CHILD`], a nurse at RXH01 looks the child up, and the notification
/// reaches Hackney's inbox.
async fn notified_of_a_lookup(fed: &Fed) {
    let plan = json!({ "reference": "LAC-1", "nhs": CHILD, "plan_type": "LAC", "start": "2026-01-05" });
    assert_eq!(api_json(fed, "204", "POST", "/plans", Some(plan)).await.0, 200);
    wait_until("the plan reaches the hub", Duration::from_secs(20), || hub_caught_up(fed, "HUBN", "204")).await;
    let nurse = Person { id: "N1".into(), name: "Sam Patel".into(), role: "Staff nurse".into() };
    let request = LookupRequest { nhs: NhsNumber::parse(CHILD).unwrap(), person: nurse };
    lookup(&fed.setting_config("RXH01"), request).await.expect("the lookup is answered");
    wait_until("the notification reaches Hackney", Duration::from_secs(20), || async {
        let (_, inbox) = api_json(fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
}

/// The lookup id in the first inbox row's link.
fn first_notification(html: &str) -> String {
    let at = html.find("href=\"/inbox/").expect("a notification link") + "href=\"/inbox/".len();
    html[at..at + 32].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn council_pages__acknowledge_a_real_notification__import_with_broken_rows__roles_and_audit() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBN").await;
    let mut accounts = Accounts::default();
    accounts.add_user("ali.khan", "Ali Khan", "Duty social worker", AccountRole::SocialWorker, PASSWORD).unwrap();
    accounts.add_user("jo.smith", "Jo Smith", "Team manager", AccountRole::TeamManager, PASSWORD).unwrap();
    accounts.add_user("pat.lee", "Pat Lee", "Service administrator", AccountRole::Administrator, PASSWORD).unwrap();
    accounts.add_user("sam.patel", "Sam Patel", "Staff nurse", AccountRole::Clinician, PASSWORD).unwrap();
    accounts.save(&fed.home("204").join("users.json")).unwrap();
    let hackney = fed.start_with("204", |c| c.pages = Some(PagesConfig::default())).await;
    let url = hackney.pages_url().expect("the pages are served").to_string();
    let addr = url.trim_start_matches("http://").parse().unwrap();

    notified_of_a_lookup(&fed).await;

    // A social worker sees it, opens it and acknowledges it with a note.
    let mut worker = Page::new(addr);
    assert_eq!(worker.send("GET", "/inbox", None).await.0, 303, "signed out: sent to sign in");
    assert_eq!(worker.sign_in("sam.patel", PASSWORD).await.0, 401, "a gateway role cannot sign in at a council");
    assert_eq!(worker.sign_in("ali.khan", PASSWORD).await.0, 303);
    let (status, _, inbox) = worker.send("GET", "/inbox", None).await;
    assert_eq!(status, 200);
    assert!(inbox.contains("1 not acknowledged") && inbox.contains("0 overdue"), "counts on every page");
    assert!(inbox.contains("Sam Patel, Staff nurse") && inbox.contains("Royal Sussex County UTC (RXH01)"), "{inbox}");
    let id = first_notification(&inbox);
    let (_, _, detail) = worker.send("GET", &format!("/inbox/{id}"), None).await;
    assert!(detail.contains("LAC-1") && detail.contains("Acknowledge"), "{detail}");
    let token = csrf(&detail);
    let ack = [("note", "Called the UTC; child safe, visit planned"), ("csrf", token.as_str())];
    let (status, headers, _) = worker.send("POST", &format!("/inbox/{id}/ack"), Some(&ack)).await;
    assert_eq!((status, header(&headers, "location")), (303, Some(format!("/inbox/{id}").as_str())));
    let (_, _, acknowledged) = worker.send("GET", &format!("/inbox/{id}"), None).await;
    assert!(acknowledged.contains("Acknowledged by Ali Khan (ali.khan)") && acknowledged.contains("child safe"));
    let (_, _, open) = worker.send("GET", "/inbox", None).await;
    assert!(open.contains("No notifications match") && open.contains("0 not acknowledged"), "it left the list");
    let (_, _, all) = worker.send("GET", "/inbox?show=all&nhs=943+476+5919", None).await;
    assert!(all.contains(&id), "shown with every notification, filtered by child");
    let (status, _, bad) = worker.send("GET", "/inbox?nhs=123", None).await;
    assert!(status == 400 && bad.contains("govuk-error-summary") && bad.contains("NHS number"), "{bad}");
    let (_, from_api) = api_json(&fed, "204", "GET", "/notifications", None).await;
    let note = &from_api["notifications"][0]["acknowledged"]["note"];
    assert_eq!(note, &json!("Called the UTC; child safe, visit planned"), "the same store the API reads");
    // The API filters and pages as the pages do.
    let count = |v: &serde_json::Value| (v["total"].as_u64(), v["notifications"].as_array().map(Vec::len));
    let (_, open) = api_json(&fed, "204", "GET", "/notifications?show=open", None).await;
    assert_eq!(count(&open), (Some(0), Some(0)));
    let (_, paged) = api_json(&fed, "204", "GET", "/notifications?setting=rxh01&limit=0", None).await;
    assert_eq!(count(&paged), (Some(1), Some(0)), "{paged}");
    let (status, refused) = api_json(&fed, "204", "GET", "/notifications?from=2026-02-30", None).await;
    assert!(status == 400 && refused["error"].as_str().unwrap_or("").starts_with("from:"), "{refused}");

    // A social worker cannot import or change plans.
    assert_eq!(worker.send("GET", "/import", None).await.0, 403);
    let (_, _, plans) = worker.send("GET", "/plans", None).await;
    assert!(plans.contains("LAC-1") && !plans.contains("Record a plan"), "read only");
    let forged = [
        ("reference", "CPP-2"),
        ("nhs", CHILD),
        ("plan_type", "CPP"),
        ("start", "2026-02-01"),
        ("csrf", token.as_str()),
    ];
    assert_eq!(worker.send("POST", "/plans", Some(&forged)).await.0, 403);

    // A team manager imports a file with broken rows, after a dry run.
    let mut manager = Page::new(addr);
    assert_eq!(manager.sign_in("jo.smith", PASSWORD).await.0, 303);
    let (_, _, form) = manager.send("GET", "/import", None).await;
    let token = csrf(&form);
    let csv = "reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n\
               CPP-10,4010232137,CPP,2026-03-01,,,\n\
               CPP-11,4010232138,CPP,2026-03-01,,,\n\
               LAC-12,9434765870,LAC,2026-13-01,,,\n";
    let parts = |dry: bool| {
        let mut p = vec![("csrf", None, token.as_str()), ("file", Some("plans.csv"), csv)];
        if dry {
            p.push(("dry_run", None, "yes"));
        }
        p
    };
    let (status, _, dry) = import(&mut manager, &parts(true)).await;
    assert_eq!(status, 200, "{dry}");
    assert!(dry.contains("Dry run: nothing was stored. 1 applied, 0 unchanged, 2 refused"), "{dry}");
    let (_, _, listed) = manager.send("GET", "/plans?q=CPP-10", None).await;
    assert!(listed.contains("0 of 1 plans"), "the dry run stored nothing: {listed}");
    let (_, _, done) = import(&mut manager, &parts(false)).await;
    assert!(done.contains("1 applied, 0 unchanged, 2 refused"), "{done}");
    assert!(
        done.contains("check digit") && done.contains("start_date: no such day"),
        "each refused row says why: {done}"
    );
    let link = done.find("/import/jobs/").map(|at| done[at..].split('"').next().unwrap().to_string()).unwrap();
    let (status, headers, csv) = manager.send("GET", &link, None).await;
    assert_eq!((status, header(&headers, "content-type")), (200, Some("text/csv")), "{link}");
    assert!(csv.starts_with("row,reference,result,reason\n2,CPP-10,applied,\n3,CPP-11,refused,"), "{csv}");
    assert_eq!(worker.send("GET", &link, None).await.0, 404, "another person's import is not theirs to see");

    // A form larger than any page takes is refused unread; a file larger than the import takes
    // is refused saying so.
    let big = "x".repeat(100 << 10);
    assert_eq!(manager.send("POST", "/plans", Some(&[("reference", big.as_str()), ("csrf", &token)])).await.0, 413);
    let huge = "a".repeat((64 << 20) + 1);
    let (status, _, refused) =
        manager.post_multipart("/import", &[("csrf", None, &token), ("file", Some("huge.csv"), &huge)]).await;
    assert!(status == 400 && refused.contains("larger than 64 MiB: split it"), "{status} {refused}");

    // Plans: an error names the field; a change goes through the node.
    let (_, _, plans) = manager.send("GET", "/plans", None).await;
    let token = csrf(&plans);
    let bad = [
        ("reference", "CPP-20"),
        ("nhs", "123"),
        ("plan_type", "CPP"),
        ("start", "2026-02-01"),
        ("csrf", token.as_str()),
    ];
    let (status, _, refused) = manager.send("POST", "/plans", Some(&bad)).await;
    assert!(status == 400 && refused.contains("href=\"#nhs\"") && refused.contains("nhs:"), "{refused}");
    let withdraw = [("csrf", token.as_str())];
    assert_eq!(manager.send("POST", "/plans/CPP-10/withdraw", Some(&withdraw)).await.0, 303);
    let (_, _, after) = manager.send("GET", "/plans?q=CPP-10", None).await;
    assert!(after.contains("Withdrawn"), "{after}");
    assert_eq!(manager.send("GET", "/audit", None).await.0, 403, "only administrators read the audit log");

    let mut admin = Page::new(addr);
    assert_eq!(admin.sign_in("pat.lee", PASSWORD).await.0, 303);
    let (status, _, audit) = admin.send("GET", "/audit", None).await;
    assert_eq!(status, 200);
    for want in [
        "Ali Khan (ali.khan)",
        "acknowledged: notification",
        "Jo Smith (jo.smith)",
        "imported plans: 1 applied",
        "withdrew plan CPP-10",
    ] {
        assert!(audit.contains(want), "the audit log lacks {want:?}: {audit}");
    }
    hackney.shutdown().await;
    hub.shutdown().await;
}

/// A case-management system's endpoint: answers 503 to the first `failures` posts, then 200;
/// keeps every post's headers and body.
async fn endpoint(
    failures: usize,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<(u16, String, String)>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((stream, _)) = listener.accept().await else { return };
            let mut reader = tokio::io::BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0usize);
            for _ in 0..64 {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body).await;
            let status = if log.lock().unwrap().len() < failures { 503 } else { 200 };
            log.lock().unwrap().push((status, head, String::from_utf8_lossy(&body).into_owned()));
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = reader.get_mut().write_all(answer.as_bytes()).await;
        }
    });
    (addr, seen)
}

fn header_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook__a_notification_is_posted_signed__retried_until_taken__and_not_again_after_a_restart() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBN").await;
    let (addr, seen) = endpoint(2).await;
    let secret = "a shared secret of more than thirty-two characters";
    let secret_file = fed.home("204").join("webhook.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let webhook = cpis_node::config::WebhookConfig {
        url: format!("http://{addr}/cpis/notifications"),
        ca_file: None,
        secret_file: secret_file.clone(),
        retry_max_ms: 1_000,
    };
    let with_webhook = |c: &mut cpis_node::config::NodeConfig| c.webhook = Some(webhook.clone());
    let hackney = fed.start_with("204", with_webhook).await;
    let plan = json!({ "reference": "LAC-1", "nhs": CHILD, "plan_type": "LAC", "start": "2026-01-05" });
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan)).await.0, 200);
    wait_until("the plan reaches the hub", Duration::from_secs(20), || hub_caught_up(&fed, "HUBN", "204")).await;
    let nurse = Person { id: "N1".into(), name: "Sam Patel".into(), role: "Staff nurse".into() };
    let request = LookupRequest { nhs: NhsNumber::parse(CHILD).unwrap(), person: nurse };
    let outcome = lookup(&fed.setting_config("RXH01"), request).await.expect("the lookup is answered");
    let id = outcome.lookup_id.to_hex();
    wait_until("the endpoint takes the notification", Duration::from_secs(30), || async {
        seen.lock().unwrap().iter().any(|(status, _, _)| *status == 200)
    })
    .await;
    let posts = seen.lock().unwrap().clone();
    assert_eq!(posts.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(), [503, 503, 200], "retried until taken");
    for (_, head, body) in &posts {
        assert_eq!(header_value(head, "x-cpis-delivery"), id, "the same delivery id on every try");
        let timestamp: u64 = header_value(head, "x-cpis-timestamp").parse().unwrap();
        let expected = cpis_node::handover::signature(secret.as_bytes(), timestamp, body.as_bytes());
        assert_eq!(header_value(head, "x-cpis-signature"), expected, "signed with the shared secret");
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((doc["lookup_id"].as_str(), doc["person"]["name"].as_str()), (Some(id.as_str()), Some("Sam Patel")));
    }
    wait_until("the inbox says it was handed on", Duration::from_secs(10), || async {
        let (_, inbox) = api_json(&fed, "204", "GET", "/notifications", None).await;
        inbox["notifications"][0]["handed_at"].is_string()
    })
    .await;
    // Recorded durably: a restarted node does not post it again.
    hackney.shutdown().await;
    let hackney = fed.start_with("204", with_webhook).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "nothing posted again after the restart");
    hackney.shutdown().await;
    hub.shutdown().await;
}

/// Polls an API import job until it is no longer running (bounded): the job's last state.
async fn import_job_end(fed: &Fed, job: u64) -> serde_json::Value {
    let path = format!("/plans/import/jobs/{job}");
    let mut last = json!(null);
    for _ in 0..600 {
        last = api_json(fed, "204", "GET", &path, None).await.1;
        if last["state"] != "running" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("import job {job} still running after 600 polls: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_import_job__runs_in_chunks__reports_every_row__a_dry_run_stores_nothing__a_bad_file_is_refused_whole() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBN").await;
    let hackney = fed.start("204").await;
    let (addr, token) = fed.api_of("204");
    let post = |path: &'static str, csv: String| {
        let token = token.clone();
        async move {
            let (status, body) = cpis_tests::http(addr, &token, "POST", path, Some(("text/csv", csv.as_bytes()))).await;
            (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or(json!(body)))
        }
    };
    // More rows than one chunk, with a broken row in the second chunk.
    let rows = cpis_node::jobs::CHUNK_ROWS + 500;
    let mut csv = String::from("reference,nhs_number,plan_type,start_date\n");
    for (i, nhs) in cpis_tests::children(rows, 0).iter().enumerate() {
        let nhs = if i == 1_200 { "4010232138".to_string() } else { nhs.digits() };
        csv.push_str(&format!("CPP-{i},{nhs},CPP,2026-02-01\n"));
    }
    let (status, dry) = post("/plans/import/jobs?dry_run=true", csv.clone()).await;
    assert_eq!(status, 202, "{dry}");
    assert_eq!((dry["rows_total"].as_u64(), dry["dry_run"].as_bool()), (Some(rows as u64), Some(true)), "{dry}");
    let dry = import_job_end(&fed, dry["job"].as_u64().unwrap()).await;
    assert_eq!(dry["state"], "done", "{dry}");
    assert_eq!(
        (dry["report"]["applied"].as_u64(), dry["report"]["refused"].as_u64()),
        (Some(rows as u64 - 1), Some(1))
    );
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    assert_eq!(plans["plans"].as_array().unwrap().len(), 0, "a dry run stores nothing");

    let (status, job) = post("/plans/import/jobs", csv.clone()).await;
    assert_eq!(status, 202, "{job}");
    let done = import_job_end(&fed, job["job"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["rows_done"].as_u64(), Some(rows as u64), "{done}");
    let report = &done["report"];
    assert_eq!((report["applied"].as_u64(), report["refused"].as_u64()), (Some(rows as u64 - 1), Some(1)));
    let refused: Vec<_> = report["rows"].as_array().unwrap().iter().filter(|r| r["result"] == "refused").collect();
    assert_eq!(refused[0]["row"].as_u64(), Some(1_202), "rows are numbered as lines, the header being 1");
    assert!(refused[0]["reason"].as_str().unwrap().contains("check digit"), "{}", refused[0]);
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    assert_eq!(plans["plans"].as_array().unwrap().len(), rows - 1);

    // The same file again changes nothing; a misspelt column refuses the file before any job.
    let again = post("/plans/import/jobs", csv).await.1;
    let again = import_job_end(&fed, again["job"].as_u64().unwrap()).await;
    assert_eq!(again["report"]["unchanged"].as_u64(), Some(rows as u64 - 1), "{again}");
    let (status, refused) =
        post("/plans/import/jobs", "reference,nhs_number,plan_type,start_date,withdrawl\n".into()).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("withdrawl"), "{refused}");
    let (status, missing) = api_json(&fed, "204", "GET", "/plans/import/jobs/99", None).await;
    assert_eq!(status, 404, "{missing}");
    hackney.shutdown().await;
    hub.shutdown().await;
}

/// The plan `reference` in `GET /plans`.
async fn listed_plan(fed: &Fed, reference: &str) -> serde_json::Value {
    let (_, plans) = api_json(fed, "204", "GET", "/plans", None).await;
    plans["plans"].as_array().unwrap().iter().find(|p| p["reference"] == reference).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_show_whether_every_hub_holds_their_latest_version__a_stopped_hub_shows_behind_until_it_catches_up() {
    let fed = Fed::create(FederationSpec::new("spread").hub("HUBN").hub("HUBS").authority("204", "Hackney", &["HUBN"]));
    let north = fed.start("HUBN").await;
    let south = fed.start("HUBS").await;
    let mut accounts = Accounts::default();
    accounts.add_user("ali.khan", "Ali Khan", "Duty social worker", AccountRole::SocialWorker, PASSWORD).unwrap();
    accounts.save(&fed.home("204").join("users.json")).unwrap();
    let hackney = fed.start_with("204", |c| c.pages = Some(PagesConfig::default())).await;
    let addr = hackney.pages_url().unwrap().trim_start_matches("http://").parse().unwrap();

    let plan = |reference: &str, nhs: &str| json!({ "reference": reference, "nhs": nhs, "plan_type": "CPP", "start": "2026-01-05" });
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan("CPP-1", CHILD))).await.0, 200);
    wait_until("both hubs are known to hold CPP-1", Duration::from_secs(20), || async {
        listed_plan(&fed, "CPP-1").await["at_every_hub"] == true
    })
    .await;
    let (_, status) = api_json(&fed, "204", "GET", "/status", None).await;
    assert_eq!(status["hubs_holding"].as_array().map(Vec::len), Some(2), "{status}");

    // HUBS stops: its home hub still says where HUBS was, so a new plan shows as not yet there.
    south.shutdown().await;
    assert_eq!(api_json(&fed, "204", "POST", "/plans", Some(plan("CPP-2", "4010232137"))).await.0, 200);
    wait_until("CPP-2 shows as not yet at HUBS", Duration::from_secs(20), || async {
        listed_plan(&fed, "CPP-2").await["not_yet_at"] == json!(["HUBS"])
    })
    .await;
    assert_eq!(listed_plan(&fed, "CPP-1").await["at_every_hub"], true, "the older plan is still everywhere");
    let mut worker = Page::new(addr);
    assert_eq!(worker.sign_in("ali.khan", PASSWORD).await.0, 303);
    let (_, _, page) = worker.send("GET", "/plans", None).await;
    assert!(page.contains("Not yet at HUBS") && page.contains("At every hub"), "{page}");

    let south = fed.start("HUBS").await;
    wait_until("HUBS catches up and is known to", Duration::from_secs(30), || async {
        listed_plan(&fed, "CPP-2").await["at_every_hub"] == true
    })
    .await;
    let (_, _, page) = worker.send("GET", "/plans", None).await;
    assert!(!page.contains("Not yet at"), "{page}");
    hackney.shutdown().await;
    south.shutdown().await;
    north.shutdown().await;
}

/// Accounts for the tests below: a social worker and a team manager.
fn save_accounts(fed: &Fed) {
    let mut accounts = Accounts::default();
    accounts.add_user("ali.khan", "Ali Khan", "Duty social worker", AccountRole::SocialWorker, PASSWORD).unwrap();
    accounts.add_user("jo.smith", "Jo Smith", "Team manager", AccountRole::TeamManager, PASSWORD).unwrap();
    accounts.save(&fed.home("204").join("users.json")).unwrap();
}

/// The council's audit log on a disk that takes no more (its file is `/dev/full`): an
/// acknowledgement, a plan recorded and an import each stand, the person is told that the audit
/// log could not record it, and each line not written is counted for the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_the_audit_log_cannot_record_stands__the_person_is_told__and_it_is_counted() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBN").await;
    save_accounts(&fed);
    std::os::unix::fs::symlink("/dev/full", fed.home("204").join("pages-audit.jsonl")).unwrap();
    let hackney = fed.start_with("204", |c| c.pages = Some(PagesConfig::default())).await;
    let addr = hackney.pages_url().unwrap().trim_start_matches("http://").parse().unwrap();
    notified_of_a_lookup(&fed).await;
    let told = "This was done, but the council's audit log could not record it";

    let mut worker = Page::new(addr);
    assert_eq!(worker.sign_in("ali.khan", PASSWORD).await.0, 303);
    let (_, _, inbox) = worker.send("GET", "/inbox", None).await;
    let id = first_notification(&inbox);
    let (_, _, detail) = worker.send("GET", &format!("/inbox/{id}"), None).await;
    let token = csrf(&detail);
    let ack = [("note", "Called the UTC"), ("csrf", token.as_str())];
    let (status, _, page) = worker.send("POST", &format!("/inbox/{id}/ack"), Some(&ack)).await;
    assert_eq!(status, 500, "{page}");
    assert!(page.contains(told) && page.contains("govuk-warning-text"), "{page}");
    assert!(page.contains("Acknowledged by Ali Khan (ali.khan)"), "the acknowledgement stands: {page}");

    let mut manager = Page::new(addr);
    assert_eq!(manager.sign_in("jo.smith", PASSWORD).await.0, 303);
    let (_, _, plans) = manager.send("GET", "/plans", None).await;
    let token = csrf(&plans);
    let form = [
        ("reference", "CPP-30"),
        ("nhs", "4010232137"),
        ("plan_type", "CPP"),
        ("start", "2026-02-01"),
        ("csrf", token.as_str()),
    ];
    let (status, _, page) = manager.send("POST", "/plans", Some(&form)).await;
    assert!(status == 500 && page.contains(told), "{status} {page}");
    assert!(page.contains("CPP-30") && page.contains("1 of 2 plans"), "the plan stands, shown: {page}");
    let csv = "reference,nhs_number,plan_type,start_date\nCPP-31,4010232137,CPP,2026-03-01\n";
    let (_, _, page) = import(&mut manager, &[("csrf", None, token.as_str()), ("file", Some("plans.csv"), csv)]).await;
    assert!(page.contains(told) && page.contains("1 applied, 0 unchanged, 0 refused"), "{page}");

    let (addr, token) = fed.api_of("204");
    let (_, metrics) = cpis_tests::http(addr, &token, "GET", "/metrics", None).await;
    // The import's two lines (its start and its end) are two failures.
    assert!(metrics.contains("cpis_council_audit_failures_total 4\n"), "{metrics}");
    hackney.shutdown().await;
    hub.shutdown().await;
}

/// An import that stops part way (its node stops): the audit log says how many rows were answered
/// before, and what they did; after a restart the council holds those plans, and no more than one
/// chunk beyond them (the chunk in flight when the node stopped may have been stored unanswered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stopped_part_way_leaves_an_audit_line_for_the_rows_it_applied() {
    let fed = Fed::create(spec());
    let hub = fed.start("HUBN").await;
    save_accounts(&fed);
    let pages = |c: &mut cpis_node::config::NodeConfig| c.pages = Some(PagesConfig::default());
    let hackney = fed.start_with("204", pages).await;
    let addr = hackney.pages_url().unwrap().trim_start_matches("http://").parse().unwrap();
    let rows = 40 * cpis_node::jobs::CHUNK_ROWS;
    let mut csv = String::from("reference,nhs_number,plan_type,start_date\n");
    for (i, nhs) in cpis_tests::children(rows, 0).iter().enumerate() {
        csv.push_str(&format!("CPP-{i},{},CPP,2026-02-01\n", nhs.digits()));
    }
    let mut manager = Page::new(addr);
    assert_eq!(manager.sign_in("jo.smith", PASSWORD).await.0, 303);
    let (_, _, form) = manager.send("GET", "/import", None).await;
    let parts = [("csrf", None, csrf(&form)), ("file", Some("plans.csv"), csv)];
    let parts: Vec<_> = parts.iter().map(|(n, f, v)| (*n, *f, v.as_str())).collect();
    let (status, headers, _) = manager.post_multipart("/import", &parts).await;
    let job = header(&headers, "location").map(String::from).unwrap_or_else(|| panic!("{status}: no job"));
    // Stopped once a chunk is done, well before the last.
    for poll in 0.. {
        let (_, _, page) = manager.send("GET", &job, None).await;
        assert!(page.contains("rows done"), "the import is no longer running: {page}");
        if !page.contains(">0 of ") {
            break;
        }
        assert!(poll < 600, "no chunk imported after 600 polls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Who started it is on record before its rows change anything (a node killed now would
    // leave no line of the end).
    let audit_path = fed.home("204").join("pages-audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
    let started = audit.lines().find(|l| l.contains("started importing plans")).expect("the import's first line");
    assert!(started.contains("jo.smith") && started.contains(&format!("{rows} rows")), "{started}");
    hackney.shutdown().await;

    let line = || {
        let text = std::fs::read_to_string(&audit_path).unwrap_or_default();
        text.lines().find(|l| l.contains("imported plans")).map(String::from)
    };
    wait_until("the import's audit line", Duration::from_secs(10), || async { line().is_some() }).await;
    let entry: serde_json::Value = serde_json::from_str(&line().unwrap()).unwrap();
    assert_eq!(entry["user"], "jo.smith");
    let detail = entry["detail"].as_str().unwrap();
    let number = |text: &str| text.trim().parse::<usize>().unwrap_or_else(|_| panic!("{text:?} in {detail}"));
    let (sent, rest) = detail.strip_prefix("stopped after ").and_then(|d| d.split_once(" of ")).expect(detail);
    let (applied, rest) = rest.split_once("): ").and_then(|(_, r)| r.split_once(" applied")).expect(detail);
    let (sent, applied) = (number(sent), number(applied));
    assert!(rest.starts_with(", 0 unchanged, 0 refused") && detail.contains("the node stopped"), "{detail}");
    assert!(sent > 0 && sent < rows && applied == sent, "{detail}");

    let hackney = fed.start("204").await;
    let (_, plans) = api_json(&fed, "204", "GET", "/plans", None).await;
    let held = plans["plans"].as_array().map_or(0, Vec::len);
    assert!((applied..=applied + cpis_node::jobs::CHUNK_ROWS).contains(&held), "{held} held, {detail}");
    hackney.shutdown().await;
    hub.shutdown().await;
}
