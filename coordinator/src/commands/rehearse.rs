//! `hostshift rehearse`: the whole move, on two throwaway hosts on this machine.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::cli::Global;
use crate::error::{CliResult, failed};
use crate::lab::seed::Scale;
use crate::output::{bytes, print_json, table};
use crate::plan::Plan;
use crate::preflight::{self, Verdict};
use crate::rehearse::LocalLab;
use crate::rehearse::writer::{LiveWriter, Outcome};

/// Rehearsal flags.
#[derive(Args)]
#[command(after_help = "\
Without --plan: two throwaway hosts on loopback (PostgreSQL clusters, agents, certificates, a
sample app's data), then check, backup, sync, verify; then a live writer signs users up on the
old host while hostshift follows its database (logical decoding) and syncs files and storage
again, and on into the cutover (write freeze, the follower's last changes, final delta, proof,
switch); every write the old host acknowledged is looked for on the new host and the writes the
freeze refused are counted; a last verify; a report; teardown.

With --plan P: the same flow against the real agents of P, copying into the scratch resources
its [rehearsal] section names (declared and allowed in the NEW agent's config) instead of the
real ones. The old host is only read: it is never frozen, traffic is never switched, no backup is
taken. The cutover step times the final delta and the proof, which is what the real freeze will
take. Journal and report: under P's state_dir, as <name>-rehearsal.

Examples:
  hostshift rehearse                       # the README's main job
  hostshift rehearse --size medium --keep  # keep the lab to try commands against it
  hostshift rehearse --plan plan.toml      # practise against the real hosts, safely")]
pub struct RehearseCmd {
    /// Rehearse against the real agents of this plan, into its [rehearsal] scratch targets.
    #[arg(long, conflicts_with_all = ["keep", "dir"])]
    plan: Option<PathBuf>,
    /// How much data the old host gets: tiny, small, medium or large.
    #[arg(long, default_value = "small", value_parser = parse_scale)]
    size: Scale,
    /// Leave the lab running afterwards (agents, clusters, plan) and print how to stop it.
    #[arg(long)]
    keep: bool,
    /// Build the lab in this folder (default: a new folder under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_scale(s: &str) -> Result<Scale, String> {
    s.parse::<Scale>().map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct Phase {
    phase: &'static str,
    status: &'static str,
    ms: u128,
    detail: String,
}

#[derive(Serialize)]
struct Rehearsal {
    ok: bool,
    report: Option<PathBuf>,
    dir: PathBuf,
    plan: PathBuf,
    kept: bool,
    /// How the cutover switched traffic.
    switch: String,
    /// The cutover's measured write freeze.
    freeze_ms: Option<u64>,
    /// What the live app's writes became: acknowledged, refused by the freeze, lost.
    live_writes: Option<Outcome>,
    /// What the live app's uploads became: acknowledged, refused by the freeze, lost.
    live_uploads: Option<crate::rehearse::uploader::Outcome>,
    /// The way back: the new host's writes after the cutover, the rollback within the window.
    round_trip: Option<crate::rehearse::round_trip::RoundTrip>,
    phases: Vec<Phase>,
    checks: preflight::Report,
}

/// Builds two local hosts, runs the phases, prints the result, tears down (unless `--keep`).
///
/// # Errors
/// Failure (exit 1) when the lab cannot be built or a phase fails; the lab is torn down first.
pub async fn run(g: &Global, c: RehearseCmd) -> CliResult {
    if let Some(p) = &c.plan {
        return on_plan(g, p).await;
    }
    let dir = c.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hostshift-rehearsal-{}", std::process::id()))
    });
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(crate::error::usage(anyhow::anyhow!(
            "{} exists and is not empty: give --dir a new folder",
            dir.display()
        )));
    }
    let quiet = g.quiet;
    let say = move |s: &str| {
        if !quiet {
            eprintln!("rehearse: {s}");
        }
    };
    let mut phases = Vec::new();
    let mut rep = crate::report::Builder::new(
        crate::report::Kind::Rehearse,
        "rehearsal",
        dir.join("plan.toml").display().to_string(),
    );
    let t = Instant::now();
    let lab = match LocalLab::build(&dir, c.size, &say).await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed(anyhow::anyhow!(
                "could not build the rehearsal lab: {e}"
            )));
        }
    };
    phases.push(Phase {
        phase: "lab",
        status: "ok",
        ms: t.elapsed().as_millis(),
        detail: format!(
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
            lab.storage.non_root_owner.map_or_else(String::new, |u| format!(
                ", sub-folder {} owned by {u}",
                crate::rehearse::NON_ROOT_DIR
            ))
        ),
    });

    // The traffic switch: a local moto server's Elastic IP when moto is installed (not with
    // --keep: the server would not outlive this process), otherwise `none`.
    let (_moto, switch) = if c.keep {
        (None, "none (--keep)".to_string())
    } else {
        match switch_through_moto(&lab.plan).await {
            Ok(m) => (Some(m), "elastic-ip (local moto server)".to_string()),
            Err(why) => (None, format!("none: {why}")),
        }
    };
    say(&format!("traffic switch: {switch}"));

    say("phase check: preflight of both hosts");
    let t = Instant::now();
    let report = match Plan::load(&lab.plan) {
        Ok(plan) => preflight::run(&plan).await,
        Err(p) => {
            lab.teardown().await;
            return Err(failed(anyhow::anyhow!(
                "the generated plan is invalid (a bug):\n{p}"
            )));
        }
    };
    let failed_checks = report
        .checks
        .iter()
        .filter(|x| x.result == Verdict::Fail)
        .count();
    phases.push(Phase {
        phase: "check",
        status: if report.ok { "ok" } else { "failed" },
        ms: t.elapsed().as_millis(),
        detail: format!("{} checks, {failed_checks} failed", report.checks.len()),
    });
    let mut ok = report.ok;
    if ok {
        say("phase backup: a backup of the old host, on the old host");
        let t = Instant::now();
        let plan = Plan::load(&lab.plan).map_err(|p| failed(anyhow::anyhow!("{p}")))?;
        let taken = match crate::client::connect(&plan, crate::plan::Side::Old).await {
            Ok(agent) => super::backup::take(&agent, &plan, false, &|_| {})
                .await
                .map_err(|e| format!("{:#}", e.error())),
            Err(e) => Err(e.to_string()),
        };
        let (status, detail) = match taken {
            Ok(d) => {
                let b = d.backup.unwrap_or_default();
                (
                    "ok",
                    format!(
                        "backup {} ({} artifacts, {})",
                        b.id,
                        b.artifacts.len(),
                        bytes(b.total_bytes)
                    ),
                )
            }
            Err(e) => {
                ok = false;
                ("failed", e)
            }
        };
        phases.push(Phase {
            phase: "backup",
            status,
            ms: t.elapsed().as_millis(),
            detail,
        });
    }
    if ok {
        say("phase sync: copy files, storage and the database from old to new");
        let plan = Plan::load(&lab.plan).map_err(|p| failed(anyhow::anyhow!("{p}")))?;
        let t = Instant::now();
        ok = push(
            &mut phases,
            "sync",
            t,
            sync_phase(&plan, mode(g.quiet), &mut rep).await,
        );
        if ok {
            say("phase verify: compare both hosts");
            let t = Instant::now();
            ok = push(
                &mut phases,
                "verify",
                t,
                verify_phase(&plan, &mut rep).await,
            );
        }
    }
    let mut measured = Measured::default();
    if ok {
        let plan = Plan::load(&lab.plan).map_err(|p| failed(anyhow::anyhow!("{p}")))?;
        ok = after_first_copy(
            &lab,
            &plan,
            g.quiet,
            &say,
            &mut phases,
            &mut rep,
            &mut measured,
        )
        .await;
    } else {
        phases.push(Phase {
            phase: "cutover",
            status: "skipped",
            ms: 0,
            detail: "an earlier phase failed".into(),
        });
    }

    for p in &phases {
        rep.then(
            p.phase,
            p.ms as u64,
            p.status.parse().unwrap_or(crate::report::Status::Failed),
            p.detail.clone(),
        );
    }
    // The lab (and its plan's state folder) goes away at teardown; the report must not.
    let report_root = if c.keep {
        dir.join(".hostshift/rehearsal/reports")
    } else {
        std::env::temp_dir().join("hostshift-rehearsal-reports")
    };
    let report_dir = match crate::report::write(&report_root, &rep.finish(ok)) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("hostshift: warning: the rehearsal report could not be written: {e}");
            None
        }
    };
    let plan = lab.plan.clone();
    let kept = c.keep;
    let stop = if kept {
        Some(lab.keep().map_err(failed)?)
    } else {
        lab.teardown().await;
        None
    };
    let first_failure = phases
        .iter()
        .find(|p| p.status == "failed")
        .map_or_else(String::new, |p| format!("{}: {}", p.phase, p.detail));
    if g.json {
        print_json(&Rehearsal {
            ok,
            report: report_dir.clone(),
            dir: dir.clone(),
            plan: plan.clone(),
            kept,
            switch,
            freeze_ms: measured.freeze_ms,
            live_writes: measured.live_writes.clone(),
            live_uploads: measured.live_uploads.clone(),
            round_trip: measured.round_trip.clone(),
            phases,
            checks: report,
        });
    } else {
        println!(
            "hostshift rehearsal ({:?} data) in {}\n",
            c.size,
            dir.display()
        );
        print_phases(&phases, &report);
        println!("\nTraffic switch: {switch}");
        if let Some(ms) = measured.freeze_ms {
            println!("Write freeze during the cutover: {ms} ms");
        }
        if let Some(r) = &measured.round_trip {
            println!(
                "Rollback within the window: {} writes of the new host, {} lost; write freeze {} ms",
                r.acknowledged,
                r.lost,
                r.rollback_freeze_ms.unwrap_or(0)
            );
        }
        if let Some(r) = &report_dir {
            println!("\nReport: {}", r.join("report.html").display());
        }
        match stop {
            Some(script) => println!(
                "\nThe lab keeps running. Try:\n  hostshift check --plan {}\nStop it with:\n  {}",
                plan.display(),
                script.display()
            ),
            None => println!("\nThe lab was torn down; nothing is left running."),
        }
    }
    if ok {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "the rehearsal failed at {first_failure}"
        )))
    }
}

/// The phases as a table, then every check that did not pass.
fn print_phases(phases: &[Phase], checks: &preflight::Report) {
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                p.phase.into(),
                p.status.into(),
                format!("{} ms", p.ms),
                p.detail.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["PHASE", "RESULT", "TIME", "DETAIL"], &rows));
    for x in checks.checks.iter().filter(|x| x.result != Verdict::Ok) {
        println!(
            "  {:?} {} {}: {} {}",
            x.result, x.host, x.check, x.detail, x.hint
        );
    }
}

/// Progress lines for people, or none with `-q`.
fn mode(quiet: bool) -> crate::progress::Mode {
    if quiet {
        crate::progress::Mode::Quiet
    } else {
        crate::progress::Mode::Human
    }
}

/// A full sync, its streams added to the report.
async fn sync_phase(
    plan: &Plan,
    mode: crate::progress::Mode,
    rep: &mut crate::report::Builder,
) -> Result<String, String> {
    let opts = crate::sync::SyncOptions {
        progress: mode,
        ..crate::sync::SyncOptions::default()
    };
    let r = crate::sync::run(plan, &opts)
        .await
        .map_err(|e| e.to_string())?;
    rep.add_sync(&r);
    if r.ok {
        Ok(format!("{} items, {} sent", r.files, bytes(r.bytes)))
    } else {
        Err(r.failures())
    }
}

/// A verify, its rows added to the report.
async fn verify_phase(plan: &Plan, rep: &mut crate::report::Builder) -> Result<String, String> {
    let v = crate::sync::verify::run(plan)
        .await
        .map_err(|e| e.to_string())?;
    rep.add_verify(&v);
    if v.ok {
        Ok(format!("{} items equal", v.rows.len()))
    } else {
        let differ: Vec<String> = v
            .rows
            .iter()
            .filter(|r| !r.equal)
            .map(|r| format!("{} {}", r.kind, r.name))
            .collect();
        Err(format!("differ: {}", differ.join(", ")))
    }
}

/// Records a phase that began at `t`; returns whether it passed.
fn push(
    phases: &mut Vec<Phase>,
    phase: &'static str,
    t: Instant,
    r: Result<String, String>,
) -> bool {
    let ok = r.is_ok();
    phases.push(Phase {
        phase,
        status: if ok { "ok" } else { "failed" },
        ms: t.elapsed().as_millis(),
        detail: r.unwrap_or_else(|e| e),
    });
    ok
}

/// What the cutover phase measured, for the summary.
#[derive(Default)]
struct Measured {
    /// The cutover's write freeze.
    freeze_ms: Option<u64>,
    /// The live writer's writes, looked up on the new host.
    live_writes: Option<Outcome>,
    /// The live uploads, looked up on the new host.
    live_uploads: Option<crate::rehearse::uploader::Outcome>,
    /// The rollback within the window and the new host's writes, looked up on the old host.
    round_trip: Option<crate::rehearse::round_trip::RoundTrip>,
}

/// Rows the simulated app writes on the old host after the first copy.
const LATE_USERS: i32 = 25;

/// The runbook after the first copy: the app keeps writing on the old host; a catch-up sync
/// (only the changes travel) and a verify right before the cutover; the cutover itself (write
/// freeze, final delta, proof, switch `none`); a last verify. Returns whether all passed.
async fn after_first_copy(
    lab: &LocalLab,
    plan: &Plan,
    quiet: bool,
    say: &dyn Fn(&str),
    phases: &mut Vec<Phase>,
    rep: &mut crate::report::Builder,
    measured: &mut Measured,
) -> bool {
    let mode = mode(quiet);

    say("phase writes: the app keeps writing on the old host");
    let t = Instant::now();
    if !push(phases, "writes", t, app_writes(lab).await) {
        return false;
    }

    say("phase live-app: a writer keeps signing users up on the old host, into the freeze");
    let writer = match LiveWriter::start(&lab.old_pg.conninfo("app")).await {
        Ok(w) => w,
        Err(e) => {
            push(phases, "live-app", Instant::now(), Err(e.to_string()));
            return false;
        }
    };

    let uploader = match crate::rehearse::uploader::LiveUploader::start(
        &lab.old_pg.conninfo("app"),
        &crate::rehearse::old_storage_dir(lab),
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            writer.stop().await;
            push(phases, "live-app", Instant::now(), Err(e.to_string()));
            return false;
        }
    };

    say(
        "phase follow: follow the old database by logical decoding; files and storage synced again",
    );
    let t = Instant::now();
    let followed = follow_phase(plan, mode, &writer).await;
    if !push(phases, "follow", t, followed) {
        writer.stop().await;
        uploader.stop().await;
        // Nothing of the follow may stay on the old host (a slot keeps WAL).
        let _ = crate::follow::cleanup(plan).await;
        return false;
    }

    say("phase cutover: freeze the old host, final delta, prove, switch (none), verify");
    let t_cut = Instant::now();
    let before: u64 = phases.iter().map(|p| p.ms as u64).sum::<u64>();
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
    let cut = match crate::cutover::run(plan, &opts, &crate::cutover::state::of(&[])).await {
        Err(e) => Err(e.to_string()),
        Ok(r) => {
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
            if r.ok {
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
            } else {
                Err(format!(
                    "{}: {}",
                    r.outcome.as_str(),
                    r.error.unwrap_or_else(|| "see the cutover report".into())
                ))
            }
        }
    };
    // The old host stays frozen after the cutover: let the writer meet the freeze at least once
    // (it usually has, during the freeze itself), then stop it and look for every write it was
    // told had committed on the new host.
    let t = Instant::now();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while writer.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    while uploader.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tally = writer.stop().await;
    let uploads = uploader.stop().await;
    let cut_ok = cut.is_ok();
    if !push(phases, "cutover", t_cut, cut) {
        return false;
    }
    let outcome = crate::rehearse::writer::check(&tally, &lab.new_pg.conninfo("app")).await;
    let live = match &outcome {
        Ok(o) if o.lost == 0 => Ok(format!(
            "{} writes acknowledged by the old host, all on the new host (0 lost); {} refused by the freeze; {} ended by the freeze before committing; {} of unknown outcome",
            o.acknowledged, o.refused, o.failed, o.unknown
        )),
        Ok(o) => Err(format!(
            "{} of {} acknowledged writes are not on the new host: {}",
            o.lost,
            o.acknowledged,
            o.lost_examples.join("; ")
        )),
        Err(e) => Err(e.to_string()),
    };
    measured.live_writes = outcome.ok();
    if !push(phases, "live-app", t, live) || !cut_ok {
        return false;
    }
    let t = Instant::now();
    let up = crate::rehearse::uploader::check(&uploads, &crate::rehearse::new_storage_dir(lab));
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
        Err(format!(
            "{} of {} acknowledged uploads are not on the new host: {}",
            up.lost,
            up.acknowledged,
            up.lost_examples.join("; ")
        ))
    };
    measured.live_uploads = Some(up);
    if !push(phases, "live-uploads", t, detail) {
        return false;
    }

    say("phase verify-after: compare both hosts once more");
    let t = Instant::now();
    let after = match crate::sync::verify::run(plan).await {
        Ok(v) if v.ok => final_verify_covers(lab, &v),
        Ok(_) => Err("the hosts differ after the cutover".into()),
        Err(e) => Err(e.to_string()),
    };
    if !push(phases, "verify-after", t, after) {
        return false;
    }
    rollback_phase(lab, plan, mode, say, phases, rep, measured).await
}

/// The way back (issue 13): the app writes on the new host, `rollback` within the window, every
/// acknowledged write looked up on the old host. The rollback's freeze goes into the report.
async fn rollback_phase(
    lab: &LocalLab,
    plan: &Plan,
    mode: crate::progress::Mode,
    say: &dyn Fn(&str),
    phases: &mut Vec<Phase>,
    rep: &mut crate::report::Builder,
    measured: &mut Measured,
) -> bool {
    say(
        "phase rollback: the app writes on the new host; rollback within the window; every write looked up on the old host",
    );
    let t = Instant::now();
    let r = crate::rehearse::round_trip::run(
        plan,
        &lab.old_pg.conninfo("app"),
        &lab.new_pg.conninfo("app"),
        mode,
    )
    .await;
    let line = r
        .as_ref()
        .map_err(Clone::clone)
        .and_then(crate::rehearse::round_trip::verdict);
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

/// The last verify passed; it must also have compared what makes the app work on the new host:
/// the materialized view populated on both, and the storage sub-folder still owned by its
/// non-root user there (verify compares owners; the lab checks the new host's folder too).
fn final_verify_covers(lab: &LocalLab, v: &crate::sync::verify::Report) -> Result<String, String> {
    let view = crate::lab::seed::MATVIEW;
    let row = v
        .rows
        .iter()
        .find(|r| r.kind == "materialized view" && r.name.ends_with(view))
        .ok_or_else(|| format!("the final verify did not compare the materialized view {view}"))?;
    if !row.new.starts_with("populated") {
        return Err(format!(
            "materialized view {view} on the new host: {}",
            row.new
        ));
    }
    let mut detail = format!(
        "{} items equal; materialized view {view} {} on both",
        v.rows.len(),
        row.new
    );
    if let Some(user) = lab.storage.non_root_owner {
        let dir = crate::rehearse::new_storage_dir(lab).join(crate::rehearse::NON_ROOT_DIR);
        let want = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        let got = std::os::unix::fs::MetadataExt::uid(
            &std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?,
        );
        if want != Some(got) {
            return Err(format!(
                "{} on the new host belongs to uid {got}, not {user}",
                dir.display()
            ));
        }
        detail.push_str(&format!(
            "; storage owners compared, sub-folder {} owned by {user} on the new host",
            crate::rehearse::NON_ROOT_DIR
        ));
    }
    Ok(detail)
}

/// What the app does while the copy runs: new sign-ups and edited profiles on the old host.
async fn app_writes(lab: &LocalLab) -> Result<String, String> {
    let db = lab
        .old_pg
        .connect("app")
        .await
        .map_err(|e| format!("connect to the old database: {e}"))?;
    let inserted = db
        .execute(
            "INSERT INTO users (email, display_name)
             SELECT 'late' || g || '@example.com', 'Late user ' || g FROM generate_series(1, $1) g",
            &[&LATE_USERS],
        )
        .await
        .map_err(|e| format!("insert users: {e}"))?;
    let updated = db
        .execute(
            "UPDATE users SET display_name = display_name || ' (edited)' WHERE id % 97 = 1",
            &[],
        )
        .await
        .map_err(|e| format!("update users: {e}"))?;
    Ok(format!(
        "{inserted} users signed up, {updated} profiles edited"
    ))
}

/// The plan with every resource pointed at its `[rehearsal]` scratch name on the new host, its
/// own journal (`<name>-rehearsal`), no freeze methods and no switch.
///
/// # Errors
/// A usage error naming every resource without a scratch name.
pub fn rehearsal_plan(plan: &Plan) -> Result<Plan, crate::error::CliError> {
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
        return Err(crate::error::usage(anyhow::anyhow!(
            "a rehearsal against real hosts copies only into scratch resources; add to {}:\n[rehearsal]\n{}\n(each declared in the NEW agent's config and allowed in its [allow])",
            plan.path.display(),
            missing.join("\n")
        )));
    }
    p.migration.name = format!("{}-rehearsal", plan.migration.name);
    p.freeze.methods.clear();
    p.switch.method = crate::plan::SwitchMethod::None;
    Ok(p)
}

/// `rehearse --plan P`: check, sync, verify, catch-up, cutover (rehearsal mode) against the real
/// agents, into scratch targets.
async fn on_plan(g: &Global, path: &std::path::Path) -> CliResult {
    let real = super::load_plan(path)?;
    let plan = rehearsal_plan(&real)?;
    let quiet = g.quiet;
    let say = move |s: &str| {
        if !quiet {
            eprintln!("rehearse: {s}");
        }
    };
    let mode = mode(quiet);
    let mut rep = crate::report::Builder::for_plan(crate::report::Kind::Rehearse, &plan);
    let mut phases = Vec::new();

    say("phase check: preflight of both hosts (scratch targets on the new one)");
    let t = Instant::now();
    let checks = preflight::run(&plan).await;
    let failed_checks = checks
        .checks
        .iter()
        .filter(|x| x.result == Verdict::Fail)
        .count();
    let mut ok = push(
        &mut phases,
        "check",
        t,
        if checks.ok {
            Ok(format!("{} checks pass", checks.checks.len()))
        } else {
            Err(format!(
                "{} of {} checks failed",
                failed_checks,
                checks.checks.len()
            ))
        },
    );
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
            sync_phase(&plan, mode, &mut rep).await,
        );
    }
    let mut rehearsed = None;
    if ok {
        say("phase catch-up: sync again (only what changed travels), then verify");
        let t = Instant::now();
        ok = push(&mut phases, "catch-up", t, catch_up(&plan, mode).await);
    }
    if ok {
        say(
            "phase cutover (rehearsal): gates, final delta and proof, timed; nothing frozen or switched",
        );
        let t = Instant::now();
        let opts = crate::cutover::Options {
            dry_run: false,
            resume: false,
            accept_unproven: false,
            skip_backup_check: None,
            progress: mode,
            rehearsal: true,
            write_report: true,
        };
        let r = match crate::cutover::run(&plan, &opts, &crate::cutover::state::of(&[])).await {
            Err(e) => Err(e.to_string()),
            Ok(r) if r.ok => {
                rehearsed = r.rehearsed_freeze_ms;
                Ok(format!(
                    "the freeze would last about {} ms (predicted {} ms): final delta {} in {} table range(s)",
                    r.rehearsed_freeze_ms.unwrap_or(0),
                    r.predicted_freeze_ms.unwrap_or(0),
                    bytes(r.delta.bytes),
                    r.delta.ranges
                ))
            }
            Ok(r) => Err(format!(
                "{}: {}",
                r.outcome.as_str(),
                r.error.unwrap_or_else(|| "see the cutover report".into())
            )),
        };
        ok = push(&mut phases, "cutover", t, r);
    }
    for p in &phases {
        rep.then(
            p.phase,
            p.ms as u64,
            p.status.parse().unwrap_or(crate::report::Status::Failed),
            p.detail.clone(),
        );
    }
    if let Some(ms) = rehearsed {
        rep.note(format!(
            "rehearsed freeze: {ms} ms for the final delta and the proof (nothing was frozen)"
        ));
    }
    let report_dir = crate::report::publish(&plan, &rep.finish(ok), true);
    if g.json {
        print_json(&serde_json::json!({
            "ok": ok,
            "plan": real.path,
            "rehearsal": plan.migration.name,
            "rehearsed_freeze_ms": rehearsed,
            "report": report_dir,
            "phases": phases,
            "checks": checks,
        }));
    } else {
        println!(
            "hostshift rehearsal against {} (scratch targets on the new host; the old host only read)\n",
            real.path.display()
        );
        print_phases(&phases, &checks);
        if let Some(r) = &report_dir {
            println!("\nReport: {}", r.join("report.html").display());
        }
    }
    if ok {
        Ok(())
    } else {
        let first = phases
            .iter()
            .find(|p| p.status == "failed")
            .map_or_else(String::new, |p| format!("{}: {}", p.phase, p.detail));
        Err(failed(anyhow::anyhow!("the rehearsal failed at {first}")))
    }
}

/// A catch-up sync (only what changed travels) and a verify, as right before a cutover.
async fn catch_up(plan: &Plan, mode: crate::progress::Mode) -> Result<String, String> {
    let opts = crate::sync::SyncOptions {
        progress: mode,
        ..crate::sync::SyncOptions::default()
    };
    let s = crate::sync::run(plan, &opts)
        .await
        .map_err(|e| e.to_string())?;
    if !s.ok {
        return Err(format!("the catch-up sync failed: {}", s.failures()));
    }
    let v = crate::sync::verify::run(plan)
        .await
        .map_err(|e| e.to_string())?;
    if !v.ok {
        return Err("verify after the catch-up found differences".to_string());
    }
    let ranges: u64 = s.units.iter().map(|u| u.ranges).sum();
    Ok(format!(
        "{} sent ({ranges} table range(s), {} file(s)); {} items equal",
        bytes(s.bytes),
        s.files,
        v.rows.len()
    ))
}

/// While the app writes: `hostshift follow start` (a slot on the old database, a sync of the
/// database from a snapshot taken after it, then the new host applies every later change), and
/// a catch-up sync of the files and the storage tree. No pause and no verify: with every
/// database followed, the cutover's freshness gate is the follower's lag (issue 12.3).
async fn follow_phase(
    plan: &Plan,
    mode: crate::progress::Mode,
    writer: &LiveWriter,
) -> Result<String, String> {
    let opts = || crate::sync::SyncOptions {
        progress: mode,
        ..crate::sync::SyncOptions::default()
    };
    let started = crate::follow::start(plan, opts())
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = 0;
    for only in [crate::sync::Only::Files, crate::sync::Only::Storage] {
        let s = crate::sync::run(
            plan,
            &crate::sync::SyncOptions {
                only: Some(only),
                ..opts()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        if !s.ok {
            return Err(format!("the catch-up sync failed: {}", s.failures()));
        }
        sent += s.bytes;
    }
    let not_followed: Vec<String> = started
        .iter()
        .flat_map(|d| d.not_followed.iter().cloned())
        .collect();
    Ok(format!(
        "{} database(s) followed ({}); files and storage synced again ({}) while the app wrote; {} writes acknowledged so far{}",
        started.len(),
        started
            .iter()
            .map(|d| d.slot.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        bytes(sent),
        writer.tally().acknowledged(),
        if not_followed.is_empty() {
            String::new()
        } else {
            format!(
                "; not followed (settled in the freeze): {}",
                not_followed.join(", ")
            )
        }
    ))
}

/// Starts a moto server, creates the old and new instances and an Elastic IP on the old one, and
/// points the lab plan's `[switch]` at it. The server lives as long as the returned value.
async fn switch_through_moto(
    plan: &std::path::Path,
) -> Result<hostshift_switch::moto::MotoServer, String> {
    let moto = hostshift_switch::moto::MotoServer::start()
        .await
        .map_err(|e| e.to_string())?;
    let eip = moto.seed_elastic_ip().await.map_err(|e| e.to_string())?;
    let text =
        std::fs::read_to_string(plan).map_err(|e| format!("read {}: {e}", plan.display()))?;
    let edits = [
        (
            "[old]\n".to_string(),
            format!("[old]\ninstance_id = \"{}\"\n", eip.old_instance),
        ),
        (
            "[new]\n".to_string(),
            format!("[new]\ninstance_id = \"{}\"\n", eip.new_instance),
        ),
        (
            "[switch]\nmethod = \"none\"\n".to_string(),
            format!(
                "[switch]\nmethod = \"elastic-ip\"\n\n[switch.aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[switch.elastic_ip]\nallocation_id = \"{}\"\n",
                moto.endpoint_url(),
                eip.allocation_id
            ),
        ),
    ];
    let mut text = text;
    for (from, to) in edits {
        if !text.contains(&from) {
            return Err(format!("the lab plan has no {from:?} (a bug)"));
        }
        text = text.replacen(&from, &to, 1);
    }
    std::fs::write(plan, text).map_err(|e| format!("write {}: {e}", plan.display()))?;
    Ok(moto)
}
