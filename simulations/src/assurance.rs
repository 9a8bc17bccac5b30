//! The assurer's report: one HTML page per run and an index of a sweep, written by
//! `cpis-sim --report DIR`.
//!
//! A page says whether the run passed, lists the faults drawn, gives the key figures in a table
//! and shows the plots of [`crate::plots`] inline. Pages are plain HTML and CSS with inline SVG:
//! no script, no font or style sheet from elsewhere, so a page opens from a file, and prints.
//!
//! ```no_run
//! use cpis_simulations::{assurance, report::Summary, run};
//! let reports = vec![run::run(&run::RunConfig { seed: 7, scale: 0.002, ..Default::default() })];
//! let dir = std::path::Path::new("sim-report");
//! for r in &reports {
//!     assurance::write_page(dir, r)?; // sim-report/seed-7.html
//! }
//! assurance::write_index(dir, &reports, &Summary::of(&reports))?; // sim-report/index.html
//! # Ok::<(), assurance::WriteError>(())
//! ```

use crate::human;
use crate::plots::{self, PlotError, escape};
use crate::report::{RunReport, Summary};
use crate::run::violation_lines;
use crate::scenarios::Scenario;
use crate::timeline::{flagged_missed, unanswered};
use std::fmt;
use std::path::{Path, PathBuf};

/// A page that could not be written.
#[derive(Debug)]
pub enum WriteError {
    /// A plot could not be drawn.
    Plot(PlotError),
    /// The folder or a file could not be written.
    Io { path: PathBuf, source: std::io::Error },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Plot(e) => e.fmt(f),
            WriteError::Io { path, source } => write!(f, "cannot write {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1000px;\
margin:2em auto;padding:0 1em;color:#1a1a1a;line-height:1.45}\
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}th,td{text-align:left;vertical-align:top;padding:.3em .8em;\
border-bottom:1px solid #ddd}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums;\
white-space:nowrap}td.name{white-space:nowrap}\
.pass{color:#006e3c;font-weight:bold}.fail{color:#b00020;font-weight:bold}\
.verdict{font-size:1.2em;padding:.6em 1em;border-left:6px solid}.verdict.pass{border-color:#006e3c;background:#eef8f1}\
.verdict.fail{border-color:#b00020;background:#fdeeee}code{font-size:.95em;background:#f3f3f3;padding:0 .2em;\
overflow-wrap:anywhere}figure{margin:1.5em 0}figcaption{color:#333;max-width:60em}svg{max-width:100%;height:auto}\
small{color:#444}";

/// The file name of a run's page, without `.html`: `seed-7` for a swarm run,
/// `scenario-<name>` for a scenario's seed 1 and `scenario-<name>-seed-<n>` for its other seeds.
pub fn run_name(r: &RunReport) -> String {
    match (r.scenario.as_str(), r.seed) {
        ("swarm", seed) => format!("seed-{seed}"),
        (name, 1) => format!("scenario-{name}"),
        (name, seed) => format!("scenario-{name}-seed-{seed}"),
    }
}

fn what(r: &RunReport) -> String {
    match Scenario::parse(&r.scenario) {
        Some(s) => format!("scenario {}, seed {}", s.name(), r.seed),
        None => format!("seed {} (faults drawn at random from the seed)", r.seed),
    }
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    )
}

fn verdict(r: &RunReport) -> String {
    if r.ok {
        "<p class=\"verdict pass\">Passed: every check held.</p>\n".into()
    } else {
        format!(
            "<p class=\"verdict fail\">Failed: {} lost, {} unexpected (listed below).</p>\n",
            r.lost.count, r.unexpected.count
        )
    }
}

/// The summary table's rows: what, and its value (already escaped).
fn figures(r: &RunReport) -> Vec<(&'static str, String)> {
    let l = &r.lookups;
    let n = &r.notifications;
    let t = &r.timeline;
    let mut rows = vec![
        ("Result", if r.ok { "passed".into() } else { "FAILED".into() }),
        ("Run", escape(&what(r))),
        ("Federation", format!("{} (scale {})", escape(&r.world), r.scale)),
        (
            "Measured period",
            format!(
                "{}, then {} after the heal",
                human::duration(t.heal_ms),
                human::duration(t.end_ms.saturating_sub(t.heal_ms))
            ),
        ),
        ("Faults drawn", r.faults.len().to_string()),
    ];
    if let Some(h) = &r.hostile_hub {
        rows.push(("Hostile hub", escape(&format!("{} ({})", h.hub, h.attacks.join(", ")))));
    }
    if let Some(s) = &r.hostile_setting {
        rows.push(("Hostile setting", escape(&s.setting)));
    }
    rows.extend([
        (
            "Lookups answered",
            format!(
                "{} of {} ({} all checked, {} some stale, {} some unavailable)",
                l.answered, l.requests, l.answered_all_checked, l.answered_some_stale, l.answered_some_unavailable
            ),
        ),
        (
            "Lookups not answered",
            format!(
                "{} ({} no hub reachable, {} no answer, {} refused)",
                unanswered(l),
                l.no_hub_reachable,
                l.no_answer,
                l.refused_clock_skew + l.refused_rate_limited + l.refused_other
            ),
        ),
        (
            "Flagged lookups",
            format!("{} ({} complete, {} missed a plan)", l.flagged, l.flagged_complete, flagged_missed(l)),
        ),
        (
            "Notifications",
            format!(
                "{} of {} delivered, {} outstanding, {} lost with a wiped disk",
                n.delivered, n.promised, n.outstanding, n.lost_with_wiped_disk
            ),
        ),
        (
            "Notification latency",
            format!(
                "median {}, p99 {}, longest {}",
                human::duration(n.latency_ms.p50),
                human::duration(n.latency_ms.p99),
                human::duration(n.latency_ms.max)
            ),
        ),
        ("Convergence after the heal", human::duration_or(r.convergence_after_heal_ms, "never")),
        (
            "Ended or withdrawn plan at every hub",
            format!(
                "p99 {}, longest {}",
                human::duration(r.ended_plan_shown_ms.p99.max(r.withdrawn_plan_shown_ms.p99)),
                human::duration(r.ended_plan_shown_ms.max.max(r.withdrawn_plan_shown_ms.max))
            ),
        ),
        ("Bad inputs", format!("{} injected, {} refused", r.bad_inputs.injected, r.bad_inputs.refused)),
        ("Equivocation alarms", r.equivocation_alarms.to_string()),
        ("Violations", format!("{} lost, {} unexpected", r.lost.count, r.unexpected.count)),
        (
            "Real time",
            format!(
                "load {}, measured period {} ({:.0}× real time), checks {}",
                human::duration(r.load_real_ms),
                human::duration(r.real_ms),
                r.sim_to_real,
                human::duration(r.check_real_ms)
            ),
        ),
        ("Trace hash", format!("<code>{}</code>", escape(&r.trace_hash))),
        ("Repeat the run", format!("<code>{}</code>", escape(&r.reproduce))),
    ]);
    rows
}

fn list(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        return format!("<p>{}</p>\n", escape(empty));
    }
    let lis: String = items.iter().map(|i| format!("<li>{}</li>\n", escape(i))).collect();
    format!("<ul>\n{lis}</ul>\n")
}

/// A run's page.
pub fn page(r: &RunReport) -> Result<String, PlotError> {
    let title = format!("Assurer's report: {}", what(r));
    let mut html = head(&title);
    html += &format!("<h1>{}</h1>\n", escape(&title));
    html += "<p><a href=\"index.html\">All runs of this report</a></p>\n";
    html += &verdict(r);
    if let Some(s) = Scenario::parse(&r.scenario) {
        html += &format!("<p>{}</p>\n", escape(s.description()));
    }
    html += "<h2>Summary</h2>\n<table>\n";
    for (what, value) in figures(r) {
        html += &format!("<tr><th scope=\"row\">{what}</th><td>{value}</td></tr>\n");
    }
    html += "</table>\n";
    html += &format!("<h2>Faults drawn ({})</h2>\n", r.faults.len());
    html += &list(&r.faults, "None: the run had no fault.");
    if !r.ok {
        html += "<h2>Violations</h2>\n<h3>Lost</h3>\n";
        html += &list(&violation_lines(&r.lost), "None.");
        html += "<h3>Unexpected</h3>\n";
        html += &list(&violation_lines(&r.unexpected), "None.");
    }
    html += "<h2>Over time</h2>\n<p>Times are from the start of the measured period; the green line is the \
             heal, when every fault stops (a hostile member stays hostile).</p>\n";
    for p in plots::all(&r.timeline)? {
        html += &format!(
            "<figure id=\"{}\">\n{}\n<figcaption><strong>{}.</strong> {}</figcaption>\n</figure>\n",
            p.id,
            p.svg,
            escape(&p.title),
            escape(&p.desc)
        );
    }
    html += READING;
    html += "</body>\n</html>\n";
    Ok(html)
}

const READING: &str = "<h2>How to read this page</h2>\n<ul>\n\
<li><strong>Passed</strong> means no acknowledged record was lost and nothing appeared that must not: \
every notification promised reached its authority once, every hub converged on every authority's \
published feed within the liveness bound, and every answer a setting accepted showed exactly what the \
authority had published.</li>\n\
<li><strong>Faults</strong> are drawn at random from the seed (or set by the scenario); misses while a \
fault is in force are figures, not failures. After the heal the checks are strict.</li>\n\
<li><strong>Replication lag</strong> is, for each hub, how long ago the oldest change an authority made \
that the hub did not hold yet was made; it should fall back to under a minute (authorities sign a head \
every minute) once a fault ends. A gap in a line is a hub that was down.</li>\n\
<li><strong>Notification latency</strong> runs from the lookup's answer to the authority's durable store; \
notices held back by a partition arrive once it heals.</li>\n\
<li>The same command repeats the run exactly, with the same trace hash.</li>\n</ul>\n";

/// The index of a sweep: one row per run, with a link to its page.
pub fn index(reports: &[RunReport], summary: &Summary) -> String {
    let title = format!("Assurer's report: {} runs", summary.runs);
    let mut html = head(&title);
    html += &format!("<h1>{}</h1>\n", escape(&title));
    let class = if summary.passed == summary.runs { "pass" } else { "fail" };
    html += &format!(
        "<p class=\"verdict {class}\">{} passed, {} failed.</p>\n",
        summary.passed,
        summary.runs - summary.passed
    );
    html += &format!(
        "<p>Simulated {} in {} of real time. Lookups: {} made, {} answered. Notifications: {} promised, {} delivered; \
         latency p99 at worst {}. Convergence after the heal: at most {}.</p>\n",
        human::duration(summary.simulated_ms),
        human::duration(summary.wall_ms),
        summary.lookups_requested,
        summary.lookups_answered,
        summary.notifications_promised,
        summary.notifications_delivered,
        human::duration(summary.notification_latency_p99_max_ms),
        human::duration(summary.convergence_after_heal_max_ms),
    );
    html += "<table>\n<thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Result</th>\
             <th scope=\"col\">Faults drawn</th><th scope=\"col\">Lookups answered</th>\
             <th scope=\"col\">Flagged, a plan missed</th><th scope=\"col\">Notifications delivered</th>\
             <th scope=\"col\">Latency p99</th><th scope=\"col\">Converged after</th></tr></thead>\n<tbody>\n";
    for r in reports {
        let name = run_name(r);
        let result = if r.ok { "<span class=\"pass\">passed</span>" } else { "<span class=\"fail\">FAILED</span>" };
        let faults = match r.faults.len() {
            0 => "none".to_string(),
            n => format!("{n}<br><small>{}</small>", escape(&r.faults.join("; "))),
        };
        html += &format!(
            "<tr><td class=\"name\"><a href=\"{}.html\">{}</a></td><td>{result}</td><td>{faults}</td><td class=\"n\">{} of {}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{} of {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
            escape(&name),
            escape(&name),
            r.lookups.answered,
            r.lookups.requests,
            flagged_missed(&r.lookups),
            r.notifications.delivered,
            r.notifications.promised,
            human::duration(r.notifications.latency_ms.p99),
            human::duration_or(r.convergence_after_heal_ms, "never"),
        );
    }
    html += "</tbody>\n</table>\n</body>\n</html>\n";
    html
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, WriteError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| WriteError::Io { path: dir.to_path_buf(), source })?;
    }
    std::fs::write(&path, text).map_err(|source| WriteError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// Writes a run's page to `dir/<run name>.html`; returns its path.
pub fn write_page(dir: &Path, r: &RunReport) -> Result<PathBuf, WriteError> {
    let html = page(r).map_err(WriteError::Plot)?;
    write(dir.join(format!("{}.html", run_name(r))), &html)
}

/// Writes the index of `reports` to `dir/index.html`; returns its path.
pub fn write_index(dir: &Path, reports: &[RunReport], summary: &Summary) -> Result<PathBuf, WriteError> {
    write(dir.join("index.html"), &index(reports, summary))
}
