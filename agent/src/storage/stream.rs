//! [`ManifestStream`]: a manifest in the network form ([`codec`](super::codec)) read entry by
//! entry from any [`Read`] (a peer's manifest kept on disk), so that comparing a tree of a
//! million files never holds the other side's manifest in memory.
//!
//! It checks everything [`Manifest::decode`](super::Manifest::decode) checks, in one pass:
//! every path and entry invariant, strictly increasing paths (the encoder writes them sorted, so
//! an unsorted or duplicated path is damage or a hostile peer), a listed parent that is not a
//! directory (in path order an entry's listed ancestors precede it, so a stack of at most
//! "depth" entries suffices), the owner names, and the trailing SHA-256 over all bytes before
//! it. The checksum can only be judged at the end: [`ManifestStream::check`] reads a stream
//! once to the end (names included); a caller then reads it again to act on entries it knows
//! are sound. Memory: one entry and the ancestor stack.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hostshift_shared::digest::StreamHasher;

use super::codec::{Fields, read_entry, take, take_bytes};
use super::error::StorageError;
use super::manifest::{Entry, Kind, OwnerNames};
use super::relpath::RelPath;

/// The network form's magic (see [`codec`](super::codec)).
const MAGIC: &[u8; 8] = b"HSMANIF3";

/// What [`ManifestStream::check`] learned from a whole, sound stream.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Entries listed.
    pub entries: u64,
    /// Files listed.
    pub files: u64,
    /// Sum of the files' sizes.
    pub file_bytes: u64,
    /// The owner names the stream ends with.
    pub names: OwnerNames,
}

/// A network-form manifest read one entry at a time (see the module doc).
pub struct ManifestStream<R> {
    r: R,
    hasher: StreamHasher,
    /// Entries still to come.
    remaining: u64,
    count: u64,
    prev: Option<RelPath>,
    /// Listed entries that are ancestors of the last one: (path, is a directory).
    ancestors: Vec<(RelPath, bool)>,
    origin: PathBuf,
}

impl<R: Read> ManifestStream<R> {
    /// Starts reading: the magic, the walk time and the entry count. `origin` names the source
    /// in errors ("the old agent's manifest").
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] for a wrong magic or a stream that ends early.
    pub fn open(r: R, origin: &Path) -> Result<Self, StorageError> {
        let mut s = Self {
            r,
            hasher: StreamHasher::new(),
            remaining: 0,
            count: 0,
            prev: None,
            ancestors: Vec::new(),
            origin: origin.to_path_buf(),
        };
        let magic: [u8; 8] = s.array("the header")?;
        if &magic == super::walkfile::MAGIC {
            return Err(s.bad("a cache file's form, with stamps: not accepted from elsewhere"));
        }
        if &magic != MAGIC {
            return Err(s.bad("not a hostshift manifest (wrong magic)"));
        }
        let _walked_at_ns = s.u64("the header")?;
        s.count = s.u64("the header")?;
        s.remaining = s.count;
        Ok(s)
    }

    /// Entries the stream says it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads the whole stream once and checks it (entries, names, checksum, nothing after).
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] naming what is wrong.
    pub fn check(mut self) -> Result<Summary, StorageError> {
        let mut sum = Summary::default();
        while let Some(e) = self.next_entry()? {
            sum.entries += 1;
            if e.is_file() {
                sum.files += 1;
                sum.file_bytes = sum.file_bytes.saturating_add(e.size);
            }
        }
        sum.names = self.finish()?;
        Ok(sum)
    }

    /// The next entry, checked; `None` after the last one.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] naming the entry (or its position) and what is wrong.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, StorageError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let at = format!(
            "entry {} of {}",
            self.count - self.remaining + 1,
            self.count
        );
        let e = self.entry(&at)?;
        self.remaining -= 1;
        let bad = |reason: String| StorageError::BadManifest {
            path: e.path.as_path().to_path_buf(),
            reason,
        };
        if let Some(reason) = e.problem() {
            return Err(bad(reason));
        }
        if let Some(prev) = &self.prev {
            match prev.cmp(&e.path) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(bad("listed twice".into())),
                std::cmp::Ordering::Greater => {
                    return Err(bad(format!(
                        "out of order (after {prev}): the entries must be sorted by path"
                    )));
                }
            }
        }
        while self
            .ancestors
            .last()
            .is_some_and(|(a, _)| !e.path.is_within(a))
        {
            self.ancestors.pop();
        }
        if let (Some(parent), Some((a, is_dir))) = (e.path.parent(), self.ancestors.last())
            && *a == parent
            && !is_dir
        {
            return Err(bad(format!("its parent {parent} is not a directory")));
        }
        self.ancestors.push((e.path.clone(), e.kind == Kind::Dir));
        self.prev = Some(e.path.clone());
        Ok(Some(e))
    }

    /// After the last entry: the owner names and the checksum, and nothing after them.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] when entries are left, or for damaged names, a checksum
    /// mismatch or trailing bytes.
    pub fn finish(mut self) -> Result<OwnerNames, StorageError> {
        if self.remaining != 0 {
            return Err(self.bad(&format!("{} entries were not read", self.remaining)));
        }
        let mut names = OwnerNames::default();
        for which in [0, 1] {
            let n = self.u64("the owner names")?;
            for _ in 0..n {
                let id = u32::from_le_bytes(self.array("the owner names")?);
                let name = self.bytes("the owner names")?;
                let name = String::from_utf8(name)
                    .map_err(|_| self.bad("an owner name that is not UTF-8"))?;
                if which == 0 {
                    names.users.insert(id, name);
                } else {
                    names.groups.insert(id, name);
                }
            }
        }
        let body = std::mem::replace(&mut self.hasher, StreamHasher::new())
            .finish()
            .1;
        let mut sum = [0u8; 32];
        self.r
            .read_exact(&mut sum)
            .map_err(|_| self.bad("truncated: the checksum is missing"))?;
        if body.as_bytes() != &sum {
            return Err(self.bad("checksum mismatch (damaged or truncated)"));
        }
        let mut more = [0u8; 1];
        match self.r.read(&mut more) {
            Ok(0) => {}
            Ok(_) => return Err(self.bad("trailing bytes after the checksum")),
            Err(e) => return Err(self.bad(&format!("read: {e}"))),
        }
        Ok(names)
    }

    fn bad(&self, reason: &str) -> StorageError {
        StorageError::BadManifest {
            path: self.origin.clone(),
            reason: reason.to_string(),
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), StorageError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.bad(&format!("truncated in {what}"))
            } else {
                self.bad(&format!("read: {e}"))
            }
        })?;
        self.hasher.update(buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], StorageError> {
        take(&mut At { s: self, at: what })
    }

    fn u64(&mut self, what: &str) -> Result<u64, StorageError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, StorageError> {
        take_bytes(&mut At { s: self, at: what })
    }

    fn entry(&mut self, at: &str) -> Result<Entry, StorageError> {
        read_entry(&mut At { s: self, at })
    }
}

/// A [`ManifestStream`] read at one place ("entry 3 of 10", "the owner names"), which its
/// errors name.
struct At<'a, R> {
    s: &'a mut ManifestStream<R>,
    at: &'a str,
}

impl<R: Read> Fields for At<'_, R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.s.fill(buf, self.at)
    }

    fn bad(&self, reason: String) -> StorageError {
        self.s.bad(&format!("{}: {reason}", self.at))
    }
}

impl<R: Read> Iterator for ManifestStream<R> {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Owner;
    use crate::storage::{Manifest, diff, diff_with};
    use hostshift_shared::digest::Sha256Digest;

    fn file(path: &str, content: &str) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::File,
            size: content.len() as u64,
            mode: 0o644,
            mtime_ns: 7,
            sha256: Some(Sha256Digest::of(content.as_bytes())),
            owner: Some(Owner { uid: 1, gid: 2 }),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: 3,
            sha256: None,
            owner: None,
        }
    }

    fn sample() -> Manifest {
        Manifest::new(vec![
            dir("a"),
            file("a/x", "x"),
            dir("a/b"),
            file("a/b/y", "yy"),
            file("a.txt", "t"),
            file("z", "zzz"),
        ])
        .unwrap()
    }

    /// Encodes `entries` in the given order (no sorting, no checks), as a peer might.
    fn raw(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&0i64.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for e in entries {
            let p = e.path.as_bytes();
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
            out.push(u8::from(e.kind == Kind::Dir));
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.mtime_ns.to_le_bytes());
            out.push(0);
            if let Some(d) = &e.sha256 {
                out.extend_from_slice(d.as_bytes());
            }
        }
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        let sum = Sha256Digest::of(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    fn reason(bytes: &[u8]) -> String {
        let err = ManifestStream::open(bytes, Path::new("<peer>"))
            .and_then(ManifestStream::check)
            .expect_err("a malformed manifest must be refused");
        match err {
            StorageError::BadManifest { path, reason } => format!("{}: {reason}", path.display()),
            other => panic!("not BadManifest: {other:?}"),
        }
    }

    #[test]
    fn a_sound_manifest_streams_entry_by_entry_as_decode_reads_it() {
        let m = sample();
        let bytes = m.encode();
        let entries: Vec<Entry> = ManifestStream::open(&bytes[..], Path::new("<peer>"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(entries, m.entries());
        let sum = ManifestStream::open(&bytes[..], Path::new("<peer>"))
            .unwrap()
            .check()
            .unwrap();
        assert_eq!((sum.entries, sum.files, sum.file_bytes), (6, 4, 7));
        // Streamed encoding is the same bytes as the in-memory one.
        let mut streamed = Vec::new();
        m.encode_to(&mut streamed).unwrap();
        assert_eq!(streamed, bytes);
    }

    #[test]
    fn a_malformed_manifest_from_a_peer_is_refused_naming_what_is_wrong() {
        let good = sample().encode();
        // Damaged: an entry that breaks a rule is named at once, anything else by the checksum.
        let mut flipped = good.clone();
        flipped[40] ^= 0x20;
        assert_eq!(reason(&flipped), "a: mode 10000755");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(reason(&flipped).contains("checksum mismatch"));
        assert!(reason(&good[..good.len() - 1]).contains("checksum"));
        assert!(reason(&good[..30]).contains("truncated in entry 1 of 6"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(reason(&longer).contains("trailing bytes"));
        assert!(reason(b"HSMANIF5\0\0\0\0").contains("cache file"));
        assert!(reason(b"something else entirely").contains("wrong magic"));
        // Well-formed bytes, broken rules.
        let (x, y) = (file("x", "1"), file("y", "2"));
        assert_eq!(
            reason(&raw(&[y, x.clone()])),
            "x: out of order (after y): the entries must be sorted by path"
        );
        assert!(reason(&raw(&[x.clone(), x.clone()])).contains("x: listed twice"));
        assert!(
            reason(&raw(&[file("f", "1"), file("f/g", "2")]))
                .contains("f/g: its parent f is not a directory")
        );
        let mut no_digest = file("n", "1");
        no_digest.sha256 = None;
        let mut bytes = raw(&[no_digest]);
        // A file entry without its 32 digest bytes runs into the owner names: refused either way.
        bytes.truncate(bytes.len() - 32);
        let sum = Sha256Digest::of(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        assert!(!reason(&bytes).is_empty());
        let mut bad_path = raw(&[file("ok", "1")]);
        let at = bad_path.iter().position(|b| *b == b'o').unwrap();
        bad_path[at] = b'/';
        bad_path.truncate(bad_path.len() - 32);
        let sum = Sha256Digest::of(&bad_path);
        bad_path.extend_from_slice(sum.as_bytes());
        assert!(
            reason(&bad_path).contains("entry 1 of 1"),
            "{}",
            reason(&bad_path)
        );
    }

    #[test]
    fn the_streamed_diff_equals_the_in_memory_one() {
        let src = sample();
        let dst = Manifest::new(vec![
            dir("a"),
            file("a/x", "old"),
            file("a.txt", "t"),
            dir("gone"),
            file("gone/f", "f"),
        ])
        .unwrap();
        let whole = diff(&src, &dst, true);
        let bytes = src.encode();
        let mut sent = Vec::new();
        let streamed = diff_with(
            ManifestStream::open(&bytes[..], Path::new("<peer>")).unwrap(),
            dst.entries().iter().map(Ok),
            true,
            |seen, travels| {
                if travels {
                    sent.push(seen.source().clone());
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(sent, whole.send);
        assert_eq!(streamed.dirs, whole.dirs);
        assert_eq!(streamed.meta, whole.meta);
        assert_eq!(streamed.delete, whole.delete);
        assert_eq!(streamed.bytes_to_send, whole.bytes_to_send);
        assert!(streamed.send.is_empty());
    }
}
