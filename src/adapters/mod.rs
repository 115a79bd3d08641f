//! Adapters: one module per external system. Each owns its `thiserror` enum and does its I/O
//! here, so the rest of the crate sees only domain types through [`crate::ports`].

pub mod board_sqlite;
pub mod dispatch_cli;
pub mod hermes_home;
pub mod state_file;
pub mod worker_probe;
