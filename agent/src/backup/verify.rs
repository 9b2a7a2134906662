//! Re-reading a backup: every artifact's size and SHA-256 against `manifest.json`. A mismatch is
//! reported per artifact, naming its file, so the operator knows exactly which part is damaged;
//! every artifact is checked even after the first problem. Blocking: run it in `spawn_blocking`.
//!
//! Also home of [`hash_file`] and [`HashingWriter`], which `create` and `s3` use to digest
//! artifacts as they are written or read, [`READ_BUFFER`] at a time.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hostshift_shared::digest::{Sha256Digest, StreamHasher};
use tokio_util::sync::CancellationToken;

use super::{Artifact, BackupManifest, read_manifest};
use crate::error::AgentError;
use crate::storage::RelPath;

/// Bytes read at a time while hashing (one buffer per call).
pub const READ_BUFFER: usize = 1024 * 1024;

/// What [`verify`] found for one backup.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// The backup.
    pub id: String,
    /// `(artifact file, problem)`, one per damaged artifact (or `manifest.json`).
    pub problems: Vec<(String, String)>,
    /// Bytes read.
    pub bytes_checked: u64,
}

impl Verdict {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `DataLoss` naming every damaged artifact, or `Ok`.
    ///
    /// # Errors
    /// When there is a problem.
    pub fn into_result(self) -> Result<(), AgentError> {
        if self.ok() {
            return Ok(());
        }
        let list: Vec<String> = self
            .problems
            .iter()
            .map(|(f, p)| format!("{f}: {p}"))
            .collect();
        Err(AgentError::DataLoss(format!(
            "backup {} is damaged: {}",
            self.id,
            list.join("; ")
        )))
    }
}

/// Streams `path` through SHA-256: `(length, digest)`. Does not follow a symlink at `path`.
///
/// # Errors
/// `Io`; `Cancelled`.
pub fn hash_file(
    path: &Path,
    cancel: &CancellationToken,
) -> Result<(u64, Sha256Digest), AgentError> {
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| AgentError::io("open", path, e))?;
    let mut h = StreamHasher::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AgentError::io("read", path, e)),
        }
    }
    Ok(h.finish())
}

/// The path of an artifact inside `backup`, refusing anything but a clean relative path (a
/// manifest edited by hand cannot make us read or write outside the backup).
///
/// # Errors
/// `DataLoss` naming the artifact.
pub fn artifact_path(backup: &Path, a: &Artifact) -> Result<PathBuf, AgentError> {
    RelPath::new(&a.file)
        .map(|r| backup.join(r.as_path()))
        .map_err(|e| AgentError::DataLoss(format!("artifact {}: {e}", a.file)))
}

/// What is wrong with one artifact (the verdict names the artifact beside it).
#[derive(Debug, thiserror::Error)]
enum Damage {
    /// Its path is refused, or hashing it failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The manifest's digest is not hex SHA-256.
    #[error("manifest digest: {0}")]
    ManifestDigest(String),
    /// It cannot be inspected.
    #[error("cannot read it: {0}")]
    Unreadable(io::Error),
    /// A folder, a link, ...
    #[error("not a regular file")]
    NotAFile,
    /// Its size on disk differs from the manifest's.
    #[error("{found} bytes, the manifest says {expected}")]
    Size {
        /// On disk.
        found: u64,
        /// In the manifest.
        expected: u64,
    },
    /// The bytes read differ from the manifest's size.
    #[error("{read} bytes read, the manifest says {expected}")]
    ReadSize {
        /// Read.
        read: u64,
        /// In the manifest.
        expected: u64,
    },
    /// The content differs.
    #[error("SHA-256 {found}, the manifest says {expected}")]
    Digest {
        /// Of the bytes read.
        found: Sha256Digest,
        /// In the manifest.
        expected: Sha256Digest,
    },
}

/// Checks one artifact: its size, then its SHA-256.
fn check(backup: &Path, a: &Artifact, cancel: &CancellationToken) -> Result<u64, Damage> {
    let path = artifact_path(backup, a)?;
    let expected = Sha256Digest::parse_hex(&a.sha256).map_err(|e| Damage::ManifestDigest(e.0))?;
    let meta = std::fs::symlink_metadata(&path).map_err(Damage::Unreadable)?;
    if !meta.is_file() {
        return Err(Damage::NotAFile);
    }
    if meta.len() != a.size {
        return Err(Damage::Size {
            found: meta.len(),
            expected: a.size,
        });
    }
    let (len, digest) = hash_file(&path, cancel)?;
    if len != a.size {
        return Err(Damage::ReadSize {
            read: len,
            expected: a.size,
        });
    }
    if digest != expected {
        return Err(Damage::Digest {
            found: digest,
            expected,
        });
    }
    Ok(len)
}

/// Verifies `artifacts` (of the manifest `m` of the backup in `backup`).
///
/// # Errors
/// `Cancelled` only; damage is reported in the [`Verdict`].
pub fn verify_artifacts(
    backup: &Path,
    m: &BackupManifest,
    artifacts: &[&Artifact],
    cancel: &CancellationToken,
) -> Result<Verdict, AgentError> {
    let mut v = Verdict {
        id: m.id.clone(),
        ..Verdict::default()
    };
    for a in artifacts {
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        match check(backup, a, cancel) {
            Ok(n) => v.bytes_checked += n,
            Err(p) => v.problems.push((a.file.clone(), p.to_string())),
        }
    }
    Ok(v)
}

/// Verifies every artifact of the backup in `backup` (a folder named after its id).
///
/// # Errors
/// `Cancelled` only; an unreadable manifest is a problem of the verdict.
pub fn verify(backup: &Path, cancel: &CancellationToken) -> Result<Verdict, AgentError> {
    let id = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match read_manifest(backup) {
        Ok(m) => {
            let all: Vec<&Artifact> = m.artifacts.iter().collect();
            verify_artifacts(backup, &m, &all, cancel)
        }
        Err(e) => Ok(Verdict {
            id,
            problems: vec![(super::MANIFEST.into(), e.to_string())],
            bytes_checked: 0,
        }),
    }
}

/// A writer that digests what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: StreamHasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: StreamHasher::new(),
        }
    }

    /// The inner writer, the length written and its digest.
    pub fn finish(self) -> (W, u64, Sha256Digest) {
        let (len, digest) = self.hasher.finish();
        (self.inner, len, digest)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::ArtifactKind;

    fn manifest_for(dir: &Path, files: &[(&str, &[u8])]) -> BackupManifest {
        let artifacts = files
            .iter()
            .map(|(name, data)| {
                std::fs::write(dir.join(name), data).expect("write");
                Artifact {
                    kind: ArtifactKind::File,
                    name: (*name).into(),
                    file: (*name).into(),
                    size: data.len() as u64,
                    sha256: Sha256Digest::of(data).to_string(),
                    source_path: None,
                    mode: None,
                    server_version: None,
                    entries: None,
                    root_mtime_ns: None,
                }
            })
            .collect();
        BackupManifest {
            format: 1,
            id: "x".into(),
            created_at: String::new(),
            created_unix_ns: 0,
            finished_at: String::new(),
            hostname: String::new(),
            role: String::new(),
            tools: Default::default(),
            artifacts,
        }
    }

    #[test]
    fn a_flipped_byte_is_named_and_the_others_still_checked() {
        let t = tempfile::tempdir().expect("tmp");
        let m = manifest_for(t.path(), &[("a", b"hello"), ("b", b"world")]);
        let mut bytes = std::fs::read(t.path().join("a")).expect("read");
        bytes[0] ^= 1;
        std::fs::write(t.path().join("a"), bytes).expect("write");
        let all: Vec<&Artifact> = m.artifacts.iter().collect();
        let v = verify_artifacts(t.path(), &m, &all, &CancellationToken::new()).expect("verify");
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert_eq!(v.problems[0].0, "a");
        assert!(v.problems[0].1.contains("SHA-256"), "{:?}", v.problems);
        assert_eq!(v.bytes_checked, 5);
        let err = v.into_result().expect_err("damaged");
        assert!(
            matches!(err, AgentError::DataLoss(ref m) if m.contains("a: SHA-256")),
            "{err}"
        );
    }

    #[test]
    fn artifact_paths_must_stay_inside_the_backup() {
        let t = tempfile::tempdir().expect("tmp");
        let mut m = manifest_for(t.path(), &[("a", b"x")]);
        m.artifacts[0].file = "../../etc/passwd".into();
        assert!(artifact_path(t.path(), &m.artifacts[0]).is_err());
    }
}
