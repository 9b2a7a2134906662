//! `hostshift verify`: prove the new host holds what the old one holds — per storage tree the
//! full manifest (every file re-hashed on both sides: a single flipped byte shows), per config
//! file the SHA-256 after the plan's overrides, per table the row count and an order-independent
//! content fingerprint (a single changed row shows), per database the sequence positions and
//! large objects. Read-only on both hosts.

use std::collections::BTreeMap;
use std::time::Instant;

use hostshift_proto::v1::{
    CompareStorageRequest, FileRead, ManifestRead, ReadRequest, read_request,
};
use hostshift_shared::digest::Sha256Digest;
use hostshift_shared::model::{DatabaseFingerprint, Fingerprint, TableRef};
use serde::{Deserialize, Serialize};

use super::{SyncError, UnitError, stream};
use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan, Side};

/// The verdict on one compared item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowStatus {
    /// Equal on both sides.
    #[serde(rename = "equal")]
    Equal,
    /// Compared, and not equal.
    #[serde(rename = "differs")]
    Differs,
    /// The comparison could not run (an agent could not read or reach it, e.g. its database):
    /// no verdict. `detail` says why.
    #[serde(rename = "could not run")]
    CouldNotRun,
}

impl RowStatus {
    /// The verdict of a comparison that ran.
    pub fn of(equal: bool) -> RowStatus {
        if equal {
            RowStatus::Equal
        } else {
            RowStatus::Differs
        }
    }

    /// The word the table shows.
    pub fn word(self) -> &'static str {
        match self {
            RowStatus::Equal => "equal",
            RowStatus::Differs => "DIFFERS",
            RowStatus::CouldNotRun => "COULD NOT RUN",
        }
    }
}

/// One compared item: what `verify --json` prints, the cutover's proof keeps and the report
/// (`report.json`, the HTML and Markdown tables) shows — one type for all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredRow")]
pub struct Row {
    /// `file`, `storage`, `table`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Equal on both sides.
    pub equal: bool,
    /// Equal, differs, or could not run.
    pub status: RowStatus,
    /// What the old side has (digest, counts).
    pub old: String,
    /// What the new side has.
    pub new: String,
    /// The differences, named.
    pub detail: String,
}

/// A [`Row`] as read back from a `report.json`: reports written before rows carried `status`
/// said `could_not_run` instead.
#[derive(Deserialize)]
struct StoredRow {
    kind: String,
    name: String,
    equal: bool,
    #[serde(default)]
    status: Option<RowStatus>,
    #[serde(default)]
    could_not_run: bool,
    old: String,
    new: String,
    detail: String,
}

impl From<StoredRow> for Row {
    fn from(r: StoredRow) -> Self {
        let status = r.status.unwrap_or(if r.could_not_run {
            RowStatus::CouldNotRun
        } else {
            RowStatus::of(r.equal)
        });
        Row {
            kind: r.kind,
            name: r.name,
            equal: r.equal,
            status,
            old: r.old,
            new: r.new,
            detail: r.detail,
        }
    }
}

/// The whole verification.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Everything equal.
    pub ok: bool,
    /// Per item.
    pub rows: Vec<Row>,
    /// Wall time.
    pub ms: u64,
    /// Per database, the old host's table fingerprints (`rows/digest`) as compared: the cutover
    /// checks them against those at the start of its delta.
    #[serde(skip)]
    pub old_tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The same for the new host (the cutover records them as the state at the switch).
    #[serde(skip)]
    pub new_tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

fn short(d: &str) -> String {
    d.chars().take(16).collect()
}

async fn file_bytes(agent: &Agent, name: &str) -> Result<Vec<u8>, UnitError> {
    stream::read_all(
        agent,
        ReadRequest {
            grant: String::new(),
            what: Some(read_request::What::File(FileRead { name: name.into() })),
        },
        client::MAX_MESSAGE,
    )
    .await
}

fn list(v: &[String], what: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let shown: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
    let more = if v.len() > 10 {
        format!(" and {} more", v.len() - 10)
    } else {
        String::new()
    };
    Some(format!("{what}: {}{more}", shown.join(", ")))
}

/// Compares everything the plan moves.
///
/// # Errors
/// [`SyncError::Connect`] when an agent cannot be reached.
pub async fn run(plan: &Plan) -> Result<Report, SyncError> {
    // Journaled (best effort: verify only reads) so the cutover's gate can see a recent clean one.
    let journal = crate::journal::Journal::open(&plan.state_dir())
        .inspect_err(|e| tracing::warn!(error = %e, "verify is not journaled"))
        .ok();
    let note = |status: &str, detail: &str| {
        // Not journaled, this verify is invisible to the cutover's `verify fresh` gate (which
        // then refuses, saying there is no verify): said here so the cause is known.
        if let Some(j) = &journal
            && let Err(e) = j.record("verify", "verify", status, 0, 0, detail)
        {
            tracing::warn!(journal = %j.path().display(), error = %e, "verify could not be journaled: the cutover's gates will not see it");
        }
    };
    note("started", "");
    let report = crate::phase::traced(tracing::info_span!("verify"), compare(plan)).await;
    match &report {
        Ok(r) => note(
            if r.ok { "done" } else { "failed" },
            &format!(
                "{} item(s), {} differ, {} could not be compared",
                r.rows.len(),
                r.rows
                    .iter()
                    .filter(|x| x.status == RowStatus::Differs)
                    .count(),
                r.rows
                    .iter()
                    .filter(|x| x.status == RowStatus::CouldNotRun)
                    .count()
            ),
        ),
        Err(e) => note("failed", &e.to_string()),
    }
    report
}

async fn compare(plan: &Plan) -> Result<Report, SyncError> {
    let started = Instant::now();
    let (old, new) = tokio::join!(
        client::connect(plan, Side::Old),
        client::connect(plan, Side::New)
    );
    let old = old.map_err(|e| SyncError::Connect(e.to_string()))?;
    let new = new.map_err(|e| SyncError::Connect(e.to_string()))?;
    let mut rows = Vec::new();
    let mut old_tables = std::collections::BTreeMap::new();
    let mut new_tables = std::collections::BTreeMap::new();
    for f in &plan.files {
        let (a, b) = tokio::join!(file_bytes(&old, &f.name), file_bytes(&new, f.on_new()));
        let row = match (a, b) {
            (Ok(a), Ok(b)) => {
                let expected = match hostshift_shared::dotenv::apply(&a, &f.overrides) {
                    Ok(x) => x,
                    Err(e) => a
                        .clone()
                        .into_iter()
                        .chain(format!("\n# {e}").into_bytes())
                        .collect(),
                };
                let (de, dn) = (
                    Sha256Digest::of(&expected).to_string(),
                    Sha256Digest::of(&b).to_string(),
                );
                let note = if f.overrides.is_empty() {
                    String::new()
                } else {
                    format!(" (after {} override(s))", f.overrides.len())
                };
                Row {
                    kind: "file".into(),
                    name: f.name.clone(),
                    equal: de == dn,
                    status: RowStatus::of(de == dn),
                    old: format!("{}{note}", short(&de)),
                    new: short(&dn),
                    detail: if de == dn {
                        String::new()
                    } else {
                        "content differs".into()
                    },
                }
            }
            (a, b) => Row {
                kind: "file".into(),
                name: f.name.clone(),
                equal: false,
                status: RowStatus::Differs,
                old: a
                    .as_ref()
                    .map(|x| format!("{} bytes", x.len()))
                    .unwrap_or_else(|e| e.message.clone()),
                new: b
                    .as_ref()
                    .map(|x| format!("{} bytes", x.len()))
                    .unwrap_or_else(|e| e.message.clone()),
                detail: "cannot read it on both sides".into(),
            },
        };
        rows.push(row);
    }
    for s in &plan.storage {
        let manifest = stream::read_all(
            &old,
            ReadRequest {
                grant: String::new(),
                what: Some(read_request::What::Manifest(ManifestRead {
                    tree: s.name.clone(),
                    full: true,
                })),
            },
            client::MAX_MESSAGE,
        )
        .await;
        let row = match manifest {
            Err(e) => Row {
                kind: "storage".into(),
                name: s.name.clone(),
                equal: false,
                status: RowStatus::CouldNotRun,
                old: e.message,
                new: String::new(),
                detail: "cannot read the old manifest".into(),
            },
            Ok(m) => {
                let digest = Sha256Digest::of(&m).to_string();
                match new
                    .target()
                    .compare_storage(CompareStorageRequest {
                        tree: s.on_new().to_string(),
                        source_manifest: m,
                        full: true,
                    })
                    .await
                {
                    Err(st) => Row {
                        kind: "storage".into(),
                        name: s.name.clone(),
                        equal: false,
                        status: RowStatus::CouldNotRun,
                        old: short(&digest),
                        new: client::explain_status(&st),
                        detail: "cannot compare".into(),
                    },
                    Ok(c) => {
                        let c = c.into_inner();
                        // Files the new host has that the old one lacks only matter when the plan deletes them.
                        let extra = if s.delete {
                            c.extra.clone()
                        } else {
                            Vec::new()
                        };
                        let parts: Vec<String> = [
                            list(&c.missing, "missing"),
                            list(&c.changed, "content differs"),
                            list(&extra, "only on new"),
                            list(&c.metadata, "mode/mtime/owner differ"),
                            list(&c.owner, "owner differs"),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        Row {
                            kind: "storage".into(),
                            name: s.name.clone(),
                            equal: parts.is_empty(),
                            status: RowStatus::of(parts.is_empty()),
                            old: format!(
                                "{} files, {}",
                                c.source_files,
                                crate::output::bytes(c.source_bytes)
                            ),
                            new: format!("{} files, {}", c.files, crate::output::bytes(c.bytes)),
                            detail: parts.join("; "),
                        }
                    }
                }
            }
        };
        rows.push(row);
    }
    for d in &plan.databases {
        let sel = super::selection::Selections::of(d);
        // The definitions too (tables, indexes, constraints, triggers, functions, types): equal
        // rows under a half-applied post-data (a first sync killed in the middle) are not equal.
        rows.push(schema_row(&old, &new, d, &sel).await);
        match super::database::fingerprints(&old, &new, &sel).await {
            Err(e) => rows.push(Row {
                kind: "database".into(),
                name: d.name.clone(),
                equal: false,
                status: RowStatus::CouldNotRun,
                old: String::new(),
                new: String::new(),
                detail: format!("cannot fingerprint: {e}"),
            }),
            Ok((fo, fnew)) => {
                // The journal's and the proof's text form (`rows/digest`), keyed `schema.table`.
                let text = |f: &DatabaseFingerprint| -> BTreeMap<String, String> {
                    f.tables
                        .iter()
                        .map(|(t, fp)| (t.to_string(), fp.to_string()))
                        .collect()
                };
                old_tables.insert(d.name.clone(), text(&fo));
                new_tables.insert(d.name.clone(), text(&fnew));
                let names: std::collections::BTreeSet<&TableRef> =
                    fo.tables.keys().chain(fnew.tables.keys()).collect();
                for t in names {
                    let (a, b) = (fo.tables.get(t), fnew.tables.get(t));
                    let rows_of = |f: Option<&Fingerprint>| {
                        f.map_or_else(|| "missing".to_string(), |f| format!("{} rows", f.rows))
                    };
                    let detail = match (a, b) {
                        (Some(_), None) => "missing on the new host".to_string(),
                        (None, Some(_)) => "only on the new host".to_string(),
                        (Some(x), Some(y)) if x != y => {
                            if x.rows == y.rows {
                                "same row count, content differs".to_string()
                            } else {
                                "row counts differ".to_string()
                            }
                        }
                        _ => String::new(),
                    };
                    rows.push(Row {
                        kind: "table".into(),
                        name: format!("{} {t}", d.name),
                        equal: detail.is_empty(),
                        status: RowStatus::of(detail.is_empty()),
                        old: rows_of(a),
                        new: rows_of(b),
                        detail,
                    });
                }
                let seq_diff: Vec<String> = fo
                    .sequences
                    .iter()
                    .filter(|(k, v)| fnew.sequences.get(*k) != Some(*v))
                    .map(|(k, _)| k.to_string())
                    .collect();
                let equal = seq_diff.is_empty() && fo.sequences.len() == fnew.sequences.len();
                rows.push(Row {
                    kind: "sequences".into(),
                    name: d.name.clone(),
                    equal,
                    status: RowStatus::of(equal),
                    old: format!("{} sequences", fo.sequences.len()),
                    new: format!("{} sequences", fnew.sequences.len()),
                    detail: if seq_diff.is_empty() {
                        String::new()
                    } else {
                        format!("positions differ: {seq_diff:?}")
                    },
                });
                rows.extend(super::matviews::compare(&old, &new, &sel, &d.name).await);
                if !fo.large_objects.is_empty() || !fnew.large_objects.is_empty() {
                    let lo_diff: Vec<&u32> = fo
                        .large_objects
                        .iter()
                        .filter(|(k, v)| fnew.large_objects.get(*k) != Some(*v))
                        .map(|(k, _)| k)
                        .collect();
                    let equal =
                        lo_diff.is_empty() && fo.large_objects.len() == fnew.large_objects.len();
                    rows.push(Row {
                        kind: "large objects".into(),
                        name: d.name.clone(),
                        equal,
                        status: RowStatus::of(equal),
                        old: format!("{} objects", fo.large_objects.len()),
                        new: format!("{} objects", fnew.large_objects.len()),
                        detail: if lo_diff.is_empty() {
                            String::new()
                        } else {
                            format!("differ: OIDs {lo_diff:?}")
                        },
                    });
                }
            }
        }
    }
    Ok(Report {
        ok: rows.iter().all(|r| r.equal),
        rows,
        ms: started.elapsed().as_millis() as u64,
        old_tables,
        new_tables,
    })
}

/// The `schema` row of one database: the objects whose definitions differ
/// ([`super::database::schema_differences`]), at most 10 named.
async fn schema_row(
    old: &client::Agent,
    new: &client::Agent,
    d: &crate::plan::PlanDatabase,
    sel: &super::selection::Selections,
) -> Row {
    let (status, detail) = match super::database::schema_differences(old, new, sel).await {
        Err(e) => (
            RowStatus::CouldNotRun,
            format!("cannot compare the schemas: {e}"),
        ),
        Ok(differ) if differ.is_empty() => (RowStatus::Equal, String::new()),
        Ok(differ) => {
            let n = differ.len();
            let mut shown: Vec<String> = differ.into_iter().take(10).collect();
            if n > 10 {
                shown.push(format!("and {} more", n - 10));
            }
            (
                RowStatus::Differs,
                format!(
                    "definitions differ: {} (a sync rerun completes an unfinished first sync; \
                     otherwise apply the same change on the new host)",
                    shown.join("; ")
                ),
            )
        }
    };
    Row {
        kind: "schema".into(),
        name: d.name.clone(),
        equal: status == RowStatus::Equal,
        status,
        old: String::new(),
        new: String::new(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_back_as_written_and_older_reports_still_read() {
        let row = Row {
            kind: "database".into(),
            name: "app".into(),
            equal: false,
            status: RowStatus::CouldNotRun,
            old: "?".into(),
            new: "?".into(),
            detail: "connection refused".into(),
        };
        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(json["status"], "could not run");
        assert_eq!(serde_json::from_value::<Row>(json).expect("back"), row);
        // A report.json written before rows carried `status`.
        let old = serde_json::json!({
            "kind": "database", "name": "app", "equal": false, "could_not_run": true,
            "old": "?", "new": "?", "detail": "connection refused",
        });
        assert_eq!(serde_json::from_value::<Row>(old).expect("old form"), row);
        let differs = serde_json::json!({
            "kind": "table", "name": "public.users", "equal": false,
            "old": "1/a", "new": "2/b", "detail": "rows",
        });
        let r: Row = serde_json::from_value(differs).expect("oldest form");
        assert_eq!(r.status, RowStatus::Differs);
    }
}
