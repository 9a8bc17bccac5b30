//! The `cpis` binary against real nodes: plans, imports, lookups and the demonstration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

mod common;

use common::{Federation, api, cpis, example_csv, lookup, poll};
use cpis_tools::render::{items, number, text};
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import__good_bad_and_repeated_file__each_row_answered_and_second_import_changes_nothing() {
    let fed = Federation::start().await;
    let node = fed.node_arg();
    let csv = example_csv();

    let dry = cpis(&["plans", "import", &csv, "--dry-run", "--node", &node]).await;
    assert_eq!(dry.code, 3, "a dry run answers as the import would: {}", dry.stderr);
    assert!(
        dry.stdout.contains("6 applied, 0 unchanged, 8 refused") && dry.stdout.contains("nothing was stored"),
        "{}",
        dry.stdout
    );
    let listed = cpis(&["plans", "list", "--node", &node, "--json"]).await.json();
    assert!(items(&listed, "plans").is_empty(), "a dry run stores nothing: {listed}");

    let first = cpis(&["plans", "import", &csv, "--node", &node, "--json"]).await;
    assert_eq!(first.code, 3, "refused rows make exit code 3: {}", first.stderr);
    let report = first.json();
    assert_eq!(
        (number(&report, "applied"), number(&report, "unchanged"), number(&report, "refused")),
        (6, 0, 8),
        "{report}"
    );
    let refused: Vec<(u64, String)> = items(&report, "rows")
        .iter()
        .filter(|r| text(r, "result") == "refused")
        .map(|r| (number(r, "row"), text(r, "reason").to_string()))
        .collect();
    let expect = [
        (8, "check digit"),
        (9, "unknown plan type"),
        (10, "end date is before the start date"),
        (11, "needs an expected due date"),
        (12, "only an unborn-child plan has an expected due date"),
        (13, "no such day"),
        (14, "on 2 rows (lines 8, 14)"),
        (15, "reference"),
    ];
    for ((row, reason), (want_row, want)) in refused.iter().zip(expect) {
        assert_eq!(*row, want_row);
        assert!(reason.contains(want), "row {row}: {reason:?} should say {want:?}");
    }
    let reasons = refused.iter().map(|(_, r)| r.as_str()).collect::<String>();
    assert!(!reasons.contains("9876544321"), "a reason must not repeat the whole NHS number");

    let second = cpis(&["plans", "import", &csv, "--node", &node]).await;
    assert_eq!(second.code, 3);
    assert!(second.stdout.contains("0 applied, 6 unchanged, 8 refused"), "{}", second.stdout);
    assert!(
        second.stdout.contains("row     14  CPP-2026-0007             refused: this reference is on 2 rows"),
        "{}",
        second.stdout
    );

    let good = fed.root.join("good.csv");
    std::fs::write(&good, "reference,nhs_number,plan_type,start_date\nCPP-9,9990000069,CPP,2026-01-05\n").unwrap();
    let clean = cpis(&["plans", "import", &good.display().to_string(), "--node", &node]).await;
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    assert!(clean.stdout.contains("1 applied, 0 unchanged, 0 refused"), "{}", clean.stdout);

    let list = cpis(&["plans", "list", "--node", &node, "--json"]).await;
    assert_eq!(items(&list.json(), "plans").len(), 7);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__flagged_child__plan_shown_with_contacts_freshness_and_notification() {
    let fed = Federation::start().await;
    let node = fed.node_arg();
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &node]).await.code, 3);
    fed.replicated().await;

    let text_run = lookup(&fed.setting_arg(), "943 476 5919", false).await;
    assert_eq!(text_run.code, 0, "{}", text_run.stderr);
    for want in
        ["LOOKED AFTER CHILD", "Hackney (204)", "020 7946 0204", "020 7946 0999", "as of", "Answered by hub HUBA"]
    {
        assert!(text_run.stdout.contains(want), "missing {want:?} in:\n{}", text_run.stdout);
    }

    let json_run = lookup(&fed.setting_arg(), "9434765919", true).await;
    assert_eq!(json_run.code, 0, "{}", json_run.stderr);
    let doc = json_run.json();
    assert_eq!(number(&doc, "records"), 1);
    assert_eq!(text(&doc, "hub"), "HUBA");
    let plan = &items(&doc, "plans")[0];
    assert_eq!(
        (text(plan, "authority"), text(plan, "plan_type"), text(plan, "reference")),
        ("204", "LAC", "LAC-2026-0001")
    );
    assert_eq!(text(&plan["contacts"], "out_of_hours_phone"), "020 7946 0999");
    assert!(plan["as_of_age_ms"].is_u64(), "freshness is given: {plan}");
    // The first lookup is now in the visit history.
    assert_eq!(items(&doc, "history").len(), 1, "{doc}");

    let inbox = api(fed.node("204"));
    poll("both lookups reach Hackney's inbox", || async {
        inbox.get("/notifications").await.is_ok_and(|n| items(&n, "notifications").len() == 2)
    })
    .await;
    let listed = cpis(&["inbox", "list", "--node", &node]).await;
    assert!(listed.stdout.contains("Sam Patel, Staff nurse") && listed.stdout.contains("RXH01"), "{}", listed.stdout);
    assert!(listed.stdout.contains("notifications 1 to 2 of 2, newest first"), "{}", listed.stdout);
    let first = cpis(&["inbox", "list", "--limit", "1", "--node", &node]).await;
    assert_eq!(first.stdout.matches("Lookup ").count(), 1, "{}", first.stdout);
    assert!(
        first.stdout.contains("notifications 1 to 1 of 2") && first.stdout.contains("--offset 1"),
        "{}",
        first.stdout
    );
    let second = cpis(&["inbox", "list", "--limit", "1", "--offset", "1", "--node", &node, "--json"]).await.json();
    assert_eq!((number(&second, "total"), items(&second, "notifications").len()), (2, 1));
    let past = cpis(&["inbox", "list", "--offset", "2", "--node", &node]).await;
    assert_eq!(past.stdout, "No more notifications (2 in all).\n");

    // Ended ten days ago: still shown for a year, as ended, never as an alert.
    let ended = cpis_protocol::time::Timestamp::from_millis(cpis_node::net::now().as_millis() - 10 * 86_400_000);
    let end = ended.date().to_string();
    assert_eq!(cpis(&["plans", "end", "LAC-2026-0001", "--end", &end, "--node", &node]).await.code, 0);
    fed.replicated().await;
    let after = lookup(&fed.setting_arg(), "943 476 5919", false).await;
    assert!(after.stdout.contains("ENDED PLAN (shown for a year after its end)"), "{}", after.stdout);
    assert!(!after.stdout.contains("  ALERT:"), "an ended plan is not an alert: {}", after.stdout);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_accepts_but_never_answers__gives_up_after_timeout_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("api.addr"), hung.local_addr().unwrap().to_string()).unwrap();
    std::fs::write(data.join("api.token"), "token").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "role = \"authority\"\ncode = \"204\"\ndata_dir = \"data\"\n").unwrap();
    // Connections are accepted (by the kernel's backlog) and never read or answered.
    let run = cpis(&["--timeout", "1", "status", "--node", config.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("did not answer within 1000 ms (give more with --timeout SECONDS)"), "{}", run.stderr);
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__number_without_plans__says_no_records() {
    let fed = Federation::start().await;
    // "No records" needs every council's signed head at the hub.
    fed.replicated().await;
    let run = lookup(&fed.setting_arg(), "401 023 2137", false).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("No records"), "{}", run.stdout);
    let doc = lookup(&fed.setting_arg(), "4010232137", true).await.json();
    assert_eq!((number(&doc, "records"), items(&doc, "plans").len()), (0, 0));
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__invalid_number__refused_with_the_rule_before_anything_is_sent() {
    // A fake hub: a UDP socket that records whatever reaches it.
    let fed = Federation::start().await;
    let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let setting = fed.setting_with(&[("HUBA", trap_addr.clone()), ("HUBB", trap_addr)], 500);

    let run = lookup(&setting, "987 654 4321", true).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("check digit is wrong") && run.stderr.contains("Nothing was sent"), "{}", run.stderr);
    assert!(!run.stderr.contains("4321") && !run.stdout.contains("4321"), "the number is not repeated");
    assert!(text(&run.json(), "error").contains("check digit"));
    let short = lookup("/no/such/setting.toml", "943476591", false).await;
    assert_eq!(short.code, 2, "the number is checked before the config is even read");
    assert!(short.stderr.contains("10 digits, this has 9"), "{}", short.stderr);
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(300), trap.recv_from(&mut buf)).await;
    assert!(got.is_err(), "nothing may be sent for an invalid number");

    // The trap does see a valid lookup's packets: the check above can fail.
    let valid = lookup(&setting, "943 476 5919", true).await;
    assert_eq!(valid.code, 1);
    let failed = items(&valid.json(), "failed_hubs").len();
    assert_eq!(failed, 2, "{}", valid.stdout);
    let got = tokio::time::timeout(Duration::from_millis(300), trap.recv_from(&mut buf)).await;
    assert!(got.is_ok(), "a valid lookup reaches the (fake) hub");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup__home_hub_unreachable__fails_over_to_the_next_hub() {
    let fed = Federation::start().await;
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &fed.node_arg()]).await.code, 3);
    fed.replicated().await;
    // The home hub's address leads to a socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let setting = fed.setting_with(&[("HUBA", silent.local_addr().unwrap().to_string())], 1_000);

    let run = lookup(&setting, "943 476 5919", true).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(text(&doc, "hub"), "HUBB", "{doc}");
    let failed = items(&doc, "failed_hubs");
    assert_eq!(failed.len(), 1, "{doc}");
    assert_eq!((text(&failed[0], "hub"), text(&failed[0], "kind")), ("HUBA", "timed-out"));
    assert_eq!(text(&items(&doc, "plans")[0], "authority_name"), "Hackney");

    let text_run = lookup(&setting, "943 476 5919", false).await;
    assert!(text_run.stdout.contains("Answered by hub HUBB"), "{}", text_run.stdout);
    assert!(text_run.stdout.contains("tried first: hub HUBA"), "{}", text_run.stdout);
    drop(silent);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_json__every_step_of_the_story_holds() {
    let run = cpis(&["demo", "--json"]).await;
    let doc = run.json();
    let steps = items(&doc, "steps");
    assert_eq!(steps.len(), 8, "{doc}");
    for step in steps {
        assert_eq!(step["held"], Value::Bool(true), "step did not hold: {step}");
        assert!(step["ms"].is_u64() && step["detail"].is_string());
    }
    assert_eq!(doc["held"], Value::Bool(true));
    assert_eq!(run.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway__accounts_made_by_cpis_gateway__and_cpis_lookup_through_it_shows_the_alert() {
    let fed = Federation::start().await;
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &fed.node_arg()]).await.code, 3);
    fed.replicated().await;
    let setting = fed.setting_arg();

    let added = cpis(&[
        "gateway",
        "add-user",
        "--config",
        &setting,
        "--user",
        "sam.patel",
        "--name",
        "Sam Patel",
        "--job",
        "Staff nurse",
        "--json",
    ])
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(text(&added.json(), "password").len(), 20, "a new random password is printed once");
    let refused =
        cpis(&["gateway", "add-user", "--config", &setting, "--user", "sam patel", "--name", "S", "--job", "J"]).await;
    assert_eq!(refused.code, 2, "a bad user name is refused: {}", refused.stderr);
    assert!(refused.stderr.contains("user:") && refused.stderr.contains("nothing was changed"), "{}", refused.stderr);
    let system = cpis(&[
        "gateway",
        "add-system",
        "--config",
        &setting,
        "--system",
        "EHR",
        "--name",
        "Clinical system",
        "--json",
    ])
    .await;
    let token = text(&system.json(), "token").to_string();
    let listed = cpis(&["gateway", "list", "--config", &setting]).await;
    assert!(listed.stdout.contains("sam.patel") && listed.stdout.contains("EHR"), "{}", listed.stdout);
    assert!(!listed.stdout.contains(&token), "the token is shown once, never listed");

    let config = cpis_node::config::SettingConfig::load(std::path::Path::new(&setting)).unwrap();
    let token_file = config.gateway.data_dir.join("ehr.token");
    std::fs::write(&token_file, &token).unwrap();
    let gateway = cpis_node::gateway::RunningGateway::start(config).await.unwrap();
    let url = gateway.url().to_string();
    let through = |json: bool| {
        let (url, token_file) = (url.clone(), token_file.display().to_string());
        async move {
            let mut args = vec!["lookup", "--gateway", &url, "--token-file", &token_file, "--nhs", "943 476 5919"];
            args.extend(["--user-id", "N4521", "--user-name", "Sam Patel", "--role", "Staff nurse"]);
            if json {
                args.push("--json");
            }
            cpis(&args).await
        }
    };
    let shown = through(false).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    for want in ["CHILD CARE ALERT: 1 plan(s)", "LOOKED AFTER CHILD", "Hackney (204)", "020 7946 0999"] {
        assert!(shown.stdout.contains(want), "missing {want:?} in:\n{}", shown.stdout);
    }
    let bundle = through(true).await.json();
    assert_eq!((text(&bundle, "resourceType"), number(&bundle, "total")), ("Bundle", 1));
    std::fs::write(&token_file, "not-the-token").unwrap();
    let denied = through(false).await;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("403") && denied.stderr.contains("bearer token"), "{}", denied.stderr);
    gateway.shutdown().await;
    fed.stop().await;
}

#[test]
fn output_to_a_reader_that_went_away__exits_quietly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fed = dir.path().join("fed");
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_cpis"))
        .args(["federation", "create", "--name", "Pipe"])
        .arg("--dir")
        .arg(&fed)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // `cpis federation show | head -0`: the reading end is closed before anything is written.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cpis"))
        .args(["federation", "show", "--dir"])
        .arg(&fed)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
