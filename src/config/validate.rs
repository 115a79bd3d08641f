//! Stage 2 of the config: raw values from the file, env and flags merged into a validated
//! [`Config`], every problem collected.
//!
//! Pure apart from the [`Files`] port (which the edge implements with the real filesystem):
//! no environment reads (the `env` lookup is passed in), no clock, no logging.

use super::raw::{self, FileText, Opt, RawConfig, RawEngine, RawGpu, RawProfile};
use super::units::{format_size, parse_duration, parse_size, show};
use super::*;
use crate::catalog::{self, KvDtype, ModelSpec};
use crate::governor::admission::{Infeasible, KnownGpu, feasible, longest_feasible};
use std::collections::HashMap;
use toml::Spanned;

/// Hermes's board/profile slug rule (`^[a-z0-9][a-z0-9\-_]{0,63}$`, HERMES.md §1).
pub(crate) fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// A value given by env or flag, with where it came from.
struct Over {
    value: String,
    source: Source,
}

/// Flag beats env.
fn over(
    flag: Option<String>,
    flag_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Option<Over> {
    if let Some(value) = flag {
        return Some(Over {
            value,
            source: Source::Flag {
                flag: flag_name.to_owned(),
            },
        });
    }
    env(var).filter(|v| !v.is_empty()).map(|value| Over {
        value,
        source: Source::Env {
            var: var.to_owned(),
        },
    })
}

/// The problem and source collector.
struct V {
    problems: Vec<Problem>,
    sources: BTreeMap<String, Source>,
}

impl V {
    fn err(&mut self, source: Source, key: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            source,
            key: key.into(),
            detail: detail.into(),
        });
    }

    /// Where `key` was set, else `fallback`.
    fn src(&self, key: &str, fallback: &Source) -> Source {
        self.sources
            .get(key)
            .cloned()
            .unwrap_or_else(|| fallback.clone())
    }

    /// Read `raw` (absent → `None`), parse it, record its source; a parse failure is a
    /// problem and gives `None`.
    fn get<T, U>(
        &mut self,
        f: &FileText,
        key: &str,
        raw: &Opt<T>,
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
    fn over<U>(
        &mut self,
        key: &str,
        o: &Option<Over>,
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

fn int_at_least(min: i64) -> impl Fn(&i64) -> Result<u64, String> {
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

fn u32_at_least(min: i64) -> impl Fn(&i64) -> Result<u32, String> {
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

fn headroom(h: f64) -> Result<f64, String> {
    if h > 0.0 && h <= 1.0 {
        Ok(h)
    } else {
        Err(format!(
            "{h} is outside (0, 1]; set the fraction of capacity the governor may fill, such as {DEFAULT_HEADROOM} (the default)"
        ))
    }
}

fn parse_headroom_str(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("\"{s}\" is not a number; set a fraction in (0, 1] such as 0.85"))
        .and_then(headroom)
}

fn abs_path(s: &str, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("\"{s}\" is relative; set an absolute path {what}"))
    }
}

/// `~/x` in a file value is `$HOME/x` (the shell would have expanded it on a command line).
fn tilde(s: &str, home: Option<&Path>) -> String {
    match (s.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest).display().to_string(),
        _ => s.to_owned(),
    }
}

fn positive_duration(v: &toml::Value) -> Result<Duration, String> {
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

fn choice<T: Copy>(s: &str, options: &[(&str, T)]) -> Result<T, String> {
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

fn kv_dtype(s: &str) -> Result<KvDtype, String> {
    // The catalog also accepts engines' spellings (`fp16`, `fp8_e4m3`).
    s.parse::<KvDtype>().map_err(|e| e.to_string())
}

fn lookup_model(name: &str) -> Result<&'static ModelSpec, String> {
    // The catalog's message lists close names and the kv_bytes_per_token alternative.
    catalog::lookup(name).map_err(|e| e.to_string())
}

/// Stage 1 on `file` and the `profiles_dir` files, then stage 2.
pub(crate) fn load_from(
    file: Option<FileText>,
    args: &ConfigArgs,
    env: &dyn Fn(&str) -> Option<String>,
    files: &dyn Files,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let had_file = file.is_some();
    let (file, raw) = match file {
        Some(f) => match raw::parse_file(&f) {
            Ok(r) => (f, r),
            Err(p) => {
                problems.push(p);
                (f, RawConfig::default())
            }
        },
        None => (
            FileText::new(PathBuf::from("<defaults>"), String::new()),
            RawConfig::default(),
        ),
    };
    let mut profile_files = Vec::new();
    if let Some(dir) = &raw.profiles_dir {
        let path = file.dir().join(dir.get_ref());
        match files.read_profiles_dir(&path) {
            Ok(list) => {
                for (p, text) in list {
                    let ft = std::rc::Rc::new(FileText::new(p, text));
                    match raw::parse_profile(&ft) {
                        Ok(list) => {
                            profile_files.extend(list.into_iter().map(|rp| (ft.clone(), rp)));
                        }
                        Err(prob) => problems.push(prob),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => problems.push(Problem {
                source: file.source(&dir.span()),
                key: "profiles_dir".into(),
                detail: e.to_string(),
            }),
            Err(e) => problems.push(Problem {
                source: file.source(&dir.span()),
                key: "profiles_dir".into(),
                detail: format!(
                    "cannot read {}: {e}; create the directory (one profile per .toml file) or fix the path (relative paths resolve against the config file's directory)",
                    path.display()
                ),
            }),
        }
    }
    let inline = raw.profiles.as_ref().map_or(0, Vec::len);
    if inline + profile_files.len() > MAX_PROFILES {
        // Refused before stage 2, whose work grows with the profiles.
        let source = match (&raw.profiles, &raw.profiles_dir) {
            (Some(list), _) if !list.is_empty() => file.source(&list[0].span()),
            (_, Some(dir)) => file.source(&dir.span()),
            _ => file.source(&(0..0)),
        };
        problems.push(Problem {
            source,
            key: "profiles".into(),
            detail: format!(
                "{} profiles ([[profiles]] and profiles_dir files together){}, more than the limit of {MAX_PROFILES}; govern at most {MAX_PROFILES} profiles (one per Hermes profile that needs the GPU)",
                inline + profile_files.len(),
                if profile_files.len() > MAX_PROFILES { " or more" } else { "" },
            ),
        });
        return Err(ConfigError { problems });
    }
    let inp = Input {
        file: &file,
        had_file,
        profile_files,
        args,
        env,
        files,
    };
    build(inp, raw, problems)
}

/// Everything stage 2 reads besides the parsed main file.
struct Input<'a> {
    file: &'a FileText,
    had_file: bool,
    /// Each profile read from `profiles_dir`, with its file (shared by the profiles of one
    /// file in the `[[profiles]]` form).
    profile_files: Vec<(std::rc::Rc<FileText>, Spanned<RawProfile>)>,
    args: &'a ConfigArgs,
    env: &'a dyn Fn(&str) -> Option<String>,
    files: &'a dyn Files,
}

fn build(inp: Input<'_>, raw: RawConfig, problems: Vec<Problem>) -> Result<Config, ConfigError> {
    let Input {
        file,
        had_file,
        profile_files,
        args,
        env,
        files,
    } = inp;
    let mut v = V {
        problems,
        sources: BTreeMap::new(),
    };
    let path_str = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());

    // [hermes]
    let rh = raw.hermes.unwrap_or_default();
    let o_bin = over(
        path_str(&args.hermes_bin),
        "--hermes-bin",
        env,
        ENV_HERMES_BIN,
    );
    let o_home = over(
        path_str(&args.hermes_home),
        "--hermes-home",
        env,
        ENV_HERMES_HOME,
    );
    let o_board = over(args.board.clone(), "--board", env, ENV_BOARD);
    let bin_fix = "(`command -v hermes` or `kanban-governor doctor` prints it): cron and systemd do not share your PATH";
    let bin = match &o_bin {
        Some(_) => v.over("hermes.bin", &o_bin, |s| abs_path(s, bin_fix)),
        None => v.get(file, "hermes.bin", &rh.bin, |s: &String| {
            abs_path(&tilde(s, user_home(env).as_deref()), bin_fix)
        }),
    };
    let home_fix = "for the governed board's HERMES_HOME, e.g. \"/home/me/.hermes\"";
    let home = match &o_home {
        Some(_) => v.over("hermes.home", &o_home, |s| abs_path(s, home_fix)),
        None => v.get(file, "hermes.home", &rh.home, |s: &String| {
            abs_path(&tilde(s, user_home(env).as_deref()), home_fix)
        }),
    };
    let home = match home {
        Some(h) => h,
        None => match user_home(env) {
            Some(h) => h.join(".hermes"),
            None => {
                if rh.home.is_none() && o_home.is_none() {
                    v.err(
                        Source::Default,
                        "hermes.home",
                        "no HOME to default to ~/.hermes; set hermes.home, HERMES_HOME or --hermes-home",
                    );
                }
                PathBuf::from("/nonexistent/.hermes")
            }
        },
    };
    let board_check = |s: &str| {
        if is_slug(s) {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "\"{s}\" is not a board slug; use \"default\" or lowercase letters, digits, '-' and '_' (first a letter or digit, at most 64)"
            ))
        }
    };
    let board = match &o_board {
        Some(_) => v.over("hermes.board", &o_board, board_check),
        None => v.get(file, "hermes.board", &rh.board, |s: &String| board_check(s)),
    }
    .unwrap_or_else(|| DEFAULT_BOARD.to_owned());
    let max_semantics = v.get(file, "hermes.max_semantics", &rh.max_semantics, |s: &String| {
        match s.as_str() {
            "live_cap" | "live-cap" => Ok(MaxSemantics::LiveCap),
            "per_tick" | "per-tick" => Ok(MaxSemantics::PerTick),
            other => Err(format!(
                "\"{other}\" is not a --max meaning; set \"live_cap\" (Hermes 0.19.0 and later, hermes-agent#23295) or \"per_tick\" (earlier), or remove it to detect it from the Hermes version"
            )),
        }
    });

    // Pools.
    let o_headroom = over(
        args.headroom.map(|h| h.to_string()),
        "--headroom",
        env,
        ENV_HEADROOM,
    );
    let headroom_over = v.over("headroom", &o_headroom, parse_headroom_str);
    let mut pools: Vec<(String, PoolConfig)> = Vec::new();
    let shorthand = raw.gpu.is_some() || raw.engine.is_some();
    if shorthand || raw.pools.is_none() {
        let gpu = raw.gpu.unwrap_or_default();
        let engine = raw.engine.unwrap_or_default();
        let p = pool(&mut v, file, DEFAULT_POOL, "", &gpu, &engine);
        pools.push((String::new(), p));
    }
    for (name, p) in raw.pools.unwrap_or_default() {
        let src = file.source(&p.span());
        let prefix = format!("pools.{name}.");
        if !is_slug(&name) {
            v.err(
                src.clone(),
                format!("pools.{name}"),
                "pool names are lowercase letters, digits, '-' and '_'; rename the table",
            );
        }
        if name == DEFAULT_POOL && shorthand {
            v.err(
                src.clone(),
                "pools.default",
                "declared twice: [gpu]/[engine] already are the pool \"default\"; move them into [pools.default] or rename this pool",
            );
            continue;
        }
        let p = p.into_inner();
        let Some(gpu) = p.gpu else {
            v.err(
                src,
                format!("{prefix}gpu"),
                format!("missing; add a [{prefix}gpu] table (telemetry, memory, headroom)"),
            );
            continue;
        };
        let Some(engine) = p.engine else {
            v.err(
                src,
                format!("{prefix}engine"),
                format!("missing; add a [{prefix}engine] table with kind and url"),
            );
            continue;
        };
        let pc = pool(&mut v, file, &name, &prefix, &gpu, &engine);
        pools.push((prefix, pc));
    }
    if let (Some(h), Some(src)) = (headroom_over, v.sources.remove("headroom")) {
        for (prefix, p) in &mut pools {
            p.gpu.headroom = h;
            v.sources
                .insert(format!("{prefix}gpu.headroom"), src.clone());
        }
    }
    let pools: Vec<PoolConfig> = pools.into_iter().map(|(_, p)| p).collect();

    // [latency]
    let rl = raw.latency.unwrap_or_default();
    let ttft_slo = v
        .get(file, "latency.ttft_slo", &rl.ttft_slo, positive_duration)
        .unwrap_or(DEFAULT_TTFT_SLO);
    // Its default depends on `proxy.listen`, read below.
    let signal = v.get(file, "latency.signal", &rl.signal, |s: &String| {
        choice(
            s,
            &[
                ("engine", LatencySignal::Engine),
                ("probe", LatencySignal::Probe),
                ("proxy", LatencySignal::Proxy),
            ],
        )
    });
    let min_limit = v
        .get(file, "latency.min_limit", &rl.min_limit, u32_at_least(1))
        .unwrap_or(DEFAULT_MIN_LIMIT);
    let max_limit = v
        .get(file, "latency.max_limit", &rl.max_limit, u32_at_least(1))
        .unwrap_or(DEFAULT_MAX_LIMIT);
    if max_limit < min_limit {
        let src = v.src(
            "latency.max_limit",
            &v.src("latency.min_limit", &Source::Default),
        );
        v.err(
            src,
            "latency.max_limit",
            format!(
                "{max_limit} is below latency.min_limit = {min_limit}; set max_limit ≥ min_limit"
            ),
        );
    }
    let backoff = v
        .get(file, "latency.backoff", &rl.backoff, |&b| {
            if (0.5..1.0).contains(&b) {
                Ok(b)
            } else {
                Err(format!(
                    "{b} is outside [0.5, 1); set the factor the limit is multiplied by on a latency miss, such as {DEFAULT_BACKOFF}"
                ))
            }
        })
        .unwrap_or(DEFAULT_BACKOFF);
    let dwell = v
        .get(file, "latency.dwell", &rl.dwell, parse_duration)
        .unwrap_or(DEFAULT_DWELL);

    // [http]
    let rhttp = raw.http.unwrap_or_default();
    let public = v
        .get(file, "http.public", &rhttp.public, |b: &bool| Ok(*b))
        .unwrap_or(false);

    // [proxy]
    let rp = raw.proxy.unwrap_or_default();
    let proxy_public = v
        .get(file, "proxy.public", &rp.public, |b: &bool| Ok(*b))
        .unwrap_or(false);
    let proxy_listen = v.get(file, "proxy.listen", &rp.listen, |s: &String| {
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            format!("\"{s}\" is not an address with a port; write it as \"127.0.0.1:9478\"")
        })?;
        proxy_listen_allowed(addr, proxy_public)?;
        Ok(addr)
    });
    let proxy_max_body = v
        .get(file, "proxy.max_body", &rp.max_body, |val| {
            let b = parse_size(val)?;
            if b.get() == 0 {
                return Err(format!(
                    "0B would refuse every request; set a size such as \"{}\"",
                    format_size(DEFAULT_PROXY_MAX_BODY)
                ));
            }
            Ok(b)
        })
        .unwrap_or(DEFAULT_PROXY_MAX_BODY);
    let proxy_drain = v
        .get(file, "proxy.drain", &rp.drain, parse_duration)
        .unwrap_or(DEFAULT_PROXY_DRAIN);
    // The agents' own calls when they pass through the proxy; else the engine's histogram.
    let signal = signal.unwrap_or(if proxy_listen.is_some() {
        LatencySignal::Proxy
    } else {
        LatencySignal::Engine
    });

    // [dispatch]
    let rd = raw.dispatch.unwrap_or_default();
    let interval = v
        .get(file, "dispatch.interval", &rd.interval, positive_duration)
        .unwrap_or(DEFAULT_INTERVAL);
    let max_running = v.get(
        file,
        "dispatch.max_running",
        &rd.max_running,
        u32_at_least(1),
    );
    let max_wait = v
        .get(file, "dispatch.max_wait", &rd.max_wait, positive_duration)
        .unwrap_or(DEFAULT_MAX_WAIT);
    let timeout = v
        .get(file, "dispatch.timeout", &rd.timeout, positive_duration)
        .unwrap_or(DEFAULT_TIMEOUT);
    let o_state = over(path_str(&args.state_dir), "--state-dir", env, ENV_STATE_DIR);
    let state_dir = match &o_state {
        Some(_) => v.over("dispatch.state_dir", &o_state, |s| {
            abs_path(s, "for the governor's state (a directory it may create)")
        }),
        None => v.get(file, "dispatch.state_dir", &rd.state_dir, |s: &String| {
            Ok(file.dir().join(tilde(s, user_home(env).as_deref())))
        }),
    }
    .unwrap_or_else(|| home.join("governor"));

    // Profiles.
    let mut profiles = Vec::new();
    let mut idents = Vec::new();
    for (i, p) in raw.profiles.unwrap_or_default().into_iter().enumerate() {
        let key = format!("profiles[{i}]");
        if let Some(pc) = profile(&mut v, file, &key, p, &pools, &mut idents) {
            profiles.push(pc);
        }
    }
    if let Some(dir) = &raw.profiles_dir {
        v.sources
            .insert("profiles_dir".into(), file.source(&dir.span()));
    }
    for (f, p) in profile_files {
        let label = f
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = format!("profiles[{label}]");
        if let Some(pc) = profile(&mut v, &f, &key, p, &pools, &mut idents) {
            profiles.push(pc);
        }
    }
    check_names_and_lanes(&mut v, &idents, &home, &files.hermes_profiles(&home));
    for pool in &pools {
        check_guaranteed(&mut v, pool, &profiles);
    }

    if !v.problems.is_empty() {
        // File order reads best: by file, then line; env and flag problems last.
        v.problems.sort_by_key(|p| match &p.source {
            Source::File { path, line } => (0, path.clone(), line.unwrap_or(0)),
            _ => (1, PathBuf::new(), 0),
        });
        return Err(ConfigError {
            problems: v.problems,
        });
    }
    Ok(Config {
        path: had_file.then(|| file.path.clone()),
        hermes: HermesConfig {
            bin,
            home,
            board,
            max_semantics,
        },
        pools,
        latency: LatencyConfig {
            ttft_slo,
            signal,
            min_limit,
            max_limit,
            backoff,
            dwell,
        },
        dispatch: DispatchConfig {
            interval,
            max_running,
            max_wait,
            state_dir,
            timeout,
        },
        http: HttpConfig { public },
        proxy: ProxyConfig {
            listen: proxy_listen,
            public: proxy_public,
            max_body: proxy_max_body,
            drain: proxy_drain,
        },
        profiles,
        sources: v.sources,
    })
}

/// A non-loopback pass-through address needs `proxy.public = true`: the proxy forwards to
/// the engine with no authentication, so serving it to the network must be written in the
/// config. `run --proxy-listen` is checked with the same words.
///
/// # Errors
///
/// The message names `proxy.public` and both fixes.
pub fn proxy_listen_allowed(addr: std::net::SocketAddr, public: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || public {
        return Ok(());
    }
    Err(format!(
        "{addr} is not a loopback address: anyone who can connect could use the engine through the proxy, with no authentication; set proxy.public = true in the config to allow it, or listen on 127.0.0.1:{}",
        addr.port()
    ))
}

/// A profile's name and lane, kept even when the rest of it is broken, for the cross checks.
struct Ident {
    name: ProfileId,
    lane: String,
    source: Source,
    lane_source: Source,
}

/// Duplicate profiles and lanes, lanes that are profiles (governed or Hermes's own).
fn check_names_and_lanes(
    v: &mut V,
    profiles: &[Ident],
    home: &Path,
    hermes_profiles: &BTreeSet<String>,
) {
    // Maps instead of scans of the profiles before each one: linear in the number of
    // profiles (nested scans made 16,000 profiles take seconds).
    let mut by_name: HashMap<&str, &Ident> = HashMap::with_capacity(profiles.len());
    for p in profiles {
        by_name.entry(p.name.as_str()).or_insert(p);
    }
    let mut lanes_seen: HashMap<&str, &Ident> = HashMap::with_capacity(profiles.len());
    for p in profiles {
        let key = |f: &str| format!("profiles[{}].{f}", p.name);
        let lane_src = p.lane_source.clone();
        // `by_name` holds each name's first declaration: another one is a duplicate.
        let first_of_name = by_name.get(p.name.as_str()).copied();
        if let Some(first) = first_of_name.filter(|f| !std::ptr::eq(*f, p)) {
            v.err(
                p.source.clone(),
                key("name"),
                format!(
                    "profile \"{}\" is declared twice (first at {}); keep one, or govern another Hermes profile here",
                    p.name, first.source
                ),
            );
        }
        if let Some(first) = lanes_seen.get(p.lane.as_str()) {
            v.err(
                lane_src.clone(),
                key("lane"),
                format!(
                    "lane \"{}\" is also profile \"{}\"'s lane ({}); each profile needs its own lane: set lane = \"{}@gpu\"",
                    p.lane, first.name, first.source, p.name
                ),
            );
        }
        lanes_seen.entry(p.lane.as_str()).or_insert(p);
        if let Some(q) = by_name.get(p.lane.as_str()) {
            v.err(
                lane_src,
                key("lane"),
                format!(
                    "lane \"{}\" is the governed profile \"{}\": Hermes would dispatch held tasks itself; set lane = \"{}@gpu\"",
                    p.lane, q.name, p.name
                ),
            );
        } else if p.lane == "default" || hermes_profiles.contains(&p.lane) {
            let which = if p.lane == "default" {
                "\"default\" always exists".to_owned()
            } else {
                home.join("profiles").join(&p.lane).display().to_string()
            };
            v.err(
                lane_src,
                key("lane"),
                format!(
                    "lane \"{}\" is a real Hermes profile ({which}): Hermes would dispatch held tasks itself; set lane = \"{}@gpu\" (any name that is not a profile)",
                    p.lane, p.name
                ),
            );
        }
    }
}

/// The room all `guaranteed` tasks of a pool's profiles keep must fit the pool, or the
/// guarantee is a promise the governor cannot keep.
fn check_guaranteed(v: &mut V, pool: &PoolConfig, profiles: &[ProfileConfig]) {
    let mine: Vec<&ProfileConfig> = profiles
        .iter()
        .filter(|p| p.pool == pool.name && p.guaranteed > 0)
        .collect();
    let Some(last) = mine.last() else {
        return;
    };
    let sum = |f: &dyn Fn(&ProfileConfig) -> u64| -> u64 {
        mine.iter()
            .map(|p| u64::from(p.guaranteed).saturating_mul(f(p)))
            .fold(0u64, u64::saturating_add)
    };
    let who: Vec<String> = mine
        .iter()
        .map(|p| format!("{} × {}", p.guaranteed, p.name))
        .collect();
    let who = who.join(" + ");
    let mut over = Vec::new();
    if pool.engine.kind.kv_placement() == KvPlacement::EnginePool {
        if let Some(cap) = pool.engine.kv_capacity_tokens {
            let ceiling = (pool.gpu.headroom * cap as f64).floor() as u64;
            let need = sum(&|p| p.declared.kv_tokens);
            if need > ceiling {
                over.push(format!("{need} KV tokens > {ceiling} allowed"));
            }
        }
    } else if let Some(total) = pool.gpu.memory_total {
        let room = Bytes((pool.gpu.headroom * total.get() as f64).floor() as u64)
            .saturating_sub(pool.gpu.reserve)
            .saturating_sub(pool.gpu.baseline.unwrap_or(Bytes(0)));
        let need = Bytes(sum(&|p| p.declared.total_bytes().get()));
        if need > room {
            over.push(format!("{need} > {room} under the ceiling"));
        }
    }
    if let Some(slots) = pool.engine.slots {
        let need = sum(&|p| u64::from(p.declared.slots));
        if need > u64::from(slots) {
            over.push(format!("{need} slots > {slots}"));
        }
    }
    if !over.is_empty() {
        let key = format!("profiles[{}].guaranteed", last.name);
        let src = v.src(&key, &last.source);
        v.err(
            src,
            key,
            format!(
                "the room guaranteed in pool \"{}\" ({who}) does not fit: {}; lower guaranteed so the guarantees fit together",
                pool.name,
                over.join(", ")
            ),
        );
    }
}

fn selectors(
    val: &toml::Value,
    one: impl Fn(&toml::Value) -> Result<GpuSelector, String>,
) -> Result<Vec<GpuSelector>, String> {
    match val {
        toml::Value::Array(a) if !a.is_empty() => a.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// One pool from its `gpu` and `engine` tables.
fn pool(
    v: &mut V,
    f: &FileText,
    name: &str,
    prefix: &str,
    g: &RawGpu,
    e: &RawEngine,
) -> PoolConfig {
    let gpu_key = |s: &str| format!("{prefix}gpu.{s}");
    let eng_key = |s: &str| format!("{prefix}engine.{s}");

    let index = v.get(f, &gpu_key("index"), &g.index, |val| {
        selectors(val, |x| match x {
            toml::Value::Integer(n) if *n >= 0 && *n <= i64::from(u32::MAX) => {
                Ok(GpuSelector::Index(*n as u32))
            }
            other => Err(format!(
                "{} is not a GPU index; set a non-negative integer as nvidia-smi lists them (or a list such as [0, 1])",
                show(other)
            )),
        })
    });
    let uuid = v.get(f, &gpu_key("uuid"), &g.uuid, |val| {
        selectors(val, |x| match x {
            toml::Value::String(s) if !s.is_empty() => Ok(GpuSelector::Uuid(s.clone())),
            other => Err(format!(
                "{} is not a GPU UUID; set the quoted UUID `nvidia-smi -L` prints (\"GPU-…\")",
                show(other)
            )),
        })
    });
    let devices = match (index, uuid) {
        (Some(_), Some(_)) => {
            let src = v.src(&gpu_key("uuid"), &Source::Default);
            v.err(
                src,
                gpu_key("uuid"),
                "set either index or uuid, not both; remove one",
            );
            vec![GpuSelector::Index(0)]
        }
        (Some(i), None) => i,
        (None, Some(u)) => u,
        (None, None) => vec![GpuSelector::Index(0)],
    };

    let telemetry = v
        .get(f, &gpu_key("telemetry"), &g.telemetry, |val| {
            let fix =
                "set telemetry = \"nvml\", \"host\", \"static\" or { replay = \"samples.jsonl\" }";
            match val {
                toml::Value::String(s) => match s.as_str() {
                    "nvml" => Ok(Telemetry::Nvml),
                    "host" => Ok(Telemetry::Host),
                    "static" => Ok(Telemetry::Static),
                    other => Err(format!("\"{other}\" is not a telemetry source; {fix}")),
                },
                toml::Value::Table(t) if t.len() == 1 => match t.get("replay") {
                    Some(toml::Value::String(p)) => Ok(Telemetry::Replay(f.dir().join(p))),
                    _ => Err(format!("{} is not a telemetry source; {fix}", show(val))),
                },
                other => Err(format!("{} is not a telemetry source; {fix}", show(other))),
            }
        })
        .unwrap_or(Telemetry::Nvml);
    let memory_total = v.get(f, &gpu_key("memory_total"), &g.memory_total, |val| {
        let b = parse_size(val)?;
        if b.get() == 0 {
            Err("\"0B\" leaves nothing to govern; set the GPU's memory, e.g. \"80GiB\"".to_owned())
        } else {
            Ok(b)
        }
    });
    let baseline = v.get(f, &gpu_key("baseline"), &g.baseline, parse_size);
    if telemetry != Telemetry::Static {
        for (key, raw) in [("memory_total", &g.memory_total), ("baseline", &g.baseline)] {
            if let Some(s) = raw {
                v.err(
                    f.source(&s.span()),
                    gpu_key(key),
                    format!(
                        "is only read with telemetry = \"static\" (this pool measures it); remove {key} or set telemetry = \"static\""
                    ),
                );
            }
        }
    } else if g.memory_total.is_none() {
        let src = v.src(&gpu_key("telemetry"), &Source::Default);
        v.err(
            src,
            gpu_key("memory_total"),
            "telemetry = \"static\" needs memory_total; set it to the GPU's memory, e.g. memory_total = \"80GiB\"",
        );
    }
    let headroom = v
        .get(f, &gpu_key("headroom"), &g.headroom, |&h| headroom(h))
        .unwrap_or(DEFAULT_HEADROOM);
    let reserve = v
        .get(f, &gpu_key("reserve"), &g.reserve, parse_size)
        .unwrap_or(DEFAULT_RESERVE);
    if let Some(total) = memory_total {
        if reserve >= total {
            let src = v.src(&gpu_key("reserve"), &Source::Default);
            v.err(
                src,
                gpu_key("reserve"),
                format!(
                    "{} is not below memory_total = {}; set a reserve smaller than the GPU, e.g. \"1GiB\"",
                    format_size(reserve),
                    format_size(total)
                ),
            );
        }
        if let Some(b) = baseline.filter(|b| *b >= total) {
            let src = v.src(&gpu_key("baseline"), &Source::Default);
            v.err(
                src,
                gpu_key("baseline"),
                format!(
                    "{} is not below memory_total = {}; set what the GPU holds with no governed task (weights, other tenants)",
                    format_size(b),
                    format_size(total)
                ),
            );
        }
    }

    let kinds: Vec<(&str, EngineKind)> = EngineKind::ALL.iter().map(|k| (k.name(), *k)).collect();
    let kind = v
        .get(f, &eng_key("kind"), &e.kind, |s: &String| choice(s, &kinds))
        .unwrap_or(EngineKind::Vllm);
    let url = v.get(f, &eng_key("url"), &e.url, |s: &String| {
        if s == NO_ENGINE_URL {
            Ok(s.clone())
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(s.trim_end_matches('/').to_owned())
        } else {
            Err(format!(
                "\"{s}\" is not an http(s) URL; set the engine's base URL, e.g. \"http://127.0.0.1:8000\", or \"none\" when this host has no engine endpoint to read"
            ))
        }
    });
    let url = match (url, kind.default_url()) {
        (Some(u), _) => u,
        (None, Some(u)) => u.to_owned(),
        (None, None) => {
            if e.url.is_none() {
                let src = v.src(&eng_key("kind"), &Source::Default);
                v.err(
                    src,
                    eng_key("url"),
                    "kind = \"openai\" has no usual port; set url to the server's base URL, e.g. \"http://127.0.0.1:8000\", or \"none\" when this host has no engine endpoint to read",
                );
            }
            String::new()
        }
    };
    let model = v.get(f, &eng_key("model"), &e.model, |s: &String| {
        lookup_model(s).map(|m| m.name.to_owned())
    });
    let kv_capacity_tokens = v.get(
        f,
        &eng_key("kv_capacity_tokens"),
        &e.kv_capacity_tokens,
        int_at_least(1),
    );
    let slots = v.get(f, &eng_key("slots"), &e.slots, u32_at_least(1));
    let slot_context_tokens = v.get(
        f,
        &eng_key("slot_context_tokens"),
        &e.slot_context_tokens,
        int_at_least(1),
    );
    let max_staleness = v
        .get(
            f,
            &eng_key("max_staleness"),
            &e.max_staleness,
            positive_duration,
        )
        .unwrap_or(DEFAULT_MAX_STALENESS);

    PoolConfig {
        name: name.to_owned(),
        gpu: GpuConfig {
            devices,
            telemetry,
            memory_total,
            baseline,
            headroom,
            reserve,
        },
        engine: EngineConfig {
            kind,
            url,
            model,
            kv_capacity_tokens,
            slots,
            slot_context_tokens,
            max_staleness,
        },
    }
}

/// One profile. `None` when it is too broken to check further (its problems are recorded).
fn profile(
    v: &mut V,
    f: &FileText,
    fallback_key: &str,
    p: Spanned<RawProfile>,
    pools: &[PoolConfig],
    idents: &mut Vec<Ident>,
) -> Option<ProfileConfig> {
    let source = f.source(&p.span());
    let p = p.into_inner();
    let name_key = format!("{fallback_key}.name");
    let Some(name) = v.get(f, &name_key, &p.name, |s: &String| {
        if is_slug(s) {
            Ok(s.clone())
        } else {
            Err(format!(
                "\"{s}\" is not a Hermes profile name; use lowercase letters, digits, '-' and '_' as `hermes profile list` shows them"
            ))
        }
    }) else {
        if p.name.is_none() {
            v.err(
                source,
                name_key,
                "missing; set name to the Hermes profile that runs this profile's tasks",
            );
        }
        return None;
    };
    let key = |field: &str| format!("profiles[{name}].{field}");
    if let Some(s) = v.sources.remove(&name_key) {
        v.sources.insert(key("name"), s);
    }

    let lane = v
        .get(f, &key("lane"), &p.lane, |s: &String| {
            if s.is_empty()
                || s.starts_with('-')
                || s.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                Err(format!(
                    "\"{s}\" is not a usable assignee (empty, starting with '-', or holding spaces or control characters: Hermes would read it as a flag or split it); set a name such as \"{name}@gpu\""
                ))
            } else {
                Ok(s.clone())
            }
        })
        .unwrap_or_else(|| format!("{name}@gpu"));
    idents.push(Ident {
        name: ProfileId::from(name.clone()),
        lane: lane.clone(),
        source: source.clone(),
        lane_source: v.src(&key("lane"), &source),
    });
    let pool_name = v
        .get(f, &key("pool"), &p.pool, |s: &String| {
            Ok::<_, String>(s.clone())
        })
        .unwrap_or_else(|| DEFAULT_POOL.to_owned());
    let pool = pools.iter().find(|q| q.name == pool_name);
    if pool.is_none() {
        let src = v.src(&key("pool"), &source);
        let names: Vec<String> = pools.iter().map(|q| format!("\"{}\"", q.name)).collect();
        v.err(
            src,
            key("pool"),
            format!(
                "pool \"{pool_name}\" is not declared; set pool to one of {} or declare [pools.{pool_name}]",
                names.join(", ")
            ),
        );
    }

    let spec = v.get(f, &key("model"), &p.model, |s: &String| lookup_model(s));
    let direct = v.get(
        f,
        &key("kv_bytes_per_token"),
        &p.kv_bytes_per_token,
        |val| {
            // An integer (bytes) or an IEC size ("128KiB"); either way at least one byte.
            let n = match val {
                toml::Value::Integer(n) => int_at_least(1)(n)?,
                other => parse_size(other)?.get(),
            };
            if n == 0 {
                Err("0B per token is no footprint; set the KV bytes one token takes, e.g. 131072 or \"128KiB\"".to_owned())
            } else {
                Ok(n)
            }
        },
    );
    let dtype = v.get(f, &key("kv_dtype"), &p.kv_dtype, |s: &String| kv_dtype(s));
    let mut ok = true;
    match (&p.model, &p.kv_bytes_per_token) {
        (Some(_), Some(s)) => {
            v.err(
                f.source(&s.span()),
                key("kv_bytes_per_token"),
                "set either model (bytes per token computed from the catalog) or kv_bytes_per_token, not both; remove one",
            );
            ok = false;
        }
        (None, None) => {
            v.err(
                source.clone(),
                key("model"),
                "missing; set model to a catalog name (e.g. \"llama-3.1-8b\") or give kv_bytes_per_token",
            );
            ok = false;
        }
        (None, Some(_)) => {
            if let Some(s) = &p.kv_dtype {
                v.err(
                    f.source(&s.span()),
                    key("kv_dtype"),
                    "applies only with model (kv_bytes_per_token is already in the engine's KV dtype); remove kv_dtype",
                );
            }
        }
        (Some(_), None) => {}
    }
    let kv_dtype = dtype.unwrap_or(KvDtype::F16);

    let max_context = v.get(
        f,
        &key("max_context_tokens"),
        &p.max_context_tokens,
        int_at_least(1),
    );
    if p.max_context_tokens.is_none() {
        v.err(
            source.clone(),
            key("max_context_tokens"),
            "missing; set the longest context one request of this profile reaches, e.g. max_context_tokens = 32768",
        );
    }
    let requests = v
        .get(
            f,
            &key("requests_per_task"),
            &p.requests_per_task,
            u32_at_least(1),
        )
        .unwrap_or(1);
    let max_parallel = v.get(f, &key("max_parallel"), &p.max_parallel, u32_at_least(1));
    let guaranteed = v
        .get(f, &key("guaranteed"), &p.guaranteed, u32_at_least(0))
        .unwrap_or(0);
    if let Some(mp) = max_parallel.filter(|&mp| guaranteed > mp) {
        let src = v.src(&key("guaranteed"), &source);
        v.err(
            src,
            key("guaranteed"),
            format!(
                "{guaranteed} exceeds max_parallel = {mp}: room for more tasks than may run is wasted; set guaranteed ≤ {mp}"
            ),
        );
    }
    let extra_bytes = v
        .get(f, &key("extra_bytes"), &p.extra_bytes, parse_size)
        .unwrap_or(Bytes(0));
    let footprint = v
        .get(f, &key("footprint"), &p.footprint, |s: &String| {
            choice(
                s,
                &[
                    ("declared", FootprintMode::Declared),
                    ("learned", FootprintMode::Learned),
                    ("max", FootprintMode::Max),
                ],
            )
        })
        .unwrap_or(FootprintMode::Max);

    let pool = pool?;
    let max_context = max_context?;
    if !ok {
        return None;
    }
    // Exactly one of model / kv_bytes_per_token was given; if it was invalid, that is
    // already a problem and nothing more can be computed.
    let spec = match (&p.model, spec, direct) {
        (Some(_), Some(s), _) => Some(s),
        (None, _, Some(_)) => None,
        _ => return None,
    };
    // vLLM, SGLang and llama.cpp serve one model per server: a profile declaring another
    // would be charged the wrong KV per token.
    if let (Some(s), Some(served)) = (spec, &pool.engine.model) {
        let one_model = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
        if one_model && s.name != served.as_str() {
            let src = v.src(&key("model"), &source);
            v.err(
                src,
                key("model"),
                format!(
                    "\"{}\" is not the model pool \"{}\"'s {} engine serves (\"{served}\"); set model = \"{served}\" or put the profile in a pool that serves it",
                    s.name, pool.name, pool.engine.kind
                ),
            );
        }
    }
    let rpt = u64::from(requests);
    let worst_case = |tokens: u64| {
        super::worst_case_on(
            pool.engine.kind,
            spec,
            direct.unwrap_or(0),
            kv_dtype,
            tokens,
            requests,
            extra_bytes,
        )
    };
    let declared = worst_case(max_context);
    let ctx_src = v.src(&key("max_context_tokens"), &source);
    let never = |v: &mut V, detail: String| {
        v.err(ctx_src.clone(), key("max_context_tokens"), detail);
    };

    // Can a single task ever fit?
    if let Some(s) = spec {
        let model_max = u64::from(s.max_context);
        if max_context > model_max {
            never(
                v,
                format!(
                    "{max_context} is beyond {}'s context window of {model_max} tokens, so no request can reach it; set max_context_tokens ≤ {model_max}",
                    s.name
                ),
            );
        }
    }
    // Against the configured capacities and GPU, by the decision's own rule (the same
    // ceilings and integer arithmetic `decide` applies, so the two cannot disagree).
    let engine_pool = pool.engine.kind.kv_placement() == KvPlacement::EnginePool;
    let pool_policy = pool.policy();
    let gpu = pool.gpu.memory_total.map(|total| KnownGpu {
        total,
        baseline: pool.gpu.baseline.unwrap_or(Bytes(0)),
    });
    // A per-request engine charges KV + extra against `headroom × total − reserve` above the
    // baseline. An engine with a preallocated pool charges only extra in GPU bytes (its KV
    // pool is inside the baseline) and KV in tokens; without a known token capacity,
    // `headroom × total − reserve` still bounds any KV pool this GPU can hold.
    let bytes_too_many = |why: &Infeasible| {
        matches!(
            (engine_pool, why),
            (false, Infeasible::Bytes { .. }) | (true, Infeasible::KvPoolBytes { .. })
        )
    };
    let violations = feasible(&pool_policy, gpu, &declared)
        .err()
        .unwrap_or_default();
    for why in &violations {
        match *why {
            Infeasible::SlotContext { have: sct, .. } => never(
                v,
                format!(
                    "{max_context} exceeds pool \"{}\"'s slot_context_tokens = {sct}, so a request could never get a slot; set max_context_tokens ≤ {sct} or give the engine more context per slot",
                    pool.name
                ),
            ),
            Infeasible::Slots { have: slots, .. } => {
                let src = v.src(&key("requests_per_task"), &source);
                v.err(
                    src,
                    key("requests_per_task"),
                    format!(
                        "{requests} exceeds pool \"{}\"'s slots = {slots}, so a task could never start; set requests_per_task ≤ {slots} or give the engine more slots",
                        pool.name
                    ),
                );
            }
            Infeasible::KvTokens { ceiling, .. } => never(
                v,
                format!(
                    "a task's worst case is {} KV tokens ({requests} request(s) × {max_context}) but pool \"{}\" allows {ceiling} (headroom {} × kv_capacity_tokens {}), so it could never start; set max_context_tokens ≤ {}",
                    declared.kv_tokens,
                    pool.name,
                    pool.gpu.headroom,
                    pool.engine.kv_capacity_tokens.unwrap_or(0),
                    ceiling / rpt
                ),
            ),
            // Bytes against the GPU: below, once the other ceilings are named.
            Infeasible::Bytes { .. } | Infeasible::KvPoolBytes { .. } => {}
        }
    }
    if let Some(gpu) = gpu {
        let (total, baseline) = (gpu.total, gpu.baseline);
        for why in &violations {
            if let (true, Infeasible::Bytes { ceiling: room, .. }) = (engine_pool, why) {
                let src = v.src(&key("extra_bytes"), &source);
                v.err(
                    src,
                    key("extra_bytes"),
                    format!(
                        "{} is more than pool \"{}\" has beside its engine ({} = memory_total {} − reserve {} − baseline {}), so a task could never start; lower extra_bytes or baseline",
                        format_size(extra_bytes),
                        pool.name,
                        room,
                        format_size(total),
                        format_size(pool.gpu.reserve),
                        format_size(baseline)
                    ),
                );
            }
        }
        let (need_extra, room_why) = if engine_pool {
            (
                Bytes(0),
                format!(
                    "headroom {} × memory_total {} − reserve {}",
                    pool.gpu.headroom,
                    format_size(total),
                    format_size(pool.gpu.reserve)
                ),
            )
        } else {
            (
                extra_bytes,
                format!(
                    "headroom {} × memory_total {} − reserve {} − baseline {}",
                    pool.gpu.headroom,
                    format_size(total),
                    format_size(pool.gpu.reserve),
                    format_size(baseline)
                ),
            )
        };
        let too_many = violations.iter().find(|w| bytes_too_many(w));
        let room = match too_many {
            Some(Infeasible::Bytes { ceiling, .. } | Infeasible::KvPoolBytes { ceiling, .. }) => {
                Some(*ceiling)
            }
            _ => None,
        };
        if let Some(room) = room {
            // The longest context that would fit, by bisection (KV grows with tokens).
            let fits = |t: u64| {
                feasible(&pool_policy, Some(gpu), &worst_case(t))
                    .err()
                    .is_none_or(|why| !why.iter().any(bytes_too_many))
            };
            let lo = longest_feasible(max_context, fits);
            let fix = if lo == 0 {
                "not even one token fits: lower extra_bytes or baseline, or use a larger GPU"
                    .to_owned()
            } else {
                format!(
                    "set max_context_tokens ≤ {lo}, or use a smaller kv_dtype, fewer requests_per_task or a higher headroom"
                )
            };
            never(
                v,
                format!(
                    "a task's worst case is {} ({} KV for {requests} request(s) × {max_context} tokens + {} extra) but pool \"{}\" has {room} under the ceiling ({room_why}), so it could never start; {fix}",
                    declared.kv_bytes.saturating_add(need_extra),
                    declared.kv_bytes,
                    need_extra,
                    pool.name,
                ),
            );
        }
    }

    Some(ProfileConfig {
        name: ProfileId::from(name.clone()),
        lane,
        model: spec.map(|s| s.name.to_owned()),
        kv_bytes_per_token: if spec.is_some() { None } else { direct },
        kv_dtype,
        max_context_tokens: max_context,
        requests_per_task: requests,
        max_parallel,
        guaranteed,
        extra_bytes,
        footprint,
        pool: pool_name,
        declared,
        source,
    })
}
