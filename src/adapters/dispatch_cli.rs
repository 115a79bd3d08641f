//! [`Dispatcher`] through the Hermes CLI: `hermes kanban assign`, `reclaim` and
//! `dispatch --max N --json`, and `hermes --version` once to learn what `--max` means.
//!
//! Every call runs the binary at an absolute path (`hermes.bin`; cron's `PATH` is not
//! trusted), with argv (never a shell), one at a time, in its own process group, with a
//! timeout after which the whole group gets SIGTERM and then SIGKILL (Hermes is Python and
//! may have children). A non-zero exit becomes an error that carries Hermes's stderr. At most
//! [`MAX_OUTPUT_BYTES`] of each of stdout and stderr is kept; the rest is read and dropped (so
//! Hermes never blocks on a full pipe) and the call is an error.
//!
//! Side effects: whatever those Hermes commands write to the board. Workers that
//! `dispatch` spawns run in their own session (HERMES.md §4) and survive a timeout kill.

use crate::adapters::{child, hermes_home};
use crate::governor::TaskId;
use crate::ports::{DispatchOutcome, Dispatcher, MaxSemantics, PortError, Spawned};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use thiserror::Error;

/// Default time one Hermes call may take. `dispatch` with 4 spawns takes about 1 s on two
/// cores and a cold first Hermes start about 10 s (HERMES.md §6.3); 60 s leaves room for a
/// slow disk without letting a hung call hold the governor's lock for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a timed-out group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The most bytes of one Hermes call's stdout, and of its stderr, kept in memory.
// `dispatch --json` prints well under 1 KiB per spawned task and a Python traceback a few KiB;
// 8 MiB is thousands of times that, and bounds the governor's memory (300 MB of output once
// took it to 595 MB RSS, issue 11).
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// Errors calling Hermes.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// `hermes.bin` is relative.
    #[error(
        "hermes.bin = {0:?} is not an absolute path; cron has no useful PATH, so give the full path (`command -v hermes` shows it)"
    )]
    BinNotAbsolute(PathBuf),
    /// `hermes.bin` does not exist or is not executable.
    #[error("hermes.bin = {path:?} cannot be run ({detail}); check hermes.bin")]
    BinNotRunnable {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A task id or assignee Hermes would read as a flag (or split), refused before any call.
    #[error(
        "refusing to pass {what} {value:?} to 'hermes {command}': it starts with '-' or holds whitespace or control characters, so Hermes would read it as a flag; fix the task on the board"
    )]
    UnsafeArgument {
        /// The subcommand.
        command: String,
        /// `task id` or `assignee`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Hermes exited non-zero.
    #[error("'hermes {command}' exited {code}: {stderr}; check hermes.bin and the board")]
    Failed {
        /// The subcommand (`kanban assign`, ...).
        command: String,
        /// Exit code, or the signal as `signal N`.
        code: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// Hermes ran past the timeout and was killed.
    #[error(
        "'hermes {command}' did not finish in {timeout:?} and was killed; check hermes.bin and the board's lock files"
    )]
    Timeout {
        /// The subcommand.
        command: String,
        /// The timeout.
        timeout: Duration,
    },
    /// `dispatch --json` printed something else.
    #[error("'hermes {command}' printed no dispatch JSON ({detail}): {stdout}")]
    BadOutput {
        /// The subcommand.
        command: String,
        /// The parse error.
        detail: String,
        /// What it printed (first 500 chars).
        stdout: String,
    },
    /// The Hermes version is unknown, so what `--max` means is unknown.
    #[error(
        "cannot tell what `hermes kanban dispatch --max` means for Hermes {found:?}; set hermes.max_semantics = \"live_cap\" (Hermes from May 2026, hermes-agent#23295) or \"per_tick\" (older)"
    )]
    UnknownVersion {
        /// What `hermes --version` printed first.
        found: String,
    },
    /// Hermes printed more than [`MAX_OUTPUT_BYTES`] on stdout or stderr.
    #[error(
        "'hermes {command}' printed more than {limit} bytes on {stream} ({dropped} more dropped); its output is not trusted: check hermes.bin and what it prints"
    )]
    OutputTooLarge {
        /// The subcommand.
        command: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The limit kept.
        limit: usize,
        /// Bytes read past the limit and dropped.
        dropped: u64,
    },
    /// Spawning or waiting failed at the OS level.
    #[error("running hermes.bin {path:?}: {source}")]
    Io {
        /// The binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DispatchError {
    /// Whether the user can fix this in the config (exit 2) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DispatchError::BinNotAbsolute(_)
                | DispatchError::BinNotRunnable { .. }
                | DispatchError::UnknownVersion { .. }
        )
    }
}

/// How to reach the board through the CLI.
#[derive(Debug, Clone)]
pub struct CliDispatcherConfig {
    /// Absolute path of the `hermes` executable.
    pub bin: PathBuf,
    /// `HERMES_HOME` to run it under, if any (else the governor's own environment).
    pub home: Option<PathBuf>,
    /// Board slug, passed as `--board` unless `default`/`None`.
    pub board: Option<String>,
    /// What `--max` means; `None`: detect from `hermes --version`.
    pub max_semantics: Option<MaxSemantics>,
    /// Timeout per call.
    pub timeout: Duration,
    /// Extra environment for Hermes (and the workers `dispatch` spawns).
    pub env: Vec<(String, String)>,
}

/// The Hermes CLI as a [`Dispatcher`].
#[derive(Debug)]
pub struct CliDispatcher {
    cfg: CliDispatcherConfig,
    semantics: Option<MaxSemantics>,
}

impl CliDispatcher {
    /// Check the binary path (absolute, an executable file) without running anything.
    ///
    /// # Errors
    ///
    /// [`DispatchError::BinNotAbsolute`] or [`DispatchError::BinNotRunnable`].
    pub fn new(cfg: CliDispatcherConfig) -> Result<CliDispatcher, DispatchError> {
        check_bin(&cfg.bin)?;
        Ok(CliDispatcher {
            semantics: cfg.max_semantics,
            cfg,
        })
    }

    fn kanban_args(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec!["kanban".to_owned()];
        if let Some(b) = self.cfg.board.as_deref().filter(|b| *b != "default") {
            v.push("--board".into());
            v.push(b.into());
        }
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    /// `hermes kanban assign <id> <assignee>`.
    fn assign_one(&self, id: &TaskId, assignee: &str) -> Result<(), DispatchError> {
        argv_safe("kanban assign", "task id", &id.0)?;
        argv_safe("kanban assign", "assignee", assignee)?;
        let argv = self.kanban_args(&["assign", &id.0, assignee]);
        self.run_ok("kanban assign", &argv)?;
        Ok(())
    }

    /// Run `hermes <argv>` and return its stdout, or an error carrying its stderr.
    fn run_ok(&self, label: &str, argv: &[String]) -> Result<String, DispatchError> {
        let f = self.run(label, argv)?;
        for (stream, c) in [("stdout", &f.stdout), ("stderr", &f.stderr)] {
            if c.dropped > 0 {
                return Err(DispatchError::OutputTooLarge {
                    command: label.to_owned(),
                    stream,
                    limit: MAX_OUTPUT_BYTES,
                    dropped: c.dropped,
                });
            }
        }
        let (code, signal) = (f.status.code(), f.status.signal());
        let (stdout, stderr) = (f.stdout.text, f.stderr.text);
        if code == Some(0) {
            return Ok(stdout);
        }
        let code = match (code, signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "abnormally".into(),
        };
        let mut stderr = stderr.trim().to_owned();
        if stderr.is_empty() {
            stderr = stdout.trim().to_owned();
        }
        if stderr.len() > 2000 {
            // Keep the end: Python tracebacks put the cause last.
            let cut = stderr.len() - 2000;
            let cut = (cut..stderr.len())
                .find(|i| stderr.is_char_boundary(*i))
                .unwrap_or(cut);
            stderr = format!("...{}", &stderr[cut..]);
        }
        Err(DispatchError::Failed {
            command: label.to_owned(),
            code,
            stderr,
        })
    }

    fn run(&self, label: &str, argv: &[String]) -> Result<child::Finished, DispatchError> {
        let mut cmd = Command::new(&self.cfg.bin);
        cmd.args(argv);
        if let Some(home) = &self.cfg.home {
            cmd.env("HERMES_HOME", home);
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        tracing::debug!(bin = %self.cfg.bin.display(), args = ?argv, "Running Hermes.");
        match child::run(&mut cmd, self.cfg.timeout, KILL_GRACE, MAX_OUTPUT_BYTES) {
            Ok(child::Ran::Finished(f)) => Ok(f),
            Ok(child::Ran::TimedOut) => Err(DispatchError::Timeout {
                command: label.to_owned(),
                timeout: self.cfg.timeout,
            }),
            Err(child::RunError::Spawn(e)) => Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    DispatchError::BinNotRunnable {
                        path: self.cfg.bin.clone(),
                        detail: e.to_string(),
                    }
                }
                _ => DispatchError::Io {
                    path: self.cfg.bin.clone(),
                    source: e,
                },
            }),
            Err(child::RunError::Wait(e)) => Err(DispatchError::Io {
                path: self.cfg.bin.clone(),
                source: e,
            }),
        }
    }
}

/// The binary must be an absolute path to an existing file.
///
/// # Errors
///
/// [`DispatchError::BinNotAbsolute`] or [`DispatchError::BinNotRunnable`].
pub fn check_bin(bin: &Path) -> Result<(), DispatchError> {
    if !bin.is_absolute() {
        return Err(DispatchError::BinNotAbsolute(bin.to_owned()));
    }
    match std::fs::metadata(bin) {
        Ok(m) if m.is_file() => rustix::fs::access(bin, rustix::fs::Access::EXEC_OK).map_err(|e| {
            DispatchError::BinNotRunnable {
                path: bin.to_owned(),
                detail: format!(
                    "not executable by this user: {e}; `chmod +x` it or point at the real hermes"
                ),
            }
        }),
        Ok(_) => Err(DispatchError::BinNotRunnable {
            path: bin.to_owned(),
            detail: "not a file".into(),
        }),
        Err(e) => Err(DispatchError::BinNotRunnable {
            path: bin.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// What `--max` means, from `hermes --version` (`Hermes Agent v0.19.0 (2026.7.20)`), by the
/// same rule `doctor` applies ([`hermes_home::max_semantics_of`]): a live cap from 0.19.0 or
/// for releases dated after hermes-agent#23295, else a per-tick budget. `None`: not a Hermes
/// version line.
pub fn semantics_from_version(text: &str) -> Option<MaxSemantics> {
    let (version, release_date) = hermes_home::parse_version_output(text)?;
    let v = hermes_home::HermesVersion {
        version,
        release_date,
        source: "hermes --version".into(),
    };
    Some(hermes_home::max_semantics_of(&v))
}

/// `hermes kanban dispatch --json` output (HERMES.md §3.5) into a [`DispatchOutcome`].
///
/// # Errors
///
/// The text holds no JSON object of that shape (the message says what is wrong).
pub fn parse_dispatch_json(stdout: &str) -> Result<DispatchOutcome, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        reclaimed: u64,
        #[serde(default)]
        crashed: Vec<String>,
        #[serde(default)]
        promoted: u64,
        spawned: Vec<RawSpawned>,
        #[serde(default)]
        skipped_nonspawnable: Vec<String>,
        #[serde(default)]
        skipped_per_profile_capped: Vec<RawCapped>,
    }
    #[derive(serde::Deserialize)]
    struct RawSpawned {
        task_id: String,
        #[serde(default)]
        assignee: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct RawCapped {
        task_id: String,
    }
    let trimmed = stdout.trim();
    // Hermes may print a warning line before the JSON; take the first line that opens it.
    let json = if trimmed.starts_with('{') {
        trimmed
    } else {
        let at = trimmed
            .find("\n{")
            .map(|i| i + 1)
            .ok_or_else(|| "no JSON object found".to_owned())?;
        &trimmed[at..]
    };
    let raw: Raw = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(DispatchOutcome {
        spawned: raw
            .spawned
            .into_iter()
            .map(|s| Spawned {
                id: TaskId::from(s.task_id),
                assignee: s.assignee.unwrap_or_default(),
            })
            .collect(),
        crashed: raw.crashed.into_iter().map(TaskId::from).collect(),
        reclaimed: raw.reclaimed,
        promoted: raw.promoted,
        skipped_nonspawnable: raw
            .skipped_nonspawnable
            .into_iter()
            .map(TaskId::from)
            .collect(),
        skipped_per_profile_capped: raw
            .skipped_per_profile_capped
            .into_iter()
            .map(|c| TaskId::from(c.task_id))
            .collect(),
    })
}

/// A value passed to Hermes as a positional argument must not read as a flag: argv keeps a
/// shell out, but `hermes kanban assign --help x` would still print help and exit 0.
fn argv_safe(command: &str, what: &'static str, value: &str) -> Result<(), DispatchError> {
    if value.is_empty()
        || value.starts_with('-')
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(DispatchError::UnsafeArgument {
            command: command.to_owned(),
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl Dispatcher for CliDispatcher {
    fn max_semantics(&mut self) -> Result<MaxSemantics, PortError> {
        if let Some(s) = self.semantics {
            return Ok(s);
        }
        // The installed package says it without starting Python (a quarter second per tick).
        if let Some(v) = hermes_home::read_package_version(&self.cfg.bin) {
            let s = hermes_home::max_semantics_of(&v);
            self.semantics = Some(s);
            return Ok(s);
        }
        let stdout = self.run_ok("--version", &["--version".to_owned()])?;
        let s = semantics_from_version(&stdout).ok_or_else(|| DispatchError::UnknownVersion {
            found: stdout.lines().next().unwrap_or("").trim().to_owned(),
        })?;
        self.semantics = Some(s);
        Ok(s)
    }

    fn assign(&mut self, id: &TaskId, assignee: &str) -> Result<(), PortError> {
        Ok(self.assign_one(id, assignee)?)
    }

    fn reclaim(&mut self, id: &TaskId, reason: &str) -> Result<(), PortError> {
        argv_safe("kanban reclaim", "task id", &id.0)?;
        let argv = self.kanban_args(&["reclaim", &id.0, "--reason", reason]);
        self.run_ok("kanban reclaim", &argv)?;
        Ok(())
    }

    fn block(&mut self, id: &TaskId, reason: &str) -> Result<(), PortError> {
        argv_safe("kanban block", "task id", &id.0)?;
        let argv = self.kanban_args(&["block", &id.0, reason]);
        self.run_ok("kanban block", &argv)?;
        Ok(())
    }

    fn dispatch(&mut self, max: u32) -> Result<DispatchOutcome, PortError> {
        let max = max.to_string();
        let argv = self.kanban_args(&["dispatch", "--max", &max, "--json"]);
        let stdout = self.run_ok("kanban dispatch", &argv)?;
        parse_dispatch_json(&stdout).map_err(|detail| {
            DispatchError::BadOutput {
                command: "kanban dispatch".into(),
                detail,
                stdout: stdout.chars().take(500).collect(),
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// A fake `hermes`: records its argv (one line per call) and its HERMES_HOME, then runs
    /// `body`.
    fn fake_hermes(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("hermes");
        let log = dir.join("argv.log");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"HOME=$HERMES_HOME $*\" >> '{}'\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn calls(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn cfg(bin: PathBuf, board: Option<&str>) -> CliDispatcherConfig {
        CliDispatcherConfig {
            bin,
            home: Some(PathBuf::from("/hh")),
            board: board.map(str::to_owned),
            max_semantics: None,
            timeout: Duration::from_secs(10),
            env: Vec::new(),
        }
    }

    const DISPATCH_JSON: &str = r#"{"reclaimed": 0, "crashed": ["t_c"], "timed_out": [], "stale": [], "auto_blocked": [], "promoted": 1, "spawned": [{"task_id": "t_a63d4b12", "assignee": "gpuworker", "workspace": "/x"}], "skipped_unassigned": [], "skipped_nonspawnable": ["t_284a4c5f"], "skipped_per_profile_capped": [{"task_id": "t_622f0b11", "assignee": "gpuworker", "current": 1}], "auto_assigned_default": []}"#;

    #[test]
    fn parses_the_dispatch_json_hermes_prints() {
        let o = parse_dispatch_json(DISPATCH_JSON).unwrap();
        assert_eq!(
            o.spawned,
            vec![Spawned {
                id: TaskId::from("t_a63d4b12"),
                assignee: "gpuworker".into()
            }]
        );
        assert_eq!(o.crashed, vec![TaskId::from("t_c")]);
        assert_eq!(o.promoted, 1);
        assert_eq!(o.skipped_nonspawnable, vec![TaskId::from("t_284a4c5f")]);
        assert_eq!(
            o.skipped_per_profile_capped,
            vec![TaskId::from("t_622f0b11")]
        );
        let noisy = format!("warning: tirith\n{DISPATCH_JSON}\n");
        assert_eq!(parse_dispatch_json(&noisy).unwrap(), o);
        assert!(parse_dispatch_json("Dispatched 1 task").is_err());
    }

    #[test]
    fn version_dates_pick_the_max_semantics() {
        assert_eq!(
            semantics_from_version("Hermes Agent v0.19.0 (2026.7.20)\nInstall directory: x"),
            Some(MaxSemantics::LiveCap)
        );
        assert_eq!(
            semantics_from_version("Hermes Agent v0.12.0 (2026.4.2)"),
            Some(MaxSemantics::PerTick)
        );
        assert_eq!(
            semantics_from_version("Hermes Agent v0.18.2 (2026.6.1)"),
            Some(MaxSemantics::LiveCap)
        );
        assert_eq!(semantics_from_version("hermes 1.0"), None);
    }

    #[test]
    fn a_relative_or_missing_binary_is_a_usage_error_naming_hermes_bin() {
        let err = CliDispatcher::new(cfg("hermes".into(), None)).unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = CliDispatcher::new(cfg("/nonexistent/hermes".into(), None)).unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("hermes.bin"), "{err}");
    }

    #[test]
    fn assign_and_dispatch_pass_argv_board_and_home() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(
            dir.path(),
            &format!("case \"$*\" in *dispatch*) echo '{DISPATCH_JSON}';; esac"),
        );
        let mut d = CliDispatcher::new(cfg(bin, Some("gpu"))).unwrap();
        d.assign(&TaskId::from("t_1"), "coder;$(rm)|x").unwrap();
        let out = d.dispatch(3).unwrap();
        assert_eq!(out.spawned.len(), 1);
        assert_eq!(
            calls(dir.path()),
            [
                "HOME=/hh kanban --board gpu assign t_1 coder;$(rm)|x",
                "HOME=/hh kanban --board gpu dispatch --max 3 --json",
            ]
        );
    }

    #[test]
    fn an_id_or_assignee_that_reads_as_a_flag_is_refused_before_hermes_runs() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "");
        let mut d = CliDispatcher::new(cfg(bin, None)).unwrap();
        for (id, to) in [
            ("--help", "coder"),
            ("t_1", "--help"),
            ("t_1", "a b"),
            ("t\n1", "c"),
        ] {
            let err = d.assign(&TaskId::from(id), to).unwrap_err().to_string();
            assert!(err.contains("starts with '-'"), "{err}");
        }
        assert!(d.reclaim(&TaskId::from("-x"), "dead").is_err());
        assert!(d.block(&TaskId::from("-x"), "dead").is_err());
        assert!(calls(dir.path()).is_empty());
    }

    #[test]
    fn the_default_board_gets_no_board_flag() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "");
        let mut d = CliDispatcher::new(cfg(bin, Some("default"))).unwrap();
        d.reclaim(&TaskId::from("t_1"), "dead").unwrap();
        assert_eq!(
            calls(dir.path()),
            ["HOME=/hh kanban reclaim t_1 --reason dead"]
        );
    }

    #[test]
    fn a_failing_hermes_becomes_an_error_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "echo 'no such task: t_9' >&2; exit 1");
        let mut d = CliDispatcher::new(cfg(bin, None)).unwrap();
        let err = d
            .assign(&TaskId::from("t_9"), "coder")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "'hermes kanban assign' exited 1: no such task: t_9; check hermes.bin and the board"
        );
    }

    #[test]
    fn a_hanging_hermes_is_killed_with_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The script starts a grandchild in the same group and waits on it.
        let bin = fake_hermes(
            dir.path(),
            &format!("sleep 300 & echo $! > '{}'; wait", pidfile.display()),
        );
        let mut c = cfg(bin, None);
        c.timeout = Duration::from_millis(500);
        let mut d = CliDispatcher::new(c).unwrap();
        let started = Instant::now();
        let err = d.dispatch(1).unwrap_err().to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(8));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild got the group's SIGTERM; wait (bounded) for it to be gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = |pid: i32| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z")
        };
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "grandchild {pid} survived the timeout kill");
    }

    /// The process's peak resident memory (`VmHWM`), in bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    #[test]
    fn a_capped_read_keeps_the_limit_and_drains_the_rest() {
        use crate::adapters::child::read_capped;
        use std::io::Read as _;
        let c = read_capped(std::io::repeat(b'x').take(300_000_000), MAX_OUTPUT_BYTES);
        assert_eq!(c.text.len(), MAX_OUTPUT_BYTES);
        assert_eq!(c.dropped, 300_000_000 - MAX_OUTPUT_BYTES as u64);
        let c = read_capped(&b"short"[..], MAX_OUTPUT_BYTES);
        assert_eq!((c.text.as_str(), c.dropped), ("short", 0));
    }

    /// Issue 11: 300 MB of Hermes output took the daemon to 595 MB. Now each stream keeps
    /// 8 MiB, the rest is drained (Hermes exits normally, not at its timeout) and the call is
    /// an error naming the stream and the limit.
    #[test]
    fn a_hermes_that_prints_hundreds_of_megabytes_is_bounded_and_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(
            dir.path(),
            "head -c 200000000 /dev/zero | tr '\\0' x; head -c 200000000 /dev/zero >&2; exit 0",
        );
        let before = peak_rss();
        let mut d = CliDispatcher::new(cfg(bin, None)).unwrap();
        let started = Instant::now();
        let err = d.dispatch(1).unwrap_err();
        let grew = peak_rss().saturating_sub(before);
        assert!(
            grew < 128 * 1024 * 1024,
            "peak RSS grew by {grew} bytes reading 400 MB of output: {err}"
        );
        let e = err.downcast_ref::<DispatchError>().unwrap();
        assert!(
            matches!(e, DispatchError::OutputTooLarge { stream: "stdout", limit: MAX_OUTPUT_BYTES, dropped, .. } if *dropped == 200_000_000 - MAX_OUTPUT_BYTES as u64),
            "{e}"
        );
        assert!(
            e.to_string().contains("more than 8388608 bytes on stdout"),
            "{e}"
        );
        // Drained, not left to the 10 s timeout.
        assert!(started.elapsed() < Duration::from_secs(8), "{e}");
    }

    #[test]
    fn dispatch_output_that_is_not_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "echo 'Spawned 1'");
        let mut d = CliDispatcher::new(cfg(bin, None)).unwrap();
        let err = d.dispatch(1).unwrap_err().to_string();
        assert!(err.contains("no dispatch JSON"), "{err}");
    }

    #[test]
    fn an_unknown_version_is_refused_unless_semantics_are_configured() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "echo 'hermes-fork 3'");
        let mut d = CliDispatcher::new(cfg(bin.clone(), None)).unwrap();
        let err = d.max_semantics().unwrap_err();
        let e = err.downcast_ref::<DispatchError>().unwrap();
        assert!(e.is_usage());
        assert!(e.to_string().contains("hermes.max_semantics"), "{e}");
        let mut c = cfg(bin, None);
        c.max_semantics = Some(MaxSemantics::PerTick);
        let mut d = CliDispatcher::new(c).unwrap();
        assert_eq!(d.max_semantics().unwrap(), MaxSemantics::PerTick);
    }

    #[test]
    fn the_version_is_asked_once() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_hermes(dir.path(), "echo 'Hermes Agent v0.19.0 (2026.7.20)'");
        let mut d = CliDispatcher::new(cfg(bin, None)).unwrap();
        assert_eq!(d.max_semantics().unwrap(), MaxSemantics::LiveCap);
        assert_eq!(d.max_semantics().unwrap(), MaxSemantics::LiveCap);
        assert_eq!(calls(dir.path()).len(), 1);
    }
}
