//! SVG plots of a simulation (plotters, SVG backend: text as `<text>`, no font library):
//! memory over time against the governor's ceiling, running tasks per strategy, and TTFT
//! percentiles per strategy. Writes only the files it is given.

use super::Ceiling;
use super::run::Outcome;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// At most `n` points of a series (every k-th), so a day of samples stays a small file.
fn thin<T: Copy>(v: &[T], n: usize) -> Vec<T> {
    let k = v.len().div_ceil(n.max(1)).max(1);
    v.iter().step_by(k).copied().collect()
}

fn lines(
    path: &Path,
    title: &str,
    y_desc: &str,
    rows: &[Outcome],
    y: &dyn Fn(&super::run::Point) -> f64,
    ceiling: Option<(f64, &str)>,
) -> PlotResult {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = rows
        .iter()
        .flat_map(|o| o.series.last())
        .map(|p| p.t / 60.0)
        .fold(1.0, f64::max);
    let y_max = rows
        .iter()
        .flat_map(|o| o.series.iter().map(y))
        .chain(ceiling.map(|c| c.0))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("simulated minutes")
        .y_desc(y_desc)
        .draw()?;
    for (i, o) in rows.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = thin(&o.series, 2000)
            .iter()
            .map(|p| (p.t / 60.0, y(p)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(o.strategy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if let Some((c, label)) = ceiling {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, c), (x_max, c)],
                BLACK.stroke_width(1),
            ))?
            .label(label.to_owned())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn ttft_bars(path: &Path, rows: &[Outcome]) -> PlotResult {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = rows.iter().map(|o| o.ttft[2]).fold(0.1, f64::max) * 1.1;
    let n = rows.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time to first token: p50 / p95 / p99 per strategy",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("seconds")
        .draw()?;
    for (i, o) in rows.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let x = i as f64;
        for (j, v) in o.ttft.iter().enumerate() {
            let x0 = x + 0.1 + j as f64 * 0.27;
            let shade = c.mix(1.0 - j as f64 * 0.3);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + 0.25, *v)],
                shade.filled(),
            )))?;
        }
        chart
            .draw_series(std::iter::once(Circle::new((x + 0.5, 0.0), 0, c)))?
            .label(o.strategy.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Write `memory.svg`, `running.svg` and `ttft.svg` into `dir`; returns their paths.
///
/// # Errors
///
/// A file cannot be written.
pub fn write_all(
    dir: &Path,
    rows: &[Outcome],
    ceiling: Ceiling,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let memory = dir.join("memory.svg");
    match ceiling {
        Ceiling::Bytes(b) => lines(
            &memory,
            "GPU memory used, against the governor's ceiling",
            "GiB",
            rows,
            &|p| p.gpu_used as f64 / (1u64 << 30) as f64,
            Some((
                b as f64 / (1u64 << 30) as f64,
                "ceiling (headroom x total - reserve)",
            )),
        )?,
        Ceiling::KvTokens(t) => lines(
            &memory,
            "KV cache held by the engine, against the governor's ceiling",
            "KV tokens",
            rows,
            &|p| p.kv_used as f64,
            Some((t as f64, "ceiling (headroom x KV pool)")),
        )?,
        Ceiling::Slots(_) => lines(
            &memory,
            "KV tokens held in the engine's slots",
            "KV tokens",
            rows,
            &|p| p.kv_used as f64,
            None,
        )?,
    }
    let running = dir.join("running.svg");
    lines(
        &running,
        "Tasks running (dispatched and not finished)",
        "tasks",
        rows,
        &|p| f64::from(p.running),
        None,
    )?;
    let ttft = dir.join("ttft.svg");
    ttft_bars(&ttft, rows)?;
    Ok(vec![memory, running, ttft])
}
