//! The profile file schema (`profiles/*.toml`) and the repository's ready profiles, which
//! `plan` with no profile flag plans.

use super::input::{lookup_model, parse_dtype, parse_size};
use super::{PlanProfile, usage};
use crate::catalog::KvDtype;
use crate::governor::FootprintMode;
use serde::Deserialize;

/// One profile of a profile file (`profiles/*.toml`, one `[[profiles]]` table or the keys
/// alone): the schema the config loader reads too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    lane: Option<String>,
    model: Option<String>,
    kv_bytes_per_token: Option<u64>,
    kv_dtype: Option<String>,
    max_context_tokens: u64,
    requests_per_task: Option<u32>,
    max_parallel: Option<u32>,
    guaranteed: Option<u32>,
    extra_bytes: Option<String>,
    footprint: Option<FootprintMode>,
    pool: Option<String>,
}

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

/// Parse one profile file's text (`file` names it in errors).
pub(super) fn parse_profile(file: &str, text: &str) -> anyhow::Result<PlanProfile> {
    /// The `[[profiles]]` form, which the ready profiles use so they paste into a config.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tables {
        profiles: Vec<ProfileFile>,
    }
    let raw: ProfileFile = match toml::from_str::<Tables>(text) {
        Ok(Tables { profiles }) if profiles.len() == 1 => profiles[0].clone(),
        // A bare profile (or anything else: its error then names the problem).
        _ => toml::from_str(text).map_err(|e| usage(format!("{file}: {e}")))?,
    };
    let kv_dtype = match &raw.kv_dtype {
        Some(s) => parse_dtype(&format!("{file}: kv_dtype"), s)?,
        None => KvDtype::F16,
    };
    let (model, kv_bytes_per_token) = match (&raw.model, raw.kv_bytes_per_token) {
        (Some(name), None) => {
            let m = lookup_model(&format!("{file}: model"), name)?;
            (Some(m), m.kv_bytes_per_token(kv_dtype))
        }
        (None, Some(b)) if b > 0 => (None, b),
        _ => {
            return Err(usage(format!(
                "{file}: give exactly one of model (a catalog name) or kv_bytes_per_token (> 0)"
            )));
        }
    };
    if raw.max_context_tokens == 0 {
        return Err(usage(format!(
            "{file}: max_context_tokens must be at least 1"
        )));
    }
    let extra_bytes = match &raw.extra_bytes {
        Some(s) => parse_size(&format!("{file}: extra_bytes"), s)?,
        None => 0,
    };
    let _ = raw.pool; // Plan puts every profile in the one pool it models.
    Ok(PlanProfile {
        lane: raw.lane.unwrap_or_else(|| format!("{}@gpu", raw.name)),
        name: raw.name,
        model,
        kv_dtype,
        kv_bytes_per_token,
        max_context: raw.max_context_tokens,
        requests_per_task: raw.requests_per_task.unwrap_or(1).max(1),
        max_parallel: raw.max_parallel,
        guaranteed: raw.guaranteed.unwrap_or(0),
        extra_bytes,
        footprint: raw.footprint.unwrap_or_default(),
        declared: None,
    })
}

pub(super) fn ready_profiles() -> anyhow::Result<Vec<PlanProfile>> {
    READY_PROFILES
        .iter()
        .map(|(file, text)| parse_profile(file, text))
        .collect()
}
