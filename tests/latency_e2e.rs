//! End-to-end proof of the latency limit on a real engine (issue 6 (c)): real Hermes workers
//! on a real board call a fake model server that, before answering each request, runs a real
//! streamed completion on a real `llama-server` (CPU, SmolLM2-135M, 4 slots), so the workers'
//! concurrency becomes real queueing there. The time to first token of those completions is
//! what the workers' users would feel.
//!
//! (a) plain `hermes kanban dispatch` starts every task at once: the TTFT p95 blows far past
//! the target; (b) `kanban-governor run` with a `ttft_slo` and memory that never binds (a
//! static 24 GiB GPU, an engine the governor knows only as OpenAI-compatible, so it has no
//! slot count to go by): the AIMD limit, fed by the one-token probe, rises while the target
//! is met, falls when it is not (or the probe gets no first token within the engine timeout),
//! holds tasks back, and every task finishes. The TTFT numbers
//! of both runs are printed (`cargo test --test latency_e2e -- --nocapture`).

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/llama.rs"]
mod llama;

use common::{FakeModel, Hermes, Work, wait_for};
use daemon::{Daemon, DaemonConfig};
use llama::{Llama, timed_completion};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tasks on the board.
const TASKS: usize = 12;
/// Completions run per model request, one after the other (each worker request is a few
/// seconds of real engine work, so the tasks' requests overlap as agents' do).
const COMPLETIONS_PER_REQUEST: usize = 2;
/// Tokens per completion.
const TOKENS: u32 = 128;
/// The TTFT target: above the engine's TTFT with its 4 slots busy, well below it at 8+.
const SLO_MS: u64 = 1_500;

/// TTFTs measured by the model server's work, in milliseconds.
type Ttfts = Arc<Mutex<Vec<u64>>>;

fn forwarding_model(url: &str) -> (FakeModel, Ttfts) {
    let ttfts: Ttfts = Arc::default();
    let (url, seen) = (url.to_owned(), ttfts.clone());
    let work: Work = Arc::new(move || {
        for _ in 0..COMPLETIONS_PER_REQUEST {
            if let Some((first, _)) = timed_completion(&url, TOKENS) {
                seen.lock().unwrap().push(first.as_millis() as u64);
            }
        }
    });
    (
        FakeModel::start_with_work(Duration::ZERO, Some(work)),
        ttfts,
    )
}

fn p95(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1]
}

fn all_done(h: &Hermes) -> Option<()> {
    h.tasks().iter().all(|t| t.status == "done").then_some(())
}

fn create_tasks(h: &Hermes) {
    for i in 0..TASKS {
        h.create(&format!("task {i}"), "agent", 0, &[]);
    }
}

#[test]
fn plain_dispatch_blows_past_the_ttft_target_and_the_latency_limit_moves_both_ways_holding_tasks_back()
 {
    let llama = Llama::start_with(4096, 4);
    let idle: Vec<u64> = (0..3)
        .filter_map(|_| timed_completion(&llama.url, TOKENS))
        .map(|(f, _)| f.as_millis() as u64)
        .collect();
    assert_eq!(idle.len(), 3, "llama-server answers:\n{}", llama.log());

    // (a) Plain dispatch: every ready task spawns at once.
    let (model, plain) = forwarding_model(&llama.url);
    let h = Hermes::new(&["agent"], &model);
    create_tasks(&h);
    h.run(&["kanban", "dispatch", "--json"]);
    // As the gateway does, dispatch again every 5 s: a worker whose call failed under this
    // load goes back to `ready` only when a dispatch runs (HERMES.md §3), and then must be
    // spawned again, or the plain run never finishes (seen once on 2 cores).
    // It waits for the measurement it needs (every task's completions), not for the workers'
    // closing turns, and its deadline is generous: it is a bound on a stuck run, not a
    // timing (on a 2-core host shared with a build, 400 s to every task done was once too
    // short).
    let mut last_dispatch = std::time::Instant::now();
    let expected = TASKS * COMPLETIONS_PER_REQUEST;
    wait_for(
        Duration::from_secs(900),
        "plain: every task's completions",
        || {
            if last_dispatch.elapsed() >= Duration::from_secs(5) {
                h.run(&["kanban", "dispatch", "--json"]);
                last_dispatch = std::time::Instant::now();
            }
            (plain.lock().unwrap().len() >= expected).then_some(())
        },
    );
    let plain = plain.lock().unwrap().clone();
    drop(h);
    drop(model);

    // (b) The governor, latency-limited.
    let (model, governed) = forwarding_model(&llama.url);
    let h = Hermes::new(&["agent"], &model);
    create_tasks(&h);
    let gpu_engine = format!(
        "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"1GiB\"\nheadroom = 1.0\nreserve = \"0B\"\n\n[engine]\nkind = \"openai\"\nurl = {:?}\nmax_staleness = \"10s\"",
        llama.url
    );
    let latency = format!(
        "[latency]\nttft_slo = \"{SLO_MS}ms\"\nsignal = \"probe\"\nmin_limit = 1\nmax_limit = {TASKS}\ndwell = \"3s\"\n"
    );
    let cfg = DaemonConfig::with_latency(
        &h.bin,
        h.path(),
        "1s",
        &gpu_engine,
        &latency,
        &[("agent", "1KiB", 2048)],
    );
    let mut d = Daemon::start(cfg.command(&[], &[]));
    let mut limits = Vec::new();
    let mut peak_running = 0;
    let started = std::time::Instant::now();
    let mut told = false;
    wait_for(
        Duration::from_secs(900),
        "governed: every task done",
        || {
            // Just before the deadline, say where things stand (the panic alone says nothing).
            if !told && started.elapsed() > Duration::from_secs(890) {
                told = true;
                let states: Vec<(String, String)> =
                    h.tasks().into_iter().map(|t| (t.id, t.status)).collect();
                eprintln!(
                    "governed run about to time out: tasks {states:?}\nlimit path {limits:?}\ndaemon log:\n{}",
                    d.log()
                );
            }
            let s = d.status();
            if let Some(l) = s["latency_limit"]["limit"].as_u64()
                && limits.last() != Some(&l)
            {
                limits.push(l);
            }
            let running = h.tasks().iter().filter(|t| t.status == "running").count();
            peak_running = peak_running.max(running);
            all_done(&h)
        },
    );
    let governed = governed.lock().unwrap().clone();
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());

    let (idle_p95, plain_p95, governed_p95) = (p95(&idle), p95(&plain), p95(&governed));
    eprintln!(
        "llama-server 4 slots, {TASKS} tasks, {COMPLETIONS_PER_REQUEST} completions per model request of {TOKENS} tokens, ttft_slo {SLO_MS} ms\n\
         idle TTFT p95 {idle_p95} ms\n\
         plain dispatch: TTFT p95 {plain_p95} ms over {} completions\n\
         governed: TTFT p95 {governed_p95} ms over {} completions, peak running {peak_running}, latency limit path {limits:?}",
        plain.len(),
        governed.len()
    );
    // Each task makes one or two model requests (the tool call; sometimes a closing text).
    assert!(
        plain.len() >= expected,
        "plain: {} of {expected} completions",
        plain.len()
    );
    assert!(
        governed.len() >= expected,
        "governed: {} of {expected}",
        governed.len()
    );
    assert!(
        plain_p95 > 2 * SLO_MS,
        "plain dispatch should blow past the target: p95 {plain_p95} ms"
    );
    // The limit found the engine's edge: it rose while latency met the target and fell when
    // it did not (a probe that got no first token within the engine timeout is overload too),
    // and it held tasks back: the journal has tasks waiting for it. (Not asserted: the peak
    // running count. How far slow start doubles before the released workers' first calls
    // reach the engine depends on how fast Python starts on the host, against a 3 s dwell.)
    let rose = limits.windows(2).any(|w| w[1] > w[0]);
    let fell = limits.windows(2).any(|w| w[1] < w[0]);
    let state = rusqlite::Connection::open_with_flags(
        cfg.state_dir.join("state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let held_for_latency: i64 = state
        .query_row(
            "SELECT COUNT(DISTINCT task) FROM decisions WHERE verdict = 'latency_limit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        rose && fell && held_for_latency > 0,
        "the limit should move both ways and hold tasks back: {limits:?}, peak running \
         {peak_running}, tasks held for it {held_for_latency}\ndaemon log:\n{}",
        d.log()
    );
    // Not asserted, reported: the governed p95 against plain dispatch's. On a 2-core host the
    // workers' own CPU use (Python start-up) slows llama-server as much as slot queueing does,
    // so the governed p95 lands well above the target even at low concurrency (see the notes
    // in BENCHMARKS.md).
}
