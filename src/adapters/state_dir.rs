//! The governor's own directory (`dispatch.state_dir`) and the files in it (`tick.lock`,
//! `state.sqlite3` and its `-wal`/`-shm`), kept safe on a host shared with other users.
//!
//! - **The directory** is created 0700 whatever the umask. One that another user owns, or
//!   that group or others can write, is refused ([`StateDirError::is_usage`]: exit 2): whoever
//!   can write it can plant a symlink where the governor (often root) writes next.
//! - **Its files** are opened with `O_NOFOLLOW`, created 0600 (an older, wider file is
//!   narrowed), and refused when they are not a regular file owned by this user.
//! - **Who holds the lock**: [`read_lock_holders`] reads `/proc/locks` and each holder's
//!   `/proc/<pid>` (uid, `exe`, `cmdline`), so a lock held by something that is not a
//!   kanban-governor of this user can be reported instead of being taken for an overlapping
//!   cron run.
//!
//! Side effects: [`prepare`] creates the directory, [`open_private`] creates or narrows one
//! file; everything else only reads.

use crate::adapters::hermes_home;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The state directory's mode when the governor creates it.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file the governor creates in it.
pub const FILE_MODE: u32 = 0o600;

/// Errors of the state directory and its files.
#[derive(Debug, Error)]
pub enum StateDirError {
    /// It could not be created or read.
    #[error(
        "dispatch.state_dir {path}: {source}; set dispatch.state_dir to a directory this user can create and write"
    )]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a directory.
    #[error("dispatch.state_dir {path} is not a directory; set dispatch.state_dir to a directory")]
    NotDir {
        /// The path.
        path: PathBuf,
    },
    /// Another user owns it.
    #[error(
        "dispatch.state_dir {path} is owned by {owner}, not by this user ({me}); its owner could replace the governor's lock and state: `chown {me_uid} {path}`, or set dispatch.state_dir to a directory of this user's"
    )]
    Owner {
        /// The directory.
        path: PathBuf,
        /// Its owner, as `uid N (name)`.
        owner: String,
        /// This user, likewise.
        me: String,
        /// This user's uid.
        me_uid: u32,
    },
    /// Group or others can write it.
    #[error(
        "dispatch.state_dir {path} is writable by {who} (mode {mode:03o}); another user could plant a file or symlink where the governor writes: `chmod 700 {path}`"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// "group", "others" or "group and others".
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// A file in it is a symlink (or a FIFO, socket, device or directory).
    #[error(
        "{path} is {kind}, not a regular file; the governor does not follow links or open special files in its state dir (one could point at any file on the host): remove it (`rm {path}`), and check who else can write the directory"
    )]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is ("a symbolic link", "a FIFO", ...).
        kind: &'static str,
    },
    /// A file in it belongs to another user.
    #[error(
        "{path} is owned by {owner}, not by this user ({me}); remove it (`rm {path}`) so the governor can create its own"
    )]
    FileOwner {
        /// The file.
        path: PathBuf,
        /// Its owner, as `uid N (name)`.
        owner: String,
        /// This user, likewise.
        me: String,
    },
    /// A file in it could not be opened.
    #[error("{path}: {source}; check that dispatch.state_dir is writable by this user")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl StateDirError {
    /// Whether the user fixes this (exit code 2): all but an I/O failure on a file.
    pub fn is_usage(&self) -> bool {
        !matches!(self, StateDirError::Io { .. })
    }
}

/// This process's effective uid.
pub fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `uid N (name)`, the name from `/etc/passwd` when it has one.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The name `/etc/passwd` gives `uid`, if any.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Whether a directory owned by `owner` with permission bits `mode` is safe for a governor
/// running as `me`: owned by `me`, writable by nobody else. (Pure, for tests.)
///
/// # Errors
///
/// [`StateDirError::Owner`] or [`StateDirError::Writable`].
pub fn judge_dir(path: &Path, owner: u32, mode: u32, me: u32) -> Result<(), StateDirError> {
    if owner != me {
        return Err(StateDirError::Owner {
            path: path.to_owned(),
            owner: describe_uid(owner),
            me: describe_uid(me),
            me_uid: me,
        });
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(StateDirError::Writable {
        path: path.to_owned(),
        who,
        mode: mode & 0o7777,
    })
}

/// Check an existing state directory (following a symlink to it: the link itself is the
/// admin's choice) without creating anything.
///
/// # Errors
///
/// It is missing or unreadable, not a directory, another user's, or writable by others.
pub fn check(dir: &Path) -> Result<(), StateDirError> {
    let meta = std::fs::metadata(dir).map_err(|source| StateDirError::Create {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::NotDir {
            path: dir.to_owned(),
        });
    }
    judge_dir(dir, meta.uid(), meta.mode(), my_uid())
}

/// Create the state directory (0700, parents too) if it is missing, check it ([`check`]),
/// and return its canonical path: files under it can then be opened with every symlink
/// refused (SQLite's `SQLITE_OPEN_NOFOLLOW` refuses a link anywhere in the path).
///
/// # Errors
///
/// As [`check`], or it cannot be created.
pub fn prepare(dir: &Path) -> Result<PathBuf, StateDirError> {
    if let Err(source) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
    {
        if dir.exists() && !dir.is_dir() {
            return Err(StateDirError::NotDir {
                path: dir.to_owned(),
            });
        }
        return Err(StateDirError::Create {
            path: dir.to_owned(),
            source,
        });
    }
    check(dir)?;
    std::fs::canonicalize(dir).map_err(|source| StateDirError::Create {
        path: dir.to_owned(),
        source,
    })
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Refuse `path` if it exists and is not a regular file (a symlink above all), without
/// following it. Absent is fine.
///
/// # Errors
///
/// [`StateDirError::NotRegular`], or it cannot be stat'ed.
pub fn refuse_special(path: &Path) -> Result<(), StateDirError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(StateDirError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(m.file_type()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateDirError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Open `path` read-write without following a symlink, creating it 0600 when `create`;
/// refuse anything but a regular file of this user's, and narrow a wider mode to 0600.
///
/// # Errors
///
/// [`StateDirError::NotRegular`] (a symlink, FIFO, ...), [`StateDirError::FileOwner`], or
/// the open failed.
pub fn open_private(path: &Path, create: bool) -> Result<File, StateDirError> {
    let io = |source: std::io::Error| StateDirError::Io {
        path: path.to_owned(),
        source,
    };
    // A FIFO would block the open; a symlink fails it with ELOOP. Both are named clearly
    // by this look first; O_NOFOLLOW still closes the race with a link planted after it.
    refuse_special(path)?;
    let nofollow = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(i32::try_from(nofollow.bits()).unwrap_or(0))
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                StateDirError::NotRegular {
                    path: path.to_owned(),
                    kind: "a symbolic link",
                }
            } else {
                io(e)
            }
        })?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(StateDirError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    let me = my_uid();
    if meta.uid() != me {
        return Err(StateDirError::FileOwner {
            path: path.to_owned(),
            owner: describe_uid(meta.uid()),
            me: describe_uid(me),
        });
    }
    if meta.mode() & 0o777 != FILE_MODE {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(io)?;
    }
    Ok(f)
}

/// A process holding a lock, as far as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockHolder {
    /// Its pid (`None` when `/proc/locks` shows none this namespace can see).
    pub pid: Option<u32>,
    /// Its effective uid, if readable.
    pub uid: Option<u32>,
    /// Its executable, if readable.
    pub exe: Option<PathBuf>,
    /// Its command line, space-joined (shortened), if readable.
    pub cmdline: Option<String>,
    /// A kanban-governor of this user: an overlapping `tick` or a `run`.
    pub governor: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) => write!(f, "pid {p}")?,
            None => write!(f, "a process this namespace cannot see")?,
        }
        let mut parts = Vec::new();
        if let Some(uid) = self.uid {
            parts.push(format!("user {}", describe_uid(uid)));
        }
        if let Some(c) = self.cmdline.as_deref().filter(|c| !c.is_empty()) {
            parts.push(format!("`{c}`"));
        } else if let Some(e) = &self.exe {
            parts.push(format!("`{}`", e.display()));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// The longest command line shown for a holder.
const CMDLINE_CHARS: usize = 200;

/// Whether `exe` (a `/proc/<pid>/exe` target) is a kanban-governor: this very binary, or one
/// named `kanban-governor` (an upgrade replaces the file; the kernel then appends
/// ` (deleted)`).
fn is_governor_exe(exe: &Path, this: Option<&Path>) -> bool {
    let s = exe.to_string_lossy();
    let live = Path::new(s.strip_suffix(" (deleted)").unwrap_or(&s));
    this.is_some_and(|t| t == live) || live.file_name().is_some_and(|n| n == "kanban-governor")
}

/// Describe process `pid` from `proc` (`/proc`): uid, exe, command line, and whether it is a
/// governor of user `me`.
fn describe_holder(proc: &Path, pid: Option<u32>, me: u32, this: Option<&Path>) -> LockHolder {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return LockHolder {
            pid: None,
            uid: None,
            exe: None,
            cmdline: None,
            governor: false,
        };
    };
    let dir = proc.join(pid.to_string());
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        });
    let exe = std::fs::read_link(dir.join("exe")).ok();
    let cmdline = std::fs::read(dir.join("cmdline")).ok().map(|b| {
        let s: String = b
            .split(|c| *c == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        s.chars().take(CMDLINE_CHARS).collect()
    });
    let governor = uid == Some(me) && exe.as_deref().is_some_and(|e| is_governor_exe(e, this));
    LockHolder {
        pid: Some(pid),
        uid,
        exe,
        cmdline,
        governor,
    }
}

/// Who holds a lock on `path` (from `/proc/locks`, never by taking it), each described from
/// `/proc/<pid>`. Empty when nobody does or the file does not exist.
///
/// # Errors
///
/// `/proc/locks` cannot be read (not Linux, `/proc` not mounted), or `path` cannot be
/// stat'ed.
pub fn read_lock_holders(path: &Path) -> Result<Vec<LockHolder>, hermes_home::HermesHomeError> {
    let locks = hermes_home::read_lock_holders(path)?;
    let this = std::env::current_exe().ok();
    let me = my_uid();
    Ok(locks
        .iter()
        .filter(|l| l.class == "FLOCK")
        .map(|l| describe_holder(Path::new("/proc"), l.pid, me, this.as_deref()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_of_another_user_is_refused_with_chown() {
        let e = judge_dir(Path::new("/s"), 1000, 0o700, 0).unwrap_err();
        let t = e.to_string();
        assert!(t.contains("owned by uid 1000"), "{t}");
        assert!(t.contains("`chown 0 /s`"), "{t}");
        assert!(e.is_usage());
    }

    #[test]
    fn a_dir_group_or_others_can_write_is_refused_with_chmod_700() {
        for (mode, who) in [
            (0o770, "group"),
            (0o707, "others"),
            (0o1777, "group and others"),
        ] {
            let t = judge_dir(Path::new("/s"), 7, mode, 7)
                .unwrap_err()
                .to_string();
            assert!(t.contains(&format!("writable by {who} ")), "{t}");
            assert!(t.contains("`chmod 700 /s`"), "{t}");
        }
        judge_dir(Path::new("/s"), 7, 0o755, 7).unwrap();
        judge_dir(Path::new("/s"), 7, 0o700, 7).unwrap();
    }

    #[test]
    fn a_symlink_is_not_opened_and_its_target_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let link = dir.path().join("tick.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_private(&link, true).unwrap_err();
        assert!(
            matches!(
                e,
                StateDirError::NotRegular {
                    kind: "a symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!victim.exists());
    }

    #[test]
    fn a_new_file_is_0600_and_an_old_wide_one_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        drop(open_private(&p, true).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(open_private(&p, false).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_holder_is_a_governor_only_when_it_is_this_users_kanban_governor() {
        let proc = tempfile::tempdir().unwrap();
        let fake = |pid: u32, uid: u32, exe: &str, cmd: &str| {
            let d = proc.path().join(pid.to_string());
            std::fs::create_dir(&d).unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
            std::fs::write(d.join("cmdline"), cmd.replace(' ', "\0")).unwrap();
        };
        fake(
            10,
            1000,
            "/usr/local/bin/kanban-governor",
            "kanban-governor tick",
        );
        fake(11, 1000, "/usr/bin/flock", "flock /s/tick.lock sleep 1d");
        fake(
            12,
            1001,
            "/usr/local/bin/kanban-governor",
            "kanban-governor tick",
        );
        fake(
            13,
            1000,
            "/opt/kg/kanban-governor (deleted)",
            "kanban-governor run",
        );
        let d = |pid| describe_holder(proc.path(), Some(pid), 1000, None);
        assert!(d(10).governor);
        assert!(!d(11).governor);
        let shown = d(11).to_string();
        assert!(shown.starts_with("pid 11 (user uid 1000"), "{shown}");
        assert!(
            shown.ends_with(", `flock /s/tick.lock sleep 1d`)"),
            "{shown}"
        );
        assert!(!d(12).governor, "another user's governor is not ours");
        assert!(d(13).governor, "an upgraded binary still counts");
        assert!(!d(99).governor, "a pid that is gone cannot be vouched for");
        assert!(!describe_holder(proc.path(), Some(0), 1000, None).governor);
    }
}
