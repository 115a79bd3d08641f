//! Factory (placeholder while being written).
