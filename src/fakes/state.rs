//! The governor's state store in memory.

use super::{RecordingDispatcher, lock};
use crate::governor::ProfileId;
use crate::governor::{Millis, TaskId};
use crate::ports::{PortError, StateStore};
use crate::record::report::{ReleaseRecord, TickReport};
use crate::record::state::GovernorState;
use std::sync::{Arc, Mutex};

/// One write-ahead ([`StateStore::save_before_releasing`]) as the store received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AheadSave {
    /// The tick's time.
    pub at: Millis,
    /// The Hermes calls made by then, when the store watches a dispatcher
    /// ([`InMemoryState::watching`]).
    pub hermes_calls: Vec<String>,
    /// Tasks in flight in the state saved.
    pub in_flight: Vec<TaskId>,
    /// The tasks being released.
    pub releasing: Vec<TaskId>,
}

/// One release as the journal keeps it (the SQLite store's `releases` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// The task.
    pub task: TaskId,
    /// The profile it was released to; `None` for a spawn the governor did not release.
    pub profile: Option<ProfileId>,
    /// When.
    pub at: Millis,
    /// What became of it, once known (`spawned`, `failed`, `leaked`, ...).
    pub outcome: Option<String>,
}

/// The [`StateStore`] port in memory: [`StateStore::load`] answers the state last saved (the
/// default state before any), and every save, write-ahead and journaled tick is kept for the
/// test to look at. It fails when told to.
#[derive(Debug, Default)]
pub struct InMemoryState {
    /// The state last saved.
    pub state: Option<GovernorState>,
    /// How many times [`StateStore::save`] succeeded.
    pub saves: u32,
    /// Every write-ahead, in order.
    pub ahead: Vec<AheadSave>,
    /// Every tick journaled, in order.
    pub journal: Vec<TickReport>,
    /// The releases journaled and their outcomes, in order, as [`ReleaseRecord`]s say.
    pub releases: Vec<JournalRow>,
    /// While `Some`, every save and write-ahead fails with this message (disk full).
    pub save_error: Option<String>,
    watch: Option<RecordingDispatcher>,
    /// The tick and the releases last written ahead, until that tick is journaled.
    written_ahead: Option<(Millis, Vec<TaskId>)>,
}

impl InMemoryState {
    /// An empty store that notes, at each write-ahead, the calls `dispatcher` had made by then.
    pub fn watching(dispatcher: &RecordingDispatcher) -> InMemoryState {
        InMemoryState {
            watch: Some(dispatcher.clone()),
            ..InMemoryState::default()
        }
    }

    fn write(&mut self, at: Millis, records: &[ReleaseRecord<'_>]) {
        for rec in records {
            match rec {
                ReleaseRecord::Released(r) => self.releases.push(JournalRow {
                    task: r.id.clone(),
                    profile: Some(r.profile.clone()),
                    at,
                    outcome: None,
                }),
                ReleaseRecord::NotReleased(id) => self.releases.push(JournalRow {
                    task: (*id).clone(),
                    profile: None,
                    at,
                    outcome: None,
                }),
                ReleaseRecord::Outcome(id, what) => {
                    if let Some(row) = self.releases.iter_mut().rev().find(|r| &r.task == *id) {
                        row.outcome = Some((*what).to_owned());
                    }
                }
            }
        }
    }

    fn check(&self) -> Result<(), PortError> {
        match &self.save_error {
            Some(e) => Err(e.clone().into()),
            None => Ok(()),
        }
    }
}

impl StateStore for InMemoryState {
    fn load(&mut self) -> Result<GovernorState, PortError> {
        Ok(self.state.clone().unwrap_or_default())
    }

    fn save(&mut self, state: &GovernorState) -> Result<(), PortError> {
        self.check()?;
        self.state = Some(state.clone());
        self.saves += 1;
        Ok(())
    }

    fn journal(&mut self, report: &TickReport) -> Result<(), PortError> {
        let ahead = self.written_ahead.take().filter(|(at, _)| *at == report.at);
        let records = report.journal_releases(ahead.as_ref().map(|(_, ids)| ids.as_slice()));
        self.write(report.at, &records);
        self.journal.push(report.clone());
        Ok(())
    }

    fn save_before_releasing(
        &mut self,
        state: &GovernorState,
        report: &TickReport,
        releasing: &[TaskId],
    ) -> Result<(), PortError> {
        self.check()?;
        self.state = Some(state.clone());
        self.write(report.at, &report.journal_ahead(releasing));
        self.written_ahead = Some((report.at, releasing.to_vec()));
        self.ahead.push(AheadSave {
            at: report.at,
            hermes_calls: self
                .watch
                .as_ref()
                .map(RecordingDispatcher::calls)
                .unwrap_or_default(),
            in_flight: state.in_flight.keys().cloned().collect(),
            releasing: releasing.to_vec(),
        });
        Ok(())
    }
}

/// An [`InMemoryState`] shared with what owns its store (a daemon, [`crate::app::daemon::serve`]),
/// so the test can look at it while that runs and after.
impl StateStore for Arc<Mutex<InMemoryState>> {
    fn load(&mut self) -> Result<GovernorState, PortError> {
        lock(self).load()
    }

    fn save(&mut self, state: &GovernorState) -> Result<(), PortError> {
        lock(self).save(state)
    }

    fn journal(&mut self, report: &TickReport) -> Result<(), PortError> {
        lock(self).journal(report)
    }

    fn save_before_releasing(
        &mut self,
        state: &GovernorState,
        report: &TickReport,
        releasing: &[TaskId],
    ) -> Result<(), PortError> {
        lock(self).save_before_releasing(state, report, releasing)
    }
}
