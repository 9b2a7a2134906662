//! Knowing when a reload has taken effect.
//!
//! `nginx -s reload` only signals the master and returns; the master then starts new workers and
//! asks the old ones to finish. Until an old worker has handled that request it still accepts
//! connections with the *old* configuration — a maintenance page "switched on" a few milliseconds
//! too early lets writes through. So after signalling we watch the master's children: the reload
//! has taken effect when a new worker runs and every worker from before has exited or shows
//! nginx's `worker process is shutting down` title (set as it closes its listening sockets).
//! When new workers never appear the master refused the new configuration at run time (an
//! address already in use passes `nginx -t`): that is reported instead of claimed as done.
//!
//! The master is found through its pid file: the `pid` directive of the main config file (read
//! from `nginx -T`), else the compiled-in `--pid-path` (from `nginx -V`), relative paths resolved
//! against the prefix. Without a readable pid file (`master_process off`, an unusual layout) the
//! wait is skipped and logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The live children of a process (re-exported: `nginx::control` lists the master's workers).
pub use hostshift_shared::procfs::children;
use hostshift_shared::procfs::cmdline;
use tokio_util::sync::CancellationToken;

use super::site;
use crate::config::NginxConfig;
use crate::error::AgentError;
use crate::process::Cmd;

/// How long a reload may take to show new workers and quiet the old ones.
pub const RELOAD_SETTLE: Duration = Duration::from_secs(10);
/// Pause between looks at the process table.
const POLL: Duration = Duration::from_millis(10);

/// The running master's pid, when it can be found.
pub async fn master(cfg: &NginxConfig, base: Cmd, cancel: &CancellationToken) -> Option<u32> {
    let pid_file = match pid_file(cfg, base, cancel).await {
        Ok(p) => p,
        Err(why) => {
            tracing::info!(%why, "cannot locate nginx's pid file; reloads are not awaited");
            return None;
        }
    };
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    cmdline(pid)
        .is_some_and(|c| c.starts_with("nginx: master process"))
        .then_some(pid)
}

/// Why nginx's pid file could not be located (reloads are then not awaited).
#[derive(Debug, thiserror::Error)]
enum PidFileError {
    /// `nginx -T` or `nginx -V` could not run.
    #[error(transparent)]
    Run(#[from] AgentError),
    /// The main config file's `pid` directive could not be read.
    #[error(transparent)]
    Config(#[from] site::SiteError),
    /// Neither the config nor the build says where the pid file is.
    #[error("the config sets no `pid` and nginx -V shows no --pid-path")]
    Unknown,
}

async fn pid_file(
    cfg: &NginxConfig,
    base: Cmd,
    cancel: &CancellationToken,
) -> Result<PathBuf, PidFileError> {
    let dump = base.clone().arg("-T").output(cancel).await?;
    let text = dump.stdout_text();
    let main = main_file_section(&text);
    let from_config = site::main_directive(main, "pid")?;
    let (path, prefix) = match from_config {
        Some(p) => (p, cfg.prefix.clone()),
        None => {
            let v = base.arg("-V").output(cancel).await?;
            let args = v.stderr_tail;
            let pid = configure_arg(&args, "--pid-path=").ok_or(PidFileError::Unknown)?;
            (
                pid,
                cfg.prefix
                    .clone()
                    .or_else(|| configure_arg(&args, "--prefix=").map(PathBuf::from)),
            )
        }
    };
    let path = PathBuf::from(path);
    Ok(match prefix {
        Some(pre) if path.is_relative() => pre.join(path),
        _ => path,
    })
}

/// The main config file's part of `nginx -T` output (its first `# configuration file` section).
fn main_file_section(dump: &str) -> &str {
    const HEADER: &str = "# configuration file ";
    let Some(start) = dump.find(HEADER) else {
        return "";
    };
    let body = dump[start..]
        .find('\n')
        .map_or("", |nl| &dump[start + nl + 1..]);
    match body.find(&format!("\n{HEADER}")) {
        Some(end) => &body[..end],
        None => body,
    }
}

fn configure_arg(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(str::to_string)
}

/// Waits until `master` runs a worker that is not in `before` and every worker in `before` has
/// exited or is shutting down.
///
/// # Errors
/// `FailedPrecondition` after [`RELOAD_SETTLE`] (naming what did not happen), `Cancelled` on
/// shutdown.
pub async fn wait_reloaded(
    master: u32,
    before: &[u32],
    error_log: &Path,
    cancel: &CancellationToken,
) -> Result<Duration, AgentError> {
    let started = Instant::now();
    loop {
        let now = children(master);
        let fresh = now.iter().any(|p| !before.contains(p));
        let old_busy: Vec<u32> = before
            .iter()
            .copied()
            .filter(|p| now.contains(p))
            .filter(|p| cmdline(*p).is_some_and(|c| !c.contains("shutting down")))
            .collect();
        if fresh && old_busy.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > RELOAD_SETTLE {
            let why = if fresh {
                format!("old workers {old_busy:?} still accept connections")
            } else {
                "no new worker started: the master refused the new configuration".to_string()
            };
            return Err(AgentError::FailedPrecondition(format!(
                "nginx took the reload signal, but after {} s {why}; see {} (e.g. a `listen` address already in use)",
                RELOAD_SETTLE.as_secs(),
                error_log.display()
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = cancel.cancelled() => return Err(AgentError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_section_of_a_config_dump() {
        let dump = "# configuration file /p/conf/nginx.conf:\npid logs/nginx.pid;\nhttp { include /p/site; }\n\n# configuration file /p/site:\npid /wrong;\n";
        let main = main_file_section(dump);
        assert_eq!(main, "pid logs/nginx.pid;\nhttp { include /p/site; }\n");
        assert_eq!(
            site::main_directive(main, "pid").expect("parse").as_deref(),
            Some("logs/nginx.pid")
        );
    }

    #[test]
    fn configure_arguments_are_read_from_nginx_v() {
        let v = "nginx version: nginx/1.22.1\nconfigure arguments: --with-cc-opt='-g' --prefix=/usr/share/nginx --pid-path=/run/nginx.pid";
        assert_eq!(
            configure_arg(v, "--pid-path=").as_deref(),
            Some("/run/nginx.pid")
        );
        assert_eq!(
            configure_arg(v, "--prefix=").as_deref(),
            Some("/usr/share/nginx")
        );
    }
}
