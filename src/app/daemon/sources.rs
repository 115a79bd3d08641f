//! The daemon's telemetry: every pool's GPU and engine source sampled on its own schedule,
//! the latest result of each kept with its age ("freshness per source"), and a view of them
//! that the tick reads as its [`GpuTelemetry`]/[`EngineTelemetry`] ports.
//!
//! Fail closed: the view of a pool answers an error (the pool holds as `Stale`) when its GPU
//! source's latest read failed, when its engine's latest read failed, or when the engine's
//! latest good reading is older than `max_staleness`. A good GPU sample keeps the time it was
//! taken, so `decide` itself holds a pool whose GPU samples stopped coming.

use crate::adapters::telemetry::{self, PoolTelemetry};
use crate::config::{self, Config, Telemetry};
use crate::error::UsageError;
use crate::governor::{Bytes, GpuSample, Millis};
use crate::ports::{Clock, EngineReading, EngineTelemetry, GpuTelemetry, PortError};
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};

/// The latest result of one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceState<T> {
    /// The latest good reading and when it was taken.
    pub last_ok: Option<(Millis, T)>,
    /// The latest failure and when it happened.
    pub last_error: Option<(Millis, String)>,
    /// Reads so far.
    pub reads: u64,
    /// Failed reads so far.
    pub errors: u64,
    /// When the current run of failed reads began (`None` while the latest read is good).
    pub down_since: Option<Millis>,
}

impl<T> Default for SourceState<T> {
    fn default() -> Self {
        SourceState {
            last_ok: None,
            last_error: None,
            reads: 0,
            errors: 0,
            down_since: None,
        }
    }
}

impl<T> SourceState<T> {
    /// Record one read's result, taken at `at`.
    pub fn record(&mut self, at: Millis, r: Result<T, String>) {
        self.reads += 1;
        match r {
            Ok(v) => {
                self.last_ok = Some((at, v));
                self.down_since = None;
            }
            Err(e) => {
                self.errors += 1;
                self.last_error = Some((at, e));
                self.down_since.get_or_insert(at);
            }
        }
    }

    /// The error of the latest read, if the latest read failed.
    pub fn failing(&self) -> Option<&str> {
        match (&self.last_ok, &self.last_error) {
            (Some((ok, _)), Some((err, e))) if err >= ok => Some(e),
            (None, Some((_, e))) => Some(e),
            _ => None,
        }
    }

    /// How old the latest good reading is at `now` (`None`: never read).
    pub fn age(&self, now: Millis) -> Option<Millis> {
        self.last_ok.as_ref().map(|(at, _)| now.since(*at))
    }
}

/// A source's shared state.
pub type Shared<T> = Arc<Mutex<SourceState<T>>>;

/// Lock a source's state. A panic while it was held cannot leave it half-written (every
/// write is one assignment), so a poisoned lock is used as is.
pub fn lock<T>(s: &Mutex<T>) -> MutexGuard<'_, T> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One pool's sources and their latest results.
pub struct SampledPool {
    /// The pool's name.
    pub name: String,
    /// What its GPU source is (`nvml`, `host`, `static`, `replay`).
    pub gpu_kind: &'static str,
    /// The engine's URL (or `replay`), when one is read.
    pub engine_label: Option<String>,
    /// The GPU source (read on the blocking pool).
    pub gpu_source: Arc<Mutex<Box<dyn GpuTelemetry + Send>>>,
    /// The engine source.
    pub engine_source: Option<Arc<Mutex<Box<dyn EngineTelemetry + Send>>>>,
    /// Latest GPU result.
    pub gpu: Shared<GpuSample>,
    /// Latest engine result.
    pub engine: Option<Shared<EngineReading>>,
    /// What the GPU holds with no governed task, when configured.
    pub baseline: Option<Bytes>,
    /// `engine.max_staleness` of the pool.
    pub max_staleness: Millis,
}

impl std::fmt::Debug for SampledPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampledPool")
            .field("name", &self.name)
            .field("gpu_kind", &self.gpu_kind)
            .field("engine_label", &self.engine_label)
            .finish_non_exhaustive()
    }
}

impl SampledPool {
    /// Wrap built sources.
    pub fn new(
        name: &str,
        gpu_kind: &'static str,
        engine_label: Option<String>,
        t: PoolTelemetry,
        baseline: Option<Bytes>,
        max_staleness: Millis,
    ) -> SampledPool {
        let has_engine = t.engine.is_some();
        SampledPool {
            name: name.to_owned(),
            gpu_kind,
            engine_label: engine_label.filter(|_| has_engine),
            gpu_source: Arc::new(Mutex::new(t.gpu)),
            engine_source: t.engine.map(|e| Arc::new(Mutex::new(e))),
            gpu: Arc::default(),
            engine: has_engine.then(Arc::default),
            baseline: baseline.or(t.baseline),
            max_staleness,
        }
    }

    /// The view the tick reads.
    pub fn view(&self) -> PoolView {
        PoolView {
            gpu: self.gpu.clone(),
            engine: self.engine.clone(),
            max_staleness: self.max_staleness,
        }
    }
}

/// Read the GPU source once (blocking) and record the result.
pub fn sample_gpu(
    source: &Mutex<Box<dyn GpuTelemetry + Send>>,
    into: &Mutex<SourceState<GpuSample>>,
    now: Millis,
) {
    let r = lock(source).read_gpu(now).map_err(|e| e.to_string());
    lock(into).record(now, r);
}

/// Read the engine source once (blocking) and record the result, as old as the reading says
/// it is (an engine adapter stamps it after its latency probe: a slow probe is a latency
/// signal, not stale telemetry; a slow status read still ages it), a failure when it ended.
pub fn sample_engine(
    source: &Mutex<Box<dyn EngineTelemetry + Send>>,
    into: &Mutex<SourceState<EngineReading>>,
    clock: &dyn Clock,
) {
    let r = lock(source)
        .read_engine(clock.now())
        .map_err(|e| e.to_string());
    let at = match &r {
        Ok(reading) => reading.sample.at,
        Err(_) => clock.now(),
    };
    lock(into).record(at, r);
}

/// What the tick sees of one pool: the latest samples, or an error that makes it hold.
#[derive(Debug, Clone)]
pub struct PoolView {
    gpu: Shared<GpuSample>,
    engine: Option<Shared<EngineReading>>,
    max_staleness: Millis,
}

/// Telemetry the daemon cannot use right now (the pool holds).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unseen(pub String);

impl PoolView {
    /// Why this pool must hold at `now`, if it must: a failing or never-read source, or
    /// engine metrics older than `max_staleness`.
    pub fn blind(&self, now: Millis) -> Option<String> {
        let g = lock(&self.gpu);
        if let Some(e) = g.failing() {
            return Some(format!("GPU: {e}"));
        }
        if g.last_ok.is_none() {
            return Some("GPU: no sample yet".into());
        }
        drop(g);
        if let Some(engine) = &self.engine {
            let e = lock(engine);
            if let Some(err) = e.failing() {
                return Some(format!("engine: {err}"));
            }
            match e.age(now) {
                None => return Some("engine: no reading yet".into()),
                Some(age) if age > self.max_staleness => {
                    return Some(format!(
                        "engine metrics {age} old (max_staleness {})",
                        self.max_staleness
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }
}

impl GpuTelemetry for PoolView {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        if let Some(why) = self.blind(now) {
            return Err(Box::new(Unseen(why)));
        }
        lock(&self.gpu)
            .last_ok
            .as_ref()
            .map(|(_, s)| *s)
            .ok_or_else(|| Box::new(Unseen("GPU: no sample yet".into())) as PortError)
    }
}

/// The engine part of a [`PoolView`].
#[derive(Debug, Clone)]
pub struct EngineView(pub Shared<EngineReading>);

impl EngineTelemetry for EngineView {
    fn read_engine(&mut self, _now: Millis) -> Result<EngineReading, PortError> {
        let s = lock(&self.0);
        if let Some(e) = s.failing() {
            return Err(Box::new(Unseen(e.to_owned())));
        }
        s.last_ok
            .as_ref()
            .map(|(_, r)| r.clone())
            .ok_or_else(|| Box::new(Unseen("no reading yet".into())) as PortError)
    }
}

impl PoolView {
    /// The latest good engine reading, if the pool reads an engine and it answered once.
    pub fn latest_engine(&self) -> Option<EngineReading> {
        let e = lock(self.engine.as_ref()?);
        e.last_ok.as_ref().map(|(_, r)| r.clone())
    }

    /// The engine view, when the pool reads an engine.
    pub fn engine(&self) -> Option<EngineView> {
        self.engine.clone().map(EngineView)
    }
}

fn millis(d: std::time::Duration) -> Millis {
    Millis::from_duration(d)
}

/// Build every pool's sources from the config. NVML is opened here (a missing library is a
/// usage error naming `telemetry = "static"`); engines are not contacted yet.
///
/// Which engine a pool reads is [`crate::app::setup::engine_source`]'s rule, the same as
/// `tick`'s: every pool reads its engine unless the config says `engine.url = "none"`.
///
/// With `probe = false` no latency probe is sent (the latency signal is the pass-through's).
///
/// # Errors
///
/// A [`UsageError`] naming the pool and the fix.
pub fn build(cfg: &Config, probe: bool) -> Result<Vec<SampledPool>, UsageError> {
    cfg.pools
        .iter()
        .map(|p| {
            let prefix = if p.name == config::DEFAULT_POOL
                && !cfg.sources.keys().any(|k| k.starts_with("pools.default."))
            {
                String::new()
            } else {
                format!("pools.{}.", p.name)
            };
            let gpu = crate::app::setup::gpu_source(p, &prefix)?;
            let kind = match &p.gpu.telemetry {
                Telemetry::Nvml => "nvml",
                Telemetry::Host => "host",
                Telemetry::Static => "static",
                Telemetry::Replay(_) => "replay",
            };
            let mut engine = crate::app::setup::engine_source(p, true);
            if let Some(e) = engine.as_mut().filter(|_| !probe) {
                e.probe = None;
            }
            let t = telemetry::build_pool(&p.name, &gpu, engine.as_ref())?;
            // A replay that recorded the engine replays it (build_pool ignores `engine` then).
            let label = match (&p.gpu.telemetry, &engine) {
                (Telemetry::Replay(_), _) | (_, None) => "replay".to_owned(),
                (_, Some(e)) => e.url.clone(),
            };
            Ok(SampledPool::new(
                &p.name,
                kind,
                Some(label),
                t,
                p.gpu.baseline,
                millis(p.engine.max_staleness),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared<T>() -> Shared<T> {
        Arc::default()
    }

    #[test]
    fn a_failed_latest_read_blinds_the_pool_until_a_good_one() {
        let gpu = shared::<GpuSample>();
        let view = PoolView {
            gpu: gpu.clone(),
            engine: None,
            max_staleness: Millis::secs(5),
        };
        assert!(view.blind(Millis(0)).unwrap().contains("no sample yet"));
        let s = GpuSample {
            at: Millis(1_000),
            total: Bytes::gib(24),
            used: Bytes::gib(4),
            free: Bytes::gib(20),
        };
        lock(&gpu).record(Millis(1_000), Ok(s));
        assert_eq!(view.clone().read_gpu(Millis(1_500)).unwrap(), s);
        lock(&gpu).record(Millis(2_000), Err("nvml: GPU lost".into()));
        lock(&gpu).record(Millis(2_050), Err("nvml: GPU lost".into()));
        let err = view.clone().read_gpu(Millis(2_100)).unwrap_err();
        assert!(err.to_string().contains("GPU lost"), "{err}");
        // Down since the first failure of the run, not the latest.
        assert_eq!(lock(&gpu).down_since, Some(Millis(2_000)));
        lock(&gpu).record(Millis(3_000), Ok(s));
        assert!(view.blind(Millis(3_000)).is_none());
        assert_eq!(lock(&gpu).down_since, None);
        assert_eq!(lock(&gpu).errors, 2);
        assert_eq!(lock(&gpu).reads, 4);
    }

    #[test]
    fn a_slow_probe_does_not_age_a_reading_and_a_slow_status_read_does() {
        use std::sync::atomic::{AtomicU64, Ordering};
        /// A clock the engine read moves on.
        struct Manual(Arc<AtomicU64>);
        impl Clock for Manual {
            fn now(&self) -> Millis {
                Millis(self.0.load(Ordering::SeqCst))
            }
        }
        /// An engine whose read takes 20 s: a probe (the reading is stamped after it, as
        /// `HttpEngine` stamps it) or a slow status endpoint (stamped before it).
        struct Slow(Arc<AtomicU64>, bool);
        impl EngineTelemetry for Slow {
            fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError> {
                self.0.fetch_add(20_000, Ordering::SeqCst);
                let mut r = EngineReading::default();
                r.sample.at = if self.1 {
                    Millis(now.get() + 20_000)
                } else {
                    now
                };
                Ok(r)
            }
        }
        for (probe, blind) in [(true, false), (false, true)] {
            let t = Arc::new(AtomicU64::new(1_000));
            let source: Mutex<Box<dyn EngineTelemetry + Send>> =
                Mutex::new(Box::new(Slow(t.clone(), probe)));
            let engine = shared::<EngineReading>();
            let gpu = shared::<GpuSample>();
            let g = GpuSample {
                at: Millis(21_000),
                total: Bytes::gib(24),
                used: Bytes::gib(4),
                free: Bytes::gib(20),
            };
            lock(&gpu).record(Millis(21_000), Ok(g));
            let view = PoolView {
                gpu,
                engine: Some(engine.clone()),
                max_staleness: Millis::secs(5),
            };
            sample_engine(&source, &engine, &Manual(t));
            let why = view.blind(Millis(21_000));
            assert_eq!(why.is_some(), blind, "probe {probe}: {why:?}");
        }
    }

    #[test]
    fn stale_or_failing_engine_metrics_blind_the_pool() {
        let gpu = shared::<GpuSample>();
        let engine = shared::<EngineReading>();
        let view = PoolView {
            gpu: gpu.clone(),
            engine: Some(engine.clone()),
            max_staleness: Millis::secs(5),
        };
        let s = GpuSample {
            at: Millis(0),
            total: Bytes::gib(24),
            used: Bytes::gib(4),
            free: Bytes::gib(20),
        };
        lock(&gpu).record(Millis(0), Ok(s));
        assert!(
            view.blind(Millis(0))
                .unwrap()
                .contains("engine: no reading")
        );
        lock(&engine).record(Millis(0), Ok(EngineReading::default()));
        assert!(view.blind(Millis(5_000)).is_none());
        let why = view.blind(Millis(5_001)).unwrap();
        assert!(why.contains("engine metrics 5001ms old"), "{why}");
        lock(&engine).record(Millis(6_000), Err("cannot connect".into()));
        lock(&gpu).record(Millis(6_000), Ok(s));
        assert!(
            view.blind(Millis(6_000))
                .unwrap()
                .contains("cannot connect")
        );
        assert!(view.engine().unwrap().read_engine(Millis(6_000)).is_err());
    }
}
