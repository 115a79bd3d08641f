//! One simulated run: a board of tasks, a dispatch strategy on an interval, workers that send
//! their calls to the engine, timeouts and Hermes's retries, and the measurements.
//!
//! Hermes's behaviour modelled (HERMES.md §3–§4): a dispatched task's worker starts after a
//! spawn delay (3 s) and sends one turn's calls at a time; a call that makes no progress for
//! `call_timeout` (queued, preempted, stalled) times out and the worker exits, as does a call
//! the engine refuses (OOM, context too long); the task goes back to `ready` and is retried
//! until it has failed `failure_limit` times (Hermes's default 2), then it is blocked. Children
//! become ready when their parent is done.

use super::engine::{Engine, Event, Failure, Regime, Request};
use super::peers::{self, EndpointMetrics, HostMemory};
use super::workload::TaskSpec;
use crate::config;
use crate::governor::learned::{PeakStats, learned_spread, learned_worst_case};
use crate::governor::limit::{Aimd, AimdConfig, ConcurrencyLimit, Outcome as LimitOutcome, Sample};
use crate::governor::{
    Bytes, EngineSample, FootprintMode, GpuSample, Millis, Observation, Policy, PoolObservation,
    ProfileId, Readiness, RunningTask, Spread, TaskId, WaitingTask, WorstCase, decide,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

/// A dispatch strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// The gateway's dispatcher with no cap: every ready task, every interval.
    Unbounded,
    /// `hermes kanban dispatch --max N` with the old per-tick meaning: N spawns per interval.
    PerTick(u32),
    /// A live cap of N running tasks (Hermes `--max` today; the article's slot controller).
    LiveCap(u32),
    /// A live cap per profile.
    ProfilePools(Vec<u32>),
    /// The governor: `governor::decide` with the config's policy, learning each profile's
    /// footprint from finished tasks as `run` does.
    Governor,
    /// The governor with every profile charged its declared worst case (`footprint = "declared"`).
    GovernorDeclared,
    /// Admission knowing each task's true peak (an upper reference, not a real strategy).
    Clairvoyant,
    /// Hermes ≥ 0.20's host-memory guard (hermes-agent PR #88115, PEERS.md): each tick it
    /// reads `MemAvailable` and starts every ready task (`None`: over unbounded dispatch) or
    /// what the per-profile caps allow, at most one under 15 % of `MemTotal` and none under
    /// 5 % ([`peers::guard_tier`]). Host memory is the host's model ([`Host::memory`]): the
    /// OS, each worker's RSS and, on unified memory, the GPU's. Its default cap derived from
    /// host memory (formula not read) is left out.
    HermesGuard(Option<Vec<u32>>),
    /// Hermes's `kanban.max_in_progress_per_profile` (a live cap per profile), with caps a
    /// user tuned in hindsight (`simulate` picks them by a sweep).
    HermesProfileCaps(Vec<u32>),
    /// llm-d's flow control in front of the engine over unbounded task dispatch. The
    /// adaptation: it gates *requests*, not tasks, so every ready task is dispatched and each
    /// of its calls passes the gateway; while the pool is saturated
    /// ([`peers::saturation`] ≥ 1) calls wait in the gateway's queue (FIFO: one priority
    /// band, one flow, so its fairness ordering does not arise) and a call that waits there
    /// past `call_timeout` times out like any other. The simulator reads the engine's
    /// metrics at the moment of each gateway decision (on a call, after every engine
    /// iteration, every sample), so they are never older than 200 ms and the scrape-lag
    /// credit is zero: both are in the rule, and tested there, but never bite here; an
    /// idealised, lag-free gateway.
    LlmdFlowControl,
    /// vLLM's KV watermark (PR #44594) at this fraction of the pool, over unbounded dispatch
    /// ([`super::engine::Engine::set_kv_watermark`]).
    VllmWatermark(f64),
}

impl Strategy {
    /// The row label.
    pub fn label(&self) -> String {
        match self {
            Strategy::Unbounded => "unbounded (gateway)".into(),
            Strategy::PerTick(n) => format!("per-tick --max {n} (old)"),
            Strategy::LiveCap(n) => format!("live cap {n} (--max today)"),
            Strategy::ProfilePools(caps) => format!(
                "per-profile pools {}",
                caps.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            Strategy::Governor => "kanban-governor".into(),
            Strategy::GovernorDeclared => "kanban-governor, declared footprints".into(),
            Strategy::Clairvoyant => "oracle: clairvoyant".into(),
            Strategy::HermesGuard(None) => "Hermes >=0.20 guard, unbounded".into(),
            Strategy::HermesGuard(Some(caps)) => {
                format!("Hermes >=0.20 guard, caps {}", slash(caps))
            }
            Strategy::HermesProfileCaps(caps) => format!("Hermes per-profile caps {}", slash(caps)),
            Strategy::LlmdFlowControl => "llm-d flow control, unbounded".into(),
            Strategy::VllmWatermark(w) => format!("vLLM KV watermark {w}, unbounded"),
        }
    }
}

fn slash(caps: &[u32]) -> String {
    caps.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// A client of the engine that is not on the board (hindsight's memory service, PEERS.md):
/// `connections` that each send a call, wait for its answer, think, and send the next, for the
/// whole run. It never times out or gives up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutsideClient {
    /// Connections, each with one call in flight or thinking.
    pub connections: u32,
    /// Prompt tokens of each call.
    pub prompt: u64,
    /// Output tokens of each call.
    pub output: u64,
    /// Seconds between an answer and the connection's next call.
    pub think_s: f64,
}

/// The host being simulated.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// GPU memory.
    pub total: u64,
    /// What the GPU holds with no request: weights, activations, and the KV pool or slots
    /// of engines that preallocate.
    pub baseline: u64,
    /// KV bytes per token of the served model.
    pub kv_bytes_per_token: u64,
    /// The engine regime.
    pub regime: Regime,
    /// Its speed.
    pub speed: super::engine::Speed,
    /// Another tenant: (from, to, bytes) windows.
    pub neighbour: Vec<(f64, f64, u64)>,
    /// The host's own memory, for Hermes's guard (and, where it is unified, the GPU's).
    pub memory: HostMemory,
    /// A client of the engine outside the board.
    pub outside: Option<OutsideClient>,
}

impl Host {
    /// What the other tenant holds at `t` (it gets no more than is free).
    fn neighbour_at(&self, t: f64, requests: u64) -> u64 {
        let want: u64 = self
            .neighbour
            .iter()
            .filter(|(a, b, _)| *a <= t && t < *b)
            .map(|(_, _, x)| *x)
            .sum();
        want.min(self.total.saturating_sub(self.baseline + requests))
    }
}

/// Run settings shared by every strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Dispatch interval, seconds (the gateway ticks every 5 s by default... and so does the
    /// governor's `dispatch.interval`).
    pub interval: f64,
    /// A call making no progress this long times out, seconds.
    pub call_timeout: f64,
    /// Failures before Hermes blocks a task.
    pub failure_limit: u32,
    /// Dispatch to first call, seconds.
    pub spawn_delay: f64,
    /// Where the run stops, seconds.
    pub horizon: f64,
    /// Memory sampling and timeout checks, seconds.
    pub sample_every: f64,
    /// The governor's latency limit (`[latency]`), run where a pool has fixed slots: there a
    /// running task is charged the slots its calls hold now, and this limit bounds the queue
    /// (`governor::admission`, "Running tasks in a slot pool"). Fed with every call's TTFT
    /// and timeout as the pass-through feeds the daemon's, so it starts open.
    pub latency: AimdConfig,
}

impl Params {
    /// The horizon in whole milliseconds, the unit progress is counted in.
    pub fn horizon_ms(&self) -> u64 {
        (self.horizon * 1000.0) as u64
    }
}

impl Default for Params {
    fn default() -> Params {
        Params {
            interval: 5.0,
            call_timeout: 120.0,
            failure_limit: 2,
            spawn_delay: 3.0,
            horizon: 7200.0,
            sample_every: 1.0,
            latency: AimdConfig {
                slo: Millis::from_duration(config::DEFAULT_TTFT_SLO),
                min: config::DEFAULT_MIN_LIMIT,
                max: config::DEFAULT_MAX_LIMIT,
                backoff: config::DEFAULT_BACKOFF,
                dwell: Millis::from_duration(config::DEFAULT_DWELL),
            },
        }
    }
}

/// One sample of the series plots draw.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds.
    pub t: f64,
    /// GPU memory used, bytes.
    pub gpu_used: u64,
    /// KV tokens held by the engine.
    pub kv_used: u64,
    /// Tasks running (dispatched, not finished).
    pub running: u32,
    /// Tasks ready on the board.
    pub waiting: u32,
}

/// What one strategy did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// Row label.
    pub strategy: String,
    /// Tasks created.
    pub tasks: usize,
    /// Tasks done by the horizon.
    pub completed: usize,
    /// Tasks blocked after `failure_limit` failures.
    pub blocked: usize,
    /// Tasks done per hour of simulated time.
    pub tasks_per_hour: f64,
    /// Calls sent.
    pub calls: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Calls refused out of memory.
    pub ooms: u64,
    /// Calls refused as too long for a slot or the pool.
    pub overflows: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// CPU offloads.
    pub offloads: u64,
    /// TTFT percentiles p50, p95, p99, seconds.
    pub ttft: [f64; 3],
    /// GPU memory mean, p99, max, bytes.
    pub gpu: [u64; 3],
    /// Highest KV tokens held.
    pub kv_peak: u64,
    /// KV tokens held by the engine: mean, p99, max over the samples.
    pub kv: [u64; 3],
    /// Share of samples with the engine idle while ready tasks waited.
    pub idle_with_work: f64,
    /// When the last task finished, if every task did.
    pub makespan: Option<f64>,
    /// Per pool, where the host has more than one (memory columns above are their sums).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolUse>,
    /// Samples for plots (every `sample_every`).
    #[serde(skip)]
    pub series: Vec<Point>,
}

/// What one pool of a several-pool host held.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PoolUse {
    /// Most KV tokens its engine held at a sample.
    pub kv_max: u64,
    /// Most GPU memory used at a sample, bytes.
    pub gpu_max: u64,
    /// Preemptions in its engine.
    pub preemptions: u64,
}

impl Outcome {
    /// Share of calls that timed out.
    pub fn timeout_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.timeouts as f64 / self.calls as f64
        }
    }
}

/// Where a simulated task is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TaskPhase {
    Waiting,
    Running,
    Done,
    Blocked,
}

#[derive(Debug, Clone)]
struct Task {
    phase: TaskPhase,
    failures: u32,
    epoch: u32,
    turn: usize,
    outstanding: u32,
    started: f64,
    waiting_since: f64,
    requests: Vec<u64>,
}

/// What the simulator's event queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Arrive(usize),
    Dispatch,
    Sample,
    Turn(usize, u32),
    /// An outside client's connection sends its next call.
    Outside(u32),
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How often (simulated milliseconds) a run reports its progress.
const PROGRESS_EVERY_MS: u64 = 60_000;

/// Mean, p99 and max of samples (zeros when there are none).
fn mean_p99_max(mut v: Vec<u64>) -> [u64; 3] {
    if v.is_empty() {
        return [0; 3];
    }
    v.sort_unstable();
    let mean = (v.iter().map(|&m| u128::from(m)).sum::<u128>() / v.len() as u128) as u64;
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [mean, q(0.99), q(1.0)]
}

/// The simulation of one strategy.
pub struct Run<'a> {
    specs: &'a [TaskSpec],
    /// Each pool's GPU and engine; the first is also the host whose memory Hermes's guard
    /// reads and the engine an outside client calls.
    hosts: &'a [Host],
    /// Each profile's pool.
    pool_of_profile: &'a [usize],
    params: &'a Params,
    policy: Policy,
    strategy: &'a Strategy,
    /// One engine per pool.
    engines: Vec<Engine>,
    /// Per engine, an iteration under way on a several-pool host: when it ends, and the
    /// events it produced, delivered then (with one pool an iteration's events are delivered
    /// as it is taken, and the clock jumps to its end).
    stepping: Vec<Option<(f64, Vec<Event>)>>,
    /// Per pool, the most KV tokens and GPU bytes seen at a sample.
    pool_max: Vec<(u64, u64)>,
    peaks: Vec<PeakStats>,
    /// Per profile, how fast its finished tasks' context grew (KV tokens per minute of run).
    growth: Vec<PeakStats>,
    /// What `peaks` imply, per profile (kept up to date as tasks finish: the Student's t
    /// quantile behind them is too costly to recompute at every decision).
    learned: Vec<Option<WorstCase>>,
    spread: Vec<Option<Spread>>,
    /// Running and ready counts as of the last state change (`None`: recount). Tasks change
    /// state far less often than samples are taken.
    counts: Option<(u32, u32)>,
    /// Bumped on every task state change or arrival (with `counts`).
    generation: u64,
    /// The last governor decision released nothing: its generation and the KV tokens and GPU
    /// bytes then in use in each pool. Until a task changes state, or memory in use drops,
    /// the decision would release nothing again (time passing only adds starvation
    /// reservations), so it is not recomputed.
    idle_decision: Option<(u64, Vec<(u64, u64)>)>,
    tasks: Vec<Task>,
    heap: BinaryHeap<Reverse<(u64, u64, SimEvent)>>,
    seq: u64,
    next_req: u64,
    now: f64,
    ttfts: Vec<f64>,
    calls: u64,
    timeouts: u64,
    series: Vec<Point>,
    idle_samples: u64,
    finished_last: f64,
    ids: Vec<TaskId>,
    profile_ids: Vec<ProfileId>,
    /// Each profile's lane, same order.
    lanes: Vec<String>,
    /// Tasks that arrived and are not done or blocked (pruned lazily).
    active: Vec<usize>,
    /// Per pool, calls held at llm-d's gateway while the pool is saturated (empty for other
    /// strategies).
    gateway: Vec<VecDeque<Request>>,
    /// The governor's latency limit, where it charges slots by the calls in flight (`None`:
    /// other strategies, or no pool with slots).
    limit: Option<Aimd>,
}

/// The governor's latency limit where a pool has fixed slots (`None` elsewhere, and for other
/// strategies), open, and floored at the slots of those pools: that many single-call tasks
/// never queue behind each other, which is what charging each its declared slot admitted
/// before (issue 14), so the limit only bounds the oversubscription that charging calls in
/// flight allows. Without the floor a queue the board does not cause (an outside client on
/// the server) holds the board to one task (`--scenario outside-client`: 23 tasks to 9).
fn slot_limit(strategy: &Strategy, hosts: &[Host], config: AimdConfig) -> Option<Aimd> {
    if !matches!(strategy, Strategy::Governor | Strategy::GovernorDeclared) {
        return None;
    }
    let slots: usize = hosts
        .iter()
        .map(|h| match h.regime {
            Regime::Slots { slots, .. } => slots,
            _ => 0,
        })
        .sum();
    (slots > 0).then(|| {
        Aimd::open(AimdConfig {
            min: config.min.max(u32::try_from(slots).unwrap_or(u32::MAX)),
            ..config
        })
    })
}

fn micros(t: f64) -> u64 {
    (t * 1e6).max(0.0) as u64
}

impl<'a> Run<'a> {
    /// A run of `strategy` on `specs`, on one pool per host of `hosts` (at least one), each
    /// profile's calls sent to its pool's engine (`pool_of_profile`; missing: the first).
    pub fn new(
        specs: &'a [TaskSpec],
        hosts: &'a [Host],
        pool_of_profile: &'a [usize],
        params: &'a Params,
        policy: &'a Policy,
        strategy: &'a Strategy,
    ) -> Run<'a> {
        let tasks = specs
            .iter()
            .map(|s| Task {
                phase: TaskPhase::Waiting,
                failures: 0,
                epoch: 0,
                turn: 0,
                outstanding: 0,
                started: 0.0,
                waiting_since: s.arrival,
                requests: Vec::new(),
            })
            .collect();
        let mut policy = policy.clone();
        if *strategy == Strategy::GovernorDeclared {
            for p in &mut policy.profiles {
                p.footprint = FootprintMode::Declared;
            }
        }
        assert!(!hosts.is_empty(), "a run needs a host");
        let mut r = Run {
            specs,
            hosts,
            pool_of_profile,
            params,
            peaks: vec![PeakStats::default(); policy.profiles.len()],
            growth: vec![PeakStats::default(); policy.profiles.len()],
            learned: vec![None; policy.profiles.len()],
            spread: vec![None; policy.profiles.len()],
            counts: None,
            generation: 0,
            idle_decision: None,
            profile_ids: policy.profiles.iter().map(|p| p.id.clone()).collect(),
            lanes: policy.profiles.iter().map(|p| p.lane.clone()).collect(),
            policy,
            strategy,
            engines: hosts
                .iter()
                .map(|h| Engine::new(h.regime, h.speed, h.kv_bytes_per_token))
                .collect(),
            stepping: vec![None; hosts.len()],
            pool_max: vec![(0, 0); hosts.len()],
            tasks,
            heap: BinaryHeap::new(),
            seq: 0,
            next_req: 0,
            now: 0.0,
            ttfts: Vec::new(),
            calls: 0,
            timeouts: 0,
            series: Vec::new(),
            idle_samples: 0,
            finished_last: 0.0,
            ids: (0..specs.len())
                .map(|i| TaskId::from(format!("t{i}")))
                .collect(),
            active: Vec::new(),
            gateway: vec![VecDeque::new(); hosts.len()],
            limit: slot_limit(strategy, hosts, params.latency),
        };
        if let Strategy::VllmWatermark(w) = strategy {
            for e in &mut r.engines {
                e.set_kv_watermark(*w);
            }
        }
        for (i, s) in specs.iter().enumerate() {
            r.at(s.arrival, SimEvent::Arrive(i));
        }
        r.at(0.0, SimEvent::Dispatch);
        r.at(0.0, SimEvent::Sample);
        if let Some(c) = hosts[0].outside {
            // Connections start a second apart, so they do not all prefill at once.
            for k in 0..c.connections {
                r.at(
                    f64::from(k) * c.think_s / f64::from(c.connections.max(1)),
                    SimEvent::Outside(k),
                );
            }
        }
        r
    }

    fn at(&mut self, t: f64, ev: SimEvent) {
        self.seq += 1;
        self.heap.push(Reverse((micros(t), self.seq, ev)));
    }

    fn arrived(&self, i: usize) -> bool {
        self.specs[i].arrival <= self.now
    }

    /// The first pool's host: the machine Hermes's guard reads, the outside client's engine.
    fn host(&self) -> &Host {
        &self.hosts[0]
    }

    /// The pool a task's calls go to (an outside client's: the first).
    fn pool_of(&self, task: usize) -> usize {
        self.specs
            .get(task)
            .and_then(|s| self.pool_of_profile.get(s.profile))
            .copied()
            .filter(|&k| k < self.engines.len())
            .unwrap_or(0)
    }

    fn free_for_requests(&self, k: usize) -> u64 {
        let host = &self.hosts[k];
        let req = self.engines[k].request_bytes();
        let n = host.neighbour_at(self.now, req);
        host.total.saturating_sub(host.baseline + n)
    }

    /// GPU memory used in pool `k`.
    fn gpu_used_in(&self, k: usize) -> u64 {
        let host = &self.hosts[k];
        let req = self.engines[k].request_bytes();
        let workers = if k == 0 && host.memory.unified {
            // One memory: the workers' RSS is in what the telemetry reads too.
            host.memory.worker_rss * self.running_count() as u64
        } else {
            0
        };
        host.baseline + req + host.neighbour_at(self.now, req) + workers
    }

    /// GPU memory used, every pool together.
    fn gpu_used(&self) -> u64 {
        (0..self.engines.len()).map(|k| self.gpu_used_in(k)).sum()
    }

    /// KV tokens held, every pool together.
    fn kv_used(&self) -> u64 {
        self.engines.iter().map(Engine::kv_used_tokens).sum()
    }

    /// GPU bytes requests allocated, every pool together.
    fn request_bytes(&self) -> u64 {
        self.engines.iter().map(Engine::request_bytes).sum()
    }

    fn running_count(&self) -> usize {
        match self.counts {
            Some((r, _)) => r as usize,
            None => self
                .active
                .iter()
                .filter(|&&i| self.tasks[i].phase == TaskPhase::Running)
                .count(),
        }
    }

    /// Whether llm-d's gateway holds calls to pool `k` back now (metrics read as of now).
    /// Each pool is its own llm-d pool: one endpoint, one queue.
    fn saturated(&self, k: usize) -> bool {
        let now_ms = micros(self.now) / 1000;
        let e = &self.engines[k];
        let m = EndpointMetrics {
            at_ms: now_ms,
            waiting: e.waiting() as u64,
            running: e.running() as u64,
            kv_usage: e.kv_usage(),
        };
        peers::saturated(&[peers::saturation(Some(&m), e.in_flight() as u64, now_ms)])
    }

    /// Release calls from llm-d's gateway to pool `k` while it is not saturated. A released
    /// call's timeout clock keeps running from when it was sent.
    fn drain_gateway(&mut self, k: usize) {
        while !self.gateway[k].is_empty() && !self.saturated(k) {
            if let Some(req) = self.gateway[k].pop_front() {
                let sent = req.submitted;
                self.engines[k].submit(req, sent);
            }
        }
    }

    /// Send a call to its pool: straight to the engine, or through llm-d's gateway.
    fn send(&mut self, req: Request) {
        let k = self.pool_of(req.task);
        if *self.strategy == Strategy::LlmdFlowControl {
            self.drain_gateway(k);
            if self.gateway[k].is_empty() && !self.saturated(k) {
                self.engines[k].submit(req, self.now);
            } else {
                self.gateway[k].push_back(req);
            }
        } else {
            self.engines[k].submit(req, self.now);
        }
    }

    /// Take the next iteration of every busy engine not in one (from now, up to `until` for
    /// the events queued), and return the engine whose iteration ends first, if it ends by
    /// `until` (with one pool: whenever it ends).
    fn step_engines(&mut self, until: f64) -> Option<usize> {
        for k in 0..self.engines.len() {
            if self.stepping[k].is_none() && self.engines[k].busy() && self.now < until {
                let free = self.free_for_requests(k);
                let mut events = Vec::new();
                let d = self.engines[k].step(self.now, until, free, &mut events);
                self.stepping[k] = Some((self.now + d, events));
            }
        }
        let (k, end) = self
            .stepping
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.as_ref().map(|(end, _)| (k, *end)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        (self.engines.len() == 1 || end <= until).then_some(k)
    }

    /// Run to the horizon (or until every task is done or blocked).
    pub fn run(self) -> Outcome {
        self.run_reporting(&AtomicU64::new(0))
    }

    /// [`Run::run`], adding the simulated milliseconds it has covered to `done_ms` as it goes
    /// (about every simulated minute), and the rest up to the horizon when it ends, so that a
    /// progress bar over many runs sums to runs × horizon. It changes nothing in the run.
    pub fn run_reporting(mut self, done_ms: &AtomicU64) -> Outcome {
        let horizon_ms = self.params.horizon_ms();
        let mut reported_ms = 0u64;
        let mut open = self.specs.len();
        while self.now < self.params.horizon && open > 0 {
            let now_ms = ((self.now * 1000.0) as u64).min(horizon_ms);
            if now_ms >= reported_ms + PROGRESS_EVERY_MS {
                done_ms.fetch_add(now_ms - reported_ms, Ordering::Relaxed);
                reported_ms = now_ms;
            }
            let next = self
                .heap
                .peek()
                .map_or(self.params.horizon, |Reverse((t, _, _))| *t as f64 / 1e6);
            if let Some(k) = self.step_engines(next)
                && let Some((end, events)) = self.stepping[k].take()
            {
                let ran = end > self.now;
                if ran {
                    self.now = end;
                }
                for e in events {
                    open -= self.on_engine(e);
                }
                if !self.gateway[k].is_empty() {
                    self.drain_gateway(k);
                }
                // With several pools another iteration may end before the next event.
                if ran || self.engines.len() > 1 {
                    continue;
                }
            }
            let Some(Reverse((t, _, ev))) = self.heap.pop() else {
                break;
            };
            self.now = self.now.max(t as f64 / 1e6);
            open -= self.on_event(ev);
        }
        done_ms.fetch_add(horizon_ms - reported_ms, Ordering::Relaxed);
        self.outcome()
    }

    /// Returns the number of tasks that became done or blocked.
    fn on_engine(&mut self, e: Event) -> usize {
        if let Event::FirstToken { task, .. }
        | Event::Done { task, .. }
        | Event::Failed { task, .. } = e
            && task >= self.specs.len()
        {
            // The outside client's call: its connection thinks, then sends the next.
            if let (Event::Done { .. } | Event::Failed { .. }, Some(c)) = (&e, self.host().outside)
            {
                let conn = (task - self.specs.len()) as u32;
                self.at(self.now + c.think_s, SimEvent::Outside(conn));
            }
            return 0;
        }
        match e {
            Event::FirstToken { ttft, .. } => {
                self.ttfts.push(ttft);
                self.feed_limit(LimitOutcome::Completed {
                    ttft: Millis((ttft * 1000.0) as u64),
                });
                0
            }
            Event::Done { id, task } => {
                let t = &mut self.tasks[task];
                if t.phase != TaskPhase::Running || !t.requests.contains(&id) {
                    return 0;
                }
                t.requests.retain(|&r| r != id);
                t.outstanding -= 1;
                if self.limit.is_some() {
                    // A slot freed: the governor charges its task one slot less.
                    self.generation += 1;
                }
                let t = &mut self.tasks[task];
                if t.outstanding > 0 {
                    return 0;
                }
                t.turn += 1;
                if t.turn == 1 {
                    // Its context is seen from now on: the governor charges it differently
                    // (an idle decision must be recomputed).
                    self.generation += 1;
                }
                if t.turn >= self.specs[task].calls.len() {
                    t.phase = TaskPhase::Done;
                    self.counts = None;
                    self.generation += 1;
                    self.finished_last = self.now;
                    // What the engine reports as the task's peak context (DESIGN §4).
                    let minutes = (self.now - t.started) / 60.0;
                    let spec = &self.specs[task];
                    if let (Some(s), Some(g), Some(p)) = (
                        self.peaks.get_mut(spec.profile),
                        self.growth.get_mut(spec.profile),
                        self.policy.profiles.get(spec.profile),
                    ) {
                        s.observe(spec.peak_context());
                        // How fast its context grew over its run, all its requests together:
                        // what the pass-through sees of a task from its first to its last call.
                        let first = spec.calls.first().map_or(0, |c| c.prompt);
                        let grown =
                            spec.peak_context().saturating_sub(first) * u64::from(spec.streams);
                        if minutes > 0.0 {
                            g.observe((grown as f64 / minutes).ceil() as u64);
                        }
                        self.learned[spec.profile] =
                            s.upper().map(|u| learned_worst_case(&p.declared, u));
                        let growth = g.spread_per_request().unwrap_or((0, 0));
                        self.spread[spec.profile] =
                            learned_spread(&p.declared, s).map(|sp| Spread {
                                growth_per_min_kv_tokens: growth.0,
                                growth_sd_per_min_kv_tokens: growth.1,
                                ..sp
                            });
                    }
                    return 1;
                }
                let (epoch, gap) = (t.epoch, self.specs[task].calls[t.turn].gap_before);
                self.at(self.now + gap, SimEvent::Turn(task, epoch));
                0
            }
            Event::Failed { id, task, why } => {
                debug_assert!(matches!(why, Failure::Oom | Failure::Overflow));
                // A failure delivered after its task's run ended (on a several-pool host an
                // iteration's events arrive when it ends) must not fail the next run.
                if !self.tasks[task].requests.contains(&id) {
                    return 0;
                }
                self.fail_run(task)
            }
        }
    }

    fn fail_run(&mut self, task: usize) -> usize {
        let reqs = std::mem::take(&mut self.tasks[task].requests);
        let k = self.pool_of(task);
        for r in reqs {
            if !self.engines[k].cancel(r) {
                self.gateway[k].retain(|q| q.id != r);
            }
        }
        let t = &mut self.tasks[task];
        if t.phase != TaskPhase::Running {
            return 0;
        }
        t.failures += 1;
        t.epoch += 1;
        t.outstanding = 0;
        self.counts = None;
        self.generation += 1;
        if t.failures >= self.params.failure_limit {
            t.phase = TaskPhase::Blocked;
            return 1;
        }
        t.phase = TaskPhase::Waiting;
        t.turn = 0;
        t.waiting_since = self.now;
        0
    }

    fn on_event(&mut self, ev: SimEvent) -> usize {
        match ev {
            SimEvent::Arrive(i) => {
                self.active.push(i);
                self.counts = None;
                self.generation += 1;
                0
            }
            SimEvent::Dispatch => {
                self.dispatch();
                self.at(self.now + self.params.interval, SimEvent::Dispatch);
                0
            }
            SimEvent::Sample => {
                let mut closed = 0;
                for k in 0..self.engines.len() {
                    let stalled = self.engines[k].stalled(self.now - self.params.call_timeout);
                    for (id, task) in stalled {
                        if task >= self.specs.len() {
                            continue; // the outside client waits as long as it takes
                        }
                        if self.tasks[task].requests.contains(&id) {
                            self.timeouts += 1;
                            self.feed_limit(LimitOutcome::Dropped);
                            closed += self.fail_run(task);
                        } else {
                            self.engines[k].cancel(id);
                        }
                    }
                    if !self.gateway[k].is_empty() {
                        let before = self.now - self.params.call_timeout;
                        let stalled: Vec<usize> = self.gateway[k]
                            .iter()
                            .filter(|q| q.submitted < before)
                            .map(|q| q.task)
                            .collect();
                        for task in stalled {
                            self.timeouts += 1;
                            self.feed_limit(LimitOutcome::Dropped);
                            closed += self.fail_run(task);
                        }
                        self.drain_gateway(k);
                    }
                }
                self.sample();
                self.at(self.now + self.params.sample_every, SimEvent::Sample);
                closed
            }
            SimEvent::Turn(task, epoch) => {
                let t = &self.tasks[task];
                if t.phase != TaskPhase::Running || t.epoch != epoch {
                    return 0;
                }
                let call = self.specs[task].calls[t.turn];
                let streams = self.specs[task].streams;
                for _ in 0..streams {
                    self.next_req += 1;
                    let id = self.next_req;
                    self.calls += 1;
                    self.send(Request {
                        id,
                        task,
                        prompt: call.prompt,
                        output: call.output,
                        submitted: self.now,
                    });
                    self.tasks[task].requests.push(id);
                }
                self.tasks[task].outstanding = streams;
                0
            }
            SimEvent::Outside(conn) => {
                if let Some(c) = self.host().outside {
                    self.next_req += 1;
                    self.engines[0].submit(
                        Request {
                            id: self.next_req,
                            task: self.specs.len() + conn as usize,
                            prompt: c.prompt,
                            output: c.output,
                            submitted: self.now,
                        },
                        self.now,
                    );
                }
                0
            }
        }
    }

    fn ready(&self, i: usize) -> bool {
        self.tasks[i].phase == TaskPhase::Waiting
            && self.arrived(i)
            && self.specs[i]
                .parent
                .is_none_or(|p| self.tasks[p].phase == TaskPhase::Done)
    }

    fn prune(&mut self) {
        let tasks = &self.tasks;
        self.active
            .retain(|&i| matches!(tasks[i].phase, TaskPhase::Waiting | TaskPhase::Running));
    }

    fn sample(&mut self) {
        let (running, waiting) = match self.counts {
            Some(c) => c,
            None => {
                // One pass; finished tasks still in `active` (it is pruned at dispatch) are
                // neither running nor ready and count for nothing.
                let (mut running, mut waiting) = (0u32, 0u32);
                for &i in &self.active {
                    if self.tasks[i].phase == TaskPhase::Running {
                        running += 1;
                    } else if self.ready(i) {
                        waiting += 1;
                    }
                }
                self.counts = Some((running, waiting));
                (running, waiting)
            }
        };
        if !self.engines.iter().any(Engine::busy) && waiting > 0 {
            self.idle_samples += 1;
        }
        if self.engines.len() > 1 {
            for k in 0..self.engines.len() {
                let (kv, gpu) = (self.engines[k].kv_used_tokens(), self.gpu_used_in(k));
                let m = &mut self.pool_max[k];
                *m = (m.0.max(kv), m.1.max(gpu));
            }
        }
        self.series.push(Point {
            t: self.now,
            gpu_used: self.gpu_used(),
            kv_used: self.kv_used(),
            running,
            waiting,
        });
    }

    /// Ready tasks in Hermes's order: priority, then creation.
    /// The first `limit` of them (all when `None`).
    /// Only the profiles with room (`room`; `None`: every profile): a capped
    /// profile's tasks would be skipped anyway; leaving them out of the sort keeps a long
    /// backlog from being sorted every tick.
    fn ready_in_order_of(&self, limit: Option<usize>, room: Option<&[bool]>) -> Vec<usize> {
        // Hermes's order: priority desc, then arrival, then index. Keys are built once per
        // call and sorted unstably (they are unique), which is several times faster than a
        // comparator that looks both sides up on every comparison.
        let mut keyed: Vec<(std::cmp::Reverse<i64>, u64, usize)> = self
            .active
            .iter()
            .copied()
            .filter(|&i| self.ready(i) && room.is_none_or(|r| r[self.specs[i].profile]))
            .map(|i| {
                let s = &self.specs[i];
                // Arrivals are finite and ≥ 0, where the bit pattern orders like the value.
                (
                    std::cmp::Reverse(s.priority),
                    s.arrival.max(0.0).to_bits(),
                    i,
                )
            })
            .collect();
        if let Some(k) = limit.filter(|&k| k < keyed.len()) {
            // Only the first k matter (a cap's free places): select them, sort those.
            if k == 0 {
                return Vec::new();
            }
            keyed.select_nth_unstable(k - 1);
            keyed.truncate(k);
        }
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, i)| i).collect()
    }

    fn start(&mut self, i: usize) {
        self.counts = None;
        self.generation += 1;
        let t = &mut self.tasks[i];
        t.phase = TaskPhase::Running;
        t.turn = 0;
        t.started = self.now;
        let epoch = t.epoch;
        self.at(self.now + self.params.spawn_delay, SimEvent::Turn(i, epoch));
    }

    fn dispatch(&mut self) {
        self.prune();
        let running: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|&i| self.tasks[i].phase == TaskPhase::Running)
            .collect();
        let guard = match self.strategy {
            Strategy::HermesGuard(_) => {
                let m = &self.host().memory;
                peers::guard_tier(m.available(running.len(), self.request_bytes()), m.total)
                    .allowance()
            }
            _ => None,
        };
        if guard == Some(0) {
            return;
        }
        let limit = match self.strategy {
            Strategy::PerTick(n) => Some(*n as usize),
            Strategy::LiveCap(n) => Some((*n as usize).saturating_sub(running.len())),
            // The governor orders the board itself; here only "anything ready?" matters.
            Strategy::Governor | Strategy::GovernorDeclared => Some(1),
            _ => None,
        };
        // Running tasks per profile, where a strategy caps profiles (counted once, used for the
        // room check and the choice below).
        let per_running: Option<Vec<u32>> = match self.strategy {
            Strategy::ProfilePools(caps)
            | Strategy::HermesProfileCaps(caps)
            | Strategy::HermesGuard(Some(caps)) => {
                let mut per: Vec<u32> = vec![0; caps.len()];
                for &i in &running {
                    per[self.specs[i].profile] += 1;
                }
                Some(per)
            }
            _ => None,
        };
        let room: Option<Vec<bool>> = match (self.strategy, &per_running) {
            (
                Strategy::ProfilePools(caps)
                | Strategy::HermesProfileCaps(caps)
                | Strategy::HermesGuard(Some(caps)),
                Some(per),
            ) => Some(per.iter().zip(caps).map(|(n, c)| n < c).collect()),
            _ => None,
        };
        if room.as_ref().is_some_and(|r| !r.contains(&true)) {
            return;
        }
        let ready = self.ready_in_order_of(limit, room.as_deref());
        if ready.is_empty() {
            return;
        }
        let chosen: Vec<usize> = match self.strategy {
            Strategy::PerTick(n) => ready.into_iter().take(*n as usize).collect(),
            Strategy::LiveCap(n) => ready
                .into_iter()
                .take((*n as usize).saturating_sub(running.len()))
                .collect(),
            Strategy::Unbounded | Strategy::LlmdFlowControl | Strategy::VllmWatermark(_) => ready,
            Strategy::HermesGuard(None) => ready
                .into_iter()
                .take(guard.unwrap_or(usize::MAX))
                .collect(),
            Strategy::ProfilePools(caps)
            | Strategy::HermesProfileCaps(caps)
            | Strategy::HermesGuard(Some(caps)) => {
                let mut per = per_running.unwrap_or_else(|| vec![0; caps.len()]);
                let mut out = Vec::new();
                for i in ready {
                    let p = self.specs[i].profile;
                    if per[p] < caps[p] {
                        per[p] += 1;
                        out.push(i);
                    }
                }
                out.truncate(guard.unwrap_or(usize::MAX));
                out
            }
            Strategy::Governor | Strategy::GovernorDeclared => {
                let in_use: Vec<(u64, u64)> = (0..self.engines.len())
                    .map(|k| (self.engines[k].kv_used_tokens(), self.gpu_used_in(k)))
                    .collect();
                if self.idle_decision.as_ref().is_some_and(|(g, was)| {
                    *g == self.generation
                        && in_use
                            .iter()
                            .zip(was)
                            .all(|(now, then)| now.0 >= then.0 && now.1 >= then.1)
                }) {
                    return;
                }
                let chosen = self.governor(&running);
                self.idle_decision = chosen.is_empty().then_some((self.generation, in_use));
                chosen
            }
            Strategy::Clairvoyant => self.clairvoyant(&running, ready),
        };
        for i in chosen {
            self.start(i);
        }
    }

    /// What the governor's telemetry reads of pool `k` now.
    fn pool_observation(&self, k: usize) -> PoolObservation {
        let now = Millis(micros(self.now) / 1000);
        let host = &self.hosts[k];
        let used = self.gpu_used_in(k);
        let kv_used = self.engines[k].kv_used_tokens();
        let engine = match host.regime {
            Regime::Paged {
                capacity_tokens, ..
            } => Some(EngineSample {
                at: now,
                kv_capacity_tokens: Some(capacity_tokens),
                kv_used_tokens: Some(kv_used),
                slots: None,
                slot_context_tokens: None,
            }),
            // As the llama.cpp adapter reads `/slots`: the capacity is the slots' n_ctx summed.
            Regime::Slots { slots, slot_ctx } => Some(EngineSample {
                at: now,
                kv_capacity_tokens: Some((slots as u64).saturating_mul(slot_ctx)),
                kv_used_tokens: Some(kv_used),
                slots: u32::try_from(slots).ok(),
                slot_context_tokens: Some(slot_ctx),
            }),
            // A per-request engine (Ollama-like) answers with nothing the decision needs; it
            // answers, so a pool that reads its engine does not hold.
            Regime::PerRequest { .. } => Some(EngineSample {
                at: now,
                ..EngineSample::default()
            }),
        };
        PoolObservation {
            gpu: Some(GpuSample {
                at: now,
                total: Bytes(host.total),
                used: Bytes(used),
                free: Bytes(host.total.saturating_sub(used)),
            }),
            baseline: Some(Bytes(host.baseline)),
            engine,
        }
    }

    fn governor(&self, running: &[usize]) -> Vec<usize> {
        let now = Millis(micros(self.now) / 1000);
        let obs = Observation {
            now,
            pools: (0..self.engines.len())
                .map(|k| self.pool_observation(k))
                .collect(),
            running: running
                .iter()
                .map(|&i| RunningTask {
                    id: self.ids[i].clone(),
                    assignee: self.profile_ids[self.specs[i].profile].to_string(),
                    since: Millis(micros(self.tasks[i].started) / 1000),
                    context_tokens: self.context_seen(i),
                    requests_in_flight: self.requests_seen(i),
                })
                .collect(),
            waiting: self
                .active
                .iter()
                .copied()
                .filter(|&i| self.tasks[i].phase == TaskPhase::Waiting)
                .map(|i| {
                    let p = &self.profile_ids[self.specs[i].profile];
                    WaitingTask {
                        id: self.ids[i].clone(),
                        profile: Some(p.clone()),
                        assignee: self.lanes[self.specs[i].profile].clone(),
                        priority: self.specs[i].priority,
                        created_at: Millis(micros(self.specs[i].arrival) / 1000),
                        waiting_since: Millis(micros(self.tasks[i].waiting_since) / 1000),
                        readiness: if self.ready(i) {
                            Readiness::Ready
                        } else {
                            Readiness::WaitingOnParent
                        },
                    }
                })
                .collect(),
            dual_dispatcher: None,
            latency_limit: self.limit.as_ref().map(ConcurrencyLimit::limit),
            learned: self.learned.clone(),
            spread: self.spread.clone(),
        };
        let d = decide(&self.policy, &obs);
        // Ids are `t{index}` (see `ids`): no lookup table per decision.
        d.release
            .iter()
            .filter_map(|r| r.id.0.strip_prefix('t')?.parse().ok())
            .collect()
    }

    /// The requests task `i` has at the engine now, as the pass-through sees them: `None`
    /// before its first call (the pass-through has not seen it yet).
    fn requests_seen(&self, i: usize) -> Option<u32> {
        let t = &self.tasks[i];
        (t.turn > 0 || t.outstanding > 0).then_some(t.outstanding)
    }

    /// Feed one call's outcome to the governor's latency limit (where it has one), with the
    /// tasks running then; a raise may release more, so an idle decision is recomputed.
    fn feed_limit(&mut self, outcome: LimitOutcome) {
        if self.limit.is_none() {
            return;
        }
        let running = match self.counts {
            Some((running, _)) => running,
            None => {
                let tasks = &self.tasks;
                let n = self
                    .active
                    .iter()
                    .filter(|&&i| tasks[i].phase == TaskPhase::Running)
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        };
        let at = Millis(micros(self.now) / 1000);
        if let Some(limit) = self.limit.as_mut() {
            let before = limit.limit();
            limit.on_sample(Sample {
                at,
                in_flight: running,
                outcome,
            });
            if limit.limit() > before {
                self.generation += 1;
            }
        }
    }

    /// The context task `i` has reached so far, all its requests together, as the pass-through
    /// sees it: its last finished turn's (contexts only grow); `None` before its first.
    fn context_seen(&self, i: usize) -> Option<u64> {
        let t = &self.tasks[i];
        let call = self.specs[i].calls.get(t.turn.checked_sub(1)?)?;
        Some((call.prompt + call.output) * u64::from(self.specs[i].streams))
    }

    fn clairvoyant(&self, running: &[usize], ready: Vec<usize>) -> Vec<usize> {
        let tokens =
            |i: usize| (self.specs[i].peak_context() + 16) * u64::from(self.specs[i].streams);
        let streams = |i: usize| u64::from(self.specs[i].streams);
        // Per pool, what a task takes of it and the room there: KV tokens of a paged pool,
        // slots, or bytes of free GPU memory.
        let cost = |i: usize| {
            let host = &self.hosts[self.pool_of(i)];
            match host.regime {
                Regime::Paged { .. } => tokens(i),
                Regime::Slots { .. } => streams(i),
                Regime::PerRequest { .. } => tokens(i) * host.kv_bytes_per_token,
            }
        };
        let room: Vec<u64> = (0..self.engines.len())
            .map(|k| match self.hosts[k].regime {
                Regime::Paged {
                    capacity_tokens, ..
                } => capacity_tokens,
                Regime::Slots { slots, .. } => slots as u64,
                Regime::PerRequest { .. } => {
                    self.free_for_requests(k) + self.engines[k].request_bytes()
                }
            })
            .collect();
        let mut used = vec![0u64; self.engines.len()];
        for &i in running {
            used[self.pool_of(i)] += cost(i);
        }
        let mut out = Vec::new();
        for i in ready {
            let k = self.pool_of(i);
            if used[k] + cost(i) <= room[k] {
                used[k] += cost(i);
                out.push(i);
            }
        }
        out
    }

    fn outcome(self) -> Outcome {
        let mut ttft = self.ttfts;
        ttft.sort_by(f64::total_cmp);
        let gpu = mean_p99_max(self.series.iter().map(|p| p.gpu_used).collect());
        let kv = mean_p99_max(self.series.iter().map(|p| p.kv_used).collect());
        let completed = self
            .tasks
            .iter()
            .filter(|t| t.phase == TaskPhase::Done)
            .count();
        let blocked = self
            .tasks
            .iter()
            .filter(|t| t.phase == TaskPhase::Blocked)
            .count();
        let span = self.params.horizon.min(self.now.max(1.0));
        let counters = |f: fn(&super::engine::Counters) -> u64| -> u64 {
            self.engines.iter().map(|e| f(&e.counters)).sum()
        };
        let pools = if self.engines.len() > 1 {
            self.engines
                .iter()
                .zip(&self.pool_max)
                .map(|(e, &(kv_max, gpu_max))| PoolUse {
                    kv_max,
                    gpu_max,
                    preemptions: e.counters.preemptions,
                })
                .collect()
        } else {
            Vec::new()
        };
        Outcome {
            strategy: self.strategy.label(),
            tasks: self.specs.len(),
            completed,
            blocked,
            tasks_per_hour: completed as f64 * 3600.0 / span,
            calls: self.calls,
            timeouts: self.timeouts,
            ooms: counters(|c| c.ooms),
            overflows: counters(|c| c.overflows),
            preemptions: counters(|c| c.preemptions),
            offloads: counters(|c| c.offloads),
            ttft: [
                percentile(&ttft, 0.5),
                percentile(&ttft, 0.95),
                percentile(&ttft, 0.99),
            ],
            gpu,
            kv_peak: kv[2],
            kv,
            idle_with_work: if self.series.is_empty() {
                0.0
            } else {
                self.idle_samples as f64 / self.series.len() as f64
            },
            makespan: (completed == self.specs.len()).then_some(self.finished_last),
            pools,
            series: self.series,
        }
    }
}
