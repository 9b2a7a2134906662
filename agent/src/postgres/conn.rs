//! A connection that knows its configured database name (for error messages), the source side's
//! read-only transactions, and exported snapshots that make parallel copies consistent.
//!
//! Why snapshots: the copies run on several connections at once while the old host keeps
//! serving. Each would otherwise see the database at a different moment, and a child row copied
//! after its parent's table could reference a parent that is not on the target — the foreign key
//! added in post-data would then refuse the data. [`ExportedSnapshot`] holds one read-only
//! transaction open and exports its snapshot (`pg_export_snapshot()`); every copy, sequence read,
//! large-object read and `pg_dump --snapshot` imports it, so all of them see the same instant,
//! as `pg_dump -j` does.
//!
//! Every transaction this module opens on a source is `READ ONLY`: the source is never written,
//! not even a temporary table.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::Client;

use super::error::PgSyncError;
use crate::config::DatabaseConfig;

/// Settings that make values render (and parse, for text-format `COPY`) the same on both hosts:
/// fingerprints hash the text of rows, so two servers with different defaults must agree.
pub const PINNED_SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; \
     SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL lc_monetary = 'C'; SET LOCAL standard_conforming_strings = on;";

/// A client plus the configured name of its database (and, for a connection it opened, the
/// means to close it at once, `close_on_drop`).
pub struct Conn {
    client: Client,
    database: String,
    driver: Option<super::connect::Driver>,
    /// False from [`Conn::begin_read_only`] until [`Conn::end_read_only`] succeeded: a session
    /// whose read did not end as it should is not reused ([`super::pool`]).
    idle: AtomicBool,
}

impl Conn {
    /// Connects to a configured database (password from its `password_file`).
    ///
    /// # Errors
    /// [`PgSyncError::Connect`] when the conninfo is invalid, the password file unreadable or the
    /// server unreachable.
    pub async fn connect(db: &DatabaseConfig) -> Result<Self, PgSyncError> {
        let (client, driver) = crate::postgres::connect::connect_closing(db)
            .await
            .map_err(|e| PgSyncError::Connect {
                database: db.name.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            database: db.name.clone(),
            driver: Some(driver),
            idle: AtomicBool::new(true),
        })
    }

    /// Wraps an existing client; `database` is the name used in error messages.
    pub fn new(client: Client, database: &str) -> Self {
        Self {
            client,
            database: database.to_string(),
            driver: None,
            idle: AtomicBool::new(true),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configured database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// True unless a read-only transaction began and did not end as it should.
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    /// The client back (e.g. to reuse the connection).
    pub fn into_client(self) -> Client {
        self.client
    }

    /// A guard that, dropped, closes a connection this opened ([`Conn::connect`]) at once, even
    /// while the server is still sending (see [`super::connect::Driver`]): around a `COPY` whose
    /// reader may go away. For a wrapped client ([`Conn::new`]) it does nothing.
    pub(crate) fn close_on_drop(&self) -> super::connect::CloseGuard {
        match &self.driver {
            Some(d) => d.close_on_drop(),
            None => super::connect::CloseGuard::none(),
        }
    }

    /// `batch_execute` with the error naming what was being done.
    pub(crate) async fn exec(
        &self,
        sql: &str,
        table: Option<&(dyn std::fmt::Display + Sync)>,
        what: &str,
    ) -> Result<(), PgSyncError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| PgSyncError::query(&self.database, table, what, &e))
    }

    /// A [`PgSyncError::Query`] on this connection.
    pub(crate) fn err(
        &self,
        table: Option<&(dyn std::fmt::Display + Sync)>,
        what: &str,
        e: &tokio_postgres::Error,
    ) -> PgSyncError {
        PgSyncError::query(&self.database, table, what, e)
    }

    /// Starts a `REPEATABLE READ READ ONLY` transaction with [`PINNED_SETTINGS`], on `snapshot`
    /// when one is given.
    ///
    /// # Errors
    /// When the server refuses (e.g. the exporting transaction of `snapshot` has ended).
    pub(crate) async fn begin_read_only(
        &self,
        snapshot: Option<&SnapshotId>,
    ) -> Result<(), PgSyncError> {
        let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; ");
        if let Some(s) = snapshot {
            // Must come before any query of the transaction.
            sql.push_str(&format!(
                "SET TRANSACTION SNAPSHOT {}; ",
                super::sql::literal(s.as_str())
            ));
        }
        sql.push_str(PINNED_SETTINGS);
        self.idle.store(false, Ordering::SeqCst);
        self.exec(&sql, None, "begin a read-only transaction").await
    }

    /// Ends a read-only transaction (nothing to keep: `COMMIT` and `ROLLBACK` are the same).
    pub(crate) async fn end_read_only(&self) -> Result<(), PgSyncError> {
        self.exec("COMMIT", None, "end a read-only transaction")
            .await?;
        self.idle.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The id of an exported snapshot (`00000003-0000001B-1`), checked for shape so it can go into
/// SQL text and a `pg_dump` argument.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Checks the shape: hex digits and dashes only, at most 64 characters.
    ///
    /// # Errors
    /// [`PgSyncError::InvalidInput`] for anything else.
    pub fn parse(id: &str) -> Result<Self, PgSyncError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(PgSyncError::InvalidInput {
                database: String::new(),
                what: "snapshot id".into(),
                reason: format!("{id:?} is not of the form 00000003-0000001B-1"),
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).map_err(|e| e.to_string())
    }
}

impl From<SnapshotId> for String {
    fn from(s: SnapshotId) -> Self {
        s.0
    }
}

/// A read-only transaction held open on the source whose snapshot other connections import.
/// The snapshot lives as long as this value: dropping it closes the connection.
pub struct ExportedSnapshot {
    conn: Conn,
    id: SnapshotId,
    /// `pg_current_snapshot()` of the exporting transaction (`xmin:xmax:xip`): which
    /// transactions the snapshot sees — the anchor of a follower ([`crate::follow`]).
    pg_snapshot: String,
}

impl ExportedSnapshot {
    /// Opens `REPEATABLE READ READ ONLY` on `conn` and exports its snapshot.
    ///
    /// # Errors
    /// When the server refuses (e.g. a standby that cannot export snapshots).
    pub async fn export(conn: Conn) -> Result<Self, PgSyncError> {
        conn.exec(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            None,
            "begin the snapshot transaction",
        )
        .await?;
        let row = conn
            .client
            .query_one(
                "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_current_snapshot()::text",
                &[],
            )
            .await
            .map_err(|e| conn.err(None, "export a snapshot", &e))?;
        let id = SnapshotId::parse(row.get::<_, &str>(0))?;
        let pg_snapshot = row.get::<_, String>(1);
        tracing::debug!(
            database = conn.database(),
            snapshot = id.as_str(),
            "exported snapshot"
        );
        Ok(Self {
            conn,
            id,
            pg_snapshot,
        })
    }

    /// The id to hand to the copies.
    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// Which transactions the snapshot sees (`pg_current_snapshot()::text`).
    pub fn pg_snapshot(&self) -> &str {
        &self.pg_snapshot
    }

    /// Ends the transaction (the snapshot can no longer be imported) and returns the connection.
    ///
    /// # Errors
    /// When the connection broke.
    pub async fn release(self) -> Result<Conn, PgSyncError> {
        self.conn.end_read_only().await?;
        Ok(self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_checked_for_shape() {
        assert!(SnapshotId::parse("00000003-0000001B-1").is_ok());
        assert!(SnapshotId::parse("").is_err());
        assert!(SnapshotId::parse("1'; DROP TABLE x; --").is_err());
        let json =
            serde_json::to_string(&SnapshotId::parse("0-A-1").expect("valid")).expect("serialize");
        assert_eq!(json, "\"0-A-1\"");
        assert!(serde_json::from_str::<SnapshotId>("\"x y\"").is_err());
    }
}
