//! Connections from the coordinator to the agents, and errors people can act on.
//!
//! TLS problems surface late and cryptically (with TLS 1.3 a rejected client certificate shows
//! up at the first RPC, as an alert); [`explain`] turns the error chain into a sentence that says
//! which side refused whom and what to do.

use std::time::Duration;

use hostshift_proto::v1::agent_client::AgentClient;
use hostshift_proto::v1::backup_client::BackupClient;
use hostshift_proto::v1::db_stats_client::DbStatsClient;
use hostshift_proto::v1::env_files_client::EnvFilesClient;
use hostshift_proto::v1::follow_client::FollowClient;
use hostshift_proto::v1::grants_client::GrantsClient;
use hostshift_proto::v1::health_client::HealthClient;
use hostshift_proto::v1::hooks_client::HooksClient;
use hostshift_proto::v1::nginx_client::NginxClient;
use hostshift_proto::v1::pm2_client::Pm2Client;
use hostshift_proto::v1::source_client::SourceClient;
use hostshift_proto::v1::target_client::TargetClient;
use hostshift_shared::buffered_tcp;
use hostshift_shared::expect_identity;
use hostshift_shared::identity::{Identity, Role};
use hostshift_shared::tls::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tonic::transport::{Channel, Endpoint};

use crate::plan::{Plan, Side};

/// Connection attempt deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message the coordinator sends or accepts (encoded manifests, batch plans).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Default deadline of a unary RPC.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected agent of the plan.
#[derive(Clone)]
pub struct Agent {
    /// Which side.
    pub side: Side,
    /// Its address.
    pub address: String,
    /// The channel (cheap to clone).
    pub channel: Channel,
}

impl Agent {
    /// `service Agent` client.
    pub fn info(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel.clone())
    }

    /// `service Backup` client.
    pub fn backup(&self) -> BackupClient<Channel> {
        BackupClient::new(self.channel.clone())
    }

    /// `service Hooks` client.
    pub fn hooks(&self) -> HooksClient<Channel> {
        HooksClient::new(self.channel.clone())
    }

    /// `service Database` client (large messages allowed: table lists, sequence values).
    pub fn database(&self) -> hostshift_proto::v1::database_client::DatabaseClient<Channel> {
        hostshift_proto::v1::database_client::DatabaseClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// `service Follow` client (decoded rows may be large: see
    /// [`hostshift_shared::model::MAX_CHANGES_MESSAGE`]).
    pub fn follow(&self) -> FollowClient<Channel> {
        FollowClient::new(self.channel.clone())
            .max_decoding_message_size(hostshift_shared::model::MAX_CHANGES_MESSAGE)
    }

    /// `service Grants` client.
    pub fn grants(&self) -> GrantsClient<Channel> {
        GrantsClient::new(self.channel.clone())
    }

    /// `service Source` client (large messages allowed: manifests).
    pub fn source(&self) -> SourceClient<Channel> {
        SourceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// `service Target` client (large messages allowed: manifests and batch plans).
    pub fn target(&self) -> TargetClient<Channel> {
        TargetClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// `service Nginx` client.
    pub fn nginx(&self) -> NginxClient<Channel> {
        NginxClient::new(self.channel.clone())
    }

    /// `service Health` client.
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// `service DbStats` client.
    pub fn db_stats(&self) -> DbStatsClient<Channel> {
        DbStatsClient::new(self.channel.clone())
    }

    /// `service Pm2` client.
    pub fn pm2(&self) -> Pm2Client<Channel> {
        Pm2Client::new(self.channel.clone())
    }

    /// `service EnvFiles` client.
    pub fn env_files(&self) -> EnvFilesClient<Channel> {
        EnvFilesClient::new(self.channel.clone())
    }
}

/// Why an agent could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("{side} agent at {address}: {message}")]
pub struct ConnectError {
    /// Which side.
    pub side: Side,
    /// The address tried.
    pub address: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Connects to one side's agent with the plan's certificates, and accepts it only when its
/// certificate carries the identity the plan names for that side (`agent:<[old|new] agent>`):
/// a plan with swapped addresses fails here, before any request — so before any write. The
/// TLS handshake happens here, but a refused *client* certificate only shows at the first RPC
/// (TLS 1.3), so callers make one (`Info`) before trusting the connection.
///
/// # Errors
/// [`ConnectError`] with an explanation.
pub async fn connect(plan: &Plan, side: Side) -> Result<Agent, ConnectError> {
    let host = plan.host(side);
    let err = |message: String| ConnectError {
        side,
        address: host.address.clone(),
        message,
    };
    let expected = Identity::new(Role::Agent, host.agent.clone());
    let channel = expect_identity::connect_expecting(
        &plan.tls_files(),
        &host.server_name(),
        expected,
        tune,
        &host.address,
    )
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(|e| err(explain(&e)))?;
    Ok(Agent {
        side,
        address: host.address.clone(),
        channel,
    })
}

/// Like [`connect`], but accepts any agent certificate of the migration CA: for `check`, which
/// reports who answers at each address instead of refusing.
///
/// # Errors
/// [`ConnectError`] with an explanation.
pub async fn connect_any(plan: &Plan, side: Side) -> Result<Agent, ConnectError> {
    let host = plan.host(side);
    let err = |message: String| ConnectError {
        side,
        address: host.address.clone(),
        message,
    };
    let tls = plan
        .tls_files()
        .client_config(&host.server_name())
        .map_err(|e| err(e.to_string()))?;
    let endpoint = Endpoint::from_shared(host.address.clone())
        .map_err(|e| err(format!("invalid address: {e}")))?
        .tls_config(tls)
        .map_err(|e| err(format!("TLS set-up: {e}")))?;
    let channel = tune(endpoint)
        .connect_with_connector(buffered_tcp::Connector)
        .await
        .map_err(|e| err(explain(&e)))?;
    Ok(Agent {
        side,
        address: host.address.clone(),
        channel,
    })
}

/// Timeouts, flow-control windows and keep-alive of every agent connection.
fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

/// A human explanation of a transport error, from its whole source chain.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    with_hint(parts)
}

fn with_hint(parts: Vec<String>) -> String {
    let mut chain = String::new();
    for p in parts {
        if !chain.contains(&p) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&p);
        }
    }
    let lower = chain.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    // An agent's own message about its database's TLS (`ca_file`) already says what to fix; the
    // hints below are about the agents' mutual TLS and would point at the wrong CA.
    let hint = if has(&["ca_file"]) {
        ""
    } else if has(&["cannot connect: database"]) && has(&["connection refused"]) {
        // The agent reached, its database did not: the agents' hints below would mislead.
        "the agent cannot reach this database: is PostgreSQL running there, and are the host and port of the conninfo in the agent's [[databases]] entry right?"
    } else if has(&["unknownissuer", "unknown issuer", "badsignature"]) {
        "the agent's certificate was not issued by the CA in the plan's [tls] ca: both sides must use certificates from the same `hostshift certs init`"
    } else if has(&["notvalidforname", "not valid for name"]) {
        "the agent's certificate does not name this address: re-issue it with the address in --agent NAME=HOST,... or set tls_name in the plan"
    } else if has(&[
        "unknownca",
        "unknown ca",
        "badcertificate",
        "bad certificate",
        "certificaterequired",
        "certificate required",
        "decrypterror",
        "broken pipe",
    ]) {
        "the agent refused our client certificate (it was not issued by the agent's CA): use coordinator.crt/.key from the same `hostshift certs init` as the agent's certificate"
    } else if has(&["expired"]) {
        "a certificate has expired: issue new ones with `hostshift certs init --force`"
    } else if has(&["connection refused"]) {
        "nothing listens there: is hostshift-agent running (systemctl status hostshift-agent) and is the port right?"
    } else if has(&["timed out", "deadline"]) {
        "no answer in time: check the address, firewalls and security groups (the agent's port must be open to the coordinator)"
    } else {
        ""
    };
    if hint.is_empty() {
        chain
    } else {
        format!("{hint} [{chain}]")
    }
}

/// Explains a failed RPC: transport failures get the TLS/network explanation, statuses the
/// agent sent keep the agent's own message.
pub fn explain_status(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(src)
            if matches!(
                s.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
            ) =>
        {
            let mut parts = vec![s.message().to_string()];
            let mut next = Some(src);
            while let Some(e) = next {
                parts.push(e.to_string());
                next = e.source();
            }
            with_hint(parts)
        }
        _ if s.code() == tonic::Code::Unavailable => with_hint(vec![s.message().to_string()]),
        _ => {
            // The agent's message may already start with the word ("integrity check failed:
            // …" from a DataLoss): say it once.
            let word = code_word(s.code());
            if s.message().starts_with(word) {
                s.message().to_string()
            } else {
                format!("{word}: {}", s.message())
            }
        }
    }
}

/// The first RPC on a new connection doubles as the check that the agent accepted our client
/// certificate (with TLS 1.3 it says so only after the handshake). When that RPC dies as
/// "cancelled" or with a reset, the agent closed the connection right after TLS set-up — which
/// in practice means it refused our certificate; say so instead of "operation was canceled".
pub fn explain_first_rpc(s: &tonic::Status) -> String {
    let text = explain_status(s);
    let lower = text.to_lowercase();
    if s.code() == tonic::Code::Cancelled
        || lower.contains("connection reset")
        || (lower.contains("connection error") && !lower.contains("client certificate"))
    {
        format!(
            "the agent closed the connection right after TLS set-up; most likely it refused our client certificate (not issued by its CA): use coordinator.crt/.key from the same `hostshift certs init` as the agent's certificate [{text}]"
        )
    } else {
        text
    }
}

fn code_word(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::PermissionDenied => "refused",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::DataLoss => "integrity check failed",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::Cancelled => "cancelled",
        _ => "failed",
    }
}

/// An RPC that failed: the agent's status, or the transport's. Its text is [`explain_status`];
/// the status stays inside for callers that decide by its code.
#[derive(Debug, thiserror::Error)]
#[error("{}", explain_status(.0))]
pub struct RpcError(pub tonic::Status);

/// Wraps a request with the default deadline.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(RPC_TIMEOUT);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_message_that_starts_with_the_code_word_says_it_once() {
        let s = tonic::Status::data_loss("integrity check failed: chunk 3 is corrupt");
        assert_eq!(
            explain_status(&s),
            "integrity check failed: chunk 3 is corrupt"
        );
        let s = tonic::Status::data_loss("chunk 3 is corrupt");
        assert_eq!(
            explain_status(&s),
            "integrity check failed: chunk 3 is corrupt"
        );
    }
}
