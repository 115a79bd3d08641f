//! SVG plots of a simulation, written by hand (no plotting or font library): the memory the
//! engine holds against the governor's ceiling, tasks running, and TTFT percentiles.
//!
//! Each plot is laid out first, as a [`Figure`] of panels with their axes, ticks and shapes in
//! data units, and drawn second ([`Figure::svg`]); tests check the layout (every panel labels
//! both axes, the legend stays out of every data area, tick labels are short and exact, TTFT is
//! on a log axis) and that the drawing is well-formed XML. Memory and running tasks are small
//! multiples, one panel per strategy on shared axes, the governor's rows first and in blue on a
//! tinted panel; TTFT is one panel, a row per strategy, p50 to p99 on a log axis.
//! Writes only the files it is given.

use super::Ceiling;
use super::report::{Context, tokens};
use super::run::{Outcome, Point};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The governor's rows: a blue no other row uses, darker for the first.
const GOVERNOR: [&str; 2] = ["#1456c8", "#6fa0e8"];
/// Every other row, in table order: distinct hues, none of them blue.
const OTHERS: [&str; 14] = [
    "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#843c39", "#637939", "#7b4173", "#e7ba52", "#393b79",
];
/// A governor panel's background.
const TINT: &str = "#eaf1fc";
/// At most this many points per line: a day of 1 s samples stays a small file.
const MAX_POINTS: usize = 600;

/// A rectangle in SVG pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl Rect {
    fn right(&self) -> f64 {
        self.x + self.w
    }
    fn bottom(&self) -> f64 {
        self.y + self.h
    }
    /// Whether the two share any area.
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
    }
}

/// How an axis maps values to pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Evenly.
    Linear,
    /// By decades (values > 0).
    Log,
}

/// One axis of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// What it shows, with its unit.
    pub label: String,
    /// Linear or log.
    pub scale: Scale,
    /// Lowest value shown.
    pub min: f64,
    /// Highest value shown.
    pub max: f64,
    /// Tick values and their labels.
    pub ticks: Vec<(f64, String)>,
    /// Tick labels are names (strategies), not numbers.
    pub categories: bool,
}

impl Axis {
    /// Where `v` falls on the axis, 0 (min) to 1 (max), clamped.
    fn frac(&self, v: f64) -> f64 {
        let f = match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log => {
                (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// A marker of the TTFT plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mark {
    /// p50: a filled circle.
    Circle,
    /// p95: a diamond.
    Diamond,
    /// p99: a square.
    Square,
}

/// What a panel draws, in data units.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A line through points.
    Line {
        /// (x, y) in data units.
        points: Vec<(f64, f64)>,
        /// CSS colour.
        color: &'static str,
        /// Stroke width, pixels.
        width: f64,
        /// Dashed.
        dashed: bool,
    },
    /// A line across the whole panel at `y` (a ceiling, a pool).
    Level {
        /// The value.
        y: f64,
        /// CSS colour.
        color: &'static str,
        /// Dashed.
        dashed: bool,
    },
    /// A marker at a point.
    Marker {
        /// Position in data units.
        at: (f64, f64),
        /// Its shape.
        mark: Mark,
        /// CSS colour.
        color: &'static str,
    },
    /// A band across the panel between two y values (the governor's TTFT row).
    Band {
        /// From.
        y0: f64,
        /// To.
        y1: f64,
        /// CSS colour.
        color: &'static str,
    },
}

/// One panel: a data area with its axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Above the data area (a strategy; empty for a single panel).
    pub title: String,
    /// The governor's panel: tinted, its title in bold.
    pub highlight: bool,
    /// The data area, pixels.
    pub area: Rect,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// What is drawn in the data area.
    pub shapes: Vec<Shape>,
}

/// What a legend entry looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum Swatch {
    /// A line.
    Line {
        /// CSS colour.
        color: &'static str,
        /// Dashed.
        dashed: bool,
    },
    /// A marker.
    Marker(Mark),
}

/// A plot, laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Pixels.
    pub width: f64,
    /// Pixels.
    pub height: f64,
    /// Above everything.
    pub title: String,
    /// Under the title: what one point is, what the panels share.
    pub subtitle: String,
    /// The legend's box, outside every data area.
    pub legend: Rect,
    /// Legend entries.
    pub entries: Vec<(Swatch, String)>,
    /// The panels.
    pub panels: Vec<Panel>,
}

/// A row of the plots: its outcome, colour, and whether it is a governor row.
struct Styled<'a> {
    o: &'a Outcome,
    color: &'static str,
    governor: bool,
}

/// The rows in plot order, the governor's first, each with its colour.
fn styled(rows: &[Outcome]) -> Vec<Styled<'_>> {
    let is_gov = |o: &Outcome| o.strategy.starts_with("kanban-governor");
    let gov = rows.iter().filter(|o| is_gov(o));
    let rest = rows.iter().filter(|o| !is_gov(o));
    let mut out: Vec<Styled<'_>> = gov
        .enumerate()
        .map(|(i, o)| Styled {
            o,
            color: GOVERNOR[i.min(GOVERNOR.len() - 1)],
            governor: true,
        })
        .collect();
    out.extend(rest.enumerate().map(|(i, o)| Styled {
        o,
        color: OTHERS[i % OTHERS.len()],
        governor: false,
    }));
    out
}

/// A step of 1, 2, 2.5 or 5 × 10^k that cuts `range` into about `n` parts.
fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `v` with as many decimals as `step` needs (none for whole steps): `0.25`, `120`, never
/// `450000.0` or `0.30000000000000004`.
fn fixed(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10() - 1e-9).ceil().clamp(0.0, 6.0) as usize
    };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_owned()
    } else {
        s
    }
}

/// Ticks from 0 to at least `max` at a nice step, labelled by `label(value, step)`.
fn linear_ticks(max: f64, n: f64, label: &dyn Fn(f64, f64) -> String) -> (f64, Vec<(f64, String)>) {
    let step = nice_step(max.max(1e-9), n);
    let top = (max / step - 1e-9).ceil().max(1.0) * step;
    let count = (top / step).round() as usize;
    let ticks = (0..=count)
        .map(|i| {
            let v = i as f64 * step;
            (v, label(v, step))
        })
        .collect();
    (top, ticks)
}

/// The time axis: minutes up to three hours, hours beyond.
fn time_axis(horizon_s: f64) -> Axis {
    let hours = horizon_s > 3.0 * 3600.0;
    let (unit, label) = if hours {
        (3600.0, "simulated time (h)")
    } else {
        (60.0, "simulated time (min)")
    };
    let span = (horizon_s / unit).max(1.0);
    // Steps that divide an hour or a day.
    let steps: &[f64] = if hours {
        &[1.0, 2.0, 3.0, 4.0, 6.0, 12.0, 24.0, 48.0]
    } else {
        &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0]
    };
    let step = steps
        .iter()
        .copied()
        .find(|s| span / s <= 8.0)
        .unwrap_or_else(|| nice_step(span, 6.0));
    let count = (span / step + 1e-9).floor() as usize;
    Axis {
        label: label.into(),
        scale: Scale::Linear,
        min: 0.0,
        max: span * unit,
        ticks: (0..=count)
            .map(|i| {
                let v = i as f64 * step;
                (v * unit, fixed(v, step))
            })
            .collect(),
        categories: false,
    }
}

/// A value axis from 0: KV tokens (`100k`), GiB, or tasks.
fn value_axis(label: &str, max: f64, unit: Unit) -> Axis {
    let (top, ticks) = linear_ticks(max, 5.0, &|v, step| match unit {
        Unit::Tokens if step >= 1000.0 || max >= 10_000.0 => {
            let (scale, suffix) = if max >= 2e6 { (1e6, "M") } else { (1e3, "k") };
            if v == 0.0 {
                "0".into()
            } else {
                format!("{}{suffix}", fixed(v / scale, step / scale))
            }
        }
        _ => fixed(v, step),
    });
    Axis {
        label: label.into(),
        scale: Scale::Linear,
        min: 0.0,
        max: top,
        ticks,
        categories: false,
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Tokens,
    Plain,
}

/// At most [`MAX_POINTS`] points: each the highest sample of its stretch, so a peak that
/// touches the ceiling still shows.
fn envelope(series: &[Point], y: &dyn Fn(&Point) -> f64) -> Vec<(f64, f64)> {
    let k = series.len().div_ceil(MAX_POINTS).max(1);
    series
        .chunks(k)
        .map(|c| {
            let top = c.iter().map(y).fold(f64::MIN, f64::max);
            (c[0].t, top)
        })
        .collect()
}

/// What a small-multiples plot shows: its titles, y axis and reference lines.
struct Multiples<'a> {
    title: &'a str,
    subtitle: String,
    y_label: &'a str,
    unit: Unit,
    y: &'a dyn Fn(&Point) -> f64,
    /// (value, colour, dashed, legend text).
    levels: Vec<(f64, &'static str, bool, String)>,
}

const CELL_W: f64 = 430.0;
const CELL_H: f64 = 250.0;
const HEADER_H: f64 = 96.0;
const LEGEND: Rect = Rect {
    x: 20.0,
    y: 52.0,
    w: 0.0,
    h: 28.0,
};

/// One panel per strategy on shared axes, three to a row.
fn multiples(rows: &[Outcome], horizon_s: f64, m: &Multiples<'_>) -> Figure {
    let rows = styled(rows);
    let cols = rows.len().clamp(1, 3);
    let width = cols as f64 * CELL_W + 40.0;
    let y_max = rows
        .iter()
        .flat_map(|r| r.o.series.iter().map(m.y))
        .chain(m.levels.iter().map(|l| l.0))
        .fold(1.0, f64::max)
        * 1.05;
    let x = time_axis(horizon_s);
    let y = value_axis(m.y_label, y_max, m.unit);
    let panels = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let cell_x = 20.0 + (i % cols) as f64 * CELL_W;
            let cell_y = HEADER_H + (i / cols) as f64 * CELL_H;
            let mut shapes: Vec<Shape> = m
                .levels
                .iter()
                .map(|&(y, color, dashed, _)| Shape::Level { y, color, dashed })
                .collect();
            shapes.push(Shape::Line {
                points: envelope(&r.o.series, m.y),
                color: r.color,
                width: if r.governor { 2.0 } else { 1.5 },
                dashed: false,
            });
            Panel {
                title: r.o.strategy.clone(),
                highlight: r.governor,
                area: Rect {
                    x: cell_x + 64.0,
                    y: cell_y + 26.0,
                    w: CELL_W - 64.0 - 24.0,
                    h: CELL_H - 26.0 - 56.0,
                },
                x: x.clone(),
                y: y.clone(),
                shapes,
            }
        })
        .collect::<Vec<_>>();
    let rows_n = rows.len().div_ceil(cols).max(1);
    let mut entries = vec![(
        Swatch::Line {
            color: GOVERNOR[0],
            dashed: false,
        },
        "kanban-governor (tinted panels)".to_owned(),
    )];
    entries.push((
        Swatch::Line {
            color: OTHERS[0],
            dashed: false,
        },
        "other strategies, a colour each".to_owned(),
    ));
    for (_, color, dashed, text) in &m.levels {
        entries.push((
            Swatch::Line {
                color,
                dashed: *dashed,
            },
            text.clone(),
        ));
    }
    Figure {
        width,
        height: HEADER_H + rows_n as f64 * CELL_H + 10.0,
        title: m.title.into(),
        subtitle: m.subtitle.clone(),
        legend: Rect {
            w: width - 40.0,
            ..LEGEND
        },
        entries,
        panels,
    }
}

/// Seconds per point of a plotted line, in words.
fn per_point(rows: &[Outcome]) -> String {
    let n = rows.iter().map(|o| o.series.len()).max().unwrap_or(0);
    let k = n.div_ceil(MAX_POINTS).max(1);
    if k == 1 {
        "every simulated second".into()
    } else {
        format!("the highest sample of every {k} simulated seconds")
    }
}

/// The memory plot: KV tokens against the pool and the ceiling, or GPU GiB against the ceiling.
pub fn memory_figure(rows: &[Outcome], ctx: &Context) -> Figure {
    const GIB: f64 = (1u64 << 30) as f64;
    let every = per_point(rows);
    let mut levels = Vec::new();
    if let Some(pool) = ctx.kv_pool_tokens {
        levels.push((
            pool as f64,
            "#444444",
            false,
            format!("KV pool, {} tokens", tokens(pool)),
        ));
    }
    match ctx.ceiling {
        Ceiling::Bytes(b) => {
            levels.push((
                ctx.gpu_total_bytes as f64 / GIB,
                "#444444",
                false,
                format!("GPU, {} GiB", fixed(ctx.gpu_total_bytes as f64 / GIB, 0.1)),
            ));
            levels.push((
                b as f64 / GIB,
                "#000000",
                true,
                format!(
                    "governor's ceiling, {} GiB (headroom × total − reserve)",
                    fixed(b as f64 / GIB, 0.1)
                ),
            ));
            multiples(
                rows,
                ctx.horizon_s,
                &Multiples {
                    title: "GPU memory used, against the governor's ceiling",
                    subtitle: format!("One panel per strategy, same axes; a point is {every}."),
                    y_label: "GPU memory (GiB)",
                    unit: Unit::Plain,
                    y: &|p| p.gpu_used as f64 / GIB,
                    levels,
                },
            )
        }
        Ceiling::KvTokens(t) => {
            levels.push((
                t as f64,
                "#000000",
                true,
                format!("governor's ceiling, {} tokens", tokens(t)),
            ));
            kv_multiples(rows, ctx, every, levels)
        }
        Ceiling::Slots(_) => kv_multiples(rows, ctx, every, levels),
    }
}

fn kv_multiples(
    rows: &[Outcome],
    ctx: &Context,
    every: String,
    levels: Vec<(f64, &'static str, bool, String)>,
) -> Figure {
    multiples(
        rows,
        ctx.horizon_s,
        &Multiples {
            title: "KV cache the engine holds, against its pool and the governor's ceiling",
            subtitle: format!("One panel per strategy, same axes; a point is {every}."),
            y_label: "KV tokens",
            unit: Unit::Tokens,
            y: &|p| p.kv_used as f64,
            levels,
        },
    )
}

/// The running-tasks plot.
pub fn running_figure(rows: &[Outcome], horizon_s: f64) -> Figure {
    multiples(
        rows,
        horizon_s,
        &Multiples {
            title: "Tasks running (dispatched and not finished)",
            subtitle: format!(
                "One panel per strategy, same axes; a point is {}.",
                per_point(rows)
            ),
            y_label: "tasks running",
            unit: Unit::Plain,
            y: &|p| f64::from(p.running),
            levels: Vec::new(),
        },
    )
}

/// The TTFT plot: a row per strategy (the governor's first), p50, p95 and p99 on a log axis.
pub fn ttft_figure(rows: &[Outcome]) -> Figure {
    const ROW_H: f64 = 26.0;
    let rows = styled(rows);
    let positive = rows
        .iter()
        .flat_map(|r| r.o.ttft)
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = positive.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.1, 1.0) };
    let lo_exp = lo.log10().floor() as i32;
    let hi_exp = (hi.log10().ceil() as i32).max(lo_exp + 1);
    let decade = |e: i32| {
        let v = 10f64.powi(e);
        (v, fixed(v, v))
    };
    let x = Axis {
        label: "time to first token (s, log scale)".into(),
        scale: Scale::Log,
        min: 10f64.powi(lo_exp),
        max: 10f64.powi(hi_exp),
        ticks: (lo_exp..=hi_exp).map(decade).collect(),
        categories: false,
    };
    let n = rows.len().max(1) as f64;
    // Row i sits at n - i - 0.5, so the first row is on top.
    let at = |i: usize| n - i as f64 - 0.5;
    let y = Axis {
        label: "strategy".into(),
        scale: Scale::Linear,
        min: 0.0,
        max: n,
        ticks: rows
            .iter()
            .enumerate()
            .map(|(i, r)| (at(i), r.o.strategy.clone()))
            .collect(),
        categories: true,
    };
    let mut shapes = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let yv = at(i);
        if r.governor {
            shapes.push(Shape::Band {
                y0: yv - 0.5,
                y1: yv + 0.5,
                color: TINT,
            });
        }
        let [p50, p95, p99] = r.o.ttft;
        shapes.push(Shape::Line {
            points: vec![(p50, yv), (p99, yv)],
            color: r.color,
            width: 2.0,
            dashed: false,
        });
        for (v, mark) in [
            (p50, Mark::Circle),
            (p95, Mark::Diamond),
            (p99, Mark::Square),
        ] {
            shapes.push(Shape::Marker {
                at: (v, yv),
                mark,
                color: r.color,
            });
        }
    }
    let label_w = 400.0;
    let area = Rect {
        x: 20.0 + label_w,
        y: HEADER_H,
        w: 620.0,
        h: n * ROW_H,
    };
    let width = area.right() + 40.0;
    Figure {
        width,
        height: area.bottom() + 60.0,
        title: "Time to first token: p50, p95 and p99 per strategy".into(),
        subtitle: "Each row: a line from p50 to p99. The governor's rows are first, in blue."
            .into(),
        legend: Rect {
            w: width - 40.0,
            ..LEGEND
        },
        entries: vec![
            (Swatch::Marker(Mark::Circle), "p50".into()),
            (Swatch::Marker(Mark::Diamond), "p95".into()),
            (Swatch::Marker(Mark::Square), "p99".into()),
        ],
        panels: vec![Panel {
            title: String::new(),
            highlight: false,
            area,
            x,
            y,
            shapes,
        }],
    }
}

/// Text safe inside an SVG element or attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn marker(out: &mut String, mark: Mark, (x, y): (f64, f64), color: &str) {
    let _ = match mark {
        Mark::Circle => writeln!(
            out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="4.5" fill="{color}"/>"#
        ),
        Mark::Diamond => writeln!(
            out,
            r#"<polygon points="{:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1}" fill="white" stroke="{color}" stroke-width="2"/>"#,
            x - 5.5,
            y - 5.5,
            x + 5.5,
            y + 5.5
        ),
        Mark::Square => writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="9" height="9" fill="{color}"/>"#,
            x - 4.5,
            y - 4.5
        ),
    };
}

fn dash(dashed: bool) -> &'static str {
    if dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    }
}

impl Panel {
    fn px(&self, v: f64) -> f64 {
        self.area.x + self.x.frac(v) * self.area.w
    }
    fn py(&self, v: f64) -> f64 {
        self.area.bottom() - self.y.frac(v) * self.area.h
    }

    fn svg(&self, out: &mut String) {
        let a = self.area;
        let fill = if self.highlight { TINT } else { "white" };
        let _ = writeln!(out, r#"<g class="panel">"#);
        if !self.title.is_empty() {
            let weight = if self.highlight { "bold" } else { "normal" };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="{weight}">{}</text>"#,
                a.x,
                a.y - 8.0,
                esc(&self.title)
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}" stroke="none"/>"#,
            a.x, a.y, a.w, a.h
        );
        // Grid and tick labels.
        for (v, label) in &self.x.ticks {
            let x = self.px(*v);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/>"##,
                a.y,
                a.bottom()
            );
            let _ = writeln!(
                out,
                r#"<text class="tick" x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                a.bottom() + 15.0,
                esc(label)
            );
        }
        for (v, label) in &self.y.ticks {
            let y = self.py(*v);
            if !self.y.categories {
                let _ = writeln!(
                    out,
                    r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
                    a.x,
                    a.right()
                );
            }
            let bold = self.y.categories && label.starts_with("kanban-governor");
            let _ = writeln!(
                out,
                r#"<text class="tick" x="{:.1}" y="{:.1}" font-size="{}" font-weight="{}" text-anchor="end">{}</text>"#,
                a.x - 6.0,
                y + 4.0,
                if self.y.categories { 12 } else { 11 },
                if bold { "bold" } else { "normal" },
                esc(label)
            );
        }
        for s in &self.shapes {
            self.shape(out, s);
        }
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888888"/>"##,
            a.x, a.y, a.w, a.h
        );
        // Axis labels: x under the ticks, y turned along the left edge.
        let _ = writeln!(
            out,
            r#"<text class="axis-label" x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            a.x + a.w / 2.0,
            a.bottom() + 34.0,
            esc(&self.x.label)
        );
        if !self.y.categories {
            let (x, y) = (a.x - 46.0, a.y + a.h / 2.0);
            let _ = writeln!(
                out,
                r#"<text class="axis-label" x="{x:.1}" y="{y:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
                esc(&self.y.label)
            );
        }
        let _ = writeln!(out, "</g>");
    }

    fn shape(&self, out: &mut String, s: &Shape) {
        let a = self.area;
        let _ = match s {
            Shape::Line {
                points,
                color,
                width,
                dashed,
            } => {
                let pts: Vec<String> = points
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
                    .collect();
                writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"{} stroke-linejoin="round"/>"#,
                    pts.join(" "),
                    dash(*dashed)
                )
            }
            Shape::Level { y, color, dashed } => {
                let y = self.py(*y);
                writeln!(
                    out,
                    r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="1.2"{}/>"#,
                    a.x,
                    a.right(),
                    dash(*dashed)
                )
            }
            Shape::Marker { at, mark, color } => {
                marker(out, *mark, (self.px(at.0), self.py(at.1)), color);
                Ok(())
            }
            Shape::Band { y0, y1, color } => {
                let (top, bottom) = (self.py(*y1), self.py(*y0));
                writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                    a.x,
                    a.w,
                    bottom - top
                )
            }
        };
    }
}

impl Figure {
    /// The figure as an SVG document.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif">"#,
            w = self.width,
            h = self.height
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="20" y="26" font-size="18" font-weight="bold">{}</text>"#,
            esc(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<text x="20" y="44" font-size="12" fill="#444444">{}</text>"##,
            esc(&self.subtitle)
        );
        let l = self.legend;
        let _ = writeln!(
            out,
            r##"<g class="legend"><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" stroke="#bbbbbb"/>"##,
            l.x, l.y, l.w, l.h
        );
        let mut x = l.x + 10.0;
        let y = l.y + l.h / 2.0;
        for (swatch, text) in &self.entries {
            match swatch {
                Swatch::Line { color, dashed } => {
                    let _ = writeln!(
                        out,
                        r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2"{}/>"#,
                        x + 24.0,
                        dash(*dashed)
                    );
                }
                Swatch::Marker(m) => marker(&mut out, *m, (x + 12.0, y), "#333333"),
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                x + 30.0,
                y + 4.0,
                esc(text)
            );
            // About 6.5 px per character at 12 px.
            x += 30.0 + text.chars().count() as f64 * 6.5 + 24.0;
        }
        let _ = writeln!(out, "</g>");
        for p in &self.panels {
            p.svg(&mut out);
        }
        out.push_str("</svg>\n");
        out
    }
}

/// Write `memory.svg`, `running.svg` and `ttft.svg` into `dir`; returns their paths.
///
/// # Errors
///
/// A file cannot be written.
pub fn write_all(dir: &Path, rows: &[Outcome], ctx: &Context) -> std::io::Result<Vec<PathBuf>> {
    let files = [
        ("memory.svg", memory_figure(rows, ctx)),
        ("running.svg", running_figure(rows, ctx.horizon_s)),
        ("ttft.svg", ttft_figure(rows)),
    ];
    let mut out = Vec::new();
    for (name, fig) in files {
        let path = dir.join(name);
        std::fs::write(&path, fig.svg())?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks what an XML parser would: one root, tags closed in order, attributes quoted,
    /// `<` never in text and `&` only as an entity. Names the first fault.
    fn well_formed(xml: &str) -> Result<(), String> {
        let entity_ok = |t: &str| {
            t.match_indices('&').all(|(i, _)| {
                let rest = &t[i + 1..];
                ["amp;", "lt;", "gt;", "quot;", "apos;"]
                    .iter()
                    .any(|e| rest.starts_with(e))
            })
        };
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = xml.trim();
        while !rest.is_empty() {
            let Some(open) = rest.find('<') else {
                return if stack.is_empty() {
                    Err(format!("text after the root: {rest:?}"))
                } else {
                    Err("unclosed elements at the end".into())
                };
            };
            let text = &rest[..open];
            if !entity_ok(text) || (stack.is_empty() && !text.trim().is_empty()) {
                return Err(format!("bad text {text:?}"));
            }
            let close = rest[open..].find('>').ok_or("a tag never closes")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop() != Some(name.trim()) {
                    return Err(format!("</{name}> closes nothing open"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("an empty tag")?;
            // Attributes: name="value" pairs, values without < and with entities only.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs
                    .find("=\"")
                    .ok_or(format!("unquoted attribute in <{tag}>"))?;
                let end = attrs[eq + 2..]
                    .find('"')
                    .ok_or(format!("an attribute never ends in <{tag}>"))?
                    + eq
                    + 2;
                let value = &attrs[eq + 2..end];
                if value.contains('<') || !entity_ok(value) || attrs[..eq].contains(' ') {
                    return Err(format!("bad attribute in <{tag}>"));
                }
                attrs = attrs[end + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name);
            }
        }
        match (roots, stack.is_empty()) {
            (1, true) => Ok(()),
            (n, _) => Err(format!("{n} roots, {} open", stack.len())),
        }
    }

    #[test]
    fn the_checker_refuses_what_a_parser_refuses() {
        assert!(well_formed(r#"<svg a="1"><g><text>a &amp; b</text></g><rect/></svg>"#).is_ok());
        for bad in [
            "<svg><g></svg>",
            "<svg a=1></svg>",
            "<svg><text>a & b</text></svg>",
            "<svg/><svg/>",
            "<svg><text>1 < 2</text></svg>",
        ] {
            assert!(well_formed(bad).is_err(), "{bad}");
        }
    }

    fn outcome(name: &str, ttft: [f64; 3], kv: impl Fn(f64) -> u64, hours: f64) -> Outcome {
        let series = (0..(hours * 3600.0) as usize)
            .map(|s| Point {
                t: s as f64,
                gpu_used: 72 << 30,
                kv_used: kv(s as f64),
                running: (s % 17) as u32,
                waiting: 0,
            })
            .collect();
        Outcome {
            strategy: name.into(),
            tasks: 10,
            completed: 10,
            blocked: 0,
            tasks_per_hour: 5.0,
            calls: 100,
            timeouts: 0,
            ooms: 0,
            overflows: 0,
            preemptions: 0,
            offloads: 0,
            ttft,
            gpu: [72 << 30; 3],
            kv_peak: 0,
            kv: [0; 3],
            idle_with_work: 0.0,
            makespan: None,
            pools: Vec::new(),
            series,
        }
    }

    /// Fourteen rows as the default table has them, the governor's in the middle.
    fn rows(hours: f64) -> Vec<Outcome> {
        (0..14)
            .map(|i| {
                let name = match i {
                    4 => "kanban-governor".to_owned(),
                    5 => "kanban-governor, declared footprints".to_owned(),
                    6 => "Hermes >=0.20 guard, caps 12/3/51 & more".to_owned(),
                    _ => format!("strategy {i}"),
                };
                let top = 30_000.0 * f64::from(i + 1);
                outcome(
                    &name,
                    [0.2 * f64::from(i + 1), 3.0, 120.0],
                    move |t| (top * (t / 600.0).sin().abs()) as u64,
                    hours,
                )
            })
            .collect()
    }

    fn ctx(hours: f64) -> Context {
        Context {
            kv_pool_tokens: Some(442_368),
            ceiling: Ceiling::KvTokens(420_249),
            gpu_total_bytes: 80 << 30,
            horizon_s: hours * 3600.0,
        }
    }

    fn figures(hours: f64) -> Vec<Figure> {
        let r = rows(hours);
        let c = ctx(hours);
        let per_request = Context {
            kv_pool_tokens: None,
            ceiling: Ceiling::Bytes(70 << 30),
            ..c
        };
        vec![
            memory_figure(&r, &c),
            memory_figure(&r, &per_request),
            running_figure(&r, c.horizon_s),
            ttft_figure(&r),
        ]
    }

    #[test]
    fn every_plot_is_well_formed_xml_and_escapes_names() {
        for f in figures(2.0) {
            let svg = f.svg();
            well_formed(&svg).unwrap_or_else(|e| panic!("{}: {e}", f.title));
            assert!(svg.contains("&gt;=0.20 guard, caps 12/3/51 &amp; more"));
        }
    }

    #[test]
    fn every_panel_labels_both_axes_and_the_svg_draws_the_x_label() {
        for f in figures(2.0) {
            for p in &f.panels {
                assert!(
                    !p.x.label.is_empty() && !p.y.label.is_empty(),
                    "{}",
                    f.title
                );
                assert!(p.x.ticks.len() >= 3 && p.y.ticks.len() >= 3, "{}", f.title);
            }
            let svg = f.svg();
            let drawn = svg.matches(r#"class="axis-label""#).count();
            let y_drawn = f.panels.iter().filter(|p| !p.y.categories).count();
            assert_eq!(drawn, f.panels.len() + y_drawn, "{}", f.title);
        }
        // Small multiples: a panel per strategy, each titled with it.
        let f = &figures(2.0)[0];
        assert_eq!(f.panels.len(), 14);
        assert!(f.panels.iter().all(|p| !p.title.is_empty()));
    }

    #[test]
    fn the_legend_stays_out_of_every_data_area_and_holds_its_entries() {
        for f in figures(2.0) {
            for p in &f.panels {
                assert!(!f.legend.overlaps(&p.area), "{}: {:?}", f.title, p.area);
                // Nor over the panel's title, drawn in the 26 px above its area.
                let title = Rect {
                    y: p.area.y - 26.0,
                    h: 26.0,
                    ..p.area
                };
                assert!(
                    p.title.is_empty() || !f.legend.overlaps(&title),
                    "{}",
                    f.title
                );
                assert!(p.area.right() <= f.width && p.area.bottom() <= f.height);
            }
            let text: f64 = f
                .entries
                .iter()
                .map(|(_, t)| 30.0 + t.chars().count() as f64 * 6.5 + 24.0)
                .sum();
            assert!(text + 10.0 <= f.legend.w, "{}: legend overflows", f.title);
        }
        let a = Rect {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        assert!(a.overlaps(&Rect { x: 9.0, ..a }));
        assert!(!a.overlaps(&Rect { y: 10.0, ..a }));
    }

    /// Short, exact labels: digits, at most two decimals, a k or M suffix.
    fn tidy(label: &str) -> bool {
        let digits = label.trim_end_matches(['k', 'M']);
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        label.len() <= 6
            && !whole.is_empty()
            && whole.chars().all(|c| c.is_ascii_digit())
            && frac.len() <= 2
            && frac.chars().all(|c| c.is_ascii_digit())
    }

    #[test]
    fn tick_labels_are_short_numbers_without_float_noise() {
        for hours in [2.0, 25.0] {
            for f in figures(hours) {
                for p in &f.panels {
                    for axis in [&p.x, &p.y] {
                        if axis.categories {
                            continue;
                        }
                        for (_, label) in &axis.ticks {
                            assert!(tidy(label), "{}: {label:?}", f.title);
                        }
                    }
                }
            }
        }
        let labels = |a: Axis| a.ticks.into_iter().map(|t| t.1).collect::<Vec<_>>();
        assert_eq!(
            labels(value_axis("KV tokens", 450_000.0, Unit::Tokens)),
            ["0", "100k", "200k", "300k", "400k", "500k"]
        );
        assert_eq!(
            labels(value_axis("GiB", 0.3, Unit::Plain)),
            ["0.0", "0.1", "0.2", "0.3"]
        );
        assert_eq!(
            labels(time_axis(7200.0)),
            ["0", "15", "30", "45", "60", "75", "90", "105", "120"]
        );
        assert_eq!(time_axis(7200.0).label, "simulated time (min)");
        let day = time_axis(25.0 * 3600.0);
        assert_eq!(day.label, "simulated time (h)");
        assert_eq!(labels(day), ["0", "4", "8", "12", "16", "20", "24"]);
        assert_eq!(fixed(0.1 + 0.2, 0.1), "0.3");
        assert_eq!(fixed(-0.0001, 1.0), "0");
    }

    #[test]
    fn ttft_is_on_a_log_axis_of_decades() {
        let f = ttft_figure(&rows(0.1));
        let p = &f.panels[0];
        assert_eq!(p.x.scale, Scale::Log);
        assert_eq!(p.x.label, "time to first token (s, log scale)");
        let values: Vec<f64> = p.x.ticks.iter().map(|t| t.0).collect();
        assert_eq!(values, [0.1, 1.0, 10.0, 100.0, 1000.0]);
        // Decades are evenly spaced, so 10 sits midway between 1 and 100.
        let (one, ten, hundred) = (p.px(1.0), p.px(10.0), p.px(100.0));
        assert!((ten - one - (hundred - ten)).abs() < 1e-9);
        assert!(ten - one > 50.0);
        // Every strategy is a row, the governor's on top and in bold.
        assert_eq!(p.y.ticks.len(), 14);
        assert_eq!(p.y.ticks[0].1, "kanban-governor");
        assert!(p.py(p.y.ticks[0].0) < p.py(p.y.ticks[13].0));
        assert!(
            f.svg()
                .contains(r#"font-weight="bold" text-anchor="end">kanban-governor<"#)
        );
    }

    #[test]
    fn the_governor_comes_first_in_a_colour_no_other_row_has() {
        let r = rows(0.1);
        let s = styled(&r);
        assert_eq!(s[0].o.strategy, "kanban-governor");
        assert!(s[0].governor && s[1].governor && !s[2].governor);
        let colors: Vec<&str> = s.iter().map(|x| x.color).collect();
        let mut unique = colors.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), colors.len(), "a colour repeats: {colors:?}");
        let f = memory_figure(&r, &ctx(0.1));
        assert!(f.panels[0].highlight && !f.panels[2].highlight);
        assert_eq!(f.panels[0].title, "kanban-governor");
    }

    #[test]
    fn the_pool_and_the_ceiling_are_lines_and_peaks_survive_thinning() {
        let r = rows(25.0);
        let f = memory_figure(&r, &ctx(25.0));
        let levels: Vec<f64> = f.panels[0]
            .shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Level { y, .. } => Some(*y),
                _ => None,
            })
            .collect();
        assert_eq!(levels, [442_368.0, 420_249.0]);
        for (p, o) in f.panels.iter().zip(styled(&r)) {
            let Some(Shape::Line { points, .. }) = p.shapes.last() else {
                panic!("no line in {}", p.title);
            };
            assert!(points.len() <= MAX_POINTS, "{}", points.len());
            let peak = o.o.series.iter().map(|q| q.kv_used).max().unwrap();
            let drawn = points.iter().map(|q| q.1).fold(0.0, f64::max);
            assert_eq!(drawn, peak as f64, "{}", p.title);
        }
    }
}
