//! Engine telemetry against a real `llama-server` (CPU, SmolLM2-135M): `/slots`, `/props`,
//! `/metrics` through [`HttpEngine`], the latency probe, and a loaded server showing busy and
//! deferred slots. Also the `host` memory source while the server runs.
//!
//! The server: [`llama::Llama`] (`tests/common/llama.rs`).

#[path = "common/llama.rs"]
mod llama;
use llama::{Llama, load};

use std::time::{Duration, Instant};

use kanban_governor::adapters::engine::{EngineKind, HttpEngine, ProbeConfig};
use kanban_governor::adapters::host_mem::HostMemory;
use kanban_governor::adapters::telemetry::{EngineSource, GpuSource, build_pool};
use kanban_governor::governor::Millis;
use kanban_governor::ports::{Clock, EngineTelemetry, GpuTelemetry, SystemClock};

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
    // Stamped when its status read started, after the probe (a slow probe does not age it).
    assert!(
        now <= r.sample.at && r.sample.at <= clock.now(),
        "{now} {}",
        r.sample.at
    );
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
