//! Issue 15: `/metrics` as a Prometheus server sees it, and the shipped dashboard and alert
//! rules against it.
//!
//! A real daemon (static telemetry, `engine.url = "none"`, a real Hermes board) is scraped
//! without an `Accept` header and with Prometheus's, and each body is parsed by the official
//! Python client's parser for that format (`tests/fixtures/prom_parse.py`, run with the
//! Python of `$KG_PROM_PYTHON`, else `target/prom-venv/bin/python`, which `scripts/test`
//! creates with `prometheus-client` installed; missing is a failure, not a skip).
//! `deploy/grafana/kanban-governor.json` and `deploy/prometheus/alerts.yml` must have the
//! shape Grafana and Prometheus load, and every metric their queries use must be in a scrape
//! of a daemon that reads an engine (tests/common/fake_engine.rs), so the engine and TTFT
//! series are there too.

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/fake_engine.rs"]
mod fake_engine;

use common::{FakeModel, Hermes, wait_for};
use daemon::{Daemon, DaemonConfig, http_get_accept, metric};
use fake_engine::{EngineSpec, FakeEngine};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const STATIC_GPU: &str =
    "[gpu]\ntelemetry = \"static\"\nmemory_total = \"24GiB\"\nbaseline = \"4GiB\"";

/// Prometheus 2.x's `Accept` on a scrape.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Series Prometheus makes itself for every target (not in any `/metrics`).
const SYNTHETIC: &[&str] = &["up"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with `prometheus_client`.
fn prom_python() -> PathBuf {
    let p = std::env::var_os("KG_PROM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/prom-venv/bin/python"));
    assert!(
        p.is_file(),
        "no Python with prometheus_client at {} (set KG_PROM_PYTHON); run scripts/test, which creates target/prom-venv",
        p.display()
    );
    p
}

/// One metric family as the Python client parsed it.
#[derive(Debug, Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: String,
}

/// Parse `body` with the Python client's parser for `format` (`text` or `openmetrics`),
/// failing with its error when it does not parse.
fn parse(format: &str, body: &str) -> Vec<Family> {
    let mut child = Command::new(prom_python())
        .arg(repo().join("tests/fixtures/prom_parse.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser rejected /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A daemon on an empty board with `[engine]` `engine` (after [`STATIC_GPU`]), after its
/// first tick.
fn start_daemon(h: &Hermes, engine: &str) -> (Daemon, DaemonConfig) {
    let cfg = DaemonConfig::new(
        &h.bin,
        h.path(),
        "5s",
        &format!("{STATIC_GPU}\n\n[engine]\n{engine}"),
        &[("small", "128KiB", 24576)],
    );
    let d = Daemon::start(cfg.command(&["--sample-every", "200ms"], &[]));
    wait_for(Duration::from_secs(60), "a first tick", || {
        let m = d.metrics();
        m.lines()
            .any(|l| l.starts_with("kanban_governor_ticks_total{") && !l.ends_with(" 0"))
            .then_some(())
    });
    (d, cfg)
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    !n.starts_with("__")
        && c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Checks both formats share: HELP and TYPE on every family, valid names, build_info,
/// process metrics, no sentinel values. Returns the sample names.
fn check_families(format: &str, families: &[Family]) -> BTreeSet<String> {
    assert!(families.len() > 20, "{format}: {families:?}");
    let mut names = BTreeSet::new();
    for f in families {
        assert!(!f.help.is_empty(), "{format}: {} has no HELP", f.name);
        assert!(
            !matches!(f.kind.as_str(), "unknown" | "untyped"),
            "{format}: {} has no TYPE",
            f.name
        );
        assert!(valid_metric_name(&f.name), "{format}: {}", f.name);
        assert!(
            f.name.starts_with("kanban_governor_") || f.name.starts_with("process_"),
            "{format}: {} is not ours",
            f.name
        );
        for s in &f.samples {
            assert!(valid_metric_name(&s.name), "{format}: {}", s.name);
            assert!(
                s.labels.keys().all(|k| valid_label_name(k)),
                "{format}: {s:?}"
            );
            let v: f64 = s.value.parse().unwrap();
            // No sentinel (-1) and no NaN: an unknown value is left out.
            assert!(v >= 0.0, "{format}: {} {:?} = {v}", s.name, s.labels);
            if f.kind == "counter" {
                assert!(s.name.ends_with("_total"), "{format}: {}", s.name);
            }
            names.insert(s.name.clone());
        }
    }
    let build: Vec<&Sample> = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == "kanban_governor_build_info")
        .collect();
    assert_eq!(build.len(), 1, "{format}: {families:?}");
    assert_eq!(
        build[0].labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(build[0].value, "1.0");
    if cfg!(target_os = "linux") {
        for p in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(p), "{format}: no {p}");
        }
    }
    // The old names: a plural unit, and a cumulative count exported as a gauge.
    for old in [
        "kanban_governor_engine_kv_usage_ratios",
        "kanban_governor_engine_preemptions",
    ] {
        assert!(!names.contains(old), "{format}: {old}");
    }
    names
}

#[test]
fn metrics_parse_with_the_official_parser_in_both_formats() {
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let (d, _cfg) = start_daemon(
        &h,
        "kind = \"vllm\"\nurl = \"none\"\nkv_capacity_tokens = 100000",
    );

    // curl, or any scraper that does not ask: text 0.0.4.
    let (status, ctype, text) = http_get_accept(d.addr, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let text_families = parse("text", &text);
    let text_names = check_families("text", &text_families);

    // Prometheus: OpenMetrics, which its strict parser accepts only whole (with # EOF).
    let (status, ctype, om) = http_get_accept(d.addr, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(status, 200, "{om}");
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om_families = parse("openmetrics", &om);
    let om_names = check_families("openmetrics", &om_families);

    // The same series either way, typed the same.
    assert_eq!(text_names, om_names);
    let kind = |fs: &[Family], name: &str| {
        fs.iter()
            .find(|f| f.name == name)
            .map(|f| f.kind.clone())
            .unwrap_or_else(|| panic!("no family {name}"))
    };
    for (family, t) in [
        ("kanban_governor_ticks", "counter"),
        ("kanban_governor_http_connections_refused", "counter"),
        ("process_cpu_seconds", "counter"),
        ("kanban_governor_tick_duration_seconds", "histogram"),
        ("kanban_governor_ceiling_bytes", "gauge"),
    ] {
        assert_eq!(kind(&text_families, family), t, "text: {family}");
        assert_eq!(kind(&om_families, family), t, "openmetrics: {family}");
    }
    assert_eq!(kind(&om_families, "kanban_governor_build"), "info");
    // No engine is read here: no engine series at all, rather than zeros.
    assert!(
        !text.contains("\nkanban_governor_engine_"),
        "engine series without an engine: {text}"
    );
    assert_eq!(kind(&text_families, "kanban_governor_build_info"), "gauge");
    // The GPU source was read: its age is a number; the engine has no URL: no age at all.
    let ages: Vec<&Sample> = text_families
        .iter()
        .filter(|f| f.name == "kanban_governor_telemetry_age_seconds")
        .flat_map(|f| &f.samples)
        .collect();
    assert!(
        ages.iter().all(|s| s.labels["source"] == "gpu") && !ages.is_empty(),
        "{ages:?}"
    );
}

// --- The dashboard and the alert rules -----------------------------------------------------

/// The metric names a PromQL expression selects: identifiers outside label matchers, range
/// brackets and strings that are not functions, aggregations, keywords or the label lists of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    // Skip from an opening bracket to its match, stepping over quoted strings.
    let skip = |mut i: usize, open: char, close: char| -> usize {
        let (mut depth, mut quote) = (0, None::<char>);
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(_) if c == '\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                None => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip(i, '{', '}');
        } else if c == '[' {
            i = skip(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip(j, '(', ')');
                }
            } else if word == "offset" {
                // `offset 5m`: the duration is not a metric.
                while j < chars.len() && !chars[j].is_whitespace() && chars[j] != ')' {
                    j += 1;
                }
                i = j;
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn skip_string(chars: &[char], mut i: usize) -> usize {
    let q = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != q {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

#[test]
fn promql_metric_extraction_finds_metrics_and_nothing_else() {
    let e = r#"histogram_quantile(0.95, sum by (le, pool) (rate(a_bucket{x="}"}[$__rate_interval]))) > on(instance) group_left(version) b_info * 1e3 unless c offset 5m and sum without(y)(d) / bool 2"#;
    assert_eq!(
        promql_metrics(e),
        ["a_bucket", "b_info", "c", "d"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        promql_metrics("up{job=\"kanban-governor\"} == 0"),
        BTreeSet::from(["up".to_owned()])
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

/// An alerting rule as Prometheus loads it (unknown keys are an error there too).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    #[serde(default)]
    keep_firing_for: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// A Prometheus duration: `5m`, `1h30m`, `0m`.
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn alert_rules() -> RuleFile {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("alerts.yml: {e}"))
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/kanban-governor.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kanban-governor.json: {e}"))
}

/// Every PromQL expression of the dashboard: panel targets and `label_values(metric, label)`
/// variable queries (the metric, as an expression).
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
        {
            exprs.push(q.rsplit_once(',').unwrap().0.to_owned());
        }
    }
    exprs
}

#[test]
fn the_dashboard_has_the_shape_grafana_imports_and_shows_what_an_operator_needs() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    assert!(d["schemaVersion"].as_u64().is_some(), "schemaVersion");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(p["type"].as_str().is_some(), "{title}: type");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            assert!(t["refId"].as_str().is_some(), "{title}: refId");
        }
    }
    // The datasource is a variable, so the file imports into any Grafana.
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "{vars:?}"
    );
    // What issue 15 asks it to show.
    let used: BTreeSet<String> = dashboard_exprs(&d)
        .iter()
        .flat_map(|e| promql_metrics(e))
        .collect();
    for needed in [
        "kanban_governor_ceiling_bytes",
        "kanban_governor_projected_peak_bytes",
        "kanban_governor_kv_ceiling_tokens",
        "kanban_governor_kv_charged_tokens",
        "kanban_governor_tasks_running",
        "kanban_governor_tasks_waiting",
        "kanban_governor_decisions_total",
        "kanban_governor_latency_ttft_seconds",
        "kanban_governor_latency_ttft_slo_seconds",
        "kanban_governor_dispatch_outcomes_total",
        "kanban_governor_telemetry_up",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn the_alert_rules_have_the_shape_prometheus_loads_and_cover_the_failures() {
    let f = alert_rules();
    assert!(!f.groups.is_empty());
    let mut names = BTreeSet::new();
    for g in &f.groups {
        assert!(!g.name.is_empty());
        assert!(g.interval.as_deref().is_none_or(is_duration), "{g:?}");
        for r in &g.rules {
            assert!(names.insert(r.alert.clone()), "duplicate alert {}", r.alert);
            assert!(!r.expr.trim().is_empty(), "{}", r.alert);
            assert!(is_duration(&r.for_), "{}: for {:?}", r.alert, r.for_);
            assert!(
                r.keep_firing_for.as_deref().is_none_or(is_duration),
                "{}",
                r.alert
            );
            assert!(
                ["critical", "warning", "info"].contains(&r.labels["severity"].as_str()),
                "{}: severity",
                r.alert
            );
            assert!(r.annotations.contains_key("summary"), "{}", r.alert);
            assert!(!promql_metrics(&r.expr).is_empty(), "{}", r.alert);
        }
    }
    let used = |alert: &str| -> BTreeSet<String> {
        let r = f
            .groups
            .iter()
            .flat_map(|g| &g.rules)
            .find(|r| r.alert == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        promql_metrics(&r.expr)
    };
    // Telemetry down, holding with work waiting, ceiling breached, dual dispatcher, leaks.
    for (alert, metric) in [
        (
            "KanbanGovernorTelemetryDown",
            "kanban_governor_telemetry_up",
        ),
        (
            "KanbanGovernorHoldingWithWorkWaiting",
            "kanban_governor_tasks_waiting",
        ),
        (
            "KanbanGovernorCeilingBreached",
            "kanban_governor_projected_peak_bytes",
        ),
        (
            "KanbanGovernorDualDispatcher",
            "kanban_governor_dual_dispatcher",
        ),
        (
            "KanbanGovernorGovernanceLeak",
            "kanban_governor_leaks_total",
        ),
    ] {
        assert!(
            used(alert).contains(metric),
            "{alert} does not use {metric}"
        );
    }
}

/// One chat completion straight to the engine, so its TTFT histogram moves.
fn chat(engine: &FakeEngine) {
    use std::io::{Read, Write};
    let addr = engine.url().trim_start_matches("http://").to_owned();
    let body = r#"{"model":"fake-model","messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_in_a_real_scrape() {
    let engine = FakeEngine::start(EngineSpec {
        capacity_tokens: 100_000,
        bytes_per_token: 128 * 1024,
        weights_bytes: 4 << 30,
        total_bytes: 24 << 30,
        first_turn_delay: Duration::ZERO,
        nvml_state: None,
    });
    let model = FakeModel::start(Duration::ZERO);
    let h = Hermes::new(&["small"], &model);
    let (d, _cfg) = start_daemon(&h, &format!("kind = \"vllm\"\nurl = {:?}", engine.url()));
    // TTFT is the p95 of the requests between two engine readings: keep some coming until
    // a reading has seen them (no event says when).
    let text = wait_for(Duration::from_secs(60), "a TTFT from the engine", || {
        chat(&engine);
        let (_, _, text) = http_get_accept(d.addr, "/metrics", None);
        metric(
            &text,
            "kanban_governor_latency_ttft_seconds",
            "pool=\"default\"",
        )
        .map(|_| text)
    });
    // The engine's series, typed as they should be, by both parsers.
    let (_, _, om) = http_get_accept(d.addr, "/metrics", Some(PROMETHEUS_ACCEPT));
    for (format, body) in [("text", &text), ("openmetrics", &om)] {
        let families = parse(format, body);
        check_families(format, &families);
        for (family, t) in [
            ("kanban_governor_engine_preemptions", "counter"),
            ("kanban_governor_engine_kv_usage_ratio", "gauge"),
            ("kanban_governor_engine_kv_used_tokens", "gauge"),
            ("kanban_governor_latency_ttft_seconds", "gauge"),
        ] {
            let f = families.iter().find(|f| f.name == family);
            assert_eq!(f.map(|f| f.kind.as_str()), Some(t), "{format}: {family}");
        }
    }
    // Series names a query can select: each sample's name, and for a family declared with no
    // sample yet (this daemon reads no engine) the names its type gives it. The parser leaves
    // empty families out, so those come from the `# TYPE` lines (0.0.4 names counters with
    // their `_total`).
    let mut exported: BTreeSet<String> = SYNTHETIC.iter().map(|s| (*s).to_owned()).collect();
    for f in parse("text", &text) {
        exported.extend(f.samples.iter().map(|s| s.name.clone()));
    }
    for (name, kind) in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
    {
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{s}"));
            }
        } else {
            exported.insert(name.to_owned());
        }
    }
    let mut sources: Vec<(String, String)> = dashboard_exprs(&dashboard())
        .into_iter()
        .map(|e| ("kanban-governor.json".to_owned(), e))
        .collect();
    for r in alert_rules().groups.iter().flat_map(|g| &g.rules) {
        sources.push((format!("alerts.yml {}", r.alert), r.expr.clone()));
    }
    let mut missing = Vec::new();
    for (source, expr) in &sources {
        for m in promql_metrics(expr) {
            if !exported.contains(&m) {
                missing.push(format!("{source}: {m}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics: {missing:#?}\nexported: {exported:#?}"
    );
}
