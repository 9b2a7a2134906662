//! gRPC translation for `service DbStats`.

use std::sync::Arc;

use hostshift_proto::v1::db_stats_server::DbStats;
use hostshift_proto::v1::{ConnectionCount, DbStatsRequest, DbStatsResponse, TableStats};
use tonic::{Request, Response, Status};

use super::read;
use crate::Ctx;

/// Serves `hostshift.v1.DbStats`.
pub struct DbStatsService {
    ctx: Arc<Ctx>,
}

impl DbStatsService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl DbStats for DbStatsService {
    async fn stats(
        &self,
        req: Request<DbStatsRequest>,
    ) -> Result<Response<DbStatsResponse>, Status> {
        let name = req.into_inner().database;
        let db = self.ctx.database(&name)?;
        let s = read::read(db).await?;
        Ok(Response::new(DbStatsResponse {
            database: name,
            cache_hit_ratio: s.cache_hit_ratio(),
            server_database: s.server_database,
            server_version: s.server_version,
            size_bytes: s.size_bytes,
            blks_hit: s.blks_hit,
            blks_read: s.blks_read,
            connections: s
                .connections
                .into_iter()
                .map(|(state, count)| ConnectionCount { state, count })
                .collect(),
            max_connections: s.max_connections,
            tables: s
                .tables
                .into_iter()
                .map(|t| TableStats {
                    schema: t.schema,
                    table: t.table,
                    total_bytes: t.total_bytes,
                    table_bytes: t.table_bytes,
                    index_bytes: t.index_bytes,
                    row_estimate: t.row_estimate,
                    live_rows: t.live_rows,
                    dead_rows: t.dead_rows,
                })
                .collect(),
        }))
    }
}
