//! The dashboard drawn into a PNG from the live run, since Grafana is not
//! available here: each panel where its `gridPos` puts it, fed by its own
//! queries against the live Prometheus (`query_range` for time series, an
//! instant query at the end for stats, bar gauges and tables), with the
//! bench charts' plotters backend and font. Honest, not pretty: the caption
//! says what drew it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use super::dashboard::{self, Dashboard, Intervals, Panel};
use super::prometheus::Prometheus;
use crate::bench::chart::{FONT, load_font};

const WIDTH: u32 = 1800;
/// Grafana's grid: 24 columns; a row unit is about 30 px.
const COL: u32 = WIDTH / 24;
const ROW: u32 = 28;
const HEADER: u32 = 64;
/// Steps of a time-series panel over the run.
const POINTS: f64 = 240.0;

/// Grafana's classic palette.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x7e, 0xb2, 0x6d),
    RGBColor(0xea, 0xb8, 0x39),
    RGBColor(0x6e, 0xd0, 0xe0),
    RGBColor(0xef, 0x84, 0x3c),
    RGBColor(0xe2, 0x4d, 0x42),
    RGBColor(0x1f, 0x78, 0xc1),
    RGBColor(0xba, 0x43, 0xa9),
    RGBColor(0x70, 0x5d, 0xa0),
    RGBColor(0x50, 0x86, 0x42),
    RGBColor(0xcc, 0xa3, 0x00),
];
const GREY: RGBColor = RGBColor(0x88, 0x88, 0x88);
const BORDER: RGBColor = RGBColor(0xd8, 0xd9, 0xda);

/// One series as a panel shows it.
struct Line {
    name: String,
    labels: BTreeMap<String, String>,
    points: Vec<(f64, f64)>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the dashboard: {e}")
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
pub async fn dashboard(
    prom: &Prometheus,
    d: &Dashboard,
    vars: &BTreeMap<String, String>,
    iv: &Intervals,
    start: f64,
    end: f64,
    path: &Path,
    caption: &str,
) -> anyhow::Result<()> {
    let step = ((end - start) / POINTS).max(1.0).round();
    let mut data: Vec<Vec<Line>> = Vec::new();
    for p in &d.panels {
        let mut lines = Vec::new();
        for t in &p.targets {
            let expr = dashboard::substitute(&t.expr, vars, iv)?;
            let series = if p.kind == "timeseries" {
                prom.query_range(&expr, start, end, step).await
            } else {
                prom.query(&expr, Some(end)).await
            }
            .with_context(|| format!("panel {:?}: {expr}", p.title))?;
            for s in series {
                let points = s.points.iter().map(|&(t, v)| (t - start, v)).collect();
                lines.push(Line {
                    name: dashboard::legend(&t.legend, &s.labels),
                    labels: s.labels,
                    points,
                });
            }
        }
        data.push(lines);
    }
    draw(d, &data, end - start, path, caption)
}

fn draw(d: &Dashboard, data: &[Vec<Line>], span: f64, path: &Path, caption: &str) -> anyhow::Result<()> {
    load_font()?;
    let rows = d.panels.iter().map(|p| p.grid.y + p.grid.h).max().unwrap_or(1);
    let height = HEADER + rows * ROW + 8;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    root.draw_text("nodeward", &(FONT, 26).into_font().color(&BLACK), (12, 8))
        .map_err(err)?;
    root.draw_text(caption, &(FONT, 14).into_font().color(&GREY), (12, 40))
        .map_err(err)?;
    for (p, lines) in d.panels.iter().zip(data) {
        let (x, y) = (p.grid.x * COL, HEADER + p.grid.y * ROW);
        let (w, h) = (p.grid.w * COL, p.grid.h * ROW);
        if p.kind == "row" {
            root.draw_text(
                &p.title,
                &(FONT, 18).into_font().color(&BLACK),
                (x as i32 + 10, y as i32 + 4),
            )
            .map_err(err)?;
            continue;
        }
        let area = root.clone().shrink((x + 4, y + 4), (w - 8, h - 8));
        let (aw, ah) = area.dim_in_pixel();
        area.draw(&Rectangle::new(
            [(0, 0), (aw as i32 - 1, ah as i32 - 1)],
            BORDER.stroke_width(1),
        ))
        .map_err(err)?;
        area.draw_text(&p.title, &(FONT, 15).into_font().color(&BLACK), (8, 5))
            .map_err(err)?;
        let body = area.clone().shrink((6, 26), (aw - 12, ah - 30));
        match p.kind.as_str() {
            "timeseries" => timeseries(&body, p, lines, span)?,
            "stat" => stat(&body, p, lines)?,
            "bargauge" => bars(&body, p, lines)?,
            _ => table(&body, lines)?,
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn timeseries(area: &Area<'_>, p: &Panel, lines: &[Line], span: f64) -> anyhow::Result<()> {
    let finite = || {
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
    };
    let top = p.max.unwrap_or_else(|| finite().fold(0.0, f64::max) * 1.15);
    let bottom = p.min.unwrap_or_else(|| finite().fold(0.0, f64::min));
    let top = if top > bottom { top } else { bottom + 1.0 };
    let (w, h) = area.dim_in_pixel();
    // The legend under the chart: as many entries as fit in two lines.
    let legend_h = 34;
    let chart_area = area.clone().shrink((0, 0), (w, h.saturating_sub(legend_h)));
    let unit = p.unit.clone();
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_right(8)
        .x_label_area_size(18)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..span.max(1.0), bottom..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(4)
        .x_label_formatter(&|x| format!("{x:.0}s"))
        .y_label_formatter(&|y| format_value(*y, &unit))
        .label_style((FONT, 11))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
        .axis_style(BORDER)
        .draw()
        .map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // NaN (0/0 before any request) breaks the line instead of dropping to zero.
        for segment in l.points.split(|p| !p.1.is_finite()) {
            if !segment.is_empty() {
                chart
                    .draw_series(LineSeries::new(segment.iter().copied(), color.stroke_width(2)))
                    .map_err(err)?;
            }
        }
    }
    let legend = area.clone().shrink(
        (64, h.saturating_sub(legend_h) + 2),
        (w.saturating_sub(64), legend_h - 2),
    );
    let (lw, _) = legend.dim_in_pixel();
    let (mut x, mut y) = (0i32, 0i32);
    for (i, l) in lines.iter().enumerate() {
        let text_w = (l.name.chars().count() as i32) * 7 + 24;
        if x > 0 && x + text_w > lw as i32 {
            x = 0;
            y += 16;
        }
        if y > 16 {
            let more = format!("+{} more", lines.len() - i);
            legend
                .draw_text(&more, &(FONT, 12).into_font().color(&GREY), (x, y - 16))
                .map_err(err)?;
            break;
        }
        let color = PALETTE[i % PALETTE.len()];
        legend
            .draw(&Rectangle::new([(x, y + 4), (x + 12, y + 8)], color.filled()))
            .map_err(err)?;
        legend
            .draw_text(&l.name, &(FONT, 12).into_font().color(&BLACK), (x + 16, y))
            .map_err(err)?;
        x += text_w;
    }
    Ok(())
}

fn last(l: &Line) -> f64 {
    l.points.last().map_or(f64::NAN, |p| p.1)
}

fn stat(area: &Area<'_>, p: &Panel, lines: &[Line]) -> anyhow::Result<()> {
    let (w, h) = area.dim_in_pixel();
    let n = lines.len().max(1) as u32;
    let cell = w / n;
    for (i, l) in lines.iter().enumerate() {
        let x = i as i32 * cell as i32 + 8;
        let color = PALETTE[i % PALETTE.len()];
        let size = if n > 2 { 26 } else { 34 };
        area.draw_text(
            &format_value(last(l), &p.unit),
            &(FONT, size).into_font().color(&color),
            (x, (h as i32 / 2) - size),
        )
        .map_err(err)?;
        area.draw_text(&l.name, &(FONT, 12).into_font().color(&GREY), (x, h as i32 / 2 + 6))
            .map_err(err)?;
    }
    if lines.is_empty() {
        area.draw_text("no data", &(FONT, 20).into_font().color(&GREY), (8, h as i32 / 3))
            .map_err(err)?;
    }
    Ok(())
}

fn bars(area: &Area<'_>, p: &Panel, lines: &[Line]) -> anyhow::Result<()> {
    let (w, h) = area.dim_in_pixel();
    let max = lines
        .iter()
        .map(last)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let rows = lines.len().max(1) as u32;
    let row_h = (h / rows).clamp(10, 28) as i32;
    let label_w = 230;
    for (i, l) in lines.iter().enumerate() {
        let y = i as i32 * row_h;
        if y + row_h > h as i32 {
            break;
        }
        let v = last(l);
        let name: String = l.name.chars().take(32).collect();
        area.draw_text(&name, &(FONT, 12).into_font().color(&BLACK), (4, y + row_h / 2 - 7))
            .map_err(err)?;
        let full = w as i32 - label_w - 80;
        let len = if v.is_finite() {
            (v / max * f64::from(full)) as i32
        } else {
            0
        };
        let color = PALETTE[i % PALETTE.len()];
        area.draw(&Rectangle::new(
            [(label_w, y + 3), (label_w + len.max(1), y + row_h - 3)],
            color.filled(),
        ))
        .map_err(err)?;
        area.draw_text(
            &format_value(v, &p.unit),
            &(FONT, 12).into_font().color(&BLACK),
            (label_w + len + 6, y + row_h / 2 - 7),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Label columns a table shows: everything but the target's own labels.
fn table(area: &Area<'_>, lines: &[Line]) -> anyhow::Result<()> {
    const HIDDEN: [&str; 4] = ["__name__", "job", "instance", "node"];
    let columns: Vec<&String> = {
        let mut c: Vec<&String> = lines
            .iter()
            .flat_map(|l| l.labels.keys())
            .filter(|k| !HIDDEN.contains(&k.as_str()))
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let (_, h) = area.dim_in_pixel();
    let bold = (FONT, 13).into_font().color(&BLACK);
    let plain = (FONT, 12).into_font().color(&BLACK);
    for (j, c) in columns.iter().enumerate() {
        area.draw_text(c, &bold, (8 + j as i32 * 260, 2)).map_err(err)?;
    }
    for (i, l) in lines.iter().enumerate() {
        let y = 22 + i as i32 * 17;
        if y + 17 > h as i32 {
            break;
        }
        for (j, c) in columns.iter().enumerate() {
            let v = l.labels.get(*c).map(String::as_str).unwrap_or("");
            area.draw_text(v, &plain, (8 + j as i32 * 260, y)).map_err(err)?;
        }
    }
    Ok(())
}

/// A value in a panel's unit, the way Grafana would print it, roughly.
pub fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let si = |v: f64| {
        let a = v.abs();
        if a >= 1e9 {
            format!("{:.1}G", v / 1e9)
        } else if a >= 1e6 {
            format!("{:.1}M", v / 1e6)
        } else if a >= 1e3 {
            format!("{:.1}k", v / 1e3)
        } else if a >= 10.0 || v.fract() == 0.0 {
            format!("{v:.0}")
        } else if a >= 0.1 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    };
    match unit {
        "percentunit" => format!("{:.1}%", v * 100.0),
        "reqps" => format!("{} req/s", si(v)),
        "cps" => format!("{} c/s", si(v)),
        "ops" => format!("{} /s", si(v)),
        "s" => {
            let a = v.abs();
            if a == 0.0 {
                "0 s".into()
            } else if a < 1e-3 {
                format!("{:.0} µs", v * 1e6)
            } else if a < 1.0 {
                format!("{:.1} ms", v * 1e3)
            } else if a < 120.0 {
                format!("{v:.1} s")
            } else if a < 7200.0 {
                format!("{:.1} min", v / 60.0)
            } else {
                format!("{:.1} h", v / 3600.0)
            }
        }
        "bytes" => {
            let a = v.abs();
            if a >= 1024.0 * 1024.0 * 1024.0 {
                format!("{:.1} GiB", v / (1024.0 * 1024.0 * 1024.0))
            } else if a >= 1024.0 * 1024.0 {
                format!("{:.1} MiB", v / (1024.0 * 1024.0))
            } else if a >= 1024.0 {
                format!("{:.1} KiB", v / 1024.0)
            } else {
                format!("{v:.0} B")
            }
        }
        _ => si(v),
    }
}

#[cfg(test)]
mod tests {
    use super::format_value;

    #[test]
    fn values_print_in_their_units() {
        assert_eq!(format_value(0.25, "percentunit"), "25.0%");
        assert_eq!(format_value(150.0, "reqps"), "150 req/s");
        assert_eq!(format_value(0.000_035, "s"), "35 µs");
        assert_eq!(format_value(0.0123, "s"), "12.3 ms");
        assert_eq!(format_value(3.0 * 1024.0 * 1024.0, "bytes"), "3.0 MiB");
        assert_eq!(format_value(1500.0, "short"), "1.5k");
        assert_eq!(format_value(f64::NAN, "short"), "–");
    }
}
