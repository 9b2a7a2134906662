//! Connections to the databases the agent's config declares, by name: every part of the agent
//! that talks to PostgreSQL connects through here (a sync's sessions through [`super::Conn`]).
//!
//! Local databases are reached over the unix socket or loopback without TLS. A remote one (a
//! managed PostgreSQL such as RDS) uses TLS when its config names a `ca_file` or its conninfo
//! says `sslmode=require`; the server's certificate is then always verified — against the
//! `ca_file`, else the system's trusted roots — because a copy of production data must not go to
//! whoever answers on that address.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;
use crate::error::AgentError;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `application_name` of every connection the agent opens (its own and those of the
/// `pg_dump`/`pg_restore`/`psql` it runs): how the write freeze tells the agent's sessions, which
/// it spares, from the application's, which it ends. The agent's own connections use it even
/// when the `conninfo` names another; for the programs, a name in the `conninfo` wins.
pub const APPLICATION_NAME: &str = "hostshift-agent";

fn unavailable(db: &DatabaseConfig, msg: String) -> AgentError {
    AgentError::Unavailable(format!("database {}: {msg}", db.name))
}

/// The TLS set-up for a database that asks for it.
///
/// # Errors
/// `FailedPrecondition` when the CA file cannot be read or holds no certificate.
pub fn tls(db: &DatabaseConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    match &db.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| AgentError::io("read", path, e))?;
            let mut n = 0;
            for der in x509_pems(&pem) {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der))
                    .map_err(|e| {
                        AgentError::FailedPrecondition(format!("{}: {e}", path.display()))
                    })?;
                n += 1;
            }
            if n == 0 {
                return Err(AgentError::FailedPrecondition(format!(
                    "{} (ca_file of database {}) holds no PEM certificate",
                    path.display(),
                    db.name
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AgentError::Internal(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The DER bodies of every `CERTIFICATE` block of a PEM buffer.
fn x509_pems(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let Some(end) = block.find("-----END CERTIFICATE-----") else {
            break;
        };
        let full = &block[..end + "-----END CERTIFICATE-----".len()];
        if let Some(der) = hostshift_shared::tls::first_pem_der(full.as_bytes()) {
            out.push(der);
        }
        rest = &block[end + 1..];
    }
    out
}

/// The database's `conninfo` as the one parser ([`hostshift_shared::conninfo`]) read it, in
/// the keyword form and without any password (config validation refuses one; this keeps a
/// password from ever reaching a command line even so). Every connection and every
/// `pg_dump --dbname=…` uses this string.
///
/// # Errors
/// `Unavailable` naming the database when the conninfo cannot be parsed.
pub fn conninfo(db: &DatabaseConfig) -> Result<String, AgentError> {
    hostshift_shared::conninfo::parse(&db.conninfo)
        .map(|c| c.to_keywords(&[]))
        .map_err(|e| unavailable(db, format!("invalid conninfo in the agent config: {e}")))
}

/// `--dbname=<conninfo>` for `pg_dump`/`pg_restore`/`psql`, from [`conninfo`].
///
/// # Errors
/// As [`conninfo`].
pub fn dbname_arg(db: &DatabaseConfig) -> Result<String, AgentError> {
    Ok(format!("--dbname={}", conninfo(db)?))
}

/// Opens a connection to a configured database; the connection task runs until the client drops
/// and the server has answered everything asked before.
///
/// # Errors
/// `Unavailable` naming the database when the connection string is invalid, the password file
/// unreadable, the server unreachable, or its certificate not trusted.
pub async fn connect(db: &DatabaseConfig) -> Result<tokio_postgres::Client, AgentError> {
    Ok(connect_with(db, &conninfo(db)?).await?.0)
}

/// As [`connect`], with the connection's [`Driver`], which can close it while the server is
/// still sending — a `COPY` nobody reads any more.
///
/// # Errors
/// As [`connect`].
pub async fn connect_closing(
    db: &DatabaseConfig,
) -> Result<(tokio_postgres::Client, Driver), AgentError> {
    connect_with(db, &conninfo(db)?).await
}

/// A handle on the task that runs a connection's I/O. tokio-postgres keeps a connection whose
/// client was dropped reading until the server has answered every request: a table copy
/// abandoned by its reader (a cancelled sync) went on reading the whole table on the old host,
/// holding its snapshot and its lock, for nobody — even 250 ms more of reading took the rest of
/// a 150 MB table. A [`CloseGuard`] of it ends the connection instead. Dropping the handle
/// changes nothing.
pub struct Driver(CancellationToken);

impl Driver {
    /// A guard that closes the connection when dropped, unless [`CloseGuard::defuse`]d.
    pub fn close_on_drop(&self) -> CloseGuard {
        CloseGuard(Some(self.0.clone()))
    }
}

/// Closes a connection when dropped (the task runs it once more — writing what is queued, e.g.
/// the `Terminate` of a dropped client — and drops it, closing the socket; the server ends the
/// session and logs that its client went away), unless defused first. Around a `COPY`: dropped
/// in its middle, the reader went away.
pub struct CloseGuard(Option<CancellationToken>);

impl CloseGuard {
    /// A guard that closes nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// The connection stays open (the work it guarded ended as it should).
    pub fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

/// The name of the database the `conninfo` connects to (`dbname`, else libpq's default: the
/// user name), when it says.
///
/// # Errors
/// As [`conninfo`].
pub fn database_name(db: &DatabaseConfig) -> Result<Option<String>, AgentError> {
    let c = hostshift_shared::conninfo::parse(&db.conninfo)
        .map_err(|e| unavailable(db, format!("invalid conninfo in the agent config: {e}")))?;
    Ok(c.get("dbname")
        .or_else(|| c.get("user"))
        .map(str::to_string))
}

/// A connection with the database's `conninfo` to the cluster's maintenance database instead
/// (`postgres`, else `template1`): where a database that does not exist yet is created.
///
/// # Errors
/// As [`connect`], with the error of the `postgres` attempt.
pub async fn connect_maintenance(
    db: &DatabaseConfig,
) -> Result<tokio_postgres::Client, AgentError> {
    let c = hostshift_shared::conninfo::parse(&db.conninfo)
        .map_err(|e| unavailable(db, format!("invalid conninfo in the agent config: {e}")))?;
    let base = c.to_keywords(&["dbname"]);
    let with = |name: &str| {
        if base.is_empty() {
            format!("dbname={name}")
        } else {
            format!("{base} dbname={name}")
        }
    };
    match connect_with(db, &with("postgres")).await {
        Ok((client, _)) => Ok(client),
        Err(first) => connect_with(db, &with("template1"))
            .await
            .map(|(client, _)| client)
            .map_err(|_| first),
    }
}

async fn connect_with(
    db: &DatabaseConfig,
    conninfo: &str,
) -> Result<(tokio_postgres::Client, Driver), AgentError> {
    let mut cfg: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| unavailable(db, format!("invalid conninfo in the agent config: {e}")))?;
    if let Some(pf) = &db.password_file {
        let pw = std::fs::read_to_string(pf).map_err(|e| AgentError::io("read", pf, e))?;
        cfg.password(pw.trim_end_matches(['\n', '\r']));
    }
    cfg.connect_timeout(CONNECT_TIMEOUT);
    cfg.application_name(APPLICATION_NAME);
    let use_tls = db.ca_file.is_some() || cfg.get_ssl_mode() == SslMode::Require;
    let timeout = |_| {
        unavailable(
            db,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        )
    };
    let client = if use_tls {
        if db.ca_file.is_some() {
            cfg.ssl_mode(SslMode::Require);
        }
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tls(db)?))
            .await
            .map_err(timeout)?
            .map_err(|e| unavailable(db, tls_message(db, &e)))?;
        (client, drive(conn))
    } else {
        let (client, conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(timeout)?
                .map_err(|e| unavailable(db, pg_message(&e)))?;
        (client, drive(conn))
    };
    Ok(client)
}

/// The environment `pg_dump`/`pg_restore`/`psql` need for a configured database: the password
/// from its `password_file` (in the child's environment, never its command line), with a
/// `ca_file` the same verified TLS the agent's own connections use (`verify-full`), and the
/// agent's [`APPLICATION_NAME`] (unless the `conninfo` names another).
///
/// # Errors
/// The password file cannot be read (the error's path is `db.password_file`).
pub fn libpq_env(
    mut cmd: crate::process::Cmd,
    db: &DatabaseConfig,
) -> std::io::Result<crate::process::Cmd> {
    if let Some(pf) = &db.password_file {
        let pw = std::fs::read_to_string(pf)?;
        cmd = cmd.env("PGPASSWORD", pw.trim_end_matches(['\n', '\r']));
    }
    if let Some(ca) = &db.ca_file {
        cmd = cmd.env("PGSSLROOTCERT", ca).env("PGSSLMODE", "verify-full");
    }
    Ok(cmd.env("PGAPPNAME", APPLICATION_NAME))
}

/// [`pg_message`], and for a refused server certificate which file to fix: the database's
/// `ca_file` (not the migration CA of the agents' mutual TLS, which this has nothing to do with).
fn tls_message(db: &DatabaseConfig, e: &tokio_postgres::Error) -> String {
    let msg = pg_message(e);
    let lower = msg.to_lowercase();
    let cert = [
        "unknownissuer",
        "unknown issuer",
        "badsignature",
        "notvalidforname",
        "certificate",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if !cert {
        return msg;
    }
    let ca = db.ca_file.as_ref().map_or_else(
        || "the system's trusted roots (no ca_file set)".to_string(),
        |p| format!("ca_file {}", p.display()),
    );
    format!(
        "the PostgreSQL server's certificate was not accepted with {ca} of this database's \
         [[databases]] entry: put the CA that signs the server's certificate there (for RDS the \
         region's bundle) [{msg}]"
    )
}

/// Runs a connection's I/O until it ends, or until a [`CloseGuard`] of the returned [`Driver`] is
/// dropped armed (then once more).
fn drive<S, T>(conn: tokio_postgres::Connection<S, T>) -> Driver
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let closing = CancellationToken::new();
    let signal = closing.clone();
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let ended = tokio::select! {
            r = &mut conn => Some(r),
            () = signal.cancelled() => futures::future::poll_immediate(&mut conn).await,
        };
        match ended {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "database connection ended"),
            None => tracing::debug!("closed a database connection while the server was sending"),
        }
    });
    Driver(closing)
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
