//! Helpers for tests of `kanban-governor run`: a daemon config in `crate::config`'s format,
//! the daemon as a child process (its address read from the line it prints), plain HTTP GETs
//! of `/metrics` and `/status`, and Prometheus text lookups.
//!
//! Included with `#[path = "common/daemon.rs"] mod daemon;` next to `mod common;`.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A profile: `(name, kv_bytes_per_token, max_context_tokens)`.
pub type Profile<'a> = (&'a str, &'a str, u64);

/// A daemon config file and its state dir.
pub struct DaemonConfig {
    /// The file.
    pub path: PathBuf,
    /// `dispatch.state_dir`.
    pub state_dir: PathBuf,
    /// The temp dir holding both.
    pub dir: tempfile::TempDir,
}

impl DaemonConfig {
    /// Write `[hermes]`, `[dispatch]` (`interval`), `[latency]` (loose), `gpu_engine` (the
    /// `[gpu]` and `[engine]` tables, verbatim) and the profiles.
    pub fn new(
        bin: &Path,
        home: &Path,
        interval: &str,
        gpu_engine: &str,
        profiles: &[Profile<'_>],
    ) -> DaemonConfig {
        // These daemons are about memory: the latency limit starts (and stays) above any
        // count these tests reach, so memory alone decides. Letting its slow start (1, 2, 4,
        // ...) climb made what held a task depend on how fast the host ran Hermes workers (CI
        // once saw `latency_limit` where the test expected `kv_headroom`). The limit itself is
        // tested in governor::limit and tests/latency_e2e.rs.
        let latency = "[latency]\nttft_slo = \"60s\"\nmin_limit = 32\ndwell = \"1s\"\n";
        DaemonConfig::with_latency(bin, home, interval, gpu_engine, latency, profiles)
    }

    /// [`DaemonConfig::new`] with the `[latency]` table given verbatim.
    pub fn with_latency(
        bin: &Path,
        home: &Path,
        interval: &str,
        gpu_engine: &str,
        latency: &str,
        profiles: &[Profile<'_>],
    ) -> DaemonConfig {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let mut text = format!(
            "[hermes]\nbin = {:?}\nhome = {:?}\n\n{gpu_engine}\n\n[dispatch]\nstate_dir = {:?}\ninterval = {interval:?}\ntimeout = \"30s\"\n\n{latency}",
            bin.display().to_string(),
            home.display().to_string(),
            state_dir.display().to_string(),
        );
        for (name, per_token, ctx) in profiles {
            text += &format!(
                "\n[[profiles]]\nname = {name:?}\nkv_bytes_per_token = {per_token:?}\nmax_context_tokens = {ctx}\n"
            );
        }
        let path = dir.path().join("governor.toml");
        std::fs::write(&path, text).unwrap();
        DaemonConfig {
            path,
            state_dir,
            dir,
        }
    }

    /// `kanban-governor run --config <file> <args>` (with `--listen 127.0.0.1:0` unless `args`
    /// has one) and `env`, not waited for.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(super::common::governor_bin());
        c.arg("run")
            .arg("--config")
            .arg(&self.path)
            .args(args)
            .env_remove("HERMES_KANBAN_DB")
            .env_remove("HERMES_KANBAN_BOARD")
            .env_remove("KANBAN_GOVERNOR_CONFIG")
            .env("KANBAN_GOVERNOR_LOG", "info");
        if !args.contains(&"--listen") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }
}

/// A running daemon; killed on drop if still running.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its stderr (logs), collected by a thread.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The line it printed first (its addresses).
    pub line: String,
}

impl Daemon {
    /// Start `cmd` and wait (bounded) for the line naming its address.
    pub fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the daemon printed no address ({e}); status {status:?}; log:\n{}",
                    log.lock().unwrap()
                )
            });
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Daemon {
            child,
            addr,
            log,
            line,
        }
    }

    /// GET `path`: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// `/metrics`, asserting 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `/status` as JSON, asserting 200.
    pub fn status(&self) -> serde_json::Value {
        let (status, body) = self.get("/status");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Send `sig` to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Wait (bounded) for it to exit; its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                start.elapsed() < deadline,
                "the daemon did not exit within {deadline:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_accept(addr, path, None);
    (status, body)
}

/// A plain HTTP/1.1 GET with an `Accept` header (none when `None`): (status, content type,
/// body).
pub fn http_get_accept(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of the sample `name{labels}` (labels exactly as printed, `""` for none).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}
