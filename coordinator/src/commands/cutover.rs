//! `hostshift cutover`, `hostshift rollback` and `hostshift status`: the switch to the new host,
//! its undo, and where a migration stands (from the journal). The work is in
//! [`crate::cutover`]; this file parses flags, decides from the journal whether a cutover may
//! start or resume, and prints.

use clap::Args;

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::cutover::state::{self, Stage};
use crate::cutover::{self, CutoverReport, Options, Outcome};
use crate::error::{CliError, CliResult, failed, usage};
use crate::journal;
use crate::output::{print_json, table};
use crate::progress::Mode;

/// Cutover flags.
#[derive(Args)]
#[command(after_help = "\
Steps (each journaled before and after it acts):
  1. gates      both agents answer; [pm2] apps online on the new host; [[health]] checks pass;
                a sync and then a clean verify within [cutover] verify_freshness_mins; a backup
                of the old host younger than backup_max_age_hours; same schema on both hosts;
                the traffic switch possible (EC2 DryRun, read access); predicted freeze within
                [freeze] budget_secs. Nothing is touched unless all pass.
  2. freeze     on the old host, in the plan's [freeze] methods order: maintenance-page,
                stop-apps, read-only.
  3. delta      files, storage and databases again: only what changed (key-range fingerprints).
  4. prove      everything equal on both hosts, and the old databases unchanged since the delta
                began.
  5. switch     [switch] method: elastic-ip, dns, load-balancer, or none (you switch).
  6. verify     [switch] verify_urls from here and the new host's health checks.
On a failure before the switch the freeze is undone; after it, traffic is switched back first.
After success the old host STAYS frozen (writes there would be lost): `hostshift rollback` undoes
the whole cutover.

Typical run:
  hostshift sync && hostshift verify       # right before: the delta stays small
  hostshift cutover --dry-run              # gates only
  hostshift cutover --yes

Exit codes: 0 switched (or --dry-run gates pass); 1 failed and undone, the old host serving (or a
gate failed); 2 usage or plan error, or not confirmed; 3 operator action needed: the undo failed
(the output says exactly what to run) or an unfinished cutover exists (--resume or rollback);
4 nothing to do: the journal's cutover already finished (with --dry-run too).")]
pub struct CutoverCmd {
    #[command(flatten)]
    plan: PlanArg,
    /// Check the gates and stop: nothing is touched.
    #[arg(long)]
    dry_run: bool,
    /// Continue an unfinished cutover (killed coordinator, lost connection) from the freeze.
    #[arg(long, conflicts_with = "dry_run")]
    resume: bool,
    /// With --resume, after a crash between the switch and the proof after the switch whose
    /// snapshot is gone: keep traffic on the new host without that proof (journaled as such).
    #[arg(long, requires = "resume")]
    accept_unproven: bool,
    /// Go on without a recent backup of the old host; the reason is journaled.
    #[arg(long, value_name = "REASON")]
    skip_backup_check: Option<String>,
}

/// Rollback flags.
#[derive(Args)]
#[command(after_help = "\
Switches traffic back to the old host (when the plan has a [switch] method) and undoes every
[freeze] method there: the original nginx site, the PM2 apps started, the databases writable.
Each undo is safe to repeat, so run it again after fixing whatever made it fail.
Writes accepted by the new host after the switch are NOT copied back: the rollback names every
table written there since the switch (and how its row count moved), and `hostshift sync` then
refuses to overwrite them until run with --discard-new-host-writes.

Exit codes: 0 the old host serves again; 2 usage or plan error, or not confirmed; 3 part of the
undo failed (the output says what to run by hand).")]
pub struct RollbackCmd {
    #[command(flatten)]
    plan: PlanArg,
}

/// Status flags.
#[derive(Args)]
pub struct StatusCmd {
    #[command(flatten)]
    plan: PlanArg,
}

fn mode(g: &Global) -> Mode {
    if g.quiet {
        Mode::Quiet
    } else if g.json {
        Mode::Json
    } else {
        Mode::Human
    }
}

fn events(plan: &crate::plan::Plan) -> Result<Vec<journal::Event>, CliError> {
    journal::read(&plan.state_dir()).map_err(|e| {
        failed(anyhow::anyhow!(
            "cannot read the journal in {}: {e}",
            plan.state_dir().display()
        ))
    })
}

/// Runs `hostshift cutover`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn run(g: &Global, c: CutoverCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    // A dry run changes nothing and may look while another command runs.
    let _lock = if c.dry_run {
        None
    } else {
        Some(crate::lock::acquire(&plan, "cutover")?)
    };
    let st = state::of(&events(&plan)?);
    crate::cutover::direction::check(&plan, &st)
        .map_err(|m| CliError::OperatorAction(anyhow::anyhow!(m)))?;
    let plan_arg = plan.path.display().to_string();
    match (st.state.clone(), c.resume) {
        (Stage::InProgress, false) if !c.dry_run => {
            if g.json {
                print_json(&serde_json::json!({
                    "ok": false,
                    "outcome": "in-progress",
                    "run": st.run,
                    "frozen": st.frozen,
                    "switched": st.switched,
                }));
            }
            return Err(CliError::OperatorAction(anyhow::anyhow!(
                "a cutover is unfinished (run {}{}{}): run `hostshift cutover --resume --yes --plan {plan_arg}` to finish it, or `hostshift rollback --yes --plan {plan_arg}` to undo it; `hostshift status` shows its steps",
                st.run.as_deref().unwrap_or("?"),
                if st.frozen {
                    ", the old host is frozen"
                } else {
                    ""
                },
                if st.switched {
                    ", traffic may be on the new host"
                } else {
                    ""
                },
            )));
        }
        // Also for --dry-run: its gates must say what the run would do, which is nothing.
        (Stage::Switched, _) => {
            if g.json {
                print_json(
                    &serde_json::json!({"ok": false, "outcome": "already-switched", "run": st.run}),
                );
            }
            return Err(CliError::NothingToDo(anyhow::anyhow!(
                "the cutover already finished (run {}): traffic is on the new host; nothing was done. `hostshift rollback --plan {plan_arg}` undoes it; for a move back, see docs/cutover.md",
                st.run.as_deref().unwrap_or("?")
            )));
        }
        (Stage::InProgress, true) => {}
        (_, true) => {
            return Err(usage(anyhow::anyhow!(
                "no unfinished cutover to resume (the journal says: {:?}); start one with `hostshift cutover`",
                st.state
            )));
        }
        _ => {}
    }
    if !c.dry_run {
        confirm(
            g,
            &format!(
                "Freeze writes on the old host, sync the delta and switch traffic (plan {})?",
                plan.migration.name
            ),
        )?;
    }
    let opts = Options {
        dry_run: c.dry_run,
        resume: c.resume,
        accept_unproven: c.accept_unproven,
        skip_backup_check: c.skip_backup_check,
        progress: mode(g),
        rehearsal: false,
        write_report: true,
    };
    let report = cutover::run(&plan, &opts, &st).await.map_err(failed)?;
    print(g, &report, &plan_arg);
    exit(&report)
}

/// Runs `hostshift rollback`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn rollback(g: &Global, c: RollbackCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let _lock = crate::lock::acquire(&plan, "rollback")?;
    crate::cutover::direction::check(&plan, &state::of(&events(&plan)?))
        .map_err(|m| CliError::OperatorAction(anyhow::anyhow!(m)))?;
    confirm(
        g,
        &format!(
            "Switch traffic back to the old host and unfreeze it (plan {})?",
            plan.migration.name
        ),
    )?;
    let report = cutover::rollback(&plan, mode(g)).await.map_err(failed)?;
    let plan_arg = plan.path.display().to_string();
    print(g, &report, &plan_arg);
    exit(&report)
}

/// Runs `hostshift status`.
///
/// # Errors
/// The journal cannot be read.
pub async fn status(g: &Global, c: StatusCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let events = events(&plan)?;
    let st = state::of(&events);
    // Snapshots left open on the old host (a sync's, until its lease runs out): the journal
    // cannot know them, the old agent does.
    let snapshots = crate::snapshots::on(&plan, crate::plan::Side::Old).await;
    if g.json {
        let last = |phase: &str, unit: &str| {
            state::last_finished(&events, phase, unit).map(|(_, done, _)| done)
        };
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        v["last_sync_ms"] = serde_json::json!(last("sync", "sync"));
        v["last_verify_ms"] = serde_json::json!(last("verify", "verify"));
        // Which host the freeze is on, by its agent name as the cutover recorded it.
        v["frozen_agent"] = serde_json::json!(st.frozen.then(|| {
            st.direction
                .as_deref()
                .and_then(|d| d.split_once(" -> ").map(|(o, _)| o.to_string()))
                .unwrap_or_else(|| plan.old.agent.clone())
        }));
        // The rollback window, from its record (`hostshift window` asks the agents).
        v["rollback_window"] = match crate::window::load(&plan) {
            Ok(Some(w)) => serde_json::json!({"state": w.state, "since_unix_ms": w.opened_unix_ms}),
            Ok(None) => serde_json::json!({"state": "none"}),
            Err(e) => serde_json::json!({"state": "unknown", "error": e.to_string()}),
        };
        match &snapshots {
            Ok(list) => v["open_snapshots"] = serde_json::json!(list),
            Err(e) => v["open_snapshots_unknown"] = serde_json::json!(e.to_string()),
        }
        print_json(&v);
        return Ok(());
    }
    println!(
        "hostshift status — plan {} (journal {})\n",
        plan.migration.name,
        plan.state_dir().join("journal.jsonl").display()
    );
    for (what, phase, unit) in [
        ("last sync", "sync", "sync"),
        ("last verify", "verify", "verify"),
    ] {
        match state::last_finished(&events, phase, unit) {
            Some((s, e, d)) => println!(
                "{what}: {} ({:.1} s){}",
                crate::report::utc(e),
                (e - s) as f64 / 1000.0,
                if d.is_empty() {
                    String::new()
                } else {
                    format!(" — {d}")
                }
            ),
            None => println!("{what}: none"),
        }
    }
    let word = match st.state {
        Stage::None => "no cutover yet",
        Stage::InProgress => {
            "UNFINISHED — `hostshift cutover --resume --yes` or `hostshift rollback --yes`"
        }
        Stage::Switched => "switched: traffic on the new host; the old host stays frozen",
        Stage::RolledBack => "rolled back: the old host serves",
        Stage::Failed => "stopped at the gates: nothing was touched",
    };
    println!("cutover: {word}");
    if let Ok(Some(w)) = crate::window::load(&plan)
        && w.is_active()
    {
        println!(
            "rollback window: {} — the old host follows the new one; `hostshift window` shows its lag and the WAL kept on the new host, `hostshift finish --yes` closes it",
            w.state
        );
    }
    let (old_host, new_host) = hosts(&plan, &st);
    if let Some(d) = &st.direction {
        println!("direction: {old_host} -> {new_host}");
        if *d != crate::cutover::direction::of(&plan) {
            println!(
                "  (this plan moves {} — the journal's cutover went the other way; the lines here are about that move)",
                crate::cutover::direction::of(&plan)
            );
        }
    }
    match &snapshots {
        Ok(list) if list.is_empty() => println!("open snapshots on the old host: none"),
        Ok(list) => {
            println!("open snapshots on the old host (each holds back VACUUM there):");
            for s in list {
                println!("  {s}");
            }
        }
        Err(e) => println!("open snapshots on the old host: unknown ({e})"),
    }
    if st.frozen {
        println!(
            "frozen: {old_host} (this move's old host) by {}",
            st.frozen_methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !st.steps.is_empty() {
        let rows: Vec<Vec<String>> = st
            .steps
            .iter()
            .map(|e| {
                vec![
                    crate::report::utc(e.time_ms),
                    e.phase.clone(),
                    e.unit.clone(),
                    e.status.clone(),
                    // A failure's message is what the operator acts on: never cut it.
                    if matches!(e.status.as_str(), "done" | "started" | "skipped") {
                        e.detail.chars().take(80).collect()
                    } else {
                        e.detail.clone()
                    },
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table(&["TIME", "PHASE", "STEP", "STATUS", "DETAIL"], &rows)
        );
    }
    Ok(())
}

/// How status names this journal's old and new host: the agent names its cutover recorded (the
/// plan may list them the other way round), with the plan's address for each.
fn hosts(plan: &crate::plan::Plan, st: &state::State) -> (String, String) {
    let name = |agent: &str| {
        let addr = [&plan.old, &plan.new]
            .into_iter()
            .find(|h| h.agent == agent)
            .map(|h| format!(" at {}", h.address))
            .unwrap_or_default();
        format!("agent {agent:?}{addr}")
    };
    match st.direction.as_deref().and_then(|d| d.split_once(" -> ")) {
        Some((o, n)) => (name(o), name(n)),
        None => (name(&plan.old.agent), name(&plan.new.agent)),
    }
}

fn print(g: &Global, r: &CutoverReport, plan_arg: &str) {
    if g.json {
        print_json(r);
        return;
    }
    if !r.gates.is_empty() {
        let rows: Vec<Vec<String>> = r
            .gates
            .iter()
            .map(|x| {
                vec![
                    x.name.clone(),
                    if x.ok { "pass" } else { "FAIL" }.into(),
                    x.detail.clone(),
                ]
            })
            .collect();
        println!("Gates:");
        print!("{}", table(&["GATE", "RESULT", "DETAIL"], &rows));
    }
    if !r.steps.is_empty() {
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.status.clone(),
                    format!("{:.1} s", s.ms as f64 / 1000.0),
                    // A failure's message is what the operator acts on: never cut it.
                    if s.status == "done" || s.status == "skipped" {
                        s.detail.chars().take(100).collect()
                    } else {
                        s.detail.clone()
                    },
                ]
            })
            .collect();
        println!("\nSteps:");
        print!("{}", table(&["STEP", "RESULT", "TIME", "DETAIL"], &rows));
    }
    println!();
    if let Some(ms) = r.freeze_ms {
        println!(
            "Write freeze: {:.2} s (predicted {})",
            ms as f64 / 1000.0,
            r.predicted_freeze_ms
                .map_or_else(|| "-".into(), |p| format!("{:.1} s", p as f64 / 1000.0))
        );
    }
    match r.outcome {
        Outcome::Switched => println!(
            "Cutover done: traffic is on the new host. The old host stays frozen. To undo: hostshift rollback --plan {plan_arg}"
        ),
        Outcome::DryRun => println!("Dry run: every gate passes; nothing was touched."),
        Outcome::GatesFailed => println!("Gates failed: nothing was touched."),
        Outcome::RolledBack
            if r.steps.iter().any(|s| s.name == "rollback") || r.error.is_none() =>
        {
            println!("Rolled back: the old host serves again.");
        }
        Outcome::RolledBack => println!(
            "Cutover failed and was undone: the old host serves again.\nCause: {}",
            r.error.as_deref().unwrap_or("?")
        ),
        Outcome::UndoFailed => {
            println!(
                "ACTION NEEDED: the undo failed.\nCause: {}",
                r.error.as_deref().unwrap_or("?")
            );
            for i in &r.undo_instructions {
                println!("  {i}");
            }
        }
        Outcome::Unproven => {
            println!(
                "ACTION NEEDED: the proof after the switch cannot run.\n{}",
                r.error.as_deref().unwrap_or("?")
            );
            for i in &r.undo_instructions {
                println!("  {i}");
            }
        }
        Outcome::JournalFailed => {
            println!(
                "ACTION NEEDED: the journal cannot be written, so hostshift stopped.\n{}",
                r.error.as_deref().unwrap_or("?")
            );
            for i in &r.undo_instructions {
                println!("  {i}");
            }
        }
    }
    if !r.carried_back.is_empty() {
        println!(
            "\nCARRIED BACK FROM THE NEW HOST INSIDE THE ROLLBACK'S FREEZE ({}):",
            r.carried_back.len()
        );
        for w in &r.carried_back {
            println!("  {w}");
        }
    }
    if !r.not_carried_back.is_empty() {
        println!(
            "\nFILES AND STORAGE OF THE NEW HOST NOT CARRIED BACK BY THE ROLLBACK WINDOW ({}):",
            r.not_carried_back.len()
        );
        for w in &r.not_carried_back {
            println!("  {w}");
        }
        println!(
            "Copy what you need from the new host (it keeps them) to the old one before `hostshift finish`; see docs/troubleshooting.md."
        );
    }
    if !r.new_host_writes.is_empty() {
        println!(
            "\nWRITES ON THE NEW HOST SINCE THE SWITCH, NOT COPIED BACK ({} table(s)):",
            r.new_host_writes.len()
        );
        for w in &r.new_host_writes {
            println!("  {w}");
        }
        println!(
            "Copy what you need from the new host to the old one now. `hostshift sync` refuses to overwrite these until you run it with --discard-new-host-writes."
        );
    }
}

fn exit(r: &CutoverReport) -> CliResult {
    match r.outcome {
        Outcome::RolledBack if r.ok && !r.not_carried_back.is_empty() => {
            Err(CliError::OperatorAction(anyhow::anyhow!(
                "rolled back, but {} item(s) of the new host were NOT carried back: {}; copy them from the new host (it keeps them) to the old one",
                r.not_carried_back.len(),
                r.not_carried_back.join("; ")
            )))
        }
        Outcome::Switched | Outcome::DryRun if r.ok => Ok(()),
        Outcome::RolledBack if r.ok => Ok(()),
        Outcome::UndoFailed => Err(CliError::OperatorAction(anyhow::anyhow!(
            "the undo failed: {}",
            r.undo_instructions.join(" ")
        ))),
        Outcome::Unproven => Err(CliError::OperatorAction(anyhow::anyhow!(
            "{}",
            r.error
                .as_deref()
                .unwrap_or("the proof after the switch cannot run")
        ))),
        Outcome::JournalFailed => Err(CliError::OperatorAction(anyhow::anyhow!(
            "{} {}",
            r.error
                .as_deref()
                .unwrap_or("the journal cannot be written"),
            r.undo_instructions.join(" ")
        ))),
        _ => Err(failed(anyhow::anyhow!(
            "{}; the old host serves as before",
            r.error.as_deref().unwrap_or("the cutover did not finish")
        ))),
    }
}
