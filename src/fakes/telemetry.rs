//! Telemetry whose reading the test sets, with faults scheduled over time.

use crate::governor::{Bytes, GpuSample, Millis};
use crate::ports::{EngineReading, EngineTelemetry, GpuTelemetry, PortError};

/// What a scripted source does instead of answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The read fails with this message (NVML error, engine unreachable).
    Fail(String),
    /// The read answers the last good reading again, stamped with its old time (a sampler
    /// that stopped): the governor sees it age past `max_staleness`.
    Stale,
}

/// A schedule of faults: each holds from a time (inclusive) until another (exclusive), or
/// for good. Where windows overlap, the one added last wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults(Vec<(Millis, Option<Millis>, Fault)>);

impl Faults {
    /// `fault` from `from` until `until` (`None`: for good).
    pub fn add(&mut self, from: Millis, until: Option<Millis>, fault: Fault) {
        self.0.push((from, until, fault));
    }

    /// Replace the schedule: `fault` at every time, or (`None`) no fault at all.
    pub fn set(&mut self, fault: Option<Fault>) {
        self.0.clear();
        if let Some(f) = fault {
            self.add(Millis(0), None, f);
        }
    }

    /// The fault in force at `now`, if any.
    pub fn at(&self, now: Millis) -> Option<&Fault> {
        self.0
            .iter()
            .rev()
            .find(|(from, until, _)| *from <= now && until.is_none_or(|u| now < u))
            .map(|(_, _, f)| f)
    }

    /// Answer `live` stamped `now`, unless a fault is in force: then its error, or `last`.
    fn read<T: Clone>(
        &self,
        now: Millis,
        last: &mut Option<T>,
        live: impl FnOnce() -> T,
    ) -> Result<T, PortError> {
        match self.at(now) {
            Some(Fault::Fail(e)) => Err(e.clone().into()),
            Some(Fault::Stale) => last
                .clone()
                .ok_or_else(|| "stale: no reading was ever taken".into()),
            None => {
                let r = live();
                *last = Some(r.clone());
                Ok(r)
            }
        }
    }
}

/// GPU memory whose `total` and `used` the test sets (free is `total - used`), each read
/// stamped with the time it was taken, unless [`ScriptedGpu::faults`] says otherwise.
#[derive(Debug, Clone, Default)]
pub struct ScriptedGpu {
    /// Total memory.
    pub total: Bytes,
    /// Used memory.
    pub used: Bytes,
    /// Faults over time.
    pub faults: Faults,
    last: Option<GpuSample>,
}

impl ScriptedGpu {
    /// A GPU of `total` with `used` in use, and no faults.
    pub fn new(total: Bytes, used: Bytes) -> ScriptedGpu {
        ScriptedGpu {
            total,
            used,
            ..ScriptedGpu::default()
        }
    }

    /// The last sample a read answered (not a failed one).
    pub fn last(&self) -> Option<GpuSample> {
        self.last
    }
}

impl GpuTelemetry for ScriptedGpu {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        let (total, used) = (self.total, self.used);
        self.faults.read(now, &mut self.last, || GpuSample {
            at: now,
            total,
            used,
            free: total.saturating_sub(used),
        })
    }
}

/// An engine whose reading the test sets ([`ScriptedEngine::reading`]; its `sample.at` is
/// stamped with the time of each read), unless [`ScriptedEngine::faults`] says otherwise.
#[derive(Debug, Clone, Default)]
pub struct ScriptedEngine {
    /// What a read answers.
    pub reading: EngineReading,
    /// Faults over time.
    pub faults: Faults,
    last: Option<EngineReading>,
}

impl ScriptedEngine {
    /// An engine answering `reading`, and no faults.
    pub fn new(reading: EngineReading) -> ScriptedEngine {
        ScriptedEngine {
            reading,
            ..ScriptedEngine::default()
        }
    }

    /// The last reading a read answered (not a failed one).
    pub fn last(&self) -> Option<&EngineReading> {
        self.last.as_ref()
    }
}

impl EngineTelemetry for ScriptedEngine {
    fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError> {
        let reading = &self.reading;
        self.faults.read(now, &mut self.last, || {
            let mut r = reading.clone();
            r.sample.at = now;
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_gpu_repeats_its_last_reading_with_its_old_time_and_a_failing_one_errs() {
        let mut gpu = ScriptedGpu::new(Bytes::gib(24), Bytes::gib(4));
        gpu.faults.add(Millis(10), Some(Millis(20)), Fault::Stale);
        gpu.faults
            .add(Millis(30), None, Fault::Fail("device lost".into()));
        assert_eq!(gpu.read_gpu(Millis(5)).unwrap().at, Millis(5));
        gpu.used = Bytes::gib(9);
        let s = gpu.read_gpu(Millis(15)).unwrap();
        assert_eq!((s.at, s.used), (Millis(5), Bytes::gib(4)));
        let s = gpu.read_gpu(Millis(20)).unwrap();
        assert_eq!(
            (s.at, s.used, s.free),
            (Millis(20), Bytes::gib(9), Bytes::gib(15))
        );
        assert_eq!(
            gpu.read_gpu(Millis(30)).unwrap_err().to_string(),
            "device lost"
        );
        gpu.faults.set(None);
        assert!(gpu.read_gpu(Millis(31)).is_ok());
    }

    #[test]
    fn an_engine_stale_before_any_reading_errs() {
        let mut e = ScriptedEngine::default();
        e.faults.set(Some(Fault::Stale));
        assert!(e.read_engine(Millis(1)).is_err());
        assert!(e.last().is_none());
    }
}
