//! The decision core: which waiting tasks may start now, and why every other one waits.
//!
//! Pure code. No clock, file, environment, logging or async: time and telemetry arrive as
//! values in the [`Observation`], the config as a [`Policy`], and the answer is a
//! [`Decision`] that carries a [`HoldReason`] for every held task. The same function serves
//! `run`, `tick`, `tick --dry-run`, `status`, `plan` and the simulator's governor strategy.
//!
//! # The rule (DESIGN §4)
//!
//! For every capacity pool a task uses, with `wc` its worst case:
//!
//! - GPU bytes: `projected + reserved + wc.gpu_bytes ≤ ceiling_bytes`, where
//!   `projected = max(observed_used, baseline + Σ charged)` (or `observed_used + Σ charged`
//!   when no baseline is known) and `ceiling_bytes = headroom × total − reserve` when KV lives
//!   in GPU bytes (per-request engines), `total − reserve` when the engine preallocates its KV
//!   pool (then headroom applies to the KV pool instead).
//! - KV tokens (engines with a KV pool): `max(observed_kv_used, Σ charged) + reserved +
//!   wc.kv_tokens ≤ headroom × kv_capacity_tokens`.
//! - Slots (engines with fixed slots): `Σ charged + reserved + wc.slots ≤ slots`, and a single
//!   request must fit one slot's context.
//!
//! Running and in-flight tasks are charged their worst case from release on. In an engine's
//! KV pool, profiles with `footprint = "learned"` and enough finished tasks are charged
//! together: `min(Σ bound, Σ μ + z·√(Σ σ²))`, and a running task whose context is seen is
//! charged that context plus what it may grow over the next 45 s, once its profile learned
//! how fast its tasks grow (see [`admission`], where the safety argument is). Tasks go in
//! Hermes's order (priority desc, created_at asc) with backfill; a task held for memory longer
//! than `max_wait` gets its room reserved so smaller tasks stop overtaking it. Stale or missing
//! telemetry, or a second dispatcher on the board, holds everything.

pub mod admission;
pub mod footprint;
pub mod learned;
pub mod limit;
pub mod types;

pub use types::*;

use admission::{Charge, PoolLedger};

/// Decide which waiting tasks to release now.
///
/// Deterministic: the same `policy` and `obs` always give the same decision. Every waiting
/// task appears exactly once, either in `release` or in `held` with a reason.
///
/// # Panics
///
/// Never for a well-formed input. `obs.pools` shorter than `policy.pools` makes the missing
/// pools stale, and `obs.learned` shorter than `policy.profiles` means "nothing learned".
pub fn decide(policy: &Policy, obs: &Observation) -> Decision {
    let charged_wc: Vec<WorstCase> = policy
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let learned = obs.learned.get(i).copied().flatten();
            footprint::effective(p.footprint, p.declared, learned)
        })
        .collect();
    // Profiles whose learned footprint is charged pooled in an engine's KV pool (admission).
    let spread: Vec<Option<Spread>> = policy
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let learned = obs.learned.get(i).copied().flatten();
            match (p.footprint, learned) {
                (FootprintMode::Learned, Some(_)) => obs.spread.get(i).copied().flatten(),
                _ => None,
            }
        })
        .collect();

    let mut ledgers: Vec<PoolLedger> = policy
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| PoolLedger::new(pool, obs.pools.get(i), obs.now))
        .collect();

    // Charge what runs (and what was released but is not yet seen running).
    // Profile lookups by name happen once per task: index them.
    let by_name: std::collections::HashMap<&str, usize> = policy
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let mut running_per_profile = vec![0u32; policy.profiles.len()];
    for task in &obs.running {
        if let Some(&pi) = by_name.get(task.assignee.as_str()) {
            let profile = &policy.profiles[pi];
            running_per_profile[pi] += 1;
            if let Some(ledger) = ledgers.get_mut(profile.pool) {
                let c = ledger.charge_running(
                    &charged_wc[pi],
                    spread[pi].as_ref(),
                    task.context_tokens,
                );
                ledger.charge(&c);
            }
        }
    }
    for ledger in &mut ledgers {
        ledger.seal_baseline();
    }
    let mut running_total = u32::try_from(obs.running.len()).unwrap_or(u32::MAX);

    // Room kept for profiles' `guaranteed` tasks: deficit × worst case, per profile.
    let mut guaranteed_left: Vec<u32> = policy
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| p.guaranteed.saturating_sub(running_per_profile[i]))
        .collect();

    let mut order: Vec<&WaitingTask> = obs.waiting.iter().collect();
    // Hermes's own order. Ids break ties, so the order is total and an unstable sort gives
    // the same result whatever order the board listed the tasks in.
    order.sort_unstable_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.created_at.cmp(&b.created_at))
            .then_with(|| a.id.cmp(&b.id))
    });

    // Starvation reservations per pool: the sum of the starving tasks' charges, and the first
    // of them (named in holds). Kept as sums, so a long starving queue costs O(1) per task.
    let mut starving: Vec<(Charge, Option<TaskId>)> =
        vec![(Charge::default(), None); policy.pools.len()];
    let mut release = Vec::new();
    let mut held = Vec::with_capacity(obs.waiting.len());
    // Per profile, the hold reason of its last memory check and the release count then.
    let mut memo: Vec<Option<(usize, HoldReason)>> = vec![None; policy.profiles.len()];
    let mut releases = 0usize;

    for task in order {
        let hold = |reason: HoldReason| Hold {
            id: task.id.clone(),
            profile: task.profile.clone(),
            reason,
        };
        if let Some(detail) = &obs.dual_dispatcher {
            held.push(hold(HoldReason::DualDispatcher {
                detail: detail.clone(),
            }));
            continue;
        }
        let Some(pi) = task
            .profile
            .as_ref()
            .and_then(|id| by_name.get(id.as_str()).copied())
        else {
            held.push(hold(HoldReason::UnknownProfile {
                assignee: task.assignee.clone(),
            }));
            continue;
        };
        let profile = &policy.profiles[pi];
        if task.readiness == Readiness::WaitingOnParent {
            held.push(hold(HoldReason::WaitingOnParent));
            continue;
        }
        let Some(ledger) = ledgers.get(profile.pool) else {
            held.push(hold(HoldReason::Stale {
                detail: format!("pool {} has no observation", profile.pool),
            }));
            continue;
        };
        if let Some(detail) = ledger.stale() {
            held.push(hold(HoldReason::Stale {
                detail: detail.to_owned(),
            }));
            continue;
        }
        let wc = charged_wc[pi];
        if let Some(detail) = ledger.never_fits(&wc) {
            held.push(hold(HoldReason::NeverFits { detail }));
            continue;
        }
        if let Some(max) = policy.max_running
            && running_total >= max
        {
            held.push(hold(HoldReason::MaxRunning { max_running: max }));
            continue;
        }
        if let Some(max) = profile.max_parallel
            && running_per_profile[pi] >= max
        {
            held.push(hold(HoldReason::PoolFull { max_parallel: max }));
            continue;
        }
        if let Some(limit) = obs.latency_limit
            && running_total >= limit
        {
            held.push(hold(HoldReason::LatencyLimit { limit }));
            continue;
        }

        let ledger = &ledgers[profile.pool];
        let charge = ledger.charge_of(&wc, spread[pi].as_ref());
        // A profile held since the last release is held again, for the same reason: only a
        // release changes the ledger or the guaranteed room kept for others, and a growing
        // starving reservation only adds to what is kept (the reason does not name its size).
        let memoized = memo[pi]
            .as_ref()
            .filter(|(epoch, _)| *epoch == releases)
            .map(|(_, reason)| reason.clone());
        let outcome = match memoized {
            Some(reason) => Err(reason),
            None => {
                // What must stay free for others: other profiles' guaranteed room in this
                // pool, and starving tasks' reservations in this pool.
                let mut kept_guaranteed = Charge::default();
                let mut guaranteed_for = None;
                for (qi, q) in policy.profiles.iter().enumerate() {
                    if qi != pi && q.pool == profile.pool && guaranteed_left[qi] > 0 {
                        let c = ledger
                            .charge_of(&charged_wc[qi], spread[qi].as_ref())
                            .times(guaranteed_left[qi]);
                        kept_guaranteed = kept_guaranteed.plus(&c);
                        guaranteed_for.get_or_insert_with(|| q.id.clone());
                    }
                }
                let (kept_starving, starving_for) =
                    starving.get(profile.pool).cloned().unwrap_or_default();
                ledger
                    .fits(&charge, &kept_guaranteed.plus(&kept_starving))
                    .map_err(|with_kept| {
                        // Attribute the hold to what really blocks it: if it would fit
                        // without the room kept for others, say whose room it is. (The
                        // fallbacks to `with_kept` cannot happen: kept room is always
                        // somebody's.)
                        if ledger.fits(&charge, &kept_guaranteed).is_ok() {
                            starving_for
                                .map_or(with_kept, |for_task| HoldReason::Reserved { for_task })
                        } else {
                            match ledger.fits(&charge, &Charge::default()) {
                                Ok(()) => guaranteed_for.map_or(with_kept, |for_profile| {
                                    HoldReason::Guaranteed { for_profile }
                                }),
                                Err(memory_reason) => memory_reason,
                            }
                        }
                    })
            }
        };

        match outcome {
            Ok(()) => {
                ledgers[profile.pool].charge(&charge);
                releases += 1;
                running_total = running_total.saturating_add(1);
                running_per_profile[pi] += 1;
                guaranteed_left[pi] = guaranteed_left[pi].saturating_sub(1);
                release.push(Release {
                    id: task.id.clone(),
                    profile: profile.id.clone(),
                    charged: wc,
                });
            }
            Err(reason) => {
                memo[pi] = Some((releases, reason.clone()));
                if obs.now.since(task.waiting_since) >= policy.max_wait
                    && matches!(
                        reason,
                        HoldReason::VramHeadroom { .. }
                            | HoldReason::KvHeadroom { .. }
                            | HoldReason::NoSlot { .. }
                            | HoldReason::Guaranteed { .. }
                    )
                    && let Some((sum, first)) = starving.get_mut(profile.pool)
                {
                    *sum = sum.plus(&charge);
                    first.get_or_insert_with(|| task.id.clone());
                }
                held.push(hold(reason));
            }
        }
    }

    let pools = policy
        .pools
        .iter()
        .zip(&ledgers)
        .map(|(pool, ledger)| ledger.budget(&pool.name))
        .collect();
    Decision {
        release,
        held,
        pools,
    }
}

#[cfg(test)]
mod tests;
