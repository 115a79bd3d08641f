//! The daemon's Prometheus metrics (prometheus-client): every name is `kanban_governor_*`
//! with its unit, labels are pools, profiles, sources and reasons (never task ids, which would
//! make one series per task).
//!
//! Updated after every sample round ([`Metrics::observe_telemetry`]) and every tick
//! ([`Metrics::observe_tick`]); encoded on each scrape, with the `/metrics` server's own
//! counters and the standard `process_*` metrics read at that moment.
//!
//! Prometheus conventions: base units in names (`_bytes`, `_seconds`, `_ratio`, `_tokens`),
//! `_total` on counters (and only on them), and no sentinel values: a series whose value is
//! unknown (a source never read, no latency limit in force) is left out, not set to -1 or 0.

use super::exposition::{Format, to_text_004};
use super::sources::{SampledPool, lock};
use crate::adapters::metrics_http::ServerStats;
use crate::adapters::process_stats::ProcessStats;
use crate::adapters::proxy::stats::ProxyStats;
use crate::app::tick::TickReport;
use crate::governor::{Millis, Policy};
use crate::ports::EngineReading;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The label value of tasks whose assignee is no governed profile or lane.
pub const UNKNOWN_PROFILE: &str = "(ungoverned)";

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    gpu_total: Family<Labels, Gauge>,
    gpu_used: Family<Labels, Gauge>,
    gpu_free: Family<Labels, Gauge>,
    projected: Family<Labels, Gauge>,
    ceiling: Family<Labels, Gauge>,
    kv_ceiling: Family<Labels, Gauge>,
    kv_charged: Family<Labels, Gauge>,
    pool_holding: Family<Labels, Gauge>,
    engine_running: Family<Labels, Gauge>,
    engine_waiting: Family<Labels, Gauge>,
    engine_kv_usage: Family<Labels, FGauge>,
    engine_kv_used: Family<Labels, Gauge>,
    engine_kv_capacity: Family<Labels, Gauge>,
    engine_preemptions: Family<Labels, Counter>,
    ttft: Family<Labels, FGauge>,
    ttft_slo: FGauge,
    running: Family<Labels, Gauge>,
    waiting: Family<Labels, Gauge>,
    oldest_wait: FGauge,
    /// No labels: a family only so the series can be left out while no limit is in force.
    latency_limit: Family<Labels, Gauge>,
    dual_dispatcher: Gauge,
    decisions: Family<Labels, Counter>,
    dispatch: Family<Labels, Counter>,
    leaks: Counter,
    ticks: Family<Labels, Counter>,
    tick_seconds: Histogram,
    telemetry_age: Family<Labels, FGauge>,
    telemetry_up: Family<Labels, Gauge>,
    telemetry_errors: Family<Labels, Counter>,
    /// The `/metrics` server's counters, shared with it ([`Metrics::server_stats`]).
    server: Arc<ServerStats>,
    /// What the pass-through counts, shared with it ([`Metrics::proxy_stats`]).
    proxy: Arc<ProxyStats>,
    /// Per pool, the TTFT histogram of the previous engine reading (for windowed quantiles),
    /// and the error and preemption counts already exported.
    prev: Mutex<PreviousScrape>,
}

#[derive(Debug, Default)]
struct PreviousScrape {
    ttft: BTreeMap<String, Vec<(f64, u64)>>,
    errors: BTreeMap<(String, String), u64>,
    preemptions: BTreeMap<String, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        Metrics::with_proxy_stats(Arc::default())
    }

    /// As [`Metrics::new`], exporting what `proxy` counts (the pass-through's own stats, so
    /// that it can be started before the daemon).
    pub fn with_proxy_stats(proxy: Arc<ProxyStats>) -> Metrics {
        let mut root = Registry::default();
        // `process_*` are the standard names every client library exports, unprefixed.
        root.register_collector(Box::new(ProcessCollector));
        let r = root.sub_registry_with_prefix("kanban_governor");
        r.register(
            "build",
            "The governor's version, as a label on a constant 1",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let server = Arc::new(ServerStats::default());
        r.register_collector(Box::new(ServerCollector(server.clone())));
        r.register_collector(Box::new(ProxyCollector(proxy.clone())));
        macro_rules! register {
            ($name:expr, $help:expr, $unit:expr, $m:expr) => {{
                let m = $m;
                match $unit {
                    Some(u) => r.register_with_unit($name, $help, u, m.clone()),
                    None => r.register($name, $help, m.clone()),
                }
                m
            }};
        }
        let gpu_total = register!(
            "gpu_total",
            "GPU memory of the pool (latest sample)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let gpu_used = register!(
            "gpu_used",
            "GPU memory in use (latest sample)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let gpu_free = register!(
            "gpu_free",
            "GPU memory free (latest sample); headroom is computed from this",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let projected = register!(
            "projected_peak",
            "Projected GPU peak after the last decision: max(used, baseline + worst cases charged)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let ceiling = register!(
            "ceiling",
            "GPU bytes the governor may fill (headroom x total - reserve)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let kv_ceiling = register!(
            "kv_ceiling_tokens",
            "KV tokens the governor may charge in the engine's pool (headroom x capacity)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let kv_charged = register!(
            "kv_charged_tokens",
            "KV tokens charged to running and released tasks after the last decision",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let pool_holding = register!(
            "pool_holding",
            "1 when the pool releases nothing because its telemetry is missing, failing or stale",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_running = register!(
            "engine_requests_running",
            "Requests the engine runs now (its own metric)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_waiting = register!(
            "engine_requests_waiting",
            "Requests queued in the engine now (its own metric)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_kv_usage = register!(
            "engine_kv_usage",
            "Fraction of the engine's KV pool in use, as the engine reports it",
            Some(Unit::Other("ratio".to_owned())),
            Family::<Labels, FGauge>::default()
        );
        let engine_kv_used = register!(
            "engine_kv_used_tokens",
            "KV tokens in use in the engine's pool, as the engine reports them",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_kv_capacity = register!(
            "engine_kv_capacity_tokens",
            "KV tokens the engine's pool holds (from the engine, or kv_capacity_tokens in the config)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_preemptions = register!(
            "engine_preemptions",
            "Requests the engine preempted (vLLM num_preemptions_total), counted since the governor started",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let ttft = register!(
            "latency_ttft",
            "Time to first token: the probe's, or the p95 of the engine's TTFT histogram since the previous reading",
            Some(Unit::Seconds),
            Family::<Labels, FGauge>::default()
        );
        let ttft_slo = register!(
            "latency_ttft_slo",
            "The time-to-first-token target (latency.ttft_slo)",
            Some(Unit::Seconds),
            FGauge::default()
        );
        let running = register!(
            "tasks_running",
            "Tasks running or released (charged) per profile",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let waiting = register!(
            "tasks_waiting",
            "Tasks waiting for a release per profile",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let oldest_wait = register!(
            "oldest_wait",
            "How long the longest-waiting task has waited",
            Some(Unit::Seconds),
            FGauge::default()
        );
        let latency_limit = register!(
            "latency_limit_tasks",
            "The latency (AIMD) limit on running tasks in force; absent when none is",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let dual_dispatcher = register!(
            "dual_dispatcher",
            "1 when another dispatcher holds the board at the last tick (the governor then releases nothing)",
            None::<Unit>,
            Gauge::default()
        );
        let decisions = register!(
            "decisions",
            "Per-task decisions of every tick, by reason (release, or the hold reason)",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let dispatch = register!(
            "dispatch_outcomes",
            "What ticks did on the board: released, spawned, adopted, reclaimed, blocked, hermes_error",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let leaks = register!(
            "leaks",
            "Workers Hermes spawned that the governor did not release (governance leaks)",
            None::<Unit>,
            Counter::default()
        );
        let ticks = register!(
            "ticks",
            "Ticks run, by trigger (start, interval, board, finishing) and result (ok, error)",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let tick_seconds = register!(
            "tick_duration",
            "Duration of one tick (observe, decide, act)",
            Some(Unit::Seconds),
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        );
        let telemetry_age = register!(
            "telemetry_age",
            "Age of the latest good reading per pool and source (gpu, engine); absent until one succeeds",
            Some(Unit::Seconds),
            Family::<Labels, FGauge>::default()
        );
        let telemetry_up = register!(
            "telemetry_up",
            "1 when the latest read of the source succeeded",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let telemetry_errors = register!(
            "telemetry_errors",
            "Failed telemetry reads per pool and source",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        Metrics {
            registry: root,
            gpu_total,
            gpu_used,
            gpu_free,
            projected,
            ceiling,
            kv_ceiling,
            kv_charged,
            pool_holding,
            engine_running,
            engine_waiting,
            engine_kv_usage,
            engine_kv_used,
            engine_kv_capacity,
            engine_preemptions,
            ttft,
            ttft_slo,
            running,
            waiting,
            oldest_wait,
            latency_limit,
            dual_dispatcher,
            decisions,
            dispatch,
            leaks,
            ticks,
            tick_seconds,
            telemetry_age,
            telemetry_up,
            telemetry_errors,
            server,
            proxy,
            prev: Mutex::default(),
        }
    }

    /// The counters the `/metrics` server keeps, exported here; hand them to
    /// [`crate::adapters::metrics_http::serve_with`].
    pub fn server_stats(&self) -> Arc<ServerStats> {
        self.server.clone()
    }

    /// The pass-through's counters, exported here; hand them to
    /// [`crate::adapters::proxy::Proxy::new`].
    pub fn proxy_stats(&self) -> Arc<ProxyStats> {
        self.proxy.clone()
    }

    /// Record the TTFT target, for dashboards to draw against the measured TTFT.
    pub fn set_ttft_slo(&self, slo: Duration) {
        self.ttft_slo.set(slo.as_secs_f64());
    }

    /// The exposition in `format` ([`super::exposition::negotiate`] picks it).
    pub fn encode(&self, format: Format) -> String {
        let mut s = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; the collectors' own reads fail silently.
        let _ = encode(&mut s, &self.registry);
        match format {
            Format::OpenMetrics => s,
            Format::Text004 => to_text_004(&s),
        }
    }

    /// After a sample round: GPU numbers, engine signals and each source's age and health.
    pub fn observe_telemetry(&self, pools: &[SampledPool], now: Millis) {
        let mut prev = lock(&self.prev);
        for p in pools {
            let pool = l(&[("pool", &p.name)]);
            let g = lock(&p.gpu);
            if let Some((_, s)) = &g.last_ok {
                self.gpu_total
                    .get_or_create(&pool)
                    .set(i64_of(s.total.get()));
                self.gpu_used.get_or_create(&pool).set(i64_of(s.used.get()));
                self.gpu_free.get_or_create(&pool).set(i64_of(s.free.get()));
            }
            self.source_health(
                &mut prev,
                &p.name,
                "gpu",
                g.age(now),
                g.failing().is_none(),
                g.errors,
            );
            drop(g);
            if let Some(engine) = &p.engine {
                let e = lock(engine);
                if let Some((_, r)) = &e.last_ok {
                    self.engine_signals(&mut prev, &p.name, r);
                }
                self.source_health(
                    &mut prev,
                    &p.name,
                    "engine",
                    e.age(now),
                    e.failing().is_none(),
                    e.errors,
                );
            }
        }
    }

    fn source_health(
        &self,
        prev: &mut PreviousScrape,
        pool: &str,
        source: &str,
        age: Option<Millis>,
        up: bool,
        errors: u64,
    ) {
        let labels = l(&[("pool", pool), ("source", source)]);
        match age {
            Some(a) => {
                self.telemetry_age
                    .get_or_create(&labels)
                    .set(a.get() as f64 / 1000.0);
            }
            None => {
                self.telemetry_age.remove(&labels);
            }
        }
        self.telemetry_up.get_or_create(&labels).set(i64::from(up));
        let seen = prev
            .errors
            .entry((pool.to_owned(), source.to_owned()))
            .or_insert(0);
        if errors > *seen {
            self.telemetry_errors
                .get_or_create(&labels)
                .inc_by(errors - *seen);
            *seen = errors;
        } else {
            // Make the series exist at 0 from the start.
            let _ = self.telemetry_errors.get_or_create(&labels);
        }
    }

    fn engine_signals(&self, prev: &mut PreviousScrape, pool: &str, r: &EngineReading) {
        let labels = l(&[("pool", pool)]);
        if let Some(v) = r.requests_running {
            self.engine_running.get_or_create(&labels).set(i64::from(v));
        }
        if let Some(v) = r.requests_waiting {
            self.engine_waiting.get_or_create(&labels).set(i64::from(v));
        }
        if let Some(v) = r.kv_usage_fraction {
            self.engine_kv_usage.get_or_create(&labels).set(v);
        }
        if let Some(v) = r.sample.kv_used_tokens {
            self.engine_kv_used.get_or_create(&labels).set(i64_of(v));
        }
        if let Some(v) = r.sample.kv_capacity_tokens {
            self.engine_kv_capacity
                .get_or_create(&labels)
                .set(i64_of(v));
        }
        if let Some(v) = r.preemptions_total {
            // A counter of our own, advanced by the engine's increase; when the engine's count
            // goes back (it restarted), everything it counts since is new.
            let seen = prev.preemptions.entry(pool.to_owned()).or_insert(0);
            let new = if v >= *seen { v - *seen } else { v };
            self.engine_preemptions.get_or_create(&labels).inc_by(new);
            *seen = v;
        }
        let before = prev.ttft.insert(pool.to_owned(), r.ttft_buckets.clone());
        let ttft = r.probe_ttft.map(|t| t.get() as f64 / 1000.0).or_else(|| {
            before
                .as_deref()
                .and_then(|b| window_quantile(b, &r.ttft_buckets, 0.95))
        });
        if let Some(t) = ttft {
            self.ttft.get_or_create(&labels).set(t);
        }
    }

    /// After a tick: the budget, per-profile counts, decisions and what was done.
    pub fn observe_tick(
        &self,
        policy: &Policy,
        report: &TickReport,
        trigger: &str,
        seconds: f64,
        latency_limit: Option<u32>,
    ) {
        self.ticks
            .get_or_create(&l(&[("trigger", trigger), ("result", "ok")]))
            .inc();
        self.tick_seconds.observe(seconds);
        for b in &report.decision.pools {
            let pool = l(&[("pool", &b.name)]);
            if let Some(v) = b.projected_after_bytes {
                self.projected.get_or_create(&pool).set(i64_of(v.get()));
            }
            if let Some(v) = b.ceiling_bytes {
                self.ceiling.get_or_create(&pool).set(i64_of(v.get()));
            }
            if let Some(v) = b.ceiling_kv_tokens {
                self.kv_ceiling.get_or_create(&pool).set(i64_of(v));
            }
            self.kv_charged
                .get_or_create(&pool)
                .set(i64_of(b.charged_after_kv_tokens));
            self.pool_holding
                .get_or_create(&pool)
                .set(i64::from(b.stale.is_some()));
        }
        let obs = &report.observed.observation;
        let mut running: BTreeMap<&str, i64> =
            policy.profiles.iter().map(|p| (p.id.as_str(), 0)).collect();
        let mut waiting = running.clone();
        waiting.insert(UNKNOWN_PROFILE, 0);
        for r in &obs.running {
            if let Some(n) = running.get_mut(r.assignee.as_str()) {
                *n += 1;
            }
        }
        for w in &obs.waiting {
            let key = w.profile.as_ref().map_or(UNKNOWN_PROFILE, |p| p.as_str());
            *waiting.entry(key).or_insert(0) += 1;
        }
        for (p, n) in running {
            self.running.get_or_create(&l(&[("profile", p)])).set(n);
        }
        for (p, n) in waiting {
            self.waiting.get_or_create(&l(&[("profile", p)])).set(n);
        }
        let oldest = obs
            .waiting
            .iter()
            .map(|w| obs.now.since(w.waiting_since).get())
            .max()
            .unwrap_or(0);
        self.oldest_wait.set(oldest as f64 / 1000.0);
        match latency_limit {
            Some(n) => {
                self.latency_limit.get_or_create(&vec![]).set(i64::from(n));
            }
            None => {
                self.latency_limit.remove(&vec![]);
            }
        }
        self.dual_dispatcher
            .set(i64::from(obs.dual_dispatcher.is_some()));
        self.decisions
            .get_or_create(&l(&[("reason", "release")]))
            .inc_by(report.decision.release.len() as u64);
        for h in &report.decision.held {
            self.decisions
                .get_or_create(&l(&[("reason", reason_kind(&h.reason).as_str())]))
                .inc();
        }
        for (outcome, n) in [
            ("released", report.released.len()),
            ("spawned", report.spawned.len()),
            ("adopted", report.adopted.len()),
            ("reclaimed", report.reclaimed.len()),
            ("blocked", report.blocked.len()),
            ("hermes_error", report.errors.len()),
        ] {
            self.dispatch
                .get_or_create(&l(&[("outcome", outcome)]))
                .inc_by(n as u64);
        }
        self.leaks.inc_by(report.leaks.len() as u64);
    }

    /// A tick that failed before deciding (the board could not be read).
    pub fn observe_failed_tick(&self, trigger: &str, seconds: f64) {
        self.ticks
            .get_or_create(&l(&[("trigger", trigger), ("result", "error")]))
            .inc();
        self.tick_seconds.observe(seconds);
    }
}

/// The serde `kind` of a hold reason (`vram_headroom`, `stale`, ...).
pub fn reason_kind(r: &crate::governor::HoldReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The standard `process_*` metrics, read from `/proc/self` on each scrape (left out where
/// that fails).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 5] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                Some(p.resident_bytes as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                Some(p.virtual_bytes as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                Some(p.open_fds as f64),
            ),
            (
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                // Left out when unlimited.
                p.max_fds.map(|n| n as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                Some(p.start_time_seconds),
            ),
        ];
        for (name, help, unit, v) in &gauges {
            let Some(v) = v else { continue };
            let g = ConstGauge::new(*v);
            g.encode(e.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(e.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)
    }
}

/// The `/metrics` server's own counters ([`ServerStats`]).
#[derive(Debug)]
struct ServerCollector(Arc<ServerStats>);

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let open = ConstGauge::new(i64_of(s.open.load(Ordering::Relaxed)));
        open.encode(e.encode_descriptor(
            "http_connections_open",
            "Connections the /metrics server is serving now",
            None,
            open.metric_type(),
        )?)?;
        for (name, help, v) in [
            (
                "http_connections_refused",
                "Connections answered 503 because the connection cap was reached",
                &s.refused,
            ),
            (
                "http_accept_errors",
                "Failed accepts on the /metrics socket (e.g. out of file descriptors)",
                &s.accept_errors,
            ),
        ] {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The pass-through's counters ([`ProxyStats`]), per profile (`(unattributed)` for paths
/// outside `/p/<profile>/`, `(unknown)` for a profile the config does not govern). Nothing
/// is exported while the proxy has seen no request (or is off).
#[derive(Debug)]
struct ProxyCollector(Arc<ProxyStats>);

impl Collector for ProxyCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.snapshot();
        if snap.profiles.is_empty() && snap.connections_refused == 0 {
            return Ok(());
        }
        {
            let m = e.encode_descriptor(
                "proxy_connections_refused",
                "Client connections to the pass-through answered 503 and closed because its connection cap was reached",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            ConstCounter::new(snap.connections_refused).encode(m)?;
        }
        {
            let mut m = e.encode_descriptor(
                "proxy_requests",
                "Requests through the pass-through that ended, by profile and outcome (ok, http_4xx, http_5xx, unreachable, upstream_reset, client_gone, too_large, unknown_profile)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (profile, p) in &snap.profiles {
                for (outcome, n) in &p.requests {
                    let labels = [("profile", profile.as_str()), ("outcome", outcome.name())];
                    ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, estimated) in [
            (
                "proxy_tokens",
                "Tokens of requests through the pass-through that ended, by profile and kind (prompt, generated): the engine's usage where it sent one, else an estimate (bytes / 4)",
                false,
            ),
            (
                "proxy_tokens_estimated",
                "Of kanban_governor_proxy_tokens_total, those estimated (the engine sent no usage)",
                true,
            ),
        ] {
            let mut m = e.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (profile, p) in &snap.profiles {
                let (prompt, generated) = if estimated {
                    (p.prompt_tokens_estimated, p.generated_tokens_estimated)
                } else {
                    (p.prompt_tokens, p.generated_tokens)
                };
                for (kind, n) in [("prompt", prompt), ("generated", generated)] {
                    let labels = [("profile", profile.as_str()), ("kind", kind)];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "proxy_in_flight",
                "Requests through the pass-through in flight now, by profile",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (profile, p) in &snap.profiles {
                let labels = [("profile", profile.as_str())];
                ConstGauge::new(i64_of(p.in_flight)).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            // Per task, bounded: task ids are never labels (`/status` lists each task's).
            let mut tasks: BTreeMap<&str, (u64, u64)> =
                snap.profiles.keys().map(|p| (p.as_str(), (0, 0))).collect();
            for t in snap.tasks.values().filter(|t| t.in_flight > 0) {
                let slot = tasks.entry(t.profile.as_str()).or_default();
                slot.0 += 1;
                slot.1 = slot.1.max(u64::from(t.in_flight));
            }
            for (name, help, most) in [
                (
                    "proxy_tasks_in_flight",
                    "Tasks with a request through the pass-through in flight now, by profile (each task's count is in /status, proxy.tasks)",
                    false,
                ),
                (
                    "proxy_task_requests_in_flight_max",
                    "The most requests one task has in flight through the pass-through now, by profile (a title request or sub-agents beside its call)",
                    true,
                ),
            ] {
                let mut m = e.encode_descriptor(
                    name,
                    help,
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                for (profile, (n, max)) in &tasks {
                    let labels = [("profile", *profile)];
                    let v = if most { *max } else { *n };
                    ConstGauge::new(i64_of(v)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = e.encode_descriptor(
            "proxy_ttft",
            "Time from a request's arrival to the first body byte of its 2xx answer, by profile",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (profile, p) in &snap.profiles {
            let labels = [("profile", profile.as_str())];
            m.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    p.ttft.sum,
                    p.ttft.count,
                    &p.ttft.buckets(),
                    None,
                )?;
        }
        Ok(())
    }
}

/// The `q` quantile of the observations between two readings of a cumulative histogram
/// (`(upper bound, cumulative count)`, ascending): the upper bound of the bucket where the
/// quantile falls. `None` when nothing was observed in between or the buckets changed.
pub fn window_quantile(before: &[(f64, u64)], now: &[(f64, u64)], q: f64) -> Option<f64> {
    if before.len() != now.len() || now.is_empty() {
        return None;
    }
    let deltas: Vec<(f64, u64)> = now
        .iter()
        .zip(before)
        .map(|((b, n), (_, m))| (*b, n.saturating_sub(*m)))
        .collect();
    let total = deltas.last()?.1;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    deltas
        .iter()
        .find(|(_, c)| *c >= want.max(1))
        .map(|(b, _)| *b)
        .filter(|b| b.is_finite())
        .or_else(|| {
            // The quantile is in the +Inf bucket: report the largest finite bound.
            deltas
                .iter()
                .rev()
                .find(|(b, _)| b.is_finite())
                .map(|(b, _)| *b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_quantile_uses_only_the_observations_since_the_last_reading() {
        let before = [(0.1, 10), (1.0, 10), (5.0, 10), (f64::INFINITY, 10)];
        let now = [(0.1, 10), (1.0, 15), (5.0, 20), (f64::INFINITY, 20)];
        // 10 new: 5 under 1 s, 5 under 5 s. p50 is 1 s, p95 is 5 s.
        assert_eq!(window_quantile(&before, &now, 0.5), Some(1.0));
        assert_eq!(window_quantile(&before, &now, 0.95), Some(5.0));
        assert_eq!(window_quantile(&now, &now, 0.95), None);
        assert_eq!(window_quantile(&before[..2], &now, 0.95), None);
    }

    #[test]
    fn names_carry_the_prefix_and_units_and_no_task_ids() {
        let m = Metrics::new();
        m.leaks.inc();
        m.decisions
            .get_or_create(&l(&[("reason", "vram_headroom")]))
            .inc();
        let text = m.encode(Format::OpenMetrics);
        assert!(text.contains("kanban_governor_leaks_total 1"), "{text}");
        assert!(
            text.contains("kanban_governor_decisions_total{reason=\"vram_headroom\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT kanban_governor_tick_duration_seconds seconds"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("kanban_governor_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }

    #[test]
    fn build_info_server_counters_and_process_metrics_are_exported_in_both_formats() {
        let m = Metrics::new();
        m.server_stats().refused.fetch_add(2, Ordering::Relaxed);
        m.server_stats().open.fetch_add(1, Ordering::Relaxed);
        let om = m.encode(Format::OpenMetrics);
        let build = format!(
            "kanban_governor_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(om.contains(&build), "{om}");
        assert!(om.contains("# TYPE kanban_governor_build info\n"), "{om}");
        assert!(
            om.contains("kanban_governor_http_connections_refused_total 2\n"),
            "{om}"
        );
        assert!(
            om.contains("kanban_governor_http_connections_open 1\n"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = m.encode(Format::Text004);
        assert!(text.contains(&build), "{text}");
        assert!(
            text.contains("# TYPE kanban_governor_http_connections_refused_total counter\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        if cfg!(target_os = "linux") {
            for name in [
                "process_resident_memory_bytes ",
                "process_cpu_seconds_total ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.lines().any(|l| l.starts_with(name)), "{name}: {text}");
            }
        }
    }

    #[test]
    fn an_age_never_read_is_left_out_not_minus_one() {
        let m = Metrics::new();
        let mut prev = PreviousScrape::default();
        let sample = "kanban_governor_telemetry_age_seconds{pool=\"p\",source=\"gpu\"}";
        m.source_health(&mut prev, "p", "gpu", None, false, 1);
        let text = m.encode(Format::Text004);
        assert!(!text.contains(sample), "{text}");
        assert!(
            text.contains("kanban_governor_telemetry_up{pool=\"p\",source=\"gpu\"} 0"),
            "{text}"
        );
        m.source_health(&mut prev, "p", "gpu", Some(Millis(1500)), true, 1);
        assert!(
            m.encode(Format::Text004)
                .contains(&format!("{sample} 1.5\n"))
        );
    }

    #[test]
    fn engine_preemptions_are_a_counter_that_survives_an_engine_restart() {
        let m = Metrics::new();
        let mut prev = PreviousScrape::default();
        for total in [5, 8, 2] {
            let r = EngineReading {
                preemptions_total: Some(total),
                ..EngineReading::default()
            };
            m.engine_signals(&mut prev, "p", &r);
        }
        let text = m.encode(Format::Text004);
        // 5, then 3 more, then the engine restarted and counted 2.
        assert!(
            text.contains("kanban_governor_engine_preemptions_total{pool=\"p\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kanban_governor_engine_preemptions_total counter\n"),
            "{text}"
        );
    }
}
