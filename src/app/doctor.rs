//! `doctor`: checks the host before the governor runs on it, and prints ready cron and
//! systemd entries with absolute paths.
//!
//! Each check is one line, `ok`, `warn` or `fail`, and every warn or fail carries its fix:
//! Hermes found by absolute path (cron's `PATH` is only `/usr/bin:/bin`) and a version whose
//! `--max` meaning is known; no gateway dispatcher on the governed board's root; the board
//! present and readable read-only in either journal mode (WAL, or the rollback journal of
//! Hermes >= 0.20 on older SQLite), its fixes naming the Hermes binary found; no corrupt-board
//! quarantine copies; no `kanban.max_in_progress` beside the governor's `--max`
//! (hermes-agent#63466); every governed profile a Hermes profile and every lane not one; with
//! `proxy.listen` set, every governed profile's `model.base_url` pointing at the pass-through
//! (`http://<listen>/p/<profile>/v1`); the state dir writable; who holds the governor lock.
//!
//! Side effects: reads only. It opens the board `mode=ro` and creates no file beside it (a WAL
//! board is read under a brief read lock, `board_sqlite::quiet_read`), reads `/proc/locks` and
//! takes no other lock (not Hermes's `.dispatcher.lock`, not the governor's), and runs no
//! Hermes command (the version is read from the installed package, or `hermes --version` when
//! that fails).

use crate::adapters::board_sqlite::{self, BoardError, JournalMode};
use crate::adapters::hermes_home::{self as hh, MaxSemantics};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The governor's own lock file in the state dir: `tick` holds it per run, `run` for its
/// lifetime.
pub const GOVERNOR_LOCK_FILE: &str = "tick.lock";

/// The `PATH` cron gives its jobs (Debian/Ubuntu cron, cronie).
pub const CRON_PATH: &str = "/usr/bin:/bin";

/// Check the host: Hermes, its version and `--max` meaning, the gateway dispatcher, the board
/// (journal mode, read-only access, corrupt copies), Hermes caps that conflict with the governor,
/// profiles and lanes, the state dir and the governor lock.
///
/// Prints one line per check (`ok`, `warn`, `fail`; warn and fail lines end with the fix),
/// then a summary. `--cron` and `--systemd` print ready entries instead.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 no check failed (warnings allowed), 1 at least one check failed, 2 usage or config error."
)]
pub struct DoctorArgs {
    /// Print the checks as a JSON array of {name, status, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// Print a crontab line (absolute paths, 15 s ticks) instead of checking.
    #[arg(long, conflicts_with = "systemd")]
    pub cron: bool,
    /// Print systemd units (daemon service; tick service + timer) instead of checking.
    #[arg(long)]
    pub systemd: bool,
    /// Config file and overrides.
    #[command(flatten)]
    pub config: crate::config::ConfigArgs,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something should change.
    Warn,
    /// The governor would not work (or would be unsafe) as things are.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// Short stable name (`gateway_dispatcher`, `board_journal`, `profile:<name>`, ...).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (set for every warn and fail).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// A governed profile as doctor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRef {
    /// The Hermes profile that runs the work.
    pub name: String,
    /// The holding assignee (must not be a Hermes profile).
    pub lane: String,
}

/// What doctor needs from the governor config and the flags.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The governor config file (absolute), whether or not it exists.
    pub config_path: PathBuf,
    /// Whether that file exists.
    pub config_exists: bool,
    /// `hermes.bin` as configured (absolute, or a bare name left to `PATH`).
    pub hermes_bin: Option<PathBuf>,
    /// `HERMES_HOME` of the governed board.
    pub hermes_home: PathBuf,
    /// `hermes.board`.
    pub board: Option<String>,
    /// `dispatch.state_dir`.
    pub state_dir: PathBuf,
    /// The governed profiles.
    pub profiles: Vec<ProfileRef>,
    /// `hermes.max_semantics`, when the config says which `--max` meaning to assume.
    pub max_semantics: Option<MaxSemantics>,
    /// `proxy.listen`: where `run` serves the pass-through, when it does.
    pub proxy_listen: Option<std::net::SocketAddr>,
}

/// Run the command.
///
/// # Errors
///
/// The config cannot be loaded (exit 2), or stdout cannot be written.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let env = hh::process_env;
    let inputs = inputs_from_args(&args, &env)?;
    if args.cron || args.systemd {
        let exe = std::env::current_exe()
            .context("cannot find the path of this kanban-governor binary")?;
        let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
        let user = unit_user(&inputs.hermes_home, &env);
        let text = if args.cron {
            render_cron(&exe, &inputs)
        } else {
            render_systemd(&exe, &inputs, &user)
                .into_iter()
                .map(|(name, unit)| format!("# ---- /etc/systemd/system/{name} ----\n{unit}\n"))
                .collect::<Vec<_>>()
                .join("")
        };
        if args.json {
            let key = if args.cron { "crontab" } else { "systemd" };
            println!("{}", serde_json::json!({ key: text }));
        } else {
            print!("{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut checks = run_checks(&inputs, &env);
    // What tick, run and status need, read now (the config loaded above, so it loads again).
    if let Ok(cfg) = crate::config::load(&args.config, &env) {
        use crate::ports::Clock as _;
        checks.extend(live::live_checks(&cfg, crate::ports::SystemClock.now()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", render_human(&checks));
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The `User=` of the systemd units: whoever owns the Hermes home (Hermes and its board run as
/// them, and the governor must too), not whoever runs `doctor` (often root, via sudo). Falls
/// back to `$USER` when the home does not exist yet or its owner has no name.
fn unit_user(hermes_home: &Path, env: &dyn Fn(&str) -> Option<String>) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(hermes_home)
        .ok()
        .and_then(|m| crate::adapters::state_dir::user_name(m.uid()))
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "root".to_owned())
}

/// The inputs from the validated config (defaults < file < env < flags).
///
/// # Errors
///
/// The config is invalid (a [`crate::config::ConfigError`] listing every problem, exit 2).
pub fn inputs_from_args(
    args: &DoctorArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Inputs> {
    let cfg = match crate::config::load(&args.config, env) {
        Ok(cfg) => cfg,
        // `--cron`/`--systemd` print entries for a config the user is about to write: a
        // missing file is fine there (the entry says so); defaults and flags fill the rest.
        Err(e) if (args.cron || args.systemd) && !config_file_exists(args, env) => {
            let origin = crate::config::config_path(&args.config, env)
                .map_or_else(|| PathBuf::from("governor.toml"), |(p, _)| p);
            let origin = std::path::absolute(&origin).unwrap_or(origin);
            crate::config::load_str("", &origin, &args.config, env).map_err(|_| e)?
        }
        Err(e) => return Err(e.into()),
    };
    let config_path = match &cfg.path {
        Some(p) => p.clone(),
        None => crate::config::config_path(&args.config, env)
            .map_or_else(|| cfg.hermes.home.join("governor.toml"), |(p, _)| p),
    };
    let config_path = std::path::absolute(&config_path).unwrap_or(config_path);
    let max_semantics = cfg.hermes.max_semantics;
    Ok(Inputs {
        config_exists: config_path.is_file(),
        config_path,
        hermes_bin: cfg.hermes.bin.clone(),
        hermes_home: cfg.hermes.home.clone(),
        board: Some(cfg.hermes.board.clone()),
        state_dir: cfg.dispatch.state_dir.clone(),
        profiles: cfg
            .profiles
            .iter()
            .map(|p| ProfileRef {
                name: p.name.to_string(),
                lane: p.lane.clone(),
            })
            .collect(),
        max_semantics,
        proxy_listen: cfg.proxy.listen,
    })
}

fn config_file_exists(args: &DoctorArgs, env: &dyn Fn(&str) -> Option<String>) -> bool {
    crate::config::config_path(&args.config, env).is_some_and(|(p, _)| p.is_file())
}

/// Every check, in order. Reads the host; writes nothing.
pub fn run_checks(inputs: &Inputs, env: &dyn Fn(&str) -> Option<String>) -> Vec<Check> {
    // Hermes itself resolves paths from HERMES_HOME; the governor runs it with the configured
    // home, so resolve as that process will.
    let home_str = inputs.hermes_home.display().to_string();
    let hermes_env = |k: &str| {
        if k == hh::env_keys::HERMES_HOME {
            Some(home_str.clone())
        } else {
            env(k)
        }
    };
    let mut checks = Vec::new();
    let bin = check_hermes_bin(inputs, env, &mut checks);
    checks.push(check_version(bin.as_deref(), inputs.max_semantics));
    let hermes = hermes_command(bin.as_deref());
    let root = match hh::read_kanban_root(&hermes_env) {
        Ok(root) => {
            checks.push(check_hermes_home(&inputs.hermes_home, &root, &hermes));
            Some(root)
        }
        Err(e) => {
            checks.push(Check::fail(
                "hermes_home",
                e.to_string(),
                "set hermes.home (or HERMES_HOME) to the Hermes home of the governed board",
            ));
            None
        }
    };
    if let Some(root) = &root {
        checks.push(check_gateway(&hermes_env, &inputs.hermes_home, root));
        checks.extend(check_board(&hermes_env, inputs, root, &hermes));
        match hh::read_hermes_root(&hermes_env) {
            Ok(hermes_root) => {
                checks.extend(check_profiles(inputs, &hermes_root, &hermes));
                if let Some(listen) = inputs.proxy_listen {
                    checks.extend(check_proxy_base_urls(inputs, &hermes_root, &hermes, listen));
                    checks.push(check_base_url_env(inputs, &hermes_root, env, listen));
                }
            }
            Err(e) => checks.push(Check::fail(
                "profiles",
                e.to_string(),
                "set hermes.home (or HERMES_HOME) to the Hermes home of the governed board",
            )),
        }
    }
    checks.extend(check_hermes_caps(&inputs.hermes_home));
    checks.push(check_state_dir(&inputs.state_dir));
    checks.push(check_governor_lock(&inputs.state_dir));
    checks.push(check_state_db(&inputs.state_dir));
    checks
}

/// `PATH` lookup of a bare command name, as a shell would do it.
fn which(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

/// `hermes_bin` and `cron_path`: returns the absolute binary when found.
fn check_hermes_bin(
    inputs: &Inputs,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<Check>,
) -> Option<PathBuf> {
    let path_env = env("PATH").unwrap_or_default();
    let configured = inputs.hermes_bin.as_deref();
    let name = configured
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "hermes".to_owned());
    if let Some(abs) = configured.filter(|p| p.is_absolute()) {
        if is_executable(abs) {
            out.push(Check::ok(
                "hermes_bin",
                format!("hermes.bin = {}", abs.display()),
            ));
            out.push(Check::ok(
                "cron_path",
                format!("hermes.bin is absolute, so cron's PATH ({CRON_PATH}) does not matter"),
            ));
            return Some(abs.to_path_buf());
        }
        let why = if abs.exists() {
            "is not an executable file"
        } else {
            "does not exist"
        };
        out.push(Check::fail(
            "hermes_bin",
            format!("hermes.bin = {} {why}", abs.display()),
            "install hermes-agent (pip install hermes-agent) and set hermes.bin to the output of `command -v hermes`",
        ));
        out.push(Check::ok("cron_path", "hermes.bin is absolute"));
        return None;
    }
    // A bare name (or nothing): found on this shell's PATH, maybe not on cron's. A relative
    // path with a slash is not looked up in PATH, as in a shell: it depends on the cwd.
    let found = if name.contains('/') {
        Some(PathBuf::from(&name)).filter(|p| is_executable(p))
    } else {
        which(&name, &path_env)
    };
    let Some(found) = found else {
        out.push(Check::fail(
            "hermes_bin",
            format!("`{name}` is not on PATH and hermes.bin is not an absolute path"),
            "install hermes-agent (pip install hermes-agent) and set hermes.bin to its absolute path",
        ));
        out.push(Check::warn(
            "cron_path",
            "the config relies on PATH to find hermes",
            "set hermes.bin to the absolute path of hermes",
        ));
        return None;
    };
    // Name the path as found (a symlink such as /usr/local/bin/hermes stays one), made
    // absolute when PATH had a relative entry.
    let found = std::path::absolute(&found).unwrap_or(found);
    let how = if configured.is_some() {
        format!(
            "hermes.bin = {name:?} is not absolute; PATH finds {}",
            found.display()
        )
    } else {
        format!("hermes.bin is not set; PATH finds {}", found.display())
    };
    out.push(Check::ok("hermes_bin", how));
    let fix = format!(
        "set hermes.bin = \"{}\" in the governor config",
        found.display()
    );
    match which(&name, CRON_PATH) {
        Some(c) => out.push(Check::warn(
            "cron_path",
            format!(
                "the config relies on PATH; cron's PATH ({CRON_PATH}) finds {}, which may not be the same Hermes",
                c.display()
            ),
            fix,
        )),
        None => out.push(Check::warn(
            "cron_path",
            format!(
                "the config relies on PATH; cron's PATH ({CRON_PATH}) would not find `{name}`, so ticks from cron or systemd would fail"
            ),
            fix,
        )),
    }
    Some(found)
}

/// `hermes_version`: the installed version and what `--max` means in it.
fn check_version(bin: Option<&Path>, assume: Option<MaxSemantics>) -> Check {
    let Some(bin) = bin else {
        return Check::fail(
            "hermes_version",
            "no hermes binary, so no version",
            "fix hermes_bin first",
        );
    };
    let detected = hh::read_hermes_version(bin);
    match hh::choose_max_semantics(detected.as_ref(), assume) {
        Ok(semantics) => {
            let what = match &detected {
                Ok(v) => format!("Hermes {v} (read from {})", v.source),
                Err(e) => format!("version unknown ({e})"),
            };
            let source = if assume.is_some() {
                "as hermes.max_semantics says"
            } else {
                "for this version"
            };
            Check::ok(
                "hermes_version",
                format!("{what}; --max is a {semantics} {source}"),
            )
        }
        Err(e) => Check::fail(
            "hermes_version",
            e,
            "install hermes-agent >= 0.19.0 (pip install -U hermes-agent), or set hermes.max_semantics = \"live-cap\" or \"per-tick\"",
        ),
    }
}

/// `hermes_home`: the directory exists; says which kanban root it gives.
fn check_hermes_home(home: &Path, root: &Path, hermes: &str) -> Check {
    if home.is_dir() {
        let root_note = if root == home {
            String::new()
        } else {
            format!(" (kanban root {})", root.display())
        };
        Check::ok(
            "hermes_home",
            format!("HERMES_HOME = {}{root_note}", home.display()),
        )
    } else {
        Check::fail(
            "hermes_home",
            format!("HERMES_HOME = {} does not exist", home.display()),
            format!(
                "run `HERMES_HOME={} {hermes} kanban init`, or set hermes.home to the Hermes home of the governed board",
                home.display()
            ),
        )
    }
}

/// `gateway_dispatcher`: fail while a gateway dispatcher is live on this root; warn when one
/// would dispatch if a gateway were started.
fn check_gateway(env: &dyn Fn(&str) -> Option<String>, home: &Path, root: &Path) -> Check {
    let config = hh::config_path(home);
    let fix = format!(
        "set kanban.dispatch_in_gateway: false in {} (or HERMES_KANBAN_DISPATCH_IN_GATEWAY=0 in the gateway's environment) and restart the gateway",
        config.display()
    );
    match hh::read_gateway_dispatcher(env, home, root) {
        Err(e) => Check::fail(
            "gateway_dispatcher",
            format!("cannot tell whether a gateway dispatches this board: {e}"),
            fix,
        ),
        Ok(g) => match g.active() {
            Some(detail) => Check::fail("gateway_dispatcher", detail, fix),
            None if g.enabled() => Check::warn(
                "gateway_dispatcher",
                format!(
                    "no gateway runs now, but kanban.dispatch_in_gateway is true{}: a gateway started later would dispatch beside the governor",
                    if g.config_exists {
                        format!(" in {}", config.display())
                    } else {
                        " (the default)".to_owned()
                    }
                ),
                format!(
                    "set kanban.dispatch_in_gateway: false in {} before starting a gateway",
                    config.display()
                ),
            ),
            None => Check::ok(
                "gateway_dispatcher",
                format!(
                    "the gateway dispatcher is off ({}) and nobody holds {}{}",
                    if g.env_disabled {
                        "HERMES_KANBAN_DISPATCH_IN_GATEWAY"
                    } else {
                        "kanban.dispatch_in_gateway: false"
                    },
                    g.lock_path.display(),
                    match g.live_gateways.first() {
                        Some((_, pid)) => format!("; gateway pid {pid} runs without it"),
                        None => String::new(),
                    }
                ),
            ),
        },
    }
}

/// How a fix names Hermes: the absolute binary doctor found, else the bare name.
fn hermes_command(bin: Option<&Path>) -> String {
    bin.map_or_else(
        || "hermes".to_owned(),
        |b| sh_quote(&b.display().to_string()),
    )
}

/// `board`, `board_journal`, `board_owner`, `corrupt_backups`. `hermes` is the command the
/// fixes name (the absolute binary when known).
fn check_board(
    env: &dyn Fn(&str) -> Option<String>,
    inputs: &Inputs,
    root: &Path,
    hermes: &str,
) -> Vec<Check> {
    let loc = match hh::read_board_location(env, root, inputs.board.as_deref()) {
        Ok(loc) => loc,
        Err(e) => {
            return vec![Check::fail(
                "board",
                e.to_string(),
                "create the board or fix hermes.board",
            )];
        }
    };
    let slug = loc
        .slug
        .clone()
        .unwrap_or_else(|| "(HERMES_KANBAN_DB)".to_owned());
    let selected = match loc.source {
        hh::BoardSource::EnvDb => "pinned by HERMES_KANBAN_DB",
        hh::BoardSource::Explicit => "hermes.board",
        hh::BoardSource::EnvBoard => "HERMES_KANBAN_BOARD",
        hh::BoardSource::CurrentFile => "selected in kanban/current",
        hh::BoardSource::Default => "the default board",
    };
    let mut out = Vec::new();
    if !loc.db.is_file() {
        let init = if loc.slug.as_deref() == Some(hh::DEFAULT_BOARD) {
            format!(
                "HERMES_HOME={} {hermes} kanban init",
                inputs.hermes_home.display()
            )
        } else {
            format!(
                "HERMES_HOME={} {hermes} kanban boards create {slug}",
                inputs.hermes_home.display()
            )
        };
        out.push(Check::fail(
            "board",
            format!(
                "board {slug} ({selected}): {} does not exist",
                loc.db.display()
            ),
            format!("run `{init}`"),
        ));
        return out;
    }
    let mode = match hh::probe_board(&loc.db) {
        Ok(p) => {
            let total: u64 = p.tasks_by_status.values().sum();
            let by: Vec<String> = p
                .tasks_by_status
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            };
            out.push(Check::ok(
                "board",
                format!(
                    "board {slug} ({selected}) at {}: readable read-only, {total} tasks{by}",
                    loc.db.display()
                ),
            ));
            out.push(check_journal(p.journal_mode));
            Some(p.journal_mode)
        }
        Err(e) => {
            let list = format!(
                "HERMES_HOME={} {hermes} kanban list",
                inputs.hermes_home.display()
            );
            let fix = match &e {
                BoardError::NeedsHermes { .. } => format!(
                    "run `{list}` once: Hermes repairs the board as it opens it (the governor holds until then); then run doctor again"
                ),
                BoardError::Locked { .. } => format!(
                    "something held the board's write lock for {:?}: look for a stuck Hermes process (`fuser {}`), then run doctor again",
                    board_sqlite::BUSY_TIMEOUT,
                    loc.db.display()
                ),
                _ => format!(
                    "run the governor as the user Hermes runs as, and check the board with `{list}`"
                ),
            };
            out.push(Check::fail("board", e.to_string(), fix));
            None
        }
    };
    out.push(check_board_owner(&loc.db, mode));
    match hh::list_corrupt_backups(&loc.db) {
        Ok(b) if b.is_empty() => out.push(Check::ok(
            "corrupt_backups",
            "no kanban.db.corrupt.*.bak copies",
        )),
        Ok(b) => {
            let names: Vec<String> = b.iter().map(|p| p.display().to_string()).collect();
            out.push(Check::warn(
                "corrupt_backups",
                format!(
                    "{} corrupt-board quarantine cop{} beside the board: Hermes found this board corrupt before ({})",
                    b.len(),
                    if b.len() == 1 { "y" } else { "ies" },
                    names.join(", ")
                ),
                format!(
                    "while Hermes is idle, check `sqlite3 'file:{}?mode=ro' 'PRAGMA integrity_check'`, then move the .bak files away",
                    loc.db.display()
                ),
            ));
        }
        Err(e) => out.push(Check::warn(
            "corrupt_backups",
            e.to_string(),
            "make the board's directory readable by this user",
        )),
    }
    out
}

/// `board_journal`: both journal modes are supported; the detail says what the mode costs.
fn check_journal(mode: JournalMode) -> Check {
    match mode {
        JournalMode::Wal => Check::ok(
            "board_journal",
            "journal_mode is wal: Hermes's writes and the governor's read-only reads run side by side",
        ),
        JournalMode::Rollback => Check::ok(
            "board_journal",
            format!(
                "journal_mode is delete (a rollback journal: Hermes >= 0.20 makes such boards when the host's SQLite is older than 3.51.3, or with database.journal_mode: delete); supported, at a cost: a Hermes write and a governor read exclude each other for the length of one transaction (milliseconds), a read waits up to {:?} for a write (the busy timeout) and a tick holds if the board stays locked longer",
                board_sqlite::BUSY_TIMEOUT
            ),
        ),
    }
}

/// `board_owner`: the governor should run as the user that owns the board: SQLite opens a
/// WAL board's `-shm` file read-write even for a read-only connection (`HERMES.md` §2.3), and
/// the Hermes commands the governor runs write the board.
fn check_board_owner(db: &Path, mode: Option<JournalMode>) -> Check {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    match std::fs::metadata(db) {
        Ok(m) if m.uid() == me => Check::ok(
            "board_owner",
            format!("the board belongs to this user (uid {me})"),
        ),
        Ok(m) => Check::warn(
            "board_owner",
            format!(
                "the board belongs to uid {}, this process runs as uid {me}: {}",
                m.uid(),
                if mode == Some(JournalMode::Rollback) {
                    "the Hermes commands the governor runs would write the board as another user"
                        .to_owned()
                } else {
                    format!(
                        "the read-only reader needs write access to {}-shm",
                        db.display()
                    )
                }
            ),
            "run the governor (cron entry, systemd User=) as the user Hermes runs as",
        ),
        Err(e) => Check::warn(
            "board_owner",
            format!("cannot stat {}: {e}", db.display()),
            "run the governor as the user Hermes runs as",
        ),
    }
}

/// `max_in_progress` and `max_in_progress_per_profile` in Hermes's config.
fn check_hermes_caps(home: &Path) -> Vec<Check> {
    let config = match hh::read_config(home) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "hermes_config",
                e.to_string(),
                "fix the YAML in config.yaml (`hermes config` also fails on it)",
            )];
        }
    };
    let path = config.path.display();
    let mut out = Vec::new();
    match config.kanban.max_in_progress {
        Some(n) => out.push(Check::fail(
            "max_in_progress",
            format!(
                "kanban.max_in_progress = {n} in {path}: together with the governor's --max, `hermes kanban dispatch` spawns nothing once a task runs (hermes-agent#63466)"
            ),
            format!("remove kanban.max_in_progress from {path}; the governor's dispatch.max_running replaces it"),
        )),
        None => out.push(Check::ok("max_in_progress", "kanban.max_in_progress is not set")),
    }
    if let Some(n) = config.kanban.max_in_progress_per_profile {
        out.push(Check::warn(
            "max_in_progress_per_profile",
            format!(
                "kanban.max_in_progress_per_profile = {n} in {path}: Hermes may leave a task the governor released unspawned"
            ),
            format!("remove kanban.max_in_progress_per_profile from {path}; use max_parallel on the governor's profiles"),
        ));
    }
    out
}

/// `profile:<name>`: each governed profile is a Hermes profile and its lane is not. `root` is
/// the Hermes root (profiles), not the kanban root.
fn check_profiles(inputs: &Inputs, root: &Path, hermes: &str) -> Vec<Check> {
    if inputs.profiles.is_empty() {
        return vec![Check::warn(
            "profiles",
            "no profiles in the governor config: nothing is governed",
            format!(
                "add a [[profiles]] entry to {} (see the profiles/ directory of the repository)",
                inputs.config_path.display()
            ),
        )];
    }
    inputs
        .profiles
        .iter()
        .map(|p| {
            let name = format!("profile:{}", p.name);
            if !hh::profile_exists(root, &p.name) {
                Check::fail(
                    name,
                    format!(
                        "{} is not a Hermes profile ({} is not a directory), so released tasks would never spawn",
                        p.name,
                        hh::profile_dir(root, &p.name).display()
                    ),
                    format!(
                        "run `HERMES_HOME={} {hermes} profile create {} --no-alias`, or fix the profile name",
                        inputs.hermes_home.display(),
                        p.name
                    ),
                )
            } else if hh::profile_exists(root, &p.lane) {
                Check::fail(
                    name,
                    format!(
                        "lane {} is a Hermes profile, so Hermes would spawn the tasks the governor holds there",
                        p.lane
                    ),
                    format!("choose a lane that is not a profile (e.g. {}@gpu)", p.name),
                )
            } else {
                Check::ok(
                    name,
                    format!("Hermes profile exists; lane {} is not a profile", p.lane),
                )
            }
        })
        .collect()
}

/// The base URL a profile's Hermes model needs to go through the pass-through at `listen`
/// (an unspecified address such as `0.0.0.0` is reached on loopback from this host).
pub fn proxy_base_url(listen: std::net::SocketAddr, profile: &str) -> String {
    let host = if listen.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    format!("http://{host}/p/{profile}/v1")
}

/// Whether `url` reaches the pass-through at `listen` as `profile`: `http://`, the listen
/// address (`localhost` for a loopback one, any host for an unspecified one), its port, and
/// the path `/p/<profile>/v1` (a trailing `/` allowed).
fn goes_through_proxy(url: &str, listen: std::net::SocketAddr, profile: &str) -> bool {
    let Some(rest) = url.trim().strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.trim_end_matches('/') != format!("/p/{profile}/v1") {
        return false;
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = listen.ip();
    ip.is_unspecified()
        || host.parse::<std::net::IpAddr>().is_ok_and(|h| h == ip)
        || (ip.is_loopback() && host.eq_ignore_ascii_case("localhost"))
}

/// `proxy_base_url:<profile>` (with `proxy.listen` set): every governed profile's Hermes model
/// goes through the pass-through, or the governor learns nothing from its requests.
fn check_proxy_base_urls(
    inputs: &Inputs,
    root: &Path,
    hermes: &str,
    listen: std::net::SocketAddr,
) -> Vec<Check> {
    inputs
        .profiles
        .iter()
        .filter(|p| hh::profile_exists(root, &p.name))
        .map(|p| {
            let name = format!("proxy_base_url:{}", p.name);
            let want = proxy_base_url(listen, &p.name);
            let fix = format!(
                "run `HERMES_HOME={} {hermes} -p {} config set model.base_url {want}`",
                sh_quote(&inputs.hermes_home.display().to_string()),
                p.name
            );
            match hh::read_profile_base_url(root, &p.name) {
                Err(e) => Check::fail(name, e.to_string(), fix),
                Ok((_, Some(url))) if goes_through_proxy(&url, listen, &p.name) => Check::ok(
                    name,
                    format!("model.base_url = {url}: its requests go through the proxy"),
                ),
                Ok((path, url)) => {
                    let is = url.map_or_else(|| "unset".to_owned(), |u| format!("{u:?}"));
                    Check::fail(
                        name,
                        format!(
                            "{}'s model.base_url is {is} in {}, not the proxy's {want}: its requests bypass the proxy, so the governor cannot learn its footprint from them",
                            p.name,
                            path.display()
                        ),
                        fix,
                    )
                }
            }
        })
        .collect()
}

/// The environment variable Hermes prefers to `model.base_url`.
const BASE_URL_ENV: &str = "CUSTOM_BASE_URL";

/// `proxy_base_url_env`: no `CUSTOM_BASE_URL` sends a governed profile's workers past the
/// proxy. Hermes takes it before `model.base_url` for `provider: custom` (and its aliases
/// `vllm`, `llamacpp`, `ollama`, ...) and `auto` (0.19.0 `hermes_cli/runtime_provider.py:1088`
/// and `:1102`, 0.20.1 `:1266` and `:1280`); `OPENAI_BASE_URL` and `OPENROUTER_BASE_URL`
/// are not taken over it. A worker gets it from the dispatcher's environment
/// (`kanban_db.py` `env = dict(os.environ)`), which is the governor's with the Hermes root's
/// `.env` loaded over it, and then its profile's `.env` loaded over that (`main.py`: `-p`
/// sets `HERMES_HOME` before `load_hermes_dotenv`, `override=True`).
fn check_base_url_env(
    inputs: &Inputs,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    listen: std::net::SocketAddr,
) -> Check {
    let name = "proxy_base_url_env";
    let root_env = root.join(".env");
    let outer = hh::read_dotenv_var(&root_env, BASE_URL_ENV)
        .map(|v| (v, root_env.display().to_string()))
        .or_else(|| {
            env(BASE_URL_ENV).filter(|v| !v.trim().is_empty()).map(|v| {
                (
                    v,
                    "this environment (`run` passes it to every worker)".to_owned(),
                )
            })
        });
    let mut bypass = Vec::new();
    let mut sources = std::collections::BTreeSet::new();
    for p in inputs
        .profiles
        .iter()
        .filter(|p| hh::profile_exists(root, &p.name))
    {
        let own = hh::profile_dir(root, &p.name).join(".env");
        let found = hh::read_dotenv_var(&own, BASE_URL_ENV)
            .map(|v| (v, own.display().to_string()))
            .or_else(|| outer.clone());
        if let Some((url, from)) = found
            && !goes_through_proxy(&url, listen, &p.name)
        {
            bypass.push(format!("{} ({url:?} from {from})", p.name));
            sources.insert(from);
        }
    }
    if bypass.is_empty() {
        return Check::ok(
            name,
            format!("no {BASE_URL_ENV} overrides a governed profile's model.base_url"),
        );
    }
    Check::warn(
        name,
        format!(
            "{BASE_URL_ENV} is set for {}: Hermes sends a `custom` model's requests there instead of to model.base_url, past the proxy, so the governor cannot see them",
            bypass.join(", ")
        ),
        format!(
            "remove {BASE_URL_ENV} from {} (OPENAI_BASE_URL does not matter; model.base_url is the setting to keep)",
            sources.into_iter().collect::<Vec<_>>().join(" and ")
        ),
    )
}

/// `state_dir`: this user's, writable by nobody else, and writable (or creatable).
fn check_state_dir(dir: &Path) -> Check {
    use rustix::fs::{Access, access};
    let writable = |p: &Path| access(p, Access::WRITE_OK | Access::EXEC_OK).is_ok();
    if dir.is_dir() {
        if let Err(e) = crate::adapters::state_dir::check(dir) {
            let fix = match &e {
                crate::adapters::state_dir::StateDirError::Writable { .. } => {
                    format!("`chmod 700 {}`", dir.display())
                }
                _ => format!(
                    "`chown {} {}`, or set dispatch.state_dir to a directory of this user's",
                    crate::adapters::state_dir::my_uid(),
                    dir.display()
                ),
            };
            return Check::fail("state_dir", e.to_string(), fix);
        }
        return if writable(dir) {
            Check::ok("state_dir", format!("{} is writable", dir.display()))
        } else {
            Check::fail(
                "state_dir",
                format!("{} is not writable by this user", dir.display()),
                "chown it to the user the governor runs as, or set dispatch.state_dir to a writable directory",
            )
        };
    }
    if dir.exists() {
        return Check::fail(
            "state_dir",
            format!("{} exists but is not a directory", dir.display()),
            "set dispatch.state_dir to a directory",
        );
    }
    let parent = dir.ancestors().skip(1).find(|a| a.exists());
    match parent {
        Some(p) if p.is_dir() && writable(p) => Check::warn(
            "state_dir",
            format!(
                "{} does not exist yet; `run` and `tick` create it (under {}, which is writable)",
                dir.display(),
                p.display()
            ),
            format!("create it now with `mkdir -p {}` to be sure", dir.display()),
        ),
        _ => Check::fail(
            "state_dir",
            format!(
                "{} does not exist and cannot be created by this user",
                dir.display()
            ),
            "set dispatch.state_dir to a writable directory",
        ),
    }
}

/// `state`: the saved state reads (schema known, state of this version), read-only.
fn check_state_db(state_dir: &Path) -> Check {
    use crate::adapters::state_sqlite::{STATE_DB_NAME, SqliteState};
    let db = state_dir.join(STATE_DB_NAME);
    match SqliteState::load_read_only(state_dir) {
        Ok(s) if db.exists() => Check::ok(
            "state",
            format!(
                "{} reads: {} released and not yet running, {} profile(s) with learned peaks, {} tick(s) so far",
                db.display(),
                s.in_flight.len(),
                s.footprints.len(),
                s.counters.ticks
            ),
        ),
        Ok(_) => Check::ok(
            "state",
            format!(
                "{} does not exist yet; the first tick creates it",
                db.display()
            ),
        ),
        Err(e) => Check::fail(
            "state",
            e.to_string(),
            "see the message: run the kanban-governor that wrote it, or move the file away",
        ),
    }
}

/// `governor_lock`: who holds the governor's lock, read from `/proc/locks` (never taken).
/// A holder that is not a kanban-governor of this user fails: it stops every tick.
fn check_governor_lock(state_dir: &Path) -> Check {
    use crate::app::tick_command::{foreign_holder, holder_pids};
    let lock = state_dir.join(GOVERNOR_LOCK_FILE);
    match crate::adapters::state_dir::read_lock_holders(&lock) {
        Ok(h) if h.is_empty() => Check::ok(
            "governor_lock",
            format!("{} is free: no governor runs now", lock.display()),
        ),
        Ok(h) => match h.iter().find(|h| !h.governor) {
            Some(foreign) => {
                let (detail, fix) = foreign_holder(&lock, foreign);
                Check::fail("governor_lock", detail, fix)
            }
            None => Check::ok(
                "governor_lock",
                format!(
                    "{} is held by {} (a governor `run` or `tick` is active)",
                    lock.display(),
                    holder_pids(&h)
                ),
            ),
        },
        Err(e) => Check::warn(
            "governor_lock",
            e.to_string(),
            "run doctor on Linux with /proc mounted to see lock holders",
        ),
    }
}

/// The human report: one line per check, then a summary.
pub fn render_human(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!(
            "{:<4}  {:<width$}  {}",
            c.status.label(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            s.push_str(&format!(" -- fix: {fix}"));
        }
        s.push('\n');
    }
    let count = |st| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "{} ok, {} warn, {} fail\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    s
}

/// A value for a shell command line: bare when safe, else single-quoted.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A path for a systemd unit line: bare when safe, else double-quoted.
fn unit_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
    }
}

/// The template's body (its `#` comment header dropped) with the placeholders filled.
fn fill(template: &str, pairs: &[(&str, String)]) -> String {
    let mut body: String = template
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    for (k, v) in pairs {
        body = body.replace(k, v);
    }
    body
}

const CRON_TEMPLATE: &str = include_str!("../../scripts/kanban-governor.cron");
const SERVICE_TEMPLATE: &str = include_str!("../../scripts/kanban-governor.service");
const TICK_SERVICE_TEMPLATE: &str = include_str!("../../scripts/kanban-governor-tick.service");
const TICK_TIMER_TEMPLATE: &str = include_str!("../../scripts/kanban-governor-tick.timer");

/// The crontab entry (`scripts/kanban-governor.cron` filled in): a comment and the line.
pub fn render_cron(exe: &Path, inputs: &Inputs) -> String {
    // cron turns an unescaped `%` into a newline.
    let q = |p: &Path| sh_quote(&p.display().to_string()).replace('%', r"\%");
    let mut out = String::from(
        "# kanban-governor: a tick every 15 s; tick takes its own lock (install with `crontab -e`)\n",
    );
    if !inputs.config_exists {
        out.push_str(&format!(
            "# note: {} does not exist yet; write it before installing this line\n",
            inputs.config_path.display()
        ));
    }
    out.push_str(&fill(
        CRON_TEMPLATE,
        &[
            ("@GOVERNOR_BIN@", q(exe)),
            ("@CONFIG@", q(&inputs.config_path)),
            ("@HERMES_HOME@", q(&inputs.hermes_home)),
            ("@STATE_DIR@", q(&inputs.state_dir)),
        ],
    ));
    out
}

/// The systemd units (`scripts/kanban-governor*.{service,timer}` filled in), by file name.
pub fn render_systemd(exe: &Path, inputs: &Inputs, user: &str) -> Vec<(&'static str, String)> {
    let q = |p: &Path| unit_quote(&p.display().to_string());
    let pairs = [
        ("@GOVERNOR_BIN@", q(exe)),
        ("@CONFIG@", q(&inputs.config_path)),
        ("@HERMES_HOME@", q(&inputs.hermes_home)),
        ("@STATE_DIR@", q(&inputs.state_dir)),
        ("@USER@", user.to_owned()),
    ];
    vec![
        ("kanban-governor.service", fill(SERVICE_TEMPLATE, &pairs)),
        (
            "kanban-governor-tick.service",
            fill(TICK_SERVICE_TEMPLATE, &pairs),
        ),
        (
            "kanban-governor-tick.timer",
            fill(TICK_TIMER_TEMPLATE, &pairs),
        ),
    ]
}

pub mod live;

#[cfg(test)]
mod tests;
