//! The fault suite, Hermes side: the real `tick` binary and the real Hermes CLI (with real
//! workers against a fake model server), with a fault-injecting wrapper around `hermes`: an
//! `assign` that succeeds and does nothing, an `assign` that takes effect and then fails with
//! garbage, a `dispatch` that starts workers and prints garbage. After every tick the
//! invariants hold: no task started twice, the charged pool under its ceiling, the state
//! database intact, and every release either in flight or with an outcome in the journal.
//!
//! The same wrapper can stop inside `assign` or `dispatch` until the test lets it go, so `run`
//! can be killed with SIGKILL in the middle of a Hermes call: the wrapper writes its argv to
//! the `started` FIFO and reads `run` (make the real call) or `drop` (make none) from the `go`
//! FIFO, then writes its exit status to `done`. Every wait is on one of those events, bounded
//! by a deadline; nothing sleeps to let something happen.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::{FakeModel, Governor, Hermes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// Generous for any step on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A `hermes` that runs the real one, except where `<dir>/mode` says to inject a fault.
fn faulty_hermes(dir: &Path, real: &Path) -> PathBuf {
    for f in ["started", "go"] {
        let st = Command::new("mkfifo").arg(dir.join(f)).status().unwrap();
        assert!(st.success());
    }
    let d = dir.display();
    let real = real.display();
    let mode = dir.join("mode");
    let mode = mode.display();
    let script = format!(
        r#"#!/bin/sh
mode=$(cat '{mode}' 2>/dev/null)
echo "$*" >> '{d}/calls.log'
case "$mode:$*" in
  block-assign:*"kanban assign "*|block-dispatch:*"kanban dispatch "*)
    echo "$*" > '{d}/started'
    read go < '{d}/go'
    rc=1
    if [ "$go" = run ]; then '{real}' "$@" >/dev/null 2>&1; rc=$?; fi
    echo $rc > '{d}/done.tmp' && mv '{d}/done.tmp' '{d}/done'
    exit $rc ;;
  noop-assign:*"kanban assign "*) exit 0 ;;
  fail-after-assign:*"kanban assign "*)
    '{real}' "$@" >/dev/null 2>&1
    echo 'Traceback (most recent call last): garbage' >&2
    exit 1 ;;
  garbage-dispatch:*"kanban dispatch "*)
    '{real}' "$@" >/dev/null 2>&1
    echo '{{"spawned": [garb'
    exit 0 ;;
esac
exec '{real}' "$@"
"#
    );
    let path = dir.join("hermes");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Rig {
    hermes: Hermes,
    gov: Governor,
    dir: tempfile::TempDir,
    _model: FakeModel,
}

impl Rig {
    fn mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    /// One `tick --json` (exit 0, or 1 when a Hermes call failed), then the invariants.
    fn tick(&self) -> serde_json::Value {
        let out = self.gov.run("tick", &["--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {stdout}"));
        self.invariants(&report);
        report
    }

    fn invariants(&self, report: &serde_json::Value) {
        // No task started twice.
        let board = rusqlite::Connection::open_with_flags(
            format!("file:{}?mode=ro", self.hermes.db().display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        board.busy_timeout(Duration::from_secs(5)).unwrap();
        let twice: Vec<(String, i64)> = board
            .prepare("SELECT task_id, COUNT(*) FROM task_runs GROUP BY task_id HAVING COUNT(*) > 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(twice.is_empty(), "started twice: {twice:?}");
        // The charged pool under its ceiling.
        for pool in report["decision"]["pools"].as_array().unwrap() {
            if let (Some(p), Some(c)) = (
                pool["projected_after_bytes"].as_u64(),
                pool["ceiling_bytes"].as_u64(),
            ) {
                assert!(p <= c, "over the ceiling: {pool}");
            }
        }
        // The state intact; every release in flight or with an outcome.
        let state = rusqlite::Connection::open_with_flags(
            self.gov.state_dir.join("state.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let ok: String = state
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let open: Vec<String> = state
            .prepare("SELECT task FROM releases WHERE outcome IS NULL ORDER BY task")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut in_flight: Vec<String> = common::ids(report, "in_flight");
        in_flight.sort();
        assert_eq!(
            open, in_flight,
            "releases without an outcome must be in flight: {report}"
        );
    }

    fn runs(&self, id: &str) -> i64 {
        let board = rusqlite::Connection::open_with_flags(
            format!("file:{}?mode=ro", self.hermes.db().display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        board
            .query_row(
                "SELECT COUNT(*) FROM task_runs WHERE task_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn outcome(&self, id: &str) -> Option<String> {
        let state = rusqlite::Connection::open_with_flags(
            self.gov.state_dir.join("state.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        state
            .query_row(
                "SELECT outcome FROM releases WHERE task = ?1 ORDER BY id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }
}

fn strings(report: &serde_json::Value, field: &str) -> Vec<String> {
    let mut v = common::ids(report, field);
    v.sort();
    v
}

#[test]
fn hermes_faults_never_start_a_task_twice_and_every_release_gets_an_outcome() {
    // Workers wait 10 minutes for their first answer: they stay running through the test.
    let model = FakeModel::start(Duration::from_secs(600));
    let hermes = Hermes::new(&["coder"], &model);
    let dir = tempfile::tempdir().unwrap();
    let bin = faulty_hermes(dir.path(), &hermes.bin);
    // 8 GiB per task on a 40 GiB GPU: five fit.
    let gov = Governor::with_bin(
        &bin,
        hermes.path(),
        "40GiB",
        "0B",
        &[("coder", "128KiB", 65536)],
    );
    let rig = Rig {
        hermes,
        gov,
        dir,
        _model: model,
    };
    let t1 = rig.hermes.create("one", "coder@gpu", 0, &[]);
    let t2 = rig.hermes.create("two", "coder@gpu", 0, &[]);

    // 1. `assign` exits 0 and does nothing: the dispatch starts nothing.
    rig.mode("noop-assign");
    let r = rig.tick();
    assert_eq!(strings(&r, "released").len(), 2, "{r}");
    assert!(strings(&r, "spawned").is_empty(), "{r}");
    // 2. Next tick, a working Hermes: the releases that never took effect are journaled
    //    `gone` and released again, and start once.
    rig.mode("");
    let r = rig.tick();
    let settled = r["observed"]["settled"].to_string();
    assert!(settled.contains("gone"), "{settled}");
    assert_eq!(strings(&r, "spawned").len(), 2, "{r}");
    assert_eq!((rig.runs(&t1), rig.runs(&t2)), (1, 1));

    // 3. A dispatch that starts workers and prints garbage: an error, releases in flight.
    let t3 = rig.hermes.create("three", "coder@gpu", 0, &[]);
    rig.mode("garbage-dispatch");
    let r = rig.tick();
    assert!(r["errors"].to_string().contains("dispatch"), "{r}");
    assert_eq!(strings(&r, "in_flight"), std::slice::from_ref(&t3));
    assert_eq!(rig.runs(&t3), 1, "the real dispatch started it");
    // 4. Next tick it is found running: journaled `spawned`, charged once, not started again.
    rig.mode("");
    let r = rig.tick();
    assert!(strings(&r, "released").is_empty(), "{r}");
    assert_eq!(rig.outcome(&t3).as_deref(), Some("spawned"));
    assert_eq!(
        r["observed"]["observation"]["running"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(rig.runs(&t3), 1);

    // 5. `assign` takes effect, then fails with garbage: no dispatch, nothing in flight.
    let t4 = rig.hermes.create("four", "coder@gpu", 0, &[]);
    rig.mode("fail-after-assign");
    let r = rig.tick();
    assert!(r["errors"].to_string().contains(&t4), "{r}");
    assert!(strings(&r, "spawned").is_empty() && strings(&r, "in_flight").is_empty());
    assert_eq!(rig.runs(&t4), 0);
    // 6. Next tick it sits ready on its profile: it still fits, so it is released as it is
    //    and started once.
    rig.mode("");
    let r = rig.tick();
    assert_eq!(strings(&r, "spawned"), std::slice::from_ref(&t4), "{r}");
    assert_eq!(rig.runs(&t4), 1);
}

/// Run `f` on a thread and wait up to [`DEADLINE`] for it (a FIFO open blocks until the other
/// end opens it).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("timed out after {DEADLINE:?} waiting for {what}: {e}"))
}

/// Tasks started more than once, and how many runs the board has in all.
fn runs_on_board(hermes: &Hermes) -> (Vec<(String, i64)>, i64) {
    let board = rusqlite::Connection::open_with_flags(
        format!("file:{}?mode=ro", hermes.db().display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    board.busy_timeout(Duration::from_secs(5)).unwrap();
    let twice = board
        .prepare("SELECT task_id, COUNT(*) FROM task_runs GROUP BY task_id HAVING COUNT(*) > 1")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let all = board
        .query_row("SELECT COUNT(*) FROM task_runs", [], |r| r.get(0))
        .unwrap();
    (twice, all)
}

/// The journal's releases, oldest first: (task, outcome).
fn journal(state_dir: &Path) -> Vec<(String, Option<String>)> {
    let state = rusqlite::Connection::open_with_flags(
        format!("file:{}?mode=ro", state_dir.join("state.sqlite3").display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    state.busy_timeout(Duration::from_secs(5)).unwrap();
    state
        .prepare("SELECT task, outcome FROM releases ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `run` killed with SIGKILL while `hermes kanban assign` (a release) or `hermes kanban
/// dispatch` is in progress, the call then completing or never happening, and `run` started
/// again on the same state and board. 20 GiB with a 4 GiB baseline: two 8 GiB tasks fit, the
/// third must wait. While the second daemon settles and after it stops: no task started
/// twice, never more than two started, every tick's projection under the ceiling, the state
/// intact, and every release journaled with an outcome (each task that started among them, as
/// `spawned`), nothing left in flight.
#[test]
fn kill_9_of_run_mid_assign_or_mid_dispatch_starts_nothing_twice_and_journals_every_release() {
    let model = FakeModel::start(Duration::from_secs(600));
    for (call, go) in [
        ("assign", "run"),
        ("assign", "drop"),
        ("dispatch", "run"),
        ("dispatch", "drop"),
    ] {
        let case = format!("kill -9 mid-{call}, the call then {go}");
        let (hermes, dir, cfg) = three_tasks_two_fit(&model);

        std::fs::write(dir.path().join("mode"), format!("block-{call}")).unwrap();
        let mut first = daemon::Daemon::start(cfg.command(&[], &[]));
        kill_mid_call(&case, dir.path(), call, go, &mut first.child);

        let mut second = daemon::Daemon::start(cfg.command(&[], &[]));
        common::wait_for(
            DEADLINE,
            &format!("{case}: two tasks running and nothing in flight"),
            || {
                let (twice, all) = runs_on_board(&hermes);
                assert!(twice.is_empty(), "{case}: started twice: {twice:?}");
                assert!(all <= 2, "{case}: {all} tasks started, two fit");
                let status = second.status();
                let tick = &status["last_tick"];
                for pool in tick["decision"]["pools"].as_array().into_iter().flatten() {
                    if let (Some(p), Some(c)) = (
                        pool["projected_after_bytes"].as_u64(),
                        pool["ceiling_bytes"].as_u64(),
                    ) {
                        assert!(p <= c, "{case}: over the ceiling: {pool}");
                    }
                }
                let running = hermes
                    .tasks()
                    .iter()
                    .filter(|t| t.status == "running")
                    .count();
                let in_flight = tick["in_flight"].as_array().map(Vec::len);
                (running == 2 && in_flight == Some(0)).then_some(())
            },
        );
        second.signal(rustix::process::Signal::TERM);
        assert_eq!(
            second.wait_exit(DEADLINE),
            Some(0),
            "{case}: {}",
            second.log()
        );

        settled_invariants(&case, &hermes, &cfg.state_dir, 2);
    }
}

/// A board with three 8 GiB tasks in lane `coder@gpu`, of which two fit (20 GiB, 4 GiB
/// baseline), the wrapper around the real `hermes`, and a config for both `tick` and `run`.
fn three_tasks_two_fit(model: &FakeModel) -> (Hermes, tempfile::TempDir, daemon::DaemonConfig) {
    let hermes = Hermes::new(&["coder"], model);
    let dir = tempfile::tempdir().unwrap();
    let bin = faulty_hermes(dir.path(), &hermes.bin);
    let cfg = daemon::DaemonConfig::new(
        &bin,
        hermes.path(),
        "5s",
        "[gpu]\ntelemetry = \"static\"\nmemory_total = \"20GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"",
        &[("coder", "128KiB", 65536)],
    );
    for t in ["one", "two", "three"] {
        hermes.create(t, "coder@gpu", 0, &[]);
    }
    (hermes, dir, cfg)
}

/// Once the wrapper blocks inside `call`: SIGKILL `governor`, then let the wrapper `go` (`run`
/// the real call or `drop` it) with no fault injected from then on, and wait until it ended.
fn kill_mid_call(case: &str, dir: &Path, call: &str, go: &str, governor: &mut std::process::Child) {
    let started = dir.join("started");
    let argv = within("the wrapper to block", move || {
        std::fs::read_to_string(started).unwrap()
    });
    assert!(argv.contains(&format!("kanban {call} ")), "{case}: {argv}");
    governor.kill().unwrap();
    governor.wait().unwrap();
    std::fs::write(dir.join("mode"), "").unwrap();
    let go_fifo = dir.join("go");
    let go = format!("{go}\n");
    within("the wrapper to read go", move || {
        std::fs::write(go_fifo, go).unwrap()
    });
    let done = dir.join("done");
    common::wait_for(DEADLINE, "the wrapped call to end", || {
        std::fs::read_to_string(&done).ok()
    });
}

/// A cron `tick` killed with SIGKILL while its `assign` or `dispatch` is in progress, the call
/// then completing, and ticks run again on the same state and board until it settles: the
/// same invariants as for `run`, checked after every tick.
#[test]
fn kill_9_of_tick_mid_assign_or_mid_dispatch_starts_nothing_twice_and_journals_every_release() {
    let model = FakeModel::start(Duration::from_secs(600));
    for call in ["assign", "dispatch"] {
        let case = format!("tick killed mid-{call}");
        let (hermes, dir, cfg) = three_tasks_two_fit(&model);
        std::fs::write(dir.path().join("mode"), format!("block-{call}")).unwrap();
        let tick = || {
            Command::new(common::governor_bin())
                .args(["tick", "--json", "--config"])
                .arg(&cfg.path)
                .env_remove("HERMES_KANBAN_DB")
                .env_remove("HERMES_KANBAN_BOARD")
                .env_remove("KANBAN_GOVERNOR_CONFIG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut first = tick();
        kill_mid_call(&case, dir.path(), call, "run", &mut first);
        common::wait_for(DEADLINE, &format!("{case}: settled"), || {
            let out = tick().wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{case}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: {e}: {text}"));
            let (twice, all) = runs_on_board(&hermes);
            assert!(twice.is_empty(), "{case}: started twice: {twice:?}");
            assert!(all <= 2, "{case}: {all} tasks started, two fit");
            for pool in report["decision"]["pools"].as_array().unwrap() {
                if let (Some(p), Some(c)) = (
                    pool["projected_after_bytes"].as_u64(),
                    pool["ceiling_bytes"].as_u64(),
                ) {
                    assert!(p <= c, "{case}: over the ceiling: {pool}");
                }
            }
            let running = hermes
                .tasks()
                .iter()
                .filter(|t| t.status == "running")
                .count();
            (running == 2 && strings(&report, "in_flight").is_empty()).then_some(())
        });
        settled_invariants(&case, &hermes, &cfg.state_dir, 2);
    }
}

/// Hermes calls that write the board (`assign`, `dispatch`) made through the wrapper so far.
fn writes(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kanban assign ") || l.contains("kanban dispatch "))
        .map(str::to_owned)
        .collect()
}

/// The invariants once everything has settled: no task started twice, `started` in all,
/// the state intact, every release journaled with an outcome, nothing in flight.
fn settled_invariants(case: &str, hermes: &Hermes, state_dir: &Path, started: i64) {
    let (twice, all) = runs_on_board(hermes);
    assert!(twice.is_empty(), "{case}: started twice: {twice:?}");
    assert_eq!(all, started, "{case}");
    let state = rusqlite::Connection::open_with_flags(
        state_dir.join("state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ok: String = state
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{case}");
    let journal = journal(state_dir);
    assert!(
        journal.iter().all(|(_, outcome)| outcome.is_some()),
        "{case}: a release without an outcome: {journal:?}"
    );
    for t in hermes.tasks().iter().filter(|t| t.status == "running") {
        assert!(
            journal
                .iter()
                .any(|(id, o)| *id == t.id && o.as_deref() == Some("spawned")),
            "{case}: {} runs but its release is not journaled as spawned: {journal:?}",
            t.id
        );
    }
    assert_eq!(
        common::saved_state(state_dir)["in_flight"],
        serde_json::json!({}),
        "{case}"
    );
}

/// A `tick` started while another `tick`, or `run`, is in the middle of a release (its
/// `assign` held open by the wrapper) or idle: it exits 0 naming the governor that holds the
/// lock and calls no Hermes command; the first one finishes its tick. Two 8 GiB tasks of
/// three fit; afterwards the invariants hold.
#[test]
fn two_ticks_at_once_or_a_tick_beside_run_take_turns_and_nothing_starts_twice() {
    let model = FakeModel::start(Duration::from_secs(600));
    for first in ["tick", "run"] {
        let case = format!("a tick beside {first}");
        let (hermes, dir, cfg) = three_tasks_two_fit(&model);
        let tick = |args: &[&str]| {
            Command::new(common::governor_bin())
                .arg("tick")
                .arg("--config")
                .arg(&cfg.path)
                .args(args)
                .env_remove("HERMES_KANBAN_DB")
                .env_remove("HERMES_KANBAN_BOARD")
                .env_remove("KANBAN_GOVERNOR_CONFIG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };

        std::fs::write(dir.path().join("mode"), "block-assign").unwrap();
        let (mut holder, mut daemon) = (None, None);
        let pid = if first == "tick" {
            let c = tick(&["--json"]);
            let pid = c.id();
            holder = Some(c);
            pid
        } else {
            let d = daemon::Daemon::start(cfg.command(&[], &[]));
            let pid = d.child.id();
            daemon = Some(d);
            pid
        };
        let started = dir.path().join("started");
        let argv = within("the wrapper to block", move || {
            std::fs::read_to_string(started).unwrap()
        });
        assert!(argv.contains("kanban assign "), "{case}: {argv}");

        let out = tick(&["--json"]).wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{case}: {text}");
        assert!(
            text.contains(&format!("another kanban-governor (pid {pid})")),
            "{case}: {text}"
        );
        assert_eq!(
            writes(dir.path()).len(),
            1,
            "{case}: {:?}",
            writes(dir.path())
        );

        std::fs::write(dir.path().join("mode"), "").unwrap();
        let go_fifo = dir.path().join("go");
        within("the wrapper to read go", move || {
            std::fs::write(go_fifo, "run\n").unwrap()
        });
        if let Some(c) = holder {
            let out = within("the first tick to exit", move || {
                c.wait_with_output().unwrap()
            });
            assert_eq!(out.status.code(), Some(0), "{case}: {out:?}");
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(strings(&report, "spawned").len(), 2, "{case}: {report}");
        }
        if let Some(mut d) = daemon {
            common::wait_for(
                DEADLINE,
                &format!("{case}: two running, none in flight"),
                || {
                    let tick = d.status()["last_tick"].clone();
                    let running = hermes
                        .tasks()
                        .iter()
                        .filter(|t| t.status == "running")
                        .count();
                    (running == 2 && tick["in_flight"].as_array().map(Vec::len) == Some(0))
                        .then_some(())
                },
            );
            // Beside an idle daemon too.
            let calls = writes(dir.path()).len();
            let out = tick(&[]).wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{case}: {out:?}");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains(&format!("another kanban-governor (pid {pid})")),
                "{case}: {text}"
            );
            assert_eq!(writes(dir.path()).len(), calls, "{case}");
            d.signal(rustix::process::Signal::TERM);
            assert_eq!(d.wait_exit(DEADLINE), Some(0), "{case}: {}", d.log());
        }
        settled_invariants(&case, &hermes, &cfg.state_dir, 2);
    }
}
