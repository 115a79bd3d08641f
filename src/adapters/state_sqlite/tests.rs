use super::*;
use crate::governor::{
    Bytes, Decision, Hold, HoldReason, Observation, ProfileId, Release, WorstCase,
};
use crate::record::PeakSample;
use crate::record::report::Observed;

fn report(at: u64) -> TickReport {
    TickReport {
        at: Millis::secs(at),
        dry_run: false,
        observed: Observed {
            observation: Observation {
                now: Millis::secs(at),
                pools: vec![],
                running: vec![],
                waiting: vec![],
                dual_dispatcher: None,
                latency_limit: None,
                learned: vec![],
                spread: vec![],
            },
            board_running: 0,
            dead: vec![],
            dead_for_good: vec![],
            adopt: vec![],
            in_flight: vec![],
            finishing: vec![],
            telemetry_errors: vec![],
            data_version: 0,
            busy_context: None,
            peaks: vec![],
            peaks_pending: vec![],
            settled: vec![],
        },
        decision: Decision {
            release: vec![],
            held: vec![],
            pools: vec![],
        },
        reclaimed: vec![],
        blocked: vec![],
        adopted: vec![],
        released: vec![],
        dispatch_max: None,
        spawned: vec![],
        leaks: vec![],
        in_flight: vec![],
        withdrawn: vec![],
        dispatch_held: None,
        errors: vec![],
    }
}

fn held(id: &str, reason: HoldReason) -> Hold {
    Hold {
        id: TaskId::from(id),
        profile: Some(ProfileId::from("coder")),
        reason,
    }
}

fn vram_again() -> HoldReason {
    HoldReason::VramHeadroom {
        needed: Bytes::gib(8),
        free: Bytes::gib(1),
    }
}

fn count(s: &SqliteState, sql: &str) -> i64 {
    s.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn text(s: &SqliteState, sql: &str) -> String {
    s.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_new_database_holds_the_default_state_in_wal_at_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteState::open(&dir.path().join("sub")).unwrap();
    assert_eq!(s.load().unwrap(), GovernorState::default());
    assert_eq!(s.user_version().unwrap(), MIGRATIONS.len() as i64);
    let mode: String = s
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn saved_state_survives_reopening_and_reads_back_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = GovernorState::default();
    st.first_seen_waiting.insert(TaskId::from("t_a"), Millis(9));
    st.observed_baseline.insert("default".into(), Bytes::gib(3));
    st.footprints
        .entry(ProfileId::from("coder"))
        .or_default()
        .observe(1234);
    st.last_tick = Some(Millis(77));
    SqliteState::open(dir.path()).unwrap().save(&st).unwrap();
    assert_eq!(SqliteState::open(dir.path()).unwrap().load().unwrap(), st);
    assert_eq!(SqliteState::load_read_only(dir.path()).unwrap(), st);
}

#[test]
fn a_reader_beside_an_open_writer_sees_what_is_only_in_the_wal_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SqliteState::open(dir.path()).unwrap();
    let st = GovernorState {
        last_tick: Some(Millis(5)),
        ..GovernorState::default()
    };
    writer.save(&st).unwrap();
    let names = || {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = names();
    assert!(
        before.iter().any(|n| n == "state.sqlite3-wal"),
        "{before:?}"
    );
    assert_eq!(SqliteState::load_read_only(dir.path()).unwrap(), st);
    assert_eq!(names(), before);
}

#[test]
fn a_wal_without_its_shm_is_not_read_and_the_fix_is_named() {
    let dir = tempfile::tempdir().unwrap();
    SqliteState::open(dir.path())
        .unwrap()
        .save(&GovernorState::default())
        .unwrap();
    std::fs::write(dir.path().join("state.sqlite3-wal"), "").unwrap();
    let e = SqliteState::load_read_only(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("run `kanban-governor tick` once"), "{e}");
    assert!(!dir.path().join("state.sqlite3-shm").exists());
}

#[test]
fn reading_a_directory_without_a_database_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        SqliteState::load_read_only(dir.path()).unwrap(),
        GovernorState::default()
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_legacy_json_state_is_imported_once_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = GovernorState::default();
    st.counters.released = 41;
    JsonStateFile::in_dir(dir.path()).save(&st).unwrap();
    // Before the first open, status still sees it.
    assert_eq!(SqliteState::load_read_only(dir.path()).unwrap(), st);
    let mut s = SqliteState::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), st);
    assert!(!dir.path().join(STATE_FILE_NAME).exists());
    assert!(dir.path().join("state.json.imported").exists());
    // A later save wins over the imported copy.
    st.counters.released = 42;
    s.save(&st).unwrap();
    assert_eq!(SqliteState::open(dir.path()).unwrap().load().unwrap(), st);
}

#[test]
fn a_newer_schema_is_refused_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteState::open(dir.path()).unwrap());
    let path = dir.path().join(STATE_DB_NAME);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteState::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("state.sqlite3") && err.contains("schema version 99"),
        "{err}"
    );
    assert!(err.contains("newer kanban-governor"), "{err}");
    let err = SqliteState::load_read_only(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn a_garbled_state_row_is_an_error_not_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteState::open(dir.path()).unwrap();
    s.save(&GovernorState::default()).unwrap();
    s.conn
        .execute("UPDATE governor_state SET json = '{nope'", [])
        .unwrap();
    let err = s.load().unwrap_err().to_string();
    assert!(err.contains("move it away"), "{err}");
}

#[test]
fn the_journal_keeps_releases_outcomes_reason_changes_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteState::open(dir.path()).unwrap();
    let vram = HoldReason::VramHeadroom {
        needed: Bytes::gib(8),
        free: Bytes::gib(2),
    };
    let mut r = report(100);
    r.decision.release = vec![Release {
        id: TaskId::from("t_a"),
        profile: ProfileId::from("coder"),
        charged: WorstCase::default(),
    }];
    r.released = vec![TaskId::from("t_a")];
    r.decision.held = vec![held("t_b", vram.clone())];
    s.journal(&r).unwrap();
    // Same reason next tick: not written again. Spawned: the release's outcome.
    let mut r = report(105);
    r.decision.held = vec![held("t_b", vram)];
    r.spawned = vec![TaskId::from("t_a")];
    s.journal(&r).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM decisions"), 2);
    // A new process (cron: one `tick` each) does not write the unchanged reason again.
    drop(s);
    let mut s = SqliteState::open(dir.path()).unwrap();
    let mut r = report(107);
    r.decision.held = vec![held("t_b", vram_again())];
    s.journal(&r).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM decisions"), 2);
    let outcome = text(&s, "SELECT outcome FROM releases WHERE task = 't_a'");
    assert_eq!(outcome, "spawned");
    // A new reason is written; the task finishing done records its peak.
    let mut r = report(110);
    r.decision.held = vec![held("t_b", HoldReason::WaitingOnParent)];
    r.observed.peaks = vec![PeakSample {
        task: TaskId::from("t_a"),
        profile: ProfileId::from("coder"),
        tokens: 3000,
    }];
    s.journal(&r).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM decisions"), 3);
    assert_eq!(
        count(
            &s,
            "SELECT peak_tokens FROM footprint_samples WHERE task = 't_a'"
        ),
        3000
    );
    let outcome = text(&s, "SELECT outcome FROM releases WHERE task = 't_a'");
    assert_eq!(outcome, "done");
}

#[test]
fn old_journal_rows_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteState::open(dir.path()).unwrap();
    let mut r = report(1_000);
    r.decision.held = vec![held("t_old", HoldReason::WaitingOnParent)];
    s.journal(&r).unwrap();
    assert_eq!(count(&s, "SELECT COUNT(*) FROM decisions"), 1);
    let later = 1_000 + RETENTION.get() / 1000 + 3600;
    let mut r = report(later);
    r.decision.held = vec![held("t_new", HoldReason::WaitingOnParent)];
    s.journal(&r).unwrap();
    assert_eq!(
        text(&s, "SELECT group_concat(task) FROM decisions"),
        "t_new"
    );
}

#[test]
fn releases_journaled_ahead_are_not_written_again_and_a_failed_assign_is_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteState::open(dir.path()).unwrap();
    let release = |id: &str| Release {
        id: TaskId::from(id),
        profile: ProfileId::from("coder"),
        charged: WorstCase::default(),
    };
    // t_a was released before and is settled `gone` this tick, then released again.
    let mut r = report(100);
    r.decision.release = vec![release("t_a")];
    r.released = vec![TaskId::from("t_a")];
    s.journal(&r).unwrap();
    let mut r = report(200);
    r.observed.settled = vec![(TaskId::from("t_a"), "gone".to_owned())];
    r.decision.release = vec![release("t_a"), release("t_b")];
    let mut state = GovernorState::default();
    state.counters.ticks = 7;
    let ids = [TaskId::from("t_a"), TaskId::from("t_b")];
    s.save_before_releasing(&state, &r, &ids).unwrap();
    // Written at once: the state, the old row's outcome, one new row per release.
    assert_eq!(s.load().unwrap().counters.ticks, 7);
    let rows = |s: &SqliteState| -> Vec<(String, Option<String>)> {
        s.conn
            .prepare("SELECT task, outcome FROM releases ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let open = |id: &str| (id.to_owned(), None);
    let with = |id: &str, o: &str| (id.to_owned(), Some(o.to_owned()));
    assert_eq!(rows(&s), [with("t_a", "gone"), open("t_a"), open("t_b")]);
    // The tick ends: t_b's assign failed. Nothing is written twice.
    r.released = vec![TaskId::from("t_a")];
    s.journal(&r).unwrap();
    assert_eq!(
        rows(&s),
        [with("t_a", "gone"), open("t_a"), with("t_b", "failed")]
    );
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) FROM decisions WHERE verdict = 'release'"
        ),
        3
    );
}
