//! The rig: shared world (clusters, certificates) and per-test sandboxes (agents, databases).

mod agent;
mod bins;
mod catalog;
pub mod cutover;
mod follow;
pub mod fs;
pub mod managed;
pub mod moto;
mod nginx;
mod pm2;
mod sandbox;
pub mod uploader;
mod world;
pub mod writer;

pub use agent::{AgentProc, AgentSetup};
pub use bins::{CliOutput, agent_bin, cli, cli_in, hostshift_bin, on_a_terminal};
pub use catalog::post_data_objects;
pub use follow::{RoundWriter, follow_leftovers, table_rows, wait_caught_up};
pub use nginx::{HttpReply, NginxProc, UpstreamApp, children, http_get, nginx_bin, process_group};
pub use pm2::{FIXTURE_DB_PASSWORD, FIXTURE_JWT_SECRET, Pm2Proc, Pm2Rig, pm2_bin};
pub use sandbox::Sandbox;
pub use world::{
    NEW_IP, OLD_IP, PgInfo, TEMPLATE_DB, World, logical_world, round_trip_world, world,
};

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`. No fixed sleeps.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when `pid` is gone or a zombie (PID 1 reaps orphans late here; see TOOLCHAIN.md).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}
