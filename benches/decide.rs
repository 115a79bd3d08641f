//! Benchmark: one `decide` over 10,000 waiting and 200 running tasks (issue 3's target:
//! ≤ 1 ms on CI's kind of machine). Run with `cargo bench --bench decide`.
//!
//! No benchmark framework: the decision is deterministic and allocation-bound, so a plain
//! loop with `Instant` and order statistics over many runs is enough, and it keeps the build
//! lean (CRATES.md).

use kanban_governor::governor::*;
use std::hint::black_box;
use std::time::Instant;

fn profile(i: usize, kv_gib: u64) -> ProfilePolicy {
    ProfilePolicy {
        id: ProfileId::from(format!("p{i}")),
        lane: format!("p{i}@gpu"),
        pool: 0,
        declared: WorstCase {
            kv_bytes: Bytes::mib(kv_gib * 256),
            extra_bytes: Bytes::mib(64),
            kv_tokens: kv_gib * 2048,
            slots: 1,
            request_tokens: kv_gib * 2048,
            kv_bytes_per_token: 131_072,
        },
        max_parallel: Some(150),
        guaranteed: u32::from(i == 0),
        footprint: FootprintMode::Max,
    }
}

fn main() {
    let profiles: Vec<ProfilePolicy> = (0..8).map(|i| profile(i, 1 + i as u64)).collect();
    let policy = Policy {
        pools: vec![PoolPolicy {
            name: "default".into(),
            kv_placement: KvPlacement::GpuBytes,
            headroom: Headroom::from_ppm(850_000),
            reserve: Bytes::gib(1),
            kv_capacity_tokens: None,
            slots: None,
            slot_context_tokens: None,
            max_staleness: Millis::secs(5),
            needs_engine: false,
        }],
        profiles,
        max_running: Some(400),
        max_wait: Millis::secs(600),
    };
    let now = Millis::secs(1_000_000);
    let running = (0..200)
        .map(|i| RunningTask {
            id: TaskId::from(format!("r_{i:08x}")),
            assignee: format!("p{}", i % 8),
            since: Millis::secs(999_000),
            context_tokens: None,
            requests_in_flight: None,
        })
        .collect();
    let waiting = (0..10_000u64)
        .map(|i| WaitingTask {
            id: TaskId::from(format!("t_{i:08x}")),
            profile: Some(ProfileId::from(format!("p{}", i % 8))),
            assignee: format!("p{}@gpu", i % 8),
            priority: (i % 3) as i64,
            created_at: Millis::secs(990_000 + i),
            waiting_since: Millis::secs(999_000 + i / 20),
            readiness: if i % 10 == 0 {
                Readiness::WaitingOnParent
            } else {
                Readiness::Ready
            },
        })
        .collect();
    let obs = Observation {
        now,
        pools: vec![PoolObservation {
            gpu: Some(GpuSample {
                at: now,
                total: Bytes::gib(640),
                used: Bytes::gib(100),
                free: Bytes::gib(540),
            }),
            baseline: Some(Bytes::gib(90)),
            engine: None,
        }],
        running,
        waiting,
        dual_dispatcher: None,
        latency_limit: Some(300),
        learned: vec![None; 8],
        spread: vec![],
    };

    // Warm up, then time.
    for _ in 0..20 {
        black_box(decide(&policy, &obs));
    }
    let runs = 300;
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let d = black_box(decide(black_box(&policy), black_box(&obs)));
            let e = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(d.release.len() + d.held.len(), 10_000);
            e
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let d = decide(&policy, &obs);
    println!(
        "decide: 10000 waiting, 200 running, 8 profiles ({} released): min {:.3} ms, median {:.3} ms, p99 {:.3} ms, max {:.3} ms over {runs} runs",
        d.release.len(),
        times[0],
        times[runs / 2],
        times[runs * 99 / 100],
        times[runs - 1]
    );
}
