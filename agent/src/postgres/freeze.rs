//! The SQL of the cutover's write freeze on the old host: read and change a database's own
//! `default_transaction_read_only` (`ALTER DATABASE … SET`), and end the other sessions on it.
//! What was there before is recorded by the caller (the agent's state folder,
//! [`crate::database`]); this module only talks to the server.
//!
//! # What the freeze does and does not stop
//! `default_transaction_read_only = on` on the database makes every transaction of every **new**
//! session read-only (a write fails with SQLSTATE 25006), so once the open sessions are ended the
//! application's pool reconnects read-only. It is a default, not a lock: a session may still
//! `SET default_transaction_read_only = off` or `BEGIN READ WRITE`, and a role-specific setting
//! (`ALTER ROLE … [IN DATABASE …] SET`) wins over the database's — [`overriding_roles`] lists
//! those so the caller can warn. Applications do not do either by accident.
//!
//! # Privileges
//! `ALTER DATABASE … SET` needs the database's owner or a superuser; ending another role's
//! session needs that role's membership, `pg_signal_backend`, or a superuser (and only a superuser
//! may end a superuser's session). A refusal is reported with what is needed.

use tokio_postgres::error::SqlState;

use super::conn::Conn;
use super::error::PgSyncError;
use super::sql;

/// The setting the freeze changes.
pub const SETTING: &str = "default_transaction_read_only";

/// How long ending one session may take before it is counted as not ended (milliseconds).
const TERMINATE_WAIT_MS: i64 = 5000;

/// A failure; when it is a missing privilege, `what` also says which privilege is needed.
fn failed(conn: &Conn, what: &str, needs: &str, e: &tokio_postgres::Error) -> PgSyncError {
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        conn.err(None, &format!("{what} ({needs})"), e)
    } else {
        conn.err(None, what, e)
    }
}

/// The database's own value of [`SETTING`] for all roles (`pg_db_role_setting` with `setrole =
/// 0`), as stored (`on`, `true`, `off` …), or `None` when it sets none.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn database_setting(conn: &Conn) -> Result<Option<String>, PgSyncError> {
    let row = conn
        .client()
        .query_opt(
            "SELECT substr(c, length($1) + 2)
             FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c
             WHERE s.setrole = 0
               AND s.setdatabase = (SELECT oid FROM pg_catalog.pg_database
                                    WHERE datname = pg_catalog.current_database())
               AND c LIKE $1 || '=%'",
            &[&SETTING],
        )
        .await
        .map_err(|e| {
            conn.err(
                None,
                "read the database's default_transaction_read_only",
                &e,
            )
        })?;
    Ok(row.map(|r| r.get(0)))
}

/// Sets the database's own [`SETTING`] to `value` (stored as given), or removes it (`None`:
/// `RESET`, so the server's default applies again). Runs in an explicit read-write transaction:
/// the session itself may have started read-only because the database already was.
///
/// # Errors
/// [`PgSyncError::Query`]; a missing privilege says that the database's owner or a superuser is
/// needed.
pub async fn set_database_setting(conn: &Conn, value: Option<&str>) -> Result<(), PgSyncError> {
    let what = "change the database's default_transaction_read_only";
    let name: String = conn
        .client()
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map_err(|e| conn.err(None, what, &e))?
        .get(0);
    let change = match value {
        Some(v) => format!("SET {SETTING} = {}", sql::literal(v)),
        None => format!("RESET {SETTING}"),
    };
    let statement = format!(
        "BEGIN READ WRITE; ALTER DATABASE {} {change}; COMMIT",
        sql::ident(&name)
    );
    if let Err(e) = conn.client().batch_execute(&statement).await {
        // Leave the session usable (the caller may go on with it).
        let _ = conn.client().batch_execute("ROLLBACK").await;
        return Err(failed(
            conn,
            what,
            "ALTER DATABASE needs the database's owner or a superuser: connect as one of them \
             in this database's conninfo",
            &e,
        ));
    }
    Ok(())
}

/// Roles whose own [`SETTING`] (for this database or for all) wins over the database's, so the
/// freeze does not reach their new sessions.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn overriding_roles(conn: &Conn) -> Result<Vec<String>, PgSyncError> {
    let rows = conn
        .client()
        .query(
            "SELECT DISTINCT r.rolname::text
             FROM pg_catalog.pg_db_role_setting s
             JOIN pg_catalog.pg_roles r ON r.oid = s.setrole,
                  unnest(s.setconfig) AS c
             WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname = pg_catalog.current_database()))
               AND c LIKE $1 || '=%'
             ORDER BY 1",
            &[&SETTING],
        )
        .await
        .map_err(|e| conn.err(None, "read the roles' default_transaction_read_only", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Ends every other client session on this connection's database, except this one and those
/// whose `application_name` is `spare` (the agent's own connections), waiting up to 5 s for each
/// to be gone. Returns how many ended.
///
/// # Errors
/// [`PgSyncError::Query`]; a missing privilege says which one is needed.
pub async fn end_other_sessions(conn: &Conn, spare: &str) -> Result<u32, PgSyncError> {
    let row = conn
        .client()
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid, $2))
             FROM pg_catalog.pg_stat_activity a
             WHERE a.datname = pg_catalog.current_database()
               AND a.backend_type = 'client backend'
               AND a.pid <> pg_catalog.pg_backend_pid()
               AND a.application_name IS DISTINCT FROM $1",
            &[&spare, &TERMINATE_WAIT_MS],
        )
        .await
        .map_err(|e| {
            failed(
                conn,
                "end the other sessions on the database",
                "ending another role's session needs that role, membership in pg_signal_backend \
                 or a superuser; a superuser's session only a superuser",
                &e,
            )
        })?;
    let n: i64 = row.get(0);
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Whether a stored boolean setting value means on (PostgreSQL's spellings: `on`, `true`, `yes`,
/// `1`, and unique prefixes of `true` and `yes`).
pub fn is_on(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    v == "on" || v == "1" || (!v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boolean_spellings_are_read_like_postgresql() {
        for on in ["on", "ON", "true", "t", "tr", "yes", "y", "1"] {
            assert!(is_on(on), "{on}");
        }
        for off in ["off", "of", "false", "f", "no", "n", "0", ""] {
            assert!(!is_on(off), "{off}");
        }
    }
}
