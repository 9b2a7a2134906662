//! The plan file: what to move, from which agent to which, and how to switch traffic.
//!
//! A plan names resources (databases, storage trees, files) by the names the agents' configs give
//! them; each agent maps a name to its own local path. The plan never carries paths on a host or
//! commands to run — it cannot make an agent touch anything its owner did not declare.
//!
//! `hostshift plan init` writes [`template::TEMPLATE`] (every key, commented); `hostshift plan
//! check` runs [`Plan::load`], which reports each problem with its file, line and key.

pub mod template;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hostshift_shared::tls::TlsFiles;
use hostshift_shared::tomlpos::{Located, Problems};
use serde::{Deserialize, Serialize};

/// A whole plan.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `[migration]`: naming and bookkeeping.
    pub migration: Migration,
    /// `[old]`: the host you move away from (source of truth until the switch).
    pub old: Host,
    /// `[new]`: the host you move to.
    pub new: Host,
    /// `[tls]`: the coordinator's certificate files.
    pub tls: PlanTls,
    /// `[[databases]]`: databases to move.
    #[serde(default)]
    pub databases: Vec<PlanDatabase>,
    /// `[[storage]]`: storage trees to move.
    #[serde(default)]
    pub storage: Vec<PlanStorage>,
    /// `[[files]]`: config files to move.
    #[serde(default)]
    pub files: Vec<PlanFile>,
    /// `[pm2]`: apps to start on the new host and stop during the freeze.
    #[serde(default)]
    pub pm2: PlanPm2,
    /// `[nginx]`: whether nginx fronts the apps (maintenance page during the freeze).
    #[serde(default)]
    pub nginx: PlanNginx,
    /// `[[health]]`: HTTP checks proving the apps serve.
    #[serde(default)]
    pub health: Vec<HealthCheck>,
    /// `[freeze]`: how writes are stopped on the old host during the cutover.
    #[serde(default)]
    pub freeze: Freeze,
    /// `[switch]`: how traffic moves to the new host.
    pub switch: Switch,
    /// `[cutover]`: gates and limits for the cutover.
    #[serde(default)]
    pub cutover: CutoverSettings,
    /// `[rehearsal]`: scratch names on the new host for `hostshift rehearse --plan`.
    #[serde(default)]
    pub rehearsal: Rehearsal,
    /// Directory holding this plan; relative paths in it are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The plan file.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[migration]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// A short name; journals and reports are filed under it.
    pub name: String,
    /// Where the coordinator keeps its journal and reports (relative to the plan).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// `[old]` / `[new]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// The agent's address, `https://HOST:PORT`.
    pub address: String,
    /// The agent name its certificate must carry (`agent:<name>` from `certs init`).
    pub agent: String,
    /// Name to verify the agent's certificate against; default: the host part of `address`.
    pub tls_name: Option<String>,
    /// EC2 instance id (for `elastic-ip` and `load-balancer` switches).
    pub instance_id: Option<String>,
    /// Public or private IP of the host (for `dns` switches).
    pub ip: Option<String>,
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTls {
    /// The migration CA (`ca.crt`).
    pub ca: PathBuf,
    /// The coordinator's certificate (`coordinator.crt`).
    pub cert: PathBuf,
    /// The coordinator's key (`coordinator.key`).
    pub key: PathBuf,
}

/// `[[databases]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDatabase {
    /// The database's name in the old agent's config (and the new one's, unless `target`).
    pub name: String,
    /// Its name in the new agent's config, when different (e.g. a differently named RDS
    /// database); `hostshift rehearse --plan` sets it to the `[rehearsal]` scratch name.
    #[serde(default)]
    pub target: Option<String>,
    /// Tables to copy, as `schema.table` or `schema.*` (like `pg_dump -t`); empty = all.
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables to leave out, same patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `[[storage]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStorage {
    /// The tree's name in the old agent's config (and the new one's, unless `target`).
    pub name: String,
    /// Its name in the new agent's config, when different.
    #[serde(default)]
    pub target: Option<String>,
    /// Delete files on the new host that no longer exist on the old one.
    #[serde(default = "yes")]
    pub delete: bool,
}

/// `[[files]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The file's name in the old agent's config (and the new one's, unless `target`).
    pub name: String,
    /// Its name in the new agent's config, when different.
    #[serde(default)]
    pub target: Option<String>,
    /// `.env` keys to set on the new host after copying (e.g. `CORS_ORIGIN`).
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
}

/// `[pm2]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPm2 {
    /// PM2 app names that must be online on the new host before the cutover.
    #[serde(default)]
    pub apps: Vec<String>,
}

/// `[nginx]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanNginx {
    /// nginx fronts the apps on both hosts.
    #[serde(default)]
    pub enabled: bool,
    /// Paths that still reach the app during maintenance (e.g. `/health`).
    #[serde(default)]
    pub maintenance_pass: Vec<String>,
}

/// Where a health check runs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CheckFrom {
    /// By the old agent, on its host.
    Old,
    /// By the new agent, on its host (`localhost` is the new host).
    New,
    /// By the coordinator (public URLs).
    Coordinator,
}

/// `[[health]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A short name.
    pub name: String,
    /// URL to GET.
    pub url: String,
    /// Who runs it.
    pub from: CheckFrom,
    /// `Host` header to send.
    pub host_header: Option<String>,
    /// File holding a bearer token (read where the check runs).
    pub bearer_token_file: Option<PathBuf>,
    /// Expected HTTP status.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Substring the body must contain.
    pub body_contains: Option<String>,
    /// `field=value` that the JSON body must hold (dotted path).
    pub json_field: Option<String>,
    /// Seconds per attempt.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
    /// Attempts before the check fails (backoff doubles from 0.5 s).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// A way of stopping writes on the old host.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum FreezeMethod {
    /// nginx serves a 503 maintenance page.
    MaintenancePage,
    /// The plan's PM2 apps are stopped.
    StopApps,
    /// The databases are made read-only and open sessions ended.
    ReadOnly,
}

/// `[freeze]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// Methods, applied in this order and undone in reverse.
    #[serde(default = "default_freeze_methods")]
    pub methods: Vec<FreezeMethod>,
    /// Longest acceptable write freeze, seconds; the cutover refuses to start when the predicted
    /// freeze is longer.
    #[serde(default = "default_budget")]
    pub budget_secs: u64,
}

impl Default for Freeze {
    fn default() -> Self {
        Self {
            methods: default_freeze_methods(),
            budget_secs: default_budget(),
        }
    }
}

/// How traffic moves.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchMethod {
    /// Re-associate an Elastic IP to the new instance.
    ElasticIp,
    /// Route 53 UPSERT of an A record.
    Dns,
    /// Move load-balancer targets.
    LoadBalancer,
    /// The operator switches traffic.
    None,
}

/// `[switch]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// The method.
    pub method: SwitchMethod,
    /// AWS settings for the API methods.
    pub aws: Option<AwsSettings>,
    /// For `elastic-ip`.
    pub elastic_ip: Option<ElasticIp>,
    /// For `dns`.
    pub dns: Option<Dns>,
    /// For `load-balancer`.
    pub load_balancer: Option<LoadBalancer>,
    /// Public URLs checked through the switched endpoint (by the coordinator).
    #[serde(default)]
    pub verify_urls: Vec<String>,
}

/// `[switch.aws]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint override (a local stand-in in tests); default: AWS.
    pub endpoint_url: Option<String>,
    /// Named profile from `~/.aws/config`.
    pub profile: Option<String>,
}

/// `[switch.elastic_ip]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticIp {
    /// `eipalloc-...`
    pub allocation_id: String,
}

/// `[switch.dns]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Route 53 hosted zone id.
    pub zone_id: String,
    /// Record name, e.g. `app.example.com.`
    pub record: String,
    /// TTL in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

/// `[switch.load_balancer]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// Target group ARN the instances are registered in.
    pub target_group_arn: String,
    /// Target port.
    #[serde(default = "default_lb_port")]
    pub port: u16,
}

/// `[rehearsal]`: for each database, storage tree and config file of the plan, the name of a
/// scratch resource the new agent's config declares (and allows writing). `hostshift rehearse
/// --plan` copies into those only, so a rehearsal against the real hosts never touches the real
/// targets, never freezes the old host and never switches traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rehearsal {
    /// Plan database name → scratch database name on the new host.
    #[serde(default)]
    pub databases: BTreeMap<String, String>,
    /// Plan storage name → scratch storage name on the new host.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// Plan file name → scratch file name on the new host.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The name a resource has on the new host.
pub trait OnNew {
    /// `target`, or the plan name.
    fn on_new(&self) -> &str;
}

impl OnNew for PlanDatabase {
    fn on_new(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.name)
    }
}

impl OnNew for PlanStorage {
    fn on_new(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.name)
    }
}

impl OnNew for PlanFile {
    fn on_new(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.name)
    }
}

/// `[cutover]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverSettings {
    /// A clean `verify` must be at most this old, minutes.
    #[serde(default = "default_freshness")]
    pub verify_freshness_mins: u64,
    /// A backup of the old host must be at most this old, hours.
    #[serde(default = "default_backup_age")]
    pub backup_max_age_hours: u64,
}

impl Default for CutoverSettings {
    fn default() -> Self {
        Self {
            verify_freshness_mins: default_freshness(),
            backup_max_age_hours: default_backup_age(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".hostshift")
}
fn yes() -> bool {
    true
}
fn default_status() -> u16 {
    200
}
fn default_check_timeout() -> u64 {
    5
}
fn default_retries() -> u32 {
    3
}
fn default_freeze_methods() -> Vec<FreezeMethod> {
    vec![
        FreezeMethod::MaintenancePage,
        FreezeMethod::StopApps,
        FreezeMethod::ReadOnly,
    ]
}
fn default_budget() -> u64 {
    30
}
fn default_ttl() -> u32 {
    60
}
fn default_lb_port() -> u16 {
    80
}
fn default_freshness() -> u64 {
    60
}
fn default_backup_age() -> u64 {
    24
}

/// Which side of the move.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The host you move away from.
    Old,
    /// The host you move to.
    New,
}

impl Side {
    /// `"old"` / `"new"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Plan {
    /// Reads, parses and validates a plan.
    ///
    /// # Errors
    /// Every problem found, each with file, line and key.
    pub fn load(path: &Path) -> Result<Plan, Problems> {
        let located = Located::read(path)?;
        Self::from_located(&located)
    }

    /// Parses and validates plan text that came from `path`.
    ///
    /// # Errors
    /// As [`Plan::load`].
    pub fn from_located(located: &Located) -> Result<Plan, Problems> {
        let mut plan: Plan = located.parse()?;
        plan.path = located.file().to_path_buf();
        plan.base_dir = located
            .file()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let problems = validate::validate(&plan, located);
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(Problems(problems))
        }
    }

    /// A path from the plan, resolved against the plan's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The coordinator's TLS files, resolved.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.resolve(&self.tls.cert),
            key: self.resolve(&self.tls.key),
            ca: self.resolve(&self.tls.ca),
        }
    }

    /// The host entry of a side.
    pub fn host(&self, side: Side) -> &Host {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }

    /// The folder for journals and reports.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.migration.state_dir)
            .join(&self.migration.name)
    }
}

impl Host {
    /// The name the agent's certificate must be valid for: `tls_name`, else the address's host.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.tls_name {
            return n.clone();
        }
        self.address
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_default()
    }
}

impl SwitchMethod {
    /// The plan's spelling (`elastic-ip`, `dns`, `load-balancer`, `none`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchMethod::ElasticIp => "elastic-ip",
            SwitchMethod::Dns => "dns",
            SwitchMethod::LoadBalancer => "load-balancer",
            SwitchMethod::None => "none",
        }
    }
}

impl CheckFrom {
    /// The plan's spelling (`old`, `new`, `coordinator`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckFrom::Old => "old",
            CheckFrom::New => "new",
            CheckFrom::Coordinator => "coordinator",
        }
    }
}

impl FreezeMethod {
    /// The plan's and the journal's spelling (`maintenance-page`, `stop-apps`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            FreezeMethod::MaintenancePage => "maintenance-page",
            FreezeMethod::StopApps => "stop-apps",
            FreezeMethod::ReadOnly => "read-only",
        }
    }
}
