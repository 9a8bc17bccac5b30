//! A council's CSV import through its pages, on loopback (release build):
//! `cargo run --release -p cpis-tests --bin cpis-council-bench -- [rows]`
//!
//! Starts a hub and an authority with its pages in this process, signs a team manager in, uploads
//! a CSV of `rows` plans (default 100,000) through the import page and follows the job page until
//! the last row is done; prints the time to the upload's answer, to the last row, and the rate.
//! Asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a failed precondition panics.

use cpis_node::accounts::{AccountRole, Accounts};
use cpis_node::config::PagesConfig;
use cpis_protocol::harness::FederationSpec;
use cpis_tests::{Fed, Page, children, csrf, header};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let fed = Fed::create(FederationSpec::new("council-bench").hub("HUBN").authority("204", "Hackney", &["HUBN"]));
    let hub = fed.start("HUBN").await;
    let mut accounts = Accounts::default();
    accounts
        .add_user("jo.smith", "Jo Smith", "Team manager", AccountRole::TeamManager, "correct horse battery")
        .unwrap();
    accounts.save(&fed.home("204").join("users.json")).unwrap();
    let hackney = fed.start_with("204", |c| c.pages = Some(PagesConfig::default())).await;
    let addr = hackney.pages_url().unwrap().trim_start_matches("http://").parse().unwrap();
    let mut csv = String::from("reference,nhs_number,plan_type,start_date,end_date,due_date,withdrawn\n");
    for (i, nhs) in children(rows, 0).into_iter().enumerate() {
        csv += &format!("LAC-{i},{},LAC,2026-01-05,,,\n", nhs.digits());
    }
    let mut page = Page::new(addr);
    page.sign_in("jo.smith", "correct horse battery").await;
    let (_, _, form) = page.send("GET", "/import", None).await;
    let token = csrf(&form);
    let started = Instant::now();
    let (_, headers, _) =
        page.post_multipart("/import", &[("csrf", None, &token), ("file", Some("plans.csv"), &csv)]).await;
    let answered = started.elapsed();
    let job = header(&headers, "location").expect("a job page").to_string();
    let mut polls = 0;
    let body = loop {
        let (_, _, body) = page.send("GET", &job, None).await;
        polls += 1;
        if !body.contains("http-equiv=\"refresh\"") || polls > 36_000 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = started.elapsed();
    let summary = body.find("id=\"results\">").map(|at| body[at + 13..].split('<').next().unwrap_or("").to_string());
    println!(
        "{rows} rows ({} MB) through the import page: upload answered in {:.2?}, last row done after {:.2?} ({:.0} rows/s); {}",
        csv.len() >> 20,
        answered,
        done,
        rows as f64 / done.as_secs_f64(),
        summary.unwrap_or_else(|| "no results shown".into())
    );
    hackney.shutdown().await;
    hub.shutdown().await;
    Ok(())
}
