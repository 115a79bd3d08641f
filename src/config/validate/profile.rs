//! One profile from its table, and whether a task of it can ever fit its pool.

use super::collector::Collector;
use super::cross_checks::Ident;
use super::is_slug;
use super::parsers::{choice, int_at_least, kv_dtype, lookup_model, u32_at_least};
use crate::catalog::KvDtype;
use crate::catalog::ModelSpec;
use crate::config::raw::{FileText, RawProfile};
use crate::config::units::{format_size, parse_size};
use crate::config::*;
use crate::governor::WorstCase;
use crate::governor::admission::{Infeasible, KnownGpu, feasible, longest_feasible};
use toml::Spanned;

/// One profile. `None` when it is too broken to check further (its problems are recorded).
///
/// In steps: its name, lane and pool; where its KV bytes per token come from; its limits.
/// Then, for a profile complete enough to charge: the model its pool serves, and whether a
/// task of it can ever fit (the model's context window, the pool's capacities and GPU).
pub(super) fn profile(
    v: &mut Collector,
    f: &FileText,
    fallback_key: &str,
    p: Spanned<RawProfile>,
    pools: &[PoolConfig],
    idents: &mut Vec<Ident>,
    fit: Fit,
) -> Option<ProfileConfig> {
    let source = f.source(&p.span());
    let p = p.into_inner();
    let name = read_name(v, f, fallback_key, &p, &source)?;
    let keys = ProfileKeys {
        name: &name,
        source: &source,
    };
    let lane = read_lane(v, f, &p, &keys);
    idents.push(Ident {
        name: ProfileId::from(name.clone()),
        lane: lane.clone(),
        source: source.clone(),
        lane_source: keys.src(v, "lane"),
    });
    let (pool_name, pool) = find_pool(v, f, &p, pools, &keys);
    let kv = read_kv(v, f, &p, &keys);
    let limits = read_limits(v, f, &p, &keys);

    let pool = pool?;
    let max_context = limits.max_context?;
    if !kv.ok {
        return None;
    }
    // Exactly one of model / kv_bytes_per_token was given; if it was invalid, that is
    // already a problem and nothing more can be computed.
    let spec = match (&p.model, kv.spec, kv.direct) {
        (Some(_), Some(s), _) => Some(s),
        (None, _, Some(_)) => None,
        _ => return None,
    };
    check_served_model(v, &keys, spec, pool);
    let charge = Charge {
        pool,
        spec,
        kv_bytes_per_token: kv.direct.unwrap_or(0),
        kv_dtype: kv.kv_dtype,
        requests: limits.requests,
        extra_bytes: limits.extra_bytes,
    };
    let declared = charge.worst_case(max_context);
    if fit == Fit::Check {
        check_context_window(v, &keys, spec, max_context);
        check_pool_capacity(v, &keys, &charge, max_context, &declared);
    }

    Some(ProfileConfig {
        name: ProfileId::from(name.clone()),
        lane,
        model: spec.map(|s| s.name.to_owned()),
        kv_bytes_per_token: if spec.is_some() { None } else { kv.direct },
        kv_dtype: kv.kv_dtype,
        max_context_tokens: max_context,
        requests_per_task: limits.requests,
        max_parallel: limits.max_parallel,
        guaranteed: limits.guaranteed,
        extra_bytes: limits.extra_bytes,
        footprint: limits.footprint,
        pool: pool_name,
        declared,
        source,
    })
}

/// Whether validation asks if a task of the profile can ever fit: a config must hold only
/// profiles that can run; `plan` reports the ones that never fit instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fit {
    /// A profile that can never fit is a problem.
    Check,
    /// Only the values are checked.
    Report,
}

/// Where a profile's problems are filed: under `profiles[<name>].<field>`, at the line that
/// set the field, else at the profile's table.
struct ProfileKeys<'a> {
    name: &'a str,
    source: &'a Source,
}

impl ProfileKeys<'_> {
    fn key(&self, field: &str) -> String {
        format!("profiles[{}].{field}", self.name)
    }

    /// Where `field` was set, else the profile's table.
    fn src(&self, v: &Collector, field: &str) -> Source {
        v.src(&self.key(field), self.source)
    }

    /// A task of this profile can never start: filed under `max_context_tokens`.
    fn never(&self, v: &mut Collector, detail: String) {
        let src = self.src(v, "max_context_tokens");
        v.err(src, self.key("max_context_tokens"), detail);
    }
}

/// The profile's name, checked as a Hermes profile name; `None` (a problem recorded) when it
/// is missing or invalid. Its source moves from the fallback key to `profiles[<name>].name`.
fn read_name(
    v: &mut Collector,
    f: &FileText,
    fallback_key: &str,
    p: &RawProfile,
    source: &Source,
) -> Option<String> {
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
                source.clone(),
                name_key,
                "missing; set name to the Hermes profile that runs this profile's tasks",
            );
        }
        return None;
    };
    if let Some(s) = v.sources.remove(&name_key) {
        v.sources.insert(format!("profiles[{name}].name"), s);
    }
    Some(name)
}

/// The lane (the assignee held tasks wait under), `<name>@gpu` by default.
fn read_lane(v: &mut Collector, f: &FileText, p: &RawProfile, keys: &ProfileKeys<'_>) -> String {
    let key = |field: &str| keys.key(field);
    let name = keys.name;
    v
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
        .unwrap_or_else(|| format!("{name}@gpu"))
}

/// The pool's name (`default` when unset) and the pool, `None` (a problem recorded) when no
/// such pool is declared.
fn find_pool<'p>(
    v: &mut Collector,
    f: &FileText,
    p: &RawProfile,
    pools: &'p [PoolConfig],
    keys: &ProfileKeys<'_>,
) -> (String, Option<&'p PoolConfig>) {
    let key = |field: &str| keys.key(field);
    let pool_name = v
        .get(f, &key("pool"), &p.pool, |s: &String| {
            Ok::<_, String>(s.clone())
        })
        .unwrap_or_else(|| DEFAULT_POOL.to_owned());
    let pool = pools.iter().find(|q| q.name == pool_name);
    if pool.is_none() {
        let src = keys.src(v, "pool");
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
    (pool_name, pool)
}

/// Where the profile's KV bytes per token come from: a catalog model (with a KV dtype) or a
/// number given directly.
struct KvSource {
    /// The catalog model, when `model` names one.
    spec: Option<&'static ModelSpec>,
    /// `kv_bytes_per_token`, when given and valid.
    direct: Option<u64>,
    kv_dtype: KvDtype,
    /// False when both or neither of `model` and `kv_bytes_per_token` were given.
    ok: bool,
}

fn read_kv(v: &mut Collector, f: &FileText, p: &RawProfile, keys: &ProfileKeys<'_>) -> KvSource {
    let key = |field: &str| keys.key(field);
    let source = keys.source;
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
    KvSource {
        spec,
        direct,
        kv_dtype,
        ok,
    }
}

/// The profile's limits and extras. `max_context` is `None` when missing or invalid (a
/// problem recorded); the others fall back to their defaults.
struct Limits {
    max_context: Option<u64>,
    requests: u32,
    max_parallel: Option<u32>,
    guaranteed: u32,
    extra_bytes: Bytes,
    footprint: FootprintMode,
}

fn read_limits(v: &mut Collector, f: &FileText, p: &RawProfile, keys: &ProfileKeys<'_>) -> Limits {
    let key = |field: &str| keys.key(field);
    let source = keys.source;
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
        let src = keys.src(v, "guaranteed");
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
    Limits {
        max_context,
        requests,
        max_parallel,
        guaranteed,
        extra_bytes,
        footprint,
    }
}

/// A pool whose engine serves one model takes only profiles of that model.
fn check_served_model(
    v: &mut Collector,
    keys: &ProfileKeys<'_>,
    spec: Option<&'static ModelSpec>,
    pool: &PoolConfig,
) {
    let key = |field: &str| keys.key(field);
    // vLLM, SGLang and llama.cpp serve one model per server: a profile declaring another
    // would be charged the wrong KV per token.
    if let (Some(s), Some(served)) = (spec, &pool.engine.model) {
        let one_model = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
        if one_model && s.name != served.as_str() {
            let src = keys.src(v, "model");
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
}

/// What a task of the profile is charged on its pool's engine, at any context length (the
/// bisection below asks at shorter ones).
#[derive(Clone, Copy)]
struct Charge<'a> {
    pool: &'a PoolConfig,
    spec: Option<&'static ModelSpec>,
    kv_bytes_per_token: u64,
    kv_dtype: KvDtype,
    requests: u32,
    extra_bytes: Bytes,
}

impl Charge<'_> {
    fn worst_case(&self, tokens: u64) -> WorstCase {
        super::worst_case_on(
            self.pool.engine.kind,
            self.spec,
            self.kv_bytes_per_token,
            self.kv_dtype,
            tokens,
            self.requests,
            self.extra_bytes,
        )
    }
}

/// Can a single task ever fit? Not when its context is beyond the model's window.
fn check_context_window(
    v: &mut Collector,
    keys: &ProfileKeys<'_>,
    spec: Option<&'static ModelSpec>,
    max_context: u64,
) {
    let never = |v: &mut Collector, detail: String| keys.never(v, detail);
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
}

/// Whether the bytes a task is charged are what overflow: KV and extra on a per-request
/// engine, the KV pool's bytes on an engine with a preallocated pool.
fn bytes_too_many(engine_pool: bool, why: &Infeasible) -> bool {
    matches!(
        (engine_pool, why),
        (false, Infeasible::Bytes { .. }) | (true, Infeasible::KvPoolBytes { .. })
    )
}

/// Against the pool's slots, slot context and KV tokens, then its GPU bytes: could a task
/// ever start?
fn check_pool_capacity(
    v: &mut Collector,
    keys: &ProfileKeys<'_>,
    charge: &Charge<'_>,
    max_context: u64,
    declared: &WorstCase,
) {
    let key = |field: &str| keys.key(field);
    let never = |v: &mut Collector, detail: String| keys.never(v, detail);
    let Charge { pool, requests, .. } = *charge;
    let rpt = u64::from(requests);
    // Against the configured capacities and GPU, by the decision's own rule (the same
    // ceilings and integer arithmetic `decide` applies, so the two cannot disagree).
    let pool_policy = pool.policy();
    let gpu = pool.gpu.memory_total.map(|total| KnownGpu {
        total,
        baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
    });
    let violations = feasible(&pool_policy, gpu, declared)
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
                let src = keys.src(v, "requests_per_task");
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
        check_gpu_bytes(v, keys, charge, max_context, declared, &violations, gpu);
    }
}

/// Bytes against the GPU, once the other ceilings are named: what overflows and the longest
/// context that would fit.
fn check_gpu_bytes(
    v: &mut Collector,
    keys: &ProfileKeys<'_>,
    charge: &Charge<'_>,
    max_context: u64,
    declared: &WorstCase,
    violations: &[Infeasible],
    gpu: KnownGpu,
) {
    let key = |field: &str| keys.key(field);
    let never = |v: &mut Collector, detail: String| keys.never(v, detail);
    let Charge {
        pool,
        requests,
        extra_bytes,
        ..
    } = *charge;
    let engine_pool = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
    let pool_policy = pool.policy();
    // A per-request engine charges KV + extra against `headroom × total − reserve` above the
    // baseline. An engine with a preallocated pool charges only extra in GPU bytes (its KV
    // pool is inside the baseline) and KV in tokens; without a known token capacity,
    // `headroom × total − reserve` still bounds any KV pool this GPU can hold.
    let bytes_too_many = |why: &Infeasible| bytes_too_many(engine_pool, why);
    let worst_case = |tokens: u64| charge.worst_case(tokens);
    let (total, baseline) = (gpu.total, gpu.baseline);
    for why in violations {
        if let (true, Infeasible::Bytes { ceiling: room, .. }) = (engine_pool, why) {
            let src = keys.src(v, "extra_bytes");
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
            "not even one token fits: lower extra_bytes or baseline, or use a larger GPU".to_owned()
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
