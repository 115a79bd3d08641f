//! Tests of `plan`: flags, the ready profiles, and plan counts held to `decide`.

use super::compute::plan;
use super::input::{input_from_args, parse_size};
use super::profiles::{READY_PROFILES, parse_profile, ready_profiles};
use super::*;
use crate::catalog;

fn args() -> PlanArgs {
    PlanArgs::default()
}

#[test]
fn sizes_must_be_binary_with_a_unit() {
    assert_eq!(parse_size("--x", "24GiB").unwrap(), 24 * Bytes::GIB);
    assert_eq!(parse_size("--x", "512MiB").unwrap(), 512 * Bytes::MIB);
    assert_eq!(parse_size("--x", "1.5GiB").unwrap(), 3 * Bytes::GIB / 2);
    let e = parse_size("--gpu-memory", "24").unwrap_err().to_string();
    assert!(e.contains("--gpu-memory") && e.contains("24GiB"), "{e}");
    let e = parse_size("--gpu-memory", "24GB").unwrap_err().to_string();
    assert!(e.contains("decimal") && e.contains("24GiB"), "{e}");
    assert!(parse_size("--x", "GiB").is_err());
    assert!(parse_size("--x", "3 parsecs").is_err());
    // One parser: what the config takes, a flag takes.
    assert_eq!(parse_size("--x", "24_000MiB").unwrap(), 24_000 * Bytes::MIB);
}

/// Issue 12: the flags are read as the config keys they stand for, with the same rules and
/// messages; each problem names its flag, and all of them are listed.
#[test]
fn flags_follow_the_config_keys_rules_and_name_the_flag() {
    let with = |set: &dyn Fn(&mut PlanArgs)| {
        let mut a = args();
        a.model = Some("llama-3.1-8b".into());
        a.max_context = Some(8192);
        set(&mut a);
        a
    };
    let refused: [(PlanArgs, &[&str]); 5] = [
        (
            with(&|a| {
                a.max_context = Some(0);
                a.requests_per_task = Some(0);
                a.extra_bytes = Some("3".into());
            }),
            &[
                "--max-context 0 is below 1",
                "--requests-per-task 0 is out of range",
                "--extra-bytes: \"3\" has no unit",
            ],
        ),
        // A name is a Hermes profile name, as the config's `name`.
        (
            with(&|a| a.name = Some("My Plan".into())),
            &["--name: \"My Plan\" is not a Hermes profile name"],
        ),
        // A KV dtype applies only to a catalog model, as the config's `kv_dtype`.
        (
            with(&|a| {
                a.model = None;
                a.kv_bytes_per_token = Some(131_072);
                a.kv_dtype = Some("fp8".into());
            }),
            &["--kv-dtype: applies only with model"],
        ),
        (
            with(&|a| {
                a.headroom = Some(1.5);
                a.gpu_memory = Some("0GiB".into());
            }),
            &[
                "--gpu-memory: \"0B\" leaves nothing to govern",
                "--headroom 1.5 is outside (0, 1]",
            ],
        ),
        // A reserve must be below the GPU's memory, the default reserve included (plan used
        // to plan a GPU with no room at all).
        (
            with(&|a| a.gpu_memory = Some("1GiB".into())),
            &["--reserve 1GiB is not below memory_total = 1GiB"],
        ),
    ];
    for (a, starts) in refused {
        let e = input_from_args(&a).unwrap_err();
        assert!(
            e.downcast_ref::<crate::error::UsageError>().is_some(),
            "exit 2: {e:#}"
        );
        let e = e.to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), starts.len(), "{e}");
        for (line, start) in lines.iter().zip(starts) {
            assert!(line.starts_with(start), "{e}");
        }
    }
    let i = input_from_args(&with(&|a| {
        a.name = Some("coder".into());
        a.gpu_memory = Some("1GiB".into());
        a.reserve = Some("512MiB".into());
        a.headroom = Some(0.5);
    }))
    .unwrap();
    assert_eq!(i.profiles[0].name, "coder");
    assert_eq!((i.gpu_memory, i.reserve), (Bytes::GIB, 512 * Bytes::MIB));
    assert_eq!(i.headroom.ppm(), 500_000);
    let i = input_from_args(&with(&|a| {
        a.model = None;
        a.kv_bytes_per_token = Some(131_072);
    }))
    .unwrap();
    let p = &i.profiles[0];
    assert_eq!((p.kv_bytes_per_token, p.max_context), (131_072, 8192));
}

#[test]
fn ready_profiles_parse_and_name_catalog_models() {
    let profiles = ready_profiles(Engine::Llamacpp).unwrap();
    assert_eq!(profiles.len(), READY_PROFILES.len());
    for p in &profiles {
        assert!(p.model.is_some(), "{}", p.name);
    }
}

#[test]
fn every_file_in_profiles_parses_and_opens_with_a_comment() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# "),
            "{} opens with a comment",
            path.display()
        );
        let profiles = parse_profile(&path.display().to_string(), &text, Engine::Llamacpp).unwrap();
        assert_eq!(profiles.len(), 1, "{}", path.display());
        let p = &profiles[0];
        let m = p.model.unwrap();
        assert!(
            p.max_context <= u64::from(m.max_context),
            "{}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn given_weight_memory_replaces_the_catalog_estimate() {
    let mut a = args();
    a.engine = Some(Engine::Openai);
    a.gpu_memory = Some("16GiB".into());
    a.kv_bytes_per_token = Some(131_072);
    a.max_context = Some(8_192);
    a.weight_memory = Some("6GiB".into());
    let r = plan(&input_from_args(&a).unwrap());
    assert_eq!(r.weight_bytes, 6 * Bytes::GIB);
    // 0.85 × 16 GiB − 1 GiB − 6 GiB − 4 GiB = 2.6 GiB: two 1 GiB tasks.
    assert_eq!(r.profiles[0].max_concurrent_alone, 2);
}

#[test]
fn llama_8b_on_24gib_llamacpp_fits_three_32k_tasks() {
    let mut a = args();
    a.gpu_memory = Some("24GiB".into());
    a.engine = Some(Engine::Llamacpp);
    a.model = Some("llama-3.1-8b-instruct".into());
    a.max_context = Some(32_768);
    let r = plan(&input_from_args(&a).unwrap());
    let p = &r.profiles[0];
    assert_eq!(p.kv_bytes_per_token, 131_072);
    assert_eq!(p.worst_case_bytes, 4 * Bytes::GIB);
    // 0.85 × 24 GiB − 1 GiB − 4.87 GB of Q4_K_M weights − 1 GiB = 13.9 GiB: 3 × 4 GiB.
    assert_eq!(p.max_concurrent_alone, 3);
    assert_eq!(r.slots, Some(3));
    assert_eq!(r.engine_settings.settings["ctx_size"], 3 * 32_768);
}

#[test]
fn plan_counts_agree_with_the_budget_arithmetic() {
    // Independent check of what decide returned: n × worst case ≤ budget < (n+1) × wc.
    let mut a = args();
    a.gpu_memory = Some("80GiB".into());
    a.engine = Some(Engine::Vllm);
    a.model = Some("qwen2.5-32b-instruct".into());
    a.weights = Some("fp8".into());
    a.max_context = Some(16_384);
    let r = plan(&input_from_args(&a).unwrap());
    let p = &r.profiles[0];
    let n = p.max_concurrent_alone;
    // 0.85 × 80 GiB − 1 GiB − 32.5 GB fp8 weights − 4 GiB = 32.7 GiB: 8 × 4 GiB.
    assert_eq!(n, 8);
    assert!(n * p.worst_case_bytes <= r.kv_budget_bytes);
    assert!((n + 1) * p.worst_case_bytes > r.kv_budget_bytes);
    assert_eq!(p.in_mix, n);
}

#[test]
fn sliding_windows_are_charged_as_the_config_charges_them() {
    let mut a = args();
    a.model = Some("gemma-3-27b".into());
    a.max_context = Some(32_768);
    a.engine = Some(Engine::Vllm);
    let r = plan(&input_from_args(&a).unwrap());
    // ENGINES.md §3: 2.91 GiB with the window honoured, 15.5 GiB treated as full.
    assert_eq!(r.profiles[0].worst_case_bytes, 3_120_562_176);
    assert_eq!(
        r.profiles[0].worst_case_bytes_full_attention,
        Some(507_904 * 32_768)
    );
    a.engine = Some(Engine::Ollama);
    let r = plan(&input_from_args(&a).unwrap());
    assert_eq!(r.profiles[0].worst_case_bytes, 507_904 * 32_768);
    assert_eq!(r.profiles[0].sliding_window_honoured, Some(false));
}

#[test]
fn context_beyond_the_model_never_fits() {
    let mut a = args();
    a.model = Some("qwen2.5-7b".into());
    a.max_context = Some(65_536);
    let r = plan(&input_from_args(&a).unwrap());
    assert_eq!(r.profiles[0].max_concurrent_alone, 0);
    let reason = r.profiles[0].never_fits.as_deref().unwrap();
    assert!(reason.contains("32768"), "{reason}");
}

#[test]
fn worst_case_beyond_the_budget_never_fits_with_the_decide_reason() {
    let mut a = args();
    a.gpu_memory = Some("80GiB".into());
    a.engine = Some(Engine::Vllm);
    a.model = Some("qwen2.5-32b".into());
    a.weights = Some("fp8".into());
    a.max_context = Some(32_768);
    // 5 × 8 GiB = 40 GiB against a 32.7 GiB KV budget.
    a.requests_per_task = Some(5);
    let r = plan(&input_from_args(&a).unwrap());
    let reason = r.profiles[0].never_fits.as_deref().unwrap();
    assert!(reason.contains("exceeds the KV budget"), "{reason}");
    assert!(reason.contains("decide: VramHeadroom"), "{reason}");
    assert_eq!(r.mix_tasks, 0);
    assert_eq!(r.never_fit.len(), 1);
}

#[test]
fn weights_that_fill_the_ceiling_are_named_as_the_reason() {
    let mut a = args();
    a.model = Some("qwen2.5-72b".into());
    a.weights = Some("fp8".into());
    a.max_context = Some(8_192);
    let r = plan(&input_from_args(&a).unwrap());
    assert_eq!(r.kv_budget_bytes, 0);
    let reason = r.profiles[0].never_fits.as_deref().unwrap();
    assert!(reason.contains("alone fill the ceiling"), "{reason}");
}

fn llama_profile(name: &str, ctx: u64, rpt: u32) -> PlanProfile {
    let m = catalog::lookup("llama-3.1-8b").unwrap();
    PlanProfile {
        name: name.into(),
        lane: format!("{name}@gpu"),
        model: Some(m),
        kv_dtype: KvDtype::F16,
        kv_bytes_per_token: m.kv_bytes_per_token(KvDtype::F16),
        max_context: ctx,
        requests_per_task: rpt,
        max_parallel: None,
        guaranteed: 0,
        extra_bytes: 0,
        footprint: FootprintMode::Max,
        declared: None,
    }
}

#[test]
fn an_engine_pool_is_planned_in_tokens_as_the_governor_charges_it() {
    // A vLLM pool sized by config: 442,368 KV tokens, headroom 0.85 = 376,012 tokens.
    let input = PlanInput {
        pool: "default".into(),
        gpu_memory: 80 * Bytes::GIB,
        engine: Engine::Vllm,
        headroom: crate::config::DEFAULT_HEADROOM,
        reserve: Bytes::GIB,
        weights: WeightFormat::Bf16,
        weight_memory: None,
        baseline: Some(72 * Bytes::GIB),
        max_running: None,
        placement: KvPlacement::EnginePool,
        kv_capacity_tokens: Some(442_368),
        overhead_per_model: 4 * Bytes::GIB,
        max_model_len: None,
        slots: None,
        profiles: vec![
            llama_profile("coder", 32_768, 1),
            llama_profile("researcher", 65_536, 2),
            llama_profile("big", 131_072, 3),
        ],
    };
    let r = plan(&input);
    assert_eq!(r.kv_budget_tokens, Some(376_012));
    // 376,012 / 32,768 = 11.5; 376,012 / 131,072 = 2.9.
    assert_eq!(r.profiles[0].max_concurrent_alone, 11);
    assert_eq!(r.profiles[1].max_concurrent_alone, 2);
    let reason = r.profiles[2].never_fits.as_deref().unwrap();
    assert!(reason.contains("KV tokens"), "{reason}");
    // The mix: interleaved coder, researcher, coder, researcher, ... within 376,012.
    let used: u64 = r.profiles[0].in_mix * 32_768 + r.profiles[1].in_mix * 131_072;
    assert!(used <= 376_012);
    assert!(
        used + 32_768 > 376_012,
        "a coder more would still fit: {}",
        r.summary
    );
}

#[test]
fn the_default_plan_mixes_the_ready_profiles() {
    let r = plan(&input_from_args(&args()).unwrap());
    assert_eq!(r.profiles.len(), 3);
    assert!(r.mix_tasks >= 3, "{}", r.summary);
    assert!(r.mix_worst_case_bytes <= r.kv_budget_bytes);
    assert!(r.profiles.iter().all(|p| p.in_mix >= 1), "{}", r.summary);
}

#[test]
fn a_slot_shorter_than_the_request_never_fits() {
    let mut a = args();
    a.engine = Some(Engine::Llamacpp);
    a.gpu_memory = Some("24GiB".into());
    a.model = Some("llama-3.1-8b".into());
    a.max_context = Some(32_768);
    a.ctx_size = Some(32_768);
    a.parallel = Some(4);
    let r = plan(&input_from_args(&a).unwrap());
    let reason = r.profiles[0].never_fits.as_deref().unwrap();
    assert!(reason.contains("slot's context of 8192"), "{reason}");
}

mod never_fits_agreement {
    //! Issue 12: `plan` (asking `decide`) and config validation (asking
    //! `governor::admission::feasible`) agree on "this profile can never fit" for random
    //! hosts and profiles (`config::tests::never_fits_agreement` holds validation to
    //! `decide` on engine pools).
    use super::*;
    use crate::config::{ConfigArgs, load_str};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn plan_from_flags_and_validation_of_the_same_host_agree(
            gpu_gib in 4u64..200,
            // What the GPU holds with no task, as a share of it (below it: validation
            // refuses a baseline at or above memory_total, plan does not ask).
            baseline_share in 0.0f64..0.95,
            // Many digits past the sixth: where float and integer headroom part ways.
            headroom in 0.05f64..=1.0,
            reserve_mib in 0u64..4096,
            bpt in 1u64..600_000,
            ctx in 1u64..300_000,
            requests in 1u32..4,
            extra_mib in 0u64..8192,
        ) {
            let gpu = gpu_gib << 30;
            let baseline = (gpu as f64 * baseline_share) as u64;
            let mut a = args();
            a.engine = Some(Engine::Openai);
            a.gpu_memory = Some(format!("{gpu}B"));
            a.headroom = Some(headroom);
            a.reserve = Some(format!("{reserve_mib}MiB"));
            a.weight_memory = Some(format!("{baseline}B"));
            a.overhead = Some("0B".into());
            a.kv_bytes_per_token = Some(bpt);
            a.max_context = Some(ctx);
            a.requests_per_task = Some(requests);
            a.extra_bytes = Some(format!("{extra_mib}MiB"));
            let r = plan(&input_from_args(&a).unwrap());
            prop_assert_eq!(r.baseline_bytes, baseline);
            let plan_says_never = !r.never_fit.is_empty();

            let text = format!(
                "[hermes]\nhome = \"/t/hh\"\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"{gpu}B\"\nbaseline = \"{baseline}B\"\nheadroom = {headroom:?}\nreserve = \"{reserve_mib}MiB\"\n\n[engine]\nkind = \"openai\"\nurl = \"none\"\n\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"{bpt}B\"\nmax_context_tokens = {ctx}\nrequests_per_task = {requests}\nextra_bytes = \"{extra_mib}MiB\"\n"
            );
            let validated = load_str(
                &text,
                std::path::Path::new("/t/governor.toml"),
                &ConfigArgs::default(),
                &|_| None,
            );
            let validation_says_never = match &validated {
                Ok(_) => false,
                Err(e) => {
                    prop_assert!(
                        e.problems.iter().all(|p| p.detail.contains("never")),
                        "{}: {}", text, e
                    );
                    true
                }
            };
            prop_assert_eq!(
                plan_says_never,
                validation_says_never,
                "{}plan: {:?}",
                text,
                r.never_fit
            );
        }
    }
}
