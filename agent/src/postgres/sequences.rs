//! Sequence positions: read on the source ([`read_sequences`]), set on the target
//! ([`apply_sequences`]) with `setval(seq, last_value, is_called)`, so that the next `nextval` on
//! the target continues exactly where the source is.
//!
//! The schema (pre-data) creates the sequences with their definitions but at their start value;
//! `pg_dump` carries positions in its data section, which this library does not use. Sequences
//! are not transactional: the value read is the current one, not the snapshot's — read them last
//! (after the tables), and again in the final delta sync when writes are frozen. The selection
//! applies to owned sequences through their table (serial and identity columns) and to other
//! sequences by their own name.

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::select::{self, Selection, TableRef};

/// The position of one sequence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceValue {
    /// The sequence.
    pub sequence: TableRef,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`: whether `last_value` was handed out already (`nextval` returns the next one).
    pub is_called: bool,
}

/// Reads the positions of the sequences inside the caller's transaction.
pub(crate) async fn read_in_tx(
    conn: &Conn,
    selection: &Selection,
) -> Result<Vec<SequenceValue>, PgSyncError> {
    let mut values = Vec::new();
    for r in select::relations(conn).await? {
        if r.kind != "S" || !selection.selects(&r.key) {
            continue;
        }
        let row = conn
            .client()
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", r.rel.qualified()),
                &[],
            )
            .await
            .map_err(|e| conn.err(Some(&r.rel), "read the sequence", &e))?;
        values.push(SequenceValue {
            sequence: r.rel,
            last_value: row.get(0),
            is_called: row.get(1),
        });
    }
    Ok(values)
}

/// The positions of the selected sequences of the source, in a read-only transaction (on
/// `snapshot` for the catalog; the values themselves are always current).
///
/// # Errors
/// [`PgSyncError::Query`] naming the sequence when it cannot be read (the session needs `SELECT`
/// on it).
pub async fn read_sequences(
    conn: &Conn,
    selection: &Selection,
    snapshot: Option<&SnapshotId>,
) -> Result<Vec<SequenceValue>, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let values = read_in_tx(conn, selection).await;
    conn.end_read_only().await?;
    values
}

/// Sets every sequence of `values` on the target, in one transaction. The caller must have
/// checked that this database may be written (`[allow] restore_databases`).
///
/// # Errors
/// [`PgSyncError::Query`] naming the sequence when it does not exist on the target or the value
/// is out of its bounds; nothing is changed then.
pub async fn apply_sequences(conn: &Conn, values: &[SequenceValue]) -> Result<(), PgSyncError> {
    // READ WRITE: the rollback window settles sequences on the frozen old host, whose database
    // defaults to read-only transactions (only the agent's own role can still connect).
    conn.exec("BEGIN READ WRITE", None, "begin the sequences transaction")
        .await?;
    for v in values {
        let set = conn
            .client()
            .query_one(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&v.sequence.qualified(), &v.last_value, &v.is_called],
            )
            .await;
        if let Err(e) = set {
            let _ = conn.client().batch_execute("ROLLBACK").await;
            return Err(conn.err(Some(&v.sequence), "set the sequence", &e));
        }
    }
    conn.exec("COMMIT", None, "commit the sequences").await?;
    tracing::debug!(
        database = conn.database(),
        sequences = values.len(),
        "sequences set"
    );
    Ok(())
}
