//! The whole daemon ([`serve`]) over the fakes ([`crate::fakes`]): a real `/metrics` listener
//! on port 0, an in-memory board, a scripted GPU, an in-memory state store and a shutdown
//! future the test fires. Nothing sleeps to wait: the test polls the fakes, with a generous
//! deadline as a bound only.

use super::*;
use crate::adapters::telemetry::PoolTelemetry;
use crate::config::{self, ConfigArgs};
use crate::fakes::{InMemoryBoard, InMemoryState, JournalRow, ManualClock, ScriptedGpu};
use crate::governor::HoldReason;
use crate::ports::BoardTask;
use std::path::Path;

/// 24 GiB under Ollama (KV allocated per request: charged in GPU bytes), headroom 0.9 and a
/// 1 GiB reserve: a 20.6 GiB ceiling. The weights hold 4 GiB, so 16.6 GiB is left for tasks,
/// and a coder's worst case is 128 KiB x 32768 tokens = 4 GiB: four fit, never five.
const CONFIG: &str = r#"
[hermes]
home = "/nonexistent/hermes"
bin = "/nonexistent/hermes/bin/hermes"

[gpu]
telemetry = "static"
memory_total = "24GiB"
baseline = "4GiB"
headroom = 0.9
reserve = "1GiB"

[engine]
kind = "ollama"
url = "none"

[[profiles]]
name = "coder"
kv_bytes_per_token = 131072
max_context_tokens = 32768
"#;

/// The longest any wait may take; a bound, not a wait: the test goes on as soon as it sees
/// what it waits for.
const DEADLINE: Duration = Duration::from_secs(30);

/// A ready task on the coder's lane.
fn waiting(id: &str, priority: i64, created_at: Millis) -> BoardTask {
    BoardTask {
        id: TaskId::from(id),
        assignee: Some("coder@gpu".into()),
        status: TaskStatus::Ready,
        priority,
        created_at,
        started_at: None,
        worker_pid: None,
        claim_lock: None,
    }
}

/// Poll `done` until it holds; fail naming `what` after [`DEADLINE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET `path` from the daemon: the body of a 200.
async fn get(addr: SocketAddr, path: &str) -> String {
    let url = format!("http://{addr}{path}");
    let r = crate::adapters::http::fetch(&url, DEADLINE).await.unwrap();
    assert_eq!(r.status, 200, "{url}: {}", r.body);
    r.body
}

fn sorted(ids: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_daemon_over_fakes_releases_what_fits_holds_the_rest_serves_it_and_saves_on_shutdown() {
    let cfg = config::load_str(
        CONFIG,
        Path::new("/t/governor.toml"),
        &ConfigArgs::default(),
        &|_: &str| None,
    )
    .unwrap();
    let setup = setup::from_config(cfg).unwrap();
    let board = InMemoryBoard::new(&["coder"]);
    // Hermes's order, priority desc then created asc: t2 t4 t5 t1 | t3 t6.
    let tasks = [
        ("t1", 0),
        ("t2", 5),
        ("t3", 0),
        ("t4", 5),
        ("t5", 1),
        ("t6", 0),
    ];
    for (i, (id, priority)) in (0..).zip(tasks) {
        board.push(waiting(id, priority, Millis(900_000 + i)));
    }
    let dispatcher = board.dispatcher();
    let store = Arc::new(Mutex::new(InMemoryState::watching(&dispatcher)));
    let pool = &setup.config.pools[0];
    let telemetry = PoolTelemetry {
        gpu: Box::new(ScriptedGpu::new(Bytes::gib(24), Bytes::gib(4))),
        engine: None,
        baseline: None,
    };
    let pools = vec![SampledPool::new(
        &pool.name,
        "static",
        None,
        telemetry,
        pool.gpu.baseline,
        Millis::from_duration(pool.engine.max_staleness),
    )];
    let ports = Ports {
        clock: Arc::new(ManualClock::at(Millis(1_000_000))),
        pools: Arc::new(pools),
        board: Box::new(board.clone()),
        board_watch: Box::new(board.clone()),
        dispatcher: Box::new(dispatcher.clone()),
        store: Box::new(store.clone()),
        workers: Some(Box::new(board.clone())),
        dual_dispatcher: Box::new(|| None),
    };
    let settings = Settings {
        setup,
        proxy_signal: false,
        sample_every: Duration::from_millis(20),
        tick_every: Duration::from_millis(50),
        proxy: None,
    };
    let listener = metrics_http::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(serve(settings, ports, listener, async move {
        let _ = stopped.await;
    }));

    let released = ["t1", "t2", "t4", "t5"];
    let running = || {
        board.with(|b| {
            let ids = b.tasks.iter().filter(|t| t.status == TaskStatus::Running);
            sorted(ids.map(|t| &t.id))
        })
    };
    // A tick after the releases, which sees them running (none left in flight).
    until("a tick that sees the released tasks running", || {
        let s = lock(&store);
        let seen = |r: &TickReport| r.observed.board_running > 0 && r.observed.in_flight.is_empty();
        s.journal.iter().any(seen)
    })
    .await;
    assert_eq!(running(), released);
    let assigned = dispatcher.calls().into_iter().filter_map(|c| {
        c.strip_prefix("assign ")
            .and_then(|c| c.strip_suffix(" coder"))
            .map(str::to_owned)
    });
    assert_eq!(sorted(assigned), released, "{:?}", dispatcher.calls());

    let status: serde_json::Value = serde_json::from_str(&get(addr, "/status").await).unwrap();
    let held = &status["last_tick"]["decision"]["held"];
    let held_ids = held
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap());
    assert_eq!(sorted(held_ids), ["t3", "t6"], "{status:#}");
    for h in held.as_array().unwrap() {
        assert_eq!(h["reason"]["kind"], "vram_headroom", "{h}");
    }
    assert_eq!(status["shutting_down"], false);
    // The tick seen in the journal may not be recorded for /status yet; the one before it is.
    assert!(status["ticks"].as_u64().unwrap() >= 1, "{status:#}");
    let metrics = get(addr, "/metrics").await;
    for line in [
        "kanban_governor_tasks_running{profile=\"coder\"} 4",
        "kanban_governor_tasks_waiting{profile=\"coder\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }

    stop.send(()).unwrap();
    let result = tokio::time::timeout(DEADLINE, daemon).await;
    result.expect("the daemon stops").unwrap().unwrap();

    // Nothing more was released after the first four, and the state saved on the way out
    // charges them.
    assert_eq!(running(), released);
    let s = lock(&store);
    let saved = s.state.as_ref().unwrap();
    assert_eq!(sorted(&saved.last_running), released);
    // Every tick saved and journaled, the last one too.
    assert_eq!(usize::try_from(s.saves).unwrap(), s.journal.len());
    let last = s.journal.last().unwrap();
    assert!(last.released.is_empty(), "{last:?}");
    let holds = last.decision.held.iter();
    assert!(
        holds
            .map(|h| &h.reason)
            .all(|r| matches!(r, HoldReason::VramHeadroom { .. })),
        "{last:?}"
    );
    // One journal row per release, each spawned.
    let rows: Vec<&JournalRow> = s.releases.iter().collect();
    assert_eq!(sorted(rows.iter().map(|r| &r.task)), released);
    for r in rows {
        assert_eq!(r.outcome.as_deref(), Some("spawned"), "{r:?}");
    }
}
