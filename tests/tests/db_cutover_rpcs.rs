//! The agent RPCs the cutover builds on, through real agents and the generated gRPC client, on the
//! rig's two real clusters: `RangeFingerprints` (a split table's ranges add up to the table, equal
//! on both hosts after a sync, and a one-row change shows in exactly its range), `SchemaDigest`
//! (equal after a sync across two clusters, and a change names exactly its table) and
//! `SetReadOnly` (the write freeze: new sessions cannot write, open ones are ended, the agent can
//! still read, the undo brings back exactly the earlier setting — also after an agent restart —
//! and only with the permit), and `FingerprintAt` (the tables as a held snapshot shows them,
//! whatever was written since: the cutover's proof after the switch).

use std::collections::BTreeMap;
use std::time::Duration;

use hostshift_agent::postgres::{KeyRange, TableInfo};
use hostshift_proto::v1::database_client::DatabaseClient;
use hostshift_proto::v1::{
    CloseSnapshotRequest, DbReadRequest, DbSelection, OpenSnapshotRequest, RangeFingerprint,
    RangeFingerprintsRequest, SetReadOnlyRequest, SetReadOnlyResponse, SplitRangesRequest,
    TableDescription,
};
use hostshift_shared::model::{DatabaseFingerprint, Fingerprint, PageRange, TableRef};
use hostshift_tests::rig::{AgentProc, AgentSetup, Sandbox};
use tokio_postgres::error::SqlState;
use tonic::transport::Channel;

/// No test may run longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(180);
/// Nor any single call.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The seeded table the range tests split (the biggest: 1200 rows at the tiny scale).
const RUNS: &str = "project_evaluation_runs";

/// Runs a test body with a deadline.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"));
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_LIMIT);
    r
}

async fn client(sb: &Sandbox, agent: &AgentProc) -> DatabaseClient<Channel> {
    DatabaseClient::new(agent.channel(&sb.world.certs_coordinator()).await)
}

fn app(include: &[&str]) -> DbSelection {
    DbSelection {
        database: "app".into(),
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: vec![],
    }
}

/// The table description, as the coordinator gets it from `Tables` (checked the coordinator's
/// way) and as the message itself.
async fn table(c: &mut DatabaseClient<Channel>, name: &str) -> (TableInfo, TableDescription) {
    let r = c
        .tables(request(app(&[&format!("public.{name}")])))
        .await
        .unwrap_or_else(|s| panic!("Tables: {s}"))
        .into_inner();
    assert_eq!(r.tables.len(), 1, "exactly public.{name}");
    let info = TableInfo::from_proto(r.tables[0].clone()).expect("a well-formed description");
    (info, r.tables[0].clone())
}

async fn range_fps(
    c: &mut DatabaseClient<Channel>,
    table: &TableDescription,
    ranges: &[KeyRange],
) -> Result<Vec<RangeFingerprint>, tonic::Status> {
    c.range_fingerprints(request(RangeFingerprintsRequest {
        database: "app".into(),
        table: Some(table.clone()),
        ranges: ranges.iter().cloned().map(Into::into).collect(),
        snapshot: String::new(),
    }))
    .await
    .map(|r| r.into_inner().ranges)
}

async fn schema(c: &mut DatabaseClient<Channel>, include: &[&str]) -> BTreeMap<String, String> {
    c.schema_digest(request(app(include)))
        .await
        .unwrap_or_else(|s| panic!("SchemaDigest: {s}"))
        .into_inner()
        .objects
        .into_iter()
        .collect()
}

/// Keys whose values differ, or that only one side has.
fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
}

// ---------------------------------------------------------------------------------------------
// FingerprintAt

/// The cutover holds a snapshot of the new host before traffic moves and proves it after the
/// switch: `FingerprintAt` must show the tables as they were at the snapshot however much was
/// written since, leave out sequences (not versioned), and refuse without a snapshot or with one
/// that is no longer held.
#[tokio::test]
async fn fingerprint_at_a_held_snapshot_ignores_later_writes_and_refuses_a_closed_one() {
    bounded(async {
        let mut sb = Sandbox::new("fp_at").await;
        sb.start(sb.old_setup(), sb.new_setup()).await;
        let mut c = client(&sb, sb.old()).await;
        let fp = |r: tonic::Response<hostshift_proto::v1::FingerprintResponse>| {
            DatabaseFingerprint::from_proto(r.into_inner()).expect("a well-formed answer")
        };
        let before = fp(c.fingerprint(request(app(&[]))).await.expect("Fingerprint"));
        let snapshot = c
            .open_snapshot(request(OpenSnapshotRequest {
                database: "app".into(),
                ttl_secs: 60,
                lease_secs: 60,
            }))
            .await
            .expect("OpenSnapshot")
            .into_inner()
            .snapshot;
        sb.world
            .old_pg
            .connect(&sb.old_db)
            .await
            .batch_execute(&format!(
                "UPDATE {RUNS} SET id = id WHERE id = (SELECT min(id) FROM {RUNS}); \
                 DELETE FROM {RUNS} WHERE id = (SELECT max(id) FROM {RUNS})"
            ))
            .await
            .expect("writes after the snapshot");
        let at = |snapshot: &str| DbReadRequest {
            selection: Some(app(&[])),
            snapshot: snapshot.into(),
        };
        let held = fp(c
            .fingerprint_at(request(at(&snapshot)))
            .await
            .expect("FingerprintAt"));
        assert_eq!(
            held.tables, before.tables,
            "the tables as the snapshot shows them"
        );
        assert!(held.sequences.is_empty(), "no sequences under a snapshot");
        let now = fp(c
            .fingerprint(request(app(&[])))
            .await
            .expect("Fingerprint now"));
        assert_ne!(
            now.tables[&TableRef::new("public", RUNS)],
            before.tables[&TableRef::new("public", RUNS)],
            "the write shows without the snapshot"
        );
        let e = c
            .fingerprint_at(request(at("")))
            .await
            .expect_err("no snapshot is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("needs a snapshot"), "{e:?}");
        c.close_snapshot(request(CloseSnapshotRequest {
            snapshot: snapshot.clone(),
        }))
        .await
        .expect("CloseSnapshot");
        let e = c
            .fingerprint_at(request(at(&snapshot)))
            .await
            .expect_err("a closed snapshot cannot be imported");
        assert!(
            e.message().contains("snapshot"),
            "the refusal names the snapshot: {e:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// RangeFingerprints

#[tokio::test]
async fn range_fingerprints_add_up_to_the_table_and_point_at_the_one_changed_range() {
    bounded(async {
        let mut sb = Sandbox::new("range_fps").await;
        sb.start(sb.old_setup(), sb.new_setup()).await;
        let mut old = client(&sb, sb.old()).await;
        let (info, table_msg) = table(&mut old, RUNS).await;
        assert_eq!(info.int_key.as_deref(), Some("id"));
        let db = sb.world.old_pg.connect(&sb.old_db).await;
        let count: i64 = db
            .query_one(&format!("SELECT count(*) FROM {RUNS}"), &[])
            .await
            .expect("count")
            .get(0);

        let ranges: Vec<KeyRange> = old
            .split_ranges(request(SplitRangesRequest {
                database: "app".into(),
                table: Some(table_msg.clone()),
                rows_per_range: (count / 5) as u64,
                by_pages: false,
            }))
            .await
            .expect("SplitRanges")
            .into_inner()
            .ranges
            .into_iter()
            .map(|m| KeyRange::from_proto(m).expect("a well-formed range"))
            .collect();
        KeyRange::check_cover(&ranges, "id", "ranges").expect("the split covers every key");
        assert!(ranges.len() >= 4, "a split into several ranges: {ranges:?}");

        let fps = range_fps(&mut old, &table_msg, &ranges)
            .await
            .expect("RangeFingerprints");
        assert_eq!(fps.len(), ranges.len(), "one entry per range");
        assert_eq!(fps.iter().map(|f| f.rows).sum::<i64>(), count);
        for (r, f) in ranges.iter().zip(&fps) {
            let row = db
                .query_one(
                    &format!(
                        "SELECT count(*), min(id)::int8, max(id)::int8 FROM {RUNS} WHERE {}",
                        r.predicate()
                    ),
                    &[],
                )
                .await
                .expect("range truth");
            assert_eq!(
                (f.rows, f.min_key, f.max_key),
                (row.get(0), row.get(1), row.get(2)),
                "{r}"
            );
            assert_eq!(f.digest.len(), 32, "{r}");
        }

        // By heap pages (a first copy's split): from page 0 to the table's end, every row in
        // exactly one range, each read by a TID range scan (no index).
        let split = old
            .split_ranges(request(SplitRangesRequest {
                database: "app".into(),
                table: Some(table_msg.clone()),
                rows_per_range: (count / 5) as u64,
                by_pages: true,
            }))
            .await
            .expect("SplitRanges by pages")
            .into_inner();
        assert!(split.ranges.is_empty(), "pages instead of key ranges");
        let pages = PageRange::cover_from_proto(split.pages, "pages").expect("pages that cover");
        assert!(
            pages.len() >= 4,
            "a split into several page ranges: {pages:?}"
        );
        let mut rows = 0;
        for p in &pages {
            let select = format!("SELECT * FROM {RUNS} WHERE {}", p.predicate());
            rows += db
                .query_one(&format!("SELECT count(*) FROM ({select}) s"), &[])
                .await
                .expect("page range truth")
                .get::<_, i64>(0);
            let plan: Vec<String> = db
                .query(&format!("EXPLAIN {select}"), &[])
                .await
                .expect("plan")
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(
                plan[0].starts_with("Tid Range Scan"),
                "{p} reads its pages alone: {plan:?}"
            );
        }
        assert_eq!(rows, count, "every row in exactly one page range");

        // No ranges = the whole table, with the digest the Fingerprint RPC gives for it.
        let whole = range_fps(&mut old, &table_msg, &[]).await.expect("whole");
        let fp = old
            .fingerprint(request(app(&[])))
            .await
            .expect("Fingerprint")
            .into_inner();
        let fp = DatabaseFingerprint::from_proto(fp).expect("a well-formed answer");
        let listed = &fp.tables[&TableRef::new("public", RUNS)];
        assert_eq!(whole.len(), 1);
        assert_eq!(Fingerprint::from(&whole[0]), *listed);
        let (min, max): (i64, i64) = {
            let r = db
                .query_one(&format!("SELECT min(id), max(id) FROM {RUNS}"), &[])
                .await
                .expect("bounds");
            (r.get(0), r.get(1))
        };
        assert_eq!((whole[0].min_key, whole[0].max_key), (Some(min), Some(max)));

        // Sub-ranges as a bisection asks for them: out of order, with gaps, one a single key.
        let one_key = fps[1].min_key.expect("range 1 has rows");
        let narrow = KeyRange {
            column: "id".into(),
            lo: Some(one_key),
            hi: Some(one_key + 1),
        };
        let asked = [ranges[3].clone(), narrow.clone(), ranges[0].clone()];
        let some = range_fps(&mut old, &table_msg, &asked).await.expect("gaps");
        assert_eq!(some[0], fps[3]);
        assert_eq!(some[2], fps[0]);
        assert_eq!(
            (some[1].rows, some[1].min_key, some[1].max_key),
            (1, Some(one_key), Some(one_key))
        );
        // Overlapping ranges are answered too (range 0 and the whole table).
        let unbounded = KeyRange {
            column: "id".into(),
            lo: None,
            hi: None,
        };
        let overlap = range_fps(&mut old, &table_msg, &[ranges[0].clone(), unbounded])
            .await
            .expect("overlap");
        assert_eq!(overlap[0], fps[0]);
        assert_eq!(
            (overlap[1].rows, &overlap[1].digest),
            (whole[0].rows, &whole[0].digest)
        );

        // After a sync the new host gives the same list.
        let out = sb.cli(&["sync", "--only", "db"]).await;
        assert_eq!(out.code, 0, "{}", out.both());
        let mut new = client(&sb, sb.new_agent()).await;
        let on_new = range_fps(&mut new, &table_msg, &ranges)
            .await
            .expect("new side");
        assert_eq!(on_new, fps, "equal ranges on both hosts after a sync");

        // One changed row on the old host: exactly its range differs.
        db.execute(
            &format!("UPDATE {RUNS} SET duration_ms = duration_ms + 1 WHERE id = $1"),
            &[&one_key],
        )
        .await
        .expect("update");
        let after = range_fps(&mut old, &table_msg, &ranges)
            .await
            .expect("after");
        let changed: Vec<usize> = (0..ranges.len())
            .filter(|&i| after[i] != on_new[i])
            .collect();
        assert_eq!(changed, vec![1], "only the range holding id {one_key}");
        assert_eq!(after[1].rows, on_new[1].rows, "same count, other content");
    })
    .await;
}

#[tokio::test]
async fn range_fingerprints_refuse_ranges_on_a_table_without_an_integer_key() {
    bounded(async {
        let mut sb = Sandbox::new("range_fps_nokey").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let (mut info, _) = table(&mut old, "users").await;
        info.int_key = None;
        let json = TableDescription::from(info);
        let r = KeyRange {
            column: "id".into(),
            lo: Some(1),
            hi: Some(10),
        };
        let e = range_fps(&mut old, &json, &[r])
            .await
            .expect_err("no key, no ranges");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("no single-column integer primary key"),
            "{}",
            e.message()
        );
        // Whole, it is fine.
        let whole = range_fps(&mut old, &json, &[]).await.expect("whole");
        assert_eq!(whole[0].rows, sb.world.seed.rows["users"]);
        assert_eq!((whole[0].min_key, whole[0].max_key), (None, None));
    })
    .await;
}

/// Asserts an `InvalidArgument` whose message names `field`.
fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let e = r.expect_err("malformed");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains(&format!("`{field}`")),
        "names {field}: {}",
        e.message()
    );
}

/// A request the agent cannot read is refused naming the field — never read with a default: a
/// range without its lower bound is not "unbounded below", a table of unknown kind is not
/// "ordinary".
#[tokio::test]
async fn a_malformed_request_is_refused_naming_the_field() {
    bounded(async {
        let mut sb = Sandbox::new("range_fps_malformed").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let (_, users) = table(&mut old, "users").await;
        let call = |table: Option<TableDescription>, ranges: Vec<hostshift_proto::v1::KeyRange>| {
            RangeFingerprintsRequest {
                database: "app".into(),
                table,
                ranges,
                snapshot: String::new(),
            }
        };

        let mut no_lo = hostshift_proto::v1::KeyRange::from(KeyRange {
            column: "id".into(),
            lo: Some(1),
            hi: Some(10),
        });
        no_lo.lo = None;
        refused(
            old.range_fingerprints(request(call(Some(users.clone()), vec![no_lo])))
                .await,
            "ranges[0].lo",
        );
        refused(
            old.range_fingerprints(request(call(
                Some(TableDescription {
                    kind: 9,
                    ..users.clone()
                }),
                vec![],
            )))
            .await,
            "table.kind",
        );
        refused(
            old.range_fingerprints(request(call(None, vec![]))).await,
            "table",
        );
        refused(
            old.split_ranges(request(SplitRangesRequest {
                database: "app".into(),
                table: Some(TableDescription {
                    table: None,
                    ..users
                }),
                rows_per_range: 10,
                by_pages: false,
            }))
            .await,
            "table.table",
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// SchemaDigest

#[tokio::test]
async fn schema_digests_are_equal_after_a_sync_and_a_change_names_exactly_its_table() {
    bounded(async {
        let mut sb = Sandbox::new("schema_digest").await;
        sb.start(sb.old_setup(), sb.new_setup()).await;
        let out = sb.cli(&["sync", "--only", "db"]).await;
        assert_eq!(out.code, 0, "{}", out.both());
        let mut old = client(&sb, sb.old()).await;
        let mut new = client(&sb, sb.new_agent()).await;

        let a = schema(&mut old, &[]).await;
        for key in [
            "table public.users",
            "table public.project_evaluation_runs",
            "view public.assessment_scores",
            "sequence public.users_id_seq",
            "function public.touch_updated_at()",
        ] {
            assert!(a.contains_key(key), "{key} in {:?}", a.keys());
        }
        assert!(
            !a.keys().any(|k| k.contains("pgp_sym_encrypt") || k.contains("gen_random")),
            "extension functions are not listed: {:?}",
            a.keys()
        );
        let b = schema(&mut new, &[]).await;
        assert_eq!(differing(&a, &b), Vec::<String>::new(), "same schema");

        let old_db = sb.world.old_pg.connect(&sb.old_db).await;
        old_db
            .batch_execute("ALTER TABLE questions ADD COLUMN difficulty integer")
            .await
            .expect("add column");
        let a = schema(&mut old, &[]).await;
        assert_eq!(differing(&a, &b), vec!["table public.questions".to_string()]);

        old_db
            .batch_execute("CREATE INDEX users_display_name_idx ON users (display_name)")
            .await
            .expect("index");
        let a = schema(&mut old, &[]).await;
        assert_eq!(
            differing(&a, &b),
            vec![
                "table public.questions".to_string(),
                "table public.users".to_string()
            ]
        );

        // A changed default, a changed type and a new constraint on the new side.
        let new_db = sb.world.new_pg.connect(&sb.new_db).await;
        new_db
            .batch_execute("ALTER TABLE assessments ALTER COLUMN score SET DEFAULT 1")
            .await
            .expect("default");
        new_db
            .batch_execute("ALTER TABLE project_submissions ALTER COLUMN repo_url TYPE varchar(500)")
            .await
            .expect("type");
        new_db
            .batch_execute(
                "ALTER TABLE project_assessments ADD CONSTRAINT title_not_empty CHECK (title <> '')",
            )
            .await
            .expect("constraint");
        let b = schema(&mut new, &[]).await;
        assert_eq!(
            differing(&a, &b),
            [
                "table public.assessments",
                "table public.project_assessments",
                "table public.project_submissions",
                "table public.questions",
                "table public.users",
            ]
            .map(String::from)
            .to_vec()
        );

        // The selection is respected: only the included table among the relations.
        let only = schema(&mut old, &["public.users"]).await;
        assert!(only.contains_key("table public.users"));
        assert!(!only.contains_key("table public.questions"), "{only:?}");
        assert!(only.contains_key("function public.touch_updated_at()"));
        assert_eq!(only["table public.users"], a["table public.users"]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// SetReadOnly

async fn set_read_only(
    c: &mut DatabaseClient<Channel>,
    read_only: bool,
    end_sessions: bool,
) -> Result<SetReadOnlyResponse, tonic::Status> {
    c.set_read_only(request(SetReadOnlyRequest {
        database: "app".into(),
        read_only,
        end_sessions,
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// A fresh session's write on the old database: `Ok`, or the SQLSTATE it failed with.
async fn try_write(sb: &Sandbox) -> Result<(), Option<SqlState>> {
    let db = sb.world.old_pg.connect(&sb.old_db).await;
    db.execute(
        "INSERT INTO users (email, display_name) VALUES ('freeze-' || gen_random_uuid() || '@x.test', 'F')",
        &[],
    )
    .await
    .map(|_| ())
    .map_err(|e| e.code().cloned())
}

/// The old database's own settings (`pg_db_role_setting`, all roles).
async fn db_settings(sb: &Sandbox) -> Vec<String> {
    let admin = sb.world.old_pg.connect("postgres").await;
    admin
        .query(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d
             ON d.oid = s.setdatabase WHERE d.datname = $1 AND s.setrole = 0",
            &[&sb.old_db],
        )
        .await
        .expect("settings")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Starts only the old agent.
async fn start_old(sb: &mut Sandbox, setup: &AgentSetup) {
    sb.old = Some(AgentProc::start(setup, &sb.dir, sb.world).await);
}

fn record(sb: &Sandbox) -> std::path::PathBuf {
    sb.dir.join("state-old/freeze/app.json")
}

#[tokio::test]
async fn a_freeze_stops_new_writes_ends_open_sessions_and_the_undo_restores_writes() {
    bounded(async {
        let mut sb = Sandbox::new("freeze").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let held = sb.world.old_pg.connect(&sb.old_db).await;
        held.query_one("SELECT 1", &[])
            .await
            .expect("open session works");
        assert_eq!(try_write(&sb).await, Ok(()), "writable before");
        // The agent's own sessions (here: the one holding an exported snapshot) are spared.
        let snapshot = old
            .open_snapshot(request(OpenSnapshotRequest {
                database: "app".into(),
                ttl_secs: 120,
                lease_secs: 120,
            }))
            .await
            .expect("OpenSnapshot")
            .into_inner()
            .snapshot;

        let r = set_read_only(&mut old, true, true).await.expect("freeze");
        assert!(r.changed && r.read_only, "{r:?}");
        assert!(r.sessions_ended >= 1, "the held session at least: {r:?}");
        assert!(record(&sb).is_file(), "the original is recorded");
        assert_eq!(
            db_settings(&sb).await,
            vec!["default_transaction_read_only=on"]
        );

        let e = held.query_one("SELECT 1", &[]).await;
        assert!(e.is_err(), "the session opened before the freeze was ended");
        assert_eq!(
            try_write(&sb).await,
            Err(Some(SqlState::READ_ONLY_SQL_TRANSACTION)),
            "a new session cannot write"
        );
        // The agent still reads (its own sessions are spared; reads need no writes).
        let fp = old
            .fingerprint(request(app(&[])))
            .await
            .expect("Fingerprint while frozen")
            .into_inner();
        let fp = DatabaseFingerprint::from_proto(fp).expect("a well-formed answer");
        assert_eq!(
            fp.tables[&TableRef::new("public", "users")].rows,
            sb.world.seed.rows["users"] + 1
        );
        let (_, users) = table(&mut old, "users").await;
        let on_snapshot = old
            .range_fingerprints(request(RangeFingerprintsRequest {
                database: "app".into(),
                table: Some(users),
                ranges: vec![],
                snapshot: snapshot.clone(),
            }))
            .await
            .expect("the agent's snapshot session survived the freeze")
            .into_inner();
        assert_eq!(on_snapshot.ranges[0].rows, sb.world.seed.rows["users"] + 1);
        old.close_snapshot(request(CloseSnapshotRequest { snapshot }))
            .await
            .expect("CloseSnapshot");

        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed && !r.read_only, "{r:?}");
        assert_eq!(try_write(&sb).await, Ok(()), "writable again");
        assert_eq!(db_settings(&sb).await, Vec::<String>::new(), "RESET");
        assert!(!record(&sb).exists(), "the record is gone");

        let r = set_read_only(&mut old, false, false)
            .await
            .expect("undo again");
        assert!(!r.changed && !r.read_only, "nothing to undo: {r:?}");
    })
    .await;
}

/// Writers busy on several sessions when the freeze comes: once `SetReadOnly` has returned, not
/// one more of their rows commits — the freeze waits until every ended session is gone, not only
/// signalled (the agent signals them all, then waits for them together).
#[tokio::test]
async fn once_the_freeze_returns_no_ended_session_commits_another_row() {
    bounded(async {
        let mut sb = Sandbox::new("freeze-busy").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let pg = sb.world.old_pg.clone();
                let db = sb.old_db.clone();
                tokio::spawn(async move {
                    let c = pg.connect(&db).await;
                    let mut n = 0u64;
                    loop {
                        let r = c
                            .execute(
                                "INSERT INTO users (email, display_name) VALUES ($1, 'busy')",
                                &[&format!("busy-{w}-{n}@x.test")],
                            )
                            .await;
                        if let Err(e) = r {
                            return (n, e.to_string());
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        // Spared by the freeze like the agent's own sessions (same role, same name): it counts
        // right when the freeze returns, without a new connection's delay.
        let (counter, conn) = tokio_postgres::connect(
            &format!(
                "{} application_name=hostshift-agent",
                sb.world.old_pg.conninfo(&sb.old_db)
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("counting session");
        tokio::spawn(conn);
        let count = || async {
            counter
                .query_one(
                    "SELECT count(*) FROM users WHERE display_name = 'busy'",
                    &[],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        };
        let started = std::time::Instant::now();
        while count().await < 8 && started.elapsed() < std::time::Duration::from_secs(20) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let r = set_read_only(&mut old, true, true).await.expect("freeze");
        let at_return = count().await;
        assert!(r.sessions_ended >= 4, "the four writers: {r:?}");
        assert!(
            at_return >= 8,
            "the writers wrote before the freeze: {at_return}"
        );
        for w in writers {
            let (n, e) = tokio::time::timeout(std::time::Duration::from_secs(10), w)
                .await
                .expect("the writer stopped")
                .expect("writer task");
            assert!(n > 0, "writer wrote nothing before it ended: {e}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            count().await,
            at_return,
            "a session ended by the freeze committed a row after SetReadOnly returned"
        );
        set_read_only(&mut old, false, false).await.expect("undo");
    })
    .await;
}

/// A session on the old database as `role` over the unix socket (`trust` in the rig).
async fn connect_as(
    sb: &Sandbox,
    role: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let pg = &sb.world.old_pg;
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={role} dbname={} application_name=plain-client",
            pg.socket_dir.display(),
            pg.port,
            sb.old_db
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `role` turns read-only off for itself and writes: `Ok`, or the SQLSTATE of the first refusal
/// (at connect, at the SET or at the INSERT).
async fn write_despite_the_freeze(sb: &Sandbox, role: &str) -> Result<(), Option<SqlState>> {
    let db = connect_as(sb, role).await.map_err(|e| e.code().cloned())?;
    // One statement per message: several in one run as one transaction, begun read-only.
    for sql in [
        "SET default_transaction_read_only = off",
        "INSERT INTO users (email, display_name) VALUES ('rogue-' || gen_random_uuid() || '@x.test', 'R')",
    ] {
        db.batch_execute(sql).await.map_err(|e| e.code().cloned())?;
    }
    Ok(())
}

/// Everything about the old database and the roles a freeze could touch: the database's row
/// (owner, connection limit, allow-connections, template), its privileges as sorted
/// `grantor/grantee/privilege/grantable` (a default ACL shown explicitly), its own settings, and
/// every role's attributes and settings.
async fn access_state(sb: &Sandbox, plain: &str) -> Vec<String> {
    let admin = sb.world.old_pg.connect("postgres").await;
    let mut out = Vec::new();
    for q in [
        "SELECT format('db %s owner=%s connlimit=%s allowconn=%s template=%s', d.datname,
                pg_get_userbyid(d.datdba), d.datconnlimit, d.datallowconn, d.datistemplate)
         FROM pg_database d WHERE d.datname = $1",
        "SELECT format('acl %s/%s/%s/%s', pg_get_userbyid(a.grantor),
                CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                a.privilege_type, a.is_grantable)
         FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
         WHERE d.datname = $1 ORDER BY 1",
        "SELECT format('setting %s %s', coalesce(r.rolname, '*'), s.setconfig)
         FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
         LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = $1 ORDER BY 1",
    ] {
        for r in admin.query(q, &[&sb.old_db]).await.expect("catalog") {
            out.push(r.get::<_, String>(0));
        }
    }
    // Roles are shared by the cluster's concurrent tests: only the ones this test involves.
    for r in admin
        .query(
            "SELECT format('role %s login=%s super=%s createdb=%s connlimit=%s config=%s', rolname,
                    rolcanlogin, rolsuper, rolcreatedb, rolconnlimit, rolconfig)
             FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
            &[&vec![
                "app".to_string(),
                "postgres".to_string(),
                plain.to_string(),
            ]],
        )
        .await
        .expect("roles")
    {
        out.push(r.get::<_, String>(0));
    }
    out
}

#[tokio::test]
async fn a_freeze_holds_against_a_plain_role_that_turns_read_only_off_and_the_undo_restores_every_privilege()
 {
    bounded(async {
        let mut sb = Sandbox::new("freeze_plain_role").await;
        let plain = format!(
            "plain_{}",
            sb.old_db.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let admin = sb.world.old_pg.connect(&sb.old_db).await;
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS \"{plain}\"; CREATE ROLE \"{plain}\" LOGIN;
                 GRANT CONNECT ON DATABASE \"{db}\" TO \"{plain}\";
                 GRANT USAGE ON SCHEMA public TO \"{plain}\";
                 GRANT INSERT ON public.users TO \"{plain}\";
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO \"{plain}\";",
                db = sb.old_db
            ))
            .await
            .expect("a plain role (not the owner, not a superuser) that may write");
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        assert_eq!(
            write_despite_the_freeze(&sb, &plain).await,
            Ok(()),
            "writable before"
        );
        let before = access_state(&sb, &plain).await;
        let held = connect_as(&sb, &plain)
            .await
            .expect("a session opened before the freeze");

        let r = set_read_only(&mut old, true, true).await.expect("freeze");
        assert!(r.changed && r.read_only, "{r:?}");
        for role in [plain.as_str(), "app"] {
            let refused = write_despite_the_freeze(&sb, role).await;
            assert!(
                refused.is_err(),
                "{role} wrote to the frozen database by turning read-only off"
            );
        }
        assert!(
            held.batch_execute("SELECT 1").await.is_err(),
            "the session opened before the freeze was ended"
        );
        // The agent still reads everything the cutover's delta and proof need.
        let fp = old
            .fingerprint(request(app(&[])))
            .await
            .expect("Fingerprint while frozen")
            .into_inner();
        let fp = DatabaseFingerprint::from_proto(fp).expect("a well-formed answer");
        assert_eq!(
            fp.tables[&TableRef::new("public", "users")].rows,
            sb.world.seed.rows["users"] + 1
        );
        // Freezing again changes nothing and keeps the first record.
        let again = set_read_only(&mut old, true, true)
            .await
            .expect("freeze again");
        assert!(!again.changed, "{again:?}");

        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed && !r.read_only, "{r:?}");
        assert_eq!(
            access_state(&sb, &plain).await,
            before,
            "the undo restores the database's privileges, settings and the roles exactly"
        );
        assert_eq!(
            write_despite_the_freeze(&sb, &plain).await,
            Ok(()),
            "writable again"
        );
        assert!(!record(&sb).exists(), "the record is gone");
    })
    .await;
}

#[tokio::test]
async fn an_explicit_earlier_setting_comes_back_after_freeze_and_undo() {
    bounded(async {
        let mut sb = Sandbox::new("freeze_explicit_off").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let admin = sb.world.old_pg.connect("postgres").await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" SET default_transaction_read_only = off",
                sb.old_db
            ))
            .await
            .expect("explicit off");
        let mut old = client(&sb, sb.old()).await;
        set_read_only(&mut old, true, false).await.expect("freeze");
        assert_eq!(
            try_write(&sb).await,
            Err(Some(SqlState::READ_ONLY_SQL_TRANSACTION))
        );
        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed, "{r:?}");
        assert_eq!(
            db_settings(&sb).await,
            vec!["default_transaction_read_only=off"],
            "the database's own setting, not a RESET"
        );
        assert_eq!(try_write(&sb).await, Ok(()));
    })
    .await;
}

#[tokio::test]
async fn freezing_twice_keeps_the_first_original_so_one_undo_restores_writes() {
    bounded(async {
        let mut sb = Sandbox::new("freeze_twice").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let first = set_read_only(&mut old, true, true).await.expect("freeze");
        let second = set_read_only(&mut old, true, true).await.expect("again");
        assert!(first.changed && !second.changed, "{first:?} {second:?}");
        assert!(second.read_only);
        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed && !r.read_only, "{r:?}");
        assert_eq!(
            try_write(&sb).await,
            Ok(()),
            "not restored to the frozen 'on'"
        );
        assert_eq!(db_settings(&sb).await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test]
async fn an_agent_without_the_permit_refuses_to_freeze_and_the_database_stays_writable() {
    bounded(async {
        let mut sb = Sandbox::new("freeze_refused").await;
        let mut setup = sb.old_setup();
        setup.freeze_databases.clear();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let held = sb.world.old_pg.connect(&sb.old_db).await;
        let e = set_read_only(&mut old, true, true)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("[allow] freeze_databases"),
            "{}",
            e.message()
        );
        assert_eq!(try_write(&sb).await, Ok(()));
        assert_eq!(db_settings(&sb).await, Vec::<String>::new());
        held.query_one("SELECT 1", &[])
            .await
            .expect("no session was ended");
        assert!(!record(&sb).exists());
    })
    .await;
}

#[tokio::test]
async fn a_freeze_is_undone_after_the_agent_restarts() {
    bounded(async {
        let mut sb = Sandbox::new("freeze_restart").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        set_read_only(&mut old, true, false).await.expect("freeze");
        assert_eq!(
            try_write(&sb).await,
            Err(Some(SqlState::READ_ONLY_SQL_TRANSACTION))
        );
        drop(old);
        // Stop (SIGTERM, waited for) and start the agent again on the same config and state.
        drop(sb.old.take());
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed && !r.read_only, "{r:?}");
        assert_eq!(
            try_write(&sb).await,
            Ok(()),
            "writable after the restart's undo"
        );
    })
    .await;
}

#[tokio::test]
async fn a_freeze_this_agent_made_is_undone_after_its_config_dropped_the_permit() {
    bounded(async {
        let mut sb = Sandbox::new("freeze_permit_gone").await;
        let setup = sb.old_setup();
        start_old(&mut sb, &setup).await;
        let mut old = client(&sb, sb.old()).await;
        set_read_only(&mut old, true, false).await.expect("freeze");
        drop(old);
        // A blue/green swap: this host becomes a target and no longer allows freezing; the undo
        // of its recorded freeze (rollback) must still work.
        drop(sb.old.take());
        let mut target = setup.clone();
        target.freeze_databases.clear();
        start_old(&mut sb, &target).await;
        let mut old = client(&sb, sb.old()).await;
        let r = set_read_only(&mut old, false, false).await.expect("undo");
        assert!(r.changed && !r.read_only, "{r:?}");
        assert_eq!(try_write(&sb).await, Ok(()));
        assert!(!record(&sb).exists(), "the freeze record is gone");
        // Without a record, freezing stays refused.
        let e = set_read_only(&mut old, true, false)
            .await
            .expect_err("no permit, no freeze");
        assert!(e.message().contains("[allow] freeze_databases"), "{e:?}");
    })
    .await;
}
