//! The `kanban-governor` binary: parse flags, set up logging, run the command, map the
//! result to an exit code (0 ok, 1 runtime failure, 2 usage or config error).

use clap::Parser;
use kanban_governor::{app, cli::Cli, error};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    app::init_logging(&cli.log, &cli.command);
    match app::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}
