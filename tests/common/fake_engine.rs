//! A fake inference *engine* for end-to-end tests: an OpenAI-compatible chat server (the
//! same answers as `FakeModel`: a `kanban_complete` tool call after a delay, then text) that
//! also accounts KV memory the way an engine does.
//!
//! - Every chat request holds `prompt tokens + generated tokens` of KV (prompt tokens =
//!   request bytes / 4, generated = [`GENERATED_TOKENS`]) from arrival until its answer is
//!   sent, against `capacity_tokens`. A request that would overflow is answered HTTP 500
//!   ("KV cache out of memory") and counted in [`EngineStats::overflows`].
//! - `GET /metrics` answers vLLM-style Prometheus text: `vllm:cache_config_info`
//!   (`num_gpu_blocks × block_size` = capacity), `vllm:kv_cache_usage_perc`,
//!   `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:num_preemptions_total`
//!   and a `vllm:time_to_first_token_seconds` histogram.
//! - Its memory use (weights + KV in use × bytes per token) is published to the fake NVML
//!   library by rewriting the `FAKE_NVML_STATE` file (atomically) on every change, with any
//!   extra lines a test adds (`error memory_info 15`, ...).
//! - With [`FakeEngine::send_usage`], a stream asked for `stream_options.include_usage` ends
//!   with a `usage` chunk (as vLLM, SGLang and llama.cpp send): `prompt_tokens` and
//!   `completion_tokens` are the tokens it held; each is kept in [`EngineStats::usage`].
//! - With [`FakeEngine::stream_at_once`], a chat answer's headers and first chunk (the
//!   assistant role, no content, as vLLM sends first) go out on arrival, before the
//!   first-turn delay: the delay is then decode time, not time to first token.
//! - Knobs: the first-turn delay, a delay before answering `/metrics` (stale metrics), and
//!   [`FakeEngine::stop`]/[`FakeEngine::restart`] (the engine going away and coming back on
//!   the same port).
//!
//! Included with `#[path = "common/fake_engine.rs"] mod fake_engine;`.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Tokens each answer generates (charged with the prompt).
pub const GENERATED_TOKENS: u64 = 64;
/// vLLM's default KV block size.
pub const BLOCK_SIZE: u64 = 16;
/// TTFT histogram bounds (seconds).
const TTFT_BOUNDS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What the engine has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// KV tokens held now.
    pub in_use_tokens: u64,
    /// The most KV tokens ever held at once.
    pub peak_tokens: u64,
    /// Requests in flight now.
    pub running: u64,
    /// The most requests in flight at once.
    pub peak_running: u64,
    /// Requests refused because their KV would not fit.
    pub overflows: u64,
    /// Chat requests answered with a completion.
    pub served: u64,
    /// The largest single request, in tokens.
    pub largest_request_tokens: u64,
    /// TTFT histogram: cumulative counts per bound of `TTFT_BOUNDS`, then `+Inf`.
    pub ttft_counts: Vec<u64>,
    /// Sum of TTFTs in seconds ×1000.
    pub ttft_sum_ms: u64,
    /// Per `usage` sent: the task its first user message names (`work kanban task <id>`),
    /// and `prompt_tokens + completion_tokens`.
    pub usage: Vec<(Option<String>, u64)>,
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// KV capacity in tokens (a multiple of [`BLOCK_SIZE`]).
    pub capacity_tokens: u64,
    /// KV bytes per token.
    pub bytes_per_token: u64,
    /// GPU memory the weights take.
    pub weights_bytes: u64,
    /// GPU size.
    pub total_bytes: u64,
    /// Delay before the first turn's tool call (so tasks hold their KV a while).
    pub first_turn_delay: Duration,
    /// Where to publish memory for the fake NVML library, if anywhere.
    pub nvml_state: Option<PathBuf>,
}

struct Inner {
    spec: EngineSpec,
    stats: Mutex<EngineStats>,
    delay_ms: AtomicU64,
    metrics_delay_ms: AtomicU64,
    send_usage: AtomicBool,
    stream_at_once: AtomicBool,
    nvml_extra: Mutex<String>,
}

/// A running fake engine.
pub struct FakeEngine {
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeEngine {
    /// Start it on 127.0.0.1, port 0, and publish its idle memory.
    pub fn start(spec: EngineSpec) -> FakeEngine {
        let inner = Arc::new(Inner {
            delay_ms: AtomicU64::new(spec.first_turn_delay.as_millis() as u64),
            metrics_delay_ms: AtomicU64::new(0),
            send_usage: AtomicBool::new(false),
            stream_at_once: AtomicBool::new(false),
            stats: Mutex::new(EngineStats {
                ttft_counts: vec![0; TTFT_BOUNDS.len() + 1],
                ..EngineStats::default()
            }),
            nvml_extra: Mutex::new(String::new()),
            spec,
        });
        inner.publish();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut e = FakeEngine {
            addr,
            inner,
            stop: Arc::new(AtomicBool::new(false)),
            accept: None,
        };
        e.accept = Some(e.spawn_accept(listener));
        e
    }

    fn spawn_accept(&self, listener: TcpListener) -> std::thread::JoinHandle<()> {
        let (inner, stop) = (self.inner.clone(), self.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let inner = inner.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &inner);
                });
            }
        })
    }

    /// `http://127.0.0.1:<port>` (the engine URL for the governor).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/v1` (the model base URL for Hermes profiles).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A snapshot of what it has seen.
    pub fn stats(&self) -> EngineStats {
        self.inner.stats.lock().unwrap().clone()
    }

    /// Set the first-turn delay.
    pub fn set_delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// End streams that ask for it (`stream_options.include_usage`) with a `usage` chunk.
    pub fn send_usage(&self) {
        self.inner.send_usage.store(true, Ordering::SeqCst);
    }

    /// Send a chat answer's headers and a first (role) chunk on arrival, before the delay.
    pub fn stream_at_once(&self) {
        self.inner.stream_at_once.store(true, Ordering::SeqCst);
    }

    /// Delay every `/metrics` answer by `d` (its readers see stale metrics meanwhile).
    pub fn set_metrics_delay(&self, d: Duration) {
        self.inner
            .metrics_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Extra lines for the fake NVML state file (e.g. `"error memory_info 15\n"`), published
    /// at once.
    pub fn set_nvml_extra(&self, lines: &str) {
        *self.inner.nvml_extra.lock().unwrap() = lines.to_owned();
        self.inner.publish();
    }

    /// Stop listening: new connections are refused (answers in progress finish).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// Listen again on the same port.
    pub fn restart(&mut self) {
        self.stop.store(false, Ordering::SeqCst);
        let listener = TcpListener::bind(self.addr).unwrap();
        self.accept = Some(self.spawn_accept(listener));
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    /// Rewrite the fake NVML state: one GPU holding weights + KV in use.
    fn publish(&self) {
        let Some(path) = &self.spec.nvml_state else {
            return;
        };
        // One publish at a time (requests are served on many threads), each through a
        // temporary file of its own, so the file always holds the latest complete state.
        let extra = self.nvml_extra.lock().unwrap();
        let used = {
            let s = self.stats.lock().unwrap();
            self.spec.weights_bytes + s.in_use_tokens * self.spec.bytes_per_token
        };
        let text = format!(
            "device 0 total={} used={used}\nprocess 0 4242 {used}\n{extra}",
            self.spec.total_bytes,
        );
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn metrics(&self) -> String {
        let s = self.stats.lock().unwrap().clone();
        let cap = self.spec.capacity_tokens;
        let mut m = String::new();
        m += "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n";
        m += "# TYPE vllm:cache_config_info gauge\n";
        m += &format!(
            "vllm:cache_config_info{{block_size=\"{BLOCK_SIZE}\",cache_dtype=\"auto\",num_gpu_blocks=\"{}\"}} 1.0\n",
            cap / BLOCK_SIZE
        );
        m += "# TYPE vllm:kv_cache_usage_perc gauge\n";
        m += &format!(
            "vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"fake-model\"}} {}\n",
            s.in_use_tokens as f64 / cap as f64
        );
        m += "# TYPE vllm:num_requests_running gauge\n";
        m += &format!(
            "vllm:num_requests_running{{engine=\"0\",model_name=\"fake-model\"}} {}.0\n",
            s.running
        );
        m += "# TYPE vllm:num_requests_waiting gauge\n";
        m += "vllm:num_requests_waiting{engine=\"0\",model_name=\"fake-model\"} 0.0\n";
        m += "# TYPE vllm:num_preemptions_total counter\n";
        m += "vllm:num_preemptions_total{engine=\"0\",model_name=\"fake-model\"} 0.0\n";
        m += "# TYPE vllm:time_to_first_token_seconds histogram\n";
        for (i, b) in TTFT_BOUNDS.iter().enumerate() {
            m += &format!(
                "vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"{b}\",model_name=\"fake-model\"}} {}.0\n",
                s.ttft_counts[i]
            );
        }
        let total = s.ttft_counts[TTFT_BOUNDS.len()];
        m += &format!(
            "vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"fake-model\"}} {total}.0\n"
        );
        m += &format!(
            "vllm:time_to_first_token_seconds_count{{engine=\"0\",model_name=\"fake-model\"}} {total}.0\n"
        );
        m += &format!(
            "vllm:time_to_first_token_seconds_sum{{engine=\"0\",model_name=\"fake-model\"}} {}\n",
            s.ttft_sum_ms as f64 / 1000.0
        );
        m
    }
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn serve(conn: TcpStream, inner: &Inner) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    if request_line.starts_with("GET /metrics") {
        let d = inner.metrics_delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        return respond(
            &mut conn,
            "200 OK",
            "text/plain; version=0.0.4",
            &inner.metrics(),
        );
    }
    if request_line.starts_with("GET /v1/models") {
        return respond(
            &mut conn,
            "200 OK",
            "application/json",
            "{\"object\":\"list\",\"data\":[{\"id\":\"fake-model\",\"object\":\"model\"}]}",
        );
    }
    if !(request_line.starts_with("POST") && request_line.contains("/chat/completions")) {
        return respond(&mut conn, "404 Not Found", "text/plain", "");
    }
    let tokens = (body.len() as u64).div_ceil(4) + GENERATED_TOKENS;
    {
        let mut s = inner.stats.lock().unwrap();
        s.largest_request_tokens = s.largest_request_tokens.max(tokens);
        if s.in_use_tokens + tokens > inner.spec.capacity_tokens {
            s.overflows += 1;
            drop(s);
            return respond(
                &mut conn,
                "500 Internal Server Error",
                "application/json",
                "{\"error\":{\"message\":\"KV cache out of memory\",\"type\":\"server_error\",\"code\":500}}",
            );
        }
        s.in_use_tokens += tokens;
        s.running += 1;
        s.peak_tokens = s.peak_tokens.max(s.in_use_tokens);
        s.peak_running = s.peak_running.max(s.running);
    }
    inner.publish();
    let started = Instant::now();
    let result = answer(&mut conn, &body, inner, started, tokens);
    {
        let mut s = inner.stats.lock().unwrap();
        s.in_use_tokens -= tokens;
        s.running -= 1;
        s.served += 1;
    }
    inner.publish();
    result
}

fn answer(
    conn: &mut TcpStream,
    body: &[u8],
    inner: &Inner,
    started: Instant,
    tokens: u64,
) -> std::io::Result<()> {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let offers_complete = req["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|t| t["function"]["name"] == "kanban_complete")
    });
    let has_tool_result = req["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    let at_once = inner.stream_at_once.load(Ordering::SeqCst);
    if at_once {
        conn.write_all(HEAD)?;
        let first = chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        );
        conn.write_all(first.as_bytes())?;
        conn.flush()?;
        record_ttft(inner, started);
    }
    let mut sse = String::new();
    if offers_complete && !has_tool_result {
        std::thread::sleep(Duration::from_millis(inner.delay_ms.load(Ordering::SeqCst)));
        sse += &chunk(
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function",
                "function": {"name": "kanban_complete", "arguments": ""}}]}),
            serde_json::Value::Null,
        );
        sse += &chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments":
                "{\"summary\": \"fake engine completed the task\", \"metadata\": {\"fake\": true}}"}}]}),
            serde_json::Value::Null,
        );
        sse += &chunk(serde_json::json!({}), "tool_calls".into());
    } else {
        sse += &chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        );
        sse += &chunk(
            serde_json::json!({"content": "Done."}),
            serde_json::Value::Null,
        );
        sse += &chunk(serde_json::json!({}), "stop".into());
    }
    if inner.send_usage.load(Ordering::SeqCst) && req["stream_options"]["include_usage"] == true {
        let c = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model", "choices": [],
            "usage": {"prompt_tokens": tokens - GENERATED_TOKENS,
                "completion_tokens": GENERATED_TOKENS, "total_tokens": tokens},
        });
        sse += &format!("data: {c}\n\n");
        let task = req["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .and_then(|t| t.split("work kanban task ").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .map(str::to_owned);
        inner.stats.lock().unwrap().usage.push((task, tokens));
    }
    sse += "data: [DONE]\n\n";
    if !at_once {
        record_ttft(inner, started);
        conn.write_all(HEAD)?;
    }
    conn.write_all(sse.as_bytes())?;
    conn.flush()
}

/// Count the time since `started` in the TTFT histogram.
fn record_ttft(inner: &Inner, started: Instant) {
    let ttft = started.elapsed().as_secs_f64();
    let mut s = inner.stats.lock().unwrap();
    for (i, b) in TTFT_BOUNDS.iter().enumerate() {
        if ttft <= *b {
            s.ttft_counts[i] += 1;
        }
    }
    let last = TTFT_BOUNDS.len();
    s.ttft_counts[last] += 1;
    s.ttft_sum_ms += (ttft * 1000.0) as u64;
}

/// The fake `libnvidia-ml.so`: `$KG_FAKE_NVML` (must exist), else built with gcc into
/// `target/fake-nvml/` when missing or older than its source (built under a temp name and
/// renamed, so test binaries building it at once do not see half a file).
pub fn fake_nvml_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Ok(p) = std::env::var("KG_FAKE_NVML") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "KG_FAKE_NVML={} is missing; run scripts/test",
                p.display()
            );
            return p;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = root.join("tests/fixtures/fake_nvml.c");
        let lib = root.join("target/fake-nvml/libnvidia-ml.so");
        let stale = match (lib.metadata(), src.metadata()) {
            (Ok(l), Ok(s)) => l.modified().unwrap() < s.modified().unwrap(),
            _ => true,
        };
        if stale {
            std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
            let tmp = lib.with_extension(format!("so.{}", std::process::id()));
            let status = std::process::Command::new("gcc")
                .args(["-shared", "-fPIC", "-O1", "-o"])
                .arg(&tmp)
                .arg(&src)
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "building the fake NVML library with gcc failed ({status:?}); run scripts/test"
            );
            std::fs::rename(&tmp, &lib).unwrap();
        }
        lib
    })
    .clone()
}
