//! Following a database: the new host stays current by applying the old host's committed
//! changes, decoded from its WAL (`service Follow`).
//!
//! # Why the SQL slot functions and `pgoutput`
//! The old host's agent reads changes with `pg_logical_slot_peek_binary_changes(slot, NULL, n,
//! 'proto_version', '1', 'publication_names', pub)` over an ordinary tokio-postgres connection
//! and releases WAL with `pg_replication_slot_advance(slot, lsn)` once the new host confirmed it
//! applied up to `lsn`. No replication-protocol connection is needed (tokio-postgres has none,
//! and the crates that add one are young), the connection uses the same conninfo, TLS and
//! authentication as every other one of the agent, and peek-then-advance gives at-least-once
//! delivery: a change stays in the slot until the new host has committed it. `pgoutput` (built
//! into PostgreSQL ≥ 10, unlike wal2json) filters by a publication, sends relation descriptions
//! and values in their text form, and is what PostgreSQL's own logical replication reads.
//! Exactly-once comes from the new host ([`apply`]): each applied transaction records the
//! source commit position in a replication origin in the same transaction, and a restart skips
//! what the origin already holds.
//!
//! # The anchor: nothing missed, nothing twice
//! `hostshift follow start` creates the slot **first**, then runs a sync: its exported snapshot
//! is taken after the slot exists, and the old agent records that snapshot's
//! `pg_current_snapshot()` ([`source::note_snapshot`]). A decoded transaction whose xid is
//! visible in it is already in the copy and is skipped; every other one is applied. Slot
//! creation waits for the transactions running at its start, so every transaction committing
//! after the slot's consistent point is decoded whole.
//!
//! # What is not followed
//! Tables without a replica identity (no primary key, `REPLICA IDENTITY DEFAULT`) are left out
//! of the publication — with them in it, the application's UPDATE and DELETE on them would fail
//! on the live old host — and reported as "not followed: copied whole in the freeze".
//! Sequences and large objects are not in the stream either (the cutover settles them). A schema
//! change on a followed table stops the follower with an error naming the table.
//!
//! - [`pgoutput`] — the message parser.
//! - [`apply`] — applying messages on the new host, exactly once.
//! - [`source`] — the old host: slot, publication, follow grant, changes.
//! - [`follower`] — the new host's background task, resumed after a restart.
//! - [`store`] — what both sides persist in `state_dir/follow/`.
//! - [`window`] — the rollback window's insert-only publication on the new host.
//! - [`service`] — the gRPC translation.

pub mod apply;
pub mod follower;
pub mod pgoutput;
pub mod service;
pub mod source;
pub mod store;
pub mod window;

pub use follower::Followers;
pub use service::FollowService;

use crate::error::AgentError;

/// The replication origin of a follow on the new host.
pub fn origin_name(id: &str) -> String {
    format!("hostshift_{id}")
}

/// An error the old host's agent answered with, as this agent's error.
pub(crate) fn from_peer(s: &tonic::Status) -> AgentError {
    let msg = format!("the old host's agent: {}", s.message());
    match s.code() {
        tonic::Code::PermissionDenied => AgentError::PermissionDenied(msg),
        tonic::Code::InvalidArgument => AgentError::InvalidArgument(msg),
        tonic::Code::FailedPrecondition => AgentError::FailedPrecondition(msg),
        _ => AgentError::Unavailable(msg),
    }
}
