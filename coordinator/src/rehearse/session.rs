//! The sessions of the rehearsal's simulated app, and why one failed: [`LiveAppError`] names who
//! was connecting or what statement ran, with the server's error beside it. The writer, the
//! uploader and the round trip's writer on the new host all connect through [`session`].

use std::path::PathBuf;

/// Why the simulated app could not start or its writes could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LiveAppError {
    /// No session to the database.
    #[error("{who} could not connect: {source}")]
    Connect {
        /// Which part of the app ("the live writer").
        who: &'static str,
        /// The server's or the socket's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{what}: {source}")]
    Sql {
        /// What it was for ("read the new host's users").
        what: &'static str,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// The upload folder could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Maps a statement's error to [`LiveAppError::Sql`] saying what it was for.
pub(super) fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> LiveAppError {
    move |source| LiveAppError::Sql { what, source }
}

/// A session of the rehearsal's simulated app (`who` names it in the error), key=value conninfo
/// without TLS (the lab's unix socket). The connection task ends when the freeze terminates the
/// session; the callers' loops connect again.
///
/// # Errors
/// [`LiveAppError::Connect`].
pub(super) async fn session(
    conninfo: &str,
    who: &'static str,
) -> Result<tokio_postgres::Client, LiveAppError> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|source| LiveAppError::Connect { who, source })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
