//! Checks across profiles: duplicate names and lanes, lanes that are Hermes profiles, and
//! guarantees that must fit their pool together.

use super::collector::Collector;
use crate::config::*;
use crate::governor::admission::apply_headroom;
use std::collections::HashMap;

/// A profile's name and lane, kept even when the rest of it is broken, for the cross checks.
pub(super) struct Ident {
    pub(super) name: ProfileId,
    pub(super) lane: String,
    pub(super) source: Source,
    pub(super) lane_source: Source,
}

/// Duplicate profiles and lanes, lanes that are profiles (governed or Hermes's own).
pub(super) fn check_names_and_lanes(
    v: &mut Collector,
    profiles: &[Ident],
    home: &Path,
    hermes_profiles: &BTreeSet<String>,
) {
    // Maps instead of scans of the profiles before each one: linear in the number of
    // profiles (nested scans made 16,000 profiles take seconds).
    let mut by_name: HashMap<&str, &Ident> = HashMap::with_capacity(profiles.len());
    for p in profiles {
        by_name.entry(p.name.as_str()).or_insert(p);
    }
    let mut lanes_seen: HashMap<&str, &Ident> = HashMap::with_capacity(profiles.len());
    for p in profiles {
        let key = |f: &str| format!("profiles[{}].{f}", p.name);
        let lane_src = p.lane_source.clone();
        // `by_name` holds each name's first declaration: another one is a duplicate.
        let first_of_name = by_name.get(p.name.as_str()).copied();
        if let Some(first) = first_of_name.filter(|f| !std::ptr::eq(*f, p)) {
            v.err(
                p.source.clone(),
                key("name"),
                format!(
                    "profile \"{}\" is declared twice (first at {}); keep one, or govern another Hermes profile here",
                    p.name, first.source
                ),
            );
        }
        if let Some(first) = lanes_seen.get(p.lane.as_str()) {
            v.err(
                lane_src.clone(),
                key("lane"),
                format!(
                    "lane \"{}\" is also profile \"{}\"'s lane ({}); each profile needs its own lane: set lane = \"{}@gpu\"",
                    p.lane, first.name, first.source, p.name
                ),
            );
        }
        lanes_seen.entry(p.lane.as_str()).or_insert(p);
        if let Some(q) = by_name.get(p.lane.as_str()) {
            v.err(
                lane_src,
                key("lane"),
                format!(
                    "lane \"{}\" is the governed profile \"{}\": Hermes would dispatch held tasks itself; set lane = \"{}@gpu\"",
                    p.lane, q.name, p.name
                ),
            );
        } else if p.lane == "default" || hermes_profiles.contains(&p.lane) {
            let which = if p.lane == "default" {
                "\"default\" always exists".to_owned()
            } else {
                home.join("profiles").join(&p.lane).display().to_string()
            };
            v.err(
                lane_src,
                key("lane"),
                format!(
                    "lane \"{}\" is a real Hermes profile ({which}): Hermes would dispatch held tasks itself; set lane = \"{}@gpu\" (any name that is not a profile)",
                    p.lane, p.name
                ),
            );
        }
    }
}

/// The room all `guaranteed` tasks of a pool's profiles keep must fit the pool, or the
/// guarantee is a promise the governor cannot keep.
pub(super) fn check_guaranteed(v: &mut Collector, pool: &PoolConfig, profiles: &[ProfileConfig]) {
    let mine: Vec<&ProfileConfig> = profiles
        .iter()
        .filter(|p| p.pool == pool.name && p.guaranteed > 0)
        .collect();
    let Some(last) = mine.last() else {
        return;
    };
    let sum = |f: &dyn Fn(&ProfileConfig) -> u64| -> u64 {
        mine.iter()
            .map(|p| u64::from(p.guaranteed).saturating_mul(f(p)))
            .fold(0u64, u64::saturating_add)
    };
    let who: Vec<String> = mine
        .iter()
        .map(|p| format!("{} × {}", p.guaranteed, p.name))
        .collect();
    let who = who.join(" + ");
    let mut over = Vec::new();
    if pool.engine.kind.kv_placement() == KvPlacement::EnginePool {
        if let Some(cap) = pool.engine.kv_capacity_tokens {
            let ceiling = apply_headroom(cap, pool.gpu.headroom);
            let need = sum(&|p| p.declared.kv_tokens);
            if need > ceiling {
                over.push(format!("{need} KV tokens > {ceiling} allowed"));
            }
        }
    } else if let Some(total) = pool.gpu.memory_total {
        let room = Bytes(apply_headroom(total.get(), pool.gpu.headroom))
            .saturating_sub(pool.gpu.reserve)
            .saturating_sub(pool.gpu.baseline.unwrap_or(Bytes(0)));
        let need = Bytes(sum(&|p| p.declared.total_bytes().get()));
        if need > room {
            over.push(format!("{need} > {room} under the ceiling"));
        }
    }
    if let Some(slots) = pool.engine.slots {
        let need = sum(&|p| u64::from(p.declared.slots));
        if need > u64::from(slots) {
            over.push(format!("{need} slots > {slots}"));
        }
    }
    if !over.is_empty() {
        let key = format!("profiles[{}].guaranteed", last.name);
        let src = v.src(&key, &last.source);
        v.err(
            src,
            key,
            format!(
                "the room guaranteed in pool \"{}\" ({who}) does not fit: {}; lower guaranteed so the guarantees fit together",
                pool.name,
                over.join(", ")
            ),
        );
    }
}
