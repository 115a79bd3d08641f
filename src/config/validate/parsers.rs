//! The small value parsers of stage 2. Each error says what to set instead.

use crate::catalog::{self, KvDtype, ModelSpec};
use crate::config::units::{parse_duration, show};
use crate::config::*;

pub(super) fn int_at_least(min: i64) -> impl Fn(&i64) -> Result<u64, String> {
    move |&n| {
        if n < min {
            Err(format!(
                "{n} is below {min}; set an integer of at least {min}"
            ))
        } else {
            Ok(n as u64)
        }
    }
}

pub(super) fn u32_at_least(min: i64) -> impl Fn(&i64) -> Result<u32, String> {
    move |&n| {
        if n < min || n > i64::from(u32::MAX) {
            Err(format!(
                "{n} is out of range; set an integer from {min} to {}",
                u32::MAX
            ))
        } else {
            Ok(n as u32)
        }
    }
}

pub(super) fn headroom(h: f64) -> Result<Headroom, String> {
    if !(h > 0.0 && h <= 1.0) {
        Err(format!(
            "{h} is outside (0, 1]; set the fraction of capacity the governor may fill, such as {DEFAULT_HEADROOM} (the default)"
        ))
    } else {
        Headroom::from_fraction(h).ok_or_else(|| {
            format!(
                "{h} is below one part per million, the precision headroom is applied with; set the fraction of capacity the governor may fill, such as {DEFAULT_HEADROOM} (the default)"
            )
        })
    }
}

pub(super) fn parse_headroom_str(s: &str) -> Result<Headroom, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("\"{s}\" is not a number; set a fraction in (0, 1] such as 0.85"))
        .and_then(headroom)
}

pub(super) fn abs_path(s: &str, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("\"{s}\" is relative; set an absolute path {what}"))
    }
}

/// `~/x` in a file value is `$HOME/x` (the shell would have expanded it on a command line).
pub(super) fn tilde(s: &str, home: Option<&Path>) -> String {
    match (s.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest).display().to_string(),
        _ => s.to_owned(),
    }
}

pub(super) fn positive_duration(v: &toml::Value) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        Err(format!(
            "{} is zero; set a positive duration such as \"5s\"",
            show(v)
        ))
    } else {
        Ok(d)
    }
}

pub(super) fn choice<T: Copy>(s: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            format!(
                "\"{s}\" is not one of {}; pick one of them",
                names.join(", ")
            )
        })
}

pub(super) fn kv_dtype(s: &str) -> Result<KvDtype, String> {
    // The catalog also accepts engines' spellings (`fp16`, `fp8_e4m3`).
    s.parse::<KvDtype>().map_err(|e| e.to_string())
}

pub(super) fn lookup_model(name: &str) -> Result<&'static ModelSpec, String> {
    // The catalog's message lists close names and the kv_bytes_per_token alternative.
    catalog::lookup(name).map_err(|e| e.to_string())
}
