//! What to plan: one pool from the flags (and the ready profiles), or every pool of a
//! governor config. The flags that stand for config keys are a raw config validated by the
//! config's own stage 2 (`config::load_flags`); the rest are `plan`'s own. Every error names
//! its flag.

use super::profiles::ready_profiles;
use super::{Engine, PlanFlags, PlanInput, PlanProfile, usage};
use crate::catalog::WeightFormat;
use crate::config::raw::{FlagLines, RawEngine, RawGpu, RawProfile};
use crate::config::{DEFAULT_RESERVE, NO_ENGINE_URL, PoolConfig, Problem, Source, format_size};
use crate::governor::{Bytes, KvPlacement};
use toml::Spanned;

/// `--gpu-memory` when not given (its help says so).
const DEFAULT_GPU_MEMORY: &str = "80GiB";

/// Parse an IEC size (`24GiB`, `512MiB`, `1.5GiB`, `4096B`, `24_000MiB`) with the config's
/// one size parser ([`crate::config::units::parse_size_str`]), so a flag and a config key take
/// the same spellings; the error names the flag.
pub(super) fn parse_size(flag: &str, s: &str) -> anyhow::Result<u64> {
    crate::config::units::parse_size_str(s)
        .map(Bytes::get)
        .map_err(|e| usage(format!("{flag}: {e}")))
}

/// The pool the flags describe, and the profile they describe when `profile` (else `None`),
/// read as a config's keys are: `--gpu-memory`, `--headroom` and `--reserve` as `[gpu]`'s
/// `memory_total`, `headroom` and `reserve`, the profile flags as a profile's keys
/// ([`crate::config::load_flags`]). `--gpu-memory` and `--reserve` not given are
/// `defaults`, other flags not given the config's defaults. Each problem names its flag; all
/// are listed.
fn read_flags(
    args: &PlanFlags,
    engine: Engine,
    defaults: (Option<&str>, &str),
    profile: bool,
) -> anyhow::Result<(PoolConfig, Option<PlanProfile>)> {
    let mut flags = FlagLines::default();
    let memory = args.gpu_memory.as_deref().or(defaults.0);
    let reserve = args.reserve.as_deref().unwrap_or(defaults.1);
    let text = |s: &str| toml::Value::String(s.to_owned());
    let gpu = RawGpu {
        // A GPU of a given size is what `telemetry = "static"` describes.
        telemetry: memory.map(|_| flags.value("--gpu-memory", text("static"))),
        memory_total: memory.map(|m| flags.value("--gpu-memory", text(m))),
        headroom: args.headroom.map(|h| flags.value("--headroom", h)),
        reserve: Some(flags.value("--reserve", text(reserve))),
        ..RawGpu::default()
    };
    let raw_engine = RawEngine {
        kind: Some(flags.value("--engine", engine.name().to_owned())),
        url: Some(flags.value("--engine", NO_ENGINE_URL.to_owned())),
        ..RawEngine::default()
    };
    let raw_profile = if profile {
        Some(raw_profile(args, &mut flags)?)
    } else {
        None
    };
    let (pool, profile) = crate::config::load_flags(flags, &gpu, &raw_engine, raw_profile)
        .map_err(|e| {
            let lines: Vec<String> = e.problems.iter().map(flag_problem).collect();
            usage(lines.join("\n"))
        })?;
    Ok((pool, profile.as_ref().map(PlanProfile::from_config)))
}

/// A problem with a flag, as `plan` prints it: `--max-context 0 is below 1; …` where the
/// message opens with the number given, `--model: unknown model …` where it does not.
fn flag_problem(p: &Problem) -> String {
    match &p.source {
        Source::Flag { flag }
            if p.detail
                .starts_with(|c: char| c.is_ascii_digit() || c == '-') =>
        {
            format!("{flag} {}", p.detail)
        }
        Source::Flag { flag } => format!("{flag}: {}", p.detail),
        other => format!("{other}: {}", p.detail),
    }
}

/// What to plan: one pool from flags or the ready profiles, or every pool of a config.
pub(super) fn inputs_from_args(args: &PlanFlags) -> anyhow::Result<Vec<PlanInput>> {
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
    // The overrides, read as the same keys of a pool of their own. Without --reserve each
    // pool keeps its own reserve, so none is held against --gpu-memory here ("0B").
    let (flag_pool, _) = read_flags(args, Engine::Vllm, (None, "0B"), false)?;
    let gpu_memory_flag = flag_pool.gpu.memory_total.map(Bytes::get);
    let headroom_flag = args.headroom.map(|_| flag_pool.gpu.headroom);
    let reserve_flag = args.reserve.as_ref().map(|_| flag_pool.gpu.reserve.get());
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
            .map(PlanProfile::from_config)
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

pub(super) fn input_from_args(args: &PlanFlags) -> anyhow::Result<PlanInput> {
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
    let defaults = (Some(DEFAULT_GPU_MEMORY), format_size(DEFAULT_RESERVE));
    let (pool, flag_profile) =
        read_flags(args, engine, (defaults.0, defaults.1.as_str()), from_flags)?;
    // `read_flags` gave the GPU a size: the flag's, else the default.
    let gpu_memory = pool.gpu.memory_total.map_or(0, Bytes::get);
    let (headroom, reserve) = (pool.gpu.headroom, pool.gpu.reserve.get());
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

    let mut profiles = match flag_profile {
        Some(p) => vec![p],
        None => ready_profiles(engine)?,
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

/// The raw profile the profile flags describe, each value spanned at its flag in `flags`.
/// Which flags go together is `plan`'s own rule, checked here.
fn raw_profile(args: &PlanFlags, flags: &mut FlagLines) -> anyhow::Result<Spanned<RawProfile>> {
    let Some(max_context) = args.max_context else {
        return Err(usage(
            "--max-context is required with --model: the largest context one request \
             reaches, in tokens (e.g. 32768)"
                .to_owned(),
        ));
    };
    // A count beyond i64 is read as i64::MAX: out of any range a profile allows anyway.
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let raw = RawProfile {
        name: Some(flags.value(
            "--name",
            args.name.clone().unwrap_or_else(|| "plan".to_owned()),
        )),
        model: args.model.clone().map(|m| flags.value("--model", m)),
        kv_bytes_per_token: args
            .kv_bytes_per_token
            .map(|b| flags.value("--kv-bytes-per-token", toml::Value::Integer(count(b)))),
        kv_dtype: args.kv_dtype.clone().map(|d| flags.value("--kv-dtype", d)),
        max_context_tokens: Some(flags.value("--max-context", count(max_context))),
        requests_per_task: args
            .requests_per_task
            .map(|n| flags.value("--requests-per-task", i64::from(n))),
        extra_bytes: args
            .extra_bytes
            .clone()
            .map(|s| flags.value("--extra-bytes", toml::Value::String(s))),
        ..RawProfile::default()
    };
    // Problems of the profile as a whole are filed at the flag that describes it.
    let whole = flags.value(
        if args.model.is_some() {
            "--model"
        } else {
            "--kv-bytes-per-token"
        },
        (),
    );
    Ok(Spanned::new(whole.span(), raw))
}
