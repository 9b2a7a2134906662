//! The switch's only retry loop, and its polling loop.
//!
//! Each AWS call is retried [`RETRIES`] times with exponential backoff when it fails with
//! [`SwitchError::Unavailable`]; every other error returns at once (a refusal or a missing
//! resource does not fix itself). The SDK's own retries are disabled on the clients this crate
//! builds, so a throttled call costs at most `1 + RETRIES` requests, not their product.
//!
//! Every mutation the switch makes is idempotent (re-associating an address to the same instance,
//! an `UPSERT` of the same value, registering a registered target), so retrying a call whose
//! response was lost is safe.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::SwitchError;

/// Retries after the first attempt, for transient errors only.
pub(crate) const RETRIES: u32 = 3;
/// Wait before the first retry; doubles for each further one (0.25 s, 0.5 s, 1 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// First wait between two polls of a change's state; doubles up to [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait between two polls.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs `call` until it succeeds, fails with a non-transient error, or has been retried
/// [`RETRIES`] times.
pub(crate) async fn with_retry<T, F, Fut>(operation: &str, call: F) -> Result<T, SwitchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SwitchError>>,
{
    retry_with(operation, RETRIES, FIRST_BACKOFF, call).await
}

async fn retry_with<T, F, Fut>(
    operation: &str,
    retries: u32,
    first_backoff: Duration,
    mut call: F,
) -> Result<T, SwitchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SwitchError>>,
{
    let mut backoff = first_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(SwitchError::Unavailable {
                operation: op,
                message,
            }) if attempt <= retries => {
                tracing::warn!(operation = %op, attempt, backoff_ms = backoff.as_millis() as u64,
                    %message, "transient AWS error, retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            Err(SwitchError::Unavailable {
                operation: op,
                message,
            }) => {
                return Err(SwitchError::Unavailable {
                    operation: op,
                    message: format!("{message} (gave up after {attempt} attempts)"),
                });
            }
            other => {
                if attempt > 1 {
                    tracing::info!(operation, attempt, "AWS call settled after retries");
                }
                return other;
            }
        }
    }
}

/// What one look at a change's state found.
pub(crate) enum Poll {
    /// The change is visible.
    Done,
    /// Not yet; says what was seen instead (ends up in [`SwitchError::Unconfirmed`]).
    Pending(String),
}

/// Calls `check` until it reports [`Poll::Done`] or `deadline` passes; checks once more at the
/// deadline. Transient errors while polling count as "not yet"; other errors return at once.
///
/// # Errors
///
/// [`SwitchError::Unconfirmed`] naming `what` and the last state seen, or the first
/// non-transient error of `check`.
pub(crate) async fn poll_until<F, Fut>(
    what: &str,
    deadline: Instant,
    mut check: F,
) -> Result<(), SwitchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll, SwitchError>>,
{
    let mut interval = FIRST_POLL_INTERVAL;
    loop {
        let last_seen = match check().await {
            Ok(Poll::Done) => return Ok(()),
            Ok(Poll::Pending(seen)) => seen,
            Err(err @ SwitchError::Unavailable { .. }) => err.to_string(),
            Err(err) => return Err(err),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(SwitchError::Unconfirmed {
                what: format!("{what}: still {last_seen}"),
            });
        }
        tracing::debug!(%what, %last_seen, "change not visible yet");
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient() -> SwitchError {
        SwitchError::Unavailable {
            operation: "ec2:DescribeAddresses".into(),
            message: "HTTP 503".into(),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = &AtomicU32::new(0);
        let result = retry_with("op", 3, Duration::from_millis(1), || async move {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn transient_errors_give_up_after_the_retries_and_say_so() {
        let calls = &AtomicU32::new(0);
        let result: Result<(), _> = retry_with("op", 3, Duration::from_millis(1), || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let err = result.expect_err("must fail");
        assert!(
            err.to_string().contains("gave up after 4 attempts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn refusals_are_never_retried() {
        let calls = &AtomicU32::new(0);
        let result: Result<(), _> = retry_with("op", 3, Duration::from_millis(1), || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(SwitchError::Refused {
                operation: "ec2:AssociateAddress".into(),
                code: "UnauthorizedOperation".into(),
                message: "no".into(),
            })
        })
        .await;
        assert!(matches!(result, Err(SwitchError::Refused { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn polling_past_the_deadline_is_unconfirmed_with_the_last_state() {
        let deadline = Instant::now() + Duration::from_millis(150);
        let result = poll_until(
            "association of eipalloc-1 with i-new",
            deadline,
            || async move { Ok(Poll::Pending("associated with i-old".into())) },
        )
        .await;
        let err = result.expect_err("must time out");
        assert!(matches!(err, SwitchError::Unconfirmed { .. }));
        assert!(
            err.to_string().contains("still associated with i-old"),
            "{err}"
        );
    }
}
