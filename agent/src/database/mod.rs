//! `service Database`: the PostgreSQL questions a sync asks besides the data streams — which
//! tables, one consistent snapshot, key ranges for big tables, sequence positions, large
//! objects, fingerprints. The work is in [`crate::postgres`]; the streams themselves go through
//! [`crate::transfer`].

mod service;
mod snapshots;

pub use service::DatabaseService;
pub use snapshots::Snapshots;
