//! The target's guards, shared by every writer of a sync ([`sink`](super::sink) for files and
//! storage, [`db`](super::db) for databases, [`service`](super::service)): whether this agent may
//! write a named thing at all ([`require`]), and how a failure of the source's stream reads here
//! ([`upstream`]). Kept apart so the writers do not import each other.
//!
//! A host frozen by a cutover refuses every sync write, with one exception: a rollback within
//! the rollback window carries the new host's storage, config files and large objects back into
//! the frozen old host before traffic returns to it. Such a write names the window
//! (`rollback_window`, its reverse follow id) and is admitted only while this agent holds that
//! window's follower record (written when the window opened, removed when it closes), so a
//! plain sync can never claim it.

use tonic::Status;

use crate::Ctx;
use crate::error::AgentError;

/// Refuses unless `[allow] <key>` lists `name` and the agent is a sync target
/// (`sync_role = "target"`): a source host is never written by a sync, whatever `[allow]` says
/// (a config copied from the new host must not make the old one writable). `window`: the
/// rollback window a rollback's write names (empty for a sync), see the module docs.
///
/// # Errors
/// `PermissionDenied` naming the key to add; `FailedPrecondition` on a frozen host.
pub fn require(
    ctx: &Ctx,
    list: &[String],
    key: &str,
    what: &str,
    name: &str,
    window: &str,
) -> Result<(), AgentError> {
    if !list.iter().any(|n| n == name) {
        return Err(AgentError::PermissionDenied(format!(
            "this agent's config does not allow writing {what} {name:?}: add it to [allow] {key} in {} (on the new host only)",
            ctx.config_path.display()
        )));
    }
    if !ctx.config.sync_role.receives() {
        tracing::warn!(
            what,
            name,
            "refused a sync write: this agent is a sync source"
        );
        return Err(AgentError::PermissionDenied(format!(
            "this agent is a sync source (sync_role = \"{}\" in {}): it never receives a sync, so {what} {name:?} was not written. If this really is the new host, set sync_role = \"target\" there (or \"either\" for a blue/green pair, docs/agent-config.md); otherwise check the plan's [old]/[new] addresses",
            ctx.config.sync_role.as_str(),
            ctx.config_path.display()
        )));
    }
    if !window.is_empty() && in_window(ctx, window) {
        tracing::info!(
            what,
            name,
            window,
            "a rollback within the window writes into this frozen host"
        );
        return Ok(());
    }
    refuse_if_frozen(ctx)
}

/// Whether this agent follows the new host for the rollback window `window` (its follower
/// record exists, running or stopped by the rollback's drain).
fn in_window(ctx: &Ctx, window: &str) -> bool {
    crate::follow::store::targets(ctx)
        .iter()
        .any(|t| t.id == window)
}

/// Refuses every sync write while an earlier cutover's freeze is recorded on this host: its
/// databases are read-only with `CONNECT` revoked (and nginx may show the maintenance page, the
/// apps may be stopped). Checked before anything is written, so a sync into a frozen host fails
/// whole instead of writing the files and storage and then failing in the database.
///
/// # Errors
/// `FailedPrecondition` naming the frozen databases and the command that lifts the freeze.
pub fn refuse_if_frozen(ctx: &Ctx) -> Result<(), AgentError> {
    let frozen = crate::database::freeze::frozen(&ctx.config.state_dir);
    if frozen.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        ?frozen,
        "refused a sync write: this host is frozen by a cutover"
    );
    Err(AgentError::FailedPrecondition(format!(
        "{FROZEN_TARGET}: database(s) {} read-only with CONNECT revoked (records in {}); nothing was written. Lift the freeze first with `hostshift unfreeze --host <this side> --yes` (docs/cutover.md, Blue/green)",
        frozen.join(", "),
        ctx.config.state_dir.join("freeze").display()
    )))
}

/// The start of the refusal [`refuse_if_frozen`] returns (the coordinator and the docs match it).
pub const FROZEN_TARGET: &str = "this host is frozen by an earlier cutover";

/// A failure of the source stream, as this agent reports it.
pub fn upstream(s: Status) -> AgentError {
    match s.code() {
        tonic::Code::DataLoss => AgentError::DataLoss(s.message().to_string()),
        tonic::Code::PermissionDenied => {
            AgentError::PermissionDenied(format!("the source refused: {}", s.message()))
        }
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            AgentError::InvalidArgument(format!("the source refused: {}", s.message()))
        }
        _ => AgentError::Unavailable(format!("the source stream failed: {}", s.message())),
    }
}
