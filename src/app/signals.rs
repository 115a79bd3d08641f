//! Stop requests: SIGTERM, SIGINT and SIGHUP are caught instead of killing the process
//! mid-dispatch (with the state unsaved and a release missing from the journal).
//!
//! - [`shutdown_signal`], for `run`: a future that ends at the first of them, handed to
//!   [`crate::app::daemon::serve`] as its shutdown (tests hand it their own).
//! - [`StopSignals`], for `tick`, which is synchronous: the handlers are tokio's (the crate
//!   already uses its signal driver in `run`), driven by a small runtime on a thread of its own
//!   that forwards each signal's name on a channel; the loop checks the channel before each
//!   tick and waits on it instead of sleeping between `--repeat` ticks, so a stop request ends
//!   that wait at once.
//!
//! Hermes children are not touched: they run in process groups of their own
//! (`adapters::dispatch_cli`), so a terminal's Ctrl-C reaches the governor only, and the
//! call in progress finishes (or meets `dispatch.timeout`).
//!
//! Side effects: installs process-wide handlers for the three signals (for the life of the
//! process); [`StopSignals::install`] starts one thread.

use anyhow::Context;
use std::sync::mpsc;
use std::time::Duration;

/// SIGTERM, SIGINT or SIGHUP, as a future that ends at the first of them (logged with its
/// name). The handlers are in place on return, so a signal that arrives before the future is
/// first polled still ends it.
///
/// # Errors
///
/// A handler cannot be set up.
///
/// # Panics
///
/// Outside a tokio runtime with its signal driver enabled (tokio's `signal` panics there).
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("watching for SIGHUP")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        };
        tracing::warn!("{name}: finishing the tick in progress, then stopping.");
    })
}

/// The signals that ask `tick` to stop after the tick in progress.
#[derive(Debug)]
pub struct StopSignals {
    rx: mpsc::Receiver<&'static str>,
    /// The first signal received, once seen.
    got: Option<&'static str>,
}

impl StopSignals {
    /// Catch SIGTERM, SIGINT and SIGHUP from now on.
    ///
    /// # Errors
    ///
    /// The runtime, a handler or the thread cannot be set up.
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the signal handler's runtime")?;
        // Registered here, on the caller's thread, so the handlers are in place on return.
        let (mut term, mut int, mut hup) = {
            let _guard = rt.enter();
            (
                signal(SignalKind::terminate()).context("watching for SIGTERM")?,
                signal(SignalKind::interrupt()).context("watching for SIGINT")?,
                signal(SignalKind::hangup()).context("watching for SIGHUP")?,
            )
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        let name = tokio::select! {
                            _ = term.recv() => "SIGTERM",
                            _ = int.recv() => "SIGINT",
                            _ = hup.recv() => "SIGHUP",
                        };
                        tracing::warn!(
                            "{name}: finishing the tick in progress (Hermes calls end within dispatch.timeout), then stopping."
                        );
                        if tx.send(name).is_err() {
                            return;
                        }
                    }
                });
            })
            .context("starting the signal handler's thread")?;
        Ok(StopSignals { rx, got: None })
    }

    /// The stop signal received so far, if any (does not wait).
    pub fn requested(&mut self) -> Option<&'static str> {
        if self.got.is_none() {
            self.got = self.rx.try_recv().ok();
        }
        self.got
    }

    /// Wait up to `d` for a stop signal; the one received, or `None` when `d` passed.
    pub fn wait(&mut self, d: Duration) -> Option<&'static str> {
        if self.got.is_none() {
            match self.rx.recv_timeout(d) {
                Ok(name) => self.got = Some(name),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The handler thread is gone (it cannot be, while `rx` lives): still wait.
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(d),
            }
        }
        self.got
    }
}
