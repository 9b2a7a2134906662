//! gRPC translation for `service Backup`. Every operation runs as a task the agent tracks, with a
//! cancellation token that fires on shutdown or when the caller goes away (a dropped unary call
//! or a closed stream), so a cancelled RPC stops its `pg_dump`/`pg_restore` and cleans up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use futures::Stream;
use hostshift_proto::v1::backup_server::Backup;
use hostshift_proto::v1::{
    ArtifactProblem, BackupArtifact, BackupEvent, BackupProgress, BackupSummary, BackupVerdict,
    CreateBackupRequest, CreateBackupResult, KeptBackup, ListBackupsRequest, ListBackupsResponse,
    PruneBackupsRequest, PruneBackupsResponse, RestoreBackupRequest, RestoreBackupResponse,
    RestoredItem, UploadBackupRequest, UploadBackupResponse, UploadedObject, VerifyBackupRequest,
    VerifyBackupResponse, backup_event::Event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::flow;
use super::retention::PruneReport;
use super::s3::UploadReport;
use super::selection::{Progress, Selection};
use super::{BackupManifest, restore, retention, s3};
use crate::Ctx;
use crate::error::AgentError;

/// Events buffered for a slow client (each is a few hundred bytes).
const EVENT_QUEUE: usize = 16;

/// Serves `hostshift.v1.Backup`.
pub struct BackupService {
    ctx: Arc<Ctx>,
}

impl BackupService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// Runs `work` as a tracked task; dropping the RPC (the caller went away) cancels it.
    async fn tracked<T, F, Fut>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce(Arc<Ctx>, CancellationToken) -> Fut,
        Fut: Future<Output = Result<T, AgentError>> + Send + 'static,
        T: Send + 'static,
    {
        let cancel = self.ctx.shutdown.child_token();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let task = self
            .ctx
            .tasks
            .spawn(work(self.ctx.clone(), cancel).in_current_span());
        task.await
            .map_err(|e| Status::internal(format!("backup task failed: {e}")))?
            .map_err(Status::from)
    }
}

/// A manifest as the proto's summary.
pub fn summary(m: &BackupManifest, path: &std::path::Path) -> BackupSummary {
    BackupSummary {
        id: m.id.clone(),
        path: path.display().to_string(),
        created_at: m.created_at.clone(),
        hostname: m.hostname.clone(),
        total_bytes: m.total_bytes(),
        artifacts: m
            .artifacts
            .iter()
            .map(|a| BackupArtifact {
                kind: a.kind.as_str().into(),
                name: a.name.clone(),
                file: a.file.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        state: "complete".into(),
        problem: String::new(),
    }
}

fn upload_response(r: UploadReport) -> UploadBackupResponse {
    UploadBackupResponse {
        bucket: r.bucket,
        key_prefix: r.key_prefix,
        bytes: r.bytes,
        objects: r
            .objects
            .into_iter()
            .map(|o| UploadedObject {
                key: o.key,
                size: o.size,
                sha256: o.sha256,
                multipart: o.multipart,
            })
            .collect(),
    }
}

fn prune_response(r: PruneReport) -> PruneBackupsResponse {
    PruneBackupsResponse {
        deleted: r.deleted,
        kept: r
            .kept
            .into_iter()
            .map(|(id, why)| KeptBackup {
                id,
                reasons: why.into_iter().map(String::from).collect(),
            })
            .collect(),
        stale_removed: r.stale_removed,
    }
}

fn progress_event(p: Progress) -> BackupEvent {
    let (kind, name, phase, bytes) = match p {
        Progress::Started(k, n) => (k, n, "started", 0),
        Progress::Done(k, n, b) => (k, n, "done", b),
    };
    BackupEvent {
        event: Some(Event::Progress(BackupProgress {
            kind: kind.as_str().into(),
            name,
            phase: phase.into(),
            bytes,
        })),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<BackupEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Backup for BackupService {
    type CreateStream = EventStream;

    async fn create(
        &self,
        req: Request<CreateBackupRequest>,
    ) -> Result<Response<Self::CreateStream>, Status> {
        let r = req.into_inner();
        let c = &self.ctx.config;
        let sel = if r.everything {
            Selection::everything(c)
        } else {
            Selection::named(c, &self.ctx.config_path, &r.databases, &r.storage, &r.files)?
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let ctx = self.ctx.clone();
        let cancel = ctx.shutdown.child_token();
        self.ctx.tasks.spawn(async move {
            let (ptx, mut prx) = mpsc::channel(EVENT_QUEUE);
            let done = CancellationToken::new();
            let work = async {
                let r = flow::run(&ctx.config, &sel, &ptx, &cancel).await;
                drop(ptx);
                done.cancel();
                r
            };
            let forward = async {
                while let Some(p) = prx.recv().await {
                    if tx.send(Ok(progress_event(p))).await.is_err() {
                        cancel.cancel();
                    }
                }
            };
            // A caller that goes away mid-dump cancels the backup (its staging folder is removed).
            let watch = async {
                tokio::select! {
                    () = tx.closed() => cancel.cancel(),
                    () = done.cancelled() => {}
                }
            };
            let (result, (), ()) = tokio::join!(work, forward, watch);
            let last = result.map_err(Status::from).map(|o| {
                let (pruned, prune_error) = match o.pruned {
                    Some(Ok(p)) => (p.deleted, String::new()),
                    Some(Err(e)) => (vec![], e.to_string()),
                    None => (vec![], String::new()),
                };
                let (upload, upload_error) = match o.upload {
                    Some(Ok(u)) => (Some(upload_response(u)), String::new()),
                    Some(Err(e)) => (None, e.to_string()),
                    None => (None, String::new()),
                };
                BackupEvent {
                    event: Some(Event::Done(CreateBackupResult {
                        backup: Some(summary(&o.created.manifest, &o.created.path)),
                        duration_ms: u64::try_from(o.duration.as_millis()).unwrap_or(u64::MAX),
                        pruned,
                        upload,
                        upload_error,
                        prune_error,
                    })),
                }
            });
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        _req: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let dir = self.ctx.config.backup.dir.clone();
        let (listed, incomplete) = self
            .tracked(
                move |_, c| async move { super::blocking(&c, move |_| super::list(&dir)).await },
            )
            .await?;
        let backups = listed
            .into_iter()
            .map(|l| {
                let path = self.ctx.config.backup.dir.join(&l.id);
                match l.manifest {
                    Ok(m) => summary(&m, &path),
                    Err(problem) => BackupSummary {
                        id: l.id,
                        path: path.display().to_string(),
                        state: "unreadable".into(),
                        problem: problem.to_string(),
                        ..BackupSummary::default()
                    },
                }
            })
            .collect();
        Ok(Response::new(ListBackupsResponse {
            backups,
            dir: self.ctx.config.backup.dir.display().to_string(),
            incomplete,
        }))
    }

    async fn verify(
        &self,
        req: Request<VerifyBackupRequest>,
    ) -> Result<Response<VerifyBackupResponse>, Status> {
        let id = req.into_inner().id;
        let dir = self.ctx.config.backup.dir.clone();
        let verdicts = self
            .tracked(move |_, cancel| async move {
                let ids = if id.is_empty() {
                    let d = dir.clone();
                    super::blocking(&cancel, move |_| super::list(&d))
                        .await?
                        .0
                        .into_iter()
                        .map(|l| l.id)
                        .collect()
                } else {
                    super::existing(&dir, &id)?;
                    vec![id]
                };
                let mut out = Vec::new();
                for id in ids {
                    let path = dir.join(&id);
                    out.push(
                        super::blocking(&cancel, move |c| super::verify::verify(&path, c)).await?,
                    );
                }
                Ok(out)
            })
            .await?;
        let verdicts = verdicts
            .into_iter()
            .map(|v| BackupVerdict {
                ok: v.ok(),
                id: v.id,
                bytes_checked: v.bytes_checked,
                problems: v
                    .problems
                    .into_iter()
                    .map(|(file, problem)| ArtifactProblem { file, problem })
                    .collect(),
            })
            .collect();
        Ok(Response::new(VerifyBackupResponse { verdicts }))
    }

    async fn restore(
        &self,
        req: Request<RestoreBackupRequest>,
    ) -> Result<Response<RestoreBackupResponse>, Status> {
        let r = req.into_inner();
        let started = Instant::now();
        let id = r.id.clone();
        let wanted = restore::Wanted {
            databases: r.databases,
            storage: r.storage,
            files: r.files,
            no_owner: r.no_owner,
        };
        let done = self
            .tracked(move |ctx, cancel| async move {
                restore::restore(&ctx.config, &ctx.config_path, &id, &wanted, &cancel).await
            })
            .await?;
        Ok(Response::new(RestoreBackupResponse {
            id: r.id,
            restored: done
                .into_iter()
                .map(|d| RestoredItem {
                    kind: d.kind.as_str().into(),
                    name: d.name,
                    detail: d.detail,
                })
                .collect(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn prune(
        &self,
        _req: Request<PruneBackupsRequest>,
    ) -> Result<Response<PruneBackupsResponse>, Status> {
        let report = self
            .tracked(
                |ctx, cancel| async move { retention::prune(&ctx.config.backup, &cancel).await },
            )
            .await?;
        Ok(Response::new(prune_response(report)))
    }

    async fn upload(
        &self,
        req: Request<UploadBackupRequest>,
    ) -> Result<Response<UploadBackupResponse>, Status> {
        let id = req.into_inner().id;
        let report = self
            .tracked(move |ctx, cancel| async move {
                s3::upload_backup(&ctx.config, &ctx.config_path, &id, &cancel).await
            })
            .await?;
        Ok(Response::new(upload_response(report)))
    }
}
