//! `doctor` (not built yet).

use std::process::ExitCode;

/// Flags of this command.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

/// Run the command.
///
/// # Errors
///
/// Always, until the command lands.
pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this command is not built yet")
}
