//! The database delta: which key ranges of a table differ between the old and the new host,
//! found by comparing order-independent fingerprints of ranges (the agents' `RangeFingerprints`)
//! and narrowing down, so that a rerun of `sync` — and the cutover's final delta inside the write
//! freeze — copies only the rows that changed instead of whole tables.
//!
//! # The search
//! 1. The whole table on both sides, in one call each (old: on the sync's snapshot). Equal →
//!    done: most tables of a quiet database stop here. (A big table skips this step when no
//!    baseline is needed — a plain sync rerun, not the cutover: its first ranges come from the
//!    old agent's key bounds, saving a scan per side when the table did change.)
//! 2. A table without a single-integer primary key cannot be split: it is copied whole.
//! 3. Otherwise the key span seen on *either* side (`min`/`max` of both) is cut into ranges of
//!    about [`LEAF_ROWS`] rows (at most [`MAX_RANGES`] per call), the first open below and the last
//!    open above so that no key on either side escapes. One call per side fingerprints all of them
//!    (one scan). Differing ranges that still hold more than [`LEAF_ROWS`] rows are cut again the
//!    same way, within their own bounds, up to [`MAX_DEPTH`] levels; the rest are the delta.
//! 4. Adjacent differing ranges are merged into pieces of up to [`PIECE_ROWS`] rows, so a burst
//!    of new rows at the end of a table travels as one stream, and a big change as a few that
//!    copy in parallel.
//!
//! Narrowing stops early at a level where more than half of the ranges differ: changes spread
//! over a whole table would otherwise cost a scan per level only to find that nearly
//! everything differs.
//!
//! A range that differs is re-copied by deleting its rows on the new host and loading the old
//! host's rows of that range, in one transaction (`delete-range`). Rows that only exist on the new
//! host fall into some range too (the outer ranges are open), so they are deleted.
//!
//! Cost: one scan of each table on each host for step 1, and one more of each *changed* table per
//! level — both hosts work in parallel. Changes spread thinly over a whole table (1 % of rows,
//! uniformly) defeat any range delta: nearly every range then differs, and the delta costs about
//! a full copy of that table plus two scans.

use hostshift_proto::v1::{
    RangeFingerprint, RangeFingerprintsRequest, SplitRangesRequest, SplitRangesResponse,
};
use hostshift_shared::model::{Fingerprint, KeyRange, Malformed, PageRange, TableInfo};

use super::UnitError;
use super::selection::Selections;
use crate::client::Agent;

/// A differing range is cut further while it holds more rows than this.
pub const LEAF_ROWS: i64 = 2_000;
/// Most ranges asked for in one call.
pub const MAX_RANGES: i64 = 1_024;
/// Levels of narrowing below the whole table.
pub const MAX_DEPTH: usize = 3;
/// Narrowing stops at a level where more than this fraction of the compared ranges differ
/// (numerator / denominator): changes spread that thinly are cheaper to copy than to chase.
const SPREAD_NUMERATOR: usize = 1;
const SPREAD_DENOMINATOR: usize = 2;
/// Adjacent differing ranges merge into pieces of at most this many rows (the first copy's
/// piece size), so they still travel two at a time.
pub const PIECE_ROWS: i64 = 250_000;

/// What differs in one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableDelta {
    /// Equal on both hosts.
    Equal,
    /// Copy it whole (no integer key to split by).
    Whole,
    /// Copy these ranges (merged, in key order).
    Ranges(Vec<KeyRange>),
}

/// The outcome for one table: the delta and, when asked for (`baseline`), the old host's
/// whole-table fingerprint at the start (`rows/digest`, the same form as the agents'
/// `Fingerprint`), which the cutover compares with the old host's fingerprint at the end of the
/// freeze.
#[derive(Clone, Debug)]
pub struct Found {
    /// What to copy.
    pub delta: TableDelta,
    /// The old host's fingerprint when the delta began (empty without `baseline`).
    pub old_fingerprint: String,
    /// Fingerprint calls made per side (for the report).
    pub calls: usize,
}

/// `n` ranges cutting `[min, max]` in equal key spans, the first starting at `within.lo` and the
/// last ending at `within.hi` (the enclosing range's own bounds), so together they cover exactly
/// it.
pub fn cut(within: &KeyRange, min: i64, max: i64, n: i64) -> Vec<KeyRange> {
    let (lo, hi) = (within.lo, within.hi);
    let range = |lo, hi| KeyRange::new(&within.column, lo, hi);
    let whole = vec![within.clone()];
    if n < 2 || max <= min {
        return whole;
    }
    let bounds: Vec<i64> = hostshift_shared::keyspan::cut_points(min, max, n as u64)
        .into_iter()
        // Inside the enclosing range only.
        .filter(|b| lo.is_none_or(|l| *b > l) && hi.is_none_or(|h| *b < h))
        .collect();
    if bounds.is_empty() {
        return whole;
    }
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut at = lo;
    for b in bounds {
        out.push(range(at, Some(b)));
        at = Some(b);
    }
    out.push(range(at, hi));
    out
}

/// Merges ranges that touch (`a.hi == b.lo`) into pieces of at most `cap` rows (by the old
/// host's counts), so a burst of changes travels as a few streams that still copy in parallel.
/// Expects key order.
pub fn merge(ranges: Vec<(KeyRange, i64)>, cap: i64) -> Vec<KeyRange> {
    let mut out: Vec<(KeyRange, i64)> = Vec::with_capacity(ranges.len());
    for (r, rows) in ranges {
        match out.last_mut() {
            Some((last, n)) if last.hi.is_some() && last.hi == r.lo && *n + rows <= cap => {
                last.hi = r.hi;
                *n += rows;
            }
            _ => out.push((r, rows)),
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

fn fp(f: &RangeFingerprint) -> Fingerprint {
    Fingerprint::from(f)
}

async fn both(
    old: &Agent,
    new: &Agent,
    sel: &Selections,
    table: &TableInfo,
    ranges: &[KeyRange],
    snapshot: &str,
) -> Result<(Vec<RangeFingerprint>, Vec<RangeFingerprint>), UnitError> {
    let n = ranges.len().max(1);
    let req = |database: &str, snapshot: &str| RangeFingerprintsRequest {
        database: database.into(),
        table: Some(table.clone().into()),
        ranges: ranges.iter().cloned().map(Into::into).collect(),
        snapshot: snapshot.into(),
    };
    let (mut a, mut b) = (old.database(), new.database());
    let (fa, fb) = tokio::join!(
        a.range_fingerprints(req(&sel.old.database, snapshot)),
        b.range_fingerprints(req(&sel.new.database, ""))
    );
    let fa = fa.map_err(UnitError::from_status)?.into_inner().ranges;
    let fb = fb.map_err(UnitError::from_status)?.into_inner().ranges;
    if fa.len() != n || fb.len() != n {
        return Err(UnitError::other(format!(
            "an agent answered {} / {} range fingerprints for {n} ranges: are both agents the same version?",
            fa.len(),
            fb.len()
        )));
    }
    Ok((fa, fb))
}

fn span(a: &RangeFingerprint, b: &RangeFingerprint) -> Option<(i64, i64)> {
    let min = [a.min_key, b.min_key].into_iter().flatten().min()?;
    let max = [a.max_key, b.max_key].into_iter().flatten().max()?;
    Some((min, max))
}

fn pieces(rows: i64) -> i64 {
    (rows + LEAF_ROWS - 1) / LEAF_ROWS
}

/// The old agent's key ranges for a first level (its `SplitRanges`), checked: each range well
/// formed, together covering every key of `column`.
///
/// # Errors
/// The agent failing, or its answer malformed ([`Malformed`] naming the field, e.g.
/// `ranges[3].lo`).
pub async fn split(
    old: &Agent,
    database: &str,
    table: &TableInfo,
    column: &str,
    rows_per_range: u64,
) -> Result<Vec<KeyRange>, UnitError> {
    let ranges = split_request(old, database, table, rows_per_range, false)
        .await?
        .ranges;
    checked_split(ranges, column).map_err(|e| malformed_split(table, &e))
}

/// How a first copy splits a big table ([`first_copy_split`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstCopySplit {
    /// Copied in one piece.
    Whole,
    /// Ranges of its integer key.
    Keys(Vec<KeyRange>),
    /// Ranges of its heap pages (the old server reads each page once, no index): only inside
    /// one snapshot, which a first copy's pieces share.
    Pages(Vec<PageRange>),
}

/// The pieces of a big table for a first copy, from the old agent: heap-page ranges where its
/// server reads a page range alone (PostgreSQL 14+, an ordinary table — with or without an
/// integer key), key ranges where it does not, the whole table when neither applies.
///
/// # Errors
/// The agent failing, or answering ranges that do not cover the table.
pub async fn first_copy_split(
    old: &Agent,
    database: &str,
    table: &TableInfo,
    rows_per_range: u64,
) -> Result<FirstCopySplit, UnitError> {
    let r = split_request(old, database, table, rows_per_range, true).await?;
    if !r.pages.is_empty() {
        return PageRange::cover_from_proto(r.pages, "pages")
            .map(FirstCopySplit::Pages)
            .map_err(|e| malformed_split(table, &e));
    }
    match (&table.int_key, r.ranges.is_empty()) {
        (_, true) => Ok(FirstCopySplit::Whole),
        (Some(column), false) => checked_split(r.ranges, column)
            .map(FirstCopySplit::Keys)
            .map_err(|e| malformed_split(table, &e)),
        (None, false) => Err(UnitError::other(format!(
            "the old agent's split of {}: key ranges of a table without an integer key (are both agents and the CLI the same version?)",
            table.table
        ))),
    }
}

async fn split_request(
    old: &Agent,
    database: &str,
    table: &TableInfo,
    rows_per_range: u64,
    by_pages: bool,
) -> Result<SplitRangesResponse, UnitError> {
    Ok(old
        .database()
        .split_ranges(SplitRangesRequest {
            database: database.to_string(),
            table: Some(table.clone().into()),
            rows_per_range,
            by_pages,
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner())
}

fn malformed_split(table: &TableInfo, e: &Malformed) -> UnitError {
    UnitError::other(format!("the old agent's split of {}: {e}", table.table))
}

/// A `SplitRanges` answer as ranges of `column` that cover every key.
///
/// # Errors
/// [`Malformed`] naming the field.
pub fn checked_split(
    ranges: Vec<hostshift_proto::v1::KeyRange>,
    column: &str,
) -> Result<Vec<KeyRange>, Malformed> {
    let ranges = KeyRange::list_from_proto(ranges, "ranges")?;
    KeyRange::check_cover(&ranges, column, "ranges")?;
    Ok(ranges)
}

/// Finds what differs in one table.
///
/// # Errors
/// An agent failing or answering out of shape.
pub async fn find(
    old: &Agent,
    new: &Agent,
    sel: &Selections,
    table: &TableInfo,
    snapshot: &str,
    baseline: bool,
) -> Result<Found, UnitError> {
    let key = table.int_key.clone();
    // Never analyzed: no estimate, so no shortcut.
    let estimated = table.estimated_rows.unwrap_or(0);
    // Without a baseline to record, a big table skips the whole-table comparison: its first
    // level of ranges comes from the old agent's key bounds (two index lookups, no scan), so a
    // change spread over the table costs one scan per side instead of two.
    if let Some(column) = key
        .as_deref()
        .filter(|_| !baseline && estimated > PIECE_ROWS)
    {
        let first = split(
            old,
            &sel.old.database,
            table,
            column,
            (estimated / MAX_RANGES).max(LEAF_ROWS) as u64,
        )
        .await?;
        if !first.is_empty() {
            let (delta, calls) = narrow(old, new, sel, table, snapshot, first).await?;
            return Ok(Found {
                delta,
                old_fingerprint: String::new(),
                calls,
            });
        }
    }
    let (a, b) = both(old, new, sel, table, &[], snapshot).await?;
    let (a, b) = (&a[0], &b[0]);
    let old_fingerprint = fp(a).to_string();
    if fp(a) == fp(b) {
        return Ok(Found {
            delta: TableDelta::Equal,
            old_fingerprint,
            calls: 1,
        });
    }
    let (Some(column), Some((min, max))) = (key, span(a, b)) else {
        return Ok(Found {
            delta: TableDelta::Whole,
            old_fingerprint,
            calls: 1,
        });
    };
    let rows = a.rows.max(b.rows);
    if rows <= LEAF_ROWS {
        return Ok(Found {
            delta: TableDelta::Ranges(vec![KeyRange::new(&column, None, None)]),
            old_fingerprint,
            calls: 1,
        });
    }
    let whole = KeyRange::new(&column, None, None);
    let first = cut(&whole, min, max, pieces(rows).min(MAX_RANGES));
    let (delta, calls) = narrow(old, new, sel, table, snapshot, first).await?;
    Ok(Found {
        delta,
        old_fingerprint,
        calls: calls + 1,
    })
}

/// Compares `first` on both hosts, then cuts the differing ranges further, level by level (see
/// the module docs). Returns the delta and the number of fingerprint calls per side.
async fn narrow(
    old: &Agent,
    new: &Agent,
    sel: &Selections,
    table: &TableInfo,
    snapshot: &str,
    first: Vec<KeyRange>,
) -> Result<(TableDelta, usize), UnitError> {
    let mut calls = 0;
    let mut cuts = first;
    // Differing ranges with the old host's row count in each.
    let mut differ: Vec<(KeyRange, i64)> = Vec::new();
    for depth in 0..MAX_DEPTH {
        if cuts.is_empty() {
            break;
        }
        let compared = cuts.len();
        let (fa, fb) = both(old, new, sel, table, &cuts, snapshot).await?;
        calls += 1;
        let mut level: Vec<(KeyRange, i64, i64, i64, i64)> = Vec::new();
        for ((r, x), y) in std::mem::take(&mut cuts).into_iter().zip(&fa).zip(&fb) {
            if fp(x) == fp(y) {
                continue;
            }
            let (min, max) = span(x, y).unwrap_or((0, 0));
            level.push((r, min, max, x.rows.max(y.rows), x.rows));
        }
        // Changes spread over most of the ranges: narrowing further would scan again only to
        // find that nearly everything differs — copy these ranges now.
        let spread = level.len() * SPREAD_DENOMINATOR > compared * SPREAD_NUMERATOR;
        let last = depth + 1 == MAX_DEPTH || spread;
        let mut open = Vec::new();
        for (r, min, max, rows, old_rows) in level {
            if !last && rows > LEAF_ROWS && max > min {
                open.push((r, min, max, rows));
            } else {
                differ.push((r, old_rows));
            }
        }
        let budget = (MAX_RANGES / open.len().max(1) as i64).max(2);
        cuts = open
            .iter()
            .flat_map(|(r, min, max, rows)| cut(r, *min, *max, pieces(*rows).min(budget)))
            .collect();
    }
    if differ.is_empty() {
        return Ok((TableDelta::Equal, calls));
    }
    differ.sort_by_key(|(r, _)| r.lo.unwrap_or(i64::MIN));
    Ok((TableDelta::Ranges(merge(differ, PIECE_ROWS)), calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: Option<i64>, hi: Option<i64>) -> KeyRange {
        KeyRange::new("id", lo, hi)
    }

    #[test]
    fn cut_covers_the_enclosing_range_exactly() {
        let c = cut(&r(None, None), 1, 100, 4);
        assert_eq!(c.first().unwrap().lo, None);
        assert_eq!(c.last().unwrap().hi, None);
        assert_eq!(c.len(), 4);
        for w in c.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
        let inner = cut(&r(Some(26), Some(51)), 26, 50, 5);
        assert_eq!(inner.first().unwrap().lo, Some(26));
        assert_eq!(inner.last().unwrap().hi, Some(51));
        assert!(inner.len() >= 4, "{inner:?}");
        for w in inner.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
    }

    #[test]
    fn cut_of_one_key_or_one_piece_is_the_range_itself() {
        assert_eq!(
            cut(&r(Some(5), Some(6)), 5, 5, 8),
            vec![r(Some(5), Some(6))]
        );
        assert_eq!(cut(&r(None, None), 1, 1000, 1), vec![r(None, None)]);
    }

    #[test]
    fn cut_never_leaves_the_enclosing_bounds() {
        // Keys seen on either side may reach past a bound only for open ranges; bounded ones
        // keep their bounds whatever min/max say.
        let c = cut(&r(Some(10), Some(20)), 0, 100, 10);
        assert_eq!(c.first().unwrap().lo, Some(10));
        assert_eq!(c.last().unwrap().hi, Some(20));
        assert!(c.iter().all(|x| x.lo.unwrap() >= 10 && x.hi.unwrap() <= 20));
    }

    #[test]
    fn merge_joins_touching_ranges_only() {
        let m = merge(
            vec![
                (r(None, Some(10)), 5),
                (r(Some(10), Some(20)), 5),
                (r(Some(30), Some(40)), 5),
                (r(Some(40), None), 5),
            ],
            100,
        );
        assert_eq!(m, vec![r(None, Some(20)), r(Some(30), None)]);
    }

    #[test]
    fn merged_pieces_stay_under_the_row_cap() {
        let ranges: Vec<(KeyRange, i64)> = (0..10)
            .map(|i| (r(Some(i * 10), Some(i * 10 + 10)), 40))
            .collect();
        let m = merge(ranges, 100);
        // Two ranges of 40 rows fit under 100, a third does not.
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0], r(Some(0), Some(20)));
        for w in m.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
    }

    #[test]
    fn a_malformed_split_answer_names_the_field_never_an_open_range() {
        use hostshift_proto::v1::{KeyBound, key_bound::Bound};
        let at = |v| {
            Some(KeyBound {
                bound: Some(Bound::At(v)),
            })
        };
        let open = || {
            Some(KeyBound {
                bound: Some(Bound::Unbounded(hostshift_proto::v1::Unbounded {})),
            })
        };
        let range = |lo, hi| hostshift_proto::v1::KeyRange {
            column: "id".into(),
            lo,
            hi,
        };
        let good = vec![range(open(), at(10)), range(at(10), open())];
        assert_eq!(
            checked_split(good.clone(), "id").expect("well formed"),
            vec![r(None, Some(10)), r(Some(10), None)]
        );
        // The old code read a missing bound as "unbounded": a range that silently covered
        // every key below 10 again.
        let no_lo = vec![range(open(), at(10)), range(None, open())];
        let e = checked_split(no_lo, "id").expect_err("missing bound");
        assert_eq!(e.field, "ranges[1].lo");
        assert!(e.to_string().contains("`ranges[1].lo` is missing"), "{e}");
        let gap = vec![range(open(), at(10)), range(at(12), open())];
        let e = checked_split(gap, "id").expect_err("gap");
        assert_eq!(e.field, "ranges[1].lo");
        let e = checked_split(good, "key").expect_err("other column");
        assert_eq!(e.field, "ranges[0].column");
    }
}
