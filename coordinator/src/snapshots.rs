//! The snapshots an agent holds open on its databases (exported for a sync; each keeps a
//! read-only transaction open and holds back VACUUM), as `hostshift status` and `check` list
//! them. A snapshot outlives its sync only until its lease runs out (docs/sync.md).

use std::time::Duration;

use hostshift_proto::v1::{HeldSnapshot, OpenSnapshotsRequest};
use serde::Serialize;

use crate::client::{self, Agent};
use crate::plan::{Plan, Side};

/// How long `status` waits for an agent before saying "unknown".
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// One open snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct OpenSnapshot {
    /// The snapshot id.
    pub snapshot: String,
    /// The configured database.
    pub database: String,
    /// Seconds since it was opened.
    pub age_secs: u64,
    /// Seconds until the agent closes it unless renewed.
    pub lease_left_secs: u64,
}

impl From<HeldSnapshot> for OpenSnapshot {
    fn from(h: HeldSnapshot) -> Self {
        Self {
            snapshot: h.snapshot,
            database: h.database,
            age_secs: h.age_secs,
            lease_left_secs: h.lease_left_secs,
        }
    }
}

impl std::fmt::Display for OpenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {} on database {}: open {} s, closed by the agent in {} s unless renewed",
            self.snapshot, self.database, self.age_secs, self.lease_left_secs
        )
    }
}

/// The snapshots `agent` holds.
///
/// # Errors
/// The agent's answer, explained.
pub async fn of(agent: &Agent) -> Result<Vec<OpenSnapshot>, String> {
    let mut req = tonic::Request::new(OpenSnapshotsRequest {});
    req.set_timeout(ASK_TIMEOUT);
    agent
        .database()
        .open_snapshots(req)
        .await
        .map(|r| {
            r.into_inner()
                .snapshots
                .into_iter()
                .map(Into::into)
                .collect()
        })
        .map_err(|s| client::explain_status(&s))
}

/// The snapshots the plan's `side` agent holds, connecting to it first.
///
/// # Errors
/// The agent cannot be reached or answer, explained.
pub async fn on(plan: &Plan, side: Side) -> Result<Vec<OpenSnapshot>, String> {
    let agent = tokio::time::timeout(ASK_TIMEOUT, client::connect(plan, side))
        .await
        .map_err(|_| format!("no answer within {} s", ASK_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    of(&agent).await
}
