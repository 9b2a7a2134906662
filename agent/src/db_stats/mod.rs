//! `service DbStats`: read-only statistics of a configured database — its size, each table's
//! total/heap/index size and row estimates, sessions by state, and the buffer cache hit ratio.
//! The queries run in a `READ ONLY` transaction through [`crate::db`]; nothing is written.

mod service;
mod stats;

pub use service::DbStatsService;
