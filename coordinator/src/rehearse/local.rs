//! `hostshift rehearse` without a plan: the whole move on two throwaway hosts on this machine.
//! [`run`] builds the lab, switches traffic through a local moto server when it can, runs check,
//! backup, sync and verify, then the runbook after the first copy ([`super::runbook`]), writes
//! the report, and tears the lab down (or keeps it). The command prints what it returns.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hostshift_shared::tomlpos::Problems;

use super::phase::{self, Measured, Phase, PhaseError, push};
use super::runbook::{self, Record};
use super::{LocalLab, RehearseError, steps};
use crate::lab::seed::Scale;
use crate::output::bytes;
use crate::plan::{Plan, Side};
use crate::preflight::{self, Verdict};

/// How a local rehearsal is run.
pub struct LocalOptions {
    /// The lab's folder (must be absent or empty).
    pub dir: PathBuf,
    /// How much data the old host gets.
    pub size: Scale,
    /// Leave the lab running afterwards.
    pub keep: bool,
    /// No progress lines.
    pub quiet: bool,
}

/// What a local rehearsal did.
pub struct LocalRun {
    /// Every phase passed.
    pub ok: bool,
    /// The lab's folder.
    pub dir: PathBuf,
    /// The lab's plan.
    pub plan: PathBuf,
    /// The report's folder, when it could be written.
    pub report: Option<PathBuf>,
    /// Why the report could not be written.
    pub report_error: Option<crate::report::ReportError>,
    /// With `keep`: the script that stops the lab.
    pub stop: Option<PathBuf>,
    /// How the cutover switched traffic.
    pub switch: String,
    /// What the cutover and the live app measured.
    pub measured: Measured,
    /// The phases in order.
    pub phases: Vec<Phase>,
    /// The preflight's checks.
    pub checks: preflight::Report,
}

/// Why a local rehearsal could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The folder given holds files (nothing was touched).
    #[error("{} exists and is not empty: give --dir a new folder", .0.display())]
    NotEmpty(PathBuf),
    /// The lab could not be built (what was built is removed).
    #[error("could not build the rehearsal lab: {0}")]
    Build(RehearseError),
    /// The plan the lab wrote does not load (the lab is torn down).
    #[error("the generated plan is invalid (a bug):\n{0}")]
    Plan(Problems),
    /// `--keep`: the lab could not be left running.
    #[error(transparent)]
    Keep(RehearseError),
}

/// Runs the local rehearsal; `say` gets progress lines.
///
/// # Errors
/// [`LocalError`] when the lab cannot be built, kept, or its plan does not load; a failed phase
/// is not an error but `ok = false` with the phase marked failed.
pub async fn run(o: &LocalOptions, say: &dyn Fn(&str)) -> Result<LocalRun, LocalError> {
    let dir = o.dir.clone();
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(LocalError::NotEmpty(dir));
    }
    let mut phases = Vec::new();
    let mut rep = crate::report::Builder::new(
        crate::report::Kind::Rehearse,
        "rehearsal",
        dir.join("plan.toml").display().to_string(),
    );
    let t = Instant::now();
    let lab = match LocalLab::build(&dir, o.size, say).await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(LocalError::Build(e));
        }
    };
    phases.push(Phase {
        phase: "lab",
        status: "ok",
        ms: t.elapsed().as_millis(),
        detail: lab_detail(&lab),
    });

    // The traffic switch: a local moto server's Elastic IP when moto is installed (not with
    // --keep: the server would not outlive this process), otherwise `none`.
    let (_moto, switch) = if o.keep {
        (None, "none (--keep)".to_string())
    } else {
        match super::moto::switch_through_moto(&lab.plan).await {
            Ok(m) => (Some(m), "elastic-ip (local moto server)".to_string()),
            Err(why) => (None, format!("none: {why}")),
        }
    };
    say(&format!("traffic switch: {switch}"));
    let plan = match Plan::load(&lab.plan) {
        Ok(p) => p,
        Err(p) => {
            lab.teardown().await;
            return Err(LocalError::Plan(p));
        }
    };

    say("phase check: preflight of both hosts");
    let t = Instant::now();
    let checks = preflight::run(&plan).await;
    let failed_checks = checks
        .checks
        .iter()
        .filter(|x| x.result == Verdict::Fail)
        .count();
    phases.push(Phase {
        phase: "check",
        status: if checks.ok { "ok" } else { "failed" },
        ms: t.elapsed().as_millis(),
        detail: format!("{} checks, {failed_checks} failed", checks.checks.len()),
    });
    let mut ok = checks.ok;
    if ok {
        say("phase backup: a backup of the old host, on the old host");
        let t = Instant::now();
        ok = push(&mut phases, "backup", t, backup(&plan).await);
    }
    let mode = phase::mode(o.quiet);
    if ok {
        say("phase sync: copy files, storage and the database from old to new");
        let t = Instant::now();
        ok = push(
            &mut phases,
            "sync",
            t,
            steps::sync(&plan, mode, &mut rep).await,
        );
        if ok {
            say("phase verify: compare both hosts");
            let t = Instant::now();
            ok = push(
                &mut phases,
                "verify",
                t,
                steps::verify(&plan, &mut rep).await,
            );
        }
    }
    let mut measured = Measured::default();
    if ok {
        let out = Record {
            phases: &mut phases,
            rep: &mut rep,
            measured: &mut measured,
        };
        ok = runbook::after_first_copy(&lab, &plan, mode, say, out).await;
    } else {
        phases.push(Phase {
            phase: "cutover",
            status: "skipped",
            ms: 0,
            detail: "an earlier phase failed".into(),
        });
    }
    phase::record(&mut rep, &phases);
    let (report, report_error) = match crate::report::write(&report_root(o, &dir), &rep.finish(ok))
    {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    let plan_path = lab.plan.clone();
    let stop = if o.keep {
        Some(lab.keep().map_err(LocalError::Keep)?)
    } else {
        lab.teardown().await;
        None
    };
    Ok(LocalRun {
        ok,
        dir,
        plan: plan_path,
        report,
        report_error,
        stop,
        switch,
        measured,
        phases,
        checks,
    })
}

/// The lab's row of the summary: what the old host holds.
fn lab_detail(lab: &LocalLab) -> String {
    format!(
        "{} users, {} submissions, materialized view {} (populated); {} files ({}) in storage{}",
        lab.seed.rows.get("users").copied().unwrap_or(0),
        lab.seed
            .rows
            .get("project_submissions")
            .copied()
            .unwrap_or(0),
        crate::lab::seed::MATVIEW,
        lab.storage.files,
        bytes(lab.storage.bytes),
        lab.storage
            .non_root_owner
            .map_or_else(String::new, |u| format!(
                ", sub-folder {} owned by {u}",
                super::NON_ROOT_DIR
            ))
    )
}

/// The lab (and its plan's state folder) goes away at teardown; the report must not.
fn report_root(o: &LocalOptions, dir: &Path) -> PathBuf {
    if o.keep {
        dir.join(".hostshift/rehearsal/reports")
    } else {
        std::env::temp_dir().join("hostshift-rehearsal-reports")
    }
}

/// A backup of the old host, on the old host.
async fn backup(plan: &Plan) -> Result<String, PhaseError> {
    let agent = crate::client::connect(plan, Side::Old)
        .await
        .map_err(PhaseError::Connect)?;
    let d = crate::backup::take(&agent, plan, false, &|_| {}).await?;
    let b = d.backup.unwrap_or_default();
    Ok(format!(
        "backup {} ({} artifacts, {})",
        b.id,
        b.artifacts.len(),
        bytes(b.total_bytes)
    ))
}
