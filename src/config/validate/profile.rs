//! One profile from its table, and whether a task of it can ever fit its pool.

use super::collector::V;
use super::cross_checks::Ident;
use super::is_slug;
use super::parsers::{choice, int_at_least, kv_dtype, lookup_model, u32_at_least};
use crate::catalog::KvDtype;
use crate::config::raw::{FileText, RawProfile};
use crate::config::units::{format_size, parse_size};
use crate::config::*;
use crate::governor::admission::{Infeasible, KnownGpu, feasible, longest_feasible};
use toml::Spanned;

/// One profile. `None` when it is too broken to check further (its problems are recorded).
pub(super) fn profile(
    v: &mut V,
    f: &FileText,
    fallback_key: &str,
    p: Spanned<RawProfile>,
    pools: &[PoolConfig],
    idents: &mut Vec<Ident>,
) -> Option<ProfileConfig> {
    let source = f.source(&p.span());
    let p = p.into_inner();
    let name_key = format!("{fallback_key}.name");
    let Some(name) = v.get(f, &name_key, &p.name, |s: &String| {
        if is_slug(s) {
            Ok(s.clone())
        } else {
            Err(format!(
                "\"{s}\" is not a Hermes profile name; use lowercase letters, digits, '-' and '_' as `hermes profile list` shows them"
            ))
        }
    }) else {
        if p.name.is_none() {
            v.err(
                source,
                name_key,
                "missing; set name to the Hermes profile that runs this profile's tasks",
            );
        }
        return None;
    };
    let key = |field: &str| format!("profiles[{name}].{field}");
    if let Some(s) = v.sources.remove(&name_key) {
        v.sources.insert(key("name"), s);
    }

    let lane = v
        .get(f, &key("lane"), &p.lane, |s: &String| {
            if s.is_empty()
                || s.starts_with('-')
                || s.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                Err(format!(
                    "\"{s}\" is not a usable assignee (empty, starting with '-', or holding spaces or control characters: Hermes would read it as a flag or split it); set a name such as \"{name}@gpu\""
                ))
            } else {
                Ok(s.clone())
            }
        })
        .unwrap_or_else(|| format!("{name}@gpu"));
    idents.push(Ident {
        name: ProfileId::from(name.clone()),
        lane: lane.clone(),
        source: source.clone(),
        lane_source: v.src(&key("lane"), &source),
    });
    let pool_name = v
        .get(f, &key("pool"), &p.pool, |s: &String| {
            Ok::<_, String>(s.clone())
        })
        .unwrap_or_else(|| DEFAULT_POOL.to_owned());
    let pool = pools.iter().find(|q| q.name == pool_name);
    if pool.is_none() {
        let src = v.src(&key("pool"), &source);
        let names: Vec<String> = pools.iter().map(|q| format!("\"{}\"", q.name)).collect();
        v.err(
            src,
            key("pool"),
            format!(
                "pool \"{pool_name}\" is not declared; set pool to one of {} or declare [pools.{pool_name}]",
                names.join(", ")
            ),
        );
    }

    let spec = v.get(f, &key("model"), &p.model, |s: &String| lookup_model(s));
    let direct = v.get(
        f,
        &key("kv_bytes_per_token"),
        &p.kv_bytes_per_token,
        |val| {
            // An integer (bytes) or an IEC size ("128KiB"); either way at least one byte.
            let n = match val {
                toml::Value::Integer(n) => int_at_least(1)(n)?,
                other => parse_size(other)?.get(),
            };
            if n == 0 {
                Err("0B per token is no footprint; set the KV bytes one token takes, e.g. 131072 or \"128KiB\"".to_owned())
            } else {
                Ok(n)
            }
        },
    );
    let dtype = v.get(f, &key("kv_dtype"), &p.kv_dtype, |s: &String| kv_dtype(s));
    let mut ok = true;
    match (&p.model, &p.kv_bytes_per_token) {
        (Some(_), Some(s)) => {
            v.err(
                f.source(&s.span()),
                key("kv_bytes_per_token"),
                "set either model (bytes per token computed from the catalog) or kv_bytes_per_token, not both; remove one",
            );
            ok = false;
        }
        (None, None) => {
            v.err(
                source.clone(),
                key("model"),
                "missing; set model to a catalog name (e.g. \"llama-3.1-8b\") or give kv_bytes_per_token",
            );
            ok = false;
        }
        (None, Some(_)) => {
            if let Some(s) = &p.kv_dtype {
                v.err(
                    f.source(&s.span()),
                    key("kv_dtype"),
                    "applies only with model (kv_bytes_per_token is already in the engine's KV dtype); remove kv_dtype",
                );
            }
        }
        (Some(_), None) => {}
    }
    let kv_dtype = dtype.unwrap_or(KvDtype::F16);

    let max_context = v.get(
        f,
        &key("max_context_tokens"),
        &p.max_context_tokens,
        int_at_least(1),
    );
    if p.max_context_tokens.is_none() {
        v.err(
            source.clone(),
            key("max_context_tokens"),
            "missing; set the longest context one request of this profile reaches, e.g. max_context_tokens = 32768",
        );
    }
    let requests = v
        .get(
            f,
            &key("requests_per_task"),
            &p.requests_per_task,
            u32_at_least(1),
        )
        .unwrap_or(1);
    let max_parallel = v.get(f, &key("max_parallel"), &p.max_parallel, u32_at_least(1));
    let guaranteed = v
        .get(f, &key("guaranteed"), &p.guaranteed, u32_at_least(0))
        .unwrap_or(0);
    if let Some(mp) = max_parallel.filter(|&mp| guaranteed > mp) {
        let src = v.src(&key("guaranteed"), &source);
        v.err(
            src,
            key("guaranteed"),
            format!(
                "{guaranteed} exceeds max_parallel = {mp}: room for more tasks than may run is wasted; set guaranteed ≤ {mp}"
            ),
        );
    }
    let extra_bytes = v
        .get(f, &key("extra_bytes"), &p.extra_bytes, parse_size)
        .unwrap_or(Bytes(0));
    let footprint = v
        .get(f, &key("footprint"), &p.footprint, |s: &String| {
            choice(
                s,
                &[
                    ("declared", FootprintMode::Declared),
                    ("learned", FootprintMode::Learned),
                    ("max", FootprintMode::Max),
                ],
            )
        })
        .unwrap_or(FootprintMode::Max);

    let pool = pool?;
    let max_context = max_context?;
    if !ok {
        return None;
    }
    // Exactly one of model / kv_bytes_per_token was given; if it was invalid, that is
    // already a problem and nothing more can be computed.
    let spec = match (&p.model, spec, direct) {
        (Some(_), Some(s), _) => Some(s),
        (None, _, Some(_)) => None,
        _ => return None,
    };
    // vLLM, SGLang and llama.cpp serve one model per server: a profile declaring another
    // would be charged the wrong KV per token.
    if let (Some(s), Some(served)) = (spec, &pool.engine.model) {
        let one_model = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
        if one_model && s.name != served.as_str() {
            let src = v.src(&key("model"), &source);
            v.err(
                src,
                key("model"),
                format!(
                    "\"{}\" is not the model pool \"{}\"'s {} engine serves (\"{served}\"); set model = \"{served}\" or put the profile in a pool that serves it",
                    s.name, pool.name, pool.engine.kind
                ),
            );
        }
    }
    let rpt = u64::from(requests);
    let worst_case = |tokens: u64| {
        super::worst_case_on(
            pool.engine.kind,
            spec,
            direct.unwrap_or(0),
            kv_dtype,
            tokens,
            requests,
            extra_bytes,
        )
    };
    let declared = worst_case(max_context);
    let ctx_src = v.src(&key("max_context_tokens"), &source);
    let never = |v: &mut V, detail: String| {
        v.err(ctx_src.clone(), key("max_context_tokens"), detail);
    };

    // Can a single task ever fit?
    if let Some(s) = spec {
        let model_max = u64::from(s.max_context);
        if max_context > model_max {
            never(
                v,
                format!(
                    "{max_context} is beyond {}'s context window of {model_max} tokens, so no request can reach it; set max_context_tokens ≤ {model_max}",
                    s.name
                ),
            );
        }
    }
    // Against the configured capacities and GPU, by the decision's own rule (the same
    // ceilings and integer arithmetic `decide` applies, so the two cannot disagree).
    let engine_pool = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
    let pool_policy = pool.policy();
    let gpu = pool.gpu.memory_total.map(|total| KnownGpu {
        total,
        baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
    });
    // A per-request engine charges KV + extra against `headroom × total − reserve` above the
    // baseline. An engine with a preallocated pool charges only extra in GPU bytes (its KV
    // pool is inside the baseline) and KV in tokens; without a known token capacity,
    // `headroom × total − reserve` still bounds any KV pool this GPU can hold.
    let bytes_too_many = |why: &Infeasible| {
        matches!(
            (engine_pool, why),
            (false, Infeasible::Bytes { .. }) | (true, Infeasible::KvPoolBytes { .. })
        )
    };
    let violations = feasible(&pool_policy, gpu, &declared)
        .err()
        .unwrap_or_default();
    for why in &violations {
        match *why {
            Infeasible::SlotContext { have: sct, .. } => never(
                v,
                format!(
                    "{max_context} exceeds pool \"{}\"'s slot_context_tokens = {sct}, so a request could never get a slot; set max_context_tokens ≤ {sct} or give the engine more context per slot",
                    pool.name
                ),
            ),
            Infeasible::Slots { have: slots, .. } => {
                let src = v.src(&key("requests_per_task"), &source);
                v.err(
                    src,
                    key("requests_per_task"),
                    format!(
                        "{requests} exceeds pool \"{}\"'s slots = {slots}, so a task could never start; set requests_per_task ≤ {slots} or give the engine more slots",
                        pool.name
                    ),
                );
            }
            Infeasible::KvTokens { ceiling, .. } => never(
                v,
                format!(
                    "a task's worst case is {} KV tokens ({requests} request(s) × {max_context}) but pool \"{}\" allows {ceiling} (headroom {} × kv_capacity_tokens {}), so it could never start; set max_context_tokens ≤ {}",
                    declared.kv_tokens,
                    pool.name,
                    pool.gpu.headroom,
                    pool.engine.kv_capacity_tokens.unwrap_or(0),
                    ceiling / rpt
                ),
            ),
            // Bytes against the GPU: below, once the other ceilings are named.
            Infeasible::Bytes { .. } | Infeasible::KvPoolBytes { .. } => {}
        }
    }
    if let Some(gpu) = gpu {
        let (total, baseline) = (gpu.total, gpu.baseline);
        for why in &violations {
            if let (true, Infeasible::Bytes { ceiling: room, .. }) = (engine_pool, why) {
                let src = v.src(&key("extra_bytes"), &source);
                v.err(
                    src,
                    key("extra_bytes"),
                    format!(
                        "{} is more than pool \"{}\" has beside its engine ({} = memory_total {} − reserve {} − baseline {}), so a task could never start; lower extra_bytes or baseline",
                        format_size(extra_bytes),
                        pool.name,
                        room,
                        format_size(total),
                        format_size(pool.gpu.reserve),
                        format_size(baseline)
                    ),
                );
            }
        }
        let (need_extra, room_why) = if engine_pool {
            (
                Bytes(0),
                format!(
                    "headroom {} × memory_total {} − reserve {}",
                    pool.gpu.headroom,
                    format_size(total),
                    format_size(pool.gpu.reserve)
                ),
            )
        } else {
            (
                extra_bytes,
                format!(
                    "headroom {} × memory_total {} − reserve {} − baseline {}",
                    pool.gpu.headroom,
                    format_size(total),
                    format_size(pool.gpu.reserve),
                    format_size(baseline)
                ),
            )
        };
        let too_many = violations.iter().find(|w| bytes_too_many(w));
        let room = match too_many {
            Some(Infeasible::Bytes { ceiling, .. } | Infeasible::KvPoolBytes { ceiling, .. }) => {
                Some(*ceiling)
            }
            _ => None,
        };
        if let Some(room) = room {
            // The longest context that would fit, by bisection (KV grows with tokens).
            let fits = |t: u64| {
                feasible(&pool_policy, Some(gpu), &worst_case(t))
                    .err()
                    .is_none_or(|why| !why.iter().any(bytes_too_many))
            };
            let lo = longest_feasible(max_context, fits);
            let fix = if lo == 0 {
                "not even one token fits: lower extra_bytes or baseline, or use a larger GPU"
                    .to_owned()
            } else {
                format!(
                    "set max_context_tokens ≤ {lo}, or use a smaller kv_dtype, fewer requests_per_task or a higher headroom"
                )
            };
            never(
                v,
                format!(
                    "a task's worst case is {} ({} KV for {requests} request(s) × {max_context} tokens + {} extra) but pool \"{}\" has {room} under the ceiling ({room_why}), so it could never start; {fix}",
                    declared.kv_bytes.saturating_add(need_extra),
                    declared.kv_bytes,
                    need_extra,
                    pool.name,
                ),
            );
        }
    }

    Some(ProfileConfig {
        name: ProfileId::from(name.clone()),
        lane,
        model: spec.map(|s| s.name.to_owned()),
        kv_bytes_per_token: if spec.is_some() { None } else { direct },
        kv_dtype,
        max_context_tokens: max_context,
        requests_per_task: requests,
        max_parallel,
        guaranteed,
        extra_bytes,
        footprint,
        pool: pool_name,
        declared,
        source,
    })
}
