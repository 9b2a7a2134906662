//! Manifests: what a storage tree holds, entry by entry (path, kind, size, mode, mtime and, for
//! files, the SHA-256 of the content), and the rules a manifest must follow whoever made it —
//! including [`link_target_problem`], which decides whether a symlink stays inside the tree.
//! [`build`] (in [`walk`](super::walk), re-exported here) makes one from a directory.
//!
//! A manifest made on this host also keeps, per file, a [`Stamp`]: the device, inode and
//! status-change time of the file the digest was computed from, and when. Stamps never leave the
//! host (the network form has none): they let the next walk reuse a digest, and `pack` skip
//! re-reading a file to check it, only while the file is provably the same one.

use std::path::{Path, PathBuf};

use hostshift_shared::digest::Sha256Digest;

use super::error::StorageError;
use super::relpath::RelPath;

pub use super::walk::{build, build_full};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, with its (relative, in-tree) target exactly as stored.
    Symlink {
        /// The link's target.
        target: PathBuf,
    },
}

/// Numeric owner and group of an entry, as this host numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The names of the user and group ids a manifest's entries use, as the host that walked the
/// tree resolves them (ids without a name there are not listed). Ids differ between hosts;
/// names are what [`Manifest::localize_owners`] carries across, like `tar` and `rsync -o -g`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerNames {
    /// uid → user name.
    pub users: std::collections::BTreeMap<u32, String>,
    /// gid → group name.
    pub groups: std::collections::BTreeMap<u32, String>,
}

/// One path of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where, relative to the tree's root.
    pub path: RelPath,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Length of a file's content; 0 for directories and symlinks.
    pub size: u64,
    /// Permission bits (`0o7777`; files never carry set-id bits; symlinks are `0o777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// SHA-256 of a file's content; `None` for directories and symlinks.
    pub sha256: Option<Sha256Digest>,
    /// Owner and group; `None` when not tracked (a manifest given to a target that does not
    /// carry ownership: see [`Manifest::localize_owners`]).
    pub owner: Option<Owner>,
}

impl Entry {
    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == Kind::File
    }

    /// Checks the invariants a manifest from elsewhere (the network, a cache file) must hold.
    pub(super) fn problem(&self) -> Option<String> {
        match &self.kind {
            Kind::File if self.sha256.is_none() => Some("a file without a digest".into()),
            Kind::File if self.mode & !0o1777 != 0 => Some(format!("file mode {:o}", self.mode)),
            Kind::File => None,
            _ if self.sha256.is_some() || self.size != 0 => {
                Some("a directory or symlink with a size or digest".into())
            }
            Kind::Dir if self.mode & !0o7777 != 0 => Some(format!("mode {:o}", self.mode)),
            Kind::Dir => None,
            Kind::Symlink { target } => link_target_problem(&self.path, target).map(String::from),
        }
    }
}

/// What this host knows about the file a digest was computed from. `ctime` moves on every write,
/// `chmod`, `utime` or rename and cannot be set by a program, so a file whose device, inode and
/// ctime are unchanged has not been touched since — except by a second write within the same
/// clock tick, which is why a stamp is trusted only for files last changed well before
/// `checked_at_ns` (see `walk` and `pack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Device of the file.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// Its status-change time, ns since the epoch.
    pub ctime_ns: i64,
    /// When the digest was known to match the content: the start of the walk that read the file,
    /// or the moment a verified copy was installed.
    pub checked_at_ns: i64,
}

impl Stamp {
    /// The stamp of `meta` (from `lstat` or `fstat`), checked at `checked_at_ns`.
    pub fn of(meta: &std::fs::Metadata, checked_at_ns: i64) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            checked_at_ns,
        }
    }

    /// True when `meta` is still the file this stamp describes, untouched.
    pub fn same_file(&self, meta: &std::fs::Metadata) -> bool {
        let now = Self::of(meta, self.checked_at_ns);
        (now.dev, now.ino, now.ctime_ns) == (self.dev, self.ino, self.ctime_ns)
    }
}

/// A tree's entries, sorted by path, each directory before its contents. Two manifests are
/// equal when their entries are (when they were made, and the local [`Stamp`]s, do not matter).
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    entries: Vec<Entry>,
    /// Wall-clock time the walk that made it started (ns since the epoch; 0 when unknown). A
    /// cached digest is trusted only for files last modified well before it (see `walk`).
    walked_at_ns: i64,
    /// Empty, or one per entry (`None` for directories, symlinks and files without one).
    stamps: Vec<Option<Stamp>>,
    /// Names of the ids the entries use.
    names: OwnerNames,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Manifest {}

impl Manifest {
    /// A manifest from entries in any order (as decoded from a message). It may be a whole tree
    /// or just a list of entries (a batch of a delta's `send`), so parents need not be listed —
    /// but a listed parent must be a directory.
    ///
    /// # Errors
    /// [`StorageError::BadManifest`] for a duplicate path, an entry whose listed parent is not a
    /// directory, a file without a digest, or a symlink that leaves the tree.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, StorageError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let bad = |path: &RelPath, reason: String| StorageError::BadManifest {
            path: path.as_path().to_path_buf(),
            reason,
        };
        for pair in entries.windows(2) {
            if pair[0].path == pair[1].path {
                return Err(bad(&pair[0].path, "listed twice".into()));
            }
        }
        let m = Self {
            entries,
            walked_at_ns: 0,
            stamps: Vec::new(),
            names: OwnerNames::default(),
        };
        for e in &m.entries {
            if let Some(reason) = e.problem() {
                return Err(bad(&e.path, reason));
            }
            if let Some(parent) = e.path.parent()
                && m.get(&parent).is_some_and(|p| p.kind != Kind::Dir)
            {
                return Err(bad(
                    &e.path,
                    format!("its parent {parent} is not a directory"),
                ));
            }
        }
        Ok(m)
    }

    /// A manifest from a walk of a real tree (whose entries meet the rules by construction),
    /// with the stamps of its files.
    pub(super) fn from_walk(mut walked: Vec<(Entry, Option<Stamp>)>, walked_at_ns: i64) -> Self {
        walked.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        // Not `unzip`: that held a second copy of every entry until the first was dropped. The
        // stamps are copied out (small), and the entries are collected in place (the standard
        // library reuses the allocation for a `map` of an owned iterator).
        let stamps = walked.iter().map(|(_, s)| *s).collect();
        let entries = walked.into_iter().map(|(e, _)| e).collect();
        let mut m = Self {
            entries,
            walked_at_ns,
            stamps,
            names: OwnerNames::default(),
        };
        m.names = m.resolve_names();
        m
    }

    /// The local names of every id the entries use (one lookup per distinct id).
    fn resolve_names(&self) -> OwnerNames {
        let owners = || self.entries.iter().filter_map(|e| e.owner);
        super::walkfile::resolve_names(
            &owners().map(|o| o.uid).collect(),
            &owners().map(|o| o.gid).collect(),
        )
    }

    /// The names of the ids the entries use (as the walking host resolved them).
    pub fn owner_names(&self) -> &OwnerNames {
        &self.names
    }

    /// Sets the names (as decoded).
    pub(super) fn set_owner_names(&mut self, names: OwnerNames) {
        self.names = names;
    }

    /// Turns a source host's owners into this host's ids, by name, the numeric id where the
    /// source has no name for it or this host has no such name (as `tar` and `rsync -o -g` do as
    /// root). Without `carry` (the agent is not root and cannot give files away) every owner is
    /// dropped: files then belong to the agent's user and ownership is not compared. Returns
    /// the source's user and group names that do not exist here, as `user NAME` / `group NAME`.
    pub fn localize_owners(&mut self, carry: bool) -> Vec<String> {
        use nix::unistd::{Group, User};
        if !carry {
            for e in &mut self.entries {
                e.owner = None;
            }
            return Vec::new();
        }
        let mut unknown = std::collections::BTreeSet::new();
        let mut uids: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut gids: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for e in &mut self.entries {
            let Some(o) = e.owner else { continue };
            let uid = *uids
                .entry(o.uid)
                .or_insert_with(|| match self.names.users.get(&o.uid) {
                    None => o.uid,
                    Some(name) => match User::from_name(name) {
                        Ok(Some(u)) => u.uid.as_raw(),
                        _ => {
                            unknown.insert(format!("user {name}"));
                            o.uid
                        }
                    },
                });
            let gid = *gids
                .entry(o.gid)
                .or_insert_with(|| match self.names.groups.get(&o.gid) {
                    None => o.gid,
                    Some(name) => match Group::from_name(name) {
                        Ok(Some(g)) => g.gid.as_raw(),
                        _ => {
                            unknown.insert(format!("group {name}"));
                            o.gid
                        }
                    },
                });
            e.owner = Some(Owner { uid, gid });
        }
        self.names = self.resolve_names();
        unknown.into_iter().collect()
    }

    /// This manifest with `extra` files added or replacing the entries of the same path (with
    /// their stamps): what a cache becomes once verified copies were installed since it was
    /// made. Use it only as a walk's cache.
    pub fn with_files(&self, extra: &[(Entry, Stamp)]) -> Self {
        let mut merged: std::collections::BTreeMap<&RelPath, (Entry, Option<Stamp>)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.path, (e.clone(), self.stamp_at(i))))
            .collect();
        for (e, stamp) in extra {
            merged.insert(&e.path, (e.clone(), Some(*stamp)));
        }
        let walked: Vec<(Entry, Option<Stamp>)> = merged.into_values().collect();
        Self::from_walk(walked, self.walked_at_ns)
    }

    fn stamp_at(&self, i: usize) -> Option<Stamp> {
        self.stamps.get(i).copied().flatten()
    }

    /// The entry for `path` and its stamp, when this host recorded one.
    pub fn get_stamped(&self, path: &RelPath) -> Option<(&Entry, Stamp)> {
        let i = self.index(path)?;
        Some((&self.entries[i], self.stamp_at(i)?))
    }

    /// The stamps, one per entry (empty for a manifest from the network).
    pub(super) fn stamps(&self) -> &[Option<Stamp>] {
        &self.stamps
    }

    fn index(&self, path: &RelPath) -> Option<usize> {
        self.entries.binary_search_by(|e| e.path.cmp(path)).ok()
    }

    /// When the walk that made this manifest started (ns since the epoch; 0 when unknown, e.g.
    /// for a manifest built with [`Manifest::new`]).
    pub fn walked_at_ns(&self) -> i64 {
        self.walked_at_ns
    }

    /// Sets [`Manifest::walked_at_ns`] (as read back from a cache file).
    pub(super) fn set_walked_at_ns(&mut self, ns: i64) {
        self.walked_at_ns = ns;
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry for `path`, if the tree has one.
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.index(path).map(|i| &self.entries[i])
    }

    /// Total length of all files.
    pub fn file_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// [`Manifest::localize_owners`] one entry at a time, for a source manifest read as a stream
/// (whose owner names come at its end: read them first, with
/// [`ManifestStream::check`](super::stream::ManifestStream::check)).
#[derive(Clone, Debug, Default)]
pub struct OwnerMap {
    carry: bool,
    uids: std::collections::HashMap<u32, u32>,
    gids: std::collections::HashMap<u32, u32>,
}

impl OwnerMap {
    /// The map of the source's ids that have a name there to this host's ids of the same name;
    /// also returns the names this host lacks (`user NAME` / `group NAME`). Without `carry`
    /// every owner is dropped, as in [`Manifest::localize_owners`].
    pub fn new(names: &OwnerNames, carry: bool) -> (Self, Vec<String>) {
        use nix::unistd::{Group, User};
        let mut map = Self {
            carry,
            ..Self::default()
        };
        if !carry {
            return (map, Vec::new());
        }
        let mut unknown = Vec::new();
        for (id, name) in &names.users {
            match User::from_name(name) {
                Ok(Some(u)) => {
                    map.uids.insert(*id, u.uid.as_raw());
                }
                _ => unknown.push(format!("user {name}")),
            }
        }
        for (id, name) in &names.groups {
            match Group::from_name(name) {
                Ok(Some(g)) => {
                    map.gids.insert(*id, g.gid.as_raw());
                }
                _ => unknown.push(format!("group {name}")),
            }
        }
        unknown.sort();
        (map, unknown)
    }

    /// Turns `e`'s owner into this host's ids (or drops it, see [`OwnerMap::new`]).
    pub fn localize(&self, e: &mut Entry) {
        if !self.carry {
            e.owner = None;
            return;
        }
        if let Some(o) = &mut e.owner {
            o.uid = self.uids.get(&o.uid).copied().unwrap_or(o.uid);
            o.gid = self.gids.get(&o.gid).copied().unwrap_or(o.gid);
        }
    }
}

/// Why a symlink target is refused, if it is: it must be relative, non-empty and stay inside the
/// tree. Only `..` components at the start are accepted (`../../x/y`): a `..` after a name could
/// climb out through another link (`d/..` where `d` is itself a link), which no check of the
/// text alone can rule out.
pub fn link_target_problem(link: &RelPath, target: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Some("the symlink's target is empty");
    }
    if bytes.contains(&0) {
        return Some("the symlink's target contains a NUL byte");
    }
    if bytes.starts_with(b"/") {
        return Some("the symlink's target is absolute");
    }
    let mut ups = 0;
    let mut named = false;
    for part in bytes.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if named => return Some("the symlink's target has '..' after a name"),
            b".." => ups += 1,
            _ => named = true,
        }
    }
    (ups >= link.depth()).then_some("the symlink's target points outside the tree")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_may_climb_only_as_far_as_the_root_and_only_at_the_start() {
        let deep = RelPath::new("a/b/link").unwrap();
        assert_eq!(link_target_problem(&deep, Path::new("../../x")), None);
        assert_eq!(link_target_problem(&deep, Path::new("./../c/./d")), None);
        assert!(link_target_problem(&deep, Path::new("../../../x")).is_some());
        assert!(link_target_problem(&deep, Path::new("c/../d")).is_some());
        assert!(link_target_problem(&deep, Path::new("/a")).is_some());
        assert!(link_target_problem(&deep, Path::new("")).is_some());
    }

    #[test]
    fn new_refuses_duplicates_non_directory_parents_and_files_without_digest() {
        let e = |p: &str, kind: Kind, sha: Option<Sha256Digest>| Entry {
            path: RelPath::new(p).unwrap(),
            kind,
            size: 0,
            mode: 0o644,
            mtime_ns: 0,
            sha256: sha,
            owner: None,
        };
        let d = Some(Sha256Digest::of(b""));
        assert!(Manifest::new(vec![e("a", Kind::Dir, None), e("a/f", Kind::File, d)]).is_ok());
        // A batch of entries to send lists no directories.
        assert!(Manifest::new(vec![e("a/f", Kind::File, d)]).is_ok());
        for bad in [
            vec![e("f", Kind::File, d), e("f", Kind::File, d)],
            vec![e("a", Kind::File, d), e("a/f", Kind::File, d)],
            vec![e("f", Kind::File, None)],
            vec![e(
                "l",
                Kind::Symlink {
                    target: "../x".into(),
                },
                None,
            )],
        ] {
            assert!(matches!(
                Manifest::new(bad),
                Err(StorageError::BadManifest { .. })
            ));
        }
    }
}
