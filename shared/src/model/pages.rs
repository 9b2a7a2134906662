//! [`PageRange`]: the rows stored in a half-open range of an ordinary table's heap pages — how a
//! first copy splits a big table when the old server reads a page range alone (PostgreSQL 14+'s
//! TID range scan): no index is read, and each page once, where a key range reads the index and
//! fetches its rows one by one (on `pgbench_accounts`, 52 against 18 ms of the server's time per
//! piece of 250,000 rows).
//!
//! A page range means the same rows only inside one snapshot: a row version the snapshot sees
//! keeps its place (page, line) as long as a snapshot sees it, and a row written later is not
//! seen. The first range starts at page 0 and the last is unbounded above, so the ranges cover
//! every row of the snapshot, whatever was written since. So they serve a first copy (every
//! piece read in the sync's snapshot), never a rerun's delta, which compares key ranges.

use std::fmt;

use hostshift_proto::v1 as pb;

use super::Malformed;

const PAGES: &str = "page range";

/// Heap pages `[from, to)`; `to = None` is unbounded (to the table's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PageRange {
    /// First page.
    pub from: u32,
    /// Exclusive last page.
    pub to: Option<u32>,
}

impl PageRange {
    /// `n` contiguous ranges over `pages` pages of about equal size, the first from page 0 and
    /// the last unbounded above; empty when `n < 2` or there are fewer pages than ranges.
    pub fn split(pages: u32, n: u32) -> Vec<Self> {
        if n < 2 || pages < n {
            return Vec::new();
        }
        let bound = |i: u32| (u64::from(pages) * u64::from(i) / u64::from(n)) as u32;
        (0..n)
            .map(|i| Self {
                from: bound(i),
                to: (i + 1 < n).then(|| bound(i + 1)),
            })
            .collect()
    }

    /// The `WHERE` condition selecting the rows of these pages.
    pub fn predicate(&self) -> String {
        let tid = |page: u32| format!("'({page},0)'::pg_catalog.tid");
        match (self.from, self.to) {
            (0, None) => "TRUE".to_string(),
            (0, Some(to)) => format!("ctid < {}", tid(to)),
            (from, None) => format!("ctid >= {}", tid(from)),
            (from, Some(to)) => format!("ctid >= {} AND ctid < {}", tid(from), tid(to)),
        }
    }

    /// From its message: a bounded range must not be empty (`from < to`).
    ///
    /// # Errors
    /// [`Malformed`] naming `to`.
    pub fn from_proto(m: pb::PageRange) -> Result<Self, Malformed> {
        if let Some(to) = m.to
            && to <= m.from
        {
            return Err(Malformed::invalid(
                PAGES,
                "to",
                format!("is {to}, not above from {}", m.from),
            ));
        }
        Ok(Self {
            from: m.from,
            to: m.to,
        })
    }

    /// A list of ranges from their messages that must cover every page: the first from page 0,
    /// each starting where the one before ends, the last unbounded (an empty list means "copy it
    /// whole" and passes).
    ///
    /// # Errors
    /// [`Malformed`] naming the entry and field (`pages[2].from`).
    pub fn cover_from_proto(ms: Vec<pb::PageRange>, field: &str) -> Result<Vec<Self>, Malformed> {
        let ranges: Vec<Self> = ms
            .into_iter()
            .enumerate()
            .map(|(i, m)| Self::from_proto(m).map_err(|e| e.within(&format!("{field}[{i}]"))))
            .collect::<Result<_, _>>()?;
        let mut next = Some(0);
        for (i, r) in ranges.iter().enumerate() {
            if Some(r.from) != next {
                return Err(Malformed::invalid(
                    PAGES,
                    &format!("{field}[{i}].from"),
                    format!(
                        "is {}, where {} (pages would be left out or read twice)",
                        r.from,
                        next.map_or_else(
                            || "nothing may follow".to_string(),
                            |n| format!("the range before ends at {n}")
                        )
                    ),
                ));
            }
            next = r.to;
        }
        if next.is_some() && !ranges.is_empty() {
            return Err(Malformed::invalid(
                PAGES,
                &format!("{field}[{}].to", ranges.len() - 1),
                "is bounded: the last range must run to the table's end",
            ));
        }
        Ok(ranges)
    }
}

impl From<PageRange> for pb::PageRange {
    fn from(r: PageRange) -> Self {
        Self {
            from: r.from,
            to: r.to,
        }
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to {
            Some(to) => write!(f, "pages [{}, {to})", self.from),
            None => write!(f, "pages [{}, ..)", self.from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_covers_every_page_once_and_runs_to_the_end() {
        let r = PageRange::split(83_607, 21);
        assert_eq!(r.len(), 21);
        assert_eq!(r[0].from, 0);
        assert_eq!(r[20].to, None);
        for w in r.windows(2) {
            assert_eq!(w[0].to, Some(w[1].from));
            assert!(w[0].from < w[1].from);
        }
        let wire: Vec<pb::PageRange> = r.iter().copied().map(Into::into).collect();
        assert_eq!(
            PageRange::cover_from_proto(wire, "pages").expect("a split covers every page"),
            r
        );
        assert!(PageRange::split(10, 1).is_empty());
        assert!(PageRange::split(3, 4).is_empty());
        assert_eq!(PageRange::split(4, 4).len(), 4);
    }

    #[test]
    fn predicates_read_the_pages_alone() {
        let p = |from, to| PageRange { from, to }.predicate();
        assert_eq!(p(0, Some(10)), "ctid < '(10,0)'::pg_catalog.tid");
        assert_eq!(
            p(10, Some(20)),
            "ctid >= '(10,0)'::pg_catalog.tid AND ctid < '(20,0)'::pg_catalog.tid"
        );
        assert_eq!(p(20, None), "ctid >= '(20,0)'::pg_catalog.tid");
        assert_eq!(p(0, None), "TRUE");
        assert_eq!(PageRange { from: 3, to: None }.to_string(), "pages [3, ..)");
    }

    #[test]
    fn a_list_that_leaves_pages_out_or_stops_early_is_malformed() {
        let m = |from, to| pb::PageRange { from, to };
        let err = |ms: Vec<pb::PageRange>| {
            PageRange::cover_from_proto(ms, "pages")
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![m(1, Some(5)), m(5, None)]).contains("pages[0].from"));
        assert!(err(vec![m(0, Some(5)), m(6, None)]).contains("pages[1].from"));
        assert!(err(vec![m(0, Some(5)), m(5, Some(9))]).contains("pages[1].to"));
        assert!(err(vec![m(0, None), m(5, None)]).contains("pages[1].from"));
        assert!(err(vec![m(5, Some(5))]).contains("pages[0].to"));
        assert!(
            PageRange::cover_from_proto(vec![], "pages")
                .expect("no ranges: copy it whole")
                .is_empty()
        );
    }
}
