//! `kanban-governor check-config`, run as the real binary on the fixtures in
//! `tests/fixtures/config/`: every invalid fixture exits 2 and names its key and fix on stderr
//! (each fixture states both in its `# key:` and `# fix:` header lines); the valid one prints
//! its effective config, which reads back to the same config. Each test runs in a fresh temp
//! directory with a scrubbed environment (only `HOME`, pointing into it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// The binary with an environment holding only `HOME` (so the user's own
/// `~/.hermes/governor.toml` or `KANBAN_GOVERNOR_*` cannot leak in) plus `extra`.
fn governor(home: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kanban-governor"));
    cmd.env_clear().env("HOME", home).args(args);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("the kanban-governor binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fixture's `# name: value` header line.
fn header(body: &str, name: &str) -> Option<String> {
    body.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("# {name}: ")))
        .map(str::to_owned)
}

#[test]
fn every_invalid_fixture_exits_2_and_names_its_key_and_fix() {
    let mut seen = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join("invalid"))
        .expect("tests/fixtures/config/invalid exists")
        .map(|e| e.expect("readable entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let body = std::fs::read_to_string(&path).expect("readable fixture");
        let key = header(&body, "key").unwrap_or_else(|| panic!("{path:?} has no # key:"));
        let fix = header(&body, "fix").unwrap_or_else(|| panic!("{path:?} has no # fix:"));
        let tmp = tempfile::tempdir().expect("temp dir");
        let hermes_home = tmp.path().join("hermes");
        std::fs::create_dir_all(&hermes_home).expect("hermes home");
        let home_arg = hermes_home.display().to_string();
        let config = path.display().to_string();
        let args = [
            "check-config",
            "--file-only",
            "--config",
            config.as_str(),
            "--hermes-home",
            home_arg.as_str(),
        ];
        if let Some(profile) = header(&body, "hermes-profile") {
            // Valid while that Hermes profile does not exist...
            let out = governor(tmp.path(), &args, &[]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{path:?} without the profile dir: {}",
                text(&out.stderr)
            );
            // ...and refused once it does.
            std::fs::create_dir_all(hermes_home.join("profiles").join(profile)).unwrap();
        }
        let out = governor(tmp.path(), &args, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("{path:?}: no line names {key}:\n{stderr}"));
        assert!(
            line.contains(&fix),
            "{path:?}: {line:?} lacks the fix {fix:?}"
        );
        assert!(line.contains(&config), "{path:?}: {line:?} names no file");
        seen += 1;
    }
    assert!(seen >= 17, "only {seen} invalid fixtures found");
}

#[test]
fn headroom_one_and_a_half_exits_2_and_names_headroom_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("governor.toml");
    std::fs::write(&config, "[gpu]\nheadroom = 1.5\n").unwrap();
    let out = governor(
        tmp.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: config {}:2: gpu.headroom: 1.5 is outside (0, 1]",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn all_problems_are_printed_one_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("governor.toml");
    std::fs::write(
        &config,
        "[gpu]\nheadroom = 1.5\nreserve = \"1GB\"\n[hermes]\nbin = \"hermes\"\n",
    )
    .unwrap();
    let out = governor(
        tmp.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn an_explicit_config_that_is_missing_exits_2_and_a_missing_default_means_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.toml");
    let out = governor(
        tmp.path(),
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    let missing = missing.display().to_string();
    let out = governor(
        tmp.path(),
        &["check-config"],
        &[("KANBAN_GOVERNOR_CONFIG", missing.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "env-named file is explicit too");

    let out = governor(
        tmp.path(),
        &["check-config", "--file-only"],
        &[("KANBAN_GOVERNOR_LOG", "info")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no config file"));
    assert!(
        text(&out.stderr).contains("No config file; using defaults."),
        "said at info level: {}",
        text(&out.stderr)
    );
}

#[test]
fn env_overrides_beat_the_file_and_flags_beat_env() {
    let config = fixtures().join("valid/governor.toml");
    let config = config.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = governor(
        tmp.path(),
        &["check-config", "--file-only", "--config", config],
        &[("KANBAN_GOVERNOR_HEADROOM", "1.5")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("error: env KANBAN_GOVERNOR_HEADROOM: headroom: 1.5"),
        "{}",
        text(&out.stderr)
    );

    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--config",
            config,
            "--headroom",
            "0.5",
            "--json",
        ],
        &[
            ("KANBAN_GOVERNOR_HEADROOM", "0.6"),
            ("KANBAN_GOVERNOR_BOARD", "other"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pools"][0]["gpu"]["headroom"], 0.5);
    assert_eq!(json["pools"][1]["gpu"]["headroom"], 0.5);
    assert_eq!(json["hermes"]["board"], "other");
}

#[test]
fn the_valid_fixture_prints_its_effective_config_and_it_reads_back_the_same() {
    let config = fixtures().join("valid/governor.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hermes"]["board"], "gpu");
    assert_eq!(json["pools"][0]["name"], "big");
    assert_eq!(json["pools"][0]["gpu"]["devices"][1]["index"], 1);
    assert_eq!(json["pools"][1]["gpu"]["memory_total"], 24u64 << 30);
    assert_eq!(json["latency"]["ttft_slo"], "1s 500ms");
    assert_eq!(
        json["dispatch"]["state_dir"],
        fixtures().join("valid/state").display().to_string()
    );
    let names: Vec<&str> = json["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["coder", "triage", "writer"]);
    // Qwen2.5-7B at fp8: 28 layers × 4 KV heads × 128 × 2 (K, V) × 1 byte = 28 KiB per token,
    // × 32768 tokens × 2 requests.
    assert_eq!(
        json["profiles"][0]["declared"]["kv_bytes"],
        28u64 * 1024 * 32768 * 2
    );

    // The human output is TOML annotated with sources; fed back, it is the same config.
    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let human = text(&out.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("headroom = 0.9") && l.contains("governor.toml:12")),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("guaranteed = 2") && l.contains("triage.toml:4")),
        "{human}"
    );
    let again = tmp.path().join("again.toml");
    std::fs::write(&again, &human).unwrap();
    let out = governor(
        tmp.path(),
        &[
            "check-config",
            "--file-only",
            "--config",
            again.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json.as_object_mut().unwrap().remove("path");
    back.as_object_mut().unwrap().remove("path");
    assert_eq!(back, json);
}

#[test]
fn help_documents_the_environment_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let out = governor(tmp.path(), &["check-config", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for var in [
        "KANBAN_GOVERNOR_CONFIG",
        "KANBAN_GOVERNOR_HERMES_BIN",
        "HERMES_HOME",
        "KANBAN_GOVERNOR_BOARD",
        "KANBAN_GOVERNOR_HEADROOM",
        "KANBAN_GOVERNOR_STATE_DIR",
    ] {
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
}

/// Issue 11 (bounded everything): a config file above 4 MiB is refused before it is parsed,
/// with exit 2 and a message naming the file and the limit. The same file minus one byte of
/// comment is valid, so the refusal is the size, not the contents.
#[test]
fn a_config_file_larger_than_4_mib_exits_2_naming_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let hermes_home = tmp.path().join("hermes");
    std::fs::create_dir_all(&hermes_home).unwrap();
    let head = format!("[hermes]\nhome = \"{}\"\n", hermes_home.display());
    let limit = 4 * 1024 * 1024;
    let config = tmp.path().join("governor.toml");
    let arg = config.display().to_string();
    for (size, code) in [(limit, 0), (limit + 1, 2)] {
        let comment = format!("# {}\n", "x".repeat(size - head.len() - 3));
        std::fs::write(&config, format!("{head}{comment}")).unwrap();
        assert_eq!(std::fs::metadata(&config).unwrap().len(), size as u64);
        let out = governor(
            tmp.path(),
            &["check-config", "--file-only", "--config", &arg],
            &[],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{size} bytes: {stderr}");
        if code == 2 {
            assert!(stderr.contains(&arg), "{stderr}");
            assert!(stderr.contains("larger than 4 MiB"), "{stderr}");
        }
    }
}

/// Issue 15 (logs): no ANSI colour when stderr is not a terminal (a file, journald), `-v`/`-q`
/// beat `KANBAN_GOVERNOR_LOG`, and `--log-format json` writes one JSON object per line.
#[test]
fn logs_have_no_colour_off_a_terminal_follow_v_and_q_and_come_as_json_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let said = "No config file; using defaults.";
    let out = governor(tmp.path(), &["check-config", "--file-only", "-v"], &[]);
    let err = text(&out.stderr);
    assert!(err.contains(said), "-v shows info: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes in a pipe: {err:?}"
    );

    let out = governor(
        tmp.path(),
        &["check-config", "--file-only", "-q"],
        &[("KANBAN_GOVERNOR_LOG", "info")],
    );
    assert!(!text(&out.stderr).contains(said), "-q beats the env");

    let out = governor(
        tmp.path(),
        &["--log-format", "json", "check-config", "--file-only", "-v"],
        &[],
    );
    let line = text(&out.stderr)
        .lines()
        .find(|l| l.contains(said))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{}", text(&out.stderr)));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], said);

    let help = text(&governor(tmp.path(), &["--help"], &[]).stdout);
    assert!(
        help.contains("KANBAN_GOVERNOR_LOG") && help.contains("--log-format"),
        "{help}"
    );
}

/// Issue 15: a mistyped command gets a suggestion, and exit 2.
#[test]
fn a_mistyped_command_is_answered_with_the_one_meant() {
    let tmp = tempfile::tempdir().unwrap();
    let out = governor(tmp.path(), &["tikc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("similar subcommand exists: 'tick'"),
        "{}",
        text(&out.stderr)
    );
}

/// `check-config … | head`: a reader that stops early is not a failure (it panicked on the
/// broken pipe before).
#[test]
fn check_config_into_a_pipe_closed_early_exits_0() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    // Far more output than a pipe holds (64 KiB), so the writer meets the closed pipe.
    let mut config = String::from("[gpu]\ntelemetry = \"static\"\nmemory_total = \"80GiB\"\n");
    for i in 0..600 {
        config += &format!(
            "\n[[profiles]]\nname = \"p{i}\"\nkv_bytes_per_token = \"1KiB\"\nmax_context_tokens = 1000\n"
        );
    }
    let path = tmp.path().join("governor.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
        .env_clear()
        .env("HOME", tmp.path())
        .args(["check-config", "--file-only", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
