//! Exact examples and properties of `decide`.
