//! Child processes and pids on this host: the one runner with a timeout and the one
//! `kill(pid, 0)`. The Hermes CLI calls ([`super::dispatch_cli`]) and the Hermes version probe
//! ([`super::hermes_home`]) run through [`run`]; gateway and worker liveness ask
//! [`signal_zero`].
//!
//! Side effects: spawns the given command, sends signals to its process group on timeout, and
//! signal 0 to pids.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How long a reader thread may take to hand over a pipe's text after the child ended: a
/// grandchild that inherited the pipe must not hang the caller.
const READ_GRACE: Duration = Duration::from_secs(2);

/// A pipe read to its end, of which at most a limit was kept.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    /// What was kept, lossy UTF-8.
    pub text: String,
    /// Bytes read past the limit and dropped.
    pub dropped: u64,
}

/// Read `pipe` to its end, keeping its first `limit` bytes. The rest is read and dropped
/// rather than left in the pipe: a child blocked on a full pipe would only end at its
/// timeout, and killing it mid-call could leave a half-done board change.
pub(crate) fn read_capped(mut pipe: impl Read, limit: usize) -> Captured {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let take = n.min(limit.saturating_sub(kept.len()));
                kept.extend_from_slice(&chunk[..take]);
                dropped += (n - take) as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Captured {
        text: String::from_utf8_lossy(&kept).into_owned(),
        dropped,
    }
}

/// How a child that [`run`] waited for ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout, capped.
    pub stdout: Captured,
    /// Its stderr, capped.
    pub stderr: Captured,
}

/// What [`run`] saw.
#[derive(Debug)]
pub(crate) enum Ran {
    /// The child ended within the timeout.
    Finished(Finished),
    /// The timeout passed: the child's process group was killed.
    TimedOut,
}

/// Why [`run`] could not run the command.
#[derive(Debug)]
pub(crate) enum RunError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It could not be waited on.
    Wait(std::io::Error),
}

/// Runs `cmd` (argv, no shell; arguments and environment already set) in its own process
/// group with stdin closed, reading stdout and stderr on threads (at most `limit` bytes of
/// each kept, the rest read and dropped so a chatty child cannot stall on a full pipe), and
/// waits up to `timeout`. When the time is up the whole group gets SIGTERM, `term_grace` to
/// end, then SIGKILL (with a zero grace: SIGKILL at once).
///
/// Blocking (std only): async callers run it on `spawn_blocking`.
///
/// # Errors
///
/// The command could not be started or waited on.
pub(crate) fn run(
    cmd: &mut Command,
    timeout: Duration,
    term_grace: Duration,
    limit: usize,
) -> Result<Ran, RunError> {
    use std::os::unix::process::CommandExt as _;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let out = reader(child.stdout.take(), limit);
    let err = reader(child.stderr.take(), limit);
    let pgid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(RunError::Wait)? {
            break s;
        }
        if started.elapsed() >= timeout {
            if let Some(pgid) = pgid {
                if !term_grace.is_zero() {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
                    let term_at = Instant::now();
                    while term_at.elapsed() < term_grace {
                        if child.try_wait().map_err(RunError::Wait)?.is_some() {
                            break;
                        }
                        std::thread::sleep(POLL);
                    }
                }
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ran::TimedOut);
        }
        std::thread::sleep(POLL);
    };
    Ok(Ran::Finished(Finished {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }))
}

/// How often [`run`] looks whether the child ended: polling keeps it std-only and blocking;
/// 20 ms is noise next to a 0.3 s Python start.
const POLL: Duration = Duration::from_millis(20);

/// Read a pipe to its end on a thread, keeping at most `limit` bytes.
fn reader<R: Read + Send + 'static>(pipe: Option<R>, limit: usize) -> Option<Receiver<Captured>> {
    let pipe = pipe?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_capped(pipe, limit));
    });
    Some(rx)
}

/// What the reader got, waiting at most [`READ_GRACE`].
fn collect(rx: Option<Receiver<Captured>>) -> Captured {
    rx.and_then(|rx| rx.recv_timeout(READ_GRACE).ok())
        .unwrap_or_default()
}

/// `kill(pid, 0)`: `Ok` when process `pid` exists and may be signalled, `Err(EPERM)` when it
/// exists and is another user's, `Err(ESRCH)` when there is none. `None` when `pid` cannot be
/// a process id (0, or above `i32::MAX`).
pub fn signal_zero(pid: u32) -> Option<Result<(), rustix::io::Errno>> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)?;
    Some(rustix::process::test_kill_process(p))
}

/// Whether `pid` is a live process (`kill(pid, 0)`: alive, or alive but another user's).
pub fn pid_alive(pid: u32) -> bool {
    matches!(
        signal_zero(pid),
        Some(Ok(()) | Err(rustix::io::Errno::PERM))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_past_its_timeout_is_killed_with_its_group() {
        let mut cmd = Command::new("sh");
        // The grandchild holds the pipes: the group kill ends it too.
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let started = Instant::now();
        let ran = run(&mut cmd, Duration::from_millis(100), Duration::ZERO, 1024).unwrap();
        assert!(matches!(ran, Ran::TimedOut), "{ran:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_past_the_limit_is_read_and_counted_not_kept() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 0123456789; printf err >&2; exit 3"]);
        let Ran::Finished(f) = run(&mut cmd, Duration::from_secs(30), Duration::ZERO, 4).unwrap()
        else {
            panic!("timed out")
        };
        assert_eq!(f.status.code(), Some(3));
        assert_eq!((f.stdout.text.as_str(), f.stdout.dropped), ("0123", 6));
        assert_eq!((f.stderr.text.as_str(), f.stderr.dropped), ("err", 0));
    }

    #[test]
    fn signal_zero_tells_a_live_pid_from_none() {
        assert_eq!(signal_zero(std::process::id()), Some(Ok(())));
        assert!(pid_alive(std::process::id()));
        assert_eq!(signal_zero(0), None);
        assert!(!pid_alive(u32::MAX));
    }
}
