//! Fakes of every port, shipped with the library so unit tests, integration tests and the
//! scenario files (`tests/scenarios/`) drive the real tick ([`crate::app::tick`]) without
//! Hermes, a GPU, an engine or a state directory: the "second implementation" of each port
//! (STYLE.md §3), as Netflix's `FixedLimit` ships beside its limiters.
//!
//! - [`InMemoryBoard`]: a Hermes board in memory (the [`crate::ports::TaskBoard`] and
//!   [`crate::ports::WorkerProbe`] ports), with Hermes's own dispatch rule.
//! - [`RecordingDispatcher`]: the [`crate::ports::Dispatcher`] port on that board; it records
//!   every call (`assign t_1 coder`, `dispatch --max 3`) and fails when told to.
//! - [`ScriptedGpu`] and [`ScriptedEngine`]: telemetry whose reading the test sets, plus a
//!   schedule of [`Fault`]s over time (errors, frozen readings).
//! - [`InMemoryState`]: the [`crate::ports::StateStore`] port in memory; it keeps what it was
//!   asked to save and write ahead, and journals releases and their outcomes by the same
//!   rules as the SQLite store ([`crate::record::report::ReleaseRecord`]). Shared as
//!   `Arc<Mutex<InMemoryState>>`, it is a store a daemon owns while the test looks at it.
//! - [`ManualClock`]: a [`crate::ports::Clock`] the test moves by hand.
//!
//! No I/O, no clock, no threads: everything happens in the calls. The fakes are `Send` (shared
//! parts sit behind a mutex) so a daemon can be driven by them too.

mod board;
mod clock;
mod state;
mod telemetry;

pub use board::{Board, InMemoryBoard, RecordingDispatcher};
pub use clock::ManualClock;
pub use state::{AheadSave, InMemoryState, JournalRow};
pub use telemetry::{Fault, Faults, ScriptedEngine, ScriptedGpu};

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the data of a poisoned mutex as it is: a fake shared by a test that
/// panicked has nothing left to protect.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
