//! The rollback window on real clusters (both `wal_level = logical`) through real agents: a
//! followed cutover with the app writing on the old host opens the window (a slot on the new
//! host before the switch, a follower on the old host after it); the app then writes on the new
//! host — inserts, updates, deletes, and a table without a primary key — while the old host stays
//! frozen for it; `hostshift rollback` freezes the new host, waits until the old host applied
//! everything, copies the sequences and moves back. Every write acknowledged by either host is on
//! the old host with its final value (row by row against the frozen new host), the old host takes
//! writes again, and no slot, publication or origin of hostshift remains on either host.

use std::time::Duration;

use hostshift_proto::v1::RemoveLargeObjectsRequest;
use hostshift_proto::v1::target_client::TargetClient;
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

/// Tables without a primary key (no replica identity): without the new agent's `[allow]
/// replica_identity_full` only their inserts travel back (the window's insert-only
/// publication), with it everything does; one of them is also updated on the new host.
const NO_PK: &str = "CREATE TABLE public.audit_log (body text, n int); GRANT ALL ON public.audit_log TO app; \
     CREATE TABLE public.audit_inserts (body text); GRANT ALL ON public.audit_inserts TO app;";

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

/// hostshift's slots, publications and replication origins of the plan named `plan` (both
/// directions) in `db` of `pg` (the other tests of this binary share the clusters).
async fn hostshift_objects(pg: &rig::PgInfo, db: &str, plan: &str) -> (i64, i64, i64) {
    let like = format!("hostshift_{}%", plan.replace('-', "_"));
    let c = pg.connect(db).await;
    let n = |sql: &'static str| {
        let (c, like) = (&c, like.clone());
        async move {
            c.query_one(sql, &[&like])
                .await
                .unwrap_or_else(|e| panic!("{sql} on port {}: {e:?}", pg.port))
                .get::<_, i64>(0)
        }
    };
    (
        n("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1").await,
        n("SELECT count(*) FROM pg_publication WHERE pubname LIKE $1").await,
        n("SELECT count(*) FROM pg_replication_origin WHERE roname LIKE $1").await,
    )
}

/// Agents allowing the window both ways: the old one follows `app` (the forward slot) and may
/// write it (the window's follower); the new one may hold the window's slot and be frozen.
async fn round_trip_sandbox(tag: &str, name: &str) -> Sandbox {
    round_trip_sandbox_with(tag, name, Full::Neither).await.0
}

/// Which agents list `app` in `[allow] replica_identity_full`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Full {
    Neither,
    /// The new agent: the window carries the tables without a key whole.
    New,
    /// Both: the move's follow too (its copy carries FULL to the new host).
    Both,
}

async fn round_trip_sandbox_with(tag: &str, name: &str, full: Full) -> (Sandbox, rig::AgentSetup) {
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
    if full != Full::Neither {
        new_setup.replica_identity_full.push("app".into());
    }
    if full == Full::Both {
        old_setup.replica_identity_full.push("app".into());
    }
    sb.start(old_setup.clone(), new_setup).await;
    rename_plan(&sb, name);
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "the first sync: {}", out.both());
    (sb, old_setup)
}

/// `follow start` and a followed cutover that must open the window.
async fn cutover_with_window(sb: &Sandbox) {
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let out = cli_json(
        sb,
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
    assert_eq!(
        step(&out.json(), "window open")["status"],
        "done",
        "{}",
        out.stdout
    );
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
    // Without the new agent's [allow] replica_identity_full the tables without a key travel
    // insert-only, and both the window and the cutover's step say which key carries them whole.
    for said in [
        wj["databases"][0]["hint"].as_str().unwrap_or_default(),
        step(&j, "window prepare")["detail"]
            .as_str()
            .unwrap_or_default(),
    ] {
        assert!(
            said.contains("public.audit_log")
                && said.contains("only the inserts")
                && said.contains("[allow] replica_identity_full in the new host's agent config"),
            "{said}"
        );
    }
    let st = cli_json(&sb, &["status", "--json"], 30).await;
    assert_eq!(
        st.json()["rollback_window"]["state"],
        "open",
        "{}",
        st.stdout
    );
    assert_eq!(wj["databases"][0]["slot"], true, "{wj:#}");
    assert_eq!(
        hostshift_objects(old_pg, &sb.old_db, "rw-main").await.0,
        0,
        "no slot on the old host"
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db, "rw-main").await.0,
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
         UPDATE public.audit_log SET n = 3 WHERE n = 2; \
         INSERT INTO public.audit_inserts VALUES ('appended on the new host'), ('and again'); \
         CREATE TABLE public.made_after_switch (id int PRIMARY KEY); \
         INSERT INTO public.made_after_switch VALUES (1);",
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
    // Nothing of the files and storage changed on the new host: nothing left behind there.
    assert_eq!(
        j["not_carried_back"],
        serde_json::json!([]),
        "{}",
        out.stdout
    );
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
        writes.contains("audit_log")
            && writes.contains("made_after_switch")
            && !writes.contains("audit_inserts")
            && !writes.contains("assessments"),
        "the rollback reports the tables it did not carry back (no primary key and updated, created since the switch), and only them: {writes}"
    );
    // The inserts into a table without a primary key came back.
    assert_eq!(
        rig::table_rows(old_pg, &sb.old_db, "public.audit_inserts").await,
        rig::table_rows(new_pg, &sb.new_db, "public.audit_inserts").await,
        "the inserts into a table without a primary key travel back"
    );
    assert_eq!(
        rig::table_rows(old_pg, &sb.old_db, "public.audit_inserts")
            .await
            .len(),
        2
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
        hostshift_objects(old_pg, &sb.old_db, "rw-main").await,
        (0, 0, 0),
        "old host: slots, publications, origins"
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db, "rw-main").await,
        (0, 0, 0),
        "new host: slots, publications, origins"
    );
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    assert_eq!(w.json()["state"], "closed", "{}", w.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_agent_killed_during_the_window_leaves_the_wal_on_the_new_host_and_catches_up_after_its_restart()
 {
    let (mut sb, old_setup) = round_trip_sandbox_with("rw_fault", "rw-fault", Full::Neither).await;
    let (old_pg, new_pg) = (&sb.world.old_pg, &sb.world.new_pg);
    cutover_with_window(&sb).await;

    let writer = Writer::start(WriterOptions::new(new_pg, &sb.new_db, "app", "fault"));
    writer.wait_acked(30, Duration::from_secs(30)).await;
    // kill -9 of the old agent: its follower dies mid-stream.
    sb.old.as_mut().expect("old agent").kill();
    writer.wait_acked(150, Duration::from_secs(30)).await;
    let w = cli_json(&sb, &["window", "--json"], 60).await;
    assert_eq!(w.code, 0, "window with the old agent down: {}", w.both());
    let d = &w.json()["databases"][0];
    assert!(
        d["error"].as_str().is_some_and(|e| e.contains("old host"))
            && d["retained_bytes"].as_u64().is_some_and(|b| b > 0)
            && d["slot"] == true,
        "the window says the old agent is down and the new host's slot keeps the WAL: {d:#}"
    );

    // A rollback cannot drain into a host that is down: it unfreezes the new host again and
    // stops before traffic moves (exit 3); the window stays open, the new host keeps writing.
    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    assert_eq!(
        out.code,
        3,
        "rollback with the old agent down: {}",
        out.both()
    );
    let rj = out.json();
    assert!(
        rj["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped before traffic moved")),
        "{rj:#}"
    );
    assert_eq!(
        step(&rj, "unfreeze new read-only")["status"],
        "done",
        "{rj:#}"
    );
    let acked = writer.snapshot().acked.len();
    writer.wait_acked(acked + 20, Duration::from_secs(30)).await;
    let w = cli_json(&sb, &["window", "--json"], 60).await;
    assert_eq!(w.json()["state"], "open", "{}", w.stdout);

    // Back (on another port): the follower resumes by itself and catches up.
    let restarted = rig::AgentProc::start(&old_setup, &sb.dir, sb.world).await;
    sb.addresses.0 = restarted.address();
    sb.old = Some(restarted);
    sb.write_plan("");
    rename_plan(&sb, "rw-fault");
    writer.wait_acked(200, Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let w = cli_json(&sb, &["window", "--json"], 30).await;
        let d = w.json()["databases"][0].clone();
        if d["follower"] == "following" && d["error"] == "" && d["applied_lsn"] != "0/0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old host's follower resumes after the restart: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A rollback whose switch back and unfreeze fail (injected) after the drain: exit 3, the
    // window stays drained; the next rollback goes on from the switch back.
    let plan = sb.plan_path().display().to_string();
    let out = rig::cli_in(
        &sb.dir,
        &["rollback", "--yes", "--json", "--plan", &plan],
        &[("HOSTSHIFT_TEST_FAIL_AT", "undo")],
    )
    .await;
    let report = writer.stop().await;
    assert_eq!(out.code, 3, "rollback with a failing undo: {}", out.both());
    assert_eq!(
        step(&out.json(), "window catch-up")["status"],
        "done",
        "{}",
        out.stdout
    );
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    assert_eq!(w.json()["state"], "drained", "{}", w.stdout);
    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    assert_eq!(out.code, 0, "rollback again: {}", out.both());
    assert_eq!(out.json()["outcome"], "rolled-back", "{}", out.stdout);
    for t in TABLES {
        let (a, b) = (
            rig::table_rows(old_pg, &sb.old_db, &format!("public.{t}")).await,
            rig::table_rows(new_pg, &sb.new_db, &format!("public.{t}")).await,
        );
        assert_eq!(
            a, b,
            "table {t}: the old host equals the new host row by row"
        );
    }
    let ids: std::collections::BTreeSet<i64> = old_pg
        .connect(&sb.old_db)
        .await
        .query("SELECT id FROM public.assessments", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&i64> = report.acked.iter().filter(|i| !ids.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes on the new host, missing on the old host after the rollback: {missing:?}",
        report.acked.len()
    );
    assert_eq!(
        hostshift_objects(old_pg, &sb.old_db, "rw-fault").await,
        (0, 0, 0)
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db, "rw-fault").await,
        (0, 0, 0)
    );
}

/// Polls `hostshift window --json` (30 s at most) until the first database matches.
async fn poll_window(sb: &Sandbox, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let w = cli_json(sb, &["window", "--json"], 30).await;
        let d = w.json()["databases"][0].clone();
        if ok(&d) {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the window did not get there: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_stops_the_window_until_fixed_and_finish_drops_every_slot_leaving_the_old_host_frozen()
 {
    let sb = round_trip_sandbox("rw_finish", "rw-finish").await;
    let (old_pg, new_pg) = (&sb.world.old_pg, &sb.world.new_pg);
    // `check` says the window is possible here.
    let check = cli_json(&sb, &["check", "--json"], 60).await;
    let row = check.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| {
            c["check"]
                .as_str()
                .is_some_and(|t| t.contains("rollback window after the switch"))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no rollback window row in check: {}", check.stdout));
    assert!(
        row["result"] == "ok"
            && row["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("possible")),
        "{row:#}"
    );
    cutover_with_window(&sb).await;
    // The old host cannot be unfrozen while it follows the new one.
    let out = sb.cli(&["unfreeze", "--host", "old", "--yes"]).await;
    assert_eq!(out.code, 3, "unfreeze during the window: {}", out.both());
    assert!(
        out.stderr.contains("rollback window is open"),
        "{}",
        out.stderr
    );

    // A schema change on the new host stops the follower, naming the table; the same change on
    // the old database and a restart of the follower carry on, exactly once.
    new_pg
        .connect(&sb.new_db)
        .await
        .batch_execute(
            "ALTER TABLE public.questions ADD COLUMN note text; \
             UPDATE public.questions SET note = 'after the change' WHERE id = (SELECT min(id) FROM public.questions)",
        )
        .await
        .expect("schema change on the new host");
    let stopped = poll_window(&sb, |d| d["follower"] == "failed").await;
    // ... and names the hosts the window's way round: the new host is the source here.
    assert!(
        stopped["error"]
            .as_str()
            .is_some_and(|e| e.contains("questions")
                && e.contains("the new host has columns")
                && e.contains("Apply the same change on the old host")
                && e.contains("hostshift window --restart-follower")),
        "the follower names the changed table and the hosts: {stopped:#}"
    );
    old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(
            "BEGIN READ WRITE; ALTER TABLE public.questions ADD COLUMN note text; COMMIT;",
        )
        .await
        .expect("the same change on the old host");
    let w = cli_json(&sb, &["window", "--restart-follower", "--json"], 60).await;
    assert_eq!(w.code, 0, "window --restart-follower: {}", w.both());
    let old_c = old_pg.connect(&sb.old_db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = old_c
            .query_one(
                "SELECT count(*) FROM public.questions WHERE note = 'after the change'",
                &[],
            )
            .await
            .expect("note")
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted follower applies the update after the schema change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = cli_json(&sb, &["finish", "--yes", "--json"], 60).await;
    assert_eq!(out.code, 0, "finish: {}", out.both());
    let j = out.json();
    assert_eq!(j["closed"], true, "{j:#}");
    assert!(
        j["note"]
            .as_str()
            .is_some_and(|n| n.contains("decommission")),
        "{j:#}"
    );
    assert_eq!(
        hostshift_objects(old_pg, &sb.old_db, "rw-finish").await,
        (0, 0, 0)
    );
    assert_eq!(
        hostshift_objects(new_pg, &sb.new_db, "rw-finish").await,
        (0, 0, 0)
    );
    // Still frozen for the app.
    let app_conn = format!(
        "host={} port={} user=app dbname={} connect_timeout=5",
        old_pg.listen, old_pg.port, sb.old_db
    );
    assert!(
        tokio_postgres::connect(&app_conn, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the old host stays frozen after finish"
    );
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    assert_eq!(w.json()["state"], "closed", "{}", w.stdout);
    // A second finish has nothing to do.
    let again = cli_json(&sb, &["finish", "--yes", "--json"], 30).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(again.json()["closed"], false, "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_names_every_config_file_storage_file_and_large_object_changed_on_the_new_host_and_exits_3()
 {
    let sb = round_trip_sandbox("rw_files", "rw-files").await;
    cutover_with_window(&sb).await;
    let old_env_before = std::fs::read(&sb.old_env).expect("old env");
    let old_files_before = std::fs::read_dir(&sb.old_storage).expect("ls").count();

    // The app on the new host: a new upload, and its config file edited by hand.
    let upload_dir = sb.new_storage.join("2099");
    std::fs::create_dir_all(&upload_dir).expect("upload dir");
    std::fs::write(
        upload_dir.join("new-upload.txt"),
        b"uploaded after the switch",
    )
    .expect("upload");
    let mut env = std::fs::read_to_string(&sb.new_env).expect("new env");
    env.push_str("FEATURE_FLAG=on\n");
    std::fs::write(&sb.new_env, env).expect("edit new env");
    // ... and a large object stored by the app (logical decoding does not carry them).
    let oid: u32 = sb
        .world
        .new_pg
        .connect(&sb.new_db)
        .await
        .query_one("SELECT lo_from_bytea(0, 'an attachment')", &[])
        .await
        .expect("lo_from_bytea")
        .get(0);

    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    assert_eq!(
        out.code,
        3,
        "a rollback that leaves files behind asks for action: {}",
        out.both()
    );
    let j = out.json();
    // Traffic is back on the old host all the same; the new host keeps what was not carried.
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    let left: Vec<String> = j["not_carried_back"]
        .as_array()
        .expect("not_carried_back")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    // Named as before the carry-back existed, with the config keys that would allow it.
    assert!(
        left.iter().any(|l| l.starts_with(
            "file backend-env: changed on the new host since the switch (not carried back: the old agent's config needs sync_role = \"either\" and \"backend-env\" in [allow] write_files"
        )),
        "{left:?}"
    );
    assert!(
        left.iter().any(
            |l| l.starts_with("storage evaluations: only on the new host:")
                && l.contains("new-upload.txt")
                && l.contains("\"evaluations\" in [allow] write_storage")
        ),
        "{left:?}"
    );
    assert!(
        left.iter()
            .any(|l| l.starts_with("large objects of database ")
                && l.contains(&format!("only on the new host: oid {oid} (not carried back: the old agent's config needs sync_role = \"either\" for that)"))),
        "{left:?}"
    );
    assert_eq!(left.len(), 3, "only what changed is named: {left:?}");
    assert!(
        out.stderr.contains("NOT carried back: file backend-env"),
        "{}",
        out.stderr
    );
    // The old host untouched by them.
    assert_eq!(std::fs::read(&sb.old_env).expect("old env"), old_env_before);
    assert_eq!(
        std::fs::read_dir(&sb.old_storage).expect("ls").count(),
        old_files_before
    );
    assert!(
        upload_dir.join("new-upload.txt").exists(),
        "the new host keeps it"
    );
}

/// `relreplident` of `table` (`d` default, `f` full) in `db` of `pg`.
async fn identity(pg: &rig::PgInfo, db: &str, table: &str) -> String {
    pg.connect(db)
        .await
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("identity of {table} on port {}: {e:?}", pg.port))
        .get(0)
}

/// The tables without a key, written on the new host in every way (insert, update, delete, one
/// of two identical rows, rows that came with the move), travel back whole; the rollback exits
/// 0 naming nothing, and leaves their original identity on both hosts and no slot.
async fn a_keyless_table_travels_back_whole(tag: &str, name: &str, full: Full) {
    let (sb, _) = round_trip_sandbox_with(tag, name, full).await;
    let (old_pg, new_pg) = (&sb.world.old_pg, &sb.world.new_pg);
    old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(
            "INSERT INTO public.audit_log VALUES ('before', 10), ('before', 10), ('kept', 11); \
             INSERT INTO public.audit_inserts VALUES ('before');",
        )
        .await
        .expect("rows before the move");
    cutover_with_window(&sb).await;
    let w = cli_json(&sb, &["window", "--json"], 30).await;
    let d = &w.json()["databases"][0];
    assert!(
        d["not_followed"] == serde_json::json!([]) && d["hint"] == "",
        "nothing travels insert-only: {d:#}"
    );
    for t in ["public.audit_log", "public.audit_inserts"] {
        assert_eq!(
            identity(new_pg, &sb.new_db, t).await,
            "f",
            "{t} is REPLICA IDENTITY FULL on the new host while the window is open"
        );
    }

    // The app on the new host (each statement its own transaction).
    let new = new_pg.connect(&sb.new_db).await;
    for sql in [
        "INSERT INTO public.audit_log VALUES ('new', 1), ('dup', 2), ('dup', 2), ('gone', 4)",
        "UPDATE public.audit_log SET n = 3 WHERE body = 'new'",
        "DELETE FROM public.audit_log WHERE ctid = (SELECT ctid FROM public.audit_log WHERE body = 'dup' LIMIT 1)",
        "DELETE FROM public.audit_log WHERE body = 'gone'",
        "UPDATE public.audit_log SET n = 12 WHERE ctid = (SELECT ctid FROM public.audit_log WHERE body = 'before' LIMIT 1)",
        "DELETE FROM public.audit_log WHERE body = 'kept'",
        "INSERT INTO public.audit_inserts VALUES ('appended')",
        "UPDATE public.audit_inserts SET body = body || ' (edited)'",
    ] {
        new.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the new host: {e:?}"));
    }

    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    assert_eq!(out.code, 0, "rollback: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    assert_eq!(
        j["new_host_writes"],
        serde_json::json!([]),
        "every write was carried back: {}",
        out.stdout
    );
    // Row by row, duplicates counted (a multiset), against the frozen new host.
    let rows = rig::table_rows(old_pg, &sb.old_db, "public.audit_log").await;
    assert_eq!(
        rows,
        rig::table_rows(new_pg, &sb.new_db, "public.audit_log").await,
        "public.audit_log: the old host equals the new host"
    );
    assert_eq!(
        rows,
        [
            r#"{"body":"before","n":10}"#,
            r#"{"body":"before","n":12}"#,
            r#"{"body":"dup","n":2}"#,
            r#"{"body":"new","n":3}"#,
        ],
        "the final values of the new host"
    );
    assert_eq!(
        rig::table_rows(old_pg, &sb.old_db, "public.audit_inserts").await,
        rig::table_rows(new_pg, &sb.new_db, "public.audit_inserts").await,
        "public.audit_inserts: the old host equals the new host"
    );
    // No slot, publication or origin; the original identity back on both hosts.
    assert_eq!(hostshift_objects(old_pg, &sb.old_db, name).await, (0, 0, 0));
    assert_eq!(hostshift_objects(new_pg, &sb.new_db, name).await, (0, 0, 0));
    for t in ["public.audit_log", "public.audit_inserts"] {
        assert_eq!(
            identity(old_pg, &sb.old_db, t).await,
            "d",
            "{t} on the old host"
        );
        assert_eq!(
            identity(new_pg, &sb.new_db, t).await,
            "d",
            "{t} on the new host"
        );
    }
    for side in ["state-old", "state-new"] {
        let record = sb.dir.join(side).join("follow/identity-app.json");
        assert!(!record.exists(), "{} is forgotten", record.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_new_agents_replica_identity_full_a_table_without_a_key_travels_back_whole() {
    a_keyless_table_travels_back_whole("rw_nokey_new", "rw-nokey-new", Full::New).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identities_the_forward_follow_carried_to_the_new_host_stay_full_until_the_window_closes()
 {
    a_keyless_table_travels_back_whole("rw_nokey_both", "rw-nokey-both", Full::Both).await;
}

/// Every file of a storage tree, by path relative to it, with its bytes.
fn tree(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("inside").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every large object of `db`: OID → content.
async fn large_objects(pg: &rig::PgInfo, db: &str) -> std::collections::BTreeMap<u32, Vec<u8>> {
    pg.connect(db)
        .await
        .query(
            "SELECT oid, lo_get(oid) FROM pg_largeobject_metadata ORDER BY oid",
            &[],
        )
        .await
        .expect("large objects")
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, Vec<u8>>(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_carries_back_the_storage_config_files_and_large_objects_the_old_agent_allows_and_exits_0()
 {
    let mut sb = Sandbox::new_in(round_trip_world(), "rw_carry").await;
    let old_pg = sb.world.old_pg.connect(&sb.old_db).await;
    old_pg.batch_execute(NO_PK).await.expect("schema");
    // A large object on both hosts once synced: the new host removes it after the switch.
    let doomed: u32 = old_pg
        .query_one("SELECT lo_from_bytea(0, 'removed on the new host')", &[])
        .await
        .expect("lo_from_bytea")
        .get(0);
    // The old agent accepts writes: a blue/green pair's old host.
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    old_setup.restore_databases.push("app".into());
    old_setup.sync_role = "either".into();
    old_setup.write_storage.push("evaluations".into());
    old_setup.write_files.push("backend-env".into());
    let mut new_setup = sb.new_setup();
    new_setup.follow_databases.push("app".into());
    new_setup.freeze_databases.push("app".into());
    sb.start(old_setup, new_setup).await;
    rename_plan(&sb, "rw-carry");
    // The plan overrides PORT on the new host.
    let p = sb.plan_path();
    let text = std::fs::read_to_string(&p).expect("plan");
    std::fs::write(
        &p,
        text.replacen(
            "[[files]]\nname = \"backend-env\"\n",
            "[[files]]\nname = \"backend-env\"\noverrides = { PORT = \"4666\" }\n",
            1,
        ),
    )
    .expect("plan");
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "the first sync: {}", out.both());
    assert!(
        std::fs::read_to_string(&sb.new_env)
            .expect("new env")
            .contains("PORT=4666"),
        "the override applied on the new host"
    );
    cutover_with_window(&sb).await;
    let old_env_before = std::fs::read_to_string(&sb.old_env).expect("old env");

    // The frozen old host admits a sync write only when it names the window it follows: none,
    // or another window's id, is refused as on any frozen host.
    let mut target = TargetClient::new(sb.old().channel(&sb.world.certs_coordinator()).await);
    for window in ["", "another_window_rb"] {
        let refused = target
            .remove_large_objects(RemoveLargeObjectsRequest {
                database: "app".into(),
                oids: vec![doomed],
                rollback_window: window.into(),
            })
            .await
            .expect_err("a frozen host refuses sync writes outside its window");
        assert!(
            refused
                .message()
                .contains("this host is frozen by an earlier cutover"),
            "{refused:?}"
        );
    }

    // The app on the new host: a new upload, a changed and a deleted file, its config file
    // edited (a key the plan does not override; the overridden PORT kept), a new large object
    // and one removed.
    let upload_dir = sb.new_storage.join("2099");
    std::fs::create_dir_all(&upload_dir).expect("upload dir");
    std::fs::write(
        upload_dir.join("new-upload.txt"),
        b"uploaded after the switch",
    )
    .expect("upload");
    std::fs::write(
        sb.new_storage.join("2026/01/eval-0.json"),
        b"{\"run\":0,\"score\":0.9}",
    )
    .expect("change");
    std::fs::remove_file(sb.new_storage.join("2026/02/eval-1.json")).expect("delete");
    let mut env = std::fs::read_to_string(&sb.new_env).expect("new env");
    env.push_str("FEATURE_FLAG=on\n");
    std::fs::write(&sb.new_env, &env).expect("edit new env");
    let new_db = sb.world.new_pg.connect(&sb.new_db).await;
    let created: u32 = new_db
        .query_one("SELECT lo_from_bytea(0, 'an attachment')", &[])
        .await
        .expect("lo_from_bytea")
        .get(0);
    new_db
        .execute("SELECT lo_unlink($1)", &[&doomed])
        .await
        .expect("lo_unlink");

    let out = cli_json(&sb, &["rollback", "--yes", "--json"], 120).await;
    assert_eq!(out.code, 0, "everything carried back: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    assert_eq!(
        j["not_carried_back"].as_array().map(Vec::len),
        Some(0),
        "nothing named: {}",
        out.stdout
    );
    let carried: Vec<&str> = j["carried_back"]
        .as_array()
        .expect("carried_back")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for what in [
        "file backend-env:",
        "storage evaluations:",
        "large objects of database app:",
    ] {
        assert!(
            carried.iter().any(|l| l.starts_with(what)),
            "{what} {carried:?}"
        );
    }
    assert_eq!(
        step(&j, "window carry-back")["status"],
        "done",
        "{}",
        out.stdout
    );

    // The old host's tree equals the new host's; its config file has the change with its own
    // value of the overridden key; its large objects equal the new host's.
    assert_eq!(tree(&sb.old_storage), tree(&sb.new_storage));
    assert!(!sb.old_storage.join("2026/02/eval-1.json").exists());
    assert_eq!(
        std::fs::read_to_string(&sb.old_env).expect("old env"),
        format!("{old_env_before}FEATURE_FLAG=on\n"),
        "the new host's change, with the old host's PORT"
    );
    let (on_old, on_new) = (
        large_objects(&sb.world.old_pg, &sb.old_db).await,
        large_objects(&sb.world.new_pg, &sb.new_db).await,
    );
    assert_eq!(on_old, on_new);
    assert_eq!(
        on_old.get(&created).map(Vec::as_slice),
        Some(&b"an attachment"[..])
    );
    assert!(!on_old.contains_key(&doomed));
}
