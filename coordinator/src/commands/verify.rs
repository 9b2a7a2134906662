//! `hostshift verify`: prove the new host holds what the old one holds.

use clap::Args;

use crate::cli::{Global, PlanArg};
use crate::error::{CliError, CliResult, failed};
use crate::output::{print_json, printable, printable_line, table};
use crate::sync::verify::{self, RowStatus};

/// Verify flags.
#[derive(Args)]
pub struct VerifyCmd {
    #[command(flatten)]
    plan: PlanArg,
}

/// Compares both hosts and prints the table.
///
/// # Errors
/// Usage error for a bad plan; failure (exit 1) naming every item that differs.
pub async fn run(g: &Global, c: VerifyCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    // Progress on stderr as sync shows it; stdout keeps only the result.
    let progress = crate::progress::Progress::new(if g.quiet {
        crate::progress::Mode::Quiet
    } else if g.json {
        crate::progress::Mode::Json
    } else {
        crate::progress::Mode::Human
    });
    let report = verify::run_with(&plan, &progress).await.map_err(failed)?;
    if g.json {
        print_json(&report);
    } else {
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.name.clone(),
                    r.status.word().into(),
                    r.old.clone(),
                    r.new.clone(),
                ]
            })
            .collect();
        println!("hostshift verify — plan {}\n", plan.migration.name);
        print!(
            "{}",
            table(&["KIND", "NAME", "RESULT", "OLD", "NEW"], &rows)
        );
        for r in report.rows.iter().filter(|r| !r.equal) {
            println!(
                "{} {} {}: {}",
                r.status.word(),
                r.kind,
                printable_line(&r.name),
                printable(&r.detail)
            );
        }
    }
    // The report goes to the plan's state dir; its path to stderr (stdout is the result).
    crate::report::publish(
        &plan,
        &crate::report::Report::from_verify(&report, &plan),
        g.quiet,
    );
    if report.ok {
        return Ok(());
    }
    let named = |status: RowStatus| -> Vec<String> {
        report
            .rows
            .iter()
            .filter(|r| r.status == status)
            .map(|r| format!("{} {}", r.kind, r.name))
            .collect()
    };
    let (differ, not_run) = (named(RowStatus::Differs), named(RowStatus::CouldNotRun));
    let not_run_text = format!(
        "could not compare {} (see the lines above: fix what they name, then verify again)",
        not_run.join(", ")
    );
    if !differ.is_empty() {
        // A difference is a verdict: it wins over the comparisons that could not run.
        let also = if not_run.is_empty() {
            String::new()
        } else {
            format!("; {not_run_text}")
        };
        Err(failed(anyhow::anyhow!(
            "not equal: {}{also}",
            differ.join(", ")
        )))
    } else {
        Err(CliError::CouldNotCompare(anyhow::anyhow!("{not_run_text}")))
    }
}
