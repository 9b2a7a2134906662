//! `hostshift verify`: prove the new host holds what the old one holds.

use clap::Args;

use crate::cli::{Global, PlanArg};
use crate::error::{CliResult, failed};
use crate::output::{print_json, printable, printable_line, table};
use crate::sync::verify;

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
    let report = verify::run(&plan).await.map_err(failed)?;
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
                    if r.equal {
                        "equal".into()
                    } else {
                        "DIFFERS".into()
                    },
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
                "DIFFERS {} {}: {}",
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
        Ok(())
    } else {
        let names: Vec<String> = report
            .rows
            .iter()
            .filter(|r| !r.equal)
            .map(|r| format!("{} {}", r.kind, r.name))
            .collect();
        Err(failed(anyhow::anyhow!("not equal: {}", names.join(", "))))
    }
}
