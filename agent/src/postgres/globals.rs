//! Roles: `pg_dump` does not dump them, yet the schema's `OWNER TO` and `GRANT` statements need
//! them. The source reads the roles the database uses ([`read_globals`]) as data, not SQL; the
//! target decides what to run ([`apply_globals`]): so no statement text crosses the network, and
//! the target can refuse to touch its own login role.
//!
//! # Which roles
//! The roles the database depends on (`pg_shdepend`: owners of its objects, grantees of its
//! privileges, default privileges, policies), the database's owner and grantees, then the roles
//! those are members of (their rights flow from them) and the roles that are members of those
//! (typically the login role the app connects as). Predefined roles (`pg_*`) and the bootstrap
//! superuser are never created or altered: every cluster has its own. Memberships among these
//! roles (and in predefined roles) are granted, with their admin option.
//!
//! # Attributes and passwords
//! `SUPERUSER`, `CREATEDB`, `CREATEROLE`, `INHERIT`, `LOGIN`, `REPLICATION`, `BYPASSRLS`,
//! `CONNECTION LIMIT`, `VALID UNTIL` are copied. Password hashes (SCRAM or MD5, which stay valid
//! under the same role name) are copied when the source session can read `pg_authid` (a
//! superuser); otherwise roles are created without a password and [`Globals::note`] says so —
//! the operator sets them (`ALTER ROLE … PASSWORD`) on the new host. Per-role settings
//! (`ALTER ROLE … SET`) are not copied.
//!
//! # Applying
//! One transaction: a role that is missing is created with the source's attributes; one that
//! exists is altered to match (its password only when the source's is known). The target
//! session's own role and the target's bootstrap superuser are left alone and reported.

use super::conn::Conn;
use super::error::PgSyncError;
use super::sql;

/// A role as the source has it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleDef {
    /// Role name.
    pub name: String,
    /// `SUPERUSER`.
    pub superuser: bool,
    /// `INHERIT`.
    pub inherit: bool,
    /// `CREATEROLE`.
    pub create_role: bool,
    /// `CREATEDB`.
    pub create_db: bool,
    /// `LOGIN`.
    pub login: bool,
    /// `REPLICATION`.
    pub replication: bool,
    /// `BYPASSRLS`.
    pub bypass_rls: bool,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
    /// `VALID UNTIL`, as text in UTC (`2030-01-01 00:00:00+00`, `infinity`).
    pub valid_until: Option<String>,
    /// The stored password hash, when it could be read and is set.
    pub password_hash: Option<String>,
}

/// `member` is a member of `role`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    /// The role granted.
    pub role: String,
    /// The role it is granted to.
    pub member: String,
    /// `WITH ADMIN OPTION`.
    pub admin_option: bool,
}

/// The roles a database uses, read from the source.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Globals {
    /// The roles, by name.
    pub roles: Vec<RoleDef>,
    /// Memberships among them.
    pub memberships: Vec<Membership>,
    /// Whether password hashes could be read (`pg_authid`).
    pub passwords_read: bool,
    /// For the operator, e.g. that passwords were not copied.
    pub note: Option<String>,
}

/// What [`apply_globals`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GlobalsReport {
    /// Roles created.
    pub created: Vec<String>,
    /// Existing roles whose attributes were set to the source's.
    pub altered: Vec<String>,
    /// Roles left alone, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Memberships granted (or given their admin option).
    pub memberships_granted: usize,
}

const ROLES_SQL: &str = "
WITH RECURSIVE db AS (
    SELECT oid, datdba FROM pg_catalog.pg_database WHERE datname = current_database()
), used AS (
    SELECT s.refobjid AS oid FROM pg_catalog.pg_shdepend s, db
    WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass
      AND (s.dbid = db.oid OR (s.classid = 'pg_catalog.pg_database'::regclass AND s.objid = db.oid))
    UNION SELECT datdba FROM db
), up(oid) AS (
    SELECT oid FROM used
    UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN up ON m.member = up.oid
), down(oid) AS (
    SELECT oid FROM used
    UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN down ON m.roleid = down.oid
)
SELECT r.oid, r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
       r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text
FROM pg_catalog.pg_roles r
WHERE r.oid IN (SELECT oid FROM up UNION SELECT oid FROM down)
  AND r.oid >= 16384
ORDER BY r.rolname";

/// Reads the roles the connected database uses, with memberships and (when readable) password
/// hashes, in a read-only transaction.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalogs cannot be read.
pub async fn read_globals(conn: &Conn) -> Result<Globals, PgSyncError> {
    conn.begin_read_only(None).await?;
    let globals = read_in_tx(conn).await;
    conn.end_read_only().await?;
    globals
}

async fn read_in_tx(conn: &Conn) -> Result<Globals, PgSyncError> {
    let what = "read the roles";
    let c = conn.client();
    let rows = c
        .query(ROLES_SQL, &[])
        .await
        .map_err(|e| conn.err(None, what, &e))?;
    let passwords_read: bool = c
        .query_one(
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, what, &e))?
        .get(0);
    let oids: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
    let mut roles = Vec::with_capacity(rows.len());
    for r in &rows {
        let oid: u32 = r.get(0);
        let password_hash = if passwords_read {
            c.query_one(
                "SELECT rolpassword FROM pg_catalog.pg_authid WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| conn.err(None, what, &e))?
            .get(0)
        } else {
            None
        };
        roles.push(RoleDef {
            name: r.get(1),
            superuser: r.get(2),
            inherit: r.get(3),
            create_role: r.get(4),
            create_db: r.get(5),
            login: r.get(6),
            replication: r.get(7),
            bypass_rls: r.get(8),
            connection_limit: r.get(9),
            valid_until: r.get(10),
            password_hash,
        });
    }
    let memberships = c
        .query(
            "SELECT g.rolname::text, u.rolname::text, m.admin_option
             FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             JOIN pg_catalog.pg_roles u ON u.oid = m.member
             WHERE m.member = ANY($1) AND (m.roleid = ANY($1) OR g.rolname ~ '^pg_')
             ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(|e| conn.err(None, what, &e))?
        .iter()
        .map(|r| Membership {
            role: r.get(0),
            member: r.get(1),
            admin_option: r.get(2),
        })
        .collect();
    let note = (!passwords_read).then(|| {
        "the source session cannot read pg_authid (not a superuser): roles were copied without \
         passwords; set them on the new host with ALTER ROLE ... PASSWORD"
            .to_string()
    });
    Ok(Globals {
        roles,
        memberships,
        passwords_read,
        note,
    })
}

/// `WITH …` options of `CREATE ROLE`/`ALTER ROLE` for `r`.
fn options(r: &RoleDef) -> String {
    let flag = |on: bool, name: &str| {
        if on {
            format!(" {name}")
        } else {
            format!(" NO{name}")
        }
    };
    let mut s = String::from(" WITH");
    s.push_str(&flag(r.superuser, "SUPERUSER"));
    s.push_str(&flag(r.inherit, "INHERIT"));
    s.push_str(&flag(r.create_role, "CREATEROLE"));
    s.push_str(&flag(r.create_db, "CREATEDB"));
    s.push_str(&flag(r.login, "LOGIN"));
    s.push_str(&flag(r.replication, "REPLICATION"));
    s.push_str(&flag(r.bypass_rls, "BYPASSRLS"));
    s.push_str(&format!(" CONNECTION LIMIT {}", r.connection_limit));
    if let Some(v) = &r.valid_until {
        s.push_str(&format!(" VALID UNTIL {}", sql::literal(v)));
    }
    if let Some(p) = &r.password_hash {
        s.push_str(&format!(" PASSWORD {}", sql::literal(p)));
    }
    s
}

/// Creates the missing roles of `globals` on the target, aligns the attributes of the existing
/// ones, and grants the memberships, in one transaction. The caller must have checked that this
/// host may be written (`[allow] restore_databases`); this function does not.
///
/// # Errors
/// [`PgSyncError::Query`] naming the role when a statement fails (e.g. the target session may not
/// create roles or grant `SUPERUSER`); nothing is changed then.
pub async fn apply_globals(conn: &Conn, globals: &Globals) -> Result<GlobalsReport, PgSyncError> {
    conn.exec("BEGIN", None, "begin the roles transaction")
        .await?;
    let report = apply_in_tx(conn, globals).await;
    match report {
        Ok(report) => {
            conn.exec("COMMIT", None, "commit the roles").await?;
            tracing::debug!(database = conn.database(), ?report, "roles applied");
            Ok(report)
        }
        Err(e) => {
            let _ = conn.client().batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn apply_in_tx(conn: &Conn, globals: &Globals) -> Result<GlobalsReport, PgSyncError> {
    let c = conn.client();
    let mut report = GlobalsReport::default();
    for role in &globals.roles {
        let label = format!("role {}", role.name);
        let existing = c
            .query_opt(
                "SELECT r.oid = 10 OR r.rolname IN (session_user, current_user)
                 FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[&role.name],
            )
            .await
            .map_err(|e| conn.err(Some(&label), "look the role up", &e))?;
        match existing.map(|r| r.get::<_, bool>(0)) {
            None => {
                let sql = format!("CREATE ROLE {}{}", sql::ident(&role.name), options(role));
                conn.exec(&sql, Some(&label), "create the role").await?;
                report.created.push(role.name.clone());
            }
            Some(true) => report.skipped.push((
                role.name.clone(),
                "the target's own login role or bootstrap superuser".into(),
            )),
            Some(false) => {
                let sql = format!("ALTER ROLE {}{}", sql::ident(&role.name), options(role));
                conn.exec(&sql, Some(&label), "alter the role").await?;
                report.altered.push(role.name.clone());
            }
        }
    }
    for m in &globals.memberships {
        let label = format!("role {}", m.member);
        let has: Option<bool> = c
            .query_opt(
                "SELECT m.admin_option FROM pg_catalog.pg_auth_members m
                 WHERE m.roleid = $1::text::regrole AND m.member = $2::text::regrole",
                &[&sql::ident(&m.role), &sql::ident(&m.member)],
            )
            .await
            .map_err(|e| conn.err(Some(&label), "look the membership up", &e))?
            .map(|r| r.get(0));
        if has.is_none() || (m.admin_option && has == Some(false)) {
            let admin = if m.admin_option {
                " WITH ADMIN OPTION"
            } else {
                ""
            };
            let sql = format!(
                "GRANT {} TO {}{admin}",
                sql::ident(&m.role),
                sql::ident(&m.member)
            );
            conn.exec(&sql, Some(&label), "grant the membership")
                .await?;
            report.memberships_granted += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_options_spell_every_attribute_and_quote_values() {
        let r = RoleDef {
            name: "app".into(),
            superuser: false,
            inherit: true,
            create_role: false,
            create_db: true,
            login: true,
            replication: false,
            bypass_rls: false,
            connection_limit: 5,
            valid_until: Some("2030-01-01 00:00:00+00".into()),
            password_hash: Some("SCRAM-SHA-256$4096:x'y".into()),
        };
        assert_eq!(
            options(&r),
            " WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT 5 VALID UNTIL '2030-01-01 00:00:00+00' \
             PASSWORD 'SCRAM-SHA-256$4096:x''y'"
        );
    }
}
