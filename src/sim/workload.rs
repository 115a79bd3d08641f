//! Workloads: agent tasks as sequences of LLM calls whose context grows turn by turn, with
//! tool gaps between calls; built-in scenarios; and trace files in the Azure LLM inference CSV
//! format (`TIMESTAMP,ContextTokens,GeneratedTokens`).
//!
//! A task's shape comes from its profile's declared `max_context_tokens` (M): its first
//! prompt is 8–15 % of M (system prompt, tool schemas, the task), it runs 10–30 turns, each
//! call writes 100–400 tokens and each tool result adds to the context, so the task's peak
//! context lands anywhere from 40 % to 100 % of M (Hermes compresses the conversation before
//! the model's limit, so the declared maximum is a real bound). Tool gaps are 2–15 s. A
//! profile with `requests_per_task = R` sends R calls at once per turn (sub-agents).
//!
//! Trace mapping (documented in `simulate --help`): every `group` consecutive rows (8 by
//! default) form one agent task created at its first row's time; call k's prompt is the sum of
//! the group's `ContextTokens` up to k plus the `GeneratedTokens` before k (the conversation
//! grows), its output is row k's `GeneratedTokens`; tool gaps are drawn as above. The task
//! goes to the profile with the smallest `max_context_tokens` that holds its peak context
//! (else the largest, its context capped there).

use super::rng::Rng;
use std::fmt;

/// One LLM call of a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call {
    /// Prompt tokens (the whole context so far).
    pub prompt: u64,
    /// Output tokens.
    pub output: u64,
    /// Tool time before this call, seconds.
    pub gap_before: f64,
}

/// One agent task on the board.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Index of its profile in the config.
    pub profile: usize,
    /// When it is created on the board, seconds.
    pub arrival: f64,
    /// Hermes priority (higher first).
    pub priority: i64,
    /// A parent task that must be done first (pipelines).
    pub parent: Option<usize>,
    /// Calls sent at once per turn.
    pub streams: u32,
    /// The turns.
    pub calls: Vec<Call>,
}

impl TaskSpec {
    /// The largest context any of its calls reaches (prompt + output).
    pub fn peak_context(&self) -> u64 {
        self.calls
            .iter()
            .map(|c| c.prompt + c.output)
            .max()
            .unwrap_or(0)
    }
}

/// What the workload needs to know about a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileShape {
    /// Name.
    pub name: String,
    /// Declared `max_context_tokens`.
    pub max_context: u64,
    /// `requests_per_task`.
    pub streams: u32,
    /// Whether it is interactive (guaranteed room, or the smallest context): short tasks that
    /// arrive one by one at a higher priority.
    pub interactive: bool,
}

/// A built-in scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Interactive tasks arriving one by one, batch profiles' tasks fanned out by a planner
    /// in bursts.
    Mixed,
    /// Three-stage parent/child pipelines (an interactive stage, then two batch stages).
    Pipeline,
    /// Every task created within the first ten seconds.
    Burst,
    /// The mixed workload with another GPU tenant grabbing a quarter of the memory for five
    /// minutes every fifteen.
    NoisyNeighbour,
    /// The mixed workload on a GB10-like unified-memory host: one 128 GiB memory for CPU and
    /// GPU, vLLM reserving 0.87 of it, the governor on `telemetry = "host"` (hermes-agent
    /// #90713).
    UnifiedMemory,
    /// The mixed workload on a 3-slot llama-server that a memory service outside the board
    /// also uses, with 32 connections (vectorize-io/hindsight #1721).
    OutsideClient,
    /// The mixed workload sized as Hermes needs it: every profile at least 64k tokens of
    /// context (hermes-agent #14420) and a 10k-token system prompt in every call (#25041).
    HermesSized,
    /// The mixed workload on a host with two GPUs, each with its own engine, and the
    /// profiles pinned to one or the other (hermes-agent #111188: two worker profiles on one
    /// GPU of two, one OOMs or spills).
    TwoGpus,
}

/// Tokens of Hermes's system prompt (hermes-agent #25041: ~10k).
pub const HERMES_SYSTEM_PROMPT_TOKENS: u64 = 10_000;
/// The least context Hermes workers need (hermes-agent #14420: ≥ 64k).
pub const HERMES_MIN_CONTEXT_TOKENS: u64 = 65_536;

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Mixed => "mixed",
            Scenario::Pipeline => "pipeline",
            Scenario::Burst => "burst",
            Scenario::NoisyNeighbour => "noisy-neighbour",
            Scenario::UnifiedMemory => "unified-memory",
            Scenario::OutsideClient => "outside-client",
            Scenario::HermesSized => "hermes-sized",
            Scenario::TwoGpus => "two-gpus",
        })
    }
}

/// A task of profile `p` shaped as the module doc says.
fn shaped(rng: &mut Rng, p: usize, shape: &ProfileShape, arrival: f64, priority: i64) -> TaskSpec {
    let m = shape.max_context.max(512);
    let turns = rng.range(10, 30);
    let peak = (m as f64 * rng.uniform(0.4, 1.0)) as u64;
    let first = (m as f64 * rng.uniform(0.08, 0.15)) as u64;
    let mut calls = Vec::with_capacity(turns as usize);
    let mut ctx = first;
    let outputs: Vec<u64> = (0..turns).map(|_| rng.range(100, 400)).collect();
    let out_total: u64 = outputs.iter().sum();
    let growth = peak.saturating_sub(first + out_total) / turns.max(1);
    for (k, &out) in outputs.iter().enumerate() {
        // Capped where the longest output still fits, so prompts never shrink.
        let prompt = ctx.min(m.saturating_sub(400).max(1));
        calls.push(Call {
            prompt,
            output: out,
            gap_before: if k == 0 { 0.0 } else { rng.uniform(2.0, 15.0) },
        });
        ctx = prompt + out + growth;
    }
    TaskSpec {
        profile: p,
        arrival,
        priority,
        parent: None,
        streams: shape.streams.max(1),
        calls,
    }
}

/// The tasks of scenario `s` over `duration` seconds for these profiles.
pub fn scenario(s: Scenario, profiles: &[ProfileShape], duration: f64, seed: u64) -> Vec<TaskSpec> {
    let mut rng = Rng::stream(seed, 1);
    let interactive: Vec<usize> = (0..profiles.len())
        .filter(|&i| profiles[i].interactive)
        .collect();
    let batch: Vec<usize> = (0..profiles.len())
        .filter(|&i| !profiles[i].interactive)
        .collect();
    let batch = if batch.is_empty() {
        interactive.clone()
    } else {
        batch
    };
    let mut tasks = Vec::new();
    match s {
        Scenario::Mixed
        | Scenario::NoisyNeighbour
        | Scenario::UnifiedMemory
        | Scenario::OutsideClient
        | Scenario::HermesSized
        | Scenario::TwoGpus => {
            for &p in &interactive {
                let mut t = rng.exp(20.0);
                while t < duration {
                    tasks.push(shaped(&mut rng, p, &profiles[p], t, 5));
                    t += rng.exp(20.0);
                }
            }
            // A planner fans out a burst of batch tasks every five minutes, profiles in turn.
            let mut t = 5.0;
            let mut k = 0usize;
            while t < duration {
                let p = batch[k % batch.len()];
                let n = (24 / profiles[p].streams.max(1)).max(2);
                for i in 0..n {
                    tasks.push(shaped(&mut rng, p, &profiles[p], t + f64::from(i) * 0.5, 0));
                }
                k += 1;
                t += 300.0 / batch.len() as f64;
            }
        }
        Scenario::Burst => {
            let n = 60;
            for i in 0..n {
                let p = batch[i % batch.len()];
                tasks.push(shaped(
                    &mut rng,
                    p,
                    &profiles[p],
                    i as f64 * 10.0 / n as f64,
                    0,
                ));
            }
        }
        Scenario::Pipeline => {
            let first = interactive.first().copied().unwrap_or(batch[0]);
            let mut t = 1.0;
            while t < duration {
                let a = tasks.len();
                tasks.push(shaped(&mut rng, first, &profiles[first], t, 1));
                let mut b = shaped(&mut rng, batch[0], &profiles[batch[0]], t, 0);
                b.parent = Some(a);
                tasks.push(b);
                let last = batch[batch.len() - 1];
                let mut c = shaped(&mut rng, last, &profiles[last], t, 0);
                c.parent = Some(a + 1);
                tasks.push(c);
                t += 120.0;
            }
        }
    }
    tasks.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    // Parents were indices before sorting; pipelines are created in order, so remap.
    if s == Scenario::Pipeline {
        relink(&mut tasks);
    }
    if s == Scenario::HermesSized {
        // The system prompt comes on top of what the task has built up, within the
        // profile's context (where the call's output still fits).
        for t in &mut tasks {
            let m = profiles[t.profile].max_context.max(512);
            for c in &mut t.calls {
                // Outputs are at most 400 tokens (`shaped`): a fixed cap keeps prompts growing.
                c.prompt =
                    (c.prompt + HERMES_SYSTEM_PROMPT_TOKENS).min(m.saturating_sub(400).max(1));
            }
        }
    }
    tasks
}

/// Pipelines' parent indices after sorting by arrival: a child follows its parent.
fn relink(tasks: &mut [TaskSpec]) {
    // Sorting is stable and a stage's children share its arrival time and come after it in
    // creation order, so the parent of a task is the nearest earlier task of the same
    // pipeline: the one just before it.
    for (i, t) in tasks.iter_mut().enumerate() {
        if t.parent.is_some() {
            t.parent = Some(i - 1);
        }
    }
}

/// A row of a trace file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    /// Seconds since the first row.
    pub at: f64,
    /// Prompt tokens.
    pub context: u64,
    /// Output tokens.
    pub generated: u64,
}

/// A trace file that cannot be read: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {detail}")]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what would work.
    pub detail: String,
}

/// The header the format has.
pub const TRACE_HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens";

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let mut t = time.split(':');
    let (h, mi, sec) = (
        t.next()?.parse::<u32>().ok()?,
        t.next()?.parse::<u32>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    if t.next().is_some() || h > 23 || mi > 59 || !(0.0..61.0).contains(&sec) {
        return None;
    }
    Some(days_from_civil(y, mo, da) as f64 * 86_400.0 + f64::from(h * 3600 + mi * 60) + sec)
}

/// Parse a trace in the Azure LLM inference CSV format.
///
/// # Errors
///
/// The first bad line: a wrong header, a row without three fields, a timestamp not
/// `YYYY-MM-DD HH:MM:SS[.fraction]`, token counts that are not non-negative integers, or no
/// rows.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, TraceError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim().trim_start_matches('\u{feff}') == TRACE_HEADER => {}
        Some((_, h)) => {
            return Err(TraceError {
                line: 1,
                detail: format!(
                    "header {:?} is not {TRACE_HEADER:?}; give a file in the Azure LLM inference trace format",
                    h.trim()
                ),
            });
        }
        None => {
            return Err(TraceError {
                line: 1,
                detail: format!("the file is empty; it needs the header {TRACE_HEADER:?} and rows"),
            });
        }
    }
    let mut rows = Vec::new();
    let mut first = None;
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| TraceError { line: n, detail };
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 3 {
            return Err(bad(format!(
                "{} fields; a row is TIMESTAMP,ContextTokens,GeneratedTokens",
                f.len()
            )));
        }
        let at = parse_timestamp(f[0]).ok_or_else(|| {
            bad(format!(
                "timestamp {:?} is not YYYY-MM-DD HH:MM:SS[.fraction]",
                f[0].trim()
            ))
        })?;
        let tokens = |s: &str, col: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                bad(format!(
                    "{col} {:?} is not a non-negative whole number of tokens",
                    s.trim()
                ))
            })
        };
        let context = tokens(f[1], "ContextTokens")?;
        let generated = tokens(f[2], "GeneratedTokens")?;
        let origin = *first.get_or_insert(at);
        rows.push(TraceRow {
            at: at - origin,
            context,
            generated,
        });
    }
    if rows.is_empty() {
        return Err(TraceError {
            line: 2,
            detail: "no rows after the header".into(),
        });
    }
    rows.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(rows)
}

/// Agent tasks from trace rows, as the module doc says.
pub fn tasks_from_trace(
    rows: &[TraceRow],
    group: usize,
    profiles: &[ProfileShape],
    seed: u64,
) -> Vec<TaskSpec> {
    let mut rng = Rng::stream(seed, 2);
    let mut by_ctx: Vec<usize> = (0..profiles.len()).collect();
    by_ctx.sort_by_key(|&i| profiles[i].max_context);
    let mut tasks = Vec::new();
    for chunk in rows.chunks(group.max(1)) {
        let mut prompts = Vec::with_capacity(chunk.len());
        let mut ctx = 0u64;
        for r in chunk {
            ctx += r.context.max(1);
            prompts.push((ctx, r.generated.max(1)));
            ctx += r.generated;
        }
        let peak = prompts.iter().map(|(p, o)| p + o).max().unwrap_or(0);
        let p = by_ctx
            .iter()
            .copied()
            .find(|&i| profiles[i].max_context >= peak)
            .unwrap_or(by_ctx[by_ctx.len() - 1]);
        let m = profiles[p].max_context.max(2);
        let calls = prompts
            .iter()
            .enumerate()
            .map(|(k, &(prompt, output))| {
                let output = output.min(m / 2);
                Call {
                    prompt: prompt.min(m - output).max(1),
                    output,
                    gap_before: if k == 0 { 0.0 } else { rng.uniform(1.0, 10.0) },
                }
            })
            .collect();
        tasks.push(TaskSpec {
            profile: p,
            arrival: chunk[0].at,
            priority: i64::from(profiles[p].interactive) * 5,
            parent: None,
            streams: profiles[p].streams.max(1),
            calls,
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes() -> Vec<ProfileShape> {
        vec![
            ProfileShape {
                name: "coder".into(),
                max_context: 32768,
                streams: 1,
                interactive: false,
            },
            ProfileShape {
                name: "triage".into(),
                max_context: 8192,
                streams: 1,
                interactive: true,
            },
        ]
    }

    #[test]
    fn every_call_stays_within_its_profiles_declared_context() {
        let p = shapes();
        for s in [Scenario::Mixed, Scenario::Burst, Scenario::Pipeline] {
            let tasks = scenario(s, &p, 3600.0, 9);
            assert!(!tasks.is_empty());
            for t in &tasks {
                assert!(t.peak_context() <= p[t.profile].max_context, "{t:?}");
                assert!(t.calls.windows(2).all(|w| w[1].prompt >= w[0].prompt));
            }
        }
    }

    #[test]
    fn pipeline_children_come_after_their_parents() {
        let tasks = scenario(Scenario::Pipeline, &shapes(), 600.0, 1);
        for (i, t) in tasks.iter().enumerate() {
            if let Some(p) = t.parent {
                assert!(p < i);
                assert!(tasks[p].arrival <= t.arrival);
            }
        }
        assert!(tasks.iter().any(|t| t.parent.is_some()));
    }

    #[test]
    fn a_trace_parses_with_times_relative_to_its_first_row() {
        let rows = parse_trace(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 23:59:59.5000000,374,44\n\
             2023-11-17 00:00:01.0000000,396,109\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert!((rows[1].at - 1.5).abs() < 1e-6);
        assert_eq!(rows[1].context, 396);
    }

    #[test]
    fn bad_trace_rows_name_their_line() {
        let e = parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12,x\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.detail.contains("GeneratedTokens"), "{e}");
        let e = parse_trace("a,b,c\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n\n2023-13-16 18:15:46,1,2\n")
            .unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn trace_rows_group_into_tasks_whose_context_grows() {
        let rows: Vec<TraceRow> = (0..16)
            .map(|i| TraceRow {
                at: f64::from(i),
                context: 500,
                generated: 50,
            })
            .collect();
        let tasks = tasks_from_trace(&rows, 8, &shapes(), 1);
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].calls[0].prompt, 500);
        assert_eq!(tasks[0].calls[1].prompt, 1050);
        assert_eq!(tasks[0].profile, 1, "4.4k-token peak fits the 8k profile");
        assert_eq!(tasks[1].arrival, 8.0);
    }
}
