//! Splitting a large table into primary-key ranges, so that one table does not hold the copy
//! hostage: each range is copied (and can be fingerprinted, retried and resumed) on its own
//! connection, in parallel with the others.
//!
//! Only tables whose primary key is a single `smallint`/`integer`/`bigint` column are split
//! ([`TableInfo::int_key`]); others are copied whole. The split is arithmetic on `min`/`max` of
//! the key (two index lookups), not a scan: ranges have equal key spans, so sparse keys give
//! uneven row counts but never a missed row. The first range has no lower bound and the last no
//! upper bound, so the ranges cover every possible key whatever was inserted after the split.
//!
//! A first copy splits by heap pages instead where it can ([`split_pages`]): all its pieces are
//! read in one snapshot, and a page range costs the old server a third of a key range.

use super::conn::Conn;
use super::copy::PageRange;
use super::error::PgSyncError;
use super::tables::{TableInfo, TableKind};

/// Most ranges one table is split into.
pub const MAX_RANGES: u64 = 1024;

pub use hostshift_shared::model::KeyRange;

/// Splits `table` into ranges of about `target_rows_per_range` rows (by the planner's row
/// estimate, or the key span when the table was never analyzed), reading `min`/`max` of the key
/// in a read-only transaction.
///
/// Returns at least two ranges, contiguous and covering every key — or an empty list when the
/// table should be copied in one piece (`range = None`): no integer primary key, empty, or small
/// enough.
///
/// # Errors
/// [`PgSyncError::Query`] when the table cannot be read.
pub async fn split_ranges(
    conn: &Conn,
    table: &TableInfo,
    target_rows_per_range: u64,
) -> Result<Vec<KeyRange>, PgSyncError> {
    let Some(column) = &table.int_key else {
        return Ok(Vec::new());
    };
    let col = super::sql::ident(column);
    let query = format!(
        "SELECT min({col})::int8, max({col})::int8 FROM {}",
        table.relation_sql()
    );
    conn.begin_read_only(None).await?;
    let row = conn.client().query_one(&query, &[]).await;
    conn.end_read_only().await?;
    let row = row.map_err(|e| conn.err(Some(&table.table), "read the key's bounds", &e))?;
    let (Some(min), Some(max)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
    else {
        return Ok(Vec::new());
    };
    let span = (i128::from(max) - i128::from(min) + 1) as u128;
    let rows = table
        .estimated_rows
        .filter(|n| *n > 0)
        .map_or(span, |n| n as u128);
    let target = u128::from(target_rows_per_range.max(1));
    let n = rows.div_ceil(target).min(u128::from(MAX_RANGES)).min(span) as u64;
    Ok(ranges_between(column, min, max, n))
}

/// Splits an ordinary `table` into ranges of its heap pages of about `target_rows_per_range` rows
/// each (by the planner's row estimate), for a first copy whose pieces are all read in one
/// snapshot ([`PageRange`]): the server then reads each page once and no index at all.
///
/// Returns at least two ranges, from page 0 to the table's end — or an empty list (split by key
/// instead, or copy whole) when the server cannot read a page range alone (before PostgreSQL 14
/// a `ctid` condition reads the whole table), the table is partitioned or was never analyzed,
/// or it is small enough.
///
/// # Errors
/// [`PgSyncError::Query`] when its size cannot be read.
pub async fn split_pages(
    conn: &Conn,
    table: &TableInfo,
    target_rows_per_range: u64,
) -> Result<Vec<PageRange>, PgSyncError> {
    let Some(rows) = table.estimated_rows.filter(|n| *n > 0) else {
        return Ok(Vec::new());
    };
    if table.kind != TableKind::Ordinary {
        return Ok(Vec::new());
    }
    let row = conn
        .client()
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4, \
             (pg_catalog.pg_relation_size(pg_catalog.to_regclass($1)) \
              / pg_catalog.current_setting('block_size')::int8)::int8",
            &[&table.table.qualified()],
        )
        .await
        .map_err(|e| conn.err(Some(&table.table), "read the table's size in pages", &e))?;
    let (version, pages) = (row.get::<_, i32>(0), row.get::<_, Option<i64>>(1));
    let Some(pages) = pages.filter(|_| version >= 140_000) else {
        return Ok(Vec::new());
    };
    let n = (rows as u64)
        .div_ceil(target_rows_per_range.max(1))
        .min(MAX_RANGES);
    Ok(PageRange::split(
        u32::try_from(pages).unwrap_or(u32::MAX),
        n as u32,
    ))
}

/// `n` contiguous ranges over `[min, max]` with equal key spans, the first unbounded below and the
/// last unbounded above; empty when `n < 2` or the span is one key.
pub fn ranges_between(column: &str, min: i64, max: i64, n: u64) -> Vec<KeyRange> {
    let bounds = hostshift_shared::keyspan::cut_points(min, max, n);
    if bounds.is_empty() {
        return Vec::new();
    }
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for b in bounds {
        ranges.push(KeyRange {
            column: column.to_string(),
            lo,
            hi: Some(b),
        });
        lo = Some(b);
    }
    ranges.push(KeyRange {
        column: column.to_string(),
        lo,
        hi: None,
    });
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_contiguously(r: &[KeyRange]) {
        assert_eq!(
            r.first().and_then(|k| k.lo),
            None,
            "first is unbounded below"
        );
        assert_eq!(r.last().and_then(|k| k.hi), None, "last is unbounded above");
        for w in r.windows(2) {
            assert_eq!(w[0].hi, w[1].lo, "{} then {}", w[0], w[1]);
            assert!(w[0].hi.is_some());
        }
    }

    #[test]
    fn ranges_are_contiguous_and_cover_every_key() {
        let r = ranges_between("id", 1, 1000, 4);
        assert_eq!(r.len(), 4);
        covers_contiguously(&r);
        assert_eq!(r[1].lo, Some(251));
        assert_eq!(r[0].predicate(), "\"id\" < 251");
        assert_eq!(r[1].predicate(), "\"id\" >= 251 AND \"id\" < 501");
        assert_eq!(r[3].predicate(), "\"id\" >= 751");
        assert_eq!(r[1].to_string(), "id in [251, 501)");
    }

    #[test]
    fn extreme_bounds_do_not_overflow() {
        let r = ranges_between("id", i64::MIN, i64::MAX, 3);
        assert_eq!(r.len(), 3);
        covers_contiguously(&r);
        let r = ranges_between("id", -5, 5, 100);
        assert_eq!(r.len(), 11);
        covers_contiguously(&r);
    }

    #[test]
    fn too_few_keys_or_pieces_mean_no_split() {
        assert!(ranges_between("id", 1, 1000, 1).is_empty());
        assert!(ranges_between("id", 7, 7, 4).is_empty());
        let whole = KeyRange {
            column: "id".into(),
            lo: None,
            hi: None,
        };
        assert_eq!(whole.predicate(), "TRUE");
    }
}
