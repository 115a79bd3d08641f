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
/// Four phases ([`Admission`]): charge what runs, order the waiting tasks as Hermes does,
/// then for each task in turn reserve what others are owed and admit it if it fits beside
/// that.
///
/// # Panics
///
/// Never for a well-formed input. `obs.pools` shorter than `policy.pools` makes the missing
/// pools stale, and `obs.learned` shorter than `policy.profiles` means "nothing learned".
pub fn decide(policy: &Policy, obs: &Observation) -> Decision {
    let mut admission = Admission::new(policy, obs);
    admission.charge_running();
    let mut release = Vec::new();
    let mut held = Vec::with_capacity(obs.waiting.len());
    for task in order(&obs.waiting) {
        match admission.admit(task) {
            Ok(released) => release.push(released),
            Err(reason) => held.push(Hold {
                id: task.id.clone(),
                profile: task.profile.clone(),
                reason,
            }),
        }
    }
    Decision {
        release,
        held,
        pools: admission.budgets(),
    }
}

/// The waiting tasks in Hermes's own order: priority desc, created_at asc. Ids break ties, so
/// the order is total and an unstable sort gives the same result whatever order the board
/// listed the tasks in.
fn order(waiting: &[WaitingTask]) -> Vec<&WaitingTask> {
    let mut order: Vec<&WaitingTask> = waiting.iter().collect();
    order.sort_unstable_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.created_at.cmp(&b.created_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    order
}

/// One decision in progress: the pools' ledgers and the counters the admission rules read,
/// updated by every release.
struct Admission<'a> {
    policy: &'a Policy,
    obs: &'a Observation,
    /// Per profile, the worst case it is charged (declared, learned or the larger).
    charged_wc: Vec<WorstCase>,
    /// Per profile, its spread where its learned footprint is charged pooled in an engine's
    /// KV pool (admission), else `None`.
    spread: Vec<Option<Spread>>,
    /// Profile lookups by name happen once per task: indexed.
    by_name: std::collections::HashMap<&'a str, usize>,
    /// Per pool, its ceilings and what is charged against them.
    ledgers: Vec<PoolLedger>,
    running_total: u32,
    running_per_profile: Vec<u32>,
    /// Per profile, its `guaranteed` tasks not yet running: room kept for them, deficit ×
    /// worst case.
    guaranteed_left: Vec<u32>,
    /// Starvation reservations per pool: the sum of the starving tasks' charges, and the
    /// first of them (named in holds). Kept as sums, so a long starving queue costs O(1) per
    /// task.
    starving: Vec<(Charge, Option<TaskId>)>,
    /// Per profile, the hold reason of its last memory check and the release count then.
    memo: Vec<Option<(usize, HoldReason)>>,
    releases: usize,
}

/// What must stay free in a pool for others while one profile's task is checked.
struct Kept {
    /// Other profiles' guaranteed room in the pool, and the first of those profiles.
    guaranteed: Charge,
    guaranteed_for: Option<ProfileId>,
    /// Starving tasks' reservations in the pool, and the first of those tasks.
    starving: Charge,
    starving_for: Option<TaskId>,
}

impl<'a> Admission<'a> {
    fn new(policy: &'a Policy, obs: &'a Observation) -> Admission<'a> {
        let learned = |i: usize| obs.learned.get(i).copied().flatten();
        let charged_wc = policy
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| footprint::effective(p.footprint, p.declared, learned(i)))
            .collect();
        let spread = policy
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| match (p.footprint, learned(i)) {
                (FootprintMode::Learned, Some(_)) => obs.spread.get(i).copied().flatten(),
                _ => None,
            })
            .collect();
        let ledgers = policy
            .pools
            .iter()
            .enumerate()
            .map(|(i, pool)| PoolLedger::new(pool, obs.pools.get(i), obs.now))
            .collect();
        let by_name = policy
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect();
        Admission {
            policy,
            obs,
            charged_wc,
            spread,
            by_name,
            ledgers,
            running_total: 0,
            running_per_profile: vec![0; policy.profiles.len()],
            guaranteed_left: vec![0; policy.profiles.len()],
            starving: vec![(Charge::default(), None); policy.pools.len()],
            memo: vec![None; policy.profiles.len()],
            releases: 0,
        }
    }

    /// Phase 1: charge what runs (and what was released but is not yet seen running), then
    /// count what each profile's guarantee still lacks.
    fn charge_running(&mut self) {
        for task in &self.obs.running {
            if let Some(&pi) = self.by_name.get(task.assignee.as_str()) {
                let profile = &self.policy.profiles[pi];
                self.running_per_profile[pi] += 1;
                if let Some(ledger) = self.ledgers.get_mut(profile.pool) {
                    let c = ledger.charge_running(
                        &self.charged_wc[pi],
                        self.spread[pi].as_ref(),
                        task.context_tokens,
                        // Only under a latency limit: it is what bounds the queue a slot
                        // charge by calls in flight can build (admission module doc).
                        task.requests_in_flight
                            .filter(|_| self.obs.latency_limit.is_some()),
                    );
                    ledger.charge(&c);
                }
            }
        }
        for ledger in &mut self.ledgers {
            ledger.seal_baseline();
        }
        self.running_total = u32::try_from(self.obs.running.len()).unwrap_or(u32::MAX);
        self.guaranteed_left = self
            .policy
            .profiles
            .iter()
            .zip(&self.running_per_profile)
            .map(|(p, &running)| p.guaranteed.saturating_sub(running))
            .collect();
    }

    /// Phases 3 and 4 for one task, in order: release it, or say why it waits. A release is
    /// charged at once, so the next task sees it.
    fn admit(&mut self, task: &WaitingTask) -> Result<Release, HoldReason> {
        let pi = self.admissible(task)?;
        let policy = self.policy;
        let profile = &policy.profiles[pi];
        let wc = self.charged_wc[pi];
        let charge = self.ledgers[profile.pool].charge_of(&wc, self.spread[pi].as_ref());
        // A profile held since the last release is held again, for the same reason: only a
        // release changes the ledger or the guaranteed room kept for others, and a growing
        // starving reservation only adds to what is kept (the reason does not name its size).
        let memoized = self.memo[pi]
            .as_ref()
            .filter(|(epoch, _)| *epoch == self.releases)
            .map(|(_, reason)| reason.clone());
        let outcome = match memoized {
            Some(reason) => Err(reason),
            None => self.fits_beside(pi, &charge, self.kept_for_others(pi)),
        };
        match outcome {
            Ok(()) => {
                self.ledgers[profile.pool].charge(&charge);
                self.releases += 1;
                self.running_total = self.running_total.saturating_add(1);
                self.running_per_profile[pi] += 1;
                self.guaranteed_left[pi] = self.guaranteed_left[pi].saturating_sub(1);
                Ok(Release {
                    id: task.id.clone(),
                    profile: profile.id.clone(),
                    charged: wc,
                })
            }
            Err(reason) => {
                self.memo[pi] = Some((self.releases, reason.clone()));
                self.reserve_if_starving(task, profile.pool, &reason, &charge);
                Err(reason)
            }
        }
    }

    /// The rules that need no memory arithmetic, in order: the task's profile (its index),
    /// or why it waits whatever the room.
    fn admissible(&self, task: &WaitingTask) -> Result<usize, HoldReason> {
        if let Some(detail) = &self.obs.dual_dispatcher {
            return Err(HoldReason::DualDispatcher {
                detail: detail.clone(),
            });
        }
        let Some(pi) = task
            .profile
            .as_ref()
            .and_then(|id| self.by_name.get(id.as_str()).copied())
        else {
            return Err(HoldReason::UnknownProfile {
                assignee: task.assignee.clone(),
            });
        };
        let profile = &self.policy.profiles[pi];
        if task.readiness == Readiness::WaitingOnParent {
            return Err(HoldReason::WaitingOnParent);
        }
        let Some(ledger) = self.ledgers.get(profile.pool) else {
            return Err(HoldReason::Stale {
                detail: format!("pool {} has no observation", profile.pool),
            });
        };
        if let Some(detail) = ledger.stale() {
            return Err(HoldReason::Stale {
                detail: detail.to_owned(),
            });
        }
        if let Some(detail) = ledger.never_fits(&self.charged_wc[pi]) {
            return Err(HoldReason::NeverFits { detail });
        }
        if let Some(max) = self.policy.max_running
            && self.running_total >= max
        {
            return Err(HoldReason::MaxRunning { max_running: max });
        }
        if let Some(max) = profile.max_parallel
            && self.running_per_profile[pi] >= max
        {
            return Err(HoldReason::PoolFull { max_parallel: max });
        }
        if let Some(limit) = self.obs.latency_limit
            && self.running_total >= limit
        {
            return Err(HoldReason::LatencyLimit { limit });
        }
        Ok(pi)
    }

    /// Phase 3, reserve: what must stay free for others while profile `pi`'s task is
    /// checked: other profiles' guaranteed room in its pool, and starving tasks'
    /// reservations in its pool.
    fn kept_for_others(&self, pi: usize) -> Kept {
        let pool = self.policy.profiles[pi].pool;
        let ledger = &self.ledgers[pool];
        let mut guaranteed = Charge::default();
        let mut guaranteed_for = None;
        for (qi, q) in self.policy.profiles.iter().enumerate() {
            if qi != pi && q.pool == pool && self.guaranteed_left[qi] > 0 {
                let c = ledger
                    .charge_of(&self.charged_wc[qi], self.spread[qi].as_ref())
                    .times(self.guaranteed_left[qi]);
                guaranteed = guaranteed.plus(&c);
                guaranteed_for.get_or_insert_with(|| q.id.clone());
            }
        }
        let (starving, starving_for) = self.starving.get(pool).cloned().unwrap_or_default();
        Kept {
            guaranteed,
            guaranteed_for,
            starving,
            starving_for,
        }
    }

    /// Phase 4, admit: whether profile `pi`'s `charge` fits beside what is `kept` for others,
    /// and if not, the reason that names what really blocks it.
    fn fits_beside(&self, pi: usize, charge: &Charge, kept: Kept) -> Result<(), HoldReason> {
        let ledger = &self.ledgers[self.policy.profiles[pi].pool];
        ledger
            .fits(charge, &kept.guaranteed.plus(&kept.starving))
            .map_err(|with_kept| {
                // Attribute the hold to what really blocks it: if it would fit without the
                // room kept for others, say whose room it is. (The fallbacks to `with_kept`
                // cannot happen: kept room is always somebody's.)
                if ledger.fits(charge, &kept.guaranteed).is_ok() {
                    kept.starving_for
                        .map_or(with_kept, |for_task| HoldReason::Reserved { for_task })
                } else {
                    match ledger.fits(charge, &Charge::default()) {
                        Ok(()) => kept.guaranteed_for.map_or(with_kept, |for_profile| {
                            HoldReason::Guaranteed { for_profile }
                        }),
                        Err(memory_reason) => memory_reason,
                    }
                }
            })
    }

    /// A task held for memory longer than `max_wait` gets its room reserved in its pool, so
    /// smaller tasks stop overtaking it.
    fn reserve_if_starving(
        &mut self,
        task: &WaitingTask,
        pool: usize,
        reason: &HoldReason,
        charge: &Charge,
    ) {
        if self.obs.now.since(task.waiting_since) >= self.policy.max_wait
            && matches!(
                reason,
                HoldReason::VramHeadroom { .. }
                    | HoldReason::KvHeadroom { .. }
                    | HoldReason::NoSlot { .. }
                    | HoldReason::Guaranteed { .. }
            )
            && let Some((sum, first)) = self.starving.get_mut(pool)
        {
            *sum = sum.plus(charge);
            first.get_or_insert_with(|| task.id.clone());
        }
    }

    /// Each pool's budget as its ledger sees it after the releases.
    fn budgets(&self) -> Vec<PoolBudget> {
        self.policy
            .pools
            .iter()
            .zip(&self.ledgers)
            .map(|(pool, ledger)| ledger.budget(&pool.name))
            .collect()
    }
}

#[cfg(test)]
mod tests;
