//! `hostshift unfreeze --host old|new`: lift a write freeze an earlier cutover left on one host,
//! without moving traffic — the step before syncing *into* that host on the way back of a
//! blue/green swap (docs/cutover.md, Blue/green).
//!
//! It undoes the plan's `[freeze] methods` on that host, newest first, exactly as `rollback`
//! does on the old host: the original nginx site back, the `[pm2] apps` started, each database's
//! recorded `default_transaction_read_only` and `CONNECT` privileges back (the agent removes its
//! freeze record). Each undo is idempotent, so it is safe on a host that is not frozen.

use clap::Args;

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::client;
use crate::cutover::state::{self, Stage};
use crate::cutover::{direction, freeze};
use crate::error::{CliError, CliResult, failed};
use crate::journal::{self, Journal, Mark, Step};
use crate::output::print_json;
use crate::plan::Side;

/// Unfreeze flags.
#[derive(Args)]
#[command(after_help = "\
Undoes the plan's [freeze] methods on one host (newest first): the original nginx site, the
[pm2] apps started, the databases writable with their CONNECT privileges back. Traffic is not
touched. Use it on the host an earlier cutover left frozen, before syncing into it (the way back
of a blue/green swap), or after a successful cutover to bring the old host back as a standby.
The frozen host then takes writes again: anything written there is overwritten by the next sync
into it.

Exit codes: 0 every method undone (or there was nothing to undo); 1 an undo failed (the message
says which); 2 usage or plan error, or not confirmed; 3 a cutover of this plan is unfinished
(`hostshift cutover --resume` or `hostshift rollback` first), or the plan moves the other way
than the journal's cutover.")]
pub struct UnfreezeCmd {
    #[command(flatten)]
    plan: PlanArg,
    /// The host to unfreeze: `old` or `new` (as the plan names them).
    #[arg(long, value_enum)]
    host: Side,
}

/// Runs `hostshift unfreeze`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn run(g: &Global, c: UnfreezeCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let _lock = crate::lock::acquire(&plan, "unfreeze")?;
    let dir = plan.state_dir();
    let events = journal::read(&dir).map_err(|e| {
        failed(anyhow::anyhow!(
            "cannot read the journal in {}: {e}",
            dir.display()
        ))
    })?;
    let st = state::of(&events);
    direction::check(&plan, &st).map_err(|m| CliError::OperatorAction(anyhow::anyhow!(m)))?;
    if st.state == Stage::InProgress {
        return Err(CliError::OperatorAction(anyhow::anyhow!(
            "a cutover of this plan is unfinished (run {}): finish it with `hostshift cutover --resume --yes` or undo it with `hostshift rollback --yes` first",
            st.run.as_deref().unwrap_or("?")
        )));
    }
    // Within the rollback window the old database has one writer, the follower: the app
    // writing there too would conflict with the new host's changes.
    if c.host == Side::Old
        && crate::window::load(&plan).is_ok_and(|w| w.is_some_and(|w| w.is_active()))
    {
        return Err(CliError::OperatorAction(anyhow::anyhow!(
            "the rollback window is open: the old host follows the new one and must stay frozen; `hostshift rollback --yes` goes back without losing a write, `hostshift finish --yes` closes the window first (docs/cutover.md, The rollback window)"
        )));
    }
    let host = plan.host(c.host);
    confirm(
        g,
        &format!(
            "Lift the write freeze on the {} host (agent {:?} at {}); traffic is not moved?",
            c.host, host.agent, host.address
        ),
    )?;
    let agent = client::connect(&plan, c.host).await.map_err(failed)?;
    let journal = Journal::open(&dir).map_err(|e| {
        failed(anyhow::anyhow!(
            "cannot write the journal in {}: {e}",
            dir.display()
        ))
    })?;
    // Recorded under the rollback phase only for the old host, whose freeze the journal's
    // cutover tracks; the new host's freeze (left by another leg) is not this journal's.
    let phase = if c.host == Side::Old {
        state::ROLLBACK
    } else {
        "unfreeze"
    };
    let mut done = Vec::new();
    let mut errors = Vec::new();
    // Nothing is undone unrecorded: a journal that cannot be written stops the command.
    let record = |step: Step, mark: Mark, detail: &str| {
        journal.record_step(phase, step, mark, detail).map_err(|e| {
            failed(anyhow::anyhow!(
                "cannot write the journal {}: {e}; nothing more was undone — fix what keeps the journal from being written, then run `hostshift unfreeze` again (each undo is safe to repeat)",
                journal.path().display(),
            ))
        })
    };
    for m in plan.freeze.methods.iter().rev().copied() {
        let step = Step::Unfreeze(m);
        record(step, Mark::Started, "")?;
        match freeze::undo(&plan, &agent, m).await {
            Ok(d) => {
                record(step, Mark::Done, &d)?;
                if !g.json && !g.quiet {
                    println!("{}: {d}", m.as_str());
                }
                done.push(serde_json::json!({"method": m.as_str(), "detail": d}));
            }
            Err(e) => {
                record(step, Mark::Failed, &e.to_string())?;
                errors.push(format!(
                    "{}: {e} (by hand: {})",
                    m.as_str(),
                    freeze::manual_undo(&plan, m)
                ));
            }
        }
    }
    if g.json {
        print_json(&serde_json::json!({
            "ok": errors.is_empty(),
            "host": c.host.as_str(),
            "agent": host.agent,
            "undone": done,
            "errors": errors,
        }));
    }
    if errors.is_empty() {
        if !g.json && !g.quiet {
            println!(
                "The {} host ({}) is no longer frozen; traffic was not moved.",
                c.host, host.address
            );
        }
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "part of the unfreeze failed (fix the cause, then run it again — each undo is safe to repeat):\n  {}",
            errors.join("\n  ")
        )))
    }
}
