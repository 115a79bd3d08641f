//! The daemon's own HTTP endpoint: a small hyper 1 server on a local address that answers
//! `GET` requests through a handler the app layer supplies (`/metrics` in Prometheus text,
//! `/status` in JSON). The handler sees the path and the `Accept` header ([`Get`]), so it can
//! pick the text format a scraper asks for. HTTP/1.1 only, no TLS, no request bodies: it is for a scraper and an
//! operator on the same host (the default address is loopback).
//!
//! [`bind`] binds synchronously at start-up so a port in use is a usage error (exit 2) naming
//! `--listen` before anything else starts; [`serve`] then runs until the shutdown signal and
//! stops accepting (connections in progress finish on their own).
//!
//! Bounded against a hostile or broken client on the same host ([`Limits`]): at most
//! `max_connections` at once (a connection beyond that gets `503` and is closed, so the
//! governor's own engine reads and Hermes calls keep file descriptors), request headers must
//! arrive within `header_read_timeout` (which also ends an idle keep-alive connection), a
//! failing `accept` (out of file descriptors) backs off from 100 ms to 1 s instead of spinning,
//! and a repeated error is logged once and then counted ([`RepeatLog`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes as BodyBytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;

/// Most connections served at once, unless the file-descriptor limit is low (see
/// [`Limits::for_this_process`]).
// A Prometheus scraper and an operator's curl need a handful; 64 leaves most of a default
// 1024-descriptor limit to the engine reads, SQLite and Hermes (1,100 held connections once
// starved them all, issue 11).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, and how long a keep-alive
/// connection may sit idle.
// A local scraper sends its headers in one packet; 5 s is generous and frees a slot held by a
// silent client quickly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// A repeated error is logged at most once per this interval, with the count since.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Time to receive a request's headers (and the longest keep-alive idle).
    pub header_read_timeout: Duration,
}

impl Limits {
    /// [`DEFAULT_MAX_CONNECTIONS`], or a quarter of this process's file-descriptor limit when
    /// that is smaller (at least 1), so three quarters stay for everything else.
    pub fn for_this_process() -> Limits {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS.min(nofile / 4).max(1),
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// What the server has done, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections answered `503` because `max_connections` were open.
    pub refused: AtomicU64,
    /// `accept` calls that failed (each followed by a back-off when it was not the client's
    /// fault).
    pub accept_errors: AtomicU64,
}

/// Logs a repeated event once, then at most once per `every` with how many happened since:
/// an error that repeats thousands of times a second must not fill the disk (issue 11 saw 11
/// million lines in 15 s). Pure: the caller passes the time.
#[derive(Debug)]
pub struct RepeatLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RepeatLog {
    /// A log of one kind of event, at most one line per `every`.
    pub fn new(every: Duration) -> RepeatLog {
        RepeatLog {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One more event at `now`: `Some(n)` when a line is due (`n` events were held back since
    /// the last line), `None` when it is only counted.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Whether an `accept` error is about that one connection (the client reset it before we
/// took it), after which accepting again at once is right; anything else (EMFILE, ENFILE,
/// ENOBUFS) would fail again at once, so it gets a back-off.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The listening socket could not be set up.
#[derive(Debug, Error)]
pub enum ListenError {
    /// `bind` failed: the port is in use, or the address is not local.
    #[error(
        "--listen {addr}: cannot listen there ({source}); pick a free port with --listen 127.0.0.1:<port> (port 0 picks any)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The socket could not be handed to the async runtime.
    #[error("--listen {addr}: {source}")]
    Setup {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

/// One answer of the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A `200 OK` with `content_type` and `body`.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text answer with `status`.
    pub fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// A `GET` (or `HEAD`) as the handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Get<'a> {
    /// The path, without the query string.
    pub path: &'a str,
    /// The `Accept` header (several are joined with `,`), if any.
    pub accept: Option<&'a str>,
}

/// What answers a `GET`.
pub type Handler = Arc<dyn Fn(Get<'_>) -> Answer + Send + Sync>;

/// Bind `addr` now (blocking, before the runtime serves it).
///
/// # Errors
///
/// [`ListenError::Bind`] when the address is in use or not ours; its message names `--listen`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ListenError::Setup { addr, source })?;
    Ok(l)
}

/// Serve `listener` with `handler` until `shutdown` turns `true` (or its sender is dropped),
/// within [`Limits::for_this_process`]. Only `GET` and `HEAD` are answered; anything else
/// gets `405`.
///
/// # Errors
///
/// The std listener cannot be registered with the runtime (call from inside a tokio runtime).
pub async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ListenError> {
    let stats = Arc::new(ServerStats::default());
    serve_with(
        listener,
        handler,
        shutdown,
        Limits::for_this_process(),
        stats,
    )
    .await
}

/// [`serve`] with explicit `limits`, counting into `stats`.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_with(
    listener: std::net::TcpListener,
    handler: Handler,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
    stats: Arc<ServerStats>,
) -> Result<(), ListenError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| ListenError::Setup { addr, source })?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut accept_log = RepeatLog::new(REPEAT_LOG_EVERY);
    let mut refused_log = RepeatLog::new(REPEAT_LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = accept_log.event(Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        repeated = held_back,
                        "Accepting a /metrics connection failed (repeats are counted, not logged, for a minute)."
                    );
                }
                if is_connection_error(&e) {
                    continue;
                }
                // Out of file descriptors: accepting again at once fails again at once.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: say so and close, holding no descriptor and no task for it.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = refused_log.event(Instant::now()) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    repeated = held_back,
                    "Refused a /metrics connection: the connection cap is reached (repeats are counted, not logged, for a minute)."
                );
            }
            // Whatever of the request already arrived is read first: closing a socket with
            // unread data resets it, and the client would see the reset, not the 503.
            let _ = stream.try_read(&mut [0u8; 4096]);
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            drop(stream);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let handler = handler.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&handler, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "A /metrics connection ended with an error.");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

fn answer<B>(handler: &Handler, req: &Request<B>) -> Response<Full<BodyBytes>> {
    let a = match *req.method() {
        Method::GET | Method::HEAD => {
            let accept: Vec<&str> = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let accept = accept.join(",");
            handler(Get {
                path: req.uri().path(),
                accept: (!accept.is_empty()).then_some(accept.as_str()),
            })
        }
        _ => Answer::text(405, "only GET is served here\n"),
    };
    let body = if req.method() == Method::HEAD {
        Vec::new()
    } else {
        a.body
    };
    let mut resp = Response::new(Full::new(BodyBytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(a.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(a.content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::http::HttpClient;
    use std::time::Duration;

    #[test]
    fn a_port_in_use_is_an_error_naming_listen() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("--listen 127.0.0.1:"), "{err}");
        assert!(err.to_string().contains("port 0"), "{err}");
    }

    #[test]
    fn the_handler_answers_get_by_path_until_shutdown() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handler: Handler = Arc::new(|get: Get<'_>| match (get.path, get.accept) {
            ("/metrics", None) => Answer::ok("text/plain", "up 1\n"),
            ("/metrics", Some(accept)) => Answer::ok("text/plain", format!("accept {accept}\n")),
            _ => Answer::text(404, "no\n"),
        });
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(l, handler, rx)).unwrap();
        });
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let r = client.get(&format!("http://{addr}/metrics?x=1")).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "up 1\n"));
        let err = client.get(&format!("http://{addr}/nope")).unwrap_err();
        assert_eq!(err.status(), Some(404), "{err}");
        // The handler sees every Accept header, joined.
        let mut s = raw(addr);
        std::io::Write::write_all(
            &mut s,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: a/b;q=0.5\r\naccept: */*\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        assert!(out.ends_with("\r\n\r\naccept a/b;q=0.5,*/*\n"), "{out}");
        tx.send(true).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_repeated_event_is_logged_once_then_counted() {
        let t0 = Instant::now();
        let mut log = RepeatLog::new(Duration::from_secs(60));
        assert_eq!(log.event(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(log.event(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.event(t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(log.event(t0 + Duration::from_secs(61)), None);
    }

    /// A `Write` into a shared buffer, for capturing the server's log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct TestServer {
        addr: SocketAddr,
        stats: Arc<ServerStats>,
        log: Captured,
        stop: tokio::sync::watch::Sender<bool>,
        thread: std::thread::JoinHandle<()>,
    }

    impl TestServer {
        fn start(limits: Limits) -> TestServer {
            let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            let (stop, rx) = tokio::sync::watch::channel(false);
            let handler: Handler = Arc::new(|_: Get<'_>| Answer::ok("text/plain", "up 1\n"));
            let stats = Arc::new(ServerStats::default());
            let log = Captured::default();
            let (s, w) = (stats.clone(), log.clone());
            let thread = std::thread::spawn(move || {
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(move || w.clone())
                    .with_ansi(false)
                    .finish();
                let _guard = tracing::subscriber::set_default(subscriber);
                // Current-thread, as in the daemon: a finished connection has released its
                // slot before the accept loop runs again.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve_with(l, handler, rx, limits, s)).unwrap();
            });
            TestServer {
                addr,
                stats,
                log,
                stop,
                thread,
            }
        }

        fn stop(self) -> String {
            self.stop.send(true).unwrap();
            self.thread.join().unwrap();
            String::from_utf8_lossy(&self.log.0.lock().unwrap()).into_owned()
        }
    }

    /// A raw connection with a deadline on every read, so a test that would hang fails.
    fn raw(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Send a one-shot `GET /metrics` and read the answer to the server's close.
    fn get_on(mut s: std::net::TcpStream) -> String {
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Issue 11: 1,100 held connections starved the daemon of file descriptors and the accept
    /// loop logged 11 million lines. Now connections beyond the cap are answered 503 and
    /// closed at once (holding nothing), one line is logged for all of them, and once the
    /// held connections finish a new client is served.
    #[test]
    fn connections_beyond_the_cap_get_503_at_once_and_a_new_client_is_served_after() {
        use std::io::Read;
        let server = TestServer::start(Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
        });
        let held: Vec<_> = (0..4).map(|_| raw(server.addr)).collect();
        // The backlog is FIFO: when the server answers these, it has taken the 4 held ones.
        // They send nothing: without a cap they would wait for headers until the 10 s read
        // deadline.
        for _ in 0..50 {
            let mut answer = String::new();
            raw(server.addr).read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        }
        assert_eq!(server.stats.refused.load(Ordering::Relaxed), 50);
        assert_eq!(server.stats.open.load(Ordering::Relaxed), 4);
        for h in held {
            assert!(get_on(h).starts_with("HTTP/1.1 200"));
        }
        let answer = get_on(raw(server.addr));
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("up 1\n"),
            "{answer}"
        );
        assert_eq!(server.stats.refused.load(Ordering::Relaxed), 50);
        let log = server.stop();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("connection cap"))
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(lines[0].contains("max_connections=4"), "{log}");
    }

    /// A client that sends part of its headers and stops (or an idle keep-alive connection)
    /// is closed after the header read timeout, freeing its slot.
    #[test]
    fn a_silent_or_idle_client_is_closed_after_the_header_read_timeout() {
        use std::io::{Read, Write};
        let server = TestServer::start(Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(300),
        });
        let mut partial = raw(server.addr);
        partial.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        // EOF (Ok), not the 10 s read deadline (Err).
        partial.read_to_end(&mut buf).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));

        let mut idle = raw(server.addr);
        idle.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        idle.read_to_end(&mut buf).unwrap();
        // Answered, then closed by the server once idle (EOF, not the read deadline).
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
        server.stop();
    }
}
