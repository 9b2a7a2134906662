//! [`diff`]: what must change on the target so that its tree equals the source's, computed from
//! the two manifests in one merged pass over their sorted entries.
//!
//! The result splits the work by what it costs: entries whose content must travel (`send`),
//! directories to create or whose mode/mtime must be set (`dirs`), files and symlinks whose
//! content is already there but whose mode/mtime differ (`meta`, fixed without sending a byte),
//! and paths to remove (`delete`).
//!
//! Two rules make a commit of the delta converge in one pass:
//! - When a path changes between a directory and anything else, the target's old entry (and,
//!   for a directory, everything below it) is deleted whatever `delete_extraneous` says: the
//!   source is authoritative for that path, and nothing below a file can survive anyway.
//!   File ↔ symlink changes need no deletion: the rename that installs the new one replaces it.
//! - Every source directory whose listing the commit changes (an entry sent, created or deleted
//!   in it) is in `dirs` even when its own attributes match, because the commit's renames move
//!   its mtime and it must be set back afterwards. The root's own mtime is not tracked.

use std::borrow::Borrow;
use std::collections::BTreeSet;

use super::manifest::{Entry, Kind, Manifest};
use super::relpath::RelPath;

/// Attributes to set on a path whose content is already right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaFix {
    /// The path, relative to the root.
    pub path: RelPath,
    /// Permission bits (ignored for symlinks).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Owner and group to set (`None`: leave them).
    pub owner: Option<super::manifest::Owner>,
}

impl MetaFix {
    fn of(e: &Entry) -> Self {
        Self {
            path: e.path.clone(),
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            owner: e.owner,
        }
    }
}

/// What turns the target's tree into the source's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Source entries (files and symlinks) that are missing on the target or differ in content,
    /// size, kind or link target; sorted by path. Give them to `pack` on the source and as
    /// `expected` to `unpack` on the target.
    pub send: Vec<Entry>,
    /// Directories to create, or whose mode/mtime to set; parents before children.
    pub dirs: Vec<MetaFix>,
    /// Files and symlinks with the right content but another mode or mtime.
    pub meta: Vec<MetaFix>,
    /// Target entries to remove, children before their parents. Whole entries rather than paths:
    /// a commit removes a path only while it is still the kind of entry the target's manifest
    /// listed, so deleting again after the new entry was installed (a path that changed between
    /// directory and file) cannot remove the new one.
    pub delete: Vec<Entry>,
    /// Sum of the sizes of the files in `send`.
    pub bytes_to_send: u64,
}

impl Delta {
    /// True when the trees are already equal.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty()
            && self.dirs.is_empty()
            && self.meta.is_empty()
            && self.delete.is_empty()
    }
}

/// Compares a source tree with a target tree. With `delete_extraneous`, target entries the source
/// does not have are deleted; without it they are kept (except below a directory that the source
/// replaces with a file or symlink, see the module doc).
pub fn diff(source: &Manifest, target: &Manifest, delete_extraneous: bool) -> Delta {
    let mut send = Vec::new();
    let ok = |e| Ok::<&Entry, std::convert::Infallible>(e);
    let Ok(mut d) = diff_with(
        source.entries().iter().map(ok),
        target.entries().iter().map(ok),
        delete_extraneous,
        |seen, travels| {
            if travels {
                send.push(seen.source().clone());
            }
            Ok(())
        },
    );
    d.send = send;
    d
}

/// A source entry as [`diff_with`]'s merge meets it: one the target lacks, or with the target's
/// entry of the same path.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// Only the source has this path.
    New(&'a Entry),
    /// Both have it: the source's entry, then the target's.
    Both(&'a Entry, &'a Entry),
}

impl<'a> Seen<'a> {
    /// The source's entry.
    pub fn source(&self) -> &'a Entry {
        match *self {
            Seen::New(s) | Seen::Both(s, _) => s,
        }
    }
}

/// [`diff`] with both manifests coming one entry at a time, sorted by path (a
/// [`ManifestStream`](super::stream::ManifestStream) over a peer's manifest on disk, a
/// [`WalkFile`](super::walkfile::WalkFile) of this host's tree), so neither is ever whole in
/// memory. Each source entry goes to `on_source` with whether its content must travel, instead
/// of into [`Delta::send`] (left empty; `bytes_to_send` is set). What stays in memory: the
/// source's directories (to set them back after the commit's renames) and the delta's lists.
///
/// # Errors
/// The first error of `source`, `target` or `on_source`.
pub fn diff_with<S, T, E, I, J>(
    source: I,
    target: J,
    delete_extraneous: bool,
    mut on_source: impl FnMut(Seen<'_>, bool) -> Result<(), E>,
) -> Result<Delta, E>
where
    I: IntoIterator<Item = Result<S, E>>,
    S: Borrow<Entry>,
    J: IntoIterator<Item = Result<T, E>>,
    T: Borrow<Entry>,
{
    let mut d = Walk::default();
    let mut src = source.into_iter();
    let mut dst = target.into_iter();
    let mut s_cur: Option<S> = src.next().transpose()?;
    let mut t_cur: Option<T> = dst.next().transpose()?;
    // A target directory the source replaces with a non-directory: all below it goes.
    let mut replaced: Option<RelPath> = None;
    loop {
        let (s, t) = (
            s_cur.as_ref().map(Borrow::borrow),
            t_cur.as_ref().map(Borrow::borrow),
        );
        let Some(s) = s.filter(|s| t.is_none_or(|t| s.path <= t.path)) else {
            // A target entry the source does not have (or both are done).
            let Some(t) = t else { break };
            if delete_extraneous || replaced.as_ref().is_some_and(|r| t.path.is_within(r)) {
                d.delete(t);
            }
            t_cur = dst.next().transpose()?;
            continue;
        };
        let both = t.filter(|t| t.path == s.path);
        d.source_dir(s);
        let travels = match both {
            Some(t) => d.compare(s, t),
            None => d.add(s),
        };
        if travels {
            d.bytes_to_send += s.size;
        }
        on_source(both.map_or(Seen::New(s), |t| Seen::Both(s, t)), travels)?;
        if let Some(t) = both {
            if t.kind == Kind::Dir && s.kind != Kind::Dir {
                replaced = Some(t.path.clone());
            }
            t_cur = dst.next().transpose()?;
        }
        s_cur = src.next().transpose()?;
    }
    Ok(d.finish())
}

#[derive(Default)]
struct Walk {
    /// Every source directory, in path order.
    source_dirs: Vec<MetaFix>,
    /// Directories to create or whose attributes differ.
    dir_fixes: BTreeSet<RelPath>,
    meta: Vec<MetaFix>,
    delete: Vec<Entry>,
    /// Directories whose listing changes.
    touched: BTreeSet<RelPath>,
    bytes_to_send: u64,
}

impl Walk {
    fn source_dir(&mut self, s: &Entry) {
        if s.kind == Kind::Dir {
            self.source_dirs.push(MetaFix::of(s));
        }
    }

    /// A source entry that must be created on the target; true when its content must travel.
    fn add(&mut self, s: &Entry) -> bool {
        self.touch(&s.path);
        if s.kind == Kind::Dir {
            self.dir_fixes.insert(s.path.clone());
            false
        } else {
            true
        }
    }

    fn delete(&mut self, t: &Entry) {
        self.touch(&t.path);
        self.delete.push(t.clone());
    }

    fn touch(&mut self, path: &RelPath) {
        if let Some(p) = path.parent() {
            self.touched.insert(p);
        }
    }

    /// True when the source entry's content must travel.
    fn compare(&mut self, s: &Entry, t: &Entry) -> bool {
        // The source's owner counts only when it is tracked (see `Manifest::localize_owners`).
        let owner_differs = s.owner.is_some() && s.owner != t.owner;
        let attrs_differ = (s.mode, s.mtime_ns) != (t.mode, t.mtime_ns) || owner_differs;
        match (&s.kind, &t.kind) {
            (Kind::File, Kind::File) if (s.size, s.sha256) != (t.size, t.sha256) => self.add(s),
            (Kind::Symlink { target: a }, Kind::Symlink { target: b }) if a != b => self.add(s),
            (Kind::File, Kind::File) if attrs_differ => {
                self.meta.push(MetaFix::of(s));
                false
            }
            (Kind::Symlink { .. }, Kind::Symlink { .. })
                if s.mtime_ns != t.mtime_ns || owner_differs =>
            {
                self.meta.push(MetaFix::of(s));
                false
            }
            (Kind::Dir, Kind::Dir) if attrs_differ => {
                self.dir_fixes.insert(s.path.clone());
                false
            }
            (Kind::File, Kind::File)
            | (Kind::Symlink { .. }, Kind::Symlink { .. })
            | (Kind::Dir, Kind::Dir) => false,
            (_, Kind::Dir) | (Kind::Dir, _) => {
                // Between a directory and anything else: remove the old one first.
                self.delete(t);
                self.add(s)
            }
            // File ↔ symlink: installing the new entry replaces the old one atomically.
            _ => self.add(s),
        }
    }

    fn finish(mut self) -> Delta {
        let dirs = std::mem::take(&mut self.source_dirs)
            .into_iter()
            .filter(|e| self.dir_fixes.contains(&e.path) || self.touched.contains(&e.path))
            .collect();
        // Collected in path order (parents first); reversed, children come first.
        self.delete.reverse();
        Delta {
            send: Vec::new(),
            dirs,
            meta: self.meta,
            delete: self.delete,
            bytes_to_send: self.bytes_to_send,
        }
    }
}

#[cfg(test)]
mod tests {
    use hostshift_shared::digest::Sha256Digest;

    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }
    fn dir(path: &str, mtime_ns: i64) -> Entry {
        Entry {
            path: p(path),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns,
            sha256: None,
            owner: None,
        }
    }
    fn file(path: &str, content: &str, mode: u32, mtime_ns: i64) -> Entry {
        Entry {
            path: p(path),
            kind: Kind::File,
            size: content.len() as u64,
            mode,
            mtime_ns,
            sha256: Some(Sha256Digest::of(content.as_bytes())),
            owner: None,
        }
    }
    fn link(path: &str, target: &str, mtime_ns: i64) -> Entry {
        Entry {
            path: p(path),
            kind: Kind::Symlink {
                target: target.into(),
            },
            size: 0,
            mode: 0o777,
            mtime_ns,
            sha256: None,
            owner: None,
        }
    }
    fn m(entries: Vec<Entry>) -> Manifest {
        Manifest::new(entries).unwrap()
    }
    fn paths(v: &[Entry]) -> Vec<String> {
        v.iter().map(|e| e.path.to_string()).collect()
    }
    fn fixes(v: &[MetaFix]) -> Vec<String> {
        v.iter().map(|f| f.path.to_string()).collect()
    }
    fn rels(v: &[Entry]) -> Vec<String> {
        v.iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn identical_trees_need_nothing() {
        let tree = m(vec![
            dir("d", 1),
            file("d/f", "x", 0o644, 2),
            link("l", "d/f", 3),
        ]);
        assert!(diff(&tree, &tree, true).is_empty());
    }

    #[test]
    fn new_and_changed_entries_are_sent_and_their_directories_set_back() {
        let src = m(vec![
            dir("d", 10),
            file("d/changed", "new!", 0o644, 5),
            file("d/new", "abc", 0o644, 5),
            dir("d/sub", 11),
            link("d/sub/l", "../new", 5),
            file("same", "s", 0o644, 5),
        ]);
        let dst = m(vec![
            dir("d", 10),
            file("d/changed", "old", 0o644, 5),
            file("same", "s", 0o644, 5),
        ]);
        let d = diff(&src, &dst, true);
        assert_eq!(paths(&d.send), ["d/changed", "d/new", "d/sub/l"]);
        assert_eq!(d.bytes_to_send, 7);
        // d/sub is created; d's listing changes, so its mtime is set back after the renames.
        assert_eq!(fixes(&d.dirs), ["d", "d/sub"]);
        assert!(d.meta.is_empty() && d.delete.is_empty());
    }

    #[test]
    fn same_content_with_other_mode_or_mtime_is_fixed_without_sending() {
        let src = m(vec![
            file("f", "x", 0o600, 5),
            link("l", "f", 9),
            dir("d", 7),
        ]);
        let dst = m(vec![
            file("f", "x", 0o644, 5),
            link("l", "f", 1),
            dir("d", 8),
        ]);
        let d = diff(&src, &dst, true);
        assert!(d.send.is_empty());
        assert_eq!(fixes(&d.meta), ["f", "l"]);
        assert_eq!(d.meta[0].mode, 0o600);
        assert_eq!(fixes(&d.dirs), ["d"]);
    }

    #[test]
    fn a_retargeted_symlink_or_a_file_turned_symlink_is_sent_without_deleting() {
        let src = m(vec![
            link("a", "x", 1),
            link("b", "x", 1),
            file("x", "x", 0o644, 1),
        ]);
        let dst = m(vec![
            link("a", "y", 1),
            file("b", "b", 0o644, 1),
            file("x", "x", 0o644, 1),
        ]);
        let d = diff(&src, &dst, true);
        assert_eq!(paths(&d.send), ["a", "b"]);
        assert!(d.delete.is_empty());
    }

    #[test]
    fn extraneous_entries_are_deleted_children_first_only_when_asked() {
        let src = m(vec![file("keep", "k", 0o644, 1)]);
        let dst = m(vec![
            dir("old", 1),
            dir("old/deep", 1),
            file("old/deep/f", "f", 0o644, 1),
            file("old/g", "g", 0o644, 1),
            file("keep", "k", 0o644, 1),
            file("stray", "s", 0o644, 1),
        ]);
        let kept = diff(&src, &dst, false);
        assert!(kept.is_empty(), "{kept:?}");
        let d = diff(&src, &dst, true);
        assert_eq!(
            rels(&d.delete),
            ["stray", "old/g", "old/deep/f", "old/deep", "old"]
        );
        assert!(d.send.is_empty() && d.dirs.is_empty());
    }

    #[test]
    fn a_directory_replaced_by_a_file_goes_with_its_contents_even_without_delete() {
        let src = m(vec![
            file("a", "now a file", 0o644, 1),
            dir("b", 1),
            file("b/x", "x", 0o644, 1),
        ]);
        let dst = m(vec![
            dir("a", 1),
            dir("a/s", 1),
            file("a/s/f", "f", 0o644, 1),
            file("b", "was a file", 0o644, 1),
        ]);
        let d = diff(&src, &dst, false);
        assert_eq!(rels(&d.delete), ["b", "a/s/f", "a/s", "a"]);
        assert_eq!(paths(&d.send), ["a", "b/x"]);
        assert_eq!(fixes(&d.dirs), ["b"]);
    }
}
