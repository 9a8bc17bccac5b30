//! The assurer's report's plots, drawn as SVG from a run's [`Timeline`]: the faults over the
//! simulated day, replication lag per hub, notification latency (how many, and when), and
//! lookups answered and missed.
//!
//! Each plot is a standalone `<svg>` element with a `<title>` and a `<desc>` (the text
//! alternative: what the plot shows in figures), ready to be put inline in a page. Text is drawn
//! in the reader's own sans-serif font: no font file is read or embedded.

use crate::human;
use crate::timeline::{FaultClass, NOTICE_BINS_MS, Timeline};
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::fmt;

const WIDTH: u32 = 960;
const FONT: &str = "sans-serif";
const HOUR_MS: f64 = 3_600_000.0;
/// Okabe and Ito's colours, told apart by readers with any common colour blindness.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];
const HEAL: RGBColor = RGBColor(0, 110, 60);

/// A plot that could not be drawn.
#[derive(Debug)]
pub struct PlotError(String);

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot draw a plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

fn failed(e: impl fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// One plot: its id in the page, its title, its text alternative and its SVG.
#[derive(Clone, Debug)]
pub struct Plot {
    pub id: &'static str,
    pub title: String,
    pub desc: String,
    pub svg: String,
}

/// Every plot of a run, in the order the page shows them.
pub fn all(t: &Timeline) -> Result<Vec<Plot>, PlotError> {
    Ok(vec![faults(t)?, replication_lag(t)?, notice_latency(t)?, notice_latency_over_time(t)?, lookups(t)?])
}

fn hours(ms: u64) -> f64 {
    ms as f64 / HOUR_MS
}

fn time_label(h: &f64) -> String {
    match (h.max(0.0) * HOUR_MS) as u64 {
        0 => "0".into(),
        ms => human::duration(ms),
    }
}

fn class_colour(c: FaultClass) -> RGBColor {
    match c {
        FaultClass::Wire => PALETTE[4],
        FaultClass::Clock => PALETTE[3],
        FaultClass::Disk => RGBColor(150, 110, 60),
        FaultClass::Partition => PALETTE[1],
        FaultClass::Crash => PALETTE[5],
        FaultClass::Hostile => PALETTE[6],
        FaultClass::BadInput => PALETTE[0],
    }
}

/// Puts the title and the text alternative into the SVG, and names it an image for assistive
/// technology.
fn with_text(id: &'static str, title: String, desc: String, svg: String) -> Plot {
    let open = format!(r#"<svg role="img" aria-labelledby="{id}-title {id}-desc" "#);
    let mut svg = svg.replacen("<svg ", &open, 1);
    if let Some(end) = svg.find('>') {
        let text = format!(
            r#"<title id="{id}-title">{}</title><desc id="{id}-desc">{}</desc>"#,
            escape(&title),
            escape(&desc)
        );
        svg.insert_str(end + 1, &text);
    }
    Plot { id, title, desc, svg }
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A row of the fault timeline: its label, colour and the spans (in ms) it is shaded.
struct Row {
    label: String,
    colour: RGBColor,
    spans: Vec<(u64, u64)>,
    /// Drawn as thin ticks (instants), not bars.
    ticks: bool,
}

fn fault_rows(t: &Timeline) -> Vec<Row> {
    let whole = |from: u64, to: u64| from == 0 && to >= t.heal_ms;
    let mut faults = t.faults.clone();
    // Whole-period faults first, then episodes by start.
    faults.sort_by_key(|f| (!whole(f.from_ms, f.to_ms), f.from_ms, f.class));
    let mut rows: Vec<Row> = faults
        .into_iter()
        .map(|f| Row { label: f.label, colour: class_colour(f.class), spans: vec![(f.from_ms, f.to_ms)], ticks: false })
        .collect();
    if !t.bad_inputs_ms.is_empty() {
        let spans = t.bad_inputs_ms.iter().map(|at| (*at, *at)).collect();
        let label = format!("{} bad inputs", t.bad_inputs_ms.len());
        rows.push(Row { label, colour: class_colour(FaultClass::BadInput), spans, ticks: true });
    }
    let sampled = |value: &dyn Fn(&crate::timeline::Sample) -> usize| -> Vec<(u64, u64)> {
        t.samples.windows(2).filter(|w| value(&w[0]) > 0).map(|w| (w[0].at_ms, w[1].at_ms)).collect()
    };
    let down = sampled(&|s| s.down);
    if !down.is_empty() {
        let most = t.samples.iter().map(|s| s.down).max().unwrap_or(0);
        let label = format!("members down (sampled, most at once {most})");
        rows.push(Row { label, colour: PALETTE[2], spans: down, ticks: false });
    }
    let cuts = sampled(&|s| s.cuts);
    if !cuts.is_empty() {
        let most = t.samples.iter().map(|s| s.cuts).max().unwrap_or(0);
        let label = format!("cuts in force (sampled, most at once {most})");
        rows.push(Row { label, colour: PALETTE[2], spans: cuts, ticks: false });
    }
    rows
}

fn faults(t: &Timeline) -> Result<Plot, PlotError> {
    let rows = fault_rows(t);
    let n = rows.len().max(1);
    let height = 110 + 24 * n as u32;
    let x_max = hours(t.end_ms.max(1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Faults over the run", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d(0f64..x_max, (0..n - 1).into_segmented())
            .map_err(failed)?;
        let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(n - 1 - *i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&time_label)
            .x_desc("time since the measured period began (the green line is the heal)")
            .label_style((FONT, 13))
            .draw()
            .map_err(failed)?;
        for (i, row) in rows.iter().enumerate() {
            let y = n - 1 - i;
            let bars = row.spans.iter().map(|(from, to)| {
                let (x0, mut x1) = (hours(*from), hours(*to));
                if row.ticks || x1 - x0 < x_max / 400.0 {
                    x1 = x0 + x_max / 400.0;
                }
                Rectangle::new(
                    [(x0, SegmentValue::Exact(y)), (x1, SegmentValue::Exact(y + 1))],
                    row.colour.mix(0.85).filled(),
                )
            });
            chart.draw_series(bars).map_err(failed)?;
        }
        let heal = hours(t.heal_ms);
        chart
            .draw_series(LineSeries::new(
                [(heal, SegmentValue::Exact(0)), (heal, SegmentValue::Exact(n))],
                HEAL.stroke_width(2),
            ))
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    let listed: Vec<String> = rows
        .iter()
        .map(|r| match (r.ticks, r.spans.as_slice()) {
            (true, _) => r.label.clone(),
            (false, [(from, to)]) => {
                format!("{} from +{} to +{}", r.label, human::duration(*from), human::duration(*to))
            }
            (false, spans) => format!("{} in {} intervals", r.label, spans.len()),
        })
        .collect();
    let desc = if listed.is_empty() {
        format!("No fault in this run. Everything healed at +{}.", human::duration(t.heal_ms))
    } else {
        format!("{}. Every fault healed at +{}.", listed.join("; "), human::duration(t.heal_ms))
    };
    Ok(with_text("faults", "Faults over the run".into(), desc, svg))
}

/// A plot over the measured period (hours across) with linear values up, under `caption`.
fn time_chart<'a, 'b: 'a>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    y_label_area: u32,
    x_max: f64,
    y_max: f64,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>, PlotError> {
    ChartBuilder::on(root)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(failed)
}

/// The heal's vertical line and the series' legend of a time plot.
fn heal_line_and_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    heal: f64,
    y_max: f64,
) -> Result<(), PlotError> {
    chart.draw_series(LineSeries::new([(heal, 0.0), (heal, y_max)], HEAL.stroke_width(2))).map_err(failed)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.7))
        .label_font((FONT, 13))
        .draw()
        .map_err(failed)?;
    Ok(())
}

fn replication_lag(t: &Timeline) -> Result<Plot, PlotError> {
    let x_max = hours(t.end_ms.max(1));
    let worst = t.samples.iter().flat_map(|s| s.lag_ms.iter().flatten()).copied().max().unwrap_or(0);
    // In whole seconds, minutes or hours, so that the ticks fall on round values.
    let unit_ms = match worst {
        0..120_000 => 1_000.0,
        120_000..10_800_000 => 60_000.0,
        _ => HOUR_MS,
    };
    let y_max = (worst as f64 * 1.1).max(60_000.0) / unit_ms;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = time_chart(&root, "Replication lag per hub", 90, x_max, y_max)?;
        chart
            .configure_mesh()
            .x_label_formatter(&time_label)
            .y_label_formatter(&|v| time_label(&(v * unit_ms / HOUR_MS)))
            .x_desc("time since the measured period began")
            .y_desc("age of the stalest head held")
            .label_style((FONT, 13))
            .draw()
            .map_err(failed)?;
        for (i, hub) in t.hubs.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            // A hub that is down has no lag: its line breaks there.
            let mut runs: Vec<Vec<(f64, f64)>> = vec![vec![]];
            for s in &t.samples {
                match s.lag_ms.get(i).copied().flatten() {
                    Some(lag) => runs.last_mut().map_or((), |r| r.push((hours(s.at_ms), lag as f64 / unit_ms))),
                    None => runs.push(vec![]),
                }
            }
            for (k, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
                let series = chart.draw_series(LineSeries::new(run, colour.stroke_width(2))).map_err(failed)?;
                if k == 0 {
                    series
                        .label(hub.clone())
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
                }
            }
        }
        heal_line_and_legend(&mut chart, hours(t.heal_ms), y_max)?;
        root.present().map_err(failed)?;
    }
    Ok(with_text("lag", "Replication lag per hub".into(), lag_desc(t), svg))
}

/// The lag plot in words: each hub's worst lag, when, and how long it was down.
fn lag_desc(t: &Timeline) -> String {
    let per_hub: Vec<String> = t
        .hubs
        .iter()
        .enumerate()
        .map(|(i, hub)| {
            let lags = t.samples.iter().filter_map(|s| Some((s.lag_ms.get(i).copied().flatten()?, s.at_ms)));
            let (worst, at) = lags.fold((0, 0), |m, (lag, at)| if lag > m.0 { (lag, at) } else { m });
            let down = t.samples.iter().filter(|s| s.lag_ms.get(i).is_some_and(Option::is_none)).count();
            let mut text = if t.samples.is_empty() {
                format!("{hub} was not sampled")
            } else {
                format!("{hub} at most {} behind (at +{})", human::duration(worst), human::duration(at))
            };
            if down > 0 {
                text += &format!(", down at {down} samples");
            }
            text
        })
        .collect();
    format!(
        "Sampled every {}: for each hub, the age of the stalest authority's newest signed head that the hub held (authorities sign one a minute, so a hub that keeps up shows a minute or two). {}.",
        human::duration(t.every_ms),
        per_hub.join("; ")
    )
}

fn bin_labels() -> Vec<String> {
    let mut lo = 0;
    NOTICE_BINS_MS
        .iter()
        .map(|hi| {
            let label = match (lo, *hi) {
                (0, hi) => format!("under {}", human::duration(hi)),
                (lo, u64::MAX) => format!("over {}", human::duration(lo)),
                (lo, hi) => format!("{} to {}", human::duration(lo), human::duration(hi)),
            };
            lo = *hi;
            label
        })
        .collect()
}

fn notice_latency(t: &Timeline) -> Result<Plot, PlotError> {
    let labels = bin_labels();
    let n = labels.len();
    let y_max = (t.notice_bins.iter().copied().max().unwrap_or(0) as f64 * 1.15).max(1.0).ceil() as u64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Notification delivery latency", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0u64..y_max)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("from the answer to the authority's durable store")
            .y_desc("notifications")
            .label_style((FONT, 13))
            .draw()
            .map_err(failed)?;
        let bars = t.notice_bins.iter().enumerate().map(|(i, count)| {
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0), (SegmentValue::Exact(i + 1), *count)],
                PALETTE[0].mix(0.85).filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        });
        chart.draw_series(bars).map_err(failed)?;
        root.present().map_err(failed)?;
    }
    let delivered: u64 = t.notice_bins.iter().sum();
    let counted: Vec<String> =
        labels.iter().zip(t.notice_bins).filter(|(_, c)| *c > 0).map(|(l, c)| format!("{c} {l}")).collect();
    let desc = match delivered {
        0 => format!("No notification was delivered; {} outstanding.", t.notices_outstanding),
        _ => format!(
            "{delivered} notifications delivered: {}; {} outstanding at the end.",
            counted.join(", "),
            t.notices_outstanding
        ),
    };
    Ok(with_text("latency", "Notification delivery latency".into(), desc, svg))
}

fn notice_latency_over_time(t: &Timeline) -> Result<Plot, PlotError> {
    let x_max = hours(t.end_ms.max(1));
    let worst = t.notices.iter().map(|(_, l)| *l).max().unwrap_or(0);
    let y_max = (worst as f64 * 2.0).max(10_000.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Notification latency by when the lookup was answered", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(90)
            .build_cartesian_2d(0f64..x_max, (10f64..y_max).log_scale())
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_label_formatter(&time_label)
            .y_label_formatter(&|ms| human::duration(ms.max(0.0) as u64))
            .x_desc("time the lookup was answered")
            .y_desc("latency (log scale)")
            .label_style((FONT, 13))
            .draw()
            .map_err(failed)?;
        let points =
            t.notices.iter().map(|(at, l)| Circle::new((hours(*at), (*l as f64).max(10.0)), 2, PALETTE[5].filled()));
        chart.draw_series(points).map_err(failed)?;
        let heal = hours(t.heal_ms);
        chart.draw_series(LineSeries::new([(heal, 10.0), (heal, y_max)], HEAL.stroke_width(2))).map_err(failed)?;
        root.present().map_err(failed)?;
    }
    let desc = match t.notices.iter().max_by_key(|(_, l)| *l) {
        None => "No notification was delivered.".to_string(),
        Some((at, l)) => format!(
            "{} notifications drawn, one dot each; the slowest took {} (its lookup answered at +{}). Dots high up mean notices held back by a fault until it healed.",
            t.notices.len(),
            human::duration(*l),
            human::duration(*at)
        ),
    };
    Ok(with_text("latency-time", "Notification latency by when the lookup was answered".into(), desc, svg))
}

/// Lookups closed in each sample interval: answered, never answered, flagged and missed.
fn lookup_rates(t: &Timeline) -> [Vec<(f64, f64)>; 3] {
    let mut out = [vec![], vec![], vec![]];
    for w in t.samples.windows(2) {
        let x = hours(w[1].at_ms);
        out[0].push((x, w[1].answered.saturating_sub(w[0].answered) as f64));
        out[1].push((x, w[1].unanswered.saturating_sub(w[0].unanswered) as f64));
        out[2].push((x, w[1].flagged_missed.saturating_sub(w[0].flagged_missed) as f64));
    }
    out
}

fn lookups(t: &Timeline) -> Result<Plot, PlotError> {
    let x_max = hours(t.end_ms.max(1));
    let rates = lookup_rates(t);
    let y_max = rates.iter().flatten().map(|(_, y)| *y).fold(1.0, f64::max) * 1.15;
    let names = ["answered", "not answered", "flagged child, a plan missed"];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = time_chart(&root, "Lookups answered and missed", 70, x_max, y_max)?;
        chart
            .configure_mesh()
            .x_label_formatter(&time_label)
            .x_desc("time since the measured period began")
            .y_desc(format!("lookups per {}", human::duration(t.every_ms)))
            .label_style((FONT, 13))
            .draw()
            .map_err(failed)?;
        for (i, (series, name)) in rates.iter().zip(names).enumerate() {
            let colour = [PALETTE[2], PALETTE[5], PALETTE[6]][i];
            chart
                .draw_series(LineSeries::new(series.iter().copied(), colour.stroke_width(2)))
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        heal_line_and_legend(&mut chart, hours(t.heal_ms), y_max)?;
        root.present().map_err(failed)?;
    }
    let last = t.samples.last().cloned().unwrap_or_default();
    let busiest = rates[0].iter().fold((0.0, 0.0), |m, p| if p.1 > m.1 { *p } else { m });
    let desc = format!(
        "Lookups closed in each {} interval. In all: {} answered, {} not answered, {} lookups of a flagged child missed a plan. Most answered in one interval: {} (at +{}).",
        human::duration(t.every_ms),
        last.answered,
        last.unanswered,
        last.flagged_missed,
        busiest.1,
        time_label(&busiest.0)
    );
    Ok(with_text("lookups", "Lookups answered and missed".into(), desc, svg))
}
