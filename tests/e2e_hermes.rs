//! End-to-end: the real `kanban-governor tick` binary against the real Hermes CLI, real
//! workers, and a fake model server on 127.0.0.1. Every case runs on hermes-agent 0.19.0 (WAL
//! boards); the cases that depend most on Hermes's behaviour (release order and `--max`, a
//! crashed worker's reclaim, a dry run that leaves no trace) also run on Hermes 0.20.1 with a
//! rollback-journal board, and the rollback journal's own cases (doctor, a hot journal) run
//! there only.
//!
//! The tests run one at a time (a shared lock): each Hermes worker is a CPU-heavy Python
//! process, and two tests' workers would starve each other on a small machine. Every wait
//! polls the board (`mode=ro`) with a deadline; nothing sleeps a fixed time to "let it work".

mod common;

use common::{FakeModel, Governor, Hermes, Release, file_bytes, ids, wait_for};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const GIB: u64 = 1 << 30;

/// `big`: 128 KiB/token × 65536 tokens = 8 GiB; `small`: 128 KiB × 24576 = 3 GiB.
const PROFILES: &[(&str, &str, u64)] = &[("big", "128KiB", 65536), ("small", "128KiB", 24576)];

fn worst_case(assignee: &str) -> u64 {
    match assignee {
        "big" => 8 * GIB,
        "small" => 3 * GIB,
        other => panic!("a task runs as {other:?}, which the governor does not govern"),
    }
}

/// Sum of worst cases of the tasks running on the board now.
fn running_sum(h: &Hermes) -> u64 {
    h.tasks()
        .iter()
        .filter(|t| t.status == "running")
        .map(|t| worst_case(t.assignee.as_deref().unwrap_or("")))
        .sum()
}

/// Tick about every `every` until every task is done, checking the ceiling at every poll.
/// Returns (highest sum of running worst cases seen, every tick report).
fn drive_to_done(
    h: &Hermes,
    g: &Governor,
    ceiling: u64,
    deadline: Duration,
) -> (u64, Vec<serde_json::Value>) {
    let start = Instant::now();
    let mut peak = 0;
    let mut reports = Vec::new();
    let mut last_tick = None::<Instant>;
    loop {
        if last_tick.is_none_or(|t| t.elapsed() >= Duration::from_millis(700)) {
            let r = g.tick();
            assert!(ids(&r, "leaks").is_empty(), "governance leak: {r}");
            reports.push(r);
            last_tick = Some(Instant::now());
        }
        let sum = running_sum(h);
        assert!(
            sum <= ceiling,
            "running worst cases {} GiB exceed the ceiling {} GiB: {:?}",
            sum / GIB,
            ceiling / GIB,
            h.tasks()
        );
        peak = peak.max(sum);
        let tasks = h.tasks();
        if tasks.iter().all(|t| t.status == "done") {
            return (peak, reports);
        }
        assert!(
            start.elapsed() < deadline,
            "not all tasks done after {deadline:?}: {tasks:?}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn repeated_ticks_keep_running_worst_cases_under_the_ceiling_until_all_tasks_are_done() {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_millis(1500));
    let h = Hermes::new(&["big", "small"], &model);
    // 24 GiB GPU, 4 GiB baseline, headroom 1.0, no reserve: 20 GiB for tasks.
    let g = Governor::new(&h, "24GiB", "4GiB", PROFILES);
    // Half created straight on the profile (the governor adopts them), half in the lanes.
    let mut created = Vec::new();
    for (i, (assignee, _)) in [
        ("big", 0),
        ("big@gpu", 0),
        ("big", 0),
        ("small@gpu", 0),
        ("small", 0),
        ("small@gpu", 0),
    ]
    .iter()
    .enumerate()
    {
        created.push(h.create(&format!("task {i}"), assignee, 0, &[]));
    }
    let (peak, reports) = drive_to_done(&h, &g, 20 * GIB, Duration::from_secs(240));
    // The governor ran tasks side by side (two big + one small = 19 GiB fits), not one by one.
    assert!(
        peak >= 11 * GIB,
        "peak of running worst cases only {} GiB",
        peak / GIB
    );
    let released: usize = reports.iter().map(|r| ids(r, "released").len()).sum();
    assert!(
        released >= created.len(),
        "released {released} for {} tasks",
        created.len()
    );
    let adopted: Vec<String> = reports.iter().flat_map(|r| ids(r, "adopted")).collect();
    let first = &reports[0];
    // First tick: 2 big (16) + 1 small (3) fit in 20 GiB; the rest waited with a reason.
    assert_eq!(ids(first, "released").len(), 3, "{first}");
    assert_eq!(ids(first, "spawned").len(), 3, "{first}");
    assert!(
        first["decision"]["held"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["reason"]["kind"] == "vram_headroom"),
        "{first}"
    );
    // Tasks created on the profile were parked in the lane unless released at once.
    assert!(!adopted.is_empty());
    for id in &adopted {
        assert!(created.contains(id));
    }
}

#[test]
fn priority_order_with_backfill_on_the_first_tick() {
    priority_order_with_backfill(Release::V0_19);
}

#[test]
fn priority_order_with_backfill_on_the_first_tick_on_hermes_0_20() {
    priority_order_with_backfill(Release::V0_20);
}

fn priority_order_with_backfill(release: Release) {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_millis(500));
    let h = Hermes::of(release, &["big", "small"], &model);
    // 16 GiB GPU, 4 GiB baseline: 12 GiB for tasks.
    let g = Governor::new(&h, "16GiB", "4GiB", PROFILES);
    let s_low = h.create("small low", "small@gpu", 0, &[]);
    let b_first = h.create("big first", "big@gpu", 5, &[]);
    let b_second = h.create("big second", "big@gpu", 5, &[]);
    let s_mid = h.create("small mid", "small@gpu", 1, &[]);
    let r = g.tick();
    // Priority 5 first (older first): b_first takes 8 GiB, b_second does not fit in the 4
    // left, the priority-1 small one backfills (3 GiB), the priority-0 one no longer fits.
    assert_eq!(ids(&r, "released"), [b_first.clone(), s_mid.clone()], "{r}");
    assert_eq!(ids(&r, "spawned"), [b_first, s_mid], "{r}");
    let held: BTreeMap<String, String> = r["decision"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_owned(),
                h["reason"]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(held[&b_second], "vram_headroom");
    assert_eq!(held[&s_low], "vram_headroom");
    assert_eq!(r["dispatch_max"], 2);
    drive_to_done(&h, &g, 12 * GIB, Duration::from_secs(180));
}

#[test]
fn a_child_task_waits_on_its_parent_and_runs_after_it() {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_millis(300));
    let h = Hermes::new(&["small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", &PROFILES[1..]);
    let parent = h.create("parent", "small@gpu", 0, &[]);
    let child = h.create("child", "small@gpu", 0, &[&parent]);
    assert_eq!(h.task(&child).status, "todo");
    let r = g.tick();
    assert_eq!(ids(&r, "released"), std::slice::from_ref(&parent));
    let held = &r["decision"]["held"][0];
    assert_eq!(held["id"], child.as_str());
    assert_eq!(held["reason"]["kind"], "waiting_on_parent");
    let status = g.run("status", &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("WaitingOnParent"), "{text}");
    drive_to_done(&h, &g, 20 * GIB, Duration::from_secs(120));
    let (p, c) = (h.task(&parent), h.task(&child));
    assert!(
        c.started_at.unwrap() >= p.completed_at.unwrap(),
        "child started before its parent completed: {p:?} {c:?}"
    );
}

/// The lock held by a process that is not a kanban-governor (this test): a silent exit 0
/// would hide a holder that stops every tick (issue 11). A lock held by a governor is
/// "nothing to do", exit 0: tests/state_files_signals.rs.
#[test]
fn tick_while_another_process_holds_the_lock_exits_1_naming_it_and_does_nothing() {
    let _serial = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", &PROFILES[1..]);
    let id = h.create("on the profile", "small", 0, &[]);
    std::fs::create_dir_all(&g.state_dir).unwrap();
    let lock = std::fs::File::create(g.state_dir.join("tick.lock")).unwrap();
    lock.try_lock().unwrap();
    let before = (file_bytes(&h.db()), h.tasks());
    let out = g.run("tick", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is held by pid {} ", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains("not a kanban-governor"), "{stderr}");
    assert!(stderr.contains("tick.lock"), "{stderr}");
    assert_eq!((file_bytes(&h.db()), h.tasks()), before);
    assert_eq!(h.task(&id).assignee.as_deref(), Some("small"));
    assert!(!g.state_dir.join("state.sqlite3").exists());
    drop(lock);
    let r = g.tick();
    assert_eq!(ids(&r, "released"), [id]);
    drive_to_done(&h, &g, 20 * GIB, Duration::from_secs(60));
}

#[test]
fn dry_run_leaves_the_board_byte_identical_and_holds_unknown_profiles_with_a_reason() {
    dry_run_and_status_leave_no_trace(Release::V0_19);
}

#[test]
fn dry_run_and_status_leave_no_trace_on_a_rollback_journal_board_of_hermes_0_20() {
    dry_run_and_status_leave_no_trace(Release::V0_20);
}

fn dry_run_and_status_leave_no_trace(release: Release) {
    let _serial = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::of(release, &["big", "small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", PROFILES);
    let lane = h.create("in the lane", "big@gpu", 0, &[]);
    let on_profile = h.create("on the profile", "small", 0, &[]);
    let ghost = h.create("for nobody", "ghost@gpu", 0, &[]);
    // Every file beside the board, with its bytes. No Hermes process is left running, so a
    // WAL board (0.19.0) has no -wal or -shm now: the case where a read-only SQLite reader
    // would create them.
    let before = files_in(h.path());
    let expect = match release {
        Release::V0_19 => [2, 2],
        Release::V0_20 => [1, 1],
    };
    assert_eq!(
        before["kanban.db"][18..20],
        expect,
        "journal mode in the board's header"
    );
    assert!(
        !before.contains_key("kanban.db-wal") && !before.contains_key("kanban.db-shm"),
        "{:?}",
        before.keys()
    );
    let out = g.run("tick", &["--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("would release {lane}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("would release {on_profile}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "hold {ghost} (-): 'ghost@gpu' is not a governed profile or lane: add it to the config or reassign the task [UnknownProfile]"
        )),
        "{stdout}"
    );
    assert!(
        files_in(h.path()) == before,
        "tick --dry-run changed or created a file beside the board: {:?}",
        files_in(h.path()).keys()
    );
    assert!(!g.state_dir.exists(), "tick --dry-run wrote the state dir");
    // status shows the same reason, and leaves no trace either.
    let status = String::from_utf8_lossy(&g.run("status", &[]).stdout).into_owned();
    assert!(
        status.contains("'ghost@gpu' is not a governed profile or lane")
            && status.contains("[UnknownProfile]"),
        "{status}"
    );
    assert!(
        files_in(h.path()) == before,
        "status changed or created a file beside the board: {:?}",
        files_in(h.path()).keys()
    );
    let tasks = h.tasks();
    assert!(tasks.iter().all(|t| t.status == "ready"), "{tasks:?}");
    assert_eq!(h.task(&on_profile).assignee.as_deref(), Some("small"));
    // A real tick leaves the ghost task where it is.
    let r = g.tick();
    assert_eq!(ids(&r, "released").len(), 2, "{r}");
    let ghost_row = h.task(&ghost);
    assert_eq!(
        (ghost_row.status.as_str(), ghost_row.assignee.as_deref()),
        ("ready", Some("ghost@gpu"))
    );
}

/// The files directly in `dir`, with their bytes.
fn files_in(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, file_bytes(&e.path()).unwrap_or_default())
        })
        .collect()
}

#[test]
fn a_crashed_worker_is_seen_its_task_reclaimed_and_its_memory_released() {
    crashed_worker_reclaimed(Release::V0_19);
}

#[test]
fn a_crashed_worker_is_seen_its_task_reclaimed_and_its_memory_released_on_hermes_0_20() {
    crashed_worker_reclaimed(Release::V0_20);
}

fn crashed_worker_reclaimed(release: Release) {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_secs(120));
    let h = Hermes::of(release, &["big"], &model);
    // 14 GiB GPU, 4 GiB baseline: one big task (8 GiB) at a time.
    let g = Governor::new(&h, "14GiB", "4GiB", &PROFILES[..1]);
    let a = h.create("a", "big@gpu", 0, &[]);
    let b = h.create("b", "big@gpu", 0, &[]);
    let r = g.tick();
    assert_eq!(ids(&r, "released"), std::slice::from_ref(&a));
    let pid = wait_for(Duration::from_secs(30), "a's worker pid", || {
        let t = h.task(&a);
        (t.status == "running").then_some(t.worker_pid).flatten()
    });
    // Nothing else fits while a runs.
    let r = g.tick();
    assert!(ids(&r, "released").is_empty(), "{r}");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(10), "the worker to be gone", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z")).then_some(())
    });
    model
        .delay_ms
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let r = g.tick();
    assert_eq!(ids(&r, "reclaimed"), std::slice::from_ref(&a), "{r}");
    // Its 8 GiB are free again: one task is released (a, the older one), not two.
    assert_eq!(ids(&r, "released"), std::slice::from_ref(&a), "{r}");
    assert_eq!(ids(&r, "spawned"), std::slice::from_ref(&a), "{r}");
    drive_to_done(&h, &g, 10 * GIB, Duration::from_secs(120));
    assert_eq!(h.task(&b).status, "done");
}

#[test]
fn a_gateway_dispatcher_on_the_board_holds_everything_and_nothing_is_released() {
    let _serial = serial();
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", &PROFILES[1..]);
    let waiting = h.create("in the lane", "small@gpu", 0, &[]);
    let gateway = common::Gateway::start(&h);
    let before = h.tasks();
    let r = g.tick();
    assert!(ids(&r, "released").is_empty(), "{r}");
    assert!(ids(&r, "adopted").is_empty(), "{r}");
    assert_eq!(r["dispatch_max"], serde_json::Value::Null, "{r}");
    let held = &r["decision"]["held"][0];
    assert_eq!(held["id"], waiting.as_str());
    assert_eq!(held["reason"]["kind"], "dual_dispatcher", "{r}");
    let detail = held["reason"]["detail"].as_str().unwrap();
    assert!(detail.contains("dispatch_in_gateway"), "{detail}");
    assert_eq!(h.tasks(), before);
    let status = String::from_utf8_lossy(&g.run("status", &[]).stdout).into_owned();
    assert!(status.contains("DualDispatcher"), "{status}");
    drop(gateway);
}

/// `doctor` on a governor config, and its human report.
fn doctor(g: &Governor) -> (Option<i32>, String) {
    let out = g.run("doctor", &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The line of check `name` in doctor's human report.
fn check_line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

#[test]
fn a_rollback_journal_board_of_hermes_0_20_passes_doctor_and_the_next_tick_runs_its_task() {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_millis(300));
    let h = Hermes::of(Release::V0_20, &["small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", &PROFILES[1..]);
    let id = h.create("in the lane", "small@gpu", 0, &[]);
    let (code, report) = doctor(&g);
    assert_eq!(code, Some(0), "{report}");
    let journal = check_line(&report, "board_journal");
    assert!(journal.starts_with("ok "), "{report}");
    assert!(journal.contains("rollback journal"), "{report}");
    assert!(journal.contains("busy timeout"), "{report}");
    let version = check_line(&report, "hermes_version");
    assert!(version.contains("0.20.1"), "{report}");
    assert!(version.contains("live cap"), "{report}");
    let r = g.tick();
    assert_eq!(ids(&r, "released"), std::slice::from_ref(&id), "{r}");
    assert_eq!(ids(&r, "spawned"), std::slice::from_ref(&id), "{r}");
    assert_eq!(r["dispatch_max"], 1, "{r}");
    drive_to_done(&h, &g, 20 * GIB, Duration::from_secs(120));
    assert_eq!(
        file_bytes(&h.db()).unwrap()[18..20],
        [1, 1],
        "still rollback"
    );
}

/// Leaves a hot rollback journal beside `h`'s board, as a Hermes process that dies in the
/// middle of a commit does: a Python writer (Hermes's own interpreter) starts a write and is
/// killed with SIGKILL. It runs `synchronous = OFF` so its journal carries its header from the
/// first write; Hermes's writes (FULL) have one from the commit's first sync on.
fn crash_a_writer_mid_write(h: &Hermes, release: Release) {
    use std::io::BufRead as _;
    let python = release.bin().parent().unwrap().join("python");
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA synchronous = OFF')\n\
             c.execute('BEGIN IMMEDIATE')\n\
             c.execute('UPDATE tasks SET priority = priority + 100')\n\
             print('writing', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(h.db())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "writing");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_hot_journal_holds_the_tick_and_doctor_names_the_hermes_command_that_repairs_it() {
    let _serial = serial();
    let model = FakeModel::start(Duration::from_millis(300));
    let h = Hermes::of(Release::V0_20, &["small"], &model);
    let g = Governor::new(&h, "24GiB", "4GiB", &PROFILES[1..]);
    let id = h.create("in the lane", "small@gpu", 0, &[]);
    crash_a_writer_mid_write(&h, Release::V0_20);
    let journal = h.path().join("kanban.db-journal");
    assert!(journal.exists());
    let before = files_in(h.path());
    // The tick cannot read the board, so it releases nothing and says why; the read-only
    // reader leaves the journal for Hermes.
    let out = g.run("tick", &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hot rollback journal"), "{stderr}");
    assert!(stderr.contains("holds"), "{stderr}");
    assert!(files_in(h.path()) == before, "the tick touched the board");
    let (code, report) = doctor(&g);
    assert_eq!(code, Some(1), "{report}");
    let board = check_line(&report, "board");
    assert!(board.starts_with("fail "), "{report}");
    // The fix names the Hermes binary by its absolute path.
    let fix = format!("{} kanban list", h.bin.display());
    assert!(board.contains(&fix), "{report}");
    assert!(files_in(h.path()) == before, "doctor touched the board");
    // Doing what doctor says: Hermes rolls the write back as it opens the board.
    h.run(&["kanban", "list"]);
    assert!(!journal.exists());
    let (code, report) = doctor(&g);
    assert_eq!(code, Some(0), "{report}");
    let r = g.tick();
    assert_eq!(ids(&r, "released"), std::slice::from_ref(&id), "{r}");
    drive_to_done(&h, &g, 20 * GIB, Duration::from_secs(120));
}
