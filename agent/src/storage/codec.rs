//! The compact binary form of a [`Manifest`]: what goes over the network and into the cache file
//! a caller keeps between syncs.
//!
//! Layout (integers little-endian): the magic `HSMANIF1`, when the walk started (i64 ns), the
//! entry count (u64), then per entry
//! the path (u32 length + bytes), the kind (u8: 0 file, 1 directory, 2 symlink), size (u64), mode
//! (u32), mtime in ns (i64), the owner (u8 0 = not tracked, or 1 + uid and gid as u32), then a
//! file's 32-byte SHA-256 or a symlink's target (u32 length + bytes); after the entries the names
//! of the ids used (users, then groups: a u64 count, then per name the id as u32 and the name as
//! u32 length + bytes); last, the SHA-256 of everything before it, so a torn or damaged cache
//! file is noticed.
//! About 70 bytes plus the path per entry. Chosen over JSON because paths need not be UTF-8 and
//! digests are raw bytes; decoding checks every path and invariant again ([`Manifest::new`]), as
//! the bytes may come from another host.
//!
//! The network form is `HSMANIF3`; the cache file ([`Manifest::save`]) is `HSMANIF4`: the same, plus after each file's digest its
//! [`Stamp`] (u8 1 + device, inode, ctime and checked-at as 64-bit integers, or u8 0). Stamps are
//! local knowledge: [`Manifest::decode`], which reads what the network brings, refuses this form.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hostshift_shared::digest::Sha256Digest;

use super::error::StorageError;
use super::manifest::{Entry, Kind, Manifest, Stamp};
use super::relpath::RelPath;

const MAGIC: &[u8; 8] = b"HSMANIF3";
/// The cache file's form: with stamps.
const MAGIC_CACHE: &[u8; 8] = b"HSMANIF4";
/// Longest path or link target accepted when decoding (Linux's `PATH_MAX` is 4096).
const MAX_PATH: usize = 64 * 1024;
/// Bytes an encoder buffers before writing them on.
const ENCODE_BUFFER: usize = 64 * 1024;
/// Smallest encoded entry, to bound the up-front allocation of a hostile count.
const MIN_ENTRY: usize = 4 + 1 + 1 + 8 + 4 + 8 + 1;

impl Manifest {
    /// The binary form (see the module doc), without stamps: what goes over the network.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(false)
    }

    fn encode_as(&self, with_stamps: bool) -> Vec<u8> {
        let per_entry = if with_stamps { 130 } else { 96 };
        let mut v = Vec::with_capacity(16 + self.entries().len() * per_entry);
        // Writing into a Vec cannot fail.
        match self.encode_into(with_stamps, &mut v) {
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
        self.encode_into(false, w)
    }

    fn encode_into(&self, with_stamps: bool, w: &mut dyn Write) -> std::io::Result<()> {
        let mut hasher = hostshift_shared::digest::StreamHasher::new();
        let mut out = Vec::with_capacity(ENCODE_BUFFER + 1024);
        let mut emit = |out: &mut Vec<u8>, w: &mut dyn Write| -> std::io::Result<()> {
            hasher.update(out);
            w.write_all(out)?;
            out.clear();
            Ok(())
        };
        out.extend_from_slice(if with_stamps { MAGIC_CACHE } else { MAGIC });
        out.extend_from_slice(&self.walked_at_ns().to_le_bytes());
        out.extend_from_slice(&(self.entries().len() as u64).to_le_bytes());
        let stamps = self.stamps();
        for (i, e) in self.entries().iter().enumerate() {
            put_bytes(&mut out, e.path.as_bytes());
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
                (Kind::File, Some(d)) => {
                    out.extend_from_slice(d.as_bytes());
                    if with_stamps {
                        match stamps.get(i).copied().flatten() {
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
                }
                (Kind::Symlink { target }, _) => put_bytes(&mut out, target.as_os_str().as_bytes()),
                _ => {}
            }
            if out.len() >= ENCODE_BUFFER {
                emit(&mut out, w)?;
            }
        }
        for map in [&self.owner_names().users, &self.owner_names().groups] {
            out.extend_from_slice(&(map.len() as u64).to_le_bytes());
            for (id, name) in map {
                out.extend_from_slice(&id.to_le_bytes());
                put_bytes(&mut out, name.as_bytes());
            }
        }
        emit(&mut out, w)?;
        let (_, sum) = hasher.finish();
        w.write_all(sum.as_bytes())
    }

    /// Decodes [`Manifest::encode`]'s output. `origin` names the source in errors.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] for damaged bytes, a cache file's form (with stamps, which
    /// only this host may vouch for), or an entry that breaks the manifest's rules (bad path,
    /// escaping symlink, missing parent...).
    pub fn decode(bytes: &[u8], origin: &Path) -> Result<Self, StorageError> {
        Self::decode_as(bytes, origin, false)
    }

    fn decode_as(bytes: &[u8], origin: &Path, stamps_allowed: bool) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadManifest {
            path: origin.to_path_buf(),
            reason: reason.to_string(),
        };
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or_else(|| bad("too short"))?;
        let (body, sum) = bytes.split_at(body_len);
        if Sha256Digest::of(body).as_bytes()[..] != sum[..] {
            return Err(bad("checksum mismatch (damaged or truncated)"));
        }
        let mut r = Reader(body);
        let magic = r.take(8).ok_or_else(|| bad("too short"))?;
        let with_stamps = if magic == MAGIC {
            false
        } else if magic == MAGIC_CACHE && stamps_allowed {
            true
        } else if magic == MAGIC_CACHE {
            return Err(bad(
                "a cache file's form, with stamps: not accepted from elsewhere",
            ));
        } else {
            return Err(bad("not a hostshift manifest (wrong magic)"));
        };
        let walked_at_ns = r.u64().ok_or_else(|| bad("too short"))?.cast_signed();
        let count = r.u64().ok_or_else(|| bad("too short"))?;
        let count = usize::try_from(count).map_err(|_| bad("entry count too large"))?;
        let mut entries = Vec::with_capacity(count.min(body.len() / MIN_ENTRY));
        let mut stamps = Vec::with_capacity(if with_stamps { entries.capacity() } else { 0 });
        for _ in 0..count {
            let e = r.entry(origin).ok_or_else(|| bad("truncated entry"))??;
            if with_stamps {
                stamps.push(if e.kind == Kind::File {
                    r.stamp().ok_or_else(|| bad("truncated stamp"))?
                } else {
                    None
                });
            }
            entries.push(e);
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
        if with_stamps {
            // `new` sorts: pair the stamps with their entries first.
            let mut paired: Vec<(Entry, Option<Stamp>)> = entries.into_iter().zip(stamps).collect();
            paired.sort_by(|a, b| a.0.path.cmp(&b.0.path));
            let (entries, stamps): (Vec<Entry>, Vec<Option<Stamp>>) = paired.into_iter().unzip();
            let mut m = Manifest::new(entries)?;
            m.set_walked_at_ns(walked_at_ns);
            m.set_stamps(stamps);
            m.set_owner_names(names);
            return Ok(m);
        }
        let mut m = Manifest::new(entries)?;
        m.set_walked_at_ns(walked_at_ns);
        m.set_owner_names(names);
        Ok(m)
    }

    /// Writes the cache form (with stamps) to `path` atomically (temporary file, rename), e.g. as
    /// the cache for the next [`build`](super::manifest::build). Keep it outside the tree itself.
    ///
    /// Not fsynced: a cache lost in a crash only costs the next walk its speed, and one torn by
    /// a crash fails its checksum on [`Manifest::load`] and is ignored. (An fsync per save cost a
    /// second sync of an unchanged tree several disk flushes.)
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            self.encode_into(true, &mut f)?;
            f.flush()
        };
        write().map_err(|e| StorageError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename into place", path, e))
    }

    /// Reads a manifest written by [`Manifest::save`] (or an older cache without stamps).
    ///
    /// # Errors
    /// [`StorageError::Io`] (`NotFound` when there is no cache yet);
    /// [`StorageError::BadManifest`] when it is damaged — build without a cache then.
    pub fn load(path: &Path) -> Result<Self, StorageError> {
        let bytes = std::fs::read(path).map_err(|e| StorageError::io("read", path, e))?;
        Self::decode_as(&bytes, path, true)
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

    /// A file's stamp in the cache form (`None` inside when it has none).
    fn stamp(&mut self) -> Option<Option<Stamp>> {
        match self.array::<1>()?[0] {
            0 => Some(None),
            1 => Some(Some(Stamp {
                dev: self.u64()?,
                ino: self.u64()?,
                ctime_ns: self.u64()?.cast_signed(),
                checked_at_ns: self.u64()?.cast_signed(),
            })),
            _ => None,
        }
    }

    /// `None` when the bytes run out; inner `Err` for a bad path.
    fn entry(&mut self, origin: &Path) -> Option<Result<Entry, StorageError>> {
        let path = self.bytes()?;
        let kind = self.array::<1>()?[0];
        let size = self.u64()?;
        let mode = u32::from_le_bytes(self.array()?);
        let mtime_ns = i64::from_le_bytes(self.array()?);
        let owner = match self.array::<1>()?[0] {
            0 => None,
            1 => Some(super::manifest::Owner {
                uid: u32::from_le_bytes(self.array()?),
                gid: u32::from_le_bytes(self.array()?),
            }),
            other => {
                return Some(Err(StorageError::BadManifest {
                    path: origin.to_path_buf(),
                    reason: format!("unknown owner marker {other}"),
                }));
            }
        };
        let (kind, sha256) = match kind {
            0 => (
                Kind::File,
                Some(Sha256Digest::from_slice(self.take(32)?).ok()?),
            ),
            1 => (Kind::Dir, None),
            2 => {
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(self.bytes()?));
                (Kind::Symlink { target }, None)
            }
            _ => {
                return Some(Err(StorageError::BadManifest {
                    path: origin.to_path_buf(),
                    reason: format!("unknown entry kind {kind}"),
                }));
            }
        };
        Some(RelPath::from_bytes(path).map(|path| Entry {
            path,
            kind,
            size,
            mode,
            mtime_ns,
            sha256,
            owner,
        }))
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
