//! The statistics queries, all in one `READ ONLY` transaction, so the numbers belong together
//! and nothing can be written by accident.

use std::time::Duration;

use crate::config::DatabaseConfig;
use crate::error::AgentError;
use crate::postgres::connect;

/// Deadline of the whole set of queries.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Statistics of one database.
#[derive(Clone, Debug, Default)]
pub struct DbStats {
    /// `current_database()`.
    pub server_database: String,
    /// `server_version`.
    pub server_version: String,
    /// `pg_database_size`.
    pub size_bytes: u64,
    /// `pg_stat_database.blks_hit`.
    pub blks_hit: u64,
    /// `pg_stat_database.blks_read`.
    pub blks_read: u64,
    /// Sessions of this database by state (our own excluded): `(state, count)`.
    pub connections: Vec<(String, u64)>,
    /// `max_connections`.
    pub max_connections: u32,
    /// Tables, biggest first.
    pub tables: Vec<TableStats>,
}

impl DbStats {
    /// `blks_hit / (blks_hit + blks_read)`; `None` before any block was touched.
    pub fn cache_hit_ratio(&self) -> Option<f64> {
        let total = self.blks_hit + self.blks_read;
        (total > 0).then(|| self.blks_hit as f64 / total as f64)
    }
}

/// One table's numbers.
#[derive(Clone, Debug, Default)]
pub struct TableStats {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// `pg_total_relation_size`.
    pub total_bytes: u64,
    /// `pg_table_size`.
    pub table_bytes: u64,
    /// `pg_indexes_size`.
    pub index_bytes: u64,
    /// `pg_class.reltuples` (-1: never analyzed).
    pub row_estimate: f64,
    /// `n_live_tup`.
    pub live_rows: i64,
    /// `n_dead_tup`.
    pub dead_rows: i64,
}

const TABLES: &str = "\
SELECT n.nspname::text, c.relname::text,
       pg_total_relation_size(c.oid), pg_table_size(c.oid), pg_indexes_size(c.oid),
       c.reltuples::float8, coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 3 DESC, 1, 2";

const CONNECTIONS: &str = "\
SELECT coalesce(state, ''), count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
GROUP BY 1 ORDER BY 1";

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads the statistics of `db`.
///
/// # Errors
/// `Unavailable` when the database cannot be reached; `Database` for a failed query (e.g. a role
/// without access to the statistics views); `Unavailable` after [`QUERY_TIMEOUT`].
pub async fn read(db: &DatabaseConfig) -> Result<DbStats, AgentError> {
    let mut client = connect::connect(db).await?;
    tokio::time::timeout(QUERY_TIMEOUT, queries(db, &mut client))
        .await
        .map_err(|_| {
            AgentError::Unavailable(format!(
                "database {}: statistics did not come back within {} s",
                db.name,
                QUERY_TIMEOUT.as_secs()
            ))
        })?
}

async fn queries(
    db: &DatabaseConfig,
    client: &mut tokio_postgres::Client,
) -> Result<DbStats, AgentError> {
    let e = |err: tokio_postgres::Error| AgentError::db(&db.name, &err);
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(e)?;
    let row = tx
        .query_one(
            "SELECT current_database()::text, pg_database_size(current_database()), current_setting('server_version'), current_setting('max_connections')::int",
            &[],
        )
        .await
        .map_err(e)?;
    let mut stats = DbStats {
        server_database: row.get(0),
        size_bytes: unsigned(row.get(1)),
        server_version: row.get(2),
        max_connections: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        ..DbStats::default()
    };
    if let Some(row) = tx
        .query_opt(
            "SELECT coalesce(blks_hit, 0), coalesce(blks_read, 0) FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(e)?
    {
        stats.blks_hit = unsigned(row.get(0));
        stats.blks_read = unsigned(row.get(1));
    }
    stats.connections = tx
        .query(CONNECTIONS, &[])
        .await
        .map_err(e)?
        .iter()
        .map(|r| (r.get::<_, String>(0), unsigned(r.get(1))))
        .collect();
    stats.tables = tx
        .query(TABLES, &[])
        .await
        .map_err(e)?
        .iter()
        .map(|r| TableStats {
            schema: r.get(0),
            table: r.get(1),
            total_bytes: unsigned(r.get(2)),
            table_bytes: unsigned(r.get(3)),
            index_bytes: unsigned(r.get(4)),
            row_estimate: r.get(5),
            live_rows: r.get(6),
            dead_rows: r.get(7),
        })
        .collect();
    tx.rollback().await.map_err(e)?;
    Ok(stats)
}
