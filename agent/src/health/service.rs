//! gRPC translation for `service Health`: proto check definitions → [`CheckSpec`], results back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hostshift_proto::v1::health_server::Health;
use hostshift_proto::v1::{
    HealthCheckRequest, HealthCheckResponse, HealthCheckResult, HealthCheckSpec,
};
use hostshift_shared::health::{self as checks, CheckSpec, HealthResult};
use tonic::{Request, Response, Status};

use super::run;
use crate::Ctx;

/// Serves `hostshift.v1.Health`.
pub struct HealthService {
    ctx: Arc<Ctx>,
}

impl HealthService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn spec(p: HealthCheckSpec) -> CheckSpec {
    CheckSpec {
        name: p.name,
        url: p.url,
        host_header: non_empty(p.host_header),
        bearer_token_file: non_empty(p.bearer_token_file).map(PathBuf::from),
        // Out-of-range values are refused by validation, not clamped into something else.
        expect_status: match p.expect_status {
            0 => checks::DEFAULT_STATUS,
            s => u16::try_from(s).unwrap_or(0),
        },
        body_contains: non_empty(p.body_contains),
        json_field: non_empty(p.json_field),
        timeout: match p.timeout_secs {
            0 => checks::DEFAULT_TIMEOUT,
            s => Duration::from_secs(s),
        },
        attempts: match p.retries {
            0 => checks::DEFAULT_ATTEMPTS,
            n => n,
        },
    }
}

fn result(r: HealthResult) -> HealthCheckResult {
    HealthCheckResult {
        name: r.name,
        ok: r.ok,
        status: r.status.map_or(0, u32::from),
        elapsed_ms: r.elapsed_ms,
        attempts: r.attempts,
        detail: r.detail,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let specs = req.into_inner().checks.into_iter().map(spec).collect();
        let results = run::run(specs, &self.ctx.shutdown).await?;
        Ok(Response::new(HealthCheckResponse {
            results: results.into_iter().map(result).collect(),
        }))
    }
}
