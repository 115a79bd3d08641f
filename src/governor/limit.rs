//! Concurrency limits on running tasks driven by latency samples (Netflix concurrency-limits
//! shape): a small trait, and implementations that never read a clock.
//!
//! Pure: time arrives inside each [`Sample`]. Enforcement lives in [`crate::governor::decide`]
//! (the limit is an input there), not here: the limit can only lower what memory allows.
//!
//! [`Aimd`] is additive-increase / multiplicative-decrease in the style of Netflix
//! concurrency-limits' `AIMDLimit` and vector's adaptive request concurrency:
//!
//! - **Start low and slow-start**: the limit starts at `min` and doubles on each raise until
//!   the first miss or drop (TCP's slow start), then **raises by one**. A raise needs the
//!   limit in use (`in_flight >= limit`) and the sample to meet the TTFT target: a limit
//!   nobody pushes against proves nothing about a higher one. Agent tasks live for minutes, so
//!   starting at the upper bound would release a whole burst before latency could say no.
//! - **Multiply down by `backoff`** (default 0.9, floored, so at least one) on a latency miss.
//! - **Drop hard** ([`DROP_FACTOR`], halve) on overload: a preemption, OOM, HTTP 429/5xx or
//!   CPU offload.
//! - **Or start open** ([`Aimd::open`], for a signal that costs no load: the agents' own
//!   requests through the proxy): the limit starts at `max`, so memory alone decides what
//!   runs, and the first miss or drop lowers it from the tasks in flight then (a limit above
//!   what ran says nothing), after which it moves as above.
//! - **Bounds** `[min, max]` always hold, and a **dwell**: raises and latency misses wait
//!   `dwell` after the last change, so one change has time to show in the latency before the
//!   next; a drop waits only for the previous drop (overload is acted on at once, but one
//!   overload episode counts once per dwell).

use super::types::Millis;
use serde::{Deserialize, Serialize};

/// One outcome fed to a limit (Netflix's `Limiter.Listener` split).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A request completed; its time to first token.
    Completed {
        /// Time to first token.
        ttft: Millis,
    },
    /// It failed before a meaningful latency existed: teaches nothing.
    Ignored,
    /// Overload: a preemption, OOM, HTTP 429/5xx, CPU offload or timeout. Back off hard.
    Dropped,
}

/// A sample: when, how many tasks were running, and the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the sample was taken.
    pub at: Millis,
    /// Running tasks when it was taken.
    pub in_flight: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// A concurrency limit on running tasks.
pub trait ConcurrencyLimit {
    /// The current limit.
    fn limit(&self) -> u32;
    /// Feed one sample.
    fn on_sample(&mut self, sample: Sample);
}

/// The multiplicative decrease on overload (a preemption, OOM, 429/5xx, offload): halve.
// Netflix's AIMDLimit uses one ratio for every drop; a preemption already costs the engine a
// recompute of the preempted context, so it is worth more than a latency miss (vector's ARC
// backs off the same way on 429/503 as on latency, but its RTT signal then also jumps).
pub const DROP_FACTOR: f64 = 0.5;

/// [`Aimd`]'s settings (from `[latency]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AimdConfig {
    /// The time-to-first-token target.
    pub slo: Millis,
    /// Lower bound (≥ 1).
    pub min: u32,
    /// Upper bound (≥ `min`).
    pub max: u32,
    /// Multiplicative decrease on a latency miss, in (0, 1).
    pub backoff: f64,
    /// Minimum time between changes (see the module docs for drops).
    pub dwell: Millis,
}

/// Why the limit last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Latency met the target with the limit in use: ×2 before the first miss or drop, then +1.
    Raised,
    /// Latency missed the target: × backoff.
    Missed,
    /// Overload: × [`DROP_FACTOR`].
    Dropped,
}

/// The AIMD latency limit (see the module docs). Serializable so a restarted daemon resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aimd {
    /// Settings.
    pub config: AimdConfig,
    limit: u32,
    last_change: Option<(Millis, Change)>,
    last_drop: Option<Millis>,
    /// Still doubling: no miss or drop seen yet.
    slow_start: bool,
    /// Started open ([`Aimd::open`]) and not lowered yet: the first decrease starts from the
    /// tasks in flight.
    #[serde(default)]
    open: bool,
}

impl Aimd {
    /// A limit starting at `config.min`, in slow start (bounds fixed up so `1 <= min <= max`).
    #[must_use]
    pub fn new(config: AimdConfig) -> Aimd {
        let min = config.min.max(1);
        let config = AimdConfig {
            min,
            max: config.max.max(min),
            ..config
        };
        Aimd {
            config,
            limit: config.min,
            last_change: None,
            last_drop: None,
            slow_start: true,
            open: false,
        }
    }

    /// A limit starting at `config.max`, out of slow start: memory decides until the first
    /// miss or drop, which lowers it from the tasks in flight then.
    #[must_use]
    pub fn open(config: AimdConfig) -> Aimd {
        let mut a = Aimd::new(config);
        a.limit = a.config.max;
        a.slow_start = false;
        a.open = true;
        a
    }

    /// Whether it started open and has not been lowered yet.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// When and why the limit last changed.
    #[must_use]
    pub fn last_change(&self) -> Option<(Millis, Change)> {
        self.last_change
    }

    fn dwelt(&self, since: Option<Millis>, now: Millis) -> bool {
        since.is_none_or(|t| now.get().saturating_sub(t.get()) >= self.config.dwell.get())
    }

    /// The limit (an open one: the tasks in flight, if fewer) times `factor`, floored, within
    /// the bounds.
    fn decreased(&self, factor: f64, in_flight: u32) -> u32 {
        let from = if self.open {
            self.limit.min(in_flight)
        } else {
            self.limit
        };
        // from ≤ u32::MAX and factor < 1, so the product fits; `as` saturates anyway.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let next = (f64::from(from) * factor).floor() as u32;
        next.clamp(self.config.min, self.config.max)
    }

    fn set(&mut self, next: u32, at: Millis, why: Change) {
        if next != self.limit {
            self.limit = next;
            self.last_change = Some((at, why));
            self.open = false;
        }
    }
}

impl ConcurrencyLimit for Aimd {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn on_sample(&mut self, s: Sample) {
        let since_change = self.last_change.map(|(t, _)| t);
        match s.outcome {
            Outcome::Ignored => {}
            Outcome::Completed { ttft } if ttft <= self.config.slo => {
                if s.in_flight >= self.limit && self.dwelt(since_change, s.at) {
                    let step = if self.slow_start { self.limit } else { 1 };
                    let next = self.limit.saturating_add(step).min(self.config.max);
                    self.set(next, s.at, Change::Raised);
                }
            }
            Outcome::Completed { .. } => {
                self.slow_start = false;
                if self.dwelt(since_change, s.at) {
                    let next = self.decreased(self.config.backoff, s.in_flight);
                    if next < self.limit {
                        self.set(next, s.at, Change::Missed);
                    }
                }
            }
            Outcome::Dropped => {
                self.slow_start = false;
                if self.dwelt(self.last_drop, s.at) {
                    let next = self.decreased(DROP_FACTOR, s.in_flight);
                    if next < self.limit {
                        self.set(next, s.at, Change::Dropped);
                        self.last_drop = Some(s.at);
                    }
                }
            }
        }
    }
}

/// A limit that never changes (for tests of enforcement, and for "no latency control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedLimit(pub u32);

impl ConcurrencyLimit for FixedLimit {
    fn limit(&self) -> u32 {
        self.0
    }

    fn on_sample(&mut self, _sample: Sample) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> AimdConfig {
        AimdConfig {
            slo: Millis(1_000),
            min: 1,
            max: 16,
            backoff: 0.9,
            dwell: Millis(10_000),
        }
    }

    fn done(at: u64, in_flight: u32, ttft: u64) -> Sample {
        Sample {
            at: Millis(at),
            in_flight,
            outcome: Outcome::Completed { ttft: Millis(ttft) },
        }
    }

    fn dropped(at: u64, in_flight: u32) -> Sample {
        Sample {
            at: Millis(at),
            in_flight,
            outcome: Outcome::Dropped,
        }
    }

    /// A limit at `start` that missed once at time 0 (so slow start is over): floor(start × 0.9).
    fn after_miss(start: u32) -> Aimd {
        let mut a = Aimd::new(AimdConfig {
            min: start,
            ..cfg()
        });
        a.config.min = 1;
        a.on_sample(done(0, start, 1_500));
        a
    }

    #[test]
    fn it_starts_at_the_lower_bound_and_doubles_until_the_first_miss() {
        let mut a = Aimd::new(cfg());
        assert_eq!(a.limit(), 1);
        for (at, want) in [(0, 2), (10_000, 4), (20_000, 8)] {
            a.on_sample(done(at, a.limit(), 500));
            assert_eq!(a.limit(), want, "at {at}");
        }
        a.on_sample(done(30_000, 8, 1_001));
        assert_eq!(a.limit(), 7, "floor(8 * 0.9)");
        a.on_sample(done(40_000, 7, 500));
        assert_eq!(a.limit(), 8, "after a miss: one at a time");
        a.on_sample(done(50_000, 8, 500));
        assert_eq!(a.limit(), 9);
        let fixed = Aimd::new(AimdConfig {
            min: 0,
            max: 0,
            ..cfg()
        });
        assert_eq!(
            (fixed.config.min, fixed.config.max, fixed.limit()),
            (1, 1, 1)
        );
    }

    #[test]
    fn an_open_limit_starts_at_the_upper_bound_and_its_first_decrease_starts_from_the_tasks_in_flight()
     {
        let mut a = Aimd::open(cfg());
        assert_eq!((a.limit(), a.is_open()), (16, true));
        // Met, in use or not: nothing to raise.
        a.on_sample(done(0, 5, 500));
        assert_eq!(a.limit(), 16);
        // Missed with 5 running: floor(5 × 0.9), not floor(16 × 0.9).
        a.on_sample(done(1_000, 5, 1_500));
        assert_eq!((a.limit(), a.is_open()), (4, false));
        // From then on, an ordinary AIMD limit: +1 when met in use after the dwell.
        a.on_sample(done(11_000, 4, 500));
        assert_eq!(a.limit(), 5);
        // A drop on an open limit halves the tasks in flight.
        let mut b = Aimd::open(cfg());
        b.on_sample(dropped(0, 6));
        assert_eq!(b.limit(), 3);
        // More in flight than the limit (released beside it): from the limit.
        let mut c = Aimd::open(AimdConfig { max: 4, ..cfg() });
        c.on_sample(done(0, 9, 1_500));
        assert_eq!(c.limit(), 3);
    }

    #[test]
    fn a_miss_multiplies_the_limit_by_the_backoff() {
        let a = after_miss(16);
        assert_eq!(a.limit(), 14, "floor(16 * 0.9)");
        let mut a = a;
        assert_eq!(a.last_change(), Some((Millis(0), Change::Missed)));
        // Within the dwell a second miss waits.
        a.on_sample(done(9_999, 9, 5_000));
        assert_eq!(a.limit(), 14);
        a.on_sample(done(10_000, 9, 5_000));
        assert_eq!(a.limit(), 12);
        // Small limits still fall by one.
        let mut b = Aimd::new(AimdConfig { min: 2, ..cfg() });
        b.config.min = 1;
        b.on_sample(done(0, 2, 5_000));
        assert_eq!(b.limit(), 1);
    }

    #[test]
    fn a_raise_needs_the_limit_in_use_a_met_target_and_the_dwell() {
        let mut a = after_miss(4);
        assert_eq!(a.limit(), 3);
        // Met, but only 2 of 3 in use: proves nothing about 4.
        a.on_sample(done(20_000, 2, 100));
        assert_eq!(a.limit(), 3);
        // Met and in use, but within the dwell of the miss at 0? No: 20 s > 10 s.
        a.on_sample(done(20_000, 3, 1_000));
        assert_eq!(a.limit(), 4, "exactly at the target counts as met");
        a.on_sample(done(25_000, 4, 100));
        assert_eq!(a.limit(), 4, "dwell: 5 s after the raise");
        a.on_sample(done(30_000, 4, 100));
        assert_eq!(a.limit(), 5);
        assert_eq!(a.last_change(), Some((Millis(30_000), Change::Raised)));
    }

    #[test]
    fn a_drop_halves_at_once_but_counts_once_per_dwell() {
        let mut a = Aimd::new(AimdConfig { min: 16, ..cfg() });
        a.config.min = 1;
        a.on_sample(done(0, 16, 100));
        assert_eq!(a.limit(), 16, "already at the upper bound");
        a.on_sample(dropped(1_000, 12));
        assert_eq!(a.limit(), 8, "floor(16 * 0.5)");
        assert_eq!(a.last_change(), Some((Millis(1_000), Change::Dropped)));
        a.on_sample(dropped(2_000, 8));
        assert_eq!(a.limit(), 8, "the same overload episode");
        a.on_sample(dropped(11_000, 8));
        assert_eq!(a.limit(), 4);
        a.on_sample(dropped(21_000, 4));
        assert_eq!(a.limit(), 2);
        a.on_sample(dropped(25_000, 2));
        assert_eq!(a.limit(), 2, "within the dwell of the last drop");
        a.on_sample(dropped(31_000, 2));
        assert_eq!(a.limit(), 1, "never below the lower bound");
        a.on_sample(dropped(31_000, 0));
        assert_eq!(a.limit(), 1);
    }

    #[test]
    fn a_drop_right_after_a_raise_is_not_delayed_by_the_dwell() {
        let mut a = after_miss(4);
        assert_eq!(a.limit(), 3);
        a.on_sample(done(10_000, 3, 10));
        assert_eq!(a.limit(), 4);
        a.on_sample(dropped(10_001, 4));
        assert_eq!(a.limit(), 2, "floor(4 * 0.5)");
    }

    #[test]
    fn ignored_samples_change_nothing() {
        let mut a = Aimd::new(cfg());
        a.on_sample(Sample {
            at: Millis(0),
            in_flight: 16,
            outcome: Outcome::Ignored,
        });
        assert_eq!((a.limit(), a.last_change()), (1, None));
    }

    #[test]
    fn it_survives_a_round_trip_through_json() {
        let mut a = Aimd::new(cfg());
        a.on_sample(dropped(5, 8));
        let back: Aimd = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Ignored),
            Just(Outcome::Dropped),
            (0u64..4_000).prop_map(|t| Outcome::Completed { ttft: Millis(t) }),
        ]
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_bounds_drops_and_misses_never_raise_and_raises_are_bounded_steps(
            min in 1u32..8,
            span in 0u32..40,
            backoff in 0.5f64..0.99,
            dwell in 0u64..20_000,
            steps in proptest::collection::vec((0u64..15_000, 0u32..60, outcome()), 1..200),
        ) {
            let config = AimdConfig { slo: Millis(1_000), min, max: min + span, backoff, dwell: Millis(dwell) };
            let mut a = Aimd::new(config);
            let mut at = 0u64;
            let mut last_raise: Option<u64> = None;
            let mut slow_start = true;
            for (gap, in_flight, outcome) in steps {
                at += gap;
                let before = a.limit();
                a.on_sample(Sample { at: Millis(at), in_flight, outcome });
                let after = a.limit();
                prop_assert!((min..=min + span).contains(&after));
                match outcome {
                    Outcome::Completed { ttft } if ttft <= Millis(1_000) => {
                        let step = if slow_start { before } else { 1 };
                        prop_assert!(after == before || after == (before + step).min(min + span));
                        if after > before {
                            prop_assert!(in_flight >= before);
                            if let Some(t) = last_raise {
                                prop_assert!(at - t >= dwell);
                            }
                            last_raise = Some(at);
                        }
                    }
                    Outcome::Ignored => prop_assert_eq!(after, before),
                    _ => {
                        prop_assert!(after <= before);
                        slow_start = false;
                    }
                }
            }
        }
    }
}
