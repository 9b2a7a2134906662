//! The agent's config file (`/etc/hostshift/agent.toml`): *what* this host has and *what* the
//! agent may do with it. Flags and environment only say *how* to run (which file, log format).
//!
//! Everything an agent touches is named here: databases, storage roots, config files, PM2 apps,
//! the nginx site, hooks. Requests refer to these by **name**, never by path or command, so a
//! caller can only reach what the host's owner declared. Destructive operations need an entry in
//! `[allow]`; the default allows nothing. `docs/agent-config.md` is the reference, and
//! `systemd/agent.example.toml` is parsed by a unit test so the example cannot rot.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hostshift_shared::identity::valid_name;
use hostshift_shared::tls::TlsFiles;
use hostshift_shared::tomlpos::{Located, Problem, Problems};
use serde::{Deserialize, Serialize};

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/hostshift/agent.toml";

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

/// `[allow]`: destructive operations this agent allows. Everything not listed is refused.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Databases (by name) that may be restored into or overwritten.
    #[serde(default)]
    pub restore_databases: Vec<String>,
    /// Storage trees (by name) that may be written, and files in them deleted.
    #[serde(default)]
    pub write_storage: Vec<String>,
    /// Config files (by name) that may be overwritten or edited.
    #[serde(default)]
    pub write_files: Vec<String>,
    /// PM2 and nginx control (start/stop/reload, maintenance page). Default false.
    #[serde(default)]
    pub control_services: bool,
    /// Databases (by name) the cutover may make read-only on this (old) host: `ALTER DATABASE …
    /// SET default_transaction_read_only = on`, ending the other sessions on it, and undoing
    /// that. Needs the database's owner or a superuser in its `conninfo` (and, to end other
    /// roles' sessions, `pg_signal_backend` or a superuser). Default: none.
    #[serde(default)]
    pub freeze_databases: Vec<String>,
    /// Databases (by name) that `hostshift follow` may follow on this (old) host: it creates a
    /// logical replication slot and a publication `hostshift_<id>` in them (needs `wal_level =
    /// logical` and a superuser or a role with REPLICATION in the `conninfo`). A slot keeps WAL
    /// until `hostshift follow cleanup` drops it. Default: none.
    #[serde(default)]
    pub follow_databases: Vec<String>,
    /// Databases (by name, each also in `follow_databases`) where `hostshift follow start` may
    /// set `REPLICA IDENTITY FULL` on followed tables that have no replica identity (no primary
    /// key), so that their UPDATE and DELETE are followed too instead of the table being copied
    /// whole in the freeze. The original identity is recorded in
    /// `state_dir/follow/identity-<database>.json` before the change and put back by `hostshift
    /// follow cleanup` (which the cutover and its undo run). FULL makes the old host write each
    /// changed row's whole old version into its WAL. Default: none.
    #[serde(default)]
    pub replica_identity_full: Vec<String>,
}

/// `[tools]`: where external programs live.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Folder with `pg_dump`, `pg_restore`, `psql`. Default: the newest
    /// `/usr/lib/postgresql/<v>/bin`, else `PATH`.
    pub pg_bin_dir: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// On SIGTERM, seconds in-flight work gets before it is cancelled and the agent exits.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            shutdown_grace_secs: default_grace(),
        }
    }
}

/// Longest `[backup] keep_days` (ten years): more is a typo, not a retention policy.
pub const MAX_KEEP_DAYS: u32 = 3650;

/// `[backup]`: backups made on this host (`hostshift backup`, `hostshift-agent backup`). Making a
/// backup only writes under `dir`, so it needs no `[allow]`; restoring one does.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Folder holding one sub-folder per backup (absolute; created mode 0700 on first use). It
    /// must not lie inside a storage tree. Default `/var/backups/hostshift`.
    #[serde(default = "default_backup_dir")]
    pub dir: PathBuf,
    /// Keep every backup younger than this many days (1 to 3650). Unset: no age rule.
    pub keep_days: Option<u32>,
    /// Keep the newest this many backups (at least 1). Unset: no count rule. With neither rule
    /// set, nothing is ever pruned; the newest backup that verifies is always kept.
    pub keep_last: Option<u32>,
    /// `[backup.s3]`: upload finished backups to an S3 bucket.
    pub s3: Option<BackupS3Config>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: default_backup_dir(),
            keep_days: None,
            keep_last: None,
            s3: None,
        }
    }
}

/// `[backup.s3]`: where finished backups are uploaded (objects `<prefix>/<id>/<artifact>`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupS3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, e.g. `"hostshift/old-host"` (no leading or trailing `/`). Default: none.
    #[serde(default)]
    pub prefix: String,
    /// AWS region of the bucket.
    pub region: String,
    /// Send every call here instead of AWS (an S3-compatible store or a local stand-in).
    pub endpoint_url: Option<String>,
    /// Named profile to take credentials from. Default: the usual AWS credential chain
    /// (environment, profile `default`, instance role).
    pub profile: Option<String>,
    /// A shared-credentials file (AWS format) to read `profile` from, for agents whose `HOME` is
    /// not where the credentials are (e.g. `/etc/hostshift/aws-credentials`, mode 0600).
    pub credentials_file: Option<PathBuf>,
    /// Upload every backup automatically once it is complete. Default false.
    #[serde(default)]
    pub upload: bool,
}

fn default_backup_dir() -> PathBuf {
    PathBuf::from("/var/backups/hostshift")
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
fn default_grace() -> u64 {
    10
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// Every problem found, each naming the file, line and key.
    pub fn load(path: &Path) -> Result<Self, Problems> {
        let located = Located::read(path)?;
        let config: AgentConfig = located.parse()?;
        let mut problems = config.validate(&located);
        problems.extend(config.validate_overlaps(&located, path));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }

    /// Checks what serde cannot: names, uniqueness, absolute paths, references, users, TLS files.
    fn validate(&self, src: &Located) -> Vec<Problem> {
        let mut out = Vec::new();
        if !valid_name(&self.role) {
            out.push(src.problem("role", "a short label such as \"old\" or \"new\""));
        }
        for (key, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.ca", &self.tls.ca),
        ] {
            if let Err(e) = std::fs::metadata(path) {
                out.push(src.problem(
                    key,
                    format!(
                        "cannot read {}: {e} (create certificates with `hostshift certs init`)",
                        path.display()
                    ),
                ));
            }
        }
        if out.iter().all(|p| p.key != "tls.key")
            && let Err(e) = hostshift_shared::tls::check_key_mode(&self.tls.key)
        {
            out.push(src.problem("tls.key", e.to_string()));
        }
        if out.iter().all(|p| !p.key.starts_with("tls.")) {
            match self.tls.files().own_identity() {
                Ok(id) if id.role == hostshift_shared::identity::Role::Agent => {}
                Ok(id) => out.push(src.problem(
                    "tls.cert",
                    format!("this is the certificate of {id}; an agent needs an agent certificate (agent-<name>.crt)"),
                )),
                Err(e) => out.push(src.problem("tls.cert", e.to_string())),
            }
        }
        let db_names = names(
            src,
            "databases",
            self.databases.iter().map(|d| &d.name),
            &mut out,
        );
        for (i, d) in self.databases.iter().enumerate() {
            if d.conninfo.trim().is_empty() {
                out.push(src.problem(&format!("databases.{i}.conninfo"), "must not be empty"));
            }
            conninfo_problems(src, i, d, &mut out);
            if let Some(p) = &d.password_file {
                absolute(src, &format!("databases.{i}.password_file"), p, &mut out);
                if let Err(e) = private_file_mode(p) {
                    out.push(src.problem(&format!("databases.{i}.password_file"), e.to_string()));
                }
            }
            if let Some(p) = &d.ca_file {
                absolute(src, &format!("databases.{i}.ca_file"), p, &mut out);
            }
        }
        let st_names = names(
            src,
            "storage",
            self.storage.iter().map(|s| &s.name),
            &mut out,
        );
        for (i, s) in self.storage.iter().enumerate() {
            absolute(src, &format!("storage.{i}.path"), &s.path, &mut out);
        }
        let file_names = names(src, "files", self.files.iter().map(|f| &f.name), &mut out);
        for (i, f) in self.files.iter().enumerate() {
            absolute(src, &format!("files.{i}.path"), &f.path, &mut out);
        }
        if let Some(pm2) = &self.pm2 {
            absolute(src, "pm2.home", &pm2.home, &mut out);
            match &pm2.user {
                Some(u) => user_exists(src, "pm2.user", u, &mut out),
                None if nix::unistd::geteuid().is_root() => out.push(src.problem(
                    "pm2",
                    "the agent runs as root: set `user` to the account that owns the PM2 daemon, so hostshift never starts a root PM2 by accident",
                )),
                None => {}
            }
            for (i, a) in pm2.apps.iter().enumerate() {
                if a.trim().is_empty() {
                    out.push(src.problem(&format!("pm2.apps.{i}"), "empty app name"));
                }
            }
        }
        if let Some(n) = &self.nginx {
            absolute(src, "nginx.site", &n.site, &mut out);
            absolute(src, "nginx.config", &n.config, &mut out);
            absolute(src, "nginx.state_dir", &n.state_dir, &mut out);
        }
        for (name, h) in &self.hooks {
            let key = format!("hooks.{name}");
            if !valid_name(name) {
                out.push(src.problem(&key, "hook names are 1-63 letters, digits, '-', '_' or '.'"));
            }
            if h.command.trim().is_empty() {
                out.push(src.problem(&format!("{key}.command"), "must not be empty"));
            }
            if h.timeout_secs == 0 {
                out.push(src.problem(&format!("{key}.timeout_secs"), "must be at least 1"));
            }
            if let Some(c) = &h.cwd {
                absolute(src, &format!("{key}.cwd"), c, &mut out);
            }
            if let Some(u) = &h.user {
                user_exists(src, &format!("{key}.user"), u, &mut out);
            }
        }
        for (list, known, what, key) in [
            (
                &self.allow.restore_databases,
                &db_names,
                "databases",
                "allow.restore_databases",
            ),
            (
                &self.allow.freeze_databases,
                &db_names,
                "databases",
                "allow.freeze_databases",
            ),
            (
                &self.allow.follow_databases,
                &db_names,
                "databases",
                "allow.follow_databases",
            ),
            (
                &self.allow.write_storage,
                &st_names,
                "storage",
                "allow.write_storage",
            ),
            (
                &self.allow.write_files,
                &file_names,
                "files",
                "allow.write_files",
            ),
        ] {
            for (i, n) in list.iter().enumerate() {
                if !known.contains(n.as_str()) {
                    out.push(src.problem(
                        &format!("{key}.{i}"),
                        format!("{n:?} is not declared in [[{what}]]"),
                    ));
                }
            }
        }
        for (i, n) in self.allow.replica_identity_full.iter().enumerate() {
            if !self.allow.follow_databases.contains(n) {
                out.push(src.problem(
                    &format!("allow.replica_identity_full.{i}"),
                    format!("{n:?} is not in allow.follow_databases: only a followed database's tables get REPLICA IDENTITY FULL"),
                ));
            }
        }
        absolute(src, "state_dir", &self.state_dir, &mut out);
        self.validate_backup(src, &mut out);
        if self.limits.shutdown_grace_secs == 0 {
            out.push(src.problem("limits.shutdown_grace_secs", "must be at least 1"));
        }
        out
    }
}

impl AgentConfig {
    /// Storage trees against the system's folders, each other, `backup.dir`, `state_dir` and the
    /// agent's own files, all resolved as the filesystem would (`..`, symlinks): see
    /// [`crate::overlap`] for what each refusal protects.
    fn validate_overlaps(&self, src: &Located, config_file: &Path) -> Vec<Problem> {
        use crate::overlap::{is_system_root, overlaps, resolve};
        let mut out = Vec::new();
        let trees: Vec<(usize, &StorageConfig, PathBuf)> = self
            .storage
            .iter()
            .enumerate()
            .filter(|(_, s)| s.path.is_absolute())
            .map(|(i, s)| (i, s, resolve(&s.path)))
            .collect();
        for (i, s, real) in &trees {
            let key = format!("storage.{i}.path");
            if is_system_root(real) {
                out.push(src.problem(
                    &key,
                    format!(
                        "{} is {} — the filesystem root or a system folder cannot be a storage tree (a sync deletes what the source lacks): name the app's own folder, e.g. /srv/app/storage",
                        s.path.display(),
                        real.display()
                    ),
                ));
            }
            for (j, other, other_real) in &trees {
                if j < i && overlaps(real, other_real) {
                    out.push(src.problem(
                        &key,
                        format!(
                            "{} ({}) overlaps storage tree {:?} ({}): a sync of one would delete the other's files; give each tree its own folder, neither inside the other",
                            s.path.display(),
                            real.display(),
                            other.name,
                            other_real.display()
                        ),
                    ));
                }
            }
        }
        let mut own: Vec<(&str, PathBuf)> = vec![
            ("backup.dir", self.backup.dir.clone()),
            ("state_dir", self.state_dir.clone()),
            ("tls.cert", self.tls.cert.clone()),
            ("tls.key", self.tls.key.clone()),
            ("tls.ca", self.tls.ca.clone()),
        ];
        if let Ok(abs) = std::path::absolute(config_file) {
            own.push(("the config file", abs));
        }
        if let Some(n) = &self.nginx {
            own.push(("nginx.state_dir", n.state_dir.clone()));
        }
        for d in &self.databases {
            own.extend(
                d.password_file
                    .iter()
                    .map(|p| ("a password_file", p.clone())),
            );
            own.extend(d.ca_file.iter().map(|p| ("a ca_file", p.clone())));
        }
        for (what, path) in own.iter().filter(|(_, p)| p.is_absolute()) {
            let real = resolve(path);
            for (i, s, tree) in &trees {
                if overlaps(&real, tree) {
                    out.push(src.problem(
                        &format!("storage.{i}.path"),
                        format!(
                            "storage tree {:?} ({}) overlaps {what} ({}): a sync or restore of the tree would delete or overwrite it; keep the agent's own files and folders outside every storage tree",
                            s.name,
                            tree.display(),
                            real.display()
                        ),
                    ));
                }
            }
        }
        out
    }

    /// `[backup]`: an absolute folder outside every storage tree, sane retention, a usable S3 target.
    fn validate_backup(&self, src: &Located, out: &mut Vec<Problem>) {
        let b = &self.backup;
        absolute(src, "backup.dir", &b.dir, out);
        if b.dir == Path::new("/") {
            out.push(src.problem(
                "backup.dir",
                "the filesystem root cannot be the backup folder",
            ));
        }
        if let Some(d) = b.keep_days
            && !(1..=MAX_KEEP_DAYS).contains(&d)
        {
            out.push(src.problem(
                "backup.keep_days",
                format!(
                    "{d} is outside 1..={MAX_KEEP_DAYS} days (0 would keep nothing by age; leave keep_days out for no age rule)"
                ),
            ));
        }
        if b.keep_last == Some(0) {
            out.push(src.problem(
                "backup.keep_last",
                "must be at least 1 (leave it out for no count rule)",
            ));
        }
        if let Some(s3) = &b.s3 {
            if s3.bucket.trim().is_empty() {
                out.push(src.problem("backup.s3.bucket", "must not be empty"));
            }
            if s3.region.trim().is_empty() {
                out.push(src.problem("backup.s3.region", "must not be empty, e.g. \"eu-west-1\""));
            }
            if s3.prefix.starts_with('/') || s3.prefix.ends_with('/') || s3.prefix.contains("//") {
                out.push(src.problem("backup.s3.prefix", "no leading, trailing or doubled '/'"));
            }
            if let Some(u) = &s3.endpoint_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                out.push(src.problem("backup.s3.endpoint_url", "an http:// or https:// URL"));
            }
            if let Some(f) = &s3.credentials_file {
                absolute(src, "backup.s3.credentials_file", f, out);
            }
        }
    }
}

fn names<'a>(
    src: &Located,
    table: &str,
    it: impl Iterator<Item = &'a String>,
    out: &mut Vec<Problem>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in it.enumerate() {
        let key = format!("{table}.{i}.name");
        if !valid_name(n) {
            out.push(src.problem(&key, "names are 1-63 letters, digits, '-', '_' or '.'"));
        } else if !seen.insert(n.as_str()) {
            out.push(src.problem(&key, format!("{n:?} is declared twice in [[{table}]]")));
        }
    }
    seen
}

fn absolute(src: &Located, key: &str, path: &Path, out: &mut Vec<Problem>) {
    if !path.is_absolute() {
        out.push(src.problem(key, format!("{} must be an absolute path", path.display())));
    }
}

fn user_exists(src: &Located, key: &str, user: &str, out: &mut Vec<Problem>) {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => out.push(src.problem(key, format!("no system user {user:?} on this host"))),
        Err(e) => out.push(src.problem(key, format!("cannot look up user {user:?}: {e}"))),
    }
}

/// What the one conninfo parser ([`hostshift_shared::conninfo`]) finds wrong with a database's
/// connection settings: a password in it (it would reach `pg_dump`'s command line, visible in
/// `ps`), or an unverified connection to a host that is not this machine.
fn conninfo_problems(src: &Located, i: usize, d: &DatabaseConfig, out: &mut Vec<Problem>) {
    let key = format!("databases.{i}.conninfo");
    let info = match hostshift_shared::conninfo::parse(&d.conninfo) {
        Ok(info) => info,
        Err(e) => {
            out.push(src.problem(&key, e.to_string()));
            return;
        }
    };
    if let Some(at) = info.password_locations().first() {
        out.push(src.problem(
            &key,
            format!(
                "holds a password ({at}): move it to a file (mode 0600) and name it in `password_file`"
            ),
        ));
    }
    let weak = info
        .sslmode()
        .filter(|m| matches!(*m, "disable" | "allow" | "prefer"));
    let remote = info.remote_hosts();
    match (weak, &d.ca_file) {
        (Some(m), Some(_)) => out.push(src.problem(
            &key,
            format!(
                "sslmode={m} contradicts ca_file (which asks for TLS with the server's certificate verified): remove sslmode from conninfo, or remove ca_file for a local server"
            ),
        )),
        (Some(m), None) if !remote.is_empty() => out.push(src.problem(
            &key,
            format!(
                "sslmode={m} to {} (not this machine) would send the database unencrypted or unverified: remove sslmode and set ca_file to the PEM of the CA that signed the server's certificate",
                remote.join(", ")
            ),
        )),
        (None, None)
            if !remote.is_empty()
                && !matches!(info.sslmode(), Some("require" | "verify-ca" | "verify-full")) =>
        {
            out.push(src.problem(
                &key,
                format!(
                    "{} is not this machine: set ca_file to the PEM of the CA that signed the server's certificate (e.g. the RDS bundle), so the connection uses TLS and verifies it",
                    remote.join(", ")
                ),
            ));
        }
        _ => {}
    }
}

/// A secret file (password file) that group or others can read or write is refused, the way
/// libpq refuses such a `.pgpass` and ssh such a key. A missing file is not checked here (it
/// is read at connect time, which names it).
///
/// # Errors
/// [`OpenSecretFile`], whose text says the `chmod` to run.
pub fn private_file_mode(path: &Path) -> Result<(), OpenSecretFile> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(OpenSecretFile {
            path: path.to_path_buf(),
            mode: m.permissions().mode() & 0o7777,
        }),
        _ => Ok(()),
    }
}

/// A secret file that group or others may read or write.
#[derive(Debug, thiserror::Error)]
#[error("{path} is readable by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
pub struct OpenSecretFile {
    /// The file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(dir: &Path) -> hostshift_shared::pki::PkiFiles {
        hostshift_shared::pki::init(&hostshift_shared::pki::PkiRequest {
            dir: dir.to_path_buf(),
            agents: vec![hostshift_shared::pki::AgentSpec::parse("old=127.0.0.2").expect("spec")],
            coordinator_name: "coordinator".into(),
            days: 1,
            force: false,
        })
        .expect("certs")
    }

    #[test]
    fn sync_role_either_is_an_explicit_opt_in_that_receives() {
        let parse = |v: &str| serde_json::from_str::<SyncRole>(&format!("\"{v}\""));
        assert_eq!(parse("either").expect("either"), SyncRole::Either);
        assert!(SyncRole::Either.receives() && SyncRole::Target.receives());
        assert!(!SyncRole::Source.receives() && !SyncRole::default().receives());
        assert!(parse("both").is_err(), "only the documented words");
    }

    /// The shipped example must parse and validate (with its TLS paths pointed at real files).
    #[test]
    fn example_config_parses_and_validates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = certs(tmp.path());
        let example = include_str!("../../systemd/agent.example.toml")
            .replace(
                "/etc/hostshift/tls/agent.crt",
                &pki.agents[0].1.display().to_string(),
            )
            .replace(
                "/etc/hostshift/tls/agent.key",
                &pki.agents[0].2.display().to_string(),
            )
            .replace(
                "/etc/hostshift/tls/ca.crt",
                &pki.ca_cert.display().to_string(),
            )
            // The example names the `app` user; it need not exist on the machine running tests.
            .replace("user = \"app\"", "user = \"root\"");
        let path = tmp.path().join("agent.toml");
        std::fs::write(&path, example).expect("write");
        let c = AgentConfig::load(&path).unwrap_or_else(|e| panic!("example is invalid:\n{e}"));
        assert_eq!(c.role, "old");
        assert_eq!(c.sync_role, SyncRole::Source, "the example is an old host");
        assert!(
            c.allow.restore_databases.is_empty() && c.allow.freeze_databases.is_empty(),
            "example must allow nothing destructive"
        );
        assert!(!c.hooks.is_empty() && !c.databases.is_empty() && !c.storage.is_empty());
    }

    #[test]
    fn validation_names_file_line_and_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = certs(tmp.path());
        let src = format!(
            "listen = \"127.0.0.1:0\"\nrole = \"old\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n\n[[storage]]\nname = \"s\"\npath = \"relative/path\"\n\n[allow]\nrestore_databases = [\"nope\"]\nfreeze_databases = [\"gone\"]\n",
            pki.agents[0].1, pki.agents[0].2, pki.ca_cert
        );
        let path = tmp.path().join("agent.toml");
        std::fs::write(&path, src).expect("write");
        let err = AgentConfig::load(&path).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("agent.toml:10: key `storage.0.path`"),
            "{text}"
        );
        assert!(text.contains("key `allow.restore_databases.0`"), "{text}");
        assert!(text.contains("\"nope\" is not declared"), "{text}");
        assert!(
            text.contains(
                "key `allow.freeze_databases.0`: \"gone\" is not declared in [[databases]]"
            ),
            "{text}"
        );
    }

    /// docs/agent-config.md sets every key; the real types must read and write exactly those.
    #[test]
    fn docs_reference_covers_every_key() {
        let md = include_str!("../../docs/agent-config.md");
        hostshift_shared::tomlpos::check_reference_block::<AgentConfig>(md)
            .unwrap_or_else(|e| panic!("docs/agent-config.md is out of date: {e}"));
    }
}
