//! (e) Locks and the gateway dispatcher: `/proc/locks`, `gateway.pid`, and whether a
//! gateway's embedded dispatcher is live. Nothing here takes a lock.

use super::HermesHomeError;
use super::config::{env_disables_gateway_dispatch, read_config};
use super::paths::dispatcher_lock_path;
use serde::Deserialize;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// One lock from `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcLock {
    /// `FLOCK`, `POSIX`, `OFDLCK`, `LEASE`, ...
    pub class: String,
    /// `READ` or `WRITE` (or `UNLCK`).
    pub access: String,
    /// The holder's pid (`None` when the kernel prints -1, as for OFD locks).
    pub pid: Option<u32>,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Inode number.
    pub inode: u64,
    /// A waiter (`->` lines) rather than a holder.
    pub waiting: bool,
}

/// Parses `/proc/locks`: lines like `1: FLOCK  ADVISORY  WRITE 14847 fe:00:10019054 0 EOF`
/// (device numbers in hex, inode in decimal; `->` marks a blocked waiter). Lines it cannot
/// read are skipped.
pub fn parse_proc_locks(text: &str) -> Vec<ProcLock> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            f.next()?.strip_suffix(':')?;
            let mut class = f.next()?;
            let waiting = class == "->";
            if waiting {
                class = f.next()?;
            }
            let _mode = f.next()?;
            let access = f.next()?;
            let pid = f.next()?.parse::<i64>().ok()?;
            let mut dev = f.next()?.split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let inode = dev.next()?.parse::<u64>().ok()?;
            Some(ProcLock {
                class: class.to_owned(),
                access: access.to_owned(),
                pid: u32::try_from(pid).ok(),
                major,
                minor,
                inode,
                waiting,
            })
        })
        .collect()
}

/// Linux `major()`/`minor()` of an `st_dev` (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    // Both fit: major is at most 32 bits of dev >> 8 masks, minor likewise.
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// The held (not waiting) locks on the file with this device and inode.
pub fn locks_on(locks: &[ProcLock], dev: (u32, u32), inode: u64) -> Vec<ProcLock> {
    locks
        .iter()
        .filter(|l| !l.waiting && l.inode == inode && (l.major, l.minor) == dev)
        .cloned()
        .collect()
}

/// A `/proc` file in ONE `read(2)`: the kernel builds `/proc/locks` record by record per read
/// call, so reading it in chunks while other processes take and drop locks (every SQLite
/// connection does) can skip a line, and a held lock would look free. One read of a buffer
/// larger than the file is a consistent snapshot; a read that fills the buffer is retried with
/// a larger one.
fn read_proc_snapshot(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut size = 1 << 20;
    loop {
        let mut buf = vec![0u8; size];
        let n = std::fs::File::open(path)?.read(&mut buf)?;
        if n < size || size >= 1 << 28 {
            buf.truncate(n);
            return String::from_utf8(buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
        size *= 4;
    }
}

/// Who holds locks on `path`, from `/proc/locks`, without taking any. `Ok(vec![])` when the
/// file does not exist (nobody can hold it).
///
/// # Errors
///
/// `/proc/locks` cannot be read, or the file cannot be stat'ed for a reason other than absence.
pub fn read_lock_holders(path: &Path) -> Result<Vec<ProcLock>, HermesHomeError> {
    read_lock_holders_from(path, Path::new("/proc/locks"))
}

fn read_lock_holders_from(
    path: &Path,
    proc_locks: &Path,
) -> Result<Vec<ProcLock>, HermesHomeError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HermesHomeError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let text = read_proc_snapshot(proc_locks).map_err(|source| HermesHomeError::ProcLocks {
        path: path.display().to_string(),
        source,
    })?;
    Ok(locks_on(
        &parse_proc_locks(&text),
        dev_major_minor(meta.dev()),
        meta.ino(),
    ))
}

/// `<HERMES_HOME>/gateway.pid`, as the gateway writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct GatewayPidFile {
    /// The gateway's pid.
    pub pid: u32,
    /// `hermes-gateway`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Its argv.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell a
    /// reused pid from the gateway.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// Parses `gateway.pid` (`{"pid": 14847, "kind": "hermes-gateway", "argv": [...],
/// "start_time": 743472}`); older gateways wrote a bare pid.
pub fn parse_gateway_pid(text: &str) -> Option<GatewayPidFile> {
    if let Ok(f) = serde_json::from_str::<GatewayPidFile>(text) {
        return Some(f);
    }
    text.trim().parse::<u32>().ok().map(|pid| GatewayPidFile {
        pid,
        kind: None,
        argv: Vec::new(),
        start_time: None,
    })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_proc_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; starttime is field 22, the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

pub use crate::adapters::child::pid_alive;

/// Whether the gateway a pid file describes is alive: the pid is alive and, when the file has
/// a start time and `/proc/<pid>/stat` is readable, that start time matches (so a reused pid
/// does not count). Zombies count as dead.
pub fn gateway_alive(g: &GatewayPidFile) -> bool {
    if !pid_alive(g.pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{}/stat", g.pid)) {
        Ok(stat) => {
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|s| s == "Z");
            let same = match (g.start_time, parse_proc_stat_start_time(&stat)) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            };
            !zombie && same
        }
        Err(_) => true,
    }
}

/// What is known about gateways and their embedded dispatcher for one kanban root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayDispatcher {
    /// `<root>/kanban/.dispatcher.lock`.
    pub lock_path: PathBuf,
    /// Pids holding a write flock on it: a gateway dispatcher is live in each.
    pub lock_holders: Vec<u32>,
    /// The gateway pid files found (`<HERMES_HOME>/gateway.pid`, and `<root>/gateway.pid` when
    /// that differs) whose process is alive.
    pub live_gateways: Vec<(PathBuf, u32)>,
    /// `kanban.dispatch_in_gateway` in `<HERMES_HOME>/config.yaml`.
    pub config_enabled: bool,
    /// `HERMES_KANBAN_DISPATCH_IN_GATEWAY` disables it in this process's environment (a
    /// gateway started with another environment may differ).
    pub env_disabled: bool,
    /// The config file consulted.
    pub config_path: PathBuf,
    /// Whether it exists (when not, `dispatch_in_gateway` is Hermes's default, true).
    pub config_exists: bool,
}

impl GatewayDispatcher {
    /// Whether a gateway would dispatch by configuration (config on and env not off here).
    pub fn enabled(&self) -> bool {
        self.config_enabled && !self.env_disabled
    }

    /// Why a gateway dispatcher is (or must be assumed) live on this root, or `None`. Live
    /// means: some process holds `.dispatcher.lock`; or a gateway is alive and its dispatcher
    /// is enabled (it may be starting, or running without the lock). The governor holds
    /// (`DualDispatcher`) while this is `Some`.
    pub fn active(&self) -> Option<String> {
        let setting = if self.enabled() && !self.config_exists {
            format!(
                "kanban.dispatch_in_gateway is true (the default: {} does not exist)",
                self.config_path.display()
            )
        } else if self.enabled() {
            format!(
                "kanban.dispatch_in_gateway is true in {}",
                self.config_path.display()
            )
        } else if !self.config_enabled {
            format!(
                "kanban.dispatch_in_gateway is false in {} (a gateway started before that change still dispatches until restarted)",
                self.config_path.display()
            )
        } else {
            "HERMES_KANBAN_DISPATCH_IN_GATEWAY is off here, but the gateway's own environment decides".to_owned()
        };
        if !self.lock_holders.is_empty() {
            let pids: Vec<String> = self.lock_holders.iter().map(u32::to_string).collect();
            return Some(format!(
                "gateway pid {} holds {} (its embedded kanban dispatcher is running) and {setting}",
                pids.join(", "),
                self.lock_path.display()
            ));
        }
        if self.enabled()
            && let Some((file, pid)) = self.live_gateways.first()
        {
            return Some(format!(
                "gateway pid {pid} (from {}) is alive and {setting}",
                file.display()
            ));
        }
        None
    }
}

/// Looks for a live gateway dispatcher on the kanban root `root` of the Hermes home
/// `hermes_home`, without taking any lock.
///
/// # Errors
///
/// `/proc/locks` or `config.yaml` cannot be read; the caller must then assume the worst.
pub fn read_gateway_dispatcher(
    env: &dyn Fn(&str) -> Option<String>,
    hermes_home: &Path,
    root: &Path,
) -> Result<GatewayDispatcher, HermesHomeError> {
    let lock_path = dispatcher_lock_path(root);
    let mut lock_holders: Vec<u32> = read_lock_holders(&lock_path)?
        .into_iter()
        .filter(|l| l.access == "WRITE")
        .filter_map(|l| l.pid)
        .collect();
    lock_holders.sort_unstable();
    lock_holders.dedup();
    let mut pid_files = vec![hermes_home.join("gateway.pid")];
    if root != hermes_home {
        pid_files.push(root.join("gateway.pid"));
    }
    let live_gateways = pid_files
        .into_iter()
        .filter_map(|f| {
            let g = parse_gateway_pid(&std::fs::read_to_string(&f).ok()?)?;
            gateway_alive(&g).then_some((f, g.pid))
        })
        .collect();
    let config = read_config(hermes_home)?;
    Ok(GatewayDispatcher {
        lock_path,
        lock_holders,
        live_gateways,
        config_enabled: config.kanban.dispatch_in_gateway,
        env_disabled: env_disables_gateway_dispatch(env),
        config_path: config.path,
        config_exists: config.exists,
    })
}
