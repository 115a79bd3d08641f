//! The governor's own files, its lock and signals (issue 11, "Files" and "Signals"), driving
//! the real `tick`, `run`, `status` and `doctor` binaries against a board built with Hermes's
//! schema and a fake `hermes` script.
//!
//! The fake can stop inside `hermes kanban assign` until the test lets it go: it writes its
//! argv to the `started` FIFO, then reads the `go` FIFO. Each wait is on that event (or on the
//! process's exit), bounded by a deadline; nothing sleeps to "let it work".

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use rustix::process::Signal;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SCHEMA: &str = include_str!("fixtures/hermes_schema.sql");
const VERSION: &str = "echo 'Hermes Agent v0.19.0 (2026.7.20)'";
const SPAWNED_T_A: &str = "echo '{\"spawned\": [{\"task_id\": \"t_a\", \"assignee\": \"coder\"}]}'";
/// Long enough for any step of these tests on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    /// A board with one ready task `t_a` on lane `coder@gpu`.
    fn new() -> Rig {
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(rig.home()).unwrap();
        let conn = rusqlite::Connection::open(rig.home().join("kanban.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO tasks(id, title, assignee, status, created_at) VALUES ('t_a', 't_a', 'coder@gpu', 'ready', 100)",
            [],
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        rig
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn home(&self) -> PathBuf {
        self.path("hh")
    }
    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
    fn lock(&self) -> PathBuf {
        self.state_dir().join("tick.lock")
    }
    fn db(&self) -> PathBuf {
        self.state_dir().join("state.sqlite3")
    }
    /// A fake `hermes`: `--version` answers 0.19.0, `dispatch` spawns `t_a`, and `assign`
    /// either succeeds at once or (`blocking`) waits on the FIFOs (see the module doc).
    fn fake_hermes(&self, blocking: bool) -> PathBuf {
        let assign = if blocking {
            for f in ["started", "go"] {
                let st = Command::new("mkfifo").arg(self.path(f)).status().unwrap();
                assert!(st.success());
            }
            format!(
                "echo \"$*\" > '{}'; read go < '{}'",
                self.path("started").display(),
                self.path("go").display()
            )
        } else {
            "true".to_owned()
        };
        let path = self.path("hermes");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ncase \"$*\" in\n--version) {VERSION};;\n*assign*) {assign};;\n*dispatch*) {SPAWNED_T_A};;\nesac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
    fn config(&self, bin: &Path) -> PathBuf {
        let text = format!(
            "[hermes]\nbin = {:?}\nhome = {:?}\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n\n[dispatch]\nstate_dir = {:?}\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"128KiB\"\nmax_context_tokens = 65536\n",
            bin.display().to_string(),
            self.home().display().to_string(),
            self.state_dir().display().to_string()
        );
        let p = self.path("governor.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kanban-governor"));
        c.args(args)
            .arg("--config")
            .arg(config)
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .env_remove("KANBAN_GOVERNOR_CONFIG");
        c
    }
    fn run(&self, config: &Path, args: &[&str]) -> Output {
        self.command(config, args).output().unwrap()
    }
    /// Wait (bounded) until the fake is inside `assign`; its argv.
    fn wait_started(&self) -> String {
        let p = self.path("started");
        within(DEADLINE, "the fake hermes to start assigning", move || {
            std::fs::read_to_string(p).unwrap()
        })
    }
    /// Let the fake's `assign` return.
    fn go(&self) {
        let p = self.path("go");
        within(DEADLINE, "the fake hermes to read go", move || {
            std::fs::write(p, "go\n").unwrap()
        });
    }
    /// The journal's releases: (task, outcome).
    fn releases(&self) -> Vec<(String, Option<String>)> {
        let conn = rusqlite::Connection::open_with_flags(
            format!("file:{}?mode=ro", self.db().display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT task, outcome FROM releases ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

/// Run `f` on a thread and wait up to `d` for it, panicking with `what` after that.
fn within<T: Send + 'static>(d: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(d)
        .unwrap_or_else(|e| panic!("timed out after {d:?} waiting for {what}: {e}"))
}

/// Wait (bounded) for `child` to exit; its output. Killed if it does not.
fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(e) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("pid {pid} did not exit within {DEADLINE:?}: {e}")
        }
    }
}

fn signal(child: &Child, sig: Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Every entry under `dir`: name, mode, size, and a regular file's bytes.
fn snapshot(dir: &Path) -> Vec<(String, u32, u64, Option<Vec<u8>>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let bytes = m.is_file().then(|| std::fs::read(e.path()).unwrap());
            (
                e.file_name().to_string_lossy().into_owned(),
                m.mode(),
                m.len(),
                bytes,
            )
        })
        .collect();
    v.sort();
    v
}

/// The `governor_lock` check of `doctor --json`.
fn doctor_lock_check(rig: &Rig, config: &Path) -> serde_json::Value {
    let out = rig.run(config, &["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {}", text(&out)));
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "governor_lock")
        .cloned()
        .unwrap_or_else(|| panic!("no governor_lock check: {checks}"))
}

#[test]
fn under_umask_000_the_state_dir_is_0700_and_the_lock_state_and_its_wal_0600() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(true));
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_kanban-governor"))
        .args(["tick", "--config"])
        .arg(&cfg)
        .env_remove("HERMES_KANBAN_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    // Mid-tick the state database is open: its -wal and -shm exist.
    assert_eq!(rig.wait_started().trim(), "kanban assign t_a coder");
    let db = rig.db();
    let modes: Vec<(String, u32)> = [
        rig.state_dir(),
        rig.lock(),
        db.clone(),
        db.with_extension("sqlite3-wal"),
        db.with_extension("sqlite3-shm"),
    ]
    .iter()
    .map(|p| (p.display().to_string(), mode(p)))
    .collect();
    rig.go();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let want: Vec<u32> = vec![0o700, 0o600, 0o600, 0o600, 0o600];
    assert_eq!(
        modes.iter().map(|m| m.1).collect::<Vec<_>>(),
        want,
        "{modes:?} (decimal)"
    );
    assert_eq!(mode(&rig.db()), 0o600);
}

#[test]
fn a_state_dir_others_can_write_or_another_user_owns_is_refused_with_exit_2_and_the_fix() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(false));
    std::fs::create_dir(rig.state_dir()).unwrap();
    std::fs::set_permissions(rig.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("chmod 700 {}", rig.state_dir().display())),
        "{t}"
    );
    assert!(t.contains("writable by group and others"), "{t}");
    assert_eq!(std::fs::read_dir(rig.state_dir()).unwrap().count(), 0);
    let out = rig.run(&cfg, &["doctor", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chmod 700"),
        "{}",
        text(&out)
    );

    // Owned by another user: as root, a directory given to `nobody`; otherwise `/`, which
    // root owns. Either way nothing is written.
    let other = if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(rig.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(rig.state_dir(), Some(65534), Some(65534)).unwrap();
        rig.state_dir()
    } else {
        PathBuf::from("/")
    };
    let t = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("state_dir = {:?}", rig.state_dir().display().to_string()),
        &format!("state_dir = {:?}", other.display().to_string()),
    );
    std::fs::write(&cfg, t).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("is owned by uid"), "{t}");
    assert!(t.contains("`chown "), "{t}");
    assert_eq!(std::fs::read_dir(rig.state_dir()).unwrap().count(), 0);
}

#[test]
fn a_symlink_planted_as_the_lock_is_refused_and_its_target_not_created() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(false));
    std::fs::create_dir(rig.state_dir()).unwrap();
    std::fs::set_permissions(rig.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = rig.path("victim");
    std::os::unix::fs::symlink(&victim, rig.lock()).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "{} is a symbolic link",
            rig.state_dir()
                .canonicalize()
                .unwrap()
                .join("tick.lock")
                .display()
        )),
        "{t}"
    );
    assert!(t.contains("remove it (`rm "), "{t}");
    assert!(!victim.exists(), "the lock's symlink target was created");

    // An existing target keeps its bytes and its mode.
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(mode(&victim), 0o644);
}

#[test]
fn a_symlink_planted_as_the_state_db_is_refused_and_its_target_untouched() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(false));
    std::fs::create_dir(rig.state_dir()).unwrap();
    std::fs::set_permissions(rig.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // An empty file is a database SQLite would happily write its schema into.
    let victim = rig.path("victim");
    std::fs::write(&victim, "").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, rig.db()).unwrap();
    for args in [&["tick"][..], &["tick", "--dry-run"], &["status"]] {
        let out = rig.run(&cfg, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("state.sqlite3 is a symbolic link"),
            "{args:?}: {t}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"", "{args:?}");
        assert_eq!(mode(&victim), 0o644, "{args:?}");
        assert!(!rig.path("victim-wal").exists(), "{args:?}");
    }
    // A planted -wal is refused likewise.
    std::fs::remove_file(rig.db()).unwrap();
    std::os::unix::fs::symlink(&victim, rig.db().with_extension("sqlite3-wal")).unwrap();
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("state.sqlite3-wal is a symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"");
}

#[test]
fn a_lock_held_by_a_process_that_is_not_a_governor_fails_tick_and_doctor_naming_it() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(false));
    // A first tick creates the state dir and the lock (and releases t_a).
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut holder = Command::new("flock")
        .arg(rig.lock())
        .args(["-c", "echo locked; cat >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let line = within(DEADLINE, "flock to take the lock", move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).unwrap();
        l
    });
    assert_eq!(line.trim(), "locked");
    let pid = holder.id();

    let out = rig.run(&cfg, &["tick"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("is held by pid {pid} (user uid ")),
        "{t}"
    );
    assert!(t.contains("`flock "), "{t}");
    assert!(t.contains("not a kanban-governor of this user"), "{t}");
    assert!(t.contains(&format!("`kill {pid}`")), "{t}");

    let check = doctor_lock_check(&rig, &cfg);
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid}")),
        "{check}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kill {pid}")),
        "{check}"
    );

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn sigterm_sigint_or_sighup_mid_dispatch_lets_tick_finish_the_call_save_and_journal_then_exit_0() {
    for sig in [Signal::TERM, Signal::INT, Signal::HUP] {
        let rig = Rig::new();
        let cfg = rig.config(&rig.fake_hermes(true));
        // Five ticks an hour apart: only a signal that ends the wait lets this finish.
        let child = rig
            .command(&cfg, &["tick", "--json", "--repeat", "5", "--every", "1h"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(rig.wait_started().trim(), "kanban assign t_a coder");

        // Meanwhile this user's own governor holds the lock: a second tick has nothing to
        // do (exit 0), and doctor says the holder is a governor.
        let out = rig.run(&cfg, &["tick"]);
        assert_eq!(out.status.code(), Some(0), "{sig:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("another kanban-governor (pid {})", child.id())),
            "{sig:?}: {}",
            text(&out)
        );
        let check = doctor_lock_check(&rig, &cfg);
        assert_eq!(check["status"], "ok", "{sig:?}: {check}");

        signal(&child, sig);
        rig.go();
        let out = wait_output(child);
        assert_eq!(out.status.code(), Some(0), "{sig:?}: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{sig:?}: one report expected ({e}): {}", text(&out)));
        assert_eq!(report["released"], serde_json::json!(["t_a"]), "{sig:?}");
        assert_eq!(report["spawned"], serde_json::json!(["t_a"]), "{sig:?}");
        assert_eq!(
            rig.releases(),
            [("t_a".to_owned(), Some("spawned".to_owned()))],
            "{sig:?}"
        );
        let state = common::saved_state(&rig.state_dir());
        assert_eq!(state["in_flight"], serde_json::json!({}), "{sig:?}");
        assert_eq!(state["counters"]["ticks"], 1, "{sig:?}");
    }
}

#[test]
fn sighup_mid_dispatch_lets_run_finish_the_tick_save_and_journal_then_exit_0() {
    let rig = Rig::new();
    let bin = rig.fake_hermes(true);
    let cfg = daemon::DaemonConfig::new(
        &bin,
        &rig.home(),
        "1h",
        "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"ollama\"\nurl = \"none\"",
        &[("coder", "128KiB", 65536)],
    );
    let d = daemon::Daemon::start(cfg.command(&[], &[]));
    assert_eq!(rig.wait_started().trim(), "kanban assign t_a coder");
    signal(&d.child, Signal::HUP);
    rig.go();
    let mut d = d;
    assert_eq!(d.wait_exit(DEADLINE), Some(0), "{}", d.log());
    assert!(d.log().contains("SIGHUP"), "{}", d.log());
    let conn = rusqlite::Connection::open_with_flags(
        format!(
            "file:{}?mode=ro",
            cfg.state_dir.join("state.sqlite3").display()
        ),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let releases: Vec<(String, Option<String>)> = conn
        .prepare("SELECT task, outcome FROM releases ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        releases,
        [("t_a".to_owned(), Some("spawned".to_owned()))],
        "{}",
        d.log()
    );
    let state = common::saved_state(&cfg.state_dir);
    assert_eq!(state["in_flight"], serde_json::json!({}));
    assert_eq!(state["counters"]["ticks"], 1);
}

#[test]
fn status_and_dry_run_leave_the_state_dir_byte_identical() {
    let rig = Rig::new();
    let cfg = rig.config(&rig.fake_hermes(false));
    let out = rig.run(&cfg, &["tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A second task, so the dry run has something to decide.
    let conn = rusqlite::Connection::open(rig.home().join("kanban.db")).unwrap();
    conn.execute(
        "INSERT INTO tasks(id, title, assignee, status, created_at) VALUES ('t_b', 't_b', 'coder@gpu', 'ready', 101)",
        [],
    )
    .unwrap();
    drop(conn);
    let before = snapshot(&rig.state_dir());
    assert!(
        before.iter().any(|e| e.0 == "state.sqlite3"),
        "{:?}",
        before.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for args in [&["status"][..], &["tick", "--dry-run", "--json"]] {
        let out = rig.run(&cfg, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let after = snapshot(&rig.state_dir());
        assert_eq!(
            after.iter().map(|e| &e.0).collect::<Vec<_>>(),
            before.iter().map(|e| &e.0).collect::<Vec<_>>(),
            "{args:?} created or removed a file in the state dir"
        );
        assert!(after == before, "{args:?} changed a file in the state dir");
    }
}
