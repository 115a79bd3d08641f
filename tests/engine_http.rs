//! Engine telemetry on fixture text: the pure parsers on captured (llama.cpp) and documented
//! (vLLM, SGLang, Ollama) outputs, then the HTTP client and [`HttpEngine`] against a real
//! HTTP/1.1 server on port 0 that serves those fixtures (and streams for the probe).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanban_governor::adapters::engine::{
    self, EngineKind, HttpEngine, ProbeConfig, parse_llamacpp, parse_llamacpp_props,
    parse_llamacpp_slots, parse_ollama_ps, parse_sglang_metrics, parse_vllm_metrics,
};
use kanban_governor::adapters::http::{self, HttpClient};
use kanban_governor::adapters::prom;
use kanban_governor::governor::Millis;
use kanban_governor::ports::EngineTelemetry;

fn fixture(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---- pure parsers on fixtures ----------------------------------------------------------------

#[test]
fn vllm_v1_metrics_give_kv_capacity_use_load_and_histograms() {
    let e = prom::parse(&fixture("vllm/metrics-v1.txt")).unwrap();
    let r = parse_vllm_metrics(&e, Millis(9));
    assert_eq!(r.sample.kv_capacity_tokens, Some(18_031 * 16));
    assert_eq!(
        r.sample.kv_used_tokens,
        Some((18_031.0 * 16.0 * 0.625_f64).round() as u64)
    );
    assert_eq!(r.kv_usage_fraction, Some(0.625));
    assert_eq!(r.requests_running, Some(3));
    assert_eq!(r.requests_waiting, Some(2));
    assert_eq!(r.preemptions_total, Some(7));
    assert_eq!(r.ttft_buckets.len(), 23);
    assert_eq!(r.ttft_buckets[0], (0.001, 0));
    assert_eq!(*r.ttft_buckets.last().unwrap(), (f64::INFINITY, 114));
    assert!(
        r.ttft_buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    );
    assert_eq!(*r.itl_buckets.last().unwrap(), (f64::INFINITY, 10_000));
    assert_eq!(r.sample.at, Millis(9));
}

#[test]
fn legacy_vllm_metrics_use_the_deprecated_names() {
    let e = prom::parse(&fixture("vllm/metrics-legacy.txt")).unwrap();
    let r = parse_vllm_metrics(&e, Millis(0));
    assert_eq!(r.kv_usage_fraction, Some(0.05));
    assert_eq!(r.sample.kv_capacity_tokens, Some(2_810 * 16));
    assert_eq!(r.sample.kv_used_tokens, Some(2_248));
    assert_eq!(r.preemptions_total, Some(0));
    assert_eq!(*r.itl_buckets.last().unwrap(), (f64::INFINITY, 61));
    assert_eq!(*r.ttft_buckets.last().unwrap(), (f64::INFINITY, 3));
}

#[test]
fn sglang_metrics_give_the_token_pool_and_queue() {
    let e = prom::parse(&fixture("sglang/metrics.txt")).unwrap();
    let r = parse_sglang_metrics(&e, Millis(0));
    assert_eq!(r.sample.kv_capacity_tokens, Some(44_000));
    assert_eq!(r.sample.kv_used_tokens, Some(12_320));
    assert_eq!(r.kv_usage_fraction, Some(0.28));
    assert_eq!(r.requests_running, Some(5));
    assert_eq!(r.requests_waiting, Some(3));
    assert_eq!(*r.ttft_buckets.last().unwrap(), (f64::INFINITY, 64));
    assert_eq!(r.itl_buckets.len(), 7);
}

#[test]
fn captured_llama_server_output_gives_four_slots_of_2048() {
    let props = parse_llamacpp_props(&fixture("llamacpp/props.json")).unwrap();
    assert_eq!(props.total_slots, 4);
    assert_eq!(props.n_ctx, Some(2048));

    let idle = parse_llamacpp_slots(&fixture("llamacpp/slots-idle.json")).unwrap();
    let m = prom::parse(&fixture("llamacpp/metrics-idle.txt")).unwrap();
    let r = parse_llamacpp(Some(&idle), Some(&props), Some(&m), Millis(1));
    assert_eq!(r.sample.slots, Some(4));
    assert_eq!(r.sample.slot_context_tokens, Some(2048));
    assert_eq!(r.sample.kv_capacity_tokens, Some(8192));
    assert_eq!(r.sample.kv_used_tokens, Some(0));
    assert_eq!(r.requests_running, Some(0));
    assert_eq!(r.requests_waiting, Some(0));

    let busy = parse_llamacpp_slots(&fixture("llamacpp/slots-busy.json")).unwrap();
    let m = prom::parse(&fixture("llamacpp/metrics-busy.txt")).unwrap();
    let r = parse_llamacpp(Some(&busy), Some(&props), Some(&m), Millis(1));
    assert_eq!(r.requests_running, Some(4));
    assert_eq!(r.requests_waiting, Some(4));
    assert_eq!(r.peak_context_tokens, Some(168));
    // Every busy slot holds its prompt plus what it decoded so far.
    let expected: u64 = busy.iter().map(|s| s.context_tokens()).sum();
    assert!(expected > 4 * 87, "{expected}");
    assert_eq!(r.sample.kv_used_tokens, Some(expected));
}

#[test]
fn ollama_ps_flags_cpu_offload() {
    let gpu = parse_ollama_ps(&fixture("ollama/ps-gpu.json")).unwrap();
    let r = engine::ollama_reading(&gpu, Millis(0));
    assert!(!r.offloaded);
    assert_eq!(r.sample.slot_context_tokens, Some(8192));
    let off = parse_ollama_ps(&fixture("ollama/ps-offload.json")).unwrap();
    assert_eq!(off.len(), 2);
    assert!(off[0].offloaded() && !off[1].offloaded());
    assert!(engine::ollama_reading(&off, Millis(0)).offloaded);
    assert!(
        parse_ollama_ps(&fixture("ollama/ps-empty.json"))
            .unwrap()
            .is_empty()
    );
    assert!(parse_ollama_ps("{\"error\":\"x\"}").is_err());
}

// ---- a real HTTP server on port 0 -------------------------------------------------------------

/// One canned answer: status and body chunks, each after a delay.
#[derive(Clone)]
struct Route {
    status: u16,
    chunks: Vec<(Duration, String)>,
}

fn ok(body: String) -> Route {
    Route {
        status: 200,
        chunks: vec![(Duration::ZERO, body)],
    }
}

/// A tiny HTTP/1.1 server (std sockets, one thread per connection) that answers from a route
/// table with chunked bodies, and records the requests it got (request line, body).
struct Server {
    addr: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl Server {
    fn start(routes: HashMap<&'static str, Route>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let routes = Arc::new(routes);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let routes = routes.clone();
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &routes, &log));
            }
        });
        Server { addr, requests }
    }
}

fn serve(
    conn: TcpStream,
    routes: &HashMap<&'static str, Route>,
    log: &Mutex<Vec<(String, String)>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let request_line = line.trim().to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    log.lock().unwrap().push((
        request_line.clone(),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let route = routes.get(path).cloned().unwrap_or(Route {
        status: 404,
        chunks: vec![(Duration::ZERO, "not found".into())],
    });
    let mut w = conn;
    let _ = write!(
        w,
        "HTTP/1.1 {} X\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        route.status
    );
    let _ = w.flush();
    for (delay, chunk) in route.chunks {
        std::thread::sleep(delay);
        let _ = write!(w, "{:x}\r\n{chunk}\r\n", chunk.len());
        let _ = w.flush();
    }
    let _ = write!(w, "0\r\n\r\n");
    let _ = w.flush();
}

#[test]
fn the_get_client_reads_a_body_and_reports_status_and_refusal() {
    let s = Server::start(HashMap::from([
        ("/metrics", ok(fixture("llamacpp/metrics-busy.txt"))),
        (
            "/busy",
            Route {
                status: 503,
                chunks: vec![(Duration::ZERO, "overloaded".into())],
            },
        ),
    ]));
    let c = HttpClient::new(Duration::from_secs(5)).unwrap();
    let r = c.get(&http::join(&s.addr, "/metrics")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fixture("llamacpp/metrics-busy.txt"));
    assert_eq!(s.requests.lock().unwrap()[0].0, "GET /metrics HTTP/1.1");

    let err = c.get(&http::join(&s.addr, "/busy")).unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(err.to_string().contains("overloaded"), "{err}");

    // A port nobody listens on: bind one, note it, close it.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = c.get(&format!("http://{free}/metrics")).unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[test]
fn the_get_client_gives_up_after_its_timeout() {
    let s = Server::start(HashMap::from([(
        "/slow",
        Route {
            status: 200,
            chunks: vec![(Duration::from_secs(3), "late".into())],
        },
    )]));
    let c = HttpClient::new(Duration::from_millis(200)).unwrap();
    let t = Instant::now();
    let err = c.get(&http::join(&s.addr, "/slow")).unwrap_err();
    assert!(err.to_string().contains("did not answer within"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn http_engines_read_each_kind_from_a_live_server() {
    let s = Server::start(HashMap::from([
        ("/metrics", ok(fixture("vllm/metrics-v1.txt"))),
        ("/api/ps", ok(fixture("ollama/ps-offload.json"))),
    ]));
    let mut vllm =
        HttpEngine::new(EngineKind::Vllm, &s.addr, Duration::from_secs(5), None).unwrap();
    let r = vllm.read_engine(Millis(5)).unwrap();
    assert_eq!(r.sample.kv_capacity_tokens, Some(18_031 * 16));
    assert_eq!(r.sample.at, Millis(5));
    assert_eq!(r.probe_ttft, None);

    let mut ollama =
        HttpEngine::new(EngineKind::Ollama, &s.addr, Duration::from_secs(5), None).unwrap();
    assert!(ollama.read_engine(Millis(5)).unwrap().offloaded);

    // The same text read as SGLang has no sglang: names: a reading with nothing known.
    let mut sg =
        HttpEngine::new(EngineKind::Sglang, &s.addr, Duration::from_secs(5), None).unwrap();
    assert_eq!(
        sg.read_engine(Millis(5)).unwrap().sample.kv_capacity_tokens,
        None
    );
}

#[test]
fn llama_engine_reads_slots_props_and_metrics_and_tolerates_metrics_off() {
    let s = Server::start(HashMap::from([
        ("/slots", ok(fixture("llamacpp/slots-busy.json"))),
        ("/props", ok(fixture("llamacpp/props.json"))),
        ("/metrics", ok(fixture("llamacpp/metrics-busy.txt"))),
    ]));
    let mut e =
        HttpEngine::new(EngineKind::Llamacpp, &s.addr, Duration::from_secs(5), None).unwrap();
    let r = e.read_engine(Millis(1)).unwrap();
    assert_eq!(r.sample.slots, Some(4));
    assert_eq!(r.requests_waiting, Some(4));

    // A server started without --metrics answers 501 there (here: 404): still a reading.
    let s = Server::start(HashMap::from([
        ("/slots", ok(fixture("llamacpp/slots-idle.json"))),
        ("/props", ok(fixture("llamacpp/props.json"))),
    ]));
    let mut e =
        HttpEngine::new(EngineKind::Llamacpp, &s.addr, Duration::from_secs(5), None).unwrap();
    let r = e.read_engine(Millis(1)).unwrap();
    assert_eq!(r.sample.slot_context_tokens, Some(2048));
    assert_eq!(r.requests_waiting, None);

    // Garbage where metrics should be: an error naming the URL and the line.
    let s = Server::start(HashMap::from([
        ("/slots", ok(fixture("llamacpp/slots-idle.json"))),
        ("/metrics", ok("llamacpp:x {oops\n".into())),
    ]));
    let mut e =
        HttpEngine::new(EngineKind::Llamacpp, &s.addr, Duration::from_secs(5), None).unwrap();
    let err = e.read_engine(Millis(1)).unwrap_err().to_string();
    assert!(err.contains("/metrics") && err.contains("line 1"), "{err}");
}

#[test]
fn an_unreachable_engine_is_an_error_naming_the_url() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut e = HttpEngine::new(
        EngineKind::Vllm,
        &format!("http://{free}"),
        Duration::from_secs(2),
        None,
    )
    .unwrap();
    let err = e.read_engine(Millis(0)).unwrap_err().to_string();
    assert!(
        err.contains(&free.to_string()) && err.contains("engine.url"),
        "{err}"
    );
    assert!(HttpEngine::new(EngineKind::Vllm, "https://x", Duration::from_secs(1), None).is_err());
}

#[test]
fn the_probe_times_the_first_token_not_the_first_byte() {
    let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n";
    let token = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let s = Server::start(HashMap::from([
        (
            "/v1/chat/completions",
            Route {
                status: 200,
                chunks: vec![
                    (Duration::ZERO, role.into()),
                    (Duration::from_millis(300), token.into()),
                    (Duration::ZERO, "data: [DONE]\n\n".into()),
                ],
            },
        ),
        ("/metrics", ok(String::new())),
    ]));
    let probe = ProbeConfig {
        model: Some("m".into()),
        ..ProbeConfig::default()
    };
    let mut e = HttpEngine::new(
        EngineKind::Openai,
        &s.addr,
        Duration::from_secs(5),
        Some(probe.clone()),
    )
    .unwrap();
    let t = e.probe_ttft(&probe).unwrap();
    assert!(t.first_token >= Duration::from_millis(300), "{t:?}");
    assert!(t.headers < Duration::from_millis(300), "{t:?}");
    let r = e.read_engine(Millis(0)).unwrap();
    assert!(r.probe_ttft.unwrap() >= Millis(300), "{r:?}");
    let (line, body) = s.requests.lock().unwrap()[0].clone();
    assert_eq!(line, "POST /v1/chat/completions HTTP/1.1");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["stream"], true);
}

#[test]
fn a_refused_probe_is_reported_as_its_status() {
    let s = Server::start(HashMap::from([(
        "/v1/chat/completions",
        Route {
            status: 429,
            chunks: vec![(Duration::ZERO, "Too Many Requests".into())],
        },
    )]));
    let mut e = HttpEngine::new(
        EngineKind::Openai,
        &s.addr,
        Duration::from_secs(5),
        Some(ProbeConfig::default()),
    )
    .unwrap();
    let r = e.read_engine(Millis(0)).unwrap();
    assert_eq!(r.probe_status, Some(429));
    assert_eq!(r.probe_ttft, None);
}

#[test]
fn a_probe_with_no_first_token_within_the_timeout_is_an_overload_signal_not_a_failed_read() {
    let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n";
    let token = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    // The engine takes the request and starts the stream, but its first token comes long
    // after the client's timeout (every slot busy); its status endpoints answer at once.
    let slow_token = Route {
        status: 200,
        chunks: vec![
            (Duration::ZERO, role.into()),
            (Duration::from_secs(5), token.into()),
        ],
    };
    let models = ok(r#"{"data":[{"id":"m"}]}"#.into());
    let s = Server::start(HashMap::from([
        ("/v1/chat/completions", slow_token.clone()),
        ("/v1/models", models),
        ("/metrics", ok("vllm:num_requests_running 4\n".into())),
    ]));
    let timeout = Duration::from_millis(300);
    for kind in [EngineKind::Openai, EngineKind::Vllm] {
        let mut e = HttpEngine::new(kind, &s.addr, timeout, Some(ProbeConfig::default())).unwrap();
        let r = e.read_engine(Millis(0)).unwrap();
        assert_eq!(r.probe_timed_out, Some(Millis(300)), "{kind:?}: {r:?}");
        // Stamped after the probe: its wait is a latency signal, not age.
        assert!(r.sample.at >= Millis(300), "{kind:?}: {r:?}");
        assert_eq!((r.probe_ttft, r.probe_status), (None, None), "{kind:?}");
    }
    // A server that answers nothing in time at all (hung: the kernel still accepts the
    // connection) is not there: the read fails and the pool holds.
    let hung = Route {
        status: 200,
        chunks: vec![(Duration::from_secs(5), "{}".into())],
    };
    let s = Server::start(HashMap::from([
        ("/v1/chat/completions", slow_token),
        ("/v1/models", hung),
    ]));
    let mut e = HttpEngine::new(
        EngineKind::Openai,
        &s.addr,
        timeout,
        Some(ProbeConfig {
            model: Some("m".into()),
            ..ProbeConfig::default()
        }),
    )
    .unwrap();
    let err = e.read_engine(Millis(0)).unwrap_err();
    assert!(err.to_string().contains("/v1/models"), "{err}");
}

#[test]
fn the_blocking_client_works_inside_spawn_blocking() {
    let s = Server::start(HashMap::from([("/metrics", ok("x 1\n".into()))]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = http::join(&s.addr, "/metrics");
    let body = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                HttpClient::new(Duration::from_secs(5)).unwrap().get(&url)
            })
            .await
        })
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(body, "x 1\n");
    // And the async fn directly, from async code.
    let url = http::join(&s.addr, "/metrics");
    let r = rt
        .block_on(http::fetch(&url, Duration::from_secs(5)))
        .unwrap();
    assert_eq!(r.body, "x 1\n");
}

#[test]
fn a_probe_without_a_model_asks_the_engine_which_it_serves() {
    let token = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let s = Server::start(HashMap::from([
        (
            "/v1/models",
            ok("{\"object\":\"list\",\"data\":[{\"id\":\"Qwen/Qwen2.5-7B\",\"object\":\"model\"}]}".into()),
        ),
        ("/v1/chat/completions", ok(token.into())),
        ("/api/ps", ok(fixture("ollama/ps-gpu.json"))),
    ]));
    let mut e = HttpEngine::new(
        EngineKind::Openai,
        &s.addr,
        Duration::from_secs(5),
        Some(ProbeConfig::default()),
    )
    .unwrap();
    assert!(e.read_engine(Millis(0)).unwrap().probe_ttft.is_some());
    assert!(e.read_engine(Millis(1)).unwrap().probe_ttft.is_some());
    let reqs = s.requests.lock().unwrap().clone();
    // /v1/models once, then two probes naming that model.
    assert_eq!(
        reqs.iter().filter(|r| r.0.contains("/v1/models")).count(),
        1
    );
    let probes: Vec<_> = reqs.iter().filter(|r| r.0.contains("chat")).collect();
    assert_eq!(probes.len(), 2);
    assert!(
        probes[1].1.contains("\"model\":\"Qwen/Qwen2.5-7B\""),
        "{}",
        probes[1].1
    );

    // Ollama probes the model it has loaded.
    let mut o = HttpEngine::new(
        EngineKind::Ollama,
        &s.addr,
        Duration::from_secs(5),
        Some(ProbeConfig::default()),
    )
    .unwrap();
    assert!(o.read_engine(Millis(0)).unwrap().probe_ttft.is_some());
    // (The probe first, then the status it reports: `/api/ps` before and after it.)
    let reqs = s.requests.lock().unwrap().clone();
    let last = &reqs.iter().rev().find(|r| r.0.contains("chat")).unwrap().1;
    assert!(last.contains("\"model\":\"qwen2.5:32b\""), "{last}");
    assert!(reqs.last().unwrap().0.contains("/api/ps"), "{reqs:?}");
}

#[test]
fn ollama_with_nothing_loaded_is_not_probed_and_a_rejected_probe_names_the_model() {
    let s = Server::start(HashMap::from([
        ("/api/ps", ok(fixture("ollama/ps-empty.json"))),
        (
            "/v1/chat/completions",
            Route {
                status: 400,
                chunks: vec![(Duration::ZERO, "{\"error\":\"model is required\"}".into())],
            },
        ),
    ]));
    let mut o = HttpEngine::new(
        EngineKind::Ollama,
        &s.addr,
        Duration::from_secs(5),
        Some(ProbeConfig::default()),
    )
    .unwrap();
    let r = o.read_engine(Millis(0)).unwrap();
    assert_eq!((r.probe_ttft, r.probe_status), (None, None));
    assert!(
        !s.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.0.contains("chat"))
    );

    let mut l = HttpEngine::new(
        EngineKind::Openai,
        &s.addr,
        Duration::from_secs(5),
        Some(ProbeConfig {
            model: Some("nope".into()),
            ..ProbeConfig::default()
        }),
    )
    .unwrap();
    let err = l.read_engine(Millis(0)).unwrap_err().to_string();
    assert!(
        err.contains("model is required") && err.contains("model name"),
        "{err}"
    );
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A server whose every answer is `total` bytes of Prometheus-looking comment, generated as it
/// is written (never stored), chunked or with a `Content-Length`. Returns its base URL and the
/// bytes it managed to write to each connection, sent when the client hangs up.
fn huge_engine(total: u64, declare_length: bool) -> (String, std::sync::mpsc::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    line.clear();
                }
                let head = if declare_length {
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
                };
                let mut written = 0u64;
                let chunk = format!("# {}\n", "x".repeat(64 * 1024 - 3));
                if conn.write_all(head.as_bytes()).is_ok() {
                    while written < total {
                        let ok = if declare_length {
                            conn.write_all(chunk.as_bytes())
                        } else {
                            write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len())
                        };
                        if ok.is_err() {
                            break;
                        }
                        written += chunk.len() as u64;
                    }
                    if !declare_length && written >= total {
                        let _ = conn.write_all(b"0\r\n\r\n");
                    }
                }
                let _ = tx.send(written);
            });
        }
    });
    (addr, rx)
}

/// Issue 11: an engine answering 1.5 GB took the daemon to 3.6 GB RSS. The body is now read
/// up to 16 MiB and no further: the read fails naming the URL and the limit (the pool then
/// holds, as for any failed engine read), memory stays bounded, and the engine sees the
/// connection closed long before it has sent its 256 MiB.
#[test]
fn an_engine_answering_a_huge_body_is_a_read_error_naming_the_limit_with_bounded_memory() {
    const TOTAL: u64 = 256 * 1024 * 1024;
    for declare_length in [false, true] {
        let (url, written) = huge_engine(TOTAL, declare_length);
        let mut e = HttpEngine::new(EngineKind::Vllm, &url, Duration::from_secs(60), None).unwrap();
        let before = peak_rss();
        let err = e.read_engine(Millis(0)).unwrap_err().to_string();
        let grew = peak_rss().saturating_sub(before);
        assert!(
            err.contains(&format!("{url}/metrics")) && err.contains("more than 16777216 bytes"),
            "{err}"
        );
        assert!(err.contains("engine.url"), "{err}");
        assert!(
            grew < 96 * 1024 * 1024,
            "peak RSS grew by {grew} bytes reading a {TOTAL}-byte answer"
        );
        let sent = written
            .recv_timeout(Duration::from_secs(30))
            .expect("the engine sees the connection closed");
        assert!(sent < TOTAL / 2, "the engine wrote {sent} of {TOTAL} bytes");
    }
}
