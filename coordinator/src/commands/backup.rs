//! `hostshift backup [create|list|verify|restore|prune|upload]`: backups made ON a host by its
//! agent. The agent runs `pg_dump`, tar and the uploads itself, so no data crosses this machine;
//! this command only asks, shows progress on stderr and prints the result (a table, or `--json`).
//!
//! Exit codes: 0 done; 1 the operation failed — including a damaged backup found by `verify`
//! (naming the artifact), a restore the host's `[allow]` refuses (naming the key to add), and an
//! upload or retention run that failed after a complete backup; 2 usage (e.g. `restore` without
//! `--host`, or without `--yes` when there is no terminal to confirm on).

use std::time::Duration;

use clap::{Args, Subcommand};
use hostshift_proto::v1::{
    BackupSummary, ListBackupsRequest, PruneBackupsRequest, RestoreBackupRequest,
    UploadBackupRequest, UploadBackupResponse, VerifyBackupRequest,
};
use serde_json::{Value, json};

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::client::{self, Agent};
use crate::error::{CliError, CliResult, failed, usage};
use crate::output::{bytes, print_json, table};
use crate::plan::Side;
use crate::progress::{Mode, Progress};

/// Deadline of a restore (as long as a backup: [`crate::backup::CREATE_DEADLINE`]).
const LONG_RPC: Duration = Duration::from_secs(12 * 3600);
/// Deadline of verify, prune and upload (they re-read every artifact).
const READ_RPC: Duration = Duration::from_secs(6 * 3600);

/// Backups.
#[derive(Args)]
pub struct BackupCmd {
    #[command(subcommand)]
    cmd: Option<BackupSub>,
    #[command(flatten)]
    plan: PlanArg,
    /// Which host's agent. Default: old (restore needs it said explicitly).
    #[arg(long, value_enum, global = true)]
    host: Option<Side>,
    /// With no subcommand: back up everything the agent declares, not just the plan's names.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum BackupSub {
    /// Make a backup of the plan's databases, storage trees and files (the default).
    Create {
        /// Everything the agent's config declares instead of the plan's names.
        #[arg(long)]
        all: bool,
    },
    /// List the host's backups, newest first.
    List,
    /// Re-read every artifact and check its SHA-256; exit 1 naming any damaged artifact.
    Verify {
        /// One backup (default: all of them).
        #[arg(long)]
        id: Option<String>,
    },
    /// Restore a backup of the host's backup folder onto that host, by name, where its config's
    /// [allow] permits (asks first; --yes for scripts).
    Restore {
        /// The backup.
        #[arg(long)]
        id: String,
        /// Only this database (repeatable; default: everything in the backup).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Only this storage tree (repeatable).
        #[arg(long = "storage")]
        storage: Vec<String>,
        /// Only this config file (repeatable).
        #[arg(long = "file")]
        files: Vec<String>,
        /// Databases: leave ownership out (`pg_restore --no-owner`): objects belong to the role
        /// the agent connects as. For a managed database (RDS) whose master is not a superuser.
        #[arg(long)]
        no_owner: bool,
    },
    /// Apply [backup] keep_days / keep_last now (never deletes the newest backup that verifies).
    Prune,
    /// Upload a backup to the host's [backup.s3] bucket.
    Upload {
        /// The backup.
        #[arg(long)]
        id: String,
    },
}

fn rpc_failed(what: &str, side: Side, s: &tonic::Status) -> CliError {
    crate::error::from_status(
        s,
        anyhow::anyhow!("{what} on the {side} host: {}", client::explain_status(s)),
    )
}

fn long<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

/// Runs `backup ...`.
///
/// # Errors
/// Plan errors, an unreachable agent, or a failed operation (see the module doc).
pub async fn run(g: &Global, c: BackupCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let side = match (&c.cmd, c.host) {
        (_, Some(side)) => side,
        (Some(BackupSub::Restore { .. }), None) => {
            return Err(usage(anyhow::anyhow!(
                "restore needs --host new|old: it overwrites that host's databases, trees and files"
            )));
        }
        (_, None) => Side::Old,
    };
    let _lock = match c.cmd {
        Some(BackupSub::Restore { .. }) => Some(crate::lock::acquire(&plan, "backup restore")?),
        _ => None,
    };
    let agent = client::connect(&plan, side).await.map_err(failed)?;
    match c.cmd {
        None => create(g, &agent, &plan, c.all).await,
        Some(BackupSub::Create { all }) => create(g, &agent, &plan, all || c.all).await,
        Some(BackupSub::List) => list(g, &agent).await,
        Some(BackupSub::Verify { id }) => verify(g, &agent, id.unwrap_or_default()).await,
        Some(BackupSub::Restore {
            id,
            databases,
            storage,
            files,
            no_owner,
        }) => {
            let req = RestoreBackupRequest {
                id,
                databases,
                storage,
                files,
                no_owner,
            };
            restore(g, &agent, req).await
        }
        Some(BackupSub::Prune) => prune(g, &agent).await,
        Some(BackupSub::Upload { id }) => {
            let r = agent
                .backup()
                .upload(long(UploadBackupRequest { id: id.clone() }, READ_RPC))
                .await
                .map_err(|s| rpc_failed(&format!("upload of backup {id}"), side, &s))?
                .into_inner();
            if g.json {
                print_json(&json!({"host": side, "id": id, "upload": upload_json(&r)}));
            } else {
                print_upload(&r);
            }
            Ok(())
        }
    }
}

async fn create(g: &Global, agent: &Agent, plan: &crate::plan::Plan, all: bool) -> CliResult {
    let side = agent.side;
    // One unit per artifact: a spinner on a terminal, a summary line when it is written.
    let progress = Progress::new(if g.quiet {
        Mode::Quiet
    } else if g.json {
        Mode::Json
    } else {
        Mode::Human
    });
    progress.say(&format!("backup on the {side} host"));
    let d = crate::backup::take(agent, plan, all, &|p| {
        let unit = format!("{} {}", p.kind, p.name);
        if p.phase == "started" {
            progress.start(&unit, 0);
        } else {
            progress.done(&unit, p.bytes, true, &format!("{} written", bytes(p.bytes)));
        }
    })
    .await
    .map_err(|e| if e.is_refusal() { usage(e) } else { failed(e) })?;
    let b = d.backup.clone().unwrap_or_default();
    if g.json {
        let mut j = summary_json(&b);
        j["host"] = json!(side);
        j["duration_ms"] = json!(d.duration_ms);
        j["pruned"] = json!(d.pruned);
        j["prune_error"] = json!(d.prune_error);
        j["upload"] = d.upload.as_ref().map_or(Value::Null, upload_json);
        j["upload_error"] = json!(d.upload_error);
        print_json(&j);
    } else {
        println!(
            "backup {} on the {side} host ({}): {} in {:.1} s",
            b.id,
            b.path,
            bytes(b.total_bytes),
            d.duration_ms as f64 / 1000.0
        );
        print!("{}", artifacts_table(&b));
        if let Some(u) = &d.upload {
            print_upload(u);
        }
        if !d.pruned.is_empty() {
            println!("pruned: {}", d.pruned.join(", "));
        }
    }
    let mut problems = Vec::new();
    if !d.upload_error.is_empty() {
        problems.push(format!("the upload failed: {}", d.upload_error));
    }
    if !d.prune_error.is_empty() {
        problems.push(format!("the retention run failed: {}", d.prune_error));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "backup {} is complete, but {}",
            b.id,
            problems.join("; ")
        )))
    }
}

async fn list(g: &Global, agent: &Agent) -> CliResult {
    let r = agent
        .backup()
        .list(client::request(ListBackupsRequest {}))
        .await
        .map_err(|s| rpc_failed("listing backups", agent.side, &s))?
        .into_inner();
    if g.json {
        let backups: Vec<Value> = r.backups.iter().map(summary_json).collect();
        print_json(
            &json!({"host": agent.side, "dir": r.dir, "backups": backups, "incomplete": r.incomplete}),
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.created_at.clone(),
                bytes(b.total_bytes),
                b.artifacts.len().to_string(),
                if b.problem.is_empty() {
                    b.state.clone()
                } else {
                    format!("{}: {}", b.state, b.problem)
                },
            ]
        })
        .collect();
    println!("backups in {} on the {} host:", r.dir, agent.side);
    print!(
        "{}",
        table(&["ID", "CREATED", "SIZE", "ARTIFACTS", "STATE"], &rows)
    );
    for s in &r.incomplete {
        println!("in progress or interrupted: {s}");
    }
    Ok(())
}

async fn verify(g: &Global, agent: &Agent, id: String) -> CliResult {
    let r = agent
        .backup()
        .verify(long(VerifyBackupRequest { id }, READ_RPC))
        .await
        .map_err(|s| rpc_failed("verify", agent.side, &s))?
        .into_inner();
    let damaged: Vec<String> = r
        .verdicts
        .iter()
        .flat_map(|v| {
            v.problems
                .iter()
                .map(move |p| format!("backup {}: {}: {}", v.id, p.file, p.problem))
        })
        .collect();
    if g.json {
        let verdicts: Vec<Value> = r
            .verdicts
            .iter()
            .map(|v| {
                let problems: Vec<Value> = v.problems.iter().map(|p| json!({"file": p.file, "problem": p.problem})).collect();
                json!({"id": v.id, "ok": v.ok, "bytes_checked": v.bytes_checked, "problems": problems})
            })
            .collect();
        print_json(&json!({"host": agent.side, "ok": damaged.is_empty(), "verdicts": verdicts}));
    } else if r.verdicts.is_empty() {
        println!("no backups on the {} host", agent.side);
    } else {
        let rows: Vec<Vec<String>> = r
            .verdicts
            .iter()
            .map(|v| {
                vec![
                    v.id.clone(),
                    if v.ok { "ok".into() } else { "DAMAGED".into() },
                    bytes(v.bytes_checked),
                ]
            })
            .collect();
        print!("{}", table(&["ID", "RESULT", "CHECKED"], &rows));
    }
    if damaged.is_empty() {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "damaged artifacts:\n  {}",
            damaged.join("\n  ")
        )))
    }
}

async fn restore(g: &Global, agent: &Agent, req: RestoreBackupRequest) -> CliResult {
    let side = agent.side;
    confirm(
        g,
        &format!(
            "Restore backup {} onto the {side} host, replacing its databases, storage trees and files of the same names?",
            req.id
        ),
    )?;
    let id = req.id.clone();
    let r = agent
        .backup()
        .restore(long(req, LONG_RPC))
        .await
        .map_err(|s| rpc_failed(&format!("restore of backup {id}"), side, &s))?
        .into_inner();
    if g.json {
        let items: Vec<Value> = r
            .restored
            .iter()
            .map(|i| json!({"kind": i.kind, "name": i.name, "detail": i.detail}))
            .collect();
        print_json(
            &json!({"host": side, "id": r.id, "restored": items, "duration_ms": r.duration_ms}),
        );
    } else {
        println!(
            "backup {} restored onto the {side} host in {:.1} s",
            r.id,
            r.duration_ms as f64 / 1000.0
        );
        let rows: Vec<Vec<String>> = r
            .restored
            .iter()
            .map(|i| vec![i.kind.clone(), i.name.clone(), i.detail.clone()])
            .collect();
        print!("{}", table(&["KIND", "NAME", "DONE"], &rows));
    }
    Ok(())
}

async fn prune(g: &Global, agent: &Agent) -> CliResult {
    let r = agent
        .backup()
        .prune(long(PruneBackupsRequest {}, READ_RPC))
        .await
        .map_err(|s| rpc_failed("prune", agent.side, &s))?
        .into_inner();
    if g.json {
        let kept: Vec<Value> = r
            .kept
            .iter()
            .map(|k| json!({"id": k.id, "reasons": k.reasons}))
            .collect();
        print_json(
            &json!({"host": agent.side, "deleted": r.deleted, "kept": kept, "stale_removed": r.stale_removed}),
        );
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = r
        .kept
        .iter()
        .map(|k| vec![k.id.clone(), format!("kept: {}", k.reasons.join(", "))])
        .collect();
    rows.extend(
        r.deleted
            .iter()
            .map(|id| vec![id.clone(), "deleted".into()]),
    );
    print!("{}", table(&["ID", "RESULT"], &rows));
    for s in &r.stale_removed {
        println!("removed the staging folder of an interrupted run: {s}");
    }
    Ok(())
}

/// Asks before a restore, unless `--yes`; without a terminal to ask on, refuses.
fn summary_json(b: &BackupSummary) -> Value {
    let artifacts: Vec<Value> = b
        .artifacts
        .iter()
        .map(|a| json!({"kind": a.kind, "name": a.name, "file": a.file, "size": a.size, "sha256": a.sha256}))
        .collect();
    json!({
        "id": b.id, "path": b.path, "created_at": b.created_at, "hostname": b.hostname,
        "total_bytes": b.total_bytes, "state": b.state, "problem": b.problem, "artifacts": artifacts,
    })
}

fn artifacts_table(b: &BackupSummary) -> String {
    let rows: Vec<Vec<String>> = b
        .artifacts
        .iter()
        .map(|a| {
            vec![
                a.kind.clone(),
                a.name.clone(),
                bytes(a.size),
                a.sha256.chars().take(16).collect(),
                a.file.clone(),
            ]
        })
        .collect();
    table(&["KIND", "NAME", "SIZE", "SHA-256", "FILE"], &rows)
}

fn upload_json(u: &UploadBackupResponse) -> Value {
    let objects: Vec<Value> = u
        .objects
        .iter()
        .map(
            |o| json!({"key": o.key, "size": o.size, "sha256": o.sha256, "multipart": o.multipart}),
        )
        .collect();
    json!({"bucket": u.bucket, "key_prefix": u.key_prefix, "bytes": u.bytes, "objects": objects})
}

fn print_upload(u: &UploadBackupResponse) {
    println!(
        "uploaded {} objects ({}) to s3://{}/{}",
        u.objects.len(),
        bytes(u.bytes),
        u.bucket,
        u.key_prefix
    );
}
