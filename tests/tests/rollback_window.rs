//! The rollback window on real clusters (both `wal_level = logical`) through real agents: a
//! followed cutover with the app writing on the old host opens the window (a slot on the new
//! host before the switch, a follower on the old host after it); the app then writes on the new
//! host — inserts, updates, deletes, and a table without a primary key — while the old host stays
//! frozen for it; `hostshift rollback` freezes the new host, waits until the old host applied
//! everything, copies the sequences and moves back. Every write acknowledged by either host is on
//! the old host with its final value (row by row against the frozen new host), the old host takes
//! writes again, and no slot, publication or origin of hostshift remains on either host.

use std::time::Duration;

use hostshift_tests::rig::writer::{Writer, WriterOptions};
use hostshift_tests::rig::{self, Sandbox, round_trip_world};
use serde_json::Value;

/// The seeded app's tables with a primary key: carried back by the window.
const TABLES: [&str; 6] = [
    "users",
    "questions",
    "assessments",
    "project_assessments",
    "project_submissions",
    "project_evaluation_runs",
];

/// A table without a primary key (no replica identity): not in the window's publication.
const NO_PK: &str =
    "CREATE TABLE public.audit_log (body text, n int); GRANT ALL ON public.audit_log TO app;";

fn rename_plan(sb: &Sandbox, name: &str) {
    let p = sb.plan_path();
    let text = std::fs::read_to_string(&p).expect("plan");
    std::fs::write(
        &p,
        text.replacen("name = \"test\"", &format!("name = \"{name}\""), 1),
    )
    .expect("plan");
}

fn step<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {j:#}"))
}

async fn count(pg: &rig::PgInfo, db: &str, sql: &str) -> i64 {
    pg.connect(db)
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql} on port {}: {e:?}", pg.port))
        .get(0)
}

/// hostshift's slots, publications and replication origins in `db` of `pg`.
async fn hostshift_objects(pg: &rig::PgInfo, db: &str) -> (i64, i64, i64) {
    (
        count(
            pg,
            db,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hostshift_%'",
        )
        .await,
        count(
            pg,
            db,
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'hostshift_%'",
        )
        .await,
        count(
            pg,
            db,
            "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'hostshift_%'",
        )
        .await,
    )
}

/// Agents allowing the window both ways: the old one follows `app` (the forward slot) and may
/// write it (the window's follower); the new one may hold the window's slot and be frozen.
async fn round_trip_sandbox(tag: &str, name: &str) -> Sandbox {
    let mut sb = Sandbox::new_in(round_trip_world(), tag).await;
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(NO_PK)
        .await
        .expect("schema");
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    old_setup.restore_databases.push("app".into());
    let mut new_setup = sb.new_setup();
    new_setup.follow_databases.push("app".into());
    new_setup.freeze_databases.push("app".into());
    sb.start(old_setup, new_setup).await;
    rename_plan(&sb, name);
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "the first sync: {}", out.both());
    sb
}

async fn cli_json(sb: &Sandbox, args: &[&str], secs: u64) -> rig::CliOutput {
    tokio::time::timeout(Duration::from_secs(secs), sb.cli(args))
        .await
        .unwrap_or_else(|_| panic!("{args:?} ends within {secs} s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_within_the_window_brings_every_write_of_the_new_host_back_and_leaves_no_slot() {
    let sb = round_trip_sandbox("rw_main", "rw-main").await;
    let (old_pg, new_pg) = (&sb.world.old_pg, &sb.world.new_pg);

    // Forward: followed cutover with the app writing on the old host.
    let old_writer = Writer::start(WriterOptions::new(old_pg, &sb.old_db, "app", "old"));
    old_writer.wait_acked(20, Duration::from_secs(30)).await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let out = cli_json(
        &sb,
        &[
            "cutover",
            "--yes",
            "--json",
            "--skip-backup-check",
            "test: no backups here",
        ],
        120,
    )
    .await;
    assert_eq!(out.code, 0, "cutover: {}", out.both());
    let old_report = old_writer.stop().await;
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    assert_eq!(step(&j, "window prepare")["status"], "done", "{j:#}");
    assert_eq!(step(&j, "window open")["status"], "done", "{j:#}");

    // The window is open; the forward slot is gone from the old host, the window's is on the new.
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    assert_eq!(w.code, 0, "window: {}", w.both());
    let wj = w.json();
    assert_eq!(wj["state"], "open", "{wj:#}");
    assert_eq!(wj["databases"][0]["slot"], true, "{wj:#}");
    assert_eq!(
        hostshift_objects(old_pg, &sb.old_db).await.0,
        0,
        "no slot on the old host"
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db).await.0,
        1,
        "the window's slot on the new host"
    );

    // The app cannot write on the old host while the window is open (CONNECT revoked).
    let app_conn = format!(
        "host={} port={} user=app dbname={} connect_timeout=5",
        old_pg.listen, old_pg.port, sb.old_db
    );
    let refused = tokio_postgres::connect(&app_conn, tokio_postgres::NoTls).await;
    assert!(
        refused.is_err(),
        "the frozen old host admits the app's role during the window"
    );

    // The app on the new host: a writer (inserts + updates), plus deletes, updates and a table
    // without a primary key.
    let new_writer = Writer::start(WriterOptions::new(new_pg, &sb.new_db, "app", "new"));
    new_writer.wait_acked(50, Duration::from_secs(30)).await;
    let new = new_pg.connect(&sb.new_db).await;
    new.batch_execute(
        "DELETE FROM public.assessments WHERE id IN (SELECT id FROM public.assessments ORDER BY id LIMIT 5); \
         UPDATE public.questions SET prompt = prompt || ' (edited on the new host)' WHERE id IN (SELECT id FROM public.questions ORDER BY id LIMIT 3); \
         INSERT INTO public.audit_log VALUES ('written on the new host', 1), ('to be changed', 2); \
         UPDATE public.audit_log SET n = 3 WHERE n = 2;",
    )
    .await
    .expect("writes on the new host");
    new_writer.wait_acked(120, Duration::from_secs(30)).await;

    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    let new_report = new_writer.stop().await;
    assert_eq!(out.code, 0, "rollback: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    assert_eq!(step(&j, "window catch-up")["status"], "done", "{j:#}");
    assert_eq!(step(&j, "window close")["status"], "done", "{j:#}");
    assert!(
        j["freeze_ms"].as_u64().is_some(),
        "the rollback's freeze is reported: {}",
        out.stdout
    );
    assert!(
        new_report.refused_read_only + new_report.sessions_lost > 0,
        "the rollback froze the new host under its writer: {new_report:?}"
    );
    // The table without a replica identity is not carried: the rollback names it.
    let writes = j["new_host_writes"].to_string();
    assert!(
        writes.contains("audit_log") && !writes.contains("assessments"),
        "the rollback reports the table it did not carry back, and only it: {writes}"
    );

    // Independent row-by-row comparison: the old host equals the frozen new host.
    for t in TABLES {
        let (a, b) = (
            rig::table_rows(old_pg, &sb.old_db, &format!("public.{t}")).await,
            rig::table_rows(new_pg, &sb.new_db, &format!("public.{t}")).await,
        );
        assert!(!a.is_empty(), "{t} has rows");
        assert_eq!(
            a, b,
            "table {t}: the old host equals the new host row by row"
        );
    }
    // Every write acknowledged by either host.
    let ids: std::collections::BTreeSet<i64> = old_pg
        .connect(&sb.old_db)
        .await
        .query("SELECT id FROM public.assessments", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (The five rows deleted on the new host are seeded ones: no acknowledged insert among them.)
    let missing: Vec<i64> = old_report
        .acked
        .iter()
        .chain(&new_report.acked)
        .filter(|i| !ids.contains(i))
        .copied()
        .collect();
    assert!(
        new_report.acked.len() >= 120 && missing.is_empty(),
        "{} + {} acknowledged writes, missing on the old host: {missing:?}",
        old_report.acked.len(),
        new_report.acked.len()
    );
    // Sequences came back: the old host's next id does not collide.
    let seqs = "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ',' ORDER BY sequencename) FROM pg_sequences";
    let (a, b): (String, String) = (
        old_pg
            .connect(&sb.old_db)
            .await
            .query_one(seqs, &[])
            .await
            .expect("seqs")
            .get(0),
        new_pg
            .connect(&sb.new_db)
            .await
            .query_one(seqs, &[])
            .await
            .expect("seqs")
            .get(0),
    );
    assert_eq!(a, b, "sequences equal on both hosts");

    // The old host takes the app's writes again.
    let again = Writer::start(WriterOptions::new(old_pg, &sb.old_db, "app", "again"));
    again.wait_acked(5, Duration::from_secs(30)).await;
    again.stop().await;

    // Nothing of hostshift remains in either catalog.
    assert_eq!(
        hostshift_objects(old_pg, &sb.old_db).await,
        (0, 0, 0),
        "old host: slots, publications, origins"
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db).await,
        (0, 0, 0),
        "new host: slots, publications, origins"
    );
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    assert_eq!(w.json()["state"], "closed", "{}", w.stdout);
}
