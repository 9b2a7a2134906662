//! The staging directory: where [`unpack`](super::unpack::unpack) puts verified copies
//! (`root/.hostshift-staging-<id>/`, inside the tree so that the final `rename(2)` stays on one
//! file system), [`Staged`] — what is waiting there — and the two ways to throw it away:
//! [`abort`] (one staged set) and [`remove_stale_staging`] (whatever interrupted syncs left).
//! Manifests skip these directories and no [`RelPath`] may name them.

use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::error::StorageError;
use super::relpath::{RelPath, STAGING_PREFIX, is_staging_name};

/// What [`unpack`](super::unpack::unpack) extracted: verified copies waiting in the staging
/// directory.
#[derive(Debug)]
pub struct Staged {
    pub(super) dir: PathBuf,
    /// In stream order.
    pub(super) entries: Vec<StagedEntry>,
    pub(super) bytes: u64,
    /// Files the sender deferred (they changed while being read): nothing of them is staged.
    pub(super) deferred: Vec<super::pack::Deferred>,
    /// SHA-256 of the stream's bytes that are not file content, as received.
    pub(super) envelope: Option<hostshift_shared::digest::Sha256Digest>,
}

/// One verified copy waiting to be installed.
#[derive(Debug)]
pub(super) struct StagedEntry {
    /// Its final path.
    pub path: RelPath,
    /// The copy.
    pub staged: PathBuf,
    /// A file copy's device and inode (`None` for a symlink): the installed file is known to be
    /// this verified copy only while it is still this inode.
    pub inode: Option<(u64, u64)>,
}

impl Staged {
    /// The staging directory (`root/.hostshift-staging-<id>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of staged files and symlinks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was staged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of file content staged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The stream's envelope as received: SHA-256 of every byte that was not file content
    /// (see [`PackStats::envelope`](super::pack::PackStats::envelope)). File content is proved
    /// by each file's digest; the envelope, compared with the sender's, proves the rest.
    pub fn envelope(&self) -> Option<hostshift_shared::digest::Sha256Digest> {
        self.envelope
    }

    /// Files the sender deferred: not staged, left for the next pass.
    pub fn deferred(&self) -> &[super::pack::Deferred] {
        &self.deferred
    }
}

/// The staging directory name for a sync with this `id` (letters, digits, `-`, `_`; at most 64).
///
/// # Errors
/// [`StorageError::BadPath`] for any other `id`.
pub fn staging_name(id: &str) -> Result<String, StorageError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(StorageError::BadPath {
            path: PathBuf::from(id),
            reason: "a sync id is 1 to 64 letters, digits, '-' or '_'".into(),
        });
    }
    Ok(format!("{STAGING_PREFIX}{id}"))
}

/// Throws a staged set away: removes its staging directory and touches nothing else.
///
/// # Errors
/// [`StorageError::BadPath`] when `staged` does not belong to `root`; [`StorageError::Io`].
pub fn abort(root: &Path, staged: Staged) -> Result<(), StorageError> {
    if staged.dir.parent() != Some(root) {
        return Err(StorageError::BadPath {
            path: staged.dir,
            reason: format!("not a staging directory of {}", root.display()),
        });
    }
    std::fs::remove_dir_all(&staged.dir)
        .map_err(|e| StorageError::io("remove staging directory", &staged.dir, e))
}

/// Removes staging directories that earlier, interrupted syncs left under `root`. Call it only
/// while no sync of this tree is running (at agent start): it removes every staging directory,
/// including one in use. Returns what was removed.
///
/// # Errors
/// [`StorageError::Io`].
pub fn remove_stale_staging(root: &Path) -> Result<Vec<PathBuf>, StorageError> {
    use std::os::unix::ffi::OsStrExt;
    let mut removed = Vec::new();
    let listing = std::fs::read_dir(root).map_err(|e| StorageError::io("list", root, e))?;
    for de in listing {
        let de = de.map_err(|e| StorageError::io("list", root, e))?;
        if !is_staging_name(de.file_name().as_bytes()) {
            continue;
        }
        let path = de.path();
        // remove_dir_all does not follow symlinks; a link by that name is just unlinked.
        let is_dir = de.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| StorageError::io("remove stale staging directory", &path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// `mtime_ns` as a [`FileTime`].
pub(super) fn mtime(ns: i64) -> FileTime {
    let nanos = u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0);
    FileTime::from_unix_time(ns.div_euclid(1_000_000_000), nanos)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::storage::unpack::unpack;

    #[test]
    fn staging_names_come_from_a_plain_id() {
        assert_eq!(
            staging_name("sync-42_a").unwrap(),
            ".hostshift-staging-sync-42_a"
        );
        for bad in ["", "../x", "a/b", "x y"] {
            assert!(staging_name(bad).is_err(), "{bad}");
        }
        let t = tempfile::tempdir().unwrap();
        let err = unpack(
            t.path(),
            "../elsewhere",
            &[][..],
            &[],
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, StorageError::BadPath { .. }));
    }
}
