//! Table data: [`copy_out`] on the source streams a table (or one key range of it) as `COPY`
//! bytes; [`TableSink`] on the target loads those bytes and commits only when told. The bytes
//! pass through untouched — nothing is decoded — so the copy costs what `COPY` costs.
//!
//! # Source
//! One connection per copy, in a `REPEATABLE READ READ ONLY` transaction on the sync's exported
//! snapshot (see [`super::conn`]), with `COPY (SELECT cols FROM [ONLY] t WHERE key range) TO
//! STDOUT` (or `COPY t (cols) TO STDOUT` for a whole ordinary table, which is a little faster).
//! The server sends one message per row; they are gathered into chunks of [`CHUNK_BYTES`].
//!
//! # Target
//! [`TableSink::begin`] runs `BEGIN; SET LOCAL session_replication_role = replica`, then, by
//! [`LoadMode`], `TRUNCATE` or `DELETE` of the range, then `COPY t (cols) FROM STDIN`.
//! `session_replication_role = replica` keeps foreign-key checks and user triggers from firing
//! during the load: the rows were consistent on the source (one snapshot), checking them row by
//! row again is slow, and a trigger such as "touch `updated_at`" would change them. It matters
//! when loading into tables whose post-data section is already in place (a second sync); on a
//! fresh target those triggers and constraints do not exist yet. Setting it needs a superuser
//! (on RDS: the `rds_superuser` master user) — a plain owner gets a clear permission error.
//! [`TableSink::commit`] finishes the `COPY` and commits; the caller calls it only after the
//! stream's trailer was verified. [`TableSink::rollback`], or dropping the sink (which closes its
//! connection), leaves the table as it was.

use std::borrow::Borrow;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use tokio_postgres::{CopyInSink, CopyOutStream};

use super::TableRef;
use super::conn::{Conn, PINNED_SETTINGS, SnapshotId};
use super::connect::CloseGuard;
use super::error::PgSyncError;
use super::ranges::KeyRange;
use super::tables::{TableInfo, TableKind};
pub use hostshift_shared::model::PageRange;

/// Size of the chunks [`copy_out`] yields (the last one may be smaller). Worst-case memory of a
/// copy is one chunk being filled plus one row message, plus whatever the caller queues.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// A target transaction left idle this long (a sink the caller forgot) is ended by the server.
pub const SINK_IDLE_TIMEOUT_SECS: u32 = 15 * 60;

/// Which rows of a table a copy reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Every row.
    All,
    /// A range of its integer key.
    Keys(KeyRange),
    /// The rows stored in a range of its heap pages: a first copy's piece, read in the sync's
    /// snapshot (see [`PageRange`]); only for an ordinary table.
    Pages(PageRange),
}

impl From<Option<KeyRange>> for Rows {
    fn from(range: Option<KeyRange>) -> Self {
        range.map_or(Self::All, Self::Keys)
    }
}

/// The source's `COPY … TO STDOUT` for a table or some of its rows.
pub fn copy_out_sql(table: &TableInfo, rows: &Rows) -> String {
    let format = table.format.sql();
    let predicate = match (table.kind, rows) {
        (TableKind::Ordinary, Rows::All) => {
            return format!(
                "COPY {}{} TO STDOUT (FORMAT {format})",
                table.table.qualified(),
                table.column_list()
            );
        }
        (_, Rows::All) => "TRUE".to_string(),
        (_, Rows::Keys(r)) => r.predicate(),
        (_, Rows::Pages(p)) => p.predicate(),
    };
    format!(
        "COPY (SELECT {} FROM {} WHERE {predicate}) TO STDOUT (FORMAT {format})",
        table.select_list(),
        table.relation_sql(),
    )
}

enum OutState<C> {
    Start(C),
    // The guard closes the connection if the stream is dropped in the middle of its `COPY`.
    Copying(C, Pin<Box<CopyOutStream>>, CloseGuard),
    Done,
}

/// Streams `rows` of `table` (`Option<KeyRange>` converts: every row or a key range) from the
/// source as `COPY` bytes in `table.format`, in chunks of [`CHUNK_BYTES`], inside a read-only
/// transaction on `snapshot` (required for a page range). Read in a snapshot, a table rewritten
/// since fails the copy before its last chunk ([`PgSyncError::Rewritten`]).
///
/// `conn` is any owner of a [`Conn`] (`&Conn`, `Arc<Conn>`, `Conn`): use one connection per
/// concurrent copy. After an error the stream ends; drop the connection, its transaction may
/// still be open. Dropped in the middle of its `COPY` (its reader went away), the stream closes
/// a connection [`Conn::connect`] opened, so that the server stops reading the table.
///
/// # Errors
/// Each item: [`PgSyncError::Query`] naming the table when the transaction cannot start (e.g. the
/// snapshot's exporting transaction ended) or the `COPY` fails; [`PgSyncError::Rewritten`];
/// [`PgSyncError::InvalidInput`] for a page range without a snapshot.
pub fn copy_out<C>(
    conn: C,
    table: &TableInfo,
    rows: Rows,
    snapshot: Option<SnapshotId>,
) -> impl Stream<Item = Result<Bytes, PgSyncError>> + Send + use<C>
where
    C: Borrow<Conn> + Send,
{
    let sql = copy_out_sql(table, &rows);
    let name = table.table.clone();
    // Once its rows are read in a snapshot, the table's file is checked (see `same_file`).
    let partitions = table.kind == TableKind::Partitioned;
    let pages_without_snapshot = matches!(rows, Rows::Pages(_)) && snapshot.is_none();
    futures::stream::try_unfold(OutState::Start(conn), move |state| {
        let sql = sql.clone();
        let name = name.clone();
        let snapshot = snapshot.clone();
        async move {
            let (conn, mut rows, midway) = match state {
                OutState::Done => return Ok(None),
                OutState::Copying(conn, rows, midway) => (conn, rows, midway),
                OutState::Start(conn) => {
                    let c: &Conn = conn.borrow();
                    if pages_without_snapshot {
                        return Err(PgSyncError::InvalidInput {
                            database: c.database().to_string(),
                            what: format!("a page range of table {name}"),
                            reason: "is read only in a snapshot (the sync's): its pages hold \
                                     other rows at any other moment"
                                .into(),
                        });
                    }
                    c.begin_read_only(snapshot.as_ref()).await?;
                    let rows = c
                        .client()
                        .copy_out(sql.as_str())
                        .await
                        .map_err(|e| c.err(Some(&name), "start COPY TO STDOUT", &e))?;
                    // From here until the `COPY` has ended, a drop of this stream (its reader
                    // went away) closes the connection instead of leaving it to read the rest
                    // of the table for nobody.
                    let midway = c.close_on_drop();
                    (conn, Box::pin(rows), midway)
                }
            };
            // One row more than the chunk size at most: no reallocation for typical rows.
            let mut chunk = BytesMut::with_capacity(CHUNK_BYTES + 64 * 1024);
            while chunk.len() < CHUNK_BYTES {
                match rows.next().await {
                    Some(Ok(row)) => chunk.extend_from_slice(&row),
                    Some(Err(e)) => {
                        midway.defuse();
                        return Err(conn.borrow().err(Some(&name), "COPY TO STDOUT", &e));
                    }
                    None => {
                        midway.defuse();
                        if snapshot.is_some() {
                            same_file(conn.borrow(), &name, partitions).await?;
                        }
                        conn.borrow().end_read_only().await?;
                        return Ok((!chunk.is_empty()).then(|| (chunk.freeze(), OutState::Done)));
                    }
                }
            }
            Ok(Some((
                chunk.freeze(),
                OutState::Copying(conn, rows, midway),
            )))
        }
    })
}

/// Checks, in the transaction that just read `table` in an imported snapshot, that the table
/// still has the file its snapshot sees (each partition, for a partitioned one: the parent has
/// none). A rewrite since — `VACUUM FULL`, `CLUSTER`, `TRUNCATE`, a rewriting `ALTER TABLE` —
/// gives it a new file: a page range then names other rows (whatever file the split measured,
/// the pieces all read the current one, so this one check covers them), and a rewriting `ALTER
/// TABLE` is not MVCC-safe (an older snapshot sees the new file empty), so the copy would
/// silently lack the table's rows. The `COPY` holds its lock until the transaction ends, so the
/// file it read is the current one this sees (`pg_class` and `pg_inherits` read in the snapshot
/// give the snapshot's); a piece of a rewritten table fails before its last chunk, and the
/// receiver commits nothing of it.
async fn same_file(conn: &Conn, table: &TableRef, partitions: bool) -> Result<(), PgSyncError> {
    // No row: the name now belongs to a table the snapshot does not know (dropped and made
    // again since), which is a new file too. A parent's own file is 0 (it has none).
    let rows = conn
        .client()
        .query(
            "WITH RECURSIVE tree(relid) AS ( \
               SELECT pg_catalog.to_regclass($1)::oid \
               UNION ALL \
               SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.relid \
                WHERE $2) \
             SELECT c.relfilenode::text::int8, \
                    pg_catalog.pg_relation_filenode(c.oid)::text::int8 \
               FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid",
            &[&table.qualified(), &partitions],
        )
        .await
        .map_err(|e| conn.err(Some(table), "read the table's files", &e))?;
    let moved = rows.is_empty()
        || rows.iter().any(|row| {
            let (in_snapshot, now) = (row.get::<_, i64>(0), row.get::<_, Option<i64>>(1));
            in_snapshot != 0 && now != Some(in_snapshot)
        });
    if !moved {
        return Ok(());
    }
    Err(PgSyncError::Rewritten {
        database: conn.database().to_string(),
        table: table.to_string(),
    })
}

/// What the target does to the table before loading.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LoadMode {
    /// `TRUNCATE` it first (in the same transaction: a rollback restores the old rows). Fails
    /// when other tables reference it by foreign key — on a target whose post-data is in place,
    /// load by [`LoadMode::DeleteRange`] instead.
    Truncate,
    /// Add the rows to what is there (a fresh table).
    Append,
    /// Delete the rows of this key range first (re-copying one range of a split table).
    DeleteRange(KeyRange),
}

/// A table load on the target, committed only by [`TableSink::commit`].
pub struct TableSink {
    conn: Conn,
    table: TableInfo,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    bytes: u64,
}

/// A committed load.
pub struct Loaded {
    /// The connection, free for the next load.
    pub conn: Conn,
    /// Rows the `COPY` inserted.
    pub rows: u64,
    /// Bytes of `COPY` data received.
    pub bytes: u64,
}

impl TableSink {
    /// Opens the load transaction on `conn` (a connection of its own: the sink owns it until it
    /// ends), applies `mode`, and starts `COPY FROM STDIN` in `table.format`.
    ///
    /// The caller must have checked that this database may be written (`[allow]
    /// restore_databases` in the agent's config): this function does not.
    ///
    /// # Errors
    /// [`PgSyncError::Query`] naming the table: the session may not set
    /// `session_replication_role` (not a superuser), the table is missing, `TRUNCATE` is refused.
    /// The connection is closed, so nothing stays half-done.
    pub async fn begin(conn: Conn, table: &TableInfo, mode: LoadMode) -> Result<Self, PgSyncError> {
        let name = &table.table;
        conn.exec(
            &format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{SINK_IDLE_TIMEOUT_SECS}s'; \
                 {PINNED_SETTINGS}"
            ),
            Some(name),
            "begin the load transaction",
        )
        .await?;
        conn.exec(
            "SET LOCAL session_replication_role = replica",
            Some(name),
            "set session_replication_role = replica (loading needs a superuser, or SET on that \
             parameter: on RDS the master user has it; see docs/rds.md)",
        )
        .await?;
        let prepare = match &mode {
            LoadMode::Append => None,
            LoadMode::Truncate => Some(format!("TRUNCATE {}", table.relation_sql())),
            LoadMode::DeleteRange(r) => Some(format!(
                "DELETE FROM {} WHERE {}",
                table.relation_sql(),
                r.predicate()
            )),
        };
        if let Some(sql) = prepare {
            conn.exec(
                &sql,
                Some(name),
                "empty the table (or range) before the load",
            )
            .await?;
        }
        let copy = format!(
            "COPY {}{} FROM STDIN (FORMAT {})",
            name.qualified(),
            table.column_list(),
            table.format.sql()
        );
        let sink = conn
            .client()
            .copy_in::<_, Bytes>(copy.as_str())
            .await
            .map_err(|e| conn.err(Some(name), "start COPY FROM STDIN", &e))?;
        Ok(Self {
            conn,
            table: table.clone(),
            sink: Box::pin(sink),
            bytes: 0,
        })
    }

    /// Sends one chunk to the server, waiting until it is accepted (backpressure).
    ///
    /// # Errors
    /// [`PgSyncError::Query`] when the server rejected the data or the connection broke; the
    /// load is then lost — drop the sink.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), PgSyncError> {
        self.bytes += chunk.len() as u64;
        self.sink.send(chunk).await.map_err(|e| {
            self.conn
                .err(Some(&self.table.table), "COPY FROM STDIN", &e)
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the `COPY` and commits: call only after the stream was verified.
    ///
    /// # Errors
    /// [`PgSyncError::Query`] when the data was incomplete or invalid, or the commit failed; the
    /// table is then unchanged.
    pub async fn commit(mut self) -> Result<Loaded, PgSyncError> {
        let name = &self.table.table;
        let rows = self
            .sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.conn.err(Some(name), "finish COPY FROM STDIN", &e))?;
        self.conn
            .exec("COMMIT", Some(name), "commit the load")
            .await?;
        tracing::debug!(table = %name, rows, bytes = self.bytes, "table load committed");
        Ok(Loaded {
            conn: self.conn,
            rows,
            bytes: self.bytes,
        })
    }

    /// Abandons the load: the table is left as it was before [`TableSink::begin`].
    ///
    /// # Errors
    /// When the connection broke (the server then rolls back by itself).
    pub async fn rollback(self) -> Result<Conn, PgSyncError> {
        let Self {
            conn, table, sink, ..
        } = self;
        // Dropping the sink sends CopyFail: the COPY ends in an error, the transaction aborts.
        drop(sink);
        conn.exec("ROLLBACK", Some(&table.table), "roll back the load")
            .await?;
        Ok(conn)
    }
}
