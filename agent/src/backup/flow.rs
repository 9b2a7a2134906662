//! The backup run around [`create`](super::create::create): what to back up ([`Selection`]),
//! the folder's exclusive lock, the backup itself, the automatic upload (`[backup.s3] upload =
//! true`) and the retention run ([`run`]) — the same for `hostshift backup` (through the service)
//! and for `hostshift-agent backup` ([`run_local`], the systemd timer's command). Upload and
//! retention failures do not undo a complete backup: they are reported beside it.
//!
//! A backup must never fill the disk of the live host it runs on (PostgreSQL stops writing when
//! its disk is full). So a run starts only while the backup folder's file system has more than
//! [`reserve`] free, and a watcher checks every [`DISK_POLL`]: when free space falls below the
//! reserve, the backup is stopped (`pg_dump` is terminated) and its staging folder removed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::create::{Created, create};
use super::selection::{Progress, Selection};
use crate::config::AgentConfig;
use crate::error::AgentError;

/// How often free space is checked while a backup writes.
pub const DISK_POLL: Duration = Duration::from_secs(1);

/// Free space a backup leaves to the host on a file system of `total` bytes: 5 %, at least
/// 512 MiB, at most 10 GiB.
pub fn reserve(total: u64) -> u64 {
    (total / 20).clamp(512 << 20, 10 << 30)
}

/// `(available, total)` bytes of the file system holding `dir`.
fn free_space(dir: &Path) -> Result<(u64, u64), AgentError> {
    let s =
        nix::sys::statvfs::statvfs(dir).map_err(|e| AgentError::io("statvfs", dir, e.into()))?;
    let frag = s.fragment_size();
    Ok((s.blocks_available() * frag, s.blocks() * frag))
}

/// [`create`], stopped when free space in `dir` falls below the reserve.
async fn create_within_reserve(
    config: &AgentConfig,
    sel: &Selection,
    progress: &mpsc::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<Created, AgentError> {
    let dir = &config.backup.dir;
    let (avail, total) = free_space(dir)?;
    let keep = reserve(total);
    let full = |avail: u64| {
        AgentError::FailedPrecondition(format!(
            "{avail} bytes free in {}, and a backup leaves {keep} bytes to the host: free space, prune old backups, or set [backup] dir to a larger file system",
            dir.display()
        ))
    };
    if avail <= keep {
        return Err(full(avail));
    }
    let guard = cancel.child_token();
    let low = AtomicBool::new(false);
    let watch = async {
        loop {
            tokio::time::sleep(DISK_POLL).await;
            if free_space(dir).is_ok_and(|(a, _)| a <= keep) {
                low.store(true, Ordering::SeqCst);
                guard.cancel();
                break;
            }
        }
    };
    let work = create(config, sel, progress, &guard);
    tokio::pin!(work);
    // When the watcher fires, the backup is cancelled: wait for it to clean up its staging folder.
    let result = tokio::select! {
        r = &mut work => r,
        () = watch => work.await,
    };
    match result {
        Err(AgentError::Cancelled) if low.load(Ordering::SeqCst) => {
            let (avail, _) = free_space(dir).unwrap_or((0, 0));
            tracing::warn!(dir = %dir.display(), avail, keep, "backup stopped: the disk is nearly full");
            Err(full(avail))
        }
        other => other,
    }
}

/// What [`run`] did.
#[derive(Debug)]
pub struct Outcome {
    /// The backup.
    pub created: Created,
    /// Wall time of the backup itself.
    pub duration: Duration,
    /// The retention run after it (`None` without `keep_days`/`keep_last`).
    pub pruned: Option<Result<super::retention::PruneReport, AgentError>>,
    /// The automatic upload (`None` unless `[backup.s3] upload = true`).
    pub upload: Option<Result<super::s3::UploadReport, AgentError>>,
}

/// The whole flow: lock, [`create`], automatic upload, retention. Upload and retention failures
/// do not undo the backup; they are reported in the [`Outcome`].
///
/// # Errors
/// As [`create`]; `FailedPrecondition` when another backup holds the folder's lock, or when the
/// disk is (or gets) too full (see the module doc).
pub async fn run(
    config: &AgentConfig,
    sel: &Selection,
    progress: &mpsc::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<Outcome, AgentError> {
    let dir = config.backup.dir.clone();
    let _lock = super::lock(&dir, true)?;
    let started = Instant::now();
    let created = create_within_reserve(config, sel, progress, cancel).await?;
    let duration = started.elapsed();
    let upload = match &config.backup.s3 {
        Some(s3) if s3.upload => Some(super::s3::upload(s3, &created.path, cancel).await),
        _ => None,
    };
    let policy = super::retention::Policy::of(&config.backup);
    let pruned = if policy.prunes() {
        Some(super::retention::prune_locked(&dir, policy, cancel).await)
    } else {
        None
    };
    Ok(Outcome {
        created,
        duration,
        pruned,
        upload,
    })
}

/// What `hostshift-agent backup` reports: lines for stdout, and whether everything succeeded.
#[derive(Debug)]
pub struct LocalReport {
    /// One line per fact (the backup, its artifacts, the upload, the retention run).
    pub lines: Vec<String>,
    /// False when the upload or the retention run failed (the backup itself is complete).
    pub ok: bool,
}

/// `hostshift-agent backup`: a backup of everything the config declares, on this host, without
/// the coordinator; then the automatic upload (`[backup.s3] upload = true`) and retention.
///
/// # Errors
/// As [`run`].
pub async fn run_local(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<LocalReport, AgentError> {
    let sel = Selection::everything(config);
    let (tx, mut rx) = mpsc::channel(16);
    let log = async move {
        while let Some(p) = rx.recv().await {
            match p {
                Progress::Started(k, n) => {
                    tracing::info!(kind = k.as_str(), name = %n, "backing up")
                }
                Progress::Done(k, n, b) => {
                    tracing::info!(kind = k.as_str(), name = %n, bytes = b, "written")
                }
            }
        }
    };
    let work = async move {
        let r = run(config, &sel, &tx, shutdown).await;
        drop(tx);
        r
    };
    let (outcome, ()) = tokio::join!(work, log);
    let o = outcome?;
    let m = &o.created.manifest;
    let mut lines = vec![format!(
        "backup {} complete: {} artifacts, {} bytes in {:.1} s at {}",
        m.id,
        m.artifacts.len(),
        m.total_bytes(),
        o.duration.as_secs_f64(),
        o.created.path.display()
    )];
    for a in &m.artifacts {
        lines.push(format!(
            "  {:<13} {:<20} {:>12}  {}  {}",
            a.kind.as_str(),
            a.name,
            a.size,
            a.sha256,
            a.file
        ));
    }
    let mut ok = true;
    match &o.upload {
        Some(Ok(u)) => lines.push(format!(
            "uploaded {} objects ({} bytes) to s3://{}/{}",
            u.objects.len(),
            u.bytes,
            u.bucket,
            u.key_prefix
        )),
        Some(Err(e)) => {
            ok = false;
            lines.push(format!(
                "upload FAILED (the backup itself is complete): {e}"
            ));
        }
        None => {}
    }
    match &o.pruned {
        Some(Ok(p)) if p.deleted.is_empty() => lines.push("retention: nothing to delete".into()),
        Some(Ok(p)) => lines.push(format!("retention: deleted {}", p.deleted.join(", "))),
        Some(Err(e)) => {
            ok = false;
            lines.push(format!("retention FAILED: {e}"));
        }
        None => lines.push("retention: no keep_days/keep_last configured; nothing pruned".into()),
    }
    Ok(LocalReport { lines, ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_five_percent_within_bounds() {
        assert_eq!(reserve(4 << 30), 512 << 20, "small disks keep 512 MiB");
        assert_eq!(reserve(100 << 30), 5 << 30);
        assert_eq!(reserve(1 << 40), 10 << 30, "large disks keep 10 GiB");
    }
}
