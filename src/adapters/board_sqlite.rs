//! [`TaskBoard`] over Hermes's own SQLite file, opened read-only.
//!
//! Hermes 0.19.0 can corrupt its board when another process holds a read-write connection
//! (HERMES.md §8.1), so this adapter opens `file:<path>?mode=ro` only (read-only, URI, no
//! mutex, 2 s busy timeout) and reads in one short read transaction per observation: a held
//! snapshot would stop Hermes's WAL checkpoints. It never writes; every write goes through the
//! Hermes CLI (`dispatch_cli`).
//!
//! Failures are named for the operator: a missing board says how to create it, a corrupt one
//! (SQLite CORRUPT/NOTADB, or the `kanban.db.corrupt.*.bak` copies Hermes leaves when it
//! quarantines one) says so; the tick then holds (nothing is released while blind).

use crate::governor::{Millis, TaskId};
use crate::ports::{BoardSnapshot, BoardTask, PortError, TaskBoard, TaskStatus};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ffi::ErrorCode};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// How long a read waits for Hermes's write lock before giving up (HERMES.md §2.3: Hermes's
/// own writes are short `BEGIN IMMEDIATE` transactions).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The columns read, in the order [`row_to_task`] expects.
const COLUMNS: &str = "id, assignee, status, COALESCE(priority, 0), created_at, started_at, \
     worker_pid, claim_lock, rowid";

/// Errors reading the board.
#[derive(Debug, Error)]
pub enum BoardError {
    /// The board file does not exist.
    #[error(
        "board {path} does not exist; create it with `hermes kanban init` (or `hermes kanban boards create <slug>`), or fix hermes.home / hermes.board"
    )]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// SQLite says the file is damaged or not a database.
    #[error(
        "board {path} is corrupt ({detail}); the governor holds; check it with `hermes kanban list` and restore or re-create the board"
    )]
    Corrupt {
        /// The board.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// Hermes quarantined a corrupt copy of this board.
    #[error(
        "board {path}: Hermes quarantined a corrupt copy ({files}); the governor holds; check the board with `hermes kanban list`, then move the .bak files away"
    )]
    Quarantined {
        /// The board.
        path: PathBuf,
        /// The quarantine files found.
        files: String,
    },
    /// The board stayed locked past the busy timeout.
    #[error("board {path} stayed locked for {timeout:?}; the governor holds and retries next tick")]
    Locked {
        /// The board.
        path: PathBuf,
        /// The busy timeout.
        timeout: Duration,
    },
    /// The file is a SQLite database but not a Hermes kanban board.
    #[error(
        "{path} is not a Hermes kanban board ({detail}); point hermes.home / hermes.board at the board `hermes kanban` uses"
    )]
    NotHermes {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// Any other SQLite failure.
    #[error("reading board {path}: {source}")]
    Sqlite {
        /// The board.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
}

impl BoardError {
    /// Whether the user can fix this in the config (exit 2) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BoardError::Missing { .. } | BoardError::NotHermes { .. }
        )
    }
}

/// The Hermes board, read through SQLite `mode=ro`.
#[derive(Debug)]
pub struct SqliteBoard {
    path: PathBuf,
    /// Kept open between observations so `PRAGMA data_version` is meaningful; dropped after
    /// any error and reopened on the next read.
    conn: Option<Connection>,
}

/// `file:` URI of `path` with `?mode=ro`; `?`, `#` and `%` in the path are percent-encoded
/// (SQLite would read them as the query, the fragment or an escape).
pub fn readonly_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// A task and its rowid (Hermes's tie-break among equal priority and `created_at`).
fn row_to_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<(BoardTask, i64)> {
    let secs = |v: Option<i64>| v.map(|s| Millis(u64::try_from(s).unwrap_or(0) * 1000));
    let status: String = row.get(2)?;
    let task = BoardTask {
        id: TaskId::from(row.get::<_, String>(0)?),
        assignee: row.get::<_, Option<String>>(1)?.filter(|a| !a.is_empty()),
        status: TaskStatus::parse(&status),
        priority: row.get(3)?,
        created_at: secs(row.get(4)?).unwrap_or_default(),
        started_at: secs(row.get(5)?),
        worker_pid: row
            .get::<_, Option<i64>>(6)?
            .and_then(|p| u32::try_from(p).ok()),
        claim_lock: row.get(7)?,
    };
    Ok((task, row.get(8)?))
}

/// Hermes stores `created_at` in seconds and orders ties by insertion (rowid). Spread tasks
/// created in the same second over its milliseconds in rowid order, so sorting by
/// `created_at` alone gives Hermes's order.
fn spread_ties(tasks: &mut [(BoardTask, i64)]) {
    let mut by_created: Vec<usize> = (0..tasks.len()).collect();
    by_created.sort_by_key(|&i| (tasks[i].0.created_at, tasks[i].1));
    let mut prev = None;
    let mut rank = 0u64;
    for i in by_created {
        let second = tasks[i].0.created_at;
        rank = if prev == Some(second) { rank + 1 } else { 0 };
        prev = Some(second);
        tasks[i].0.created_at = Millis(second.get() + rank.min(999));
    }
}

impl SqliteBoard {
    /// The board at `path` (`<root>/kanban.db` or `<root>/kanban/boards/<slug>/kanban.db`).
    /// Nothing is opened until the first read.
    pub fn new(path: impl Into<PathBuf>) -> SqliteBoard {
        SqliteBoard {
            path: path.into(),
            conn: None,
        }
    }

    /// The board's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `kanban.db.corrupt.*.bak` files next to the board.
    fn quarantine_files(&self) -> Vec<String> {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Vec::new();
        };
        let prefix = format!("{name}.corrupt.");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".bak"))
            .collect();
        found.sort();
        found
    }

    fn classify(&self, source: rusqlite::Error) -> BoardError {
        let path = self.path.clone();
        if let rusqlite::Error::SqliteFailure(e, msg) = &source {
            let detail = msg.clone().unwrap_or_else(|| e.to_string());
            match e.code {
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    return BoardError::Corrupt { path, detail };
                }
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return BoardError::Locked {
                        path,
                        timeout: BUSY_TIMEOUT,
                    };
                }
                ErrorCode::CannotOpen if !self.path.exists() => {
                    return BoardError::Missing { path };
                }
                _ if detail.contains("no such table") || detail.contains("no such column") => {
                    return BoardError::NotHermes { path, detail };
                }
                _ => {}
            }
        }
        BoardError::Sqlite { path, source }
    }

    fn connection(&mut self) -> Result<&Connection, BoardError> {
        if !self.path.is_file() {
            self.conn = None;
            return Err(BoardError::Missing {
                path: self.path.clone(),
            });
        }
        let files = self.quarantine_files();
        if !files.is_empty() {
            self.conn = None;
            return Err(BoardError::Quarantined {
                path: self.path.clone(),
                files: files.join(", "),
            });
        }
        if self.conn.is_none() {
            let conn = Connection::open_with_flags(
                readonly_uri(&self.path),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| self.classify(e))?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| self.classify(e))?;
            self.conn = Some(conn);
        }
        // Just set above when it was None.
        self.conn.as_ref().ok_or_else(|| BoardError::Missing {
            path: self.path.clone(),
        })
    }

    fn read_snapshot(&mut self, tracked: &[TaskId]) -> Result<BoardSnapshot, BoardError> {
        let conn = self.connection()?;
        let result = (|| -> rusqlite::Result<BoardSnapshot> {
            // One deferred read transaction: every statement sees the same snapshot, and it
            // ends (COMMIT) before we return so Hermes's checkpoints are not held up.
            let tx = conn.unchecked_transaction()?;
            let data_version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            let mut tasks: Vec<(BoardTask, i64)> = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tasks \
                     WHERE status IN ('todo', 'ready', 'running', 'review')"
                ))?;
                stmt.query_map([], row_to_task)?
                    .collect::<rusqlite::Result<_>>()?
            };
            {
                let mut stmt =
                    tx.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))?;
                for id in tracked {
                    if tasks.iter().any(|(t, _)| &t.id == id) {
                        continue;
                    }
                    if let Some(t) = stmt.query_row([&id.0], row_to_task).optional()? {
                        tasks.push(t);
                    }
                }
            }
            tx.commit()?;
            // Hermes's order (priority DESC, created_at ASC, rowid ASC), sorted here rather
            // than by SQLite: on a 100,000-task board that halves the read (BENCHMARKS.md).
            tasks.sort_unstable_by(|(a, ra), (b, rb)| {
                b.priority
                    .cmp(&a.priority)
                    .then(a.created_at.cmp(&b.created_at))
                    .then(ra.cmp(rb))
            });
            spread_ties(&mut tasks);
            Ok(BoardSnapshot {
                tasks: tasks.into_iter().map(|(t, _)| t).collect(),
                data_version: u64::try_from(data_version).unwrap_or(0),
            })
        })();
        result.map_err(|e| {
            self.conn = None;
            self.classify(e)
        })
    }
}

impl TaskBoard for SqliteBoard {
    fn read_board(&mut self, tracked: &[TaskId]) -> Result<BoardSnapshot, PortError> {
        Ok(self.read_snapshot(tracked)?)
    }

    fn read_data_version(&mut self) -> Result<u64, PortError> {
        let conn = self.connection()?;
        let v: rusqlite::Result<i64> = conn.query_row("PRAGMA data_version", [], |r| r.get(0));
        match v {
            Ok(v) => Ok(u64::try_from(v).unwrap_or(0)),
            Err(e) => {
                self.conn = None;
                Err(self.classify(e).into())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Hermes 0.19.0's schema (HERMES.md §2.1).
    pub(crate) const SCHEMA: &str = include_str!("../../tests/fixtures/hermes_schema.sql");

    /// A board built by the test (read-write: the test plays Hermes).
    pub(crate) fn make_board(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("kanban.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        (path, conn)
    }

    pub(crate) fn add(
        conn: &Connection,
        id: &str,
        assignee: Option<&str>,
        status: &str,
        priority: i64,
        created_at: i64,
    ) {
        conn.execute(
            "INSERT INTO tasks(id, title, assignee, status, priority, created_at) \
             VALUES (?1, ?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![id, assignee, status, priority, created_at],
        )
        .unwrap();
    }

    #[test]
    fn reads_open_tasks_in_hermes_order_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_board(dir.path());
        add(&conn, "t_low", Some("coder@gpu"), "ready", 0, 100);
        add(&conn, "t_high", Some("coder@gpu"), "ready", 5, 200);
        add(&conn, "t_old", Some("coder@gpu"), "todo", 0, 50);
        add(&conn, "t_done", Some("coder"), "done", 9, 10);
        add(&conn, "t_run", Some("coder"), "running", 0, 10);
        conn.execute(
            "UPDATE tasks SET started_at = 20, worker_pid = 4242, claim_lock = 'vm:1' WHERE id = 't_run'",
            [],
        )
        .unwrap();
        let snap = SqliteBoard::new(&path).read_board(&[]).unwrap();
        let ids: Vec<&str> = snap.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t_high", "t_run", "t_old", "t_low"]);
        let run = snap.task(&TaskId::from("t_run")).unwrap();
        assert_eq!(run.status, TaskStatus::Running);
        assert_eq!(run.started_at, Some(Millis(20_000)));
        assert_eq!(run.worker_pid, Some(4242));
        assert_eq!(run.claim_lock.as_deref(), Some("vm:1"));
        assert_eq!(
            snap.task(&TaskId::from("t_old")).unwrap().status,
            TaskStatus::Todo
        );
    }

    #[test]
    fn tasks_created_in_the_same_second_keep_their_insertion_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_board(dir.path());
        add(&conn, "t_zz", Some("coder@gpu"), "ready", 0, 100);
        add(&conn, "t_aa", Some("coder@gpu"), "ready", 0, 100);
        add(&conn, "t_mm", Some("coder@gpu"), "ready", 0, 99);
        let snap = SqliteBoard::new(&path).read_board(&[]).unwrap();
        let got: Vec<(&str, u64)> = snap
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.created_at.get()))
            .collect();
        assert_eq!(
            got,
            [("t_mm", 99_000), ("t_zz", 100_000), ("t_aa", 100_001)]
        );
    }

    #[test]
    fn tracked_ids_are_read_in_any_status() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_board(dir.path());
        add(&conn, "t_done", Some("coder"), "done", 0, 10);
        add(&conn, "t_other", Some("coder"), "done", 0, 10);
        let snap = SqliteBoard::new(&path)
            .read_board(&[TaskId::from("t_done"), TaskId::from("t_gone")])
            .unwrap();
        assert_eq!(snap.tasks.len(), 1);
        assert_eq!(snap.tasks[0].status, TaskStatus::Done);
    }

    #[test]
    fn data_version_changes_when_another_connection_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_board(dir.path());
        let mut board = SqliteBoard::new(&path);
        let v1 = board.read_data_version().unwrap();
        assert_eq!(board.read_data_version().unwrap(), v1);
        add(&conn, "t_1", None, "ready", 0, 1);
        assert_ne!(board.read_data_version().unwrap(), v1);
    }

    #[test]
    fn the_reader_cannot_write_the_board() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _conn) = make_board(dir.path());
        let mut board = SqliteBoard::new(&path);
        board.read_board(&[]).unwrap();
        let err = board
            .conn
            .as_ref()
            .unwrap()
            .execute("DELETE FROM tasks", [])
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }

    #[test]
    fn a_path_with_uri_characters_is_encoded() {
        assert_eq!(
            readonly_uri(Path::new("/a b/%x?y#z/kanban.db")),
            "file:/a b/%25x%3fy%23z/kanban.db?mode=ro"
        );
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("we?ird#dir%");
        std::fs::create_dir(&odd).unwrap();
        let (path, conn) = make_board(&odd);
        add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        assert_eq!(
            SqliteBoard::new(&path).read_board(&[]).unwrap().tasks.len(),
            1
        );
    }

    #[test]
    fn a_missing_board_names_the_path_and_hermes_kanban_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kanban.db");
        let err = SqliteBoard::new(&path).read_board(&[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("hermes kanban init"), "{text}");
        assert!(err.downcast_ref::<BoardError>().unwrap().is_usage());
        assert!(!path.exists(), "the reader must not create the board");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kanban.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SqliteBoard::new(&path).read_board(&[]).unwrap_err();
        let err = err.downcast_ref::<BoardError>().unwrap();
        assert!(matches!(err, BoardError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("holds"), "{err}");
    }

    #[test]
    fn quarantine_files_next_to_the_board_make_it_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _conn) = make_board(dir.path());
        std::fs::write(dir.path().join("kanban.db.corrupt.abc123.bak"), "x").unwrap();
        let err = SqliteBoard::new(&path).read_board(&[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("kanban.db.corrupt.abc123.bak"), "{text}");
    }

    #[test]
    fn a_database_without_the_tasks_table_is_not_a_hermes_board() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kanban.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE other(x)")
            .unwrap();
        let err = SqliteBoard::new(&path).read_board(&[]).unwrap_err();
        let err = err.downcast_ref::<BoardError>().unwrap();
        assert!(matches!(err, BoardError::NotHermes { .. }), "{err}");
    }

    #[test]
    fn a_write_locked_rollback_board_times_out_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kanban.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(&SCHEMA.replace("PRAGMA journal_mode = WAL;", ""))
            .unwrap();
        // An exclusive lock on a rollback-journal database blocks readers too.
        writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
        writer
            .execute(
                "INSERT INTO tasks(id, title, status, created_at) VALUES ('a','a','ready',1)",
                [],
            )
            .unwrap();
        let err = SqliteBoard::new(&path).read_board(&[]).unwrap_err();
        let err = err.downcast_ref::<BoardError>().unwrap();
        assert!(matches!(err, BoardError::Locked { .. }), "{err}");
    }
}
