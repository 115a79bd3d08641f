//! Command-line definition (clap derive). No logic: each command's flags live beside the code
//! that runs it in `app/`, and are gathered here.

use clap::{Parser, Subcommand};

/// Admits Hermes Agent kanban tasks only while their worst-case GPU memory fits under a
/// headroom ceiling.
///
/// Exit codes: 0 success (a tick that decided to hold is a success; a tick that finds
/// another governor holding the lock exits 0 too), 1 runtime failure, 2 usage or config
/// error.
#[derive(Debug, Parser)]
#[command(name = "kanban-governor", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capacity planning with no board and no GPU: what fits, what never fits, engine flags.
    Plan(crate::app::plan::PlanArgs),
    /// Print the effective config, or every problem in it.
    CheckConfig(crate::app::check_config::CheckConfigArgs),
    /// Replay a workload through a modelled GPU + engine + board and compare strategies.
    Simulate(crate::app::simulate::SimulateArgs),
    /// One observe -> decide -> act cycle (for cron and systemd timers).
    Tick(crate::app::once::TickArgs),
    /// What runs, what waits and why.
    Status(crate::app::status::StatusArgs),
    /// Check the host: Hermes, board, gateway dispatcher, telemetry, lock and state.
    Doctor(crate::app::doctor::DoctorArgs),
    /// The daemon beside the inference server: sample, tick, serve /metrics and /status.
    Run(crate::app::daemon::RunArgs),
}
