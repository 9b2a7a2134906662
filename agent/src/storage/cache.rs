//! [`ManifestCache`]: what a host remembers about its trees between walks, so that a walk reads
//! only files that changed.
//!
//! Per tree (keyed by the path of its walk file) it keeps:
//! - the last walk, as an open, checked [`WalkFile`] (a manifest on disk with the files'
//!   [`Stamp`]s, read by position and never whole in memory), reopened only when the file on
//!   disk is another one (a restarted agent checks it once);
//! - the files installed since by this agent ([`ManifestCache::installed`]): copies whose
//!   SHA-256 was verified while they were staged, with the stamp they got when renamed into place.
//!   Without them the first walk after a sync read the whole new tree again (the benchmark's
//!   2 s "finalize" of a 3 GB tree).
//!
//! Nothing here is trusted blindly: the walk reuses a digest only for a file whose size, mode,
//! mtime and stamp are unchanged (see [`walk`](super::walk)), and `verify` walks without any
//! cache. Losing this state (an agent restart) only costs speed.
//!
//! Memory: per tree the walk file's sparse index (one path per
//! [`INDEX_EVERY`](super::walkfile::INDEX_EVERY) entries) and the entries of files installed
//! since the last walk, at most [`MAX_INSTALLED`]. A walk looks installed files up beside the
//! walk file ([`CacheView`]) instead of laying them over a copy of it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use super::error::StorageError;
use super::manifest::{Entry, Stamp};
use super::walk::{CacheView, Lookup, walk_to, walk_to_file};
use super::walkfile::{WalkFile, WalkWriter};

/// Most installed files remembered per tree between two walks (about 200 bytes each: 20 MiB at
/// most). Beyond it they are forgotten, which costs only speed: the next walk reads those files
/// again instead of trusting the digest verified while they were staged. A first sync of a tree
/// of more files than this therefore ends with a walk that reads the rest of the new tree.
pub const MAX_INSTALLED: usize = 100_000;

/// Identity of a walk file as written: a walk renames a new file into place, so the inode
/// changes with every walk.
type FileId = (u64, u64, u64, i64);

fn id_of(m: &std::fs::Metadata) -> FileId {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
    )
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| id_of(&m))
}

/// The files installed since the last saved walk, kept sorted by path with one entry per path
/// (the latest), so a walk looks them up in place ([`CacheView`]) instead of laying them over a
/// copy of the whole manifest.
type Installed = Arc<Vec<(Entry, Stamp)>>;

#[derive(Default)]
struct Slot {
    loaded: Option<(FileId, Arc<WalkFile>)>,
    /// Installed files handed to a walk that has not ended yet (sorted).
    pending: Option<Installed>,
    /// Installed files reported since (in arrival order).
    installed: Vec<(Entry, Stamp)>,
}

/// The last walks of this host's trees and the files installed since (see the module doc).
#[derive(Default)]
pub struct ManifestCache {
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

/// What a walk may use as its cache ([`WalkCache::view`]), and how to tell
/// [`ManifestCache`] which installed files it covered.
pub struct WalkCache {
    /// The last walk of the tree, if there is one.
    pub manifest: Option<Arc<WalkFile>>,
    /// The files installed since, sorted by path (empty when none).
    installed: Installed,
}

impl WalkCache {
    /// The view a walk looks digests up in (a forward read of the last walk).
    pub fn view(&self) -> CacheView<'_> {
        CacheView {
            base: self
                .manifest
                .as_deref()
                .map(|f| Box::new(f.cursor()) as Box<dyn Lookup + '_>),
            installed: &self.installed,
        }
    }
}

/// `files` sorted by path, keeping for each path the entry that came last.
fn sorted_latest(mut files: Vec<(Entry, Stamp)>) -> Vec<(Entry, Stamp)> {
    // Stable: among equal paths, arrival order stays; the later one is moved onto the kept one.
    files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    files.dedup_by(|later, kept| {
        if later.0.path == kept.0.path {
            std::mem::swap(later, kept);
            true
        } else {
            false
        }
    });
    files
}

impl ManifestCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_slot<T>(&self, path: &Path, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        f(slots.entry(path.to_path_buf()).or_default())
    }

    /// The walk file at `path` (opened and checked once for as long as it is the same file), or
    /// `None` when there is none or it is damaged. Blocking (it may read the file).
    pub fn walked(&self, path: &Path) -> Option<Arc<WalkFile>> {
        let id = file_id(path)?;
        let known = self.with_slot(path, |s| {
            s.loaded
                .as_ref()
                .filter(|(loaded, _)| *loaded == id)
                .map(|(_, m)| m.clone())
        });
        if known.is_some() {
            return known;
        }
        let m = match WalkFile::open(path) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "walk file not usable");
                return None;
            }
        };
        self.with_slot(path, |s| s.loaded = Some((id, m.clone())));
        Some(m)
    }

    /// The cache for the next walk of the tree whose walk file is `path`: the last walk and the
    /// files installed since (looked up in place, not laid over a copy). Blocking.
    pub fn for_walk(&self, path: &Path) -> WalkCache {
        let manifest = self.walked(path);
        let installed = self.with_slot(path, |s| {
            if !s.installed.is_empty() {
                let mut all = s
                    .pending
                    .take()
                    .map(|p| Arc::try_unwrap(p).unwrap_or_else(|shared| (*shared).clone()))
                    .unwrap_or_default();
                all.append(&mut s.installed);
                s.installed = Vec::new();
                s.pending = Some(Arc::new(sorted_latest(all)));
            }
            s.pending.clone().unwrap_or_default()
        });
        WalkCache {
            manifest,
            installed,
        }
    }

    /// Walks `root` into a new walk file at `path` (its folder must exist), with the last walk
    /// and the files installed since as its cache — or, when `full`, reading every file — and
    /// keeps it as the tree's last walk. When the walk file cannot be written (a full disk), the
    /// walk is made again into memory ([`WalkWriter::in_memory`]). Blocking.
    ///
    /// # Errors
    /// As [`walk_to_file`].
    pub fn walk(
        &self,
        path: &Path,
        root: &Path,
        full: bool,
        cancel: &CancellationToken,
    ) -> Result<Arc<WalkFile>, StorageError> {
        let used = self.for_walk(path);
        let view = || {
            if full {
                CacheView::default()
            } else {
                used.view()
            }
        };
        let walked = match walk_to_file(root, view(), cancel, path) {
            Err(e) if e.is_walk_file_write() => {
                // The tree is fine, this host's state folder is not (a full disk on the old
                // host is a reason to move): walk again into memory rather than fail the sync.
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the walk file cannot be written: walking again with the manifest in memory"
                );
                let now = super::walk::now_ns();
                walk_to(root, view(), cancel, now, WalkWriter::in_memory(now)?)?
            }
            other => other?,
        };
        let walked = Arc::new(walked);
        self.saved(path, &walked, &used);
        Ok(walked)
    }

    /// Keeps `m`, the walk just written to `path` with `used` as its cache; the installed files
    /// that walk saw are now in it.
    pub fn saved(&self, path: &Path, m: &Arc<WalkFile>, used: &WalkCache) {
        let id = m.metadata().ok().map(|meta| id_of(&meta));
        self.with_slot(path, |s| {
            s.loaded = id.map(|id| (id, m.clone()));
            // Covered by `m` unless another walk merged newer files into it meanwhile.
            if s.pending
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &used.installed))
            {
                s.pending = None;
            }
        });
    }

    /// Remembers files installed in the tree whose walk file is `path`: entries whose content
    /// was verified against their SHA-256, with the stamps they have in place.
    pub fn installed(&self, path: &Path, files: Vec<(Entry, Stamp)>) {
        if files.is_empty() {
            return;
        }
        self.with_slot(path, |s| {
            let held = s.installed.len() + s.pending.as_ref().map_or(0, |p| p.len());
            let room = MAX_INSTALLED.saturating_sub(held);
            if files.len() > room {
                tracing::debug!(
                    path = %path.display(),
                    forgotten = files.len() - room,
                    "installed files beyond MAX_INSTALLED: the next walk reads them again"
                );
            }
            s.installed.extend(files.into_iter().take(room));
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::storage::Manifest;
    use crate::storage::relpath::RelPath;
    use crate::storage::testutil::put;

    #[test]
    fn installed_files_are_trusted_by_the_next_walk_and_saved_with_it() {
        let t = tempfile::tempdir().unwrap();
        let (root, cache_file) = (t.path().join("tree"), t.path().join("tree.manifest"));
        let cancel = CancellationToken::new();
        put(&root, "a", b"alpha", 0o644, 1_600_000_000, 0);
        let cache = ManifestCache::new();
        assert!(cache.for_walk(&cache_file).manifest.is_none());
        let first = cache.walk(&cache_file, &root, false, &cancel).unwrap();
        assert!(
            Arc::ptr_eq(&cache.walked(&cache_file).unwrap(), &first),
            "kept open"
        );

        // "Installed" b: its entry claims a digest that is not its content, so a walk that
        // reports that digest provably did not read it.
        put(&root, "b", b"bravo", 0o644, 1_600_000_000, 0);
        let meta = std::fs::symlink_metadata(root.join("b")).unwrap();
        let b = Entry {
            path: RelPath::new("b").unwrap(),
            kind: crate::storage::Kind::File,
            size: 5,
            mode: 0o644,
            mtime_ns: 1_600_000_000_000_000_000,
            sha256: Some(hostshift_shared::digest::Sha256Digest::of(b"claimed")),
            owner: Some(crate::storage::walk::owner(&meta)),
        };
        cache.installed(
            &cache_file,
            vec![(b.clone(), Stamp::of(&meta, i64::MAX / 2))],
        );
        let second = cache.walk(&cache_file, &root, false, &cancel).unwrap();
        assert_eq!(second.cursor().find_entry(&b.path).unwrap().0, b);
        assert!(cache.with_slot(&cache_file, |s| s.installed.is_empty()
            && s.pending.is_none()));
        // Read back from the file (a restarted agent), the stamp still vouches for it.
        let reloaded = Manifest::load(&cache_file).unwrap();
        assert!(reloaded.get_stamped(&b.path).is_some());
        let fresh = ManifestCache::new();
        assert_eq!(
            fresh.walked(&cache_file).unwrap().summary().entries,
            second.summary().entries
        );

        // Touched since: read again.
        std::fs::write(root.join("b"), b"BRAVO").unwrap();
        filetime::set_file_mtime(
            root.join("b"),
            filetime::FileTime::from_unix_time(1_600_000_000, 0),
        )
        .unwrap();
        let third = cache.walk(&cache_file, &root, false, &cancel).unwrap();
        assert_eq!(
            third.cursor().find_entry(&b.path).unwrap().0.sha256,
            Some(hostshift_shared::digest::Sha256Digest::of(b"BRAVO"))
        );
        // The first walk's file, replaced on disk since, still reads as it was.
        assert_eq!(first.entries().count(), 1);
    }

    #[test]
    fn the_latest_install_of_a_path_wins_and_a_walk_is_not_given_a_copy_of_the_manifest() {
        let t = tempfile::tempdir().unwrap();
        let (root, cache_file) = (t.path().join("tree"), t.path().join("tree.manifest"));
        let cancel = CancellationToken::new();
        put(&root, "a", b"alpha", 0o644, 1_600_000_000, 0);
        let cache = ManifestCache::new();
        let first = cache.walk(&cache_file, &root, false, &cancel).unwrap();
        let meta = std::fs::symlink_metadata(root.join("a")).unwrap();
        let (entry, _) = first
            .cursor()
            .find_entry(&RelPath::new("a").unwrap())
            .unwrap();
        let claimed = |what: &[u8]| Entry {
            sha256: Some(hostshift_shared::digest::Sha256Digest::of(what)),
            ..entry.clone()
        };
        let stamp = Stamp::of(&meta, i64::MAX / 2);
        cache.installed(&cache_file, vec![(claimed(b"older"), stamp)]);
        let used = cache.for_walk(&cache_file);
        cache.installed(&cache_file, vec![(claimed(b"newer"), stamp)]);
        let used = {
            drop(used);
            cache.for_walk(&cache_file)
        };
        // The last walk itself, shared, not a merged copy of it.
        assert!(Arc::ptr_eq(used.manifest.as_ref().unwrap(), &first));
        let (found, _) = used.view().find(&entry.path).unwrap();
        assert_eq!(found, claimed(b"newer"));
        drop(used);
        let walked = cache.walk(&cache_file, &root, false, &cancel).unwrap();
        assert_eq!(
            walked.cursor().find_entry(&entry.path).unwrap().0,
            claimed(b"newer")
        );
    }

    #[test]
    fn a_walk_whose_file_cannot_be_written_keeps_it_in_memory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        put(&root, "a", b"alpha", 0o644, 1_600_000_000, 0);
        let cache_file = t.path().join("no-such-folder/tree.manifest");
        let cache = ManifestCache::new();
        let walked = cache
            .walk(&cache_file, &root, false, &CancellationToken::new())
            .unwrap();
        let (entry, _) = walked
            .cursor()
            .find_entry(&RelPath::new("a").unwrap())
            .unwrap();
        assert_eq!(
            entry.sha256,
            Some(hostshift_shared::digest::Sha256Digest::of(b"alpha"))
        );
        assert!(!t.path().join("no-such-folder").exists());
        // Not kept for the next walk, which simply reads the files again.
        assert!(cache.walked(&cache_file).is_none());
    }

    #[test]
    fn installed_files_beyond_the_limit_are_forgotten_not_held() {
        let t = tempfile::tempdir().unwrap();
        let cache_file = t.path().join("tree.manifest");
        let cache = ManifestCache::new();
        let e = |i: usize| {
            let meta = std::fs::symlink_metadata(t.path()).unwrap();
            let entry = Entry {
                path: RelPath::new(format!("f{i}")).unwrap(),
                kind: crate::storage::Kind::File,
                size: 0,
                mode: 0o644,
                mtime_ns: 0,
                sha256: Some(hostshift_shared::digest::Sha256Digest::of(b"")),
                owner: None,
            };
            (entry, Stamp::of(&meta, 0))
        };
        cache.installed(&cache_file, (0..MAX_INSTALLED - 1).map(e).collect());
        cache.installed(&cache_file, (0..3).map(|i| e(MAX_INSTALLED + i)).collect());
        assert_eq!(
            cache.with_slot(&cache_file, |s| s.installed.len()),
            MAX_INSTALLED
        );
        let used = cache.for_walk(&cache_file);
        assert_eq!(used.installed.len(), MAX_INSTALLED);
        cache.installed(&cache_file, vec![e(MAX_INSTALLED + 10)]);
        assert_eq!(cache.with_slot(&cache_file, |s| s.installed.len()), 0);
    }
}
