//! The plan report as text: the table, the notes and the one-line summary.

use super::{MAX_TASKS, PlanReport};
use crate::governor::Bytes;
use std::fmt::Write as _;

pub(super) fn summary(r: &PlanReport) -> String {
    let fits: Vec<String> = r
        .profiles
        .iter()
        .filter(|p| p.in_mix > 0)
        .map(|p| {
            // A count at the backlog's size is a lower bound.
            let at_least = if p.in_mix >= MAX_TASKS { "≥" } else { "" };
            format!("{at_least}{} {}", p.in_mix, p.name)
        })
        .collect();
    let budget = match r.kv_budget_tokens {
        Some(t) => format!("{t} tokens"),
        None => Bytes(r.kv_budget_bytes).to_string(),
    };
    let mut s = format!(
        "{} on {} ({}): KV budget {budget}; largest mix {}",
        r.engine.name(),
        Bytes(r.gpu_memory_bytes),
        r.weights,
        if fits.is_empty() {
            "nothing".to_owned()
        } else {
            fits.join(" + ")
        }
    );
    if !r.never_fit.is_empty() {
        let names: Vec<&str> = r.never_fit.iter().map(|n| n.name.as_str()).collect();
        let _ = write!(s, "; never fits: {}", names.join(", "));
    }
    s
}

pub(super) fn render(r: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pool {} · GPU {} · {} · headroom {} · reserve {}",
        r.pool,
        Bytes(r.gpu_memory_bytes),
        r.engine.name(),
        r.headroom,
        Bytes(r.reserve_bytes)
    );
    if let (Some(cap), Some(fill)) = (r.kv_capacity_tokens, r.kv_budget_tokens) {
        let _ = writeln!(
            out,
            "engine KV pool {cap} tokens; the governor fills {fill} (headroom × pool); GPU \
             ceiling {} (total − reserve) for bytes outside the engine",
            Bytes(r.ceiling_bytes)
        );
    } else if r.baseline_bytes == r.weight_bytes.saturating_add(r.overhead_bytes) {
        let _ = writeln!(
            out,
            "ceiling {} − weights {} ({}) − overhead {} = KV budget {}",
            Bytes(r.ceiling_bytes),
            Bytes(r.weight_bytes),
            r.weights,
            Bytes(r.overhead_bytes),
            Bytes(r.kv_budget_bytes)
        );
    } else {
        let _ = writeln!(
            out,
            "ceiling {} − baseline {} (configured) = KV budget {}",
            Bytes(r.ceiling_bytes),
            Bytes(r.baseline_bytes),
            Bytes(r.kv_budget_bytes)
        );
    }
    if let (Some(n), Some(c)) = (r.slots, r.slot_context_tokens) {
        let _ = writeln!(out, "slots {n} × {c} tokens");
    }
    let _ = writeln!(out);
    let header = [
        "PROFILE",
        "MODEL",
        "KV/TOKEN",
        "CONTEXT",
        "REQ",
        "WORST CASE",
        "ALONE",
        "IN MIX",
    ];
    let rows: Vec<[String; 8]> = r
        .profiles
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.model.unwrap_or("(given)").to_owned(),
                format!("{} ({})", Bytes(p.kv_bytes_per_token), p.kv_dtype),
                p.max_context_tokens.to_string(),
                p.requests_per_task.to_string(),
                Bytes(p.worst_case_bytes).to_string(),
                format!(
                    "{}{}",
                    if p.at_least { "≥" } else { "" },
                    p.max_concurrent_alone
                ),
                p.in_mix.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w - cell.chars().count();
            l.push_str(cell);
            l.push_str(&" ".repeat(pad));
        }
        l.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(out);
    for p in &r.profiles {
        match (p.worst_case_bytes_full_attention, p.sliding_window_honoured) {
            (Some(full), Some(true)) => {
                let _ = writeln!(
                    out,
                    "{}: sliding-window model; {} keeps only the window in local layers: \
                     charged {} per task ({} with full attention)",
                    p.name,
                    r.engine.name(),
                    Bytes(p.worst_case_bytes),
                    Bytes(full)
                );
            }
            (Some(_), _) => {
                let _ = writeln!(
                    out,
                    "{}: sliding-window model; {} is not known to keep only the window, so \
                     every layer is charged the full context",
                    p.name,
                    r.engine.name()
                );
            }
            _ => {}
        }
    }
    for n in &r.never_fit {
        let _ = writeln!(out, "never fits: {}: {}", n.name, n.reason);
    }
    let _ = writeln!(out, "engine: {}", r.engine_settings.command);
    for note in &r.engine_settings.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let _ = writeln!(out, "summary: {}", r.summary);
    out
}
