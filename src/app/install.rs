//! `completions` and `man`: the shell completion script and the man page, generated from the
//! same clap definition as the parser (`cli::Cli`), so neither can list a command or flag the
//! binary does not have.
//!
//! Side effects: writes stdout only.

use crate::cli::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::process::ExitCode;

/// Flags of `completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:
  bash: kanban-governor completions bash > /etc/bash_completion.d/kanban-governor
  zsh:  kanban-governor completions zsh > \"${fpath[1]}/_kanban-governor\"
  fish: kanban-governor completions fish > ~/.config/fish/completions/kanban-governor.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:
  kanban-governor man > /usr/local/share/man/man1/kanban-governor.1 && mandb")]
pub struct ManArgs {}

/// The binary's name, as completions and the man page call it.
const BIN: &str = "kanban-governor";

/// Print the completion script for `args.shell`.
///
/// # Errors
///
/// Only when stdout cannot be written to (a closed pipe).
pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), BIN, &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page in roff: name, synopsis, description, global flags, then every command with
/// its description and the names of its flags (`kanban-governor COMMAND --help` explains
/// them), the environment and exit codes, then the version. One page: clap_mangen's own command list points to a page per
/// command, which would be eight more files to install.
///
/// # Errors
///
/// Only when writing into memory fails (it does not).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use roff::{Roff, bold, roman};
    let cmd = Cli::command().name(BIN);
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut commands = Roff::new();
    commands.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        commands.control("TP", []);
        commands.text([bold(format!("{BIN} {}", sub.get_name()))]);
        let about = sub.get_long_about().or_else(|| sub.get_about());
        for para in about
            .map(|a| a.to_string())
            .unwrap_or_default()
            .split("\n\n")
        {
            commands.text([roman(para.replace('\n', " "))]);
            commands.control("br", []);
        }
        let flags: Vec<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
            .map(|a| match (a.get_long(), a.is_positional()) {
                (Some(l), _) => format!("--{l}"),
                (None, true) => format!("<{}>", a.get_id()),
                (None, false) => a.get_id().to_string(),
            })
            .collect();
        if !flags.is_empty() {
            commands.text([roman(format!(
                "Flags: {} (see {BIN} {} --help).",
                flags.join(", "),
                sub.get_name()
            ))]);
        }
    }
    // The logging note (the top-level after_help) and the config precedence, env overrides
    // and exit codes (every config-reading command's after_help), as a man reader expects them.
    commands.control("SH", ["ENVIRONMENT"]);
    if let Some(logs) = cmd.get_after_help() {
        commands.text([roman(logs.to_string().replace('\n', " "))]);
    }
    // No filling: the help text is laid out in lines and columns already.
    commands.control("PP", []).control("nf", []);
    for line in crate::config::CONFIG_HELP.lines() {
        commands.text([roman(line)]);
    }
    commands.control("fi", []);
    commands.control("SH", ["SEE ALSO"]);
    commands.text([roman(
        "README.md and docs/config.md (every config key) in the source; kanban-governor check-config --reference prints the latter.",
    )]);
    commands.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Print the man page.
///
/// # Errors
///
/// Only when stdout cannot be written to (a closed pipe).
pub fn run_man(_args: ManArgs) -> anyhow::Result<ExitCode> {
    std::io::stdout().write_all(&man_page()?)?;
    Ok(ExitCode::SUCCESS)
}
