//! What the pass-through has seen, shared with the daemon (`/metrics`, `/status`) and with
//! footprint learning (the app's `learning` module, which reads it; an adapter names nothing
//! above the ports): per profile, requests by outcome, tokens, TTFT and requests in flight; per
//! task, requests in flight and its peak.
//!
//! **A task's peak** is the largest value, at any moment, of the sum over its requests in
//! flight of (prompt + generated) tokens, each request counted at its best-known size then:
//! the prompt estimated from the request body (bytes / 4) and the generated text estimated as
//! it streams, both replaced by the engine's `usage` when the answer ends with one. The
//! estimate errs high (JSON overhead counts as prompt), so the peak may be set by it;
//! `peak_exact` says whether every request in the sum was exact at the moment of the peak.
//!
//! **A task's final peak** is what footprint learning takes: the largest sum of the *final*
//! sizes (prompt + generated at the request's end: the engine's `usage`, else the estimate) of
//! requests in flight together. A request's size only grows while it runs, and whatever is in
//! flight at a moment was in flight at the last request start before it, so the largest sum
//! over the sets in flight at each request start bounds the real peak from above and is
//! reached when every member held its final size at once. Each start opens such a set; its
//! sum is known when its last member ends, and `final_peak_exact` says whether every member
//! reported `usage`. The in-flight estimate, which errs high, never enters it. Open sets with
//! the same members still in flight get the same sizes added from then on, so only the
//! larger is kept: a task holds at most one open set per request in flight.
//!
//! One std mutex: every update is a few map operations, never held across an `.await`, and a
//! poisoned lock is taken anyway (a panic in one connection must not stop the others from
//! counting). Tasks with nothing in flight are forgotten, oldest first, beyond [`MAX_TASKS`].

use super::inspect::Tokens;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Tasks remembered at most; beyond it the idle ones seen longest ago are forgotten.
// A busy board runs a few hundred tasks a day; 4,096 keeps days of them in a few hundred KiB.
pub const MAX_TASKS: usize = 4096;

/// Upper bounds (seconds) of the TTFT histogram buckets.
// From a cached one-token answer (~5 ms) to a long prefill on a loaded engine (a minute).
pub const TTFT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// How a request through the proxy ended (a bounded label set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer forwarded to its end.
    Ok,
    /// The engine answered 4xx; forwarded as sent.
    Http4xx,
    /// The engine answered 5xx; forwarded as sent.
    Http5xx,
    /// The engine could not be reached; the client got 502.
    Unreachable,
    /// The engine's answer broke off (reset, protocol error) after it began.
    UpstreamReset,
    /// The client went away before the answer ended; the engine's request was cancelled.
    ClientGone,
    /// The request body was larger than `proxy.max_body`; the client got 413.
    TooLarge,
    /// The path named a profile the config does not govern; the client got 404.
    UnknownProfile,
}

impl Outcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Http4xx => "http_4xx",
            Outcome::Http5xx => "http_5xx",
            Outcome::Unreachable => "unreachable",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::ClientGone => "client_gone",
            Outcome::TooLarge => "too_large",
            Outcome::UnknownProfile => "unknown_profile",
        }
    }
}

/// A fixed-bucket histogram ([`TTFT_BUCKETS`] plus +Inf), per-bucket counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    /// Count per bucket (the last is +Inf), not cumulative.
    pub counts: [u64; TTFT_BUCKETS.len() + 1],
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = TTFT_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(TTFT_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// `(upper bound, count)` per bucket, the last bound `f64::MAX` (+Inf).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        TTFT_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.counts)
            .collect()
    }

    /// The upper bound of the bucket holding the `q` quantile (`None` when empty; the last
    /// finite bound when it is in +Inf).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(TTFT_BUCKETS[i.min(TTFT_BUCKETS.len() - 1)]);
            }
        }
        TTFT_BUCKETS.last().copied()
    }
}

/// One profile's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileStats {
    /// Finished requests by outcome.
    pub requests: BTreeMap<Outcome, u64>,
    /// Prompt tokens of finished requests (exact plus estimated).
    pub prompt_tokens: u64,
    /// Generated tokens of finished requests (exact plus estimated).
    pub generated_tokens: u64,
    /// Of `prompt_tokens`, those estimated (no `usage` from the engine).
    pub prompt_tokens_estimated: u64,
    /// Of `generated_tokens`, those estimated.
    pub generated_tokens_estimated: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Time to the first body byte of 2xx answers.
    pub ttft: Histogram,
}

/// One task's counts.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStats {
    /// The profile of its latest request.
    pub profile: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Requests seen.
    pub requests: u64,
    /// Sum over its requests in flight of (prompt + generated) tokens now.
    pub tokens_now: u64,
    /// The largest `tokens_now` seen.
    pub peak_tokens: u64,
    /// Whether every request in the sum was exact (engine `usage`) at the peak.
    pub peak_exact: bool,
    /// The largest sum of final request sizes over requests in flight together (see the
    /// module doc), counted as their requests end; what footprint learning takes.
    pub final_peak_tokens: u64,
    /// Whether every request in the sum that set `final_peak_tokens` reported `usage`.
    pub final_peak_exact: bool,
    /// Requests in flight whose size is an estimate now.
    #[serde(skip)]
    estimated_now: u32,
    #[serde(skip)]
    last_seen: Option<Instant>,
    /// The sequence number of its next request.
    #[serde(skip)]
    next_seq: u64,
    /// Sets of requests in flight together whose sum is not known yet, oldest first.
    #[serde(skip)]
    open: Vec<OpenSet>,
}

/// The requests in flight at one request start (sequence number `seq`): the task's requests
/// with a sequence number up to `seq` that had not ended then.
#[derive(Debug, Clone)]
struct OpenSet {
    seq: u64,
    /// Members still in flight.
    pending: u32,
    /// Final sizes of the members that ended.
    tokens: u64,
    /// Every member that ended reported `usage`.
    exact: bool,
}

impl TaskStats {
    /// A request starts: a new set of everything in flight now (counted already).
    fn open_set(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.open.push(OpenSet {
            seq,
            pending: self.in_flight,
            tokens: 0,
            exact: true,
        });
        seq
    }

    /// The request `seq` ended at `size` tokens (`exact`: from the engine's `usage`).
    fn close_member(&mut self, seq: u64, size: u64, exact: bool) {
        for set in self.open.iter_mut().filter(|s| s.seq >= seq) {
            set.tokens += size;
            set.pending = set.pending.saturating_sub(1);
            set.exact &= exact;
        }
        let mut kept: Vec<OpenSet> = Vec::with_capacity(self.open.len());
        for set in self.open.drain(..) {
            if set.pending == 0 {
                if set.tokens > self.final_peak_tokens
                    || (set.tokens == self.final_peak_tokens && set.exact)
                {
                    self.final_peak_tokens = set.tokens;
                    self.final_peak_exact = set.exact;
                }
                continue;
            }
            // Same count in flight, same members in flight (the oldest ones still running):
            // the same sizes are added to both from now on, so the larger alone matters.
            match kept.last_mut() {
                Some(last) if last.pending == set.pending => {
                    if set.tokens > last.tokens || (set.tokens == last.tokens && set.exact) {
                        *last = set;
                    }
                }
                _ => kept.push(set),
            }
        }
        self.open = kept;
    }
}

#[derive(Debug, Default)]
struct Inner {
    profiles: BTreeMap<String, ProfileStats>,
    tasks: HashMap<String, TaskStats>,
}

/// Everything the proxy counts; see the module doc.
#[derive(Debug, Default)]
pub struct ProxyStats {
    inner: Mutex<Inner>,
    /// Client connections answered `503` at the connection cap.
    connections_refused: AtomicU64,
}

/// A copy for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Per profile (and `(unattributed)`).
    pub profiles: BTreeMap<String, ProfileStats>,
    /// Per task id seen.
    pub tasks: BTreeMap<String, TaskStats>,
    /// Client connections answered `503` at the connection cap.
    pub connections_refused: u64,
}

impl ProxyStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            profiles: g.profiles.clone(),
            tasks: g
                .tasks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
        }
    }

    /// A client connection was refused at the connection cap.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that ended before it reached the engine (413, 404, 502).
    pub fn refused(&self, profile: &str, outcome: Outcome) {
        let mut g = self.lock();
        *g.profiles
            .entry(profile.to_owned())
            .or_default()
            .requests
            .entry(outcome)
            .or_insert(0) += 1;
    }

    /// A request goes to the engine, `prompt_estimate` tokens by its body. The [`Flight`]
    /// counts it until it is dropped (also on a panic).
    pub fn begin(
        self: &Arc<Self>,
        profile: &str,
        task: Option<String>,
        prompt_estimate: u64,
    ) -> Flight {
        let mut g = self.lock();
        g.profiles.entry(profile.to_owned()).or_default().in_flight += 1;
        let mut seq = 0;
        if let Some(t) = &task {
            if !g.tasks.contains_key(t) {
                evict(&mut g.tasks);
            }
            let ts = g.tasks.entry(t.clone()).or_insert_with(|| TaskStats {
                profile: profile.to_owned(),
                in_flight: 0,
                requests: 0,
                tokens_now: 0,
                peak_tokens: 0,
                peak_exact: false,
                final_peak_tokens: 0,
                final_peak_exact: false,
                estimated_now: 0,
                last_seen: None,
                next_seq: 0,
                open: Vec::new(),
            });
            ts.profile = profile.to_owned();
            ts.in_flight += 1;
            ts.requests += 1;
            ts.estimated_now += 1;
            ts.last_seen = Some(Instant::now());
            ts.tokens_now += prompt_estimate;
            raise_peak(ts);
            seq = ts.open_set();
        }
        drop(g);
        Flight {
            stats: self.clone(),
            profile: profile.to_owned(),
            seq,
            task,
            prompt_estimate,
            generated_so_far: 0,
            exact: false,
            outcome: Outcome::ClientGone,
            usage: None,
            generated_estimate: 0,
            ended: false,
        }
    }
}

fn raise_peak(ts: &mut TaskStats) {
    if ts.tokens_now > ts.peak_tokens || (ts.tokens_now == ts.peak_tokens && ts.estimated_now == 0)
    {
        ts.peak_tokens = ts.tokens_now;
        ts.peak_exact = ts.estimated_now == 0;
    }
}

fn evict(tasks: &mut HashMap<String, TaskStats>) {
    while tasks.len() >= MAX_TASKS {
        let oldest = tasks
            .iter()
            .filter(|(_, t)| t.in_flight == 0)
            .min_by_key(|(_, t)| t.last_seen)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                tasks.remove(&k);
            }
            // Every remembered task has a request in flight: keep them all.
            None => return,
        }
    }
}

/// One request in flight; dropping it records how it ended.
#[derive(Debug)]
pub struct Flight {
    stats: Arc<ProxyStats>,
    profile: String,
    /// Its sequence number among its task's requests.
    seq: u64,
    task: Option<String>,
    prompt_estimate: u64,
    generated_so_far: u64,
    exact: bool,
    outcome: Outcome,
    usage: Option<Tokens>,
    generated_estimate: u64,
    /// Counted already (by [`Flight::end`]).
    ended: bool,
}

impl Flight {
    /// The first body byte of a 2xx answer arrived `after` the request did.
    pub fn first_byte(&self, after: Duration) {
        let mut g = self.stats.lock();
        if let Some(p) = g.profiles.get_mut(&self.profile) {
            p.ttft.observe(after.as_secs_f64());
        }
    }

    /// The generated-token estimate so far (while it streams), for the task's running total.
    pub fn generated(&mut self, so_far: u64) {
        if so_far == self.generated_so_far || self.exact {
            return;
        }
        let Some(task) = &self.task else {
            self.generated_so_far = so_far;
            return;
        };
        let mut g = self.stats.lock();
        if let Some(ts) = g.tasks.get_mut(task) {
            ts.tokens_now = ts.tokens_now - self.generated_so_far + so_far;
            raise_peak(ts);
        }
        self.generated_so_far = so_far;
    }

    /// How it ended: `usage` from the engine (exact) or `None`, and the generated estimate.
    /// Counted at once (before the client sees the end of the answer, so a client that reads
    /// the stats after its answer finds its request there); a second call does nothing.
    pub fn end(&mut self, outcome: Outcome, usage: Option<Tokens>, generated_estimate: u64) {
        if self.ended {
            return;
        }
        self.outcome = outcome;
        self.usage = usage;
        self.generated_estimate = generated_estimate;
        if let (Some(u), Some(task)) = (usage, &self.task) {
            // The exact size replaces the estimate for the last moment of the request.
            let mut g = self.stats.lock();
            if let Some(ts) = g.tasks.get_mut(task) {
                ts.tokens_now = ts.tokens_now - self.prompt_estimate - self.generated_so_far
                    + u.prompt
                    + u.generated;
                ts.estimated_now -= 1;
                raise_peak(ts);
            }
            self.exact = true;
            self.prompt_estimate = u.prompt;
            self.generated_so_far = u.generated;
        }
        self.record();
    }

    fn record(&mut self) {
        self.ended = true;
        let mut g = self.stats.lock();
        let p = g.profiles.entry(self.profile.clone()).or_default();
        p.in_flight = p.in_flight.saturating_sub(1);
        *p.requests.entry(self.outcome).or_insert(0) += 1;
        let size = match self.usage {
            Some(u) => {
                p.prompt_tokens += u.prompt;
                p.generated_tokens += u.generated;
                u.prompt + u.generated
            }
            None => {
                let generated = self.generated_estimate.max(self.generated_so_far);
                p.prompt_tokens += self.prompt_estimate;
                p.generated_tokens += generated;
                p.prompt_tokens_estimated += self.prompt_estimate;
                p.generated_tokens_estimated += generated;
                self.prompt_estimate + generated
            }
        };
        if let Some(task) = &self.task
            && let Some(ts) = g.tasks.get_mut(task)
        {
            ts.in_flight = ts.in_flight.saturating_sub(1);
            ts.tokens_now = ts
                .tokens_now
                .saturating_sub(self.prompt_estimate + self.generated_so_far);
            if !self.exact {
                ts.estimated_now = ts.estimated_now.saturating_sub(1);
            }
            ts.close_member(self.seq, size, self.usage.is_some());
            ts.last_seen = Some(Instant::now());
        }
    }
}

impl Drop for Flight {
    /// Not ended: the client went away (or the connection task panicked).
    fn drop(&mut self) {
        if !self.ended {
            self.record();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_peak_is_the_largest_sum_of_its_requests_in_flight_together() {
        let s = Arc::new(ProxyStats::default());
        let mut a = s.begin("coder", Some("t_1".into()), 1000);
        let mut b = s.begin("coder", Some("t_1".into()), 200);
        b.generated(50);
        assert_eq!(s.snapshot().tasks["t_1"].tokens_now, 1250);
        b.end(
            Outcome::Ok,
            Some(Tokens {
                prompt: 180,
                generated: 40,
            }),
            50,
        );
        drop(b);
        a.generated(300);
        let t = &s.snapshot().tasks["t_1"];
        assert_eq!((t.tokens_now, t.peak_tokens, t.in_flight), (1300, 1300, 1));
        assert!(!t.peak_exact);
        a.end(
            Outcome::Ok,
            Some(Tokens {
                prompt: 900,
                generated: 300,
            }),
            300,
        );
        drop(a);
        let snap = s.snapshot();
        let t = &snap.tasks["t_1"];
        assert_eq!((t.tokens_now, t.peak_tokens, t.requests), (0, 1300, 2));
        // The final sizes of the two, in flight together: 220 + 1200, every one exact.
        assert_eq!((t.final_peak_tokens, t.final_peak_exact), (1420, true));
        let p = &snap.profiles["coder"];
        assert_eq!((p.prompt_tokens, p.generated_tokens), (1080, 340));
        assert_eq!((p.prompt_tokens_estimated, p.in_flight), (0, 0));
        assert_eq!(p.requests[&Outcome::Ok], 2);
    }

    #[test]
    fn an_exact_peak_is_marked_and_a_dropped_flight_counts_as_client_gone() {
        let s = Arc::new(ProxyStats::default());
        let mut a = s.begin("coder", Some("t_2".into()), 10);
        a.end(
            Outcome::Ok,
            Some(Tokens {
                prompt: 50,
                generated: 5,
            }),
            5,
        );
        drop(a);
        assert!(s.snapshot().tasks["t_2"].peak_exact);
        let b = s.begin("coder", None, 40);
        drop(b);
        let p = &s.snapshot().profiles["coder"];
        assert_eq!(p.requests[&Outcome::ClientGone], 1);
        assert_eq!(p.prompt_tokens_estimated, 40);
    }

    fn usage(prompt: u64, generated: u64) -> Option<Tokens> {
        Some(Tokens { prompt, generated })
    }

    #[test]
    fn the_final_peak_is_the_largest_sum_of_final_sizes_in_flight_together_with_one_open_set_per_request()
     {
        let s = Arc::new(ProxyStats::default());
        let t = || Some("t_3".to_owned());
        // A long call; beside it, one after the other, B (small) then C (larger), then D
        // alone after A ended. The estimates (bytes / 4) are far above the real sizes.
        let mut a = s.begin("coder", t(), 9000);
        for (est, (p, g)) in [(5000, (100, 10)), (5000, (700, 50))] {
            let mut b = s.begin("coder", t(), est);
            b.end(Outcome::Ok, usage(p, g), g);
            drop(b);
            let g = s.lock();
            assert!(g.tasks["t_3"].open.len() <= 2, "{:?}", g.tasks["t_3"].open);
        }
        a.end(Outcome::Ok, usage(3000, 200), 200);
        drop(a);
        let mut d = s.begin("coder", t(), 9000);
        d.end(Outcome::Ok, usage(3500, 100), 100);
        drop(d);
        let snap = s.snapshot();
        let ts = &snap.tasks["t_3"];
        // A + C = 3200 + 750; D alone 3600; the live peak counted the estimates.
        assert_eq!((ts.final_peak_tokens, ts.final_peak_exact), (3950, true));
        assert_eq!(ts.peak_tokens, 14_000);
        assert!(s.lock().tasks["t_3"].open.is_empty());
    }

    #[test]
    fn a_request_without_usage_makes_its_final_peak_an_estimate() {
        let s = Arc::new(ProxyStats::default());
        let mut a = s.begin("coder", Some("t_4".into()), 400);
        let mut b = s.begin("coder", Some("t_4".into()), 40);
        b.generated(20);
        b.end(Outcome::Ok, None, 25);
        drop(b);
        a.end(Outcome::Ok, usage(300, 30), 30);
        drop(a);
        let t = &s.snapshot().tasks["t_4"];
        assert_eq!((t.final_peak_tokens, t.final_peak_exact), (395, false));
        // A client that went away: its estimate, not exact either.
        let c = s.begin("coder", Some("t_5".into()), 1000);
        drop(c);
        let t = &s.snapshot().tasks["t_5"];
        assert_eq!((t.final_peak_tokens, t.final_peak_exact), (1000, false));
    }

    #[test]
    fn idle_tasks_are_forgotten_oldest_first_beyond_the_bound() {
        let s = Arc::new(ProxyStats::default());
        let busy = s.begin("p", Some("busy".into()), 1);
        for i in 0..MAX_TASKS + 10 {
            drop(s.begin("p", Some(format!("t{i}")), 1));
        }
        let snap = s.snapshot();
        assert_eq!(snap.tasks.len(), MAX_TASKS);
        assert!(snap.tasks.contains_key("busy"));
        assert!(snap.tasks.contains_key(&format!("t{}", MAX_TASKS + 9)));
        assert!(!snap.tasks.contains_key("t0"));
        drop(busy);
    }

    #[test]
    fn the_histogram_puts_each_observation_in_its_bucket() {
        let mut h = Histogram::default();
        for s in [0.001, 0.2, 0.2, 500.0] {
            h.observe(s);
        }
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[5], 2);
        assert_eq!(h.counts[TTFT_BUCKETS.len()], 1);
        assert_eq!(h.quantile(0.5), Some(0.25));
        assert_eq!(h.quantile(1.0), Some(120.0));
        assert_eq!(h.buckets().last(), Some(&(f64::MAX, 1)));
    }
}
