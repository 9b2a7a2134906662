//! The coordinator's durable journal: one JSON object per line in `<state_dir>/<name>/journal.jsonl`,
//! appended **before** and **after** each unit of work acts, so a killed coordinator leaves a
//! record of exactly what it started and finished. `hostshift status` reads it; a rerun uses it
//! to report what was already done.
//!
//! Every line is written before the work goes on (a killed process loses none: they are in the
//! kernel's page cache). A line appended with [`Journal::record`] is also fsynced at once — it
//! survives the machine; one appended with [`Journal::note`] is made durable by the next
//! `record` (an fsync covers every earlier write of the file). A sync notes its own lines and
//! closes with a `record` (`sync done` or `failed`): it acts the same whether it is recorded or
//! not (every unit compares both hosts again), so losing its last lines to a power cut costs
//! nothing but a line in `status`, while an fsync per line cost it tens of milliseconds per run —
//! inside the cutover's freeze too, where the delta is a sync. The cutover's and rollback's steps
//! (and a carry-back's units) are recorded one by one: a resumed cutover must know every freeze
//! it applied.
//!
//! # Typed cutover steps
//! The cutover's and rollback's lines carry their [`Step`] as data (`"step":{"kind":"freeze",
//! "method":"read-only"}`) beside the readable `unit` (`freeze read-only`), and their status is a
//! [`Mark`]; `cutover::state` decides from these by `match`, never by parsing `unit`. Lines written
//! before steps were typed (no `step` field) are still read: [`Event::step`] recognises their
//! `unit` once, here ([`Step::of_unit`]), so a cutover in progress across an upgrade resumes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::plan::FreezeMethod;

/// A step of a cutover or rollback (the unit of their journal lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "method", rename_all = "kebab-case")]
pub enum Step {
    /// The run itself: `started` opens a cutover, `done` carries its outcome in the detail.
    Cutover,
    /// The gates.
    Gates,
    /// `--skip-backup-check REASON` (the detail).
    BackupCheckSkipped,
    /// The whole freeze, skipped (a rehearsal freezes nothing).
    FreezeAll,
    /// One freeze method applied on the old host.
    Freeze(FreezeMethod),
    /// Followed databases: the wait until the follower applied up to the old host's position
    /// taken after the freeze (the detail: position and wait per database).
    CatchUp,
    /// The final delta sync.
    Delta,
    /// The proof of equality (inside the freeze).
    Prove,
    /// Followed databases: a snapshot of each new database taken right before traffic moves
    /// (it equals the frozen old host), held for [`Step::ProveAfterSwitch`].
    HoldSnapshots,
    /// Followed databases: every table of the new host under the held snapshot compared with
    /// the frozen old host, after the switch.
    ProveAfterSwitch,
    /// The traffic switch.
    Switch,
    /// The checks through the public endpoint after the switch.
    Verify,
    /// One freeze method undone.
    Unfreeze(FreezeMethod),
    /// Traffic back to the old host.
    SwitchBack,
    /// The rollback's check for writes on the new host since the switch.
    NewHostWrites,
    /// The rollback run itself.
    Rollback,
    /// The follow's slot, publication and follower removed (after a cutover, an undo or a
    /// rollback).
    FollowCleanup,
    /// The rollback window's slot and publication created on the new host, right before the
    /// switch (see [`crate::window`]).
    WindowPrepare,
    /// The rollback window's follower started on the old host, right after the switch.
    WindowOpen,
    /// One freeze method applied on the new host (a rollback within the window).
    FreezeNew(FreezeMethod),
    /// The old host's follower applied everything up to the frozen new host's position;
    /// sequences settled.
    WindowCatchUp,
    /// Inside the rollback's freeze: the storage trees, config files and large objects the new
    /// host changed since the switch carried back into the old host (what its agent allows).
    WindowCarryBack,
    /// One freeze method undone on the new host.
    UnfreezeNew(FreezeMethod),
    /// The window closed: follower and origin removed on the old host, slot and publication
    /// on the new host.
    WindowClose,
}

impl std::fmt::Display for Step {
    /// The readable unit (`freeze read-only`, `switch back`), as the journal's `unit`, the
    /// report and `--json` name the step.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Cutover => f.write_str("cutover"),
            Step::Gates => f.write_str("gates"),
            Step::BackupCheckSkipped => f.write_str("backup check skipped"),
            Step::FreezeAll => f.write_str("freeze"),
            Step::Freeze(m) => write!(f, "freeze {}", m.as_str()),
            Step::CatchUp => f.write_str("catch-up"),
            Step::Delta => f.write_str("delta"),
            Step::Prove => f.write_str("prove"),
            Step::HoldSnapshots => f.write_str("hold snapshots"),
            Step::ProveAfterSwitch => f.write_str("prove after switch"),
            Step::Switch => f.write_str("switch"),
            Step::Verify => f.write_str("verify"),
            Step::Unfreeze(m) => write!(f, "unfreeze {}", m.as_str()),
            Step::SwitchBack => f.write_str("switch back"),
            Step::NewHostWrites => f.write_str("new-host writes"),
            Step::Rollback => f.write_str("rollback"),
            Step::FollowCleanup => f.write_str("follow cleanup"),
            Step::WindowPrepare => f.write_str("window prepare"),
            Step::WindowOpen => f.write_str("window open"),
            Step::FreezeNew(m) => write!(f, "freeze new {}", m.as_str()),
            Step::WindowCatchUp => f.write_str("window catch-up"),
            Step::WindowCarryBack => f.write_str("window carry-back"),
            Step::UnfreezeNew(m) => write!(f, "unfreeze new {}", m.as_str()),
            Step::WindowClose => f.write_str("window close"),
        }
    }
}

impl Step {
    /// The step a line written before steps were typed names in its `unit` (the only place a
    /// unit string becomes a step); `None` for units that are not cutover steps.
    pub fn of_unit(unit: &str) -> Option<Step> {
        let method = |m: &str| {
            [
                FreezeMethod::MaintenancePage,
                FreezeMethod::StopApps,
                FreezeMethod::ReadOnly,
            ]
            .into_iter()
            .find(|x| x.as_str() == m)
        };
        if let Some(m) = unit.strip_prefix("freeze new ") {
            return method(m).map(Step::FreezeNew);
        }
        if let Some(m) = unit.strip_prefix("unfreeze new ") {
            return method(m).map(Step::UnfreezeNew);
        }
        if let Some(m) = unit.strip_prefix("freeze ") {
            return method(m).map(Step::Freeze);
        }
        if let Some(m) = unit.strip_prefix("unfreeze ") {
            return method(m).map(Step::Unfreeze);
        }
        Some(match unit {
            "cutover" => Step::Cutover,
            "gates" => Step::Gates,
            "backup check skipped" => Step::BackupCheckSkipped,
            "freeze" => Step::FreezeAll,
            "catch-up" => Step::CatchUp,
            "delta" => Step::Delta,
            "prove" => Step::Prove,
            "hold snapshots" => Step::HoldSnapshots,
            "prove after switch" => Step::ProveAfterSwitch,
            "switch" => Step::Switch,
            "verify" => Step::Verify,
            "switch back" => Step::SwitchBack,
            "new-host writes" => Step::NewHostWrites,
            "rollback" => Step::Rollback,
            "follow cleanup" => Step::FollowCleanup,
            "window prepare" => Step::WindowPrepare,
            "window open" => Step::WindowOpen,
            "window catch-up" => Step::WindowCatchUp,
            "window carry-back" => Step::WindowCarryBack,
            "window close" => Step::WindowClose,
            _ => return None,
        })
    }
}

/// How a step stood when its line was written (the journal's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mark {
    /// About to act (it may have acted when nothing follows).
    Started,
    /// Finished.
    Done,
    /// Failed (the detail says why).
    Failed,
    /// Not run (the detail says why).
    Skipped,
    /// The run was continued by `cutover --resume` (the detail: the run continued).
    Resumed,
    /// The undo after a failure did not finish: operator action needed.
    UndoFailed,
    /// The journal could not be written: the run stopped (written when it can be, later).
    Stopped,
}

impl Mark {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Started => "started",
            Mark::Done => "done",
            Mark::Failed => "failed",
            Mark::Skipped => "skipped",
            Mark::Resumed => "resumed",
            Mark::UndoFailed => "undo-failed",
            Mark::Stopped => "stopped",
        }
    }

    /// The mark of a line's `status` (`None`: not a cutover status, e.g. a sync's `deferred`).
    pub fn of(status: &str) -> Option<Mark> {
        [
            Mark::Started,
            Mark::Done,
            Mark::Failed,
            Mark::Skipped,
            Mark::Resumed,
            Mark::UndoFailed,
            Mark::Stopped,
        ]
        .into_iter()
        .find(|m| m.as_str() == status)
    }
}

/// Phases whose lines are cutover steps (`cutover`, `rollback`, and `unfreeze` of a new host).
const STEP_PHASES: [&str; 3] = ["cutover", "rollback", "unfreeze"];

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
    /// The cutover step (cutover and rollback lines; absent in lines written before steps were
    /// typed, see [`Event::step`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
}

impl Event {
    /// The cutover step this line records: its typed `step`, or for an older line of a cutover
    /// phase, the step its `unit` names.
    pub fn step(&self) -> Option<Step> {
        self.step.or_else(|| {
            STEP_PHASES
                .contains(&self.phase.as_str())
                .then(|| Step::of_unit(&self.unit))
                .flatten()
        })
    }

    /// The line's status as a [`Mark`].
    pub fn mark(&self) -> Option<Mark> {
        Mark::of(&self.status)
    }
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

    /// Appends one event and fsyncs it (with every line noted before it).
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
        self.append(self.event(phase, unit, status, bytes, files, detail), true)
    }

    /// Appends one event without waiting for the disk: it is written now, and made durable by
    /// the next [`Journal::record`] (see the module doc for who may).
    ///
    /// # Errors
    /// When the write fails (the caller stops: acting without a journal is not allowed).
    pub fn note(
        &self,
        phase: &str,
        unit: &str,
        status: &str,
        bytes: u64,
        files: u64,
        detail: &str,
    ) -> std::io::Result<()> {
        self.append(self.event(phase, unit, status, bytes, files, detail), false)
    }

    fn event(
        &self,
        phase: &str,
        unit: &str,
        status: &str,
        bytes: u64,
        files: u64,
        detail: &str,
    ) -> Event {
        Event {
            time_ms: now_ms(),
            run: self.run.clone(),
            phase: phase.into(),
            unit: unit.into(),
            status: status.into(),
            bytes,
            files,
            detail: detail.into(),
            step: None,
        }
    }

    /// Appends one cutover step (typed, with its readable unit) and fsyncs it.
    ///
    /// # Errors
    /// When the write or fsync fails (the caller stops: acting without a journal is not allowed).
    pub fn record_step(
        &self,
        phase: &str,
        step: Step,
        mark: Mark,
        detail: &str,
    ) -> std::io::Result<()> {
        self.append(
            Event {
                time_ms: now_ms(),
                run: self.run.clone(),
                phase: phase.into(),
                unit: step.to_string(),
                status: mark.as_str().into(),
                bytes: 0,
                files: 0,
                detail: detail.into(),
                step: Some(step),
            },
            true,
        )
    }

    fn append(&self, ev: Event, durable: bool) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&ev).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("journal lock poisoned"))?;
        f.write_all(line.as_bytes())?;
        if durable {
            f.sync_data()?;
        }
        Ok(())
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

    #[test]
    fn noted_lines_are_written_at_once_in_order_with_recorded_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path()).expect("open");
        j.note("sync", "sync", "started", 0, 0, "pull")
            .expect("note");
        // Readable before any fsync: a killed process loses no noted line.
        assert_eq!(read(tmp.path()).expect("read").len(), 1);
        j.note("sync", "file env", "done", 3, 1, "").expect("note");
        j.record("sync", "sync", "done", 3, 1, "").expect("record");
        let ev = read(tmp.path()).expect("read");
        let seen: Vec<(&str, &str)> = ev
            .iter()
            .map(|e| (e.unit.as_str(), e.status.as_str()))
            .collect();
        assert_eq!(
            seen,
            [("sync", "started"), ("file env", "done"), ("sync", "done")]
        );
    }

    #[test]
    fn typed_steps_round_trip_with_a_readable_unit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path()).expect("open");
        for step in [
            Step::Cutover,
            Step::Freeze(FreezeMethod::ReadOnly),
            Step::Unfreeze(FreezeMethod::MaintenancePage),
            Step::SwitchBack,
        ] {
            j.record_step("cutover", step, Mark::Done, "x")
                .expect("record");
        }
        let ev = read(tmp.path()).expect("read");
        let steps: Vec<Option<Step>> = ev.iter().map(Event::step).collect();
        assert_eq!(
            steps,
            vec![
                Some(Step::Cutover),
                Some(Step::Freeze(FreezeMethod::ReadOnly)),
                Some(Step::Unfreeze(FreezeMethod::MaintenancePage)),
                Some(Step::SwitchBack)
            ]
        );
        assert_eq!(ev[1].unit, "freeze read-only");
        assert_eq!(ev[3].unit, "switch back");
        assert!(ev.iter().all(|e| e.mark() == Some(Mark::Done)));
    }

    /// Lines exactly as the release before typed steps wrote them.
    #[test]
    fn lines_without_a_step_are_read_by_their_unit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("journal.jsonl"),
            concat!(
                r#"{"time_ms":1,"run":"r","phase":"sync","unit":"file backend-env","status":"done","bytes":3,"files":1,"detail":""}"#,
                "\n",
                r#"{"time_ms":2,"run":"r","phase":"cutover","unit":"freeze stop-apps","status":"started","bytes":0,"files":0,"detail":""}"#,
                "\n",
                r#"{"time_ms":3,"run":"r","phase":"rollback","unit":"unfreeze read-only","status":"done","bytes":0,"files":0,"detail":""}"#,
                "\n",
                r#"{"time_ms":4,"run":"r","phase":"cutover","unit":"cutover","status":"undo-failed","bytes":0,"files":0,"detail":""}"#,
                "\n",
            ),
        )
        .expect("write");
        let ev = read(tmp.path()).expect("read");
        assert_eq!(ev[0].step(), None, "a sync unit is no cutover step");
        assert_eq!(ev[1].step(), Some(Step::Freeze(FreezeMethod::StopApps)));
        assert_eq!(ev[1].mark(), Some(Mark::Started));
        assert_eq!(ev[2].step(), Some(Step::Unfreeze(FreezeMethod::ReadOnly)));
        assert_eq!(ev[3].mark(), Some(Mark::UndoFailed));
        // Written back the way it was read: no `step` appears in lines that had none.
        let again = serde_json::to_string(&ev[1]).expect("json");
        assert!(!again.contains("\"step\""), "{again}");
    }
}
