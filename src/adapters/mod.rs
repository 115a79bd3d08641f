//! Adapters: one module per external system. Each owns its `thiserror` enum and does its I/O
//! here, so the rest of the crate sees only domain types through [`crate::ports`].

pub mod board_sqlite;
pub mod child;
pub mod dispatch_cli;
pub mod engine;
pub mod hermes_home;
pub mod host_mem;
pub mod http;
pub mod metrics_http;
pub mod nvml;
pub mod process_stats;
pub mod prom;
pub mod proxy;
pub mod replay;
pub mod state_dir;
pub mod state_file;
pub mod state_sqlite;
pub mod static_gpu;
pub mod telemetry;
pub mod worker_probe;
