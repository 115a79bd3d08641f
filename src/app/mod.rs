//! The commands, as library code so tests can call them: each module owns its flags
//! (clap `Args`) and a `run` that returns an exit code or an error.

pub mod check_config;
pub mod daemon;
pub mod doctor;
pub mod learning;
pub mod once;
pub mod plan;
pub mod setup;
pub mod signals;
pub mod simulate;
pub mod state;
pub mod status;
pub mod tick;

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
        Command::Tick(a) => once::run(a),
        Command::Status(a) => status::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Run(a) => daemon::run(a),
    }
}

/// Logs go to stderr; the level comes from `KANBAN_GOVERNOR_LOG` (e.g. `info`,
/// `info,kanban_governor=debug`), default `warn`.
pub fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("KANBAN_GOVERNOR_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}
