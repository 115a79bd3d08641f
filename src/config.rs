//! Configuration: raw TOML/env/flags into a validated `Config`.

use thiserror::Error;

/// A config problem (placeholder until the config lands).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
