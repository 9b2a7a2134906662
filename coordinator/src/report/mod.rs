//! The migration report: what a `sync`, `verify`, `cutover` or `rehearse` did, written as a
//! folder `<plan state_dir>/reports/<UTC timestamp>-<kind>/` holding `report.json` (the full
//! data), `report.md` and `report.html` (one self-contained page: a timeline of the phases, bytes
//! and rates per stream, the write-freeze window, the verification table and what to do next).
//!
//! # The model
//! [`Report`] does not depend on any one command: phases on a timeline (offsets in ms from
//! `started`), streams, an optional freeze [`Window`], verification rows, notes and next steps.
//! [`Report::from_sync`] and [`Report::from_verify`] build one from those commands' finished
//! results (`from_results.rs`); [`Builder`] (`builder.rs`) fills one phase by phase while a
//! command made of several phases runs (rehearse, cutover).
//!
//! # Secrets
//! The commands only hand over data that is already redacted; still, [`write()`] passes every
//! string through [`scrub::scrub`] (masks the values of secret-looking `KEY=value` pairs and URL
//! passwords) before anything touches the disk, so a redaction missed upstream stays on this
//! machine's terminal at worst.
//!
//! # Wiring a command (one line each)
//! ```text
//! use crate::report::{self, Builder, Kind, Status};
//! let mut rep = Builder::for_plan(Kind::Cutover, &plan);     // first line: the clock starts
//! let t = std::time::Instant::now();
//! /* … stop writes … */
//! rep.freeze_begins();                                       // the moment writes stop
//! rep.phase_since("freeze", t, Status::Ok, "maintenance page, apps stopped");
//! /* … delta sync … */ rep.add_sync(&sync_report);         // streams and notes
//! /* … verify … */     rep.add_verify(&verify_report);      // verification rows
//! rep.freeze_ends();                                         // writes possible again
//! let dir = report::publish(&plan, &rep.finish(ok), g.quiet); // prints `Report: …` on stderr
//! ```
//! `rehearse` measures durations only; with a builder made at the top of `rehearse::run`
//! (`Builder::new(Kind::Rehearse, "rehearsal", dir.join("plan.toml").display().to_string())`),
//! before the teardown:
//! ```text
//! for p in &phases { rep.then(p.phase, p.ms as u64, p.status.parse().unwrap_or(Status::Failed), p.detail.clone()); }
//! let report_dir = report::publish(&Plan::load(&lab.plan)?, &rep.finish(ok), g.quiet);
//! ```
//! The lab plan's state dir is inside the lab folder, so `--keep` keeps the report and a
//! teardown removes it with the lab — copy it out first if it should outlive the lab.
//! [`publish`] never fails the command: a report that cannot be written is a warning on stderr.
//!
//! # Checking the page by eye
//! `chromium --headless --no-sandbox --disable-gpu --screenshot=/tmp/r.png --window-size=1200,900
//! file:///…/report.html`, then look at `/tmp/r.png`; `tests/tests/report.rs` does this when
//! `/usr/bin/chromium` exists.

mod builder;
mod fmt;
mod from_results;
mod html;
mod markdown;
pub mod scrub;
mod store;
mod svg;

use serde::{Deserialize, Serialize};

pub use builder::Builder;
pub use fmt::{dir_timestamp, now_ms, utc};
pub use from_results::default_next_steps;
pub use store::{ReportError, publish, reports_dir, write};

/// Which command wrote the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `hostshift sync`.
    Sync,
    /// `hostshift verify`.
    Verify,
    /// `hostshift cutover`.
    Cutover,
    /// `hostshift rehearse`.
    Rehearse,
    /// `hostshift rollback`.
    Rollback,
}

impl Kind {
    /// `"sync"`, `"verify"`, `"cutover"`, `"rehearse"`, `"rollback"` (also the suffix of the
    /// report folder).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Verify => "verify",
            Kind::Cutover => "cutover",
            Kind::Rehearse => "rehearse",
            Kind::Rollback => "rollback",
        }
    }
}

/// How a phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It did what it should.
    Ok,
    /// It failed; its detail says why.
    Failed,
    /// It did not run.
    Skipped,
}

impl Status {
    /// `"ok"`, `"failed"`, `"skipped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// A phase status that is not `ok`, `failed` or `skipped`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a phase status (ok, failed, skipped)")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for Status {
    type Err = UnknownStatus;

    /// `ok`, `failed` or `skipped`, as [`Status::as_str`] writes them.
    fn from_str(s: &str) -> Result<Status, UnknownStatus> {
        match s {
            "ok" => Ok(Status::Ok),
            "failed" => Ok(Status::Failed),
            "skipped" => Ok(Status::Skipped),
            other => Err(UnknownStatus(other.to_string())),
        }
    }
}

/// One step on the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// What it was (`check`, `freeze`, `storage evaluations`).
    pub name: String,
    /// Start, ms after [`Report::started`].
    pub start_ms: u64,
    /// End, ms after [`Report::started`] (equal to the start for a skipped phase).
    pub end_ms: u64,
    /// How it ended.
    pub status: Status,
    /// Counts, causes, what changed.
    pub detail: String,
}

/// One data stream (a unit of a sync: a file, a storage tree, a database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// `file backend-env`, `storage evaluations`.
    pub name: String,
    /// Bytes that crossed the network.
    pub bytes: u64,
    /// Wall time.
    pub ms: u64,
    /// Files moved.
    pub files: u64,
    /// Attempts beyond the first.
    pub retries: u32,
}

/// A span of the timeline, ms after [`Report::started`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start.
    pub start_ms: u64,
    /// End.
    pub end_ms: u64,
}

impl Window {
    /// Its length in ms.
    pub fn ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// Everything one command run did, for people (`report.html`, `report.md`) and machines
/// (`report.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Which command.
    pub kind: Kind,
    /// `[migration] name` of the plan.
    pub plan_name: String,
    /// The plan file.
    pub plan_path: String,
    /// Start, ms since the Unix epoch.
    pub started: u64,
    /// End, ms since the Unix epoch.
    pub finished: u64,
    /// The command succeeded.
    pub ok: bool,
    /// The steps, in order.
    pub phases: Vec<Phase>,
    /// Data streams.
    pub streams: Vec<Stream>,
    /// When writes were frozen on the old host (cutover only).
    pub freeze: Option<Window>,
    /// What was compared, and whether it was equal: the verification's own rows.
    pub verification: Vec<crate::sync::verify::Row>,
    /// Anything else worth reading (mode, journal, overrides applied, retried failures).
    pub notes: Vec<String>,
    /// What the operator should do now, commands included.
    pub next_steps: Vec<String>,
}

impl Report {
    /// Wall time in ms.
    pub fn duration_ms(&self) -> u64 {
        self.finished.saturating_sub(self.started)
    }

    /// The end of the timeline: the latest of the duration, phase ends and the freeze end.
    pub fn span_ms(&self) -> u64 {
        let phases = self
            .phases
            .iter()
            .map(|p| p.end_ms.max(p.start_ms))
            .max()
            .unwrap_or(0);
        let freeze = self.freeze.map(|w| w.end_ms.max(w.start_ms)).unwrap_or(0);
        self.duration_ms().max(phases).max(freeze)
    }

    /// The same report with every string passed through [`scrub::scrub`]. The writers only
    /// ever render this.
    pub fn scrubbed(&self) -> Report {
        let s = |x: &String| scrub::scrub(x);
        Report {
            kind: self.kind,
            plan_name: s(&self.plan_name),
            plan_path: s(&self.plan_path),
            started: self.started,
            finished: self.finished,
            ok: self.ok,
            phases: self
                .phases
                .iter()
                .map(|p| Phase {
                    name: s(&p.name),
                    detail: s(&p.detail),
                    ..p.clone()
                })
                .collect(),
            streams: self
                .streams
                .iter()
                .map(|x| Stream {
                    name: s(&x.name),
                    ..x.clone()
                })
                .collect(),
            freeze: self.freeze,
            verification: self
                .verification
                .iter()
                .map(|r| crate::sync::verify::Row {
                    kind: s(&r.kind),
                    name: s(&r.name),
                    old: s(&r.old),
                    new: s(&r.new),
                    detail: s(&r.detail),
                    ..r.clone()
                })
                .collect(),
            notes: self.notes.iter().map(s).collect(),
            next_steps: self.next_steps.iter().map(s).collect(),
        }
    }
}
