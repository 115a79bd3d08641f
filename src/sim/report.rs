//! The comparison table, as text, CSV and JSON.
//!
//! The text table shows the memory that tells the strategies apart: the engine's KV pool where
//! it has one (vLLM and SGLang reserve their GPU memory at start, so GPU bytes read the same in
//! every row), GPU bytes where they vary. Footnotes say what a column leaves out.

use super::Ceiling;
use super::run::Outcome;
use std::fmt::Write as _;

/// What the table says about the host beyond its rows.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Tokens the engine's KV pool or slots hold (`None`: KV allocated per request).
    pub kv_pool_tokens: Option<u64>,
    /// The governor's ceiling.
    pub ceiling: Ceiling,
    /// GPU memory, bytes.
    pub gpu_total_bytes: u64,
    /// When the runs stop, seconds.
    pub horizon_s: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / GIB)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn secs(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn makespan(m: Option<f64>) -> String {
    m.map_or_else(|| "-".into(), |s| format!("{:.0}m", s / 60.0))
}

/// Tokens, short: `950`, `290k`, `1.25M`.
pub fn tokens(t: u64) -> String {
    if t < 1000 {
        t.to_string()
    } else if t < 1_000_000 {
        format!("{}k", (t as f64 / 1e3).round())
    } else {
        format!("{:.2}M", t as f64 / 1e6)
    }
}

/// A number with thousands separators: `442,368`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether GPU bytes tell anything apart: some run's samples differ, or runs differ.
fn gpu_varies(rows: &[Outcome]) -> bool {
    let first = rows.first().map(|o| o.gpu[2]);
    rows.iter()
        .any(|o| o.gpu[0] != o.gpu[2] || Some(o.gpu[2]) != first)
}

/// Which memory columns the table shows: `(gpu, kv)`.
fn memory_columns(rows: &[Outcome], ctx: &Context) -> (bool, bool) {
    let kv = ctx.kv_pool_tokens.is_some();
    (gpu_varies(rows) || !kv, kv)
}

/// The header and one row per outcome, as columns of strings.
fn cells(rows: &[Outcome], ctx: &Context) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let (show_gpu, show_kv) = memory_columns(rows, ctx);
    let mut header = vec![
        "strategy", "done", "tasks/h", "timeouts", "OOM", "preempt", "offload", "TTFT p50", "p95",
        "p99 (s)",
    ];
    if show_gpu {
        header.extend(["GPU mean", "p99", "max (GiB)"]);
    }
    if show_kv {
        header.extend(["KV mean", "p99", "peak / pool (tok)"]);
    }
    header.extend(["idle w/ work", "makespan"]);
    let pool = ctx.kv_pool_tokens.map_or_else(String::new, tokens);
    let body = rows
        .iter()
        .map(|o| {
            let mut r = vec![
                o.strategy.clone(),
                format!("{}/{}", o.completed, o.tasks),
                format!("{:.1}", o.tasks_per_hour),
                pct(o.timeout_rate()),
                (o.ooms + o.overflows).to_string(),
                o.preemptions.to_string(),
                o.offloads.to_string(),
                secs(o.ttft[0]),
                secs(o.ttft[1]),
                secs(o.ttft[2]),
            ];
            if show_gpu {
                r.extend([gib(o.gpu[0]), gib(o.gpu[1]), gib(o.gpu[2])]);
            }
            if show_kv {
                r.extend([
                    tokens(o.kv[0]),
                    tokens(o.kv[1]),
                    format!("{} / {pool}", tokens(o.kv[2])),
                ]);
            }
            r.extend([pct(o.idle_with_work), makespan(o.makespan)]);
            r
        })
        .collect();
    (header, body)
}

/// The lines under the table: what the memory columns show or leave out, and what makespan is.
fn footnotes(rows: &[Outcome], ctx: &Context) -> Vec<String> {
    let (show_gpu, show_kv) = memory_columns(rows, ctx);
    let mut out = Vec::new();
    if let (true, Some(pool)) = (show_kv, ctx.kv_pool_tokens) {
        let ceiling = match ctx.ceiling {
            Ceiling::KvTokens(t) => format!("{} tokens", grouped(t)),
            Ceiling::Slots(n) => format!("{n} slots"),
            Ceiling::Bytes(b) => format!("{} GiB of GPU memory", gib(b)),
        };
        out.push(format!(
            "KV: tokens the engine holds, sampled every simulated second, of its pool of {} \
             (the governor's ceiling: {ceiling}).",
            grouped(pool)
        ));
    }
    if !show_gpu && let Some(o) = rows.first() {
        out.push(format!(
            "GPU memory is not a column: {} GiB in every sample of every run (the engine \
             holds its memory from the start).",
            gib(o.gpu[2])
        ));
    }
    out.push(format!(
        "makespan: simulated time until the last task finished; \"-\" when some task had not \
         (still open, or blocked after its failures) when the run stopped at {:.0} min.",
        ctx.horizon_s / 60.0
    ));
    out
}

/// Under the table of a several-pool host: each row's most memory held in each pool against
/// the governor's ceiling there (the table's memory columns add the pools up, which would hide
/// one pool over its ceiling while the other idles), and its preemptions there.
pub fn per_pool(rows: &[Outcome], setup: &super::Setup) -> String {
    let ceilings = setup.ceilings();
    let hosts = setup.hosts();
    let mut out = String::from(
        "\nPer pool: most held at a sample / the governor's ceiling / capacity, preemptions.\n",
    );
    let width = rows.iter().map(|o| o.strategy.len()).max().unwrap_or(0);
    for o in rows {
        let pools: Vec<String> = o
            .pools
            .iter()
            .zip(&ceilings)
            .zip(&hosts)
            .zip(&setup.policy.pools)
            .map(|(((u, c), h), p)| {
                let held = match c {
                    Ceiling::KvTokens(t) => format!(
                        "{} / {} / {} tok",
                        tokens(u.kv_max),
                        tokens(*t),
                        h.regime.kv_pool_tokens().map_or_else(String::new, tokens)
                    ),
                    Ceiling::Slots(n) => format!(
                        "{} / {n} slots of {} tok",
                        tokens(u.kv_max),
                        h.regime.kv_pool_tokens().map_or_else(String::new, tokens)
                    ),
                    Ceiling::Bytes(b) => {
                        format!("{} / {} / {} GiB", gib(u.gpu_max), gib(*b), gib(h.total))
                    }
                };
                format!("{} {held}, {} preempt", p.name, u.preemptions)
            })
            .collect();
        let _ = writeln!(out, "  {:<width$}  {}", o.strategy, pools.join("; "));
    }
    out
}

/// The table as aligned text, with its footnotes.
pub fn table(rows: &[Outcome], ctx: &Context) -> String {
    let (header, body) = cells(rows, ctx);
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &body {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: Vec<String>| {
        for (i, (c, w)) in cols.iter().zip(&width).enumerate() {
            if i == 0 {
                let _ = write!(out, "{c:<w$}");
            } else {
                let _ = write!(out, "  {c:>w$}");
            }
        }
        out.push('\n');
    };
    line(&mut out, header.iter().map(|h| (*h).to_owned()).collect());
    for r in body {
        line(&mut out, r);
    }
    out.push('\n');
    for f in footnotes(rows, ctx) {
        out.push_str(&f);
        out.push('\n');
    }
    out
}

/// The table as CSV (raw numbers, not rounded).
pub fn csv(rows: &[Outcome]) -> String {
    let mut out = String::from(
        "strategy,tasks,completed,blocked,tasks_per_hour,calls,timeouts,timeout_rate,ooms,overflows,preemptions,offloads,ttft_p50_s,ttft_p95_s,ttft_p99_s,gpu_mean_bytes,gpu_p99_bytes,gpu_max_bytes,kv_peak_tokens,idle_with_work,makespan_s,kv_mean_tokens,kv_p99_tokens\n",
    );
    for o in rows {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{:.3},{},{},{:.5},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{:.5},{},{},{}",
            o.strategy.replace('"', "'"),
            o.tasks,
            o.completed,
            o.blocked,
            o.tasks_per_hour,
            o.calls,
            o.timeouts,
            o.timeout_rate(),
            o.ooms,
            o.overflows,
            o.preemptions,
            o.offloads,
            o.ttft[0],
            o.ttft[1],
            o.ttft[2],
            o.gpu[0],
            o.gpu[1],
            o.gpu[2],
            o.kv_peak,
            o.idle_with_work,
            o.makespan.map_or_else(String::new, |m| format!("{m:.1}")),
            o.kv[0],
            o.kv[1],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> Outcome {
        Outcome {
            strategy: name.into(),
            tasks: 10,
            completed: 9,
            blocked: 1,
            tasks_per_hour: 4.5,
            calls: 100,
            timeouts: 3,
            ooms: 0,
            overflows: 0,
            preemptions: 7,
            offloads: 0,
            ttft: [0.2, 1.5, 3.0],
            gpu: [1 << 30, 2 << 30, 3 << 30],
            kv_peak: 1000,
            kv: [500, 900, 1000],
            idle_with_work: 0.0,
            makespan: None,
            pools: Vec::new(),
            series: Vec::new(),
        }
    }

    const POOL: Context = Context {
        kv_pool_tokens: Some(442_368),
        ceiling: Ceiling::KvTokens(420_249),
        gpu_total_bytes: 80 << 30,
        horizon_s: 7200.0,
    };

    #[test]
    fn the_table_aligns_one_row_per_strategy() {
        let t = table(&[row("a"), row("kanban-governor")], &POOL);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("kanban-governor"));
        assert!(lines[1].contains("9/10") && lines[1].contains("3.0%"));
        assert_eq!(lines[0].len(), lines[1].len());
        assert_eq!(lines[0].len(), lines[2].len());
        assert_eq!(lines[3], "", "a blank line, then the footnotes");
    }

    #[test]
    fn a_pool_shows_kv_against_it_and_drops_gpu_bytes_that_never_vary() {
        let mut a = row("a");
        a.gpu = [72 << 30; 3];
        a.kv = [214_000, 290_400, 441_900];
        let mut b = row("b");
        b.gpu = [72 << 30; 3];
        let t = table(&[a, b], &POOL);
        let header = t.lines().next().unwrap();
        assert!(!header.contains("GPU"), "{header}");
        assert!(header.contains("KV mean") && header.contains("peak / pool (tok)"));
        let cells: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert!(
            cells.ends_with(&["214k", "290k", "442k", "/", "442k", "0.0%", "-"]),
            "{t}"
        );
        assert!(t.contains("of its pool of 442,368 (the governor's ceiling: 420,249 tokens)"));
        assert!(t.contains("GPU memory is not a column: 72.0 GiB in every sample"));
    }

    #[test]
    fn gpu_bytes_that_vary_stay_and_a_host_without_a_pool_shows_no_kv() {
        let mut b = row("b");
        b.gpu = [1 << 30; 3];
        let rows = [row("a"), b];
        let t = table(&rows, &POOL);
        assert!(t.lines().next().unwrap().contains("GPU mean"), "{t}");
        assert!(t.lines().next().unwrap().contains("KV mean"), "{t}");
        assert!(!t.contains("not a column"));
        let per_request = Context {
            kv_pool_tokens: None,
            ceiling: Ceiling::Bytes(70 << 30),
            ..POOL
        };
        let t = table(&rows, &per_request);
        assert!(t.lines().next().unwrap().contains("GPU mean"), "{t}");
        assert!(!t.contains("KV"), "{t}");
    }

    #[test]
    fn makespan_is_explained_under_the_table() {
        let mut done = row("done");
        done.makespan = Some(117.0 * 60.0);
        let t = table(&[row("open"), done], &POOL);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].ends_with(" -") && lines[2].ends_with(" 117m"),
            "{t}"
        );
        assert!(
            t.contains("makespan: simulated time until the last task finished; \"-\" when")
                && t.contains("when the run stopped at 120 min."),
            "{t}"
        );
    }

    #[test]
    fn tokens_are_short_and_exact_below_a_thousand() {
        assert_eq!(tokens(950), "950");
        assert_eq!(tokens(290_400), "290k");
        assert_eq!(tokens(442_368), "442k");
        assert_eq!(tokens(1_250_000), "1.25M");
        assert_eq!(grouped(442_368), "442,368");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn csv_has_a_header_and_raw_numbers() {
        let c = csv(&[row("a")]);
        let mut lines = c.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("strategy,tasks,completed")
        );
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("\"a\",10,9,1,4.500,100,3,0.03000")
        );
    }
}
