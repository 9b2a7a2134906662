//! Materialized views of a database: the sync refreshes on the new host what is populated on the
//! old one (as `pg_restore` does after the data: the schema arrives with every view empty), and
//! `verify` (so also the cutover's proof) compares each view's populated flag and content.
//!
//! A view's content is what its last refresh stored. When the old host's view was last refreshed
//! before its tables changed, the new host's fresh refresh holds newer rows than the old copy:
//! `verify` then asks the old host what a refresh would store now (the view's query evaluated
//! read-only there) and counts the view equal when that matches — the new host holds what the
//! old one would after its next refresh, and the row says so.

use hostshift_proto::v1::{DbSelection, MatviewsRequest, RefreshMatviewsRequest};

use super::UnitError;
use super::selection::Selections;
use super::verify::Row;
use crate::client::Agent;

/// The value the agents give a view that holds no data.
const NOT_POPULATED: &str = "not populated";

async fn states(
    agent: &Agent,
    sel: &DbSelection,
    snapshot: &str,
    fresh: bool,
) -> Result<std::collections::BTreeMap<String, String>, UnitError> {
    Ok(agent
        .database()
        .matviews(MatviewsRequest {
            selection: Some(sel.clone()),
            snapshot: snapshot.into(),
            fresh,
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner()
        .matviews
        .into_iter()
        .collect())
}

/// Refreshes on the new host each view whose populated flag or content differs from the old
/// host's (read on the sync's `snapshot`); empties one the old host holds unpopulated. Returns a
/// phrase for the sync's summary (empty when nothing needed doing).
///
/// # Errors
/// Either agent failing; the new agent refusing (no `[allow] restore_databases`) or a refresh
/// failing (its message names the view).
pub(crate) async fn refresh(
    old: &Agent,
    new: &Agent,
    sel: &Selections,
    snapshot: &str,
) -> Result<String, UnitError> {
    let (a, b) = tokio::join!(
        states(old, &sel.old, snapshot, false),
        states(new, &sel.new, "", false)
    );
    let (a, b) = (a?, b?);
    let (mut populate, mut unpopulate) = (Vec::new(), Vec::new());
    for (name, state) in &a {
        match b.get(name) {
            // Missing on the new host: the schema comparison reports it.
            None => {}
            Some(s) if s == state => {}
            // Differs from the old host's "not populated" (equal states were handled above).
            Some(_) if state == NOT_POPULATED => unpopulate.push(name.clone()),
            Some(_) => populate.push(name.clone()),
        }
    }
    if populate.is_empty() && unpopulate.is_empty() {
        return Ok(String::new());
    }
    new.database()
        .refresh_matviews(RefreshMatviewsRequest {
            database: sel.new.database.clone(),
            populate: populate.clone(),
            unpopulate: unpopulate.clone(),
        })
        .await
        .map_err(UnitError::from_status)?;
    let mut parts = Vec::new();
    if !populate.is_empty() {
        parts.push(format!(
            "{} materialized view(s) refreshed ({})",
            populate.len(),
            populate.join(", ")
        ));
    }
    if !unpopulate.is_empty() {
        parts.push(format!(
            "{} left unpopulated as on the old host ({})",
            unpopulate.len(),
            unpopulate.join(", ")
        ));
    }
    Ok(parts.join("; "))
}

/// One verify row per materialized view of the database (none when it has none); the new host
/// read under `new_snapshot` when not empty (the cutover's proof after the switch).
pub(crate) async fn compare(
    old: &Agent,
    new: &Agent,
    sel: &Selections,
    db: &str,
    new_snapshot: &str,
) -> Vec<Row> {
    let (a, b) = tokio::join!(
        states(old, &sel.old, "", false),
        states(new, &sel.new, new_snapshot, false)
    );
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let e = a.err().or(b.err()).map(|e| e.message).unwrap_or_default();
            return vec![Row {
                kind: "materialized views".into(),
                name: db.to_string(),
                equal: false,
                status: super::verify::RowStatus::CouldNotRun,
                old: String::new(),
                new: String::new(),
                detail: format!("cannot fingerprint the materialized views: {e}"),
            }];
        }
    };
    // Populated on both, content differs: is the old copy only stale?
    let stale_candidates = a
        .iter()
        .any(|(k, v)| v != NOT_POPULATED && b.get(k).is_some_and(|w| w != v && w != NOT_POPULATED));
    let fresh_old = if stale_candidates {
        states(old, &sel.old, "", true).await.ok()
    } else {
        None
    };
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (x, y) = (a.get(name), b.get(name));
            let (equal, detail) = match (x, y) {
                (Some(_), None) => (false, "missing on the new host".to_string()),
                (None, Some(_)) => (false, "only on the new host".to_string()),
                (Some(x), Some(y)) if x == y => (true, String::new()),
                (Some(x), Some(_)) if x == NOT_POPULATED => (
                    false,
                    "populated on the new host only (the old one holds no data)".to_string(),
                ),
                (Some(_), Some(y)) if y == NOT_POPULATED => (
                    false,
                    "not populated on the new host: the app's queries of it fail there; run `hostshift sync` (it refreshes it)".to_string(),
                ),
                (Some(_), Some(y)) => {
                    if fresh_old.as_ref().and_then(|f| f.get(name)) == Some(y) {
                        (
                            true,
                            "the old host's copy predates its tables' last changes; the new one holds what a refresh stores now".to_string(),
                        )
                    } else {
                        (
                            false,
                            "content differs: run `hostshift sync` (it refreshes it)".to_string(),
                        )
                    }
                }
                (None, None) => (true, String::new()),
            };
            let show = |v: Option<&String>| match v {
                None => "missing".to_string(),
                Some(v) if v == NOT_POPULATED => NOT_POPULATED.to_string(),
                Some(v) => format!(
                    "populated, {} rows",
                    v.split('/').next().unwrap_or("?")
                ),
            };
            Row {
                kind: "materialized view".into(),
                name: format!("{db} {name}"),
                equal,
                status: super::verify::RowStatus::of(equal),
                old: show(x),
                new: show(y),
                detail,
            }
        })
        .collect()
}
