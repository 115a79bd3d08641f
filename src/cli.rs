//! Command-line definition (clap derive). No logic: each command's flags live beside the code
//! that runs it in `app/`, and are gathered here.

use clap::{Parser, Subcommand};

/// Admits Hermes Agent kanban tasks only while their worst-case GPU memory fits under a
/// headroom ceiling.
///
/// Exit codes: 0 success (a tick that decided to hold is a success; a tick that finds
/// another governor holding the lock exits 0 too), 1 runtime failure (among them a lock held
/// by a process that is not a governor of this user), 2 usage or config error.
#[derive(Debug, Parser)]
#[command(
    name = "kanban-governor",
    version,
    about,
    long_about,
    after_help = "Logs go to stderr (journald under systemd): warnings by default, info for `run`. \
-v/-q move that one level per use; KANBAN_GOVERNOR_LOG sets it in detail when no -v/-q is given \
(e.g. `info`, `info,kanban_governor=debug`). Colour only when stderr is a terminal."
)]
pub struct Cli {
    /// Logging flags, for every command.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output (-q errors only, -qq nothing).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log line format: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    ///
    /// SIGTERM, SIGINT and SIGHUP let the tick in progress finish (each Hermes call within
    /// dispatch.timeout), save the state and journal, and exit 0; no further --repeat tick
    /// starts. A lock held by another kanban-governor of this user exits 0 (nothing to do);
    /// held by any other process, it exits 1 naming that process.
    Tick(crate::app::tick_command::TickArgs),
    /// What runs, what waits and why.
    Status(crate::app::status::StatusArgs),
    /// Check the host: Hermes, board, gateway dispatcher, telemetry, lock and state.
    Doctor(crate::app::doctor::DoctorArgs),
    /// The daemon beside the inference server: sample, tick, serve /metrics and /status.
    ///
    /// SIGTERM, SIGINT and SIGHUP all stop it gracefully: the tick in progress finishes (each
    /// Hermes call within dispatch.timeout), the state and journal are saved, and it exits 0.
    /// SIGHUP does not reload the config; restart the daemon to apply a changed config.
    Run(crate::app::daemon::RunArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(crate::app::install::CompletionsArgs),
    /// Print the man page (roff) on stdout.
    Man(crate::app::install::ManArgs),
}
