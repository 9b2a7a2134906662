//! Folders of the agent's config that must not overlap, compared as the filesystem resolves them.
//!
//! A sync makes a storage tree equal to its source — including deleting what the source does not
//! have. Two trees that overlap (one inside the other, or the same folder reached two ways) would
//! each delete the other's files on every sync; a tree that contains the backup folder, the
//! agent's state or its own config and keys would delete or overwrite those; a tree at `/` or
//! `/usr` would do it to the whole system. So `check-config` (and `serve`, which validates the
//! same way) refuses all of these, after resolving `..` and symlinks: `/tmp/..`, `/tmp/x/../..`
//! and a symlink to `/` are `/`.

use std::path::{Component, Path, PathBuf};

/// Folders that are never a storage tree: the filesystem root and the system's top-level
/// folders (a tree *inside* one of them, e.g. `/srv/app/storage`, is fine).
pub const SYSTEM_ROOTS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/var/www",
];

/// `path` as the filesystem resolves it: the longest existing prefix through `canonicalize`
/// (symlinks and `..` resolved), the rest of the components applied lexically (`..` pops). A
/// relative path is returned as it is (validation reports it separately).
pub fn resolve(path: &Path) -> PathBuf {
    if !path.is_absolute() {
        return path.to_path_buf();
    }
    let comps: Vec<Component<'_>> = path.components().collect();
    // The longest prefix that exists, resolved by the filesystem.
    let mut split = comps.len();
    let mut base = None;
    while split > 0 {
        let prefix: PathBuf = comps[..split].iter().collect();
        if let Ok(c) = std::fs::canonicalize(&prefix) {
            base = Some(c);
            break;
        }
        split -= 1;
    }
    let mut out = base.unwrap_or_else(|| PathBuf::from("/"));
    for c in &comps[split..] {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Whether `path` (resolved) is the root or a top-level system folder.
pub fn is_system_root(resolved: &Path) -> bool {
    SYSTEM_ROOTS.iter().any(|r| Path::new(r) == resolved)
}

/// Whether one of two resolved paths is the other or lies inside it.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_symlinks_resolve_to_what_the_filesystem_means() {
        for p in ["/tmp/..", "/tmp/../", "/tmp/x-does-not-exist/../..", "/./"] {
            assert_eq!(resolve(Path::new(p)), PathBuf::from("/"), "{p}");
            assert!(is_system_root(&resolve(Path::new(p))), "{p}");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let link = tmp.path().join("to-root");
        std::os::unix::fs::symlink("/", &link).expect("symlink");
        assert_eq!(resolve(&link), PathBuf::from("/"));
        assert_eq!(resolve(&link.join("usr/../etc")), PathBuf::from("/etc"));
        let real = resolve(tmp.path());
        assert_eq!(
            resolve(&tmp.path().join("a/b/../c")),
            real.join("a/c"),
            "missing parts are applied lexically"
        );
        assert!(!is_system_root(&real.join("a")));
    }

    #[test]
    fn overlap_is_inside_either_way_but_not_a_shared_prefix_of_names() {
        assert!(overlaps(Path::new("/srv/a"), Path::new("/srv/a/b")));
        assert!(overlaps(Path::new("/srv/a/b"), Path::new("/srv/a")));
        assert!(overlaps(Path::new("/srv/a"), Path::new("/srv/a")));
        assert!(!overlaps(Path::new("/srv/a"), Path::new("/srv/ab")));
    }
}
