//! [`ManifestCache`]: what a host remembers about its trees between walks, so that a walk reads
//! only files that changed.
//!
//! Per tree (keyed by the path of its cache file) it keeps:
//! - the last manifest built, saved to the cache file ([`Manifest::save`], with the files'
//!   [`Stamp`]s) and kept decoded in memory for as long as that file is unchanged: a sync walks
//!   the target's tree several times in a row (plan, prepare, finalize), and decoding the cache
//!   each time cost as much as the walk;
//! - the files installed since by this agent ([`ManifestCache::installed`]): copies whose
//!   SHA-256 was verified while they were staged, with the stamp they got when renamed into place.
//!   Without them the first walk after a sync read the whole new tree again (the benchmark's
//!   2 s "finalize" of a 3 GB tree).
//!
//! Nothing here is trusted blindly: the walk reuses a digest only for a file whose size, mode,
//! mtime and stamp are unchanged (see [`walk`](super::walk)), and `verify` builds without any
//! cache. Losing this state (an agent restart) only costs speed.
//!
//! Memory: one decoded manifest per tree (about 200 bytes per entry plus the path) and the
//! entries of files installed since the last walk.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::error::StorageError;
use super::manifest::{Entry, Manifest, Stamp};

/// Identity of a cache file as written: a save renames a new file into place, so the inode
/// changes with every save.
type FileId = (u64, u64, u64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
    ))
}

#[derive(Default)]
struct Slot {
    loaded: Option<(FileId, Arc<Manifest>)>,
    installed: Vec<(Entry, Stamp)>,
}

/// The manifests of this host's trees and the files installed since (see the module doc).
#[derive(Default)]
pub struct ManifestCache {
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

/// What a walk may use as its cache, and how to tell [`ManifestCache::saved`] which installed
/// files it covered.
pub struct WalkCache {
    /// The cache (the saved manifest with the installed files laid over it), if there is any.
    pub manifest: Option<Arc<Manifest>>,
    covered: usize,
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

    /// The manifest saved at `path` (decoded once for as long as the file is unchanged), or
    /// `None` when there is none or it is damaged. Blocking (it may read the file).
    pub fn walked(&self, path: &Path) -> Option<Arc<Manifest>> {
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
        let m = match Manifest::load(path) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "manifest cache not usable");
                return None;
            }
        };
        self.with_slot(path, |s| s.loaded = Some((id, m.clone())));
        Some(m)
    }

    /// The cache for the next walk of the tree whose cache file is `path`: the saved manifest
    /// with the files installed since laid over it. Blocking.
    pub fn for_walk(&self, path: &Path) -> WalkCache {
        let walked = self.walked(path);
        // Laid over under the lock rather than copied out first: the installed files of a
        // first sync are one entry per file of the tree.
        let (manifest, covered) = self.with_slot(path, |s| {
            if s.installed.is_empty() {
                (walked, 0)
            } else {
                let empty = Manifest::default();
                let base = walked.as_deref().unwrap_or(&empty);
                (
                    Some(Arc::new(base.with_files(&s.installed))),
                    s.installed.len(),
                )
            }
        });
        WalkCache { manifest, covered }
    }

    /// Saves `m`, the manifest a walk built with `used` as its cache, to `path` and keeps it
    /// decoded; the installed files that walk saw are now in it. Blocking.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the file cannot be written (only speed is lost).
    pub fn saved(
        &self,
        path: &Path,
        m: &Arc<Manifest>,
        used: WalkCache,
    ) -> Result<(), StorageError> {
        m.save(path)?;
        let id = file_id(path);
        self.with_slot(path, |s| {
            s.loaded = id.map(|id| (id, m.clone()));
            let covered = used.covered.min(s.installed.len());
            s.installed.drain(..covered);
        });
        Ok(())
    }

    /// Remembers files installed in the tree whose cache file is `path`: entries whose content
    /// was verified against their SHA-256, with the stamps they have in place.
    pub fn installed(&self, path: &Path, files: Vec<(Entry, Stamp)>) {
        if files.is_empty() {
            return;
        }
        self.with_slot(path, |s| s.installed.extend(files));
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::storage::relpath::RelPath;
    use crate::storage::testutil::put;
    use crate::storage::walk::build;

    #[test]
    fn installed_files_are_trusted_by_the_next_walk_and_saved_with_it() {
        let t = tempfile::tempdir().unwrap();
        let (root, cache_file) = (t.path().join("tree"), t.path().join("tree.manifest"));
        put(&root, "a", b"alpha", 0o644, 1_600_000_000, 0);
        let cache = ManifestCache::new();
        let used = cache.for_walk(&cache_file);
        assert!(used.manifest.is_none());
        let first = Arc::new(build(&root, None, &CancellationToken::new()).unwrap());
        cache.saved(&cache_file, &first, used).unwrap();
        assert!(
            Arc::ptr_eq(&cache.walked(&cache_file).unwrap(), &first),
            "kept decoded"
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
        let used = cache.for_walk(&cache_file);
        let second =
            Arc::new(build(&root, used.manifest.as_deref(), &CancellationToken::new()).unwrap());
        assert_eq!(second.get(&b.path), Some(&b));
        cache.saved(&cache_file, &second, used).unwrap();
        assert!(cache.with_slot(&cache_file, |s| s.installed.is_empty()));
        // Read back from the file (a restarted agent), the stamp still vouches for it.
        let reloaded = Manifest::load(&cache_file).unwrap();
        assert!(reloaded.get_stamped(&b.path).is_some());

        // Touched since: read again.
        std::fs::write(root.join("b"), b"BRAVO").unwrap();
        filetime::set_file_mtime(
            root.join("b"),
            filetime::FileTime::from_unix_time(1_600_000_000, 0),
        )
        .unwrap();
        let used = cache.for_walk(&cache_file);
        let third = build(&root, used.manifest.as_deref(), &CancellationToken::new()).unwrap();
        assert_eq!(
            third.get(&b.path).unwrap().sha256,
            Some(hostshift_shared::digest::Sha256Digest::of(b"BRAVO"))
        );
    }
}
