//! Exported snapshots held open for a sync: every read of the source imports one, so the schema,
//! every table and range and the large objects come from one instant. A snapshot holds a
//! read-only transaction open on the production database (it delays vacuum, like `pg_dump`
//! does), so each one has a deadline after which the agent closes it even if nobody asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::postgres::ExportedSnapshot;

/// Longest a snapshot is held.
pub const MAX_TTL: Duration = Duration::from_secs(6 * 3600);

/// The snapshots this agent holds, by id.
#[derive(Default)]
pub struct Snapshots {
    held: Arc<Mutex<HashMap<String, (ExportedSnapshot, CancellationToken)>>>,
}

impl Snapshots {
    /// Keeps `snap` until [`Snapshots::close`] or `ttl`.
    pub fn hold(&self, snap: ExportedSnapshot, ttl: Duration) -> Result<String, AgentError> {
        let id = snap.id().as_str().to_string();
        let expire = CancellationToken::new();
        self.held
            .lock()
            .map_err(|_| AgentError::Internal("snapshot store poisoned".into()))?
            .insert(id.clone(), (snap, expire.clone()));
        let held = self.held.clone();
        let key = id.clone();
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_TTL);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ttl) => {
                    let taken = held.lock().ok().and_then(|mut h| h.remove(&key));
                    if let Some((snap, _)) = taken {
                        tracing::warn!(snapshot = %key, "snapshot deadline passed; closing it");
                        let _ = snap.release().await;
                    }
                }
                () = expire.cancelled() => {}
            }
        });
        Ok(id)
    }

    /// Releases a snapshot (unknown ids are fine: it expired or was closed).
    pub async fn close(&self, id: &str) {
        let taken = self.held.lock().ok().and_then(|mut h| h.remove(id));
        if let Some((snap, expire)) = taken {
            expire.cancel();
            let _ = snap.release().await;
        }
    }
}
