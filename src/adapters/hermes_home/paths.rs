//! (a) The kanban root and the board DB: where Hermes's files are, and which board a
//! Hermes process started by the governor will use.

use super::{HermesHomeError, env_keys};
use std::path::{Component, Path, PathBuf};

/// The board Hermes uses when nothing selects another (`DEFAULT_BOARD`).
pub const DEFAULT_BOARD: &str = "default";

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
