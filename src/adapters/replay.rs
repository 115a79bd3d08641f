//! `telemetry = { replay = "file.jsonl" }`: recorded GPU and engine samples played back, so
//! the governor runs on machines without a GPU or an engine.
//!
//! One JSON object a line: `{"t_ms": 0, "gpu": {"total": .., "used": .., "free": ..},
//! "engine": {"kv_capacity_tokens": .., ...}}` (both parts optional; blank lines and lines
//! starting with `#` are skipped). `t_ms` is milliseconds since the start of the recording,
//! ascending. The first read fixes the start: a read at `now` returns the last record with
//! `t_ms ≤ now − start`, stamped `start + t_ms`, so after the last record the samples age and
//! the governor holds as stale (fail closed). Side effects: reads the file once, at load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

use crate::governor::{Bytes, EngineSample, GpuSample, Millis};
use crate::ports::{EngineReading, EngineTelemetry, GpuTelemetry, PortError};

/// A replay file problem, or a read with nothing to replay.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("replay file {path}: {source}; check gpu.telemetry = {{ replay = ... }}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a valid record.
    #[error("replay file {path} line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no records.
    #[error("replay file {path} holds no samples; record at least one line")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The recording has no GPU (or engine) part at this time.
    #[error("replay file {path}: no {part} sample at or before t_ms = {t_ms}")]
    NoSample {
        /// The file.
        path: PathBuf,
        /// `gpu` or `engine`.
        part: &'static str,
        /// The replay time asked for.
        t_ms: u64,
    },
}

impl ReplayError {
    /// Is this a problem with the file the user gave (exit 2), not with one read?
    pub fn is_usage(&self) -> bool {
        !matches!(self, ReplayError::NoSample { .. })
    }
}

/// The GPU part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayGpu {
    /// Total bytes.
    pub total: u64,
    /// Used bytes.
    pub used: u64,
    /// Free bytes.
    pub free: u64,
    /// Reserved bytes (NVML v2), informational.
    #[serde(default)]
    pub reserved: Option<u64>,
}

/// The engine part of a record: the [`EngineSample`] fields and the load/latency signals.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayEngine {
    /// KV pool capacity, tokens.
    pub kv_capacity_tokens: Option<u64>,
    /// KV tokens in use.
    pub kv_used_tokens: Option<u64>,
    /// Slots.
    pub slots: Option<u32>,
    /// Context tokens per slot.
    pub slot_context_tokens: Option<u64>,
    /// Requests running.
    pub requests_running: Option<u32>,
    /// Requests waiting.
    pub requests_waiting: Option<u32>,
    /// Cumulative preemptions.
    pub preemptions_total: Option<u64>,
    /// Cumulative TTFT histogram `[[le_seconds, count], ...]`; a bound may be `"+Inf"`.
    #[serde(deserialize_with = "buckets")]
    pub ttft_buckets: Vec<(f64, u64)>,
    /// Cumulative inter-token histogram, same shape.
    #[serde(deserialize_with = "buckets")]
    pub itl_buckets: Vec<(f64, u64)>,
    /// KV usage fraction.
    pub kv_usage_fraction: Option<f64>,
    /// Probe TTFT, ms.
    pub probe_ttft_ms: Option<u64>,
    /// Probe HTTP status (429, 5xx).
    pub probe_status: Option<u16>,
    /// The probe got no first token within this many ms (the engine's timeout).
    pub probe_timed_out_ms: Option<u64>,
    /// CPU offload.
    pub offloaded: bool,
    /// Peak context, tokens.
    pub peak_context_tokens: Option<u64>,
    /// Largest context a request in progress holds, tokens (footprint learning).
    pub busy_context_max: Option<u64>,
}

/// Histogram buckets whose bounds are numbers or `"+Inf"` (JSON has no infinity).
fn buckets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(f64, u64)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Number(f64),
        Text(String),
    }
    let raw: Vec<(Bound, u64)> = Vec::deserialize(d)?;
    raw.into_iter()
        .map(|(b, n)| match b {
            Bound::Number(x) => Ok((x, n)),
            Bound::Text(t) => crate::adapters::prom::parse_value(&t)
                .map(|x| (x, n))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "bucket bound {t:?} is not a number or \"+Inf\""
                    ))
                }),
        })
        .collect()
}

/// One record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRecord {
    /// Milliseconds since the start of the recording.
    pub t_ms: u64,
    /// GPU memory at that time.
    #[serde(default)]
    pub gpu: Option<ReplayGpu>,
    /// Engine state at that time.
    #[serde(default)]
    pub engine: Option<ReplayEngine>,
}

impl ReplayEngine {
    /// The reading, stamped `at`.
    pub fn reading(&self, at: Millis) -> EngineReading {
        EngineReading {
            sample: EngineSample {
                at,
                kv_capacity_tokens: self.kv_capacity_tokens,
                kv_used_tokens: self.kv_used_tokens,
                slots: self.slots,
                slot_context_tokens: self.slot_context_tokens,
            },
            requests_running: self.requests_running,
            requests_waiting: self.requests_waiting,
            preemptions_total: self.preemptions_total,
            ttft_buckets: self.ttft_buckets.clone(),
            itl_buckets: self.itl_buckets.clone(),
            kv_usage_fraction: self.kv_usage_fraction,
            probe_ttft: self.probe_ttft_ms.map(Millis),
            probe_status: self.probe_status,
            probe_timed_out: self.probe_timed_out_ms.map(Millis),
            offloaded: self.offloaded,
            peak_context_tokens: self.peak_context_tokens,
            busy_context_max: self.busy_context_max,
        }
    }
}

/// Parse replay text. `path` only names the file in errors.
///
/// # Errors
///
/// A line that is not a record (naming the line), `t_ms` going backwards, or no records.
pub fn parse_replay(text: &str, path: &Path) -> Result<Vec<ReplayRecord>, ReplayError> {
    let mut out: Vec<ReplayRecord> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_err = |message: String| ReplayError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let r: ReplayRecord = serde_json::from_str(t).map_err(|e| line_err(e.to_string()))?;
        if let Some(prev) = out.last()
            && r.t_ms < prev.t_ms
        {
            return Err(line_err(format!(
                "t_ms {} is before the previous line's {}; sort the records by t_ms",
                r.t_ms, prev.t_ms
            )));
        }
        if let Some(g) = r.gpu
            && g.used.saturating_add(g.free) > g.total
        {
            return Err(line_err(format!(
                "gpu used {} + free {} exceed total {}",
                g.used, g.free, g.total
            )));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(ReplayError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// A loaded recording. Implements both [`GpuTelemetry`] and [`EngineTelemetry`]; clones
/// share the records but keep their own start (each starts at its first read).
#[derive(Debug, Clone)]
pub struct ReplayTelemetry {
    path: PathBuf,
    records: Arc<Vec<ReplayRecord>>,
    start: Option<Millis>,
}

impl ReplayTelemetry {
    /// Load `path`.
    ///
    /// # Errors
    ///
    /// As [`parse_replay`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<ReplayTelemetry, ReplayError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ReplayTelemetry::from_records(
            path,
            parse_replay(&text, path)?,
        ))
    }

    /// A recording from records already parsed (sorted by `t_ms`).
    pub fn from_records(path: &Path, records: Vec<ReplayRecord>) -> ReplayTelemetry {
        ReplayTelemetry {
            path: path.to_path_buf(),
            records: Arc::new(records),
            start: None,
        }
    }

    /// The records.
    pub fn records(&self) -> &[ReplayRecord] {
        &self.records
    }

    /// Fix the start of the replay at `start` (else the first read fixes it).
    pub fn start_at(&mut self, start: Millis) {
        self.start = Some(start);
    }

    /// The replay time for `now` and the start.
    fn clock(&mut self, now: Millis) -> (Millis, u64) {
        let start = *self.start.get_or_insert(now);
        (start, now.since(start).get())
    }

    fn last_with<T>(
        &self,
        t: u64,
        part: &'static str,
        pick: impl Fn(&ReplayRecord) -> Option<T>,
    ) -> Result<(u64, T), ReplayError> {
        self.records
            .iter()
            .take_while(|r| r.t_ms <= t)
            .filter_map(|r| pick(r).map(|v| (r.t_ms, v)))
            .last()
            .ok_or_else(|| ReplayError::NoSample {
                path: self.path.clone(),
                part,
                t_ms: t,
            })
    }

    /// The GPU sample for `now`.
    ///
    /// # Errors
    ///
    /// No record with a GPU part at or before this time.
    pub fn gpu_at(&mut self, now: Millis) -> Result<GpuSample, ReplayError> {
        let (start, t) = self.clock(now);
        let (t_ms, g) = self.last_with(t, "gpu", |r| r.gpu)?;
        Ok(GpuSample {
            at: Millis(start.get().saturating_add(t_ms)),
            total: Bytes(g.total),
            used: Bytes(g.used),
            free: Bytes(g.free),
        })
    }

    /// The engine reading for `now`.
    ///
    /// # Errors
    ///
    /// No record with an engine part at or before this time.
    pub fn engine_at(&mut self, now: Millis) -> Result<EngineReading, ReplayError> {
        let (start, t) = self.clock(now);
        let (t_ms, e) = self.last_with(t, "engine", |r| r.engine.clone())?;
        Ok(e.reading(Millis(start.get().saturating_add(t_ms))))
    }
}

impl GpuTelemetry for ReplayTelemetry {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        Ok(self.gpu_at(now)?)
    }
}

impl EngineTelemetry for ReplayTelemetry {
    fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError> {
        Ok(self.engine_at(now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# a recording
{"t_ms":0,"gpu":{"total":1000,"used":100,"free":900},"engine":{"kv_capacity_tokens":4096,"kv_used_tokens":0}}
{"t_ms":1000,"gpu":{"total":1000,"used":600,"free":400,"reserved":0}}

{"t_ms":2000,"engine":{"kv_capacity_tokens":4096,"kv_used_tokens":2048,"requests_running":2,"probe_ttft_ms":150,"ttft_buckets":[[0.1,1],["+Inf",2]]}}
"#;

    fn replay() -> ReplayTelemetry {
        ReplayTelemetry::from_records(
            Path::new("r.jsonl"),
            parse_replay(TEXT, Path::new("r.jsonl")).unwrap(),
        )
    }

    #[test]
    fn replays_the_last_record_at_or_before_now_stamped_with_its_time() {
        let mut r = replay();
        let g = r.gpu_at(Millis(50_000)).unwrap();
        assert_eq!(
            (g.at, g.used, g.free),
            (Millis(50_000), Bytes(100), Bytes(900))
        );
        let g = r.gpu_at(Millis(51_500)).unwrap();
        assert_eq!((g.at, g.used), (Millis(51_000), Bytes(600)));
        // After the last GPU record the sample keeps its old stamp: it goes stale.
        let g = r.gpu_at(Millis(60_000)).unwrap();
        assert_eq!(g.at, Millis(51_000));
        let e = r.engine_at(Millis(52_000)).unwrap();
        assert_eq!(e.sample.kv_used_tokens, Some(2048));
        assert_eq!(e.probe_ttft, Some(Millis(150)));
        assert_eq!(e.requests_running, Some(2));
        assert_eq!(e.sample.at, Millis(52_000));
    }

    #[test]
    fn clones_share_records_but_start_on_their_own_first_read() {
        let mut a = replay();
        let mut b = a.clone();
        a.gpu_at(Millis(0)).unwrap();
        assert_eq!(b.gpu_at(Millis(5_000)).unwrap().used, Bytes(100));
        assert_eq!(a.gpu_at(Millis(5_000)).unwrap().used, Bytes(600));
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"t_ms\":0}\n{\"t_ms\":1,\"gpu\":{\"total\":1}}\n";
        let err = parse_replay(text, Path::new("x.jsonl")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.jsonl line 2"), "{msg}");
        assert!(err.is_usage());
        let err = parse_replay("{\"t_ms\":5}\n{\"t_ms\":1}\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse_replay(
            "{\"t_ms\":0,\"gpu\":{\"total\":1,\"used\":1,\"free\":1}}",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("exceed total"), "{err}");
        let err = parse_replay("{\"t_ms\":0,\"engin\":{}}", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("engin"), "{err}");
        assert!(matches!(
            parse_replay("\n# only a comment\n", Path::new("x")),
            Err(ReplayError::Empty { .. })
        ));
    }

    #[test]
    fn a_time_before_the_first_part_is_a_sample_error() {
        let recs = parse_replay(
            "{\"t_ms\":10,\"gpu\":{\"total\":1,\"used\":0,\"free\":1}}",
            Path::new("x"),
        )
        .unwrap();
        let mut r = ReplayTelemetry::from_records(Path::new("x"), recs);
        let err = r.gpu_at(Millis(0)).unwrap_err();
        assert!(!err.is_usage());
        assert!(r.engine_at(Millis(100)).is_err());
    }
}
