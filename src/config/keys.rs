//! Every config key with its documentation: the one table `check-config --reference`
//! (`docs/config.md`) is generated from, and where `check-config` finds the words for an
//! optional key that is unset (`# kv_capacity_tokens = (unset: read from the engine)`).
//!
//! It cannot drift from the parser or the defaults unnoticed: a unit test lists the fields
//! serde accepts in every table of `raw` (from its "expected one of" message) and requires each
//! to be here and each key here to be accepted; defaults marked [`KeyDefault::Rendered`] are not
//! typed here at all but read off the rendering of a config that sets nothing, so the reference
//! shows what `check-config` prints. Pure: data and string building.

use super::{ConfigArgs, load_str};
use std::fmt::Write as _;
use std::path::Path;

/// What a key is when the file does not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyDefault {
    /// A fixed default: the reference shows what `check-config` prints for a config that sets
    /// nothing (see [`rendered_defaults`]).
    Rendered,
    /// A default computed from other keys, described in words.
    Derived(&'static str),
    /// Optional, and unset means what the text says; `check-config` prints the key as a
    /// comment with it.
    Unset(&'static str),
    /// Must be set.
    Required,
}

/// One key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    /// `table.key` (`gpu.headroom`), `profiles.key` for a `[[profiles]]` key, or a top-level
    /// key alone. Pools repeat the `gpu.*` and `engine.*` keys under `pools.<name>.`.
    pub id: &'static str,
    /// Its default.
    pub default: KeyDefault,
    /// The TOML type and unit (`size`, `duration`, `tokens`, ...).
    pub unit: &'static str,
    /// What it means to a user.
    pub meaning: &'static str,
    /// Where the number comes from (how to choose it), when that is not obvious.
    pub origin: &'static str,
    /// How to read it off each engine, as (engine, text).
    pub engines: &'static [(&'static str, &'static str)],
    /// The env var and flag that override it, when any.
    pub overrides: &'static str,
}

impl Key {
    const fn new(
        id: &'static str,
        default: KeyDefault,
        unit: &'static str,
        meaning: &'static str,
    ) -> Key {
        Key {
            id,
            default,
            unit,
            meaning,
            origin: "",
            engines: &[],
            overrides: "",
        }
    }

    const fn origin(mut self, origin: &'static str) -> Key {
        self.origin = origin;
        self
    }

    const fn engines(mut self, engines: &'static [(&'static str, &'static str)]) -> Key {
        self.engines = engines;
        self
    }

    const fn overrides(mut self, overrides: &'static str) -> Key {
        self.overrides = overrides;
        self
    }

    /// The table it lives in (`""` at top level).
    pub fn table(&self) -> &'static str {
        self.id.rsplit_once('.').map_or("", |(t, _)| t)
    }
}

/// The tables in the order the reference lists them, with what each is for.
pub(crate) const TABLES: &[(&str, &str)] = &[
    ("", "Top-level keys (before any `[table]`)."),
    (
        "hermes",
        "`[hermes]`: the Hermes install and the board the governor governs.",
    ),
    (
        "gpu",
        "`[gpu]`: the GPU(s) of the pool named `default`. With several pools, each is `[pools.<name>.gpu]` with the same keys (see `examples/two-gpus.toml`).",
    ),
    (
        "engine",
        "`[engine]`: the inference server on that GPU. With several pools, `[pools.<name>.engine]` with the same keys.",
    ),
    (
        "latency",
        "`[latency]`: the AIMD limit on running tasks, driven by time to first token.",
    ),
    (
        "dispatch",
        "`[dispatch]`: how often and how the governor acts on the board.",
    ),
    (
        "http",
        "`[http]`: the `run --listen` endpoint (`/metrics`, `/status`).",
    ),
    (
        "proxy",
        "`[proxy]`: the OpenAI-compatible pass-through of `run`: each governed profile points its Hermes model at `http://<listen>/p/<profile>/v1`, and the governor sees every request (profile, task, tokens, time to first token).",
    ),
    (
        "profiles",
        "`[[profiles]]`: one table per governed Hermes profile (or one file per profile in `profiles_dir`). A profile declares the worst case of one task; the governor admits a task only while that worst case fits under the ceiling. The keys are listed as `profiles.<key>`.",
    ),
];

const VLLM: &str = "vLLM";
const SGLANG: &str = "SGLang";
const LLAMACPP: &str = "llama.cpp";
const OLLAMA: &str = "Ollama";

/// Every key the config file accepts.
pub(crate) const KEYS: &[Key] = &[
    // Top level.
    Key::new(
        "profiles_dir",
        KeyDefault::Unset("only the [[profiles]] tables of this file"),
        "path (relative to the config file)",
        "A directory of profile files, one `*.toml` per profile, read in name order after the `[[profiles]]` tables of this file. A file holds either the profile's keys alone or one or more `[[profiles]]` tables (so the files in the repository's `profiles/` work either way). `check-config` lists the profiles it read as `[[profiles]]` tables.",
    ),
    // [hermes]
    Key::new(
        "hermes.bin",
        KeyDefault::Unset("tick, run and status need it; `kanban-governor doctor` prints it"),
        "absolute path",
        "The `hermes` binary the governor calls to read the board and dispatch. Absolute, because cron and systemd do not share your PATH. `~/` is expanded.",
    )
    .origin("`command -v hermes`, or `kanban-governor doctor`, which finds it.")
    .overrides("KANBAN_GOVERNOR_HERMES_BIN, --hermes-bin"),
    Key::new(
        "hermes.home",
        KeyDefault::Derived("`~/.hermes`"),
        "absolute path",
        "`HERMES_HOME` of the governed board: where Hermes keeps its boards and profiles. `~/` is expanded.",
    )
    .overrides("HERMES_HOME, --hermes-home"),
    Key::new(
        "hermes.board",
        KeyDefault::Rendered,
        "board slug",
        "The board to govern: `default`, or the slug it was created with (`hermes kanban boards create <slug>`: lowercase letters, digits, `-`, `_`).",
    )
    .overrides("KANBAN_GOVERNOR_BOARD, --board"),
    Key::new(
        "hermes.max_semantics",
        KeyDefault::Unset("detected from the Hermes version"),
        "\"live_cap\" or \"per_tick\"",
        "What `hermes kanban dispatch --max N` means: a cap on live tasks (`live_cap`, Hermes 0.19.0 and later) or on tasks started per call (`per_tick`, earlier). Set it only when the detection is wrong (a patched Hermes).",
    ),
    // [gpu]
    Key::new(
        "gpu.index",
        KeyDefault::Rendered,
        "integer or list of integers",
        "The GPU(s) of the pool, as `nvidia-smi` numbers them; a list for a tensor-parallel engine spread over several GPUs (their memory is added up). Set either `index` or `uuid`.",
    )
    .origin("`nvidia-smi -L`. Mind `CUDA_VISIBLE_DEVICES`: the governor uses NVML's numbering, which ignores it."),
    Key::new(
        "gpu.uuid",
        KeyDefault::Unset("the GPUs are chosen by index"),
        "string or list of strings",
        "The GPU(s) by UUID (`GPU-…`, or `MIG-…` for a MIG instance), stable across reboots and driver reorderings, unlike `index`.",
    )
    .origin("`nvidia-smi -L`."),
    Key::new(
        "gpu.telemetry",
        KeyDefault::Rendered,
        "\"nvml\", \"host\", \"static\" or { replay = \"file.jsonl\" }",
        "Where GPU memory readings come from. `nvml`: the NVIDIA driver (needs `libnvidia-ml.so`). `host`: system memory (`/proc/meminfo`, the cgroup limit), for CPU inference or unified memory. `static`: fixed numbers from `memory_total` and `baseline`, for a host without a GPU or driver, or when only the engine's own accounting matters. `replay`: recorded samples, for tests and demos.",
    )
    .origin("A host with no NVIDIA driver: `static` (with `memory_total`), or `host` for CPU inference."),
    Key::new(
        "gpu.memory_total",
        KeyDefault::Unset("measured by the telemetry; required with telemetry = \"static\""),
        "size (\"80GiB\")",
        "Total memory of the pool's GPU(s). Read only with `telemetry = \"static\"`, where it is required; every other source measures it.",
    )
    .origin("`nvidia-smi --query-gpu=memory.total --format=csv` (MiB), or the card's data sheet. With no GPU at all, any size that bounds what the engine may hold."),
    Key::new(
        "gpu.baseline",
        KeyDefault::Unset("0B with static telemetry; other sources measure it"),
        "size",
        "What the GPU holds with no governed task running: the engine's weights and preallocated KV pool, CUDA context, other tenants. Read only with `telemetry = \"static\"`.",
    )
    .origin("`nvidia-smi --query-gpu=memory.used --format=csv` with the engine loaded and idle.")
    .engines(&[
        (VLLM, "about `--gpu-memory-utilization` × total (0.9 × 80 GiB = 72 GiB): vLLM takes it all at start-up."),
        (SGLANG, "about `--mem-fraction-static` × total, plus the CUDA context."),
        (LLAMACPP, "weights plus the KV buffer of `--ctx-size`, taken at start-up (its log prints both)."),
        (OLLAMA, "the loaded models' `size_vram` (`curl localhost:11434/api/ps`, or SIZE in `ollama ps`)."),
    ]),
    Key::new(
        "gpu.headroom",
        KeyDefault::Rendered,
        "fraction in (0, 1]",
        "The fraction of capacity the governor may fill. Under an engine with a preallocated KV pool (vLLM, SGLang, llama.cpp) it applies to that pool in tokens; under Ollama and `openai` it applies to the GPU's memory in bytes.",
    )
    .origin("0.85 follows the common `--gpu-memory-utilization 0.85` advice. Inside an engine's own KV pool 0.95 is enough (the engine already kept its margin); on a per-request engine keep 0.85-0.9: its estimates are rough.")
    .overrides("KANBAN_GOVERNOR_HEADROOM, --headroom (every pool)"),
    Key::new(
        "gpu.reserve",
        KeyDefault::Rendered,
        "size",
        "Bytes always kept free on the GPU, below the headroom ceiling, for the driver and processes the governor does not see.",
    )
    .origin("1 GiB covers the CUDA context and NCCL buffers of a typical inference process."),
    // [engine]
    Key::new(
        "engine.kind",
        KeyDefault::Rendered,
        "\"vllm\", \"sglang\", \"llamacpp\", \"ollama\" or \"openai\"",
        "The inference server. It decides where a task's KV is charged: in the engine's preallocated pool in tokens (vllm, sglang, llamacpp) or in GPU bytes (ollama, openai: any other OpenAI-compatible server), and which metrics are read.",
    ),
    Key::new(
        "engine.url",
        KeyDefault::Derived("the kind's usual local address: vllm `http://127.0.0.1:8000`, sglang `:30000`, llamacpp `:8080`, ollama `:11434`; openai has none and needs it"),
        "http(s) URL, or \"none\"",
        "The engine's base URL, read every tick for its KV use, capacity, slots and latency. When the engine cannot be read the pool holds (admits nothing) until it answers again. `\"none\"` says this host has no engine endpoint to read: the pool then decides on GPU memory and the capacities set here (`kv_capacity_tokens`, `slots`) alone.",
    )
    .engines(&[
        (VLLM, "the `vllm serve` address; the governor reads `/metrics`."),
        (SGLANG, "the server address; start it with `--enable-metrics` so `/metrics` exists."),
        (LLAMACPP, "the `llama-server` address; it reads `/slots` and `/props` (and `/metrics` with `--metrics`)."),
        (OLLAMA, "`http://127.0.0.1:11434`; it reads `/api/ps`."),
    ]),
    Key::new(
        "engine.model",
        KeyDefault::Unset("the engine serves whatever the profiles name"),
        "catalog model name",
        "The model the engine serves, for `plan` and for checking the profiles: under vLLM, SGLang and llama.cpp (one model per server) every profile of the pool must name this model. A catalog name, Hugging Face id or Ollama tag; for an unknown one `check-config` names the close matches.",
    )
    .engines(&[
        (VLLM, "the model argument of `vllm serve`, or `curl $URL/v1/models`."),
        (SGLANG, "`--model-path`, or `curl $URL/v1/models`."),
        (LLAMACPP, "the GGUF's base model (`curl $URL/props`, `model_path`)."),
        (OLLAMA, "`ollama ps`; Ollama serves several, so leave it unset and name the model per profile."),
    ]),
    Key::new(
        "engine.kv_capacity_tokens",
        KeyDefault::Unset("read from the engine"),
        "tokens",
        "The engine's KV pool in tokens: how many tokens of context all running requests together can hold. The ceiling is `headroom × kv_capacity_tokens`, and a task is charged its `requests_per_task × max_context_tokens`. Set it when the engine does not report it, or with `url = \"none\"`; a set value beats the engine's.",
    )
    .origin("The engine computes it at start-up from the memory left after the weights. It must agree with the GPU: `kv_capacity_tokens × KV bytes per token` cannot exceed the GPU's memory (442,368 tokens × 128 KiB = 54 GiB fits an 80 GiB GPU; × 256 KiB = 108 GiB does not).")
    .engines(&[
        (VLLM, "the start-up log line `GPU KV cache size: N tokens`, or `num_gpu_blocks × block_size` from `vllm:cache_config_info` on `/metrics` (what the governor reads)."),
        (SGLANG, "`sglang:max_total_num_tokens` on `/metrics` (with `--enable-metrics`; what the governor reads), or `max_total_num_tokens=` in the start-up log."),
        (LLAMACPP, "`--ctx-size` (all slots together): the sum of `n_ctx` over `curl $URL/slots` (what the governor reads)."),
        (OLLAMA, "not used: Ollama has no shared KV pool; its KV is charged in GPU bytes."),
    ]),
    Key::new(
        "engine.slots",
        KeyDefault::Unset("read from the engine; no slot limit if it reports none"),
        "count",
        "How many requests the engine runs at once. A task takes `requests_per_task` slots; the governor admits no more than there are. A set value beats the engine's.",
    )
    .engines(&[
        (VLLM, "no slots (`--max-num-seqs` is far above what memory allows); leave unset."),
        (SGLANG, "no slots; leave unset (`--max-running-requests` is a cap, not a slot count)."),
        (LLAMACPP, "`-np`/`--parallel`: `total_slots` in `curl $URL/props`."),
        (OLLAMA, "`OLLAMA_NUM_PARALLEL` (default 1): Ollama reports it nowhere, so set it here."),
    ]),
    Key::new(
        "engine.slot_context_tokens",
        KeyDefault::Unset("read from the engine; no per-slot limit if it reports none"),
        "tokens",
        "The longest context one request can have. A profile whose `max_context_tokens` exceeds it could never run, and `check-config` says so.",
    )
    .engines(&[
        (VLLM, "`--max-model-len` (vLLM rejects a longer request rather than queueing it); optional."),
        (SGLANG, "`--context-length`; optional."),
        (LLAMACPP, "`--ctx-size / --parallel` without `--kv-unified`: `n_ctx` of each slot in `curl $URL/slots`."),
        (OLLAMA, "`OLLAMA_CONTEXT_LENGTH` or the model's `num_ctx`: `context_length` in `curl $URL/api/ps`."),
    ]),
    Key::new(
        "engine.max_staleness",
        KeyDefault::Rendered,
        "duration",
        "Engine and GPU readings older than this make the pool hold: the governor does not admit on numbers it cannot trust.",
    )
    .origin("One missed scrape at the default 5 s interval still counts as fresh."),
    // [latency]
    Key::new(
        "latency.ttft_slo",
        KeyDefault::Rendered,
        "duration",
        "The time-to-first-token target. While the engine's TTFT is above it the limit on running tasks falls by `backoff`; while below and in use, it rises by one.",
    )
    .origin("What your agents tolerate before a step feels stuck; 2 s is interactive.")
    .engines(&[
        (VLLM, "`vllm:time_to_first_token_seconds` on `/metrics` is what is compared."),
        (SGLANG, "`sglang:time_to_first_token_seconds` on `/metrics`."),
        (LLAMACPP, "no TTFT histogram; use `signal = \"probe\"`."),
        (OLLAMA, "no metrics; use `signal = \"probe\"`."),
    ]),
    Key::new(
        "latency.signal",
        KeyDefault::Derived("`\"proxy\"` when `proxy.listen` (or `run --proxy-listen`) is set, else `\"engine\"`"),
        "\"engine\", \"probe\" or \"proxy\"",
        "Where TTFT comes from: the engine's histogram (`engine`), a one-token request the governor sends each tick (`probe`), for engines without latency metrics, or the agents' own requests through `run`'s pass-through (`proxy`: the p95 time to first byte of the 2xx answers since the last tick, all profiles together; a 5xx answer counts as a drop; no probe is sent). `proxy` needs the pass-through on (`proxy.listen` or `run --proxy-listen`); `run` refuses to start without it.",
    ),
    Key::new(
        "latency.min_limit",
        KeyDefault::Rendered,
        "count",
        "The lowest the latency limit goes: this many tasks may always run (memory permitting).",
    ),
    Key::new(
        "latency.max_limit",
        KeyDefault::Rendered,
        "count",
        "The highest the latency limit goes. Memory usually binds long before.",
    ),
    Key::new(
        "latency.backoff",
        KeyDefault::Rendered,
        "factor in [0.5, 1)",
        "The limit is multiplied by this on a latency miss.",
    )
    .origin("0.9 is Netflix concurrency-limits' AIMD default."),
    Key::new(
        "latency.dwell",
        KeyDefault::Rendered,
        "duration",
        "After a change the limit stays put this long, so one slow request does not move it twice.",
    ),
    // [dispatch]
    Key::new(
        "dispatch.interval",
        KeyDefault::Rendered,
        "duration",
        "Time between ticks of `run` (and of `tick --repeat`). Cron runs `tick` once a minute whatever this says.",
    ),
    Key::new(
        "dispatch.max_running",
        KeyDefault::Unset("no board-wide cap; memory and the latency limit decide"),
        "count",
        "A cap on governed tasks running on the board at once, on top of memory and latency.",
    ),
    Key::new(
        "dispatch.max_wait",
        KeyDefault::Rendered,
        "duration",
        "A task held longer than this gets room reserved: smaller tasks stop overtaking it, so a large task cannot starve.",
    ),
    Key::new(
        "dispatch.state_dir",
        KeyDefault::Derived("`<hermes.home>/governor`"),
        "path (relative to the config file)",
        "Where the governor keeps its state (learned footprints, the held tasks, the lock). Created 0700.",
    )
    .overrides("KANBAN_GOVERNOR_STATE_DIR, --state-dir"),
    Key::new(
        "dispatch.timeout",
        KeyDefault::Rendered,
        "duration",
        "The limit on one Hermes CLI call; a call that takes longer is killed and the tick holds.",
    )
    .origin("`hermes kanban dispatch` takes a few seconds on a loaded 2-core host."),
    // [http]
    Key::new(
        "http.public",
        KeyDefault::Rendered,
        "boolean",
        "Whether `run --listen` may bind an address other than loopback. `/status` shows board, profile and task names without authentication; set it only behind a firewall or proxy.",
    ),
    // [proxy]
    Key::new(
        "proxy.listen",
        KeyDefault::Unset("off: no pass-through unless `run --proxy-listen` turns it on"),
        "address with port",
        "Where `run` serves the OpenAI-compatible pass-through, such as `\"127.0.0.1:9478\"`. A request to `/p/<profile>/v1/...` goes to that profile's `engine.url` + `/v1/...`; any other path goes to the first pool's engine as is and is counted as `(unattributed)`. Loopback only unless `proxy.public = true`.",
    )
    .overrides("run --proxy-listen"),
    Key::new(
        "proxy.public",
        KeyDefault::Rendered,
        "boolean",
        "Whether `proxy.listen` may be an address other than loopback. The pass-through has no authentication: anyone who can connect can use the engine.",
    ),
    Key::new(
        "proxy.max_body",
        KeyDefault::Rendered,
        "size",
        "The largest request body the pass-through forwards; a larger one is answered `413`. Request bodies are held whole (to read the task id); responses never are.",
    )
    .origin("A 128k-token prompt is about 0.5 MiB of JSON; inline base64 images make it larger."),
    Key::new(
        "proxy.drain",
        KeyDefault::Rendered,
        "duration",
        "How long a stopping `run` lets requests in flight through the pass-through finish before it exits.",
    )
    .origin("Most agent calls finish their answer within it; systemd's default stop timeout is 90 s."),
    // [[profiles]]
    Key::new(
        "profiles.name",
        KeyDefault::Required,
        "Hermes profile name",
        "The Hermes profile that runs this kind of task, as `hermes profile list` shows it.",
    ),
    Key::new(
        "profiles.lane",
        KeyDefault::Derived("`<name>@gpu`"),
        "assignee",
        "The assignee the governor parks held tasks on. It must not be a real Hermes profile, or Hermes would dispatch the held tasks itself.",
    ),
    Key::new(
        "profiles.model",
        KeyDefault::Unset("kv_bytes_per_token is given instead (one of the two is required)"),
        "catalog model name",
        "The model the profile's tasks use; its KV bytes per token come from the catalog (layers × KV heads × head size × 2 × `kv_dtype`). A catalog name, Hugging Face id or Ollama tag; for an unknown one `check-config` names the close matches, and `kv_bytes_per_token` covers a model the catalog lacks.",
    ),
    Key::new(
        "profiles.kv_bytes_per_token",
        KeyDefault::Unset("computed from model and kv_dtype"),
        "bytes (integer) or size",
        "KV bytes one token takes, for a model the catalog lacks. Give either this or `model`.",
    )
    .origin("2 × layers × KV heads × head_dim × bytes per element, from the model's `config.json` (`num_hidden_layers`, `num_key_value_heads`, `head_dim` or hidden_size / num_attention_heads).")
    .engines(&[
        (VLLM, "KV cache size in bytes ÷ `GPU KV cache size` in tokens, both in the start-up log."),
        (SGLANG, "`K size + V size` ÷ `max_total_num_tokens`, both in the start-up log."),
        (LLAMACPP, "the `llama_kv_cache` start-up line (MiB for `n_ctx` cells) ÷ `n_ctx`."),
        (OLLAMA, "`memory.required.kv` in the server log ÷ the context it was loaded with."),
    ]),
    Key::new(
        "profiles.kv_dtype",
        KeyDefault::Rendered,
        "\"f16\", \"bf16\", \"fp8\", \"q8_0\" or \"q4_0\"",
        "The KV cache element type the engine uses (with `model`): fp8 halves the footprint, q4_0 quarters it.",
    )
    .engines(&[
        (VLLM, "`--kv-cache-dtype` (`auto` is the model's dtype: f16/bf16)."),
        (SGLANG, "`--kv-cache-dtype`."),
        (LLAMACPP, "`-ctk`/`-ctv` (f16 by default)."),
        (OLLAMA, "`OLLAMA_KV_CACHE_TYPE` (f16 by default; q8_0, q4_0 need flash attention)."),
    ]),
    Key::new(
        "profiles.max_context_tokens",
        KeyDefault::Required,
        "tokens",
        "The longest context one request of this profile reaches: prompt, tool output and answer together. A task's worst case is this × `requests_per_task` tokens of KV.",
    )
    .origin("The agent's own context budget (its compaction threshold), at most the model's window and the engine's per-request limit. `plan` shows how many such tasks fit.")
    .engines(&[
        (VLLM, "at most `--max-model-len`."),
        (SGLANG, "at most `--context-length`."),
        (LLAMACPP, "at most the slot's `n_ctx` (`curl $URL/slots`)."),
        (OLLAMA, "at most `num_ctx` / `OLLAMA_CONTEXT_LENGTH`."),
    ]),
    Key::new(
        "profiles.requests_per_task",
        KeyDefault::Rendered,
        "count",
        "LLM calls one task can have in flight at once (sub-agents, parallel tool calls). Each takes a slot and `max_context_tokens` of KV.",
    ),
    Key::new(
        "profiles.max_parallel",
        KeyDefault::Unset("no per-profile cap"),
        "count",
        "The most tasks of this profile running at once, whatever memory allows.",
    ),
    Key::new(
        "profiles.guaranteed",
        KeyDefault::Rendered,
        "count",
        "Tasks' worth of room always kept for this profile, so other profiles' tasks cannot take it all. The guarantees of a pool must fit in it together.",
    ),
    Key::new(
        "profiles.extra_bytes",
        KeyDefault::Rendered,
        "size",
        "GPU memory one task uses outside the engine (an embedding model it loads, a tool on the GPU), charged in bytes against the GPU.",
    ),
    Key::new(
        "profiles.footprint",
        KeyDefault::Rendered,
        "\"max\", \"declared\" or \"learned\"",
        "What a task is charged. `max` and `declared`: its declared worst case. `learned`: the worst case until 8 tasks have finished, then an upper bound of what its tasks really reached (never below the largest peak seen), where the engine shows a request's context (llama.cpp `/slots`).",
    ),
    Key::new(
        "profiles.pool",
        KeyDefault::Rendered,
        "pool name",
        "The pool (GPU + engine) the profile's tasks run in: `default` for `[gpu]`/`[engine]`, else a `[pools.<name>]`.",
    ),
];

/// The key `id`, if there is one.
pub(crate) fn key(id: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.id == id)
}

/// What an unset optional key means, for `check-config`'s `# key = (unset: ...)` comment.
pub(crate) fn unset_text(id: &str) -> &'static str {
    match key(id).map(|k| k.default) {
        Some(KeyDefault::Unset(t)) => t,
        // A unit test renders every optional key unset and checks each one has its text.
        _ => "see docs/config.md",
    }
}

/// A config that sets nothing it need not (one profile, which the `[[profiles]]` keys need to
/// be rendered at all), as `check-config` sees it.
const MINIMAL: &str =
    "[[profiles]]\nname = \"example\"\nmodel = \"llama-3.1-8b\"\nmax_context_tokens = 8192\n";

/// The value `check-config` prints for every key with a fixed default, by id, read off the
/// rendering of [`MINIMAL`].
pub(crate) fn rendered_defaults() -> std::collections::BTreeMap<String, String> {
    let env = |k: &str| (k == "HOME").then(|| "/home/you".to_owned());
    let mut out = std::collections::BTreeMap::new();
    let Ok(cfg) = load_str(
        MINIMAL,
        Path::new("/etc/governor.toml"),
        &ConfigArgs::default(),
        &env,
    ) else {
        // A unit test loads MINIMAL; the reference would show no defaults.
        return out;
    };
    let mut table = "";
    let text = cfg.to_toml();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = if t == "profiles" { "profiles" } else { "" };
            // Only the first profile's keys.
            if out.keys().any(|k: &String| k.starts_with("profiles.")) {
                break;
            }
            continue;
        }
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = match t {
                "hermes" | "gpu" | "engine" | "latency" | "dispatch" | "http" | "proxy" => t,
                _ => "",
            };
            continue;
        }
        if let Some((k, v)) = line.split_once(" = ") {
            let id = if table.is_empty() {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            };
            out.insert(id, v.to_owned());
        }
    }
    out
}

/// The reference in Markdown (`docs/config.md`): every key of `KEYS` by table, with its
/// default, unit, meaning, origin and per-engine reading.
pub fn reference_markdown() -> String {
    let defaults = rendered_defaults();
    let mut s = String::new();
    s.push_str("<!-- Generated by `kanban-governor check-config --reference` from src/config/keys.rs; edit there, then regenerate: a test fails while this file differs. -->\n");
    s.push_str("# Config reference\n\n");
    s.push_str(
        "The governor reads one TOML file: `--config`, else `$KANBAN_GOVERNOR_CONFIG`, else \
`$HERMES_HOME/governor.toml`, else `~/.hermes/governor.toml` (a missing default file means \
the defaults below). Values are taken in the order defaults < file < environment < flags. \
Sizes are quoted binary sizes (`\"24GiB\"`, `\"512MiB\"`, `\"0B\"`), durations humantime \
(`\"15s\"`, `\"10m\"`). Unknown keys are errors.\n\n\
`kanban-governor check-config` prints the effective config with where each value came from, \
and every optional key that is unset as a comment; `--file-only` checks the file without \
looking at this host. Complete, commented examples are in `examples/`: no GPU \
(`no-gpu-static.toml`), vLLM, llama.cpp, Ollama, and two GPUs with a pool each.\n\n\
A *pool* is a GPU (or a tensor-parallel group of GPUs) and the engine on it. `[gpu]` and \
`[engine]` declare the pool `default`; `[pools.<name>.gpu]` and `[pools.<name>.engine]` \
declare others, with the same keys.\n",
    );
    for (table, about) in TABLES {
        let title = match *table {
            "" => "Top level".to_owned(),
            "profiles" => "`[[profiles]]`".to_owned(),
            t => format!("`[{t}]`"),
        };
        let _ = write!(s, "\n## {title}\n\n{about}\n");
        for k in KEYS.iter().filter(|k| k.table() == *table) {
            let default = match k.default {
                KeyDefault::Rendered => match defaults.get(k.id) {
                    Some(v) => format!("`{v}`"),
                    None => "(see `check-config`)".to_owned(),
                },
                KeyDefault::Derived(t) => t.to_owned(),
                KeyDefault::Unset(t) => format!("unset: {t}"),
                KeyDefault::Required => "required".to_owned(),
            };
            let _ = write!(
                s,
                "\n### `{}`\n\n- Default: {default}\n- Type: {}\n",
                k.id, k.unit
            );
            if !k.overrides.is_empty() {
                let _ = writeln!(s, "- Overridden by: {}", k.overrides);
            }
            let _ = write!(s, "\n{}\n", k.meaning);
            if !k.origin.is_empty() {
                let _ = write!(s, "\nWhere the number comes from: {}\n", k.origin);
            }
            if !k.engines.is_empty() {
                s.push('\n');
                for (engine, how) in k.engines {
                    let _ = writeln!(s, "- {engine}: {how}");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields serde accepts in `table`, from its "unknown field" message.
    fn accepted(table_header: &str) -> Vec<String> {
        let text = format!("{table_header}\nnot_a_key_anywhere = 1\n");
        let msg = match toml::from_str::<super::super::raw::RawConfig>(&text) {
            Ok(_) => panic!("{table_header}: an unknown key was accepted"),
            Err(e) => e.message().to_owned(),
        };
        let list = msg
            .split_once("expected ")
            .map(|(_, l)| l)
            .unwrap_or_else(|| panic!("{msg}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_key_the_parser_accepts_is_documented_and_every_documented_key_is_accepted() {
        let mut parsed = Vec::new();
        for (header, table) in [
            ("", ""),
            ("[hermes]", "hermes"),
            ("[gpu]", "gpu"),
            ("[engine]", "engine"),
            ("[latency]", "latency"),
            ("[dispatch]", "dispatch"),
            ("[http]", "http"),
            ("[proxy]", "proxy"),
            ("[[profiles]]", "profiles"),
        ] {
            for field in accepted(header) {
                // Top-level tables are documented as tables, not keys.
                if table.is_empty() && TABLES.iter().any(|(t, _)| *t == field) {
                    continue;
                }
                if table.is_empty() && field == "pools" {
                    continue;
                }
                let id = if table.is_empty() {
                    field
                } else {
                    format!("{table}.{field}")
                };
                assert!(key(&id).is_some(), "{id} is accepted but not in KEYS");
                parsed.push(id);
            }
        }
        for k in KEYS {
            assert!(
                parsed.iter().any(|p| p == k.id),
                "{} is documented but the parser rejects it",
                k.id
            );
        }
        assert_eq!(parsed.len(), KEYS.len());
    }

    #[test]
    fn every_fixed_default_is_read_off_the_rendering_and_nothing_else_is_rendered_unset() {
        let defaults = rendered_defaults();
        for k in KEYS {
            let rendered = defaults.get(k.id);
            match k.default {
                KeyDefault::Rendered => {
                    assert!(rendered.is_some(), "{} has no rendered default", k.id)
                }
                // An unset key is not printed as a value (it is a comment, tested in render).
                // MINIMAL must name a model for its profile to be valid.
                KeyDefault::Unset(_) if k.id == "profiles.model" => {}
                KeyDefault::Unset(_) => assert!(
                    rendered.is_none(),
                    "{} = {rendered:?} is set by default",
                    k.id
                ),
                KeyDefault::Derived(_) | KeyDefault::Required => {}
            }
        }
        assert_eq!(
            defaults["gpu.headroom"],
            super::super::DEFAULT_HEADROOM.to_string()
        );
        assert_eq!(defaults["dispatch.timeout"], "\"1m\"");
    }

    #[test]
    fn the_reference_names_every_key_once_with_a_default_and_engines_for_the_capacity() {
        let md = reference_markdown();
        for k in KEYS {
            let heading = format!("\n### `{}`\n", k.id);
            assert!(md.contains(&heading), "{}", k.id);
        }
        assert!(!md.contains("(see `check-config`)"), "{md}");
        let kv = md.split("### `engine.kv_capacity_tokens`").nth(1).unwrap();
        for e in ["vLLM", "SGLang", "llama.cpp", "Ollama"] {
            assert!(kv.split("\n### ").next().unwrap().contains(e), "{e}");
        }
        assert!(
            md.contains("- Default: `0.85`"),
            "headroom's default is shown"
        );
    }

    /// The key ids of a `check-config` rendering, set (`key = v`) or unset (`# key = (unset`),
    /// with pool tables folded onto `gpu`/`engine`.
    fn printed_ids(text: &str) -> Vec<String> {
        let mut table = String::new();
        let mut ids = Vec::new();
        for line in text.lines() {
            let t = line.trim_start_matches('[').trim_end_matches(']');
            if line.starts_with('[') {
                table = match t.rsplit_once('.') {
                    Some((_, last)) if t.starts_with("pools.") => last.to_owned(),
                    _ => t.to_owned(),
                };
                continue;
            }
            let body = line.strip_prefix("# ").unwrap_or(line);
            let Some((k, rest)) = body.split_once(" = ") else {
                continue;
            };
            if line.starts_with('#') && !rest.starts_with("(unset:") && !rest.starts_with("(set at")
            {
                continue;
            }
            ids.push(if k == "profiles_dir" {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            });
        }
        ids
    }

    /// Every optional key set (but profiles_dir, which a config from a string cannot read).
    const EVERYTHING: &str = r#"[hermes]
bin = "/usr/bin/hermes"
max_semantics = "live_cap"
[pools.a.gpu]
uuid = "GPU-1"
telemetry = "static"
memory_total = "80GiB"
baseline = "10GiB"
[pools.a.engine]
kind = "llamacpp"
model = "llama-3.1-8b"
kv_capacity_tokens = 100000
slots = 4
slot_context_tokens = 25000
[dispatch]
max_running = 3
[[profiles]]
name = "x"
kv_bytes_per_token = 1024
max_context_tokens = 4096
max_parallel = 2
pool = "a"
"#;

    #[test]
    fn check_config_prints_every_key_set_or_unset_and_each_is_in_the_reference() {
        let env = |k: &str| (k == "HOME").then(|| "/home/you".to_owned());
        let origin = Path::new("/etc/governor.toml");
        let minimal = load_str(MINIMAL, origin, &ConfigArgs::default(), &env).unwrap();
        let printed = minimal.to_toml_annotated();
        for line in [
            "# kv_capacity_tokens = (unset: read from the engine)",
            "# memory_total = (unset: measured by the telemetry; required with telemetry = \"static\")",
            "# baseline = (unset: 0B with static telemetry; other sources measure it)",
            "# model = (unset: the engine serves whatever the profiles name)",
            "# slots = (unset: read from the engine; no slot limit if it reports none)",
            "# max_parallel = (unset: no per-profile cap)",
            "# bin = (unset: tick, run and status need it; `kanban-governor doctor` prints it)",
        ] {
            assert!(printed.lines().any(|l| l == line), "{line} in\n{printed}");
        }
        assert!(!printed.contains("see docs/config.md"), "{printed}");
        // The comments change nothing: it reads back to the same config.
        let back = load_str(&printed, origin, &ConfigArgs::default(), &env).unwrap();
        assert_eq!(back.to_toml(), minimal.to_toml());

        let full = load_str(EVERYTHING, origin, &ConfigArgs::default(), &env).unwrap();
        let mut ids = printed_ids(&printed);
        ids.extend(printed_ids(&full.to_toml_annotated()));
        for id in &ids {
            assert!(
                key(id).is_some(),
                "check-config prints {id}, which the reference lacks"
            );
        }
        for k in KEYS {
            assert!(
                ids.iter().any(|i| i == k.id),
                "check-config never prints {}",
                k.id
            );
        }
    }
}
