//! The hostshift agent: a daemon on each host that answers the coordinator over gRPC with mutual
//! TLS, and acts only on what its own config declares.
//!
//! # Architecture
//! Calls go one way: `main.rs` → [`serve`] → a service's `service.rs` → its folder's work files
//! → the libraries ([`postgres`], [`storage`]) → [`process`], [`fsutil`], [`error`],
//! [`config`]. The libraries import no service folder; service folders share only named pieces
//! (`transfer` uses `database`'s wire conversions and freeze record, `database` uses
//! `transfer`'s write permit), never a `service.rs`.
//!
//! - [`config`] — the agent's TOML config: what this host has and what may be done with it;
//!   [`overlap`] refuses folders of it that overlap (a sync would delete the other's files).
//! - [`auth`] — the caller's identity from its verified certificate; control services accept the
//!   coordinator only.
//! - One folder per gRPC service, named after it; its `service.rs` only translates proto ↔
//!   domain, the work sits in files that know nothing of tonic:
//!   - host control: [`agent_info`] (`service Agent`: tools, disks, inventory), [`pm2`]
//!     (`service Pm2`), [`nginx`] (`service Nginx`, also the maintenance page), [`health`]
//!     (`service Health`), [`hooks`] (`service Hooks`), [`envfile`] (`service EnvFiles`);
//!   - the data path: [`transfer`] (`service Grants`, `Source`, `Target`: framed streams between
//!     agents, pulled by the new one) moves files, [`storage`] trees and databases;
//!     [`database`] (`service Database`) answers what a database sync asks besides the streams
//!     (tables, snapshots, key ranges, fingerprints, the write freeze) and holds the read-only
//!     `service DbStats` in `database/stats/`; [`backup`] (`service Backup`, also
//!     `hostshift-agent backup`) writes backups on this host; [`follow`] (`service Follow`)
//!     keeps the new host's databases current by logical decoding (slot and changes on the old
//!     host, the follower applying them exactly once on the new one).
//! - The data path's two libraries, without gRPC: [`postgres`] (everything that talks to
//!   PostgreSQL: [`postgres::connect`] opens a configured database by name for every caller;
//!   schema, tables by key range, sequences, large objects, fingerprints — with its own session
//!   type, `postgres::conn`, for a sync's long transactions) and [`storage`] (manifests, deltas,
//!   packing and staged commits of a tree). So the database code has two rooms: `postgres/`
//!   (how) and `database/` (the RPCs). The three `freeze.rs` are the agent's record of a freeze
//!   (`database/`), the SQL that applies it (`postgres/`) and — in the coordinator — the step.
//! - [`process`] — the only place that starts external programs; [`fsutil`] — the one atomic
//!   file replace.
//! - [`error`] — [`error::AgentError`] and its single mapping to gRPC status codes.
//! - [`serve`] — binds the services to a listener; `main.rs` only parses flags and calls it, and
//!   tests call it the same way. One `tracing` span per RPC (`rpc{method=…}`).
//!
//! Shutdown: a [`CancellationToken`] (SIGTERM/SIGINT in `main.rs`) stops accepting connections,
//! cancels in-flight work (children are terminated, then killed), and waits for tracked tasks up
//! to `limits.shutdown_grace_secs`.

pub mod agent_info;
pub mod auth;
pub mod backup;
pub mod config;
pub mod database;
pub mod envfile;
pub mod error;
pub mod follow;
pub mod fsutil;
pub mod health;
pub mod hooks;
pub mod nginx;
pub mod overlap;
pub mod pm2;
pub mod postgres;
pub mod process;
pub mod storage;
pub mod transfer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hostshift_proto::v1::agent_server::AgentServer;
use hostshift_proto::v1::backup_server::BackupServer;
use hostshift_proto::v1::database_server::DatabaseServer;
use hostshift_proto::v1::db_stats_server::DbStatsServer;
use hostshift_proto::v1::env_files_server::EnvFilesServer;
use hostshift_proto::v1::follow_server::FollowServer;
use hostshift_proto::v1::grants_server::GrantsServer;
use hostshift_proto::v1::health_server::HealthServer;
use hostshift_proto::v1::hooks_server::HooksServer;
use hostshift_proto::v1::nginx_server::NginxServer;
use hostshift_proto::v1::pm2_server::Pm2Server;
use hostshift_proto::v1::source_server::SourceServer;
use hostshift_proto::v1::target_server::TargetServer;
use hostshift_shared::buffered_tcp::BufferedTcp;
use hostshift_shared::identity::Identity;
use hostshift_shared::tls::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::config::{AgentConfig, DatabaseConfig, StorageConfig};
use crate::error::AgentError;

/// What every service shares: the config, who we are, shutdown, and the tasks we started.
pub struct Ctx {
    /// The validated config.
    pub config: AgentConfig,
    /// Where it was read from (for messages: "declare it in ...").
    pub config_path: PathBuf,
    /// Our own certificate identity (`agent:<name>`).
    pub identity: Identity,
    /// Fires on SIGTERM: in-flight work stops and cleans up.
    pub shutdown: CancellationToken,
    /// Background tasks (streams, hooks) that shutdown waits for.
    pub tasks: TaskTracker,
    /// Grants this agent issued to peer agents (in memory only).
    pub grants: transfer::GrantStore,
    /// Database snapshots held open for a sync.
    pub snapshots: database::Snapshots,
    /// Followers running on this (new) host.
    pub followers: follow::Followers,
    /// The old host's side: one PostgreSQL session per followed database, reused by its peeks.
    pub follow_sessions: follow::source::Sessions,
    /// The old host's side: sessions kept for the next table piece a sync reads.
    pub read_pool: Arc<postgres::ReadPool>,
}

impl Ctx {
    /// A configured database by name.
    ///
    /// # Errors
    /// [`AgentError::NotDeclared`] when the config has no such database.
    pub fn database(&self, name: &str) -> Result<&DatabaseConfig, AgentError> {
        self.config
            .databases
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| self.not_declared("database", name))
    }

    /// A configured storage tree by name.
    ///
    /// # Errors
    /// [`AgentError::NotDeclared`] when the config has no such tree.
    pub fn storage(&self, name: &str) -> Result<&StorageConfig, AgentError> {
        self.config
            .storage
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| self.not_declared("storage tree", name))
    }

    fn not_declared(&self, what: &'static str, name: &str) -> AgentError {
        AgentError::NotDeclared {
            what,
            name: name.to_string(),
            config: self.config_path.display().to_string(),
        }
    }
}

/// Serves all agent services on `listener` until `shutdown` fires, then drains in-flight work
/// for at most the configured grace period.
///
/// # Errors
/// TLS files that cannot be loaded, or a transport failure.
pub async fn serve(
    config: AgentConfig,
    config_path: PathBuf,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let tls_files = config.tls.files();
    let tls = tls_files
        .server_config()
        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
    let identity = tls_files
        .own_identity()
        .map_err(|e| AgentError::FailedPrecondition(e.to_string()))?;
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let ctx = Arc::new(Ctx {
        config,
        config_path,
        identity,
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        grants: transfer::GrantStore::default(),
        snapshots: database::Snapshots::default(),
        followers: follow::Followers::default(),
        follow_sessions: follow::source::Sessions::default(),
        read_pool: Arc::default(),
    });
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Internal(format!("listener address: {e}")))?;
    tracing::info!(%addr, identity = %ctx.identity, role = %ctx.config.role, "agent serving");

    let agent = AgentServer::with_interceptor(
        agent_info::AgentInfoService::new(ctx.clone()),
        auth::coordinator_only,
    );
    // Backups: made on this host, written only under [backup] dir; restore needs [allow].
    let backup = BackupServer::with_interceptor(
        backup::BackupService::new(ctx.clone()),
        auth::coordinator_only,
    );
    let hooks = HooksServer::with_interceptor(
        hooks::HooksService::new(ctx.clone()),
        auth::coordinator_only,
    );
    // One PM2 control for both services that act on PM2 (one action at a time).
    let pm2_control = Arc::new(pm2::Pm2Control::new(ctx.clone()));
    let pm2 = Pm2Server::with_interceptor(
        pm2::Pm2Service::new(pm2_control.clone(), shutdown.clone()),
        auth::coordinator_only,
    );
    let env_files = EnvFilesServer::with_interceptor(
        envfile::EnvFilesService::new(ctx.clone(), pm2_control),
        auth::coordinator_only,
    );

    let nginx = NginxServer::with_interceptor(
        nginx::NginxService::new(ctx.clone()),
        auth::coordinator_only,
    );
    let health = HealthServer::with_interceptor(
        health::HealthService::new(ctx.clone()),
        auth::coordinator_only,
    );
    let db_stats = DbStatsServer::with_interceptor(
        database::DbStatsService::new(ctx.clone()),
        auth::coordinator_only,
    );

    // Data services. Source accepts a peer agent too (each read checks its grant).
    let max = transfer::MAX_INLINE + 1024 * 1024;
    let grants = GrantsServer::with_interceptor(
        transfer::GrantsService::new(ctx.clone()),
        auth::coordinator_only,
    );
    let source = SourceServer::with_interceptor(
        transfer::SourceService::new(ctx.clone()),
        auth::coordinator_or_agent,
    );
    let target = tonic::service::interceptor::InterceptedService::new(
        TargetServer::new(transfer::TargetService::new(ctx.clone())).max_decoding_message_size(max),
        auth::coordinator_only,
    );

    let database = DatabaseServer::with_interceptor(
        database::DatabaseService::new(ctx.clone()),
        auth::coordinator_only,
    );

    // Following: Changes accepts the peer agent holding the follow grant (checked per call).
    let follow = FollowServer::with_interceptor(
        follow::FollowService::new(ctx.clone()),
        auth::coordinator_or_agent,
    );
    // Followers persisted before a restart resume by themselves.
    follow::follower::resume(&ctx);

    let incoming = without_nagle(listener);
    let server = Server::builder()
        .tls_config(tls)
        .map_err(|e| AgentError::FailedPrecondition(format!("TLS set-up: {e}")))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // One span per RPC, so `HOSTSHIFT_LOG=debug` (and every event a handler logs) names
        // the call it belongs to. Tasks a handler spawns log outside it.
        .trace_fn(|req| {
            let span = tracing::info_span!("rpc", method = %req.uri().path());
            span.in_scope(|| tracing::debug!("request"));
            span
        })
        .add_service(agent)
        .add_service(hooks)
        .add_service(backup)
        .add_service(nginx)
        .add_service(health)
        .add_service(db_stats)
        .add_service(pm2)
        .add_service(env_files)
        .add_service(grants)
        .add_service(database)
        .add_service(follow)
        .add_service(source)
        .add_service(target)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);

    // Run until shutdown; then give in-flight requests the grace period to finish.
    tokio::select! {
        r = &mut server => return r.map_err(|e| AgentError::Internal(format!("server: {e}"))),
        () = shutdown.cancelled() => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: in-flight work is being cancelled"
    );
    ctx.tasks.close();
    let drained = tokio::time::timeout(grace, async {
        let _ = (&mut server).await;
        ctx.tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; dropping what is left (its child processes are killed)");
    }
    Ok(())
}

/// The listener's connections with `TCP_NODELAY` set and their reads buffered under TLS
/// ([`BufferedTcp`]: rustls alone reads a stream a record or less at a time). tonic sets
/// `TCP_NODELAY` only on the listeners it binds itself (`Server::tcp_nodelay`), not on an
/// `incoming` stream like this one; without it an answer written in several small pieces
/// (HTTP/2 headers, data, trailers) waited for the client's delayed ACK — up to 40 ms per call,
/// measured as 40–47 ms gaps between every two calls of a sync (and of the cutover's freeze).
fn without_nagle(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<BufferedTcp>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| conn.map(BufferedTcp::new))
}

#[cfg(test)]
mod nagle_tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn every_accepted_connection_has_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let incoming = super::without_nagle(listener);
        futures::pin_mut!(incoming);
        for _ in 0..2 {
            let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let served = incoming
                .next()
                .await
                .expect("a connection")
                .expect("accepted");
            assert!(
                served.tcp().nodelay().expect("nodelay"),
                "TCP_NODELAY is off"
            );
        }
    }
}
