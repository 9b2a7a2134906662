//! Retention: which finished backups `[backup] keep_days` / `keep_last` keep, and deleting the
//! rest safely.
//!
//! A backup is kept when **any** rule keeps it: it is among the newest `keep_last`, it is younger
//! than `keep_days` days, or it is the **newest backup that verifies** (every artifact re-read
//! and its SHA-256 checked) — so a run of damaged recent backups can never cost the last good
//! one. With neither rule configured nothing is deleted. Backups in progress are never candidates:
//! they live in `.incomplete-<id>` folders, and pruning holds the folder's exclusive lock, which
//! every backup in progress holds too — so the staging folders it does see were left by an
//! interrupted run, and are removed. A backup is deleted by renaming it to `.deleting-<id>`
//! first: a half-deleted backup never looks like a backup.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::blocking;
use super::{DELETING_PREFIX, list};
use crate::config::BackupConfig;
use crate::error::AgentError;

/// Why a backup is kept.
pub const KEEP_LAST: &str = "keep_last";
/// Why a backup is kept.
pub const KEEP_DAYS: &str = "keep_days";
/// Why a backup is kept.
pub const NEWEST_GOOD: &str = "newest that verifies";
/// Why a backup is kept.
pub const NO_RULES: &str = "no retention configured";

/// The rules of `[backup]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep backups younger than this many days.
    pub keep_days: Option<u32>,
    /// Keep the newest this many.
    pub keep_last: Option<u32>,
}

impl Policy {
    /// The policy of a config.
    pub fn of(c: &BackupConfig) -> Self {
        Self {
            keep_days: c.keep_days,
            keep_last: c.keep_last,
        }
    }

    /// True when some rule is set (otherwise nothing is ever deleted).
    pub fn prunes(&self) -> bool {
        self.keep_days.is_some() || self.keep_last.is_some()
    }
}

/// What a prune did.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Backups deleted.
    pub deleted: Vec<String>,
    /// Backups kept, with the reasons.
    pub kept: Vec<(String, Vec<&'static str>)>,
    /// Staging folders of interrupted runs removed.
    pub stale_removed: Vec<String>,
}

/// The reasons each backup is kept (empty: delete it). `backups` are `(id, created seconds)`,
/// newest first; `newest_good` is the newest backup that verifies, if known.
pub fn decide(
    backups: &[(String, i64)],
    now: i64,
    policy: Policy,
    newest_good: Option<&str>,
) -> Vec<(String, Vec<&'static str>)> {
    backups
        .iter()
        .enumerate()
        .map(|(i, (id, created))| {
            let mut why = Vec::new();
            if !policy.prunes() {
                why.push(NO_RULES);
            }
            if policy.keep_last.is_some_and(|n| i < n as usize) {
                why.push(KEEP_LAST);
            }
            if policy
                .keep_days
                .is_some_and(|d| now.saturating_sub(*created) < i64::from(d) * 86_400)
            {
                why.push(KEEP_DAYS);
            }
            if newest_good == Some(id.as_str()) {
                why.push(NEWEST_GOOD);
            }
            (id.clone(), why)
        })
        .collect()
}

/// Takes the folder's exclusive lock and prunes.
///
/// # Errors
/// As [`prune_locked`]; `FailedPrecondition` when a backup is in progress.
pub async fn prune(
    c: &BackupConfig,
    cancel: &CancellationToken,
) -> Result<PruneReport, AgentError> {
    let _lock = super::lock(&c.dir, true)?;
    prune_locked(&c.dir, Policy::of(c), cancel).await
}

/// Prunes `dir` by `policy`; the caller holds the folder's exclusive lock.
///
/// # Errors
/// `Io` when the folder cannot be listed or a backup cannot be removed; `Cancelled`.
pub async fn prune_locked(
    dir: &Path,
    policy: Policy,
    cancel: &CancellationToken,
) -> Result<PruneReport, AgentError> {
    let dir = dir.to_path_buf();
    blocking(cancel, move |c| prune_sync(&dir, policy, c)).await
}

fn prune_sync(
    dir: &Path,
    policy: Policy,
    cancel: &CancellationToken,
) -> Result<PruneReport, AgentError> {
    let (listed, staging) = list(dir)?;
    let mut report = PruneReport::default();
    for name in staging {
        let p = dir.join(&name);
        std::fs::remove_dir_all(&p).map_err(|e| AgentError::io("remove", &p, e))?;
        tracing::info!(path = %p.display(), "removed the staging folder of an interrupted run");
        report.stale_removed.push(name);
    }
    let items: Vec<(String, i64)> = listed
        .iter()
        .map(|l| (l.id.clone(), l.created_unix))
        .collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut decision = decide(&items, now, policy, None);
    if decision.iter().any(|(_, why)| why.is_empty()) {
        // Something would go: find the newest backup that verifies, and keep it whatever the rules.
        let mut newest_good = None;
        for l in &listed {
            let v = super::verify::verify(&dir.join(&l.id), cancel)?;
            if v.ok() {
                newest_good = Some(l.id.clone());
                break;
            }
            tracing::warn!(backup = %l.id, problems = ?v.problems, "backup does not verify");
        }
        decision = decide(&items, now, policy, newest_good.as_deref());
    }
    for (id, why) in decision {
        if !why.is_empty() {
            report.kept.push((id, why));
            continue;
        }
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        let (from, to) = (dir.join(&id), dir.join(format!("{DELETING_PREFIX}{id}")));
        std::fs::rename(&from, &to).map_err(|e| AgentError::io("rename for deletion", &from, e))?;
        std::fs::remove_dir_all(&to).map_err(|e| AgentError::io("remove", &to, e))?;
        tracing::info!(backup = %id, "backup pruned");
        report.deleted.push(id);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn backups(ages_days: &[i64], now: i64) -> Vec<(String, i64)> {
        ages_days
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("b{i}"), now - a * DAY))
            .collect()
    }

    fn deleted(d: &[(String, Vec<&'static str>)]) -> Vec<String> {
        d.iter()
            .filter(|(_, w)| w.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    #[test]
    fn a_backup_is_kept_when_any_rule_keeps_it() {
        let now = 100 * DAY;
        let b = backups(&[0, 1, 2, 10, 20], now);
        let p = Policy {
            keep_days: Some(3),
            keep_last: Some(2),
        };
        assert_eq!(deleted(&decide(&b, now, p, Some("b0"))), ["b3", "b4"]);
        let p = Policy {
            keep_days: Some(15),
            keep_last: Some(1),
        };
        assert_eq!(deleted(&decide(&b, now, p, Some("b0"))), ["b4"]);
    }

    #[test]
    fn the_newest_backup_that_verifies_survives_every_rule() {
        let now = 100 * DAY;
        let b = backups(&[0, 1, 2, 3], now);
        let p = Policy {
            keep_days: Some(0),
            keep_last: Some(2),
        };
        // b0 and b1 are damaged: b2 is the newest good one.
        let d = decide(&b, now, p, Some("b2"));
        assert_eq!(deleted(&d), ["b3"]);
        assert_eq!(d[2].1, [NEWEST_GOOD]);
    }

    #[test]
    fn without_rules_nothing_is_deleted() {
        let now = 100 * DAY;
        let b = backups(&[0, 50, 99], now);
        assert!(deleted(&decide(&b, now, Policy::default(), None)).is_empty());
    }

    #[tokio::test]
    async fn prune_deletes_by_rule_and_removes_interrupted_staging_folders() {
        let t = tempfile::tempdir().expect("tmp");
        for id in ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"] {
            std::fs::create_dir(t.path().join(id)).expect("dir");
        }
        std::fs::create_dir(t.path().join(".incomplete-20260103T000000Z-cccccc")).expect("dir");
        let p = Policy {
            keep_days: None,
            keep_last: Some(1),
        };
        let r = prune_locked(t.path(), p, &CancellationToken::new())
            .await
            .expect("prune");
        // Neither verifies (no manifest): only the count rule keeps one.
        assert_eq!(r.deleted, ["20260101T000000Z-aaaaaa"]);
        assert_eq!(r.stale_removed, [".incomplete-20260103T000000Z-cccccc"]);
        assert!(t.path().join("20260102T000000Z-bbbbbb").is_dir());
        let left: Vec<_> = std::fs::read_dir(t.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
