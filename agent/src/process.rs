//! The one place the agent starts external programs (pg_dump, pm2, nginx, hooks...).
//!
//! Every child gets: an explicit program and environment (nothing inherited but what we set),
//! stdin closed, its own process group (so a `sh -c` hook's grandchildren are reached too),
//! `SIGKILL` to that group when its handle is dropped (a cancelled RPC cleans up), the
//! parent-death signal (if the agent itself is killed, the child goes too), stderr drained into
//! a bounded tail for error messages, a timeout, and terminate-then-kill on cancel. Exit status
//! becomes a typed [`AgentError::Command`].

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;

/// `PATH` given to children: system locations only, never the agent's caller's.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of stderr is kept for error messages (the end of it).
pub const STDERR_TAIL_BYTES: usize = 4096;
/// Most stdout [`Cmd::output`] collects; programs with more output are streamed via [`Cmd::spawn`].
pub const MAX_CAPTURED_STDOUT: usize = 16 * 1024 * 1024;
/// After SIGTERM, how long a child gets before SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// A system user to run a child as.
#[derive(Clone, Debug)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

impl RunAs {
    /// Looks a user up by name.
    ///
    /// # Errors
    /// `FailedPrecondition` when the user does not exist.
    pub fn lookup(name: &str) -> Result<Self, AgentError> {
        let u = nix::unistd::User::from_name(name)
            .map_err(|e| AgentError::Internal(format!("cannot look up user {name:?}: {e}")))?
            .ok_or_else(|| {
                AgentError::FailedPrecondition(format!("no system user {name:?} on this host"))
            })?;
        Ok(Self {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        })
    }
}

/// A command to run: build it, then [`Cmd::output`] or [`Cmd::spawn`].
#[derive(Clone, Debug)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<PathBuf>,
    run_as: Option<RunAs>,
    timeout: Duration,
}

impl Cmd {
    /// A command with a minimal environment (`PATH`, `LANG`) and a 60 s timeout.
    pub fn new(program: impl AsRef<Path>) -> Self {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), SAFE_PATH.into());
        env.insert("LANG".into(), "C.UTF-8".into());
        if let Some(home) = std::env::var_os("HOME") {
            env.insert("HOME".into(), home);
        }
        Self {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env,
            cwd: None,
            run_as: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .insert(k.as_ref().to_os_string(), v.as_ref().to_os_string());
        self
    }

    /// Working directory.
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Runs as another user (needs the agent to be root, or that user). Sets `HOME` and `USER`.
    pub fn run_as(mut self, user: RunAs) -> Self {
        self.env.insert("HOME".into(), user.home.clone().into());
        self.env.insert("USER".into(), user.name.clone().into());
        self.env.insert("LOGNAME".into(), user.name.clone().into());
        self.run_as = Some(user);
        self
    }

    /// Deadline for the whole run.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command line, for messages (arguments are shown; never pass secrets as arguments).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if let Some(u) = &self.run_as {
            c.uid(u.uid).gid(u.gid);
        }
        set_parent_death_signal(&mut c);
        c
    }

    /// Starts the program; stdout and stderr are pipes for the caller to read.
    ///
    /// # Errors
    /// `FailedPrecondition` when the program cannot be started (missing, not executable).
    pub fn spawn(self) -> Result<Running, AgentError> {
        let child = self.command().spawn().map_err(|e| {
            AgentError::FailedPrecondition(format!("cannot start `{}`: {e}", self.display()))
        })?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        Ok(Running {
            child,
            pgid,
            cmdline: self.display(),
            timeout: self.timeout,
            started: Instant::now(),
        })
    }

    /// Runs to completion and collects stdout (up to [`MAX_CAPTURED_STDOUT`]) and a stderr tail.
    /// A non-zero exit is **not** an error here: check [`Output::exit`] or call
    /// [`Output::success`].
    ///
    /// # Errors
    /// Start failure, timeout, or cancellation (the child's process group is killed first).
    pub async fn output(self, cancel: &CancellationToken) -> Result<Output, AgentError> {
        let mut running = self.spawn()?;
        let stdout = running.take_stdout();
        let stderr = running.take_stderr();
        let out_task = async move {
            match stdout {
                Some(s) => read_capped(s, MAX_CAPTURED_STDOUT).await,
                None => Vec::new(),
            }
        };
        let err_task = async move {
            match stderr {
                Some(s) => tail(s).await,
                None => String::new(),
            }
        };
        let (exit, stdout, stderr_tail) = tokio::join!(running.wait(cancel), out_task, err_task);
        let exit = exit?;
        Ok(Output {
            cmdline: running.cmdline.clone(),
            exit,
            stdout,
            stderr_tail,
        })
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(c: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe. It runs after std has switched uid/gid, so the setting survives.
    unsafe {
        c.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.len() < cap {
                    let take = n.min(cap - out.len());
                    out.extend_from_slice(&buf[..take]);
                }
            }
        }
    }
    out
}

/// Drains a stream and keeps its last [`STDERR_TAIL_BYTES`], as text.
pub async fn tail(mut r: impl AsyncRead + Unpin) -> String {
    let mut keep: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 2 * STDERR_TAIL_BYTES {
                    keep.drain(..keep.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    if keep.len() > STDERR_TAIL_BYTES {
        keep.drain(..keep.len() - STDERR_TAIL_BYTES);
    }
    String::from_utf8_lossy(&keep).trim().to_string()
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when killed by one.
    pub signal: Option<i32>,
    /// We killed it because its timeout passed.
    pub timed_out: bool,
    /// Wall time.
    pub duration: Duration,
}

impl Exit {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// "exited with 1", "killed by signal 9", "timed out after 30 s".
    pub fn describe(&self) -> String {
        if self.timed_out {
            return format!("timed out after {} s", self.duration.as_secs());
        }
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "ended".into(),
        }
    }
}

/// Result of [`Cmd::output`].
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line.
    pub cmdline: String,
    /// How it ended.
    pub exit: Exit,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Last part of stderr.
    pub stderr_tail: String,
}

impl Output {
    /// `self` if it exited 0, else an [`AgentError::Command`] with the stderr tail.
    ///
    /// # Errors
    /// When the exit code was not 0.
    pub fn success(self) -> Result<Self, AgentError> {
        if self.exit.success() {
            Ok(self)
        } else {
            Err(AgentError::Command {
                command: self.cmdline,
                status: self.exit.describe(),
                stderr_tail: self.stderr_tail,
            })
        }
    }

    /// Stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// A started child. Dropping it kills the child's whole process group.
pub struct Running {
    child: Child,
    pgid: Option<Pid>,
    /// The command line.
    pub cmdline: String,
    timeout: Duration,
    started: Instant,
}

impl Running {
    /// The child's stdout pipe (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stderr pipe (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for exit, the timeout, or `cancel`; on timeout or cancel the process group gets
    /// SIGTERM, then SIGKILL after [`TERMINATE_GRACE`].
    ///
    /// # Errors
    /// [`AgentError::Cancelled`] when `cancel` fired; I/O errors from wait.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> Result<Exit, AgentError> {
        let deadline = tokio::time::sleep(self.timeout.saturating_sub(self.started.elapsed()));
        tokio::pin!(deadline);
        let status = tokio::select! {
            s = self.child.wait() => s,
            () = &mut deadline => {
                self.terminate().await;
                return Ok(Exit { code: None, signal: Some(Signal::SIGTERM as i32), timed_out: true, duration: self.started.elapsed() });
            }
            () = cancel.cancelled() => {
                self.terminate().await;
                return Err(AgentError::Cancelled);
            }
        };
        let status = status
            .map_err(|e| AgentError::Internal(format!("waiting for `{}`: {e}", self.cmdline)))?;
        self.pgid_cleanup();
        use std::os::unix::process::ExitStatusExt;
        Ok(Exit {
            code: status.code(),
            signal: status.signal(),
            timed_out: false,
            duration: self.started.elapsed(),
        })
    }

    /// SIGTERM to the group, then SIGKILL after [`TERMINATE_GRACE`] if the child is still there.
    pub async fn terminate(&mut self) {
        if let Some(pg) = self.pgid {
            let _ = killpg(pg, Signal::SIGTERM);
        }
        if tokio::time::timeout(TERMINATE_GRACE, self.child.wait())
            .await
            .is_err()
        {
            if let Some(pg) = self.pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            let _ = self.child.wait().await;
        }
        self.pgid_cleanup();
    }

    /// The direct child is gone; kill what it left in its group (a hook's background jobs).
    fn pgid_cleanup(&mut self) {
        if let Some(pg) = self.pgid.take() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.pgid_cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_captures_stdout_and_stderr_tail_and_exit() {
        let out = Cmd::new("/bin/sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output(&CancellationToken::new())
            .await
            .expect("run");
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_tail, "err");
        assert_eq!(out.exit.code, Some(3));
        let err = out.success().expect_err("exit 3 is a failure");
        assert!(err.to_string().contains("exited with 3: err"), "{err}");
    }

    #[tokio::test]
    async fn environment_is_explicit_not_inherited() {
        let out = Cmd::new("/bin/sh")
            .args(["-c", "echo \"${CARGO:-unset}\""])
            .output(&CancellationToken::new())
            .await
            .expect("run");
        assert_eq!(out.stdout_text().trim(), "unset");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pidfile = tmp.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let out = Cmd::new("/bin/sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(300))
            .output(&CancellationToken::new())
            .await
            .expect("run");
        assert!(out.exit.timed_out);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        assert!(
            gone_soon(pid).await,
            "grandchild {pid} survived the timeout"
        );
    }

    #[tokio::test]
    async fn cancel_terminates_and_reports_cancelled() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c2.cancel();
        });
        let err = Cmd::new("/bin/sleep")
            .arg("300")
            .output(&cancel)
            .await
            .expect_err("cancelled");
        assert!(matches!(err, AgentError::Cancelled));
    }

    /// True when the process is gone or a zombie (PID 1 reaps late here; see TOOLCHAIN.md).
    async fn gone_soon(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !u32::try_from(pid).is_ok_and(hostshift_shared::procfs::alive) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
