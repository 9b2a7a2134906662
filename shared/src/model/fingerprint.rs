//! [`Fingerprint`]: a table's (or key range's) row count and order-independent content digest,
//! and its one text form `rows/digest`, which the journal, the verify report and the cutover
//! compare as a whole.

use std::fmt;

/// Rows and the order-independent digest of their content.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Rows counted.
    pub rows: i64,
    /// The agent's digest of those rows (hex).
    pub digest: String,
}

impl Fingerprint {
    /// From its two parts.
    pub fn new(rows: i64, digest: impl Into<String>) -> Self {
        Self {
            rows,
            digest: digest.into(),
        }
    }
}

impl From<&hostshift_proto::v1::RangeFingerprint> for Fingerprint {
    fn from(f: &hostshift_proto::v1::RangeFingerprint) -> Self {
        Self::new(f.rows, f.digest.clone())
    }
}

/// `rows/digest`: the form every report and journal entry holds.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.rows, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_rows_slash_digest() {
        assert_eq!(Fingerprint::new(3, "ab12").to_string(), "3/ab12");
        let pb = hostshift_proto::v1::RangeFingerprint {
            rows: 7,
            digest: "ff".into(),
            min_key: None,
            max_key: None,
        };
        assert_eq!(Fingerprint::from(&pb), Fingerprint::new(7, "ff"));
    }
}
