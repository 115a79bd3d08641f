//! A minimal HTTP/1.1 client for engines on the local network: `GET` a metrics or status
//! endpoint, and a streaming `POST` that times the first token (the latency probe).
//!
//! Built on `hyper::client::conn::http1::handshake` over a tokio `TcpStream`, so connect,
//! first byte and first streamed event are timed exactly. Plain `http://` only (engines sit
//! beside the governor; TLS would add a heavy dependency for nothing). Every call is bounded by
//! the client's timeout, and every body read by [`MAX_BODY_BYTES`]. [`HttpClient`] owns a
//! small current-thread runtime so its methods are blocking (call them from `spawn_blocking`
//! in async code); the `async fn`s are public too.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes as BodyBytes;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// The most bytes of one response body read; a larger one is an error.
// vLLM's /metrics is about 100 KiB, larger with many models or LoRA adapters; llama.cpp's
// /slots grows with its slots. 16 MiB is over a hundred times the largest seen and bounds the
// governor's memory (a 1.5 GB answer once took the daemon to 3.6 GB RSS, issue 11).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How much of an error response's body is read for its message.
const ERROR_BODY_BYTES: usize = 4096;

/// An HTTP failure, naming the URL.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path]`.
    #[error(
        "bad URL {url:?}: {why}; write it as http://host:port (for example http://127.0.0.1:8000)"
    )]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {url}: {source}; is the engine running, and is engine.url right?")]
    Connect {
        /// The URL.
        url: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The call took longer than the timeout.
    #[error("{url} did not answer within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// An HTTP protocol error.
    #[error("HTTP error from {url}: {source}")]
    Protocol {
        /// The URL.
        url: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The body is larger than the limit (read no further).
    #[error(
        "{url} answered more than {limit} bytes; an engine's metrics or status are far smaller, so engine.url may point at something else"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A status other than 2xx.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The tokio runtime could not be built.
    #[error("cannot start the HTTP client runtime: {0}")]
    Runtime(std::io::Error),
}

impl HttpError {
    /// The HTTP status, when the server answered with a non-2xx one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` to connect to (port 80 when none is written).
    pub authority: String,
    /// The `Host` header value (as written).
    pub host_header: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parse `http://host[:port][/path]`.
///
/// # Errors
///
/// Another scheme (`https://` included), or no host.
pub fn parse_url(url: &str) -> Result<HttpUrl, HttpError> {
    let bad = |why: &str| HttpError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only plain http:// is supported"))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty() {
        return Err(bad("no host"));
    }
    // A port is present when the text after the last ':' is digits and not inside [v6].
    let has_port = auth
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        auth.to_string()
    } else {
        format!("{auth}:80")
    };
    Ok(HttpUrl {
        authority,
        host_header: auth.to_string(),
        path: path.to_string(),
    })
}

/// `base` (an engine URL) joined with `path`.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A response whose body was read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, lossily decoded as UTF-8.
    pub body: String,
}

/// What the latency probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// From sending the request to the response headers.
    pub headers: Duration,
    /// From sending the request to the first streamed event carrying a token (or the end of
    /// the stream, when no event carried one: an upper bound).
    pub first_token: Duration,
}

/// Aborts the connection task when dropped, so a call that returns early (the probe at its
/// first token) or times out closes its socket instead of leaving it to the runtime. Closing
/// also tells the engine to stop generating for the probe.
struct ConnGuard(Option<tokio::task::JoinHandle<()>>);

impl ConnGuard {
    /// Abort the connection task and wait until it is gone, so the socket is closed now. A
    /// drop only schedules that, and a blocking client's runtime runs only inside a call: an
    /// oversized answer's sender would otherwise stay blocked on an open socket until the next
    /// read.
    async fn close(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<BodyBytes>>;

async fn connect(url: &str) -> Result<(HttpUrl, Sender, ConnGuard), HttpError> {
    let u = parse_url(url)?;
    let stream = TcpStream::connect(&u.authority)
        .await
        .map_err(|source| HttpError::Connect {
            url: url.to_string(),
            source,
        })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| HttpError::Protocol {
            url: url.to_string(),
            source,
        })?;
    // The connection's error, if any, reaches the caller through the response future.
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((u, sender, ConnGuard(Some(task))))
}

fn request(
    u: &HttpUrl,
    method: hyper::Method,
    body: Option<String>,
) -> Result<hyper::Request<Full<BodyBytes>>, HttpError> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(&u.path)
        .header(hyper::header::HOST, &u.host_header)
        .header(hyper::header::USER_AGENT, "kanban-governor");
    if body.is_some() {
        b = b.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    b.body(Full::new(BodyBytes::from(body.unwrap_or_default())))
        .map_err(|e| HttpError::BadUrl {
            url: format!("{}{}", u.host_header, u.path),
            why: e.to_string(),
        })
}

/// Read `body` to its end, or fail once it passes `limit` bytes (also when its
/// `Content-Length` says it will, before reading any). Frames are appended as they come, so
/// memory stays within the limit plus one frame.
async fn read_body(
    url: &str,
    resp: hyper::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    let too_large = || HttpError::TooLarge {
        url: url.to_string(),
        limit,
    };
    let declared = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| HttpError::Protocol {
            url: url.to_string(),
            source,
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf)
}

async fn status_error(url: &str, resp: hyper::Response<hyper::body::Incoming>) -> HttpError {
    let status = resp.status().as_u16();
    // Only the start is shown; a long error page is not read to its end.
    let mut body = resp.into_body();
    let mut start = Vec::new();
    while start.len() < ERROR_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    start.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    let body = String::from_utf8_lossy(&start).chars().take(300).collect();
    HttpError::Status {
        url: url.to_string(),
        status,
        body,
    }
}

/// `GET url`, reading the whole body (at most [`MAX_BODY_BYTES`]). A non-2xx status is an
/// error.
///
/// # Errors
///
/// Bad URL, connection refused, protocol error, non-2xx status, a body larger than
/// [`MAX_BODY_BYTES`], or `timeout` passed.
pub async fn fetch(url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
    let work = async {
        let (u, mut sender, conn) = connect(url).await?;
        let resp = sender
            .send_request(request(&u, hyper::Method::GET, None)?)
            .await
            .map_err(|source| HttpError::Protocol {
                url: url.to_string(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(status_error(url, resp).await);
        }
        let status = resp.status().as_u16();
        let body = match read_body(url, resp, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                conn.close().await;
                return Err(e);
            }
        };
        Ok(HttpResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_string(),
            after: timeout,
        })?
}

/// Does this server-sent-events text hold an event carrying a generated token? Looks for a
/// `data:` line whose JSON has a non-empty `choices[].delta.content`, `choices[].text`,
/// `content` (llama.cpp `/completion`) or `message.content` (Ollama).
pub fn carries_token(sse: &str) -> bool {
    sse.lines().any(|line| {
        let Some(data) = line.trim().strip_prefix("data:") else {
            // Ollama streams bare JSON lines.
            return json_carries_token(line.trim());
        };
        json_carries_token(data.trim())
    })
}

fn json_carries_token(data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
        return false;
    };
    let non_empty = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if let Some(choices) = v.get("choices").and_then(serde_json::Value::as_array) {
        return choices.iter().any(|c| {
            non_empty(c.pointer("/delta/content"))
                || non_empty(c.pointer("/delta/reasoning_content"))
                || non_empty(c.get("text"))
        });
    }
    non_empty(v.get("content")) || non_empty(v.pointer("/message/content"))
}

/// `POST url` with a JSON `body` that asks for a streamed answer, timing the headers and the
/// first event that carries a token. A non-2xx status is an error (its status tells 429 and
/// 5xx apart).
///
/// # Errors
///
/// As [`fetch`].
pub async fn probe(url: &str, body: String, timeout: Duration) -> Result<ProbeTiming, HttpError> {
    let work = async {
        let (u, mut sender, conn) = connect(url).await?;
        let req = request(&u, hyper::Method::POST, Some(body))?;
        let start = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| HttpError::Protocol {
                url: url.to_string(),
                source,
            })?;
        let headers = start.elapsed();
        if !resp.status().is_success() {
            return Err(status_error(url, resp).await);
        }
        let mut body = resp.into_body();
        let mut seen = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| HttpError::Protocol {
                url: url.to_string(),
                source,
            })?;
            if let Some(data) = frame.data_ref() {
                if seen.len() + data.len() > MAX_BODY_BYTES {
                    conn.close().await;
                    return Err(HttpError::TooLarge {
                        url: url.to_string(),
                        limit: MAX_BODY_BYTES,
                    });
                }
                seen.push_str(&String::from_utf8_lossy(data));
                if carries_token(&seen) {
                    return Ok(ProbeTiming {
                        headers,
                        first_token: start.elapsed(),
                    });
                }
            }
        }
        Ok(ProbeTiming {
            headers,
            first_token: start.elapsed(),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_string(),
            after: timeout,
        })?
}

/// A blocking client: [`fetch`] and [`probe`] on its own current-thread runtime.
#[derive(Debug)]
pub struct HttpClient {
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose every call is bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// The runtime could not be built (out of file descriptors).
    pub fn new(timeout: Duration) -> Result<HttpClient, HttpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(HttpError::Runtime)?;
        Ok(HttpClient { rt, timeout })
    }

    /// The timeout of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Blocking [`fetch`]. Do not call from inside an async task (use `spawn_blocking`).
    ///
    /// # Errors
    ///
    /// As [`fetch`].
    pub fn get(&self, url: &str) -> Result<HttpResponse, HttpError> {
        self.rt.block_on(fetch(url, self.timeout))
    }

    /// Blocking [`probe`].
    ///
    /// # Errors
    ///
    /// As [`fetch`].
    pub fn probe(&self, url: &str, body: String) -> Result<ProbeTiming, HttpError> {
        self.rt.block_on(probe(url, body, self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_with_and_without_port_and_path() {
        let u = parse_url("http://127.0.0.1:8000").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8000");
        assert_eq!(u.path, "/");
        let u = parse_url("http://localhost/metrics?x=1").unwrap();
        assert_eq!(u.authority, "localhost:80");
        assert_eq!(u.host_header, "localhost");
        assert_eq!(u.path, "/metrics?x=1");
        let u = parse_url("http://[::1]:9/a").unwrap();
        assert_eq!(u.authority, "[::1]:9");
        assert!(
            parse_url("https://x")
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn joins_base_and_path_with_one_slash() {
        assert_eq!(join("http://h:1/", "/metrics"), "http://h:1/metrics");
        assert_eq!(join("http://h:1", "metrics"), "http://h:1/metrics");
    }

    #[test]
    fn recognises_events_that_carry_a_token() {
        assert!(carries_token(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
        ));
        assert!(!carries_token(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n"
        ));
        assert!(carries_token("data: {\"content\":\"x\",\"stop\":false}\n"));
        assert!(carries_token(
            "{\"message\":{\"content\":\"x\"},\"done\":false}\n"
        ));
        assert!(!carries_token("data: [DONE]\n"));
    }
}
