//! The cutover's database write freeze, as the agent runs it: the permit, the record of what was
//! there before, and the order of the steps. The SQL is in [`crate::postgres::freeze`].
//!
//! # The record
//! `<state_dir>/freeze/<database>.json` (mode 0600) holds the database's own
//! `default_transaction_read_only` from before the first freeze (or that it had none) and the
//! `CONNECT` privileges the freeze took away (`connect_revoked`: `PUBLIC` and the roles, see
//! [`crate::postgres::freeze`]). It is
//! written — atomically, synced — **before** the database is changed, and removed only after the
//! undo succeeded, so an undo works after an agent restart or crash, and freezing twice keeps the
//! first original (the second freeze finds the record and does not read back its own `on`).
//! A failed freeze removes a record it has just written: nothing was changed then.
//!
//! # Semantics
//! - Freeze: record (unless recorded; `CONNECT` privileges found on a repeated freeze are added
//!   to the record first), take `CONNECT` away from every other non-superuser role and set `on`
//!   (unless it is `on` already) in one transaction, end the other sessions when asked.
//!   `changed` = this call changed the setting or a privilege. A database that was read-only by
//!   its own setting before stays so after the undo.
//! - Undo: with a record, give back exactly the recorded privileges and restore the recorded
//!   value (`RESET` when there was none) in one transaction, then remove the record; `changed` =
//!   true. Without a record: nothing happens, `changed` = false. Undoing needs no permit.
//! - A freeze undone by hand (the printed `psql` commands) is noticed at the next `Info`
//!   ([`forget_undone`]): its record goes once the setting and every recorded privilege are back.
//!
//! Calls are serialized by the caller ([`super::DatabaseService`] holds one lock for all).

use std::path::{Path, PathBuf};

use crate::Ctx;
use crate::config::DatabaseConfig;
use crate::error::AgentError;
use crate::postgres::{Conn, freeze as sql};

/// What a freeze or undo did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezeOutcome {
    /// Whether this call changed the database (false: already in the requested state).
    pub changed: bool,
    /// Sessions ended.
    pub sessions_ended: u32,
    /// Whether new transactions on the database are read-only now (by its own setting).
    pub read_only: bool,
    /// What was done, for the journal.
    pub detail: String,
}

/// The record of one frozen database.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The configured name.
    database: String,
    /// The database's own `default_transaction_read_only` before the freeze; `None`: not set.
    original: Option<String>,
    /// The `CONNECT` privileges the freeze took away (absent in records of older agents).
    #[serde(default)]
    connect_revoked: Vec<sql::ConnectGrant>,
    /// When the freeze was recorded (Unix seconds).
    frozen_at: u64,
}

/// One freeze, undo or [`forget_undone`] at a time in this process (one agent process serves one
/// `state_dir`): each reads the record, then acts on the database, and a check in between would
/// see a record written before its freeze took effect as a freeze already undone.
static RECORDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `<state_dir>/freeze/<database>.json`.
pub fn record_path(state_dir: &Path, database: &str) -> PathBuf {
    state_dir.join("freeze").join(format!("{database}.json"))
}

/// The databases of this agent's config that have a freeze record: an earlier cutover left them
/// read-only with `CONNECT` revoked. Sorted; a record for a database the config no longer
/// declares is listed too (its file name), since the database it froze is still frozen.
pub fn frozen(state_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_dir.join("freeze")) else {
        return vec![];
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// The database, if `[allow] freeze_databases` lists it.
///
/// # Errors
/// `PermissionDenied` naming the key; `NotDeclared`.
fn permitted<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a DatabaseConfig, AgentError> {
    let db = ctx.database(name)?;
    if ctx.config.allow.freeze_databases.iter().any(|n| n == name) {
        Ok(db)
    } else {
        Err(AgentError::PermissionDenied(format!(
            "this agent's config does not allow making database {name:?} read-only: add it to \
             [allow] freeze_databases in {} (on the old host)",
            ctx.config_path.display()
        )))
    }
}

fn read_record(path: &Path) -> Result<Option<Record>, AgentError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "{} is not a freeze record ({e}); check the database's default_transaction_read_only \
                 (pg_db_role_setting) and remove the file by hand",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read", path, e)),
    }
}

fn remove_record(path: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::io("remove", path, e)),
    }
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "not set".to_string(), |v| format!("{v:?}"))
}

/// Makes database `name` read-only for new transactions and, with `end_sessions`, ends the other
/// sessions on it (the agent's own, named [`crate::postgres::connect::APPLICATION_NAME`], are spared).
///
/// # Errors
/// `PermissionDenied` without the permit; `FailedPrecondition` when the server refuses (with the
/// privilege needed) or the record is unreadable; `Io` when the record cannot be written (the
/// database is then unchanged).
pub async fn freeze(
    ctx: &Ctx,
    name: &str,
    end_sessions: bool,
) -> Result<FreezeOutcome, AgentError> {
    let db = permitted(ctx, name)?;
    let _one_at_a_time = RECORDS.lock().await;
    let conn = Conn::connect(db).await?;
    let path = record_path(&ctx.config.state_dir, name);
    let current = sql::database_setting(&conn).await?;
    let grants = sql::connect_grants(&conn).await?;
    let write = |record: &Record| -> Result<(), AgentError> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| AgentError::Internal(format!("encode the freeze record: {e}")))?;
        crate::fsutil::write_atomic(&path, &bytes, 0o600, None)
    };
    let (original, wrote) = match read_record(&path)? {
        Some(mut r) => {
            // Privileges granted since the first freeze are taken too, and given back by the undo.
            let new: Vec<_> = grants
                .iter()
                .filter(|g| !r.connect_revoked.contains(g))
                .cloned()
                .collect();
            if !new.is_empty() {
                r.connect_revoked.extend(new);
                write(&r)?;
            }
            (r.original, false)
        }
        None => {
            write(&Record {
                database: name.to_string(),
                original: current.clone(),
                connect_revoked: grants.clone(),
                frozen_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })?;
            (current.clone(), true)
        }
    };
    let set_on = !current.as_deref().is_some_and(sql::is_on);
    let changed = set_on || !grants.is_empty();
    if changed && let Err(e) = sql::lock_out(&conn, set_on, &grants).await {
        if wrote {
            remove_record(&path)?;
        }
        return Err(e.into());
    }
    let mut detail = format!(
        "database {name}: {} = on (its own setting before the freeze: {})",
        sql::SETTING,
        shown(original.as_deref())
    );
    if !set_on {
        detail.push_str("; it was on already");
    }
    if !grants.is_empty() {
        let from: Vec<&str> = grants.iter().map(sql::ConnectGrant::shown).collect();
        detail.push_str(&format!("; CONNECT taken from {}", from.join(", ")));
    }
    let sessions_ended = if end_sessions {
        let n = sql::end_other_sessions(&conn, crate::postgres::connect::APPLICATION_NAME).await?;
        detail.push_str(&format!("; {n} other session(s) ended"));
        n
    } else {
        0
    };
    let still = sql::roles_still_connecting(&conn).await?;
    if !still.is_empty() {
        detail.push_str(&format!(
            "; warning: login role(s) {} can still connect (CONNECT granted by another role, or \
             they inherit the agent's role {}) and may turn read-only off",
            still.join(", "),
            sql::session_role(&conn).await?
        ));
    }
    let overriding = sql::overriding_roles(&conn).await?;
    if !overriding.is_empty() {
        detail.push_str(&format!(
            "; warning: role(s) {} set {} themselves, which wins over the database's setting: \
             their new sessions can still write",
            overriding.join(", "),
            sql::SETTING
        ));
    }
    tracing::info!(database = name, changed, sessions_ended, original = %shown(original.as_deref()), "database frozen (read-only)");
    Ok(FreezeOutcome {
        changed,
        sessions_ended,
        read_only: true,
        detail,
    })
}

/// Undoes [`freeze`]: the database's recorded earlier setting comes back and the record goes.
/// Without a record nothing is done. No permit is needed either way (the undo only restores the
/// recorded earlier state).
///
/// # Errors
/// As [`freeze`].
pub async fn unfreeze(ctx: &Ctx, name: &str) -> Result<FreezeOutcome, AgentError> {
    let _one_at_a_time = RECORDS.lock().await;
    let path = record_path(&ctx.config.state_dir, name);
    // An undo only restores what this agent recorded (or, without a record, does nothing), so it
    // needs no permit: after a blue/green swap this host is a target whose config no longer
    // lists the database in `freeze_databases`, and a rollback must still work there.
    let db = ctx.database(name)?;
    let conn = Conn::connect(db).await?;
    let Some(record) = read_record(&path)? else {
        let current = sql::database_setting(&conn).await?;
        return Ok(FreezeOutcome {
            changed: false,
            sessions_ended: 0,
            read_only: current.as_deref().is_some_and(sql::is_on),
            detail: format!(
                "database {name}: no freeze recorded ({} not present); nothing changed ({} is {})",
                path.display(),
                sql::SETTING,
                shown(current.as_deref())
            ),
        });
    };
    let gone =
        sql::restore_access(&conn, record.original.as_deref(), &record.connect_revoked).await?;
    remove_record(&path)?;
    tracing::info!(database = name, restored = %shown(record.original.as_deref()), "database unfrozen");
    Ok(FreezeOutcome {
        changed: true,
        sessions_ended: 0,
        read_only: record.original.as_deref().is_some_and(sql::is_on),
        detail: format!(
            "database {name}: {} restored to its own earlier setting ({}){}{}",
            sql::SETTING,
            shown(record.original.as_deref()),
            if record.connect_revoked.is_empty() {
                String::new()
            } else {
                let to: Vec<&str> = record
                    .connect_revoked
                    .iter()
                    .map(sql::ConnectGrant::shown)
                    .collect();
                format!("; CONNECT given back to {}", to.join(", "))
            },
            if gone.is_empty() {
                String::new()
            } else {
                format!(
                    "; role(s) {} no longer exist (not granted)",
                    gone.join(", ")
                )
            }
        ),
    })
}

/// Removes the record of every freeze that is gone although no undo ran here: the operator
/// undid it by hand (the printed `psql` commands), so the database's own setting is no longer
/// `on` (or was `on` before the freeze) and every `CONNECT` privilege the record lists is back.
/// Called when the agent is next contacted (`Info`), so nothing keeps calling the host frozen.
/// A half-done undo keeps its record (it lists what is still to give back); a database that
/// cannot be reached keeps it too. Returns the databases whose records were removed.
pub async fn forget_undone(ctx: &Ctx) -> Vec<String> {
    let _one_at_a_time = RECORDS.lock().await;
    let mut forgotten = Vec::new();
    for name in frozen(&ctx.config.state_dir) {
        let Ok(db) = ctx.database(&name) else {
            continue;
        };
        let path = record_path(&ctx.config.state_dir, &name);
        let gone = async {
            let Some(record) = read_record(&path)? else {
                return Ok::<bool, AgentError>(false);
            };
            let conn = Conn::connect(db).await?;
            let setting = sql::database_setting(&conn).await?;
            let grants = sql::connect_grants(&conn).await?;
            let setting_back = !setting.as_deref().is_some_and(sql::is_on)
                || record.original.as_deref().is_some_and(sql::is_on);
            let grants_back = record
                .connect_revoked
                .iter()
                .all(|r| grants.iter().any(|g| g.grantee == r.grantee));
            Ok(setting_back && grants_back)
        }
        .await;
        match gone {
            Ok(true) => match remove_record(&path) {
                Ok(()) => {
                    tracing::info!(database = %name, record = %path.display(), "the freeze was undone by hand: its record is removed");
                    forgotten.push(name);
                }
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "cannot remove the record of a freeze undone by hand")
                }
            },
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(database = %name, error = %e, "cannot tell whether the freeze is still in force; its record stays");
            }
        }
    }
    forgotten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_lists_the_recorded_databases_and_nothing_without_records() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(
            frozen(tmp.path()).is_empty(),
            "no freeze folder: nothing frozen"
        );
        std::fs::create_dir_all(tmp.path().join("freeze")).expect("mkdir");
        assert!(
            frozen(tmp.path()).is_empty(),
            "empty folder: nothing frozen"
        );
        for db in ["reports", "app"] {
            std::fs::write(record_path(tmp.path(), db), b"{}").expect("record");
        }
        std::fs::write(tmp.path().join("freeze/notes.txt"), b"x").expect("other file");
        assert_eq!(
            frozen(tmp.path()),
            vec!["app".to_string(), "reports".into()]
        );
    }

    #[test]
    fn records_live_under_the_state_dir_and_survive_a_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = record_path(tmp.path(), "app");
        assert_eq!(path, tmp.path().join("freeze/app.json"));
        assert_eq!(read_record(&path).expect("absent is fine"), None);
        let r = Record {
            database: "app".into(),
            original: Some("off".into()),
            connect_revoked: vec![sql::ConnectGrant {
                grantee: None,
                grantable: false,
            }],
            frozen_at: 1,
        };
        crate::fsutil::write_atomic(&path, &serde_json::to_vec(&r).expect("json"), 0o600, None)
            .expect("write");
        assert_eq!(read_record(&path).expect("read"), Some(r));
        remove_record(&path).expect("remove");
        remove_record(&path).expect("removing twice is fine");
        assert_eq!(read_record(&path).expect("gone"), None);
    }

    #[test]
    fn a_record_of_an_older_agent_without_privileges_still_reads() {
        let r: Record = serde_json::from_str(r#"{"database":"app","original":null,"frozen_at":1}"#)
            .expect("old record");
        assert!(r.connect_revoked.is_empty() && r.original.is_none());
    }

    #[test]
    fn a_damaged_record_is_refused_with_what_to_check() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = record_path(tmp.path(), "app");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, b"{not json").expect("write");
        let e = read_record(&path).expect_err("damaged");
        assert!(e.to_string().contains("pg_db_role_setting"), "{e}");
    }
}
