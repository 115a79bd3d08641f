//! The pass-through (`src/adapters/proxy.rs`) between a real client and a scripted engine,
//! all on 127.0.0.1 port 0 (issue 13): streamed bytes arrive unchanged, exact usage is
//! counted exactly, and every fault (refused, reset, 500, client gone, too large, unknown
//! profile) reaches the client as it should and is counted. Nothing sleeps to wait for an
//! event: each waits on a socket or a channel, under a deadline that only fails the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kanban_governor::adapters::proxy::stats::{Outcome, ProxyStats};
use kanban_governor::adapters::proxy::{self, Proxy, Routes, Settings};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The longest any awaited event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// How a scripted answer ends after its chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The terminating chunk (or the last byte of a known length).
    Finish,
    /// The socket is closed with the answer incomplete.
    Reset,
    /// Wait for the proxy to close the connection, and report whether it did.
    AwaitClose,
}

/// One scripted answer: status line and headers, body chunks each after a gap, how it ends.
#[derive(Debug, Clone)]
struct Script {
    head: String,
    chunks: Vec<(Vec<u8>, Duration)>,
    end: End,
}

impl Script {
    fn sse(chunks: Vec<(Vec<u8>, Duration)>, end: End) -> Script {
        Script {
            head: "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n".into(),
            chunks,
            end,
        }
    }

    fn json(status: &str, body: &str) -> Script {
        Script {
            head: format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ),
            chunks: vec![(body.as_bytes().to_vec(), Duration::ZERO)],
            end: End::Finish,
        }
    }

    fn chunked(&self) -> bool {
        self.head.contains("transfer-encoding: chunked")
    }
}

/// What the engine saw of one request, and (for [`End::AwaitClose`]) whether the proxy closed
/// the connection.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
    closed: Option<bool>,
}

/// A scripted engine: answers every request with `script`, reports each on the channel.
async fn engine(script: Script) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let script = script.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // Serve requests on this connection until the client closes it.
                while let Some((head, body)) = read_request(&mut s).await {
                    let closed = answer(&mut s, &script).await;
                    let _ = tx.send(Seen { head, body, closed });
                    if script.end != End::Finish {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&byte[..n]);
    }
    Some((head, body))
}

async fn answer(s: &mut TcpStream, script: &Script) -> Option<bool> {
    s.write_all(format!("{}\r\n", script.head).as_bytes())
        .await
        .ok()?;
    for (chunk, gap) in &script.chunks {
        if !gap.is_zero() {
            // The script's own timing (what is under test), not a wait for an event.
            tokio::time::sleep(*gap).await;
        }
        let framed = if script.chunked() {
            let mut f = format!("{:x}\r\n", chunk.len()).into_bytes();
            f.extend_from_slice(chunk);
            f.extend_from_slice(b"\r\n");
            f
        } else {
            chunk.clone()
        };
        s.write_all(&framed).await.ok()?;
        s.flush().await.ok()?;
    }
    match script.end {
        End::Finish => {
            if script.chunked() {
                s.write_all(b"0\r\n\r\n").await.ok()?;
            }
            None
        }
        End::Reset => {
            let _ = s.shutdown().await;
            None
        }
        End::AwaitClose => {
            let mut b = [0u8; 64];
            let r = tokio::time::timeout(DEADLINE, s.read(&mut b)).await;
            Some(matches!(r, Ok(Ok(0)) | Ok(Err(_))))
        }
    }
}

/// A proxy routing `coder` (and unattributed paths) to `engine`.
async fn start_proxy(engine: SocketAddr, max_body: usize) -> (SocketAddr, Arc<ProxyStats>) {
    let settings = Settings {
        max_body,
        drain: Duration::from_secs(1),
        max_connections: proxy::DEFAULT_MAX_CONNECTIONS,
    };
    start_proxy_with(engine, settings).await
}

/// [`start_proxy`] with `settings`.
async fn start_proxy_with(engine: SocketAddr, settings: Settings) -> (SocketAddr, Arc<ProxyStats>) {
    let url = format!("http://{engine}");
    let routes = Routes::new([("coder", Some(url.as_str()))], Some(&url));
    let stats = Arc::new(ProxyStats::default());
    let p = Arc::new(Proxy::new(routes, settings, stats.clone()));
    let l = proxy::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    // The server lives as long as the test's runtime.
    std::mem::forget(stop);
    tokio::spawn(proxy::serve(l, p, rx));
    (addr, stats)
}

/// What a client got: status, content type, the body bytes, and whether the body ended
/// cleanly.
#[derive(Debug, PartialEq)]
struct Got {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    complete: bool,
}

async fn send(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> (
    hyper::Response<hyper::body::Incoming>,
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("no answer within the deadline")
        .unwrap();
    (resp, sender)
}

async fn fetch(addr: SocketAddr, path: &str, body: &[u8]) -> Got {
    let (resp, _sender) = send(addr, path, body).await;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut incoming = resp.into_body();
    let mut out = Vec::new();
    let complete = loop {
        match tokio::time::timeout(DEADLINE, incoming.frame()).await {
            Err(_) => panic!("the body stalled past the deadline"),
            Ok(None) => break true,
            Ok(Some(Err(_))) => break false,
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
        }
    };
    Got {
        status,
        content_type,
        body: out,
        complete,
    }
}

/// The next data frame of `body`, within the deadline (else the test fails saying `stalled`).
async fn next_data(body: &mut hyper::body::Incoming, stalled: &str) -> Bytes {
    let f = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect(stalled)
        .expect("the body ended")
        .expect("the body broke off");
    f.into_data().expect("a data frame")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const CHAT: &str = r#"{"model":"m","stream":true,"messages":[{"role":"system","content":"s"},{"role":"user","content":"work kanban task t_0badcafe"}]}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Issue 13: SSE passes chunk by chunk, unchanged: whatever the chunk sizes and the gaps
    /// between them, the bytes through the proxy equal the bytes straight from the engine.
    #[test]
    fn streamed_bytes_through_the_proxy_equal_the_bytes_direct(
        chunks in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 1..3000), 0u64..3),
            1..12,
        )
    ) {
        let script = Script::sse(
            chunks.iter().map(|(c, ms)| (c.clone(), Duration::from_millis(*ms))).collect(),
            End::Finish,
        );
        let expected: Vec<u8> = chunks.iter().flat_map(|(c, _)| c.clone()).collect();
        rt().block_on(async {
            let (up, _seen) = engine(script).await;
            let (px, stats) = start_proxy(up, 1 << 20).await;
            let direct = fetch(up, "/v1/chat/completions", CHAT.as_bytes()).await;
            let through = fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
            prop_assert_eq!(&direct.body, &expected);
            prop_assert_eq!(&through, &direct);
            let snap = stats.snapshot();
            prop_assert_eq!(snap.profiles["coder"].requests.get(&Outcome::Ok), Some(&1));
            prop_assert_eq!(snap.profiles["coder"].in_flight, 0);
            prop_assert_eq!(snap.tasks["t_0badcafe"].in_flight, 0);
            Ok(())
        })?;
    }
}

#[test]
fn a_json_answer_with_usage_is_counted_exactly_and_the_request_reaches_the_engine_unchanged() {
    rt().block_on(async {
        let body = r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"done"}}],"usage":{"prompt_tokens":1234,"completion_tokens":56,"total_tokens":1290}}"#;
        let (up, mut seen) = engine(Script::json("200 OK", body)).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let req = CHAT.replace("\"stream\":true", "\"stream\":false");
        let got = fetch(px, "/p/coder/v1/chat/completions?x=1", req.as_bytes()).await;
        assert_eq!((got.status, got.body.as_slice()), (200, body.as_bytes()));
        let s = seen.recv().await.unwrap();
        assert!(
            s.head.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
            "{}",
            s.head
        );
        assert!(s.head.contains(&format!("host: {up}\r\n")), "{}", s.head);
        assert_eq!(s.body, req.as_bytes());

        let snap = stats.snapshot();
        let p = &snap.profiles["coder"];
        assert_eq!((p.prompt_tokens, p.generated_tokens), (1234, 56));
        assert_eq!(
            (p.prompt_tokens_estimated, p.generated_tokens_estimated),
            (0, 0)
        );
        assert_eq!((p.ttft.count, p.in_flight), (1, 0));
        let t = &snap.tasks["t_0badcafe"];
        assert_eq!((t.requests, t.in_flight, t.tokens_now), (1, 0, 0));
        assert_eq!(t.profile, "coder");
        assert!(t.peak_tokens >= 1290, "{t:?}");

        // Any other path goes to the same engine as is, unattributed.
        let got = fetch(px, "/v1/chat/completions", req.as_bytes()).await;
        assert_eq!(got.status, 200);
        let s = seen.recv().await.unwrap();
        assert!(s.head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"));
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["(unattributed)"].requests.get(&Outcome::Ok),
            Some(&1)
        );
    });
}

#[test]
fn a_stream_with_a_usage_chunk_is_exact_and_one_without_is_estimated() {
    rt().block_on(async {
        let with = vec![
            (b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n".to_vec(), Duration::ZERO),
            (b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":70,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n".to_vec(), Duration::ZERO),
        ];
        let (up, _s) = engine(Script::sse(with, End::Finish)).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        assert!(fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await.complete);
        let p = stats.snapshot().profiles["coder"].clone();
        assert_eq!((p.prompt_tokens, p.generated_tokens, p.prompt_tokens_estimated), (70, 9, 0));

        let without = vec![(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\ndata: [DONE]\n\n".to_vec(),
            Duration::ZERO,
        )];
        let (up, _s) = engine(Script::sse(without, End::Finish)).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        assert!(fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await.complete);
        let p = stats.snapshot().profiles["coder"].clone();
        // 8 bytes of text: 2 tokens; the prompt is the body's bytes / 4.
        let prompt = (CHAT.len() as u64).div_ceil(4);
        assert_eq!((p.prompt_tokens, p.generated_tokens), (prompt, 2));
        assert_eq!((p.prompt_tokens_estimated, p.generated_tokens_estimated), (prompt, 2));
    });
}

#[test]
fn an_engine_that_refuses_gives_502_naming_the_engine() {
    rt().block_on(async {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (px, stats) = start_proxy(closed, 1 << 20).await;
        let got = fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        let text = String::from_utf8_lossy(&got.body);
        assert_eq!(got.status, 502, "{text}");
        assert!(
            text.contains(&format!(
                "cannot reach the engine of coder at http://{closed}"
            )),
            "{text}"
        );
        assert!(text.contains("engine.url"), "{text}");
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["coder"].requests.get(&Outcome::Unreachable),
            Some(&1)
        );
        assert_eq!(snap.profiles["coder"].in_flight, 0);
    });
}

#[test]
fn an_engine_reset_mid_stream_breaks_the_clients_stream_after_the_bytes_sent() {
    rt().block_on(async {
        let first = b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n".to_vec();
        let (up, _s) = engine(Script::sse(
            vec![(first.clone(), Duration::ZERO)],
            End::Reset,
        ))
        .await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let got = fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        assert_eq!(
            (got.status, got.body.as_slice(), got.complete),
            (200, first.as_slice(), false)
        );
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["coder"].requests.get(&Outcome::UpstreamReset),
            Some(&1)
        );
    });
}

#[test]
fn an_engine_500_passes_through_as_sent() {
    rt().block_on(async {
        let body = r#"{"error":{"message":"KV cache out of memory"}}"#;
        let (up, _s) = engine(Script::json("500 Internal Server Error", body)).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let direct = fetch(up, "/v1/chat/completions", CHAT.as_bytes()).await;
        let through = fetch(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        assert_eq!(through, direct);
        assert_eq!(
            (through.status, through.body.as_slice()),
            (500, body.as_bytes())
        );
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["coder"].requests.get(&Outcome::Http5xx),
            Some(&1)
        );
        // TTFT is of 2xx answers only.
        assert_eq!(snap.profiles["coder"].ttft.count, 0);
    });
}

#[test]
fn a_client_that_goes_away_mid_stream_closes_the_engines_connection() {
    rt().block_on(async {
        let first = b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n".to_vec();
        let (up, mut seen) = engine(Script::sse(
            vec![(first.clone(), Duration::ZERO)],
            End::AwaitClose,
        ))
        .await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let (resp, sender) = send(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        let mut body = resp.into_body();
        let f = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(f.data_ref().unwrap().as_ref(), first.as_slice());
        assert_eq!(stats.snapshot().profiles["coder"].in_flight, 1);
        // The client goes away: its connection closes.
        drop(body);
        drop(sender);
        let s = tokio::time::timeout(DEADLINE, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.closed, Some(true), "the engine's connection stayed open");
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["coder"].requests.get(&Outcome::ClientGone),
            Some(&1)
        );
        assert_eq!(snap.profiles["coder"].in_flight, 0);
        assert_eq!(snap.tasks["t_0badcafe"].in_flight, 0);
    });
}

#[test]
fn a_body_over_max_body_gets_413_naming_the_key_and_never_reaches_the_engine() {
    rt().block_on(async {
        let (up, mut seen) = engine(Script::json("200 OK", "{}")).await;
        let (px, stats) = start_proxy(up, 1024).await;
        let got = fetch(px, "/p/coder/v1/chat/completions", &[b' '; 2000]).await;
        let text = String::from_utf8_lossy(&got.body);
        assert_eq!(got.status, 413, "{text}");
        assert!(text.contains("proxy.max_body"), "{text}");
        // One at the bound is forwarded.
        let got = fetch(px, "/p/coder/v1/chat/completions", &[b' '; 1024]).await;
        assert_eq!(got.status, 200);
        assert_eq!(seen.recv().await.unwrap().body.len(), 1024);
        assert!(
            seen.try_recv().is_err(),
            "the oversized body reached the engine"
        );
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["coder"].requests.get(&Outcome::TooLarge),
            Some(&1)
        );
    });
}

#[test]
fn an_unknown_profile_gets_404_naming_the_governed_ones() {
    rt().block_on(async {
        let (up, _s) = engine(Script::json("200 OK", "{}")).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let got = fetch(px, "/p/codr/v1/chat/completions", CHAT.as_bytes()).await;
        let text = String::from_utf8_lossy(&got.body);
        assert_eq!(got.status, 404, "{text}");
        assert!(
            text.contains("\"codr\" is not a governed profile (governed: coder)"),
            "{text}"
        );
        let snap = stats.snapshot();
        assert_eq!(
            snap.profiles["(unknown)"]
                .requests
                .get(&Outcome::UnknownProfile),
            Some(&1)
        );
        assert!(!snap.profiles.contains_key("codr"));
    });
}

#[test]
fn an_empty_answer_is_counted_by_its_status_not_as_a_client_that_went_away() {
    rt().block_on(async {
        let (up, _s) = engine(Script::json("404 Not Found", "")).await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let through = fetch(px, "/p/coder/v1/props", b"").await;
        assert_eq!((through.status, through.body.len()), (404, 0));
        let snap = stats.snapshot();
        let requests = &snap.profiles["coder"].requests;
        assert_eq!(requests.get(&Outcome::Http4xx), Some(&1), "{requests:?}");
        assert_eq!(requests.get(&Outcome::ClientGone), None, "{requests:?}");
        assert_eq!(snap.profiles["coder"].in_flight, 0);
    });
}

#[test]
fn a_client_that_closes_on_done_before_the_body_ends_has_its_answer_counted_exactly() {
    rt().block_on(async {
        let answer = b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":700,\"completion_tokens\":64}}\n\ndata: [DONE]\n\n".to_vec();
        // The engine keeps the body open after `[DONE]` until the proxy closes it.
        let (up, mut seen) = engine(Script::sse(
            vec![(answer.clone(), Duration::ZERO)],
            End::AwaitClose,
        ))
        .await;
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let (resp, sender) = send(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while !got.ends_with(b"data: [DONE]\n\n") {
            got.extend_from_slice(&next_data(&mut body, "the answer stalled before [DONE]").await);
        }
        // The OpenAI SDK stops at `[DONE]` and closes.
        drop(body);
        drop(sender);
        let s = tokio::time::timeout(DEADLINE, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.closed, Some(true));
        let snap = stats.snapshot();
        let requests = &snap.profiles["coder"].requests;
        assert_eq!(requests.get(&Outcome::Ok), Some(&1), "{requests:?}");
        assert_eq!(requests.get(&Outcome::ClientGone), None, "{requests:?}");
        let t = &snap.tasks["t_0badcafe"];
        assert_eq!((t.final_peak_tokens, t.final_peak_exact), (764, true));
        assert_eq!(t.in_flight, 0);
    });
}

/// Issue 13 (chunk by chunk, and the TTFT of BENCHMARKS.md "Proxy"): each chunk reaches the
/// client before the engine writes the next, so nothing waits for a second chunk, a whole SSE
/// event (the first chunk ends mid-event here) or the end of the answer before forwarding.
/// The engine writes chunk k+1 only once the client has chunk k through the proxy; a proxy
/// that held a chunk back would stall the stream past the deadline.
#[test]
fn each_chunk_is_forwarded_before_the_engine_writes_the_next() {
    rt().block_on(async {
        let chunks: [&[u8]; 3] = [
            b"data: {\"choices\":[{\"delta\":{\"con",
            b"tent\":\"ab\"}}]}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ];
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        let (go, mut next) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_request(&mut s).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            for (i, c) in chunks.iter().enumerate() {
                if i > 0 && next.recv().await.is_none() {
                    return;
                }
                let mut f = format!("{:x}\r\n", c.len()).into_bytes();
                f.extend_from_slice(c);
                f.extend_from_slice(b"\r\n");
                s.write_all(&f).await.unwrap();
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
            // Hold the connection until the proxy is done with it.
            let _ = s.read(&mut [0u8; 64]).await;
        });
        let (px, stats) = start_proxy(up, 1 << 20).await;
        let (resp, _sender) = send(px, "/p/coder/v1/chat/completions", CHAT.as_bytes()).await;
        let mut body = resp.into_body();
        for c in chunks {
            let mut got = Vec::new();
            while got.len() < c.len() {
                let stalled = "a chunk was held back: the engine waits for the client to get it";
                got.extend_from_slice(&next_data(&mut body, stalled).await);
            }
            assert_eq!(got, c);
            let _ = go.send(());
        }
        let end = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
        let snap = stats.snapshot();
        assert_eq!(snap.profiles["coder"].requests.get(&Outcome::Ok), Some(&1));
        assert_eq!(snap.profiles["coder"].ttft.count, 1);
        let t = &snap.tasks["t_0badcafe"];
        assert_eq!((t.final_peak_tokens, t.final_peak_exact), (11, true));
    });
}

/// A raw client: write `req` on `s` (nothing when empty), read to the end. A reset (a
/// refused connection closed before the request was read) reads as what arrived before it.
async fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
    if !req.is_empty() {
        let _ = s.write_all(req).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("no answer within the deadline");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_connection_beyond_the_cap_gets_503_naming_it_and_the_others_keep_forwarding() {
    rt().block_on(async {
        let body = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let (up, _seen) = engine(Script::json("200 OK", body)).await;
        let settings = Settings {
            max_body: 1 << 20,
            drain: Duration::from_secs(1),
            max_connections: 2,
        };
        let (px, stats) = start_proxy_with(up, settings).await;
        let req = format!(
            "POST /p/coder/v1/chat/completions HTTP/1.1\r\nhost: {px}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
            CHAT.len()
        );
        // Two connections take the cap (accepted in order, before the third).
        let mut a = TcpStream::connect(px).await.unwrap();
        let mut b = TcpStream::connect(px).await.unwrap();
        // The third is answered at once, before it sends anything.
        let mut c = TcpStream::connect(px).await.unwrap();
        let refused = exchange(&mut c, b"").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("2 client connections are open, its cap"), "{refused}");
        assert!(refused.contains("ulimit -n"), "{refused}");
        assert_eq!(stats.snapshot().connections_refused, 1);
        // The two within the cap are forwarded.
        for s in [&mut a, &mut b] {
            let got = exchange(s, req.as_bytes()).await;
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            assert!(got.ends_with(body), "{got}");
        }
        let snap = stats.snapshot();
        assert_eq!(snap.profiles["coder"].requests.get(&Outcome::Ok), Some(&2));
        // Their slots are free again once they closed: a new client is served (the proxy
        // sees the close a moment after the client does, so a refusal then is retried).
        let started = std::time::Instant::now();
        loop {
            let mut d = TcpStream::connect(px).await.unwrap();
            let got = exchange(&mut d, req.as_bytes()).await;
            if got.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 503"), "{got}");
            assert!(started.elapsed() < DEADLINE, "no slot freed: {got}");
            // A poll under the deadline, as `wait_for` polls.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
