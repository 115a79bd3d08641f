//! One control cycle, generic over the ports: observe → [`decide`] → act → [`TickReport`].
//!
//! Used by `tick` (cron), `tick --dry-run`, `status` (observe + decide only) and the daemon.
//!
//! - **Observe**: one read of the board (`mode=ro`), one sample per pool (a failed sample is
//!   `None`, so the pool holds as `Stale`: fail closed), the governor's own state (in-flight
//!   releases, first-seen times, baseline).
//! - **Act** (not in a dry run, never with a second dispatcher on the board): put running
//!   tasks whose local worker died back to `ready` (`hermes kanban reclaim`), adopt tasks
//!   created with a governed profile as assignee into its lane, release the chosen ones
//!   (assign to the profile), then one `hermes kanban dispatch --max <running + in flight>`,
//!   and check that what spawned is what was released. Anything else spawned is a governance
//!   leak: logged as an error and counted. A tick with nothing to do runs no Hermes process.
//! - Released tasks stay "in flight" (charged, never released twice) until seen running, or
//!   no longer `ready` on their profile.

use crate::app::learning;
use crate::app::state::{GovernorState, InFlight, Worker};
use crate::governor::{
    Bytes, Millis, Observation, Policy, PoolObservation, ProfileId, Readiness, RunningTask, TaskId,
    WaitingTask, decide,
};
use crate::ports::{
    BoardSnapshot, BoardTask, Clock, Dispatcher, EngineTelemetry, GpuTelemetry, PortError,
    StateStore, TaskBoard, TaskStatus, WorkerProbe,
};
use std::collections::{BTreeMap, BTreeSet};

/// How long released tasks may wait unspawned before a tick with no new release runs
/// `dispatch` again for them (a failed or skipped dispatch must not strand charged tasks).
pub const REDISPATCH_AFTER: Millis = Millis::secs(60);

/// How long a governed task's worker may outlive the task (done, blocked) and stay charged.
/// Hermes's worker sends one last model call after `kanban_complete` and exits about 1 s
/// after the task turned `done` (HERMES.md §6.2, §6.3); one that lingers longer than this is
/// no longer charged (and a warning says so).
pub const FINISHING_GRACE: Millis = Millis::secs(120);

/// After this many dead workers a task is blocked for a human instead of retried: Hermes's
/// own default `failure_limit` (HERMES.md §7), which adoption into a lane resets.
pub const WORKER_DEATH_LIMIT: u32 = 2;

/// Where one pool's samples come from.
pub struct PoolSource<'a> {
    /// GPU memory.
    pub gpu: &'a mut dyn GpuTelemetry,
    /// The engine, if one is configured.
    pub engine: Option<&'a mut dyn EngineTelemetry>,
    /// A configured baseline (else the one observed while nothing governed ran).
    pub baseline: Option<Bytes>,
}

/// The ports one tick uses.
pub struct TickPorts<'a> {
    /// The clock.
    pub clock: &'a dyn Clock,
    /// One source per [`Policy::pools`], same order.
    pub pools: Vec<PoolSource<'a>>,
    /// The board (read only).
    pub board: &'a mut dyn TaskBoard,
    /// Writes to the board.
    pub dispatcher: &'a mut dyn Dispatcher,
    /// Worker liveness, if available.
    pub workers: Option<&'a dyn WorkerProbe>,
}

/// Per-tick inputs that are not ports.
#[derive(Debug, Clone, Default)]
pub struct TickOptions {
    /// Decide and report, write nothing (not the board, not the state).
    pub dry_run: bool,
    /// A second dispatcher on this board (`Some(detail)`): hold everything, act on nothing.
    pub dual_dispatcher: Option<String>,
    /// The latency limit in force, if any (daemon).
    pub latency_limit: Option<u32>,
    /// With the pass-through on (daemon): per task id it saw, the task now; footprint
    /// learning takes these peaks ([`learning`]).
    pub proxy: Option<BTreeMap<TaskId, learning::ProxyTask>>,
    /// Dispatch what is in flight whatever its age (the daemon's first tick: a process killed
    /// mid-call may have left releases whose dispatch never ran). The board is read again
    /// first, as for any re-dispatch.
    pub redispatch: bool,
}

pub use crate::record::report::{Observed, TickReport};

fn lane_map(policy: &Policy) -> BTreeMap<&str, &ProfileId> {
    policy
        .profiles
        .iter()
        .map(|p| (p.lane.as_str(), &p.id))
        .collect()
}

fn governed(policy: &Policy, assignee: Option<&str>) -> Option<ProfileId> {
    let a = assignee?;
    policy
        .profiles
        .iter()
        .find(|p| p.id.as_str() == a)
        .map(|p| p.id.clone())
}

/// Observe: board, telemetry and state into an [`Observation`]. Updates `state` (in-flight
/// releases seen running or gone are dropped, first-seen times, observed baseline); a caller
/// that must not change it passes a clone.
///
/// # Errors
///
/// The board cannot be read (missing, corrupt, locked): nothing is known, nothing is done.
pub fn observe(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    state: &mut GovernorState,
    opts: &TickOptions,
) -> Result<Observed, PortError> {
    let now = ports.clock.now();
    let tracked: Vec<TaskId> = state
        .in_flight
        .keys()
        .chain(state.task_peaks.keys())
        .chain(state.workers.keys())
        .cloned()
        .collect();
    let snap = ports.board.read_board(&tracked)?;
    let mut telemetry_errors = Vec::new();
    // The largest request in progress over the pools' engines; unknown if any pool has no
    // engine, or its engine failed or does not expose it.
    let mut busy: Result<Option<u64>, ()> = Ok(None);
    let pools: Vec<PoolObservation> = policy
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let Some(src) = ports.pools.get_mut(i) else {
                return PoolObservation::default();
            };
            let gpu = src
                .gpu
                .read_gpu(now)
                .map_err(|e| {
                    tracing::warn!(pool = %pool.name, error = %e, "GPU telemetry failed; the pool holds.");
                    telemetry_errors.push(format!("pool {}: GPU: {e}", pool.name));
                })
                .ok();
            let engine = src.engine.as_mut().and_then(|e| {
                let reading = e
                    .read_engine(now)
                    .map_err(|e| {
                        tracing::warn!(pool = %pool.name, error = %e, "Engine telemetry failed.");
                        telemetry_errors.push(format!("pool {}: engine: {e}", pool.name));
                    })
                    .ok();
                // Known only if every pool's engine answered and exposes it: a pool that
                // does not could be where the requests are.
                busy = match (busy, reading.as_ref().and_then(|r| r.busy_context_max)) {
                    (Ok(b), Some(c)) => Ok(Some(b.map_or(c, |b| b.max(c)))),
                    _ => Err(()),
                };
                reading.map(|r| r.sample)
            });
            if src.engine.is_none() {
                busy = Err(());
            }
            let baseline = src
                .baseline
                .or_else(|| state.observed_baseline.get(&pool.name).copied());
            PoolObservation {
                gpu,
                baseline,
                engine,
            }
        })
        .collect();
    Ok(observe_snapshot(
        policy,
        &snap,
        Sampled {
            pools,
            busy_context: busy.ok().flatten(),
            telemetry_errors,
        },
        ports.workers,
        state,
        opts,
        now,
    ))
}

/// What the pools' telemetry gave this tick.
struct Sampled {
    pools: Vec<PoolObservation>,
    busy_context: Option<u64>,
    telemetry_errors: Vec<String>,
}

fn observe_snapshot(
    policy: &Policy,
    snap: &BoardSnapshot,
    sampled: Sampled,
    workers: Option<&dyn WorkerProbe>,
    state: &mut GovernorState,
    opts: &TickOptions,
    now: Millis,
) -> Observed {
    let Sampled {
        pools,
        busy_context,
        telemetry_errors,
    } = sampled;
    let lanes = lane_map(policy);

    // In-flight releases stay charged while they sit `ready` on their profile; one that left
    // gets its outcome in the journal (a running one is charged as running from now on).
    let mut settled = Vec::new();
    state.in_flight.retain(|id, f| {
        let task = snap.task(id);
        let waiting = task.is_some_and(|t| {
            t.status == TaskStatus::Ready && t.assignee.as_deref() == Some(f.profile.as_str())
        });
        if !waiting {
            let outcome = if task.is_some_and(|t| t.status == TaskStatus::Running) {
                "spawned"
            } else {
                "gone"
            };
            settled.push((id.clone(), outcome.to_owned()));
        }
        waiting
    });

    let mut running = Vec::new();
    let mut dead = Vec::new();
    let mut dead_for_good = Vec::new();
    let mut board_running = 0u32;
    let mut waiting = Vec::new();
    let mut adopt = Vec::new();
    let mut governed_running = false;
    for t in &snap.tasks {
        match t.status {
            TaskStatus::Running => {
                if workers.is_some_and(|w| w.is_dead(t)) {
                    let deaths = state.worker_deaths.get(&t.id).copied().unwrap_or(0) + 1;
                    if deaths >= WORKER_DEATH_LIMIT {
                        dead_for_good.push(t.id.clone());
                        continue;
                    }
                    // Its memory is free: the process is gone. It waits like a task
                    // created on its profile (reclaimed, then adopted or released).
                    dead.push(t.id.clone());
                    if let Some(mut w) = waiting_task(policy, &lanes, t, state, now) {
                        if w.profile.is_some() {
                            adopt.push(t.id.clone());
                        }
                        w.readiness = Readiness::Ready;
                        waiting.push(w);
                    }
                    continue;
                }
                board_running += 1;
                governed_running |= remember_worker(policy, workers, state, t);
                running.push(RunningTask {
                    id: t.id.clone(),
                    assignee: t.assignee.clone().unwrap_or_default(),
                    since: t.started_at.unwrap_or(now),
                    context_tokens: None,
                    requests_in_flight: None,
                });
            }
            TaskStatus::Ready | TaskStatus::Todo if !state.in_flight.contains_key(&t.id) => {
                if let Some(w) = waiting_task(policy, &lanes, t, state, now) {
                    if w.profile.is_some() && !lanes.contains_key(w.assignee.as_str()) {
                        adopt.push(t.id.clone());
                    }
                    waiting.push(w);
                }
            }
            _ => {}
        }
    }
    let finishing = finishing_workers(&running, workers, state, now, opts.proxy.as_ref());
    let finishing_ids: BTreeSet<TaskId> = finishing.iter().map(|(id, _)| id.clone()).collect();
    let evidence = learning::Evidence {
        busy_context,
        proxy: opts.proxy.as_ref(),
        finishing: &finishing_ids,
        at: now,
    };
    let followed = learning::follow(policy, state, snap, &running, evidence);
    // What the pass-through saw each running task reach (charged with its profile's growth).
    // And its calls in flight now (a slot pool charges those, under the latency limit); a
    // task the pass-through has not seen stays `None`, charged its declared slots.
    for r in &mut running {
        r.context_tokens = learning::context_seen(state, &r.id);
        r.requests_in_flight = opts
            .proxy
            .as_ref()
            .and_then(|m| m.get(&r.id))
            .map(|t| t.in_flight);
    }
    for p in &followed.estimated {
        tracing::info!(task = %p.task, profile = %p.profile, peak_tokens = p.tokens,
            "Not learning a finished task's peak: the proxy estimated it from bytes (its engine sent no usage, or a request was cut off).");
    }
    let peaks = followed.learned;
    let peaks_pending = followed.pending;
    for p in &peaks {
        let declared = policy
            .profiles
            .iter()
            .find(|q| q.id == p.profile)
            .map_or(0, |q| q.declared.request_tokens);
        if declared > 0 && p.tokens > declared {
            tracing::warn!(task = %p.task, profile = %p.profile, peak_tokens = p.tokens,
                declared_tokens = declared,
                "A task reached more context than its profile declares; it is charged the observed peak. Raise the profile's max_context_tokens.");
        } else {
            tracing::info!(task = %p.task, profile = %p.profile, peak_tokens = p.tokens,
                "Learned a finished task's peak context.");
        }
    }
    for (id, w) in &finishing {
        governed_running = true;
        running.push(RunningTask {
            id: id.clone(),
            assignee: w.profile.to_string(),
            since: w.finishing_since.unwrap_or(now),
            context_tokens: None,
            requests_in_flight: None,
        });
    }
    for (id, f) in &state.in_flight {
        governed_running = true;
        running.push(RunningTask {
            id: id.clone(),
            assignee: f.profile.to_string(),
            since: f.released_at,
            context_tokens: None,
            requests_in_flight: None,
        });
    }

    // What the GPU holds while no governed task runs is the baseline.
    if !governed_running {
        for (pool, obs) in policy.pools.iter().zip(&pools) {
            if let Some(g) = obs.gpu {
                state.observed_baseline.insert(pool.name.clone(), g.used);
            }
        }
    }
    state.worker_deaths.retain(|id, _| snap.task(id).is_some());
    let waiting_ids: BTreeSet<&TaskId> = waiting.iter().map(|w: &WaitingTask| &w.id).collect();
    state
        .first_seen_waiting
        .retain(|id, _| waiting_ids.contains(id));
    for w in &waiting {
        state.first_seen_waiting.entry(w.id.clone()).or_insert(now);
    }

    Observed {
        observation: Observation {
            now,
            pools,
            running,
            waiting,
            dual_dispatcher: opts.dual_dispatcher.clone(),
            latency_limit: opts.latency_limit,
            learned: learning::learned(policy, state),
            spread: learning::spread(policy, state),
        },
        board_running,
        dead,
        dead_for_good,
        adopt,
        in_flight: state.in_flight.keys().cloned().collect(),
        finishing: finishing.into_iter().map(|(id, _)| id).collect(),
        telemetry_errors,
        data_version: snap.data_version,
        busy_context,
        peaks,
        peaks_pending,
        settled,
    }
}

/// Remember the local worker of `t` if it is a governed running task; whether it is governed.
fn remember_worker(
    policy: &Policy,
    probe: Option<&dyn WorkerProbe>,
    state: &mut GovernorState,
    t: &BoardTask,
) -> bool {
    let Some(profile) = governed(policy, t.assignee.as_deref()) else {
        return false;
    };
    if let Some(process) = probe.and_then(|w| w.worker(t))
        && state
            .workers
            .get(&t.id)
            .is_none_or(|w| w.process != process)
    {
        state.workers.insert(
            t.id.clone(),
            Worker {
                profile,
                process,
                finishing_since: None,
                ended_at_finish: None,
            },
        );
    }
    true
}

/// Remembered workers whose task no longer runs on the board (done, blocked, reclaimed) but
/// whose process is still alive: they still hold the engine (a worker's last call comes after
/// its task completes), so they stay charged until they exit or [`FINISHING_GRACE`] passes.
/// Workers that exited, or outlived the grace, are forgotten.
///
/// With the pass-through (`proxy`), a task's charge ends sooner: when one more of its
/// requests has ended than had when it was first seen finishing, and none is in flight, its
/// last call is over; what is left is the process exiting, which holds no engine memory.
/// A task the proxy did not see waits for its process as before. (A known gap: a request
/// started before `done` and still running when the task is first seen finishing, such as a
/// Hermes 0.20 title request, counts as that call; if the last call had not started when it
/// ended, the last call runs uncharged. Such requests are short and rarely outlive `done`.)
fn finishing_workers(
    running: &[RunningTask],
    probe: Option<&dyn WorkerProbe>,
    state: &mut GovernorState,
    now: Millis,
    proxy: Option<&BTreeMap<TaskId, learning::ProxyTask>>,
) -> Vec<(TaskId, Worker)> {
    let running: BTreeSet<&TaskId> = running.iter().map(|r| &r.id).collect();
    let mut finishing = Vec::new();
    let in_flight = &state.in_flight;
    state.workers.retain(|id, w| {
        if running.contains(id) {
            w.finishing_since = None;
            return true;
        }
        if in_flight.contains_key(id) || !probe.is_some_and(|p| p.is_alive(&w.process)) {
            return false;
        }
        let since = *w.finishing_since.get_or_insert(now);
        if let Some(t) = proxy.and_then(|m| m.get(id)) {
            let at_finish = *w.ended_at_finish.get_or_insert(t.ended);
            if t.in_flight == 0 && t.ended > at_finish {
                tracing::debug!(task = %id, pid = w.process.pid,
                    "A finished task's last call through the proxy ended; no longer charging it.");
                return false;
            }
        }
        if now.since(since) > FINISHING_GRACE {
            tracing::warn!(task = %id, pid = w.process.pid, lingered = %now.since(since),
                "A worker outlived its task; no longer charging it.");
            return false;
        }
        finishing.push((id.clone(), w.clone()));
        true
    });
    finishing
}

fn waiting_task(
    policy: &Policy,
    lanes: &BTreeMap<&str, &ProfileId>,
    t: &BoardTask,
    state: &GovernorState,
    now: Millis,
) -> Option<WaitingTask> {
    let assignee = t.assignee.clone().unwrap_or_default();
    let profile = lanes
        .get(assignee.as_str())
        .map(|p| (*p).clone())
        .or_else(|| governed(policy, t.assignee.as_deref()));
    Some(WaitingTask {
        id: t.id.clone(),
        profile,
        assignee: if assignee.is_empty() {
            "(unassigned)".into()
        } else {
            assignee
        },
        priority: t.priority,
        created_at: t.created_at,
        waiting_since: state.first_seen_waiting.get(&t.id).copied().unwrap_or(now),
        readiness: if t.status == TaskStatus::Todo {
            Readiness::WaitingOnParent
        } else {
            Readiness::Ready
        },
    })
}

/// One full cycle: observe, decide, act. `state` is updated in place (a dry run leaves it
/// untouched); saving it is the caller's job (see [`run_tick_with_store`]).
///
/// # Errors
///
/// The board cannot be read, or the Hermes version leaves `--max` undefined (before any
/// write). Failures of single Hermes calls after that are in [`TickReport::errors`].
pub fn run_tick(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    state: &mut GovernorState,
    opts: &TickOptions,
) -> Result<TickReport, PortError> {
    if opts.dry_run {
        let mut scratch = state.clone();
        return run_tick_inner(policy, ports, &mut scratch, None, opts);
    }
    run_tick_inner(policy, ports, state, None, opts)
}

/// [`run_tick`] with write-ahead: `state`, with this tick's releases in flight, is saved to
/// `store` (and the releases journaled there) before the first `assign`, so a process killed
/// in the middle of a Hermes call leaves them for the next tick to settle. If that save fails
/// nothing is released. Saving `state` after the tick is still the caller's job.
///
/// # Errors
///
/// As [`run_tick`].
pub fn run_tick_saving(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    state: &mut GovernorState,
    store: &mut dyn StateStore,
    opts: &TickOptions,
) -> Result<TickReport, PortError> {
    if opts.dry_run {
        return run_tick(policy, ports, state, opts);
    }
    run_tick_inner(policy, ports, state, Some(store), opts)
}

fn run_tick_inner(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    state: &mut GovernorState,
    store: Option<&mut dyn StateStore>,
    opts: &TickOptions,
) -> Result<TickReport, PortError> {
    let observed = observe(policy, ports, state, opts)?;
    let decision = decide(policy, &observed.observation);
    let now = observed.observation.now;
    let mut report = TickReport {
        at: now,
        dry_run: opts.dry_run,
        decision,
        reclaimed: Vec::new(),
        blocked: Vec::new(),
        adopted: Vec::new(),
        released: Vec::new(),
        dispatch_max: None,
        spawned: Vec::new(),
        leaks: Vec::new(),
        in_flight: observed.in_flight.clone(),
        withdrawn: Vec::new(),
        dispatch_held: None,
        errors: Vec::new(),
        observed,
    };
    if opts.dual_dispatcher.is_some() {
        // Another dispatcher spawns from this board: any write could race it.
        return Ok(report);
    }

    let releasing: BTreeSet<TaskId> = report
        .decision
        .release
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let pending_old = (opts.redispatch && !state.in_flight.is_empty())
        || state
            .in_flight
            .values()
            .any(|f| now.since(f.released_at) >= REDISPATCH_AFTER)
            && state
                .last_dispatch
                .is_none_or(|at| now.since(at) >= REDISPATCH_AFTER);
    let will_dispatch = !releasing.is_empty() || pending_old;
    // Learn what `--max` means before writing anything: an unknown Hermes must not be left
    // with tasks released and no dispatch.
    let semantics = if will_dispatch {
        Some(ports.dispatcher.max_semantics()?)
    } else {
        None
    };

    let running_after = report.observed.board_running;
    let mut errors = Vec::new();
    let mut hermes_error = |what: String, e: PortError, state: &mut GovernorState| {
        tracing::error!(error = %e, "{what}");
        state.counters.hermes_errors += 1;
        errors.push(format!("{what}: {e}"));
    };

    // 1. Dead workers: re-read them first (one may have completed since), then reclaim.
    let mut reclaimed = Vec::new();
    if !report.observed.dead.is_empty() {
        let again = if opts.dry_run {
            None
        } else {
            ports.board.read_board(&report.observed.dead).ok()
        };
        for id in &report.observed.dead {
            let still = again.as_ref().is_none_or(|s| {
                s.task(id).is_some_and(|t| {
                    t.status == TaskStatus::Running && ports.workers.is_some_and(|w| w.is_dead(t))
                })
            });
            if !still {
                continue;
            }
            if !opts.dry_run {
                if let Err(e) = ports
                    .dispatcher
                    .reclaim(id, "kanban-governor: worker process is gone")
                {
                    hermes_error(format!("reclaiming {id}"), e, state);
                    continue;
                }
                tracing::warn!(task = %id, "Reclaimed a task whose worker died.");
                state.counters.reclaimed += 1;
                *state.worker_deaths.entry(id.clone()).or_insert(0) += 1;
            }
            reclaimed.push(id.clone());
        }
    }
    let mut blocked = Vec::new();
    for id in &report.observed.dead_for_good {
        if !opts.dry_run {
            let reason = format!(
                "kanban-governor: its worker died {WORKER_DEATH_LIMIT} times; fix the cause, then `hermes kanban unblock {id}`"
            );
            if let Err(e) = ports.dispatcher.block(id, &reason) {
                hermes_error(format!("blocking {id}"), e, state);
                continue;
            }
            tracing::error!(task = %id, "Blocked a task whose workers keep dying.");
            state.counters.blocked += 1;
            state.worker_deaths.remove(id);
        }
        blocked.push(id.clone());
    }
    let reclaimed_set: BTreeSet<&TaskId> = reclaimed.iter().collect();

    // 2. Adopt: tasks on a governed profile that are not being released go to its lane.
    let mut adopted = Vec::new();
    for id in &report.observed.adopt {
        let dead = report.observed.dead.contains(id);
        if releasing.contains(id) || (dead && !reclaimed_set.contains(id)) {
            continue;
        }
        let Some(w) = report
            .observed
            .observation
            .waiting
            .iter()
            .find(|w| &w.id == id)
        else {
            continue;
        };
        let Some((_, p)) = w.profile.as_ref().and_then(|p| policy.profile(p)) else {
            continue;
        };
        if !opts.dry_run {
            if let Err(e) = ports.dispatcher.assign(id, &p.lane) {
                hermes_error(format!("adopting {id} into lane {}", p.lane), e, state);
                continue;
            }
            state.counters.adopted += 1;
        }
        adopted.push(id.clone());
    }

    // 3. Release: assign to the profile (a task already on its profile needs nothing). Each
    // release is in flight, and saved so (write-ahead), before Hermes is asked to act on it.
    let mut to_release: Vec<&crate::governor::Release> = report
        .decision
        .release
        .iter()
        .filter(|r| !report.observed.dead.contains(&r.id) || reclaimed_set.contains(&r.id))
        .collect();
    let mut ahead_error = None;
    if !opts.dry_run && !to_release.is_empty() {
        for r in &to_release {
            state.in_flight.insert(
                r.id.clone(),
                InFlight {
                    profile: r.profile.clone(),
                    released_at: now,
                },
            );
        }
        if let Some(store) = store {
            let ids: Vec<TaskId> = to_release.iter().map(|r| r.id.clone()).collect();
            if let Err(e) = store.save_before_releasing(state, &report, &ids) {
                tracing::error!(error = %e, "Saving the releases before making them failed; nothing is released.");
                for id in &ids {
                    state.in_flight.remove(id);
                }
                to_release.clear();
                ahead_error = Some(format!(
                    "saving the state before releasing (nothing released): {e}"
                ));
            }
        }
    }
    let mut released = Vec::new();
    let on_profile = |r: &crate::governor::Release| {
        report
            .observed
            .observation
            .waiting
            .iter()
            .any(|w| w.id == r.id && w.assignee == r.profile.as_str())
    };
    // The assignments of one release, one Hermes call after another, then each result.
    let assigns: Vec<(TaskId, String)> = to_release
        .iter()
        .filter(|r| !opts.dry_run && !on_profile(r))
        .map(|r| (r.id.clone(), r.profile.as_str().to_owned()))
        .collect();
    let mut assigned: BTreeMap<TaskId, Result<(), PortError>> = assigns
        .iter()
        .map(|(id, _)| id.clone())
        .zip(ports.dispatcher.assign_all(&assigns))
        .collect();
    for r in to_release {
        if !opts.dry_run {
            if let Some(Err(e)) = assigned.remove(&r.id) {
                state.in_flight.remove(&r.id);
                hermes_error(format!("releasing {} to {}", r.id, r.profile), e, state);
                continue;
            }
            tracing::info!(task = %r.id, profile = %r.profile, "Released task.");
            state.counters.released += 1;
        }
        released.push(r.id.clone());
    }

    // 4. Dispatch once, capped at what runs plus what is in flight, and verify. Starting a
    // release is a decision of its own: the board is read again first (see
    // [`recheck_before_dispatch`]), so Hermes starts only what fits now.
    let mut running_after = running_after;
    if !opts.dry_run && semantics.is_some() && !state.in_flight.is_empty() {
        match recheck_before_dispatch(policy, ports, state, &report.decision) {
            Ok(check) => {
                running_after = check.running;
                report.withdrawn = check.withdrawn;
                report.dispatch_held = check.held;
                for (what, e) in check.errors {
                    hermes_error(what, e, state);
                }
            }
            Err(e) => {
                report.dispatch_held = Some(format!(
                    "the board could not be read again before dispatch ({e}); nothing is started"
                ));
            }
        }
        if let Some(why) = &report.dispatch_held {
            tracing::warn!("Dispatch held: {why}");
        }
    }
    let pending = if opts.dry_run {
        u32::try_from(report.observed.in_flight.len() + released.len()).unwrap_or(u32::MAX)
    } else if report.dispatch_held.is_some() {
        0
    } else {
        u32::try_from(state.in_flight.len()).unwrap_or(u32::MAX)
    };
    if let Some(semantics) = semantics
        && pending > 0
    {
        let max = semantics.max_arg(running_after, pending);
        report.dispatch_max = Some(max);
        if !opts.dry_run {
            state.last_dispatch = Some(now);
            match ports.dispatcher.dispatch(max) {
                Ok(outcome) => {
                    for s in outcome.spawned {
                        if state.in_flight.remove(&s.id).is_some() {
                            report.spawned.push(s.id);
                        } else {
                            tracing::error!(task = %s.id, assignee = %s.assignee,
                                "Governance leak: Hermes spawned a task the governor did not release.");
                            state.counters.leaks += 1;
                            report.leaks.push(s.id.clone());
                            report.spawned.push(s.id);
                        }
                    }
                }
                Err(e) => hermes_error(format!("dispatching (--max {max})"), e, state),
            }
            // Hermes records each worker's pid before dispatch returns. Remember them now: a
            // task that finishes before the next tick would otherwise never be seen running,
            // and its worker's last call would go uncharged.
            if !report.spawned.is_empty()
                && let Ok(snap) = ports.board.read_board(&report.spawned)
            {
                for t in &snap.tasks {
                    if t.status == TaskStatus::Running && report.spawned.contains(&t.id) {
                        remember_worker(policy, ports.workers, state, t);
                    }
                }
            }
        }
    }

    if !opts.dry_run {
        state.counters.ticks += 1;
        state.last_tick = Some(now);
        state.last_running = report
            .observed
            .observation
            .running
            .iter()
            .map(|r| r.id.clone())
            .collect();
        report.in_flight = state.in_flight.keys().cloned().collect();
    }
    report.errors = errors;
    report.errors.extend(ahead_error);
    report.reclaimed = reclaimed;
    report.blocked = blocked;
    report.adopted = adopted;
    report.released = released;
    Ok(report)
}

/// What [`recheck_before_dispatch`] found and did.
struct DispatchCheck {
    /// Tasks running on the board as read just now.
    running: u32,
    /// In-flight releases taken back to their lane.
    withdrawn: Vec<TaskId>,
    /// Why no dispatch may run now, if so.
    held: Option<String>,
    /// Hermes calls that failed.
    errors: Vec<(String, PortError)>,
}

/// Whether `budget` is over its ceiling in any dimension it checks.
fn over_ceiling(budget: &crate::governor::PoolBudget) -> Option<String> {
    if let (Some(p), Some(c)) = (budget.projected_after_bytes, budget.ceiling_bytes)
        && p > c
    {
        return Some(format!("{p} projected of a {c} ceiling"));
    }
    if let Some(c) = budget.ceiling_kv_tokens
        && budget.charged_after_kv_tokens > c
    {
        return Some(format!(
            "{} KV tokens charged of a {c}-token ceiling",
            budget.charged_after_kv_tokens
        ));
    }
    if let Some(slots) = budget.slots
        && budget.slots_used_after > slots
    {
        return Some(format!(
            "{} slots charged of {slots}",
            budget.slots_used_after
        ));
    }
    None
}

/// Right before `hermes kanban dispatch`: read the board again and make sure the dispatch
/// can start only what was released and still fits.
///
/// - A task that reached a governed profile outside the governor since the tick's read
///   (`ready` on the profile, not released) would be started by the dispatch, uncharged: it
///   is moved to its lane first; if that fails, nothing is dispatched.
/// - A release whose pool is over its ceiling (something started outside the governor and is
///   charged now) or cannot be seen is taken back to its lane (`withdrawn`): it waits for a
///   new decision. This is what makes a re-dispatch of an old release a new decision.
fn recheck_before_dispatch(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    state: &mut GovernorState,
    decision: &crate::governor::Decision,
) -> Result<DispatchCheck, PortError> {
    let tracked: Vec<TaskId> = state.in_flight.keys().cloned().collect();
    let snap = ports.board.read_board(&tracked)?;
    let mut check = DispatchCheck {
        running: u32::try_from(
            snap.tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Running)
                .count(),
        )
        .unwrap_or(u32::MAX),
        withdrawn: Vec::new(),
        held: None,
        errors: Vec::new(),
    };
    for t in &snap.tasks {
        if t.status != TaskStatus::Ready || state.in_flight.contains_key(&t.id) {
            continue;
        }
        let Some((_, p)) = t
            .assignee
            .as_deref()
            .and_then(|a| policy.profile(&ProfileId::from(a)))
        else {
            continue;
        };
        match ports.dispatcher.assign(&t.id, &p.lane) {
            Ok(()) => {
                tracing::warn!(task = %t.id, lane = %p.lane,
                    "A task reached its profile outside the governor; moved it to its lane before dispatching.");
                state.counters.adopted += 1;
            }
            Err(e) => {
                check.errors.push((
                    format!("adopting {} into lane {} before dispatch", t.id, p.lane),
                    e,
                ));
                check.held = Some(format!(
                    "{} is ready on {} without a release and could not be moved to its lane",
                    t.id, p.id
                ));
            }
        }
    }
    if check.held.is_some() {
        return Ok(check);
    }
    // Pools that must not start anything now.
    let blocked: Vec<(usize, String)> = decision
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            b.stale
                .as_ref()
                .map(|s| format!("pool {} cannot be seen ({s})", b.name))
                .or_else(|| {
                    over_ceiling(b).map(|o| format!("pool {} is over its ceiling ({o})", b.name))
                })
                .map(|why| (i, why))
        })
        .collect();
    if blocked.is_empty() {
        return Ok(check);
    }
    let ids: Vec<(TaskId, ProfileId)> = state
        .in_flight
        .iter()
        .map(|(id, f)| (id.clone(), f.profile.clone()))
        .collect();
    for (id, profile) in ids {
        let Some((_, p)) = policy.profile(&profile) else {
            continue;
        };
        if !blocked.iter().any(|(i, _)| *i == p.pool) {
            continue;
        }
        match ports.dispatcher.assign(&id, &p.lane) {
            Ok(()) => {
                tracing::warn!(task = %id, lane = %p.lane, "Withdrew a release: its pool cannot take it now.");
                state.in_flight.remove(&id);
                check.withdrawn.push(id);
            }
            Err(e) => {
                check
                    .errors
                    .push((format!("withdrawing {id} to lane {}", p.lane), e));
                check.held = Some(format!(
                    "{}; {id} could not be taken back to its lane",
                    blocked
                        .iter()
                        .map(|(_, w)| w.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
    }
    if check.held.is_none() && !check.withdrawn.is_empty() {
        tracing::warn!(
            "{}",
            blocked
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(check)
}

/// [`run_tick`] with the state loaded from and (unless a dry run) saved to `store`, then the
/// tick journaled there. The state is saved even when Hermes calls failed, so no release is
/// forgotten.
///
/// # Errors
///
/// The state cannot be loaded or saved, or [`run_tick`] failed.
pub fn run_tick_with_store(
    policy: &Policy,
    ports: &mut TickPorts<'_>,
    store: &mut dyn StateStore,
    opts: &TickOptions,
) -> Result<TickReport, PortError> {
    let mut state = store.load()?;
    let mut report = run_tick_saving(policy, ports, &mut state, store, opts)?;
    if !opts.dry_run {
        store.save(&state)?;
        journal(store, &mut report);
    }
    Ok(report)
}

/// Append the tick to the store's history; a failure is logged and reported, not fatal (the
/// state, which is what the next tick needs, is already saved).
pub fn journal(store: &mut dyn StateStore, report: &mut TickReport) {
    if let Err(e) = store.journal(report) {
        tracing::error!(error = %e, "Writing the tick's history failed.");
        report.errors.push(format!("writing history: {e}"));
    }
}

#[cfg(test)]
mod tests;
