//! Sizes and durations as the config file spells them, and back.
//!
//! Sizes are binary (IEC) only: `24GiB`, `512MiB`, `0B`. A bare number, a negative and a
//! decimal unit (`24GB`, `24G`) are errors whose message says what to write instead, because
//! `24GB` is 24 000 000 000 bytes to most parsers (bytesize included) and 25 769 803 776 to a
//! GPU spec sheet: the governor refuses to guess. Durations are humantime (`15s`, `10m`).
//! Pure functions, no I/O.

use crate::governor::Bytes;
use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// A raw TOML value as the user wrote it, near enough (`24`, `"24GB"`, `[0, 1]`).
pub(crate) fn show(v: &toml::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// Parse a size written in IEC units. The `Err` is the detail of the problem: what was found
/// and what to write.
pub fn parse_size(value: &toml::Value) -> Result<Bytes, String> {
    match value {
        toml::Value::String(s) => parse_size_str(s),
        toml::Value::Integer(n) if *n < 0 => Err(format!(
            "{n} is negative; sizes are at least 0B: write e.g. \"0B\" or \"1GiB\""
        )),
        toml::Value::Integer(n) => Err(format!(
            "{n} is a bare number with no unit; write a quoted binary size such as \"{n}GiB\", \"{n}MiB\" or \"{n}B\""
        )),
        toml::Value::Float(f) => Err(format!(
            "{f} is a bare number with no unit; write a quoted binary size such as \"{f}GiB\""
        )),
        other => Err(format!(
            "{} is not a size; write a quoted binary size such as \"24GiB\" or \"512MiB\"",
            show(other)
        )),
    }
}

/// Parse a size string such as `24GiB`, `1.5 GiB` or `0B`.
pub fn parse_size_str(s: &str) -> Result<Bytes, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "\"{s}\" is negative; sizes are at least 0B: write e.g. \"0B\" or \"1GiB\""
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].replace('_', ""), t[split..].trim());
    if num.is_empty() {
        return Err(format!(
            "\"{s}\" is not a size; write a number and a binary unit such as \"24GiB\" or \"512MiB\""
        ));
    }
    let Ok(n) = num.parse::<f64>() else {
        return Err(format!(
            "\"{s}\" is not a size; write a number and a binary unit such as \"24GiB\""
        ));
    };
    if unit.is_empty() {
        return Err(format!(
            "\"{s}\" has no unit; write a binary size such as \"{num}GiB\", \"{num}MiB\" or \"{num}B\""
        ));
    }
    if let Some((_, mult)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) {
        // Whole numbers stay exact (an f64 loses bytes above 2^53).
        if let Ok(whole) = num.parse::<u64>() {
            return whole
                .checked_mul(*mult)
                .map(Bytes)
                .ok_or_else(|| format!("\"{s}\" is too large; sizes go up to 16EiB"));
        }
        let bytes = n * *mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("\"{s}\" is too large; sizes go up to 16EiB"));
        }
        // Fractions of a byte round down: "1.5KiB" is 1536 bytes, "0.1B" is 0.
        return Ok(Bytes(bytes as u64));
    }
    let decimal = match unit.to_ascii_uppercase().as_str() {
        "K" | "KB" => Some("KiB"),
        "M" | "MB" => Some("MiB"),
        "G" | "GB" => Some("GiB"),
        "T" | "TB" => Some("TiB"),
        _ => None,
    };
    match decimal {
        Some(iec) => Err(format!(
            "\"{s}\" uses a decimal unit, which the governor does not guess at; write \"{num}{iec}\" (binary units only: B, KiB, MiB, GiB, TiB)"
        )),
        None => Err(format!(
            "\"{s}\" has an unknown unit \"{unit}\"; write a binary size such as \"24GiB\" (units: B, KiB, MiB, GiB, TiB)"
        )),
    }
}

/// A size in the largest IEC unit that divides it exactly: `24GiB`, `1536MiB`, `0B`.
pub fn format_size(b: Bytes) -> String {
    let n = b.get();
    if n == 0 {
        return "0B".to_owned();
    }
    for (unit, mult) in UNITS {
        if n.is_multiple_of(mult) {
            return format!("{}{unit}", n / mult);
        }
    }
    format!("{n}B")
}

/// Parse a duration written in humantime (`15s`, `500ms`, `10m`).
pub fn parse_duration(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::String(s) => parse_duration_str(s),
        toml::Value::Integer(n) => Err(format!(
            "{n} is a bare number with no unit; write a quoted duration such as \"{n}s\" or \"{n}ms\""
        )),
        other => Err(format!(
            "{} is not a duration; write a quoted duration such as \"15s\", \"500ms\" or \"10m\"",
            show(other)
        )),
    }
}

/// Parse a duration string (`15s`, `1m 30s`).
pub fn parse_duration_str(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}); write e.g. \"15s\", \"500ms\" or \"10m\"")
    })
}

/// A duration as humantime writes it (`5s`, `10m`, `1m 30s`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iec_sizes_parse_to_exact_bytes() {
        assert_eq!(parse_size_str("24GiB"), Ok(Bytes::gib(24)));
        assert_eq!(parse_size_str("24 GiB"), Ok(Bytes::gib(24)));
        assert_eq!(parse_size_str("512MiB"), Ok(Bytes::mib(512)));
        assert_eq!(parse_size_str("1.5KiB"), Ok(Bytes(1536)));
        assert_eq!(parse_size_str("0B"), Ok(Bytes(0)));
        assert_eq!(parse_size_str("1gib"), Ok(Bytes::gib(1)));
    }

    #[test]
    fn decimal_units_are_refused_with_the_iec_spelling_as_the_fix() {
        for s in ["24GB", "24G", "24 gb"] {
            let e = parse_size_str(s).unwrap_err();
            assert!(e.contains("write \"24GiB\""), "{s}: {e}");
        }
    }

    #[test]
    fn bare_and_negative_sizes_are_refused() {
        let e = parse_size(&toml::Value::Integer(24)).unwrap_err();
        assert!(e.contains("bare number") && e.contains("\"24GiB\""), "{e}");
        let e = parse_size(&toml::Value::Integer(-1)).unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = parse_size_str("-1GiB").unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = parse_size_str("24").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"24GiB\""), "{e}");
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit_and_parse_back() {
        for b in [
            0,
            1,
            1023,
            1024,
            1536 * 1024 * 1024,
            80 << 30,
            (1 << 40) + 1,
        ] {
            let s = format_size(Bytes(b));
            assert_eq!(parse_size_str(&s), Ok(Bytes(b)), "{s}");
        }
        assert_eq!(format_size(Bytes::gib(80)), "80GiB");
    }

    proptest::proptest! {
        #[test]
        fn any_size_formats_and_parses_back_exactly(n in 0u64..(1u64 << 62)) {
            proptest::prop_assert_eq!(parse_size_str(&format_size(Bytes(n))), Ok(Bytes(n)));
        }

        #[test]
        fn any_duration_formats_and_parses_back_exactly(ms in 0u64..(1u64 << 40)) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration_str(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn durations_are_humantime_and_bare_numbers_are_refused() {
        assert_eq!(parse_duration_str("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration_str("10m"), Ok(Duration::from_secs(600)));
        let e = parse_duration(&toml::Value::Integer(15)).unwrap_err();
        assert!(e.contains("\"15s\""), "{e}");
        assert!(parse_duration_str("soon").is_err());
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration_str(&format_duration(d)), Ok(d));
        }
    }
}
