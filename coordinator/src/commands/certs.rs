//! `hostshift certs init`: the migration CA and every certificate, in one folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hostshift_shared::pki::{self, AgentSpec, PkiError, PkiRequest};
use serde_json::json;

use crate::cli::Global;
use crate::error::{CliResult, failed, usage};

/// Certificates.
#[derive(Args)]
pub struct CertsCmd {
    #[command(subcommand)]
    cmd: CertsSub,
}

#[derive(Subcommand)]
enum CertsSub {
    /// Create a migration CA, a certificate per agent (server + client use) and the
    /// coordinator's client certificate. Keys are written with mode 0600; existing files are
    /// never overwritten without --force.
    ///
    /// Then copy ca.crt, agent-<name>.crt and agent-<name>.key to each host's
    /// /etc/hostshift/tls/, and keep ca.key offline.
    Init {
        /// Folder to write into (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// An agent and the DNS names / IPs it is reached at: NAME=HOST[,HOST...]. Repeat per
        /// agent, e.g. --agent old=10.0.0.5,old.internal --agent new=10.0.0.6.
        #[arg(long = "agent", required = true, value_parser = AgentSpec::parse)]
        agents: Vec<AgentSpec>,
        /// Name in the coordinator's certificate identity.
        #[arg(long, default_value = "coordinator")]
        coordinator_name: String,
        /// Validity in days (1..=3650). A migration is short: keep it short.
        #[arg(long, default_value_t = 30, value_parser = parse_days)]
        days: u32,
        /// Overwrite existing certificates and keys.
        #[arg(long)]
        force: bool,
    },
}

/// Longest certificate validity `certs init` issues (ten years, like `[backup] keep_days`):
/// more is a typo.
pub const MAX_DAYS: u32 = 3650;

/// A `--days` value outside 1..=[`MAX_DAYS`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{given} is outside 1..={max} days: certificates must be valid for at least a day; \
     a migration needs weeks, not years (default 30)",
    max = MAX_DAYS
)]
pub struct DaysOutOfRange {
    /// The value as given.
    pub given: String,
}

/// `--days`: 1..=[`MAX_DAYS`]. 0 used to become one day (plus the hour of clock skew allowed
/// before now) without a word.
fn parse_days(s: &str) -> Result<u32, DaysOutOfRange> {
    match s.parse::<u32>() {
        Ok(d) if (1..=MAX_DAYS).contains(&d) => Ok(d),
        _ => Err(DaysOutOfRange {
            given: s.to_string(),
        }),
    }
}

/// Runs `certs ...`.
///
/// # Errors
/// Usage error for bad names or existing files; failure for write errors.
pub fn run(g: &Global, c: CertsCmd) -> CliResult {
    let CertsSub::Init {
        dir,
        agents,
        coordinator_name,
        days,
        force,
    } = c.cmd;
    let req = PkiRequest {
        dir: dir.clone(),
        agents,
        coordinator_name,
        days,
        force,
    };
    let files = pki::init(&req).map_err(|e| match e {
        PkiError::Exists(_) | PkiError::Invalid(_) => usage(e),
        other => failed(other),
    })?;
    if g.json {
        crate::output::print_json(&json!({
            "dir": dir,
            "ca_cert": files.ca_cert,
            "ca_key": files.ca_key,
            "coordinator_cert": files.coordinator_cert,
            "coordinator_key": files.coordinator_key,
            "agents": files.agents.iter().map(|(n, c, k)| json!({"name": n, "cert": c, "key": k})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "Created the migration CA and certificates in {}:",
        dir.display()
    );
    for p in files.all() {
        println!("  {}", p.display());
    }
    println!();
    println!("Next:");
    for (name, cert, key) in &files.agents {
        println!(
            "  on the {name} host: install {} as /etc/hostshift/tls/agent.crt, {} as /etc/hostshift/tls/agent.key (mode 0600) and {} as /etc/hostshift/tls/ca.crt",
            cert.display(),
            key.display(),
            files.ca_cert.display()
        );
    }
    println!(
        "  in the plan's [tls]: ca, cert and key point at ca.crt, coordinator.crt, coordinator.key"
    );
    println!(
        "  keep {} offline: it can issue certificates your agents trust",
        files.ca_key.display()
    );
    Ok(())
}
