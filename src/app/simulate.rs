//! `kanban-governor simulate`: the proving ground. Runs one workload on one simulated GPU host
//! through every dispatch strategy and prints the comparison table. Reads the config and trace
//! files it is given; writes stdout, a progress bar on stderr (a terminal only), and the SVG
//! files of `--plot DIR`.

use crate::config::{self, ConfigArgs, EngineKind};
use crate::error::UsageError;
use crate::sim::{
    self, Plan, StrategyName, noisy_neighbour,
    run::Params,
    workload::{self, Scenario},
};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Compare dispatch strategies on a simulated GPU host.
///
/// With no flags: the embedded default host (one 80 GiB GPU, vLLM serving Llama-3.1-8B, three
/// agent profiles) and the `mixed` scenario for one hour, every strategy. Give `--config` to
/// simulate your own host and profiles, or `--gpu-memory/--engine/--model` for a quick what-if.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Strategies (rows): unbounded = the gateway's dispatcher with no cap; per-tick = `--max N` with its \
old per-tick meaning; live-cap = a live cap of N running tasks (Hermes `--max` today, the \
article's slot controller); pools = a live cap per profile, the budget split evenly; governor = \
kanban-governor's decision, the same code as `run` and `tick`, with each profile's `footprint` mode \
from the config (the embedded default: `learned`, from the peaks of finished tasks); \
governor-declared = the same with every profile charged its declared worst case, always; oracle = \
the best static cap in hindsight (a sweep of N, by tasks done), the best feasible static cap (the \
best of the sweep with no OOM or offload, timeouts under 2 % and preemptions at most a tenth of \
the unbounded row's) and clairvoyant admission (knows each task's true peak). Peers (PEERS.md): \
hermes-guard = Hermes >=0.20's host-memory guard (MemAvailable under 15 % of MemTotal: one new \
worker a tick, under 5 %: none) over unbounded dispatch and over the hermes-caps caps; hermes-caps \
= kanban.max_in_progress_per_profile, the even split scaled by 0.5-4, best feasible in hindsight; \
llmd = llm-d flow control (a call waits at the gateway while max(queue/5, kv_usage/0.8) >= 1) over \
unbounded dispatch; vllm-watermark = vLLM's KV watermark 0.05 over unbounded dispatch.

Scenarios with their own host (unless --config or --gpu-memory/--engine/--model give one): \
unified-memory (GB10-like, 128 GiB shared, vLLM at 0.87, telemetry = \"host\"), outside-client \
(a 3-slot llama-server on 24 GiB with a 32-connection client outside the board), two-gpus \
(two 48 GiB GPUs, each its own engine, coder and triage pinned to the first, researcher to the \
second; --gpu-memory/--engine/--model size both GPUs); hermes-sized raises every profile to 64k \
of context and adds a 10k-token system prompt to every call.

Trace files (--trace) are in the Azure LLM inference CSV format \
(TIMESTAMP,ContextTokens,GeneratedTokens). Every --group consecutive rows become one agent task \
created at its first row's time; call k's prompt is the group's context so far (its \
ContextTokens summed, plus the outputs before it); the task goes to the profile with the \
smallest max_context_tokens that holds its peak.

Exit codes: 0 success, 2 usage, config or trace error.")]
pub struct SimulateArgs {
    /// Built-in workload.
    #[arg(long, value_enum, default_value_t = Scenario::Mixed, conflicts_with = "trace")]
    pub scenario: Scenario,
    /// A trace file in the Azure LLM inference CSV format (replaces --scenario).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Trace rows per agent task.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub group: u32,
    /// Governor config describing the host and profiles (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GPU memory of a what-if host (e.g. 24GiB); with --engine and --model.
    #[arg(long, value_name = "SIZE", conflicts_with = "config")]
    pub gpu_memory: Option<String>,
    /// Engine of a what-if host.
    #[arg(long, value_name = "KIND", value_parser = ["vllm", "sglang", "llamacpp", "ollama", "openai"], conflicts_with = "config")]
    pub engine: Option<String>,
    /// Model of a what-if host (a catalog name, e.g. qwen2.5-32b-instruct).
    #[arg(long, value_name = "MODEL", conflicts_with = "config")]
    pub model: Option<String>,
    /// Rows to compute (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = sim::ALL_STRATEGIES)]
    pub strategies: Vec<StrategyName>,
    /// N of `--max N` (per-tick) and of the live cap.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub cap: u32,
    /// Seed of the workload (same seed, same table).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long tasks keep arriving (scenarios; a trace lasts as long as it does), e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long after the last arrival the run may go on to finish the work.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// A call with no progress this long times out (the agent gives up and Hermes retries).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Print JSON instead of the table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of the table.
    #[arg(long)]
    pub csv: bool,
    /// Write SVG plots (memory, running tasks, TTFT) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// Whether the flags name a host (else the scenario's own, or the embedded default).
fn host_given(args: &SimulateArgs) -> bool {
    args.config.is_some()
        || args.gpu_memory.is_some()
        || args.engine.is_some()
        || args.model.is_some()
}

/// The host and policy: the flags' host, else the scenario's own host where it has one
/// (unified-memory: a GB10-like host; outside-client: a 24 GiB GPU under a 3-slot
/// llama-server), else the embedded default. Hermes-sized raises every profile to 64k.
fn load_setup(args: &SimulateArgs) -> anyhow::Result<sim::Setup> {
    let scenario = if args.trace.is_some() {
        None
    } else {
        Some(args.scenario)
    };
    let mut setup = match scenario {
        Some(Scenario::UnifiedMemory) if !host_given(args) => {
            let cfg = sim::unified_config().map_err(|e| usage(e.0))?;
            let mut s =
                sim::setup_measured(&cfg, Some(sim::unified_measured())).map_err(|e| usage(e.0))?;
            s.host.speed = sim::gb10_speed(s.host.kv_bytes_per_token).map_err(|e| usage(e.0))?;
            s
        }
        Some(Scenario::TwoGpus) if args.config.is_none() => {
            let (gpu, kind, model) = host_flags(args, TWO_GPUS_MEMORY)?;
            let cfg = sim::two_gpus_config(gpu, kind, model).map_err(|e| usage(e.0))?;
            sim::setup(&cfg).map_err(|e| usage(e.0))?
        }
        Some(Scenario::OutsideClient) if !host_given(args) => {
            let cfg = sim::host_config(24 << 30, EngineKind::Llamacpp, "llama-3.1-8b")
                .map_err(|e| usage(e.0))?;
            sim::setup(&cfg).map_err(|e| usage(e.0))?
        }
        Some(Scenario::HermesSized) => {
            let mut cfg = load_config(args)?;
            let before = sim::setup(&cfg).map_err(|e| usage(e.0))?;
            for p in &mut cfg.profiles {
                p.max_context_tokens = p
                    .max_context_tokens
                    .max(workload::HERMES_MIN_CONTEXT_TOKENS);
            }
            // Validated again, so every profile's declared worst case (what the governor
            // charges) is that of its raised context, and one that no longer fits is refused.
            let cfg = config::validated(
                &cfg,
                Path::new("/<simulate --scenario hermes-sized>/governor.toml"),
            )
            .map_err(|e| {
                usage(format!(
                    "--scenario hermes-sized raises every profile to {} tokens of context: {e}",
                    workload::HERMES_MIN_CONTEXT_TOKENS
                ))
            })?;
            let mut s = sim::setup(&cfg).map_err(|e| usage(e.0))?;
            // Which profiles are interactive stays as configured (all at 64k would make
            // every profile "the smallest context").
            for (p, b) in s.profiles.iter_mut().zip(&before.profiles) {
                p.interactive = b.interactive;
            }
            s
        }
        _ => sim::setup(&load_config(args)?).map_err(|e| usage(e.0))?,
    };
    if scenario == Some(Scenario::UnifiedMemory) {
        sim::make_unified(&mut setup);
    }
    if scenario == Some(Scenario::OutsideClient) {
        setup.host.outside = Some(sim::OUTSIDE_CLIENT);
    }
    Ok(setup)
}

/// Each GPU of the `two-gpus` scenario, unless --gpu-memory says otherwise.
const TWO_GPUS_MEMORY: u64 = 48 << 30;

/// The what-if host of --gpu-memory/--engine/--model: GPU bytes (`gpu` when not given),
/// engine (vLLM) and model (Llama-3.1-8B).
fn host_flags(args: &SimulateArgs, gpu: u64) -> anyhow::Result<(u64, EngineKind, &str)> {
    let gpu = match &args.gpu_memory {
        Some(s) => config::parse_size_str(s)
            .map_err(|e| usage(format!("--gpu-memory {s:?}: {e}")))?
            .get(),
        None => gpu,
    };
    let kind = match args.engine.as_deref().unwrap_or("vllm") {
        "sglang" => EngineKind::Sglang,
        "llamacpp" => EngineKind::Llamacpp,
        "ollama" => EngineKind::Ollama,
        "openai" => EngineKind::Openai,
        _ => EngineKind::Vllm,
    };
    Ok((gpu, kind, args.model.as_deref().unwrap_or("llama-3.1-8b")))
}

fn load_config(args: &SimulateArgs) -> anyhow::Result<config::Config> {
    if let Some(path) = &args.config {
        let cargs = ConfigArgs {
            config: Some(path.clone()),
            ..ConfigArgs::default()
        };
        return Ok(config::load(&cargs, &config::process_env)?);
    }
    if args.gpu_memory.is_none() && args.engine.is_none() && args.model.is_none() {
        return Ok(config::embedded_default());
    }
    let (gpu, kind, model) = host_flags(args, 80 << 30)?;
    sim::host_config(gpu, kind, model).map_err(|e| usage(e.0))
}

/// Build the plan the flags describe.
///
/// # Errors
///
/// Usage errors naming the flag, the file or the trace line.
pub fn plan(args: &SimulateArgs) -> anyhow::Result<Plan> {
    let mut setup = load_setup(args)?;
    let duration = args.duration.as_secs_f64();
    if duration <= 0.0 {
        return Err(usage("--duration must be longer than 0s, e.g. 1h".into()));
    }
    let tasks = match &args.trace {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                usage(format!(
                    "--trace {}: {e}; give a CSV file in the Azure LLM inference format",
                    path.display()
                ))
            })?;
            let rows = workload::parse_trace(&text)
                .map_err(|e| usage(format!("--trace {}: {e}", path.display())))?;
            workload::tasks_from_trace(&rows, args.group as usize, &setup.profiles, args.seed)
        }
        None => workload::scenario(args.scenario, &setup.profiles, duration, args.seed),
    };
    if tasks.is_empty() {
        return Err(usage(
            "the workload has no tasks; give a longer --duration or another --scenario".into(),
        ));
    }
    let last = tasks.iter().map(|t| t.arrival).fold(0.0, f64::max);
    let horizon =
        last.max(if args.trace.is_some() { 0.0 } else { duration }) + args.drain.as_secs_f64();
    if args.scenario == Scenario::NoisyNeighbour && args.trace.is_none() {
        noisy_neighbour(&mut setup.host, 0.25, horizon);
    }
    let latency = setup.latency;
    Ok(Plan {
        setup,
        tasks,
        params: Params {
            horizon,
            call_timeout: args.call_timeout.as_secs_f64(),
            latency,
            ..Params::default()
        },
        strategies: args.strategies.clone(),
        cap: args.cap,
    })
}

/// What the progress bar covers: `21 runs × 2 h`, `3 runs × 45 min`.
fn runs_span(runs: usize, horizon_s: f64) -> String {
    let span = if horizon_s >= 7200.0 {
        format!("{:.0} h", horizon_s / 3600.0)
    } else {
        format!("{:.0} min", horizon_s / 60.0)
    };
    format!("{runs} runs × {span}")
}

/// Run the command.
///
/// # Errors
///
/// Usage errors (exit 2); a plot directory that cannot be written.
pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).map_err(|e| {
            usage(format!(
                "--plot {}: {e}; give a directory this user can write",
                dir.display()
            ))
        })?;
    }
    // The bar counts simulated seconds summed over runs, so it moves while one long run is
    // under way and its ETA means something; a terminal only, never in piped output.
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(sim::simulated_seconds(&plan).ceil() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "simulating {bar:30} {percent:>3}% of {msg} simulated, {elapsed} elapsed, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(runs_span(sim::run_count(&plan), plan.params.horizon));
        b.enable_steady_tick(Duration::from_millis(200));
        Some(b)
    } else {
        None
    };
    let rows = sim::simulate(&plan, &mut |seconds| {
        if let Some(b) = &bar {
            b.set_position(seconds as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let ctx = plan.setup.report_context(plan.params.horizon);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let v = serde_json::json!({
            "tasks": plan.tasks.len(),
            "horizon_s": plan.params.horizon,
            "gpu_memory_bytes": plan.setup.host.total,
            "baseline_bytes": plan.setup.host.baseline,
            "strategies": rows,
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
    } else if args.csv {
        let _ = write!(out, "{}", sim::report::csv(&rows));
    } else {
        let hosts = plan.setup.hosts();
        let gpus = hosts
            .iter()
            .map(|h| {
                format!(
                    "a {:.0} GiB GPU ({})",
                    h.total as f64 / (1u64 << 30) as f64,
                    describe_engine(h.regime)
                )
            })
            .collect::<Vec<_>>()
            .join(" and ");
        let _ = writeln!(
            out,
            "{} tasks over {:.0} min on {gpus}, seed {}; runs stop at {:.0} min\n",
            plan.tasks.len(),
            plan.tasks.iter().map(|t| t.arrival).fold(0.0, f64::max) / 60.0,
            args.seed,
            plan.params.horizon / 60.0,
        );
        let _ = write!(out, "{}", sim::report::table(&rows, &ctx));
        if !plan.setup.more_pools.is_empty() {
            let _ = write!(out, "{}", sim::report::per_pool(&rows, &plan.setup));
        }
    }
    if let Some(dir) = &args.plot {
        let files = sim::plot::write_all(dir, &rows, &ctx)
            .map_err(|e| anyhow::anyhow!("writing plots into {}: {e}", dir.display()))?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine of a simulated GPU, in words.
fn describe_engine(regime: sim::engine::Regime) -> String {
    match regime {
        sim::engine::Regime::Paged {
            capacity_tokens, ..
        } => format!("paged KV pool of {capacity_tokens} tokens"),
        sim::engine::Regime::Slots { slots, slot_ctx } => {
            format!("{slots} slots of {slot_ctx} tokens")
        }
        sim::engine::Regime::PerRequest { offload } => format!(
            "KV allocated per request, {} beyond free memory",
            if offload { "CPU offload" } else { "OOM" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(argv: &[&str]) -> SimulateArgs {
        let mut all = vec!["simulate"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all)
            .expect("the test's flags parse")
            .args
    }

    #[test]
    fn hermes_sized_charges_the_governor_the_worst_case_of_the_raised_context() {
        let plain = load_setup(&args(&[])).expect("the default scenario loads");
        let sized = load_setup(&args(&["--scenario", "hermes-sized"])).expect("hermes-sized loads");
        let min = workload::HERMES_MIN_CONTEXT_TOKENS;
        let mut raised = 0;
        for (p, before) in sized.policy.profiles.iter().zip(&plain.policy.profiles) {
            assert!(
                p.declared.request_tokens >= min,
                "{}: charged as if its requests held {} tokens, but hermes-sized runs them up to {min}",
                p.id,
                p.declared.request_tokens
            );
            assert_eq!(
                p.declared.kv_tokens,
                p.declared.request_tokens * u64::from(p.declared.slots),
                "{}",
                p.id
            );
            if before.declared.request_tokens < min {
                assert!(p.declared.kv_bytes > before.declared.kv_bytes, "{}", p.id);
                raised += 1;
            }
        }
        assert!(
            raised > 0,
            "the default config has a profile under 64k to raise"
        );
    }
}
