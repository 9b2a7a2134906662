//! The agent config's shape, part one: the top level ([`AgentConfig`]) and what this host has —
//! TLS files, databases, storage trees, config files, PM2 apps, the nginx site, named hooks. Each
//! field's doc comment is its reference; serde refuses unknown keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use hostshift_shared::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use super::policy::{AllowConfig, BackupConfig, LimitsConfig, ToolsConfig};

/// The whole agent config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address to serve gRPC on, e.g. `"0.0.0.0:7443"`. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// A label for people and reports, e.g. `"old"` or `"new"`. Not a permission.
    pub role: String,
    /// Whether a sync may write into this host: `"source"` (the old host, only ever read: every
    /// sync write is refused, even for resources `[allow]` lists) or `"target"` (the new host:
    /// it may receive syncs within `[allow]`, and can still be read, e.g. by `verify`). Default
    /// `"source"`, so a host whose config does not say it is a target can never be overwritten
    /// by a sync — not even through a plan with swapped addresses. `"either"`: both, for blue/green
    /// pairs moved back and forth (docs/agent-config.md says what that gives up).
    #[serde(default)]
    pub sync_role: SyncRole,
    /// Mutual-TLS files. TLS cannot be turned off.
    pub tls: TlsConfig,
    /// PostgreSQL databases this agent may read (and, with `[allow]`, restore into).
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// Storage trees (folders of user artifacts).
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
    /// Single config files (`.env`, `ecosystem.config.cjs`, an nginx site file).
    #[serde(default)]
    pub files: Vec<FileConfig>,
    /// PM2, when this host runs its apps under PM2.
    pub pm2: Option<Pm2Config>,
    /// nginx, when this host serves through nginx.
    pub nginx: Option<NginxConfig>,
    /// Named hooks: commands the host's owner allows hostshift to run, by name only.
    #[serde(default)]
    pub hooks: BTreeMap<String, HookConfig>,
    /// Destructive operations this agent allows. Default: none.
    #[serde(default)]
    pub allow: AllowConfig,
    /// Where external tools live.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// Runtime limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Folder for the agent's own state: manifest caches, maintenance-mode originals. Created on
    /// demand. Default `/var/lib/hostshift` (the systemd unit's `StateDirectory`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `[backup]`: where backups are written, how long they are kept, optional S3 upload.
    #[serde(default)]
    pub backup: BackupConfig,
}

/// What a sync may do with this host (`sync_role`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncRole {
    /// Only read: the host a migration moves away from.
    #[default]
    Source,
    /// May be written by a sync (within `[allow]`) and read: the host a migration moves to.
    Target,
    /// Both, for a blue/green pair whose hosts swap places: the plan (its `[old]` and `[new]`)
    /// decides which way data goes. An explicit opt-in, because it gives up the config-level
    /// guard that a source is never written; what still stops a plan with swapped addresses is
    /// the coordinator's check of each agent's certificate identity against the plan's
    /// `agent` names, and a sync refuses to write into a host an earlier cutover left frozen.
    Either,
}

impl SyncRole {
    /// The word in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncRole::Source => "source",
            SyncRole::Target => "target",
            SyncRole::Either => "either",
        }
    }

    /// Whether a sync may write here (within `[allow]`).
    pub fn receives(self) -> bool {
        matches!(self, SyncRole::Target | SyncRole::Either)
    }
}

/// `[tls]`: PEM files from `hostshift certs init`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This agent's certificate (`agent-<name>.crt`).
    pub cert: PathBuf,
    /// This agent's private key (`agent-<name>.key`, mode 0600).
    pub key: PathBuf,
    /// The migration CA certificate (`ca.crt`): callers must present a certificate it signed.
    pub ca: PathBuf,
}

impl TlsConfig {
    /// As the shared loader's type.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }
}

/// `[[databases]]`: one PostgreSQL database.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The name plans use for this database (same name on both hosts).
    pub name: String,
    /// libpq connection string, key=value (`host=/var/run/postgresql port=5432 user=postgres
    /// dbname=app`) or URL (`postgresql://app@db.example.rds.amazonaws.com:5432/app`).
    pub conninfo: String,
    /// File holding the password, when the server asks for one (never put it in `conninfo`).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signs the server's certificate (e.g. the RDS CA bundle). With it,
    /// or with `sslmode=require` in `conninfo`, connections use TLS and the server's certificate
    /// is verified (against this file, else the system's roots).
    pub ca_file: Option<PathBuf>,
}

/// `[[storage]]`: one storage tree.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The name plans use for this tree.
    pub name: String,
    /// Absolute path of the tree's root folder.
    pub path: PathBuf,
}

/// `[[files]]`: one config file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The name plans use for this file.
    pub name: String,
    /// Absolute path of the file.
    pub path: PathBuf,
}

/// `[pm2]`: how to reach this host's PM2.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pm2Config {
    /// The `pm2` program.
    #[serde(default = "default_pm2_bin")]
    pub bin: PathBuf,
    /// System user that owns the PM2 daemon. Required when the agent runs as root, so that it
    /// never starts a root PM2 daemon by accident.
    pub user: Option<String>,
    /// `PM2_HOME` of that daemon (e.g. `/home/app/.pm2`).
    pub home: PathBuf,
    /// Apps (PM2 names) this agent may control.
    #[serde(default)]
    pub apps: Vec<String>,
    /// The ecosystem file apps are started from.
    pub ecosystem: Option<PathBuf>,
}

/// `[nginx]`: the nginx instance in front of the apps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    /// The `nginx` program.
    #[serde(default = "default_nginx_bin")]
    pub bin: PathBuf,
    /// Main config file (`-c`).
    #[serde(default = "default_nginx_conf")]
    pub config: PathBuf,
    /// Prefix (`-p`), for instances that are not the system one.
    pub prefix: Option<PathBuf>,
    /// The app's site file (`/etc/nginx/sites-available/<site>`).
    pub site: PathBuf,
    /// Folder where the agent keeps the original site file while maintenance mode is on (kept
    /// out of nginx's include globs on purpose). Default `/var/lib/hostshift/nginx`, inside the
    /// systemd unit's `StateDirectory`.
    #[serde(default = "default_nginx_state_dir")]
    pub state_dir: PathBuf,
}

/// `[hooks.<name>]`: a command the host's owner allows hostshift to run by name.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Shell command, run with `/bin/sh -c` (e.g. `"npm ci && npm run build"`).
    pub command: String,
    /// One line for people (`hostshift hook list`).
    #[serde(default)]
    pub description: String,
    /// Working directory (absolute).
    pub cwd: Option<PathBuf>,
    /// System user to run as (default: the agent's user).
    pub user: Option<String>,
    /// Environment variables; nothing else from the agent's environment is passed but `PATH`,
    /// `HOME`, `USER` and `LANG`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds before the hook is terminated (SIGTERM, then SIGKILL after 5 s).
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hostshift")
}
fn default_pm2_bin() -> PathBuf {
    PathBuf::from("pm2")
}
fn default_nginx_bin() -> PathBuf {
    PathBuf::from("/usr/sbin/nginx")
}
fn default_nginx_conf() -> PathBuf {
    PathBuf::from("/etc/nginx/nginx.conf")
}
fn default_nginx_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hostshift/nginx")
}
fn default_hook_timeout() -> u64 {
    600
}
