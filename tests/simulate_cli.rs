//! `kanban-governor simulate` run as the real binary: the default table, a tiny trace file the
//! test writes, JSON/CSV output, SVG plots, and bad traces and flags exiting 2 with the line
//! or flag named.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn simulate() -> Command {
    let mut cmd = Command::cargo_bin("kanban-governor").expect("the binary is built by cargo test");
    cmd.arg("simulate");
    cmd
}

/// A trace in the Azure format: `n` requests, one every 2 s, contexts growing with the row.
fn trace(n: usize) -> String {
    let mut s = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for i in 0..n {
        let secs = 2 * i;
        s += &format!(
            "2023-11-16 18:{:02}:{:02}.5000000,{},{}\n",
            15 + secs / 60,
            secs % 60,
            300 + 40 * (i % 17),
            20 + i % 90
        );
    }
    s
}

#[test]
fn the_default_run_prints_every_strategy_row() {
    let out = simulate()
        .args(["--duration", "20m", "--drain", "20m"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for row in [
        "unbounded (gateway)",
        "per-tick --max 8 (old)",
        "live cap 8 (--max today)",
        "per-profile pools",
        "kanban-governor",
        "kanban-governor, declared footprints",
        "oracle: clairvoyant",
        "oracle: best feasible static cap",
        "oracle: best static cap",
    ] {
        assert!(text.contains(row), "no {row:?} row in:\n{text}");
    }
    assert!(text.contains("TTFT p50"), "{text}");
    // vLLM reserves its memory at start: the KV pool is the column, GPU bytes a footnote.
    assert!(text.contains("peak / pool (tok)"), "{text}");
    assert!(text.contains("GPU memory is not a column"), "{text}");
    assert!(
        text.contains("makespan: simulated time until the last task"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        !err.contains("simulating"),
        "a progress bar off a terminal: {err}"
    );
}

#[test]
fn a_tiny_trace_file_runs_and_json_has_a_row_per_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tiny.csv");
    std::fs::write(&f, trace(64)).unwrap();
    let out = simulate()
        .arg("--trace")
        .arg(&f)
        .args(["--strategies", "unbounded,governor", "--json"])
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["tasks"], 8, "64 rows in groups of 8");
    let rows = v["strategies"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["strategy"], "kanban-governor");
    assert_eq!(rows[1]["completed"], 8, "{v}");
    assert_eq!(rows[1]["preemptions"], 0);
}

#[test]
fn the_same_seed_prints_the_same_csv() {
    let run = |seed: &str| {
        let out = simulate()
            .args([
                "--duration",
                "15m",
                "--drain",
                "15m",
                "--csv",
                "--seed",
                seed,
            ])
            .args(["--strategies", "unbounded,governor"])
            .assert()
            .success();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let a = run("5");
    assert!(a.starts_with("strategy,tasks,completed"), "{a}");
    assert_eq!(a, run("5"));
    assert_ne!(a, run("6"));
}

#[test]
fn plots_are_svg_files() {
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    simulate()
        .args(["--duration", "10m", "--drain", "10m", "--plot"])
        .arg(&plots)
        .assert()
        .success()
        .stderr(predicate::str::contains("memory.svg"));
    for name in ["memory.svg", "running.svg", "ttft.svg"] {
        let svg = std::fs::read_to_string(plots.join(name)).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "{name}: {}",
            &svg[..svg.len().min(80)]
        );
        assert!(svg.contains("kanban-governor"), "{name} has no legend");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains(r#"class="axis-label""#),
            "{name} has no axis label"
        );
    }
}

#[test]
fn a_bad_trace_row_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.csv");
    let mut text = trace(5);
    text += "2023-11-16 18:20:00.0,abc,12\n";
    std::fs::write(&f, text).unwrap();
    simulate()
        .arg("--trace")
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 7"))
        .stderr(predicate::str::contains("ContextTokens"));
    simulate()
        .args(["--trace", "/nonexistent/trace.csv"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--trace /nonexistent/trace.csv"));
}

#[test]
fn bad_flags_exit_2_with_the_flag_named() {
    simulate()
        .args(["--gpu-memory", "lots"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--gpu-memory"));
    simulate()
        .args(["--model", "no-such-model"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--model"));
    simulate()
        .args(["--gpu-memory", "8GiB", "--model", "qwen2.5-32b-instruct"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("larger --gpu-memory"));
    simulate().args(["--strategies", "magic"]).assert().code(2);
}

#[test]
fn what_if_hosts_run_on_every_engine() {
    for engine in ["vllm", "sglang", "llamacpp", "ollama", "openai"] {
        simulate()
            .args([
                "--gpu-memory",
                "24GiB",
                "--engine",
                engine,
                "--model",
                "llama-3.1-8b",
            ])
            .args([
                "--duration",
                "10m",
                "--drain",
                "10m",
                "--strategies",
                "governor",
            ])
            .assert()
            .success()
            .stdout(predicate::str::contains("kanban-governor"));
    }
}

/// Issue 14: each peer row and each user-reported scenario runs and shows in `--json`; on the
/// unified-memory host (hermes-agent #90713) Hermes's guard never dispatches while the
/// governor does, and on a discrete GPU the guard never trips (it does not see the GPU); on two
/// GPUs (hermes-agent #111188) every row reports each pool.
#[test]
fn every_peer_row_and_user_scenario_runs_and_shows_in_json() {
    let peers = [
        "Hermes >=0.20 guard, unbounded",
        "Hermes per-profile caps ",
        "Hermes >=0.20 guard, caps ",
        "llm-d flow control, unbounded",
        "vLLM KV watermark 0.05, unbounded",
    ];
    for scenario in [
        "mixed",
        "unified-memory",
        "outside-client",
        "hermes-sized",
        "two-gpus",
    ] {
        let out = simulate()
            .args([
                "--scenario",
                scenario,
                "--duration",
                "10m",
                "--drain",
                "10m",
            ])
            .args([
                "--strategies",
                "unbounded,governor,hermes-guard,hermes-caps,llmd,vllm-watermark",
                "--json",
            ])
            .assert()
            .success();
        let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        let rows = v["strategies"].as_array().unwrap();
        let row = |prefix: &str| {
            rows.iter()
                .find(|r| r["strategy"].as_str().unwrap().starts_with(prefix))
                .unwrap_or_else(|| panic!("{scenario}: no {prefix:?} row in {v}"))
        };
        for p in peers {
            row(p);
        }
        let guard = row(peers[0]);
        let governor = row("kanban-governor");
        match scenario {
            "unified-memory" => {
                // Nothing dispatched: no call was ever sent. (In 20 minutes on the GB10's
                // bandwidth the governor sends calls but may finish no task yet.)
                assert_eq!(guard["calls"], 0, "{v}");
                assert_eq!(row(peers[2])["calls"], 0, "{v}");
                assert!(governor["calls"].as_u64().unwrap() > 0, "{v}");
            }
            "mixed" => {
                let unbounded = row("unbounded (gateway)");
                assert_eq!(guard["completed"], unbounded["completed"], "{v}");
                assert_eq!(guard["preemptions"], unbounded["preemptions"], "{v}");
                assert!(governor.get("pools").is_none(), "one GPU, no per-pool: {v}");
            }
            "two-gpus" => {
                for r in rows {
                    let pools = r["pools"].as_array().unwrap();
                    assert_eq!(pools.len(), 2, "{v}");
                    let sum: u64 = pools
                        .iter()
                        .map(|p| p["preemptions"].as_u64().unwrap())
                        .sum();
                    assert_eq!(r["preemptions"].as_u64(), Some(sum), "{v}");
                }
            }
            _ => {}
        }
    }
}
