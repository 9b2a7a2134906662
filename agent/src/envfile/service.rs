//! gRPC translation for `service EnvFiles`: requests in, [`super::run`] does the work,
//! responses out.

use std::sync::Arc;

use hostshift_proto::v1::env_change::Op;
use hostshift_proto::v1::env_files_server::EnvFiles;
use hostshift_proto::v1::{
    EnvApply as ProtoApply, EnvDiff, EnvEditRequest, EnvEditResponse, EnvGetRequest,
    EnvGetResponse, EnvValue,
};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::run::{self, EditRequest};
use crate::Ctx;
use crate::error::AgentError;
use crate::pm2::Pm2Control;
use crate::pm2::env::EnvApply;

/// Serves `hostshift.v1.EnvFiles`.
pub struct EnvFilesService {
    ctx: Arc<Ctx>,
    pm2: Arc<Pm2Control>,
    /// One edit at a time: two concurrent edits of one file would lose one.
    edit_lock: Mutex<()>,
}

impl EnvFilesService {
    /// A service over the agent's shared context and PM2 control.
    pub fn new(ctx: Arc<Ctx>, pm2: Arc<Pm2Control>) -> Self {
        Self {
            ctx,
            pm2,
            edit_lock: Mutex::new(()),
        }
    }
}

fn edit_request(r: EnvEditRequest) -> Result<EditRequest, AgentError> {
    let ops = r
        .changes
        .into_iter()
        .map(|c| match c.op {
            Some(Op::Set(v)) => Ok((c.key, Some(v))),
            Some(Op::Unset(_)) => Ok((c.key, None)),
            None => Err(AgentError::InvalidArgument(format!(
                "change of {:?} says neither set nor unset",
                c.key
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let apply = match ProtoApply::try_from(r.apply) {
        Ok(ProtoApply::Restart) => EnvApply::Restart,
        Ok(ProtoApply::Reload) => EnvApply::Reload,
        _ => EnvApply::Reload,
    };
    let app = (!r.app.is_empty()).then_some((r.app, apply));
    Ok(EditRequest {
        file: r.file,
        ops,
        dry_run: r.dry_run,
        app,
        deadline: crate::pm2::wait::deadline(r.wait_secs),
    })
}

#[tonic::async_trait]
impl EnvFiles for EnvFilesService {
    async fn get(&self, req: Request<EnvGetRequest>) -> Result<Response<EnvGetResponse>, Status> {
        let r = req.into_inner();
        let (path, values) = run::get(&self.ctx, &r.file, &r.keys, r.show_secrets).await?;
        Ok(Response::new(EnvGetResponse {
            file: r.file,
            path,
            values: values
                .into_iter()
                .map(|v| EnvValue {
                    key: v.key,
                    present: v.present,
                    value: v.value,
                    secret: v.secret,
                    redacted: v.redacted,
                })
                .collect(),
        }))
    }

    async fn edit(
        &self,
        req: Request<EnvEditRequest>,
    ) -> Result<Response<EnvEditResponse>, Status> {
        let r = req.into_inner();
        let file = r.file.clone();
        let er = edit_request(r)?;
        let cancel = self.ctx.shutdown.child_token();
        let out = run::edit(&self.ctx, &self.pm2, &self.edit_lock, er, &cancel).await?;
        let (app, stale_keys, mut notes) = match out.applied {
            Some(a) => (
                Some(crate::pm2::action_response(&a.outcome)),
                a.stale_keys,
                a.notes,
            ),
            None => (None, Vec::new(), Vec::new()),
        };
        let mut all_notes = out.notes;
        all_notes.append(&mut notes);
        Ok(Response::new(EnvEditResponse {
            file,
            path: out.path,
            diff: out
                .diff
                .into_iter()
                .map(|d| EnvDiff {
                    key: d.key,
                    old_display: d.old,
                    new_display: d.new,
                    secret: d.secret,
                })
                .collect(),
            written: out.written,
            app,
            stale_keys,
            notes: all_notes,
        }))
    }
}
