//! The small traits the app layer is generic over. They speak domain types only (no nvml,
//! rusqlite or hyper types), so the real adapters in `adapters/` and the fakes in tests are
//! interchangeable.
//!
//! Calls are blocking; the daemon runs them on `spawn_blocking`. A failed call returns a
//! [`PortError`]; the app layer turns a failed observation into "unknown" (hold), never into
//! a crash.

use crate::governor::{EngineSample, GpuSample, Millis};

/// An adapter's error, boxed so each adapter keeps its own `thiserror` enum (and `main` can
/// still downcast it to pick an exit code).
pub type PortError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The clock. Only the app layer reads it; the decision core gets `now` as a value.
pub trait Clock {
    /// Unix epoch milliseconds now.
    fn now(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(pub std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at `at`.
    pub fn at(at: Millis) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicU64::new(at.get()))
    }

    /// Move it forward by `by`.
    pub fn advance(&self, by: Millis) {
        self.0
            .fetch_add(by.get(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// GPU memory of one pool (NVML, host memory, static, replay).
pub trait GpuTelemetry {
    /// One memory sample, summed over the pool's GPUs, stamped with `now`.
    ///
    /// # Errors
    ///
    /// The source could not be read (library missing, device lost, file unreadable).
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError>;
}

/// The inference engine of one pool (vLLM/SGLang/llama.cpp/Ollama metrics, replay).
pub trait EngineTelemetry {
    /// One engine sample, stamped with `now`.
    ///
    /// # Errors
    ///
    /// The engine could not be reached or its answer could not be parsed.
    fn read_engine(&mut self, now: Millis) -> Result<EngineSample, PortError>;
}
