//! Differential tests: `adapters::hermes_home` against Hermes's own Python functions
//! (`kanban_home`, `kanban_db_path`, `profile_exists`, `load_config`) from the installed
//! hermes-agent 0.19.0, for the same environments and files.
//!
//! Hermes is found through `KG_HERMES_BIN`, else `<repo>/target/hermes-venv/bin/hermes`; the
//! venv's `python` beside it runs the Python side. Missing → fail with "run scripts/test".

use kanban_governor::adapters::hermes_home as hh;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_python() -> PathBuf {
    let bin = std::env::var_os("KG_HERMES_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hermes-venv/bin/hermes"),
        PathBuf::from,
    );
    let python = bin.with_file_name("python");
    assert!(
        bin.is_file() && python.exists(),
        "the Hermes venv is missing at {}: run scripts/test (it installs hermes-agent 0.19.0 into target/hermes-venv and sets KG_HERMES_BIN)",
        bin.display()
    );
    python
}

const PY: &str = r#"
import json, sys
from hermes_cli.kanban_db import kanban_home, kanban_db_path
from hermes_cli.profiles import profile_exists
from hermes_cli.config import load_config
k = load_config().get("kanban", {})
def pint(v):
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if i >= 1 else None
print(json.dumps({
    "root": str(kanban_home()),
    "db": str(kanban_db_path()),
    "profiles": {p: profile_exists(p) for p in sys.argv[1:]},
    "dispatch_in_gateway": bool(k.get("dispatch_in_gateway", True)),
    "max_in_progress": pint(k.get("max_in_progress")),
    "max_in_progress_per_profile": pint(k.get("max_in_progress_per_profile")),
    "max_spawn": pint(k.get("max_spawn")),
}))
"#;

const ENV_KEYS: &[&str] = &[
    "HOME",
    "HERMES_HOME",
    "HERMES_KANBAN_HOME",
    "HERMES_KANBAN_DB",
    "HERMES_KANBAN_BOARD",
    "HERMES_KANBAN_DISPATCH_IN_GATEWAY",
];

/// Hermes's answers for this environment.
fn python_says(env: &HashMap<&str, String>, profiles: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(PY).args(profiles);
    for k in ENV_KEYS {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Ours, for the same environment.
fn rust_says(env: &HashMap<&str, String>, profiles: &[&str]) -> serde_json::Value {
    let lookup = |k: &str| env.get(k).cloned();
    let root = hh::read_kanban_root(&lookup).unwrap();
    let hermes_root = hh::read_hermes_root(&lookup).unwrap();
    let board = hh::read_board_location(&lookup, &root, None).unwrap();
    let home = hh::resolve_hermes_home(&lookup).unwrap();
    let config = hh::read_config(&home).unwrap();
    serde_json::json!({
        "root": root.display().to_string(),
        "db": board.db.display().to_string(),
        "profiles": profiles.iter().map(|p| ((*p).to_owned(), serde_json::Value::Bool(hh::profile_exists(&hermes_root, p)))).collect::<serde_json::Map<_, _>>(),
        "dispatch_in_gateway": config.kanban.dispatch_in_gateway,
        "max_in_progress": config.kanban.max_in_progress,
        "max_in_progress_per_profile": config.kanban.max_in_progress_per_profile,
        "max_spawn": config.kanban.max_spawn,
    })
}

fn agree(case: &str, env: &HashMap<&str, String>, profiles: &[&str]) {
    let (py, rs) = (python_says(env, profiles), rust_says(env, profiles));
    assert_eq!(
        rs, py,
        "case {case}: ours (left) differs from Hermes (right); env {env:?}"
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn root_board_and_profiles_resolve_as_hermes_resolves_them() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user");
    let dot = user.join(".hermes");
    let custom = dir.path().join("srv");
    for d in [
        dot.join("profiles/coder"),
        custom.join("profiles/gpuworker"),
        custom.join("kanban/boards/gpu"),
        custom.join("kanban/boards/half"),
        dir.path().join("kh"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(custom.join("kanban/boards/gpu/board.json"), "{}").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dot.join("profiles/coder"), &link).unwrap();
    let profiles = [
        "default",
        "Default",
        "gpuworker",
        "GpuWorker",
        "coder",
        "gpuworker@gpu",
        "half",
    ];

    let base = |pairs: &[(&'static str, String)]| -> HashMap<&'static str, String> {
        let mut m: HashMap<&str, String> = pairs.iter().cloned().collect();
        m.insert("HOME", s(&user));
        m
    };
    agree("HERMES_HOME unset", &base(&[]), &profiles);
    agree(
        "profile under ~/.hermes",
        &base(&[("HERMES_HOME", s(&dot.join("profiles/coder")))]),
        &profiles,
    );
    agree(
        "custom home",
        &base(&[("HERMES_HOME", s(&custom))]),
        &profiles,
    );
    agree(
        "custom profile home",
        &base(&[("HERMES_HOME", s(&custom.join("profiles/gpuworker")))]),
        &profiles,
    );
    agree(
        "symlink into ~/.hermes",
        &base(&[("HERMES_HOME", s(&link))]),
        &profiles,
    );
    agree(
        "kanban home env",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_HOME", s(&dir.path().join("kh"))),
        ]),
        &profiles,
    );
    agree(
        "env board that exists",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_BOARD", "gpu".into()),
        ]),
        &profiles,
    );
    agree(
        "env board without board.json or kanban.db",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_BOARD", "half".into()),
        ]),
        &profiles,
    );
    agree(
        "env board invalid",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_BOARD", "../x".into()),
        ]),
        &profiles,
    );
    agree(
        "kanban db env beats the board",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_BOARD", "gpu".into()),
            ("HERMES_KANBAN_DB", s(&dir.path().join("pinned.db"))),
        ]),
        &profiles,
    );
    std::fs::write(custom.join("kanban/current"), "gpu\n").unwrap();
    agree(
        "current file",
        &base(&[("HERMES_HOME", s(&custom))]),
        &profiles,
    );
    agree(
        "env board default beats the current file",
        &base(&[
            ("HERMES_HOME", s(&custom)),
            ("HERMES_KANBAN_BOARD", "default".into()),
        ]),
        &profiles,
    );
    std::fs::write(custom.join("kanban/current"), "half\n").unwrap();
    agree(
        "current file naming a board that does not exist",
        &base(&[("HERMES_HOME", s(&custom))]),
        &profiles,
    );
}

#[test]
fn config_yaml_values_read_as_hermes_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    std::fs::create_dir_all(&home).unwrap();
    let env: HashMap<&str, String> = [("HOME", s(dir.path())), ("HERMES_HOME", s(&home))]
        .into_iter()
        .collect();
    agree("no config.yaml", &env, &[]);
    for (i, yaml) in [
        "kanban:\n  dispatch_in_gateway: false\n",
        "kanban:\n  dispatch_in_gateway: no\n",
        "kanban:\n  dispatch_in_gateway: off\n",
        "kanban:\n  dispatch_in_gateway: yes\n",
        "kanban:\n  dispatch_in_gateway: \"false\"\n",
        "kanban:\n  dispatch_in_gateway:\n",
        "kanban:\n  dispatch_in_gateway: 0\n",
        "kanban:\n  max_in_progress: 3\n  max_in_progress_per_profile: \"2\"\n  max_spawn: 4.7\n",
        "kanban:\n  max_in_progress: 0\n  max_in_progress_per_profile: lots\n  max_spawn: -1\n",
        "kanban:\n  max_in_progress: true\n",
        "model:\n  provider: custom\n",
        "",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(home.join("config.yaml"), yaml).unwrap();
        agree(&format!("config #{i} {yaml:?}"), &env, &[]);
    }
}

#[test]
fn the_package_version_matches_what_hermes_version_prints() {
    let bin = venv_python().with_file_name("hermes");
    let from_package =
        hh::read_package_version(&bin).expect("hermes_cli/__init__.py beside the venv");
    let out = hh::run_with_timeout(&bin, &["--version"], &[], hh::VERSION_TIMEOUT)
        .unwrap()
        .expect("hermes --version finished in time");
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let (version, date) =
        hh::parse_version_output(&out.stdout).unwrap_or_else(|| panic!("unparsed: {}", out.stdout));
    assert_eq!(
        (from_package.version, from_package.release_date),
        (version, date)
    );
    assert_eq!(
        version.to_string(),
        "0.19.0",
        "scripts/test pins hermes-agent 0.19.0"
    );
    assert_eq!(
        hh::max_semantics_of(&from_package),
        hh::MaxSemantics::LiveCap
    );
}
