//! Cutting an integer key span into equal parts: the agent splits a big table this way for a
//! parallel copy, and the coordinator's delta narrows a differing range the same way.

/// The cut points that divide `[min, max]` into `n` parts of equal key span: each point starts a
/// part (the first part starts at `min`, which is not listed). Ascending, no duplicates, all in
/// `(min, max]`; empty when `n < 2` or the span is a single key.
pub fn cut_points(min: i64, max: i64, n: u64) -> Vec<i64> {
    if n < 2 || max <= min {
        return Vec::new();
    }
    let span = i128::from(max) - i128::from(min) + 1;
    // span ≥ 2 and n ≥ 2 here: a ceiling division of positive numbers.
    let step = (span + i128::from(n) - 1) / i128::from(n);
    let mut points: Vec<i64> = (1..i128::from(n))
        .map(|i| i128::from(min) + i * step)
        .filter(|b| *b <= i128::from(max))
        // Every point is in (min, max], so it fits in i64.
        .filter_map(|b| i64::try_from(b).ok())
        .collect();
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::cut_points;

    #[test]
    fn equal_spans_inside_the_bounds() {
        assert_eq!(cut_points(1, 100, 4), vec![26, 51, 76]);
        assert_eq!(cut_points(0, 9, 10), (1..10).collect::<Vec<_>>());
        assert!(cut_points(5, 5, 8).is_empty());
        assert!(cut_points(1, 100, 1).is_empty());
        // More parts than keys: one point per key, no duplicates.
        assert_eq!(cut_points(1, 3, 10), vec![2, 3]);
        // The extremes of i64 do not overflow.
        let p = cut_points(i64::MIN, i64::MAX, 2);
        assert_eq!(p.len(), 1);
    }
}
