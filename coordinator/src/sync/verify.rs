//! `hostshift verify`: prove the new host holds what the old one holds — per storage tree the
//! full manifest (every file re-hashed on both sides: a single flipped byte shows), per config
//! file the SHA-256 after the plan's overrides, per table the row count and an order-independent
//! content fingerprint (a single changed row shows), per database the sequence positions and
//! large objects. Read-only on both hosts.

use std::collections::BTreeMap;
use std::time::Instant;

use hostshift_proto::v1::{
    CompareStorageRequest, CompareStorageResponse, CreateGrantRequest, FileRead, ManifestRead,
    Peer, ReadRequest, RevokeGrantRequest, read_request,
};
use hostshift_shared::digest::Sha256Digest;
use hostshift_shared::model::{DatabaseFingerprint, Fingerprint, TableRef};
use serde::{Deserialize, Serialize};

use super::{SyncError, UnitError, stream};
use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan, Side};
use crate::progress::{Mode, Progress};

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

/// `what: a, b, c and N more` — `total` counts them all (the agent sends at most 1000 paths;
/// 0 from an older agent: the list is all there is).
fn list(v: &[String], total: u64, what: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let total = total.max(v.len() as u64);
    let shown: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
    let more = if total > shown.len() as u64 {
        format!(" and {} more", total - shown.len() as u64)
    } else {
        String::new()
    };
    Some(format!("{what}: {}{more}", shown.join(", ")))
}

/// Compares everything the plan moves, silently.
///
/// # Errors
/// [`SyncError::Connect`] when an agent cannot be reached.
pub async fn run(plan: &Plan) -> Result<Report, SyncError> {
    run_with(plan, &Progress::with_bars(Mode::Quiet, false)).await
}

/// Compares everything the plan moves, reporting on `progress`: one unit for the config files,
/// one per storage tree, two per database (its schema; its tables, sequences and large objects),
/// each ending with a summary line.
///
/// # Errors
/// [`SyncError::Connect`] when an agent cannot be reached.
pub async fn run_with(plan: &Plan, progress: &Progress) -> Result<Report, SyncError> {
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
    let report = crate::phase::traced(tracing::info_span!("verify"), compare(plan, progress)).await;
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

/// The summary line of a unit from its rows: `12 of 12 equal` and the first difference named.
fn summary(rows: &[Row], what: &str) -> (bool, String) {
    let equal = rows.iter().filter(|r| r.status == RowStatus::Equal).count();
    let mut s = format!("{equal} of {} {what} equal", rows.len());
    let differ = rows
        .iter()
        .filter(|r| r.status == RowStatus::Differs)
        .count();
    if differ > 0 {
        s.push_str(&format!(", {differ} DIFFER"));
    }
    let not_run = rows
        .iter()
        .filter(|r| r.status == RowStatus::CouldNotRun)
        .count();
    if not_run > 0 {
        s.push_str(&format!(", {not_run} could not be compared"));
    }
    if let Some(r) = rows.iter().find(|r| r.status != RowStatus::Equal) {
        s.push_str(&format!(" (first: {} {}: {})", r.kind, r.name, r.detail));
    }
    (equal == rows.len(), s)
}

/// The summary line of a unit of one row.
fn row_summary(r: &Row) -> (bool, String) {
    let s = match r.status {
        RowStatus::Equal if r.old.is_empty() => "equal".to_string(),
        RowStatus::Equal => format!("equal ({})", r.old),
        RowStatus::Differs => format!("DIFFERS: {}", r.detail),
        RowStatus::CouldNotRun => format!("could not be compared: {}", r.detail),
    };
    (r.status == RowStatus::Equal, s)
}

/// The cutover's proof inside the freeze when the tables of the databases in `later` are proven
/// after the switch (under a snapshot the new host holds, see `cutover::held_proof`): everything
/// as [`run`] except those databases' tables, large objects and materialized views — their
/// schema and sequence positions (not versioned, so they cannot be proven under a snapshot
/// later) are compared here — and storage trees compared by manifest through the agents' digest
/// caches (a file whose size and mtime did not change is not re-hashed; the delta verified
/// every byte it copied). Not journaled as a `verify` (it is not a whole one).
///
/// # Errors
/// [`SyncError::Connect`] when an agent cannot be reached.
pub async fn run_in_freeze(
    plan: &Plan,
    later: &std::collections::BTreeSet<String>,
) -> Result<Report, SyncError> {
    compare_scoped(plan, &Progress::with_bars(Mode::Quiet, false), later).await
}

async fn compare(plan: &Plan, progress: &Progress) -> Result<Report, SyncError> {
    compare_scoped(plan, progress, &Default::default()).await
}

/// One row per table of database `db` (plan name) from both hosts' fingerprints.
pub(crate) fn table_rows(
    db: &str,
    fo: &DatabaseFingerprint,
    fnew: &DatabaseFingerprint,
) -> Vec<Row> {
    let names: std::collections::BTreeSet<&TableRef> =
        fo.tables.keys().chain(fnew.tables.keys()).collect();
    let mut rows = Vec::new();
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
            name: format!("{db} {t}"),
            equal: detail.is_empty(),
            status: RowStatus::of(detail.is_empty()),
            old: rows_of(a),
            new: rows_of(b),
            detail,
        });
    }
    rows
}

/// The materialized-view rows of database `d`, the new host read under `new_snapshot`.
pub(crate) async fn matview_rows(
    old: &Agent,
    new: &Agent,
    d: &crate::plan::PlanDatabase,
    new_snapshot: &str,
) -> Vec<Row> {
    let sel = super::selection::Selections::of(d);
    super::matviews::compare(old, new, &sel, &d.name, new_snapshot).await
}

/// The sequences row of database `db`.
fn sequences_row(
    db: &str,
    old: &BTreeMap<TableRef, hostshift_shared::model::SequencePosition>,
    new: &BTreeMap<TableRef, hostshift_shared::model::SequencePosition>,
) -> Row {
    let seq_diff: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.to_string())
        .collect();
    let equal = seq_diff.is_empty() && old.len() == new.len();
    Row {
        kind: "sequences".into(),
        name: db.to_string(),
        equal,
        status: RowStatus::of(equal),
        old: format!("{} sequences", old.len()),
        new: format!("{} sequences", new.len()),
        detail: if seq_diff.is_empty() {
            String::new()
        } else {
            format!("positions differ: {seq_diff:?}")
        },
    }
}

/// The large-objects row of database `db` (none when neither host has any).
pub(crate) fn large_objects_row(
    db: &str,
    fo: &DatabaseFingerprint,
    fnew: &DatabaseFingerprint,
) -> Option<Row> {
    if fo.large_objects.is_empty() && fnew.large_objects.is_empty() {
        return None;
    }
    let lo_diff: Vec<&u32> = fo
        .large_objects
        .iter()
        .filter(|(k, v)| fnew.large_objects.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    let equal = lo_diff.is_empty() && fo.large_objects.len() == fnew.large_objects.len();
    Some(Row {
        kind: "large objects".into(),
        name: db.to_string(),
        equal,
        status: RowStatus::of(equal),
        old: format!("{} objects", fo.large_objects.len()),
        new: format!("{} objects", fnew.large_objects.len()),
        detail: if lo_diff.is_empty() {
            String::new()
        } else {
            format!("differ: OIDs {lo_diff:?}")
        },
    })
}

/// Both hosts' sequence positions of one database, read now.
async fn sequence_positions(
    old: &Agent,
    new: &Agent,
    sel: &super::selection::Selections,
) -> Result<
    (
        BTreeMap<TableRef, hostshift_shared::model::SequencePosition>,
        BTreeMap<TableRef, hostshift_shared::model::SequencePosition>,
    ),
    String,
> {
    let req = |s: &hostshift_proto::v1::DbSelection| hostshift_proto::v1::DbReadRequest {
        selection: Some(s.clone()),
        snapshot: String::new(),
    };
    let (mut a, mut b) = (old.database(), new.database());
    let (x, y) = tokio::join!(a.sequences(req(&sel.old)), b.sequences(req(&sel.new)));
    let conv =
        |r: Result<tonic::Response<hostshift_proto::v1::SequencesResponse>, tonic::Status>,
         host: &str| {
            let r = r.map_err(|s| format!("the {host} host: {}", client::explain_status(&s)))?;
            let mut out = BTreeMap::new();
            for v in r.into_inner().sequences {
                let t = v
                    .sequence
                    .ok_or_else(|| format!("the {host} agent sent a sequence without its name"))?;
                out.insert(
                    TableRef::new(&t.schema, &t.table),
                    hostshift_shared::model::SequencePosition {
                        last_value: v.last_value,
                        is_called: v.is_called,
                    },
                );
            }
            Ok::<_, String>(out)
        };
    Ok((conv(x, "old")?, conv(y, "new")?))
}

async fn compare_scoped(
    plan: &Plan,
    progress: &Progress,
    later: &std::collections::BTreeSet<String>,
) -> Result<Report, SyncError> {
    let started = Instant::now();
    let (old, new) = tokio::join!(
        client::connect(plan, Side::Old),
        client::connect(plan, Side::New)
    );
    let old = old.map_err(|e| SyncError::Connect(e.to_string()))?;
    let new = new.map_err(|e| SyncError::Connect(e.to_string()))?;
    // Inside the freeze (`later`: the cutover's proof of followed databases) files, trees and
    // databases are compared at once — the freeze would last their sum; `verify` shows them one
    // after the other.
    let (files, storage, (db_rows, old_tables, new_tables)) = if later.is_empty() {
        (
            file_rows(plan, &old, &new, progress).await,
            storage_rows(plan, &old, &new, progress, true).await,
            database_rows(plan, &old, &new, progress, later).await,
        )
    } else {
        tokio::join!(
            file_rows(plan, &old, &new, progress),
            storage_rows(plan, &old, &new, progress, false),
            database_rows(plan, &old, &new, progress, later)
        )
    };
    let rows: Vec<Row> = files.into_iter().chain(storage).chain(db_rows).collect();
    Ok(Report {
        ok: rows.iter().all(|r| r.equal),
        rows,
        ms: started.elapsed().as_millis() as u64,
        old_tables,
        new_tables,
    })
}

/// Per database (plan name), each table's fingerprint in text form (`schema.table` →
/// `rows/digest`).
type Tables = BTreeMap<String, BTreeMap<String, String>>;

/// The config files' rows: each file's SHA-256 after the plan's overrides on both hosts.
async fn file_rows(
    plan: &Plan,
    old: &client::Agent,
    new: &client::Agent,
    progress: &Progress,
) -> Vec<Row> {
    let mut rows = Vec::new();
    if !plan.files.is_empty() {
        progress.start_items("files", plan.files.len() as u64);
    }
    for (i, f) in plan.files.iter().enumerate() {
        let (a, b) = tokio::join!(file_bytes(old, &f.name), file_bytes(new, f.on_new()));
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
        progress.update("files", i as u64 + 1);
    }
    if !plan.files.is_empty() {
        let (ok, text) = summary(&rows, "file(s)");
        progress.done("files", 0, ok, &text);
    }
    rows
}

/// The storage trees' rows: `full` re-hashes every file on both hosts; otherwise the manifests
/// are compared through the agents' digest caches (changed files re-hashed).
async fn storage_rows(
    plan: &Plan,
    old: &client::Agent,
    new: &client::Agent,
    progress: &Progress,
    full: bool,
) -> Vec<Row> {
    let mut rows = Vec::new();
    // The new agent fetches each old manifest itself, over a grant for the trees, and sends
    // back only the differences (no manifest passes through here, whatever its size).
    let grant = if plan.storage.is_empty() {
        None
    } else {
        storage_grant(plan, old).await
    };
    for s in &plan.storage {
        let unit = format!("storage {}", s.name);
        progress.start(&unit, 0);
        // The cutover's proof of followed databases (not `full`) compares manifests through the
        // agents' digest caches: the delta just verified every byte it copied end to end, and
        // re-hashing every unchanged file would hold the freeze for the size of the tree.
        progress.step(
            &unit,
            if full {
                "every file re-hashed on both hosts"
            } else {
                "manifests compared (digest caches: changed files re-hashed)"
            },
        );
        let (row, hashed) = storage_row(plan, old, new, s, grant.as_deref(), full).await;
        let (ok, text) = row_summary(&row);
        // The old tree's bytes, re-hashed: the summary shows the rate.
        progress.done(&unit, hashed, ok, &text);
        rows.push(row);
    }
    if let Some(token) = grant {
        revoke(old, token).await;
    }
    rows
}

/// The databases' rows (schema, sequences, and — unless proven later — tables, views and large
/// objects) and both hosts' table fingerprints in the journal's text form.
async fn database_rows(
    plan: &Plan,
    old: &client::Agent,
    new: &client::Agent,
    progress: &Progress,
    later: &std::collections::BTreeSet<String>,
) -> (Vec<Row>, Tables, Tables) {
    let mut rows = Vec::new();
    let mut old_tables = std::collections::BTreeMap::new();
    let mut new_tables = std::collections::BTreeMap::new();
    for d in &plan.databases {
        let sel = super::selection::Selections::of(d);
        // The definitions too (tables, indexes, constraints, triggers, functions, types): equal
        // rows under a half-applied post-data (a first sync killed in the middle) are not equal.
        let unit = format!("schema {}", d.name);
        progress.start(&unit, 0);
        progress.step(&unit, "comparing the definitions");
        // Proven later: only the sequences are read here, beside the schema.
        let (row, sequences) = tokio::join!(schema_row(old, new, d, &sel), async {
            if later.contains(&d.name) {
                Some(sequence_positions(old, new, &sel).await)
            } else {
                None
            }
        });
        let (ok, text) = row_summary(&row);
        progress.done(&unit, 0, ok, &text);
        rows.push(row);
        if let Some(sequences) = sequences {
            // Tables, large objects and materialized views: proven after the switch, under the new
            // host's snapshot.
            rows.push(match sequences {
                Ok((a, b)) => sequences_row(&d.name, &a, &b),
                Err(e) => Row {
                    kind: "sequences".into(),
                    name: d.name.clone(),
                    equal: false,
                    status: RowStatus::CouldNotRun,
                    old: String::new(),
                    new: String::new(),
                    detail: format!("cannot read the sequence positions: {e}"),
                },
            });
            continue;
        }
        let unit = format!("tables {}", d.name);
        progress.start_items(&unit, 0);
        progress.step(&unit, "fingerprinting every table on both hosts");
        let first = rows.len();
        match super::database::fingerprints(old, new, &sel).await {
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
                rows.extend(table_rows(&d.name, &fo, &fnew));
                rows.push(sequences_row(&d.name, &fo.sequences, &fnew.sequences));
                rows.extend(super::matviews::compare(old, new, &sel, &d.name, "").await);
                rows.extend(large_objects_row(&d.name, &fo, &fnew));
            }
        }
        let done = &rows[first..];
        let tables: Vec<Row> = done.iter().filter(|r| r.kind == "table").cloned().collect();
        progress.update(&unit, tables.len() as u64);
        let (mut ok, mut text) = summary(&tables, "tables");
        let others: Vec<Row> = done.iter().filter(|r| r.kind != "table").cloned().collect();
        if !others.is_empty() {
            let (o, t) = summary(&others, "other item(s) (sequences, large objects, views)");
            ok &= o;
            text.push_str("; ");
            text.push_str(&t);
        }
        progress.done(&unit, 0, ok, &text);
    }
    (rows, old_tables, new_tables)
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

/// A grant on the old agent for the new one to read the plan's storage manifests; `None` when
/// it cannot be had (then the manifests pass through here, as before).
pub(crate) async fn storage_grant(plan: &Plan, old: &Agent) -> Option<String> {
    let granted = old
        .grants()
        .create(client::request(CreateGrantRequest {
            peer: plan.new.agent.clone(),
            scopes: plan
                .storage
                .iter()
                .map(|s| format!("storage:{}", s.name))
                .collect(),
            ttl_secs: 6 * 3600,
            selections: Vec::new(),
        }))
        .await;
    match granted {
        Ok(g) => Some(g.into_inner().token),
        Err(st) => {
            tracing::warn!(error = %client::explain_status(&st), "no grant for the new agent: storage manifests pass through the coordinator");
            None
        }
    }
}

/// Revokes a grant [`storage_grant`] issued (best effort: it expires anyway).
pub(crate) async fn revoke(old: &Agent, token: String) {
    if let Err(st) = old
        .grants()
        .revoke(client::request(RevokeGrantRequest { token }))
        .await
    {
        tracing::debug!(error = %client::explain_status(&st), "grant not revoked (it expires)");
    }
}

/// Why a storage comparison did not run.
pub(crate) enum CompareFailure {
    /// The old manifest could not be read (relayed).
    Old(String),
    /// The new agent could not compare (or fetch the old manifest).
    New(String),
}

/// One storage tree compared by the new agent against the old agent's manifest, which it
/// fetches itself over `grant` (`full`: re-hashed on both sides); when there is no grant or the
/// new host cannot reach the old agent, with the manifest relayed through this process
/// (bounded by [`client::MAX_MESSAGE`]).
pub(crate) async fn compare_tree(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    s: &crate::plan::PlanStorage,
    grant: Option<&str>,
    full: bool,
) -> Result<CompareStorageResponse, CompareFailure> {
    if let Some(token) = grant {
        let req = CompareStorageRequest {
            tree: s.on_new().to_string(),
            source_manifest: Vec::new(),
            full,
            source: Some(Peer {
                address: plan.old.address.clone(),
                tls_name: plan.old.server_name(),
                grant: token.to_string(),
            }),
            source_tree: s.name.clone(),
        };
        match new.target().compare_storage(req).await {
            Ok(c) => return Ok(c.into_inner()),
            // The new host cannot reach the old agent (a sync with --relay): relay below.
            Err(st)
                if st.code() == tonic::Code::Unavailable
                    && st.message().contains("cannot reach the source agent") =>
            {
                tracing::info!(tree = %s.name, "the new agent cannot reach the old one: relaying the manifest");
            }
            Err(st) => return Err(CompareFailure::New(client::explain_status(&st))),
        }
    }
    let manifest = stream::read_all(
        old,
        ReadRequest {
            grant: String::new(),
            what: Some(read_request::What::Manifest(ManifestRead {
                tree: s.name.clone(),
                full,
            })),
        },
        client::MAX_MESSAGE,
    )
    .await
    .map_err(|e| CompareFailure::Old(e.message))?;
    let req = CompareStorageRequest {
        tree: s.on_new().to_string(),
        source_manifest: manifest,
        full,
        source: None,
        source_tree: String::new(),
    };
    new.target()
        .compare_storage(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|st| CompareFailure::New(client::explain_status(&st)))
}

/// One storage tree's row: compared by the new agent, every file re-hashed on both sides; and
/// the old tree's size in bytes (0 when the comparison did not run).
async fn storage_row(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    s: &crate::plan::PlanStorage,
    grant: Option<&str>,
    full: bool,
) -> (Row, u64) {
    let could_not_run = |old: String, new: String, detail: &str| Row {
        kind: "storage".into(),
        name: s.name.clone(),
        equal: false,
        status: RowStatus::CouldNotRun,
        old,
        new,
        detail: detail.into(),
    };
    let c = match compare_tree(plan, old, new, s, grant, full).await {
        Ok(c) => c,
        Err(CompareFailure::Old(e)) => {
            return (
                could_not_run(e, String::new(), "cannot read the old manifest"),
                0,
            );
        }
        Err(CompareFailure::New(e)) => {
            return (could_not_run(String::new(), e, "cannot compare"), 0);
        }
    };
    // Files the new host has that the old one lacks only matter when the plan deletes them.
    let (extra, extra_count) = if s.delete {
        (c.extra.clone(), c.extra_count)
    } else {
        (Vec::new(), 0)
    };
    let parts: Vec<String> = [
        list(&c.missing, c.missing_count, "missing"),
        list(&c.changed, c.changed_count, "content differs"),
        list(&extra, extra_count, "only on new"),
        list(&c.metadata, c.metadata_count, "mode/mtime/owner differ"),
        list(&c.owner, c.owner_count, "owner differs"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let row = Row {
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
    };
    (row, c.source_bytes)
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
