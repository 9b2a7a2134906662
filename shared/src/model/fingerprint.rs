//! [`Fingerprint`]: a table's (or key range's) row count and order-independent content digest,
//! and its one text form `rows/digest`, which the journal, the verify report and the cutover
//! compare as a whole; and [`DatabaseFingerprint`]: what `Database.Fingerprint` answers for a
//! whole selection — every table's fingerprint, every sequence's position
//! ([`SequencePosition`]) and every large object's ([`LargeObjectFingerprint`]).

use std::collections::BTreeMap;
use std::fmt;

use hostshift_proto::v1 as pb;

use super::{Malformed, TableRef};

const ANSWER: &str = "fingerprint answer";

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

impl From<&pb::RangeFingerprint> for Fingerprint {
    fn from(f: &pb::RangeFingerprint) -> Self {
        Self::new(f.rows, f.digest.clone())
    }
}

/// `rows/digest`: the form every report and journal entry holds.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.rows, self.digest)
    }
}

/// The position of a sequence: what the next `nextval` continues from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SequencePosition {
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`: whether `last_value` was handed out already.
    pub is_called: bool,
}

/// `last_value/is_called`.
impl fmt::Display for SequencePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.last_value, self.is_called)
    }
}

/// A large object's metadata and the digest of its bytes: equal on both hosts means the same
/// object, owned and granted the same way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LargeObjectFingerprint {
    /// The owning role.
    pub owner: String,
    /// The ACL as sorted text, `default` when none was granted.
    pub acl: String,
    /// Its size.
    pub bytes: i64,
    /// The digest of its content (hex).
    pub sha256: String,
}

/// `owner=… acl=… bytes=… sha256=…`.
impl fmt::Display for LargeObjectFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "owner={} acl={} bytes={} sha256={}",
            self.owner, self.acl, self.bytes, self.sha256
        )
    }
}

/// Everything `Database.Fingerprint` compares of a database selection, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseFingerprint {
    /// Every selected table.
    pub tables: BTreeMap<TableRef, Fingerprint>,
    /// Every selected sequence.
    pub sequences: BTreeMap<TableRef, SequencePosition>,
    /// Every large object by OID (empty when the selection leaves them out).
    pub large_objects: BTreeMap<u32, LargeObjectFingerprint>,
}

impl DatabaseFingerprint {
    /// From its message: every entry must name its table, sequence or OID and carry its values.
    ///
    /// # Errors
    /// [`Malformed`] naming the entry and field (`tables[2].rows`, `large_objects[0].sha256`).
    pub fn from_proto(m: pb::FingerprintResponse) -> Result<Self, Malformed> {
        let name = |t: Option<pb::TableRef>, at: &str| {
            TableRef::from_proto(t.ok_or_else(|| Malformed::missing(ANSWER, at))?, ANSWER)
                .map_err(|e| e.within(at))
        };
        let mut out = Self::default();
        for (i, t) in m.tables.into_iter().enumerate() {
            let at = format!("tables[{i}]");
            let table = name(t.table, &format!("{at}.table"))?;
            let rows = t
                .rows
                .ok_or_else(|| Malformed::missing(ANSWER, &format!("{at}.rows")))?;
            if t.digest.is_empty() {
                return Err(Malformed::missing(ANSWER, &format!("{at}.digest")));
            }
            out.tables.insert(table, Fingerprint::new(rows, t.digest));
        }
        for (i, s) in m.sequences.into_iter().enumerate() {
            let sequence = name(s.sequence, &format!("sequences[{i}].sequence"))?;
            out.sequences.insert(
                sequence,
                SequencePosition {
                    last_value: s.last_value,
                    is_called: s.is_called,
                },
            );
        }
        for (i, l) in m.large_objects.into_iter().enumerate() {
            let at = |f: &str| format!("large_objects[{i}].{f}");
            if l.oid == 0 {
                return Err(Malformed::missing(ANSWER, &at("oid")));
            }
            for (field, v) in [("owner", &l.owner), ("acl", &l.acl), ("sha256", &l.sha256)] {
                if v.is_empty() {
                    return Err(Malformed::missing(ANSWER, &at(field)));
                }
            }
            let bytes = l
                .bytes
                .ok_or_else(|| Malformed::missing(ANSWER, &at("bytes")))?;
            out.large_objects.insert(
                l.oid,
                LargeObjectFingerprint {
                    owner: l.owner,
                    acl: l.acl,
                    bytes,
                    sha256: l.sha256,
                },
            );
        }
        Ok(out)
    }
}

impl From<DatabaseFingerprint> for pb::FingerprintResponse {
    fn from(d: DatabaseFingerprint) -> Self {
        Self {
            tables: d
                .tables
                .into_iter()
                .map(|(t, f)| pb::TableFingerprint {
                    table: Some(t.into()),
                    rows: Some(f.rows),
                    digest: f.digest,
                })
                .collect(),
            sequences: d
                .sequences
                .into_iter()
                .map(|(s, p)| pb::SequenceValue {
                    sequence: Some(s.into()),
                    last_value: p.last_value,
                    is_called: p.is_called,
                })
                .collect(),
            large_objects: d
                .large_objects
                .into_iter()
                .map(|(oid, l)| pb::LargeObjectFingerprint {
                    oid,
                    owner: l.owner,
                    acl: l.acl,
                    bytes: Some(l.bytes),
                    sha256: l.sha256,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_rows_slash_digest() {
        assert_eq!(Fingerprint::new(3, "ab12").to_string(), "3/ab12");
        let pb = pb::RangeFingerprint {
            rows: 7,
            digest: "ff".into(),
            min_key: None,
            max_key: None,
        };
        assert_eq!(Fingerprint::from(&pb), Fingerprint::new(7, "ff"));
    }

    fn sample() -> DatabaseFingerprint {
        let mut d = DatabaseFingerprint::default();
        d.tables.insert(
            TableRef::new("public", "users"),
            Fingerprint::new(0, "00ff"),
        );
        d.sequences.insert(
            TableRef::new("public", "users_id_seq"),
            SequencePosition {
                last_value: 12,
                is_called: true,
            },
        );
        d.large_objects.insert(
            16400,
            LargeObjectFingerprint {
                owner: "app".into(),
                acl: "default".into(),
                bytes: 0,
                sha256: "e3b0".into(),
            },
        );
        d
    }

    #[test]
    fn database_fingerprint_round_trips_through_its_message() {
        let d = sample();
        let back = DatabaseFingerprint::from_proto(d.clone().into()).expect("valid");
        assert_eq!(back, d);
        assert_eq!(
            back.large_objects[&16400].to_string(),
            "owner=app acl=default bytes=0 sha256=e3b0"
        );
        assert_eq!(
            back.sequences[&TableRef::new("public", "users_id_seq")].to_string(),
            "12/true"
        );
    }

    #[test]
    fn a_fingerprint_answer_missing_a_field_is_refused_naming_it() {
        let field_of = |m: pb::FingerprintResponse| {
            DatabaseFingerprint::from_proto(m)
                .expect_err("malformed")
                .field
        };
        let mut m: pb::FingerprintResponse = sample().into();
        m.tables[0].rows = None;
        assert_eq!(field_of(m), "tables[0].rows");
        let mut m: pb::FingerprintResponse = sample().into();
        m.tables[0].digest.clear();
        assert_eq!(field_of(m), "tables[0].digest");
        let mut m: pb::FingerprintResponse = sample().into();
        m.tables[0].table = None;
        assert_eq!(field_of(m), "tables[0].table");
        let mut m: pb::FingerprintResponse = sample().into();
        m.sequences[0].sequence.as_mut().expect("set").table.clear();
        assert_eq!(field_of(m), "sequences[0].sequence.table");
        let mut m: pb::FingerprintResponse = sample().into();
        m.large_objects[0].bytes = None;
        assert_eq!(field_of(m), "large_objects[0].bytes");
        let mut m: pb::FingerprintResponse = sample().into();
        m.large_objects[0].sha256.clear();
        let e = DatabaseFingerprint::from_proto(m).expect_err("malformed");
        assert_eq!(e.field, "large_objects[0].sha256");
        assert!(e.to_string().contains("is missing"), "{e}");
    }
}
