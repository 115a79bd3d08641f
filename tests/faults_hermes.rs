//! The fault suite, Hermes side: the real `tick` binary and the real Hermes CLI (with real
//! workers against a fake model server), with a fault-injecting wrapper around `hermes`: an
//! `assign` that succeeds and does nothing, an `assign` that takes effect and then fails with
//! garbage, a `dispatch` that starts workers and prints garbage. After every tick the
//! invariants hold: no task started twice, the charged pool under its ceiling, the state
//! database intact, and every release either in flight or with an outcome in the journal.

mod common;

use common::{FakeModel, Governor, Hermes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A `hermes` that runs the real one, except where `<dir>/mode` says to inject a fault.
fn faulty_hermes(dir: &Path, real: &Path) -> PathBuf {
    let real = real.display();
    let mode = dir.join("mode");
    let mode = mode.display();
    let script = format!(
        r#"#!/bin/sh
mode=$(cat '{mode}' 2>/dev/null)
case "$mode:$*" in
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
