//! `kanban-governor plan` run as the real binary: the acceptance numbers, the default plan
//! of the ready profiles, and usage errors that exit 2 naming the flag and the fix.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn plan() -> Command {
    let mut cmd = Command::cargo_bin("kanban-governor").expect("the binary is built by cargo test");
    cmd.arg("plan");
    cmd
}

fn json_of(args: &[&str]) -> Value {
    let out = plan().args(args).arg("--json").assert().success();
    serde_json::from_slice(&out.get_output().stdout).expect("plan --json prints JSON")
}

#[test]
fn llama_8b_at_32k_costs_4_gib_per_task_on_llamacpp() {
    let v = json_of(&[
        "--gpu-memory",
        "24GiB",
        "--engine",
        "llamacpp",
        "--model",
        "llama-3.1-8b-instruct",
        "--max-context",
        "32768",
    ]);
    let p = &v["profiles"][0];
    assert_eq!(p["name"], "plan");
    assert_eq!(p["model"], "llama-3.1-8b");
    assert_eq!(p["kv_bytes_per_token"], 131_072);
    assert_eq!(p["worst_case_bytes"], 4_294_967_296u64);
    assert_eq!(p["max_concurrent_alone"], 3);
    assert_eq!(v["mix"]["plan"], 3);
    assert_eq!(v["engine_settings"]["settings"]["parallel"], 3);
    assert_eq!(v["engine_settings"]["settings"]["ctx_size"], 3 * 32_768);
}

#[test]
fn vllm_plan_gives_utilization_max_model_len_and_max_num_seqs() {
    let v = json_of(&[
        "--gpu-memory",
        "80GiB",
        "--engine",
        "vllm",
        "--model",
        "Qwen/Qwen2.5-32B-Instruct",
        "--weights",
        "fp8",
        "--max-context",
        "16384",
        "--requests-per-task",
        "2",
    ]);
    let p = &v["profiles"][0];
    assert_eq!(p["kv_bytes_per_token"], 262_144);
    // 262,144 × 16,384 × 2 = 8 GiB per task; budget 32.7 GiB: 4 tasks, 8 sequences.
    assert_eq!(p["worst_case_bytes"], 8u64 << 30);
    assert_eq!(p["max_concurrent_alone"], 4);
    let s = &v["engine_settings"]["settings"];
    assert_eq!(s["max_model_len"], 16_384);
    assert_eq!(s["max_num_seqs"], 8);
    assert_eq!(s["gpu_memory_utilization"], 0.83);
}

#[test]
fn the_default_plan_covers_the_ready_profiles() {
    let v = json_of(&[]);
    let names: Vec<&str> = v["profiles"]
        .as_array()
        .expect("profiles is an array")
        .iter()
        .map(|p| p["name"].as_str().expect("name is a string"))
        .collect();
    assert_eq!(names, ["coder", "classifier", "reasoning"]);
    assert!(v["mix_tasks"].as_u64().expect("mix_tasks") >= 3);
    plan()
        .assert()
        .success()
        .stdout(predicate::str::contains("PROFILE").and(predicate::str::contains("summary: ")));
}

#[test]
fn a_context_beyond_the_model_is_reported_as_never_fitting() {
    let v = json_of(&["--model", "qwen2.5-7b-instruct", "--max-context", "65536"]);
    assert_eq!(v["profiles"][0]["max_concurrent_alone"], 0);
    assert_eq!(v["never_fit"][0]["name"], "plan");
    let reason = v["never_fit"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("32768"), "{reason}");
}

#[test]
fn a_unitless_size_exits_2_naming_the_flag_and_the_fix() {
    plan()
        .args([
            "--gpu-memory",
            "24",
            "--model",
            "llama-3.1-8b",
            "--max-context",
            "8192",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--gpu-memory").and(predicate::str::contains("24GiB")));
}

#[test]
fn a_decimal_size_exits_2_with_the_binary_spelling() {
    plan()
        .args(["--reserve", "2GB"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--reserve").and(predicate::str::contains("2GiB")));
}

#[test]
fn an_unknown_model_exits_2_listing_close_names() {
    plan()
        .args(["--model", "llama-3.1-9b", "--max-context", "8192"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("--model: unknown model 'llama-3.1-9b'")
                .and(predicate::str::contains("close names: llama-3.1-8b"))
                .and(predicate::str::contains("kv_bytes_per_token")),
        );
}

#[test]
fn headroom_above_one_exits_2() {
    plan()
        .args(["--headroom", "1.5"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--headroom 1.5").and(predicate::str::contains("(0, 1]")));
}

#[test]
fn an_unknown_engine_exits_2() {
    plan()
        .args(["--engine", "tgi"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--engine"));
}

/// A governor config like the embedded default: one 80 GiB GPU under vLLM with a configured
/// KV pool of 442,368 tokens, and three Llama-3.1-8B profiles.
const VLLM_CONFIG: &str = r#"
[hermes]
home = "/nonexistent/hermes"

[gpu]
telemetry = "static"
memory_total = "80GiB"
baseline = "72GiB"
headroom = 0.85

[engine]
kind = "vllm"
model = "llama-3.1-8b"
kv_capacity_tokens = 442368

[[profiles]]
name = "coder"
model = "llama-3.1-8b"
max_context_tokens = 32768
max_parallel = 8

[[profiles]]
name = "researcher"
model = "llama-3.1-8b"
max_context_tokens = 65536
requests_per_task = 2

[[profiles]]
name = "triage"
model = "llama-3.1-8b"
max_context_tokens = 8192
guaranteed = 2
"#;

fn config_file(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("governor.toml"), text).expect("write the config");
    dir
}

#[test]
fn a_config_is_planned_in_the_engine_pool_tokens_the_governor_charges() {
    let dir = config_file(VLLM_CONFIG);
    let path = dir.path().join("governor.toml");
    let v = json_of(&["--config", path.to_str().expect("utf-8 path")]);
    // headroom 0.85 × 442,368 tokens.
    assert_eq!(v["kv_budget_tokens"], 376_012);
    let alone: Vec<u64> = v["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .map(|p| p["max_concurrent_alone"].as_u64().expect("a count"))
        .collect();
    // coder: 11 fit, max_parallel 8; researcher: 2 × 65,536 tokens each, 2 fit; triage: 45.
    assert_eq!(alone, [8, 2, 45]);
    let mix = &v["mix"];
    let tokens = mix["coder"].as_u64().expect("coder") * 32_768
        + mix["researcher"].as_u64().expect("researcher") * 131_072
        + mix["triage"].as_u64().expect("triage") * 8_192;
    assert!(tokens <= 376_012, "{mix}");
    assert!(
        mix["triage"].as_u64().expect("triage") >= 2,
        "guaranteed room: {mix}"
    );
}

#[test]
fn a_config_pool_without_a_gpu_size_exits_2_asking_for_gpu_memory() {
    let live = VLLM_CONFIG.replace(
        "telemetry = \"static\"\nmemory_total = \"80GiB\"\nbaseline = \"72GiB\"\n",
        "",
    );
    assert_ne!(live, VLLM_CONFIG);
    let dir = config_file(&live);
    let path = dir.path().join("governor.toml");
    plan()
        .args(["--config", path.to_str().expect("utf-8 path")])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("--gpu-memory").and(predicate::str::contains("memory_total")),
        );
    // With the size given, it plans.
    plan()
        .args([
            "--config",
            path.to_str().expect("utf-8 path"),
            "--gpu-memory",
            "80GiB",
        ])
        .assert()
        .success();
}

#[test]
fn profile_flags_with_a_config_exit_2() {
    let dir = config_file(VLLM_CONFIG);
    let path = dir.path().join("governor.toml");
    plan()
        .args([
            "--config",
            path.to_str().expect("utf-8 path"),
            "--model",
            "qwen3-8b",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--model and --config"));
}

#[test]
fn a_missing_config_file_exits_2() {
    plan()
        .args(["--config", "/nonexistent/governor.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/governor.toml"));
}
