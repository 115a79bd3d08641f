//! `kanban-governor tick` / `status` (the real binary) against boards the test builds with
//! Hermes's schema and a fake `hermes` script that records its argv: bad input and faults
//! give a clear message, the documented exit code, and leave the board untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SCHEMA: &str = include_str!("fixtures/hermes_schema.sql");
const VERSION: &str = "echo 'Hermes Agent v0.19.0 (2026.7.20)'";

struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("hh")
    }
    fn db(&self) -> PathBuf {
        self.home().join("kanban.db")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// A board with Hermes's schema and these `(id, assignee, status)` tasks.
    fn board(&self, tasks: &[(&str, &str, &str)]) {
        std::fs::create_dir_all(self.home()).unwrap();
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for (i, (id, assignee, status)) in tasks.iter().enumerate() {
            conn.execute(
                "INSERT INTO tasks(id, title, assignee, status, created_at) VALUES (?1, ?1, ?2, ?3, ?4)",
                rusqlite::params![id, assignee, status, 100 + i as i64],
            )
            .unwrap();
        }
        // Checkpoint and close, so the file alone is the board.
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    /// A fake `hermes`: logs argv to argv.log, then runs `body`.
    fn fake_hermes(&self, body: &str) -> PathBuf {
        let path = self.dir.path().join("hermes");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n{body}\n",
                self.dir.path().join("argv.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn config(&self, bin: &Path, hermes_extra: &str) -> PathBuf {
        self.config_with(bin, hermes_extra, "")
    }
    fn config_with(&self, bin: &Path, hermes_extra: &str, dispatch_extra: &str) -> PathBuf {
        let text = format!(
            "[hermes]\nbin = {:?}\nhome = {:?}\n{hermes_extra}\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n\n[dispatch]\nstate_dir = {:?}\n{dispatch_extra}\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"128KiB\"\nmax_context_tokens = 65536\n",
            bin.display().to_string(),
            self.home().display().to_string(),
            self.state_dir().display().to_string()
        );
        let p = self.dir.path().join("governor.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn run(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("HERMES_KANBAN_DB")
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_missing_board_exits_2_naming_the_path_and_hermes_kanban_init() {
    let rig = Rig::new();
    let bin = rig.fake_hermes(VERSION);
    let out = rig.run(&rig.config(&bin, ""), &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&rig.db().display().to_string()), "{t}");
    assert!(t.contains("hermes kanban init"), "{t}");
    assert!(!rig.db().exists());
    assert!(rig.calls().is_empty());
}

#[test]
fn a_relative_or_missing_hermes_bin_exits_2_naming_hermes_bin() {
    let rig = Rig::new();
    rig.board(&[]);
    let out = rig.run(&rig.config(Path::new("hermes"), ""), &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("hermes.bin") && text(&out).contains("set an absolute path"),
        "{}",
        text(&out)
    );
    let out = rig.run(
        &rig.config(Path::new("/nonexistent/bin/hermes"), ""),
        &["tick"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("check hermes.bin"), "{}", text(&out));
}

#[test]
fn a_tick_with_nothing_to_release_runs_no_hermes_process() {
    let rig = Rig::new();
    rig.board(&[("t_run", "coder", "running"), ("t_done", "coder", "done")]);
    let bin = rig.fake_hermes(VERSION);
    let out = rig.run(&rig.config(&bin, ""), &["tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(rig.calls().is_empty(), "{:?}", rig.calls());
    assert!(rig.state_dir().join("state.sqlite3").exists());
}

#[test]
fn hermes_exiting_1_is_a_runtime_error_carrying_its_stderr_and_nothing_is_in_flight() {
    let rig = Rig::new();
    rig.board(&[("t_a", "coder@gpu", "ready")]);
    let before = std::fs::read(rig.db()).unwrap();
    let bin = rig.fake_hermes(&format!(
        "case \"$*\" in --version) {VERSION};; *) echo 'database is locked' >&2; exit 1;; esac"
    ));
    let out = rig.run(&rig.config(&bin, ""), &["tick"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("'hermes kanban assign' exited 1: database is locked; check hermes.bin"),
        "{t}"
    );
    assert_eq!(std::fs::read(rig.db()).unwrap(), before);
    let state = serde_json::to_value(
        kanban_governor::adapters::state_sqlite::SqliteState::load_read_only(&rig.state_dir())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["in_flight"], serde_json::json!({}));
    assert_eq!(state["counters"]["hermes_errors"], 1);
    // Exactly the release was tried; no dispatch without a release.
    assert_eq!(rig.calls(), ["--version", "kanban assign t_a coder"]);
}

#[test]
fn a_hanging_hermes_is_killed_at_the_timeout_and_reported() {
    let rig = Rig::new();
    rig.board(&[("t_a", "coder@gpu", "ready")]);
    let bin = rig.fake_hermes(&format!(
        "case \"$*\" in --version) {VERSION};; *) sleep 300;; esac"
    ));
    let started = Instant::now();
    let out = rig.run(&rig.config_with(&bin, "", "timeout = \"1s\""), &["tick"]);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("did not finish in 1s"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unknown_hermes_version_is_refused_before_any_write_unless_semantics_are_set() {
    let rig = Rig::new();
    rig.board(&[("t_a", "coder@gpu", "ready")]);
    let bin = rig.fake_hermes(
        "case \"$*\" in --version) echo 'hermes-fork 7';; *dispatch*) echo '{\"spawned\": []}';; esac",
    );
    let out = rig.run(&rig.config(&bin, ""), &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("hermes.max_semantics"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.calls(), ["--version"]);
    // Told the old per-tick semantics, `--max` is the number of releases.
    let out = rig.run(&rig.config(&bin, "max_semantics = \"per_tick\""), &["tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        &rig.calls()[1..],
        ["kanban assign t_a coder", "kanban dispatch --max 1 --json"]
    );
}

#[test]
fn a_named_board_gets_the_board_flag_and_its_own_path() {
    let rig = Rig::new();
    let dir = rig.home().join("kanban/boards/gpu");
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(dir.join("kanban.db")).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn.execute(
        "INSERT INTO tasks(id, title, assignee, status, created_at) VALUES ('t_g','g','coder@gpu','ready',1)",
        [],
    )
    .unwrap();
    drop(conn);
    let bin = rig.fake_hermes(&format!(
        "case \"$*\" in --version) {VERSION};; *dispatch*) echo '{{\"spawned\": [{{\"task_id\": \"t_g\", \"assignee\": \"coder\"}}]}}';; esac"
    ));
    let out = rig.run(&rig.config(&bin, "board = \"gpu\""), &["tick", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        rig.calls(),
        [
            "--version",
            "kanban --board gpu assign t_g coder",
            "kanban --board gpu dispatch --max 1 --json"
        ]
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["spawned"], serde_json::json!(["t_g"]));
    assert_eq!(report["leaks"], serde_json::json!([]));
}

#[test]
fn a_corrupt_or_quarantined_board_holds_with_a_clear_error_and_runs_no_hermes() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.home()).unwrap();
    std::fs::write(rig.db(), vec![7u8; 4096]).unwrap();
    let bin = rig.fake_hermes(VERSION);
    let cfg = rig.config(&bin, "");
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is corrupt"), "{}", text(&out));
    std::fs::remove_file(rig.db()).unwrap();
    rig.board(&[("t_a", "coder@gpu", "ready")]);
    std::fs::write(rig.home().join("kanban.db.corrupt.1a2b.bak"), "x").unwrap();
    let out = rig.run(&cfg, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("kanban.db.corrupt.1a2b.bak"),
        "{}",
        text(&out)
    );
    assert!(rig.calls().is_empty());
}

#[test]
fn repeat_runs_several_ticks_under_one_lock_and_prints_one_json_report_each() {
    let rig = Rig::new();
    rig.board(&[("t_a", "coder", "running")]);
    let bin = rig.fake_hermes(VERSION);
    let out = rig.run(
        &rig.config(&bin, ""),
        &["tick", "--repeat", "3", "--every", "50ms", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["observed"]["board_running"], 1);
}

#[test]
fn a_config_without_memory_total_exits_2_naming_the_key() {
    let rig = Rig::new();
    rig.board(&[]);
    let bin = rig.fake_hermes(VERSION);
    let cfg = rig.config(&bin, "");
    let t = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("memory_total = \"24GiB\"\n", "");
    std::fs::write(&cfg, t).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("gpu.memory_total"), "{}", text(&out));
}

#[test]
fn status_shows_running_and_waiting_per_profile_with_reasons_and_runs_no_hermes() {
    let rig = Rig::new();
    rig.board(&[
        ("t_run1", "coder", "running"),
        ("t_run2", "coder", "running"),
        ("t_wait", "coder@gpu", "ready"),
        ("t_kid", "coder@gpu", "todo"),
        ("t_ghost", "ghost@gpu", "ready"),
    ]);
    let bin = rig.fake_hermes(VERSION);
    let cfg = rig.config(&bin, "");
    let out = rig.run(&cfg, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    // 24 GiB, 4 GiB baseline, two 8 GiB tasks running: 20 GiB charged, 4 free.
    assert!(
        t.contains("pool default: 20.0 GiB charged of 24.0 GiB ceiling"),
        "{t}"
    );
    assert!(
        t.contains("coder                           2        2"),
        "{t}"
    );
    assert!(
        t.contains("t_wait (coder): waits for GPU memory: needs 8.0 GiB, 4.0 GiB free under the ceiling [VramHeadroom]"),
        "{t}"
    );
    assert!(
        t.contains("t_kid (coder): a parent task is not done yet [WaitingOnParent]"),
        "{t}"
    );
    assert!(
        t.contains("t_ghost (-): 'ghost@gpu' is not a governed profile or lane"),
        "{t}"
    );
    let out = rig.run(&cfg, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["profiles"][0]["running"], 2);
    assert_eq!(v["waiting"][0]["state"], "vram_headroom");
    // Declared vs learned: nothing learned yet.
    assert!(t.contains("footprint (tokens/req)"), "{t}");
    assert_eq!(v["footprints"][0]["profile"], "coder");
    assert_eq!(v["footprints"][0]["samples"], 0);
    assert!(v["footprints"][0]["declared_tokens"].as_u64().unwrap() > 0);
    assert!(v["footprints"][0]["learned_tokens"].is_null());
    assert!(rig.calls().is_empty());
    assert!(!rig.state_dir().exists(), "status wrote the state dir");
}

/// Issue 15: tasks Hermes blocked (its workers kept dying, or a worker asked for a human) show
/// in `status` with Hermes's reason; before, a board of such tasks read "0 running 0 waiting".
#[test]
fn status_shows_tasks_hermes_blocked_with_its_reason() {
    let rig = Rig::new();
    rig.board(&[
        ("t_dead", "coder", "blocked"),
        ("t_quiet", "coder", "blocked"),
        ("t_wait", "coder@gpu", "ready"),
    ]);
    let conn = rusqlite::Connection::open(rig.db()).unwrap();
    conn.execute_batch(
        "INSERT INTO task_events(task_id, kind, payload, created_at) VALUES
           ('t_dead', 'blocked', '{\"reason\": \"old reason\", \"kind\": \"worker\"}', 1),
           ('t_dead', 'gave_up', '{\"reason\": \"worker crashed 2 times\"}', 2);
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(conn);
    let bin = rig.fake_hermes(VERSION);
    let cfg = rig.config(&bin, "");
    let out = rig.run(&cfg, &["status"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("blocked by Hermes (2)"), "{t}");
    assert!(t.contains("t_dead (coder): worker crashed 2 times"), "{t}");
    assert!(t.contains("t_quiet (coder): no reason recorded"), "{t}");
    let out = rig.run(&cfg, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocked"][0]["id"], "t_dead");
    assert_eq!(v["blocked"][0]["reason"], "worker crashed 2 times");
    assert!(
        rig.calls().iter().all(|c| !c.contains("kanban")),
        "{:?}",
        rig.calls()
    );
}
