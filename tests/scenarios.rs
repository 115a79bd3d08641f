//! Control-loop scenarios (issue 12): every `tests/scenarios/*.toml` is played through the real
//! tick ([`run_tick_with_store`], as `kanban-governor tick` runs it) over the library's fakes
//! ([`kanban_governor::fakes`]) and a manual clock, and its expected ranges are checked. A new
//! file needs no Rust: drop it in the directory. vector's adaptive-concurrency tests
//! (`tests/data/adaptive-concurrency/`) are the model: a file states the workload, the faults
//! and the ranges, and the runner never sleeps.
//!
//! A scenario file (`tests/scenarios/README.md` lists every key):
//!
//! - `[scenario]`: `duration` of the run, tick `interval` (default: the config's
//!   `dispatch.interval`).
//! - `[governor]`: the normal config file's tables, under `governor.` (`[governor.gpu]`,
//!   `[[governor.profiles]]`, ...), validated as a config file is.
//! - `[gpu]`, `[engine]`: what the scripted GPU holds before any task, and what the scripted
//!   engine reports (capacities, time to first token as load grows).
//! - `[[tasks]]`: the workload: profile, how many, when they turn ready, how long they run, the
//!   GPU memory each reaches by its end (growing with its context).
//! - `[[faults]]`: telemetry errors or staleness, the board unreadable, Hermes calls failing, a
//!   preemption, another tenant taking memory, a second dispatcher, each over a time window.
//! - `[expect]`: ranges `[low, high]` (inclusive) over the run. Whatever the file says, every
//!   tick must also keep these invariants: nothing is released while its pool is blind (its
//!   telemetry failed or is older than `max_staleness`), nothing is released into a pool that
//!   is then over its ceiling, and every release is saved ahead of its `assign`.
//!
//! A failing file names itself and the range it broke; a malformed one names itself and the
//! key.

use kanban_governor::app::daemon::latency;
use kanban_governor::app::tick::{PoolSource, TickOptions, TickPorts, run_tick_with_store};
use kanban_governor::config::{self, Config, ConfigArgs, units};
use kanban_governor::fakes::{
    Fault, InMemoryBoard, InMemoryState, ManualClock, ScriptedEngine, ScriptedGpu,
};
use kanban_governor::governor::limit::{Aimd, AimdConfig, ConcurrencyLimit};
use kanban_governor::governor::{Bytes, Millis, Policy, TaskId};
use kanban_governor::ports::{BoardTask, EngineReading, EngineTelemetry, TaskStatus};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The file.
// ---------------------------------------------------------------------------------------------

/// A scenario file as written. Sizes and durations stay TOML values until [`Scenario::read`]
/// parses them with the config's own parsers, so an error names the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    scenario: ScenarioTable,
    governor: toml::Table,
    #[serde(default)]
    gpu: GpuTable,
    #[serde(default)]
    engine: EngineTable,
    #[serde(default)]
    tasks: Vec<TaskTable>,
    #[serde(default)]
    faults: Vec<FaultTable>,
    expect: ExpectTable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioTable {
    duration: toml::Value,
    interval: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuTable {
    /// Total memory (default: the config's `gpu.memory_total`).
    total: Option<toml::Value>,
    /// Memory in use before any task: weights, other tenants (default: `gpu.baseline`, else 0).
    used: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineTable {
    kv_capacity_tokens: Option<u64>,
    slots: Option<u32>,
    slot_context_tokens: Option<u64>,
    /// Time to first token with nothing running.
    ttft: Option<toml::Value>,
    /// What each governed task running adds to it.
    ttft_per_task: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskTable {
    /// Id prefix (`<name>_<n>`); default `t<index>`.
    name: Option<String>,
    /// The governed profile it belongs to.
    profile: String,
    #[serde(default = "one")]
    count: u32,
    ready_at: Option<toml::Value>,
    /// Between successive tasks of this entry.
    every: Option<toml::Value>,
    runs_for: toml::Value,
    /// GPU memory its worker holds by the end of its run, growing evenly from 0.
    memory: Option<toml::Value>,
    /// Created on this assignee instead of the profile's lane.
    assignee: Option<String>,
    /// Created already running (started outside the governor).
    #[serde(default)]
    running: bool,
    #[serde(default)]
    priority: i64,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultTable {
    kind: String,
    from: toml::Value,
    until: Option<toml::Value>,
    /// `tenant` only: what it holds.
    memory: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectTable {
    released: Option<toml::Value>,
    spawned: Option<toml::Value>,
    completed: Option<toml::Value>,
    adopted: Option<toml::Value>,
    withdrawn: Option<toml::Value>,
    leaks: Option<toml::Value>,
    tick_errors: Option<toml::Value>,
    hermes_errors: Option<toml::Value>,
    running_max: Option<toml::Value>,
    used_max: Option<toml::Value>,
    latency_limit_min: Option<toml::Value>,
    latency_limit_max: Option<toml::Value>,
    latency_limit_last: Option<toml::Value>,
    #[serde(default)]
    held: BTreeMap<String, toml::Value>,
    #[serde(default)]
    journal: BTreeMap<String, toml::Value>,
}

/// The fault kinds, as written.
const FAULT_KINDS: &[&str] = &[
    "gpu_error",
    "gpu_stale",
    "engine_error",
    "engine_stale",
    "board_error",
    "dispatch_error",
    "assign_error",
    "preemption",
    "tenant",
    "dual_dispatcher",
];

/// Hold reasons a scenario may count (`HoldReason::name`).
const HOLD_REASONS: &[&str] = &[
    "vram_headroom",
    "kv_headroom",
    "no_slot",
    "pool_full",
    "max_running",
    "latency_limit",
    "guaranteed",
    "reserved",
    "stale",
    "waiting_on_parent",
    "unknown_profile",
    "dual_dispatcher",
    "never_fits",
];

/// Journal outcomes a scenario may count: a release's row as the journal leaves it.
const OUTCOMES: &[&str] = &[
    "released",
    "spawned",
    "failed",
    "withdrawn",
    "leaked",
    "gone",
    "reclaimed",
    "blocked",
    "done",
    "in_flight",
];

// ---------------------------------------------------------------------------------------------
// The scenario, parsed.
// ---------------------------------------------------------------------------------------------

struct Task {
    id: TaskId,
    assignee: String,
    ready_at: Millis,
    runs_for: Millis,
    memory: Bytes,
    running: bool,
    priority: i64,
}

struct Window {
    kind: String,
    from: Millis,
    until: Option<Millis>,
    memory: Bytes,
}

impl Window {
    fn holds(&self, t: Millis) -> bool {
        self.from <= t && self.until.is_none_or(|u| t < u)
    }
}

/// An inclusive range, and the key it came from.
struct Range {
    key: String,
    low: u64,
    high: u64,
}

struct Scenario {
    config: Config,
    policy: Policy,
    duration: Millis,
    interval: Millis,
    gpu_total: Bytes,
    gpu_used: Bytes,
    engine: Option<EngineModel>,
    tasks: Vec<Task>,
    faults: Vec<Window>,
    expect: Vec<(Range, Measure)>,
}

struct EngineModel {
    reading: EngineReading,
    ttft: Option<Millis>,
    ttft_per_task: Millis,
}

/// What a range is checked against.
#[derive(Clone)]
enum Measure {
    Count(&'static str),
    Held(String),
    Journal(String),
}

fn size(key: &str, v: &toml::Value) -> Result<Bytes, String> {
    units::parse_size(v).map_err(|e| format!("{key}: {e}"))
}

fn duration(key: &str, v: &toml::Value) -> Result<Millis, String> {
    units::parse_duration(v)
        .map(Millis::from_duration)
        .map_err(|e| format!("{key}: {e}"))
}

/// `[low, high]`: integers, or sizes (`"20GiB"`).
fn range(key: String, v: &toml::Value) -> Result<Range, String> {
    let bad = || {
        format!(
            "{key} = {}: expected a range [low, high] of integers or sizes, e.g. [2, 5] or [\"0GiB\", \"20GiB\"]",
            inline(v)
        )
    };
    let toml::Value::Array(a) = v else {
        return Err(bad());
    };
    let [low, high] = a.as_slice() else {
        return Err(bad());
    };
    let bound = |b: &toml::Value| match b {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| bad()),
        toml::Value::String(_) => size(&key, b).map(Bytes::get),
        _ => Err(bad()),
    };
    let (low, high) = (bound(low)?, bound(high)?);
    if low > high {
        return Err(format!(
            "{key} = {}: low is above high; write [{high}, {low}]",
            inline(v)
        ));
    }
    Ok(Range { key, low, high })
}

/// `v` as TOML, on one line.
fn inline(v: &toml::Value) -> String {
    use toml::Value as V;
    let items = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(", ");
    match v {
        // A JSON string is a TOML basic string: the same quotes and escapes.
        V::String(s) => serde_json::to_string(s).unwrap_or_default(),
        V::Integer(i) => i.to_string(),
        V::Float(f) => format!("{f:?}"),
        V::Boolean(b) => b.to_string(),
        V::Datetime(d) => format!("{d:?}"),
        V::Array(a) => format!("[{}]", items(&mut a.iter().map(inline))),
        V::Table(t) => format!(
            "{{{}}}",
            items(&mut t.iter().map(|(k, v)| format!("{} = {}", key(k), inline(v))))
        ),
    }
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

/// The `[governor]` table written back as a config file: its tables as sections, arrays of
/// tables (`profiles`) as `[[...]]`, everything inside them inline.
fn config_text(governor: &toml::Table) -> Result<String, String> {
    let mut out = String::new();
    for (k, v) in governor {
        match v {
            toml::Value::Table(t) => {
                out.push_str(&format!("[{}]\n", key(k)));
                for (k, v) in t {
                    out.push_str(&format!("{} = {}\n", key(k), inline(v)));
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for t in a.iter().filter_map(toml::Value::as_table) {
                    out.push_str(&format!("[[{}]]\n", key(k)));
                    for (k, v) in t {
                        out.push_str(&format!("{} = {}\n", key(k), inline(v)));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "governor.{k}: the config has no top-level keys, only tables such as [governor.gpu]"
                ));
            }
        }
    }
    Ok(out)
}

impl Scenario {
    fn read(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("unreadable: {e}"))?;
        Scenario::parse(&text, path)
    }

    fn read_str(text: &str) -> Result<Scenario, String> {
        Scenario::parse(text, Path::new("/scenario.toml"))
    }

    fn parse(text: &str, path: &Path) -> Result<Scenario, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;

        // The governor's config, validated as a config file is.
        let env = |_: &str| None;
        let governor = config_text(&file.governor)?;
        let config =
            config::load_str(&governor, path, &ConfigArgs::default(), &env).map_err(|e| {
                e.problems
                    .iter()
                    .map(|p| format!("governor.{}: {}", p.key, p.detail))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        if config.pools.len() != 1 {
            return Err(format!(
                "governor: {} pools; the runner plays one pool ([governor.gpu] and [governor.engine])",
                config.pools.len()
            ));
        }
        let policy = config.policy();
        let pool = &config.pools[0];

        let run_for = duration("scenario.duration", &file.scenario.duration)?;
        let interval = match &file.scenario.interval {
            Some(v) => duration("scenario.interval", v)?,
            None => Millis::from_duration(config.dispatch.interval),
        };
        if interval.get() == 0 {
            return Err("scenario.interval: 0; give a tick interval such as \"5s\"".into());
        }
        let gpu_total = match (&file.gpu.total, pool.gpu.memory_total) {
            (Some(v), _) => size("gpu.total", v)?,
            (None, Some(t)) => t,
            (None, None) => {
                return Err("gpu.total: not set; set it, or governor.gpu.memory_total".to_owned());
            }
        };
        let gpu_used = match &file.gpu.used {
            Some(v) => size("gpu.used", v)?,
            None => pool.gpu.baseline.unwrap_or(Bytes(0)),
        };

        let e = &file.engine;
        let engine = match pool.engine.endpoint() {
            Some(_) => Some(EngineModel {
                reading: EngineReading {
                    sample: kanban_governor::governor::EngineSample {
                        kv_capacity_tokens: e.kv_capacity_tokens,
                        slots: e.slots,
                        slot_context_tokens: e.slot_context_tokens,
                        ..Default::default()
                    },
                    preemptions_total: Some(0),
                    ..EngineReading::default()
                },
                ttft: e
                    .ttft
                    .as_ref()
                    .map(|v| duration("engine.ttft", v))
                    .transpose()?,
                ttft_per_task: e
                    .ttft_per_task
                    .as_ref()
                    .map(|v| duration("engine.ttft_per_task", v))
                    .transpose()?
                    .unwrap_or(Millis(0)),
            }),
            None if e.kv_capacity_tokens.is_some() || e.slots.is_some() || e.ttft.is_some() => {
                return Err("engine: the pool has no engine endpoint (governor.engine.url = \"none\"), so nothing reads it; remove [engine] or give governor.engine a url".into());
            }
            None => None,
        };

        let mut tasks = Vec::new();
        for (i, t) in file.tasks.iter().enumerate() {
            let key = |k: &str| format!("tasks[{i}].{k}");
            let Some(p) = config.profile(&t.profile) else {
                return Err(format!(
                    "{}: {:?} is no profile of governor.profiles; use one of {:?}",
                    key("profile"),
                    t.profile,
                    config.profiles.iter().map(|p| &p.name).collect::<Vec<_>>()
                ));
            };
            let ready_at = match &t.ready_at {
                Some(v) => duration(&key("ready_at"), v)?,
                None => Millis(0),
            };
            let every = match &t.every {
                Some(v) => duration(&key("every"), v)?,
                None => Millis(0),
            };
            let runs_for = duration(&key("runs_for"), &t.runs_for)?;
            let memory = match &t.memory {
                Some(v) => size(&key("memory"), v)?,
                None => Bytes(0),
            };
            let name = t.name.clone().unwrap_or_else(|| format!("t{i}"));
            for n in 0..t.count {
                tasks.push(Task {
                    id: TaskId::from(format!("{name}_{n:02}").as_str()),
                    assignee: t.assignee.clone().unwrap_or_else(|| p.lane.clone()),
                    ready_at: Millis(ready_at.get() + every.get() * u64::from(n)),
                    runs_for,
                    memory,
                    running: t.running,
                    priority: t.priority,
                });
            }
        }

        // Created in the order they turn ready (entries may interleave).
        tasks.sort_by_key(|k| k.ready_at);

        let mut faults = Vec::new();
        for (i, f) in file.faults.iter().enumerate() {
            let key = |k: &str| format!("faults[{i}].{k}");
            if !FAULT_KINDS.contains(&f.kind.as_str()) {
                return Err(format!(
                    "{}: {:?} is no fault kind; use one of {FAULT_KINDS:?}",
                    key("kind"),
                    f.kind
                ));
            }
            let memory = match (&f.memory, f.kind.as_str()) {
                (Some(v), "tenant") => size(&key("memory"), v)?,
                (None, "tenant") => {
                    return Err(format!(
                        "{}: a tenant needs the memory it holds",
                        key("memory")
                    ));
                }
                (Some(_), _) => {
                    return Err(format!("{}: only a tenant holds memory", key("memory")));
                }
                (None, _) => Bytes(0),
            };
            if engine.is_none() && f.kind.starts_with("engine_") {
                return Err(format!(
                    "{}: {:?} but the pool has no engine endpoint to fail",
                    key("kind"),
                    f.kind
                ));
            }
            faults.push(Window {
                kind: f.kind.clone(),
                from: duration(&key("from"), &f.from)?,
                until: f
                    .until
                    .as_ref()
                    .map(|v| duration(&key("until"), v))
                    .transpose()?,
                memory,
            });
        }

        let x = &file.expect;
        let mut expect = Vec::new();
        let counts: [(_, _, Option<[u64; 2]>); 13] = [
            ("released", &x.released, None),
            ("spawned", &x.spawned, None),
            ("completed", &x.completed, None),
            ("adopted", &x.adopted, None),
            ("withdrawn", &x.withdrawn, None),
            // Unless a file says otherwise, nothing leaks and nothing fails.
            ("leaks", &x.leaks, Some([0, 0])),
            ("tick_errors", &x.tick_errors, Some([0, 0])),
            ("hermes_errors", &x.hermes_errors, Some([0, 0])),
            ("running_max", &x.running_max, None),
            ("used_max", &x.used_max, None),
            ("latency_limit_min", &x.latency_limit_min, None),
            ("latency_limit_max", &x.latency_limit_max, None),
            ("latency_limit_last", &x.latency_limit_last, None),
        ];
        for (name, v, default) in counts {
            let key = format!("expect.{name}");
            let r = match (v, default) {
                (Some(v), _) => range(key, v)?,
                (None, Some([low, high])) => Range { key, low, high },
                (None, None) => continue,
            };
            expect.push((r, Measure::Count(name)));
        }
        for (reason, v) in &x.held {
            if !HOLD_REASONS.contains(&reason.as_str()) {
                return Err(format!(
                    "expect.held.{reason}: no such hold reason; use one of {HOLD_REASONS:?}"
                ));
            }
            expect.push((
                range(format!("expect.held.{reason}"), v)?,
                Measure::Held(reason.clone()),
            ));
        }
        for (outcome, v) in &x.journal {
            if !OUTCOMES.contains(&outcome.as_str()) {
                return Err(format!(
                    "expect.journal.{outcome}: no such outcome; use one of {OUTCOMES:?}"
                ));
            }
            expect.push((
                range(format!("expect.journal.{outcome}"), v)?,
                Measure::Journal(outcome.clone()),
            ));
        }
        if expect.iter().all(|(_, m)| matches!(m, Measure::Count(c) if ["leaks", "tick_errors", "hermes_errors"].contains(c)))
        {
            return Err("expect: no range given; a scenario must expect something".into());
        }

        Ok(Scenario {
            config,
            policy,
            duration: run_for,
            interval,
            gpu_total,
            gpu_used,
            engine,
            tasks,
            faults,
            expect,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Playing it.
// ---------------------------------------------------------------------------------------------

/// What the run measured.
#[derive(Default)]
struct Measured {
    counts: BTreeMap<&'static str, u64>,
    held: BTreeMap<String, u64>,
    journal: BTreeMap<String, u64>,
    /// Broken invariants, each with its tick.
    broken: Vec<String>,
}

impl Measured {
    fn add(&mut self, what: &'static str, n: usize) {
        *self.counts.entry(what).or_default() += n as u64;
    }

    fn max(&mut self, what: &'static str, n: u64) {
        let v = self.counts.entry(what).or_default();
        *v = (*v).max(n);
    }

    fn value(&self, m: &Measure) -> u64 {
        match m {
            Measure::Count(c) => self.counts.get(c).copied().unwrap_or(0),
            Measure::Held(r) => self.held.get(r).copied().unwrap_or(0),
            Measure::Journal(o) => self.journal.get(o).copied().unwrap_or(0),
        }
    }
}

/// Where the run starts, as Unix ms (any fixed time: nothing reads the real clock).
const START: Millis = Millis::secs(1_800_000_000);

fn play(s: &Scenario) -> Measured {
    let pool = &s.config.pools[0];
    let profiles: Vec<&str> = s.config.profiles.iter().map(|p| p.name.as_str()).collect();
    let board = InMemoryBoard::new(&profiles);
    let mut dispatcher = board.dispatcher();
    let mut store = InMemoryState::watching(&dispatcher);
    let clock = ManualClock::at(START);
    let mut gpu = ScriptedGpu::new(s.gpu_total, s.gpu_used);
    let mut engine = s
        .engine
        .as_ref()
        .map(|e| ScriptedEngine::new(e.reading.clone()));
    for f in &s.faults {
        let at = |t: Millis| Millis(START.get() + t.get());
        let window = |fault| (at(f.from), f.until.map(at), fault);
        let (from, until, fault) = match f.kind.as_str() {
            "gpu_error" => window(Fault::Fail("nvml: GPU is lost".into())),
            "gpu_stale" => window(Fault::Stale),
            "engine_error" => window(Fault::Fail("engine: connection refused".into())),
            "engine_stale" => window(Fault::Stale),
            _ => continue,
        };
        match (f.kind.starts_with("gpu_"), engine.as_mut()) {
            (true, _) => gpu.faults.add(from, until, fault),
            (false, Some(e)) => e.faults.add(from, until, fault),
            (false, None) => {}
        }
    }
    let limit_config = &s.config.latency;
    let mut limit = engine.as_ref().map(|_| {
        Aimd::new(AimdConfig {
            slo: Millis::from_duration(limit_config.ttft_slo),
            min: limit_config.min_limit,
            max: limit_config.max_limit,
            backoff: limit_config.backoff,
            dwell: Millis::from_duration(limit_config.dwell),
        })
    });
    let max_staleness = Millis::from_duration(pool.engine.max_staleness);

    let mut m = Measured::default();
    let mut created = 0;
    let mut started: BTreeMap<TaskId, Millis> = BTreeMap::new();
    let mut fed = latency::Feed::default();
    let mut in_use_after_tick = 0u32;
    let mut t = Millis(0);
    while t <= s.duration {
        let now = Millis(START.get() + t.get());
        let active = |kind: &str| s.faults.iter().any(|f| f.kind == kind && f.holds(t));

        // The workload: new tasks turn ready, running ones finish.
        while let Some(task) = s.tasks.get(created).filter(|k| k.ready_at <= t) {
            board.push(BoardTask {
                id: task.id.clone(),
                assignee: Some(task.assignee.clone()),
                status: if task.running {
                    TaskStatus::Running
                } else {
                    TaskStatus::Ready
                },
                priority: task.priority,
                created_at: now,
                started_at: task.running.then_some(now),
                worker_pid: None,
                claim_lock: None,
            });
            created += 1;
        }
        let running: Vec<&Task> = board.with(|b| {
            b.tasks
                .iter()
                .filter(|bt| bt.status == TaskStatus::Running)
                .filter_map(|bt| s.tasks.iter().find(|k| k.id == bt.id))
                .collect()
        });
        let mut used = s.gpu_used;
        let mut still_running = 0u64;
        for task in running {
            let since = *started.entry(task.id.clone()).or_insert(now);
            let ran = now.since(since);
            if ran >= task.runs_for {
                board.set_status(task.id.as_str(), TaskStatus::Done);
                m.add("completed", 1);
                continue;
            }
            still_running += 1;
            // A worker's context, and its memory, grow evenly over its run.
            let share = ran.get() as f64 / task.runs_for.get().max(1) as f64;
            used = used.saturating_add(Bytes((task.memory.get() as f64 * share) as u64));
        }
        for f in s.faults.iter().filter(|f| f.kind == "tenant" && f.holds(t)) {
            used = used.saturating_add(f.memory);
        }
        gpu.used = used;
        m.max("used_max", used.get());
        m.max("running_max", still_running);

        // The faults of this moment.
        board.with(|b| {
            b.read_error = active("board_error").then(|| "hermes board: database is locked".into());
        });
        dispatcher.fail_dispatch(
            active("dispatch_error").then_some("'hermes kanban dispatch' exited 1: boom"),
        );
        dispatcher
            .fail_assign(active("assign_error").then_some("'hermes kanban assign' timed out"));
        if let (Some(e), Some(model)) = (engine.as_mut(), s.engine.as_ref()) {
            // One preemption at the tick that reaches `from`, or one each tick of a window.
            let first = |f: &Window| f.from <= t && t.get() < f.from.get() + s.interval.get();
            let preempts = |f: &&Window| {
                f.kind == "preemption"
                    && if f.until.is_some() {
                        f.holds(t)
                    } else {
                        first(f)
                    }
            };
            if s.faults.iter().any(|f| preempts(&f)) {
                let p = e.reading.preemptions_total.get_or_insert(0);
                *p += 1;
            }
            e.reading.probe_ttft = model
                .ttft
                .map(|base| Millis(base.get() + model.ttft_per_task.get() * still_running));
        }

        // The latency limit hears the engine reading the last tick took, as the daemon's does.
        let latency_limit = limit.as_mut().map(|l| {
            let state_in_use = store.state.as_ref().map_or(0, |st| st.in_use());
            let in_flight = u32::try_from(state_in_use)
                .unwrap_or(u32::MAX)
                .max(in_use_after_tick);
            let cur = engine.as_ref().and_then(|e| e.last()).cloned();
            for sample in fed.samples(&[cur], false, None, in_flight) {
                l.on_sample(sample);
            }
            l.limit()
        });
        if let Some(l) = latency_limit {
            m.max("latency_limit_max", u64::from(l));
            let min = m.counts.entry("latency_limit_min").or_insert(u64::from(l));
            *min = (*min).min(u64::from(l));
            m.counts.insert("latency_limit_last", u64::from(l));
        }

        // The tick, as `kanban-governor tick` runs it.
        let calls_before = dispatcher.calls().len();
        let aheads_before = store.ahead.len();
        let mut board_port = board.clone();
        let mut ports = TickPorts {
            clock: &clock,
            pools: vec![PoolSource {
                gpu: &mut gpu,
                engine: engine.as_mut().map(|e| e as &mut dyn EngineTelemetry),
                baseline: pool.gpu.baseline,
            }],
            board: &mut board_port,
            dispatcher: &mut dispatcher,
            workers: Some(&board),
        };
        let opts = TickOptions {
            latency_limit,
            dual_dispatcher: active("dual_dispatcher")
                .then(|| "gateway pid 7 holds kanban/.dispatcher.lock".into()),
            ..TickOptions::default()
        };
        match run_tick_with_store(&s.policy, &mut ports, &mut store, &opts) {
            Err(_) => m.add("tick_errors", 1),
            Ok(r) => {
                m.add("released", r.released.len());
                m.add("spawned", r.spawned.len());
                m.add("adopted", r.adopted.len());
                m.add("withdrawn", r.withdrawn.len());
                m.add("leaks", r.leaks.len());
                m.add("hermes_errors", r.errors.len());
                for h in &r.decision.held {
                    *m.held.entry(h.reason.name().to_owned()).or_default() += 1;
                }
                let ahead = &store.ahead[aheads_before..];
                let calls = dispatcher.calls();
                check_tick(
                    t,
                    &r,
                    &gpu,
                    engine.as_ref(),
                    max_staleness,
                    ahead,
                    &calls,
                    calls_before,
                    &mut m,
                );
                let st = store.state.as_ref().map_or(0, |st| st.in_use());
                in_use_after_tick = u32::try_from(st + r.spawned.len()).unwrap_or(u32::MAX);
            }
        }
        t = Millis(t.get() + s.interval.get());
        clock.advance(s.interval);
    }
    m.journal = journal_outcomes(&store);
    m
}

/// The invariants every tick keeps, whatever the scenario.
#[allow(clippy::too_many_arguments)]
fn check_tick(
    t: Millis,
    r: &kanban_governor::app::tick::TickReport,
    gpu: &ScriptedGpu,
    engine: Option<&ScriptedEngine>,
    max_staleness: Millis,
    ahead: &[kanban_governor::fakes::AheadSave],
    calls: &[String],
    calls_before: usize,
    m: &mut Measured,
) {
    if r.released.is_empty() {
        return;
    }
    let at = format!("at {}s", t.get() / 1000);
    let now = r.at;
    // Blind: this tick's read failed, or the last good one is older than max_staleness. The
    // truth comes from the scripted sources, not from what the governor concluded.
    let aged = |seen: Option<Millis>| seen.is_none_or(|a| now.since(a) > max_staleness);
    let gpu_blind = gpu
        .faults
        .at(now)
        .is_some_and(|f| matches!(f, Fault::Fail(_)))
        || aged(gpu.last().map(|g| g.at));
    let engine_blind = engine.is_some_and(|e| {
        e.faults
            .at(now)
            .is_some_and(|f| matches!(f, Fault::Fail(_)))
            || aged(e.last().map(|x| x.sample.at))
    });
    if gpu_blind || engine_blind {
        m.broken.push(format!(
            "{at}: released {:?} while the pool was blind (GPU blind {gpu_blind}, engine blind {engine_blind})",
            r.released
        ));
    }
    let b = &r.decision.pools[0];
    let over = match (b.projected_after_bytes, b.ceiling_bytes) {
        (Some(p), Some(c)) if p > c => Some(format!("{p} projected of a {c} ceiling")),
        _ => b
            .ceiling_kv_tokens
            .filter(|c| b.charged_after_kv_tokens > *c)
            .map(|c| format!("{} KV tokens of {c}", b.charged_after_kv_tokens))
            .or_else(|| {
                b.slots
                    .filter(|n| b.slots_used_after > *n)
                    .map(|n| format!("{} slots of {n}", b.slots_used_after))
            }),
    };
    if let Some(over) = over {
        m.broken.push(format!(
            "{at}: released {:?} into a pool over its ceiling ({over})",
            r.released
        ));
    }
    // Saved ahead: each release is in a write-ahead of this tick, made before its `assign`
    // (a task already on its profile needs none).
    for rel in r
        .decision
        .release
        .iter()
        .filter(|x| r.released.contains(&x.id))
    {
        let Some(a) = ahead.iter().find(|a| a.releasing.contains(&rel.id)) else {
            m.broken
                .push(format!("{at}: released {} without saving it ahead", rel.id));
            continue;
        };
        let assign = format!("assign {} {}", rel.id, rel.profile);
        if let Some(i) = calls[calls_before..].iter().position(|c| *c == assign)
            && calls_before + i < a.hermes_calls.len()
        {
            m.broken
                .push(format!("{at}: `{assign}` ran before its write-ahead"));
        }
    }
}

/// The journal's releases at the end of the run: how many were released (rows with a
/// profile), and how many rows end with each outcome (`in_flight`: none yet).
fn journal_outcomes(store: &InMemoryState) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for row in &store.releases {
        if row.profile.is_some() {
            *out.entry("released".to_owned()).or_default() += 1;
        }
        let outcome = row.outcome.clone().unwrap_or_else(|| "in_flight".into());
        *out.entry(outcome).or_default() += 1;
    }
    out
}

/// Play the file at `path` and check its ranges; the error names the file, then every range
/// it broke (or the key it got wrong).
fn check(path: &Path) -> Result<(), String> {
    check_ranges(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn check_ranges(path: &Path) -> Result<(), String> {
    let s = Scenario::read(path)?;
    let m = play(&s);
    let mut broken = m.broken.clone();
    for (r, measure) in &s.expect {
        let v = m.value(measure);
        if v < r.low || v > r.high {
            broken.push(format!(
                "{} = [{}, {}], but it was {v}",
                r.key, r.low, r.high
            ));
        }
    }
    // Everything measured, so the author of a file sees where the run went (also printed for
    // a passing file under `--nocapture`).
    let measured = format!(
        "measured: {:?}; held {:?}; journal {:?}",
        m.counts, m.held, m.journal
    );
    println!("{}: {measured}", path.display());
    if broken.is_empty() {
        return Ok(());
    }
    broken.push(measured);
    Err(format!("\n  {}", broken.join("\n  ")))
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_file_keeps_its_ranges() {
    let files = scenario_files();
    assert!(!files.is_empty(), "no scenario file in tests/scenarios");
    let failures: Vec<String> = files.iter().filter_map(|f| check(f).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A scenario small enough to break one key at a time: two coders on the small pool.
const SMALL: &str = r#"
[scenario]
duration = "1m"

[governor.hermes]
home = "/nonexistent/hermes"

[governor.gpu]
telemetry = "static"
memory_total = "24GiB"
baseline = "4GiB"
headroom = 0.9

[governor.engine]
kind = "ollama"
url = "none"

[[governor.profiles]]
name = "coder"
kv_bytes_per_token = 131072
max_context_tokens = 32768

[[tasks]]
profile = "coder"
count = 2
runs_for = "10s"

[expect]
released = [2, 2]
"#;

/// `check` on `text` written to a file named `name`.
fn check_text(name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    check(&path)
}

#[test]
fn a_file_that_breaks_a_range_names_itself_the_range_and_what_was_measured() {
    check_text("ok.toml", SMALL).unwrap();
    let e = check_text(
        "two.toml",
        &SMALL.replace("released = [2, 2]", "released = [3, 5]"),
    )
    .unwrap_err();
    assert!(e.contains("two.toml: "), "{e}");
    assert!(e.contains("expect.released = [3, 5], but it was 2"), "{e}");
    assert!(e.contains("measured: "), "{e}");
}

#[test]
fn a_malformed_file_names_itself_and_the_key() {
    for (from, to, says) in [
        (
            "[expect]",
            "[expect]\nreleasd = [1, 2]",
            "unknown field `releasd`",
        ),
        ("headroom = 0.9", "headroom = 1.5", "governor.gpu.headroom"),
        (
            "runs_for = \"10s\"",
            "runs_for = \"soon\"",
            "tasks[0].runs_for",
        ),
        (
            "profile = \"coder\"",
            "profile = \"codr\"",
            "tasks[0].profile",
        ),
        (
            "released = [2, 2]",
            "released = [5, 2]",
            "expect.released = [5, 2]: low is above high",
        ),
        (
            "released = [2, 2]",
            "released = 2",
            "expect.released = 2: expected a range",
        ),
        (
            "[expect]",
            "[[faults]]\nkind = \"meteor\"\nfrom = \"0s\"\n[expect]",
            "faults[0].kind: \"meteor\" is no fault kind",
        ),
        (
            "[expect]",
            "[[faults]]\nkind = \"engine_error\"\nfrom = \"0s\"\n[expect]",
            "faults[0].kind: \"engine_error\" but the pool has no engine endpoint",
        ),
        (
            "released = [2, 2]",
            "[expect.held]\nstal = [1, 2]",
            "expect.held.stal: no such hold reason",
        ),
        ("released = [2, 2]", "", "expect: no range given"),
    ] {
        assert!(SMALL.contains(from), "{from}");
        let e = check_text("bad.toml", &SMALL.replacen(from, to, 1)).unwrap_err();
        assert!(e.contains("bad.toml: "), "{e}");
        assert!(e.contains(says), "{says:?} not in: {e}");
    }
}

#[test]
fn the_per_tick_invariants_catch_a_release_made_blind_unsaved_or_over_the_ceiling() {
    // A real tick releases one coder on a healthy GPU, saved ahead...
    let s = Scenario::read_str(SMALL).unwrap();
    let board = InMemoryBoard::new(&["coder"]);
    board.push(BoardTask {
        id: TaskId::from("t_1"),
        assignee: Some("coder@gpu".into()),
        status: TaskStatus::Ready,
        priority: 0,
        created_at: START,
        started_at: None,
        worker_pid: None,
        claim_lock: None,
    });
    let mut dispatcher = board.dispatcher();
    let mut store = InMemoryState::watching(&dispatcher);
    let clock = ManualClock::at(START);
    let mut gpu = ScriptedGpu::new(s.gpu_total, s.gpu_used);
    let mut board_port = board.clone();
    let mut ports = TickPorts {
        clock: &clock,
        pools: vec![PoolSource {
            gpu: &mut gpu,
            engine: None,
            baseline: None,
        }],
        board: &mut board_port,
        dispatcher: &mut dispatcher,
        workers: None,
    };
    let mut r =
        run_tick_with_store(&s.policy, &mut ports, &mut store, &TickOptions::default()).unwrap();
    assert_eq!(r.released, [TaskId::from("t_1")]);
    let calls = dispatcher.calls();
    let broken = |r: &kanban_governor::app::tick::TickReport,
                  gpu: &ScriptedGpu,
                  ahead: &[kanban_governor::fakes::AheadSave]| {
        let mut m = Measured::default();
        let staleness = Millis::secs(5);
        check_tick(Millis(0), r, gpu, None, staleness, ahead, &calls, 0, &mut m);
        m.broken
    };
    assert_eq!(broken(&r, &gpu, &store.ahead), Vec::<String>::new());
    // ...but had the GPU been failing, or the write-ahead missing, or the pool over its
    // ceiling, the runner says so.
    let mut failing = gpu.clone();
    failing
        .faults
        .set(Some(Fault::Fail("nvml: GPU is lost".into())));
    let b = broken(&r, &failing, &store.ahead);
    assert!(b[0].contains("while the pool was blind"), "{b:?}");
    let b = broken(&r, &gpu, &[]);
    assert!(
        b[0].contains("released t_1 without saving it ahead"),
        "{b:?}"
    );
    let mut late = store.ahead.clone();
    late[0].hermes_calls = calls.clone();
    let b = broken(&r, &gpu, &late);
    assert!(
        b[0].contains("`assign t_1 coder` ran before its write-ahead"),
        "{b:?}"
    );
    r.decision.pools[0].projected_after_bytes = Some(Bytes::gib(30));
    let b = broken(&r, &gpu, &store.ahead);
    assert!(b[0].contains("into a pool over its ceiling"), "{b:?}");
}
