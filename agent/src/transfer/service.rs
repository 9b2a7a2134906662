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
    ReadRequest, RevokeGrantRequest, RevokeGrantResponse, StorageBatch, apply_event, apply_message,
    read_request::What,
};
use hostshift_shared::identity::Identity;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{pull, sink, source};
use crate::Ctx;
use crate::error::AgentError;
use crate::storage::{self, Manifest};

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
                source::framed_bytes(manifest.encode())
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
        let r = req.into_inner();
        let mut source_manifest = Manifest::decode(
            &r.source_manifest,
            std::path::Path::new("<source manifest>"),
        )
        .map_err(AgentError::from)?;
        let unknown_owners = source_manifest.localize_owners(storage::carries_owners());
        let target = source::manifest(&self.ctx, &r.tree, r.full).await?;
        let mut c = compare(&source_manifest, &target);
        c.unknown_owners = unknown_owners;
        Ok(Response::new(c))
    }

    async fn plan_storage(
        &self,
        req: Request<PlanStorageRequest>,
    ) -> Result<Response<PlanStorageResponse>, Status> {
        let r = req.into_inner();
        let ctx = &self.ctx;
        let mut source_manifest = Manifest::decode(
            &r.source_manifest,
            std::path::Path::new("<source manifest>"),
        )
        .map_err(AgentError::from)?;
        let unknown_owners = source_manifest.localize_owners(storage::carries_owners());
        let target = source::manifest(ctx, &r.tree, false).await?;
        if !unknown_owners.is_empty() {
            tracing::warn!(tree = %r.tree, unknown = ?unknown_owners, "owners unknown on this host: their files keep the old host's numeric ids");
        }
        let delta = storage::diff(&source_manifest, &target, r.delete_extraneous);
        enough_space(ctx, &r.tree, &delta)?;
        let batch_bytes = r.batch_bytes.max(1);
        let batch_files = r.batch_files.max(1);
        let mut batches = Vec::new();
        let mut cur: Vec<storage::Entry> = Vec::new();
        let mut cur_bytes = 0u64;
        let close = |cur: &mut Vec<storage::Entry>,
                     cur_bytes: &mut u64,
                     out: &mut Vec<StorageBatch>|
         -> Result<(), AgentError> {
            if cur.is_empty() {
                return Ok(());
            }
            let entries = std::mem::take(cur);
            let paths = entries.iter().map(|e| e.path.as_bytes().to_vec()).collect();
            let expected = Manifest::new(entries)?.encode();
            out.push(StorageBatch {
                paths,
                expected,
                bytes: *cur_bytes,
            });
            *cur_bytes = 0;
            Ok(())
        };
        for e in &delta.send {
            cur_bytes += e.size;
            cur.push(e.clone());
            if cur_bytes >= batch_bytes || cur.len() as u64 >= batch_files {
                close(&mut cur, &mut cur_bytes, &mut batches)?;
            }
        }
        close(&mut cur, &mut cur_bytes, &mut batches)?;
        let sent: std::collections::HashSet<&storage::RelPath> =
            delta.send.iter().map(|e| &e.path).collect();
        let unchanged: Vec<&storage::Entry> = source_manifest
            .entries()
            .iter()
            .filter(|e| e.is_file() && !sent.contains(&e.path))
            .collect();
        Ok(Response::new(PlanStorageResponse {
            batches,
            unchanged_files: unchanged.len() as u64,
            unchanged_bytes: unchanged.iter().map(|e| e.size).sum(),
            dirs: delta.dirs.len() as u64,
            meta: delta.meta.len() as u64,
            delete: delta.delete.len() as u64,
            bytes_to_send: delta.bytes_to_send,
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
        )?;
        let root = ctx.storage(&r.tree)?.path.clone();
        std::fs::create_dir_all(&root).map_err(|e| AgentError::io("create", &root, e))?;
        let mut source_manifest = Manifest::decode(
            &r.source_manifest,
            std::path::Path::new("<source manifest>"),
        )
        .map_err(AgentError::from)?;
        source_manifest.localize_owners(storage::carries_owners());
        let target = source::manifest(ctx, &r.tree, false).await?;
        let delta = storage::diff(&source_manifest, &target, r.delete_extraneous);
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
        // Files the batches deferred stay different until the next pass: not a reason to
        // refuse (verify still reports them; the next sync or the cutover's delta sends them).
        let deferred: std::collections::HashSet<&[u8]> =
            r.deferred.iter().map(Vec::as_slice).collect();
        let undeferred = delta
            .send
            .iter()
            .filter(|e| !deferred.contains(&e.path.as_bytes()))
            .count();
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
        // The tree changed: refresh the cached manifest.
        let _ = source::manifest(ctx, &r.tree, false).await;
        Ok(Response::new(FinalizeStorageResponse {
            dirs: stats.dirs_created,
            meta: stats.meta_fixed,
            deleted: stats.deleted,
        }))
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
fn enough_space(ctx: &Ctx, tree: &str, delta: &storage::Delta) -> Result<(), AgentError> {
    if delta.send.is_empty() {
        return Ok(());
    }
    let root = &ctx.storage(tree)?.path;
    let needed = delta.bytes_to_send + PER_FILE_OVERHEAD * delta.send.len() as u64;
    let Ok((free, _)) = crate::agent_info::disk::fs_usage(root) else {
        return Ok(());
    };
    if free >= needed {
        return Ok(());
    }
    Err(AgentError::FailedPrecondition(format!(
        "tree {tree}: {} files need about {} on {}, but only {} is free there; nothing was \
         written: free space or grow the volume on the new host, then sync again",
        delta.send.len(),
        mib(needed),
        root.display(),
        mib(free)
    )))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The differences between two manifests, for people: what is missing on this side, what
/// differs in content, what only this side has, and what differs only in mode or mtime.
pub fn compare(source: &Manifest, target: &Manifest) -> CompareStorageResponse {
    let show = |p: &storage::RelPath| String::from_utf8_lossy(p.as_bytes()).into_owned();
    let delta = storage::diff(source, target, true);
    let in_target: std::collections::HashSet<&storage::RelPath> =
        target.entries().iter().map(|e| &e.path).collect();
    let (mut missing, mut changed) = (Vec::new(), Vec::new());
    for e in &delta.send {
        if in_target.contains(&e.path) {
            changed.push(show(&e.path));
        } else {
            missing.push(show(&e.path));
        }
    }
    for d in &delta.dirs {
        if !in_target.contains(&d.path) {
            missing.push(show(&d.path));
        }
    }
    let extra = delta.delete.iter().map(|e| show(&e.path)).collect();
    let mut metadata: Vec<String> = delta.meta.iter().map(|m| show(&m.path)).collect();
    // A directory's mtime moves whenever an entry is added or removed in it (an extra file the
    // plan keeps, a changed file being replaced), and its listing is compared entry by entry
    // anyway: for directories only the mode counts. `delta.dirs` also lists directories whose
    // attributes match but whose listing the sync would change, so look at the entries.
    let target_dirs: std::collections::HashMap<&storage::RelPath, u32> = target
        .entries()
        .iter()
        .filter(|e| e.kind == storage::Kind::Dir)
        .map(|e| (&e.path, e.mode))
        .collect();
    metadata.extend(
        source
            .entries()
            .iter()
            .filter(|e| e.kind == storage::Kind::Dir)
            .filter(|e| target_dirs.get(&e.path).is_some_and(|m| *m != e.mode))
            .map(|e| show(&e.path)),
    );
    metadata.sort();
    let owner = owner_differences(source, target);
    CompareStorageResponse {
        missing,
        changed,
        extra,
        metadata,
        files: target.entries().iter().filter(|e| e.is_file()).count() as u64,
        bytes: target.file_bytes(),
        manifest_sha256: hostshift_shared::digest::Sha256Digest::of(&target.encode()).to_string(),
        source_files: source.entries().iter().filter(|e| e.is_file()).count() as u64,
        source_bytes: source.file_bytes(),
        owner,
        unknown_owners: Vec::new(),
    }
}

/// Paths present on both sides whose tracked owner or group differs, shown with names.
fn owner_differences(source: &Manifest, target: &Manifest) -> Vec<String> {
    let name = |m: &Manifest, o: storage::Owner| {
        let n = m.owner_names();
        format!(
            "{}:{}",
            n.users
                .get(&o.uid)
                .cloned()
                .unwrap_or_else(|| o.uid.to_string()),
            n.groups
                .get(&o.gid)
                .cloned()
                .unwrap_or_else(|| o.gid.to_string())
        )
    };
    source
        .entries()
        .iter()
        .filter_map(|s| {
            let want = s.owner?;
            let have = target.get(&s.path)?.owner?;
            (want != have).then(|| {
                format!(
                    "{} (old {}, new {})",
                    String::from_utf8_lossy(s.path.as_bytes()),
                    name(source, want),
                    name(target, have)
                )
            })
        })
        .collect()
}
