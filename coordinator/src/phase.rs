//! One `tracing` span per coordinator phase — a sync unit, the database copy's steps, verify,
//! each cutover step — so that `HOSTSHIFT_LOG=debug` tells the run as a story: every event
//! logged inside a phase names it, and each phase says when it begins and how long it took even
//! when nothing inside it logs. The agent does the same per RPC (`agent/src/lib.rs`).

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

/// Runs `f` inside `span`, with a `debug` event when it begins and when it ends (`ms`).
pub async fn traced<F: Future>(span: tracing::Span, f: F) -> F::Output {
    let started = Instant::now();
    span.in_scope(|| tracing::debug!("begins"));
    let out = f.instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(ms = started.elapsed().as_millis() as u64, "ends"));
    out
}
