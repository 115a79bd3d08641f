//! Engine telemetry against a real `llama-server` (CPU, SmolLM2-135M): `/slots`, `/props`,
//! `/metrics` through [`HttpEngine`], the latency probe, and a loaded server showing busy and
//! deferred slots. Also the `host` memory source while the server runs.
//!
//! The server comes from `KG_LLAMA_SERVER` (else `target/llama/build/bin/llama-server`) and
//! the model from `KG_LLAMA_MODEL` (else `target/llama/model.gguf`); scripts/test builds both.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kanban_governor::adapters::engine::{EngineKind, HttpEngine, ProbeConfig};
use kanban_governor::adapters::host_mem::HostMemory;
use kanban_governor::adapters::http::{self, HttpClient};
use kanban_governor::adapters::telemetry::{EngineSource, GpuSource, build_pool};
use kanban_governor::governor::Millis;
use kanban_governor::ports::{Clock, EngineTelemetry, GpuTelemetry, SystemClock};

fn required(var: &str, fallback: &str) -> PathBuf {
    let p = std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(fallback),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} not found ({var} unset or wrong); run scripts/test to build llama-server and fetch the model",
        p.display()
    );
    p
}

/// A running llama-server, killed on drop.
struct Llama {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Llama {
    fn start() -> Llama {
        let bin = required("KG_LLAMA_SERVER", "target/llama/build/bin/llama-server");
        let model = required("KG_LLAMA_MODEL", "target/llama/model.gguf");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&bin)
            .arg("-m")
            .arg(&model)
            .args(["-c", "8192", "-np", "4", "--metrics", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "-t", "2"])
            // Enough HTTP threads that streaming load never starves the telemetry reads (the
            // default is sized from the core count, which on a 2-core host is below the load).
            .args(["--threads-http", "16"])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut l = Llama {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        l.wait_healthy(Duration::from_secs(120));
        l
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Poll `/health` until it answers 200 (the model is loaded), the process exits, or the
    /// deadline passes.
    fn wait_healthy(&mut self, within: Duration) {
        let client = HttpClient::new(Duration::from_secs(2)).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("llama-server exited with {status}:\n{}", self.log());
            }
            if client.get(&http::join(&self.url, "/health")).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not healthy within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Start a streamed completion of `n` tokens and read it to the end on a thread.
fn load(url: &str, n: u32) -> std::thread::JoinHandle<()> {
    let addr = url.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let body = format!(
            "{{\"prompt\":\"Write a long story about a lighthouse keeper.\",\"n_predict\":{n},\"stream\":true,\"ignore_eos\":true}}"
        );
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return;
        };
        let _ = write!(
            s,
            "POST /completion HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    })
}

#[test]
fn real_llama_server_reports_slots_context_load_and_first_token_latency() {
    let llama = Llama::start();
    let clock = SystemClock;
    let probe = ProbeConfig::default();
    let mut engine = HttpEngine::new(
        EngineKind::Llamacpp,
        &llama.url,
        Duration::from_secs(90),
        Some(probe.clone()),
    )
    .unwrap();

    // Idle: 4 slots of 8192 / 4 = 2048 tokens, nothing running, and a probe answered.
    let now = clock.now();
    let r = engine.read_engine(now).unwrap();
    assert_eq!(r.sample.at, now);
    assert_eq!(r.sample.slots, Some(4), "{r:?}");
    assert_eq!(r.sample.slot_context_tokens, Some(2048), "{r:?}");
    assert_eq!(r.sample.kv_capacity_tokens, Some(8192), "{r:?}");
    assert_eq!(r.requests_waiting, Some(0), "{r:?}");
    let ttft = r.probe_ttft.expect("the probe measured a first token");
    assert!(ttft.get() > 0 && ttft < Millis::secs(30), "{ttft}");
    assert_eq!(r.probe_status, None);
    eprintln!("idle probe TTFT: {ttft}");

    // The /completion probe works too.
    let t = engine
        .probe_ttft(&ProbeConfig {
            path: "/completion".into(),
            model: None,
        })
        .unwrap();
    assert!(t.first_token >= t.headers || t.first_token > Duration::ZERO);

    // Host memory while the server runs: a sane, fresh sample.
    let mut host = HostMemory::new();
    let now = clock.now();
    let h = host.read_gpu(now).unwrap();
    assert_eq!(h.at, now);
    assert!(h.total.get() > 0 && h.free.get() > 0, "{h:?}");
    assert!(h.free.get() <= h.total.get(), "{h:?}");
    assert_eq!(h.used.get() + h.free.get(), h.total.get(), "{h:?}");

    // The same through the factory: a `host` pool with this llama-server as its engine.
    let mut pool = build_pool(
        "default",
        &GpuSource::Host,
        Some(&EngineSource::new(EngineKind::Llamacpp, &llama.url)),
    )
    .unwrap();
    let now = clock.now();
    assert_eq!(pool.gpu.read_gpu(now).unwrap().at, now);
    let r = pool.engine.as_mut().unwrap().read_engine(now).unwrap();
    assert_eq!(r.sample.slots, Some(4));
    assert!(
        r.probe_ttft.is_some(),
        "llama.cpp has no TTFT histogram: probed"
    );

    // Loaded: 6 long requests on 4 slots. Poll (bounded) until all slots are busy, the rest
    // wait and the busy slots hold context (/slots and /metrics are read one after the
    // other, so one read can catch a slot between requests). Each request generates 400
    // tokens so the busy-and-queued window lasts seconds even on a fast host.
    let load_threads: Vec<_> = (0..6).map(|_| load(&llama.url, 400)).collect();
    let mut no_probe = HttpEngine::new(
        EngineKind::Llamacpp,
        &llama.url,
        Duration::from_secs(30),
        None,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let busy = loop {
        let r = no_probe.read_engine(clock.now()).unwrap();
        if r.requests_running == Some(4)
            && r.requests_waiting.unwrap_or(0) >= 1
            && r.sample.kv_used_tokens.unwrap_or(0) > 0
        {
            break r;
        }
        assert!(
            Instant::now() < deadline && !load_threads.iter().all(|t| t.is_finished()),
            "the server never showed 4 busy slots and a queue (load finished: {}): {r:?}\n{}",
            load_threads.iter().all(|t| t.is_finished()),
            llama.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(busy.sample.kv_used_tokens.unwrap() > 0, "{busy:?}");
    assert!(busy.kv_usage_fraction.unwrap() > 0.0, "{busy:?}");
    eprintln!("busy reading: {busy:?}");

    // Under load the probe waits for a slot: its first token comes later than when idle.
    let loaded = engine.probe_ttft(&probe).unwrap();
    eprintln!("loaded probe TTFT: {:?}", loaded.first_token);
    assert!(
        loaded.first_token > Duration::from_millis(ttft.get()),
        "idle {ttft}, loaded {:?}",
        loaded.first_token
    );
}
