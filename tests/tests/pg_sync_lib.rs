//! The PostgreSQL sync library (`hostshift_agent::postgres`) between the rig's two real clusters,
//! without gRPC: each test wires source streams to target sinks directly, the way the agents'
//! service does over the network, and then reads both databases back.
//!
//! The source is always reached through a connection string with
//! `default_transaction_read_only=on`: any write the library attempted there would fail the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostshift::lab::seed;
use hostshift_agent::config::DatabaseConfig;
use hostshift_agent::postgres::{
    self as pg, Conn, ExportedSnapshot, GlobalsReport, KeyRange, LargeObjectSink, LoadMode,
    PgSyncError, SchemaBuffer, Section, Selection, SnapshotId, TableInfo, TableKind, TableRef,
    TableSink,
};
use hostshift_tests::rig::Sandbox;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

/// The two databases of a sandbox as the agents' configs would declare them.
struct Hosts {
    src: DatabaseConfig,
    dst: DatabaseConfig,
    bin_dir: PathBuf,
}

fn hosts(sb: &Sandbox) -> Hosts {
    Hosts {
        src: DatabaseConfig {
            name: "app".into(),
            conninfo: format!(
                "{} options='-c default_transaction_read_only=on'",
                sb.world.old_pg.conninfo(&sb.old_db)
            ),
            password_file: None,
            ca_file: None,
        },
        dst: DatabaseConfig {
            name: "app".into(),
            conninfo: sb.world.new_pg.conninfo(&sb.new_db),
            password_file: None,
            ca_file: None,
        },
        bin_dir: sb.world.old_pg.bin_dir.clone(),
    }
}

async fn connect(db: &DatabaseConfig) -> Conn {
    Conn::connect(db)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// What a sync did, for the assertions.
struct Synced {
    globals: GlobalsReport,
    tables: Vec<TableInfo>,
    /// Ranges per split table.
    ranges: BTreeMap<String, Vec<KeyRange>>,
    /// Table pieces (whole tables and key ranges) loaded.
    pieces: usize,
    /// Most table loads that were open at the same time.
    peak_concurrent_loads: usize,
    elapsed: Duration,
    /// Wall time of each step, in order.
    phases: Vec<(&'static str, Duration)>,
    bytes: u64,
}

/// Ends the current step: records its wall time under `name`.
fn mark(phases: &mut Vec<(&'static str, Duration)>, lap: &mut Instant, name: &'static str) {
    phases.push((name, lap.elapsed()));
    *lap = Instant::now();
}

/// Streams one schema section from the source into a buffer and applies it on the target.
async fn sync_section(h: &Hosts, dst: &Conn, section: Section, sel: &Selection, snap: &SnapshotId) {
    let stream = pg::dump_section(
        &h.src,
        &h.bin_dir,
        section,
        sel,
        Some(snap),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("start pg_dump {section:?}: {e}"));
    let mut stream = std::pin::pin!(stream);
    let mut buffer = SchemaBuffer::new(&h.dst.name, section);
    while let Some(chunk) = stream.next().await {
        buffer
            .push(&chunk.unwrap_or_else(|e| panic!("pg_dump {section:?}: {e}")))
            .expect("schema within the limit");
    }
    assert!(!buffer.is_empty(), "{section:?} is empty");
    buffer
        .apply(dst)
        .await
        .unwrap_or_else(|e| panic!("apply {section:?}: {e}"));
}

/// One table (or one key range of it): source stream → target sink → commit. All loads wait at
/// `barrier` once their sink is open, so they provably run at the same time.
async fn copy_piece(
    src: DatabaseConfig,
    dst: DatabaseConfig,
    table: TableInfo,
    range: Option<KeyRange>,
    snap: SnapshotId,
    barrier: Arc<Barrier>,
    open: Arc<(AtomicUsize, AtomicUsize)>,
) -> u64 {
    let mode = match &range {
        Some(r) => LoadMode::DeleteRange(r.clone()),
        None => LoadMode::Truncate,
    };
    let mut sink = TableSink::begin(connect(&dst).await, &table, mode)
        .await
        .unwrap_or_else(|e| panic!("begin the load of {}: {e}", table.table));
    let now = open.0.fetch_add(1, Ordering::SeqCst) + 1;
    open.1.fetch_max(now, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), barrier.wait())
        .await
        .unwrap_or_else(|_| panic!("loads blocked each other ({} waiting)", table.table));
    let stream = pg::copy_out(
        connect(&src).await,
        &table,
        range.clone().into(),
        Some(snap),
    );
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("copy out {}: {e}", table.table));
        sink.write(chunk)
            .await
            .unwrap_or_else(|e| panic!("copy in {}: {e}", table.table));
    }
    open.0.fetch_sub(1, Ordering::SeqCst);
    let loaded = sink
        .commit()
        .await
        .unwrap_or_else(|e| panic!("commit {} {range:?}: {e}", table.table));
    loaded.bytes
}

/// The whole flow of `hostshift_agent::postgres`, in its documented order. Tables with more than
/// `rows_per_range` rows are split into key ranges; every piece is loaded concurrently.
async fn sync(h: &Hosts, sel: &Selection, rows_per_range: u64) -> Synced {
    let started = Instant::now();
    let (mut phases, mut lap) = (Vec::new(), Instant::now());
    let src = Arc::new(connect(&h.src).await);
    let dst = connect(&h.dst).await;

    let snapshot = ExportedSnapshot::export(connect(&h.src).await)
        .await
        .expect("export a snapshot");
    let snap = snapshot.id().clone();

    let globals = pg::read_globals(&src).await.expect("read the roles");
    let globals = pg::apply_globals(&dst, &globals)
        .await
        .expect("apply the roles");
    mark(&mut phases, &mut lap, "snapshot and roles");

    sync_section(h, &dst, Section::PreData, sel, &snap).await;
    mark(&mut phases, &mut lap, "pre-data");

    let tables = pg::list_tables(&src, sel).await.expect("list the tables");
    let mut pieces = Vec::new();
    let mut ranges = BTreeMap::new();
    for t in &tables {
        let split = pg::split_ranges(&src, t, rows_per_range)
            .await
            .expect("split");
        if split.is_empty() {
            pieces.push((t.clone(), None));
        } else {
            pieces.extend(split.iter().map(|r| (t.clone(), Some(r.clone()))));
            ranges.insert(t.table.to_string(), split);
        }
    }
    let piece_count = pieces.len();
    let barrier = Arc::new(Barrier::new(piece_count));
    let open = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let loads: Vec<_> = pieces
        .into_iter()
        .map(|(t, r)| {
            tokio::spawn(copy_piece(
                h.src.clone(),
                h.dst.clone(),
                t,
                r,
                snap.clone(),
                barrier.clone(),
                open.clone(),
            ))
        })
        .collect();
    let mut bytes = 0;
    for load in loads {
        bytes += load.await.expect("a load panicked");
    }
    mark(&mut phases, &mut lap, "table data");

    sync_section(h, &dst, Section::PostData, sel, &snap).await;
    mark(&mut phases, &mut lap, "post-data");

    let sequences = pg::read_sequences(&src, sel, Some(&snap))
        .await
        .expect("read the sequences");
    pg::apply_sequences(&dst, &sequences)
        .await
        .expect("set the sequences");

    if sel.includes_large_objects() {
        for meta in pg::list_large_objects(&src, Some(&snap))
            .await
            .expect("list LOs")
        {
            let mut sink = LargeObjectSink::begin(connect(&h.dst).await, &meta)
                .await
                .unwrap_or_else(|e| panic!("begin LO {}: {e}", meta.oid));
            let stream = pg::read_large_object(src.clone(), meta.oid, Some(snap.clone()));
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap_or_else(|e| panic!("read LO {}: {e}", meta.oid));
                bytes += chunk.len() as u64;
                sink.write(&chunk).await.expect("write LO");
            }
            sink.commit().await.expect("commit LO");
        }
    }
    mark(&mut phases, &mut lap, "sequences and large objects");
    snapshot.release().await.expect("release the snapshot");
    Synced {
        globals,
        tables,
        ranges,
        pieces: piece_count,
        peak_concurrent_loads: open.1.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        phases,
        bytes,
    }
}

/// Rows of `sql` as text, for comparing both databases.
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Catalog facts that must be equal on both sides after a sync.
const SAME_ON_BOTH: [(&str, &str); 9] = [
    (
        "owners",
        "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1",
    ),
    (
        "table ACLs",
        "SELECT c.relname, c.relacl::text FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1",
    ),
    (
        "default privileges",
        "SELECT pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text FROM pg_default_acl ORDER BY 1, 2",
    ),
    (
        "schema ACL",
        "SELECT nspacl::text, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'",
    ),
    (
        "indexes",
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    ),
    (
        "constraints",
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    ),
    (
        "triggers",
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
    ),
    (
        "functions",
        "SELECT p.proname, pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f' AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1",
    ),
    (
        "extensions",
        "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_makes_the_target_equal_and_leaves_the_source_untouched() {
    let sb = Sandbox::new("pg_round_trip").await;
    let h = hosts(&sb);
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let old_admin = sb.world.old_pg.connect("postgres").await;
    let new_admin = sb.world.new_pg.connect("postgres").await;

    // A role only this database uses, with a password, attributes and a membership: it exists
    // on the old cluster only.
    let auditor = format!("auditor_{}", sb.old_db);
    old_admin
        .batch_execute(&format!(
            "CREATE ROLE \"{auditor}\" LOGIN PASSWORD 'audit-pw' CONNECTION LIMIT 3 VALID UNTIL '2031-01-01 00:00:00+00'; \
             GRANT app_ro TO \"{auditor}\";"
        ))
        .await
        .expect("create the auditor role");
    old.batch_execute(&format!("GRANT SELECT ON public.users TO \"{auditor}\""))
        .await
        .expect("grant to the auditor");
    let before = seed::content_digest(&old).await.expect("digest the source");

    let synced = sync(&h, &Selection::all(), 1000).await;
    eprintln!(
        "tiny seed round trip: {:?}, {} bytes of data, {} pieces at once",
        synced.elapsed, synced.bytes, synced.peak_concurrent_loads
    );
    // The steps ran in the order the module documents (indexes after the data).
    let order: Vec<&str> = synced.phases.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        order,
        [
            "snapshot and roles",
            "pre-data",
            "table data",
            "post-data",
            "sequences and large objects"
        ]
    );

    // The source did not change; and the guard is real: a write through the source's
    // connection string fails.
    let probe = connect(&h.src).await;
    let refused = probe
        .client()
        .batch_execute("CREATE TEMP TABLE probe (x int)")
        .await
        .expect_err("the source connection string must be read-only");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    assert_eq!(seed::content_digest(&old).await.expect("digest"), before);
    // The seed's own digest (rows in id order, sequences, large objects) agrees on the target.
    assert_eq!(
        seed::content_digest(&new).await.expect("digest the target"),
        before
    );

    // Parallel: every piece's load was open at once; the biggest table came in ≥ 2 ranges.
    let runs = &synced.ranges["public.project_evaluation_runs"];
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(synced.pieces, seed::TABLES.len() - 1 + runs.len());
    assert_eq!(synced.peak_concurrent_loads, synced.pieces);
    assert_eq!(synced.tables.len(), seed::TABLES.len());

    // Fingerprints: every table, every sequence, every large object.
    let src = connect(&h.src).await;
    let dst = connect(&h.dst).await;
    let all = Selection::all();
    let fp_old = pg::database_fingerprint(&src, &all)
        .await
        .expect("fingerprint old");
    let fp_new = pg::database_fingerprint(&dst, &all)
        .await
        .expect("fingerprint new");
    assert_eq!(fp_old.len(), seed::TABLES.len());
    assert_eq!(fp_old, fp_new);
    for table in seed::TABLES {
        let count: i64 = new
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(count, sb.world.seed.rows[table], "{table}");
        assert_eq!(
            fp_new[&TableRef::new("public", table)].rows,
            count,
            "{table}"
        );
    }
    let seqs = pg::sequence_fingerprint(&src, &all)
        .await
        .expect("sequences old");
    assert_eq!(seqs.len(), seed::TABLES.len());
    assert_eq!(
        seqs,
        pg::sequence_fingerprint(&dst, &all)
            .await
            .expect("sequences new")
    );
    let los = pg::large_object_fingerprint(&src).await.expect("LOs old");
    assert_eq!(
        los.keys().copied().collect::<Vec<_>>(),
        seed::LARGE_OBJECT_OIDS
    );
    assert_eq!(
        los,
        pg::large_object_fingerprint(&dst).await.expect("LOs new")
    );

    // Schema, ownership, grants, indexes, constraints, triggers, functions, extensions.
    for (what, sql) in SAME_ON_BOTH {
        let (a, b) = (rows(&old, sql).await, rows(&new, sql).await);
        assert!(!a.is_empty(), "{what}: nothing on the source");
        assert_eq!(a, b, "{what} differ");
    }
    let owners = rows(
        &new,
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
    )
    .await;
    assert_eq!(owners, vec![vec![Some("app".to_string())]]);
    let ro: bool = new
        .query_one(
            "SELECT has_table_privilege('app_ro', 'public.project_submissions', 'SELECT')",
            &[],
        )
        .await
        .expect("privilege")
        .get(0);
    assert!(ro, "app_ro lost its SELECT grant");
    if sb.world.seed.pgcrypto {
        let sha = rows(&new, "SELECT encode(public.digest('abc', 'sha256'), 'hex')").await;
        assert_eq!(
            sha[0][0].as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    // nextval continues after the source's position (checked before anything below takes a value).
    for table in seed::TABLES {
        let seq_sql = format!("SELECT pg_get_serial_sequence('public.{table}', 'id')");
        let seq: String = old
            .query_one(&seq_sql, &[])
            .await
            .expect("sequence name")
            .get(0);
        let last: i64 = old
            .query_one(&format!("SELECT last_value FROM {seq}"), &[])
            .await
            .expect("source position")
            .get(0);
        let next: i64 = new
            .query_one(&format!("SELECT nextval('{seq}')"), &[])
            .await
            .expect("nextval on the target")
            .get(0);
        assert_eq!(next, last + 1, "{seq}");
    }

    // The view answers the same; the trigger function runs; foreign keys are enforced again.
    let view = "SELECT count(*), sum(answered), sum(correct), sum(total_score), sum(best_project_score) FROM assessment_scores";
    assert_eq!(rows(&old, view).await, rows(&new, view).await);
    let touched: bool = new
        .query_one("UPDATE users SET display_name = 'Moved' WHERE id = 1 RETURNING updated_at > now() - interval '1 minute'", &[])
        .await
        .expect("update through the trigger")
        .get(0);
    assert!(
        touched,
        "the touch_updated_at trigger did not fire on the target"
    );
    let dangling = new
        .execute("INSERT INTO assessments (user_id, question_id, answer, is_correct) VALUES (999999, 1, '{}', false)", &[])
        .await
        .expect_err("a dangling user_id must be refused");
    assert_eq!(
        dangling.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );

    // Large objects: byte-equal, same owner and ACL.
    for oid in seed::LARGE_OBJECT_OIDS {
        let sql = format!(
            "SELECT encode(lo_get({oid}), 'hex'), pg_get_userbyid(lomowner), lomacl::text \
             FROM pg_largeobject_metadata WHERE oid = {oid}"
        );
        let a = rows(&old, &sql).await;
        assert_eq!(a.len(), 1, "LO {oid} on the source");
        assert_eq!(a, rows(&new, &sql).await, "large object {oid}");
    }

    // Roles: the auditor arrived with its password hash, attributes and membership (compared
    // below); the existing app roles were kept; the target's own superuser was not touched. Roles
    // belong to the cluster, not to a database, and the other tests of this binary sync their
    // globals from the same old cluster at the same time: one of them may have carried the
    // auditor over first, and then this sync finds it and aligns it ("altered").
    assert!(
        synced.globals.created.contains(&auditor) || synced.globals.altered.contains(&auditor),
        "{:?}",
        synced.globals
    );
    // `app` exists on both clusters: found, not created, not left alone (altered only where its
    // attributes differ).
    let app = "app".to_string();
    assert!(
        !synced.globals.created.contains(&app)
            && !synced.globals.skipped.iter().any(|(r, _)| r == &app),
        "{:?}",
        synced.globals
    );
    let role_sql = format!(
        "SELECT a.rolpassword, a.rolcanlogin, a.rolconnlimit, a.rolvaliduntil, \
                pg_has_role(a.oid, 'app_ro', 'MEMBER') \
         FROM pg_authid a WHERE a.rolname = '{auditor}'"
    );
    let role_old = rows(&old_admin, &role_sql).await;
    assert!(
        role_old[0][0]
            .as_deref()
            .is_some_and(|p| p.starts_with("SCRAM-SHA-256$"))
    );
    assert_eq!(role_old, rows(&new_admin, &role_sql).await);
    let granted: bool = new
        .query_one(
            &format!("SELECT has_table_privilege('{auditor}', 'public.users', 'SELECT')"),
            &[],
        )
        .await
        .expect("privilege")
        .get(0);
    assert!(granted);

    // A single changed row on the target changes its table's fingerprint, and only its range's
    // (compared with the target as it is now: the trigger check above changed a user).
    let fp_now = pg::database_fingerprint(&dst, &all)
        .await
        .expect("fingerprint new");
    new.batch_execute(
        "UPDATE project_evaluation_runs SET duration_ms = duration_ms + 1 WHERE id = 7",
    )
    .await
    .expect("change one row");
    let changed = pg::database_fingerprint(&dst, &all)
        .await
        .expect("fingerprint new");
    let differing: Vec<String> = fp_now
        .keys()
        .filter(|k| fp_now[*k] != changed[*k])
        .map(ToString::to_string)
        .collect();
    assert_eq!(differing, ["public.project_evaluation_runs"]);
    let runs_ref = TableRef::new("public", "project_evaluation_runs");
    assert_eq!(changed[&runs_ref].rows, fp_old[&runs_ref].rows);
    let runs_table = synced
        .tables
        .iter()
        .find(|t| t.table.table == "project_evaluation_runs")
        .expect("listed");
    let mut differing_ranges = Vec::new();
    for r in runs {
        let a = pg::table_fingerprint(&src, runs_table, Some(r), None)
            .await
            .expect("range old");
        let b = pg::table_fingerprint(&dst, runs_table, Some(r), None)
            .await
            .expect("range new");
        if a != b {
            differing_ranges.push(r.clone());
        }
    }
    assert_eq!(differing_ranges.len(), 1, "{differing_ranges:?}");
    assert!(
        differing_ranges[0].lo.is_none_or(|lo| lo <= 7)
            && differing_ranges[0].hi.is_none_or(|hi| 7 < hi)
    );
}

#[tokio::test]
async fn include_patterns_copy_only_those_tables_with_the_functions_they_use() {
    let sb = Sandbox::new("pg_include").await;
    let h = hosts(&sb);
    let src = connect(&h.src).await;
    let nothing = Selection::new(&["public.no_such_*"], &[]).expect("valid");
    let e = pg::dump_args(&src, &nothing)
        .await
        .expect_err("selects nothing");
    assert!(matches!(e, PgSyncError::InvalidSelection { .. }), "{e}");

    let sel = Selection::new(&["public.users", "public.question?"], &[]).expect("valid");
    let synced = sync(&h, &sel, 1000).await;
    let names: Vec<String> = synced.tables.iter().map(|t| t.table.to_string()).collect();
    assert_eq!(names, ["public.questions", "public.users"]);

    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let relations = rows(
        &new,
        "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace \
         AND relkind IN ('r', 'v', 'S') ORDER BY 1",
    )
    .await;
    let expected: Vec<Vec<Option<String>>> = [
        ("questions", "r"),
        ("questions_id_seq", "S"),
        ("users", "r"),
        ("users_id_seq", "S"),
    ]
    .iter()
    .map(|(n, k)| vec![Some(n.to_string()), Some(k.to_string())])
    .collect();
    assert_eq!(relations, expected);
    let dst = connect(&h.dst).await;
    let fp = pg::database_fingerprint(&src, &sel).await.expect("old");
    assert_eq!(fp.len(), 2);
    assert_eq!(fp, pg::database_fingerprint(&dst, &sel).await.expect("new"));
    assert_eq!(
        pg::sequence_fingerprint(&src, &sel).await.expect("old"),
        pg::sequence_fingerprint(&dst, &sel).await.expect("new")
    );
    // The trigger function came with the table although no pattern names it.
    let touched: bool = new
        .query_one("UPDATE users SET display_name = 'Moved' WHERE id = 1 RETURNING updated_at > now() - interval '1 minute'", &[])
        .await
        .expect("update through the trigger")
        .get(0);
    assert!(touched);
    // An include list leaves large objects out, as pg_dump does.
    assert!(
        pg::large_object_fingerprint(&dst)
            .await
            .expect("LOs")
            .is_empty()
    );
}

/// `plan check` and the agent parse table patterns with one parser, so they agree on every
/// pattern: a plan that passes is never refused by an agent for its patterns, and a pattern the
/// agent would refuse is caught by `plan check` with its line.
#[test]
fn plan_check_and_the_agent_accept_and_refuse_the_same_table_patterns() {
    use hostshift::plan::{Plan, template::TEMPLATE};
    use hostshift_shared::tomlpos::Located;
    let path = std::path::Path::new("/nonexistent-dir/plan.toml");
    for pattern in [
        "public.users",
        "public.*",
        "audit_*.log_?",
        "My Schema.my table",
        "users",
        ".users",
        "public.",
        "\"public\".users",
        "public.a.b",
        "public. users",
        "public.users ",
    ] {
        let text = TEMPLATE.replace(
            "# include = [\"public.*\"]",
            &format!("include = [{}]", toml::Value::String(pattern.into())),
        );
        assert_ne!(text, TEMPLATE, "the template has the include line");
        let plan_refuses = match Plan::from_located(&Located::from_source(path, text)) {
            Ok(_) => false,
            Err(problems) => problems.0.iter().any(|p| p.key == "databases.0.include.0"),
        };
        let agent_refuses = Selection::new(&[pattern], &[]).is_err();
        assert_eq!(
            plan_refuses, agent_refuses,
            "{pattern:?}: plan check refuses: {plan_refuses}, the agent refuses: {agent_refuses}"
        );
    }
}

/// Applies the source's pre-data schema to the target and loads one table, committed.
/// The description of one table of the source, as the agent lists it.
async fn listed(src: &Conn, table: &str) -> TableInfo {
    pg::list_tables(src, &Selection::new(&[table], &[]).expect("valid"))
        .await
        .expect("list")
        .pop()
        .unwrap_or_else(|| panic!("{table} listed"))
}

async fn target_with_questions(h: &Hosts) -> (Conn, TableInfo) {
    let dst = connect(&h.dst).await;
    let snapshot = ExportedSnapshot::export(connect(&h.src).await)
        .await
        .expect("snapshot");
    let all = Selection::all();
    sync_section(h, &dst, Section::PreData, &all, snapshot.id()).await;
    let src = connect(&h.src).await;
    let questions = listed(&src, "public.questions").await;
    let mut sink = TableSink::begin(connect(&h.dst).await, &questions, LoadMode::Append)
        .await
        .expect("begin");
    let mut stream = std::pin::pin!(pg::copy_out(
        src,
        &questions,
        pg::Rows::All,
        Some(snapshot.id().clone())
    ));
    while let Some(chunk) = stream.next().await {
        sink.write(chunk.expect("copy out")).await.expect("write");
    }
    sink.commit().await.expect("commit");
    (dst, questions)
}

#[tokio::test]
async fn a_table_load_that_is_not_committed_leaves_the_target_table_as_it_was() {
    let sb = Sandbox::new("pg_sink_rollback").await;
    let h = hosts(&sb);
    let (dst, questions) = target_with_questions(&h).await;
    let before = pg::table_fingerprint(&dst, &questions, None, None)
        .await
        .expect("fingerprint");
    assert_eq!(before.rows, sb.world.seed.rows["questions"]);
    let first_rows = KeyRange {
        column: "id".into(),
        lo: None,
        hi: Some(6),
    };

    // Dropped: TRUNCATE and a partial load, then the sink goes away without commit.
    let mut sink = TableSink::begin(connect(&h.dst).await, &questions, LoadMode::Truncate)
        .await
        .expect("begin");
    let src = connect(&h.src).await;
    let mut part = std::pin::pin!(pg::copy_out(
        &src,
        &questions,
        Some(first_rows.clone()).into(),
        None
    ));
    while let Some(chunk) = part.next().await {
        sink.write(chunk.expect("copy out")).await.expect("write");
    }
    assert!(sink.bytes() > 0);
    drop(sink);
    let after_drop = pg::table_fingerprint(&dst, &questions, None, None)
        .await
        .expect("fingerprint");
    assert_eq!(after_drop, before, "a dropped sink changed the table");

    // Rolled back: the range's rows are deleted inside the load; other sessions never see it.
    let sink = TableSink::begin(
        connect(&h.dst).await,
        &questions,
        LoadMode::DeleteRange(first_rows),
    )
    .await
    .expect("begin");
    let during = pg::table_fingerprint(&dst, &questions, None, None)
        .await
        .expect("fingerprint");
    assert_eq!(during, before, "an uncommitted load is visible");
    sink.rollback().await.expect("rollback");
    let after = pg::table_fingerprint(&dst, &questions, None, None)
        .await
        .expect("fingerprint");
    assert_eq!(after, before, "a rolled-back sink changed the table");
}

#[tokio::test]
async fn loading_as_a_non_superuser_is_refused_naming_what_it_needs() {
    let sb = Sandbox::new("pg_sink_not_superuser").await;
    let h = hosts(&sb);
    let (_dst, questions) = target_with_questions(&h).await;
    let as_app = DatabaseConfig {
        name: "app".into(),
        conninfo: sb
            .world
            .new_pg
            .conninfo(&sb.new_db)
            .replace("user=postgres", "user=app"),
        password_file: None,
        ca_file: None,
    };
    let Err(e) = TableSink::begin(connect(&as_app).await, &questions, LoadMode::Append).await
    else {
        panic!("a load as a plain role must be refused");
    };
    assert!(
        e.to_string().contains("needs a superuser") && e.to_string().contains("42501"),
        "{e}"
    );
    assert!(matches!(
        hostshift_agent::error::AgentError::from(e),
        hostshift_agent::error::AgentError::FailedPrecondition(_)
    ));
}

#[tokio::test]
async fn a_schema_section_that_fails_half_way_leaves_nothing_behind() {
    let sb = Sandbox::new("pg_schema_atomic").await;
    let h = hosts(&sb);
    let dst = connect(&h.dst).await;
    let stream = pg::dump_section(
        &h.src,
        &h.bin_dir,
        Section::PreData,
        &Selection::all(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("pg_dump");
    let mut stream = std::pin::pin!(stream);
    let mut buffer = SchemaBuffer::new("app", Section::PreData);
    while let Some(chunk) = stream.next().await {
        buffer.push(&chunk.expect("chunk")).expect("push");
    }
    buffer
        .push(b"\nCREATE TABLE public.users (id int);\n")
        .expect("push");
    let e = buffer.apply(&dst).await.expect_err("users exists twice");
    assert!(
        matches!(&e, PgSyncError::Query { code: Some(c), .. } if c == "42P07"),
        "{e}"
    );
    let relations: i64 = dst
        .client()
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(relations, 0, "a failed schema apply left relations behind");
    // The session is usable again (no transaction left open).
    dst.client()
        .batch_execute("SELECT 1")
        .await
        .expect("session usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_generated_columns_user_types_and_exclusions_round_trip() {
    let sb = Sandbox::new("pg_extras").await;
    let h = hosts(&sb);
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    // Types created on the target first move its OID counter: the source's user-defined types
    // then surely get other OIDs there, which binary COPY of arrays and composites carries.
    new.batch_execute(
        "CREATE SCHEMA filler; CREATE TYPE filler.a AS ENUM ('x'); CREATE TYPE filler.b AS (x int)",
    )
    .await
    .expect("move the target's OID counter");
    old.batch_execute(
        r#"
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TYPE reading AS (value numeric, feeling mood);
        CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, moods mood[] NOT NULL, note text,
                             last reading, history reading[],
                             PRIMARY KEY (id)) PARTITION BY RANGE (id);
        CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (300);
        CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (300) TO (MAXVALUE);
        INSERT INTO events
        SELECT i, date '2026-01-01' + i, ARRAY['ok', 'happy']::mood[],
               CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'note ' || i END,
               ROW(i / 7.0, 'sad')::reading, ARRAY[ROW(i, 'ok')::reading, NULL]
        FROM generate_series(1, 1000) AS i;
        CREATE TABLE grants_log (id int PRIMARY KEY, acl aclitem[] NOT NULL);
        INSERT INTO grants_log SELECT i, ARRAY['app=r/postgres'::aclitem] FROM generate_series(1, 20) AS i;
        CREATE TABLE measurements (
            id serial PRIMARY KEY, celsius numeric NOT NULL,
            fahrenheit numeric GENERATED ALWAYS AS (celsius * 9 / 5 + 32) STORED,
            taken timestamptz NOT NULL, took interval, raw bytea, ratio float8, price money);
        INSERT INTO measurements (celsius, taken, took, raw, ratio, price)
        SELECT i / 10.0, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 hour',
               i * interval '61 seconds', decode(md5(i::text), 'hex'), 1.0 / i, i * 1.25
        FROM generate_series(1, 300) AS i;
        CREATE TABLE "Mixed Case" ("Key" int PRIMARY KEY, "v""q" text);
        INSERT INTO "Mixed Case" SELECT i, 'q"' || i FROM generate_series(1, 10) AS i;
        CREATE TABLE no_key (a text, b int);
        INSERT INTO no_key SELECT md5(i::text), i FROM generate_series(1, 50) AS i;
        CREATE TABLE excluded_log (id int, line text);
        INSERT INTO excluded_log SELECT i, 'line' FROM generate_series(1, 5) AS i;
        "#,
    )
    .await
    .expect("create the extra tables");
    let sel = Selection::new(&[] as &[&str], &["public.excluded_*"]).expect("valid");
    let src = connect(&h.src).await;
    let before = pg::database_fingerprint(&src, &Selection::all())
        .await
        .expect("fingerprint");

    let synced = sync(&h, &sel, 400).await;

    let listed: BTreeMap<String, &TableInfo> = synced
        .tables
        .iter()
        .map(|t| (t.table.to_string(), t))
        .collect();
    assert!(!listed.contains_key("public.excluded_log"));
    assert!(
        !listed.contains_key("public.events_low"),
        "partitions are copied through their parent"
    );
    let events = listed["public.events"];
    assert_eq!(events.kind, TableKind::Partitioned);
    assert_eq!(events.format, pg::CopyFormat::Binary);
    assert_eq!(
        listed["public.grants_log"].format,
        pg::CopyFormat::Text,
        "aclitem has no binary I/O"
    );
    assert!(
        synced.ranges["public.events"].len() >= 2,
        "{:?}",
        synced.ranges
    );
    assert!(
        !listed["public.measurements"]
            .columns
            .contains(&"fahrenheit".to_string())
    );
    assert_eq!(listed["public.measurements"].format, pg::CopyFormat::Binary);
    assert!(listed["public.no_key"].int_key.is_none());

    let dst = connect(&h.dst).await;
    let fp_old = pg::database_fingerprint(&src, &sel)
        .await
        .expect("fingerprint old");
    assert_eq!(fp_old.len(), seed::TABLES.len() + 5);
    assert_eq!(
        fp_old,
        pg::database_fingerprint(&dst, &sel)
            .await
            .expect("fingerprint new")
    );
    assert_eq!(
        pg::sequence_fingerprint(&src, &sel).await.expect("old"),
        pg::sequence_fingerprint(&dst, &sel).await.expect("new")
    );
    let oids = "SELECT 'public.mood'::regtype::oid, 'public.reading'::regtype::oid";
    let (a, b) = (rows(&old, oids).await, rows(&new, oids).await);
    assert_ne!(
        a[0][0], b[0][0],
        "the enum's OIDs must differ for the binary copy to prove anything"
    );
    assert_ne!(a[0][1], b[0][1]);
    for sql in [
        "SELECT count(*) FROM ONLY events_low",
        "SELECT count(*) FROM ONLY events_high",
        "SELECT sum(fahrenheit)::text, count(*) FILTER (WHERE note IS NULL), count(*) FILTER (WHERE note = '') FROM measurements, events WHERE measurements.id = events.id",
        "SELECT to_regclass('public.excluded_log') IS NULL",
        "SELECT (last).feeling, history[1], moods FROM events WHERE id = 7",
    ] {
        assert_eq!(rows(&old, sql).await.len(), 1);
        let (a, b) = (rows(&old, sql).await, rows(&new, sql).await);
        if sql.contains("excluded_log") {
            assert_eq!(
                b,
                vec![vec![Some("t".to_string())]],
                "excluded table was created"
            );
        } else {
            assert_eq!(a, b, "{sql}");
        }
    }
    // The source is as it was.
    assert_eq!(
        pg::database_fingerprint(&src, &Selection::all())
            .await
            .expect("fingerprint"),
        before
    );
}

#[tokio::test]
async fn fingerprints_ignore_row_order_but_see_null_versus_empty_and_a_microsecond() {
    let sb = Sandbox::new("pg_fingerprint").await;
    let h = hosts(&sb);
    let db = sb.world.new_pg.connect(&sb.new_db).await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, s text, at timestamptz);
         INSERT INTO a SELECT i, CASE WHEN i % 2 = 0 THEN '' END, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
         FROM generate_series(1, 100) AS i;
         CREATE TABLE b (LIKE a INCLUDING ALL);
         INSERT INTO b SELECT * FROM a ORDER BY id DESC;",
    )
    .await
    .expect("tables");
    let conn = connect(&h.dst).await;
    let tables = pg::list_tables(&conn, &Selection::all())
        .await
        .expect("list");
    let fp = |i: usize| {
        let t = tables[i].clone();
        let conn = &conn;
        async move {
            pg::table_fingerprint(conn, &t, None, None)
                .await
                .expect("fingerprint")
        }
    };
    let a = fp(0).await;
    assert_eq!(a, fp(1).await, "same rows, other order");
    assert_eq!(a.rows, 100);
    for (change, undo) in [
        (
            "UPDATE b SET s = NULL WHERE id = 2",
            "UPDATE b SET s = '' WHERE id = 2",
        ),
        (
            "UPDATE b SET at = at + interval '1 microsecond' WHERE id = 50",
            "UPDATE b SET at = at - interval '1 microsecond' WHERE id = 50",
        ),
        (
            "UPDATE b SET s = 'x', id = 101 WHERE id = 1",
            "UPDATE b SET s = NULL, id = 1 WHERE id = 101",
        ),
    ] {
        db.batch_execute(change).await.expect(change);
        assert_ne!(fp(1).await, a, "{change} went unnoticed");
        db.batch_execute(undo).await.expect(undo);
        assert_eq!(fp(1).await, a, "{undo}");
    }
    // A different TimeZone in the session does not change the fingerprint.
    conn.client()
        .batch_execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'")
        .await
        .expect("set");
    assert_eq!(fp(0).await, a);
}

/// Copies `rows` of `table` from the source in `snapshot` to nowhere: the bytes of `COPY`, or the
/// copy's error.
async fn copied(
    h: &Hosts,
    table: &TableInfo,
    rows: pg::Rows,
    snapshot: Option<&ExportedSnapshot>,
) -> Result<usize, PgSyncError> {
    let stream = pg::copy_out(
        connect(&h.src).await,
        table,
        rows,
        snapshot.map(|s| s.id().clone()),
    );
    let chunks: Vec<Result<_, PgSyncError>> = stream.collect().await;
    chunks
        .into_iter()
        .try_fold(0, |n, c| c.map(|c| n + c.len()))
}

#[tokio::test]
async fn a_page_piece_of_a_table_rewritten_since_its_split_is_refused() {
    let sb = Sandbox::new("pg_pages_rewritten").await;
    let h = hosts(&sb);
    let admin = sb.world.old_pg.connect(&sb.old_db).await;
    admin
        .batch_execute(
            "CREATE TABLE ledger AS SELECT g AS id, repeat('x', 40) AS pad
               FROM generate_series(1, 20000) g;
             ANALYZE ledger;",
        )
        .await
        .expect("a ledger");
    let src = connect(&h.src).await;
    let ledger = listed(&src, "public.ledger").await;
    // As a first copy does: the snapshot, then the split, then the pieces in the snapshot.
    let snapshot = ExportedSnapshot::export(connect(&h.src).await)
        .await
        .expect("snapshot");
    let pages = pg::split_pages(&src, &ledger, 5_000)
        .await
        .expect("split by pages");
    assert_eq!(pages.len(), 4, "{pages:?}");
    let first = copied(&h, &ledger, pg::Rows::Pages(pages[0]), Some(&snapshot))
        .await
        .expect("a piece of the table as split");
    assert!(first > 0);
    let outside = copied(&h, &ledger, pg::Rows::Pages(pages[0]), None).await;
    assert!(
        matches!(outside, Err(PgSyncError::InvalidInput { .. })),
        "a page range outside a snapshot: {outside:?}"
    );

    // An operator shrinks the table while the first copy runs: its rows move to other pages.
    admin
        .batch_execute("VACUUM FULL ledger")
        .await
        .expect("vacuum full");
    let err = match copied(&h, &ledger, pg::Rows::Pages(pages[1]), Some(&snapshot)).await {
        Ok(bytes) => panic!(
            "a piece of the rewritten table was read ({bytes} bytes): its rows are on other pages now"
        ),
        Err(e) => e,
    };
    assert!(matches!(err, PgSyncError::Rewritten { .. }), "{err:?}");
    assert!(!err.is_transient(), "retrying the same piece cannot help");
    assert!(err.to_string().contains("run sync again"), "{err}");
}

#[tokio::test]
async fn a_table_rewritten_after_the_snapshot_is_refused_not_copied_empty() {
    let sb = Sandbox::new("pg_rewritten_after_snapshot").await;
    let h = hosts(&sb);
    let admin = sb.world.old_pg.connect(&sb.old_db).await;
    admin
        .batch_execute(
            "CREATE TABLE journal AS SELECT g AS id, 'entry ' || g AS note
               FROM generate_series(1, 1000) g;
             CREATE TABLE ledger_p (id int, note text) PARTITION BY RANGE (id);
             CREATE TABLE ledger_p1 PARTITION OF ledger_p FOR VALUES FROM (1) TO (501);
             CREATE TABLE ledger_p2 PARTITION OF ledger_p FOR VALUES FROM (501) TO (1001);
             INSERT INTO ledger_p SELECT g, 'entry ' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .expect("a journal table and a partitioned one");
    let src = connect(&h.src).await;
    let journal = listed(&src, "public.journal").await;
    let ledger = listed(&src, "public.ledger_p").await;
    assert_eq!(ledger.kind, TableKind::Partitioned);
    let snapshot = ExportedSnapshot::export(connect(&h.src).await)
        .await
        .expect("snapshot");

    // A rewriting ALTER TABLE commits after the snapshot: not MVCC-safe, the snapshot would see
    // the table's new file empty.
    admin
        .batch_execute(
            "ALTER TABLE journal ADD COLUMN stamp float8 DEFAULT random();
             ALTER TABLE ledger_p ADD COLUMN stamp float8 DEFAULT random();",
        )
        .await
        .expect("rewrite");
    for table in [&journal, &ledger] {
        let err = match copied(&h, table, pg::Rows::All, Some(&snapshot)).await {
            Ok(bytes) => panic!(
                "{} was copied as {bytes} bytes of COPY after its rewrite (1000 rows are on the old host)",
                table.table
            ),
            Err(e) => e,
        };
        assert!(matches!(err, PgSyncError::Rewritten { .. }), "{err:?}");
        assert!(err.to_string().contains("run sync again"), "{err}");
    }
}
