//! Walking a tree to make its manifest: [`walk_to_file`] into a walk file (an agent's own
//! trees, never whole in memory), [`build`] into an in-memory [`Manifest`] (backups, tests).
//!
//! One thread lists the tree depth-first with each directory's names sorted, which yields the
//! manifest's path order directly, so the last walk is read alongside as a forward cursor and the
//! new one written out sequentially; [`WALK_THREADS`] threads `lstat` and digest in between (see
//! `walk_into`). Memory grows with the tree's depth and its largest directory, not its size.
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
//! without stamps, or a walk file of another form (an older agent's), is not trusted: its files
//! are read again once.
//! [`build_full`] reads every byte; `verify` uses it so that a single flipped byte is caught.

use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hostshift_shared::digest::{Sha256Digest, StreamHasher};
use tokio_util::sync::CancellationToken;

use super::error::StorageError;
use super::manifest::{Entry, Kind, Manifest, Stamp, link_target_problem};
use super::relpath::{RelPath, is_staging_name};
use super::walkfile::{Cursor, WalkFile, WalkWriter};

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
/// mode and [`Stamp`] are unchanged. Blocking: run it in `spawn_blocking`. The manifest is built
/// in memory: an agent's own trees go to a walk file instead ([`walk_to_file`]).
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
    build_with(root, CacheView::of(cache), cancel)
}

/// Where a walk looks up what an earlier walk knew of a path: the entry and the stamp of the
/// file its digest was computed from. Asked in increasing path order.
pub trait Lookup {
    /// The entry for `path` with its stamp, when one is known.
    fn find(&mut self, path: &RelPath) -> Option<(Entry, Stamp)>;
}

impl Lookup for &Manifest {
    fn find(&mut self, path: &RelPath) -> Option<(Entry, Stamp)> {
        self.get_stamped(path).map(|(e, s)| (e.clone(), s))
    }
}

impl Lookup for Cursor<'_> {
    fn find(&mut self, path: &RelPath) -> Option<(Entry, Stamp)> {
        let (e, stamp) = self.find_entry(path)?;
        Some((e, stamp?))
    }
}

/// What a walk looks cached digests up in: the last walk of the tree (a [`Lookup`]) and, laid
/// over it, the files this agent installed since (sorted by path, one entry per path). Looked up
/// in place: laying the installed files over a copy of the manifest first cost a whole copy of
/// it (and a map of every path) at each walk after a sync.
#[derive(Default)]
pub struct CacheView<'a> {
    /// The last walk of the tree, with its stamps.
    pub base: Option<Box<dyn Lookup + 'a>>,
    /// Files installed since, sorted by path, each path once.
    pub installed: &'a [(Entry, Stamp)],
}

impl<'a> CacheView<'a> {
    /// A view of an in-memory manifest alone (or of nothing).
    pub fn of(m: Option<&'a Manifest>) -> Self {
        Self {
            base: m.map(|m| Box::new(m) as Box<dyn Lookup + 'a>),
            installed: &[],
        }
    }

    /// The cached entry for `path` and its stamp: an installed file's first, else the base's.
    pub fn find(&mut self, path: &RelPath) -> Option<(Entry, Stamp)> {
        match self.installed.binary_search_by(|(e, _)| e.path.cmp(path)) {
            Ok(i) => Some(self.installed[i].clone()),
            Err(_) => self.base.as_mut()?.find(path),
        }
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
    let walked_at_ns = now_ns();
    let mut entries = Vec::new();
    walk_into(root, cache, cancel, walked_at_ns, &mut |e, s| {
        entries.push((e, s));
        Ok(())
    })?;
    Ok(Manifest::from_walk(entries, walked_at_ns))
}

/// [`build_with`] into a walk file at `path` (see [`walkfile`](super::walkfile)), returned open:
/// the manifest is never whole in memory.
///
/// # Errors
/// As [`build`]; [`StorageError::Io`] writing the file
/// ([`StorageError::is_walk_file_write`]).
pub fn walk_to_file(
    root: &Path,
    cache: CacheView<'_>,
    cancel: &CancellationToken,
    path: &Path,
) -> Result<WalkFile, StorageError> {
    let walked_at_ns = now_ns();
    walk_to(
        root,
        cache,
        cancel,
        walked_at_ns,
        WalkWriter::create(path, walked_at_ns)?,
    )
}

/// [`walk_to_file`] into a given writer (started at `walked_at_ns`).
///
/// # Errors
/// As [`walk_to_file`].
pub fn walk_to(
    root: &Path,
    cache: CacheView<'_>,
    cancel: &CancellationToken,
    walked_at_ns: i64,
    mut w: WalkWriter,
) -> Result<WalkFile, StorageError> {
    walk_into(root, cache, cancel, walked_at_ns, &mut |e, s| w.push(&e, s))?;
    w.finish()
}

/// Threads that read and digest files while one thread lists the tree: on a first sync the
/// walk digests every byte (CPU-bound), on a later one it `stat`s every file (system-call
/// bound); either way two threads nearly halve it on a 2-core host. Each holds a
/// [`READ_BUFFER`].
pub const WALK_THREADS: usize = 2;
/// Entries handed to a digesting thread at once.
const BATCH: usize = 64;
/// Batches listed ahead of the one being written: with [`BATCH`], what bounds a walk's memory.
const WINDOW: usize = 16;

/// What the lister hands on: an entry it made itself (a directory, from the same `lstat` that
/// decided to list it), or a directory entry for a digesting thread to inspect.
enum Item {
    Ready(Entry, Option<Stamp>),
    Visit {
        rel: RelPath,
        de: std::fs::DirEntry,
        cached: Option<(Entry, Stamp)>,
    },
}

type Done = Result<Vec<(Entry, Option<Stamp>)>, StorageError>;

struct Job {
    items: Vec<Item>,
    reply: SyncSender<Done>,
}

/// The walk itself: `sink` gets every entry of the tree in path order (each directory before
/// its contents), with its stamp.
///
/// One thread lists the tree depth-first, each directory's names sorted — which is path order —
/// looking each file up in `cache` as it goes (a forward read of the last walk), and hands the
/// entries in batches to [`WALK_THREADS`] threads that `lstat` and, where the cache cannot
/// vouch for a file, digest it; a writer takes the batches back in order. At most [`WINDOW`]
/// batches are in flight, so memory does not grow with the tree (only with its depth and its
/// largest directory).
fn walk_into(
    root: &Path,
    mut cache: CacheView<'_>,
    cancel: &CancellationToken,
    walked_at_ns: i64,
    sink: &mut (dyn FnMut(Entry, Option<Stamp>) -> Result<(), StorageError> + Send),
) -> Result<(), StorageError> {
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Mutex::new(job_rx);
    let (order_tx, order_rx) = mpsc::sync_channel::<Receiver<Done>>(WINDOW);
    std::thread::scope(|s| {
        for _ in 0..WALK_THREADS {
            s.spawn(|| {
                let mut buf = vec![0u8; READ_BUFFER];
                loop {
                    let job = job_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    let done = if stop.load(Ordering::Relaxed) {
                        Ok(Vec::new())
                    } else {
                        inspect(root, job.items, walked_at_ns, &mut buf, cancel)
                    };
                    // The writer gone means the walk failed already.
                    let _ = job.reply.send(done);
                }
            });
        }
        let writer = s.spawn(|| {
            let written = (|| {
                for reply in order_rx {
                    let batch = reply.recv().map_err(|_| StorageError::Cancelled {
                        path: root.to_path_buf(),
                    })??;
                    for (e, stamp) in batch {
                        sink(e, stamp)?;
                    }
                }
                Ok(())
            })();
            if written.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            written
        });
        let listed = list_tree(root, &mut cache, cancel, &mut |items| {
            let (reply, done) = mpsc::sync_channel(1);
            order_tx.send(done).map_err(|_| None)?;
            job_tx.send(Job { items, reply }).map_err(|_| None)?;
            Ok(())
        });
        drop(order_tx);
        drop(job_tx);
        if listed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match listed {
            // The lister's own error; `None`: it stopped because the writer did.
            Err(Some(e)) => Err(e),
            Err(None) | Ok(()) => written,
        }
    })
}

/// Lists the tree depth-first in path order, handing [`Item`]s on in batches. `Err(None)`: the
/// receiving end is gone.
fn list_tree(
    root: &Path,
    cache: &mut CacheView<'_>,
    cancel: &CancellationToken,
    dispatch: &mut dyn FnMut(Vec<Item>) -> Result<(), Option<StorageError>>,
) -> Result<(), Option<StorageError>> {
    // Each level: its path (`None`: the root) and its entries not handed on yet, sorted so
    // that the next one is last.
    let mut stack: Vec<(Option<RelPath>, Vec<std::fs::DirEntry>)> =
        vec![(None, list_dir(root, None)?)];
    let mut batch = Vec::with_capacity(BATCH);
    while let Some((dir, names)) = stack.last_mut() {
        if cancel.is_cancelled() {
            return Err(Some(StorageError::Cancelled {
                path: root.to_path_buf(),
            }));
        }
        let Some(de) = names.pop() else {
            stack.pop();
            continue;
        };
        let name = de.file_name();
        let rel = match dir {
            None => RelPath::new(&name)?,
            Some(d) => d.child(&name)?,
        };
        let is_dir = match de.file_type() {
            Ok(ft) => ft.is_dir(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Some(StorageError::io(
                    "inspect",
                    root.join(rel.as_path()),
                    e,
                )));
            }
        };
        let meta = if is_dir {
            match de.metadata() {
                Ok(m) => Some(m),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Some(StorageError::io(
                        "inspect",
                        root.join(rel.as_path()),
                        e,
                    )));
                }
            }
        } else {
            None
        };
        match meta {
            Some(meta) if meta.is_dir() => {
                batch.push(Item::Ready(plain(rel.clone(), Kind::Dir, &meta), None));
                let listing = list_dir(root, Some(&rel))?;
                stack.push((Some(rel), listing));
            }
            _ => {
                let cached = cache.find(&rel);
                batch.push(Item::Visit { rel, de, cached });
            }
        }
        if batch.len() >= BATCH {
            dispatch(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
        }
    }
    if !batch.is_empty() {
        dispatch(batch)?;
    }
    Ok(())
}

/// The entries of one directory (of the root: without the agent's staging folders), sorted by
/// name with the first last; empty when it vanished (or stopped being a directory) meanwhile.
fn list_dir(root: &Path, dir: Option<&RelPath>) -> Result<Vec<std::fs::DirEntry>, StorageError> {
    let dir_path = dir.map_or_else(|| root.to_path_buf(), |d| root.join(d.as_path()));
    let listing = match std::fs::read_dir(&dir_path) {
        Ok(l) => l,
        // Removed since it was listed: on a live host, it is simply no longer in the tree.
        Err(e)
            if dir.is_some()
                && (e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(StorageError::io("list", &dir_path, e)),
    };
    let mut entries = Vec::new();
    for de in listing {
        let de = de.map_err(|e| StorageError::io("list", &dir_path, e))?;
        if dir.is_none() && is_staging_name(de.file_name().as_bytes()) {
            continue;
        }
        entries.push(de);
    }
    entries.sort_unstable_by(|a, b| b.file_name().as_bytes().cmp(a.file_name().as_bytes()));
    Ok(entries)
}

/// A digesting thread's share: each item's entry (an entry that vanished meanwhile is left out).
fn inspect(
    root: &Path,
    items: Vec<Item>,
    walked_at_ns: i64,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Done {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Item::Ready(e, stamp) => out.push((e, stamp)),
            Item::Visit { rel, de, cached } => {
                match visit(root, rel, &de, cached, walked_at_ns, buf, cancel) {
                    Ok(entry) => out.push(entry),
                    Err(StorageError::Io { source, .. })
                        if source.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(out)
}

/// The entry for one directory entry, with a file's stamp (`Io` `NotFound` when it vanished
/// meanwhile).
fn visit(
    root: &Path,
    rel: RelPath,
    de: &std::fs::DirEntry,
    cached: Option<(Entry, Stamp)>,
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
        file_entry(rel, &full, &meta, cached, walked_at_ns, buf, cancel)
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
    cached: Option<(Entry, Stamp)>,
    walked_at_ns: i64,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<(Entry, Option<Stamp>), StorageError> {
    let (size, mode, mtime) = (meta.len(), file_mode(meta), mtime_ns(meta));
    if let Some((cached, stamp)) = cached
        && cached.is_file()
        && (cached.size, cached.mode, cached.mtime_ns) == (size, mode, mtime)
        && cached.owner == Some(owner(meta))
        && stamp.same_file(meta)
        && mtime < stamp.checked_at_ns.saturating_sub(RACY_MARGIN_NS)
    {
        let entry = Entry { path, ..cached };
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
