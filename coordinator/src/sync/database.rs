//! One database: roles and the pre-data schema on a fresh target, the table data in pieces
//! (big tables split by key range) two at a time, the post-data schema (indexes, constraints,
//! triggers), sequences, large objects — every read from one snapshot of the old database.
//!
//! A rerun (after an interruption, to catch up, or as the cutover's final delta) first compares
//! the schemas of both sides (refusing a schema change), then finds the differing key ranges of
//! each table ([`super::delta`]) and re-copies only those (deleting the range first, in the
//! load's transaction); equal schemas mean the post-data is in place and it is not sent again.
//! The sync does not compare the databases at the end: that is `hostshift verify`, and costs as
//! much as the copy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostshift_proto::v1::{
    ApplyHeader, CloseSnapshotRequest, DatabaseSpec, DbGlobals, DbLargeObject, DbReadRequest,
    DbSchema, DbTable, DescribeDatabaseRequest, EnsureDatabaseRequest, FingerprintResponse,
    OpenSnapshotRequest, ReadRequest, RenewSnapshotRequest, SetSequencesRequest, TableDescription,
    apply_header, read_request,
};
use hostshift_shared::model::{
    DatabaseFingerprint, KeyRange, PageRange, TableInfo, TablePattern, TableRef,
};

use super::delta::FirstCopySplit;
use super::selection::Selections;
use super::units::{fail, report, transfer};
use super::{Run, UnitError, UnitReport, delta};
use crate::plan::{OnNew, PlanDatabase};

/// Tables above this many (estimated) rows are copied in key ranges of about this size.
const ROWS_PER_RANGE: u64 = 250_000;
/// Table pieces copied at once.
const PARALLEL_PIECES: usize = 2;

/// Bytes, rows and retried failures of one finished table piece.
type PieceDone = (u64, u64, Vec<UnitError>);

/// A table as the agents describe it.
#[derive(Clone)]
struct Table {
    /// `schema.table`.
    name: String,
    info: TableInfo,
}

impl Table {
    /// The planner's row estimate (0 when the table was never analyzed).
    fn rows(&self) -> i64 {
        self.info.estimated_rows.unwrap_or(0)
    }

    fn description(&self) -> Option<TableDescription> {
        Some(self.info.clone().into())
    }
}

/// The tables of a `Tables` answer (`host` says whose, for the error).
fn tables(raw: Vec<TableDescription>, host: &str) -> Result<Vec<Table>, UnitError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let info = TableInfo::from_proto(m).map_err(|e| {
                UnitError::other(format!(
                    "the {host} agent's table list: {}",
                    e.within(&format!("tables[{i}]"))
                ))
            })?;
            Ok(Table {
                name: info.table.to_string(),
                info,
            })
        })
        .collect()
}

/// The fingerprints of both sides, taken at the same time, each checked (a malformed answer is
/// an error naming the agent and the field, never a default).
///
/// # Errors
/// Either agent failing or answering a malformed message.
pub(crate) async fn fingerprints(
    old: &crate::client::Agent,
    new: &crate::client::Agent,
    sel: &Selections,
) -> Result<(DatabaseFingerprint, DatabaseFingerprint), UnitError> {
    let (mut a, mut b) = (old.database(), new.database());
    let (fo, fn_) = tokio::join!(
        a.fingerprint(sel.old.clone()),
        b.fingerprint(sel.new.clone())
    );
    let checked = |r: Result<tonic::Response<FingerprintResponse>, tonic::Status>, host: &str| {
        DatabaseFingerprint::from_proto(r.map_err(UnitError::from_status)?.into_inner())
            .map_err(|e| UnitError::other(format!("the {host} agent's fingerprints: {e}")))
    };
    Ok((checked(fo, "old")?, checked(fn_, "new")?))
}

fn read(what: read_request::What) -> ReadRequest {
    ReadRequest {
        grant: String::new(),
        what: Some(what),
    }
}

fn apply(what: apply_header::What) -> ApplyHeader {
    ApplyHeader { what: Some(what) }
}

/// The lease of the snapshot a database sync holds on the old host: the old agent closes it
/// when no renewal came for this long, so a killed coordinator leaves no open transaction
/// (holding back VACUUM) on the production database for longer than this.
pub const SNAPSHOT_LEASE: Duration = Duration::from_secs(90);

/// [`SNAPSHOT_LEASE`], or `HOSTSHIFT_SNAPSHOT_LEASE_SECS` when set (meant for tests, which kill a
/// coordinator and wait for its snapshot to go; docs/sync.md). Renewed every third of it.
pub fn snapshot_lease() -> Duration {
    std::env::var("HOSTSHIFT_SNAPSHOT_LEASE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(SNAPSHOT_LEASE, Duration::from_secs)
}

/// Renews `snapshot`'s lease on the old agent every third of `lease` until dropped.
fn keep_alive(old: &crate::client::Agent, snapshot: &str, lease: Duration) -> AbortOnDrop {
    let mut client = old.database();
    let snapshot = snapshot.to_string();
    let every = (lease / 3).max(Duration::from_millis(500));
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let renewed = tokio::time::timeout(
                every,
                client.renew_snapshot(RenewSnapshotRequest {
                    snapshot: snapshot.clone(),
                    lease_secs: lease.as_secs(),
                }),
            )
            .await;
            match renewed {
                Ok(Ok(r)) if r.get_ref().held => {}
                Ok(Ok(_)) => {
                    tracing::warn!(%snapshot, "the old agent no longer holds the snapshot");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(%snapshot, error = %e, "snapshot lease not renewed"),
                Err(_) => tracing::warn!(%snapshot, "snapshot lease renewal timed out"),
            }
        }
    }))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The database itself on the new host as on the old one (`pg_dump --create`): created when
/// missing, with the old one's owner (once that role exists there), encoding, locale and
/// settings. `spec` is the old database's, read when `None`; returned for the next call.
async fn ensure_database(
    run: &Run<'_>,
    d: &PlanDatabase,
    spec: Option<&DatabaseSpec>,
    r: &mut UnitReport,
) -> Result<DatabaseSpec, UnitError> {
    let spec = match spec {
        Some(s) => s.clone(),
        None => run
            .old
            .database()
            .describe_database(DescribeDatabaseRequest {
                database: d.name.clone(),
            })
            .await
            .map_err(UnitError::from_status)?
            .into_inner(),
    };
    let done = run
        .new
        .database()
        .ensure_database(EnsureDatabaseRequest {
            database: d.on_new().to_string(),
            spec: Some(spec.clone()),
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    if done.created {
        run.progress.say(&format!(
            "database {}: created on the new host ({})",
            d.name,
            hostshift_shared::dbspec::summary(&spec)
        ));
    }
    for w in &done.warnings {
        run.progress
            .say(&format!("database {}: not carried: {w}", d.name));
    }
    r.changes.extend(done.changes);
    Ok(spec)
}

/// Syncs one database.
pub async fn database(run: &Run<'_>, d: &PlanDatabase) -> UnitReport {
    let started = Instant::now();
    let mut r = report("database", &d.name);
    let unit = format!("database {}", d.name);
    run.progress.start(&unit, 0);
    // Its start, journaled before anything is awaited: units run at once, and the journal shows
    // when each began (`bench/run`'s "where the time goes" reads it).
    if let Err(e) = run.record(&unit, "started", 0, 0, "") {
        return fail(r, started, &e, run);
    }
    let sel = Selections::of(d);
    let spec = match ensure_database(run, d, None, &mut r).await {
        Ok(spec) => spec,
        Err(e) => return fail(r, started, &e, run),
    };
    let lease = snapshot_lease();
    let snapshot = match run
        .old
        .database()
        .open_snapshot(OpenSnapshotRequest {
            database: d.name.clone(),
            ttl_secs: 6 * 3600,
            lease_secs: lease.as_secs(),
        })
        .await
    {
        Ok(s) => s.into_inner().snapshot,
        Err(s) => return fail(r, started, &UnitError::from_status(s), run),
    };
    let renewer = keep_alive(&run.old, &snapshot, lease);
    let outcome = copy(run, d, &sel, &snapshot, &spec, &mut r).await;
    drop(renewer);
    let _ = run
        .old
        .database()
        .close_snapshot(CloseSnapshotRequest { snapshot })
        .await;
    match outcome {
        Ok(()) => {
            r.ms = started.elapsed().as_millis() as u64;
            if r.files == 0 {
                r.status = "unchanged".into();
            }
            run.progress.done(&unit, r.bytes, true, &r.detail);
            r
        }
        Err(e) => fail(r, started, &e, run),
    }
}

/// What a database sync has to copy: every table on a fresh target; on a rerun, the tables
/// whose key-range fingerprints differ and, per table, the ranges (`None`: the whole table).
#[derive(Default)]
struct Work {
    to_copy: Vec<Table>,
    deltas: Vec<(Table, Option<Vec<KeyRange>>)>,
    /// Equal schemas on a rerun: the post-data (indexes, constraints, triggers) is in place.
    post_data_in_place: bool,
    /// A rerun completing an interrupted first sync compares the schemas once its post-data is in.
    recheck_schema: bool,
    /// Tables left out of the comparison because the follower carried them (the cutover's delta
    /// of a followed database).
    followed: usize,
}

/// One named step of a database unit, in its own span (see [`crate::phase`]).
fn step<F: std::future::Future>(
    name: &'static str,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    crate::phase::traced(tracing::info_span!("db", step = %name), f)
}

/// The copy of one database inside its snapshot, step by step: the tables of both sides; on a
/// fresh target roles and the pre-data schema, on a rerun the comparison that finds what
/// differs; the table data; the post-data; sequences, large objects and materialized views.
async fn copy(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    snapshot: &str,
    spec: &DatabaseSpec,
    r: &mut UnitReport,
) -> Result<(), UnitError> {
    let unit = format!("database {}", d.name);
    let (old_t, new_t) = step("tables", list_tables(run, sel)).await?;
    let fresh = new_t.is_empty();
    let work = if fresh {
        step(
            "schema",
            pre_data(run, d, sel, snapshot, spec, old_t.len(), r),
        )
        .await?;
        Work {
            to_copy: old_t.clone(),
            ..Work::default()
        }
    } else {
        step("compare", compare(run, d, sel, snapshot, &old_t, &new_t, r)).await?
    };
    let (rows, built) = step("data", table_data(run, d, &work, sel, snapshot, fresh, r)).await?;
    r.files = work.to_copy.len() as u64;

    // Post-data: on a fresh target (but the indexes built while the data loaded), and on a
    // rerun that completes an interrupted first sync.
    if !work.post_data_in_place {
        step(
            "post-data",
            post_data(run, &unit, sel, snapshot, &built, &mut r.retried),
        )
        .await?;
    }
    if work.recheck_schema {
        schema_unchanged(&run.old, &run.new, sel).await?;
    }
    step("sequences", sequences(run, d, sel, snapshot)).await?;
    if d.include.is_empty() {
        let tables: Vec<TableRef> = old_t.iter().map(|t| t.info.table.clone()).collect();
        step(
            "large objects",
            large_objects(run, d, sel, &tables, snapshot, fresh, r),
        )
        .await?;
    }
    // Materialized views last, as pg_restore does: they read the tables just copied.
    let refreshed = step(
        "matviews",
        super::matviews::refresh(&run.old, &run.new, sel, snapshot),
    )
    .await?;
    if !refreshed.is_empty() {
        run.progress.say(&format!("{unit}: {refreshed}"));
    }

    // No fingerprints here: comparing both whole databases costs as much as the copy (the
    // benchmark measured 22 of 39 s); `hostshift verify` does it when asked, and the cutover's
    // delta does it per key range.
    r.detail = if fresh {
        format!(
            "{} tables ({rows} rows) copied; compare with `hostshift verify`",
            work.to_copy.len()
        )
    } else {
        format!(
            "{} tables differed: {} key ranges ({rows} rows) re-copied; {} tables already equal",
            work.to_copy.len(),
            r.ranges,
            r.skipped_files
        )
    };
    if work.followed > 0 {
        r.detail.push_str(&format!(
            "; {} tables carried by the follower (not compared)",
            work.followed
        ));
    }
    if !refreshed.is_empty() {
        r.detail.push_str("; ");
        r.detail.push_str(&refreshed);
    }
    run.record(&unit, "done", r.bytes, r.files, &r.detail)?;
    Ok(())
}

/// The tables of both sides (the new side's list is empty on a fresh target).
async fn list_tables(
    run: &Run<'_>,
    sel: &Selections,
) -> Result<(Vec<Table>, Vec<Table>), UnitError> {
    let (mut a, mut b) = (run.old.database(), run.new.database());
    let (old_t, new_t) = tokio::join!(a.tables(sel.old.clone()), b.tables(sel.new.clone()));
    let old_t = tables(
        old_t.map_err(UnitError::from_status)?.into_inner().tables,
        "old",
    )?;
    let new_t = tables(
        new_t.map_err(UnitError::from_status)?.into_inner().tables,
        "new",
    )?;
    Ok((old_t, new_t))
}

/// A fresh target: the roles, then the database with its owner, then the pre-data schema.
async fn pre_data(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    snapshot: &str,
    spec: &DatabaseSpec,
    tables: usize,
    r: &mut UnitReport,
) -> Result<(), UnitError> {
    let unit = format!("database {}", d.name);
    run.progress.say(&format!(
        "{unit}: new database: roles and schema first ({tables} tables)"
    ));
    let (res, _) = transfer(
        run,
        &format!("{unit} roles"),
        read(read_request::What::DbGlobals(DbGlobals {
            database: d.name.clone(),
        })),
        apply(apply_header::What::DbGlobals(DbGlobals {
            database: d.on_new().to_string(),
        })),
        0,
        &mut r.retried,
    )
    .await?;
    r.changes.extend(res.changes);
    // The owner role exists now: the database gets it.
    ensure_database(run, d, Some(spec), r).await?;
    let pre = DbSchema {
        selection: Some(sel.old.clone()),
        section: "pre-data".into(),
        snapshot: snapshot.into(),
        ..DbSchema::default()
    };
    transfer(
        run,
        &format!("{unit} schema (pre-data)"),
        read(read_request::What::DbSchema(pre.clone())),
        apply(apply_header::What::DbSchema(DbSchema {
            selection: Some(sel.new.clone()),
            ..pre
        })),
        0,
        &mut r.retried,
    )
    .await?;
    Ok(())
}

/// A rerun: refuses a schema change, then finds each table's differing key ranges.
async fn compare(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    snapshot: &str,
    old_t: &[Table],
    new_t: &[Table],
    r: &mut UnitReport,
) -> Result<Work, UnitError> {
    let unit = format!("database {}", d.name);
    let mut work = Work::default();
    let a: BTreeSet<&str> = old_t.iter().map(|t| t.name.as_str()).collect();
    let b: BTreeSet<&str> = new_t.iter().map(|t| t.name.as_str()).collect();
    if a != b {
        let only_old: Vec<&&str> = a.difference(&b).collect();
        let only_new: Vec<&&str> = b.difference(&a).collect();
        return Err(UnitError {
            kind: super::ErrorKind::Refused,
            message: format!(
                "the schema of {} differs between the hosts (tables only on old: {only_old:?}; only on new: {only_new:?}): drop and recreate the new database to sync it from scratch",
                d.name
            ),
        });
    }
    // Equal schemas mean the post-data (indexes, constraints, triggers) is in place: it is
    // not sent again. A difference is a real schema change — unless the first sync never
    // finished its post-data (killed before), which this rerun then completes and checks.
    let differ = schema_differences(&run.old, &run.new, sel).await?;
    if differ.is_empty() {
        work.post_data_in_place = true;
    } else if post_data_done_before(run, &unit) {
        schema_unchanged(&run.old, &run.new, sel).await?;
    } else {
        run.progress.say(&format!(
            "{unit}: the first sync did not finish its indexes and constraints: completing them after the data"
        ));
        work.recheck_schema = true;
    }
    // A followed database (the cutover's delta): the follower carried every table but these.
    let old_t: Vec<Table> = match run.opts.followed.get(&d.name) {
        None => old_t.to_vec(),
        Some(not_followed) => {
            work.followed = old_t
                .iter()
                .filter(|t| !not_followed.contains(&t.name))
                .count();
            let followed = old_t.len();
            let left: Vec<Table> = old_t
                .iter()
                .filter(|t| not_followed.contains(&t.name))
                .cloned()
                .collect();
            run.progress.say(&format!(
                "{unit}: {} of {followed} tables carried by the follower; comparing the {} it does not carry",
                followed - left.len(),
                left.len()
            ));
            left
        }
    };
    let old_t = &old_t[..];
    run.progress.say(&format!(
        "{unit}: comparing {} tables by key-range fingerprints",
        old_t.len()
    ));
    let found: Vec<Result<(Table, delta::Found), UnitError>> =
        futures::stream::iter(old_t.iter().cloned().map(|t| async move {
            let f = delta::find(
                &run.old,
                &run.new,
                sel,
                &t.info,
                snapshot,
                run.opts.baseline,
            )
            .await?;
            Ok((t, f))
        }))
        .buffer_unordered(PARALLEL_PIECES)
        .collect()
        .await;
    for f in found {
        let (t, f) = f?;
        if !f.old_fingerprint.is_empty() {
            r.old_fingerprints.insert(t.name.clone(), f.old_fingerprint);
        }
        let ranges = match f.delta {
            delta::TableDelta::Equal => continue,
            delta::TableDelta::Whole => None,
            delta::TableDelta::Ranges(ranges) => Some(ranges),
        };
        work.to_copy.push(t.clone());
        work.deltas.push((t, ranges));
    }
    r.skipped_files = (old_t.len() - work.to_copy.len()) as u64;
    run.progress.say(&format!(
        "{unit}: {} of {} tables differ; {} already equal are skipped",
        work.to_copy.len(),
        old_t.len(),
        r.skipped_files
    ));
    Ok(work)
}

/// The table data, two pieces at a time (on a first copy in [`copy_order`], big tables in page
/// or key ranges; on a rerun the differing key ranges). Returns the rows copied and the tables
/// whose indexes were built meanwhile.
///
/// On a fresh target, the indexes and key constraints of a big table (see
/// [`early_index_bytes`]) are built as soon as its last piece is in, while the other tables
/// still load — as `pgcopydb` does: on a first copy they are most of the post-data time, which
/// otherwise starts only after the last table. The tables whose data is in queue up and are built
/// together, one such build at a time; one not started yet when the copy ends is left to the
/// post-data step, as is one whose early build failed (that step skips what was built and
/// reports a real error). One still under way when the copy ends is waited for, and meanwhile
/// the indexes and keys of every other table are built beside it (on the benchmark's reference
/// host the last big table's build ran ~2 s on one core of two, and the post-data step waited
/// for it); the post-data step then only adds what needs every index: foreign keys, triggers and
/// the rest.
async fn table_data(
    run: &Run<'_>,
    d: &PlanDatabase,
    work: &Work,
    sel: &Selections,
    snapshot: &str,
    fresh: bool,
    r: &mut UnitReport,
) -> Result<(u64, Built), UnitError> {
    let pieces = if fresh {
        fresh_pieces(run, d, &work.to_copy, snapshot).await?
    } else {
        delta_pieces(d, &work.deltas, snapshot)
    };
    r.ranges = pieces.len() as u64;
    let count = pieces.len();
    // Pieces left per table whose indexes are built early.
    let mut left: BTreeMap<TableRef, usize> = BTreeMap::new();
    if fresh {
        let big = early_index_bytes();
        for t in work
            .to_copy
            .iter()
            .filter(|t| t.info.estimated_bytes >= big)
        {
            left.insert(t.info.table.clone(), 0);
        }
        for (_, piece, _) in &pieces {
            if let Some(n) = piece_table(piece).and_then(|t| left.get_mut(&t)) {
                *n += 1;
            }
        }
    }
    let new_db = &d.on_new().to_string();
    let (ready, mut queue) = tokio::sync::mpsc::unbounded_channel::<TableRef>();
    // Set once every piece is in: a build not started by then is left to the post-data step,
    // where it runs beside the other entries instead of alone before them.
    let copied_all = std::sync::atomic::AtomicBool::new(false);
    let copy_ended = &copied_all;
    // The early build under way (its tables) and the tables built so far: when the copy ends
    // during a build, the other tables' builds start beside it. One task, never held across an
    // await.
    let builds = std::cell::RefCell::new((Vec::<TableRef>::new(), Vec::<TableRef>::new()));
    let builds = &builds;
    let copying = async move {
        let mut results: Vec<Result<PieceDone, UnitError>> = Vec::with_capacity(count);
        let mut copies =
            futures::stream::iter(pieces.into_iter().map(|(name, piece, total)| async move {
                let table = piece_table(&piece);
                let mut retried = Vec::new();
                let copied = transfer(
                    run,
                    &name,
                    read(read_request::What::DbTable(piece.clone())),
                    apply(apply_header::What::DbTable(DbTable {
                        database: new_db.clone(),
                        ..piece
                    })),
                    total,
                    &mut retried,
                )
                .await
                .map(|(res, _)| (res.bytes, res.files, retried));
                (table, copied)
            }))
            .buffer_unordered(PARALLEL_PIECES);
        while let Some((table, copied)) = copies.next().await {
            let last = results.len() + 1 == count;
            if copied.is_ok()
                && !last
                && let Some(t) = table
                && let Some(n) = left.get_mut(&t)
            {
                *n -= 1;
                if *n == 0 {
                    let _ = ready.send(t);
                }
            }
            results.push(copied);
        }
        copy_ended.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(ready);
        let (running, built) = builds.borrow().clone();
        if running.is_empty() || results.iter().any(Result::is_err) {
            return (results, None);
        }
        let skip: Vec<TableRef> = built.into_iter().chain(running).collect();
        let mut retried = Vec::new();
        let others = match build_indexes(
            run,
            d,
            sel,
            snapshot,
            Part::BuildsAllBut(&skip),
            &mut retried,
        )
        .await
        {
            Ok(()) => Some(skip),
            Err(e) => {
                run.progress.say(&format!(
                    "database {}: building the other tables' indexes failed ({e}); the post-data step builds them",
                    d.name
                ));
                retried.push(e);
                None
            }
        };
        (results, Some((others, retried)))
    };
    let building = async {
        let mut retried = Vec::new();
        while let Some(first) = queue.recv().await {
            if copied_all.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let mut batch = vec![first];
            while let Ok(t) = queue.try_recv() {
                batch.push(t);
            }
            builds.borrow_mut().0.clone_from(&batch);
            let result =
                build_indexes(run, d, sel, snapshot, Part::BuildOf(&batch), &mut retried).await;
            builds.borrow_mut().0.clear();
            match result {
                Ok(()) => builds.borrow_mut().1.extend(batch),
                Err(e) => {
                    run.progress.say(&format!(
                        "database {}: building the indexes of {} early failed ({e}); the post-data step builds them",
                        d.name,
                        names(&batch)
                    ));
                    retried.push(e);
                }
            }
        }
        retried
    };
    let ((results, others), build_retried) = tokio::join!(copying, building);
    let built = builds.take().1;
    let mut rows = 0u64;
    for res in results {
        let (bytes, n, retried) = res?;
        r.bytes += bytes;
        rows += n;
        r.retried.extend(retried);
    }
    r.retried.extend(build_retried);
    let mut all = false;
    if let Some((others, retried)) = others {
        r.retried.extend(retried);
        // Every build is in only when the one under way at the end succeeded too.
        all = others.is_some_and(|skip| skip.iter().all(|t| built.contains(t)));
    }
    Ok((rows, Built { tables: built, all }))
}

/// The index builds done while the data loaded.
#[derive(Debug, Default)]
struct Built {
    /// Tables whose indexes and key constraints were built.
    tables: Vec<TableRef>,
    /// True when every table's were (the others' beside the last early build): the post-data
    /// step then adds only what needs them all.
    all: bool,
}

/// Tables at least this big (the planner's estimate, bytes) get their indexes built as soon as
/// their data is in: 64 MiB, or `HOSTSHIFT_EARLY_INDEX_BYTES` when set (tests set 1 to build
/// every table's early; docs/sync.md). Each such build reads the post-data section on the old
/// host once more (`pg_dump --section=post-data`: 0.04 s on the benchmark's database) and is one
/// more round on the new host, so tables whose indexes take less than that to build wait for
/// the post-data step.
pub fn early_index_bytes() -> i64 {
    std::env::var("HOSTSHIFT_EARLY_INDEX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(64 * 1024 * 1024)
}

/// The order a first copy takes its tables in: those whose indexes are built early first,
/// smallest first, so their builds start soon and run beside the rest of the copy instead of
/// after it (a big table copied last would hold the post-data step back while its indexes
/// build, one table's builds mostly one at a time); then the others biggest first, so the copy
/// ends on small pieces.
fn copy_order(estimated_bytes: i64, early: i64) -> (bool, i64) {
    if estimated_bytes >= early {
        (false, estimated_bytes)
    } else {
        (true, -estimated_bytes)
    }
}

/// The table a piece copies.
fn piece_table(piece: &DbTable) -> Option<TableRef> {
    piece
        .table
        .as_ref()
        .and_then(|t| t.table.as_ref())
        .map(|t| TableRef::new(&t.schema, &t.table))
}

/// `a, b` of tables, for messages and journal units.
fn names(tables: &[TableRef]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Index builds while the data loads, from the post-data section of the old host's snapshot:
/// the indexes and key constraints of some tables whose data is in (`Part::BuildOf`), or of
/// every table but some (`Part::BuildsAllBut`: those built before or being built, beside the
/// early build still under way when the copy ended).
async fn build_indexes(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    snapshot: &str,
    part: Part<'_>,
    retried: &mut Vec<UnitError>,
) -> Result<(), UnitError> {
    let of = match part {
        Part::BuildOf(tables) => format!("indexes of {}", names(tables)),
        _ => "the other tables' indexes".to_string(),
    };
    let name = format!("database {} schema (post-data, {of})", d.name);
    apply_post_data(run, &name, sel, snapshot, part, retried).await
}

/// The sequences' positions, read in the snapshot and set on the new host.
async fn sequences(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    snapshot: &str,
) -> Result<(), UnitError> {
    let seqs = run
        .old
        .database()
        .sequences(DbReadRequest {
            selection: Some(sel.old.clone()),
            snapshot: snapshot.into(),
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner()
        .sequences;
    run.new
        .database()
        .set_sequences(SetSequencesRequest {
            database: d.on_new().to_string(),
            values: seqs,
        })
        .await
        .map_err(UnitError::from_status)?;
    Ok(())
}

/// The post-data section (indexes, constraints, triggers) from the old host's snapshot, but the
/// indexes and key constraints built while the data loaded (`built`: all of them, or those of
/// its tables). The new agent applies it entry by entry, two at a time, and skips an entry whose
/// object already exists, so completing an interrupted one is safe and nothing is built twice.
async fn post_data(
    run: &Run<'_>,
    unit: &str,
    sel: &Selections,
    snapshot: &str,
    built: &Built,
    retried: &mut Vec<UnitError>,
) -> Result<(), UnitError> {
    let name = format!("{unit} schema (post-data)");
    let part = if built.all {
        Part::AfterBuilds
    } else {
        Part::AllBut(&built.tables)
    };
    apply_post_data(run, &name, sel, snapshot, part, retried).await
}

/// Which entries of the post-data section an apply runs (the agent's `PostDataPart`).
#[derive(Clone, Copy, Debug)]
enum Part<'a> {
    /// The indexes and key constraints of these tables.
    BuildOf(&'a [TableRef]),
    /// Every entry but the indexes and key constraints of these tables (none: all of it).
    AllBut(&'a [TableRef]),
    /// The indexes and key constraints of every table but these.
    BuildsAllBut(&'a [TableRef]),
    /// Every entry but the indexes and key constraints.
    AfterBuilds,
}

/// Streams the post-data section of the old host's snapshot to the new host as journal unit
/// `name`, which applies `part` of it.
async fn apply_post_data(
    run: &Run<'_>,
    name: &str,
    sel: &Selections,
    snapshot: &str,
    part: Part<'_>,
    retried: &mut Vec<UnitError>,
) -> Result<(), UnitError> {
    let refs = |t: &[TableRef]| t.iter().map(|t| t.clone().into()).collect();
    let post = DbSchema {
        selection: Some(sel.old.clone()),
        section: "post-data".into(),
        snapshot: snapshot.into(),
        ..DbSchema::default()
    };
    let mut post_apply = DbSchema {
        selection: Some(sel.new.clone()),
        ..post.clone()
    };
    match part {
        Part::BuildOf(t) => post_apply.build_of = refs(t),
        Part::AllBut(t) => post_apply.all_but = refs(t),
        Part::BuildsAllBut(t) => {
            post_apply.all_but = refs(t);
            post_apply.builds_only = true;
        }
        Part::AfterBuilds => post_apply.after_builds = true,
    }
    transfer(
        run,
        name,
        read(read_request::What::DbSchema(post)),
        apply(apply_header::What::DbSchema(post_apply)),
        0,
        retried,
    )
    .await
    .map(|_| ())
}

/// Whether the latest sync that ran this database's post-data finished it (its journal unit's
/// last event is `done`): a later first sync (the new database recreated) killed in its
/// post-data is unfinished even though an older one finished.
fn post_data_done_before(run: &Run<'_>, unit: &str) -> bool {
    let name = format!("{unit} schema (post-data)");
    run.journal
        .path()
        .parent()
        .and_then(|dir| crate::journal::read(dir).ok())
        .is_some_and(|events| {
            events
                .iter()
                .rfind(|e| e.phase == "sync" && e.unit == name)
                .is_some_and(|e| e.status == "done")
        })
}

/// The pieces of a first copy: every table, big ones split into page or key ranges by the old
/// agent; in [`copy_order`].
async fn fresh_pieces(
    run: &Run<'_>,
    d: &PlanDatabase,
    to_copy: &[Table],
    snapshot: &str,
) -> Result<Vec<(String, DbTable, u64)>, UnitError> {
    let mut sorted = to_copy.to_vec();
    let early = early_index_bytes();
    sorted.sort_by_key(|t| copy_order(t.info.estimated_bytes, early));
    let mut pieces: Vec<(String, DbTable, u64)> = Vec::new();
    for t in &sorted {
        let split = if t.rows() as u64 > ROWS_PER_RANGE {
            delta::first_copy_split(&run.old, &d.name, &t.info, ROWS_PER_RANGE).await?
        } else {
            FirstCopySplit::Whole
        };
        let piece = |range: Option<KeyRange>, pages: Option<PageRange>| DbTable {
            database: d.name.clone(),
            table: t.description(),
            range: range.map(Into::into),
            pages: pages.map(Into::into),
            snapshot: snapshot.into(),
            // Tables are empty after pre-data.
            mode: "append".into(),
        };
        let split: Vec<DbTable> = match split {
            FirstCopySplit::Whole => Vec::new(),
            FirstCopySplit::Keys(ranges) => {
                ranges.into_iter().map(|r| piece(Some(r), None)).collect()
            }
            FirstCopySplit::Pages(pages) => {
                pages.into_iter().map(|p| piece(None, Some(p))).collect()
            }
        };
        let bytes = t.info.estimated_bytes.max(0) as u64;
        if split.is_empty() {
            pieces.push((format!("table {}", t.name), piece(None, None), bytes));
        } else {
            let n = split.len();
            for (i, p) in split.into_iter().enumerate() {
                pieces.push((
                    format!("table {} range {}/{n}", t.name, i + 1),
                    p,
                    bytes / n as u64,
                ));
            }
        }
    }
    Ok(pieces)
}

/// The pieces of a rerun: the differing ranges (or whole tables), each loaded by deleting the
/// range on the new host first, in the load's own transaction (TRUNCATE would be refused once
/// foreign keys exist).
fn delta_pieces(
    d: &PlanDatabase,
    deltas: &[(Table, Option<Vec<KeyRange>>)],
    snapshot: &str,
) -> Vec<(String, DbTable, u64)> {
    let mut pieces = Vec::new();
    for (t, ranges) in deltas {
        // No range: every row (deleted first, then loaded).
        let piece = |range: Option<&KeyRange>| DbTable {
            database: d.name.clone(),
            table: t.description(),
            range: range.filter(|r| !r.is_whole()).cloned().map(Into::into),
            pages: None,
            snapshot: snapshot.into(),
            mode: "delete-range".into(),
        };
        match ranges {
            None => pieces.push((format!("table {}", t.name), piece(None), 0)),
            Some(ranges) => {
                for r in ranges {
                    pieces.push((
                        format!("table {} keys {}", t.name, r.describe()),
                        piece(Some(r)),
                        0,
                    ));
                }
            }
        }
    }
    pieces
}

/// Refuses a rerun when the schema changed on either host since the first sync: the delta copies
/// rows, not definitions, and a changed table would load wrongly or not at all.
///
/// # Errors
/// [`super::ErrorKind::Refused`] naming each object that differs, or an agent failing.
pub(crate) async fn schema_unchanged(
    old: &crate::client::Agent,
    new: &crate::client::Agent,
    sel: &Selections,
) -> Result<(), UnitError> {
    let differ = schema_differences(old, new, sel).await?;
    if differ.is_empty() {
        return Ok(());
    }
    Err(UnitError {
        kind: super::ErrorKind::Refused,
        message: format!(
            "the schema of {} differs between the hosts ({}): apply the same change on the new host (or drop the new database and sync again from scratch)",
            sel.old.database,
            differ.join("; ")
        ),
    })
}

/// The objects whose definitions differ (`"table public.users changed"`, `"… only on old"`).
///
/// # Errors
/// An agent failing.
pub(crate) async fn schema_differences(
    old: &crate::client::Agent,
    new: &crate::client::Agent,
    sel: &Selections,
) -> Result<Vec<String>, UnitError> {
    let (mut a, mut b) = (old.database(), new.database());
    let (so, sn) = tokio::join!(
        a.schema_digest(sel.old.clone()),
        b.schema_digest(sel.new.clone())
    );
    let so = so.map_err(UnitError::from_status)?.into_inner().objects;
    let sn = sn.map_err(UnitError::from_status)?.into_inner().objects;
    let mut differ = Vec::new();
    for (k, v) in &so {
        match sn.get(k) {
            None => differ.push(format!("{k} only on old")),
            Some(w) if w != v => differ.push(format!("{k} changed")),
            _ => {}
        }
    }
    differ.extend(
        sn.keys()
            .filter(|k| !so.contains_key(*k))
            .map(|k| format!("{k} only on new")),
    );
    Ok(differ)
}

async fn large_objects(
    run: &Run<'_>,
    d: &PlanDatabase,
    sel: &Selections,
    tables: &[TableRef],
    snapshot: &str,
    fresh: bool,
    r: &mut UnitReport,
) -> Result<(), UnitError> {
    let metas = run
        .old
        .database()
        .large_objects(DbReadRequest {
            selection: Some(sel.old.clone()),
            snapshot: snapshot.into(),
        })
        .await
        .map_err(UnitError::from_status)?
        .into_inner()
        .objects;
    let differs: BTreeMap<u32, bool> = if fresh {
        metas.iter().map(|m| (m.oid, true)).collect()
    } else {
        // Only the large objects: every table excluded, so the agents scan no table data.
        let mut lo_only = sel.clone();
        for s in [&mut lo_only.old, &mut lo_only.new] {
            s.exclude
                .extend(tables.iter().map(|t| TablePattern::exact(t).to_string()));
        }
        let (fo, fn_) = fingerprints(&run.old, &run.new, &lo_only).await?;
        let (fo, fn_) = (fo.large_objects, fn_.large_objects);
        fo.iter()
            .map(|(k, v)| (*k, fn_.get(k) != Some(v)))
            .collect()
    };
    for m in metas {
        let oid = m.oid;
        if !differs.get(&oid).copied().unwrap_or(true) {
            continue;
        }
        let lo = DbLargeObject {
            database: d.name.clone(),
            oid,
            snapshot: snapshot.into(),
            meta: Some(m),
            rollback_window: String::new(),
        };
        let (res, _) = transfer(
            run,
            &format!("database {} large object {oid}", d.name),
            read(read_request::What::DbLargeObject(lo.clone())),
            apply(apply_header::What::DbLargeObject(DbLargeObject {
                database: d.on_new().to_string(),
                ..lo
            })),
            0,
            &mut r.retried,
        )
        .await?;
        r.bytes += res.bytes;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::copy_order;

    #[test]
    fn a_first_copy_takes_early_build_tables_smallest_first_then_the_rest_biggest_first() {
        let mut sizes = vec![10, 700, 50, 0, 200, 64];
        sizes.sort_by_key(|b| copy_order(*b, 64));
        assert_eq!(sizes, [64, 200, 700, 50, 10, 0]);
    }
}
