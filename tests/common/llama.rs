//! A real `llama-server` (CPU, SmolLM2-135M) for tests, killed on drop.
//!
//! The server comes from `KG_LLAMA_SERVER` (else `target/llama/build/bin/llama-server`) and
//! the model from `KG_LLAMA_MODEL` (else `target/llama/model.gguf`); scripts/test builds both.
//!
//! Included with `#[path = "common/llama.rs"] mod llama;`.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kanban_governor::adapters::http::{self, HttpClient};

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
pub struct Llama {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Llama {
    /// `-c 8192 -np 4`: four slots of 2048 tokens.
    pub fn start() -> Llama {
        Llama::start_with(8192, 4)
    }

    /// A server with `ctx` context tokens in all and `slots` slots, healthy.
    pub fn start_with(ctx: u32, slots: u32) -> Llama {
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
            .args(["-c", &ctx.to_string(), "-np", &slots.to_string()])
            .args(["--metrics", "--host", "127.0.0.1"])
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

    /// Its log so far.
    pub fn log(&self) -> String {
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
pub fn load(url: &str, n: u32) -> std::thread::JoinHandle<()> {
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

/// One streamed `/completion` of `n` tokens, read to the end: the time to its first streamed
/// token and to its end. `None` when the server refused or the connection failed.
pub fn timed_completion(url: &str, n: u32) -> Option<(Duration, Duration)> {
    let addr = url.trim_start_matches("http://");
    let body = format!(
        "{{\"prompt\":\"Write a long story about a lighthouse keeper.\",\"n_predict\":{n},\"stream\":true,\"ignore_eos\":true,\"cache_prompt\":false}}"
    );
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "POST /completion HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let mut first = None;
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first.is_none() && seen.windows(6).any(|w| w == b"data: ") {
            first = Some(started.elapsed());
        }
    }
    let head = String::from_utf8_lossy(&seen[..seen.len().min(16)]).into_owned();
    head.starts_with("HTTP/1.1 200")
        .then_some(())
        .and(first.map(|f| (f, started.elapsed())))
}
