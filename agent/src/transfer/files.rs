//! Config files on the target: verified bytes, `.env` overrides from the plan, then an atomic
//! replace that keeps (or sets) mode and owner.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hostshift_shared::dotenv::fingerprint;

use crate::envfile::edit;
use crate::error::AgentError;

/// Applies `overrides` (key → value) to `.env` text; returns the new text and the changes as
/// `KEY: old → new` lines where both values are digests ([`fingerprint`]): every `.env` value
/// is treated as a secret in what leaves the agent, whatever its key is called.
///
/// # Errors
/// `InvalidArgument` when the file is not UTF-8 text or a key is not a `.env` key.
pub fn apply_overrides(
    bytes: &[u8],
    overrides: &std::collections::HashMap<String, String>,
) -> Result<(Vec<u8>, Vec<String>), AgentError> {
    if overrides.is_empty() {
        return Ok((bytes.to_vec(), Vec::new()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        AgentError::InvalidArgument(
            "overrides apply to .env text files; this file is not UTF-8".into(),
        )
    })?;
    let mut ops: Vec<(String, Option<String>)> = overrides
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    ops.sort();
    let (new, changes) =
        edit::edit(text, &ops).map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
    let lines = changes
        .iter()
        .map(|c| {
            format!(
                "{}: {} → {}",
                c.key,
                fingerprint(c.old.as_deref()),
                fingerprint(c.new.as_deref())
            )
        })
        .collect();
    Ok((new.into_bytes(), lines))
}

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
    fn overrides_change_only_named_keys_and_redact_secrets() {
        let text = b"# c\nA=1\nJWT_SECRET=old\n";
        let o = [
            ("A".to_string(), "2".to_string()),
            ("JWT_SECRET".to_string(), "new".to_string()),
        ]
        .into_iter()
        .collect();
        let (new, changes) = apply_overrides(text, &o).expect("apply");
        assert_eq!(
            String::from_utf8(new).expect("utf8"),
            "# c\nA=2\nJWT_SECRET=new\n"
        );
        assert!(
            changes.contains(&format!(
                "A: {} → {}",
                fingerprint(Some("1")),
                fingerprint(Some("2"))
            )),
            "{changes:?}"
        );
        let secret = changes
            .iter()
            .find(|c| c.starts_with("JWT_SECRET:"))
            .expect("secret change listed");
        assert!(
            !secret.contains("old") && !secret.ends_with("new"),
            "{secret}"
        );
    }

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
