//! `telemetry = "static"`: a GPU whose size is configured, not measured. It reports the
//! configured baseline (weights, other tenants) as used, so the governor admits from the
//! worst-case arithmetic alone. For hosts without NVML and for planning. No I/O.

use crate::governor::{Bytes, GpuSample, Millis};
use crate::ports::{GpuTelemetry, PortError};

/// A configured GPU: `memory_total` and what it holds with no governed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticGpu {
    /// `gpu.memory_total`.
    pub total: Bytes,
    /// What the GPU holds with no governed task (weights, other tenants); zero if unknown.
    pub baseline: Bytes,
}

impl StaticGpu {
    /// A GPU of `total` bytes holding `baseline` with no governed task.
    pub fn new(total: Bytes, baseline: Bytes) -> StaticGpu {
        StaticGpu { total, baseline }
    }

    /// The sample it always reports, stamped `now`: used = baseline, free = total − baseline.
    pub fn sample(&self, now: Millis) -> GpuSample {
        let used = Bytes(self.baseline.get().min(self.total.get()));
        GpuSample {
            at: now,
            total: self.total,
            used,
            free: self.total.saturating_sub(used),
        }
    }
}

impl GpuTelemetry for StaticGpu {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        Ok(self.sample(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_baseline_as_used_and_the_rest_as_free() {
        let mut g = StaticGpu::new(Bytes::gib(24), Bytes::gib(10));
        let s = g.read_gpu(Millis(5)).unwrap();
        assert_eq!(s.at, Millis(5));
        assert_eq!(s.total, Bytes::gib(24));
        assert_eq!(s.used, Bytes::gib(10));
        assert_eq!(s.free, Bytes::gib(14));
    }

    #[test]
    fn a_baseline_above_the_total_leaves_nothing_free() {
        let s = StaticGpu::new(Bytes::gib(8), Bytes::gib(9)).sample(Millis(0));
        assert_eq!(s.used, Bytes::gib(8));
        assert_eq!(s.free, Bytes(0));
    }
}
