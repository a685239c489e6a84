//! PNG charts with plotters' bitmap backend. Text is drawn with ab_glyph
//! from DejaVu Sans (Debian's fonts-dejavu-core, which .ci/run installs),
//! loaded at run time so building xtask never needs the font.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::pernode::{Model, PerNodeResult};
use super::report::ScenarioSummary;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
pub const FONT: &str = "sans-serif";

/// Registers the font once; plotters keeps a `&'static` reference, hence the leak.
pub fn load_font() -> anyhow::Result<()> {
    let (path, bytes) = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
        .context("DejaVu Sans not found (Debian: apt-get install fonts-dejavu-core; .ci/run installs it)")?;
    register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// A panel: where, caption, (median, min, max) of a scenario, colour, label width.
type Panel<'a, DB> = (
    &'a DrawingArea<DB, plotters::coord::Shift>,
    &'static str,
    Box<dyn Fn(&ScenarioSummary) -> (f64, f64, f64)>,
    RGBColor,
    u32,
);

/// Throughput and p99 by scenario: horizontal bars at the median, a
/// whisker from min to max over the repeats.
pub fn scenarios(path: &Path, sums: &[ScenarioSummary], title: &str) -> anyhow::Result<()> {
    let n = u32::try_from(sums.len())?;
    let height = 140 + 44 * n;
    let root = BitMapBackend::new(path, (1500, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 22)).map_err(err)?;
    let (left, right) = root.split_horizontally(820);
    // Row 0 at the top: the table's order.
    let row = |i: usize| n - 1 - i as u32;
    let names: Vec<String> = sums.iter().rev().map(|s| s.name.clone()).collect();
    let panels: [Panel<'_, _>; 2] = [
        (
            &left,
            "requests per second (median; whisker min–max)",
            Box::new(|s| (s.rps.median, s.rps.min, s.rps.max)),
            RGBColor(52, 101, 164),
            230,
        ),
        (
            &right,
            "p99 latency, ms (median; whisker min–max)",
            Box::new(|s| (s.p99_ms.median, s.p99_ms.min, s.p99_ms.max)),
            RGBColor(204, 102, 0),
            20,
        ),
    ];
    for (area, caption, value, color, label_width) in panels {
        let xmax = sums.iter().map(|s| value(s).2).fold(0.0, f64::max) * 1.1 + 1e-9;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0f64..xmax, (0u32..n).into_segmented())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(names.len())
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if label_width > 100 => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| {
                if xmax >= 100.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.1}")
                }
            })
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(sums.iter().enumerate().map(|(i, s)| {
                let (median, _, _) = value(s);
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row(i))),
                        (median, SegmentValue::Exact(row(i) + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(7, 7, 0, 0);
                bar
            }))
            .map_err(err)?;
        chart
            .draw_series(sums.iter().enumerate().map(|(i, s)| {
                let (_, min, max) = value(s);
                PathElement::new(
                    vec![
                        (min, SegmentValue::CenterOf(row(i))),
                        (max, SegmentValue::CenterOf(row(i))),
                    ],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(sums.iter().enumerate().map(|(i, s)| {
                let (median, _, _) = value(s);
                let label = if median >= 100.0 {
                    format!("{median:.0}")
                } else {
                    format!("{median:.2}")
                };
                Text::new(
                    label,
                    (median, SegmentValue::CenterOf(row(i))),
                    (FONT, 13).into_font().color(&BLACK),
                )
            }))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Memory (sum of PSS) and JWKS fetches in the window against N, one line
/// per model, both on log scales.
pub fn pernode(path: &Path, results: &[PerNodeResult], title: &str) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1300, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 22)).map_err(err)?;
    let (left, right) = root.split_horizontally(650);
    let xmax = results.iter().map(|r| r.pods).max().unwrap_or(10) as f64 * 1.1;
    type Get = fn(&PerNodeResult) -> f64;
    let panels: [(&DrawingArea<_, _>, &str, &str, Get); 2] = [
        (&left, "total memory (sum of PSS), MiB", "MiB", |r| {
            r.pss_kb as f64 / 1024.0
        }),
        (&right, "JWKS fetches during the window", "fetches", |r| {
            r.window_jwks_fetches.max(1) as f64
        }),
    ];
    for (area, caption, ydesc, get) in panels {
        let ymax = results.iter().map(get).fold(1.0, f64::max) * 2.0;
        let ymin = results.iter().map(get).fold(f64::INFINITY, f64::min).min(ymax) / 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, (ymin.max(0.1)..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("N pods")
            .y_desc(ydesc)
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        for (model, color) in [
            (Model::PerNode, RGBColor(52, 101, 164)),
            (Model::PerPod, RGBColor(204, 0, 0)),
        ] {
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r.model == model)
                .map(|r| (r.pods as f64, get(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(model.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&(x, y)| {
                    let label = if y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    };
                    Text::new(label, (x, y), (FONT, 13).into_font().color(&BLACK))
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
