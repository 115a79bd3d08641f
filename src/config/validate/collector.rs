//! Where validation records what it finds: each problem, and where each value came from
//! (file line, env var or flag).

use crate::config::raw::{FileText, SpannedOption};
use crate::config::*;

/// A value given by env or flag, with where it came from.
pub(super) struct Override {
    value: String,
    source: Source,
}

/// Flag beats env.
pub(super) fn over(
    flag: Option<String>,
    flag_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Option<Override> {
    if let Some(value) = flag {
        return Some(Override {
            value,
            source: Source::Flag {
                flag: flag_name.to_owned(),
            },
        });
    }
    env(var).filter(|v| !v.is_empty()).map(|value| Override {
        value,
        source: Source::Env {
            var: var.to_owned(),
        },
    })
}

/// The problem and source collector.
pub(super) struct Collector {
    pub(super) problems: Vec<Problem>,
    pub(super) sources: BTreeMap<String, Source>,
}

impl Collector {
    pub(super) fn err(
        &mut self,
        source: Source,
        key: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.problems.push(Problem {
            source,
            key: key.into(),
            detail: detail.into(),
        });
    }

    /// Where `key` was set, else `fallback`.
    pub(super) fn src(&self, key: &str, fallback: &Source) -> Source {
        self.sources
            .get(key)
            .cloned()
            .unwrap_or_else(|| fallback.clone())
    }

    /// Read `raw` (absent → `None`), parse it, record its source; a parse failure is a
    /// problem and gives `None`.
    pub(super) fn get<T, U>(
        &mut self,
        f: &FileText,
        key: &str,
        raw: &SpannedOption<T>,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        let s = raw.as_ref()?;
        let source = f.source(&s.span());
        match parse(s.get_ref()) {
            Ok(v) => {
                self.sources.insert(key.to_owned(), source);
                Some(v)
            }
            Err(detail) => {
                self.err(source, key, detail);
                None
            }
        }
    }

    /// An override (env/flag) parsed, or `None`.
    pub(super) fn over<U>(
        &mut self,
        key: &str,
        o: &Option<Override>,
        parse: impl FnOnce(&str) -> Result<U, String>,
    ) -> Option<U> {
        let o = o.as_ref()?;
        match parse(&o.value) {
            Ok(v) => {
                self.sources.insert(key.to_owned(), o.source.clone());
                Some(v)
            }
            Err(detail) => {
                self.err(o.source.clone(), key, detail);
                None
            }
        }
    }
}
