//! Which text format `/metrics` answers in, and the conversion between the two.
//!
//! prometheus-client encodes OpenMetrics 1.0 only. A scraper that asks for it (Prometheus
//! does, in its `Accept`) gets it; anything else (curl, older scrapers, the Datadog and
//! Telegraf agents) gets the Prometheus text format 0.0.4, which differs in a few places
//! ([`to_text_004`]).

/// A `/metrics` body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// Prometheus text exposition format 0.0.4.
    Text004,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format to answer a request whose `Accept` header is `accept`: OpenMetrics when it
/// lists `application/openmetrics-text` (no version, or 1.0.0) with a quality at least that
/// of any text it accepts (`text/plain`, `text/*`, `*/*`); the 0.0.4 text otherwise,
/// including when there is no header.
pub fn negotiate(accept: Option<&str>) -> Format {
    let (mut openmetrics, mut text) = (0.0f64, 0.0f64);
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut q, mut version) = (1.0, None);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                "version" => version = Some(v.trim().trim_matches('"').to_owned()),
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0")) =>
            {
                openmetrics = openmetrics.max(q);
            }
            "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => {
                text = text.max(q);
            }
            "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text004
    }
}

/// Rewrite an OpenMetrics exposition (as prometheus-client writes it) in the 0.0.4 text
/// format:
/// - a counter family is named with its `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics
///   names the family without it, its samples with it), and its `_created` samples are dropped;
/// - an `info` family becomes a gauge named `<name>_info`, and `unknown` becomes `untyped`;
/// - `# UNIT` and `# EOF` lines are dropped, and so are exemplars after a sample's value;
/// - `\"` in help text is unescaped (0.0.4 escapes only `\\` and `\n` there).
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The current family's OpenMetrics name and type.
    let mut family: (&str, &str) = ("", "");
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            // Written out with the TYPE line, once the family's 0.0.4 name is known.
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = (name, kind);
            let (name004, kind004) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                out += &format!("# HELP {name004} {}\n", text.replace("\\\"", "\""));
            }
            out += &format!("# TYPE {name004} {kind004}\n");
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not in 0.0.4.
        } else if !line.is_empty() {
            let (name, rest) = split_name(line);
            if family.1 == "counter" && name == format!("{}_created", family.0) {
                continue;
            }
            out.push_str(&line[..line.len() - rest.len()]);
            out.push_str(strip_exemplar(rest));
            out.push('\n');
        }
    }
    out
}

/// A sample line split after its name and label set: (`name`, the rest from the value on,
/// with its leading space).
fn split_name(line: &str) -> (&str, &str) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !line[name_end..].starts_with('{') {
        return (name, &line[name_end..]);
    }
    // Find the closing brace outside quoted label values (which escape `"` and `\`).
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[name_end..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return (name, &line[name_end + i + 1..]),
            _ => {}
        }
    }
    (name, "")
}

/// ` 1 # {trace_id="x"} 1.0` → ` 1`: 0.0.4 has no exemplars.
fn strip_exemplar(rest: &str) -> &str {
    rest.find(" # ").map_or(rest, |i| &rest[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        // Prometheus 2.x and 3.x defaults.
        for prometheus in [
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            "application/openmetrics-text",
        ] {
            assert_eq!(
                negotiate(Some(prometheus)),
                Format::OpenMetrics,
                "{prometheus}"
            );
        }
        for other in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;version=2.0.0"),
            Some("application/openmetrics-text;q=0"),
            Some("application/json"),
        ] {
            assert_eq!(negotiate(other), Format::Text004, "{other:?}");
        }
    }

    #[test]
    fn openmetrics_converts_to_text_004_by_the_rules_of_each_type() {
        let mut r = Registry::with_prefix("kg");
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("reason".into(), "a \"}\" # b".into())])
            .inc_by(3);
        r.register("decisions", "Decisions, by \\\"reason\\\"", c);
        let g = Gauge::<i64>::default();
        g.set(-2);
        r.register_with_unit("age", "Age", Unit::Seconds, g);
        let h = Histogram::new([1.0]);
        h.observe(0.5);
        r.register_with_unit("tick", "Tick", Unit::Seconds, h);
        r.register("build", "Build", Info::new(vec![("version", "1.2.3")]));
        let mut om = String::new();
        encode(&mut om, &r).unwrap();
        assert!(om.contains("# TYPE kg_decisions counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");

        let text = to_text_004(&om);
        let expected = "\
# HELP kg_decisions_total Decisions, by \"reason\".
# TYPE kg_decisions_total counter
kg_decisions_total{reason=\"a \\\"}\\\" # b\"} 3
# HELP kg_age_seconds Age.
# TYPE kg_age_seconds gauge
kg_age_seconds -2
# HELP kg_tick_seconds Tick.
# TYPE kg_tick_seconds histogram
kg_tick_seconds_sum 0.5
kg_tick_seconds_count 1
kg_tick_seconds_bucket{le=\"1.0\"} 1
kg_tick_seconds_bucket{le=\"+Inf\"} 1
# HELP kg_build_info Build.
# TYPE kg_build_info gauge
kg_build_info{version=\"1.2.3\"} 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn created_samples_and_exemplars_are_dropped() {
        let om =
            "# HELP x X\n# TYPE x counter\nx_total 2 # {trace=\"t\"} 1.0\nx_created 1.7e9\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP x_total X\n# TYPE x_total counter\nx_total 2\n"
        );
    }
}
