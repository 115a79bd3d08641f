//! From engine readings to latency-limit samples: the daemon's side of the AIMD limit
//! ([`crate::governor::limit`]). Each new engine reading becomes at most one [`Sample`]:
//!
//! - [`Outcome::Dropped`] (back off hard) when the engine preempted since the previous
//!   reading, refused the probe (429/5xx) or gave it no first token within its timeout, or
//!   runs part of the model on the CPU;
//! - [`Outcome::Completed`] with the TTFT otherwise: the probe's, or the p95 of the engine's
//!   TTFT histogram over the requests since the previous reading;
//! - nothing when the reading says nothing about latency (no probe, no new requests).
//!
//! With `latency.signal = "proxy"`, [`proxy_sample`] instead: the agents' own requests through
//! the pass-through, between two of its counts ([`ProxyLatency`]), give the TTFT (the p95 of
//! their time to first byte), and a 5xx answer among them, or an engine preemption or
//! offload, a drop. No probe is sent.
//!
//! [`Feed`] is what the daemon (and the scenario runner, `tests/scenarios.rs`) calls at each
//! tick: it turns the readings that arrived since the last tick into samples, each reading
//! once.
//!
//! Pure: the caller passes the readings and the running count.

use super::metrics::window_quantile;
use crate::governor::Millis;
use crate::governor::limit::{Aimd, Outcome, Sample};
use crate::ports::EngineReading;
use crate::record::state::LimitSignal;

/// The quantile of the TTFT histogram window fed to the limit.
pub const TTFT_QUANTILE: f64 = 0.95;

/// The sample `cur` gives, `prev` being the reading before it (`None` for the first).
pub fn sample_of(
    prev: Option<&EngineReading>,
    cur: &EngineReading,
    in_flight: u32,
) -> Option<Sample> {
    let preempted = matches!(
        (prev.and_then(|p| p.preemptions_total), cur.preemptions_total),
        (Some(a), Some(b)) if b > a
    );
    let refused = cur
        .probe_status
        .is_some_and(|s| s == 429 || (500..600).contains(&s))
        || cur.probe_timed_out.is_some();
    let outcome = if preempted || refused || cur.offloaded {
        Outcome::Dropped
    } else if let Some(ttft) = cur.probe_ttft {
        Outcome::Completed { ttft }
    } else {
        let q =
            prev.and_then(|p| window_quantile(&p.ttft_buckets, &cur.ttft_buckets, TTFT_QUANTILE))?;
        Outcome::Completed {
            ttft: Millis((q * 1000.0).round() as u64),
        }
    };
    Some(Sample {
        at: cur.sample.at,
        in_flight,
        outcome,
    })
}

/// What the pass-through has counted so far (cumulative), for the latency limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyLatency {
    /// When it was read.
    pub at: Millis,
    /// Time to first byte of 2xx answers, all profiles together: `(upper bound seconds,
    /// cumulative count)`, ascending, the last bound `+Inf`.
    pub ttft_buckets: Vec<(f64, u64)>,
    /// Answers the engine gave as 5xx, or could not give (unreachable, reset mid-answer).
    pub failed: u64,
}

/// Whether the engine preempted since `prev` or runs part of the model on the CPU now.
pub fn engine_dropped(prev: Option<&EngineReading>, cur: Option<&EngineReading>) -> bool {
    let Some(cur) = cur else { return false };
    let preempted = matches!(
        (prev.and_then(|p| p.preemptions_total), cur.preemptions_total),
        (Some(a), Some(b)) if b > a
    );
    preempted || cur.offloaded
}

/// The sample the proxy's counts `cur` give, `prev` being the counts at the previous sample
/// (`None` at the first: nothing to compare with yet); `engine_dropped`: an engine preempted
/// or offloaded since ([`engine_dropped`]).
pub fn proxy_sample(
    prev: Option<&ProxyLatency>,
    cur: &ProxyLatency,
    engine_dropped: bool,
    in_flight: u32,
) -> Option<Sample> {
    let prev = prev?;
    let outcome = if cur.failed > prev.failed || engine_dropped {
        Outcome::Dropped
    } else {
        let q = window_quantile(&prev.ttft_buckets, &cur.ttft_buckets, TTFT_QUANTILE)?;
        Outcome::Completed {
            ttft: Millis((q * 1000.0).round() as u64),
        }
    };
    Some(Sample {
        at: cur.at,
        in_flight,
        outcome,
    })
}

/// The readings last turned into samples, so that each is fed to the limit once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Feed {
    /// Per pool, the engine reading last fed.
    pub engines: Vec<Option<EngineReading>>,
    /// The pass-through's counts at the last sample.
    pub proxy: Option<ProxyLatency>,
}

impl Feed {
    /// The samples the readings newer than those last fed give, `in_flight` being the load
    /// they were measured under; those readings count as fed from now on.
    ///
    /// `engines`: per pool, the latest good engine reading (`None`: none yet, or no engine).
    /// Each newer one gives its [`sample_of`], unless `proxy_signal`: then it only says
    /// whether the engine dropped ([`engine_dropped`]), and `proxy`, the pass-through's counts
    /// now, gives the one sample ([`proxy_sample`]).
    pub fn samples(
        &mut self,
        engines: &[Option<EngineReading>],
        proxy_signal: bool,
        proxy: Option<ProxyLatency>,
        in_flight: u32,
    ) -> Vec<Sample> {
        if self.engines.len() < engines.len() {
            self.engines.resize(engines.len(), None);
        }
        let mut samples = Vec::new();
        let mut dropped = false;
        for (cur, last) in engines.iter().zip(self.engines.iter_mut()) {
            let Some(cur) = cur else { continue };
            let prev = last.as_ref();
            if prev.is_some_and(|p| p.sample.at >= cur.sample.at) {
                continue;
            }
            if proxy_signal {
                dropped |= engine_dropped(prev, Some(cur));
            } else {
                samples.extend(sample_of(prev, cur, in_flight));
            }
            *last = Some(cur.clone());
        }
        if let Some(cur) = proxy.filter(|_| proxy_signal) {
            samples.extend(proxy_sample(self.proxy.as_ref(), &cur, dropped, in_flight));
            self.proxy = Some(cur);
        }
        samples
    }
}

/// The limit a starting daemon runs with: the saved one when it was built from the same
/// settings and fed by the same signal, else `fresh` (what `signal` starts from). A limit from
/// probe slow start resumed under the proxy signal would hold a fresh daemon at a handful of
/// tasks the proxy never measured; one opened by the proxy resumed under a probe would skip
/// the slow start whose every step is what the probe's evidence is measured under.
pub fn resume(
    fresh: Aimd,
    signal: LimitSignal,
    saved: Option<&Aimd>,
    saved_signal: Option<LimitSignal>,
) -> Aimd {
    match saved {
        Some(a) if a.config == fresh.config && saved_signal == Some(signal) => a.clone(),
        _ => fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::EngineSample;

    fn reading(at: u64) -> EngineReading {
        EngineReading {
            sample: EngineSample {
                at: Millis(at),
                ..EngineSample::default()
            },
            ..EngineReading::default()
        }
    }

    #[test]
    fn preemptions_refusals_and_offload_are_drops() {
        let mut a = reading(0);
        a.preemptions_total = Some(3);
        let mut b = reading(1_000);
        b.preemptions_total = Some(4);
        b.probe_ttft = Some(Millis(100));
        assert_eq!(
            sample_of(Some(&a), &b, 2).unwrap().outcome,
            Outcome::Dropped
        );
        let mut c = reading(2_000);
        c.probe_status = Some(503);
        assert_eq!(
            sample_of(Some(&b), &c, 2).unwrap().outcome,
            Outcome::Dropped
        );
        let mut d = reading(3_000);
        d.offloaded = true;
        assert_eq!(sample_of(None, &d, 1).unwrap().outcome, Outcome::Dropped);
    }

    #[test]
    fn the_probe_or_the_histogram_window_gives_the_ttft() {
        let mut a = reading(0);
        a.probe_ttft = Some(Millis(250));
        let s = sample_of(None, &a, 3).unwrap();
        assert_eq!(
            (s.at, s.in_flight, s.outcome),
            (Millis(0), 3, Outcome::Completed { ttft: Millis(250) })
        );
        let mut h0 = reading(0);
        h0.ttft_buckets = vec![(0.5, 4), (2.5, 4), (f64::INFINITY, 4)];
        let mut h1 = reading(1_000);
        h1.ttft_buckets = vec![(0.5, 4), (2.5, 10), (f64::INFINITY, 10)];
        assert_eq!(
            sample_of(Some(&h0), &h1, 2).unwrap().outcome,
            Outcome::Completed {
                ttft: Millis(2_500)
            }
        );
        // No new requests, no probe: nothing learned.
        assert_eq!(sample_of(Some(&h1), &h1, 2), None);
        assert_eq!(sample_of(None, &h1, 2), None);
    }

    fn counts(at: u64, under_half_second: u64, total: u64, failed: u64) -> ProxyLatency {
        ProxyLatency {
            at: Millis(at),
            ttft_buckets: vec![
                (0.5, under_half_second),
                (2.5, total),
                (f64::INFINITY, total),
            ],
            failed,
        }
    }

    #[test]
    fn the_proxys_own_requests_give_the_ttft_and_a_failed_answer_or_a_preemption_a_drop() {
        let a = counts(0, 10, 10, 0);
        // The first counts only set the start of the window.
        assert_eq!(proxy_sample(None, &a, false, 2), None);
        // 20 new answers, 2 of them slower than 0.5 s: p95 is in the 2.5 s bucket.
        let b = counts(1_000, 28, 30, 0);
        let s = proxy_sample(Some(&a), &b, false, 4).unwrap();
        assert_eq!(
            (s.at, s.in_flight, s.outcome),
            (
                Millis(1_000),
                4,
                Outcome::Completed {
                    ttft: Millis(2_500)
                }
            )
        );
        // All fast: 0.5 s.
        let c = counts(2_000, 48, 50, 0);
        assert_eq!(
            proxy_sample(Some(&b), &c, false, 4).unwrap().outcome,
            Outcome::Completed { ttft: Millis(500) }
        );
        // Nothing new: nothing learned.
        assert_eq!(proxy_sample(Some(&c), &c, false, 4), None);
        // A 5xx since: a drop, even with no new TTFT.
        let d = counts(3_000, 48, 50, 1);
        assert_eq!(
            proxy_sample(Some(&c), &d, false, 4).unwrap().outcome,
            Outcome::Dropped
        );
        // The engine preempted since its last reading: a drop.
        let mut e0 = reading(0);
        e0.preemptions_total = Some(1);
        let mut e1 = reading(1_000);
        e1.preemptions_total = Some(2);
        let e = counts(4_000, 60, 60, 1);
        assert!(engine_dropped(Some(&e0), Some(&e1)));
        assert!(!engine_dropped(Some(&e1), Some(&e1)) && !engine_dropped(None, None));
        assert_eq!(
            proxy_sample(Some(&d), &e, true, 4).unwrap().outcome,
            Outcome::Dropped
        );
        assert_eq!(
            proxy_sample(Some(&d), &e, false, 4).unwrap().outcome,
            Outcome::Completed { ttft: Millis(500) }
        );
    }

    #[test]
    fn a_feed_turns_each_new_reading_into_one_sample_and_skips_the_old() {
        let mut feed = Feed::default();
        let mut a = reading(1_000);
        a.probe_ttft = Some(Millis(300));
        let mut b = reading(2_000);
        b.probe_ttft = Some(Millis(900));
        let got = feed.samples(&[Some(a.clone()), None], false, None, 3);
        assert_eq!(got, vec![sample_of(None, &a, 3).unwrap()]);
        // The same reading again, or an older one: nothing.
        assert!(feed.samples(&[Some(a.clone())], false, None, 3).is_empty());
        let got = feed.samples(&[Some(reading(500)), Some(b.clone())], false, None, 4);
        assert_eq!(got, vec![sample_of(None, &b, 4).unwrap()]);
        assert_eq!(feed.engines, vec![Some(a), Some(b)]);
    }

    #[test]
    fn with_the_proxy_signal_engine_readings_only_turn_its_sample_into_a_drop() {
        let mut feed = Feed::default();
        let mut e0 = reading(0);
        e0.preemptions_total = Some(1);
        e0.probe_ttft = Some(Millis(100));
        assert!(
            feed.samples(&[Some(e0.clone())], true, Some(counts(0, 10, 10, 0)), 2)
                .is_empty(),
            "the first counts only start the window"
        );
        let got = feed.samples(&[Some(e0)], true, Some(counts(1_000, 30, 30, 0)), 2);
        let ttft = Outcome::Completed { ttft: Millis(500) };
        assert_eq!(got.iter().map(|s| s.outcome).collect::<Vec<_>>(), [ttft]);
        let mut e1 = reading(2_000);
        e1.preemptions_total = Some(2);
        let got = feed.samples(&[Some(e1)], true, Some(counts(2_000, 50, 50, 0)), 2);
        assert_eq!(
            got.iter().map(|s| (s.at, s.outcome)).collect::<Vec<_>>(),
            [(Millis(2_000), Outcome::Dropped)]
        );
    }

    #[test]
    fn a_saved_limit_is_resumed_only_by_a_daemon_fed_by_the_same_signal() {
        use crate::governor::limit::{AimdConfig, ConcurrencyLimit};
        let config = AimdConfig {
            slo: Millis(2_000),
            min: 1,
            max: 64,
            backoff: 0.9,
            dwell: Millis(30_000),
        };
        // A probe-fed limit in slow start, doubled twice: 1 -> 2 -> 4.
        let mut probed = Aimd::new(config);
        for at in [31_000, 62_000] {
            probed.on_sample(Sample {
                at: Millis(at),
                in_flight: probed.limit(),
                outcome: Outcome::Completed { ttft: Millis(100) },
            });
        }
        assert_eq!(probed.limit(), 4);
        let engine = Some(LimitSignal::Engine);
        let proxy = Some(LimitSignal::Proxy);
        // Resumed by a daemon with the same signal...
        let r = resume(
            Aimd::new(config),
            LimitSignal::Engine,
            Some(&probed),
            engine,
        );
        assert_eq!(r, probed);
        // ...but not by one now fed by the proxy: that starts open, where memory allows.
        let r = resume(
            Aimd::open(config),
            LimitSignal::Proxy,
            Some(&probed),
            engine,
        );
        assert_eq!((r.limit(), r.is_open()), (64, true));
        // And a proxy-fed limit, lowered once, is not resumed under the engine's signal.
        let mut opened = Aimd::open(config);
        opened.on_sample(Sample {
            at: Millis(1_000),
            in_flight: 6,
            outcome: Outcome::Dropped,
        });
        assert_eq!(opened.limit(), 3);
        let r = resume(Aimd::new(config), LimitSignal::Engine, Some(&opened), proxy);
        assert_eq!(r, Aimd::new(config));
        assert_eq!(
            resume(Aimd::open(config), LimitSignal::Proxy, Some(&opened), proxy),
            opened
        );
        // A state saved before the signal was recorded says nothing of it: start afresh.
        let r = resume(Aimd::new(config), LimitSignal::Engine, Some(&probed), None);
        assert_eq!(r, Aimd::new(config));
        // Changed settings start afresh whatever the signal.
        let other = AimdConfig { max: 32, ..config };
        let r = resume(Aimd::new(other), LimitSignal::Engine, Some(&probed), engine);
        assert_eq!(r, Aimd::new(other));
    }
}
