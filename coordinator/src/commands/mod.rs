//! One file per command. Each parses its own flags (clap derive), does its work through the
//! library (plan, preflight, client...), and prints its result: a table for people, JSON with
//! `--json`.

pub mod backup;
pub mod certs;
pub mod check;
pub mod cutover;
pub mod db;
pub mod env;
pub mod finish;
pub mod follow;
pub mod health;
pub mod hook;
pub mod nginx;
pub mod plan;
pub mod pm2;
pub mod rehearse;
pub mod sync;
pub mod unfreeze;
pub mod verify;

use std::io::{BufRead, IsTerminal, Write};

use crate::cli::Global;
use crate::error::{CliError, CliResult, usage};
use crate::plan::Plan;

/// Loads a plan, turning its problems into a usage error (exit 2) that lists each one.
///
/// # Errors
/// A [`CliError::Usage`] listing every problem with file, line and key.
pub fn load_plan(path: &std::path::Path) -> Result<Plan, CliError> {
    let plan = Plan::load(path).map_err(|p| usage(anyhow::anyhow!("the plan is invalid:\n{p}")))?;
    refuse_agent_certificate(&plan)?;
    Ok(plan)
}

/// Refuses a plan whose client certificate is an agent's: the agents answer every control call
/// from it with "may not call control RPCs", which `verify` used to report as differences.
/// (A certificate that cannot be read is left to the first connection, which names the file.)
fn refuse_agent_certificate(plan: &Plan) -> Result<(), CliError> {
    let tls = plan.tls_files();
    match tls.own_identity() {
        Ok(id) if id.role != hostshift_shared::identity::Role::Coordinator => {
            Err(usage(anyhow::anyhow!(
                "the plan's [tls] cert {} is {id}'s certificate, not a coordinator's: agents \
                 refuse control calls from it (\"may not call control RPCs\"); point [tls] cert \
                 and key at the coordinator certificate `hostshift certs init` wrote \
                 (coordinator.crt, coordinator.key)",
                tls.cert.display()
            )))
        }
        _ => Ok(()),
    }
}

/// Asks `question` on the terminal unless `--yes` was given; without a terminal (a script, a
/// pipe) refuses with a usage error telling to add `--yes`, so nothing happens unconfirmed.
///
/// # Errors
/// [`CliError::Usage`] when not confirmed.
pub fn confirm(g: &Global, question: &str) -> CliResult {
    if g.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(anyhow::anyhow!(
            "{question} — no terminal to confirm on: add --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(usage(anyhow::anyhow!("not confirmed; nothing was changed")))
    }
}
