//! "Does this task fit": one pool's ledger of charged worst cases against its ceilings.
//!
//! Pure arithmetic, no I/O. Sums are done in `u128` so no input can overflow them; a
//! ceiling is never exceeded by an admitted charge (checked by property tests in
//! `governor::tests`).
//!
//! # Statistical KV admission (engine KV pools, `footprint = "learned"`)
//!
//! In an engine's preallocated KV pool (vLLM, SGLang) running out of KV preempts a request
//! and recomputes it later; nothing fails and no memory outside the pool is touched. There a
//! profile that learned how its tasks' peaks spread is charged by the pool as a whole, not
//! task by task: `n` tasks whose peaks have mean `μ` and deviation `σ` reach together at most
//! `n·μ + z·σ·√n` tokens with probability 99 % (`z` = [`Z_99`], one-sided; a normal
//! approximation of the sum), and never more than `n` times their bound. So the pool's KV
//! charge is `min(Σ bound, Σ μ + z·√(Σ σ²))`; a declared or `max` footprint has `μ = bound`
//! and `σ = 0` and is charged exactly its bound. The sum still assumes every task at its
//! peak at once, while a paged engine frees a task's blocks between its calls; GPU bytes and
//! slots, where an overrun is an OOM or a failed request, are always charged bound by bound.
//!
//! # Running tasks in a KV pool
//!
//! An agent's context grows turn by turn, so a running task far from its peak is charged what
//! it can reach soon, not its whole life's peak: in an engine's KV pool, where its profile's
//! tasks are pooled (above) and the profile learned how fast their context grows (mean `g`,
//! deviation `s`, tokens per minute of run), a running task whose context has reached `c` is
//! charged mean `c + g·h` and deviation `s·h`, `h` = [`GROWTH_HORIZON_S`], as long as that is
//! below the mean a task of its profile is charged ([`PoolLedger::charge_running`]); its bound
//! is unchanged, so the pooled charge stays `min(Σ bound, Σ μ + z·√(Σ σ²))`.
//!
//! Why that is safe there, and only there: the charge is then a forecast of the next `h`
//! seconds, not a bound on the task's life. Each decision recharges every running task with its
//! new context, and admits nothing while the forecast fills the ceiling; what the running tasks
//! grow beyond it before they finish can overrun the pool, and an overrun of a paged KV pool
//! preempts a request and recomputes it later (vLLM, SGLang): slower, nothing fails. The
//! horizon is what keeps those preemptions rare (`simulate`: at most a tenth of unbounded
//! dispatch's on every built-in scenario and the public trace). Where an overrun is an OOM or a
//! refused request (KV in GPU bytes: per-request engines without paging; slots), a running
//! task is charged its bound for its whole life, whatever its context: that pool's sum of
//! charges is a true bound (property test in `governor::tests`).
//!
//! # Running tasks in a slot pool
//!
//! A fixed-slot engine (llama.cpp `-np N`) preallocates every slot's KV when it starts, so
//! nothing a request does there allocates memory: a request that finds every slot busy
//! waits in the server's queue for one, and a request longer than a slot is refused (checked
//! per profile, [`Infeasible::SlotContext`], and unchanged here). An agent's task holds a
//! slot only while one of its calls is in flight, not while it runs its tools. So a running
//! task whose requests in flight are seen (the pass-through counts them per task; the
//! simulator knows them) is charged that many slots, 0 between calls, and that share of its
//! KV; a task not seen (no pass-through, not yet called, released and not yet running) is
//! charged its declared slots for its whole life as before, so without the pass-through
//! nothing changes (property test in `governor::tests`).
//!
//! Why that is safe there: the slot charge is then a snapshot, and tasks between calls may
//! all call at once, more than there are slots. The overflow cannot OOM, fail or offload
//! anything (the slots' memory is already held, GPU bytes are still charged bound by
//! bound); it queues at the server, which is latency. What bounds that queue is the latency
//! limit (AIMD on TTFT, [`crate::governor::limit`]): queued requests miss the TTFT target,
//! the limit drops below the tasks running, and nothing more is released until the queue
//! meets the target again. So without a latency limit in force (`Observation::latency_limit`
//! is `None`) `decide` charges every running task its declared slots, seen or not;
//! `simulate` runs the governor with the limit on pools with slots, as the daemon does.

use super::types::{
    Bytes, EngineSample, GpuSample, Headroom, HoldReason, KvPlacement, Millis, PoolBudget,
    PoolObservation, PoolPolicy, Spread, WorstCase,
};

/// What one task costs in one pool's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charge {
    /// GPU bytes.
    pub bytes: u128,
    /// KV tokens (only where the engine has a KV pool).
    pub kv_tokens: u128,
    /// Engine slots (only where the engine has fixed slots).
    pub slots: u128,
    /// The expected KV tokens (`= kv_tokens` for a task charged its bound).
    pub kv_mean: u128,
    /// The variance of the KV tokens (0 for a task charged its bound).
    pub kv_var: u128,
}

/// One-sided 99 % quantile of the standard normal distribution, in thousandths.
pub const Z_99: u128 = 2326;

/// Seconds of growth a running task is charged beyond the context it reached, in an engine's
/// KV pool (module doc, "Running tasks in a KV pool").
// Chosen with `simulate` on every built-in scenario (seeds 1-3) and the public trace, among
// 30 s, 45 s, 1, 2, 5 and 15 min (BENCHMARKS.md, "Growth horizon"): 30 s preempts more than a
// tenth of unbounded dispatch under the noisy neighbour (24 of 185 at seed 2); 1 min completes
// 3 % less on the trace (2250 against 2318) and 2-3 % less on the default; from 5 min on a
// running task is charged as much as before (its growth over 5 min reaches its profile's mean).
pub const GROWTH_HORIZON_S: u128 = 45;

impl Charge {
    /// Component-wise sum.
    pub fn plus(&self, other: &Charge) -> Charge {
        Charge {
            bytes: self.bytes + other.bytes,
            kv_tokens: self.kv_tokens + other.kv_tokens,
            slots: self.slots + other.slots,
            kv_mean: self.kv_mean + other.kv_mean,
            kv_var: self.kv_var + other.kv_var,
        }
    }

    /// The KV tokens these tasks are charged together: `min(Σ bound, Σ μ + z·√(Σ σ²))`.
    pub fn kv_charged(&self) -> u128 {
        // `+ 1` rounds the integer square root up, so the margin is never below z·σ.
        let margin = if self.kv_var == 0 {
            0
        } else {
            ((isqrt(self.kv_var) + 1) * Z_99).div_ceil(1000)
        };
        self.kv_tokens.min(self.kv_mean + margin)
    }

    /// `n` times this charge.
    pub fn times(&self, n: u32) -> Charge {
        let n = u128::from(n);
        Charge {
            bytes: self.bytes * n,
            kv_tokens: self.kv_tokens * n,
            slots: self.slots * n,
            kv_mean: self.kv_mean * n,
            kv_var: self.kv_var * n,
        }
    }
}

/// `⌊√v⌋`, exact: the float root, corrected to the integer one. It is taken per waiting
/// task, so no loop of 128-bit divisions, and through 64 bits where the value allows (the
/// 128-bit float conversions are software routines).
fn isqrt(v: u128) -> u128 {
    let mut r = match u64::try_from(v) {
        Ok(small) => u128::from((small as f64).sqrt() as u64),
        Err(_) => (v as f64).sqrt() as u128,
    };
    while r.checked_mul(r).is_none_or(|sq| sq > v) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= v) {
        r += 1;
    }
    r
}

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// One pool's ceilings and what is charged against them.
#[derive(Debug, Clone)]
pub struct PoolLedger {
    placement: KvPlacement,
    stale: Option<String>,
    gpu: Option<GpuSample>,
    baseline: Option<Bytes>,
    ceiling_bytes: Option<u128>,
    ceiling_kv_tokens: Option<u128>,
    observed_kv_tokens: u128,
    slots: Option<u128>,
    slot_context_tokens: Option<u64>,
    charged: Charge,
    /// `charged` when the decision started (before its releases), for the budget report.
    charged_before: Option<Charge>,
}

impl PoolLedger {
    /// Build the ledger of `pool` from its observation at `now`. A missing or stale sample
    /// makes the ledger stale: it then admits nothing and says why.
    pub fn new(pool: &PoolPolicy, obs: Option<&PoolObservation>, now: Millis) -> PoolLedger {
        let gpu = obs.and_then(|o| o.gpu);
        let engine: Option<EngineSample> = obs.and_then(|o| o.engine);
        let mut stale = None;
        match gpu {
            None => stale = Some("no GPU memory sample (telemetry unavailable)".to_owned()),
            Some(s) if now.since(s.at) > pool.max_staleness => {
                stale = Some(format!(
                    "GPU sample {} old (max_staleness {})",
                    now.since(s.at),
                    pool.max_staleness
                ));
            }
            Some(_) => {}
        }
        let engine_fresh = engine.filter(|e| now.since(e.at) <= pool.max_staleness);
        if pool.needs_engine && engine_fresh.is_none() && stale.is_none() {
            stale = Some(match engine {
                Some(e) => format!(
                    "engine metrics {} old (max_staleness {})",
                    now.since(e.at),
                    pool.max_staleness
                ),
                None => "no engine reading (engine unreachable or failing); \
                         set engine.url = \"none\" only if this host has no engine endpoint"
                    .to_owned(),
            });
        }

        let ceiling_bytes = gpu.map(|s| {
            let total = u128::from(s.total.get());
            let base = match pool.kv_placement {
                // The KV pool is inside the engine's preallocation: headroom applies there.
                KvPlacement::EnginePool => total,
                KvPlacement::GpuBytes => pool.headroom.apply(total),
            };
            base.saturating_sub(u128::from(pool.reserve.get()))
        });

        let mut ceiling_kv_tokens = None;
        let mut observed_kv_tokens = 0;
        if pool.kv_placement == KvPlacement::EnginePool {
            let capacity = pool
                .kv_capacity_tokens
                .or_else(|| engine_fresh.and_then(|e| e.kv_capacity_tokens));
            match capacity {
                Some(c) => ceiling_kv_tokens = Some(pool.headroom.apply(u128::from(c))),
                None if stale.is_none() => {
                    stale = Some(match engine {
                        Some(e) if now.since(e.at) > pool.max_staleness => format!(
                            "engine metrics {} old (max_staleness {})",
                            now.since(e.at),
                            pool.max_staleness
                        ),
                        _ => "engine KV capacity unknown (engine metrics unavailable; \
                              or set engine.kv_capacity_tokens)"
                            .to_owned(),
                    });
                }
                None => {}
            }
            observed_kv_tokens = engine_fresh
                .and_then(|e| e.kv_used_tokens)
                .map_or(0, u128::from);
        }
        let slots = pool
            .slots
            .or_else(|| engine_fresh.and_then(|e| e.slots))
            .map(u128::from);
        let slot_context_tokens = pool
            .slot_context_tokens
            .or_else(|| engine_fresh.and_then(|e| e.slot_context_tokens));

        PoolLedger {
            placement: pool.kv_placement,
            stale,
            gpu,
            baseline: obs.and_then(|o| o.baseline),
            ceiling_bytes,
            ceiling_kv_tokens,
            observed_kv_tokens,
            slots,
            slot_context_tokens,
            charged: Charge::default(),
            charged_before: None,
        }
    }

    /// Why this pool admits nothing right now, if so.
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// The charge of a task with worst case `wc` in this pool, pooled statistically by its
    /// `spread` where the pool is an engine's KV pool (module doc).
    pub fn charge_of(&self, wc: &WorstCase, spread: Option<&Spread>) -> Charge {
        let alone = Charge::alone(self.placement, wc, self.slots.is_some());
        match (self.placement, spread) {
            (KvPlacement::EnginePool, Some(s)) => Charge {
                kv_mean: u128::from(s.mean_kv_tokens).min(alone.kv_tokens),
                kv_var: u128::from(s.sd_kv_tokens).pow(2),
                ..alone
            },
            _ => alone,
        }
    }

    /// The charge of a running task of a profile with worst case `wc` and `spread`, whose
    /// context has reached `context_tokens` so far: in an engine's KV pool, where its profile
    /// learned how fast its tasks grow, what it holds now plus what it may add over
    /// [`GROWTH_HORIZON_S`] (module doc, "Running tasks in a KV pool"), never above its
    /// bound; anywhere else, or unseen, as [`PoolLedger::charge_of`] charges a waiting task.
    ///
    /// In a pool with fixed slots, a task whose `requests_in_flight` are seen is charged that
    /// many slots, and the KV of that many requests (module doc, "Running tasks in a slot
    /// pool"); unseen, its declared slots as a waiting task.
    pub fn charge_running(
        &self,
        wc: &WorstCase,
        spread: Option<&Spread>,
        context_tokens: Option<u64>,
        requests_in_flight: Option<u32>,
    ) -> Charge {
        let by_context = self.charge_running_by_context(wc, spread, context_tokens);
        match (self.slots, requests_in_flight) {
            (Some(_), Some(n)) => {
                let n = u128::from(n);
                let declared = u128::from(wc.slots.max(1));
                // Fewer requests than declared hold that share of its KV (each request is
                // bounded by `request_tokens`); more than declared are charged as they are
                // (slots) and the whole declared KV: never less than it holds.
                let share = |x: u128| (x * n.min(declared)).div_ceil(declared);
                Charge {
                    slots: n,
                    kv_tokens: share(by_context.kv_tokens),
                    kv_mean: share(by_context.kv_mean),
                    kv_var: if n == 0 { 0 } else { by_context.kv_var },
                    ..by_context
                }
            }
            _ => by_context,
        }
    }

    fn charge_running_by_context(
        &self,
        wc: &WorstCase,
        spread: Option<&Spread>,
        context_tokens: Option<u64>,
    ) -> Charge {
        let waiting = self.charge_of(wc, spread);
        match (self.placement, spread, context_tokens) {
            (KvPlacement::EnginePool, Some(s), Some(seen)) if s.growth_per_min_kv_tokens > 0 => {
                let over_horizon =
                    |per_min: u64| (u128::from(per_min) * GROWTH_HORIZON_S).div_ceil(60);
                let mean = u128::from(seen) + over_horizon(s.growth_per_min_kv_tokens);
                if mean >= waiting.kv_mean {
                    // Near its peak: what any task of its profile is charged.
                    return waiting;
                }
                Charge {
                    kv_mean: mean,
                    kv_var: over_horizon(s.growth_sd_per_min_kv_tokens).pow(2),
                    ..waiting
                }
            }
            _ => waiting,
        }
    }

    /// Charge a task (it runs, or was released).
    pub fn charge(&mut self, c: &Charge) {
        self.charged = self.charged.plus(c);
    }

    /// Remember the charges so far as "before this decision" (for [`PoolLedger::budget`]).
    pub fn seal_baseline(&mut self) {
        self.charged_before = Some(self.charged);
    }

    /// Projected GPU peak with the given charges: `max(used, baseline + charged)`, or
    /// `used + charged` with no baseline.
    fn projected_bytes(&self, charged: &Charge) -> Option<u128> {
        self.gpu.map(|s| {
            let used = u128::from(s.used.get());
            match self.baseline {
                Some(b) => used.max(u128::from(b.get()) + charged.bytes),
                None => used + charged.bytes,
            }
        })
    }

    fn projected_kv(&self, charged: &Charge) -> u128 {
        self.observed_kv_tokens.max(charged.kv_charged())
    }

    /// Why a task with worst case `wc` can never fit this pool, even alone, if so.
    pub fn never_fits(&self, wc: &WorstCase) -> Option<String> {
        // Only what no change on the host can fix counts here: the baseline (weights, other
        // tenants) may shrink, so a task blocked by it is VramHeadroom, not NeverFits.
        let ceilings = Ceilings {
            bytes: self.ceiling_bytes,
            kv_pool_bytes: None,
            kv_tokens: self.ceiling_kv_tokens,
            slots: self.slots,
            slot_context_tokens: self.slot_context_tokens,
        };
        ceilings
            .feasible(self.placement, wc)
            .err()
            .and_then(|why| why.first().map(ToString::to_string))
    }
}

/// `headroom × value` ([`Headroom::apply`]) for a `u64` value.
pub fn apply_headroom(value: u64, headroom: Headroom) -> u64 {
    clamp_u64(headroom.apply(u128::from(value)))
}

/// A GPU whose size and idle use are known without telemetry (config `memory_total` and
/// `baseline`): what "can it ever fit" is asked against before the governor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownGpu {
    /// Its memory.
    pub total: Bytes,
    /// What it holds with no task (weights, the engine's pool, other tenants).
    pub baseline: Bytes,
}

/// Can a task with worst case `wc` ever fit `pool` (on `gpu`, when its size is known without
/// telemetry)? The one rule for "can it ever fit": config validation, `plan` and `simulate`
/// ask it of the configured capacities, and `decide` asks [`Ceilings::feasible`] of the
/// ceilings it measured ([`PoolLedger::never_fits`]).
///
/// # Errors
///
/// Every ceiling the task exceeds even alone, in [`Ceilings::feasible`]'s order.
pub fn feasible(
    pool: &PoolPolicy,
    gpu: Option<KnownGpu>,
    wc: &WorstCase,
) -> Result<(), Vec<Infeasible>> {
    Ceilings::configured(pool, gpu).feasible(pool.kv_placement, wc)
}

/// The largest `t` in `0..=max` with `fits(t)`, for a `fits` that holds up to some point and
/// not beyond (a worst case grows with its context): the longest context that can ever fit,
/// by bisection. 0 when not even one fits.
pub fn longest_feasible(max: u64, fits: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0u64, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// What a single task must fit in a pool whatever else runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    /// GPU bytes ceiling (what the task is charged in GPU bytes must fit under it).
    pub bytes: Option<u128>,
    /// The most bytes any engine KV pool on this GPU can hold, for an engine pool whose size
    /// in tokens is unknown: a task's KV bytes must fit under it.
    pub kv_pool_bytes: Option<u128>,
    /// KV tokens ceiling (`headroom × kv_capacity_tokens`).
    pub kv_tokens: Option<u128>,
    /// Engine slots.
    pub slots: Option<u128>,
    /// Context tokens per slot.
    pub slot_context_tokens: Option<u64>,
}

impl Ceilings {
    /// The ceilings of `pool` from its configured capacities alone: the KV ceiling is
    /// `headroom × kv_capacity_tokens`. With a known GPU the bytes ceiling is what a task may
    /// take above the baseline: `headroom × total − reserve − baseline` where KV is charged in
    /// GPU bytes, `total − reserve − baseline` beside an engine's KV pool (the pool is inside
    /// the baseline); and an engine pool of unknown size holds at most `headroom × total −
    /// reserve`.
    pub fn configured(pool: &PoolPolicy, gpu: Option<KnownGpu>) -> Ceilings {
        let engine_pool = pool.kv_placement == KvPlacement::EnginePool;
        let reserve = u128::from(pool.reserve.get());
        let bytes_of = |g: KnownGpu| {
            let total = u128::from(g.total.get());
            let under_headroom = pool.headroom.apply(total).saturating_sub(reserve);
            let beside_pool = total.saturating_sub(reserve);
            (under_headroom, beside_pool, u128::from(g.baseline.get()))
        };
        Ceilings {
            bytes: gpu
                .map(bytes_of)
                .map(|(under_headroom, beside_pool, baseline)| {
                    let room = if engine_pool {
                        beside_pool
                    } else {
                        under_headroom
                    };
                    room.saturating_sub(baseline)
                }),
            kv_pool_bytes: gpu
                .filter(|_| engine_pool && pool.kv_capacity_tokens.is_none())
                .map(|g| bytes_of(g).0),
            kv_tokens: engine_pool
                .then_some(pool.kv_capacity_tokens)
                .flatten()
                .map(|c| pool.headroom.apply(u128::from(c))),
            slots: pool.slots.map(u128::from),
            slot_context_tokens: pool.slot_context_tokens,
        }
    }

    /// Whether a task with worst case `wc`, charged alone where `placement` keeps its KV
    /// ([`Charge::alone`]), fits under these ceilings.
    ///
    /// # Errors
    ///
    /// Every ceiling it exceeds, in a fixed order (bytes, KV tokens, slots, slot context,
    /// KV pool bytes).
    pub fn feasible(&self, placement: KvPlacement, wc: &WorstCase) -> Result<(), Vec<Infeasible>> {
        let c = Charge::alone(placement, wc, self.slots.is_some());
        let mut out = Vec::new();
        if let Some(ceiling) = self.bytes
            && c.bytes > ceiling
        {
            out.push(Infeasible::Bytes {
                need: Bytes(clamp_u64(c.bytes)),
                ceiling: Bytes(clamp_u64(ceiling)),
            });
        }
        if let Some(ceiling) = self.kv_tokens
            && c.kv_tokens > ceiling
        {
            out.push(Infeasible::KvTokens {
                need: clamp_u64(c.kv_tokens),
                ceiling: clamp_u64(ceiling),
            });
        }
        if let Some(slots) = self.slots
            && c.slots > slots
        {
            out.push(Infeasible::Slots {
                need: clamp_u64(c.slots),
                have: clamp_u64(slots),
            });
        }
        if let Some(ctx) = self.slot_context_tokens
            && wc.request_tokens > ctx
        {
            out.push(Infeasible::SlotContext {
                need: wc.request_tokens,
                have: ctx,
            });
        }
        if let Some(ceiling) = self.kv_pool_bytes
            && u128::from(wc.kv_bytes.get()) > ceiling
        {
            out.push(Infeasible::KvPoolBytes {
                need: wc.kv_bytes,
                ceiling: Bytes(clamp_u64(ceiling)),
            });
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

impl Charge {
    /// One task's charge with nothing else running, where `placement` keeps its KV and the
    /// pool has slots when `slots` (as [`PoolLedger::charge_of`] charges it, bound by bound).
    pub fn alone(placement: KvPlacement, wc: &WorstCase, slots: bool) -> Charge {
        let kv_tokens = match placement {
            KvPlacement::EnginePool => u128::from(wc.kv_tokens),
            KvPlacement::GpuBytes => 0,
        };
        Charge {
            kv_mean: kv_tokens,
            kv_var: 0,
            bytes: u128::from(wc.gpu_bytes(placement).get()),
            kv_tokens,
            slots: if slots { u128::from(wc.slots) } else { 0 },
        }
    }
}

/// A ceiling a single task exceeds even alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Infeasible {
    /// Its GPU bytes exceed the bytes ceiling.
    Bytes {
        /// Its worst case.
        need: Bytes,
        /// The ceiling.
        ceiling: Bytes,
    },
    /// Its KV tokens exceed `headroom × kv_capacity_tokens`.
    KvTokens {
        /// Its worst case in tokens.
        need: u64,
        /// The ceiling in tokens.
        ceiling: u64,
    },
    /// It needs more slots than the engine has.
    Slots {
        /// Slots it needs (`requests_per_task`).
        need: u64,
        /// Slots the engine has.
        have: u64,
    },
    /// Its KV bytes exceed any KV pool an engine can hold on this GPU (`headroom × total −
    /// reserve`), where the pool's size in tokens is not configured.
    KvPoolBytes {
        /// Its KV worst case.
        need: Bytes,
        /// The most any pool holds.
        ceiling: Bytes,
    },
    /// One request's context exceeds a slot's.
    SlotContext {
        /// Its largest request's context.
        need: u64,
        /// A slot's context.
        have: u64,
    },
}

impl std::fmt::Display for Infeasible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Infeasible::Bytes { need, ceiling } => write!(
                f,
                "its worst case of {need} exceeds the GPU ceiling of {ceiling} even on an empty GPU"
            ),
            Infeasible::KvTokens { need, ceiling } => write!(
                f,
                "its worst case of {need} KV tokens exceeds the KV ceiling of {ceiling} tokens"
            ),
            Infeasible::Slots { need, have } => {
                write!(f, "it needs {need} slots and the engine has {have}")
            }
            Infeasible::KvPoolBytes { need, ceiling } => write!(
                f,
                "its worst case of {need} of KV exceeds the {ceiling} any engine KV pool can hold on this GPU"
            ),
            Infeasible::SlotContext { need, have } => write!(
                f,
                "one request of {need} context tokens exceeds a slot's context of {have} tokens"
            ),
        }
    }
}

impl PoolLedger {
    /// Whether `charge` fits with `kept` held back for others; the reason if not.
    ///
    /// # Errors
    ///
    /// The memory hold reason of the first pool that does not fit.
    pub fn fits(&self, charge: &Charge, kept: &Charge) -> Result<(), HoldReason> {
        let with_kept = self.charged.plus(kept);
        if let (Some(ceiling), Some(projected)) =
            (self.ceiling_bytes, self.projected_bytes(&with_kept))
            && projected + charge.bytes > ceiling
        {
            return Err(HoldReason::VramHeadroom {
                needed: Bytes(clamp_u64(charge.bytes)),
                free: Bytes(clamp_u64(ceiling.saturating_sub(projected))),
            });
        }
        if let Some(ceiling) = self.ceiling_kv_tokens {
            // What is charged now (never below what the engine reports in use), plus what
            // keeping `kept` and adding `charge` add to the pooled charge.
            let now = self.charged.kv_charged();
            let kept_too = self.charged.plus(kept).kv_charged();
            let all = self.charged.plus(kept).plus(charge).kv_charged();
            let projected = self.projected_kv(&self.charged) + kept_too.saturating_sub(now);
            let needed = all.saturating_sub(kept_too);
            if projected + needed > ceiling {
                return Err(HoldReason::KvHeadroom {
                    needed: clamp_u64(needed),
                    free: clamp_u64(ceiling.saturating_sub(projected)),
                });
            }
        }
        if let Some(slots) = self.slots
            && with_kept.slots + charge.slots > slots
        {
            return Err(HoldReason::NoSlot {
                needed: u32::try_from(charge.slots).unwrap_or(u32::MAX),
                free: u32::try_from(slots.saturating_sub(with_kept.slots)).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }

    /// The pool's budget as this ledger sees it now.
    pub fn budget(&self, name: &str) -> PoolBudget {
        let before = self.charged_before.unwrap_or(self.charged);
        PoolBudget {
            name: name.to_owned(),
            ceiling_bytes: self.ceiling_bytes.map(|c| Bytes(clamp_u64(c))),
            projected_bytes: self.projected_bytes(&before).map(|c| Bytes(clamp_u64(c))),
            projected_after_bytes: self
                .projected_bytes(&self.charged)
                .map(|c| Bytes(clamp_u64(c))),
            ceiling_kv_tokens: self.ceiling_kv_tokens.map(clamp_u64),
            charged_kv_tokens: clamp_u64(self.projected_kv(&before)),
            charged_after_kv_tokens: clamp_u64(self.projected_kv(&self.charged)),
            slots: self.slots.map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
            slots_used_after: u32::try_from(self.charged.slots).unwrap_or(u32::MAX),
            stale: self.stale.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision tests' 24 GiB pool (headroom 0.85, reserve 1 GiB) with KV kept at `placement`.
    fn pool(placement: KvPlacement) -> PoolPolicy {
        PoolPolicy {
            kv_placement: placement,
            ..crate::governor::tests::gpu_pool()
        }
    }

    /// A 24 GiB GPU with 10 GiB used, sampled at 0.
    fn used_10_of_24_gib() -> PoolObservation {
        PoolObservation {
            gpu: Some(GpuSample {
                at: Millis(0),
                total: Bytes::gib(24),
                used: Bytes::gib(10),
                free: Bytes::gib(14),
            }),
            baseline: None,
            engine: None,
        }
    }

    #[test]
    fn a_known_gpu_bounds_what_one_task_may_take_above_its_baseline() {
        let gpu = Some(KnownGpu {
            total: Bytes::gib(24),
            baseline: Bytes::gib(10),
        });
        // 0.85 × 24 GiB − 1 GiB − 10 GiB = 9.4 GiB for KV + extra on a per-request engine.
        let room = (24u128 << 30) * 850_000 / 1_000_000 - (11 << 30);
        let wc = |kv: u64, extra: u64| {
            WorstCase::of_requests(Bytes(kv), kv / 1000, 1000, 1, Bytes(extra))
        };
        let per_request = pool(KvPlacement::GpuBytes);
        let fits = u64::try_from(room).unwrap() - 1;
        assert_eq!(feasible(&per_request, gpu, &wc(fits, 1)), Ok(()));
        assert_eq!(
            feasible(&per_request, gpu, &wc(fits, 2)),
            Err(vec![Infeasible::Bytes {
                need: Bytes(fits + 2),
                ceiling: Bytes(u64::try_from(room).unwrap()),
            }])
        );
        // Beside an engine's pool only extra counts in bytes, against total − reserve −
        // baseline (13 GiB); a pool of unknown size holds at most 0.85 × 24 GiB − 1 GiB.
        let engine_pool = pool(KvPlacement::EnginePool);
        let big_kv = u64::try_from(room).unwrap() + (10 << 30);
        // At both bounds exactly it fits; a byte more over each, and it does not.
        assert_eq!(feasible(&engine_pool, gpu, &wc(big_kv, 13 << 30)), Ok(()));
        assert_eq!(
            feasible(&engine_pool, gpu, &wc(big_kv + 1, (13 << 30) + 1)),
            Err(vec![
                Infeasible::Bytes {
                    need: Bytes((13 << 30) + 1),
                    ceiling: Bytes(13 << 30),
                },
                Infeasible::KvPoolBytes {
                    need: Bytes(big_kv + 1),
                    ceiling: Bytes(big_kv),
                },
            ])
        );
        // With the pool's size configured, its tokens bound the KV instead.
        let sized = PoolPolicy {
            kv_capacity_tokens: Some(1000),
            ..engine_pool
        };
        assert_eq!(
            feasible(&sized, gpu, &wc(big_kv + 1, 0)),
            Err(vec![Infeasible::KvTokens {
                need: 1000,
                ceiling: 850,
            }])
        );
    }

    #[test]
    fn integer_square_roots_are_exact() {
        for v in [
            0u128,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            99,
            100,
            4_000_000,
            u128::from(u64::MAX),
        ] {
            let r = isqrt(v);
            assert!(r * r <= v && (r + 1) * (r + 1) > v, "{v}: {r}");
        }
    }

    #[test]
    fn a_pooled_kv_charge_is_the_smaller_of_the_bounds_and_the_99_percent_sum() {
        let task = Charge {
            kv_tokens: 20_000,
            kv_mean: 10_000,
            kv_var: 2_000 * 2_000,
            ..Charge::default()
        };
        // One task: 10_000 + ⌈2.326 · 2001⌉ = 14_655 (below its bound of 20_000).
        assert_eq!(task.kv_charged(), 14_655);
        // Nine: 90_000 + ⌈2.326 · (⌊√(9 · 2000²)⌋ + 1)⌉ = 90_000 + 13_959.
        assert_eq!(task.times(9).kv_charged(), 103_959);
        // A bound-only charge is its bound, summed.
        let bound = Charge {
            kv_tokens: 20_000,
            kv_mean: 20_000,
            ..Charge::default()
        };
        assert_eq!(bound.times(3).kv_charged(), 60_000);
        // A wide spread is capped by the bounds.
        let wide = Charge {
            kv_var: 50_000 * 50_000,
            ..task
        };
        assert_eq!(wide.kv_charged(), 20_000);
    }

    #[test]
    fn gpu_bytes_ceiling_is_headroom_times_total_minus_reserve() {
        let obs = used_10_of_24_gib();
        let l = PoolLedger::new(&pool(KvPlacement::GpuBytes), Some(&obs), Millis(0));
        // 0.85 × 24 GiB − 1 GiB = 19.4 GiB
        let expected = (24u128 * (1 << 30)) * 850_000 / 1_000_000 - (1 << 30);
        assert_eq!(l.ceiling_bytes, Some(expected));
    }

    #[test]
    fn stale_sample_makes_the_pool_hold() {
        let obs = used_10_of_24_gib();
        let l = PoolLedger::new(&pool(KvPlacement::GpuBytes), Some(&obs), Millis(5_001));
        assert_eq!(l.stale(), Some("GPU sample 5001ms old (max_staleness 5s)"));
    }

    #[test]
    fn engine_pool_without_capacity_is_stale() {
        let obs = PoolObservation {
            gpu: Some(GpuSample {
                at: Millis(0),
                total: Bytes::gib(80),
                used: Bytes::gib(72),
                free: Bytes::gib(8),
            }),
            baseline: None,
            engine: None,
        };
        let l = PoolLedger::new(&pool(KvPlacement::EnginePool), Some(&obs), Millis(0));
        assert!(l.stale().is_some_and(|s| s.contains("kv_capacity_tokens")));
    }

    #[test]
    fn a_pool_that_reads_its_engine_holds_without_a_fresh_reading_whatever_is_configured() {
        let gpu = GpuSample {
            at: Millis(0),
            total: Bytes::gib(80),
            used: Bytes::gib(20),
            free: Bytes::gib(60),
        };
        let fresh = EngineSample {
            at: Millis(0),
            ..EngineSample::default()
        };
        for placement in [KvPlacement::EnginePool, KvPlacement::GpuBytes] {
            let configured = PoolPolicy {
                kv_capacity_tokens: Some(100_000),
                slots: Some(4),
                needs_engine: true,
                ..pool(placement)
            };
            let down = PoolObservation {
                gpu: Some(gpu),
                baseline: None,
                engine: None,
            };
            let l = PoolLedger::new(&configured, Some(&down), Millis(0));
            assert!(
                l.stale().is_some_and(|s| s.contains("no engine reading")),
                "{placement:?}: {:?}",
                l.stale()
            );
            let old = PoolObservation {
                gpu: Some(GpuSample {
                    at: Millis(5_001),
                    ..gpu
                }),
                engine: Some(fresh),
                ..down
            };
            let l = PoolLedger::new(&configured, Some(&old), Millis(5_001));
            assert!(l.stale().is_some_and(|s| s.contains("engine metrics")));
            // Read just now: it admits.
            let now = PoolObservation {
                engine: Some(fresh),
                ..down
            };
            let l = PoolLedger::new(&configured, Some(&now), Millis(0));
            assert_eq!(l.stale(), None, "{placement:?}");
            // With `engine.url = "none"` the configured capacities are enough.
            let no_endpoint = PoolPolicy {
                needs_engine: false,
                ..configured
            };
            let l = PoolLedger::new(&no_endpoint, Some(&down), Millis(0));
            assert_eq!(l.stale(), None, "{placement:?}");
        }
    }
}
