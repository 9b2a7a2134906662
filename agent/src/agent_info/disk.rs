//! Free and total space of the filesystem a path lives on.

use std::path::Path;

use crate::error::AgentError;

/// `(free_bytes, total_bytes)` of the filesystem holding `path`, or of its nearest existing
/// ancestor when `path` does not exist yet (a target root that sync will create).
///
/// # Errors
/// [`AgentError::Io`] (`statvfs <path>`) when even `/` cannot be examined.
pub fn fs_usage(path: &Path) -> Result<(u64, u64), AgentError> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let s = nix::sys::statvfs::statvfs(p)
        .map_err(|e| AgentError::io("statvfs", p, std::io::Error::from(e)))?;
    let frag = s.fragment_size();
    Ok((s.blocks_available() * frag, s.blocks() * frag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_path_uses_nearest_existing_ancestor() {
        let (free, total) = fs_usage(Path::new("/tmp/does/not/exist/yet")).expect("usage");
        assert!(total > 0 && free <= total);
    }
}
