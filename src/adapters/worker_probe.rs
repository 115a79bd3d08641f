//! [`WorkerProbe`] for workers on this host: `kill(pid, 0)` and `/proc/<pid>/stat`.
//!
//! Hermes records the worker's pid and a claim lock `<hostname>:<pid>` (HERMES.md §3.2, §4).
//! A worker that died without completing leaves its task `running` until a Hermes dispatch
//! tick notices (after a 30 s grace), and only a dispatch tick notices; a governor that holds
//! because that task is charged would never run one. So the governor looks itself, read-only:
//! no signal is sent (signal 0 only tests), nothing is written.

use crate::ports::{BoardTask, TaskStatus, WorkerProbe, WorkerProcess};

/// Probes processes of this host.
#[derive(Debug, Clone)]
pub struct LocalWorkerProbe {
    hostname: String,
}

impl LocalWorkerProbe {
    /// A probe for claims made on `hostname` (what Python's `socket.gethostname()` says).
    pub fn new(hostname: impl Into<String>) -> LocalWorkerProbe {
        LocalWorkerProbe {
            hostname: hostname.into(),
        }
    }

    /// A probe for this host (`/proc/sys/kernel/hostname`); `None` when that is unreadable
    /// (then no worker is ever judged dead).
    pub fn for_this_host() -> Option<LocalWorkerProbe> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| LocalWorkerProbe::new(h.trim()))
    }
}

/// `/proc/<pid>/stat` of a live (not zombie) process: its start time, field 22.
fn live_start_time(pid: u32) -> Option<u64> {
    stat_start_time(std::fs::read_to_string(format!("/proc/{pid}/stat"))).ok()?
}

/// The start time in a `/proc/<pid>/stat` read: `Ok(Some(start))` for a live process,
/// `Ok(None)` for one that is gone (no such file) or a zombie, `Err` when the file could not
/// be read for another reason (out of file descriptors, say): nothing is known.
fn stat_start_time(read: std::io::Result<String>) -> std::io::Result<Option<u64>> {
    match read {
        Ok(stat) => Ok(parse_start_time(&stat)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // Fields after the command (which may hold spaces and parentheses): state is field 3,
    // start time field 22.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    if rest.next()? == "Z" {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

/// Whether process `pid` is gone or a zombie.
pub fn process_is_gone(pid: u32) -> bool {
    let Some(signalled) = crate::adapters::child::signal_zero(pid) else {
        return false;
    };
    match signalled {
        Err(rustix::io::Errno::SRCH) => true,
        // EPERM: it exists, owned by someone else.
        Err(_) => false,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
            })
            .unwrap_or(false),
    }
}

impl WorkerProbe for LocalWorkerProbe {
    fn is_dead(&self, task: &BoardTask) -> bool {
        if task.status != TaskStatus::Running {
            return false;
        }
        let (Some(pid), Some(lock)) = (task.worker_pid, task.claim_lock.as_deref()) else {
            return false;
        };
        self.is_local(lock) && process_is_gone(pid)
    }

    fn worker(&self, task: &BoardTask) -> Option<WorkerProcess> {
        if task.status != TaskStatus::Running {
            return None;
        }
        let (pid, lock) = (task.worker_pid?, task.claim_lock.as_deref()?);
        if !self.is_local(lock) {
            return None;
        }
        live_start_time(pid).map(|start| WorkerProcess { pid, start })
    }

    fn is_alive(&self, worker: &WorkerProcess) -> bool {
        let read = std::fs::read_to_string(format!("/proc/{}/stat", worker.pid));
        alive_given(stat_start_time(read), worker, process_is_gone)
    }
}

/// Whether `worker` is alive given what its `/proc` stat read gave. A read that failed for
/// another reason than the process being gone (EMFILE) proves nothing: it is alive unless
/// `gone` (a signal-0 test, which needs no file descriptor) says otherwise, so its memory
/// stays charged (fail closed).
fn alive_given(
    start: std::io::Result<Option<u64>>,
    worker: &WorkerProcess,
    gone: impl Fn(u32) -> bool,
) -> bool {
    match start {
        Ok(start) => start == Some(worker.start),
        Err(_) => !gone(worker.pid),
    }
}

impl LocalWorkerProbe {
    fn is_local(&self, claim_lock: &str) -> bool {
        let host = claim_lock.rsplit_once(':').map_or(claim_lock, |(h, _)| h);
        host == self.hostname
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::{Millis, TaskId};

    fn running(pid: u32, lock: &str) -> BoardTask {
        BoardTask {
            id: TaskId::from("t_1"),
            assignee: Some("coder".into()),
            status: TaskStatus::Running,
            priority: 0,
            created_at: Millis(0),
            started_at: Some(Millis(0)),
            worker_pid: Some(pid),
            claim_lock: Some(lock.into()),
        }
    }

    #[test]
    fn a_live_local_worker_is_not_dead_and_an_exited_one_is() {
        let probe = LocalWorkerProbe::new("host-a");
        let me = std::process::id();
        assert!(!probe.is_dead(&running(me, "host-a:1")));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(probe.is_dead(&running(pid, "host-a:1")));
    }

    #[test]
    fn a_local_worker_is_remembered_by_pid_and_start_time_until_it_exits() {
        let probe = LocalWorkerProbe::new("host-a");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let w = probe
            .worker(&running(pid, "host-a:1"))
            .expect("a live local worker");
        assert_eq!(w.pid, pid);
        assert!(probe.is_alive(&w));
        // The same pid with another start time is another process.
        assert!(!probe.is_alive(&WorkerProcess {
            start: w.start + 1,
            ..w
        }));
        assert_eq!(probe.worker(&running(pid, "host-b:1")), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!probe.is_alive(&w));
        assert_eq!(probe.worker(&running(pid, "host-a:1")), None);
    }

    #[test]
    fn a_worker_whose_proc_entry_cannot_be_read_stays_alive_unless_signal_0_says_gone() {
        let w = WorkerProcess {
            pid: 4242,
            start: 77,
        };
        let emfile = || Err(std::io::Error::from_raw_os_error(24));
        let gone = |_| true;
        let there = |_| false;
        // Out of descriptors: nothing known; alive (still charged) unless it is gone.
        assert!(alive_given(stat_start_time(emfile()), &w, there));
        assert!(!alive_given(stat_start_time(emfile()), &w, gone));
        // No such entry: gone, whatever signal 0 would say.
        let missing = || Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!alive_given(stat_start_time(missing()), &w, there));
        // Read: the start time decides.
        let stat = |start: u64| {
            Ok(format!(
                "4242 (python3 x) S {} {start} 0",
                "1 ".repeat(18).trim_end()
            ))
        };
        assert!(alive_given(stat_start_time(stat(77)), &w, gone));
        assert!(!alive_given(stat_start_time(stat(78)), &w, there));
    }

    #[test]
    fn another_hosts_claim_or_a_missing_pid_is_never_judged_dead() {
        let probe = LocalWorkerProbe::new("host-a");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!probe.is_dead(&running(pid, "host-b:1")));
        let mut t = running(pid, "host-a:1");
        t.worker_pid = None;
        assert!(!probe.is_dead(&t));
    }
}
