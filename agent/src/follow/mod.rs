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
//!
//! What that costs, measured (docs/BENCHMARKS.md, "Catch-up"): a peek materialises its result
//! before the first row returns and decodes again from the slot's restart point, but decoding is
//! the cheap part — 40–55 ms for a 50,000-row transaction (17 MB of WAL) on the test box. The
//! catch-up after such a transaction was spent moving and applying it, so the rows travel many to
//! a gRPC message ([`source::BATCH_BYTES`]) and the new host applies them as they arrive (see
//! [`apply`], "A pipeline"): 59,000 rows in one transaction are applied 0.9 s after their commit
//! with the app writing beside them. A streaming-replication connection (`START_REPLICATION`)
//! would save the re-decoding, at the price of a second connection type to configure and secure;
//! not needed for the targets so far.
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
//! - [`window`] — the rollback window on the new host: its tables without a key (whole with
//!   `[allow] replica_identity_full`, else insert-only), the identities the follow left there.
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

/// Which way a follower applies: the move's follow (the old host's changes onto the new host)
/// or the rollback window's (the new host's changes back onto the old host, see
/// `coordinator/src/window`). The code is the same both ways; what an error calls the two hosts,
/// and what it tells the operator to run, is not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// `hostshift follow`: old host → new host.
    #[default]
    Forward,
    /// The rollback window: new host → old host.
    Window,
}

impl Direction {
    /// The host the changes come from.
    pub fn source(self) -> &'static str {
        match self {
            Self::Forward => "old host",
            Self::Window => "new host",
        }
    }

    /// The host they are applied on (this agent's).
    pub fn target(self) -> &'static str {
        match self {
            Self::Forward => "new host",
            Self::Window => "old host",
        }
    }

    /// What to do when a change cannot be applied (the databases diverged).
    pub fn after_divergence(self) -> &'static str {
        match self {
            Self::Forward => {
                "Run `hostshift follow cleanup` and `hostshift follow start` to copy again"
            }
            Self::Window => {
                "Make the old host's rows match the new host's by hand and run `hostshift window --restart-follower`, or close the window with `hostshift finish` (a rollback then reports the new host's writes as at risk)"
            }
        }
    }

    /// What to do after a schema change on the source.
    pub fn after_schema_change(self) -> &'static str {
        match self {
            Self::Forward => {
                "Apply the same change on the new host (or run `hostshift follow cleanup` and start again), then `hostshift follow start`"
            }
            Self::Window => {
                "Apply the same change on the old host, then `hostshift window --restart-follower`"
            }
        }
    }
}

/// An error the source host's agent answered with, as this agent's error.
pub(crate) fn from_peer(s: &tonic::Status, direction: Direction) -> AgentError {
    let msg = format!("the {}'s agent: {}", direction.source(), s.message());
    match s.code() {
        tonic::Code::PermissionDenied => AgentError::PermissionDenied(msg),
        tonic::Code::InvalidArgument => AgentError::InvalidArgument(msg),
        tonic::Code::FailedPrecondition => AgentError::FailedPrecondition(msg),
        _ => AgentError::Unavailable(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_direction_names_the_new_host_as_the_source_and_the_old_as_the_target() {
        assert_eq!(
            (Direction::Forward.source(), Direction::Forward.target()),
            ("old host", "new host")
        );
        assert_eq!(
            (Direction::Window.source(), Direction::Window.target()),
            ("new host", "old host")
        );
        assert!(
            Direction::Window
                .after_schema_change()
                .contains("on the old host")
        );
        assert!(
            Direction::Window
                .after_divergence()
                .contains("--restart-follower")
        );
        // Records written before the field existed are the move's follow.
        assert_eq!(Direction::default(), Direction::Forward);
    }
}
