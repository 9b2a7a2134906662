//! `hostshift follow`: the new host keeps up with a live old database by logical decoding, on
//! real clusters (old: wal_level = logical) through real agents. With a writer committing on the
//! old host throughout: every insert, update and delete after the start arrives exactly once —
//! uuid and composite keys, a partitioned table (rows moving between partitions too), bytea,
//! jsonb, enum and array columns, TRUNCATE — through a kill -9 of the new agent; the app's
//! UPDATE/DELETE on a table without a primary key keep working on the old host; `sync` refuses a
//! followed database; a schema change stops the follower naming the table; cleanup leaves no
//! slot or publication. Without `[allow] follow_databases` or `wal_level = logical` nothing is
//! created and the message says what to do. Following into a managed-like (RDS-like) target —
//! TLS only, SCRAM, a master that is not a superuser but has what RDS grants it — works; a role
//! without the replication-origin grants is refused with the grant to run. A bulk transaction
//! (tens of thousands of rows) and a burst of small ones arrive whole and once through the apply
//! pipeline, and a divergence inside a pipelined transaction stops the follower naming the table
//! with nothing of that transaction applied.

use std::time::{Duration, Instant};

use hostshift_tests::rig::managed::{MASTER, NO_ORIGIN, managed_in};
use hostshift_tests::rig::{self, AgentProc, Sandbox, logical_world};

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('ok', 'sad', 'meh');
CREATE TABLE f_uuid (id uuid PRIMARY KEY, v int NOT NULL);
CREATE TABLE f_comp (k1 int, k2 text, v text, PRIMARY KEY (k1, k2));
CREATE TABLE f_part (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE f_part_eu PARTITION OF f_part FOR VALUES IN ('eu');
CREATE TABLE f_part_us PARTITION OF f_part FOR VALUES IN ('us');
CREATE TABLE f_types (id int PRIMARY KEY, b bytea, j jsonb, m mood, a int[], t text);
CREATE TABLE f_nopk (a int, b text);
CREATE TABLE f_trunc (id int PRIMARY KEY, v text);
INSERT INTO f_uuid SELECT gen_random_uuid(), g FROM generate_series(1, 50) g;
INSERT INTO f_comp SELECT g, 'k' || g, 'v' FROM generate_series(1, 50) g;
INSERT INTO f_part SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 50) g;
INSERT INTO f_nopk SELECT g, 'b' FROM generate_series(1, 50) g;
INSERT INTO f_trunc SELECT g, 'x' FROM generate_series(1, 20) g;
";

/// Tables compared row by row (all but the one without a primary key).
const FOLLOWED: [&str; 5] = ["f_uuid", "f_comp", "f_part", "f_types", "f_trunc"];

/// One transaction of the app per round, touching every followed table.
const ROUND: &str = "
INSERT INTO f_uuid VALUES (gen_random_uuid(), $1);
UPDATE f_uuid SET v = v + 1000 WHERE v = $1 - 3;
INSERT INTO f_comp VALUES ($1 + 1000, 'k' || $1, 'new');
UPDATE f_comp SET v = 'changed ' || $1, k2 = k2 || '+' WHERE k1 = $1 + 999;
DELETE FROM f_comp WHERE k1 = $1 + 995;
INSERT INTO f_part VALUES ($1 + 1000, 'eu', $1);
UPDATE f_part SET region = 'us' WHERE id = $1 + 999 AND region = 'eu';
INSERT INTO f_types VALUES ($1, decode(lpad(to_hex($1), 8, '0'), 'hex'), jsonb_build_object('n', $1, 's', 'é \"q\"'), 'sad', ARRAY[$1, NULL, 3], NULL);
UPDATE f_types SET t = repeat('x', $1 % 7), m = 'meh', a = a || $1 WHERE id = $1 - 1;
INSERT INTO f_trunc VALUES ($1 + 1000, 'r');
";

/// Writes rounds until stopped; any failed statement is recorded (the no-PK table's
/// UPDATE/DELETE must keep working while a publication exists).
async fn start_writer(sb: &Sandbox, from: i64) -> rig::RoundWriter {
    rig::RoundWriter::start(sb, from, Duration::from_millis(15), |i| {
        vec![
            format!("BEGIN; {} COMMIT;", ROUND.replace("$1", &i.to_string())),
            // The app's writes on the table without a primary key, outside the publication.
            format!("INSERT INTO f_nopk VALUES ({i}, 'n')"),
            format!("UPDATE f_nopk SET b = 'u' WHERE a = {}", i - 1),
            format!("DELETE FROM f_nopk WHERE a = {}", i - 2),
        ]
    })
    .await
}

/// A plan name of its own: slots are per cluster, and every sandbox's plan says "test".
fn rename_plan(sb: &Sandbox, name: &str) {
    let p = sb.plan_path();
    let text = std::fs::read_to_string(&p).expect("plan");
    std::fs::write(
        &p,
        text.replacen("name = \"test\"", &format!("name = \"{name}\""), 1),
    )
    .expect("plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_applies_every_change_once_through_a_kill_of_the_new_agent_and_cleanup_leaves_nothing()
 {
    let mut sb = Sandbox::new_in(logical_world(), "follow_main").await;
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    let new_setup = sb.new_setup();
    sb.start(old_setup, new_setup.clone()).await;
    rename_plan(&sb, "follow-main");

    let writer = start_writer(&sb, 1).await;
    writer.wait_rounds(5).await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    let not_followed = j["databases"][0]["not_followed"].to_string();
    assert!(
        not_followed.contains("public.f_nopk"),
        "the table without a primary key is reported as not followed: {not_followed}"
    );
    writer.wait_rounds(30).await;

    // kill -9 of the new agent while following; it resumes by itself on start.
    sb.new.as_mut().expect("new agent").kill();
    writer.wait_rounds(20).await;
    let restarted = AgentProc::start(&new_setup, &sb.dir, sb.world).await;
    sb.addresses.1 = restarted.address();
    sb.new = Some(restarted);
    sb.write_plan("");
    rename_plan(&sb, "follow-main");
    writer.wait_rounds(20).await;

    // TRUNCATE travels too, followed by new rows.
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute("TRUNCATE f_trunc; INSERT INTO f_trunc VALUES (1, 'after truncate')")
        .await
        .expect("truncate");
    writer.wait_rounds(10).await;
    let errors = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the app's writes on the old host kept working while followed (the no-PK table's UPDATE/DELETE too): {errors:?}"
    );

    // The cutover's calls: the old host's position, then wait until the follower applied it.
    rig::wait_caught_up(
        &sb,
        "app",
        "the follower applies everything committed before the position",
    )
    .await;
    for t in FOLLOWED {
        let (a, b) = (
            rig::table_rows(&sb.world.old_pg, &sb.old_db, t).await,
            rig::table_rows(&sb.world.new_pg, &sb.new_db, t).await,
        );
        let least = if t == "f_trunc" { 5 } else { 20 };
        assert!(a.len() > least, "{t} has rows ({})", a.len());
        assert_eq!(
            a, b,
            "table {t}: every row on the new host equals the old host's (none lost, none twice)"
        );
    }

    let trunc = rig::table_rows(&sb.world.new_pg, &sb.new_db, "f_trunc").await;
    assert!(
        trunc.iter().any(|r| r.contains("after truncate"))
            && !trunc.iter().any(|r| r.contains("\"x\"")),
        "the TRUNCATE arrived before the rows written after it: {trunc:?}"
    );

    let st = sb.cli(&["follow", "status", "--json"]).await;
    assert_eq!(st.code, 0, "{}", st.both());
    let sj = st.json();
    assert_eq!(sj["databases"][0]["state"], "following", "{}", st.stdout);
    assert_eq!(sj["databases"][0]["slot"], true, "{}", st.stdout);
    assert_ne!(sj["databases"][0]["applied_lsn"], "0/0", "{}", st.stdout);
    assert!(
        sj["databases"][0]["lag_seconds"]
            .as_f64()
            .is_some_and(|s| s < 30.0)
            && sj["databases"][0]["lag_bytes"].as_u64().is_some(),
        "status shows the lag of a follower that caught up: {}",
        st.stdout
    );
    assert!(
        sj["databases"][0]["retained_bytes"].as_u64().is_some(),
        "{}",
        st.stdout
    );

    let check = sb.cli(&["check", "--json"]).await;
    let rows_of = |j: &serde_json::Value, what: &str| -> Vec<serde_json::Value> {
        j["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["check"].as_str().is_some_and(|t| t.contains(what)))
            .cloned()
            .collect()
    };
    let cj = check.json();
    let level = rows_of(&cj, "can be followed");
    assert_eq!(level.len(), 1, "{}", check.stdout);
    assert_eq!(level[0]["result"], "ok", "{}", check.stdout);
    let kept = rows_of(&cj, "WAL kept by the follow slot");
    assert!(
        kept.len() == 1
            && kept[0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("retained")),
        "check shows the WAL the slot keeps: {}",
        check.stdout
    );

    // A copy would fight the follower.
    let sync = sb.cli(&["sync", "--only", "db"]).await;
    assert_ne!(sync.code, 0, "{}", sync.both());
    assert!(
        sync.stderr.contains("hostshift follow stop"),
        "{}",
        sync.both()
    );

    // stop keeps the slot; a second start resumes from it (a new anchor, the origin's position).
    let stop = sb.cli(&["follow", "stop", "--json"]).await;
    assert_eq!(stop.code, 0, "{}", stop.both());
    let st = sb.cli(&["follow", "status", "--json"]).await;
    assert_eq!(
        st.json()["databases"][0]["state"],
        "stopped",
        "{}",
        st.stdout
    );
    assert_eq!(st.json()["databases"][0]["slot"], true, "{}", st.stdout);
    let writer = start_writer(&sb, 100_000).await;
    writer.wait_rounds(10).await;
    let again = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(
        again.json()["databases"][0]["created"],
        false,
        "{}",
        again.stdout
    );
    writer.wait_rounds(10).await;
    let errors = writer.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    rig::wait_caught_up(&sb, "app", "the resumed follower catches up").await;
    for t in FOLLOWED {
        assert_eq!(
            rig::table_rows(&sb.world.old_pg, &sb.old_db, t).await,
            rig::table_rows(&sb.world.new_pg, &sb.new_db, t).await,
            "table {t} after stop and a second start"
        );
    }

    // A schema change on the old host stops the follower, naming the table.
    old.batch_execute(
        "ALTER TABLE f_comp ADD COLUMN extra int; INSERT INTO f_comp VALUES (-1, 'x', 'y', 1)",
    )
    .await
    .expect("schema change");
    let failed = rig::eventually(Duration::from_secs(30), "the follower to stop", || async {
        let st = sb.cli(&["follow", "status", "--json"]).await;
        (st.json()["databases"][0]["state"] == "failed").then_some(st)
    })
    .await;
    assert_eq!(failed.code, 3, "{}", failed.both());
    assert!(failed.stdout.contains("public.f_comp"), "{}", failed.both());

    let clean = sb.cli(&["follow", "cleanup", "--yes", "--json"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
    assert_eq!(
        rig::follow_leftovers(&sb, "hostshift_follow_main").await,
        (0, 0, 0),
        "no slot, publication or origin of hostshift remains"
    );
    let again = sb.cli(&["follow", "cleanup", "--yes"]).await;
    assert_eq!(again.code, 0, "cleanup is idempotent: {}", again.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_is_refused_without_allow_or_logical_wal_level_and_creates_nothing() {
    // Without [allow] follow_databases.
    let mut sb = Sandbox::new_in(logical_world(), "follow_refused").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    rename_plan(&sb, "follow-refused");
    let out = sb.cli(&["follow", "start"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stderr.contains("[allow] follow_databases"),
        "{}",
        out.both()
    );
    assert_eq!(
        rig::follow_leftovers(&sb, "hostshift_follow_main").await.0,
        0,
        "no slot was created"
    );
    assert_eq!(
        rig::follow_leftovers(&sb, "hostshift_follow_main").await.1,
        0,
        "no publication"
    );

    // A source whose wal_level is not logical (this world's second cluster runs `replica`).
    let mut sb = Sandbox::new_in(logical_world(), "follow_replica").await;
    let mut old_setup = sb.old_setup();
    old_setup.databases = vec![("app".into(), sb.world.new_pg.conninfo("postgres"))];
    old_setup.follow_databases.push("app".into());
    sb.start(old_setup, sb.new_setup()).await;
    rename_plan(&sb, "follow-replica");
    let out = sb.cli(&["follow", "start"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stderr.contains("wal_level = logical")
            && out.stderr.contains("ALTER SYSTEM SET wal_level = logical")
            && out.stderr.contains("it is replica"),
        "{}",
        out.both()
    );
    let check = sb.cli(&["check", "--json"]).await;
    let row = check.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| {
            c["check"]
                .as_str()
                .is_some_and(|t| t.contains("can be followed"))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no wal_level row: {}", check.stdout));
    assert_eq!(row["result"], "warn", "{row}");
    assert!(
        row["hint"]
            .as_str()
            .is_some_and(|h| h.contains("ALTER SYSTEM SET wal_level = logical")
                && h.contains("never restarts")),
        "{row}"
    );
}

/// A sandbox of the logical world whose new host's database `app` is on the managed-like
/// cluster as `role` (created by that role, as the RDS master creates it), with `m_items` on the
/// old host. Hold the managed cluster's `roles_lock` around it: first syncs create shared roles.
async fn managed_follow_sandbox(name: &str, role: &str) -> Sandbox {
    let m = managed_in(logical_world());
    let mut sb = Sandbox::new_in(logical_world(), name).await;
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(
            "CREATE TABLE m_items (id int PRIMARY KEY, v text, n numeric);
             INSERT INTO m_items SELECT g, 'v' || g, g * 1.5 FROM generate_series(1, 40) g;
             ALTER TABLE m_items OWNER TO app;",
        )
        .await
        .expect("schema");
    m.create_database_as(role, &sb.new_db).await;
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    let mut new_setup = sb.new_setup();
    new_setup.databases.clear();
    new_setup
        .extra
        .push_str(&m.agent_database("app", role, &sb.new_db));
    sb.start(old_setup, new_setup).await;
    rename_plan(&sb, &name.replace('_', "-"));
    sb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_into_a_managed_target_as_a_non_superuser_master_applies_every_change() {
    let m = managed_in(logical_world());
    let _roles = m.roles_lock.lock().await;
    let sb = managed_follow_sandbox("follow_managed", MASTER).await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());

    let old = sb.world.old_pg.connect(&sb.old_db).await;
    // The lab cluster runs synchronous_commit = off: these commits are acknowledged before their
    // WAL is written, and the position is asked for right after them. `old_position` must still
    // cover them (its barrier flushes them first); the plain write position it used to read lay
    // before them, and `wait_applied` returned with none of them applied (every run).
    old.batch_execute(
        "INSERT INTO m_items SELECT g, 'new ' || g, g FROM generate_series(100, 120) g;
         UPDATE m_items SET v = 'updated', n = n + 1 WHERE id % 3 = 0;
         DELETE FROM m_items WHERE id % 7 = 0;
         BEGIN; UPDATE m_items SET id = id + 1000 WHERE id = 1; DELETE FROM m_items WHERE id = 2; COMMIT;",
    )
    .await
    .expect("changes on the old host");

    rig::wait_caught_up(
        &sb,
        "app",
        "the follower on the managed target applies everything",
    )
    .await;
    let (a, b) = (
        rig::table_rows(&sb.world.old_pg, &sb.old_db, "m_items").await,
        rig::table_rows(&m.pg, &sb.new_db, "m_items").await,
    );
    assert!(
        a.len() > 40 && a.iter().any(|r| r.contains("updated")),
        "{a:?}"
    );
    assert_eq!(
        a, b,
        "every row on the managed target equals the old host's"
    );

    // It ran as the master over TLS, and the master is still no superuser.
    let admin = m.admin(&sb.new_db).await;
    let pubs: i64 = admin
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("publications")
        .get(0);
    assert_eq!(
        pubs, 0,
        "the old host's follow publication is not copied to the new host"
    );
    let row = admin
        .query_one(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = $1),
                    (SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                     WHERE a.usename = $1 AND a.datname = current_database() AND s.ssl)",
            &[&MASTER],
        )
        .await
        .expect("query");
    assert!(!row.get::<_, bool>(0), "the master became a superuser");
    assert!(
        row.get::<_, i64>(1) >= 1,
        "the follower's session is the master's, over TLS"
    );

    let clean = sb.cli(&["follow", "cleanup", "--yes"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
    let origins: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = 'hostshift_follow_managed'",
            &[],
        )
        .await
        .expect("origins")
        .get(0);
    assert_eq!(origins, 0, "cleanup dropped the origin as the master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_into_a_managed_target_without_the_origin_grants_names_them() {
    let m = managed_in(logical_world());
    let _roles = m.roles_lock.lock().await;
    let sb = managed_follow_sandbox("follow_noorigin", NO_ORIGIN).await;
    // `check` says so first: a warning on the new host naming what the role lacks.
    let check = sb.cli(&["check"]).await;
    assert!(
        check.stdout.contains("can apply followed changes")
            && check.stdout.contains("pg_replication_origin_create(text)"),
        "{}",
        check.both()
    );
    let out = sb.cli(&["follow", "start"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    for needed in [
        "nothing was created",
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) TO \"noorigin\"",
        "pg_catalog.pg_replication_origin_session_setup(text)",
        "pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
        "docs/rds.md",
    ] {
        assert!(out.stderr.contains(needed), "{needed:?} in: {}", out.both());
    }
    assert!(
        !out.stderr.contains("PARAMETER session_replication_role"),
        "the role may set session_replication_role; only what it lacks is named: {}",
        out.both()
    );
    let admin = m.admin(&sb.new_db).await;
    let origins: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = 'hostshift_follow_noorigin'",
            &[],
        )
        .await
        .expect("origins")
        .get(0);
    assert_eq!(origins, 0, "no origin was created");
    let st = sb.cli(&["follow", "status", "--json"]).await;
    assert_ne!(
        st.json()["databases"][0]["state"],
        "following",
        "{}",
        st.stdout
    );
    let (slots, pubs, _) = rig::follow_leftovers(&sb, "hostshift_follow_main").await;
    assert_eq!(
        (slots, pubs),
        (0, 0),
        "refused before the old host got a slot or a publication"
    );
    let clean = sb.cli(&["follow", "cleanup", "--yes"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
}

/// The apply pipeline (agent/src/follow/apply.rs): many statements in flight, answers checked in
/// order. A bulk transaction of ~56,000 changes and a burst of 2,000 one-row transactions arrive
/// complete and once, and so does a transaction whose runs of rows are broken in every way;
/// then a row missing on the new host, hit near the end of a 400-row transaction, stops the
/// follower with the divergence named — and none of that transaction's
/// rows are applied (the pipeline's later answers do not hide the cause, and nothing half-done
/// commits). The apply times are printed, not asserted (docs/BENCHMARKS.md has the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transaction_arrives_whole_and_a_divergence_in_the_pipeline_applies_none_of_it() {
    let mut sb = Sandbox::new_in(logical_world(), "follow_bulk").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "CREATE TABLE bulk (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
         INSERT INTO bulk SELECT g, md5(g::text), g FROM generate_series(1, 60000) g;
         CREATE TABLE toasty (id int PRIMARY KEY, big text, n int);
         ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO toasty SELECT g, repeat(md5(g::text), 300), g FROM generate_series(1, 40) g;",
    )
    .await
    .expect("schema");
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    let new_setup = sb.new_setup();
    sb.start(old_setup, new_setup).await;
    rename_plan(&sb, "follow-bulk");
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());

    // One transaction: 20,000 updates spread over the table, 20,000 inserts, ~16,000 deletes.
    let t = Instant::now();
    old.batch_execute(
        "BEGIN;
         UPDATE bulk SET v = v || '+', n = n * 2 WHERE id % 3 = 0;
         INSERT INTO bulk SELECT g, 'new ' || g, g FROM generate_series(100001, 120000) g;
         DELETE FROM bulk WHERE id % 6 = 1;
         COMMIT;",
    )
    .await
    .expect("bulk transaction");
    rig::wait_caught_up(&sb, "app", "the bulk transaction is applied").await;
    eprintln!(
        "bulk transaction (~56,000 changes) applied in {:?}",
        t.elapsed()
    );

    // Runs of rows go as one statement each (apply.rs, "Runs of rows"); what breaks a run must
    // keep the order: the same rows updated again, deleted and inserted again with other values,
    // a key that changes, and UPDATEs whose unchanged TOAST value is not sent.
    old.batch_execute(
        "BEGIN;
         UPDATE bulk SET n = n + 1 WHERE id BETWEEN 200 AND 1200;
         UPDATE bulk SET n = n + 10 WHERE id BETWEEN 1000 AND 1500;
         DELETE FROM bulk WHERE id BETWEEN 1400 AND 1450;
         INSERT INTO bulk SELECT g, 'again ' || g, -g FROM generate_series(1400, 1450) g;
         UPDATE bulk SET n = 0 WHERE id BETWEEN 1420 AND 1430;
         UPDATE bulk SET id = id + 200000 WHERE id BETWEEN 1600 AND 1610;
         UPDATE bulk SET v = 'after the key change' WHERE id BETWEEN 201600 AND 201610;
         UPDATE toasty SET n = n + 1 WHERE id <= 20;
         UPDATE toasty SET big = 'small now', n = -1 WHERE id BETWEEN 5 AND 8;
         UPDATE toasty SET n = n + 100 WHERE id <= 10;
         DELETE FROM toasty WHERE id = 3;
         COMMIT;",
    )
    .await
    .expect("the mixed transaction");
    rig::wait_caught_up(&sb, "app", "the mixed transaction is applied").await;
    for table in ["bulk", "toasty"] {
        assert!(
            rig::table_rows(&sb.world.old_pg, &sb.old_db, table).await
                == rig::table_rows(&sb.world.new_pg, &sb.new_db, table).await,
            "{table}: equal row by row after a transaction whose runs of rows were broken by repeated keys, re-inserts, a key change and unchanged TOAST values"
        );
    }

    // A burst of 2,000 small transactions, one row each.
    let t = Instant::now();
    let burst: String = (0..2000)
        .map(|i| {
            format!(
                "UPDATE bulk SET n = n + 1 WHERE id = {};",
                (i * 29) % 60000 + 2
            )
        })
        .collect();
    old.batch_execute(&burst).await.expect("burst");
    rig::wait_caught_up(&sb, "app", "the burst is applied").await;
    eprintln!(
        "burst of 2,000 one-row transactions applied in {:?}",
        t.elapsed()
    );
    let rows = rig::table_rows(&sb.world.old_pg, &sb.old_db, "bulk").await;
    assert!(rows.len() > 60_000, "old host rows: {}", rows.len());
    assert!(
        rows == rig::table_rows(&sb.world.new_pg, &sb.new_db, "bulk").await,
        "every row on the new host equals the old host's after the bulk transaction and the burst"
    );

    // Divergence: row 599 (id % 6 = 5: never deleted) vanishes on the new host only; the old
    // host's next transaction updates 400 rows, row 599 among the last (the mixed transaction
    // above moved it to the end of the heap): its answer comes after nearly every other one, and
    // the COMMIT must wait for it (it once did not: the transaction committed, diverged row and
    // all, when the divergence was among its last 256 statements).
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    new.batch_execute("DELETE FROM bulk WHERE id = 599")
        .await
        .expect("diverge");
    let before = rig::table_rows(&sb.world.new_pg, &sb.new_db, "bulk").await;
    old.batch_execute("UPDATE bulk SET v = 'diverged' WHERE id BETWEEN 3 AND 600 AND id % 6 <> 1")
        .await
        .expect("update on old");
    let failed = rig::eventually(Duration::from_secs(30), "the follower to stop", || async {
        let st = sb.cli(&["follow", "status", "--json"]).await;
        (st.json()["databases"][0]["state"] == "failed").then_some(st)
    })
    .await;
    assert!(
        failed.stdout.contains("public.bulk")
            && failed.stdout.contains("rows on the new host (")
            && failed.stdout.contains("expected)"),
        "the first failure in the pipeline is reported, naming the table: {}",
        failed.both()
    );
    assert!(
        before == rig::table_rows(&sb.world.new_pg, &sb.new_db, "bulk").await,
        "none of the diverged transaction's rows were applied"
    );
    let clean = sb.cli(&["follow", "cleanup", "--yes", "--json"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
}

/// The applier sends a transaction's statements as its rows arrive, not at its COMMIT: a large
/// transaction is applied while the rest of it is still on its way. (On main before the fix
/// nothing left for the server until the COMMIT — or [`PIPELINE`] statements — came, so the
/// catch-up after a bulk change was receive time plus apply time, one after the other.)
///
/// [`PIPELINE`]: hostshift_agent::follow::apply::PIPELINE
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applier_writes_a_transaction_before_its_commit_arrives() {
    use hostshift_agent::follow::Direction;
    use hostshift_agent::follow::apply::{Anchor, Applier, BATCH_ROWS};
    use hostshift_agent::follow::pgoutput::{Column, Message, Relation, Value};

    let sb = Sandbox::new_in(logical_world(), "applier_before_commit").await;
    let pg = &sb.world.new_pg;
    pg.connect(&sb.new_db)
        .await
        .batch_execute("CREATE TABLE ap_rows (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .expect("create the table");
    let conninfo = format!("{} application_name=ap_applier", pg.conninfo(&sb.new_db));
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect the applier");
    tokio::spawn(conn);
    let anchor = Anchor::parse("1:1:").expect("anchor");
    let mut applier = Applier::new(
        client,
        &sb.new_db,
        "hostshift_ap_test",
        anchor,
        Direction::Forward,
    )
    .await
    .expect("applier");
    let lsn = 1u64 << 32;
    let column = |name: &str, key, type_oid| Column {
        key,
        name: name.into(),
        type_oid,
        type_mod: -1,
    };
    let mut messages = vec![
        Message::Begin {
            final_lsn: lsn,
            commit_ts: 0,
            xid: 5_000,
        },
        Message::Relation(Relation {
            oid: 1,
            schema: "public".into(),
            name: "ap_rows".into(),
            replica_identity: b'd',
            columns: vec![column("id", true, 23), column("v", false, 25)],
        }),
    ];
    let rows = BATCH_ROWS * 2 + 1;
    messages.extend((0..rows).map(|i| Message::Insert {
        rel: 1,
        new: vec![Value::Text(i.to_string()), Value::Text("x".into())],
    }));
    for m in messages {
        assert_eq!(applier.apply(m).await.expect("apply"), None);
    }
    // Two full batches went into the pipeline; the COMMIT has not come. The applier's session
    // must already have written (a transaction id is assigned at its first row).
    let watch = pg.connect("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let wrote = loop {
        let wrote: bool = watch
            .query_one(
                "SELECT coalesce(bool_or(backend_xid IS NOT NULL), false) \
                 FROM pg_stat_activity WHERE application_name = 'ap_applier'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if wrote || Instant::now() > deadline {
            break wrote;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        wrote,
        "10 s after {} rows of an open transaction were handed to the applier, none had reached the server",
        BATCH_ROWS * 2
    );
    let c = applier
        .apply(Message::Commit {
            commit_lsn: lsn,
            end_lsn: lsn + 8,
            commit_ts: 0,
        })
        .await
        .expect("commit")
        .expect("a commit");
    assert!(c.applied && c.end_lsn == lsn + 8, "{c:?}");
    let n: i64 = pg
        .connect(&sb.new_db)
        .await
        .query_one("SELECT count(*) FROM ap_rows", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, rows as i64, "every row of the transaction applied once");
}
