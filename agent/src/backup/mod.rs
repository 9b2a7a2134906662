//! `service Backup` and the `hostshift-agent backup` command: backups made **on this host**, of
//! what its own config declares, into `[backup] dir`. Data never leaves the host, except to the
//! S3 bucket of `[backup.s3]` when asked.
//!
//! # A backup on disk
//! ```text
//! <dir>/<id>/                      id = UTC time + random suffix: 20261105T031500Z-3fa9c2
//!   manifest.json                  size + SHA-256 of every artifact, tool versions, host, time
//!   databases/<name>.dump          pg_dump -Fc (restorable with plain pg_restore)
//!   storage/<name>.tar.gz          the tree's files and symlinks (plain tar -xzf)
//!   storage/<name>.manifest        the tree's hostshift manifest: directories, modes, mtimes,
//!                                  a SHA-256 per file (what `restore` checks while extracting)
//!   files/<name>                   a copy of the config file
//! ```
//! It is written into `<dir>/.incomplete-<id>/` and renamed to `<dir>/<id>/` only when every
//! artifact and the manifest are on disk and flushed: a folder named like an id is a finished
//! backup, and a half-written one never looks finished. Deleting renames to `.deleting-<id>`
//! first, for the same reason.
//!
//! # Files
//! - [`flow`] — what to back up, and the whole run: lock, create, upload, prune (also the
//!   `hostshift-agent backup` command).
//! - [`create`] — writes one backup (pg_dump, tar + gzip, copies) and renames it into place.
//! - [`verify`] — re-reads every artifact against the manifest.
//! - [`restore`] — puts a backup back, by name, where `[allow]` permits.
//! - [`retention`] — `keep_days` / `keep_last`; never the newest backup that verifies.
//! - [`s3`] — uploads a finished backup (multipart for large artifacts, SHA-256 as metadata).
//! - `service` — the gRPC translation.
//!
//! # Concurrency
//! One `flock(2)` on `<dir>/.lock` orders work across processes (the daemon and the systemd
//! timer's `hostshift-agent backup`): creating and pruning hold it exclusively, restoring and
//! uploading share it. A second exclusive user is refused at once, with a message saying so.

pub mod create;
pub mod flow;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod selection;
mod service;
pub mod verify;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use flow::{LocalReport, run_local};
pub use service::BackupService;

use crate::error::AgentError;

/// The manifest's file name inside a backup folder.
pub const MANIFEST: &str = "manifest.json";
/// Prefix of a backup being written.
pub const INCOMPLETE_PREFIX: &str = ".incomplete-";
/// Prefix of a backup being deleted.
pub const DELETING_PREFIX: &str = ".deleting-";
/// Version of the manifest format.
pub const FORMAT: u32 = 1;

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup's id (its folder name).
    pub id: String,
    /// When it started, RFC 3339 UTC.
    pub created_at: String,
    /// When it started, nanoseconds since the epoch (orders backups made within one second).
    pub created_unix_ns: i64,
    /// When the last artifact was written, RFC 3339 UTC.
    pub finished_at: String,
    /// The host's name.
    pub hostname: String,
    /// The agent's `role` label.
    pub role: String,
    /// Tool versions: `pg_dump`, `hostshift-agent`.
    pub tools: BTreeMap<String, String>,
    /// Every artifact, in the order written.
    pub artifacts: Vec<Artifact>,
}

impl BackupManifest {
    /// Sum of the artifacts' sizes.
    pub fn total_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

/// What an artifact holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A `pg_dump -Fc` dump of a database.
    Database,
    /// A storage tree's files and symlinks, `.tar.gz`.
    Storage,
    /// A storage tree's hostshift manifest (directories, modes, per-file SHA-256).
    StorageIndex,
    /// A config file's bytes.
    File,
}

impl ArtifactKind {
    /// `database`, `storage`, `storage-index`, `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Storage => "storage",
            Self::StorageIndex => "storage-index",
            Self::File => "file",
        }
    }
}

/// One file of a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Artifact {
    /// What it holds.
    pub kind: ArtifactKind,
    /// The database/tree/file name in the agent's config.
    pub name: String,
    /// Path inside the backup folder.
    pub file: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Where it came from on the host (trees and files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// Permission bits of a config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `server_version` of the database server dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Files and symlinks in a storage tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Modification time (ns since the epoch) of a storage tree's top folder when it was backed
    /// up: the restore gives it back (the tree's manifest covers only what is inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_mtime_ns: Option<i64>,
}

/// A new backup id for `now`: `YYYYMMDDTHHMMSSZ-` + 6 random hex digits.
///
/// # Errors
/// `Io` when `/dev/urandom` cannot be read.
pub fn new_id(now: time::OffsetDateTime) -> Result<String, AgentError> {
    use std::io::Read;
    let mut b = [0u8; 3];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| AgentError::io("read", "/dev/urandom", e))?;
    Ok(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        hex::encode(b)
    ))
}

/// The start time (seconds since the epoch) an id names, or `None` when `s` is not an id. Ids are
/// checked with this before they become paths.
pub fn parse_id(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r.clone())?
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| s[r].parse().ok())?
    };
    let hex_ok = b.len() == 23
        && b[17..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !hex_ok || b[8] != b'T' || b[15] != b'Z' || b[16] != b'-' {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(digits(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(digits(0..4)?).ok()?,
        month,
        u8::try_from(digits(6..8)?).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(digits(9..11)?).ok()?,
        u8::try_from(digits(11..13)?).ok()?,
        u8::try_from(digits(13..15)?).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// RFC 3339 in UTC, e.g. `2026-11-05T03:15:00.123Z`.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Creates the backup folder (mode 0700: backups hold every secret of the app) if missing.
///
/// # Errors
/// `Io` naming the folder.
pub fn ensure_dir(dir: &Path) -> Result<(), AgentError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::io("create the backup folder", dir, e))
}

/// A held `flock` on `<dir>/.lock`; released on drop.
pub struct DirLock {
    _lock: Flock<File>,
}

/// Takes the backup folder's lock without waiting.
///
/// # Errors
/// `FailedPrecondition` when another backup, prune or restore holds it; `Io`.
pub fn lock(dir: &Path, exclusive: bool) -> Result<DirLock, AgentError> {
    ensure_dir(dir)?;
    let path = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AgentError::io("open", &path, e))?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(DirLock { _lock: l }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(AgentError::FailedPrecondition(format!(
            "another backup, prune, restore or upload is using {} (its lock {} is held); try again when it ends",
            dir.display(),
            path.display()
        ))),
        Err((_, e)) => Err(AgentError::io("lock", &path, e.into())),
    }
}

/// The folder of an existing, finished backup.
///
/// # Errors
/// `InvalidArgument` for a malformed id or a backup that is not there.
pub fn existing(dir: &Path, id: &str) -> Result<PathBuf, AgentError> {
    if parse_id(id).is_none() {
        return Err(AgentError::InvalidArgument(format!(
            "{id:?} is not a backup id (like 20261105T031500Z-3fa9c2): see `hostshift backup list`"
        )));
    }
    let path = dir.join(id);
    if !path.join(MANIFEST).is_file() {
        return Err(AgentError::InvalidArgument(format!(
            "there is no backup {id} in {} on this host: see `hostshift backup list`",
            dir.display()
        )));
    }
    Ok(path)
}

/// Reads `<backup>/manifest.json`.
///
/// # Errors
/// `Io`, or `DataLoss` when it does not parse or names another id.
pub fn read_manifest(backup: &Path) -> Result<BackupManifest, AgentError> {
    let path = backup.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| AgentError::io("read", &path, e))?;
    let m: BackupManifest = serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::DataLoss(format!("{}: {e}", path.display())))?;
    if backup.file_name().and_then(|n| n.to_str()) != Some(m.id.as_str()) {
        return Err(AgentError::DataLoss(format!(
            "{} names backup {}, not its folder's",
            path.display(),
            m.id
        )));
    }
    Ok(m)
}

/// A finished backup as found in the folder.
#[derive(Debug)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// Seconds since the epoch, from the id.
    pub created_unix: i64,
    /// The manifest, or why it cannot be read.
    pub manifest: Result<BackupManifest, AgentError>,
}

impl Listed {
    fn order_key(&self) -> (i64, i64, &str) {
        let ns = self.manifest.as_ref().map_or(0, |m| m.created_unix_ns);
        (self.created_unix, ns, &self.id)
    }
}

/// Every finished backup in `dir`, newest first, and the names of staging folders.
///
/// # Errors
/// `Io` when the folder cannot be listed (a missing folder is empty).
pub fn list(dir: &Path) -> Result<(Vec<Listed>, Vec<String>), AgentError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(AgentError::io("list", dir, e)),
    };
    let (mut done, mut staging) = (Vec::new(), Vec::new());
    for de in rd {
        let de = de.map_err(|e| AgentError::io("list", dir, e))?;
        let name = de.file_name().to_string_lossy().into_owned();
        if name.starts_with(INCOMPLETE_PREFIX) || name.starts_with(DELETING_PREFIX) {
            staging.push(name);
        } else if let Some(created_unix) = parse_id(&name)
            && de.file_type().is_ok_and(|t| t.is_dir())
        {
            let manifest = read_manifest(&de.path());
            done.push(Listed {
                id: name,
                created_unix,
                manifest,
            });
        }
    }
    done.sort_by(|a, b| b.order_key().cmp(&a.order_key()));
    staging.sort();
    Ok((done, staging))
}

/// Runs blocking work (tar, hashing) off the async threads.
pub(crate) async fn blocking<T, F>(cancel: &CancellationToken, f: F) -> Result<T, AgentError>
where
    F: FnOnce(&CancellationToken) -> Result<T, AgentError> + Send + 'static,
    T: Send + 'static,
{
    let c = cancel.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| AgentError::Internal(format!("backup task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_anything_else_is_refused() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_794_000_000).expect("time");
        let id = new_id(t).expect("id");
        assert_eq!(parse_id(&id), Some(1_794_000_000), "{id}");
        for bad in [
            "",
            "..",
            "20261105T031500Z-3fa9c",
            "20261105T031500Z-3FA9C2",
            "20261305T031500Z-3fa9c2",
            "20261105T031500Z/3fa9c2",
            "2026110xT031500Z-3fa9c2",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_orders_newest_first_and_reports_staging_folders() {
        let t = tempfile::tempdir().expect("tmp");
        for id in ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"] {
            std::fs::create_dir(t.path().join(id)).expect("dir");
        }
        std::fs::create_dir(t.path().join(".incomplete-20260103T000000Z-cccccc")).expect("dir");
        std::fs::create_dir(t.path().join("not-a-backup")).expect("dir");
        let (done, staging) = list(t.path()).expect("list");
        let ids: Vec<_> = done.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["20260102T000000Z-bbbbbb", "20260101T000000Z-aaaaaa"]);
        assert!(done[0].manifest.is_err(), "no manifest.json: unreadable");
        assert_eq!(staging, [".incomplete-20260103T000000Z-cccccc"]);
    }

    #[test]
    fn a_second_exclusive_lock_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let held = lock(t.path(), true).expect("first");
        let err = lock(t.path(), true).err().expect("second refused");
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        drop(held);
        assert!(lock(t.path(), false).is_ok());
    }
}
