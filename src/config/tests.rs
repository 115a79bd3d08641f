//! Unit tests of the config stages: parsing, validation, precedence, policy, round trip.

use super::*;
use std::collections::HashMap;

/// An environment with only `HOME` set.
fn no_env(name: &str) -> Option<String> {
    (name == "HOME").then(|| "/home/test".to_owned())
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn origin() -> PathBuf {
    PathBuf::from("/etc/kg/governor.toml")
}

fn load_ok(toml: &str) -> Config {
    match load_str(toml, &origin(), &ConfigArgs::default(), &no_env) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn load_err(toml: &str) -> ConfigError {
    match load_str(toml, &origin(), &ConfigArgs::default(), &no_env) {
        Ok(c) => panic!("expected problems, got a config: {c:?}"),
        Err(e) => e,
    }
}

/// The one problem about `key`, with its message.
fn problem<'a>(e: &'a ConfigError, key: &str) -> &'a Problem {
    e.problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem about {key} in:\n{e}"))
}

const ONE_PROFILE: &str = r#"
[hermes]
home = "/srv/hermes"
[gpu]
telemetry = "static"
memory_total = "24GiB"
[engine]
kind = "ollama"
[[profiles]]
name = "coder"
model = "llama-3.1-8b"
max_context_tokens = 8192
"#;

#[test]
fn the_embedded_default_validates_and_its_three_profiles_share_one_vllm_pool() {
    let c = embedded_default();
    assert_eq!(c.profiles.len(), 3);
    let policy = c.policy();
    assert_eq!(policy.pools.len(), 1);
    assert_eq!(policy.pools[0].kv_placement, KvPlacement::EnginePool);
    assert_eq!(policy.pools[0].kv_capacity_tokens, Some(442_368));
    let coder = &policy.profiles[0];
    assert_eq!(coder.id.as_str(), "coder");
    assert_eq!(coder.lane, "coder@gpu");
    assert_eq!(coder.declared.kv_tokens, 32_768);
    // Llama-3.1-8B: 128 KiB of f16 KV per token.
    assert_eq!(coder.declared.kv_bytes, Bytes::gib(4));
    let researcher = &policy.profiles[1];
    assert_eq!(researcher.declared.kv_tokens, 2 * 65_536);
    assert_eq!(researcher.declared.slots, 2);
    assert_eq!(policy.profiles[2].guaranteed, 2);
    assert_eq!(c.profiles[0].spec().map(|s| s.name), Some("llama-3.1-8b"));
    assert_eq!(c.pools[0].engine.spec().map(|s| s.layers), Some(32));
}

#[test]
fn a_file_with_nothing_in_it_gives_the_documented_defaults() {
    let env = env_of(&[("HOME", "/home/me")]);
    let c = load_str("", &origin(), &ConfigArgs::default(), &env).unwrap();
    assert_eq!(c.hermes.home, PathBuf::from("/home/me/.hermes"));
    assert_eq!(c.hermes.board, "default");
    assert_eq!(c.hermes.bin, None);
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.name, "default");
    assert_eq!(p.gpu.headroom.fraction(), 0.85);
    assert_eq!(p.gpu.reserve, Bytes::gib(1));
    assert_eq!(p.gpu.telemetry, Telemetry::Nvml);
    assert_eq!(p.gpu.devices, vec![GpuSelector::Index(0)]);
    assert_eq!(p.engine.kind, EngineKind::Vllm);
    assert_eq!(p.engine.max_staleness, Duration::from_secs(5));
    assert_eq!(c.latency.ttft_slo, Duration::from_secs(2));
    assert_eq!((c.latency.min_limit, c.latency.max_limit), (1, 64));
    assert_eq!(c.latency.backoff, 0.9);
    assert_eq!(c.dispatch.interval, Duration::from_secs(5));
    assert_eq!(c.dispatch.max_wait, Duration::from_secs(600));
    assert_eq!(c.dispatch.timeout, Duration::from_secs(60));
    assert_eq!(
        c.dispatch.state_dir,
        PathBuf::from("/home/me/.hermes/governor")
    );
}

#[test]
fn profile_defaults_fill_lane_dtype_requests_footprint_and_pool() {
    let c = load_ok(ONE_PROFILE);
    let p = &c.profiles[0];
    assert_eq!(p.lane, "coder@gpu");
    assert_eq!(p.kv_dtype, KvDtype::F16);
    assert_eq!(p.requests_per_task, 1);
    assert_eq!(p.guaranteed, 0);
    assert_eq!(p.extra_bytes, Bytes(0));
    assert_eq!(p.footprint, FootprintMode::Max);
    assert_eq!(p.pool, "default");
    assert_eq!(p.declared.kv_bytes, Bytes::gib(1));
}

#[test]
fn flags_beat_env_which_beats_the_file() {
    let toml = "[gpu]\nheadroom = 0.7\n";
    let env = env_of(&[(ENV_HEADROOM, "0.6"), ("HOME", "/h")]);
    let c = load_str(toml, &origin(), &ConfigArgs::default(), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].gpu.headroom.fraction(), 0.7);
    assert!(matches!(
        c.sources["gpu.headroom"],
        Source::File { line: Some(2), .. }
    ));

    let c = load_str(toml, &origin(), &ConfigArgs::default(), &env).unwrap();
    assert_eq!(c.pools[0].gpu.headroom.fraction(), 0.6);
    assert_eq!(
        c.sources["gpu.headroom"],
        Source::Env {
            var: ENV_HEADROOM.into()
        }
    );

    let args = ConfigArgs {
        headroom: Some(0.5),
        ..ConfigArgs::default()
    };
    let c = load_str(toml, &origin(), &args, &env).unwrap();
    assert_eq!(c.pools[0].gpu.headroom.fraction(), 0.5);
    assert_eq!(
        c.sources["gpu.headroom"],
        Source::Flag {
            flag: "--headroom".into()
        }
    );
}

#[test]
fn env_overrides_hermes_bin_home_board_and_state_dir() {
    let env = env_of(&[
        (ENV_HERMES_BIN, "/opt/hermes/bin/hermes"),
        (ENV_HERMES_HOME, "/srv/h2"),
        (ENV_BOARD, "gpu"),
        (ENV_STATE_DIR, "/var/lib/kg"),
    ]);
    let toml = "[hermes]\nbin = \"/usr/bin/hermes\"\nhome = \"/srv/h1\"\nboard = \"other\"\n";
    let c = load_str(toml, &origin(), &ConfigArgs::default(), &env).unwrap();
    assert_eq!(c.hermes.bin, Some(PathBuf::from("/opt/hermes/bin/hermes")));
    assert_eq!(c.hermes.home, PathBuf::from("/srv/h2"));
    assert_eq!(c.hermes.board, "gpu");
    assert_eq!(c.dispatch.state_dir, PathBuf::from("/var/lib/kg"));
    let args = ConfigArgs {
        board: Some("third".into()),
        ..ConfigArgs::default()
    };
    let c = load_str(toml, &origin(), &args, &env).unwrap();
    assert_eq!(c.hermes.board, "third");
}

#[test]
fn a_bad_env_value_is_a_problem_naming_the_variable() {
    let env = env_of(&[(ENV_HEADROOM, "lots"), ("HOME", "/h")]);
    let e = load_str("", &origin(), &ConfigArgs::default(), &env).unwrap_err();
    let p = problem(&e, "headroom");
    assert_eq!(
        p.source,
        Source::Env {
            var: ENV_HEADROOM.into()
        }
    );
    assert!(
        p.to_string()
            .starts_with("env KANBAN_GOVERNOR_HEADROOM: headroom:"),
        "{p}"
    );
    assert!(p.detail.contains("0.85"), "{p}");
}

#[test]
fn headroom_outside_zero_to_one_names_the_key_line_and_the_fix() {
    for h in ["1.5", "0", "-0.2"] {
        let e = load_err(&format!("[gpu]\nheadroom = {h}\n"));
        let p = problem(&e, "gpu.headroom");
        assert!(p.detail.contains("outside (0, 1]"), "{p}");
        assert!(p.detail.contains("0.85"), "{p}");
        assert_eq!(p.to_string().split(':').nth(1), Some("2"), "line 2: {p}");
    }
    assert_eq!(
        load_ok("[gpu]\nheadroom = 1\n").pools[0]
            .gpu
            .headroom
            .fraction(),
        1.0
    );
}

/// Issue 12: headroom is held in the parts per million the governor applies it with.
#[test]
fn headroom_past_six_decimals_is_what_the_governor_applies_and_shown_so() {
    let c = load_ok("[gpu]\nheadroom = 0.8500004\n");
    assert_eq!(c.pools[0].gpu.headroom.ppm(), 850_000);
    assert_eq!(c.pools[0].gpu.headroom.to_string(), "0.85");
    let text = c.to_toml_annotated();
    assert!(
        text.lines().any(|l| l.starts_with("headroom = 0.85 ")),
        "{text}"
    );
    // Below half a part per million no ceiling could use it: an error that says why.
    let e = load_err("[gpu]\nheadroom = 0.0000001\n");
    let p = problem(&e, "gpu.headroom");
    assert!(p.detail.contains("below one part per million"), "{p}");
    assert!(p.detail.contains("0.85"), "{p}");
}

#[test]
fn invalid_toml_names_the_line() {
    let e = load_err("[gpu]\nheadroom = \n");
    assert_eq!(e.problems.len(), 1);
    let p = &e.problems[0];
    assert!(
        matches!(p.source, Source::File { line: Some(2), .. }),
        "{p}"
    );
    assert!(p.detail.contains("fix the TOML syntax"), "{p}");
}

#[test]
fn unknown_keys_are_named_with_the_expected_ones() {
    let e = load_err("[gpu]\nheadrom = 0.8\n");
    let p = problem(&e, "gpu.headrom");
    assert!(p.detail.contains("headroom"), "lists the valid keys: {p}");
    assert!(p.detail.contains("remove it or fix its spelling"), "{p}");
    let e = load_err("[gpus]\n");
    problem(&e, "gpus");
}

#[test]
fn sizes_must_be_iec_strings() {
    let e = load_err("[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GB\"\nreserve = -1\n");
    assert!(
        problem(&e, "gpu.memory_total")
            .detail
            .contains("write \"24GiB\"")
    );
    assert!(problem(&e, "gpu.reserve").detail.contains("negative"));
    let e = load_err("[gpu]\ntelemetry = \"static\"\nmemory_total = 24\n");
    assert!(problem(&e, "gpu.memory_total").detail.contains("\"24GiB\""));
}

#[test]
fn static_telemetry_needs_memory_total_and_other_telemetry_refuses_it() {
    let e = load_err("[gpu]\ntelemetry = \"static\"\n");
    assert!(
        problem(&e, "gpu.memory_total")
            .detail
            .contains("memory_total = \"80GiB\"")
    );
    let e = load_err("[gpu]\nmemory_total = \"80GiB\"\n");
    assert!(
        problem(&e, "gpu.memory_total")
            .detail
            .contains("telemetry = \"static\"")
    );
}

#[test]
fn replay_telemetry_resolves_against_the_config_directory() {
    let c = load_ok("[gpu]\ntelemetry = { replay = \"samples.jsonl\" }\n");
    assert_eq!(
        c.pools[0].gpu.telemetry,
        Telemetry::Replay(PathBuf::from("/etc/kg/samples.jsonl"))
    );
}

#[test]
fn a_relative_hermes_bin_is_refused_with_the_fix() {
    let e = load_err("[hermes]\nbin = \"hermes\"\n");
    let p = problem(&e, "hermes.bin");
    assert!(p.detail.contains("absolute path"), "{p}");
    assert!(p.detail.contains("command -v hermes"), "{p}");
}

#[test]
fn a_bad_board_slug_is_refused() {
    let e = load_err("[hermes]\nboard = \"My Board\"\n");
    assert!(problem(&e, "hermes.board").detail.contains("lowercase"));
}

/// `n` profiles with `comment` bytes of comment before each (issue 11: bounded everything).
fn many_profiles(n: usize, comment: usize) -> String {
    let mut t = String::from(
        "[hermes]\nhome = \"/srv/hermes\"\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n[engine]\nkind = \"ollama\"\n",
    );
    let pad = format!("# {}\n", "x".repeat(comment.saturating_sub(3)));
    for i in 0..n {
        if comment > 0 {
            t.push_str(&pad);
        }
        t.push_str(&format!(
            "[[profiles]]\nname = \"p{i}\"\nkv_bytes_per_token = 1024\nmax_context_tokens = 1024\n"
        ));
    }
    t
}

#[test]
fn more_profiles_than_the_limit_are_refused_naming_the_limit() {
    let c = load_ok(&many_profiles(MAX_PROFILES, 0));
    assert_eq!(c.profiles.len(), MAX_PROFILES);
    let e = load_err(&many_profiles(MAX_PROFILES + 1, 0));
    let p = problem(&e, "profiles");
    assert!(p.detail.contains("1025 profiles"), "{p}");
    assert!(p.detail.contains("at most 1024"), "{p}");
    assert!(
        matches!(p.source, Source::File { line: Some(8), .. }),
        "{p}"
    );
}

#[test]
fn http_public_defaults_to_false_and_renders_back() {
    assert!(!load_ok(ONE_PROFILE).http.public);
    let c = load_ok(&format!("{ONE_PROFILE}\n[http]\npublic = true\n"));
    assert!(c.http.public);
    assert!(matches!(
        c.sources["http.public"],
        Source::File { line: Some(15), .. }
    ));
    let back = load_ok(&c.to_toml());
    assert!(back.http.public);
    let e = load_err("[http]\npublic = \"yes\"\n");
    problem(&e, "(toml syntax)");
}

#[test]
fn a_config_near_both_limits_validates_in_linear_time() {
    // 1024 profiles in a file just under 4 MiB. Turning each value's span into a line used to
    // count newlines from the start of the file: about 10^10 byte reads here (minutes in a
    // debug build). Linear, it takes well under a second; the deadline is generous for a
    // loaded 2-core machine and still far below the quadratic time.
    let text = many_profiles(MAX_PROFILES, 3900);
    assert!(text.len() as u64 <= MAX_CONFIG_BYTES, "{}", text.len());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            load_str(&text, &origin(), &ConfigArgs::default(), &no_env).map(|c| c.profiles.len()),
        );
    });
    let loaded = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a 4 MiB config of 1024 profiles validates within 20 s");
    assert_eq!(loaded.map_err(|e| e.to_string()), Ok(MAX_PROFILES));
}

#[test]
fn an_unknown_model_lists_close_names() {
    let e = load_err(&ONE_PROFILE.replace("llama-3.1-8b", "llama-3.1-9b"));
    let p = problem(&e, "profiles[coder].model");
    assert!(p.detail.contains("llama-3.1-8b"), "{p}");
}

#[test]
fn a_task_bigger_than_the_gpu_can_never_fit_and_the_fix_gives_the_largest_context() {
    // Ollama charges KV in GPU bytes: 2 requests × 128 KiB × 65536 tokens = 16 GiB, but
    // 0.85 × 24 GiB − 1 GiB ≈ 19.4 GiB fits; 2 × 131072 tokens = 32 GiB does not.
    let toml = ONE_PROFILE.replace(
        "max_context_tokens = 8192",
        "max_context_tokens = 131072\nrequests_per_task = 2",
    );
    let e = load_err(&toml);
    let p = problem(&e, "profiles[coder].max_context_tokens");
    let room = (0.85 * (24u64 << 30) as f64).floor() as u64 - (1 << 30);
    let largest = room / (2 * 131_072);
    assert!(p.detail.contains("could never start"), "{p}");
    assert!(
        p.detail
            .contains(&format!("max_context_tokens ≤ {largest}")),
        "{p}"
    );
    let ok = ONE_PROFILE.replace(
        "max_context_tokens = 8192",
        &format!("max_context_tokens = {largest}\nrequests_per_task = 2"),
    );
    load_ok(&ok);
}

#[test]
fn a_task_bigger_than_the_engine_kv_pool_can_never_fit() {
    let toml = r#"
[engine]
kind = "vllm"
kv_capacity_tokens = 40000
[[profiles]]
name = "coder"
kv_bytes_per_token = 131072
max_context_tokens = 32768
requests_per_task = 2
"#;
    let e = load_err(toml);
    let p = problem(&e, "profiles[coder].max_context_tokens");
    assert!(p.detail.contains("max_context_tokens ≤ 17000"), "{p}");
}

#[test]
fn contexts_beyond_the_model_or_the_slot_are_refused() {
    let toml = r#"
[engine]
kind = "llamacpp"
slots = 2
slot_context_tokens = 8192
[[profiles]]
name = "coder"
model = "qwen2.5-7b"
max_context_tokens = 40000
requests_per_task = 3
"#;
    let e = load_err(toml);
    let ctx: Vec<&Problem> = e
        .problems
        .iter()
        .filter(|p| p.key == "profiles[coder].max_context_tokens")
        .collect();
    assert!(
        ctx.iter().any(|p| p.detail.contains("context window")),
        "{e}"
    );
    assert!(ctx.iter().any(|p| p.detail.contains("≤ 8192")), "{e}");
    assert!(
        problem(&e, "profiles[coder].requests_per_task")
            .detail
            .contains("≤ 2")
    );
}

#[test]
fn duplicate_profiles_and_lanes_and_lanes_that_are_profiles_are_refused() {
    let toml = r#"
[[profiles]]
name = "coder"
kv_bytes_per_token = 1000
max_context_tokens = 1000
[[profiles]]
name = "coder"
kv_bytes_per_token = 1000
max_context_tokens = 1000
lane = "x@gpu"
[[profiles]]
name = "writer"
kv_bytes_per_token = 1000
max_context_tokens = 1000
lane = "x@gpu"
[[profiles]]
name = "critic"
kv_bytes_per_token = 1000
max_context_tokens = 1000
lane = "writer"
[[profiles]]
name = "boss"
kv_bytes_per_token = 1000
max_context_tokens = 1000
lane = "default"
"#;
    let e = load_err(toml);
    assert!(
        problem(&e, "profiles[coder].name")
            .detail
            .contains("declared twice")
    );
    assert!(
        problem(&e, "profiles[writer].lane")
            .detail
            .contains("set lane = \"writer@gpu\"")
    );
    assert!(
        problem(&e, "profiles[critic].lane")
            .detail
            .contains("is the governed profile \"writer\"")
    );
    assert!(
        problem(&e, "profiles[boss].lane")
            .detail
            .contains("real Hermes profile")
    );
}

#[test]
fn lanes_that_hermes_would_read_as_a_flag_or_split_are_refused() {
    for lane in ["--help", "-x", "a b", "tab\there", ""] {
        let toml = format!(
            "[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\nlane = {lane:?}\n"
        );
        let e = load_err(&toml);
        let p = problem(&e, "profiles[coder].lane");
        assert!(
            p.detail.contains("not a usable assignee"),
            "{lane:?}: {}",
            p.detail
        );
        assert!(p.detail.contains("coder@gpu"), "{}", p.detail);
    }
}

#[test]
fn profiles_need_an_existing_pool_and_pools_declare_several_engines() {
    let toml = r#"
[pools.big.gpu]
index = [0, 1]
[pools.big.engine]
kind = "vllm"
[pools.small.gpu]
uuid = "GPU-abc"
[pools.small.engine]
kind = "ollama"
[[profiles]]
name = "coder"
kv_bytes_per_token = 1000
max_context_tokens = 1000
pool = "small"
[[profiles]]
name = "writer"
kv_bytes_per_token = 1000
max_context_tokens = 1000
pool = "big"
"#;
    let c = load_ok(toml);
    let policy = c.policy();
    assert_eq!(policy.pools.len(), 2);
    assert_eq!(policy.pools[0].name, "big");
    assert_eq!(c.pools[0].gpu.devices.len(), 2);
    assert_eq!(policy.pools[1].kv_placement, KvPlacement::GpuBytes);
    assert_eq!(policy.profiles[0].pool, 1);
    assert_eq!(policy.profiles[1].pool, 0);

    let e = load_err(&toml.replace("pool = \"big\"", "pool = \"huge\""));
    let p = problem(&e, "profiles[writer].pool");
    assert!(p.detail.contains("\"big\", \"small\""), "{p}");
    // Without [gpu]/[engine] there is no pool "default" for a profile without `pool`.
    let e = load_err(&toml.replace("pool = \"big\"", ""));
    problem(&e, "profiles[writer].pool");
}

#[test]
fn the_shorthand_and_a_pool_named_default_conflict() {
    let e = load_err("[gpu]\n[pools.default.gpu]\n[pools.default.engine]\n");
    problem(&e, "pools.default");
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let e = load_err(
        "[gpu]\nheadroom = 2.0\nreserve = \"1GB\"\n[latency]\nbackoff = 0.2\n[dispatch]\ninterval = 5\n",
    );
    assert_eq!(e.problems.len(), 4, "{e}");
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gpu.headroom",
            "gpu.reserve",
            "latency.backoff",
            "dispatch.interval"
        ]
    );
}

#[test]
fn policy_charges_ollama_in_gpu_bytes_and_vllm_in_its_pool() {
    let c = load_ok(ONE_PROFILE);
    let policy = c.policy();
    assert_eq!(policy.pools[0].kv_placement, KvPlacement::GpuBytes);
    let w = policy.profiles[0].declared;
    assert_eq!(w.kv_bytes, Bytes::gib(1));
    assert_eq!(w.kv_tokens, 8192);
    assert_eq!(w.slots, 1);
    assert_eq!(w.request_tokens, 8192);
    assert_eq!(policy.max_wait, Millis(600_000));
    assert_eq!(policy.pools[0].max_staleness, Millis(5_000));
}

#[test]
fn the_rendered_config_reads_back_to_the_same_config() {
    let mut configs = vec![embedded_default(), load_ok(ONE_PROFILE)];
    configs.push(load_ok(
        r#"
[hermes]
bin = "/usr/bin/hermes"
home = "/srv/h"
board = "gpu"
max_semantics = "per-tick"
[pools.a.gpu]
uuid = ["GPU-1", "GPU-2"]
telemetry = { replay = "r.jsonl" }
headroom = 0.5
[pools.a.engine]
kind = "openai"
url = "http://h:1/"
[pools.b.gpu]
telemetry = "host"
[pools.b.engine]
kind = "llamacpp"
slots = 4
slot_context_tokens = 8192
max_staleness = "1m 30s"
[latency]
signal = "probe"
dwell = "1s 500ms"
[dispatch]
max_running = 9
state_dir = "st"
[[profiles]]
name = "x"
lane = "x-lane"
kv_bytes_per_token = 1234
max_context_tokens = 4096
extra_bytes = "1536MiB"
footprint = "learned"
pool = "b"
max_parallel = 3
guaranteed = 1
"#,
    ));
    for c in configs {
        let text = c.to_toml();
        let back = load_str(&text, &origin(), &ConfigArgs::default(), &no_env)
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        let strip = |c: &Config| {
            let mut v = serde_json::to_value(c).unwrap();
            v.as_object_mut().unwrap().remove("path");
            v
        };
        assert_eq!(strip(&back), strip(&c), "{text}");
        assert_eq!(back.policy(), c.policy());
    }
}

#[test]
fn the_annotated_rendering_says_where_values_came_from() {
    let env = env_of(&[(ENV_BOARD, "gpu"), ("HOME", "/h")]);
    let c = load_str(
        "[gpu]\nheadroom = 0.7\n",
        &origin(),
        &ConfigArgs::default(),
        &env,
    )
    .unwrap();
    let text = c.to_toml_annotated();
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .to_owned()
    };
    assert!(
        line("headroom").ends_with("# config /etc/kg/governor.toml:2"),
        "{text}"
    );
    assert!(
        line("board").ends_with("# env KANBAN_GOVERNOR_BOARD"),
        "{text}"
    );
    assert!(line("reserve").ends_with("# default"), "{text}");
}

#[test]
fn config_path_prefers_flag_then_env_then_hermes_home_then_home() {
    let args = ConfigArgs {
        config: Some("/a.toml".into()),
        ..ConfigArgs::default()
    };
    let env = env_of(&[
        (ENV_CONFIG, "/b.toml"),
        (ENV_HERMES_HOME, "/hh"),
        ("HOME", "/home/me"),
    ]);
    assert_eq!(
        config_path(&args, &env).unwrap().0,
        PathBuf::from("/a.toml")
    );
    let d = ConfigArgs::default();
    let (p, s) = config_path(&d, &env).unwrap();
    assert_eq!(p, PathBuf::from("/b.toml"));
    assert!(matches!(s, Source::Env { .. }));
    let env = env_of(&[(ENV_HERMES_HOME, "/hh"), ("HOME", "/home/me")]);
    assert_eq!(
        config_path(&d, &env).unwrap(),
        (PathBuf::from("/hh/governor.toml"), Source::Default)
    );
    let env = env_of(&[("HOME", "/home/me")]);
    assert_eq!(
        config_path(&d, &env).unwrap().0,
        PathBuf::from("/home/me/.hermes/governor.toml")
    );
    assert_eq!(config_path(&d, &|_: &str| None), None);
}

#[test]
fn a_missing_explicit_file_is_an_error_and_a_missing_default_file_means_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let args = ConfigArgs {
        config: Some(missing.clone()),
        ..ConfigArgs::default()
    };
    let e = load(&args, &no_env).unwrap_err();
    let p = problem(&e, "config");
    assert!(p.detail.contains("not found"), "{p}");
    assert!(p.detail.contains(&missing.display().to_string()), "{p}");

    let home = dir.path().display().to_string();
    let env = env_of(&[("HOME", home.as_str())]);
    let c = load(&ConfigArgs::default(), &env).unwrap();
    assert_eq!(c.path, None);
    assert_eq!(c.hermes.home, dir.path().join(".hermes"));
}

#[test]
fn profiles_dir_files_load_relative_to_the_config_and_lanes_may_not_be_hermes_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hermes");
    std::fs::create_dir_all(home.join("profiles/reviewer")).unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::write(
        dir.path().join("governor.toml"),
        format!(
            "profiles_dir = \"profiles\"\n[hermes]\nhome = \"{}\"\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profiles/a.toml"),
        "name = \"coder\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profiles/b.toml"),
        "name = \"writer\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    let args = ConfigArgs {
        config: Some(dir.path().join("governor.toml")),
        ..ConfigArgs::default()
    };
    let c = load(&args, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["coder", "writer"]);

    std::fs::write(
        dir.path().join("profiles/b.toml"),
        "name = \"writer\"\nlane = \"reviewer\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    let e = load(&args, &no_env).unwrap_err();
    let p = problem(&e, "profiles[writer].lane");
    assert!(p.detail.contains("real Hermes profile"), "{p}");
    assert!(p.to_string().contains("profiles/b.toml:2"), "{p}");
}

#[test]
fn guarantees_that_cannot_all_fit_together_are_refused() {
    let toml = r#"
[engine]
kind = "vllm"
kv_capacity_tokens = 100000
[[profiles]]
name = "a"
kv_bytes_per_token = 1000
max_context_tokens = 30000
guaranteed = 2
[[profiles]]
name = "b"
kv_bytes_per_token = 1000
max_context_tokens = 10000
guaranteed = 3
"#;
    // 2 × 30000 + 3 × 10000 = 90000 > 0.85 × 100000.
    let e = load_err(toml);
    let p = problem(&e, "profiles[b].guaranteed");
    assert!(p.detail.contains("90000 KV tokens > 85000"), "{p}");
    load_ok(&toml.replace("guaranteed = 3", "guaranteed = 2"));
}

#[test]
fn kv_bytes_per_token_takes_an_integer_or_an_iec_size() {
    let base = "[[profiles]]\nname = \"x\"\nmax_context_tokens = 1024\n";
    let c = load_ok(&format!("{base}kv_bytes_per_token = \"128KiB\"\n"));
    assert_eq!(c.profiles[0].kv_bytes_per_token, Some(131_072));
    assert_eq!(c.profiles[0].declared.kv_bytes, Bytes::mib(128));
    let c = load_ok(&format!("{base}kv_bytes_per_token = 131072\n"));
    assert_eq!(c.profiles[0].kv_bytes_per_token, Some(131_072));
    let e = load_err(&format!("{base}kv_bytes_per_token = \"128KB\"\n"));
    assert!(
        problem(&e, "profiles[x].kv_bytes_per_token")
            .detail
            .contains("\"128KiB\"")
    );
    let e = load_err(&format!("{base}kv_bytes_per_token = 0\n"));
    problem(&e, "profiles[x].kv_bytes_per_token");
}

#[test]
fn max_semantics_accepts_both_spellings_and_names_the_choices() {
    let c = load_ok("[hermes]\nmax_semantics = \"live-cap\"\n");
    assert_eq!(c.hermes.max_semantics, Some(MaxSemantics::LiveCap));
    let e = load_err("[hermes]\nmax_semantics = \"live\"\n");
    assert!(
        problem(&e, "hermes.max_semantics")
            .detail
            .contains("\"per_tick\"")
    );
}

#[test]
fn a_tilde_in_file_paths_is_the_users_home() {
    let c = load_ok("[hermes]\nhome = \"~/.hermes\"\n[dispatch]\nstate_dir = \"~/kg\"\n");
    assert_eq!(c.hermes.home, PathBuf::from("/home/test/.hermes"));
    assert_eq!(c.dispatch.state_dir, PathBuf::from("/home/test/kg"));
}

#[test]
fn profiles_dir_files_may_carry_the_profiles_header_and_hold_several_profiles() {
    // Issue 15: profiles/*.toml could not be pasted into a config (no [[profiles]] header);
    // with the header they are read both ways.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::write(
        dir.path().join("governor.toml"),
        "profiles_dir = \"profiles\"\n[hermes]\nhome = \"/srv/hermes\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profiles/a.toml"),
        "name = \"bare\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profiles/b.toml"),
        "# two in one file\n[[profiles]]\nname = \"one\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n\n[[profiles]]\nname = \"two\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    let args = ConfigArgs {
        config: Some(dir.path().join("governor.toml")),
        ..ConfigArgs::default()
    };
    let c = load(&args, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["bare", "one", "two"]);
    // Problems still name the file and line of the profile in the header form.
    std::fs::write(
        dir.path().join("profiles/b.toml"),
        "[[profiles]]\nname = \"one\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n\n[[profiles]]\nname = \"two\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 0\n",
    )
    .unwrap();
    let e = load(&args, &no_env).unwrap_err();
    let p = problem(&e, "profiles[two].max_context_tokens");
    assert!(p.to_string().contains("profiles/b.toml:9"), "{p}");
    // A key beside the tables is unknown, named with its fix.
    std::fs::write(
        dir.path().join("profiles/b.toml"),
        "pool = \"default\"\n[[profiles]]\nname = \"one\"\nkv_bytes_per_token = 1000\nmax_context_tokens = 1000\n",
    )
    .unwrap();
    let e = load(&args, &no_env).unwrap_err();
    assert!(
        e.to_string().contains("unknown field `pool`") && e.to_string().contains("remove it"),
        "{e}"
    );
}

mod never_fits_agreement {
    //! Issue 12: config validation and the decision agree on "this profile can never fit" for
    //! any pool and profile, to the last digit of the headroom (validation used f64 `floor`
    //! where the decision used parts per million, so they once disagreed past six decimals).
    use super::*;
    use crate::governor::{
        Bytes, EngineSample, FootprintMode, GpuSample, HoldReason, Millis, Observation, Policy,
        PoolObservation, ProfilePolicy, Readiness, TaskId, WaitingTask, WorstCase, decide,
    };
    use proptest::prelude::*;

    /// Does `decide`, with the GPU and the engine seen just now and nothing running, hold the
    /// one waiting task as `NeverFits`?
    fn decide_never_fits(pool: &PoolConfig, declared: WorstCase) -> bool {
        let policy = Policy {
            pools: vec![pool.policy()],
            profiles: vec![ProfilePolicy {
                id: "coder".into(),
                lane: "coder@gpu".into(),
                pool: 0,
                declared,
                max_parallel: None,
                guaranteed: 0,
                footprint: FootprintMode::Declared,
            }],
            max_running: None,
            max_wait: Millis::secs(600),
        };
        let now = Millis::secs(1_000);
        let total = Bytes::gib(1024);
        let obs = Observation {
            now,
            pools: vec![PoolObservation {
                gpu: Some(GpuSample {
                    at: now,
                    total,
                    used: Bytes(0),
                    free: total,
                }),
                baseline: Some(Bytes(0)),
                engine: Some(EngineSample {
                    at: now,
                    ..EngineSample::default()
                }),
            }],
            running: vec![],
            waiting: vec![WaitingTask {
                id: TaskId::from("t_1"),
                profile: Some("coder".into()),
                assignee: "coder@gpu".into(),
                priority: 0,
                created_at: now,
                waiting_since: now,
                readiness: Readiness::Ready,
            }],
            dual_dispatcher: None,
            latency_limit: None,
            learned: vec![],
            spread: vec![],
        };
        let d = decide(&policy, &obs);
        d.held
            .iter()
            .any(|h| matches!(h.reason, HoldReason::NeverFits { .. }))
    }

    fn config(kind: &str, cap: u64, headroom: f64, slots: Option<u32>, sct: Option<u64>) -> String {
        let mut engine = format!("kind = \"{kind}\"\nurl = \"none\"\nkv_capacity_tokens = {cap}\n");
        if let Some(s) = slots {
            engine += &format!("slots = {s}\n");
        }
        if let Some(c) = sct {
            engine += &format!("slot_context_tokens = {c}\n");
        }
        format!(
            "[hermes]\nhome = \"/t/hh\"\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"1024GiB\"\nheadroom = {headroom:?}\nreserve = \"0B\"\n\n[engine]\n{engine}"
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn validation_and_decide_agree(
            kind in prop::sample::select(vec!["vllm", "sglang", "llamacpp"]),
            cap in 1_000u64..2_000_000,
            // Many digits past the sixth: where f64 floor and integer ppm part ways.
            headroom in 0.05f64..=1.0,
            ctx in 1u64..1_000_000,
            requests in 1u32..4,
            slots in prop::option::of(1u32..5),
            sct in prop::option::of(1u64..1_000_000),
        ) {
            let pool_toml = config(kind, cap, headroom, slots, sct);
            let profile = format!(
                "\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"1B\"\nmax_context_tokens = {ctx}\nrequests_per_task = {requests}\n"
            );
            let validated = load_str(&format!("{pool_toml}{profile}"), &origin(), &ConfigArgs::default(), &no_env);
            let validation_says_never = match &validated {
                Ok(_) => false,
                Err(e) => e.problems.iter().any(|p| p.detail.contains("never")),
            };
            // The pool as validation sees it, from a config without the profile.
            let pool = load_str(&pool_toml, &origin(), &ConfigArgs::default(), &no_env)
                .unwrap()
                .pools
                .remove(0);
            let rpt = u64::from(requests);
            let declared = WorstCase {
                kv_bytes: Bytes(ctx * rpt),
                extra_bytes: Bytes(0),
                kv_tokens: ctx * rpt,
                slots: requests,
                request_tokens: ctx,
                kv_bytes_per_token: 1,
            };
            prop_assert_eq!(
                validation_says_never,
                decide_never_fits(&pool, declared),
                "{}{}: {:?}",
                pool_toml,
                profile,
                validated.err()
            );
        }

        /// Right at the KV ceiling, where rounding decides.
        #[test]
        fn validation_and_decide_agree_at_the_kv_ceiling(
            cap in 1_000u64..50_000_000,
            headroom in 0.05f64..=1.0,
            delta in -1i64..=1,
        ) {
            let pool_toml = config("vllm", cap, headroom, None, None);
            let ctx = u64::try_from(((headroom * cap as f64).floor() as i64 + delta).max(1)).unwrap();
            let profile = format!(
                "\n[[profiles]]\nname = \"coder\"\nkv_bytes_per_token = \"1B\"\nmax_context_tokens = {ctx}\n"
            );
            let validated = load_str(&format!("{pool_toml}{profile}"), &origin(), &ConfigArgs::default(), &no_env);
            let validation_says_never = validated.is_err();
            let pool = load_str(&pool_toml, &origin(), &ConfigArgs::default(), &no_env)
                .unwrap()
                .pools
                .remove(0);
            let declared = WorstCase {
                kv_bytes: Bytes(ctx),
                extra_bytes: Bytes(0),
                kv_tokens: ctx,
                slots: 1,
                request_tokens: ctx,
                kv_bytes_per_token: 1,
            };
            prop_assert_eq!(validation_says_never, decide_never_fits(&pool, declared), "{}{}", pool_toml, profile);
        }
    }
}

#[test]
fn the_proxy_is_off_by_default_with_its_bounds_and_renders_back() {
    let c = load_ok(ONE_PROFILE);
    assert_eq!(c.proxy.listen, None);
    assert!(!c.proxy.public);
    assert_eq!(c.proxy.max_body, DEFAULT_PROXY_MAX_BODY);
    assert_eq!(c.proxy.drain, DEFAULT_PROXY_DRAIN);
    let c = load_ok(&format!(
        "{ONE_PROFILE}\n[proxy]\nlisten = \"127.0.0.1:9478\"\nmax_body = \"1MiB\"\ndrain = \"5s\"\n"
    ));
    assert_eq!(c.proxy.listen, Some("127.0.0.1:9478".parse().unwrap()));
    assert_eq!(c.proxy.max_body, Bytes::mib(1));
    assert_eq!(c.proxy.drain, std::time::Duration::from_secs(5));
    let back = load_ok(&c.to_toml());
    assert_eq!(back.proxy, c.proxy);
}

#[test]
fn check_config_says_that_run_proxy_listen_changes_a_default_latency_signal() {
    let line = |c: &Config| {
        c.to_toml_annotated()
            .lines()
            .find(|l| l.starts_with("signal = "))
            .unwrap()
            .to_owned()
    };
    let note = "`run --proxy-listen` makes it \"proxy\"";
    // Unset, with no proxy in the config: `run --proxy-listen` would run it on the proxy.
    let l = line(&load_ok(ONE_PROFILE));
    assert!(
        l.starts_with("signal = \"engine\"") && l.contains(note),
        "{l}"
    );
    // The config turns the proxy on, or names the signal: the flag changes nothing.
    let on = format!("{ONE_PROFILE}\n[proxy]\nlisten = \"127.0.0.1:9478\"\n");
    let l = line(&load_ok(&on));
    assert!(
        l.starts_with("signal = \"proxy\"") && !l.contains(note),
        "{l}"
    );
    let set = format!("{ONE_PROFILE}\n[latency]\nsignal = \"engine\"\n");
    let l = line(&load_ok(&set));
    assert!(!l.contains(note), "{l}");
}

#[test]
fn the_latency_signal_is_the_proxys_when_it_listens_unless_the_config_says_otherwise() {
    assert_eq!(load_ok(ONE_PROFILE).latency.signal, LatencySignal::Engine);
    let on = format!("{ONE_PROFILE}\n[proxy]\nlisten = \"127.0.0.1:9478\"\n");
    let c = load_ok(&on);
    assert_eq!(c.latency.signal, LatencySignal::Proxy);
    assert!(
        c.to_toml().contains("signal = \"proxy\""),
        "{}",
        c.to_toml()
    );
    assert_eq!(load_ok(&c.to_toml()).latency.signal, LatencySignal::Proxy);
    let c = load_ok(&format!("{on}[latency]\nsignal = \"engine\"\n"));
    assert_eq!(c.latency.signal, LatencySignal::Engine);
    let c = load_ok(&format!("{ONE_PROFILE}\n[latency]\nsignal = \"proxy\"\n"));
    assert_eq!(c.latency.signal, LatencySignal::Proxy);
    let e = load_err(&format!("{ONE_PROFILE}\n[latency]\nsignal = \"proxies\"\n"));
    assert!(
        problem(&e, "latency.signal").detail.contains("proxy"),
        "{e}"
    );
}

#[test]
fn a_public_proxy_address_needs_proxy_public_and_bad_values_name_their_key() {
    let e = load_err(&format!(
        "{ONE_PROFILE}\n[proxy]\nlisten = \"0.0.0.0:9478\"\n"
    ));
    let p = problem(&e, "proxy.listen");
    assert!(p.detail.contains("set proxy.public = true"), "{p}");
    assert!(p.detail.contains("127.0.0.1:9478"), "{p}");
    let c = load_ok(&format!(
        "{ONE_PROFILE}\n[proxy]\nlisten = \"0.0.0.0:9478\"\npublic = true\n"
    ));
    assert_eq!(c.proxy.listen, Some("0.0.0.0:9478".parse().unwrap()));
    let e = load_err(&format!("{ONE_PROFILE}\n[proxy]\nlisten = \"localhost\"\n"));
    assert!(
        problem(&e, "proxy.listen")
            .detail
            .contains("\"127.0.0.1:9478\""),
        "{e}"
    );
    let e = load_err(&format!("{ONE_PROFILE}\n[proxy]\nmax_body = \"0B\"\n"));
    assert!(
        problem(&e, "proxy.max_body").detail.contains("32MiB"),
        "{e}"
    );
}
