//! Stage 1 of the config: the file as typed, before any meaning is given to it.
//!
//! Every field is optional and unknown keys are rejected (`deny_unknown_fields`), so a typo is
//! an error that names the key instead of a silently ignored setting. Scalars keep their byte
//! span in the file ([`Spanned`]) so stage 2 can name the line. Sizes, durations and the
//! telemetry choice stay as raw TOML values here: stage 2 explains a bare number or a decimal
//! unit better than serde could. Integers are read as `i64` for the same reason (a negative
//! count gets a message, not a serde type error).
//!
//! No I/O: [`parse_file`] and [`parse_profile`] take the text and its origin.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

use super::{Problem, Source};

/// An optional scalar with its span in the file.
pub(crate) type SpannedOption<T> = Option<Spanned<T>>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub hermes: Option<RawHermes>,
    pub gpu: Option<RawGpu>,
    pub engine: Option<RawEngine>,
    pub pools: Option<BTreeMap<String, Spanned<RawPool>>>,
    pub latency: Option<RawLatency>,
    pub dispatch: Option<RawDispatch>,
    pub http: Option<RawHttp>,
    pub proxy: Option<RawProxy>,
    pub profiles: Option<Vec<Spanned<RawProfile>>>,
    pub profiles_dir: SpannedOption<String>,
}

/// `[hermes]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHermes {
    pub bin: SpannedOption<String>,
    pub home: SpannedOption<String>,
    pub board: SpannedOption<String>,
    pub max_semantics: SpannedOption<String>,
}

/// `[gpu]` or `[pools.<name>.gpu]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGpu {
    pub index: SpannedOption<toml::Value>,
    pub uuid: SpannedOption<toml::Value>,
    pub telemetry: SpannedOption<toml::Value>,
    pub memory_total: SpannedOption<toml::Value>,
    pub baseline: SpannedOption<toml::Value>,
    pub headroom: SpannedOption<f64>,
    pub reserve: SpannedOption<toml::Value>,
}

/// `[engine]` or `[pools.<name>.engine]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEngine {
    pub kind: SpannedOption<String>,
    pub url: SpannedOption<String>,
    pub model: SpannedOption<String>,
    pub kv_capacity_tokens: SpannedOption<i64>,
    pub slots: SpannedOption<i64>,
    pub slot_context_tokens: SpannedOption<i64>,
    pub max_staleness: SpannedOption<toml::Value>,
}

/// `[pools.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub gpu: Option<RawGpu>,
    pub engine: Option<RawEngine>,
}

/// `[latency]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLatency {
    pub ttft_slo: SpannedOption<toml::Value>,
    pub signal: SpannedOption<String>,
    pub min_limit: SpannedOption<i64>,
    pub max_limit: SpannedOption<i64>,
    pub backoff: SpannedOption<f64>,
    pub dwell: SpannedOption<toml::Value>,
}

/// `[dispatch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDispatch {
    pub interval: SpannedOption<toml::Value>,
    pub max_running: SpannedOption<i64>,
    pub max_wait: SpannedOption<toml::Value>,
    pub state_dir: SpannedOption<String>,
    pub timeout: SpannedOption<toml::Value>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub public: SpannedOption<bool>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub listen: SpannedOption<String>,
    pub public: SpannedOption<bool>,
    pub max_body: SpannedOption<toml::Value>,
    pub drain: SpannedOption<toml::Value>,
}

/// One profile: a `[[profiles]]` table or one file in `profiles_dir`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub name: SpannedOption<String>,
    pub lane: SpannedOption<String>,
    pub model: SpannedOption<String>,
    pub kv_bytes_per_token: SpannedOption<toml::Value>,
    pub kv_dtype: SpannedOption<String>,
    pub max_context_tokens: SpannedOption<i64>,
    pub requests_per_task: SpannedOption<i64>,
    pub max_parallel: SpannedOption<i64>,
    pub guaranteed: SpannedOption<i64>,
    pub extra_bytes: SpannedOption<toml::Value>,
    pub footprint: SpannedOption<String>,
    pub pool: SpannedOption<String>,
}

/// A file's text and where it came from, for turning spans into lines.
#[derive(Debug, Clone)]
pub(crate) struct FileText {
    /// The file (absolute when it came from disk), or a label such as `<embedded default>`.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
    /// Byte offset of every `\n`, so a span's line is a binary search: counting newlines from
    /// the start for every value made `check-config` quadratic (16,000 profiles took 39 s).
    newlines: Vec<usize>,
    /// The text is command-line flags, one a line ([`FlagLines`]): a value's source is the
    /// flag on its line.
    flags: bool,
}

impl FileText {
    /// `text` read from `path`.
    pub fn new(path: PathBuf, text: String) -> FileText {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        FileText {
            path,
            text,
            newlines,
            flags: false,
        }
    }

    /// The 1-based line of byte offset `at`.
    pub fn line(&self, at: usize) -> usize {
        let end = at.min(self.text.len());
        // Newlines strictly before `end`.
        self.newlines.partition_point(|&n| n < end) + 1
    }

    /// The source of a value at `span` in this file (for flags, the flag that gave it).
    pub fn source(&self, span: &std::ops::Range<usize>) -> Source {
        let line = self.line(span.start);
        if self.flags {
            let start = line.checked_sub(2).map_or(0, |i| self.newlines[i] + 1);
            let end = self
                .newlines
                .get(line - 1)
                .copied()
                .unwrap_or(self.text.len());
            return Source::Flag {
                flag: self.text[start..end].to_owned(),
            };
        }
        Source::File {
            path: self.path.clone(),
            line: Some(line),
        }
    }

    /// The directory the file lives in (relative paths in it resolve against this).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Command-line flags written as a file, one flag a line, so a raw config built from flags
/// (stage 1 without the TOML) says of each value which flag gave it: stage 2 then reads flags
/// with the same rules and messages as a file's keys, and its problems name the flag.
#[derive(Debug, Default)]
pub(crate) struct FlagLines {
    text: String,
}

impl FlagLines {
    /// `value`, spanned at a line of its own that names `flag`.
    pub fn value<T>(&mut self, flag: &str, value: T) -> Spanned<T> {
        let start = self.text.len();
        self.text.push_str(flag);
        let span = start..self.text.len();
        self.text.push('\n');
        Spanned::new(span, value)
    }

    /// The flags as a file whose sources are [`Source::Flag`].
    pub fn into_file(self) -> FileText {
        FileText {
            flags: true,
            ..FileText::new(PathBuf::from("<flags>"), self.text)
        }
    }
}

/// Parse a config file (stage 1).
///
/// # Errors
///
/// Invalid TOML, an unknown key or a value of the wrong TOML type, as one problem naming the
/// file and line.
pub(crate) fn parse_file(file: &FileText) -> Result<RawConfig, Problem> {
    toml::from_str(&file.text).map_err(|e| de_problem(file, &e))
}

/// Parse one profile file from `profiles_dir` (stage 1): either the keys of one profile
/// alone, or one or more `[[profiles]]` tables (the form a config file uses, so a profile can
/// be pasted between the two unchanged).
///
/// # Errors
///
/// As [`parse_file`]; in the `[[profiles]]` form, a key outside those tables is unknown.
pub(crate) fn parse_profile(file: &FileText) -> Result<Vec<Spanned<RawProfile>>, Problem> {
    /// A profile file in the `[[profiles]]` form.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tables {
        profiles: Vec<Spanned<RawProfile>>,
    }
    // Which form: a top-level `profiles` array (a bare profile has no such key). Invalid
    // TOML falls through to the bare form, whose error names the line.
    let tables_form = toml::from_str::<toml::Table>(&file.text)
        .is_ok_and(|t| matches!(t.get("profiles"), Some(toml::Value::Array(_))));
    if tables_form {
        return toml::from_str::<Tables>(&file.text)
            .map(|t| t.profiles)
            .map_err(|e| de_problem(file, &e));
    }
    let len = file.text.len();
    toml::from_str::<RawProfile>(&file.text)
        .map(|p| vec![Spanned::new(0..len, p)])
        .map_err(|e| de_problem(file, &e))
}

fn de_problem(file: &FileText, e: &toml::de::Error) -> Problem {
    let line = e.span().map(|s| file.line(s.start));
    let msg = e.message().trim_end().replace('\n', " ");
    let key = match unknown_field(&msg) {
        Some(field) => match e.span().and_then(|s| table_at(&file.text, s.start)) {
            Some(table) => format!("{table}.{field}"),
            None => field,
        },
        None => "(toml syntax)".to_owned(),
    };
    let fix = if msg.starts_with("unknown field") {
        "remove it or fix its spelling"
    } else if msg.starts_with("invalid type") {
        "write the value with the type the key expects (strings quoted, sizes as \"24GiB\", durations as \"15s\")"
    } else {
        "fix the TOML syntax at that line"
    };
    Problem {
        source: Source::File {
            path: file.path.clone(),
            line,
        },
        key,
        detail: format!("{msg}; {fix}"),
    }
}

/// The `[table]` or `[[table]]` header in force at byte `at` (`None` at top level), so an
/// unknown key is named with its table (`gpu.headrom`).
fn table_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..at.min(text.len())];
    // Only whole lines before the one with the error (which may be the header itself).
    let before = &before[..before.rfind('\n').unwrap_or(0)];
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    let name = header.trim_start_matches('[');
    let name = &name[..name.find(']')?];
    Some(name.trim().to_owned())
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}
