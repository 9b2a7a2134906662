//! A cutover or rollback in flight ([`Cut`]): the journal line before and after every step
//! (`begin`/`end`, where a journal that cannot be written stops the run), the step list of the
//! report, and the connections to both agents (why one could not be reached is kept for the
//! gates and `--resume`).

use std::time::Instant;

use super::error::{CutoverError, StartError};
use super::injected;
use super::outcome::{CutoverReport, DeltaSummary, Outcome, StepReport};
use super::state::ROLLBACK;
use crate::client::{self, Agent};
use crate::journal::{Journal, Mark, Step as JStep};
use crate::plan::{FreezeMethod, Plan, Side};
use crate::progress::{Mode, Progress};
use crate::report::{Builder, Kind, Status, now_ms};

/// A cutover or rollback in flight.
pub(super) struct Cut<'a> {
    pub(super) plan: &'a Plan,
    pub(super) journal: Journal,
    /// Shared with the syncs the steps run (the delta, the carry-back), so that on a terminal
    /// the steps' spinners and the syncs' bars are drawn in one place.
    pub(super) progress: std::sync::Arc<Progress>,
    pub(super) rep: Builder,
    pub(super) out: CutoverReport,
    pub(super) old: Option<Agent>,
    pub(super) new: Option<Agent>,
    /// Why an agent could not be reached (agent, address and cause), kept for `--resume`.
    pub(super) connect_errors: Vec<String>,
    /// Freeze methods applied or started, in order.
    pub(super) frozen: Vec<FreezeMethod>,
    /// The switch was attempted.
    pub(super) switched: bool,
    /// Every freeze method of the plan was applied (the injected journal failure starts here).
    pub(super) freeze_complete: bool,
    /// Wall-clock start of the freeze (ms since the epoch).
    pub(super) freeze_started_ms: Option<u64>,
    pub(super) phase: &'static str,
    /// A rehearsal (see [`Options::rehearsal`]).
    pub(super) rehearsal: bool,
    /// The new host's table fingerprints as the proof found them.
    pub(super) new_at_proof:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Followed databases caught up in this run (plan name, tables not followed): their delta
    /// covers only those tables.
    pub(super) followed: Vec<(String, Vec<String>)>,
    /// A follow took part: it is cleaned up after the switch or the undo.
    pub(super) follow_used: bool,
    /// `cutover --resume`.
    pub(super) resumed: bool,
    /// Snapshots the new agent holds of the followed databases for the proof after the switch.
    pub(super) held: Vec<super::held_proof::Held>,
    /// Renews their leases while held.
    pub(super) renewer: Option<super::held_proof::Renewer>,
    /// Per followed database, the old host's fingerprints the delta took of the tables outside
    /// the stream (`schema.table` → `rows/digest`).
    pub(super) old_at_delta:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// `new-host-at-switch.json` is `pending` (written before the switch, completed by the proof
    /// after it).
    pub(super) baseline_pending: bool,
    /// The proof after the switch began: a failure from here names the new host's writes.
    pub(super) proof_after_switch_started: bool,
}

impl<'a> Cut<'a> {
    pub(super) fn new(
        plan: &'a Plan,
        mode: Mode,
        kind_phase: &'static str,
    ) -> Result<Cut<'a>, StartError> {
        let dir = plan.state_dir();
        let journal = Journal::open(&dir).map_err(|source| StartError::Journal {
            path: dir.display().to_string(),
            source,
        })?;
        let out = CutoverReport {
            ok: false,
            outcome: Outcome::GatesFailed,
            run: journal.run().to_string(),
            freeze_ms: None,
            predicted_freeze_ms: None,
            rehearsed_freeze_ms: None,
            gates: vec![],
            steps: vec![],
            delta: DeltaSummary::default(),
            verification: vec![],
            error: None,
            undo_instructions: vec![],
            new_host_writes: vec![],
            not_carried_back: vec![],
            carried_back: vec![],
            follow: vec![],
            report_dir: None,
            journal: journal.path().display().to_string(),
        };
        Ok(Cut {
            plan,
            journal,
            progress: std::sync::Arc::new(Progress::new(mode)),
            rep: Builder::for_plan(
                if kind_phase == ROLLBACK {
                    Kind::Rollback
                } else {
                    Kind::Cutover
                },
                plan,
            ),
            out,
            old: None,
            new: None,
            connect_errors: vec![],
            frozen: vec![],
            switched: false,
            freeze_complete: false,
            freeze_started_ms: None,
            phase: kind_phase,
            rehearsal: false,
            new_at_proof: Default::default(),
            followed: vec![],
            follow_used: false,
            resumed: false,
            held: vec![],
            renewer: None,
            old_at_delta: Default::default(),
            baseline_pending: false,
            proof_after_switch_started: false,
        })
    }

    /// Journals `step` (fsynced).
    ///
    /// # Errors
    /// [`CutoverError::Journal`]: the caller stops — acting on without a record is not allowed.
    pub(super) fn record(&self, step: JStep, mark: Mark, detail: &str) -> Result<(), CutoverError> {
        let written = if self.freeze_complete && injected("journal").is_err() {
            Err(std::io::Error::other(
                "injected failure at journal (HOSTSHIFT_TEST_FAIL_AT, debug builds only)",
            ))
        } else {
            self.journal.record_step(self.phase, step, mark, detail)
        };
        written.map_err(|source| CutoverError::Journal {
            path: self.journal.path().to_path_buf(),
            source,
        })
    }

    /// Journals `step` as started; returns its start time.
    pub(super) fn begin(&mut self, step: JStep) -> Result<Instant, CutoverError> {
        self.record(step, Mark::Started, "")?;
        self.progress.step_started(&step.to_string());
        Ok(Instant::now())
    }

    /// Journals and reports how `step` ended; passes the result on (a journal that cannot be
    /// written turns it into that failure: acting on without a record is not allowed).
    pub(super) fn end(
        &mut self,
        step: JStep,
        t: Instant,
        r: Result<String, CutoverError>,
    ) -> Result<String, CutoverError> {
        self.end_at(step, t, Instant::now(), r)
    }

    /// As [`Cut::end`], for a step that ran beside another and ended at `ended`, before it
    /// could be journaled: the report shows its own duration, not the longer one's.
    pub(super) fn end_at(
        &mut self,
        step: JStep,
        t: Instant,
        ended: Instant,
        r: Result<String, CutoverError>,
    ) -> Result<String, CutoverError> {
        let (mark, detail) = match &r {
            Ok(d) => (Mark::Done, d.clone()),
            Err(e) => (Mark::Failed, e.to_string()),
        };
        let r = match self.record(step, mark, &detail) {
            Err(j) => Err(j),
            Ok(()) => r,
        };
        let shown = match &r {
            Ok(d) => d.clone(),
            Err(e) => e.to_string(),
        };
        self.progress.step_ended(
            &step.to_string(),
            &format!(
                "{step}: {} — {shown}",
                if r.is_ok() { "ok" } else { "FAILED" },
            ),
        );
        self.out.steps.push(StepReport {
            name: step.to_string(),
            status: if r.is_ok() { "done" } else { "failed" }.into(),
            ms: ended.saturating_duration_since(t).as_millis() as u64,
            detail: shown.clone(),
        });
        self.rep.phase_until(
            step.to_string(),
            t,
            ended,
            if r.is_ok() {
                Status::Ok
            } else {
                Status::Failed
            },
            shown,
        );
        r
    }

    pub(super) fn skipped(&mut self, step: JStep, why: &str) -> Result<(), CutoverError> {
        self.record(step, Mark::Skipped, why)?;
        self.progress.say(&format!("{step}: skipped — {why}"));
        self.out.steps.push(StepReport {
            name: step.to_string(),
            status: "skipped".into(),
            ms: 0,
            detail: why.into(),
        });
        self.rep.skipped(step.to_string(), why);
        Ok(())
    }

    pub(super) async fn connect(&mut self) {
        let (old, new) = tokio::join!(
            client::connect(self.plan, Side::Old),
            client::connect(self.plan, Side::New)
        );
        match old {
            Ok(a) => self.old = Some(a),
            Err(e) => self.connect_errors.push(e.to_string()),
        }
        match new {
            Ok(a) => self.new = Some(a),
            Err(e) => self.connect_errors.push(e.to_string()),
        }
    }

    pub(super) fn old(&self) -> Result<&Agent, CutoverError> {
        self.old
            .as_ref()
            .ok_or(CutoverError::NotConnected(Side::Old))
    }

    pub(super) fn freeze_ms(&self) -> Option<u64> {
        self.freeze_started_ms.map(|s| now_ms().saturating_sub(s))
    }
}

/// A step's result with the moment it ended, for [`Cut::end_at`] (the step ran beside another).
pub(super) async fn ended<T>(r: T) -> (T, Instant) {
    (r, Instant::now())
}
