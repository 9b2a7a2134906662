//! `nginx -t` and `nginx -s reload` for the instance the agent's config names, plus the two
//! gates every nginx RPC passes: an `[nginx]` section, and (for anything that changes the host)
//! `[allow] control_services = true`.
//!
//! Command lines: `nginx [-p PREFIX -e PREFIX/logs/error.log] -c CONFIG (-t | -s reload)`. With a
//! prefix, `-e` keeps nginx from touching the system's `/var/log/nginx/error.log` before it has
//! read the config (TOOLCHAIN.md).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::config::NginxConfig;
use crate::error::AgentError;
use crate::process::Cmd;

use super::workers;

/// Deadline of one nginx command (`-t` and `-s reload` take ~10 ms).
pub const NGINX_TIMEOUT: Duration = Duration::from_secs(30);

/// The `[nginx]` section.
///
/// # Errors
/// `FailedPrecondition` naming the config file when the section is missing.
pub fn configured(ctx: &Ctx) -> Result<&NginxConfig, AgentError> {
    ctx.config.nginx.as_ref().ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "this agent's config ({}) has no [nginx] section: declare `site` (and `bin`, `config`, `prefix` when not the system nginx)",
            ctx.config_path.display()
        ))
    })
}

/// The permit for changing nginx (reload, maintenance).
///
/// # Errors
/// `PermissionDenied` naming the key to set.
pub fn require_control(ctx: &Ctx, what: &str) -> Result<(), AgentError> {
    if ctx.config.allow.control_services {
        Ok(())
    } else {
        Err(AgentError::PermissionDenied(format!(
            "{what} is not allowed on this host: set `control_services = true` in [allow] of {}",
            ctx.config_path.display()
        )))
    }
}

/// What `nginx -t` said.
#[derive(Clone, Debug)]
pub struct TestOutcome {
    /// nginx accepted the configuration.
    pub ok: bool,
    /// Its stderr (the verdict, or the error with file and line).
    pub message: String,
    /// The command line.
    pub command: String,
    /// Wall time.
    pub duration: Duration,
}

/// `nginx [-p PREFIX -e PREFIX/logs/error.log] -c CONFIG`, to which the action is added.
pub(super) fn command(cfg: &NginxConfig) -> Cmd {
    let mut cmd = Cmd::new(&cfg.bin).timeout(NGINX_TIMEOUT);
    if let Some(p) = &cfg.prefix {
        cmd = cmd.arg("-p").arg(p).arg("-e").arg(p.join("logs/error.log"));
    }
    cmd.arg("-c").arg(&cfg.config)
}

/// Runs `nginx -t`. A rejected config is an `Ok` outcome with `ok = false`.
///
/// # Errors
/// When nginx cannot be started, times out, or the agent is shutting down.
pub async fn test(
    cfg: &NginxConfig,
    cancel: &CancellationToken,
) -> Result<TestOutcome, AgentError> {
    let out = command(cfg).arg("-t").output(cancel).await?;
    let message = if out.stderr_tail.is_empty() {
        out.stdout_text().trim().to_string()
    } else {
        out.stderr_tail.clone()
    };
    if out.exit.timed_out {
        return Err(AgentError::Unavailable(format!(
            "`{}` {}",
            out.cmdline,
            out.exit.describe()
        )));
    }
    Ok(TestOutcome {
        ok: out.exit.success(),
        message,
        command: out.cmdline,
        duration: out.exit.duration,
    })
}

/// `nginx -t`, turned into an error when nginx rejects the config.
///
/// # Errors
/// `FailedPrecondition` with nginx's message when the config fails the test; as [`test`].
pub async fn test_or_refuse(
    cfg: &NginxConfig,
    cancel: &CancellationToken,
    what: &str,
) -> Result<TestOutcome, AgentError> {
    let t = test(cfg, cancel).await?;
    if t.ok {
        Ok(t)
    } else {
        Err(AgentError::FailedPrecondition(format!(
            "{what}: `{}` rejects the configuration: {}",
            t.command, t.message
        )))
    }
}

/// Tests the config, then `nginx -s reload`, and waits until the reload has taken effect (see
/// [`workers`]).
///
/// # Errors
/// `FailedPrecondition` when the config fails the test (nothing is reloaded; the running nginx
/// keeps its config) or when nginx refuses the reload signal (usually: it is not running).
pub async fn reload(
    cfg: &NginxConfig,
    cancel: &CancellationToken,
) -> Result<TestOutcome, AgentError> {
    let t = test_or_refuse(cfg, cancel, "not reloaded").await?;
    signal_reload(cfg, cancel).await?;
    Ok(t)
}

/// `nginx -s reload` without a test first (callers test), then waits until new workers serve
/// and the old ones stopped accepting connections.
///
/// # Errors
/// As [`reload`], for the signal part; `FailedPrecondition` when the master does not start new
/// workers within [`workers::RELOAD_SETTLE`].
pub async fn signal_reload(
    cfg: &NginxConfig,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let master = workers::master(cfg, command(cfg), cancel).await;
    let before = master.map(workers::children).unwrap_or_default();
    let out = command(cfg).args(["-s", "reload"]).output(cancel).await?;
    if !out.exit.success() {
        return Err(AgentError::FailedPrecondition(format!(
            "`{}` {}: {} (is nginx running with this config and prefix?)",
            out.cmdline,
            out.exit.describe(),
            out.stderr_tail
        )));
    }
    match master {
        Some(m) if !before.is_empty() => {
            let error_log = cfg.prefix.as_ref().map_or_else(
                || std::path::PathBuf::from("nginx's error log"),
                |p| p.join("logs/error.log"),
            );
            let took = workers::wait_reloaded(m, &before, &error_log, cancel).await?;
            tracing::info!(
                config = %cfg.config.display(),
                settle_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                "nginx reloaded; old workers no longer accept connections"
            );
        }
        _ => tracing::info!(
            config = %cfg.config.display(),
            "nginx reload signalled (its workers could not be watched)"
        ),
    }
    Ok(())
}
