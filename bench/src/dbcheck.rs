//! Proof that a copied database holds what the old one holds: the exact row count of every
//! table, the number of indexes, constraints and triggers (the post-data section was applied),
//! the large objects and every sequence's position. A baseline that copies wrong data proves
//! nothing, so every baseline run is checked (hostshift's runs are checked by `hostshift verify`,
//! which compares content).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio_postgres::Client;

/// The countable shape of a database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Rows per table.
    pub rows: BTreeMap<String, i64>,
    /// Indexes in schema public.
    pub indexes: i64,
    /// Constraints (primary keys, unique, foreign keys, checks) in schema public.
    pub constraints: i64,
    /// User triggers.
    pub triggers: i64,
    /// Large objects.
    pub large_objects: i64,
    /// `last_value` per sequence.
    pub sequences: BTreeMap<String, Option<i64>>,
}

/// Reads the shape of the connected database.
///
/// # Errors
/// SQL errors.
pub async fn shape(client: &Client) -> Result<Shape> {
    let (_, rows) = crate::dataset::db_summary(client).await?;
    let one = |sql: &'static str| async move { Ok::<i64, anyhow::Error>(client.query_one(sql, &[]).await?.get(0)) };
    let sequences = client
        .query("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1)))
        .collect();
    Ok(Shape {
        rows,
        indexes: one("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").await?,
        constraints: one(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'",
        )
        .await?,
        triggers: one("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").await?,
        large_objects: one("SELECT count(*) FROM pg_largeobject_metadata").await?,
        sequences,
    })
}

/// Fails naming every difference between `expected` (the old database) and the copy.
///
/// # Errors
/// When anything differs.
pub async fn check(expected: &Shape, copy: &Client, what: &str) -> Result<()> {
    let got = shape(copy).await?;
    if &got == expected {
        return Ok(());
    }
    let mut diffs = Vec::new();
    for (t, n) in &expected.rows {
        match got.rows.get(t) {
            Some(m) if m == n => {}
            Some(m) => diffs.push(format!("{t}: {m} rows, expected {n}")),
            None => diffs.push(format!("{t}: missing")),
        }
    }
    for (name, a, b) in [
        ("indexes", expected.indexes, got.indexes),
        ("constraints", expected.constraints, got.constraints),
        ("triggers", expected.triggers, got.triggers),
        ("large objects", expected.large_objects, got.large_objects),
    ] {
        if a != b {
            diffs.push(format!("{name}: {b}, expected {a}"));
        }
    }
    if expected.sequences != got.sequences {
        diffs.push(format!("sequences: {:?}, expected {:?}", got.sequences, expected.sequences));
    }
    bail!("{what} is not a faithful copy: {}", diffs.join("; "))
}
