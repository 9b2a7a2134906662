//! Restoring a backup of this agent's backup folder onto this host, **by name**: a backup made on
//! the old host (its folder copied here, see docs/backups.md) restores on the new one when both
//! configs declare the same names.
//!
//! Restoring is destructive, so before anything is written: every artifact to restore must name
//! something this config declares, with its `[allow]` permit (`restore_databases`,
//! `write_storage`, `write_files` — a refusal names the key to add), and every artifact is re-read
//! against its SHA-256. Then:
//! - a database: `pg_restore --clean --if-exists --single-transaction` into the configured
//!   database — all or nothing; objects of the dump are replaced, others are left alone;
//! - a storage tree: the storage module's own path — the `.tar.gz` is extracted by
//!   [`storage::unpack`] into a staging folder inside the tree (each file checked against the
//!   backup's manifest while written), then [`storage::commit`] renames each file into place
//!   (atomic per file), creates directories, sets modes and mtimes, and deletes what the backup
//!   does not have, so the tree equals the backup afterwards (checked by a fresh walk);
//! - a config file: written beside the target and renamed over it, keeping the target's owner.

use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use flate2::read::GzDecoder;
use tokio_util::sync::CancellationToken;

use super::blocking;
use super::verify::{artifact_path, verify_artifacts};
use super::{Artifact, ArtifactKind, BackupManifest};
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::process::Cmd;
use crate::storage::{self, Kind, Manifest, MetaFix};

/// Deadline of one `pg_restore`.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Largest config file restored (it is held in memory to be checked and written atomically).
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Which parts of a backup to restore (empty lists: every artifact of the backup).
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// Database names.
    pub databases: Vec<String>,
    /// Storage tree names.
    pub storage: Vec<String>,
    /// File names.
    pub files: Vec<String>,
    /// Databases: `pg_restore --no-owner` (objects belong to the connecting role).
    pub no_owner: bool,
}

/// One restored item.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Database, storage or file.
    pub kind: ArtifactKind,
    /// Its name.
    pub name: String,
    /// What was done.
    pub detail: String,
}

/// Restores backup `id` from `config`'s backup folder.
///
/// # Errors
/// `InvalidArgument` for an unknown backup or a name the backup lacks; `NotDeclared`;
/// `PermissionDenied` naming every `[allow]` key that is missing (nothing is changed);
/// `DataLoss` naming every damaged artifact (nothing is changed); a failing `pg_restore`
/// (`Command`, with its stderr; the database is unchanged); storage and file errors.
pub async fn restore(
    config: &AgentConfig,
    config_path: &Path,
    id: &str,
    wanted: &Wanted,
    cancel: &CancellationToken,
) -> Result<Vec<Restored>, AgentError> {
    let dir = &config.backup.dir;
    let backup = super::existing(dir, id)?;
    let _lock = super::lock(dir, false)?;
    let m = super::read_manifest(&backup)?;
    let chosen = choose(&m, wanted)?;
    permits(config, config_path, &chosen)?;
    // Every artifact of the backup, not only the chosen ones: a backup with a damaged part is
    // not restored from at all (docs/backups.md promises every digest is re-verified).
    let to_check: Vec<&Artifact> = m.artifacts.iter().collect();
    let verdict = {
        let (backup, m2) = (backup.clone(), m.clone());
        let files: Vec<String> = to_check.iter().map(|a| a.file.clone()).collect();
        blocking(cancel, move |c| {
            let arts: Vec<&Artifact> = m2
                .artifacts
                .iter()
                .filter(|a| files.contains(&a.file))
                .collect();
            verify_artifacts(&backup, &m2, &arts, c)
        })
        .await?
    };
    verdict.into_result()?;
    let mut done = Vec::new();
    for a in chosen {
        tracing::info!(backup = %id, kind = a.kind.as_str(), name = %a.name, "restoring");
        let detail = match a.kind {
            ArtifactKind::Database => {
                restore_database(config, &backup, a, wanted.no_owner, cancel).await?
            }
            ArtifactKind::Storage => {
                let index = index_of(&m, a).ok_or_else(|| {
                    AgentError::DataLoss(format!(
                        "backup {id} has no index for storage {:?}",
                        a.name
                    ))
                })?;
                let (root, tar, idx) = (
                    tree_root(config, &a.name)?,
                    artifact_path(&backup, a)?,
                    artifact_path(&backup, index)?,
                );
                let staging = format!("restore-{id}");
                let root_mtime = a.root_mtime_ns;
                blocking(cancel, move |c| {
                    restore_tree(&root, &tar, &idx, &staging, root_mtime, c)
                })
                .await?
            }
            ArtifactKind::File => restore_file(config, &backup, a)?,
            ArtifactKind::StorageIndex => continue,
        };
        done.push(Restored {
            kind: a.kind,
            name: a.name.clone(),
            detail,
        });
    }
    Ok(done)
}

/// The artifacts to restore: every database, tree and file of the backup, or the named ones.
fn choose<'a>(m: &'a BackupManifest, w: &Wanted) -> Result<Vec<&'a Artifact>, AgentError> {
    let all = w.databases.is_empty() && w.storage.is_empty() && w.files.is_empty();
    let mut out = Vec::new();
    for (kind, names) in [
        (ArtifactKind::Database, &w.databases),
        (ArtifactKind::Storage, &w.storage),
        (ArtifactKind::File, &w.files),
    ] {
        let of_kind = m.artifacts.iter().filter(|a| a.kind == kind);
        if all {
            out.extend(of_kind);
            continue;
        }
        for n in names {
            let a = of_kind.clone().find(|a| &a.name == n).ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "backup {} has no {} {n:?}",
                    m.id,
                    kind.as_str()
                ))
            })?;
            out.push(a);
        }
    }
    Ok(out)
}

fn index_of<'a>(m: &'a BackupManifest, tar: &Artifact) -> Option<&'a Artifact> {
    (tar.kind == ArtifactKind::Storage)
        .then(|| {
            m.artifacts
                .iter()
                .find(|a| a.kind == ArtifactKind::StorageIndex && a.name == tar.name)
        })
        .flatten()
}

/// Every artifact must name something declared here, with its `[allow]` permit. All refusals are
/// reported at once, each with the key to add.
fn permits(c: &AgentConfig, config_path: &Path, chosen: &[&Artifact]) -> Result<(), AgentError> {
    let mut refused = Vec::new();
    for a in chosen {
        let (declared, allowed, key, what) = match a.kind {
            ArtifactKind::Database => (
                c.databases.iter().any(|d| d.name == a.name),
                &c.allow.restore_databases,
                "restore_databases",
                "database",
            ),
            ArtifactKind::Storage => (
                c.storage.iter().any(|s| s.name == a.name),
                &c.allow.write_storage,
                "write_storage",
                "storage tree",
            ),
            ArtifactKind::File => (
                c.files.iter().any(|f| f.name == a.name),
                &c.allow.write_files,
                "write_files",
                "file",
            ),
            ArtifactKind::StorageIndex => continue,
        };
        if !declared {
            return Err(AgentError::NotDeclared {
                what,
                name: a.name.clone(),
                config: config_path.display().to_string(),
            });
        }
        if !allowed.contains(&a.name) {
            refused.push(format!("{what} {:?}: add it to [allow] {key}", a.name));
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(AgentError::PermissionDenied(format!(
        "this agent's config does not allow restoring {} (in {}); nothing was changed",
        refused.join("; "),
        config_path.display()
    )))
}

async fn restore_database(
    c: &AgentConfig,
    backup: &Path,
    a: &Artifact,
    no_owner: bool,
    cancel: &CancellationToken,
) -> Result<String, AgentError> {
    let db = c
        .databases
        .iter()
        .find(|d| d.name == a.name)
        .ok_or_else(|| {
            AgentError::Internal(format!("database {} vanished from the config", a.name))
        })?;
    let bin = crate::agent_info::pg_bin_dir(c).ok_or_else(|| {
        AgentError::FailedPrecondition(
            "pg_restore not found: install it (apt-get install -y postgresql-client-15) or set [tools] pg_bin_dir".into(),
        )
    })?;
    let dump = artifact_path(backup, a)?;
    // With --no-owner, `ALTER DEFAULT PRIVILEGES FOR ROLE <owner>` would still need membership in
    // that owner: leave those entries out (the objects belong to the connecting role now).
    let list = if no_owner {
        Some(without_default_acls(c, bin.as_path(), &dump, &a.name, cancel).await?)
    } else {
        None
    };
    let cmd = Cmd::new(bin.join("pg_restore"))
        .args(list.as_ref().map(|l| format!("--use-list={}", l.display())))
        .args([
            "--no-password",
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
        ])
        .args(no_owner.then_some("--no-owner"))
        .arg(crate::postgres::connect::dbname_arg(db)?)
        .arg(&dump)
        .timeout(RESTORE_TIMEOUT)
        .env("PGAPPNAME", "hostshift-restore")
        .env("PGCONNECT_TIMEOUT", "10");
    let cmd = crate::postgres::connect::libpq_env(cmd, db)
        .map_err(|e| AgentError::io("read", db.password_file.clone().unwrap_or_default(), e))?;
    let out = cmd.output(cancel).await;
    if let Some(l) = &list {
        let _ = std::fs::remove_file(l);
    }
    let out = out?;
    if !out.exit.success() && !no_owner && ownership_refused(&out.stderr_tail) {
        return Err(AgentError::FailedPrecondition(format!(
            "pg_restore into database {} was refused giving objects to their owners (the \
             connecting role is not a superuser, e.g. a managed database's master); nothing was \
             changed. Restore with --no-owner (objects then belong to the connecting role; see \
             docs/backups.md), or run `hostshift sync` first (it creates the roles and their \
             rights). pg_restore said: {}",
            db.name,
            out.stderr_tail.trim()
        )));
    }
    out.success()?;
    Ok(format!(
        "pg_restore{} into database {} ({} bytes of dump)",
        if no_owner { " --no-owner" } else { "" },
        db.name,
        a.size
    ))
}

/// Writes the dump's table of contents without its `DEFAULT ACL` entries to a file in the
/// agent's state folder, for `pg_restore --use-list`; the caller removes it.
async fn without_default_acls(
    c: &AgentConfig,
    bin: &Path,
    dump: &Path,
    name: &str,
    cancel: &CancellationToken,
) -> Result<std::path::PathBuf, AgentError> {
    let out = Cmd::new(bin.join("pg_restore"))
        .arg("--list")
        .arg(dump)
        .timeout(RESTORE_TIMEOUT)
        .output(cancel)
        .await?
        .success()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kept: String = text
        .lines()
        .filter(|l| !l.contains(" DEFAULT ACL "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::create_dir_all(&c.state_dir).map_err(|e| AgentError::io("create", &c.state_dir, e))?;
    let path = c
        .state_dir
        .join(format!("restore-{name}-{}.list", std::process::id()));
    std::fs::write(&path, kept).map_err(|e| AgentError::io("write", &path, e))?;
    Ok(path)
}

/// Whether `pg_restore`'s stderr says an `OWNER TO` (or what it needs) was refused.
fn ownership_refused(stderr: &str) -> bool {
    stderr.contains("OWNER TO")
        || stderr.contains("must be member of role")
        || stderr.contains("must be able to SET ROLE")
}

fn tree_root(c: &AgentConfig, name: &str) -> Result<std::path::PathBuf, AgentError> {
    c.storage
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.path.clone())
        .ok_or_else(|| {
            AgentError::Internal(format!("storage tree {name} vanished from the config"))
        })
}

/// Extracts the tree's tar into staging (each file checked against the backup's manifest), commits
/// it, deletes what the backup lacks, gives the top folder its backed-up mtime (`root_mtime_ns`;
/// backups made before it was recorded have none), and proves the result equals the backup.
fn restore_tree(
    root: &Path,
    tar: &Path,
    index: &Path,
    staging_id: &str,
    root_mtime_ns: Option<i64>,
    cancel: &CancellationToken,
) -> Result<String, AgentError> {
    let bytes = std::fs::read(index).map_err(|e| AgentError::io("read", index, e))?;
    let mut wanted = Manifest::decode(&bytes, index)?;
    let carry = storage::carries_owners();
    wanted.localize_owners(carry);
    std::fs::create_dir_all(root).map_err(|e| AgentError::io("create", root, e))?;
    let staging = storage::staging_name(staging_id)?;
    // A staging folder of an interrupted restore of the same backup holds nothing we need.
    let _ = std::fs::remove_dir_all(root.join(&staging));
    let current = storage::build_full(root, cancel)?;
    let delta = storage::diff(&wanted, &current, true);
    let expected: Vec<storage::Entry> = wanted
        .entries()
        .iter()
        .filter(|e| e.kind != Kind::Dir)
        .cloned()
        .collect();
    let file = std::fs::File::open(tar).map_err(|e| AgentError::io("open", tar, e))?;
    let staged = storage::unpack(
        root,
        &staging,
        GzDecoder::new(BufReader::new(file)),
        &expected,
        cancel,
    )?;
    let dirs: Vec<MetaFix> = wanted
        .entries()
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| MetaFix {
            path: e.path.clone(),
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            owner: e.owner,
        })
        .collect();
    let stats = storage::commit(root, staged, &dirs, &[], &delta.delete)?;
    if let Some(ns) = root_mtime_ns {
        // Last: creating and removing the staging folder inside it changed it.
        let mtime = nix::sys::time::TimeSpec::new(
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000),
        );
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            root,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| AgentError::io("set the mtime of", root, std::io::Error::from(e)))?;
    }
    let mut after = storage::build_full(root, cancel)?;
    if !carry {
        after.localize_owners(false);
    }
    if after != wanted {
        return Err(AgentError::FailedPrecondition(format!(
            "{} does not equal the backup after the restore (was it written to meanwhile?); restore again",
            root.display()
        )));
    }
    Ok(format!(
        "{} files and symlinks installed, {} directories created, {} paths deleted",
        stats.installed, stats.dirs_created, stats.deleted
    ))
}

fn restore_file(c: &AgentConfig, backup: &Path, a: &Artifact) -> Result<String, AgentError> {
    let target = c
        .files
        .iter()
        .find(|f| f.name == a.name)
        .map(|f| f.path.clone())
        .ok_or_else(|| AgentError::Internal(format!("file {} vanished from the config", a.name)))?;
    if a.size > MAX_FILE {
        return Err(AgentError::FailedPrecondition(format!(
            "file {} is {} bytes, more than a config file restore takes ({MAX_FILE})",
            a.name, a.size
        )));
    }
    let src = artifact_path(backup, a)?;
    let bytes = std::fs::read(&src).map_err(|e| AgentError::io("read", &src, e))?;
    // Checked again on the bytes actually written: the artifact could change after the verify.
    if hostshift_shared::digest::Sha256Digest::of(&bytes).to_string() != a.sha256 {
        return Err(AgentError::DataLoss(format!(
            "{}: content changed since it was verified",
            a.file
        )));
    }
    let owner = std::fs::metadata(&target).ok().map(|m| (m.uid(), m.gid()));
    crate::fsutil::write_atomic(&target, &bytes, a.mode.unwrap_or(0o600), owner)?;
    Ok(format!(
        "{} bytes written to {}",
        bytes.len(),
        target.display()
    ))
}
