//! The rules today's rival policies apply, as their sources state them (PEERS.md), kept apart
//! from the run loop so each can be tested on exact inputs. Pure: numbers in, decisions out.
//!
//! - Hermes ≥ 0.20's host-memory dispatch guard (hermes-agent PR #88115): [`guard_tier`].
//! - llm-d's flow-control `utilization-detector` (llm-d-router
//!   `pkg/epp/framework/plugins/flowcontrol/saturationdetector/`): [`saturated`].
//! - vLLM's optional KV watermark (PR #44594) lives in the engine model
//!   ([`super::engine::Engine::set_kv_watermark`]); this module only names its reported setting.
//!
//! How each is adapted to dispatching agent tasks (rather than the requests or workers its
//! source governs) is said where the run loop applies it (`run.rs`, `Strategy`).

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Below this share of `MemTotal` available, Hermes's guard is "elevated" (PR #88115).
pub const GUARD_ELEVATED_SHARE: f64 = 0.15;
/// Below this share, "critical" (PR #88115).
pub const GUARD_CRITICAL_SHARE: f64 = 0.05;
/// The absolute floor of the elevated threshold (PR #88115; PR #90935 would make it a knob).
pub const GUARD_ELEVATED_FLOOR_BYTES: u64 = 128 * MIB;
/// The absolute floor of the critical threshold.
pub const GUARD_CRITICAL_FLOOR_BYTES: u64 = 64 * MIB;

/// The state of Hermes's host-memory guard at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardTier {
    /// Enough memory: dispatch as usual.
    Normal,
    /// `MemAvailable` under 15 % of `MemTotal`: at most one new worker this tick.
    Elevated,
    /// Under 5 %: no new worker.
    Critical,
}

impl GuardTier {
    /// New workers this tier lets a tick start (`None`: no limit of its own).
    pub fn allowance(self) -> Option<usize> {
        match self {
            GuardTier::Normal => None,
            GuardTier::Elevated => Some(1),
            GuardTier::Critical => Some(0),
        }
    }
}

/// Hermes's guard tier for `available` of `total` host bytes (`MemAvailable`, `MemTotal`).
///
/// PEERS.md gives the tiers as shares and "absolute floors 128 MiB / 64 MiB"; we read a floor
/// as the least a threshold can be (`max(share × total, floor)`), so a small host still keeps
/// 128 MiB / 64 MiB free. A choice: the PR's text was not read here.
pub fn guard_tier(available: u64, total: u64) -> GuardTier {
    let threshold = |share: f64, floor: u64| ((total as f64 * share) as u64).max(floor);
    if available < threshold(GUARD_CRITICAL_SHARE, GUARD_CRITICAL_FLOOR_BYTES) {
        GuardTier::Critical
    } else if available < threshold(GUARD_ELEVATED_SHARE, GUARD_ELEVATED_FLOOR_BYTES) {
        GuardTier::Elevated
    } else {
        GuardTier::Normal
    }
}

/// The host's own memory (what `/proc/meminfo` shows), for Hermes's guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostMemory {
    /// `MemTotal`.
    pub total: u64,
    /// Used with no worker running: the OS, the engine's host side and, on a unified-memory
    /// host, everything the GPU holds (weights, the engine's reservation).
    pub idle_used: u64,
    /// Each running Hermes worker's resident memory.
    pub worker_rss: u64,
    /// CPU and GPU share this memory (GB10-like): the GPU's request allocations are host
    /// memory too, and so is what the governor's host telemetry reads.
    pub unified: bool,
}

/// A Hermes worker's peak RSS, measured (HERMES.md §6.3: ~123 MiB each).
pub const WORKER_RSS_BYTES: u64 = 123 * MIB;

impl HostMemory {
    /// A discrete-GPU host: RAM twice the GPU's memory and at least 32 GiB, 8 GiB used by the
    /// OS and the engine's host process. Both are assumptions (a DGX H100 has 2 TB of RAM for
    /// 640 GB of GPU memory, a workstation often less); with them the guard only trips when
    /// hundreds of workers fill RAM, which is its point: it never sees the GPU.
    pub fn discrete(gpu_total: u64) -> HostMemory {
        HostMemory {
            total: (2 * gpu_total).max(32 * GIB),
            idle_used: 8 * GIB,
            worker_rss: WORKER_RSS_BYTES,
            unified: false,
        }
    }

    /// `MemAvailable` with `workers` running and `gpu_requests` bytes allocated by the GPU's
    /// requests (counted only where the memory is unified).
    pub fn available(&self, workers: usize, gpu_requests: u64) -> u64 {
        let used = self.idle_used
            + self.worker_rss * workers as u64
            + if self.unified { gpu_requests } else { 0 };
        self.total.saturating_sub(used)
    }
}

/// llm-d's `utilization-detector` threshold on the waiting queue (score `queue / 5`).
pub const LLMD_QUEUE_DEPTH: f64 = 5.0;
/// Its threshold on KV-cache usage (score `kv_usage / 0.8`).
pub const LLMD_KV_USAGE: f64 = 0.8;
/// Metrics older than this count as fully saturated, milliseconds.
pub const LLMD_STALE_MS: u64 = 200;

/// One endpoint's metrics as the gateway last scraped them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointMetrics {
    /// When they were scraped, milliseconds.
    pub at_ms: u64,
    /// Requests waiting in the engine (vLLM `num_requests_waiting`).
    pub waiting: u64,
    /// Requests running in the engine.
    pub running: u64,
    /// KV-cache usage, 0..=1.
    pub kv_usage: f64,
}

/// An endpoint's saturation score at `now_ms`: `max((waiting + lag) / 5, kv_usage / 0.8)`,
/// where `lag = max(0, inflight − (waiting + running))` credits requests the gateway sent
/// that the scrape does not show yet; metrics older than 200 ms (or none) score 1.0, fully
/// saturated.
pub fn saturation(m: Option<&EndpointMetrics>, inflight: u64, now_ms: u64) -> f64 {
    let Some(m) = m else { return 1.0 };
    if now_ms.saturating_sub(m.at_ms) > LLMD_STALE_MS {
        return 1.0;
    }
    let lag = inflight.saturating_sub(m.waiting + m.running);
    ((m.waiting + lag) as f64 / LLMD_QUEUE_DEPTH).max(m.kv_usage / LLMD_KV_USAGE)
}

/// Whether the pool is saturated: the mean of its endpoints' scores is at least 1 (headroom 0,
/// the default). One endpoint here.
pub fn saturated(scores: &[f64]) -> bool {
    scores.is_empty() || scores.iter().sum::<f64>() / scores.len() as f64 >= 1.0
}

/// The KV watermark vLLM PR #44594 reports results for (0.05 of the pool).
pub const VLLM_WATERMARK: f64 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_starts_one_worker_under_15_percent_and_none_under_5() {
        let total = 100 * GIB;
        assert_eq!(guard_tier(16 * GIB, total), GuardTier::Normal);
        assert_eq!(guard_tier(15 * GIB, total), GuardTier::Normal);
        assert_eq!(guard_tier(15 * GIB - 1, total), GuardTier::Elevated);
        assert_eq!(guard_tier(5 * GIB, total), GuardTier::Elevated);
        assert_eq!(guard_tier(5 * GIB - 1, total), GuardTier::Critical);
        assert_eq!(GuardTier::Normal.allowance(), None);
        assert_eq!(GuardTier::Elevated.allowance(), Some(1));
        assert_eq!(GuardTier::Critical.allowance(), Some(0));
    }

    #[test]
    fn the_guards_floors_hold_on_a_small_host() {
        // 512 MiB: 15 % is 76.8 MiB and 5 % 25.6 MiB, below the floors 128 / 64 MiB.
        let total = 512 * MIB;
        assert_eq!(guard_tier(128 * MIB, total), GuardTier::Normal);
        assert_eq!(guard_tier(100 * MIB, total), GuardTier::Elevated);
        assert_eq!(guard_tier(63 * MIB, total), GuardTier::Critical);
    }

    #[test]
    fn a_gb10_with_vllm_at_0_87_keeps_the_guard_critical() {
        // #90713: vLLM at --gpu-memory-utilization 0.87 on unified memory, MemAvailable ~4 %.
        let total = 128 * GIB;
        let m = HostMemory {
            total,
            idle_used: (total as f64 * 0.96) as u64,
            worker_rss: WORKER_RSS_BYTES,
            unified: true,
        };
        assert_eq!(guard_tier(m.available(0, 0), total), GuardTier::Critical);
        let d = HostMemory::discrete(80 * GIB);
        assert_eq!(guard_tier(d.available(100, 0), d.total), GuardTier::Normal);
        assert!(
            d.available(0, 40 * GIB) == d.available(0, 0),
            "a discrete GPU's memory is not host memory"
        );
    }

    fn m(at_ms: u64, waiting: u64, running: u64, kv_usage: f64) -> EndpointMetrics {
        EndpointMetrics {
            at_ms,
            waiting,
            running,
            kv_usage,
        }
    }

    #[test]
    fn saturation_is_the_larger_of_queue_over_5_and_kv_over_0_8() {
        let s = |w, kv| saturation(Some(&m(1000, w, 10, kv)), w + 10, 1000);
        assert!((s(0, 0.4) - 0.5).abs() < 1e-12);
        assert!((s(4, 0.4) - 0.8).abs() < 1e-12);
        assert!(!saturated(&[s(4, 0.79)]));
        assert!(saturated(&[s(5, 0.1)]), "5 waiting");
        assert!(saturated(&[s(0, 0.8)]), "80 % of KV");
        // The pool's score is the mean: (0.625 + 1.25) / 2 < 1.
        assert!(!saturated(&[s(0, 0.5), s(0, 1.0)]));
    }

    #[test]
    fn metrics_older_than_200_ms_count_as_saturated() {
        let fresh = m(1000, 0, 1, 0.1);
        assert!(!saturated(&[saturation(Some(&fresh), 1, 1200)]));
        assert!(saturated(&[saturation(Some(&fresh), 1, 1201)]));
        assert!(saturated(&[saturation(None, 0, 0)]));
    }

    #[test]
    fn requests_the_scrape_does_not_show_yet_count_as_queued() {
        // The scrape saw 1 running; the gateway has sent 6 since: 5 more in flight.
        let s = saturation(Some(&m(1000, 0, 1, 0.1)), 6, 1050);
        assert!((s - 1.0).abs() < 1e-12);
        assert!(saturated(&[s]));
    }
}
