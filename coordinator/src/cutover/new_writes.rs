//! Writes the new host accepted after the switch, which a rollback does not copy back: the
//! cutover records the new host's table fingerprints as proven right before traffic moved
//! ([`BASELINE_FILE`]); `rollback` compares the new host against them and names every table
//! written since, with how its row count moved; and until those writes are dealt with, `sync`
//! refuses to overwrite them ([`PENDING_FILE`]) unless given `--discard-new-host-writes`.
//!
//! Fingerprints rather than PostgreSQL's statistics counters: they are exact (a counter can lag
//! by a second or more and is reset by a crash) and the proof computed them anyway, so recording
//! them costs nothing during the freeze; the rollback pays one scan of the new database.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hostshift_shared::model::{DatabaseFingerprint, Fingerprint};
use serde::{Deserialize, Serialize};

use super::error::{self, CutoverError};
use crate::client::Agent;
use crate::plan::Plan;
use crate::sync::selection::Selections;

/// `<state_dir>/new-host-at-switch.json`: the new host's tables when traffic moved.
pub const BASELINE_FILE: &str = "new-host-at-switch.json";
/// `<state_dir>/new-host-writes.json`: what the last rollback found written on the new host.
pub const PENDING_FILE: &str = "new-host-writes.json";

/// The new host's table fingerprints (`rows/digest`) per plan database, at the switch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// Cutover run id.
    pub run: String,
    /// Plan database name → `schema.table` → `rows/digest`.
    pub databases: BTreeMap<String, BTreeMap<String, String>>,
    /// Written right before the switch of a cutover that proves its followed databases after
    /// the switch: their tables are not in `databases` yet (the proof after the switch adds them
    /// and clears this). A rollback that finds it set cannot tell what the new host wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// While `pending`: plan database → the snapshot the new agent holds of it at the switch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, String>,
    /// While `pending`: plan database → the old host's fingerprints the delta took of the tables
    /// the follower does not carry (`schema.table` → `rows/digest`), for "did the old host change
    /// during the freeze" in a resumed proof.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub old_at_delta: BTreeMap<String, BTreeMap<String, String>>,
}

/// One table written on the new host since the switch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableWrites {
    /// Plan database name.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// Rows at the switch (`None`: the table is new since).
    pub rows_at_switch: Option<i64>,
    /// Rows now (`None`: dropped since).
    pub rows_now: Option<i64>,
}

impl std::fmt::Display for TableWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.rows_at_switch, self.rows_now) {
            (Some(a), Some(b)) if b > a => format!("{} row(s) more than at the switch", b - a),
            (Some(a), Some(b)) if b < a => format!("{} row(s) fewer than at the switch", a - b),
            (Some(_), Some(_)) => "rows changed, same row count".to_string(),
            (None, Some(b)) => format!("new since the switch, {b} row(s)"),
            (Some(_), None) => "dropped since the switch".to_string(),
            (None, None) => "changed".to_string(),
        };
        write!(f, "{} {}: {what}", self.database, self.table)
    }
}

fn path(plan: &Plan, file: &str) -> PathBuf {
    plan.state_dir().join(file)
}

fn write_json<T: Serialize>(p: &std::path::Path, v: &T) -> Result<(), CutoverError> {
    let err = |reason: String| CutoverError::StateFile {
        what: "cannot write",
        path: p.to_path_buf(),
        reason,
    };
    let tmp = p.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| err(e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, p))
        .map_err(|e| err(e.to_string()))
}

/// Reads the baseline file (`None`: none recorded).
///
/// # Errors
/// The file is damaged.
pub fn baseline(plan: &Plan) -> Result<Option<Baseline>, CutoverError> {
    let file = path(plan, BASELINE_FILE);
    let Ok(bytes) = std::fs::read(&file) else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CutoverError::StateFile {
            what: "damaged",
            path: file,
            reason: e.to_string(),
        })
}

/// Records the new host's tables as the proof found them (right before the switch; for
/// followed databases, under the snapshot held at the switch, after it).
///
/// # Errors
/// The file cannot be written (the cutover then stops: a rollback could not tell what it loses).
pub fn record_baseline(plan: &Plan, b: &Baseline) -> Result<(), CutoverError> {
    write_json(&path(plan, BASELINE_FILE), b)
}

/// The tables written on the new host since the switch (empty when no cutover recorded a
/// baseline, or nothing was written).
///
/// # Errors
/// The new agent cannot fingerprint a database.
pub async fn find(plan: &Plan, new: &Agent) -> Result<Vec<TableWrites>, CutoverError> {
    let file = path(plan, BASELINE_FILE);
    let Ok(bytes) = std::fs::read(&file) else {
        return Ok(Vec::new());
    };
    let base: Baseline = serde_json::from_slice(&bytes).map_err(|e| CutoverError::StateFile {
        what: "damaged",
        path: file.clone(),
        reason: e.to_string(),
    })?;
    if base.pending {
        return Err(CutoverError::StateFile {
            what: "incomplete",
            path: file,
            reason: "the cutover switched traffic but its proof after the switch never recorded \
                     the new host's tables at the switch, so the writes the new host took since \
                     cannot be told apart"
                .into(),
        });
    }
    let mut out = Vec::new();
    for d in &plan.databases {
        let Some(then) = base.databases.get(&d.name) else {
            continue;
        };
        let sel = Selections::of(d);
        let now = new
            .database()
            .fingerprint(sel.new.clone())
            .await
            .map_err(|s| error::agent(format!("database {}", d.name), &s))?
            .into_inner();
        let now = DatabaseFingerprint::from_proto(now).map_err(|e| {
            CutoverError::Agent(format!(
                "the new agent's fingerprints of database {}: {e}",
                d.name
            ))
        })?;
        let now: BTreeMap<String, Fingerprint> = now
            .tables
            .into_iter()
            .map(|(t, f)| (t.to_string(), f))
            .collect();
        // The baseline keeps the proof's text form, `rows/digest`.
        let rows = |v: &String| v.split('/').next().and_then(|r| r.parse::<i64>().ok());
        let names: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
        for t in names {
            let (a, b) = (then.get(t), now.get(t));
            if a != b.map(ToString::to_string).as_ref() {
                out.push(TableWrites {
                    database: d.name.clone(),
                    table: t.clone(),
                    rows_at_switch: a.and_then(rows),
                    rows_now: b.map(|f| f.rows),
                });
            }
        }
    }
    Ok(out)
}

/// Keeps what a rollback found for `sync` to refuse on (removes the record when empty).
///
/// # Errors
/// The file cannot be written or removed.
pub fn record_pending(plan: &Plan, writes: &[TableWrites]) -> Result<(), CutoverError> {
    let p = path(plan, PENDING_FILE);
    if writes.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CutoverError::StateFile {
                what: "cannot remove",
                path: p.clone(),
                reason: e.to_string(),
            }),
            _ => Ok(()),
        };
    }
    write_json(&p, &writes)
}

/// What the last rollback found written on the new host and no sync has discarded yet.
pub fn pending(plan: &Plan) -> Vec<TableWrites> {
    match std::fs::read(path(plan, PENDING_FILE)) {
        Err(_) => Vec::new(),
        // Damaged: still refuse, naming the file.
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| {
            vec![TableWrites {
                database: "?".into(),
                table: format!("(unreadable {PENDING_FILE})"),
                rows_at_switch: None,
                rows_now: None,
            }]
        }),
    }
}
