//! Content fingerprints that prove a copy equal without moving the data again: per table (and
//! per key range), over the sequences, and per large object. Both hosts compute them locally and
//! compare the results.
//!
//! # Tables: order-independent
//! A table's fingerprint is its row count and the sum over its rows of a 128-bit hash of the row's
//! text: `md5(ROW(t.*)::text)` split into two 64-bit halves, each summed as `numeric` (no
//! overflow), the two sums hashed once more into a 32-hex-digit digest. A sum does not depend on
//! row order, so the same rows in a different physical order (which a copy produces) give the
//! same fingerprint, no sort is needed (a sequential scan, no memory beyond the sums), and each
//! key range of a split table can be checked on its own.
//! What it catches: any changed, missing or extra row (a changed row changes its hash; the chance
//! that the sums still agree is about 2⁻¹²⁸ for unrelated changes). What it does not promise:
//! protection against someone crafting rows to collide — it is an integrity check of a copy, not
//! a MAC. `NULL` and the empty string render differently in a row's text (`(1,)` vs `(1,"")`), so
//! they hash differently.
//!
//! Rendering must agree on both hosts, so every fingerprint runs in a transaction that pins
//! `TimeZone = UTC`, `DateStyle = ISO`, `IntervalStyle = postgres`, `extra_float_digits = 3`,
//! `bytea_output = hex` and `lc_monetary = C` ([`super::conn::PINNED_SETTINGS`]). Generated
//! columns are included (the target computes the same values).
//!
//! # Sequences and large objects
//! Sequences: `last_value/is_called` by name. Large objects: by OID, the owner, the ACL entries
//! (sorted), the size and a SHA-256 over the MD5s of its 1 MiB pieces (computed by the server, so
//! only digests cross the connection).

use std::collections::BTreeMap;

use hostshift_shared::digest::StreamHasher;

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::large_objects::LO_CHUNK_BYTES;
use super::ranges::KeyRange;
use super::select::Selection;
use super::sequences;
use super::tables::{self, TableInfo};

/// The fingerprint of a table or of one key range of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableFingerprint {
    /// Row count.
    pub rows: i64,
    /// 32 hex digits, independent of row order.
    pub digest: String,
}

fn table_sql(table: &TableInfo, range: Option<&KeyRange>) -> String {
    format!(
        "SELECT count(*),
                md5(coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text
                    || '/' ||
                    coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)
         FROM (SELECT md5(ROW(t.*)::text) AS h FROM {} AS t WHERE {}) AS rows",
        table.relation_sql(),
        range.map_or_else(|| "TRUE".to_string(), KeyRange::predicate)
    )
}

async fn table_in_tx(
    conn: &Conn,
    table: &TableInfo,
    range: Option<&KeyRange>,
) -> Result<TableFingerprint, PgSyncError> {
    let row = conn
        .client()
        .query_one(&table_sql(table, range), &[])
        .await
        .map_err(|e| conn.err(Some(&table.table), "fingerprint the table", &e))?;
    Ok(TableFingerprint {
        rows: row.get(0),
        digest: row.get(1),
    })
}

/// The fingerprint of `table` (or `range` of it), in a read-only transaction on `snapshot`.
///
/// # Errors
/// [`PgSyncError::Query`] naming the table when it cannot be read.
pub async fn table_fingerprint(
    conn: &Conn,
    table: &TableInfo,
    range: Option<&KeyRange>,
    snapshot: Option<&SnapshotId>,
) -> Result<TableFingerprint, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let fp = table_in_tx(conn, table, range).await;
    conn.end_read_only().await?;
    fp
}

/// The fingerprint of every table `selection` selects, keyed `schema.table`, in one read-only
/// transaction (one consistent view of the database).
///
/// # Errors
/// [`PgSyncError::Query`] naming the table that could not be read.
pub async fn database_fingerprint(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<String, TableFingerprint>, PgSyncError> {
    conn.begin_read_only(None).await?;
    let result: Result<_, PgSyncError> = async {
        let mut out = BTreeMap::new();
        for t in tables::tables_in_tx(conn, selection).await? {
            let fp = table_in_tx(conn, &t, None).await?;
            out.insert(t.table.to_string(), fp);
        }
        Ok(out)
    }
    .await;
    conn.end_read_only().await?;
    result
}

/// `last_value/is_called` of every selected sequence, keyed `schema.sequence`.
///
/// # Errors
/// [`PgSyncError::Query`] naming the sequence that could not be read.
pub async fn sequence_fingerprint(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<String, String>, PgSyncError> {
    let values = sequences::read_sequences(conn, selection, None).await?;
    Ok(values
        .into_iter()
        .map(|v| {
            (
                v.sequence.to_string(),
                format!("{}/{}", v.last_value, v.is_called),
            )
        })
        .collect())
}

/// Per large object (by OID): `owner=… acl=… bytes=… sha256=…`, in one read-only transaction.
///
/// # Errors
/// [`PgSyncError::Query`] when a large object cannot be read (the session needs `SELECT` on it).
pub async fn large_object_fingerprint(conn: &Conn) -> Result<BTreeMap<u32, String>, PgSyncError> {
    conn.begin_read_only(None).await?;
    let result = large_objects_in_tx(conn).await;
    conn.end_read_only().await?;
    result
}

async fn large_objects_in_tx(conn: &Conn) -> Result<BTreeMap<u32, String>, PgSyncError> {
    let what = "fingerprint the large objects";
    let c = conn.client();
    let metas = c
        .query(
            "SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner)::text,
                    CASE WHEN m.lomacl IS NULL THEN 'default'
                         ELSE array(SELECT a::text FROM unnest(m.lomacl) AS a ORDER BY 1)::text END
             FROM pg_catalog.pg_largeobject_metadata m ORDER BY m.oid",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, what, &e))?;
    let mut out = BTreeMap::new();
    for m in &metas {
        let oid: u32 = m.get(0);
        let (mut hasher, mut size, mut offset) = (StreamHasher::new(), 0i64, 0i64);
        loop {
            let piece = c
                .query_one(
                    "SELECT md5(p), length(p)
                     FROM (SELECT pg_catalog.lo_get($1, $2, $3) AS p OFFSET 0) AS piece",
                    &[&oid, &offset, &LO_CHUNK_BYTES],
                )
                .await
                .map_err(|e| conn.err(Some(&format!("large object {oid}")), what, &e))?;
            let len: i32 = piece.get(1);
            hasher.update(piece.get::<_, &str>(0).as_bytes());
            size += i64::from(len);
            offset += i64::from(len);
            if len < LO_CHUNK_BYTES {
                break;
            }
        }
        let (_, digest) = hasher.finish();
        out.insert(
            oid,
            format!(
                "owner={} acl={} bytes={size} sha256={digest}",
                m.get::<_, &str>(1),
                m.get::<_, &str>(2)
            ),
        );
    }
    Ok(out)
}
