//! `plan`: capacity planning with no board and no GPU.
//!
//! For a GPU size, an engine and one or more profiles, it says what each task can cost at
//! worst, how many tasks of each profile fit alone, the largest mix that fits, which profiles
//! can never fit and why, and the engine settings that make the plan hold.
//!
//! The counts come from the real decision core: the plan builds a
//! [`Policy`](crate::governor::Policy) and a synthetic
//! [`Observation`](crate::governor::Observation) (a GPU of the given size whose baseline is
//! the weights plus an overhead allowance, and a backlog of waiting tasks of every profile)
//! and asks
//! [`crate::governor::decide`] what it would release. Plan and governor therefore agree by
//! construction; nothing here re-does the admission arithmetic.
//!
//! Three ways to give the profiles:
//! - flags alone (`--model` or `--kv-bytes-per-token`, `--max-context`, ...): one profile;
//! - the repository's ready profiles (`profiles/*.toml`, embedded in the binary) when no
//!   profile flag is given; `--gpu-memory`, `--engine`, ... still apply;
//! - `--config F`: every pool of a governor config, as that governor would charge it.
//!
//! # Layout
//!
//! - `flags`: the command's flags.
//! - `profiles`: the repository's ready profiles, read through the config's two stages.
//! - `input`: flags or a governor config into what is planned (`PlanInput`).
//! - `compute`: the plan itself: the synthetic policy and backlogs `decide` is asked about,
//!   and the report built from its answers.
//! - `engine_settings`: the engine settings that make the plan hold.
//! - `render`: the report as text.
//!
//! This file holds the nouns the rooms share: the planned profile and input, the report.

mod compute;
mod engine_settings;
mod flags;
mod input;
mod profiles;
mod render;
#[cfg(test)]
mod tests;

pub use flags::{PlanArgs, PlanFlags};

use crate::catalog::{KvDtype, ModelSpec, WeightFormat};
use crate::config::ProfileConfig;
use crate::error::UsageError;
use crate::governor::{
    Bytes, FootprintMode, Headroom, KvPlacement, ProfileId, ProfilePolicy, WorstCase,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

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
    /// A validated profile as planned, charged what its config charges it.
    fn from_config(p: &ProfileConfig) -> PlanProfile {
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
    }

    fn worst_case(&self) -> WorstCase {
        if let Some(wc) = self.declared {
            return wc;
        }
        WorstCase::of_requests(
            Bytes(self.kv_bytes_per_token.saturating_mul(self.max_context)),
            self.kv_bytes_per_token,
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
    headroom: Headroom,
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
    headroom: Headroom,
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
    let inputs = input::inputs_from_args(&args)?;
    let reports: Vec<PlanReport> = inputs.iter().map(compute::plan).collect();
    if args.json {
        // One pool: its report. Several (a multi-pool config): {"pools": [...]}.
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(&serde_json::json!({ "pools": many }))?,
        };
        println!("{json}");
    } else {
        let text: Vec<String> = reports.iter().map(render::render).collect();
        print!("{}", text.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
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
