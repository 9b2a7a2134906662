//! PostgreSQL streams: the source side reads (roles, schema sections, table data, large
//! objects) through [`crate::postgres`] and frames them; the target side verifies and applies,
//! committing a table load, a schema section or a large object only after the trailer matched.

use std::borrow::Borrow;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hostshift_proto::v1::{
    ApplyResult, DbGlobals, DbLargeObject, DbSchema, DbSelection, DbTable, Frame,
};
use hostshift_shared::framing::{Accepted, FrameDecoder, FrameEncoder, IntegrityError};
use tokio::sync::mpsc;
use tonic::Status;

use super::FRAME_QUEUE;
use super::source::{FrameRx, framed_bytes};
use crate::Ctx;
use crate::agent_info::pg_bin_dir;
use crate::database::wire;
use crate::error::AgentError;
use crate::postgres::schema::POST_DATA_PARALLELISM;
use crate::postgres::{
    self, Conn, KeyRange, LargeObjectSink, LoadMode, PageRange, PostDataPart, Rows, Section,
    Selection, SnapshotId, TableInfo, TableRef, TableSink,
};
use hostshift_shared::model::TableKind;

/// The selection of a request.
///
/// # Errors
/// `InvalidArgument` for a malformed pattern.
pub fn selection(s: &DbSelection) -> Result<Selection, AgentError> {
    if s.include.is_empty() && s.exclude.is_empty() {
        return Ok(Selection::all());
    }
    Ok(Selection::new(&s.include, &s.exclude)?)
}

fn snapshot(id: &str) -> Result<Option<SnapshotId>, AgentError> {
    if id.is_empty() {
        Ok(None)
    } else {
        Ok(Some(SnapshotId::parse(id)?))
    }
}

/// Frames a stream of byte chunks; an error in the stream becomes the stream's error status.
pub fn framed_stream<S, E>(ctx: &Ctx, stream: S) -> FrameRx
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<AgentError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let cancel = ctx.shutdown.child_token();
    ctx.tasks.spawn(async move {
        let mut enc = FrameEncoder::new();
        let mut stream = Box::pin(stream);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                () = cancel.cancelled() => {
                    let _ = tx.send(Err(AgentError::Cancelled.into())).await;
                    return;
                }
            };
            match next {
                Some(Ok(b)) => {
                    if tx.send(Ok(enc.chunk(b))).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(Status::from(e.into()))).await;
                    return;
                }
                None => {
                    let _ = tx.send(Ok(enc.trailer().0)).await;
                    return;
                }
            }
        }
    });
    rx
}

/// Source: the roles the database uses, as JSON.
///
/// # Errors
/// Undeclared database, connection or catalog errors.
pub async fn read_globals(ctx: &Arc<Ctx>, r: &DbGlobals) -> Result<FrameRx, AgentError> {
    let conn = Conn::connect(ctx.database(&r.database)?).await?;
    let g = postgres::read_globals(&conn).await?;
    let json =
        serde_json::to_vec(&g).map_err(|e| AgentError::Internal(format!("encode roles: {e}")))?;
    Ok(framed_bytes(json))
}

fn section(s: &str) -> Result<Section, AgentError> {
    match s {
        "pre-data" => Ok(Section::PreData),
        "post-data" => Ok(Section::PostData),
        other => Err(AgentError::InvalidArgument(format!(
            "schema section {other:?}: use pre-data or post-data"
        ))),
    }
}

/// Source: a schema section, straight from `pg_dump`. `allowed` is what the caller may read
/// ([`super::GrantStore::selection`]): when it narrows the database, it replaces the request's
/// selection (a peer cannot widen its grant).
///
/// # Errors
/// Undeclared database, bad selection, `pg_dump` missing.
pub async fn read_schema(
    ctx: &Arc<Ctx>,
    r: &DbSchema,
    allowed: &Selection,
) -> Result<FrameRx, AgentError> {
    let sel = r.selection.clone().unwrap_or_default();
    let db = ctx.database(&sel.database)?;
    let bin = pg_bin_dir(&ctx.config).ok_or_else(|| {
        AgentError::FailedPrecondition("pg_dump not found: install postgresql-client".into())
    })?;
    let snap = snapshot(&r.snapshot)?;
    let used = if allowed.is_all() {
        selection(&sel)?
    } else {
        allowed.clone()
    };
    let stream = postgres::dump_section(
        db,
        &bin,
        section(&r.section)?,
        &used,
        snap.as_ref(),
        ctx.shutdown.child_token(),
    )
    .await?;
    Ok(framed_stream(ctx, stream))
}

fn table_of(r: &DbTable) -> Result<(TableInfo, Rows), AgentError> {
    let table = wire::table(r.table.clone(), "table")?;
    let range = wire::range(r.range.clone(), "range")?;
    let rows = match (range, r.pages) {
        (range, None) => Rows::from(range),
        (None, Some(p)) => {
            let pages =
                PageRange::from_proto(p).map_err(|e| AgentError::from(e.within("pages")))?;
            pages_of_ordinary(&table)?;
            Rows::Pages(pages)
        }
        (Some(_), Some(_)) => {
            return Err(AgentError::InvalidArgument(format!(
                "table {}: a piece names a key range and a page range: at most one",
                table.table
            )));
        }
    };
    Ok((table, rows))
}

/// A page range reads an ordinary table only: a parent's page numbers would be read in each of
/// its partitions, giving rows twice or not at all.
fn pages_of_ordinary(table: &TableInfo) -> Result<(), AgentError> {
    if table.kind == TableKind::Ordinary {
        return Ok(());
    }
    Err(AgentError::InvalidArgument(format!(
        "table {}: a page range reads an ordinary table only (this one is partitioned)",
        table.table
    )))
}

/// Source: a table (or one key or page range of it) as `COPY` bytes. The requested table is
/// resolved against this agent's own catalog and `allowed` ([`postgres::readable_table`]): only
/// a user table the selection covers, and only columns it has, are ever read — whatever the
/// request's table description says.
///
/// # Errors
/// `PermissionDenied` naming the table or column; undeclared database, malformed request,
/// connection errors.
pub async fn read_table(
    ctx: &Arc<Ctx>,
    r: &DbTable,
    allowed: &Selection,
) -> Result<FrameRx, AgentError> {
    let (asked, rows) = table_of(r)?;
    let pooled = ctx.read_pool.take(ctx.database(&r.database)?).await?;
    let conn: &Conn = pooled.borrow();
    let key = match &rows {
        Rows::Keys(range) => Some(range),
        Rows::All | Rows::Pages(_) => None,
    };
    let table = postgres::readable_table(conn, allowed, &asked, key).await?;
    if matches!(rows, Rows::Pages(_)) {
        // As asked and as it is now (it may have been made partitioned since the split).
        pages_of_ordinary(&table)?;
    }
    // The session goes back to the pool once the read ended as it should (postgres::pool).
    Ok(framed_stream(
        ctx,
        postgres::copy_out(pooled, &table, rows, snapshot(&r.snapshot)?),
    ))
}

/// Source: one large object's bytes.
///
/// # Errors
/// Undeclared database, connection errors.
pub async fn read_large_object(ctx: &Arc<Ctx>, r: &DbLargeObject) -> Result<FrameRx, AgentError> {
    let conn = Conn::connect(ctx.database(&r.database)?).await?;
    Ok(framed_stream(
        ctx,
        postgres::read_large_object(conn, r.oid, snapshot(&r.snapshot)?),
    ))
}

/// The next verified chunk, `None` at a verified end.
async fn next_chunk<S>(frames: &mut S, dec: &mut FrameDecoder) -> Result<Option<Bytes>, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    match frames.next().await {
        None => Err(AgentError::DataLoss(
            IntegrityError::Truncated { got_len: dec.len() }.to_string(),
        )),
        Some(Err(s)) => Err(super::guard::upstream(s)),
        Some(Ok(f)) => match dec
            .accept(f)
            .map_err(|e| AgentError::DataLoss(e.to_string()))?
        {
            Accepted::Data(b) => Ok(Some(b)),
            Accepted::End { .. } => Ok(None),
        },
    }
}

/// Collects a small verified stream (roles JSON, a schema section) into memory.
async fn collect<S>(
    frames: &mut S,
    limit: usize,
    what: &str,
) -> Result<(Vec<u8>, FrameDecoder), AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(b) = next_chunk(frames, &mut dec).await? {
        if out.len() + b.len() > limit {
            return Err(AgentError::FailedPrecondition(format!(
                "{what} is larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&b);
    }
    Ok((out, dec))
}

fn result(dec: &FrameDecoder, files: u64) -> ApplyResult {
    ApplyResult {
        bytes: dec.len(),
        files,
        sha256: String::new(),
        changes: vec![],
        deferred: vec![],
    }
}

/// Target: create or update the roles.
///
/// # Errors
/// Permission, integrity, SQL errors (nothing half-applied: roles go in one transaction).
pub async fn apply_globals<S>(
    ctx: &Arc<Ctx>,
    r: &DbGlobals,
    mut frames: S,
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    let db = writable(ctx, &r.database)?;
    let (json, dec) = collect(&mut frames, super::MAX_INLINE, "the roles description").await?;
    let globals: postgres::Globals = serde_json::from_slice(&json)
        .map_err(|e| AgentError::InvalidArgument(format!("malformed roles: {e}")))?;
    let conn = Conn::connect(db).await?;
    let report = postgres::apply_globals(&conn, &globals).await?;
    let mut res = result(&dec, 0);
    res.changes = report
        .created
        .iter()
        .map(|r| format!("role {r} created"))
        .chain(report.altered.iter().map(|r| format!("role {r} updated")))
        .chain(
            report
                .skipped
                .iter()
                .map(|(r, why)| format!("role {r} left alone: {why}")),
        )
        .chain(report.session_memberships.iter().map(|r| {
            format!("role {r} granted to the connecting role (to own and load its objects)")
        }))
        .chain(report.notes.iter().cloned())
        .collect();
    Ok(res)
}

/// Target: apply a schema section — pre-data in one transaction; post-data entry by entry on
/// [`POST_DATA_PARALLELISM`] connections, skipping entries already in place (see
/// [`postgres::schema`]). `changes` says how many entries ran and which were already there.
///
/// # Errors
/// Permission, integrity, SQL errors (nothing applied for pre-data; for post-data the entries
/// applied before the failing one stay, and applying again completes the section).
pub async fn apply_schema<S>(
    ctx: &Arc<Ctx>,
    r: &DbSchema,
    mut frames: S,
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    let sel = r.selection.clone().unwrap_or_default();
    let db = writable(ctx, &sel.database)?;
    let section = section(&r.section)?;
    let mut buf = postgres::SchemaBuffer::new(&sel.database, section).part(post_data_part(r)?);
    let mut dec = FrameDecoder::new();
    while let Some(b) = next_chunk(&mut frames, &mut dec).await? {
        buf.push(&b)?;
    }
    let conns = if section == Section::PostData {
        connections(db, POST_DATA_PARALLELISM).await?
    } else {
        vec![Conn::connect(db).await?]
    };
    let applied = buf.apply_on(&conns).await?;
    let mut res = result(&dec, applied.applied as u64);
    if section == Section::PostData {
        res.changes.push(format!(
            "{} of {} post-data entries applied on {} connections, {} already in place",
            applied.applied,
            applied.entries,
            applied.connections,
            applied.already_present.len()
        ));
        res.changes.extend(
            applied
                .already_present
                .iter()
                .take(MAX_LISTED)
                .map(|e| format!("already in place: {e}")),
        );
    }
    Ok(res)
}

/// The part of the post-data section an apply runs (`build_of` / `all_but`, at most one;
/// `builds_only` with `all_but` or none; `after_builds` alone).
///
/// # Errors
/// `InvalidArgument` for any other combination.
fn post_data_part(r: &DbSchema) -> Result<PostDataPart, AgentError> {
    let tables = |t: &[hostshift_proto::v1::TableRef]| {
        t.iter()
            .map(|t| TableRef::new(&t.schema, &t.table))
            .collect::<Vec<_>>()
    };
    let refuse = |what: &str| {
        Err(AgentError::InvalidArgument(format!(
            "a post-data apply names {what}: `build_of` or `all_but` (at most one), `builds_only` only with `all_but`, `after_builds` alone"
        )))
    };
    match (
        r.build_of.is_empty(),
        r.all_but.is_empty(),
        r.builds_only,
        r.after_builds,
    ) {
        (true, true, false, false) => Ok(PostDataPart::Whole),
        (false, true, false, false) => Ok(PostDataPart::BuildOf(tables(&r.build_of))),
        (true, false, false, false) => Ok(PostDataPart::AllBut(tables(&r.all_but))),
        (true, _, true, false) => Ok(PostDataPart::BuildsAllBut(tables(&r.all_but))),
        (true, true, false, true) => Ok(PostDataPart::AfterBuilds),
        (false, false, ..) => refuse("both `build_of` and `all_but` tables"),
        (false, _, true, _) => refuse("`build_of` tables with `builds_only`"),
        _ => refuse("`after_builds` with other parts"),
    }
}

/// Entries named one by one in an apply's `changes` (the rest are only counted).
const MAX_LISTED: usize = 20;

/// Up to `n` connections to `db`: the first must succeed; fewer extra ones only cost speed (a
/// server near `max_connections`), so their failures are logged, not returned.
async fn connections(
    db: &crate::config::DatabaseConfig,
    n: usize,
) -> Result<Vec<Conn>, AgentError> {
    let mut all = futures::future::join_all((0..n.max(1)).map(|_| Conn::connect(db))).await;
    let first = all.remove(0)?;
    let mut conns = vec![first];
    for c in all {
        match c {
            Ok(c) => conns.push(c),
            Err(e) => {
                tracing::warn!(database = %db.name, error = %e, "one connection fewer for post-data")
            }
        }
    }
    Ok(conns)
}

/// Target: load a table (or range), committed only after the trailer matched.
///
/// # Errors
/// Permission, integrity, SQL errors (the load is rolled back then).
pub async fn apply_table<S>(
    ctx: &Arc<Ctx>,
    r: &DbTable,
    mut frames: S,
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    let db = writable(ctx, &r.database)?;
    let (table, rows) = table_of(r)?;
    let mode = match (r.mode.as_str(), rows) {
        ("truncate", _) => LoadMode::Truncate,
        ("append", _) => LoadMode::Append,
        ("delete-range", Rows::Keys(range)) => LoadMode::DeleteRange(range),
        // Every row: an unbounded range deletes them all, and works where TRUNCATE is refused
        // (tables other tables reference).
        ("delete-range", Rows::All) => LoadMode::DeleteRange(KeyRange {
            column: String::new(),
            lo: None,
            hi: None,
        }),
        ("delete-range", Rows::Pages(_)) => {
            return Err(AgentError::InvalidArgument(format!(
                "table {}: a page range names rows of the source only: delete-range needs a key range",
                table.table
            )));
        }
        (other, _) => return Err(AgentError::InvalidArgument(format!("load mode {other:?}"))),
    };
    let mut sink = TableSink::begin(Conn::connect(db).await?, &table, mode).await?;
    let mut dec = FrameDecoder::new();
    // Any error returns early and drops the sink: its connection closes and the load rolls back.
    while let Some(b) = next_chunk(&mut frames, &mut dec).await? {
        sink.write(b).await?;
    }
    let loaded = sink.commit().await?;
    tracing::info!(table = %table.table, rows = loaded.rows, bytes = dec.len(), "table loaded");
    Ok(result(&dec, loaded.rows))
}

/// Target: recreate one large object with its owner and ACL.
///
/// # Errors
/// Permission, integrity, SQL errors (rolled back then).
pub async fn apply_large_object<S>(
    ctx: &Arc<Ctx>,
    r: &DbLargeObject,
    mut frames: S,
) -> Result<ApplyResult, AgentError>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin + Send,
{
    let db = writable_in(ctx, &r.database, &r.rollback_window)?;
    let meta = wire::large_object_from_proto(r.meta.clone(), "meta")?;
    let mut sink = LargeObjectSink::begin(Conn::connect(db).await?, &meta).await?;
    let mut dec = FrameDecoder::new();
    while let Some(b) = next_chunk(&mut frames, &mut dec).await? {
        sink.write(&b).await?;
    }
    sink.commit().await?;
    Ok(result(&dec, 1))
}

/// A database this agent may write.
///
/// # Errors
/// `PermissionDenied` naming the key; `NotDeclared`.
pub fn writable<'a>(
    ctx: &'a Ctx,
    name: &str,
) -> Result<&'a crate::config::DatabaseConfig, AgentError> {
    writable_in(ctx, name, "")
}

/// [`writable`] for a rollback within the rollback window `window` (see
/// [`super::guard::require`]): also while this host is frozen.
///
/// # Errors
/// `PermissionDenied` naming the key; `NotDeclared`; `FailedPrecondition` when frozen outside
/// the window.
pub fn writable_in<'a>(
    ctx: &'a Ctx,
    name: &str,
    window: &str,
) -> Result<&'a crate::config::DatabaseConfig, AgentError> {
    super::guard::require(
        ctx,
        &ctx.config.allow.restore_databases,
        "restore_databases",
        "database",
        name,
        window,
    )?;
    ctx.database(name)
}

/// Unlinks the large objects `oids` that exist in `database` (a rollback within the window:
/// the ones the new host removed since the switch), in one read-write transaction. Returns
/// how many existed.
///
/// # Errors
/// Permission as [`writable_in`]; the server's refusal.
pub async fn remove_large_objects(
    ctx: &Arc<Ctx>,
    database: &str,
    oids: &[u32],
    window: &str,
) -> Result<u64, AgentError> {
    let db = writable_in(ctx, database, window)?;
    let conn = Conn::connect(db).await?;
    let n = postgres::remove_large_objects(&conn, oids).await?;
    tracing::info!(database, removed = n, "large objects unlinked");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(build_of: &[&str], all_but: &[&str], builds_only: bool, after: bool) -> DbSchema {
        let refs = |t: &[&str]| {
            t.iter()
                .map(|n| hostshift_proto::v1::TableRef {
                    schema: "public".into(),
                    table: (*n).into(),
                })
                .collect()
        };
        DbSchema {
            build_of: refs(build_of),
            all_but: refs(all_but),
            builds_only,
            after_builds: after,
            ..DbSchema::default()
        }
    }

    #[test]
    fn a_post_data_apply_names_one_part_and_mixed_requests_are_refused() {
        let t = || vec![TableRef::new("public", "t")];
        let ok = |r: DbSchema| post_data_part(&r).expect("a valid part");
        assert_eq!(ok(request(&[], &[], false, false)), PostDataPart::Whole);
        assert_eq!(
            ok(request(&["t"], &[], false, false)),
            PostDataPart::BuildOf(t())
        );
        assert_eq!(
            ok(request(&[], &["t"], false, false)),
            PostDataPart::AllBut(t())
        );
        assert_eq!(
            ok(request(&[], &["t"], true, false)),
            PostDataPart::BuildsAllBut(t())
        );
        assert_eq!(
            ok(request(&[], &[], true, false)),
            PostDataPart::BuildsAllBut(vec![])
        );
        assert_eq!(
            ok(request(&[], &[], false, true)),
            PostDataPart::AfterBuilds
        );
        for bad in [
            request(&["t"], &["t"], false, false),
            request(&["t"], &[], true, false),
            request(&[], &["t"], false, true),
            request(&[], &[], true, true),
            request(&["t"], &[], false, true),
        ] {
            let err = post_data_part(&bad).expect_err("a mixed request");
            assert!(
                matches!(err, AgentError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
        }
    }
}
