//! Content fingerprints that prove a copy equal without moving the data again: per table (and
//! per key range), over the sequences, and per large object. Both hosts compute them locally and
//! compare the results.
//!
//! # Tables: order-independent
//! A table's fingerprint is its row count and the sums over its rows of two 64-bit hashes of the
//! row's text: `hashtextextended(ROW(t.*)::text, 0)` and `…, 1)` (PostgreSQL's own 64-bit string
//! hash with two seeds), each summed as `numeric` (no overflow), the two sums hashed once more
//! into a 32-hex-digit digest. A sum does not depend on row order, so the same rows in a
//! different physical order (which a copy produces) give the same fingerprint, no sort is needed
//! (a sequential scan, no memory beyond the sums), and each key range of a split table can be
//! checked on its own.
//! What it catches: any changed, missing or extra row (a changed row changes both hashes; the
//! chance that both sums still agree is about 2⁻¹²⁸ for unrelated changes, 2⁻⁶⁴ at worst).
//! What it does not promise: protection against someone crafting rows to collide — it is an
//! integrity check of a copy, not a MAC. `NULL` and the empty string render differently in a
//! row's text (`(1,)` vs `(1,"")`), so they hash differently.
//!
//! Why not `md5`: the row hash was `md5(row text)` split into two hex halves until 2026-12;
//! parsing the hex (`('x' || substr(h, …))::bit(64)::bigint`) cost more than rendering the row,
//! and the whole fingerprint took twice as long (2 M rows: 7.4 s vs 3.2 s). `hashtextextended`
//! is the hash behind hash partitioning, which PostgreSQL keeps stable across major versions (a
//! hash-partitioned table survives `pg_upgrade`), so two hosts on different versions still agree
//! (it depends on byte order: x86-64 and arm64 are both little-endian). The text is hashed under
//! `COLLATE "C"`, i.e. as its bytes, whatever the database's collation. Agents before this change
//! computed other digests: run the same agent version on both hosts.
//!
//! Rendering must agree on both hosts, so every fingerprint runs in a transaction that pins
//! `TimeZone = UTC`, `DateStyle = ISO`, `IntervalStyle = postgres`, `extra_float_digits = 3`,
//! `bytea_output = hex` and `lc_monetary = C` ([`super::conn::PINNED_SETTINGS`]). Generated
//! columns are included (the target computes the same values).
//!
//! # Key ranges
//! [`range_fingerprints`] answers many key ranges of one table at once (the cutover bisects a
//! table that differs down to the ranges that hold the difference): the same digest per range,
//! plus the smallest and largest key in it, all ranges in one transaction and one scan.
//!
//! # Sequences and large objects
//! Sequences: `last_value/is_called` by name. Large objects: by OID, the owner, the ACL entries
//! (sorted), the size and a SHA-256 over the MD5s of its 1 MiB pieces (computed by the server, so
//! only digests cross the connection).

use std::collections::BTreeMap;

use hostshift_shared::digest::StreamHasher;
use hostshift_shared::model::{LargeObjectFingerprint, SequencePosition, TableRef};

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::large_objects::LO_CHUNK_BYTES;
use super::ranges::KeyRange;
use super::select::Selection;
use super::sequences;
use super::sql;
use super::tables::{self, TableInfo};

/// The fingerprint of a table or of one key range of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableFingerprint {
    /// Row count.
    pub rows: i64,
    /// 32 hex digits, independent of row order.
    pub digest: String,
}

/// The two 64-bit hashes of a row's text `h`, each a term of a `numeric` sum.
const HALF_1: &str = "pg_catalog.hashtextextended(h, 0)";
const HALF_2: &str = "pg_catalog.hashtextextended(h, 1)";
/// The row's text, hashed as bytes (`h` of [`HALF_1`] and [`HALF_2`]).
const ROW_TEXT: &str = "(ROW(t.*)::text) COLLATE \"C\"";

/// The digest of two (possibly `NULL` = no rows) sums of the halves. Every table and range
/// fingerprint goes through this one expression, so a range fingerprint of the whole table equals
/// the table's fingerprint.
fn digest_expr(sum_1: &str, sum_2: &str) -> String {
    format!("md5(coalesce({sum_1}, 0)::text || '/' || coalesce({sum_2}, 0)::text)")
}

fn table_sql(table: &TableInfo, range: Option<&KeyRange>) -> String {
    format!(
        "SELECT count(*), {}
         FROM (SELECT {ROW_TEXT} AS h FROM {} AS t WHERE {} OFFSET 0) AS rows",
        digest_expr(&format!("sum({HALF_1})"), &format!("sum({HALF_2})")),
        table.relation_sql(),
        range.map_or_else(|| "TRUE".to_string(), KeyRange::predicate)
    )
}

/// The `count(*), digest` query over the rows of `from` (a quoted relation or a parenthesized
/// query), computed as a table's fingerprint: materialized views use it.
pub(crate) fn rows_fingerprint_sql(from: &str) -> String {
    format!(
        "SELECT count(*), {}
         FROM (SELECT {ROW_TEXT} AS h FROM {from} AS t OFFSET 0) AS rows",
        digest_expr(&format!("sum({HALF_1})"), &format!("sum({HALF_2})")),
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

/// The fingerprint of every table `selection` selects, in one read-only transaction (one
/// consistent view of the database).
///
/// # Errors
/// [`PgSyncError::Query`] naming the table that could not be read.
pub async fn database_fingerprint(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<TableRef, TableFingerprint>, PgSyncError> {
    database_fingerprint_at(conn, selection, None).await
}

/// [`database_fingerprint`] on `snapshot` when given: the tables as they were when it was
/// exported, whatever was written since (the cutover's proof after the switch).
///
/// # Errors
/// [`PgSyncError::Query`] naming the table that could not be read; importing a snapshot that is
/// no longer held fails.
pub async fn database_fingerprint_at(
    conn: &Conn,
    selection: &Selection,
    snapshot: Option<&SnapshotId>,
) -> Result<BTreeMap<TableRef, TableFingerprint>, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let result: Result<_, PgSyncError> = async {
        let mut out = BTreeMap::new();
        for t in tables::tables_in_tx(conn, selection).await? {
            let fp = table_in_tx(conn, &t, None).await?;
            out.insert(t.table.clone(), fp);
        }
        Ok(out)
    }
    .await;
    conn.end_read_only().await?;
    result
}

/// The fingerprint of one key range of a table ([`range_fingerprints`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RangeFingerprint {
    /// Rows in the range.
    pub rows: i64,
    /// 32 hex digits, computed as [`TableFingerprint::digest`].
    pub digest: String,
    /// Smallest key in the range (`None`: empty, or the table has no integer key).
    pub min_key: Option<i64>,
    /// Largest key in the range.
    pub max_key: Option<i64>,
}

/// Most ranges one [`range_fingerprints`] call accepts (the bucket array is about twice as long).
pub const MAX_REQUEST_RANGES: usize = 4 * super::ranges::MAX_RANGES as usize;

/// Fingerprints of `ranges` of `table`, one per range in request order, all in one read-only
/// transaction (on `snapshot` when given). No ranges = the whole table as one entry, whose digest
/// equals [`table_fingerprint`]'s (with min/max of the integer key when it has one).
///
/// # One statement for all ranges
/// Each row is assigned to its range by `width_bucket(key, bounds)` — a binary search over the
/// sorted distinct bounds of all ranges — and an array mapping each elementary bucket to the range
/// holding it (or to none: the gaps between non-contiguous ranges); the sums are grouped by range.
/// The `WHERE` clause is the union of the ranges with touching ranges merged, so the planner picks
/// the access path: for a full split the union is unbounded (one sequential scan instead of one
/// per range), for a few narrow ranges it is a `BitmapOr` of index range scans (only the rows
/// asked for are read). Separate queries would pay a round trip and a plan per range and, for a
/// full split, read the table once per range; a `CASE` over the ranges costs O(ranges) per row
/// where the bucket search costs O(log ranges). Ranges that overlap cannot share one bucket, so a
/// request with overlapping ranges falls back to one query per range (still one transaction).
///
/// # Errors
/// [`PgSyncError::InvalidInput`] when ranges are given for a table without an integer key, a
/// range names another column, or there are more than [`MAX_REQUEST_RANGES`];
/// [`PgSyncError::Query`] naming the table when it cannot be read.
pub async fn range_fingerprints(
    conn: &Conn,
    table: &TableInfo,
    ranges: &[KeyRange],
    snapshot: Option<&SnapshotId>,
) -> Result<Vec<RangeFingerprint>, PgSyncError> {
    let invalid = |reason: String| PgSyncError::InvalidInput {
        database: conn.database().to_string(),
        what: format!("key ranges of table {}", table.table),
        reason,
    };
    if ranges.len() > MAX_REQUEST_RANGES {
        return Err(invalid(format!(
            "{} ranges in one request; at most {MAX_REQUEST_RANGES}",
            ranges.len()
        )));
    }
    let key = table.int_key.as_deref();
    if !ranges.is_empty() {
        let Some(key) = key else {
            return Err(invalid(
                "the table has no single-column integer primary key, so it can only be \
                 fingerprinted whole (send no ranges)"
                    .into(),
            ));
        };
        if let Some(r) = ranges.iter().find(|r| r.column != key) {
            return Err(invalid(format!(
                "range {r} is on column {:?}, but the table's key is {key:?}",
                r.column
            )));
        }
    }
    conn.begin_read_only(snapshot).await?;
    let result = ranges_in_tx(conn, table, key, ranges).await;
    conn.end_read_only().await?;
    result
}

async fn ranges_in_tx(
    conn: &Conn,
    table: &TableInfo,
    key: Option<&str>,
    ranges: &[KeyRange],
) -> Result<Vec<RangeFingerprint>, PgSyncError> {
    let err = |e: tokio_postgres::Error| conn.err(Some(&table.table), "fingerprint key ranges", &e);
    let one = |row: &tokio_postgres::Row, at: usize| RangeFingerprint {
        rows: row.get(at),
        digest: row.get(at + 1),
        min_key: row.get(at + 2),
        max_key: row.get(at + 3),
    };
    if ranges.is_empty() {
        let row = conn
            .client()
            .query_one(&single_sql(table, key, "TRUE"), &[])
            .await
            .map_err(err)?;
        return Ok(vec![one(&row, 0)]);
    }
    let (Some(key), Some(plan)) = (key, BucketPlan::new(ranges)) else {
        // Overlapping ranges: one statement per range.
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let row = conn
                .client()
                .query_one(&single_sql(table, key, &r.predicate()), &[])
                .await
                .map_err(err)?;
            out.push(one(&row, 0));
        }
        return Ok(out);
    };
    let count = i32::try_from(ranges.len()).unwrap_or(i32::MAX);
    let rows = conn
        .client()
        .query(
            &bucket_sql(table, key, &plan.union_predicate(key)),
            &[&plan.range_of_bucket, &plan.bounds, &count],
        )
        .await
        .map_err(err)?;
    Ok(rows.iter().map(|r| one(r, 1)).collect())
}

/// Count, digest, min and max key of the rows matching `predicate`.
fn single_sql(table: &TableInfo, key: Option<&str>, predicate: &str) -> String {
    let k = key.map_or_else(
        || "NULL::int8".to_string(),
        |k| format!("t.{}::int8", sql::ident(k)),
    );
    format!(
        "SELECT count(*), {}, min(k), max(k)
         FROM (SELECT {ROW_TEXT} AS h, {k} AS k FROM {} AS t WHERE {predicate} OFFSET 0) AS rows",
        digest_expr(&format!("sum({HALF_1})"), &format!("sum({HALF_2})")),
        table.relation_sql(),
    )
}

/// Per range index 0..$3: count, digest, min and max key, in one scan. `$1` maps each
/// `width_bucket` result (plus one: arrays are 1-based) to a range index or `NULL`, `$2` is the
/// sorted bound array.
fn bucket_sql(table: &TableInfo, key: &str, union: &str) -> String {
    let col = sql::ident(key);
    format!(
        "SELECT i, coalesce(g.n, 0::int8), {}, g.lo, g.hi
         FROM generate_series(0, $3::int4 - 1) AS i
         LEFT JOIN (
             SELECT r, count(*) AS n, sum({HALF_1}) AS s1, sum({HALF_2}) AS s2,
                    min(k) AS lo, max(k) AS hi
             FROM (SELECT ($1::int4[])[pg_catalog.width_bucket(t.{col}::int8, $2::int8[]) + 1] AS r,
                          {ROW_TEXT} AS h, t.{col}::int8 AS k
                   FROM {} AS t WHERE {union} OFFSET 0) AS rows
             WHERE r IS NOT NULL
             GROUP BY r
         ) AS g ON g.r = i
         ORDER BY i",
        digest_expr("g.s1", "g.s2"),
        table.relation_sql(),
    )
}

/// How rows are assigned to non-overlapping ranges with `width_bucket`.
#[derive(Debug, PartialEq, Eq)]
struct BucketPlan {
    /// Distinct finite bounds of all ranges, ascending: `width_bucket` returns `w` in `0..=len`
    /// for a key in `[bounds[w-1], bounds[w])` (unbounded at the ends).
    bounds: Vec<i64>,
    /// Per `w`: the index of the range holding that bucket, or `None` (a gap).
    range_of_bucket: Vec<Option<i32>>,
    /// The union of the non-empty ranges, touching ones merged, ascending.
    union: Vec<(Option<i64>, Option<i64>)>,
}

impl BucketPlan {
    /// The plan, or `None` when two non-empty ranges overlap.
    fn new(ranges: &[KeyRange]) -> Option<Self> {
        let nonempty = |r: &&KeyRange| !matches!((r.lo, r.hi), (Some(lo), Some(hi)) if lo >= hi);
        let mut bounds: Vec<i64> = ranges
            .iter()
            .filter(nonempty)
            .flat_map(|r| [r.lo, r.hi])
            .flatten()
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut range_of_bucket = vec![None; bounds.len() + 1];
        // Every bound is in `bounds`, so the searches succeed.
        let at = |b: i64| bounds.binary_search(&b).unwrap_or_default();
        for (i, r) in ranges.iter().enumerate().filter(|(_, r)| nonempty(r)) {
            let first = r.lo.map_or(0, |lo| at(lo) + 1);
            let last = r.hi.map_or(bounds.len(), at);
            for slot in &mut range_of_bucket[first..=last] {
                if slot.is_some() {
                    return None;
                }
                *slot = Some(i32::try_from(i).ok()?);
            }
        }
        let mut sorted: Vec<&KeyRange> = ranges.iter().filter(nonempty).collect();
        // `None` sorts first: the range unbounded below leads.
        sorted.sort_by_key(|r| r.lo);
        let mut union: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        for r in sorted {
            match union.last_mut() {
                Some((_, hi)) if hi.is_some() && *hi == r.lo => *hi = r.hi,
                _ => union.push((r.lo, r.hi)),
            }
        }
        Some(Self {
            bounds,
            range_of_bucket,
            union,
        })
    }

    /// The `WHERE` condition covering exactly the union (`FALSE` when every range is empty).
    fn union_predicate(&self, key: &str) -> String {
        if self.union.is_empty() {
            return "FALSE".into();
        }
        self.union
            .iter()
            .map(|&(lo, hi)| {
                let r = KeyRange {
                    column: key.to_string(),
                    lo,
                    hi,
                };
                format!("({})", r.predicate())
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// The position of every selected sequence.
///
/// # Errors
/// [`PgSyncError::Query`] naming the sequence that could not be read.
pub async fn sequence_fingerprint(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<TableRef, SequencePosition>, PgSyncError> {
    let values = sequences::read_sequences(conn, selection, None).await?;
    Ok(values
        .into_iter()
        .map(|v| {
            (
                v.sequence,
                SequencePosition {
                    last_value: v.last_value,
                    is_called: v.is_called,
                },
            )
        })
        .collect())
}

/// Per large object (by OID): owner, ACL, size and digest, in one read-only transaction.
///
/// # Errors
/// [`PgSyncError::Query`] when a large object cannot be read (the session needs `SELECT` on it).
pub async fn large_object_fingerprint(
    conn: &Conn,
) -> Result<BTreeMap<u32, LargeObjectFingerprint>, PgSyncError> {
    large_object_fingerprint_at(conn, None).await
}

/// [`large_object_fingerprint`] on `snapshot` when given (large objects are versioned like rows).
///
/// # Errors
/// As [`large_object_fingerprint`].
pub async fn large_object_fingerprint_at(
    conn: &Conn,
    snapshot: Option<&SnapshotId>,
) -> Result<BTreeMap<u32, LargeObjectFingerprint>, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let result = large_objects_in_tx(conn).await;
    conn.end_read_only().await?;
    result
}

async fn large_objects_in_tx(
    conn: &Conn,
) -> Result<BTreeMap<u32, LargeObjectFingerprint>, PgSyncError> {
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
            LargeObjectFingerprint {
                owner: m.get::<_, String>(1),
                acl: m.get::<_, String>(2),
                bytes: size,
                sha256: digest.to_string(),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: Option<i64>, hi: Option<i64>) -> KeyRange {
        KeyRange {
            column: "id".into(),
            lo,
            hi,
        }
    }

    #[test]
    fn a_full_split_is_one_unbounded_scan_with_a_bucket_per_range() {
        let split = super::super::ranges::ranges_between("id", 1, 1000, 4);
        let plan = BucketPlan::new(&split).expect("no overlap");
        assert_eq!(plan.bounds, vec![251, 501, 751]);
        assert_eq!(
            plan.range_of_bucket,
            vec![Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(plan.union_predicate("id"), "(TRUE)");
    }

    #[test]
    fn gaps_map_to_no_range_and_the_union_covers_only_the_ranges() {
        // Requested out of order, with a gap [20, 50) and [60, ..) not asked for.
        let plan = BucketPlan::new(&[
            r(Some(50), Some(60)),
            r(None, Some(10)),
            r(Some(10), Some(20)),
        ])
        .expect("no overlap");
        assert_eq!(plan.bounds, vec![10, 20, 50, 60]);
        // Buckets: (..10) [10,20) [20,50) [50,60) [60..)
        assert_eq!(
            plan.range_of_bucket,
            vec![Some(1), Some(2), None, Some(0), None]
        );
        assert_eq!(
            plan.union_predicate("id"),
            "(\"id\" < 20) OR (\"id\" >= 50 AND \"id\" < 60)"
        );
    }

    #[test]
    fn overlapping_ranges_have_no_bucket_plan_and_empty_ranges_take_no_bucket() {
        assert_eq!(
            BucketPlan::new(&[r(None, Some(10)), r(Some(5), None)]),
            None
        );
        assert_eq!(BucketPlan::new(&[r(None, None), r(Some(5), Some(6))]), None);
        let plan =
            BucketPlan::new(&[r(Some(7), Some(7)), r(Some(9), Some(3))]).expect("empty ranges");
        assert_eq!(plan.bounds, Vec::<i64>::new());
        assert_eq!(plan.range_of_bucket, vec![None]);
        assert_eq!(plan.union_predicate("id"), "FALSE");
    }

    #[test]
    fn every_fingerprint_query_uses_the_same_digest_expression() {
        let t = TableInfo {
            table: super::super::select::TableRef::new("public", "t"),
            kind: super::super::tables::TableKind::Ordinary,
            columns: vec!["id".into()],
            format: super::super::tables::CopyFormat::Binary,
            int_key: Some("id".into()),
            estimated_rows: None,
            estimated_bytes: 0,
        };
        let whole = digest_expr(&format!("sum({HALF_1})"), &format!("sum({HALF_2})"));
        assert!(table_sql(&t, None).contains(&whole));
        assert!(single_sql(&t, Some("id"), "TRUE").contains(&whole));
        assert!(bucket_sql(&t, "id", "TRUE").contains(&digest_expr("g.s1", "g.s2")));
    }
}
