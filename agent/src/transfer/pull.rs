//! The target's client to a peer agent: it connects with its *own* agent certificate (the peer
//! accepts it only with a grant the coordinator obtained) and reads the stream itself.

use std::sync::Arc;
use std::time::Duration;

use hostshift_proto::v1::source_client::SourceClient;
use hostshift_proto::v1::{ApplyResult, PullRequest};
use hostshift_shared::buffered_tcp;
use hostshift_shared::tls::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tonic::transport::{Channel, Endpoint};

use super::sink;
use crate::Ctx;
use crate::error::AgentError;

/// Connection deadline to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline of the whole connect to a peer: TCP, TLS and HTTP/2 handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 pings to a peer, while a call runs and while idle: a connection that silently stops
/// passing bytes (a network partition, a peer host gone without a reset) fails its calls after
/// at most `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT` instead of hanging them for good (a
/// follower's stream, a pull). The peer's h2 layer answers pings whatever its handlers do, so a
/// slow but live stream is not cut.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may stay unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to a peer agent at `address`, verifying its certificate for `tls_name`.
///
/// # Errors
/// `Unavailable` saying which address could not be reached and what to check.
pub async fn connect_peer(ctx: &Ctx, address: &str, tls_name: &str) -> Result<Channel, AgentError> {
    let tls = ctx
        .config
        .tls
        .files()
        .client_config(tls_name)
        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| AgentError::InvalidArgument(format!("peer address {address:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| AgentError::Internal(format!("TLS set-up: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    // `connect_timeout` bounds the TCP connect only: a peer that accepts and then says nothing
    // would hang the TLS and HTTP/2 handshakes for good. The whole connect gets a deadline.
    // TCP with its reads buffered under tonic's TLS (see `buffered_tcp`: rustls alone reads the
    // stream a record or less at a time).
    let connected = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        endpoint.connect_with_connector(buffered_tcp::Connector),
    )
        .await
        .map_err(|_| {
            AgentError::Unavailable(format!(
                "cannot reach the source agent at {address} from this host: it accepted the connection but did not complete the TLS handshake within {HANDSHAKE_TIMEOUT:?} (a firewall or proxy dropping packets?)"
            ))
        })?;
    connected.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        AgentError::Unavailable(format!(
            "cannot reach the source agent at {address} from this host ({msg}): the new host must reach the old host's agent port, or sync with --relay"
        ))
    })
}

/// Reads the stream `req.read` from `req.source` and applies it as `req.apply` says.
///
/// # Errors
/// As [`sink::apply`], plus connection failures.
pub async fn pull(
    ctx: &Arc<Ctx>,
    req: PullRequest,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ApplyResult, AgentError> {
    let source = req
        .source
        .ok_or_else(|| AgentError::InvalidArgument("pull request without a source".into()))?;
    let mut read = req
        .read
        .ok_or_else(|| AgentError::InvalidArgument("pull request without a read request".into()))?;
    let header = req.apply.ok_or_else(|| {
        AgentError::InvalidArgument("pull request without an apply header".into())
    })?;
    read.grant = source.grant.clone();
    // A storage batch of a session: its entries come from this agent's disk, not the request.
    let header = super::session::fill_batch(ctx, &mut read, header)?;
    let channel = connect_peer(ctx, &source.address, &source.tls_name).await?;
    let stream = SourceClient::new(channel)
        .max_decoding_message_size(super::MAX_INLINE + 1024)
        .read(read)
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied => {
                AgentError::PermissionDenied(format!("the source agent refused: {}", s.message()))
            }
            tonic::Code::InvalidArgument => {
                AgentError::InvalidArgument(format!("the source agent refused: {}", s.message()))
            }
            _ => AgentError::Unavailable(format!("the source agent failed: {}", s.message())),
        })?
        .into_inner();
    sink::apply(ctx, header, stream, progress).await
}
