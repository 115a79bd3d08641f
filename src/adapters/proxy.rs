//! The OpenAI-compatible pass-through of `run` (`[proxy] listen`): agents call the engine
//! through it, and it counts what passes ([`stats::ProxyStats`]) without changing a byte.
//!
//! - **Routing**: `/p/<profile>/...` goes to that profile's engine URL + `/...`; any other path
//!   goes to the default engine as is and is counted as [`inspect::UNATTRIBUTED`]. A profile
//!   the config does not govern gets `404` naming the governed ones.
//! - **Forwarding**: method, headers (less the hop-by-hop ones; `Host` names the engine), body
//!   and status unchanged. The request body is held whole, up to `proxy.max_body` (a larger one
//!   gets `413` naming that key), because the task id is read from it; the answer is never
//!   held: each frame is passed on as it arrives, and what is read from it
//!   ([`inspect::AnswerReader`]) is bounded per connection. A streaming answer has no
//!   timeout. An engine that cannot be reached gives `502` with the reason; an engine's
//!   4xx/5xx passes through as sent; an answer that breaks off mid-way breaks off the client's
//!   too (its connection is closed before the end, as the engine's was).
//! - **Cancelling**: a client that goes away drops its answer, and the engine connection under
//!   it is closed at once ([`ConnGuard`]), so the engine stops generating for nobody.
//! - **Isolation**: each client connection is its own task, so a panic or error ends only that
//!   connection; the stats lock survives a panic. The daemon runs the proxy on its own thread
//!   and runtime, so nothing on the decision side (telemetry, board, state) can stall it.
//! - **Connection cap** ([`Settings::max_connections`], from the file-descriptor limit as
//!   `/metrics` has): a client connection beyond it is answered `503` naming the cap and
//!   closed at once, holding no task and no engine connection, so a flood of connections
//!   cannot take the descriptors the requests in flight, the engine reads and Hermes calls
//!   need; the connections within it keep forwarding.
//! - **Shutdown**: on the signal it stops accepting, lets requests in flight finish for up to
//!   `proxy.drain`, then closes what is left.
//!
//! Engine connections are kept for reuse ([`Pool`]) while idle for under [`IDLE_REUSE`];
//! plain `http://` only (engines sit beside the governor).
//!
//! Side effects: sockets only. No logging per request (a debug line per failure).

pub mod inspect;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinSet};

use crate::adapters::metrics_http::RepeatLog;
use inspect::{AnswerReader, Route, UNATTRIBUTED};
use stats::{Flight, Outcome, ProxyStats};

/// The label of requests to a profile the config does not govern (a client's typo must not
/// make a new series).
pub const UNKNOWN_PROFILE: &str = "(unknown)";
/// An engine connection idle longer than this is not reused (closed instead).
// Uvicorn (vLLM, SGLang) closes idle keep-alive connections after 5 s; reusing one that the
// engine is closing at that moment fails the request, so we stop well before.
pub const IDLE_REUSE: Duration = Duration::from_secs(2);
/// Idle engine connections kept per engine.
const MAX_IDLE_PER_ENGINE: usize = 64;
/// How long a TCP connect to an engine may take (the only timeout on the engine side).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers, and the longest keep-alive idle.
// Agents' HTTP clients keep connections in a pool and reconnect when one was closed; 75 s is
// nginx's keep-alive default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);
/// A repeated accept error is logged at most once per this interval.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Most client connections served at once, unless the file-descriptor limit is low (see
/// [`max_connections_for_this_process`]).
// Each Hermes worker keeps one or two pooled connections, so 1,024 is hundreds of agents;
// `scripts/bench-proxy` holds 512 streams open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// [`DEFAULT_MAX_CONNECTIONS`], or a quarter of this process's file-descriptor limit when that
/// is smaller (at least 1): a proxied request holds two descriptors (the client's and the
/// engine's), so half the limit stays for everything else.
pub fn max_connections_for_this_process() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    DEFAULT_MAX_CONNECTIONS.min(nofile / 4).max(1)
}

/// The proxy's bounds, from `[proxy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `proxy.max_body`: the largest request body forwarded.
    pub max_body: usize,
    /// `proxy.drain`: how long requests in flight may finish after the stop signal.
    pub drain: Duration,
    /// Client connections served at once; more are answered `503` and closed
    /// ([`max_connections_for_this_process`] in the daemon).
    pub max_connections: usize,
}

/// Where an engine is, parsed from its `engine.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as configured (for messages).
    pub url: String,
    /// `host:port`.
    authority: String,
    /// The URL's path, without a trailing `/` (usually empty).
    base_path: String,
}

impl Upstream {
    /// Parse an engine URL.
    ///
    /// # Errors
    ///
    /// Anything but `http://host[:port][/path]`, as a message naming the URL and the fix.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let fix = "the proxy forwards to plain http:// engines; set engine.url to http://host:port";
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("engine.url {url:?} is not an http:// URL; {fix}"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(format!("engine.url {url:?} has no host; {fix}"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Upstream {
            url: url.to_owned(),
            authority,
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// Where each path goes: the governed profiles' engines and the default engine.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Per governed profile, its engine (or why it cannot be forwarded to).
    pub profiles: HashMap<String, Result<Upstream, String>>,
    /// For paths outside `/p/<profile>/` (`None`: no engine to send them to).
    pub default: Option<Result<Upstream, String>>,
}

impl Routes {
    /// Routes from `(profile, engine URL)` pairs and the default engine's URL (`None` where
    /// a pool has no engine endpoint: its requests get `502` saying so).
    pub fn new<'a>(
        profiles: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        default: Option<&str>,
    ) -> Routes {
        let up = |url: Option<&str>| {
            match url {
            Some(u) => Upstream::parse(u),
            None => Err(
                "its pool has engine.url = \"none\"; set engine.url to the engine's http:// address"
                    .to_owned(),
            ),
        }
        };
        Routes {
            profiles: profiles
                .into_iter()
                .map(|(p, url)| (p.to_owned(), up(url)))
                .collect(),
            default: default.map(Upstream::parse),
        }
    }
}

/// The listening socket could not be set up.
#[derive(Debug, Error)]
#[error(
    "proxy.listen {addr}: cannot listen there ({source}); pick a free port in [proxy] listen or with run --proxy-listen 127.0.0.1:<port> (port 0 picks any)"
)]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The socket error.
    pub source: std::io::Error,
}

/// Bind `addr` now (before the runtime serves it), so a port in use is a usage error.
///
/// # Errors
///
/// [`BindError`], naming `proxy.listen` and `--proxy-listen`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| BindError { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| BindError { addr, source })?;
    Ok(l)
}

/// The pass-through: its routes, bounds, counters and engine connections.
#[derive(Debug)]
pub struct Proxy {
    routes: Routes,
    settings: Settings,
    stats: Arc<ProxyStats>,
    pool: Arc<Pool>,
}

impl Proxy {
    /// A proxy counting into `stats`.
    pub fn new(routes: Routes, settings: Settings, stats: Arc<ProxyStats>) -> Proxy {
        Proxy {
            routes,
            settings,
            stats,
            pool: Arc::new(Pool::default()),
        }
    }
}

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serve `listener` until `shutdown` turns `true` (or its sender is dropped), then drain for
/// up to `settings.drain`.
///
/// # Errors
///
/// The std listener cannot be registered with the runtime (call from inside a tokio runtime).
pub async fn serve(
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut connections = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(proxy.settings.max_connections));
    let mut accept_log = RepeatLog::new(REPEAT_LOG_EVERY);
    let mut refused_log = RepeatLog::new(REPEAT_LOG_EVERY);
    let mut backoff = Duration::from_millis(100);
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(100);
                stream
            }
            Err(e) => {
                if let Some(held_back) = accept_log.event(Instant::now()) {
                    tracing::warn!(error = %e, repeated = held_back, "Accepting a proxy connection failed (repeats are counted, not logged, for a minute).");
                }
                // Out of file descriptors: accepting again at once fails again at once.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse_connection(&stream, &proxy, &mut refused_log);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, proxy, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(proxy.settings.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            drain = ?proxy.settings.drain,
            "Proxy requests still in flight after proxy.drain; closing them."
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// A connection beyond the cap: answer `503` naming the cap and close it (the stream is
/// dropped by the caller), holding no descriptor and no task for it.
fn refuse_connection(stream: &TcpStream, proxy: &Proxy, log: &mut RepeatLog) {
    proxy.stats.connection_refused();
    let cap = proxy.settings.max_connections;
    if let Some(held_back) = log.event(Instant::now()) {
        tracing::warn!(
            max_connections = cap,
            repeated = held_back,
            "Refused a proxy connection: the connection cap is reached (repeats are counted, not logged, for a minute)."
        );
    }
    let body = format!(
        "kanban-governor proxy: {cap} client connections are open, its cap (a quarter of the file-descriptor limit, at most {DEFAULT_MAX_CONNECTIONS}); retry later, or raise the limit (LimitNOFILE= in the unit, ulimit -n)\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Whatever of the request already arrived is read first: closing a socket with unread
    // data resets it, and the client would see the reset, not the 503.
    let _ = stream.try_read(&mut [0u8; 4096]);
    let _ = stream.try_write(answer.as_bytes());
}

async fn serve_connection(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&proxy, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "A proxy connection ended with an error.");
    }
}

/// Answer one request: route it, read its body, forward it, and hand back the engine's
/// answer wrapped in a [`Tap`].
async fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (label, upstream, rest) = match inspect::route(&path) {
        Route::Profile { profile, rest } => match proxy.routes.profiles.get(profile) {
            Some(up) => (profile.to_owned(), up, rest.to_owned()),
            None => {
                proxy
                    .stats
                    .refused(UNKNOWN_PROFILE, Outcome::UnknownProfile);
                let mut governed: Vec<&str> =
                    proxy.routes.profiles.keys().map(String::as_str).collect();
                governed.sort_unstable();
                return full(
                    StatusCode::NOT_FOUND,
                    format!(
                        "kanban-governor proxy: {profile:?} is not a governed profile (governed: {}); point a profile's model.base_url at /p/<profile>/v1 with a profile from the governor's config\n",
                        governed.join(", ")
                    ),
                );
            }
        },
        Route::Unattributed => match &proxy.routes.default {
            Some(up) => (UNATTRIBUTED.to_owned(), up, path.clone()),
            None => {
                proxy.stats.refused(UNATTRIBUTED, Outcome::Unreachable);
                return full(
                    StatusCode::BAD_GATEWAY,
                    "kanban-governor proxy: no engine for paths outside /p/<profile>/; call /p/<profile>/v1/...\n".to_owned(),
                );
            }
        },
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(why) => {
            proxy.stats.refused(&label, Outcome::Unreachable);
            return full(
                StatusCode::BAD_GATEWAY,
                format!("kanban-governor proxy: cannot forward for {label}: {why}\n"),
            );
        }
    };
    let max = proxy.settings.max_body;
    let too_large = || {
        full(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "kanban-governor proxy: the request body is larger than proxy.max_body ({max} bytes); raise proxy.max_body in the governor's config\n"
            ),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        proxy.stats.refused(&label, Outcome::TooLarge);
        return too_large();
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                proxy.stats.refused(&label, Outcome::TooLarge);
                return too_large();
            }
            proxy.stats.refused(&label, Outcome::ClientGone);
            return full(
                StatusCode::BAD_REQUEST,
                format!("kanban-governor proxy: reading the request body failed: {e}\n"),
            );
        }
    };
    let task = inspect::task_of(&body);
    let mut flight = proxy
        .stats
        .begin(&label, task, inspect::estimate_tokens(body.len()));

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Ok(host) = HeaderValue::from_str(&upstream.authority) {
        headers.insert(header::HOST, host);
    }
    let uri: Uri = match format!("{}{rest}", upstream.base_path).parse() {
        Ok(u) => u,
        Err(e) => {
            flight.end(Outcome::Unreachable, None, 0);
            return full(
                StatusCode::BAD_GATEWAY,
                format!("kanban-governor proxy: cannot build the engine's path: {e}\n"),
            );
        }
    };
    let make = || {
        let mut r = Request::new(Full::new(body.clone()));
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = uri.clone();
        *r.headers_mut() = headers.clone();
        r
    };
    let (resp, guard) = match proxy.pool.send(upstream, make).await {
        Ok(x) => x,
        Err(e) => {
            flight.end(Outcome::Unreachable, None, 0);
            tracing::debug!(engine = %upstream.url, error = %e, "The proxy could not reach the engine.");
            return full(
                StatusCode::BAD_GATEWAY,
                format!(
                    "kanban-governor proxy: cannot reach the engine of {label} at {}: {e}; is the engine running, and is engine.url right?\n",
                    upstream.url
                ),
            );
        }
    };
    let (mut rparts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let status = rparts.status;
    let reader = AnswerReader::new(
        rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let outcome = if status.is_client_error() {
        Outcome::Http4xx
    } else if status.is_server_error() {
        Outcome::Http5xx
    } else {
        Outcome::Ok
    };
    let mut tap = Tap {
        inner: incoming,
        reader,
        flight,
        guard,
        started,
        timed: !status.is_success(),
        outcome,
        done: false,
    };
    // An empty answer (a 404, a 204) is never polled: it ended already.
    if tap.inner.is_end_stream() {
        tap.finish();
    }
    Response::from_parts(rparts, tap.boxed_unsync())
}

/// Remove the hop-by-hop headers (RFC 9110 §7.6.1) and those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
}

/// The engine's answer on its way to the client: every frame passes unchanged, and is read
/// on the way ([`AnswerReader`], TTFT). Dropped before the end (the client went away), it
/// closes the engine connection. Fields drop in order: `flight` (counting the request as
/// `client_gone`) before `guard` (closing the engine connection), so an engine that sees the
/// close finds the request counted.
struct Tap {
    inner: Incoming,
    reader: AnswerReader,
    flight: Flight,
    guard: ConnGuard,
    started: Instant,
    /// TTFT recorded (or not wanted: a non-2xx answer).
    timed: bool,
    /// How the request ends if the answer completes.
    outcome: Outcome,
    done: bool,
}

impl Tap {
    /// The answer ended whole: count it, and give the engine connection back for reuse.
    fn finish(&mut self) {
        self.done = true;
        let (usage, generated) = self.reader.finish();
        self.flight.end(self.outcome, usage, generated);
        self.guard.release();
    }
}

impl Body for Tap {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    if !this.timed {
                        this.timed = true;
                        this.flight.first_byte(this.started.elapsed());
                    }
                    this.reader.feed(data);
                    this.flight.generated(this.reader.generated_so_far());
                    // Counted at `[DONE]`: a client that closes on reading it has its whole
                    // answer (the engine connection is given back only at the body's end).
                    if this.reader.saw_done() {
                        let (usage, generated) = this.reader.finish();
                        this.flight.end(this.outcome, usage, generated);
                    }
                }
                // A body of known length is not polled past its last byte: it ends here.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                let (_, generated) = this.reader.finish();
                this.flight.end(Outcome::UpstreamReset, None, generated);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An engine connection in use. Dropped while armed (the answer did not end: the client went
/// away, or the answer broke off), it closes the connection so the engine sees the request
/// cancelled; [`ConnGuard::release`] returns it to the pool instead.
struct ConnGuard {
    sender: Option<SendRequest<Full<Bytes>>>,
    abort: AbortHandle,
    authority: String,
    pool: Arc<Pool>,
}

impl ConnGuard {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(&self.authority, sender, self.abort.clone());
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.abort.abort();
        }
    }
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    abort: AbortHandle,
    since: Instant,
}

/// Idle engine connections by `host:port`.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

/// Why an engine could not be asked.
#[derive(Debug, Error)]
enum SendError {
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(hyper::Error),
}

impl Pool {
    fn put(&self, authority: &str, sender: SendRequest<Full<Bytes>>, abort: AbortHandle) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(authority.to_owned()).or_default();
        if list.len() < MAX_IDLE_PER_ENGINE {
            list.push(Idle {
                sender,
                abort,
                since: Instant::now(),
            });
        }
    }

    fn take(&self, authority: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(authority)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < IDLE_REUSE && !i.sender.is_closed() {
                return Some(i);
            }
            // Dropping the sender lets its connection task end.
        }
        None
    }

    /// Send the request `make` builds to `up`, on an idle connection when there is one (once
    /// more on a new connection when the reused one turns out closed), else a new one.
    async fn send(
        self: &Arc<Self>,
        up: &Upstream,
        make: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, ConnGuard), SendError> {
        if let Some(mut idle) = self.take(&up.authority)
            && idle.sender.ready().await.is_ok()
        {
            match idle.sender.send_request(make()).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        ConnGuard {
                            sender: Some(idle.sender),
                            abort: idle.abort,
                            authority: up.authority.clone(),
                            pool: self.clone(),
                        },
                    ));
                }
                // The engine closed the idle connection as we used it: a request that never
                // reached it is sent again on a fresh one.
                Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                    idle.abort.abort();
                }
                Err(e) => {
                    idle.abort.abort();
                    return Err(SendError::Http(e));
                }
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&up.authority))
            .await
            .map_err(|_| SendError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        let abort = tokio::spawn(async move {
            let _ = conn.await;
        })
        .abort_handle();
        let guard_abort = abort.clone();
        let resp = match sender.send_request(make()).await {
            Ok(r) => r,
            Err(e) => {
                abort.abort();
                return Err(SendError::Http(e));
            }
        };
        Ok((
            resp,
            ConnGuard {
                sender: Some(sender),
                abort: guard_abort,
                authority: up.authority.clone(),
                pool: self.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_url_parses_to_its_authority_and_base_path() {
        let u = Upstream::parse("http://127.0.0.1:8000/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.base_path.as_str()),
            ("127.0.0.1:8000", "")
        );
        let u = Upstream::parse("http://gpu-box/engine/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.base_path.as_str()),
            ("gpu-box:80", "/engine")
        );
        let e = Upstream::parse("https://x:1").unwrap_err();
        assert!(e.contains("plain http://"), "{e}");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}
