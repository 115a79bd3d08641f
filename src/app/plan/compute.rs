//! The plan itself: the synthetic policy and backlogs the decision core is asked about, and
//! the report built from its answers.

use super::engine_settings::engine_settings;
use super::render::summary;
use super::{Budget, MAX_TASKS, NeverFit, PlanInput, PlanProfile, PlanReport, ProfileReport};
use crate::catalog::{self, ModelSpec};
// vLLM's default `--gpu-memory-utilization`, used to estimate an engine pool that a config
// does not size.
use crate::config::VLLM_DEFAULT_UTILIZATION;
use crate::governor::{
    self, Bytes, GpuSample, HoldReason, KvPlacement, Millis, Observation, Policy, PoolObservation,
    PoolPolicy, ProfileId, Readiness, TaskId, WaitingTask, WorstCase,
};
use std::collections::BTreeMap;

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

pub(super) fn plan(input: &PlanInput) -> PlanReport {
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
