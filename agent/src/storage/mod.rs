//! Storage trees: copying a folder of user artifacts from the old host to the new one, sending
//! only what differs, verifying every byte, and never touching anything outside the tree. This
//! folder is the library; it knows nothing of gRPC (the service wires it to the network, adding
//! chunk framing and a stream trailer — without chunk digests: what [`unpack`] checks against
//! the manifest proves every byte it stages).
//!
//! # How a tree is synced
//! 1. **Manifests** on both hosts: [`walk::walk_to_file`] walks the tree (one thread listing it
//!    in path order, [`walk::WALK_THREADS`] digesting; with the last walk as a cache, so files
//!    whose size, mode, mtime and [`Stamp`] — device, inode, ctime — are unchanged are not read
//!    again) and lists every file, directory and symlink with size, mode, mtime and, for files,
//!    a SHA-256, into a [`walkfile::WalkFile`] on disk: the host's own manifest, read back as a
//!    stream, never whole in memory. [`cache::ManifestCache`] keeps the last one open along with
//!    the files installed since. The network form ([`codec`], without stamps) is streamed from
//!    it; [`Manifest`] is the in-memory form (batches, backups, tests).
//! 2. **Delta**: [`delta::diff`] of the source's manifest against the target's says what to send,
//!    which directories to create, which attributes to fix, what to delete. A peer's manifest is
//!    read from disk one entry at a time ([`stream::ManifestStream`], checked whole first) and
//!    merged with the target's walk file in [`delta::diff_with`], so neither is ever whole in
//!    memory (see `transfer::session`).
//! 3. **Stream**: on the source, [`pack::pack_with`] writes exactly `delta.send` as a tar stream
//!    (into a bounded channel of 1 MiB chunks), refusing to send a file that changed since its
//!    manifest entry; a file its own walk digested and that provably did not change since is
//!    sent without being hashed again. A sync uses [`pack::pack_deferring`]: such a file is
//!    *deferred* (a marker entry follows it) instead of ending the stream, so users uploading
//!    during a sync never abort a batch.
//! 4. **Stage**: on the target, [`unpack::unpack`] reads it through a [`channel::ChannelReader`]
//!    into `root/.hostshift-staging-<id>/`, accepting only the entries it asked for and checking
//!    each file's SHA-256 against the manifest while writing it — always, whatever the source
//!    checked. A file the sender marked deferred is thrown away and listed in
//!    [`Staged::deferred`]; a mismatch without that marker refuses the batch.
//! 5. **Verify** (the caller): the stream's trailer (length + digest) must match.
//! 6. **Commit**: [`commit::commit`] deletes, creates directories, renames each staged file onto
//!    its final path (atomic per file), fixes attributes, and removes the staging directory — or
//!    [`staging::abort`] removes the staging directory and nothing else. A delta sent in several
//!    batches runs [`commit::prepare`] first, commits each batch, and ends with
//!    [`commit::finalize`], which flushes the file system only when it changed something.
//!
//! Afterwards a [`walk::build_full`] of the target equals the source's manifest; `verify`
//! compares the two.
//!
//! # Safety rules
//! - A path inside a tree is a [`RelPath`]: relative, no `..`, `.`, empty or NUL components,
//!   never inside the staging directory. It becomes a host path only through
//!   [`relpath::join_under`], which refuses when a directory on the way is a symlink.
//! - Symlinks are never followed: the walk uses `lstat`, files are opened with `O_NOFOLLOW`,
//!   renames and unlinks act on the link itself. A symlink whose target is absolute or climbs out
//!   of the tree is refused on both sides (the operator fixes it on the old host).
//! - Device files, FIFOs, sockets and hard-link entries are refused; set-id bits of files are not
//!   copied.
//! - Ownership is carried by name when the target agent runs as root (like `tar` and
//!   `rsync -o -g`): each manifest lists the names of the user and group ids it uses, and the
//!   target turns them into its own ids ([`Manifest::localize_owners`]), keeping the numeric id
//!   where a name is unknown on either side (`hostshift check` refuses that case, naming the
//!   user or group). An agent that is not root cannot give files away: its files belong to its
//!   own user and ownership is neither set nor compared.
//! - Nothing unverified is put into place: content is checked against the manifest's digest as
//!   it is staged, and the caller commits only after the trailer is verified.
//! - Memory is bounded per stream (see [`channel::QUEUE_DEPTH`]) and per walk (a window of
//!   batches); manifests of whole trees live in files, so an agent's memory does not grow with
//!   the number of files (except the bounded list of files installed since the last walk).
//! - The checks are path-based: they stop links that exist in the tree, not a local process
//!   racing the agent to swap a directory for a link between a check and its use.

pub mod cache;
pub mod channel;
pub mod codec;
pub mod commit;
pub mod delta;
pub mod durable;
pub mod error;
pub mod manifest;
pub mod pack;
pub mod relpath;
pub mod staging;
pub mod stream;
pub mod unpack;
pub mod walk;
pub mod walkfile;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use cache::{ManifestCache, WalkCache};
pub use channel::{CHUNK_SIZE, ChannelReader, ChannelWriter, ChunkSink, ChunkWriter, QUEUE_DEPTH};
pub use commit::{CommitStats, commit, finalize, prepare};
pub use delta::{Delta, MetaFix, Seen, diff, diff_with};
pub use error::StorageError;
pub use manifest::{Entry, Kind, Manifest, Owner, OwnerMap, OwnerNames, Stamp};

/// Whether this agent carries owners and groups (it can only when it runs as root).
pub fn carries_owners() -> bool {
    nix::unistd::geteuid().is_root()
}
pub use pack::{DEFERRED_MARKER, Deferred, PackStats, pack, pack_deferring, pack_with};
pub use relpath::{RelPath, STAGING_PREFIX, join_under};
pub use staging::{Staged, abort, remove_stale_staging, staging_name};
pub use stream::ManifestStream;
pub use unpack::unpack;
pub use walk::{build, build_full};
