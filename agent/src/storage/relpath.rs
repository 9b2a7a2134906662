//! [`RelPath`]: the only way a path inside a storage tree is represented, and [`join_under`], the
//! only way one becomes a path on this host.
//!
//! A `RelPath` is checked once, when it is made (from a directory walk, a decoded manifest or a
//! tar header): relative, non-empty, no NUL, no `.`, `..` or empty components, and not inside the
//! agent's staging directory. Names need not be UTF-8: the bytes are kept as they are. Ordering is
//! component by component, so a directory sorts right before its contents (`a`, `a/b`, `a.txt`):
//! manifests sorted this way can be merged in one pass, and reversing the order lists children
//! before their parents (the order deletions need).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::StorageError;

/// Names of the agent's staging directories under a tree's root start with this (the full name
/// is `.hostshift-staging-<id>`). No path in a manifest or a stream may start with it.
pub const STAGING_PREFIX: &str = ".hostshift-staging-";

/// A validated relative path inside a storage tree.
///
/// Equality, hashing and order work on the bytes: a checked path has no `.` or empty
/// components, so two paths name the same entry exactly when their bytes are equal, and
/// comparing bytes with `/` ranked below every other byte is the component-by-component order
/// (`a` < `a/b` < `a.b`) — without splitting into components, which dominated the cost of
/// comparing manifests.
#[derive(Clone)]
pub struct RelPath(PathBuf);

impl PartialEq for RelPath {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RelPath {}

impl std::hash::Hash for RelPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        let common = a.iter().zip(b).position(|(x, y)| x != y);
        match common {
            // `/` ends a component: it sorts before any byte a longer name could continue with.
            Some(i) => {
                let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
                rank(a[i]).cmp(&rank(b[i]))
            }
            None => a.len().cmp(&b.len()),
        }
    }
}

impl RelPath {
    /// Checks and wraps a path.
    ///
    /// # Errors
    /// [`StorageError::BadPath`] when the path is empty, absolute, contains a NUL byte, a `.`,
    /// `..` or empty component (`a//b`, `a/`), or starts with the staging directory's name.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::from_bytes(path.as_ref().as_os_str().as_bytes())
    }

    /// Checks and wraps raw bytes (a tar header, a decoded manifest).
    ///
    /// # Errors
    /// As [`RelPath::new`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        if let Some(reason) = problem(bytes) {
            return Err(StorageError::BadPath {
                path: PathBuf::from(OsStr::from_bytes(bytes)),
                reason: reason.to_string(),
            });
        }
        Ok(Self(PathBuf::from(OsStr::from_bytes(bytes))))
    }

    /// `self/name`, checked.
    ///
    /// # Errors
    /// As [`RelPath::new`], for a `name` that is not a single clean component.
    pub fn child(&self, name: &OsStr) -> Result<Self, StorageError> {
        if name.as_bytes().contains(&b'/') {
            return Err(StorageError::BadPath {
                path: self.0.join(name),
                reason: "a name may not contain '/'".to_string(),
            });
        }
        Self::new(self.0.join(name))
    }

    /// The path, relative to the tree's root.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The raw bytes of the path.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }

    /// The containing directory, or `None` for an entry directly under the root.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| Self(p.to_path_buf()))
    }

    /// Number of components (`a` is 1, `a/b` is 2).
    pub fn depth(&self) -> usize {
        self.0.components().count()
    }

    /// True when `self` is `ancestor` or lies below it (component-wise, so `ab` is not below `a`).
    pub fn is_within(&self, ancestor: &RelPath) -> bool {
        self.0.starts_with(&ancestor.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.0)
    }
}

/// True for a name the agent uses for its staging directories (and so skips and refuses).
pub fn is_staging_name(name: &[u8]) -> bool {
    name.starts_with(STAGING_PREFIX.trim_end_matches('-').as_bytes())
}

fn problem(bytes: &[u8]) -> Option<&'static str> {
    if bytes.is_empty() {
        return Some("empty path");
    }
    if bytes.contains(&0) {
        return Some("contains a NUL byte");
    }
    if bytes.starts_with(b"/") {
        return Some("absolute path");
    }
    for (i, part) in bytes.split(|b| *b == b'/').enumerate() {
        match part {
            b"" => return Some("empty component (\"//\" or a trailing '/')"),
            b"." => return Some("'.' component"),
            b".." => return Some("'..' component (it could leave the tree)"),
            _ if i == 0 && is_staging_name(part) => {
                return Some("reserved for the agent's staging directory");
            }
            _ => {}
        }
    }
    None
}

/// `root/rel`, refusing when an existing directory between `root` and the target is a symlink,
/// so that a link placed in the tree cannot redirect a write (or a read) outside it.
///
/// The last component is not checked: callers act on it with calls that do not follow it
/// (`rename`, `unlink`, `lstat`, `symlink`, `open` with `O_NOFOLLOW`). The root itself is trusted
/// (it comes from the agent's config). Checks are made on paths, so they stop links that exist in
/// the tree, not a local process swapping one in between this check and the use.
///
/// # Errors
/// [`StorageError::SymlinkInPath`] naming the link; [`StorageError::Io`] when an ancestor cannot
/// be inspected.
pub fn join_under(root: &Path, rel: &RelPath) -> Result<PathBuf, StorageError> {
    let full = root.join(&rel.0);
    let mut cur = root.to_path_buf();
    let mut parents = rel.0.components().peekable();
    while let Some(c) = parents.next() {
        if parents.peek().is_none() {
            break;
        }
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StorageError::SymlinkInPath {
                    path: full,
                    link: cur,
                });
            }
            Ok(_) => {}
            // Nothing deeper exists either: the caller creates real directories from here.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                break;
            }
            Err(e) => return Err(StorageError::io("inspect", cur, e)),
        }
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_are_not_clean_and_relative() {
        for bad in [
            &b""[..],
            b"/abs",
            b"../evil",
            b"a/../../evil",
            b"a/./b",
            b"./a",
            b".",
            b"a//b",
            b"a/",
            b"a\0b",
            b".hostshift-staging-1/x",
            b".hostshift-staging",
        ] {
            assert!(
                matches!(RelPath::from_bytes(bad), Err(StorageError::BadPath { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn accepts_non_utf8_names_and_staging_like_names_deeper_down() {
        let p = RelPath::from_bytes(b"dir/caf\xe9.bin").unwrap();
        assert_eq!(p.as_bytes(), b"dir/caf\xe9.bin");
        assert_eq!(p.depth(), 2);
        assert_eq!(p.parent(), Some(RelPath::new("dir").unwrap()));
        assert!(RelPath::new("a/.hostshift-staging-1").is_ok());
        assert!(RelPath::new("a").unwrap().child(OsStr::new("b/c")).is_err());
    }

    #[test]
    fn orders_a_directory_right_before_its_contents() {
        let mut v: Vec<RelPath> = ["a.txt", "a/b", "a", "b"]
            .iter()
            .map(|s| RelPath::new(s).unwrap())
            .collect();
        v.sort();
        let names: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a", "a/b", "a.txt", "b"]);
        assert!(v[1].is_within(&v[0]));
        assert!(!v[2].is_within(&v[0]));
    }

    #[test]
    fn byte_order_is_the_component_order() {
        let names: Vec<&[u8]> = vec![
            b"a",
            b"a/b",
            b"a.b",
            b"a-b",
            b"a b",
            b"a!",
            b"ab",
            b"a/b/c",
            b"a/b.c",
            b"a/b-c",
            b"a/\xff",
            b"a\xff",
            b"a0/x",
            b"a/0",
            b"b",
            b"\xe9t\xe9",
            b"a/b/c/d",
            b"a.",
        ];
        let paths: Vec<RelPath> = names
            .iter()
            .map(|n| RelPath::from_bytes(n).unwrap())
            .collect();
        for x in &paths {
            for y in &paths {
                assert_eq!(x.cmp(y), x.as_path().cmp(y.as_path()), "{x} vs {y}");
                assert_eq!(x == y, x.as_path() == y.as_path(), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn join_under_refuses_a_symlinked_directory_on_the_way() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();

        let through = RelPath::new("link/file").unwrap();
        let err = join_under(root.path(), &through).unwrap_err();
        assert!(
            matches!(&err, StorageError::SymlinkInPath { link, .. } if link.ends_with("link")),
            "{err}"
        );
        // The link itself may be named (it is replaced or removed, never followed).
        let link = RelPath::new("link").unwrap();
        assert_eq!(
            join_under(root.path(), &link).unwrap(),
            root.path().join("link")
        );
        // Directories that do not exist yet are fine: the caller creates real ones.
        let fresh = RelPath::new("real/new/deeper/file").unwrap();
        assert!(join_under(root.path(), &fresh).is_ok());
    }
}
