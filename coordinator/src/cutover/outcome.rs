//! What a cutover or rollback returns ([`CutoverReport`]: outcome, steps, delta, proof, what to
//! do next) and, at the end of a run, its report folder ([`Cut::finish`]).

use serde::{Deserialize, Serialize};

use super::cut::Cut;
use super::gates::Gate;
use crate::report;
use crate::sync::verify;

/// How a cutover (or rollback) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Traffic is on the new host; the old host stays frozen.
    Switched,
    /// `--dry-run`: the gates were checked, nothing was touched.
    DryRun,
    /// A gate failed; nothing was touched.
    GatesFailed,
    /// A step failed and everything was undone: the old host serves as before.
    RolledBack,
    /// A step failed and the undo failed too: operator action needed.
    UndoFailed,
    /// The journal could not be written: the run stopped where it was, undoing nothing
    /// unrecorded; the report says where the hosts stand. Operator action needed.
    JournalFailed,
    /// A resumed cutover whose proof after the switch can no longer run (the new host's
    /// snapshot at the switch is gone): traffic stays on the new host, the old host frozen;
    /// the operator rolls back or accepts (`--accept-unproven`).
    Unproven,
}

impl Outcome {
    /// The journal's and JSON's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Switched => "switched",
            Outcome::DryRun => "dry-run",
            Outcome::GatesFailed => "gates-failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::UndoFailed => "undo-failed",
            Outcome::JournalFailed => "journal-failed",
            Outcome::Unproven => "unproven",
        }
    }
}

/// One step as it ran (the report's and `--json`'s view; the journal's is
/// [`crate::journal::Step`]).
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// `freeze read-only`, `delta`, `prove`, `switch`, `verify`, `unfreeze …`, `switch back`.
    pub name: String,
    /// `done`, `failed`, `skipped`.
    pub status: String,
    /// Wall time.
    pub ms: u64,
    /// What it did or why it failed.
    pub detail: String,
}

/// What the final delta moved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeltaSummary {
    /// Bytes streamed.
    pub bytes: u64,
    /// Tables that differed.
    pub tables: u64,
    /// Table pieces (key ranges or whole tables) re-copied.
    pub ranges: u64,
    /// Files (storage and config) copied.
    pub files: u64,
}

/// The result of `cutover` or `rollback`.
#[derive(Clone, Debug, Serialize)]
pub struct CutoverReport {
    /// Did what was asked (switched, a dry run whose gates pass, a rollback).
    pub ok: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// The journal's run id.
    pub run: String,
    /// The measured write freeze (see the module docs), when writes were frozen.
    pub freeze_ms: Option<u64>,
    /// The gates' prediction.
    pub predicted_freeze_ms: Option<u64>,
    /// A rehearsal: the delta and proof, timed without freezing anything.
    pub rehearsed_freeze_ms: Option<u64>,
    /// The gates' verdicts (empty on resume and rollback).
    pub gates: Vec<Gate>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// What the delta moved.
    pub delta: DeltaSummary,
    /// The proof: every compared item.
    pub verification: Vec<verify::Row>,
    /// The cause of a failure.
    pub error: Option<String>,
    /// When the undo failed: what to do, in order.
    pub undo_instructions: Vec<String>,
    /// Rollback: tables written on the new host since the switch (not copied back), as
    /// `database schema.table: how the rows moved`.
    pub new_host_writes: Vec<String>,
    /// Rollback within the window: config files, storage trees and large objects of the new
    /// host not carried back, by name, with why (the operator copies them).
    pub not_carried_back: Vec<String>,
    /// Rollback within the window: the storage trees, config files and large objects of the
    /// new host carried back into the old host inside the rollback's freeze.
    pub carried_back: Vec<String>,
    /// Followed databases: the follower's catch-up inside the freeze (empty: the key-range
    /// delta of every table, the fallback).
    pub follow: Vec<super::follow_path::FollowCatchUp>,
    /// The report folder.
    pub report_dir: Option<String>,
    /// The journal file.
    pub journal: String,
}

impl Cut<'_> {
    pub(super) fn finish(mut self, quiet: bool, write_report: bool) -> CutoverReport {
        if let Some(ms) = self.out.freeze_ms {
            self.rep.note(format!("write freeze: {ms} ms"));
        }
        for c in &self.out.follow {
            self.rep.note(format!(
                "database {}: followed; the follower applied up to {} in {} ms inside the freeze",
                c.database, c.lsn, c.waited_ms
            ));
        }
        if self.out.delta.bytes > 0 || self.out.delta.ranges > 0 {
            self.rep.note(format!(
                "final delta: {} bytes, {} table(s), {} range(s), {} file(s)",
                self.out.delta.bytes,
                self.out.delta.tables,
                self.out.delta.ranges,
                self.out.delta.files
            ));
        }
        let plan_path = self.plan.path.display().to_string();
        match self.out.outcome {
            Outcome::Switched => {
                self.rep.next_step(format!(
                    "Watch the new host; to go back: hostshift rollback --plan {plan_path} --yes (writes made on the new host since the switch are not copied back)"
                ));
                self.rep.next_step(
                    "The old host stays frozen (read-only, maintenance page): decommission it once you trust the new one, keeping its last backup",
                );
            }
            Outcome::UndoFailed | Outcome::JournalFailed => {
                for i in &self.out.undo_instructions {
                    self.rep.next_step(i.clone());
                }
            }
            _ => {}
        }
        let ok = self.out.ok;
        if write_report && !matches!(self.out.outcome, Outcome::DryRun) {
            self.out.report_dir = report::publish(self.plan, &self.rep.finish(ok), quiet)
                .map(|d| d.display().to_string());
        }
        self.out
    }
}
