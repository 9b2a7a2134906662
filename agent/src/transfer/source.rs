//! The source side: framed streams of storage files, config files and manifests. It only reads.
//!
//! Producers that block (tar, hashing a tree) run in `spawn_blocking` and write into a
//! [`FrameWriter`], which cuts their output into chunks, computes each chunk's SHA-256 on that
//! same blocking thread (not on the async runtime that drives TLS and HTTP/2) and sends the
//! frames on a bounded channel to the network. A slow receiver therefore slows the producer
//! (backpressure), and a receiver that goes away stops it (the writer's next send fails).
//!
//! Storage batches are framed without chunk digests ([`ChunkDigests::Omitted`]): the receiver
//! checks each of their files against the manifest's SHA-256, each entry against the manifest,
//! and the trailer's seal (the SHA-256 of every byte that is not file content) against its own,
//! which proves every byte of them.
//!
//! This module also owns the agent's [`ManifestCache`] (one per process): the manifests of its
//! trees between walks, and the files the target side installed since.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use hostshift_proto::v1::{FileMetaResponse, Frame};
use hostshift_shared::digest::Sha256Digest;
use hostshift_shared::framing::{CHUNK_SIZE, ChunkDigests, FrameEncoder};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::FRAME_QUEUE;
use crate::Ctx;
use crate::error::AgentError;
use crate::storage::walk::Lookup;
use crate::storage::walkfile::{WalkFile, WalkWriter};
use crate::storage::{self, ChunkSink, ChunkWriter, Entry, Manifest, ManifestCache, Stamp};

/// Frames for the network.
pub type FrameRx = mpsc::Receiver<Result<Frame, Status>>;

/// The agent's manifests and recently installed files, per tree (see [`ManifestCache`]).
static MANIFESTS: LazyLock<ManifestCache> = LazyLock::new(ManifestCache::new);

/// A [`Write`](std::io::Write) for a blocking producer: the storage code's [`ChunkWriter`] over a sink that
/// frames each [`CHUNK_SIZE`] chunk (its SHA-256 computed here, on the producer's thread) and
/// sends it with `blocking_send` on a bounded channel. Worst-case memory: the chunk being
/// filled plus [`FRAME_QUEUE`] frames. Use it only from a blocking thread (`spawn_blocking`):
/// `blocking_send` panics in async code.
pub type FrameWriter = ChunkWriter<FrameSink>;

/// The framing end of a [`FrameWriter`].
pub struct FrameSink {
    tx: mpsc::Sender<Result<Frame, Status>>,
    enc: FrameEncoder,
}

impl FrameSink {
    /// Puts the payload's seal into the trailer of a stream without chunk digests (a storage
    /// batch's envelope; see [`hostshift_shared::framing`]).
    pub fn seal(&mut self, seal: Sha256Digest) {
        self.enc.seal(seal);
    }
}

fn receiver_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the receiver of the stream is gone",
    )
}

impl ChunkSink for FrameSink {
    fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        let frame = self.enc.chunk(chunk);
        self.tx
            .blocking_send(Ok(frame))
            .map_err(|_| receiver_gone())
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Sends what is buffered and the trailer: the stream is complete.
fn finish(w: FrameWriter) -> io::Result<()> {
    let sink = w.into_sink()?;
    let (trailer, _) = sink.enc.trailer();
    sink.tx
        .blocking_send(Ok(trailer))
        .map_err(|_| receiver_gone())
}

/// Runs a blocking `produce` that writes the stream's bytes into a [`FrameWriter`]; the trailer
/// follows only when it succeeded, otherwise its error ends the stream (a torn stream: the
/// receiver commits nothing).
pub fn framed_blocking<P>(ctx: &Ctx, produce: P) -> FrameRx
where
    P: FnOnce(&mut FrameWriter, &CancellationToken) -> Result<(), AgentError> + Send + 'static,
{
    framed_blocking_with(ctx, ChunkDigests::Each, produce)
}

/// [`framed_blocking`] with chunk digests or without them (see the module doc).
fn framed_blocking_with<P>(ctx: &Ctx, digests: ChunkDigests, produce: P) -> FrameRx
where
    P: FnOnce(&mut FrameWriter, &CancellationToken) -> Result<(), AgentError> + Send + 'static,
{
    let (ftx, frx) = mpsc::channel(FRAME_QUEUE);
    let cancel = ctx.shutdown.child_token();
    let on_panic = ftx.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = FrameWriter::with_sink(FrameSink {
            tx: ftx,
            enc: FrameEncoder::with(digests),
        });
        let outcome = produce(&mut w, &cancel);
        let tx = w.sink().tx.clone();
        let outcome = outcome
            .and_then(|()| finish(w).map_err(|e| AgentError::Internal(format!("stream: {e}"))));
        if let Err(e) = outcome {
            // Fails only when the receiver is gone, which is then also why we stopped.
            let _ = tx.blocking_send(Err(Status::from(e)));
        }
    });
    ctx.tasks.spawn(async move {
        if let Err(e) = producer.await {
            let _ = on_panic
                .send(Err(Status::internal(format!(
                    "stream producer failed: {e}"
                ))))
                .await;
        }
    });
    frx
}

/// Frames an in-memory buffer (manifests, config files).
pub fn framed_bytes(data: Vec<u8>) -> FrameRx {
    let (ftx, frx) = mpsc::channel(FRAME_QUEUE);
    tokio::spawn(async move {
        let mut enc = FrameEncoder::new();
        let data = Bytes::from(data);
        let mut off = 0;
        while off < data.len() {
            let end = (off + CHUNK_SIZE).min(data.len());
            if ftx.send(Ok(enc.chunk(data.slice(off..end)))).await.is_err() {
                return;
            }
            off = end;
        }
        let _ = ftx.send(Ok(enc.trailer().0)).await;
    });
    frx
}

/// A walk's network form, read from its file and encoded piece by piece into the stream on a
/// blocking thread (never whole in memory: a tree of a million files encodes to about 100 MB).
pub fn framed_manifest(ctx: &Ctx, m: Arc<WalkFile>) -> FrameRx {
    framed_blocking(ctx, move |w, _| {
        m.encode_network(w)
            .map_err(|e| AgentError::Internal(format!("manifest stream: {e}")))
    })
}

/// Where the agent caches the manifest of a tree (digests reused while size, mtime, mode and
/// stamp are unchanged).
pub fn manifest_cache(ctx: &Ctx, tree: &str) -> PathBuf {
    ctx.config
        .state_dir
        .join("manifests")
        .join(format!("{tree}.manifest"))
}

/// On the source: refuses a tree whose top level holds an entry named like the agent's staging
/// folders (`.hostshift-staging-*`). The walk skips those names (a target's staging folders are
/// not user data), so such a folder would be neither copied nor verified: say so instead. A
/// tree this agent may write (`[allow] write_storage`) is exempt, as its staging folders of an
/// interrupted sync are its own.
///
/// # Errors
/// `FailedPrecondition` naming the entries and what to do; `Io` when the root cannot be listed.
pub fn refuse_staging_names(ctx: &Ctx, tree: &str) -> Result<(), AgentError> {
    use std::os::unix::ffi::OsStrExt;
    if ctx.config.allow.write_storage.iter().any(|t| t == tree) {
        return Ok(());
    }
    let root = &ctx.storage(tree)?.path;
    let listing = match std::fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AgentError::io("list", root, e)),
    };
    let mut reserved: Vec<String> = listing
        .filter_map(Result::ok)
        .map(|de| de.file_name())
        .filter(|n| crate::storage::relpath::is_staging_name(n.as_bytes()))
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if reserved.is_empty() {
        return Ok(());
    }
    reserved.sort();
    Err(AgentError::FailedPrecondition(format!(
        "tree {tree} ({}) holds {} at its top level, a name hostshift reserves for its staging \
         folders: sync and verify would skip it; rename it on the old host (e.g. without the \
         leading '.hostshift-staging'), then sync again",
        root.display(),
        reserved.join(", ")
    )))
}

/// Walks a configured tree (`full`: re-hash everything) into its walk file, which is also the
/// cache of the next walk, and returns it open: the manifest is never whole in memory.
///
/// # Errors
/// Undeclared tree, the tree cannot be read (the error names the path), or the walk file cannot
/// be written in the agent's state folder.
pub async fn manifest(ctx: &Arc<Ctx>, tree: &str, full: bool) -> Result<Arc<WalkFile>, AgentError> {
    let root = ctx.storage(tree)?.path.clone();
    let cache_path = manifest_cache(ctx, tree);
    let cancel = ctx.shutdown.child_token();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = cache_path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            // The walk then keeps its file in memory (see `ManifestCache::walk`).
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the walk files' folder");
        }
        let started = std::time::Instant::now();
        let m = if root.exists() {
            MANIFESTS.walk(&cache_path, &root, full, &cancel)?
        } else {
            // A target tree that sync has not created yet is empty.
            let now = storage::walk::now_ns();
            let w = WalkWriter::create(&cache_path, now).or_else(|_| WalkWriter::in_memory(now))?;
            Arc::new(w.finish()?)
        };
        tracing::debug!(
            root = %root.display(),
            entries = m.summary().entries,
            full,
            ms = started.elapsed().as_millis() as u64,
            "manifest built"
        );
        Ok(m)
    })
    .await
    .map_err(|e| AgentError::Internal(format!("manifest task: {e}")))?
}

/// Remembers files the target side installed in `tree` after verifying their content, so that
/// the next walk of the tree does not read them again (see [`ManifestCache`]).
pub fn remember_installed(ctx: &Ctx, tree: &str, files: Vec<(Entry, Stamp)>) {
    MANIFESTS.installed(&manifest_cache(ctx, tree), files);
}

/// A tar stream of the `entries` (an encoded manifest subset) of a tree. Files its last walk
/// digested and that provably did not change since are not hashed again (the receiver checks
/// every file; see [`storage::pack_with`]). A file that changes or vanishes meanwhile is
/// deferred, not fatal (see [`storage::pack_deferring`]). Framed without chunk digests and
/// sealed with the stream's envelope (see the module doc).
///
/// # Errors
/// Undeclared tree or malformed entries (before anything is sent).
pub fn storage_files(ctx: &Arc<Ctx>, tree: &str, entries: &[u8]) -> Result<FrameRx, AgentError> {
    let root = ctx.storage(tree)?.path.clone();
    let entries = Manifest::decode(entries, Path::new("<requested entries>"))?
        .entries()
        .to_vec();
    let cache_path = manifest_cache(ctx, tree);
    let tree = tree.to_string();
    Ok(framed_blocking_with(
        ctx,
        ChunkDigests::Omitted,
        move |w, cancel| {
            let walked = MANIFESTS.walked(&cache_path);
            let mut cursor = walked.as_deref().map(WalkFile::cursor);
            let stats = storage::pack_deferring(
                &root,
                &entries,
                &mut *w,
                cancel,
                cursor.as_mut().map(|c| c as &mut dyn Lookup),
            )?;
            if let Some(envelope) = stats.envelope {
                w.sink_mut().seal(envelope);
            }
            tracing::info!(
                tree = %tree,
                files = stats.files,
                deferred = stats.deferred.len(),
                bytes = stats.content_bytes,
                digests_reused = stats.digests_reused,
                "storage batch packed"
            );
            Ok(())
        },
    ))
}

/// A configured file's path.
///
/// # Errors
/// [`AgentError::NotDeclared`].
pub fn file_path(ctx: &Ctx, name: &str) -> Result<PathBuf, AgentError> {
    ctx.config
        .files
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.path.clone())
        .ok_or_else(|| AgentError::NotDeclared {
            what: "file",
            name: name.to_string(),
            config: ctx.config_path.display().to_string(),
        })
}

/// A configured file's bytes, framed.
///
/// # Errors
/// Undeclared, missing, or larger than [`super::MAX_INLINE`].
pub async fn file(ctx: &Ctx, name: &str) -> Result<FrameRx, AgentError> {
    let path = file_path(ctx, name)?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AgentError::io("open", &path, e))?;
    let mut data = Vec::new();
    (&mut f)
        .take(super::MAX_INLINE as u64 + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|e| AgentError::io("read", &path, e))?;
    if data.len() > super::MAX_INLINE {
        return Err(AgentError::FailedPrecondition(format!(
            "{} is larger than {} bytes: config files are copied whole; declare it as a storage tree instead",
            path.display(),
            super::MAX_INLINE
        )));
    }
    Ok(framed_bytes(data))
}

/// Mode, owner, size and mtime of a configured file.
///
/// # Errors
/// Undeclared file.
pub fn file_meta(ctx: &Ctx, name: &str) -> Result<FileMetaResponse, AgentError> {
    let path = file_path(ctx, name)?;
    Ok(match std::fs::metadata(&path) {
        Ok(m) => FileMetaResponse {
            exists: true,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        },
        Err(_) => FileMetaResponse::default(),
    })
}
