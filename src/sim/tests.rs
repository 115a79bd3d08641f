//! Simulator properties: determinism and the governor's ceiling.

use super::*;
use proptest::prelude::*;

fn default_plan(seed: u64, strategies: Vec<StrategyName>, hours: f64) -> Plan {
    let setup = setup(&crate::config::embedded_default()).unwrap();
    let tasks = workload::scenario(
        workload::Scenario::Mixed,
        &setup.profiles,
        hours * 3600.0,
        seed,
    );
    Plan {
        setup,
        tasks,
        params: Params {
            horizon: hours * 3600.0 * 2.0,
            ..Params::default()
        },
        strategies,
        cap: 8,
    }
}

#[test]
fn the_same_seed_gives_the_same_table() {
    let a = simulate(
        &default_plan(
            3,
            vec![StrategyName::Unbounded, StrategyName::Governor],
            0.5,
        ),
        &mut |_| {},
    );
    let b = simulate(
        &default_plan(
            3,
            vec![StrategyName::Unbounded, StrategyName::Governor],
            0.5,
        ),
        &mut |_| {},
    );
    assert_eq!(report::csv(&a), report::csv(&b));
    let c = simulate(
        &default_plan(
            4,
            vec![StrategyName::Unbounded, StrategyName::Governor],
            0.5,
        ),
        &mut |_| {},
    );
    assert_ne!(report::csv(&a), report::csv(&c));
}

#[test]
fn the_embedded_default_host_is_vllm_with_its_configured_pool() {
    let s = setup(&crate::config::embedded_default()).unwrap();
    assert_eq!(
        s.host.regime,
        engine::Regime::Paged {
            capacity_tokens: 442_368,
            block_tokens: 16,
            max_seqs: 256
        }
    );
    assert_eq!(s.host.kv_bytes_per_token, 131_072);
    assert_eq!(s.ceiling, Ceiling::KvTokens(420_249));
}

/// A config the simulator builds is the one validation builds from it: validated, it has the
/// same pools, profiles and policy (so validation only checks it).
fn assert_valid(cfg: &Config, what: &str) {
    let text = crate::config::render::to_toml(cfg, false);
    let back = crate::config::validated(cfg, std::path::Path::new("/x/governor.toml"))
        .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
    assert_eq!(back.pools, cfg.pools, "{what}\n{text}");
    assert_eq!(back.policy(), cfg.policy(), "{what}\n{text}");
    let fields = |c: &Config| -> Vec<String> {
        c.profiles
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect()
    };
    assert_eq!(fields(&back), fields(cfg), "{what}\n{text}");
}

#[test]
fn flags_make_a_valid_config_for_every_engine() {
    for kind in EngineKind::ALL {
        for gib in [24u64, 48, 80] {
            let cfg = build_host_config(
                gib << 30,
                kind,
                "llama-3.1-8b",
                VLLM_DEFAULT_UTILIZATION,
                false,
            )
            .unwrap();
            assert_valid(&cfg, &format!("{kind} on {gib} GiB"));
            setup(&host_config(gib << 30, kind, "llama-3.1-8b").unwrap()).unwrap();
        }
    }
    let unified = build_host_config(
        UNIFIED_MEMORY_BYTES,
        EngineKind::Vllm,
        "llama-3.1-8b",
        UNIFIED_VLLM_UTILIZATION,
        true,
    )
    .unwrap();
    assert_valid(&unified, "unified-memory");
    // Validation still has the last word: a baseline above the GPU is refused.
    let e = host_config(24 << 30, EngineKind::Llamacpp, "gemma-3-27b").unwrap_err();
    assert!(e.0.contains("gpu.baseline"), "{e}");
    let e = host_config(8 << 30, EngineKind::Vllm, "qwen2.5-32b-instruct").unwrap_err();
    assert!(e.0.contains("--gpu-memory"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    /// Whatever the workload, the KV the governor's running tasks hold stays under its
    /// ceiling (plus block rounding) when each is charged its declared worst case, so the
    /// engine never preempts. (Pooled learned charges are a 99 % bound: see the next test.)
    #[test]
    fn the_governor_never_exceeds_its_ceiling(seed in 0u64..1000) {
        let plan = default_plan(seed, vec![StrategyName::GovernorDeclared], 0.5);
        let Ceiling::KvTokens(ceiling) = plan.setup.ceiling else { panic!("paged host") };
        let o = &simulate(&plan, &mut |_| {})[0];
        for p in &o.series {
            prop_assert!(
                p.kv_used <= ceiling + 32 * u64::from(p.running) * 2,
                "at {} s: {} KV tokens held over the ceiling {}", p.t, p.kv_used, ceiling
            );
        }
        prop_assert_eq!(o.preemptions, 0);
        prop_assert_eq!(o.ooms + o.offloads, 0);
    }
}

#[test]
fn the_default_governor_pools_learned_charges_within_its_preemption_budget() {
    // The embedded default learns footprints and pools them in vLLM's KV pool (a 99 % bound
    // on the sum), and charges a running task its context plus 45 s of growth: on these seeds
    // it holds more than the declared governor, and the engine preempts at most a tenth of
    // what it does under unbounded dispatch, with no timeout, OOM or offload (the bar).
    for seed in 1..=3 {
        let plan = default_plan(
            seed,
            vec![
                StrategyName::Governor,
                StrategyName::GovernorDeclared,
                StrategyName::Unbounded,
            ],
            1.0,
        );
        let rows = simulate(&plan, &mut |_| {});
        let (pooled, declared, unbounded) = (&rows[0], &rows[1], &rows[2]);
        assert!(
            feasible(pooled, unbounded.preemptions),
            "seed {seed}: {} preemptions (unbounded {}), {} timeouts, {} OOMs, {} offloads",
            pooled.preemptions,
            unbounded.preemptions,
            pooled.timeouts,
            pooled.ooms,
            pooled.offloads
        );
        assert_eq!(pooled.timeouts, 0, "seed {seed}");
        assert!(pooled.kv_peak > declared.kv_peak, "seed {seed}");
        assert!(pooled.completed > declared.completed, "seed {seed}");
    }
}

#[test]
fn feasible_means_the_governors_own_bar() {
    let plan = default_plan(1, vec![StrategyName::Unbounded], 0.1);
    let o = &simulate(&plan, &mut |_| {})[0];
    let ok = Outcome {
        ooms: 0,
        offloads: 0,
        timeouts: 0,
        preemptions: 10,
        ..o.clone()
    };
    assert!(feasible(&ok, 100));
    assert!(!feasible(
        &Outcome {
            preemptions: 11,
            ..ok.clone()
        },
        100
    ));
    assert!(!feasible(
        &Outcome {
            ooms: 1,
            ..ok.clone()
        },
        100
    ));
    assert!(!feasible(
        &Outcome {
            offloads: 1,
            ..ok.clone()
        },
        100
    ));
    let calls = ok.calls.max(100);
    assert!(!feasible(
        &Outcome {
            calls,
            timeouts: calls.div_ceil(50),
            ..ok.clone()
        },
        100
    ));
    assert!(feasible(
        &Outcome {
            calls,
            timeouts: calls / 51,
            ..ok
        },
        100
    ));
}

#[test]
fn the_governor_runs_tasks_on_a_llamacpp_host() {
    // The llama.cpp adapter reports the slots' n_ctx summed as the KV capacity; the simulated
    // engine must too, or its KV pool has no known capacity and the governor holds everything.
    let cfg = host_config(24 << 30, EngineKind::Llamacpp, "llama-3.1-8b").unwrap();
    let setup = setup(&cfg).unwrap();
    let tasks = workload::scenario(workload::Scenario::Burst, &setup.profiles, 600.0, 1);
    let plan = Plan {
        setup,
        tasks,
        params: Params {
            horizon: 3600.0,
            ..Params::default()
        },
        strategies: vec![StrategyName::Governor],
        cap: 8,
    };
    let o = &simulate(&plan, &mut |_| {})[0];
    assert!(o.completed > 0, "{o:?}");
    assert_eq!(o.overflows + o.ooms, 0);
}

#[test]
fn rows_run_in_parallel_come_in_plan_order_as_if_run_one_by_one() {
    let plan = default_plan(
        2,
        vec![
            StrategyName::Governor,
            StrategyName::Unbounded,
            StrategyName::LiveCap,
        ],
        0.25,
    );
    let rows = simulate(&plan, &mut |_| {});
    let one_by_one: Vec<Outcome> = strategies(&plan)
        .iter()
        .map(|s| run_one(&plan, s))
        .collect();
    assert_eq!(rows, one_by_one);
}

/// The progress bar's count: simulated seconds, never going back, ending at runs × horizon,
/// with the hindsight sweeps and the guard's extra run counted.
#[test]
fn progress_counts_simulated_seconds_up_to_every_run_times_the_horizon() {
    for strategies in [
        vec![StrategyName::Governor, StrategyName::LiveCap],
        vec![StrategyName::HermesGuard, StrategyName::HermesCaps],
    ] {
        let plan = default_plan(2, strategies, 0.05);
        let mut seen = Vec::new();
        simulate(&plan, &mut |s| seen.push(s));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        let total = simulated_seconds(&plan);
        assert_eq!(seen.last().copied(), Some(total));
        assert_eq!(total, run_count(&plan) as f64 * 360.0, "{seen:?}");
    }
}
