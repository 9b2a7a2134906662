//! The tables a sync copies and what copying each needs to know ([`TableInfo`]): its kind
//! (ordinary or partitioned), the columns to copy (all but dropped and generated ones), the
//! `COPY` format, the integer primary key that allows splitting it into ranges, and size
//! estimates for scheduling.
//!
//! # Copy format
//! Binary `COPY` is the default: it is faster to produce and to parse. The binary form of arrays
//! and composite values carries type OIDs, which differ between clusters for user-defined types
//! (an enum array, say); the receiving functions compare only OIDs of built-in types, so such
//! columns load fine (the tests copy an enum array and a composite between the two clusters, with
//! the OIDs made to differ). What binary `COPY` cannot carry at all is a type without binary I/O
//! (`typsend`/`typreceive` unset: `aclitem`, some extension types), directly or as an array
//! element: tables with such a column are copied in text format, with the settings that affect
//! text output pinned on both sides. (A composite with such a field is not detected: its `COPY`
//! fails with the server's "no binary output function" message.)

use super::conn::Conn;
use super::error::PgSyncError;
use super::select::{Selection, TableRef, relations};

pub use hostshift_shared::model::{CopyFormat, TableInfo, TableKind};

const TABLES_SQL: &str = "
WITH RECURSIVE dom(typ, cur) AS (
    SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
  UNION ALL
    SELECT dom.typ, t.typbasetype FROM dom JOIN pg_catalog.pg_type t ON t.oid = dom.cur
    WHERE t.typtype = 'd'
),
base(typ, base) AS (
    SELECT dom.typ, dom.cur FROM dom JOIN pg_catalog.pg_type t ON t.oid = dom.cur
    WHERE t.typtype <> 'd'
),
no_binary(typ) AS (
    SELECT t.oid FROM pg_catalog.pg_type t
    LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
    WHERE t.typsend::oid = 0 OR t.typreceive::oid = 0
       OR e.typsend::oid = 0 OR e.typreceive::oid = 0
)
SELECT n.nspname::text, c.relname::text, c.relkind::text,
    array(SELECT a.attname::text FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attgenerated = '' ORDER BY a.attnum),
    (SELECT a.attname::text FROM pg_catalog.pg_index i
     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnkeyatts = 1
       AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)),
    EXISTS (SELECT FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attgenerated = ''
              AND coalesce((SELECT b.base FROM base b WHERE b.typ = a.atttypid), a.atttypid)
                  IN (SELECT typ FROM no_binary)),
    CASE WHEN c.relkind = 'p' THEN
        (SELECT sum(pc.reltuples)::float8 FROM pg_catalog.pg_partition_tree(c.oid) pt
         JOIN pg_catalog.pg_class pc ON pc.oid = pt.relid WHERE pt.isleaf)
    ELSE c.reltuples::float8 END,
    CASE WHEN c.relkind = 'p' THEN
        (SELECT coalesce(sum(pg_catalog.pg_table_size(pt.relid)), 0)::int8
         FROM pg_catalog.pg_partition_tree(c.oid) pt WHERE pt.isleaf)
    ELSE pg_catalog.pg_table_size(c.oid) END
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN unnest($1::text[], $2::text[]) AS s(nsp, rel) ON s.nsp = n.nspname AND s.rel = c.relname
ORDER BY 1, 2";

/// The selected tables, inside the caller's transaction.
pub(crate) async fn tables_in_tx(
    conn: &Conn,
    selection: &Selection,
) -> Result<Vec<TableInfo>, PgSyncError> {
    let (schemas, names): (Vec<String>, Vec<String>) = relations(conn)
        .await?
        .into_iter()
        .filter(|r| matches!(r.kind.as_str(), "r" | "p") && !r.is_partition)
        .filter(|r| selection.selects(&r.key))
        .map(|r| (r.rel.schema, r.rel.table))
        .unzip();
    describe(conn, &schemas, &names).await
}

/// The descriptions of the named tables (which the caller took from the catalog).
async fn describe(
    conn: &Conn,
    schemas: &[String],
    names: &[String],
) -> Result<Vec<TableInfo>, PgSyncError> {
    let rows = conn
        .client()
        .query(TABLES_SQL, &[&schemas, &names])
        .await
        .map_err(|e| conn.err(None, "describe the selected tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let reltuples: Option<f64> = r.get(6);
            TableInfo {
                table: TableRef::new(r.get(0), r.get(1)),
                kind: if r.get::<_, &str>(2) == "p" {
                    TableKind::Partitioned
                } else {
                    TableKind::Ordinary
                },
                columns: r.get(3),
                int_key: r.get(4),
                format: if r.get::<_, bool>(5) {
                    CopyFormat::Text
                } else {
                    CopyFormat::Binary
                },
                // -1 = never analyzed; the float is a row count well within i64.
                estimated_rows: reltuples.filter(|n| *n >= 0.0).map(|n| n.round() as i64),
                estimated_bytes: r.get(7),
            }
        })
        .collect())
}

/// What a reader may copy of the table it `asked` for (and of `range`), resolved on this side's
/// catalog — never taken from the request: the asked table must be a user table of the database
/// (not a partition, not in `pg_catalog`, `information_schema` or another system schema, not an
/// extension's), `selection` must cover it, and every asked column (and the range's column) must
/// be one it copies. Returns the catalog's description with the asked columns and format.
///
/// # Errors
/// [`PgSyncError::NotReadable`] saying why; [`PgSyncError::Query`] when the catalog cannot be
/// read.
pub async fn readable_table(
    conn: &Conn,
    selection: &Selection,
    asked: &TableInfo,
    range: Option<&super::ranges::KeyRange>,
) -> Result<TableInfo, PgSyncError> {
    let refuse = |reason: String| PgSyncError::NotReadable {
        database: conn.database().to_string(),
        table: asked.table.to_string(),
        reason,
    };
    conn.begin_read_only(None).await?;
    let found = async {
        let rel = relations(conn).await?.into_iter().find(|r| {
            r.rel == asked.table && matches!(r.kind.as_str(), "r" | "p") && !r.is_partition
        });
        let Some(rel) = rel else {
            return Ok(Err(
                "it is not a user table of the database (system catalogs, partitions and \
                 extension tables are never served)"
                    .to_string(),
            ));
        };
        if !selection.selects(&rel.key) {
            return Ok(Err(format!(
                "the plan's selection ({}) does not cover it",
                selection.describe()
            )));
        }
        let described = describe(
            conn,
            std::slice::from_ref(&rel.rel.schema),
            std::slice::from_ref(&rel.rel.table),
        )
        .await?;
        Ok(described
            .into_iter()
            .next()
            .ok_or_else(|| "it is not in the catalog".to_string()))
    }
    .await;
    conn.end_read_only().await?;
    let table = found?.map_err(refuse)?;
    let unknown = asked
        .columns
        .iter()
        .map(String::as_str)
        .chain(range.map(|r| r.column.as_str()).filter(|c| !c.is_empty()))
        .find(|c| !table.columns.iter().any(|t| t == c));
    if let Some(c) = unknown {
        return Err(refuse(format!("{c:?} is not a column it copies")));
    }
    Ok(TableInfo {
        columns: asked.columns.clone(),
        format: asked.format,
        ..table
    })
}

/// The user tables of the database that `selection` selects (ordinary tables and partitioned
/// parents, not partitions), by name, in a read-only transaction.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn list_tables(
    conn: &Conn,
    selection: &Selection,
) -> Result<Vec<TableInfo>, PgSyncError> {
    conn.begin_read_only(None).await?;
    let tables = tables_in_tx(conn, selection).await;
    conn.end_read_only().await?;
    tables
}
