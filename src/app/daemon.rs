//! `kanban-governor run`: the daemon beside the inference server.
//!
//! - **Telemetry**: every pool's GPU source and engine source is read on its own schedule
//!   (`--sample-every`, default 1 s) on the blocking pool, and the latest result of each is
//!   kept with its age (freshness per source). A failing, never-read or stale source makes its
//!   pool hold (fail closed), logged, and shown in `/status` and `/metrics`.
//! - **Ticks**: the same `run_tick` as `tick` (observe → decide → act), on
//!   `dispatch.interval` (or `--interval`) and as soon as the board shows a running task
//!   finished or a new task waiting (its `PRAGMA data_version` is polled every 250 ms, the
//!   board read only when it moved). A tick runs on the blocking pool (SQLite, Hermes CLI);
//!   the state is saved after each.
//! - **Ports**: [`serve`] runs the daemon on the [`Ports`] it is given (clock, each pool's
//!   telemetry, the board and its watcher, dispatcher, state store, worker probe, gateway
//!   check), an already bound listener and a shutdown future, in the mini-redis manner;
//!   [`run`] builds the real ones, binds, wires the signals below into the shutdown future
//!   ([`crate::app::signals::shutdown_signal`]) and calls it. Tests hand it the fakes
//!   ([`crate::fakes`]) and a future of their own.
//! - **Shutdown**: SIGTERM, SIGINT or SIGHUP lets the tick in progress finish (a release is
//!   never left half done: assigned but not dispatched), saves the state and journal, and
//!   exits 0. SIGHUP does not reload the config: a reload would rebuild every telemetry
//!   source, the listener and the lock mid-flight, and a service manager's restart does that
//!   already with the same graceful stop; what SIGHUP must not do is kill a tick half way
//!   (the default action), as a closed terminal or `kill -HUP` would.
//! - **One governor**: the same lock as `tick` (`<state_dir>/tick.lock`) for the daemon's
//!   lifetime; a second `run` (or a cron `tick`) finds it held.
//! - **HTTP**: `/metrics` (Prometheus text) and `/status` (JSON) on `--listen`
//!   (default `127.0.0.1:9477`); a port in use is a usage error (exit 2) naming `--listen`,
//!   and so is an address other than loopback unless the config says `http.public = true`.
//!
//! - **Proxy**: with `[proxy] listen` (or `--proxy-listen`), the OpenAI-compatible
//!   pass-through ([`crate::adapters::proxy`]) on its own thread and runtime, so nothing on the
//!   decision side can stall the agents' calls; it counts into the [`ProxyStats`] that
//!   `/metrics` and `/status` show, and each tick hands footprint learning every task's
//!   peak from it ([`learning`]; any engine kind, no `/slots` needed). On a signal it drains for up to `proxy.drain` after the
//!   tick loop stopped.
//!
//! Exit codes: 0 after a signal, 1 runtime failure (state unreadable, another governor holds
//! the lock), 2 usage or config error (bad config, no NVML library with `telemetry = "nvml"`,
//! `--listen` unavailable).

pub mod exposition;
pub mod latency;
pub mod metrics;
pub mod sources;

use crate::adapters::board_sqlite::SqliteBoard;
use crate::adapters::metrics_http::{self, Answer, Get, Handler};
use crate::adapters::proxy::{self, Proxy, Routes, stats::ProxyStats};
use crate::adapters::state_sqlite::SqliteState;
use crate::adapters::worker_probe::LocalWorkerProbe;
use crate::app::learning::{self, ProfileLearning};
use crate::app::setup::{self, Setup};
use crate::app::signals;
use crate::app::state::{GovernorState, LimitSignal};
use crate::app::tick::{PoolSource, TickOptions, TickPorts, TickReport, run_tick_saving};
use crate::app::tick_command::{LOCK_FILE_NAME, Lock, holder_pids, take_lock};
use crate::config::{ConfigArgs, LatencySignal};
use crate::error::UsageError;
use crate::governor::limit::{Aimd, AimdConfig, ConcurrencyLimit};
use crate::governor::{Bytes, Millis, Policy, TaskId};
use crate::ports::{
    Clock, Dispatcher, EngineTelemetry, PortError, StateStore, SystemClock, TaskBoard, TaskStatus,
    WorkerProbe,
};
use anyhow::Context;
use metrics::Metrics;
use serde::Serialize;
use sources::{EngineView, PoolView, SampledPool, lock};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Where `/metrics` and `/status` are served unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// The shortest `--sample-every` or `--interval` accepted (a zero period would spin).
pub const MIN_PERIOD: Duration = Duration::from_millis(10);
/// How soon the daemon ticks again while a finished task's worker has not exited yet.
const FINISHING_RECHECK: Duration = Duration::from_millis(500);
/// Meanwhile, how often the pass-through's counts are looked at for such a task's last call
/// ending (which frees its charge: the tick runs as soon as it is seen).
const LAST_CALL_POLL: Duration = Duration::from_millis(50);

/// How often the board's `PRAGMA data_version` is polled for finished tasks.
pub const BOARD_POLL: Duration = Duration::from_millis(250);

/// Flags of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address for /metrics and /status (port 0 picks a free one; the address is printed).
    /// Loopback only unless the config sets `http.public = true`: /status shows board,
    /// profile and task names to anyone who can connect, with no authentication.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Time between telemetry samples of each source (humantime: `1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Time between ticks (default: dispatch.interval).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Serve the OpenAI-compatible pass-through here (overrides `proxy.listen`; port 0 picks a
    /// free one, printed). Point a profile at it with `hermes -p <profile> config set
    /// model.base_url http://<addr>/p/<profile>/v1`. Loopback only unless `proxy.public = true`.
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: Option<SocketAddr>,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// The ports the daemon runs on ([`serve`]): the real adapters in [`run`], the fakes
/// ([`crate::fakes`]) in tests. Each is `Send`: the tick runs on the blocking pool.
pub struct Ports {
    /// Stamps telemetry, ticks and `/status`.
    pub clock: Arc<dyn Clock + Send + Sync>,
    /// Every pool's telemetry sources, in [`Policy::pools`] order, sampled on their own
    /// schedule. The caller keeps a clone when a source must outlive the daemon's runtime
    /// (see [`run`]).
    pub pools: Arc<Vec<SampledPool>>,
    /// The board the tick reads.
    pub board: Box<dyn TaskBoard + Send>,
    /// The same board for the change watcher, polled between ticks: a reader of its own, as
    /// `PRAGMA data_version` moves only for commits of other connections.
    pub board_watch: Box<dyn TaskBoard + Send>,
    /// Writes to the board.
    pub dispatcher: Box<dyn Dispatcher + Send>,
    /// The governor's state: loaded once at start, saved after every tick.
    pub store: Box<dyn StateStore + Send>,
    /// Worker liveness, if available.
    pub workers: Option<Box<dyn WorkerProbe + Send>>,
    /// Asked before each tick: a second dispatcher live on the board (`Some(detail)`, e.g.
    /// [`Setup::dual_dispatcher`]) holds everything.
    pub dual_dispatcher: Box<dyn Fn() -> Option<String> + Send>,
}

/// What [`serve`] runs with besides its ports.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The validated config: policy, `[latency]`.
    pub setup: Setup,
    /// The latency limit is fed from the pass-through's counts (`latency.signal = "proxy"`).
    pub proxy_signal: bool,
    /// Time between telemetry samples of each source.
    pub sample_every: Duration,
    /// Time between ticks.
    pub tick_every: Duration,
    /// Where the pass-through serves and what it counts, when it serves (started by the
    /// caller: [`run`] runs it on a thread of its own).
    pub proxy: Option<(SocketAddr, Arc<ProxyStats>)>,
}

/// Everything one tick needs, moved onto the blocking pool for the tick and back.
struct Ticker {
    policy: Policy,
    clock: Arc<dyn Clock + Send + Sync>,
    board: Box<dyn TaskBoard + Send>,
    dispatcher: Box<dyn Dispatcher + Send>,
    store: Box<dyn StateStore + Send>,
    state: GovernorState,
    workers: Option<Box<dyn WorkerProbe + Send>>,
    views: Vec<(PoolView, Option<Bytes>)>,
    /// The gateway-dispatcher check before each tick.
    dual_dispatcher: Box<dyn Fn() -> Option<String> + Send>,
    /// The latency limit, fed from engine readings (`None`: no latency control). Kept in the
    /// state too, so a restarted daemon resumes where it was.
    limit: Option<Aimd>,
    /// Tasks counted against the limit (running or released, not yet running) right after the
    /// last tick: the load the next readings' latency was measured under.
    in_use_after_tick: u32,
    /// The engine readings and the pass-through's counts last fed to the limit.
    fed: latency::Feed,
    /// What the pass-through counts, when it serves: footprint learning takes each task's
    /// peak from it.
    proxy: Option<Arc<ProxyStats>>,
    /// With `latency.signal = "proxy"`: the limit is fed from the pass-through's counts.
    proxy_signal: bool,
    /// No tick has run yet in this process: the first dispatches what is in flight at once
    /// (the process before may have died before its dispatch ran).
    first_tick: bool,
}

/// The pass-through's counts for the latency limit: TTFT over every profile, and answers the
/// engine failed.
fn proxy_latency(stats: &ProxyStats, at: Millis) -> latency::ProxyLatency {
    use crate::adapters::proxy::stats::Outcome;
    let snap = stats.snapshot();
    let mut per_bucket: Vec<(f64, u64)> = Vec::new();
    let mut failed = 0;
    for p in snap.profiles.values() {
        for (i, (bound, n)) in p.ttft.buckets().into_iter().enumerate() {
            let bound = if bound == f64::MAX {
                f64::INFINITY
            } else {
                bound
            };
            match per_bucket.get_mut(i) {
                Some(b) => b.1 += n,
                None => per_bucket.push((bound, n)),
            }
        }
        failed += [
            Outcome::Http5xx,
            Outcome::Unreachable,
            Outcome::UpstreamReset,
        ]
        .iter()
        .filter_map(|o| p.requests.get(o))
        .sum::<u64>();
    }
    let mut total = 0;
    let ttft_buckets = per_bucket
        .into_iter()
        .map(|(b, n)| {
            total += n;
            (b, total)
        })
        .collect();
    latency::ProxyLatency {
        at,
        ttft_buckets,
        failed,
    }
}

/// Per task id the pass-through saw, its final peak and its requests in flight and ended,
/// for learning and for releasing a finished task's charge when its last call ends.
fn proxy_tasks(stats: &ProxyStats) -> BTreeMap<TaskId, learning::ProxyTask> {
    stats
        .snapshot()
        .tasks
        .into_iter()
        .map(|(id, t)| {
            let peak = learning::MeasuredPeak {
                tokens: t.final_peak_tokens,
                exact: t.final_peak_exact,
            };
            let task = learning::ProxyTask {
                peak,
                in_flight: t.in_flight,
                ended: t.requests.saturating_sub(u64::from(t.in_flight)),
            };
            (TaskId::from(id), task)
        })
        .collect()
}

/// The finishing tasks the pass-through has seen, each with its requests ended when it was
/// first seen finishing: one more ended and none in flight is its last call over (the rule of
/// `tick::finishing_workers`, which then stops charging it).
fn last_calls(state: &GovernorState, finishing: &[TaskId]) -> Vec<(TaskId, u64)> {
    finishing
        .iter()
        .filter_map(|id| Some((id.clone(), state.workers.get(id)?.ended_at_finish?)))
        .collect()
}

/// Whether one of `watched` has had its last call end.
fn a_last_call_ended(stats: &ProxyStats, watched: &[(TaskId, u64)]) -> bool {
    let tasks = proxy_tasks(stats);
    watched.iter().any(|(id, at_finish)| {
        tasks
            .get(id)
            .is_some_and(|t| t.in_flight == 0 && t.ended > *at_finish)
    })
}

/// The AIMD latency limit for this config (`[latency]`), resumed from the saved state when
/// that was built from the same settings and fed by the same signal
/// ([`latency::resume`]; otherwise it starts afresh). Fed by the proxy
/// (`latency.signal = "proxy"`: the agents' own calls, no probe load) it starts open, where
/// memory allows, and lowers only on evidence; fed by a probe or the engine's histogram it
/// starts at `min_limit` in slow start, since there each step up is what the evidence is
/// measured under.
fn latency_limit(setup: &Setup, proxy_signal: bool, state: &GovernorState) -> Aimd {
    let l = &setup.config.latency;
    let config = AimdConfig {
        slo: Millis::from_duration(l.ttft_slo),
        min: l.min_limit,
        max: l.max_limit,
        backoff: l.backoff,
        dwell: Millis::from_duration(l.dwell),
    };
    let fresh = if proxy_signal {
        Aimd::open(config)
    } else {
        Aimd::new(config)
    };
    latency::resume(
        fresh,
        limit_signal(proxy_signal),
        state.latency_limit.as_ref(),
        state.latency_limit_signal,
    )
}

fn limit_signal(proxy_signal: bool) -> LimitSignal {
    if proxy_signal {
        LimitSignal::Proxy
    } else {
        LimitSignal::Engine
    }
}

impl Ticker {
    /// Feed the engine readings that arrived since the last tick to the latency limit; the
    /// limit now in force.
    fn feed_limit(&mut self) -> Option<u32> {
        let in_flight = self.in_use().max(self.in_use_after_tick);
        self.limit.as_ref()?;
        let engines: Vec<_> = self.views.iter().map(|(v, _)| v.latest_engine()).collect();
        let proxy = (self.proxy.as_deref())
            .filter(|_| self.proxy_signal)
            .map(|stats| proxy_latency(stats, self.clock.now()));
        let samples = self
            .fed
            .samples(&engines, self.proxy_signal, proxy, in_flight);
        let limit = self.limit.as_mut()?;
        for s in samples {
            tracing::debug!(sample = ?s, "Latency sample.");
            let before = limit.limit();
            limit.on_sample(s);
            if limit.limit() != before {
                tracing::info!(
                    from = before,
                    to = limit.limit(),
                    change = ?limit.last_change().map(|(_, c)| c),
                    sample = ?s.outcome,
                    in_flight,
                    "The latency limit moved."
                );
            }
        }
        self.state.latency_limit = Some(limit.clone());
        self.state.latency_limit_signal = Some(limit_signal(self.proxy_signal));
        Some(limit.limit())
    }

    /// Governed tasks running or released and not yet running (what the limit counts).
    fn in_use(&self) -> u32 {
        u32::try_from(self.state.in_use()).unwrap_or(u32::MAX)
    }

    /// One tick under the latency limit; the limit as it stood, and the report.
    fn tick(&mut self) -> (Option<Aimd>, Result<TickReport, PortError>) {
        let latency_limit = self.feed_limit();
        let report = self.tick_with(latency_limit);
        // Spawned tasks left `in_flight` and were not running when the board was read.
        let spawned = report.as_ref().map_or(0, |r| r.spawned.len());
        self.in_use_after_tick = self
            .in_use()
            .saturating_add(u32::try_from(spawned).unwrap_or(u32::MAX));
        (self.limit.clone(), report)
    }

    fn tick_with(&mut self, latency_limit: Option<u32>) -> Result<TickReport, PortError> {
        let mut gpus: Vec<PoolView> = self.views.iter().map(|(v, _)| v.clone()).collect();
        let mut engines: Vec<Option<EngineView>> =
            self.views.iter().map(|(v, _)| v.engine()).collect();
        let pools = gpus
            .iter_mut()
            .zip(engines.iter_mut())
            .zip(self.views.iter().map(|(_, b)| *b))
            .map(|((gpu, engine), baseline)| PoolSource {
                gpu,
                engine: engine.as_mut().map(|e| e as &mut dyn EngineTelemetry),
                baseline,
            })
            .collect();
        let mut ports = TickPorts {
            clock: &*self.clock,
            pools,
            board: &mut *self.board,
            dispatcher: &mut *self.dispatcher,
            workers: self.workers.as_deref().map(|p| p as _),
        };
        let opts = TickOptions {
            dry_run: false,
            dual_dispatcher: (self.dual_dispatcher)(),
            latency_limit,
            proxy: self.proxy.as_deref().map(proxy_tasks),
            redispatch: self.first_tick,
        };
        let mut report = run_tick_saving(
            &self.policy,
            &mut ports,
            &mut self.state,
            &mut *self.store,
            &opts,
        )?;
        self.first_tick = false;
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!(error = %e, "Saving the governor state failed.");
            report.errors.push(format!("saving state: {e}"));
        }
        crate::app::tick::journal(&mut *self.store, &mut report);
        Ok(report)
    }
}

/// What `/status` shows besides telemetry.
#[derive(Debug, Default, Serialize)]
struct TickStatus {
    ticks: u64,
    last_tick: Option<TickReport>,
    last_tick_error: Option<String>,
    last_tick_seconds: Option<f64>,
    shutting_down: bool,
    /// The AIMD latency limit at the last tick: its settings, limit and last change.
    latency_limit: Option<Aimd>,
    /// Per profile, declared vs learned footprint.
    footprints: Vec<ProfileLearning>,
}

/// One source in `/status`.
#[derive(Debug, Serialize)]
struct SourceDoc<T: Serialize> {
    source: String,
    up: bool,
    age_ms: Option<u64>,
    error: Option<String>,
    /// When the current run of failed reads began (Unix ms), while the source is down.
    down_since_ms: Option<u64>,
    reads: u64,
    errors: u64,
    latest: Option<T>,
}

fn source_doc<T: Serialize + Clone>(
    source: String,
    s: &sources::SourceState<T>,
    now: Millis,
) -> SourceDoc<T> {
    SourceDoc {
        source,
        up: s.failing().is_none() && s.last_ok.is_some(),
        age_ms: s.age(now).map(Millis::get),
        error: s.failing().map(str::to_owned),
        down_since_ms: s.failing().and(s.down_since).map(Millis::get),
        reads: s.reads,
        errors: s.errors,
        latest: s.last_ok.as_ref().map(|(_, v)| v.clone()),
    }
}

#[derive(Debug, Serialize)]
struct PoolDoc {
    name: String,
    /// Why the pool releases nothing now, if so.
    holding: Option<String>,
    gpu: SourceDoc<crate::governor::GpuSample>,
    engine: Option<SourceDoc<crate::ports::EngineReading>>,
}

fn status_json(
    now: Millis,
    pools: &[SampledPool],
    ticks: &Mutex<TickStatus>,
    listen: SocketAddr,
    started: Millis,
    proxy: Option<(SocketAddr, &ProxyStats)>,
) -> String {
    let pool_docs: Vec<PoolDoc> = pools
        .iter()
        .map(|p| PoolDoc {
            name: p.name.clone(),
            holding: p.view().blind(now),
            gpu: source_doc(p.gpu_kind.to_owned(), &lock(&p.gpu), now),
            engine: p
                .engine
                .as_ref()
                .map(|e| source_doc(p.engine_label.clone().unwrap_or_default(), &lock(e), now)),
        })
        .collect();
    let t = lock(ticks);
    let doc = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "listen": listen.to_string(),
        "started_at_ms": started.get(),
        "now_ms": now.get(),
        "pools": pool_docs,
        "ticks": t.ticks,
        "shutting_down": t.shutting_down,
        "last_tick_seconds": t.last_tick_seconds,
        "last_tick_error": t.last_tick_error,
        "latency_limit": t.latency_limit,
        "footprints": t.footprints,
        "proxy": proxy.map(|(addr, stats)| {
            let snap = stats.snapshot();
            serde_json::json!({
                "listen": addr.to_string(),
                "profiles": snap.profiles,
                "tasks": snap.tasks,
                "connections_refused": snap.connections_refused,
            })
        }),
        "last_tick": t.last_tick,
    });
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}

/// A non-loopback `--listen` needs `http.public = true`: `/status` names the board's
/// profiles and tasks and has no authentication, so serving it to the network must be a
/// decision written in the config, not a flag typed in passing.
///
/// # Errors
///
/// The message names `--listen`, `http.public` and both fixes.
pub fn check_listen(listen: SocketAddr, public: bool) -> Result<(), String> {
    if listen.ip().is_loopback() || public {
        return Ok(());
    }
    Err(format!(
        "--listen {listen} is not a loopback address: /metrics and /status (board, profile and task names, no authentication) would be served to the network; set http.public = true in the config to allow it, or listen on 127.0.0.1:{}",
        listen.port()
    ))
}

/// Run `run`.
///
/// # Errors
///
/// Config, telemetry set-up, lock, listen or state failures (see the module doc for exit
/// codes).
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.sample_every < MIN_PERIOD || args.interval.is_some_and(|i| i < MIN_PERIOD) {
        return Err(usage(format!(
            "--sample-every and --interval must be at least {}; e.g. --sample-every 1s",
            humantime::format_duration(MIN_PERIOD)
        )));
    }
    let setup = setup::load(&args.config)?;
    check_listen(args.listen, setup.config.http.public).map_err(usage)?;
    let proxy_on = args.proxy_listen.or(setup.config.proxy.listen).is_some();
    // Unset, the signal follows the proxy (`proxy` when it serves): `--proxy-listen` turns it
    // on as `proxy.listen` does, though the config's default was derived without the flag.
    let signal_set = setup
        .config
        .sources
        .get("latency.signal")
        .is_some_and(|s| *s != crate::config::Source::Default);
    let proxy_signal = if signal_set {
        setup.config.latency.signal == LatencySignal::Proxy
    } else {
        proxy_on
    };
    if proxy_signal && !proxy_on {
        return Err(usage(
            "latency.signal = \"proxy\" needs the pass-through: set proxy.listen (or run --proxy-listen 127.0.0.1:9478), or set latency.signal = \"engine\"".to_owned(),
        ));
    }
    // The agents' own requests are the latency signal: no probe adds load.
    let pools = sources::build(&setup.config, !proxy_signal)?;
    let board_path = setup.board_path()?;
    let dispatcher = setup.dispatcher()?;
    let state_dir = setup.state_dir.clone();
    let lock_file = match take_lock(&state_dir)? {
        Lock::Held(f) => f,
        Lock::ByGovernor(holders) => anyhow::bail!(
            "another kanban-governor ({}) holds {}; one governor per board: stop it (or its cron `tick`) first",
            holder_pids(&holders),
            state_dir.join(LOCK_FILE_NAME).display()
        ),
    };
    let listener = metrics_http::bind(args.listen).map_err(|e| usage(e.to_string()))?;
    let proxy_listener = match args.proxy_listen.or(setup.config.proxy.listen) {
        Some(addr) => {
            if args.proxy_listen.is_some() {
                crate::config::proxy_listen_allowed(addr, setup.config.proxy.public)
                    .map_err(|e| usage(format!("--proxy-listen {e}")))?;
            }
            Some(proxy::bind(addr).map_err(|e| usage(e.to_string()))?)
        }
        None => None,
    };
    let store = SqliteState::open(&state_dir)?;
    let tick_every = args.interval.unwrap_or(setup.config.dispatch.interval);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(30))
        .build()
        .context("starting the async runtime")?;
    // The engine sources own blocking HTTP clients (each with its own small runtime), which
    // must not be dropped inside the daemon's runtime: this clone outlives every other.
    let pools = Arc::new(pools);
    let proxy = match proxy_listener {
        Some(l) => Some(start_proxy(l, &setup.config, Arc::default())?),
        None => None,
    };
    let gateway = setup.clone();
    let ports = Ports {
        clock: Arc::new(SystemClock),
        pools: pools.clone(),
        board: Box::new(SqliteBoard::new(&board_path)),
        board_watch: Box::new(SqliteBoard::new(&board_path)),
        dispatcher: Box::new(dispatcher),
        store: Box::new(store),
        workers: LocalWorkerProbe::for_this_host().map(|p| Box::new(p) as _),
        dual_dispatcher: Box::new(move || gateway.dual_dispatcher()),
    };
    let settings = Settings {
        setup,
        proxy_signal,
        sample_every: args.sample_every,
        tick_every,
        proxy: proxy.as_ref().map(|p| (p.addr, p.stats.clone())),
    };
    let result = rt.block_on(async {
        // Before anything else starts, so an early SIGTERM is ours (not the default action,
        // which would kill the process mid-tick).
        let shutdown = signals::shutdown_signal()?;
        serve(settings, ports, listener, shutdown).await
    });
    if let Some(p) = proxy {
        p.stop();
    }
    // Samplers may sit in an engine read (bounded by its timeout); nothing they do writes.
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(pools);
    drop(lock_file);
    result.map(|()| ExitCode::SUCCESS)
}

/// Run the daemon on `ports` until `shutdown` completes: serve `/metrics` and `/status` on
/// `listener`, sample every pool's telemetry, tick on `settings.tick_every` and whenever
/// the board shows a task finished or arrived. After `shutdown`, the tick in progress
/// finishes, the state and journal are saved, and this returns.
///
/// # Errors
///
/// The state cannot be loaded, the listener has no address, or a tick panicked (the state
/// saved after the tick before stays intact). The `/metrics` server stopping with an error is
/// logged, not returned.
pub async fn serve(
    settings: Settings,
    mut ports: Ports,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Read before anything runs on the runtime, so this blocking call stalls nothing.
    let state = ports
        .store
        .load()
        .map_err(anyhow::Error::from_boxed)
        .context("loading the governor state")?;
    let Settings {
        setup,
        proxy_signal,
        sample_every,
        tick_every,
        proxy,
    } = settings;
    let pools = ports.pools;
    // No engine, no latency signal: a limit that never hears a sample would stay at its lower
    // bound forever, so memory alone governs.
    let limit = (proxy_signal || pools.iter().any(|p| p.engine.is_some()))
        .then(|| latency_limit(&setup, proxy_signal, &state));
    let ticker = Ticker {
        policy: setup.policy.clone(),
        clock: ports.clock.clone(),
        board: ports.board,
        dispatcher: ports.dispatcher,
        store: ports.store,
        state,
        workers: ports.workers,
        views: pools.iter().map(|p| (p.view(), p.baseline)).collect(),
        dual_dispatcher: ports.dual_dispatcher,
        limit,
        in_use_after_tick: 0,
        fed: latency::Feed::default(),
        proxy: proxy.as_ref().map(|(_, stats)| stats.clone()),
        proxy_signal,
        first_tick: true,
    };
    let metrics = Arc::new(Metrics::with_proxy_stats(
        proxy.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
    ));
    metrics.set_ttft_slo(setup.config.latency.ttft_slo);
    let listen = listener
        .local_addr()
        .context("reading the /metrics listener's address")?;
    let daemon = Daemon {
        policy: setup.policy,
        clock: ports.clock,
        pools,
        metrics,
        ticks: Arc::new(Mutex::new(TickStatus::default())),
        sample_every,
        tick_every,
        listen,
        proxy: proxy.map(|(addr, _)| addr),
    };
    daemon
        .run(listener, ticker, ports.board_watch, shutdown)
        .await
}

/// The pass-through on its own thread (see the module doc).
struct ProxyThread {
    addr: SocketAddr,
    /// What it counts (`/metrics`, `/status`, footprint learning, the latency limit).
    stats: Arc<ProxyStats>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProxyThread {
    /// Stop accepting, let requests in flight finish (up to `proxy.drain`), and wait.
    fn stop(self) {
        let _ = self.stop.send(true);
        if self.thread.join().is_err() {
            tracing::error!("The proxy thread panicked while stopping.");
        }
    }
}

/// Start the pass-through on `listener` with the routes of `config`: each governed profile to
/// its pool's engine, other paths to the first pool that has an engine endpoint.
fn start_proxy(
    listener: std::net::TcpListener,
    config: &crate::config::Config,
    stats: Arc<ProxyStats>,
) -> anyhow::Result<ProxyThread> {
    let addr = listener
        .local_addr()
        .context("reading the proxy's address")?;
    let engine_of = |pool: &str| {
        config
            .pools
            .iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.engine.endpoint())
    };
    let routes = Routes::new(
        config
            .profiles
            .iter()
            .map(|p| (p.name.as_str(), engine_of(&p.pool))),
        config.pools.iter().find_map(|p| p.engine.endpoint()),
    );
    let settings = proxy::Settings {
        max_body: usize::try_from(config.proxy.max_body.get()).unwrap_or(usize::MAX),
        drain: config.proxy.drain,
        max_connections: proxy::max_connections_for_this_process(),
    };
    let proxy = Arc::new(Proxy::new(routes, settings, stats.clone()));
    // Two workers: streams keep flowing while one thread parses a large request body.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("proxy")
        .enable_all()
        .build()
        .context("starting the proxy's runtime")?;
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(proxy::serve(listener, proxy, stop_rx)) {
                tracing::error!(error = %e, "The proxy stopped; agents' calls through it fail until the daemon restarts.");
            }
        })
        .context("starting the proxy thread")?;
    Ok(ProxyThread {
        addr,
        stats,
        stop,
        thread,
    })
}

struct Daemon {
    /// Where the pass-through serves, when it does.
    proxy: Option<SocketAddr>,
    policy: Policy,
    clock: Arc<dyn Clock + Send + Sync>,
    pools: Arc<Vec<SampledPool>>,
    metrics: Arc<Metrics>,
    ticks: Arc<Mutex<TickStatus>>,
    sample_every: Duration,
    tick_every: Duration,
    listen: SocketAddr,
}

/// Read every source once, concurrently, and wait for all.
async fn sample_round(pools: &Arc<Vec<SampledPool>>, clock: &Arc<dyn Clock + Send + Sync>) {
    let mut handles = Vec::new();
    for i in 0..pools.len() {
        let p = pools.clone();
        let c = clock.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            let pool = &p[i];
            sources::sample_gpu(&pool.gpu_source, &pool.gpu, c.now());
        }));
        if pools[i].engine_source.is_some() {
            let p = pools.clone();
            let c = clock.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                let pool = &p[i];
                if let (Some(src), Some(into)) = (&pool.engine_source, &pool.engine) {
                    sources::sample_engine(src, into, &*c);
                }
            }));
        }
    }
    for h in handles {
        let _ = h.await;
    }
}

/// Sample one source every `every` until shutdown; log when it starts or stops failing.
async fn sampler(
    pools: Arc<Vec<SampledPool>>,
    clock: Arc<dyn Clock + Send + Sync>,
    metrics: Arc<Metrics>,
    i: usize,
    engine: bool,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let what = if engine { "engine" } else { "GPU" };
    let mut was_failing = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let p = pools.clone();
        let c = clock.clone();
        let failing = tokio::task::spawn_blocking(move || {
            let pool = &p[i];
            let now = c.now();
            if engine {
                if let (Some(src), Some(into)) = (&pool.engine_source, &pool.engine) {
                    sources::sample_engine(src, into, &*c);
                    return lock(into).failing().map(str::to_owned);
                }
                None
            } else {
                sources::sample_gpu(&pool.gpu_source, &pool.gpu, now);
                lock(&pool.gpu).failing().map(str::to_owned)
            }
        })
        .await
        .unwrap_or_else(|e| Some(format!("the {what} reader panicked: {e}")));
        let pool = &pools[i].name;
        match (&failing, was_failing) {
            (Some(e), false) => {
                tracing::error!(pool = %pool, error = %e, "{what} telemetry failed; the pool holds until it reads again.");
            }
            (None, true) => tracing::warn!(pool = %pool, "{what} telemetry reads again."),
            _ => {}
        }
        was_failing = failing.is_some();
        metrics.observe_telemetry(&pools, clock.now());
    }
}

/// The running and waiting task ids of the board, for change detection.
fn board_sets(board: &mut dyn TaskBoard) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let snap = board.read_board(&[]).ok()?;
    let mut running = BTreeSet::new();
    let mut waiting = BTreeSet::new();
    for t in snap.tasks {
        match t.status {
            TaskStatus::Running => {
                running.insert(t.id.to_string());
            }
            TaskStatus::Ready => {
                waiting.insert(t.id.to_string());
            }
            _ => {}
        }
    }
    Some((running, waiting))
}

/// Poll the board's data_version; when it moved, look whether a running task finished or a
/// new task is ready, and if so wake the tick loop.
async fn board_watcher(
    board: Box<dyn TaskBoard + Send>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut board = Some(board);
    let mut version = None;
    let mut sets: Option<(BTreeSet<String>, BTreeSet<String>)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BOARD_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(mut b) = board.take() else { return };
        let last = version;
        let last_sets = sets.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let v = b.read_data_version().ok();
            let new_sets = if v.is_some() && v != last {
                board_sets(&mut *b)
            } else {
                None
            };
            (b, v, new_sets)
        })
        .await;
        let Ok((b, v, new_sets)) = joined else { return };
        board = Some(b);
        if v.is_none() || v == last {
            continue;
        }
        version = v;
        if let Some(now) = new_sets {
            if let Some((run_before, wait_before)) = &last_sets {
                let finished = run_before.difference(&now.0).next().is_some();
                let arrived = now.1.difference(wait_before).next().is_some();
                if finished || arrived {
                    tracing::debug!(finished, arrived, "Board changed; ticking now.");
                    wake.notify_one();
                }
            }
            sets = Some(now);
        }
    }
}

impl Daemon {
    async fn run(
        self,
        listener: std::net::TcpListener,
        ticker: Ticker,
        board_watch: Box<dyn TaskBoard + Send>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopper = {
            let stop_tx = stop_tx.clone();
            let ticks = self.ticks.clone();
            tokio::spawn(async move {
                shutdown.await;
                lock(&ticks).shutting_down = true;
                let _ = stop_tx.send(true);
            })
        };

        let started = self.clock.now();
        let handler: Handler = {
            let clock = self.clock.clone();
            let metrics = self.metrics.clone();
            let pools = self.pools.clone();
            let ticks = self.ticks.clone();
            let listen = self.listen;
            let proxy = self.proxy.map(|a| (a, self.metrics.proxy_stats()));
            Arc::new(move |get: Get<'_>| match get.path {
                "/metrics" => {
                    let format = exposition::negotiate(get.accept);
                    Answer::ok(format.content_type(), metrics.encode(format))
                }
                "/status" => Answer::ok(
                    "application/json",
                    status_json(
                        clock.now(),
                        &pools,
                        &ticks,
                        listen,
                        started,
                        proxy.as_ref().map(|(a, s)| (*a, &**s)),
                    ),
                ),
                "/" => Answer::text(200, "kanban-governor: /metrics, /status\n"),
                _ => Answer::text(404, "not found; try /metrics or /status\n"),
            })
        };
        let server = tokio::spawn(metrics_http::serve_with(
            listener,
            handler,
            stop_rx.clone(),
            metrics_http::Limits::for_this_process(),
            self.metrics.server_stats(),
        ));
        let proxy_line = self
            .proxy
            .map(|a| format!("; proxy http://{a}/p/<profile>/v1"))
            .unwrap_or_default();
        println!(
            "kanban-governor run: serving http://{}/metrics and http://{}/status (pid {}){proxy_line}",
            self.listen,
            self.listen,
            std::process::id()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();

        // First samples before the first tick, so it does not hold for want of them.
        sample_round(&self.pools, &self.clock).await;
        self.metrics
            .observe_telemetry(&self.pools, self.clock.now());
        let mut tasks = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            for engine in [false, true] {
                if engine && p.engine_source.is_none() {
                    continue;
                }
                tasks.push(tokio::spawn(sampler(
                    self.pools.clone(),
                    self.clock.clone(),
                    self.metrics.clone(),
                    i,
                    engine,
                    self.sample_every,
                    stop_rx.clone(),
                )));
            }
        }
        let wake = Arc::new(Notify::new());
        tasks.push(tokio::spawn(board_watcher(
            board_watch,
            wake.clone(),
            stop_rx.clone(),
        )));

        let result = self.tick_loop(ticker, &wake, stop_rx.clone()).await;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        stopper.abort();
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "The /metrics server stopped with an error.");
        }
        result
    }

    async fn tick_loop(
        &self,
        ticker: Ticker,
        wake: &Notify,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + self.tick_every,
            self.tick_every,
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticker = Box::new(ticker);
        let mut trigger = "start";
        loop {
            let started = Instant::now();
            let (t, (latency_limit, result)) = tokio::task::spawn_blocking(move || {
                let r = ticker.tick();
                (ticker, r)
            })
            .await
            .context("the tick panicked; the state saved after the previous tick is intact")?;
            ticker = t;
            let seconds = started.elapsed().as_secs_f64();
            lock(&self.ticks).footprints = learning::report(&ticker.policy, &ticker.state);
            self.record(trigger, seconds, result, latency_limit);
            if *stop.borrow() {
                break;
            }
            // A worker that outlives its task exits about a second later without touching
            // the board, and a done task's last call through the proxy ends without touching
            // it either: look again soon rather than a whole interval later.
            // Through the proxy, the tick runs as soon as such a last call is seen to end.
            let (finishing, watched) = match &lock(&self.ticks).last_tick {
                Some(r) => (
                    !r.observed.finishing.is_empty() || !r.observed.peaks_pending.is_empty(),
                    last_calls(&ticker.state, &r.observed.finishing),
                ),
                None => (false, Vec::new()),
            };
            let proxy = ticker.proxy.clone().filter(|_| !watched.is_empty());
            let recheck = async {
                if !finishing {
                    std::future::pending::<()>().await;
                }
                let Some(stats) = proxy else {
                    return tokio::time::sleep(FINISHING_RECHECK).await;
                };
                let until = tokio::time::Instant::now() + FINISHING_RECHECK;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(LAST_CALL_POLL).await;
                    if a_last_call_ended(&stats, &watched) {
                        return;
                    }
                }
            };
            trigger = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = interval.tick() => "interval",
                _ = wake.notified() => {
                    interval.reset();
                    "board"
                }
                () = recheck => "finishing",
            };
        }
        tracing::warn!("Stopped after a complete tick; state saved.");
        Ok(())
    }

    fn record(
        &self,
        trigger: &str,
        seconds: f64,
        result: Result<TickReport, PortError>,
        latency_limit: Option<Aimd>,
    ) {
        let mut t = lock(&self.ticks);
        let limit = latency_limit.as_ref().map(ConcurrencyLimit::limit);
        t.latency_limit = latency_limit;
        t.ticks += 1;
        t.last_tick_seconds = Some(seconds);
        match result {
            Ok(report) => {
                for e in &report.observed.telemetry_errors {
                    tracing::warn!(error = %e, "Holding: telemetry unavailable.");
                }
                if !report.released.is_empty() || !report.leaks.is_empty() {
                    tracing::info!("{}", report.summary());
                } else {
                    tracing::debug!("{}", report.summary());
                }
                self.metrics
                    .observe_tick(&self.policy, &report, trigger, seconds, limit);
                t.last_tick = Some(report);
                t.last_tick_error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "Tick failed; nothing was done.");
                self.metrics.observe_failed_tick(trigger, seconds);
                t.last_tick_error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests;
