//! `kanban-governor run` as a process: start-up errors and their exit codes, and a static-GPU
//! daemon governing a real Hermes board (hermes-agent 0.19.0's WAL board, and 0.20.1's
//! rollback-journal board; real workers, a fake model server) until every task is done, then
//! stopping cleanly on SIGTERM.
//!
//! Every wait polls with a deadline; nothing sleeps a fixed time to "let it work".

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::{FakeModel, Hermes, Release, hermes_bin, wait_for};
use daemon::{Daemon, DaemonConfig, metric};
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const STATIC_GPU: &str = "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"ollama\"\nurl = \"none\"";

#[test]
fn nvml_telemetry_without_the_library_exits_2_naming_static_and_replay() {
    let home = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::new(
        &hermes_bin(),
        home.path(),
        "5s",
        "[gpu]\ntelemetry = \"nvml\"\n\n[engine]\nkind = \"vllm\"\nkv_capacity_tokens = 100000",
        &[],
    );
    let out = cfg
        .command(
            &[],
            &[("KANBAN_GOVERNOR_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("telemetry = \"static\""), "{stderr}");
    assert!(stderr.contains("replay"), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/libnvidia-ml.so.1"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it served nothing");
}

#[test]
fn a_proxy_latency_signal_without_the_proxy_exits_2_naming_both_fixes() {
    let h = Hermes::with_base_url(&[], "http://127.0.0.1:1/v1");
    let latency = "[latency]\nsignal = \"proxy\"\n";
    let cfg = DaemonConfig::with_latency(&h.bin, h.path(), "5s", STATIC_GPU, latency, &[]);
    let out = cfg.command(&[], &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("latency.signal = \"proxy\""), "{stderr}");
    assert!(
        stderr.contains("proxy.listen") && stderr.contains("--proxy-listen"),
        "{stderr}"
    );
    assert!(stderr.contains("latency.signal = \"engine\""), "{stderr}");
    assert!(out.stdout.is_empty(), "it served nothing");
}

#[test]
fn a_zero_sample_period_exits_2_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig::new(&hermes_bin(), home.path(), "5s", STATIC_GPU, &[]);
    let out = cfg
        .command(&["--sample-every", "0s"], &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--sample-every"), "{stderr}");
}

#[test]
fn a_listen_port_in_use_exits_2_naming_listen() {
    let _s = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "5s",
        STATIC_GPU,
        &[("small", "128KiB", 24576)],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = cfg.command(&["--listen", &port], &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("--listen {port}")), "{stderr}");
}

/// Issue 11: `--listen 0.0.0.0:…` served `/status` to the network without a word. Now a
/// non-loopback address exits 2 naming `http.public` unless the config sets it; with it set,
/// the daemon serves there.
#[test]
fn a_non_loopback_listen_needs_http_public_in_the_config() {
    let _s = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let profiles = [("small", "128KiB", 24576)];
    let cfg = DaemonConfig::new(&h.bin, h.path(), "5s", STATIC_GPU, &profiles);
    // Bounded: without the check the daemon would serve and never exit.
    let mut child = cfg
        .command(&["--listen", "0.0.0.0:0"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run --listen 0.0.0.0:0 without http.public kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--listen 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("http.public = true"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:0"), "{stderr}");
    assert!(out.stdout.is_empty(), "it served nothing");

    let public = format!("{STATIC_GPU}\n\n[http]\npublic = true");
    let cfg = DaemonConfig::new(&h.bin, h.path(), "5s", &public, &profiles);
    let mut d = Daemon::start(cfg.command(&["--listen", "0.0.0.0:0"], &[]));
    assert!(d.addr.ip().is_unspecified(), "{}", d.addr);
    let (status, _) = daemon::http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], d.addr.port())),
        "/status",
    );
    assert_eq!(status, 200);
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_1_and_the_first_keeps_serving() {
    let _s = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "5s",
        STATIC_GPU,
        &[("small", "128KiB", 24576)],
    );
    let mut first = Daemon::start(cfg.command(&[], &[]));
    let out = cfg.command(&[], &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tick.lock"), "{stderr}");
    // cron `tick` on the same state dir sees the daemon's lock too.
    assert_eq!(first.get("/metrics").0, 200);
    first.signal(rustix::process::Signal::TERM);
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn the_daemon_runs_a_real_board_to_done_under_the_ceiling_and_stops_on_sigterm() {
    daemon_runs_a_real_board_to_done(Release::V0_19);
}

/// On Hermes 0.20.1's rollback-journal board, the board watcher's connection stays open
/// between polls while Hermes and its workers write: it holds no lock between reads, and
/// `data_version` still sees every commit.
#[test]
fn the_daemon_runs_a_rollback_journal_board_of_hermes_0_20_to_done() {
    daemon_runs_a_real_board_to_done(Release::V0_20);
}

fn daemon_runs_a_real_board_to_done(release: Release) {
    let _s = serial();
    let model = FakeModel::start(Duration::from_millis(1500));
    let h = Hermes::of(release, &["big", "small"], &model);
    // 24 GiB, 4 GiB baseline: 20 GiB for tasks; big = 8 GiB, small = 3 GiB.
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "30s",
        STATIC_GPU,
        &[("big", "128KiB", 65536), ("small", "128KiB", 24576)],
    );
    let mut ids = Vec::new();
    for (i, a) in [
        "big@gpu",
        "big@gpu",
        "big@gpu",
        "small@gpu",
        "small",
        "small@gpu",
    ]
    .iter()
    .enumerate()
    {
        ids.push(h.create(&format!("task {i}"), a, 0, &[]));
    }
    // A 30 s interval: after the first tick, releases come from the board watcher (a task
    // finished), not from the interval.
    let mut d = Daemon::start(cfg.command(&[], &[]));
    let gib = 1u64 << 30;
    let mut peak = 0;
    wait_for(Duration::from_secs(240), "every task done", || {
        let tasks = h.tasks();
        let sum: u64 = tasks
            .iter()
            .filter(|t| t.status == "running")
            .map(|t| match t.assignee.as_deref() {
                Some("big") => 8 * gib,
                Some("small") => 3 * gib,
                other => panic!("{other:?} runs ungoverned"),
            })
            .sum();
        assert!(sum <= 20 * gib, "{} GiB running: {tasks:?}", sum / gib);
        peak = peak.max(sum);
        tasks.iter().all(|t| t.status == "done").then_some(())
    });
    assert!(
        peak >= 16 * gib,
        "tasks ran side by side: peak {}",
        peak / gib
    );
    // The last completion is seen by the board watcher: the status settles without waiting
    // for the 30 s interval.
    let status = wait_for(Duration::from_secs(20), "a tick that saw all done", || {
        let s = d.status();
        (s["last_tick"]["observed"]["observation"]["running"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && s["last_tick"]["observed"]["observation"]["waiting"]
                .as_array()
                .is_some_and(Vec::is_empty))
        .then_some(s)
    });
    assert_eq!(status["pools"][0]["gpu"]["source"], "static");
    assert_eq!(status["pools"][0]["holding"], serde_json::Value::Null);
    let m = d.metrics();
    let released = metric(
        &m,
        "kanban_governor_dispatch_outcomes_total",
        "outcome=\"released\"",
    )
    .unwrap();
    assert_eq!(released, ids.len() as f64, "{m}");
    assert_eq!(metric(&m, "kanban_governor_leaks_total", ""), Some(0.0));
    assert!(
        metric(
            &m,
            "kanban_governor_ticks_total",
            "trigger=\"board\",result=\"ok\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "kanban_governor_decisions_total",
            "reason=\"vram_headroom\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "kanban_governor_gpu_total_bytes", "pool=\"default\""),
        Some((24 * gib) as f64)
    );
    assert_eq!(
        metric(&m, "kanban_governor_ceiling_bytes", "pool=\"default\""),
        Some((24 * gib) as f64)
    );
    assert_eq!(
        metric(&m, "kanban_governor_tasks_running", "profile=\"big\""),
        Some(0.0)
    );
    assert!(!m.contains("\"t_"), "no task ids in labels: {m}");
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
    let state: serde_json::Value = common::saved_state(&cfg.state_dir);
    assert_eq!(state["counters"]["released"], ids.len());
    assert!(
        state["in_flight"].as_object().unwrap().is_empty(),
        "{state}"
    );
}

/// Issue 13 acceptance: with `[proxy] listen` set, a chat request to
/// `/p/coder/v1/chat/completions` reaches the engine and comes back, and `/metrics` counts it
/// under `profile="coder"` (and `/status` shows the task it named).
#[test]
fn the_proxy_forwards_a_profiles_request_and_metrics_count_it() {
    use std::io::{Read, Write};
    let _s = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["coder"], &model);
    let gpu_engine = format!(
        "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\n\n[engine]\nkind = \"openai\"\nurl = \"http://{}\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"",
        model.addr
    );
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "5s",
        &gpu_engine,
        &[("coder", "128KiB", 24576)],
    );
    let mut d = Daemon::start(cfg.command(&[], &[]));
    let proxy: std::net::SocketAddr = d
        .line
        .split("proxy http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address in {:?}", d.line));
    let served_before = model.requests.load(std::sync::atomic::Ordering::SeqCst);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"work kanban task t_feed"}]}"#;
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /p/coder/v1/chat/completions HTTP/1.1\r\nhost: {proxy}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chatcmpl-fake"), "{answer}");
    assert!(model.requests.load(std::sync::atomic::Ordering::SeqCst) > served_before);

    let text = d.metrics();
    assert_eq!(
        metric(
            &text,
            "kanban_governor_proxy_requests_total",
            "profile=\"coder\",outcome=\"ok\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kanban_governor_proxy_in_flight",
            "profile=\"coder\""
        ),
        Some(0.0),
        "{text}"
    );
    let status = d.status();
    assert_eq!(status["proxy"]["listen"], proxy.to_string());
    assert_eq!(status["proxy"]["tasks"]["t_feed"]["profile"], "coder");

    // A request held by the engine is in flight for its profile and its task, in /status and
    // (per profile, task ids never being labels) in /metrics; gone once its client goes away.
    model
        .delay_ms
        .store(120_000, std::sync::atomic::Ordering::SeqCst);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"work kanban task t_slow"}],"tools":[{"type":"function","function":{"name":"kanban_complete"}}]}"#;
    let mut held = std::net::TcpStream::connect(proxy).unwrap();
    write!(
        held,
        "POST /p/coder/v1/chat/completions HTTP/1.1\r\nhost: {proxy}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(30), "t_slow in flight", || {
        let s = d.status();
        (s["proxy"]["tasks"]["t_slow"]["in_flight"] == 1).then_some(s)
    });
    assert_eq!(
        status["proxy"]["profiles"]["coder"]["in_flight"], 1,
        "{status}"
    );
    assert_eq!(
        status["proxy"]["tasks"]["t_feed"]["in_flight"], 0,
        "{status}"
    );
    let text = d.metrics();
    for (name, want) in [
        ("kanban_governor_proxy_in_flight", 1.0),
        ("kanban_governor_proxy_tasks_in_flight", 1.0),
        ("kanban_governor_proxy_task_requests_in_flight_max", 1.0),
    ] {
        assert_eq!(
            metric(&text, name, "profile=\"coder\""),
            Some(want),
            "{name}: {text}"
        );
    }
    drop(held);
    wait_for(
        Duration::from_secs(30),
        "t_slow no longer in flight",
        || {
            let s = d.status();
            (s["proxy"]["tasks"]["t_slow"]["in_flight"] == 0).then_some(())
        },
    );
    let text = d.metrics();
    assert_eq!(
        metric(
            &text,
            "kanban_governor_proxy_tasks_in_flight",
            "profile=\"coder\""
        ),
        Some(0.0),
        "{text}"
    );
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
}

#[test]
fn a_non_loopback_proxy_listen_flag_exits_2_naming_proxy_public() {
    let _s = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "5s",
        STATIC_GPU,
        &[("small", "128KiB", 24576)],
    );
    let out = cfg
        .command(&["--proxy-listen", "0.0.0.0:0"], &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--proxy-listen 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("proxy.public = true"), "{stderr}");
}
