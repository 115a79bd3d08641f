//! The effective config written back as TOML, optionally with a `# <source>` comment on
//! every value (what `check-config` prints). The output reads back to the same [`Config`]
//! (a unit test checks the round trip). Pure: builds a string.

use super::units::{format_duration, format_size};
use super::{Config, DEFAULT_POOL, GpuSelector, PoolConfig, Source, Telemetry};
use std::fmt::Write as _;

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

struct Out<'a> {
    buf: String,
    cfg: &'a Config,
    annotate: bool,
}

impl Out<'_> {
    fn table(&mut self, name: &str) {
        if !self.buf.is_empty() {
            self.buf.push('\n');
        }
        let _ = writeln!(self.buf, "[{name}]");
    }

    fn array_table(&mut self, name: &str) {
        if !self.buf.is_empty() {
            self.buf.push('\n');
        }
        let _ = writeln!(self.buf, "[[{name}]]");
    }

    /// `key = value`, annotated with the source found under the first of `source_keys`.
    fn kv(&mut self, key: &str, value: String, source_keys: &[String]) {
        let line = format!("{key} = {value}");
        if self.annotate {
            let src = source_keys
                .iter()
                .find_map(|k| self.cfg.sources.get(k))
                .unwrap_or(&Source::Default);
            let _ = writeln!(self.buf, "{line:<44} # {src}");
        } else {
            let _ = writeln!(self.buf, "{line}");
        }
    }
}

/// Render `cfg` as TOML.
pub(crate) fn to_toml(cfg: &Config, annotate: bool) -> String {
    let mut o = Out {
        buf: String::new(),
        cfg,
        annotate,
    };
    if annotate {
        let from = match &cfg.path {
            Some(p) => format!("config {} + defaults, env and flags", p.display()),
            None => "built-in defaults, env and flags (no config file)".to_owned(),
        };
        let _ = writeln!(o.buf, "# Effective config: {from}.");
    }

    o.table("hermes");
    if let Some(bin) = &cfg.hermes.bin {
        o.kv("bin", q(&bin.display().to_string()), &["hermes.bin".into()]);
    }
    o.kv(
        "home",
        q(&cfg.hermes.home.display().to_string()),
        &["hermes.home".into()],
    );
    o.kv("board", q(&cfg.hermes.board), &["hermes.board".into()]);
    if let Some(m) = &cfg.hermes.max_semantics {
        o.kv("max_semantics", q(m), &["hermes.max_semantics".into()]);
    }

    let single = cfg.pools.len() == 1 && cfg.pools[0].name == DEFAULT_POOL;
    for p in &cfg.pools {
        pool(&mut o, p, single);
    }

    let l = &cfg.latency;
    o.table("latency");
    let lk = |k: &str| vec![format!("latency.{k}")];
    o.kv("ttft_slo", q(&format_duration(l.ttft_slo)), &lk("ttft_slo"));
    let signal = match l.signal {
        super::LatencySignal::Engine => "engine",
        super::LatencySignal::Probe => "probe",
    };
    o.kv("signal", q(signal), &lk("signal"));
    o.kv("min_limit", l.min_limit.to_string(), &lk("min_limit"));
    o.kv("max_limit", l.max_limit.to_string(), &lk("max_limit"));
    o.kv("backoff", format!("{:?}", l.backoff), &lk("backoff"));
    o.kv("dwell", q(&format_duration(l.dwell)), &lk("dwell"));

    let d = &cfg.dispatch;
    o.table("dispatch");
    let dk = |k: &str| vec![format!("dispatch.{k}")];
    o.kv("interval", q(&format_duration(d.interval)), &dk("interval"));
    if let Some(m) = d.max_running {
        o.kv("max_running", m.to_string(), &dk("max_running"));
    }
    o.kv("max_wait", q(&format_duration(d.max_wait)), &dk("max_wait"));
    o.kv(
        "state_dir",
        q(&d.state_dir.display().to_string()),
        &dk("state_dir"),
    );
    o.kv("timeout", q(&format_duration(d.timeout)), &dk("timeout"));

    o.table("http");
    o.kv(
        "public",
        cfg.http.public.to_string(),
        &["http.public".into()],
    );

    for p in &cfg.profiles {
        o.array_table("profiles");
        let pk = |k: &str| vec![format!("profiles[{}].{k}", p.name)];
        o.kv("name", q(&p.name.0), &pk("name"));
        o.kv("lane", q(&p.lane), &pk("lane"));
        if let Some(m) = &p.model {
            o.kv("model", q(m), &pk("model"));
            o.kv("kv_dtype", q(p.kv_dtype.name()), &pk("kv_dtype"));
        }
        if let Some(b) = p.kv_bytes_per_token {
            o.kv(
                "kv_bytes_per_token",
                b.to_string(),
                &pk("kv_bytes_per_token"),
            );
        }
        o.kv(
            "max_context_tokens",
            p.max_context_tokens.to_string(),
            &pk("max_context_tokens"),
        );
        o.kv(
            "requests_per_task",
            p.requests_per_task.to_string(),
            &pk("requests_per_task"),
        );
        if let Some(m) = p.max_parallel {
            o.kv("max_parallel", m.to_string(), &pk("max_parallel"));
        }
        o.kv("guaranteed", p.guaranteed.to_string(), &pk("guaranteed"));
        o.kv(
            "extra_bytes",
            q(&format_size(p.extra_bytes)),
            &pk("extra_bytes"),
        );
        let fp = match p.footprint {
            crate::governor::FootprintMode::Declared => "declared",
            crate::governor::FootprintMode::Learned => "learned",
            crate::governor::FootprintMode::Max => "max",
        };
        o.kv("footprint", q(fp), &pk("footprint"));
        o.kv("pool", q(&p.pool), &pk("pool"));
        if annotate {
            let w = &p.declared;
            let _ = writeln!(
                o.buf,
                "# worst case per task: {} KV + {} extra, {} KV tokens, {} slot(s); declared at {}",
                w.kv_bytes, w.extra_bytes, w.kv_tokens, w.slots, p.source
            );
        }
    }
    o.buf
}

fn pool(o: &mut Out<'_>, p: &PoolConfig, single: bool) {
    let (gpu_table, eng_table) = if single {
        ("gpu".to_owned(), "engine".to_owned())
    } else {
        (
            format!("pools.{}.gpu", p.name),
            format!("pools.{}.engine", p.name),
        )
    };
    // Sources were recorded under `gpu.*` for the shorthand pool, `pools.NAME.gpu.*` else.
    let keys = |section: &str, k: &str| {
        let mut v = vec![format!("pools.{}.{section}.{k}", p.name)];
        if p.name == DEFAULT_POOL {
            v.push(format!("{section}.{k}"));
        }
        v
    };
    let g = &p.gpu;
    o.table(&gpu_table);
    let (indices, uuids): (Vec<_>, Vec<_>) = g
        .devices
        .iter()
        .partition(|d| matches!(d, GpuSelector::Index(_)));
    let list = |items: Vec<String>| {
        if items.len() == 1 {
            items[0].clone()
        } else {
            format!("[{}]", items.join(", "))
        }
    };
    if !uuids.is_empty() {
        let items = uuids
            .iter()
            .filter_map(|d| match d {
                GpuSelector::Uuid(u) => Some(q(u)),
                GpuSelector::Index(_) => None,
            })
            .collect();
        o.kv("uuid", list(items), &keys("gpu", "uuid"));
    } else {
        let items = indices
            .iter()
            .filter_map(|d| match d {
                GpuSelector::Index(i) => Some(i.to_string()),
                GpuSelector::Uuid(_) => None,
            })
            .collect();
        o.kv("index", list(items), &keys("gpu", "index"));
    }
    let telemetry = match &g.telemetry {
        Telemetry::Nvml => q("nvml"),
        Telemetry::Host => q("host"),
        Telemetry::Static => q("static"),
        Telemetry::Replay(path) => format!("{{ replay = {} }}", q(&path.display().to_string())),
    };
    o.kv("telemetry", telemetry, &keys("gpu", "telemetry"));
    if let Some(t) = g.memory_total {
        o.kv(
            "memory_total",
            q(&format_size(t)),
            &keys("gpu", "memory_total"),
        );
    }
    if let Some(b) = g.baseline {
        o.kv("baseline", q(&format_size(b)), &keys("gpu", "baseline"));
    }
    o.kv(
        "headroom",
        format!("{:?}", g.headroom),
        &keys("gpu", "headroom"),
    );
    o.kv(
        "reserve",
        q(&format_size(g.reserve)),
        &keys("gpu", "reserve"),
    );

    let e = &p.engine;
    o.table(&eng_table);
    o.kv("kind", q(e.kind.name()), &keys("engine", "kind"));
    o.kv("url", q(&e.url), &keys("engine", "url"));
    if let Some(m) = &e.model {
        o.kv("model", q(m), &keys("engine", "model"));
    }
    if let Some(t) = e.kv_capacity_tokens {
        o.kv(
            "kv_capacity_tokens",
            t.to_string(),
            &keys("engine", "kv_capacity_tokens"),
        );
    }
    if let Some(s) = e.slots {
        o.kv("slots", s.to_string(), &keys("engine", "slots"));
    }
    if let Some(s) = e.slot_context_tokens {
        o.kv(
            "slot_context_tokens",
            s.to_string(),
            &keys("engine", "slot_context_tokens"),
        );
    }
    o.kv(
        "max_staleness",
        q(&format_duration(e.max_staleness)),
        &keys("engine", "max_staleness"),
    );
}
