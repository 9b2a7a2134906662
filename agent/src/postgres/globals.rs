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
//! exists is altered where its attributes differ (its password only when the source's is known)
//! — but a right is only ever added to an existing role, never taken: `SUPERUSER`, `CREATEDB`,
//! `CREATEROLE`, `LOGIN`, `REPLICATION` and `BYPASSRLS` that the new host's role has and the old
//! host's lacks stay (reported in [`GlobalsReport::notes`]): the new host's admin gave them
//! there, and taking them away breaks whoever relies on them.
//! The target session's own role and the target's bootstrap superuser are left alone and reported.
//!
//! # As a non-superuser (a managed database's master, e.g. RDS)
//! PostgreSQL 15 lets a `CREATEROLE` role create and alter roles and grant memberships, but not
//! touch `SUPERUSER`, `REPLICATION` or `BYPASSRLS` — not even to say `NOSUPERUSER` in an
//! `ALTER ROLE` — nor alter a superuser role. So when the target session is not a superuser,
//! only the attributes that differ are altered, those three are left as they are (reported in
//! [`GlobalsReport::notes`]), superuser roles on the target are left alone, and the session's own
//! role is granted membership in every role it will make own objects (`OWNER TO`, default
//! privileges) and whose tables it will load: PostgreSQL requires membership for both. Those
//! grants stay (docs/rds.md says so): later syncs need them again.

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
    /// Roles the (non-superuser) target session was made a member of, to own and load their
    /// objects.
    pub session_memberships: Vec<String>,
    /// What could not be copied as the source has it (e.g. `SUPERUSER` as a non-superuser).
    pub notes: Vec<String>,
}

/// A role's attributes as the target has them, for [`alter_options`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct TargetRole {
    superuser: bool,
    inherit: bool,
    create_role: bool,
    create_db: bool,
    login: bool,
    replication: bool,
    bypass_rls: bool,
    connection_limit: i32,
    valid_until: Option<String>,
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

/// The attributes only a superuser may set, which `r` has: a non-superuser session creates the
/// role without them.
fn superuser_only(r: &RoleDef) -> Vec<&'static str> {
    [
        (r.superuser, "SUPERUSER"),
        (r.replication, "REPLICATION"),
        (r.bypass_rls, "BYPASSRLS"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// `WITH …` options of `ALTER ROLE` that make `t` (the target's role) like `r`: only what
/// differs; as a non-superuser (`may_super` false) never `SUPERUSER`, `REPLICATION` or
/// `BYPASSRLS` — PostgreSQL refuses even their `NO…` form — which are returned as left alone.
/// A right the target's role has and the source's lacks is never taken (returned as kept).
/// `None` when nothing differs.
fn alter_options(r: &RoleDef, t: &TargetRole, may_super: bool) -> AlterOptions {
    let mut s = String::new();
    let mut left = Vec::new();
    let mut kept = Vec::new();
    let mut flag = |want: bool, have: bool, name: &'static str, super_only: bool, right: bool| {
        if want == have {
            return;
        }
        if right && have {
            kept.push(name);
            return;
        }
        if super_only && !may_super {
            left.push(name);
            return;
        }
        s.push_str(if want { " " } else { " NO" });
        s.push_str(name);
    };
    flag(r.superuser, t.superuser, "SUPERUSER", true, true);
    flag(r.inherit, t.inherit, "INHERIT", false, false);
    flag(r.create_role, t.create_role, "CREATEROLE", false, true);
    flag(r.create_db, t.create_db, "CREATEDB", false, true);
    flag(r.login, t.login, "LOGIN", false, true);
    flag(r.replication, t.replication, "REPLICATION", true, true);
    flag(r.bypass_rls, t.bypass_rls, "BYPASSRLS", true, true);
    if r.connection_limit != t.connection_limit {
        s.push_str(&format!(" CONNECTION LIMIT {}", r.connection_limit));
    }
    if r.valid_until != t.valid_until {
        let v = r.valid_until.as_deref().unwrap_or("infinity");
        s.push_str(&format!(" VALID UNTIL {}", sql::literal(v)));
    }
    if let Some(p) = &r.password_hash {
        s.push_str(&format!(" PASSWORD {}", sql::literal(p)));
    }
    AlterOptions {
        with: (!s.is_empty()).then(|| format!(" WITH{s}")),
        left,
        kept,
    }
}

/// What [`alter_options`] decided for an existing role.
#[derive(Debug, PartialEq, Eq)]
struct AlterOptions {
    /// ` WITH …` to run, if anything differs.
    with: Option<String>,
    /// Attributes only a superuser may change, left as the target has them.
    left: Vec<&'static str>,
    /// Rights the target's role has and the source's lacks: kept (never taken away).
    kept: Vec<&'static str>,
}

/// `WITH …` options of `CREATE ROLE` for `r`.
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
    let session_super: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, "read the session's role", &e))?
        .get(0);
    // Roles the session must be a member of (non-superuser only): every role it creates or
    // finds, except superusers (it cannot) and itself.
    let mut to_join: Vec<String> = Vec::new();
    for role in &globals.roles {
        let label = format!("role {}", role.name);
        let existing = c
            .query_opt(
                "SELECT r.oid = 10 OR r.rolname IN (session_user, current_user),
                        r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                        r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text
                 FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[&role.name],
            )
            .await
            .map_err(|e| conn.err(Some(&label), "look the role up", &e))?;
        match existing {
            None => {
                let mut def = role.clone();
                if !session_super {
                    let left = superuser_only(role);
                    if !left.is_empty() {
                        report.notes.push(format!(
                            "role {} created without {}: only a superuser may grant that (the \
                             target session is not one)",
                            role.name,
                            left.join(", ")
                        ));
                    }
                    def.superuser = false;
                    def.replication = false;
                    def.bypass_rls = false;
                    to_join.push(role.name.clone());
                }
                let sql = format!("CREATE ROLE {}{}", sql::ident(&def.name), options(&def));
                conn.exec(&sql, Some(&label), "create the role").await?;
                report.created.push(role.name.clone());
            }
            Some(r) if r.get::<_, bool>(0) => report.skipped.push((
                role.name.clone(),
                "the target's own login role or bootstrap superuser".into(),
            )),
            Some(r) => {
                let target = TargetRole {
                    superuser: r.get(1),
                    inherit: r.get(2),
                    create_role: r.get(3),
                    create_db: r.get(4),
                    login: r.get(5),
                    replication: r.get(6),
                    bypass_rls: r.get(7),
                    connection_limit: r.get(8),
                    valid_until: r.get(9),
                };
                if target.superuser && !session_super {
                    report.skipped.push((
                        role.name.clone(),
                        "a superuser on the target, which only a superuser may alter".into(),
                    ));
                    continue;
                }
                if !session_super {
                    to_join.push(role.name.clone());
                }
                let AlterOptions {
                    with: opts,
                    left,
                    kept,
                } = alter_options(role, &target, session_super);
                if !kept.is_empty() {
                    report.notes.push(format!(
                        "role {}: {} kept: the new host's role has it and the old host's lacks it; a sync adds rights to an existing role, never takes them",
                        role.name,
                        kept.join(", ")
                    ));
                }
                if !left.is_empty() {
                    report.notes.push(format!(
                        "role {}: {} left as the target has it: only a superuser may change it",
                        role.name,
                        left.join(", ")
                    ));
                }
                if let Some(opts) = opts {
                    let sql = format!("ALTER ROLE {}{opts}", sql::ident(&role.name));
                    conn.exec(&sql, Some(&label), "alter the role").await?;
                    report.altered.push(role.name.clone());
                }
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
    for role in to_join {
        let label = format!("role {role}");
        let member: bool = c
            .query_one(
                "SELECT pg_catalog.pg_has_role(current_user, $1::text::regrole, 'USAGE')",
                &[&sql::ident(&role)],
            )
            .await
            .map_err(|e| conn.err(Some(&label), "look the session's membership up", &e))?
            .get(0);
        if !member {
            let sql = format!("GRANT {} TO CURRENT_USER", sql::ident(&role));
            conn.exec(
                &sql,
                Some(&label),
                "make the session's role a member (needed to give it objects and load its \
                 tables; the role needs CREATEROLE, see docs/rds.md)",
            )
            .await?;
            report.session_memberships.push(role);
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

    #[test]
    fn a_non_superuser_alters_only_what_differs_and_never_superuser_flags() {
        let r = RoleDef {
            name: "app".into(),
            superuser: true,
            inherit: true,
            create_role: false,
            create_db: true,
            login: true,
            replication: false,
            bypass_rls: false,
            connection_limit: -1,
            valid_until: None,
            password_hash: None,
        };
        let t = TargetRole {
            superuser: false,
            inherit: true,
            create_role: false,
            create_db: false,
            login: true,
            replication: false,
            bypass_rls: false,
            connection_limit: -1,
            valid_until: None,
        };
        let opts =
            |with: Option<&str>, left: Vec<&'static str>, kept: Vec<&'static str>| AlterOptions {
                with: with.map(str::to_string),
                left,
                kept,
            };
        assert_eq!(
            alter_options(&r, &t, false),
            opts(Some(" WITH CREATEDB"), vec!["SUPERUSER"], vec![])
        );
        assert_eq!(
            alter_options(&r, &t, true),
            opts(Some(" WITH SUPERUSER CREATEDB"), vec![], vec![])
        );
        let same = RoleDef {
            superuser: false,
            create_db: false,
            ..r.clone()
        };
        assert_eq!(alter_options(&same, &t, false), opts(None, vec![], vec![]));
        // The target's own rights stay; NOINHERIT is an attribute, not a right: it is copied.
        let richer = TargetRole {
            create_db: true,
            create_role: true,
            login: true,
            ..t
        };
        let plain = RoleDef {
            superuser: false,
            create_db: false,
            login: false,
            inherit: false,
            ..r
        };
        assert_eq!(
            alter_options(&plain, &richer, true),
            opts(
                Some(" WITH NOINHERIT"),
                vec![],
                vec!["CREATEROLE", "CREATEDB", "LOGIN"]
            )
        );
    }
}
