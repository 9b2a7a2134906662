//! Applying decoded changes on the new host's database, exactly once (and, in the rollback
//! window, the new host's changes on the old host's: [`super::Direction`] only changes what the
//! errors call the two hosts).
//!
//! Each source transaction becomes one transaction here. Values arrive as text and are cast
//! through the *new* host's column type (`$n::text::<format_type>`), so anything with a text form
//! (enums, arrays, jsonb, bytea in hex, domains) round-trips. UPDATE and DELETE find their row by
//! the replica identity: the key the message carries ('K'), the whole old row ('O', REPLICA
//! IDENTITY FULL), else the new row's identity columns. Every UPDATE/DELETE by key must touch
//! exactly one row: anything else means the two databases diverged, and the follower stops
//! rather than guess.
//!
//! # Exactly once
//! The session is bound to a replication origin (`pg_replication_origin_session_setup`) and each
//! applied transaction records the source commit's end LSN and timestamp with
//! `pg_replication_origin_xact_setup` **in the same transaction** as its rows: the position and
//! the data commit together or not at all. On (re)start the applier reads
//! `pg_replication_origin_progress(origin, true)` and skips every transaction that commits at or
//! before it — the old host may deliver it again (its slot only advances after we confirmed).
//!
//! # The anchor
//! Transactions that the first copy already contains are skipped: the copy was read under an
//! exported snapshot taken after the slot was created, and [`Anchor::visible`] says whether a
//! transaction id is visible in that snapshot (committed before it) — exactly the rows the copy
//! holds.
//!
//! The session runs with `session_replication_role = replica`, as PostgreSQL's own apply worker
//! does: the new host's ordinary triggers and foreign-key triggers do not fire a second time for
//! rows that the old host's triggers already produced.
//!
//! # A pipeline, not a round trip per row
//! A row's statement is sent without waiting for the one before it to answer (tokio-postgres
//! pipelines requests issued concurrently on one connection, and the server answers them in
//! order): up to [`PIPELINE`] statements are in flight, and `BEGIN`, the origin's
//! `xact_setup` and `COMMIT` travel in the same pipeline. Each statement is polled once as it
//! joins the pipeline (a tokio-postgres request leaves only when first polled), so the server
//! applies a large transaction while the rest of it is still arriving, not after its COMMIT.
//! Waiting for each answer made the apply rate the loopback round trip (about 6,000 rows/s on
//! the test box, a 1 % change of the reference database taking tens of seconds to catch up); the
//! server's own work is the limit now. The answers are still checked one by one, in order — an UPDATE or DELETE that matched
//! no row is still caught — and the first failure is the one reported (those after it are the
//! aborted transaction's echoes). Every answer is checked before `COMMIT` is sent (one round
//! trip per transaction: a row count that shows a divergence is no error to the server, which
//! would otherwise commit it), and nothing is acknowledged to the old host before its `COMMIT`
//! answered, so a failure anywhere in the pipeline loses nothing: the transaction is applied
//! again from the start.
//!
//! # Runs of rows as one statement
//! A transaction that changes many rows of one table the same way — a bulk UPDATE, a migration,
//! an import — arrives as one message per row. Consecutive INSERTs of a table with the same
//! columns, UPDATEs by key that set the same columns (and keep their key), and DELETEs by key
//! are gathered into a [`Batch`] of up to [`BATCH_ROWS`] rows and sent as **one** statement over
//! `unnest` of text arrays (`UPDATE t SET c = v.a1::type FROM unnest($1::text[], $2::text[]) AS
//! v(a0, a1) WHERE t.k = v.a0::type`): the server plans and executes once per batch instead of
//! once per row, which is where the time of a large transaction went (each row paid a Bind,
//! an Execute and an executor start-up). The promises stay: an UPDATE or DELETE batch must
//! match exactly as many rows as it carries, else the hosts diverged; a key that comes again
//! within a run ends the batch first (a joined UPDATE would apply only one of its values), and
//! so does any other change, so the order of changes is kept. Changes that do not fit (a key
//! that changes, a full old row, a NULL in the key, unchanged TOAST values in an INSERT) go
//! one by one as before. Memory: at most [`BATCH_ROWS`] rows' text values.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::Direction;
use super::pgoutput::{Message, Relation, Value, lsn_text};
use crate::error::AgentError;
use crate::postgres::sql::{ident, literal};

/// The snapshot the first copy was read under (`pg_current_snapshot()` text, `xmin:xmax:xip,…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Anchor {
    /// Parses `pg_current_snapshot()::text`.
    ///
    /// # Errors
    /// `InvalidArgument` for anything else.
    pub fn parse(text: &str) -> Result<Self, AgentError> {
        let bad = || AgentError::InvalidArgument(format!("{text:?} is not a pg_snapshot"));
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| s.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { xmin, xmax, xip })
    }

    /// Whether the (32-bit) transaction id `xid` had committed when the snapshot was taken, i.e.
    /// the copy already holds its effects. The epoch is taken as the one that puts `xid` nearest
    /// to the snapshot's `xmax` (decoded transactions are never 2^31 transactions away).
    pub fn visible(&self, xid: u32) -> bool {
        let epoch = self.xmax >> 32;
        let full = [epoch.wrapping_sub(1), epoch, epoch + 1]
            .into_iter()
            .map(|e| (e << 32) | u64::from(xid))
            .min_by_key(|f| f.abs_diff(self.xmax))
            .unwrap_or(u64::from(xid));
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// A source table as it is on the new host.
struct Target {
    source: Relation,
    /// `"schema"."table"`.
    name: String,
    /// Per source column: the new host's `format_type`.
    types: Vec<String>,
    /// Indexes of the replica identity columns.
    key: Vec<usize>,
}

/// What one applied (or skipped) transaction moved the position to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The source commit's end LSN (what the slot may be advanced to).
    pub end_lsn: u64,
    /// Its commit timestamp (microseconds since 2000-01-01).
    pub commit_ts: i64,
    /// False when it was skipped (already in the copy or applied before).
    pub applied: bool,
}

/// Statements sent ahead of their answers (see "A pipeline" above).
pub const PIPELINE: usize = 256;

/// Rows gathered into one statement at most (see "Runs of rows" above).
pub const BATCH_ROWS: usize = 500;

/// What an answer must show: any count, or exactly this many rows (UPDATEs or DELETEs by key).
#[derive(Clone, Debug)]
enum Expect {
    Any,
    /// This many rows; otherwise the hosts diverged: `(rows, verb, table)` for the message.
    Rows(u64, &'static str, String),
}

/// What a [`Batch`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BatchKind {
    Insert,
    Update,
    Delete,
}

/// Consecutive changes of one table and one shape, sent as one statement (see "Runs of rows").
struct Batch {
    kind: BatchKind,
    rel: u32,
    /// Source column indexes, in the arrays' order: Insert: the inserted columns; Update: the key
    /// columns, then the columns set; Delete: the key columns.
    cols: Vec<usize>,
    /// How many of `cols` are the key (Update, Delete).
    keys: usize,
    /// One array of text values per column of `cols`.
    arrays: Vec<Vec<Option<String>>>,
    /// The keys in the batch (Update, Delete): a key that comes again ends the batch.
    seen: HashSet<Vec<String>>,
    rows: usize,
}

impl Batch {
    /// The statement of this batch's shape (the same text for every batch of that shape: it is
    /// prepared once).
    fn sql(&self, t: &Target) -> String {
        let aliases: Vec<String> = (0..self.cols.len()).map(|i| format!("a{i}")).collect();
        let arrays: Vec<String> = (1..=self.cols.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let from = format!("unnest({}) AS v({})", arrays.join(", "), aliases.join(", "));
        let value = |i: usize| format!("v.a{i}::{}", t.types[self.cols[i]]);
        let name = |i: usize| ident(&t.source.columns[self.cols[i]].name);
        let key = || {
            (0..self.keys)
                .map(|i| format!("t.{} = {}", name(i), value(i)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        match self.kind {
            BatchKind::Insert => format!(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {from}",
                t.name,
                (0..self.cols.len())
                    .map(name)
                    .collect::<Vec<_>>()
                    .join(", "),
                (0..self.cols.len())
                    .map(value)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BatchKind::Update => format!(
                "UPDATE {} AS t SET {} FROM {from} WHERE {}",
                t.name,
                (self.keys..self.cols.len())
                    .map(|i| format!("{} = {}", name(i), value(i)))
                    .collect::<Vec<_>>()
                    .join(", "),
                key()
            ),
            BatchKind::Delete => {
                format!("DELETE FROM {} AS t USING {from} WHERE {}", t.name, key())
            }
        }
    }
}

/// A statement in flight: its answer (rows affected) and what that answer must show.
type InFlight = BoxFuture<'static, (Result<u64, tokio_postgres::Error>, Expect)>;

/// Applies a pgoutput message stream to one database of the new host.
pub struct Applier {
    client: Arc<Client>,
    /// Statements sent whose answers are not checked yet, oldest first.
    pending: FuturesOrdered<InFlight>,
    database: String,
    anchor: Anchor,
    /// Commits ending at or before this were applied earlier.
    progress: u64,
    targets: HashMap<u32, Target>,
    /// Inside a transaction: is it being applied (true) or skipped (false)?
    current: Option<bool>,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// Changes gathered but not sent yet (see "Runs of rows").
    batch: Option<Batch>,
    /// Which host is which, for the errors.
    direction: Direction,
}

/// The replication-origin functions the follower calls, as `has_function_privilege` and `GRANT`
/// spell them. A superuser may call them all; PostgreSQL revokes them from everyone else until a
/// superuser grants `EXECUTE` (RDS gives them to its master through `rds_superuser`).
pub const ORIGIN_FUNCTIONS: [&str; 5] = [
    "pg_catalog.pg_replication_origin_create(text)",
    "pg_catalog.pg_replication_origin_drop(text)",
    "pg_catalog.pg_replication_origin_progress(text, boolean)",
    "pg_catalog.pg_replication_origin_session_setup(text)",
    "pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
];

/// What the role of `client` lacks to apply changes: `EXECUTE` on each of [`ORIGIN_FUNCTIONS`]
/// and `SET` on `session_replication_role` (PostgreSQL 15+ grants it with `GRANT SET ON
/// PARAMETER`; before 15 only a superuser may set it). Returns the role and the `GRANT`
/// statements a superuser would run, empty when nothing is missing.
///
/// # Errors
/// `Database` when the queries fail.
pub async fn missing_apply_rights(
    client: &Client,
    database: &str,
) -> Result<(String, Vec<String>), AgentError> {
    let row = client
        .query_one(
            "SELECT current_user::text, \
                    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), \
                    current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    let (role, superuser, version): (String, bool, i32) = (row.get(0), row.get(1), row.get(2));
    if superuser {
        return Ok((role, Vec::new()));
    }
    let mut missing = Vec::new();
    let functions: Vec<String> = ORIGIN_FUNCTIONS.iter().map(|f| (*f).to_string()).collect();
    let rows = client
        .query(
            "SELECT f FROM unnest($1::text[]) WITH ORDINALITY AS u(f, n) \
             WHERE NOT pg_catalog.has_function_privilege(f, 'EXECUTE') ORDER BY n",
            &[&functions],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    for r in rows {
        let f: String = r.get(0);
        missing.push(format!(
            "GRANT EXECUTE ON FUNCTION {f} TO {};",
            ident(&role)
        ));
    }
    let can_set = if version >= 150_000 {
        client
            .query_one(
                "SELECT pg_catalog.has_parameter_privilege('session_replication_role', 'SET')",
                &[],
            )
            .await
            .map_err(|e| AgentError::db(database, &e))?
            .get::<_, bool>(0)
    } else {
        false
    };
    if !can_set {
        missing.push(if version >= 150_000 {
            format!(
                "GRANT SET ON PARAMETER session_replication_role TO {};",
                ident(&role)
            )
        } else {
            "(PostgreSQL before 15: only a superuser may set session_replication_role; connect as one)"
                .to_string()
        });
    }
    Ok((role, missing))
}

/// Creates the replication origin `origin` when missing. The role needs what
/// [`missing_apply_rights`] checks (a superuser, or the grants RDS gives its master).
///
/// # Errors
/// `FailedPrecondition` naming each missing grant; `Database` otherwise.
pub async fn ensure_origin(
    client: &Client,
    database: &str,
    origin: &str,
    direction: Direction,
) -> Result<(), AgentError> {
    let (role, missing) = missing_apply_rights(client, database).await?;
    if !missing.is_empty() {
        return Err(AgentError::FailedPrecondition(format!(
            "database {database} on the {}: following applies changes with a replication origin and session_replication_role = replica, and role {role} (the conninfo's user) may not: as a superuser connected to this database (a function's rights are per database) run `{}` (on RDS the master has these through rds_superuser; see docs/rds.md), or connect as a superuser",
            direction.target(),
            missing.join(" ")
        )));
    }
    client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_create($1) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
            &[&origin],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok(())
}

/// The LSN up to which `origin` has applied (0 when it never applied anything).
///
/// # Errors
/// `Database` when the query fails.
pub async fn origin_progress(
    client: &Client,
    database: &str,
    origin: &str,
) -> Result<u64, AgentError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_replication_origin_progress($1, true)::text \
             FROM pg_catalog.pg_replication_origin WHERE roname = $1 \
             UNION ALL SELECT NULL LIMIT 1",
            &[&origin],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok(row
        .get::<_, Option<String>>(0)
        .and_then(|t| super::pgoutput::parse_lsn(&t))
        .unwrap_or(0))
}

/// Drops the replication origin `origin` if it exists.
///
/// # Errors
/// `Database` when the query fails.
pub async fn drop_origin(client: &Client, database: &str, origin: &str) -> Result<(), AgentError> {
    // Looked up first: PostgreSQL checks EXECUTE when it plans the call, even for no row, and a
    // role refused by `ensure_origin` (it never created one) must still be able to clean up.
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1",
            &[&origin],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?
        .is_some();
    if !exists {
        return Ok(());
    }
    client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_drop(roname) \
             FROM pg_catalog.pg_replication_origin WHERE roname = $1",
            &[&origin],
        )
        .await
        .map_err(|e| AgentError::db(database, &e))?;
    Ok(())
}

/// Settings under which values are rendered on the old host and parsed here: the two must agree.
pub const VALUE_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET standard_conforming_strings = on;";

impl Applier {
    /// Binds `client` (a session on the target database whose role has what [`ensure_origin`]
    /// checks) to `origin` and reads where it stopped.
    ///
    /// # Errors
    /// `FailedPrecondition` naming a missing grant; `Database` when the origin is busy (another
    /// session applies with it) or the server fails.
    pub async fn new(
        client: Client,
        database: &str,
        origin: &str,
        anchor: Anchor,
        direction: Direction,
    ) -> Result<Self, AgentError> {
        ensure_origin(&client, database, origin, direction).await?;
        client
            .batch_execute(&format!(
                "{VALUE_SETTINGS} SET session_replication_role = replica; \
                 SET default_transaction_read_only = off; \
                 SELECT pg_catalog.pg_replication_origin_session_setup({});",
                literal(origin)
            ))
            .await
            .map_err(|e| AgentError::db(database, &e))?;
        let progress = origin_progress(&client, database, origin).await?;
        Ok(Self {
            client: Arc::new(client),
            pending: FuturesOrdered::new(),
            database: database.to_string(),
            anchor,
            progress,
            targets: HashMap::new(),
            current: None,
            statements: HashMap::new(),
            batch: None,
            direction,
        })
    }

    /// The LSN applied so far (end of the last applied source commit).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// A statement's failure: integrity (23), data (22) and syntax/undefined-object (42) errors
    /// mean the two databases diverged — retrying cannot help, so they stop the follower; the
    /// rest (a broken connection, a busy origin after a restart) is retried.
    fn db_err(&self, e: &tokio_postgres::Error) -> AgentError {
        let fatal = e
            .as_db_error()
            .is_some_and(|d| matches!(&d.code().code()[..2], "23" | "22" | "42"));
        let err = AgentError::db(&self.database, e);
        if fatal {
            let d = self.direction;
            AgentError::FailedPrecondition(format!(
                "applying a change from the {} failed on the {} ({err}): the databases diverged; the follower stopped. {}",
                d.source(),
                d.target(),
                d.after_divergence()
            ))
        } else {
            err
        }
    }

    /// Applies one message; returns `Some` at a commit.
    ///
    /// # Errors
    /// `FailedPrecondition` naming the table when its columns differ between the hosts (a
    /// schema change on the old host) or a row to change is missing; `Database` when a
    /// statement fails. The open transaction is rolled back.
    pub async fn apply(&mut self, msg: Message) -> Result<Option<Committed>, AgentError> {
        let r = match self.apply_inner(msg).await {
            // A statement that failed after an earlier one in the pipeline failed shows the
            // aborted transaction, not the cause: the earlier answer is the one to report.
            Err(e) => Err(self.drain().await.err().unwrap_or(e)),
            ok => ok,
        };
        if r.is_err() {
            // Answers still in flight and rows not sent belong to the failed transaction; they
            // are dropped.
            self.pending = FuturesOrdered::new();
            self.batch = None;
            if self.current == Some(true) {
                let _ = self.client.batch_execute("ROLLBACK").await;
                self.current = None;
            }
        }
        r
    }

    /// Sends `sql` (a cached prepared statement) with `values` into the pipeline; once
    /// [`PIPELINE`] statements are in flight, waits for the oldest answer and checks it.
    async fn send<P: ToSql + Send + Sync + 'static>(
        &mut self,
        sql: String,
        values: Vec<P>,
        expect: Expect,
    ) -> Result<(), AgentError> {
        let stmt = self.statement(&sql).await?;
        let client = self.client.clone();
        self.pending.push_back(Box::pin(async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            (client.execute(&stmt, &params).await, expect)
        }));
        if self.pending.len() >= PIPELINE {
            self.check_next().await?;
        }
        self.poll_pipeline()
    }

    /// Sends a statement without parameters into the pipeline (`BEGIN`, `COMMIT`).
    fn send_simple(&mut self, sql: &'static str) -> Result<(), AgentError> {
        let client = self.client.clone();
        self.pending.push_back(Box::pin(async move {
            (client.batch_execute(sql).await.map(|()| 0), Expect::Any)
        }));
        self.poll_pipeline()
    }

    /// Polls the statements in flight once, without waiting: a tokio-postgres request leaves
    /// for the server only when its future is first polled, so without this a transaction's
    /// statements would all wait for its COMMIT (or for [`PIPELINE`] of them) before the first
    /// one went, and applying would start only once the whole transaction had arrived. Answers
    /// already there are checked, in order.
    fn poll_pipeline(&mut self) -> Result<(), AgentError> {
        while let Some(Some((r, expect))) = self.pending.next().now_or_never() {
            self.check(r, expect)?;
        }
        Ok(())
    }

    /// Waits for the oldest answer in flight and checks it.
    async fn check_next(&mut self) -> Result<(), AgentError> {
        let Some((r, expect)) = self.pending.next().await else {
            return Ok(());
        };
        self.check(r, expect)
    }

    /// Checks one answer against what it must show.
    fn check(
        &self,
        r: Result<u64, tokio_postgres::Error>,
        expect: Expect,
    ) -> Result<(), AgentError> {
        let n = r.map_err(|e| self.db_err(&e))?;
        let d = self.direction;
        match expect {
            Expect::Rows(want, verb, table) if n != want => {
                Err(AgentError::FailedPrecondition(format!(
                    "table {table}: {verb} from the {} matched {n} rows on the {} ({want} expected): the databases diverged; the follower stopped. {}",
                    d.source(),
                    d.target(),
                    d.after_divergence()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Waits for every answer in flight, checking each in order; the first failure is returned.
    async fn drain(&mut self) -> Result<(), AgentError> {
        while !self.pending.is_empty() {
            self.check_next().await?;
        }
        Ok(())
    }

    async fn apply_inner(&mut self, msg: Message) -> Result<Option<Committed>, AgentError> {
        match msg {
            Message::Begin { final_lsn, xid, .. } => {
                let apply = final_lsn >= self.progress && !self.anchor.visible(xid);
                if apply {
                    self.send_simple("BEGIN")?;
                }
                self.current = Some(apply);
                Ok(None)
            }
            Message::Commit {
                end_lsn, commit_ts, ..
            } => {
                let applied = self.current.take() == Some(true);
                if applied {
                    self.flush().await?;
                    // Micro-seconds since 2000-01-01 UTC, the origin's commit time; recorded in
                    // the transaction it commits with. Applied only once COMMIT answered.
                    self.send(
                        "SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, \
                         timestamptz '2000-01-01 00:00:00+00' + $2::text::bigint * interval '1 microsecond')"
                            .into(),
                        vec![Some(lsn_text(end_lsn)), Some(commit_ts.to_string())],
                        Expect::Any,
                    )
                    .await?;
                    // Every answer is checked BEFORE the COMMIT goes: an UPDATE or DELETE that
                    // matched the wrong number of rows is no error to the server, which would
                    // commit it — a divergence in the transaction's last statements would be
                    // applied (and its position recorded) though the follower stops.
                    self.drain().await?;
                    self.send_simple("COMMIT")?;
                    self.drain().await?;
                    self.progress = self.progress.max(end_lsn);
                }
                Ok(Some(Committed {
                    end_lsn,
                    commit_ts,
                    applied,
                }))
            }
            Message::Relation(rel) => {
                // Its lookup runs in the open transaction: the answers before it come first.
                self.flush().await?;
                self.drain().await?;
                let t = self.resolve(rel).await?;
                self.targets.insert(t.source.oid, t);
                Ok(None)
            }
            Message::Insert { rel, new } => {
                if self.current == Some(true) {
                    self.insert(rel, &new).await?;
                }
                Ok(None)
            }
            Message::Update {
                rel,
                old,
                old_is_full,
                new,
            } => {
                if self.current == Some(true) {
                    self.update(rel, old.as_deref(), old_is_full, &new).await?;
                }
                Ok(None)
            }
            Message::Delete {
                rel,
                old,
                old_is_full,
            } => {
                if self.current == Some(true) {
                    self.delete(rel, &old, old_is_full).await?;
                }
                Ok(None)
            }
            Message::Truncate { options, rels } => {
                if self.current == Some(true) {
                    let mut names = Vec::new();
                    for r in rels {
                        names.push(self.target(r)?.name.clone());
                    }
                    let mut sql = format!("TRUNCATE {}", names.join(", "));
                    if options & 2 != 0 {
                        sql.push_str(" RESTART IDENTITY");
                    }
                    if options & 1 != 0 {
                        sql.push_str(" CASCADE");
                    }
                    self.flush().await?;
                    self.drain().await?;
                    self.client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| self.db_err(&e))?;
                }
                Ok(None)
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Other(_) => Ok(None),
        }
    }

    /// Looks the table up on the new host and checks its columns are the source's.
    /// (`&mut self`: the applier is `Send` but not `Sync` — its pipeline holds futures.)
    async fn resolve(&mut self, rel: Relation) -> Result<Target, AgentError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
                 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
                &[&rel.schema, &rel.name],
            )
            .await
            .map_err(|e| self.db_err(&e))?;
        let here: HashMap<String, String> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let theirs: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        let same = here.len() == theirs.len() && theirs.iter().all(|c| here.contains_key(*c));
        if !same {
            let mut mine: Vec<&str> = here.keys().map(String::as_str).collect();
            mine.sort_unstable();
            let d = self.direction;
            return Err(AgentError::FailedPrecondition(format!(
                "table {rel} changed: the {} has columns ({}), the {} ({}) — a schema change while following; the follower stopped. {}",
                d.source(),
                theirs.join(", "),
                d.target(),
                mine.join(", "),
                d.after_schema_change()
            )));
        }
        let types = theirs.iter().map(|c| here[*c].clone()).collect();
        let key = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        Ok(Target {
            name: format!("{}.{}", ident(&rel.schema), ident(&rel.name)),
            source: rel,
            types,
            key,
        })
    }

    fn target(&self, rel: u32) -> Result<&Target, AgentError> {
        self.targets.get(&rel).ok_or_else(|| {
            AgentError::Internal(format!(
                "a change refers to relation {rel} before its Relation message"
            ))
        })
    }

    /// The prepared statement of `sql` (prepared once per session, at most 1,000 kept).
    async fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, AgentError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| self.db_err(&e))?;
        if self.statements.len() > 1000 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Adds a row to the batch of its shape: the batch is sent first when the row does not fit
    /// it (another table, kind or set of columns, or a key it holds already), and when full.
    async fn gather(
        &mut self,
        kind: BatchKind,
        rel: u32,
        cols: Vec<usize>,
        keys: usize,
        values: Vec<Option<String>>,
    ) -> Result<(), AgentError> {
        let key: Option<Vec<String>> =
            (kind != BatchKind::Insert).then(|| values[..keys].iter().flatten().cloned().collect());
        let fits = self.batch.as_ref().is_some_and(|b| {
            b.kind == kind
                && b.rel == rel
                && b.cols == cols
                && key.as_ref().is_none_or(|k| !b.seen.contains(k))
        });
        if !fits {
            self.flush().await?;
        }
        let b = self.batch.get_or_insert_with(|| Batch {
            kind,
            rel,
            keys,
            arrays: vec![Vec::new(); cols.len()],
            cols,
            seen: HashSet::new(),
            rows: 0,
        });
        for (a, v) in b.arrays.iter_mut().zip(values) {
            a.push(v);
        }
        if let Some(k) = key {
            b.seen.insert(k);
        }
        b.rows += 1;
        if b.rows >= BATCH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the gathered rows as one statement into the pipeline.
    async fn flush(&mut self) -> Result<(), AgentError> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let t = self.target(b.rel)?;
        let sql = b.sql(t);
        let label = t.source.to_string();
        let rows = b.rows as u64;
        let expect = match b.kind {
            BatchKind::Insert => Expect::Any,
            BatchKind::Update => Expect::Rows(rows, "UPDATE(s)", label),
            BatchKind::Delete => Expect::Rows(rows, "DELETE(s)", label),
        };
        self.send(sql, b.arrays, expect).await
    }

    /// The key's values of `row` as text, when each is there and not NULL (a batch finds rows
    /// by `=`).
    fn key_text(t: &Target, row: &[Value]) -> Option<Vec<Option<String>>> {
        if t.key.is_empty() {
            return None;
        }
        t.key
            .iter()
            .map(|k| match row.get(*k) {
                Some(Value::Text(s)) => Some(Some(s.clone())),
                _ => None,
            })
            .collect()
    }

    async fn insert(&mut self, rel: u32, new: &[Value]) -> Result<(), AgentError> {
        let t = self.target(rel)?;
        let width = t.source.columns.len().min(t.types.len());
        let mut cols = Vec::new();
        let mut values = Vec::new();
        for (i, v) in new.iter().enumerate().take(width) {
            let Some(text) = param(v) else { continue };
            values.push(text);
            cols.push(i);
        }
        // OVERRIDING SYSTEM VALUE (in the batch's statement): a `GENERATED ALWAYS AS IDENTITY`
        // column takes the old host's value (without it: 428C9); a no-op for other tables.
        self.gather(BatchKind::Insert, rel, cols, 0, values).await
    }

    /// `WHERE` over the identity: the key columns (or, for a full old row, every column).
    fn where_clause(
        t: &Target,
        row: &[Value],
        full: bool,
        values: &mut Vec<Option<String>>,
    ) -> Result<String, AgentError> {
        let mut conds = Vec::new();
        for (i, v) in row.iter().enumerate() {
            if !full && !t.key.contains(&i) {
                continue;
            }
            let (Some(c), Some(ty)) = (t.source.columns.get(i), t.types.get(i)) else {
                break;
            };
            match v {
                Value::Unchanged => continue,
                Value::Null => conds.push(format!("{} IS NULL", ident(&c.name))),
                Value::Text(s) => {
                    values.push(Some(s.clone()));
                    conds.push(format!(
                        "{} = ${}::text::{ty}",
                        ident(&c.name),
                        values.len()
                    ));
                }
            }
        }
        if conds.is_empty() {
            return Err(AgentError::FailedPrecondition(format!(
                "table {}: a change carries no replica identity to find its row by",
                t.source
            )));
        }
        Ok(conds.join(" AND "))
    }

    async fn update(
        &mut self,
        rel: u32,
        old: Option<&[Value]>,
        old_is_full: bool,
        new: &[Value],
    ) -> Result<(), AgentError> {
        // By a key that does not change (no old key came): gathered into a batch.
        if old.is_none() {
            let t = self.target(rel)?;
            if let Some(mut values) = Self::key_text(t, new) {
                let width = t.source.columns.len().min(t.types.len());
                let mut cols = t.key.clone();
                for (i, v) in new.iter().enumerate().take(width) {
                    if t.key.contains(&i) {
                        continue;
                    }
                    let Some(text) = param(v) else { continue };
                    values.push(text);
                    cols.push(i);
                }
                let keys = t.key.len();
                if cols.len() > keys {
                    return self
                        .gather(BatchKind::Update, rel, cols, keys, values)
                        .await;
                }
            }
        }
        // One by one, in order: what was gathered goes first.
        self.flush().await?;
        let t = self.target(rel)?;
        let mut values = Vec::new();
        let mut sets = Vec::new();
        for (i, v) in new.iter().enumerate() {
            let (Some(c), Some(ty)) = (t.source.columns.get(i), t.types.get(i)) else {
                break;
            };
            // A column that keeps its value is not set: the key when no old key came (it did not
            // change), any column equal in a full old row. A `GENERATED ALWAYS AS IDENTITY` key
            // may not be assigned at all (428C9).
            let unchanged = match old {
                None => t.key.contains(&i),
                Some(o) => {
                    matches!((o.get(i), v), (Some(Value::Text(a)), Value::Text(b)) if a == b)
                }
            };
            if unchanged {
                continue;
            }
            let Some(text) = param(v) else { continue };
            values.push(text);
            sets.push(format!(
                "{} = ${}::text::{ty}",
                ident(&c.name),
                values.len()
            ));
        }
        let cond = match old {
            Some(o) => Self::where_clause(t, o, old_is_full, &mut values)?,
            None => Self::where_clause(t, new, false, &mut values)?,
        };
        let cond = one_row(&t.name, cond, old.is_some() && old_is_full);
        let name = t.name.clone();
        let label = t.source.to_string();
        // Nothing to set: the row must still be there (a diverged row is noticed all the same).
        let sql = if sets.is_empty() {
            format!("SELECT 1 FROM {name} WHERE {cond}")
        } else {
            format!("UPDATE {name} SET {} WHERE {cond}", sets.join(", "))
        };
        self.send(sql, values, Expect::Rows(1, "an UPDATE", label))
            .await
    }

    async fn delete(&mut self, rel: u32, old: &[Value], full: bool) -> Result<(), AgentError> {
        if !full {
            let t = self.target(rel)?;
            if let Some(values) = Self::key_text(t, old) {
                let cols = t.key.clone();
                let keys = cols.len();
                return self
                    .gather(BatchKind::Delete, rel, cols, keys, values)
                    .await;
            }
        }
        self.flush().await?;
        let t = self.target(rel)?;
        let mut values = Vec::new();
        let cond = Self::where_clause(t, old, full, &mut values)?;
        let cond = one_row(&t.name, cond, full);
        let label = t.source.to_string();
        let sql = format!("DELETE FROM {} WHERE {cond}", t.name);
        self.send(sql, values, Expect::Rows(1, "a DELETE", label))
            .await
    }
}

/// A value as a statement's text parameter; `None` for an unchanged TOAST value, which is not
/// sent (its column keeps its value).
fn param(v: &Value) -> Option<Option<String>> {
    match v {
        Value::Unchanged => None,
        Value::Null => Some(None),
        Value::Text(s) => Some(Some(s.clone())),
    }
}

/// The condition for a change's row. A full old row (`REPLICA IDENTITY FULL`, e.g. a table
/// without a primary key) may match several equal rows, of which the old host changed one: the
/// change takes exactly one of them (`tableoid` too: a partitioned table's partitions share
/// `ctid`s).
fn one_row(table: &str, cond: String, full: bool) -> String {
    if full {
        format!("(tableoid, ctid) = (SELECT tableoid, ctid FROM {table} WHERE {cond} LIMIT 1)")
    } else {
        cond
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_visibility_follows_the_snapshot() {
        let a = Anchor::parse("100:105:101,103").expect("anchor");
        assert!(a.visible(99));
        assert!(!a.visible(101));
        assert!(a.visible(102));
        assert!(!a.visible(103));
        assert!(a.visible(104));
        assert!(!a.visible(105));
        assert!(!a.visible(200));
        let empty = Anchor::parse("7:7:").expect("anchor");
        assert!(empty.visible(6) && !empty.visible(7));
        // Epoch 1: xid 5 of epoch 1 is 2^32 + 5.
        let e =
            Anchor::parse(&format!("{}:{}:", (1u64 << 32) + 3, (1u64 << 32) + 9)).expect("anchor");
        assert!(e.visible(2) && !e.visible(9));
        assert!(Anchor::parse("x").is_err());
    }
}
