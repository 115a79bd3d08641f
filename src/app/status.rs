//! `kanban-governor status`: what runs, what waits and why, and the budget, from the same
//! observe + decide path as `tick`, with nothing acted on and nothing written (the state is
//! read, not saved).

use crate::adapters::state_sqlite::SqliteState;
use crate::app::learning::{self, ProfileLearning};
use crate::app::setup::{self, port_error};
use crate::app::state::GovernorState;
use crate::app::tick::{Observed, TickOptions, observe};
use crate::config::ConfigArgs;
use crate::governor::{Decision, PoolBudget, decide};
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;

/// Flags of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One profile's line.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileStatus {
    /// The profile.
    pub profile: String,
    /// Running on the board (plus released and not yet running).
    pub running: usize,
    /// Waiting in its lane (or on the profile, to be adopted).
    pub waiting: usize,
}

/// One waiting task's line.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingStatus {
    /// Task id.
    pub id: String,
    /// Its profile, if governed.
    pub profile: Option<String>,
    /// `release` if it would start now, else the hold reason's name.
    pub state: String,
    /// Why (the hold reason's text).
    pub reason: String,
}

/// What `status --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Per profile.
    pub profiles: Vec<ProfileStatus>,
    /// Per waiting task, in board order.
    pub waiting: Vec<WaitingStatus>,
    /// Per pool.
    pub pools: Vec<PoolBudget>,
    /// Per profile, declared vs learned footprint (context per request).
    pub footprints: Vec<ProfileLearning>,
    /// Tasks Hermes holds as blocked, with its reason: they neither run nor wait, so without
    /// this a board whose workers all died reads "0 running, 0 waiting".
    pub blocked: Vec<crate::adapters::board_sqlite::BlockedTask>,
    /// The raw observation.
    pub observed: Observed,
    /// The raw decision.
    pub decision: Decision,
}

fn report(
    policy: &crate::governor::Policy,
    observed: Observed,
    state: &GovernorState,
) -> StatusReport {
    let decision = decide(policy, &observed.observation);
    let obs = &observed.observation;
    let profiles = policy
        .profiles
        .iter()
        .map(|p| ProfileStatus {
            profile: p.id.to_string(),
            running: obs
                .running
                .iter()
                .filter(|r| r.assignee == p.id.as_str())
                .count(),
            waiting: obs
                .waiting
                .iter()
                .filter(|w| w.profile.as_ref() == Some(&p.id))
                .count(),
        })
        .collect();
    let mut waiting = Vec::new();
    for w in &obs.waiting {
        let (state, reason) = if decision.release.iter().any(|r| r.id == w.id) {
            (
                "release".to_owned(),
                "fits now; the next tick releases it".to_owned(),
            )
        } else if let Some(h) = decision.held.iter().find(|h| h.id == w.id) {
            (
                h.reason.name().to_owned(),
                format!("{} [{}]", h.reason.plain(), h.reason.code()),
            )
        } else {
            ("unknown".to_owned(), String::new())
        };
        waiting.push(WaitingStatus {
            id: w.id.to_string(),
            profile: w.profile.as_ref().map(|p| p.to_string()),
            state,
            reason,
        });
    }
    StatusReport {
        profiles,
        waiting,
        pools: decision.pools.clone(),
        footprints: learning::report(policy, state),
        blocked: Vec::new(),
        observed,
        decision,
    }
}

fn print_human(out: &mut dyn Write, r: &StatusReport) -> std::io::Result<()> {
    for b in &r.pools {
        match (b.projected_bytes, b.ceiling_bytes) {
            (Some(p), Some(c)) => writeln!(out, "pool {}: {p} charged of {c} ceiling", b.name)?,
            _ => writeln!(
                out,
                "pool {}: unknown ({})",
                b.name,
                b.stale.as_deref().unwrap_or("no sample")
            )?,
        }
        // Where the engine keeps a KV pool or fixed slots, that is the limit that binds: say
        // it in its own unit.
        if let Some(c) = b.ceiling_kv_tokens {
            writeln!(
                out,
                "pool {}: {} KV tokens charged of {c} ceiling (the engine's KV cache)",
                b.name, b.charged_kv_tokens
            )?;
        }
        if let Some(slots) = b.slots {
            writeln!(
                out,
                "pool {}: {} engine slots charged of {slots}",
                b.name, b.slots_used_after
            )?;
        }
    }
    writeln!(out, "{:<24} {:>8} {:>8}", "profile", "running", "waiting")?;
    for p in &r.profiles {
        writeln!(out, "{:<24} {:>8} {:>8}", p.profile, p.running, p.waiting)?;
    }
    writeln!(
        out,
        "{:<24} {:>8} {:>10} {:>10} {:>10}",
        "footprint (tokens/req)", "tasks", "declared", "max seen", "learned"
    )?;
    for f in &r.footprints {
        let learned = f
            .learned_tokens
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        let flag = if f.exceeds_declaration {
            "  EXCEEDS its declaration: raise max_context_tokens"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<24} {:>8} {:>10} {:>10} {:>10}{flag}",
            f.profile, f.samples, f.declared_tokens, f.max_tokens, learned
        )?;
    }
    for w in &r.waiting {
        let profile = w.profile.as_deref().unwrap_or("-");
        writeln!(out, "  {} ({profile}): {}", w.id, w.reason)?;
    }
    if !r.blocked.is_empty() {
        writeln!(
            out,
            "blocked by Hermes ({}): they neither run nor wait; fix the cause, then `hermes kanban unblock <id>`",
            r.blocked.len()
        )?;
        for b in &r.blocked {
            writeln!(
                out,
                "  {} ({}): {}",
                b.id,
                b.assignee.as_deref().unwrap_or("-"),
                b.reason.as_deref().unwrap_or("no reason recorded")
            )?;
        }
    }
    for e in &r.observed.telemetry_errors {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

/// Run `status`.
///
/// # Errors
///
/// Config, board or state failures.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let setup = setup::load_checked(&args.config, false)?;
    let mut adapters = setup.tick_adapters(setup.quiet_board()?)?;
    let mut state = SqliteState::load_read_only(&setup.state_dir).map_err(port_error)?;
    let mut ports = adapters.ports();
    let opts = TickOptions {
        dual_dispatcher: setup.dual_dispatcher(),
        ..TickOptions::default()
    };
    let observed = observe(&setup.policy, &mut ports, &mut state, &opts).map_err(port_error)?;
    let mut r = report(&setup.policy, observed, &state);
    r.blocked = adapters.board.blocked().map_err(anyhow::Error::new)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = if args.json {
        serde_json::to_string(&r)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}"))
    } else {
        print_human(&mut out, &r)
    };
    Ok(ExitCode::SUCCESS)
}
