//! The target side: verify a framed stream and apply it, committing only after the trailer
//! checked out. Writes happen only where `[allow]` of this agent's config permits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hostshift_proto::v1::{
    ApplyHeader, ApplyResult, DeferredFile, FileApply, Frame, StorageFilesApply, apply_header::What,
};
use hostshift_shared::digest::Sha256Digest;
use hostshift_shared::framing::{Accepted, ChunkDigests, FrameDecoder, IntegrityError};
use tokio::sync::mpsc;
use tonic::Status;

use super::guard::{require, upstream};
use super::{FRAME_QUEUE, MAX_INLINE, files};
use crate::Ctx;
use crate::error::AgentError;
use crate::storage::{self, ChannelReader, Manifest};

static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

fn integrity(e: IntegrityError) -> AgentError {
    AgentError::DataLoss(e.to_string())
}

/// Verifies and applies `frames` as `header` says. `progress` is told the bytes received so far.
///
/// # Errors
/// `PermissionDenied` when `[allow]` does not permit it; `DataLoss` when a chunk or the trailer
/// does not match (nothing is committed); errors of the source stream; I/O errors.
pub async fn apply<S>(
    ctx: &Arc<Ctx>,
    header: ApplyHeader,
    frames: S,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    match header.what {
        Some(What::StorageFiles(h)) => storage_files(ctx, h, frames, progress).await,
        Some(What::File(h)) => file(ctx, h, frames).await,
        Some(What::DbGlobals(h)) => super::db::apply_globals(ctx, &h, frames).await,
        Some(What::DbSchema(h)) => super::db::apply_schema(ctx, &h, frames).await,
        Some(What::DbTable(h)) => super::db::apply_table(ctx, &h, frames).await,
        Some(What::DbLargeObject(h)) => super::db::apply_large_object(ctx, &h, frames).await,
        None => Err(AgentError::InvalidArgument(
            "apply header names nothing to apply".into(),
        )),
    }
}

async fn storage_files<S>(
    ctx: &Arc<Ctx>,
    h: StorageFilesApply,
    mut frames: S,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    require(
        ctx,
        &ctx.config.allow.write_storage,
        "write_storage",
        "storage tree",
        &h.tree,
        &h.rollback_window,
    )?;
    let root = ctx.storage(&h.tree)?.path.clone();
    std::fs::create_dir_all(&root).map_err(|e| AgentError::io("create", &root, e))?;
    let expected = Manifest::decode(&h.expected, Path::new("<expected entries>"))?;
    let files = expected.entries().len() as u64;
    let staging = storage::staging_name(&format!(
        "{}-{}",
        std::process::id(),
        NEXT_STAGING.fetch_add(1, Ordering::Relaxed)
    ))?;
    let (tx, rx) = mpsc::channel::<Bytes>(FRAME_QUEUE);
    let cancel = ctx.shutdown.child_token();
    let unpack_root = root.clone();
    let entries = expected.entries().to_vec();
    let unpack_cancel = cancel.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        storage::unpack(
            &unpack_root,
            &staging,
            ChannelReader::new(rx),
            &entries,
            &unpack_cancel,
        )
    });

    // No chunk digests: every entry is checked against `expected` as it is staged (its path,
    // kind, size, link target, and each file's SHA-256), and every other byte by the seal.
    let mut dec = FrameDecoder::with(ChunkDigests::Omitted);
    let mut failure: Option<AgentError> = None;
    let mut seal = None;
    loop {
        let next = tokio::select! {
            f = frames.next() => f,
            () = cancel.cancelled() => { failure = Some(AgentError::Cancelled); break; }
        };
        match next {
            None => {
                failure = Some(integrity(IntegrityError::Truncated { got_len: dec.len() }));
                break;
            }
            Some(Err(s)) => {
                failure = Some(upstream(s));
                break;
            }
            Some(Ok(frame)) => match dec.accept(frame) {
                Err(e) => {
                    failure = Some(integrity(e));
                    break;
                }
                Ok(Accepted::Data(b)) => {
                    progress(dec.len());
                    if tx.send(b).await.is_err() {
                        // The unpacker stopped early; its error says why.
                        break;
                    }
                }
                Ok(Accepted::End { seal: s, .. }) => {
                    seal = s;
                    break;
                }
            },
        }
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| AgentError::Internal(format!("unpack task: {e}")))?;
    let failure = failure.or_else(|| match &unpacked {
        Ok(staged) if dec.finished() => unsealed(seal, staged.envelope()),
        _ => None,
    });
    let staged = match (unpacked, failure) {
        (Ok(staged), None) if dec.finished() => staged,
        (Ok(staged), failure) => {
            let root2 = root.clone();
            let _ = tokio::task::spawn_blocking(move || storage::abort(&root2, staged)).await;
            return Err(failure
                .unwrap_or_else(|| integrity(IntegrityError::Truncated { got_len: dec.len() })));
        }
        // An integrity or stream failure explains an unpack failure better than the reverse.
        (Err(e), Some(failure)) => {
            tracing::debug!(error = %e, "unpack stopped after the stream failed");
            return Err(failure);
        }
        (Err(e), None) => return Err(e.into()),
    };
    let bytes = staged.bytes();
    let deferred: Vec<DeferredFile> = staged
        .deferred()
        .iter()
        .map(|d| DeferredFile {
            path: d.path.as_bytes().to_vec(),
            reason: d.reason.clone(),
        })
        .collect();
    if !deferred.is_empty() {
        tracing::info!(tree = %h.tree, deferred = deferred.len(), "files changed on the source while read: left for the next pass");
    }
    let stats = tokio::task::spawn_blocking(move || storage::commit(&root, staged, &[], &[], &[]))
        .await
        .map_err(|e| AgentError::Internal(format!("commit task: {e}")))??;
    // Each file was checked against its SHA-256 while staged: the next walk of this tree may
    // take the digest instead of reading the file again, while its stamp is unchanged.
    let verified: Vec<(storage::Entry, storage::Stamp)> = stats
        .stamps
        .iter()
        .filter_map(|(path, stamp)| {
            expected
                .get(path)
                .filter(|e| e.is_file())
                .map(|e| (e.clone(), *stamp))
        })
        .collect();
    super::source::remember_installed(ctx, &h.tree, verified);
    tracing::info!(tree = %h.tree, files = stats.installed, bytes, "storage batch committed");
    Ok(ApplyResult {
        bytes: dec.len(),
        files: files - deferred.len() as u64,
        // What the batch was checked against: its entries, each file with its SHA-256.
        sha256: Sha256Digest::of(&h.expected).to_string(),
        changes: vec![],
        deferred,
    })
}

/// Why a storage batch's envelope as received does not prove it: the sender's seal is missing
/// or differs (a header, a long name, padding or a marker changed on the way).
fn unsealed(seal: Option<Sha256Digest>, received: Option<Sha256Digest>) -> Option<AgentError> {
    match (seal, received) {
        (Some(sent), Some(got)) if sent == got => None,
        (None, _) => Some(AgentError::DataLoss(
            "the storage stream's trailer carries no seal: the sending agent must be of the same protocol version (run `hostshift check`)".into(),
        )),
        (Some(sent), got) => Some(integrity(IntegrityError::Sealed {
            sent,
            received: got,
        })),
    }
}

async fn file<S>(ctx: &Arc<Ctx>, h: FileApply, mut frames: S) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    require(
        ctx,
        &ctx.config.allow.write_files,
        "write_files",
        "file",
        &h.name,
        &h.rollback_window,
    )?;
    let path = super::source::file_path(ctx, &h.name)?;
    let mut dec = FrameDecoder::new();
    let mut data: Vec<u8> = Vec::new();
    let digest = loop {
        match frames.next().await {
            None => return Err(integrity(IntegrityError::Truncated { got_len: dec.len() })),
            Some(Err(s)) => return Err(upstream(s)),
            Some(Ok(frame)) => match dec.accept(frame).map_err(integrity)? {
                Accepted::Data(b) => {
                    if data.len() + b.len() > MAX_INLINE {
                        return Err(AgentError::FailedPrecondition(format!(
                            "file {} is too large to copy whole",
                            h.name
                        )));
                    }
                    data.extend_from_slice(&b);
                }
                Accepted::End { digest, .. } => break digest,
            },
        }
    };
    let (bytes, changes) = files::apply_overrides(&data, &h.overrides)?;
    let mode = if h.mode == 0 { 0o640 } else { h.mode };
    crate::fsutil::write_atomic(&path, &bytes, mode, Some((h.uid, h.gid)))?;
    tracing::info!(file = %h.name, bytes = bytes.len(), overrides = changes.len(), "config file written");
    Ok(ApplyResult {
        bytes: data.len() as u64,
        files: 1,
        sha256: digest.map(|d| d.to_string()).unwrap_or_default(),
        changes,
        deferred: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_batch_commits_only_when_its_envelope_matches_the_senders_seal() {
        let (a, b) = (Sha256Digest::of(b"a"), Sha256Digest::of(b"b"));
        assert!(unsealed(Some(a), Some(a)).is_none());
        assert!(
            matches!(unsealed(Some(a), Some(b)), Some(AgentError::DataLoss(m)) if m.contains("seal"))
        );
        // No seal at all: an older sender, never taken as "nothing to check".
        assert!(
            matches!(unsealed(None, Some(a)), Some(AgentError::DataLoss(m)) if m.contains("protocol"))
        );
        assert!(matches!(
            unsealed(Some(a), None),
            Some(AgentError::DataLoss(_))
        ));
    }
}
