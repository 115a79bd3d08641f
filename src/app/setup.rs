//! What `tick`, `status` and `run` need from the validated config ([`crate::config`]): the
//! decision's policy, the Hermes settings, and the adapters built from them (board,
//! dispatcher, each pool's telemetry).
//!
//! Side effects: [`load`] reads the config file (and a `profiles_dir`); [`Setup::telemetry`]
//! opens NVML or a replay file; nothing here writes.

use crate::adapters::board_sqlite::{BoardError, SqliteBoard};
use crate::adapters::dispatch_cli::{CliDispatcher, CliDispatcherConfig, DispatchError};
use crate::adapters::engine::EngineKind as HttpEngineKind;
use crate::adapters::hermes_home;
use crate::adapters::nvml::{GpuSelector as NvmlGpu, NvmlLibrary};
use crate::adapters::telemetry::{EngineSource, GpuSource, PoolTelemetry, build_pool};
use crate::app::tick::PoolSource;
use crate::config::{self, Config, ConfigArgs, EngineKind, GpuSelector, Telemetry};
use crate::error::UsageError;
use crate::governor::{Bytes, Policy};
use crate::ports::{MaxSemantics, PortError};
use std::path::PathBuf;
use std::time::Duration;

/// The Hermes side of the config.
#[derive(Debug, Clone)]
pub struct HermesSettings {
    /// Absolute path of `hermes`.
    pub bin: PathBuf,
    /// `HERMES_HOME` of the board.
    pub home: PathBuf,
    /// Board slug (`default` for `<home>/kanban.db`).
    pub board: String,
    /// What `--max` means, when configured (else detected from the Hermes version).
    pub max_semantics: Option<MaxSemantics>,
    /// Timeout per Hermes call (`dispatch.timeout`).
    pub timeout: Duration,
}

/// Everything `tick`, `status` and `run` need.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The validated config.
    pub config: Config,
    /// The decision's policy ([`Config::policy`]).
    pub policy: Policy,
    /// Hermes.
    pub hermes: HermesSettings,
    /// Where state and the lock live.
    pub state_dir: PathBuf,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// Load and validate the config (defaults < file < env < flags) for a command that acts on
/// the board.
///
/// # Errors
///
/// Every config problem (a [`config::ConfigError`], exit 2), or no `hermes.bin`.
pub fn load(args: &ConfigArgs) -> anyhow::Result<Setup> {
    let config = config::load(args, &config::process_env)?;
    from_config(config)
}

/// A [`Setup`] from an already validated config.
///
/// # Errors
///
/// No `hermes.bin` (a [`config::ConfigError`] naming the key and the fix).
pub fn from_config(config: Config) -> anyhow::Result<Setup> {
    let bin = config.hermes_bin()?.to_path_buf();
    let max_semantics = match config.hermes.max_semantics.as_deref() {
        Some("live_cap") => Some(MaxSemantics::LiveCap),
        Some("per_tick") => Some(MaxSemantics::PerTick),
        // Validation admits only those two spellings.
        _ => None,
    };
    Ok(Setup {
        policy: config.policy(),
        hermes: HermesSettings {
            bin,
            home: config.hermes.home.clone(),
            board: config.hermes.board.clone(),
            max_semantics,
            timeout: config.dispatch.timeout,
        },
        state_dir: config.dispatch.state_dir.clone(),
        config,
    })
}

/// The telemetry adapter's engine kind for a configured one.
pub fn http_engine_kind(kind: EngineKind) -> HttpEngineKind {
    match kind {
        EngineKind::Vllm => HttpEngineKind::Vllm,
        EngineKind::Sglang => HttpEngineKind::Sglang,
        EngineKind::Llamacpp => HttpEngineKind::Llamacpp,
        EngineKind::Ollama => HttpEngineKind::Ollama,
        EngineKind::Openai => HttpEngineKind::Openai,
    }
}

impl Setup {
    /// Each pool's telemetry sources, in [`Policy::pools`] order. `probe` sends a latency
    /// probe on each engine read where the engine has no TTFT histogram (the daemon's latency
    /// limit needs it; a one-shot `tick` does not).
    ///
    /// # Errors
    ///
    /// A usage error naming the pool and the fix: NVML cannot be loaded or the GPU does not
    /// exist, a replay file is missing or bad, a static pool without `memory_total`.
    pub fn telemetry(&self, probe: bool) -> anyhow::Result<Vec<PoolTelemetry>> {
        self.config
            .pools
            .iter()
            .map(|pool| {
                let gpu = match &pool.gpu.telemetry {
                    Telemetry::Nvml => GpuSource::Nvml {
                        library: NvmlLibrary::from_env(),
                        gpus: pool
                            .gpu
                            .devices
                            .iter()
                            .map(|d| match d {
                                GpuSelector::Index(i) => NvmlGpu::Index(*i),
                                GpuSelector::Uuid(u) => NvmlGpu::Uuid(u.clone()),
                            })
                            .collect(),
                    },
                    Telemetry::Host => GpuSource::Host,
                    Telemetry::Static => GpuSource::Static {
                        memory_total: pool.gpu.memory_total.ok_or_else(|| {
                            usage(format!(
                                "pool {}: telemetry = \"static\" needs gpu.memory_total; set it, e.g. memory_total = \"24GiB\"",
                                pool.name
                            ))
                        })?,
                        baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
                    },
                    Telemetry::Replay(path) => GpuSource::Replay(path.clone()),
                };
                let mut engine = EngineSource::new(http_engine_kind(pool.engine.kind), &pool.engine.url);
                if !probe {
                    engine.probe = None;
                }
                let mut t = build_pool(&pool.name, &gpu, Some(&engine))?;
                // A configured baseline beats the one observed with nothing governed running.
                if pool.gpu.baseline.is_some() {
                    t.baseline = pool.gpu.baseline;
                }
                Ok(t)
            })
            .collect()
    }

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

    /// The board adapter for commands that must create no file (`status`, `tick --dry-run`):
    /// see [`SqliteBoard::leaving_no_files`].
    ///
    /// # Errors
    ///
    /// As [`Setup::hermes_env`].
    pub fn quiet_board(&self) -> anyhow::Result<SqliteBoard> {
        Ok(SqliteBoard::leaving_no_files(self.board_path()?))
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
}

/// The tick's view of built telemetry: one [`PoolSource`] per pool, borrowing `pools`.
pub fn pool_sources(pools: &mut [PoolTelemetry]) -> Vec<PoolSource<'_>> {
    pools
        .iter_mut()
        .map(|p| PoolSource {
            gpu: p.gpu.as_mut(),
            engine: p
                .engine
                .as_deref_mut()
                .map(|e| e as &mut dyn crate::ports::EngineTelemetry),
            baseline: p.baseline,
        })
        .collect()
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
