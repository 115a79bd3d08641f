//! The effective config written back as TOML, optionally with a `# <source>` comment on
//! every value and every optional key that is unset as a comment saying what unset means
//! (what `check-config` prints; the words come from `keys`). The output reads back to the same
//! [`Config`] (a unit test checks the round trip). Pure: builds a string.

use super::keys::unset_text;
use super::units::{format_duration, format_size};
use super::{Config, DEFAULT_POOL, GpuSelector, PoolConfig, Source, Telemetry};
use std::fmt::Write as _;

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// The TOML text being written, and the config it describes (`annotate`: with each key's
/// source as a comment).
struct TomlWriter<'a> {
    buf: String,
    cfg: &'a Config,
    annotate: bool,
}

impl TomlWriter<'_> {
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

    /// `# key = (unset: what that means)` for the optional key `id` (`engine.slots`), when
    /// annotating: so `check-config` shows every key, set or not.
    fn unset(&mut self, key: &str, id: &str) {
        if self.annotate {
            let _ = writeln!(self.buf, "# {key} = (unset: {})", unset_text(id));
        }
    }

    /// `key = value`, annotated with the source found under the first of `source_keys`.
    fn kv(&mut self, key: &str, value: String, source_keys: &[String]) {
        self.kv_noted(key, value, source_keys, |_| None);
    }

    /// [`Self::kv`], with `note(source)` after the source when it says something.
    fn kv_noted(
        &mut self,
        key: &str,
        value: String,
        source_keys: &[String],
        note: impl Fn(&Source) -> Option<&'static str>,
    ) {
        let line = format!("{key} = {value}");
        if self.annotate {
            let src = source_keys
                .iter()
                .find_map(|k| self.cfg.sources.get(k))
                .unwrap_or(&Source::Default);
            match note(src) {
                Some(n) => writeln!(self.buf, "{line:<44} # {src}; {n}"),
                None => writeln!(self.buf, "{line:<44} # {src}"),
            }
            .ok();
        } else {
            let _ = writeln!(self.buf, "{line}");
        }
    }
}

/// Render `cfg` as TOML.
pub(crate) fn to_toml(cfg: &Config, annotate: bool) -> String {
    let mut o = TomlWriter {
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
        // profiles_dir is not written as a key: its profiles are written out below, and
        // reading them twice would declare each one twice.
        match cfg.sources.get("profiles_dir") {
            Some(src) => {
                let _ = writeln!(
                    o.buf,
                    "# profiles_dir = (set at {src}; its profiles are written out below as [[profiles]])"
                );
            }
            None => o.unset("profiles_dir", "profiles_dir"),
        }
    }

    o.table("hermes");
    match &cfg.hermes.bin {
        Some(bin) => o.kv("bin", q(&bin.display().to_string()), &["hermes.bin".into()]),
        None => o.unset("bin", "hermes.bin"),
    }
    o.kv(
        "home",
        q(&cfg.hermes.home.display().to_string()),
        &["hermes.home".into()],
    );
    o.kv("board", q(&cfg.hermes.board), &["hermes.board".into()]);
    match &cfg.hermes.max_semantics {
        Some(m) => o.kv(
            "max_semantics",
            q(m.name()),
            &["hermes.max_semantics".into()],
        ),
        None => o.unset("max_semantics", "hermes.max_semantics"),
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
        super::LatencySignal::Proxy => "proxy",
    };
    // Left at its default, the signal follows the proxy, and `run --proxy-listen` turns the
    // proxy on where the config does not: say so rather than show `engine` as what runs.
    let proxy_off = cfg.proxy.listen.is_none();
    o.kv_noted("signal", q(signal), &lk("signal"), |src| {
        (proxy_off && *src == Source::Default).then_some(
            "`run --proxy-listen` makes it \"proxy\" (the agents' calls through the pass-through)",
        )
    });
    o.kv("min_limit", l.min_limit.to_string(), &lk("min_limit"));
    o.kv("max_limit", l.max_limit.to_string(), &lk("max_limit"));
    o.kv("backoff", format!("{:?}", l.backoff), &lk("backoff"));
    o.kv("dwell", q(&format_duration(l.dwell)), &lk("dwell"));

    let d = &cfg.dispatch;
    o.table("dispatch");
    let dk = |k: &str| vec![format!("dispatch.{k}")];
    o.kv("interval", q(&format_duration(d.interval)), &dk("interval"));
    match d.max_running {
        Some(m) => o.kv("max_running", m.to_string(), &dk("max_running")),
        None => o.unset("max_running", "dispatch.max_running"),
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

    let px = &cfg.proxy;
    o.table("proxy");
    let xk = |k: &str| vec![format!("proxy.{k}")];
    match px.listen {
        Some(a) => o.kv("listen", q(&a.to_string()), &xk("listen")),
        None => o.unset("listen", "proxy.listen"),
    }
    o.kv("public", px.public.to_string(), &xk("public"));
    o.kv("max_body", q(&format_size(px.max_body)), &xk("max_body"));
    o.kv("drain", q(&format_duration(px.drain)), &xk("drain"));

    for p in &cfg.profiles {
        o.array_table("profiles");
        let pk = |k: &str| vec![format!("profiles[{}].{k}", p.name)];
        o.kv("name", q(&p.name.0), &pk("name"));
        o.kv("lane", q(&p.lane), &pk("lane"));
        if let Some(m) = &p.model {
            o.kv("model", q(m), &pk("model"));
            o.kv("kv_dtype", q(p.kv_dtype.name()), &pk("kv_dtype"));
        } else {
            o.unset("model", "profiles.model");
        }
        match p.kv_bytes_per_token {
            Some(b) => o.kv(
                "kv_bytes_per_token",
                b.to_string(),
                &pk("kv_bytes_per_token"),
            ),
            None => o.unset("kv_bytes_per_token", "profiles.kv_bytes_per_token"),
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
        match p.max_parallel {
            Some(m) => o.kv("max_parallel", m.to_string(), &pk("max_parallel")),
            None => o.unset("max_parallel", "profiles.max_parallel"),
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

fn pool(o: &mut TomlWriter<'_>, p: &PoolConfig, single: bool) {
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
        o.unset("uuid", "gpu.uuid");
    }
    let telemetry = match &g.telemetry {
        Telemetry::Nvml => q("nvml"),
        Telemetry::Host => q("host"),
        Telemetry::Static => q("static"),
        Telemetry::Replay(path) => format!("{{ replay = {} }}", q(&path.display().to_string())),
    };
    o.kv("telemetry", telemetry, &keys("gpu", "telemetry"));
    match g.memory_total {
        Some(t) => o.kv(
            "memory_total",
            q(&format_size(t)),
            &keys("gpu", "memory_total"),
        ),
        None => o.unset("memory_total", "gpu.memory_total"),
    }
    match g.baseline {
        Some(b) => o.kv("baseline", q(&format_size(b)), &keys("gpu", "baseline")),
        None => o.unset("baseline", "gpu.baseline"),
    }
    o.kv(
        "headroom",
        format!("{:?}", g.headroom.fraction()),
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
    match &e.model {
        Some(m) => o.kv("model", q(m), &keys("engine", "model")),
        None => o.unset("model", "engine.model"),
    }
    match e.kv_capacity_tokens {
        Some(t) => o.kv(
            "kv_capacity_tokens",
            t.to_string(),
            &keys("engine", "kv_capacity_tokens"),
        ),
        None => o.unset("kv_capacity_tokens", "engine.kv_capacity_tokens"),
    }
    match e.slots {
        Some(s) => o.kv("slots", s.to_string(), &keys("engine", "slots")),
        None => o.unset("slots", "engine.slots"),
    }
    match e.slot_context_tokens {
        Some(s) => o.kv(
            "slot_context_tokens",
            s.to_string(),
            &keys("engine", "slot_context_tokens"),
        ),
        None => o.unset("slot_context_tokens", "engine.slot_context_tokens"),
    }
    o.kv(
        "max_staleness",
        q(&format_duration(e.max_staleness)),
        &keys("engine", "max_staleness"),
    );
}
