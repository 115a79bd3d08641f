//! The files a new user installs from, checked as the real binary reads them (issue 15):
//! `docs/config.md` is exactly what `check-config --reference` prints (so it cannot drift from
//! the key table check-config uses), every config in `examples/` passes
//! `check-config --file-only`, every file in `profiles/` loads both through `profiles_dir` and
//! pasted into a config, and the README's install block stays within six commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary with only `HOME` set (pointing into a temp dir) plus `args`.
fn governor(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
        .env_clear()
        .env("HOME", home)
        .args(args)
        .output()
        .expect("the kanban-governor binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_committed_config_reference_is_what_check_config_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = governor(tmp.path(), &["check-config", "--reference"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let generated = text(&out.stdout);
    let committed = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    assert!(
        committed == generated,
        "docs/config.md differs from `kanban-governor check-config --reference`; regenerate it: \
         cargo run -- check-config --reference > docs/config.md"
    );
}

#[test]
fn every_key_check_config_prints_for_an_example_is_in_the_reference() {
    let reference = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for path in toml_files("examples") {
        let out = governor(
            tmp.path(),
            &[
                "check-config",
                "--file-only",
                "--config",
                path.to_str().unwrap(),
            ],
        );
        let mut table = String::new();
        for line in text(&out.stdout).lines() {
            if let Some(t) = line.strip_prefix('[') {
                let t = t.trim_matches(|c| c == '[' || c == ']');
                // [pools.NAME.gpu] has the keys of [gpu].
                table = t.rsplit('.').next().unwrap_or(t).to_owned();
                continue;
            }
            let body = line.strip_prefix("# ").unwrap_or(line);
            let Some((key, rest)) = body.split_once(" = ") else {
                continue;
            };
            if line.starts_with('#') && !rest.starts_with("(unset:") {
                continue;
            }
            let id = if key == "profiles_dir" {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            };
            assert!(
                reference.contains(&format!("### `{id}`")),
                "{}: check-config prints {id}, docs/config.md lacks it",
                path.display()
            );
            checked += 1;
        }
    }
    // Five examples of about 40 keys each, set or unset.
    assert!(checked > 150, "only {checked} keys seen");
}

#[test]
fn every_example_config_passes_check_config_file_only() {
    let names: Vec<String> = toml_files("examples")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "no-gpu-static.toml",
        "vllm.toml",
        "llamacpp.toml",
        "ollama.toml",
        "two-gpus.toml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} is missing"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for path in toml_files("examples") {
        let out = governor(
            tmp.path(),
            &[
                "check-config",
                "--file-only",
                "--config",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}",
            path.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("# OK:"), "{}", path.display());
    }
    // The no-GPU example needs no driver and reads no engine.
    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--json",
            "--config",
            repo().join("examples/no-gpu-static.toml").to_str().unwrap(),
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pools"][0]["gpu"]["telemetry"], "static");
    assert_eq!(json["pools"][0]["engine"]["url"], "none");
}

/// A config whose one pool takes any catalog model (Ollama charges GPU bytes, so no
/// one-model-per-engine check) on an 80 GiB static GPU.
fn base_config(home: &Path) -> String {
    format!(
        "[hermes]\nhome = \"{}\"\n\n[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n\n[engine]\nkind = \"ollama\"\nurl = \"none\"\n",
        home.display()
    )
}

#[test]
fn every_profiles_file_loads_through_profiles_dir_and_pasted_into_a_config() {
    let files = toml_files("profiles");
    assert!(files.len() >= 4, "{files:?}");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hermes");
    std::fs::create_dir_all(&home).unwrap();

    // Through profiles_dir: the directory as shipped.
    let config = tmp.path().join("dir.toml");
    std::fs::write(
        &config,
        format!(
            "profiles_dir = \"{}\"\n{}",
            repo().join("profiles").display(),
            base_config(&home)
        ),
    )
    .unwrap();
    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["profiles"].as_array().unwrap().len(),
        files.len(),
        "one profile per file"
    );

    // Pasted: each file appended to a config as it is (it carries its [[profiles]] header).
    for file in &files {
        let config = tmp.path().join("pasted.toml");
        let body = std::fs::read_to_string(file).unwrap();
        std::fs::write(&config, format!("{}\n{body}", base_config(&home))).unwrap();
        let out = governor(
            tmp.path(),
            &[
                "check-config",
                "--file-only",
                "--config",
                config.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} pasted into a config:\n{}",
            file.display(),
            text(&out.stderr)
        );
    }
}

#[test]
fn the_readme_install_block_reaches_a_governed_board_in_six_commands() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Install\n")
        .nth(1)
        .expect("README has an ## Install section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the install section opens with a sh block");
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(commands.len() <= 6, "{commands:?}");
    assert!(commands[0].starts_with("cargo install --locked --path ."));
    for step in ["check-config", "doctor", "--cron"] {
        assert!(
            commands.iter().any(|c| c.contains(step)),
            "the install block lacks {step}"
        );
    }
    // The config it installs is one that exists.
    assert!(block.contains("examples/no-gpu-static.toml"));
    assert!(repo().join("examples/no-gpu-static.toml").exists());
}
