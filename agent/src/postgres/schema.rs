//! Schema: the pre-data and post-data sections of `pg_dump --schema-only` streamed from the
//! source, and applied on the target — pre-data in one transaction, post-data entry by entry on
//! several connections.
//!
//! # Source
//! [`dump_section`] runs the agent's `pg_dump` (through [`crate::process`], from
//! `agent_info::pg_bin_dir`) with `--schema-only --section=pre-data|post-data`, ownership and
//! privileges kept, `--snapshot` of the sync when given (the schema then matches the data to the
//! row), and the selection as explicit `-T` arguments ([`super::select::dump_args`]). The
//! password is read from the config's `password_file` and passed as `PGPASSWORD` in the child's
//! environment — never on the command line, which error messages show. Output is streamed from
//! `pg_dump`'s stdout in chunks of [`DUMP_CHUNK_BYTES`]; no file is written.
//!
//! What the sections hold (PostgreSQL 15): pre-data = extensions, schemas, types, functions,
//! tables (columns, defaults, `CHECK`s), partition attachments, sequences, views, ownership,
//! grants, comments; post-data = primary keys, unique and foreign-key constraints, indexes,
//! triggers, rules, policies, default privileges. Large objects are in neither: `--schema-only`
//! leaves them out even with `-b` ([`super::large_objects`] copies them, metadata included).
//!
//! # Target
//! [`SchemaBuffer`] collects the section (schema text is small: a large app's is a few MB; the
//! buffer refuses more than [`MAX_SCHEMA_BYTES`]); the caller verifies the stream, then:
//! - **pre-data**: [`SchemaBuffer::apply`] runs it in one transaction: a failure leaves nothing
//!   behind.
//! - **post-data**: [`SchemaBuffer::apply_on`] splits it into its TOC entries (module `toc`) and
//!   applies them in phases on up to [`POST_DATA_PARALLELISM`] connections, indexes and unique
//!   constraints first, biggest table first, then foreign keys, then the rest (module `post_data`).
//!   Building indexes is most of a database sync's post-data time, and one connection uses one
//!   core of the target. A part of the section can be applied alone ([`PostDataPart`]): a big
//!   table's indexes while other tables still load, the rest afterwards. Each entry is its own
//!   transaction and an entry whose object already exists is skipped, so applying the section
//!   again after an interruption completes it.
//!
//! `pg_dump` 15.14+ wraps its output in `\restrict KEY` … `\unrestrict KEY` (psql meta-commands
//! against malicious servers); those two lines are removed when their keys pair up, nothing else
//! is rewritten.

mod post_data;
mod toc;

pub use post_data::{POST_DATA_PARALLELISM, PostDataPart, SchemaApplied};

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::select::{self, Selection};
use crate::config::DatabaseConfig;
use crate::process::{Cmd, Running};

/// Chunk size of [`dump_section`]'s stream.
pub const DUMP_CHUNK_BYTES: usize = 64 * 1024;
/// Most schema text [`SchemaBuffer`] accepts (the target's memory bound for a schema apply).
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024 * 1024;
/// Deadline of one `pg_dump` run (it waits for locks only up to [`LOCK_WAIT_TIMEOUT`]).
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `pg_dump --lock-wait-timeout`: how long it waits for a table's `ACCESS SHARE` lock.
pub const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// A section of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Section {
    /// Everything tables need before their data arrives.
    PreData,
    /// Indexes, constraints, triggers: built after the data, which is much faster.
    PostData,
}

impl Section {
    /// The `pg_dump --section` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreData => "pre-data",
            Self::PostData => "post-data",
        }
    }
}

/// The `pg_dump` command for a section (without the password, which goes in the environment).
fn command(
    db: &DatabaseConfig,
    bin_dir: &Path,
    section: Section,
    selection_args: &[String],
    snapshot: Option<&SnapshotId>,
) -> Result<Cmd, PgSyncError> {
    let mut cmd = Cmd::new(bin_dir.join("pg_dump"))
        .arg("--schema-only")
        .arg(format!("--section={}", section.as_str()))
        .arg("--no-password")
        .arg(format!(
            "--lock-wait-timeout={}",
            LOCK_WAIT_TIMEOUT.as_millis()
        ))
        .timeout(DUMP_TIMEOUT)
        .env("PGCLIENTENCODING", "UTF8")
        .env("PGAPPNAME", "hostshift-agent")
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(s) = snapshot {
        cmd = cmd.arg(format!("--snapshot={}", s.as_str()));
    }
    let dbname = crate::postgres::connect::dbname_arg(db).map_err(|e| PgSyncError::Connect {
        database: db.name.clone(),
        message: e.to_string(),
    })?;
    cmd = cmd.args(selection_args).arg(dbname);
    let cmd = crate::postgres::connect::libpq_env(cmd, db).map_err(|source| PgSyncError::Io {
        op: "read the password file",
        path: db.password_file.clone().unwrap_or_default(),
        source,
    })?;
    Ok(cmd)
}

struct Dump {
    running: Running,
    stdout: ChildStdout,
    stderr: JoinHandle<String>,
    cancel: CancellationToken,
    deadline: tokio::time::Instant,
    database: String,
}

impl Dump {
    fn failure(&self, status: String, stderr_tail: String) -> PgSyncError {
        PgSyncError::Command {
            database: self.database.clone(),
            command: self.running.cmdline.clone(),
            status,
            stderr_tail,
        }
    }

    /// The next chunk, or `None` after `pg_dump` exited 0.
    async fn next(&mut self) -> Result<Option<Bytes>, PgSyncError> {
        let mut chunk = BytesMut::with_capacity(DUMP_CHUNK_BYTES);
        while chunk.len() < DUMP_CHUNK_BYTES {
            let read = tokio::select! {
                r = self.stdout.read_buf(&mut chunk) => r,
                () = self.cancel.cancelled() => {
                    self.running.terminate().await;
                    return Err(PgSyncError::Cancelled { database: self.database.clone() });
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    self.running.terminate().await;
                    let tail = (&mut self.stderr).await.unwrap_or_default();
                    return Err(self.failure(format!("timed out after {} s", DUMP_TIMEOUT.as_secs()), tail));
                }
            };
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.running.terminate().await;
                    return Err(self.failure(format!("stdout unreadable: {e}"), String::new()));
                }
            }
        }
        if !chunk.is_empty() {
            return Ok(Some(chunk.freeze()));
        }
        let exit = self.running.wait(&self.cancel).await.map_err(|e| match e {
            crate::error::AgentError::Cancelled => PgSyncError::Cancelled {
                database: self.database.clone(),
            },
            other => self.failure(other.to_string(), String::new()),
        })?;
        let tail = (&mut self.stderr).await.unwrap_or_default();
        if exit.success() {
            Ok(None)
        } else {
            Err(self.failure(exit.describe(), tail))
        }
    }
}

/// Streams one schema section of the source database from `pg_dump`'s stdout.
///
/// The stream ends with `Ok` only after `pg_dump` exited 0; dropping it kills `pg_dump`.
/// `cancel` terminates it (then kills it after [`crate::process::TERMINATE_GRACE`]).
///
/// # Errors
/// Up front: [`PgSyncError::Connect`]/[`PgSyncError::Query`] while resolving a selection that is
/// not [`Selection::all`]; [`PgSyncError::InvalidSelection`] when includes select nothing;
/// [`PgSyncError::Io`] for an unreadable password file; [`PgSyncError::Command`] when `pg_dump`
/// cannot start. In the stream: [`PgSyncError::Command`] with `pg_dump`'s stderr tail when it
/// fails or times out, [`PgSyncError::Cancelled`].
pub async fn dump_section(
    db: &DatabaseConfig,
    bin_dir: &Path,
    section: Section,
    selection: &Selection,
    snapshot: Option<&SnapshotId>,
    cancel: CancellationToken,
) -> Result<impl Stream<Item = Result<Bytes, PgSyncError>> + Send + 'static, PgSyncError> {
    let selection_args = if selection.is_all() {
        Vec::new()
    } else {
        let conn = Conn::connect(db).await?;
        select::dump_args(&conn, selection).await?
    };
    let cmd = command(db, bin_dir, section, &selection_args, snapshot)?;
    let cmdline = cmd.display();
    let mut running = cmd.spawn().map_err(|e| PgSyncError::Command {
        database: db.name.clone(),
        command: cmdline.clone(),
        status: "could not start".into(),
        stderr_tail: e.to_string(),
    })?;
    let (Some(stdout), Some(stderr)) = (running.take_stdout(), running.take_stderr()) else {
        return Err(PgSyncError::Command {
            database: db.name.clone(),
            command: cmdline,
            status: "started without stdout/stderr pipes".into(),
            stderr_tail: String::new(),
        });
    };
    tracing::debug!(database = %db.name, section = section.as_str(), command = %cmdline, "pg_dump started");
    let dump = Dump {
        running,
        stdout,
        stderr: tokio::spawn(crate::process::tail(stderr)),
        cancel,
        deadline: tokio::time::Instant::now() + DUMP_TIMEOUT,
        database: db.name.clone(),
    };
    Ok(futures::stream::try_unfold(dump, |mut dump| async move {
        Ok(dump.next().await?.map(|chunk| (chunk, dump)))
    }))
}

/// A schema section received on the target, applied by [`SchemaBuffer::apply`] or
/// [`SchemaBuffer::apply_on`].
#[derive(Debug)]
pub struct SchemaBuffer {
    database: String,
    section: Section,
    what: String,
    text: Vec<u8>,
    limit: usize,
    part: PostDataPart,
}

impl SchemaBuffer {
    /// An empty buffer for `section`, limited to [`MAX_SCHEMA_BYTES`]; `database` is the
    /// configured name (for messages).
    pub fn new(database: &str, section: Section) -> Self {
        Self::with_limit(database, section, MAX_SCHEMA_BYTES)
    }

    /// An empty buffer with another limit.
    pub fn with_limit(database: &str, section: Section, limit: usize) -> Self {
        Self {
            database: database.to_string(),
            section,
            what: format!("{} schema", section.as_str()),
            text: Vec::new(),
            limit,
            part: PostDataPart::Whole,
        }
    }

    /// Applies only `part` of a post-data section (ignored for pre-data, which runs whole).
    #[must_use]
    pub fn part(mut self, part: PostDataPart) -> Self {
        self.part = part;
        self
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// [`PgSyncError::TooLarge`] beyond the limit (the buffer is then useless: drop it).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), PgSyncError> {
        if self.text.len() + chunk.len() > self.limit {
            return Err(PgSyncError::TooLarge {
                database: self.database.clone(),
                what: self.what.clone(),
                limit: self.limit,
            });
        }
        self.text.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// True when nothing was buffered.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Applies the section on `conn` alone: [`SchemaBuffer::apply_on`] with one connection.
    ///
    /// # Errors
    /// As [`SchemaBuffer::apply_on`].
    pub async fn apply(self, conn: &Conn) -> Result<SchemaApplied, PgSyncError> {
        self.apply_on(std::slice::from_ref(conn)).await
    }

    /// Applies the section, then resets the session settings the dump changed. Call only after
    /// the stream was verified. The caller must have checked that this database may be written
    /// (`[allow] restore_databases`); this function does not.
    ///
    /// Pre-data runs in one transaction on the first connection. Post-data runs entry by entry
    /// on all of `conns` (give it [`POST_DATA_PARALLELISM`] connections to the same database),
    /// skipping entries whose object already exists (see the module doc).
    ///
    /// # Errors
    /// [`PgSyncError::InvalidInput`] when the text is not UTF-8, its `\restrict`/`\unrestrict`
    /// lines do not pair up, a literal is not closed, or `conns` is empty;
    /// [`PgSyncError::Query`] with the server's message when a statement fails — for pre-data
    /// (e.g. an object that already exists) the transaction is rolled back and nothing of the
    /// section remains; for post-data the error names the entry, and the entries applied before
    /// it stay (applying the section again completes it).
    pub async fn apply_on(self, conns: &[Conn]) -> Result<SchemaApplied, PgSyncError> {
        let text = String::from_utf8(self.text).map_err(|e| PgSyncError::InvalidInput {
            database: self.database.clone(),
            what: self.what.clone(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let sql = strip_restrict(&text).map_err(|e| PgSyncError::InvalidInput {
            database: self.database.clone(),
            what: self.what.clone(),
            reason: e.to_string(),
        })?;
        if self.section == Section::PostData {
            return post_data::apply(&self.database, &sql, &self.part, conns).await;
        }
        let Some(conn) = conns.first() else {
            return Err(PgSyncError::InvalidInput {
                database: self.database.clone(),
                what: self.what.clone(),
                reason: "no connection to apply it on".into(),
            });
        };
        conn.exec("BEGIN", None, "begin the schema transaction")
            .await?;
        let early = early_schema_grants(&sql);
        let applied = async {
            if !early.is_empty() {
                conn.exec(
                    &early,
                    None,
                    "grant the privileges on existing schemas first",
                )
                .await?;
            }
            conn.exec(&sql, None, &format!("apply the {}", self.what))
                .await
        };
        if let Err(e) = applied.await {
            // The statement's error matters more than a failed rollback.
            let _ = conn.client().batch_execute("ROLLBACK").await;
            return Err(e);
        }
        conn.exec("COMMIT; RESET ALL", None, "commit the schema")
            .await?;
        tracing::debug!(database = %self.database, what = %self.what, bytes = sql.len(), "schema applied");
        Ok(SchemaApplied {
            connections: 1,
            ..SchemaApplied::default()
        })
    }
}

/// The privilege statements (`GRANT`/`REVOKE … ON SCHEMA`) of the schemas a pre-data section
/// does not create (`public`), to run before the section: `pg_dump` puts privileges after the
/// objects, and `ALTER TABLE … OWNER TO app` needs `app` to hold `CREATE` on the table's schema
/// unless a superuser runs it — a managed database's master is not one. Empty when there is
/// nothing to move forward or the text cannot be split (the section then runs as it is).
fn early_schema_grants(sql: &str) -> String {
    let Ok(toc) = toc::split(sql) else {
        return String::new();
    };
    let created: std::collections::BTreeSet<&str> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "SCHEMA")
        .map(|e| e.name.as_str())
        .collect();
    toc.entries
        .iter()
        .filter(|e| e.desc == "ACL")
        .filter(|e| {
            e.name
                .strip_prefix("SCHEMA ")
                .is_some_and(|n| !created.contains(n))
        })
        .flat_map(|e| e.statements.iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `\restrict` / `\unrestrict` lines of a dump that do not pair up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
enum RestrictError {
    /// A `\restrict` while one is open.
    #[error("a second \\restrict line")]
    Second,
    /// An `\unrestrict` without its `\restrict`.
    #[error("an \\unrestrict line whose key does not match")]
    KeyMismatch,
}

/// Removes `pg_dump`'s `\restrict KEY` / `\unrestrict KEY` lines (psql meta-commands the server
/// cannot run); refuses them when they do not pair up.
fn strip_restrict(text: &str) -> Result<String, RestrictError> {
    let mut out = String::with_capacity(text.len());
    let mut key: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(k) = bare.strip_prefix("\\restrict ") {
            if key.is_some() {
                return Err(RestrictError::Second);
            }
            key = Some(k);
            continue;
        }
        if let Some(k) = bare.strip_prefix("\\unrestrict ") {
            if key == Some(k) {
                continue;
            }
            return Err(RestrictError::KeyMismatch);
        }
        out.push_str(line);
    }
    // Other lines starting with '\' are left alone: pg_dump emits no other meta-command in
    // schema-only output, and such a line inside a function body is part of the body.
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_on_schemas_the_dump_does_not_create_move_first() {
        let dump = "SET x = 1;\n\n--\n-- Name: extra; Type: SCHEMA; Schema: -; Owner: app\n--\n\n\
            CREATE SCHEMA extra;\n\n\n--\n-- Name: users; Type: TABLE; Schema: public; Owner: app\n--\n\n\
            CREATE TABLE public.users (id int);\nALTER TABLE public.users OWNER TO app;\n\n\n\
            --\n-- Name: SCHEMA public; Type: ACL; Schema: -; Owner: pg_database_owner\n--\n\n\
            GRANT USAGE,CREATE ON SCHEMA public TO app;\n\n\n\
            --\n-- Name: SCHEMA extra; Type: ACL; Schema: -; Owner: app\n--\n\n\
            GRANT USAGE ON SCHEMA extra TO app_ro;\n";
        assert_eq!(
            early_schema_grants(dump),
            "GRANT USAGE,CREATE ON SCHEMA public TO app;"
        );
        assert_eq!(early_schema_grants("CREATE TABLE t (a int);\n"), "");
    }

    #[test]
    fn restrict_lines_are_removed_and_the_rest_kept() {
        let dump = "\\restrict abc123\nSET x = 1;\nCREATE TABLE t (a int);\n\\unrestrict abc123\n";
        assert_eq!(
            strip_restrict(dump).expect("valid"),
            "SET x = 1;\nCREATE TABLE t (a int);\n"
        );
        assert_eq!(strip_restrict("SELECT 1;\n").expect("plain"), "SELECT 1;\n");
        assert!(strip_restrict("\\restrict a\n\\unrestrict b\n").is_err());
        assert!(strip_restrict("\\restrict a\n\\restrict a\n").is_err());
    }

    #[test]
    fn the_buffer_refuses_more_than_its_limit() {
        let mut b = SchemaBuffer::with_limit("app", Section::PreData, 10);
        b.push(b"0123456789").expect("at the limit");
        let e = b.push(b"x").expect_err("over the limit");
        assert!(matches!(e, PgSyncError::TooLarge { limit: 10, .. }), "{e}");
        assert!(e.to_string().contains("pre-data schema"));
    }

    #[test]
    fn the_password_goes_to_the_environment_not_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pf = dir.path().join("pw");
        std::fs::write(&pf, "s3cret\n").expect("write");
        let db = DatabaseConfig {
            name: "app".into(),
            conninfo: "host=/run/postgresql dbname=app user=app".into(),
            password_file: Some(pf),
            ca_file: None,
        };
        let snap = SnapshotId::parse("00000003-0000001B-1").expect("id");
        let cmd = command(
            &db,
            Path::new("/usr/lib/postgresql/15/bin"),
            Section::PostData,
            &["-t\"public\".\"users\"".to_string()],
            Some(&snap),
        )
        .expect("command");
        let line = cmd.display();
        assert!(!line.contains("s3cret"), "{line}");
        assert!(line.contains("--section=post-data"), "{line}");
        assert!(line.contains("--snapshot=00000003-0000001B-1"), "{line}");
        assert!(line.contains("-t\"public\".\"users\""), "{line}");
        assert!(
            line.ends_with("--dbname=host=/run/postgresql dbname=app user=app"),
            "{line}"
        );
        // Even a conninfo that slipped a password past validation never reaches the line.
        for conninfo in [
            "host=/run/postgresql dbname=app password = hunter2",
            "postgresql://app:hunter2@localhost/app?pass%77ord=hunter2",
        ] {
            let db = DatabaseConfig {
                conninfo: conninfo.into(),
                ..db.clone()
            };
            let cmd = command(
                &db,
                Path::new("/usr/lib/postgresql/15/bin"),
                Section::PreData,
                &[],
                None,
            )
            .expect("command");
            assert!(!cmd.display().contains("hunter2"), "{}", cmd.display());
        }
    }
}
