//! The compact binary form of a [`Manifest`]: what goes over the network.
//!
//! Layout (integers little-endian): the magic `HSMANIF3`, when the walk started (i64 ns), the
//! entry count (u64), then per entry
//! the path (u32 length + bytes), the kind (u8: 0 file, 1 directory, 2 symlink), size (u64), mode
//! (u32), mtime in ns (i64), the owner (u8 0 = not tracked, or 1 + uid and gid as u32), then a
//! file's 32-byte SHA-256 or a symlink's target (u32 length + bytes); after the entries the names
//! of the ids used (users, then groups: a u64 count, then per name the id as u32 and the name as
//! u32 length + bytes); last, the SHA-256 of everything before it, so a torn or damaged stream
//! is noticed.
//! About 70 bytes plus the path per entry. Chosen over JSON because paths need not be UTF-8 and
//! digests are raw bytes; decoding checks every path and invariant again ([`Manifest::new`]), as
//! the bytes may come from another host.
//!
//! The cache a host keeps of its own trees is a walk file ([`walkfile`](super::walkfile),
//! `HSMANIF5`): the same entries plus each file's [`Stamp`], which is local knowledge:
//! [`Manifest::decode`], which reads what the network brings, refuses that form.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hostshift_shared::digest::Sha256Digest;

use super::error::StorageError;
use super::manifest::{Entry, Kind, Manifest, OwnerNames, Stamp};
use super::relpath::RelPath;

const MAGIC: &[u8; 8] = b"HSMANIF3";
/// Longest path or link target accepted when decoding (Linux's `PATH_MAX` is 4096).
pub(super) const MAX_PATH: usize = 64 * 1024;
/// Bytes an encoder buffers before writing them on.
const ENCODE_BUFFER: usize = 64 * 1024;
/// Smallest encoded entry, to bound the up-front allocation of a hostile count.
const MIN_ENTRY: usize = 4 + 1 + 1 + 8 + 4 + 8 + 1;

impl Manifest {
    /// The binary form (see the module doc), without stamps: what goes over the network.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.entries().len() * 96);
        // Writing into a Vec cannot fail.
        match self.encode_to(&mut v) {
            Ok(()) => v,
            Err(_) => Vec::new(),
        }
    }

    /// The network form written into `w` piece by piece (a framed stream to a peer), never
    /// whole in memory: at most 64 KiB are buffered.
    ///
    /// # Errors
    /// The writer's.
    pub fn encode_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        encode_network(
            w,
            self.walked_at_ns(),
            self.entries().len() as u64,
            self.entries().iter().map(Ok),
            self.owner_names(),
        )
    }

    /// Decodes [`Manifest::encode`]'s output. `origin` names the source in errors.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] for damaged bytes, a cache file's form (with stamps, which
    /// only this host may vouch for), or an entry that breaks the manifest's rules (bad path,
    /// escaping symlink, missing parent...).
    pub fn decode(bytes: &[u8], origin: &Path) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadManifest {
            path: origin.to_path_buf(),
            reason: reason.to_string(),
        };
        match bytes.get(..8) {
            Some(m) if m == super::walkfile::MAGIC => {
                return Err(bad(
                    "a cache file's form, with stamps: not accepted from elsewhere",
                ));
            }
            Some(m) if m == MAGIC => {}
            _ => return Err(bad("not a hostshift manifest (wrong magic)")),
        }
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or_else(|| bad("too short"))?;
        let (body, sum) = bytes.split_at(body_len);
        if Sha256Digest::of(body).as_bytes()[..] != sum[..] {
            return Err(bad("checksum mismatch (damaged or truncated)"));
        }
        let mut r = Reader(body);
        r.take(8).ok_or_else(|| bad("too short"))?;
        let walked_at_ns = r.u64().ok_or_else(|| bad("too short"))?.cast_signed();
        let count = r.u64().ok_or_else(|| bad("too short"))?;
        let count = usize::try_from(count).map_err(|_| bad("entry count too large"))?;
        let mut entries = Vec::with_capacity(count.min(body.len() / MIN_ENTRY));
        for _ in 0..count {
            entries.push(read_entry(&mut Named { r: &mut r, origin })?);
        }
        let mut names = super::manifest::OwnerNames::default();
        for map in [&mut names.users, &mut names.groups] {
            let n = r.u64().ok_or_else(|| bad("truncated owner names"))?;
            for _ in 0..n {
                let id = u32::from_le_bytes(r.array().ok_or_else(|| bad("truncated owner names"))?);
                let name = r.bytes().ok_or_else(|| bad("truncated owner names"))?;
                let name = String::from_utf8(name.to_vec())
                    .map_err(|_| bad("an owner name that is not UTF-8"))?;
                map.insert(id, name);
            }
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes after the owner names"));
        }
        let mut m = Manifest::new(entries)?;
        m.set_walked_at_ns(walked_at_ns);
        m.set_owner_names(names);
        Ok(m)
    }

    /// Writes this manifest, with its stamps, as a walk file at `path` (the cache form, see
    /// [`walkfile`](super::walkfile)): what a walk of the tree would have left there.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        let mut w = super::walkfile::WalkWriter::create(path, self.walked_at_ns())?;
        for (i, e) in self.entries().iter().enumerate() {
            w.push(e, self.stamps().get(i).copied().flatten())?;
        }
        w.finish().map(drop)
    }

    /// Reads a walk file (see [`Manifest::save`]) whole into memory, stamps included.
    ///
    /// # Errors
    /// [`StorageError::Io`] (`NotFound` when there is none yet);
    /// [`StorageError::BadManifest`] when it is damaged.
    pub fn load(path: &Path) -> Result<Self, StorageError> {
        let f = super::walkfile::WalkFile::open(path)?;
        let walked: Vec<(Entry, Option<Stamp>)> = f.entries().collect::<Result<_, _>>()?;
        let mut m = Manifest::from_walk(walked, f.walked_at_ns());
        m.set_owner_names(f.names().clone());
        Ok(m)
    }
}

/// A reader of the binary form's fields: a peer's manifest read as a stream
/// ([`ManifestStream`](super::stream::ManifestStream)) or a walk file
/// ([`Decoder`](super::walkfile::Decoder)). [`read_entry`] reads an entry through it.
pub(super) trait Fields {
    /// Exactly `buf.len()` bytes.
    ///
    /// # Errors
    /// Truncated or unreadable input, named.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError>;
    /// An error naming the input (and the place in it) and what is wrong there.
    fn bad(&self, reason: String) -> StorageError;
}

/// `N` bytes of `f`.
pub(super) fn take<const N: usize>(f: &mut impl Fields) -> Result<[u8; N], StorageError> {
    let mut b = [0u8; N];
    f.fill(&mut b)?;
    Ok(b)
}

/// A length-prefixed byte string of `f` (a path, a link target, an owner name).
pub(super) fn take_bytes(f: &mut impl Fields) -> Result<Vec<u8>, StorageError> {
    let len = u32::from_le_bytes(take(f)?) as usize;
    if len > MAX_PATH {
        return Err(f.bad(format!("a length of {len} bytes (at most {MAX_PATH})")));
    }
    let mut b = vec![0u8; len];
    f.fill(&mut b)?;
    Ok(b)
}

/// One entry's fields in the binary form (see the module doc), up to a file's digest (a walk
/// file's stamp, which follows it, is the caller's). The path must be a valid [`RelPath`]; the
/// manifest's other rules are the caller's to check.
///
/// # Errors
/// What `f` reports, or a field no encoder writes.
pub(super) fn read_entry(f: &mut impl Fields) -> Result<Entry, StorageError> {
    let path = take_bytes(f)?;
    let [kind] = take::<1>(f)?;
    let size = u64::from_le_bytes(take(f)?);
    let mode = u32::from_le_bytes(take(f)?);
    let mtime_ns = i64::from_le_bytes(take(f)?);
    let owner = match take::<1>(f)? {
        [0] => None,
        [1] => Some(super::manifest::Owner {
            uid: u32::from_le_bytes(take(f)?),
            gid: u32::from_le_bytes(take(f)?),
        }),
        [other] => return Err(f.bad(format!("unknown owner marker {other}"))),
    };
    let (kind, sha256) = match kind {
        0 => {
            let d = Sha256Digest::from_slice(&take::<32>(f)?).map_err(|e| f.bad(e.0))?;
            (Kind::File, Some(d))
        }
        1 => (Kind::Dir, None),
        2 => {
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(&take_bytes(f)?));
            (Kind::Symlink { target }, None)
        }
        other => return Err(f.bad(format!("unknown entry kind {other}"))),
    };
    let path = RelPath::from_bytes(&path).map_err(|e| f.bad(e.to_string()))?;
    Ok(Entry {
        path,
        kind,
        size,
        mode,
        mtime_ns,
        sha256,
        owner,
    })
}

/// Writes the network form of `count` entries (sorted, as `entries` yields them) into `w`, at
/// most [`ENCODE_BUFFER`] buffered: what [`Manifest::encode_to`] and a walk file's
/// [`encode_network`](super::walkfile::WalkFile::encode_network) both send.
///
/// # Errors
/// The writer's, or the first error of `entries`.
pub(super) fn encode_network<E: std::borrow::Borrow<Entry>>(
    w: &mut dyn Write,
    walked_at_ns: i64,
    count: u64,
    entries: impl Iterator<Item = std::io::Result<E>>,
    names: &OwnerNames,
) -> std::io::Result<()> {
    let mut hasher = hostshift_shared::digest::StreamHasher::new();
    let mut out = Vec::with_capacity(ENCODE_BUFFER + 1024);
    let mut emit = |out: &mut Vec<u8>, w: &mut dyn Write| -> std::io::Result<()> {
        hasher.update(out);
        w.write_all(out)?;
        out.clear();
        Ok(())
    };
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&walked_at_ns.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let mut written = 0u64;
    for e in entries {
        put_entry(&mut out, e?.borrow());
        written += 1;
        if out.len() >= ENCODE_BUFFER {
            emit(&mut out, w)?;
        }
    }
    if written != count {
        return Err(std::io::Error::other(format!(
            "{written} entries encoded where {count} were announced"
        )));
    }
    put_names(&mut out, names);
    emit(&mut out, w)?;
    let (_, sum) = hasher.finish();
    w.write_all(sum.as_bytes())
}

/// One entry in the binary form (without a stamp).
pub(super) fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_bytes(out, e.path.as_bytes());
    out.push(match e.kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink { .. } => 2,
    });
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.mode.to_le_bytes());
    out.extend_from_slice(&e.mtime_ns.to_le_bytes());
    match e.owner {
        None => out.push(0),
        Some(o) => {
            out.push(1);
            out.extend_from_slice(&o.uid.to_le_bytes());
            out.extend_from_slice(&o.gid.to_le_bytes());
        }
    }
    match (&e.kind, &e.sha256) {
        (Kind::File, Some(d)) => out.extend_from_slice(d.as_bytes()),
        (Kind::Symlink { target }, _) => put_bytes(out, target.as_os_str().as_bytes()),
        _ => {}
    }
}

/// The owner names: users, then groups (a u64 count, then per name the id and the name).
pub(super) fn put_names(out: &mut Vec<u8>, names: &OwnerNames) {
    for map in [&names.users, &names.groups] {
        out.extend_from_slice(&(map.len() as u64).to_le_bytes());
        for (id, name) in map {
            out.extend_from_slice(&id.to_le_bytes());
            put_bytes(out, name.as_bytes());
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Paths longer than u32::MAX cannot exist; MAX_PATH refuses them on decode anyway.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > MAX_PATH {
            return None;
        }
        self.take(len)
    }
}

/// [`Fields`] of a [`Reader`], naming `origin` in its errors.
struct Named<'r, 'a> {
    r: &'r mut Reader<'a>,
    origin: &'r Path,
}

impl Fields for Named<'_, '_> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        let bytes = self
            .r
            .take(buf.len())
            .ok_or_else(|| self.bad("truncated entry".into()))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn bad(&self, reason: String) -> StorageError {
        StorageError::BadManifest {
            path: self.origin.to_path_buf(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::storage::testutil::{link, manifest, put};

    #[test]
    fn round_trips_through_bytes_and_a_cache_file_non_utf8_names_included() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        put(
            &root,
            "docs/r\u{e9}sum\u{e9}.pdf",
            b"pdf",
            0o600,
            1_650_000_000,
            999_999_999,
        );
        let odd = root.join(OsStr::from_bytes(b"caf\xe9.bin"));
        std::fs::write(&odd, b"latin-1 name").unwrap();
        link(&root, "docs/up", "../caf\u{e9}.bin");
        let m = manifest(&root);
        assert_eq!(m.entries().len(), 4);

        assert_eq!(
            Manifest::decode(&m.encode(), Path::new("<test>")).unwrap(),
            m
        );
        let cache = t.path().join("tree.manifest");
        m.save(&cache).unwrap();
        let loaded = Manifest::load(&cache).unwrap();
        assert_eq!(loaded, m);
        assert_eq!(loaded.walked_at_ns(), m.walked_at_ns());
        // The cache keeps each file's stamp; the network form has none, and the network side
        // refuses the cache form.
        assert_eq!(loaded.stamps(), m.stamps());
        assert_eq!(
            m.stamps().iter().filter(|s| s.is_some()).count(),
            2,
            "{m:?}"
        );
        let sent = Manifest::decode(&m.encode(), Path::new("<test>")).unwrap();
        assert!(sent.stamps().is_empty());
        let err = Manifest::decode(&std::fs::read(&cache).unwrap(), Path::new("<peer>"));
        assert!(
            matches!(&err, Err(StorageError::BadManifest { reason, .. }) if reason.contains("cache")),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_damaged_truncated_or_foreign_bytes() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "a/b", b"content", 0o644, 0, 0);
        let bytes = manifest(t.path()).encode();
        let origin = Path::new("<test>");
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        for bad in [
            &flipped[..],
            &bytes[..bytes.len() - 1],
            b"not a manifest at all, clearly not",
        ] {
            assert!(matches!(
                Manifest::decode(bad, origin),
                Err(StorageError::BadManifest { .. })
            ));
        }
        assert!(matches!(
            Manifest::load(&t.path().join("missing")),
            Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn ten_thousand_entries_round_trip() {
        let d = Some(Sha256Digest::of(b"x"));
        let mut entries = vec![Entry {
            path: RelPath::new("d").unwrap(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: 1,
            sha256: None,
            owner: None,
        }];
        entries.extend((0..10_000).map(|i| Entry {
            path: RelPath::new(format!("d/project-evaluation-{i:05}.json")).unwrap(),
            kind: Kind::File,
            size: i,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            sha256: d,
            owner: None,
        }));
        let m = Manifest::new(entries).unwrap();
        let bytes = m.encode();
        assert!(bytes.len() < 10_001 * 120, "{} bytes", bytes.len());
        assert_eq!(Manifest::decode(&bytes, Path::new("<test>")).unwrap(), m);
    }
}
