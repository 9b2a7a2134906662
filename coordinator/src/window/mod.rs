//! The rollback window (see `docs/cutover.md`, "The rollback window"): after the switch the old
//! host follows the new one, by the same logical decoding the follow uses in the other
//! direction, so that `hostshift rollback` moves traffic back with every write the new host
//! acknowledged, and `hostshift finish` closes the window.
//!
//! # The order
//! - [`prepare`], inside the cutover's freeze, right **before** traffic moves: on the new host a
//!   slot and publication `hostshift_<id>_rb` (the new agent's `[allow] follow_databases`,
//!   `wal_level = logical` on the new cluster), with its anchor.
//! - [`open`], right **after** the switch: the old agent starts a follower applying the new
//!   host's changes onto the old database. The old host stays frozen for the app (read-only by
//!   default, `CONNECT` revoked from every other role): the follower's session is the agent's
//!   own role and sets `default_transaction_read_only = off` for itself, nothing else is
//!   admitted. Applying writes the old database, so the old agent's config must allow it
//!   (`[allow] restore_databases`).
//! - [`drain`], the rollback's core, with the new host frozen: the new host's flushed position
//!   after a synchronous barrier (the cutover's `pg_logical_emit_message`), the wait until the
//!   old host's follower applied up to it, the follower stopped, sequences copied back.
//! - [`close`]: follower and replication origin removed on the old host, slot and publication
//!   on the new host (after a rollback, or by `finish`).
//!
//! # The anchor rule
//! The anchor is a `pg_current_snapshot()` of the new database taken **before** the slot is
//! created. A transaction it sees is skipped; every transaction committing after the slot's
//! consistent point is applied on the old host. That loses nothing because, at that moment,
//! everything in the new database came from the old host (the follow, the freeze's delta and
//! sequences — all written before the proof), and nothing but hostshift writes to the new host
//! between the proof and the switch (the same rule the rollback's new-host-writes baseline
//! relies on). A transaction committed between the snapshot and the slot's consistent point
//! would be missed; by that rule there is none.
//!
//! # Tables without a key
//! With the database in the **new** agent's `[allow] replica_identity_full`, [`prepare`] makes
//! them `REPLICA IDENTITY FULL` on the new host (originals recorded there, put back when the
//! window closes) and they travel whole: inserts, updates, deletes, one row per change even
//! among identical rows. So do tables the move's follow made FULL (the old agent's allowance:
//! the first copy carried it to the new host; the new agent keeps it until the window closes).
//! Otherwise only their inserts travel (an insert-only publication): [`WindowDb::not_followed`]
//! names them, with [`carry_whole_hint`] in the cutover's `window prepare` step and in
//! `hostshift window`, and a rollback compares them ([`WindowDb::differing`]) and reports those
//! that differ as not carried (the pre-window "at risk" report).
//!
//! # What does not travel back continuously
//! Large objects, DDL and TRUNCATE, storage and config files. A rollback copies sequences;
//! storage trees, config files and large objects the new host changed since the switch are
//! carried back inside the rollback's freeze when the old agent allows it ([`carry`]), else
//! named.
//!
//! # State
//! `<state_dir>/rollback-window.json` ([`Record`]): written before the follower starts, so that
//! `status`, `rollback` and `finish` find the window after a coordinator crash. The follower
//! itself is persisted by the old agent and resumes after its restart; the slot on the new host
//! keeps the WAL meanwhile.

pub mod carry;
pub mod check;
pub mod travel;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostshift_proto::v1::{
    AnchorRequest, DbReadRequest, DbSelection, DropFollowRequest, FollowStatusRequest,
    ForgetFollowRequest, PrepareFollowRequest, SourceStatusRequest, StartFollowRequest,
    StopFollowRequest,
};
use hostshift_shared::model::DatabaseFingerprint;
use serde::{Deserialize, Serialize};

use crate::client::{self, Agent};
use crate::follow::{self, RETAINED_WARN_BYTES};
use crate::plan::{OnNew, Plan, PlanDatabase};

/// `<state_dir>/rollback-window.json`.
pub const FILE: &str = "rollback-window.json";

/// Why a window step failed.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The window cannot be opened here (configuration, `wal_level`): the cutover goes on
    /// without one.
    #[error("{0}")]
    Unavailable(String),
    /// An agent refused or failed.
    #[error("{what}: {message}")]
    Agent {
        /// What was being done.
        what: String,
        /// The agent's explanation.
        message: String,
    },
    /// The old host's follower did not reach the new host's position.
    #[error("{0}")]
    NotApplied(String),
    /// The window's record could not be read or written.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn agent_err(what: String) -> impl FnOnce(tonic::Status) -> WindowError {
    move |s| WindowError::Agent {
        what,
        message: client::explain_status(&s),
    }
}

/// One database of the window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WindowDb {
    /// The plan's (old host's) database.
    pub database: String,
    /// Its name on the new host.
    pub on_new: String,
    /// The follow grant the new agent issued to the old agent.
    pub token: String,
    /// The anchor snapshot (see the module docs).
    pub anchor: String,
    /// Tables without a replica identity on the new host: only their inserts are carried back
    /// (an insert-only publication). Empty when the new agent allows `replica_identity_full`:
    /// they travel whole then.
    pub not_followed: Vec<String>,
    /// Of those, the ones that differed between the hosts when a rollback had caught up (an
    /// update or delete there): not carried back.
    #[serde(default)]
    pub differing: Vec<String>,
}

/// The window's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// The cutover run that opened it.
    pub run: String,
    /// `slot` (slot on the new host, created before the freeze; no anchor yet: the cutover takes
    /// it right before the switch), `prepared` (slot and anchor), `open` (follower started on
    /// the old host),
    /// `drained` (a rollback brought everything back and stopped the follower: a rollback run
    /// again goes on from the switch back), `closed`.
    pub state: String,
    /// When the follower started (unix ms).
    pub opened_unix_ms: i64,
    /// The reverse follow id (`hostshift_<id>` names slot, publication and origin).
    pub id: String,
    /// Per database.
    pub databases: Vec<WindowDb>,
    /// The plan's config files on the new host at the switch: name → SHA-256 (a rollback names
    /// the ones changed since, which the window does not carry back).
    #[serde(default)]
    pub files_at_switch: std::collections::BTreeMap<String, String>,
    /// Set once a rollback's carry-back ran inside its freeze ([`carry`]): what it carried back
    /// into the old host (a rollback resumed after it does not carry again: the old host may
    /// serve by then).
    #[serde(default)]
    pub carried_back: Option<Vec<String>>,
    /// What that carry-back named instead.
    #[serde(default)]
    pub not_carried_back: Vec<String>,
}

impl Record {
    /// Slot or follower may exist: `rollback` drains it, `finish` closes it.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "slot" | "prepared" | "open" | "drained"
        )
    }
}

fn path(plan: &Plan) -> PathBuf {
    plan.state_dir().join(FILE)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The window's record, if a cutover ever prepared one.
///
/// # Errors
/// [`WindowError::State`] when the file exists but cannot be read.
pub fn load(plan: &Plan) -> Result<Option<Record>, WindowError> {
    let p = path(plan);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| WindowError::State {
                path: p,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WindowError::State {
            path: p,
            reason: e.to_string(),
        }),
    }
}

fn save(plan: &Plan, r: &Record) -> Result<(), WindowError> {
    let p = path(plan);
    let err = |reason: String| WindowError::State {
        path: p.clone(),
        reason,
    };
    let tmp = p.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| err(e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &p))
        .map_err(|e| err(e.to_string()))
}

/// What carries `tables` (insert-only, of database `on_new`) back whole: the new agent's
/// config key, which takes effect at a cutover's `window prepare`.
pub fn carry_whole_hint(on_new: &str, tables: &[String]) -> String {
    if tables.is_empty() {
        return String::new();
    }
    format!(
        "database {on_new}: only the inserts of {} travel back (no replica identity on the new host; their updates and deletes do not); to carry them whole, add \"{on_new}\" to [allow] replica_identity_full in the new host's agent config before the cutover (REPLICA IDENTITY FULL there while the window is open), or give them a primary key",
        tables.join(", ")
    )
}

/// The reverse follow's id: the plan's follow id (shortened) and `_rb`, so that its slot,
/// publication and origin never share a name with the forward follow's.
pub fn reverse_id(plan: &Plan) -> String {
    reverse_of(follow::follow_id(plan))
}

/// At most 40 characters, like every follow id (the agent refuses longer ones).
fn reverse_of(mut id: String) -> String {
    id.truncate(37);
    id.push_str("_rb");
    id
}

fn selection(d: &PlanDatabase, name: &str) -> DbSelection {
    DbSelection {
        database: name.to_string(),
        include: d.include.clone(),
        exclude: d.exclude.clone(),
    }
}

/// Creates the slot and publication on the new host (before the switch) and records the
/// window as `prepared`, with each database's anchor taken now and the config files' digests.
///
/// With `early` (before the freeze) only the slot and publications: the record says `slot`,
/// and no anchor is taken — the follower still writes the old host's changes into the new one
/// until the freeze, and those must not travel back. Creating a logical slot waits for the
/// transactions running on the new host (the follower's) and took seconds at times inside the
/// freeze; called again inside the freeze, the slot exists, and the call only takes the anchor
/// (a snapshot taken after the slot exists is as good as one before it: every transaction it
/// does not see commits later, so the slot decodes it).
///
/// # Errors
/// [`WindowError::Unavailable`] when the new host cannot be followed (its `wal_level`, its
/// agent's `[allow] follow_databases`) — nothing was created then; an agent failure otherwise.
pub async fn prepare(
    plan: &Plan,
    new: &Agent,
    run: &str,
    early: bool,
) -> Result<Record, WindowError> {
    let id = reverse_id(plan);
    if !early && let Some(rec) = anchor_early_slot(plan, new, run, &id).await? {
        return Ok(rec);
    }
    // Check every database before creating anything.
    for d in &plan.databases {
        let s = new
            .follow()
            .source_status(client::request(SourceStatusRequest {
                database: d.on_new().to_string(),
                id: id.clone(),
                flush: false,
            }))
            .await
            .map_err(agent_err(format!(
                "database {} on the new host",
                d.on_new()
            )))?
            .into_inner();
        if s.wal_level != "logical" {
            return Err(WindowError::Unavailable(format!(
                "database {} on the new host: its PostgreSQL runs wal_level = {} (the rollback window needs logical: `ALTER SYSTEM SET wal_level = logical;` and a restart of the new host's PostgreSQL before the cutover)",
                d.on_new(),
                s.wal_level
            )));
        }
        if !s.follow_allowed {
            return Err(WindowError::Unavailable(format!(
                "database {} on the new host: its agent's config does not allow a slot there (add \"{}\" to [allow] follow_databases in the new agent's config and restart it)",
                d.on_new(),
                d.on_new()
            )));
        }
    }
    let mut rec = Record {
        run: run.to_string(),
        state: if early { "slot" } else { "prepared" }.into(),
        opened_unix_ms: 0,
        id: id.clone(),
        databases: vec![],
        files_at_switch: std::collections::BTreeMap::new(),
        carried_back: None,
        not_carried_back: vec![],
    };
    for d in &plan.databases {
        // Recorded before anything is created there: a failure below still finds it to drop.
        rec.databases.push(WindowDb {
            database: d.name.clone(),
            on_new: d.on_new().to_string(),
            ..WindowDb::default()
        });
        save(plan, &rec)?;
        let r = new
            .follow()
            .prepare(client::request(PrepareFollowRequest {
                selection: Some(selection(d, d.on_new())),
                id: id.clone(),
                peer: plan.old.agent.clone(),
                anchor_now: true,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: the rollback window's slot on the new host",
                d.on_new()
            )))?
            .into_inner();
        if early {
            if let Some(w) = rec.databases.last_mut() {
                w.token = r.token;
                w.not_followed = r.not_followed;
            }
            save(plan, &rec)?;
            continue;
        }
        let anchor = new
            .follow()
            .anchor(client::request(AnchorRequest {
                database: d.on_new().to_string(),
                now: false,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: the rollback window's anchor",
                d.on_new()
            )))?
            .into_inner()
            .pg_snapshot;
        if let Some(w) = rec.databases.last_mut() {
            w.token = r.token;
            w.anchor = anchor;
            w.not_followed = r.not_followed;
        }
        save(plan, &rec)?;
    }
    if !early {
        rec.files_at_switch = travel::files_at_switch(plan, new).await;
        save(plan, &rec)?;
    }
    Ok(rec)
}

/// The in-freeze half of a window whose slot [`prepare`] created before the freeze (record
/// state `slot`, same id and databases): only each database's anchor, taken now, and the config
/// files' digests — no catalog work inside the freeze. `None` (the caller prepares in full) when
/// there is no such record or the new agent is older than `AnchorRequest.now`.
async fn anchor_early_slot(
    plan: &Plan,
    new: &Agent,
    run: &str,
    id: &str,
) -> Result<Option<Record>, WindowError> {
    let Some(mut rec) = load(plan)?.filter(|r| {
        r.state == "slot"
            && r.id == id
            && r.databases.len() == plan.databases.len()
            && r.databases.iter().all(|w| !w.token.is_empty())
    }) else {
        return Ok(None);
    };
    for w in &mut rec.databases {
        let a = new
            .follow()
            .anchor(client::request(AnchorRequest {
                database: w.on_new.clone(),
                now: true,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: the rollback window's anchor",
                w.on_new
            )))?
            .into_inner();
        if !a.taken_now {
            return Ok(None);
        }
        w.anchor = a.pg_snapshot;
    }
    rec.run = run.to_string();
    rec.state = "prepared".into();
    rec.files_at_switch = travel::files_at_switch(plan, new).await;
    save(plan, &rec)?;
    Ok(Some(rec))
}

/// Records what a rollback's carry-back did (see [`Record::carried_back`]).
///
/// # Errors
/// [`WindowError::State`]: no window, or the record cannot be written.
pub fn record_carry_back(plan: &Plan, c: &carry::Carried) -> Result<(), WindowError> {
    let mut rec = load(plan)?.ok_or_else(|| WindowError::State {
        path: path(plan),
        reason: "no rollback window is recorded".into(),
    })?;
    rec.carried_back = Some(c.carried.clone());
    rec.not_carried_back = c.not_carried.clone();
    save(plan, &rec)
}

/// Starts the old host's followers of a `prepared` window (right after the switch), or again
/// for an `open` one (`hostshift window --restart-follower`: same anchor, and the origin on the
/// old host says where it stopped, so nothing is applied twice).
///
/// # Errors
/// No prepared window, or the old agent refused (e.g. its config does not allow writing the
/// database).
pub async fn open(plan: &Plan, old: &Agent) -> Result<Record, WindowError> {
    let mut rec = load(plan)?
        .filter(|r| r.state == "prepared" || r.state == "open")
        .ok_or_else(|| WindowError::Unavailable("no rollback window was prepared".into()))?;
    for w in &rec.databases {
        old.follow()
            .start(client::request(StartFollowRequest {
                database: w.database.clone(),
                source_database: w.on_new.clone(),
                source_address: plan.new.address.clone(),
                source_tls_name: plan.new.server_name(),
                token: w.token.clone(),
                id: rec.id.clone(),
                pg_snapshot: w.anchor.clone(),
                not_followed: w.not_followed.clone(),
                rollback_window: true,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: starting the rollback window's follower on the old host",
                w.database
            )))?;
    }
    if rec.state != "open" {
        rec.state = "open".into();
        rec.opened_unix_ms = now_ms();
    }
    save(plan, &rec)?;
    Ok(rec)
}

/// Waits (the new host frozen) until the old host applied everything the new host committed,
/// stops the followers and copies the sequences back. Returns what was done.
///
/// # Errors
/// The follower failed, is not running, or did not get there within `timeout`; an agent failed.
pub async fn drain(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    timeout: Duration,
) -> Result<String, WindowError> {
    let rec = load(plan)?
        .filter(|r| r.state == "open")
        .ok_or_else(|| WindowError::Unavailable("no rollback window is open".into()))?;
    let mut done = Vec::new();
    let mut rec = rec;
    for w in &mut rec.databases {
        // The cutover's barrier, on the new host: every commit acknowledged so far is flushed
        // before the position it returns.
        let pos = new
            .follow()
            .source_status(client::request(SourceStatusRequest {
                database: w.on_new.clone(),
                id: rec.id.clone(),
                flush: true,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: the new host's position",
                w.on_new
            )))?
            .into_inner()
            .current_lsn;
        let t = std::time::Instant::now();
        follow::wait_applied(old, &w.database, pos, timeout)
            .await
            .map_err(|e| WindowError::NotApplied(format!("the old host's follower: {e}")))?;
        let waited = t.elapsed().as_millis();
        let d = plan
            .databases
            .iter()
            .find(|d| d.name == w.database)
            .ok_or_else(|| {
                WindowError::Unavailable(format!("database {} is not in the plan", w.database))
            })?;
        let seqs = new
            .database()
            .sequences(client::request(DbReadRequest {
                selection: Some(selection(d, &w.on_new)),
                snapshot: String::new(),
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: the new host's sequences",
                w.on_new
            )))?
            .into_inner()
            .sequences;
        let n = seqs.len();
        // Stopped, then the sequences set by the follower's agent under its permit.
        old.follow()
            .stop(client::request(StopFollowRequest {
                database: w.database.clone(),
                sequences: seqs,
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: stopping the old host's follower and setting the sequences",
                w.database
            )))?;
        w.differing = differing(old, new, d, w).await?;
        done.push(format!(
            "database {}: the old host applied up to {} in {waited} ms, {n} sequence(s) set{}",
            w.database,
            follow::lsn_text(pos),
            if w.differing.is_empty() {
                String::new()
            } else {
                format!(
                    "; differing, NOT carried back (no replica identity: updated or deleted on the new host): {}",
                    w.differing.join(", ")
                )
            }
        ));
    }
    rec.state = "drained".into();
    save(plan, &rec)?;
    Ok(done.join("; "))
}

/// The tables without a replica identity (only their inserts travel) whose fingerprints
/// differ between the hosts, both frozen and caught up. Tables that travel whole (FULL on the
/// new host) are not among them: the follower carried their every change.
async fn differing(
    old: &Agent,
    new: &Agent,
    d: &PlanDatabase,
    w: &WindowDb,
) -> Result<Vec<String>, WindowError> {
    if w.not_followed.is_empty() {
        return Ok(vec![]);
    }
    let print = |agent: &Agent, name: &str| {
        let mut c = agent.database();
        let sel = DbSelection {
            database: name.to_string(),
            include: w.not_followed.clone(),
            exclude: d.exclude.clone(),
        };
        let what =
            format!("database {name}: fingerprints of the tables without a replica identity");
        async move {
            let r = c
                .fingerprint(client::request(sel))
                .await
                .map_err(agent_err(what.clone()))?
                .into_inner();
            let f = DatabaseFingerprint::from_proto(r).map_err(|e| WindowError::Agent {
                what,
                message: e.to_string(),
            })?;
            Ok::<_, WindowError>(
                f.tables
                    .into_iter()
                    .map(|(t, f)| (t.to_string(), f.to_string()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    let (a, b) = tokio::join!(print(old, &w.database), print(new, &w.on_new));
    let (a, b) = (a?, b?);
    Ok(w.not_followed
        .iter()
        .filter(|t| a.get(*t) != b.get(*t))
        .cloned()
        .collect())
}

/// Removes the window: followers and origins on the old host, slot and publication on the new
/// host; records it `closed`. Idempotent; without a record nothing happens.
///
/// # Errors
/// An agent failure (the record stays active: run it again).
pub async fn close(plan: &Plan, old: &Agent, new: &Agent) -> Result<String, WindowError> {
    let Some(mut rec) = load(plan)? else {
        return Ok("no rollback window".into());
    };
    let mut done = Vec::new();
    for w in &rec.databases {
        old.follow()
            .forget(client::request(ForgetFollowRequest {
                database: w.database.clone(),
                id: rec.id.clone(),
                // The forward follow's cleanup put the replica identities back already.
                restore_identities: Vec::new(),
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: removing the old host's follower",
                w.database
            )))?;
        let r = new
            .follow()
            .drop(client::request(DropFollowRequest {
                database: w.on_new.clone(),
                id: rec.id.clone(),
            }))
            .await
            .map_err(agent_err(format!(
                "database {}: dropping the window's slot on the new host",
                w.on_new
            )))?
            .into_inner();
        done.push(format!(
            "database {}: follower removed on the old host; slot {} and publication {} on the new host",
            w.database,
            if r.dropped_slot { "dropped" } else { "none" },
            if r.dropped_publication {
                "dropped"
            } else {
                "none"
            }
        ));
    }
    rec.state = "closed".into();
    save(plan, &rec)?;
    Ok(done.join("; "))
}

/// One database of the window, as `hostshift window` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DbWindow {
    /// The plan's database.
    pub database: String,
    /// The old host's follower: `following`, `stopped`, `failed`, `not following`.
    pub follower: String,
    /// Its applied position.
    pub applied_lsn: String,
    /// The new host's current position.
    pub new_lsn: String,
    /// WAL between them.
    pub lag_bytes: u64,
    /// Seconds since the follower was last current.
    pub lag_seconds: f64,
    /// WAL the slot keeps on the new host.
    pub retained_bytes: u64,
    /// `retained_bytes` above [`RETAINED_WARN_BYTES`].
    pub retained_warning: bool,
    /// The slot exists on the new host.
    pub slot: bool,
    /// The follower's error, if any (or why it could not be asked).
    pub error: String,
    /// Tables of which only the inserts travel back (no replica identity on the new host).
    pub not_followed: Vec<String>,
    /// For those: what would carry them whole ([`carry_whole_hint`]); empty without any.
    pub hint: String,
}

/// The window as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// `none`, `prepared`, `open`, `closed`.
    pub state: String,
    /// When it opened (unix ms; 0: not open).
    pub since_unix_ms: i64,
    /// Seconds it has been open.
    pub open_secs: u64,
    /// Per database (an open window only).
    pub databases: Vec<DbWindow>,
}

/// The window's state; an agent that cannot be reached is reported in `error` (the old agent
/// down while the window is open: the new host's slot keeps the WAL meanwhile).
///
/// # Errors
/// The record cannot be read.
pub async fn status(plan: &Plan) -> Result<Status, WindowError> {
    let Some(rec) = load(plan)? else {
        return Ok(Status {
            state: "none".into(),
            ..Status::default()
        });
    };
    let mut out = Status {
        state: rec.state.clone(),
        since_unix_ms: rec.opened_unix_ms,
        open_secs: if rec.opened_unix_ms > 0 && rec.state == "open" {
            u64::try_from((now_ms() - rec.opened_unix_ms).max(0) / 1000).unwrap_or(0)
        } else {
            0
        },
        databases: vec![],
    };
    if !rec.is_active() {
        return Ok(out);
    }
    let (old, new) = tokio::join!(
        client::connect(plan, crate::plan::Side::Old),
        client::connect(plan, crate::plan::Side::New)
    );
    for w in &rec.databases {
        let mut d = DbWindow {
            database: w.database.clone(),
            follower: "unknown".into(),
            not_followed: w.not_followed.clone(),
            hint: carry_whole_hint(&w.on_new, &w.not_followed),
            ..DbWindow::default()
        };
        let mut errors = Vec::new();
        let mut current = 0;
        match &new {
            Ok(new) => match new
                .follow()
                .source_status(client::request(SourceStatusRequest {
                    database: w.on_new.clone(),
                    id: rec.id.clone(),
                    flush: false,
                }))
                .await
            {
                Ok(s) => {
                    let s = s.into_inner();
                    current = s.current_lsn;
                    d.new_lsn = follow::lsn_text(s.current_lsn);
                    d.retained_bytes = s.retained_bytes;
                    d.retained_warning = s.retained_bytes > RETAINED_WARN_BYTES;
                    d.slot = s.slot_exists;
                }
                Err(s) => errors.push(format!("new host: {}", client::explain_status(&s))),
            },
            Err(e) => errors.push(format!("new host: {e}")),
        }
        match &old {
            Ok(old) => match old
                .follow()
                .status(client::request(FollowStatusRequest {
                    database: w.database.clone(),
                    wake: false,
                }))
                .await
            {
                Ok(s) => {
                    let s = s.into_inner();
                    let reached = s.applied_lsn.max(s.reached_lsn);
                    d.follower = if s.configured {
                        s.state
                    } else {
                        "not following".into()
                    };
                    d.applied_lsn = follow::lsn_text(s.applied_lsn);
                    d.lag_bytes = current.saturating_sub(reached);
                    let since = s.reached_unix_ms.max(s.last_commit_unix_ms);
                    if since > 0 {
                        d.lag_seconds = (now_ms() - since).max(0) as f64 / 1000.0;
                    }
                    if !s.error.is_empty() {
                        errors.push(format!("follower: {}", s.error));
                    }
                }
                Err(s) => errors.push(format!("old host: {}", client::explain_status(&s))),
            },
            Err(e) => errors.push(format!(
                "old host: {e} (the new host's slot keeps the WAL until the old agent is back)"
            )),
        }
        d.error = errors.join("; ");
        out.databases.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reverse_id_differs_from_the_forward_one_and_stays_a_valid_follow_id() {
        assert_eq!(reverse_of("shop_move".into()), "shop_move_rb");
        let long = reverse_of("a".repeat(40));
        assert_eq!(long.len(), 40);
        assert!(long.ends_with("_rb"));
    }

    #[test]
    fn the_hint_names_the_insert_only_tables_and_the_new_agents_config_key() {
        assert_eq!(carry_whole_hint("app", &[]), "");
        let h = carry_whole_hint("app", &["public.audit_log".into()]);
        assert!(
            h.contains("public.audit_log") && h.contains("only the inserts"),
            "{h}"
        );
        assert!(
            h.contains("\"app\" to [allow] replica_identity_full in the new host's agent config"),
            "{h}"
        );
    }

    #[test]
    fn a_window_counts_as_active_until_it_is_closed() {
        for (state, active) in [
            ("slot", true),
            ("prepared", true),
            ("open", true),
            ("drained", true),
            ("closed", false),
        ] {
            let r = Record {
                state: state.into(),
                ..Record::default()
            };
            assert_eq!(r.is_active(), active, "{state}");
        }
    }
}
