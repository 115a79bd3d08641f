//! The inference engine model: how a server admits requests, holds their KV cache, runs them
//! in batches, and fails when memory runs out. Three regimes (ENGINES.md §2):
//!
//! - **Paged KV** (vLLM, SGLang): a pool of `capacity_tokens` preallocated at start-up, handed
//!   out in blocks as contexts grow. A request waits (FCFS) until its prompt's blocks are free;
//!   when a running request needs a block and none is free, the newest running request is
//!   preempted: its blocks are freed and it goes back to the head of the queue to be
//!   recomputed (vLLM V1 `RECOMPUTE`).
//! - **Fixed slots** (llama.cpp `-np N -c C`): N slots of C/N tokens; requests queue for a free
//!   slot, and a request longer than a slot fails (context exceeded).
//! - **Per-request allocation** (Ollama-like, elastic): each request allocates its context's
//!   KV from free GPU memory when it starts; beyond free memory it either fails (CUDA OOM) or
//!   runs offloaded to the CPU, many times slower.
//!
//! Timing (a roofline model, the usual first-order model of LLM serving on GPUs): one batch
//! iteration reads the weights once (`weight_bytes / bandwidth`), reads every decoding
//! request's KV (`kv_bytes_per_token × context / bandwidth`), and prefills prompt chunks at
//! `2 × params` FLOPs per token (`/ effective FLOP/s`), with a chunked-prefill token budget per
//! iteration (vLLM's `max_num_batched_tokens`, 2048 by default) and a fixed per-request
//! scheduling cost. So batching helps (the weight read is shared) and overload hurts (queues,
//! KV reads growing with context, preemption and recompute). The hardware constants are in
//! [`Hardware`].
//!
//! Where each constant and rule comes from (ENGINES.md sections; upstream files as ENGINES.md
//! cites them):
//!
//! | constant / rule | value | source |
//! |---|---|---|
//! | KV block size | 16 tokens | vLLM's default `block_size` (§2.1, `vllm:cache_config_info`) |
//! | most requests scheduled | 256 | vLLM `max_num_seqs` on GPUs < 70 GiB and A100 (§2.1, `vllm/engine/arg_utils.py` `get_batch_defaults`; 1024 on larger GPUs, where KV binds long before) |
//! | prefill tokens per iteration | 2048 | vLLM `max_num_batched_tokens`, same defaults (§2.1) |
//! | blocks taken as the context grows, not reserved for the output | | `allocate_slots(request, num_new_tokens)` in `vllm/v1/core/sched/scheduler.py` (§2.1) |
//! | preempt the newest running request, recompute its prefill | | FCFS `self.running.pop()`, V1 `RECOMPUTE` (§2.1, same file) |
//! | KV watermark (off by default) | | vLLM PR #44594 (PEERS.md, "Engine-side admission") |
//! | slots of `-c / -np` tokens, queue when all busy, refuse longer requests | | `tools/server/README.md` of llama.cpp (§2.3) |
//! | offload slowdown | 10× | Ollama partial CPU offload, "throughput drops by an order of magnitude" (§2.2) |
//! | GPU bandwidth and FLOP/s | see [`Hardware::for_memory`] | vendors' data sheets; the 80 %/40 % fractions reached are an assumption |
//! | scheduling cost per request | 0.1 ms | an assumption (no source) |
//! | FLOPs per prefill token | 2 × params | the standard dense-transformer estimate (attention FLOPs left out) |
//!
//! Where the model departs from vLLM: a preemption does not stop admissions in the same
//! iteration (vLLM admits from the queue only in a step with no preemption), and identical
//! decode iterations are taken several at once only while 16 free tokens per running request
//! are left (else one at a time), which can change when a block boundary is crossed, not how
//! much is held. The test `a_few_percent_less_kv_turns_zero_preemptions_into_many`
//! (`sim/tests.rs`) checks that the model shows the preemption cliff reported for vLLM-like
//! schedulers (PEERS.md, "Simulator fidelity reference").

use std::collections::VecDeque;

/// How the engine admits and holds requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regime {
    /// A paged KV pool (vLLM, SGLang).
    Paged {
        /// Tokens the pool holds (`num_gpu_blocks × block_size`).
        capacity_tokens: u64,
        /// Tokens per block (vLLM's default `block_size`, 16: ENGINES.md §2.1).
        block_tokens: u64,
        /// Most requests scheduled at once (vLLM `--max-num-seqs`, 256 by default on GPUs
        /// < 70 GiB and A100: ENGINES.md §2.1, `vllm/engine/arg_utils.py`).
        max_seqs: usize,
    },
    /// Fixed slots (llama.cpp `-np`).
    Slots {
        /// Number of slots.
        slots: usize,
        /// Context tokens per slot (`-c / -np`).
        slot_ctx: u64,
    },
    /// KV allocated per request from free GPU memory (Ollama-like).
    PerRequest {
        /// Beyond free memory: run on the CPU (Ollama) instead of failing with an OOM.
        offload: bool,
    },
}

impl Regime {
    /// Tokens the engine's KV pool or slots hold (`None`: allocated per request, no pool).
    pub fn kv_pool_tokens(&self) -> Option<u64> {
        match *self {
            Regime::Paged {
                capacity_tokens, ..
            } => Some(capacity_tokens),
            Regime::Slots { slots, slot_ctx } => Some(slots as u64 * slot_ctx),
            Regime::PerRequest { .. } => None,
        }
    }
}

/// Effective hardware speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hardware {
    /// Memory bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Effective dense FLOP/s in prefill (peak × utilisation).
    pub flops: f64,
}

impl Hardware {
    /// A GPU class guessed from its memory size: ≤ 24 GiB an RTX 4090 (1.0 TB/s, 165 TFLOP/s
    /// bf16 dense), ≤ 48 GiB an L40S (0.86 TB/s, 362 TFLOP/s), else an H100 SXM (3.35 TB/s,
    /// 989 TFLOP/s) — the vendors' data sheets — with 40 % of peak FLOP/s reached in prefill
    /// and 80 % of peak bandwidth in decode (typical measured fractions).
    pub fn for_memory(total_bytes: u64) -> Hardware {
        let gib = total_bytes as f64 / (1u64 << 30) as f64;
        let (bw, tf) = if gib <= 24.5 {
            (1.0e12, 165e12)
        } else if gib <= 48.5 {
            (0.86e12, 362e12)
        } else {
            (3.35e12, 989e12)
        };
        Hardware {
            bandwidth: bw * 0.8,
            flops: tf * 0.4,
        }
    }
}

/// Per-iteration costs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Reading the weights once per iteration.
    pub decode_base_s: f64,
    /// Scheduling and sampling per request in the batch (an assumption: 0.1 ms).
    pub per_seq_s: f64,
    /// Reading one token of KV.
    pub kv_read_s_per_token: f64,
    /// Prefilling one prompt token.
    pub prefill_s_per_token: f64,
    /// How much slower an offloaded request makes its iterations (Ollama with layers on the
    /// CPU: 5–20× reported, "an order of magnitude" in ENGINES.md §2.2; 10×).
    pub offload_slowdown: f64,
    /// Prompt tokens per iteration (chunked prefill budget; vLLM `max_num_batched_tokens`,
    /// 2048 by default: ENGINES.md §2.1).
    pub batch_tokens: u64,
}

impl Speed {
    /// The roofline costs of a model on `hw`: the weights read once per iteration, each
    /// decoding token's KV read, `2 × params` FLOPs per prefilled token (the dense-transformer
    /// estimate), 0.1 ms per scheduled request (an assumption), 10× when offloaded, vLLM's
    /// 2048-token prefill budget.
    pub fn roofline(
        weight_bytes: u64,
        kv_bytes_per_token: u64,
        params: u64,
        hw: Hardware,
    ) -> Speed {
        Speed {
            decode_base_s: weight_bytes as f64 / hw.bandwidth,
            per_seq_s: 1e-4,
            kv_read_s_per_token: kv_bytes_per_token as f64 / hw.bandwidth,
            prefill_s_per_token: 2.0 * params as f64 / hw.flops,
            offload_slowdown: 10.0,
            batch_tokens: 2048,
        }
    }
}

/// One LLM call.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Unique id.
    pub id: u64,
    /// The task (index) that sent it.
    pub task: usize,
    /// Prompt tokens (the whole context so far).
    pub prompt: u64,
    /// Tokens to generate.
    pub output: u64,
    /// When it was sent.
    pub submitted: f64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Out of GPU memory (per-request allocation).
    Oom,
    /// Longer than a slot or than the whole KV pool.
    Overflow,
}

/// What an iteration produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request's first token.
    FirstToken {
        /// Request.
        id: u64,
        /// Its task.
        task: usize,
        /// Time to first token, seconds.
        ttft: f64,
    },
    /// A request finished.
    Done {
        /// Request.
        id: u64,
        /// Its task.
        task: usize,
    },
    /// A request failed.
    Failed {
        /// Request.
        id: u64,
        /// Its task.
        task: usize,
        /// Why.
        why: Failure,
    },
}

/// Failure counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests preempted (paged KV).
    pub preemptions: u64,
    /// Requests failed out of memory.
    pub ooms: u64,
    /// Requests offloaded to the CPU.
    pub offloads: u64,
    /// Requests longer than a slot or the pool.
    pub overflows: u64,
}

#[derive(Debug, Clone)]
struct Live {
    req: Request,
    /// Tokens to prefill (the prompt, or prompt + generated after a preemption).
    to_prefill: u64,
    prefilled: u64,
    generated: u64,
    /// KV tokens held (paged: whole blocks).
    held: u64,
    /// Bytes allocated (per-request regime).
    bytes: u64,
    first_token: bool,
    last_progress: f64,
    offloaded: bool,
}

/// The engine.
#[derive(Debug, Clone)]
pub struct Engine {
    regime: Regime,
    speed: Speed,
    kv_bytes_per_token: u64,
    queue: VecDeque<Live>,
    running: Vec<Live>,
    kv_used: u64,
    bytes_used: u64,
    /// Paged pool: KV tokens a new admission must leave free (vLLM's optional watermark; 0:
    /// off, vLLM's default).
    kv_watermark_tokens: u64,
    /// Failure counters.
    pub counters: Counters,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to.max(1)) * to.max(1)
}

impl Engine {
    /// An idle engine.
    pub fn new(regime: Regime, speed: Speed, kv_bytes_per_token: u64) -> Engine {
        Engine {
            regime,
            speed,
            kv_bytes_per_token,
            queue: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
            bytes_used: 0,
            kv_watermark_tokens: 0,
            counters: Counters::default(),
        }
    }

    /// vLLM's KV watermark (PR #44594, off by default): a paged engine admits a request from
    /// its queue only if `fraction` of the pool stays free after its prompt's blocks are
    /// taken (the form vLLM's v0 block manager used; PEERS.md words it "while free blocks <
    /// watermark × pool", which we read as checked after the allocation). Resumed
    /// preemptions wait for it too. An idle engine admits anyway, so a request larger than
    /// the pool less the watermark is not stuck forever. Other regimes ignore it.
    pub fn set_kv_watermark(&mut self, fraction: f64) {
        if let Regime::Paged {
            capacity_tokens, ..
        } = self.regime
        {
            self.kv_watermark_tokens = (capacity_tokens as f64 * fraction.clamp(0.0, 1.0)) as u64;
        }
    }

    /// Requests queued in the engine, not yet scheduled (vLLM `num_requests_waiting`).
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Share of the engine's capacity in use, as its metrics report it: KV blocks of the
    /// paged pool, busy slots, or (per-request) nothing (0).
    pub fn kv_usage(&self) -> f64 {
        match self.regime {
            Regime::Paged {
                capacity_tokens, ..
            } => self.kv_used as f64 / capacity_tokens.max(1) as f64,
            Regime::Slots { slots, .. } => self.running.len() as f64 / slots.max(1) as f64,
            Regime::PerRequest { .. } => 0.0,
        }
    }

    /// The regime.
    pub fn regime(&self) -> Regime {
        self.regime
    }

    /// Send a request.
    pub fn submit(&mut self, req: Request, now: f64) {
        self.queue.push_back(Live {
            to_prefill: req.prompt,
            req,
            prefilled: 0,
            generated: 0,
            held: 0,
            bytes: 0,
            first_token: false,
            last_progress: now,
            offloaded: false,
        });
    }

    /// Requests queued or running.
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.running.len()
    }

    /// Whether any request is queued or running.
    pub fn busy(&self) -> bool {
        self.in_flight() > 0
    }

    /// Requests running (scheduled), not queued.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// KV tokens held (paged: blocks in use; slots and per-request: context tokens).
    pub fn kv_used_tokens(&self) -> u64 {
        match self.regime {
            Regime::Paged { .. } => self.kv_used,
            _ => self.running.iter().map(|l| l.prefilled + l.generated).sum(),
        }
    }

    /// GPU bytes allocated by requests (per-request regime; others preallocate).
    pub fn request_bytes(&self) -> u64 {
        self.bytes_used
    }

    /// Requests that made no progress (no token, no prefill) since `before`: for call
    /// timeouts.
    pub fn stalled(&self, before: f64) -> Vec<(u64, usize)> {
        self.queue
            .iter()
            .chain(&self.running)
            .filter(|l| l.last_progress < before)
            .map(|l| (l.req.id, l.req.task))
            .collect()
    }

    /// Drop a request (the client gave up): its memory is freed.
    pub fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.queue.iter().position(|l| l.req.id == id) {
            self.queue.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|l| l.req.id == id) {
            let l = self.running.swap_remove(i);
            self.free(&l);
            return true;
        }
        false
    }

    fn free(&mut self, l: &Live) {
        self.kv_used -= l.held;
        self.bytes_used -= l.bytes;
    }

    fn admit(&mut self, free_bytes: u64, out: &mut Vec<Event>) {
        /// What happens to the request at the front of the queue.
        enum Next {
            /// It can never fit: fail it as an overflow.
            Overflow,
            /// It must wait for room.
            Wait,
            /// It runs, now holding these KV tokens (paged) or bytes (per-request), or
            /// offloaded to the CPU.
            Run {
                held: Option<u64>,
                bytes: Option<u64>,
                offloaded: bool,
            },
            /// Per-request allocation beyond free memory: an OOM.
            Oom,
        }
        while let Some(front) = self.queue.front() {
            let next = match self.regime {
                Regime::Paged {
                    capacity_tokens,
                    block_tokens,
                    max_seqs,
                } => {
                    let need = round_up(front.to_prefill + 1, block_tokens);
                    if need > capacity_tokens {
                        Next::Overflow
                    } else if self.running.len() >= max_seqs
                        || self.kv_used + need > capacity_tokens
                        || (!self.running.is_empty()
                            && self.kv_used + need + self.kv_watermark_tokens > capacity_tokens)
                    {
                        Next::Wait
                    } else {
                        Next::Run {
                            held: Some(need),
                            bytes: None,
                            offloaded: false,
                        }
                    }
                }
                Regime::Slots { slots, slot_ctx } => {
                    if front.req.prompt + front.req.output > slot_ctx {
                        Next::Overflow
                    } else if self.running.len() >= slots {
                        Next::Wait
                    } else {
                        Next::Run {
                            held: None,
                            bytes: None,
                            offloaded: false,
                        }
                    }
                }
                Regime::PerRequest { offload } => {
                    let bytes = (front.req.prompt + front.req.output) * self.kv_bytes_per_token;
                    if self.bytes_used + bytes <= free_bytes {
                        Next::Run {
                            held: None,
                            bytes: Some(bytes),
                            offloaded: false,
                        }
                    } else if offload {
                        Next::Run {
                            held: None,
                            bytes: None,
                            offloaded: true,
                        }
                    } else {
                        Next::Oom
                    }
                }
            };
            if matches!(next, Next::Wait) {
                return;
            }
            let Some(mut l) = self.queue.pop_front() else {
                return;
            };
            match next {
                Next::Wait => {}
                Next::Overflow => {
                    self.counters.overflows += 1;
                    out.push(fail(&l, Failure::Overflow));
                }
                Next::Oom => {
                    self.counters.ooms += 1;
                    out.push(fail(&l, Failure::Oom));
                }
                Next::Run {
                    held,
                    bytes,
                    offloaded,
                } => {
                    if let Some(held) = held {
                        l.held = held;
                        self.kv_used += held;
                    }
                    if let Some(bytes) = bytes {
                        l.bytes = bytes;
                        self.bytes_used += bytes;
                    }
                    if offloaded {
                        self.counters.offloads += 1;
                        l.offloaded = true;
                    }
                    self.running.push(l);
                }
            }
        }
    }

    /// Run one batch iteration starting at `now` (several identical decode iterations at once
    /// when nothing else can change before `until`). `free_bytes` is the GPU memory requests
    /// may allocate (per-request regime). Returns the seconds it took (0: idle).
    pub fn step(&mut self, now: f64, until: f64, free_bytes: u64, out: &mut Vec<Event>) -> f64 {
        self.admit(free_bytes, out);
        if self.running.is_empty() {
            return 0.0;
        }
        let s = self.speed;
        let decoding = self
            .running
            .iter()
            .filter(|l| l.prefilled >= l.to_prefill)
            .count() as u64;
        let mut budget = s.batch_tokens.saturating_sub(decoding);
        let mut prefill_tokens = 0u64;
        let mut kv_read = 0u64;
        let mut offloaded = false;
        let mut chunks = Vec::with_capacity(self.running.len());
        for l in &self.running {
            offloaded |= l.offloaded;
            if l.prefilled < l.to_prefill {
                let c = (l.to_prefill - l.prefilled).min(budget);
                budget -= c;
                prefill_tokens += c;
                chunks.push(c);
            } else {
                kv_read += l.prefilled + l.generated;
                chunks.push(0);
            }
        }
        let n = self.running.len() as f64;
        let mut one = s.decode_base_s
            + s.per_seq_s * n
            + s.kv_read_s_per_token * kv_read as f64
            + s.prefill_s_per_token * prefill_tokens as f64;
        if offloaded {
            one *= s.offload_slowdown;
        }
        // With no prefill in the batch, iterations repeat until a request finishes, a block
        // boundary or `until`: take them at once.
        let mut k = 1u64;
        if prefill_tokens == 0 && self.queue.is_empty() {
            let min_left = self.running.iter().map(remaining_output).min().unwrap_or(1);
            let by_time = ((until - now) / one).floor().max(1.0) as u64;
            k = min_left.min(by_time).clamp(1, 256);
            if let Regime::Paged {
                capacity_tokens, ..
            } = self.regime
            {
                // Blocks needed for k more tokens each must be free, else one at a time.
                let need: u64 = self
                    .running
                    .iter()
                    .map(|l| (l.prefilled + l.generated + k).saturating_sub(l.held))
                    .sum();
                if self.kv_used + need + 16 * self.running.len() as u64 > capacity_tokens {
                    k = 1;
                }
            }
        }
        let dur = one * k as f64 + s.kv_read_s_per_token * (decoding * k * k / 2) as f64;
        let end = now + dur;
        let mut i = 0;
        while i < self.running.len() {
            let chunk = chunks[i];
            let l = &mut self.running[i];
            let mut produced = 0;
            if chunk > 0 {
                l.prefilled += chunk;
                l.last_progress = end;
                if l.prefilled >= l.to_prefill {
                    produced = 1; // a finished prefill emits a token
                }
            } else if l.prefilled >= l.to_prefill {
                produced = k;
            }
            if produced > 0 {
                l.generated += produced;
                l.last_progress = end;
                if !l.first_token {
                    l.first_token = true;
                    out.push(Event::FirstToken {
                        id: l.req.id,
                        task: l.req.task,
                        ttft: end - l.req.submitted,
                    });
                }
            }
            i += 1;
        }
        // Grow paged allocations block by block; preempt the newest when the pool is out.
        if let Regime::Paged {
            capacity_tokens,
            block_tokens,
            ..
        } = self.regime
        {
            loop {
                let mut short = None;
                for (j, l) in self.running.iter().enumerate() {
                    if l.prefilled + l.generated > l.held {
                        short = Some(j);
                        break;
                    }
                }
                let Some(j) = short else { break };
                let l = &self.running[j];
                let need = round_up(l.prefilled + l.generated, block_tokens) - l.held;
                if self.kv_used + need <= capacity_tokens {
                    self.kv_used += need;
                    self.running[j].held += need;
                    continue;
                }
                // Preempt the request submitted last (it may be this one; `running` holds it,
                // so there is one).
                let Some(v) = (0..self.running.len()).max_by(|&a, &b| {
                    self.running[a]
                        .req
                        .submitted
                        .total_cmp(&self.running[b].req.submitted)
                        .then(self.running[a].req.id.cmp(&self.running[b].req.id))
                }) else {
                    break;
                };
                let mut victim = self.running.remove(v);
                self.kv_used -= victim.held;
                self.counters.preemptions += 1;
                let done_tokens = victim.prefilled + victim.generated;
                victim.to_prefill = done_tokens.max(victim.req.prompt);
                victim.prefilled = 0;
                victim.held = 0;
                self.queue.push_front(victim);
            }
        }
        // Finished requests leave and free their memory.
        let mut i = 0;
        while i < self.running.len() {
            let l = &self.running[i];
            let target_done = l.prefilled >= l.to_prefill && l.generated >= l.req.output;
            if target_done {
                let l = self.running.swap_remove(i);
                self.free(&l);
                out.push(Event::Done {
                    id: l.req.id,
                    task: l.req.task,
                });
            } else {
                i += 1;
            }
        }
        dur
    }
}

fn remaining_output(l: &Live) -> u64 {
    l.req.output.saturating_sub(l.generated).max(1)
}

fn fail(l: &Live, why: Failure) -> Event {
    Event::Failed {
        id: l.req.id,
        task: l.req.task,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speed() -> Speed {
        Speed {
            decode_base_s: 0.01,
            per_seq_s: 0.0,
            kv_read_s_per_token: 0.0,
            prefill_s_per_token: 0.0001,
            offload_slowdown: 10.0,
            batch_tokens: 2048,
        }
    }

    fn req(id: u64, prompt: u64, output: u64, at: f64) -> Request {
        Request {
            id,
            task: id as usize,
            prompt,
            output,
            submitted: at,
        }
    }

    fn run_until_idle(e: &mut Engine, free: u64) -> (Vec<Event>, f64) {
        let mut t = 0.0;
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let d = e.step(t, t + 1.0, free, &mut out);
            if d == 0.0 {
                break;
            }
            t += d;
        }
        (out, t)
    }

    #[test]
    fn a_paged_pool_that_fits_exactly_n_contexts_runs_n_at_once_and_queues_the_next() {
        // Each request holds 1000 prompt + 24 generated = 1024 tokens = 64 blocks of 16.
        let regime = Regime::Paged {
            capacity_tokens: 3 * 1024,
            block_tokens: 16,
            max_seqs: 256,
        };
        let mut e = Engine::new(regime, speed(), 1);
        for i in 0..4 {
            e.submit(req(i, 1000, 24, 0.0), 0.0);
        }
        let mut out = Vec::new();
        e.step(0.0, 0.0, 0, &mut out);
        assert_eq!(e.running(), 3);
        assert_eq!(e.in_flight(), 4);
        let (events, _) = run_until_idle(&mut e, 0);
        assert_eq!(e.counters.preemptions, 0);
        let done = events
            .iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .count();
        assert_eq!(done, 4);
        assert_eq!(e.kv_used_tokens(), 0);
    }

    #[test]
    fn a_kv_watermark_admits_only_while_its_share_of_the_pool_stays_free() {
        // Each request takes 1008 tokens (1001 rounded to blocks of 16). Three fit in 4096;
        // a 0.3 watermark (1228 tokens) lets the third in only once the pool keeps 1228 free.
        let regime = Regime::Paged {
            capacity_tokens: 4096,
            block_tokens: 16,
            max_seqs: 256,
        };
        let mut plain = Engine::new(regime, speed(), 1);
        let mut marked = Engine::new(regime, speed(), 1);
        marked.set_kv_watermark(0.3);
        for e in [&mut plain, &mut marked] {
            for i in 0..3 {
                e.submit(req(i, 1000, 24, 0.0), 0.0);
            }
            e.step(0.0, 0.0, 0, &mut Vec::new());
        }
        assert_eq!(plain.running(), 3);
        assert_eq!(marked.running(), 2);
        assert_eq!(marked.waiting(), 1);
        let (events, _) = run_until_idle(&mut marked, 0);
        let done = events
            .iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .count();
        assert_eq!(done, 3, "the held request runs once room is back");
        // An idle engine admits a request larger than the pool less the watermark.
        let mut big = Engine::new(regime, speed(), 1);
        big.set_kv_watermark(0.5);
        big.submit(req(9, 3000, 10, 0.0), 0.0);
        big.step(0.0, 0.0, 0, &mut Vec::new());
        assert_eq!(big.running(), 1);
    }

    #[test]
    fn when_the_pool_runs_out_the_newest_request_is_preempted_and_recomputed() {
        // Two requests of 1000 prompt tokens that each grow by 600: 3200 tokens needed, 2560
        // in the pool.
        let regime = Regime::Paged {
            capacity_tokens: 2560,
            block_tokens: 16,
            max_seqs: 256,
        };
        let mut e = Engine::new(regime, speed(), 1);
        e.submit(req(1, 1000, 600, 0.0), 0.0);
        e.submit(req(2, 1000, 600, 1.0), 1.0);
        let (events, _) = run_until_idle(&mut e, 0);
        assert!(e.counters.preemptions >= 1);
        // The older request never lost its place: it finished first.
        let order: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Done { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn slots_queue_requests_beyond_their_number_and_refuse_longer_contexts() {
        let mut e = Engine::new(
            Regime::Slots {
                slots: 2,
                slot_ctx: 4096,
            },
            speed(),
            1,
        );
        e.submit(req(1, 1000, 10, 0.0), 0.0);
        e.submit(req(2, 1000, 10, 0.0), 0.0);
        e.submit(req(3, 1000, 10, 0.0), 0.0);
        e.submit(req(4, 5000, 10, 0.0), 0.0);
        let mut out = Vec::new();
        e.step(0.0, 0.0, 0, &mut out);
        assert_eq!(e.running(), 2);
        assert_eq!(e.in_flight(), 4);
        let (events, _) = run_until_idle(&mut e, 0);
        assert_eq!(e.counters.overflows, 1);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Failed {
                id: 4,
                why: Failure::Overflow,
                ..
            }
        )));
        let done = events
            .iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .count();
        assert_eq!(done, 3);
    }

    #[test]
    fn per_request_allocation_beyond_free_memory_is_an_oom_or_an_offload() {
        let mut oom = Engine::new(Regime::PerRequest { offload: false }, speed(), 100);
        oom.submit(req(1, 900, 100, 0.0), 0.0); // 100,000 bytes
        oom.submit(req(2, 900, 100, 0.0), 0.0);
        let (events, _) = run_until_idle(&mut oom, 150_000);
        assert_eq!(oom.counters.ooms, 1);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Failed {
                id: 2,
                why: Failure::Oom,
                ..
            }
        )));
        let mut off = Engine::new(Regime::PerRequest { offload: true }, speed(), 100);
        off.submit(req(1, 900, 100, 0.0), 0.0);
        off.submit(req(2, 900, 100, 0.0), 0.0);
        let (_, slow) = run_until_idle(&mut off, 150_000);
        let mut alone = Engine::new(Regime::PerRequest { offload: true }, speed(), 100);
        alone.submit(req(1, 900, 100, 0.0), 0.0);
        let (_, fast) = run_until_idle(&mut alone, 150_000);
        assert_eq!(off.counters.offloads, 1);
        assert!(slow > 5.0 * fast, "offloaded {slow} s vs alone {fast} s");
    }

    #[test]
    fn batching_shares_the_weight_read_so_two_requests_finish_sooner_than_twice_one() {
        let mut one = Engine::new(Regime::PerRequest { offload: false }, speed(), 1);
        one.submit(req(1, 100, 200, 0.0), 0.0);
        let (_, t1) = run_until_idle(&mut one, u64::MAX);
        let mut two = Engine::new(Regime::PerRequest { offload: false }, speed(), 1);
        two.submit(req(1, 100, 200, 0.0), 0.0);
        two.submit(req(2, 100, 200, 0.0), 0.0);
        let (_, t2) = run_until_idle(&mut two, u64::MAX);
        assert!(t2 < 1.5 * t1, "two {t2} s vs one {t1} s");
    }
}
