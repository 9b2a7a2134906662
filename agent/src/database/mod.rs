//! `service Database`: the PostgreSQL questions a sync asks besides the data streams — which
//! tables, one consistent snapshot, key ranges for big tables, sequence positions, large
//! objects, fingerprints — and what the cutover needs: fingerprints of key ranges, a digest of
//! the schema, and the write freeze on the old host ([`freeze`], which keeps its record under the
//! agent's `state_dir`). The work is in [`crate::postgres`]; the streams themselves go through
//! [`crate::transfer`].

mod create;
pub mod freeze;
mod service;
mod snapshots;
mod stats;
pub mod wire;

pub use create::can_create;
pub use service::DatabaseService;
pub use snapshots::Snapshots;
pub use stats::DbStatsService;
