//! What `tick`, `status` and `run` need from the validated config ([`crate::config`]): the
//! decision's policy, the Hermes settings, and the adapters built from them (board,
//! dispatcher, each pool's telemetry).
//!
//! Side effects: [`load`] reads the config file (and a `profiles_dir`); [`Setup::telemetry`]
//! opens NVML or a replay file; nothing here writes.

use crate::adapters::board_sqlite::{BoardError, SqliteBoard};
use crate::adapters::dispatch_cli::{CliDispatcher, CliDispatcherConfig, DispatchError};
use crate::adapters::hermes_home;
use crate::adapters::nvml::{GpuSelector as NvmlGpu, NvmlLibrary};
use crate::adapters::telemetry::{EngineSource, GpuSource, PoolTelemetry, build_pool};
use crate::adapters::worker_probe::LocalWorkerProbe;
use crate::app::tick::{PoolSource, TickPorts};
use crate::config::{self, Config, ConfigArgs, GpuSelector, PoolConfig, Telemetry};
use crate::error::UsageError;
use crate::governor::{Bytes, Policy};
use crate::ports::{MaxSemantics, PortError, SystemClock};
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
    load_checked(args, true)
}

/// As [`load`], then every check on this host that the command would otherwise fail on part
/// way ([`host_problems`]), all reported at once, before anything is created. `writes` is
/// whether the command writes the state (`tick`, `run`; not `status` or a dry run).
///
/// # Errors
///
/// Every config and host problem (a [`config::ConfigError`], exit 2).
pub fn load_checked(args: &ConfigArgs, writes: bool) -> anyhow::Result<Setup> {
    let config = config::load(args, &config::process_env)?;
    let problems = host_problems(&config, writes);
    if !problems.is_empty() {
        return Err(config::ConfigError { problems }.into());
    }
    from_config(config)
}

/// The checks of `config` against this host that `tick`, `run` and `status` need to pass:
/// `hermes.bin` set and runnable, `hermes.home` and the board present, each pool's telemetry
/// source loadable (NVML and its GPUs, a replay file, the engine URL), and (when `writes`)
/// `dispatch.state_dir` a directory this user can write, or creatable. They use the same
/// constructors the commands use, so they cannot drift from them. Reads only; creates nothing.
pub fn host_problems(config: &Config, writes: bool) -> Vec<config::Problem> {
    let mut out = Vec::new();
    let mut push = |key: &str, detail: String| {
        out.push(config::Problem {
            source: config
                .sources
                .get(key)
                .cloned()
                .unwrap_or(config::Source::Default),
            key: key.to_owned(),
            detail,
        });
    };
    match from_config(config.clone()) {
        Ok(setup) => {
            if let Err(e) = setup.dispatcher() {
                push("hermes.bin", e.to_string());
            }
        }
        Err(e) => push("hermes.bin", root_message(&e)),
    }
    if !config.hermes.home.is_dir() {
        push(
            "hermes.home",
            format!(
                "no board at {}: {} is not a directory; set hermes.home to the HERMES_HOME of the governed board, or create one with `HERMES_HOME={} {} kanban init`",
                config.hermes.home.join("kanban.db").display(),
                config.hermes.home.display(),
                config.hermes.home.display(),
                config
                    .hermes
                    .bin
                    .as_deref()
                    .map_or("hermes".into(), |b| b.display().to_string())
            ),
        );
    } else {
        board_problems(config, &mut push);
    }
    for pool in &config.pools {
        let prefix = if config.pools.len() == 1 && pool.name == config::DEFAULT_POOL {
            String::new()
        } else {
            format!("pools.{}.", pool.name)
        };
        let built = gpu_source(pool, &prefix).and_then(|gpu| {
            build_pool(&pool.name, &gpu, engine_source(pool, false).as_ref()).map(|_| ())
        });
        if let Err(e) = built {
            push(&format!("{prefix}gpu.telemetry"), e.0);
        }
    }
    if writes && let Some(why) = state_dir_problem(&config.dispatch.state_dir) {
        push("dispatch.state_dir", why);
    }
    out
}

/// The board named by `hermes.home` and `hermes.board` exists (as Hermes resolves it).
fn board_problems(config: &Config, push: &mut dyn FnMut(&str, String)) {
    match hermes_home::read_hermes_env(
        &hermes_home::process_env,
        Some(&config.hermes.home),
        Some(&config.hermes.board),
    ) {
        Ok(env) => {
            if !env.board.db.is_file() {
                push(
                    "hermes.board",
                    format!(
                        "board {} does not exist; create it with `{} kanban init` (or `kanban boards create <slug>`), or fix hermes.home / hermes.board",
                        env.board.db.display(),
                        config
                            .hermes
                            .bin
                            .as_deref()
                            .map_or("hermes".into(), |b| b.display().to_string())
                    ),
                );
            }
        }
        Err(e) => push("hermes.home", e.to_string()),
    }
}

fn root_message(e: &anyhow::Error) -> String {
    match e.downcast_ref::<config::ConfigError>() {
        Some(c) => c
            .problems
            .iter()
            .map(|p| p.detail.clone())
            .collect::<Vec<_>>()
            .join("; "),
        None => e.to_string(),
    }
}

/// Why the governor could not keep its state in `dir`, if so: it is not a directory, or this
/// user cannot write it (or, while it does not exist, the directory it would be created in).
fn state_dir_problem(dir: &std::path::Path) -> Option<String> {
    use rustix::fs::{Access, access};
    let fix = "make it a directory this user can write, or set dispatch.state_dir elsewhere";
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory; {fix}", dir.display())),
        Ok(_) => access(dir, Access::WRITE_OK | Access::EXEC_OK)
            .err()
            .map(|e| {
                format!(
                    "{} is not writable by this user ({e}); {fix}",
                    dir.display()
                )
            }),
        Err(_) => {
            let parent = dir.ancestors().skip(1).find(|a| a.exists())?;
            if !parent.is_dir() {
                return Some(format!(
                    "{} cannot be created: {} is not a directory; {fix}",
                    dir.display(),
                    parent.display()
                ));
            }
            access(parent, Access::WRITE_OK | Access::EXEC_OK)
                .err()
                .map(|e| {
                    format!(
                        "{} cannot be created: {} is not writable by this user ({e}); {fix}",
                        dir.display(),
                        parent.display()
                    )
                })
        }
    }
}

/// A [`Setup`] from an already validated config.
///
/// # Errors
///
/// No `hermes.bin` (a [`config::ConfigError`] naming the key and the fix).
pub fn from_config(config: Config) -> anyhow::Result<Setup> {
    let bin = config.hermes_bin()?.to_path_buf();
    let max_semantics = config.hermes.max_semantics;
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

/// Where pool `pool`'s GPU memory comes from. `prefix` is how the config names the pool's
/// keys in messages (`""` or `pools.<name>.`).
///
/// # Errors
///
/// A static pool without `memory_total` (a usage error naming the key and the fix).
pub fn gpu_source(pool: &PoolConfig, prefix: &str) -> Result<GpuSource, UsageError> {
    Ok(match &pool.gpu.telemetry {
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
                UsageError(format!(
                    "pool {}: telemetry = \"static\" needs {prefix}gpu.memory_total; set it, e.g. memory_total = \"24GiB\"",
                    pool.name
                ))
            })?,
            baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
        },
        Telemetry::Replay(path) => GpuSource::Replay(path.clone()),
    })
}

/// The one rule for which engine a pool reads, for `tick`, `status` and `run` alike: the
/// engine at `engine.url` (the kind's usual port when unset), unless the config says the host
/// has none (`engine.url = "none"`). A replay that recorded the engine replays it instead
/// ([`build_pool`]). `probe` sends a latency probe on each read where the engine has no TTFT
/// histogram (the daemon's latency limit needs it; a one-shot `tick` does not).
pub fn engine_source(pool: &PoolConfig, probe: bool) -> Option<EngineSource> {
    let url = pool.engine.endpoint()?;
    let mut engine = EngineSource::new(pool.engine.kind, url);
    if !probe {
        engine.probe = None;
    }
    Some(engine)
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
                let gpu = gpu_source(pool, "")?;
                let engine = engine_source(pool, probe);
                let mut t = build_pool(&pool.name, &gpu, engine.as_ref())?;
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

    /// The adapters of one tick on `board` (built by [`Setup::board`] or
    /// [`Setup::quiet_board`]): Hermes's CLI, each pool's telemetry without a latency probe,
    /// and the worker probe of this host.
    ///
    /// # Errors
    ///
    /// As [`Setup::dispatcher`] and [`Setup::telemetry`].
    pub fn tick_adapters(&self, board: SqliteBoard) -> anyhow::Result<TickAdapters> {
        Ok(TickAdapters {
            board,
            dispatcher: self.dispatcher()?,
            telemetry: self.telemetry(false)?,
            workers: LocalWorkerProbe::for_this_host(),
        })
    }
}

/// The real adapters one tick runs on (`tick`, `status`), owned here so that
/// [`TickAdapters::ports`] can lend them to the tick.
#[derive(Debug)]
pub struct TickAdapters {
    /// The board.
    pub board: SqliteBoard,
    /// Hermes's CLI.
    pub dispatcher: CliDispatcher,
    /// Each pool's telemetry, in [`Policy::pools`] order.
    pub telemetry: Vec<PoolTelemetry>,
    /// Worker liveness on this host, when it can be told.
    pub workers: Option<LocalWorkerProbe>,
}

impl TickAdapters {
    /// The tick's ports, borrowing these adapters, on the system clock.
    pub fn ports(&mut self) -> TickPorts<'_> {
        TickPorts {
            clock: &SystemClock,
            pools: self
                .telemetry
                .iter_mut()
                .map(|p| PoolSource {
                    gpu: p.gpu.as_mut(),
                    engine: p
                        .engine
                        .as_deref_mut()
                        .map(|e| e as &mut dyn crate::ports::EngineTelemetry),
                    baseline: p.baseline,
                })
                .collect(),
            board: &mut self.board,
            dispatcher: &mut self.dispatcher,
            workers: self.workers.as_ref().map(|p| p as _),
        }
    }
}

/// A port error as an `anyhow` error: usage errors (bad `hermes.bin`, missing board,
/// unknown Hermes version) become [`UsageError`] so `main` exits 2.
pub fn port_error(e: PortError) -> anyhow::Error {
    let is_usage = e
        .downcast_ref::<BoardError>()
        .is_some_and(BoardError::is_usage)
        || e.downcast_ref::<DispatchError>()
            .is_some_and(DispatchError::is_usage)
        || e.downcast_ref::<crate::adapters::state_sqlite::StateDbError>()
            .is_some_and(crate::adapters::state_sqlite::StateDbError::is_usage);
    if is_usage {
        usage(e.to_string())
    } else {
        anyhow::Error::from_boxed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(engine: &str) -> PoolConfig {
        let text = format!(
            "[hermes]\nhome = \"/t/hh\"\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\n\n[engine]\n{engine}\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"128KiB\"\nmax_context_tokens = 8192\n"
        );
        let cfg = config::load_str(
            &text,
            std::path::Path::new("/t/governor.toml"),
            &ConfigArgs::default(),
            &|_: &str| None,
        )
        .unwrap();
        cfg.pools[0].clone()
    }

    #[test]
    fn every_pool_reads_its_engine_unless_the_config_says_there_is_none() {
        // A static GPU with no engine.url still reads the kind's usual port: a dead engine
        // then holds the pool instead of going unnoticed.
        let e = engine_source(&pool("kind = \"ollama\""), false).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:11434");
        assert!(e.probe.is_none());
        let e = engine_source(&pool("kind = \"llamacpp\""), true).unwrap();
        assert!(
            e.probe.is_some(),
            "the daemon probes engines without a TTFT histogram"
        );
        assert!(engine_source(&pool("kind = \"vllm\"\nurl = \"none\""), true).is_none());
        let p = pool("kind = \"vllm\"\nurl = \"none\"\nkv_capacity_tokens = 100000");
        assert!(!Config::policy_pool_needs_engine(&p));
        assert!(Config::policy_pool_needs_engine(&pool("kind = \"vllm\"")));
    }
}
