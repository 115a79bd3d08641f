//! The repository's ready profiles, which `plan` with no profile flag plans, read as a
//! config reads its `profiles_dir` files: through the config's two stages
//! ([`crate::config::load_profile_file`]), so a profile file means the same to both.

use super::{Engine, PlanProfile};
use crate::config::{
    DEFAULT_HEADROOM, DEFAULT_MAX_STALENESS, DEFAULT_POOL, DEFAULT_RESERVE, EngineConfig,
    GpuConfig, GpuSelector, PoolConfig, Telemetry,
};

/// The repository's ready profiles, embedded: what `plan` with no profile flag plans.
pub(super) const READY_PROFILES: &[(&str, &str)] = &[
    (
        "profiles/coder-32k-qwen2.5-coder-32b.toml",
        include_str!("../../../profiles/coder-32k-qwen2.5-coder-32b.toml"),
    ),
    (
        "profiles/classifier-8k-llama-3.1-8b.toml",
        include_str!("../../../profiles/classifier-8k-llama-3.1-8b.toml"),
    ),
    (
        "profiles/reasoning-32k-deepseek-r1-distill-qwen-32b.toml",
        include_str!("../../../profiles/reasoning-32k-deepseek-r1-distill-qwen-32b.toml"),
    ),
];

/// The profiles of one profile file's text (`file` names it in errors), charged on `engine`.
pub(super) fn parse_profile(
    file: &str,
    text: &str,
    engine: Engine,
) -> anyhow::Result<Vec<PlanProfile>> {
    let profiles = crate::config::load_profile_file(file, text, &planning_pool(engine))?;
    Ok(profiles.iter().map(PlanProfile::from_config).collect())
}

/// The pool a profile file is read against: the planned engine on a GPU of unknown size, so
/// validation checks and charges each profile but leaves fitting it to the plan.
fn planning_pool(engine: Engine) -> PoolConfig {
    PoolConfig {
        name: DEFAULT_POOL.to_owned(),
        gpu: GpuConfig {
            devices: vec![GpuSelector::Index(0)],
            telemetry: Telemetry::Static,
            memory_total: None,
            baseline: None,
            headroom: DEFAULT_HEADROOM,
            reserve: DEFAULT_RESERVE,
        },
        engine: EngineConfig {
            kind: engine,
            url: String::new(),
            model: None,
            kv_capacity_tokens: None,
            slots: None,
            slot_context_tokens: None,
            max_staleness: DEFAULT_MAX_STALENESS,
        },
    }
}

/// The ready profiles, charged on `engine`.
pub(super) fn ready_profiles(engine: Engine) -> anyhow::Result<Vec<PlanProfile>> {
    let mut out = Vec::new();
    for (file, text) in READY_PROFILES {
        out.extend(parse_profile(file, text, engine)?);
    }
    Ok(out)
}
