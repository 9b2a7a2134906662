//! The rollback window on the new host (`coordinator/src/window`): besides the slot and
//! publication of [`super::source::prepare`], an **insert-only** publication
//! `hostshift_<id>_ins` over the tables without a replica identity. A publication that publishes
//! only INSERT never makes the application's UPDATE or DELETE fail on such a table, and their
//! inserts — the usual writes to tables without a key: logs, audit trails — travel back to the
//! old host with everything else. Their updates and deletes do not; the rollback compares those
//! tables on both hosts inside its freeze and names the ones that differ.
//!
//! The peek reads both publications (`publication_names` is a comma-separated list); like the
//! main one, this publication exists before the slot, so pgoutput finds it for every decoded
//! change.

use super::source;
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
/// identity; drops it when there is none. Returns its name when it exists.
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
    let client = source::connect(ctx, database).await?;
    let conn = Conn::new(client, database);
    let tables = crate::postgres::list_tables(&conn, selection)
        .await
        .map_err(AgentError::from)?;
    let client = conn.into_client();
    let mut keyless = Vec::new();
    for t in &tables {
        let (_, ok) = source::replica_identity(&client, database, &t.table).await?;
        if !ok {
            keyless.push(t.table.qualified());
        }
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some();
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
