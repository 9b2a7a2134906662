//! Which relations a sync covers: [`Selection`] (include/exclude patterns in the spirit of
//! `pg_dump -t/-T`), the catalog's user relations with the relation each one's selection follows,
//! and the `pg_dump` arguments that make the schema dump cover exactly the tables the data copy
//! covers ([`dump_args`]). The tables themselves are described in [`super::tables`].
//!
//! # Patterns
//! `schema.table`, where either part may use `*` (any run of characters) and `?` (one character);
//! `schema.*` is every relation of a schema. Names are matched exactly as stored (case-sensitive,
//! no quoting). The parser and its rule are [`hostshift_shared::model::TablePattern`], the same
//! the coordinator's `plan check` applies. An empty include list means everything; an exclude
//! wins over an include.
//! Patterns select relations (tables, views, sequences, materialized views, foreign tables).
//! Unlike `pg_dump -t`, which then drops every function, type and extension, the schema dump
//! keeps everything that is not a relation and leaves out only the relations not selected
//! (`-T` for each): an included table's trigger functions and column types come with it. Large
//! objects belong to the sync only when no include pattern narrows it, as with `pg_dump`.
//!
//! # Partitions and owned sequences
//! A partitioned table is one table of the sync; its partitions are not listed. Its data is copied
//! *through the parent* — `COPY (SELECT … FROM parent) TO STDOUT` on the source (which reads every
//! partition) and `COPY parent FROM STDIN` on the target (which routes each row to its
//! partition) — so one range split covers the whole tree and the target's partition bounds decide
//! where rows land. A partition is selected exactly when its root is (patterns naming a partition
//! itself are ignored for it), and an owned sequence (serial, identity) exactly when its table
//! is, so that the schema, the data and the sequences always cover the same tables. Relations
//! that belong to an extension are never listed (`CREATE EXTENSION` recreates them).

use super::conn::Conn;
use super::error::PgSyncError;

use hostshift_shared::model::TablePattern;
pub use hostshift_shared::model::TableRef;

fn parse(text: &str) -> Result<TablePattern, PgSyncError> {
    TablePattern::parse(text).map_err(|e| PgSyncError::InvalidSelection {
        pattern: e.pattern,
        reason: e.reason,
    })
}

/// Include and exclude patterns. [`Selection::all`] selects every user table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    include: Vec<TablePattern>,
    exclude: Vec<TablePattern>,
}

impl Selection {
    /// Every user table of the database (and, for the schema, everything else `pg_dump` dumps).
    pub fn all() -> Self {
        Self::default()
    }

    /// From patterns; an empty `include` means everything.
    ///
    /// # Errors
    /// [`PgSyncError::InvalidSelection`] naming a pattern that is not `schema.table`.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<Self, PgSyncError> {
        let all = |list: &[S]| -> Result<Vec<TablePattern>, PgSyncError> {
            list.iter().map(|p| parse(p.as_ref())).collect()
        };
        Ok(Self {
            include: all(include)?,
            exclude: all(exclude)?,
        })
    }

    /// True when nothing is filtered: `pg_dump` runs without `-t`/`-T`.
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether large objects belong to the sync: as with `pg_dump`, only when no include pattern
    /// narrows it to some relations.
    pub fn includes_large_objects(&self) -> bool {
        self.include.is_empty()
    }

    /// Whether a relation (by its selection key: itself, the root of its partition tree, or the
    /// table owning a sequence) is selected.
    pub fn selects(&self, t: &TableRef) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(t)))
            && !self.exclude.iter().any(|p| p.matches(t))
    }

    /// The patterns, for logs.
    pub fn describe(&self) -> String {
        let list = |v: &[TablePattern]| {
            v.iter()
                .map(TablePattern::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "include=[{}] exclude=[{}]",
            list(&self.include),
            list(&self.exclude)
        )
    }
}

/// A relation of the catalog with the relation its selection follows.
#[derive(Clone, Debug)]
pub(crate) struct Relation {
    pub rel: TableRef,
    /// `r`, `p`, `v`, `m`, `S` or `f`.
    pub kind: String,
    pub is_partition: bool,
    /// Itself, the root of its partition tree, or the table owning it (sequences).
    pub key: TableRef,
}

const RELATIONS_SQL: &str = "
SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relispartition,
       coalesce(rn.nspname, onsp.nspname, n.nspname)::text,
       coalesce(rc.relname, oc.relname, c.relname)::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT a.relid FROM pg_catalog.pg_partition_ancestors(c.oid) a
    JOIN pg_catalog.pg_class ac ON ac.oid = a.relid
    WHERE NOT ac.relispartition
) root ON c.relispartition
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = root.relid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
LEFT JOIN pg_catalog.pg_depend d ON c.relkind = 'S'
    AND d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_catalog.pg_class oc ON oc.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace onsp ON onsp.oid = oc.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_depend e
      WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
ORDER BY 1, 2";

/// Every user relation with its selection key (inside the caller's transaction).
pub(crate) async fn relations(conn: &Conn) -> Result<Vec<Relation>, PgSyncError> {
    let rows = conn
        .client()
        .query(RELATIONS_SQL, &[])
        .await
        .map_err(|e| conn.err(None, "list the relations", &e))?;
    Ok(rows
        .iter()
        .map(|r| Relation {
            rel: TableRef::new(r.get(0), r.get(1)),
            kind: r.get(2),
            is_partition: r.get(3),
            key: TableRef::new(r.get(4), r.get(5)),
        })
        .collect())
}

/// The `pg_dump` arguments that make the schema dump agree with `selection`: none for
/// everything, else a `-T` for each relation not selected (partitions follow their root, owned
/// sequences their table). Names are passed quoted, so `pg_dump` matches them exactly.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read; [`PgSyncError::InvalidSelection`] when
/// include patterns select no table at all (most likely a typo).
pub async fn dump_args(conn: &Conn, selection: &Selection) -> Result<Vec<String>, PgSyncError> {
    if selection.is_all() {
        return Ok(Vec::new());
    }
    conn.begin_read_only(None).await?;
    let relations = relations(conn).await;
    conn.end_read_only().await?;
    let relations = relations?;
    let any_table = relations
        .iter()
        .any(|r| matches!(r.kind.as_str(), "r" | "p") && selection.selects(&r.key));
    if !any_table {
        return Err(PgSyncError::InvalidSelection {
            pattern: selection.describe(),
            reason: format!("selects no table of database {}", conn.database()),
        });
    }
    Ok(relations
        .into_iter()
        .filter(|r| !selection.selects(&r.key))
        .map(|r| format!("-T{}", r.rel.qualified()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_wins_and_empty_include_means_everything() {
        let users = TableRef::new("public", "users");
        let audit = TableRef::new("audit", "events");
        let all = Selection::all();
        assert!(all.is_all() && all.selects(&users) && all.includes_large_objects());

        let sel = Selection::new(&[] as &[&str], &["audit.*"]).expect("valid");
        assert!(sel.selects(&users) && !sel.selects(&audit));
        assert!(sel.includes_large_objects());

        let sel = Selection::new(&["public.*"], &["public.users"]).expect("valid");
        assert!(!sel.selects(&users));
        assert!(sel.selects(&TableRef::new("public", "questions")));
        assert!(!sel.selects(&audit));
        assert!(!sel.includes_large_objects());
    }

    #[test]
    fn patterns_must_name_a_schema_and_a_table() {
        for bad in ["users", ".users", "public.", ""] {
            let e = Selection::new(&[bad], &[]).expect_err(bad);
            assert!(e.to_string().contains("schema"), "{e}");
        }
    }
}
