//! The sending side: [`pack`] writes the entries a delta asks for as a tar stream (typically into
//! a [`ChannelWriter`](super::channel::ChannelWriter), which cuts it into chunks on a bounded
//! channel).
//!
//! The tar is GNU-format (long names and link targets as GNU extension entries, sizes beyond
//! 8 GiB in base-256), one entry per file or symlink, with mode and mtime (whole seconds: the
//! receiver takes the exact nanoseconds from its manifest). A file is sent only as it was when the
//! manifest was made: its size and mtime are checked when it is opened, it must end exactly at
//! that size, and its size and mtime are checked again after the last byte. Otherwise
//! [`StorageError::ChangedWhileReading`] names it and the stream stops there, torn — the caller
//! sends no trailer, so the receiver commits nothing, and retries with a fresh manifest.
//!
//! # Reading each file once
//! The digest of what was read is also checked against the manifest's — unless [`pack_with`]
//! is given this host's own manifest (the cache of the walk that made the manifest, with its
//! [`Stamp`]s) and it shows the file is the very one that walk digested: same entry, same device,
//! inode and ctime, and last changed more than [`RACY_MARGIN_NS`] before that walk. Then
//! hashing it again would only repeat the walk's work (on a first sync, the source read every
//! byte twice), and the check is left to the receiver.
//!
//! What remains guaranteed either way: the receiver ([`unpack`](super::unpack::unpack)) hashes
//! every file it stages and refuses, naming it, one whose SHA-256 is not the manifest's, before
//! anything is committed. A file changed in a way its stamp cannot show (a write within the
//! same clock tick as its previous change, or through a writable `mmap`, whose ctime update may
//! lag) is therefore refused as a digest mismatch on the receiver instead of
//! `ChangedWhileReading` here — never accepted.
//!
//! # Files that change during a sync: deferred, not fatal
//! A live host keeps writing while it is synced (users upload, overwrite and delete). For a sync,
//! [`pack_deferring`] does not stop the stream at such a file: a file that vanished or differs
//! from its entry when opened is not sent at all, and one that changes while it is read is
//! finished to its promised size (zeros after a shrink) so that the tar stays well-formed. Either
//! way a *marker* entry follows — a tar entry named [`DEFERRED_MARKER`]`<path>` whose content is
//! the reason — and the file is listed in [`PackStats::deferred`]. The receiver throws away what
//! it staged for a marked file and commits the rest of the batch; the next pass (another sync,
//! or the cutover's storage delta, when writers are stopped) sends it again. The marker's name
//! starts with the staging prefix, which no [`RelPath`](super::relpath::RelPath) may, so it can
//! never be mistaken for a file of the tree. Plain [`pack`] / [`pack_with`] (backups) still stop
//! at the first such file.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::path::Path;

use hostshift_shared::digest::{Sha256Digest, StreamHasher};
use tokio_util::sync::CancellationToken;

use super::channel::FillWrite;
use super::error::StorageError;
use super::manifest::{Entry, Kind, Stamp};
use super::relpath::{RelPath, join_under};
use super::walk::{Lookup, RACY_MARGIN_NS, READ_BUFFER, mtime_ns, open_regular};

/// What a [`pack`] sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Regular files.
    pub files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
    /// Bytes of tar stream written (headers and padding included).
    pub stream_bytes: u64,
    /// Files sent without hashing them again, their walk's digest being provably theirs (see
    /// the module doc); the receiver checks them.
    pub digests_reused: u64,
    /// Files left for the next pass because they changed or vanished ([`pack_deferring`] only).
    pub deferred: Vec<Deferred>,
    /// The stream's *envelope*: SHA-256 of every byte it carries that is not file content
    /// (headers, GNU long names, padding, deferral markers, the end-of-archive blocks). With the
    /// files' own digests it proves the whole stream: the receiver computes it too
    /// ([`Staged::envelope`](super::staging::Staged::envelope)) and a sync compares the two.
    /// `None` until the stream is finished.
    pub envelope: Option<Sha256Digest>,
}

/// Tar name prefix of the marker that follows a deferred file (see the module doc).
pub const DEFERRED_MARKER: &str = ".hostshift-staging-deferred/";
/// Most bytes of a deferral's reason carried in its marker.
pub const MAX_DEFER_REASON: usize = 512;

/// A file [`pack_deferring`] did not send as its manifest entry describes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The file.
    pub path: RelPath,
    /// What changed (`removed since the manifest was built`, `it grew while being read`...).
    pub reason: String,
}

/// Writes `entries` (files and symlinks of `root`, from the source's manifest) to `out` as a tar
/// stream, then flushes `out`. Blocking: run it in `spawn_blocking`.
///
/// # Errors
/// [`StorageError::ChangedWhileReading`] naming a file that differs from its entry or changed
/// while it was read; [`StorageError::SymlinkInPath`] when a directory on the way became a
/// symlink; [`StorageError::BadPath`] for a directory entry (directories travel in the delta);
/// [`StorageError::Cancelled`]; [`StorageError::Io`] for reading a file or writing to `out`
/// (a [`ChannelWriter`](super::channel::ChannelWriter) whose receiver is gone fails with
/// `BrokenPipe`).
pub fn pack<W: FillWrite>(
    root: &Path,
    entries: &[Entry],
    out: W,
    cancel: &CancellationToken,
) -> Result<PackStats, StorageError> {
    pack_inner(root, entries, out, cancel, None, false)
}

/// [`pack_with`] for a sync of a live tree: a file that changed or vanished since its entry, or
/// while it is read, is deferred (see the module doc) instead of ending the stream.
///
/// # Errors
/// As [`pack`], except [`StorageError::ChangedWhileReading`].
pub fn pack_deferring<W: FillWrite>(
    root: &Path,
    entries: &[Entry],
    out: W,
    cancel: &CancellationToken,
    walked: Option<&mut dyn Lookup>,
) -> Result<PackStats, StorageError> {
    pack_inner(root, entries, out, cancel, walked, true)
}

/// [`pack`], reusing the digests of `walked` — this host's own manifest of `root`, with stamps
/// (the walk's cache) — for files that provably did not change since that walk (see the module
/// doc).
///
/// # Errors
/// As [`pack`].
pub fn pack_with<W: FillWrite>(
    root: &Path,
    entries: &[Entry],
    out: W,
    cancel: &CancellationToken,
    walked: Option<&mut dyn Lookup>,
) -> Result<PackStats, StorageError> {
    pack_inner(root, entries, out, cancel, walked, false)
}

fn pack_inner<W: FillWrite>(
    root: &Path,
    entries: &[Entry],
    out: W,
    cancel: &CancellationToken,
    mut walked: Option<&mut dyn Lookup>,
    defer: bool,
) -> Result<PackStats, StorageError> {
    // File content a `CheckedFile` counted and the sink has not seen yet.
    let content = Cell::new(0u64);
    let mut sink = Sink {
        inner: out,
        written: 0,
        poisoned: false,
        content: &content,
        envelope: StreamHasher::new(),
    };
    let mut stats = PackStats::default();
    let mut builder = tar::Builder::new(&mut sink);
    let mut buf = vec![0u8; READ_BUFFER];
    let result = (|| {
        for e in entries {
            if cancel.is_cancelled() {
                return Err(StorageError::Cancelled {
                    path: root.join(e.path.as_path()),
                });
            }
            match append(
                &mut builder,
                root,
                e,
                &mut walked,
                &mut buf,
                cancel,
                &mut stats,
                defer,
                &content,
            ) {
                Err(StorageError::ChangedWhileReading { detail, .. }) if defer => {
                    // Nothing of it was written: only the marker goes out.
                    defer_file(&mut builder, root, e, detail, &mut stats)?;
                }
                other => other?,
            }
        }
        builder
            .finish()
            .map_err(|err| StorageError::io("write tar stream", root, err))
    })();
    if result.is_err() {
        // The builder's drop would write the end-of-archive marker: keep a torn stream torn.
        builder.get_mut().poisoned = true;
    }
    drop(builder);
    result?;
    sink.inner
        .flush()
        .map_err(|err| StorageError::io("write tar stream", root, err))?;
    stats.stream_bytes = sink.written;
    stats.envelope = Some(sink.envelope.finish().1);
    Ok(stats)
}

/// True when `walked` shows that `e` is exactly what its walk digested from the file `meta`
/// describes, long enough after its last change for the stamp to tell.
fn digested_by_walk(
    walked: &mut Option<&mut dyn Lookup>,
    e: &Entry,
    meta: &std::fs::Metadata,
) -> bool {
    walked
        .as_mut()
        .and_then(|m| m.find(&e.path))
        .is_some_and(|(known, stamp): (Entry, Stamp)| {
            known == *e
                && stamp.same_file(meta)
                && e.mtime_ns.max(stamp.ctime_ns)
                    < stamp.checked_at_ns.saturating_sub(RACY_MARGIN_NS)
        })
}

/// Writes the marker of a deferred file and lists it.
fn defer_file<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    e: &Entry,
    mut reason: String,
    stats: &mut PackStats,
) -> Result<(), StorageError> {
    if reason.len() > MAX_DEFER_REASON {
        let mut cut = MAX_DEFER_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    tracing::info!(path = %e.path.as_path().display(), %reason, "changed while being synced: deferred to the next pass");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_size(reason.len() as u64);
    let name = Path::new(DEFERRED_MARKER).join(e.path.as_path());
    builder
        .append_data(&mut header, &name, reason.as_bytes())
        .map_err(|err| StorageError::io("write tar stream", root, err))?;
    stats.deferred.push(Deferred {
        path: e.path.clone(),
        reason,
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn append<W: FillWrite>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    e: &Entry,
    walked: &mut Option<&mut dyn Lookup>,
    buf: &mut [u8],
    cancel: &CancellationToken,
    stats: &mut PackStats,
    defer: bool,
    content: &Cell<u64>,
) -> Result<(), StorageError> {
    let full = join_under(root, &e.path)?;
    let changed = |detail: String| StorageError::ChangedWhileReading {
        path: full.clone(),
        detail,
    };
    let mut header = tar::Header::new_gnu();
    header.set_mode(e.mode);
    header.set_mtime(u64::try_from(e.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    let sent = |err: io::Error| StorageError::io("write tar stream", &full, err);
    match &e.kind {
        Kind::File => {
            let (file, meta) = match open_regular(&full) {
                Err(StorageError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    return Err(changed(
                        "it was removed since the manifest was built".into(),
                    ));
                }
                // O_NOFOLLOW on what is now a symlink.
                Err(StorageError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ELOOP) =>
                {
                    return Err(changed("it became a symlink".into()));
                }
                other => other?,
            };
            if (meta.len(), mtime_ns(&meta)) != (e.size, e.mtime_ns) {
                return Err(changed(format!(
                    "size {} mtime {} ns now, {} and {} ns in the manifest",
                    meta.len(),
                    mtime_ns(&meta),
                    e.size,
                    e.mtime_ns
                )));
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(e.size);
            let reuse = digested_by_walk(walked, e, &meta);
            let mut src = CheckedFile {
                file,
                entry: e,
                full: &full,
                left: e.size,
                hasher: (!reuse).then(StreamHasher::new),
                buf,
                cancel,
                failure: None,
                defer,
                torn: None,
                content,
            };
            let r = if e.size == 0 {
                // Nothing to read: check now (an empty file that grew or moved is caught here).
                src.finish()
                    .and_then(|()| builder.append_data(&mut header, e.path.as_path(), io::empty()))
            } else {
                // The header (and a long name's entries) through the builder, the content
                // straight from the read buffer: `append_data` would copy it once more through an
                // 8 KiB buffer of `io::copy`, 3 GB in 8 KiB steps on the benchmark's tree.
                builder
                    .append_data(&mut header, e.path.as_path(), io::empty())
                    .and_then(|()| src.send_to(builder.get_mut()))
            };
            if let Some(failure) = src.failure {
                return Err(failure);
            }
            r.map_err(sent)?;
            if content.get() != 0 {
                // Every content byte counted was written before anything else; were it ever not,
                // the envelope would be wrong: say so, never guess.
                return Err(StorageError::io(
                    "write tar stream",
                    &full,
                    io::Error::other("file content was read but not written"),
                ));
            }
            if let Some(detail) = src.torn {
                // The entry went out whole but is not the manifest's content: the marker right
                // after it tells the receiver to throw it away.
                return defer_file(builder, root, e, detail, stats);
            }
            stats.files += 1;
            stats.content_bytes += e.size;
            stats.digests_reused += u64::from(reuse);
        }
        Kind::Symlink { target } => {
            let meta = match std::fs::symlink_metadata(&full) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(changed(
                        "it was removed since the manifest was built".into(),
                    ));
                }
                other => other.map_err(|err| StorageError::io("inspect", &full, err))?,
            };
            let now = std::fs::read_link(&full).ok();
            if !meta.file_type().is_symlink()
                || now.as_ref() != Some(target)
                || mtime_ns(&meta) != e.mtime_ns
            {
                return Err(changed("the symlink differs from the manifest".into()));
            }
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, e.path.as_path(), target)
                .map_err(sent)?;
            stats.symlinks += 1;
        }
        Kind::Dir => {
            return Err(StorageError::BadPath {
                path: e.path.as_path().to_path_buf(),
                reason: "directories are not packed; they travel in the delta's `dirs`".into(),
            });
        }
    }
    Ok(())
}

/// A file read exactly to the size its entry promises, hashed on the way unless its walk's digest
/// is reused; at the end it checks that nothing changed. A problem is kept in `failure` (the tar
/// crate only sees an `io::Error`).
struct CheckedFile<'a> {
    file: std::fs::File,
    entry: &'a Entry,
    full: &'a Path,
    left: u64,
    hasher: Option<StreamHasher>,
    buf: &'a mut [u8],
    cancel: &'a CancellationToken,
    failure: Option<StorageError>,
    /// Defer instead of failing when the file changes ([`pack_deferring`]).
    defer: bool,
    /// Deferring: what changed while it was read; the entry is completed, then marked.
    torn: Option<String>,
    /// Content bytes handed on and not yet written: the [`Sink`] leaves them out of the
    /// envelope.
    content: &'a Cell<u64>,
}

impl CheckedFile<'_> {
    fn fail(&mut self, e: StorageError) -> io::Error {
        let msg = e.to_string();
        self.failure = Some(e);
        io::Error::other(msg)
    }

    /// A change seen while reading: an error, or (deferring) noted and reading goes on.
    fn changed(&mut self, detail: String) -> io::Result<()> {
        if self.defer {
            self.torn.get_or_insert(detail);
            return Ok(());
        }
        let path = self.full.to_path_buf();
        Err(self.fail(StorageError::ChangedWhileReading { path, detail }))
    }

    /// After the promised size: nothing more to read, same size and mtime, same digest (when it
    /// was hashed).
    fn finish(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        match self.file.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => return self.changed("it grew while being read".into()),
            Err(e) => return Err(self.fail(StorageError::io("read", self.full, e))),
        }
        let meta = match self.file.metadata() {
            Ok(m) => m,
            Err(e) => return Err(self.fail(StorageError::io("inspect", self.full, e))),
        };
        if (meta.len(), mtime_ns(&meta)) != (self.entry.size, self.entry.mtime_ns) {
            return self.changed("its size or mtime moved while it was read".into());
        }
        if let Some(hasher) = self.hasher.take() {
            let (_, digest) = hasher.finish();
            if Some(digest) != self.entry.sha256 {
                return self.changed("its content no longer has the manifest's digest".into());
            }
        }
        Ok(())
    }
}

impl CheckedFile<'_> {
    /// Writes the whole content to `dst`, right after its header, then the zeros that complete
    /// its last 512-byte block — what `tar::Builder::append_data` writes after the header. Where
    /// `dst` lends its buffer ([`FillWrite`]) the file is read straight into it.
    fn send_to<D: FillWrite + ?Sized>(&mut self, dst: &mut D) -> io::Result<()> {
        let mut sent = 0u64;
        while self.left > 0 {
            let want = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match dst.room(want)? {
                Some(room) => {
                    // Counted as written only once `read_into` returned: a file that failed
                    // its last check leaves nothing of its last block in the stream.
                    let n = self.read_into(room)?;
                    dst.filled(n)?;
                    n
                }
                None => {
                    let buf = std::mem::take(&mut self.buf);
                    let read = self.read_into(&mut buf[..want]);
                    self.buf = buf;
                    let n = read?;
                    // Counted before the sink sees them: it leaves content out of the envelope.
                    self.content.set(self.content.get() + n as u64);
                    dst.write_all(&self.buf[..n])?;
                    n
                }
            };
            sent += n as u64;
        }
        let partial = usize::try_from(sent % 512).unwrap_or(0);
        if partial != 0 {
            dst.write_all(&[0u8; 512][partial..])?;
        }
        Ok(())
    }

    /// Reads the file's next bytes into `into` (at most what is left of its promised size),
    /// hashing them unless its walk's digest is reused; returns how many. At the promised size
    /// it checks that nothing changed before returning, so the receiver never gets a complete
    /// entry whose content is not the manifest's, only a cut-off stream. After a change while
    /// deferring, the rest is zeros (the tar stays well-formed; a marker follows the entry).
    fn read_into(&mut self, into: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(into.len());
        loop {
            if self.cancel.is_cancelled() {
                let path = self.full.to_path_buf();
                return Err(self.fail(StorageError::Cancelled { path }));
            }
            let n = match self.file.read(&mut into[..want]) {
                Ok(_) if self.torn.is_some() => {
                    // Deferred already: the rest is filler to keep the tar well-formed.
                    into[..want].fill(0);
                    want
                }
                Ok(0) => {
                    self.changed("it shrank while being read".into())?;
                    into[..want].fill(0);
                    want
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(StorageError::io("read", self.full, e))),
            };
            if let Some(h) = &mut self.hasher {
                h.update(&into[..n]);
            }
            self.left -= n as u64;
            if self.left == 0 {
                self.finish()?;
            }
            return Ok(n);
        }
    }
}

/// Counts what goes out, hashes what is not file content into the envelope, and refuses
/// everything once poisoned. A [`CheckedFile`] counts its content in `content` right before it
/// writes it, and nothing else is written in between, so the first `content` bytes written are
/// content.
struct Sink<'a, W> {
    inner: W,
    written: u64,
    poisoned: bool,
    content: &'a Cell<u64>,
    envelope: StreamHasher,
}

/// File content filled into `inner`'s own buffer: counted, never part of the envelope.
impl<W: FillWrite> FillWrite for Sink<'_, W> {
    fn room(&mut self, max: usize) -> io::Result<Option<&mut [u8]>> {
        if self.poisoned {
            return Err(io::Error::other("the tar stream was abandoned"));
        }
        self.inner.room(max)
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.inner.filled(n)?;
        self.written += n as u64;
        Ok(())
    }
}

impl<W: Write> Write for Sink<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other("the tar stream was abandoned"));
        }
        let n = self.inner.write(data)?;
        self.written += n as u64;
        let pending = self.content.get();
        let content = usize::try_from(pending).unwrap_or(usize::MAX).min(n);
        self.content.set(pending - content as u64);
        self.envelope.update(&data[content..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::storage::channel::{CHUNK_SIZE, ChannelWriter};
    use crate::storage::relpath::RelPath;
    use crate::storage::testutil::{manifest, put};

    #[test]
    fn pack_stops_when_the_receiver_is_dropped() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "big", &vec![3u8; 3 * CHUNK_SIZE], 0o644, 0, 0);
        let m = manifest(t.path());
        let (tx, mut rx) = mpsc::channel(1);
        let root = t.path().to_path_buf();
        let producer = std::thread::spawn(move || {
            pack(
                &root,
                m.entries(),
                ChannelWriter::new(tx),
                &CancellationToken::new(),
            )
        });
        assert!(rx.blocking_recv().is_some());
        drop(rx);
        let err = producer.join().unwrap().unwrap_err();
        assert!(
            matches!(&err, StorageError::Io { source, path, .. }
                if source.kind() == io::ErrorKind::BrokenPipe && path.ends_with("big")),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_changed_since_its_manifest_is_not_sent() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, "grown", b"12345", 0o644, 1_000, 0);
        put(root, "rewritten", b"abcde", 0o644, 1_000, 0);
        let m = manifest(root);
        let entry = |p: &str| m.get(&RelPath::new(p).unwrap()).unwrap().clone();

        put(root, "grown", b"123456", 0o644, 1_000, 0);
        // Same size and mtime: only the digest check while reading can tell.
        put(root, "rewritten", b"ABCDE", 0o644, 1_000, 0);
        for name in ["grown", "rewritten"] {
            let mut out = Vec::new();
            let err = pack(root, &[entry(name)], &mut out, &CancellationToken::new()).unwrap_err();
            assert!(
                matches!(&err, StorageError::ChangedWhileReading { path, .. }
                    if path.ends_with(name)),
                "{name}: {err}"
            );
            // The abandoned stream has no end-of-archive marker.
            assert!(
                !out.ends_with(&[0u8; 1024]) || out.len() < 1024,
                "{name}: stream was finished"
            );
        }
    }

    /// Packs `entries` into a chunk writer (each file read straight into the chunks), flushes
    /// it whatever happened, and returns the result and every byte sent.
    fn pack_into_chunks(
        root: &Path,
        entries: &[Entry],
    ) -> (Result<PackStats, StorageError>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(64);
        let mut w = ChannelWriter::new(tx);
        let result = pack(root, entries, &mut w, &CancellationToken::new());
        w.flush().expect("the receiver is still there");
        drop(w);
        let mut sent = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            sent.extend_from_slice(&chunk);
        }
        (result, sent)
    }

    #[test]
    fn reading_files_into_the_chunks_sends_the_same_stream_as_copying_them() {
        let t = tempfile::tempdir().expect("a temporary folder");
        let sizes = [
            0,
            1,
            511,
            512,
            513,
            CHUNK_SIZE - 1,
            CHUNK_SIZE + 7,
            2 * CHUNK_SIZE + 1000,
        ];
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| ((j * 7 + i) % 253) as u8).collect();
            put(t.path(), &format!("f{i}"), &data, 0o644, 1_000, 0);
        }
        let m = manifest(t.path());
        let mut copied = Vec::new();
        let by_copy = pack(
            t.path(),
            m.entries(),
            &mut copied,
            &CancellationToken::new(),
        )
        .expect("packed through a plain writer");
        let (by_fill, filled) = pack_into_chunks(t.path(), m.entries());
        let by_fill = by_fill.expect("packed into the chunks");
        assert_eq!(filled.len(), copied.len());
        assert!(filled == copied, "the two streams differ");
        // Same stream, same count and same envelope (content never part of it).
        assert_eq!(by_fill, by_copy);
        assert_eq!(by_fill.files, sizes.len() as u64);
    }

    #[test]
    fn a_file_rewritten_before_it_is_read_into_the_chunks_leaves_none_of_its_last_block_sent() {
        let t = tempfile::tempdir().expect("a temporary folder");
        let root = t.path();
        put(
            root,
            "a-first",
            &vec![1u8; CHUNK_SIZE + 100],
            0o644,
            1_000,
            0,
        );
        put(root, "b-rewritten", &vec![b'Y'; 300_000], 0o644, 1_000, 0);
        let m = manifest(root);
        // Same size and mtime, other content: only the digest check at its end can tell.
        put(root, "b-rewritten", &vec![b'Z'; 300_000], 0o644, 1_000, 0);
        let (result, sent) = pack_into_chunks(root, m.entries());
        let err = result.expect_err("the rewritten file must stop the stream");
        assert!(
            matches!(&err, StorageError::ChangedWhileReading { path, .. }
                if path.ends_with("b-rewritten")),
            "{err}"
        );
        assert!(sent.len() >= CHUNK_SIZE, "the first file's chunk went out");
        assert!(
            !sent.windows(512).any(|w| w.iter().all(|b| *b == b'Z')),
            "content of the refused file reached the stream"
        );
    }

    /// `m` with every file stamped as digested long after it last changed (a walk made when the
    /// files were old), so that `pack_with` may trust it.
    fn stamped_long_ago(root: &Path, m: &crate::storage::Manifest) -> crate::storage::Manifest {
        let files: Vec<(Entry, Stamp)> = m
            .entries()
            .iter()
            .filter(|e| e.is_file())
            .map(|e| {
                let meta = std::fs::symlink_metadata(root.join(e.path.as_path())).unwrap();
                (e.clone(), Stamp::of(&meta, i64::MAX / 2))
            })
            .collect();
        m.with_files(&files)
    }

    #[test]
    fn a_file_its_walk_digested_is_sent_without_hashing_it_again() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "a", b"alpha", 0o644, 1_000, 0);
        put(t.path(), "b", b"bravo", 0o644, 1_000, 0);
        let m = manifest(t.path());
        let walked = stamped_long_ago(t.path(), &m);
        let mut out = Vec::new();
        let stats = pack_with(
            t.path(),
            m.entries(),
            &mut out,
            &CancellationToken::new(),
            Some(&mut &walked),
        )
        .unwrap();
        assert_eq!((stats.files, stats.digests_reused), (2, 2));
        // A fresh walk (files changed less than RACY_MARGIN_NS before it) is not trusted.
        let stats = pack_with(
            t.path(),
            m.entries(),
            Vec::new(),
            &CancellationToken::new(),
            Some(&mut &m),
        )
        .unwrap();
        assert_eq!((stats.files, stats.digests_reused), (2, 0));
    }

    #[test]
    fn a_file_rewritten_since_its_walk_is_hashed_and_refused_even_with_its_mtime_put_back() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "a", b"alpha", 0o644, 1_000, 0);
        let m = manifest(t.path());
        let walked = stamped_long_ago(t.path(), &m);
        put(t.path(), "a", b"ALPHA", 0o644, 1_000, 0);
        let err = pack_with(
            t.path(),
            m.entries(),
            Vec::new(),
            &CancellationToken::new(),
            Some(&mut &walked),
        )
        .unwrap_err();
        assert!(
            matches!(&err, StorageError::ChangedWhileReading { detail, .. }
                if detail.contains("digest")),
            "{err}"
        );
    }

    #[test]
    fn a_wrongly_trusted_digest_is_still_refused_by_the_receiver() {
        // The guarantee that remains when the source trusts its walk: even if the walk's digest
        // were not the file's (a change no stamp can show), the receiver checks every file.
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&dst).unwrap();
        put(&src, "a", b"actual content", 0o644, 1_000, 0);
        let m = manifest(&src);
        let claimed = Entry {
            sha256: Some(hostshift_shared::digest::Sha256Digest::of(
                b"what the walk saw",
            )),
            ..m.entries()[0].clone()
        };
        let meta = std::fs::symlink_metadata(src.join("a")).unwrap();
        let walked = m.with_files(&[(claimed.clone(), Stamp::of(&meta, i64::MAX / 2))]);
        let mut tar = Vec::new();
        let stats = pack_with(
            &src,
            std::slice::from_ref(&claimed),
            &mut tar,
            &CancellationToken::new(),
            Some(&mut &walked),
        )
        .unwrap();
        assert_eq!(stats.digests_reused, 1);
        let err = crate::storage::unpack(
            &dst,
            ".hostshift-staging-t",
            &tar[..],
            &[claimed],
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, StorageError::DigestMismatch { path, .. } if path.ends_with("a")),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&dst).unwrap().count(),
            0,
            "nothing staged"
        );
    }

    #[test]
    fn directories_are_not_packed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let m = manifest(t.path());
        let err = pack(t.path(), m.entries(), Vec::new(), &CancellationToken::new()).unwrap_err();
        assert!(matches!(err, StorageError::BadPath { .. }), "{err}");
    }
}
