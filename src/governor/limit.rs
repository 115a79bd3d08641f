//! Concurrency limits on running tasks driven by latency samples (Netflix concurrency-limits
//! shape): a small trait, and implementations that never read a clock.
//!
//! Pure: time arrives inside each [`Sample`]. Enforcement lives in [`crate::governor::decide`]
//! (the limit is an input there), not here.

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

/// A limit that never changes (for tests of enforcement, and for "no latency control").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedLimit(pub u32);

impl ConcurrencyLimit for FixedLimit {
    fn limit(&self) -> u32 {
        self.0
    }

    fn on_sample(&mut self, _sample: Sample) {}
}
