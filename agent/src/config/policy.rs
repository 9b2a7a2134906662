//! The agent config's shape, part two: what the agent may do and with how much — `[allow]`
//! (destructive operations, all refused unless listed), `[tools]`, `[limits]` and `[backup]`
//! (with its S3 upload).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
fn default_grace() -> u64 {
    10
}
