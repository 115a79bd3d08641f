//! Builds a pool's telemetry sources from its settings: the GPU source (`nvml`, `host`,
//! `static`, `{ replay = ... }`) and the engine source (HTTP by `engine.kind`, or the replay).
//!
//! Building opens NVML and loads a replay file (so a missing library or a bad file is a usage
//! error at start-up, exit 2), but does not contact the engine: an engine that is down is a
//! sample error later (the pool holds), not a start-up failure.

use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::engine::{EngineKind, HttpEngine, ProbeConfig};
use crate::adapters::host_mem::HostMemory;
use crate::adapters::nvml::{GpuSelector, NvmlLibrary, NvmlTelemetry};
use crate::adapters::replay::ReplayTelemetry;
use crate::adapters::static_gpu::StaticGpu;
use crate::error::UsageError;
use crate::governor::Bytes;
use crate::ports::{EngineTelemetry, GpuTelemetry};

/// Default bound on one engine HTTP call (metrics, status, probe).
// Engines answer /metrics in milliseconds; the probe waits for a slot under load, and a
// probe that takes longer than this is itself the signal (the read fails, the pool holds).
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pool's GPU memory comes from (config `gpu.telemetry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// NVML: these GPUs (GPU 0 when empty), summed.
    Nvml {
        /// The library to load.
        library: NvmlLibrary,
        /// The pool's GPUs or MIG instances.
        gpus: Vec<GpuSelector>,
    },
    /// Host memory (`/proc/meminfo` and the cgroup limit).
    Host,
    /// Configured size; `baseline` is what the GPU holds with no governed task.
    Static {
        /// `gpu.memory_total`.
        memory_total: Bytes,
        /// Weights and other tenants, if known (else zero).
        baseline: Bytes,
    },
    /// Recorded samples.
    Replay(PathBuf),
}

/// Where a pool's engine readings come from (config `[engine]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSource {
    /// `engine.kind`.
    pub kind: EngineKind,
    /// `engine.url`.
    pub url: String,
    /// Bound on each HTTP call.
    pub timeout: Duration,
    /// Send a latency probe on each read (for engines without a TTFT histogram).
    pub probe: Option<ProbeConfig>,
}

impl EngineSource {
    /// `kind` at `url` with the default timeout, probing when the engine has no TTFT
    /// histogram (llama.cpp, Ollama, OpenAI-compatible).
    pub fn new(kind: EngineKind, url: &str) -> EngineSource {
        EngineSource {
            kind,
            url: url.to_string(),
            timeout: DEFAULT_ENGINE_TIMEOUT,
            probe: (!kind.has_ttft_histogram()).then(ProbeConfig::default),
        }
    }
}

/// A pool's telemetry sources, ready to read (each on `spawn_blocking` in the daemon).
pub struct PoolTelemetry {
    /// GPU memory.
    pub gpu: Box<dyn GpuTelemetry + Send>,
    /// The engine, when one is configured (or recorded in the replay).
    pub engine: Option<Box<dyn EngineTelemetry + Send>>,
    /// What the GPU holds with no governed task, when the source knows it (static).
    pub baseline: Option<Bytes>,
}

impl std::fmt::Debug for PoolTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTelemetry")
            .field("engine", &self.engine.is_some())
            .field("baseline", &self.baseline)
            .finish_non_exhaustive()
    }
}

/// Build pool `pool`'s sources. With `gpu = Replay` and engine parts in the recording, the
/// engine is replayed too (`engine` is then ignored); else the engine is read over HTTP.
///
/// # Errors
///
/// A [`UsageError`] naming the pool and the fix: NVML cannot be loaded or the GPU does not
/// exist, the replay file is missing or bad, the engine URL is not `http://host:port`.
pub fn build_pool(
    pool: &str,
    gpu: &GpuSource,
    engine: Option<&EngineSource>,
) -> Result<PoolTelemetry, UsageError> {
    let usage = |e: &dyn std::fmt::Display| UsageError(format!("pool {pool}: {e}"));
    let mut replayed_engine: Option<Box<dyn EngineTelemetry + Send>> = None;
    let (gpu_source, baseline): (Box<dyn GpuTelemetry + Send>, Option<Bytes>) = match gpu {
        GpuSource::Nvml { library, gpus } => (
            Box::new(NvmlTelemetry::open(library.path(), gpus).map_err(|e| usage(&e))?),
            None,
        ),
        GpuSource::Host => (Box::new(HostMemory::new()), None),
        GpuSource::Static {
            memory_total,
            baseline,
        } => (
            Box::new(StaticGpu::new(*memory_total, *baseline)),
            Some(*baseline),
        ),
        GpuSource::Replay(path) => {
            let r = ReplayTelemetry::load(path).map_err(|e| usage(&e))?;
            if r.records().iter().any(|rec| rec.engine.is_some()) {
                replayed_engine = Some(Box::new(r.clone()));
            }
            (Box::new(r), None)
        }
    };
    let engine_source: Option<Box<dyn EngineTelemetry + Send>> = match (replayed_engine, engine) {
        (Some(r), _) => Some(r),
        (None, Some(e)) => Some(Box::new(
            HttpEngine::new(e.kind, &e.url, e.timeout, e.probe.clone())
                .map_err(|err| UsageError(format!("pool {pool}: engine.url {:?}: {err}", e.url)))?,
        )),
        (None, None) => None,
    };
    Ok(PoolTelemetry {
        gpu: gpu_source,
        engine: engine_source,
        baseline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::Millis;

    #[test]
    fn static_pools_report_their_size_and_baseline() {
        let mut p = build_pool(
            "default",
            &GpuSource::Static {
                memory_total: Bytes::gib(24),
                baseline: Bytes::gib(6),
            },
            None,
        )
        .unwrap();
        assert_eq!(p.baseline, Some(Bytes::gib(6)));
        assert_eq!(p.gpu.read_gpu(Millis(1)).unwrap().free, Bytes::gib(18));
        assert!(p.engine.is_none());
    }

    #[test]
    fn nvml_without_a_library_is_a_usage_error_naming_the_pool_and_the_fix() {
        let err = build_pool(
            "big",
            &GpuSource::Nvml {
                library: NvmlLibrary::Path("/nonexistent/libnvidia-ml.so.1".into()),
                gpus: vec![],
            },
            None,
        )
        .unwrap_err();
        assert!(err.0.contains("pool big"), "{err}");
        assert!(err.0.contains("telemetry = \"static\""), "{err}");
        let chain = anyhow::Error::new(err);
        assert_eq!(crate::error::exit_code(&chain), 2);
    }

    #[test]
    fn a_replay_with_engine_parts_replays_the_engine_too() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.jsonl");
        std::fs::write(
            &f,
            "{\"t_ms\":0,\"gpu\":{\"total\":10,\"used\":1,\"free\":9},\"engine\":{\"slots\":4}}\n",
        )
        .unwrap();
        let mut p = build_pool(
            "default",
            &GpuSource::Replay(f.clone()),
            Some(&EngineSource::new(EngineKind::Vllm, "http://127.0.0.1:1")),
        )
        .unwrap();
        assert_eq!(p.gpu.read_gpu(Millis(0)).unwrap().free.get(), 9);
        let e = p.engine.as_mut().unwrap().read_engine(Millis(0)).unwrap();
        assert_eq!(e.sample.slots, Some(4));

        std::fs::write(&f, "{\"t_ms\":0,\"gpu\":{\"total\":10}}\n").unwrap();
        let err = build_pool("default", &GpuSource::Replay(f), None).unwrap_err();
        assert!(err.0.contains("line 1"), "{err}");
    }

    #[test]
    fn the_replay_fixture_plays_a_filling_kv_pool() {
        let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/replay/vllm-kv-ramp.jsonl");
        let mut p = build_pool("default", &GpuSource::Replay(f), None).unwrap();
        let engine = p.engine.as_mut().unwrap();
        let first = engine.read_engine(Millis(1_000)).unwrap();
        let later = engine.read_engine(Millis(61_000)).unwrap();
        assert_eq!(first.sample.kv_used_tokens, Some(0));
        assert_eq!(later.sample.kv_used_tokens, Some(100_000));
        assert_eq!(later.sample.at, Millis(61_000));
        assert_eq!(later.preemptions_total, Some(2));
        assert_eq!(later.ttft_buckets.last().unwrap().0, f64::INFINITY);
        let g = p.gpu.read_gpu(Millis(1_000)).unwrap();
        assert_eq!(g.total, Bytes::gib(24));
    }

    #[test]
    fn a_bad_engine_url_is_a_usage_error() {
        let err = build_pool(
            "default",
            &GpuSource::Host,
            Some(&EngineSource::new(EngineKind::Vllm, "localhost:8000")),
        )
        .unwrap_err();
        assert!(err.0.contains("engine.url"), "{err}");
    }

    #[test]
    fn engines_without_a_ttft_histogram_get_a_probe() {
        assert!(
            EngineSource::new(EngineKind::Llamacpp, "http://h:1")
                .probe
                .is_some()
        );
        assert!(
            EngineSource::new(EngineKind::Vllm, "http://h:1")
                .probe
                .is_none()
        );
    }
}
