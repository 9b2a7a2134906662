//! The lab: throwaway "hosts" on this machine, for `hostshift rehearse` and for the test rig.
//!
//! A lab host is a private PostgreSQL cluster (its own data directory, socket directory and
//! postmaster, owned by this process) listening on one loopback address such as `127.0.0.2`, plus
//! a realistic application database to move. Nothing here touches the machine's own PostgreSQL
//! service or leaves the loopback interface: [`pg::PgCluster::start`] refuses non-loopback
//! addresses, and a cluster that is dropped kills its postmaster.
//!
//! - [`pg`] starts, connects to and stops throwaway clusters.
//! - [`seed`] fills a database with the schema and data the product's users have.
//! - [`agent`] starts real `hostshift-agent` processes with generated configs.

pub mod agent;
pub mod pg;
mod process;
pub mod seed;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while building or tearing down a lab host.
///
/// Each message says what happened and, where a person can fix it, how.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// No PostgreSQL server binaries on this machine.
    #[error(
        "PostgreSQL server binaries not found (looked in {searched} and for `initdb` on PATH): \
         install them with `apt-get install -y postgresql-15` (or run scripts/install-test-deps)"
    )]
    PgBinariesMissing {
        /// The directories that were searched, comma separated.
        searched: String,
    },

    /// The `postgres` system user, which owns every lab cluster, does not exist.
    #[error(
        "the `postgres` system user does not exist: install PostgreSQL with \
         `apt-get install -y postgresql-15`, which creates it"
    )]
    NoPostgresUser,

    /// initdb and the server refuse root, and only root can switch to `postgres`.
    #[error(
        "initdb must run as the `postgres` user: run hostshift as root or as postgres \
         (this process runs as uid {uid})"
    )]
    NotRootOrPostgres {
        /// The effective uid of this process.
        uid: u32,
    },

    /// The lab only binds loopback addresses: nothing may be reachable from outside the machine.
    #[error(
        "lab clusters listen on loopback only, {addr} is not in 127.0.0.0/8: pick e.g. 127.0.0.2"
    )]
    NotLoopback {
        /// The address that was refused.
        addr: Ipv4Addr,
    },

    /// A cluster name must be one plain path component.
    #[error(
        "lab cluster name {name:?} is not a plain directory name: use letters, digits, `-` and `_`"
    )]
    InvalidName {
        /// The name that was refused.
        name: String,
    },

    /// A directory the postgres user must traverse is closed to it.
    #[error(
        "the postgres user cannot enter {path} (mode {mode:o}, owner uid {owner}): \
         `chmod o+x {path}` or put the lab root somewhere else (e.g. under /tmp)"
    )]
    NotReachable {
        /// The directory that blocks the way.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },

    /// The cluster's data directory already holds something.
    #[error("{path} already exists and is not empty: remove it or choose another cluster name")]
    DataDirNotEmpty {
        /// The data directory.
        path: PathBuf,
    },

    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("create directory").
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A program ran and failed.
    #[error("`{command}` failed ({status}); last lines of its output:\n{stderr_tail}")]
    Command {
        /// The command line.
        command: String,
        /// The exit status (or "timed out after …").
        status: String,
        /// The last lines the program wrote to stderr and stdout.
        stderr_tail: String,
    },

    /// No free TCP port could be reserved on the listen address.
    #[error("could not find a free TCP port on {addr}: {source}")]
    NoFreePort {
        /// The listen address.
        addr: Ipv4Addr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The postmaster did not accept connections in time.
    #[error(
        "PostgreSQL in {data_dir} did not accept connections within {waited:?} \
         (last attempt: {last_error}); last lines of {log}:\n{log_tail}"
    )]
    StartTimeout {
        /// The data directory.
        data_dir: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The last connection error.
        last_error: String,
        /// The server log.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },

    /// The postmaster exited on its own (during start-up, or before `stop()`).
    #[error(
        "PostgreSQL in {data_dir} exited unexpectedly ({status}); last lines of {log}:\n{log_tail}"
    )]
    Exited {
        /// The data directory.
        data_dir: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// The server log.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },

    /// A signal could not be delivered to the postmaster.
    #[error("could not send {signal} to the postmaster (pid {pid}): {source}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The postmaster's pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: nix::errno::Errno,
    },

    /// A SQL statement or a connection failed.
    #[error("{what}: {source}")]
    Postgres {
        /// What was being done ("connect to …", "seed table users").
        what: String,
        /// The driver's error, which includes the server's message.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl LabError {
    /// Wraps an I/O error with the action and path it belongs to.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// Wraps a driver error with what was being done.
    pub(crate) fn pg(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| Self::Postgres { what, source }
    }
}
