//! gRPC translation for `service Grants`, `service Source` and `service Target`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use hostshift_proto::v1::grants_server::Grants;
use hostshift_proto::v1::source_server::Source;
use hostshift_proto::v1::target_server::Target;
use hostshift_proto::v1::{
    ApplyEvent, ApplyMessage, ApplyResult, CompareStorageRequest, CompareStorageResponse,
    CreateGrantRequest, CreateGrantResponse, FileMetaResponse, FileRead, FinalizeStorageRequest,
    FinalizeStorageResponse, Frame, PlanStorageRequest, PlanStorageResponse, PullRequest,
    ReadRequest, RemoveLargeObjectsRequest, RemoveLargeObjectsResponse, RevokeGrantRequest,
    RevokeGrantResponse, apply_event, apply_message, read_request::What,
};
use hostshift_shared::identity::Identity;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{pull, session, sink, source};
use crate::Ctx;
use crate::error::AgentError;
use crate::storage;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .map_or_else(|| crate::auth::caller(req), Ok)
}

/// Serves `hostshift.v1.Grants` (coordinator only).
pub struct GrantsService {
    ctx: Arc<Ctx>,
}

impl GrantsService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Grants for GrantsService {
    async fn create(
        &self,
        req: Request<CreateGrantRequest>,
    ) -> Result<Response<CreateGrantResponse>, Status> {
        let r = req.into_inner();
        let mut selections = std::collections::HashMap::new();
        for s in &r.selections {
            selections.insert(s.database.clone(), super::db::selection(s)?);
        }
        let (token, expires_unix) = self.ctx.grants.create(
            &r.peer,
            r.scopes.clone(),
            selections,
            Duration::from_secs(r.ttl_secs),
        )?;
        tracing::info!(peer = %r.peer, scopes = ?r.scopes, "grant issued");
        Ok(Response::new(CreateGrantResponse {
            token,
            expires_unix,
        }))
    }

    async fn revoke(
        &self,
        req: Request<RevokeGrantRequest>,
    ) -> Result<Response<RevokeGrantResponse>, Status> {
        self.ctx.grants.revoke(&req.into_inner().token);
        Ok(Response::new(RevokeGrantResponse {}))
    }
}

/// Serves `hostshift.v1.Source` (coordinator, or a peer agent with a grant).
pub struct SourceService {
    ctx: Arc<Ctx>,
}

impl SourceService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Source for SourceService {
    type ReadStream = Boxed<Frame>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let rx = match r.what {
            Some(What::StorageFiles(s)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("storage:{}", s.tree))?;
                source::storage_files(&self.ctx, &s.tree, &s.entries)?
            }
            Some(What::File(f)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("file:{}", f.name))?;
                source::file(&self.ctx, &f.name).await?
            }
            Some(What::Manifest(m)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("storage:{}", m.tree))?;
                source::refuse_staging_names(&self.ctx, &m.tree)?;
                let manifest = source::manifest(&self.ctx, &m.tree, m.full).await?;
                source::framed_manifest(&self.ctx, manifest)
            }
            Some(What::DbGlobals(d)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("database:{}", d.database))?;
                super::db::read_globals(&self.ctx, &d).await?
            }
            Some(What::DbSchema(d)) => {
                let name = d
                    .selection
                    .as_ref()
                    .map(|s| s.database.clone())
                    .unwrap_or_default();
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("database:{name}"))?;
                let allowed = self.ctx.grants.selection(&who, &r.grant, &name)?;
                super::db::read_schema(&self.ctx, &d, &allowed).await?
            }
            Some(What::DbTable(d)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("database:{}", d.database))?;
                let allowed = self.ctx.grants.selection(&who, &r.grant, &d.database)?;
                super::db::read_table(&self.ctx, &d, &allowed).await?
            }
            Some(What::DbLargeObject(d)) => {
                self.ctx
                    .grants
                    .authorize(&who, &r.grant, &format!("database:{}", d.database))?;
                let allowed = self.ctx.grants.selection(&who, &r.grant, &d.database)?;
                if !allowed.includes_large_objects() {
                    return Err(AgentError::PermissionDenied(format!(
                        "{who}'s grant for database:{} selects some tables only ({}): large objects are not part of it",
                        d.database,
                        allowed.describe()
                    ))
                    .into());
                }
                super::db::read_large_object(&self.ctx, &d).await?
            }
            None => {
                return Err(
                    AgentError::InvalidArgument("read request names nothing".into()).into(),
                );
            }
        };
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn file_meta(
        &self,
        req: Request<FileRead>,
    ) -> Result<Response<FileMetaResponse>, Status> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        self.ctx
            .grants
            .authorize(&who, "", &format!("file:{name}"))?;
        Ok(Response::new(source::file_meta(&self.ctx, &name)?))
    }
}

/// Serves `hostshift.v1.Target` (coordinator only).
pub struct TargetService {
    ctx: Arc<Ctx>,
}

impl TargetService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[tonic::async_trait]
impl Target for TargetService {
    type PullStream = Boxed<ApplyEvent>;

    async fn pull(&self, req: Request<PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            let last = std::sync::Mutex::new(Instant::now());
            let ptx = tx.clone();
            let progress = move |bytes: u64| {
                if let Ok(mut l) = last.lock()
                    && l.elapsed() >= PROGRESS_EVERY
                {
                    *l = Instant::now();
                    let _ = ptx.try_send(Ok(ApplyEvent {
                        kind: Some(apply_event::Kind::Progress(bytes)),
                    }));
                }
            };
            let result = pull::pull(&ctx, r, &progress).await;
            let ev = result
                .map(|res| ApplyEvent {
                    kind: Some(apply_event::Kind::Result(res)),
                })
                .map_err(Status::from);
            let _ = tx.send(ev).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn apply(
        &self,
        req: Request<Streaming<ApplyMessage>>,
    ) -> Result<Response<ApplyResult>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(ApplyMessage {
                kind: Some(apply_message::Kind::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first apply message must be the header",
                ));
            }
        };
        let frames = stream.map(|m| match m {
            Ok(ApplyMessage {
                kind: Some(apply_message::Kind::Frame(f)),
            }) => Ok(f),
            Ok(_) => Err(Status::invalid_argument(
                "only frames may follow the apply header",
            )),
            Err(s) => Err(s),
        });
        // Applied in a tracked task, not in this handler: if the coordinator goes away, tonic
        // drops the handler, but the task still sees the broken stream and throws away what it
        // staged instead of leaving it behind.
        let ctx = self.ctx.clone();
        let task = self
            .ctx
            .tasks
            .spawn(async move { sink::apply(&ctx, header, Box::pin(frames), &|_| {}).await });
        let res = task
            .await
            .map_err(|e| Status::internal(format!("apply task: {e}")))??;
        Ok(Response::new(res))
    }

    async fn compare_storage(
        &self,
        req: Request<CompareStorageRequest>,
    ) -> Result<Response<CompareStorageResponse>, Status> {
        let mut r = req.into_inner();
        let ctx = &self.ctx;
        let relayed = std::mem::take(&mut r.source_manifest);
        // A session of its own, removed when the comparison ends (or expired).
        let session = match &r.source {
            Some(_) => {
                let id = format!("compare-{}-{}", std::process::id(), next_compare());
                Some(session::dir(ctx, &id)?)
            }
            None => None,
        };
        // The old host's walk and this host's run at once (as in a plan): a full comparison
        // reads every file on both hosts.
        let fetched = async {
            match (&r.source, &session) {
                (Some(peer), Some(dir)) => {
                    session::fetch(ctx, peer, &r.source_tree, r.full, dir).await?;
                    Ok(session::manifest_file(dir))
                }
                _ => Ok::<_, AgentError>(session::SourceManifest::Bytes(relayed.into())),
            }
        };
        // The first failure answers at once (an unreachable old agent does not wait for this
        // host's walk).
        let both = tokio::try_join!(fetched, source::manifest(ctx, &r.tree, r.full));
        let compared = match both {
            Ok((src, target)) => {
                tokio::task::spawn_blocking(move || session::compare(&src, &target))
                    .await
                    .map_err(|e| AgentError::Internal(format!("compare task: {e}")))
                    .and_then(|c| c)
            }
            Err(e) => Err(e),
        };
        if let Some(dir) = session {
            session::remove(&dir);
        }
        Ok(Response::new(compared?))
    }

    async fn plan_storage(
        &self,
        req: Request<PlanStorageRequest>,
    ) -> Result<Response<PlanStorageResponse>, Status> {
        let mut r = req.into_inner();
        let ctx = &self.ctx;
        let relayed = std::mem::take(&mut r.source_manifest);
        // The old host's manifest comes while this host walks its own tree: the two walks
        // (one per host) overlap instead of adding up.
        let fetched = async {
            Ok::<_, AgentError>(match &r.source {
                Some(peer) => {
                    session::expire(ctx);
                    let dir = session::dir(ctx, &r.session)?;
                    session::fetch(ctx, peer, &r.source_tree, false, &dir).await?;
                    (session::manifest_file(&dir), Some(dir))
                }
                None => (session::SourceManifest::Bytes(relayed.into()), None),
            })
        };
        // The first failure answers at once (an unreachable old agent does not wait for this
        // host's walk).
        let ((src, batches_dir), target) =
            tokio::try_join!(fetched, source::manifest(ctx, &r.tree, false))?;
        let limits = session::Limits {
            bytes: r.batch_bytes,
            files: r.batch_files,
        };
        let delete = r.delete_extraneous;
        let dir = batches_dir.clone();
        let planned = tokio::task::spawn_blocking(move || {
            session::plan(&src, &target, delete, limits, dir.as_deref())
        })
        .await
        .map_err(|e| Status::internal(format!("plan task: {e}")))??;
        if let Some(dir) = &batches_dir {
            if planned.batches.is_empty() && planned.delta.is_empty() {
                // Equal trees: the coordinator calls nothing more for this session.
                session::remove(dir);
            } else {
                // The prepare step, next, acts on this very delta instead of walking again.
                session::remember_plan(&r.session, &r.tree, &planned.delta, planned.to_send);
            }
        }
        if !planned.unknown_owners.is_empty() {
            tracing::warn!(tree = %r.tree, unknown = ?planned.unknown_owners, "owners unknown on this host: their files keep the old host's numeric ids");
        }
        enough_space(ctx, &r.tree, planned.to_send, planned.delta.bytes_to_send)?;
        Ok(Response::new(PlanStorageResponse {
            batches: planned.batches,
            unchanged_files: planned.unchanged_files,
            unchanged_bytes: planned.unchanged_bytes,
            dirs: planned.delta.dirs.len() as u64,
            meta: planned.delta.meta.len() as u64,
            delete: planned.delta.delete.len() as u64,
            bytes_to_send: planned.delta.bytes_to_send,
            files_to_send: planned.to_send,
            first_paths: planned.first_paths,
        }))
    }

    async fn finalize_storage(
        &self,
        req: Request<FinalizeStorageRequest>,
    ) -> Result<Response<FinalizeStorageResponse>, Status> {
        let r = req.into_inner();
        let ctx = &self.ctx;
        super::guard::require(
            ctx,
            &ctx.config.allow.write_storage,
            "write_storage",
            "storage tree",
            &r.tree,
            &r.rollback_window,
        )?;
        let root = ctx.storage(&r.tree)?.path.clone();
        std::fs::create_dir_all(&root).map_err(|e| AgentError::io("create", &root, e))?;
        let (src, session_dir) = if r.session.is_empty() {
            (
                session::SourceManifest::Bytes(r.source_manifest.into()),
                None,
            )
        } else {
            let dir = session::dir(ctx, &r.session)?;
            (session::manifest_file(&dir), Some(dir))
        };
        if let (Some(dir), session::SourceManifest::File(f)) = (&session_dir, &src)
            && !f.exists()
        {
            return Err(AgentError::FailedPrecondition(format!(
                "storage session {} is gone ({}): it was finalized or expired; sync again to plan anew",
                r.session,
                dir.display()
            ))
            .into());
        }
        // Right after a plan both steps act on the plan's delta: the prepare step on its
        // directories and deletions, the final step on its directories and attributes, checking
        // only the entries the batches sent instead of walking and diffing the whole tree again
        // (`session::landed`). Without a kept plan (`--relay`, or an agent restarted since) they
        // walk and diff.
        let deferred: std::collections::HashSet<Vec<u8>> = r.deferred.into_iter().collect();
        let planned = session::planned(&r.session, &r.tree, !r.prepare_only);
        let (delta, undeferred) = match (planned, &session_dir) {
            (Some(delta), _) if r.prepare_only => (delta, 0),
            (Some(delta), Some(dir)) => {
                let (dir, root) = (dir.clone(), root.clone());
                let undeferred =
                    tokio::task::spawn_blocking(move || session::landed(&dir, &root, &deferred))
                        .await
                        .map_err(|e| Status::internal(format!("check task: {e}")))??;
                (delta, undeferred)
            }
            _ => {
                let target = source::manifest(ctx, &r.tree, false).await?;
                // Files the batches deferred stay different until the next pass: not a reason
                // to refuse (verify still reports them; the next sync or the cutover's delta
                // sends them).
                let delete = r.delete_extraneous;
                tokio::task::spawn_blocking(move || {
                    session::finalize_delta(&src, &target, delete, &deferred)
                })
                .await
                .map_err(|e| Status::internal(format!("diff task: {e}")))??
            }
        };
        if r.prepare_only {
            // Staging folders left by a sync that was killed: nothing in them was committed.
            let stale_root = root.clone();
            let stale =
                tokio::task::spawn_blocking(move || storage::remove_stale_staging(&stale_root))
                    .await
                    .map_err(|e| Status::internal(format!("cleanup task: {e}")))?
                    .map_err(AgentError::from)?;
            if !stale.is_empty() {
                tracing::info!(tree = %r.tree, removed = stale.len(), "removed staging folders of an interrupted sync");
            }
            let stats = tokio::task::spawn_blocking(move || {
                storage::prepare(&root, &delta.dirs, &delta.delete)
            })
            .await
            .map_err(|e| Status::internal(format!("prepare task: {e}")))?
            .map_err(AgentError::from)?;
            return Ok(Response::new(FinalizeStorageResponse {
                dirs: stats.dirs_created,
                meta: 0,
                deleted: stats.deleted,
            }));
        }
        if undeferred > 0 {
            return Err(AgentError::FailedPrecondition(format!(
                "{undeferred} files of tree {} still differ from the source: sync them before finalizing",
                r.tree
            ))
            .into());
        }

        let stats = tokio::task::spawn_blocking(move || {
            storage::finalize(&root, &delta.dirs, &delta.meta, &delta.delete)
        })
        .await
        .map_err(|e| Status::internal(format!("finalize task: {e}")))?
        .map_err(AgentError::from)?;
        if let Some(dir) = session_dir {
            session::remove(&dir);
        }
        // No walk to refresh the cached manifest here: the files just installed are remembered
        // beside it (`remember_installed`), and the next walk — the proof's, the next sync's —
        // trusts them without reading them. A walk here only cost the caller its time (inside
        // the cutover's write freeze, a walk of the whole tree).
        Ok(Response::new(FinalizeStorageResponse {
            dirs: stats.dirs_created,
            meta: stats.meta_fixed,
            deleted: stats.deleted,
        }))
    }

    async fn remove_large_objects(
        &self,
        req: Request<RemoveLargeObjectsRequest>,
    ) -> Result<Response<RemoveLargeObjectsResponse>, Status> {
        let r = req.into_inner();
        let removed =
            super::db::remove_large_objects(&self.ctx, &r.database, &r.oids, &r.rollback_window)
                .await?;
        Ok(Response::new(RemoveLargeObjectsResponse { removed }))
    }
}

/// Bytes a staged file may take beyond its size (its last block, its inode).
const PER_FILE_OVERHEAD: u64 = 4096;
/// Refuses a plan whose files cannot fit on the tree's file system, before anything is written
/// (a sync that ran into ENOSPC midway left folders behind). A replaced file's old copy is freed
/// only after the new one is staged and renamed, so every byte to send counts in full.
///
/// # Errors
/// `FailedPrecondition` with the sizes and what to do.
fn enough_space(ctx: &Ctx, tree: &str, files: u64, bytes: u64) -> Result<(), AgentError> {
    if files == 0 {
        return Ok(());
    }
    let root = &ctx.storage(tree)?.path;
    let needed = bytes + PER_FILE_OVERHEAD * files;
    let Ok((free, _)) = crate::agent_info::disk::fs_usage(root) else {
        return Ok(());
    };
    if free >= needed {
        return Ok(());
    }
    Err(AgentError::FailedPrecondition(format!(
        "tree {tree}: {files} files need about {} on {}, but only {} is free there; nothing was \
         written: free space or grow the volume on the new host, then sync again",
        mib(needed),
        root.display(),
        mib(free)
    )))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Numbers the comparisons of this process (their session names).
fn next_compare() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
