//! The key lifecycle and backups, as an administrator and an operator do them: the real `cpis`
//! binary against real nodes on loopback, with the problems each test guards against.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests report a failed precondition by panicking.
#![allow(non_snake_case)]

mod common;

use common::{Federation, Run, api, cpis, example_csv, lookup, poll};
use cpis_tools::render::{items, number, text};
use serde_json::{Value, json};

/// A child with a plan at Hackney in the example file.
const FLAGGED: &str = "9434765919";

async fn json_of(args: &[&str]) -> Value {
    let run = cpis(&[args, &["--json"]].concat()).await;
    assert_eq!(run.code, 0, "cpis {args:?}: {}", run.stderr);
    run.json()
}

/// `cpis federation rotate-key` for `code`: the new key's file and the command's JSON.
async fn rotate_key(fed: &Federation, code: &str) -> (std::path::PathBuf, Value) {
    let new_file = fed.root.join(format!("{code}-new.key"));
    let dir = fed.fed_dir().display().to_string();
    let args =
        ["federation", "rotate-key", "--dir", &dir, "--code", code, "--key-out", &new_file.display().to_string()];
    (new_file.clone(), json_of(&args).await)
}

/// The key id a node runs on, from its status.
async fn running_key(fed: &Federation, code: &str) -> String {
    let status = api(fed.node(code)).get("/status").await.unwrap();
    text(&status["key"], "id").to_string()
}

/// Publishes the administrator's newest version through `hub` and waits for every running
/// node to hold it.
async fn publish(fed: &Federation, hub: &str) -> u64 {
    let dir = fed.fed_dir().display().to_string();
    let published = json_of(&["federation", "publish", "--dir", &dir, "--node", &fed.config(hub)]).await;
    let version = number(&published, "node_version");
    fed.holds_version(version).await;
    version
}

/// Installs the key file `new` as the member's key (what its operator does before a restart).
fn install_key(fed: &Federation, code: &str, new: &std::path::Path) {
    std::fs::rename(new, fed.home(code).join("node.key")).unwrap();
}

async fn lookup_json(setting: &str) -> Value {
    let run = lookup(setting, FLAGGED, true).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()
}

fn result(doc: &Value) -> &str {
    text(doc, "result")
}

async fn import_and_replicate(fed: &Federation) {
    assert_eq!(cpis(&["plans", "import", &example_csv(), "--node", &fed.node_arg()]).await.code, 3);
    fed.replicated().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation__the_key_a_node_runs_on_is_not_retired__until_it_restarts_on_its_new_key() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    let dir = fed.fed_dir().display().to_string();
    let old = running_key(&fed, "204").await;
    let (new_file, rotated) = rotate_key(&fed, "204").await;
    let new = text(&rotated, "new_key_id").to_string();
    publish(&fed, "HUBA").await;

    // Hackney still runs on its old key: retiring it is refused, naming the rule and the way out.
    let retire = ["federation", "retire-key", "--dir", &dir, "--code", "204", "--key-id", &old];
    let refused = cpis(&[&retire[..], &["--node", &fed.config("HUBA")]].concat()).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("reports running on key") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    let unchecked = cpis(&retire).await;
    assert_eq!(unchecked.code, 2, "clap requires --node or --force");

    // `federation show --node` says which key each node runs and which version it holds.
    let shown = json_of(&["federation", "show", "--dir", &dir, "--node", &fed.config("HUBA")]).await;
    let hackney = items(&shown, "members").iter().find(|m| text(m, "code") == "204").unwrap();
    assert_eq!(text(&hackney["running"], "key_id"), old, "{hackney}");
    assert_eq!(number(&hackney["running"], "directory_version"), number(&shown, "version"));

    fed.stop_node("204").await;
    install_key(&fed, "204", &new_file);
    fed.start_node("204").await;
    fed.whole().await;
    assert_eq!(running_key(&fed, "204").await, new);
    let hub = api(fed.node("HUBA"));
    poll("HUBA sees Hackney on its new key", || async {
        hub.get("/status")
            .await
            .is_ok_and(|s| items(&s, "peers").iter().any(|p| text(p, "code") == "204" && text(p, "key") == new))
    })
    .await;

    let retired = cpis(&[&retire[..], &["--node", &fed.config("HUBA")]].concat()).await;
    assert_eq!(retired.code, 0, "{}", retired.stderr);
    publish(&fed, "HUBA").await;
    fed.whole().await;
    fed.replicated().await;
    let doc = lookup_json(&fed.setting_arg()).await;
    assert_eq!(result(&doc), "alert", "what the old key signed stays valid: {doc}");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_rotated_while_its_peer_could_not_reach_it__the_peer_fetches_the_new_directory_and_they_reconnect() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    // HUBA is down while its key is rotated; HUBB runs on, with the directory before.
    fed.stop_node("HUBA").await;
    let (new_file, rotated) = rotate_key(&fed, "HUBA").await;
    install_key(&fed, "HUBA", &new_file);
    fed.start_node("HUBA").await;
    // The new version goes to HUBA only. HUBB refuses HUBA's dial (it does not know the new key);
    // HUBB's own dial to HUBA, made again while the two are not connected, fetches the version
    // that lists it. `publish` waits until every node holds it.
    publish(&fed, "HUBA").await;
    fed.whole().await;
    let status = api(fed.node("HUBB")).get("/status").await.unwrap();
    let huba = items(&status, "peers").iter().find(|p| text(p, "code") == "HUBA").cloned().unwrap();
    assert_eq!(text(&huba, "key"), text(&rotated, "new_key_id"), "HUBB is connected to HUBA on its new key");
    fed.replicated().await;
    assert_eq!(result(&lookup_json(&fed.setting_arg()).await), "alert");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_down_during_its_rotation__starts_on_the_new_key_and_fetches_the_directory_that_lists_it() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    let before = number(&api(fed.node("204")).get("/status").await.unwrap(), "directory_version");
    fed.stop_node("204").await;

    let (new_file, rotated) = rotate_key(&fed, "204").await;
    let version = publish(&fed, "HUBA").await;
    assert!(version > before);
    // The node's own directory file still predates its new key.
    install_key(&fed, "204", &new_file);
    fed.start_node("204").await;
    fed.whole().await;
    // Connected first; the directory comes from the hub in answer to the node's first sync.
    poll("204 learns the directory from its hub", || async {
        let status = api(fed.node("204")).get("/status").await.unwrap();
        number(&status, "directory_version") == version
    })
    .await;
    let status = api(fed.node("204")).get("/status").await.unwrap();
    assert_eq!(text(&status["key"], "id"), text(&rotated, "new_key_id"));
    assert_eq!(number(&status, "directory_version"), version, "learned from its hub: {status}");
    assert_eq!(text(&status["key"], "status"), "active");

    let add = [
        "plans",
        "add",
        "--reference",
        "CPP-NEW-1",
        "--nhs",
        "401 023 2137",
        "--type",
        "CPP",
        "--start",
        "2026-11-01",
        "--node",
        &fed.node_arg(),
    ];
    assert_eq!(cpis(&add).await.code, 0);
    fed.replicated().await;
    let run = lookup(&fed.setting_arg(), "4010232137", true).await;
    assert_eq!(result(&run.json()), "alert", "a plan signed under the new key reaches settings: {}", run.stdout);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_offline_authoritys_key__its_children_show_as_unavailable_never_no_records__until_it_republishes() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    assert_eq!(result(&lookup_json(&fed.setting_arg()).await), "alert");
    let dir = fed.fed_dir().display().to_string();
    let old = running_key(&fed, "204").await;
    fed.stop_node("204").await;

    // Its only key: refused unless the replacement comes in the same version.
    let revoke = ["federation", "revoke-key", "--dir", &dir, "--code", "204", "--key-id", &old];
    let refused = cpis(&revoke).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("last usable key") && refused.stderr.contains("--replace-with"),
        "{}",
        refused.stderr
    );
    let new_file = fed.root.join("204-replacement.key");
    let replaced = cpis(&[&revoke[..], &["--replace-with", &new_file.display().to_string()]].concat()).await;
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    publish(&fed, "HUBA").await;

    // The hubs dropped what the revoked key signed: the child's council cannot be checked.
    let doc = lookup_json(&fed.setting_arg()).await;
    assert_eq!(result(&doc), "could-not-check", "{doc}");
    let unavailable = items(&doc, "unavailable");
    assert_eq!(text(&unavailable[0], "authority"), "204", "{doc}");
    let shown = lookup(&fed.setting_arg(), FLAGGED, false).await;
    assert!(shown.stdout.contains("COULD NOT CHECK") && !shown.stdout.contains("No records"), "{}", shown.stdout);

    // Back on its replacement key, Hackney republishes its plans by itself.
    install_key(&fed, "204", &new_file);
    fed.start_node("204").await;
    fed.whole().await;
    let setting = fed.setting_arg();
    poll("the child shows as flagged again", || async {
        let run = lookup(&setting, FLAGGED, true).await;
        run.code == 0 && result(&run.json()) == "alert"
    })
    .await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_with_a_directory_older_than_its_hubs_key__still_reaches_the_hub_and_saves_the_new_directory() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    let dir = fed.fed_dir().display().to_string();
    let setting_directory = fed.home("RXH01").join("directory.cpis");
    let held = json_of(&["federation", "show", "--file", &setting_directory.display().to_string()]).await;
    let old = running_key(&fed, "HUBA").await;

    let (new_file, _) = rotate_key(&fed, "HUBA").await;
    publish(&fed, "HUBA").await;
    fed.stop_node("HUBA").await;
    install_key(&fed, "HUBA", &new_file);
    fed.start_node("HUBA").await;
    fed.whole().await;
    let retired = cpis(&[
        "federation",
        "retire-key",
        "--dir",
        &dir,
        "--code",
        "HUBA",
        "--key-id",
        &old,
        "--node",
        &fed.config("HUBB"),
    ])
    .await;
    assert_eq!(retired.code, 0, "{}", retired.stderr);
    let version = publish(&fed, "HUBB").await;
    fed.replicated().await;

    // The setting's copy names only HUBA's retired key; HUBA now shows its new one.
    let doc = lookup_json(&fed.setting_arg()).await;
    assert_eq!((text(&doc, "hub"), result(&doc)), ("HUBA", "alert"), "{doc}");
    assert_eq!(number(&doc, "directory_saved"), version, "{doc}");
    let saved = json_of(&["federation", "show", "--file", &setting_directory.display().to_string()]).await;
    assert!(number(&saved, "version") > number(&held, "version"));
    fed.stop().await;
}

/// `cpis plans list` as (reference, withdrawn) pairs.
async fn plans(fed: &Federation) -> Vec<(String, bool)> {
    let list = json_of(&["plans", "list", "--node", &fed.node_arg()]).await;
    items(&list, "plans").iter().map(|p| (text(p, "reference").to_string(), p["withdrawn"] == json!(true))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_restored_from_an_older_copy__recovers_later_plans_withdrawals_and_notifications_from_its_hubs() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    let copy = fed.root.join("hackney-backup.redb");
    let backup = api(fed.node("204"))
        .send_json(hyper::Method::POST, "/backup", &json!({ "to": copy.display().to_string() }))
        .await;
    assert!(backup.is_ok(), "{backup:?}");
    let before = plans(&fed).await;

    // After the copy: a lookup that notifies Hackney, a new plan, and a withdrawal.
    assert_eq!(result(&lookup_json(&fed.setting_arg()).await), "alert");
    let inbox = api(fed.node("204"));
    let notified = || async { inbox.get("/notifications").await.is_ok_and(|n| items(&n, "notifications").len() == 1) };
    poll("the lookup reaches Hackney's inbox", notified).await;
    let node = fed.node_arg();
    let add = [
        "plans",
        "add",
        "--reference",
        "CPP-LATE-1",
        "--nhs",
        "401 023 2137",
        "--type",
        "CPP",
        "--start",
        "2026-11-02",
        "--node",
        &node,
    ];
    assert_eq!(cpis(&add).await.code, 0);
    assert_eq!(cpis(&["plans", "withdraw", "LAC-2026-0001", "--node", &node]).await.code, 0);
    fed.replicated().await;
    let after = plans(&fed).await;
    assert_ne!(before, after);

    // The operator restores the old copy.
    fed.stop_node("204").await;
    std::fs::copy(&copy, fed.home("204").join("node.redb")).unwrap();
    fed.start_node("204").await;
    fed.whole().await;
    poll("Hackney takes its later entries back from its hub", || async { plans(&fed).await == after }).await;
    let inbox = api(fed.node("204"));
    poll("the hub delivers the notification the copy lacks again", || async {
        inbox.get("/notifications").await.is_ok_and(|n| items(&n, "notifications").len() == 1)
    })
    .await;
    let withdrawn: Vec<_> = after.iter().filter(|(_, w)| *w).map(|(r, _)| r.as_str()).collect();
    assert!(withdrawn.contains(&"LAC-2026-0001"), "the withdrawal stays withdrawn: {after:?}");

    // The recovered plan is Hackney's own again: it can be ended.
    let ended: Run = cpis(&["plans", "end", "CPP-LATE-1", "--end", "2026-11-20", "--node", &node]).await;
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    fed.replicated().await;
    let doc = lookup_json(&fed.setting_arg()).await;
    assert_eq!(result(&doc), "no-records", "the withdrawn plan is not shown again: {doc}");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_key_revoked_with_notifications_waiting__re_signed_under_its_new_key__and_every_one_delivered() {
    let mut fed = Federation::start().await;
    import_and_replicate(&fed).await;
    let dir = fed.fed_dir().display().to_string();
    fed.stop_node("204").await;
    for _ in 0..2 {
        assert_eq!(result(&lookup_json(&fed.setting_arg()).await), "alert");
    }
    let hub = api(fed.node("HUBA"));
    let waiting = |s: &Value| items(s, "notifications_waiting").iter().map(|w| number(w, "waiting")).sum::<u64>();
    assert_eq!(waiting(&hub.get("/status").await.unwrap()), 2, "Hackney is down: both wait at HUBA");

    // HUBA's key is revoked (believed stolen); the version goes out through HUBB.
    let old = running_key(&fed, "HUBA").await;
    let new_file = fed.root.join("HUBA-replacement.key");
    let revoked = cpis(&[
        "federation",
        "revoke-key",
        "--dir",
        &dir,
        "--code",
        "HUBA",
        "--key-id",
        &old,
        "--replace-with",
        &new_file.display().to_string(),
    ])
    .await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let dir_path = fed.fed_dir();
    let published = admin_publish(&dir_path, &api(fed.node("HUBB"))).await;

    // HUBA comes back on its replacement key; Hackney, whose directory predates it, too.
    fed.stop_node("HUBA").await;
    install_key(&fed, "HUBA", &new_file);
    fed.start_node("HUBA").await;
    fed.start_node("204").await;
    fed.whole().await;
    fed.holds_version(published).await;
    let inbox = api(fed.node("204"));
    poll("both notifications reach Hackney", || async {
        inbox.get("/notifications").await.is_ok_and(|n| items(&n, "notifications").len() == 2)
    })
    .await;
    let hub = api(fed.node("HUBA"));
    poll("HUBA's outbox is empty", || async { hub.get("/status").await.is_ok_and(|s| waiting(&s) == 0) }).await;
    fed.stop().await;
}

async fn admin_publish(dir: &std::path::Path, node: &cpis_tools::api::NodeApi) -> u64 {
    cpis_tools::admin::publish(dir, node, None).await.unwrap().node_version
}
