//! A digest of each object's definition, so the cutover can prove the two databases have the same
//! schema before it trusts the data comparison: keys `"<kind> schema.name"`, values the SHA-256
//! of a canonical text of the definition. Equal maps = same schema; a difference names the object.
//!
//! # What is covered
//! - **Relations the selection selects** ([`Selection::selects`] on each relation's selection key,
//!   as the sync itself decides: partitions follow their root, owned sequences their table):
//!   - `table` (ordinary, partitioned, partitions; `foreign table`): its kind (ordinary,
//!     partitioned with its partition key, partition of which parent with which bound, foreign,
//!     unlogged, parents it inherits from, row security), its columns in order (name,
//!     `format_type`, a non-default collation, `NOT NULL`, default or generation expression,
//!     identity), its indexes (`pg_get_indexdef`), constraints (`pg_get_constraintdef`), user
//!     triggers (`pg_get_triggerdef` and whether enabled) and storage options.
//!   - `view` and `materialized view`: columns, `pg_get_viewdef`, options, indexes and triggers.
//!   - `sequence`: type, start, increment, bounds, cache, cycle and the column owning it.
//! - **Functions, procedures, aggregates and types** (enum, composite, domain, range) in the
//!   schemas in scope: every schema but the system ones (`pg_*`, `information_schema`) when the
//!   selection has no include pattern; otherwise only the schemas holding a selected relation.
//!   Functions are keyed with their argument types (`function public.f(integer)`), since names
//!   can be overloaded.
//! - Objects that belong to an extension are left out (`CREATE EXTENSION` makes them), and so are
//!   the functions a type makes for itself (a range type's constructors).
//!
//! Not covered: owners, grants, comments, statistics targets, tablespaces, extensions
//! themselves, event triggers, publications — none of them changes what rows the application can
//! write, and owners and tablespaces legitimately differ between hosts.
//!
//! # Cluster-independent text
//! No OID appears: objects are named, internal triggers (the ones foreign keys make, whose names
//! hold OIDs) are skipped, and column numbers are not printed (a table that had columns dropped
//! has gaps in `attnum`; its restored copy has none), only the order. The deparsing functions
//! qualify names that are not on the `search_path`, so the transaction sets an empty
//! `search_path` (as `pg_dump` does): every name outside `pg_catalog` is schema-qualified, the
//! same way on both clusters whatever the role's or database's own setting. Lists are sorted
//! with `COLLATE "C"`, because the databases' default collations may differ. The same major
//! version of PostgreSQL is assumed: deparsed text can change between major versions.

use std::collections::BTreeMap;

use hostshift_shared::digest::Sha256Digest;

use super::conn::Conn;
use super::error::PgSyncError;
use super::select::{Selection, relations};

/// One definition line per element, NULL lines skipped (`concat_ws`). `$1`/`$2` = schema and name
/// of the selected relations.
const RELATIONS_SQL: &str = r#"
SELECT n.nspname::text, c.relname::text, c.relkind::text, concat_ws(E'\n',
    'kind ' || CASE c.relkind
        WHEN 'r' THEN 'ordinary'
        WHEN 'p' THEN 'partitioned by ' || pg_catalog.pg_get_partkeydef(c.oid)
        WHEN 'f' THEN 'foreign'
        WHEN 'v' THEN 'view'
        WHEN 'm' THEN 'materialized view'
        WHEN 'S' THEN 'sequence'
        ELSE c.relkind::text END
        || CASE c.relpersistence WHEN 'u' THEN ' unlogged' ELSE '' END,
    CASE WHEN c.relispartition THEN
        (SELECT 'partition of ' || i.inhparent::pg_catalog.regclass::text
         FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
        || ' ' || pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
    (SELECT string_agg('inherits ' || i.inhparent::pg_catalog.regclass::text, E'\n'
                       ORDER BY i.inhseqno)
     FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid AND NOT c.relispartition),
    CASE WHEN c.relrowsecurity THEN
        'row security' || CASE WHEN c.relforcerowsecurity THEN ' forced' ELSE '' END END,
    CASE WHEN c.reloptions IS NOT NULL THEN 'options ' || array_to_string(
        ARRAY(SELECT o FROM unnest(c.reloptions) AS o ORDER BY o COLLATE "C"), ',') END,
    (SELECT concat_ws(' ', 'sequence', pg_catalog.format_type(s.seqtypid, NULL),
                      'start', s.seqstart, 'increment', s.seqincrement, 'min', s.seqmin,
                      'max', s.seqmax, 'cache', s.seqcache,
                      CASE WHEN s.seqcycle THEN 'cycle' END)
     FROM pg_catalog.pg_sequence s WHERE s.seqrelid = c.oid),
    (SELECT 'owned by ' || d.refobjid::pg_catalog.regclass::text || '.'
            || pg_catalog.quote_ident(a.attname)
            || CASE d.deptype WHEN 'i' THEN ' (identity)' ELSE '' END
     FROM pg_catalog.pg_depend d
     JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
     WHERE c.relkind = 'S' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.deptype IN ('a', 'i')
     LIMIT 1),
    (SELECT string_agg(concat_ws(' ', 'column', pg_catalog.quote_ident(a.attname),
                pg_catalog.format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attcollation <> t.typcollation THEN
                    'collate ' || pg_catalog.quote_ident(cn.nspname) || '.'
                    || pg_catalog.quote_ident(co.collname) END,
                CASE WHEN a.attnotnull THEN 'not null' END,
                CASE WHEN a.attgenerated = 's'
                     THEN 'generated ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid)
                     WHEN d.adbin IS NOT NULL
                     THEN 'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
                CASE a.attidentity WHEN 'a' THEN 'identity always'
                                   WHEN 'd' THEN 'identity by default' END),
            E'\n' ORDER BY a.attnum)
     FROM pg_catalog.pg_attribute a
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
     LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
     WHERE c.relkind <> 'S' AND a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
    CASE WHEN c.relkind IN ('v', 'm') THEN
        'definition ' || pg_catalog.pg_get_viewdef(c.oid) END,
    (SELECT string_agg(x, E'\n' ORDER BY x COLLATE "C")
     FROM (SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid) AS x
           FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid) AS ix),
    (SELECT string_agg(x, E'\n' ORDER BY x COLLATE "C")
     FROM (SELECT 'constraint ' || pg_catalog.quote_ident(k.conname) || ' '
                  || pg_catalog.pg_get_constraintdef(k.oid) AS x
           FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid) AS cx),
    (SELECT string_agg(x, E'\n' ORDER BY x COLLATE "C")
     FROM (SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(g.oid)
                  || ' enabled ' || g.tgenabled::text AS x
           FROM pg_catalog.pg_trigger g
           WHERE g.tgrelid = c.oid AND NOT g.tgisinternal) AS gx)
)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN unnest($1::text[], $2::text[]) AS s(nsp, rel) ON s.nsp = n.nspname AND s.rel = c.relname
"#;

/// Functions, procedures and aggregates of the schemas in scope (`$1`; NULL = every user schema),
/// except those of an extension and those a type made for itself (a range type's constructors).
const ROUTINES_SQL: &str = r#"
SELECT n.nspname::text, p.proname::text, p.prokind::text,
       pg_catalog.pg_get_function_identity_arguments(p.oid),
       CASE WHEN p.prokind = 'a' THEN
           (SELECT concat_ws(' ', 'aggregate returns', pg_catalog.pg_get_function_result(p.oid),
                             'kind', a.aggkind::text,
                             'sfunc', a.aggtransfn::pg_catalog.regprocedure::text,
                             'stype', pg_catalog.format_type(a.aggtranstype, NULL),
                             CASE WHEN a.aggfinalfn::oid <> 0 THEN
                                 'finalfunc ' || a.aggfinalfn::pg_catalog.regprocedure::text END,
                             CASE WHEN a.aggcombinefn::oid <> 0 THEN
                                 'combinefunc ' || a.aggcombinefn::pg_catalog.regprocedure::text END,
                             'initcond ' || pg_catalog.quote_literal(a.agginitval),
                             CASE WHEN a.aggsortop <> 0 THEN
                                 'sortop ' || a.aggsortop::pg_catalog.regoperator::text END)
            FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid = p.oid)
       ELSE pg_catalog.pg_get_functiondef(p.oid) END
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND ($1::text[] IS NULL OR n.nspname = ANY($1::text[]))
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_depend e
      WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid
        AND e.deptype IN ('e', 'i'))
"#;

/// Enum, composite (stand-alone, not a table's row type), domain and range types of the schemas
/// in scope (`$1`; NULL = every user schema).
const TYPES_SQL: &str = r#"
SELECT n.nspname::text, t.typname::text, CASE t.typtype
    WHEN 'e' THEN 'enum ' || coalesce(
        (SELECT string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
         FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '')
    WHEN 'c' THEN 'composite ' || coalesce(
        (SELECT string_agg(concat_ws(' ', pg_catalog.quote_ident(a.attname),
                    pg_catalog.format_type(a.atttypid, a.atttypmod),
                    CASE WHEN a.attcollation <> at.typcollation THEN
                        'collate ' || pg_catalog.quote_ident(cn.nspname) || '.'
                        || pg_catalog.quote_ident(co.collname) END),
                ', ' ORDER BY a.attnum)
         FROM pg_catalog.pg_attribute a
         JOIN pg_catalog.pg_type at ON at.oid = a.atttypid
         LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
         LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '')
    WHEN 'd' THEN concat_ws(' ', 'domain', pg_catalog.format_type(t.typbasetype, t.typtypmod),
        CASE WHEN t.typnotnull THEN 'not null' END,
        'default ' || pg_catalog.pg_get_expr(t.typdefaultbin, 0),
        (SELECT string_agg(x, ' ' ORDER BY x COLLATE "C")
         FROM (SELECT 'constraint ' || pg_catalog.quote_ident(k.conname) || ' '
                      || pg_catalog.pg_get_constraintdef(k.oid) AS x
               FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid) AS kx))
    WHEN 'r' THEN
        (SELECT concat_ws(' ', 'range of', pg_catalog.format_type(r.rngsubtype, NULL),
                          'opclass', oc.opcname::text,
                          CASE WHEN r.rngsubdiff::oid <> 0 THEN
                              'subdiff ' || r.rngsubdiff::pg_catalog.regprocedure::text END)
         FROM pg_catalog.pg_range r
         JOIN pg_catalog.pg_opclass oc ON oc.oid = r.rngsubopc
         WHERE r.rngtypid = t.oid)
    END
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  AND ($1::text[] IS NULL OR n.nspname = ANY($1::text[]))
  AND (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND EXISTS (SELECT FROM pg_catalog.pg_class tc
                                       WHERE tc.oid = t.typrelid AND tc.relkind = 'c')))
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_depend e
      WHERE e.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND e.objid = t.oid
        AND e.deptype = 'e')
"#;

/// The key's kind word for a relation kind (`relkind`).
fn relation_kind(relkind: &str) -> &'static str {
    match relkind {
        "v" => "view",
        "m" => "materialized view",
        "S" => "sequence",
        "f" => "foreign table",
        _ => "table",
    }
}

/// The key's kind word for a routine kind (`prokind`).
fn routine_kind(prokind: &str) -> &'static str {
    match prokind {
        "p" => "procedure",
        "a" => "aggregate",
        _ => "function",
    }
}

fn digest(definition: &str) -> String {
    Sha256Digest::of(definition.as_bytes()).to_string()
}

/// `"<kind> schema.name"` → SHA-256 (hex) of the object's definition, for everything the module
/// documentation lists, in one read-only transaction.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn schema_digest(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<String, String>, PgSyncError> {
    conn.begin_read_only(None).await?;
    let result = digest_in_tx(conn, selection).await;
    conn.end_read_only().await?;
    result
}

async fn digest_in_tx(
    conn: &Conn,
    selection: &Selection,
) -> Result<BTreeMap<String, String>, PgSyncError> {
    let what = "read the schema's definitions";
    // Empty search_path for this transaction only: every deparsed name comes out qualified.
    conn.exec(
        "SELECT pg_catalog.set_config('search_path', '', true)",
        None,
        "pin the search_path",
    )
    .await?;
    let selected: Vec<_> = relations(conn)
        .await?
        .into_iter()
        .filter(|r| selection.selects(&r.key))
        .collect();
    // No include pattern (the condition under which large objects belong to the sync too): the
    // whole database is the scope. Otherwise the schemas of the selected relations.
    let schemas: Option<Vec<String>> = if selection.includes_large_objects() {
        None
    } else {
        let mut s: Vec<String> = selected.iter().map(|r| r.rel.schema.clone()).collect();
        s.sort();
        s.dedup();
        Some(s)
    };
    let (nsp, rel): (Vec<String>, Vec<String>) = selected
        .into_iter()
        .map(|r| (r.rel.schema, r.rel.table))
        .unzip();
    let c = conn.client();
    let mut out = BTreeMap::new();
    for r in c
        .query(RELATIONS_SQL, &[&nsp, &rel])
        .await
        .map_err(|e| conn.err(None, what, &e))?
    {
        let kind = relation_kind(r.get(2));
        let def: String = r.get(3);
        out.insert(
            format!("{kind} {}.{}", r.get::<_, &str>(0), r.get::<_, &str>(1)),
            digest(&def),
        );
    }
    for r in c
        .query(ROUTINES_SQL, &[&schemas])
        .await
        .map_err(|e| conn.err(None, what, &e))?
    {
        let kind = routine_kind(r.get(2));
        let def: Option<String> = r.get(4);
        out.insert(
            format!(
                "{kind} {}.{}({})",
                r.get::<_, &str>(0),
                r.get::<_, &str>(1),
                r.get::<_, &str>(3)
            ),
            digest(&def.unwrap_or_default()),
        );
    }
    for r in c
        .query(TYPES_SQL, &[&schemas])
        .await
        .map_err(|e| conn.err(None, what, &e))?
    {
        let def: Option<String> = r.get(2);
        out.insert(
            format!("type {}.{}", r.get::<_, &str>(0), r.get::<_, &str>(1)),
            digest(&def.unwrap_or_default()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_kind_of_object() {
        assert_eq!(relation_kind("r"), "table");
        assert_eq!(relation_kind("p"), "table");
        assert_eq!(relation_kind("m"), "materialized view");
        assert_eq!(relation_kind("S"), "sequence");
        assert_eq!(routine_kind("p"), "procedure");
        assert_eq!(routine_kind("w"), "function");
    }

    #[test]
    fn digests_are_hex_sha256_of_the_text() {
        assert_eq!(
            digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(digest("column a integer"), digest("column a bigint"));
    }
}
