//! Helpers for the storage tests: real trees in temporary directories, raw tar entries (to build
//! streams the `tar` crate's builder would refuse to write), and snapshots of what lies outside a
//! tree's root.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tokio_util::sync::CancellationToken;

use super::manifest::{Manifest, build_full};

/// Writes `content` to `root/rel` (parents created) with `mode` and an mtime of `secs.nanos`.
pub fn put(root: &Path, rel: &str, content: &[u8], mode: u32, secs: i64, nanos: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    filetime::set_file_mtime(&p, FileTime::from_unix_time(secs, nanos)).unwrap();
}

/// Creates the symlink `root/rel` → `target`.
pub fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// Sets a directory's mtime (after its contents are in place).
pub fn dir_mtime(root: &Path, rel: &str, secs: i64) {
    filetime::set_file_mtime(root.join(rel), FileTime::from_unix_time(secs, 0)).unwrap();
}

/// A full manifest (every byte digested).
pub fn manifest(root: &Path) -> Manifest {
    build_full(root, &CancellationToken::new()).unwrap()
}

/// Everything under `dir` (recursively, links not followed) except `skip`: path → content, link
/// target, or `<dir>`. Used to prove nothing outside a root was written or deleted.
pub fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_dir() {
                stack.push(p.clone());
                b"<dir>".to_vec()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p, v);
        }
    }
    out
}

/// Appends one tar entry with raw header fields, bypassing the builder's checks.
pub fn raw_entry(tar: &mut Vec<u8>, path: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..path.len()].copy_from_slice(path);
        g.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// Appends the end-of-archive marker.
pub fn raw_end(tar: &mut Vec<u8>) {
    tar.extend_from_slice(&[0u8; 1024]);
}
