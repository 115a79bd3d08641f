//! `once` (not built yet).

use std::process::ExitCode;

/// Flags of this command.
#[derive(Debug, clap::Args)]
pub struct TickArgs {}

/// Run the command.
///
/// # Errors
///
/// Always, until the command lands.
pub fn run(_args: TickArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this command is not built yet")
}
