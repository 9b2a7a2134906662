//! A table as the sync sees it: its name ([`TableRef`]), kind, copied columns, `COPY` format,
//! integer key and size estimates ([`TableInfo`]), and their `hostshift.v1` messages.

use std::fmt;

use hostshift_proto::v1 as pb;

use super::Malformed;
use crate::dbspec::ident;

/// A table (or other relation) by schema and name, as stored in the catalog.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TableRef {
    /// Schema name.
    pub schema: String,
    /// Relation name.
    pub table: String,
}

impl TableRef {
    /// A reference from its two parts.
    pub fn new(schema: &str, table: &str) -> Self {
        Self {
            schema: schema.to_string(),
            table: table.to_string(),
        }
    }

    /// `"schema"."table"`, quoted for SQL text.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }

    /// From its message; both parts must be set.
    ///
    /// # Errors
    /// [`Malformed`] naming `schema` or `table`.
    pub fn from_proto(m: pb::TableRef, message: &'static str) -> Result<Self, Malformed> {
        if m.schema.is_empty() {
            return Err(Malformed::missing(message, "schema"));
        }
        if m.table.is_empty() {
            return Err(Malformed::missing(message, "table"));
        }
        Ok(Self {
            schema: m.schema,
            table: m.table,
        })
    }
}

/// `schema.table`, unquoted: for messages and map keys.
impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

impl From<TableRef> for pb::TableRef {
    fn from(t: TableRef) -> Self {
        Self {
            schema: t.schema,
            table: t.table,
        }
    }
}

/// Ordinary table or partitioned parent: decides `ONLY` in the copy and fingerprint queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TableKind {
    /// `relkind = 'r'`: its own rows only (`ONLY`, so inheritance children are not counted twice).
    Ordinary,
    /// `relkind = 'p'`: the rows of all its partitions, read and written through the parent.
    Partitioned,
}

/// The `COPY` format of a table, decided on the source and used on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CopyFormat {
    /// The fast default.
    Binary,
    /// For tables with a column whose type (or array element type) has no binary I/O. Both
    /// sides pin the settings that affect text output.
    Text,
}

impl CopyFormat {
    /// The `FORMAT` option value.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Text => "text",
        }
    }
}

/// What copying one table needs: decided on the source, sent to the target with the data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableInfo {
    /// The table.
    pub table: TableRef,
    /// Ordinary or partitioned.
    pub kind: TableKind,
    /// Columns copied, in order: all but dropped and generated ones (the target computes those).
    pub columns: Vec<String>,
    /// Binary unless a column's type has no binary I/O.
    pub format: CopyFormat,
    /// The primary key column when the key is a single `smallint`/`integer`/`bigint` column:
    /// the table can then be split into key ranges.
    pub int_key: Option<String>,
    /// `reltuples` (summed over partitions); `None` when the table was never analyzed.
    pub estimated_rows: Option<i64>,
    /// `pg_table_size` (summed over partitions): for scheduling the biggest tables first.
    pub estimated_bytes: i64,
}

const TABLE: &str = "table description";

impl TableInfo {
    /// `ONLY "s"."t"` or `"s"."t"` (partitioned).
    pub fn relation_sql(&self) -> String {
        match self.kind {
            TableKind::Ordinary => format!("ONLY {}", self.table.qualified()),
            TableKind::Partitioned => self.table.qualified(),
        }
    }

    /// `("a", "b")`, or nothing for a table without columns.
    pub fn column_list(&self) -> String {
        if self.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.select_list())
        }
    }

    /// The columns for a `SELECT` list (empty for a table without columns).
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// From its message, which must name the table, its kind and its format.
    ///
    /// # Errors
    /// [`Malformed`] naming the field (`table.schema`, `kind`, `format`, `int_key`).
    pub fn from_proto(m: pb::TableDescription) -> Result<Self, Malformed> {
        let table = TableRef::from_proto(
            m.table.ok_or_else(|| Malformed::missing(TABLE, "table"))?,
            TABLE,
        )
        .map_err(|e| e.within("table"))?;
        let kind = match pb::TableKind::try_from(m.kind) {
            Ok(pb::TableKind::Ordinary) => TableKind::Ordinary,
            Ok(pb::TableKind::Partitioned) => TableKind::Partitioned,
            Ok(pb::TableKind::Unspecified) => return Err(Malformed::missing(TABLE, "kind")),
            Err(_) => {
                return Err(Malformed::invalid(
                    TABLE,
                    "kind",
                    format!("holds unknown value {}", m.kind),
                ));
            }
        };
        let format = match pb::CopyFormat::try_from(m.format) {
            Ok(pb::CopyFormat::Binary) => CopyFormat::Binary,
            Ok(pb::CopyFormat::Text) => CopyFormat::Text,
            Ok(pb::CopyFormat::Unspecified) => return Err(Malformed::missing(TABLE, "format")),
            Err(_) => {
                return Err(Malformed::invalid(
                    TABLE,
                    "format",
                    format!("holds unknown value {}", m.format),
                ));
            }
        };
        if m.int_key.as_deref() == Some("") {
            return Err(Malformed::invalid(
                TABLE,
                "int_key",
                "is set but empty (unset it for a table without an integer key)",
            ));
        }
        Ok(Self {
            table,
            kind,
            columns: m.columns,
            format,
            int_key: m.int_key,
            estimated_rows: m.estimated_rows,
            estimated_bytes: m.estimated_bytes,
        })
    }
}

impl From<TableInfo> for pb::TableDescription {
    fn from(t: TableInfo) -> Self {
        Self {
            table: Some(t.table.into()),
            kind: match t.kind {
                TableKind::Ordinary => pb::TableKind::Ordinary,
                TableKind::Partitioned => pb::TableKind::Partitioned,
            } as i32,
            columns: t.columns,
            format: match t.format {
                CopyFormat::Binary => pb::CopyFormat::Binary,
                CopyFormat::Text => pb::CopyFormat::Text,
            } as i32,
            int_key: t.int_key,
            estimated_rows: t.estimated_rows,
            estimated_bytes: t.estimated_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> TableInfo {
        TableInfo {
            table: TableRef::new("public", "users"),
            kind: TableKind::Partitioned,
            columns: vec!["id".into(), "Name".into()],
            format: CopyFormat::Text,
            int_key: Some("id".into()),
            estimated_rows: None,
            estimated_bytes: 8192,
        }
    }

    #[test]
    fn a_description_survives_its_message() {
        let t = users();
        assert_eq!(
            TableInfo::from_proto(pb::TableDescription::from(t.clone())),
            Ok(t)
        );
    }

    #[test]
    fn a_malformed_description_names_the_field() {
        let field = |m: pb::TableDescription| {
            let e = TableInfo::from_proto(m).expect_err("malformed");
            assert!(e.to_string().contains(&format!("`{}`", e.field)), "{e}");
            e.field
        };
        let good = pb::TableDescription::from(users());
        assert_eq!(
            field(pb::TableDescription {
                table: None,
                ..good.clone()
            }),
            "table"
        );
        assert_eq!(
            field(pb::TableDescription {
                table: Some(pb::TableRef {
                    schema: String::new(),
                    table: "users".into()
                }),
                ..good.clone()
            }),
            "table.schema"
        );
        assert_eq!(
            field(pb::TableDescription {
                kind: 0,
                ..good.clone()
            }),
            "kind"
        );
        assert_eq!(
            field(pb::TableDescription {
                kind: 7,
                ..good.clone()
            }),
            "kind"
        );
        assert_eq!(
            field(pb::TableDescription {
                format: 0,
                ..good.clone()
            }),
            "format"
        );
        assert_eq!(
            field(pb::TableDescription {
                int_key: Some(String::new()),
                ..good
            }),
            "int_key"
        );
    }

    #[test]
    fn names_are_quoted_for_sql_and_plain_for_people() {
        let t = TableRef::new("My Schema", "a\"b");
        assert_eq!(t.to_string(), "My Schema.a\"b");
        assert_eq!(t.qualified(), "\"My Schema\".\"a\"\"b\"");
        let u = users();
        assert_eq!(u.relation_sql(), "\"public\".\"users\"");
        assert_eq!(u.column_list(), " (\"id\", \"Name\")");
    }
}
