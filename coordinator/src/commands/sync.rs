//! `hostshift sync`: copy the plan's data from the old host to the new one.

use clap::Args;

use crate::cli::{Global, PlanArg};
use crate::error::{CliError, CliResult, failed};
use crate::output::{bytes, print_json, table};
use crate::progress;
use crate::sync::{self, Only, SyncOptions};

/// Sync flags.
#[derive(Args)]
pub struct SyncCmd {
    #[command(flatten)]
    plan: PlanArg,
    /// Only this kind of resource: db, storage or files.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Stream through this machine instead of agent to agent (when the new host cannot reach
    /// the old host's agent).
    #[arg(long)]
    relay: bool,
    /// Storage batches close at this many files (each batch is one stream and one journal entry).
    #[arg(long, default_value_t = 5_000)]
    batch_files: u64,
    /// ...or at this many MiB.
    #[arg(long, default_value_t = 256)]
    batch_mib: u64,
    /// After a rollback: overwrite the rows written on the new host since the switch (the
    /// rollback listed them). Without it the databases are not synced while there are any.
    #[arg(long)]
    discard_new_host_writes: bool,
    /// Sync the units (config files, storage trees, databases) one after the other instead of
    /// all at once: less load on the old host at any moment (it keeps serving meanwhile), one
    /// progress display at a time; the sync as a whole takes longer.
    #[arg(long)]
    one_at_a_time: bool,
}

/// Runs a sync and prints the per-unit result.
///
/// # Errors
/// Usage error for a bad plan; failure (exit 1) when an agent is unreachable or any unit failed.
pub async fn run(g: &Global, c: SyncCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let _lock = crate::lock::acquire(&plan, "sync")?;
    let opts = SyncOptions {
        only: c.only,
        relay: c.relay,
        progress: if g.quiet {
            progress::Mode::Quiet
        } else if g.json {
            progress::Mode::Json
        } else {
            progress::Mode::Human
        },
        batch_files: c.batch_files.max(1),
        batch_bytes: c.batch_mib.max(1) * 1024 * 1024,
        discard_new_host_writes: c.discard_new_host_writes,
        concurrent: !c.one_at_a_time,
        ..SyncOptions::default()
    };
    let started = crate::report::now_ms();
    let report = sync::run(&plan, &opts).await.map_err(|e| match e {
        e @ (sync::SyncError::NewHostWrites(_)
        | sync::SyncError::TargetFrozen { .. }
        | sync::SyncError::Protocol { .. }
        | sync::SyncError::Reversed(_)) => CliError::OperatorAction(e.into()),
        e => failed(e),
    })?;
    if g.json {
        print_json(&report);
    } else {
        let rows: Vec<Vec<String>> = report
            .units
            .iter()
            .map(|u| {
                vec![
                    format!("{} {}", u.kind, u.name),
                    u.status.clone(),
                    format!(
                        "{} {}, {}",
                        u.files,
                        if u.kind == "database" {
                            "tables"
                        } else {
                            "files"
                        },
                        bytes(u.bytes)
                    ),
                    match (u.kind.as_str(), u.skipped_files) {
                        (_, 0) => "-".into(),
                        ("database", n) => format!("{n} tables"),
                        (_, n) => format!("{n} files, {}", bytes(u.skipped_bytes)),
                    },
                    retries(u).to_string(),
                    format!("{:.1} s", u.ms as f64 / 1000.0),
                ]
            })
            .collect();
        println!(
            "hostshift sync — plan {} ({} mode)\n",
            plan.migration.name, report.mode
        );
        print!(
            "{}",
            table(
                &[
                    "UNIT",
                    "RESULT",
                    "SENT",
                    "SKIPPED (ALREADY EQUAL)",
                    "RETRIES",
                    "TIME"
                ],
                &rows
            )
        );
        for u in &report.units {
            for ch in &u.changes {
                println!("  {} {}: {ch}", u.kind, u.name);
            }
            if u.status == "failed" {
                println!("FAIL {} {}: {}", u.kind, u.name, u.detail);
            }
            if u.deferred > 0 {
                println!("  {} {}: {}", u.kind, u.name, sync::deferred_summary(u));
            }
        }
        // A database unit counts tables in `files`: say so rather than add them to the files.
        let (tables, files): (Vec<&sync::UnitReport>, Vec<&sync::UnitReport>) =
            report.units.iter().partition(|u| u.kind == "database");
        let count = |v: &[&sync::UnitReport], f: fn(&sync::UnitReport) -> u64| -> u64 {
            v.iter().map(|u| f(u)).sum()
        };
        println!(
            "\n{} files and {} tables ({}) sent, {} files and {} tables skipped as already equal, in {:.1} s. Journal: {}",
            count(&files, |u| u.files),
            count(&tables, |u| u.files),
            bytes(report.bytes),
            count(&files, |u| u.skipped_files),
            count(&tables, |u| u.skipped_files),
            report.ms as f64 / 1000.0,
            report.journal
        );
        if report.ok {
            println!("Next: hostshift verify --plan {}", plan.path.display());
        }
    }
    // The report goes to the plan's state dir; its path to stderr (stdout is the result).
    crate::report::publish(
        &plan,
        &crate::report::Report::from_sync(&report, &plan, started),
        g.quiet,
    );
    if report.ok {
        Ok(())
    } else {
        let n = report.units.iter().filter(|u| u.status == "failed").count();
        Err(failed(anyhow::anyhow!(
            "{n} unit(s) failed; the old host is untouched; run `hostshift sync` again to continue (finished work is not redone)"
        )))
    }
}

/// The RETRIES column: attempts after the first, or the retried failures when there were more
/// (a storage tree planned again, a database's pieces retried on their own: the unit's last
/// attempt may have been its first).
fn retries(u: &sync::UnitReport) -> usize {
    (u.attempts.saturating_sub(1) as usize).max(u.retried.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10.6: the RETRIES column showed 0 after retries and re-plans.
    #[test]
    fn retries_count_re_plans_and_piece_retries_not_only_attempts() {
        let mut u = crate::sync::unit_report("storage", "evaluations");
        assert_eq!(retries(&u), 0);
        u.attempts = 1;
        let e = sync::UnitError::other("planning again".into());
        u.retried = vec![e.clone(), e];
        assert_eq!(retries(&u), 2, "two re-plans within one attempt");
        u.attempts = 3;
        u.retried.clear();
        assert_eq!(retries(&u), 2, "two attempts after the first");
    }
}
