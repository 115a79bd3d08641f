//! [`StateStore`] as one JSON file under `state_dir` (cron mode).
//!
//! Writes are atomic: the state goes to a temp file in the same directory, is synced, then
//! renamed over the old one, so a crash leaves the old or the new state, never half of one.
//! A missing file is the default state; an unreadable or foreign one is an error (the
//! governor must not forget what it released).

use crate::ports::{PortError, StateStore};
use crate::record::state::{GovernorState, STATE_VERSION};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The state file's name inside `state_dir`.
pub const STATE_FILE_NAME: &str = "state.json";

/// Errors of the state file.
#[derive(Debug, Error)]
pub enum StateFileError {
    /// It could not be read or written.
    #[error("state file {path}: {source}; check that dispatch.state_dir is writable by this user")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a state file of this version.
    #[error(
        "state file {path}: {detail}; move it away to start with a fresh state (in-flight releases are then forgotten)"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The JSON state file.
#[derive(Debug, Clone)]
pub struct JsonStateFile {
    path: PathBuf,
}

impl JsonStateFile {
    /// The state file in `state_dir` (created on the first save).
    pub fn in_dir(state_dir: &Path) -> JsonStateFile {
        JsonStateFile {
            path: state_dir.join(STATE_FILE_NAME),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StateFileError {
        StateFileError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl StateStore for JsonStateFile {
    fn load(&mut self) -> Result<GovernorState, PortError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(GovernorState::default());
            }
            Err(e) => return Err(self.io(e).into()),
        };
        let state: GovernorState =
            serde_json::from_str(&text).map_err(|e| StateFileError::Invalid {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        if state.version != STATE_VERSION {
            return Err(StateFileError::Invalid {
                path: self.path.clone(),
                detail: format!(
                    "version {} (this kanban-governor writes {STATE_VERSION})",
                    state.version
                ),
            }
            .into());
        }
        Ok(state)
    }

    fn save(&mut self, state: &GovernorState) -> Result<(), PortError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = dir.join(format!(".{STATE_FILE_NAME}.{}.tmp", std::process::id()));
        let json = serde_json::to_vec_pretty(state).map_err(|e| StateFileError::Invalid {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io(e).into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::{Millis, TaskId};

    #[test]
    fn a_missing_file_loads_as_the_default_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JsonStateFile::in_dir(dir.path());
        assert_eq!(store.load().unwrap(), GovernorState::default());
    }

    #[test]
    fn saved_state_loads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = JsonStateFile::in_dir(&dir.path().join("sub"));
        let mut s = GovernorState::default();
        s.first_seen_waiting.insert(TaskId::from("t_a"), Millis(9));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![STATE_FILE_NAME.to_owned()]);
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE_NAME), "{not json").unwrap();
        let err = JsonStateFile::in_dir(dir.path())
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("state.json"), "{err}");
        assert!(err.contains("move it away"), "{err}");
    }
}
