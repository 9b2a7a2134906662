//! Taking a backup on a host: asks the host's agent to back up the plan's resources and follows
//! its progress stream to the result. The agent does the work (pg_dump, tar, uploads) on its own
//! host; `hostshift backup` and the rehearsal both call [`take`].

use std::time::Duration;

use hostshift_proto::v1::{
    BackupProgress, CreateBackupRequest, CreateBackupResult, backup_event::Event,
};

use crate::client::{self, Agent};
use crate::plan::{Plan, Side};

/// Deadline of a backup (a large database dump).
pub const CREATE_DEADLINE: Duration = Duration::from_secs(12 * 3600);

/// Why a backup did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The agent refused or failed the backup (its status keeps the gRPC code).
    #[error("backup on the {side} host: {}", client::explain_status(.status))]
    Rpc {
        /// Which host.
        side: Side,
        /// The agent's answer.
        status: tonic::Status,
    },
    /// The progress stream ended before the result.
    #[error("backup on {side}: the stream ended without a result")]
    NoResult {
        /// Which host.
        side: Side,
    },
}

impl BackupError {
    /// Whether the agent refused the request itself (nothing was done: a usage error).
    pub fn is_refusal(&self) -> bool {
        matches!(self, BackupError::Rpc { status, .. } if status.code() == tonic::Code::InvalidArgument)
    }
}

/// Makes a backup of the plan's resources (or, with `all`, of everything the agent declares) on
/// `agent`'s host; `progress` sees each progress event.
///
/// # Errors
/// [`BackupError`]: the agent's refusal or failure, or a stream that ended without a result.
pub async fn take(
    agent: &Agent,
    plan: &Plan,
    all: bool,
    progress: &dyn Fn(&BackupProgress),
) -> Result<CreateBackupResult, BackupError> {
    let side = agent.side;
    let rpc = |status: tonic::Status| BackupError::Rpc { side, status };
    let req = CreateBackupRequest {
        databases: plan.databases.iter().map(|d| d.name.clone()).collect(),
        storage: plan.storage.iter().map(|s| s.name.clone()).collect(),
        files: plan.files.iter().map(|f| f.name.clone()).collect(),
        everything: all,
    };
    let mut req = tonic::Request::new(req);
    req.set_timeout(CREATE_DEADLINE);
    let mut stream = agent.backup().create(req).await.map_err(rpc)?.into_inner();
    while let Some(ev) = stream.message().await.map_err(rpc)? {
        match ev.event {
            Some(Event::Progress(p)) => progress(&p),
            Some(Event::Done(d)) => return Ok(d),
            None => {}
        }
    }
    Err(BackupError::NoResult { side })
}
