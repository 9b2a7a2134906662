//! `service Pm2`: lists the host's PM2 processes and starts, stops, restarts, reloads and saves
//! the apps the agent's config declares (`[pm2] apps`), waiting until they really are in the
//! requested state and reporting crash loops.
//!
//! - [`cli`] runs the `pm2` program (right `PM2_HOME`, user and environment);
//! - [`jlist`] reads `pm2 jlist` into a struct with no environment in it (PM2 keeps every app's
//!   secrets there);
//! - [`wait`] polls until the apps are online and stable, or stopped, with a deadline;
//! - [`control`] decides what to run for each action, after the checks;
//! - [`env`] makes an app run with a `.env` file's new values;
//! - `service.rs` only translates proto ↔ these.
//!
//! Control needs `[allow] control_services = true`; listing does not. One action at a time per
//! agent: PM2 itself refuses overlapping reloads.

pub mod cli;
pub mod control;
pub mod env;
pub mod jlist;
mod service;
pub mod wait;

pub use control::Pm2Control;
pub use service::{Pm2Service, action_response};

/// A control action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start (from the ecosystem file when configured); apps already online are left alone.
    Start,
    /// Stop.
    Stop,
    /// Hard restart.
    Restart,
    /// Graceful reload (zero-downtime in cluster mode; a restart in fork mode).
    Reload,
}

impl Action {
    /// `"start"`, `"stop"`, `"restart"`, `"reload"` (also pm2's own command names).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Reload => "reload",
        }
    }

    /// The state the action should end in.
    pub fn want(self) -> Want {
        match self {
            Self::Stop => Want::Stopped,
            _ => Want::Online,
        }
    }
}

/// The state to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Every instance online and stable.
    Online,
    /// Every instance stopped (or the app unknown to PM2).
    Stopped,
}

impl Want {
    /// `"online"` / `"stopped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Stopped => "stopped",
        }
    }
}

/// How one app ended up.
#[derive(Clone, Debug, PartialEq)]
pub struct AppOutcome {
    /// App name.
    pub name: String,
    /// Reached the requested state and does not crash-loop.
    pub ok: bool,
    /// Least advanced status among its instances ("absent" when PM2 does not know it).
    pub status: String,
    /// PIDs of its running instances.
    pub pids: Vec<u32>,
    /// Restart counter, summed over instances.
    pub restarts: u32,
    /// Why it failed, or a note.
    pub detail: String,
}

/// The result of one action.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionOutcome {
    /// What was done.
    pub action: Action,
    /// One per app asked for, in order.
    pub apps: Vec<AppOutcome>,
    /// pm2 command lines run.
    pub commands: Vec<String>,
    /// Wall time, commands and waiting included.
    pub duration: std::time::Duration,
}

impl ActionOutcome {
    /// Every app ok.
    pub fn ok(&self) -> bool {
        self.apps.iter().all(|a| a.ok)
    }
}
