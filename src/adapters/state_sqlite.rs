//! [`StateStore`] in SQLite under `state_dir` (`state.sqlite3`), shared by `run` and `tick`,
//! so cron mode keeps what the daemon learned and the other way round.
//!
//! - **Schema**: versioned with `PRAGMA user_version`; [`MIGRATIONS`] run in order, each in
//!   one transaction. A file written by a newer kanban-governor is refused, not guessed at.
//! - **The state** (in-flight releases, first-seen times, baseline, counters, the latency
//!   limit, footprint statistics) is one row of JSON, replaced atomically with each save: a
//!   crash leaves the old or the new state, never half of one. A tick's releases are saved
//!   ahead ([`StateStore::save_before_releasing`]): state, settled outcomes and release rows
//!   in one transaction before the first Hermes call, so a kill mid-call loses none.
//! - **The journal** ([`StateStore::journal`]): releases and their outcomes (spawned, leaked,
//!   reclaimed, blocked, done, gone, withdrawn, failed), decisions with reasons (a held
//!   task's reason is written when it changes, not every tick), and the footprint samples
//!   learning used. Bounded: rows older than [`RETENTION`] and beyond [`MAX_ROWS`] per table
//!   are pruned (at most hourly).
//! - **Durability**: WAL, `synchronous = FULL`, a 5 s busy timeout (`tick` and `run` never
//!   write at once: both hold `tick.lock`; `status` only reads).
//! - **Upgrade**: a `state.json` left by an earlier version is imported on first open and
//!   renamed `state.json.imported`.
//! - **Files**: the directory and files go through [`state_dir`]: created 0700/0600 whatever
//!   the umask, never opened through a symlink (the database is created 0600 before SQLite
//!   opens it, and SQLite gives its `-wal` and `-shm` the database's mode).
//! - **Readers write nothing** ([`SqliteState::load_read_only`], for `status`, `tick
//!   --dry-run` and `doctor`): with no `-wal` beside it the file is read `immutable=1` (no
//!   locks, no `-wal`/`-shm` created; a writer that started meanwhile is noticed and the read
//!   repeated), with both `-wal` and `-shm` present (a governor has it open) `mode=ro`, which
//!   creates nothing but may update SQLite's read marks in the `-shm`.

use crate::adapters::state_dir::{self, StateDirError};
use crate::adapters::state_file::{JsonStateFile, STATE_FILE_NAME};
use crate::governor::{Millis, TaskId};
use crate::ports::{PortError, StateStore};
use crate::record::report::{ReleaseRecord, TickReport};
use crate::record::state::{GovernorState, STATE_VERSION};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The database's name inside `state_dir`.
pub const STATE_DB_NAME: &str = "state.sqlite3";
/// Journal rows older than this are pruned.
pub const RETENTION: Millis = Millis::secs(30 * 24 * 3600);
/// At most this many rows are kept per journal table (the newest).
pub const MAX_ROWS: i64 = 200_000;
/// How often pruning runs.
const PRUNE_EVERY: Millis = Millis::secs(3600);
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one step per version: `MIGRATIONS[i]` takes `user_version` i to i + 1.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE governor_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        saved_at_ms INTEGER NOT NULL,
        json TEXT NOT NULL
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        task TEXT NOT NULL,
        profile TEXT NOT NULL,
        released_at_ms INTEGER NOT NULL,
        outcome TEXT,
        outcome_at_ms INTEGER
    );
    CREATE INDEX releases_task ON releases (task);
    CREATE INDEX releases_at ON releases (released_at_ms);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        task TEXT NOT NULL,
        profile TEXT,
        verdict TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX decisions_at ON decisions (at_ms);
    CREATE INDEX decisions_task ON decisions (task, id);
    CREATE TABLE footprint_samples (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        profile TEXT NOT NULL,
        task TEXT NOT NULL,
        peak_tokens INTEGER NOT NULL
    );
    CREATE INDEX footprint_samples_at ON footprint_samples (at_ms);
"];

/// The journal tables and their time column (for pruning).
const JOURNAL: &[(&str, &str)] = &[
    ("releases", "released_at_ms"),
    ("decisions", "at_ms"),
    ("footprint_samples", "at_ms"),
];

/// Errors of the state database.
#[derive(Debug, Error)]
pub enum StateDbError {
    /// SQLite failed.
    #[error(
        "state database {path}: {source}; check that dispatch.state_dir is writable by this user and the disk is not full"
    )]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The directory or a file in it is unsafe or could not be created.
    #[error(transparent)]
    Dir(#[from] StateDirError),
    /// A `-wal` without its `-shm`: a writer stopped uncleanly, and reading it needs a
    /// recovery that would write.
    #[error(
        "state database {path} has a -wal file but no -shm (a governor stopped uncleanly); reading it would create files: run `kanban-governor tick` once (it recovers the state), then try again"
    )]
    NeedsRecovery {
        /// The file.
        path: PathBuf,
    },
    /// A writer kept changing it while it was read without locks.
    #[error(
        "state database {path} kept changing while it was read; a governor is writing it: try again"
    )]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// Written by a newer kanban-governor.
    #[error(
        "state database {path} has schema version {found}, newer than this kanban-governor's {known}; run the newer kanban-governor, or move the file away to start afresh (in-flight releases are then forgotten)"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The saved state is not this version's.
    #[error(
        "state database {path}: {detail}; move it away to start with a fresh state (in-flight releases are then forgotten)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl StateDbError {
    /// Whether the user fixes this (exit code 2): an unsafe state directory or file.
    pub fn is_usage(&self) -> bool {
        matches!(self, StateDbError::Dir(e) if e.is_usage())
    }
}

/// `<db><suffix>` (`-wal`, `-shm`, `-journal`).
fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// SQLite's companions of a database file.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A `file:` URI for `path` (absolute) with `query`, escaping what SQLite would read as
/// URI syntax.
fn sqlite_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

/// What tells a writer touched the database between two looks.
fn db_stamp(db: &Path) -> Option<(u64, i64, i64, u64, bool)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(db).ok()?;
    let wal = std::fs::symlink_metadata(sidecar(db, "-wal")).is_ok();
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino(), wal))
}

/// The governor's state and journal in SQLite.
#[derive(Debug)]
pub struct SqliteState {
    path: PathBuf,
    conn: Connection,
    /// The reason last journaled per held task (a reason is written when it changes).
    last_reason: HashMap<TaskId, String>,
    last_prune: Option<Millis>,
    /// The tick (its time) whose settled outcomes and releases were journaled ahead, by
    /// [`StateStore::save_before_releasing`], and those releases.
    ahead: Option<(Millis, Vec<TaskId>)>,
}

impl SqliteState {
    /// Open (create, migrate, import a legacy `state.json`) the state in `state_dir`.
    ///
    /// # Errors
    ///
    /// The directory or file cannot be created or opened, its schema is newer than this
    /// build's, or a legacy `state.json` cannot be read.
    pub fn open(state_dir: &Path) -> Result<SqliteState, StateDbError> {
        let dir = state_dir::prepare(state_dir)?;
        let path = dir.join(STATE_DB_NAME);
        // Created 0600 here, so SQLite (which gives the -wal and -shm the database's mode)
        // never makes a file others can read, whatever the umask.
        drop(state_dir::open_private(&path, true)?);
        for suffix in SIDECARS {
            let p = sidecar(&path, suffix);
            state_dir::refuse_special(&p)?;
            if p.exists() {
                drop(state_dir::open_private(&p, false)?);
            }
        }
        // SQLite opens every file O_NOFOLLOW; NOFOLLOW also refuses a link in the path it is
        // given (canonical here, so only a link planted in the directory trips it).
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|source| StateDbError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut s = SqliteState {
            path,
            conn,
            last_reason: HashMap::new(),
            last_prune: None,
            ahead: None,
        };
        s.conn
            .busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| {
                s.conn
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            })
            .and_then(|_| s.conn.execute_batch("PRAGMA synchronous = FULL"))
            .map_err(|e| s.err(e))?;
        s.migrate()?;
        s.import_legacy(&dir)?;
        Ok(s)
    }

    /// The state saved in `state_dir`, read without writing anything (for `status`): the
    /// database read-only if it exists, else a legacy `state.json`, else the default state.
    ///
    /// # Errors
    ///
    /// As [`StateStore::load`].
    pub fn load_read_only(state_dir: &Path) -> Result<GovernorState, PortError> {
        let path = state_dir.join(STATE_DB_NAME);
        state_dir::refuse_special(&path).map_err(StateDbError::from)?;
        if !path.exists() {
            let legacy = state_dir.join(STATE_FILE_NAME);
            state_dir::refuse_special(&legacy).map_err(StateDbError::from)?;
            return JsonStateFile::in_dir(state_dir).load();
        }
        for suffix in SIDECARS {
            state_dir::refuse_special(&sidecar(&path, suffix)).map_err(StateDbError::from)?;
        }
        let dir = std::fs::canonicalize(state_dir).map_err(|source| StateDirError::Io {
            path: state_dir.to_owned(),
            source,
        });
        let path = dir.map_err(StateDbError::from)?.join(STATE_DB_NAME);
        // Without locks a checkpoint could change pages under the read: a read during which
        // the file changed, or a -wal appeared, is repeated (then read through the -wal).
        for _ in 0..3 {
            let before = db_stamp(&path);
            let wal = before.is_some_and(|s| s.4);
            if !wal {
                let state = Self::read_only_once(&path, "immutable=1")?;
                if db_stamp(&path) == before {
                    return Ok(state);
                }
                continue;
            }
            if !sidecar(&path, "-shm").exists() {
                return Err(StateDbError::NeedsRecovery { path }.into());
            }
            return Self::read_only_once(&path, "mode=ro");
        }
        Err(StateDbError::Changing { path }.into())
    }

    /// One read-only read of the state through a `file:` URI with `query`.
    fn read_only_once(path: &Path, query: &str) -> Result<GovernorState, PortError> {
        let path = path.to_owned();
        let conn = Connection::open_with_flags(
            sqlite_uri(&path, query),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|source| StateDbError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let s = SqliteState {
            path,
            conn,
            last_reason: HashMap::new(),
            last_prune: None,
            ahead: None,
        };
        s.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| s.err(e))?;
        let found = s.user_version()?;
        if found > MIGRATIONS.len() as i64 {
            return Err(StateDbError::TooNew {
                path: s.path.clone(),
                found,
                known: MIGRATIONS.len() as i64,
            }
            .into());
        }
        if found == 0 {
            // Created but never migrated (a writer stopped at its first open): nothing saved.
            return Ok(GovernorState::default());
        }
        // Every schema so far keeps the state row as it is; the next writer migrates.
        s.read_state()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StateDbError {
        StateDbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn user_version(&self) -> Result<i64, StateDbError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self) -> Result<(), StateDbError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.user_version()?;
        if found > known {
            return Err(StateDbError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let version = i as i64 + 1;
            migrate_step(&mut self.conn, sql, version).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn import_legacy(&mut self, state_dir: &Path) -> Result<(), StateDbError> {
        let legacy = state_dir.join(STATE_FILE_NAME);
        state_dir::refuse_special(&legacy)?;
        if !legacy.exists() || self.has_state()? {
            return Ok(());
        }
        let state = JsonStateFile::in_dir(state_dir)
            .load()
            .map_err(|e| StateDbError::Invalid {
                path: legacy.clone(),
                detail: format!("importing it: {e}"),
            })?;
        self.write_state(&state, state.last_tick.unwrap_or(Millis(0)))?;
        let renamed = state_dir.join(format!("{STATE_FILE_NAME}.imported"));
        if let Err(e) = std::fs::rename(&legacy, &renamed) {
            tracing::warn!(error = %e, file = %legacy.display(), "Imported the state but could not rename the old file.");
        } else {
            tracing::info!(from = %legacy.display(), to = %self.path.display(), "Imported the JSON state into SQLite.");
        }
        Ok(())
    }

    fn has_state(&self) -> Result<bool, StateDbError> {
        self.conn
            .query_row("SELECT 1 FROM governor_state WHERE id = 1", [], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    fn read_state(&self) -> Result<GovernorState, PortError> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT version, json FROM governor_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((version, json)) = row else {
            return Ok(GovernorState::default());
        };
        let invalid = |detail: String| StateDbError::Invalid {
            path: self.path.clone(),
            detail,
        };
        if version != i64::from(STATE_VERSION) {
            return Err(invalid(format!(
                "state version {version} (this kanban-governor writes {STATE_VERSION})"
            ))
            .into());
        }
        serde_json::from_str(&json).map_err(|e| invalid(format!("the saved state: {e}")).into())
    }

    fn write_state(&mut self, state: &GovernorState, at: Millis) -> Result<(), StateDbError> {
        let json = serde_json::to_string(state).map_err(|e| StateDbError::Invalid {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.conn
            .execute(
                "INSERT INTO governor_state (id, version, saved_at_ms, json) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET version = ?1, saved_at_ms = ?2, json = ?3",
                params![i64::from(state.version), ms(at), json],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Write-ahead: the state (with `releasing` in flight), the outcomes settled so far and
    /// one decision and release row per release, in one transaction.
    fn write_ahead(
        &mut self,
        state: &GovernorState,
        r: &TickReport,
        releasing: &[TaskId],
    ) -> Result<(), StateDbError> {
        let json = serde_json::to_string(state).map_err(|e| StateDbError::Invalid {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let at = ms(r.at);
        let write = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO governor_state (id, version, saved_at_ms, json) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET version = ?1, saved_at_ms = ?2, json = ?3",
                params![i64::from(state.version), at, json],
            )?;
            write_releases(&tx, at, &r.journal_ahead(releasing))?;
            tx.commit()
        };
        write(&mut self.conn).map_err(|e| self.err(e))?;
        for id in releasing {
            self.last_reason.remove(id);
        }
        self.ahead = Some((r.at, releasing.to_vec()));
        Ok(())
    }

    fn write_journal(&mut self, r: &TickReport) -> rusqlite::Result<()> {
        let at = ms(r.at);
        // What `write_ahead` already wrote for this tick is not written again.
        let ahead = self.ahead.take().filter(|(t, _)| *t == r.at);
        let tx = self.conn.transaction()?;
        {
            let records = r.journal_releases(ahead.as_ref().map(|(_, ids)| ids.as_slice()));
            write_releases(&tx, at, &records)?;
            for rec in &records {
                if let ReleaseRecord::Released(rel) = rec {
                    self.last_reason.remove(&rel.id);
                }
            }
            let mut decision = tx.prepare_cached(DECISION)?;
            // The reason last written for a task: remembered, or (first tick of a `tick`
            // process) looked up, so cron mode does not rewrite every held task every tick.
            let mut last_written = tx.prepare_cached(
                "SELECT verdict FROM decisions WHERE task = ?1 ORDER BY id DESC LIMIT 1",
            )?;
            for h in &r.decision.held {
                let name = h.reason.name();
                let last = match self.last_reason.get(&h.id) {
                    Some(l) => Some(l.clone()),
                    None => last_written
                        .query_row(params![h.id.as_str()], |row| row.get::<_, String>(0))
                        .optional()?,
                };
                if last.as_deref() == Some(name) {
                    self.last_reason.insert(h.id.clone(), name.to_owned());
                    continue;
                }
                decision.execute(params![
                    at,
                    h.id.0,
                    h.profile.as_ref().map(|p| p.as_str()),
                    name,
                    h.reason.to_string()
                ])?;
                self.last_reason.insert(h.id.clone(), name.to_owned());
            }
            let held: std::collections::HashSet<&TaskId> =
                r.decision.held.iter().map(|h| &h.id).collect();
            self.last_reason.retain(|id, _| held.contains(id));

            let mut sample = tx.prepare_cached(
                "INSERT INTO footprint_samples (at_ms, profile, task, peak_tokens) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for p in &r.observed.peaks {
                sample.execute(params![at, p.profile.0, p.task.0, p.tokens as i64])?;
            }
        }
        if self.last_prune.is_none_or(|t| r.at.since(t) >= PRUNE_EVERY) {
            for (table, col) in JOURNAL {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {col} < ?1"),
                    params![ms(r.at).saturating_sub(ms(RETENTION))],
                )?;
                tx.execute(
                    &format!("DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?1"),
                    params![MAX_ROWS],
                )?;
            }
            self.last_prune = Some(r.at);
        }
        tx.commit()
    }
}

/// A tick's release rows and outcomes ([`ReleaseRecord`]), in order.
fn write_releases(
    tx: &rusqlite::Transaction<'_>,
    at: i64,
    records: &[ReleaseRecord<'_>],
) -> rusqlite::Result<()> {
    let mut decision = tx.prepare_cached(DECISION)?;
    let mut release = tx.prepare_cached(RELEASE)?;
    let mut outcome = tx.prepare_cached(OUTCOME)?;
    for rec in records {
        match rec {
            ReleaseRecord::Released(rel) => {
                decision.execute(params![
                    at,
                    rel.id.0,
                    rel.profile.0,
                    "release",
                    "fits in every pool"
                ])?;
                release.execute(params![rel.id.0, rel.profile.0, at])?;
            }
            ReleaseRecord::NotReleased(id) => {
                release.execute(params![id.0, "(not released)", at])?;
            }
            ReleaseRecord::Outcome(id, what) => {
                outcome.execute(params![id.0, what, at])?;
            }
        }
    }
    Ok(())
}

const DECISION: &str =
    "INSERT INTO decisions (at_ms, task, profile, verdict, detail) VALUES (?1, ?2, ?3, ?4, ?5)";
const RELEASE: &str = "INSERT INTO releases (task, profile, released_at_ms) VALUES (?1, ?2, ?3)";
const OUTCOME: &str = "UPDATE releases SET outcome = ?2, outcome_at_ms = ?3
                 WHERE id = (SELECT MAX(id) FROM releases WHERE task = ?1)";

/// One migration in one transaction: the schema change and the version it reaches.
fn migrate_step(conn: &mut Connection, sql: &str, version: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(sql)?;
    tx.pragma_update(None, "user_version", version)?;
    tx.commit()
}

fn ms(m: Millis) -> i64 {
    i64::try_from(m.get()).unwrap_or(i64::MAX)
}

impl StateStore for SqliteState {
    fn load(&mut self) -> Result<GovernorState, PortError> {
        self.read_state()
    }

    fn save(&mut self, state: &GovernorState) -> Result<(), PortError> {
        let at = state.last_tick.unwrap_or(Millis(0));
        Ok(self.write_state(state, at)?)
    }

    fn journal(&mut self, report: &TickReport) -> Result<(), PortError> {
        self.write_journal(report).map_err(|e| self.err(e).into())
    }

    fn save_before_releasing(
        &mut self,
        state: &GovernorState,
        report: &TickReport,
        releasing: &[TaskId],
    ) -> Result<(), PortError> {
        Ok(self.write_ahead(state, report, releasing)?)
    }
}

#[cfg(test)]
mod tests;
