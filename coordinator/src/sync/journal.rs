//! The coordinator's durable journal: one JSON object per line in `<state_dir>/<name>/journal.jsonl`,
//! appended and fsynced **before** and **after** each unit of work acts, so a killed coordinator
//! leaves a record of exactly what it started and finished. `hostshift status` reads it; a rerun
//! uses it to report what was already done.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The run this belongs to (one per command invocation).
    pub run: String,
    /// `sync`, `verify`, `cutover`, ...
    pub phase: String,
    /// The unit (`file backend-env`, `storage evaluations batch 3`, `table public.users`).
    pub unit: String,
    /// `started`, `done`, `failed`, `skipped`.
    pub status: String,
    /// Bytes moved.
    #[serde(default)]
    pub bytes: u64,
    /// Files moved.
    #[serde(default)]
    pub files: u64,
    /// Free text: digest, error, counts.
    #[serde(default)]
    pub detail: String,
}

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    run: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (creating) the journal in `dir` for a new run.
    ///
    /// # Errors
    /// When the folder or file cannot be created.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
            run: format!("{}-{}", now_ms(), std::process::id()),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// Appends one event and fsyncs it.
    ///
    /// # Errors
    /// When the write or fsync fails (the caller stops: acting without a journal is not allowed).
    pub fn record(
        &self,
        phase: &str,
        unit: &str,
        status: &str,
        bytes: u64,
        files: u64,
        detail: &str,
    ) -> std::io::Result<()> {
        let ev = Event {
            time_ms: now_ms(),
            run: self.run.clone(),
            phase: phase.into(),
            unit: unit.into(),
            status: status.into(),
            bytes,
            files,
            detail: detail.into(),
        };
        let mut line = serde_json::to_string(&ev).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("journal lock poisoned"))?;
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }
}

/// Reads every event of a journal. A line that is not an event (a torn last line from a crash
/// mid-write, or damage) is skipped with a warning naming the file and line: what the journal
/// knew there is lost, and the operator should know.
///
/// # Errors
/// When the file exists but cannot be read.
pub fn read(dir: &Path) -> std::io::Result<Vec<Event>> {
    let path = dir.join("journal.jsonl");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut events = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(ev) => events.push(ev),
            Err(e) => tracing::warn!(
                "{}:{}: damaged journal line ignored ({e}); what it recorded is not taken into account",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_a_torn_line_is_ignored() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path()).expect("open");
        j.record("sync", "file a", "started", 0, 0, "")
            .expect("record");
        j.record("sync", "file a", "done", 10, 1, "sha")
            .expect("record");
        std::fs::OpenOptions::new()
            .append(true)
            .open(j.path())
            .and_then(|mut f| f.write_all(b"{\"time_ms\":1,\"ru"))
            .expect("torn");
        let ev = read(tmp.path()).expect("read");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].status, "done");
        assert_eq!(ev[1].bytes, 10);
    }
}
