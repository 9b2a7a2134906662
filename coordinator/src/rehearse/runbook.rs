//! The local rehearsal after the first copy, as the runbook goes: the app keeps writing on the
//! old host (a live writer and a live uploader); the new host follows the old database; the
//! cutover (write freeze, the follower's last changes, final delta, proof, switch); every write
//! and upload the old host acknowledged looked up on the new host; a last verify; then the way
//! back within the rollback window. Each step is a [`Phase`]; the first failure ends the run.

use std::time::{Duration, Instant};

use crate::output::bytes;
use crate::plan::Plan;
use crate::progress::Mode;

use super::LocalLab;
use super::phase::{Measured, Phase, PhaseError, push};
use super::steps;
use super::uploader::LiveUploader;
use super::writer::LiveWriter;

/// Where the runbook records what it did.
pub(super) struct Record<'a> {
    /// The summary's rows.
    pub phases: &'a mut Vec<Phase>,
    /// The report being built.
    pub rep: &'a mut crate::report::Builder,
    /// What the cutover measured.
    pub measured: &'a mut Measured,
}

/// Runs the steps after the first copy; returns whether all passed.
pub(super) async fn after_first_copy(
    lab: &LocalLab,
    plan: &Plan,
    mode: Mode,
    say: &dyn Fn(&str),
    out: Record<'_>,
) -> bool {
    let Record {
        phases,
        rep,
        measured,
    } = out;
    say("phase writes: the app keeps writing on the old host");
    let t = Instant::now();
    if !push(phases, "writes", t, steps::app_writes(lab).await) {
        return false;
    }

    say("phase live-app: a writer keeps signing users up on the old host, into the freeze");
    let writer = match LiveWriter::start(&lab.old_pg.conninfo("app")).await {
        Ok(w) => w,
        Err(e) => {
            push(phases, "live-app", Instant::now(), Err(e.into()));
            return false;
        }
    };
    let uploader = match LiveUploader::start(
        &lab.old_pg.conninfo("app"),
        &super::old_storage_dir(lab),
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            writer.stop().await;
            push(phases, "live-app", Instant::now(), Err(e.into()));
            return false;
        }
    };

    say(
        "phase follow: follow the old database by logical decoding; files and storage synced again",
    );
    let t = Instant::now();
    if !push(
        phases,
        "follow",
        t,
        steps::follow(plan, mode, &writer).await,
    ) {
        writer.stop().await;
        uploader.stop().await;
        // Nothing of the follow may stay on the old host (a slot keeps WAL).
        let _ = crate::follow::cleanup(plan).await;
        return false;
    }

    // The freeze must meet an uploader that has created, overwritten and deleted files already
    // (the follow step can end sooner than that); if it has not within 10 s the uploads' phase
    // below says so by its counts.
    uploader
        .each_kind_acknowledged(Duration::from_secs(10))
        .await;
    say("phase cutover: freeze the old host, final delta, prove, switch (none), verify");
    let t_cut = Instant::now();
    let before: u64 = phases.iter().map(|p| p.ms as u64).sum::<u64>();
    let cut = cutover(plan, mode, before, rep, measured).await;
    // The old host stays frozen after the cutover: let the writer meet the freeze at least once
    // (it usually has, during the freeze itself), then stop it and look for every write it was
    // told had committed on the new host.
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while uploader.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = writer.stop().await;
    let uploads = uploader.stop().await;
    let cut_ok = cut.is_ok();
    if !push(phases, "cutover", t_cut, cut) {
        return false;
    }
    let (live, outcome) = match super::writer::check(&tally, &lab.new_pg.conninfo("app")).await {
        Ok(o) if o.lost == 0 => (
            Ok(format!(
                "{} writes acknowledged by the old host, all on the new host (0 lost); {} refused by the freeze; {} ended by the freeze before committing; {} of unknown outcome",
                o.acknowledged, o.refused, o.failed, o.unknown
            )),
            Some(o),
        ),
        Ok(o) => (
            Err(PhaseError::Lost {
                what: "writes",
                lost: o.lost,
                acknowledged: o.acknowledged,
                examples: o.lost_examples.clone(),
            }),
            Some(o),
        ),
        Err(e) => (Err(e.into()), None),
    };
    measured.live_writes = outcome;
    if !push(phases, "live-app", t, live) || !cut_ok {
        return false;
    }
    let t = Instant::now();
    let up = super::uploader::check(&uploads, &super::new_storage_dir(lab));
    let detail = if up.lost == 0 {
        Ok(format!(
            "{} uploads acknowledged by the old host ({} new files, {} overwrites, {} deletes), all on the new host with the same content (0 lost, {} files checked); {} refused by the freeze (the upload's database row was refused, no file written); {} of unknown outcome",
            up.acknowledged,
            up.created,
            up.overwritten,
            up.deleted,
            up.files_checked,
            up.refused,
            up.unknown
        ))
    } else {
        Err(PhaseError::Lost {
            what: "uploads",
            lost: up.lost,
            acknowledged: up.acknowledged,
            examples: up.lost_examples.clone(),
        })
    };
    measured.live_uploads = Some(up);
    if !push(phases, "live-uploads", t, detail) {
        return false;
    }

    say("phase verify-after: compare both hosts once more");
    let t = Instant::now();
    let after = match crate::sync::verify::run(plan).await {
        Ok(v) if v.ok => steps::final_verify_covers(lab, &v),
        Ok(_) => Err(PhaseError::DifferAfterCutover),
        Err(e) => Err(e.into()),
    };
    if !push(phases, "verify-after", t, after) {
        return false;
    }
    rollback(lab, plan, mode, say, phases, rep, measured).await
}

/// The cutover itself (switch `none` or the lab's moto Elastic IP); its freeze goes into the
/// report as a window starting `before` ms into the run, after the gates.
async fn cutover(
    plan: &Plan,
    mode: Mode,
    before: u64,
    rep: &mut crate::report::Builder,
    measured: &mut Measured,
) -> Result<String, PhaseError> {
    let opts = crate::cutover::Options {
        dry_run: false,
        resume: false,
        accept_unproven: false,
        skip_backup_check: None,
        progress: mode,
        rehearsal: false,
        // The lab's state folder goes away with the lab: the rehearsal's report covers it.
        write_report: false,
    };
    let r = crate::cutover::run(plan, &opts, &crate::cutover::state::of(&[])).await?;
    measured.freeze_ms = r.freeze_ms;
    if let Some(ms) = r.freeze_ms {
        let gates: u64 = r
            .steps
            .iter()
            .filter(|s| s.name == "gates")
            .map(|s| s.ms)
            .sum();
        let start_ms = before + gates;
        rep.freeze(crate::report::Window {
            start_ms,
            end_ms: start_ms + ms,
        });
    }
    if !r.ok {
        return Err(PhaseError::Cutover {
            outcome: r.outcome.as_str(),
            error: r.error,
        });
    }
    // The freeze step by step: what ran between the first freeze action and the switch.
    let steps: Vec<String> = r
        .steps
        .iter()
        .filter(|s| s.name != "gates")
        .map(|s| format!("{} {} ms", s.name, s.ms))
        .collect();
    let followed: Vec<String> = r
        .follow
        .iter()
        .map(|f| {
            format!(
                "database {} followed up to {} (waited {} ms)",
                f.database, f.lsn, f.waited_ms
            )
        })
        .collect();
    Ok(format!(
        "write freeze {} ms (predicted {} ms); {}; final delta {} in {} table range(s); steps: {}; the old host stays frozen",
        r.freeze_ms.unwrap_or(0),
        r.predicted_freeze_ms.unwrap_or(0),
        if followed.is_empty() {
            "no database followed (key-range delta)".to_string()
        } else {
            followed.join(", ")
        },
        bytes(r.delta.bytes),
        r.delta.ranges,
        steps.join(", ")
    ))
}

/// The way back (issue 13): the app writes on the new host, `rollback` within the window, every
/// acknowledged write looked up on the old host. The rollback's freeze goes into the report.
async fn rollback(
    lab: &LocalLab,
    plan: &Plan,
    mode: Mode,
    say: &dyn Fn(&str),
    phases: &mut Vec<Phase>,
    rep: &mut crate::report::Builder,
    measured: &mut Measured,
) -> bool {
    say(
        "phase rollback: the app writes on the new host; rollback within the window; every write looked up on the old host",
    );
    let t = Instant::now();
    let r = super::round_trip::run(
        plan,
        &lab.old_pg.conninfo("app"),
        &lab.new_pg.conninfo("app"),
        mode,
    )
    .await;
    let line = r
        .as_ref()
        .map_err(Clone::clone)
        .and_then(super::round_trip::verdict)
        .map_err(PhaseError::RoundTrip);
    if let Ok(r) = &r {
        if let Some(ms) = r.rollback_freeze_ms {
            rep.note(format!(
                "rollback within the window: write freeze {ms} ms, {} writes of the new host carried back, {} lost",
                r.acknowledged, r.lost
            ));
        }
        measured.round_trip = Some(r.clone());
    }
    push(phases, "rollback", t, line)
}
