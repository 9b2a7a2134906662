//! `hostshift cutover` of a followed database, on real clusters (old: wal_level = logical)
//! through real agents: the app keeps writing on the old host while `follow start` runs and
//! into the cutover's read-only freeze (its refused writes are fine); the freeze waits for the
//! follower to apply up to the old host's position instead of comparing every table, settles
//! sequences and large objects, and copies only the tables the follower does not carry (no
//! replica identity). Afterwards every acknowledged write is on the new host with its final
//! value (row by row), the gates passed without pausing the app, and no slot or publication
//! remains on the old host.

use std::time::Duration;

use hostshift_tests::rig::cutover::read_journal;
use hostshift_tests::rig::writer::{Writer, WriterOptions};
use hostshift_tests::rig::{self, Sandbox, logical_world};
use serde_json::Value;

/// The seeded app's tables, compared row by row.
const TABLES: [&str; 6] = [
    "users",
    "questions",
    "assessments",
    "project_assessments",
    "project_submissions",
    "project_evaluation_runs",
];

async fn query_text(pg: &rig::PgInfo, db: &str, sql: &str) -> String {
    pg.connect(db)
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql} on port {}: {e:?}", pg.port))
        .get(0)
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

/// hostshift's slots and publications left in the old database.
async fn leftovers(sb: &Sandbox) -> (i64, i64) {
    let (slots, pubs, _) = rig::follow_leftovers(sb, "").await;
    (slots, pubs)
}

fn step<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {j:#}"))
}

/// Agents (the old one may follow `app`), a plan named `name`, a first full sync (files and
/// storage too, for the gates).
async fn followed_sandbox(tag: &str, name: &str, schema: &str) -> Sandbox {
    followed_sandbox_with(tag, name, schema, vec![]).await
}

/// [`followed_sandbox`] with the new agent started through `new_wrapper` (e.g. `env X=Y`).
async fn followed_sandbox_with(
    tag: &str,
    name: &str,
    schema: &str,
    new_wrapper: Vec<String>,
) -> Sandbox {
    let mut sb = Sandbox::new_in(logical_world(), tag).await;
    if !schema.is_empty() {
        sb.world
            .old_pg
            .connect(&sb.old_db)
            .await
            .batch_execute(schema)
            .await
            .expect("schema");
    }
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    let mut new_setup = sb.new_setup();
    new_setup.wrapper = new_wrapper;
    sb.start(old_setup, new_setup).await;
    rename_plan(&sb, name);
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "the first sync: {}", out.both());
    sb
}

async fn cutover(sb: &Sandbox) -> rig::CliOutput {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        sb.cli(&[
            "cutover",
            "--yes",
            "--json",
            "--skip-backup-check",
            "test: no backups here",
        ]),
    )
    .await
    .expect("the cutover ends within 120 s");
    assert_eq!(out.code, 0, "cutover: {}", out.both());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_database_cuts_over_with_the_app_writing_into_the_freeze_and_loses_no_acknowledged_write()
 {
    let sb = followed_sandbox("fc_main", "fc-main", "").await;
    let writer = Writer::start(WriterOptions::new(
        &sb.world.old_pg,
        &sb.old_db,
        "app",
        "fc",
    ));
    writer.wait_acked(20, Duration::from_secs(30)).await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let acked_at_start = writer.snapshot().acked.len();
    writer
        .wait_acked(acked_at_start + 50, Duration::from_secs(30))
        .await;
    // Not in the stream: a large object and a sequence moved while following.
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "SELECT lo_from_bytea(777001, 'written while followed'); SELECT setval('questions_id_seq', 5000)",
    )
    .await
    .expect("large object and sequence on the old host");

    let st = sb.cli(&["follow", "status", "--json"]).await;
    assert_eq!(st.code, 0, "follow status: {}", st.both());
    // The app keeps writing: the gates pass on the follower's state, no clean verify needed.
    let out = cutover(&sb).await;
    let j = out.json();
    let report = writer.stop().await;
    eprintln!(
        "freeze {} ms; steps: {}",
        j["freeze_ms"],
        j["steps"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|s| format!("{} {} ms", s["name"], s["ms"]))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    assert!(
        report.refused_read_only + report.sessions_lost > 0,
        "the writer wrote into the freeze and was refused there: {report:?}"
    );
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    // The new cluster runs wal_level = replica: no rollback window, and the cutover says so.
    assert!(
        out.stderr.contains("window prepare: skipped")
            && out.stderr.contains("no rollback window")
            && out.stderr.contains("wal_level = replica"),
        "the cutover says it opened no rollback window: {}",
        out.stderr
    );

    let fresh = j["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .find(|g| g["name"] == "verify fresh")
        .expect("verify fresh gate");
    assert!(
        fresh["ok"] == true && fresh["detail"].as_str().unwrap_or("").contains("followed"),
        "the freshness gate used the follower: {fresh:#}"
    );

    // The follow path: caught up by position, the delta compared no followed table.
    let catch_up = step(&j, "catch-up");
    assert_eq!(catch_up["status"], "done", "{catch_up:#}");
    assert!(
        catch_up["detail"]
            .as_str()
            .is_some_and(|d| d.contains("applied up to")),
        "{catch_up:#}"
    );
    // The full proof runs after the switch, under the new host's snapshot taken before
    // traffic moved; the freeze window ends at the switch and does not contain it.
    let names: Vec<&str> = j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("no step {n:?}: {names:?}"))
    };
    assert!(
        at("prove") < at("hold snapshots")
            && at("hold snapshots") < at("switch")
            && at("switch") < at("prove after switch"),
        "prove (cheap) → hold snapshots → switch → prove after switch: {names:?}"
    );
    assert_eq!(
        step(&j, "hold snapshots")["status"],
        "done",
        "{}",
        out.stdout
    );
    let after = step(&j, "prove after switch");
    assert_eq!(after["status"], "done", "{after:#}");
    assert!(
        after["detail"]
            .as_str()
            .is_some_and(|d| d.contains("equal")),
        "{after:#}"
    );
    let journal = read_journal(std::path::Path::new(
        j["journal"].as_str().expect("journal path"),
    ));
    let time_of = |unit: &str, status: &str| {
        journal
            .iter()
            .filter(|e| e["phase"] == "cutover" && e["unit"] == unit && e["status"] == status)
            .map(|e| e["time_ms"].as_u64().expect("time_ms"))
            .next_back()
            .unwrap_or_else(|| panic!("no {unit} {status} in the journal"))
    };
    let freeze_start = journal
        .iter()
        .find(|e| {
            e["phase"] == "cutover"
                && e["unit"].as_str().is_some_and(|u| u.starts_with("freeze "))
                && e["status"] == "started"
        })
        .and_then(|e| e["time_ms"].as_u64())
        .expect("the freeze's first line");
    // `method = "none"`: the switch is the cutover telling the operator to move traffic.
    let switched_at = time_of("switch", "skipped");
    let proof_started = time_of("prove after switch", "started");
    let freeze_ms = j["freeze_ms"].as_u64().expect("freeze_ms");
    assert!(
        proof_started >= switched_at && freeze_ms <= switched_at - freeze_start + 100,
        "the freeze ({freeze_ms} ms from {freeze_start}) ends at the switch ({switched_at}), before the proof after it ({proof_started})"
    );
    let follow = &j["follow"][0];
    assert_eq!(follow["database"], "app", "{}", out.stdout);
    assert!(
        follow["lsn"].as_str().is_some_and(|l| l.contains('/')),
        "{follow:#}"
    );
    assert!(follow["waited_ms"].as_u64().is_some(), "{follow:#}");
    assert!(
        j["freeze_ms"].as_u64().is_some_and(|ms| ms > 0),
        "the freeze is reported: {}",
        out.stdout
    );
    let journal = read_journal(std::path::Path::new(
        j["journal"].as_str().expect("journal path"),
    ));
    let db_unit = journal
        .iter()
        .rev()
        .find(|e| e["phase"] == "sync" && e["unit"] == "database app" && e["status"] == "done")
        .unwrap_or_else(|| panic!("no database unit of the delta in the journal: {journal:#?}"));
    let detail = db_unit["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("carried by the follower") && detail.starts_with("0 tables differed"),
        "the delta compared no followed table by key ranges: {detail}"
    );
    assert!(
        journal
            .iter()
            .any(|e| e["unit"] == "catch-up" && e["status"] == "done"),
        "the journal records the catch-up"
    );
    assert_eq!(
        step(&j, "follow cleanup")["status"],
        "done",
        "{}",
        out.stdout
    );

    // Every acknowledged write, with its final value: the new host equals the frozen old host
    // row by row, and holds every acknowledged id.
    for t in TABLES {
        let (a, b) = (
            rig::table_rows(&sb.world.old_pg, &sb.old_db, &format!("public.{t}")).await,
            rig::table_rows(&sb.world.new_pg, &sb.new_db, &format!("public.{t}")).await,
        );
        assert!(!a.is_empty(), "{t} has rows");
        assert_eq!(
            a, b,
            "table {t}: the new host equals the old host row by row"
        );
    }
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let ids: Vec<i64> = new
        .query("SELECT id FROM public.assessments", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&i64> = report.acked.iter().filter(|i| !ids.contains(i)).collect();
    assert!(
        report.acked.len() > acked_at_start && missing.is_empty(),
        "{} acknowledged writes, missing on the new host: {missing:?}",
        report.acked.len()
    );
    // Sequences and large objects, which the stream does not carry, were settled in the freeze.
    let seqs = "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ',' ORDER BY sequencename) FROM pg_sequences";
    assert_eq!(
        query_text(&sb.world.old_pg, &sb.old_db, seqs).await,
        query_text(&sb.world.new_pg, &sb.new_db, seqs).await,
        "sequences"
    );
    assert_eq!(
        query_text(
            &sb.world.new_pg,
            &sb.new_db,
            "SELECT convert_from(lo_get(777001), 'UTF8')"
        )
        .await,
        "written while followed"
    );
    assert_eq!(
        leftovers(&sb).await,
        (0, 0),
        "no slot or publication of hostshift remains on the old host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_is_settled_in_the_freeze() {
    let sb = followed_sandbox(
        "fc_nopk",
        "fc-nopk",
        "CREATE TABLE public.fc_nopk (a int, b text); \
         INSERT INTO public.fc_nopk SELECT g, 'seed' FROM generate_series(1, 100) g; \
         GRANT ALL ON public.fc_nopk TO app;",
    )
    .await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    assert!(
        out.stdout.contains("public.fc_nopk"),
        "reported as not followed: {}",
        out.stdout
    );
    // The app's writes on it keep working while followed; the follower does not carry them.
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "INSERT INTO public.fc_nopk SELECT g, 'new' FROM generate_series(101, 150) g; \
         UPDATE public.fc_nopk SET b = 'changed' WHERE a % 10 = 0; \
         DELETE FROM public.fc_nopk WHERE a % 7 = 0;",
    )
    .await
    .expect("writes on the table without a primary key");
    // The dry run says what the freeze will copy whole, and predicts it.
    let dry = sb
        .cli(&[
            "cutover",
            "--dry-run",
            "--json",
            "--skip-backup-check",
            "test: no backups here",
        ])
        .await;
    let dj = dry.json();
    let fresh = dj["gates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == "verify fresh")
        .cloned()
        .unwrap_or_default();
    let detail = fresh["detail"].as_str().unwrap_or_default();
    assert!(
        fresh["ok"] == true
            && detail.contains("not followed, copied whole inside the freeze: public.fc_nopk (")
            && detail.contains(" ms "),
        "the dry run names the table the freeze copies whole, its size and cost: {}",
        dry.both()
    );
    assert!(
        dj["predicted_freeze_ms"].as_u64().is_some(),
        "a prediction: {}",
        dry.stdout
    );
    let out = cutover(&sb).await;
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    let nf = j["follow"][0]["not_followed"].to_string();
    assert!(nf.contains("public.fc_nopk"), "{}", out.stdout);
    assert!(
        j["delta"]["tables"].as_u64().is_some_and(|n| n >= 1),
        "the delta copied the table the follower does not carry: {}",
        out.stdout
    );
    let (a, b) = (
        rig::table_rows(&sb.world.old_pg, &sb.old_db, "public.fc_nopk").await,
        rig::table_rows(&sb.world.new_pg, &sb.new_db, "public.fc_nopk").await,
    );
    assert!(a.iter().any(|r| r.contains("changed")), "{a:?}");
    assert_eq!(a, b, "fc_nopk: equal row by row after the freeze");
    assert_eq!(leftovers(&sb).await, (0, 0), "slot and publication dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undone_cutover_of_a_followed_database_leaves_no_slot_behind() {
    let sb = followed_sandbox("fc_undo", "fc-undo", "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    assert_eq!(
        leftovers(&sb).await,
        (1, 1),
        "follow start made a slot and a publication"
    );
    // A failure after the catch-up (debug builds): the cutover is undone.
    let plan = sb.plan_path().display().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        rig::cli_in(
            &sb.dir,
            &[
                "cutover",
                "--yes",
                "--json",
                "--skip-backup-check",
                "test",
                "--plan",
                &plan,
            ],
            &[("HOSTSHIFT_TEST_FAIL_AT", "prove")],
        ),
    )
    .await
    .expect("the cutover ends within 120 s");
    assert_eq!(out.code, 1, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    assert_eq!(step(&j, "catch-up")["status"], "done", "{}", out.stdout);
    assert_eq!(
        step(&j, "follow cleanup")["status"],
        "done",
        "{}",
        out.stdout
    );
    assert_eq!(
        leftovers(&sb).await,
        (0, 0),
        "the undo dropped the slot and publication: no WAL kept on the old host"
    );
    // The old host serves writes again.
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute("UPDATE public.questions SET points = points WHERE id = (SELECT min(id) FROM public.questions)")
        .await
        .expect("the old database takes writes after the undo");

    // `hostshift rollback` removes a follow too (an abandoned migration keeps no slot).
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start again: {}", out.both());
    assert_eq!(leftovers(&sb).await, (1, 1), "a second follow start");
    let out = sb.cli(&["rollback", "--yes", "--json"]).await;
    assert_eq!(out.code, 0, "rollback: {}", out.both());
    assert_eq!(
        step(&out.json(), "follow cleanup")["status"],
        "done",
        "{}",
        out.stdout
    );
    assert_eq!(leftovers(&sb).await, (0, 0), "rollback dropped the slot");
}

/// A difference the proof after the switch finds (a row changed on the new host that the old
/// host does not have: the follower carries only the old host's changes, so it stays) switches
/// traffic back, unfreezes the old host, names the table and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_found_after_the_switch_switches_traffic_back_and_names_the_table() {
    let sb = followed_sandbox("fc_diff", "fc-diff", "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    sb.world
        .new_pg
        .connect(&sb.new_db)
        .await
        .batch_execute(
            "UPDATE public.questions SET points = points + 1 WHERE id = (SELECT min(id) FROM public.questions)",
        )
        .await
        .expect("a row changed on the new host only");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        sb.cli(&["cutover", "--yes", "--json", "--skip-backup-check", "test"]),
    )
    .await
    .expect("the cutover ends within 120 s");
    assert_eq!(out.code, 1, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    let names: Vec<&str> = j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("no step {n:?}: {names:?}"))
    };
    // Found after the switch, not inside the freeze.
    assert_eq!(step(&j, "prove")["status"], "done", "{}", out.stdout);
    let after = step(&j, "prove after switch");
    assert_eq!(after["status"], "failed", "{after:#}");
    assert!(
        at("switch") < at("prove after switch") && at("prove after switch") < at("switch back"),
        "{names:?}"
    );
    let error = j["error"].as_str().unwrap_or("");
    assert!(
        error.contains("proof after the switch") && error.contains("public.questions"),
        "the error names the table: {error}"
    );
    // The writes the new host took meanwhile are looked for, as a rollback does.
    assert_eq!(
        step(&j, "new-host writes")["status"],
        "done",
        "{}",
        out.stdout
    );
    // The old host is unfrozen and takes writes again; no slot is left behind.
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute("UPDATE public.questions SET points = points WHERE id = (SELECT min(id) FROM public.questions)")
        .await
        .expect("the old database takes writes after the proof switched traffic back");
    assert_eq!(leftovers(&sb).await, (0, 0), "the undo dropped the slot");
    let st = sb.cli(&["status", "--json"]).await;
    assert!(
        st.stdout.contains("rolled-back"),
        "status says rolled back: {}",
        st.both()
    );
}

/// Inside the freeze the proof of a followed database is cheap: the follower reached the freeze
/// position, and no data change reached the old host's WAL after it. A superuser (whom the
/// read-only freeze does not stop) writing a followed table after the catch-up fails the proof
/// inside the freeze, naming the table, before traffic moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_frozen_old_host_after_the_freeze_position_fails_the_proof_in_the_freeze() {
    write_after_the_freeze_position_fails_the_proof(
        "fc_leak",
        "fc-leak",
        "UPDATE public.questions SET points = points + 1 WHERE id = (SELECT min(id) FROM public.questions)",
    )
    .await;
}

/// The same with a row bigger than gRPC's default message limit (4 MiB): the proof reads the
/// decoded rows with the follower's limit, so it still names the table instead of failing on
/// the message's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_four_mib_written_after_the_freeze_position_still_names_its_table() {
    write_after_the_freeze_position_fails_the_proof(
        "fc_bigrow",
        "fc-bigrow",
        "UPDATE public.questions SET prompt = repeat('x', 5 * 1024 * 1024) WHERE id = (SELECT min(id) FROM public.questions)",
    )
    .await;
}

/// A superuser runs `sql` (a write to `public.questions`) on the frozen old host while the
/// cutover waits before its proof: the proof fails inside the freeze, names the table, traffic
/// never moves, and the undo leaves the old host writable without a slot.
async fn write_after_the_freeze_position_fails_the_proof(db: &str, name: &str, sql: &str) {
    let sb = followed_sandbox(db, name, "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let (cut, go) = cutover_paused_before_the_proof(&sb).await;
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(&format!("BEGIN READ WRITE; {sql}; COMMIT"))
        .await
        .expect("a superuser writes on the frozen old host");
    std::fs::write(&go, "").expect("go");
    let out = tokio::time::timeout(Duration::from_secs(120), cut)
        .await
        .expect("the cutover ends within 120 s")
        .expect("the cutover task");
    assert_eq!(out.code, 1, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{}", out.stdout);
    assert_eq!(step(&j, "prove")["status"], "failed", "{}", out.stdout);
    let error = j["error"].as_str().unwrap_or("");
    assert!(
        error.contains("changed during the freeze")
            && error.contains("public.questions")
            && error.contains("after the freeze position"),
        "the error names the table written after the freeze position: {error}"
    );
    assert!(
        !j["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s["name"] == "switch"
                || (s["name"] == "hold snapshots" && s["status"] == "done")),
        "traffic never moved (the snapshots, taken beside the proof, were not kept): {}",
        out.stdout
    );
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute("UPDATE public.questions SET points = points WHERE id = (SELECT min(id) FROM public.questions)")
        .await
        .expect("the old database takes writes after the undo");
    assert_eq!(leftovers(&sb).await, (0, 0), "the undo dropped the slot");
}

/// The catch-up wakes a follower that pauses after an empty peek, instead of waiting out the
/// pause (200 ms, most of the catch-up when the app was quiet). Here the new agent's follower
/// pauses 10 minutes (`HOSTSHIFT_TEST_IDLE_PAUSE_MS`, debug builds), far longer than the
/// catch-up may wait (the 30 s freeze budget): the cutover only switches because the catch-up
/// woke the follower, which then applied the app's last write before the freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_wakes_a_follower_pausing_after_an_empty_peek() {
    let sb = followed_sandbox_with(
        "fc_wake",
        "fc-wake",
        "",
        vec!["env".into(), "HOSTSHIFT_TEST_IDLE_PAUSE_MS=600000".into()],
    )
    .await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let marker = "woken follower";
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .execute(
            "UPDATE public.questions SET prompt = $1 WHERE id = (SELECT min(id) FROM public.questions)",
            &[&marker],
        )
        .await
        .expect("the app's last write");
    let out = cutover(&sb).await;
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    assert_eq!(step(&j, "catch-up")["status"], "done", "{}", out.stdout);
    let on_new = query_text(
        &sb.world.new_pg,
        &sb.new_db,
        "SELECT prompt FROM public.questions ORDER BY id LIMIT 1",
    )
    .await;
    assert_eq!(
        on_new, marker,
        "the write before the freeze reached the new host"
    );
}

/// Starts `hostshift cutover` with a pause right before its proof inside the freeze (the
/// catch-up done, the followers stopped) and waits until it is there; the cutover goes on once
/// the returned file exists.
async fn cutover_paused_before_the_proof(
    sb: &Sandbox,
) -> (tokio::task::JoinHandle<rig::CliOutput>, std::path::PathBuf) {
    let pause = sb.dir.join("pause");
    let (reached, go) = (pause.with_extension("reached"), pause.with_extension("go"));
    // A sandbox folder of an earlier run of this binary may still hold them.
    let _ = std::fs::remove_file(&reached);
    let _ = std::fs::remove_file(&go);
    let plan = sb.plan_path().display().to_string();
    let dir = sb.dir.clone();
    let env = format!("prove:{}", pause.display());
    let cut = tokio::spawn(async move {
        rig::cli_in(
            &dir,
            &[
                "cutover",
                "--yes",
                "--json",
                "--skip-backup-check",
                "test",
                "--plan",
                &plan,
            ],
            &[("HOSTSHIFT_TEST_PAUSE_AT", &env)],
        )
        .await
    });
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the cutover reached the proof within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (cut, go)
}

/// The proof inside the freeze peeks the old host's slot right after the catch-up stopped the
/// follower. A peek of the follower's whose caller is gone runs on in its PostgreSQL backend and
/// holds the slot for a moment: the proof then failed with "replication slot … is active for
/// PID n" and a good cutover was undone (`bench/run --only cutover`, 2026-12-08). Here a real
/// `pg_recvlogical` holds the slot from the moment the cutover reaches its proof, for 1.5 s: the
/// proof waits for the slot and the cutover switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_for_a_moment_when_the_proof_starts_delays_the_proof_instead_of_undoing_the_cutover()
 {
    let sb = followed_sandbox("fc_held", "fc-held", "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    let (cut, go) = cutover_paused_before_the_proof(&sb).await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let slot: String = old
        .query_one(
            "SELECT slot_name::text FROM pg_replication_slots \
             WHERE slot_name LIKE 'hostshift_%' AND database = current_database()",
            &[],
        )
        .await
        .expect("the follow's slot on the old host")
        .get(0);
    let recvlogical = sb.world.old_pg.bin_dir.join("pg_recvlogical");
    let mut holder = tokio::process::Command::new(&recvlogical)
        .args(["--dbname", &sb.world.old_pg.conninfo(&sb.old_db)])
        .args([
            "--slot",
            &slot,
            "--start",
            "--no-loop",
            "--file",
            "/dev/null",
        ])
        .args(["--option", "proto_version=1"])
        .args(["--option", &format!("publication_names={slot}")])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (PostgreSQL's client tools: apt-get install postgresql-client): {e}",
                recvlogical.display()
            )
        });
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active: bool = old
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("the slot's state")
            .get(0);
        if active {
            break;
        }
        if let Ok(Some(status)) = holder.try_wait() {
            panic!("pg_recvlogical ended ({status}) before it held the slot");
        }
        assert!(
            std::time::Instant::now() < until,
            "pg_recvlogical held the slot within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&go, "").expect("go");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        holder.try_wait().expect("pg_recvlogical's state").is_none(),
        "pg_recvlogical held the slot for the whole 1.5 s"
    );
    holder.kill().await.expect("stop pg_recvlogical");
    let out = tokio::time::timeout(Duration::from_secs(120), cut)
        .await
        .expect("the cutover ends within 120 s")
        .expect("the cutover task");
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    let prove = step(&j, "prove");
    assert_eq!(prove["status"], "done", "{}", out.stdout);
    assert!(
        prove["ms"].as_u64().unwrap_or(0) >= 1000,
        "the proof waited for the slot (it was held 1.5 s after the proof began): {prove}"
    );
    assert_eq!(
        leftovers(&sb).await,
        (0, 0),
        "no slot or publication remains"
    );
}

/// Starts a cutover that pauses right before its proof after the switch and kills it there (a
/// coordinator crash between the switch and the proof). `env` goes to that cutover.
async fn cutover_killed_before_the_proof_after_the_switch(sb: &Sandbox, env: &[(&str, &str)]) {
    let pause = sb.dir.join("pause-after-switch");
    let reached = pause.with_extension("reached");
    // A sandbox folder of an earlier run of this binary may still hold it.
    let _ = std::fs::remove_file(&reached);
    let _ = std::fs::remove_file(pause.with_extension("go"));
    let plan = sb.plan_path().display().to_string();
    let dir = sb.dir.clone();
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push((
        "HOSTSHIFT_TEST_PAUSE_AT".into(),
        format!("prove after switch:{}", pause.display()),
    ));
    let cut = tokio::spawn(async move {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        rig::cli_in(
            &dir,
            &[
                "cutover",
                "--yes",
                "--json",
                "--skip-backup-check",
                "test",
                "--plan",
                &plan,
            ],
            &vars,
        )
        .await
    });
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the cutover reached the proof after the switch within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed (the child is killed when its future is dropped).
    cut.abort();
    let _ = cut.await;
    let st = sb.cli(&["status", "--json"]).await;
    assert!(
        st.stdout.contains("in-progress"),
        "the killed cutover is unfinished: {}",
        st.both()
    );
}

/// A coordinator killed between the switch and the proof after it: `cutover --resume` runs the
/// proof under the snapshots the new agent still holds, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_killed_before_the_proof_after_the_switch_resumes_it_while_the_snapshot_is_held()
{
    let sb = followed_sandbox("fc_resume", "fc-resume", "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    cutover_killed_before_the_proof_after_the_switch(&sb, &[]).await;
    let out = sb.cli(&["cutover", "--resume", "--yes", "--json"]).await;
    assert_eq!(out.code, 0, "cutover --resume: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    let after = step(&j, "prove after switch");
    assert_eq!(after["status"], "done", "{after:#}");
    assert!(
        !j["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s["name"] == "delta"),
        "the resumed run copies nothing onto the new host, which served since the switch: {}",
        out.stdout
    );
    assert_eq!(leftovers(&sb).await, (0, 0), "slot and publication dropped");
}

/// The same crash, resumed after the snapshot's lease ran out: the proof cannot run any more,
/// so nothing is undone, the run exits 3 naming both ways out; `--accept-unproven` keeps the
/// new host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_resumed_after_the_snapshot_is_gone_leaves_the_decision_to_the_operator() {
    let sb = followed_sandbox("fc_gone", "fc-gone", "").await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "follow start: {}", out.both());
    cutover_killed_before_the_proof_after_the_switch(
        &sb,
        &[("HOSTSHIFT_SNAPSHOT_LEASE_SECS", "1")],
    )
    .await;
    // Without renewals the new agent closes the snapshot within its lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = sb.cli(&["cutover", "--resume", "--yes", "--json"]).await;
    assert_eq!(out.code, 3, "operator action needed: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "unproven", "{}", out.stdout);
    let error = j["error"].as_str().unwrap_or("");
    assert!(
        error.contains("cannot run any more")
            && error.contains("hostshift rollback --yes")
            && error.contains("--accept-unproven"),
        "{error}"
    );
    assert!(
        !j["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s["name"] == "switch back"
                || s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("unfreeze"))),
        "nothing undone: {}",
        out.stdout
    );
    let st = sb.cli(&["status", "--json"]).await;
    assert!(st.stdout.contains("in-progress"), "{}", st.both());
    let out = sb
        .cli(&[
            "cutover",
            "--resume",
            "--yes",
            "--accept-unproven",
            "--json",
        ])
        .await;
    assert_eq!(out.code, 0, "--accept-unproven: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{}", out.stdout);
    assert_eq!(
        step(&j, "prove after switch")["status"],
        "skipped",
        "{}",
        out.stdout
    );
    assert_eq!(leftovers(&sb).await, (0, 0), "slot and publication dropped");
}
