//! A clock the test moves by hand.

use crate::governor::Millis;
use crate::ports::Clock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A clock the test moves by hand ([`ManualClock::advance`]); nothing else moves it.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `at`.
    pub fn at(at: Millis) -> ManualClock {
        ManualClock(AtomicU64::new(at.get()))
    }

    /// Move it forward by `by`.
    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by.get(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}
