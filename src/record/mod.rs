//! The records the governor keeps and reports, below [`crate::ports`] so the ports and every
//! adapter can name them without importing the app: its state between ticks ([`state`]), one
//! tick's report ([`report`]), and the small values they hold (a finished task's peak, a
//! worker process).
//!
//! Plain serde data, no I/O.

pub mod report;
pub mod state;

use crate::governor::{Millis, ProfileId, TaskId};
use serde::{Deserialize, Serialize};

/// One running task's learning so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPeak {
    /// Its profile.
    pub profile: ProfileId,
    /// The largest attributed per-request context seen during its run, tokens.
    pub tokens: u64,
    /// It ran beside another profile's task, or through a tick without an engine reading.
    pub tainted: bool,
    /// The pass-through's measure of it, once a request of it went through
    /// (`[proxy] listen`); when present it is what the task teaches, not `tokens`.
    #[serde(default)]
    pub proxy: Option<MeasuredPeak>,
    /// When the governor first saw it running (how fast its context grew is its peak over the
    /// minutes since); `None` in state saved before this was kept.
    #[serde(default)]
    pub since: Option<Millis>,
}

/// A task's peak as the pass-through measured it: the largest sum of the final sizes
/// (prompt + generated) of its requests in flight together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredPeak {
    /// Tokens.
    pub tokens: u64,
    /// Every request in that sum had its size from the engine's `usage` (else some were
    /// estimated from bytes).
    pub exact: bool,
}

/// A finished task's peak, added to its profile's statistics this tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeakSample {
    /// The task.
    pub task: TaskId,
    /// Its profile.
    pub profile: ProfileId,
    /// Its peak per-request context, tokens.
    pub tokens: u64,
}

/// One worker process of this host: its pid and when it started (kernel clock ticks since
/// boot, `/proc/<pid>/stat` field 22), so a pid the kernel reused is not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerProcess {
    /// Its pid.
    pub pid: u32,
    /// Its start time.
    pub start: u64,
}
