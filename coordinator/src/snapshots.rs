//! The snapshots an agent holds open on its databases (exported for a sync; each keeps a
//! read-only transaction open and holds back VACUUM), as `hostshift status` and `check` list
//! them. A snapshot outlives its sync only until its lease runs out (docs/sync.md).

use std::time::Duration;

use hostshift_proto::v1::{HeldSnapshot, OpenSnapshotsRequest};
use serde::Serialize;

use crate::client::{self, Agent, ConnectError, RpcError};
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

/// Why the snapshots an agent holds are unknown.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    /// The agent did not answer in time.
    #[error("no answer within {secs} s")]
    Timeout {
        /// The time waited.
        secs: u64,
    },
    /// The agent could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent refused or failed the call.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// The snapshots `agent` holds.
///
/// # Errors
/// [`SnapshotsError::Rpc`]: the agent's answer, explained.
pub async fn of(agent: &Agent) -> Result<Vec<OpenSnapshot>, SnapshotsError> {
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
        .map_err(|s| SnapshotsError::Rpc(RpcError(s)))
}

/// The snapshots the plan's `side` agent holds, connecting to it first.
///
/// # Errors
/// The agent cannot be reached or answer, explained.
pub async fn on(plan: &Plan, side: Side) -> Result<Vec<OpenSnapshot>, SnapshotsError> {
    let agent = tokio::time::timeout(ASK_TIMEOUT, client::connect(plan, side))
        .await
        .map_err(|_| SnapshotsError::Timeout {
            secs: ASK_TIMEOUT.as_secs(),
        })??;
    of(&agent).await
}
