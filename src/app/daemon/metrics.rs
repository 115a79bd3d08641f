//! The daemon's Prometheus metrics (prometheus-client): every name is `kanban_governor_*`
//! with its unit, labels are pools, profiles, sources and reasons (never task ids, which would
//! make one series per task).
//!
//! Updated after every sample round ([`Metrics::observe_telemetry`]) and every tick
//! ([`Metrics::observe_tick`]); encoded on each scrape.

use super::sources::{SampledPool, lock};
use crate::app::tick::TickReport;
use crate::governor::{Millis, Policy};
use crate::ports::EngineReading;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

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
    engine_preemptions: Family<Labels, Gauge>,
    ttft: Family<Labels, FGauge>,
    running: Family<Labels, Gauge>,
    waiting: Family<Labels, Gauge>,
    oldest_wait: FGauge,
    latency_limit: Gauge,
    decisions: Family<Labels, Counter>,
    dispatch: Family<Labels, Counter>,
    leaks: Counter,
    ticks: Family<Labels, Counter>,
    tick_seconds: Histogram,
    telemetry_age: Family<Labels, FGauge>,
    telemetry_up: Family<Labels, Gauge>,
    telemetry_errors: Family<Labels, Counter>,
    /// Per pool, the TTFT histogram of the previous engine reading (for windowed quantiles)
    /// and the error count already exported per source.
    prev: Mutex<Prev>,
}

#[derive(Debug, Default)]
struct Prev {
    ttft: BTreeMap<String, Vec<(f64, u64)>>,
    errors: BTreeMap<(String, String), u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("kanban_governor");
        macro_rules! reg {
            ($name:expr, $help:expr, $unit:expr, $m:expr) => {{
                let m = $m;
                match $unit {
                    Some(u) => r.register_with_unit($name, $help, u, m.clone()),
                    None => r.register($name, $help, m.clone()),
                }
                m
            }};
        }
        let gpu_total = reg!(
            "gpu_total",
            "GPU memory of the pool (latest sample)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let gpu_used = reg!(
            "gpu_used",
            "GPU memory in use (latest sample)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let gpu_free = reg!(
            "gpu_free",
            "GPU memory free (latest sample); headroom is computed from this",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let projected = reg!(
            "projected_peak",
            "Projected GPU peak after the last decision: max(used, baseline + worst cases charged)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let ceiling = reg!(
            "ceiling",
            "GPU bytes the governor may fill (headroom x total - reserve)",
            Some(Unit::Bytes),
            Family::<Labels, Gauge>::default()
        );
        let kv_ceiling = reg!(
            "kv_ceiling_tokens",
            "KV tokens the governor may charge in the engine's pool (headroom x capacity)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let kv_charged = reg!(
            "kv_charged_tokens",
            "KV tokens charged to running and released tasks after the last decision",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let pool_holding = reg!(
            "pool_holding",
            "1 when the pool releases nothing because its telemetry is missing, failing or stale",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_running = reg!(
            "engine_requests_running",
            "Requests the engine runs now (its own metric)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_waiting = reg!(
            "engine_requests_waiting",
            "Requests queued in the engine now (its own metric)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let engine_kv_usage = reg!(
            "engine_kv_usage",
            "Fraction of the engine's KV pool in use, as the engine reports it",
            Some(Unit::Ratios),
            Family::<Labels, FGauge>::default()
        );
        let engine_preemptions = reg!(
            "engine_preemptions",
            "The engine's cumulative preemptions (vLLM num_preemptions_total)",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let ttft = reg!(
            "latency_ttft",
            "Time to first token: the probe's, or the p95 of the engine's TTFT histogram since the previous reading",
            Some(Unit::Seconds),
            Family::<Labels, FGauge>::default()
        );
        let running = reg!(
            "tasks_running",
            "Tasks running or released (charged) per profile",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let waiting = reg!(
            "tasks_waiting",
            "Tasks waiting for a release per profile",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let oldest_wait = reg!(
            "oldest_wait",
            "How long the longest-waiting task has waited",
            Some(Unit::Seconds),
            FGauge::default()
        );
        let latency_limit = reg!(
            "latency_limit_tasks",
            "The latency (AIMD) limit on running tasks in force; 0 when none",
            None::<Unit>,
            Gauge::default()
        );
        let decisions = reg!(
            "decisions",
            "Per-task decisions of every tick, by reason (release, or the hold reason)",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let dispatch = reg!(
            "dispatch_outcomes",
            "What ticks did on the board: released, spawned, adopted, reclaimed, blocked, hermes_error",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let leaks = reg!(
            "leaks",
            "Workers Hermes spawned that the governor did not release (governance leaks)",
            None::<Unit>,
            Counter::default()
        );
        let ticks = reg!(
            "ticks",
            "Ticks run, by trigger (start, interval, board, finishing) and result (ok, error)",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        let tick_seconds = reg!(
            "tick_duration",
            "Duration of one tick (observe, decide, act)",
            Some(Unit::Seconds),
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        );
        let telemetry_age = reg!(
            "telemetry_age",
            "Age of the latest good reading per pool and source (gpu, engine); -1 when never read",
            Some(Unit::Seconds),
            Family::<Labels, FGauge>::default()
        );
        let telemetry_up = reg!(
            "telemetry_up",
            "1 when the latest read of the source succeeded",
            None::<Unit>,
            Family::<Labels, Gauge>::default()
        );
        let telemetry_errors = reg!(
            "telemetry_errors",
            "Failed telemetry reads per pool and source",
            None::<Unit>,
            Family::<Labels, Counter>::default()
        );
        Metrics {
            registry: r,
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
            engine_preemptions,
            ttft,
            running,
            waiting,
            oldest_wait,
            latency_limit,
            decisions,
            dispatch,
            leaks,
            ticks,
            tick_seconds,
            telemetry_age,
            telemetry_up,
            telemetry_errors,
            prev: Mutex::default(),
        }
    }

    /// The Prometheus text exposition (OpenMetrics text, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
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
        prev: &mut Prev,
        pool: &str,
        source: &str,
        age: Option<Millis>,
        up: bool,
        errors: u64,
    ) {
        let labels = l(&[("pool", pool), ("source", source)]);
        self.telemetry_age
            .get_or_create(&labels)
            .set(age.map_or(-1.0, |a| a.get() as f64 / 1000.0));
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

    fn engine_signals(&self, prev: &mut Prev, pool: &str, r: &EngineReading) {
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
        if let Some(v) = r.preemptions_total {
            self.engine_preemptions
                .get_or_create(&labels)
                .set(i64_of(v));
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
        self.latency_limit.set(latency_limit.map_or(0, i64::from));
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
        let text = m.encode();
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
            assert!(line.starts_with("kanban_governor_"), "{line}");
        }
    }
}
