//! gRPC translation for `service Database`.

use std::sync::Arc;
use std::time::Duration;

use hostshift_proto::v1::database_server::Database;
use hostshift_proto::v1::{
    CloseSnapshotRequest, CloseSnapshotResponse, DatabaseSpec, DbReadRequest, DbSelection,
    DbTablesResponse, DescribeDatabaseRequest, EnsureDatabaseRequest, EnsureDatabaseResponse,
    FingerprintResponse, HeldSnapshot, LargeObjectsResponse, MatviewsRequest, MatviewsResponse,
    OpenSnapshotRequest, OpenSnapshotResponse, OpenSnapshotsRequest, OpenSnapshotsResponse,
    RangeFingerprint, RangeFingerprintsRequest, RangeFingerprintsResponse, RefreshMatviewsRequest,
    RefreshMatviewsResponse, RenewSnapshotRequest, RenewSnapshotResponse, SchemaDigestResponse,
    SequencesResponse, SetReadOnlyRequest, SetReadOnlyResponse, SetSequencesRequest,
    SetSequencesResponse, SplitRangesRequest, SplitRangesResponse,
};
use hostshift_shared::model::{DatabaseFingerprint, Fingerprint, KeyRange};
use tonic::{Request, Response, Status};

use super::{freeze, wire};
use crate::Ctx;
use crate::error::AgentError;
use crate::postgres::{self, Conn, ExportedSnapshot, SnapshotId};
use crate::transfer::db::{selection, writable};

/// Serves `hostshift.v1.Database` (coordinator only).
pub struct DatabaseService {
    ctx: Arc<Ctx>,
    /// Serializes `SetReadOnly` calls (their record is read, then the database changed).
    freeze_lock: tokio::sync::Mutex<()>,
}

impl DatabaseService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            freeze_lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn conn(&self, name: &str) -> Result<Conn, AgentError> {
        Ok(Conn::connect(self.ctx.database(name)?).await?)
    }
}

fn snap(id: &str) -> Result<Option<SnapshotId>, AgentError> {
    if id.is_empty() {
        Ok(None)
    } else {
        Ok(Some(SnapshotId::parse(id)?))
    }
}

#[tonic::async_trait]
impl Database for DatabaseService {
    async fn tables(
        &self,
        req: Request<DbSelection>,
    ) -> Result<Response<DbTablesResponse>, Status> {
        let r = req.into_inner();
        let conn = self.conn(&r.database).await?;
        let tables = postgres::list_tables(&conn, &selection(&r)?)
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(DbTablesResponse {
            tables: tables.into_iter().map(Into::into).collect(),
        }))
    }

    async fn open_snapshot(
        &self,
        req: Request<OpenSnapshotRequest>,
    ) -> Result<Response<OpenSnapshotResponse>, Status> {
        let r = req.into_inner();
        let conn = self.conn(&r.database).await?;
        let exported = ExportedSnapshot::export(conn)
            .await
            .map_err(AgentError::from)?;
        // A follow prepared on this database waits for the first copy's snapshot (its anchor).
        crate::follow::source::note_snapshot(&self.ctx, &r.database, exported.pg_snapshot());
        let ttl = if r.ttl_secs == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(r.ttl_secs)
        };
        let snapshot = self
            .ctx
            .snapshots
            .hold(exported, &r.database, ttl, r.lease_secs)?;
        tracing::info!(database = %r.database, %snapshot, lease_secs = r.lease_secs, "snapshot exported");
        Ok(Response::new(OpenSnapshotResponse { snapshot }))
    }

    async fn close_snapshot(
        &self,
        req: Request<CloseSnapshotRequest>,
    ) -> Result<Response<CloseSnapshotResponse>, Status> {
        self.ctx.snapshots.close(&req.into_inner().snapshot).await;
        Ok(Response::new(CloseSnapshotResponse {}))
    }

    async fn renew_snapshot(
        &self,
        req: Request<RenewSnapshotRequest>,
    ) -> Result<Response<RenewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let held = self.ctx.snapshots.renew(&r.snapshot, r.lease_secs);
        Ok(Response::new(RenewSnapshotResponse { held }))
    }

    async fn open_snapshots(
        &self,
        _req: Request<OpenSnapshotsRequest>,
    ) -> Result<Response<OpenSnapshotsResponse>, Status> {
        let snapshots = self
            .ctx
            .snapshots
            .list()
            .into_iter()
            .map(|h| HeldSnapshot {
                snapshot: h.id,
                database: h.database,
                age_secs: h.age.as_secs(),
                lease_left_secs: h.lease_left.as_secs(),
            })
            .collect();
        Ok(Response::new(OpenSnapshotsResponse { snapshots }))
    }

    async fn split_ranges(
        &self,
        req: Request<SplitRangesRequest>,
    ) -> Result<Response<SplitRangesResponse>, Status> {
        let r = req.into_inner();
        let table = wire::table(r.table, "table")?;
        let conn = self.conn(&r.database).await?;
        if r.by_pages {
            let pages = postgres::split_pages(&conn, &table, r.rows_per_range.max(1))
                .await
                .map_err(AgentError::from)?;
            if !pages.is_empty() {
                return Ok(Response::new(SplitRangesResponse {
                    ranges: Vec::new(),
                    pages: pages.into_iter().map(Into::into).collect(),
                }));
            }
        }
        let ranges = postgres::split_ranges(&conn, &table, r.rows_per_range.max(1))
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(SplitRangesResponse {
            ranges: ranges.into_iter().map(Into::into).collect(),
            pages: Vec::new(),
        }))
    }

    async fn sequences(
        &self,
        req: Request<DbReadRequest>,
    ) -> Result<Response<SequencesResponse>, Status> {
        let r = req.into_inner();
        let sel = r.selection.unwrap_or_default();
        let conn = self.conn(&sel.database).await?;
        let values =
            postgres::read_sequences(&conn, &selection(&sel)?, snap(&r.snapshot)?.as_ref())
                .await
                .map_err(AgentError::from)?;
        Ok(Response::new(SequencesResponse {
            sequences: wire::sequences_to_proto(values),
        }))
    }

    async fn set_sequences(
        &self,
        req: Request<SetSequencesRequest>,
    ) -> Result<Response<SetSequencesResponse>, Status> {
        let r = req.into_inner();
        let db = writable(&self.ctx, &r.database)?;
        let values = wire::sequences_from_proto(r.values)?;
        let conn = Conn::connect(db).await.map_err(AgentError::from)?;
        postgres::apply_sequences(&conn, &values)
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(SetSequencesResponse {
            set: values.len() as u64,
        }))
    }

    async fn large_objects(
        &self,
        req: Request<DbReadRequest>,
    ) -> Result<Response<LargeObjectsResponse>, Status> {
        let r = req.into_inner();
        let sel = r.selection.unwrap_or_default();
        let conn = self.conn(&sel.database).await?;
        let metas = postgres::list_large_objects(&conn, snap(&r.snapshot)?.as_ref())
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(LargeObjectsResponse {
            objects: metas.into_iter().map(wire::large_object_to_proto).collect(),
        }))
    }

    async fn fingerprint(
        &self,
        req: Request<DbSelection>,
    ) -> Result<Response<FingerprintResponse>, Status> {
        let r = req.into_inner();
        let sel = selection(&r)?;
        let conn = self.conn(&r.database).await?;
        let tables = postgres::database_fingerprint(&conn, &sel)
            .await
            .map_err(AgentError::from)?;
        let sequences = postgres::sequence_fingerprint(&conn, &sel)
            .await
            .map_err(AgentError::from)?;
        let large_objects = if sel.includes_large_objects() {
            postgres::large_object_fingerprint(&conn)
                .await
                .map_err(AgentError::from)?
        } else {
            Default::default()
        };
        Ok(Response::new(
            DatabaseFingerprint {
                tables: tables
                    .into_iter()
                    .map(|(t, f)| (t, Fingerprint::new(f.rows, f.digest)))
                    .collect(),
                sequences,
                large_objects,
            }
            .into(),
        ))
    }

    async fn fingerprint_at(
        &self,
        req: Request<DbReadRequest>,
    ) -> Result<Response<FingerprintResponse>, Status> {
        let r = req.into_inner();
        let Some(at) = snap(&r.snapshot)? else {
            return Err(AgentError::InvalidArgument(
                "FingerprintAt needs a snapshot (from OpenSnapshot); Fingerprint reads the database as it is now".into(),
            )
            .into());
        };
        let s = r
            .selection
            .ok_or_else(|| AgentError::InvalidArgument("selection: missing".into()))?;
        let sel = selection(&s)?;
        let conn = self.conn(&s.database).await?;
        // A snapshot this agent does not hold (closed, lease run out, agent restarted) is refused
        // by PostgreSQL when imported: the error names it.
        let tables = postgres::database_fingerprint_at(&conn, &sel, Some(&at))
            .await
            .map_err(AgentError::from)?;
        let large_objects = if sel.includes_large_objects() {
            postgres::large_object_fingerprint_at(&conn, Some(&at))
                .await
                .map_err(AgentError::from)?
        } else {
            Default::default()
        };
        Ok(Response::new(
            DatabaseFingerprint {
                tables: tables
                    .into_iter()
                    .map(|(t, f)| (t, Fingerprint::new(f.rows, f.digest)))
                    .collect(),
                sequences: Default::default(),
                large_objects,
            }
            .into(),
        ))
    }

    async fn range_fingerprints(
        &self,
        req: Request<RangeFingerprintsRequest>,
    ) -> Result<Response<RangeFingerprintsResponse>, Status> {
        let r = req.into_inner();
        let table = wire::table(r.table, "table")?;
        let ranges = KeyRange::list_from_proto(r.ranges, "ranges").map_err(AgentError::from)?;
        let conn = self.conn(&r.database).await?;
        let fps = postgres::range_fingerprints(&conn, &table, &ranges, snap(&r.snapshot)?.as_ref())
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(RangeFingerprintsResponse {
            ranges: fps
                .into_iter()
                .map(|f| RangeFingerprint {
                    rows: f.rows,
                    digest: f.digest,
                    min_key: f.min_key,
                    max_key: f.max_key,
                })
                .collect(),
        }))
    }

    async fn matviews(
        &self,
        req: Request<MatviewsRequest>,
    ) -> Result<Response<MatviewsResponse>, Status> {
        let r = req.into_inner();
        let sel = r.selection.unwrap_or_default();
        let conn = self.conn(&sel.database).await?;
        let matviews = postgres::matview_fingerprints(
            &conn,
            &selection(&sel)?,
            snap(&r.snapshot)?.as_ref(),
            r.fresh,
        )
        .await
        .map_err(AgentError::from)?;
        Ok(Response::new(MatviewsResponse {
            matviews: matviews.into_iter().collect(),
        }))
    }

    async fn refresh_matviews(
        &self,
        req: Request<RefreshMatviewsRequest>,
    ) -> Result<Response<RefreshMatviewsResponse>, Status> {
        let r = req.into_inner();
        let db = writable(&self.ctx, &r.database)?;
        let conn = Conn::connect(db).await.map_err(AgentError::from)?;
        let n = postgres::refresh_matviews(&conn, &r.populate, &r.unpopulate)
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(RefreshMatviewsResponse {
            refreshed: n as u64,
        }))
    }

    async fn describe_database(
        &self,
        req: Request<DescribeDatabaseRequest>,
    ) -> Result<Response<DatabaseSpec>, Status> {
        let db = self.ctx.database(&req.get_ref().database)?;
        Ok(Response::new(super::create::describe(db).await?))
    }

    async fn ensure_database(
        &self,
        req: Request<EnsureDatabaseRequest>,
    ) -> Result<Response<EnsureDatabaseResponse>, Status> {
        let r = req.into_inner();
        let db = writable(&self.ctx, &r.database)?;
        let spec = r.spec.unwrap_or_default();
        Ok(Response::new(super::create::ensure(db, &spec).await?))
    }

    async fn schema_digest(
        &self,
        req: Request<DbSelection>,
    ) -> Result<Response<SchemaDigestResponse>, Status> {
        let r = req.into_inner();
        let sel = selection(&r)?;
        let conn = self.conn(&r.database).await?;
        let objects = postgres::schema_digest::schema_digest(&conn, &sel)
            .await
            .map_err(AgentError::from)?;
        Ok(Response::new(SchemaDigestResponse {
            objects: objects.into_iter().collect(),
        }))
    }

    async fn set_read_only(
        &self,
        req: Request<SetReadOnlyRequest>,
    ) -> Result<Response<SetReadOnlyResponse>, Status> {
        let r = req.into_inner();
        // One freeze or undo at a time: each reads the record, then changes the database.
        let _one_at_a_time = self.freeze_lock.lock().await;
        let done = if r.read_only {
            freeze::freeze(&self.ctx, &r.database, r.end_sessions).await?
        } else {
            freeze::unfreeze(&self.ctx, &r.database).await?
        };
        Ok(Response::new(SetReadOnlyResponse {
            changed: done.changed,
            sessions_ended: done.sessions_ended,
            read_only: done.read_only,
            detail: done.detail,
        }))
    }
}
