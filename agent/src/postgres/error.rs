//! [`PgSyncError`]: everything the PostgreSQL sync library can fail with, each variant naming the
//! database (the config's name) and, where there is one, the table, the statement's purpose, the
//! command line and the end of its stderr; and its one mapping into [`AgentError`].
//!
//! The mapping is what the coordinator branches on. A lost connection, a server shutting down,
//! a serialization failure or a deadlock is `Unavailable` (retrying may succeed); a selection
//! pattern the library cannot read is `InvalidArgument`; a schema too big to buffer, or an error
//! the server raised about the data or the schema (an object that already exists, a missing
//! extension, a privilege the configured role lacks) is `FailedPrecondition`: the request was
//! fine, the host must change. A failed `pg_dump` keeps its command line and stderr tail.

use std::path::PathBuf;

use crate::error::AgentError;

/// Everything a sync operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PgSyncError {
    /// The database could not be reached.
    #[error("database {database}: cannot connect: {message}")]
    Connect {
        /// The configured database name.
        database: String,
        /// What went wrong (the server's message or the client error).
        message: String,
    },
    /// A statement failed on the server, or the connection broke while it ran.
    #[error(
        "database {database}{}: {what}: {message}{}",
        table.as_deref().map(|t| format!(", table {t}")).unwrap_or_default(),
        code.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default()
    )]
    Query {
        /// The configured database name.
        database: String,
        /// The table concerned (`schema.table`), when there is one.
        table: Option<String>,
        /// What was being done ("begin the copy transaction", "COPY out").
        what: String,
        /// The server's SQLSTATE, when the server answered.
        code: Option<String>,
        /// The server's message (with detail and hint), or the client error.
        message: String,
    },
    /// `pg_dump` failed or could not be started.
    #[error("database {database}: `{command}` {status}{}", if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") })]
    Command {
        /// The configured database name.
        database: String,
        /// The command line, as run (it holds no password: that goes through the environment).
        command: String,
        /// How it ended ("exited with 1", "timed out after 1800 s", "could not start: ...").
        status: String,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// More schema text than the target accepts to buffer.
    #[error("database {database}: {what} is larger than {limit} bytes; refusing to buffer it")]
    TooLarge {
        /// The configured database name.
        database: String,
        /// What was too large ("pre-data schema").
        what: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A selection pattern that cannot be used.
    #[error("selection pattern {pattern:?}: {reason}")]
    InvalidSelection {
        /// The pattern as given.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// Input handed to the target side that it cannot use (schema text that is not UTF-8, a
    /// snapshot id of the wrong shape).
    #[error("database {database}: {what}: {reason}")]
    InvalidInput {
        /// The configured database name.
        database: String,
        /// What the input was.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local file (the password file) could not be read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A table (or column) a reader asked for that the source does not serve: not a user table
    /// of the database, not covered by the selection, or a column the table does not have.
    #[error(
        "database {database}: table {table} may not be read: {reason}; the source agent serves only the user tables the plan selects, and only their columns"
    )]
    NotReadable {
        /// The configured database name.
        database: String,
        /// The table as requested (`schema.table`).
        table: String,
        /// Why it was refused.
        reason: String,
    },
    /// A table was given a new file after the copy's snapshot (`VACUUM FULL`, `CLUSTER`,
    /// `TRUNCATE`, a rewriting `ALTER TABLE`): page ranges would not add up, and a rewriting
    /// `ALTER TABLE` shows the snapshot an empty table. Running the sync again reads a
    /// new snapshot (and compares the table).
    #[error(
        "database {database}, table {table}: rewritten while the sync read it (VACUUM FULL, CLUSTER, TRUNCATE or a rewriting ALTER TABLE gave it a new file: its rows moved to other pages, or the sync's snapshot would see it empty); nothing of this piece was committed: run sync again"
    )]
    Rewritten {
        /// The configured database name.
        database: String,
        /// The table (`schema.table`).
        table: String,
    },
    /// The caller cancelled (agent shutdown or the RPC went away); the child was terminated.
    #[error("database {database}: cancelled")]
    Cancelled {
        /// The configured database name.
        database: String,
    },
}

impl PgSyncError {
    /// A failed statement, with the server's SQLSTATE, message, detail and hint when it sent them.
    pub fn query(
        database: &str,
        table: Option<&(dyn std::fmt::Display + Sync)>,
        what: impl Into<String>,
        e: &tokio_postgres::Error,
    ) -> Self {
        let (code, message) = match e.as_db_error() {
            Some(d) => {
                let mut m = d.message().to_string();
                if let Some(detail) = d.detail() {
                    m.push_str("; detail: ");
                    m.push_str(detail);
                }
                if let Some(hint) = d.hint() {
                    m.push_str("; hint: ");
                    m.push_str(hint);
                }
                (Some(d.code().code().to_string()), m)
            }
            None => (None, crate::postgres::connect::pg_message(e)),
        };
        Self::Query {
            database: database.to_string(),
            table: table.map(ToString::to_string),
            what: what.into(),
            code,
            message,
        }
    }

    /// True when retrying the same operation may succeed: the connection broke, the server is
    /// going away or out of resources, or the transaction lost a serialization race or deadlock.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Query { code: None, .. } => true,
            Self::Query {
                code: Some(code), ..
            } => {
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            }
            _ => false,
        }
    }
}

impl From<PgSyncError> for AgentError {
    fn from(e: PgSyncError) -> Self {
        if e.is_transient() {
            return AgentError::Unavailable(e.to_string());
        }
        match e {
            PgSyncError::Command {
                command,
                status,
                stderr_tail,
                ..
            } => AgentError::Command {
                command,
                status,
                stderr_tail,
            },
            PgSyncError::Io { op, path, source } => AgentError::Io { op, path, source },
            PgSyncError::Cancelled { .. } => AgentError::Cancelled,
            PgSyncError::InvalidSelection { .. } | PgSyncError::InvalidInput { .. } => {
                AgentError::InvalidArgument(e.to_string())
            }
            PgSyncError::Connect { .. } => AgentError::Unavailable(e.to_string()),
            PgSyncError::NotReadable { .. } => AgentError::PermissionDenied(e.to_string()),
            PgSyncError::Query { .. }
            | PgSyncError::TooLarge { .. }
            | PgSyncError::Rewritten { .. } => AgentError::FailedPrecondition(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(code: Option<&str>) -> PgSyncError {
        PgSyncError::Query {
            database: "app".into(),
            table: Some("public.users".into()),
            what: "COPY in".into(),
            code: code.map(str::to_string),
            message: "boom".into(),
        }
    }

    #[test]
    fn messages_name_the_database_table_and_sqlstate() {
        let m = query(Some("42P07")).to_string();
        assert_eq!(
            m,
            "database app, table public.users: COPY in: boom (SQLSTATE 42P07)"
        );
    }

    #[test]
    fn each_kind_of_failure_maps_to_the_code_the_coordinator_branches_on() {
        assert!(matches!(
            AgentError::from(query(Some("08006"))),
            AgentError::Unavailable(_)
        ));
        assert!(matches!(
            AgentError::from(query(None)),
            AgentError::Unavailable(_)
        ));
        assert!(matches!(
            AgentError::from(query(Some("40P01"))),
            AgentError::Unavailable(_)
        ));
        assert!(matches!(
            AgentError::from(query(Some("42501"))),
            AgentError::FailedPrecondition(m) if m.contains("public.users")
        ));
        let dump = PgSyncError::Command {
            database: "app".into(),
            command: "pg_dump --schema-only".into(),
            status: "exited with 1".into(),
            stderr_tail: "pg_dump: error: permission denied".into(),
        };
        assert!(matches!(
            AgentError::from(dump),
            AgentError::Command { stderr_tail, .. } if stderr_tail.contains("permission denied")
        ));
        let pattern = PgSyncError::InvalidSelection {
            pattern: "users".into(),
            reason: "not schema-qualified".into(),
        };
        assert!(matches!(
            AgentError::from(pattern),
            AgentError::InvalidArgument(_)
        ));
        assert!(matches!(
            AgentError::from(PgSyncError::Cancelled {
                database: "app".into()
            }),
            AgentError::Cancelled
        ));
    }
}
