//! `hostshift plan init` and `hostshift plan check`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::{Global, PlanArg};
use crate::error::{CliResult, failed, usage};
use crate::plan::template::TEMPLATE;

/// Plans.
#[derive(Args)]
pub struct PlanCmd {
    #[command(subcommand)]
    cmd: PlanSub,
}

#[derive(Subcommand)]
enum PlanSub {
    /// Write a fully commented plan template to edit.
    Init {
        /// Where to write it.
        #[arg(long, short, default_value = "plan.toml")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a plan: every problem is reported with its file, line and key (exit 2).
    Check {
        #[command(flatten)]
        plan: PlanArg,
    },
}

/// Runs `plan ...`.
///
/// # Errors
/// Usage error for an invalid plan or an existing output file.
pub fn run(g: &Global, c: PlanCmd) -> CliResult {
    match c.cmd {
        PlanSub::Init { out, force } => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true);
            if force {
                opts.create(true).truncate(true);
            } else {
                opts.create_new(true);
            }
            let mut f = opts.open(&out).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    usage(anyhow::anyhow!(
                        "{} exists; use --force to overwrite it",
                        out.display()
                    ))
                } else {
                    failed(anyhow::anyhow!("cannot write {}: {e}", out.display()))
                }
            })?;
            f.write_all(TEMPLATE.as_bytes())
                .map_err(|e| failed(anyhow::anyhow!("cannot write {}: {e}", out.display())))?;
            if g.json {
                crate::output::print_json(&json!({ "written": out }));
            } else {
                println!(
                    "Wrote {}. Edit it, then: hostshift plan check --plan {}",
                    out.display(),
                    out.display()
                );
            }
            Ok(())
        }
        PlanSub::Check { plan } => match crate::plan::Plan::load(&plan.plan) {
            Ok(p) => {
                if g.json {
                    crate::output::print_json(
                        &json!({ "ok": true, "plan": plan.plan, "problems": [] }),
                    );
                } else {
                    println!(
                        "{}: ok ({} databases, {} storage trees, {} files, switch {})",
                        plan.plan.display(),
                        p.databases.len(),
                        p.storage.len(),
                        p.files.len(),
                        p.switch.method.as_str()
                    );
                }
                Ok(())
            }
            Err(problems) => {
                if g.json {
                    crate::output::print_json(&json!({
                        "ok": false,
                        "plan": plan.plan,
                        "problems": problems.0.iter().map(|p| json!({
                            "file": p.file, "line": p.line, "key": p.key, "message": p.message,
                        })).collect::<Vec<_>>(),
                    }));
                }
                Err(usage(anyhow::anyhow!(
                    "{} problem(s) in the plan:\n{problems}",
                    problems.0.len()
                )))
            }
        },
    }
}
