//! gRPC translation for `service Follow`. `Changes` accepts the peer agent holding the follow
//! grant; every other call the coordinator only.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hostshift_proto::v1::follow_server::Follow;
use hostshift_proto::v1::{
    AnchorRequest, AnchorResponse, ChangeBatch, ChangeRow, ChangesRequest, DropFollowRequest,
    DropFollowResponse, FollowStatusRequest, FollowStatusResponse, ForgetFollowRequest,
    ForgetFollowResponse, PrepareFollowRequest, PrepareFollowResponse, SourceStatusRequest,
    SourceStatusResponse, StartFollowRequest, StartFollowResponse, StopFollowRequest,
    StopFollowResponse,
};
use hostshift_shared::identity::{Identity, Role};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::store::{self, TargetRecord};
use super::{apply, follower, source};
use crate::Ctx;
use crate::error::AgentError;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `hostshift.v1.Follow`.
pub struct FollowService {
    ctx: Arc<Ctx>,
}

impl FollowService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .map_or_else(|| crate::auth::caller(req), Ok)
}

#[allow(clippy::result_large_err)]
fn coordinator<T>(req: &Request<T>) -> Result<(), Status> {
    let id = caller(req)?;
    if id.role == Role::Coordinator {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{id} may not control following: only the coordinator's certificate may"
        )))
    }
}

#[tonic::async_trait]
impl Follow for FollowService {
    type ChangesStream = Boxed<ChangeBatch>;

    async fn prepare(
        &self,
        req: Request<PrepareFollowRequest>,
    ) -> Result<Response<PrepareFollowResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        let sel = r
            .selection
            .ok_or_else(|| Status::invalid_argument("prepare without a database selection"))?;
        let selection = crate::transfer::db::selection(&sel)?;
        // The rollback window's anchor (see `coordinator/src/window`): a snapshot taken *before*
        // the slot exists. Everything it sees is on the other host already; every transaction
        // committing after the slot's consistent point is applied there.
        let before = if r.anchor_now {
            Some(source::current_snapshot(&self.ctx, &sel.database).await?)
        } else {
            None
        };
        let insert_only = if r.anchor_now {
            super::window::prepare_insert_only(&self.ctx, &sel.database, &selection, &r.id).await?
        } else {
            None
        };
        let (mut rec, created) =
            source::prepare(&self.ctx, &sel.database, &selection, &r.id, &r.peer).await?;
        if let Some(ins) = insert_only {
            // The peek reads both (pgoutput's publication_names is a list).
            rec.publication = format!("{},{ins}", rec.publication);
            store::save_source(&self.ctx, &rec)?;
        }
        if let Some(snapshot) = before {
            source::note_snapshot(&self.ctx, &sel.database, &snapshot);
        }
        let followed = Vec::new();
        Ok(Response::new(PrepareFollowResponse {
            slot: rec.slot,
            publication: rec.publication,
            token: rec.token,
            followed,
            not_followed: rec.not_followed,
            created,
        }))
    }

    async fn anchor(
        &self,
        req: Request<AnchorRequest>,
    ) -> Result<Response<AnchorResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        if r.now {
            let snapshot = source::current_snapshot(&self.ctx, &r.database).await?;
            source::set_anchor(&self.ctx, &r.database, &snapshot)?;
            return Ok(Response::new(AnchorResponse {
                pg_snapshot: snapshot,
                taken_now: true,
            }));
        }
        Ok(Response::new(AnchorResponse {
            pg_snapshot: source::anchor(&self.ctx, &r.database)?.unwrap_or_default(),
            taken_now: false,
        }))
    }

    async fn changes(
        &self,
        req: Request<ChangesRequest>,
    ) -> Result<Response<Self::ChangesStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let record = source::authorize(&self.ctx, &who, &r.database, &r.token)?;
        let (tx, rx) = mpsc::channel(source::ROW_QUEUE);
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            let err_tx = tx.clone();
            if let Err(e) = source::changes(&ctx, &record, r.confirm_lsn, r.max_changes, tx).await
                && !matches!(e, AgentError::Cancelled)
            {
                let _ = err_tx.send(Err(e)).await;
            }
        });
        let stream = ReceiverStream::new(rx).map(|item| {
            item.map(|(wal, rows)| ChangeBatch {
                rows: rows
                    .into_iter()
                    .map(|(lsn, xid, data)| ChangeRow { lsn, xid, data })
                    .collect(),
                wal_lsn: wal,
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn source_status(
        &self,
        req: Request<SourceStatusRequest>,
    ) -> Result<Response<SourceStatusResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        let s = source::status(&self.ctx, &r.database, &r.id, r.flush).await?;
        Ok(Response::new(SourceStatusResponse {
            slot_exists: s.slot_exists,
            current_lsn: s.current_lsn,
            confirmed_lsn: s.confirmed_lsn,
            retained_bytes: s.retained_bytes,
            publication_exists: s.publication_exists,
            wal_level: s.wal_level,
            grant_exists: s.grant_exists,
            not_followed: s.not_followed,
            follow_allowed: s.follow_allowed,
        }))
    }

    async fn drop(
        &self,
        req: Request<DropFollowRequest>,
    ) -> Result<Response<DropFollowResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        self.ctx.database(&r.database)?;
        let (dropped_slot, dropped_publication, restored_identities) =
            source::drop_follow(&self.ctx, &r.database, &r.id).await?;
        // The rollback window's insert-only publication, if any.
        super::window::drop_insert_only(&self.ctx, &r.database, &r.id).await?;
        Ok(Response::new(DropFollowResponse {
            dropped_slot,
            dropped_publication,
            restored_identities,
        }))
    }

    async fn start(
        &self,
        req: Request<StartFollowRequest>,
    ) -> Result<Response<StartFollowResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        let db = self.ctx.database(&r.database)?;
        apply::Anchor::parse(&r.pg_snapshot)?;
        source::object_name(&r.id)?;
        if !self
            .ctx
            .config
            .allow
            .restore_databases
            .iter()
            .any(|d| d == &r.database)
        {
            return Err(AgentError::PermissionDenied(format!(
                "following writes into database {} on this host, which its agent's config does not allow: add it to [allow] restore_databases in {}",
                r.database,
                self.ctx.config_path.display()
            ))
            .into());
        }
        // Check the rights to apply (origin functions, replica mode) before anything is persisted.
        let client = crate::postgres::connect::connect(db).await?;
        let direction = if r.rollback_window {
            super::Direction::Window
        } else {
            super::Direction::Forward
        };
        apply::ensure_origin(&client, &r.database, &super::origin_name(&r.id), direction).await?;
        drop(client);
        let record = TargetRecord {
            database: r.database,
            source_database: r.source_database,
            source_address: r.source_address,
            source_tls_name: r.source_tls_name,
            token: r.token,
            id: r.id,
            pg_snapshot: r.pg_snapshot,
            not_followed: r.not_followed,
            state: "following".into(),
            error: String::new(),
            direction,
        };
        store::save_target(&self.ctx, &record)?;
        tracing::info!(database = %record.database, "follower started");
        follower::spawn(&self.ctx, record).await?;
        Ok(Response::new(StartFollowResponse {}))
    }

    async fn status(
        &self,
        req: Request<FollowStatusRequest>,
    ) -> Result<Response<FollowStatusResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        self.ctx.database(&r.database)?;
        let Some(rec) = store::target(&self.ctx, &r.database)? else {
            return Ok(Response::new(FollowStatusResponse::default()));
        };
        if r.wake {
            self.ctx.followers.wake(&r.database);
        }
        let live = self.ctx.followers.live(&r.database);
        let mut out = FollowStatusResponse {
            configured: true,
            state: rec.state.clone(),
            error: rec.error.clone(),
            not_followed: rec.not_followed.clone(),
            source_database: rec.source_database.clone(),
            ..FollowStatusResponse::default()
        };
        if let Some(l) = live {
            if rec.state == "following" {
                out.state = l.state.clone();
                if !l.error.is_empty() {
                    out.error = l.error.clone();
                }
            }
            out.applied_lsn = l.applied_lsn;
            out.reached_lsn = l.reached_lsn;
            out.reached_unix_ms = l.reached_unix_ms;
            out.last_commit_unix_ms = l.last_commit_unix_ms;
            out.transactions = l.transactions;
        }
        if out.applied_lsn == 0 {
            let db = self.ctx.database(&r.database)?;
            if let Ok(client) = crate::postgres::connect::connect(db).await {
                out.applied_lsn =
                    apply::origin_progress(&client, &r.database, &super::origin_name(&rec.id))
                        .await
                        .unwrap_or(0);
            }
        }
        Ok(Response::new(out))
    }

    async fn stop(
        &self,
        req: Request<StopFollowRequest>,
    ) -> Result<Response<StopFollowResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        self.ctx.database(&r.database)?;
        self.ctx.followers.stop(&r.database).await;
        let rec = store::target(&self.ctx, &r.database)?;
        if let Some(mut rec) = rec.clone()
            && rec.state == "following"
        {
            rec.state = "stopped".into();
            store::save_target(&self.ctx, &rec)?;
        }
        if !r.sequences.is_empty() {
            // The rollback window: the sequences the stream does not carry, written under the
            // follower's permit (`[allow] restore_databases`, checked when it started) — not a
            // sync write, so neither `sync_role` nor the freeze refuses it.
            if rec.is_none() {
                return Err(AgentError::FailedPrecondition(format!(
                    "database {} has no follower on this host: sequences are set only after one",
                    r.database
                ))
                .into());
            }
            let db = self.ctx.database(&r.database)?;
            let values = crate::database::wire::sequences_from_proto(r.sequences)?;
            let conn = crate::postgres::Conn::connect(db)
                .await
                .map_err(AgentError::from)?;
            crate::postgres::apply_sequences(&conn, &values)
                .await
                .map_err(AgentError::from)?;
        }
        Ok(Response::new(StopFollowResponse {}))
    }

    async fn forget(
        &self,
        req: Request<ForgetFollowRequest>,
    ) -> Result<Response<ForgetFollowResponse>, Status> {
        coordinator(&req)?;
        let r = req.into_inner();
        let db = self.ctx.database(&r.database)?;
        self.ctx.followers.stop(&r.database).await;
        let rec = store::target(&self.ctx, &r.database)?;
        let id = rec.as_ref().map_or(r.id.clone(), |rec| rec.id.clone());
        if !id.is_empty() {
            source::object_name(&id)?;
            let client = crate::postgres::connect::connect(db).await?;
            apply::drop_origin(&client, &r.database, &super::origin_name(&id)).await?;
        }
        if !r.restore_identities.is_empty() {
            // The copy carried the old host's REPLICA IDENTITY FULL here too.
            let mut items = Vec::new();
            for item in &r.restore_identities {
                let (table, original) = item.rsplit_once('=').ok_or_else(|| {
                    AgentError::InvalidArgument(format!(
                        "replica identity to restore {item:?}: expected table=d|n"
                    ))
                })?;
                items.push((table.to_string(), original.to_string()));
            }
            // With the rollback window's slot here, the tables are in its publication: put
            // back now, their identity would make the app's UPDATE and DELETE fail. The window's
            // Drop puts them back instead.
            if !super::window::keep_identities(&self.ctx, &r.database, &items)? {
                let client = crate::postgres::connect::connect(db).await?;
                for (table, original) in &items {
                    source::put_identity_back(&client, &r.database, table, original).await?;
                }
            }
        }
        store::remove_target(&self.ctx, &r.database)?;
        Ok(Response::new(ForgetFollowResponse {}))
    }
}
