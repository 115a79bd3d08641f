//! The daemon's own HTTP endpoint: a small hyper 1 server on a local address that answers
//! `GET` requests through a handler the app layer supplies (`/metrics` in Prometheus text,
//! `/status` in JSON). HTTP/1.1 only, no TLS, no request bodies: it is for a scraper and an
//! operator on the same host (the default address is loopback).
//!
//! [`bind`] binds synchronously at start-up so a port in use is a usage error (exit 2) naming
//! `--listen` before anything else starts; [`serve`] then runs until the shutdown signal and
//! stops accepting (connections in progress finish on their own).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes as BodyBytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use thiserror::Error;

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

/// What answers a `GET` of a path (query strings are stripped).
pub type Handler = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

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

/// Serve `listener` with `handler` until `shutdown` turns `true` (or its sender is dropped).
/// Only `GET` and `HEAD` are answered; anything else gets `405`.
///
/// # Errors
///
/// The std listener cannot be registered with the runtime (call from inside a tokio runtime).
pub async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ListenError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| ListenError::Setup { addr, source })?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: keep serving what can be served.
                tracing::warn!(error = %e, "Accepting a /metrics connection failed.");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&handler, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "A /metrics connection ended with an error.");
            }
        });
    }
}

fn answer<B>(handler: &Handler, req: &Request<B>) -> Response<Full<BodyBytes>> {
    let a = match *req.method() {
        Method::GET | Method::HEAD => handler(req.uri().path()),
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
        let handler: Handler = Arc::new(|path: &str| match path {
            "/metrics" => Answer::ok("text/plain", "up 1\n"),
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
        tx.send(true).unwrap();
        server.join().unwrap();
    }
}
