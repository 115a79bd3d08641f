//! Stage 2 of the config: raw values from the file, env and flags merged into a validated
//! [`Config`], every problem collected.
//!
//! Pure apart from the [`Files`] port (which the edge implements with the real filesystem):
//! no environment reads (the `env` lookup is passed in), no clock, no logging.
//!
//! # Layout
//!
//! - this file: stage 1 of the profile files, then `build`: the main file's tables, env
//!   and flags, in file order;
//! - `collector`: where each problem and each value's source is recorded;
//! - `parsers`: the small value parsers whose messages say what to set;
//! - `pool`: one capacity pool from its `gpu` and `engine` tables;
//! - `profile`: one profile, and whether a task of it can ever fit;
//! - `cross_checks`: what holds across profiles (names, lanes, guarantees).

mod collector;
mod cross_checks;
mod parsers;
mod pool;
mod profile;

use collector::{Collector, over};
use cross_checks::{check_guaranteed, check_names_and_lanes};
use parsers::{abs_path, choice, parse_headroom_str, positive_duration, tilde, u32_at_least};
use pool::pool;
use profile::{Fit, profile};

use super::raw::{self, FileText, RawConfig, RawEngine, RawGpu, RawProfile};
use super::units::{format_size, parse_duration, parse_size};
use super::*;
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
    let mut v = Collector {
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
        if let Some(pc) = profile(&mut v, file, &key, p, &pools, &mut idents, Fit::Check) {
            profiles.push(pc);
        }
    }
    if let Some(dir) = &raw.profiles_dir {
        v.sources
            .insert("profiles_dir".into(), file.source(&dir.span()));
    }
    for (f, p) in profile_files {
        let key = profile_file_key(&f);
        if let Some(pc) = profile(&mut v, &f, &key, p, &pools, &mut idents, Fit::Check) {
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

/// The key a profile file's problems are filed under until its name is known:
/// `profiles[<file stem>]`.
fn profile_file_key(f: &FileText) -> String {
    let label = f
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("profiles[{label}]")
}

/// Stages 1 and 2 on one profile file (either form), each profile checked against `pool` as
/// a config's `profiles_dir` files are: how `plan` reads the repository's ready profiles.
pub(crate) fn profiles_from_file(
    file: &FileText,
    pool: &PoolConfig,
) -> Result<Vec<ProfileConfig>, ConfigError> {
    let raw = raw::parse_profile(file).map_err(|p| ConfigError { problems: vec![p] })?;
    let mut v = Collector {
        problems: Vec::new(),
        sources: BTreeMap::new(),
    };
    let key = profile_file_key(file);
    let mut idents = Vec::new();
    let mut profiles = Vec::new();
    for p in raw {
        if let Some(pc) = profile(
            &mut v,
            file,
            &key,
            p,
            std::slice::from_ref(pool),
            &mut idents,
            Fit::Check,
        ) {
            profiles.push(pc);
        }
    }
    if v.problems.is_empty() {
        Ok(profiles)
    } else {
        Err(ConfigError {
            problems: v.problems,
        })
    }
}

/// Stage 2 on a pool given as flags (`plan`'s: raw `[gpu]`/`[engine]` tables whose values are
/// spanned at their flags, [`raw::FlagLines`]) and on the profile the flags describe, if any,
/// checked against that pool: the same rules and messages as a config's keys, each problem
/// naming its flag. Whether a task of the profile can ever fit is left to the caller.
pub(crate) fn pool_from_flags(
    flags: &FileText,
    gpu: &RawGpu,
    engine: &RawEngine,
    raw_profile: Option<Spanned<RawProfile>>,
) -> Result<(PoolConfig, Option<ProfileConfig>), ConfigError> {
    let mut v = Collector {
        problems: Vec::new(),
        sources: BTreeMap::new(),
    };
    let pool = pool(&mut v, flags, DEFAULT_POOL, "", gpu, engine);
    let profile = raw_profile.and_then(|p| {
        profile(
            &mut v,
            flags,
            "profiles[flags]",
            p,
            std::slice::from_ref(&pool),
            &mut Vec::new(),
            Fit::Report,
        )
    });
    if v.problems.is_empty() {
        Ok((pool, profile))
    } else {
        Err(ConfigError {
            problems: v.problems,
        })
    }
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
