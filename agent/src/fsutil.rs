//! File-system helpers every part of the agent shares: the one atomic replace (stage beside,
//! fsync, owner and mode, rename, fsync the folder) used for config files, freeze state, restored
//! files and nginx sites. It sits here, not in a service's folder, so that no service imports
//! another's internals for it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::AgentError;

/// Writes `bytes` to `path` atomically: a temporary file beside it (mode 0600 while written),
/// fsync, owner and mode set, rename over `path`, fsync of the folder. The parent folder is
/// created if missing. `uid`/`gid` are applied when the agent may (root); otherwise the file
/// belongs to the agent's user.
///
/// # Errors
/// `Io` with the path; the original file is untouched then.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), AgentError> {
    let dir = path.parent().ok_or_else(|| {
        AgentError::InvalidArgument(format!("{} has no parent folder", path.display()))
    })?;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("create", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.hostshift-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AgentError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| AgentError::io("write", &tmp, e))?;
        if let Some((uid, gid)) = owner
            && nix::unistd::geteuid().is_root()
        {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| AgentError::io("chown", &tmp, e))?;
        }
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
            .map_err(|e| AgentError::io("chmod", &tmp, e))?;
        f.sync_all().map_err(|e| AgentError::io("fsync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| AgentError::io("rename into place", path, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("sub/.env");
        write_atomic(&p, b"one", 0o640, None).expect("write");
        write_atomic(&p, b"two", 0o600, None).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(
            std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(p.parent().expect("dir"))
                .expect("ls")
                .count(),
            1,
            "no temp file left"
        );
    }
}
