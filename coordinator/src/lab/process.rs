//! How the lab runs its external programs (initdb, the postmaster): as the `postgres` user
//! with an explicit, minimal environment ([`RunAs`]); short programs to completion with a
//! deadline, a non-zero exit turned into [`LabError::Command`] with the command line and the
//! last lines of its output ([`run_checked`]); and a postmaster's process tree killed and waited
//! for ([`kill_tree`], [`wait_dead`]). One place, as STYLE.md item 8 asks; the agent has its
//! own (`agent/src/process.rs`), which the lab cannot use (the coordinator does not import the
//! agent).

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hostshift_shared::procfs::{self, alive as process_alive, children_by_scan as children_of};
use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User, geteuid};
use tokio::process::Command;

use super::LabError;

/// How many lines of a log or of stderr an error carries.
pub(super) const TAIL_LINES: usize = 20;

/// Which user the PostgreSQL programs run as.
#[derive(Clone, Copy, Debug)]
pub(super) enum RunAs {
    /// We are the `postgres` user already: no chown, no setuid.
    Myself,
    /// We are root: chown to, and switch to, the `postgres` user.
    Postgres {
        /// The postgres user's uid.
        uid: u32,
        /// Its primary group.
        gid: u32,
    },
}

impl RunAs {
    /// Who we are: root (then the programs switch to `postgres`) or `postgres` itself.
    ///
    /// # Errors
    /// No `postgres` user, or another user than root and postgres.
    pub(super) fn detect() -> Result<Self, LabError> {
        let user = User::from_name("postgres")
            .map_err(|errno| {
                LabError::io("look up user `postgres` in", "/etc/passwd")(errno.into())
            })?
            .ok_or(LabError::NoPostgresUser)?;
        let euid = geteuid();
        if euid.is_root() {
            Ok(Self::Postgres {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        } else if euid == user.uid {
            Ok(Self::Myself)
        } else {
            Err(LabError::NotRootOrPostgres { uid: euid.as_raw() })
        }
    }

    /// Gives `path` to the postgres user (a no-op when we are that user).
    pub(super) fn own(self, path: &Path) -> Result<(), LabError> {
        match self {
            Self::Myself => Ok(()),
            Self::Postgres { uid, gid } => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(LabError::io("chown to postgres", path)),
        }
    }

    /// Makes `cmd` run as the postgres user, with an explicit, minimal environment.
    pub(super) fn apply(self, cmd: &mut Command, cwd: &Path) {
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(cwd)
            .stdin(Stdio::null());
        if let Self::Postgres { uid, gid } = self {
            cmd.uid(uid).gid(gid);
        }
    }
}

/// Runs a short program to completion, with a deadline; a non-zero exit becomes
/// [`LabError::Command`] with the last lines of its output.
pub(super) async fn run_checked(mut cmd: Command, timeout: Duration) -> Result<(), LabError> {
    let command = command_line(&cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(output) => output.map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?,
        Err(_elapsed) => {
            return Err(LabError::Command {
                command,
                status: format!("timed out after {timeout:?}"),
                stderr_tail: String::new(),
            });
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(LabError::Command {
        command,
        status: output.status.to_string(),
        stderr_tail: last_lines(&text, TAIL_LINES),
    })
}

/// A pid as nix wants it.
pub(super) fn to_pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("Linux pids fit in i32 (pid_max <= 2^22)"))
}

/// SIGKILLs the unreaped postmaster `pid` and everything it started; returns its children.
///
/// Killing the process group alone is not enough: every PostgreSQL child calls `setsid()`, so
/// the postmaster's group holds only itself and children too young to have left it. The
/// postmaster is stopped first, so that it cannot fork while its children are listed; each child
/// then gets SIGKILL to its own group (which holds e.g. an `archive_command` shell).
pub(super) fn kill_tree(pid: u32, deadline: Instant) -> Vec<u32> {
    let postmaster = to_pid(pid);
    if signal::kill(postmaster, Signal::SIGSTOP).is_ok() {
        while let Some(stat) = procfs::Stat::read(pid) {
            if matches!(stat.state, 'T' | 'Z' | 'X') || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let children = children_of(pid);
    // ESRCH only means a process is already gone.
    let _ = signal::killpg(postmaster, Signal::SIGKILL);
    for &child in &children {
        if signal::killpg(to_pid(child), Signal::SIGKILL).is_err() {
            let _ = signal::kill(to_pid(child), Signal::SIGKILL);
        }
    }
    children
}

/// Waits until every pid in `pids` is dead (SIGKILL is delivered asynchronously); false if
/// `deadline` passed first.
pub(super) fn wait_dead(pids: &[u32], deadline: Instant) -> bool {
    while pids.iter().any(|&pid| process_alive(pid)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The last lines of a (log) file, reading at most its last 16 KiB.
pub(super) fn tail_of_file(path: &Path) -> String {
    const MAX_BYTES: u64 = 16 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => last_lines(&text, TAIL_LINES),
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

/// The last `n` lines of `text`.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The command line for error messages: program and arguments, quoted where needed.
pub(super) fn command_line(cmd: &Command) -> String {
    let std = cmd.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            if !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                part.into_owned()
            } else {
                format!("'{}'", part.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
