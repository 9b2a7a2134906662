//! File-tree snapshots for assertions: "the old host is byte-for-byte unchanged", "the new tree
//! equals the old one".

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hostshift_shared::digest::Sha256Digest;

/// One entry of a snapshot: kind, content digest (files), link target (symlinks), mode, mtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub kind: &'static str,
    pub content: String,
    pub mode: u32,
    pub mtime_ns: i64,
}

/// Every entry below `root` (not following links), keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Snap> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            // A live tree (an agent still finishing after its client was killed) may drop an
            // entry between the listing and the lstat; it is simply not part of the snapshot.
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("lstat {}: {e}", p.display()),
            };
            let (kind, content) = if m.file_type().is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p)
                        .expect("readlink")
                        .display()
                        .to_string(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ("dir", String::new())
            } else {
                match std::fs::read(&p) {
                    Ok(bytes) => ("file", Sha256Digest::of(&bytes).to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("read {}: {e}", p.display()),
                }
            };
            let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            out.insert(
                rel,
                Snap {
                    kind,
                    content,
                    mode: m.mode() & 0o7777,
                    mtime_ns,
                },
            );
        }
    }
    out
}

/// Snapshot without directory mtimes (they move when anything inside changes).
pub fn content(root: &Path) -> BTreeMap<String, (String, String, u32)> {
    snapshot(root)
        .into_iter()
        .map(|(k, v)| (k, (v.kind.to_string(), v.content, v.mode)))
        .collect()
}

/// Asserts two trees have the same content (kinds, bytes, link targets, modes), printing only the
/// entries that differ.
#[track_caller]
pub fn assert_same_content(old: &Path, new: &Path) {
    let (a, b) = (content(old), content(new));
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing on new: {k}")),
            Some(w) if w != v => diffs.push(format!("differs: {k}: old {v:?} new {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("only on new: {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
