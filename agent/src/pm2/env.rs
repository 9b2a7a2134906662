//! How new `.env` values reach a running PM2 app, verified against PM2 7.0.4:
//!
//! - `pm2 reload NAME --update-env` merges the environment of the *process calling pm2* (here:
//!   the agent's minimal one) into the app's: it knows nothing of the `.env` file.
//! - `pm2 reload ECOSYSTEM --only NAME --update-env` makes pm2 evaluate the ecosystem file again;
//!   when its `env` block reads the `.env`, the app gets the new values. This is what we use, so
//!   `[pm2] ecosystem` is required.
//! - Neither ever *removes* a key: PM2 merges new values into the app's saved environment (the
//!   flattened copy in `pm2_env` that the process receives). A key deleted from the `.env` stays
//!   in the app's environment until the app is deleted from PM2 and started again. So when a
//!   removed key is one PM2 still hands the app, the reload becomes `pm2 delete NAME` +
//!   `pm2 start ECOSYSTEM --only NAME` (a cold restart), and the result says so.
//! - Afterwards the agent checks, key by key and without ever returning a value, that PM2 hands
//!   the app the file's values ([`super::jlist::env_mismatches`]). A key PM2 does not set at all
//!   is fine: the app may read the `.env` itself (dotenv) when it starts.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cli::Pm2;
use super::control::{Pm2Control, eco_dir, from_ecosystem, internal, log_outcome};
use super::{Action, ActionOutcome, Want, jlist, wait};
use crate::error::AgentError;

/// How an app takes a new environment after a `.env` edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvApply {
    /// `pm2 restart ECOSYSTEM --only APP --update-env`.
    Restart,
    /// `pm2 reload ECOSYSTEM --only APP --update-env`.
    Reload,
}

/// Result of [`Pm2Control::apply_env`].
#[derive(Clone, Debug)]
pub struct EnvApplied {
    /// The restart and the wait.
    pub outcome: ActionOutcome,
    /// Keys PM2 still hands the app with another value (or at all, for removed keys).
    pub stale_keys: Vec<String>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

impl Pm2Control {
    /// Checks, before a `.env` file is written, that [`Pm2Control::apply_env`] could run.
    ///
    /// # Errors
    /// As `apply_env`'s refusals.
    pub fn check_env_apply(&self, app: &str) -> Result<(), AgentError> {
        let cfg = self.config()?;
        self.require_control()?;
        self.resolve(&[app.to_string()])?;
        self.ecosystem(
            &Pm2::from_config(cfg)?,
            "restarting an app with new .env values",
        )?;
        Ok(())
    }

    /// Restarts or reloads `app` so that it runs with `changes` (`(key, Some(new))` set,
    /// `(key, None)` removed), waits until it is online and stable, and reports keys PM2 still
    /// hands it differently. See the module doc for the mechanics.
    ///
    /// # Errors
    /// As [`Pm2Control::check_env_apply`]; a failing pm2 command; cancellation.
    pub async fn apply_env(
        &self,
        app: &str,
        how: EnvApply,
        changes: &[(String, Option<String>)],
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<EnvApplied, AgentError> {
        self.check_env_apply(app)?;
        let pm2 = Pm2::from_config(self.config()?)?;
        let eco = self.ecosystem(&pm2, "restarting an app with new .env values")?;
        let verb = match how {
            EnvApply::Restart => "restart",
            EnvApply::Reload => "reload",
        };
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let removed: Vec<(String, Option<String>)> = changes
            .iter()
            .filter(|(_, v)| v.is_none())
            .cloned()
            .collect();
        let (known, held) = {
            let raw = pm2.jlist_raw(cancel).await?;
            let procs = jlist::parse(&raw).map_err(internal)?;
            let held = jlist::env_mismatches(&raw, app, &removed).map_err(internal)?;
            (procs.iter().any(|p| p.name == app), held)
        };
        let name = app.to_string();
        let mut notes = Vec::new();
        let mut commands = Vec::new();
        let dir = eco_dir(&eco);
        if !known {
            commands.push(
                pm2.run(&from_ecosystem("start", &eco, &[&name], false), dir, cancel)
                    .await?,
            );
            notes.push(format!(
                "{app} was not in PM2's process list: started it from {}",
                eco.display()
            ));
        } else if !held.is_empty() {
            commands.push(
                pm2.run(&["delete".into(), app.into()], None, cancel)
                    .await?,
            );
            commands.push(
                pm2.run(&from_ecosystem("start", &eco, &[&name], false), dir, cancel)
                    .await?,
            );
            notes.push(format!(
                "{} removed from the file, but PM2 would keep handing it to {app} on a {verb} (PM2 merges environments and never drops a key): {app} was deleted from PM2 and started again from {} instead (a cold restart)",
                held.join(", "),
                eco.display()
            ));
        } else {
            commands.push(
                pm2.run(&from_ecosystem(verb, &eco, &[&name], true), dir, cancel)
                    .await?,
            );
        }
        let mut apps = wait::until(&pm2, &[name], Want::Online, deadline, cancel).await?;
        if !held.is_empty() && apps.iter().any(|a| a.status == "absent") {
            for a in &mut apps {
                a.detail = format!(
                    "deleted from PM2 to drop removed keys, but `pm2 start {} --only {app}` did not bring it back: is it defined there? {}",
                    eco.display(),
                    a.detail
                );
            }
        }
        let stale_keys = {
            let raw = pm2.jlist_raw(cancel).await?;
            jlist::env_mismatches(&raw, app, changes).map_err(internal)?
        };
        let outcome = ActionOutcome {
            action: match how {
                EnvApply::Restart => Action::Restart,
                EnvApply::Reload => Action::Reload,
            },
            apps,
            commands,
            duration: started.elapsed(),
        };
        log_outcome(&outcome);
        if !stale_keys.is_empty() {
            tracing::warn!(app, keys = ?stale_keys, "app does not run with the file's new values");
        }
        Ok(EnvApplied {
            outcome,
            stale_keys,
            notes,
        })
    }
}
