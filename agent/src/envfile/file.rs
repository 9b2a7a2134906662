//! Reads a `.env` file and replaces it atomically: a temporary file in the same folder gets the
//! new text, the original's owner and mode, and an fsync; it is renamed over the original and the
//! folder is fsynced. A reader (or a crash) sees the old file or the new one, never half of one.
//! If the file changed between our read and the rename, nothing is written: our edit would
//! silently undo someone else's.
//!
//! A symlinked path is resolved first, so the link stays a link and its target is edited.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::AgentError;

/// Largest `.env` file we edit (larger is not a `.env` file; this bounds memory).
pub const MAX_ENV_FILE: u64 = 1024 * 1024;

/// A file as read, with what must survive the replacement.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The real path (symlinks resolved).
    pub path: PathBuf,
    /// The exact bytes read.
    pub bytes: Vec<u8>,
    /// The same, as text.
    pub text: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Reads `path`.
///
/// # Errors
/// `FailedPrecondition` when it is missing, not a regular file, too large or not UTF-8 text;
/// `Io` otherwise.
pub fn read(path: &Path) -> Result<Snapshot, AgentError> {
    let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AgentError::FailedPrecondition(format!(
            "{} does not exist on this host: copy it here first",
            path.display()
        )),
        _ => AgentError::io("resolve", path, e),
    })?;
    let meta = std::fs::metadata(&real).map_err(|e| AgentError::io("stat", &real, e))?;
    if !meta.is_file() {
        return Err(AgentError::FailedPrecondition(format!(
            "{} is not a regular file",
            real.display()
        )));
    }
    if meta.len() > MAX_ENV_FILE {
        return Err(AgentError::FailedPrecondition(format!(
            "{} has {} bytes; a .env file over {MAX_ENV_FILE} bytes is not edited",
            real.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(&real).map_err(|e| AgentError::io("read", &real, e))?;
    let text = String::from_utf8(bytes.clone()).map_err(|_| {
        AgentError::FailedPrecondition(format!("{} is not UTF-8 text", real.display()))
    })?;
    Ok(Snapshot {
        path: real,
        bytes,
        text,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Replaces the file `snap` was read from with `text`, keeping its owner and mode.
///
/// # Errors
/// `FailedPrecondition` when the file changed since `snap` was read, or its owner cannot be kept
/// (the agent is not root); `Io` on a file-system failure. The original is untouched then.
pub fn replace(snap: &Snapshot, text: &str) -> Result<(), AgentError> {
    let dir = snap.path.parent().unwrap_or(Path::new("/"));
    let name = snap
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp_path = dir.join(format!(
        ".{name}.hostshift-{}-{}.tmp",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |op, e| AgentError::io(op, &tmp_path, e);
    let mut tmp = TempFile(None);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_path)
        .map_err(|e| io("create", e))?;
    tmp.0 = Some(tmp_path.clone());
    f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
    std::os::unix::fs::fchown(&f, Some(snap.uid), Some(snap.gid)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            AgentError::FailedPrecondition(format!(
                "cannot keep the owner ({}:{}) of {}: the agent runs as uid {}; nothing was written",
                snap.uid,
                snap.gid,
                snap.path.display(),
                nix::unistd::geteuid()
            ))
        } else {
            io("chown", e)
        }
    })?;
    // After chown, which may clear set-id bits.
    f.set_permissions(Permissions::from_mode(snap.mode))
        .map_err(|e| io("chmod", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    drop(f);
    let now = std::fs::read(&snap.path).map_err(|e| AgentError::io("re-read", &snap.path, e))?;
    if now != snap.bytes {
        return Err(AgentError::FailedPrecondition(format!(
            "{} changed while it was being edited; nothing was written: run the command again",
            snap.path.display()
        )));
    }
    std::fs::rename(&tmp_path, &snap.path).map_err(|e| io("rename", e))?;
    tmp.0 = None;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io("fsync", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join(".env");
        std::fs::write(&p, "A=1\n").expect("write");
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).expect("chmod");
        let snap = read(&p).expect("read");
        replace(&snap, "A=2\n").expect("replace");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "A=2\n");
        let meta = std::fs::metadata(&p).expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (snap.uid, snap.gid));
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".env")]);
    }

    #[test]
    fn a_file_changed_since_it_was_read_is_not_overwritten() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join(".env");
        std::fs::write(&p, "A=1\n").expect("write");
        let snap = read(&p).expect("read");
        std::fs::write(&p, "A=someone else\n").expect("write");
        let e = replace(&snap, "A=2\n").expect_err("changed underneath");
        assert!(e.to_string().contains("changed while"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "A=someone else\n"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_symlink_stays_a_link_and_its_target_is_edited() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("real.env");
        let link = tmp.path().join(".env");
        std::fs::write(&target, "A=1\n").expect("write");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let snap = read(&link).expect("read");
        replace(&snap, "A=2\n").expect("replace");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("lstat")
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "A=2\n");
    }
}
