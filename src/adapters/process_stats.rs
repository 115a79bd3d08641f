//! This process's resource use, for the standard `process_*` metrics every Prometheus client
//! exports (resident memory, CPU time, file descriptors, start time). Read from `/proc/self`
//! on each scrape; on a system without `/proc` the read fails and the metrics are left out.
//!
//! Side effects: reads `/proc/self/stat`, `/proc/self/status`, `/proc/stat`, lists
//! `/proc/self/fd` and asks for the file-descriptor limit. The parsing functions are pure.

use std::path::Path;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`).
// `sysconf(_SC_CLK_TCK)` is 100 on every Linux architecture this runs on: the kernel scales
// its times to USER_HZ for userspace, a fixed ABI constant. Prometheus's own procfs library
// hard-codes it for the same reason, and it spares a libc call.
const USER_HZ: f64 = 100.0;

/// One reading of this process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident set size (`VmRSS`).
    pub resident_bytes: u64,
    /// Virtual memory size (`VmSize`).
    pub virtual_bytes: u64,
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on file descriptors; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Read this process's numbers; `None` when `/proc` is missing or unreadable (not Linux,
    /// or a sandbox without it).
    pub fn read() -> Option<ProcessStats> {
        ProcessStats::read_from(Path::new("/proc"), "self")
    }

    /// Read process `pid` (`"self"` for this one) under `proc_root`.
    pub fn read_from(proc_root: &Path, pid: &str) -> Option<ProcessStats> {
        let dir = proc_root.join(pid);
        let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let boot = parse_boot_time(&std::fs::read_to_string(proc_root.join("stat")).ok()?)?;
        let open_fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(ProcessStats {
            resident_bytes: status_kb(&status, "VmRSS")? * 1024,
            virtual_bytes: status_kb(&status, "VmSize")? * 1024,
            cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
            open_fds,
            max_fds,
            start_time_seconds: boot as f64 + stat.starttime as f64 / USER_HZ,
        })
    }
}

/// The fields of `/proc/<pid>/stat` used here, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 14: user-mode CPU time.
    pub utime: u64,
    /// Field 15: kernel-mode CPU time.
    pub stime: u64,
    /// Field 22: start time after boot.
    pub starttime: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time, seconds since the Unix epoch.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Name:   123 kB` line of `/proc/<pid>/status`, in kB.
fn status_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let text = "4242 (kanban gov) r) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 \
                    3 0 123456 50000000 1500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 123456,
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn boot_time_and_status_fields_are_read_by_name() {
        let stat = "cpu  1 2 3 4\nintr 5\nbtime 1760000000\nprocesses 9\n";
        assert_eq!(parse_boot_time(stat), Some(1_760_000_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
        let status =
            "Name:\tkanban-governor\nVmSize:\t  204800 kB\nVmRSSx:\t1 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(status_kb(status, "VmSize"), Some(204_800));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn a_fake_proc_tree_reads_back_in_bytes_and_seconds() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("7");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        for fd in ["0", "1", "2"] {
            std::fs::write(p.join("fd").join(fd), "").unwrap();
        }
        std::fs::write(
            p.join("stat"),
            "7 (kg) S 1 7 7 0 -1 0 0 0 0 0 250 75 0 0 20 0 1 0 1000 0 0\n",
        )
        .unwrap();
        std::fs::write(p.join("status"), "VmSize:\t2048 kB\nVmRSS:\t1024 kB\n").unwrap();
        std::fs::write(root.path().join("stat"), "btime 1700000000\n").unwrap();
        let s = ProcessStats::read_from(root.path(), "7").unwrap();
        assert_eq!(s.resident_bytes, 1024 * 1024);
        assert_eq!(s.virtual_bytes, 2048 * 1024);
        assert_eq!(s.cpu_seconds, 3.25);
        assert_eq!(s.open_fds, 3);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(ProcessStats::read_from(root.path(), "8"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_plausible_numbers() {
        let s = ProcessStats::read().unwrap();
        assert!(
            s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.open_fds >= 3, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // The test binary started moments ago: a wrong USER_HZ would put it far off.
        assert!(s.start_time_seconds <= now + 1.0, "{s:?}");
        assert!(s.start_time_seconds > now - 3600.0, "{s:?}");
    }
}
