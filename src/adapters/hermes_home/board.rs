//! (f) The corrupt-board quarantine files Hermes leaves, and a read-only look at the board.

use super::HermesHomeError;
use crate::adapters::board_sqlite::{self, BoardError, JournalMode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The quarantine copies Hermes leaves when it finds a board corrupt:
/// `<db>.corrupt.<hash>.bak` beside the DB, sorted by name.
///
/// # Errors
///
/// The DB's directory exists but cannot be listed.
pub fn list_corrupt_backups(db: &Path) -> Result<Vec<PathBuf>, HermesHomeError> {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.corrupt.", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HermesHomeError::Read {
                path: dir.display().to_string(),
                source,
            });
        }
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".bak")
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// What a read-only look at a board found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoardProbe {
    /// The journal mode in the board's header (Hermes 0.19.0: WAL; Hermes >= 0.20 on SQLite
    /// < 3.51.3: a rollback journal).
    pub journal_mode: JournalMode,
    /// Tasks per status.
    pub tasks_by_status: BTreeMap<String, u64>,
}

/// Reads the board's journal mode from its header and counts tasks per status in one short
/// read-only transaction, creating no file beside it ([`board_sqlite::quiet_read`]; never
/// read-write, `HERMES.md` §8.1).
///
/// # Errors
///
/// The file is missing, not a SQLite DB (or not a Hermes board), locked past the busy
/// timeout, or needs a Hermes process to repair it first (a hot rollback journal).
pub fn probe_board(db: &Path) -> Result<BoardProbe, BoardError> {
    let tasks_by_status = board_sqlite::quiet_read(db, |conn| {
        let tx = conn.unchecked_transaction()?;
        let counts = {
            let mut stmt = tx.prepare("SELECT status, COUNT(*) FROM tasks GROUP BY status")?;
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .map(|row| row.map(|(s, n)| (s, u64::try_from(n).unwrap_or(0))))
                .collect::<rusqlite::Result<BTreeMap<String, u64>>>()?
        };
        tx.commit()?;
        Ok(counts)
    })?;
    let journal_mode = board_sqlite::read_journal_mode(db)
        .map_err(|source| BoardError::Io {
            path: db.to_path_buf(),
            source,
        })?
        .ok_or_else(|| BoardError::Corrupt {
            path: db.to_path_buf(),
            detail: "the file has no SQLite header".to_owned(),
        })?;
    Ok(BoardProbe {
        journal_mode,
        tasks_by_status,
    })
}
