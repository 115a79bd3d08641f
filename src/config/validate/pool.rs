//! One capacity pool from its `gpu` and `engine` tables.

use super::collector::Collector;
use super::parsers::{
    choice, headroom, int_at_least, lookup_model, positive_duration, u32_at_least,
};
use crate::config::raw::{FileText, RawEngine, RawGpu};
use crate::config::units::{format_size, parse_size, show};
use crate::config::*;

fn selectors(
    val: &toml::Value,
    one: impl Fn(&toml::Value) -> Result<GpuSelector, String>,
) -> Result<Vec<GpuSelector>, String> {
    match val {
        toml::Value::Array(a) if !a.is_empty() => a.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// One pool from its `gpu` and `engine` tables.
pub(super) fn pool(
    v: &mut Collector,
    f: &FileText,
    name: &str,
    prefix: &str,
    g: &RawGpu,
    e: &RawEngine,
) -> PoolConfig {
    let gpu_key = |s: &str| format!("{prefix}gpu.{s}");
    let eng_key = |s: &str| format!("{prefix}engine.{s}");

    let index = v.get(f, &gpu_key("index"), &g.index, |val| {
        selectors(val, |x| match x {
            toml::Value::Integer(n) if *n >= 0 && *n <= i64::from(u32::MAX) => {
                Ok(GpuSelector::Index(*n as u32))
            }
            other => Err(format!(
                "{} is not a GPU index; set a non-negative integer as nvidia-smi lists them (or a list such as [0, 1])",
                show(other)
            )),
        })
    });
    let uuid = v.get(f, &gpu_key("uuid"), &g.uuid, |val| {
        selectors(val, |x| match x {
            toml::Value::String(s) if !s.is_empty() => Ok(GpuSelector::Uuid(s.clone())),
            other => Err(format!(
                "{} is not a GPU UUID; set the quoted UUID `nvidia-smi -L` prints (\"GPU-…\")",
                show(other)
            )),
        })
    });
    let devices = match (index, uuid) {
        (Some(_), Some(_)) => {
            let src = v.src(&gpu_key("uuid"), &Source::Default);
            v.err(
                src,
                gpu_key("uuid"),
                "set either index or uuid, not both; remove one",
            );
            vec![GpuSelector::Index(0)]
        }
        (Some(i), None) => i,
        (None, Some(u)) => u,
        (None, None) => vec![GpuSelector::Index(0)],
    };

    let telemetry = v
        .get(f, &gpu_key("telemetry"), &g.telemetry, |val| {
            let fix =
                "set telemetry = \"nvml\", \"host\", \"static\" or { replay = \"samples.jsonl\" }";
            match val {
                toml::Value::String(s) => match s.as_str() {
                    "nvml" => Ok(Telemetry::Nvml),
                    "host" => Ok(Telemetry::Host),
                    "static" => Ok(Telemetry::Static),
                    other => Err(format!("\"{other}\" is not a telemetry source; {fix}")),
                },
                toml::Value::Table(t) if t.len() == 1 => match t.get("replay") {
                    Some(toml::Value::String(p)) => Ok(Telemetry::Replay(f.dir().join(p))),
                    _ => Err(format!("{} is not a telemetry source; {fix}", show(val))),
                },
                other => Err(format!("{} is not a telemetry source; {fix}", show(other))),
            }
        })
        .unwrap_or(Telemetry::Nvml);
    let memory_total = v.get(f, &gpu_key("memory_total"), &g.memory_total, |val| {
        let b = parse_size(val)?;
        if b.get() == 0 {
            Err("\"0B\" leaves nothing to govern; set the GPU's memory, e.g. \"80GiB\"".to_owned())
        } else {
            Ok(b)
        }
    });
    let baseline = v.get(f, &gpu_key("baseline"), &g.baseline, parse_size);
    if telemetry != Telemetry::Static {
        for (key, raw) in [("memory_total", &g.memory_total), ("baseline", &g.baseline)] {
            if let Some(s) = raw {
                v.err(
                    f.source(&s.span()),
                    gpu_key(key),
                    format!(
                        "is only read with telemetry = \"static\" (this pool measures it); remove {key} or set telemetry = \"static\""
                    ),
                );
            }
        }
    } else if g.memory_total.is_none() {
        let src = v.src(&gpu_key("telemetry"), &Source::Default);
        v.err(
            src,
            gpu_key("memory_total"),
            "telemetry = \"static\" needs memory_total; set it to the GPU's memory, e.g. memory_total = \"80GiB\"",
        );
    }
    let headroom = v
        .get(f, &gpu_key("headroom"), &g.headroom, |&h| headroom(h))
        .unwrap_or(DEFAULT_HEADROOM);
    let reserve = v
        .get(f, &gpu_key("reserve"), &g.reserve, parse_size)
        .unwrap_or(DEFAULT_RESERVE);
    if let Some(total) = memory_total {
        if reserve >= total {
            let src = v.src(&gpu_key("reserve"), &Source::Default);
            v.err(
                src,
                gpu_key("reserve"),
                format!(
                    "{} is not below memory_total = {}; set a reserve smaller than the GPU, e.g. \"1GiB\"",
                    format_size(reserve),
                    format_size(total)
                ),
            );
        }
        if let Some(b) = baseline.filter(|b| *b >= total) {
            let src = v.src(&gpu_key("baseline"), &Source::Default);
            v.err(
                src,
                gpu_key("baseline"),
                format!(
                    "{} is not below memory_total = {}; set what the GPU holds with no governed task (weights, other tenants)",
                    format_size(b),
                    format_size(total)
                ),
            );
        }
    }

    let kinds: Vec<(&str, EngineKind)> = EngineKind::ALL.iter().map(|k| (k.name(), *k)).collect();
    let kind = v
        .get(f, &eng_key("kind"), &e.kind, |s: &String| choice(s, &kinds))
        .unwrap_or(EngineKind::Vllm);
    let url = v.get(f, &eng_key("url"), &e.url, |s: &String| {
        if s == NO_ENGINE_URL {
            Ok(s.clone())
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(s.trim_end_matches('/').to_owned())
        } else {
            Err(format!(
                "\"{s}\" is not an http(s) URL; set the engine's base URL, e.g. \"http://127.0.0.1:8000\", or \"none\" when this host has no engine endpoint to read"
            ))
        }
    });
    let url = match (url, kind.default_url()) {
        (Some(u), _) => u,
        (None, Some(u)) => u.to_owned(),
        (None, None) => {
            if e.url.is_none() {
                let src = v.src(&eng_key("kind"), &Source::Default);
                v.err(
                    src,
                    eng_key("url"),
                    "kind = \"openai\" has no usual port; set url to the server's base URL, e.g. \"http://127.0.0.1:8000\", or \"none\" when this host has no engine endpoint to read",
                );
            }
            String::new()
        }
    };
    let model = v.get(f, &eng_key("model"), &e.model, |s: &String| {
        lookup_model(s).map(|m| m.name.to_owned())
    });
    let kv_capacity_tokens = v.get(
        f,
        &eng_key("kv_capacity_tokens"),
        &e.kv_capacity_tokens,
        int_at_least(1),
    );
    let slots = v.get(f, &eng_key("slots"), &e.slots, u32_at_least(1));
    let slot_context_tokens = v.get(
        f,
        &eng_key("slot_context_tokens"),
        &e.slot_context_tokens,
        int_at_least(1),
    );
    let max_staleness = v
        .get(
            f,
            &eng_key("max_staleness"),
            &e.max_staleness,
            positive_duration,
        )
        .unwrap_or(DEFAULT_MAX_STALENESS);

    PoolConfig {
        name: name.to_owned(),
        gpu: GpuConfig {
            devices,
            telemetry,
            memory_total,
            baseline,
            headroom,
            reserve,
        },
        engine: EngineConfig {
            kind,
            url,
            model,
            kv_capacity_tokens,
            slots,
            slot_context_tokens,
            max_staleness,
        },
    }
}
