//! What each PM2 action runs and the checks before it: PM2 configured, control allowed
//! (`[allow] control_services`), apps declared (`[pm2] apps`). Refusals come before any pm2
//! command, so a refused request starts nothing, not even a daemon. How a `.env` edit reaches an
//! app is in [`super::env`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::cli::Pm2;
use super::jlist::{self, Process, Status};
use super::{Action, ActionOutcome, wait};
use crate::Ctx;
use crate::config::Pm2Config;
use crate::error::AgentError;

/// PM2 control shared by `service Pm2` and `service EnvFiles`: one action at a time.
pub struct Pm2Control {
    ctx: Arc<Ctx>,
    pub(super) lock: Mutex<()>,
}

/// `List`'s result.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Whether a PM2 daemon runs for `PM2_HOME` (when not, nothing was asked: asking would
    /// start one).
    pub daemon_running: bool,
    /// Every process, with whether `[pm2] apps` declares it.
    pub processes: Vec<(Process, bool)>,
    /// Declared apps PM2 does not know.
    pub missing: Vec<String>,
}

/// `Save`'s result.
#[derive(Clone, Debug)]
pub struct Saved {
    /// `$PM2_HOME/dump.pm2`.
    pub dump_path: PathBuf,
    /// Names saved.
    pub apps: Vec<String>,
}

impl Pm2Control {
    /// Control over the PM2 the agent's config names.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            lock: Mutex::new(()),
        }
    }

    pub(super) fn config(&self) -> Result<&Pm2Config, AgentError> {
        self.ctx.config.pm2.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "this agent has no [pm2] section in {}: add one naming PM2's `home`, `user` and `apps`",
                self.config_path()
            ))
        })
    }

    pub(super) fn config_path(&self) -> String {
        self.ctx.config_path.display().to_string()
    }

    pub(super) fn require_control(&self) -> Result<(), AgentError> {
        if self.ctx.config.allow.control_services {
            Ok(())
        } else {
            Err(AgentError::PermissionDenied(format!(
                "this agent's config does not allow controlling PM2: set `control_services = true` in [allow] of {}",
                self.config_path()
            )))
        }
    }

    /// The apps a request names (each must be declared), or every declared app.
    pub(super) fn resolve(&self, apps: &[String]) -> Result<Vec<String>, AgentError> {
        let cfg = self.config()?;
        if apps.is_empty() {
            if cfg.apps.is_empty() {
                return Err(AgentError::InvalidArgument(format!(
                    "no app named and `apps` in [pm2] of {} is empty",
                    self.config_path()
                )));
            }
            return Ok(cfg.apps.clone());
        }
        let mut out: Vec<String> = Vec::new();
        for a in apps {
            if !cfg.apps.contains(a) {
                return Err(AgentError::NotDeclared {
                    what: "PM2 app (`apps` in [pm2])",
                    name: a.clone(),
                    config: self.config_path(),
                });
            }
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        Ok(out)
    }

    pub(super) fn ecosystem(&self, pm2: &Pm2, why: &str) -> Result<PathBuf, AgentError> {
        pm2.ecosystem.clone().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "{why} needs the ecosystem file: set `ecosystem` in [pm2] of {} (PM2 gives an app new environment values only from an ecosystem file's env block, or from the environment of whoever calls pm2 — the agent's own, which is not the app's)",
                self.config_path()
            ))
        })
    }

    /// Every PM2 process, and which declared apps PM2 does not know. Read-only: when no PM2
    /// daemon runs, nothing is asked (any pm2 command would start one).
    ///
    /// # Errors
    /// No `[pm2]` section; a failing `pm2 jlist`.
    pub async fn list(&self, cancel: &CancellationToken) -> Result<Listing, AgentError> {
        let cfg = self.config()?;
        let pm2 = Pm2::from_config(cfg)?;
        let daemon_running = daemon_running(pm2.home());
        let procs = if daemon_running {
            pm2.processes(cancel).await?
        } else {
            Vec::new()
        };
        let missing = cfg
            .apps
            .iter()
            .filter(|a| !procs.iter().any(|p| p.name == **a))
            .cloned()
            .collect();
        let processes = procs
            .into_iter()
            .map(|p| {
                let declared = cfg.apps.contains(&p.name);
                (p, declared)
            })
            .collect();
        Ok(Listing {
            daemon_running,
            processes,
            missing,
        })
    }

    /// Runs `action` on `apps` (empty = every declared app) and waits up to `deadline` for the
    /// requested state.
    ///
    /// # Errors
    /// Refusals (`PermissionDenied`, undeclared apps, `update_env` without an ecosystem file),
    /// a failing pm2 command, cancellation. Apps that do not get there are *outcomes*, not errors.
    pub async fn act(
        &self,
        action: Action,
        apps: &[String],
        update_env: bool,
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<ActionOutcome, AgentError> {
        let cfg = self.config()?;
        self.require_control()?;
        let targets = self.resolve(apps)?;
        if update_env && matches!(action, Action::Start | Action::Stop) {
            return Err(AgentError::InvalidArgument(format!(
                "update_env applies to restart and reload, not {}",
                action.as_str()
            )));
        }
        let pm2 = Pm2::from_config(cfg)?;
        let eco = if update_env {
            Some(self.ecosystem(&pm2, &format!("{} with --update-env", action.as_str()))?)
        } else {
            pm2.ecosystem.clone()
        };
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        tracing::info!(action = action.as_str(), apps = ?targets, update_env, "pm2 action");
        let procs = pm2.processes(cancel).await?;
        let mine = |a: &str| -> Vec<&Process> { procs.iter().filter(|p| p.name == a).collect() };
        let absent: Vec<&String> = targets.iter().filter(|a| mine(a).is_empty()).collect();
        let mut notes: BTreeMap<String, &str> = BTreeMap::new();
        let mut commands = Vec::new();
        let run_names = |verb: &str, names: &[&String]| -> Vec<OsString> {
            std::iter::once(OsString::from(verb))
                .chain(names.iter().map(OsString::from))
                .collect()
        };
        match action {
            Action::Start => {
                let mut to_start = Vec::new();
                for a in &targets {
                    let m = mine(a);
                    if !m.is_empty() && m.iter().all(|p| p.status == Status::Online) {
                        notes.insert(a.clone(), "already online, left alone");
                    } else {
                        to_start.push(a);
                    }
                }
                if !to_start.is_empty() {
                    let line = match &eco {
                        Some(e) => {
                            pm2.run(
                                &from_ecosystem("start", e, &to_start, false),
                                eco_dir(e),
                                cancel,
                            )
                            .await?
                        }
                        None => {
                            self.require_known(
                                &absent,
                                "no `ecosystem` is set in [pm2] to start it from",
                            )?;
                            pm2.run(&run_names("start", &to_start), None, cancel)
                                .await?
                        }
                    };
                    commands.push(line);
                }
            }
            Action::Stop => {
                let to_stop: Vec<&String> = targets
                    .iter()
                    .filter(|a| mine(a).iter().any(|p| p.status != Status::Stopped))
                    .collect();
                for a in &absent {
                    notes.insert((*a).clone(), "not in PM2's process list");
                }
                if !to_stop.is_empty() {
                    commands.push(pm2.run(&run_names("stop", &to_stop), None, cancel).await?);
                }
            }
            Action::Restart | Action::Reload => {
                let all: Vec<&String> = targets.iter().collect();
                if update_env && let Some(e) = &eco {
                    let args = from_ecosystem(action.as_str(), e, &all, true);
                    commands.push(pm2.run(&args, eco_dir(e), cancel).await?);
                } else {
                    self.require_known(&absent, "start it first with `hostshift pm2 start`")?;
                    if action == Action::Restart {
                        commands.push(pm2.run(&run_names("restart", &all), None, cancel).await?);
                    } else {
                        // `pm2 reload` takes one name.
                        for a in all {
                            commands.push(pm2.run(&run_names("reload", &[a]), None, cancel).await?);
                        }
                    }
                }
            }
        }
        let mut outcomes = wait::until(&pm2, &targets, action.want(), deadline, cancel).await?;
        for o in &mut outcomes {
            if o.ok && o.detail.is_empty() {
                o.detail = notes.remove(&o.name).unwrap_or_default().to_string();
            }
        }
        let outcome = ActionOutcome {
            action,
            apps: outcomes,
            commands,
            duration: started.elapsed(),
        };
        log_outcome(&outcome);
        Ok(outcome)
    }

    fn require_known(&self, absent: &[&String], hint: &str) -> Result<(), AgentError> {
        if absent.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = absent.iter().map(|s| s.as_str()).collect();
        Err(AgentError::FailedPrecondition(format!(
            "{} not in PM2's process list: {hint}",
            names.join(", ")
        )))
    }

    /// `pm2 save`. Refused when no daemon runs: a new one would save an empty list over the
    /// one PM2 resurrects at boot.
    ///
    /// # Errors
    /// Refusals, no daemon, a failing pm2 command.
    pub async fn save(&self, cancel: &CancellationToken) -> Result<Saved, AgentError> {
        let cfg = self.config()?;
        self.require_control()?;
        let pm2 = Pm2::from_config(cfg)?;
        if !daemon_running(pm2.home()) {
            return Err(AgentError::FailedPrecondition(format!(
                "no PM2 daemon runs for PM2_HOME {}: saving now would replace the saved process list with an empty one",
                pm2.home().display()
            )));
        }
        let _one_at_a_time = self.lock.lock().await;
        pm2.run(&["save".into()], None, cancel).await?;
        let mut apps: Vec<String> = pm2
            .processes(cancel)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        apps.dedup();
        tracing::info!(apps = ?apps, "pm2 process list saved");
        Ok(Saved {
            dump_path: pm2.home().join("dump.pm2"),
            apps,
        })
    }
}

pub(super) fn internal(e: jlist::ParseError) -> AgentError {
    AgentError::Internal(e.to_string())
}

/// `pm2 VERB ECOSYSTEM --only a,b [--update-env]`.
pub(super) fn from_ecosystem(
    verb: &str,
    eco: &Path,
    apps: &[&String],
    update_env: bool,
) -> Vec<OsString> {
    let only: Vec<&str> = apps.iter().map(|s| s.as_str()).collect();
    let mut args: Vec<OsString> = vec![
        verb.into(),
        eco.into(),
        "--only".into(),
        only.join(",").into(),
    ];
    if update_env {
        args.push("--update-env".into());
    }
    args
}

pub(super) fn eco_dir(eco: &Path) -> Option<&Path> {
    eco.parent().filter(|p| !p.as_os_str().is_empty())
}

/// A PM2 daemon runs for `home`: its pid file names a live, non-zombie process.
fn daemon_running(home: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(home.join("pm2.pid")) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return false;
    };
    hostshift_shared::procfs::alive(pid)
}

pub(super) fn log_outcome(o: &ActionOutcome) {
    for a in &o.apps {
        if a.ok {
            tracing::info!(action = o.action.as_str(), app = %a.name, status = %a.status, restarts = a.restarts, "pm2 app ok");
        } else {
            tracing::warn!(action = o.action.as_str(), app = %a.name, status = %a.status, restarts = a.restarts, detail = %a.detail, "pm2 app failed");
        }
    }
}
