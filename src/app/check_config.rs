//! `check-config`: print the effective config, or every problem in it and on this host that
//! `tick`, `run` or `status` would fail on (`--file-only` checks the file alone), or the config
//! reference (`--reference`, which is docs/config.md).
//!
//! Side effects: reads the config file, its `profiles_dir` and the Hermes profile directories
//! (through `config::load`), and looks at the host (hermes.bin, the board file, NVML or the
//! replay file, the state dir); writes stdout (the config, or `--json` output) and stderr (the
//! problems). Writes no file.

use crate::config::{self, ConfigArgs};
use std::process::ExitCode;

/// Flags of this command.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Config location and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the effective config (or the problems) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Check the file only, not this host (for a config written for another machine): skip
    /// the checks of hermes.bin, hermes.home, the board, the telemetry sources and state_dir.
    #[arg(long)]
    pub file_only: bool,
    /// Print the config reference instead (every key: meaning, default, unit, where the number
    /// comes from, how to read it off vLLM, SGLang, llama.cpp and Ollama) as Markdown; it is
    /// docs/config.md. Reads no config.
    #[arg(long, conflicts_with_all = ["json", "file_only"])]
    pub reference: bool,
}

/// Run the command: exit 0 with the effective config on stdout (TOML annotated with where
/// each value came from, or `--json`), or exit 2 with every problem on stderr, one per line.
///
/// # Errors
///
/// Only when stdout cannot be serialized to (never for these plain types).
pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    if args.reference {
        out(&config::reference_markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let env = config::process_env;
    let loaded = config::load(&args.config, &env).and_then(|cfg| {
        let problems = if args.file_only {
            Vec::new()
        } else {
            crate::app::setup::host_problems(&cfg, true)
        };
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(config::ConfigError { problems })
        }
    });
    match loaded {
        Ok(cfg) => {
            if args.json {
                out(&format!("{}\n", serde_json::to_string_pretty(&cfg)?));
            } else {
                out(&format!(
                    "{}\n# OK: {} pool(s), {} profile(s).\n",
                    cfg.to_toml_annotated(),
                    cfg.pools.len(),
                    cfg.profiles.len()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            if args.json {
                let problems = serde_json::json!({ "problems": err.problems });
                out(&format!("{}\n", serde_json::to_string_pretty(&problems)?));
            }
            for p in &err.problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{} problem(s) in the config; fix them and run check-config again.",
                err.problems.len()
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// Write to stdout; a closed stdout (piped into `head`) is the reader's choice, not a failure.
fn out(text: &str) {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}
