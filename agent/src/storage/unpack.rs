//! The receiving side: [`unpack`] extracts a tar stream (typically read through a
//! [`ChannelReader`](super::channel::ChannelReader)) into a staging directory under the tree's
//! root. Nothing is put into place here: [`commit`](super::commit::commit) does that once the
//! caller has verified the stream's trailer.
//!
//! The tar parser is the `tar` crate's, but extraction is ours, entry by entry, and accepts only
//! what was asked for: a regular file or symlink whose path is a clean [`RelPath`] listed in
//! `expected`, once, of the expected kind and size. Everything else is refused: absolute paths,
//! `..`, hard links, device and FIFO entries, directories, PAX headers (the sender never writes
//! them), a symlink whose target is absolute or leaves the tree, anything not requested. The
//! entry's path is only a key into `expected`: the staged copy is named after its index
//! (`<staging>/<i>`), so no name from the stream is ever used to build a path. Each file's
//! SHA-256 is computed while it is written and must be the manifest's; mode and mtime come from
//! the manifest (nanosecond-exact). Before `unpack` returns, everything staged is made durable
//! ([`durable::flush`](super::durable::flush): an fsync of each file from several threads, or
//! one `syncfs(2)` for a large set), so a crash after a commit's rename never leaves an empty or
//! partial file at the final path.
//!
//! # One SHA-256 pass per byte, here
//! This per-file digest is the check the stream rests on. The sender does not always hash what
//! it sends: a file whose stamp shows it is the one its walk digested is sent unread by any
//! hasher ([`pack`](super::pack), `digested_by_walk`), and a change no stamp shows (a second
//! write within the same clock tick, a write through `mmap`) reaches this side only to be
//! caught here; the digest this agent records for an installed file in its cache rests on it
//! too. Since protocol 3 a storage batch's chunks carry no SHA-256 of their own (issue 15): a
//! chunk chain proves that these bytes are the bytes the *sender* sent, which adds nothing to
//! what is checked here against the *manifest* — every file's content by its SHA-256, every
//! entry's path, kind, size and link target by `expected`, and that each expected entry arrived
//! or was marked deferred — and it cost each side a second SHA-256 pass over every byte. What
//! the stream carries beyond that (tar header fields such as mode and mtime, padding, a
//! deferral's reason) is never used to build what is committed: mode and mtime come from the
//! manifest. TLS protects the bytes in transit; the trailer still counts bytes and chunks.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hostshift_shared::digest::StreamHasher;
use tokio_util::sync::CancellationToken;

use super::durable::{WRITEBACK_EVERY, start_writeback};
use super::error::StorageError;
use super::manifest::{Entry, Kind, link_target_problem};
use super::pack::{DEFERRED_MARKER, Deferred, MAX_DEFER_REASON};
use super::relpath::{RelPath, STAGING_PREFIX};
use super::staging::{Staged, StagedEntry, mtime};
use super::walk::READ_BUFFER;

/// How the stream as a whole is named in errors about it.
const STREAM: &str = "<tar stream>";
/// Longest GNU long name / long link accepted (Linux's `PATH_MAX`, plus its NUL).
const MAX_LONG_NAME: u64 = 4097;

/// Extracts `input` into `root/<staging_name>/` (created, mode 0700; it must not exist), accepting
/// exactly the entries of `expected`, and reads `input` to its end. Blocking: run it in
/// `spawn_blocking`. On error the staging directory is removed again; the tree is untouched.
///
/// # Errors
/// [`StorageError::Refused`] for an entry that is not acceptable (see the module doc);
/// [`StorageError::DigestMismatch`] naming a file whose content is not the manifest's;
/// [`StorageError::Mismatch`] when a size or symlink target differs from `expected`;
/// [`StorageError::Truncated`] when the stream ends before every expected entry arrived (the
/// sender failed: its error is the one to report); [`StorageError::BadPath`] for a bad
/// `staging_name` or `expected`;
/// [`StorageError::Cancelled`]; [`StorageError::Io`] (`AlreadyExists` for a staging directory
/// left by an earlier attempt: [`abort`](super::staging::abort) it or
/// [`remove_stale_staging`](super::staging::remove_stale_staging)).
pub fn unpack<R: Read>(
    root: &Path,
    staging_name: &str,
    input: R,
    expected: &[Entry],
    cancel: &CancellationToken,
) -> Result<Staged, StorageError> {
    let name_ok = staging_name.starts_with(STAGING_PREFIX)
        && staging_name.len() > STAGING_PREFIX.len()
        && !staging_name.contains(['/', '\0']);
    if !name_ok {
        return Err(StorageError::BadPath {
            path: PathBuf::from(staging_name),
            reason: format!("a staging directory's name is {STAGING_PREFIX}<id>"),
        });
    }
    let dir = root.join(staging_name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| StorageError::io("create staging directory", &dir, e))?;
    // Opened before anything is written, so that syncfs reports any write-back error since.
    let dir_fd = std::fs::File::open(&dir)
        .map_err(|e| StorageError::io("open staging directory", &dir, e))?;
    let mut staged = Staged {
        dir,
        entries: Vec::new(),
        bytes: 0,
        deferred: Vec::new(),
        envelope: None,
    };
    let result = extract(&mut staged, input, expected, cancel).and_then(|()| {
        // Each staged file and the staging directory, or one syncfs for a large set (see
        // `durable`): sequential fsyncs made small files 20 times slower, a syncfs costs every
        // other program's dirty data too.
        let files: Vec<PathBuf> = staged
            .entries
            .iter()
            .filter(|e| e.inode.is_some())
            .map(|e| e.staged.clone())
            .collect();
        super::durable::flush(&files, &[staged.dir.clone()], (&dir_fd, &staged.dir))
    });
    match result {
        Ok(()) => Ok(staged),
        Err(e) => {
            if let Err(cleanup) = std::fs::remove_dir_all(&staged.dir) {
                let dir = staged.dir.display();
                tracing::warn!(%dir, error = %cleanup, "could not remove the staging directory");
            }
            Err(e)
        }
    }
}

fn extract<R: Read>(
    staged: &mut Staged,
    input: R,
    expected: &[Entry],
    cancel: &CancellationToken,
) -> Result<(), StorageError> {
    let mut wanted: HashMap<&RelPath, (usize, &Entry)> = HashMap::with_capacity(expected.len());
    for (i, e) in expected.iter().enumerate() {
        if e.kind == Kind::Dir || wanted.insert(&e.path, (i, e)).is_some() {
            return Err(StorageError::BadPath {
                path: e.path.as_path().to_path_buf(),
                reason: "expected entries are distinct files and symlinks".into(),
            });
        }
    }
    let mut arrived = vec![false; expected.len()];
    let mut buf = vec![0u8; READ_BUFFER];
    let in_content = Cell::new(false);
    let mut archive = tar::Archive::new(Envelope {
        inner: input,
        hasher: StreamHasher::new(),
        in_content: &in_content,
    });
    let broken = |e: io::Error| stream_error(Path::new(STREAM), e);
    // Raw entries: GNU long names are read here, bounded, and PAX headers are refused.
    let entries = archive.entries().map_err(broken)?.raw(true);
    let (mut long_name, mut long_link) = (None, None);
    let mut pending: Option<(usize, StorageError)> = None;
    for item in entries {
        if cancel.is_cancelled() {
            return Err(StorageError::Cancelled {
                path: staged.dir.clone(),
            });
        }
        let mut entry = item.map_err(broken)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            let slot = if kind.is_gnu_longname() {
                &mut long_name
            } else {
                &mut long_link
            };
            *slot = Some(read_long_name(&mut entry, slot.is_some())?);
            continue;
        }
        let raw_path = long_name
            .take()
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let raw_link = long_link.take();
        if let Some(marked) = raw_path.strip_prefix(DEFERRED_MARKER.as_bytes()) {
            defer(
                staged,
                &mut entry,
                marked,
                &wanted,
                &mut arrived,
                &mut pending,
            )?;
            continue;
        }
        // A file whose content was not the manifest's is only acceptable when the sender's
        // marker for it comes next.
        if let Some(err) = pending.take() {
            return Err(err.1);
        }
        let shown = PathBuf::from(OsStr::from_bytes(&raw_path));
        let refuse = |reason: String| StorageError::Refused {
            path: shown.clone(),
            reason,
        };
        let is_file = accepted_type(kind).map_err(|why| refuse(why.into()))?;
        let rel = RelPath::from_bytes(&raw_path).map_err(|e| match e {
            StorageError::BadPath { reason, .. } => refuse(reason),
            other => other,
        })?;
        let Some(&(index, want)) = wanted.get(&rel) else {
            return Err(refuse("not one of the entries this host asked for".into()));
        };
        if std::mem::replace(&mut arrived[index], true) {
            return Err(refuse("sent twice".into()));
        }
        let staged_path = staged.dir.join(index.to_string());
        let mut inode = None;
        match (&want.kind, is_file) {
            (Kind::File, true) => {
                if entry.size() != want.size {
                    return Err(StorageError::Mismatch {
                        path: shown,
                        detail: format!("sent with {} bytes, expected {}", entry.size(), want.size),
                    });
                }
                in_content.set(true);
                let written = write_file(&mut entry, want, &staged_path, &mut buf, cancel);
                in_content.set(false);
                match written {
                    Ok(i) => inode = Some(i),
                    Err(err @ StorageError::DigestMismatch { .. }) => {
                        // Never kept: either the sender marks it deferred next, or this is
                        // the error.
                        std::fs::remove_file(&staged_path)
                            .map_err(|e| StorageError::io("remove", &staged_path, e))?;
                        pending = Some((index, err));
                        continue;
                    }
                    Err(err) => return Err(err),
                }
                staged.bytes += want.size;
            }
            (Kind::Symlink { target }, false) => {
                let link = raw_link.or_else(|| entry.header().link_name_bytes().map(Into::into));
                let got = PathBuf::from(OsStr::from_bytes(&link.unwrap_or_default()));
                if let Some(reason) = link_target_problem(&rel, &got) {
                    return Err(refuse(format!("{reason} ({})", got.display())));
                }
                if &got != target {
                    return Err(StorageError::Mismatch {
                        path: shown,
                        detail: format!(
                            "symlink to {}, expected {}",
                            got.display(),
                            target.display()
                        ),
                    });
                }
                stage_symlink(&got, &staged_path, want.mtime_ns)?;
                super::commit::set_owner(&staged_path, want.owner)?;
            }
            _ => return Err(refuse("its kind is not the one this host asked for".into())),
        }
        staged.entries.push(StagedEntry {
            path: rel,
            staged: staged_path,
            inode,
        });
    }
    if let Some((_, err)) = pending {
        return Err(err);
    }
    let mut rest = archive.into_inner();
    drain(&mut rest, &mut buf)?;
    staged.envelope = Some(rest.hasher.finish().1);
    if let Some(i) = arrived.iter().position(|a| !a) {
        let missing = arrived.iter().filter(|a| !**a).count();
        return Err(StorageError::Truncated {
            path: expected[i].path.as_path().to_path_buf(),
            detail: format!(
                "the stream ended before it arrived ({missing} of {} entries missing)",
                expected.len()
            ),
        });
    }
    Ok(())
}

/// The sender's marker for a file it deferred (see [`pack_deferring`](super::pack::pack_deferring)):
/// whatever was staged for it is thrown away and it is listed in [`Staged::deferred`]. The file
/// must be one this host asked for, marked once, and either not sent or the entry just before.
fn defer<R: Read>(
    staged: &mut Staged,
    entry: &mut R,
    marked: &[u8],
    wanted: &HashMap<&RelPath, (usize, &Entry)>,
    arrived: &mut [bool],
    pending: &mut Option<(usize, StorageError)>,
) -> Result<(), StorageError> {
    let shown = PathBuf::from(OsStr::from_bytes(marked));
    let refuse = |reason: &str| StorageError::Refused {
        path: shown.clone(),
        reason: format!("deferral marker: {reason}"),
    };
    let rel = RelPath::from_bytes(marked).map_err(|_| refuse("not a clean relative path"))?;
    let Some(&(index, want)) = wanted.get(&rel) else {
        return Err(refuse("not one of the entries this host asked for"));
    };
    let mut reason = Vec::new();
    entry
        .take(MAX_DEFER_REASON as u64 + 1)
        .read_to_end(&mut reason)
        .map_err(|e| stream_error(&shown, e))?;
    if reason.len() > MAX_DEFER_REASON {
        return Err(refuse("its reason is too long"));
    }
    match pending.take() {
        Some((i, _)) if i == index => {}
        Some((_, err)) => return Err(err),
        None if !arrived[index] => {}
        None => {
            // Sent whole just before (its content happened to match, or it was already
            // finished when the change was seen): thrown away all the same.
            let last = staged.entries.last().map(|e| &e.path);
            if last != Some(&rel) {
                return Err(refuse(
                    "it was already sent or marked earlier in the stream",
                ));
            }
            if let Some(e) = staged.entries.pop() {
                std::fs::remove_file(&e.staged)
                    .map_err(|err| StorageError::io("remove", &e.staged, err))?;
                if e.inode.is_some() {
                    staged.bytes -= want.size;
                }
            }
        }
    }
    arrived[index] = true;
    staged.deferred.push(Deferred {
        path: rel,
        reason: String::from_utf8_lossy(&reason).into_owned(),
    });
    Ok(())
}

/// Whether an entry type is a file (`true`) or symlink (`false`); why it is refused otherwise.
fn accepted_type(kind: tar::EntryType) -> Result<bool, &'static str> {
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => Ok(true),
        tar::EntryType::Symlink => Ok(false),
        tar::EntryType::Link => Err("hard links are refused"),
        tar::EntryType::Char | tar::EntryType::Block => Err("device entries are refused"),
        tar::EntryType::Fifo => Err("FIFO entries are refused"),
        tar::EntryType::Directory => Err("directories travel in the delta, not in the stream"),
        _ => Err("this entry type (PAX header, sparse file, ...) is refused"),
    }
}

fn stage_symlink(target: &Path, staged_path: &Path, mtime_ns: i64) -> Result<(), StorageError> {
    std::os::unix::fs::symlink(target, staged_path)
        .map_err(|e| StorageError::io("create symlink", staged_path, e))?;
    let t = mtime(mtime_ns);
    filetime::set_symlink_file_times(staged_path, t, t)
        .map_err(|e| StorageError::io("set mtime", staged_path, e))
}

/// Copies one file entry to `dest`, hashing on the way; checks size and digest; sets mode and
/// mtime. Returns the copy's device and inode (to know it again once installed).
fn write_file<R: Read>(
    src: &mut R,
    want: &Entry,
    dest: &Path,
    buf: &mut [u8],
    cancel: &CancellationToken,
) -> Result<(u64, u64), StorageError> {
    let rel = want.path.as_path();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| StorageError::io("create", dest, e))?;
    let mut hasher = StreamHasher::new();
    // Its write-back starts as it is written, so the batch's flush waits less (see `durable`).
    let mut written_back = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(StorageError::Cancelled {
                path: rel.to_path_buf(),
            });
        }
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(rel, e)),
        };
        if hasher.len() + n as u64 > want.size {
            return Err(StorageError::Mismatch {
                path: rel.to_path_buf(),
                detail: format!("more than the manifest's {} bytes arrived", want.size),
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| StorageError::io("write", dest, e))?;
        if hasher.len() - written_back >= WRITEBACK_EVERY {
            start_writeback(&out, written_back, hasher.len());
            written_back = hasher.len();
        }
    }
    start_writeback(&out, written_back, hasher.len());
    let (len, actual) = hasher.finish();
    if len != want.size {
        return Err(StorageError::Truncated {
            path: rel.to_path_buf(),
            detail: format!("the stream ended after {len} of its {} bytes", want.size),
        });
    }
    if let Some(expected) = want.sha256
        && expected != actual
    {
        return Err(StorageError::DigestMismatch {
            path: rel.to_path_buf(),
            expected,
            actual,
        });
    }
    // Owner first: a chown may clear mode bits, the chmod after it sets them.
    if let Some(o) = want.owner {
        std::os::unix::fs::fchown(&out, Some(o.uid), Some(o.gid))
            .map_err(|e| StorageError::io("set owner", dest, e))?;
    }
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(want.mode))
        .map_err(|e| StorageError::io("set mode", dest, e))?;
    filetime::set_file_handle_times(&out, None, Some(mtime(want.mtime_ns)))
        .map_err(|e| StorageError::io("set mtime", dest, e))?;
    let meta = out
        .metadata()
        .map_err(|e| StorageError::io("inspect", dest, e))?;
    use std::os::unix::fs::MetadataExt;
    Ok((meta.dev(), meta.ino()))
}

fn read_long_name<R: Read>(entry: &mut R, again: bool) -> Result<Vec<u8>, StorageError> {
    let bad = |reason: &str| StorageError::Refused {
        path: "<GNU long name>".into(),
        reason: reason.into(),
    };
    if again {
        return Err(bad("two long names for one entry"));
    }
    let mut v = Vec::new();
    entry
        .take(MAX_LONG_NAME + 1)
        .read_to_end(&mut v)
        .map_err(|e| stream_error(Path::new("<GNU long name>"), e))?;
    if v.len() as u64 > MAX_LONG_NAME {
        return Err(bad("longer than PATH_MAX"));
    }
    while v.last() == Some(&0) {
        v.pop();
    }
    Ok(v)
}

/// The stream as the tar parser reads it, hashing every byte that is not file content (while
/// `in_content` is false) into the envelope. The parser reads headers, long names, padding and
/// markers from it exactly as they were written and a file's content only through its entry,
/// bounded by its size, so the envelope here covers the same bytes as the sender's.
struct Envelope<'a, R> {
    inner: R,
    hasher: StreamHasher,
    in_content: &'a Cell<bool>,
}

impl<R: Read> Read for Envelope<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.in_content.get() {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads what follows the end-of-archive marker: only zero padding may.
fn drain<R: Read>(mut rest: R, buf: &mut [u8]) -> Result<(), StorageError> {
    loop {
        let n = match rest.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(Path::new(STREAM), e)),
        };
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(StorageError::Refused {
                path: STREAM.into(),
                reason: "data after the end of the archive".into(),
            });
        }
    }
}

/// A read error from the tar stream: an early end is missing data; anything else is a malformed
/// stream.
fn stream_error(path: &Path, e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StorageError::Truncated {
            path: path.to_path_buf(),
            detail: "the stream ended in the middle of it".into(),
        }
    } else {
        StorageError::Refused {
            path: path.to_path_buf(),
            reason: format!("malformed tar stream: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use hostshift_shared::digest::Sha256Digest;
    use tar::EntryType;

    use super::*;
    use crate::storage::testutil::{raw_end, raw_entry, snapshot};

    fn expected() -> Vec<Entry> {
        vec![
            Entry {
                path: RelPath::new("ok").unwrap(),
                kind: Kind::File,
                size: 1,
                mode: 0o644,
                mtime_ns: 0,
                sha256: Some(Sha256Digest::of(b"x")),
                owner: None,
            },
            Entry {
                path: RelPath::new("link").unwrap(),
                kind: Kind::Symlink {
                    target: "ok".into(),
                },
                size: 0,
                mode: 0o777,
                mtime_ns: 0,
                sha256: None,
                owner: None,
            },
        ]
    }

    #[test]
    fn refuses_hostile_entries_and_writes_nothing_outside_the_root() {
        let cases: &[(&[u8], EntryType, &[u8], &str)] = &[
            (b"../evil", EntryType::Regular, b"", "'..'"),
            (b"/abs", EntryType::Regular, b"", "absolute"),
            (b"ok", EntryType::Link, b"../outside/marker", "hard links"),
            (b"ok", EntryType::Char, b"", "device"),
            (b"ok", EntryType::Block, b"", "device"),
            (b"ok", EntryType::Fifo, b"", "FIFO"),
            (b"link", EntryType::Symlink, b"/etc", "absolute"),
            (
                b"link",
                EntryType::Symlink,
                b"../outside",
                "outside the tree",
            ),
            (b"link", EntryType::Symlink, b"sub/../..", "after a name"),
            (
                b"surprise",
                EntryType::Regular,
                b"",
                "not one of the entries",
            ),
            (b"dir/", EntryType::Directory, b"", "directories"),
            (b"ok", EntryType::XHeader, b"", "entry type"),
            (
                b".hostshift-staging-x/ok",
                EntryType::Regular,
                b"",
                "staging",
            ),
            (b"link", EntryType::Regular, b"", "kind"),
        ];
        for (path, kind, link, why) in cases {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("root");
            std::fs::create_dir(&root).unwrap();
            std::fs::create_dir(t.path().join("outside")).unwrap();
            std::fs::write(t.path().join("outside/marker"), b"keep").unwrap();
            let before = snapshot(t.path(), Path::new(""));

            let mut tar = Vec::new();
            let data: &[u8] = if *kind == EntryType::Regular {
                b"x"
            } else {
                b""
            };
            raw_entry(&mut tar, path, *kind, data, link);
            raw_end(&mut tar);
            let err = unpack(
                &root,
                ".hostshift-staging-t",
                &tar[..],
                &expected(),
                &CancellationToken::new(),
            )
            .unwrap_err();
            let shown = String::from_utf8_lossy(path);
            assert!(
                matches!(&err, StorageError::Refused { reason, .. } if reason.contains(why)),
                "{shown}: {err}"
            );
            assert!(
                err.to_string().contains(shown.trim_end_matches('/')),
                "{shown}: {err}"
            );
            assert_eq!(
                snapshot(t.path(), Path::new("")),
                before,
                "{shown}: something was written"
            );
        }
    }

    #[test]
    fn a_size_other_than_the_manifest_s_is_a_mismatch_and_a_cut_stream_is_truncated() {
        let t = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        raw_entry(&mut tar, b"ok", EntryType::Regular, b"xx", b"");
        raw_end(&mut tar);
        let err = unpack(
            t.path(),
            ".hostshift-staging-a",
            &tar[..],
            &expected(),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");

        let mut tar = Vec::new();
        raw_entry(&mut tar, b"ok", EntryType::Regular, b"x", b"");
        let err = unpack(
            t.path(),
            ".hostshift-staging-b",
            &tar[..],
            &expected(),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, StorageError::Truncated { path, .. } if path.ends_with("link")),
            "{err}"
        );
        assert!(!err.is_data_loss());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn data_after_the_end_of_the_archive_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        raw_entry(&mut tar, b"ok", EntryType::Regular, b"x", b"");
        raw_entry(&mut tar, b"link", EntryType::Symlink, b"", b"ok");
        raw_end(&mut tar);
        tar.extend_from_slice(b"smuggled");
        let err = unpack(
            t.path(),
            ".hostshift-staging-a",
            &tar[..],
            &expected(),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, StorageError::Refused { .. }), "{err}");
    }
}
