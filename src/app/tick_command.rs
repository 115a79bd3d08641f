//! `kanban-governor tick`: cron mode. Take the lock, load state, run one tick (or `--repeat N`
//! ticks `--every 15s` apart under the same lock), save state, print, exit.
//!
//! The lock is `<state_dir>/tick.lock`, a `flock` the kernel drops when the process dies, so
//! there is no stale lock to clean up. When another kanban-governor of this user holds it,
//! this prints that and exits 0: an overlapping cron run is normal, not a failure. Held by
//! anything else (another user's process, a stray `flock`), it is an error naming the holder
//! (exit 1): such a holder would otherwise stop every tick in silence. `--dry-run` takes no
//! lock and writes nothing (not the board, not the state, not the lock file).
//!
//! The state dir is created 0700 and the lock 0600 whatever the umask; a state dir another
//! user owns or can write, or a lock file that is a symlink, is refused (exit 2; see
//! [`state_dir`]).
//!
//! SIGTERM, SIGINT and SIGHUP do not cut a tick short: the tick in progress finishes (each
//! Hermes call within `dispatch.timeout`; a release is never left assigned but not
//! dispatched), its state and journal are saved, no further `--repeat` tick starts (the
//! `--every` wait ends at once), and the exit code is 0.
//!
//! Exit codes: 0 (a tick that held is a success), 1 runtime failure (board unreadable, a
//! Hermes call failed), 2 usage or config error.

use crate::adapters::state_dir::{self, LockHolder};
use crate::adapters::state_sqlite::SqliteState;
use crate::app::setup::{self, Setup, port_error};
use crate::app::signals::StopSignals;
use crate::app::tick::{TickOptions, TickReport, run_tick_with_store};
use crate::config::ConfigArgs;
use crate::ports::{PortError, StateStore};
use anyhow::Context;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// The lock file's name inside `state_dir`.
pub const LOCK_FILE_NAME: &str = "tick.lock";

/// Flags of `tick`.
#[derive(Debug, clap::Args)]
pub struct TickArgs {
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Decide against the live board and GPU and print it; write nothing anywhere.
    #[arg(long)]
    pub dry_run: bool,
    /// Run this many ticks under one lock.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Time between repeated ticks (humantime: `15s`, `1m`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Print each tick's report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The governor's lock, held while the returned file lives; `None` when another process
/// holds it.
///
/// # Errors
///
/// `state_dir` cannot be created, is another user's or writable by others, or the lock file
/// is a symlink or cannot be opened.
pub fn try_lock(state_dir: &Path) -> anyhow::Result<Option<File>> {
    let dir = state_dir::prepare(state_dir)?;
    let path = dir.join(LOCK_FILE_NAME);
    let f = state_dir::open_private(&path, true)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The lock, or who else holds it.
#[derive(Debug)]
pub enum Lock {
    /// Ours while the file lives.
    Held(File),
    /// Held by another kanban-governor of this user (an overlapping `tick`, or `run`).
    ByGovernor(Vec<LockHolder>),
}

/// How many times the lock is tried when its holder let go before it could be named.
const LOCK_TRIES: usize = 3;

/// Take the governor's lock, or name who holds it.
///
/// # Errors
///
/// As [`try_lock`]; or the lock is held by a process that is not a kanban-governor of this
/// user, or by one that cannot be identified (fail closed: exit 1, naming it).
pub fn take_lock(state_dir: &Path) -> anyhow::Result<Lock> {
    let path = state_dir.join(LOCK_FILE_NAME);
    for _ in 0..LOCK_TRIES {
        if let Some(f) = try_lock(state_dir)? {
            return Ok(Lock::Held(f));
        }
        let holders = state_dir::read_lock_holders(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} is locked and who holds it cannot be told ({e}); if no kanban-governor runs, find the holder with `fuser -v {}` and stop it",
                path.display(),
                path.display()
            )
        })?;
        if holders.is_empty() {
            // Released between the two looks: try again.
            continue;
        }
        if let Some(h) = holders.iter().find(|h| !h.governor) {
            let (what, fix) = foreign_holder(&path, h);
            anyhow::bail!("{what}; {fix}");
        }
        return Ok(Lock::ByGovernor(holders));
    }
    anyhow::bail!(
        "{} is locked, but /proc/locks shows no holder this process can see (one in another PID namespace?); no tick runs while it is held: find it with `fuser -v {}` and stop it",
        path.display(),
        path.display()
    )
}

/// What `tick`, `run` and `doctor` say about a lock held by something that is not a
/// kanban-governor of this user: what is wrong, and the fix.
pub fn foreign_holder(lock: &Path, h: &LockHolder) -> (String, String) {
    let stop = h
        .pid
        .map_or_else(|| "stop it".to_owned(), |p| format!("stop it (`kill {p}`)"));
    (
        format!(
            "{} is held by {h}, which is not a kanban-governor of this user: no tick can run while it holds the lock",
            lock.display()
        ),
        format!(
            "{stop}, and keep dispatch.state_dir 0700 and {LOCK_FILE_NAME} 0600 so no other user can open it"
        ),
    )
}

/// `pid 1, pid 2` of the holders.
pub fn holder_pids(holders: &[LockHolder]) -> String {
    holders
        .iter()
        .map(|h| h.pid.map_or_else(|| "?".to_owned(), |p| format!("pid {p}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Print a report: one line, then the held tasks with their reasons (or one JSON line).
pub fn print_report(out: &mut dyn Write, report: &TickReport, json: bool) -> std::io::Result<()> {
    if json {
        let line = serde_json::to_string(report).map_err(std::io::Error::other)?;
        return writeln!(out, "{line}");
    }
    let prefix = if report.dry_run {
        "tick --dry-run"
    } else {
        "tick"
    };
    writeln!(out, "{prefix}: {}", report.summary())?;
    for r in &report.decision.release {
        let verb = if report.dry_run {
            "would release"
        } else {
            "release"
        };
        writeln!(
            out,
            "  {verb} {} ({}): {} worst case",
            r.id,
            r.profile,
            r.charged.total_bytes()
        )?;
    }
    for id in &report.adopted {
        let verb = if report.dry_run {
            "would adopt"
        } else {
            "adopted"
        };
        writeln!(out, "  {verb} {id} into its profile's lane")?;
    }
    for id in &report.reclaimed {
        writeln!(out, "  reclaimed {id}: its worker process is gone")?;
    }
    for id in &report.blocked {
        writeln!(
            out,
            "  blocked {id}: its workers kept dying; unblock it after fixing the cause"
        )?;
    }
    for id in &report.withdrawn {
        writeln!(
            out,
            "  withdrew {id} to its lane: its pool could not take it when dispatch was due"
        )?;
    }
    if let Some(why) = &report.dispatch_held {
        writeln!(out, "  dispatch held: {why}")?;
    }
    for id in &report.leaks {
        writeln!(out, "  LEAK {id}: Hermes spawned it without a release")?;
    }
    for h in &report.decision.held {
        let profile = h.profile.as_ref().map_or("-".to_owned(), |p| p.to_string());
        writeln!(
            out,
            "  hold {} ({profile}): {} [{}]",
            h.id,
            h.reason.plain(),
            h.reason.code()
        )?;
    }
    for e in report
        .observed
        .telemetry_errors
        .iter()
        .chain(&report.errors)
    {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

/// The saved state for a dry run, which never saves.
struct ReadOnlyState(crate::app::state::GovernorState);

impl StateStore for ReadOnlyState {
    fn load(&mut self) -> Result<crate::app::state::GovernorState, PortError> {
        Ok(self.0.clone())
    }
    fn save(&mut self, _state: &crate::app::state::GovernorState) -> Result<(), PortError> {
        Err("a dry run saves nothing".into())
    }
}

/// Run one tick with the adapters `setup` describes.
///
/// # Errors
///
/// As [`run_tick_with_store`], with usage errors marked for exit code 2.
pub fn tick_once(setup: &Setup, dry_run: bool) -> anyhow::Result<TickReport> {
    let board = if dry_run {
        setup.quiet_board()?
    } else {
        setup.board()?
    };
    let mut adapters = setup.tick_adapters(board)?;
    let mut ports = adapters.ports();
    let opts = TickOptions {
        dry_run,
        dual_dispatcher: setup.dual_dispatcher(),
        ..TickOptions::default()
    };
    if dry_run {
        // A dry run writes nothing, not even a new state database.
        let mut store =
            ReadOnlyState(SqliteState::load_read_only(&setup.state_dir).map_err(port_error)?);
        return run_tick_with_store(&setup.policy, &mut ports, &mut store, &opts)
            .map_err(port_error);
    }
    let mut store = SqliteState::open(&setup.state_dir)?;
    run_tick_with_store(&setup.policy, &mut ports, &mut store, &opts).map_err(port_error)
}

/// Run `tick`.
///
/// # Errors
///
/// Config, lock, board, state or Hermes failures (see the module doc for exit codes).
pub fn run(args: TickArgs) -> anyhow::Result<ExitCode> {
    let setup = setup::load_checked(&args.config, !args.dry_run)?;
    // Before the lock: from here on a signal ends the run after the tick in progress.
    let mut stop = StopSignals::install()?;
    let _lock = if args.dry_run {
        None
    } else {
        match take_lock(&setup.state_dir)? {
            Lock::Held(f) => Some(f),
            Lock::ByGovernor(holders) => {
                println!(
                    "another kanban-governor ({}) holds {}; nothing to do",
                    holder_pids(&holders),
                    setup.state_dir.join(LOCK_FILE_NAME).display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    let mut failed = false;
    let stdout = std::io::stdout();
    for i in 0..args.repeat {
        let stopped = if i > 0 {
            stop.wait(args.every)
        } else {
            stop.requested()
        };
        if stopped.is_some() {
            break;
        }
        let report = tick_once(&setup, args.dry_run)?;
        failed |= !report.errors.is_empty();
        let mut out = stdout.lock();
        // A closed stdout (piped into `head`) is not the governor's failure.
        let _ = print_report(&mut out, &report, args.json);
        let _ = out.flush();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
