//! The assurer's report: a tiny run's page holds every plot, with its text alternative, and
//! lists the faults drawn; the index lists every run; the run's samples add up to its figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(non_snake_case)] // Test names read as specifications: situation__expectation.

mod common;
use cpis_simulations::assurance;
use cpis_simulations::human;
use cpis_simulations::plots::escape;
use cpis_simulations::report::{RunReport, Summary};
use cpis_simulations::run::run;
use std::path::PathBuf;

/// A fresh folder of its own for one test.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cpis-sim-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// How many times `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn tiny_faulty_run__page_written__every_plot_with_its_text__every_fault_listed() {
    // Seed 3 draws several faults on the tiny federation.
    let r = run(&common::tiny(3, 2));
    common::assert_ok(&r);
    assert!(r.faults.len() >= 2, "seed 3 drew too few faults to test with: {:?}", r.faults);
    let dir = folder("page");
    let path = assurance::write_page(&dir, &r).unwrap();
    assert_eq!(path, dir.join("seed-3.html"));
    let html = std::fs::read_to_string(&path).unwrap();

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h1>Assurer&#39;s report: seed 3"), "no heading");
    assert!(html.contains("Passed: every check held."));
    assert_eq!(count(&html, "<svg "), 5, "five plots");
    for id in ["faults", "lag", "latency", "latency-time", "lookups"] {
        assert!(html.contains(&format!("<title id=\"{id}-title\">")), "plot {id} has no title");
        assert!(html.contains(&format!("<desc id=\"{id}-desc\">")), "plot {id} has no text alternative");
    }
    assert!(html.contains(&format!("Faults drawn ({})", r.faults.len())));
    for fault in &r.faults {
        assert!(html.contains(&format!("<li>{}</li>", escape(fault))), "fault {fault:?} not listed");
    }
    // Self-contained: no script, nothing fetched from elsewhere.
    assert!(!html.contains("<script"));
    let without_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_namespace.contains("http://") && !without_namespace.contains("https://"));
    assert!(!html.contains("<link") && !html.contains("@import") && !html.contains("url("));
    // Durations read as durations.
    let longest = human::duration(r.notifications.latency_ms.max);
    assert!(html.contains(&format!("longest {longest}</td>")), "latency not shown as {longest}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tiny_run__samples_every_interval__last_sample_adds_up_to_the_figures() {
    let r = run(&common::tiny(5, 1));
    let t = &r.timeline;
    assert_eq!(t.heal_ms, 3_600_000);
    assert_eq!(t.hubs.len(), 3);
    assert!(t.samples.len() >= 12, "an hour at five minutes: {} samples", t.samples.len());
    for (i, s) in t.samples.iter().enumerate() {
        assert_eq!(s.lag_ms.len(), 3);
        if i + 1 < t.samples.len() {
            assert_eq!(s.at_ms, i as u64 * t.every_ms, "sample {i} off the grid");
        }
    }
    let last = t.samples.last().unwrap();
    assert_eq!(last.at_ms, t.end_ms, "the last sample is at the end of the run");
    assert_eq!(last.answered, r.lookups.answered);
    assert_eq!(t.notice_bins.iter().sum::<u64>(), r.notifications.delivered as u64);
    // A hub that is up holds heads no older than a few minutes once the network is whole.
    assert!(last.lag_ms.iter().flatten().all(|lag| *lag < 5 * 60_000), "{:?}", last.lag_ms);
}

fn fake(seed: u64, scenario: &str, ok: bool, faults: &[&str]) -> RunReport {
    RunReport {
        seed,
        scenario: scenario.into(),
        ok,
        faults: faults.iter().map(|f| f.to_string()).collect(),
        ..RunReport::default()
    }
}

#[test]
fn sweep__index_lists_every_run_with_its_result_faults_and_link() {
    let reports = vec![
        fake(1, "swarm", true, &["loss 0.100%", "crash HUBLDN at +1 h for 2 min"]),
        fake(2, "swarm", false, &[]),
        fake(1, "london-cut-off-six-hours-at-peak", true, &["cut off London at +9 h for 6 h"]),
        fake(4, "london-cut-off-six-hours-at-peak", true, &[]),
    ];
    let dir = folder("index");
    let path = assurance::write_index(&dir, &reports, &Summary::of(&reports)).unwrap();
    let html = std::fs::read_to_string(path).unwrap();
    for name in [
        "seed-1",
        "seed-2",
        "scenario-london-cut-off-six-hours-at-peak",
        "scenario-london-cut-off-six-hours-at-peak-seed-4",
    ] {
        assert!(html.contains(&format!("<a href=\"{name}.html\">{name}</a>")), "no row for {name}");
    }
    assert_eq!(count(&html, "<tr><td class=\"name\"><a href="), 4, "one row per run");
    assert_eq!(count(&html, ">FAILED<"), 1);
    assert!(html.contains("3 passed, 1 failed."));
    assert!(html.contains("crash HUBLDN at +1 h for 2 min"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_without_samples__page_still_drawn__every_plot_says_so() {
    let html = assurance::page(&fake(9, "swarm", true, &[])).unwrap();
    assert_eq!(count(&html, "<svg "), 5);
    assert!(html.contains("None: the run had no fault."));
    assert!(html.contains("No notification was delivered"));
}
