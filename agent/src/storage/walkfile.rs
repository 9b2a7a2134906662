//! Walk files: a host's manifest of one of its own trees, on disk, written by a walk one entry
//! at a time in path order and read back as a stream — never whole in memory, so that an agent
//! walking, diffing, packing and verifying a tree of a million files stays within a few MiB of
//! manifest (issue 11: agents ≤ 100 MiB at 1,000,000 files; a decoded manifest costs about
//! 250 bytes per file, twice during a walk that read its predecessor).
//!
//! Layout (integers little-endian), the local "cache form" `HSMANIF5`:
//! - header: the magic, when the walk started (i64 ns), the entry count (u64; written last, in
//!   place, once the walk knows it);
//! - per entry, in path order: the network form of [`codec`](super::codec), and after a file's
//!   digest its [`Stamp`] (u8 1 + device, inode, ctime and checked-at as 64-bit integers, or u8 0);
//! - trailer: the entry count and the walk's start again, then the owner names;
//! - the SHA-256 of everything after the header.
//!
//! The header's two fields are repeated in the trailer so that the checksum, which a streaming
//! writer can only compute over what follows the header, still covers them. Stamps are local
//! knowledge: [`Manifest::decode`](super::Manifest::decode), which reads what the network brings,
//! refuses this form, and [`WalkFile::encode_network`] leaves them out.
//!
//! A [`WalkFile`] is an open, checked file: [`WalkFile::open`] reads it once (checksum, order,
//! counts) and keeps a sparse index (one path and offset per [`INDEX_EVERY`] entries), so a
//! [`Cursor`] finds an entry by reading at most that many; [`WalkWriter::finish`] builds the same
//! index while writing. Readers read the open file by position: a later walk renaming a new file
//! over the path does not disturb them.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hostshift_shared::digest::{Sha256Digest, StreamHasher};

use super::codec::{Fields, encode_network, put_entry, put_names, read_entry, take, take_bytes};
use super::error::StorageError;
use super::manifest::{Entry, Kind, OwnerNames, Stamp};
use super::relpath::RelPath;

/// The operation named by every error of writing a walk file (see
/// [`StorageError::is_walk_file_write`]): such an error is this host's disk, not its tree.
pub const WRITE_OP: &str = "write the walk file";
/// The walk file's magic (never accepted from elsewhere).
pub const MAGIC: &[u8; 8] = b"HSMANIF5";
/// Entries between two points of the sparse index.
pub const INDEX_EVERY: u64 = 1024;
/// Magic, walk start, count.
const HEADER: u64 = 24;
/// Read buffer of a reader.
const READ_BUFFER: usize = 64 * 1024;

/// What a walk file holds, besides its entries.
#[derive(Clone, Debug, Default)]
pub struct WalkSummary {
    /// Entries listed.
    pub entries: u64,
    /// Files listed.
    pub files: u64,
    /// Sum of the files' sizes.
    pub file_bytes: u64,
    /// When the walk started (ns since the epoch).
    pub walked_at_ns: i64,
}

/// One point of the sparse index: the path of entry `ordinal`, which starts at `offset`.
#[derive(Clone, Debug)]
struct Mark {
    path: RelPath,
    offset: u64,
    ordinal: u64,
}

/// An open, checked walk file (see the module doc).
#[derive(Debug)]
pub struct WalkFile {
    file: File,
    origin: PathBuf,
    summary: WalkSummary,
    names: OwnerNames,
    index: Vec<Mark>,
}

/// Writes a walk file entry by entry (see the module doc): into a temporary file beside `path`,
/// renamed onto it by [`WalkWriter::finish`] — or, where that cannot be written, into memory
/// ([`WalkWriter::in_memory`]).
pub struct WalkWriter {
    out: BufWriter<File>,
    tmp: Temp,
    /// Where it goes; `None` in memory.
    path: Option<PathBuf>,
    hasher: StreamHasher,
    buf: Vec<u8>,
    offset: u64,
    summary: WalkSummary,
    index: Vec<Mark>,
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    last: Option<RelPath>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |e| StorageError::io(what, path, e)
}

/// A distinct temporary name per writer of this process.
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(name)
}

impl WalkWriter {
    /// Starts a walk file that will replace `path` (its folder must exist).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the temporary file cannot be created.
    pub fn create(path: &Path, walked_at_ns: i64) -> Result<Self, StorageError> {
        let tmp = temp_beside(path);
        // Read as well as written: `finish` hands the same open file to its readers.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(WRITE_OP, &tmp))?;
        Self::start(file, Temp(tmp), Some(path.to_path_buf()), walked_at_ns)
    }

    /// A walk file in memory (an anonymous `memfd`), for when the agent's state folder cannot
    /// take one (a full disk on the old host, the very reason to move): it costs about 130 bytes
    /// per entry of memory instead of disk, and is not kept for the next walk.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the kernel refuses the `memfd`.
    pub fn in_memory(walked_at_ns: i64) -> Result<Self, StorageError> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(c"hostshift-walk", MFdFlags::MFD_CLOEXEC).map_err(|e| {
            StorageError::io(WRITE_OP, IN_MEMORY, io::Error::from_raw_os_error(e as i32))
        })?;
        Self::start(File::from(fd), Temp(PathBuf::new()), None, walked_at_ns)
    }

    fn start(
        file: File,
        tmp: Temp,
        path: Option<PathBuf>,
        walked_at_ns: i64,
    ) -> Result<Self, StorageError> {
        let mut out = BufWriter::with_capacity(READ_BUFFER, file);
        let mut head = Vec::with_capacity(HEADER as usize);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&walked_at_ns.to_le_bytes());
        head.extend_from_slice(&0u64.to_le_bytes());
        out.write_all(&head).map_err(io_err(WRITE_OP, &tmp.0))?;
        Ok(Self {
            out,
            tmp,
            path,
            hasher: StreamHasher::new(),
            buf: Vec::with_capacity(512),
            offset: HEADER,
            summary: WalkSummary {
                walked_at_ns,
                ..WalkSummary::default()
            },
            index: Vec::new(),
            uids: BTreeSet::new(),
            gids: BTreeSet::new(),
            last: None,
        })
    }

    /// Appends an entry; entries must come in strictly increasing path order.
    ///
    /// # Errors
    /// [`StorageError::Io`]; [`StorageError::BadManifest`] for an entry out of order (a bug).
    pub fn push(&mut self, e: &Entry, stamp: Option<Stamp>) -> Result<(), StorageError> {
        if self.last.as_ref().is_some_and(|last| *last >= e.path) {
            return Err(StorageError::BadManifest {
                path: e.path.as_path().to_path_buf(),
                reason: "written out of path order (a bug of the walk)".into(),
            });
        }
        if self.summary.entries.is_multiple_of(INDEX_EVERY) {
            self.index.push(Mark {
                path: e.path.clone(),
                offset: self.offset,
                ordinal: self.summary.entries,
            });
        }
        self.buf.clear();
        put_entry(&mut self.buf, e);
        if e.kind == Kind::File {
            put_stamp(&mut self.buf, stamp);
            self.summary.files += 1;
            self.summary.file_bytes = self.summary.file_bytes.saturating_add(e.size);
        }
        if let Some(o) = e.owner {
            self.uids.insert(o.uid);
            self.gids.insert(o.gid);
        }
        self.write_buf()?;
        self.summary.entries += 1;
        self.last = Some(e.path.clone());
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), StorageError> {
        self.hasher.update(&self.buf);
        self.offset += self.buf.len() as u64;
        self.out
            .write_all(&self.buf)
            .map_err(io_err(WRITE_OP, &self.tmp.0))
    }

    /// Ends the file (trailer, checksum, the count in the header), renames it onto its path and
    /// returns it open. When the rename fails the file is still returned (removed from disk:
    /// the next walk then reads every file again).
    ///
    /// # Errors
    /// [`StorageError::Io`] when it cannot be written.
    pub fn finish(mut self) -> Result<WalkFile, StorageError> {
        let names = resolve_names(&self.uids, &self.gids);
        self.buf.clear();
        self.buf
            .extend_from_slice(&self.summary.entries.to_le_bytes());
        self.buf
            .extend_from_slice(&self.summary.walked_at_ns.to_le_bytes());
        put_names(&mut self.buf, &names);
        self.write_buf()?;
        let sum = std::mem::replace(&mut self.hasher, StreamHasher::new())
            .finish()
            .1;
        self.out
            .write_all(sum.as_bytes())
            .map_err(io_err(WRITE_OP, &self.tmp.0))?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| StorageError::io(WRITE_OP, &self.tmp.0, e.into_error()))?;
        file.seek(SeekFrom::Start(16))
            .and_then(|_| file.write_all(&self.summary.entries.to_le_bytes()))
            .map_err(io_err(WRITE_OP, &self.tmp.0))?;
        // When the rename fails, dropping `tmp` removes the file from disk; it stays open.
        let origin = match &self.path {
            Some(path) => {
                if let Err(e) = std::fs::rename(&self.tmp.0, path) {
                    tracing::debug!(path = %path.display(), error = %e, "walk file not kept");
                } else {
                    self.tmp.0 = PathBuf::new();
                }
                path.clone()
            }
            None => PathBuf::from(IN_MEMORY),
        };
        Ok(WalkFile {
            file,
            origin,
            summary: self.summary,
            names,
            index: self.index,
        })
    }
}

/// How errors name a walk file kept in memory.
const IN_MEMORY: &str = "<walk file in memory>";

/// The temporary file of an unfinished [`WalkWriter`] (an error or a cancelled walk): removed
/// when dropped, so that nothing is left behind. After `finish` its name is gone already (and
/// it has none in memory).
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn put_stamp(out: &mut Vec<u8>, stamp: Option<Stamp>) {
    match stamp {
        Some(s) => {
            out.push(1);
            for v in [s.dev, s.ino] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for v in [s.ctime_ns, s.checked_at_ns] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        None => out.push(0),
    }
}

/// The local names of the ids a tree uses (one lookup per distinct id).
pub fn resolve_names(uids: &BTreeSet<u32>, gids: &BTreeSet<u32>) -> OwnerNames {
    use nix::unistd::{Gid, Group, Uid, User};
    let mut names = OwnerNames::default();
    for &uid in uids {
        if let Ok(Some(u)) = User::from_uid(Uid::from_raw(uid)) {
            names.users.insert(uid, u.name);
        }
    }
    for &gid in gids {
        if let Ok(Some(g)) = Group::from_gid(Gid::from_raw(gid)) {
            names.groups.insert(gid, g.name);
        }
    }
    names
}

impl WalkFile {
    /// Opens and checks a walk file: reads it once (every entry, the trailer, the checksum) and
    /// builds its sparse index.
    ///
    /// # Errors
    /// [`StorageError::Io`] (`NotFound` when there is none yet); [`StorageError::BadManifest`]
    /// when it is damaged, torn or of another form (walk without it then).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let file = File::open(path).map_err(io_err("read", path))?;
        let mut f = Self {
            file,
            origin: path.to_path_buf(),
            summary: WalkSummary::default(),
            names: OwnerNames::default(),
            index: Vec::new(),
        };
        let mut head = [0u8; HEADER as usize];
        f.file
            .read_exact_at(&mut head, 0)
            .map_err(|_| f.bad("too short"))?;
        if &head[..8] != MAGIC {
            return Err(f.bad("not a walk file of this agent (wrong magic)"));
        }
        let walked_at_ns = i64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let count = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
        let mut index = Vec::new();
        let (mut files, mut file_bytes) = (0u64, 0u64);
        let names = {
            let mut r = Decoder::at(&f, HEADER, count, true);
            let mut last: Option<RelPath> = None;
            for ordinal in 0..count {
                let offset = r.offset;
                let Some((e, _)) = r.next_entry()? else {
                    return Err(f.bad("truncated: fewer entries than its header says"));
                };
                if last.as_ref().is_some_and(|l| *l >= e.path) {
                    return Err(f.bad("entries out of path order"));
                }
                if ordinal.is_multiple_of(INDEX_EVERY) {
                    index.push(Mark {
                        path: e.path.clone(),
                        offset,
                        ordinal,
                    });
                }
                if e.is_file() {
                    files += 1;
                    file_bytes = file_bytes.saturating_add(e.size);
                }
                last = Some(e.path);
            }
            let trailer_count = r.u64()?;
            let trailer_walked = r.u64()?.cast_signed();
            if (trailer_count, trailer_walked) != (count, walked_at_ns) {
                return Err(f.bad("its header and trailer disagree (damaged or torn)"));
            }
            let names = r.names()?;
            let body = std::mem::replace(&mut r.hasher, StreamHasher::new())
                .finish()
                .1;
            r.hashing = false;
            let mut sum = [0u8; 32];
            r.read(&mut sum)?;
            if body.as_bytes() != &sum {
                return Err(f.bad("checksum mismatch (damaged or truncated)"));
            }
            if r.offset != f.len()? {
                return Err(f.bad("trailing bytes after the checksum"));
            }
            names
        };
        f.index = index;
        f.names = names;
        f.summary = WalkSummary {
            entries: count,
            files,
            file_bytes,
            walked_at_ns,
        };
        Ok(f)
    }

    /// The open file's metadata (its identity: a later walk renames another file onto the
    /// path).
    ///
    /// # Errors
    /// The `fstat`'s.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    fn len(&self) -> Result<u64, StorageError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(io_err("inspect", &self.origin))
    }

    fn bad(&self, reason: &str) -> StorageError {
        StorageError::BadManifest {
            path: self.origin.clone(),
            reason: reason.to_string(),
        }
    }

    /// Entries, files, bytes and when the walk started.
    pub fn summary(&self) -> &WalkSummary {
        &self.summary
    }

    /// When the walk that wrote it started (ns since the epoch).
    pub fn walked_at_ns(&self) -> i64 {
        self.summary.walked_at_ns
    }

    /// The names of the ids its entries use.
    pub fn names(&self) -> &OwnerNames {
        &self.names
    }

    /// Every entry with its stamp, in path order, read from the file.
    pub fn entries(&self) -> Decoder<'_> {
        Decoder::at(self, HEADER, self.summary.entries, false)
    }

    /// A lookup by path, cheapest when asked in increasing path order (see [`Cursor`]).
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            file: self,
            reader: None,
            peeked: None,
        }
    }

    /// The network form of this manifest (without stamps) into `w`, streamed.
    ///
    /// # Errors
    /// The writer's, or reading the file.
    pub fn encode_network(&self, w: &mut dyn Write) -> io::Result<()> {
        encode_network(
            w,
            self.summary.walked_at_ns,
            self.summary.entries,
            self.entries()
                .map(|r| r.map(|(e, _)| e).map_err(io::Error::other)),
            &self.names,
        )
    }

    /// The SHA-256 of [`WalkFile::encode_network`]'s bytes.
    ///
    /// # Errors
    /// Reading the file.
    pub fn network_sha256(&self) -> io::Result<Sha256Digest> {
        struct Hashing(StreamHasher);
        impl Write for Hashing {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.update(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hashing(StreamHasher::new());
        self.encode_network(&mut h)?;
        Ok(h.0.finish().1)
    }
}

/// Reads a [`WalkFile`] by position (its own offset: readers do not disturb each other).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Entries of a [`WalkFile`] read one at a time from an offset (an [`Iterator`] of entries and
/// their stamps).
pub struct Decoder<'a> {
    r: BufReader<At<'a>>,
    origin: &'a Path,
    offset: u64,
    remaining: u64,
    /// Hashes what it reads (while a file is opened and checked).
    hashing: bool,
    hasher: StreamHasher,
}

impl<'a> Decoder<'a> {
    fn at(f: &'a WalkFile, offset: u64, remaining: u64, hashing: bool) -> Self {
        Self {
            r: BufReader::with_capacity(
                READ_BUFFER,
                At {
                    file: &f.file,
                    pos: offset,
                },
            ),
            origin: &f.origin,
            offset,
            remaining,
            hashing,
            hasher: StreamHasher::new(),
        }
    }

    fn bad(&self, reason: String) -> StorageError {
        StorageError::BadManifest {
            path: self.origin.to_path_buf(),
            reason,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.bad("truncated (damaged or torn)".into())
            } else {
                StorageError::io("read", self.origin, e)
            }
        })?;
        self.offset += buf.len() as u64;
        if self.hashing {
            self.hasher.update(buf);
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        take(self)
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        self.array().map(u32::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StorageError> {
        take_bytes(self)
    }

    fn names(&mut self) -> Result<OwnerNames, StorageError> {
        let mut names = OwnerNames::default();
        for map in [&mut names.users, &mut names.groups] {
            let n = self.u64()?;
            for _ in 0..n {
                let id = self.u32()?;
                let name = String::from_utf8(self.bytes()?)
                    .map_err(|_| self.bad("an owner name that is not UTF-8".into()))?;
                map.insert(id, name);
            }
        }
        Ok(names)
    }

    /// The next entry and its stamp; `None` after the last one.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] for damaged bytes; [`StorageError::Io`].
    pub fn next_entry(&mut self) -> Result<Option<(Entry, Option<Stamp>)>, StorageError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let e = read_entry(self)?;
        let stamp = match e.kind {
            Kind::File => match self.array::<1>()? {
                [0] => None,
                [1] => Some(Stamp {
                    dev: self.u64()?,
                    ino: self.u64()?,
                    ctime_ns: self.u64()?.cast_signed(),
                    checked_at_ns: self.u64()?.cast_signed(),
                }),
                [other] => return Err(self.bad(format!("unknown stamp marker {other}"))),
            },
            _ => None,
        };
        if let Some(reason) = e.problem() {
            return Err(self.bad(format!("{}: {reason}", e.path)));
        }
        Ok(Some((e, stamp)))
    }
}

impl Fields for Decoder<'_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.read(buf)
    }

    fn bad(&self, reason: String) -> StorageError {
        Decoder::bad(self, reason)
    }
}

impl Iterator for Decoder<'_> {
    type Item = Result<(Entry, Option<Stamp>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Finds entries of a [`WalkFile`] by path: it jumps to the index point at or before the path
/// and reads forward, so a run of lookups in increasing path order reads the file about once.
/// A lookup that cannot read the file finds nothing (a cache miss: it only costs speed).
pub struct Cursor<'a> {
    file: &'a WalkFile,
    reader: Option<Decoder<'a>>,
    /// The next entry of `reader`, read already.
    peeked: Option<(Entry, Option<Stamp>)>,
}

impl Cursor<'_> {
    /// The entry for `path` and its stamp, if the file lists it.
    pub fn find_entry(&mut self, path: &RelPath) -> Option<(Entry, Option<Stamp>)> {
        let index = &self.file.index;
        let at = index.partition_point(|m| m.path <= *path).checked_sub(1)?;
        let mark = &index[at];
        // Read on from where it is when that is at or before `path` but not before `mark`;
        // otherwise jump to `mark`.
        let reseek = match &self.peeked {
            None => true,
            Some((e, _)) => e.path > *path || e.path < mark.path,
        };
        if reseek {
            let mut r = Decoder::at(
                self.file,
                mark.offset,
                self.file.summary.entries - mark.ordinal,
                false,
            );
            self.peeked = r.next_entry().ok().flatten();
            self.reader = Some(r);
        }
        loop {
            let (e, _) = self.peeked.as_ref()?;
            match e.path.cmp(path) {
                std::cmp::Ordering::Less => {
                    self.peeked = self.reader.as_mut()?.next_entry().ok().flatten();
                }
                std::cmp::Ordering::Equal => {
                    let found = self.peeked.take();
                    self.peeked = self.reader.as_mut()?.next_entry().ok().flatten();
                    return found;
                }
                std::cmp::Ordering::Greater => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Manifest;
    use crate::storage::Owner;
    use crate::storage::testutil::{link, manifest, put};

    fn entry(path: &str) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::File,
            size: 1,
            mode: 0o644,
            mtime_ns: 5,
            sha256: Some(Sha256Digest::of(path.as_bytes())),
            owner: Some(Owner { uid: 0, gid: 0 }),
        }
    }

    fn stamp(i: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino: i,
            ctime_ns: 2,
            checked_at_ns: 3,
        }
    }

    #[test]
    fn a_walk_file_round_trips_entries_stamps_and_names_and_refuses_damage() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        put(&root, "docs/a.txt", b"alpha", 0o600, 1_650_000_000, 7);
        link(&root, "docs/up", "a.txt");
        let m = manifest(&root);
        let path = t.path().join("tree.manifest");
        m.save(&path).unwrap();
        let back = Manifest::load(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.walked_at_ns(), m.walked_at_ns());
        assert_eq!(back.stamps(), m.stamps());
        assert_eq!(back.owner_names(), m.owner_names());
        let f = WalkFile::open(&path).unwrap();
        assert_eq!(f.summary().entries, 3);
        assert_eq!(f.summary().files, 1);
        assert_eq!(f.summary().file_bytes, 5);
        // The network form it sends is exactly the manifest's.
        let mut sent = Vec::new();
        f.encode_network(&mut sent).unwrap();
        assert_eq!(sent, m.encode());
        assert_eq!(f.network_sha256().unwrap(), Sha256Digest::of(&sent));
        // The network side refuses the local form.
        let err = Manifest::decode(&std::fs::read(&path).unwrap(), Path::new("<peer>"));
        assert!(
            matches!(&err, Err(StorageError::BadManifest { reason, .. }) if reason.contains("cache")),
            "{err:?}"
        );

        let bytes = std::fs::read(&path).unwrap();
        for at in [
            5,
            17,
            30,
            bytes.len() / 2,
            bytes.len() - 40,
            bytes.len() - 1,
        ] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            let opened = WalkFile::open(&path);
            assert!(
                matches!(opened, Err(StorageError::BadManifest { .. })),
                "byte {at} flipped: {opened:?}"
            );
        }
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(WalkFile::open(&path).is_err());
        assert!(matches!(
            WalkFile::open(&t.path().join("missing")),
            Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn a_cursor_finds_every_entry_forward_backward_and_across_index_points() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("big.manifest");
        let n = INDEX_EVERY * 3 + 17;
        let names: Vec<String> = (0..n).map(|i| format!("f{:06}", i * 2)).collect();
        let mut w = WalkWriter::create(&path, 9).unwrap();
        for (i, name) in names.iter().enumerate() {
            w.push(&entry(name), (i % 3 != 0).then(|| stamp(i as u64)))
                .unwrap();
        }
        let written = w.finish().unwrap();
        assert_eq!(written.summary().entries, n);
        assert_eq!(written.index.len(), 4);
        assert!(
            !t.path().read_dir().unwrap().any(|d| d
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-"))
        );
        let opened = WalkFile::open(&path).unwrap();
        assert_eq!(opened.index.len(), written.index.len());
        for f in [&written, &opened] {
            let mut c = f.cursor();
            // Forward, every other one, then a gap (a path between two entries), then backward.
            for i in (0..n).step_by(2) {
                let (e, s) = c
                    .find_entry(&RelPath::new(&names[i as usize]).unwrap())
                    .unwrap();
                assert_eq!(e, entry(&names[i as usize]));
                assert_eq!(s, (i % 3 != 0).then(|| stamp(i)));
            }
            assert!(c.find_entry(&RelPath::new("f000001").unwrap()).is_none());
            assert!(c.find_entry(&RelPath::new("a").unwrap()).is_none());
            assert!(c.find_entry(&RelPath::new("z").unwrap()).is_none());
            for i in (0..n).rev().step_by(INDEX_EVERY as usize / 2) {
                assert!(
                    c.find_entry(&RelPath::new(&names[i as usize]).unwrap())
                        .is_some()
                );
            }
            assert_eq!(f.entries().count() as u64, n);
        }
    }

    #[test]
    fn a_writer_refuses_entries_out_of_order_and_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("x.manifest");
        let mut w = WalkWriter::create(&path, 0).unwrap();
        w.push(&entry("b"), None).unwrap();
        assert!(matches!(
            w.push(&entry("a"), None),
            Err(StorageError::BadManifest { .. })
        ));
        drop(w);
        assert_eq!(t.path().read_dir().unwrap().count(), 0);
    }
}
