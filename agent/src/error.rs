//! The agent's error type and the one place that turns it into a gRPC status.
//!
//! The code chosen here is what the coordinator branches on: `PermissionDenied` (the agent's
//! config does not allow it — change the config, not the request), `InvalidArgument` (the request
//! names something undeclared), `FailedPrecondition` (the host is not in the state the operation
//! needs), `DataLoss` (a checksum did not match — never retried silently), `Unavailable` (a
//! dependency is down; retrying may help), `Internal` (a bug or an unexpected OS error).

use std::path::PathBuf;

use tonic::Status;

/// Everything an agent operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request names something this agent's config does not declare.
    #[error("{what} {name:?} is not declared in this agent's config ({config})")]
    NotDeclared {
        /// "database", "storage tree", "file", "hook", "PM2 app".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The config file to edit.
        config: String,
    },
    /// A malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller's certificate may not do this, or the config does not allow it.
    #[error("{0}")]
    PermissionDenied(String),
    /// The host is not in the state this operation needs.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A checksum or length did not match: the data is not accepted.
    #[error("integrity check failed: {0}")]
    DataLoss(String),
    /// A dependency (database, program) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// An external program failed.
    #[error("`{command}` {status}{}", if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") })]
    Command {
        /// The command line, as run.
        command: String,
        /// How it ended ("exited with 1", "killed by signal 9", "timed out after 30 s").
        status: String,
        /// Last lines of its stderr.
        stderr_tail: String,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A database query failed.
    #[error("database {name}: {message}")]
    Database {
        /// The configured database name.
        name: String,
        /// The server's message.
        message: String,
    },
    /// The agent is shutting down and cancelled the operation.
    #[error("the agent is shutting down; the operation was cancelled and cleaned up")]
    Cancelled,
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// An I/O error on a path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A tokio-postgres error on a configured database, with the server's detail when it sent one.
    pub fn db(name: &str, e: &tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        };
        Self::Database {
            name: name.to_string(),
            message,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Self {
        let msg = e.to_string();
        match e {
            AgentError::NotDeclared { .. } | AgentError::InvalidArgument(_) => {
                Status::invalid_argument(msg)
            }
            AgentError::PermissionDenied(_) => Status::permission_denied(msg),
            AgentError::FailedPrecondition(_) => Status::failed_precondition(msg),
            AgentError::DataLoss(_) => Status::data_loss(msg),
            AgentError::Unavailable(_) | AgentError::Database { .. } => Status::unavailable(msg),
            AgentError::Cancelled => Status::cancelled(msg),
            AgentError::Command { .. } | AgentError::Io { .. } | AgentError::Internal(_) => {
                Status::internal(msg)
            }
        }
    }
}
