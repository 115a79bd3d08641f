//! Footprint learning in the real tick (DESIGN §4): what each profile's tasks really reach.
//!
//! The engine says how much context the requests in progress hold now (llama.cpp `/slots`:
//! prompt + generated tokens of each busy slot; [`crate::ports::EngineReading::busy_context_max`]).
//! That is per request, not per task, so a reading is only *attributed* while every task
//! running on the board belongs to one governed profile: then the largest request in
//! progress is one of that profile's. Each running task keeps the largest attributed reading
//! seen during its run; a task that ever ran beside another profile's (or an ungoverned) task,
//! or through a tick with no engine reading, is *tainted* and teaches nothing (its peak may
//! have been missed). A clean task that ends `done` adds its peak to its profile's
//! [`PeakStats`], whose upper estimate becomes the profile's learned worst case
//! ([`learned_worst_case`]).
//!
//! Readings come once per tick, so a peak between ticks can be missed: the estimate leans
//! low when ticks are sparse (cron). The default `footprint = "max"` never charges less than
//! the declaration; `"learned"` trusts the estimate, which is never below the largest peak
//! seen plus a margin.
//!
//! Pure: state and observations in, state out.

use crate::app::state::GovernorState;
use crate::governor::learned::{PeakStats, learned_spread, learned_worst_case};
use crate::governor::{Policy, RunningTask, Spread, TaskId, WorstCase};
use crate::ports::{BoardSnapshot, TaskStatus};
pub use crate::record::{PeakSample, TaskPeak};
use serde::Serialize;

/// What one profile learned, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileLearning {
    /// The profile.
    pub profile: String,
    /// Finished tasks observed.
    pub samples: u64,
    /// Largest peak per request seen, tokens.
    pub max_tokens: u64,
    /// Mean peak per request, tokens.
    pub mean_tokens: f64,
    /// The declared context per request, tokens.
    pub declared_tokens: u64,
    /// The learned upper estimate per request, once enough samples exist.
    pub learned_tokens: Option<u64>,
    /// Its tasks reached more than the declaration: it is charged the observed peak
    /// (`footprint = "max"` or `"learned"`), and its config should be raised.
    pub exceeds_declaration: bool,
}

/// Follow the running tasks through one observation; returns the peaks of tasks that
/// finished cleanly (already added to `state.footprints`).
///
/// `running` is every task running on the board (governed or not), `busy_context` the
/// engine's largest request in progress (`None`: no engine reading this tick).
pub fn follow(
    policy: &Policy,
    state: &mut GovernorState,
    snap: &BoardSnapshot,
    running: &[RunningTask],
    busy_context: Option<u64>,
) -> Vec<PeakSample> {
    let profile_of = |assignee: &str| policy.profiles.iter().find(|p| p.id.as_str() == assignee);
    let mut finished = Vec::new();
    // Tasks that left `running`: done teaches, anything else (blocked, reclaimed, archived)
    // is forgotten.
    let running_ids: std::collections::BTreeSet<&TaskId> = running.iter().map(|r| &r.id).collect();
    let ended: Vec<TaskId> = state
        .task_peaks
        .keys()
        .filter(|id| !running_ids.contains(id))
        .cloned()
        .collect();
    for id in ended {
        let Some(p) = state.task_peaks.remove(&id) else {
            continue;
        };
        let done = snap.task(&id).is_some_and(|t| t.status == TaskStatus::Done);
        if done && !p.tainted && p.tokens > 0 {
            state
                .footprints
                .entry(p.profile.clone())
                .or_default()
                .observe(p.tokens);
            finished.push(PeakSample {
                task: id,
                profile: p.profile,
                tokens: p.tokens,
            });
        }
    }

    // One governed profile alone on the board: the engine's largest request is its.
    let first = running.first().and_then(|r| profile_of(&r.assignee));
    let alone = first.filter(|p| running.iter().all(|r| r.assignee == p.id.as_str()));
    let clean = busy_context.is_some() && alone.is_some();
    for r in running {
        let Some(profile) = profile_of(&r.assignee) else {
            continue;
        };
        let entry = state
            .task_peaks
            .entry(r.id.clone())
            .or_insert_with(|| TaskPeak {
                profile: profile.id.clone(),
                tokens: 0,
                tainted: false,
            });
        match busy_context {
            Some(c) if clean => entry.tokens = entry.tokens.max(c),
            _ => entry.tainted = true,
        }
    }
    finished
}

/// Per profile (in [`Policy::profiles`] order), the learned worst case, once enough samples
/// exist.
pub fn learned(policy: &Policy, state: &GovernorState) -> Vec<Option<WorstCase>> {
    policy
        .profiles
        .iter()
        .map(|p| {
            let upper = state.footprints.get(&p.id).and_then(PeakStats::upper)?;
            Some(learned_worst_case(&p.declared, upper))
        })
        .collect()
}

/// Per profile (in [`Policy::profiles`] order), how its tasks' peaks spread, once enough
/// samples exist (the decision pools them in an engine's KV pool under `footprint = "learned"`).
pub fn spread(policy: &Policy, state: &GovernorState) -> Vec<Option<Spread>> {
    policy
        .profiles
        .iter()
        .map(|p| learned_spread(&p.declared, state.footprints.get(&p.id)?))
        .collect()
}

/// Declared vs learned per profile, for `status`.
pub fn report(policy: &Policy, state: &GovernorState) -> Vec<ProfileLearning> {
    policy
        .profiles
        .iter()
        .map(|p| {
            let s = state.footprints.get(&p.id).copied().unwrap_or_default();
            let declared_tokens = p.declared.request_tokens;
            ProfileLearning {
                profile: p.id.to_string(),
                samples: s.n,
                max_tokens: s.max,
                mean_tokens: s.mean(),
                declared_tokens,
                learned_tokens: s.upper(),
                exceeds_declaration: declared_tokens > 0 && s.max > declared_tokens,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::{Bytes, FootprintMode, Millis, ProfileId, ProfilePolicy};
    use crate::ports::BoardTask;

    fn policy() -> Policy {
        let profile = |name: &str| ProfilePolicy {
            id: ProfileId::from(name),
            lane: format!("{name}@gpu"),
            pool: 0,
            declared: WorstCase {
                kv_bytes: Bytes(4096 * 1000),
                extra_bytes: Bytes(0),
                kv_tokens: 4096,
                slots: 1,
                request_tokens: 4096,
            },
            max_parallel: None,
            guaranteed: 0,
            footprint: FootprintMode::Max,
        };
        Policy {
            pools: vec![],
            profiles: vec![profile("coder"), profile("writer")],
            max_running: None,
            max_wait: Millis::secs(600),
        }
    }

    fn running(list: &[(&str, &str)]) -> Vec<RunningTask> {
        list.iter()
            .map(|(id, who)| RunningTask {
                id: TaskId::from(*id),
                assignee: (*who).to_owned(),
                since: Millis(0),
            })
            .collect()
    }

    fn snap(list: &[(&str, TaskStatus)]) -> BoardSnapshot {
        BoardSnapshot {
            tasks: list
                .iter()
                .map(|(id, status)| BoardTask {
                    id: TaskId::from(*id),
                    assignee: None,
                    status: status.clone(),
                    priority: 0,
                    created_at: Millis(0),
                    started_at: None,
                    worker_pid: None,
                    claim_lock: None,
                })
                .collect(),
            data_version: 0,
        }
    }

    #[test]
    fn a_task_running_alone_teaches_its_profile_its_peak_when_done() {
        let p = policy();
        let mut s = GovernorState::default();
        let empty = snap(&[]);
        let r = running(&[("t1", "coder")]);
        assert!(follow(&p, &mut s, &empty, &r, Some(900)).is_empty());
        follow(&p, &mut s, &empty, &r, Some(2500));
        follow(&p, &mut s, &empty, &r, Some(40));
        let got = follow(&p, &mut s, &snap(&[("t1", TaskStatus::Done)]), &[], Some(0));
        assert_eq!(
            got,
            vec![PeakSample {
                task: TaskId::from("t1"),
                profile: ProfileId::from("coder"),
                tokens: 2500
            }]
        );
        assert_eq!(s.footprints[&ProfileId::from("coder")].max, 2500);
        assert!(s.task_peaks.is_empty());
    }

    #[test]
    fn a_task_that_ran_beside_another_profile_or_blind_teaches_nothing() {
        let p = policy();
        let mut s = GovernorState::default();
        let empty = snap(&[]);
        follow(&p, &mut s, &empty, &running(&[("t1", "coder")]), Some(900));
        follow(
            &p,
            &mut s,
            &empty,
            &running(&[("t1", "coder"), ("t2", "writer")]),
            Some(3000),
        );
        follow(&p, &mut s, &empty, &running(&[("t3", "coder")]), None);
        let done = snap(&[
            ("t1", TaskStatus::Done),
            ("t2", TaskStatus::Done),
            ("t3", TaskStatus::Done),
        ]);
        assert!(follow(&p, &mut s, &done, &[], Some(0)).is_empty());
        assert!(s.footprints.is_empty());
    }

    #[test]
    fn an_ungoverned_task_on_the_board_taints_the_reading() {
        let p = policy();
        let mut s = GovernorState::default();
        let r = running(&[("t1", "coder"), ("x", "someone-else")]);
        follow(&p, &mut s, &snap(&[]), &r, Some(100));
        assert!(s.task_peaks[&TaskId::from("t1")].tainted);
        assert!(!s.task_peaks.contains_key(&TaskId::from("x")));
    }

    #[test]
    fn a_task_that_did_not_finish_done_is_forgotten() {
        let p = policy();
        let mut s = GovernorState::default();
        follow(
            &p,
            &mut s,
            &snap(&[]),
            &running(&[("t1", "coder")]),
            Some(700),
        );
        let blocked = snap(&[("t1", TaskStatus::Blocked)]);
        assert!(follow(&p, &mut s, &blocked, &[], Some(0)).is_empty());
        assert!(s.task_peaks.is_empty() && s.footprints.is_empty());
    }

    #[test]
    fn eight_clean_tasks_give_a_learned_worst_case_and_an_overrun_is_flagged() {
        let p = policy();
        let mut s = GovernorState::default();
        for (i, peak) in [5000u64, 5200, 4800, 5100, 4900, 5000, 5300, 5050]
            .into_iter()
            .enumerate()
        {
            let id = format!("t{i}");
            follow(
                &p,
                &mut s,
                &snap(&[]),
                &running(&[(&id, "coder")]),
                Some(peak),
            );
            follow(&p, &mut s, &snap(&[(&id, TaskStatus::Done)]), &[], None);
        }
        let l = learned(&p, &s);
        let coder = l[0].expect("eight samples are enough");
        assert!(coder.request_tokens >= 5300, "{coder:?}");
        assert_eq!(coder.kv_bytes, Bytes(coder.kv_tokens * 1000));
        assert_eq!(l[1], None);
        let r = report(&p, &s);
        assert!(r[0].exceeds_declaration, "{r:?}");
        assert_eq!(r[0].samples, 8);
        assert!(!r[1].exceeds_declaration);
    }
}
