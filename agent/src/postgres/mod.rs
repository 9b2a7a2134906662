//! The PostgreSQL half of a host-to-host sync, as a library: the old host's agent reads its
//! database (never writing to it), the new host's agent writes into its own. This folder knows
//! nothing of gRPC; the service wires each source stream to the matching target sink, adding
//! chunk framing (a SHA-256 per chunk and a trailer with length and digest) and committing a sink
//! only after the trailer was verified. It replaces `pg_dump | pg_restore`: no dump file on
//! either host, tables copied in parallel, large tables split by primary-key range.
//!
//! # The flow, in order
//! 0. **Snapshot** (source): [`ExportedSnapshot::export`] holds a read-only transaction open; every
//!    later source step imports its [`SnapshotId`], so the schema, every table and range, and the
//!    large objects come from one instant, although they are read on many connections.
//! 1. **Globals**: [`read_globals`] → [`apply_globals`]. Roles first: the schema assigns owners
//!    and grants to them.
//! 2. **Pre-data schema**: [`dump_section`]`(PreData)` → [`SchemaBuffer`] → [`SchemaBuffer::apply`]
//!    (one transaction). Tables, types, functions, views, extensions, ownership, grants.
//! 3. **Table data**, in parallel: [`list_tables`], then per table either one piece or
//!    [`split_ranges`]; per piece, on a connection of its own on each side, [`copy_out`] →
//!    [`TableSink`] → [`TableSink::commit`]. Run several pieces at once (the pieces of one table
//!    too: loading ranges with [`LoadMode::DeleteRange`] or [`LoadMode::Append`] does not lock
//!    the others out); biggest first ([`TableInfo::estimated_bytes`]).
//! 4. **Post-data schema**: [`dump_section`]`(PostData)` → apply entry by entry on two
//!    connections (like `pg_restore -j 2`; an entry whose object exists is skipped, so a rerun
//!    completes an interrupted one). Primary keys, indexes, unique and foreign-key constraints,
//!    triggers — after the data, because building an index once is much faster than maintaining
//!    it row by row, and foreign keys are validated once.
//! 5. **Sequences**: [`read_sequences`] → [`apply_sequences`].
//! 6. **Large objects**: [`list_large_objects`], then per object [`read_large_object`] →
//!    [`LargeObjectSink`] → commit.
//! 7. **Fingerprints** on both hosts, compared: [`database_fingerprint`],
//!    [`sequence_fingerprint`], [`large_object_fingerprint`] (see [`fingerprint`] for why they
//!    are order-independent sums).
//!
//! The snapshot can be released after step 6.
//!
//! # The cutover
//! - [`range_fingerprints`]: fingerprints of many key ranges of one table in one scan, so a
//!   delta can bisect a differing table down to the ranges to copy again.
//! - [`schema_digest`](schema_digest::schema_digest): a cluster-independent digest per object
//!   definition; equal maps on both hosts = same schema.
//! - [`freeze`]: the old database's write freeze (`default_transaction_read_only`, ending the
//!   other sessions) and its undo — the one change this library makes on a source, only with
//!   the agent's `[allow] freeze_databases`.
//!
//! # Safety
//! - The source is only read: every source transaction is `READ ONLY` (no temporary tables),
//!   `pg_dump` only reads. The exception is [`freeze`], which the cutover calls on purpose.
//! - The target side never checks permits: its caller must have checked that the database is in
//!   the agent's `[allow] restore_databases` before calling any target function.
//! - Nothing is committed before the caller says so: schema sections are buffered and verified
//!   first (pre-data applies in one transaction, post-data entry by entry), table loads and large objects commit on `commit()`, and dropping a sink
//!   closes its connection, which rolls back.
//! - Every external program runs through [`crate::process`]; passwords go through the child's
//!   environment, never its command line.
//! - Memory per stream is bounded ([`CHUNK_BYTES`], [`LO_CHUNK_BYTES`], [`DUMP_CHUNK_BYTES`]); the
//!   schema buffer is bounded by [`MAX_SCHEMA_BYTES`].

pub mod conn;
pub mod connect;
pub mod copy;
pub mod error;
pub mod fingerprint;
pub mod freeze;
pub mod globals;
pub mod large_objects;
pub mod matviews;
pub mod pool;
pub mod ranges;
pub mod schema;
pub mod schema_digest;
pub mod select;
pub mod sequences;
pub mod sql;
pub mod tables;

pub use conn::{Conn, ExportedSnapshot, PINNED_SETTINGS, SnapshotId};
pub use copy::{CHUNK_BYTES, LoadMode, Loaded, PageRange, Rows, TableSink, copy_out, copy_out_sql};
pub use error::PgSyncError;
pub use fingerprint::{
    RangeFingerprint, TableFingerprint, database_fingerprint, database_fingerprint_at,
    large_object_fingerprint, large_object_fingerprint_at, range_fingerprints,
    sequence_fingerprint, table_fingerprint,
};
pub use globals::{Globals, GlobalsReport, Membership, RoleDef, apply_globals, read_globals};
pub use large_objects::{
    LO_CHUNK_BYTES, LargeObjectMeta, LargeObjectSink, LoGrant, list_large_objects,
    read_large_object, remove_large_objects,
};
pub use matviews::{NOT_POPULATED, matview_fingerprints, refresh_matviews};
pub use pool::{Pooled, ReadPool};
pub use ranges::{KeyRange, split_pages, split_ranges};
pub use schema::{
    DUMP_CHUNK_BYTES, MAX_SCHEMA_BYTES, PostDataPart, SchemaBuffer, Section, dump_section,
};
pub use select::{Selection, TableRef, dump_args};
pub use sequences::{SequenceValue, apply_sequences, read_sequences};
pub use tables::{CopyFormat, TableInfo, TableKind, list_tables, readable_table};
