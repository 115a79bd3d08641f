//! Domain types of the decision core: units, identifiers, what is observed, what is decided.
//!
//! Everything here is plain data (serde where it crosses a process or a file). No I/O, no
//! clock: time is a [`Millis`] value that the caller puts into the [`Observation`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A number of bytes. Displayed in binary units (`24.0 GiB`), parsed from IEC strings by
/// `config` (never from a bare number: a unitless size is a config error).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// One KiB.
    pub const KIB: u64 = 1 << 10;
    /// One MiB.
    pub const MIB: u64 = 1 << 20;
    /// One GiB.
    pub const GIB: u64 = 1 << 30;

    /// `n` GiB.
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n * Self::GIB)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n * Self::MIB)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self - other`, or zero.
    pub const fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(other.0))
    }

    /// `self + other`, saturating at `u64::MAX`.
    pub const fn saturating_add(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let (v, unit) = if self.0 >= Self::GIB {
            (b / Self::GIB as f64, "GiB")
        } else if self.0 >= Self::MIB {
            (b / Self::MIB as f64, "MiB")
        } else if self.0 >= Self::KIB {
            (b / Self::KIB as f64, "KiB")
        } else {
            return write!(f, "{} B", self.0);
        };
        write!(f, "{v:.1} {unit}")
    }
}

/// A point in time or a duration in milliseconds. Points are Unix epoch milliseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Millis {
        Millis(n * 1000)
    }

    /// The number of milliseconds.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub const fn since(self, earlier: Millis) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }

    /// A duration in whole milliseconds (saturating past `u64::MAX` ms, ~585 million years).
    #[must_use]
    pub fn from_duration(d: std::time::Duration) -> Millis {
        Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1000 && self.0.is_multiple_of(1000) {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

/// A fraction of capacity the governor may fill, in (0, 1] (config `gpu.headroom`). Held in
/// integer parts per million, the precision the admission arithmetic applies it with
/// ([`Headroom::apply`]), so config validation, `plan`, `simulate` and `decide` compute the
/// same ceiling to the unit. Displayed as the decimal fraction (`0.85`, `1`) and serialized
/// as that number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Headroom(u32);

impl Headroom {
    const PER_MILLION: u32 = 1_000_000;

    /// All of the capacity.
    pub const FULL: Headroom = Headroom(Self::PER_MILLION);

    /// `ppm` parts per million.
    ///
    /// # Panics
    ///
    /// When `ppm` is 0 or above a million; in a `const` that fails the build instead.
    pub const fn from_ppm(ppm: u32) -> Headroom {
        assert!(
            ppm >= 1 && ppm <= Self::PER_MILLION,
            "headroom is in (0, 1]"
        );
        Headroom(ppm)
    }

    /// The fraction `f` to the nearest part per million; `None` outside (0, 1] (NaN
    /// included) and below half a part per million, which no ceiling could use.
    pub fn from_fraction(f: f64) -> Option<Headroom> {
        if !(f > 0.0 && f <= 1.0) {
            return None;
        }
        // In (0, 1], so the product is in (0, 1e6] and the cast cannot truncate.
        let ppm = (f * f64::from(Self::PER_MILLION)).round() as u32;
        (ppm >= 1).then_some(Headroom(ppm))
    }

    /// Parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// The fraction (exactly what was parsed, for any fraction of at most six decimals).
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(Self::PER_MILLION)
    }

    /// `value × headroom`, rounded down: the one way a headroom is applied.
    pub fn apply(self, value: u128) -> u128 {
        value * u128::from(self.0) / u128::from(Self::PER_MILLION)
    }
}

impl fmt::Display for Headroom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fraction())
    }
}

impl From<Headroom> for f64 {
    fn from(h: Headroom) -> f64 {
        h.fraction()
    }
}

impl TryFrom<f64> for Headroom {
    type Error = String;

    fn try_from(f: f64) -> Result<Headroom, String> {
        Headroom::from_fraction(f).ok_or_else(|| format!("headroom {f} is outside (0, 1]"))
    }
}

/// An id that is text shared by reference (`Arc<str>`): cloning one, as every decision does
/// for every waiting task, allocates nothing. Serialized as a plain string.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

text_id!(
    /// A Hermes task id (`t_` + 8 hex on Hermes 0.19.0; any string is accepted).
    TaskId
);

text_id!(
    /// The name of a governed profile: the Hermes profile that runs its tasks.
    ProfileId
);

/// Where an engine keeps its KV cache, which decides which capacity pool a task's KV is
/// charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvPlacement {
    /// The engine preallocates its KV pool at start-up (vLLM, SGLang, llama.cpp): NVML
    /// "used" stays flat, so KV is charged in tokens against the engine's KV capacity and
    /// only `extra_bytes` is charged against GPU bytes.
    EnginePool,
    /// The engine allocates per request (Ollama, an unknown OpenAI-compatible server): KV is
    /// charged in bytes against GPU memory.
    GpuBytes,
}

/// A task's worst case in every capacity pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorstCase {
    /// KV bytes (`kv_bytes_per_token × max_context_tokens × requests_per_task`).
    pub kv_bytes: Bytes,
    /// GPU bytes used outside the engine (`extra_bytes`).
    pub extra_bytes: Bytes,
    /// KV tokens (`max_context_tokens × requests_per_task`).
    pub kv_tokens: u64,
    /// Engine slots (`requests_per_task`).
    pub slots: u32,
    /// Context tokens of the largest single request (`max_context_tokens`), checked against
    /// a fixed slot's context (llama.cpp `n_ctx / np`).
    pub request_tokens: u64,
    /// KV bytes one token of context holds (the model's rate; for a catalog model whose
    /// engine honours sliding windows, the average over `request_tokens`). What a learned
    /// context is charged in bytes, so learning never divides it back out of `kv_bytes`.
    pub kv_bytes_per_token: u64,
}

impl WorstCase {
    /// What a profile costs: `requests` requests of up to `request_tokens` context tokens
    /// each, every one holding `kv_per_request` of KV (`kv_bytes_per_token` per token), plus
    /// `extra` outside the engine. The
    /// one rule config validation, `plan` and `simulate` charge a profile by (the KV per
    /// request is the model's, windowed where the engine honours sliding windows).
    pub fn of_requests(
        kv_per_request: Bytes,
        kv_bytes_per_token: u64,
        request_tokens: u64,
        requests: u32,
        extra: Bytes,
    ) -> WorstCase {
        let n = u64::from(requests);
        WorstCase {
            kv_bytes: Bytes(kv_per_request.get().saturating_mul(n)),
            extra_bytes: extra,
            kv_tokens: request_tokens.saturating_mul(n),
            slots: requests,
            request_tokens,
            kv_bytes_per_token,
        }
    }

    /// The bytes this task is charged against GPU memory under `placement`.
    pub fn gpu_bytes(&self, placement: KvPlacement) -> Bytes {
        match placement {
            KvPlacement::EnginePool => self.extra_bytes,
            KvPlacement::GpuBytes => self.kv_bytes.saturating_add(self.extra_bytes),
        }
    }

    /// All the bytes this task can come to (KV + extra), whatever the placement.
    pub fn total_bytes(&self) -> Bytes {
        self.kv_bytes.saturating_add(self.extra_bytes)
    }
}

/// How a profile's charged footprint is chosen (DESIGN §4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FootprintMode {
    /// The declared worst case, always.
    Declared,
    /// The learned upper estimate once enough samples exist (never below the largest observed
    /// peak plus a margin), else the declared worst case.
    Learned,
    /// The larger of declared and learned: a profile that outgrows its declaration is caught.
    #[default]
    Max,
}

/// One capacity pool's policy: a GPU (or several, tensor-parallel) and the engine on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolPolicy {
    /// Pool name (`default` for the single `[gpu]`/`[engine]` pair).
    pub name: String,
    /// Where the engine keeps KV.
    pub kv_placement: KvPlacement,
    /// Fraction of the KV-holding capacity the governor may fill.
    pub headroom: Headroom,
    /// GPU bytes always kept free for the driver and other tenants.
    pub reserve: Bytes,
    /// KV capacity in tokens, when configured (else taken from the engine's metrics).
    pub kv_capacity_tokens: Option<u64>,
    /// Engine slots, when configured (else taken from the engine's metrics).
    pub slots: Option<u32>,
    /// Context tokens per slot, when configured (llama.cpp `n_ctx / np`).
    pub slot_context_tokens: Option<u64>,
    /// Telemetry older than this is stale and makes the pool hold.
    pub max_staleness: Millis,
    /// The pool has an engine endpoint: without a fresh engine sample it holds, whatever
    /// capacities are configured (fail closed: the released work would hit a dead engine).
    #[serde(default)]
    pub needs_engine: bool,
}

/// One governed profile's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilePolicy {
    /// The Hermes profile that runs the work.
    pub id: ProfileId,
    /// The holding assignee governed tasks wait on (not a Hermes profile).
    pub lane: String,
    /// Index into [`Policy::pools`].
    pub pool: usize,
    /// The declared worst case of one task.
    pub declared: WorstCase,
    /// The profile's own cap on running tasks.
    pub max_parallel: Option<u32>,
    /// Tasks' worth of room kept for this profile that other profiles may not take.
    pub guaranteed: u32,
    /// How the charged footprint is chosen.
    pub footprint: FootprintMode,
}

/// Everything the decision needs from the validated config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Capacity pools; at least one.
    pub pools: Vec<PoolPolicy>,
    /// Governed profiles.
    pub profiles: Vec<ProfilePolicy>,
    /// Global cap on running tasks (governed and not) on the board.
    pub max_running: Option<u32>,
    /// Starvation guard: a task held this long gets room reserved for it.
    pub max_wait: Millis,
}

impl Policy {
    /// The profile named `id`, with its index.
    pub fn profile(&self, id: &ProfileId) -> Option<(usize, &ProfilePolicy)> {
        self.profiles.iter().enumerate().find(|(_, p)| &p.id == id)
    }
}

/// A GPU memory sample (NVML memory info v2, summed over the pool's GPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSample {
    /// When it was taken.
    pub at: Millis,
    /// Total memory.
    pub total: Bytes,
    /// Used memory (v2: allocated, not counting `reserved`).
    pub used: Bytes,
    /// Free memory. Headroom is computed from this, never from `total - used`.
    pub free: Bytes,
}

/// An engine sample (from its metrics endpoint, or configured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSample {
    /// When it was taken.
    pub at: Millis,
    /// KV pool capacity in tokens (vLLM `num_gpu_blocks × block_size`).
    pub kv_capacity_tokens: Option<u64>,
    /// KV tokens in use now.
    pub kv_used_tokens: Option<u64>,
    /// Number of slots (llama.cpp `total_slots`, Ollama `NUM_PARALLEL`).
    pub slots: Option<u32>,
    /// Context tokens per slot.
    pub slot_context_tokens: Option<u64>,
}

/// What is known about one pool right now. `None` means unknown: the pool holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolObservation {
    /// The latest GPU sample.
    pub gpu: Option<GpuSample>,
    /// What the GPU holds with no governed task running (weights, other tenants), if known.
    pub baseline: Option<Bytes>,
    /// The latest engine sample.
    pub engine: Option<EngineSample>,
}

/// A task that is running or was released and is not yet seen running (in flight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    /// Task id.
    pub id: TaskId,
    /// The Hermes assignee it runs as (a governed profile, or not).
    pub assignee: String,
    /// When it started or was released.
    pub since: Millis,
    /// The KV tokens its context has reached so far (all its requests together), where the
    /// engine or the pass-through shows it; `None` = not seen. Used only in an engine's KV
    /// pool, for profiles whose growth is learned ([`Spread::growth_per_min_kv_tokens`]).
    #[serde(default)]
    pub context_tokens: Option<u64>,
    /// Its requests at the engine now (sent, not yet answered), where the pass-through or
    /// the simulator sees them; `None` = not seen. Used only in a pool with fixed slots
    /// (llama.cpp `-np`) under a latency limit, where a task holds a slot only while a call
    /// of it is in flight ([`crate::governor::admission::PoolLedger::charge_running`]).
    #[serde(default)]
    pub requests_in_flight: Option<u32>,
}

/// Why a waiting task is not dispatchable regardless of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Dispatchable once released.
    Ready,
    /// `todo` in Hermes: a parent is not done.
    WaitingOnParent,
}

/// A task waiting for the governor, in its lane (or adopted from its profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingTask {
    /// Task id.
    pub id: TaskId,
    /// The governed profile it belongs to (resolved from its lane or assignee), or `None`.
    pub profile: Option<ProfileId>,
    /// Its Hermes assignee as found on the board.
    pub assignee: String,
    /// Hermes priority (higher first).
    pub priority: i64,
    /// Hermes `created_at`, Unix ms (older first among equal priorities).
    pub created_at: Millis,
    /// Since when it has been waiting (for `max_wait`).
    pub waiting_since: Millis,
    /// Whether Hermes would dispatch it.
    pub readiness: Readiness,
}

/// Everything observed at one instant, as values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Now.
    pub now: Millis,
    /// One entry per [`Policy::pools`], same order.
    pub pools: Vec<PoolObservation>,
    /// Tasks running on the board, plus tasks released and not yet seen running.
    pub running: Vec<RunningTask>,
    /// Tasks waiting for a release.
    pub waiting: Vec<WaitingTask>,
    /// A gateway dispatcher also dispatches this board (`Some(detail)`): hold everything.
    pub dual_dispatcher: Option<String>,
    /// The latency limit on running tasks (AIMD), if one is in force.
    pub latency_limit: Option<u32>,
    /// Learned footprints per profile (same order as [`Policy::profiles`]); `None` = none yet.
    pub learned: Vec<Option<WorstCase>>,
    /// How the KV peaks of each profile's finished tasks spread (same order as
    /// [`Policy::profiles`]); `None` = not enough samples. Used only for profiles with
    /// `footprint = "learned"` in an engine's KV pool (see [`crate::governor::admission`]).
    #[serde(default)]
    pub spread: Vec<Option<Spread>>,
}

/// The spread of one profile's per-task KV peak, in tokens (requests per task included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Spread {
    /// An upper confidence bound on the mean peak.
    pub mean_kv_tokens: u64,
    /// The standard deviation of the peaks.
    pub sd_kv_tokens: u64,
    /// An upper confidence bound on how fast a running task's context grows on average, KV
    /// tokens per minute of its run (0 = not learned: running tasks are charged as waiting
    /// ones).
    #[serde(default)]
    pub growth_per_min_kv_tokens: u64,
    /// The standard deviation of that growth across tasks, KV tokens per minute.
    #[serde(default)]
    pub growth_sd_per_min_kv_tokens: u64,
}

/// Why a task is held. Every held task has exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldReason {
    /// Its worst case does not fit in GPU memory under the ceiling.
    VramHeadroom {
        /// Bytes it needs.
        needed: Bytes,
        /// Bytes left under the ceiling.
        free: Bytes,
    },
    /// Its worst case does not fit in the engine's KV pool under the ceiling.
    KvHeadroom {
        /// Tokens it needs.
        needed: u64,
        /// Tokens left under the ceiling.
        free: u64,
    },
    /// The engine has no free slot for it.
    NoSlot {
        /// Slots it needs.
        needed: u32,
        /// Slots free.
        free: u32,
    },
    /// Its profile runs `max_parallel` tasks already.
    PoolFull {
        /// The profile's cap.
        max_parallel: u32,
    },
    /// The board runs `max_running` tasks already.
    MaxRunning {
        /// The global cap.
        max_running: u32,
    },
    /// The latency limit is reached.
    LatencyLimit {
        /// The current limit.
        limit: u32,
    },
    /// Room is kept for another profile's `guaranteed` tasks.
    Guaranteed {
        /// The profile the room is kept for.
        for_profile: ProfileId,
    },
    /// Room is reserved for a task that has waited longer than `max_wait`.
    Reserved {
        /// The starving task.
        for_task: TaskId,
    },
    /// Telemetry is missing or older than `max_staleness`.
    Stale {
        /// What is stale, e.g. `gpu sample 12s old (max_staleness 5s)`.
        detail: String,
    },
    /// A parent is not done.
    WaitingOnParent,
    /// Its lane or assignee is no governed profile.
    UnknownProfile {
        /// The assignee found.
        assignee: String,
    },
    /// A gateway dispatcher dispatches this board too.
    DualDispatcher {
        /// What was detected.
        detail: String,
    },
    /// Even alone it can never fit.
    NeverFits {
        /// Why.
        detail: String,
    },
}

impl HoldReason {
    /// A short stable name (`vram_headroom`, ...) for metrics labels and tables.
    pub fn name(&self) -> &'static str {
        match self {
            HoldReason::VramHeadroom { .. } => "vram_headroom",
            HoldReason::KvHeadroom { .. } => "kv_headroom",
            HoldReason::NoSlot { .. } => "no_slot",
            HoldReason::PoolFull { .. } => "pool_full",
            HoldReason::MaxRunning { .. } => "max_running",
            HoldReason::LatencyLimit { .. } => "latency_limit",
            HoldReason::Guaranteed { .. } => "guaranteed",
            HoldReason::Reserved { .. } => "reserved",
            HoldReason::Stale { .. } => "stale",
            HoldReason::WaitingOnParent => "waiting_on_parent",
            HoldReason::UnknownProfile { .. } => "unknown_profile",
            HoldReason::DualDispatcher { .. } => "dual_dispatcher",
            HoldReason::NeverFits { .. } => "never_fits",
        }
    }
}

impl HoldReason {
    /// The reason in plain words, for people (`status`, `tick`): what it waits for and the
    /// numbers, without the internal name ([`HoldReason::code`] is that, for scripts).
    pub fn plain(&self) -> String {
        match self {
            HoldReason::VramHeadroom { needed, free } => {
                format!("waits for GPU memory: needs {needed}, {free} free under the ceiling")
            }
            HoldReason::KvHeadroom { needed, free } => format!(
                "waits for the engine's KV cache: needs {needed} tokens, {free} free under the ceiling"
            ),
            HoldReason::NoSlot { needed, free } => {
                format!("waits for an engine slot: needs {needed}, {free} free")
            }
            HoldReason::PoolFull { max_parallel } => format!(
                "its profile already runs {max_parallel} tasks (max_parallel = {max_parallel})"
            ),
            HoldReason::MaxRunning { max_running } => format!(
                "the board already runs {max_running} governed tasks (dispatch.max_running)"
            ),
            HoldReason::LatencyLimit { limit } => format!(
                "latency is at its target: {limit} running tasks for now (the limit rises while latency stays good)"
            ),
            HoldReason::Guaranteed { for_profile } => {
                format!("the room left is kept for profile {for_profile} (guaranteed)")
            }
            HoldReason::Reserved { for_task } => format!(
                "the room is reserved for {for_task}, which has waited longer than max_wait"
            ),
            HoldReason::Stale { detail } => {
                format!("the governor cannot see the GPU or engine now, so it holds: {detail}")
            }
            HoldReason::WaitingOnParent => "a parent task is not done yet".to_owned(),
            HoldReason::UnknownProfile { assignee } => format!(
                "'{assignee}' is not a governed profile or lane: add it to the config or reassign the task"
            ),
            HoldReason::DualDispatcher { detail } => {
                format!(
                    "another dispatcher runs on this board, so the governor holds everything: {detail}"
                )
            }
            HoldReason::NeverFits { detail } => format!("it can never fit: {detail}"),
        }
    }

    /// The internal name in CamelCase, as the JSON and the journal spell the reason's kind in
    /// snake_case ([`HoldReason::name`]).
    pub fn code(&self) -> &'static str {
        match self {
            HoldReason::VramHeadroom { .. } => "VramHeadroom",
            HoldReason::KvHeadroom { .. } => "KvHeadroom",
            HoldReason::NoSlot { .. } => "NoSlot",
            HoldReason::PoolFull { .. } => "PoolFull",
            HoldReason::MaxRunning { .. } => "MaxRunning",
            HoldReason::LatencyLimit { .. } => "LatencyLimit",
            HoldReason::Guaranteed { .. } => "Guaranteed",
            HoldReason::Reserved { .. } => "Reserved",
            HoldReason::Stale { .. } => "Stale",
            HoldReason::WaitingOnParent => "WaitingOnParent",
            HoldReason::UnknownProfile { .. } => "UnknownProfile",
            HoldReason::DualDispatcher { .. } => "DualDispatcher",
            HoldReason::NeverFits { .. } => "NeverFits",
        }
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldReason::VramHeadroom { needed, free } => {
                write!(
                    f,
                    "VramHeadroom: needs {needed}, {free} free under the ceiling"
                )
            }
            HoldReason::KvHeadroom { needed, free } => write!(
                f,
                "KvHeadroom: needs {needed} KV tokens, {free} free under the ceiling"
            ),
            HoldReason::NoSlot { needed, free } => {
                write!(f, "NoSlot: needs {needed} engine slot(s), {free} free")
            }
            HoldReason::PoolFull { max_parallel } => {
                write!(f, "PoolFull: profile runs max_parallel = {max_parallel}")
            }
            HoldReason::MaxRunning { max_running } => {
                write!(f, "MaxRunning: board runs max_running = {max_running}")
            }
            HoldReason::LatencyLimit { limit } => {
                write!(f, "LatencyLimit: latency limit is {limit} running tasks")
            }
            HoldReason::Guaranteed { for_profile } => {
                write!(f, "Guaranteed: room kept for profile {for_profile}")
            }
            HoldReason::Reserved { for_task } => {
                write!(
                    f,
                    "Reserved: room reserved for {for_task} (waited max_wait)"
                )
            }
            HoldReason::Stale { detail } => write!(f, "Stale: {detail}"),
            HoldReason::WaitingOnParent => write!(f, "WaitingOnParent: a parent is not done"),
            HoldReason::UnknownProfile { assignee } => {
                write!(
                    f,
                    "UnknownProfile: '{assignee}' is no governed profile or lane"
                )
            }
            HoldReason::DualDispatcher { detail } => write!(f, "DualDispatcher: {detail}"),
            HoldReason::NeverFits { detail } => write!(f, "NeverFits: {detail}"),
        }
    }
}

/// A task chosen for release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Task id.
    pub id: TaskId,
    /// Its profile.
    pub profile: ProfileId,
    /// The worst case it was charged.
    pub charged: WorstCase,
}

/// A task held, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Task id.
    pub id: TaskId,
    /// Its profile, if governed.
    pub profile: Option<ProfileId>,
    /// Why it waits.
    pub reason: HoldReason,
}

/// One pool's budget as the decision saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolBudget {
    /// Pool name.
    pub name: String,
    /// GPU bytes ceiling (`headroom × total − reserve`, or `total − reserve` for an engine pool).
    pub ceiling_bytes: Option<Bytes>,
    /// Projected GPU peak before this decision's releases.
    pub projected_bytes: Option<Bytes>,
    /// Projected GPU peak after them.
    pub projected_after_bytes: Option<Bytes>,
    /// KV token ceiling (`headroom × kv_capacity_tokens`).
    pub ceiling_kv_tokens: Option<u64>,
    /// KV tokens charged before this decision's releases.
    pub charged_kv_tokens: u64,
    /// KV tokens charged after them.
    pub charged_after_kv_tokens: u64,
    /// Engine slots.
    pub slots: Option<u32>,
    /// Slots charged after this decision's releases.
    pub slots_used_after: u32,
    /// Why this pool cannot admit anything right now (stale telemetry), if so.
    pub stale: Option<String>,
}

/// The output of [`crate::governor::decide`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Tasks to release now, in release order.
    pub release: Vec<Release>,
    /// Every other waiting task, in board order, with its reason.
    pub held: Vec<Hold>,
    /// Per pool, the budget as seen.
    pub pools: Vec<PoolBudget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_headroom_of_six_decimals_is_held_shown_and_serialized_as_written() {
        // Every sixth part per million, and both ends: the fraction read back is the number
        // parsed, so tables, JSON and messages print what they printed as an f64.
        for ppm in (1..=1_000_000u32).step_by(6).chain([999_999, 1_000_000]) {
            let written = format!("{}.{:06}", ppm / 1_000_000, ppm % 1_000_000);
            let parsed: f64 = written.parse().unwrap();
            let h = Headroom::from_fraction(parsed).unwrap();
            assert_eq!(h.ppm(), ppm, "{written}");
            assert_eq!(h.fraction(), parsed, "{written}");
            assert_eq!(h.to_string(), parsed.to_string(), "{written}");
        }
        assert_eq!(Headroom::FULL.to_string(), "1");
        assert_eq!(
            serde_json::to_string(&Headroom::from_ppm(850_000)).unwrap(),
            "0.85"
        );
        assert_eq!(
            serde_json::from_str::<Headroom>("0.85").unwrap(),
            Headroom::from_ppm(850_000)
        );
        for outside in [0.0, -0.1, 1.000_001, f64::NAN, 4e-7] {
            assert_eq!(Headroom::from_fraction(outside), None, "{outside}");
        }
        assert!(serde_json::from_str::<Headroom>("1.5").is_err());
    }

    #[test]
    fn a_headroom_applies_rounding_down() {
        let h = Headroom::from_ppm(850_000);
        assert_eq!(h.apply(100), 85);
        assert_eq!(h.apply(99), 84);
        assert_eq!(
            Headroom::FULL.apply(u128::from(u64::MAX)),
            u128::from(u64::MAX)
        );
    }
}
