//! gRPC translation for `service Pm2`: requests in, [`super::control`] does the work, responses
//! out.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hostshift_proto::v1::pm2_server::Pm2;
use hostshift_proto::v1::{
    Pm2ActionRequest, Pm2ActionResponse, Pm2AppOutcome, Pm2ListRequest, Pm2ListResponse,
    Pm2Process, Pm2SaveRequest, Pm2SaveResponse,
};
use tonic::{Request, Response, Status};

use super::control::Pm2Control;
use super::{Action, ActionOutcome, AppOutcome, wait};

/// Serves `hostshift.v1.Pm2`.
pub struct Pm2Service {
    control: Arc<Pm2Control>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Pm2Service {
    /// A service over the agent's shared PM2 control; `shutdown` cancels in-flight actions.
    pub fn new(control: Arc<Pm2Control>, shutdown: tokio_util::sync::CancellationToken) -> Self {
        Self { control, shutdown }
    }

    async fn act(
        &self,
        action: Action,
        req: Request<Pm2ActionRequest>,
    ) -> Result<Response<Pm2ActionResponse>, Status> {
        let r = req.into_inner();
        let cancel = self.shutdown.child_token();
        let outcome = self
            .control
            .act(
                action,
                &r.apps,
                r.update_env,
                wait::deadline(r.wait_secs),
                &cancel,
            )
            .await?;
        Ok(Response::new(action_response(&outcome)))
    }
}

/// Domain → proto.
pub fn action_response(o: &ActionOutcome) -> Pm2ActionResponse {
    Pm2ActionResponse {
        action: o.action.as_str().into(),
        ok: o.ok(),
        apps: o.apps.iter().map(app_outcome).collect(),
        commands: o.commands.clone(),
        duration_ms: o.duration.as_millis() as u64,
    }
}

fn app_outcome(a: &AppOutcome) -> Pm2AppOutcome {
    Pm2AppOutcome {
        name: a.name.clone(),
        ok: a.ok,
        status: a.status.clone(),
        pids: a.pids.clone(),
        restarts: a.restarts,
        detail: a.detail.clone(),
    }
}

#[tonic::async_trait]
impl Pm2 for Pm2Service {
    async fn list(
        &self,
        _req: Request<Pm2ListRequest>,
    ) -> Result<Response<Pm2ListResponse>, Status> {
        let listing = self.control.list(&self.shutdown.child_token()).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let processes = listing
            .processes
            .iter()
            .map(|(p, declared)| Pm2Process {
                name: p.name.clone(),
                pm_id: p.pm_id,
                status: p.status.as_str().into(),
                pid: p.pid,
                restarts: p.restarts,
                uptime_ms: p.uptime_ms(now),
                memory_bytes: p.memory_bytes,
                cpu_percent: p.cpu_percent,
                exec_mode: p.exec_mode.clone(),
                declared: *declared,
            })
            .collect();
        Ok(Response::new(Pm2ListResponse {
            processes,
            missing: listing.missing,
            daemon_running: listing.daemon_running,
        }))
    }

    async fn start(
        &self,
        req: Request<Pm2ActionRequest>,
    ) -> Result<Response<Pm2ActionResponse>, Status> {
        self.act(Action::Start, req).await
    }

    async fn stop(
        &self,
        req: Request<Pm2ActionRequest>,
    ) -> Result<Response<Pm2ActionResponse>, Status> {
        self.act(Action::Stop, req).await
    }

    async fn restart(
        &self,
        req: Request<Pm2ActionRequest>,
    ) -> Result<Response<Pm2ActionResponse>, Status> {
        self.act(Action::Restart, req).await
    }

    async fn reload(
        &self,
        req: Request<Pm2ActionRequest>,
    ) -> Result<Response<Pm2ActionResponse>, Status> {
        self.act(Action::Reload, req).await
    }

    async fn save(
        &self,
        _req: Request<Pm2SaveRequest>,
    ) -> Result<Response<Pm2SaveResponse>, Status> {
        let saved = self.control.save(&self.shutdown.child_token()).await?;
        Ok(Response::new(Pm2SaveResponse {
            dump_path: saved.dump_path.display().to_string(),
            apps: saved.apps,
        }))
    }
}
