//! `kanban-governor doctor` run as a binary against real Hermes homes made by the real Hermes
//! CLI (hermes-agent 0.19.0 from `scripts/test`), including a real `hermes gateway run` whose
//! embedded dispatcher holds `.dispatcher.lock`.
//!
//! Hermes is found through `KG_HERMES_BIN`, else `<repo>/target/hermes-venv/bin/hermes`; when
//! neither exists these tests fail and say to run `scripts/test`.

use kanban_governor::adapters::hermes_home;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GOVERNOR: &str = env!("CARGO_BIN_EXE_kanban-governor");

/// Env vars that would steer Hermes or the governor away from the test's temp dirs.
const SCRUBBED: &[&str] = &[
    "HERMES_KANBAN_HOME",
    "HERMES_KANBAN_DB",
    "HERMES_KANBAN_BOARD",
    "HERMES_KANBAN_DISPATCH_IN_GATEWAY",
    "HERMES_PROFILE",
    "KANBAN_GOVERNOR_CONFIG",
];

fn hermes_bin() -> PathBuf {
    let bin = std::env::var_os("KG_HERMES_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hermes-venv/bin/hermes"),
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "the Hermes CLI is missing at {}: run scripts/test (it installs hermes-agent 0.19.0 into target/hermes-venv and sets KG_HERMES_BIN)",
        bin.display()
    );
    bin
}

/// The governor config of a host with no GPU and no engine endpoint.
const NO_GPU: &str = "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n";

/// A throwaway Hermes home (outside the fake `HOME`, so it is its own kanban root).
struct Home {
    _dir: tempfile::TempDir,
    hermes_home: PathBuf,
    user_home: PathBuf,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let hermes_home = dir.path().join("hermes");
        let user_home = dir.path().join("user");
        std::fs::create_dir_all(&hermes_home).unwrap();
        std::fs::create_dir_all(&user_home).unwrap();
        Home {
            _dir: dir,
            hermes_home,
            user_home,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        for k in SCRUBBED {
            c.env_remove(k);
        }
        c.env("HERMES_HOME", &self.hermes_home)
            .env("HOME", &self.user_home)
            .stdin(Stdio::null());
        c
    }

    /// Runs the real Hermes CLI with these args; panics with its output on failure.
    fn hermes(&self, args: &[&str]) {
        let out = self.command(&hermes_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "hermes {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Write `$HERMES_HOME/governor.toml` (where doctor looks by default).
    fn governor_config(&self, text: &str) {
        std::fs::write(self.hermes_home.join("governor.toml"), text).unwrap();
    }

    fn doctor(&self, extra: &[&str]) -> Output {
        // A host without a GPU: static telemetry and no engine endpoint, unless the test
        // wrote its own config.
        let cfg = self.hermes_home.join("governor.toml");
        if !cfg.exists() {
            self.governor_config(NO_GPU);
        }
        let state = self.hermes_home.join("state");
        self.command(Path::new(GOVERNOR))
            .arg("doctor")
            .arg("--hermes-bin")
            .arg(hermes_bin())
            .arg("--hermes-home")
            .arg(&self.hermes_home)
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of the human report for one check.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

/// A `hermes gateway run` in its own process group, killed with its group on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    fn start(home: &Home) -> Gateway {
        use std::os::unix::process::CommandExt as _;
        let log = home.hermes_home.join("gateway-test.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = home
            .command(&hermes_bin())
            .args(["gateway", "run"])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap();
        Gateway { child, log }
    }

    /// Polls (bounded) until `done` holds; panics with the gateway's log if it exits first or
    /// the time runs out.
    fn wait_for(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "hermes gateway exited ({status}) before {what}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after 90 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn a_fresh_board_made_by_hermes_is_reported_ok_and_in_wal_mode() {
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    home.hermes(&["kanban", "create", "one task", "--assignee", "nobody@gpu"]);
    let out = home.doctor(&[]);
    let report = stdout(&out);
    // No gateway runs, so the default-on gateway dispatcher is only a warning.
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(line(&report, "board").starts_with("ok "), "{report}");
    assert!(
        line(&report, "board").contains("1 tasks (ready 1)"),
        "{report}"
    );
    assert!(
        line(&report, "board_journal").starts_with("ok "),
        "{report}"
    );
    assert!(
        line(&report, "board_journal").contains("journal_mode is wal"),
        "{report}"
    );
    assert!(
        line(&report, "hermes_version").contains("0.19.0"),
        "{report}"
    );
    assert!(
        line(&report, "hermes_version").contains("live cap"),
        "{report}"
    );
    assert!(
        line(&report, "gateway_dispatcher").starts_with("warn "),
        "{report}"
    );
    assert!(
        line(&report, "max_in_progress").starts_with("ok "),
        "{report}"
    );

    let out = home.doctor(&["--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let board = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "board_journal")
        .unwrap();
    assert_eq!(board["status"], "ok");
    assert!(board.get("fix").is_some());
}

#[test]
fn a_missing_board_fails_with_hermes_kanban_init_as_the_fix() {
    let home = Home::new();
    let out = home.doctor(&[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let board = line(&report, "board");
    assert!(board.starts_with("fail "), "{report}");
    assert!(board.contains("hermes kanban init"), "{report}");
}

#[test]
fn a_running_gateway_dispatcher_is_a_fail_with_the_fix() {
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    let mut gw = Gateway::start(&home);
    let lock = hermes_home::dispatcher_lock_path(&home.hermes_home);
    gw.wait_for("the dispatcher lock in /proc/locks", || {
        hermes_home::read_lock_holders(&lock).is_ok_and(|h| !h.is_empty())
    });
    let out = home.doctor(&[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let gateway = line(&report, "gateway_dispatcher");
    assert!(gateway.starts_with("fail "), "{report}");
    assert!(
        gateway.contains(&format!("gateway pid {} holds", gw.child.id())),
        "{report}"
    );
    assert!(
        gateway.contains("set kanban.dispatch_in_gateway: false"),
        "{report}"
    );
    assert!(gateway.contains("restart the gateway"), "{report}");
}

#[test]
fn a_gateway_with_its_dispatcher_turned_off_by_hermes_config_is_ok() {
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    home.hermes(&["config", "set", "kanban.dispatch_in_gateway", "false"]);
    let mut gw = Gateway::start(&home);
    let pid_file = home.hermes_home.join("gateway.pid");
    let pid = gw.child.id();
    gw.wait_for("gateway.pid", || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| hermes_home::parse_gateway_pid(&t))
            .is_some_and(|g| g.pid == pid)
    });
    let out = home.doctor(&[]);
    let report = stdout(&out);
    let gateway = line(&report, "gateway_dispatcher");
    assert!(gateway.starts_with("ok "), "{report}");
    assert!(
        gateway.contains(&format!("gateway pid {pid} runs without it")),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(0), "{report}");
}

#[test]
fn max_in_progress_set_with_the_hermes_cli_fails_with_the_removal_fix() {
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    home.hermes(&["config", "set", "kanban.max_in_progress", "3"]);
    let out = home.doctor(&[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let cap = line(&report, "max_in_progress");
    assert!(cap.starts_with("fail "), "{report}");
    assert!(
        cap.contains("fix: remove kanban.max_in_progress"),
        "{report}"
    );
}

#[test]
fn cron_and_systemd_output_use_absolute_paths() {
    let home = Home::new();
    let exe = std::fs::canonicalize(GOVERNOR).unwrap();
    // A relative --config is made absolute.
    let out = home
        .command(Path::new(GOVERNOR))
        .current_dir(&home.hermes_home)
        .args(["doctor", "--cron", "--config", "governor.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let cron = stdout(&out);
    let entry = cron.lines().find(|l| !l.starts_with('#')).unwrap();
    let cfg = home.hermes_home.join("governor.toml");
    assert!(entry.starts_with("* * * * * HERMES_HOME=/"), "{cron}");
    assert!(
        entry.contains(&format!(
            "{} tick --config {} --repeat 4 --every 15s >> /",
            exe.display(),
            cfg.display()
        )),
        "{cron}"
    );
    assert!(entry.ends_with("/tick.log 2>&1"), "{cron}");

    let out = home
        .command(Path::new(GOVERNOR))
        .args(["doctor", "--systemd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let units = stdout(&out);
    assert!(
        units.contains(&format!(
            "ExecStart={} run --config {}/governor.toml",
            exe.display(),
            home.hermes_home.display()
        )),
        "{units}"
    );
    assert!(
        units.contains(&format!(
            "Environment=HERMES_HOME={}",
            home.hermes_home.display()
        )),
        "{units}"
    );
    for name in [
        "kanban-governor.service",
        "kanban-governor-tick.service",
        "kanban-governor-tick.timer",
    ] {
        assert!(
            units.contains(&format!("/etc/systemd/system/{name}")),
            "{units}"
        );
    }
}

/// Issue 15: doctor checks, live, what `tick` and `run` need: the telemetry source loads, the
/// engine answers, the KV capacity is known and fits the GPU. Each failing case here is one a
/// `tick` would then fail or hold on; the last config passes and the next tick works.
#[test]
fn doctor_checks_telemetry_engine_and_kv_capacity_live_and_passing_means_tick_works() {
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    home.hermes(&["profile", "create", "coder", "--no-alias", "--no-skills"]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let profile = "\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"256KiB\"\nmax_context_tokens = 8192\n";
    let cases = [
        (
            "[gpu]\ntelemetry = \"nvml\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n".to_owned(),
            "config:gpu.telemetry",
        ),
        (
            format!("[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n\n[engine]\nkind = \"vllm\"\nurl = \"{dead}\"\nkv_capacity_tokens = 100000\n"),
            "engine:default",
        ),
        (
            // 442,368 tokens × 256 KiB = 108 GiB of KV on an 80 GiB GPU.
            "[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n\n[engine]\nkind = \"vllm\"\nurl = \"none\"\nkv_capacity_tokens = 442368\n".to_owned(),
            "capacity:default",
        ),
        (
            "[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n\n[engine]\nkind = \"vllm\"\nurl = \"none\"\n".to_owned(),
            "capacity:default",
        ),
    ];
    for (config, failing) in cases {
        home.governor_config(&format!("{config}{profile}"));
        let out = home.doctor(&[]);
        let report = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{failing}: {report}");
        assert!(
            line(&report, failing).starts_with("fail "),
            "{failing}: {report}"
        );
    }
    home.governor_config(&format!(
        "[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n\n[engine]\nkind = \"vllm\"\nurl = \"none\"\nkv_capacity_tokens = 100000\n{profile}"
    ));
    let out = home.doctor(&[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        line(&report, "capacity:default").contains("within the GPU"),
        "{report}"
    );
    assert!(
        line(&report, "telemetry:default").starts_with("ok "),
        "{report}"
    );
    // Doctor passed: the next tick works.
    let tick = home
        .command(Path::new(GOVERNOR))
        .args(["tick", "--hermes-bin"])
        .arg(hermes_bin())
        .arg("--state-dir")
        .arg(home.hermes_home.join("state"))
        .output()
        .unwrap();
    assert_eq!(
        tick.status.code(),
        Some(0),
        "{}{}",
        stdout(&tick),
        String::from_utf8_lossy(&tick.stderr)
    );
}

#[test]
fn with_the_proxy_on_a_profile_not_pointed_at_it_fails_and_the_printed_fix_run_as_is_makes_it_pass()
{
    let home = Home::new();
    home.hermes(&["kanban", "init"]);
    home.hermes(&["profile", "create", "coder", "--no-alias", "--no-skills"]);
    home.governor_config(&format!(
        "{NO_GPU}\n[proxy]\nlisten = \"127.0.0.1:9478\"\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"128KiB\"\nmax_context_tokens = 8192\n"
    ));
    let check = |want: &str| {
        let out = home.doctor(&[]);
        let report = stdout(&out);
        let l = line(&report, "proxy_base_url:coder").to_owned();
        assert!(l.starts_with(want), "{report}");
        (out.status.code(), l)
    };

    // A fresh profile has no base_url: the check fails and names the command.
    let (code, l) = check("fail ");
    assert_eq!(code, Some(1), "{l}");
    let command = format!(
        "{} -p coder config set model.base_url http://127.0.0.1:9478/p/coder/v1",
        hermes_bin().display()
    );
    assert!(l.contains(&command), "{l}");
    // The fix, run by a shell exactly as printed, with the real Hermes CLI.
    let fix = l
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no `command` in {l}"));
    let out = home
        .command(Path::new("/bin/sh"))
        .env_remove("HERMES_HOME")
        .args(["-c", fix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{fix}: {out:?}");
    let (code, l) = check("ok ");
    assert_eq!(code, Some(0), "{l}");

    // Pointed straight at the engine again: it fails again.
    home.hermes(&[
        "-p",
        "coder",
        "config",
        "set",
        "model.base_url",
        "http://127.0.0.1:8000/v1",
    ]);
    let (_, l) = check("fail ");
    assert!(
        l.contains("http://127.0.0.1:8000/v1") && l.contains(&command),
        "{l}"
    );
}
