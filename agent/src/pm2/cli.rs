//! Runs the `pm2` program for the daemon the agent's `[pm2]` section names, through
//! [`crate::process::Cmd`].
//!
//! Every run gets `PM2_HOME` (every pm2 command, even `--version`, starts a daemon in it, so it is
//! never left to the default `~/.pm2`), `PM2_DISCRETE_MODE=true` (no banner before `jlist`'s
//! JSON) and `--no-color`, and runs as `[pm2] user` when the agent is root, so that hostshift
//! never starts a root PM2 daemon beside the app's own. The child environment is otherwise the
//! minimal one `Cmd` builds: with `--update-env`, PM2 merges the *caller's* environment into
//! the app's, and the agent's own environment has no business there.
//!
//! pm2's stdout is never logged or returned: `jlist` carries every app's environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::jlist::{self, Process};
use crate::config::Pm2Config;
use crate::error::AgentError;
use crate::process::{Cmd, RunAs};

/// Deadline of one pm2 command (a reload of a large cluster can take a while; waiting for the
/// apps to settle is separate, see [`super::wait`]).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The PM2 daemon this agent controls.
#[derive(Clone, Debug)]
pub struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
    user: Option<RunAs>,
    /// `[pm2] ecosystem`, when configured.
    pub ecosystem: Option<PathBuf>,
}

impl Pm2 {
    /// From the agent's `[pm2]` section.
    ///
    /// # Errors
    /// `FailedPrecondition` when `user` does not exist, or names another user while the agent
    /// is not root (it could not act as that user).
    pub fn from_config(c: &Pm2Config) -> Result<Self, AgentError> {
        let user = if nix::unistd::geteuid().is_root() {
            // Config validation requires `user` when the agent is root.
            c.user.as_deref().map(RunAs::lookup).transpose()?
        } else {
            if let Some(u) = &c.user {
                let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default();
                if *u != me {
                    return Err(AgentError::FailedPrecondition(format!(
                        "[pm2] user is {u:?} but the agent runs as {me:?} and cannot act as another user: run the agent as root or as {u:?}"
                    )));
                }
            }
            None
        };
        Ok(Self {
            bin: c.bin.clone(),
            home: c.home.clone(),
            user,
            ecosystem: c.ecosystem.clone(),
        })
    }

    /// `PM2_HOME` of the daemon.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn cmd(&self, args: &[OsString], cwd: Option<&Path>, timeout: Duration) -> Cmd {
        let mut cmd = Cmd::new(&self.bin)
            .args(args)
            .arg("--no-color")
            .env("PM2_HOME", &self.home)
            .env("PM2_DISCRETE_MODE", "true")
            .timeout(timeout);
        if let Some(u) = &self.user {
            cmd = cmd.run_as(u.clone());
        }
        if let Some(d) = cwd {
            cmd = cmd.cwd(d);
        }
        cmd
    }

    /// Runs `pm2 ARGS` to success; returns the command line (for reports). With the ecosystem
    /// file among the arguments, run it from the file's folder: relative paths in it are
    /// resolved from there.
    ///
    /// # Errors
    /// [`AgentError::Command`] with pm2's stderr tail when it fails or times out;
    /// [`AgentError::Cancelled`].
    pub async fn run(
        &self,
        args: &[OsString],
        cwd: Option<&Path>,
        cancel: &CancellationToken,
    ) -> Result<String, AgentError> {
        let cmd = self.cmd(args, cwd, COMMAND_TIMEOUT);
        let line = cmd.display().replace(" --no-color", "");
        tracing::debug!(command = %line, "running pm2");
        cmd.output(cancel).await?.success()?;
        Ok(line)
    }

    /// Raw `pm2 jlist` output. It holds every app's environment: callers parse it and drop it.
    ///
    /// # Errors
    /// As [`Pm2::run`].
    pub async fn jlist_raw(&self, cancel: &CancellationToken) -> Result<Vec<u8>, AgentError> {
        let out = self
            .cmd(&["jlist".into()], None, COMMAND_TIMEOUT)
            .output(cancel)
            .await?
            .success()?;
        Ok(out.stdout)
    }

    /// The daemon's processes.
    ///
    /// # Errors
    /// As [`Pm2::run`]; `Internal` when the output cannot be parsed.
    pub async fn processes(&self, cancel: &CancellationToken) -> Result<Vec<Process>, AgentError> {
        let raw = self.jlist_raw(cancel).await?;
        jlist::parse(&raw).map_err(|e| AgentError::Internal(e.to_string()))
    }
}
