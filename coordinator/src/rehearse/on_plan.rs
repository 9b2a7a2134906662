//! `hostshift rehearse --plan P`: the flow against the real agents of a plan, copying into the
//! scratch resources its `[rehearsal]` section names instead of the real ones. The old host is
//! only read: never frozen, traffic never switched, no backup taken; the cutover step times the
//! final delta and the proof, which is what the real freeze will take.

use std::time::Instant;

use super::phase::{self, Phase, PhaseError, push};
use super::steps;
use crate::output::bytes;
use crate::plan::Plan;
use crate::preflight::{self, Verdict};

/// A plan whose `[rehearsal]` section lacks scratch names for some resources.
#[derive(Debug, thiserror::Error)]
#[error(
    "a rehearsal against real hosts copies only into scratch resources; add to {}:\n[rehearsal]\n{}\n(each declared in the NEW agent's config and allowed in its [allow])",
    .plan.display(),
    .missing.join("\n")
)]
pub struct NoScratchTargets {
    /// The plan file.
    pub plan: std::path::PathBuf,
    /// The lines to add (`databases.app = "app_rehearsal"`).
    pub missing: Vec<String>,
}

/// The plan with every resource pointed at its `[rehearsal]` scratch name on the new host, its
/// own journal (`<name>-rehearsal`), no freeze methods and no switch.
///
/// # Errors
/// [`NoScratchTargets`] naming every resource without a scratch name.
pub fn rehearsal_plan(plan: &Plan) -> Result<Plan, NoScratchTargets> {
    let r = &plan.rehearsal;
    let mut missing = Vec::new();
    let mut p = plan.clone();
    for d in &mut p.databases {
        match r.databases.get(&d.name) {
            Some(t) => d.target = Some(t.clone()),
            None => missing.push(format!("databases.{} = \"{}_rehearsal\"", d.name, d.name)),
        }
    }
    for s in &mut p.storage {
        match r.storage.get(&s.name) {
            Some(t) => s.target = Some(t.clone()),
            None => missing.push(format!("storage.{} = \"{}-rehearsal\"", s.name, s.name)),
        }
    }
    for f in &mut p.files {
        match r.files.get(&f.name) {
            Some(t) => f.target = Some(t.clone()),
            None => missing.push(format!("files.{} = \"{}-rehearsal\"", f.name, f.name)),
        }
    }
    if !missing.is_empty() {
        return Err(NoScratchTargets {
            plan: plan.path.clone(),
            missing,
        });
    }
    p.migration.name = format!("{}-rehearsal", plan.migration.name);
    p.freeze.methods.clear();
    p.switch.method = crate::plan::SwitchMethod::None;
    Ok(p)
}

/// What a rehearsal against a plan did.
pub struct PlanRun {
    /// Every phase passed.
    pub ok: bool,
    /// The rehearsal's name (`<name>-rehearsal`).
    pub rehearsal: String,
    /// What the freeze would have lasted (final delta and proof).
    pub rehearsed_freeze_ms: Option<u64>,
    /// The report's folder, when it could be written.
    pub report: Option<std::path::PathBuf>,
    /// The phases in order.
    pub phases: Vec<Phase>,
    /// The preflight's checks.
    pub checks: preflight::Report,
}

/// Check, sync, catch-up and a rehearsal-mode cutover against the real agents of `real`, into
/// its scratch targets; `say` gets progress lines.
///
/// # Errors
/// [`NoScratchTargets`] before anything runs; a failed phase is `ok = false`.
pub async fn run(
    real: &Plan,
    quiet: bool,
    say: &dyn Fn(&str),
) -> Result<PlanRun, NoScratchTargets> {
    let plan = rehearsal_plan(real)?;
    let mode = phase::mode(quiet);
    let mut rep = crate::report::Builder::for_plan(crate::report::Kind::Rehearse, &plan);
    let mut phases = Vec::new();

    say("phase check: preflight of both hosts (scratch targets on the new one)");
    let t = Instant::now();
    let checks = preflight::run(&plan).await;
    let failed = checks
        .checks
        .iter()
        .filter(|x| x.result == Verdict::Fail)
        .count();
    let verdict = if checks.ok {
        Ok(format!("{} checks pass", checks.checks.len()))
    } else {
        Err(PhaseError::Checks {
            failed,
            total: checks.checks.len(),
        })
    };
    let mut ok = push(&mut phases, "check", t, verdict);
    phases.push(Phase {
        phase: "backup",
        status: "skipped",
        ms: 0,
        detail: "a rehearsal only reads the old host; take the real backup with `hostshift backup --host old`".into(),
    });
    if ok {
        say("phase sync: copy into the scratch targets");
        let t = Instant::now();
        ok = push(
            &mut phases,
            "sync",
            t,
            steps::sync(&plan, mode, &mut rep).await,
        );
    }
    if ok {
        say("phase catch-up: sync again (only what changed travels), then verify");
        let t = Instant::now();
        ok = push(
            &mut phases,
            "catch-up",
            t,
            steps::catch_up(&plan, mode).await,
        );
    }
    let mut rehearsed = None;
    if ok {
        say(
            "phase cutover (rehearsal): gates, final delta and proof, timed; nothing frozen or switched",
        );
        let t = Instant::now();
        let r = timed_cutover(&plan, mode).await;
        if let Ok((_, ms)) = &r {
            rehearsed = *ms;
        }
        ok = push(&mut phases, "cutover", t, r.map(|(line, _)| line));
    }
    phase::record(&mut rep, &phases);
    if let Some(ms) = rehearsed {
        rep.note(format!(
            "rehearsed freeze: {ms} ms for the final delta and the proof (nothing was frozen)"
        ));
    }
    let report = crate::report::publish(&plan, &rep.finish(ok), true);
    Ok(PlanRun {
        ok,
        rehearsal: plan.migration.name.clone(),
        rehearsed_freeze_ms: rehearsed,
        report,
        phases,
        checks,
    })
}

/// The cutover in rehearsal mode: its line and what the freeze would have lasted.
async fn timed_cutover(
    plan: &Plan,
    mode: crate::progress::Mode,
) -> Result<(String, Option<u64>), PhaseError> {
    let opts = crate::cutover::Options {
        dry_run: false,
        resume: false,
        accept_unproven: false,
        skip_backup_check: None,
        progress: mode,
        rehearsal: true,
        write_report: true,
    };
    let r = crate::cutover::run(plan, &opts, &crate::cutover::state::of(&[])).await?;
    if !r.ok {
        return Err(PhaseError::Cutover {
            outcome: r.outcome.as_str(),
            error: r.error,
        });
    }
    Ok((
        format!(
            "the freeze would last about {} ms (predicted {} ms): final delta {} in {} table range(s)",
            r.rehearsed_freeze_ms.unwrap_or(0),
            r.predicted_freeze_ms.unwrap_or(0),
            bytes(r.delta.bytes),
            r.delta.ranges
        ),
        r.rehearsed_freeze_ms,
    ))
}
