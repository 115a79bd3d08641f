//! Our Prometheus text parser against the official client: metrics encoded by
//! prometheus-client (names with `:`, labels with escapes, special values, counters,
//! histograms) parse back to the same values. Plus the captured llama.cpp expositions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use kanban_governor::adapters::prom::{self, MetricType};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proptest::prelude::*;

type Labels = Vec<(String, String)>;

const BOUNDS: [f64; 5] = [0.005, 0.1, 1.0, 2.5, 60.0];

fn histogram() -> Histogram {
    Histogram::new(BOUNDS)
}

#[derive(Debug, Clone)]
struct Case {
    gauges: Vec<(String, BTreeMap<String, String>, f64)>,
    counters: Vec<(String, u64)>,
    observations: Vec<f64>,
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}(:[a-z][a-z0-9_]{0,6})?"
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e12f64..1e12,
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        1 => Just(0.0),
        1 => any::<f64>(),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            (
                name(),
                prop::collection::btree_map("[a-z][a-z0-9_]{0,4}", "[ -~λ\\n\\\\\"]{0,8}", 0..4),
                value(),
            ),
            1..6,
        ),
        prop::collection::vec((name(), 0u64..1_000_000_000), 0..4),
        prop::collection::vec(0.0f64..100.0, 0..30),
    )
        .prop_map(|(gauges, counters, observations)| {
            // One family per name: prefix so gauges, counters and the histogram never clash.
            let gauges = gauges
                .into_iter()
                .enumerate()
                .map(|(i, (n, l, v))| (format!("g{i}_{n}"), l, v))
                .collect();
            let counters = counters
                .into_iter()
                .enumerate()
                .map(|(i, (n, v))| (format!("c{i}_{n}"), v))
                .collect();
            Case {
                gauges,
                counters,
                observations,
            }
        })
}

fn encode_case(c: &Case) -> String {
    let mut reg = Registry::default();
    for (name, labels, v) in &c.gauges {
        let fam = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let l: Labels = labels.clone().into_iter().collect();
        fam.get_or_create(&l).set(*v);
        reg.register(name, "a gauge \\ with a backslash", fam);
    }
    for (name, v) in &c.counters {
        let ctr: Counter = Counter::default();
        ctr.inc_by(*v);
        reg.register(name, "a counter", ctr);
    }
    let h = Family::<Labels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
    {
        let m = h.get_or_create(&vec![("model_name".to_string(), "m:1".to_string())]);
        for o in &c.observations {
            m.observe(*o);
        }
    }
    reg.register("vllm:time_to_first_token_seconds", "TTFT", h);
    let mut out = String::new();
    encode(&mut out, &reg).unwrap();
    out
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn what_prometheus_client_encodes_parses_back(c in case()) {
        let text = encode_case(&c);
        let e = prom::parse(&text).map_err(|err| TestCaseError::fail(format!("{err}\n{text}")))?;
        for (name, labels, v) in &c.gauges {
            let s: Vec<_> = e.series(name).collect();
            prop_assert_eq!(s.len(), 1, "{}\n{}", name, text);
            prop_assert!(same(s[0].value, *v), "{} {} != {}\n{}", name, s[0].value, v, text);
            let got: BTreeMap<String, String> = s[0].labels.iter().cloned().collect();
            prop_assert_eq!(&got, labels);
            prop_assert_eq!(e.types.get(name.as_str()), Some(&MetricType::Gauge));
        }
        for (name, v) in &c.counters {
            prop_assert_eq!(e.value(&format!("{name}_total")), Some(*v as f64), "{}", text);
        }
        let h = e.histogram("vllm:time_to_first_token_seconds").unwrap();
        prop_assert_eq!(h.count, c.observations.len() as u64);
        let mut expect: Vec<(f64, u64)> = BOUNDS
            .iter()
            .map(|b| (*b, c.observations.iter().filter(|o| **o <= *b).count() as u64))
            .collect();
        expect.push((f64::INFINITY, c.observations.len() as u64));
        prop_assert_eq!(&h.buckets, &expect);
        let sum: f64 = c.observations.iter().sum();
        prop_assert!((h.sum - sum).abs() <= 1e-9 * sum.abs().max(1.0));
    }
}

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn parses_every_line_of_the_captured_llama_server_metrics() {
    for (file, processing, deferred) in [
        ("llamacpp/metrics-idle.txt", 0.0, 0.0),
        ("llamacpp/metrics-busy.txt", 4.0, 4.0),
    ] {
        let text = fixture(file);
        let e = prom::parse(&text).unwrap();
        let sample_lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(e.samples.len(), sample_lines, "{file}");
        assert!(e.samples.iter().all(|s| s.name.starts_with("llamacpp:")));
        assert_eq!(e.value("llamacpp:requests_processing"), Some(processing));
        assert_eq!(e.value("llamacpp:requests_deferred"), Some(deferred));
        assert_eq!(
            e.types.get("llamacpp:n_tokens_max"),
            Some(&MetricType::Counter)
        );
    }
}
