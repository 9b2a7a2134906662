//! `service DbStats` (a service of its own, kept beside `service Database` so that the agent's
//! database RPCs are in one room): read-only statistics of a configured database — its size,
//! each table's total/heap/index size and row estimates, sessions by state, and the buffer cache
//! hit ratio. The queries run in a `READ ONLY` transaction through [`crate::postgres::connect`];
//! nothing is written.

mod read;
mod service;

pub use service::DbStatsService;
