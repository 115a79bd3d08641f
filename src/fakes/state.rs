//! The governor's state store in memory.

use super::RecordingDispatcher;
use crate::governor::{Millis, TaskId};
use crate::ports::{PortError, StateStore};
use crate::record::report::TickReport;
use crate::record::state::GovernorState;

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
    /// While `Some`, every save and write-ahead fails with this message (disk full).
    pub save_error: Option<String>,
    watch: Option<RecordingDispatcher>,
}

impl InMemoryState {
    /// An empty store that notes, at each write-ahead, the calls `dispatcher` had made by then.
    pub fn watching(dispatcher: &RecordingDispatcher) -> InMemoryState {
        InMemoryState {
            watch: Some(dispatcher.clone()),
            ..InMemoryState::default()
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
