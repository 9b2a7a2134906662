//! gRPC translation for `service Nginx`: requests in, [`super::control`] and
//! [`super::maintenance`] do the work, responses out.

use std::sync::Arc;

use hostshift_proto::v1::nginx_server::Nginx;
use hostshift_proto::v1::{
    MaintenanceOffRequest, MaintenanceOnRequest, MaintenanceResponse, MaintenanceStatusRequest,
    NginxReloadRequest, NginxReloadResponse, NginxTestRequest, NginxTestResponse,
};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::control;
use super::maintenance::{self, OnRequest, Outcome};
use crate::Ctx;

/// Serves `hostshift.v1.Nginx`.
pub struct NginxService {
    ctx: Arc<Ctx>,
    /// One changing operation at a time (reload, maintenance on/off).
    lock: Mutex<()>,
}

impl NginxService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            lock: Mutex::new(()),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn response(o: Outcome) -> MaintenanceResponse {
    MaintenanceResponse {
        on: o.on,
        changed: o.changed,
        site: o.site.display().to_string(),
        saved_original: o.saved_original.display().to_string(),
        original_sha256: o.original_sha256,
        site_sha256: o.site_sha256,
        pass_paths: o.pass_paths,
        retry_after_secs: o.retry_after_secs,
        test_message: o.test_message,
        generated: o.generated,
        since_unix: o.since_unix,
        edited_copy: o
            .edited_copy
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Nginx for NginxService {
    async fn test(
        &self,
        _req: Request<NginxTestRequest>,
    ) -> Result<Response<NginxTestResponse>, Status> {
        let cfg = control::configured(&self.ctx)?;
        let t = control::test(cfg, &self.ctx.shutdown).await?;
        Ok(Response::new(NginxTestResponse {
            ok: t.ok,
            message: t.message,
            command: t.command,
            duration_ms: millis(t.duration),
        }))
    }

    async fn reload(
        &self,
        _req: Request<NginxReloadRequest>,
    ) -> Result<Response<NginxReloadResponse>, Status> {
        let cfg = control::configured(&self.ctx)?;
        control::require_control(&self.ctx, "reloading nginx")?;
        let _guard = self.lock.lock().await;
        let t = control::reload(cfg, &self.ctx.shutdown).await?;
        Ok(Response::new(NginxReloadResponse {
            test_message: t.message,
            duration_ms: millis(t.duration),
        }))
    }

    async fn maintenance_on(
        &self,
        req: Request<MaintenanceOnRequest>,
    ) -> Result<Response<MaintenanceResponse>, Status> {
        let r = req.into_inner();
        let cfg = control::configured(&self.ctx)?;
        if !r.dry_run {
            control::require_control(&self.ctx, "switching nginx maintenance mode")?;
        }
        let _guard = self.lock.lock().await;
        let o = maintenance::on(
            cfg,
            OnRequest {
                pass_paths: r.pass_paths,
                retry_after_secs: r.retry_after_secs,
                dry_run: r.dry_run,
            },
            &self.ctx.shutdown,
        )
        .await?;
        Ok(Response::new(response(o)))
    }

    async fn maintenance_off(
        &self,
        _req: Request<MaintenanceOffRequest>,
    ) -> Result<Response<MaintenanceResponse>, Status> {
        let cfg = control::configured(&self.ctx)?;
        control::require_control(&self.ctx, "switching nginx maintenance mode")?;
        let _guard = self.lock.lock().await;
        let o = maintenance::off(cfg, &self.ctx.shutdown).await?;
        Ok(Response::new(response(o)))
    }

    async fn maintenance_status(
        &self,
        _req: Request<MaintenanceStatusRequest>,
    ) -> Result<Response<MaintenanceResponse>, Status> {
        let cfg = control::configured(&self.ctx)?;
        let _guard = self.lock.lock().await;
        Ok(Response::new(response(maintenance::status(cfg)?)))
    }
}
