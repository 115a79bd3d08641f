//! `plan`: capacity planning with no board and no GPU.
//!
//! For a GPU size, an engine and one or more profiles, it says what each task can cost at
//! worst, how many tasks of each profile fit alone, the largest mix that fits, which profiles
//! can never fit and why, and the engine settings that make the plan hold.
//!
//! The counts come from the real decision core: the plan builds a [`Policy`] and a synthetic
//! [`Observation`] (a GPU of the given size whose baseline is the weights plus an overhead
//! allowance, and a backlog of waiting tasks of every profile) and asks
//! [`crate::governor::decide`] what it would release. Plan and governor therefore agree by
//! construction; nothing here re-does the admission arithmetic.
//!
//! Three ways to give the profiles:
//! - flags alone (`--model` or `--kv-bytes-per-token`, `--max-context`, ...): one profile;
//! - the repository's ready profiles (`profiles/*.toml`, embedded in the binary) when no
//!   profile flag is given; `--gpu-memory`, `--engine`, ... still apply;
//! - `--config F`: every pool of a governor config, as that governor would charge it.

use crate::catalog::{self, KvDtype, ModelSpec, WeightFormat};
use crate::error::UsageError;
use crate::governor::{
    self, Bytes, FootprintMode, GpuSample, HoldReason, KvPlacement, Millis, Observation, Policy,
    PoolObservation, PoolPolicy, ProfileId, ProfilePolicy, Readiness, TaskId, WaitingTask,
    WorstCase,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of this command (boxed: they are many, and `cli::Command` holds every command's
/// flags inline).
#[derive(Debug, Default, clap::Args)]
pub struct PlanArgs {
    /// The flags.
    #[command(flatten)]
    pub flags: Box<PlanFlags>,
}

impl std::ops::Deref for PlanArgs {
    type Target = PlanFlags;

    fn deref(&self) -> &PlanFlags {
        &self.flags
    }
}

impl std::ops::DerefMut for PlanArgs {
    fn deref_mut(&mut self) -> &mut PlanFlags {
        &mut self.flags
    }
}

/// The flags of `plan`.
#[derive(Debug, Default, clap::Args)]
pub struct PlanFlags {
    /// Plan every pool of this governor config, with its profiles, capacities and caps
    /// (instead of the profile flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GPU memory, as an IEC size (`80GiB`, `24GiB`). Default 80GiB.
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
    /// The inference engine: vllm, sglang, llamacpp, ollama or openai (unknown
    /// OpenAI-compatible server). Default vllm for flags, llamacpp for the ready profiles.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// The model (a catalog name, Hugging Face id or Ollama tag).
    #[arg(long)]
    pub model: Option<String>,
    /// KV bytes per token, for a model not in the catalog (instead of --model).
    #[arg(long, value_name = "BYTES")]
    pub kv_bytes_per_token: Option<u64>,
    /// The largest context one request of a task reaches, in tokens.
    #[arg(long, value_name = "TOKENS")]
    pub max_context: Option<u64>,
    /// LLM requests a task can have in flight at once (sub-agents). Default 1.
    #[arg(long, value_name = "N")]
    pub requests_per_task: Option<u32>,
    /// GPU memory a task uses outside the engine, as an IEC size. Default 0.
    #[arg(long, value_name = "SIZE")]
    pub extra_bytes: Option<String>,
    /// The profile's name in the report. Default `plan`.
    #[arg(long)]
    pub name: Option<String>,
    /// Fraction of GPU memory the governor may fill, in (0, 1]. Default 0.85.
    #[arg(long)]
    pub headroom: Option<f64>,
    /// GPU memory always kept free, as an IEC size. Default 1GiB.
    #[arg(long, value_name = "SIZE")]
    pub reserve: Option<String>,
    /// Weight format: bf16, fp8, q8_0, q4_k_m. Default bf16 for vllm/sglang/openai,
    /// q4_k_m for llamacpp/ollama.
    #[arg(long, value_name = "FORMAT")]
    pub weights: Option<String>,
    /// Memory the loaded weights take, as an IEC size: overrides the catalog's estimate
    /// (params × bits per weight), and is how weights are counted with --kv-bytes-per-token.
    #[arg(long, value_name = "SIZE")]
    pub weight_memory: Option<String>,
    /// KV cache dtype: f16, bf16, fp8, q8_0, q4_0. Default f16.
    #[arg(long, value_name = "DTYPE")]
    pub kv_dtype: Option<String>,
    /// Activation / compute-buffer allowance per loaded model, as an IEC size (default:
    /// 4GiB for vllm/sglang/openai, 1GiB for llamacpp/ollama).
    #[arg(long, value_name = "SIZE")]
    pub overhead: Option<String>,
    /// vLLM/SGLang: the `--max-model-len` the server already runs with (longer contexts never fit).
    #[arg(long, value_name = "TOKENS")]
    pub max_model_len: Option<u64>,
    /// llama.cpp: the `-c` the server already runs with (needs --parallel).
    #[arg(long, value_name = "TOKENS", requires = "parallel")]
    pub ctx_size: Option<u64>,
    /// llama.cpp/Ollama: the `-np` / `OLLAMA_NUM_PARALLEL` the server already runs with.
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// An inference engine, as far as planning is concerned: the config's one
/// [`crate::config::EngineKind`], with what planning adds below.
pub use crate::config::EngineKind as Engine;

impl Engine {
    fn default_weights(self) -> WeightFormat {
        match self {
            Engine::Llamacpp | Engine::Ollama => WeightFormat::Q4KM,
            Engine::Vllm | Engine::Sglang | Engine::Openai => WeightFormat::Bf16,
        }
    }

    /// Memory per loaded model beyond weights and KV (activations, CUDA graphs, compute
    /// buffers). vLLM/SGLang: the upper end of ENGINES.md §3's "2–4 GiB activations/CUDA
    /// graphs" (its worked H100 example), upper so the plan errs on the safe side; an
    /// unknown server gets the same. llama.cpp/Ollama: 1 GiB, llama.cpp's own per-device
    /// fitting margin (`--fit-target` default 1024 MiB, ENGINES.md §2.3), which covers its
    /// compute buffers at these context sizes.
    fn default_overhead(self) -> u64 {
        match self {
            Engine::Vllm | Engine::Sglang | Engine::Openai => 4 * Bytes::GIB,
            Engine::Llamacpp | Engine::Ollama => Bytes::GIB,
        }
    }

    /// Whether the engine serves requests from fixed slots sized at start-up.
    fn has_slots(self) -> bool {
        matches!(self, Engine::Llamacpp | Engine::Ollama)
    }
}

/// The most waiting tasks of one profile put in the synthetic backlog; a count that reaches
/// it is reported as "at least".
const MAX_TASKS: u64 = 1024;

/// One profile of a profile file (`profiles/*.toml`, one `[[profiles]]` table or the keys
/// alone): the schema the config loader reads too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    lane: Option<String>,
    model: Option<String>,
    kv_bytes_per_token: Option<u64>,
    kv_dtype: Option<String>,
    max_context_tokens: u64,
    requests_per_task: Option<u32>,
    max_parallel: Option<u32>,
    guaranteed: Option<u32>,
    extra_bytes: Option<String>,
    footprint: Option<FootprintMode>,
    pool: Option<String>,
}

/// The repository's ready profiles, embedded: what `plan` with no profile flag plans.
const READY_PROFILES: &[(&str, &str)] = &[
    (
        "profiles/coder-32k-qwen2.5-coder-32b.toml",
        include_str!("../../profiles/coder-32k-qwen2.5-coder-32b.toml"),
    ),
    (
        "profiles/classifier-8k-llama-3.1-8b.toml",
        include_str!("../../profiles/classifier-8k-llama-3.1-8b.toml"),
    ),
    (
        "profiles/reasoning-32k-deepseek-r1-distill-qwen-32b.toml",
        include_str!("../../profiles/reasoning-32k-deepseek-r1-distill-qwen-32b.toml"),
    ),
];

/// One profile as planned.
#[derive(Debug, Clone)]
struct PlanProfile {
    name: String,
    lane: String,
    model: Option<&'static ModelSpec>,
    kv_dtype: KvDtype,
    kv_bytes_per_token: u64,
    max_context: u64,
    requests_per_task: u32,
    max_parallel: Option<u32>,
    guaranteed: u32,
    extra_bytes: u64,
    footprint: FootprintMode,
    /// The worst case as a governor config computed it (it may honour sliding windows):
    /// used instead of the plain product so plan charges what the governor charges.
    declared: Option<WorstCase>,
}

impl PlanProfile {
    fn worst_case(&self) -> WorstCase {
        if let Some(wc) = self.declared {
            return wc;
        }
        WorstCase::of_requests(
            Bytes(self.kv_bytes_per_token.saturating_mul(self.max_context)),
            self.max_context,
            self.requests_per_task,
            Bytes(self.extra_bytes),
        )
    }

    /// The worst case charged on `engine`, by the config's rule
    /// ([`crate::config::worst_case_on`]).
    fn charged_on(&self, engine: Engine) -> WorstCase {
        crate::config::worst_case_on(
            engine,
            self.model,
            self.kv_bytes_per_token,
            self.kv_dtype,
            self.max_context,
            self.requests_per_task,
            Bytes(self.extra_bytes),
        )
    }

    fn policy(&self) -> ProfilePolicy {
        ProfilePolicy {
            id: ProfileId::from(self.name.clone()),
            lane: self.lane.clone(),
            pool: 0,
            declared: self.worst_case(),
            max_parallel: self.max_parallel,
            guaranteed: self.guaranteed,
            footprint: self.footprint,
        }
    }
}

/// Everything the plan is computed from.
#[derive(Debug, Clone)]
struct PlanInput {
    /// The capacity pool's name (`default` outside a multi-pool config).
    pool: String,
    gpu_memory: u64,
    engine: Engine,
    headroom: f64,
    reserve: u64,
    weights: WeightFormat,
    /// Given weight memory (replaces the catalog estimate).
    weight_memory: Option<u64>,
    /// Given baseline (weights, overhead and other tenants), replacing weights + overhead.
    baseline: Option<u64>,
    /// The board's global cap on running tasks.
    max_running: Option<u32>,
    /// Where KV is charged: GPU bytes (flags mode and per-request engines) or the engine's
    /// preallocated pool in tokens (a governor config's vLLM/SGLang/llama.cpp pool).
    placement: KvPlacement,
    /// The engine's KV pool in tokens, when known (EnginePool only).
    kv_capacity_tokens: Option<u64>,
    overhead_per_model: u64,
    max_model_len: Option<u64>,
    /// llama.cpp/Ollama server settings already in force: (slots, context per slot).
    slots: Option<(u32, u64)>,
    profiles: Vec<PlanProfile>,
}

/// One profile in the report.
#[derive(Debug, Clone, Serialize)]
struct ProfileReport {
    name: String,
    model: Option<&'static str>,
    kv_dtype: KvDtype,
    kv_bytes_per_token: u64,
    max_context_tokens: u64,
    requests_per_task: u32,
    extra_bytes: u64,
    worst_case_bytes: u64,
    /// Sliding-window models: the worst case with every layer holding the full context,
    /// and whether the engine keeps only the window (then `worst_case_bytes` is smaller).
    worst_case_bytes_full_attention: Option<u64>,
    sliding_window_honoured: Option<bool>,
    max_concurrent_alone: u64,
    /// Whether `max_concurrent_alone` hit the backlog size (then it is a lower bound).
    at_least: bool,
    in_mix: u64,
    never_fits: Option<String>,
}

/// The engine settings that make the plan hold.
#[derive(Debug, Clone, Serialize)]
struct EngineSettings {
    engine: Engine,
    /// Setting name → value.
    settings: BTreeMap<String, serde_json::Value>,
    /// Flags or environment to paste.
    command: String,
    notes: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
struct PlanReport {
    pool: String,
    gpu_memory_bytes: u64,
    engine: Engine,
    headroom: f64,
    reserve_bytes: u64,
    weights: WeightFormat,
    weight_bytes: u64,
    overhead_bytes: u64,
    /// What the GPU holds with no task: weights + overhead, or as configured.
    baseline_bytes: u64,
    ceiling_bytes: u64,
    kv_budget_bytes: u64,
    /// Engine pools: the engine's KV pool in tokens, and the part the governor fills
    /// (headroom × pool).
    kv_capacity_tokens: Option<u64>,
    kv_budget_tokens: Option<u64>,
    slots: Option<u32>,
    slot_context_tokens: Option<u64>,
    profiles: Vec<ProfileReport>,
    mix: BTreeMap<String, u64>,
    mix_tasks: u64,
    mix_worst_case_bytes: u64,
    never_fit: Vec<NeverFit>,
    engine_settings: EngineSettings,
    summary: String,
}

#[derive(Debug, Clone, Serialize)]
struct NeverFit {
    name: String,
    reason: String,
}

/// Run the command.
///
/// # Errors
///
/// A [`UsageError`] for a bad flag or profile (exit 2).
pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let inputs = inputs_from_args(&args)?;
    let reports: Vec<PlanReport> = inputs.iter().map(plan).collect();
    if args.json {
        // One pool: its report. Several (a multi-pool config): {"pools": [...]}.
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(&serde_json::json!({ "pools": many }))?,
        };
        println!("{json}");
    } else {
        let text: Vec<String> = reports.iter().map(render).collect();
        print!("{}", text.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// Parse an IEC size (`24GiB`, `512MiB`, `1.5GiB`, `4096B`, `24_000MiB`) with the config's
/// one size parser ([`crate::config::units::parse_size_str`]), so a flag and a config key take
/// the same spellings; the error names the flag.
fn parse_size(flag: &str, s: &str) -> anyhow::Result<u64> {
    crate::config::units::parse_size_str(s)
        .map(Bytes::get)
        .map_err(|e| usage(format!("{flag}: {e}")))
}

fn parse_headroom(flag: &str, h: f64) -> anyhow::Result<f64> {
    if h.is_finite() && h > 0.0 && h <= 1.0 {
        Ok(h)
    } else {
        Err(usage(format!(
            "{flag} {h} is out of range; give a fraction in (0, 1], e.g. 0.85"
        )))
    }
}

fn lookup_model(flag: &str, name: &str) -> anyhow::Result<&'static ModelSpec> {
    catalog::lookup(name).map_err(|e| usage(format!("{flag}: {e}")))
}

fn parse_dtype(flag: &str, s: &str) -> anyhow::Result<KvDtype> {
    s.parse().map_err(|e| usage(format!("{flag}: {e}")))
}

/// What to plan: one pool from flags or the ready profiles, or every pool of a config.
fn inputs_from_args(args: &PlanFlags) -> anyhow::Result<Vec<PlanInput>> {
    match &args.config {
        Some(path) => inputs_from_config(args, path),
        None => Ok(vec![input_from_args(args)?]),
    }
}

/// Every pool of the governor config at `path`, with the profiles it governs there. The
/// config's own worst cases, placements, capacities and caps are used, so the plan is what
/// that governor would do; `--gpu-memory`, `--headroom`, `--reserve`, `--weights`,
/// `--weight-memory` and `--overhead` override or fill in what the config leaves open.
fn inputs_from_config(args: &PlanFlags, path: &std::path::Path) -> anyhow::Result<Vec<PlanInput>> {
    for (flag, given) in [
        ("--model", args.model.is_some()),
        ("--kv-bytes-per-token", args.kv_bytes_per_token.is_some()),
        ("--max-context", args.max_context.is_some()),
        ("--requests-per-task", args.requests_per_task.is_some()),
        ("--extra-bytes", args.extra_bytes.is_some()),
        ("--name", args.name.is_some()),
        ("--kv-dtype", args.kv_dtype.is_some()),
        ("--engine", args.engine.is_some()),
        ("--max-model-len", args.max_model_len.is_some()),
        ("--ctx-size", args.ctx_size.is_some()),
        ("--parallel", args.parallel.is_some()),
    ] {
        if given {
            return Err(usage(format!(
                "{flag} and --config both given: the config describes the profiles and the \
                 engine; edit it, or drop --config to plan from flags"
            )));
        }
    }
    let cargs = crate::config::ConfigArgs {
        config: Some(path.to_path_buf()),
        ..Default::default()
    };
    let cfg = crate::config::load(&cargs, &crate::config::process_env)?;
    let gpu_memory_flag = match &args.gpu_memory {
        Some(s) => Some(parse_size("--gpu-memory", s)?),
        None => None,
    };
    let headroom_flag = match args.headroom {
        Some(h) => Some(parse_headroom("--headroom", h)?),
        None => None,
    };
    let reserve_flag = match &args.reserve {
        Some(s) => Some(parse_size("--reserve", s)?),
        None => None,
    };
    let weight_memory = match &args.weight_memory {
        Some(s) => Some(parse_size("--weight-memory", s)?),
        None => None,
    };
    let weights_flag = match &args.weights {
        Some(s) => Some(
            s.parse::<WeightFormat>()
                .map_err(|e| usage(format!("--weights: {e}")))?,
        ),
        None => None,
    };
    let overhead_flag = match &args.overhead {
        Some(s) => Some(parse_size("--overhead", s)?),
        None => None,
    };
    let mut inputs = Vec::new();
    for pool in &cfg.pools {
        let engine = pool.engine.kind;
        let gpu_memory = gpu_memory_flag
            .or(pool.gpu.memory_total.map(Bytes::get))
            .ok_or_else(|| {
                usage(format!(
                    "{}: pool '{}' has no gpu.memory_total (its telemetry is live), so its GPU \
                     size is unknown; give --gpu-memory (e.g. 80GiB)",
                    path.display(),
                    pool.name
                ))
            })?;
        let profiles: Vec<PlanProfile> = cfg
            .profiles
            .iter()
            .filter(|p| p.pool == pool.name)
            .map(|p| {
                let model = p.spec();
                PlanProfile {
                    name: p.name.to_string(),
                    lane: p.lane.clone(),
                    model,
                    kv_dtype: p.kv_dtype,
                    kv_bytes_per_token: p
                        .kv_bytes_per_token
                        .or(model.map(|m| m.kv_bytes_per_token(p.kv_dtype)))
                        .unwrap_or(0),
                    max_context: p.max_context_tokens,
                    requests_per_task: p.requests_per_task,
                    max_parallel: p.max_parallel,
                    guaranteed: p.guaranteed,
                    extra_bytes: p.extra_bytes.get(),
                    footprint: p.footprint,
                    declared: Some(p.declared),
                }
            })
            .collect();
        // A configured baseline is what the GPU really holds; flags about weights ask for an
        // estimate instead.
        let estimate = weights_flag.is_some() || weight_memory.is_some() || overhead_flag.is_some();
        inputs.push(PlanInput {
            pool: pool.name.clone(),
            gpu_memory,
            engine,
            headroom: headroom_flag.unwrap_or(pool.gpu.headroom),
            reserve: reserve_flag.unwrap_or(pool.gpu.reserve.get()),
            weights: weights_flag.unwrap_or(engine.default_weights()),
            weight_memory,
            baseline: if estimate {
                None
            } else {
                pool.gpu.baseline.map(Bytes::get)
            },
            max_running: cfg.dispatch.max_running,
            placement: pool.engine.kind.kv_placement(),
            kv_capacity_tokens: pool.engine.kv_capacity_tokens,
            overhead_per_model: overhead_flag.unwrap_or(engine.default_overhead()),
            max_model_len: None,
            slots: match (pool.engine.slots, pool.engine.slot_context_tokens) {
                (Some(n), Some(c)) => Some((n, c)),
                (Some(n), None) => Some((n, 0)),
                _ => None,
            },
            profiles,
        });
    }
    Ok(inputs)
}

fn input_from_args(args: &PlanFlags) -> anyhow::Result<PlanInput> {
    let from_flags = args.model.is_some() || args.kv_bytes_per_token.is_some();
    if !from_flags {
        for (flag, given) in [
            ("--max-context", args.max_context.is_some()),
            ("--requests-per-task", args.requests_per_task.is_some()),
            ("--extra-bytes", args.extra_bytes.is_some()),
            ("--name", args.name.is_some()),
            ("--kv-dtype", args.kv_dtype.is_some()),
        ] {
            if given {
                return Err(usage(format!(
                    "{flag} describes a profile; give --model (or --kv-bytes-per-token) with it"
                )));
            }
        }
    }
    // The ready profiles name three models: three bf16 32B/8B models do not fit one 80 GiB
    // GPU under vLLM, three llama-servers with Q4_K_M weights do.
    let engine = args.engine.unwrap_or(if from_flags {
        Engine::Vllm
    } else {
        Engine::Llamacpp
    });
    let gpu_memory = match &args.gpu_memory {
        Some(s) => parse_size("--gpu-memory", s)?,
        None => 80 * Bytes::GIB,
    };
    if gpu_memory == 0 {
        return Err(usage(
            "--gpu-memory: must be more than 0, e.g. 80GiB".to_owned(),
        ));
    }
    let headroom = parse_headroom("--headroom", args.headroom.unwrap_or(0.85))?;
    let reserve = match &args.reserve {
        Some(s) => parse_size("--reserve", s)?,
        None => Bytes::GIB,
    };
    let weights = match &args.weights {
        Some(s) => s
            .parse::<WeightFormat>()
            .map_err(|e| usage(format!("--weights: {e}")))?,
        None => engine.default_weights(),
    };
    let weight_memory = match &args.weight_memory {
        Some(s) => Some(parse_size("--weight-memory", s)?),
        None => None,
    };
    let overhead_per_model = match &args.overhead {
        Some(s) => parse_size("--overhead", s)?,
        None => engine.default_overhead(),
    };
    let slots = match (args.ctx_size, args.parallel) {
        (Some(ctx), Some(np)) => {
            if np == 0 || ctx < u64::from(np) {
                return Err(usage(format!(
                    "--ctx-size {ctx} / --parallel {np}: need at least one token per slot and one slot"
                )));
            }
            Some((np, ctx / u64::from(np)))
        }
        (None, Some(np)) if engine == Engine::Ollama => {
            if np == 0 {
                return Err(usage("--parallel: must be at least 1".to_owned()));
            }
            // Ollama's context per slot is num_ctx; without it, the profile's own context.
            Some((np, 0))
        }
        (None, Some(_)) => {
            return Err(usage(
                "--parallel needs --ctx-size (the server's -c) for llama.cpp".to_owned(),
            ));
        }
        _ => None,
    };
    if slots.is_some() && !engine.has_slots() {
        return Err(usage(format!(
            "--ctx-size/--parallel describe llama.cpp or Ollama slots; the engine is {}",
            engine.name()
        )));
    }
    if args.max_model_len.is_some() && !matches!(engine, Engine::Vllm | Engine::Sglang) {
        return Err(usage(format!(
            "--max-model-len describes a vLLM/SGLang server; the engine is {}",
            engine.name()
        )));
    }

    let mut profiles = if from_flags {
        vec![profile_from_flags(args)?]
    } else {
        ready_profiles()?
    };
    for p in &mut profiles {
        p.declared = Some(p.charged_on(engine));
    }
    Ok(PlanInput {
        pool: "default".to_owned(),
        gpu_memory,
        engine,
        headroom,
        reserve,
        weights,
        weight_memory,
        baseline: None,
        max_running: None,
        // Flags mode charges KV in GPU bytes whatever the engine: the plan sizes the engine.
        placement: KvPlacement::GpuBytes,
        kv_capacity_tokens: None,
        overhead_per_model,
        max_model_len: args.max_model_len,
        slots,
        profiles,
    })
}

fn profile_from_flags(args: &PlanFlags) -> anyhow::Result<PlanProfile> {
    let kv_dtype = match &args.kv_dtype {
        Some(s) => parse_dtype("--kv-dtype", s)?,
        None => KvDtype::F16,
    };
    let (model, kv_bytes_per_token) = match (&args.model, args.kv_bytes_per_token) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "--model and --kv-bytes-per-token both given; give one (the catalog computes \
                 bytes per token from the model)"
                    .to_owned(),
            ));
        }
        (Some(name), None) => {
            let m = lookup_model("--model", name)?;
            (Some(m), m.kv_bytes_per_token(kv_dtype))
        }
        (None, Some(b)) if b > 0 => (None, b),
        _ => {
            return Err(usage(
                "--kv-bytes-per-token: must be more than 0 (e.g. 131072 for Llama-3.1-8B at f16)"
                    .to_owned(),
            ));
        }
    };
    let max_context = match args.max_context {
        Some(0) => return Err(usage("--max-context: must be at least 1 token".to_owned())),
        Some(c) => c,
        None => {
            return Err(usage(
                "--max-context is required with --model: the largest context one request \
                 reaches, in tokens (e.g. 32768)"
                    .to_owned(),
            ));
        }
    };
    let requests_per_task = match args.requests_per_task {
        Some(0) => {
            return Err(usage("--requests-per-task: must be at least 1".to_owned()));
        }
        Some(n) => n,
        None => 1,
    };
    let extra_bytes = match &args.extra_bytes {
        Some(s) => parse_size("--extra-bytes", s)?,
        None => 0,
    };
    let name = args.name.clone().unwrap_or_else(|| "plan".to_owned());
    Ok(PlanProfile {
        lane: format!("{name}@gpu"),
        name,
        model,
        kv_dtype,
        kv_bytes_per_token,
        max_context,
        requests_per_task,
        max_parallel: None,
        guaranteed: 0,
        extra_bytes,
        footprint: FootprintMode::Max,
        declared: None,
    })
}

/// Parse one profile file's text (`file` names it in errors).
fn parse_profile(file: &str, text: &str) -> anyhow::Result<PlanProfile> {
    /// The `[[profiles]]` form, which the ready profiles use so they paste into a config.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tables {
        profiles: Vec<ProfileFile>,
    }
    let raw: ProfileFile = match toml::from_str::<Tables>(text) {
        Ok(Tables { profiles }) if profiles.len() == 1 => profiles[0].clone(),
        // A bare profile (or anything else: its error then names the problem).
        _ => toml::from_str(text).map_err(|e| usage(format!("{file}: {e}")))?,
    };
    let kv_dtype = match &raw.kv_dtype {
        Some(s) => parse_dtype(&format!("{file}: kv_dtype"), s)?,
        None => KvDtype::F16,
    };
    let (model, kv_bytes_per_token) = match (&raw.model, raw.kv_bytes_per_token) {
        (Some(name), None) => {
            let m = lookup_model(&format!("{file}: model"), name)?;
            (Some(m), m.kv_bytes_per_token(kv_dtype))
        }
        (None, Some(b)) if b > 0 => (None, b),
        _ => {
            return Err(usage(format!(
                "{file}: give exactly one of model (a catalog name) or kv_bytes_per_token (> 0)"
            )));
        }
    };
    if raw.max_context_tokens == 0 {
        return Err(usage(format!(
            "{file}: max_context_tokens must be at least 1"
        )));
    }
    let extra_bytes = match &raw.extra_bytes {
        Some(s) => parse_size(&format!("{file}: extra_bytes"), s)?,
        None => 0,
    };
    let _ = raw.pool; // Plan puts every profile in the one pool it models.
    Ok(PlanProfile {
        lane: raw.lane.unwrap_or_else(|| format!("{}@gpu", raw.name)),
        name: raw.name,
        model,
        kv_dtype,
        kv_bytes_per_token,
        max_context: raw.max_context_tokens,
        requests_per_task: raw.requests_per_task.unwrap_or(1).max(1),
        max_parallel: raw.max_parallel,
        guaranteed: raw.guaranteed.unwrap_or(0),
        extra_bytes,
        footprint: raw.footprint.unwrap_or_default(),
        declared: None,
    })
}

fn ready_profiles() -> anyhow::Result<Vec<PlanProfile>> {
    READY_PROFILES
        .iter()
        .map(|(file, text)| parse_profile(file, text))
        .collect()
}

/// The distinct catalog models the profiles use, in first-use order.
fn distinct_models(profiles: &[PlanProfile]) -> Vec<&'static ModelSpec> {
    let mut out: Vec<&'static ModelSpec> = Vec::new();
    for p in profiles {
        if let Some(m) = p.model
            && !out.iter().any(|o| o.name == m.name)
        {
            out.push(m);
        }
    }
    out
}

/// Why a profile can never fit, before any memory is counted: its context is longer than
/// the model or the server allows.
fn context_never_fits(input: &PlanInput, p: &PlanProfile) -> Option<String> {
    if let Some(m) = p.model
        && p.max_context > u64::from(m.max_context)
    {
        return Some(format!(
            "max_context_tokens {} exceeds {}'s context of {} tokens (config.json \
             max_position_embeddings); lower it, or enable rope scaling on the server and \
             give kv_bytes_per_token instead of model",
            p.max_context, m.name, m.max_context
        ));
    }
    if let Some(len) = input.max_model_len
        && p.max_context > len
    {
        return Some(format!(
            "max_context_tokens {} exceeds the server's --max-model-len {len}; raise \
             --max-model-len or lower max_context_tokens",
            p.max_context
        ));
    }
    None
}

/// The policy and observation `decide` sees for a plan of `profiles`.
fn synthetic(
    input: &PlanInput,
    profiles: &[&PlanProfile],
    baseline: u64,
    slots: Option<(u32, u64)>,
    capacity: Option<u64>,
    tasks_each: &[u64],
) -> (Policy, Observation) {
    let now = Millis(0);
    let policy = Policy {
        pools: vec![PoolPolicy {
            name: input.pool.clone(),
            kv_placement: input.placement,
            headroom: input.headroom,
            reserve: Bytes(input.reserve),
            kv_capacity_tokens: capacity,
            slots: slots.map(|(n, _)| n),
            slot_context_tokens: slots.map(|(_, c)| c),
            max_staleness: Millis::secs(60),
            needs_engine: false,
        }],
        profiles: profiles.iter().map(|p| p.policy()).collect(),
        max_running: input.max_running,
        // No task has waited: no starvation reservations.
        max_wait: Millis(u64::MAX),
    };
    // Interleave the profiles' backlogs so no profile goes first by construction.
    let rounds = tasks_each.iter().copied().max().unwrap_or(0);
    let mut waiting = Vec::new();
    let mut seq = 0u64;
    for round in 0..rounds {
        for (p, &n) in profiles.iter().zip(tasks_each) {
            if round < n {
                waiting.push(WaitingTask {
                    id: TaskId::from(format!("{}#{round}", p.name)),
                    profile: Some(ProfileId::from(p.name.clone())),
                    assignee: p.lane.clone(),
                    priority: 0,
                    created_at: Millis(seq),
                    waiting_since: now,
                    readiness: Readiness::Ready,
                });
                seq += 1;
            }
        }
    }
    let observation = Observation {
        now,
        pools: vec![PoolObservation {
            gpu: Some(GpuSample {
                at: now,
                total: Bytes(input.gpu_memory),
                used: Bytes(baseline.min(input.gpu_memory)),
                free: Bytes(input.gpu_memory.saturating_sub(baseline)),
            }),
            baseline: Some(Bytes(baseline)),
            engine: None,
        }],
        running: Vec::new(),
        waiting,
        dual_dispatcher: None,
        latency_limit: None,
        learned: Vec::new(),
        spread: Vec::new(),
    };
    (policy, observation)
}

/// How many waiting tasks of one profile to offer: enough that memory, not the backlog,
/// is the limit (one more than fits in the budget), capped at [`MAX_TASKS`].
fn backlog(budget_bytes: u64, budget_tokens: Option<u64>, wc: &WorstCase) -> u64 {
    let n = match budget_tokens {
        Some(tokens) => tokens / wc.kv_tokens.max(1),
        None => budget_bytes / wc.total_bytes().get().max(1),
    };
    n.saturating_add(1).min(MAX_TASKS)
}

/// vLLM's default `--gpu-memory-utilization`, used to estimate an engine pool that a config
/// does not size.
use crate::config::VLLM_DEFAULT_UTILIZATION;

fn plan(input: &PlanInput) -> PlanReport {
    let models = distinct_models(&input.profiles);
    let weight_bytes: u64 = input
        .weight_memory
        .unwrap_or_else(|| models.iter().map(|m| m.weight_bytes(input.weights)).sum());
    let overhead_bytes = input
        .overhead_per_model
        .saturating_mul(models.len().max(1) as u64);
    let baseline = input
        .baseline
        .unwrap_or_else(|| weight_bytes.saturating_add(overhead_bytes));
    let engine_pool = input.placement == KvPlacement::EnginePool;
    // An engine pool the config does not size: what the engine would preallocate at its
    // default utilization after weights and overhead, in tokens of the largest profile.
    let largest_bpt = input
        .profiles
        .iter()
        .map(|p| p.kv_bytes_per_token)
        .max()
        .unwrap_or(1)
        .max(1);
    let capacity = if engine_pool {
        input.kv_capacity_tokens.or_else(|| {
            let pool = (input.gpu_memory as f64 * VLLM_DEFAULT_UTILIZATION) as u64;
            Some(pool.saturating_sub(weight_bytes.saturating_add(overhead_bytes)) / largest_bpt)
        })
    } else {
        None
    };
    // The ceilings as the decision core computes them: ask it, with nothing waiting.
    let (policy, obs) = synthetic(input, &[], baseline, input.slots, capacity, &[]);
    let budget = governor::decide(&policy, &obs).pools.into_iter().next();
    let ceiling_bytes = budget
        .as_ref()
        .and_then(|b| b.ceiling_bytes)
        .map_or(0, Bytes::get);
    let kv_budget_tokens = budget.as_ref().and_then(|b| b.ceiling_kv_tokens);
    let kv_budget_bytes = match kv_budget_tokens {
        Some(t) => t.saturating_mul(largest_bpt),
        None => ceiling_bytes.saturating_sub(baseline),
    };

    // Profiles whose context the model or server refuses never enter the backlog.
    let context_reasons: Vec<Option<String>> = input
        .profiles
        .iter()
        .map(|p| context_never_fits(input, p))
        .collect();
    let plannable: Vec<&PlanProfile> = input
        .profiles
        .iter()
        .zip(&context_reasons)
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| p)
        .collect();

    // Fixed-slot engines: each slot holds the longest request of any profile; as many slots
    // as the KV budget holds, unless the server's own slots were given.
    // With several models each has its own server (llama.cpp) or its own slots (Ollama), so
    // one pool-wide slot count would be wrong: then only bytes are counted, and the settings
    // size each model's slots from the mix.
    let slots = if input.engine.has_slots() && (models.len() <= 1 || input.slots.is_some()) {
        let slot_ctx = plannable.iter().map(|p| p.max_context).max().unwrap_or(0);
        let slot_bytes = plannable
            .iter()
            .map(|p| p.kv_bytes_per_token.saturating_mul(slot_ctx))
            .max()
            .unwrap_or(0);
        match input.slots {
            Some((np, 0)) => Some((np, slot_ctx)),
            Some(given) => Some(given),
            None if slot_bytes > 0 && !engine_pool => {
                let n = (kv_budget_bytes / slot_bytes).min(MAX_TASKS);
                Some((u32::try_from(n).unwrap_or(u32::MAX), slot_ctx))
            }
            None => None,
        }
    } else {
        None
    };

    // Alone: each profile with a backlog of its own tasks only.
    let mut alone = Vec::new();
    for p in &input.profiles {
        if !plannable.iter().any(|q| q.name == p.name) {
            alone.push((0, false, None));
            continue;
        }
        let wc = p.worst_case();
        let n = backlog(kv_budget_bytes, kv_budget_tokens, &wc);
        let (policy, obs) = synthetic(input, &[p], baseline, slots, capacity, &[n]);
        let decision = governor::decide(&policy, &obs);
        let released = decision.release.len() as u64;
        // Nothing released alone: the first task's hold reason says why (NeverFits when the
        // worst case exceeds even an empty GPU's ceiling, VramHeadroom or NoSlot when the
        // weights leave too little).
        let never = if released == 0 {
            decision.held.first().map(|h| h.reason.clone())
        } else {
            None
        };
        alone.push((released, released >= MAX_TASKS, never));
    }

    // The mix: every plannable profile's backlog at once, interleaved.
    let backlogs: Vec<u64> = plannable
        .iter()
        .map(|p| backlog(kv_budget_bytes, kv_budget_tokens, &p.worst_case()))
        .collect();
    let (policy, obs) = synthetic(input, &plannable, baseline, slots, capacity, &backlogs);
    let decision = governor::decide(&policy, &obs);
    let mut mix: BTreeMap<String, u64> = plannable.iter().map(|p| (p.name.clone(), 0)).collect();
    let mut mix_worst_case_bytes = 0u64;
    for r in &decision.release {
        *mix.entry(r.profile.to_string()).or_default() += 1;
        mix_worst_case_bytes = mix_worst_case_bytes.saturating_add(r.charged.total_bytes().get());
    }
    let mix_tasks = decision.release.len() as u64;

    let mut profiles = Vec::new();
    let mut never_fit = Vec::new();
    for ((p, ctx_reason), (alone_n, at_least, decide_reason)) in
        input.profiles.iter().zip(&context_reasons).zip(alone)
    {
        let reason = ctx_reason.clone().or_else(|| {
            decide_reason.map(|d| explain_never_fits(input, p, &d, ceiling_bytes, baseline))
        });
        if let Some(r) = &reason {
            never_fit.push(NeverFit {
                name: p.name.clone(),
                reason: r.clone(),
            });
        }
        let wc = p.worst_case();
        let sliding = p
            .model
            .is_some_and(|m| matches!(m.attention, catalog::Attention::Sliding { .. }));
        profiles.push(ProfileReport {
            name: p.name.clone(),
            model: p.model.map(|m| m.name),
            kv_dtype: p.kv_dtype,
            kv_bytes_per_token: p.kv_bytes_per_token,
            max_context_tokens: p.max_context,
            requests_per_task: p.requests_per_task,
            extra_bytes: p.extra_bytes,
            worst_case_bytes: wc.total_bytes().get(),
            worst_case_bytes_full_attention: sliding.then(|| {
                p.kv_bytes_per_token
                    .saturating_mul(p.max_context)
                    .saturating_mul(u64::from(p.requests_per_task))
                    .saturating_add(p.extra_bytes)
            }),
            sliding_window_honoured: sliding.then(|| input.engine.honours_sliding_window()),
            max_concurrent_alone: alone_n,
            at_least,
            in_mix: mix.get(&p.name).copied().unwrap_or(0),
            never_fits: reason,
        });
    }

    let engine_settings = engine_settings(
        input,
        &plannable,
        &profiles,
        slots,
        &Budget {
            ceiling_bytes,
            kv_budget_bytes,
            capacity,
        },
        &models,
    );
    let mut report = PlanReport {
        pool: input.pool.clone(),
        gpu_memory_bytes: input.gpu_memory,
        engine: input.engine,
        headroom: input.headroom,
        reserve_bytes: input.reserve,
        weights: input.weights,
        weight_bytes,
        overhead_bytes,
        baseline_bytes: baseline,
        ceiling_bytes,
        kv_budget_bytes,
        kv_capacity_tokens: capacity,
        kv_budget_tokens,
        slots: slots.map(|(n, _)| n),
        slot_context_tokens: slots.map(|(_, c)| c),
        profiles,
        mix,
        mix_tasks,
        mix_worst_case_bytes,
        never_fit,
        engine_settings,
        summary: String::new(),
    };
    report.summary = summary(&report);
    report
}

/// Why a profile fits zero times alone, in plan terms, with the decision core's own reason.
fn explain_never_fits(
    input: &PlanInput,
    p: &PlanProfile,
    reason: &HoldReason,
    ceiling: u64,
    baseline: u64,
) -> String {
    let wc = p.worst_case().total_bytes();
    let kv_budget = ceiling.saturating_sub(baseline);
    match reason {
        HoldReason::PoolFull { max_parallel } => {
            format!("its max_parallel is {max_parallel} (decide: {reason})")
        }
        HoldReason::NoSlot { .. } | HoldReason::NeverFits { .. } if wc.get() <= kv_budget => {
            format!("{reason}; set the server's slots and context to fit the profile")
        }
        HoldReason::KvHeadroom { needed, .. } => format!(
            "its worst case of {needed} KV tokens exceeds what the governor fills of the \
             engine's KV pool; lower max_context_tokens or requests_per_task, or give the \
             engine more memory (decide: {reason})"
        ),
        _ if kv_budget == 0 => format!(
            "the weights and the {} overhead ({}) alone fill the ceiling of {}; use a larger \
             GPU, smaller weights (--weights) or a higher --headroom (decide: {reason})",
            input.engine.name(),
            Bytes(baseline),
            Bytes(ceiling)
        ),
        _ => format!(
            "its worst case of {wc} exceeds the KV budget of {} (ceiling {} − weights and \
             overhead {}); lower max_context_tokens or requests_per_task, quantize the KV \
             cache (kv_dtype), or use a larger GPU (decide: {reason})",
            Bytes(kv_budget),
            Bytes(ceiling),
            Bytes(baseline)
        ),
    }
}

/// Sequences the engine must run at once for the plan: the larger of the mix and any
/// profile alone, in requests.
fn max_sequences(plannable: &[&PlanProfile], profiles: &[ProfileReport]) -> u64 {
    let seqs_of = |name: &str, n: u64| {
        plannable
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| n.saturating_mul(u64::from(p.requests_per_task)))
    };
    let mix: u64 = profiles.iter().map(|r| seqs_of(&r.name, r.in_mix)).sum();
    let alone = profiles
        .iter()
        .map(|r| seqs_of(&r.name, r.max_concurrent_alone))
        .max()
        .unwrap_or(0);
    mix.max(alone)
}

/// One model's slots on a fixed-slot engine.
struct SlotGroup {
    model: String,
    kv_bytes_per_token: u64,
    slots: u32,
    slot_ctx: u64,
}

/// Slots per model: with one model, the pool-wide slots the plan was decided with; with
/// several, each model's share of the mix (its requests in flight) at its longest context.
fn slot_groups(
    plannable: &[&PlanProfile],
    profiles: &[ProfileReport],
    slots: Option<(u32, u64)>,
) -> Vec<SlotGroup> {
    let mut groups: Vec<SlotGroup> = Vec::new();
    for p in plannable {
        let model = p.model.map_or("model", |m| m.name).to_owned();
        let in_mix = profiles
            .iter()
            .find(|r| r.name == p.name)
            .map_or(0, |r| r.in_mix);
        let seqs = u32::try_from(in_mix.saturating_mul(u64::from(p.requests_per_task)))
            .unwrap_or(u32::MAX);
        match groups.iter_mut().find(|g| g.model == model) {
            Some(g) => {
                g.slots = g.slots.saturating_add(seqs);
                g.slot_ctx = g.slot_ctx.max(p.max_context);
                g.kv_bytes_per_token = g.kv_bytes_per_token.max(p.kv_bytes_per_token);
            }
            None => groups.push(SlotGroup {
                model,
                kv_bytes_per_token: p.kv_bytes_per_token,
                slots: seqs,
                slot_ctx: p.max_context,
            }),
        }
    }
    if let (Some((n, ctx)), [g]) = (slots, groups.as_mut_slice()) {
        g.slots = n;
        g.slot_ctx = ctx;
    }
    groups
}

/// `fraction` of `total`, floored to two decimals (what vLLM/SGLang take).
fn fraction_floor_2dp(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    ((part as f64 / total as f64) * 100.0).floor() / 100.0
}

/// A pool's budget as the plan computed it.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// GPU bytes ceiling (from `decide`).
    ceiling_bytes: u64,
    /// Bytes left for KV under the ceiling.
    kv_budget_bytes: u64,
    /// The engine's KV pool in tokens (engine pools only).
    capacity: Option<u64>,
}

fn engine_settings(
    input: &PlanInput,
    plannable: &[&PlanProfile],
    profiles: &[ProfileReport],
    slots: Option<(u32, u64)>,
    budget: &Budget,
    models: &[&'static ModelSpec],
) -> EngineSettings {
    let Budget {
        ceiling_bytes,
        kv_budget_bytes,
        capacity,
    } = *budget;
    let mut settings = BTreeMap::new();
    let mut notes = Vec::new();
    let longest = plannable.iter().map(|p| p.max_context).max().unwrap_or(0);
    let seqs = max_sequences(plannable, profiles).max(1);
    let dtype = plannable.first().map_or(KvDtype::F16, |p| p.kv_dtype);
    if models.len() > 1 {
        notes.push(format!(
            "{} models ({}): the plan counts the weights of each, loaded at once",
            models.len(),
            models.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        ));
    }
    let command = match input.engine {
        Engine::Vllm | Engine::Sglang => {
            let util = if input.placement == KvPlacement::EnginePool {
                // A pool the config sizes: the engine keeps what it holds now (its baseline
                // is its preallocation), else vLLM's default.
                match input.baseline {
                    Some(b) => fraction_floor_2dp(b, input.gpu_memory),
                    None => VLLM_DEFAULT_UTILIZATION,
                }
            } else {
                // The engine may take the whole ceiling: weights, activations and KV pool.
                fraction_floor_2dp(ceiling_bytes, input.gpu_memory)
            };
            let kv_flag = match dtype {
                KvDtype::Fp8 => Some("fp8"),
                _ => None,
            };
            let cmd = if input.engine == Engine::Vllm {
                settings.insert("gpu_memory_utilization".into(), util.into());
                settings.insert("max_model_len".into(), longest.into());
                settings.insert("max_num_seqs".into(), seqs.into());
                let mut c = format!(
                    "vllm serve <model> --gpu-memory-utilization {util:.2} --max-model-len {longest} --max-num-seqs {seqs}"
                );
                if let Some(k) = kv_flag {
                    settings.insert("kv_cache_dtype".into(), k.into());
                    let _ = write!(c, " --kv-cache-dtype {k}");
                }
                c
            } else {
                settings.insert("mem_fraction_static".into(), util.into());
                settings.insert("context_length".into(), longest.into());
                settings.insert("max_running_requests".into(), seqs.into());
                let mut c = format!(
                    "python -m sglang.launch_server --model-path <model> --mem-fraction-static {util:.2} --context-length {longest} --max-running-requests {seqs}"
                );
                if kv_flag.is_some() {
                    settings.insert("kv_cache_dtype".into(), "fp8_e4m3".into());
                    c.push_str(" --kv-cache-dtype fp8_e4m3");
                }
                c
            };
            if let Some(c) = capacity {
                settings.insert("expected_kv_cache_tokens".into(), c.into());
                notes.push(format!(
                    "the engine's KV pool is {c} tokens (configured or estimated at \
                     utilization {VLLM_DEFAULT_UTILIZATION}); the governor fills headroom × \
                     that pool"
                ));
            } else if let [m] = models {
                let tokens = kv_budget_bytes / m.kv_bytes_per_token(dtype).max(1);
                settings.insert("expected_kv_cache_tokens".into(), tokens.into());
                notes.push(format!(
                    "expect a KV pool of about {tokens} tokens ({} after weights and the \
                     activation allowance); the governor's engine pool ceiling is headroom × \
                     that pool",
                    Bytes(kv_budget_bytes)
                ));
            }
            if matches!(dtype, KvDtype::Q8_0 | KvDtype::Q4_0) {
                notes.push(format!(
                    "kv_dtype {dtype} is a llama.cpp/Ollama type; vLLM/SGLang take fp8"
                ));
            }
            cmd
        }
        Engine::Llamacpp => {
            let groups = slot_groups(plannable, profiles, slots);
            let mut cmds = Vec::new();
            for g in &groups {
                let ctx = u64::from(g.slots).saturating_mul(g.slot_ctx);
                let key = |k: &str| {
                    if groups.len() > 1 {
                        format!("{}.{k}", g.model)
                    } else {
                        k.to_owned()
                    }
                };
                settings.insert(key("ctx_size"), ctx.into());
                settings.insert(key("parallel"), g.slots.into());
                let mut c = format!(
                    "llama-server -m <{}.gguf> -c {ctx} -np {}",
                    g.model, g.slots
                );
                if dtype != KvDtype::F16 && dtype != KvDtype::Bf16 {
                    settings.insert(key("cache_type"), dtype.name().into());
                    let _ = write!(c, " -ctk {dtype} -ctv {dtype} -fa on");
                }
                cmds.push(c);
                notes.push(format!(
                    "{}: -c is the total context split over -np slots: {} tokens per slot",
                    g.model, g.slot_ctx
                ));
            }
            if groups.len() > 1 {
                notes.push(
                    "llama-server serves one model: run one server per model, each sized for \
                     its share of the mix"
                        .to_owned(),
                );
            }
            cmds.join("; ")
        }
        Engine::Ollama => {
            let groups = slot_groups(plannable, profiles, slots);
            let np = groups.iter().map(|g| g.slots).max().unwrap_or(0);
            settings.insert("OLLAMA_NUM_PARALLEL".into(), np.into());
            let mut c = format!("OLLAMA_NUM_PARALLEL={np}");
            if let [g] = groups.as_slice() {
                settings.insert("num_ctx".into(), g.slot_ctx.into());
                let _ = write!(c, " OLLAMA_CONTEXT_LENGTH={}", g.slot_ctx);
            } else {
                settings.insert("OLLAMA_MAX_LOADED_MODELS".into(), groups.len().into());
                let _ = write!(c, " OLLAMA_MAX_LOADED_MODELS={}", groups.len());
                for g in &groups {
                    settings.insert(format!("{}.num_ctx", g.model), g.slot_ctx.into());
                    notes.push(format!(
                        "{}: num_ctx {} (options.num_ctx)",
                        g.model, g.slot_ctx
                    ));
                }
            }
            if matches!(dtype, KvDtype::Q8_0 | KvDtype::Q4_0) {
                settings.insert("OLLAMA_KV_CACHE_TYPE".into(), dtype.name().into());
                let _ = write!(c, " OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE={dtype}");
            }
            c.push_str(" ollama serve");
            let reserved: u64 = groups
                .iter()
                .map(|g| {
                    u64::from(np)
                        .saturating_mul(g.slot_ctx)
                        .saturating_mul(g.kv_bytes_per_token)
                })
                .sum();
            notes.push(format!(
                "Ollama reserves num_ctx × OLLAMA_NUM_PARALLEL of KV per loaded model: {} in \
                 all{}",
                Bytes(reserved),
                if reserved > kv_budget_bytes {
                    format!(
                        ", more than the KV budget of {}: OLLAMA_NUM_PARALLEL is one value for \
                         every model, so give the models separate Ollama instances or use llamacpp",
                        Bytes(kv_budget_bytes)
                    )
                } else {
                    String::new()
                }
            ));
            c
        }
        Engine::Openai => {
            settings.insert("max_concurrent_requests".into(), seqs.into());
            notes.push(format!(
                "unknown engine: cap the server at {seqs} concurrent requests and {longest} \
                 tokens of context if it has such settings"
            ));
            format!("(server-specific) max concurrent requests {seqs}, max context {longest}")
        }
    };
    if input.weight_memory.is_none() && plannable.iter().any(|p| p.model.is_none()) {
        notes.push(
            "a profile gives kv_bytes_per_token without a model, so its weights are not \
             counted; pass --weight-memory with what the loaded weights take"
                .to_owned(),
        );
    }
    if profiles.iter().all(|p| p.in_mix == 0) {
        notes.push("nothing fits: these settings are not a working plan".to_owned());
    }
    EngineSettings {
        engine: input.engine,
        settings,
        command,
        notes,
    }
}

fn summary(r: &PlanReport) -> String {
    let fits: Vec<String> = r
        .profiles
        .iter()
        .filter(|p| p.in_mix > 0)
        .map(|p| {
            // A count at the backlog's size is a lower bound.
            let at_least = if p.in_mix >= MAX_TASKS { "≥" } else { "" };
            format!("{at_least}{} {}", p.in_mix, p.name)
        })
        .collect();
    let budget = match r.kv_budget_tokens {
        Some(t) => format!("{t} tokens"),
        None => Bytes(r.kv_budget_bytes).to_string(),
    };
    let mut s = format!(
        "{} on {} ({}): KV budget {budget}; largest mix {}",
        r.engine.name(),
        Bytes(r.gpu_memory_bytes),
        r.weights,
        if fits.is_empty() {
            "nothing".to_owned()
        } else {
            fits.join(" + ")
        }
    );
    if !r.never_fit.is_empty() {
        let names: Vec<&str> = r.never_fit.iter().map(|n| n.name.as_str()).collect();
        let _ = write!(s, "; never fits: {}", names.join(", "));
    }
    s
}

fn render(r: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pool {} · GPU {} · {} · headroom {} · reserve {}",
        r.pool,
        Bytes(r.gpu_memory_bytes),
        r.engine.name(),
        r.headroom,
        Bytes(r.reserve_bytes)
    );
    if let (Some(cap), Some(fill)) = (r.kv_capacity_tokens, r.kv_budget_tokens) {
        let _ = writeln!(
            out,
            "engine KV pool {cap} tokens; the governor fills {fill} (headroom × pool); GPU \
             ceiling {} (total − reserve) for bytes outside the engine",
            Bytes(r.ceiling_bytes)
        );
    } else if r.baseline_bytes == r.weight_bytes.saturating_add(r.overhead_bytes) {
        let _ = writeln!(
            out,
            "ceiling {} − weights {} ({}) − overhead {} = KV budget {}",
            Bytes(r.ceiling_bytes),
            Bytes(r.weight_bytes),
            r.weights,
            Bytes(r.overhead_bytes),
            Bytes(r.kv_budget_bytes)
        );
    } else {
        let _ = writeln!(
            out,
            "ceiling {} − baseline {} (configured) = KV budget {}",
            Bytes(r.ceiling_bytes),
            Bytes(r.baseline_bytes),
            Bytes(r.kv_budget_bytes)
        );
    }
    if let (Some(n), Some(c)) = (r.slots, r.slot_context_tokens) {
        let _ = writeln!(out, "slots {n} × {c} tokens");
    }
    let _ = writeln!(out);
    let header = [
        "PROFILE",
        "MODEL",
        "KV/TOKEN",
        "CONTEXT",
        "REQ",
        "WORST CASE",
        "ALONE",
        "IN MIX",
    ];
    let rows: Vec<[String; 8]> = r
        .profiles
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.model.unwrap_or("(given)").to_owned(),
                format!("{} ({})", Bytes(p.kv_bytes_per_token), p.kv_dtype),
                p.max_context_tokens.to_string(),
                p.requests_per_task.to_string(),
                Bytes(p.worst_case_bytes).to_string(),
                format!(
                    "{}{}",
                    if p.at_least { "≥" } else { "" },
                    p.max_concurrent_alone
                ),
                p.in_mix.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w - cell.chars().count();
            l.push_str(cell);
            l.push_str(&" ".repeat(pad));
        }
        l.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(out);
    for p in &r.profiles {
        match (p.worst_case_bytes_full_attention, p.sliding_window_honoured) {
            (Some(full), Some(true)) => {
                let _ = writeln!(
                    out,
                    "{}: sliding-window model; {} keeps only the window in local layers: \
                     charged {} per task ({} with full attention)",
                    p.name,
                    r.engine.name(),
                    Bytes(p.worst_case_bytes),
                    Bytes(full)
                );
            }
            (Some(_), _) => {
                let _ = writeln!(
                    out,
                    "{}: sliding-window model; {} is not known to keep only the window, so \
                     every layer is charged the full context",
                    p.name,
                    r.engine.name()
                );
            }
            _ => {}
        }
    }
    for n in &r.never_fit {
        let _ = writeln!(out, "never fits: {}: {}", n.name, n.reason);
    }
    let _ = writeln!(out, "engine: {}", r.engine_settings.command);
    for note in &r.engine_settings.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let _ = writeln!(out, "summary: {}", r.summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PlanArgs {
        PlanArgs::default()
    }

    #[test]
    fn sizes_must_be_binary_with_a_unit() {
        assert_eq!(parse_size("--x", "24GiB").unwrap(), 24 * Bytes::GIB);
        assert_eq!(parse_size("--x", "512MiB").unwrap(), 512 * Bytes::MIB);
        assert_eq!(parse_size("--x", "1.5GiB").unwrap(), 3 * Bytes::GIB / 2);
        let e = parse_size("--gpu-memory", "24").unwrap_err().to_string();
        assert!(e.contains("--gpu-memory") && e.contains("24GiB"), "{e}");
        let e = parse_size("--gpu-memory", "24GB").unwrap_err().to_string();
        assert!(e.contains("decimal") && e.contains("24GiB"), "{e}");
        assert!(parse_size("--x", "GiB").is_err());
        assert!(parse_size("--x", "3 parsecs").is_err());
        // One parser: what the config takes, a flag takes.
        assert_eq!(parse_size("--x", "24_000MiB").unwrap(), 24_000 * Bytes::MIB);
    }

    #[test]
    fn ready_profiles_parse_and_name_catalog_models() {
        let profiles = ready_profiles().unwrap();
        assert_eq!(profiles.len(), READY_PROFILES.len());
        for p in &profiles {
            assert!(p.model.is_some(), "{}", p.name);
        }
    }

    #[test]
    fn every_file_in_profiles_parses_and_opens_with_a_comment() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# "),
                "{} opens with a comment",
                path.display()
            );
            let p = parse_profile(&path.display().to_string(), &text).unwrap();
            let m = p.model.unwrap();
            assert!(
                p.max_context <= u64::from(m.max_context),
                "{}",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn given_weight_memory_replaces_the_catalog_estimate() {
        let mut a = args();
        a.engine = Some(Engine::Openai);
        a.gpu_memory = Some("16GiB".into());
        a.kv_bytes_per_token = Some(131_072);
        a.max_context = Some(8_192);
        a.weight_memory = Some("6GiB".into());
        let r = plan(&input_from_args(&a).unwrap());
        assert_eq!(r.weight_bytes, 6 * Bytes::GIB);
        // 0.85 × 16 GiB − 1 GiB − 6 GiB − 4 GiB = 2.6 GiB: two 1 GiB tasks.
        assert_eq!(r.profiles[0].max_concurrent_alone, 2);
    }

    #[test]
    fn llama_8b_on_24gib_llamacpp_fits_three_32k_tasks() {
        let mut a = args();
        a.gpu_memory = Some("24GiB".into());
        a.engine = Some(Engine::Llamacpp);
        a.model = Some("llama-3.1-8b-instruct".into());
        a.max_context = Some(32_768);
        let r = plan(&input_from_args(&a).unwrap());
        let p = &r.profiles[0];
        assert_eq!(p.kv_bytes_per_token, 131_072);
        assert_eq!(p.worst_case_bytes, 4 * Bytes::GIB);
        // 0.85 × 24 GiB − 1 GiB − 4.87 GB of Q4_K_M weights − 1 GiB = 13.9 GiB: 3 × 4 GiB.
        assert_eq!(p.max_concurrent_alone, 3);
        assert_eq!(r.slots, Some(3));
        assert_eq!(r.engine_settings.settings["ctx_size"], 3 * 32_768);
    }

    #[test]
    fn plan_counts_agree_with_the_budget_arithmetic() {
        // Independent check of what decide returned: n × worst case ≤ budget < (n+1) × wc.
        let mut a = args();
        a.gpu_memory = Some("80GiB".into());
        a.engine = Some(Engine::Vllm);
        a.model = Some("qwen2.5-32b-instruct".into());
        a.weights = Some("fp8".into());
        a.max_context = Some(16_384);
        let r = plan(&input_from_args(&a).unwrap());
        let p = &r.profiles[0];
        let n = p.max_concurrent_alone;
        // 0.85 × 80 GiB − 1 GiB − 32.5 GB fp8 weights − 4 GiB = 32.7 GiB: 8 × 4 GiB.
        assert_eq!(n, 8);
        assert!(n * p.worst_case_bytes <= r.kv_budget_bytes);
        assert!((n + 1) * p.worst_case_bytes > r.kv_budget_bytes);
        assert_eq!(p.in_mix, n);
    }

    #[test]
    fn sliding_windows_are_charged_as_the_config_charges_them() {
        let mut a = args();
        a.model = Some("gemma-3-27b".into());
        a.max_context = Some(32_768);
        a.engine = Some(Engine::Vllm);
        let r = plan(&input_from_args(&a).unwrap());
        // ENGINES.md §3: 2.91 GiB with the window honoured, 15.5 GiB treated as full.
        assert_eq!(r.profiles[0].worst_case_bytes, 3_120_562_176);
        assert_eq!(
            r.profiles[0].worst_case_bytes_full_attention,
            Some(507_904 * 32_768)
        );
        a.engine = Some(Engine::Ollama);
        let r = plan(&input_from_args(&a).unwrap());
        assert_eq!(r.profiles[0].worst_case_bytes, 507_904 * 32_768);
        assert_eq!(r.profiles[0].sliding_window_honoured, Some(false));
    }

    #[test]
    fn context_beyond_the_model_never_fits() {
        let mut a = args();
        a.model = Some("qwen2.5-7b".into());
        a.max_context = Some(65_536);
        let r = plan(&input_from_args(&a).unwrap());
        assert_eq!(r.profiles[0].max_concurrent_alone, 0);
        let reason = r.profiles[0].never_fits.as_deref().unwrap();
        assert!(reason.contains("32768"), "{reason}");
    }

    #[test]
    fn worst_case_beyond_the_budget_never_fits_with_the_decide_reason() {
        let mut a = args();
        a.gpu_memory = Some("80GiB".into());
        a.engine = Some(Engine::Vllm);
        a.model = Some("qwen2.5-32b".into());
        a.weights = Some("fp8".into());
        a.max_context = Some(32_768);
        // 5 × 8 GiB = 40 GiB against a 32.7 GiB KV budget.
        a.requests_per_task = Some(5);
        let r = plan(&input_from_args(&a).unwrap());
        let reason = r.profiles[0].never_fits.as_deref().unwrap();
        assert!(reason.contains("exceeds the KV budget"), "{reason}");
        assert!(reason.contains("decide: VramHeadroom"), "{reason}");
        assert_eq!(r.mix_tasks, 0);
        assert_eq!(r.never_fit.len(), 1);
    }

    #[test]
    fn weights_that_fill_the_ceiling_are_named_as_the_reason() {
        let mut a = args();
        a.model = Some("qwen2.5-72b".into());
        a.weights = Some("fp8".into());
        a.max_context = Some(8_192);
        let r = plan(&input_from_args(&a).unwrap());
        assert_eq!(r.kv_budget_bytes, 0);
        let reason = r.profiles[0].never_fits.as_deref().unwrap();
        assert!(reason.contains("alone fill the ceiling"), "{reason}");
    }

    fn llama_profile(name: &str, ctx: u64, rpt: u32) -> PlanProfile {
        let m = catalog::lookup("llama-3.1-8b").unwrap();
        PlanProfile {
            name: name.into(),
            lane: format!("{name}@gpu"),
            model: Some(m),
            kv_dtype: KvDtype::F16,
            kv_bytes_per_token: m.kv_bytes_per_token(KvDtype::F16),
            max_context: ctx,
            requests_per_task: rpt,
            max_parallel: None,
            guaranteed: 0,
            extra_bytes: 0,
            footprint: FootprintMode::Max,
            declared: None,
        }
    }

    #[test]
    fn an_engine_pool_is_planned_in_tokens_as_the_governor_charges_it() {
        // A vLLM pool sized by config: 442,368 KV tokens, headroom 0.85 = 376,012 tokens.
        let input = PlanInput {
            pool: "default".into(),
            gpu_memory: 80 * Bytes::GIB,
            engine: Engine::Vllm,
            headroom: 0.85,
            reserve: Bytes::GIB,
            weights: WeightFormat::Bf16,
            weight_memory: None,
            baseline: Some(72 * Bytes::GIB),
            max_running: None,
            placement: KvPlacement::EnginePool,
            kv_capacity_tokens: Some(442_368),
            overhead_per_model: 4 * Bytes::GIB,
            max_model_len: None,
            slots: None,
            profiles: vec![
                llama_profile("coder", 32_768, 1),
                llama_profile("researcher", 65_536, 2),
                llama_profile("big", 131_072, 3),
            ],
        };
        let r = plan(&input);
        assert_eq!(r.kv_budget_tokens, Some(376_012));
        // 376,012 / 32,768 = 11.5; 376,012 / 131,072 = 2.9.
        assert_eq!(r.profiles[0].max_concurrent_alone, 11);
        assert_eq!(r.profiles[1].max_concurrent_alone, 2);
        let reason = r.profiles[2].never_fits.as_deref().unwrap();
        assert!(reason.contains("KV tokens"), "{reason}");
        // The mix: interleaved coder, researcher, coder, researcher, ... within 376,012.
        let used: u64 = r.profiles[0].in_mix * 32_768 + r.profiles[1].in_mix * 131_072;
        assert!(used <= 376_012);
        assert!(
            used + 32_768 > 376_012,
            "a coder more would still fit: {}",
            r.summary
        );
    }

    #[test]
    fn the_default_plan_mixes_the_ready_profiles() {
        let r = plan(&input_from_args(&args()).unwrap());
        assert_eq!(r.profiles.len(), 3);
        assert!(r.mix_tasks >= 3, "{}", r.summary);
        assert!(r.mix_worst_case_bytes <= r.kv_budget_bytes);
        assert!(r.profiles.iter().all(|p| p.in_mix >= 1), "{}", r.summary);
    }

    #[test]
    fn a_slot_shorter_than_the_request_never_fits() {
        let mut a = args();
        a.engine = Some(Engine::Llamacpp);
        a.gpu_memory = Some("24GiB".into());
        a.model = Some("llama-3.1-8b".into());
        a.max_context = Some(32_768);
        a.ctx_size = Some(32_768);
        a.parallel = Some(4);
        let r = plan(&input_from_args(&a).unwrap());
        let reason = r.profiles[0].never_fits.as_deref().unwrap();
        assert!(reason.contains("slot's context of 8192"), "{reason}");
    }

    mod never_fits_agreement {
        //! Issue 12: `plan` (asking `decide`) and config validation (asking
        //! `governor::admission::feasible`) agree on "this profile can never fit" for random
        //! hosts and profiles (`config::tests::never_fits_agreement` holds validation to
        //! `decide` on engine pools).
        use super::*;
        use crate::config::{ConfigArgs, load_str};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn plan_from_flags_and_validation_of_the_same_host_agree(
                gpu_gib in 4u64..200,
                // What the GPU holds with no task, as a share of it (below it: validation
                // refuses a baseline at or above memory_total, plan does not ask).
                baseline_share in 0.0f64..0.95,
                // Many digits past the sixth: where float and integer headroom part ways.
                headroom in 0.05f64..=1.0,
                reserve_mib in 0u64..4096,
                bpt in 1u64..600_000,
                ctx in 1u64..300_000,
                requests in 1u32..4,
                extra_mib in 0u64..8192,
            ) {
                let gpu = gpu_gib << 30;
                let baseline = (gpu as f64 * baseline_share) as u64;
                let mut a = args();
                a.engine = Some(Engine::Openai);
                a.gpu_memory = Some(format!("{gpu}B"));
                a.headroom = Some(headroom);
                a.reserve = Some(format!("{reserve_mib}MiB"));
                a.weight_memory = Some(format!("{baseline}B"));
                a.overhead = Some("0B".into());
                a.kv_bytes_per_token = Some(bpt);
                a.max_context = Some(ctx);
                a.requests_per_task = Some(requests);
                a.extra_bytes = Some(format!("{extra_mib}MiB"));
                let r = plan(&input_from_args(&a).unwrap());
                prop_assert_eq!(r.baseline_bytes, baseline);
                let plan_says_never = !r.never_fit.is_empty();

                let text = format!(
                    "[hermes]\nhome = \"/t/hh\"\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"{gpu}B\"\nbaseline = \"{baseline}B\"\nheadroom = {headroom:?}\nreserve = \"{reserve_mib}MiB\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"{bpt}B\"\nmax_context_tokens = {ctx}\nrequests_per_task = {requests}\nextra_bytes = \"{extra_mib}MiB\"\n"
                );
                let validated = load_str(
                    &text,
                    std::path::Path::new("/t/governor.toml"),
                    &ConfigArgs::default(),
                    &|_| None,
                );
                let validation_says_never = match &validated {
                    Ok(_) => false,
                    Err(e) => {
                        prop_assert!(
                            e.problems.iter().all(|p| p.detail.contains("never")),
                            "{}: {}", text, e
                        );
                        true
                    }
                };
                prop_assert_eq!(
                    plan_says_never,
                    validation_says_never,
                    "{}plan: {:?}",
                    text,
                    r.never_fit
                );
            }
        }
    }
}
