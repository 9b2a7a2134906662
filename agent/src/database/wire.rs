//! The `hostshift.v1` messages of the database path ↔ the agent's domain types, for
//! `service Database` and the table and large-object streams of `Source`/`Target`. Table
//! descriptions and key ranges convert through [`hostshift_shared::model`] (the coordinator uses
//! the same code); sequence positions and large-object metadata are the agent's own and convert
//! here. A request missing a field it needs is refused as `InvalidArgument` naming the field.

use hostshift_proto::v1 as pb;
use hostshift_shared::model::{KeyRange, Malformed, TableInfo, TableRef};

use crate::error::AgentError;
use crate::postgres::{LargeObjectMeta, LoGrant, SequenceValue};

impl From<Malformed> for AgentError {
    fn from(e: Malformed) -> Self {
        AgentError::InvalidArgument(e.to_string())
    }
}

/// The table description a request carries (`field` names it in the request).
///
/// # Errors
/// `InvalidArgument` naming the missing or malformed field.
pub fn table(m: Option<pb::TableDescription>, field: &str) -> Result<TableInfo, AgentError> {
    let m = m.ok_or_else(|| Malformed {
        message: "request",
        field: field.to_string(),
        problem: "is missing".into(),
    })?;
    Ok(TableInfo::from_proto(m).map_err(|e| e.within(field))?)
}

/// The optional key range a request carries.
///
/// # Errors
/// `InvalidArgument` naming the malformed field.
pub fn range(m: Option<pb::KeyRange>, field: &str) -> Result<Option<KeyRange>, AgentError> {
    m.map(|r| KeyRange::from_proto(r).map_err(|e| AgentError::from(e.within(field))))
        .transpose()
}

/// Sequence positions for the wire.
pub fn sequences_to_proto(values: Vec<SequenceValue>) -> Vec<pb::SequenceValue> {
    values
        .into_iter()
        .map(|v| pb::SequenceValue {
            sequence: Some(v.sequence.into()),
            last_value: v.last_value,
            is_called: v.is_called,
        })
        .collect()
}

/// Sequence positions from the wire.
///
/// # Errors
/// `InvalidArgument` naming the entry without a sequence name (`values[2].sequence`).
pub fn sequences_from_proto(
    values: Vec<pb::SequenceValue>,
) -> Result<Vec<SequenceValue>, AgentError> {
    const MSG: &str = "sequence value";
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("values[{i}]");
            let sequence = v
                .sequence
                .ok_or_else(|| Malformed {
                    message: MSG,
                    field: format!("{at}.sequence"),
                    problem: "is missing".into(),
                })
                .and_then(|s| {
                    TableRef::from_proto(s, MSG).map_err(|e| e.within(&format!("{at}.sequence")))
                })?;
            Ok(SequenceValue {
                sequence,
                last_value: v.last_value,
                is_called: v.is_called,
            })
        })
        .collect()
}

/// Large-object metadata for the wire.
pub fn large_object_to_proto(m: LargeObjectMeta) -> pb::LargeObject {
    pb::LargeObject {
        oid: m.oid,
        owner: m.owner,
        acl: m.acl.map(|grants| pb::LargeObjectAcl {
            grants: grants
                .into_iter()
                .map(|g| pb::LargeObjectGrant {
                    grantee: g.grantee,
                    privilege: g.privilege,
                    grantable: g.grantable,
                })
                .collect(),
        }),
    }
}

/// Large-object metadata from the wire: the owner must be named and every grant's privilege be
/// `SELECT` or `UPDATE`.
///
/// # Errors
/// `InvalidArgument` naming the field (`meta.owner`, `meta.acl.grants[0].privilege`).
pub fn large_object_from_proto(
    m: Option<pb::LargeObject>,
    field: &str,
) -> Result<LargeObjectMeta, AgentError> {
    const MSG: &str = "large object";
    let bad = |f: String, problem: String| Malformed {
        message: MSG,
        field: format!("{field}{f}"),
        problem,
    };
    let m = m.ok_or_else(|| bad(String::new(), "is missing".into()))?;
    if m.owner.is_empty() {
        return Err(bad(".owner".into(), "is missing".into()).into());
    }
    let acl = match m.acl {
        None => None,
        Some(acl) => Some(
            acl.grants
                .into_iter()
                .enumerate()
                .map(|(i, g)| {
                    if !matches!(g.privilege.as_str(), "SELECT" | "UPDATE") {
                        return Err(bad(
                            format!(".acl.grants[{i}].privilege"),
                            format!("is {:?}, not SELECT or UPDATE", g.privilege),
                        ));
                    }
                    Ok(LoGrant {
                        grantee: g.grantee,
                        privilege: g.privilege,
                        grantable: g.grantable,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(LargeObjectMeta {
        oid: m.oid,
        owner: m.owner,
        acl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_object_metadata_survives_the_wire_and_bad_fields_are_named() {
        let meta = LargeObjectMeta {
            oid: 42,
            owner: "app".into(),
            acl: Some(vec![LoGrant {
                grantee: None,
                privilege: "SELECT".into(),
                grantable: false,
            }]),
        };
        let m = large_object_to_proto(meta.clone());
        assert_eq!(
            large_object_from_proto(Some(m.clone()), "meta").ok(),
            Some(meta)
        );
        let mut bad = m.clone();
        bad.acl = Some(pb::LargeObjectAcl {
            grants: vec![pb::LargeObjectGrant {
                grantee: None,
                privilege: "DROP".into(),
                grantable: false,
            }],
        });
        let e = large_object_from_proto(Some(bad), "meta").expect_err("privilege");
        assert!(
            e.to_string().contains("`meta.acl.grants[0].privilege`"),
            "{e}"
        );
        let e = large_object_from_proto(None, "meta").expect_err("missing");
        assert!(e.to_string().contains("`meta` is missing"), "{e}");
    }

    #[test]
    fn a_sequence_without_a_name_is_refused_by_field() {
        let e = sequences_from_proto(vec![pb::SequenceValue {
            sequence: None,
            last_value: 1,
            is_called: true,
        }])
        .expect_err("no name");
        assert!(e.to_string().contains("`values[0].sequence`"), "{e}");
    }
}
