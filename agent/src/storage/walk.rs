//! [`build`]: walking a tree to make its [`Manifest`].
//!
//! The walk never follows a symlink and skips the agent's staging directories; an entry removed
//! while the walk runs (a live host's temporary upload) is left out. It refuses what
//! cannot be copied faithfully and safely — device files, FIFOs, sockets, and symlinks whose
//! target is absolute or climbs out of the tree — with an error naming the path, because a copy
//! that silently skipped them would not be the same tree. Set-user/group-id bits of files are not
//! recorded (nor ever recreated): a storage tree holds user artifacts, and an agent that may run as
//! root must not make set-id files from data received over the network.
//!
//! Digests are computed streaming, [`READ_BUFFER`] at a time; a file that changes while it is
//! read is read again (a few times, then [`StorageError::ChangedWhileReading`]). Each digest is
//! recorded with the file's [`Stamp`] (device, inode, ctime). With a `cache` (an earlier manifest
//! of the same tree, with its stamps) a file whose size, mtime and mode are unchanged *and* whose
//! stamp is unchanged keeps its cached digest without being read — rsync's quick check made
//! stricter, which is what makes a second sync of a large tree fast — unless its mtime was within
//! [`RACY_MARGIN_NS`] of when that digest was computed (a second write in the same clock tick
//! would not have moved it). Because ctime cannot be set by a program, content rewritten with the
//! same size and the mtime put back (`touch -r`, some restore tools) is noticed too; what is not
//! is such a rewrite made within the same clock tick as the file's previous change. A cache
//! without stamps (written by an older agent) is not trusted: its files are read again once.
//! [`build_full`] reads every byte; `verify` uses it so that a single flipped byte is caught.

use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hostshift_shared::digest::{Sha256Digest, StreamHasher};
use tokio_util::sync::CancellationToken;

use super::error::StorageError;
use super::manifest::{Entry, Kind, Manifest, Stamp, link_target_problem};
use super::relpath::{RelPath, is_staging_name};

/// Size of the buffer files are read through when digesting (one per walk thread).
pub const READ_BUFFER: usize = 1024 * 1024;
/// A cached digest is reused only for a file whose mtime is at least this much older than the
/// walk that computed it: a file written again within the same clock tick as it was digested
/// would otherwise keep its old mtime and its stale digest for good (git's "racily clean" case).
/// `pack` applies the same margin to ctime before it trusts a digest without reading.
pub const RACY_MARGIN_NS: i64 = 2_000_000_000;
/// How often a file that keeps changing while it is digested is read again before giving up.
const DIGEST_ATTEMPTS: usize = 3;

/// Walks `root` and digests every file, reusing `cache`'s digest for a file whose size, mtime,
/// mode and [`Stamp`] are unchanged. Blocking: run it in `spawn_blocking`.
///
/// # Errors
/// [`StorageError::NotPortable`] naming a device file, FIFO, socket, or symlink with an
/// absolute or escaping target; [`StorageError::ChangedWhileReading`] for a file that kept
/// changing while it was digested; [`StorageError::Cancelled`]; [`StorageError::Io`].
pub fn build(
    root: &Path,
    cache: Option<&Manifest>,
    cancel: &CancellationToken,
) -> Result<Manifest, StorageError> {
    build_with(
        root,
        CacheView {
            base: cache,
            installed: &[],
        },
        cancel,
    )
}

/// What a walk looks cached digests up in: a saved manifest and, laid over it, the files this
/// agent installed since (sorted by path, one entry per path). Looked up in place: laying the
/// installed files over a copy of the manifest first cost a whole copy of it (and a map of
/// every path) at each walk after a sync.
#[derive(Clone, Copy, Default)]
pub struct CacheView<'a> {
    /// The manifest saved by the last walk, with its stamps.
    pub base: Option<&'a Manifest>,
    /// Files installed since, sorted by path, each path once.
    pub installed: &'a [(Entry, Stamp)],
}

impl<'a> CacheView<'a> {
    /// The cached entry for `path` and its stamp: an installed file's first, else the base's.
    pub fn get_stamped(&self, path: &RelPath) -> Option<(&'a Entry, Stamp)> {
        match self.installed.binary_search_by(|(e, _)| e.path.cmp(path)) {
            Ok(i) => Some((&self.installed[i].0, self.installed[i].1)),
            Err(_) => self.base?.get_stamped(path),
        }
    }

    /// True when there is anything to look up.
    pub fn is_some(&self) -> bool {
        self.base.is_some() || !self.installed.is_empty()
    }
}

/// [`build`] with a [`CacheView`] (a saved manifest and the files installed since).
///
/// # Errors
/// As [`build`].
pub fn build_with(
    root: &Path,
    cache: CacheView<'_>,
    cancel: &CancellationToken,
) -> Result<Manifest, StorageError> {
    let walk = Walk {
        root,
        cache,
        cancel,
        walked_at_ns: now_ns(),
        queue: Mutex::new(Queue {
            dirs: vec![None],
            busy: 0,
            failed: false,
        }),
        ready: Condvar::new(),
    };
    let mut entries = Vec::new();
    let mut failure = None;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WALK_THREADS).map(|_| s.spawn(|| walk.work())).collect();
        for w in workers {
            match w
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            {
                Ok(mut part) => entries.append(&mut part),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(Manifest::from_walk(entries, walk.walked_at_ns)),
    }
}

/// Threads that walk a tree together, taking directories from a shared queue: on a first sync
/// the walk digests every byte (CPU-bound), on a later one it `stat`s every file (system-call
/// bound); either way two threads nearly halve it on a 2-core host. Each holds a
/// [`READ_BUFFER`].
pub const WALK_THREADS: usize = 2;

/// One walk: what its threads share.
struct Walk<'a> {
    root: &'a Path,
    cache: CacheView<'a>,
    cancel: &'a CancellationToken,
    walked_at_ns: i64,
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Directories still to list (`None` is the root), how many are being listed, and whether a
/// thread failed (the others then stop).
struct Queue {
    dirs: Vec<Option<RelPath>>,
    busy: usize,
    failed: bool,
}

impl Walk<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One thread's share: directories until none is left and none is being listed.
    fn work(&self) -> Result<Vec<(Entry, Option<Stamp>)>, StorageError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; READ_BUFFER];
        let mut found = Vec::new();
        loop {
            let dir = {
                let mut q = self.lock();
                loop {
                    if q.failed {
                        return Ok(out);
                    }
                    if let Some(d) = q.dirs.pop() {
                        q.busy += 1;
                        break d;
                    }
                    if q.busy == 0 {
                        return Ok(out);
                    }
                    q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let listed = self.list(dir.as_ref(), &mut buf, &mut out, &mut found);
            {
                let mut q = self.lock();
                q.dirs.append(&mut found);
                q.busy -= 1;
                q.failed |= listed.is_err();
            }
            self.ready.notify_all();
            listed?;
        }
    }

    /// The entries of one directory into `out`, its subdirectories into `found`.
    fn list(
        &self,
        dir: Option<&RelPath>,
        buf: &mut [u8],
        out: &mut Vec<(Entry, Option<Stamp>)>,
        found: &mut Vec<Option<RelPath>>,
    ) -> Result<(), StorageError> {
        let root = self.root;
        let dir_path = dir.map_or_else(|| root.to_path_buf(), |d| root.join(d.as_path()));
        let listing = match std::fs::read_dir(&dir_path) {
            Ok(l) => l,
            // Removed since it was listed: on a live host, it is simply no longer in the tree.
            Err(e) if dir.is_some() && e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("list", &dir_path, e)),
        };
        for de in listing {
            if self.cancel.is_cancelled() {
                return Err(StorageError::Cancelled {
                    path: root.to_path_buf(),
                });
            }
            let de = de.map_err(|e| StorageError::io("list", &dir_path, e))?;
            let name = de.file_name();
            let rel = match dir {
                None if is_staging_name(name.as_bytes()) => continue,
                None => RelPath::new(&name)?,
                Some(d) => d.child(&name)?,
            };
            match visit(
                root,
                rel,
                &de,
                self.cache,
                self.walked_at_ns,
                buf,
                self.cancel,
            ) {
                Ok(entry) => {
                    if entry.0.kind == Kind::Dir {
                        found.push(Some(entry.0.path.clone()));
                    }
                    out.push(entry);
                }
                Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The entry for one directory entry, with a file's stamp (`Io` `NotFound` when it vanished
/// meanwhile).
fn visit(
    root: &Path,
    rel: RelPath,
    de: &std::fs::DirEntry,
    cache: CacheView<'_>,
    walked_at_ns: i64,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<(Entry, Option<Stamp>), StorageError> {
    let full = root.join(rel.as_path());
    let meta = de
        .metadata()
        .map_err(|e| StorageError::io("inspect", &full, e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        Ok((plain(rel, Kind::Dir, &meta), None))
    } else if ft.is_symlink() {
        let target =
            std::fs::read_link(&full).map_err(|e| StorageError::io("read link", &full, e))?;
        if let Some(reason) = link_target_problem(&rel, &target) {
            return Err(StorageError::NotPortable {
                path: full,
                reason: format!("{reason} ({})", target.display()),
            });
        }
        Ok((plain(rel, Kind::Symlink { target }, &meta), None))
    } else if ft.is_file() {
        file_entry(rel, &full, &meta, cache, walked_at_ns, buf, cancel)
    } else {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device file"
        };
        Err(StorageError::NotPortable {
            path: full,
            reason: format!(
                "is {what}; a storage tree may hold only files, directories and symlinks"
            ),
        })
    }
}

/// Wall-clock time in ns since the epoch (0 when the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// [`build`] without a cache: every file is read and digested.
///
/// # Errors
/// As [`build`].
pub fn build_full(root: &Path, cancel: &CancellationToken) -> Result<Manifest, StorageError> {
    build(root, None, cancel)
}

/// Modification time of `meta` in nanoseconds since the epoch.
pub fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// The permission bits recorded for a file (set-id bits dropped).
pub fn file_mode(meta: &Metadata) -> u32 {
    meta.mode() & 0o1777
}

fn plain(path: RelPath, kind: Kind, meta: &Metadata) -> Entry {
    let mode = if matches!(kind, Kind::Symlink { .. }) {
        0o777
    } else {
        meta.mode() & 0o7777
    };
    Entry {
        path,
        kind,
        size: 0,
        mode,
        mtime_ns: mtime_ns(meta),
        sha256: None,
        owner: Some(owner(meta)),
    }
}

/// The owner and group of what `meta` describes.
pub fn owner(meta: &Metadata) -> super::manifest::Owner {
    super::manifest::Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

fn file_entry(
    path: RelPath,
    full: &Path,
    meta: &Metadata,
    cache: CacheView<'_>,
    walked_at_ns: i64,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<(Entry, Option<Stamp>), StorageError> {
    let (size, mode, mtime) = (meta.len(), file_mode(meta), mtime_ns(meta));
    if let Some((cached, stamp)) = cache.get_stamped(&path)
        && cached.is_file()
        && (cached.size, cached.mode, cached.mtime_ns) == (size, mode, mtime)
        && cached.owner == Some(owner(meta))
        && stamp.same_file(meta)
        && mtime < stamp.checked_at_ns.saturating_sub(RACY_MARGIN_NS)
    {
        let entry = Entry {
            path,
            ..cached.clone()
        };
        return Ok((entry, Some(stamp)));
    }
    let mut last = String::new();
    for _ in 0..DIGEST_ATTEMPTS {
        match digest_stable(full, buf, cancel)? {
            Ok((digest, meta, stamp_ok)) => {
                let entry = Entry {
                    path,
                    kind: Kind::File,
                    size: meta.len(),
                    mode: file_mode(&meta),
                    mtime_ns: mtime_ns(&meta),
                    sha256: Some(digest),
                    owner: Some(owner(&meta)),
                };
                // Checked at the walk's start: earlier than the read, so the racy margin errs
                // on the safe side.
                let stamp = stamp_ok.then(|| Stamp::of(&meta, walked_at_ns));
                return Ok((entry, stamp));
            }
            Err(moved) => last = moved.to_string(),
        }
    }
    Err(StorageError::ChangedWhileReading {
        path: full.to_path_buf(),
        detail: last,
    })
}

/// Opens a regular file without following a symlink and without blocking on a FIFO swapped in
/// after the walk saw a file.
///
/// # Errors
/// [`StorageError::Io`] when it cannot be opened; [`StorageError::ChangedWhileReading`] when it
/// is no longer a regular file.
pub fn open_regular(full: &Path) -> Result<(File, Metadata), StorageError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(full)
        .map_err(|e| StorageError::io("open", full, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StorageError::io("inspect", full, e))?;
    if !meta.is_file() {
        return Err(StorageError::ChangedWhileReading {
            path: full.to_path_buf(),
            detail: "it is no longer a regular file".into(),
        });
    }
    Ok((file, meta))
}

/// A file that changed while it was read: its size when opened, the bytes read, its size after,
/// and whether its mtime moved. Not an error of the walk: the read is tried again.
#[derive(Debug, thiserror::Error)]
#[error("size {opened} when opened, {read} read, {after} after; mtime moved: {mtime_moved}")]
struct Moved {
    opened: u64,
    read: u64,
    after: u64,
    mtime_moved: bool,
}

/// Digest of a file, its metadata, and whether its stamp held still while it was read (inner
/// `Err` says what changed when the content did).
fn digest_stable(
    full: &Path,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<Result<(Sha256Digest, Metadata, bool), Moved>, StorageError> {
    let (mut file, before) = open_regular(full)?;
    let mut hasher = StreamHasher::new();
    loop {
        if cancel.is_cancelled() {
            return Err(StorageError::Cancelled {
                path: full.to_path_buf(),
            });
        }
        let n = match file.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StorageError::io("read", full, e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let after = file
        .metadata()
        .map_err(|e| StorageError::io("inspect", full, e))?;
    let (len, digest) = hasher.finish();
    if len != before.len() || after.len() != before.len() || mtime_ns(&after) != mtime_ns(&before) {
        return Ok(Err(Moved {
            opened: before.len(),
            read: len,
            after: after.len(),
            mtime_moved: mtime_ns(&after) != mtime_ns(&before),
        }));
    }
    let stamp_ok = Stamp::of(&before, 0).same_file(&after);
    Ok(Ok((digest, after, stamp_ok)))
}

#[cfg(test)]
mod tests {
    use filetime::FileTime;

    use super::*;
    use crate::storage::testutil::{link, manifest, put};

    fn names(m: &Manifest) -> Vec<String> {
        m.entries().iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn lists_files_dirs_and_relative_symlinks_in_path_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, "a.txt", b"alpha", 0o644, 1_700_000_000, 123_456_789);
        put(root, "dir/b.bin", &[7u8; 3000], 0o640, 1_700_000_001, 0);
        std::fs::create_dir(root.join("dir/empty")).unwrap();
        link(root, "dir/to-a", "../a.txt");
        put(root, ".hostshift-staging-7/half-written", b"x", 0o600, 0, 0);

        let m = manifest(root);
        assert_eq!(
            names(&m),
            ["a.txt", "dir", "dir/b.bin", "dir/empty", "dir/to-a"]
        );
        let a = &m.entries()[0];
        assert_eq!((a.kind.clone(), a.size, a.mode), (Kind::File, 5, 0o644));
        assert_eq!(a.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(a.sha256, Some(Sha256Digest::of(b"alpha")));
        let b = m.get(&RelPath::new("dir/b.bin").unwrap()).unwrap();
        assert_eq!((b.size, b.mode), (3000, 0o640));
        assert_eq!(b.sha256, Some(Sha256Digest::of(&[7u8; 3000])));
        let l = m.get(&RelPath::new("dir/to-a").unwrap()).unwrap();
        assert_eq!(
            l.kind,
            Kind::Symlink {
                target: "../a.txt".into()
            }
        );
        assert_eq!((l.size, l.sha256), (0, None));
        assert_eq!(
            m.get(&RelPath::new("dir").unwrap()).unwrap().kind,
            Kind::Dir
        );
        assert_eq!(m.file_bytes(), 3005);
    }

    #[test]
    fn refuses_fifos_sockets_and_symlinks_that_leave_the_tree_naming_them() {
        type Make = fn(&Path);
        let cases: [(&str, Make); 5] = [
            ("fifo", |r| {
                nix::unistd::mkfifo(&r.join("d/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap()
            }),
            ("sock", |r| {
                drop(std::os::unix::net::UnixListener::bind(r.join("d/sock")).unwrap())
            }),
            ("abs", |r| link(r, "d/abs", "/etc/passwd")),
            ("up", |r| link(r, "d/up", "../../outside")),
            ("sneaky", |r| link(r, "d/sneaky", "sub/../../..")),
        ];
        for (name, make) in cases {
            let t = tempfile::tempdir().unwrap();
            std::fs::create_dir(t.path().join("d")).unwrap();
            make(t.path());
            let err = build_full(t.path(), &CancellationToken::new()).unwrap_err();
            assert!(
                matches!(&err, StorageError::NotPortable { path, .. }
                    if path.ends_with(format!("d/{name}"))),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn cache_reuses_digests_of_untouched_files_and_notices_a_rewrite_with_the_mtime_put_back() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, "same-meta", b"hello", 0o644, 1_600_000_000, 5);
        put(root, "touched", b"one", 0o644, 1_600_000_000, 0);
        put(root, "untouched", b"keep", 0o644, 1_600_000_000, 0);
        let first = manifest(root);
        let path = |p: &str| RelPath::new(p).unwrap();

        // An untouched file keeps its digest without being read: prove it by handing the walk a
        // cache whose digest for it is wrong (same size, mtime, mode and stamp).
        let (kept, stamp) = first.get_stamped(&path("untouched")).unwrap();
        let planted = Entry {
            sha256: Some(Sha256Digest::of(b"KEEP")),
            ..kept.clone()
        };
        let doctored = first.with_files(&[(planted, stamp)]);
        let reused = build(root, Some(&doctored), &CancellationToken::new()).unwrap();
        assert_eq!(
            reused.get(&path("untouched")).unwrap().sha256,
            Some(Sha256Digest::of(b"KEEP"))
        );

        // Same size, mtime put back: the ctime in the stamp moved, so it is read again.
        put(root, "same-meta", b"jello", 0o644, 1_600_000_000, 5);
        // Same size, new mtime: digested again.
        put(root, "touched", b"two", 0o644, 1_600_000_100, 0);
        let cached = build(root, Some(&first), &CancellationToken::new()).unwrap();
        assert_eq!(
            cached.get(&path("same-meta")).unwrap().sha256,
            Some(Sha256Digest::of(b"jello"))
        );
        assert_eq!(
            cached.get(&path("touched")).unwrap().sha256,
            Some(Sha256Digest::of(b"two"))
        );
        // A cache without stamps (an older agent's) is not trusted.
        let unstamped = Manifest::new(first.entries().to_vec()).unwrap();
        let again = build(root, Some(&unstamped), &CancellationToken::new()).unwrap();
        assert_eq!(
            again.get(&path("same-meta")).unwrap().sha256,
            Some(Sha256Digest::of(b"jello"))
        );

        let full = build_full(root, &CancellationToken::new()).unwrap();
        assert_eq!(
            full.get(&path("same-meta")).unwrap().sha256,
            Some(Sha256Digest::of(b"jello"))
        );
        // A mode change alone also defeats the cache.
        std::fs::set_permissions(
            root.join("same-meta"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        filetime::set_file_mtime(
            root.join("same-meta"),
            FileTime::from_unix_time(1_600_000_000, 5),
        )
        .unwrap();
        let again = build(root, Some(&first), &CancellationToken::new()).unwrap();
        assert_eq!(
            again.get(&path("same-meta")).unwrap().sha256,
            Some(Sha256Digest::of(b"jello"))
        );
    }

    #[test]
    fn a_file_modified_just_before_the_cached_walk_is_digested_again() {
        let t = tempfile::tempdir().unwrap();
        let now = FileTime::now();
        let (secs, nanos) = (now.unix_seconds(), now.nanoseconds());
        put(t.path(), "fresh", b"first", 0o644, secs, nanos);
        let first = manifest(t.path());
        assert!(first.walked_at_ns() > 0);
        // Rewritten within the same clock tick: size, mode and mtime all match the cache.
        put(t.path(), "fresh", b"again", 0o644, secs, nanos);
        let cached = build(t.path(), Some(&first), &CancellationToken::new()).unwrap();
        assert_eq!(cached.entries()[0].sha256, Some(Sha256Digest::of(b"again")));
    }

    #[test]
    fn set_id_bits_of_files_are_not_recorded() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "tool", b"#!", 0o4755, 0, 0);
        assert_eq!(manifest(t.path()).entries()[0].mode, 0o755);
    }

    #[test]
    fn a_cancelled_walk_stops_with_cancelled() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "f", b"x", 0o644, 0, 0);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(matches!(
            build_full(t.path(), &cancel),
            Err(StorageError::Cancelled { .. })
        ));
    }
}
