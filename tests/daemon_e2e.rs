//! End-to-end proof of `kanban-governor run`: real Hermes workers (hermes-agent 0.19.0) on a
//! real board call a fake *engine* (tests/common/fake_engine.rs) that accounts KV memory per
//! in-flight request, refuses requests that would overflow it, serves vLLM-style `/metrics`,
//! and publishes its memory to the fake `libnvidia-ml.so` the daemon reads through the real
//! nvml-wrapper code path.
//!
//! (a) plain `hermes kanban dispatch` overflows the engine; (b) the daemon on the same
//! workload never does and finishes every task; then NVML failing mid-run, the engine going
//! away and coming back, stale engine metrics, and SIGTERM in the middle of a tick.
//!
//! Tests run one at a time (Hermes workers are CPU-heavy). Every wait polls with a deadline.

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/fake_engine.rs"]
mod fake_engine;

use common::{Hermes, wait_for};
use daemon::{Daemon, DaemonConfig, metric};
use fake_engine::{EngineSpec, FakeEngine, fake_nvml_lib};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const GIB: u64 = 1 << 30;
/// KV bytes per token of the fake model (a Llama-3.1-8B-like 128 KiB).
const BYTES_PER_TOKEN: u64 = 128 * 1024;
/// The profile's declared worst case per task, in tokens (above any one Hermes request).
const DECLARED_TOKENS: u64 = 24_576;
/// The engine's KV pool: room for 3 declared worst cases at headroom 1.0.
const CAPACITY_TOKENS: u64 = 3 * DECLARED_TOKENS + 1024;
const TASKS: usize = 8;

fn engine(dir: &Path, delay: Duration) -> FakeEngine {
    FakeEngine::start(EngineSpec {
        capacity_tokens: CAPACITY_TOKENS,
        bytes_per_token: BYTES_PER_TOKEN,
        weights_bytes: 16 * GIB,
        total_bytes: 24 * GIB,
        first_turn_delay: delay,
        nvml_state: Some(dir.join("nvml.state")),
    })
}

/// The daemon's `[gpu]`/`[engine]`: NVML (the fake library), the fake engine as vLLM.
fn gpu_engine(e: &FakeEngine, max_staleness: &str) -> String {
    format!(
        "[gpu]\ntelemetry = \"nvml\"\nheadroom = 1.0\nreserve = \"512MiB\"\n\n[engine]\nkind = \"vllm\"\nurl = {:?}\nmax_staleness = {max_staleness:?}",
        e.url()
    )
}

fn nvml_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "KANBAN_GOVERNOR_NVML_LIB".into(),
            fake_nvml_lib().display().to_string(),
        ),
        (
            "FAKE_NVML_STATE".into(),
            dir.join("nvml.state").display().to_string(),
        ),
    ]
}

fn start_daemon(cfg: &DaemonConfig, dir: &Path, args: &[&str]) -> Daemon {
    let env = nvml_env(dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(cfg.command(args, &env))
}

fn create_tasks(h: &Hermes, n: usize, assignee: &str) -> Vec<String> {
    (0..n)
        .map(|i| h.create(&format!("task {i}"), assignee, 0, &[]))
        .collect()
}

#[test]
fn plain_dispatch_overflows_the_engine_and_the_daemon_on_the_same_workload_never_does() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();

    // (a) What users run today: every ready task spawns at once. Its engine lives in a
    // directory of its own: answers still in progress after its workers are killed must not
    // publish its memory into the NVML state the daemon reads in (b).
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_engine = engine(plain_dir.path(), Duration::from_secs(3));
    let h = Hermes::with_base_url(&["agent"], &plain_engine.base_url());
    create_tasks(&h, TASKS, "agent");
    h.run(&["kanban", "dispatch", "--json"]);
    wait_for(Duration::from_secs(120), "the engine to overflow", || {
        (plain_engine.stats().overflows > 0).then_some(())
    });
    let plain = plain_engine.stats();
    drop(h); // kills its workers
    assert!(plain.overflows > 0, "{plain:?}");

    // (b) The governor on the same workload.
    let e = engine(dir.path(), Duration::from_secs(3));
    let h = Hermes::with_base_url(&["agent"], &e.base_url());
    let ids = create_tasks(&h, TASKS, "agent");
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "30s",
        &gpu_engine(&e, "5s"),
        &[("agent", "128KiB", DECLARED_TOKENS)],
    );
    let mut d = start_daemon(&cfg, dir.path(), &[]);
    let mut peak_running = 0;
    wait_for(Duration::from_secs(300), "every task done", || {
        let tasks = h.tasks();
        let running = tasks.iter().filter(|t| t.status == "running").count();
        assert!(running <= 3, "{running} running: {tasks:?}");
        peak_running = peak_running.max(running);
        assert_eq!(
            e.stats().overflows,
            0,
            "the engine overflowed: {:?}",
            e.stats()
        );
        tasks.iter().all(|t| t.status == "done").then_some(())
    });
    let stats = e.stats();
    eprintln!("plain dispatch: {plain:?}\ngoverned: {stats:?}");
    assert_eq!(stats.overflows, 0, "{stats:?}");
    assert!(
        stats.largest_request_tokens <= DECLARED_TOKENS,
        "a Hermes request took {} tokens, more than the declared {DECLARED_TOKENS}: the test's premise is wrong",
        stats.largest_request_tokens
    );
    assert!(
        peak_running >= 2,
        "tasks ran side by side: {peak_running}; log:\n{}",
        d.log()
    );
    let m = wait_for(
        Duration::from_secs(20),
        "metrics after the last task",
        || {
            let m = d.metrics();
            (metric(&m, "kanban_governor_tasks_waiting", "profile=\"agent\"") == Some(0.0)
                && metric(&m, "kanban_governor_tasks_running", "profile=\"agent\"") == Some(0.0))
            .then_some(m)
        },
    );
    eprintln!("{m}");
    assert_eq!(
        metric(
            &m,
            "kanban_governor_dispatch_outcomes_total",
            "outcome=\"released\""
        ),
        Some(ids.len() as f64),
        "{m}"
    );
    assert_eq!(metric(&m, "kanban_governor_leaks_total", ""), Some(0.0));
    assert_eq!(
        metric(&m, "kanban_governor_kv_ceiling_tokens", "pool=\"default\""),
        Some(CAPACITY_TOKENS as f64)
    );
    assert!(
        metric(
            &m,
            "kanban_governor_decisions_total",
            "reason=\"kv_headroom\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "kanban_governor_gpu_total_bytes", "pool=\"default\""),
        Some((24 * GIB) as f64)
    );
    assert_eq!(
        metric(
            &m,
            "kanban_governor_telemetry_up",
            "pool=\"default\",source=\"engine\""
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "kanban_governor_latency_ttft_seconds",
            "pool=\"default\""
        )
        .is_some(),
        "{m}"
    );
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
}

/// `/status` `ticks`.
fn ticks(d: &Daemon) -> u64 {
    d.status()["ticks"].as_u64().unwrap()
}

/// Wait until the pool holds for a reason containing `why`.
fn wait_holding(d: &Daemon, why: &str) -> String {
    wait_for(
        Duration::from_secs(30),
        &format!("the pool to hold: {why}"),
        || {
            let s = d.status();
            s["pools"][0]["holding"]
                .as_str()
                .filter(|h| h.contains(why))
                .map(str::to_owned)
        },
    )
}

/// Create a task while the pool holds; check that two more complete ticks (both of which
/// saw it) held it as stale and nothing was released.
fn held_while_blind(h: &Hermes, d: &Daemon, title: &str) -> String {
    let id = h.create(title, "agent", 0, &[]);
    let released_before = released(d);
    let seen_at = wait_for(Duration::from_secs(30), "a tick that saw the task", || {
        let s = d.status();
        let held = s["last_tick"]["decision"]["held"].as_array()?;
        held.iter()
            .any(|x| x["id"] == id.as_str())
            .then(|| s["ticks"].as_u64().unwrap())
    });
    wait_for(Duration::from_secs(30), "two more ticks", || {
        (ticks(d) >= seen_at + 2).then_some(())
    });
    let s = d.status();
    let held = s["last_tick"]["decision"]["held"].as_array().unwrap();
    let reason = held.iter().find(|x| x["id"] == id.as_str()).unwrap();
    assert_eq!(reason["reason"]["kind"], "stale", "{s}");
    assert_eq!(released(d), released_before, "{s}");
    let t = h.task(&id);
    assert_eq!(t.status, "ready", "{t:?}");
    assert_ne!(
        t.assignee.as_deref(),
        Some("agent"),
        "still in its lane: {t:?}"
    );
    id
}

fn released(d: &Daemon) -> f64 {
    metric(
        &d.metrics(),
        "kanban_governor_dispatch_outcomes_total",
        "outcome=\"released\"",
    )
    .unwrap_or(0.0)
}

fn wait_done(h: &Hermes, id: &str) {
    wait_for(Duration::from_secs(120), &format!("{id} done"), || {
        (h.task(id).status == "done").then_some(())
    });
}

#[test]
fn failing_missing_or_stale_telemetry_holds_every_release_until_it_is_fresh_again() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), Duration::from_millis(200));
    let h = Hermes::with_base_url(&["agent"], &e.base_url());
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "1s",
        &gpu_engine(&e, "1s"),
        &[("agent", "128KiB", DECLARED_TOKENS)],
    );
    let d = start_daemon(&cfg, dir.path(), &["--sample-every", "200ms"]);
    wait_for(
        Duration::from_secs(30),
        "a first tick with fresh telemetry",
        || {
            let s = d.status();
            (s["ticks"].as_u64() >= Some(1) && s["pools"][0]["holding"].is_null()).then_some(())
        },
    );

    // 1. NVML fails mid-run (GPU lost): hold, say why, resume when it reads again.
    e.set_nvml_extra("error memory_info 15\n");
    let why = wait_holding(&d, "GPU");
    assert!(why.contains("GPU"), "{why}");
    let m = d.metrics();
    assert_eq!(
        metric(
            &m,
            "kanban_governor_telemetry_up",
            "pool=\"default\",source=\"gpu\""
        ),
        Some(0.0),
        "{m}"
    );
    let a = held_while_blind(&h, &d, "during the NVML failure");
    assert_eq!(
        metric(
            &d.metrics(),
            "kanban_governor_pool_holding",
            "pool=\"default\""
        ),
        Some(1.0)
    );
    assert!(d.log().contains("telemetry failed"), "{}", d.log());
    e.set_nvml_extra("");
    wait_done(&h, &a);

    // 2. The engine goes away (connection refused) and comes back on the same port.
    e.stop();
    let why = wait_holding(&d, "engine");
    assert!(why.contains("connect"), "{why}");
    let b = held_while_blind(&h, &d, "while the engine is away");
    e.restart();
    wait_done(&h, &b);

    // 3. The engine's metrics come late (3 s per scrape, max_staleness 1 s): nothing is
    // released on old numbers, and releases resume once they are fresh.
    e.set_metrics_delay(Duration::from_secs(3));
    let why = wait_holding(&d, "old");
    assert!(why.contains("max_staleness 1s"), "{why}");
    let c = held_while_blind(&h, &d, "while the metrics are stale");
    e.set_metrics_delay(Duration::ZERO);
    wait_done(&h, &c);
    assert_eq!(e.stats().overflows, 0);
    let m = d.metrics();
    assert!(
        metric(&m, "kanban_governor_decisions_total", "reason=\"stale\"").unwrap() >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "kanban_governor_telemetry_errors_total",
            "pool=\"default\",source=\"gpu\""
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
}

#[test]
fn sigterm_during_a_tick_finishes_the_release_and_exits_0() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), Duration::from_millis(200));
    let h = Hermes::with_base_url(&["agent"], &e.base_url());
    // A hermes that blocks `kanban dispatch` while the gate file exists (a slow dispatch).
    let gate = dir.path().join("gate");
    let entered = dir.path().join("entered");
    let wrapper = dir.path().join("hermes");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = kanban ] && [ \"$2\" = dispatch ] && [ -e {gate:?} ]; then\n  touch {entered:?}\n  while [ -e {gate:?} ]; do sleep 0.05; done\nfi\nexec {real:?} \"$@\"\n",
            gate = gate.display().to_string(),
            entered = entered.display().to_string(),
            real = h.bin.display().to_string(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = DaemonConfig::new(
        &wrapper,
        h.path(),
        "1s",
        &gpu_engine(&e, "5s"),
        &[("agent", "128KiB", DECLARED_TOKENS)],
    );
    let mut d = start_daemon(&cfg, dir.path(), &["--sample-every", "200ms"]);
    std::fs::write(&gate, "").unwrap();
    let id = h.create("released as the daemon stops", "agent", 0, &[]);
    wait_for(
        Duration::from_secs(60),
        "the tick to reach dispatch",
        || entered.exists().then_some(()),
    );
    // Mid-tick: the task is assigned to its profile, the dispatch has not run.
    let t = h.task(&id);
    assert_eq!(
        (t.status.as_str(), t.assignee.as_deref()),
        ("ready", Some("agent"))
    );
    d.signal(rustix::process::Signal::TERM);
    wait_for(Duration::from_secs(10), "the daemon to see SIGTERM", || {
        d.log()
            .contains("SIGTERM: finishing the tick")
            .then_some(())
    });
    assert!(d.child.try_wait().unwrap().is_none(), "it exited mid-tick");
    std::fs::remove_file(&gate).unwrap();
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    // The release was completed: Hermes spawned it, and the saved state charges nothing.
    let t = h.task(&id);
    assert!(matches!(t.status.as_str(), "running" | "done"), "{t:?}");
    let state: serde_json::Value = common::saved_state(&cfg.state_dir);
    assert!(
        state["in_flight"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert_eq!(state["counters"]["released"], 1);
    wait_done(&h, &id);
}
