//! The governor's state between ticks: what it released and has not yet seen running, when it
//! first saw each waiting task, the baseline it observed, and its counters.
//!
//! Plain serde data, no I/O: cron mode loads it through a [`crate::ports::StateStore`], runs
//! one tick and saves it; the daemon keeps it in memory and snapshots it through the same port.

use crate::governor::learned::PeakStats;
use crate::governor::limit::Aimd;
use crate::governor::{Bytes, Millis, ProfileId, TaskId};
use crate::record::{TaskPeak, WorkerProcess};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The current state format; a file with another version is refused, not guessed at.
pub const STATE_VERSION: u32 = 1;

/// A task the governor released (assigned to its profile) and has not yet seen running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The profile it was released to.
    pub profile: ProfileId,
    /// When it was released.
    pub released_at: Millis,
}

/// The worker process of a governed task, remembered while the task runs so its memory stays
/// charged after Hermes marks the task finished and until its last call through the
/// pass-through has ended, or else until the process has exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// The profile it runs as.
    pub profile: ProfileId,
    /// The process.
    pub process: WorkerProcess,
    /// When the task was first seen no longer running while the process lived on.
    pub finishing_since: Option<Millis>,
    /// With the pass-through: how many of the task's requests had ended then. One more
    /// ending, with none in flight, is its last call (the one after `done`) over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_finish: Option<u64>,
}

/// What fed the daemon's latency limit: a limit is resumed only by a daemon with the same
/// signal (each starts differently, and their evidence differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSignal {
    /// The engine's TTFT histogram, else a probe request (`latency.signal = "engine"` or
    /// `"probe"`): starts at `min_limit` in slow start.
    Engine,
    /// The agents' own calls through the pass-through (`latency.signal = "proxy"`): starts
    /// open.
    Proxy,
}

/// Monotonic counters (exported as metrics by the daemon).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Ticks that acted (not dry runs).
    pub ticks: u64,
    /// Tasks released.
    pub released: u64,
    /// Tasks adopted from a profile into its lane.
    pub adopted: u64,
    /// Workers spawned that the governor had not released (governance leaks).
    pub leaks: u64,
    /// Running tasks with a dead worker the governor put back to `ready`.
    pub reclaimed: u64,
    /// Tasks blocked because their workers kept dying.
    #[serde(default)]
    pub blocked: u64,
    /// Hermes CLI calls that failed.
    pub hermes_errors: u64,
}

/// Everything the governor remembers between ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GovernorState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Released and not yet seen running (charged as running until then, never released
    /// twice).
    pub in_flight: BTreeMap<TaskId, InFlight>,
    /// When each waiting task was first seen waiting (for `max_wait`).
    pub first_seen_waiting: BTreeMap<TaskId, Millis>,
    /// Per pool (by name), GPU memory used while no governed task ran: the baseline.
    pub observed_baseline: BTreeMap<String, Bytes>,
    /// Tasks seen running at the last tick (to tell a crash respawn from a leak).
    pub last_running: Vec<TaskId>,
    /// Counters.
    pub counters: Counters,
    /// When the last acting tick ran.
    pub last_tick: Option<Millis>,
    /// When `hermes kanban dispatch` last ran.
    #[serde(default)]
    pub last_dispatch: Option<Millis>,
    /// Per open task, how many of its workers died (reset when it leaves the board's open
    /// set). Adopting a task resets Hermes's own failure counter, so the governor keeps its
    /// own, or a task whose worker always dies would be retried forever.
    #[serde(default)]
    pub worker_deaths: BTreeMap<TaskId, u32>,
    /// The daemon's AIMD latency limit (`run` only; `tick` applies memory alone).
    #[serde(default)]
    pub latency_limit: Option<Aimd>,
    /// What fed `latency_limit` (`None` in a state saved before this was recorded: such a
    /// limit is not resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_limit_signal: Option<LimitSignal>,
    /// Per profile, the peaks its finished tasks reached (footprint learning).
    #[serde(default)]
    pub footprints: BTreeMap<ProfileId, PeakStats>,
    /// Per profile, how fast its finished tasks' context grew through the pass-through,
    /// tokens per minute of run, the whole task's (the running-task charge in a KV pool).
    #[serde(default)]
    pub growth: BTreeMap<ProfileId, PeakStats>,
    /// Per running governed task, its peak so far.
    #[serde(default)]
    pub task_peaks: BTreeMap<TaskId, TaskPeak>,
    /// Governed tasks' local worker processes (see [`Worker`]).
    #[serde(default)]
    pub workers: BTreeMap<TaskId, Worker>,
}

impl Default for GovernorState {
    fn default() -> Self {
        GovernorState {
            version: STATE_VERSION,
            in_flight: BTreeMap::new(),
            first_seen_waiting: BTreeMap::new(),
            observed_baseline: BTreeMap::new(),
            last_running: Vec::new(),
            counters: Counters::default(),
            last_tick: None,
            last_dispatch: None,
            worker_deaths: BTreeMap::new(),
            latency_limit: None,
            latency_limit_signal: None,
            footprints: BTreeMap::new(),
            growth: BTreeMap::new(),
            task_peaks: BTreeMap::new(),
            workers: BTreeMap::new(),
        }
    }
}

impl GovernorState {
    /// Governed tasks running at the last tick or released and not yet seen running, each
    /// counted once (`last_running` already holds what was in flight when the board was read).
    pub fn in_use(&self) -> usize {
        let extra = self
            .in_flight
            .keys()
            .filter(|id| !self.last_running.contains(id))
            .count();
        self.last_running.len() + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_both_in_flight_and_last_seen_running_is_in_use_once() {
        let mut s = GovernorState::default();
        let flight = InFlight {
            profile: ProfileId::from("coder"),
            released_at: Millis(5),
        };
        s.in_flight.insert(TaskId::from("t_1"), flight.clone());
        s.in_flight.insert(TaskId::from("t_2"), flight);
        s.last_running = vec![TaskId::from("t_1"), TaskId::from("t_3")];
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let mut s = GovernorState::default();
        s.in_flight.insert(
            TaskId::from("t_1"),
            InFlight {
                profile: ProfileId::from("coder"),
                released_at: Millis(5),
            },
        );
        s.first_seen_waiting.insert(TaskId::from("t_2"), Millis(7));
        s.observed_baseline.insert("default".into(), Bytes::gib(3));
        s.counters.leaks = 2;
        let text = serde_json::to_string(&s).unwrap();
        let back: GovernorState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
