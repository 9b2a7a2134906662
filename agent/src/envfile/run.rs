//! `Get` and `Edit` of a declared `.env` file: the checks, the read-edit-write under a lock, the
//! redacted diff, and the app restart through [`Pm2Control::apply_env`].
//!
//! Everything that can refuse is checked before the file is touched: the file is declared, it
//! is in `[allow] write_files`, and, when an app is to be restarted, PM2 control is allowed, the
//! app is declared and an ecosystem file is configured. Values are never logged; the diff that
//! leaves the agent has secrets redacted.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::edit::{self, EnvFile};
use super::file;
use crate::Ctx;
use crate::config::FileConfig;
use crate::error::AgentError;
use crate::pm2::Pm2Control;
use crate::pm2::env::{EnvApplied, EnvApply};

/// One key's value as `Get` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The key.
    pub key: String,
    /// The file sets it.
    pub present: bool,
    /// The value, or [`edit::REDACTED`].
    pub value: String,
    /// The key names a secret.
    pub secret: bool,
    /// `value` is redacted.
    pub redacted: bool,
}

/// One changed key, ready for people (secrets redacted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    /// The key.
    pub key: String,
    /// Old value as shown.
    pub old: String,
    /// New value as shown.
    pub new: String,
    /// The key names a secret.
    pub secret: bool,
}

/// What `Edit` is asked to do.
#[derive(Clone, Debug)]
pub struct EditRequest {
    /// The file's name in the config.
    pub file: String,
    /// `(key, Some(value))` sets, `(key, None)` unsets; in order.
    pub ops: Vec<(String, Option<String>)>,
    /// Diff only.
    pub dry_run: bool,
    /// App to restart or reload afterwards.
    pub app: Option<(String, EnvApply)>,
    /// Deadline for the app to be back online.
    pub deadline: Duration,
}

/// What `Edit` did.
#[derive(Clone, Debug)]
pub struct EditOutcome {
    /// The file's real path.
    pub path: String,
    /// Changed keys.
    pub diff: Vec<DiffLine>,
    /// The file was replaced.
    pub written: bool,
    /// The app restart, when asked for (and not a dry run).
    pub applied: Option<EnvApplied>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

fn declared<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a FileConfig, AgentError> {
    ctx.config
        .files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| AgentError::NotDeclared {
            what: "file (`[[files]]`)",
            name: name.to_string(),
            config: ctx.config_path.display().to_string(),
        })
}

fn may_write(ctx: &Ctx, name: &str) -> Result<(), AgentError> {
    if ctx.config.allow.write_files.iter().any(|f| f == name) {
        Ok(())
    } else {
        Err(AgentError::PermissionDenied(format!(
            "file {name:?} may not be edited on this host: add {name:?} to `write_files` in [allow] of {}",
            ctx.config_path.display()
        )))
    }
}

async fn read(f: &FileConfig) -> Result<file::Snapshot, AgentError> {
    let path = f.path.clone();
    tokio::task::spawn_blocking(move || file::read(&path))
        .await
        .map_err(|e| AgentError::Internal(format!("read task: {e}")))?
}

/// Values of `keys` (every key when empty) of the declared file `name`.
///
/// # Errors
/// An undeclared file; a file that cannot be read.
pub async fn get(
    ctx: &Ctx,
    name: &str,
    keys: &[String],
    show_secrets: bool,
) -> Result<(String, Vec<Value>), AgentError> {
    let f = declared(ctx, name)?;
    let snap = read(f).await?;
    let env = EnvFile::parse(&snap.text);
    let keys: Vec<String> = if keys.is_empty() {
        env.keys().into_iter().map(String::from).collect()
    } else {
        keys.to_vec()
    };
    let values = keys
        .into_iter()
        .map(|key| {
            let v = env.get(&key);
            let secret = edit::is_secret(&key);
            let redacted = secret && !show_secrets && v.is_some();
            Value {
                present: v.is_some(),
                value: match v {
                    Some(_) if redacted => edit::REDACTED.into(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                },
                secret,
                redacted,
                key,
            }
        })
        .collect();
    tracing::info!(file = name, show_secrets, "env file read");
    Ok((snap.path.display().to_string(), values))
}

/// Applies `req` to the declared file: see the module doc.
///
/// # Errors
/// Refusals (undeclared, not allowed, invalid keys or values), I/O, a failing restart command.
/// An app that does not come back is an outcome in [`EditOutcome::applied`], not an error.
pub async fn edit(
    ctx: &Ctx,
    pm2: &Pm2Control,
    lock: &Mutex<()>,
    req: EditRequest,
    cancel: &CancellationToken,
) -> Result<EditOutcome, AgentError> {
    let f = declared(ctx, &req.file)?;
    if req.ops.is_empty() {
        return Err(AgentError::InvalidArgument("no key to set or unset".into()));
    }
    let mut notes = Vec::new();
    let refusal = may_write(ctx, &req.file).and_then(|()| match &req.app {
        Some((app, _)) => pm2.check_env_apply(app),
        None => Ok(()),
    });
    match refusal {
        Err(e) if !req.dry_run => return Err(e),
        Err(e) => notes.push(format!("dry run; the real run would be refused: {e}")),
        Ok(()) => {}
    }

    let (path, changes, final_values) = {
        let _one_edit_at_a_time = lock.lock().await;
        let snap = read(f).await?;
        let (text, changes) = edit::edit(&snap.text, &req.ops)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let after = EnvFile::parse(&text);
        let mut final_values: Vec<(String, Option<String>)> = Vec::new();
        for (k, _) in &req.ops {
            if !final_values.iter().any(|(x, _)| x == k) {
                final_values.push((k.clone(), after.get(k).map(String::from)));
            }
        }
        let path = snap.path.display().to_string();
        if !req.dry_run && !changes.is_empty() {
            tokio::task::spawn_blocking(move || file::replace(&snap, &text))
                .await
                .map_err(|e| AgentError::Internal(format!("write task: {e}")))??;
        }
        (path, changes, final_values)
    };
    let written = !req.dry_run && !changes.is_empty();
    let changed: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    tracing::info!(file = %req.file, keys = ?changed, written, dry_run = req.dry_run, "env file edit");
    if changes.is_empty() {
        notes.push(format!("no change: {} already has these values", req.file));
    }
    let diff = changes
        .iter()
        .map(|c| DiffLine {
            key: c.key.clone(),
            old: edit::shown(&c.key, c.old.as_deref()),
            new: edit::shown(&c.key, c.new.as_deref()),
            secret: edit::is_secret(&c.key),
        })
        .collect();

    let applied = match (&req.app, req.dry_run) {
        (Some((app, how)), false) => Some(
            pm2.apply_env(app, *how, &final_values, req.deadline, cancel)
                .await?,
        ),
        (Some((app, how)), true) => {
            notes.push(format!(
                "dry run: {app} would be {}",
                match how {
                    EnvApply::Restart => "restarted",
                    EnvApply::Reload => "reloaded",
                }
            ));
            None
        }
        (None, _) => None,
    };
    Ok(EditOutcome {
        path,
        diff,
        written,
        applied,
        notes,
    })
}
