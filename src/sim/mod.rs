//! The simulator: a deterministic (seeded) discrete-event model of a GPU host (one per pool
//! of the config, each with its own engine: `--scenario two-gpus`), its inference engine and
//! a Hermes board, on which dispatch strategies are compared on the same
//! workload (DESIGN §8). Pure: no clock, files or environment; the CLI (`app::simulate`)
//! reads files and prints.
//!
//! The host comes from a governor config (the embedded default, `--config`, or one built from
//! `--gpu-memory/--engine/--model`): its GPU size and baseline, its engine (vLLM/SGLang: paged
//! KV pool of `kv_capacity_tokens`; llama.cpp: slots; Ollama: per-request allocation with CPU
//! offload; a generic OpenAI server: per-request allocation with OOM), and the model's shape
//! from the catalog for timing. The governor row calls `governor::decide` with the same
//! config's `policy()`, exactly as `run` and `tick` do.

pub mod engine;
pub mod peers;
pub mod plot;
pub mod report;
pub mod rng;
pub mod run;
pub mod workload;

use crate::catalog::{self, WeightFormat};
use crate::config::{
    self, Config, DEFAULT_HEADROOM, DEFAULT_MAX_STALENESS, DEFAULT_POOL, DEFAULT_RESERVE,
    EngineConfig, EngineKind, GpuConfig, GpuSelector, PoolConfig, ProfileConfig, Source, Telemetry,
    VLLM_DEFAULT_UTILIZATION,
};
use crate::governor::admission::{self, KnownGpu, apply_headroom, longest_feasible};
use crate::governor::limit::AimdConfig;
use crate::governor::{Bytes, FootprintMode, KvPlacement, Millis, Policy, ProfileId};
use engine::{Hardware, Regime, Speed};
use peers::HostMemory;
use run::{Host, Outcome, Params, Run, Strategy};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use workload::{ProfileShape, TaskSpec};

const GIB: u64 = 1 << 30;

/// Why a simulation cannot be set up: names the setting and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// The host and policy a config describes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The simulated host.
    pub host: Host,
    /// The governor's policy (the config's).
    pub policy: Policy,
    /// Profiles as the workload sees them.
    pub profiles: Vec<ProfileShape>,
    /// The governor's ceiling on the pool, for plots: GPU bytes (per-request engines) or KV
    /// tokens (engine pools).
    pub ceiling: Ceiling,
    /// The config's other pools (its second GPU and on), each with its own engine: empty for
    /// a one-pool config.
    pub more_pools: Vec<PoolSetup>,
    /// Each profile's pool (same order as `profiles`): 0 is `host`, k is `more_pools[k - 1]`.
    pub pool_of_profile: Vec<usize>,
    /// The config's `[latency]`, for the governor's latency limit where it runs one
    /// ([`run::Params::latency`]).
    pub latency: AimdConfig,
}

/// A pool of a config beyond its first: its GPU and engine, and the governor's ceiling there.
#[derive(Debug, Clone)]
pub struct PoolSetup {
    /// The pool's name in the config.
    pub name: String,
    /// Its GPU and engine.
    pub host: Host,
    /// The governor's ceiling on it.
    pub ceiling: Ceiling,
}

impl Setup {
    /// Every pool's host, the first pool's first.
    pub fn hosts(&self) -> Vec<Host> {
        std::iter::once(self.host.clone())
            .chain(self.more_pools.iter().map(|p| p.host.clone()))
            .collect()
    }

    /// Every pool's ceiling, the first pool's first.
    pub fn ceilings(&self) -> Vec<Ceiling> {
        std::iter::once(self.ceiling)
            .chain(self.more_pools.iter().map(|p| p.ceiling))
            .collect()
    }

    /// What the table and plots compare the rows' memory with: the pools' KV tokens, the
    /// governor's ceilings and the GPUs' memory, each summed over the pools (one pool: its
    /// own). Ceilings of different kinds do not add up: then the first pool's.
    pub fn report_context(&self, horizon_s: f64) -> report::Context {
        let hosts = self.hosts();
        let kv_pool_tokens = hosts
            .iter()
            .map(|h| h.regime.kv_pool_tokens())
            .sum::<Option<u64>>();
        let ceiling = self
            .ceilings()
            .into_iter()
            .skip(1)
            .try_fold(self.ceiling, |sum, c| match (sum, c) {
                (Ceiling::Bytes(a), Ceiling::Bytes(b)) => Some(Ceiling::Bytes(a + b)),
                (Ceiling::KvTokens(a), Ceiling::KvTokens(b)) => Some(Ceiling::KvTokens(a + b)),
                (Ceiling::Slots(a), Ceiling::Slots(b)) => Some(Ceiling::Slots(a + b)),
                _ => None,
            })
            .unwrap_or(self.ceiling);
        report::Context {
            kv_pool_tokens,
            ceiling,
            gpu_total_bytes: hosts.iter().map(|h| h.total).sum(),
            horizon_s,
        }
    }
}

/// The governor's ceiling, as plots draw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ceiling {
    /// `headroom × total − reserve` GPU bytes.
    Bytes(u64),
    /// `headroom × kv_capacity_tokens` KV tokens.
    KvTokens(u64),
    /// Slots.
    Slots(u64),
}

fn weights_of(kind: EngineKind) -> WeightFormat {
    match kind {
        EngineKind::Vllm | EngineKind::Sglang | EngineKind::Openai => WeightFormat::Bf16,
        EngineKind::Llamacpp | EngineKind::Ollama => WeightFormat::Q4KM,
    }
}

/// The host and policy of pool 0 of `cfg`.
///
/// # Errors
///
/// The config's first pool has no `gpu.memory_total`, no model the catalog knows, or an
/// engine pool without `kv_capacity_tokens`.
pub fn setup(cfg: &Config) -> Result<Setup, SetupError> {
    setup_measured(cfg, None)
}

/// [`setup`], with the memory total and baseline a live telemetry source (`telemetry =
/// "host"`, `"nvml"`) would measure given as `measured` (the config cannot carry them there).
///
/// # Errors
///
/// As [`setup`].
pub fn setup_measured(cfg: &Config, measured: Option<(u64, u64)>) -> Result<Setup, SetupError> {
    if cfg.pools.is_empty() {
        return Err(SetupError("the config has no pool".into()));
    }
    let policy = cfg.policy();
    let (host, ceiling) = pool_host(cfg, &policy, 0, measured)?;
    let mut more_pools = Vec::new();
    for (k, pool) in cfg.pools.iter().enumerate().skip(1) {
        let (host, ceiling) = pool_host(cfg, &policy, k, None)?;
        more_pools.push(PoolSetup {
            name: pool.name.clone(),
            host,
            ceiling,
        });
    }
    let pool_of_profile: Vec<usize> = policy.profiles.iter().map(|p| p.pool).collect();
    // A profile is interactive if it is guaranteed room or has the smallest context (of all
    // profiles, whichever pool: the same workload whether the profiles share a GPU or not).
    let min_ctx = cfg
        .profiles
        .iter()
        .map(|p| p.max_context_tokens)
        .min()
        .unwrap_or(0);
    let profiles = cfg
        .profiles
        .iter()
        .map(|p| ProfileShape {
            name: p.name.to_string(),
            max_context: p.max_context_tokens,
            streams: p.requests_per_task,
            interactive: p.guaranteed > 0 || p.max_context_tokens == min_ctx,
        })
        .collect();
    Ok(Setup {
        host,
        policy,
        profiles,
        ceiling,
        more_pools,
        pool_of_profile,
        latency: AimdConfig {
            slo: Millis::from_duration(cfg.latency.ttft_slo),
            min: cfg.latency.min_limit,
            max: cfg.latency.max_limit,
            backoff: cfg.latency.backoff,
            dwell: Millis::from_duration(cfg.latency.dwell),
        },
    })
}

/// The host of pool `k` of `cfg` (with `measured` total and baseline, if given) and the
/// governor's ceiling there.
fn pool_host(
    cfg: &Config,
    policy: &Policy,
    k: usize,
    measured: Option<(u64, u64)>,
) -> Result<(Host, Ceiling), SetupError> {
    let pool = &cfg.pools[k];
    let total = measured
        .map(|(t, _)| t)
        .or(pool.gpu.memory_total.map(|b| b.get()))
        .ok_or_else(|| {
            SetupError(format!(
                "pool {}: the simulator needs gpu.memory_total (its telemetry is live); set memory_total or pass --gpu-memory",
                pool.name
            ))
        })?;
    let profiles_of_pool: Vec<_> = cfg
        .profiles
        .iter()
        .filter(|p| p.pool == pool.name)
        .collect();
    if profiles_of_pool.is_empty() {
        return Err(SetupError(format!(
            "pool {}: no profile to simulate; add [[profiles]]",
            pool.name
        )));
    }
    let model_name = pool
        .engine
        .model
        .clone()
        .or_else(|| profiles_of_pool.iter().find_map(|p| p.model.clone()))
        .ok_or_else(|| {
            SetupError(
                "the simulator times the engine from the model's shape: set engine.model (or a profile's model) to a catalog model, e.g. \"llama-3.1-8b\"".into(),
            )
        })?;
    let spec = catalog::lookup(&model_name).map_err(|e| SetupError(format!("model: {e}")))?;
    let p0 = profiles_of_pool[0];
    let kvbpt = p0
        .kv_bytes_per_token
        .unwrap_or_else(|| spec.kv_bytes_per_token(p0.kv_dtype));
    let weight_bytes = spec.weight_bytes(weights_of(pool.engine.kind));
    let max_ctx = profiles_of_pool
        .iter()
        .map(|p| p.max_context_tokens)
        .max()
        .unwrap_or(8192);
    let regime = match pool.engine.kind {
        EngineKind::Vllm | EngineKind::Sglang => Regime::Paged {
            capacity_tokens: pool.engine.kv_capacity_tokens.ok_or_else(|| {
                SetupError(format!(
                    "pool {}: a {} pool needs engine.kv_capacity_tokens to be simulated",
                    pool.name, pool.engine.kind
                ))
            })?,
            block_tokens: 16,
            max_seqs: 256,
        },
        EngineKind::Llamacpp => Regime::Slots {
            slots: pool.engine.slots.unwrap_or(4) as usize,
            slot_ctx: pool.engine.slot_context_tokens.unwrap_or(max_ctx),
        },
        EngineKind::Ollama => Regime::PerRequest { offload: true },
        EngineKind::Openai => Regime::PerRequest { offload: false },
    };
    let baseline = measured
        .map(|(_, b)| b)
        .or(pool.gpu.baseline.map(|b| b.get()))
        .unwrap_or(match regime {
            Regime::Paged { .. } => (total as f64 * VLLM_DEFAULT_UTILIZATION) as u64,
            Regime::Slots { slots, slot_ctx } => {
                weight_bytes + slots as u64 * slot_ctx * kvbpt + GIB
            }
            Regime::PerRequest { .. } => weight_bytes + GIB,
        });
    let pp = &policy.pools[k];
    let ceiling = match (pp.kv_placement, regime) {
        (KvPlacement::EnginePool, Regime::Slots { slots, .. }) => Ceiling::Slots(slots as u64),
        (
            KvPlacement::EnginePool,
            Regime::Paged {
                capacity_tokens, ..
            },
        ) => Ceiling::KvTokens(apply_headroom(capacity_tokens, pp.headroom)),
        _ => Ceiling::Bytes(apply_headroom(total, pp.headroom).saturating_sub(pp.reserve.get())),
    };
    Ok((
        Host {
            total,
            baseline,
            kv_bytes_per_token: kvbpt,
            regime,
            speed: Speed::roofline(
                weight_bytes,
                kvbpt,
                spec.params,
                Hardware::for_memory(total),
            ),
            neighbour: Vec::new(),
            memory: HostMemory::discrete(total),
            outside: None,
        },
        ceiling,
    ))
}

/// A governor config for a GPU, engine and model given as flags: the embedded default's three
/// profiles (coder 32k, researcher 2 × 64k, triage 8k) on that host, with the engine sized as
/// its defaults would size it (vLLM/SGLang: 90 % of the GPU minus weights and 3 GiB of
/// activations as KV pool; llama.cpp: 32k-token slots in 90 % of the GPU; Ollama/OpenAI:
/// KV allocated per request), each profile's context capped at what the engine can hold
/// ([`crate::governor::admission::feasible`], the rule config validation applies).
///
/// # Errors
///
/// The model is not in the catalog, or its weights leave no room for KV.
pub fn host_config(gpu_bytes: u64, kind: EngineKind, model: &str) -> Result<Config, SetupError> {
    checked(build_host_config(
        gpu_bytes,
        kind,
        model,
        VLLM_DEFAULT_UTILIZATION,
        false,
    )?)
}

/// `cfg` as config validation sees it: a built host passes the checks a written one does.
fn checked(cfg: Config) -> Result<Config, SetupError> {
    config::validated(&cfg, std::path::Path::new("/<simulate flags>/governor.toml")).map_err(|e| {
        SetupError(format!(
            "--gpu-memory/--engine/--model make no valid host: {e}; try another combination or write a config"
        ))
    })
}

/// The `two-gpus` scenario's host (hermes-agent #111188) as a config: [`host_config`]'s GPU,
/// engine and profiles twice over, as pools `gpu0` (device 0) and `gpu1` (device 1), each
/// with its own engine; coder and triage pinned to `gpu0`, researcher to `gpu1`.
///
/// # Errors
///
/// As [`host_config`].
pub fn two_gpus_config(
    gpu_bytes: u64,
    kind: EngineKind,
    model: &str,
) -> Result<Config, SetupError> {
    let mut cfg = build_host_config(gpu_bytes, kind, model, VLLM_DEFAULT_UTILIZATION, false)?;
    let mut second = cfg.pools[0].clone();
    cfg.pools[0].name = "gpu0".to_owned();
    second.name = "gpu1".to_owned();
    second.gpu.devices = vec![GpuSelector::Index(1)];
    cfg.pools.push(second);
    for p in &mut cfg.profiles {
        let pool = if p.name.as_str() == "researcher" {
            "gpu1"
        } else {
            "gpu0"
        };
        p.pool = pool.to_owned();
        p.lane = format!("{}@{pool}", p.name);
    }
    checked(cfg)
}

/// The `outside-client` scenario's memory service (vectorize-io/hindsight #1721: 32
/// connections to a 3-slot llama-server). Its calls' sizes and pace are assumptions: a 2k-token
/// prompt (memories and the text to file), 200 tokens out, a second between a connection's
/// calls.
pub const OUTSIDE_CLIENT: run::OutsideClient = run::OutsideClient {
    connections: 32,
    prompt: 2000,
    output: 200,
    think_s: 1.0,
};

/// The GPU of the `unified-memory` scenario: GB10-like, 128 GiB shared by CPU and GPU.
pub const UNIFIED_MEMORY_BYTES: u64 = 128 * GIB;
/// vLLM's `--gpu-memory-utilization` there (hermes-agent #90713).
pub const UNIFIED_VLLM_UTILIZATION: f64 = 0.87;
/// What the OS and everything but vLLM use there with no worker, as a share of memory:
/// chosen so that `MemAvailable` idles at 4 %, as #90713 reports (1 − 0.87 − 0.09).
pub const UNIFIED_OS_SHARE: f64 = 0.09;

/// The `unified-memory` scenario's host as a config: [`host_config`]'s profiles on a GB10-like
/// 128 GiB unified memory, vLLM at 0.87 of it, `telemetry = "host"` (so no `memory_total`:
/// the telemetry measures it; pass [`unified_measured`] to [`setup_measured`]).
///
/// # Errors
///
/// As [`host_config`].
pub fn unified_config() -> Result<Config, SetupError> {
    checked(build_host_config(
        UNIFIED_MEMORY_BYTES,
        EngineKind::Vllm,
        "llama-3.1-8b",
        UNIFIED_VLLM_UTILIZATION,
        true,
    )?)
}

/// What host telemetry measures on the `unified-memory` host with no request: its total, and
/// vLLM's reservation plus the OS as used.
pub fn unified_measured() -> (u64, u64) {
    let t = UNIFIED_MEMORY_BYTES as f64;
    (
        UNIFIED_MEMORY_BYTES,
        (t * (UNIFIED_VLLM_UTILIZATION + UNIFIED_OS_SHARE)) as u64,
    )
}

/// Make `setup`'s host a unified-memory one: the GPU's memory is the host's, and what the
/// host uses idle is the GPU baseline (the engine's reservation and the OS).
pub fn make_unified(setup: &mut Setup) {
    let h = &mut setup.host;
    h.memory = HostMemory {
        total: h.total,
        idle_used: h.baseline,
        worker_rss: peers::WORKER_RSS_BYTES,
        unified: true,
    };
}

/// Llama-3.1-8B (bf16) on a GB10: 273 GB/s (NVIDIA's DGX Spark data sheet) at 80 %, and
/// 125 TFLOP/s bf16 dense, taken as an eighth of the sheet's 1 PFLOP FP4 sparse (an
/// assumption), at 40 %.
///
/// # Errors
///
/// The catalog lost the model.
pub fn gb10_speed(kv_bytes_per_token: u64) -> Result<Speed, SetupError> {
    let spec = catalog::lookup("llama-3.1-8b").map_err(|e| SetupError(format!("model: {e}")))?;
    Ok(Speed::roofline(
        spec.weight_bytes(WeightFormat::Bf16),
        kv_bytes_per_token,
        spec.params,
        Hardware {
            bandwidth: 273e9 * 0.8,
            flops: 125e12 * 0.4,
        },
    ))
}

fn build_host_config(
    gpu_bytes: u64,
    kind: EngineKind,
    model: &str,
    utilization: f64,
    host_telemetry: bool,
) -> Result<Config, SetupError> {
    let spec = catalog::lookup(model).map_err(|e| SetupError(format!("--model: {e}")))?;
    let kv_dtype = catalog::KvDtype::default();
    let kvbpt = spec.kv_bytes_per_token(kv_dtype);
    let weights = spec.weight_bytes(weights_of(kind));
    let usable = (gpu_bytes as f64 * utilization) as u64;
    let room = usable.saturating_sub(weights + 3 * GIB);
    if room < 4096 * kvbpt {
        return Err(SetupError(format!(
            "--model {model}: its {:.1} GiB of weights leave no room for KV cache on a {:.0} GiB GPU; give a larger --gpu-memory or a smaller model",
            weights as f64 / GIB as f64,
            gpu_bytes as f64 / GIB as f64
        )));
    }
    let model_max = u64::from(spec.max_context);
    let mut ctx_cap = model_max;
    let mut engine = EngineConfig {
        kind,
        url: kind.default_url().unwrap_or_default().to_owned(),
        model: Some(spec.name.to_owned()),
        kv_capacity_tokens: None,
        slots: None,
        slot_context_tokens: None,
        max_staleness: DEFAULT_MAX_STALENESS,
    };
    let mut baseline = weights + GIB;
    let mut slots = u64::MAX;
    match kind {
        EngineKind::Vllm | EngineKind::Sglang => {
            engine.kv_capacity_tokens = Some(room / kvbpt);
            baseline = usable;
        }
        EngineKind::Llamacpp => {
            let slot_ctx = 32768.min(model_max);
            slots = (room / (slot_ctx * kvbpt)).clamp(1, 16);
            // `clamp(1, 16)`: always a u32.
            engine.slots = Some(u32::try_from(slots).unwrap_or(16));
            engine.slot_context_tokens = Some(slot_ctx);
            ctx_cap = slot_ctx;
            baseline = weights + GIB + slots * slot_ctx * kvbpt;
        }
        EngineKind::Ollama | EngineKind::Openai => {
            engine.url = "http://127.0.0.1:11434".to_owned();
        }
    }
    let gpu = GpuConfig {
        devices: vec![GpuSelector::Index(0)],
        telemetry: if host_telemetry {
            Telemetry::Host
        } else {
            Telemetry::Static
        },
        memory_total: (!host_telemetry).then_some(Bytes(gpu_bytes)),
        baseline: (!host_telemetry).then_some(Bytes(baseline)),
        headroom: DEFAULT_HEADROOM,
        reserve: DEFAULT_RESERVE,
    };
    let pool = PoolConfig {
        name: DEFAULT_POOL.to_owned(),
        gpu,
        engine,
    };
    // Each profile's context: the longest, up to what it asks, that one of its tasks can
    // ever fit in (the rule validation applies), in steps of 256 tokens.
    let pool_policy = pool.policy();
    let known_gpu = pool.gpu.memory_total.map(|total| KnownGpu {
        total,
        baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
    });
    let worst_case = |tokens: u64, requests: u32| {
        config::worst_case_on(kind, Some(spec), 0, kv_dtype, tokens, requests, Bytes(0))
    };
    let profile = |name: &str, wanted: u64, requests: u32, max_parallel, guaranteed| {
        let ctx = longest_feasible(wanted.min(ctx_cap), |t| {
            admission::feasible(&pool_policy, known_gpu, &worst_case(t, requests)).is_ok()
        }) / 256
            * 256;
        if ctx == 0 {
            return Err(SetupError(format!(
                "--model {model}: profile {name} cannot fit 256 tokens of context on a {:.0} GiB {kind} host; give a larger --gpu-memory or a smaller model",
                gpu_bytes as f64 / GIB as f64
            )));
        }
        Ok(ProfileConfig {
            name: ProfileId::from(name),
            lane: format!("{name}@gpu"),
            model: Some(spec.name.to_owned()),
            kv_bytes_per_token: None,
            kv_dtype,
            max_context_tokens: ctx,
            requests_per_task: requests,
            max_parallel,
            guaranteed,
            extra_bytes: Bytes(0),
            footprint: FootprintMode::Max,
            pool: DEFAULT_POOL.to_owned(),
            declared: worst_case(ctx, requests),
            source: Source::Default,
        })
    };
    let researcher_rpt = if slots >= 2 { 2 } else { 1 };
    let profiles = vec![
        profile("coder", 32768, 1, Some(8), 0)?,
        profile("researcher", 65536, researcher_rpt, Some(2), 0)?,
        profile("triage", 8192, 1, None, if slots >= 3 { 2 } else { 0 })?,
    ];
    // The rest (Hermes home, dispatch interval 5s, max_wait 10m, state dir) as the embedded
    // default has it.
    Ok(Config {
        path: None,
        pools: vec![pool],
        profiles,
        sources: Default::default(),
        ..config::embedded_default()
    })
}

/// Which rows to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyName {
    /// The gateway dispatcher with no cap.
    Unbounded,
    /// `--max N` with its old per-tick meaning.
    PerTick,
    /// A live cap of N (Hermes `--max` today).
    LiveCap,
    /// A live cap per profile, the pool's budget split evenly.
    Pools,
    /// The governor.
    Governor,
    /// The governor with every profile charged its declared worst case (`footprint = "declared"`).
    GovernorDeclared,
    /// Hermes ≥ 0.20's host-memory guard over unbounded dispatch, and over the per-profile
    /// caps of `hermes-caps` when that row is computed too.
    HermesGuard,
    /// Hermes's `max_in_progress_per_profile`, the best caps of a sweep in hindsight.
    HermesCaps,
    /// llm-d's flow control (saturation gate on each call) over unbounded dispatch.
    Llmd,
    /// vLLM's KV watermark (0.05) over unbounded dispatch.
    VllmWatermark,
    /// Best static cap in hindsight, and clairvoyant admission.
    Oracle,
}

/// Every row, in the order the table prints them.
pub const ALL_STRATEGIES: [StrategyName; 11] = [
    StrategyName::Unbounded,
    StrategyName::PerTick,
    StrategyName::LiveCap,
    StrategyName::Pools,
    StrategyName::Governor,
    StrategyName::GovernorDeclared,
    StrategyName::HermesGuard,
    StrategyName::HermesCaps,
    StrategyName::Llmd,
    StrategyName::VllmWatermark,
    StrategyName::Oracle,
];

/// Everything one `simulate` call needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Host, policy, profiles.
    pub setup: Setup,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
    /// Run settings.
    pub params: Params,
    /// Rows.
    pub strategies: Vec<StrategyName>,
    /// N of `--max N` and the live cap.
    pub cap: u32,
}

/// Per-profile caps splitting each pool evenly by worst case among the profiles pinned to it.
pub fn pool_caps(setup: &Setup) -> Vec<u32> {
    let hosts = setup.hosts();
    let ceilings = setup.ceilings();
    let pool_of = |i: usize| setup.pool_of_profile.get(i).copied().unwrap_or(0);
    setup
        .policy
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let k = pool_of(i);
            let n = (0..setup.policy.profiles.len())
                .filter(|&j| pool_of(j) == k)
                .count()
                .max(1) as f64;
            let share = match ceilings[k] {
                Ceiling::KvTokens(t) => t as f64 / n / p.declared.kv_tokens.max(1) as f64,
                Ceiling::Slots(s) => s as f64 / n / f64::from(p.declared.slots.max(1)),
                Ceiling::Bytes(b) => {
                    b.saturating_sub(hosts[k].baseline) as f64
                        / n
                        / p.declared.total_bytes().get().max(1) as f64
                }
            };
            (share.floor() as u32).max(1)
        })
        .collect()
}

/// The caps the hindsight sweep tries.
pub const SWEEP: [u32; 14] = [1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64];

/// The scale factors of the per-profile caps sweep: the even split ([`pool_caps`]) times k.
/// A one-parameter family, like the static-cap sweep, not a search over every combination.
pub const CAPS_SCALE: [f64; 6] = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0];

/// The per-profile caps the `hermes-caps` sweep tries (distinct, in [`CAPS_SCALE`] order).
pub fn caps_sweep(setup: &Setup) -> Vec<Vec<u32>> {
    let even = pool_caps(setup);
    let mut out: Vec<Vec<u32>> = Vec::new();
    for k in CAPS_SCALE {
        let caps: Vec<u32> = even
            .iter()
            .map(|&c| ((f64::from(c) * k).round() as u32).max(1))
            .collect();
        if !out.contains(&caps) {
            out.push(caps);
        }
    }
    out
}

/// The concrete strategies a plan runs directly, in row order (the sweeps, the rows chosen
/// from them and the guard over the chosen caps come on top).
pub fn strategies(plan: &Plan) -> Vec<Strategy> {
    let mut out = Vec::new();
    for s in &plan.strategies {
        match s {
            StrategyName::Unbounded => out.push(Strategy::Unbounded),
            StrategyName::PerTick => out.push(Strategy::PerTick(plan.cap)),
            StrategyName::LiveCap => out.push(Strategy::LiveCap(plan.cap)),
            StrategyName::Pools => out.push(Strategy::ProfilePools(pool_caps(&plan.setup))),
            StrategyName::Governor => out.push(Strategy::Governor),
            StrategyName::GovernorDeclared => out.push(Strategy::GovernorDeclared),
            StrategyName::HermesGuard => out.push(Strategy::HermesGuard(None)),
            StrategyName::HermesCaps => {}
            StrategyName::Llmd => out.push(Strategy::LlmdFlowControl),
            StrategyName::VllmWatermark => {
                out.push(Strategy::VllmWatermark(peers::VLLM_WATERMARK));
            }
            StrategyName::Oracle => out.push(Strategy::Clairvoyant),
        }
    }
    out
}

/// How many runs [`simulate`] makes (for a progress bar).
pub fn run_count(plan: &Plan) -> usize {
    let has = |n| plan.strategies.contains(&n);
    let oracle = has(StrategyName::Oracle);
    let caps = has(StrategyName::HermesCaps);
    let reference = (oracle || caps) && !has(StrategyName::Unbounded);
    strategies(plan).len()
        + if oracle { SWEEP.len() } else { 0 }
        + if caps {
            caps_sweep(&plan.setup).len()
        } else {
            0
        }
        + usize::from(caps && has(StrategyName::HermesGuard))
        + usize::from(reference)
}

/// Simulated seconds all of [`simulate`]'s runs cover together (each runs to the horizon, or is
/// counted up to it when its work is done early): what its progress reaches at the end.
pub fn simulated_seconds(plan: &Plan) -> f64 {
    (run_count(plan) as u64 * plan.params.horizon_ms()) as f64 / 1000.0
}

/// Run one strategy.
pub fn run_one(plan: &Plan, s: &Strategy) -> Outcome {
    run_one_reporting(plan, s, &AtomicU64::new(0))
}

fn run_one_reporting(plan: &Plan, s: &Strategy, done_ms: &AtomicU64) -> Outcome {
    let hosts = plan.setup.hosts();
    Run::new(
        &plan.tasks,
        &hosts,
        &plan.setup.pool_of_profile,
        &plan.params,
        &plan.setup.policy,
        s,
    )
    .run_reporting(done_ms)
}

/// Whether a run meets the bar the governor is held to: no OOM or CPU offload, under 2 % of
/// calls timed out, and at most a tenth of the preemptions of unbounded dispatch.
pub fn feasible(o: &Outcome, unbounded_preemptions: u64) -> bool {
    o.ooms == 0
        && o.offloads == 0
        && o.timeout_rate() < 0.02
        && o.preemptions.saturating_mul(10) <= unbounded_preemptions
}

/// How hindsight ranks runs: most tasks done, then fewest timeouts, then shortest makespan
/// (ties: the earlier in the sweep, the lower cap).
fn hindsight_key(o: &Outcome) -> (usize, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>) {
    (
        o.completed,
        std::cmp::Reverse(o.timeouts),
        std::cmp::Reverse(o.makespan.map_or(u64::MAX, |m| (m * 1000.0) as u64)),
    )
}

/// Every row of the plan; `progress(seconds)` now and then with the simulated seconds the runs
/// have covered so far, summed over runs (it ends at [`simulated_seconds`]). Of the hindsight sweep, the best
/// cap (most tasks done, then fewest timeouts, then shortest makespan, then lowest cap)
/// becomes the row "oracle: best static cap N", and the best cap that is [`feasible`] the row
/// "oracle: best feasible static cap N" (unbounded dispatch is run for its preemptions when
/// it is not a row). Of the per-profile caps sweep ([`caps_sweep`]), the best feasible caps
/// (or, if none is, the best, and the row says so) become the row "Hermes per-profile caps",
/// and Hermes's guard runs once more over them. The runs are independent, so they share the
/// machine's cores; each is deterministic, and the rows come in plan order whichever finishes
/// first (the two best-static-cap rows last).
pub fn simulate(plan: &Plan, progress: &mut dyn FnMut(f64)) -> Vec<Outcome> {
    let done_ms = AtomicU64::new(0);
    let has = |n| plan.strategies.contains(&n);
    let oracle = has(StrategyName::Oracle);
    let caps_row = has(StrategyName::HermesCaps);
    let mut jobs = strategies(plan);
    let rows_n = jobs.len();
    let mut unbounded_at = jobs.iter().position(|s| *s == Strategy::Unbounded);
    if (oracle || caps_row) && unbounded_at.is_none() {
        unbounded_at = Some(jobs.len());
        jobs.push(Strategy::Unbounded);
    }
    let sweep_at = jobs.len();
    if oracle {
        jobs.extend(SWEEP.iter().map(|&n| Strategy::LiveCap(n)));
    }
    let caps_at = jobs.len();
    let caps_tried = if caps_row {
        caps_sweep(&plan.setup)
    } else {
        Vec::new()
    };
    jobs.extend(caps_tried.iter().cloned().map(Strategy::HermesProfileCaps));
    let mut outcomes = run_all(plan, &jobs, &done_ms, progress);
    let caps_runs = outcomes.split_off(caps_at);
    let sweep = outcomes.split_off(sweep_at);
    let unbounded = unbounded_at
        .and_then(|i| outcomes.get(i))
        .map_or(0, |o| o.preemptions);
    outcomes.truncate(rows_n);

    // The Hermes rows chosen in hindsight, and the guard over those caps.
    let mut hermes_rows = Vec::new();
    if caps_row {
        let pick = |feasible_only: bool| {
            caps_tried
                .iter()
                .zip(&caps_runs)
                .filter(|(_, o)| !feasible_only || feasible(o, unbounded))
                .fold(None::<(&Vec<u32>, &Outcome)>, |best, (c, o)| match best {
                    Some((_, b)) if hindsight_key(o) <= hindsight_key(b) => best,
                    _ => Some((c, o)),
                })
        };
        // `caps_sweep` tries every scale of a non-empty list, so there is always a run; were
        // there none, the row would be missing, not wrong.
        let chosen = pick(true)
            .map(|p| (p, "best feasible of sweep"))
            .or_else(|| pick(false).map(|p| (p, "best of sweep, none feasible")));
        if let Some(((caps, o), note)) = chosen {
            hermes_rows.push(Outcome {
                strategy: format!(
                    "{} ({note})",
                    Strategy::HermesProfileCaps(caps.clone()).label()
                ),
                ..o.clone()
            });
            if has(StrategyName::HermesGuard) {
                let guard = [Strategy::HermesGuard(Some(caps.clone()))];
                hermes_rows.extend(run_all(plan, &guard, &done_ms, progress));
            }
        }
    }

    // Rows in plan order: the direct ones, the Hermes rows where `hermes-caps` stands.
    let mut direct = outcomes.into_iter();
    let mut rows = Vec::new();
    for s in &plan.strategies {
        if *s == StrategyName::HermesCaps {
            rows.append(&mut hermes_rows);
        } else {
            rows.extend(direct.next());
        }
    }
    if oracle {
        let mut best: Option<Outcome> = None;
        let mut best_feasible: Option<Outcome> = None;
        for (n, o) in SWEEP.into_iter().zip(sweep) {
            if feasible(&o, unbounded)
                && best_feasible
                    .as_ref()
                    .is_none_or(|b| hindsight_key(&o) > hindsight_key(b))
            {
                best_feasible = Some(Outcome {
                    strategy: format!("oracle: best feasible static cap {n}"),
                    ..o.clone()
                });
            }
            if best
                .as_ref()
                .is_none_or(|b| hindsight_key(&o) > hindsight_key(b))
            {
                best = Some(Outcome {
                    strategy: format!("oracle: best static cap {n}"),
                    ..o
                });
            }
        }
        rows.extend(best_feasible);
        rows.extend(best);
    }
    rows
}

/// Run `jobs` on as many threads as the machine has cores; outcomes in job order. The runs add
/// their simulated milliseconds to `done_ms`; `progress` hears the sum every
/// [`PROGRESS_POLL`] and after each run.
fn run_all(
    plan: &Plan,
    jobs: &[Strategy],
    done_ms: &AtomicU64,
    progress: &mut dyn FnMut(f64),
) -> Vec<Outcome> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Outcome>> = vec![None; jobs.len()];
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if tx.send((i, run_one_reporting(plan, job, done_ms))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let seconds = || done_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        loop {
            match rx.recv_timeout(PROGRESS_POLL) {
                Ok((i, o)) => out[i] = Some(o),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            progress(seconds());
        }
    });
    out.into_iter().flatten().collect()
}

/// How often a progress bar hears how far the runs are (wall time; the runs never wait on it).
const PROGRESS_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Another tenant that grabs `fraction` of the GPU for five minutes every fifteen.
pub fn noisy_neighbour(host: &mut Host, fraction: f64, horizon: f64) {
    let bytes = (host.total as f64 * fraction) as u64;
    let mut t = 300.0;
    while t < horizon {
        host.neighbour.push((t, t + 300.0, bytes));
        t += 900.0;
    }
}

#[cfg(test)]
mod tests;
