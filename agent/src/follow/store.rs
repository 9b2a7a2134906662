//! What a follow persists in the agent's `state_dir/follow/`, so that it survives an agent
//! restart (kill -9 included): on the old host the slot, publication and follow grant
//! (`source-<db>.json`); on the new host the follower's config and state (`target-<db>.json`).
//! Files are written with [`crate::fsutil::write_atomic`] (a temporary name, synced, renamed, the
//! folder synced): a crash leaves the old or the new content, never half of one. They hold the
//! follow grant's token, so they are mode 0600.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Ctx;
use crate::error::AgentError;

/// The old host's record of a prepared follow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    /// The configured database.
    pub database: String,
    /// Short migration id.
    pub id: String,
    /// Slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// The peer agent the grant was issued to.
    pub peer: String,
    /// The follow grant's token: unlike ordinary grants it lasts until `Drop`.
    pub token: String,
    /// The first snapshot exported after the slot was created (`pg_current_snapshot()` text).
    pub anchor: Option<String>,
    /// Tables left out of the publication (no replica identity).
    pub not_followed: Vec<String>,
}

/// The old host's record of the replica identities `follow start` changed to FULL
/// (`[allow] replica_identity_full`), written before the change: cleanup puts each back.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The configured database.
    pub database: String,
    /// (qualified table name, original `relreplident`: `d` default, `n` nothing).
    pub tables: Vec<(String, String)>,
}

/// The new host's record of a follower.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecord {
    /// The new host's configured database.
    pub database: String,
    /// The old host's configured database.
    pub source_database: String,
    /// The old agent's address (`https://host:port`).
    pub source_address: String,
    /// The name its certificate is checked for.
    pub source_tls_name: String,
    /// The follow grant.
    pub token: String,
    /// Short migration id (names the replication origin).
    pub id: String,
    /// The anchor snapshot.
    pub pg_snapshot: String,
    /// Tables not followed (reported by status).
    pub not_followed: Vec<String>,
    /// `following`, `stopped` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: String,
    /// The move's follow or the rollback window's (records from before the field: the move's).
    #[serde(default)]
    pub direction: super::Direction,
}

fn dir(ctx: &Ctx) -> PathBuf {
    ctx.config.state_dir.join("follow")
}

fn path(ctx: &Ctx, side: &str, database: &str) -> PathBuf {
    dir(ctx).join(format!("{side}-{database}.json"))
}

/// Mode of a record: it holds the follow grant's token, so only the agent's user reads it.
const RECORD_MODE: u32 = 0o600;

fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AgentError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            AgentError::Internal(format!("{}: unreadable follow record: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read", path, e)),
    }
}

fn remove(path: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io("remove", path, e)),
    }
}

fn save<T: Serialize>(path: &Path, v: &T) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| AgentError::Internal(format!("serialize follow record: {e}")))?;
    // The agent's one atomic write: private while staged, fsync, rename, fsync of the folder.
    crate::fsutil::write_atomic(path, &bytes, RECORD_MODE, None)
}

/// The old host's record for `database`.
///
/// # Errors
/// An unreadable file.
pub fn source(ctx: &Ctx, database: &str) -> Result<Option<SourceRecord>, AgentError> {
    load(&path(ctx, "source", database))
}

/// Saves the old host's record.
///
/// # Errors
/// A file that cannot be written.
pub fn save_source(ctx: &Ctx, r: &SourceRecord) -> Result<(), AgentError> {
    save(&path(ctx, "source", &r.database), r)
}

/// Removes the old host's record.
///
/// # Errors
/// A file that cannot be removed.
pub fn remove_source(ctx: &Ctx, database: &str) -> Result<(), AgentError> {
    remove(&path(ctx, "source", database))
}

/// The replica identities changed in `database` (none: `None`).
///
/// # Errors
/// An unreadable file.
pub fn identities(ctx: &Ctx, database: &str) -> Result<Option<IdentityRecord>, AgentError> {
    load(&path(ctx, "identity", database))
}

/// Saves the record of changed replica identities (synced before the change is made).
///
/// # Errors
/// A file that cannot be written.
pub fn save_identities(ctx: &Ctx, r: &IdentityRecord) -> Result<(), AgentError> {
    save(&path(ctx, "identity", &r.database), r)
}

/// Removes it (every identity put back).
///
/// # Errors
/// A file that cannot be removed.
pub fn remove_identities(ctx: &Ctx, database: &str) -> Result<(), AgentError> {
    remove(&path(ctx, "identity", database))
}

/// The new host's record for `database`.
///
/// # Errors
/// An unreadable file.
pub fn target(ctx: &Ctx, database: &str) -> Result<Option<TargetRecord>, AgentError> {
    load(&path(ctx, "target", database))
}

/// Saves the new host's record.
///
/// # Errors
/// A file that cannot be written.
pub fn save_target(ctx: &Ctx, r: &TargetRecord) -> Result<(), AgentError> {
    save(&path(ctx, "target", &r.database), r)
}

/// Removes the new host's record.
///
/// # Errors
/// A file that cannot be removed.
pub fn remove_target(ctx: &Ctx, database: &str) -> Result<(), AgentError> {
    remove(&path(ctx, "target", database))
}

/// Every new-host record (to resume followers at start-up).
pub fn targets(ctx: &Ctx) -> Vec<TargetRecord> {
    let Ok(entries) = std::fs::read_dir(dir(ctx)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("target-") && name.ends_with(".json") {
            match load::<TargetRecord>(&e.path()) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "follow record skipped"),
            }
        }
    }
    out
}

/// A random 256-bit token (hex) for a follow grant.
///
/// # Errors
/// `/dev/urandom` unreadable.
pub fn token() -> Result<String, AgentError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| AgentError::io("read", "/dev/urandom", e))?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn records_are_private_and_leave_no_temporary_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("follow/source-app.json");
        let r = IdentityRecord {
            database: "app".into(),
            tables: vec![("public.t".into(), "d".into())],
        };
        save(&p, &r).expect("save");
        save(&p, &r).expect("save again");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the record holds a grant token: {mode:o}");
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("follow"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert_eq!(load::<IdentityRecord>(&p).expect("load"), Some(r));
    }
}
