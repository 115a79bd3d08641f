//! What `tick` and `status` need from the config file, and the adapters built from it.
//!
//! Interim: the config engineer's `crate::config` replaces the file parsing here; the key
//! names already follow DESIGN §3 (`[hermes]`, `[gpu]`, `[dispatch]`, `[[profiles]]`), so test
//! configs keep working. Side effects: reads the config file only.

use crate::adapters::board_sqlite::{BoardError, SqliteBoard};
use crate::adapters::dispatch_cli::{
    CliDispatcher, CliDispatcherConfig, DEFAULT_TIMEOUT, DispatchError,
};
use crate::adapters::hermes_home;
use crate::error::UsageError;
use crate::governor::{
    Bytes, FootprintMode, GpuSample, KvPlacement, Millis, Policy, PoolPolicy, ProfileId,
    ProfilePolicy, WorstCase,
};
use crate::ports::{GpuTelemetry, MaxSemantics, PortError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default headroom: the fraction of GPU memory the governor may fill (as vLLM's
/// `--gpu-memory-utilization 0.85`, DESIGN §3).
pub const DEFAULT_HEADROOM: f64 = 0.85;
/// Default reserve kept free for the driver and other tenants (DESIGN §3).
pub const DEFAULT_RESERVE: Bytes = Bytes::gib(1);
/// Default starvation guard (DESIGN §3).
pub const DEFAULT_MAX_WAIT: Millis = Millis::secs(600);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    hermes: RawHermes,
    #[serde(default)]
    gpu: RawGpu,
    #[serde(default)]
    dispatch: RawDispatch,
    #[serde(default)]
    profiles: Vec<RawProfile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHermes {
    bin: Option<PathBuf>,
    home: Option<PathBuf>,
    board: Option<String>,
    max_semantics: Option<MaxSemantics>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    telemetry: Option<String>,
    memory_total: Option<String>,
    baseline: Option<String>,
    headroom: Option<f64>,
    reserve: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    state_dir: Option<PathBuf>,
    max_running: Option<u32>,
    max_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    lane: Option<String>,
    kv_bytes_per_token: Option<String>,
    max_context_tokens: Option<u64>,
    requests_per_task: Option<u32>,
    extra_bytes: Option<String>,
    max_parallel: Option<u32>,
    guaranteed: Option<u32>,
}

/// The Hermes side of the config.
#[derive(Debug, Clone)]
pub struct HermesSettings {
    /// Absolute path of `hermes`.
    pub bin: PathBuf,
    /// `HERMES_HOME` of the board.
    pub home: PathBuf,
    /// Board slug (`default` for `<home>/kanban.db`).
    pub board: String,
    /// What `--max` means, when configured.
    pub max_semantics: Option<MaxSemantics>,
    /// Timeout per Hermes call.
    pub timeout: Duration,
}

/// Everything `tick`/`status` need.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The decision's policy.
    pub policy: Policy,
    /// Hermes.
    pub hermes: HermesSettings,
    /// `[gpu] memory_total` for static telemetry.
    pub memory_total: Bytes,
    /// `[gpu] baseline`, if given.
    pub baseline: Option<Bytes>,
    /// Where state and the lock live.
    pub state_dir: PathBuf,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

fn size(path: &Path, key: &str, v: &str) -> anyhow::Result<Bytes> {
    v.trim().parse::<bytesize::ByteSize>().map(|b| Bytes(b.as_u64())).map_err(|e| {
        usage(format!(
            "config {}: {key} = {v:?} is not a size ({e}); write it with a unit, e.g. \"24GiB\"",
            path.display()
        ))
    })
}

fn duration(path: &Path, key: &str, v: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(v).map_err(|e| {
        usage(format!(
            "config {}: {key} = {v:?} is not a duration ({e}); write e.g. \"15s\" or \"10m\"",
            path.display()
        ))
    })
}

/// The config path: `--config`, else `$KANBAN_GOVERNOR_CONFIG`, else
/// `$HERMES_HOME/governor.toml`, else `~/.hermes/governor.toml`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("KANBAN_GOVERNOR_CONFIG") {
        return PathBuf::from(p);
    }
    if let Some(h) = std::env::var_os("HERMES_HOME") {
        return PathBuf::from(h).join("governor.toml");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".hermes/governor.toml")
}

/// Read and validate the config at `path`.
///
/// # Errors
///
/// A [`UsageError`] naming the file, the key and the fix.
pub fn load(path: &Path) -> anyhow::Result<Setup> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "config {}: {e}; pass --config <file> or create it (see `kanban-governor doctor`)",
            path.display()
        ))
    })?;
    let raw: RawFile =
        toml::from_str(&text).map_err(|e| usage(format!("config {}: {e}", path.display())))?;
    let p = path;
    let bin = raw.hermes.bin.ok_or_else(|| {
        usage(format!(
            "config {}: hermes.bin is missing; set it to the absolute path `command -v hermes` prints",
            p.display()
        ))
    })?;
    let home = match raw.hermes.home {
        Some(h) => h,
        None => std::env::var_os("HERMES_HOME").map(PathBuf::from).ok_or_else(|| {
            usage(format!(
                "config {}: hermes.home is missing and HERMES_HOME is unset; set hermes.home to the Hermes home of the board",
                p.display()
            ))
        })?,
    };
    let telemetry = raw.gpu.telemetry.as_deref().unwrap_or("static");
    if telemetry != "static" {
        return Err(usage(format!(
            "config {}: gpu.telemetry = {telemetry:?} is not available in this build; use \"static\" with gpu.memory_total",
            p.display()
        )));
    }
    let memory_total = match &raw.gpu.memory_total {
        Some(v) => size(p, "gpu.memory_total", v)?,
        None => {
            return Err(usage(format!(
                "config {}: gpu.memory_total is missing; static telemetry needs it, e.g. memory_total = \"24GiB\"",
                p.display()
            )));
        }
    };
    let baseline = raw
        .gpu
        .baseline
        .as_deref()
        .map(|v| size(p, "gpu.baseline", v))
        .transpose()?;
    let headroom = raw.gpu.headroom.unwrap_or(DEFAULT_HEADROOM);
    if !(headroom > 0.0 && headroom <= 1.0) {
        return Err(usage(format!(
            "config {}: gpu.headroom = {headroom} is outside (0, 1]; e.g. 0.85",
            p.display()
        )));
    }
    let reserve = match raw.gpu.reserve.as_deref() {
        Some(v) => size(p, "gpu.reserve", v)?,
        None => DEFAULT_RESERVE,
    };
    let state_dir = raw.dispatch.state_dir.ok_or_else(|| {
        usage(format!(
            "config {}: dispatch.state_dir is missing; set it to a directory this user can write",
            p.display()
        ))
    })?;
    let max_wait = match raw.dispatch.max_wait.as_deref() {
        Some(v) => Millis(
            u64::try_from(duration(p, "dispatch.max_wait", v)?.as_millis()).unwrap_or(u64::MAX),
        ),
        None => DEFAULT_MAX_WAIT,
    };
    let timeout = match raw.hermes.timeout.as_deref() {
        Some(v) => duration(p, "hermes.timeout", v)?,
        None => DEFAULT_TIMEOUT,
    };
    if raw.profiles.is_empty() {
        return Err(usage(format!(
            "config {}: no [[profiles]]; declare at least one governed profile",
            p.display()
        )));
    }
    let mut profiles = Vec::new();
    for (i, rp) in raw.profiles.iter().enumerate() {
        let key = |k: &str| format!("profiles[{i}] ({}).{k}", rp.name);
        let per_token = match rp.kv_bytes_per_token.as_deref() {
            Some(v) => size(p, &key("kv_bytes_per_token"), v)?,
            None => {
                return Err(usage(format!(
                    "config {}: {} is missing; give the model's KV bytes per token",
                    p.display(),
                    key("kv_bytes_per_token")
                )));
            }
        };
        let ctx = rp.max_context_tokens.ok_or_else(|| {
            usage(format!(
                "config {}: {} is missing",
                p.display(),
                key("max_context_tokens")
            ))
        })?;
        let rpt = rp.requests_per_task.unwrap_or(1);
        let extra = match rp.extra_bytes.as_deref() {
            Some(v) => size(p, &key("extra_bytes"), v)?,
            None => Bytes(0),
        };
        let kv_tokens = ctx.saturating_mul(u64::from(rpt));
        profiles.push(ProfilePolicy {
            id: ProfileId(rp.name.clone()),
            lane: rp
                .lane
                .clone()
                .unwrap_or_else(|| format!("{}@gpu", rp.name)),
            pool: 0,
            declared: WorstCase {
                kv_bytes: Bytes(per_token.get().saturating_mul(kv_tokens)),
                extra_bytes: extra,
                kv_tokens,
                slots: rpt,
                request_tokens: ctx,
            },
            max_parallel: rp.max_parallel,
            guaranteed: rp.guaranteed.unwrap_or(0),
            footprint: FootprintMode::Declared,
        });
    }
    Ok(Setup {
        policy: Policy {
            pools: vec![PoolPolicy {
                name: "default".into(),
                kv_placement: KvPlacement::GpuBytes,
                headroom,
                reserve,
                kv_capacity_tokens: None,
                slots: None,
                slot_context_tokens: None,
                max_staleness: Millis::secs(5),
            }],
            profiles,
            max_running: raw.dispatch.max_running,
            max_wait,
        },
        hermes: HermesSettings {
            bin,
            home,
            board: raw.hermes.board.unwrap_or_else(|| "default".into()),
            max_semantics: raw.hermes.max_semantics,
            timeout,
        },
        memory_total,
        baseline,
        state_dir,
    })
}

impl Setup {
    /// Where Hermes itself will find the board, resolved as Hermes does
    /// (`HERMES_KANBAN_DB` > `hermes.board` > `HERMES_KANBAN_BOARD` > `kanban/current` >
    /// `default`, with `hermes.home` as `HERMES_HOME`).
    ///
    /// # Errors
    ///
    /// No Hermes home, or a named board that does not exist (a usage error).
    pub fn hermes_env(&self) -> anyhow::Result<hermes_home::HermesEnv> {
        hermes_home::read_hermes_env(
            &hermes_home::process_env,
            Some(&self.hermes.home),
            Some(&self.hermes.board),
        )
        .map_err(|e| usage(e.to_string()))
    }

    /// The board's SQLite file.
    ///
    /// # Errors
    ///
    /// As [`Setup::hermes_env`].
    pub fn board_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.hermes_env()?.board.db)
    }

    /// The board adapter.
    ///
    /// # Errors
    ///
    /// As [`Setup::hermes_env`].
    pub fn board(&self) -> anyhow::Result<SqliteBoard> {
        Ok(SqliteBoard::new(self.board_path()?))
    }

    /// A gateway dispatcher live on this board's kanban root, as the reason to hold
    /// (`DualDispatcher`), read from `/proc/locks` and `gateway.pid` without taking any lock.
    /// When that cannot be read, the governor cannot tell, so it holds too (fail closed).
    pub fn dual_dispatcher(&self) -> Option<String> {
        let env = match self.hermes_env() {
            Ok(env) => env,
            Err(e) => {
                return Some(format!(
                    "cannot locate the Hermes home to look for a gateway dispatcher ({e})"
                ));
            }
        };
        match hermes_home::read_gateway_dispatcher(
            &hermes_home::process_env,
            &env.hermes_home,
            &env.root,
        ) {
            Ok(g) => g.active().map(|detail| {
                format!(
                    "{detail}; set kanban.dispatch_in_gateway: false in {} and restart the gateway, or govern a board no gateway dispatches",
                    g.config_path.display()
                )
            }),
            Err(e) => Some(format!(
                "cannot tell whether a gateway dispatches this board ({e}); holding"
            )),
        }
    }

    /// The dispatcher adapter.
    ///
    /// # Errors
    ///
    /// `hermes.bin` is relative or missing (a usage error).
    pub fn dispatcher(&self) -> anyhow::Result<CliDispatcher> {
        CliDispatcher::new(CliDispatcherConfig {
            bin: self.hermes.bin.clone(),
            home: Some(self.hermes.home.clone()),
            board: Some(self.hermes.board.clone()),
            max_semantics: self.hermes.max_semantics,
            timeout: self.hermes.timeout,
            env: Vec::new(),
        })
        .map_err(|e| usage(e.to_string()))
    }

    /// The static GPU source.
    pub fn static_gpu(&self) -> StaticGpu {
        StaticGpu {
            total: self.memory_total,
            used: self.baseline.unwrap_or(Bytes(0)),
        }
    }
}

/// `telemetry = "static"`: a GPU of `memory_total` whose use stays at the baseline (the
/// governor then charges worst cases on top of it).
#[derive(Debug, Clone, Copy)]
pub struct StaticGpu {
    /// Total memory.
    pub total: Bytes,
    /// Used memory.
    pub used: Bytes,
}

impl GpuTelemetry for StaticGpu {
    fn read_gpu(&mut self, now: Millis) -> Result<GpuSample, PortError> {
        Ok(GpuSample {
            at: now,
            total: self.total,
            used: self.used,
            free: self.total.saturating_sub(self.used),
        })
    }
}

/// A port error as an `anyhow` error: usage errors (bad `hermes.bin`, missing board,
/// unknown Hermes version) become [`UsageError`] so `main` exits 2.
pub fn port_error(e: PortError) -> anyhow::Error {
    let is_usage = e
        .downcast_ref::<BoardError>()
        .is_some_and(BoardError::is_usage)
        || e.downcast_ref::<DispatchError>()
            .is_some_and(DispatchError::is_usage);
    if is_usage {
        usage(e.to_string())
    } else {
        anyhow::Error::from_boxed(e)
    }
}
