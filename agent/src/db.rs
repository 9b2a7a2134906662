//! Connections to the databases the agent's config declares, by name.

use std::time::Duration;

use crate::config::DatabaseConfig;
use crate::error::AgentError;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to a configured database; the connection task runs until the client drops.
///
/// # Errors
/// `Unavailable` naming the database when the connection string is invalid, the password file
/// unreadable, or the server unreachable.
pub async fn connect(db: &DatabaseConfig) -> Result<tokio_postgres::Client, AgentError> {
    let mut cfg: tokio_postgres::Config = db.conninfo.parse().map_err(|e| {
        AgentError::Unavailable(format!(
            "database {}: invalid conninfo in the agent config: {e}",
            db.name
        ))
    })?;
    if let Some(pf) = &db.password_file {
        let pw = std::fs::read_to_string(pf).map_err(|e| AgentError::io("read", pf, e))?;
        cfg.password(pw.trim_end_matches(['\n', '\r']));
    }
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.application_name("hostshift-agent");
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| {
            AgentError::Unavailable(format!(
                "database {}: no answer within {} s",
                db.name,
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            AgentError::Unavailable(format!("database {}: {}", db.name, pg_message(&e)))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// The server's message when it sent one, else the client error (which includes the cause).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}
