//! kanban-governor: admits Hermes Agent kanban tasks only while their worst-case GPU memory
//! fits under a headroom ceiling.
//!
//! # Layout
//!
//! - [`governor`]: the pure decision core. `decide(policy, observation) -> Decision`, the
//!   admission arithmetic, footprints, concurrency limits. No clock, file, env or logging.
//! - [`catalog`]: model shapes as data; KV bytes per token and weight bytes are computed.
//! - [`cli`]: the command line (clap derive) gathered from each command's flags; no logic.
//! - [`config`]: TOML (+ env + flags) into a validated `Config`, in two stages.
//! - [`record`]: the governor's state between ticks and one tick's report, plain data below
//!   the ports, so ports and adapters never import the app.
//! - [`ports`]: the small traits the app layer is generic over (telemetry, board, dispatcher,
//!   state, clock).
//! - [`adapters`]: one module per external system (NVML, engine metrics, the Hermes board and
//!   CLI, the state DB, the metrics endpoint).
//! - [`fakes`]: an in-memory implementation of every port (board, dispatcher, GPU, engine,
//!   state, clock), for unit tests, integration tests and the scenario files.
//! - [`app`]: the commands, each module named after its command (`tick_command`, `daemon`,
//!   `plan`, ...), and the control cycle they share (`app::tick`).
//! - [`sim`]: the discrete-event simulator of a GPU host, its engine and a Hermes board.
//! - [`error`]: the usage-error marker and exit codes.
#![warn(missing_docs)]

pub mod adapters;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod error;
pub mod fakes;
pub mod governor;
pub mod ports;
pub mod record;
pub mod sim;
