//! Who is calling, from the certificate mutual TLS verified.
//!
//! The TLS layer already refused callers without a certificate from the migration CA. Here we
//! read the caller's identity (`coordinator:<name>` or `agent:<name>`, see
//! [`hostshift_shared::identity`]) and decide: control services accept the coordinator only; data
//! streams (later issues) accept a peer agent only for what the coordinator granted it.

use hostshift_shared::identity::{Identity, Role};
use tonic::{Request, Status};

/// The verified identity of the caller.
///
/// # Errors
/// `Unauthenticated` when the connection carries no client certificate (only possible if TLS
/// was misconfigured) or the certificate carries no hostshift identity.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: connect with the coordinator's certificate from `hostshift certs init`",
        )
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    Identity::from_der(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Interceptor for control services: only a coordinator certificate may call them.
///
/// # Errors
/// `PermissionDenied` for a peer agent's certificate; `Unauthenticated` as in [`caller`].
#[allow(clippy::result_large_err)] // tonic's interceptor signature returns Status by value.
pub fn coordinator_only(mut req: Request<()>) -> Result<Request<()>, Status> {
    let id = caller(&req)?;
    if id.role != Role::Coordinator {
        tracing::warn!(caller = %id, "refused control call from a non-coordinator certificate");
        return Err(Status::permission_denied(format!(
            "{id} may not call control RPCs: only the coordinator's certificate may control an agent (a peer agent may only read data streams it was granted)"
        )));
    }
    req.extensions_mut().insert(id);
    Ok(req)
}

/// Interceptor for data services: the coordinator, or a peer agent (whose reads each handler
/// checks against the grants the coordinator issued).
///
/// # Errors
/// `Unauthenticated` as in [`caller`].
#[allow(clippy::result_large_err)] // tonic's interceptor signature returns Status by value.
pub fn coordinator_or_agent(mut req: Request<()>) -> Result<Request<()>, Status> {
    let id = caller(&req)?;
    req.extensions_mut().insert(id);
    Ok(req)
}
