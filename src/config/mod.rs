//! Configuration: the TOML file, the environment and the flags, turned into a validated
//! [`Config`] in two stages (as ripgrep's low and high args).
//!
//! - Stage 1 (`raw`): serde structs mirroring the file, every field optional, unknown keys
//!   rejected. Only what was typed; no meaning, no I/O.
//! - Stage 2 (`validate`): defaults < file < env < flags merged into [`Config`], units as
//!   types ([`Bytes`], [`Duration`]), catalog lookups, cross checks (duplicate profiles and
//!   lanes, missing pools, a profile that can never fit). Every problem is collected, each
//!   naming the file and line (or env var, or flag), the key, what was found and what would
//!   work; [`ConfigError`] carries all of them.
//!
//! File reading happens at the edge only: [`load`] resolves the path, reads the file, the
//! `profiles_dir` files and the Hermes profile directories (for the lane checks), then hands
//! text and names to the pure stages. [`load_str`] runs the same stages on a string, for tests
//! and for the embedded default ([`embedded_default`]). Nothing here reads the process
//! environment: callers pass a lookup (`&config::process_env` in `app/`).
//!
//! # Use
//!
//! ```no_run
//! use kanban_governor::config::{self, ConfigArgs};
//! # fn main() -> Result<(), config::ConfigError> {
//! let args = ConfigArgs::default(); // a command's `#[command(flatten)] config: ConfigArgs`
//! let cfg = config::load(&args, &config::process_env)?; // ConfigError → exit 2
//! let policy = cfg.policy(); // for governor::decide
//! let _bin = cfg.hermes_bin()?; // absolute path, or a ConfigError naming the fix
//! # let _ = policy; Ok(()) }
//! ```
//!
//! # Environment overrides
//!
//! `KANBAN_GOVERNOR_CONFIG` (config path), `KANBAN_GOVERNOR_HERMES_BIN` (`hermes.bin`),
//! `HERMES_HOME` (`hermes.home`), `KANBAN_GOVERNOR_BOARD` (`hermes.board`),
//! `KANBAN_GOVERNOR_HEADROOM` (`headroom` of every pool), `KANBAN_GOVERNOR_STATE_DIR`
//! (`dispatch.state_dir`). The matching flags in [`ConfigArgs`] beat them.

mod keys;
pub(crate) mod raw;
pub(crate) mod render;
#[cfg(test)]
mod tests;
pub mod units;
mod validate;

pub use crate::catalog::KvDtype;
pub use keys::reference_markdown;
pub use units::{format_duration, format_size, parse_duration_str, parse_size_str};
pub use validate::proxy_listen_allowed;

use crate::governor::{
    Bytes, FootprintMode, Headroom, KvPlacement, Millis, Policy, PoolPolicy, ProfileId,
    ProfilePolicy, WorstCase,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// vLLM's default `--gpu-memory-utilization` (ENGINES.md §2.1): what `plan` and `simulate`
/// assume an engine pool fills when nothing sizes it.
pub const VLLM_DEFAULT_UTILIZATION: f64 = 0.9;
/// Default `headroom`: the fraction of capacity the governor may fill. 0.85 follows the
/// article's `--gpu-memory-utilization 0.85` (DESIGN §3).
pub const DEFAULT_HEADROOM: Headroom = Headroom::from_ppm(850_000);
/// Default `reserve`: bytes always kept free for the driver and other tenants.
// 1 GiB covers the CUDA context and NCCL buffers of a typical inference process (DESIGN §3).
pub const DEFAULT_RESERVE: Bytes = Bytes::gib(1);
/// Default `engine.max_staleness`: engine or GPU samples older than this make the pool hold.
// One missed scrape at the default 5s interval still counts as fresh.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
/// Default `latency.ttft_slo`: the time-to-first-token target (DESIGN §3).
pub const DEFAULT_TTFT_SLO: Duration = Duration::from_secs(2);
/// Default `latency.min_limit`: the AIMD limit never drops below one running task.
pub const DEFAULT_MIN_LIMIT: u32 = 1;
/// Default `latency.max_limit`: the AIMD limit's ceiling (memory usually binds first).
pub const DEFAULT_MAX_LIMIT: u32 = 64;
/// Default `latency.backoff`: the multiplicative decrease on a latency miss.
// 0.9 is Netflix concurrency-limits' AIMDLimit default backoff ratio.
pub const DEFAULT_BACKOFF: f64 = 0.9;
/// Default `latency.dwell`: how long the limit holds after a change before moving again.
pub const DEFAULT_DWELL: Duration = Duration::from_secs(30);
/// Default `dispatch.interval`: time between ticks (DESIGN §3).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default `dispatch.max_wait`: a task held longer gets room reserved (DESIGN §3).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);
/// Default `dispatch.timeout`: the limit on one Hermes CLI call.
// `hermes kanban dispatch` takes a few seconds on a loaded 2-core host (HERMES.md §6.3).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `proxy.max_body`: the largest request body the pass-through forwards.
// A 128k-token prompt is about 0.5 MiB of JSON; images sent inline as base64 make it larger.
// 32 MiB admits a dozen large images and still bounds what one connection can make us hold.
pub const DEFAULT_PROXY_MAX_BODY: Bytes = Bytes::mib(32);
/// Default `proxy.drain`: how long a stopping daemon lets streams in flight finish.
// Long enough for most agent calls to end their answer; short enough for a service manager's
// stop timeout (systemd's default is 90 s).
pub const DEFAULT_PROXY_DRAIN: Duration = Duration::from_secs(30);
/// Default `hermes.board`.
pub const DEFAULT_BOARD: &str = "default";
/// The pool named by the `[gpu]`/`[engine]` shorthand, and a profile's default `pool`.
pub const DEFAULT_POOL: &str = "default";
/// The config file's name under `$HERMES_HOME` or `~/.hermes`.
pub const CONFIG_FILE_NAME: &str = "governor.toml";
/// The largest config file, or `profiles_dir` file, that is read: 4 MiB. A larger one is
/// refused before it is parsed.
// A profile is about 200 bytes of TOML and the embedded default with its comments 4 KiB, so
// MAX_PROFILES profiles with generous comments stay far below; 4 MiB parses in well under a
// second, where an unbounded read of a wrong path (a log, /dev/zero) would not end.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// The most profiles one config may govern (inline and `profiles_dir` together).
// One per Hermes profile that needs a GPU: real hosts have a handful. Every tick and every
// `/status` walks them all, so the bound keeps a generated config from slowing each tick.
pub const MAX_PROFILES: usize = 1024;

/// Env var: the config file path.
pub const ENV_CONFIG: &str = "KANBAN_GOVERNOR_CONFIG";
/// Env var: `hermes.bin`.
pub const ENV_HERMES_BIN: &str = "KANBAN_GOVERNOR_HERMES_BIN";
/// Env var: `hermes.home` (Hermes's own).
pub const ENV_HERMES_HOME: &str = "HERMES_HOME";
/// Env var: `hermes.board`.
pub const ENV_BOARD: &str = "KANBAN_GOVERNOR_BOARD";
/// Env var: `headroom` of every pool.
pub const ENV_HEADROOM: &str = "KANBAN_GOVERNOR_HEADROOM";
/// Env var: `dispatch.state_dir`.
pub const ENV_STATE_DIR: &str = "KANBAN_GOVERNOR_STATE_DIR";

/// The embedded default config (a typical host, for `plan` and `simulate` without a file).
pub const EMBEDDED_DEFAULT_TOML: &str = include_str!("default.toml");

/// The `--help` text on config precedence and environment overrides.
pub const CONFIG_HELP: &str = "\
Config: defaults < file < environment < flags. The file is --config, else $KANBAN_GOVERNOR_CONFIG,
else $HERMES_HOME/governor.toml, else ~/.hermes/governor.toml (a missing default file means
built-in defaults). Environment overrides:
  KANBAN_GOVERNOR_CONFIG       config file
  KANBAN_GOVERNOR_HERMES_BIN   hermes.bin (absolute path of hermes)
  HERMES_HOME                  hermes.home
  KANBAN_GOVERNOR_BOARD        hermes.board
  KANBAN_GOVERNOR_HEADROOM     headroom of every pool, in (0, 1]
  KANBAN_GOVERNOR_STATE_DIR    dispatch.state_dir
Sizes are binary (\"24GiB\", \"512MiB\"), durations humantime (\"15s\", \"10m\").
Exit codes: 0 success, 1 runtime failure, 2 usage or config error.";

/// Config flags shared by every command that reads the config (`#[command(flatten)]`).
/// Flags beat the environment, which beats the file, which beats the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = CONFIG_HELP)]
pub struct ConfigArgs {
    /// Config file [env: KANBAN_GOVERNOR_CONFIG] [default: $HERMES_HOME/governor.toml, else
    /// ~/.hermes/governor.toml; a missing default file means built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hermes home of the governed board (hermes.home) [env: HERMES_HOME].
    #[arg(long, value_name = "DIR")]
    pub hermes_home: Option<PathBuf>,
    /// Absolute path of the hermes binary (hermes.bin) [env: KANBAN_GOVERNOR_HERMES_BIN].
    #[arg(long, value_name = "PATH")]
    pub hermes_bin: Option<PathBuf>,
    /// Governed board slug (hermes.board) [env: KANBAN_GOVERNOR_BOARD].
    #[arg(long, value_name = "SLUG")]
    pub board: Option<String>,
    /// Headroom of every pool, a fraction in (0, 1] [env: KANBAN_GOVERNOR_HEADROOM].
    #[arg(long, value_name = "FRACTION")]
    pub headroom: Option<f64>,
    /// State directory (dispatch.state_dir) [env: KANBAN_GOVERNOR_STATE_DIR].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A built-in default.
    Default,
    /// A config file (or the embedded default, whose path is `<embedded default>`).
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// Its name, with dashes.
        flag: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File {
                path,
                line: Some(l),
            } => write!(f, "config {}:{l}", path.display()),
            Source::File { path, line: None } => write!(f, "config {}", path.display()),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// One config problem: where, which key, what was found and what would work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file and line, env var or flag.
    pub source: Source,
    /// The key, e.g. `gpu.headroom` or `profiles[coder].max_context_tokens`.
    pub key: String,
    /// What was found and the fix.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.detail)
    }
}

/// Every problem found in a config (never empty). `error::exit_code` maps it to exit 2.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, in file order (stage 1 first).
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn one(source: Source, key: impl Into<String>, detail: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                source,
                key: key.into(),
                detail: detail.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The validated, effective config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from (`None`: built-in defaults only).
    pub path: Option<PathBuf>,
    /// `[hermes]`.
    pub hermes: HermesConfig,
    /// Capacity pools (`[gpu]`+`[engine]` is the pool `default`); at least one.
    pub pools: Vec<PoolConfig>,
    /// `[latency]`.
    pub latency: LatencyConfig,
    /// `[dispatch]`.
    pub dispatch: DispatchConfig,
    /// `[http]`: the daemon's `/metrics` and `/status` endpoint.
    pub http: HttpConfig,
    /// `[proxy]`: the OpenAI-compatible pass-through of `run`.
    pub proxy: ProxyConfig,
    /// Governed profiles, inline ones first, then `profiles_dir` files by name.
    pub profiles: Vec<ProfileConfig>,
    /// Where each value that is not a default came from, by key (`gpu.headroom`, ...).
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
}

/// `[hermes]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HermesConfig {
    /// Absolute path of the `hermes` binary (`None`: not configured; `doctor` finds it).
    pub bin: Option<PathBuf>,
    /// `HERMES_HOME` of the governed board.
    pub home: PathBuf,
    /// Board slug (`default` or `^[a-z0-9][a-z0-9\-_]{0,63}$`).
    pub board: String,
    /// What `hermes kanban dispatch --max` means, when configured: `"live_cap"` or
    /// `"per_tick"` (the serde names of `ports::MaxSemantics`; `None`: detect from the Hermes
    /// version). A string until `ports::MaxSemantics` is on main.
    pub max_semantics: Option<MaxSemantics>,
}

/// One capacity pool: GPU(s) and the engine on them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Its GPU(s).
    pub gpu: GpuConfig,
    /// Its engine.
    pub engine: EngineConfig,
}

/// Which GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSelector {
    /// NVML index.
    Index(u32),
    /// NVML UUID (`GPU-…`, or `MIG-…`).
    Uuid(String),
}

/// Where GPU memory samples come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Telemetry {
    /// NVML (nvml-wrapper).
    Nvml,
    /// Host memory (`/proc/meminfo` `MemAvailable`, cgroup limit): CPU or unified memory.
    Host,
    /// Fixed numbers from the config (`memory_total`, `baseline`): no GPU needed.
    Static,
    /// Recorded samples from a JSONL file (absolute path).
    Replay(PathBuf),
}

/// `[gpu]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuConfig {
    /// The GPUs of this pool (several for a tensor-parallel engine); at least one.
    pub devices: Vec<GpuSelector>,
    /// Telemetry source.
    pub telemetry: Telemetry,
    /// Total memory (static telemetry only; required there).
    pub memory_total: Option<Bytes>,
    /// Memory held with no governed task (static telemetry only).
    pub baseline: Option<Bytes>,
    /// Fraction of capacity the governor may fill.
    pub headroom: Headroom,
    /// Bytes always kept free.
    pub reserve: Bytes,
}

/// The engine kind: the one enum for config, telemetry, `plan` and the simulator.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// vLLM (preallocated paged KV pool).
    Vllm,
    /// llama.cpp `llama-server` (preallocated KV, fixed slots).
    Llamacpp,
    /// Ollama (per-model runners; KV charged in GPU bytes).
    Ollama,
    /// SGLang (preallocated KV pool).
    Sglang,
    /// Any OpenAI-compatible server (nothing known; KV charged in GPU bytes).
    Openai,
}

impl EngineKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [EngineKind; 5] = [
        EngineKind::Vllm,
        EngineKind::Llamacpp,
        EngineKind::Ollama,
        EngineKind::Sglang,
        EngineKind::Openai,
    ];

    /// The config spelling (`vllm`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::Ollama => "ollama",
            EngineKind::Sglang => "sglang",
            EngineKind::Openai => "openai",
        }
    }

    /// The engine's usual local URL, when it has one.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            EngineKind::Vllm => Some("http://127.0.0.1:8000"),
            EngineKind::Llamacpp => Some("http://127.0.0.1:8080"),
            EngineKind::Ollama => Some("http://127.0.0.1:11434"),
            EngineKind::Sglang => Some("http://127.0.0.1:30000"),
            EngineKind::Openai => None,
        }
    }

    /// Whether the engine keeps only a window of KV for sliding-window layers (vLLM V1's
    /// hybrid allocator, SGLang, llama.cpp's SWA cache; ENGINES.md §3).
    pub fn honours_sliding_window(self) -> bool {
        matches!(
            self,
            EngineKind::Vllm | EngineKind::Sglang | EngineKind::Llamacpp
        )
    }

    /// Does the engine publish a TTFT histogram (so no latency probe is needed)?
    pub fn has_ttft_histogram(self) -> bool {
        matches!(self, EngineKind::Vllm | EngineKind::Sglang)
    }

    /// Where the engine keeps KV, i.e. which pool a task's KV is charged to.
    pub fn kv_placement(self) -> KvPlacement {
        match self {
            EngineKind::Vllm | EngineKind::Sglang | EngineKind::Llamacpp => KvPlacement::EnginePool,
            EngineKind::Ollama | EngineKind::Openai => KvPlacement::GpuBytes,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineConfig {
    /// Kind.
    pub kind: EngineKind,
    /// Base URL (`http://127.0.0.1:8000`), or [`NO_ENGINE_URL`] when the host has no engine
    /// endpoint to read (see [`EngineConfig::endpoint`]).
    pub url: String,
    /// The catalog model the engine serves, if told (for `plan`).
    pub model: Option<String>,
    /// KV pool capacity in tokens, overriding the engine's metrics.
    pub kv_capacity_tokens: Option<u64>,
    /// Slots, overriding the engine's metrics (llama.cpp `-np`, Ollama `NUM_PARALLEL`).
    pub slots: Option<u32>,
    /// Context tokens per slot (llama.cpp `n_ctx / np`).
    pub slot_context_tokens: Option<u64>,
    /// Engine and GPU samples older than this make the pool hold.
    #[serde(serialize_with = "ser_duration")]
    pub max_staleness: Duration,
}

/// What the number passed as `hermes kanban dispatch --max` means to the installed Hermes
/// (config `hermes.max_semantics`, else detected from its version): the one type for the
/// config, the dispatcher and `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxSemantics {
    /// A live cap on running tasks on the board (hermes-agent#23295, May 2026; 0.19.0).
    #[serde(alias = "live-cap")]
    LiveCap,
    /// A per-tick spawn budget (before #23295).
    #[serde(alias = "per-tick")]
    PerTick,
}

impl MaxSemantics {
    /// The `--max` value that lets exactly `allowed` more tasks start when `running` run now.
    pub fn max_arg(self, running: u32, allowed: u32) -> u32 {
        match self {
            MaxSemantics::LiveCap => running.saturating_add(allowed),
            MaxSemantics::PerTick => allowed,
        }
    }

    /// The config spelling (`live_cap`, `per_tick`).
    pub fn name(self) -> &'static str {
        match self {
            MaxSemantics::LiveCap => "live_cap",
            MaxSemantics::PerTick => "per_tick",
        }
    }
}

impl fmt::Display for MaxSemantics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MaxSemantics::LiveCap => "live cap on running tasks",
            MaxSemantics::PerTick => "per-tick spawn budget",
        })
    }
}

/// `engine.url = "none"`: this host has no engine endpoint the governor can read. Without
/// it every pool reads its engine, and an engine that cannot be read makes the pool hold.
pub const NO_ENGINE_URL: &str = "none";

impl EngineConfig {
    /// The URL to read the engine at, or `None` when the config says there is no endpoint
    /// (`url = "none"`): then the pool decides on GPU memory and configured capacities only.
    pub fn endpoint(&self) -> Option<&str> {
        (self.url != NO_ENGINE_URL && !self.url.is_empty()).then_some(self.url.as_str())
    }
}

/// Which latency signal feeds the AIMD limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencySignal {
    /// The engine's TTFT histogram.
    Engine,
    /// A probe request with `max_tokens = 1`.
    Probe,
    /// The time to first byte of the agents' own requests through the pass-through
    /// (`[proxy]`); no probe is sent.
    Proxy,
}

/// `[latency]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyConfig {
    /// Time-to-first-token target.
    #[serde(serialize_with = "ser_duration")]
    pub ttft_slo: Duration,
    /// Signal.
    pub signal: LatencySignal,
    /// AIMD lower bound (≥ 1).
    pub min_limit: u32,
    /// AIMD upper bound (≥ `min_limit`).
    pub max_limit: u32,
    /// Multiplicative decrease on a miss, in [0.5, 1).
    pub backoff: f64,
    /// Minimum time between limit changes.
    #[serde(serialize_with = "ser_duration")]
    pub dwell: Duration,
}

/// `[dispatch]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DispatchConfig {
    /// Time between ticks.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Global cap on running tasks on the board.
    pub max_running: Option<u32>,
    /// Starvation guard.
    #[serde(serialize_with = "ser_duration")]
    pub max_wait: Duration,
    /// The governor's state directory (absolute; default `<hermes home>/governor`).
    pub state_dir: PathBuf,
    /// Limit on one Hermes CLI call.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// Whether `run --listen` may use an address other than loopback, serving `/status` (board,
    /// profile and task names; no authentication) to the network. Default `false`.
    pub public: bool,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyConfig {
    /// Where `run` serves the pass-through (`None`: off, the default).
    pub listen: Option<std::net::SocketAddr>,
    /// Whether `listen` may be an address other than loopback. Default `false`.
    pub public: bool,
    /// The largest request body forwarded; a larger one gets `413`.
    pub max_body: Bytes,
    /// How long a stopping daemon lets requests in flight finish.
    #[serde(serialize_with = "ser_duration")]
    pub drain: Duration,
}

/// One governed profile, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileConfig {
    /// The Hermes profile that runs the work.
    pub name: ProfileId,
    /// The holding assignee (not a Hermes profile; default `<name>@gpu`).
    pub lane: String,
    /// Catalog model (exactly one of `model` and `kv_bytes_per_token` is set).
    pub model: Option<String>,
    /// KV bytes per token, given directly.
    pub kv_bytes_per_token: Option<u64>,
    /// KV element type (with `model`).
    pub kv_dtype: KvDtype,
    /// Longest context of one request.
    pub max_context_tokens: u64,
    /// LLM calls a task can have in flight at once.
    pub requests_per_task: u32,
    /// The profile's own cap on running tasks.
    pub max_parallel: Option<u32>,
    /// Tasks' worth of room kept for this profile.
    pub guaranteed: u32,
    /// GPU memory a task uses outside the engine.
    pub extra_bytes: Bytes,
    /// How the charged footprint is chosen.
    pub footprint: FootprintMode,
    /// The pool it runs in.
    pub pool: String,
    /// The declared worst case of one task, computed from the above and the pool's engine.
    pub declared: WorstCase,
    /// Where it was declared.
    #[serde(skip)]
    pub source: Source,
}

impl ProfileConfig {
    /// The catalog model, when the profile names one (`None` with `kv_bytes_per_token`).
    pub fn spec(&self) -> Option<&'static crate::catalog::ModelSpec> {
        // Validation looked the name up already; it stores the catalog's canonical name.
        self.model
            .as_deref()
            .and_then(|m| crate::catalog::lookup(m).ok())
    }
}

/// A profile's worst case on `engine`: each of `requests` requests holds the KV of
/// `max_context` tokens (the catalog `model`'s, windowed where the engine honours sliding
/// windows; else `kv_bytes_per_token` each), plus `extra` outside the engine
/// ([`crate::governor::WorstCase::of_requests`]). Config validation, `plan` and `simulate`
/// charge profiles by it.
pub fn worst_case_on(
    engine: EngineKind,
    model: Option<&crate::catalog::ModelSpec>,
    kv_bytes_per_token: u64,
    kv_dtype: KvDtype,
    max_context: u64,
    requests: u32,
    extra: Bytes,
) -> crate::governor::WorstCase {
    let (per_request, per_token) = match model {
        Some(m) => {
            let kv = m.kv_bytes_for_context(max_context, kv_dtype, engine.honours_sliding_window());
            (kv, kv.checked_div(max_context).unwrap_or(0))
        }
        None => (
            kv_bytes_per_token.saturating_mul(max_context),
            kv_bytes_per_token,
        ),
    };
    crate::governor::WorstCase::of_requests(
        Bytes(per_request),
        per_token,
        max_context,
        requests,
        extra,
    )
}

impl EngineConfig {
    /// The catalog model the engine serves, when configured.
    pub fn spec(&self) -> Option<&'static crate::catalog::ModelSpec> {
        self.model
            .as_deref()
            .and_then(|m| crate::catalog::lookup(m).ok())
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn millis(d: Duration) -> Millis {
    Millis::from_duration(d)
}

impl PoolConfig {
    /// The decision's view of this pool: placement, headroom and configured capacities.
    pub fn policy(&self) -> PoolPolicy {
        PoolPolicy {
            name: self.name.clone(),
            kv_placement: self.engine.kind.kv_placement(),
            headroom: self.gpu.headroom,
            reserve: self.gpu.reserve,
            kv_capacity_tokens: self.engine.kv_capacity_tokens,
            slots: self.engine.slots,
            slot_context_tokens: self.engine.slot_context_tokens,
            max_staleness: millis(self.engine.max_staleness),
            needs_engine: Config::policy_pool_needs_engine(self),
        }
    }
}

impl Config {
    /// Whether the decision needs a fresh engine reading for pool `p` (it has an endpoint).
    pub fn policy_pool_needs_engine(p: &PoolConfig) -> bool {
        p.engine.endpoint().is_some()
    }

    /// The decision policy (DESIGN §4): per pool its placement, headroom and capacities; per
    /// profile its declared worst case.
    pub fn policy(&self) -> Policy {
        let pools = self.pools.iter().map(PoolConfig::policy).collect();
        let profiles = self
            .profiles
            .iter()
            .map(|p| ProfilePolicy {
                id: p.name.clone(),
                lane: p.lane.clone(),
                // Validation guarantees the pool exists; 0 is never reached for a Config
                // built by this module.
                pool: self.pool_index(&p.pool).unwrap_or(0),
                declared: p.declared,
                max_parallel: p.max_parallel,
                guaranteed: p.guaranteed,
                footprint: p.footprint,
            })
            .collect();
        Policy {
            pools,
            profiles,
            max_running: self.dispatch.max_running,
            max_wait: millis(self.dispatch.max_wait),
        }
    }

    /// The index of the pool named `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| p.name.as_str() == name)
    }

    /// The profile whose lane is `lane`.
    pub fn profile_by_lane(&self, lane: &str) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| p.lane == lane)
    }

    /// The configured `hermes` binary.
    ///
    /// # Errors
    ///
    /// When `hermes.bin` is not set: a [`ConfigError`] naming the key, the env var and flag,
    /// and `doctor`, which finds it.
    pub fn hermes_bin(&self) -> Result<&Path, ConfigError> {
        self.hermes.bin.as_deref().ok_or_else(|| {
            ConfigError::one(
                Source::Default,
                "hermes.bin",
                format!(
                    "not set; set it to the absolute path of hermes (`kanban-governor doctor` prints it), or pass --hermes-bin or {ENV_HERMES_BIN}"
                ),
            )
        })
    }

    /// The effective config as TOML that [`load_str`] reads back to the same config.
    pub fn to_toml(&self) -> String {
        render::to_toml(self, false)
    }

    /// The effective config as TOML with a `# <source>` comment on every value (what
    /// `check-config` prints).
    pub fn to_toml_annotated(&self) -> String {
        render::to_toml(self, true)
    }
}

/// The process environment, for [`load`]'s `env` argument.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The config file to read, and whether it was named explicitly (`--config` or
/// `KANBAN_GOVERNOR_CONFIG`: then a missing file is an error).
pub fn config_path(
    args: &ConfigArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(PathBuf, Source)> {
    if let Some(p) = &args.config {
        return Some((
            p.clone(),
            Source::Flag {
                flag: "--config".into(),
            },
        ));
    }
    if let Some(p) = env(ENV_CONFIG).filter(|s| !s.is_empty()) {
        return Some((
            PathBuf::from(p),
            Source::Env {
                var: ENV_CONFIG.into(),
            },
        ));
    }
    let home = args
        .hermes_home
        .clone()
        .or_else(|| {
            env(ENV_HERMES_HOME)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| user_home(env).map(|h| h.join(".hermes")))?;
    Some((home.join(CONFIG_FILE_NAME), Source::Default))
}

fn user_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME").filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// What stage 2 needs from the filesystem, so it can be fed from memory in tests.
pub(crate) trait Files {
    /// The `*.toml` files of `dir`, sorted by name, with their text.
    fn read_profiles_dir(&self, dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>>;
    /// The names of the Hermes profiles under `home` (`<home>/profiles/<name>/`).
    fn hermes_profiles(&self, home: &Path) -> BTreeSet<String>;
}

struct RealFiles;

impl Files for RealFiles {
    fn read_profiles_dir(&self, dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        // One more than the limit is enough for stage 2 to refuse the count.
        paths.truncate(MAX_PROFILES + 1);
        paths
            .into_iter()
            .map(|p| read_capped(&p).map(|t| (p, t)))
            .collect()
    }

    fn hermes_profiles(&self, home: &Path) -> BTreeSet<String> {
        std::fs::read_dir(home.join("profiles"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// No filesystem: no `profiles_dir` files and no Hermes profiles besides `default`.
struct NoFiles;

impl Files for NoFiles {
    fn read_profiles_dir(&self, dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "{} is not read for a config given as a string",
                dir.display()
            ),
        ))
    }

    fn hermes_profiles(&self, _home: &Path) -> BTreeSet<String> {
        BTreeSet::new()
    }
}

/// Load the effective config: defaults < file < env < flags.
///
/// The file is `--config`, else `$KANBAN_GOVERNOR_CONFIG`, else `$HERMES_HOME/governor.toml`,
/// else `~/.hermes/governor.toml`. `env` looks up environment variables (pass
/// [`process_env`]); nothing else of the environment is read. Flag paths are made absolute
/// against the current directory.
///
/// # Errors
///
/// Every problem found (see [`ConfigError`]): an explicitly named file that is missing or
/// unreadable, invalid TOML, unknown keys, bad values, inconsistencies. A missing default
/// file is not an error: the defaults apply (logged at info).
pub fn load(
    args: &ConfigArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let args = absolutize_flags(args);
    let file = match config_path(&args, env) {
        None => {
            tracing::info!("No config path (no HOME, HERMES_HOME or --config); using defaults.");
            None
        }
        Some((path, how)) => {
            let path = absolute(&path);
            match read_capped(&path) {
                Ok(text) => Some(raw::FileText::new(path, text)),
                Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                    return Err(ConfigError::one(how, "config", e.to_string()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && how == Source::Default => {
                    tracing::info!(path = %path.display(), "No config file; using defaults.");
                    None
                }
                Err(e) => {
                    let fix = if e.kind() == std::io::ErrorKind::NotFound {
                        "not found; fix the path, or create it (`kanban-governor check-config` with no --config shows the defaults)"
                    } else {
                        "unreadable; check its permissions"
                    };
                    return Err(ConfigError::one(
                        how,
                        "config",
                        format!("{}: {e}: {fix}", path.display()),
                    ));
                }
            }
        }
    };
    validate::load_from(file, &args, env, &RealFiles)
}

/// Read `path` as UTF-8 text of at most [`MAX_CONFIG_BYTES`]. The read itself is bounded, so
/// a FIFO or a device (which report no size) cannot make it run on.
///
/// # Errors
///
/// The file cannot be read, is not UTF-8, or is larger ([`std::io::ErrorKind::FileTooLarge`],
/// whose message names the file, the limit and the fix).
pub(crate) fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "{} is larger than {} MiB, the limit for a config or profile file; a config is a few KiB, so check that the path names the right file",
                path.display(),
                MAX_CONFIG_BYTES / (1024 * 1024)
            ),
        ));
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The profiles of one profile file's `text` (`profiles/*.toml`: one `[[profiles]]` table or
/// more, or the keys alone), through both stages as a config's `profiles_dir` files are: each
/// checked against and charged on `pool` (a profile's `pool` key, if given, must name it).
/// `name` labels the file in problems.
///
/// # Errors
///
/// Every problem in the file (exit 2).
pub fn load_profile_file(
    name: &str,
    text: &str,
    pool: &PoolConfig,
) -> Result<Vec<ProfileConfig>, ConfigError> {
    validate::profiles_from_file(
        &raw::FileText::new(PathBuf::from(name), text.to_owned()),
        pool,
    )
}

/// A pool given as flags (`plan --gpu-memory … --headroom …`) and the profile they describe,
/// if any: raw tables whose values are spanned at their flags in `flags`, read with a
/// config's rules and messages (the profile charged on the pool). Whether a task of the
/// profile can ever fit is not asked: `plan` reports that.
///
/// # Errors
///
/// Every problem, each with [`Source::Flag`] naming the flag that gave the value (exit 2).
pub(crate) fn load_flags(
    flags: raw::FlagLines,
    gpu: &raw::RawGpu,
    engine: &raw::RawEngine,
    profile: Option<toml::Spanned<raw::RawProfile>>,
) -> Result<(PoolConfig, Option<ProfileConfig>), ConfigError> {
    validate::pool_from_flags(&flags.into_file(), gpu, engine, profile)
}

/// Load a config from a string, as if read from the file `origin` (relative paths in it
/// resolve against `origin`'s directory). `profiles_dir` is not read (a problem if set) and no
/// Hermes profile directories are looked at. Otherwise as [`load`].
///
/// # Errors
///
/// As [`load`].
pub fn load_str(
    toml: &str,
    origin: &Path,
    args: &ConfigArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = raw::FileText::new(origin.to_path_buf(), toml.to_owned());
    validate::load_from(Some(file), args, env, &NoFiles)
}

/// Check a config built in code as a written one is checked: written back as TOML
/// ([`render`], whose output reads back to the same config) and validated as if read from
/// `origin`, so a built config passes exactly the checks a file does (the cross-key ones too:
/// a baseline below memory_total, guarantees that fit together).
///
/// # Errors
///
/// Every problem validation finds, as [`load_str`].
pub fn validated(cfg: &Config, origin: &Path) -> Result<Config, ConfigError> {
    let env = |_: &str| None;
    load_str(
        &render::to_toml(cfg, false),
        origin,
        &ConfigArgs::default(),
        &env,
    )
}

/// The embedded default config: one 80GiB GPU under vLLM serving Llama-3.1-8B with static
/// telemetry, and three profiles that compete for its KV pool. `plan` and `simulate` use it
/// when no config is given. Its `hermes.home` is `/nonexistent/hermes`: it describes a host,
/// not a board.
pub fn embedded_default() -> Config {
    let env = |_: &str| None;
    match load_str(
        EMBEDDED_DEFAULT_TOML,
        Path::new("/<embedded default>/governor.toml"),
        &ConfigArgs::default(),
        &env,
    ) {
        Ok(c) => c,
        // A unit test loads this same string; a failure is a bug caught before release.
        Err(e) => panic!("the embedded default config is invalid: {e}"),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

fn absolutize_flags(args: &ConfigArgs) -> ConfigArgs {
    ConfigArgs {
        config: args.config.as_deref().map(absolute),
        hermes_home: args.hermes_home.as_deref().map(absolute),
        hermes_bin: args.hermes_bin.clone(),
        board: args.board.clone(),
        headroom: args.headroom,
        state_dir: args.state_dir.as_deref().map(absolute),
    }
}
