//! The SQL of the cutover's write freeze on the old host: read and change a database's own
//! `default_transaction_read_only` (`ALTER DATABASE … SET`), and end the other sessions on it.
//! What was there before is recorded by the caller (the agent's state folder,
//! [`crate::database`]); this module only talks to the server.
//!
//! # What the freeze does and does not stop
//! `default_transaction_read_only = on` on the database makes every transaction of every **new**
//! session read-only (a write fails with SQLSTATE 25006). It is a default, not a lock: a session
//! may still `SET default_transaction_read_only = off` or `BEGIN READ WRITE`, and a role-specific
//! setting (`ALTER ROLE … [IN DATABASE …] SET`) wins over the database's — [`overriding_roles`]
//! lists those so the caller can warn.
//!
//! So the freeze also takes the `CONNECT` privilege on the database away ([`lock_out`]) from
//! `PUBLIC` and from every role the owner granted it to — the owner included — except the
//! agent's own role (the one it connects as) and the roles whose privileges that role inherits
//! (it would lose `CONNECT` with them). Once the open sessions are ended, no other
//! non-superuser can open a session on the database at all, whatever it `SET`s; superusers are
//! not bound by privileges. What was taken is returned ([`ConnectGrant`]) for the caller to
//! record, and [`restore_access`] gives exactly that back. `CONNECT` granted by another grantor
//! (one holding the grant option) is not revoked; [`roles_still_connecting`] lists every login
//! role that can still connect, so the caller can warn.
//!
//! # Privileges
//! `ALTER DATABASE … SET`, `REVOKE` and `GRANT` on it need the database's owner or a superuser; ending another role's
//! session needs that role's membership, `pg_signal_backend`, or a superuser (and only a superuser
//! may end a superuser's session). A refusal is reported with what is needed.

use tokio_postgres::error::SqlState;

use super::conn::Conn;
use super::error::PgSyncError;
use super::sql;

/// The setting the freeze changes.
pub const SETTING: &str = "default_transaction_read_only";

/// How long ending the sessions may take before those left are counted as not ended.
const TERMINATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often [`end_other_sessions`] looks whether the ended sessions are gone.
const TERMINATE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

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
/// of this session's role whose `application_name` is `spare` (the agent's own connections: any
/// other role naming itself so is ended too), waiting up to 5 s in all for them to be gone.
/// Returns how many ended.
///
/// Every session is signalled first, then all are awaited together, looking every 2 ms: the
/// server's own wait (`pg_terminate_backend(pid, timeout)`) sleeps in steps of 100 ms and one
/// session after another, which cost the write freeze ~100 ms per session of the app. A session
/// is gone when it has left `pg_stat_activity`: a backend leaves it only after it has aborted
/// its transaction (PostgreSQL runs that before-shmem-exit step before clearing its entry), and
/// a commit under way when the signal came completes before that — so nothing it does can
/// commit after this returns.
///
/// # Errors
/// [`PgSyncError::Query`]; a missing privilege says which one is needed.
pub async fn end_other_sessions(conn: &Conn, spare: &str) -> Result<u32, PgSyncError> {
    let rows = conn
        .client()
        .query(
            // In the select list, not the WHERE clause: only rows that passed the filter are
            // signalled (the planner may evaluate a WHERE condition before the others).
            "SELECT a.pid, pg_catalog.pg_terminate_backend(a.pid)
             FROM pg_catalog.pg_stat_activity a
             WHERE a.datname = pg_catalog.current_database()
               AND a.backend_type = 'client backend'
               AND a.pid <> pg_catalog.pg_backend_pid()
               AND NOT (a.application_name IS NOT DISTINCT FROM $1
                        AND a.usename = CURRENT_USER)",
            &[&spare],
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
    // Signalled (a session that ended meanwhile is not: nothing to wait for).
    let pids: Vec<i32> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if pids.is_empty() {
        return Ok(0);
    }
    let deadline = std::time::Instant::now() + TERMINATE_WAIT;
    loop {
        let left: i64 = conn
            .client()
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .map_err(|e| conn.err(None, "see whether the ended sessions are gone", &e))?
            .get(0);
        if left == 0 || std::time::Instant::now() >= deadline {
            let ended = pids.len() as i64 - left;
            return Ok(u32::try_from(ended).unwrap_or(u32::MAX));
        }
        tokio::time::sleep(TERMINATE_POLL).await;
    }
}

/// One `CONNECT` privilege on the database that [`lock_out`] took away (granted by the owner).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectGrant {
    /// The role it was granted to; `None`: `PUBLIC`.
    pub grantee: Option<String>,
    /// It was granted `WITH GRANT OPTION`.
    pub grantable: bool,
}

impl ConnectGrant {
    fn target(&self) -> String {
        self.grantee
            .as_deref()
            .map_or_else(|| "PUBLIC".to_string(), sql::ident)
    }

    /// `PUBLIC` or the role's name, for people.
    pub fn shown(&self) -> &str {
        self.grantee.as_deref().unwrap_or("PUBLIC")
    }
}

/// The `CONNECT` privileges on this database that [`lock_out`] takes away: those the owner
/// granted (a default ACL counts as the owner's grants to itself and `PUBLIC`) to `PUBLIC` and to
/// every role except superusers (privileges do not bind them), this session's role, and — when
/// that role is not a superuser — the roles whose privileges it inherits (it would lose
/// `CONNECT` with them).
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn connect_grants(conn: &Conn) -> Result<Vec<ConnectGrant>, PgSyncError> {
    let rows = conn
        .client()
        .query(
            "WITH me AS (SELECT oid, rolsuper FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER)
             SELECT CASE WHEN a.grantee = 0 THEN NULL
                         ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
                    a.is_grantable
             FROM pg_catalog.pg_database d, me,
                  pg_catalog.aclexplode(coalesce(d.datacl,
                                                 pg_catalog.acldefault('d', d.datdba))) a
             WHERE d.datname = pg_catalog.current_database()
               AND a.privilege_type = 'CONNECT'
               AND a.grantor = d.datdba
               AND a.grantee <> me.oid
               AND (a.grantee = 0 OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r
                                                 WHERE r.oid = a.grantee AND r.rolsuper))
               AND (a.grantee = 0 OR me.rolsuper
                    OR NOT pg_catalog.pg_has_role(me.oid, a.grantee, 'USAGE'))
             ORDER BY 1 NULLS FIRST",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, "read who may connect to the database", &e))?;
    Ok(rows
        .iter()
        .map(|r| ConnectGrant {
            grantee: r.get(0),
            grantable: r.get(1),
        })
        .collect())
}

/// In one transaction: revokes `grants` (from [`connect_grants`]) and, with `set_on`, sets the
/// database's own [`SETTING`] to `on`. Refused — nothing changed — when this session's role would
/// then be unable to connect itself.
///
/// # Errors
/// [`PgSyncError::Query`]; a missing privilege says that the database's owner or a superuser is
/// needed.
pub async fn lock_out(
    conn: &Conn,
    set_on: bool,
    grants: &[ConnectGrant],
) -> Result<(), PgSyncError> {
    let name = current_database(conn).await?;
    let db = sql::ident(&name);
    let mut statement = String::from("BEGIN READ WRITE;");
    for g in grants {
        statement.push_str(&format!(
            " REVOKE CONNECT ON DATABASE {db} FROM {};",
            g.target()
        ));
    }
    if set_on {
        statement.push_str(&format!(" ALTER DATABASE {db} SET {SETTING} = on;"));
    }
    let what = "take CONNECT away and make the database read-only";
    if let Err(e) = conn.client().batch_execute(&statement).await {
        let _ = conn.client().batch_execute("ROLLBACK").await;
        return Err(failed(conn, what, OWNER_NEEDED, &e));
    }
    let kept: Result<bool, _> = conn
        .client()
        .query_one(
            "SELECT pg_catalog.has_database_privilege(CURRENT_USER, pg_catalog.current_database(), 'CONNECT')",
            &[],
        )
        .await
        .map(|r| r.get(0));
    match kept {
        Ok(true) => {}
        Ok(false) => {
            let _ = conn.client().batch_execute("ROLLBACK").await;
            return Err(PgSyncError::Query {
                database: conn.database().to_string(),
                table: None,
                what: what.into(),
                code: Some("42501".into()),
                message: "the agent's own role would lose CONNECT on the database (it has it only \
                          through PUBLIC); nothing was changed: GRANT CONNECT ON DATABASE to the \
                          role in this database's conninfo, or connect as the owner or a superuser"
                    .into(),
            });
        }
        Err(e) => {
            let _ = conn.client().batch_execute("ROLLBACK").await;
            return Err(conn.err(None, what, &e));
        }
    }
    conn.client()
        .batch_execute("COMMIT")
        .await
        .map_err(|e| failed(conn, what, OWNER_NEEDED, &e))
}

/// Undoes [`lock_out`] in one transaction: grants `grants` back (as the owner, `WITH GRANT OPTION`
/// where they had it) and sets the database's own [`SETTING`] to `setting` (`None`: `RESET`).
/// A role dropped since is skipped; its name is returned.
///
/// # Errors
/// As [`lock_out`].
pub async fn restore_access(
    conn: &Conn,
    setting: Option<&str>,
    grants: &[ConnectGrant],
) -> Result<Vec<String>, PgSyncError> {
    let name = current_database(conn).await?;
    let db = sql::ident(&name);
    let what = "give CONNECT back and restore the database's default_transaction_read_only";
    let mut statement = String::from("BEGIN READ WRITE;");
    let mut gone = Vec::new();
    for g in grants {
        if let Some(role) = &g.grantee {
            let exists = conn
                .client()
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[role],
                )
                .await
                .map_err(|e| conn.err(None, what, &e))?
                .is_some();
            if !exists {
                gone.push(role.clone());
                continue;
            }
        }
        statement.push_str(&format!(
            " GRANT CONNECT ON DATABASE {db} TO {}{};",
            g.target(),
            if g.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    statement.push_str(&match setting {
        Some(v) => format!(" ALTER DATABASE {db} SET {SETTING} = {};", sql::literal(v)),
        None => format!(" ALTER DATABASE {db} RESET {SETTING};"),
    });
    statement.push_str(" COMMIT");
    if let Err(e) = conn.client().batch_execute(&statement).await {
        let _ = conn.client().batch_execute("ROLLBACK").await;
        return Err(failed(conn, what, OWNER_NEEDED, &e));
    }
    Ok(gone)
}

/// Login roles other than this session's, not superusers, that can still connect to the
/// database (through a grant [`lock_out`] does not revoke, or by inheriting this session's role).
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn roles_still_connecting(conn: &Conn) -> Result<Vec<String>, PgSyncError> {
    let rows = conn
        .client()
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles
             WHERE rolcanlogin AND NOT rolsuper AND rolname <> CURRENT_USER
               AND pg_catalog.has_database_privilege(oid, pg_catalog.current_database(), 'CONNECT')
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, "read which roles may still connect", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// This session's role, for messages.
///
/// # Errors
/// [`PgSyncError::Query`].
pub async fn session_role(conn: &Conn) -> Result<String, PgSyncError> {
    conn.client()
        .query_one("SELECT CURRENT_USER::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| conn.err(None, "read the session's role", &e))
}

async fn current_database(conn: &Conn) -> Result<String, PgSyncError> {
    conn.client()
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| conn.err(None, "read the database's name", &e))
}

/// What a refused `ALTER DATABASE`, `GRANT` or `REVOKE` needs.
const OWNER_NEEDED: &str = "ALTER DATABASE, GRANT and REVOKE on it need the database's owner or a \
                            superuser: connect as one of them in this database's conninfo";

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
