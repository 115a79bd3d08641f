//! A small parser for the Prometheus text exposition format (0.0.4) and the OpenMetrics text
//! that prometheus-client writes: `name{label="value",...} value [timestamp]`, `# HELP`,
//! `# TYPE`, `# EOF`, label escapes (`\\`, `\"`, `\n`), `+Inf`/`-Inf`/`NaN`, and the
//! `_bucket{le}`/`_sum`/`_count` series of a histogram.
//!
//! Our own because `prometheus-parse` drops every name containing `:` (`vllm:`, `sglang:`,
//! `llamacpp:`). Pure: no I/O. Exemplars (`... # {..} v`) are skipped, not parsed.

use std::collections::HashMap;

use thiserror::Error;

/// A line that is not valid exposition text.
#[derive(Debug, Error, PartialEq)]
#[error("metrics line {line}: {message}: {text:?}")]
pub struct PromError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
    /// The line itself (truncated).
    pub text: String,
}

/// The declared type of a metric family (`# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// `counter`
    Counter,
    /// `gauge`
    Gauge,
    /// `histogram`
    Histogram,
    /// `summary`
    Summary,
    /// `info`, `stateset`, `untyped`, `unknown` or anything else.
    Other,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, as written (with `_bucket`, `_total`, ... suffixes).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// The timestamp as written (milliseconds in text 0.0.4, seconds in OpenMetrics).
    pub timestamp: Option<f64>,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A cumulative histogram, summed over every label set of one metric.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// `(upper bound, cumulative count)`, ascending by bound; the last bound is `+Inf` when
    /// the exposition has one.
    pub buckets: Vec<(f64, u64)>,
    /// `_sum`.
    pub sum: f64,
    /// `_count`.
    pub count: u64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations by family name.
    pub types: HashMap<String, MetricType>,
    /// `# HELP` text by family name (unescaped).
    pub help: HashMap<String, String>,
}

impl Exposition {
    /// Every sample named exactly `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the first sample named `name`.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.series(name).next().map(|s| s.value)
    }

    /// The sum of every sample named `name` (over all label sets), if there is one.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut it = self.series(name).peekable();
        it.peek()?;
        Some(it.map(|s| s.value).sum())
    }

    /// The first of `names` that has a sample, summed over its label sets.
    pub fn sum_any(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.sum(n))
    }

    /// The histogram `name` (its `_bucket`, `_sum` and `_count` series), summed over label
    /// sets by `le`. `None` when it has no buckets.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for s in self.series(&bucket) {
            let Some(le) = s.label("le").and_then(parse_value) else {
                continue;
            };
            let n = count_of(s.value);
            match buckets.iter_mut().find(|(b, _)| b.total_cmp(&le).is_eq()) {
                Some((_, c)) => *c = c.saturating_add(n),
                None => buckets.push((le, n)),
            }
        }
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Histogram {
            buckets,
            sum: self.sum(&format!("{name}_sum")).unwrap_or(0.0),
            count: self
                .sum(&format!("{name}_count"))
                .map(count_of)
                .unwrap_or(0),
        })
    }
}

/// A counter value as a whole count (negative and NaN as zero).
fn count_of(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        // f64 → u64 saturates; counts in metrics are whole numbers.
        v.round() as u64
    } else if v == f64::INFINITY {
        u64::MAX
    } else {
        0
    }
}

/// Parse exposition text.
///
/// # Errors
///
/// The first line that is not a comment, a blank line or a valid sample, naming the line.
pub fn parse(text: &str) -> Result<Exposition, PromError> {
    let mut out = Exposition::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |message: &str| PromError {
            line: i + 1,
            message: message.to_string(),
            text: line.chars().take(200).collect(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix("TYPE ") {
                let mut parts = r.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    return Err(err("# TYPE needs a name and a type"));
                };
                let kind = match kind {
                    "counter" => MetricType::Counter,
                    "gauge" => MetricType::Gauge,
                    "histogram" => MetricType::Histogram,
                    "summary" => MetricType::Summary,
                    _ => MetricType::Other,
                };
                out.types.insert(name.to_string(), kind);
            } else if let Some(r) = rest.strip_prefix("HELP ") {
                let (name, help) = r.split_once(' ').unwrap_or((r, ""));
                out.help.insert(name.to_string(), unescape(help, false));
            }
            // Other comments, `# UNIT` and `# EOF` carry nothing we use.
            continue;
        }
        out.samples.push(parse_sample(line).map_err(|m| err(&m))?);
    }
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(line.len(), |(i, _)| i);
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err("a sample must start with a metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    // The value, then an optional timestamp, then an optional exemplar after " # ".
    let rest = rest.split(" # ").next().unwrap_or("");
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| "a sample needs a value".to_string())
        .and_then(|v| parse_value(v).ok_or_else(|| format!("{v:?} is not a number")))?;
    let timestamp = match fields.next() {
        Some(t) => Some(
            t.parse::<f64>()
                .map_err(|_| format!("{t:?} is not a timestamp"))?,
        ),
        None => None,
    };
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp,
    })
}

/// Parse `l="v",...}` (after the `{`), returning what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let end = s
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(s.len(), |(i, _)| i);
        if end == 0 {
            return Err("expected a label name or '}'".into());
        }
        let key = &s[..end];
        s = s[end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label {key} needs '='"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key} needs a quoted value"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label {key}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = s[close + 1..].trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {key}"));
        }
    }
}

/// Parse a sample value: a float, `+Inf`, `-Inf` or `NaN`.
pub fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => v.parse::<f64>().ok(),
    }
}

/// Undo `\\` and `\n` (and `\"` inside label values).
fn unescape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_colons_labels_and_timestamps() {
        let e = parse(
            "# HELP vllm:num_requests_running Number of requests.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0 1700000000000\n\
             sglang:token_usage 0.25\n",
        )
        .unwrap();
        assert_eq!(e.samples.len(), 2);
        let s = &e.samples[0];
        assert_eq!(s.name, "vllm:num_requests_running");
        assert_eq!(s.label("model_name"), Some("m"));
        assert_eq!(s.value, 3.0);
        assert_eq!(s.timestamp, Some(1.7e12));
        assert_eq!(e.value("sglang:token_usage"), Some(0.25));
        assert_eq!(
            e.types.get("vllm:num_requests_running"),
            Some(&MetricType::Gauge)
        );
        assert_eq!(
            e.help.get("vllm:num_requests_running").map(String::as_str),
            Some("Number of requests.")
        );
    }

    #[test]
    fn unescapes_label_values() {
        let e = parse(r#"m{a="x\"y\\z\nw",b="}, ="} 1"#).unwrap();
        assert_eq!(e.samples[0].label("a"), Some("x\"y\\z\nw"));
        assert_eq!(e.samples[0].label("b"), Some("}, ="));
    }

    #[test]
    fn reads_special_values() {
        let e = parse("a +Inf\nb -Inf\nc NaN\nd 1e3\ne{} -0.5").unwrap();
        assert_eq!(e.value("a"), Some(f64::INFINITY));
        assert_eq!(e.value("b"), Some(f64::NEG_INFINITY));
        assert!(e.value("c").unwrap().is_nan());
        assert_eq!(e.value("d"), Some(1000.0));
        assert_eq!(e.value("e"), Some(-0.5));
    }

    #[test]
    fn sums_a_histogram_over_label_sets() {
        let e = parse(
            "h_bucket{m=\"a\",le=\"0.1\"} 1\nh_bucket{m=\"a\",le=\"+Inf\"} 2\n\
             h_bucket{m=\"b\",le=\"0.1\"} 3\nh_bucket{m=\"b\",le=\"+Inf\"} 5\n\
             h_sum{m=\"a\"} 0.5\nh_sum{m=\"b\"} 1.5\nh_count{m=\"a\"} 2\nh_count{m=\"b\"} 5\n",
        )
        .unwrap();
        let h = e.histogram("h").unwrap();
        assert_eq!(h.buckets, vec![(0.1, 4), (f64::INFINITY, 7)]);
        assert_eq!(h.sum, 2.0);
        assert_eq!(h.count, 7);
        assert!(e.histogram("missing").is_none());
    }

    #[test]
    fn skips_exemplars_and_eof() {
        let e = parse("c_total 5 # {trace_id=\"x\"} 1.0\n# EOF\n").unwrap();
        assert_eq!(e.value("c_total"), Some(5.0));
    }

    #[test]
    fn names_the_bad_line() {
        let err = parse("ok 1\nbad{a=\"x} 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(parse("x notanumber").unwrap_err().line, 1);
        assert!(parse("9x 1").is_err());
        assert!(parse("x 1 2 3").is_err());
    }
}
