//! Footprint learning in the real tick (DESIGN §4): what each profile's tasks really reach.
//!
//! Two sources, per task:
//!
//! - **The pass-through** (`[proxy] listen`, any engine kind): the proxy attributes every
//!   request to its task and measures each task's peak as the largest sum of the final sizes
//!   (prompt + generated) of its requests in flight together
//!   ([`crate::adapters::proxy::stats`]). A task the proxy saw teaches that peak, whatever
//!   else ran beside it. It is taken once the task is `done`, its worker has exited (its last
//!   call comes after `done`) and none of its requests is in flight. Only an **exact** peak
//!   teaches, one where every request in the sum had its size from the engine's `usage`
//!   (Hermes asks for it in streams, and vLLM, SGLang and llama.cpp send it). An estimated
//!   one (bytes / 4: the engine sent no `usage`, or a request was cut off) teaches nothing:
//!   the rule errs high on JSON and English but low on scripts with more tokens than bytes
//!   / 4, and a footprint learned low would overcommit the engine, so such a profile stays on
//!   its declaration (fail closed). The tick reports those tasks.
//! - **The engine's `/slots`** (llama.cpp only), for tasks the proxy never saw: the engine
//!   says how much context the requests in progress hold now
//!   ([`crate::ports::EngineReading::busy_context_max`]). That is per request, not per task,
//!   so a reading is only *attributed* while every task running on the board belongs to one
//!   governed profile: then the largest request in progress is one of that profile's. Each
//!   running task keeps the largest attributed reading seen during its run; a task that ever
//!   ran beside another profile's (or an ungoverned) task, or through a tick with no engine
//!   reading, is *tainted* and teaches nothing (its peak may have been missed). Readings
//!   come once per tick, so a peak between ticks can be missed: the estimate leans low when
//!   ticks are sparse (cron).
//!
//! A task that ends `done` adds its peak to its profile's [`PeakStats`], whose upper estimate
//! becomes the profile's learned worst case ([`learned_worst_case`]). The default
//! `footprint = "max"` never charges less than the declaration; `"learned"` trusts the
//! estimate, which is never below the largest peak seen plus a margin.
//!
//! Pure: state and observations in, state out.

use crate::app::state::GovernorState;
use crate::governor::learned::{PeakStats, learned_spread, learned_worst_case};
use crate::governor::{Millis, Policy, RunningTask, Spread, TaskId, WorstCase};
use crate::ports::{BoardSnapshot, TaskStatus};
pub use crate::record::{MeasuredPeak, PeakSample, TaskPeak};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A task as the pass-through sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTask {
    /// Its peak so far (requests that ended).
    pub peak: MeasuredPeak,
    /// Its requests in flight now: its peak may still grow.
    pub in_flight: u32,
    /// Its requests that have ended (every outcome).
    pub ended: u64,
}

/// What one observation shows of the tasks' context.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The engines' largest request in progress (llama.cpp `/slots`); `None`: no reading.
    pub busy_context: Option<u64>,
    /// With the pass-through on: per task id it saw, the task now (`None`: no proxy).
    pub proxy: Option<&'a BTreeMap<TaskId, ProxyTask>>,
    /// Tasks no longer running whose local worker is still alive (its last call may come).
    pub finishing: &'a BTreeSet<TaskId>,
    /// When the observation was made.
    pub at: Millis,
}

/// What one observation taught.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// Peaks of tasks that finished `done`, added to `state.footprints`.
    pub learned: Vec<PeakSample>,
    /// Tasks that finished `done` whose proxy peak was an estimate: not learned.
    pub estimated: Vec<PeakSample>,
    /// Tasks `done` whose peak the proxy is still measuring (a last call may come).
    pub pending: Vec<TaskId>,
}

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
/// finished (those learned are already added to `state.footprints`).
///
/// A [`PeakSample`] carries the task's peak as measured (a proxy peak is the whole task's);
/// `state.footprints` keeps peaks per request, so a proxy peak is divided by the profile's
/// `requests_per_task` there (rounded up), and the worst case learned from them multiplies
/// it back: a task is charged about its measured total.
///
/// `running` is every task running on the board (governed or not).
pub fn follow(
    policy: &Policy,
    state: &mut GovernorState,
    snap: &BoardSnapshot,
    running: &[RunningTask],
    evidence: Evidence<'_>,
) -> Followed {
    let profile_of = |assignee: &str| policy.profiles.iter().find(|p| p.id.as_str() == assignee);
    let proxy_now = |id: &TaskId| evidence.proxy.and_then(|m| m.get(id));
    let mut out = Followed::default();
    // Tasks that left `running`: done teaches, anything else (blocked, reclaimed, archived)
    // is forgotten.
    let running_ids: BTreeSet<&TaskId> = running.iter().map(|r| &r.id).collect();
    let ended: Vec<TaskId> = state
        .task_peaks
        .keys()
        .filter(|id| !running_ids.contains(id))
        .cloned()
        .collect();
    for id in ended {
        let done = snap.task(&id).is_some_and(|t| t.status == TaskStatus::Done);
        let Some(p) = state.task_peaks.get_mut(&id) else {
            continue;
        };
        let now = proxy_now(&id);
        if let Some(t) = now {
            raise(&mut p.proxy, t.peak);
        }
        // The proxy saw it: its worker's last call (after `done`) may still come or run.
        if done
            && p.proxy.is_some()
            && (evidence.finishing.contains(&id) || now.is_some_and(|t| t.in_flight > 0))
        {
            out.pending.push(id);
            continue;
        }
        let Some(p) = state.task_peaks.remove(&id) else {
            continue;
        };
        if !done {
            continue;
        }
        let (tokens, exact) = match p.proxy {
            Some(m) => (m.tokens, m.exact),
            None => (p.tokens, !p.tainted),
        };
        if tokens == 0 {
            continue;
        }
        let sample = PeakSample {
            task: id,
            profile: p.profile,
            tokens,
        };
        if exact {
            // The stats keep peaks per request (what `/slots` shows, and what the worst case
            // multiplies by `requests_per_task`); a proxy peak is the whole task's, the sum
            // over its requests in flight together, so it is shared out over them.
            let per_request = match p.proxy {
                Some(_) => {
                    let requests = profile_of(sample.profile.as_str())
                        .map_or(1, |q| u64::from(q.declared.slots.max(1)));
                    tokens.div_ceil(requests)
                }
                None => tokens,
            };
            state
                .footprints
                .entry(sample.profile.clone())
                .or_default()
                .observe(per_request);
            // How fast the whole task's context grew: its measured peak over the minutes it
            // ran (from its start on the board to now, the first tick that learns it). The
            // whole peak, not the peak less its first prompt: a faster growth is charged
            // more, so the estimate errs on the safe side (`admission`, "Running tasks in a
            // KV pool"). Only the pass-through sees a task from its first to its last call.
            if p.proxy.is_some()
                && let Some(since) = p.since
            {
                let ms = evidence.at.since(since).get();
                if ms > 0 {
                    let per_min = (u128::from(tokens) * 60_000).div_ceil(u128::from(ms));
                    state
                        .growth
                        .entry(sample.profile.clone())
                        .or_default()
                        .observe(u64::try_from(per_min).unwrap_or(u64::MAX));
                }
            }
            out.learned.push(sample);
        } else if p.proxy.is_some() {
            out.estimated.push(sample);
        }
    }

    // One governed profile alone on the board: the engine's largest request is its.
    let busy_context = evidence.busy_context;
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
                proxy: None,
                since: Some(r.since),
            });
        if let Some(t) = proxy_now(&r.id) {
            raise(&mut entry.proxy, t.peak);
        }
        match busy_context {
            Some(c) if clean => entry.tokens = entry.tokens.max(c),
            _ => entry.tainted = true,
        }
    }
    out
}

/// Keep the larger of what was seen and what the proxy shows now (the proxy may have
/// forgotten an idle task; its peak only grows).
fn raise(seen: &mut Option<MeasuredPeak>, now: MeasuredPeak) {
    if seen.is_none_or(|s| now.tokens > s.tokens || (now.tokens == s.tokens && now.exact)) {
        *seen = Some(now);
    }
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
/// samples exist (the decision pools them in an engine's KV pool under `footprint = "learned"`),
/// and how fast their context grows, once enough tasks went through the pass-through (the
/// decision then charges a running task whose context it sees that context plus its growth
/// over a horizon).
pub fn spread(policy: &Policy, state: &GovernorState) -> Vec<Option<Spread>> {
    policy
        .profiles
        .iter()
        .map(|p| {
            let spread = learned_spread(&p.declared, state.footprints.get(&p.id)?)?;
            let (growth, growth_sd) = state
                .growth
                .get(&p.id)
                .and_then(PeakStats::spread_per_request)
                .unwrap_or((0, 0));
            Some(Spread {
                growth_per_min_kv_tokens: growth,
                growth_sd_per_min_kv_tokens: growth_sd,
                ..spread
            })
        })
        .collect()
}

/// The context a running task has reached, as the pass-through measured it (exact, the whole
/// task's, over its requests that ended), if it saw any.
pub fn context_seen(state: &GovernorState, task: &TaskId) -> Option<u64> {
    state
        .task_peaks
        .get(task)?
        .proxy
        .filter(|m| m.exact && m.tokens > 0)
        .map(|m| m.tokens)
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
                kv_bytes_per_token: 1000,
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
                context_tokens: None,
                requests_in_flight: None,
            })
            .collect()
    }

    static NONE: BTreeSet<TaskId> = BTreeSet::new();

    /// `/slots` evidence only (no proxy, no finishing worker).
    fn slots(busy_context: Option<u64>) -> Evidence<'static> {
        Evidence {
            busy_context,
            proxy: None,
            finishing: &NONE,
            at: Millis(0),
        }
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
        assert!(
            follow(&p, &mut s, &empty, &r, slots(Some(900)))
                .learned
                .is_empty()
        );
        follow(&p, &mut s, &empty, &r, slots(Some(2500)));
        follow(&p, &mut s, &empty, &r, slots(Some(40)));
        let got = follow(
            &p,
            &mut s,
            &snap(&[("t1", TaskStatus::Done)]),
            &[],
            slots(Some(0)),
        );
        assert_eq!(
            got.learned,
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
        follow(
            &p,
            &mut s,
            &empty,
            &running(&[("t1", "coder")]),
            slots(Some(900)),
        );
        follow(
            &p,
            &mut s,
            &empty,
            &running(&[("t1", "coder"), ("t2", "writer")]),
            slots(Some(3000)),
        );
        follow(
            &p,
            &mut s,
            &empty,
            &running(&[("t3", "coder")]),
            slots(None),
        );
        let done = snap(&[
            ("t1", TaskStatus::Done),
            ("t2", TaskStatus::Done),
            ("t3", TaskStatus::Done),
        ]);
        assert!(
            follow(&p, &mut s, &done, &[], slots(Some(0)))
                .learned
                .is_empty()
        );
        assert!(s.footprints.is_empty());
    }

    #[test]
    fn an_ungoverned_task_on_the_board_taints_the_reading() {
        let p = policy();
        let mut s = GovernorState::default();
        let r = running(&[("t1", "coder"), ("x", "someone-else")]);
        follow(&p, &mut s, &snap(&[]), &r, slots(Some(100)));
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
            slots(Some(700)),
        );
        let blocked = snap(&[("t1", TaskStatus::Blocked)]);
        assert!(
            follow(&p, &mut s, &blocked, &[], slots(Some(0)))
                .learned
                .is_empty()
        );
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
                slots(Some(peak)),
            );
            follow(
                &p,
                &mut s,
                &snap(&[(&id, TaskStatus::Done)]),
                &[],
                slots(None),
            );
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

    fn proxy(list: &[(&str, u64, bool, u32)]) -> BTreeMap<TaskId, ProxyTask> {
        list.iter()
            .map(|(id, tokens, exact, in_flight)| {
                let peak = MeasuredPeak {
                    tokens: *tokens,
                    exact: *exact,
                };
                let t = ProxyTask {
                    peak,
                    in_flight: *in_flight,
                    ended: 0,
                };
                (TaskId::from(*id), t)
            })
            .collect()
    }

    fn seen<'a>(
        proxy: &'a BTreeMap<TaskId, ProxyTask>,
        finishing: &'a BTreeSet<TaskId>,
    ) -> Evidence<'a> {
        Evidence {
            busy_context: None,
            proxy: Some(proxy),
            finishing,
            at: Millis(0),
        }
    }

    #[test]
    fn with_the_proxy_a_task_beside_another_profile_teaches_its_exact_peak_after_its_last_call() {
        let p = policy();
        let mut s = GovernorState::default();
        let both = running(&[("t1", "coder"), ("t2", "writer")]);
        let m = proxy(&[("t1", 1000, true, 1), ("t2", 500, true, 1)]);
        // No `/slots` (a vLLM engine) and two profiles at once: the proxy still attributes.
        follow(&p, &mut s, &snap(&[]), &both, seen(&m, &NONE));
        assert!(!s.task_peaks.is_empty());

        // t1 is done but its worker lives (its last call may come): not yet.
        let t1_done = snap(&[("t1", TaskStatus::Done)]);
        let m = proxy(&[("t1", 2000, true, 0), ("t2", 500, true, 1)]);
        let finishing = BTreeSet::from([TaskId::from("t1")]);
        let r2 = running(&[("t2", "writer")]);
        let got = follow(&p, &mut s, &t1_done, &r2, seen(&m, &finishing));
        let waiting = Followed {
            pending: vec![TaskId::from("t1")],
            ..Followed::default()
        };
        assert_eq!(got, waiting);
        // The worker exited but its last call is still in flight: not yet either.
        let m = proxy(&[("t1", 2000, true, 1), ("t2", 500, true, 1)]);
        let got = follow(&p, &mut s, &t1_done, &r2, seen(&m, &NONE));
        assert_eq!(got, waiting);
        // The last call ended, the largest of the task.
        let m = proxy(&[("t1", 2600, true, 0), ("t2", 500, true, 1)]);
        let got = follow(&p, &mut s, &t1_done, &r2, seen(&m, &NONE));
        let coder = ProfileId::from("coder");
        let sample = |task: &str, profile: &ProfileId, tokens| PeakSample {
            task: TaskId::from(task),
            profile: profile.clone(),
            tokens,
        };
        assert_eq!(got.learned, vec![sample("t1", &coder, 2600)]);
        assert_eq!(s.footprints[&coder].max, 2600);

        // t2's peak is an estimate (its engine sent no usage): reported, not learned.
        let m = proxy(&[("t2", 900, false, 0)]);
        let done = snap(&[("t1", TaskStatus::Done), ("t2", TaskStatus::Done)]);
        let got = follow(&p, &mut s, &done, &[], seen(&m, &NONE));
        let writer = ProfileId::from("writer");
        assert_eq!(got.learned, vec![]);
        assert_eq!(got.estimated, vec![sample("t2", &writer, 900)]);
        assert!(!s.footprints.contains_key(&writer));
        assert!(s.task_peaks.is_empty());
    }

    #[test]
    fn a_proxy_peak_is_the_whole_tasks_so_a_two_request_profile_is_charged_it_once() {
        let mut p = policy();
        p.profiles[0].declared = WorstCase {
            kv_bytes: Bytes(2 * 4096 * 1000),
            extra_bytes: Bytes(0),
            kv_tokens: 2 * 4096,
            slots: 2,
            request_tokens: 4096,
            kv_bytes_per_token: 1000,
        };
        let mut s = GovernorState::default();
        for i in 0..8 {
            let id = format!("t{i}");
            // Two sub-agent calls of 3,000 tokens in flight together: 6,000 for the task.
            let m = proxy(&[(id.as_str(), 6000, true, 0)]);
            let r = running(&[(id.as_str(), "coder")]);
            follow(&p, &mut s, &snap(&[]), &r, seen(&m, &NONE));
            let done = snap(&[(id.as_str(), TaskStatus::Done)]);
            let got = follow(&p, &mut s, &done, &[], seen(&m, &NONE));
            assert_eq!(got.learned[0].tokens, 6000, "the sample is the task's peak");
        }
        let coder = ProfileId::from("coder");
        assert_eq!(s.footprints[&coder].max, 3000, "kept per request");
        let wc = learned(&p, &s)[0].expect("eight samples are enough");
        assert!(
            (6000..2 * 4096).contains(&wc.kv_tokens),
            "charged about the task's 6,000 tokens, not twice them: {wc:?}"
        );
        assert!(!report(&p, &s)[0].exceeds_declaration);
    }

    #[test]
    fn a_task_the_proxy_forgot_keeps_its_peak_and_one_it_never_saw_learns_from_slots() {
        let p = policy();
        let mut s = GovernorState::default();
        let m = proxy(&[("t1", 1500, true, 0)]);
        follow(
            &p,
            &mut s,
            &snap(&[]),
            &running(&[("t1", "coder")]),
            seen(&m, &NONE),
        );
        let empty = BTreeMap::new();
        let done = snap(&[("t1", TaskStatus::Done)]);
        let got = follow(&p, &mut s, &done, &[], seen(&empty, &NONE));
        assert_eq!(got.learned.len(), 1);
        assert_eq!(got.learned[0].tokens, 1500);

        // The proxy is on but t2's profile does not go through it: `/slots` alone teaches.
        let e = Evidence {
            busy_context: Some(700),
            proxy: Some(&empty),
            finishing: &NONE,
            at: Millis(0),
        };
        follow(&p, &mut s, &snap(&[]), &running(&[("t2", "coder")]), e);
        let done = snap(&[("t2", TaskStatus::Done)]);
        let got = follow(&p, &mut s, &done, &[], seen(&empty, &NONE));
        assert_eq!(got.learned[0].tokens, 700);
        assert_eq!(s.footprints[&ProfileId::from("coder")].n, 2);
    }

    #[test]
    fn through_the_proxy_a_profile_learns_how_fast_its_tasks_grow_and_a_running_tasks_context_is_seen()
     {
        let p = policy();
        let mut s = GovernorState::default();
        let coder = ProfileId::from("coder");
        for i in 0..8u64 {
            let id = format!("t{i}");
            // Started on the board at 0 (`running` says so); 3,000 + 100·i tokens when done,
            // learned a minute later: 3,000 + 100·i tokens a minute.
            let m = proxy(&[(id.as_str(), 3000 + 100 * i, true, 0)]);
            follow(
                &p,
                &mut s,
                &snap(&[]),
                &running(&[(id.as_str(), "coder")]),
                seen(&m, &NONE),
            );
            let done = snap(&[(id.as_str(), TaskStatus::Done)]);
            let e = Evidence {
                at: Millis::secs(60),
                ..seen(&m, &NONE)
            };
            follow(&p, &mut s, &done, &[], e);
        }
        assert_eq!(s.growth[&coder].n, 8);
        assert_eq!(s.growth[&coder].max, 3700);
        let sp = spread(&p, &s)[0].expect("eight samples are enough");
        // The upper end of the mean's interval (3,350 + t·sd/√8), never below the mean.
        assert!(
            (3350..3700).contains(&sp.growth_per_min_kv_tokens),
            "{sp:?}"
        );
        assert!(sp.growth_sd_per_min_kv_tokens > 0, "{sp:?}");

        // A running task the proxy measured: its context is seen once a request of it ended
        // with an exact size; one with nothing measured yet, or estimated, is not.
        let m = proxy(&[
            ("r1", 1200, true, 1),
            ("r2", 0, true, 1),
            ("r3", 900, false, 0),
        ]);
        let r = running(&[("r1", "coder"), ("r2", "coder"), ("r3", "coder")]);
        follow(&p, &mut s, &snap(&[]), &r, seen(&m, &NONE));
        assert_eq!(context_seen(&s, &TaskId::from("r1")), Some(1200));
        assert_eq!(context_seen(&s, &TaskId::from("r2")), None);
        assert_eq!(context_seen(&s, &TaskId::from("r3")), None);

        // `/slots` alone teaches no growth (it does not see a task from its first call).
        let mut q = GovernorState::default();
        follow(
            &p,
            &mut q,
            &snap(&[]),
            &running(&[("t", "coder")]),
            slots(Some(700)),
        );
        let e = Evidence {
            at: Millis::secs(60),
            ..slots(Some(700))
        };
        follow(&p, &mut q, &snap(&[("t", TaskStatus::Done)]), &[], e);
        assert_eq!(q.footprints[&coder].n, 1);
        assert!(q.growth.is_empty());
    }
}
