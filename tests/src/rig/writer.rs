//! The app's writes during a cutover: a background task that keeps writing to the OLD database
//! the way the app does, and remembers exactly which writes PostgreSQL acknowledged.
//!
//! Each round is one transaction through tokio-postgres over TCP (as the app connects): it
//! inserts a row into `public.assessments` (its `answer` names the writer and the round) and
//! updates one seeded `public.users` row, so a delta sees both appended and changed key ranges.
//! The id of the insert is recorded only once `COMMIT` has been acknowledged. A refused write
//! (the freeze's read-only database: SQLSTATE 25006, or a connection refused because the freeze
//! took `CONNECT` away: 42501), an ended session (the freeze ends the database's sessions) or a
//! failed connect is counted, never fatal: the writer reconnects and goes on, as a pooled app
//! would.
//!
//! The no-data-loss proof of a cutover: every id in [`WriterReport::acked`] is present in the
//! NEW database afterwards. A write that committed but whose acknowledgement was lost is not in
//! the list, which only makes the proof stricter about what it claims.
//!
//! With [`WriterOptions::override_read_only`] the writer plays a misbehaving client instead: each
//! new session first runs `SET default_transaction_read_only = off`, so it keeps writing through a
//! read-only freeze (the cutover's proof must catch that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::world::PgInfo;

/// Pause after an acknowledged round: about 100 writes a second, enough to hit every step of a
/// cutover without taking a core of this 2-core machine.
const PACE: Duration = Duration::from_millis(10);
/// Pause after a failed round or connect, so a frozen database is not hammered.
const BACKOFF: Duration = Duration::from_millis(25);
/// Limit for one connect or one round: a stuck round is counted as failed and the session
/// dropped, so the writer never hangs a test.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop()` waits for the task to finish its current round.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Users in the seeded template (`Scale::Tiny`): the updated rows cycle through them.
const SEEDED_USERS: i64 = 200;

/// Who the writer is and how it behaves.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// libpq key=value connection string.
    pub conninfo: String,
    /// Written into every row (`answer->>'writer'`), to tell writers apart.
    pub label: String,
    /// Run `SET default_transaction_read_only = off` on every new session (a client that
    /// ignores the freeze).
    pub override_read_only: bool,
}

impl WriterOptions {
    /// Writes to `db` on the cluster `pg` over TCP, as `role` (the app's role is `app`).
    pub fn new(pg: &PgInfo, db: &str, role: &str, label: &str) -> WriterOptions {
        WriterOptions {
            conninfo: format!(
                "host={} port={} user={role} dbname={db} application_name=hostshift-test-{label} \
                 connect_timeout=5",
                pg.listen, pg.port
            ),
            label: label.to_string(),
            override_read_only: false,
        }
    }
}

/// What a writer saw, from its start until `stop()`.
#[derive(Clone, Debug, Default)]
pub struct WriterReport {
    /// Ids of the `assessments` rows whose transaction's COMMIT was acknowledged, in order.
    pub acked: Vec<i64>,
    /// Rounds refused by the freeze: the database was read-only (SQLSTATE 25006) or the
    /// connection was refused for want of `CONNECT` (42501).
    pub refused_read_only: u64,
    /// Sessions that ended under the writer (terminated, closed) or failed to connect.
    pub sessions_lost: u64,
    /// Rounds that failed for any other reason.
    pub other_errors: u64,
    /// The last error of any kind, for assertion messages.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<i64>>,
    refused_read_only: AtomicU64,
    sessions_lost: AtomicU64,
    other_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn note(&self, counter: &AtomicU64, err: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(err);
        }
    }

    fn report(&self) -> WriterReport {
        WriterReport {
            acked: self.acked.lock().map(|v| v.clone()).unwrap_or_default(),
            refused_read_only: self.refused_read_only.load(Ordering::SeqCst),
            sessions_lost: self.sessions_lost.load(Ordering::SeqCst),
            other_errors: self.other_errors.load(Ordering::SeqCst),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}

/// A running writer; `stop()` ends it and returns what it saw. Dropping it ends it too.
pub struct Writer {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing on the caller's runtime.
    pub fn start(options: WriterOptions) -> Writer {
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(options, shared.clone(), cancel.clone()));
        Writer {
            shared,
            cancel,
            task: Some(task),
        }
    }

    /// What it saw so far (it keeps running).
    pub fn snapshot(&self) -> WriterReport {
        self.shared.report()
    }

    /// Waits until at least `n` writes were acknowledged in total; panics after `timeout` with
    /// what the writer saw.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{n} acknowledged writes"), |r| {
            r.acked.len() >= n
        })
        .await;
    }

    /// Waits until the database refused at least one write as read-only (25006).
    pub async fn wait_refused(&self, timeout: Duration) {
        self.wait_until(timeout, "a write refused as read-only (25006)", |r| {
            r.refused_read_only > 0
        })
        .await;
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&WriterReport) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.shared.report();
            if done(&r) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer saw no {what} within {timeout:?}: {} acknowledged, {} refused, {} \
                 sessions lost, {} other errors; last error: {:?}",
                r.acked.len(),
                r.refused_read_only,
                r.sessions_lost,
                r.other_errors,
                r.last_error
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the writer after its current round and returns what it saw.
    pub async fn stop(mut self) -> WriterReport {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(STOP_TIMEOUT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the writer task failed: {e}"),
                Err(_) => panic!("the writer did not stop within {STOP_TIMEOUT:?}"),
            }
        }
        self.shared.report()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A session and the task driving its connection.
struct Session {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Why a connect failed, and whether the freeze refused it (42501: no `CONNECT`).
struct ConnectError {
    message: String,
    refused_by_freeze: bool,
}

impl From<String> for ConnectError {
    fn from(message: String) -> Self {
        Self {
            message,
            refused_by_freeze: false,
        }
    }
}

async fn connect(o: &WriterOptions) -> Result<Session, ConnectError> {
    let (client, connection) = tokio::time::timeout(
        OP_TIMEOUT,
        tokio_postgres::connect(&o.conninfo, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| format!("connect: no answer within {OP_TIMEOUT:?}"))?
    .map_err(|e| ConnectError {
        message: format!("connect: {e}"),
        refused_by_freeze: e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
    })?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let session = Session { client, conn };
    if o.override_read_only {
        session
            .client
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| format!("SET default_transaction_read_only = off: {e}"))?;
    }
    Ok(session)
}

/// One transaction: insert a row, update a seeded user, commit. The id once COMMIT returned.
async fn round(
    client: &mut tokio_postgres::Client,
    label: &str,
    n: i64,
) -> Result<i64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO public.assessments (user_id, question_id, answer, score, is_correct) \
             VALUES (1 + $2::bigint % 200, 1, jsonb_build_object('writer', $1::text, 'n', $2::bigint), 1, true) \
             RETURNING id",
            &[&label, &n],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE public.users SET display_name = $1 WHERE id = $2",
        &[&format!("written by {label} #{n}"), &(1 + n % SEEDED_USERS)],
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

async fn run(o: WriterOptions, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut session: Option<Session> = None;
    let mut n: i64 = 0;
    while !cancel.is_cancelled() {
        let pause = match session.as_mut() {
            None => match connect(&o).await {
                Ok(s) => {
                    session = Some(s);
                    Duration::ZERO
                }
                Err(e) if e.refused_by_freeze => {
                    shared.note(&shared.refused_read_only, e.message);
                    BACKOFF
                }
                Err(e) => {
                    shared.note(&shared.sessions_lost, e.message);
                    BACKOFF
                }
            },
            Some(s) => {
                n += 1;
                let result =
                    tokio::time::timeout(OP_TIMEOUT, round(&mut s.client, &o.label, n)).await;
                match result {
                    Ok(Ok(id)) => {
                        if let Ok(mut acked) = shared.acked.lock() {
                            acked.push(id);
                        }
                        PACE
                    }
                    Ok(Err(e)) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                        shared.note(&shared.refused_read_only, e.to_string());
                        BACKOFF
                    }
                    Ok(Err(e)) if s.client.is_closed() || is_session_end(&e) => {
                        shared.note(&shared.sessions_lost, e.to_string());
                        session = None;
                        BACKOFF
                    }
                    Ok(Err(e)) => {
                        shared.note(&shared.other_errors, e.to_string());
                        BACKOFF
                    }
                    Err(_) => {
                        shared.note(
                            &shared.other_errors,
                            format!("a round took longer than {OP_TIMEOUT:?}"),
                        );
                        session = None;
                        BACKOFF
                    }
                }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The server ended the session (`pg_terminate_backend`: 57P01; shutdown: 57P02/57P03).
fn is_session_end(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || matches!(
            e.code(),
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        )
}
