//! `hostshift rehearse`: the whole move, on two throwaway hosts on this machine (or against a
//! plan's real hosts, into scratch targets). This file parses the flags, calls the library's
//! flow ([`crate::rehearse::local`], [`crate::rehearse::on_plan`]) and prints its result.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::cli::Global;
use crate::error::{CliResult, failed, usage};
use crate::lab::seed::{Scale, UnknownScale};
use crate::output::{print_json, table};
use crate::preflight::{self, Verdict};
use crate::rehearse::local::{self, LocalError, LocalOptions, LocalRun};
use crate::rehearse::phase::{Phase, first_failure};
use crate::rehearse::writer::Outcome;

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

fn parse_scale(s: &str) -> Result<Scale, UnknownScale> {
    s.parse::<Scale>()
}

#[derive(Serialize)]
struct Rehearsal<'a> {
    ok: bool,
    report: &'a Option<PathBuf>,
    dir: &'a PathBuf,
    plan: &'a PathBuf,
    kept: bool,
    /// How the cutover switched traffic.
    switch: &'a str,
    /// The cutover's measured write freeze.
    freeze_ms: Option<u64>,
    /// What the live app's writes became: acknowledged, refused by the freeze, lost.
    live_writes: &'a Option<Outcome>,
    /// What the live app's uploads became: acknowledged, refused by the freeze, lost.
    live_uploads: &'a Option<crate::rehearse::uploader::Outcome>,
    /// The way back: the new host's writes after the cutover, the rollback within the window.
    round_trip: &'a Option<crate::rehearse::round_trip::RoundTrip>,
    phases: &'a [Phase],
    checks: &'a preflight::Report,
}

/// Builds two local hosts, runs the phases, prints the result, tears down (unless `--keep`).
///
/// # Errors
/// Failure (exit 1) when the lab cannot be built or a phase fails; the lab is torn down first.
pub async fn run(g: &Global, c: RehearseCmd) -> CliResult {
    let quiet = g.quiet;
    let say = move |s: &str| {
        if !quiet {
            eprintln!("rehearse: {s}");
        }
    };
    if let Some(p) = &c.plan {
        return on_plan(g, p, &say).await;
    }
    let opts = LocalOptions {
        dir: c.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("hostshift-rehearsal-{}", std::process::id()))
        }),
        size: c.size,
        keep: c.keep,
        quiet,
    };
    let r = match local::run(&opts, &say).await {
        Ok(r) => r,
        Err(e @ LocalError::NotEmpty(_)) => return Err(usage(e)),
        Err(e) => return Err(failed(e)),
    };
    if let Some(e) = &r.report_error {
        eprintln!("hostshift: warning: the rehearsal report could not be written: {e}");
    }
    if g.json {
        print_json(&Rehearsal {
            ok: r.ok,
            report: &r.report,
            dir: &r.dir,
            plan: &r.plan,
            kept: r.stop.is_some(),
            switch: &r.switch,
            freeze_ms: r.measured.freeze_ms,
            live_writes: &r.measured.live_writes,
            live_uploads: &r.measured.live_uploads,
            round_trip: &r.measured.round_trip,
            phases: &r.phases,
            checks: &r.checks,
        });
    } else {
        print_local(&r, c.size);
    }
    if r.ok {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "the rehearsal failed at {}",
            first_failure(&r.phases)
        )))
    }
}

/// The local rehearsal for people.
fn print_local(r: &LocalRun, size: Scale) {
    println!(
        "hostshift rehearsal ({size:?} data) in {}\n",
        r.dir.display()
    );
    print_phases(&r.phases, &r.checks);
    println!("\nTraffic switch: {}", r.switch);
    if let Some(ms) = r.measured.freeze_ms {
        println!("Write freeze during the cutover: {ms} ms");
    }
    if let Some(t) = &r.measured.round_trip {
        println!(
            "Rollback within the window: {} writes of the new host, {} lost; write freeze {} ms",
            t.acknowledged,
            t.lost,
            t.rollback_freeze_ms.unwrap_or(0)
        );
    }
    if let Some(d) = &r.report {
        println!("\nReport: {}", d.join("report.html").display());
    }
    match &r.stop {
        Some(script) => println!(
            "\nThe lab keeps running. Try:\n  hostshift check --plan {}\nStop it with:\n  {}",
            r.plan.display(),
            script.display()
        ),
        None => println!("\nThe lab was torn down; nothing is left running."),
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

/// `rehearse --plan P`: check, sync, verify, catch-up, cutover (rehearsal mode) against the real
/// agents, into scratch targets.
async fn on_plan(g: &Global, path: &std::path::Path, say: &dyn Fn(&str)) -> CliResult {
    let real = super::load_plan(path)?;
    let r = crate::rehearse::on_plan::run(&real, g.quiet, say)
        .await
        .map_err(usage)?;
    if g.json {
        print_json(&serde_json::json!({
            "ok": r.ok,
            "plan": real.path,
            "rehearsal": r.rehearsal,
            "rehearsed_freeze_ms": r.rehearsed_freeze_ms,
            "report": r.report,
            "phases": r.phases,
            "checks": r.checks,
        }));
    } else {
        println!(
            "hostshift rehearsal against {} (scratch targets on the new host; the old host only read)\n",
            real.path.display()
        );
        print_phases(&r.phases, &r.checks);
        if let Some(d) = &r.report {
            println!("\nReport: {}", d.join("report.html").display());
        }
    }
    if r.ok {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "the rehearsal failed at {}",
            first_failure(&r.phases)
        )))
    }
}
