//! Inference-engine telemetry: vLLM and SGLang `/metrics`, llama.cpp `/slots` + `/props` +
//! `/metrics`, Ollama `/api/ps`, and a streaming latency probe for engines without a TTFT
//! histogram.
//!
//! The `parse_*` functions are pure (text in, [`EngineReading`] out) and tested on captured or
//! documented outputs in `tests/fixtures/`. [`HttpEngine`] does the I/O: blocking GETs through
//! [`HttpClient`], bounded by its timeout. A failed read is an [`EngineError`], which the
//! caller turns into "engine unknown" (hold), never a crash.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::adapters::http::{self, HttpClient, HttpError};
use crate::adapters::prom::{self, Exposition, PromError};
use crate::governor::{EngineSample, Millis};
use crate::ports::{EngineReading, EngineTelemetry, PortError};

/// Which engine serves the pool: the config's one [`crate::config::EngineKind`], which also
/// says what each kind publishes (its `/metrics` names, `/slots`, `/api/ps`, or nothing but the
/// latency probe).
pub use crate::config::EngineKind;

/// An engine read that failed.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The endpoint could not be fetched.
    #[error("{kind} engine: {source}")]
    Http {
        /// The engine kind.
        kind: &'static str,
        /// The HTTP failure (names the URL).
        source: HttpError,
    },
    /// `/metrics` is not Prometheus text.
    #[error("{kind} engine {url}: {source}")]
    Metrics {
        /// The engine kind.
        kind: &'static str,
        /// The URL read.
        url: String,
        /// The bad line.
        source: PromError,
    },
    /// A JSON endpoint answered something unexpected.
    #[error("{kind} engine {url}: unexpected answer: {message}")]
    Json {
        /// The engine kind.
        kind: &'static str,
        /// The URL read.
        url: String,
        /// What was wrong.
        message: String,
    },
}

fn count(v: f64) -> Option<u64> {
    (v.is_finite() && v >= 0.0).then(|| v.round() as u64)
}

fn count32(v: f64) -> Option<u32> {
    count(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn buckets(e: &Exposition, names: &[&str]) -> Vec<(f64, u64)> {
    names
        .iter()
        .find_map(|n| e.histogram(n))
        .map(|h| h.buckets)
        .unwrap_or_default()
}

/// vLLM `/metrics` into a reading. Accepts current and deprecated names
/// (`kv_cache_usage_perc`/`gpu_cache_usage_perc`, `inter_token_latency_seconds`/
/// `time_per_output_token_seconds`); KV capacity is `num_gpu_blocks × block_size` from
/// `vllm:cache_config_info`, summed over engines (data parallel).
pub fn parse_vllm_metrics(e: &Exposition, at: Millis) -> EngineReading {
    let capacity: Option<u64> = {
        let caps: Vec<u64> = e
            .series("vllm:cache_config_info")
            .filter_map(|s| {
                let blocks: u64 = s.label("num_gpu_blocks")?.parse().ok()?;
                let size: u64 = s.label("block_size")?.parse().ok()?;
                Some(blocks.saturating_mul(size))
            })
            .collect();
        (!caps.is_empty()).then(|| caps.iter().sum())
    };
    let usage = usage_mean(
        e,
        &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
    );
    EngineReading {
        sample: EngineSample {
            at,
            kv_capacity_tokens: capacity,
            kv_used_tokens: capacity
                .zip(usage)
                .map(|(c, u)| (c as f64 * u).round() as u64),
            slots: None,
            slot_context_tokens: None,
        },
        requests_running: e.sum("vllm:num_requests_running").and_then(count32),
        requests_waiting: e.sum("vllm:num_requests_waiting").and_then(count32),
        preemptions_total: e
            .sum_any(&["vllm:num_preemptions_total", "vllm:num_preemptions"])
            .and_then(count),
        ttft_buckets: buckets(e, &["vllm:time_to_first_token_seconds"]),
        itl_buckets: buckets(
            e,
            &[
                "vllm:inter_token_latency_seconds",
                "vllm:time_per_output_token_seconds",
            ],
        ),
        kv_usage_fraction: usage,
        ..EngineReading::default()
    }
}

/// The mean over label sets (engines) of the first of `names` present, clamped to 0–1.
fn usage_mean(e: &Exposition, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| {
        let v: Vec<f64> = e
            .series(n)
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect();
        (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64).clamp(0.0, 1.0))
    })
}

/// SGLang `/metrics` into a reading (`max_total_num_tokens`, `num_used_tokens`,
/// `token_usage`, `num_running_reqs`, `num_queue_reqs`, TTFT and inter-token histograms).
pub fn parse_sglang_metrics(e: &Exposition, at: Millis) -> EngineReading {
    let capacity = e.sum("sglang:max_total_num_tokens").and_then(count);
    let usage = usage_mean(e, &["sglang:token_usage"]);
    let used = e.sum("sglang:num_used_tokens").and_then(count).or_else(|| {
        capacity
            .zip(usage)
            .map(|(c, u)| (c as f64 * u).round() as u64)
    });
    EngineReading {
        sample: EngineSample {
            at,
            kv_capacity_tokens: capacity,
            kv_used_tokens: used,
            slots: None,
            slot_context_tokens: None,
        },
        requests_running: e.sum("sglang:num_running_reqs").and_then(count32),
        requests_waiting: e.sum("sglang:num_queue_reqs").and_then(count32),
        preemptions_total: e
            .sum_any(&[
                "sglang:num_retracted_reqs_total",
                "sglang:num_retracted_reqs",
            ])
            .and_then(count),
        ttft_buckets: buckets(e, &["sglang:time_to_first_token_seconds"]),
        itl_buckets: buckets(
            e,
            &[
                "sglang:inter_token_latency_seconds",
                "sglang:time_per_output_token_seconds",
            ],
        ),
        kv_usage_fraction: usage,
        ..EngineReading::default()
    }
}

/// One llama.cpp slot from `/slots`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LlamaSlot {
    /// Slot id.
    pub id: u32,
    /// Context tokens of this slot.
    pub n_ctx: u64,
    /// Busy with a request.
    #[serde(default)]
    pub is_processing: bool,
    /// Prompt tokens of the current request.
    #[serde(default)]
    pub n_prompt_tokens: Option<u64>,
    /// Generation progress of the current request.
    #[serde(default)]
    pub next_token: Vec<LlamaNextToken>,
}

/// `next_token` of a llama.cpp slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LlamaNextToken {
    /// Tokens generated so far.
    #[serde(default)]
    pub n_decoded: u64,
}

impl LlamaSlot {
    /// Context tokens this slot holds now (prompt + generated), zero when idle.
    pub fn context_tokens(&self) -> u64 {
        if !self.is_processing {
            return 0;
        }
        let decoded: u64 = self.next_token.iter().map(|t| t.n_decoded).sum();
        self.n_prompt_tokens.unwrap_or(0).saturating_add(decoded)
    }
}

/// The part of llama.cpp `/props` we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LlamaProps {
    /// `total_slots` (`-np`).
    pub total_slots: u32,
    /// `default_generation_settings.n_ctx`: context tokens per slot.
    pub n_ctx: Option<u64>,
}

/// Parse llama.cpp `/slots`.
///
/// # Errors
///
/// Not a JSON array of slots.
pub fn parse_llamacpp_slots(json: &str) -> Result<Vec<LlamaSlot>, String> {
    serde_json::from_str(json).map_err(|e| format!("/slots is not a list of slots: {e}"))
}

/// Parse llama.cpp `/props`.
///
/// # Errors
///
/// Not JSON, or no `total_slots`.
pub fn parse_llamacpp_props(json: &str) -> Result<LlamaProps, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("/props is not JSON: {e}"))?;
    let total_slots = v
        .get("total_slots")
        .and_then(serde_json::Value::as_u64)
        .ok_or("/props has no total_slots")?;
    Ok(LlamaProps {
        total_slots: u32::try_from(total_slots).unwrap_or(u32::MAX),
        n_ctx: v
            .pointer("/default_generation_settings/n_ctx")
            .and_then(serde_json::Value::as_u64),
    })
}

/// llama.cpp `/slots`, `/props` and `/metrics` (each optional: `--no-slots` and a server
/// without `--metrics` answer 501) into a reading. Slots and context per slot come from
/// `/slots` (else `/props`); KV capacity is the sum of the slots' `n_ctx`, KV used the context
/// the busy slots hold; `requests_deferred` is the waiting count; `n_tokens_max` the peak.
pub fn parse_llamacpp(
    slots: Option<&[LlamaSlot]>,
    props: Option<&LlamaProps>,
    metrics: Option<&Exposition>,
    at: Millis,
) -> EngineReading {
    let n_slots = slots
        .map(|s| u32::try_from(s.len()).unwrap_or(u32::MAX))
        .or(props.map(|p| p.total_slots));
    // Slots share one n_ctx unless built oddly; the smallest is the one a request must fit.
    let slot_ctx = slots
        .and_then(|s| s.iter().map(|s| s.n_ctx).min())
        .or(props.and_then(|p| p.n_ctx));
    let capacity = slots
        .map(|s| s.iter().map(|s| s.n_ctx).sum())
        .or_else(|| Some(u64::from(n_slots?) * slot_ctx?));
    let used = slots.map(|s| s.iter().map(LlamaSlot::context_tokens).sum());
    let busy = slots
        .map(|s| u32::try_from(s.iter().filter(|s| s.is_processing).count()).unwrap_or(u32::MAX));
    let m = |name: &str| metrics.and_then(|e| e.value(name));
    EngineReading {
        sample: EngineSample {
            at,
            kv_capacity_tokens: capacity,
            kv_used_tokens: used,
            slots: n_slots,
            slot_context_tokens: slot_ctx,
        },
        requests_running: m("llamacpp:requests_processing").and_then(count32).or(busy),
        requests_waiting: m("llamacpp:requests_deferred").and_then(count32),
        peak_context_tokens: m("llamacpp:n_tokens_max").and_then(count),
        busy_context_max: slots.map(|s| s.iter().map(LlamaSlot::context_tokens).max().unwrap_or(0)),
        kv_usage_fraction: capacity
            .zip(used)
            .filter(|(c, _)| *c > 0)
            .map(|(c, u)| u as f64 / c as f64),
        ..EngineReading::default()
    }
}

/// One model Ollama has loaded (`/api/ps`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OllamaModel {
    /// Model name.
    pub name: String,
    /// Bytes the loaded model takes in all.
    pub size: u64,
    /// Bytes of it in GPU memory.
    #[serde(default)]
    pub size_vram: u64,
    /// Context length it was loaded with, when reported.
    #[serde(default)]
    pub context_length: Option<u64>,
}

impl OllamaModel {
    /// Part of the model runs on the CPU.
    pub fn offloaded(&self) -> bool {
        self.size_vram < self.size
    }
}

/// Parse Ollama `/api/ps`.
///
/// # Errors
///
/// Not `{"models": [...]}`.
pub fn parse_ollama_ps(json: &str) -> Result<Vec<OllamaModel>, String> {
    #[derive(Deserialize)]
    struct PsResponse {
        models: Vec<OllamaModel>,
    }
    serde_json::from_str::<PsResponse>(json)
        .map(|p| p.models)
        .map_err(|e| format!("/api/ps is not {{\"models\": [...]}}: {e}"))
}

/// Ollama's loaded models into a reading: `offloaded` when any model has `size_vram < size`;
/// the context per request is the smallest loaded `context_length`.
pub fn ollama_reading(models: &[OllamaModel], at: Millis) -> EngineReading {
    EngineReading {
        sample: EngineSample {
            at,
            slot_context_tokens: models.iter().filter_map(|m| m.context_length).min(),
            ..EngineSample::default()
        },
        offloaded: models.iter().any(OllamaModel::offloaded),
        ..EngineReading::default()
    }
}

/// What the latency probe sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The path (`/v1/chat/completions`; llama.cpp also `/completion`).
    pub path: String,
    /// The `model` field, when the engine needs one (vLLM, Ollama, SGLang).
    pub model: Option<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: "/v1/chat/completions".to_string(),
            model: None,
        }
    }
}

impl ProbeConfig {
    /// The JSON body: a one-token streamed request.
    pub fn body(&self) -> String {
        let mut v = if self.path.trim_end_matches('/').ends_with("/completion") {
            serde_json::json!({"prompt": "Hi", "n_predict": 1, "stream": true, "cache_prompt": false})
        } else {
            serde_json::json!({
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                "stream": true,
            })
        };
        if let (Some(model), Some(obj)) = (&self.model, v.as_object_mut()) {
            obj.insert("model".into(), serde_json::Value::String(model.clone()));
        }
        v.to_string()
    }
}

/// What one latency probe gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeResult {
    /// The first token after this long.
    Answered(Millis),
    /// Refused with this status (429, 5xx).
    Refused(u16),
    /// No first token within this long (the HTTP timeout).
    TimedOut(Millis),
}

/// An engine read over HTTP.
#[derive(Debug)]
pub struct HttpEngine {
    kind: EngineKind,
    base_url: String,
    client: HttpClient,
    probe: Option<ProbeConfig>,
    /// The served model, found once through `/v1/models` for a probe without a model.
    served_model: std::sync::OnceLock<String>,
}

impl HttpEngine {
    /// An engine of `kind` at `base_url` (`http://host:port`), each HTTP call bounded by
    /// `timeout`. `probe`: send a one-token streamed request on each read to time the first
    /// token (for engines without a TTFT histogram; it is sent whatever the kind).
    ///
    /// # Errors
    ///
    /// `base_url` is not `http://host[:port]`, or the client runtime cannot start.
    pub fn new(
        kind: EngineKind,
        base_url: &str,
        timeout: Duration,
        probe: Option<ProbeConfig>,
    ) -> Result<HttpEngine, EngineError> {
        let wrap = |source| EngineError::Http {
            kind: kind.name(),
            source,
        };
        http::parse_url(base_url).map_err(wrap)?;
        Ok(HttpEngine {
            kind,
            base_url: base_url.trim_end_matches('/').to_string(),
            client: HttpClient::new(timeout).map_err(wrap)?,
            probe,
            served_model: std::sync::OnceLock::new(),
        })
    }

    /// The engine kind.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn get(&self, path: &str) -> Result<(String, String), EngineError> {
        let url = http::join(&self.base_url, path);
        let r = self.client.get(&url).map_err(|source| EngineError::Http {
            kind: self.kind.name(),
            source,
        })?;
        Ok((url, r.body))
    }

    /// `GET path`, `None` when the endpoint is switched off (HTTP 404/501).
    fn get_optional(&self, path: &str) -> Result<Option<(String, String)>, EngineError> {
        match self.get(path) {
            Ok(r) => Ok(Some(r)),
            Err(EngineError::Http { source, .. }) if matches!(source.status(), Some(404 | 501)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn json_error(&self, url: String, message: String) -> EngineError {
        EngineError::Json {
            kind: self.kind.name(),
            url,
            message,
        }
    }

    /// Fetch and parse `/metrics`.
    ///
    /// # Errors
    ///
    /// Unreachable, or not Prometheus text.
    pub fn read_metrics(&self) -> Result<Exposition, EngineError> {
        let (url, body) = self.get("/metrics")?;
        prom::parse(&body).map_err(|source| EngineError::Metrics {
            kind: self.kind.name(),
            url,
            source,
        })
    }

    /// Ollama's loaded models (`/api/ps`).
    ///
    /// # Errors
    ///
    /// Unreachable, or an unexpected answer.
    pub fn read_ollama_models(&self) -> Result<Vec<OllamaModel>, EngineError> {
        let (url, body) = self.get("/api/ps")?;
        parse_ollama_ps(&body).map_err(|m| self.json_error(url, m))
    }

    /// llama.cpp `/slots`, `/props` and `/metrics` into a reading. Either `/slots` or `/props`
    /// must answer; `/metrics` is optional.
    ///
    /// # Errors
    ///
    /// Unreachable, both `/slots` and `/props` off, or an unexpected answer.
    pub fn read_llamacpp(&self, at: Millis) -> Result<EngineReading, EngineError> {
        let slots = match self.get_optional("/slots")? {
            Some((url, body)) => {
                Some(parse_llamacpp_slots(&body).map_err(|m| self.json_error(url, m))?)
            }
            None => None,
        };
        let props = match self.get_optional("/props")? {
            Some((url, body)) => {
                Some(parse_llamacpp_props(&body).map_err(|m| self.json_error(url, m))?)
            }
            None => None,
        };
        if slots.is_none() && props.is_none() {
            return Err(self.json_error(
                http::join(&self.base_url, "/slots"),
                "both /slots and /props are switched off; start llama-server without --no-slots"
                    .into(),
            ));
        }
        let metrics = match self.get_optional("/metrics")? {
            Some((url, body)) => {
                Some(prom::parse(&body).map_err(|source| EngineError::Metrics {
                    kind: self.kind.name(),
                    url,
                    source,
                })?)
            }
            None => None,
        };
        Ok(parse_llamacpp(
            slots.as_deref(),
            props.as_ref(),
            metrics.as_ref(),
            at,
        ))
    }

    /// Send the latency probe (a one-token streamed request) and time its first token.
    ///
    /// # Errors
    ///
    /// Unreachable, timed out, or a non-2xx answer ([`HttpError::status`] tells 429/5xx).
    pub fn probe_ttft(&self, probe: &ProbeConfig) -> Result<http::ProbeTiming, EngineError> {
        let url = http::join(&self.base_url, &probe.path);
        self.client
            .probe(&url, probe.body())
            .map_err(|source| EngineError::Http {
                kind: self.kind.name(),
                source,
            })
    }

    /// One reading, as [`EngineTelemetry::read_engine`], with the concrete error.
    ///
    /// The latency probe, if any, runs first, and the reading is stamped `now` plus the probe's
    /// time: under load a probe takes seconds, and that is a latency signal, not stale
    /// telemetry; a slow status endpoint still ages the reading.
    ///
    /// # Errors
    ///
    /// The engine's status endpoint could not be read or parsed. A probe the engine refused
    /// (429/5xx) or did not start answering within the timeout is not an error: it is reported
    /// in `probe_status` or `probe_timed_out`.
    pub fn read(&self, now: Millis) -> Result<EngineReading, EngineError> {
        let started = std::time::Instant::now();
        let probe = self.run_probe()?;
        // The reading is as old as its status read, which starts when the probe has ended.
        let now = Millis(
            now.get()
                .saturating_add(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
        let mut reading = match self.kind {
            EngineKind::Vllm => parse_vllm_metrics(&self.read_metrics()?, now),
            EngineKind::Sglang => parse_sglang_metrics(&self.read_metrics()?, now),
            EngineKind::Llamacpp => self.read_llamacpp(now)?,
            EngineKind::Ollama => ollama_reading(&self.read_ollama_models()?, now),
            EngineKind::Openai => {
                // Nothing to measure, but the engine must answer: a pool whose engine is down
                // holds (the released work would only fail against it). A probe the engine
                // answered (even with a refusal) is that check; without one, or when it timed
                // out (a hung server still accepts connections), `/v1/models` is.
                if !matches!(
                    probe,
                    Some(ProbeResult::Answered(_) | ProbeResult::Refused(_))
                ) {
                    self.get("/v1/models")?;
                }
                EngineReading {
                    sample: EngineSample {
                        at: now,
                        ..EngineSample::default()
                    },
                    ..EngineReading::default()
                }
            }
        };
        match probe {
            Some(ProbeResult::Answered(ttft)) => reading.probe_ttft = Some(ttft),
            Some(ProbeResult::Refused(status)) => reading.probe_status = Some(status),
            Some(ProbeResult::TimedOut(after)) => reading.probe_timed_out = Some(after),
            None => {}
        }
        Ok(reading)
    }

    /// Send the configured probe, if any (`None`: no probe, or Ollama has no model loaded).
    fn run_probe(&self) -> Result<Option<ProbeResult>, EngineError> {
        let Some(configured) = &self.probe else {
            return Ok(None);
        };
        let mut probe = configured.clone();
        if probe.model.is_none() {
            probe.model = match self.kind {
                // llama-server serves one model and ignores the field.
                EngineKind::Llamacpp => None,
                // Probe a model that is loaded; with none loaded there is no load to measure,
                // and a probe would make Ollama load one.
                EngineKind::Ollama => match self.read_ollama_models()?.first() {
                    Some(m) => Some(m.name.clone()),
                    None => return Ok(None),
                },
                // Without a model list, send none: an engine that needs one says so (4xx).
                _ => self.served_model().ok(),
            };
        }
        match self.probe_ttft(&probe) {
            Ok(t) => Ok(Some(ProbeResult::Answered(Millis(
                u64::try_from(t.first_token.as_millis()).unwrap_or(u64::MAX),
            )))),
            // 429 and 5xx are the engine refusing work: an overload signal, not a failed read.
            Err(EngineError::Http { source, .. })
                if source.status().is_some_and(|s| s == 429 || s >= 500) =>
            {
                Ok(source.status().map(ProbeResult::Refused))
            }
            // No first token within the timeout: overload too (the status read that follows
            // says whether the engine is there at all).
            Err(EngineError::Http {
                source: HttpError::Timeout { after, .. },
                ..
            }) => Ok(Some(ProbeResult::TimedOut(Millis::from_duration(after)))),
            Err(EngineError::Http { source, .. }) if source.status().is_some() => {
                Err(EngineError::Json {
                    kind: self.kind.name(),
                    url: http::join(&self.base_url, &probe.path),
                    message: format!(
                        "the latency probe ({}) was refused: {source}; check the engine's \
                         model name and that it serves {}",
                        probe.body(),
                        probe.path
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The first model `/v1/models` lists (cached after the first success).
    ///
    /// # Errors
    ///
    /// Unreachable, or no model listed.
    pub fn served_model(&self) -> Result<String, EngineError> {
        if let Some(m) = self.served_model.get() {
            return Ok(m.clone());
        }
        let (url, body) = self.get("/v1/models")?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| self.json_error(url.clone(), format!("not JSON: {e}")))?;
        let id = v
            .pointer("/data/0/id")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| self.json_error(url, "no model in {\"data\": [{\"id\": ...}]}".into()))?
            .to_string();
        Ok(self.served_model.get_or_init(|| id).clone())
    }
}

impl EngineTelemetry for HttpEngine {
    fn read_engine(&mut self, now: Millis) -> Result<EngineReading, PortError> {
        Ok(self.read(now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_prefers_the_new_usage_name_and_falls_back_to_the_old() {
        let new = prom::parse(
            "vllm:kv_cache_usage_perc 0.5\nvllm:gpu_cache_usage_perc 0.9\n\
             vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"1000\"} 1\n",
        )
        .unwrap();
        let r = parse_vllm_metrics(&new, Millis(7));
        assert_eq!(r.sample.kv_capacity_tokens, Some(16_000));
        assert_eq!(r.sample.kv_used_tokens, Some(8_000));
        assert_eq!(r.sample.at, Millis(7));
        let old = prom::parse("vllm:gpu_cache_usage_perc 0.25\n").unwrap();
        let r = parse_vllm_metrics(&old, Millis(0));
        assert_eq!(r.kv_usage_fraction, Some(0.25));
        assert_eq!(r.sample.kv_capacity_tokens, None);
        assert_eq!(r.sample.kv_used_tokens, None);
    }

    #[test]
    fn vllm_without_metrics_gives_an_empty_reading() {
        let r = parse_vllm_metrics(&prom::parse("").unwrap(), Millis(1));
        assert_eq!(r.requests_running, None);
        assert!(r.ttft_buckets.is_empty());
    }

    #[test]
    fn llama_slots_in_use_count_prompt_and_decoded_tokens() {
        let s: Vec<LlamaSlot> = parse_llamacpp_slots(
            r#"[{"id":0,"n_ctx":100,"is_processing":true,"n_prompt_tokens":10,"next_token":[{"n_decoded":5}]},
                {"id":1,"n_ctx":100,"is_processing":false,"n_prompt_tokens":50}]"#,
        )
        .unwrap();
        let r = parse_llamacpp(Some(&s), None, None, Millis(0));
        assert_eq!(r.sample.kv_used_tokens, Some(15));
        assert_eq!(r.sample.kv_capacity_tokens, Some(200));
        assert_eq!(r.sample.slots, Some(2));
        assert_eq!(r.requests_running, Some(1));
    }

    #[test]
    fn llama_props_alone_give_slots_and_context() {
        let p = parse_llamacpp_props(
            r#"{"total_slots":3,"default_generation_settings":{"n_ctx":512}}"#,
        )
        .unwrap();
        let r = parse_llamacpp(None, Some(&p), None, Millis(0));
        assert_eq!(r.sample.slots, Some(3));
        assert_eq!(r.sample.slot_context_tokens, Some(512));
        assert_eq!(r.sample.kv_capacity_tokens, Some(1536));
        assert!(
            parse_llamacpp_props("{}")
                .unwrap_err()
                .contains("total_slots")
        );
    }

    #[test]
    fn probe_body_asks_for_one_streamed_token() {
        let chat = ProbeConfig {
            model: Some("m".into()),
            ..ProbeConfig::default()
        };
        let v: serde_json::Value = serde_json::from_str(&chat.body()).unwrap();
        assert_eq!(v["max_tokens"], 1);
        assert_eq!(v["stream"], true);
        assert_eq!(v["model"], "m");
        let completion = ProbeConfig {
            path: "/completion".into(),
            model: None,
        };
        let v: serde_json::Value = serde_json::from_str(&completion.body()).unwrap();
        assert_eq!(v["n_predict"], 1);
        assert!(v.get("model").is_none());
    }
}
