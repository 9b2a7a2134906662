//! The source side: framed streams of storage files, config files and manifests. It only reads.
//!
//! Producers that block (tar, hashing a tree) run in `spawn_blocking` and write into a
//! [`ChannelWriter`]; an async task frames each chunk and sends it on a bounded channel to the
//! network. A slow receiver therefore slows the producer (backpressure), and a receiver that goes
//! away stops it (the writer's next send fails).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hostshift_proto::v1::{FileMetaResponse, Frame};
use hostshift_shared::framing::{CHUNK_SIZE, FrameEncoder};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::FRAME_QUEUE;
use crate::Ctx;
use crate::error::AgentError;
use crate::storage::{self, ChannelWriter, Manifest};

/// Frames for the network.
pub type FrameRx = mpsc::Receiver<Result<Frame, Status>>;

/// Runs a blocking `produce` that writes the stream's bytes, and frames its output.
pub fn framed_blocking<P>(ctx: &Ctx, produce: P) -> FrameRx
where
    P: FnOnce(&mut ChannelWriter, &CancellationToken) -> Result<(), AgentError> + Send + 'static,
{
    let (btx, mut brx) = mpsc::channel::<Bytes>(FRAME_QUEUE);
    let (ftx, frx) = mpsc::channel(FRAME_QUEUE);
    let cancel = ctx.shutdown.child_token();
    let producer_cancel = cancel.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter::new(btx);
        produce(&mut w, &producer_cancel)?;
        std::io::Write::flush(&mut w).map_err(|e| AgentError::Internal(format!("stream: {e}")))
    });
    ctx.tasks.spawn(async move {
        let mut enc = FrameEncoder::new();
        let mut receiver_gone = false;
        while let Some(b) = brx.recv().await {
            if ftx.send(Ok(enc.chunk(b))).await.is_err() {
                // The reader went away: stop the producer.
                receiver_gone = true;
                cancel.cancel();
                break;
            }
        }
        drop(brx);
        let outcome = producer.await;
        if receiver_gone {
            return;
        }
        let last = match outcome {
            Ok(Ok(())) => Ok(enc.trailer().0),
            Ok(Err(e)) => Err(Status::from(e)),
            Err(e) => Err(Status::internal(format!("stream producer failed: {e}"))),
        };
        let _ = ftx.send(last).await;
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

/// Where the agent caches the manifest of a tree (digests reused when size, mtime and mode are
/// unchanged).
pub fn manifest_cache(ctx: &Ctx, tree: &str) -> PathBuf {
    ctx.config
        .state_dir
        .join("manifests")
        .join(format!("{tree}.manifest"))
}

/// Builds the manifest of a configured tree (`full`: re-hash everything), refreshing the cache.
///
/// # Errors
/// Undeclared tree, or the tree cannot be read (the error names the path).
pub async fn manifest(ctx: &Arc<Ctx>, tree: &str, full: bool) -> Result<Manifest, AgentError> {
    let root = ctx.storage(tree)?.path.clone();
    let cache_path = manifest_cache(ctx, tree);
    let cancel = ctx.shutdown.child_token();
    tokio::task::spawn_blocking(move || {
        if !root.exists() {
            // A target tree that sync has not created yet is empty.
            return Manifest::new(Vec::new()).map_err(AgentError::from);
        }
        let cached = if full {
            None
        } else {
            Manifest::load(&cache_path).ok()
        };
        let m = if full {
            storage::build_full(&root, &cancel)?
        } else {
            storage::build(&root, cached.as_ref(), &cancel)?
        };
        if let Some(dir) = cache_path.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            // A cache that cannot be written only costs speed next time.
            if let Err(e) = m.save(&cache_path) {
                tracing::debug!(error = %e, "manifest cache not saved");
            }
        }
        Ok(m)
    })
    .await
    .map_err(|e| AgentError::Internal(format!("manifest task: {e}")))?
}

/// A tar stream of the `entries` (an encoded manifest subset) of a tree.
///
/// # Errors
/// Undeclared tree or malformed entries (before anything is sent).
pub fn storage_files(ctx: &Arc<Ctx>, tree: &str, entries: &[u8]) -> Result<FrameRx, AgentError> {
    let root = ctx.storage(tree)?.path.clone();
    let entries = Manifest::decode(entries, Path::new("<requested entries>"))?
        .entries()
        .to_vec();
    Ok(framed_blocking(ctx, move |w, cancel| {
        storage::pack(&root, &entries, w, cancel)?;
        Ok(())
    }))
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
