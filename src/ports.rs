//! The small traits the app layer is generic over. They speak domain types only (no nvml,
//! rusqlite or hyper types), so the real adapters in `adapters/` and the fakes in
//! [`crate::fakes`] are interchangeable.
//!
//! Calls are blocking; the daemon runs them on `spawn_blocking`. A failed call returns a
//! [`PortError`]; the app layer turns a failed observation into "unknown" (hold), never into
//! a crash.

use crate::governor::{EngineSample, GpuSample, Millis};

/// An adapter's error, boxed so each adapter keeps its own `thiserror` enum (and `main` can
/// still downcast it to pick an exit code).
pub type PortError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The clock. Only the app layer reads it; the decision core gets `now` as a value.
pub trait Clock {
    /// Unix epoch milliseconds now.
    fn now(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// GPU memory of one pool (NVML, host memory, static, replay).
pub trait GpuTelemetry {
    /// One memory sample, summed over the pool's GPUs, stamped with `now`.
    ///
    /// # Errors
    ///
    /// The source could not be read (library missing, device lost, file unreadable).
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError>;
}

/// What one read of an engine tells: the capacity sample the decision uses, plus the load
/// and latency signals the latency limit and footprint learning use.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineReading {
    /// Capacity and KV use (what `decide` needs).
    pub sample: EngineSample,
    /// Requests running in the engine now.
    pub requests_running: Option<u32>,
    /// Requests waiting (queued, deferred) in the engine now.
    pub requests_waiting: Option<u32>,
    /// Cumulative preemptions (vLLM `num_preemptions_total`), if exposed.
    pub preemptions_total: Option<u64>,
    /// Cumulative TTFT histogram, if exposed: `(upper bound seconds, cumulative count)`,
    /// ascending, the last bound `+Inf`.
    pub ttft_buckets: Vec<(f64, u64)>,
    /// Cumulative inter-token latency histogram, if exposed (vLLM
    /// `inter_token_latency_seconds`, older `time_per_output_token_seconds`; SGLang), same shape
    /// as `ttft_buckets`.
    pub itl_buckets: Vec<(f64, u64)>,
    /// Fraction (0–1) of the KV pool in use, as the engine reports it (vLLM
    /// `kv_cache_usage_perc`, SGLang `token_usage`), if exposed. `sample.kv_used_tokens` is
    /// this times the capacity when the capacity is known.
    pub kv_usage_fraction: Option<f64>,
    /// Time to first token measured by a probe request, if one was sent and answered.
    pub probe_ttft: Option<Millis>,
    /// The HTTP status of a probe the engine refused (429, 5xx): an overload signal. `None`
    /// when no probe was sent or it succeeded.
    pub probe_status: Option<u16>,
    /// The probe got no first token within this long (the engine's HTTP timeout): an
    /// overload signal, as a refusal is. `None` when no probe was sent or it was answered.
    pub probe_timed_out: Option<Millis>,
    /// The engine runs part of a model on the CPU (Ollama `size_vram < size`).
    pub offloaded: bool,
    /// The largest context (tokens) any request reached, if exposed (llama.cpp
    /// `n_tokens_max`, per-slot `n_ctx` use).
    pub peak_context_tokens: Option<u64>,
    /// The largest context (tokens) a request in progress holds now (llama.cpp `/slots`:
    /// prompt + generated of the busiest slot; 0 when all are idle), if exposed. Unlike the
    /// peak, it falls when requests end, so it can be attributed to what runs now.
    pub busy_context_max: Option<u64>,
}

/// The inference engine of one pool (vLLM/SGLang/llama.cpp/Ollama metrics, replay).
pub trait EngineTelemetry {
    /// One engine reading, stamped with `now`.
    ///
    /// # Errors
    ///
    /// The engine could not be reached or its answer could not be parsed.
    fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError>;
}

// ---------------------------------------------------------------------------------------------
// The Hermes board, its dispatcher, and the governor's own state.
// ---------------------------------------------------------------------------------------------

use crate::governor::TaskId;

/// A Hermes task status (`VALID_STATUSES` in Hermes 0.19.0); unknown strings are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// A rough idea parked for a specifier.
    Triage,
    /// Waiting on parents.
    Todo,
    /// Waiting on time.
    Scheduled,
    /// Dispatchable.
    Ready,
    /// Claimed, a worker should be alive.
    Running,
    /// A human is needed, or the circuit breaker tripped.
    Blocked,
    /// A review worker is due.
    Review,
    /// Completed.
    Done,
    /// Hidden; counts as done.
    Archived,
    /// A status this version does not know.
    Other(String),
}

impl TaskStatus {
    /// Parse Hermes's status string.
    pub fn parse(s: &str) -> TaskStatus {
        match s {
            "triage" => TaskStatus::Triage,
            "todo" => TaskStatus::Todo,
            "scheduled" => TaskStatus::Scheduled,
            "ready" => TaskStatus::Ready,
            "running" => TaskStatus::Running,
            "blocked" => TaskStatus::Blocked,
            "review" => TaskStatus::Review,
            "done" => TaskStatus::Done,
            "archived" => TaskStatus::Archived,
            other => TaskStatus::Other(other.to_owned()),
        }
    }
}

/// One task as read from the board.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoardTask {
    /// Task id.
    pub id: TaskId,
    /// Its assignee (a profile, a lane, anything), or `None` when unassigned.
    pub assignee: Option<String>,
    /// Its status.
    pub status: TaskStatus,
    /// Hermes priority (higher first).
    pub priority: i64,
    /// Hermes `created_at`, as Unix ms.
    pub created_at: Millis,
    /// Hermes `started_at` (first-ever start), as Unix ms.
    pub started_at: Option<Millis>,
    /// The worker's pid while running, as Hermes recorded it.
    pub worker_pid: Option<u32>,
    /// The claim lock (`<hostname>:<pid>`) while running.
    pub claim_lock: Option<String>,
}

/// What one observation of the board returns: every task that runs or waits (`todo`,
/// `ready`, `running`, `review`), plus the tasks asked for by id in any status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoardSnapshot {
    /// The tasks, in board order (priority desc, created_at asc).
    pub tasks: Vec<BoardTask>,
    /// SQLite `PRAGMA data_version` of the connection that read it: changes when another
    /// connection committed (cheap change detection for the daemon).
    pub data_version: u64,
}

impl BoardSnapshot {
    /// The task with id `id`, if it was read.
    pub fn task(&self, id: &TaskId) -> Option<&BoardTask> {
        self.tasks.iter().find(|t| &t.id == id)
    }
}

/// The Hermes kanban board, read only.
pub trait TaskBoard {
    /// Read the board in one short read transaction: every `todo`/`ready`/`running`/`review`
    /// task, plus `tracked` ids in whatever status they are (done, blocked, gone).
    ///
    /// # Errors
    ///
    /// The board is missing, corrupt, locked past the busy timeout, or not a Hermes board.
    fn read_board(&mut self, tracked: &[TaskId]) -> Result<BoardSnapshot, PortError>;

    /// The board's `PRAGMA data_version` only (no task read).
    ///
    /// # Errors
    ///
    /// As [`TaskBoard::read_board`].
    fn read_data_version(&mut self) -> Result<u64, PortError>;
}

pub use crate::config::MaxSemantics;

/// A spawned worker as the dispatcher reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spawned {
    /// Task id.
    pub id: TaskId,
    /// The profile it runs as.
    pub assignee: String,
}

/// What one dispatcher tick did (`hermes kanban dispatch --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DispatchOutcome {
    /// Workers spawned.
    pub spawned: Vec<Spawned>,
    /// Tasks whose worker Hermes found dead (put back to `ready`).
    pub crashed: Vec<TaskId>,
    /// Stale claims reclaimed.
    pub reclaimed: u64,
    /// Tasks promoted `todo` → `ready`.
    pub promoted: u64,
    /// Ready tasks skipped because their assignee is no Hermes profile (lanes).
    pub skipped_nonspawnable: Vec<TaskId>,
    /// Ready tasks skipped by Hermes's per-profile cap.
    pub skipped_per_profile_capped: Vec<TaskId>,
}

/// Writes to the board, through whatever Hermes offers (the CLI), one call at a time.
pub trait Dispatcher {
    /// What `--max` means to this Hermes (may run `hermes --version` once).
    ///
    /// # Errors
    ///
    /// The version is unknown and no semantics were configured, or Hermes cannot be run.
    fn max_semantics(&mut self) -> Result<MaxSemantics, PortError>;

    /// Assign task `id` to `assignee` (a lane to park it, a profile to release it).
    ///
    /// # Errors
    ///
    /// Hermes refused (unknown id, task running), failed or timed out.
    fn assign(&mut self, id: &TaskId, assignee: &str) -> Result<(), PortError>;

    /// Assign each task to its assignee, one after another (writes to the board are serial:
    /// DESIGN §5); one result per task, in order.
    fn assign_all(&mut self, tasks: &[(TaskId, String)]) -> Vec<Result<(), PortError>> {
        tasks.iter().map(|(id, a)| self.assign(id, a)).collect()
    }

    /// Put a running task whose worker is dead back to `ready`.
    ///
    /// # Errors
    ///
    /// Hermes refused (not running), failed or timed out.
    fn reclaim(&mut self, id: &TaskId, reason: &str) -> Result<(), PortError>;

    /// Block a task for a human (`hermes kanban block <id> <reason>`).
    ///
    /// # Errors
    ///
    /// Hermes refused (not running or ready), failed or timed out.
    fn block(&mut self, id: &TaskId, reason: &str) -> Result<(), PortError>;

    /// Run one dispatcher tick with `--max max`.
    ///
    /// # Errors
    ///
    /// Hermes failed, timed out or printed something that is not its dispatch JSON.
    fn dispatch(&mut self, max: u32) -> Result<DispatchOutcome, PortError>;
}

/// The governor's own state between ticks (cron mode) or snapshots (daemon).
pub trait StateStore {
    /// Load the state; a store that has none yet returns the default state.
    ///
    /// # Errors
    ///
    /// The store exists but cannot be read or parsed.
    fn load(&mut self) -> Result<crate::record::state::GovernorState, PortError>;

    /// Save the state atomically (a crash leaves the old or the new state, never half).
    ///
    /// # Errors
    ///
    /// The store cannot be written.
    fn save(&mut self, state: &crate::record::state::GovernorState) -> Result<(), PortError>;

    /// Append what a tick did (releases and outcomes, decisions, footprint samples) to the
    /// store's history, if it keeps one (the JSON file does not).
    ///
    /// # Errors
    ///
    /// The store cannot be written.
    fn journal(&mut self, report: &crate::record::report::TickReport) -> Result<(), PortError> {
        let _ = report;
        Ok(())
    }

    /// Make this tick's releases durable before Hermes is asked to act on them
    /// (write-ahead): `state` already holds `releasing` in flight. A store that keeps a
    /// journal also records there, at once, the outcomes `report` settled and one row per
    /// release, and its [`StateStore::journal`] of the same tick writes neither again. A
    /// process killed in the middle of `assign` or `dispatch` then leaves the releases in
    /// flight and journaled, for the next tick to settle (`spawned`, `gone`).
    ///
    /// # Errors
    ///
    /// The store cannot be written: the caller releases nothing (fail closed).
    fn save_before_releasing(
        &mut self,
        state: &crate::record::state::GovernorState,
        report: &crate::record::report::TickReport,
        releasing: &[TaskId],
    ) -> Result<(), PortError> {
        let _ = (report, releasing);
        self.save(state)
    }
}

pub use crate::record::WorkerProcess;

/// Tells whether a task's worker process is gone (crashed, killed) or still there.
pub trait WorkerProbe {
    /// `true` only when sure: the task's claim is local to this host, its worker pid is
    /// recorded, and that process no longer exists (or is a zombie). Anything uncertain
    /// (another host's claim, no pid yet) is `false`: the task stays charged.
    fn is_dead(&self, task: &BoardTask) -> bool;

    /// The running task's worker, when its claim is local to this host and the process is
    /// alive now. Hermes forgets the pid when the task completes, while the worker still
    /// sends one last model call (HERMES.md §6.2: it exits about 1 s after `done`); the
    /// governor remembers the process to keep charging it until it has exited.
    fn worker(&self, task: &BoardTask) -> Option<WorkerProcess> {
        let _ = task;
        None
    }

    /// Whether that very process (same pid, same start time) is still alive.
    fn is_alive(&self, worker: &WorkerProcess) -> bool {
        let _ = worker;
        false
    }
}
