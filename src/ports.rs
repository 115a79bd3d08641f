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

/// What one read of an engine tells: the capacity sample the decision uses, plus the load
/// and latency signals the latency limit and footprint learning use.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineReading {
    /// Capacity and KV use (what `decide` needs).
    pub sample: EngineSample,
    /// Requests running in the engine now.
    pub requests_running: Option<u32>,
    /// Requests waiting (queued, deferred) in the engine now.
    pub requests_waiting: Option<u32>,
    /// Cumulative preemptions (vLLM `num_preemptions_total`), if exposed.
    pub preemptions_total: Option<u64>,
    /// Cumulative TTFT histogram, if exposed: `(upper bound seconds, cumulative count)`,
    /// ascending, the last bound `+Inf`.
    pub ttft_buckets: Vec<(f64, u64)>,
    /// Cumulative inter-token latency histogram, if exposed (vLLM
    /// `inter_token_latency_seconds`, older `time_per_output_token_seconds`; SGLang), same shape
    /// as `ttft_buckets`.
    pub itl_buckets: Vec<(f64, u64)>,
    /// Fraction (0–1) of the KV pool in use, as the engine reports it (vLLM
    /// `kv_cache_usage_perc`, SGLang `token_usage`), if exposed. `sample.kv_used_tokens` is
    /// this times the capacity when the capacity is known.
    pub kv_usage_fraction: Option<f64>,
    /// Time to first token measured by a probe request, if one was sent and answered.
    pub probe_ttft: Option<Millis>,
    /// The HTTP status of a probe the engine refused (429, 5xx): an overload signal. `None`
    /// when no probe was sent or it succeeded.
    pub probe_status: Option<u16>,
    /// The engine runs part of a model on the CPU (Ollama `size_vram < size`).
    pub offloaded: bool,
    /// The largest context (tokens) any request reached, if exposed (llama.cpp
    /// `n_tokens_max`, per-slot `n_ctx` use).
    pub peak_context_tokens: Option<u64>,
}

/// The inference engine of one pool (vLLM/SGLang/llama.cpp/Ollama metrics, replay).
pub trait EngineTelemetry {
    /// One engine reading, stamped with `now`.
    ///
    /// # Errors
    ///
    /// The engine could not be reached or its answer could not be parsed.
    fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError>;
}
