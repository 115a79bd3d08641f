//! `run_tick` against an in-memory Hermes ([`crate::fakes`]: a board and a dispatcher with
//! Hermes's dispatch rule: ready tasks of real profiles, priority desc / created asc, `--max`
//! as a live cap).

use super::*;
use crate::fakes::{
    Fault, InMemoryBoard, InMemoryState, ManualClock, RecordingDispatcher, ScriptedEngine,
    ScriptedGpu,
};
use crate::governor::{Bytes, HoldReason, KvPlacement, PoolPolicy, ProfilePolicy, WorstCase};
use crate::ports::EngineReading;

/// What the failing dispatch says.
const BOOM: &str = "'hermes kanban dispatch' exited 1: boom";

fn wc(gib: u64) -> WorstCase {
    WorstCase {
        kv_bytes: Bytes::gib(gib),
        extra_bytes: Bytes(0),
        kv_tokens: 0,
        slots: 1,
        request_tokens: 0,
        kv_bytes_per_token: 0,
    }
}

/// 24 GiB GPU, headroom 1.0, no reserve, 4 GiB baseline: 20 GiB for tasks.
/// `big` needs 8 GiB, `small` 3 GiB.
fn policy() -> Policy {
    let profile = |name: &str, gib| ProfilePolicy {
        id: ProfileId::from(name),
        lane: format!("{name}@gpu"),
        pool: 0,
        declared: wc(gib),
        max_parallel: None,
        guaranteed: 0,
        footprint: crate::governor::FootprintMode::Declared,
    };
    Policy {
        pools: vec![PoolPolicy {
            name: "default".into(),
            kv_placement: KvPlacement::GpuBytes,
            headroom: crate::governor::Headroom::FULL,
            reserve: Bytes(0),
            kv_capacity_tokens: None,
            slots: None,
            slot_context_tokens: None,
            max_staleness: Millis::secs(5),
            needs_engine: false,
        }],
        profiles: vec![profile("big", 8), profile("small", 3)],
        max_running: None,
        max_wait: Millis::secs(600),
    }
}

fn task(id: &str, assignee: &str, status: TaskStatus, priority: i64, created: u64) -> BoardTask {
    BoardTask {
        id: TaskId::from(id),
        assignee: Some(assignee.to_owned()),
        status,
        priority,
        created_at: Millis::secs(created),
        started_at: None,
        worker_pid: None,
        claim_lock: None,
    }
}

/// An engine whose largest request in progress the test sets.
fn slots_engine(busy_context: Option<u64>) -> ScriptedEngine {
    ScriptedEngine::new(EngineReading {
        busy_context_max: busy_context,
        ..EngineReading::default()
    })
}

struct Rig {
    board: InMemoryBoard,
    hermes: RecordingDispatcher,
    gpu: ScriptedGpu,
    engine: Option<ScriptedEngine>,
    clock: ManualClock,
    state: GovernorState,
    policy: Policy,
}

impl Rig {
    fn new(tasks: Vec<BoardTask>) -> Rig {
        let board = InMemoryBoard::new(&["big", "small", "rogue"]);
        board.with(|b| b.tasks = tasks);
        Rig {
            hermes: board.dispatcher(),
            board,
            gpu: ScriptedGpu::new(Bytes::gib(24), Bytes::gib(4)),
            engine: None,
            clock: ManualClock::at(Millis::secs(1_000_000)),
            state: GovernorState::default(),
            policy: policy(),
        }
    }

    fn tick_with(&mut self, opts: &TickOptions) -> TickReport {
        let mut board = self.board.clone();
        let mut dispatcher = self.hermes.clone();
        let mut ports = TickPorts {
            clock: &self.clock,
            pools: vec![PoolSource {
                gpu: &mut self.gpu,
                engine: self.engine.as_mut().map(|e| e as &mut dyn EngineTelemetry),
                baseline: None,
            }],
            board: &mut board,
            dispatcher: &mut dispatcher,
            workers: Some(&self.board),
        };
        run_tick(&self.policy, &mut ports, &mut self.state, opts).unwrap()
    }

    fn tick(&mut self) -> TickReport {
        self.tick_with(&TickOptions::default())
    }

    /// A tick with write-ahead to `store` ([`run_tick_saving`]).
    fn tick_saving(&mut self, store: &mut InMemoryState) -> TickReport {
        let mut board = self.board.clone();
        let mut dispatcher = self.hermes.clone();
        let mut ports = TickPorts {
            clock: &self.clock,
            pools: vec![PoolSource {
                gpu: &mut self.gpu,
                engine: None,
                baseline: None,
            }],
            board: &mut board,
            dispatcher: &mut dispatcher,
            workers: Some(&self.board),
        };
        let opts = TickOptions::default();
        run_tick_saving(&self.policy, &mut ports, &mut self.state, store, &opts).unwrap()
    }

    fn calls(&self) -> Vec<String> {
        self.hermes.take_calls()
    }

    fn set(&self, id: &str, status: TaskStatus) {
        self.board.set_status(id, status);
    }
}

#[test]
fn releases_are_saved_in_flight_before_hermes_is_asked_and_none_is_made_if_that_save_fails() {
    let tasks = vec![
        task("t_b1", "big@gpu", TaskStatus::Ready, 5, 1),
        task("t_s1", "small@gpu", TaskStatus::Ready, 0, 2),
    ];
    let mut rig = Rig::new(tasks.clone());
    let mut store = InMemoryState::watching(&rig.hermes);
    let r = rig.tick_saving(&mut store);
    assert_eq!(ids(&r.released), ["t_b1", "t_s1"]);
    let saved: Vec<_> = store
        .ahead
        .iter()
        .map(|a| {
            (
                a.hermes_calls.clone(),
                a.in_flight.clone(),
                a.releasing.clone(),
            )
        })
        .collect();
    assert_eq!(
        saved,
        [(
            Vec::<String>::new(),
            vec![TaskId::from("t_b1"), TaskId::from("t_s1")],
            vec![TaskId::from("t_b1"), TaskId::from("t_s1")]
        )],
        "saved once, both in flight, before any Hermes call"
    );
    assert_eq!(
        rig.calls(),
        ["assign t_b1 big", "assign t_s1 small", "dispatch --max 2"]
    );

    // The store cannot be written: nothing is released, no Hermes call, an error says why.
    let mut rig = Rig::new(tasks);
    let mut store = InMemoryState::watching(&rig.hermes);
    store.save_error = Some("disk full".into());
    let r = rig.tick_saving(&mut store);
    assert!(r.released.is_empty() && r.spawned.is_empty(), "{r:?}");
    assert!(rig.calls().is_empty());
    assert!(rig.state.in_flight.is_empty());
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("nothing released") && e.contains("disk full")),
        "{:?}",
        r.errors
    );
}

fn ids(v: &[TaskId]) -> Vec<&str> {
    v.iter().map(|t| t.as_str()).collect()
}

#[test]
fn releases_what_fits_in_priority_order_and_dispatches_with_a_live_cap() {
    // 20 GiB free: big(8) + big(8) fit, the third big does not, small(3) backfills.
    let mut rig = Rig::new(vec![
        task("t_b1", "big@gpu", TaskStatus::Ready, 5, 1),
        task("t_b2", "big@gpu", TaskStatus::Ready, 5, 2),
        task("t_b3", "big@gpu", TaskStatus::Ready, 5, 3),
        task("t_s1", "small@gpu", TaskStatus::Ready, 0, 4),
    ]);
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_b1", "t_b2", "t_s1"]);
    assert_eq!(
        rig.calls(),
        [
            "assign t_b1 big",
            "assign t_b2 big",
            "assign t_s1 small",
            "dispatch --max 3"
        ]
    );
    assert_eq!(ids(&r.spawned), ["t_b1", "t_b2", "t_s1"]);
    assert!(r.leaks.is_empty());
    assert!(r.in_flight.is_empty());
    assert!(matches!(
        r.decision.held[0].reason,
        HoldReason::VramHeadroom { .. }
    ));
    // Next tick: 19 GiB charged, 1 GiB free: nothing fits, no Hermes process runs.
    let r = rig.tick();
    assert!(r.released.is_empty());
    assert!(rig.calls().is_empty());
    // One big one completes: the third big now fits.
    rig.set("t_b1", TaskStatus::Done);
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_b3"]);
    assert_eq!(rig.calls(), ["assign t_b3 big", "dispatch --max 3"]);
}

#[test]
fn a_tick_with_nothing_to_do_runs_no_hermes_process() {
    let mut rig = Rig::new(vec![task("t_x", "big", TaskStatus::Running, 0, 1)]);
    let r = rig.tick();
    assert!(r.released.is_empty() && r.adopted.is_empty());
    assert!(rig.calls().is_empty());
}

#[test]
fn tasks_created_on_a_profile_are_adopted_into_the_lane_unless_released() {
    let mut rig = Rig::new(vec![
        task("t_run", "big", TaskStatus::Running, 0, 1),
        task("t_run2", "big", TaskStatus::Running, 0, 1),
        task("t_new", "big", TaskStatus::Ready, 0, 2),
        task("t_kid", "small", TaskStatus::Todo, 0, 3),
        task("t_fit", "small", TaskStatus::Ready, 0, 4),
    ]);
    // 16 GiB charged, 4 free: t_new (8) is held and parked, t_fit (3) released as it is
    // (already on its profile: no assign), the todo child parked.
    let r = rig.tick();
    assert_eq!(ids(&r.adopted), ["t_new", "t_kid"]);
    assert_eq!(ids(&r.released), ["t_fit"]);
    assert_eq!(
        rig.calls(),
        [
            "assign t_new big@gpu",
            "assign t_kid small@gpu",
            "dispatch --max 3"
        ]
    );
}

#[test]
fn a_spawn_the_governor_did_not_release_is_a_counted_leak() {
    let mut rig = Rig::new(vec![
        task("t_ok", "small@gpu", TaskStatus::Ready, 0, 1),
        // An ungoverned real profile, higher priority: Hermes spawns it first.
        task("t_rogue", "rogue", TaskStatus::Ready, 9, 1),
    ]);
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_ok"]);
    assert_eq!(ids(&r.leaks), ["t_rogue"]);
    // --max 1 let only the rogue start: the released task stays in flight, charged.
    assert_eq!(ids(&r.in_flight), ["t_ok"]);
    assert_eq!(rig.state.counters.leaks, 1);
    let held = r
        .decision
        .held
        .iter()
        .find(|h| h.id.as_str() == "t_rogue")
        .unwrap();
    assert_eq!(
        held.reason,
        HoldReason::UnknownProfile {
            assignee: "rogue".into()
        }
    );
}

#[test]
fn released_but_unspawned_tasks_stay_charged_and_are_never_released_twice() {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "big@gpu", TaskStatus::Ready, 0, 2),
        task("t_c", "big@gpu", TaskStatus::Ready, 0, 3),
    ]);
    rig.hermes.fail_dispatch(Some(BOOM));
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_a", "t_b"]);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(ids(&r.in_flight), ["t_a", "t_b"]);
    rig.calls();
    // Next tick: both still charged (16 of 20 GiB): t_c held; nothing re-released, and no
    // dispatch before REDISPATCH_AFTER.
    let r = rig.tick();
    assert!(r.released.is_empty());
    assert!(rig.calls().is_empty());
    assert_eq!(r.observed.observation.running.len(), 2);
    // After REDISPATCH_AFTER the stranded releases are dispatched again.
    rig.hermes.fail_dispatch(None);
    rig.clock.advance(REDISPATCH_AFTER);
    let r = rig.tick();
    assert!(r.released.is_empty());
    assert_eq!(rig.calls(), ["dispatch --max 2"]);
    assert_eq!(ids(&r.spawned), ["t_a", "t_b"]);
    assert!(r.leaks.is_empty());
}

#[test]
fn a_daemons_first_tick_dispatches_what_is_in_flight_at_once_as_a_new_decision() {
    // A process killed before its dispatch ran left t_a and t_b in flight, assigned.
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "big@gpu", TaskStatus::Ready, 0, 2),
        task("t_c", "big@gpu", TaskStatus::Ready, 0, 3),
    ]);
    rig.hermes.fail_dispatch(Some(BOOM));
    rig.tick();
    rig.calls();
    rig.hermes.fail_dispatch(None);
    // An ordinary tick waits REDISPATCH_AFTER; a first tick does not, and still starts
    // only the releases (t_c does not fit beside them).
    rig.tick();
    assert!(rig.calls().is_empty());
    let r = rig.tick_with(&TickOptions {
        redispatch: true,
        ..TickOptions::default()
    });
    assert!(r.released.is_empty());
    assert_eq!(rig.calls(), ["dispatch --max 2"]);
    assert_eq!(ids(&r.spawned), ["t_a", "t_b"]);
    // Nothing in flight: a first tick dispatches nothing.
    let r = rig.tick_with(&TickOptions {
        redispatch: true,
        ..TickOptions::default()
    });
    assert!(r.spawned.is_empty() && rig.calls().is_empty(), "{r:?}");
}

#[test]
fn a_task_put_on_the_profile_during_a_release_is_parked_before_dispatch_so_hermes_starts_only_the_release()
 {
    // t_user has a higher priority: were it on `big` at dispatch, Hermes would start it
    // instead of the release (the fault suite saw this with `--max 1`).
    let mut rig = Rig::new(vec![
        task("t_rel", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_user", "triage", TaskStatus::Ready, 9, 2),
    ]);
    rig.hermes.on_next_assign("t_user", "big");
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_rel"]);
    assert_eq!(
        rig.calls(),
        [
            "assign t_rel big",
            "assign t_user big@gpu",
            "dispatch --max 1"
        ]
    );
    assert_eq!(ids(&r.spawned), ["t_rel"]);
    assert!(r.leaks.is_empty() && r.dispatch_held.is_none());
    // It is governed from now on: it waits in the lane until it fits.
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_user"]);
}

#[test]
fn a_redispatch_is_a_new_decision_a_release_that_no_longer_fits_goes_back_to_its_lane() {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "big@gpu", TaskStatus::Ready, 0, 2),
    ]);
    rig.hermes.fail_dispatch(Some(BOOM));
    let r = rig.tick();
    assert_eq!(ids(&r.in_flight), ["t_a", "t_b"]);
    // Meanwhile two tasks were started on `big` outside the governor: 16 GiB running plus
    // 16 GiB in flight is over the 20 GiB ceiling.
    rig.hermes.fail_dispatch(None);
    rig.board
        .push(task("t_out1", "big", TaskStatus::Running, 0, 3));
    rig.board
        .push(task("t_out2", "big", TaskStatus::Running, 0, 4));
    rig.calls();
    rig.clock.advance(REDISPATCH_AFTER);
    let r = rig.tick();
    let b = &r.decision.pools[0];
    assert!(b.projected_after_bytes > b.ceiling_bytes, "{b:?}");
    assert!(r.released.is_empty());
    // Both releases are taken back; no dispatch runs.
    assert_eq!(rig.calls(), ["assign t_a big@gpu", "assign t_b big@gpu"]);
    assert_eq!(ids(&r.withdrawn), ["t_a", "t_b"]);
    assert!(rig.state.in_flight.is_empty());
    assert!(r.spawned.is_empty());
    // One outside task ends: 8 GiB running, 12 free: one of them fits again.
    rig.set("t_out1", TaskStatus::Done);
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_a"]);
    assert_eq!(rig.calls(), ["assign t_a big", "dispatch --max 2"]);
}

#[test]
fn a_pool_that_cannot_be_seen_when_a_redispatch_is_due_takes_its_release_back() {
    let mut rig = Rig::new(vec![task("t_a", "big@gpu", TaskStatus::Ready, 0, 1)]);
    rig.hermes.fail_dispatch(Some(BOOM));
    rig.tick();
    rig.hermes.fail_dispatch(None);
    rig.calls();
    rig.gpu
        .faults
        .set(Some(Fault::Fail("nvml: device lost".into())));
    rig.clock.advance(REDISPATCH_AFTER);
    let r = rig.tick();
    assert_eq!(rig.calls(), ["assign t_a big@gpu"]);
    assert_eq!(ids(&r.withdrawn), ["t_a"]);
    assert!(r.spawned.is_empty());
}

#[test]
fn a_release_that_starts_or_goes_without_the_dispatch_seeing_it_still_gets_its_outcome() {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "small@gpu", TaskStatus::Ready, 0, 2),
    ]);
    // The dispatch ran but its output could not be read: the releases stay in flight.
    rig.hermes.fail_dispatch(Some(BOOM));
    let r = rig.tick();
    assert_eq!(ids(&r.in_flight), ["t_a", "t_b"]);
    // It had started t_a; t_b was moved off its profile by someone.
    rig.set("t_a", TaskStatus::Running);
    rig.board
        .with(|b| b.tasks[1].assignee = Some("triage".into()));
    let r = rig.tick();
    assert_eq!(
        r.observed.settled,
        [
            (TaskId::from("t_a"), "spawned".to_owned()),
            (TaskId::from("t_b"), "gone".to_owned())
        ]
    );
    assert!(rig.state.in_flight.is_empty());
    // t_a is charged as running now, once.
    assert_eq!(r.observed.observation.running.len(), 1);
}

#[test]
fn a_released_task_moved_back_to_a_lane_is_no_longer_in_flight() {
    let mut rig = Rig::new(vec![task("t_a", "big@gpu", TaskStatus::Ready, 0, 1)]);
    rig.hermes.fail_dispatch(Some(BOOM));
    rig.tick();
    assert_eq!(rig.state.in_flight.len(), 1);
    rig.board
        .with(|b| b.tasks[0].assignee = Some("big@gpu".into()));
    rig.hermes.fail_dispatch(None);
    rig.calls();
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_a"]);
}

#[test]
fn a_dry_run_writes_nothing_and_reports_the_same_decision() {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "small", TaskStatus::Ready, 0, 2),
    ]);
    let before = rig.state.clone();
    let r = rig.tick_with(&TickOptions {
        dry_run: true,
        ..TickOptions::default()
    });
    assert!(r.dry_run);
    assert_eq!(ids(&r.released), ["t_a", "t_b"]);
    assert_eq!(r.dispatch_max, Some(2));
    assert!(rig.calls().is_empty());
    assert_eq!(rig.state, before);
    assert!(r.spawned.is_empty());
}

#[test]
fn failed_telemetry_holds_everything_as_stale_but_still_parks_new_tasks() {
    let mut rig = Rig::new(vec![task("t_a", "big", TaskStatus::Ready, 0, 1)]);
    rig.gpu
        .faults
        .set(Some(Fault::Fail("nvml: device lost".into())));
    let r = rig.tick();
    assert!(r.released.is_empty());
    assert!(matches!(
        r.decision.held[0].reason,
        HoldReason::Stale { .. }
    ));
    assert_eq!(r.observed.telemetry_errors.len(), 1);
    assert_eq!(rig.calls(), ["assign t_a big@gpu"]);
}

#[test]
fn a_second_dispatcher_holds_everything_and_writes_nothing() {
    let mut rig = Rig::new(vec![task("t_a", "big", TaskStatus::Ready, 0, 1)]);
    let r = rig.tick_with(&TickOptions {
        dual_dispatcher: Some("gateway pid 7 holds kanban/.dispatcher.lock".into()),
        ..TickOptions::default()
    });
    assert!(matches!(
        r.decision.held[0].reason,
        HoldReason::DualDispatcher { .. }
    ));
    assert!(rig.calls().is_empty());
}

#[test]
fn a_dead_worker_is_reclaimed_its_memory_freed_and_its_task_governed_again() {
    let mut rig = Rig::new(vec![
        task("t_a", "big", TaskStatus::Running, 0, 1),
        task("t_b", "big", TaskStatus::Running, 0, 2),
        task("t_c", "big@gpu", TaskStatus::Ready, 0, 3),
        task("t_d", "big@gpu", TaskStatus::Ready, 0, 4),
    ]);
    // 16 of 20 GiB charged: nothing fits.
    assert!(rig.tick().released.is_empty());
    rig.calls();
    rig.board.with(|b| b.dead = vec![TaskId::from("t_a")]);
    // t_a's worker died: 8 GiB free again. The oldest waiting task (t_a itself, created
    // first) gets the room: reclaimed and released as it is, on its profile.
    let r = rig.tick();
    assert_eq!(ids(&r.reclaimed), ["t_a"]);
    assert_eq!(ids(&r.released), ["t_a"]);
    assert_eq!(rig.calls(), ["reclaim t_a", "dispatch --max 2"]);
    assert_eq!(rig.state.counters.reclaimed, 1);
}

/// 20 GiB for tasks: two bigs (16) spawned and seen running with their workers, a third
/// waiting; then `t_a` completes while its worker lives on (its last model call).
fn t_a_done_with_its_worker_alive() -> Rig {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "big@gpu", TaskStatus::Ready, 0, 2),
        task("t_c", "big@gpu", TaskStatus::Ready, 0, 3),
    ]);
    assert_eq!(ids(&rig.tick().spawned), ["t_a", "t_b"]);
    // Known from the dispatching tick on, before any tick has seen them running.
    assert_eq!(rig.state.workers.len(), 2);
    rig.calls();
    rig.board.with(|b| b.lingering = vec![TaskId::from("t_a")]);
    rig.set("t_a", TaskStatus::Done);
    rig.clock.advance(Millis::secs(1));
    rig
}

#[test]
fn a_finished_tasks_worker_stays_charged_until_its_process_exits() {
    let mut rig = t_a_done_with_its_worker_alive();
    let r = rig.tick();
    assert_eq!(ids(&r.observed.finishing), ["t_a"]);
    assert!(r.released.is_empty(), "{:?}", r.decision);
    assert!(matches!(
        r.decision.held[0].reason,
        HoldReason::VramHeadroom { .. }
    ));
    assert!(r.summary().contains("finishing 1"), "{}", r.summary());
    assert!(rig.calls().is_empty());
    // The worker exits: its room goes to t_c, and it is forgotten.
    rig.board.with(|b| b.lingering.clear());
    let r = rig.tick();
    assert!(r.observed.finishing.is_empty());
    assert_eq!(ids(&r.released), ["t_c"]);
    assert!(!rig.state.workers.contains_key(&TaskId::from("t_a")));
}

/// The pass-through's view of `t_a`: `ended` requests over, `in_flight` in flight.
fn t_a_through_the_proxy(ended: u64, in_flight: u32) -> TickOptions {
    let t = learning::ProxyTask {
        peak: learning::MeasuredPeak {
            tokens: 4096,
            exact: true,
        },
        in_flight,
        ended,
    };
    TickOptions {
        proxy: Some(BTreeMap::from([(TaskId::from("t_a"), t)])),
        ..TickOptions::default()
    }
}

#[test]
fn with_the_proxy_a_finished_tasks_charge_ends_when_its_last_call_ends_not_its_process() {
    let mut rig = t_a_done_with_its_worker_alive();
    // First seen done: one call over (the tool call), the last one in flight.
    let r = rig.tick_with(&t_a_through_the_proxy(1, 1));
    assert_eq!(ids(&r.observed.finishing), ["t_a"]);
    assert!(r.released.is_empty(), "{:?}", r.decision);
    // Nothing in flight but no call ended since: the last call has not come yet.
    let r = rig.tick_with(&t_a_through_the_proxy(1, 0));
    assert_eq!(ids(&r.observed.finishing), ["t_a"]);
    assert!(r.released.is_empty(), "{:?}", r.decision);
    // One more ended, none in flight: its room goes to t_c while the process still lives.
    let r = rig.tick_with(&t_a_through_the_proxy(2, 0));
    assert!(r.observed.finishing.is_empty());
    assert_eq!(ids(&r.released), ["t_c"]);
    assert!(!rig.state.workers.contains_key(&TaskId::from("t_a")));
}

#[test]
fn a_finished_task_the_proxy_never_saw_stays_charged_until_its_process_exits() {
    let mut rig = t_a_done_with_its_worker_alive();
    let mut opts = t_a_through_the_proxy(5, 0);
    opts.proxy = Some(BTreeMap::new());
    assert!(rig.tick_with(&opts).released.is_empty());
    assert!(rig.tick_with(&opts).released.is_empty());
    rig.board.with(|b| b.lingering.clear());
    assert_eq!(ids(&rig.tick_with(&opts).released), ["t_c"]);
}

#[test]
fn a_running_tasks_context_the_proxy_measured_reaches_the_decision() {
    let mut rig = Rig::new(vec![
        task("t_r", "big", TaskStatus::Running, 0, 1),
        task("t_s", "big", TaskStatus::Running, 0, 2),
    ]);
    let proxied = |tokens: u64, exact: bool| {
        let t = learning::ProxyTask {
            peak: learning::MeasuredPeak { tokens, exact },
            in_flight: 1,
            ended: 1,
        };
        TickOptions {
            proxy: Some(BTreeMap::from([(TaskId::from("t_r"), t)])),
            ..TickOptions::default()
        }
    };
    let context = |r: &TickReport, id: &str| {
        r.observed
            .observation
            .running
            .iter()
            .find(|t| t.id.as_str() == id)
            .map(|t| t.context_tokens)
    };
    let r = rig.tick_with(&proxied(5_000, true));
    assert_eq!(context(&r, "t_r"), Some(Some(5_000)));
    assert_eq!(context(&r, "t_s"), Some(None), "the proxy never saw it");
    // Its peak only grows (an idle task the proxy forgot keeps what it reached); an estimate
    // from bytes is not a context the decision may lean on.
    let r = rig.tick_with(&TickOptions::default());
    assert_eq!(context(&r, "t_r"), Some(Some(5_000)));
    rig.state = GovernorState::default();
    let r = rig.tick_with(&proxied(7_000, false));
    assert_eq!(context(&r, "t_r"), Some(None));
}

#[test]
fn a_running_tasks_calls_in_flight_the_proxy_counts_reach_the_decision() {
    // Issue 14: a slot pool charges a running task the calls it has in flight, so the count
    // must reach the observation; a task the proxy never saw stays `None` (its declared slots).
    let mut rig = Rig::new(vec![
        task("t_r", "big", TaskStatus::Running, 0, 1),
        task("t_s", "big", TaskStatus::Running, 0, 2),
    ]);
    let proxied = |in_flight: u32| {
        let t = learning::ProxyTask {
            peak: learning::MeasuredPeak {
                tokens: 1_000,
                exact: true,
            },
            in_flight,
            ended: 1,
        };
        TickOptions {
            proxy: Some(BTreeMap::from([(TaskId::from("t_r"), t)])),
            ..TickOptions::default()
        }
    };
    let calls = |r: &TickReport, id: &str| {
        r.observed
            .observation
            .running
            .iter()
            .find(|t| t.id.as_str() == id)
            .map(|t| t.requests_in_flight)
    };
    let r = rig.tick_with(&proxied(0));
    assert_eq!(calls(&r, "t_r"), Some(Some(0)));
    assert_eq!(calls(&r, "t_s"), Some(None), "the proxy never saw it");
    let r = rig.tick_with(&proxied(2));
    assert_eq!(calls(&r, "t_r"), Some(Some(2)));
    let r = rig.tick_with(&TickOptions::default());
    assert_eq!(calls(&r, "t_r"), Some(None), "no proxy: not seen");
}

#[test]
fn a_worker_lingering_past_the_grace_is_no_longer_charged() {
    let mut rig = t_a_done_with_its_worker_alive();
    assert!(rig.tick().released.is_empty());
    rig.clock.advance(FINISHING_GRACE);
    assert!(rig.tick().released.is_empty(), "still within the grace");
    rig.clock.advance(Millis(1));
    let r = rig.tick();
    assert_eq!(ids(&r.released), ["t_c"]);
    assert!(!rig.state.workers.contains_key(&TaskId::from("t_a")));
}

#[test]
fn a_dry_run_charges_a_finishing_worker_too_and_changes_no_state() {
    let mut rig = t_a_done_with_its_worker_alive();
    let before = rig.state.clone();
    let r = rig.tick_with(&TickOptions {
        dry_run: true,
        ..TickOptions::default()
    });
    assert_eq!(ids(&r.observed.finishing), ["t_a"]);
    assert!(r.released.is_empty());
    assert_eq!(rig.state, before);
}

#[test]
fn waiting_times_are_remembered_for_max_wait() {
    let mut rig = Rig::new(vec![
        task("t_r", "big", TaskStatus::Running, 0, 1),
        task("t_r2", "big", TaskStatus::Running, 0, 1),
        task("t_w", "big@gpu", TaskStatus::Ready, 0, 2),
    ]);
    let t0 = rig.clock.now();
    rig.tick();
    rig.clock.advance(Millis::secs(30));
    let r = rig.tick();
    let w = &r.observed.observation.waiting[0];
    assert_eq!(w.waiting_since, t0);
    assert_eq!(rig.state.first_seen_waiting.len(), 1);
    rig.set("t_w", TaskStatus::Done);
    rig.tick();
    assert!(rig.state.first_seen_waiting.is_empty());
}

#[test]
fn todo_tasks_wait_on_their_parent() {
    let mut rig = Rig::new(vec![task("t_kid", "small@gpu", TaskStatus::Todo, 0, 1)]);
    let r = rig.tick();
    assert_eq!(r.decision.held[0].reason, HoldReason::WaitingOnParent);
    assert!(rig.calls().is_empty());
}

#[test]
fn the_baseline_is_learned_while_nothing_governed_runs() {
    let mut rig = Rig::new(vec![]);
    rig.gpu.used = Bytes::gib(5);
    rig.tick();
    assert_eq!(rig.state.observed_baseline["default"], Bytes::gib(5));
    rig.board
        .with(|b| b.tasks = vec![task("t_r", "big", TaskStatus::Running, 0, 1)]);
    rig.gpu.used = Bytes::gib(9);
    rig.tick();
    assert_eq!(rig.state.observed_baseline["default"], Bytes::gib(5));
}

#[test]
fn a_task_whose_worker_dies_twice_is_blocked_not_retried_forever() {
    let mut rig = Rig::new(vec![
        task("t_a", "big", TaskStatus::Running, 0, 1),
        task("t_b", "big@gpu", TaskStatus::Ready, 0, 2),
    ]);
    rig.board.with(|b| b.dead = vec![TaskId::from("t_a")]);
    let r = rig.tick();
    assert_eq!(ids(&r.reclaimed), ["t_a"]);
    assert_eq!(ids(&r.released), ["t_a", "t_b"]);
    rig.calls();
    // Its second worker dies too: blocked for a human, and its room goes to nobody else
    // this tick (t_b already runs; nothing waits).
    let r = rig.tick();
    assert!(r.reclaimed.is_empty());
    assert_eq!(ids(&r.blocked), ["t_a"]);
    assert_eq!(rig.calls(), ["block t_a"]);
    assert_eq!(rig.state.counters.blocked, 1);
    assert!(rig.state.worker_deaths.is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Event {
        /// A new task: big or small, in the lane or on the profile, priority.
        Create {
            big: bool,
            lane: bool,
            priority: i64,
        },
        /// The n-th running task completes.
        Complete(usize),
        /// The n-th running task's worker dies.
        Die(usize),
        /// The next dispatch fails.
        FailDispatch,
        /// Time passes.
        Wait(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (any::<bool>(), any::<bool>(), 0i64..3).prop_map(|(big, lane, priority)| {
                Event::Create {
                    big,
                    lane,
                    priority,
                }
            }),
            (0usize..8).prop_map(Event::Complete),
            (0usize..8).prop_map(Event::Die),
            Just(Event::FailDispatch),
            (1u64..120).prop_map(Event::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// For any sequence of board events, after every tick: what runs plus what is in
        /// flight fits under the ceiling, nothing in flight is released again, and with only
        /// governed tasks on the board nothing leaks.
        #[test]
        fn running_and_in_flight_never_exceed_the_ceiling(events in proptest::collection::vec(event(), 1..40)) {
            let mut rig = Rig::new(vec![]);
            let mut n = 0;
            for e in events {
                match e {
                    Event::Create { big, lane, priority } => {
                        n += 1;
                        let p = if big { "big" } else { "small" };
                        let a = if lane { format!("{p}@gpu") } else { p.to_owned() };
                        rig.board.push(task(&format!("t_{n:03}"), &a, TaskStatus::Ready, priority, n));
                    }
                    Event::Complete(i) | Event::Die(i) => {
                        rig.board.with(|w| {
                        let running: Vec<TaskId> = w.tasks.iter().filter(|t| t.status == TaskStatus::Running).map(|t| t.id.clone()).collect();
                        if let Some(id) = running.get(i % running.len().max(1)) {
                            if matches!(e, Event::Complete(_)) {
                                w.tasks.iter_mut().find(|t| &t.id == id).unwrap().status = TaskStatus::Done;
                            } else {
                                w.dead.push(id.clone());
                            }
                        }
                        });
                    }
                    Event::FailDispatch => rig.hermes.fail_dispatch(Some(BOOM)),
                    Event::Wait(s) => rig.clock.advance(Millis::secs(s)),
                }
                let in_flight_before: BTreeSet<TaskId> = rig.state.in_flight.keys().cloned().collect();
                let r = rig.tick();
                rig.hermes.fail_dispatch(None);
                for id in &r.released {
                    prop_assert!(!in_flight_before.contains(id), "{id} released twice");
                }
                prop_assert!(r.leaks.is_empty(), "leaks {:?}", r.leaks);
                let (charged, tasks) = rig.board.with(|w| {
                let charged: u64 = w
                    .tasks
                    .iter()
                    .filter(|t| t.status == TaskStatus::Running && !w.dead.contains(&t.id))
                    .map(|t| t.id.clone())
                    .chain(rig.state.in_flight.keys().cloned())
                    .collect::<BTreeSet<_>>()
                    .iter()
                    .map(|id| {
                        let t = w.tasks.iter().find(|t| &t.id == id).unwrap();
                        if t.assignee.as_deref() == Some("big") { 8 } else { 3 }
                    })
                    .sum();
                (charged, w.tasks.clone())
                });
                prop_assert!(charged <= 20, "{charged} GiB charged of 20: {:?}", tasks);
            }
        }
    }
}

#[test]
fn what_finished_tasks_really_reached_lowers_a_learned_footprint_and_more_tasks_start() {
    // `big` declares 8192 tokens per request at 1 MiB per token (8 GiB); its tasks really
    // reach about 1000. With `footprint = "learned"` and 20 GiB for tasks, two start while
    // nothing is known; after eight finished tasks taught their peaks, more do.
    let mut rig = Rig::new(vec![]);
    let p = &mut rig.policy.profiles[0];
    p.declared = WorstCase {
        kv_bytes: Bytes::mib(8192),
        extra_bytes: Bytes(0),
        kv_tokens: 8192,
        slots: 1,
        request_tokens: 8192,
        kv_bytes_per_token: 1 << 20,
    };
    p.footprint = crate::governor::FootprintMode::Learned;
    rig.engine = Some(slots_engine(Some(0)));
    for i in 0..8 {
        let id = format!("t_{i}");
        rig.board
            .push(task(&id, "big@gpu", TaskStatus::Ready, 0, i));
        let r = rig.tick();
        assert_eq!(ids(&r.spawned), vec![id.as_str()]);
        rig.engine.as_mut().unwrap().reading.busy_context_max = Some(900 + 20 * i);
        rig.tick();
        rig.engine.as_mut().unwrap().reading.busy_context_max = Some(0);
        rig.set(&id, TaskStatus::Done);
        let r = rig.tick();
        assert_eq!(r.observed.peaks.len(), 1, "{:?}", r.observed.peaks);
        assert_eq!(r.observed.peaks[0].tokens, 900 + 20 * i);
    }
    let learned = r_learned(&rig);
    assert!((1040..2000).contains(&learned), "{learned}");

    for i in 0..12 {
        let id = format!("u_{i}");
        rig.board
            .push(task(&id, "big@gpu", TaskStatus::Ready, 0, 100 + i));
    }
    let r = rig.tick();
    // 20 GiB / ~1.1 GiB each: far more than the two the declaration allows.
    assert!(r.spawned.len() >= 10, "{:?}", r.decision);
}

fn r_learned(rig: &Rig) -> u64 {
    crate::app::learning::report(&rig.policy, &rig.state)[0]
        .learned_tokens
        .expect("eight samples")
}

#[test]
fn tasks_running_beside_another_profile_teach_nothing() {
    let mut rig = Rig::new(vec![
        task("t_a", "big@gpu", TaskStatus::Ready, 0, 1),
        task("t_b", "small@gpu", TaskStatus::Ready, 0, 2),
    ]);
    rig.engine = Some(slots_engine(Some(700)));
    rig.tick();
    rig.tick();
    rig.set("t_a", TaskStatus::Done);
    rig.set("t_b", TaskStatus::Done);
    let r = rig.tick();
    assert!(r.observed.peaks.is_empty());
    assert!(rig.state.footprints.is_empty());
}

#[test]
fn an_engine_that_does_not_expose_request_context_teaches_nothing() {
    let mut rig = Rig::new(vec![task("t_a", "big@gpu", TaskStatus::Ready, 0, 1)]);
    rig.engine = Some(slots_engine(None));
    rig.tick();
    let r = rig.tick();
    assert_eq!(r.observed.busy_context, None);
    assert!(rig.state.task_peaks[&TaskId::from("t_a")].tainted);
    rig.set("t_a", TaskStatus::Done);
    assert!(rig.tick().observed.peaks.is_empty());
    assert!(rig.state.footprints.is_empty());
}
