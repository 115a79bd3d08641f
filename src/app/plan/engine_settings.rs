//! The engine settings that make a plan hold: vLLM/SGLang flags, llama.cpp and Ollama slots,
//! or what to cap on an unknown server.

use super::{Budget, Engine, EngineSettings, PlanInput, PlanProfile, ProfileReport};
use crate::catalog::{KvDtype, ModelSpec};
use crate::config::VLLM_DEFAULT_UTILIZATION;
use crate::governor::{Bytes, KvPlacement};
use std::collections::BTreeMap;
use std::fmt::Write as _;

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

pub(super) fn engine_settings(
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
