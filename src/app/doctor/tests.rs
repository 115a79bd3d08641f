//! Tests of the doctor checks on temp dirs, and of the cron/systemd renderings.

use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn inputs(home: &Path) -> Inputs {
    Inputs {
        config_path: home.join("governor.toml"),
        config_exists: false,
        hermes_bin: None,
        hermes_home: home.to_path_buf(),
        board: None,
        state_dir: home.join("state"),
        profiles: vec![],
        max_semantics: None,
        proxy_listen: None,
    }
}

fn executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[test]
fn an_absolute_hermes_bin_passes_both_path_checks() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("venv/bin/hermes");
    executable(&bin, "#!/bin/sh\n");
    let mut i = inputs(dir.path());
    i.hermes_bin = Some(bin.clone());
    let mut out = vec![];
    assert_eq!(check_hermes_bin(&i, &env_of(&[]), &mut out), Some(bin));
    assert_eq!(find(&out, "hermes_bin").status, Status::Ok);
    assert_eq!(find(&out, "cron_path").status, Status::Ok);
}

#[test]
fn a_missing_absolute_hermes_bin_fails_with_the_install_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = inputs(dir.path());
    i.hermes_bin = Some(dir.path().join("nope/hermes"));
    let mut out = vec![];
    assert_eq!(check_hermes_bin(&i, &env_of(&[]), &mut out), None);
    let c = find(&out, "hermes_bin");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("does not exist"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("command -v hermes"));
}

#[test]
fn relying_on_path_warns_that_cron_would_not_find_hermes() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("venv/bin");
    executable(&bin_dir.join("hermes"), "#!/bin/sh\n");
    let path = format!("/nonexistent:{}", bin_dir.display());
    let mut out = vec![];
    let found = check_hermes_bin(&inputs(dir.path()), &env_of(&[("PATH", &path)]), &mut out);
    assert_eq!(found.as_deref(), Some(bin_dir.join("hermes").as_path()));
    assert_eq!(find(&out, "hermes_bin").status, Status::Ok);
    let cron = find(&out, "cron_path");
    assert_eq!(cron.status, Status::Warn);
    assert!(cron.detail.contains("/usr/bin:/bin"), "{cron:?}");
    assert!(
        cron.fix
            .as_deref()
            .unwrap()
            .contains(&bin_dir.join("hermes").display().to_string())
    );
}

#[test]
fn hermes_nowhere_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![];
    let found = check_hermes_bin(
        &inputs(dir.path()),
        &env_of(&[("PATH", "/nonexistent")]),
        &mut out,
    );
    assert_eq!(found, None);
    assert_eq!(find(&out, "hermes_bin").status, Status::Fail);
    assert_eq!(check_version(None, None).status, Status::Fail);
}

#[test]
fn version_check_reports_semantics_and_refuses_an_unknown_version() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("hermes");
    executable(&bin, "#!/bin/sh\necho 'Hermes Agent v0.19.0 (2026.7.20)'\n");
    let c = check_version(Some(&bin), None);
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(
        c.detail.contains("0.19.0") && c.detail.contains("live cap"),
        "{c:?}"
    );
    executable(&bin, "#!/bin/sh\necho 'who knows'\n");
    let c = check_version(Some(&bin), None);
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("max_semantics"));
    let c = check_version(Some(&bin), Some(MaxSemantics::PerTick));
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.contains("per-tick"), "{c:?}");
}

#[test]
fn max_in_progress_in_hermes_config_fails_with_the_removal_fix() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        find(&check_hermes_caps(dir.path()), "max_in_progress").status,
        Status::Ok
    );
    std::fs::write(
        dir.path().join("config.yaml"),
        "kanban:\n  max_in_progress: 3\n  max_in_progress_per_profile: 1\n",
    )
    .unwrap();
    let checks = check_hermes_caps(dir.path());
    let c = find(&checks, "max_in_progress");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("63466"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .starts_with("remove kanban.max_in_progress"),
        "{c:?}"
    );
    assert_eq!(
        find(&checks, "max_in_progress_per_profile").status,
        Status::Warn
    );
    std::fs::write(dir.path().join("config.yaml"), "kanban: [\n").unwrap();
    assert_eq!(
        find(&check_hermes_caps(dir.path()), "hermes_config").status,
        Status::Fail
    );
}

#[test]
fn profiles_must_exist_and_lanes_must_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("profiles/coder")).unwrap();
    std::fs::create_dir_all(root.join("profiles/reviewer")).unwrap();
    let mut i = inputs(root);
    assert_eq!(
        find(&check_profiles(&i, root, "hermes"), "profiles").status,
        Status::Warn
    );
    i.profiles = vec![
        ProfileRef {
            name: "coder".into(),
            lane: "coder@gpu".into(),
        },
        ProfileRef {
            name: "ghost".into(),
            lane: "ghost@gpu".into(),
        },
        ProfileRef {
            name: "default".into(),
            lane: "reviewer".into(),
        },
    ];
    let checks = check_profiles(&i, root, "/opt/hermes/bin/hermes");
    assert_eq!(find(&checks, "profile:coder").status, Status::Ok);
    let ghost = find(&checks, "profile:ghost");
    assert_eq!(ghost.status, Status::Fail);
    assert!(
        ghost
            .fix
            .as_deref()
            .unwrap()
            .contains("/opt/hermes/bin/hermes profile create ghost --no-alias"),
        "the fix names the hermes doctor found: {ghost:?}"
    );
    let d = find(&checks, "profile:default");
    assert_eq!(d.status, Status::Fail);
    assert!(
        d.detail.contains("lane reviewer is a Hermes profile"),
        "{d:?}"
    );
}

#[test]
fn state_dir_is_ok_when_writable_and_warns_when_missing_but_creatable() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check_state_dir(dir.path()).status, Status::Ok);
    let c = check_state_dir(&dir.path().join("a/b"));
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("mkdir -p"));
    let file = dir.path().join("f");
    std::fs::write(&file, "").unwrap();
    assert_eq!(check_state_dir(&file).status, Status::Fail);
}

#[test]
fn governor_lock_reports_its_holder_without_taking_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = check_governor_lock(dir.path());
    assert!(c.detail.contains("is free"), "{c:?}");
    let f = std::fs::File::create(dir.path().join(GOVERNOR_LOCK_FILE)).unwrap();
    f.try_lock().unwrap();
    let c = check_governor_lock(dir.path());
    assert!(
        c.detail
            .contains(&format!("held by pid {}", std::process::id())),
        "{c:?}"
    );
}

#[test]
fn board_checks_find_a_missing_board_pass_both_journal_modes_and_find_corrupt_copies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let i = inputs(root);
    let env = env_of(&[]);
    let checks = check_board(&env, &i, root, "hermes");
    let c = find(&checks, "board");
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.fix.as_deref().unwrap().contains("hermes kanban init"),
        "{c:?}"
    );
    {
        let conn = rusqlite::Connection::open(root.join("kanban.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE tasks(id TEXT, status TEXT); INSERT INTO tasks VALUES('t_1','ready');",
        )
        .unwrap();
    }
    let checks = check_board(&env, &i, root, "hermes");
    assert_eq!(find(&checks, "board").status, Status::Ok);
    assert!(find(&checks, "board").detail.contains("1 tasks (ready 1)"));
    // A rollback-journal board (Hermes >= 0.20 on SQLite < 3.51.3) passes, and the check
    // says what the mode costs.
    let c = find(&checks, "board_journal");
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.contains("rollback journal"), "{c:?}");
    assert!(c.detail.contains("busy timeout"), "{c:?}");
    rusqlite::Connection::open(root.join("kanban.db"))
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let checks = check_board(&env, &i, root, "hermes");
    let c = find(&checks, "board_journal");
    assert_eq!(c.status, Status::Ok);
    assert!(c.detail.starts_with("journal_mode is wal"), "{c:?}");
    assert_eq!(find(&checks, "corrupt_backups").status, Status::Ok);
    // The test made the board, so it is this user's.
    assert_eq!(find(&checks, "board_owner").status, Status::Ok);
    std::fs::write(root.join("kanban.db.corrupt.1f2e.bak"), "").unwrap();
    let checks = check_board(&env, &i, root, "hermes");
    let c = find(&checks, "corrupt_backups");
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("kanban.db.corrupt.1f2e.bak"), "{c:?}");
}

#[test]
fn a_named_board_that_does_not_exist_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = inputs(dir.path());
    i.board = Some("gpu".into());
    let checks = check_board(&env_of(&[]), &i, dir.path(), "hermes");
    let c = find(&checks, "board");
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.detail.contains("hermes kanban boards create gpu"),
        "{c:?}"
    );
}

#[test]
fn human_output_has_one_line_per_check_with_fixes_and_a_summary() {
    let checks = vec![
        Check::ok("a", "fine"),
        Check::warn("bb", "meh", "do x"),
        Check::fail("c", "bad", "do y"),
    ];
    let s = render_human(&checks);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "ok    a   fine");
    assert_eq!(lines[1], "warn  bb  meh -- fix: do x");
    assert_eq!(lines[2], "fail  c   bad -- fix: do y");
    assert_eq!(lines[3], "1 ok, 1 warn, 1 fail");
    let json = serde_json::to_value(&checks).unwrap();
    assert_eq!(
        json[2],
        serde_json::json!({"name": "c", "status": "fail", "detail": "bad", "fix": "do y"})
    );
    assert_eq!(json[0]["fix"], serde_json::Value::Null);
}

#[test]
fn cron_line_uses_absolute_quoted_paths_and_escapes_percent() {
    let mut i = inputs(Path::new("/srv/hermes home"));
    i.config_path = PathBuf::from("/etc/kg/governor.toml");
    i.state_dir = PathBuf::from("/var/lib/kg%1");
    let s = render_cron(Path::new("/usr/local/bin/kanban-governor"), &i);
    let line = s.lines().find(|l| !l.starts_with('#')).unwrap();
    assert_eq!(
        line,
        "* * * * * HERMES_HOME='/srv/hermes home' /usr/local/bin/kanban-governor tick --config /etc/kg/governor.toml --repeat 4 --every 15s >> '/var/lib/kg\\%1'/tick.log 2>&1"
    );
    assert!(s.contains("does not exist yet"));
    assert!(!s.contains('@'), "a placeholder is left: {s}");
}

#[test]
fn systemd_services_leave_released_agents_running_when_the_governor_stops() {
    let i = inputs(Path::new("/srv/hermes"));
    for (name, unit) in render_systemd(Path::new("/opt/kg/kanban-governor"), &i, "hermes") {
        if !name.ends_with(".service") {
            continue;
        }
        // Workers share the unit's cgroup: the default KillMode would kill every agent
        // when a tick exits or the daemon restarts.
        assert!(unit.contains("\nKillMode=process\n"), "{name}: {unit}");
        // No sandbox the agents would inherit.
        for confining in [
            "ProtectSystem=",
            "ProtectHome=",
            "PrivateTmp=",
            "PrivateNetwork=",
            "NoNewPrivileges=",
            "MemoryDenyWriteExecute=",
            "IPAddressDeny=",
        ] {
            assert!(!unit.contains(confining), "{name} has {confining}");
        }
    }
}

#[test]
fn systemd_units_have_absolute_paths_and_environment_lines() {
    let i = inputs(Path::new("/srv/hermes"));
    let units = render_systemd(Path::new("/opt/kg/kanban-governor"), &i, "hermes");
    let names: Vec<&str> = units.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "kanban-governor.service",
            "kanban-governor-tick.service",
            "kanban-governor-tick.timer"
        ]
    );
    let run = &units[0].1;
    assert!(
        run.contains("ExecStart=/opt/kg/kanban-governor run --config /srv/hermes/governor.toml\n"),
        "{run}"
    );
    assert!(
        run.contains("Environment=HERMES_HOME=/srv/hermes\n"),
        "{run}"
    );
    assert!(run.contains("User=hermes\n"), "{run}");
    let tick = &units[1].1;
    assert!(
        tick.contains("Type=oneshot")
            && tick.contains(
                "ExecStart=/opt/kg/kanban-governor tick --config /srv/hermes/governor.toml"
            ),
        "{tick}"
    );
    assert!(units[2].1.contains("OnCalendar=*:*:0/15"));
    for (_, u) in &units {
        // Placeholders are `@NAME@`; systemd's own `@group` syscall sets are not.
        let parts: Vec<&str> = u.split('@').collect();
        let placeholder = parts.len() > 2
            && parts[1..parts.len() - 1].iter().any(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            });
        assert!(!placeholder, "a placeholder is left: {u}");
        assert!(
            u.starts_with('['),
            "the comment header should be dropped: {u}"
        );
    }
}

#[test]
fn the_templates_in_scripts_carry_every_placeholder_they_are_filled_with() {
    assert!(CRON_TEMPLATE.contains("@GOVERNOR_BIN@ tick --config @CONFIG@ --repeat 4 --every 15s"));
    for t in [SERVICE_TEMPLATE, TICK_SERVICE_TEMPLATE] {
        assert!(t.contains("Environment=HERMES_HOME=@HERMES_HOME@"));
        assert!(t.contains("ExecStart=@GOVERNOR_BIN@"));
    }
}

#[test]
fn the_state_check_reads_the_database_and_fails_on_one_from_a_newer_governor() {
    use crate::adapters::state_sqlite::{STATE_DB_NAME, SqliteState};
    use crate::ports::StateStore;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check_state_db(dir.path()).status, Status::Ok);
    let mut s = SqliteState::open(dir.path()).unwrap();
    s.save(&crate::app::state::GovernorState::default())
        .unwrap();
    drop(s);
    let c = check_state_db(dir.path());
    assert_eq!(c.status, Status::Ok);
    assert!(
        c.detail.contains("0 released and not yet running"),
        "{}",
        c.detail
    );
    rusqlite::Connection::open(dir.path().join(STATE_DB_NAME))
        .unwrap()
        .pragma_update(None, "user_version", 7)
        .unwrap();
    let c = check_state_db(dir.path());
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("schema version 7"), "{}", c.detail);
}

#[test]
fn a_hot_journal_fails_the_board_with_the_absolute_hermes_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    crate::adapters::board_sqlite::tests::make_hot_journal_board(root);
    let hermes = hermes_command(Some(Path::new("/opt/hermes venv/bin/hermes")));
    let checks = check_board(&env_of(&[]), &inputs(root), root, &hermes);
    let c = find(&checks, "board");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("hot rollback journal"), "{c:?}");
    let fix = c.fix.as_deref().unwrap();
    assert!(
        fix.contains("'/opt/hermes venv/bin/hermes' kanban list"),
        "{fix}"
    );
    // The other board checks still run.
    assert_eq!(find(&checks, "corrupt_backups").status, Status::Ok);
}

#[test]
fn systemd_units_run_as_the_owner_of_the_hermes_home_not_as_whoever_runs_doctor() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("hermes");
    std::fs::create_dir(&home).unwrap();
    let root = |_: &str| Some("root".to_owned());
    if rustix::process::geteuid().is_root() {
        // `sudo kanban-governor doctor --systemd` for a board that user 65534 owns.
        rustix::fs::chown(
            &home,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .unwrap();
        let want = crate::adapters::state_dir::user_name(65534).unwrap_or_else(|| "root".into());
        assert_ne!(want, "root", "uid 65534 has a name in /etc/passwd");
        assert_eq!(super::unit_user(&home, &root), want);
    } else {
        let me = std::fs::metadata(&home).unwrap().uid();
        let want = crate::adapters::state_dir::user_name(me).unwrap();
        assert_eq!(super::unit_user(&home, &root), want);
    }
    // No home yet: $USER.
    assert_eq!(super::unit_user(&d.path().join("none"), &root), "root");
}

/// Profiles `coder` and `writer` under the Hermes root `root`, governed with the proxy on
/// `127.0.0.1:9478`.
fn proxy_on(root: &Path) -> (Inputs, std::net::SocketAddr) {
    for p in ["coder", "writer"] {
        std::fs::create_dir_all(root.join("profiles").join(p)).unwrap();
    }
    let listen: std::net::SocketAddr = "127.0.0.1:9478".parse().unwrap();
    let mut i = inputs(root);
    i.proxy_listen = Some(listen);
    i.profiles = ["coder", "writer"]
        .iter()
        .map(|p| ProfileRef {
            name: (*p).to_owned(),
            lane: format!("{p}@gpu"),
        })
        .collect();
    (i, listen)
}

#[test]
fn with_the_proxy_on_each_profiles_base_url_must_point_at_it_or_the_fix_names_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (i, listen) = proxy_on(root);
    std::fs::write(
        root.join("profiles/coder/config.yaml"),
        "model:\n  base_url: http://127.0.0.1:9478/p/coder/v1/\n",
    )
    .unwrap();
    std::fs::write(
        root.join("profiles/writer/config.yaml"),
        "model:\n  base_url: http://127.0.0.1:8000/v1\n",
    )
    .unwrap();
    let checks = check_proxy_base_urls(&i, root, "/opt/h/bin/hermes", listen);
    assert_eq!(find(&checks, "proxy_base_url:coder").status, Status::Ok);
    let w = find(&checks, "proxy_base_url:writer");
    assert_eq!(w.status, Status::Fail);
    assert!(w.detail.contains("http://127.0.0.1:8000/v1"), "{w:?}");
    let fix = w.fix.as_deref().unwrap();
    assert!(
        fix.contains("/opt/h/bin/hermes -p writer config set model.base_url http://127.0.0.1:9478/p/writer/v1"),
        "{fix}"
    );
    assert!(
        fix.contains(&format!("HERMES_HOME={}", root.display())),
        "{fix}"
    );

    // Another port, another profile's path, or https are not the proxy.
    for url in [
        "http://127.0.0.1:9479/p/coder/v1",
        "http://127.0.0.1:9478/p/writer/v1",
        "https://127.0.0.1:9478/p/coder/v1",
        "http://10.0.0.1:9478/p/coder/v1",
    ] {
        assert!(!goes_through_proxy(url, listen, "coder"), "{url}");
    }
    assert!(goes_through_proxy(
        "http://localhost:9478/p/coder/v1",
        listen,
        "coder"
    ));
    let any: std::net::SocketAddr = "0.0.0.0:9478".parse().unwrap();
    assert!(goes_through_proxy(
        "http://10.0.0.1:9478/p/coder/v1",
        any,
        "coder"
    ));
    assert_eq!(
        proxy_base_url(any, "coder"),
        "http://127.0.0.1:9478/p/coder/v1"
    );
}

#[test]
fn a_custom_base_url_that_sends_a_profile_past_the_proxy_is_a_warning_naming_where_it_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (i, listen) = proxy_on(root);
    let engine = [("CUSTOM_BASE_URL", "http://127.0.0.1:8000/v1")];
    let c = check_base_url_env(&i, root, &env_of(&[]), listen);
    assert_eq!(c.status, Status::Ok, "{c:?}");
    // Set where `run` runs: every worker inherits it.
    let c = check_base_url_env(&i, root, &env_of(&engine), listen);
    assert_eq!(c.status, Status::Warn, "{c:?}");
    for p in [
        "coder (",
        "writer (",
        "http://127.0.0.1:8000/v1",
        "this environment",
    ] {
        assert!(c.detail.contains(p), "{p}: {c:?}");
    }
    // The Hermes root's `.env` is loaded over it by the dispatcher: coder's proxy path there
    // leaves only writer past the proxy, and the fix names that file.
    std::fs::write(
        root.join(".env"),
        "# comment\nexport CUSTOM_BASE_URL='http://127.0.0.1:9478/p/coder/v1'\n",
    )
    .unwrap();
    let c = check_base_url_env(&i, root, &env_of(&engine), listen);
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(
        c.detail.contains("writer (") && !c.detail.contains("coder ("),
        "{c:?}"
    );
    let fix = c.fix.as_deref().unwrap();
    assert!(
        fix.contains(&root.join(".env").display().to_string()),
        "{fix}"
    );
    assert!(!fix.contains("this environment"), "{fix}");
    // A profile's own `.env` is loaded last, over both.
    std::fs::write(
        root.join("profiles/writer/.env"),
        "CUSTOM_BASE_URL=http://127.0.0.1:9478/p/writer/v1 # through the proxy\n",
    )
    .unwrap();
    let c = check_base_url_env(&i, root, &env_of(&engine), listen);
    assert_eq!(c.status, Status::Ok, "{c:?}");
    // OPENAI_BASE_URL is not taken over model.base_url: nothing to warn about.
    std::fs::remove_file(root.join(".env")).unwrap();
    std::fs::remove_file(root.join("profiles/writer/.env")).unwrap();
    let c = check_base_url_env(
        &i,
        root,
        &env_of(&[("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")]),
        listen,
    );
    assert_eq!(c.status, Status::Ok, "{c:?}");
}
