//! [`Builder`]: a [`Report`] filled phase by phase while a longer command (rehearse, cutover)
//! runs, every offset measured on a monotonic clock from the builder's creation.

use std::time::Instant;

use super::fmt::now_ms;
use super::from_results::{default_next_steps, rows_of, stream_of, sync_notes};
use super::{Kind, Phase, Report, Status, Stream, Window};
use crate::plan::Plan;
use crate::sync::{SyncReport, verify};

/// Builds a [`Report`] while a command runs: the clock starts at [`Builder::new`] and every
/// offset is measured on a monotonic clock from there.
pub struct Builder {
    report: Report,
    t0: Instant,
    freeze_start: Option<u64>,
}

impl Builder {
    /// A report of `kind` about the plan named `plan_name` at `plan_path`, starting now.
    pub fn new(kind: Kind, plan_name: impl Into<String>, plan_path: impl Into<String>) -> Builder {
        Builder {
            report: Report {
                kind,
                plan_name: plan_name.into(),
                plan_path: plan_path.into(),
                started: now_ms(),
                finished: 0,
                ok: false,
                phases: Vec::new(),
                streams: Vec::new(),
                freeze: None,
                verification: Vec::new(),
                notes: Vec::new(),
                next_steps: Vec::new(),
            },
            t0: Instant::now(),
            freeze_start: None,
        }
    }

    /// A report of `kind` about `plan`, starting now.
    pub fn for_plan(kind: Kind, plan: &Plan) -> Builder {
        Builder::new(
            kind,
            plan.migration.name.clone(),
            plan.path.display().to_string(),
        )
    }

    /// ms from the start to `t` (0 for an instant before the start).
    pub fn offset(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_millis() as u64
    }

    /// ms from the start to now.
    pub fn elapsed(&self) -> u64 {
        self.offset(Instant::now())
    }

    /// Adds a phase that began at `began` and ends now.
    pub fn phase_since(
        &mut self,
        name: impl Into<String>,
        began: Instant,
        status: Status,
        detail: impl Into<String>,
    ) -> &mut Self {
        self.phase_until(name, began, Instant::now(), status, detail)
    }

    /// Adds a phase that began at `began` and ended at `ended` (one that ran beside another and
    /// ended before it was reported).
    pub fn phase_until(
        &mut self,
        name: impl Into<String>,
        began: Instant,
        ended: Instant,
        status: Status,
        detail: impl Into<String>,
    ) -> &mut Self {
        let (start_ms, end_ms) = (self.offset(began), self.offset(ended));
        self.phase(Phase {
            name: name.into(),
            start_ms,
            end_ms,
            status,
            detail: detail.into(),
        })
    }

    /// Adds a phase that did not run, drawn as a mark now (or after the last phase, whichever
    /// is later).
    pub fn skipped(&mut self, name: impl Into<String>, why: impl Into<String>) -> &mut Self {
        let last = self
            .report
            .phases
            .iter()
            .map(|p| p.end_ms)
            .max()
            .unwrap_or(0);
        let at = self.elapsed().max(last);
        self.phase(Phase {
            name: name.into(),
            start_ms: at,
            end_ms: at,
            status: Status::Skipped,
            detail: why.into(),
        })
    }

    /// Adds a phase of `ms` that starts where the last phase ended: for commands that measured
    /// durations only, one phase after another.
    pub fn then(
        &mut self,
        name: impl Into<String>,
        ms: u64,
        status: Status,
        detail: impl Into<String>,
    ) -> &mut Self {
        let start_ms = self
            .report
            .phases
            .iter()
            .map(|p| p.end_ms)
            .max()
            .unwrap_or(0);
        let end_ms = if status == Status::Skipped {
            start_ms
        } else {
            start_ms + ms
        };
        self.phase(Phase {
            name: name.into(),
            start_ms,
            end_ms,
            status,
            detail: detail.into(),
        })
    }

    /// Adds a phase with explicit offsets.
    pub fn phase(&mut self, p: Phase) -> &mut Self {
        self.report.phases.push(p);
        self
    }

    /// Writes stop on the old host now.
    pub fn freeze_begins(&mut self) -> &mut Self {
        self.freeze_start = Some(self.elapsed());
        self
    }

    /// Writes are possible again now (on whichever host serves). Without a matching
    /// [`Builder::freeze_begins`] this does nothing.
    pub fn freeze_ends(&mut self) -> &mut Self {
        if let Some(start_ms) = self.freeze_start.take() {
            self.report.freeze = Some(Window {
                start_ms,
                end_ms: self.elapsed(),
            });
        }
        self
    }

    /// Sets the freeze window explicitly.
    pub fn freeze(&mut self, w: Window) -> &mut Self {
        self.freeze_start = None;
        self.report.freeze = Some(w);
        self
    }

    /// Adds the streams and notes of a sync that ran inside this command.
    pub fn add_sync(&mut self, s: &SyncReport) -> &mut Self {
        self.report.streams.extend(s.units.iter().map(stream_of));
        self.report.notes.extend(sync_notes(s));
        self
    }

    /// Adds the rows of a verification that ran inside this command.
    pub fn add_verify(&mut self, v: &verify::Report) -> &mut Self {
        self.report.verification.extend(rows_of(v));
        self
    }

    /// Adds a stream.
    pub fn stream(&mut self, s: Stream) -> &mut Self {
        self.report.streams.push(s);
        self
    }

    /// Adds a note.
    pub fn note(&mut self, n: impl Into<String>) -> &mut Self {
        self.report.notes.push(n.into());
        self
    }

    /// Adds a next step; when none is added, [`default_next_steps`] fills them in.
    pub fn next_step(&mut self, s: impl Into<String>) -> &mut Self {
        self.report.next_steps.push(s.into());
        self
    }

    /// The finished report. A freeze still open is closed now.
    pub fn finish(mut self, ok: bool) -> Report {
        self.freeze_ends();
        self.report.ok = ok;
        // Never shorter than what was put on the timeline.
        self.report.finished = self.report.started + self.elapsed().max(self.report.span_ms());
        if self.report.next_steps.is_empty() {
            self.report.next_steps =
                default_next_steps(self.report.kind, ok, &self.report.plan_path);
        }
        self.report
    }
}
