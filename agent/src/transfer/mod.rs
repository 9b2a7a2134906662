//! Moving data between agents: `service Grants`, `service Source`, `service Target`.
//!
//! # The data path
//! By default the **new** agent pulls from the **old** one: the coordinator asks the old agent
//! for a grant (a random token bound to the new agent's certificate identity, to named scopes
//! such as `storage:evaluations`, and to a deadline), then calls `Target.Pull` on the new agent
//! with the old agent's address and the token. The new agent connects to the old one with its own
//! agent certificate and reads the stream itself, so data never crosses the jump box. In `--relay`
//! mode the coordinator reads `Source.Read` and writes `Target.Apply` itself.
//!
//! Either way the stream is framed ([`hostshift_shared::framing`]) and its trailer checked before
//! anything is committed. Table data, schema, manifests and config files carry a SHA-256 per
//! chunk, verified as it arrives; config files are written to a temporary file and renamed.
//! Storage batches carry none: each entry is checked against the batch's expected entries (the
//! source manifest's) and each file against its SHA-256 while it is staged inside the tree, and
//! renamed into place only after the trailer checked out. A mismatch is `DATA_LOSS`: the staged
//! data is discarded and the coordinator sends the stream again.
//!
//! # Safety
//! The source side only reads. The target side writes only what `[allow]` of its own config
//! permits, under the declared roots, and never follows a link out of them.
//!
//! - [`grants`] — the grant store.
//! - [`source`] — framed streams of storage files, config files and manifests.
//! - [`sink`] — verifying and applying a framed stream; [`db`] — the database parts of it.
//! - [`guard`] — what this agent may receive (`[allow]`, sync role, freeze) and how a source's
//!   failure reads.
//! - [`pull`] — the target's client to a peer agent.
//! - [`files`] — `.env` overrides of config files (written by [`crate::fsutil::write_atomic`]).
//! - [`session`] — storage sessions: the old agent's manifest fetched, diffed and batched here.
//! - [`service`] — the gRPC translation of the three services.

pub mod db;
pub mod files;
pub mod grants;
pub mod guard;
pub mod pull;
pub mod service;
pub mod session;
pub mod sink;
pub mod source;

pub use grants::GrantStore;
pub use service::{GrantsService, SourceService, TargetService};

/// Frames buffered between a producer and the network; beyond it the producer waits
/// (backpressure). Worst-case memory: `FRAME_QUEUE × CHUNK_SIZE` = 4 MiB per stream.
pub const FRAME_QUEUE: usize = 4;

/// Largest encoded manifest or config file accepted in one message or collected in memory.
pub const MAX_INLINE: usize = 64 * 1024 * 1024;
