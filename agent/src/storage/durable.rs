//! Making what a storage sync wrote durable before it is reported done: [`flush`] fsyncs exactly
//! the files and directories it touched when they are few, and falls back to one `syncfs(2)`
//! of the tree's file system when they are many.
//!
//! Why not always `syncfs`: it writes back **every** dirty page of the file system, other
//! programs' included. Measured here with 300 MB of someone else's dirty data on the file system
//! (a PostgreSQL on the same disk, say — the new host's database being followed into while the
//! cutover's delta runs): `syncfs` took 712 ms, an fsync of each of 60 fresh files from 16
//! threads 22 ms. With nothing else dirty, `syncfs` wins for many files (1,000 small files:
//! 36 ms against 134 ms for the fsyncs). So a small set — the cutover's storage delta inside
//! the write freeze, a re-sync of a few uploads — costs what it wrote, whatever else the host
//! does, and a first copy of thousands of files keeps its single flush.
//!
//! # Write-back started early
//! The flush is the proof; it need not also be the start of the disk's work. Left alone, the
//! kernel writes a freshly written file back only after ~30 s or once a tenth of RAM is dirty,
//! so every batch's flush found its whole 256 MiB (and the next batch's first part: a `syncfs`
//! takes everything) still in memory and waited for the disk while the stream stood still. The
//! receiver therefore starts each file's write-back as it writes it ([`start_writeback`]:
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which queues the pages and returns), the way
//! PostgreSQL's `*_flush_after` settings do; the flush then finds little left to wait for.
//! Measured with `bench/run --only storage` (10,000 files, 2.96 GB, 12 batches, medians of 4–5):
//! the batches took 8.8 s; with no flush at all (an experiment, not a mode) 6.4 s — what the
//! waits cost; with write-back started early and every flush kept, 6.4 s too (the machine 96 %
//! busy instead of 76 %; docs/BENCHMARKS.md). Nothing is weaker: a file is still durable only
//! when [`flush`] returns, and a write-back error still surfaces there (the hint's own result is
//! ignored for that reason).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::StorageError;

/// At most this many files and directories are fsynced one by one; above it, one `syncfs`.
pub const PER_PATH_LIMIT: usize = 256;
/// Threads fsyncing at once: concurrent fsyncs share the file system's journal commits.
const THREADS: usize = 16;

/// Makes `files` (content and inode) and then `dirs` (their entries: creations, renames,
/// deletions in them) durable. `fs` is a directory on their file system, opened **before** they
/// were written (a `syncfs` reports the write-back errors since its descriptor was opened), with
/// its path for messages: the fallback flushes that file system. A symlink among `files` is
/// skipped: the fsync of its directory covers it.
///
/// # Errors
/// [`StorageError::Io`] naming the path whose flush failed (a write-back error).
pub fn flush(
    files: &[PathBuf],
    dirs: &[PathBuf],
    (fs, fs_path): (&File, &Path),
) -> Result<(), StorageError> {
    if files.len() + dirs.len() > PER_PATH_LIMIT {
        return nix::unistd::syncfs(fs)
            .map_err(|errno| StorageError::io("flush to disk", fs_path, errno.into()));
    }
    // Files first: a directory entry must not become durable before the data it names.
    each(files)?;
    each(dirs)
}

/// fsyncs every path, from up to [`THREADS`] threads; the first failure is returned.
fn each(paths: &[PathBuf]) -> Result<(), StorageError> {
    if paths.is_empty() {
        return Ok(());
    }
    let per_thread = paths.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| s.spawn(move || chunk.iter().try_for_each(|p| one(p))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(StorageError::io(
                    "flush to disk",
                    Path::new("<fsync thread>"),
                    std::io::Error::other("an fsync thread panicked"),
                ))
            })
        })
    })
}

/// Bytes a receiver writes into one file before it starts their write-back.
pub const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Starts writing `file`'s bytes `from..to` back to the disk and returns without waiting (a hint:
/// see the module doc). Its failure is ignored: [`flush`] reports write-back errors.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from)))
    else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: sync_file_range(2) reads no memory of ours; `file` keeps the descriptor open for
    // the call, and any offset or length is valid input (an error at worst).
    let _ = unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            len,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

fn one(path: &Path) -> Result<(), StorageError> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        // A symlink (O_NOFOLLOW): its directory's fsync makes it durable.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(()),
        Err(e) => return Err(StorageError::io("open to flush", path, e)),
    };
    f.sync_all()
        .map_err(|e| StorageError::io("flush to disk", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_paths_are_flushed_one_by_one_and_a_symlink_is_left_to_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").expect("write");
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("f", &l).expect("symlink");
        let fs = File::open(dir.path()).expect("open");
        flush(&[f, l], &[dir.path().to_path_buf()], (&fs, dir.path())).expect("flushed");
    }

    #[test]
    fn starting_write_back_changes_no_byte_whatever_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let f = File::options().write(true).open(&path).expect("open");
        // The whole file, a piece, nothing, a reversed range, past the end, beyond i64.
        for (from, to) in [
            (0, 100_000),
            (4096, 8192),
            (7, 7),
            (9, 3),
            (50_000, 1 << 40),
        ] {
            start_writeback(&f, from, to);
        }
        start_writeback(&f, u64::MAX - 1, u64::MAX);
        let fs = File::open(dir.path()).expect("open dir");
        flush(std::slice::from_ref(&path), &[], (&fs, dir.path())).expect("flushed");
        assert!(
            std::fs::read(&path).expect("read") == content,
            "content changed"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("gone");
        let fs = File::open(dir.path()).expect("open");
        let e = flush(std::slice::from_ref(&gone), &[], (&fs, dir.path())).expect_err("missing");
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn many_paths_take_one_syncfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Paths that do not exist: one by one they would fail; the syncfs does not open them.
        let many: Vec<PathBuf> = (0..=PER_PATH_LIMIT)
            .map(|i| dir.path().join(format!("none-{i}")))
            .collect();
        let fs = File::open(dir.path()).expect("open");
        flush(&many, &[], (&fs, dir.path())).expect("one syncfs of the file system");
    }
}
