//! `hostshift cutover`: the moment traffic moves. Gates → freeze writes on the old host → final
//! delta sync → proof of equality (and that the old host did not change during the freeze) →
//! traffic switch → verification through the public endpoint; undone on any failure. For
//! followed databases the proof inside the freeze is cheap and the full one runs after the
//! switch against a snapshot of the new host taken before traffic moved (`held_proof.rs`).
//!
//! # Journal and state machine
//! Every step writes `started` to the journal (`<state_dir>/<name>/journal.jsonl`, fsynced)
//! before it acts and `done`/`failed` after, under the phase `cutover`; the run itself is the
//! unit `cutover` (its `done` detail is the outcome). [`state::of`] reads it back, so after a
//! crash `cutover --resume` continues and `rollback` knows what to undo — and a plain `cutover`
//! refuses while one is unfinished.
//!
//! # Failure handling
//! - Before anything is frozen (gates): nothing to undo; exit 1.
//! - After the freeze began, before the switch: every freeze method applied (or started) is
//!   undone in reverse order; exit 1, the old host serving as before.
//! - During or after the switch: traffic is switched back to the old host first (a no-op when it
//!   never moved), then the freeze is undone; exit 1.
//! - An undo that fails: exit 3 with the exact commands to finish it by hand (and `hostshift
//!   rollback`, which repeats every undo; each is safe to repeat).
//!
//! The old host's data is never written: the freeze methods are the only changes there, and each
//! is reversible. After a successful cutover the old host **stays frozen** — a write accepted
//! there would be lost — until `rollback` or its decommissioning.
//!
//! # The freeze window
//! From the moment the first freeze method starts until traffic is confirmed on the new host (or,
//! when the cutover is undone, until the old host is unfrozen): the time no write is accepted
//! anywhere. With `method = "none"` it ends when the cutover tells the operator to switch.
//!
//! # Files
//! - `mod.rs` — [`run`] and [`rollback`]: the order of the steps and how a run ends.
//! - `cut.rs` — the run in flight: journaling each step (`begin`/`end`), connecting the agents.
//! - `steps.rs` — the forward steps: freeze, final delta, proof, switch, public checks.
//! - `follow_path.rs` — the catch-up of followed databases and the follow's cleanup.
//! - `held_proof.rs` — followed databases: the cheap checks in the freeze, the snapshot of the
//!   new host held at the switch, and the full proof after the switch under it.
//! - `undo.rs` — undoing on failure, the journal-failure stop, rollback's new-host writes.
//! - `outcome.rs` — what a run returns ([`CutoverReport`]) and its report folder.
//! - [`gates`], [`freeze`], [`traffic`], [`new_writes`], [`direction`] — what each step does on
//!   the hosts; [`state`] reads the journal back; [`error`] is [`CutoverError`].

mod cut;
pub mod direction;
pub mod error;
mod follow_path;
pub mod freeze;
pub mod gates;
mod held_proof;
pub mod new_writes;
mod outcome;
pub mod state;
mod steps;
pub mod traffic;
mod undo;
mod window_steps;

use std::time::{Duration, Instant};

use crate::journal::{self, Mark, Step as JStep};
use crate::phase::traced;
use crate::plan::Plan;
use crate::progress::Mode;
use cut::Cut;
use state::{PHASE, ROLLBACK};

pub use error::{CutoverError, StartError};
pub use follow_path::FollowCatchUp;
pub use outcome::{CutoverReport, DeltaSummary, Outcome, StepReport};
pub use steps::STORAGE_WRITER;

/// How long the traffic switch may take to be confirmed.
const SWITCH_DEADLINE: Duration = Duration::from_secs(180);
/// Attempts per public URL after the switch (pauses double from 0.5 s; DNS may need more).
const VERIFY_ATTEMPTS: u32 = 8;

/// How to run the cutover.
pub struct Options {
    /// Check the gates only.
    pub dry_run: bool,
    /// Continue an unfinished cutover from the freeze (its gates passed before).
    pub resume: bool,
    /// With `resume`, after a crash between the switch and the proof after the switch whose
    /// snapshot is gone: keep traffic on the new host without that proof.
    pub accept_unproven: bool,
    /// Skip the backup gate, with this reason (journaled).
    pub skip_backup_check: Option<String>,
    /// Progress on stderr.
    pub progress: Mode,
    /// `hostshift rehearse --plan`: the same run against scratch targets, except that the old
    /// host is never frozen and traffic never switched (the gates that concern them, the
    /// freeze, the switch and the public checks are skipped). The time of delta + proof is
    /// reported as `rehearsed_freeze_ms`: what the freeze would have lasted.
    pub rehearsal: bool,
    /// Write the cutover's own report folder (the local rehearsal folds it into its own).
    pub write_report: bool,
}

/// The span of one cutover or rollback step (see [`crate::phase`]).
fn step_span(step: &'static str) -> tracing::Span {
    tracing::info_span!("step", name = %step)
}

/// A test-only failure injected at `step` (debug builds: `HOSTSHIFT_TEST_FAIL_AT=step[,step]`),
/// so the tests can prove the undo from every step with real agents, PM2, nginx and AWS.
/// `journal` makes every journal write fail once the freeze is complete.
fn injected(step: &str) -> Result<(), CutoverError> {
    if cfg!(debug_assertions)
        && std::env::var("HOSTSHIFT_TEST_FAIL_AT")
            .is_ok_and(|v| v.split(',').any(|s| s.trim() == step))
    {
        return Err(CutoverError::Injected(step.to_string()));
    }
    Ok(())
}

/// A test-only pause at `step` (debug builds: `HOSTSHIFT_TEST_PAUSE_AT=step:FILE`): creates
/// `FILE.reached`, then waits (at most 60 s) until `FILE.go` exists — so a test can act on the
/// hosts at an exact point of the cutover (e.g. write on the frozen old host as a superuser).
async fn paused(step: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(v) = std::env::var("HOSTSHIFT_TEST_PAUSE_AT") else {
        return;
    };
    let Some((at, file)) = v.split_once(':') else {
        return;
    };
    if at != step {
        return;
    }
    let _ = std::fs::write(format!("{file}.reached"), step);
    let go = std::path::PathBuf::from(format!("{file}.go"));
    let until = Instant::now() + Duration::from_secs(60);
    while !go.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the cutover (or, with `opts.resume`, continues one whose gates passed earlier: `st` is
/// the journal's state).
///
/// # Errors
/// [`StartError`] when the journal cannot be opened or written before anything was done; every
/// later failure is in the report.
pub async fn run(
    plan: &Plan,
    opts: &Options,
    st: &state::State,
) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, opts.progress, PHASE)?;
    c.rehearsal = opts.rehearsal;
    let quiet = opts.progress == Mode::Quiet;
    traced(step_span("connect"), c.connect()).await;
    if opts.resume {
        c.resumed = true;
        c.freeze_started_ms = st.freeze_started_ms;
        // The earlier run's freeze and switch count: a failure undoes them too.
        for m in &st.frozen_methods {
            if !c.frozen.contains(m) {
                c.frozen.push(*m);
            }
        }
        c.switched |= st.switched;
        c.record(
            JStep::Cutover,
            Mark::Resumed,
            st.run.as_deref().unwrap_or(""),
        )
        .map_err(|e| StartError::from_cutover(e, plan))?;
    } else {
        if !opts.dry_run {
            c.record(JStep::Cutover, Mark::Started, &direction::of(plan))
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let t = Instant::now();
        if !opts.dry_run {
            c.record(JStep::Gates, Mark::Started, "")
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let events = journal::read(&plan.state_dir()).map_err(|source| StartError::Journal {
            path: plan.state_dir().display().to_string(),
            source,
        })?;
        let inputs = gates::Inputs {
            plan,
            old: c.old.as_ref(),
            new: c.new.as_ref(),
            connect_errors: c.connect_errors.clone(),
            events: &events,
            skip_backup: opts.skip_backup_check.as_deref(),
            rehearsal: opts.rehearsal,
        };
        let (g, predicted) = traced(step_span("gates"), gates::check(&inputs)).await;
        c.out.gates = g;
        c.out.predicted_freeze_ms = predicted;
        let failed: Vec<String> = c
            .out
            .gates
            .iter()
            .filter(|g| !g.ok)
            .map(|g| format!("{}: {}", g.name, g.detail))
            .collect();
        let verdict = if failed.is_empty() {
            Ok(format!("{} gates pass", c.out.gates.len()))
        } else {
            Err(CutoverError::Gate(failed.join("; ")))
        };
        if let Some(reason) = &opts.skip_backup_check
            && !opts.dry_run
        {
            c.record(JStep::BackupCheckSkipped, Mark::Done, reason)
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let verdict = if opts.dry_run {
            // A dry run journals nothing.
            c.out.steps.push(StepReport {
                name: JStep::Gates.to_string(),
                status: if verdict.is_ok() { "done" } else { "failed" }.into(),
                ms: t.elapsed().as_millis() as u64,
                detail: match &verdict {
                    Ok(d) => d.clone(),
                    Err(e) => e.to_string(),
                },
            });
            verdict
        } else {
            c.end(JStep::Gates, t, verdict)
        };
        if let Err(e) = verdict {
            c.out.error = Some(e.to_string());
            c.out.outcome = Outcome::GatesFailed;
            if e.is_journal() {
                // Nothing was touched: the journal's unfinished run counts as stopped at the
                // gates (see `state::of`).
                return Err(StartError::from_cutover(e, plan));
            }
            if !opts.dry_run
                && let Err(j) = c.record(JStep::Cutover, Mark::Done, Outcome::GatesFailed.as_str())
            {
                c.out.error = Some(format!(
                    "{e}; {j} (nothing was touched, so nothing is lost)"
                ));
            }
            return Ok(c.finish(quiet, opts.write_report));
        }
        if opts.dry_run {
            c.out.ok = true;
            c.out.outcome = Outcome::DryRun;
            return Ok(c.finish(quiet, opts.write_report));
        }
    }
    let result: Result<(), CutoverError> = async {
        if c.old.is_none() || c.new.is_none() {
            return Err(CutoverError::Unreachable(c.connect_errors.clone()));
        }
        if c.rehearsal {
            let t = Instant::now();
            c.skipped(JStep::FreezeAll, "rehearsal: the old host keeps serving")?;
            let delta = traced(step_span("delta"), c.delta()).await?;
            traced(step_span("prove"), c.prove(&delta)).await?;
            c.out.rehearsed_freeze_ms = Some(t.elapsed().as_millis() as u64);
            c.skipped(JStep::Switch, "rehearsal: traffic stays where it is")?;
            return Ok(());
        }
        if c.resumed && st.proof_pending {
            // Switched, the proof after the switch not done: see `held_proof` for the rule.
            c.follow_used = c.follow_present().await;
            if opts.accept_unproven {
                c.accept_unproven().await?;
            } else {
                traced(step_span("prove after switch"), c.resume_held_proof()).await?;
            }
            traced(step_span("window open"), c.window_open()).await?;
            traced(step_span("verify"), c.verify_public()).await?;
            return Ok(());
        }
        // The rollback window's slot, before the freeze (creating one can wait seconds for the
        // new host's running transactions); its anchor is taken inside the freeze.
        traced(step_span("window slot"), c.window_slot()).await;
        traced(step_span("freeze"), c.freeze()).await?;
        let followed = c.followed_now().await?;
        let delta = c.catch_up_and_delta(followed).await?;
        // The proof, the new host's snapshots for the proof after the switch (followed
        // databases) and the rollback window's anchor (its slot exists since before the freeze,
        // or is created now), at once.
        c.prove_hold_anchor(&delta).await?;
        traced(step_span("switch"), c.switch()).await?;
        // The freeze window has ended: the full proof of the followed databases runs while the
        // new host serves, and a difference switches traffic back.
        traced(step_span("prove after switch"), c.prove_after_switch()).await?;
        // Proven: now the old host may follow the new one. Not before — a difference found by
        // the proof switches back, and the old host must not hold any of the new host's writes
        // then (the slot kept them all; the follower starts from the window's anchor).
        traced(step_span("window open"), c.window_open()).await?;
        traced(step_span("verify"), c.verify_public()).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            c.out.ok = true;
            c.out.outcome = Outcome::Switched;
            // The slot would keep WAL on the old host for nothing from now on.
            let cleaned = if c.follow_used {
                traced(step_span("follow cleanup"), c.follow_cleanup()).await
            } else {
                Ok(())
            };
            let recorded = cleaned
                .and_then(|()| c.record(JStep::Cutover, Mark::Done, Outcome::Switched.as_str()));
            if let Err(e) = recorded {
                c.journal_failed_at_the_end(&e);
            }
        }
        // The new host served since the switch: undoing would drop its writes unasked. The
        // window stays prepared (its slot keeps the new host's writes for a rollback).
        Err(cause @ CutoverError::ProofImpossible(_)) => c.unproven(&cause),
        Err(cause) => {
            // The follower must not write into the old host once it serves again.
            c.window_abandon().await;
            traced(step_span("undo"), c.fail(cause)).await;
        }
    }
    Ok(c.finish(quiet, opts.write_report))
}

/// `hostshift rollback`: traffic back to the old host (when the plan has a switch) and every
/// freeze method of the plan undone there — whatever the journal says, since each undo is
/// idempotent.
///
/// # Errors
/// [`StartError`] when the journal cannot be opened or written before anything was done.
pub async fn rollback(plan: &Plan, mode: Mode) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, mode, ROLLBACK)?;
    let quiet = mode == Mode::Quiet;
    traced(step_span("connect"), c.connect()).await;
    c.record(JStep::Rollback, Mark::Started, "")
        .map_err(|e| StartError::from_cutover(e, plan))?;
    if !c.connect_errors.is_empty() {
        c.progress.say(&c.connect_errors.join("; "));
    }
    // Within the rollback window: the new host frozen and drained into the old one first.
    let Some(drained) = traced(step_span("window drain"), c.window_drain()).await else {
        let _ = c.record(JStep::Rollback, Mark::Failed, "");
        return Ok(c.finish(quiet, true));
    };
    // Still inside the freeze: storage, config files and large objects carried back.
    let carried = if drained {
        traced(step_span("window carry-back"), c.window_carry_back()).await
    } else {
        Ok(())
    };
    let methods = plan.freeze.methods.clone();
    // Everything is undone regardless of the journal (each undo is idempotent), so the state
    // reported on a journal failure is "may still be frozen".
    c.frozen = methods.clone();
    c.switched = true;
    let manual = traced(step_span("undo"), c.undo(methods, true)).await;
    c.rep.skipped("freeze", "rollback");
    c.window_freeze_ends(drained);
    let mut writes = if drained {
        traced(step_span("new-host writes"), c.window_not_carried()).await
    } else {
        traced(step_span("new-host writes"), c.new_host_writes()).await
    };
    if let Err(e) = carried {
        writes = Err(e);
    }
    if drained && manual.is_empty() && writes.is_ok() {
        writes = traced(step_span("window close"), c.window_end()).await;
    }
    // A rolled-back migration must not leave a slot keeping WAL on the old host.
    if writes.is_ok() && c.follow_present().await {
        writes = traced(step_span("follow cleanup"), c.follow_cleanup()).await;
    }
    let recorded = match writes {
        Err(e) => Err(e),
        Ok(()) if manual.is_empty() => {
            c.out.ok = true;
            c.out.outcome = Outcome::RolledBack;
            c.record(JStep::Rollback, Mark::Done, "")
        }
        Ok(()) => {
            c.out.outcome = Outcome::UndoFailed;
            c.out.error = Some(match &c.connect_errors[..] {
                [] => "part of the rollback failed".to_string(),
                e => format!("part of the rollback failed: {}", e.join("; ")),
            });
            c.out.undo_instructions = manual;
            c.record(JStep::Rollback, Mark::Failed, "")
        }
    };
    if let Err(e) = recorded {
        c.journal_failed_at_the_end(&e);
    }
    Ok(c.finish(quiet, true))
}
