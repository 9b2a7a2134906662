//! Sessions kept for the next table read on the source: a first copy reads a big table in many
//! pieces, and a fresh session per piece cost the old server far more than its reads.
//!
//! Why: a new backend maps the server's shared buffers page by page as it first touches them.
//! A piece read by heap pages (a TID range scan) goes through the shared buffers without the
//! small ring a whole-table scan uses, so a fresh session pays one page fault per 4 KiB of every
//! buffer it touches: on the benchmark's host (`shared_buffers = 64MB`) 21 pieces of
//! `pgbench_accounts` in 21 sessions cost the old server 1.66–1.68 CPU-seconds, the same 21
//! pieces in one session 1.02–1.13 (one `COPY` of the whole table: 0.97). The gap grows with
//! `shared_buffers`.
//!
//! A session goes back to the pool only when its read ended as it should (its read-only
//! transaction committed, see [`Conn::is_idle`]): one whose `COPY` was abandoned is closed, as
//! before. At most [`MAX_IDLE`] wait per database, each at most [`IDLE_LIMIT`]; after that they
//! are closed, so a finished sync leaves no session behind on the old host for long. A session
//! the server ended meanwhile is not handed out.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::error::PgSyncError;
use crate::config::DatabaseConfig;

/// Idle sessions kept per database: the two pieces a sync reads at once, and two more for a
/// second sync's overlap.
pub const MAX_IDLE: usize = 4;

/// How long an idle session is kept.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Idle source sessions by configured database name.
#[derive(Default)]
pub struct ReadPool {
    idle: Mutex<HashMap<String, Vec<(Conn, Instant)>>>,
    /// Shorter than [`IDLE_LIMIT`] in tests.
    limit: Option<Duration>,
}

impl ReadPool {
    /// A pool whose sessions are kept `limit` instead of [`IDLE_LIMIT`] (tests).
    pub fn with_limit(limit: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            limit: Some(limit),
        }
    }

    fn limit(&self) -> Duration {
        self.limit.unwrap_or(IDLE_LIMIT)
    }

    /// The idle lists. A panic while they were held can at worst have dropped some idle
    /// sessions (which closes them), so a poisoned lock is taken as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(Conn, Instant)>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle session of `db`, or a new one.
    ///
    /// # Errors
    /// As [`Conn::connect`].
    pub async fn take(self: &Arc<Self>, db: &DatabaseConfig) -> Result<Pooled, PgSyncError> {
        let kept = self.pop(&db.name);
        let conn = match kept {
            Some(c) => c,
            None => Conn::connect(db).await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: Arc::clone(self),
        })
    }

    fn pop(&self, name: &str) -> Option<Conn> {
        let limit = self.limit();
        let mut idle = self.lock();
        let list = idle.get_mut(name)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < limit && !conn.client().is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Sessions of `name` waiting now (tests, logs).
    pub fn idle_count(&self, name: &str) -> usize {
        self.lock().get(name).map_or(0, Vec::len)
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        let name = conn.database().to_string();
        {
            let mut idle = self.lock();
            let list = idle.entry(name).or_default();
            if list.len() >= MAX_IDLE {
                return;
            }
            list.push((conn, Instant::now()));
        }
        // Closes it once it has waited its limit, unless taken before.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = Arc::clone(self);
            let wait = self.limit() + Duration::from_millis(100);
            rt.spawn(async move {
                tokio::time::sleep(wait).await;
                pool.reap();
            });
        }
    }

    /// Closes the sessions that waited longer than the limit.
    fn reap(&self) {
        let limit = self.limit();
        let old: Vec<Conn> = {
            let mut idle = self.lock();
            let mut old = Vec::new();
            for list in idle.values_mut() {
                let (keep, expired): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| since.elapsed() < limit);
                *list = keep;
                old.extend(expired.into_iter().map(|(c, _)| c));
            }
            old
        };
        // Dropped outside the lock: each drop ends its session (`Terminate`).
        drop(old);
    }
}

/// A session taken from a [`ReadPool`]: back to it when dropped after a read that ended as it
/// should, closed otherwise.
pub struct Pooled {
    conn: Option<Conn>,
    pool: Arc<ReadPool>,
}

impl Borrow<Conn> for Pooled {
    fn borrow(&self) -> &Conn {
        // Set from creation until `drop`.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled session is there until dropped"))
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.is_idle()
            && !conn.client().is_closed()
        {
            self.pool.put(conn);
        }
    }
}
