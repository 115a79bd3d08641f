//! (c) Profiles: names, directories, and a profile's `model.base_url`.

use super::HermesHomeError;
use super::config::config_path;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The profile that always exists: it is the kanban root itself.
pub const DEFAULT_PROFILE: &str = "default";

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
/// root ([`read_hermes_root`](super::read_hermes_root)), not the kanban root: they differ
/// under `HERMES_KANBAN_HOME`.
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

/// The value `name` has in the dotenv file at `path` as python-dotenv reads it (`KEY=value`,
/// optionally `export `, quotes stripped, the last assignment winning); `None` when the file
/// is missing or unreadable, or the value is unset or empty.
pub fn read_dotenv_var(path: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut value = None;
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, v)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != name {
            continue;
        }
        let v = v.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or_else(|| v.split(" #").next().unwrap_or(v).trim_end());
        value = Some(unquoted.to_owned());
    }
    value.filter(|v| !v.is_empty())
}
