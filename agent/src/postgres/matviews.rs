//! Materialized views: `pg_dump --schema-only` creates them empty (`ispopulated = false`), and
//! an app querying one then fails with "materialized view … has not been populated". Like
//! `pg_restore` at its end (`REFRESH MATERIALIZED VIEW` after the data), the sync refreshes on
//! the new host every view that is populated on the old one, and `verify` compares them.
//!
//! - [`matview_fingerprints`]: per selected view, `"rows/digest"` of what it stores (the same
//!   order-independent digest as a table's, [`super::fingerprint`]), or [`NOT_POPULATED`]. With
//!   `fresh`, the digest of what a refresh would store *now* — its query evaluated in a read-only
//!   transaction — so a comparison can tell a view the old host last refreshed before its tables
//!   changed (stale there, not a copy error) from one that differs after a refresh.
//! - [`refresh_matviews`]: `REFRESH MATERIALIZED VIEW` (or `… WITH NO DATA`) on the target, in
//!   creation order (a view built on another view comes after it).

use std::collections::BTreeMap;

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::fingerprint::rows_fingerprint_sql;
use super::select::{Selection, TableRef};

/// The fingerprint of a materialized view that holds no data.
pub const NOT_POPULATED: &str = "not populated";

const LIST_SQL: &str = "
SELECT n.nspname::text, c.relname::text, c.relispopulated,
       pg_catalog.pg_get_viewdef(c.oid)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm'
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_depend e
      WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
ORDER BY c.oid";

struct Matview {
    name: TableRef,
    populated: bool,
    query: String,
}

async fn list(conn: &Conn, selection: &Selection) -> Result<Vec<Matview>, PgSyncError> {
    let rows = conn
        .client()
        .query(LIST_SQL, &[])
        .await
        .map_err(|e| conn.err(None, "list the materialized views", &e))?;
    Ok(rows
        .iter()
        .map(|r| Matview {
            name: TableRef::new(r.get(0), r.get(1)),
            populated: r.get(2),
            query: r
                .get::<_, String>(3)
                .trim_end()
                .trim_end_matches(';')
                .to_string(),
        })
        .filter(|m| selection.selects(&m.name))
        .collect())
}

/// Every selected materialized view, `schema.name` → `rows/digest` (or [`NOT_POPULATED`]), in one
/// read-only transaction (on `snapshot` when given). `fresh`: the digest of its query's result
/// now instead of what it stores (still [`NOT_POPULATED`] for a view that holds no data).
///
/// # Errors
/// [`PgSyncError::Query`] naming the view that could not be read.
pub async fn matview_fingerprints(
    conn: &Conn,
    selection: &Selection,
    snapshot: Option<&SnapshotId>,
    fresh: bool,
) -> Result<BTreeMap<String, String>, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let result: Result<_, PgSyncError> = async {
        let mut out = BTreeMap::new();
        for m in list(conn, selection).await? {
            let value = if m.populated {
                let from = if fresh {
                    format!("({})", m.query)
                } else {
                    m.name.qualified()
                };
                let row = conn
                    .client()
                    .query_one(&rows_fingerprint_sql(&from), &[])
                    .await
                    .map_err(|e| {
                        conn.err(Some(&m.name), "fingerprint the materialized view", &e)
                    })?;
                format!("{}/{}", row.get::<_, i64>(0), row.get::<_, String>(1))
            } else {
                NOT_POPULATED.to_string()
            };
            out.insert(m.name.to_string(), value);
        }
        Ok(out)
    }
    .await;
    conn.end_read_only().await?;
    result
}

/// Refreshes `populate` (`REFRESH MATERIALIZED VIEW`) and empties `unpopulate` (`… WITH NO
/// DATA`), names as `schema.name`, in the order the views were created. Names that are not a
/// materialized view of this database are refused before anything runs.
///
/// # Errors
/// [`PgSyncError::InvalidSelection`] for an unknown name; [`PgSyncError::Query`] naming the view
/// whose refresh failed (the views before it stay refreshed: each refresh is its own
/// transaction, and a rerun refreshes again).
pub async fn refresh_matviews(
    conn: &Conn,
    populate: &[String],
    unpopulate: &[String],
) -> Result<usize, PgSyncError> {
    conn.begin_read_only(None).await?;
    let all = list(conn, &Selection::all()).await;
    conn.end_read_only().await?;
    let all = all?;
    let known = |n: &String| all.iter().any(|m| m.name.to_string() == *n);
    if let Some(unknown) = populate.iter().chain(unpopulate).find(|n| !known(n)) {
        return Err(PgSyncError::InvalidSelection {
            pattern: unknown.clone(),
            reason: format!("is not a materialized view of database {}", conn.database()),
        });
    }
    let mut done = 0;
    for m in &all {
        let name = m.name.to_string();
        let sql = if populate.contains(&name) {
            format!("REFRESH MATERIALIZED VIEW {}", m.name.qualified())
        } else if unpopulate.contains(&name) {
            format!(
                "REFRESH MATERIALIZED VIEW {} WITH NO DATA",
                m.name.qualified()
            )
        } else {
            continue;
        };
        conn.exec(&sql, Some(&m.name), "refresh the materialized view")
            .await?;
        done += 1;
    }
    Ok(done)
}
