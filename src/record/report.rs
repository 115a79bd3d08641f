//! What one tick observed, decided and did: the record `tick` prints, `status` shows and the
//! state store journals.

use crate::governor::{Decision, Millis, Observation, Release, TaskId};
use crate::record::PeakSample;
use serde::{Deserialize, Serialize};

/// What one observation found, before deciding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observed {
    /// The decision's input.
    pub observation: Observation,
    /// Tasks Hermes counts as running on the board (all assignees), for `--max`.
    pub board_running: u32,
    /// Running tasks whose local worker is dead (to reclaim and retry).
    pub dead: Vec<TaskId>,
    /// Running tasks whose worker died `WORKER_DEATH_LIMIT` times (to block; see `app::tick`).
    pub dead_for_good: Vec<TaskId>,
    /// Waiting tasks assigned straight to a governed profile (to adopt into its lane).
    pub adopt: Vec<TaskId>,
    /// Released tasks not yet seen running.
    pub in_flight: Vec<TaskId>,
    /// Tasks no longer running whose worker process has not exited yet (still charged).
    #[serde(default)]
    pub finishing: Vec<TaskId>,
    /// Telemetry that failed (the pool then holds as stale).
    pub telemetry_errors: Vec<String>,
    /// The board's `PRAGMA data_version`.
    pub data_version: u64,
    /// The engines' largest request in progress, tokens (`None`: not exposed or not read).
    #[serde(default)]
    pub busy_context: Option<u64>,
    /// Tasks that finished cleanly this tick and taught their profile a peak.
    #[serde(default)]
    pub peaks: Vec<PeakSample>,
    /// Tasks done whose peak the proxy is still measuring (their worker's last call may come
    /// or is in flight); they teach once it ended.
    #[serde(default)]
    pub peaks_pending: Vec<TaskId>,
    /// Releases that left the in-flight set this tick without a dispatch seeing them start,
    /// with their outcome for the journal: `spawned` (found running: a dispatch whose output
    /// could not be read, or another dispatcher), or `gone` (moved off the profile, done,
    /// archived or deleted before it started).
    #[serde(default)]
    pub settled: Vec<(TaskId, String)>,
}

/// What one tick saw, decided and did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickReport {
    /// When.
    pub at: Millis,
    /// Nothing was written.
    pub dry_run: bool,
    /// What was observed.
    pub observed: Observed,
    /// What was decided.
    pub decision: Decision,
    /// Running tasks with a dead worker put back to `ready`.
    pub reclaimed: Vec<TaskId>,
    /// Running tasks blocked because their workers kept dying.
    pub blocked: Vec<TaskId>,
    /// Tasks moved from their profile into its lane.
    pub adopted: Vec<TaskId>,
    /// Tasks released (assigned to their profile).
    pub released: Vec<TaskId>,
    /// The `--max` passed to `hermes kanban dispatch`, if it ran.
    pub dispatch_max: Option<u32>,
    /// Workers spawned by that dispatch.
    pub spawned: Vec<TaskId>,
    /// Spawned but never released by the governor.
    pub leaks: Vec<TaskId>,
    /// Released and not yet seen spawned (still charged).
    pub in_flight: Vec<TaskId>,
    /// Releases taken back to their lane before dispatch: their pool was over its ceiling or
    /// could not be seen when Hermes was about to start them.
    #[serde(default)]
    pub withdrawn: Vec<TaskId>,
    /// Why the dispatch that would have started released tasks did not run, if so.
    #[serde(default)]
    pub dispatch_held: Option<String>,
    /// Hermes calls that failed (the tick went on with the rest).
    pub errors: Vec<String>,
}

impl TickReport {
    /// The one-line summary cron mode prints.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would release"
        } else {
            "released"
        };
        let mut s = format!(
            "{verb} {}, held {}, running {}, in flight {}",
            self.decision.release.len(),
            self.decision.held.len(),
            self.observed.board_running,
            self.in_flight.len(),
        );
        if !self.observed.finishing.is_empty() {
            s.push_str(&format!(", finishing {}", self.observed.finishing.len()));
        }
        for b in &self.decision.pools {
            match (b.projected_after_bytes, b.ceiling_bytes) {
                (Some(p), Some(c)) => s.push_str(&format!("; pool {}: {p} of {c}", b.name)),
                _ => s.push_str(&format!("; pool {}: unknown", b.name)),
            }
        }
        if !self.leaks.is_empty() {
            s.push_str(&format!("; {} LEAKED", self.leaks.len()));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; {} error(s)", self.errors.len()));
        }
        s
    }
}

/// One write a journal of releases makes for a tick (the SQLite store's `releases` table, the
/// in-memory fake's rows): the one statement of what is journaled, so the stores cannot
/// drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseRecord<'a> {
    /// A release: a new row for its task (and its `release` decision).
    Released(&'a Release),
    /// A spawn the governor did not release: a new row with no profile.
    NotReleased(&'a TaskId),
    /// The task's latest row gets this outcome (`spawned`, `gone`, `failed`, `leaked`,
    /// `reclaimed`, `blocked`, `withdrawn`, `done`).
    Outcome(&'a TaskId, &'a str),
}

impl TickReport {
    /// What a journal writes ahead of this tick's releases, before the first Hermes call
    /// ([`crate::ports::StateStore::save_before_releasing`]): the outcomes settled since the
    /// last tick, then one row per release in `releasing`.
    pub fn journal_ahead<'a>(&'a self, releasing: &'a [TaskId]) -> Vec<ReleaseRecord<'a>> {
        let settled = self.observed.settled.iter();
        settled
            .map(|(id, what)| ReleaseRecord::Outcome(id, what))
            .chain(
                self.decision
                    .release
                    .iter()
                    .filter(|r| releasing.contains(&r.id))
                    .map(ReleaseRecord::Released),
            )
            .collect()
    }

    /// What a journal writes at the end of this tick, in order. `ahead`: the releases
    /// [`TickReport::journal_ahead`] already wrote for this tick, if it ran; their rows and
    /// the settled outcomes are not written again, and one the tick did not make (its
    /// `assign` failed) is `failed`.
    pub fn journal_releases<'a>(&'a self, ahead: Option<&'a [TaskId]>) -> Vec<ReleaseRecord<'a>> {
        let mut out = Vec::new();
        // Releases that settled since the last tick first: a task released again this tick
        // gets a new row, and the outcome belongs to the old one.
        match ahead {
            Some(releasing) => out.extend(
                releasing
                    .iter()
                    .filter(|id| !self.released.contains(id))
                    .map(|id| ReleaseRecord::Outcome(id, "failed")),
            ),
            None => out.extend(
                self.observed
                    .settled
                    .iter()
                    .map(|(id, what)| ReleaseRecord::Outcome(id, what)),
            ),
        }
        if ahead.is_none() {
            out.extend(
                self.decision
                    .release
                    .iter()
                    .filter(|r| self.released.contains(&r.id))
                    .map(ReleaseRecord::Released),
            );
        }
        for id in &self.leaks {
            out.push(ReleaseRecord::NotReleased(id));
            out.push(ReleaseRecord::Outcome(id, "leaked"));
        }
        let spawned = self.spawned.iter().filter(|id| !self.leaks.contains(id));
        out.extend(spawned.map(|id| ReleaseRecord::Outcome(id, "spawned")));
        for (ids, what) in [
            (&self.reclaimed, "reclaimed"),
            (&self.blocked, "blocked"),
            (&self.withdrawn, "withdrawn"),
        ] {
            out.extend(ids.iter().map(|id| ReleaseRecord::Outcome(id, what)));
        }
        let done = self.observed.peaks.iter();
        out.extend(done.map(|p| ReleaseRecord::Outcome(&p.task, "done")));
        out
    }
}
