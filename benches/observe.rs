//! Benchmark: one board observation on a 100,000-task Hermes board (issue 5's target: ≤ 20 ms
//! on CI's kind of machine). Run with `cargo bench --bench observe`.
//!
//! The board is built with Hermes 0.19.0's schema (`tests/fixtures/hermes_schema.sql`) in a
//! temporary directory, in WAL mode as Hermes leaves it, and read through the real adapter
//! ([`SqliteBoard`], `mode=ro`, one read transaction). Two shapes: a long-lived board (100,000
//! tasks of which 10,000 are open: waiting in lanes, waiting on parents, running) and a
//! pathological one where all 100,000 are open.

use kanban_governor::adapters::board_sqlite::SqliteBoard;
use kanban_governor::ports::TaskBoard;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const SCHEMA: &str = include_str!("../tests/fixtures/hermes_schema.sql");

fn build(path: &Path, total: u32, open: u32) {
    let mut conn = rusqlite::Connection::open(path).expect("create the bench board");
    conn.execute_batch(SCHEMA).expect("schema");
    let tx = conn.transaction().expect("tx");
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO tasks(id, title, assignee, status, priority, created_at, started_at) \
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .expect("prepare");
        for i in 0..total {
            let (status, assignee) = if i >= open {
                ("done", format!("p{}", i % 8))
            } else if i % 50 == 0 {
                ("running", format!("p{}", i % 8))
            } else if i % 10 == 0 {
                ("todo", format!("p{}@gpu", i % 8))
            } else {
                ("ready", format!("p{}@gpu", i % 8))
            };
            let started = (status == "running").then_some(1_000_000 + i64::from(i));
            ins.execute(rusqlite::params![
                format!("t_{i:08x}"),
                assignee,
                status,
                i64::from(i % 3),
                1_000_000 + i64::from(i),
                started
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn bench(name: &str, total: u32, open: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kanban.db");
    build(&path, total, open);
    let mut board = SqliteBoard::new(&path);
    let mut times = Vec::new();
    for i in 0..110 {
        let t = Instant::now();
        let snap = board.read_board(&[]).expect("read the bench board");
        let dt = t.elapsed();
        black_box(&snap);
        assert_eq!(snap.tasks.len(), open as usize);
        if i >= 10 {
            times.push(dt.as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name}: {total} tasks, {open} open: min {:.2} ms, median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} runs)",
        q(0.0),
        q(0.5),
        q(0.99),
        q(1.0),
        times.len()
    );
}

fn main() {
    bench("long-lived board", 100_000, 10_000);
    bench("everything open", 100_000, 100_000);
}
