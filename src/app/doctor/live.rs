//! doctor's live checks: what `tick`, `run` and `status` need from this host, read now.
//!
//! - `config:<key>`: every host problem `tick`/`run`/`status` refuse to start on
//!   ([`setup::host_problems`], the same function they run), so a passing doctor is never
//!   followed by a tick failing on one of them.
//! - `telemetry:<pool>`: the pool's GPU source loads and reads.
//! - `engine:<pool>`: the engine answers at `engine.url` with what its kind needs (or the config
//!   says there is no endpoint).
//! - `capacity:<pool>`: the KV capacity or the slots the decision needs are known (from the
//!   config or the engine), and `kv_capacity_tokens × kv_bytes_per_token` fits the GPU.
//!
//! Side effects: loads NVML or the replay file and sends the engine its status reads (GET
//! only; no latency probe), as one tick would; writes nothing.

use super::Check;
use crate::app::setup;
use crate::config::{Config, PoolConfig};
use crate::governor::{Bytes, KvPlacement, Millis};
use crate::ports::EngineReading;

/// Every live check for `cfg`, in pool order after the config checks.
pub fn live_checks(cfg: &Config, now: Millis) -> Vec<Check> {
    let mut out: Vec<Check> = setup::host_problems(cfg, true)
        .into_iter()
        .map(|p| {
            Check::fail(
                format!("config:{}", p.key),
                format!("{}: {}", p.source, p.detail),
                "fix it as the message says; `kanban-governor check-config` lists every such problem",
            )
        })
        .collect();
    for pool in &cfg.pools {
        out.extend(pool_checks(cfg, pool, now));
    }
    out
}

fn pool_checks(cfg: &Config, pool: &PoolConfig, now: Millis) -> Vec<Check> {
    let name = &pool.name;
    let mut out = Vec::new();
    let gpu_source = match setup::gpu_source(pool, "") {
        Ok(g) => g,
        // Reported by `host_problems` already.
        Err(_) => return out,
    };
    let engine_source = setup::engine_source(pool, false);
    let mut t =
        match crate::adapters::telemetry::build_pool(name, &gpu_source, engine_source.as_ref()) {
            Ok(t) => t,
            Err(_) => return out,
        };
    let gpu = match t.gpu.read_gpu(now) {
        Ok(g) => {
            out.push(Check::ok(
                format!("telemetry:{name}"),
                format!(
                    "{}: {} used of {}",
                    telemetry_name(&pool.gpu.telemetry),
                    g.used,
                    g.total
                ),
            ));
            Some(g)
        }
        Err(e) => {
            out.push(Check::fail(
                format!("telemetry:{name}"),
                format!("the GPU source does not read: {e}"),
                "fix the driver or gpu.telemetry (\"static\" with gpu.memory_total on a host without one); until then the pool releases nothing",
            ));
            None
        }
    };
    let reading: Option<EngineReading> = match (&engine_source, t.engine.as_mut()) {
        (None, _) => {
            out.push(Check::ok(
                format!("engine:{name}"),
                "engine.url = \"none\": no endpoint to read; the configured capacities decide",
            ));
            None
        }
        (Some(src), Some(engine)) => match engine.read_engine(now) {
            Ok(r) => {
                out.push(Check::ok(
                    format!("engine:{name}"),
                    format!("{} at {} answers", pool.engine.kind, src.url),
                ));
                Some(r)
            }
            Err(e) => {
                out.push(Check::fail(
                    format!("engine:{name}"),
                    format!("{} at {} does not answer: {e}", pool.engine.kind, src.url),
                    format!(
                        "start the engine or fix engine.url (the pool holds while it cannot be read); set engine.url = \"none\" only if this host has no {} endpoint",
                        pool.engine.kind
                    ),
                ));
                None
            }
        },
        // A replay without engine records and an endpoint: build_pool always builds one.
        (Some(_), None) => None,
    };
    out.push(capacity_check(
        cfg,
        pool,
        gpu.map(|g| g.total),
        reading.as_ref(),
    ));
    out
}

/// The largest KV bytes per token of the pool's profiles (declared worst case over its tokens).
fn kv_bytes_per_token(cfg: &Config, pool: &PoolConfig) -> Option<u64> {
    cfg.profiles
        .iter()
        .filter(|p| p.pool == pool.name && p.declared.kv_tokens > 0)
        .map(|p| p.declared.kv_bytes.get().div_ceil(p.declared.kv_tokens))
        .max()
}

fn capacity_check(
    cfg: &Config,
    pool: &PoolConfig,
    gpu_total: Option<Bytes>,
    reading: Option<&EngineReading>,
) -> Check {
    let name = format!("capacity:{}", pool.name);
    let kind = pool.engine.kind;
    let from_engine = reading.and_then(|r| r.sample.kv_capacity_tokens);
    let slots = pool.engine.slots.or(reading.and_then(|r| r.sample.slots));
    if kind.kv_placement() != KvPlacement::EnginePool {
        return Check::ok(
            name,
            match slots {
                Some(s) => format!("{kind} allocates per request; {s} slots"),
                None => format!("{kind} allocates per request: GPU memory is the limit"),
            },
        );
    }
    let (capacity, source) = match (pool.engine.kv_capacity_tokens, from_engine) {
        (Some(c), _) => (c, "engine.kv_capacity_tokens"),
        (None, Some(c)) => (c, "the engine's metrics"),
        (None, None) => {
            return Check::fail(
                name,
                format!(
                    "the {kind} KV pool's capacity is unknown: the engine did not report it and engine.kv_capacity_tokens is not set; the pool holds"
                ),
                format!("set engine.kv_capacity_tokens: {}", capacity_hint(kind)),
            );
        }
    };
    let (Some(per_token), Some(total)) = (kv_bytes_per_token(cfg, pool), gpu_total) else {
        return Check::ok(name, format!("{capacity} KV tokens (from {source})"));
    };
    let kv = Bytes(capacity.saturating_mul(per_token));
    if kv > total {
        return Check::fail(
            name,
            format!(
                "{capacity} KV tokens (from {source}) × {} per token = {kv} of KV, more than the GPU's {total}",
                Bytes(per_token)
            ),
            format!(
                "the number is not this engine's: {} (or the profiles' model or kv_bytes_per_token is wrong)",
                capacity_hint(kind)
            ),
        );
    }
    Check::ok(
        name,
        format!(
            "{capacity} KV tokens (from {source}) × {} per token = {kv}, within the GPU's {total}",
            Bytes(per_token)
        ),
    )
}

/// Where an engine shows its KV capacity in tokens.
pub fn capacity_hint(kind: crate::config::EngineKind) -> &'static str {
    use crate::config::EngineKind;
    match kind {
        EngineKind::Vllm => {
            "vLLM logs it at start-up (`GPU KV cache size: N tokens`) and exports `vllm:cache_config_info{num_gpu_blocks,block_size}` (capacity = num_gpu_blocks × block_size)"
        }
        EngineKind::Sglang => {
            "SGLang logs `max_total_num_tokens=N` at start-up and exports `sglang:max_total_num_tokens`"
        }
        EngineKind::Llamacpp => {
            "llama-server's /props has `default_generation_settings.n_ctx` per slot and `total_slots`; capacity = n_ctx × slots (`-c` on its command line)"
        }
        EngineKind::Ollama | EngineKind::Openai => {
            "this engine kind allocates per request and needs none"
        }
    }
}

fn telemetry_name(t: &crate::config::Telemetry) -> String {
    use crate::config::Telemetry;
    match t {
        Telemetry::Nvml => "nvml".to_owned(),
        Telemetry::Host => "host memory".to_owned(),
        Telemetry::Static => "static".to_owned(),
        Telemetry::Replay(p) => format!("replay {}", p.display()),
    }
}
