//! gRPC translation for `service Hooks`.

use std::pin::Pin;
use std::sync::Arc;
use tracing::Instrument as _;

use futures::Stream;
use hostshift_proto::v1::hooks_server::Hooks;
use hostshift_proto::v1::{
    HookEvent, HookSummary, ListHooksRequest, ListHooksResponse, RunHookRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::run;
use crate::Ctx;
use crate::error::AgentError;

/// Serves `hostshift.v1.Hooks`.
pub struct HooksService {
    ctx: Arc<Ctx>,
}

impl HooksService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<HookEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Hooks for HooksService {
    async fn list(
        &self,
        _req: Request<ListHooksRequest>,
    ) -> Result<Response<ListHooksResponse>, Status> {
        let hooks = self
            .ctx
            .config
            .hooks
            .iter()
            .map(|(name, h)| HookSummary {
                name: name.clone(),
                description: h.description.clone(),
                timeout_secs: h.timeout_secs,
            })
            .collect();
        Ok(Response::new(ListHooksResponse { hooks }))
    }

    type RunStream = EventStream;

    async fn run(&self, req: Request<RunHookRequest>) -> Result<Response<Self::RunStream>, Status> {
        let name = req.into_inner().name;
        let hook = self
            .ctx
            .config
            .hooks
            .get(&name)
            .ok_or_else(|| AgentError::NotDeclared {
                what: "hook",
                name: name.clone(),
                config: self.ctx.config_path.display().to_string(),
            })?;
        let cmd = run::command(hook)?;
        let (tx, rx) = mpsc::channel(run::EVENT_QUEUE);
        let cancel = self.ctx.shutdown.child_token();
        self.ctx
            .tasks
            .spawn(run::run(name, cmd, tx, cancel).in_current_span());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
