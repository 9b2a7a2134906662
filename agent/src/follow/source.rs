//! The old host's side of a follow: the slot and publication, the follow grant, and the decoded
//! changes served to the new host's agent.
//!
//! Everything here runs only for a database named in `[allow] follow_databases`: a slot keeps WAL
//! on the production host until it is dropped, and a publication is visible in its catalog.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostshift_shared::identity::{Identity, Role};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::apply::VALUE_SETTINGS;
use super::pgoutput::parse_lsn;
use super::store::{self, SourceRecord};
use crate::Ctx;
use crate::error::AgentError;
use crate::postgres::sql::{ident, literal};
use crate::postgres::{Conn, Selection};

/// Batches of rows buffered between the peek and the network (backpressure beyond it).
pub const ROW_QUEUE: usize = 16;

/// A batch is sent once it holds this many bytes of messages (or no further row is ready): one
/// gRPC message per row cost more than applying the row. A single row may be larger (one row's
/// values, a few MiB with large values).
pub const BATCH_BYTES: usize = 256 * 1024;

/// Upper bound of `max_changes` a caller may ask for in one peek.
pub const MAX_CHANGES: u32 = 10_000;

/// How long one peek may take before it is abandoned.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a peek (and a slot's drop) waits while another process holds the slot (SQLSTATE
/// 55006, "replication slot … is active for PID n"). The usual holder is a peek of this agent
/// whose caller went away: a stopped follower's last peek, or one cut off with its connection,
/// runs on in its PostgreSQL backend until the function returns (milliseconds; at most
/// [`PEEK_TIMEOUT`]). The cutover's proof peeks right after it stopped the follower: failing
/// there undid a cutover that was fine (seen in `bench/run --only cutover`, 2026-12-08).
pub const SLOT_BUSY_WAIT: Duration = Duration::from_secs(10);

/// Pause between two tries while the slot is held.
const SLOT_BUSY_PAUSE: Duration = Duration::from_millis(10);

/// Another process holds the slot right now (55006, object in use).
fn slot_busy(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
}

/// A session idle longer than this is closed rather than reused (a stopped follow does not keep
/// a session on the old host).
pub const SESSION_IDLE: Duration = Duration::from_secs(60);

/// The PostgreSQL sessions of the follows this (old) host serves, one per database, reused from
/// peek to peek.
///
/// A follower peeks every [`super::follower::IDLE_PAUSE`] when idle and once per batch when
/// busy; a new connection per peek (TCP, authentication, a backend process forked, the value
/// settings) cost more than many peeks themselves and left a trail of backends starting and
/// ending on the production host. A peek takes the session out (concurrent peeks of one
/// database each get their own), and puts it back only after a peek that went to the end
/// without an error: a failed or abandoned one closes it and the next peek connects afresh.
#[derive(Default)]
pub struct Sessions {
    idle: Mutex<HashMap<String, (Client, Instant)>>,
}

impl Sessions {
    fn take(&self, database: &str) -> Option<Client> {
        let (client, since) = self.idle.lock().ok()?.remove(database)?;
        (!client.is_closed() && since.elapsed() < SESSION_IDLE).then_some(client)
    }

    fn put(&self, database: &str, client: Client) {
        if let Ok(mut g) = self.idle.lock() {
            g.retain(|_, (c, since)| !c.is_closed() && since.elapsed() < SESSION_IDLE);
            g.insert(database.to_string(), (client, Instant::now()));
        }
    }

    /// Closes the idle session of `database` (its follow is dropped).
    pub fn close(&self, database: &str) {
        if let Ok(mut g) = self.idle.lock() {
            g.remove(database);
        }
    }
}

/// `hostshift_<id>`: the name of the slot and of the publication.
///
/// # Errors
/// `InvalidArgument` when `id` is not 1–40 lowercase letters, digits or `_`.
pub fn object_name(id: &str) -> Result<String, AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 40
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(format!("hostshift_{id}"))
    } else {
        Err(AgentError::InvalidArgument(format!(
            "follow id {id:?}: 1–40 lowercase letters, digits or _"
        )))
    }
}

fn allowed(ctx: &Ctx, database: &str) -> Result<(), AgentError> {
    ctx.database(database)?;
    if ctx
        .config
        .allow
        .follow_databases
        .iter()
        .any(|d| d == database)
    {
        Ok(())
    } else {
        Err(AgentError::PermissionDenied(format!(
            "following database {database} needs a logical replication slot on this host, which its agent's config does not allow: add \"{database}\" to [allow] follow_databases in {} and restart the agent",
            ctx.config_path.display()
        )))
    }
}

pub(super) async fn connect(ctx: &Ctx, database: &str) -> Result<Client, AgentError> {
    crate::postgres::connect::connect(ctx.database(database)?).await
}

/// A table's replica identity (`relreplident`: `d`efault, `n`othing, `f`ull, `i`ndex) and
/// whether UPDATE/DELETE can be published for it: default needs a primary key, nothing never
/// works, full and index do.
///
/// # Errors
/// `Database` when the query fails (or the table is gone).
pub(super) async fn replica_identity(
    client: &Client,
    database: &str,
    table: &crate::postgres::TableRef,
) -> Result<(String, bool), AgentError> {
    let row = client
        .query_one(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
             WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    let kind: String = row.get(0);
    let has_pk: bool = row.get(1);
    let usable = match kind.as_str() {
        "d" => has_pk,
        "f" | "i" => true,
        _ => false,
    };
    Ok((kind, usable))
}

/// The server's `wal_level`.
///
/// # Errors
/// `Database` when the query fails.
pub async fn wal_level(client: &Client, database: &str) -> Result<String, AgentError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok(row.get(0))
}

/// The refusal for a `wal_level` other than `logical`.
pub fn wal_level_error(database: &str, level: &str) -> AgentError {
    AgentError::FailedPrecondition(format!(
        "database {database}: following needs wal_level = logical on the old host's PostgreSQL (it is {level}). hostshift never restarts it: run `ALTER SYSTEM SET wal_level = logical;` as a superuser, restart PostgreSQL at a quiet moment (e.g. `systemctl restart postgresql`), then `hostshift follow start` again"
    ))
}

/// Creates (or keeps) the slot and publication and issues the follow grant.
///
/// # Errors
/// `PermissionDenied` without `[allow] follow_databases`; `FailedPrecondition` when `wal_level`
/// is not `logical`; `Database` when the server refuses (e.g. no free replication slot).
pub async fn prepare(
    ctx: &Ctx,
    database: &str,
    selection: &Selection,
    id: &str,
    peer: &str,
) -> Result<(SourceRecord, bool), AgentError> {
    allowed(ctx, database)?;
    let name = object_name(id)?;
    if !hostshift_shared::identity::valid_name(peer) {
        return Err(AgentError::InvalidArgument(format!(
            "follow peer {peer:?} is not an agent name"
        )));
    }
    let client = connect(ctx, database).await?;
    let level = wal_level(&client, database).await?;
    if level != "logical" {
        return Err(wal_level_error(database, &level));
    }
    // Slots are per cluster: one of the same name for another database belongs to another
    // migration with the same name.
    let other: Option<String> = client
        .query_opt(
            "SELECT database::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1 AND database IS DISTINCT FROM current_database()",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default());
    if let Some(other) = other {
        return Err(AgentError::FailedPrecondition(format!(
            "replication slot {name} exists already for database {other:?} of this cluster: another migration uses the name; give this plan's [migration] name another value, or drop that slot with `hostshift follow cleanup` of its plan"
        )));
    }
    let conn = Conn::new(client, database);
    let tables = crate::postgres::list_tables(&conn, selection)
        .await
        .map_err(AgentError::from)?;
    let client = conn.into_client();
    let mut followed = Vec::new();
    let mut not_followed = Vec::new();
    let full_allowed = ctx
        .config
        .allow
        .replica_identity_full
        .iter()
        .any(|d| d == database);
    let mut to_full = Vec::new();
    for t in &tables {
        let (ident_kind, ok) = replica_identity(&client, database, &t.table).await?;
        let label = format!("{}.{}", t.table.schema, t.table.table);
        if ok {
            followed.push((label, t.table.qualified()));
        } else if full_allowed {
            to_full.push((label, t.table.qualified(), ident_kind));
        } else {
            not_followed.push(label);
        }
    }
    if !to_full.is_empty() {
        set_identity_full(ctx, &client, database, &to_full).await?;
        followed.extend(to_full.into_iter().map(|(l, q, _)| (l, q)));
    }
    // A publication may only cover tables whose UPDATE/DELETE work under it: a table without a
    // replica identity in a publication makes the application's UPDATE and DELETE on it fail.
    let list = followed
        .iter()
        .map(|(_, q)| q.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let exists = publication_exists(&client, database, &name).await?;
    let sql = match (exists, list.is_empty()) {
        (false, true) => format!("CREATE PUBLICATION {}", ident(&name)),
        (false, false) => format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            ident(&name)
        ),
        (true, true) => format!("DROP PUBLICATION {0}; CREATE PUBLICATION {0}", ident(&name)),
        (true, false) => format!("ALTER PUBLICATION {} SET TABLE {list}", ident(&name)),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    // The publication exists before the slot: pgoutput looks it up in the catalog as of each
    // decoded change, and a change from before its creation would fail the decoding
    // ("publication ... does not exist"). Then the slot: every transaction committing after its
    // consistent point is decoded; the copy's snapshot (taken later) decides which of them the
    // copy already holds.
    let created = client
        .query_opt(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput') \
             WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some();

    let token = match store::source(ctx, database)? {
        Some(r) if r.peer == peer && r.id == id => r.token,
        _ => store::token()?,
    };
    let record = SourceRecord {
        database: database.to_string(),
        id: id.to_string(),
        slot: name.clone(),
        publication: name,
        peer: peer.to_string(),
        token,
        anchor: None,
        not_followed,
    };
    store::save_source(ctx, &record)?;
    tracing::info!(database, slot = %record.slot, created, followed = followed.len(), not_followed = record.not_followed.len(), "follow prepared");
    Ok((record, created))
}

/// Does publication `name` exist in `database` (the session of `client`)?
///
/// # Errors
/// `Database` when the query fails.
pub(super) async fn publication_exists(
    client: &Client,
    database: &str,
    name: &str,
) -> Result<bool, AgentError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some())
}

/// `pg_current_snapshot()` of `database` now (the rollback window's anchor, taken before
/// [`prepare`] creates the slot).
///
/// # Errors
/// `Database` when the query fails.
pub async fn current_snapshot(ctx: &Ctx, database: &str) -> Result<String, AgentError> {
    let client = connect(ctx, database).await?;
    let row = client
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok(row.get(0))
}

/// Sets `REPLICA IDENTITY FULL` on `tables` (label, qualified name, original identity), after
/// recording each original identity in the state folder (merged with an earlier record: a second
/// `follow start` keeps the first originals), so that [`drop_follow`] can put them back even
/// after a crash between the two.
async fn set_identity_full(
    ctx: &Ctx,
    client: &Client,
    database: &str,
    tables: &[(String, String, String)],
) -> Result<(), AgentError> {
    let mut record = store::identities(ctx, database)?.unwrap_or_else(|| store::IdentityRecord {
        database: database.to_string(),
        tables: Vec::new(),
    });
    for (_, q, original) in tables {
        if original != "f" && !record.tables.iter().any(|(t, _)| t == q) {
            record.tables.push((q.clone(), original.clone()));
        }
    }
    store::save_identities(ctx, &record)?;
    for (label, q, _) in tables {
        client
            .batch_execute(&format!("ALTER TABLE {q} REPLICA IDENTITY FULL"))
            .await
            .map_err(|e| AgentError::Database {
                name: database.to_string(),
                message: format!(
                    "setting REPLICA IDENTITY FULL on {label} ([allow] replica_identity_full; the conninfo's role must own the table): {}",
                    AgentError::db(database, &e)
                ),
            })?;
        tracing::info!(database, table = %label, "replica identity set to FULL for following");
    }
    Ok(())
}

/// Puts back the replica identities [`set_identity_full`] changed, then forgets the record;
/// returns them as `table=d|n`.
async fn restore_identities(
    ctx: &Ctx,
    client: &Client,
    database: &str,
) -> Result<Vec<String>, AgentError> {
    let Some(record) = store::identities(ctx, database)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (q, original) in &record.tables {
        put_identity_back(client, database, q, original).await?;
        out.push(format!("{q}={original}"));
    }
    store::remove_identities(ctx, database)?;
    tracing::info!(database, tables = out.len(), "replica identities restored");
    Ok(out)
}

/// `ALTER TABLE table REPLICA IDENTITY DEFAULT|NOTHING` (`original`: `d`|`n`) when the table
/// exists and is FULL (a table dropped since has nothing to restore). The name is only ever
/// parsed by `to_regclass` (a literal), never spliced into the statement, so a name from a
/// record or a request cannot inject SQL.
///
/// # Errors
/// `Database` when the server refuses (e.g. the role does not own the table).
pub async fn put_identity_back(
    client: &Client,
    database: &str,
    table: &str,
    original: &str,
) -> Result<(), AgentError> {
    let to = if original == "n" {
        "NOTHING"
    } else {
        "DEFAULT"
    };
    let sql = format!(
        "DO $$ DECLARE r regclass := pg_catalog.to_regclass({}); BEGIN \
         IF r IS NOT NULL AND (SELECT relreplident FROM pg_catalog.pg_class WHERE oid = r) = 'f' THEN \
         EXECUTE format('ALTER TABLE %s REPLICA IDENTITY {to}', r); END IF; END $$",
        literal(table)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| AgentError::db(database, &e))
}

/// Records the snapshot of the first copy after [`prepare`] as the follow's anchor.
pub fn note_snapshot(ctx: &Ctx, database: &str, pg_snapshot: &str) {
    if let Ok(Some(mut r)) = store::source(ctx, database)
        && r.anchor.is_none()
    {
        r.anchor = Some(pg_snapshot.to_string());
        if let Err(e) = store::save_source(ctx, &r) {
            tracing::warn!(error = %e, database, "could not record the follow anchor");
        }
    }
}

/// Records `pg_snapshot` as the anchor of `database`'s follow, replacing one noted before (the
/// rollback window's anchor taken right before the switch, its slot created earlier).
///
/// # Errors
/// `FailedPrecondition` when no follow is prepared there; the record's I/O errors.
pub fn set_anchor(ctx: &Ctx, database: &str, pg_snapshot: &str) -> Result<(), AgentError> {
    let mut r = store::source(ctx, database)?.ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "database {database}: no follow is prepared here, so there is nothing to anchor"
        ))
    })?;
    r.anchor = Some(pg_snapshot.to_string());
    store::save_source(ctx, &r)
}

/// The anchor recorded since [`prepare`] (`None` when no snapshot was exported since).
///
/// # Errors
/// An unreadable record.
pub fn anchor(ctx: &Ctx, database: &str) -> Result<Option<String>, AgentError> {
    Ok(store::source(ctx, database)?.and_then(|r| r.anchor))
}

/// May `caller` read the changes of `database`? The coordinator always; a peer agent with the
/// follow grant issued to it.
///
/// # Errors
/// `PermissionDenied` saying why.
pub fn authorize(
    ctx: &Ctx,
    caller: &Identity,
    database: &str,
    token: &str,
) -> Result<SourceRecord, AgentError> {
    let r = store::source(ctx, database)?.ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "database {database} is not prepared for following on this host (no slot): run `hostshift follow start`"
        ))
    })?;
    if caller.role == Role::Coordinator {
        return Ok(r);
    }
    if r.peer != caller.name || r.token != token {
        return Err(AgentError::PermissionDenied(format!(
            "{caller} presented no valid follow grant for database {database}: `hostshift follow start` issues it"
        )));
    }
    Ok(r)
}

/// One row of a peek: (lsn, xid, pgoutput message).
pub type Row = (u64, u32, Vec<u8>);

/// What a peek sends: the WAL flush position before it, and rows in order.
pub type Batch = (u64, Vec<Row>);

/// Advances the slot to `confirm_lsn` (when it is ahead of the slot), then peeks at most about
/// `max_changes` rows and sends them into `tx` in batches (as many rows as are ready at once, up
/// to [`BATCH_BYTES`]); the first item has no rows and the WAL flush position before the peek
/// (nothing committed before it and after the slot is left out of this peek unless the peek
/// stopped at `max_changes`).
///
/// # Errors
/// `Database` when the server fails; `Cancelled` when the receiver went away.
pub async fn changes(
    ctx: &Ctx,
    record: &SourceRecord,
    confirm_lsn: u64,
    max_changes: u32,
    tx: mpsc::Sender<Result<Batch, AgentError>>,
) -> Result<(), AgentError> {
    let database = record.database.as_str();
    let client = match ctx.follow_sessions.take(database) {
        Some(c) => c,
        None => {
            let c = connect(ctx, database).await?;
            c.batch_execute(VALUE_SETTINGS)
                .await
                .map_err(|e| AgentError::db(database, &e))?;
            c
        }
    };
    peek(&client, record, confirm_lsn, max_changes, tx).await?;
    ctx.follow_sessions.put(database, client);
    Ok(())
}

/// Why one try of a peek ended early.
enum PeekError {
    /// Another process held the slot; nothing was sent yet, so the peek may be tried again.
    Busy(tokio_postgres::Error),
    /// Anything else.
    Failed(AgentError),
}

/// [`peek_once`] until it is not refused by a slot another process holds, for at most
/// [`SLOT_BUSY_WAIT`].
async fn peek(
    client: &Client,
    record: &SourceRecord,
    confirm_lsn: u64,
    max_changes: u32,
    tx: mpsc::Sender<Result<Batch, AgentError>>,
) -> Result<(), AgentError> {
    let database = record.database.as_str();
    let deadline = Instant::now() + SLOT_BUSY_WAIT;
    loop {
        match peek_once(client, record, confirm_lsn, max_changes, &tx).await {
            Ok(()) => return Ok(()),
            Err(PeekError::Failed(e)) => return Err(e),
            Err(PeekError::Busy(e)) if Instant::now() >= deadline => {
                let mut err = AgentError::db(database, &e);
                if let AgentError::Database { message, .. } = &mut err {
                    message.push_str(&format!(
                        " (still after waiting {} s for it: is a second follower or a \
                         pg_recvlogical using hostshift's slot?)",
                        SLOT_BUSY_WAIT.as_secs()
                    ));
                }
                return Err(err);
            }
            Err(PeekError::Busy(e)) => {
                tracing::debug!(database, error = %e, "peek: the slot is held by another process; waiting");
                if tx.is_closed() {
                    return Err(AgentError::Cancelled);
                }
                tokio::time::sleep(SLOT_BUSY_PAUSE).await;
            }
        }
    }
}

/// One try: advance, read the flush position, peek. Nothing is sent before the peek's first row
/// (or its end) arrived, so a try refused because the slot is busy can be repeated.
async fn peek_once(
    client: &Client,
    record: &SourceRecord,
    confirm_lsn: u64,
    max_changes: u32,
    tx: &mpsc::Sender<Result<Batch, AgentError>>,
) -> Result<(), PeekError> {
    let database = record.database.as_str();
    let failed = |e: tokio_postgres::Error| {
        if slot_busy(&e) {
            PeekError::Busy(e)
        } else {
            PeekError::Failed(AgentError::db(database, &e))
        }
    };
    if confirm_lsn > 0 {
        client
            .execute(
                "SELECT pg_catalog.pg_replication_slot_advance(slot_name, $2::text::pg_lsn) \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&record.slot, &super::pgoutput::lsn_text(confirm_lsn)],
            )
            .await
            .map_err(failed)?;
    }
    // The peek decodes up to the WAL *flushed* so far (not the insert position): with
    // asynchronous commit a transaction is acknowledged before its WAL is flushed, so only the
    // flush position may be reported as "nothing pending before it".
    let wal: String = client
        .query_one("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(failed)?
        .get(0);
    let wal = parse_lsn(&wal).unwrap_or(0);
    let max = i32::try_from(max_changes.clamp(1, MAX_CHANGES)).unwrap_or(1000);
    let sql = format!(
        "SELECT lsn::text, xid::text, data FROM pg_catalog.pg_logical_slot_peek_binary_changes({}, NULL, {max}, \
         'proto_version', '1', 'publication_names', {})",
        literal(&record.slot),
        literal(&record.publication)
    );
    if tx.is_closed() {
        return Err(PeekError::Failed(AgentError::Cancelled));
    }
    let stream = tokio::time::timeout(PEEK_TIMEOUT, client.query_raw(&sql, Vec::<String>::new()))
        .await
        .map_err(|_| {
            PeekError::Failed(AgentError::Unavailable(format!(
                "database {database}: peek timed out"
            )))
        })?
        .map_err(failed)?;
    futures::pin_mut!(stream);
    use futures::{FutureExt, StreamExt};
    // The slot is taken when the function starts: a busy slot is the first item's error.
    let mut next = match stream.next().await {
        Some(Err(e)) if slot_busy(&e) => return Err(PeekError::Busy(e)),
        other => other,
    };
    // From here on the peek runs to its end: the position first (an item without rows).
    let cancelled = || PeekError::Failed(AgentError::Cancelled);
    if tx.send(Ok((wal, Vec::new()))).await.is_err() {
        return Err(cancelled());
    }
    let decode = |row: Result<tokio_postgres::Row, tokio_postgres::Error>| {
        let row = row.map_err(|e| PeekError::Failed(AgentError::db(database, &e)))?;
        let lsn = parse_lsn(row.get::<_, &str>(0)).unwrap_or(0);
        let xid = row.get::<_, &str>(1).parse().unwrap_or(0);
        Ok::<Row, PeekError>((lsn, xid, row.get(2)))
    };
    // A batch takes what is ready without waiting, so a lone row is not held back. The stream
    // is never polled again once it ended (tokio-postgres then answers "connection closed").
    while let Some(first) = next {
        let first = decode(first)?;
        let mut bytes = first.2.len();
        let mut rows = vec![first];
        let mut ended = false;
        while bytes < BATCH_BYTES {
            match stream.next().now_or_never() {
                Some(Some(row)) => {
                    let row = decode(row)?;
                    bytes += row.2.len();
                    rows.push(row);
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        if tx.send(Ok((wal, rows))).await.is_err() {
            return Err(cancelled());
        }
        next = if ended { None } else { stream.next().await };
    }
    Ok(())
}

/// The slot's state as `status` and `check` show it.
#[derive(Clone, Debug, Default)]
pub struct SlotStatus {
    /// The slot exists.
    pub slot_exists: bool,
    /// The publication exists.
    pub publication_exists: bool,
    /// `pg_current_wal_lsn()`; with `flush`, the flushed position after a barrier ([`status`]).
    pub current_lsn: u64,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed_lsn: u64,
    /// WAL the slot keeps (`current - restart_lsn`), bytes.
    pub retained_bytes: u64,
    /// `wal_level`.
    pub wal_level: String,
    /// A follow grant is on record.
    pub grant_exists: bool,
    /// Tables not followed.
    pub not_followed: Vec<String>,
    /// The database is in `[allow] follow_databases`.
    pub follow_allowed: bool,
}

/// Reads the slot's state (the coordinator only; works without `[allow]`: it only reads).
///
/// With `flush`, `current_lsn` is a position before which every transaction committed so far
/// lies, *flushed*: the cutover waits for the follower to reach it after the freeze. Plain
/// `pg_current_wal_lsn()` is not that: with `synchronous_commit = off` a transaction is
/// acknowledged before its commit record is written, so it can lie beyond that position, the
/// follower would "reach" the position without it, and the write would be lost. The barrier is
/// a transaction that writes only a logical-decoding message (`pg_logical_emit_message`, no
/// table touched, allowed in the frozen read-only database; pgoutput does not forward it),
/// committed synchronously: its commit flushes the WAL up to its commit record, every earlier
/// commit included. (A transaction that only takes an xid is not enough: PostgreSQL flushes at
/// commit only when the transaction wrote WAL before its commit record.) The peek decodes only
/// flushed WAL, so the flush position after the barrier is the one to wait for.
///
/// # Errors
/// `Database` when the server fails.
pub async fn status(
    ctx: &Ctx,
    database: &str,
    id: &str,
    flush: bool,
) -> Result<SlotStatus, AgentError> {
    let name = object_name(id)?;
    let client = connect(ctx, database).await?;
    if flush {
        client
            .batch_execute(
                "SET synchronous_commit = on; BEGIN; \
                 SELECT pg_catalog.pg_logical_emit_message(true, 'hostshift', 'position'); COMMIT;",
            )
            .await
            .map_err(|e| AgentError::db(database, &e))?;
    }
    let mut s = SlotStatus {
        wal_level: wal_level(&client, database).await?,
        follow_allowed: allowed(ctx, database).is_ok(),
        ..SlotStatus::default()
    };
    let row = client
        .query_one(
            "SELECT CASE WHEN $2 THEN pg_catalog.pg_current_wal_flush_lsn() \
                         ELSE pg_catalog.pg_current_wal_lsn() END::text, \
             (SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
             (SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint \
              FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
             EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
             EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&name, &flush],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    s.current_lsn = parse_lsn(row.get::<_, &str>(0)).unwrap_or(0);
    s.confirmed_lsn = row
        .get::<_, Option<&str>>(1)
        .and_then(parse_lsn)
        .unwrap_or(0);
    s.retained_bytes = row
        .get::<_, Option<i64>>(2)
        .map_or(0, |v| u64::try_from(v).unwrap_or(0));
    s.slot_exists = row.get(3);
    s.publication_exists = row.get(4);
    if let Some(r) = store::source(ctx, database)? {
        s.grant_exists = r.id == id;
        s.not_followed = r.not_followed;
    }
    Ok(s)
}

/// Drops the slot, the publication and the follow grant, and puts back the replica identities
/// `prepare` set to FULL (returned as `table=d|n`); idempotent. A slot in use by a peek
/// is waited for, at most [`SLOT_BUSY_WAIT`].
///
/// # Errors
/// `Database` when the server refuses.
pub async fn drop_follow(
    ctx: &Ctx,
    database: &str,
    id: &str,
) -> Result<(bool, bool, Vec<String>), AgentError> {
    let name = object_name(id)?;
    ctx.follow_sessions.close(database);
    let client = connect(ctx, database).await?;
    // After a cutover the old database stays frozen read-only: its new sessions default to
    // read-only transactions, and DROP PUBLICATION would be refused (25006).
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    let deadline = Instant::now() + SLOT_BUSY_WAIT;
    let dropped_slot = loop {
        match client
            .query_opt(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name)::text \
                 FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1 AND database = current_database()",
                &[&name],
            )
            .await
        {
            Ok(r) => break r.is_some(),
            // In use by a peek still ending: the same wait as a peek's.
            Err(e) if slot_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(SLOT_BUSY_PAUSE).await;
            }
            Err(e) => return Err(AgentError::db(database, &e)),
        }
    };
    let dropped_publication = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some();
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    let restored = restore_identities(ctx, &client, database).await?;
    if store::source(ctx, database)?.is_some_and(|r| r.id == id) {
        store::remove_source(ctx, database)?;
    }
    tracing::info!(database, slot = %name, dropped_slot, dropped_publication, "follow dropped");
    Ok((dropped_slot, dropped_publication, restored))
}
