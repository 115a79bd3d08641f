//! A Hermes board in memory and a dispatcher that acts on it with Hermes's rules (HERMES.md):
//! `dispatch --max N` spawns `ready` tasks whose assignee is a Hermes profile, priority desc
//! then created asc, while fewer than `N` run (`--max` as a live cap, Hermes 0.19.0).

use super::lock;
use crate::governor::TaskId;
use crate::ports::{
    BoardSnapshot, BoardTask, DispatchOutcome, Dispatcher, MaxSemantics, PortError, Spawned,
    TaskBoard, TaskStatus, WorkerProbe, WorkerProcess,
};
use std::sync::{Arc, Mutex};

/// What the in-memory board holds. Tests change it through [`InMemoryBoard::with`].
#[derive(Debug, Default)]
pub struct Board {
    /// Every task, in any status.
    pub tasks: Vec<BoardTask>,
    /// Assignees that are Hermes profiles (a dispatch spawns only their tasks; lanes are not).
    pub profiles: Vec<String>,
    /// Running tasks whose worker process is gone (crashed, killed).
    pub dead: Vec<TaskId>,
    /// Tasks whose worker outlives them (alive after the task left `running`).
    pub lingering: Vec<TaskId>,
    /// While `Some`, every read fails with this message (board locked, corrupt, missing).
    pub read_error: Option<String>,
    /// Reads so far ([`TaskBoard::read_board`]).
    pub reads: u32,
    /// `PRAGMA data_version`: moves with every write through the dispatcher.
    pub data_version: u64,
    /// Pid of each spawned worker, by task (Hermes forgets it when the task finishes).
    pids: Vec<(u32, TaskId)>,
}

impl Board {
    fn task_mut(&mut self, id: &TaskId) -> Result<&mut BoardTask, PortError> {
        self.tasks
            .iter_mut()
            .find(|t| &t.id == id)
            .ok_or_else(|| format!("hermes: no such task {id}").into())
    }

    /// Hermes's dispatch with `--max max` as a live cap.
    fn dispatch(&mut self, max: u32) -> DispatchOutcome {
        let mut running = u32::try_from(
            self.tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Running)
                .count(),
        )
        .unwrap_or(u32::MAX);
        let mut order: Vec<usize> = (0..self.tasks.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.tasks[a], &self.tasks[b]);
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        let mut out = DispatchOutcome::default();
        for i in order {
            let t = &self.tasks[i];
            let spawnable = t.status == TaskStatus::Ready
                && t.assignee
                    .as_ref()
                    .is_some_and(|a| self.profiles.contains(a));
            if !spawnable || running >= max {
                continue;
            }
            running += 1;
            out.spawned.push(Spawned {
                id: t.id.clone(),
                assignee: t.assignee.clone().unwrap_or_default(),
            });
            let pid = 1000 + u32::try_from(self.pids.len()).unwrap_or(u32::MAX - 1000);
            let t = &mut self.tasks[i];
            t.status = TaskStatus::Running;
            t.worker_pid = Some(pid);
            let id = t.id.clone();
            self.pids.push((pid, id));
        }
        out
    }
}

/// A Hermes board in memory: the [`TaskBoard`] port (every `todo`/`ready`/`running` task
/// plus the tracked ones, in board order) and the [`WorkerProbe`] port (a worker lives while
/// its task runs, unless [`Board::dead`]; after that only if [`Board::lingering`]). Clones
/// share the board.
#[derive(Debug, Clone, Default)]
pub struct InMemoryBoard(Arc<Mutex<Board>>);

impl InMemoryBoard {
    /// An empty board on which `profiles` are Hermes profiles.
    pub fn new(profiles: &[&str]) -> InMemoryBoard {
        let board = InMemoryBoard::default();
        board.with(|b| b.profiles = profiles.iter().map(|p| (*p).to_owned()).collect());
        board
    }

    /// Look at or change the board.
    pub fn with<R>(&self, f: impl FnOnce(&mut Board) -> R) -> R {
        f(&mut lock(&self.0))
    }

    /// Add a task.
    pub fn push(&self, task: BoardTask) {
        self.with(|b| b.tasks.push(task));
    }

    /// The task `id`, as it is now.
    pub fn task(&self, id: &str) -> Option<BoardTask> {
        self.with(|b| b.tasks.iter().find(|t| t.id.as_str() == id).cloned())
    }

    /// Set the status of task `id` (a task finishing, a human moving it).
    ///
    /// # Panics
    ///
    /// There is no task `id`: the test is wrong.
    pub fn set_status(&self, id: &str, status: TaskStatus) {
        self.with(|b| {
            let t = b.tasks.iter_mut().find(|t| t.id.as_str() == id);
            t.unwrap_or_else(|| panic!("no task {id} on the board"))
                .status = status;
        });
    }

    /// A dispatcher acting on this board, recording its calls.
    pub fn dispatcher(&self) -> RecordingDispatcher {
        RecordingDispatcher {
            board: self.clone(),
            script: Arc::default(),
        }
    }
}

impl TaskBoard for InMemoryBoard {
    fn read_board(&mut self, tracked: &[TaskId]) -> Result<BoardSnapshot, PortError> {
        let mut b = lock(&self.0);
        b.reads += 1;
        if let Some(e) = &b.read_error {
            return Err(e.clone().into());
        }
        let mut tasks: Vec<BoardTask> = b
            .tasks
            .iter()
            .filter(|t| {
                matches!(
                    t.status,
                    TaskStatus::Todo | TaskStatus::Ready | TaskStatus::Running
                ) || tracked.contains(&t.id)
            })
            .cloned()
            .collect();
        tasks.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        Ok(BoardSnapshot {
            tasks,
            data_version: b.data_version,
        })
    }

    fn read_data_version(&mut self) -> Result<u64, PortError> {
        let b = lock(&self.0);
        match &b.read_error {
            Some(e) => Err(e.clone().into()),
            None => Ok(b.data_version),
        }
    }
}

impl WorkerProbe for InMemoryBoard {
    fn is_dead(&self, task: &BoardTask) -> bool {
        lock(&self.0).dead.contains(&task.id)
    }

    fn worker(&self, task: &BoardTask) -> Option<WorkerProcess> {
        let pid = task.worker_pid?;
        let alive = task.status == TaskStatus::Running && !self.is_dead(task);
        alive.then_some(WorkerProcess { pid, start: 7 })
    }

    fn is_alive(&self, p: &WorkerProcess) -> bool {
        let b = lock(&self.0);
        let Some((_, id)) = b.pids.iter().find(|(pid, _)| *pid == p.pid) else {
            return false;
        };
        if b.dead.contains(id) {
            return false;
        }
        b.lingering.contains(id)
            || b.tasks
                .iter()
                .any(|t| &t.id == id && t.status == TaskStatus::Running)
    }
}

/// What the dispatcher was asked and what it is told to do.
#[derive(Debug, Default)]
struct Script {
    calls: Vec<String>,
    semantics: Option<MaxSemantics>,
    fail_dispatch: Option<String>,
    fail_assign: Option<String>,
    on_assign: Option<(TaskId, String)>,
}

/// The [`Dispatcher`] port on an [`InMemoryBoard`]: `assign`, `reclaim`, `block` and
/// `dispatch` change the board as Hermes would, and each call is recorded as a line
/// (`assign t_1 coder`, `reclaim t_1`, `block t_1`, `dispatch --max 3`), failed calls too.
/// `--max` means [`MaxSemantics::LiveCap`] unless told otherwise. Clones share the board and
/// the record.
#[derive(Debug, Clone)]
pub struct RecordingDispatcher {
    board: InMemoryBoard,
    script: Arc<Mutex<Script>>,
}

impl RecordingDispatcher {
    /// The board it acts on.
    pub fn board(&self) -> &InMemoryBoard {
        &self.board
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.script).calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.script).calls)
    }

    /// While `Some`, every `dispatch` fails with this message (after being recorded).
    pub fn fail_dispatch(&self, error: Option<&str>) {
        lock(&self.script).fail_dispatch = error.map(str::to_owned);
    }

    /// While `Some`, every `assign` fails with this message (after being recorded).
    pub fn fail_assign(&self, error: Option<&str>) {
        lock(&self.script).fail_assign = error.map(str::to_owned);
    }

    /// During the next `assign`, someone else assigns task `id` to `assignee` (a user or a
    /// script writing to the board during a slow Hermes call).
    pub fn on_next_assign(&self, id: &str, assignee: &str) {
        lock(&self.script).on_assign = Some((TaskId::from(id), assignee.to_owned()));
    }

    /// What `--max` means to this Hermes.
    pub fn set_semantics(&self, semantics: MaxSemantics) {
        lock(&self.script).semantics = Some(semantics);
    }

    /// Record `call`; the scripted failure for it, if any.
    fn record(
        &self,
        call: String,
        failure: impl FnOnce(&Script) -> Option<String>,
    ) -> Option<String> {
        let mut s = lock(&self.script);
        s.calls.push(call);
        failure(&s)
    }

    /// Change task `id` on the board (a write: the data version moves).
    fn write(&self, id: &TaskId, f: impl FnOnce(&mut BoardTask)) -> Result<(), PortError> {
        self.board.with(|b| {
            f(b.task_mut(id)?);
            b.data_version += 1;
            Ok(())
        })
    }
}

impl Dispatcher for RecordingDispatcher {
    fn max_semantics(&mut self) -> Result<MaxSemantics, PortError> {
        Ok(lock(&self.script)
            .semantics
            .unwrap_or(MaxSemantics::LiveCap))
    }

    fn assign(&mut self, id: &TaskId, assignee: &str) -> Result<(), PortError> {
        if let Some(e) = self.record(format!("assign {id} {assignee}"), |s| s.fail_assign.clone()) {
            return Err(e.into());
        }
        let meanwhile = lock(&self.script).on_assign.take();
        if let Some((other, to)) = meanwhile {
            self.write(&other, |t| t.assignee = Some(to))?;
        }
        self.write(id, |t| t.assignee = Some(assignee.to_owned()))
    }

    fn reclaim(&mut self, id: &TaskId, _reason: &str) -> Result<(), PortError> {
        self.record(format!("reclaim {id}"), |_| None);
        self.write(id, |t| {
            t.status = TaskStatus::Ready;
            t.worker_pid = None;
        })
    }

    fn block(&mut self, id: &TaskId, _reason: &str) -> Result<(), PortError> {
        self.record(format!("block {id}"), |_| None);
        self.write(id, |t| {
            t.status = TaskStatus::Blocked;
            t.worker_pid = None;
        })
    }

    fn dispatch(&mut self, max: u32) -> Result<DispatchOutcome, PortError> {
        if let Some(e) = self.record(format!("dispatch --max {max}"), |s| s.fail_dispatch.clone()) {
            return Err(e.into());
        }
        Ok(self.board.with(|b| {
            let out = b.dispatch(max);
            if !out.spawned.is_empty() {
                b.data_version += 1;
            }
            out
        }))
    }
}
