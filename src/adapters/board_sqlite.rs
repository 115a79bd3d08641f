//! [`TaskBoard`] over Hermes's own SQLite file, opened read-only.
//!
//! Hermes 0.19.0 can corrupt its board when another process holds a read-write connection
//! (HERMES.md §8.1), so this adapter opens `file:<path>?mode=ro` only (read-only, URI, no
//! mutex, 2 s busy timeout) and reads in one short read transaction per observation. It never
//! writes; every write goes through the Hermes CLI (`dispatch_cli`).
//!
//! Both of Hermes's journal modes are supported ([`JournalMode`]). Hermes 0.19.0 makes WAL
//! boards; Hermes >= 0.20 makes rollback-journal boards (`journal_mode=delete`) on hosts whose
//! SQLite is older than 3.51.3 (`hermes_state.apply_wal_with_fallback`, its guard against
//! SQLite's WAL-reset bug) or when `database.journal_mode: delete` is set in its config.yaml;
//! it never switches an existing board. In WAL mode a held read transaction would stop
//! Hermes's checkpoints; in rollback mode a reader and the writer exclude each other while
//! either works, so a read waits (the busy timeout) while Hermes commits, and Hermes waits
//! (its own 120 s busy timeout) while we read. Either way a read is one short transaction,
//! ended before this adapter returns: no lock is held between reads, so none is held across a
//! Hermes CLI call. A board still locked after the busy timeout, or left with a hot rollback
//! journal by a Hermes process that died mid-write (which a read-only reader must not roll
//! back), is a transient failure: the tick holds and the next one reads again.
//!
//! A `mode=ro` reader of a WAL board creates `kanban.db-wal` and `kanban.db-shm` when they are
//! absent, and leaves them. [`SqliteBoard::leaving_no_files`] (for `status` and
//! `tick --dry-run`) avoids that where SQLite allows: see [`quiet_read`].
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
    /// SQLite needs a read-write connection to bring the board back to a consistent state
    /// first (a hot rollback journal, WAL recovery); a read-only reader must not do that.
    #[error(
        "board {path}: {detail}; a read-only reader must not repair that, so the governor holds until a Hermes process opens the board again (any `hermes kanban` command does, e.g. `hermes kanban list`)"
    )]
    NeedsHermes {
        /// The board.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
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
    /// The board file could not be read outside SQLite (its header, its lock).
    #[error("reading board {path}: {source}")]
    Io {
        /// The board.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
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
    /// any error and reopened on the next read. Never holds a transaction between reads.
    conn: Option<Connection>,
    /// Read through [`quiet_read`] (a connection per read, no file created beside the board)
    /// instead of `conn`.
    leave_no_files: bool,
}

/// How the board journals its writes, from its file header (bytes 18 and 19: 1 for a rollback
/// journal, 2 for WAL). The header is what every SQLite connection follows; a read-only
/// connection's `PRAGMA journal_mode` only says `delete` for any non-WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalMode {
    /// Write-ahead log (`kanban.db-wal`, `kanban.db-shm`): readers and the writer run side by
    /// side. Hermes 0.19.0, and Hermes >= 0.20 on SQLite >= 3.51.3 by default.
    Wal,
    /// Rollback journal (`kanban.db-journal` while a write runs; Hermes's `delete` mode):
    /// readers and the writer exclude each other for the length of a transaction. Hermes
    /// >= 0.20 on SQLite < 3.51.3, or with `database.journal_mode: delete`.
    Rollback,
}

impl std::fmt::Display for JournalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JournalMode::Wal => "wal",
            JournalMode::Rollback => "delete (rollback journal)",
        })
    }
}

impl JournalMode {
    /// From the first 100 bytes of a database file; `None` when they are not a SQLite header
    /// (an empty or short file, or not SQLite).
    pub fn from_header(header: &[u8]) -> Option<JournalMode> {
        if header.len() < 100 || !header.starts_with(b"SQLite format 3\0") {
            return None;
        }
        match (header[18], header[19]) {
            (2, 2) => Some(JournalMode::Wal),
            (1, 1) => Some(JournalMode::Rollback),
            _ => None,
        }
    }
}

/// The board's journal mode, read from its header without SQLite; `Ok(None)` when the file is
/// not a SQLite database (yet). It opens and closes a descriptor on the board, which drops
/// every POSIX lock this process holds on it: not for use while this process has a SQLite
/// connection on the board (see [`quiet_read`]).
///
/// # Errors
///
/// The file cannot be opened or read.
pub fn read_journal_mode(path: &Path) -> std::io::Result<Option<JournalMode>> {
    use std::io::Read as _;
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)?
        .take(100)
        .read_to_end(&mut header)?;
    Ok(JournalMode::from_header(&header))
}

/// The `-wal` file beside a database.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// A process-associated read lock on the whole board file, taken so that no SQLite
/// connection elsewhere can get the exclusive lock it needs to write the main file of a WAL
/// board without its `-wal` (see [`quiet_read`]). Released when dropped (the descriptor closes).
struct WholeFileReadLock {
    _file: std::fs::File,
}

impl WholeFileReadLock {
    /// Takes the lock, retrying for up to [`BUSY_TIMEOUT`] while another process holds a write
    /// lock (a WAL board's last connection checkpointing on close holds one briefly).
    fn take(path: &Path) -> Result<WholeFileReadLock, BoardError> {
        let file = std::fs::File::open(path).map_err(|e| BoardError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
                Ok(()) => return Ok(WholeFileReadLock { _file: file }),
                Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {
                    if start.elapsed() >= BUSY_TIMEOUT {
                        return Err(BoardError::Locked {
                            path: path.to_path_buf(),
                            timeout: BUSY_TIMEOUT,
                        });
                    }
                    // As SQLite's own busy handler: short sleeps, growing, until the timeout.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(BoardError::Io {
                        path: path.to_path_buf(),
                        source: e.into(),
                    });
                }
            }
        }
    }
}

/// `file:` URI of `path` opened read-only and immutable: SQLite takes no lock and opens no
/// journal, WAL or shared-memory file.
fn immutable_uri(path: &Path) -> String {
    format!("{}&immutable=1", readonly_uri(path))
}

/// Opens `uri` read-only with the busy timeout.
fn open_readonly(path: &Path, uri: &str) -> Result<Connection, BoardError> {
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, e))?;
    Ok(conn)
}

/// Runs `read` on the board in one read transaction and creates no file beside it, where
/// SQLite allows that; for commands that must leave the disk as they found it (`status`,
/// `tick --dry-run`, `doctor`).
///
/// - A rollback-journal board: a `mode=ro` connection creates nothing (it only looks for a
///   hot journal).
/// - A WAL board whose `-wal` exists (a Hermes process has it open, or one left it): a
///   `mode=ro` connection uses the files that are there.
/// - A WAL board without `-wal`: its last connection checkpointed everything into the main
///   file and removed the WAL on close, and a `mode=ro` connection would create `-wal` and
///   `-shm` and leave them. It is read with `immutable=1` instead (no lock, no side file),
///   which is safe only while nobody writes the main file. That is made provable: a read lock
///   on the whole file is held from before `-wal` is seen absent until `-wal` is seen absent
///   again after the read. Every SQLite connection that opens a WAL database creates its
///   `-wal`, and the only ways to remove it again or to write the main file without it (the
///   last connection's checkpoint on close, a switch of journal mode, a rollback-mode commit)
///   need an exclusive lock, which the read lock refuses. So `-wal` still absent means the
///   main file did not change during the read. When it appeared, the read is dropped and done
///   again through `mode=ro`, on the files that now exist.
///
/// The read lock is `fcntl`'s, owned by the process: closing any descriptor of this process
/// on the board drops it, and it would drop a lock SQLite holds on the board for another
/// connection of this process. So this must not run while this process has the board open
/// elsewhere; [`SqliteBoard::leaving_no_files`] keeps no connection between reads.
///
/// # Errors
///
/// As [`SqliteBoard::read_board`]: missing, corrupt, locked past the busy timeout, needing a
/// Hermes process to repair it, or not a Hermes board.
pub fn quiet_read<T>(
    path: &Path,
    read: impl Fn(&Connection) -> rusqlite::Result<T>,
) -> Result<T, BoardError> {
    if !path.is_file() {
        return Err(BoardError::Missing {
            path: path.to_path_buf(),
        });
    }
    let mode = read_journal_mode(path).map_err(|source| BoardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if mode == Some(JournalMode::Wal) {
        let lock = WholeFileReadLock::take(path)?;
        let wal = wal_path(path);
        if !wal.exists() {
            let conn = open_readonly(path, &immutable_uri(path))?;
            let result = read(&conn).map_err(|e| classify(path, e));
            let untouched = !wal.exists();
            // SQLite closes its descriptor on the board here, which also drops the lock.
            drop(conn);
            drop(lock);
            if untouched {
                return result;
            }
            tracing::debug!(board = %path.display(), "A Hermes process opened the board during an immutable read; reading again through mode=ro.");
        }
    }
    let conn = open_readonly(path, &readonly_uri(path))?;
    read(&conn).map_err(|e| classify(path, e))
}

/// Names a SQLite failure for the operator.
fn classify(path: &Path, source: rusqlite::Error) -> BoardError {
    use rusqlite::ffi;
    let path = path.to_path_buf();
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
            ErrorCode::ReadOnly if e.extended_code == ffi::SQLITE_READONLY_ROLLBACK => {
                let mut journal = path.as_os_str().to_owned();
                journal.push("-journal");
                let detail = format!(
                    "a Hermes process died in the middle of a write and left a hot rollback journal ({})",
                    Path::new(&journal).display()
                );
                return BoardError::NeedsHermes { path, detail };
            }
            ErrorCode::ReadOnly
                if e.extended_code == ffi::SQLITE_READONLY_RECOVERY
                    || e.extended_code == ffi::SQLITE_READONLY_CANTINIT =>
            {
                let detail =
                    format!("its WAL index needs recovery, which needs write access ({detail})");
                return BoardError::NeedsHermes { path, detail };
            }
            ErrorCode::CannotOpen if !path.exists() => {
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

/// Reads the open and the tracked tasks in one deferred read transaction: every statement
/// sees the same snapshot, and it ends (COMMIT) before this returns, so no lock or snapshot
/// outlives the read (in WAL mode Hermes's checkpoints go on; in rollback mode Hermes's
/// writer waits only for this read).
fn read_tasks(conn: &Connection, tracked: &[TaskId]) -> rusqlite::Result<BoardSnapshot> {
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
        let mut stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))?;
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
    // Hermes's order (priority DESC, created_at ASC, rowid ASC), sorted here rather than by
    // SQLite: on a 100,000-task board that halves the read (BENCHMARKS.md).
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
}

impl SqliteBoard {
    /// The board at `path` (`<root>/kanban.db` or `<root>/kanban/boards/<slug>/kanban.db`).
    /// Nothing is opened until the first read; one connection is then kept between reads.
    pub fn new(path: impl Into<PathBuf>) -> SqliteBoard {
        SqliteBoard {
            path: path.into(),
            conn: None,
            leave_no_files: false,
        }
    }

    /// The board at `path`, read so that no file is created beside it ([`quiet_read`]): a
    /// connection per read, none kept. For `status` and `tick --dry-run`; `PRAGMA
    /// data_version` means nothing across connections, so not for change detection.
    pub fn leaving_no_files(path: impl Into<PathBuf>) -> SqliteBoard {
        SqliteBoard {
            leave_no_files: true,
            ..SqliteBoard::new(path)
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
        classify(&self.path, source)
    }

    /// The board exists and Hermes has not quarantined a copy of it.
    fn check_present(&mut self) -> Result<(), BoardError> {
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
        Ok(())
    }

    fn connection(&mut self) -> Result<&Connection, BoardError> {
        self.check_present()?;
        if self.conn.is_none() {
            self.conn = Some(open_readonly(&self.path, &readonly_uri(&self.path))?);
        }
        // Just set above when it was None.
        self.conn.as_ref().ok_or_else(|| BoardError::Missing {
            path: self.path.clone(),
        })
    }

    fn read_snapshot(&mut self, tracked: &[TaskId]) -> Result<BoardSnapshot, BoardError> {
        if self.leave_no_files {
            self.check_present()?;
            return quiet_read(&self.path, |conn| read_tasks(conn, tracked));
        }
        let conn = self.connection()?;
        read_tasks(conn, tracked).map_err(|e| {
            self.conn = None;
            self.classify(e)
        })
    }
}

/// A task Hermes holds as `blocked`, with the reason of its latest block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockedTask {
    /// Task id.
    pub id: String,
    /// Its assignee.
    pub assignee: Option<String>,
    /// Why, as Hermes recorded it (`task_events` `blocked`/`gave_up` payload's `reason`),
    /// when it did.
    pub reason: Option<String>,
}

fn read_blocked(conn: &Connection) -> rusqlite::Result<Vec<BlockedTask>> {
    let mut stmt = conn.prepare(
        "SELECT t.id, t.assignee,
                (SELECT e.payload FROM task_events e
                  WHERE e.task_id = t.id AND e.kind IN ('blocked', 'gave_up')
                  ORDER BY e.id DESC LIMIT 1)
           FROM tasks t WHERE t.status = 'blocked'
          ORDER BY t.priority DESC, t.created_at, t.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let payload: Option<String> = r.get(2)?;
        Ok(BlockedTask {
            id: r.get(0)?,
            assignee: r.get(1)?,
            reason: payload.and_then(|p| {
                serde_json::from_str::<serde_json::Value>(&p)
                    .ok()?
                    .get("reason")?
                    .as_str()
                    .map(str::to_owned)
            }),
        })
    })?;
    rows.collect()
}

impl SqliteBoard {
    /// The tasks Hermes holds as `blocked` (its workers kept failing, or a worker or person
    /// blocked them), with the reason of each one's latest block, for `status`.
    ///
    /// # Errors
    ///
    /// As a board read.
    pub fn blocked(&mut self) -> Result<Vec<BlockedTask>, BoardError> {
        if self.leave_no_files {
            self.check_present()?;
            return quiet_read(&self.path, read_blocked);
        }
        let conn = self.connection()?;
        read_blocked(conn).map_err(|e| {
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
        if self.leave_no_files {
            return Ok(self.read_snapshot(&[])?.data_version);
        }
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
    use std::collections::BTreeMap;

    /// Hermes 0.19.0's schema (HERMES.md §2.1).
    pub(crate) const SCHEMA: &str = include_str!("../../tests/fixtures/hermes_schema.sql");

    /// A board built by the test (read-write: the test plays Hermes).
    pub(crate) fn make_board(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("kanban.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        (path, conn)
    }

    /// A rollback-journal board (Hermes >= 0.20 on SQLite < 3.51.3), built by the test.
    pub(crate) fn make_rollback_board(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("kanban.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&SCHEMA.replace(
            "PRAGMA journal_mode = WAL;",
            "PRAGMA journal_mode = DELETE;",
        ))
        .unwrap();
        (path, conn)
    }

    /// A rollback-journal board in `dir` with a hot journal, as a Hermes process that died in
    /// the middle of a commit leaves it: a write transaction is started elsewhere and the
    /// board and its journal are copied while it is open (the copy has no lock holder). The
    /// writer runs `synchronous = OFF` so the journal carries its header at once; with FULL,
    /// as Hermes runs, it does from the commit's first sync (or a cache spill) on.
    pub(crate) fn make_hot_journal_board(dir: &Path) -> PathBuf {
        let live = tempfile::tempdir().unwrap();
        let (src, conn) = make_rollback_board(live.path());
        add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        conn.execute_batch(
            "PRAGMA synchronous = OFF; BEGIN IMMEDIATE; UPDATE tasks SET priority = 7;",
        )
        .unwrap();
        let journal = live.path().join("kanban.db-journal");
        assert!(journal.exists(), "the write left no journal");
        let path = dir.join("kanban.db");
        std::fs::copy(&src, &path).unwrap();
        std::fs::copy(&journal, dir.join("kanban.db-journal")).unwrap();
        path
    }

    /// The files in `dir` with their bytes.
    pub(crate) fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect()
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

    #[test]
    fn a_rollback_journal_board_reads_and_holds_no_lock_between_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_rollback_board(dir.path());
        add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        assert_eq!(
            read_journal_mode(&path).unwrap(),
            Some(JournalMode::Rollback)
        );
        let mut board = SqliteBoard::new(&path);
        assert_eq!(board.read_board(&[]).unwrap().tasks.len(), 1);
        let v = board.read_data_version().unwrap();
        // With the reader's connection still open, a writer that will not wait gets the
        // exclusive lock at once: the reader holds nothing between reads (in rollback mode a
        // lock held across a Hermes call would stall that call's writes).
        conn.busy_timeout(Duration::ZERO).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE; UPDATE tasks SET priority = 3; COMMIT;")
            .unwrap();
        assert_eq!(board.read_board(&[]).unwrap().tasks[0].priority, 3);
        assert_ne!(board.read_data_version().unwrap(), v);
        assert!(!dir.path().join("kanban.db-journal").exists());
    }

    #[test]
    fn a_hot_journal_is_a_hold_until_hermes_rolls_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_hot_journal_board(dir.path());
        let before = files_in(dir.path());
        for mut board in [
            SqliteBoard::new(&path),
            SqliteBoard::leaving_no_files(&path),
        ] {
            let err = board.read_board(&[]).unwrap_err();
            let err = err.downcast_ref::<BoardError>().unwrap();
            assert!(matches!(err, BoardError::NeedsHermes { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("kanban.db-journal"), "{text}");
            assert!(text.contains("holds"), "{text}");
            assert!(text.contains("hermes kanban list"), "{text}");
            assert!(!err.is_usage());
        }
        assert_eq!(
            files_in(dir.path()),
            before,
            "the reader must not roll back"
        );
        // Any read-write connection (Hermes's next command) rolls the journal back.
        Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get::<_, i64>(0))
            .unwrap();
        let snap = SqliteBoard::new(&path).read_board(&[]).unwrap();
        assert_eq!(snap.tasks[0].priority, 0, "the uncommitted write is gone");
    }

    #[test]
    fn reading_an_idle_wal_board_leaving_no_files_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_path, conn) = make_board(dir.path());
            add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        }
        let path = dir.path().join("kanban.db");
        assert_eq!(read_journal_mode(&path).unwrap(), Some(JournalMode::Wal));
        let before = files_in(dir.path());
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            ["kanban.db"],
            "the last connection's close removes -wal and -shm"
        );
        let mut board = SqliteBoard::leaving_no_files(&path);
        assert_eq!(board.read_board(&[]).unwrap().tasks.len(), 1);
        board.read_data_version().unwrap();
        assert_eq!(files_in(dir.path()), before);
        // The plain reader, by contrast, leaves -wal and -shm behind: that is what this avoids.
        SqliteBoard::new(&path).read_board(&[]).unwrap();
        assert!(dir.path().join("kanban.db-wal").exists());
    }

    #[test]
    fn a_write_during_an_immutable_read_makes_it_read_again_through_mode_ro() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_path, conn) = make_board(dir.path());
            add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        }
        let path = dir.path().join("kanban.db");
        // A writer that opens the board while the first (immutable) read runs, as a Hermes
        // command would; it stays open, so its committed task is only in the WAL. (In this
        // process the read lock does not stop it: POSIX locks do not conflict within one.)
        let writer = std::cell::RefCell::new(None::<Connection>);
        let reads = std::cell::Cell::new(0);
        let snap = quiet_read(&path, |conn| {
            reads.set(reads.get() + 1);
            if writer.borrow().is_none() {
                let w = Connection::open(&path).unwrap();
                w.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
                add(&w, "t_2", Some("coder@gpu"), "ready", 0, 2);
                *writer.borrow_mut() = Some(w);
            }
            read_tasks(conn, &[])
        })
        .unwrap();
        assert_eq!(
            reads.get(),
            2,
            "the immutable read was dropped and done again"
        );
        let ids: Vec<&str> = snap.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t_1", "t_2"]);
    }

    #[test]
    fn a_wal_board_with_a_live_wal_is_read_through_it_not_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = make_board(dir.path());
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        add(&conn, "t_1", Some("coder@gpu"), "ready", 0, 1);
        // Committed into the WAL only: the main file does not have t_1 yet, so a read that
        // ignored the WAL (immutable) would miss it.
        assert!(dir.path().join("kanban.db-wal").exists());
        let before = files_in(dir.path());
        let snap = SqliteBoard::leaving_no_files(&path)
            .read_board(&[])
            .unwrap();
        assert_eq!(snap.tasks.len(), 1);
        assert_eq!(
            files_in(dir.path()).keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_journal_mode_comes_from_the_header() {
        let mut header = vec![0u8; 100];
        header[..16].copy_from_slice(b"SQLite format 3\0");
        header[18] = 2;
        header[19] = 2;
        assert_eq!(JournalMode::from_header(&header), Some(JournalMode::Wal));
        header[18] = 1;
        header[19] = 1;
        assert_eq!(
            JournalMode::from_header(&header),
            Some(JournalMode::Rollback)
        );
        assert_eq!(JournalMode::from_header(&header[..99]), None);
        assert_eq!(JournalMode::from_header(&[0x42; 100]), None);
    }
}
