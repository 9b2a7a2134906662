//! Exported snapshots held open for a sync: every read of the source imports one, so the schema,
//! every table and range and the large objects come from one instant. A snapshot holds a
//! read-only transaction open on the production database (it holds back `xmin`, so VACUUM cannot
//! remove dead rows while it lives), so each one is on a **lease**: the coordinator renews it
//! (`RenewSnapshot`) while it works, and a snapshot whose lease runs out — its coordinator was
//! killed, lost its network, or forgot — is closed by the agent within the lease (90 s by
//! default), never hours later. A hard deadline (`ttl`) caps even a renewed one.
//! `OpenSnapshots` lists what is held, for `hostshift status` and `check`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::postgres::ExportedSnapshot;

/// Longest a snapshot is held, renewed or not.
pub const MAX_TTL: Duration = Duration::from_secs(6 * 3600);
/// The lease when the caller names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(90);
/// Longest lease a caller may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(600);

/// A held snapshot, as listed.
#[derive(Clone, Debug)]
pub struct Held {
    /// The snapshot id.
    pub id: String,
    /// The configured database it was exported from.
    pub database: String,
    /// How long it has been open.
    pub age: Duration,
    /// How long until it is closed unless renewed.
    pub lease_left: Duration,
}

struct Entry {
    snap: ExportedSnapshot,
    database: String,
    opened: Instant,
    /// Closed at this instant unless renewed.
    lease_until: Instant,
    /// Closed at this instant whatever happens.
    hard_until: Instant,
    stop: CancellationToken,
}

type Store = Arc<Mutex<HashMap<String, Entry>>>;

/// The snapshots this agent holds, by id.
#[derive(Default)]
pub struct Snapshots {
    held: Store,
}

fn lease_of(secs: u64) -> Duration {
    if secs == 0 {
        DEFAULT_LEASE
    } else {
        Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_LEASE)
    }
}

fn poisoned() -> AgentError {
    AgentError::Internal("snapshot store poisoned".into())
}

impl Snapshots {
    /// Keeps `snap` (of configured database `database`) until [`Snapshots::close`], until no
    /// renewal came for `lease_secs` (0 = [`DEFAULT_LEASE`]), or until `ttl`.
    ///
    /// # Errors
    /// `Internal` when the store is poisoned.
    pub fn hold(
        &self,
        snap: ExportedSnapshot,
        database: &str,
        ttl: Duration,
        lease_secs: u64,
    ) -> Result<String, AgentError> {
        let id = snap.id().as_str().to_string();
        let now = Instant::now();
        let stop = CancellationToken::new();
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_TTL);
        self.held.lock().map_err(|_| poisoned())?.insert(
            id.clone(),
            Entry {
                snap,
                database: database.to_string(),
                opened: now,
                lease_until: now + lease_of(lease_secs),
                hard_until: now + ttl,
                stop: stop.clone(),
            },
        );
        let held = self.held.clone();
        let key = id.clone();
        tokio::spawn(async move {
            loop {
                let until = match held.lock() {
                    Ok(h) => match h.get(&key) {
                        Some(e) => e.lease_until.min(e.hard_until),
                        None => return,
                    },
                    Err(_) => return,
                };
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    () = stop.cancelled() => return,
                }
                // Renewed meanwhile? Then sleep again until the new deadline.
                let taken = held.lock().ok().and_then(|mut h| {
                    let due = h
                        .get(&key)
                        .is_some_and(|e| Instant::now() >= e.lease_until.min(e.hard_until));
                    if due { h.remove(&key) } else { None }
                });
                if let Some(e) = taken {
                    let why = if Instant::now() >= e.hard_until {
                        "its deadline passed"
                    } else {
                        "its lease ran out (the coordinator stopped renewing it)"
                    };
                    tracing::warn!(snapshot = %key, database = %e.database, "closing the snapshot: {why}");
                    let _ = e.snap.release().await;
                    return;
                }
            }
        });
        Ok(id)
    }

    /// Extends a snapshot's lease to `lease_secs` from now (0 = [`DEFAULT_LEASE`]); false when
    /// it is not held (closed, or its lease already ran out).
    pub fn renew(&self, id: &str, lease_secs: u64) -> bool {
        let Ok(mut h) = self.held.lock() else {
            return false;
        };
        match h.get_mut(id) {
            Some(e) => {
                e.lease_until = Instant::now() + lease_of(lease_secs);
                true
            }
            None => false,
        }
    }

    /// The snapshots held now, oldest first.
    pub fn list(&self) -> Vec<Held> {
        let now = Instant::now();
        let mut v: Vec<Held> = self
            .held
            .lock()
            .map(|h| {
                h.iter()
                    .map(|(id, e)| Held {
                        id: id.clone(),
                        database: e.database.clone(),
                        age: now.saturating_duration_since(e.opened),
                        lease_left: e
                            .lease_until
                            .min(e.hard_until)
                            .saturating_duration_since(now),
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|b| std::cmp::Reverse(b.age));
        v
    }

    /// Releases a snapshot (unknown ids are fine: it expired or was closed).
    pub async fn close(&self, id: &str) {
        let taken = self.held.lock().ok().and_then(|mut h| h.remove(id));
        if let Some(e) = taken {
            e.stop.cancel();
            let _ = e.snap.release().await;
        }
    }
}
