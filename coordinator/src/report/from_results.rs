//! A [`Report`] from the finished results of a `sync` or `verify` ([`Report::from_sync`],
//! [`Report::from_verify`]), and the next steps a command of each kind suggests by default.
//! The pieces (streams, rows, notes) are shared with [`super::Builder`], which fills a report
//! while a longer command runs.

use super::fmt::{now_ms, shell_word};
use super::{Kind, Phase, Report, Status, Stream};
use crate::plan::Plan;
use crate::sync::{SyncReport, UnitReport, verify};

pub(super) fn stream_of(u: &UnitReport) -> Stream {
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
pub(super) fn sync_notes(s: &SyncReport) -> Vec<String> {
    let mut notes = vec![format!(
        "{} files ({}) sent in {} mode; {} files already equal were skipped.",
        s.files,
        crate::output::bytes(s.bytes),
        s.mode,
        s.skipped_files
    )];
    for u in &s.units {
        for e in &u.retried {
            notes.push(format!(
                "{} {}: retried after: {}",
                u.kind, u.name, e.message
            ));
        }
    }
    notes.push(format!("Journal: {}", s.journal));
    notes
}

pub(super) fn rows_of(v: &verify::Report) -> Vec<verify::Row> {
    v.rows.clone()
}

/// What to do after a command of `kind` that ended `ok` (or not), with commands for the plan at
/// `plan_path`.
pub fn default_next_steps(kind: Kind, ok: bool, plan_path: &str) -> Vec<String> {
    let p = shell_word(plan_path);
    match (kind, ok) {
        (Kind::Sync, true) => vec![
            format!("Prove the copy: `hostshift verify --plan {p}`."),
            format!("Run `hostshift sync --plan {p}` again shortly before the cutover: only what changed travels, which keeps the write freeze short."),
        ],
        (Kind::Sync, false) => vec![
            "Read the failed units in the timeline table: a refusal names the agent config key to fix; a network or checksum failure was already retried.".into(),
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
            "Read the failed phase in the timeline table: it says what went wrong and what hostshift undid.".into(),
            format!("If traffic was switched and is not back on the old host, switch back: `hostshift rollback --plan {p}`."),
            format!("Compare both hosts: `hostshift verify --plan {p}`."),
        ],
        (Kind::Rehearse, true) => vec![
            "The whole flow works on this machine. For your hosts: `hostshift certs init`, `hostshift plan init`, then `hostshift check`.".into(),
        ],
        (Kind::Rehearse, false) => vec![
            "Read the failed phase in the timeline table; run again with `--keep` to inspect the lab afterwards.".into(),
        ],
        (Kind::Rollback, true) => vec![
            "The old host serves again: check the app through its public address.".into(),
            format!("Before moving again, sync and verify: `hostshift sync --plan {p}`, then `hostshift verify --plan {p}`."),
        ],
        (Kind::Rollback, false) => vec![
            "Read the failed phase in the timeline table and the by-hand steps above it.".into(),
            format!("When the cause is fixed, run `hostshift rollback --plan {p} --yes` again (each undo is safe to repeat)."),
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
                status: if u.status == "failed" {
                    Status::Failed
                } else {
                    Status::Ok
                },
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
                detail: format!(
                    "{} items compared on both hosts, {differ} differ",
                    v.rows.len()
                ),
            }],
            streams: Vec::new(),
            freeze: None,
            verification: rows_of(v),
            notes: Vec::new(),
        }
    }
}
