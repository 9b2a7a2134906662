//! One mutating command per plan at a time.
//!
//! `sync`, `cutover`, `rollback` and `backup restore` change hosts and append to the plan's
//! journal; two of them at once race each other (two syncs renaming the same staged files into
//! place, a rollback undoing a freeze the cutover still relies on). Each takes an exclusive
//! `flock` on `<state dir>/lock` for as long as it runs, and writes who it is into the file
//! (pid, command, start time). A second command fails at once with exit 2 (nothing was done),
//! naming the holder. The kernel releases the lock when the holder exits, even after `kill -9`,
//! so there is never a stale lock to remove by hand; the file itself stays and is harmless.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{CliError, failed, usage};
use crate::plan::Plan;

/// The lock file's name inside the plan's state folder.
pub const LOCK_FILE: &str = "lock";

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct PlanLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl PlanLock {
    /// Where the lock lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the plan's lock for `command` (e.g. `"sync"`).
///
/// # Errors
/// [`CliError::Usage`] (exit 2) naming the holder when another command holds it;
/// [`CliError::Failed`] when the state folder or the lock file cannot be created.
pub fn acquire(plan: &Plan, command: &str) -> Result<PlanLock, CliError> {
    acquire_in(&plan.state_dir(), command)
}

/// [`acquire`] for a state folder.
///
/// # Errors
/// As [`acquire`].
pub fn acquire_in(dir: &Path, command: &str) -> Result<PlanLock, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        failed(anyhow::anyhow!(
            "create the plan's state folder {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            failed(anyhow::anyhow!(
                "open the plan's lock {}: {e}",
                path.display()
            ))
        })?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((mut f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another hostshift command (it has not written its name yet)".to_string()
            } else {
                holder.to_string()
            };
            return Err(usage(anyhow::anyhow!(
                "the plan is busy: {holder} holds its lock {} — only one of sync, cutover, rollback and backup restore may run per plan at a time; wait for it to finish (or stop that process), then run `hostshift {command}` again. Nothing was done",
                path.display()
            )));
        }
        Err((_, errno)) => {
            return Err(failed(anyhow::anyhow!("lock {}: {errno}", path.display())));
        }
    };
    let started = crate::report::utc(crate::report::now_ms());
    let who = format!(
        "hostshift {command} (pid {}, started {started})\n",
        std::process::id()
    );
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(who.as_bytes()))
        .and_then(|()| file.flush());
    if let Err(e) = written {
        // The lock is held all the same; only the name for others is missing.
        tracing::warn!(path = %path.display(), error = %e, "could not write the lock holder");
    }
    Ok(PlanLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = acquire_in(tmp.path(), "sync").expect("first");
        let err = acquire_in(tmp.path(), "cutover").expect_err("busy");
        assert_eq!(err.code(), hostshift_shared::exit::USAGE);
        let text = err.error().to_string();
        assert!(text.contains("hostshift sync (pid"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        let again = acquire_in(tmp.path(), "cutover").expect("free again");
        assert!(again.path().ends_with(LOCK_FILE));
    }
}
