//! [`StorageError`]: everything the storage-tree code can fail with, each variant naming the path
//! it is about, and its one mapping into [`AgentError`] (and so into a gRPC code).
//!
//! The mapping is what the coordinator branches on: a digest that does not match is `DataLoss`
//! (never retried silently); a path or stream entry the agent refuses is `InvalidArgument`; a
//! tree that is not in a state we can copy (a file changed while being read, a FIFO in the tree,
//! an absolute symlink) is `FailedPrecondition` — retry, or ask the operator to fix the tree; an
//! OS error, or a stream that ended early because its sender failed, is `Io`. Problems with the
//! tree's own content are `FailedPrecondition` rather than `InvalidArgument` because the request
//! was fine: the host's tree is what must change.

use std::path::PathBuf;

use hostshift_shared::digest::Sha256Digest;

use crate::error::AgentError;

/// Everything a storage-tree operation can fail with. Every variant carries the path it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A path (from a manifest, a request or a stream entry) that is not a clean relative path
    /// inside the tree.
    #[error("refused path {path:?}: {reason}")]
    BadPath {
        /// The path as given (lossy for display when it is not UTF-8).
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// An existing directory on the way to `path` is a symlink: following it could leave the tree.
    #[error("refused {path}: {link} is a symlink, and writing through it could leave the tree")]
    SymlinkInPath {
        /// The full path that was to be used.
        path: PathBuf,
        /// The ancestor that is a symlink.
        link: PathBuf,
    },
    /// An entry of the received tar stream that the agent does not accept.
    #[error("refused stream entry {path:?}: {reason}")]
    Refused {
        /// The entry's path as it appears in the stream.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// Something in the tree on this host that cannot be copied safely; the operator must fix it.
    #[error("{path}: {reason}; move or fix it on this host, then sync again")]
    NotPortable {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file changed while it was being read (or since the manifest was built): the copy would
    /// be torn, so nothing was sent for it. Building the manifest again and retrying fixes it.
    #[error(
        "{path} changed while it was being read ({detail}); build the manifest again and retry"
    )]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
        /// What changed.
        detail: String,
    },
    /// The tree this host is writing to changed since its manifest was built.
    #[error("{path} changed since the manifest of this tree was built ({detail}); sync again")]
    TargetChanged {
        /// The path.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Received content whose SHA-256 is not the one the manifest promised.
    #[error("{path}: received content has SHA-256 {actual}, the manifest says {expected}")]
    DigestMismatch {
        /// The file (relative to the tree's root).
        path: PathBuf,
        /// From the source's manifest.
        expected: Sha256Digest,
        /// Of what arrived.
        actual: Sha256Digest,
    },
    /// An entry whose size or symlink target is not the one the manifest promised.
    #[error("{path}: {detail}")]
    Mismatch {
        /// The entry concerned.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The stream ended early (the sender failed or went away): nothing is wrong with the data
    /// that did arrive, and syncing again may succeed.
    #[error("{path}: {detail}")]
    Truncated {
        /// The entry that was being received, or the first one missing.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A serialized manifest that cannot be decoded.
    #[error("manifest {path}: {reason}")]
    BadManifest {
        /// Where it was read from (the caller names a manifest that came in a message).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An OS error on a path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "rename", ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The operation was cancelled (agent shutdown, or the RPC went away).
    #[error("cancelled while working on {path}")]
    Cancelled {
        /// The tree's root or the entry being processed.
        path: PathBuf,
    },
}

impl StorageError {
    /// An I/O error on a path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for a failure to write a walk file (this host's state folder: a full disk, a
    /// missing folder), as opposed to one reading the tree.
    pub fn is_walk_file_write(&self) -> bool {
        matches!(self, Self::Io { op, .. } if *op == super::walkfile::WRITE_OP)
    }

    /// True for errors that mean "data does not match what was promised" (`DataLoss`).
    pub fn is_data_loss(&self) -> bool {
        matches!(self, Self::DigestMismatch { .. } | Self::Mismatch { .. })
    }
}

impl From<StorageError> for AgentError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io { op, path, source } => AgentError::Io { op, path, source },
            StorageError::Cancelled { .. } => AgentError::Cancelled,
            StorageError::DigestMismatch { .. } | StorageError::Mismatch { .. } => {
                AgentError::DataLoss(e.to_string())
            }
            StorageError::Truncated { path, detail } => AgentError::Io {
                op: "receive",
                path,
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, detail),
            },
            StorageError::BadPath { .. }
            | StorageError::SymlinkInPath { .. }
            | StorageError::Refused { .. }
            | StorageError::BadManifest { .. } => AgentError::InvalidArgument(e.to_string()),
            StorageError::NotPortable { .. }
            | StorageError::ChangedWhileReading { .. }
            | StorageError::TargetChanged { .. } => AgentError::FailedPrecondition(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_maps_to_the_code_the_coordinator_branches_on() {
        let d = Sha256Digest::of(b"x");
        let mismatch = StorageError::DigestMismatch {
            path: "a".into(),
            expected: d,
            actual: d,
        };
        assert!(mismatch.is_data_loss());
        assert!(matches!(AgentError::from(mismatch), AgentError::DataLoss(m) if m.contains('a')));
        let refused = StorageError::Refused {
            path: "../evil".into(),
            reason: "not a clean relative path".into(),
        };
        assert!(
            matches!(AgentError::from(refused), AgentError::InvalidArgument(m)
                if m.contains("../evil"))
        );
        let changed = StorageError::ChangedWhileReading {
            path: "f".into(),
            detail: "size".into(),
        };
        assert!(matches!(
            AgentError::from(changed),
            AgentError::FailedPrecondition(_)
        ));
        let io = StorageError::io("read", "/x", std::io::Error::other("boom"));
        assert!(matches!(
            AgentError::from(io),
            AgentError::Io { op: "read", .. }
        ));
    }
}
