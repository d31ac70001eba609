//! Plots of a sweep ([`crate::sweep`]) as SVG files (plotters' SVG backend: no font or system
//! library needed; the viewer renders the text). One panel per transport × cores × jobs.

use std::io;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::sweep::{human_size, PointResult};

/// File names of the charts [`plot_all`] writes.
pub const MSGS_VS_SIZE: &str = "msgs_per_sec_vs_size.svg";
pub const MB_VS_SIZE: &str = "mb_per_sec_vs_size.svg";
pub const P99_VS_CONCURRENCY: &str = "p99_latency_vs_concurrency.svg";

const PANEL: (u32, u32) = (900, 560);
/// Width of the legend column right of each plot.
const LEGEND_W: u32 = 175;
const TITLE_H: u32 = 90;

/// Tableau's 10 colours: distinct, readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn pe(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

/// `1500` → `1.5k`, `2000000` → `2M`, `0.25` → `0.25`.
pub fn si(v: f64) -> String {
    let (x, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if x >= 100.0 || (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// Tick values for a log axis over `lo..hi`: 1-2-5 steps per decade, fewer or more so there
/// are a handful.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pick = |mantissas: &[f64]| -> Vec<f64> {
        let mut v = Vec::new();
        let mut e = lo.log10().floor() as i32 - 1;
        while 10f64.powi(e) <= hi * 10.0 {
            for m in mantissas {
                let t = m * 10f64.powi(e);
                if t >= lo && t <= hi {
                    v.push(t);
                }
            }
            e += 1;
        }
        v
    };
    let v = pick(&[1.0, 2.0, 5.0]);
    if v.len() > 12 {
        return pick(&[1.0]);
    }
    if v.len() >= 3 {
        return v;
    }
    let v = pick(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if v.len() >= 2 {
        return v;
    }
    // A very narrow range: three ticks spread over it, at two significant digits.
    [0.15, 0.5, 0.85]
        .iter()
        .map(|f| {
            let t = lo * (hi / lo).powf(*f);
            let scale = 10f64.powi(t.log10().floor() as i32 - 1);
            (t / scale).round() * scale
        })
        .collect()
}

/// A range wider than the values by `pad` on each side (multiplicative), never empty.
fn log_range(vals: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = vals
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    (lo <= hi).then(|| (lo / pad, hi * pad))
}

struct Chart {
    file: &'static str,
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    x: fn(&PointResult) -> f64,
    y: fn(&PointResult) -> f64,
    x_label: fn(f64) -> String,
    /// The series a row belongs to (its key, for ordering) and the label of that series.
    series: fn(&PointResult) -> (usize, String),
}

/// Panels: rows grouped by transport, cores and jobs, in order of first appearance.
fn panels(rows: &[PointResult]) -> Vec<(String, Vec<&PointResult>)> {
    type Key = (String, usize, usize);
    let mut v: Vec<(Key, Vec<&PointResult>)> = Vec::new();
    for r in rows {
        let key = (r.point.transport.clone(), r.point.cores, r.point.jobs);
        match v.iter_mut().find(|(k, _)| *k == key) {
            Some((_, rs)) => rs.push(r),
            None => v.push((key, vec![r])),
        }
    }
    v.into_iter()
        .map(|((t, c, j), rs)| {
            let cores = if c == 1 { "core" } else { "cores" };
            let jobs = if j == 1 { "job" } else { "jobs" };
            (format!("{t}: {c} {cores} per side, {j} {jobs}"), rs)
        })
        .collect()
}

fn draw(chart: &Chart, subtitle: &str, rows: &[PointResult], out: &Path) -> io::Result<PathBuf> {
    let path = out.join(chart.file);
    let panels = panels(rows);
    // Up to two panels a row; every panel on the same y scale, so they compare at a glance.
    let n = panels.len().max(1);
    let cols = n.min(2);
    let grid_rows = n.div_ceil(cols);
    let yr = log_range(rows.iter().map(chart.y), 1.5);
    let file = path.clone();
    let root = SVGBackend::new(
        &file,
        (PANEL.0 * cols as u32, PANEL.1 * grid_rows as u32 + TITLE_H),
    )
    .into_drawing_area();
    root.fill(&WHITE).map_err(pe)?;
    let body = root
        .titled(chart.title, ("sans-serif", 26).into_font().color(&BLACK))
        .map_err(pe)?
        .titled(
            subtitle,
            ("sans-serif", 17).into_font().color(&BLACK.mix(0.75)),
        )
        .map_err(pe)?;
    if panels.is_empty() {
        body.draw(&Text::new(
            "no data (every point failed)",
            (40, 40),
            ("sans-serif", 18),
        ))
        .map_err(pe)?;
    }
    let areas = body.split_evenly((grid_rows, cols));
    for ((caption, prs), area) in panels.iter().zip(areas.iter()) {
        let xr = log_range(prs.iter().map(|r| (chart.x)(r)), 1.25);
        let (Some((x0, x1)), Some((y0, y1))) = (xr, yr) else {
            area.draw(&Text::new(
                format!("{caption}: no data"),
                (40, 40),
                ("sans-serif", 16),
            ))
            .map_err(pe)?;
            continue;
        };
        let mut xs: Vec<f64> = prs.iter().map(|r| (chart.x)(r)).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        // The legend gets its own column right of the plot, so it never hides a point.
        let (plot_area, legend_area) = area.split_horizontally(PANEL.0 - LEGEND_W);
        let mut c = ChartBuilder::on(&plot_area)
            .caption(caption, ("sans-serif", 21))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(84)
            .build_cartesian_2d(
                (x0..x1).log_scale().with_key_points(xs),
                (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
            )
            .map_err(pe)?;
        let xl = chart.x_label;
        c.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .x_label_formatter(&|v| xl(*v))
            .y_label_formatter(&|v| si(*v))
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 16))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(pe)?;
        let mut keys: Vec<(usize, String)> = prs.iter().map(|r| (chart.series)(r)).collect();
        keys.sort();
        keys.dedup();
        for (i, (key, label)) in keys.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = prs
                .iter()
                .filter(|r| (chart.series)(r).0 == *key)
                .map(|r| ((chart.x)(r), (chart.y)(r)))
                .filter(|(x, y)| *x > 0.0 && *y > 0.0)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(pe)?;
            c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(pe)?;
            let y = 80 + 26 * i as i32;
            legend_area
                .draw(&PathElement::new(
                    vec![(4, y), (32, y)],
                    color.stroke_width(3),
                ))
                .map_err(pe)?;
            legend_area
                .draw(&Circle::new((18, y), 3, color.filled()))
                .map_err(pe)?;
            legend_area
                .draw(&Text::new(
                    label.clone(),
                    (40, y - 9),
                    ("sans-serif", 16).into_font().color(&BLACK),
                ))
                .map_err(pe)?;
        }
    }
    root.present().map_err(pe)?;
    Ok(path)
}

/// Write every chart of a sweep into `out`; returns their paths.
pub fn plot_all(rows: &[PointResult], out: &Path, secs: f64) -> io::Result<Vec<PathBuf>> {
    let run = format!(
        "server + client messengers in one process, loopback, empty replies, {secs} s per point"
    );
    let by_conc = |r: &PointResult| {
        let c = r.point.concurrency;
        (c, format!("{c} in flight"))
    };
    let charts = [
        Chart {
            file: MSGS_VS_SIZE,
            title: "corewire messenger: msgs/s vs request size",
            x_desc: "request size (bytes, log scale)",
            y_desc: "requests/s (log scale)",
            x: |r| r.point.msg_size as f64,
            y: |r| r.msgs_per_sec,
            x_label: |v| human_size(v.round() as usize),
            series: by_conc,
        },
        Chart {
            file: MB_VS_SIZE,
            title: "corewire messenger: MB/s vs request size",
            x_desc: "request size (bytes, log scale)",
            y_desc: "request payload MB/s (10^6 B/s, log scale)",
            x: |r| r.point.msg_size as f64,
            y: |r| r.mb_per_sec,
            x_label: |v| human_size(v.round() as usize),
            series: by_conc,
        },
        Chart {
            file: P99_VS_CONCURRENCY,
            title: "corewire messenger: p99 latency vs requests in flight",
            x_desc: "requests in flight per job (log scale)",
            y_desc: "p99 request→reply latency (µs, log scale)",
            x: |r| r.point.concurrency as f64,
            y: |r| r.p99_us,
            x_label: |v| format!("{}", v.round()),
            series: |r| {
                let s = r.point.msg_size;
                (s, format!("{} requests", human_size(s)))
            },
        },
    ];
    charts.iter().map(|c| draw(c, &run, rows, out)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_labels() {
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(20.0), "20");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(200_000.0), "200k");
        assert_eq!(si(2_000_000.0), "2M");
    }

    #[test]
    fn log_ticks_cover_narrow_and_wide_ranges() {
        let t = log_ticks(1.0, 1e6);
        assert_eq!(t.first(), Some(&1.0));
        assert!(t.len() <= 12, "{t:?}");
        let t = log_ticks(2100.0, 2900.0);
        assert!(!t.is_empty(), "{t:?}");
        let t = log_ticks(30.0, 900.0);
        assert!(t.len() >= 3 && t.len() <= 12, "{t:?}");
    }
}
