//! Putting a verified [`Staged`] set into place and applying the rest of a delta: [`commit`] in
//! one go, or [`prepare`] → [`commit`] per batch → [`finalize`] when a delta is sent in batches.
//! (Throwing a staged set away is [`abort`](super::staging::abort).)
//!
//! A commit, in this order:
//! 1. delete what the delta says — children first; only while the path is still the kind of
//!    entry the target's manifest listed; a directory only once it is empty (one that is not is
//!    kept and reported, never emptied by force);
//! 2. create missing directories;
//! 3. `rename(2)` each staged file and symlink onto its final path — atomic per file: a reader
//!    sees the old file or the new one, never a mix; `unpack` made each copy durable first, and
//!    an fsync of each directory renamed into (one `syncfs(2)` for many, see
//!    [`durable`](super::durable)) makes the renames durable after;
//! 4. set mode/mtime of files whose content was already right, then of directories, children
//!    first, because everything before moves their mtimes;
//! 5. remove the staging directory.
//!
//! [`finalize`] ends with a flush of what it changed (a deletion, a directory, an attribute:
//! those paths and their directories, or one `syncfs(2)` for many), so that what a sync reports
//! as done survives a crash; when the tree already matched, it writes nothing and flushes
//! nothing ([`CommitStats::flushed`]).
//!
//! Each installed file's [`Stamp`] is returned ([`CommitStats::installed`]): the caller may
//! give them to the next walk as a cache, so that copies verified while they were staged are
//! not read again to make the target's manifest.
//!
//! Deleting first lets a path change kind (a file where a directory was). Every path goes
//! through [`join_under`], so nothing outside the root is written, deleted or followed.
//!
//! A commit is atomic per file, not per tree: if it fails midway, the tree holds a mix of old and
//! new files — each of them whole — and syncing again finishes the job.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::delta::MetaFix;
use super::error::StorageError;
use super::manifest::{Entry, Kind, Stamp};
use super::relpath::{RelPath, join_under};
use super::staging::{Staged, mtime};

/// What a [`commit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Files and symlinks renamed into place.
    pub installed: u64,
    /// The stamp of each installed file that is still the verified copy `unpack` staged (when
    /// the digest check passed and the copy was installed).
    pub stamps: Vec<(RelPath, Stamp)>,
    /// Directories whose mode/mtime were set.
    pub dirs_fixed: u64,
    /// Whether the end of a [`finalize`] flushed what it changed to disk.
    pub flushed: bool,
    /// Directories created.
    pub dirs_created: u64,
    /// Files and symlinks whose mode/mtime were set.
    pub meta_fixed: u64,
    /// Paths deleted.
    pub deleted: u64,
    /// Entries the delta said to delete that were kept: a directory that still holds something,
    /// or a path that is no longer the kind of entry the target's manifest listed (already
    /// replaced, e.g. by an earlier [`prepare`]).
    pub kept: Vec<RelPath>,
}

/// Puts `staged` into place under `root` and applies the rest of the delta (see the module doc):
/// [`prepare`], install, then the attributes. Call it only after the stream's trailer was
/// verified. With empty `dirs`, `meta` and `delete` it only installs (missing parents are created
/// with default modes; a later [`finalize`] sets them), which suits a delta sent in batches. On
/// error the staging directory is removed as well (its copies are verified but may be partly
/// installed: sync again).
///
/// # Errors
/// [`StorageError::SymlinkInPath`] when a directory on the way is a symlink;
/// [`StorageError::TargetChanged`] when the tree no longer matches its manifest (a directory is
/// now a file, a file to fix is gone); [`StorageError::Io`].
pub fn commit(
    root: &Path,
    staged: Staged,
    dirs: &[MetaFix],
    meta: &[MetaFix],
    delete: &[Entry],
) -> Result<CommitStats, StorageError> {
    let result = prepare(root, dirs, delete).and_then(|mut stats| {
        install(root, &staged, &mut stats)?;
        set_attributes(root, dirs, meta, &mut stats)?;
        Ok(stats)
    });
    let cleanup = std::fs::remove_dir_all(&staged.dir);
    let stats = result?;
    cleanup.map_err(|e| StorageError::io("remove staging directory", &staged.dir, e))?;
    Ok(stats)
}

/// The first half of a commit, for a delta sent in batches: deletes what `delete` lists
/// (children first; directories only when empty) and creates the missing directories of `dirs`
/// (owner-only until [`finalize`]). Run it before the first batch: a path that changes between
/// a directory and a file can only be installed once the old entry is gone. Running it again is
/// harmless.
///
/// # Errors
/// As [`commit`].
pub fn prepare(
    root: &Path,
    dirs: &[MetaFix],
    delete: &[Entry],
) -> Result<CommitStats, StorageError> {
    let mut stats = CommitStats::default();
    remove(root, delete, &mut stats)?;
    make_dirs(root, dirs, &mut stats)?;
    if stats.deleted + stats.dirs_created > 0 {
        tracing::info!(
            root = %root.display(),
            deleted = stats.deleted,
            dirs_created = stats.dirs_created,
            "tree prepared"
        );
    }
    Ok(stats)
}

/// The last step of a delta sent in batches, once every batch is committed: [`prepare`] again
/// (so it also works alone), then the mode/mtime of `meta` entries and of `dirs`.
///
/// # Errors
/// As [`commit`].
pub fn finalize(
    root: &Path,
    dirs: &[MetaFix],
    meta: &[MetaFix],
    delete: &[Entry],
) -> Result<CommitStats, StorageError> {
    let root_fd =
        std::fs::File::open(root).map_err(|e| StorageError::io("open tree root", root, e))?;
    let mut stats = prepare(root, dirs, delete)?;
    set_attributes(root, dirs, meta, &mut stats)?;
    let changed = stats.deleted + stats.dirs_created + stats.meta_fixed + stats.dirs_fixed > 0;
    if changed {
        // What this delta touched: the files whose attributes were set, the directories created
        // or fixed, and those deleted from (each with its parent: its own entry changed there
        // too) — or one syncfs when that is many (see `durable`).
        let under = |p: &RelPath| join_under(root, p);
        let files = meta
            .iter()
            .map(|m| under(&m.path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut candidates: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
        candidates.insert(root.to_path_buf());
        for p in dirs
            .iter()
            .map(|d| &d.path)
            .chain(delete.iter().map(|e| &e.path))
        {
            let full = under(p)?;
            if let Some(parent) = full.parent() {
                candidates.insert(parent.to_path_buf());
            }
            candidates.insert(full);
        }
        // Only the directories that are there: a deleted entry (or a directory deleted along
        // with its children) is not there to flush — its parent is.
        let mut touched = Vec::with_capacity(candidates.len());
        for d in candidates {
            if lstat(&d)?.is_some_and(|m| m.is_dir()) {
                touched.push(d);
            }
        }
        super::durable::flush(&files, &touched, (&root_fd, root))?;
        stats.flushed = true;
    }
    tracing::info!(
        root = %root.display(),
        deleted = stats.deleted,
        dirs_created = stats.dirs_created,
        meta_fixed = stats.meta_fixed,
        dirs_fixed = stats.dirs_fixed,
        flushed = stats.flushed,
        "tree finalized"
    );
    Ok(stats)
}

fn remove(root: &Path, delete: &[Entry], stats: &mut CommitStats) -> Result<(), StorageError> {
    let mut delete: Vec<&Entry> = delete.iter().collect();
    delete.sort_by(|a, b| b.path.cmp(&a.path));
    for e in delete {
        let full = join_under(root, &e.path)?;
        let Some(m) = lstat(&full)? else { continue };
        let ft = m.file_type();
        let same_kind = match e.kind {
            Kind::Dir => ft.is_dir(),
            Kind::File => ft.is_file(),
            Kind::Symlink { .. } => ft.is_symlink(),
        };
        if !same_kind {
            stats.kept.push(e.path.clone());
            continue;
        }
        let removed = if ft.is_dir() {
            std::fs::remove_dir(&full)
        } else {
            std::fs::remove_file(&full)
        };
        match removed {
            Ok(()) => stats.deleted += 1,
            Err(err) if err.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                let path = full.display();
                tracing::warn!(%path, "not deleting a directory that is not empty");
                stats.kept.push(e.path.clone());
            }
            Err(err) => return Err(StorageError::io("delete", full, err)),
        }
    }
    Ok(())
}

fn make_dirs(root: &Path, dirs: &[MetaFix], stats: &mut CommitStats) -> Result<(), StorageError> {
    let mut dirs: Vec<&MetaFix> = dirs.iter().collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    for d in dirs {
        let full = join_under(root, &d.path)?;
        match lstat(&full)? {
            // Owner-only until the end, when the real mode is set.
            None => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&full)
                    .map_err(|e| StorageError::io("create directory", &full, e))?;
                stats.dirs_created += 1;
            }
            Some(m) if m.is_dir() => {}
            Some(_) => return Err(changed(full, "a directory was expected here")),
        }
    }
    Ok(())
}

/// Renames each staged copy onto its final path, then makes the renames durable.
fn install(root: &Path, staged: &Staged, stats: &mut CommitStats) -> Result<(), StorageError> {
    if staged.entries.is_empty() {
        return Ok(());
    }
    let root_fd =
        std::fs::File::open(root).map_err(|e| StorageError::io("open tree root", root, e))?;
    let installed_at = crate::storage::walk::now_ns();
    // The directories whose entries change: the staging one and each one renamed into (with
    // the ancestors of any created here).
    let mut dirs: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    dirs.insert(staged.dir.clone());
    for e in &staged.entries {
        let full = join_under(root, &e.path)?;
        let parent = full.parent().unwrap_or(root).to_path_buf();
        if lstat(&parent)?.is_none() {
            // Not created by `prepare` (a batch): join_under vouched for what exists.
            std::fs::create_dir_all(&parent)
                .map_err(|e| StorageError::io("create directory", &parent, e))?;
            dirs.extend(
                parent
                    .ancestors()
                    .skip(1)
                    .take_while(|a| a.starts_with(root))
                    .map(Path::to_path_buf),
            );
        }
        dirs.insert(parent);
        std::fs::rename(&e.staged, &full)
            .map_err(|e| StorageError::io("rename into place", &full, e))?;
        stats.installed += 1;
        // The rename moved the copy's ctime: stamp it as installed, if it is still our copy.
        if let Some(inode) = e.inode
            && let Some(m) = lstat(&full)?
        {
            use std::os::unix::fs::MetadataExt;
            if m.is_file() && (m.dev(), m.ino()) == inode {
                stats
                    .stamps
                    .push((e.path.clone(), Stamp::of(&m, installed_at)));
            }
        }
    }
    // The renames durable: each directory renamed into, or one syncfs (see `durable`).
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    super::durable::flush(&[], &dirs, (&root_fd, root))
}

/// Mode and mtime of `meta` entries, then of `dirs`, children first: everything before this
/// moved the directories' mtimes.
fn set_attributes(
    root: &Path,
    dirs: &[MetaFix],
    meta: &[MetaFix],
    stats: &mut CommitStats,
) -> Result<(), StorageError> {
    for m in meta {
        let full = join_under(root, &m.path)?;
        let Some(st) = lstat(&full)? else {
            return Err(changed(full, "it is gone"));
        };
        set_owner(&full, m.owner)?;
        if !st.file_type().is_symlink() {
            set_mode(&full, m.mode)?;
        }
        set_mtime(&full, &st, m.mtime_ns)?;
        stats.meta_fixed += 1;
    }
    let mut dirs: Vec<&MetaFix> = dirs.iter().collect();
    dirs.sort_by(|a, b| b.path.cmp(&a.path));
    for d in dirs {
        let full = join_under(root, &d.path)?;
        let Some(st) = lstat(&full)?.filter(std::fs::Metadata::is_dir) else {
            return Err(changed(full, "a directory was expected here"));
        };
        set_owner(&full, d.owner)?;
        set_mode(&full, d.mode)?;
        set_mtime(&full, &st, d.mtime_ns)?;
        stats.dirs_fixed += 1;
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<Option<std::fs::Metadata>, StorageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        // NotADirectory: an ancestor is a file now, so this path cannot exist either.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(StorageError::io("inspect", path, e)),
    }
}

/// Sets owner and group of `path` itself (a symlink is not followed); `None` leaves them.
pub(super) fn set_owner(
    path: &Path,
    owner: Option<super::manifest::Owner>,
) -> Result<(), StorageError> {
    let Some(o) = owner else { return Ok(()) };
    std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
        .map_err(|e| StorageError::io("set owner", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StorageError> {
    // Only called on what lstat just showed is not a symlink.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StorageError::io("set mode", path, e))
}

fn set_mtime(path: &Path, st: &std::fs::Metadata, ns: i64) -> Result<(), StorageError> {
    // The symlink variant never follows the last component; atime is kept.
    filetime::set_symlink_file_times(path, FileTime::from_last_access_time(st), mtime(ns))
        .map_err(|e| StorageError::io("set mtime", path, e))
}

fn changed(path: PathBuf, detail: &str) -> StorageError {
    StorageError::TargetChanged {
        path,
        detail: detail.to_string(),
    }
}
