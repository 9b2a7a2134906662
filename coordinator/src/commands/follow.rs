//! `hostshift follow start|status|stop|cleanup`: keep the new host's databases current by
//! logical decoding between syncs and the cutover (docs/sync.md, "Following").

use clap::{Args, Subcommand};

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::error::{CliError, CliResult, failed, usage};
use crate::follow::{self, FollowError};
use crate::output::{bytes, print_json, table};
use crate::progress;
use crate::sync::SyncOptions;

/// Follow flags.
#[derive(Args)]
#[command(after_help = "\
start: creates a logical replication slot and publication hostshift_<migration> in each of the
plan's databases on the old host (its agent needs [allow] follow_databases, its PostgreSQL
wal_level = logical), syncs the databases, then starts the new host's follower, which applies
every change committed on the old host exactly once and resumes by itself after a restart.
status: state, applied position, lag (bytes and seconds) and the WAL the slot keeps.
stop: stops the followers (the slot stays and keeps WAL; start resumes).
cleanup: stops and forgets the followers, drops the slot and the publication.

Exit codes: 0 done; 1 failed (the message says where; the old host keeps the slot until
cleanup); 2 usage or plan error, a name an agent does not declare, or not confirmed; 3 status
found a follower stopped by an error (a schema change on the old host, a divergence).")]
pub struct FollowCmd {
    #[command(flatten)]
    plan: PlanArg,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create the slot and publication on the old host, sync, and start following.
    Start,
    /// Where each database's follower stands.
    Status,
    /// Stop the followers (the slot stays).
    Stop,
    /// Stop and forget the followers; drop the slot and publication on the old host.
    Cleanup,
}

fn cli_error(e: FollowError) -> CliError {
    match &e {
        FollowError::Agent {
            code: tonic::Code::InvalidArgument,
            ..
        } => usage(e),
        _ => failed(e),
    }
}

/// Runs `hostshift follow`.
///
/// # Errors
/// See the exit codes in the help.
pub async fn run(g: &Global, c: FollowCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    if plan.databases.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "the plan has no [[databases]]: nothing to follow"
        )));
    }
    match c.action {
        Action::Start => {
            let _lock = crate::lock::acquire(&plan, "follow start")?;
            let opts = SyncOptions {
                progress: if g.quiet {
                    progress::Mode::Quiet
                } else if g.json {
                    progress::Mode::Json
                } else {
                    progress::Mode::Human
                },
                ..SyncOptions::default()
            };
            let started = follow::start(&plan, opts).await.map_err(cli_error)?;
            if g.json {
                print_json(&serde_json::json!({"ok": true, "databases": started}));
            } else {
                for s in &started {
                    println!(
                        "database {}: following (slot {}{})",
                        s.database,
                        s.slot,
                        if s.created { ", created" } else { ", resumed" }
                    );
                    for t in &s.not_followed {
                        println!(
                            "  not followed: {t} (no primary key or replica identity): copied whole in the freeze"
                        );
                    }
                }
                println!(
                    "Next: hostshift follow status --plan {}",
                    plan.path.display()
                );
            }
            Ok(())
        }
        Action::Status => {
            let rows = follow::status(&plan).await.map_err(cli_error)?;
            let broken: Vec<&follow::DbStatus> =
                rows.iter().filter(|r| r.state == "failed").collect();
            if g.json {
                print_json(&serde_json::json!({"ok": broken.is_empty(), "databases": rows}));
            } else {
                let t: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.database.clone(),
                            r.state.clone(),
                            r.applied_lsn.clone(),
                            format!("{} / {:.1} s", bytes(r.lag_bytes), r.lag_seconds),
                            format!(
                                "{}{}",
                                if r.slot {
                                    bytes(r.retained_bytes)
                                } else {
                                    "no slot".into()
                                },
                                if r.retained_warning { " (WARNING)" } else { "" }
                            ),
                            r.not_followed.len().to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "DATABASE",
                            "STATE",
                            "APPLIED",
                            "LAG",
                            "WAL RETAINED",
                            "NOT FOLLOWED"
                        ],
                        &t
                    )
                );
                for r in &rows {
                    for (i, n) in r.not_followed.iter().enumerate() {
                        let size = r
                            .not_followed_bytes
                            .get(i)
                            .filter(|b| **b > 0)
                            .map_or_else(String::new, |b| format!(" ({})", bytes(*b)));
                        println!(
                            "  {}: not followed: {n}{size}: copied whole in the freeze (no replica identity; to follow it, give it a primary key, or list the database in the old agent's [allow] replica_identity_full)",
                            r.database
                        );
                    }
                    if !r.error.is_empty() {
                        println!("  {}: {}", r.database, r.error);
                    }
                    if r.retained_warning {
                        println!(
                            "  {}: the slot keeps {} of WAL on the old host: finish the cutover or run `hostshift follow cleanup` before its disk fills",
                            r.database,
                            bytes(r.retained_bytes)
                        );
                    }
                }
            }
            if broken.is_empty() {
                Ok(())
            } else {
                Err(CliError::OperatorAction(anyhow::anyhow!(
                    "the follower of {} stopped: {}",
                    broken
                        .iter()
                        .map(|r| r.database.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    broken
                        .iter()
                        .map(|r| r.error.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )))
            }
        }
        Action::Stop => {
            follow::stop(&plan).await.map_err(cli_error)?;
            if g.json {
                print_json(&serde_json::json!({"ok": true}));
            } else {
                println!(
                    "followers stopped; the slot keeps WAL on the old host until `hostshift follow start` resumes or `hostshift follow cleanup` drops it"
                );
            }
            Ok(())
        }
        Action::Cleanup => {
            confirm(
                g,
                "Stop following and drop the replication slot and publication on the old host?",
            )?;
            let done = follow::cleanup(&plan).await.map_err(cli_error)?;
            if g.json {
                print_json(&serde_json::json!({"ok": true, "databases": done}));
            } else {
                for d in &done {
                    println!(
                        "database {}: follower forgotten; slot {}, publication {}",
                        d.database,
                        if d.dropped_slot {
                            "dropped"
                        } else {
                            "already gone"
                        },
                        if d.dropped_publication {
                            "dropped"
                        } else {
                            "already gone"
                        }
                    );
                }
            }
            Ok(())
        }
    }
}
