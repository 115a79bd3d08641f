//! Exact examples (Netflix style: exact inputs, exact outputs) and properties of `decide`
//! (DESIGN §4).

use super::*;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

/// A 24 GiB GPU whose KV lives in GPU bytes, headroom 0.85, reserve 1 GiB:
/// ceiling = 0.85 × 24 GiB − 1 GiB = 19.4 GiB (20_830_591_467 bytes... computed in `ceiling`).
pub(crate) fn gpu_pool() -> PoolPolicy {
    PoolPolicy {
        name: "default".into(),
        kv_placement: KvPlacement::GpuBytes,
        headroom: Headroom::from_ppm(850_000),
        reserve: Bytes::gib(1),
        kv_capacity_tokens: None,
        slots: None,
        slot_context_tokens: None,
        max_staleness: Millis::secs(5),
        needs_engine: false,
    }
}

fn ceiling() -> u64 {
    24 * GIB * 85 / 100 - GIB
}

fn profile(name: &str, kv_gib: u64) -> ProfilePolicy {
    ProfilePolicy {
        id: ProfileId::from(Into::<String>::into(name)),
        lane: format!("{name}@gpu"),
        pool: 0,
        declared: WorstCase {
            kv_bytes: Bytes::gib(kv_gib),
            extra_bytes: Bytes(0),
            kv_tokens: kv_gib * 8192,
            slots: 1,
            request_tokens: kv_gib * 8192,
            kv_bytes_per_token: 131_072,
        },
        max_parallel: None,
        guaranteed: 0,
        footprint: FootprintMode::Declared,
    }
}

fn policy(profiles: Vec<ProfilePolicy>) -> Policy {
    Policy {
        pools: vec![gpu_pool()],
        profiles,
        max_running: None,
        max_wait: Millis::secs(600),
    }
}

fn gpu(used_gib: u64) -> PoolObservation {
    PoolObservation {
        gpu: Some(GpuSample {
            at: Millis(1_000_000),
            total: Bytes::gib(24),
            used: Bytes::gib(used_gib),
            free: Bytes::gib(24 - used_gib),
        }),
        baseline: Some(Bytes::gib(used_gib)),
        engine: None,
    }
}

fn waiting(id: &str, profile: &str, priority: i64, created_s: u64) -> WaitingTask {
    WaitingTask {
        id: TaskId::from(Into::<String>::into(id)),
        profile: Some(ProfileId::from(Into::<String>::into(profile))),
        assignee: format!("{profile}@gpu"),
        priority,
        created_at: Millis::secs(created_s),
        // Just arrived in the lane, unless a test says otherwise (max_wait tests).
        waiting_since: Millis(1_000_000),
        readiness: Readiness::Ready,
    }
}

fn running(id: &str, profile: &str) -> RunningTask {
    RunningTask {
        id: TaskId::from(Into::<String>::into(id)),
        assignee: profile.into(),
        since: Millis::secs(900),
        context_tokens: None,
        requests_in_flight: None,
    }
}

fn obs(pool: PoolObservation, running: Vec<RunningTask>, waiting: Vec<WaitingTask>) -> Observation {
    Observation {
        now: Millis(1_000_000),
        pools: vec![pool],
        running,
        waiting,
        dual_dispatcher: None,
        latency_limit: None,
        learned: vec![],
        spread: vec![],
    }
}

fn released(d: &Decision) -> Vec<&str> {
    d.release.iter().map(|r| r.id.as_str()).collect()
}

fn reason_of<'a>(d: &'a Decision, id: &str) -> &'a HoldReason {
    &d.held
        .iter()
        .find(|h| h.id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} is not held"))
        .reason
}

#[test]
fn releases_in_priority_then_age_order_until_the_ceiling() {
    // Baseline 8 GiB; ceiling 19.4 GiB leaves 11.4 GiB: two 4 GiB coders fit (8), a third
    // would make 20 GiB > 19.4.
    let p = policy(vec![profile("coder", 4)]);
    let o = obs(
        gpu(8),
        vec![],
        vec![
            waiting("t_old", "coder", 0, 10),
            waiting("t_new", "coder", 0, 20),
            waiting("t_urgent", "coder", 5, 30),
        ],
    );
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_urgent", "t_old"]);
    assert_eq!(
        reason_of(&d, "t_new"),
        &HoldReason::VramHeadroom {
            needed: Bytes::gib(4),
            free: Bytes(ceiling() - 16 * GIB),
        }
    );
    assert_eq!(d.pools[0].ceiling_bytes, Some(Bytes(ceiling())));
    assert_eq!(d.pools[0].projected_bytes, Some(Bytes::gib(8)));
    assert_eq!(d.pools[0].projected_after_bytes, Some(Bytes::gib(16)));
}

#[test]
fn running_tasks_are_charged_their_worst_case_not_what_they_use_now() {
    // Two coders run; NVML shows only the baseline (their contexts are still small), but each
    // is charged 4 GiB: 8 + 8 = 16, so a third 4 GiB task does not fit.
    let p = policy(vec![profile("coder", 4)]);
    let o = obs(
        gpu(8),
        vec![running("t_a", "coder"), running("t_b", "coder")],
        vec![waiting("t_c", "coder", 0, 10)],
    );
    let d = decide(&p, &o);
    assert!(d.release.is_empty());
    assert_eq!(d.pools[0].projected_bytes, Some(Bytes::gib(16)));
}

#[test]
fn a_big_task_that_does_not_fit_does_not_block_smaller_ones_behind_it() {
    // 11.4 GiB free under the ceiling: the 12 GiB reasoner waits, the 1 GiB classifiers
    // behind it go (backfill).
    let p = policy(vec![profile("reasoner", 12), profile("classifier", 1)]);
    let o = obs(
        gpu(8),
        vec![],
        vec![
            waiting("t_big", "reasoner", 9, 10),
            waiting("t_s1", "classifier", 0, 20),
            waiting("t_s2", "classifier", 0, 30),
        ],
    );
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_s1", "t_s2"]);
    assert_eq!(reason_of(&d, "t_big").name(), "vram_headroom");
}

#[test]
fn after_max_wait_room_is_reserved_for_the_starving_task() {
    // The reasoner has waited 11 minutes (max_wait 10): its 12 GiB are reserved, so the
    // classifiers behind it no longer overtake it.
    let p = policy(vec![profile("reasoner", 12), profile("classifier", 1)]);
    let mut big = waiting("t_big", "reasoner", 9, 10);
    big.waiting_since = Millis(1_000_000 - 660_000);
    let o = obs(
        gpu(8),
        vec![],
        vec![big, waiting("t_s1", "classifier", 0, 20)],
    );
    let d = decide(&p, &o);
    assert!(d.release.is_empty());
    assert_eq!(
        reason_of(&d, "t_s1"),
        &HoldReason::Reserved {
            for_task: TaskId::from("t_big")
        }
    );
}

#[test]
fn max_parallel_and_max_running_cap_counts() {
    let mut coder = profile("coder", 1);
    coder.max_parallel = Some(1);
    let mut p = policy(vec![coder, profile("classifier", 1)]);
    p.max_running = Some(2);
    let o = obs(
        gpu(0),
        vec![],
        vec![
            waiting("t_c1", "coder", 0, 1),
            waiting("t_c2", "coder", 0, 2),
            waiting("t_k1", "classifier", 0, 3),
            waiting("t_k2", "classifier", 0, 4),
        ],
    );
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_c1", "t_k1"]);
    assert_eq!(
        reason_of(&d, "t_c2"),
        &HoldReason::PoolFull { max_parallel: 1 }
    );
    assert_eq!(
        reason_of(&d, "t_k2"),
        &HoldReason::MaxRunning { max_running: 2 }
    );
    p.max_running = None;
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_c1", "t_k1", "t_k2"]);
    assert_eq!(
        reason_of(&d, "t_c2"),
        &HoldReason::PoolFull { max_parallel: 1 }
    );
}

#[test]
fn guaranteed_room_is_kept_from_other_profiles() {
    // 11.4 GiB free; interactive keeps 1 task × 4 GiB: batch (3 GiB each) may use 7.4 GiB → 2.
    let mut interactive = profile("interactive", 4);
    interactive.guaranteed = 1;
    let p = policy(vec![interactive, profile("batch", 3)]);
    let o = obs(
        gpu(8),
        vec![],
        vec![
            waiting("t_b1", "batch", 0, 1),
            waiting("t_b2", "batch", 0, 2),
            waiting("t_b3", "batch", 0, 3),
        ],
    );
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_b1", "t_b2"]);
    assert_eq!(
        reason_of(&d, "t_b3"),
        &HoldReason::Guaranteed {
            for_profile: ProfileId::from("interactive")
        }
    );
}

#[test]
fn the_latency_limit_only_lowers_what_memory_allows() {
    let p = policy(vec![profile("classifier", 1)]);
    let mut o = obs(
        gpu(0),
        vec![running("t_r", "classifier")],
        vec![
            waiting("t_1", "classifier", 0, 1),
            waiting("t_2", "classifier", 0, 2),
        ],
    );
    o.latency_limit = Some(2);
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_1"]);
    assert_eq!(reason_of(&d, "t_2"), &HoldReason::LatencyLimit { limit: 2 });
}

#[test]
fn stale_or_missing_telemetry_holds_everything() {
    let p = policy(vec![profile("classifier", 1)]);
    let mut o = obs(gpu(0), vec![], vec![waiting("t_1", "classifier", 0, 1)]);
    o.now = Millis(1_000_000 + 5_001);
    let d = decide(&p, &o);
    assert!(d.release.is_empty());
    assert_eq!(
        reason_of(&d, "t_1"),
        &HoldReason::Stale {
            detail: "GPU sample 5001ms old (max_staleness 5s)".into()
        }
    );
    let o = obs(
        PoolObservation::default(),
        vec![],
        vec![waiting("t_1", "classifier", 0, 1)],
    );
    assert_eq!(decide(&p, &o).held[0].reason.name(), "stale");
}

#[test]
fn a_second_dispatcher_holds_everything() {
    let p = policy(vec![profile("classifier", 1)]);
    let mut o = obs(gpu(0), vec![], vec![waiting("t_1", "classifier", 0, 1)]);
    o.dual_dispatcher = Some("gateway pid 42 holds .dispatcher.lock".into());
    let d = decide(&p, &o);
    assert!(d.release.is_empty());
    assert_eq!(d.held[0].reason.name(), "dual_dispatcher");
}

#[test]
fn unknown_profiles_and_unfinished_parents_are_held_with_their_reason() {
    let p = policy(vec![profile("classifier", 1)]);
    let mut orphan = waiting("t_orphan", "classifier", 0, 1);
    orphan.profile = None;
    orphan.assignee = "nobody@gpu".into();
    let mut child = waiting("t_child", "classifier", 0, 2);
    child.readiness = Readiness::WaitingOnParent;
    let d = decide(&p, &obs(gpu(0), vec![], vec![orphan, child]));
    assert!(d.release.is_empty());
    assert_eq!(
        reason_of(&d, "t_orphan"),
        &HoldReason::UnknownProfile {
            assignee: "nobody@gpu".into()
        }
    );
    assert_eq!(reason_of(&d, "t_child"), &HoldReason::WaitingOnParent);
}

#[test]
fn a_task_that_can_never_fit_says_so() {
    // 20 GiB > the 19.4 GiB ceiling even with nothing else on the GPU.
    let p = policy(vec![profile("huge", 20)]);
    let d = decide(&p, &obs(gpu(2), vec![], vec![waiting("t_h", "huge", 0, 1)]));
    assert_eq!(reason_of(&d, "t_h").name(), "never_fits");
}

#[test]
fn engine_pool_charges_kv_tokens_against_the_engine_capacity() {
    // vLLM-like: NVML shows 72 of 80 GiB used (preallocated) and that is fine; KV capacity
    // 100_000 tokens × 0.85 = 85_000; 32k-token tasks: two fit (64k), a third (96k) not.
    let mut pool = gpu_pool();
    pool.kv_placement = KvPlacement::EnginePool;
    let mut p = policy(vec![profile("coder", 4)]);
    p.pools = vec![pool];
    let o = obs(
        kv_pool_obs(100_000, 1_000),
        vec![],
        vec![
            waiting("t_1", "coder", 0, 1),
            waiting("t_2", "coder", 0, 2),
            waiting("t_3", "coder", 0, 3),
        ],
    );
    let d = decide(&p, &o);
    assert_eq!(released(&d), vec!["t_1", "t_2"]);
    assert_eq!(
        reason_of(&d, "t_3"),
        &HoldReason::KvHeadroom {
            needed: 32_768,
            free: 85_000 - 65_536
        }
    );
}

/// An engine KV pool of `capacity` tokens (headroom 0.85) on an 80 GiB GPU, reporting `used`.
fn kv_pool_obs(capacity: u64, used: u64) -> PoolObservation {
    PoolObservation {
        gpu: Some(GpuSample {
            at: Millis(1_000_000),
            total: Bytes::gib(80),
            used: Bytes::gib(72),
            free: Bytes::gib(8),
        }),
        baseline: None,
        engine: Some(EngineSample {
            at: Millis(1_000_000),
            kv_capacity_tokens: Some(capacity),
            kv_used_tokens: Some(used),
            slots: None,
            slot_context_tokens: None,
        }),
    }
}

/// Ten coder tasks waiting on an engine KV pool of 100_000 tokens with `used` in use; the
/// coder learned its footprint (bound 20_000 tokens) and spreads as given.
fn learned_case(used: u64, mean: u64, sd: u64) -> (Policy, Observation) {
    let mut pool = gpu_pool();
    pool.kv_placement = KvPlacement::EnginePool;
    let mut coder = profile("coder", 1);
    coder.footprint = FootprintMode::Learned;
    coder.declared.kv_tokens = 20_000;
    coder.declared.request_tokens = 20_000;
    let waiting: Vec<WaitingTask> = (0..10)
        .map(|i| waiting(&format!("t_{i}"), "coder", 0, i))
        .collect();
    let mut o = obs(kv_pool_obs(100_000, used), vec![], waiting);
    o.learned = vec![Some(coder.declared)];
    o.spread = vec![Some(Spread {
        mean_kv_tokens: mean,
        sd_kv_tokens: sd,
        growth_per_min_kv_tokens: 0,
        growth_sd_per_min_kv_tokens: 0,
    })];
    let mut p = policy(vec![coder]);
    p.pools = vec![pool];
    (p, o)
}

#[test]
fn a_learned_spread_pools_running_tasks_in_an_engine_kv_pool() {
    // Ceiling 0.85 × 100_000 = 85_000. Tasks bounded by 20_000 tokens, mean 10_000, sd 2_000.
    // Charged bound by bound, four fit (80_000). Pooled, n tasks are charged
    // min(20_000·n, 10_000·n + ⌈2.326 · (⌊√(n · 2000²)⌋ + 1)⌉): n = 7 gives 70_000 + 12_310 =
    // 82_310 ≤ 85_000 (√28e6 = 5291.5), n = 8 gives 80_000 + 13_159 > 85_000 (√32e6 = 5656.9).
    let (p, o) = learned_case(0, 10_000, 2_000);
    let d = decide(&p, &o);
    assert_eq!(d.release.len(), 7);
    assert_eq!(d.pools[0].charged_after_kv_tokens, 82_310);
    assert_eq!(
        reason_of(&d, "t_7"),
        &HoldReason::KvHeadroom {
            needed: 93_159 - 82_310,
            free: 85_000 - 82_310
        }
    );
    // The same profile charged its declared bound (mode `max`): four.
    let mut declared = p.clone();
    declared.profiles[0].footprint = FootprintMode::Max;
    assert_eq!(decide(&declared, &o).release.len(), 4);
}

#[test]
fn a_pooled_charge_is_never_below_what_the_engine_reports_nor_above_the_bounds() {
    // The engine reports 80_000 tokens in use: the first task's pooled charge (14_655) does
    // not fit in the 5_000 left under that floor.
    let (p, o) = learned_case(80_000, 10_000, 2_000);
    let d = decide(&p, &o);
    assert!(d.release.is_empty());
    assert_eq!(
        reason_of(&d, "t_0"),
        &HoldReason::KvHeadroom {
            needed: 14_655,
            free: 5_000
        }
    );
    // A wide spread: the pooled sum would exceed the bounds, so the bounds are charged.
    let (p, o) = learned_case(0, 19_000, 50_000);
    assert_eq!(decide(&p, &o).release.len(), 4);
}

#[test]
fn a_running_task_is_charged_its_context_and_its_growth_over_the_horizon_in_a_kv_pool() {
    // Three coders run with 2_000 tokens of context each; the coder's tasks grow 4_000 tokens
    // a minute on average (deviation 400). Over 45 s each is charged mean 2_000 + 3_000 and
    // deviation 300, so five of the waiting ones fit under 85_000:
    // 15_000 + 50_000 + ⌈2.326 · (⌊√(3 · 300² + 5 · 2000²)⌋ + 1)⌉ = 65_000 + 10_474 = 75_474,
    // and a sixth would make it 75_000 + 11_461 = 86_461.
    let (p, mut o) = learned_case(0, 10_000, 2_000);
    o.spread[0] = o.spread[0].map(|s| Spread {
        growth_per_min_kv_tokens: 4_000,
        growth_sd_per_min_kv_tokens: 400,
        ..s
    });
    let seen = |id: &str, tokens: u64| RunningTask {
        context_tokens: Some(tokens),
        requests_in_flight: None,
        ..running(id, "coder")
    };
    o.running = vec![seen("r_0", 2_000), seen("r_1", 2_000), seen("r_2", 2_000)];
    let d = decide(&p, &o);
    assert_eq!(d.release.len(), 5);
    assert_eq!(d.pools[0].charged_after_kv_tokens, 75_474);
    // Unseen, they are charged as waiting tasks are: 30_000 + 40_000 + 12_310, four fit.
    let mut unseen = o.clone();
    unseen.running = vec![
        running("r_0", "coder"),
        running("r_1", "coder"),
        running("r_2", "coder"),
    ];
    assert_eq!(decide(&p, &unseen).release.len(), 4);
    // Near its peak (9_000 + 3_000 above the profile's mean 10_000), a task is charged the
    // profile's mean and deviation: the same four.
    let mut late = o.clone();
    late.running = vec![seen("r_0", 9_000), seen("r_1", 9_000), seen("r_2", 9_000)];
    assert_eq!(decide(&p, &late).release, decide(&p, &unseen).release);
    // Not learned how fast it grows: as if unseen.
    let mut unlearned = o.clone();
    unlearned.spread[0] = unlearned.spread[0].map(|s| Spread {
        growth_per_min_kv_tokens: 0,
        ..s
    });
    assert_eq!(decide(&p, &unlearned).release.len(), 4);
}

#[test]
fn a_spread_does_not_pool_gpu_bytes() {
    // Per-request engines (KV in GPU bytes): an overrun is an OOM, so bounds are charged.
    let mut p = policy(vec![profile("coder", 4)]);
    p.profiles[0].footprint = FootprintMode::Learned;
    let mut o = obs(
        gpu(0),
        vec![],
        (0..6)
            .map(|i| waiting(&format!("t_{i}"), "coder", 0, i))
            .collect(),
    );
    o.learned = vec![Some(p.profiles[0].declared)];
    o.spread = vec![Some(Spread {
        mean_kv_tokens: 1,
        sd_kv_tokens: 1,
        growth_per_min_kv_tokens: 0,
        growth_sd_per_min_kv_tokens: 0,
    })];
    // 19.4 GiB ceiling: four 4 GiB tasks, as without a spread.
    assert_eq!(decide(&p, &o).release.len(), 4);
}

#[test]
fn fixed_slots_queue_beyond_the_slot_count_and_reject_oversized_contexts() {
    let mut pool = gpu_pool();
    pool.slots = Some(2);
    pool.slot_context_tokens = Some(8192);
    let mut p = policy(vec![profile("small", 1), profile("long", 2)]);
    p.pools = vec![pool];
    let d = decide(
        &p,
        &obs(
            gpu(0),
            vec![running("t_r", "small")],
            vec![
                waiting("t_long", "long", 0, 1),
                waiting("t_1", "small", 0, 2),
                waiting("t_2", "small", 0, 3),
            ],
        ),
    );
    assert_eq!(released(&d), vec!["t_1"]);
    assert_eq!(reason_of(&d, "t_long").name(), "never_fits");
    assert_eq!(
        reason_of(&d, "t_2"),
        &HoldReason::NoSlot { needed: 1, free: 0 }
    );
}

#[test]
fn without_a_baseline_observed_use_and_charges_add_up() {
    // No baseline: projected = used (10) + charged (4) = 14; 5.4 GiB left: one 4 GiB task.
    let p = policy(vec![profile("coder", 4)]);
    let mut pool = gpu(10);
    pool.baseline = None;
    let d = decide(
        &p,
        &obs(
            pool,
            vec![running("t_r", "coder")],
            vec![waiting("t_1", "coder", 0, 1), waiting("t_2", "coder", 0, 2)],
        ),
    );
    assert_eq!(released(&d), vec!["t_1"]);
}

// ---- properties ----

fn arb_case() -> impl Strategy<Value = (Policy, Observation)> {
    let profiles = prop::collection::vec(
        (1u64..16, 0u64..2, prop::option::of(1u32..6), 0u32..2),
        1..4,
    );
    (
        profiles,
        0u64..20,                   // used GiB
        prop::option::of(0u64..20), // baseline GiB
        prop::collection::vec((0usize..4, -2i64..3, 0u64..1000, any::<bool>()), 0..40),
        prop::collection::vec(0usize..4, 0..6), // running
        prop::option::of(1u32..10),             // latency limit
        prop::option::of(1u32..20),             // max_running
    )
        .prop_map(
            |(profs, used, baseline, waits, runs, latency, max_running)| {
                let profiles: Vec<ProfilePolicy> = profs
                    .iter()
                    .enumerate()
                    .map(|(i, &(kv, extra, maxp, guaranteed))| {
                        let mut p = profile(&format!("p{i}"), kv);
                        p.declared.extra_bytes = Bytes::mib(extra * 512);
                        p.max_parallel = maxp;
                        p.guaranteed = guaranteed;
                        p
                    })
                    .collect();
                let n = profiles.len();
                let mut pool = gpu(used);
                pool.baseline = baseline.map(Bytes::gib);
                let waiting = waits
                    .iter()
                    .enumerate()
                    .map(|(i, &(pi, prio, created, todo))| {
                        let mut w =
                            waiting(&format!("t_{i:03}"), &format!("p{}", pi % n), prio, created);
                        w.waiting_since = Millis(created * 1000);
                        if todo && i % 5 == 0 {
                            w.readiness = Readiness::WaitingOnParent;
                        }
                        w
                    })
                    .collect();
                let running = runs
                    .iter()
                    .enumerate()
                    .map(|(i, &pi)| running(&format!("r_{i}"), &format!("p{}", pi % n)))
                    .collect();
                let mut p = policy(profiles);
                p.max_running = max_running;
                let mut o = obs(pool, running, waiting);
                o.latency_limit = latency;
                (p, o)
            },
        )
}

proptest! {
    #[test]
    fn nothing_admitted_makes_the_projected_peak_exceed_the_ceiling((p, o) in arb_case()) {
        let d = decide(&p, &o);
        let b = &d.pools[0];
        if !d.release.is_empty() {
            let after = b.projected_after_bytes.expect("sample present");
            prop_assert!(after <= b.ceiling_bytes.expect("sample present"));
        }
    }

    #[test]
    fn every_waiting_task_is_released_or_held_with_a_reason((p, o) in arb_case()) {
        let d = decide(&p, &o);
        prop_assert_eq!(d.release.len() + d.held.len(), o.waiting.len());
        let mut ids: Vec<&TaskId> = d.release.iter().map(|r| &r.id).chain(d.held.iter().map(|h| &h.id)).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), o.waiting.len());
    }

    #[test]
    fn the_same_inputs_give_the_same_decision((p, o) in arb_case()) {
        prop_assert_eq!(decide(&p, &o), decide(&p, &o));
        // Board order must not matter either.
        let mut shuffled = o.clone();
        shuffled.waiting.reverse();
        prop_assert_eq!(decide(&p, &o).release, decide(&p, &shuffled).release);
    }

    #[test]
    fn stale_telemetry_admits_nothing((p, mut o) in arb_case(), age in 5_001u64..100_000) {
        o.now = Millis(o.now.get() + age);
        prop_assert!(decide(&p, &o).release.is_empty());
    }

    #[test]
    fn more_free_memory_never_admits_fewer_tasks_of_one_size(
        kv in 1u64..8, used in 0u64..20, extra in 1u64..5, n in 0usize..30,
    ) {
        // With one task size, admission is a count under a ceiling: monotone in free memory.
        // (With mixed sizes, greedy backfill in priority order is not monotone in *count*; it
        // is in the head-of-line task, which the starvation guard protects.)
        let p = policy(vec![profile("p0", kv)]);
        let tasks: Vec<WaitingTask> = (0..n).map(|i| waiting(&format!("t_{i}"), "p0", 0, i as u64)).collect();
        let less = decide(&p, &obs(gpu(used.min(23)), vec![], tasks.clone()));
        let more = decide(&p, &obs(gpu(used.min(23).saturating_sub(extra)), vec![], tasks));
        prop_assert!(more.release.len() >= less.release.len());
    }

    #[test]
    fn decisions_survive_a_json_round_trip((p, o) in arb_case()) {
        let d = decide(&p, &o);
        let back: Decision = serde_json::from_str(&serde_json::to_string(&d).expect("serialize")).expect("deserialize");
        prop_assert_eq!(back, d);
        let o2: Observation = serde_json::from_str(&serde_json::to_string(&o).expect("serialize")).expect("deserialize");
        prop_assert_eq!(decide(&p, &o2), decide(&p, &o));
    }
}

proptest! {
    #[test]
    fn nothing_admitted_overfills_an_engine_kv_pool_or_its_slots(
        (mut p, mut o) in arb_case(),
        capacity in 1u64..400_000,
        used in 0u64..200_000,
        slots in prop::option::of(1u32..8),
    ) {
        p.pools[0].kv_placement = KvPlacement::EnginePool;
        p.pools[0].slots = slots;
        o.pools[0].engine = Some(EngineSample {
            at: o.now,
            kv_capacity_tokens: Some(capacity),
            kv_used_tokens: Some(used),
            slots: None,
            slot_context_tokens: None,
        });
        let d = decide(&p, &o);
        if !d.release.is_empty() {
            let b = &d.pools[0];
            prop_assert!(b.charged_after_kv_tokens <= b.ceiling_kv_tokens.expect("capacity given"));
            if let Some(s) = b.slots {
                prop_assert!(b.slots_used_after <= s);
            }
        }
    }
}

/// One waiting task per entry of `waits`, of profile `p{entry % n}`, created in that order.
fn queue(waits: &[usize], n: usize) -> Vec<WaitingTask> {
    waits
        .iter()
        .enumerate()
        .map(|(i, &pi)| waiting(&format!("t_{i:03}"), &format!("p{}", pi % n), 0, i as u64))
        .collect()
}

proptest! {
    #[test]
    fn nothing_admitted_makes_a_pooled_kv_charge_exceed_the_ceiling(
        profs in prop::collection::vec((1u64..60_000, 0u64..100, 0u64..100, any::<bool>()), 1..4),
        capacity in 1u64..400_000,
        used in 0u64..200_000,
        runs in prop::collection::vec(0usize..4, 0..8),
        waits in prop::collection::vec(0usize..4, 0..30),
    ) {
        // Independently of the ledger: over what runs and what is released, the bounds B,
        // means M and variances V; max(used, min(B, M + z·√V)) must stay under the ceiling.
        let mut pool = gpu_pool();
        pool.kv_placement = KvPlacement::EnginePool;
        let n = profs.len();
        let mut profiles = Vec::new();
        let mut learned = Vec::new();
        let mut spread = Vec::new();
        for (i, &(bound, mean_pc, sd_pc, pooled)) in profs.iter().enumerate() {
            let mut q = profile(&format!("p{i}"), 1);
            q.declared.kv_tokens = bound;
            q.declared.request_tokens = bound;
            q.footprint = if pooled { FootprintMode::Learned } else { FootprintMode::Max };
            learned.push(Some(q.declared));
            spread.push(Some(Spread {
                mean_kv_tokens: bound * mean_pc / 100,
                sd_kv_tokens: bound * sd_pc / 100,
                growth_per_min_kv_tokens: 0,
                growth_sd_per_min_kv_tokens: 0,
            }));
            profiles.push(q);
        }
        let mut p = policy(profiles);
        p.pools = vec![pool];
        let running: Vec<RunningTask> = runs
            .iter()
            .enumerate()
            .map(|(i, &pi)| running(&format!("r_{i}"), &format!("p{}", pi % n)))
            .collect();
        let waiting = queue(&waits, n);
        let mut o = obs(kv_pool_obs(capacity, used), running.clone(), waiting);
        o.learned = learned;
        o.spread = spread.clone();
        let d = decide(&p, &o);
        if d.release.is_empty() {
            return Ok(());
        }
        let index = |name: &str| p.profiles.iter().position(|q| q.id.as_str() == name).expect("known profile");
        let mut profiles_charged: Vec<usize> = running.iter().map(|r| index(&r.assignee)).collect();
        profiles_charged.extend(d.release.iter().map(|r| index(r.profile.as_str())));
        let (mut b, mut m, mut v) = (0f64, 0f64, 0f64);
        for pi in profiles_charged {
            let bound = p.profiles[pi].declared.kv_tokens as f64;
            b += bound;
            match (p.profiles[pi].footprint, spread[pi]) {
                (FootprintMode::Learned, Some(s)) => {
                    m += (s.mean_kv_tokens as f64).min(bound);
                    v += (s.sd_kv_tokens as f64).powi(2);
                }
                _ => m += bound,
            }
        }
        let pooled = b.min(m + 2.326 * v.sqrt()).max(used as f64);
        let ceiling = (capacity as f64 * 0.85).floor();
        prop_assert!(pooled <= ceiling + 1e-6, "pooled {pooled} > ceiling {ceiling}");
    }
}

proptest! {
    #[test]
    fn where_an_overrun_is_an_oom_running_tasks_stay_charged_their_bounds_whatever_their_context(
        profs in prop::collection::vec((1u64..6, 0u64..4), 1..4),
        used in 0u64..12,
        runs in prop::collection::vec((0usize..4, 0u64..100_000), 0..6),
        waits in prop::collection::vec(0usize..4, 0..20),
        growth in (0u64..100_000, 0u64..10_000),
    ) {
        // KV in GPU bytes (a per-request engine without paging): a running task small now
        // can still reach its bound, and overrunning the GPU is an OOM. Whatever context the
        // running tasks show and however fast their profiles learned to grow, the bounds of
        // everything running and released, over the baseline, stay under the ceiling.
        let n = profs.len();
        let mut profiles = Vec::new();
        let mut learned = Vec::new();
        let mut spread = Vec::new();
        for (i, &(kv, extra)) in profs.iter().enumerate() {
            let mut q = profile(&format!("p{i}"), kv);
            q.declared.extra_bytes = Bytes::mib(extra * 256);
            q.footprint = FootprintMode::Learned;
            learned.push(Some(q.declared));
            spread.push(Some(Spread {
                mean_kv_tokens: 1,
                sd_kv_tokens: 1,
                growth_per_min_kv_tokens: growth.0,
                growth_sd_per_min_kv_tokens: growth.1,
            }));
            profiles.push(q);
        }
        let p = policy(profiles);
        let running: Vec<RunningTask> = runs
            .iter()
            .enumerate()
            .map(|(i, &(pi, tokens))| RunningTask {
                context_tokens: Some(tokens),
                requests_in_flight: None,
                ..running(&format!("r_{i}"), &format!("p{}", pi % n))
            })
            .collect();
        let waiting = queue(&waits, n);
        let mut o = obs(gpu(used), running.clone(), waiting);
        o.learned = learned;
        o.spread = spread;
        let d = decide(&p, &o);
        if d.release.is_empty() {
            return Ok(());
        }
        let bound = |name: &str| {
            let q = p.profiles.iter().find(|q| q.id.as_str() == name).expect("known profile");
            u128::from(q.declared.gpu_bytes(KvPlacement::GpuBytes).get())
        };
        let charged: u128 = running.iter().map(|r| bound(&r.assignee)).sum::<u128>()
            + d.release.iter().map(|r| bound(r.profile.as_str())).sum::<u128>();
        let ceiling = u128::from(d.pools[0].ceiling_bytes.expect("a GPU sample").get());
        prop_assert!(
            u128::from(Bytes::gib(used).get()) + charged <= ceiling,
            "{charged} over a baseline of {used} GiB passes the ceiling {ceiling}"
        );
    }
}

proptest! {
    #[test]
    fn a_slot_charge_by_calls_in_flight_changes_nothing_where_they_are_unseen_or_no_latency_limit_holds(
        slots in 1u32..8,
        per_task in prop::collection::vec(1u32..4, 1..4),
        runs in prop::collection::vec((0usize..4, 0u32..5), 0..8),
        waits in prop::collection::vec(0usize..4, 0..12),
        limit in 1u32..20,
    ) {
        // Issue 14: a running task is charged the slots its calls hold only where the
        // pass-through sees them and a latency limit bounds the queue that can build. Unseen,
        // or with no limit, every running task is charged its declared slots as before; seen
        // with as many calls as it declares, the same. Where everything waiting is admitted
        // charged as declared, it is admitted charged by fewer calls too.
        let mut pool = gpu_pool();
        pool.slots = Some(slots);
        let profiles: Vec<ProfilePolicy> = per_task
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let mut q = profile(&format!("p{i}"), 1);
                q.declared.slots = k;
                q
            })
            .collect();
        let n = profiles.len();
        let mut p = policy(profiles);
        p.pools = vec![pool];
        let declared = |pi: usize| per_task[pi % n];
        let with = |calls: &dyn Fn(usize, u32) -> Option<u32>, latency: Option<u32>| {
            let running: Vec<RunningTask> = runs
                .iter()
                .enumerate()
                .map(|(i, &(pi, c))| RunningTask {
                    requests_in_flight: calls(pi, c),
                    ..running(&format!("r_{i}"), &format!("p{}", pi % n))
                })
                .collect();
            let mut o = obs(gpu(2), running, queue(&waits, n));
            o.latency_limit = latency;
            decide(&p, &o)
        };
        for latency in [None, Some(limit)] {
            let unseen = with(&|_, _| None, latency);
            prop_assert_eq!(&with(&|pi, _| Some(declared(pi)), latency), &unseen);
            let seen = with(&|_, c| Some(c), latency);
            if latency.is_none() {
                prop_assert_eq!(&seen, &unseen);
            }
            // (Not "at least as many releases": first fit in Hermes's order can spend freed
            // slots on a wide task ahead of narrow ones.)
            let fewer = with(&|pi, c| Some(c.min(declared(pi))), latency);
            if unseen.held.is_empty() {
                prop_assert!(fewer.held.is_empty());
            }
        }
    }
}

#[test]
fn under_a_latency_limit_a_running_task_between_calls_holds_no_slot() {
    // Issue 14: two slots, two running tasks. Unseen, they hold both slots; seen between
    // calls (0 in flight) and with one call, they hold one, so one more task is released.
    let mut pool = gpu_pool();
    pool.slots = Some(2);
    let mut p = policy(vec![profile("small", 1)]);
    p.pools = vec![pool];
    let run = |id: &str, calls: Option<u32>| RunningTask {
        requests_in_flight: calls,
        ..running(id, "small")
    };
    let waiting = vec![waiting("t_1", "small", 0, 1), waiting("t_2", "small", 0, 2)];
    let mut o = obs(
        gpu(0),
        vec![run("r_1", None), run("r_2", None)],
        waiting.clone(),
    );
    o.latency_limit = Some(10);
    assert_eq!(released(&decide(&p, &o)), Vec::<&str>::new());
    let mut o = obs(
        gpu(0),
        vec![run("r_1", Some(0)), run("r_2", Some(1))],
        waiting,
    );
    assert_eq!(
        released(&decide(&p, &o)),
        Vec::<&str>::new(),
        "no latency limit: charged as declared"
    );
    o.latency_limit = Some(10);
    assert_eq!(released(&decide(&p, &o)), vec!["t_1"]);
}
