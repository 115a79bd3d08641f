//! The comparison table, as text, CSV and JSON.

use super::run::Outcome;
use std::fmt::Write as _;

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

/// The header and one row per outcome, as columns of strings.
fn cells(rows: &[Outcome]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "strategy",
        "done",
        "tasks/h",
        "timeouts",
        "OOM",
        "preempt",
        "offload",
        "TTFT p50",
        "p95",
        "p99 (s)",
        "GPU mean",
        "p99",
        "max (GiB)",
        "idle w/ work",
        "makespan",
    ];
    let body = rows
        .iter()
        .map(|o| {
            vec![
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
                gib(o.gpu[0]),
                gib(o.gpu[1]),
                gib(o.gpu[2]),
                pct(o.idle_with_work),
                makespan(o.makespan),
            ]
        })
        .collect();
    (header, body)
}

/// The table as aligned text.
pub fn table(rows: &[Outcome]) -> String {
    let (header, body) = cells(rows);
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
    out
}

/// The table as CSV (raw numbers, not rounded).
pub fn csv(rows: &[Outcome]) -> String {
    let mut out = String::from(
        "strategy,tasks,completed,blocked,tasks_per_hour,calls,timeouts,timeout_rate,ooms,overflows,preemptions,offloads,ttft_p50_s,ttft_p95_s,ttft_p99_s,gpu_mean_bytes,gpu_p99_bytes,gpu_max_bytes,kv_peak_tokens,idle_with_work,makespan_s\n",
    );
    for o in rows {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{:.3},{},{},{:.5},{},{},{},{},{:.4},{:.4},{:.4},{},{},{},{},{:.5},{}",
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
            idle_with_work: 0.0,
            makespan: None,
            series: Vec::new(),
        }
    }

    #[test]
    fn the_table_aligns_one_row_per_strategy() {
        let t = table(&[row("a"), row("kanban-governor")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("kanban-governor"));
        assert!(lines[1].contains("9/10") && lines[1].contains("3.0%"));
        assert_eq!(lines[0].len(), lines[1].len());
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
