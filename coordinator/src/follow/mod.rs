//! `hostshift follow`: keep the new host's databases current by logical decoding (the agent's
//! `service Follow`, see the agent's `follow` module for the protocol and why).
//!
//! - [`start`]: on the old host create the slot and publication `hostshift_<id>` (and a follow
//!   grant for the new agent), run a database sync — its snapshot, taken after the slot exists,
//!   becomes the anchor — then start the new host's follower from that anchor.
//! - [`status`]: per database the follower's state, position, lag and the WAL the slot retains.
//! - [`stop`]: stop the followers (the slot stays; `start` resumes).
//! - [`cleanup`]: stop, forget the followers and their replication origins, drop slot,
//!   publication and grant: nothing of hostshift stays in the old database's catalog.
//! - For the cutover: [`old_position`] and [`wait_applied`].
//! - [`check`]: the `hostshift check` rows (wal_level, WAL retained by the slot).

pub mod check;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostshift_proto::v1::{
    AnchorRequest, DbSelection, DropFollowRequest, FollowStatusRequest, ForgetFollowRequest,
    PrepareFollowRequest, SourceStatusRequest, StartFollowRequest, StopFollowRequest,
};
use serde::Serialize;

use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan, PlanDatabase, Side};
use crate::sync::{self, Only, SyncOptions};

/// WAL retained by a slot above which `status` and `check` warn (the old host's disk fills).
pub const RETAINED_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// Why a follow command failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// An agent could not be reached.
    #[error("{0}")]
    Connect(String),
    /// An agent refused or failed; the status says why.
    #[error("{what}: {message}")]
    Agent {
        /// What was being done.
        what: String,
        /// The agent's explanation.
        message: String,
        /// The gRPC code (for the exit code).
        code: tonic::Code,
    },
    /// The sync that anchors the follow failed.
    #[error(
        "the first sync of the follow failed ({0}); the slot is kept: run `hostshift follow start` again, or `hostshift follow cleanup` to drop it"
    )]
    Sync(String),
    /// `wait_applied` ran out of time or the follower stopped.
    #[error("{0}")]
    NotApplied(String),
}

fn agent_err(what: String) -> impl FnOnce(tonic::Status) -> FollowError {
    move |s| FollowError::Agent {
        what,
        message: client::explain_status(&s),
        code: s.code(),
    }
}

/// The short migration id naming the slot, publication and origin (`hostshift_<id>`): the
/// plan's migration name in lowercase letters, digits and `_`, at most 40 characters.
pub fn follow_id(plan: &Plan) -> String {
    let mut id: String = plan
        .migration
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if id.is_empty() {
        id.push_str("migration");
    }
    id
}

async fn connect(plan: &Plan, side: Side) -> Result<Agent, FollowError> {
    client::connect(plan, side)
        .await
        .map_err(|e| FollowError::Connect(e.to_string()))
}

/// What `start` did for one database.
#[derive(Clone, Debug, Serialize)]
pub struct Started {
    /// The plan's database.
    pub database: String,
    /// Slot (and publication) name.
    pub slot: String,
    /// False when the slot existed already (a restart of the follow).
    pub created: bool,
    /// Tables left out (no replica identity): copied whole in the freeze.
    pub not_followed: Vec<String>,
}

/// Before anything is created: the new host's role must be able to apply changes (a superuser,
/// or the grants an RDS master has); the agent reports each missing `GRANT`.
async fn refuse_without_apply_rights(plan: &Plan, new: &Agent) -> Result<(), FollowError> {
    let info = new
        .info()
        .info(client::request(hostshift_proto::v1::InfoRequest {
            brief: false,
        }))
        .await
        .map_err(agent_err("reading the new host's databases".into()))?
        .into_inner();
    for d in &plan.databases {
        if let Some(x) = info
            .databases
            .iter()
            .find(|x| x.name == d.on_new() && !x.follow_missing.is_empty())
        {
            return Err(FollowError::Agent {
                what: format!("database {} on the new host", d.on_new()),
                message: format!(
                    "following applies changes with a replication origin and session_replication_role = replica, which the conninfo's role may not; nothing was created: as a superuser connected to that database (a function's rights are per database) run `{}` (on RDS the master has these through rds_superuser; see docs/rds.md), or connect as a superuser",
                    x.follow_missing.join(" ")
                ),
                code: tonic::Code::FailedPrecondition,
            });
        }
    }
    Ok(())
}

/// Prepares the old host, runs the anchoring sync and starts the followers.
///
/// # Errors
/// [`FollowError`] naming the database and step; the old host keeps the slot on failure (a
/// second `start` continues, `cleanup` drops it).
pub async fn start(plan: &Plan, sync_opts: SyncOptions) -> Result<Vec<Started>, FollowError> {
    let id = follow_id(plan);
    let (old, new) = tokio::join!(connect(plan, Side::Old), connect(plan, Side::New));
    let (old, new) = (old?, new?);
    refuse_without_apply_rights(plan, &new).await?;
    // A running follower would fight the sync: stop them first (their position is kept).
    for d in &plan.databases {
        stop_one(&new, d).await?;
    }
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    for d in &plan.databases {
        let r = old
            .follow()
            .prepare(client::request(PrepareFollowRequest {
                selection: Some(DbSelection {
                    database: d.name.clone(),
                    include: d.include.clone(),
                    exclude: d.exclude.clone(),
                }),
                id: id.clone(),
                peer: plan.new.agent.clone(),
                anchor_now: false,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: preparing the old host",
                d.name
            )))?
            .into_inner();
        tokens.push(r.token.clone());
        out.push(Started {
            database: d.name.clone(),
            slot: r.slot,
            created: r.created,
            not_followed: r.not_followed,
        });
    }
    let opts = SyncOptions {
        only: Some(Only::Db),
        following: true,
        ..sync_opts
    };
    let report = sync::run(plan, &opts)
        .await
        .map_err(|e| FollowError::Sync(e.to_string()))?;
    if !report.ok {
        let failed: Vec<String> = report
            .units
            .iter()
            .filter(|u| u.status == "failed")
            .map(|u| format!("{} {}: {}", u.kind, u.name, u.detail))
            .collect();
        return Err(FollowError::Sync(failed.join("; ")));
    }
    for ((d, token), s) in plan.databases.iter().zip(tokens).zip(&out) {
        let anchor = old
            .follow()
            .anchor(client::request(AnchorRequest {
                database: d.name.clone(),
                now: false,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: reading the anchor",
                d.name
            )))?
            .into_inner()
            .pg_snapshot;
        if anchor.is_empty() {
            return Err(FollowError::Sync(format!(
                "database {}: the old agent recorded no snapshot of the sync",
                d.name
            )));
        }
        new.follow()
            .start(client::request(StartFollowRequest {
                database: d.on_new().to_string(),
                source_database: d.name.clone(),
                source_address: plan.old.address.clone(),
                source_tls_name: plan.old.server_name(),
                token,
                id: id.clone(),
                pg_snapshot: anchor,
                not_followed: s.not_followed.clone(),
                rollback_window: false,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: starting the follower on the new host",
                d.name
            )))?;
    }
    Ok(out)
}

/// One database's follow, as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DbStatus {
    /// The plan's database.
    pub database: String,
    /// `following`, `stopped`, `failed`, or `not following`.
    pub state: String,
    /// The follower's applied position (`X/Y`).
    pub applied_lsn: String,
    /// The old host's current WAL position.
    pub current_lsn: String,
    /// WAL between the follower's position and the old host's current one.
    pub lag_bytes: u64,
    /// Seconds since the follower was last current (a peek found nothing pending), or since the
    /// commit of the last transaction it applied, whichever is later.
    pub lag_seconds: f64,
    /// WAL the slot keeps on the old host.
    pub retained_bytes: u64,
    /// `retained_bytes` above [`RETAINED_WARN_BYTES`].
    pub retained_warning: bool,
    /// The slot exists on the old host.
    pub slot: bool,
    /// The publication exists on the old host.
    pub publication: bool,
    /// Tables not followed (no replica identity): copied whole in the freeze.
    pub not_followed: Vec<String>,
    /// Their sizes on the old host (`pg_total_relation_size`, same order; 0: unknown): what the
    /// freeze copies whole.
    pub not_followed_bytes: Vec<u64>,
    /// The old host's `wal_level`.
    pub wal_level: String,
    /// Why the follower stopped (or the last retried error).
    pub error: String,
    /// Transactions applied since the new agent started.
    pub transactions: u64,
    /// Internal: positions as numbers.
    #[serde(skip)]
    pub reached: u64,
    /// Internal.
    #[serde(skip)]
    pub current: u64,
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn status_one(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    d: &PlanDatabase,
) -> Result<DbStatus, FollowError> {
    let id = follow_id(plan);
    let (mut fo, mut fnew) = (old.follow(), new.follow());
    let (src, dst) = tokio::join!(
        fo.source_status(client::request(SourceStatusRequest {
            database: d.name.clone(),
            id,
            flush: false,
        })),
        fnew.status(client::request(FollowStatusRequest {
            database: d.on_new().to_string(),
            wake: false,
        }))
    );
    let src = src
        .map_err(agent_err(format!("database {}: the old host", d.name)))?
        .into_inner();
    let dst = dst
        .map_err(agent_err(format!("database {}: the new host", d.name)))?
        .into_inner();
    let reached = dst.applied_lsn.max(dst.reached_lsn);
    let lag_bytes = if dst.configured {
        src.current_lsn.saturating_sub(reached)
    } else {
        0
    };
    let since = dst.reached_unix_ms.max(dst.last_commit_unix_ms);
    let lag_seconds = if dst.configured && since > 0 {
        (now_ms() - since).max(0) as f64 / 1000.0
    } else {
        0.0
    };
    let mut not_followed = dst.not_followed;
    if not_followed.is_empty() {
        not_followed = src.not_followed;
    }
    let not_followed_bytes = if not_followed.is_empty() {
        Vec::new()
    } else {
        sizes(old, &d.name, &not_followed).await
    };
    Ok(DbStatus {
        database: d.name.clone(),
        state: if dst.configured {
            dst.state
        } else {
            "not following".into()
        },
        applied_lsn: lsn(dst.applied_lsn),
        current_lsn: lsn(src.current_lsn),
        lag_bytes,
        lag_seconds,
        retained_bytes: src.retained_bytes,
        retained_warning: src.retained_bytes > RETAINED_WARN_BYTES,
        slot: src.slot_exists,
        publication: src.publication_exists,
        not_followed,
        not_followed_bytes,
        wal_level: src.wal_level,
        error: dst.error,
        transactions: dst.transactions,
        reached,
        current: src.current_lsn,
    })
}

/// The sizes of `tables` (`schema.table`) in the old host's `database` (0 where unknown: the
/// statistics are a courtesy, their failure is not the status's).
async fn sizes(old: &Agent, database: &str, tables: &[String]) -> Vec<u64> {
    let stats = old
        .db_stats()
        .stats(client::request(hostshift_proto::v1::DbStatsRequest {
            database: database.to_string(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .ok();
    tables
        .iter()
        .map(|t| {
            stats
                .as_ref()
                .and_then(|s| {
                    s.tables
                        .iter()
                        .find(|x| format!("{}.{}", x.schema, x.table) == *t)
                })
                .map_or(0, |x| x.total_bytes)
        })
        .collect()
}

/// The follow of every database of the plan.
///
/// # Errors
/// [`FollowError`] when an agent cannot be reached or fails.
pub async fn status(plan: &Plan) -> Result<Vec<DbStatus>, FollowError> {
    let (old, new) = tokio::join!(connect(plan, Side::Old), connect(plan, Side::New));
    let (old, new) = (old?, new?);
    let mut out = Vec::new();
    for d in &plan.databases {
        out.push(status_one(plan, &old, &new, d).await?);
    }
    Ok(out)
}

async fn stop_one(new: &Agent, d: &PlanDatabase) -> Result<(), FollowError> {
    match new
        .follow()
        .stop(client::request(StopFollowRequest {
            database: d.on_new().to_string(),
            sequences: vec![],
        }))
        .await
    {
        Ok(_) => Ok(()),
        // An agent without `service Follow` follows nothing.
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Err(s) => Err(agent_err(format!(
            "database {}: stopping the follower",
            d.name
        ))(s)),
    }
}

/// Stops the followers; slots and positions stay.
///
/// # Errors
/// [`FollowError`] when the new agent cannot be reached or fails.
pub async fn stop(plan: &Plan) -> Result<(), FollowError> {
    let new = connect(plan, Side::New).await?;
    for d in &plan.databases {
        stop_one(&new, d).await?;
    }
    Ok(())
}

/// What `cleanup` removed for one database.
#[derive(Clone, Debug, Serialize)]
pub struct Cleaned {
    /// The plan's database.
    pub database: String,
    /// The slot was dropped (false: there was none).
    pub dropped_slot: bool,
    /// The publication was dropped.
    pub dropped_publication: bool,
}

/// Stops and forgets the followers (and their origins), then drops the old host's slot,
/// publication and follow grant. Idempotent.
///
/// # Errors
/// [`FollowError`] when an agent cannot be reached or fails.
pub async fn cleanup(plan: &Plan) -> Result<Vec<Cleaned>, FollowError> {
    let id = follow_id(plan);
    let (old, new) = tokio::join!(connect(plan, Side::Old), connect(plan, Side::New));
    let (old, new) = (old?, new?);
    let mut out = Vec::new();
    for d in &plan.databases {
        new.follow()
            .forget(client::request(ForgetFollowRequest {
                database: d.on_new().to_string(),
                id: id.clone(),
                restore_identities: Vec::new(),
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: forgetting the follower",
                d.name
            )))?;
        let r = old
            .follow()
            .drop(client::request(DropFollowRequest {
                database: d.name.clone(),
                id: id.clone(),
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: dropping the slot and publication",
                d.name
            )))?
            .into_inner();
        // The first copy carried the REPLICA IDENTITY FULL set for following to the new host:
        // the same originals go back there.
        if !r.restored_identities.is_empty() {
            new.follow()
                .forget(client::request(ForgetFollowRequest {
                    database: d.on_new().to_string(),
                    id: id.clone(),
                    restore_identities: r.restored_identities.clone(),
                }))
                .await
                .map_err(agent_err(format!(
                    "database {}: putting the replica identities back on the new host",
                    d.name
                )))?;
        }
        out.push(Cleaned {
            database: d.name.clone(),
            dropped_slot: r.dropped_slot,
            dropped_publication: r.dropped_publication,
        });
    }
    Ok(out)
}

/// The databases of the plan whose follower runs on the new host (sync refuses them).
///
/// # Errors
/// [`FollowError::Agent`] when the new agent fails to answer.
pub async fn following(plan: &Plan, new: &Agent) -> Result<Vec<String>, FollowError> {
    Ok(following_with_tables(plan, new)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The databases of the plan whose follower runs on the new host, each with the tables the
/// follower does not carry (`schema.table`, no replica identity): what the cutover's freeze
/// still copies with the key-range delta.
///
/// # Errors
/// [`FollowError::Agent`] when the new agent fails to answer.
pub async fn following_with_tables(
    plan: &Plan,
    new: &Agent,
) -> Result<Vec<(String, Vec<String>)>, FollowError> {
    let mut out = Vec::new();
    for d in &plan.databases {
        match new
            .follow()
            .status(client::request(FollowStatusRequest {
                database: d.on_new().to_string(),
                wake: false,
            }))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                if r.configured && r.state == "following" {
                    out.push((d.name.clone(), r.not_followed));
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {}
            Err(s) => {
                return Err(agent_err(format!(
                    "database {}: the follower's status",
                    d.name
                ))(s));
            }
        }
    }
    Ok(out)
}

/// The old host's position for `database` that every transaction committed so far lies before,
/// flushed (the old agent commits an empty transaction synchronously first): after the freeze,
/// every acknowledged change is before it, even under `synchronous_commit = off`.
///
/// # Errors
/// [`FollowError`] when the old agent fails.
pub async fn old_position(plan: &Plan, old: &Agent, database: &str) -> Result<u64, FollowError> {
    let r = old
        .follow()
        .source_status(client::request(SourceStatusRequest {
            database: database.to_string(),
            id: follow_id(plan),
            flush: true,
        }))
        .await
        .map_err(agent_err(format!(
            "database {database}: the old host's position"
        )))?
        .into_inner();
    Ok(r.current_lsn)
}

/// Waits until the follower of `database` (the plan's name) applied everything committed on
/// the old host before `lsn` — no committed change pending — or `timeout`. It looks every 10 ms
/// (a status call on the new agent): inside the write freeze, every look saved counts.
///
/// # Errors
/// [`FollowError::NotApplied`] when the follower failed, is not running, or did not get there
/// in time (naming where it is).
pub async fn wait_applied(
    new: &Agent,
    database_on_new: &str,
    lsn: u64,
    timeout: Duration,
) -> Result<(), FollowError> {
    let deadline = Instant::now() + timeout;
    // The first call wakes a follower pausing after an empty peek: the caller's barrier is
    // written, so its next peek reaches `lsn`.
    let mut wake = true;
    loop {
        let r = new
            .follow()
            .status(client::request(FollowStatusRequest {
                database: database_on_new.to_string(),
                wake: std::mem::take(&mut wake),
            }))
            .await
            .map_err(agent_err(format!(
                "database {database_on_new}: the follower's position"
            )))?
            .into_inner();
        if !r.configured || r.state != "following" {
            return Err(FollowError::NotApplied(format!(
                "database {database_on_new}: the follower is {}{}",
                if r.configured { &r.state } else { "not set up" },
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.error)
                }
            )));
        }
        let at = r.applied_lsn.max(r.reached_lsn);
        if at >= lsn {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FollowError::NotApplied(format!(
                "database {database_on_new}: the follower reached {} but not {} within {:?}",
                lsn_text(at),
                lsn_text(lsn),
                timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An LSN as PostgreSQL writes it.
pub fn lsn_text(v: u64) -> String {
    lsn(v)
}
