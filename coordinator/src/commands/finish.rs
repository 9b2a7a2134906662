//! `hostshift window` shows the rollback window; `hostshift finish` closes it (see
//! [`crate::window`] and docs/cutover.md, "The rollback window").
//!
//! `finish` stops the old host's follower, removes its replication origin, drops the slot and
//! publication on the new host, and leaves the old host frozen: from then on a rollback is the
//! lossy one again (it reports the new host's writes as at risk), and the old host can be
//! decommissioned.

use clap::Args;

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::client;
use crate::error::{CliResult, failed};
use crate::journal::{Journal, Mark, Step};
use crate::output::print_json;
use crate::plan::Side;
use crate::window;

/// `hostshift window` flags.
#[derive(Args)]
#[command(after_help = "\
Shows the rollback window a cutover opened: since when the old host follows the new one, the
follower's state and lag, and the WAL the window's slot keeps on the new host (a warning above
1 GiB: run `hostshift finish` or fix the old host's follower).

With --restart-follower the old host's follower is started again first (after it stopped on an
error: `follower failed` and its cause); it resumes from where it applied, exactly once.

Exit codes: 0 shown; 1 the window's record cannot be read, or the restart failed; 2 usage or plan
error.")]
pub struct WindowCmd {
    #[command(flatten)]
    plan: PlanArg,
    /// Start the old host's follower again (after it stopped on an error you fixed, e.g. a
    /// table created on the new host and now created on the old one too); it goes on from
    /// where it applied, exactly once.
    #[arg(long)]
    restart_follower: bool,
}

/// `hostshift finish` flags.
#[derive(Args)]
#[command(after_help = "\
Closes the rollback window: the old host's follower stopped and removed (with its replication
origin), the slot and publication dropped on the new host. The old host stays frozen; a later
`hostshift rollback` no longer carries the new host's writes back. Safe to repeat.

Exit codes: 0 closed (or there was no window); 1 an agent failed (run it again); 2 usage or plan
error, or not confirmed.")]
pub struct FinishCmd {
    #[command(flatten)]
    plan: PlanArg,
}

/// Runs `hostshift window`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn status(g: &Global, c: WindowCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    if c.restart_follower {
        let _lock = crate::lock::acquire(&plan, "window")?;
        let open = window::load(&plan)
            .map_err(failed)?
            .is_some_and(|r| r.state == "open");
        if !open {
            return Err(failed(anyhow::anyhow!(
                "no open rollback window: there is no follower to restart"
            )));
        }
        let old = client::connect(&plan, Side::Old).await.map_err(failed)?;
        window::open(&plan, &old).await.map_err(failed)?;
        if !g.json && !g.quiet {
            println!("The old host's follower was started again.");
        }
    }
    let s = window::status(&plan).await.map_err(failed)?;
    if g.json {
        print_json(&s);
        return Ok(());
    }
    match s.state.as_str() {
        "none" => println!("No rollback window: no cutover of this plan opened one."),
        "closed" => println!("The rollback window is closed (`hostshift finish` or a rollback)."),
        st => {
            println!(
                "Rollback window {st}{}",
                if s.open_secs > 0 {
                    format!(", open for {} s", s.open_secs)
                } else {
                    String::new()
                }
            );
            for d in &s.databases {
                println!(
                    "  {}: follower {}, applied {}, new host at {}, lag {} bytes / {:.1} s, WAL retained on the new host {} bytes{}{}",
                    d.database,
                    d.follower,
                    d.applied_lsn,
                    d.new_lsn,
                    d.lag_bytes,
                    d.lag_seconds,
                    d.retained_bytes,
                    if d.retained_warning {
                        " — WARNING: the new host's disk fills; run `hostshift finish` or fix the follower"
                    } else {
                        ""
                    },
                    if d.error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.error)
                    }
                );
                if !d.hint.is_empty() {
                    println!("    {}", d.hint);
                }
            }
        }
    }
    Ok(())
}

/// Runs `hostshift finish`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn finish(g: &Global, c: FinishCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let _lock = crate::lock::acquire(&plan, "finish")?;
    let active = window::load(&plan)
        .map_err(failed)?
        .is_some_and(|r| r.is_active());
    if !active {
        if g.json {
            print_json(
                &serde_json::json!({"ok": true, "closed": false, "detail": "no open rollback window"}),
            );
        } else if !g.quiet {
            println!("No open rollback window: nothing to close.");
        }
        return Ok(());
    }
    confirm(
        g,
        "Close the rollback window (a later rollback no longer carries the new host's writes back)?",
    )?;
    let (old, new) = tokio::join!(
        client::connect(&plan, Side::Old),
        client::connect(&plan, Side::New)
    );
    let (old, new) = (old.map_err(failed)?, new.map_err(failed)?);
    let dir = plan.state_dir();
    let journal = Journal::open(&dir).map_err(|e| {
        failed(anyhow::anyhow!(
            "cannot write the journal in {}: {e}",
            dir.display()
        ))
    })?;
    let record = |mark: Mark, detail: &str| {
        journal
            .record_step("finish", Step::WindowClose, mark, detail)
            .map_err(|e| {
                failed(anyhow::anyhow!(
                    "cannot write the journal {}: {e}",
                    journal.path().display()
                ))
            })
    };
    record(Mark::Started, "")?;
    match window::close(&plan, &old, &new).await {
        Ok(d) => {
            record(Mark::Done, &d)?;
            let note = format!(
                "The old host ({}) stays frozen. To decommission it: keep a final backup (`hostshift backup --host old --plan {}`), then stop its app and database and retire the machine.",
                plan.old.address,
                plan.path.display()
            );
            if g.json {
                print_json(
                    &serde_json::json!({"ok": true, "closed": true, "detail": d, "note": note}),
                );
            } else if !g.quiet {
                println!("Rollback window closed: {d}.\n{note}");
            }
            Ok(())
        }
        Err(e) => {
            record(Mark::Failed, &e.to_string())?;
            Err(failed(anyhow::anyhow!(
                "closing the rollback window failed: {e}; fix the cause and run `hostshift finish` again (safe to repeat)"
            )))
        }
    }
}
