//! The pass-through's overhead (issue 13, `scripts/bench-proxy`): one process holds a fake
//! engine (hyper, 127.0.0.1), the proxy in front of it, and the clients.
//!
//! - added TTFT: 64 concurrent streaming requests, direct and through the proxy, p50/p99 of
//!   the time to the first body byte (the engine answers its first chunk at once, then 20
//!   more 1 ms apart); and the same one stream at a time, which is the hop's own latency
//!   (at 64 at once, most of the added time is waiting for the two cores, which the proxy's
//!   socket work shares with the engine's and the clients');
//! - CPU per streamed token: the process's CPU time (user + system) over the streaming
//!   rounds through the proxy less that over the direct rounds, per token (one chunk each)
//!   that went through;
//! - small non-streaming requests/s through the proxy: 16 keep-alive clients for 3 s;
//! - RSS growth with 512 concurrent streams held open (the whole process: proxy, engine and
//!   clients together, so an upper bound on the proxy's own).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame};
use kanban_governor::adapters::proxy::stats::ProxyStats;
use kanban_governor::adapters::proxy::{self, Proxy, Routes, Settings};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";

async fn engine(gap: Duration, chunks: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let stream = req.uri().path().ends_with("stream");
                        let _ = req.into_body().collect().await;
                        let body: http_body_util::combinators::BoxBody<
                            Bytes,
                            std::convert::Infallible,
                        > = if stream {
                            let (tx, rx) = tokio::sync::mpsc::channel::<
                                Result<Frame<Bytes>, std::convert::Infallible>,
                            >(4);
                            tokio::spawn(async move {
                                for i in 0..chunks {
                                    if i > 0 {
                                        tokio::time::sleep(gap).await;
                                    }
                                    if tx
                                        .send(Ok(Frame::data(Bytes::from_static(CHUNK))))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            });
                            tokio_stream(rx).boxed()
                        } else {
                            Full::new(Bytes::from_static(b"{\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}")).boxed()
                        };
                        let mut r = hyper::Response::new(body);
                        r.headers_mut().insert(
                            "content-type",
                            if stream {
                                "text/event-stream"
                            } else {
                                "application/json"
                            }
                            .parse()
                            .unwrap(),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An mpsc receiver as a body (no futures crate needed).
fn tokio_stream<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static
where
    T: Send + 'static,
    T: Into<Result<Frame<Bytes>, std::convert::Infallible>>,
{
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T: Into<Result<Frame<Bytes>, std::convert::Infallible>>> hyper::body::Body for S<T> {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(Into::into))
        }
    }
    let _ = &mut rx;
    S(rx)
}

async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn req(path: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(path)
        .header("host", "x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"work kanban task t_1"}]}"#,
        )))
        .unwrap()
}

/// TTFTs (seconds) of `n` concurrent streams to `addr` + `path`, each read to its end.
async fn ttfts(addr: SocketAddr, path: &str, n: usize) -> Vec<f64> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let path = path.to_owned();
        set.spawn(async move {
            let mut c = client(addr).await;
            let t = Instant::now();
            let r = c.send_request(req(&path)).await.unwrap();
            let mut b = r.into_body();
            let _ = b.frame().await;
            let ttft = t.elapsed().as_secs_f64();
            while let Some(Ok(_)) = b.frame().await {}
            ttft
        });
    }
    let mut v = Vec::new();
    while let Some(t) = set.join_next().await {
        v.push(t.unwrap());
    }
    v.sort_by(f64::total_cmp);
    v
}

fn q(v: &[f64], q: f64) -> f64 {
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// This process's CPU time so far (user + system), seconds: `/proc/self/stat` fields 14 and
/// 15, in clock ticks (100 a second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// TTFTs (seconds) of `n` streams to `addr` + `path` one after another, each on a new
/// connection as in [`ttfts`] and read to its end.
async fn ttfts_one_at_a_time(addr: SocketAddr, path: &str, n: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut c = client(addr).await;
        let t = Instant::now();
        let r = c.send_request(req(path)).await.unwrap();
        let mut b = r.into_body();
        let _ = b.frame().await;
        v.push(t.elapsed().as_secs_f64());
        while let Some(Ok(_)) = b.frame().await {}
    }
    v.sort_by(f64::total_cmp);
    v
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = engine(Duration::from_millis(1), 21).await;
        let url = format!("http://{up}");
        let routes = Routes::new([("coder", Some(url.as_str()))], Some(&url));
        let p = Arc::new(Proxy::new(
            routes,
            Settings { max_body: 32 << 20, drain: Duration::from_secs(1), max_connections: proxy::DEFAULT_MAX_CONNECTIONS },
            Arc::new(ProxyStats::default()),
        ));
        let l = proxy::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let px = l.local_addr().unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(proxy::serve(l, p, rx));

        // Warm up both paths, then alternate rounds so drift hits both alike.
        let _ = ttfts(up, "/v1/stream", 64).await;
        let _ = ttfts(px, "/p/coder/v1/stream", 64).await;
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        let (mut cpu_direct, mut cpu_through) = (0.0, 0.0);
        for _ in 0..10 {
            let c0 = cpu_seconds();
            direct.extend(ttfts(up, "/v1/stream", 64).await);
            let c1 = cpu_seconds();
            through.extend(ttfts(px, "/p/coder/v1/stream", 64).await);
            cpu_through += cpu_seconds() - c1;
            cpu_direct += c1 - c0;
        }
        direct.sort_by(f64::total_cmp);
        through.sort_by(f64::total_cmp);
        let ms = |s: f64| s * 1000.0;
        println!("streaming TTFT, 64 concurrent x 10 rounds (ms): direct p50 {:.3} p99 {:.3}; through proxy p50 {:.3} p99 {:.3}; added p50 {:.3} p99 {:.3}",
            ms(q(&direct, 0.5)), ms(q(&direct, 0.99)), ms(q(&through, 0.5)), ms(q(&through, 0.99)),
            ms(q(&through, 0.5) - q(&direct, 0.5)), ms(q(&through, 0.99) - q(&direct, 0.99)));
        let tokens = (10 * 64 * 21) as f64;
        println!("CPU per streamed token through the proxy (process CPU through less direct, {tokens} tokens of 64-stream rounds): {:.1} us (through {:.2} s, direct {:.2} s)",
            (cpu_through - cpu_direct) * 1e6 / tokens, cpu_through, cpu_direct);
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            direct.extend(ttfts_one_at_a_time(up, "/v1/stream", 40).await);
            through.extend(ttfts_one_at_a_time(px, "/p/coder/v1/stream", 40).await);
        }
        direct.sort_by(f64::total_cmp);
        through.sort_by(f64::total_cmp);
        println!("streaming TTFT, one stream at a time x 200 (ms): direct p50 {:.3} p99 {:.3}; through proxy p50 {:.3} p99 {:.3}; added p50 {:.3} p99 {:.3}",
            ms(q(&direct, 0.5)), ms(q(&direct, 0.99)), ms(q(&through, 0.5)), ms(q(&through, 0.99)),
            ms(q(&through, 0.5) - q(&direct, 0.5)), ms(q(&through, 0.99) - q(&direct, 0.99)));

        for (name, addr, path) in [("direct", up, "/v1/small"), ("through proxy", px, "/p/coder/v1/small")] {
            let until = Instant::now() + Duration::from_secs(3);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..16 {
                set.spawn(async move {
                    let mut c = client(addr).await;
                    let mut n = 0u64;
                    while Instant::now() < until {
                        c.ready().await.unwrap();
                        let r = c.send_request(req(path)).await.unwrap();
                        let _ = r.into_body().collect().await;
                        n += 1;
                    }
                    n
                });
            }
            let mut total = 0;
            while let Some(n) = set.join_next().await {
                total += n.unwrap();
            }
            println!("small non-streaming, 16 keep-alive clients, 3 s, {name}: {:.0} requests/s", total as f64 / 3.0);
        }

        // 512 streams held open: a slow engine (each chunk 50 ms apart, 100 chunks).
        let slow = engine(Duration::from_millis(50), 100).await;
        let url = format!("http://{slow}");
        let routes = Routes::new([("coder", Some(url.as_str()))], Some(&url));
        let p = Arc::new(Proxy::new(routes, Settings { max_body: 32 << 20, drain: Duration::from_secs(1), max_connections: proxy::DEFAULT_MAX_CONNECTIONS }, Arc::new(ProxyStats::default())));
        let l = proxy::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let px = l.local_addr().unwrap();
        let (_stop2, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(proxy::serve(l, p, rx));
        let before = rss_kib();
        let mut set = tokio::task::JoinSet::new();
        let (tx, mut started) = tokio::sync::mpsc::channel(512);
        for _ in 0..512 {
            let tx = tx.clone();
            set.spawn(async move {
                let mut c = client(px).await;
                let r = c.send_request(req("/p/coder/v1/stream")).await.unwrap();
                let mut b = r.into_body();
                let _ = b.frame().await;
                let _ = tx.send(()).await;
                while let Some(Ok(_)) = b.frame().await {}
            });
        }
        for _ in 0..512 {
            started.recv().await.unwrap();
        }
        let during = rss_kib();
        println!("512 concurrent streams open: process RSS {} KiB before, {} KiB during (+{} KiB for proxy, engine and clients together)", before, during, during.saturating_sub(before));
        while set.join_next().await.is_some() {}
    });
}
