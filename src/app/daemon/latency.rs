//! From engine readings to latency-limit samples: the daemon's side of the AIMD limit
//! ([`crate::governor::limit`]). Each new engine reading becomes at most one [`Sample`]:
//!
//! - [`Outcome::Dropped`] (back off hard) when the engine preempted since the previous
//!   reading, refused the probe (429/5xx) or runs part of the model on the CPU;
//! - [`Outcome::Completed`] with the TTFT otherwise: the probe's, or the p95 of the engine's
//!   TTFT histogram over the requests since the previous reading;
//! - nothing when the reading says nothing about latency (no probe, no new requests).
//!
//! Pure: the caller passes the previous reading and the running count.

use super::metrics::window_quantile;
use crate::governor::Millis;
use crate::governor::limit::{Outcome, Sample};
use crate::ports::EngineReading;

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
        .is_some_and(|s| s == 429 || (500..600).contains(&s));
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
}
