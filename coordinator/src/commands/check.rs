//! `hostshift check`: the preflight of both hosts, as a table or JSON.

use clap::Args;

use crate::cli::{Global, PlanArg};
use crate::error::{CliResult, failed};
use crate::output::{bytes, print_json, table};
use crate::preflight::{self, Verdict};

/// Preflight flags.
#[derive(Args)]
pub struct CheckCmd {
    #[command(flatten)]
    plan: PlanArg,
}

/// Runs the preflight and prints it.
///
/// # Errors
/// Usage error for an invalid plan; failure (exit 1) when any check fails.
pub async fn run(g: &Global, c: CheckCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let report = preflight::run(&plan).await;
    if g.json {
        print_json(&report);
    } else {
        println!(
            "hostshift check — plan {} ({})\n",
            plan.migration.name,
            plan.path.display()
        );
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
            .map(|c| {
                let mark = match c.result {
                    Verdict::Ok => "ok",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                };
                vec![
                    c.host.clone(),
                    c.check.clone(),
                    mark.into(),
                    c.detail.clone(),
                ]
            })
            .collect();
        print!("{}", table(&["HOST", "CHECK", "RESULT", "DETAIL"], &rows));
        if !report.tools.is_empty() {
            println!("\nTools");
            let rows: Vec<Vec<String>> = report
                .tools
                .iter()
                .map(|t| {
                    vec![
                        t.host.clone(),
                        t.tool.clone(),
                        if t.present {
                            t.version.clone()
                        } else {
                            format!("missing: {}", t.version)
                        },
                        t.path.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["HOST", "TOOL", "VERSION", "PATH"], &rows));
        }
        if !report.baseline.is_empty() {
            println!("\nBaseline row counts on the old host");
            let rows: Vec<Vec<String>> = report
                .baseline
                .iter()
                .map(|b| {
                    vec![
                        b.database.clone(),
                        b.table.clone(),
                        b.rows.to_string(),
                        bytes(b.size_bytes),
                    ]
                })
                .collect();
            print!("{}", table(&["DATABASE", "TABLE", "ROWS", "SIZE"], &rows));
        }
        let problems: Vec<_> = report
            .checks
            .iter()
            .filter(|c| c.result != Verdict::Ok)
            .collect();
        println!();
        if problems.is_empty() {
            println!("All {} checks passed.", report.checks.len());
        } else {
            for p in &problems {
                let mark = if p.result == Verdict::Fail {
                    "FAIL"
                } else {
                    "WARN"
                };
                println!("{mark} {} {}: {}", p.host, p.check, p.detail);
                if !p.hint.is_empty() {
                    println!("     → {}", p.hint);
                }
            }
        }
    }
    if report.ok {
        Ok(())
    } else {
        let n = report
            .checks
            .iter()
            .filter(|c| c.result == Verdict::Fail)
            .count();
        Err(failed(anyhow::anyhow!(
            "{n} check(s) failed; nothing was changed on either host"
        )))
    }
}
