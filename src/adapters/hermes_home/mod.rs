//! Hermes Agent's environment on this host: where its files are, what its config says, which
//! version is installed, and whether a gateway's embedded dispatcher is live.
//!
//! Every rule here mirrors Hermes 0.19.0 (`HERMES.md` §1, §3.3, §3.7, §3.8, §8), and was
//! checked again against 0.20.1 (same paths, board resolution and `--max` meaning):
//!
//! - **Paths.** The kanban root (`kanban_home()`), the board DB (`kanban_db_path()`), profile
//!   directories and the corrupt-board quarantine files. The resolvers are pure functions of
//!   the environment (passed in as a closure, so tests never touch the real one) and of a few
//!   file-existence answers; [`read_board_location`] and friends are the thin readers.
//! - **Config.** `<HERMES_HOME>/config.yaml`, read with serde-saphyr (it accepts PyYAML's
//!   `yes`/`no`/`on`/`off` booleans) and interpreted with Python's truthiness and `int()`
//!   rules, because that is what Hermes applies to the same values.
//! - **Version.** Read from the installed package (`hermes_cli/__init__.py` next to the
//!   binary's venv, no process), else from `<bin> --version` run with a timeout; mapped to the
//!   meaning of `hermes kanban dispatch --max` ([`MaxSemantics`]).
//! - **Gateway dispatcher.** Found by reading `/proc/locks` for the flock on
//!   `<root>/kanban/.dispatcher.lock` and `<HERMES_HOME>/gateway.pid`. This module **never
//!   takes that lock**: probing by acquiring it can make a gateway that is starting at that
//!   moment disable its dispatcher for life (`HERMES.md` §3.8).
//!
//! Side effects: file reads, one `stat`, `kill(pid, 0)`, and (only when the installed package
//! cannot be read) one `hermes --version` child process. Nothing is written, and the board is
//! opened only read-only ([`probe_board`]).
//!
//! # Layout
//!
//! - `paths`: the kanban root, the board DB and how Hermes picks the board.
//! - `config`: `config.yaml`'s `kanban:` keys, as Hermes interprets them.
//! - `profiles`: profile names and directories, and a profile's `model.base_url`.
//! - `version`: the installed version and the meaning of `--max`.
//! - `gateway`: `/proc/locks`, `gateway.pid` and the gateway's embedded dispatcher.
//! - `board`: the corrupt-board quarantine files and a read-only look at the board.
//!
//! Everything public is re-exported here, so callers name `hermes_home::read_config` and
//! never the room it lives in.

mod board;
mod config;
mod gateway;
mod paths;
mod profiles;
mod version;

pub use board::*;
pub use config::*;
pub use gateway::*;
pub use paths::*;
pub use profiles::*;
pub use version::*;

use thiserror::Error;

/// The env var names Hermes reads (and this module honours).
pub mod env_keys {
    /// Pins the kanban root.
    pub const KANBAN_HOME: &str = "HERMES_KANBAN_HOME";
    /// The Hermes home (profile or root).
    pub const HERMES_HOME: &str = "HERMES_HOME";
    /// Pins the board DB file, beating every board selection.
    pub const KANBAN_DB: &str = "HERMES_KANBAN_DB";
    /// Selects a board by slug (when that board exists).
    pub const KANBAN_BOARD: &str = "HERMES_KANBAN_BOARD";
    /// `0`/`false`/`no`/`off` disables the gateway's embedded dispatcher.
    pub const DISPATCH_IN_GATEWAY: &str = "HERMES_KANBAN_DISPATCH_IN_GATEWAY";
    /// The user's home directory (`~`).
    pub const HOME: &str = "HOME";
}

/// What went wrong reading Hermes's environment. Each message names the file or value and the
/// fix.
#[derive(Debug, Error)]
pub enum HermesHomeError {
    /// Neither `HERMES_HOME` nor `HOME` is set, so `~/.hermes` cannot be found.
    #[error(
        "cannot find the Hermes home: HERMES_HOME and HOME are both unset; set HERMES_HOME (or hermes.home in the governor config)"
    )]
    NoHome,
    /// A board slug Hermes would reject.
    #[error(
        "invalid board slug {slug:?}: must be 1-64 chars of lowercase letters, digits, '-' or '_', not starting with '-' or '_'; fix hermes.board"
    )]
    InvalidBoardSlug {
        /// What was given.
        slug: String,
    },
    /// An explicitly named board that does not exist.
    #[error(
        "board {slug:?} does not exist (no {dir}/board.json or kanban.db); create it with `hermes kanban boards create {slug}` or fix hermes.board"
    )]
    BoardMissing {
        /// The slug.
        slug: String,
        /// Its directory.
        dir: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `config.yaml` is not YAML Hermes could load.
    #[error("cannot parse {path}: {message}; fix the YAML (Hermes cannot load it either)")]
    ConfigParse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The Hermes binary path is not absolute.
    #[error(
        "hermes binary {bin:?} is not an absolute path; set hermes.bin to the absolute path (e.g. the output of `command -v hermes`)"
    )]
    BinNotAbsolute {
        /// What was given.
        bin: String,
    },
    /// `hermes --version` could not be started.
    #[error("cannot run `{bin} --version`: {source}; check hermes.bin")]
    VersionSpawn {
        /// The binary.
        bin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `hermes --version` ran past [`VERSION_TIMEOUT`] and was killed.
    #[error(
        "`{bin} --version` did not finish within {secs} s and was killed; check that hermes.bin runs"
    )]
    VersionTimeout {
        /// The binary.
        bin: String,
        /// The limit.
        secs: u64,
    },
    /// The version could not be read from the package or the output.
    #[error(
        "cannot tell the Hermes version of {bin}: {output:?} has no \"Hermes Agent vX.Y.Z\"; set hermes.max_semantics to \"live-cap\" or \"per-tick\""
    )]
    VersionUnparsed {
        /// The binary.
        bin: String,
        /// What it printed (trimmed).
        output: String,
    },
    /// `/proc/locks` could not be read.
    #[error("cannot read /proc/locks: {source}; the lock holders of {path} are unknown")]
    ProcLocks {
        /// The lock file asked about.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The board could not be opened read-only or queried.
    #[error("cannot read board {path} read-only: {message}")]
    Board {
        /// The DB file.
        path: String,
        /// SQLite's message.
        message: String,
    },
}

#[cfg(test)]
mod tests;
