//! Footprint learning (DESIGN §4): from the peaks a profile's finished tasks really reached,
//! an upper estimate of the next task's peak, and the worst case it implies.
//!
//! Pure. The estimate is the larger of the largest peak seen and the upper end of a one-sided
//! 99 % prediction interval for one more task (Student's t with n − 1 degrees of freedom:
//! `mean + t(0.99, n−1) · sd · √(1 + 1/n)`), plus a 5 % margin; nothing is learned before
//! [`MIN_SAMPLES`] tasks finished. A profile whose tasks exceed their declaration is caught:
//! the estimate is not capped by the declared worst case (see [`super::footprint::effective`]
//! for how `declared`, `learned` and `max` combine).

use super::types::{Bytes, Spread, WorstCase};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Finished tasks needed before an estimate exists.
pub const MIN_SAMPLES: u64 = 8;

/// Running statistics of one profile's per-request peak context (Welford's algorithm).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeakStats {
    /// Tasks observed.
    pub n: u64,
    /// Largest peak seen, tokens.
    pub max: u64,
    mean: f64,
    m2: f64,
}

impl PeakStats {
    /// Record one finished task's peak context per request, in tokens.
    pub fn observe(&mut self, tokens: u64) {
        self.n += 1;
        self.max = self.max.max(tokens);
        let x = tokens as f64;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Mean peak, tokens.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The sample standard deviation and `t(0.99, n − 1)`, once [`MIN_SAMPLES`] exist.
    fn sd_and_t(&self) -> Option<(f64, f64)> {
        if self.n < MIN_SAMPLES {
            return None;
        }
        let n = self.n as f64;
        let sd = (self.m2 / (n - 1.0)).max(0.0).sqrt();
        let t = StudentsT::new(0.0, 1.0, n - 1.0)
            .map(|d| d.inverse_cdf(0.99))
            // Degrees of freedom ≥ 7 here; a failure would only lose the interval part.
            .unwrap_or(3.0);
        Some((sd, t))
    }

    /// The upper estimate of the next task's peak per request, once [`MIN_SAMPLES`] exist.
    pub fn upper(&self) -> Option<u64> {
        let (sd, t) = self.sd_and_t()?;
        let n = self.n as f64;
        let interval = self.mean + t * sd * (1.0 + 1.0 / n).sqrt();
        Some((interval.max(self.max as f64) * 1.05).ceil() as u64)
    }

    /// How the peaks per request spread, once [`MIN_SAMPLES`] exist: the upper end of a
    /// one-sided 99 % confidence interval for the mean (`mean + t(0.99, n−1) · sd / √n`) plus
    /// the 5 % margin, and the sample deviation plus 5 %.
    pub fn spread_per_request(&self) -> Option<(u64, u64)> {
        let (sd, t) = self.sd_and_t()?;
        let mean = self.mean + t * sd / (self.n as f64).sqrt();
        Some((mean.ceil() as u64, (sd * 1.05).ceil() as u64))
    }
}

/// The worst case a profile is charged when it learned `per_request` peak tokens: the
/// declaration's shape (requests per task, extra bytes, KV bytes per token) with that context.
pub fn learned_worst_case(declared: &WorstCase, per_request: u64) -> WorstCase {
    let requests = u64::from(declared.slots.max(1));
    let per_token = declared.kv_bytes_per_token;
    let kv_tokens = per_request.saturating_mul(requests);
    WorstCase {
        kv_bytes: Bytes(kv_tokens.saturating_mul(per_token)),
        extra_bytes: declared.extra_bytes,
        kv_tokens,
        slots: declared.slots,
        request_tokens: per_request,
        kv_bytes_per_token: per_token,
    }
}

/// The spread a profile's tasks are pooled with (admission's statistical KV charge): per
/// request, times the declared requests per task. Sub-agents of one task are taken as moving
/// together, so the deviation scales with the requests too.
pub fn learned_spread(declared: &WorstCase, stats: &PeakStats) -> Option<Spread> {
    let (mean, sd) = stats.spread_per_request()?;
    let requests = u64::from(declared.slots.max(1));
    Some(Spread {
        mean_kv_tokens: mean.saturating_mul(requests),
        sd_kv_tokens: sd.saturating_mul(requests),
        growth_per_min_kv_tokens: 0,
        growth_sd_per_min_kv_tokens: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_is_learned_before_eight_tasks() {
        let mut s = PeakStats::default();
        for _ in 0..7 {
            s.observe(1000);
        }
        assert_eq!(s.upper(), None);
        s.observe(1000);
        // No spread: the largest peak plus 5 %.
        assert_eq!(s.upper(), Some(1050));
    }

    #[test]
    fn spread_widens_the_estimate_beyond_the_largest_peak() {
        let mut s = PeakStats::default();
        for x in [1000, 3000, 1000, 3000, 1000, 3000, 1000, 3000] {
            s.observe(x);
        }
        // mean 2000, sd 1069, t(0.99, 7) = 2.998, √(1 + 1/8) = 1.0607:
        // 2000 + 3399.4 = 5399.4, × 1.05 = 5669.4.
        assert_eq!(s.upper(), Some(5670));
    }

    #[test]
    fn the_learned_worst_case_keeps_the_declared_shape() {
        let declared = WorstCase {
            kv_bytes: Bytes(2 * 65536 * 131_072),
            extra_bytes: Bytes(7),
            kv_tokens: 2 * 65536,
            slots: 2,
            request_tokens: 65536,
            kv_bytes_per_token: 131_072,
        };
        let l = learned_worst_case(&declared, 10_000);
        assert_eq!(l.kv_tokens, 20_000);
        assert_eq!(l.kv_bytes, Bytes(20_000 * 131_072));
        assert_eq!(l.extra_bytes, Bytes(7));
        assert_eq!(l.slots, 2);
        assert_eq!(l.request_tokens, 10_000);
    }

    #[test]
    fn the_spread_is_a_confidence_bound_on_the_mean_and_the_deviation() {
        let mut s = PeakStats::default();
        for x in [1000, 3000, 1000, 3000, 1000, 3000, 1000, 3000] {
            s.observe(x);
        }
        // mean 2000, sd 1069.0, t(0.99, 7) = 2.998: 2000 + 2.998 · 1069.0 / √8 = 3133.2;
        // sd × 1.05 = 1122.5.
        assert_eq!(s.spread_per_request(), Some((3134, 1123)));
        let declared = WorstCase {
            kv_bytes: Bytes(0),
            extra_bytes: Bytes(0),
            kv_tokens: 2 * 65536,
            slots: 2,
            request_tokens: 65536,
            kv_bytes_per_token: 0,
        };
        assert_eq!(
            learned_spread(&declared, &s),
            Some(Spread {
                mean_kv_tokens: 6268,
                sd_kv_tokens: 2246,
                growth_per_min_kv_tokens: 0,
                growth_sd_per_min_kv_tokens: 0,
            })
        );
        assert_eq!(learned_spread(&declared, &PeakStats::default()), None);
    }

    proptest! {
        #[test]
        fn the_estimate_is_never_below_any_peak_seen(peaks in proptest::collection::vec(1u64..200_000, 8..60)) {
            let mut s = PeakStats::default();
            for &p in &peaks {
                s.observe(p);
            }
            let u = s.upper().unwrap();
            prop_assert!(u >= *peaks.iter().max().unwrap());
        }

    }
}
