//! (b) `config.yaml`: the `kanban:` keys the governor cares about, read as Hermes reads them
//! (PyYAML booleans, Python truthiness and `int()`).

use super::{HermesHomeError, env_keys};
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
