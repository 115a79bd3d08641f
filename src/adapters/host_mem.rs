//! `telemetry = "host"`: host memory as the capacity pool, for CPU-only inference and
//! unified-memory devices. Reads `/proc/meminfo` (`MemTotal`, `MemAvailable`) and the memory
//! limit of this process's cgroup when there is one (v2 `memory.max`/`memory.current`, or v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`), and reports the tighter of the two.
//!
//! Side effects: reads files under `/proc` and `/sys/fs/cgroup` (roots configurable for
//! tests). The parsing functions are pure.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::governor::{Bytes, GpuSample, Millis};
use crate::ports::{GpuTelemetry, PortError};

/// Host memory could not be read.
#[derive(Debug, Error)]
pub enum HostMemError {
    /// A file could not be read.
    #[error("host memory: cannot read {path}: {source}; telemetry = \"host\" needs /proc (Linux)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file did not hold what was expected.
    #[error("host memory: {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The two `/proc/meminfo` fields used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: Bytes,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available: Bytes,
}

/// Parse `/proc/meminfo` text (`Name:   123 kB` lines).
///
/// # Errors
///
/// `MemTotal` or `MemAvailable` missing or not a number (kernels before 3.14 lack
/// `MemAvailable`).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let field = |name: &str| -> Result<Bytes, String> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| format!("no {name} line"))?;
        let rest = line[name.len() + 1..].trim();
        let mut parts = rest.split_whitespace();
        let n: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{name}: {rest:?} is not a number"))?;
        let unit = match parts.next() {
            None => 1,
            Some("kB") => 1024,
            Some(u) => return Err(format!("{name}: unknown unit {u:?}")),
        };
        Ok(Bytes(n.saturating_mul(unit)))
    };
    Ok(MemInfo {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

/// Parse a cgroup limit file (`memory.max`, `memory.limit_in_bytes`): `None` for `max` or a
/// v1 "unlimited" value (≥ 2^62, the page-rounded `i64::MAX` v1 writes).
///
/// # Errors
///
/// Neither `max` nor a number.
pub fn parse_cgroup_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let n = parse_cgroup_bytes(t)?;
    Ok((n < 1 << 62).then_some(n))
}

/// Parse a cgroup byte count (`memory.current`, `memory.usage_in_bytes`).
///
/// # Errors
///
/// Not a number.
pub fn parse_cgroup_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{:?} is not a byte count", text.trim()))
}

/// The cgroup path of a controller from `/proc/self/cgroup` text: the v2 line `0::/path`
/// (`controller = None`) or the v1 line `N:memory:/path`.
pub fn parse_proc_cgroup(text: &str, controller: Option<&str>) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

/// A cgroup memory limit and the usage charged against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    /// The cgroup directory.
    pub dir: PathBuf,
    /// The limit.
    pub limit: Bytes,
    /// The usage charged to it now.
    pub current: Bytes,
}

/// The sample: total = the smaller of `MemTotal` and the tightest limit; free = the smaller of
/// `MemAvailable` and every limit's `limit − current`; used = total − free.
pub fn host_sample(mem: MemInfo, limits: &[CgroupLimit], now: Millis) -> GpuSample {
    let mut total = mem.total;
    let mut free = mem.available;
    for l in limits {
        total = Bytes(total.get().min(l.limit.get()));
        free = Bytes(free.get().min(l.limit.saturating_sub(l.current).get()));
    }
    free = Bytes(free.get().min(total.get()));
    GpuSample {
        at: now,
        total,
        used: total.saturating_sub(free),
        free,
    }
}

/// Host memory, read from `/proc` and the cgroup filesystem.
#[derive(Debug, Clone)]
pub struct HostMemory {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl Default for HostMemory {
    fn default() -> Self {
        HostMemory::new()
    }
}

impl HostMemory {
    /// Reads `/proc` and `/sys/fs/cgroup`.
    pub fn new() -> HostMemory {
        HostMemory::with_roots("/proc", "/sys/fs/cgroup")
    }

    /// Reads `<proc_root>/meminfo`, `<proc_root>/self/cgroup` and the cgroup tree under
    /// `cgroup_root` (tests point these at temp dirs).
    pub fn with_roots(proc_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        HostMemory {
            proc_root: proc_root.into(),
            cgroup_root: cgroup_root.into(),
        }
    }

    fn read_file(path: &Path) -> Result<String, HostMemError> {
        std::fs::read_to_string(path).map_err(|source| HostMemError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// `MemTotal` and `MemAvailable`.
    ///
    /// # Errors
    ///
    /// `/proc/meminfo` unreadable or without those fields.
    pub fn read_meminfo(&self) -> Result<MemInfo, HostMemError> {
        let path = self.proc_root.join("meminfo");
        parse_meminfo(&Self::read_file(&path)?)
            .map_err(|message| HostMemError::Parse { path, message })
    }

    /// The memory limits of this process's cgroup and its ancestors that have one (v2, else
    /// v1). Empty when there is no cgroup memory controller or no limit.
    ///
    /// # Errors
    ///
    /// A limit file exists but holds something unexpected.
    pub fn read_cgroup_limits(&self) -> Result<Vec<CgroupLimit>, HostMemError> {
        let own = Self::read_file(&self.proc_root.join("self/cgroup")).unwrap_or_default();
        let v2_roots = [self.cgroup_root.clone(), self.cgroup_root.join("unified")];
        for root in v2_roots {
            if root.join("cgroup.controllers").is_file() {
                let path = parse_proc_cgroup(&own, None).unwrap_or_default();
                return self.limits_along(&root, &path, "memory.max", "memory.current");
            }
        }
        let v1 = self.cgroup_root.join("memory");
        if v1.join("memory.limit_in_bytes").is_file() {
            let path = parse_proc_cgroup(&own, Some("memory")).unwrap_or_default();
            return self.limits_along(&v1, &path, "memory.limit_in_bytes", "memory.usage_in_bytes");
        }
        Ok(Vec::new())
    }

    /// Limits from `root/path` up to `root`. Inside a container the path in
    /// `/proc/self/cgroup` names the host's hierarchy while `root` is the container's own
    /// cgroup, so a path that does not exist under `root` falls back to `root` alone.
    fn limits_along(
        &self,
        root: &Path,
        path: &str,
        max_file: &str,
        current_file: &str,
    ) -> Result<Vec<CgroupLimit>, HostMemError> {
        let rel = path.trim_start_matches('/');
        let mut dir = root.join(rel);
        if rel.is_empty() || !dir.is_dir() {
            dir = root.to_path_buf();
        }
        let mut out = Vec::new();
        loop {
            let max_path = dir.join(max_file);
            if let Ok(text) = std::fs::read_to_string(&max_path) {
                let parse = |path: &Path, r: Result<u64, String>| {
                    r.map_err(|message| HostMemError::Parse {
                        path: path.to_path_buf(),
                        message,
                    })
                };
                let limit = parse(&max_path, parse_cgroup_limit(&text).map(|o| o.unwrap_or(0)))?;
                if limit > 0 {
                    let cur_path = dir.join(current_file);
                    let current =
                        parse(&cur_path, parse_cgroup_bytes(&Self::read_file(&cur_path)?))?;
                    out.push(CgroupLimit {
                        dir: dir.clone(),
                        limit: Bytes(limit),
                        current: Bytes(current),
                    });
                }
            }
            if dir == root {
                break;
            }
            match dir.parent() {
                Some(p) if p.starts_with(root) => dir = p.to_path_buf(),
                _ => break,
            }
        }
        Ok(out)
    }

    /// One sample, stamped `now`.
    ///
    /// # Errors
    ///
    /// As [`HostMemory::read_meminfo`] and [`HostMemory::read_cgroup_limits`].
    pub fn read(&self, now: Millis) -> Result<GpuSample, HostMemError> {
        let mem = self.read_meminfo()?;
        let limits = self.read_cgroup_limits()?;
        Ok(host_sample(mem, &limits, now))
    }
}

impl GpuTelemetry for HostMemory {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        Ok(self.read(now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24684084 kB\nMemFree:        23640520 kB\n\
                           MemAvailable:   24262000 kB\nBuffers:           12 kB\n";

    #[test]
    fn parses_meminfo_in_kib() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, Bytes(24_684_084 * 1024));
        assert_eq!(m.available, Bytes(24_262_000 * 1024));
        assert!(
            parse_meminfo("MemTotal: 1 kB\n")
                .unwrap_err()
                .contains("MemAvailable")
        );
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
    }

    #[test]
    fn parses_cgroup_limits() {
        assert_eq!(parse_cgroup_limit("max\n"), Ok(None));
        assert_eq!(parse_cgroup_limit("1073741824\n"), Ok(Some(1 << 30)));
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), Ok(None));
        assert!(parse_cgroup_limit("lots").is_err());
        assert_eq!(parse_cgroup_bytes("42\n"), Ok(42));
    }

    #[test]
    fn finds_the_cgroup_path_of_v2_and_v1() {
        let text = "4:memory:/docker/abc\n1:cpu,cpuacct:/x\n0::/user.slice/app\n";
        assert_eq!(
            parse_proc_cgroup(text, None).as_deref(),
            Some("/user.slice/app")
        );
        assert_eq!(
            parse_proc_cgroup(text, Some("memory")).as_deref(),
            Some("/docker/abc")
        );
        assert_eq!(parse_proc_cgroup("1:cpu:/\n", Some("memory")), None);
    }

    #[test]
    fn the_tighter_of_host_and_cgroup_wins() {
        let mem = MemInfo {
            total: Bytes::gib(64),
            available: Bytes::gib(40),
        };
        let s = host_sample(mem, &[], Millis(1));
        assert_eq!(
            (s.total, s.free, s.used),
            (Bytes::gib(64), Bytes::gib(40), Bytes::gib(24))
        );
        let lim = CgroupLimit {
            dir: PathBuf::from("/x"),
            limit: Bytes::gib(8),
            current: Bytes::gib(3),
        };
        let s = host_sample(mem, &[lim], Millis(1));
        assert_eq!(
            (s.total, s.free, s.used),
            (Bytes::gib(8), Bytes::gib(5), Bytes::gib(3))
        );
    }

    #[test]
    fn reads_a_v2_tree_walking_up_to_the_tightest_limit() {
        let d = tempfile::tempdir().unwrap();
        let proc_root = d.path().join("proc");
        let cg = d.path().join("cg");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        std::fs::write(proc_root.join("meminfo"), MEMINFO).unwrap();
        std::fs::write(proc_root.join("self/cgroup"), "0::/a/b\n").unwrap();
        std::fs::create_dir_all(cg.join("a/b")).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "memory\n").unwrap();
        std::fs::write(cg.join("a/b/memory.max"), "max\n").unwrap();
        std::fs::write(cg.join("a/memory.max"), "2147483648\n").unwrap();
        std::fs::write(cg.join("a/memory.current"), "536870912\n").unwrap();
        let h = HostMemory::with_roots(&proc_root, &cg);
        let limits = h.read_cgroup_limits().unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].dir, cg.join("a"));
        let s = h.read(Millis(3)).unwrap();
        assert_eq!(s.total, Bytes::gib(2));
        assert_eq!(s.free, Bytes::mib(1536));
    }

    #[test]
    fn a_missing_proc_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let h = HostMemory::with_roots(d.path(), d.path());
        let err = h.read(Millis(0)).unwrap_err().to_string();
        assert!(err.contains("meminfo"), "{err}");
    }
}
