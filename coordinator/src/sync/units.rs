//! The units of a sync: one config file, one storage tree (in batches), one database.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use hostshift_proto::v1::{
    ApplyHeader, ApplyResult, FileApply, FileRead, FinalizeStorageRequest, ManifestRead, Peer,
    PlanStorageRequest, ReadRequest, StorageFilesApply, StorageFilesRead, apply_header,
    read_request,
};

use super::{Run, UnitError, UnitReport, backoff, stream};
use crate::client;
use crate::plan::{OnNew, PlanFile, PlanStorage};

pub(crate) fn report(kind: &str, name: &str) -> UnitReport {
    UnitReport {
        kind: kind.into(),
        name: name.into(),
        status: "copied".into(),
        bytes: 0,
        files: 0,
        skipped_files: 0,
        skipped_bytes: 0,
        ms: 0,
        attempts: 0,
        retried: vec![],
        changes: vec![],
        detail: String::new(),
        ranges: 0,
        old_fingerprints: Default::default(),
        deferred: 0,
        deferred_names: vec![],
    }
}

/// Moves one stream with retries: pull or relay as the run says.
pub(super) async fn transfer(
    run: &Run<'_>,
    unit: &str,
    read: ReadRequest,
    header: ApplyHeader,
    total: u64,
    retried: &mut Vec<UnitError>,
) -> Result<(ApplyResult, u32), UnitError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        run.record(unit, "started", 0, 0, &format!("attempt {attempt}"))?;
        run.progress.start(unit, total);
        let progress = run.progress.clone();
        let name = unit.to_string();
        let result = match &run.pull_source {
            Some(src) => {
                let p = move |b: u64| progress.update(&name, b);
                stream::pull(&run.new, src, read.clone(), header.clone(), &p).await
            }
            None => {
                let tap = run.opts.tap.as_ref().and_then(|f| f(unit, attempt));
                let p: Arc<dyn Fn(u64) + Send + Sync> =
                    Arc::new(move |b: u64| progress.update(&name, b));
                stream::relay(&run.old, &run.new, read.clone(), header.clone(), tap, p).await
            }
        };
        match result {
            Ok(r) => {
                run.record(
                    unit,
                    "done",
                    r.bytes,
                    r.files,
                    &format!("sha256 {}", r.sha256),
                )?;
                return Ok((r, attempt));
            }
            Err(e) => {
                run.record(unit, "failed", 0, 0, &e.message)?;
                if e.retryable() && attempt < run.opts.attempts {
                    run.progress.say(&format!(
                        "retry {unit} (attempt {} of {}): {e}",
                        attempt + 1,
                        run.opts.attempts
                    ));
                    retried.push(e);
                    tokio::time::sleep(backoff(attempt + 1)).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

pub(super) fn fail(
    mut r: UnitReport,
    started: Instant,
    e: &UnitError,
    run: &Run<'_>,
) -> UnitReport {
    r.status = "failed".into();
    r.detail = e.message.clone();
    r.ms = started.elapsed().as_millis() as u64;
    run.progress.done(
        &format!("{} {}", r.kind, r.name),
        r.bytes,
        false,
        &e.message,
    );
    r
}

/// One config file: its mode and owner from the old host, its bytes streamed, the plan's
/// overrides applied on the new host.
pub async fn file(run: &Run<'_>, f: &PlanFile) -> UnitReport {
    let started = Instant::now();
    let unit = format!("file {}", f.name);
    let mut r = report("file", &f.name);
    let meta = match run
        .old
        .source()
        .file_meta(client::request(FileRead {
            name: f.name.clone(),
        }))
        .await
    {
        Ok(m) => m.into_inner(),
        Err(s) => return fail(r, started, &UnitError::from_status(s), run),
    };
    if !meta.exists {
        let e = UnitError {
            kind: super::ErrorKind::Refused,
            message: format!("file {} does not exist on the old host", f.name),
        };
        return fail(r, started, &e, run);
    }
    if equal_on_new(run, f, &meta).await {
        r.status = "unchanged".into();
        r.skipped_files = 1;
        r.skipped_bytes = meta.size;
        r.ms = started.elapsed().as_millis() as u64;
        if let Err(e) = run.record(&unit, "done", 0, 0, "unchanged: equal on both hosts") {
            return fail(r, started, &e, run);
        }
        run.progress.done(
            &unit,
            0,
            true,
            "unchanged (equal on both hosts), not written",
        );
        return r;
    }
    let read = ReadRequest {
        grant: String::new(),
        what: Some(read_request::What::File(FileRead {
            name: f.name.clone(),
        })),
    };
    let header = ApplyHeader {
        what: Some(apply_header::What::File(FileApply {
            name: f.on_new().to_string(),
            overrides: f.overrides.clone().into_iter().collect(),
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            rollback_window: run.window.clone(),
        })),
    };
    match transfer(run, &unit, read, header, meta.size, &mut r.retried).await {
        Ok((res, attempts)) => {
            r.bytes = res.bytes;
            r.files = 1;
            r.attempts = attempts;
            r.changes = res.changes;
            r.ms = started.elapsed().as_millis() as u64;
            let summary = if r.changes.is_empty() {
                format!("{} bytes", r.bytes)
            } else {
                format!("{} bytes, overrides: {}", r.bytes, r.changes.join("; "))
            };
            run.progress.done(&unit, r.bytes, true, &summary);
            r
        }
        Err(e) => fail(r, started, &e, run),
    }
}

/// Whether the new host's copy of `f` already is what the sync would write: the old bytes with
/// the plan's overrides applied (compared by digest), the old mode, owner and group. Then it is
/// not written again (a rewrite would give it a new inode and mtime). Any doubt (a read fails,
/// an override does not apply) means "copy it", as before.
async fn equal_on_new(
    run: &Run<'_>,
    f: &PlanFile,
    old: &hostshift_proto::v1::FileMetaResponse,
) -> bool {
    use hostshift_shared::digest::Sha256Digest;
    let Ok(new) = run
        .new
        .source()
        .file_meta(client::request(FileRead {
            name: f.on_new().to_string(),
        }))
        .await
        .map(tonic::Response::into_inner)
    else {
        return false;
    };
    // The sink writes mode 0 as 0640 (see the agent's transfer::sink).
    let want_mode = if old.mode == 0 {
        0o640
    } else {
        old.mode & 0o7777
    };
    if !new.exists || new.mode & 0o7777 != want_mode || (new.uid, new.gid) != (old.uid, old.gid) {
        return false;
    }
    let read = |agent, name: &str| {
        stream::read_all(
            agent,
            ReadRequest {
                grant: String::new(),
                what: Some(read_request::What::File(FileRead { name: name.into() })),
            },
            client::MAX_MESSAGE,
        )
    };
    let (a, b) = tokio::join!(read(&run.old, &f.name), read(&run.new, f.on_new()));
    let (Ok(a), Ok(b)) = (a, b) else {
        return false;
    };
    match hostshift_shared::dotenv::apply(&a, &f.overrides) {
        Ok(expected) => Sha256Digest::of(&expected) == Sha256Digest::of(&b),
        Err(_) => false,
    }
}

/// Most bytes of an encoded manifest the coordinator accepts.
const MANIFEST_LIMIT: usize = client::MAX_MESSAGE;

/// One storage tree: the old agent's manifest, the new agent's plan of what differs, the
/// batches, then directories/metadata/deletions. A file that changed or vanished on the old host
/// since the manifest was taken (users upload while we sync) is deferred by the old agent: the
/// rest of its batch commits, the file is named in the report and left for the next pass; a
/// failed stream (integrity, connection) makes the tree be planned again.
pub async fn storage(run: &Run<'_>, s: &PlanStorage) -> UnitReport {
    let started = Instant::now();
    let unit = format!("storage {}", s.name);
    let mut r = report("storage", &s.name);
    run.progress.start(&unit, 0);
    // One storage session per tree and sync on the new agent (pull only): its copy of the old
    // agent's manifest and the batches. A round planned again reuses (refetches) it.
    let session = run.pull_source.as_ref().map(|_| session_id(&s.name));
    let mut round = 0;
    loop {
        round += 1;
        match storage_round(run, s, session.as_deref(), &mut r).await {
            Ok(()) => {
                r.ms = started.elapsed().as_millis() as u64;
                if r.files == 0 && r.status != "failed" {
                    r.status = "unchanged".into();
                }
                let mut summary = format!(
                    "{} files ({}) sent, {} unchanged files ({}) skipped",
                    r.files,
                    crate::output::bytes(r.bytes),
                    r.skipped_files,
                    crate::output::bytes(r.skipped_bytes)
                );
                if r.deferred > 0 {
                    summary.push_str(&format!("; {}", deferred_summary(&r)));
                }
                run.progress.done(&unit, r.bytes, true, &summary);
                return r;
            }
            Err(e) if e.retryable() && round < run.opts.attempts => {
                run.progress
                    .say(&format!("{unit}: planning again after: {e}"));
                r.retried.push(e);
            }
            Err(e) => return fail(r, started, &e, run),
        }
    }
}

/// Names of deferred files listed in reports (the count is always complete).
pub const DEFERRED_NAMES: usize = 10;

/// Storage batches in flight at once. Each batch ends with the new agent making its files
/// durable and committing them (a `syncfs` of a 256 MiB batch, renames, directory flushes)
/// while nothing streams; a second batch streaming meanwhile keeps both cores busy (the
/// benchmark's tar batches ran at 80 % of the machine one at a time). Batches hold different
/// files, stage in their own folders and commit independently; the final step runs after all.
const PARALLEL_BATCHES: usize = 2;

/// A storage unit's deferred files for people: `N deferred (why; what happens next): a, b, c`.
pub fn deferred_summary(r: &UnitReport) -> String {
    let more = r.deferred.saturating_sub(r.deferred_names.len() as u64);
    format!(
        "{} deferred (changed on the old host while being read; the next sync or the cutover sends them): {}{}",
        r.deferred,
        r.deferred_names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// A storage session's name: unique per sync and tree (letters, digits, `-`).
fn session_id(tree: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tree: String = tree
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("sync-{tree}-{}-{nanos:x}", std::process::id())
}

async fn storage_round(
    run: &Run<'_>,
    s: &PlanStorage,
    session: Option<&str>,
    r: &mut UnitReport,
) -> Result<(), UnitError> {
    let unit = format!("storage {}", s.name);
    // The unit's start, before planning: the cutover's predicted freeze counts walking and
    // comparing the trees (`gates::walk_ms`), which recur in the freeze.
    run.record(&unit, "started", 0, 0, "plan")?;
    // Pull: the new agent fetches the old agent's manifest itself (over the grant) into its
    // storage session; only counts and batch sizes come back here. Relay (the new host cannot
    // reach the old one): the manifest passes through this process.
    let (manifest, source) = match (&run.pull_source, session) {
        (Some(src), Some(_)) => {
            run.progress.say(&format!(
                "{unit}: the {} agent reads the {} host's manifest and compares",
                run.written(),
                run.read()
            ));
            (
                Vec::new(),
                Some(Peer {
                    address: src.address.clone(),
                    tls_name: src.tls_name.clone(),
                    grant: src.grant.clone(),
                }),
            )
        }
        _ => {
            run.progress.say(&format!(
                "{unit}: reading the {} host's manifest",
                run.read()
            ));
            let m = stream::read_all(
                &run.old,
                ReadRequest {
                    grant: String::new(),
                    what: Some(read_request::What::Manifest(ManifestRead {
                        tree: s.name.clone(),
                        full: false,
                    })),
                },
                MANIFEST_LIMIT,
            )
            .await?;
            (m, None)
        }
    };
    let session = session.unwrap_or_default().to_string();
    let plan = run
        .new
        .target()
        .plan_storage(PlanStorageRequest {
            tree: s.on_new().to_string(),
            source_manifest: manifest.clone(),
            delete_extraneous: s.delete,
            batch_bytes: run.opts.batch_bytes,
            batch_files: run.opts.batch_files,
            source,
            source_tree: s.name.clone(),
            session: session.clone(),
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    r.skipped_files = plan.unchanged_files;
    r.skipped_bytes = plan.unchanged_bytes;
    run.progress.say(&format!(
        "{unit}: {} to send in {} batch(es); {} unchanged files ({}) skipped; {} to delete",
        crate::output::bytes(plan.bytes_to_send),
        plan.batches.len(),
        plan.unchanged_files,
        crate::output::bytes(plan.unchanged_bytes),
        plan.delete
    ));
    if !plan.first_paths.is_empty() {
        // The new agent lists the first paths it will fetch (at most 1000; the count is
        // complete): the log gets them, the screen a few.
        tracing::debug!(tree = %s.name, files = plan.files_to_send, first = ?plan.first_paths, "storage plan");
        let more = plan.files_to_send.saturating_sub(5);
        run.progress.say(&format!(
            "{unit}: to send: {}{}",
            plan.first_paths
                .iter()
                .take(5)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if plan.batches.is_empty() && plan.dirs == 0 && plan.meta == 0 && plan.delete == 0 {
        // Nothing to send, fix or delete: the trees are equal; no prepare/finalize round trips
        // (each walks the new tree again).
        r.detail = "already equal".into();
        run.record(&unit, "done", 0, 0, &r.detail)?;
        return Ok(());
    }
    let finalize = |prepare_only: bool, deferred: Vec<Vec<u8>>| FinalizeStorageRequest {
        tree: s.on_new().to_string(),
        source_manifest: manifest.clone(),
        delete_extraneous: s.delete,
        prepare_only,
        deferred,
        session: session.clone(),
        rollback_window: run.window.clone(),
    };
    // Deletions happen here, before the batches (a file may turn into a directory): count them
    // with finalize's, which finds nothing left to delete.
    let prepared = run
        .new
        .target()
        .finalize_storage(finalize(true, vec![]))
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    let n = plan.batches.len();
    // Files that changed on the old host while their batch was read: left for the next pass.
    let mut deferred: Vec<Vec<u8>> = Vec::new();
    r.deferred = 0;
    r.deferred_names.clear();
    let session = &session;
    let batches = plan.batches.into_iter().enumerate().map(|(i, batch)| {
        let bunit = format!("{unit} batch {}/{n}", i + 1);
        let read = ReadRequest {
            grant: String::new(),
            what: Some(read_request::What::StorageFiles(StorageFilesRead {
                tree: s.name.clone(),
                entries: batch.expected.clone(),
            })),
        };
        // In a session the new agent fills both from its batch file.
        let header = ApplyHeader {
            what: Some(apply_header::What::StorageFiles(StorageFilesApply {
                tree: s.on_new().to_string(),
                expected: batch.expected,
                session: session.clone(),
                batch: i as u64,
                rollback_window: run.window.clone(),
            })),
        };
        async move {
            let mut retried = Vec::new();
            let done = transfer(run, &bunit, read, header, batch.bytes, &mut retried).await;
            (done, retried)
        }
    });
    // In order, PARALLEL_BATCHES at a time; the first failure ends the unit (dropping the
    // stream cancels the batch still in flight: the new agent throws its staging away).
    let mut results = futures::stream::iter(batches).buffered(PARALLEL_BATCHES);
    while let Some((done, retried)) = results.next().await {
        r.retried.extend(retried);
        let (res, attempts) = done?;
        r.bytes += res.bytes;
        r.files += res.files;
        r.attempts = r.attempts.max(attempts);
        for d in res.deferred {
            let name = String::from_utf8_lossy(&d.path).into_owned();
            run.progress.say(&format!(
                "{unit}: {name} deferred to the next pass: {}",
                d.reason
            ));
            run.record(&unit, "deferred", 0, 0, &format!("{name}: {}", d.reason))?;
            if deferred.len() < DEFERRED_NAMES {
                r.deferred_names.push(name);
            }
            deferred.push(d.path);
        }
    }
    drop(results);
    r.deferred = deferred.len() as u64;
    let fin = run
        .new
        .target()
        .finalize_storage(finalize(false, deferred))
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    r.detail = format!(
        "{} dirs created, {} metadata fixes, {} deleted",
        prepared.dirs + fin.dirs,
        fin.meta,
        prepared.deleted + fin.deleted
    );
    if r.deferred > 0 {
        r.detail = format!("{}; {}", r.detail, deferred_summary(r));
    }
    run.record(&unit, "done", r.bytes, r.files, &r.detail)?;
    Ok(())
}
