//! `kanban-governor tick`: cron mode. Take the lock, load state, run one tick (or `--repeat N`
//! ticks `--every 15s` apart under the same lock), save state, print, exit.
//!
//! The lock is `<state_dir>/tick.lock`, a `flock` the kernel drops when the process dies, so
//! there is no stale lock to clean up. When another governor holds it, this prints that and
//! exits 0: an overlapping cron run is normal, not a failure. `--dry-run` takes no lock and
//! writes nothing (not the board, not the state, not the lock file).
//!
//! Exit codes: 0 (a tick that held is a success), 1 runtime failure (board unreadable, a
//! Hermes call failed), 2 usage or config error.

use crate::adapters::state_sqlite::SqliteState;
use crate::adapters::worker_probe::LocalWorkerProbe;
use crate::app::setup::{self, Setup, port_error};
use crate::app::tick::{TickOptions, TickPorts, TickReport, run_tick_with_store};
use crate::config::ConfigArgs;
use crate::ports::{PortError, StateStore, SystemClock};
use anyhow::Context;
use std::fs::{File, OpenOptions};
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

/// The governor's lock, held while the returned file lives.
///
/// # Errors
///
/// `state_dir` cannot be created or the lock file opened.
pub fn try_lock(state_dir: &Path) -> anyhow::Result<Option<File>> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        anyhow::Error::new(crate::error::UsageError(format!(
            "dispatch.state_dir {}: {e}; make it a directory this user can write",
            state_dir.display()
        )))
    })?;
    let path = state_dir.join(LOCK_FILE_NAME);
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            anyhow::Error::new(crate::error::UsageError(format!(
                "lock file {}: {e}; make dispatch.state_dir writable by this user",
                path.display()
            )))
        })?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
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
    for id in &report.leaks {
        writeln!(out, "  LEAK {id}: Hermes spawned it without a release")?;
    }
    for h in &report.decision.held {
        let profile = h.profile.as_ref().map_or("-".to_owned(), |p| p.to_string());
        writeln!(out, "  hold {} ({profile}): {}", h.id, h.reason)?;
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
    let mut board = if dry_run {
        setup.quiet_board()?
    } else {
        setup.board()?
    };
    let mut dispatcher = setup.dispatcher()?;
    let mut telemetry = setup.telemetry(false)?;
    let probe = LocalWorkerProbe::for_this_host();
    let clock = SystemClock;
    let mut ports = TickPorts {
        clock: &clock,
        pools: setup::pool_sources(&mut telemetry),
        board: &mut board,
        dispatcher: &mut dispatcher,
        workers: probe.as_ref().map(|p| p as _),
    };
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
    let setup = setup::load(&args.config)?;
    let _lock = if args.dry_run {
        None
    } else {
        match try_lock(&setup.state_dir)? {
            Some(f) => Some(f),
            None => {
                println!(
                    "another kanban-governor holds {}; nothing to do",
                    setup.state_dir.join(LOCK_FILE_NAME).display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    let mut failed = false;
    let stdout = std::io::stdout();
    for i in 0..args.repeat {
        if i > 0 {
            std::thread::sleep(args.every);
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
