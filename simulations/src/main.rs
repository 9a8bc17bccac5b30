//! `cpis-sim`: runs seeds, ranges of seeds and named scenarios of the federation simulator.

use anyhow::{Context, bail};
use clap::Parser;
use cpis_simulations::assurance;
use cpis_simulations::human;
use cpis_simulations::report::{RunReport, Summary};
use cpis_simulations::run::{LoadMode, Progress, RunConfig, run_with_progress, violation_lines};
use cpis_simulations::scenarios::Scenario;
use cpis_simulations::timeline::Timeline;
use cpis_simulations::world::SCALE_MAX;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Deterministic simulation of the federation under partitions, crashes and faults.
#[derive(Parser, Debug)]
#[command(name = "cpis-sim", version)]
struct Cli {
    /// Run one seed (faults drawn at random from it).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded) or `A..=B`.
    #[arg(long)]
    seeds: Option<String>,
    /// Run a named scenario, or `all` (every scenario).
    #[arg(long)]
    scenario: Option<String>,
    /// Size of the federation: 1.0 is England (7 hubs, 152 authorities, 1,200 settings,
    /// 135,000 plans); below 0.1 there are 3 hubs; up to 10, several Englands (7 hubs for each,
    /// members and plans in proportion; above 3, settings are capped so that the directory's
    /// 4,096 members hold everyone).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Hours of the measured period (default 24, or the scenario's own).
    #[arg(long)]
    hours: Option<u64>,
    /// How the caseloads reach the hubs first: `replicate` (through the protocol) or `snapshot`.
    #[arg(long, default_value = "replicate")]
    load: String,
    /// The liveness bound in ms: how long the network must have been whole before checks are strict.
    #[arg(long, default_value_t = 600_000)]
    bound_ms: u64,
    /// Run without any fault and without a hostile member.
    #[arg(long)]
    no_faults: bool,
    /// Never draw a hostile hub or setting in swarm runs (named scenarios keep theirs).
    #[arg(long)]
    no_hostile: bool,
    /// Open plans at the start, instead of the scale's share of 135,000.
    #[arg(long)]
    plans: Option<usize>,
    /// Scales every lookup rate (1.0 is the real workload).
    #[arg(long, default_value_t = 1.0)]
    intensity: f64,
    /// Print one JSON object per run and a summary object last.
    #[arg(long)]
    json: bool,
    /// List the named scenarios, with what each does, and exit.
    #[arg(long)]
    list: bool,
    /// Write the assurer's report to this folder: a page per run (`seed-7.html`,
    /// `scenario-<name>.html`) with its faults, figures and plots, and `index.html`.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// `println!`, except that a reader that has gone away (`cpis-sim … | head`) ends the run
/// quietly instead of a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let (a, b, inclusive) = match (text.split_once("..="), text.split_once("..")) {
        (Some((a, b)), _) => (a, b, true),
        (None, Some((a, b))) => (a, b, false),
        _ => bail!("--seeds takes A..B or A..=B, not {text:?}"),
    };
    let a: u64 = a.trim().parse().context("the start of --seeds")?;
    let b: u64 = b.trim().parse().context("the end of --seeds")?;
    let end = if inclusive { b.saturating_add(1) } else { b };
    if end <= a {
        bail!("--seeds {text} is empty");
    }
    Ok((a..end).collect())
}

fn configs(cli: &Cli) -> anyhow::Result<Vec<RunConfig>> {
    let load = match cli.load.as_str() {
        "replicate" => LoadMode::Replicate,
        "snapshot" => LoadMode::Snapshot,
        other => bail!("--load is replicate or snapshot, not {other:?}"),
    };
    if !(cli.scale > 0.0 && cli.scale <= SCALE_MAX) {
        bail!("--scale must be in (0, {SCALE_MAX}], not {}", cli.scale);
    }
    let base = RunConfig {
        seed: 1,
        scale: cli.scale,
        hours: cli.hours,
        load,
        bound_ms: cli.bound_ms,
        scenario: None,
        no_faults: cli.no_faults,
        no_hostile: cli.no_hostile,
        plans: cli.plans,
        intensity: cli.intensity,
    };
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(range)) => parse_seeds(range)?,
        (None, None) => vec![1],
    };
    let scenarios: Vec<Option<Scenario>> = match cli.scenario.as_deref() {
        None => vec![None],
        Some("all") => Scenario::ALL.into_iter().map(Some).collect(),
        Some(name) => vec![Some(Scenario::parse(name).with_context(|| format!("no scenario {name:?}; try --list"))?)],
    };
    let mut out = vec![];
    for scenario in &scenarios {
        for seed in &seeds {
            out.push(RunConfig { seed: *seed, scenario: *scenario, ..base.clone() });
        }
    }
    Ok(out)
}

fn print_run(r: &RunReport, json: bool) {
    if json {
        match serde_json::to_string(r) {
            Ok(text) => say!("{text}"),
            Err(e) => eprintln!("cannot print the report of seed {}: {e}", r.seed),
        }
        return;
    }
    say!("{}", r.line());
    match r.faults.len() {
        0 => say!("  faults drawn: none"),
        n => say!("  faults drawn ({n}): {}", r.faults.join("; ")),
    }
    if !r.ok {
        say!("  FAILED seed {} ({})", r.seed, r.scenario);
        for line in violation_lines(&r.lost) {
            say!("  lost: {line}");
        }
        for line in violation_lines(&r.unexpected) {
            say!("  unexpected: {line}");
        }
        say!("  reproduce with: {}", r.reproduce);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        let width = Scenario::ALL.iter().map(|s| s.name().len()).max().unwrap_or(0);
        for s in Scenario::ALL {
            say!("{:<width$}  {}", s.name(), s.description());
        }
        return ExitCode::SUCCESS;
    }
    let configs = match configs(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cpis-sim: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut reports = vec![];
    let mut written = true;
    for (i, config) in configs.iter().enumerate() {
        let bar = progress_bar(i, configs.len(), config);
        let mut r = run_with_progress(config, &mut |p| show(bar.as_ref(), p));
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        print_run(&r, cli.json);
        if let Some(dir) = &cli.report
            && let Err(e) = assurance::write_page(dir, &r)
        {
            eprintln!("cpis-sim: {e}");
            written = false;
        }
        // The page has it; a long sweep need not keep every run's samples.
        r.timeline = Timeline::default();
        reports.push(r);
    }
    let summary = Summary::of(&reports);
    if cli.json {
        match serde_json::to_string(&serde_json::json!({ "summary": summary })) {
            Ok(text) => say!("{text}"),
            Err(e) => eprintln!("cannot print the summary: {e}"),
        }
    } else if reports.len() > 1 {
        say!("{}", summary.text());
    }
    if let Some(dir) = &cli.report {
        match assurance::write_index(dir, &reports, &summary) {
            Ok(path) if cli.json => eprintln!("assurer's report: {}", path.display()),
            Ok(path) => say!("assurer's report: {}", path.display()),
            Err(e) => {
                eprintln!("cpis-sim: {e}");
                written = false;
            }
        }
    }
    if summary.passed == summary.runs && written { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A progress bar for a run, on a terminal only: elsewhere (a pipe, a file, CI) nothing is drawn.
fn progress_bar(i: usize, runs: usize, config: &RunConfig) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let what = config
        .scenario
        .map_or_else(|| format!("seed {}", config.seed), |s| format!("{} seed {}", s.name(), config.seed));
    let bar = ProgressBar::new(1);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {msg} ({elapsed})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("run {}/{runs}: {what}", i + 1));
    // Redrawn on its own, so that the clock moves during the load, which reports nothing.
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(bar)
}

fn show(bar: Option<&ProgressBar>, p: Progress) {
    let Some(bar) = bar else { return };
    match p {
        Progress::Loading => bar.set_message("building the federation and loading the caseloads"),
        Progress::Measuring { done_ms, total_ms } => {
            bar.set_length(total_ms);
            bar.set_position(done_ms);
            bar.set_message(format!("{} of at most {} simulated", human::duration(done_ms), human::duration(total_ms)));
        }
        Progress::Checking => bar.set_message("final checks"),
    }
}
