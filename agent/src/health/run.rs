//! Runs a batch of check definitions concurrently on this host.

use std::time::Duration;

use futures::future::join_all;
use hostshift_shared::health::{self, CheckSpec, HealthResult};
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;

/// Most checks one request may carry.
pub const MAX_CHECKS: usize = 64;
/// Longest a batch may run (its slowest check's every attempt timing out, pauses included).
pub const MAX_BATCH: Duration = Duration::from_secs(15 * 60);

/// Validates every definition first (so a bad one refuses the whole request before anything is
/// fetched), then runs them all at once.
///
/// # Errors
/// `InvalidArgument` naming the first bad check (e.g. a `file://` URL), too many checks, or a
/// batch that could run longer than [`MAX_BATCH`]; `Cancelled` when the agent shuts down.
pub async fn run(
    specs: Vec<CheckSpec>,
    cancel: &CancellationToken,
) -> Result<Vec<HealthResult>, AgentError> {
    if specs.len() > MAX_CHECKS {
        return Err(AgentError::InvalidArgument(format!(
            "{} checks in one request; at most {MAX_CHECKS}",
            specs.len()
        )));
    }
    for s in &specs {
        s.validate()
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        if s.worst_case() > MAX_BATCH {
            return Err(AgentError::InvalidArgument(format!(
                "check {} could run for {} s (timeout × retries); at most {} s",
                s.name,
                s.worst_case().as_secs(),
                MAX_BATCH.as_secs()
            )));
        }
    }
    tokio::select! {
        results = join_all(specs.iter().map(health::run)) => {
            for r in &results {
                tracing::info!(check = %r.name, ok = r.ok, status = ?r.status, attempts = r.attempts, elapsed_ms = r.elapsed_ms, "health check");
            }
            Ok(results)
        }
        () = cancel.cancelled() => Err(AgentError::Cancelled),
    }
}
