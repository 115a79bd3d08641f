//! The fault suite, engine side: the real `tick` binary against a board with Hermes's schema,
//! a fake `hermes` that records its argv and an engine that is down, comes back, or is
//! declared absent. After every case: nothing was released while the engine could not be
//! seen, and the board is as it was. And the whole `run` process out of file descriptors
//! (its `RLIMIT_NOFILE` lowered while it runs): it holds, does not spin, and recovers.
//!
//! Other faults have their tests beside the code they exercise (see README, "What it
//! survives"): the dispatch re-check in `src/app/tick/tests.rs`, the HTTP server, state files,
//! locks and signals in their own targets.

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/fake_engine.rs"]
mod fake_engine;

use fake_engine::{EngineSpec, FakeEngine};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const SCHEMA: &str = include_str!("fixtures/hermes_schema.sql");
/// A fake `hermes` 0.19.0: version, assign and an empty dispatch.
const HERMES: &str = "case \"$*\" in --version) echo 'Hermes Agent v0.19.0 (2026.7.20)';; *dispatch*) echo '{\"spawned\": []}';; esac";

struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    /// A board with one ready task in `coder@gpu`, and a fake `hermes`.
    fn new() -> Rig {
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(rig.home()).unwrap();
        let conn = rusqlite::Connection::open(rig.home().join("kanban.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        rig.add_task("t_1");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let bin = rig.bin();
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n{HERMES}\n",
                rig.dir.path().join("argv.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        rig
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("hh")
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("hermes")
    }
    fn add_task(&self, id: &str) {
        let conn = rusqlite::Connection::open(self.home().join("kanban.db")).unwrap();
        conn.execute(
            "INSERT INTO tasks(id, title, assignee, status, created_at) VALUES (?1, ?1, 'coder@gpu', 'ready', 100)",
            rusqlite::params![id],
        )
        .unwrap();
    }
    /// Hermes calls that write the board (`assign`, `dispatch`), in order.
    fn writes(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("argv.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("assign") || l.contains("dispatch"))
            .map(str::to_owned)
            .collect()
    }
    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("argv.log"));
    }
    /// `[engine]` of this kind at `url` with `extra` lines; a static 24 GiB GPU.
    fn config(&self, kind: &str, url: &str, extra: &str) -> PathBuf {
        let text = format!(
            "[hermes]\nbin = {:?}\nhome = {:?}\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = {kind:?}\nurl = {url:?}\n{extra}\n\n[dispatch]\nstate_dir = {:?}\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"128KiB\"\nmax_context_tokens = 8192\n",
            self.bin().display().to_string(),
            self.home().display().to_string(),
            self.dir.path().join("state").display().to_string(),
        );
        let p = self.dir.path().join(format!("{kind}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }
    fn tick(&self, config: &Path) -> serde_json::Value {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
            .args(["tick", "--json", "--config"])
            .arg(config)
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{text}");
        serde_json::from_str(text.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// A URL where nothing listens (a port the kernel just gave out and took back).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn released(report: &serde_json::Value) -> Vec<String> {
    report["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn held_reasons(report: &serde_json::Value) -> String {
    report["decision"]["held"].to_string()
}

fn vllm(capacity_tokens: u64) -> EngineSpec {
    EngineSpec {
        capacity_tokens,
        bytes_per_token: 128 * 1024,
        weights_bytes: 4 << 30,
        total_bytes: 24 << 30,
        first_turn_delay: Duration::ZERO,
        nvml_state: None,
    }
}

#[test]
fn an_unreachable_engine_holds_for_every_kind_whatever_capacity_is_configured() {
    let dead = dead_url();
    for (kind, extra) in [
        ("vllm", "kv_capacity_tokens = 442368"),
        ("sglang", "kv_capacity_tokens = 442368"),
        ("llamacpp", "slots = 4\nkv_capacity_tokens = 32768"),
        ("ollama", "slots = 4"),
        ("openai", ""),
    ] {
        let rig = Rig::new();
        let report = rig.tick(&rig.config(kind, &dead, extra));
        assert!(released(&report).is_empty(), "{kind}: {report}");
        assert!(rig.writes().is_empty(), "{kind}: {:?}", rig.writes());
        let held = held_reasons(&report);
        assert!(held.contains("no engine reading"), "{kind}: {held}");
        assert!(
            report["observed"]["telemetry_errors"]
                .to_string()
                .contains(&dead),
            "{kind}: the error names the URL: {report}"
        );

        // Saying the host has no engine endpoint is what lets the configured numbers decide.
        let report = rig.tick(&rig.config(kind, "none", extra));
        assert_eq!(released(&report), ["t_1"], "{kind}: {report}");
    }
}

#[test]
fn an_engine_that_goes_away_and_comes_back_stops_and_restarts_releases() {
    let rig = Rig::new();
    let mut engine = FakeEngine::start(vllm(65_536));
    let config = rig.config("vllm", &engine.url(), "");
    assert_eq!(released(&rig.tick(&config)), ["t_1"]);

    engine.stop();
    rig.add_task("t_2");
    rig.clear_calls();
    let report = rig.tick(&config);
    assert!(released(&report).is_empty(), "{report}");
    assert!(rig.writes().is_empty(), "{:?}", rig.writes());

    // (The fake `hermes` does not move tasks, so t_1 is still in its lane and released again.)
    engine.restart();
    let report = rig.tick(&config);
    assert!(released(&report).contains(&"t_2".to_owned()), "{report}");
    assert!(!rig.writes().is_empty());
}

/// Run the binary with `args` and `--config config`.
fn governor(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("HERMES_KANBAN_DB")
        .env_remove("HERMES_KANBAN_BOARD")
        .env("KANBAN_GOVERNOR_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .output()
        .unwrap()
}

fn all_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_config_fails_on_every_host_problem_that_tick_fails_on_and_tick_creates_nothing() {
    let rig = Rig::new();
    let good = std::fs::read_to_string(rig.config("openai", "none", "")).unwrap();
    let state = rig.dir.path().join("state");
    let not_exec = rig.dir.path().join("not-exec");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let a_file = rig.dir.path().join("a-file");
    std::fs::write(&a_file, "").unwrap();
    let bin = format!("bin = {:?}", rig.bin().display().to_string());
    let home = format!("home = {:?}", rig.home().display().to_string());
    let state_line = format!("state_dir = {:?}", state.display().to_string());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "hermes.bin",
            good.replace(&bin, "bin = \"/nonexistent/bin/hermes\""),
            "check hermes.bin",
        ),
        (
            "hermes.bin",
            good.replace(&bin, &format!("bin = {:?}", not_exec.display().to_string())),
            "check hermes.bin",
        ),
        (
            "hermes.home",
            good.replace(&home, "home = \"/nonexistent/hermes-home\""),
            "hermes",
        ),
        (
            "dispatch.state_dir",
            good.replace(
                &state_line,
                &format!("state_dir = {:?}", a_file.display().to_string()),
            ),
            "not a directory",
        ),
        (
            "gpu.telemetry",
            good.replace(
                "telemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"",
                "telemetry = \"nvml\"",
            ),
            "telemetry = \"static\"",
        ),
    ];
    for (key, text, fix) in cases {
        assert_ne!(text, good, "{key}: the case changed nothing");
        let config = rig.dir.path().join("case.toml");
        std::fs::write(&config, &text).unwrap();
        let check = governor(&["check-config"], &config);
        let out = all_text(&check);
        assert_eq!(check.status.code(), Some(2), "{key}: {out}");
        assert!(
            out.contains(&format!("{key}:")) && out.contains(fix),
            "{key}: {out}"
        );
        // `--file-only` checks the file alone: it is valid.
        let file_only = governor(&["check-config", "--file-only"], &config);
        assert_eq!(
            file_only.status.code(),
            Some(0),
            "{key}: {}",
            all_text(&file_only)
        );

        let tick = governor(&["tick"], &config);
        assert_eq!(tick.status.code(), Some(2), "{key}: {}", all_text(&tick));
        assert!(
            all_text(&tick).contains(&format!("{key}:")),
            "{}",
            all_text(&tick)
        );
        assert!(
            !state.exists(),
            "{key}: tick created the state dir before failing"
        );
        assert!(rig.writes().is_empty(), "{key}: {:?}", rig.writes());
    }
    // The good config passes both, and only then does tick create its state.
    let config = rig.dir.path().join("good.toml");
    std::fs::write(&config, &good).unwrap();
    let check = governor(&["check-config"], &config);
    assert_eq!(check.status.code(), Some(0), "{}", all_text(&check));
    assert!(!state.exists());
    let tick = governor(&["tick"], &config);
    assert_eq!(tick.status.code(), Some(0), "{}", all_text(&tick));
    assert!(state.is_dir());
}

/// A board another process holds under a write lock (a rollback-journal board, as Hermes
/// 0.20 and later make on older SQLite, with an EXCLUSIVE transaction open): `tick` waits its busy
/// timeout, fails (exit 1) naming the board, and calls no Hermes; once the lock is gone the
/// next tick releases. A board whose `tasks` table lacks a column the governor reads (a
/// future or foreign schema) is the same: a clear error, nothing written.
#[test]
fn a_board_locked_by_a_writer_or_of_an_unknown_schema_holds_and_writes_nothing() {
    let rig = Rig::new();
    let db = rig.home().join("kanban.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=delete").unwrap();
    }
    let config = rig.config("openai", "none", "");
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = governor(&["tick"], &config);
    let text = all_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(rig.writes().is_empty(), "{:?}", rig.writes());
    writer.execute_batch("COMMIT").unwrap();
    drop(writer);
    assert_eq!(released(&rig.tick(&config)), ["t_1"]);

    let rig = Rig::new();
    let db = rig.home().join("kanban.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "ALTER TABLE tasks DROP COLUMN claim_lock; PRAGMA wal_checkpoint(TRUNCATE)",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let out = governor(&["tick"], &rig.config("openai", "none", ""));
    let text = all_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("claim_lock"),
        "the error names what is missing: {text}"
    );
    assert!(rig.writes().is_empty(), "{:?}", rig.writes());
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the board is unchanged"
    );
}

/// GET `path` from `addr`, tolerating a server that does not answer (connect refused, no
/// response within 5 s): the status, or `None`.
fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// Lines of `log` after the first `from` bytes that contain `what`.
fn lines_with(log: &str, from: usize, what: &str) -> usize {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// The whole `run` process out of file descriptors: its soft `RLIMIT_NOFILE` (started at 128)
/// lowered to 3 while it runs, so every new descriptor fails with EMFILE however many it
/// closes (engine reads, `/metrics` accepts, Hermes calls); then raised again. Meanwhile:
/// held connections to `/metrics` wait in its backlog. It holds (no Hermes call, every tick
/// says telemetry is unavailable), it does not spin (the failing accept is logged once and
/// retried with a back-off: at most one attempt per 100 ms), and once descriptors are back
/// `/status` answers and releases resume.
#[test]
fn fd_exhaustion_of_run_holds_without_spinning_and_recovers_when_descriptors_are_back() {
    const NOFILE: u64 = 128;
    let rig = Rig::new();
    let engine = FakeEngine::start(vllm(65_536));
    let cfg = daemon::DaemonConfig::new(
        &rig.bin(),
        &rig.home(),
        "1s",
        &format!(
            "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"vllm\"\nurl = {:?}",
            engine.url()
        ),
        &[("coder", "128KiB", 8192)],
    );
    let mut cmd = cfg.command(&["--sample-every", "200ms"], &[]);
    let limit = |n: u64| rustix::process::Rlimit {
        current: Some(n),
        maximum: Some(NOFILE),
    };
    // SAFETY: setrlimit is a single system call, safe between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit(NOFILE))
                .map_err(std::io::Error::from)
        });
    }
    let mut d = daemon::Daemon::start(cmd);
    let pid = rustix::process::Pid::from_raw(d.child.id() as i32).unwrap();
    // Working: the fake `hermes` leaves the task in its lane, so every tick releases it again.
    common::wait_for(Duration::from_secs(120), "a release", || {
        (!rig.writes().is_empty()).then_some(())
    });

    let exhausted_at = std::time::Instant::now();
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit(3)).unwrap();
    // Connections that it cannot accept wait in its backlog.
    let held: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(d.addr).unwrap())
        .collect();
    common::wait_for(
        Duration::from_secs(120),
        "the failed accept in the log",
        || {
            d.log()
                .contains("Accepting a /metrics connection failed")
                .then_some(())
        },
    );
    // Every tick from the next one on holds (one line per tick names the engine's error):
    // wait for one, then three more, and no Hermes call may have been made in between.
    const HELD: &str = "Holding: telemetry unavailable. error=pool default: engine:";
    let from = d.log().len();
    common::wait_for(Duration::from_secs(120), "a held tick", || {
        (lines_with(&d.log(), from, HELD) >= 1).then_some(())
    });
    let (from, writes) = (d.log().len(), rig.writes().len());
    common::wait_for(Duration::from_secs(120), "three more held ticks", || {
        (lines_with(&d.log(), from, HELD) >= 3).then_some(())
    });
    assert_eq!(
        rig.writes().len(),
        writes,
        "a Hermes call while out of descriptors: {}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("Too many open files"),
        "the errors name the cause: {log}"
    );
    let minutes = exhausted_at.elapsed().as_secs() / 60;
    let accept_lines = lines_with(&log, 0, "Accepting a /metrics connection failed");
    assert!(
        (1..=1 + minutes as usize).contains(&accept_lines),
        "{accept_lines} accept-failure lines in {minutes} min: {log}"
    );

    // Descriptors back: the backlog is served, /status answers, releases resume.
    drop(held);
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit(NOFILE)).unwrap();
    common::wait_for(Duration::from_secs(120), "/status to answer", || {
        (try_get(d.addr, "/status") == Some(200)).then_some(())
    });
    common::wait_for(Duration::from_secs(120), "releases to resume", || {
        (rig.writes().len() > writes).then_some(())
    });
    let elapsed_ms = exhausted_at.elapsed().as_millis() as f64;
    let metrics = d.metrics();
    let accept_errors = daemon::metric(&metrics, "kanban_governor_http_accept_errors_total", "")
        .unwrap_or_else(|| panic!("no accept-error counter: {metrics}"));
    assert!(
        accept_errors >= 1.0 && accept_errors <= 1.0 + elapsed_ms / 100.0,
        "{accept_errors} failed accepts in {elapsed_ms} ms: it spun"
    );
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(120)),
        Some(0),
        "{}",
        d.log()
    );
    let state = rusqlite::Connection::open_with_flags(
        cfg.state_dir.join("state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ok: String = state
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
