//! Filling a [`Report`]: from a finished `sync` or `verify`, or phase by phase with [`Builder`]
//! while a longer command (rehearse, cutover) runs. Next steps default by kind and outcome.

use std::time::Instant;

use super::fmt::{now_ms, shell_word};
use super::{Kind, Phase, Report, Status, Stream, VerifyRow, Window};
use crate::plan::Plan;
use crate::sync::{SyncReport, UnitReport, verify};

fn stream_of(u: &UnitReport) -> Stream {
    Stream {
        name: format!("{} {}", u.kind, u.name),
        bytes: u.bytes,
        ms: u.ms,
        files: u.files,
        retries: u.attempts.saturating_sub(1),
    }
}

fn unit_detail(u: &UnitReport) -> String {
    let mut parts = Vec::new();
    if !u.detail.is_empty() {
        parts.push(u.detail.clone());
    }
    if u.skipped_files > 0 {
        parts.push(format!(
            "{} files ({}) already equal, not sent",
            u.skipped_files,
            crate::output::bytes(u.skipped_bytes)
        ));
    }
    if !u.changes.is_empty() {
        parts.push(format!("overrides: {}", u.changes.join("; ")));
    }
    if parts.is_empty() {
        parts.push(u.status.clone());
    }
    parts.join("; ")
}

/// Notes a sync leaves: totals and mode, retried failures, the journal. (Overrides applied and
/// failures are in each unit's phase detail.)
fn sync_notes(s: &SyncReport) -> Vec<String> {
    let mut notes = vec![format!(
        "{} files ({}) sent in {} mode; {} files already equal were skipped.",
        s.files,
        crate::output::bytes(s.bytes),
        s.mode,
        s.skipped_files
    )];
    for u in &s.units {
        for e in &u.retried {
            notes.push(format!("{} {}: retried after: {}", u.kind, u.name, e.message));
        }
    }
    notes.push(format!("Journal: {}", s.journal));
    notes
}

fn rows_of(v: &verify::Report) -> Vec<VerifyRow> {
    v.rows
        .iter()
        .map(|r| VerifyRow {
            kind: r.kind.clone(),
            name: r.name.clone(),
            equal: r.equal,
            old: r.old.clone(),
            new: r.new.clone(),
            detail: r.detail.clone(),
        })
        .collect()
}

/// What to do after a command of `kind` that ended `ok` (or not), with commands for the plan at
/// `plan_path`.
pub fn default_next_steps(kind: Kind, ok: bool, plan_path: &str) -> Vec<String> {
    let p = shell_word(plan_path);
    match (kind, ok) {
        (Kind::Sync, true) => vec![
            format!("Prove the copy: `hostshift verify --plan {p}`."),
            "Run `hostshift sync` again shortly before the cutover: only what changed travels, which keeps the write freeze short.".into(),
        ],
        (Kind::Sync, false) => vec![
            "Read the failed units below: a refusal names the agent config key to fix; a network or checksum failure was already retried.".into(),
            format!("Continue: `hostshift sync --plan {p}` (finished work is not redone). The old host is untouched."),
        ],
        (Kind::Verify, true) => vec![
            "Everything compared is equal: the new host is ready for the cutover.".into(),
            format!("Closer to the switch, sync again (`hostshift sync --plan {p}`) so the cutover's delta is small."),
        ],
        (Kind::Verify, false) => vec![
            format!("Copy what differs: `hostshift sync --plan {p}`."),
            format!("Then compare again: `hostshift verify --plan {p}`."),
        ],
        (Kind::Cutover, true) => vec![
            "Check the app through its public address, as a user would.".into(),
            format!("If anything is wrong, switch back: `hostshift rollback --plan {p}` (traffic returns to the old host and its freeze is undone)."),
            "Keep the old host running and untouched for 24–72 h before decommissioning it: it is your rollback.".into(),
            format!("Compare both hosts again at any time: `hostshift verify --plan {p}`."),
        ],
        (Kind::Cutover, false) => vec![
            "Read the failed phase below: it says what went wrong and what hostshift undid.".into(),
            format!("If traffic was switched and is not back on the old host, switch back: `hostshift rollback --plan {p}`."),
            format!("Compare both hosts: `hostshift verify --plan {p}`."),
        ],
        (Kind::Rehearse, true) => vec![
            "The whole flow works on this machine. For your hosts: `hostshift certs init`, `hostshift plan init`, then `hostshift check`.".into(),
        ],
        (Kind::Rehearse, false) => vec![
            "Read the failed phase below; run again with `--keep` to inspect the lab afterwards.".into(),
        ],
    }
}

impl Report {
    /// The report of a finished `hostshift sync` that began at `started` (ms since the epoch).
    ///
    /// Units run one after another, so the timeline lays them end to end after a `connect` phase
    /// that takes the part of the wall time no unit accounts for (connections, grants).
    pub fn from_sync(s: &SyncReport, plan: &Plan, started: u64) -> Report {
        let units_ms: u64 = s.units.iter().map(|u| u.ms).sum();
        let setup = s.ms.saturating_sub(units_ms);
        let mut phases = vec![Phase {
            name: "connect".into(),
            start_ms: 0,
            end_ms: setup,
            status: Status::Ok,
            detail: format!("both agents over mutual TLS; {} mode", s.mode),
        }];
        let mut at = setup;
        for u in &s.units {
            phases.push(Phase {
                name: format!("{} {}", u.kind, u.name),
                start_ms: at,
                end_ms: at + u.ms,
                status: if u.status == "failed" { Status::Failed } else { Status::Ok },
                detail: unit_detail(u),
            });
            at += u.ms;
        }
        let plan_path = plan.path.display().to_string();
        Report {
            kind: Kind::Sync,
            plan_name: plan.migration.name.clone(),
            next_steps: default_next_steps(Kind::Sync, s.ok, &plan_path),
            plan_path,
            started,
            finished: started + s.ms,
            ok: s.ok,
            phases,
            streams: s.units.iter().map(stream_of).collect(),
            freeze: None,
            verification: Vec::new(),
            notes: sync_notes(s),
        }
    }

    /// The report of a finished `hostshift verify` (which ended just now).
    pub fn from_verify(v: &verify::Report, plan: &Plan) -> Report {
        let finished = now_ms();
        let differ = v.rows.iter().filter(|r| !r.equal).count();
        let plan_path = plan.path.display().to_string();
        Report {
            kind: Kind::Verify,
            plan_name: plan.migration.name.clone(),
            next_steps: default_next_steps(Kind::Verify, v.ok, &plan_path),
            plan_path,
            started: finished.saturating_sub(v.ms),
            finished,
            ok: v.ok,
            phases: vec![Phase {
                name: "compare".into(),
                start_ms: 0,
                end_ms: v.ms,
                status: if v.ok { Status::Ok } else { Status::Failed },
                detail: format!("{} items compared on both hosts, {differ} differ", v.rows.len()),
            }],
            streams: Vec::new(),
            freeze: None,
            verification: rows_of(v),
            notes: Vec::new(),
        }
    }
}

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
        Builder::new(kind, plan.migration.name.clone(), plan.path.display().to_string())
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
    pub fn phase_since(&mut self, name: impl Into<String>, began: Instant, status: Status, detail: impl Into<String>) -> &mut Self {
        let (start_ms, end_ms) = (self.offset(began), self.elapsed());
        self.phase(Phase { name: name.into(), start_ms, end_ms, status, detail: detail.into() })
    }

    /// Adds a phase that did not run (drawn as a mark at the current time).
    pub fn skipped(&mut self, name: impl Into<String>, why: impl Into<String>) -> &mut Self {
        let at = self.elapsed();
        self.phase(Phase { name: name.into(), start_ms: at, end_ms: at, status: Status::Skipped, detail: why.into() })
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
            self.report.freeze = Some(Window { start_ms, end_ms: self.elapsed() });
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
        self.report.finished = self.report.started + self.elapsed();
        if self.report.next_steps.is_empty() {
            self.report.next_steps = default_next_steps(self.report.kind, ok, &self.report.plan_path);
        }
        self.report
    }
}
