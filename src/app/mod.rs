//! The commands, as library code so tests can call them: each module owns its flags
//! (clap `Args`) and a `run` that returns an exit code or an error.
//!
//! # Layout
//!
//! Commands, each module named after its command:
//! - [`tick_command`]: `tick`, cron mode: take the lock, run one control cycle (or `--repeat`),
//!   save, exit.
//! - [`daemon`]: `run`, the daemon beside the inference server; [`daemon::serve`] runs it on
//!   the ports it is given (the real adapters, or the fakes in tests) until a shutdown future.
//! - [`status`]: `status`, what runs, what waits and why, with nothing acted on.
//! - [`plan`]: `plan`, capacity planning with no board and no GPU.
//! - [`simulate`]: `simulate`, every dispatch strategy on one simulated GPU host.
//! - [`check_config`]: `check-config`, the effective config or every problem in it.
//! - [`doctor`]: `doctor`, host checks and ready cron and systemd entries.
//! - [`install`]: `completions` and `man`.
//!
//! What the commands share:
//! - [`tick`]: one control cycle, generic over the ports: observe → decide → act.
//! - [`setup`]: the policy, Hermes settings and adapters built from the validated config.
//! - [`learning`]: footprint learning in the real cycle.
//! - [`signals`]: stop requests that let a tick in progress finish (`run`'s shutdown future,
//!   `tick`'s stop channel).
//! - [`state`]: the governor's state between ticks (from [`crate::record`]).

pub mod check_config;
pub mod daemon;
pub mod doctor;
pub mod install;
pub mod learning;
pub mod plan;
pub mod setup;
pub mod signals;
pub mod simulate;
pub use crate::record::state;
pub mod status;
pub mod tick;
pub mod tick_command;

use crate::cli::Command;
use std::process::ExitCode;

/// Run one command.
///
/// # Errors
///
/// Whatever the command fails with; `error::exit_code` picks 1 or 2 from the chain.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Plan(a) => plan::run(a),
        Command::CheckConfig(a) => check_config::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Tick(a) => tick_command::run(a),
        Command::Status(a) => status::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Run(a) => daemon::run(a),
        Command::Completions(a) => install::run_completions(a),
        Command::Man(a) => install::run_man(a),
    }
}

/// The log level when no `-v`/`-q` is given and `KANBAN_GOVERNOR_LOG` is unset: `info` for
/// the daemon (its releases and holds are what an operator reads in journald), else `warn`.
pub fn default_log_level(command: &Command) -> tracing::Level {
    match command {
        Command::Run(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    }
}

/// The level `-v`/`-q` ask for, moving from `base` one step per use (`None`: nothing at all).
pub fn flag_level(base: tracing::Level, verbose: u8, quiet: u8) -> Option<tracing::Level> {
    use tracing::Level;
    const ORDER: [Level; 5] = [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ];
    let at = ORDER.iter().position(|l| *l == base).unwrap_or(1) as i32;
    let to = at + i32::from(verbose) - i32::from(quiet);
    if to < 0 {
        return None;
    }
    Some(ORDER[usize::try_from(to).unwrap_or(0).min(ORDER.len() - 1)])
}

/// Logs go to stderr. The level: `-v`/`-q` when given, else `KANBAN_GOVERNOR_LOG` (e.g.
/// `info`, `info,kanban_governor=debug`), else [`default_log_level`]. ANSI colour only when
/// stderr is a terminal; `--log-format json` writes one JSON object per line.
pub fn init_logging(log: &crate::cli::LogArgs, command: &Command) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let base = default_log_level(command);
    let filter: Targets = if log.verbose > 0 || log.quiet > 0 {
        match flag_level(base, log.verbose, log.quiet) {
            Some(l) => Targets::new().with_default(l),
            None => Targets::new().with_default(LevelFilter::OFF),
        }
    } else {
        std::env::var("KANBAN_GOVERNOR_LOG")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Targets::new().with_default(base))
    };
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match log.log_format {
        crate::cli::LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init(),
        crate::cli::LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .try_init(),
    };
}

#[cfg(test)]
mod log_tests {
    use super::flag_level;
    use tracing::Level;

    #[test]
    fn verbose_and_quiet_move_one_level_per_use() {
        assert_eq!(flag_level(Level::WARN, 1, 0), Some(Level::INFO));
        assert_eq!(flag_level(Level::WARN, 2, 0), Some(Level::DEBUG));
        assert_eq!(flag_level(Level::WARN, 9, 0), Some(Level::TRACE));
        assert_eq!(flag_level(Level::WARN, 0, 1), Some(Level::ERROR));
        assert_eq!(flag_level(Level::WARN, 0, 2), None);
        assert_eq!(flag_level(Level::INFO, 0, 1), Some(Level::WARN));
    }
}
