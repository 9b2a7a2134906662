//! The rollback window on the new host (`coordinator/src/window`): the tables without a replica
//! identity, and the replica identities the move's follow left here.
//!
//! # Tables without a key
//! With the database in this (new) agent's `[allow] replica_identity_full`,
//! [`super::source::prepare`] sets `REPLICA IDENTITY FULL` on them (originals recorded first) and
//! publishes them in the main publication: their inserts, updates and deletes all travel back
//! (the old host's applier finds a row by all its columns, one row per change).
//!
//! Without it, an **insert-only** publication `hostshift_<id>_ins` covers them. A publication
//! that publishes only INSERT never makes the application's UPDATE or DELETE fail on such a
//! table, and their inserts — the usual writes to tables without a key: logs, audit trails —
//! travel back to the old host with everything else. Their updates and deletes do not; the
//! rollback compares those tables on both hosts inside its freeze and names the ones that differ.
//! The peek reads both publications (`publication_names` is a comma-separated list); like the
//! main one, this publication exists before the slot, so pgoutput finds it for every decoded
//! change.
//!
//! # Identities the move's follow set
//! With the *old* agent's `[allow] replica_identity_full`, the first copy carried `REPLICA
//! IDENTITY FULL` here, so such tables are in the window's main publication whatever this
//! agent allows. The move's cleanup (right after the switch) would put their original identity
//! back here — and a table without a key in a publication that publishes UPDATE makes the app's
//! UPDATE fail. [`keep_identities`] hands them to the window instead: its Drop puts them back.

use super::{source, store};
use crate::Ctx;
use crate::error::AgentError;
use crate::postgres::sql::ident;
use crate::postgres::{Conn, Selection};

/// `hostshift_<id>_ins`.
///
/// # Errors
/// `InvalidArgument` for an invalid id.
pub fn insert_publication(id: &str) -> Result<String, AgentError> {
    Ok(format!("{}_ins", source::object_name(id)?))
}

/// Creates (or sets) the insert-only publication over the selected tables without a replica
/// identity; drops it when there is none — always with `[allow] replica_identity_full` for the
/// database, which makes them FULL instead. Returns its name when it exists.
///
/// # Errors
/// `Database` when the server refuses.
pub async fn prepare_insert_only(
    ctx: &Ctx,
    database: &str,
    selection: &Selection,
    id: &str,
) -> Result<Option<String>, AgentError> {
    let name = insert_publication(id)?;
    // Allowed: `source::prepare` makes them FULL and publishes them whole.
    let full = ctx
        .config
        .allow
        .replica_identity_full
        .iter()
        .any(|d| d == database);
    let client = source::connect(ctx, database).await?;
    let conn = Conn::new(client, database);
    let tables = crate::postgres::list_tables(&conn, selection)
        .await
        .map_err(AgentError::from)?;
    let client = conn.into_client();
    let mut keyless = Vec::new();
    for t in tables.iter().filter(|_| !full) {
        let (_, usable) = source::replica_identity(&client, database, &t.table).await?;
        if !usable {
            keyless.push(t.table.qualified());
        }
    }
    let exists = source::publication_exists(&client, database, &name).await?;
    let sql = match (exists, keyless.is_empty()) {
        (_, true) => format!("DROP PUBLICATION IF EXISTS {}", ident(&name)),
        (false, false) => format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert', publish_via_partition_root = true)",
            ident(&name),
            keyless.join(", ")
        ),
        (true, false) => format!(
            "ALTER PUBLICATION {} SET TABLE {}",
            ident(&name),
            keyless.join(", ")
        ),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok((!keyless.is_empty()).then_some(name))
}

/// Drops the insert-only publication; idempotent.
///
/// # Errors
/// `Database` when the server refuses.
pub async fn drop_insert_only(ctx: &Ctx, database: &str, id: &str) -> Result<bool, AgentError> {
    let name = insert_publication(id)?;
    let client = source::connect(ctx, database).await?;
    let existed = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some();
    if existed {
        // A frozen database defaults to read-only transactions. Two round trips: statements
        // of one simple query share an implicit transaction, read-only from its start.
        client
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| AgentError::db(database, &e))?;
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
            .await
            .map_err(|e| AgentError::db(database, &e))?;
    }
    Ok(existed)
}

/// Keeps the replica identities `items` (qualified table, original `d`|`n`) that the move's
/// cleanup would put back now, when the rollback window's slot is on this host: they are added
/// to the record of identities set to FULL (an earlier original wins), which the window's Drop
/// ([`source::drop_follow`]) puts back. Returns `false` without a slot here: the caller puts
/// them back itself.
///
/// # Errors
/// The state folder cannot be read or written.
pub fn keep_identities(
    ctx: &Ctx,
    database: &str,
    items: &[(String, String)],
) -> Result<bool, AgentError> {
    let Some(window) = store::source(ctx, database)? else {
        return Ok(false);
    };
    let mut record = store::identities(ctx, database)?.unwrap_or_else(|| store::IdentityRecord {
        database: database.to_string(),
        tables: Vec::new(),
    });
    for (table, original) in items {
        if original != "f" && !record.tables.iter().any(|(t, _)| t == table) {
            record.tables.push((table.clone(), original.clone()));
        }
    }
    store::save_identities(ctx, &record)?;
    tracing::info!(database, slot = %window.slot, tables = items.len(), "replica identities kept FULL until the rollback window closes");
    Ok(true)
}
