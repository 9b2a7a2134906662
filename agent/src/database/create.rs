//! The database itself, as `pg_dump --create` carries it: described on the old host (owner,
//! encoding, locale, `ALTER DATABASE … SET` settings), created on the new host when missing —
//! through the cluster's maintenance database, since a connection needs a database to exist —
//! then given its owner (once the sync's roles exist) and settings.

use hostshift_proto::v1::{DatabaseSpec, EnsureDatabaseResponse};
use hostshift_shared::dbspec;

use crate::config::DatabaseConfig;
use crate::error::AgentError;
use crate::postgres::connect;

fn pg(db: &DatabaseConfig, what: &str, e: &tokio_postgres::Error) -> AgentError {
    AgentError::Unavailable(format!(
        "database {}: {what}: {}",
        db.name,
        connect::pg_message(e)
    ))
}

/// How the database the config names is defined.
///
/// # Errors
/// `Unavailable` when it cannot be reached or read.
pub async fn describe(db: &DatabaseConfig) -> Result<DatabaseSpec, AgentError> {
    let client = connect::connect(db).await?;
    // row_to_json keeps this one query across versions (datlocprovider and daticulocale came
    // with PostgreSQL 15; 17 renamed the latter datlocale).
    let row = client
        .query_one(
            "SELECT row_to_json(d)::text, pg_catalog.pg_get_userbyid(d.datdba)::text,
                    pg_catalog.pg_encoding_to_char(d.encoding)::text,
                    coalesce((SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                              WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')::text[]
             FROM pg_catalog.pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| pg(db, "read pg_database", &e))?;
    let json: String = row.get(0);
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| AgentError::Internal(format!("pg_database row: {e}")))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(DatabaseSpec {
        owner: row.get(1),
        encoding: row.get(2),
        collate: s("datcollate"),
        ctype: s("datctype"),
        locale_provider: s("datlocprovider"),
        icu_locale: if v["daticulocale"].is_string() {
            s("daticulocale")
        } else {
            s("datlocale")
        },
        settings: carried_settings(row.get(3)),
    })
}

/// The `ALTER DATABASE … SET` settings that travel: all but `default_transaction_read_only`,
/// which is the cutover's freeze (docs/cutover.md). A database frozen on the old host (a
/// cutover's delta runs inside the freeze) must not pass its freeze on to the new one.
fn carried_settings(settings: Vec<String>) -> Vec<String> {
    settings
        .into_iter()
        .filter(|s| {
            !s.split('=').next().is_some_and(|k| {
                k.trim()
                    .eq_ignore_ascii_case("default_transaction_read_only")
            })
        })
        .collect()
}

/// For a database the server says does not exist: whether the connecting role may create it
/// (superuser or `CREATEDB`), and else why not.
pub async fn can_create(db: &DatabaseConfig) -> (bool, String) {
    let client = match connect::connect_maintenance(db).await {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!(
                    "the maintenance database (postgres, template1) is not reachable either: {e}"
                ),
            );
        }
    };
    match client
        .query_one(
            "SELECT rolsuper OR rolcreatedb, current_user::text FROM pg_catalog.pg_roles
             WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => (true, String::new()),
        Ok(row) => (
            false,
            format!(
                "the connecting role {} may not create databases (no CREATEDB)",
                row.get::<_, String>(1)
            ),
        ),
        Err(e) => (
            false,
            format!(
                "cannot read the connecting role: {}",
                connect::pg_message(&e)
            ),
        ),
    }
}

/// Creates the database when missing, gives it `spec`'s owner when that role exists here, and
/// applies the settings it lacks. The caller has checked `[allow] restore_databases`.
///
/// # Errors
/// `Unavailable` when the cluster cannot be reached, `FailedPrecondition` when PostgreSQL
/// refuses a statement (with the statement).
pub async fn ensure(
    db: &DatabaseConfig,
    spec: &DatabaseSpec,
) -> Result<EnsureDatabaseResponse, AgentError> {
    let Some(name) = connect::database_name(db)? else {
        return Err(AgentError::FailedPrecondition(format!(
            "database {}: its conninfo names no dbname to create",
            db.name
        )));
    };
    // A cluster whose maintenance database this role may not reach (some managed ones) can
    // still carry owner and settings of a database that exists, from inside it.
    let client = match connect::connect_maintenance(db).await {
        Ok(c) => c,
        Err(e) => connect::connect(db).await.map_err(|_| e)?,
    };
    let run = |sql: String| {
        let client = &client;
        async move {
            client.batch_execute(&sql).await.map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "database {}: {sql}: {}",
                    db.name,
                    connect::pg_message(&e)
                ))
            })?;
            Ok::<String, AgentError>(sql)
        }
    };
    let mut out = EnsureDatabaseResponse::default();
    let owner_exists = !spec.owner.is_empty()
        && client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&spec.owner],
            )
            .await
            .map_err(|e| pg(db, "read pg_roles", &e))?
            .is_some();
    let current = client
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text,
                    coalesce((SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                              WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')::text[]
             FROM pg_catalog.pg_database d WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| pg(db, "read pg_database", &e))?;
    let (owner, settings): (String, Vec<String>) = match current {
        Some(row) => (row.get(0), row.get(1)),
        None => {
            out.changes
                .push(run(dbspec::create_sql(&name, spec, owner_exists)).await?);
            out.created = true;
            tracing::info!(database = %db.name, "created the database");
            (
                if owner_exists {
                    spec.owner.clone()
                } else {
                    String::new()
                },
                Vec::new(),
            )
        }
    };
    let mut alter = Vec::new();
    if owner_exists && owner != spec.owner {
        alter.push(format!(
            "ALTER DATABASE {} OWNER TO {}",
            dbspec::ident(&name),
            dbspec::ident(&spec.owner)
        ));
    }
    alter.extend(
        spec.settings
            .iter()
            .filter(|s| !settings.contains(s))
            .filter_map(|s| dbspec::set_sql(&name, s)),
    );
    for sql in alter {
        match run(sql).await {
            Ok(sql) => out.changes.push(sql),
            Err(e) => {
                tracing::warn!(database = %db.name, error = %e, "database property not carried");
                out.warnings.push(e.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::carried_settings;

    #[test]
    fn the_freezes_read_only_setting_never_travels_the_others_do() {
        let got = carried_settings(vec![
            "search_path=app, public".into(),
            "default_transaction_read_only=on".into(),
            "DEFAULT_TRANSACTION_READ_ONLY = on".into(),
            "work_mem=64MB".into(),
        ]);
        assert_eq!(got, vec!["search_path=app, public", "work_mem=64MB"]);
    }
}
