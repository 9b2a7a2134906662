//! `hostshift db stats --host old|new [--database NAME]`: read-only statistics of a host's
//! databases — size, per-table sizes and row estimates, sessions by state, cache hit ratio.

use clap::{Args, Subcommand};
use hostshift_proto::v1::{DbStatsRequest, DbStatsResponse};
use serde_json::json;

use crate::cli::{Global, PlanArg};
use crate::client;
use crate::error::{CliResult, failed, usage};
use crate::output::{bytes, print_json, table};
use crate::plan::Side;

/// Databases on one host.
#[derive(Args)]
pub struct DbCmd {
    #[command(subcommand)]
    cmd: DbSub,
    #[command(flatten)]
    plan: PlanArg,
    /// Which host's agent (required).
    #[arg(long, value_enum, global = true)]
    host: Option<Side>,
}

#[derive(Subcommand)]
enum DbSub {
    /// Size, per-table sizes (total, table, indexes) and row estimates, sessions by state and
    /// the cache hit ratio, read in a READ ONLY transaction. Changes nothing.
    #[command(after_help = "\
Examples:
  hostshift db stats --host old
  hostshift db stats --host new --database app --json

EST. ROWS is the planner's estimate (pg_class.reltuples; -1 = never analyzed); LIVE and DEAD
come from pg_stat_user_tables. The cache hit ratio is blks_hit / (blks_hit + blks_read) of
pg_stat_database since the statistics were last reset.")]
    Stats {
        /// A database by its name in the plan and the agent's config; default: every
        /// `[[databases]]` of the plan.
        #[arg(long)]
        database: Option<String>,
    },
}

fn stats_json(s: &DbStatsResponse) -> serde_json::Value {
    json!({
        "database": s.database,
        "server_database": s.server_database,
        "server_version": s.server_version,
        "size_bytes": s.size_bytes,
        "cache_hit_ratio": s.cache_hit_ratio,
        "blks_hit": s.blks_hit,
        "blks_read": s.blks_read,
        "max_connections": s.max_connections,
        "connections": s.connections.iter().map(|c| json!({"state": state_word(&c.state), "count": c.count})).collect::<Vec<_>>(),
        "tables": s.tables.iter().map(|t| json!({
            "schema": t.schema,
            "table": t.table,
            "total_bytes": t.total_bytes,
            "table_bytes": t.table_bytes,
            "index_bytes": t.index_bytes,
            "row_estimate": t.row_estimate,
            "live_rows": t.live_rows,
            "dead_rows": t.dead_rows,
        })).collect::<Vec<_>>(),
    })
}

fn state_word(s: &str) -> &str {
    if s.is_empty() { "(no state)" } else { s }
}

fn print_stats(side: Side, s: &DbStatsResponse) {
    println!(
        "Database {} on the {side} host ({} on PostgreSQL {}): {}",
        s.database,
        s.server_database,
        s.server_version,
        bytes(s.size_bytes)
    );
    match s.cache_hit_ratio {
        Some(r) => println!(
            "  cache hit ratio: {:.2} % (blks_hit {}, blks_read {})",
            r * 100.0,
            s.blks_hit,
            s.blks_read
        ),
        None => println!(
            "  cache hit ratio: unknown (no block touched since the statistics were reset)"
        ),
    }
    let total: u64 = s.connections.iter().map(|c| c.count).sum();
    let by_state: Vec<String> = s
        .connections
        .iter()
        .map(|c| format!("{} {}", state_word(&c.state), c.count))
        .collect();
    println!(
        "  sessions: {total} of max_connections {}{}",
        s.max_connections,
        if by_state.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_state.join(", "))
        }
    );
    println!();
    let rows: Vec<Vec<String>> = s
        .tables
        .iter()
        .map(|t| {
            vec![
                format!("{}.{}", t.schema, t.table),
                bytes(t.total_bytes),
                bytes(t.table_bytes),
                bytes(t.index_bytes),
                format!("{:.0}", t.row_estimate),
                t.live_rows.to_string(),
                t.dead_rows.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "TABLE",
                "TOTAL",
                "TABLE",
                "INDEXES",
                "EST. ROWS",
                "LIVE",
                "DEAD"
            ],
            &rows
        )
    );
}

/// Runs `db ...`.
///
/// # Errors
/// Usage errors (no `--host`, no database to show); failure (exit 1) with the agent's reason: an
/// unreachable agent or database, a database the agent's config does not declare.
pub async fn run(g: &Global, c: DbCmd) -> CliResult {
    let side = c
        .host
        .ok_or_else(|| usage(anyhow::anyhow!("say which host: --host old or --host new")))?;
    let plan = super::load_plan(&c.plan.plan)?;
    match c.cmd {
        DbSub::Stats { database } => {
            let names: Vec<String> = match database {
                Some(d) => vec![d],
                None => plan.databases.iter().map(|d| d.name.clone()).collect(),
            };
            if names.is_empty() {
                return Err(usage(anyhow::anyhow!(
                    "the plan has no [[databases]]: name one with --database"
                )));
            }
            let agent = client::connect(&plan, side).await.map_err(failed)?;
            let mut all = Vec::new();
            for name in names {
                let s = agent
                    .db_stats()
                    .stats(client::request(DbStatsRequest {
                        database: name.clone(),
                    }))
                    .await
                    .map_err(|s| {
                        crate::error::from_status(
                            &s,
                            anyhow::anyhow!(
                                "db stats of {name} on the {side} host: {}",
                                client::explain_status(&s)
                            ),
                        )
                    })?
                    .into_inner();
                all.push(s);
            }
            if g.json {
                print_json(&json!({
                    "host": side,
                    "databases": all.iter().map(stats_json).collect::<Vec<_>>(),
                }));
            } else {
                for (i, s) in all.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    print_stats(side, s);
                }
            }
            Ok(())
        }
    }
}
