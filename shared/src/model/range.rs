//! [`KeyRange`]: a half-open range of a table's integer key, as the agent splits a big table for a
//! parallel copy and the coordinator's delta narrows a differing one; and its message, whose two
//! bounds must each say a key or "unbounded".

use std::fmt;

use hostshift_proto::v1 as pb;
use pb::key_bound::Bound;

use super::Malformed;
use crate::dbspec::ident;

const RANGE: &str = "key range";

/// A half-open range `[lo, hi)` of an integer key column; `None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// The key column.
    pub column: String,
    /// Inclusive lower bound.
    pub lo: Option<i64>,
    /// Exclusive upper bound.
    pub hi: Option<i64>,
}

impl KeyRange {
    /// A range of `column`.
    pub fn new(column: &str, lo: Option<i64>, hi: Option<i64>) -> Self {
        Self {
            column: column.to_string(),
            lo,
            hi,
        }
    }

    /// Whether both sides are unbounded (the whole table).
    pub fn is_whole(&self) -> bool {
        self.lo.is_none() && self.hi.is_none()
    }

    /// The `WHERE` condition selecting this range (`TRUE` when unbounded on both sides).
    pub fn predicate(&self) -> String {
        let col = ident(&self.column);
        match (self.lo, self.hi) {
            (None, None) => "TRUE".to_string(),
            (Some(lo), None) => format!("{col} >= {lo}"),
            (None, Some(hi)) => format!("{col} < {hi}"),
            (Some(lo), Some(hi)) => format!("{col} >= {lo} AND {col} < {hi}"),
        }
    }

    /// `[10, 20)`, `[.., 10)`: the bounds alone.
    pub fn describe(&self) -> String {
        let b = |v: Option<i64>| v.map_or_else(|| "..".to_string(), |v| v.to_string());
        format!("[{}, {})", b(self.lo), b(self.hi))
    }

    /// From its message: the column must be named and each bound must say a key or
    /// `unbounded`; a bounded range must not be empty (`lo < hi`).
    ///
    /// # Errors
    /// [`Malformed`] naming `column`, `lo` or `hi`.
    pub fn from_proto(m: pb::KeyRange) -> Result<Self, Malformed> {
        if m.column.is_empty() {
            return Err(Malformed::missing(RANGE, "column"));
        }
        let bound = |b: Option<pb::KeyBound>, field: &str| match b.and_then(|b| b.bound) {
            Some(Bound::At(v)) => Ok(Some(v)),
            Some(Bound::Unbounded(_)) => Ok(None),
            None => Err(Malformed::invalid(
                RANGE,
                field,
                "is missing (an open side says `unbounded`)",
            )),
        };
        let lo = bound(m.lo, "lo")?;
        let hi = bound(m.hi, "hi")?;
        if let (Some(l), Some(h)) = (lo, hi)
            && l >= h
        {
            return Err(Malformed::invalid(
                RANGE,
                "hi",
                format!("is {h}, not above lo {l}"),
            ));
        }
        Ok(Self {
            column: m.column,
            lo,
            hi,
        })
    }

    /// A list of ranges from their messages (`field` names the list, e.g. `ranges`).
    ///
    /// # Errors
    /// [`Malformed`] naming the entry and field (`ranges[2].lo`).
    pub fn list_from_proto(ms: Vec<pb::KeyRange>, field: &str) -> Result<Vec<Self>, Malformed> {
        ms.into_iter()
            .enumerate()
            .map(|(i, m)| Self::from_proto(m).map_err(|e| e.within(&format!("{field}[{i}]"))))
            .collect()
    }

    /// Checks that `ranges` split a table on `column` with nothing left out: the first is
    /// unbounded below, the last above, each starts where the one before ends (an empty list
    /// means "copy it whole" and passes).
    ///
    /// # Errors
    /// [`Malformed`] naming the entry that breaks the cover (`ranges[3].lo`).
    pub fn check_cover(ranges: &[Self], column: &str, field: &str) -> Result<(), Malformed> {
        let at = |i: usize, f: &str| format!("{field}[{i}].{f}");
        for (i, r) in ranges.iter().enumerate() {
            if r.column != column {
                return Err(Malformed::invalid(
                    RANGE,
                    &at(i, "column"),
                    format!("is {:?}, not the table's key {column:?}", r.column),
                ));
            }
            let expected_lo = if i == 0 { None } else { ranges[i - 1].hi };
            if r.lo != expected_lo || (i > 0 && expected_lo.is_none()) {
                return Err(Malformed::invalid(
                    RANGE,
                    &at(i, "lo"),
                    format!(
                        "is {}, but the ranges must continue without a gap from {}",
                        r.describe(),
                        if i == 0 {
                            "unbounded".to_string()
                        } else {
                            ranges[i - 1].describe()
                        }
                    ),
                ));
            }
        }
        if let Some(last) = ranges.last()
            && last.hi.is_some()
        {
            return Err(Malformed::invalid(
                RANGE,
                &at(ranges.len() - 1, "hi"),
                format!(
                    "is {}: the last range must be unbounded above",
                    last.describe()
                ),
            ));
        }
        Ok(())
    }
}

fn bound(v: Option<i64>) -> pb::KeyBound {
    pb::KeyBound {
        bound: Some(match v {
            Some(v) => Bound::At(v),
            None => Bound::Unbounded(pb::Unbounded {}),
        }),
    }
}

impl From<KeyRange> for pb::KeyRange {
    fn from(r: KeyRange) -> Self {
        Self {
            column: r.column,
            lo: Some(bound(r.lo)),
            hi: Some(bound(r.hi)),
        }
    }
}

/// `id in [10, 20)`, `id in [.., 10)`: for messages and map keys.
impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.column, self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_survives_its_message() {
        for r in [
            KeyRange::new("id", None, None),
            KeyRange::new("id", Some(-3), None),
            KeyRange::new("id", None, Some(i64::MAX)),
            KeyRange::new("id", Some(1), Some(2)),
        ] {
            assert_eq!(KeyRange::from_proto(r.clone().into()), Ok(r));
        }
    }

    #[test]
    fn a_missing_bound_is_an_error_naming_it_not_an_open_side() {
        let mut m = pb::KeyRange::from(KeyRange::new("id", Some(10), Some(20)));
        m.hi = None;
        let e = KeyRange::from_proto(m.clone()).expect_err("no hi");
        assert_eq!(e.field, "hi");
        assert!(e.to_string().contains("`hi` is missing"), "{e}");
        m.hi = Some(pb::KeyBound { bound: None });
        assert_eq!(KeyRange::from_proto(m).expect_err("empty hi").field, "hi");

        let list = vec![
            KeyRange::new("id", None, Some(5)).into(),
            pb::KeyRange {
                column: "id".into(),
                lo: None,
                hi: Some(bound(None)),
            },
        ];
        let e = KeyRange::list_from_proto(list, "ranges").expect_err("no lo");
        assert_eq!(e.field, "ranges[1].lo");
    }

    #[test]
    fn a_range_needs_a_column_and_lo_below_hi() {
        let m = pb::KeyRange::from(KeyRange::new("", Some(1), None));
        assert_eq!(KeyRange::from_proto(m).expect_err("column").field, "column");
        let m = pb::KeyRange::from(KeyRange::new("id", Some(5), Some(5)));
        assert_eq!(KeyRange::from_proto(m).expect_err("empty").field, "hi");
    }

    #[test]
    fn a_split_must_cover_every_key() {
        let r = |lo, hi| KeyRange::new("id", lo, hi);
        let good = [r(None, Some(10)), r(Some(10), Some(20)), r(Some(20), None)];
        assert_eq!(KeyRange::check_cover(&good, "id", "ranges"), Ok(()));
        assert_eq!(KeyRange::check_cover(&[], "id", "ranges"), Ok(()));
        let gap = [r(None, Some(10)), r(Some(11), None)];
        let e = KeyRange::check_cover(&gap, "id", "ranges").expect_err("gap");
        assert_eq!(e.field, "ranges[1].lo");
        let closed = [r(None, Some(10)), r(Some(10), Some(20))];
        let e = KeyRange::check_cover(&closed, "id", "ranges").expect_err("closed");
        assert_eq!(e.field, "ranges[1].hi");
        let other = [r(None, Some(10)), KeyRange::new("x", Some(10), None)];
        let e = KeyRange::check_cover(&other, "id", "ranges").expect_err("column");
        assert_eq!(e.field, "ranges[1].column");
        let twice_open = [r(None, None), r(None, None)];
        let e = KeyRange::check_cover(&twice_open, "id", "ranges").expect_err("open twice");
        assert_eq!(e.field, "ranges[1].lo");
    }

    #[test]
    fn predicates_and_descriptions() {
        assert_eq!(KeyRange::new("id", None, None).predicate(), "TRUE");
        assert_eq!(
            KeyRange::new("id", Some(251), Some(501)).predicate(),
            "\"id\" >= 251 AND \"id\" < 501"
        );
        assert_eq!(
            KeyRange::new("id", Some(251), Some(501)).to_string(),
            "id in [251, 501)"
        );
        assert_eq!(KeyRange::new("id", None, Some(3)).describe(), "[.., 3)");
    }
}
