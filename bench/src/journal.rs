//! Where a sync's time goes, read from the coordinator's journal (`journal.jsonl`): every unit —
//! a config file, a storage batch, the roles, a schema section, a table or one key range of it, a
//! large object — is journaled when it starts and when it is done, with a millisecond clock. The
//! gaps between them are the steps that are not units (manifests and planning, the snapshot,
//! fingerprints).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

/// One unit's time.
#[derive(Clone, Debug, Serialize)]
pub struct Span {
    /// The journal's unit name.
    pub unit: String,
    /// Milliseconds since the sync started.
    pub start_ms: u64,
    /// Milliseconds since the sync started.
    pub end_ms: u64,
}

impl Span {
    fn ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// The spans of the run(s) journaled after byte `offset` (one sync command), relative to its
/// `sync started` event, and that event's time (ms since the epoch). Units that only have a
/// `done` event (a tree or a database as a whole) span from the previous unit's end.
///
/// # Errors
/// I/O errors.
pub fn spans_since(path: &Path, offset: u64) -> std::io::Result<(u64, Vec<Span>)> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut t0 = None;
    let mut open: HashMap<String, u64> = HashMap::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut last_end = 0;
    for line in BufReader::new(f).lines() {
        let line = line?;
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let (Some(unit), Some(status), Some(t)) = (e["unit"].as_str(), e["status"].as_str(), e["time_ms"].as_u64()) else {
            continue;
        };
        if unit == "sync" {
            if status == "started" {
                t0 = Some(t);
            }
            continue;
        }
        let base = *t0.get_or_insert(t);
        let rel = t.saturating_sub(base);
        match status {
            "started" => {
                open.insert(unit.to_string(), rel);
            }
            "done" | "failed" => {
                let start = open.remove(unit).unwrap_or(last_end);
                // A failed unit that is not retried is part of the run too: on a rerun the
                // post-data section fails with "already exists", which the sync expects.
                let unit = if status == "failed" { format!("{unit} (failed)") } else { unit.to_string() };
                spans.push(Span { unit, start_ms: start, end_ms: rel });
                last_end = last_end.max(rel);
            }
            _ => {}
        }
    }
    Ok((t0.unwrap_or(0), spans))
}

/// A step of a sync and its seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// What it is.
    pub phase: String,
    /// Seconds.
    pub s: f64,
    /// Start, ms since the sync started.
    pub start_ms: u64,
    /// End, ms since the sync started.
    pub end_ms: u64,
}

fn first(spans: &[Span], f: impl Fn(&Span) -> bool) -> Option<&Span> {
    spans.iter().filter(|s| f(s)).min_by_key(|s| s.start_ms)
}

fn last_end(spans: &[Span], f: impl Fn(&Span) -> bool) -> Option<u64> {
    spans.iter().filter(|s| f(s)).map(|s| s.end_ms).max()
}

/// The steps of one sync, in order, from its spans: files; storage manifests + plan, batches,
/// finalize; database snapshot + listing, roles, pre-data, table data, post-data, sequences and
/// large objects, final fingerprints.
pub fn phases(spans: &[Span]) -> Vec<Phase> {
    let mut out = Vec::new();
    let mut push = |name: &str, a: Option<u64>, b: Option<u64>| {
        if let (Some(a), Some(b)) = (a, b) {
            out.push(Phase { phase: name.to_string(), s: b.saturating_sub(a) as f64 / 1000.0, start_ms: a, end_ms: b });
        }
    };
    let is_file = |s: &Span| s.unit.starts_with("file ");
    let is_batch = |s: &Span| s.unit.starts_with("storage ") && s.unit.contains(" batch ");
    let is_tree = |s: &Span| s.unit.starts_with("storage ") && !s.unit.contains(" batch ");
    let is_table = |s: &Span| s.unit.starts_with("table ");
    let is_db = |s: &Span| s.unit.starts_with("database ") && s.unit.matches(' ').count() == 1;
    let files_end = last_end(spans, is_file);
    push("connect + files", Some(0), files_end);
    let tree_end = last_end(spans, is_tree);
    let storage_start = files_end.or(Some(0)).filter(|_| tree_end.is_some());
    let batch_start = first(spans, is_batch).map(|s| s.start_ms);
    let batch_end = last_end(spans, is_batch);
    push("storage: manifests + plan", storage_start, batch_start.or(tree_end));
    push("storage: tar batches", batch_start, batch_end);
    push("storage: finalize (+ syncfs)", batch_end, tree_end);
    let db_end = last_end(spans, is_db);
    let db_start = tree_end.or(files_end).or(Some(0)).filter(|_| db_end.is_some());
    let roles = first(spans, |s| s.unit.ends_with(" roles"));
    let pre = first(spans, |s| s.unit.ends_with("schema (pre-data)"));
    let post = first(spans, |s| s.unit.contains("schema (post-data)"));
    let table_start = first(spans, is_table).map(|s| s.start_ms);
    let table_end = last_end(spans, is_table);
    push("db: snapshot + tables + fingerprints", db_start, roles.map(|s| s.start_ms).or(table_start));
    push("db: roles", roles.map(|s| s.start_ms), roles.map(|s| s.end_ms));
    push("db: pre-data schema", pre.map(|s| s.start_ms), pre.map(|s| s.end_ms));
    push("db: table data (COPY pieces)", table_start, table_end);
    // Index builds of big tables run while the data loads (docs/sync.md); one that is still
    // running when the last piece is in holds the post-data step back, and the other tables'
    // builds run beside it (`(post-data, the other tables' indexes)`, protocol 5).
    let early_end = last_end(spans, |s| s.unit.contains("(post-data, indexes of ") || s.unit.contains("(post-data, the other tables' indexes)"));
    if let (Some(t), Some(e)) = (table_end, early_end)
        && e > t
    {
        push("db: index builds after the last piece", Some(t), Some(e));
    }
    let post_name = match post {
        Some(p) if p.unit.ends_with("(failed)") => "db: post-data (already in place: refused)",
        _ => "db: post-data (indexes, constraints)",
    };
    push(post_name, post.map(|s| s.start_ms), post.map(|s| s.end_ms));
    let lo_end = last_end(spans, |s| s.unit.contains(" large object "));
    let after_post = post.map(|s| s.end_ms).or(table_end);
    if lo_end.is_some() {
        push("db: sequences + large objects", after_post, lo_end);
        push("db: final fingerprints", lo_end, db_end);
    } else {
        // No object copied: the large-object check (on a rerun a full fingerprint of both
        // databases) and the final fingerprints are one gap in the journal.
        push("db: sequences, large-object check, final fingerprints", after_post, db_end);
    }
    out
}

/// The table pieces: how many, their summed seconds (divided by the data phase's wall time:
/// the parallelism achieved) and the slowest few.
pub fn table_pieces(spans: &[Span]) -> serde_json::Value {
    let mut pieces: Vec<&Span> = spans.iter().filter(|s| s.unit.starts_with("table ")).collect();
    if pieces.is_empty() {
        return serde_json::Value::Null;
    }
    let sum: u64 = pieces.iter().map(|s| s.ms()).sum();
    let wall = pieces.iter().map(|s| s.end_ms).max().unwrap_or(0) - pieces.iter().map(|s| s.start_ms).min().unwrap_or(0);
    pieces.sort_by_key(|s| std::cmp::Reverse(s.ms()));
    serde_json::json!({
        "pieces": pieces.len(),
        "sum_s": sum as f64 / 1000.0,
        "wall_s": wall as f64 / 1000.0,
        "parallelism": if wall > 0 { (sum as f64 / wall as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "slowest": pieces.iter().take(6).map(|s| format!("{} {:.1} s", s.unit, s.ms() as f64 / 1000.0)).collect::<Vec<_>>(),
    })
}
