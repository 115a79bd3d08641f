//! Errors shared across commands: the marker for "the user can fix this" (exit code 2).

use thiserror::Error;

/// A usage or config error: bad flags, a bad file, a bad value. `main` exits 2 when one is
/// anywhere in the error chain. The message names the thing and the fix.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error: 2 when the user caused it (usage or config), else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UsageError>()
            || cause.is::<crate::config::ConfigError>()
            || cause.is::<crate::adapters::nvml::NvmlUnavailable>()
            || cause
                .downcast_ref::<crate::adapters::state_dir::StateDirError>()
                .is_some_and(|e| e.is_usage())
            || cause
                .downcast_ref::<crate::adapters::state_sqlite::StateDbError>()
                .is_some_and(|e| e.is_usage())
        {
            return 2;
        }
    }
    1
}
