//! The new host's follower: a background task per database that reads the old host's changes
//! (`Follow.Changes`, with the agent's own certificate and the follow grant) and applies them
//! ([`super::apply`]). Its config is persisted ([`super::store::TargetRecord`]) so that it
//! resumes by itself when the agent starts again; where it stopped is in the database itself
//! (the replication origin), so a kill -9 at any instant loses nothing and applies nothing twice.
//! In the rollback window the same task runs on the old host and reads the new host's changes
//! (the record's [`super::Direction`]; its errors name the hosts that way round).
//!
//! A connection failure is retried (with a growing pause, at most [`MAX_RETRY_PAUSE`]); a schema
//! change or a divergence stops the follower with the error, which `status` shows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostshift_proto::v1::ChangesRequest;
use hostshift_proto::v1::follow_client::FollowClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apply::{Anchor, Applier};
use super::pgoutput;
use super::store::{self, TargetRecord};
use crate::Ctx;
use crate::error::AgentError;

/// Rows asked for per peek.
pub const BATCH_CHANGES: u32 = 2_000;
/// Pause after a peek that found nothing new (cut short by [`Followers::wake`]).
pub const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// [`IDLE_PAUSE`]; in debug builds `HOSTSHIFT_TEST_IDLE_PAUSE_MS` sets it (a test makes it
/// longer than any catch-up may wait, to show that the catch-up wakes the follower).
fn idle_pause() -> Duration {
    if cfg!(debug_assertions)
        && let Some(ms) = std::env::var("HOSTSHIFT_TEST_IDLE_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    IDLE_PAUSE
}

/// Deadline for the old agent's answer to a `Changes` call (not for its rows), reconnect
/// included.
pub const CALL_TIMEOUT: Duration = crate::transfer::pull::HANDSHAKE_TIMEOUT;
/// Longest pause between retries after a connection failure.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A follower's live state.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// `following`, `stopped`, `failed`.
    pub state: String,
    /// Origin progress (end LSN of the last applied source commit).
    pub applied_lsn: u64,
    /// Nothing committed on the old host before this LSN is still pending.
    pub reached_lsn: u64,
    /// When the last peek that went to the end of the WAL started (unix ms): the follower was
    /// current then.
    pub reached_unix_ms: i64,
    /// Source commit time of the last applied transaction (unix ms; 0: none).
    pub last_commit_unix_ms: i64,
    /// The last error (a retried one while following; the cause when failed).
    pub error: String,
    /// Transactions applied since the task started.
    pub transactions: u64,
}

struct Running {
    stop: CancellationToken,
    live: Arc<Mutex<Live>>,
    done: tokio::sync::watch::Receiver<bool>,
    /// Ends the pause after an empty peek (a permit kept when the follower is peeking: its
    /// next pause then ends at once).
    wake: Arc<Notify>,
}

/// The followers this agent runs, by (new host's) database.
#[derive(Default)]
pub struct Followers {
    running: Mutex<HashMap<String, Running>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// PostgreSQL's epoch (2000-01-01) in unix milliseconds.
const PG_EPOCH_MS: i64 = 946_684_800_000;

fn poisoned() -> AgentError {
    AgentError::Internal("follower registry poisoned".into())
}

impl Followers {
    /// The live state of `database`'s follower, if it runs (or ran) in this process.
    pub fn live(&self, database: &str) -> Option<Live> {
        let g = self.running.lock().ok()?;
        let r = g.get(database)?;
        r.live.lock().ok().map(|l| l.clone())
    }

    /// Makes `database`'s follower peek now if it pauses after an empty peek, or right after
    /// the peek under way (nothing when none runs). The cutover's catch-up and the rollback
    /// call it after their barrier: the follower then reaches the freeze position one peek
    /// later, not a pause ([`IDLE_PAUSE`]) and a peek.
    pub fn wake(&self, database: &str) {
        if let Ok(g) = self.running.lock()
            && let Some(r) = g.get(database)
        {
            r.wake.notify_one();
        }
    }

    /// Stops `database`'s follower and waits until its task ended (its open transaction rolled
    /// back, its origin session released).
    pub async fn stop(&self, database: &str) {
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|mut g| g.remove(database));
        if let Some(r) = running {
            r.stop.cancel();
            let mut done = r.done;
            let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
        }
    }
}

/// Starts the follower of `record.database` (stopping one that runs).
///
/// # Errors
/// `Internal` when the registry is poisoned.
pub async fn spawn(ctx: &Arc<Ctx>, record: TargetRecord) -> Result<(), AgentError> {
    ctx.followers.stop(&record.database).await;
    let stop = ctx.shutdown.child_token();
    let live = Arc::new(Mutex::new(Live {
        state: "following".into(),
        ..Live::default()
    }));
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let wake = Arc::new(Notify::new());
    ctx.followers
        .running
        .lock()
        .map_err(|_| poisoned())?
        .insert(
            record.database.clone(),
            Running {
                stop: stop.clone(),
                live: live.clone(),
                done,
                wake: wake.clone(),
            },
        );
    let ctx2 = ctx.clone();
    ctx.tasks.spawn(async move {
        let database = record.database.clone();
        let outcome = run(&ctx2, &record, &live, &stop, &wake).await;
        if let Err(e) = outcome {
            tracing::error!(database = %database, error = %e, "follower stopped");
            if let Ok(mut l) = live.lock() {
                l.state = "failed".into();
                l.error = e.to_string();
            }
            let mut r = record;
            r.state = "failed".into();
            r.error = e.to_string();
            if let Err(e) = store::save_target(&ctx2, &r) {
                tracing::warn!(error = %e, "could not record the follower's failure");
            }
        } else if let Ok(mut l) = live.lock() {
            l.state = "stopped".into();
        }
        let _ = done_tx.send(true);
    });
    Ok(())
}

/// Resumes every follower whose record says `following` (at agent start-up).
pub fn resume(ctx: &Arc<Ctx>) {
    for r in store::targets(ctx) {
        if r.state == "following" {
            tracing::info!(database = %r.database, "resuming follower");
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = spawn(&ctx, r).await {
                    tracing::error!(error = %e, "could not resume a follower");
                }
            });
        }
    }
}

/// Failures that retrying cannot fix stop the follower.
fn fatal(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::FailedPrecondition(_)
            | AgentError::PermissionDenied(_)
            | AgentError::InvalidArgument(_)
            | AgentError::NotDeclared { .. }
    )
}

async fn run(
    ctx: &Arc<Ctx>,
    record: &TargetRecord,
    live: &Arc<Mutex<Live>>,
    stop: &CancellationToken,
    wake: &Notify,
) -> Result<(), AgentError> {
    let mut pause = Duration::from_millis(200);
    loop {
        let began = std::time::Instant::now();
        let attempt = tokio::select! {
            r = follow_once(ctx, record, live, stop, wake) => r,
            () = stop.cancelled() => return Ok(()),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(database = %record.database, error = %e, "follower retrying");
                // An attempt that ran a while was a working connection: start the pauses over.
                if began.elapsed() > Duration::from_secs(30) {
                    pause = Duration::from_millis(200);
                }
                if let Ok(mut l) = live.lock() {
                    l.error = e.to_string();
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return Ok(()),
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }
}

fn set(live: &Arc<Mutex<Live>>, f: impl FnOnce(&mut Live)) {
    if let Ok(mut l) = live.lock() {
        f(&mut l);
    }
}

/// Connects both ends and applies until stopped or an error.
async fn follow_once(
    ctx: &Arc<Ctx>,
    record: &TargetRecord,
    live: &Arc<Mutex<Live>>,
    stop: &CancellationToken,
    wake: &Notify,
) -> Result<(), AgentError> {
    let db = ctx.database(&record.database)?;
    let client = crate::postgres::connect::connect(db).await?;
    let anchor = Anchor::parse(&record.pg_snapshot)?;
    let direction = record.direction;
    let mut applier = Applier::new(
        client,
        &record.database,
        &super::origin_name(&record.id),
        anchor,
        direction,
    )
    .await?;
    set(live, |l| {
        l.applied_lsn = applier.progress();
        l.reached_lsn = l.reached_lsn.max(applier.progress());
    });
    tracing::debug!(database = %record.database, progress = applier.progress(), "follower: applier ready, connecting to the source host");
    let channel =
        crate::transfer::pull::connect_peer(ctx, &record.source_address, &record.source_tls_name)
            .await?;
    let mut source = FollowClient::new(channel)
        .max_decoding_message_size(hostshift_shared::model::MAX_CHANGES_MESSAGE);
    // Confirmed = every commit up to here is applied or was already on this host.
    let mut confirmed = applier.progress();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        tracing::debug!(database = %record.database, confirmed, "follower: peek");
        let started = std::time::Instant::now();
        let called_unix_ms = now_ms();
        let mut first_row_ms = None;
        // The answer's headers come at once (the rows follow); the deadline covers the
        // channel's own reconnect after a dropped connection, whose TLS handshake nothing else
        // bounds (a peer that accepts and then stays silent would hang it for good).
        let call = source.changes(ChangesRequest {
            database: record.source_database.clone(),
            token: record.token.clone(),
            confirm_lsn: confirmed,
            max_changes: BATCH_CHANGES,
        });
        let mut stream = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| {
                AgentError::Unavailable(format!(
                    "the {}'s agent did not answer a Changes call within {CALL_TIMEOUT:?}",
                    direction.source()
                ))
            })?
            .map_err(|s| super::from_peer(&s, direction))?
            .into_inner();
        let mut wal_before = 0;
        let mut rows = 0u64;
        let mut open = false;
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|s| super::from_peer(&s, direction))?
        {
            if batch.rows.is_empty() {
                wal_before = batch.wal_lsn;
                continue;
            }
            first_row_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
            for row in batch.rows {
                rows += 1;
                let msg = pgoutput::parse(&row.data).map_err(|e| {
                    AgentError::DataLoss(format!("from the {}: {e}", direction.source()))
                })?;
                open = !matches!(msg, pgoutput::Message::Commit { .. })
                    && (open || matches!(msg, pgoutput::Message::Begin { .. }));
                if let Some(c) = applier.apply(msg).await? {
                    confirmed = confirmed.max(c.end_lsn);
                    set(live, |l| {
                        l.applied_lsn = applier.progress();
                        l.reached_lsn = l.reached_lsn.max(c.end_lsn);
                        if c.applied {
                            l.transactions += 1;
                            l.last_commit_unix_ms = PG_EPOCH_MS + c.commit_ts / 1000;
                        }
                        l.error.clear();
                    });
                }
            }
        }
        tracing::debug!(
            database = %record.database,
            rows,
            first_row_ms,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "follower: peek ended"
        );
        if open {
            return Err(AgentError::Unavailable(format!(
                "the {}'s change stream ended inside a transaction",
                direction.source()
            )));
        }
        if wal_before > 0 && rows < u64::from(BATCH_CHANGES) {
            // The peek went to the end of the WAL flushed before it (it stops early only after
            // BATCH_CHANGES rows), and every row of it is applied: nothing committed before
            // `wal_before` is left, and the follower was current when that position was read.
            // (Waiting for an empty peek instead made a busy app's follower look a peek cycle
            // behind, and the cutover's catch-up wait one peek longer.)
            set(live, |l| {
                if l.reached_lsn < wal_before {
                    l.reached_lsn = wal_before;
                }
                l.reached_unix_ms = l.reached_unix_ms.max(called_unix_ms);
                l.error.clear();
            });
        }
        if rows == 0 {
            tokio::select! {
                () = tokio::time::sleep(idle_pause()) => {}
                () = wake.notified() => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    }
}
