//! Database sync and verify between two real clusters through two real agents: the seeded app
//! schema (foreign keys, sequences, jsonb, a view, a function and trigger, pgcrypto, large
//! objects, a non-superuser owner) arrives whole; reruns copy only what differs; verify catches a
//! single changed row; the old database is never changed; writes happen only where allowed.
//! The post-data section (indexes, constraints, triggers) is applied entry by entry on two
//! connections: an apply cut off halfway is completed by the next one, each object once.

use std::time::Duration;

use futures::StreamExt;
use hostshift::lab::seed;
use hostshift_agent::config::DatabaseConfig;
use hostshift_agent::postgres::schema::{POST_DATA_PARALLELISM, SchemaApplied};
use hostshift_agent::postgres::{self as pg, Conn, PgSyncError, SchemaBuffer, Section, Selection};
use hostshift_tests::rig::{self, Sandbox};
use tokio_util::sync::CancellationToken;

/// Longest a schema dump or apply of the seeded database may take in a test.
const SCHEMA_DEADLINE: Duration = Duration::from_secs(120);

async fn digest(sb: &Sandbox, old: bool) -> std::collections::BTreeMap<String, String> {
    let (pg, db) = if old {
        (&sb.world.old_pg, &sb.old_db)
    } else {
        (&sb.world.new_pg, &sb.new_db)
    };
    seed::content_digest(&pg.connect(db).await)
        .await
        .expect("content digest")
}

#[tokio::test]
async fn sync_moves_the_whole_app_database_and_verify_is_equal() {
    let mut sb = Sandbox::new("db_round_trip").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let before = digest(&sb, true).await;

    let out = sb.cli(&["sync", "--json", "--only", "db"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["units"][0]["kind"], "database");
    assert_eq!(j["units"][0]["files"].as_u64(), Some(6), "{}", out.stdout);

    assert_eq!(
        digest(&sb, false).await,
        before,
        "target content (tables, sequences, large objects) equals the source's"
    );
    assert_eq!(
        digest(&sb, true).await,
        before,
        "the old database is unchanged"
    );

    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let owner: String = new
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'users'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, "app", "ownership by the non-superuser role arrives");
    let view: i64 = new
        .query_one(
            "SELECT count(*) FROM pg_views WHERE schemaname = 'public'",
            &[],
        )
        .await
        .expect("views")
        .get(0);
    assert!(view >= 1, "the view arrives");
    let fks: i64 = new
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'",
            &[],
        )
        .await
        .expect("fks")
        .get(0);
    assert!(fks >= 5, "foreign keys arrive ({fks})");
    if sb.world.seed.pgcrypto {
        let ext: i64 = new
            .query_one(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'",
                &[],
            )
            .await
            .expect("ext")
            .get(0);
        assert_eq!(ext, 1, "pgcrypto arrives");
    }
    let old_last: i64 = sb
        .world
        .old_pg
        .connect(&sb.old_db)
        .await
        .query_one("SELECT last_value FROM users_id_seq", &[])
        .await
        .expect("seq")
        .get(0);
    let next: i64 = new
        .query_one("SELECT nextval('users_id_seq')", &[])
        .await
        .expect("nextval")
        .get(0);
    assert_eq!(
        next,
        old_last + 1,
        "sequences continue after the source's position"
    );

    let verify = sb.cli(&["verify", "--json"]).await;
    let vj = verify.json();
    let tables: Vec<&serde_json::Value> = vj["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["kind"] == "table")
        .collect();
    assert_eq!(tables.len(), 6, "{}", verify.stdout);
    // nextval above moved the new side's sequence on purpose: verify must notice exactly that.
    let seq = vj["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["kind"] == "sequences")
        .expect("sequences row");
    assert_eq!(seq["equal"], false, "{}", verify.stdout);
    assert!(
        tables.iter().all(|t| t["equal"] == true),
        "{}",
        verify.stdout
    );
}

#[tokio::test]
async fn a_rerun_copies_only_the_table_that_changed_and_verify_catches_a_single_row() {
    let mut sb = Sandbox::new("db_delta").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    assert_eq!(
        sb.cli(&["sync", "--only", "db", "--relay"]).await.code,
        0,
        "relay mode works for databases too"
    );

    let plan = sb.plan_path().display().to_string();
    let again = hostshift_tests::rig::cli_in(
        &sb.dir,
        &["sync", "--json", "--only", "db", "--plan", &plan],
        &[("HOSTSHIFT_LOG", "hostshift=debug")],
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.both());
    // HOSTSHIFT_LOG=debug names each phase of the rerun, nested, with its time.
    for span in [
        "unit{kind=database name=app}",
        "unit{kind=database name=app}:db{step=tables}",
        "unit{kind=database name=app}:db{step=compare}",
        "unit{kind=database name=app}:db{step=data}",
        "unit{kind=database name=app}:db{step=sequences}",
    ] {
        assert!(
            again
                .stderr
                .lines()
                .any(|l| l.contains(span) && l.contains("ends ms=")),
            "no span {span} ending in the debug log:\n{}",
            again.stderr
        );
    }
    let u = &again.json()["units"][0];
    assert_eq!(
        (
            u["status"].as_str(),
            u["files"].as_u64(),
            u["skipped_files"].as_u64()
        ),
        (Some("unchanged"), Some(0), Some(6)),
        "{}",
        again.stdout
    );

    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute("UPDATE questions SET prompt = prompt || ' (edited)' WHERE id = 3")
        .await
        .expect("update");
    let delta = sb.cli(&["sync", "--json", "--only", "db"]).await;
    assert_eq!(delta.code, 0, "{}", delta.both());
    let u = &delta.json()["units"][0];
    assert_eq!(
        (u["files"].as_u64(), u["skipped_files"].as_u64()),
        (Some(1), Some(5)),
        "{}",
        delta.stdout
    );
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);

    // One changed row on the new host: verify names the table and says the counts are equal.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    new.batch_execute("UPDATE users SET email = 'x@example.com' WHERE id = 11")
        .await
        .expect("update");
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout
            .contains("DIFFERS table app public.users: same row count, content differs"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("table app public.users"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn verify_compares_the_schema_and_a_rerun_completes_a_post_data_that_never_finished() {
    let mut sb = Sandbox::new("db_half_post_data").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    assert_eq!(sb.cli(&["sync"]).await.code, 0);
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    // What a first sync killed in the middle of its post-data leaves: the data is all there,
    // some indexes are not, and the journal never recorded the post-data as done.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    new.batch_execute("DROP INDEX users_email_lower_idx; DROP INDEX questions_author_id_idx")
        .await
        .expect("drop two indexes");
    let journal = sb.dir.join(".hostshift/test/journal.jsonl");
    let text = std::fs::read_to_string(&journal).expect("journal");
    let unfinished: String = text
        .lines()
        .filter(|l| !(l.contains("schema (post-data)") && l.contains("\"status\":\"done\"")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, unfinished, "the journal had the post-data done");
    std::fs::write(&journal, unfinished).expect("journal without the post-data done");

    let out = sb.cli(&["verify"]).await;
    assert_eq!(
        out.code,
        1,
        "a half-applied post-data is not equal: {}",
        out.both()
    );
    assert!(
        out.stdout.contains("schema app") && out.stdout.contains("table public.users"),
        "verify names the schema difference: {}",
        out.stdout
    );

    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(
        out.code,
        0,
        "the rerun completes the post-data: {}",
        out.both()
    );
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
}

#[tokio::test]
async fn restore_is_refused_where_the_new_agent_does_not_allow_it() {
    let mut sb = Sandbox::new("db_refused").await;
    let mut new = sb.new_setup();
    new.restore_databases.clear();
    sb.start(sb.old_setup(), new).await;
    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("add it to [allow] restore_databases"),
        "{}",
        out.stdout
    );
    let n: i64 = sb
        .world
        .new_pg
        .connect(&sb.new_db)
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing was written to the new database");
}

#[tokio::test]
async fn the_old_agent_refuses_to_restore_into_its_own_database() {
    // Sync normally, change a row on the new host, then swap the roles in the plan: the "old"
    // agent (nothing in [allow]) is now asked to take the changed table. It must refuse, and its
    // database must stay exactly as it was.
    let mut sb = Sandbox::new("db_old_refuses").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    assert_eq!(sb.cli(&["sync", "--only", "db"]).await.code, 0);
    sb.world
        .new_pg
        .connect(&sb.new_db)
        .await
        .batch_execute("UPDATE users SET email = 'changed-on-new@example.com' WHERE id = 5")
        .await
        .expect("update");
    let before = digest(&sb, true).await;
    let plan = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let (a, b) = (&sb.addresses.0, &sb.addresses.1);
    let swapped = plan
        .replace(&format!("address = \"{a}\"\nagent = \"old\""), "@@OLD@@")
        .replace(
            &format!("address = \"{b}\"\nagent = \"new\""),
            &format!("address = \"{a}\"\nagent = \"old\""),
        )
        .replace("@@OLD@@", &format!("address = \"{b}\"\nagent = \"new\""));
    std::fs::write(sb.plan_path(), swapped).expect("plan");
    let out = sb.cli(&["sync", "--only", "db", "--relay"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("does not allow writing database"),
        "{}",
        out.stdout
    );
    assert_eq!(
        digest(&sb, true).await,
        before,
        "the old host's database is untouched"
    );
}

/// The sandbox's two databases as the agents' configs declare them.
fn databases(sb: &Sandbox) -> (DatabaseConfig, DatabaseConfig) {
    let config = |conninfo: String| DatabaseConfig {
        name: "app".into(),
        conninfo,
        password_file: None,
        ca_file: None,
    };
    (
        config(sb.world.old_pg.conninfo(&sb.old_db)),
        config(sb.world.new_pg.conninfo(&sb.new_db)),
    )
}

/// One schema section of the old database, as `pg_dump` writes it.
async fn dump(sb: &Sandbox, src: &DatabaseConfig, section: Section) -> Vec<u8> {
    let collect = async {
        let stream = pg::dump_section(
            src,
            &sb.world.old_pg.bin_dir,
            section,
            &Selection::all(),
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("pg_dump {section:?}: {e}"));
        let mut stream = std::pin::pin!(stream);
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("pg_dump {section:?}: {e}")));
        }
        text
    };
    tokio::time::timeout(SCHEMA_DEADLINE, collect)
        .await
        .expect("pg_dump finished in time")
}

/// Applies `text` as `section` on [`POST_DATA_PARALLELISM`] connections to `dst`.
async fn apply(
    dst: &DatabaseConfig,
    section: Section,
    text: &[u8],
) -> Result<SchemaApplied, PgSyncError> {
    let mut conns = Vec::new();
    for _ in 0..POST_DATA_PARALLELISM {
        conns.push(
            Conn::connect(dst)
                .await
                .expect("connect to the new database"),
        );
    }
    let mut buffer = SchemaBuffer::new("app", section);
    buffer.push(text).expect("within the limit");
    tokio::time::timeout(SCHEMA_DEADLINE, buffer.apply_on(&conns))
        .await
        .expect("the apply finished in time")
}

/// Entries of a `pg_dump` text that succeed however often they run (they create nothing that
/// could be found already there).
fn idempotent(text: &str) -> usize {
    ["COMMENT", "ACL", "DEFAULT ACL", "INDEX ATTACH"]
        .iter()
        .map(|t| text.matches(&format!("; Type: {t}; ")).count())
        .sum()
}

/// Where the `n`th TOC entry header of a `pg_dump` text starts.
fn nth_entry(text: &str, n: usize) -> usize {
    text.match_indices("\n--\n-- Name: ")
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("the dump has fewer than {} entries", n + 1))
}

#[tokio::test]
async fn a_post_data_apply_cut_off_halfway_is_completed_by_the_next_with_each_object_once() {
    let sb = Sandbox::new("db_post_data_resume").await;
    let (src, dst) = databases(&sb);
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    // Beyond the seeded schema: a partitioned table (its index is attached per partition, and a
    // foreign key references it), an exclusion constraint, a disabled trigger (two statements in
    // one entry) and a comment on an index.
    old.batch_execute(
        r#"
        CREATE EXTENSION IF NOT EXISTS btree_gist;
        CREATE TABLE shards (id int NOT NULL, region text NOT NULL, PRIMARY KEY (id, region))
            PARTITION BY LIST (region);
        CREATE TABLE shards_eu PARTITION OF shards FOR VALUES IN ('eu');
        CREATE TABLE shards_us PARTITION OF shards FOR VALUES IN ('us');
        CREATE INDEX shards_region_idx ON shards (region);
        CREATE TABLE placements (id int PRIMARY KEY, shard int, region text,
            FOREIGN KEY (shard, region) REFERENCES shards);
        CREATE TABLE bookings (room int, during tsrange,
            EXCLUDE USING gist (room WITH =, during WITH &&));
        CREATE TRIGGER bookings_quiet BEFORE INSERT ON bookings
            FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
        ALTER TABLE bookings DISABLE TRIGGER bookings_quiet;
        COMMENT ON INDEX shards_region_idx IS 'one per partition';
        "#,
    )
    .await
    .expect("extra schema on the old host");
    let pre = dump(&sb, &src, Section::PreData).await;
    apply(&dst, Section::PreData, &pre)
        .await
        .expect("pre-data applies");
    let post = String::from_utf8(dump(&sb, &src, Section::PostData).await).expect("UTF-8");
    let entries = post.matches("\n--\n-- Name: ").count();
    assert!(entries >= 20, "{entries} entries:\n{post}");

    // The first half only, as if the sync had been killed while applying it.
    let half = &post[..nth_entry(&post, entries / 2)];
    let first = apply(&dst, Section::PostData, half.as_bytes())
        .await
        .expect("the first half applies");
    assert_eq!(first.entries, entries / 2);
    assert!(first.already_present.is_empty(), "{first:?}");

    let second = apply(&dst, Section::PostData, post.as_bytes())
        .await
        .expect("the whole section applies over the half-applied one");
    assert_eq!(second.entries, entries);
    assert_eq!(second.connections, POST_DATA_PARALLELISM);
    // The first half's objects are found in place and skipped; only entries that cannot find
    // their object in place (comments, grants, index attachments) run again.
    assert_eq!(
        second.already_present.len(),
        entries / 2 - idempotent(half),
        "{second:?}"
    );
    assert_eq!(
        second.applied + second.already_present.len(),
        entries,
        "{second:?}"
    );
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let (want, got) = (
        rig::post_data_objects(&old).await,
        rig::post_data_objects(&new).await,
    );
    assert!(
        want.iter()
            .any(|o| o.contains("placements_shard_region_fkey")),
        "{want:#?}"
    );
    assert!(
        want.iter().any(|o| o.contains("bookings_quiet D")),
        "{want:#?}"
    );
    assert_eq!(got, want, "every index, constraint and trigger, each once");

    // Once more: everything is in place, nothing fails, nothing is created twice.
    let third = apply(&dst, Section::PostData, post.as_bytes())
        .await
        .expect("a third apply");
    assert_eq!(
        third.already_present.len(),
        entries - idempotent(&post),
        "{third:?}"
    );
    assert_eq!(rig::post_data_objects(&new).await, want);
}

#[tokio::test]
async fn a_post_data_entry_failing_for_another_reason_stops_the_apply_naming_it() {
    let sb = Sandbox::new("db_post_data_error").await;
    let (src, dst) = databases(&sb);
    let pre = dump(&sb, &src, Section::PreData).await;
    apply(&dst, Section::PreData, &pre)
        .await
        .expect("pre-data applies");
    let mut post = dump(&sb, &src, Section::PostData).await;
    post.extend_from_slice(
        b"\n--\n-- Name: users users_shadow_trg; Type: TRIGGER; Schema: public; Owner: app\n--\n\n\
          CREATE TRIGGER users_shadow_trg BEFORE UPDATE ON public.no_such_table \
          FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();\n",
    );
    let e = apply(&dst, Section::PostData, &post)
        .await
        .expect_err("a trigger on a table that does not exist");
    assert!(
        matches!(&e, PgSyncError::Query { code: Some(c), .. } if c == "42P01"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("post-data entry TRIGGER users users_shadow_trg (schema public)"),
        "{msg}"
    );
    assert!(msg.contains("no_such_table"), "{msg}");
    // The entries before it stay: applying again (once the cause is fixed) completes the rest.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let objects = rig::post_data_objects(&new).await;
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("constraint users.users_pkey")),
        "{objects:#?}"
    );
}

/// A big table (more rows than one copy piece) with a burst of new rows at its end and one edited
/// row far from it: a rerun re-copies a few key ranges, not the table, and the hosts end equal.
#[tokio::test]
async fn a_big_table_is_copied_by_pages_and_a_rerun_recopies_only_the_changed_key_ranges() {
    let mut sb = Sandbox::new("db_big_delta").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, at timestamptz NOT NULL);
         INSERT INTO events SELECT g, 'k' || (g % 7), '2026-01-01'::timestamptz + g * interval '1 s'
           FROM generate_series(1, 300000) g;
         ANALYZE events;",
    )
    .await
    .expect("a big table");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let index_scans = || async {
        let c = sb.world.old_pg.connect(&sb.old_db).await;
        c.query_one(
            "SELECT idx_scan FROM pg_stat_user_tables WHERE relname = 'events'",
            &[],
        )
        .await
        .expect("index scans of events")
        .get::<_, Option<i64>>(0)
        .unwrap_or(0)
    };
    let scans_before = index_scans().await;
    let first = sb.cli(&["sync", "--json", "--only", "db"]).await;
    assert_eq!(first.code, 0, "{}", first.both());
    // The first copy splits the big table by heap pages: its two pieces are read without the
    // key's index (key ranges would be two index scans).
    let u = &first.json()["units"][0];
    assert_eq!(
        u["ranges"].as_u64(),
        u["files"].as_u64().map(|tables| tables + 1),
        "one piece per table, two for the big one: {}",
        first.stdout
    );
    assert_eq!(
        index_scans().await,
        scans_before,
        "the first copy read the big table by pages, not through its index"
    );
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);

    old.batch_execute(
        "INSERT INTO events SELECT g, 'late', now() FROM generate_series(300001, 300500) g;
         UPDATE events SET kind = 'edited' WHERE id = 1234;",
    )
    .await
    .expect("changes");
    let again = sb.cli(&["sync", "--json", "--only", "db"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    let u = &again.json()["units"][0];
    assert_eq!(
        u["files"].as_u64(),
        Some(1),
        "one table differed: {}",
        again.stdout
    );
    let ranges = u["ranges"].as_u64().expect("ranges");
    assert!(
        (1..=4).contains(&ranges),
        "a few key ranges, not the whole table: {}",
        again.stdout
    );
    // Far fewer bytes than the table itself (300k rows ≈ 10 MB in binary COPY).
    assert!(
        u["bytes"].as_u64().expect("bytes") < 2_000_000,
        "{}",
        again.stdout
    );
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);
    let events = |client: tokio_postgres::Client| async move {
        client
            .query_one(
                "SELECT count(*), md5(string_agg(md5(e::text), '' ORDER BY id)) FROM events e",
                &[],
            )
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .expect("digest events")
    };
    let (on_old, on_new) = (
        events(sb.world.old_pg.connect(&sb.old_db).await).await,
        events(sb.world.new_pg.connect(&sb.new_db).await).await,
    );
    assert_eq!(on_old.0, 300_500);
    assert_eq!(on_old, on_new, "the big table is equal on both hosts");
}

#[tokio::test]
async fn a_sync_adds_role_attributes_but_never_takes_one_from_an_existing_role() {
    let mut sb = Sandbox::new("sync_keeps_createdb").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // A role the database uses: on the old host a plain login; on the new host it already
    // exists, not a login yet but with CREATEDB and CREATEROLE its admin gave it there.
    let role = format!("reporter_{}", sb.old_db);
    sb.world
        .old_pg
        .connect("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 7"))
        .await
        .expect("old role");
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(&format!("GRANT SELECT ON public.users TO \"{role}\""))
        .await
        .expect("grant");
    let new_admin = sb.world.new_pg.connect("postgres").await;
    new_admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" NOLOGIN CREATEDB CREATEROLE"
        ))
        .await
        .expect("existing new role");

    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let row = new_admin
        .query_one(
            "SELECT rolcreatedb, rolcreaterole, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("role on the new host");
    let (createdb, createrole, login, limit): (bool, bool, bool, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(createdb, "CREATEDB kept: {}", out.both());
    assert!(createrole, "CREATEROLE kept: {}", out.both());
    assert!(login, "LOGIN added, as the old host's role has it");
    assert_eq!(limit, 7, "the connection limit copied");
    new_admin
        .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
        .await
        .ok();
}

#[tokio::test]
async fn a_first_copy_builds_a_big_tables_indexes_while_the_others_load_each_object_once() {
    let mut sb = Sandbox::new("db_early_indexes").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = sb.plan_path().display().to_string();
    // Every table counts as big: each table whose data is in before the last piece gets its
    // indexes and keys built right away, the rest in the post-data step.
    let out = rig::cli_in(
        &sb.dir,
        &["sync", "--json", "--only", "db", "--plan", &plan],
        &[("HOSTSHIFT_EARLY_INDEX_BYTES", "1")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.both());

    let journal = rig::cutover::read_journal(&sb.dir.join(".hostshift/test/journal.jsonl"));
    let early: Vec<String> = journal
        .iter()
        .filter(|e| e["status"] == "done")
        .filter_map(|e| e["unit"].as_str())
        .filter(|u| u.starts_with("database app schema (post-data, indexes of "))
        .map(str::to_string)
        .collect();
    assert!(
        !early.is_empty(),
        "no early index build in the journal: {journal:#?}"
    );
    let post = journal
        .iter()
        .position(|e| e["unit"] == "database app schema (post-data)" && e["status"] == "started");
    let last_early = journal.iter().rposition(|e| {
        e["status"] == "done"
            && e["unit"]
                .as_str()
                .is_some_and(|u| u.contains("(post-data, indexes of "))
    });
    assert!(
        matches!((last_early, post), (Some(a), Some(b)) if a < b),
        "the early builds end before the post-data step starts: {journal:#?}"
    );

    // Each index, key, foreign key and trigger is there once, as on the old host, and so is the
    // data.
    let (old, new) = (
        sb.world.old_pg.connect(&sb.old_db).await,
        sb.world.new_pg.connect(&sb.new_db).await,
    );
    assert_eq!(
        rig::post_data_objects(&new).await,
        rig::post_data_objects(&old).await
    );
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);
}

#[tokio::test]
async fn other_tables_build_beside_a_big_tables_late_build_and_foreign_keys_wait_for_every_key() {
    let mut sb = Sandbox::new("db_builds_beside").await;
    // `big` is the only table over the early-build size (~17 MB of pages, all but 150 of their
    // rows deleted: big, yet quick to copy): copied first, its indexes start building while the
    // rest loads — `bulk`, smaller in bytes but 300,000 rows in two pieces, makes sure the copy
    // does not end with big's piece. Two of
    // big's indexes sleep per row on the new host only (~6 s each, on both post-data
    // connections), so its build is still under way when the copy ends; the unique index
    // `leaf`'s foreign key references sorts after them, so it exists only at the end of that
    // build: a foreign key added before every build is done would fail.
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "CREATE FUNCTION public.slow_on_new(i integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE
             SET search_path = pg_catalog AS $$
         BEGIN
             IF pg_catalog.current_database() LIKE '%\\_new' THEN
                 PERFORM pg_catalog.pg_sleep(0.04);
             END IF;
             RETURN i;
         END $$;
         CREATE TABLE public.big (id integer PRIMARY KEY, code text NOT NULL, pad text NOT NULL)
             WITH (autovacuum_enabled = false);
         INSERT INTO public.big SELECT i, 'c' || i, md5(i::text) FROM generate_series(1, 250000) i;
         DELETE FROM public.big WHERE id > 150;
         CREATE INDEX aa_big_slow_1 ON public.big (public.slow_on_new(id));
         CREATE INDEX ab_big_slow_2 ON public.big (public.slow_on_new(-id));
         CREATE UNIQUE INDEX zz_big_code ON public.big (code);
         CREATE TABLE public.leaf (id integer PRIMARY KEY, code text REFERENCES public.big (code));
         INSERT INTO public.leaf SELECT i, 'c' || (i % 150 + 1) FROM generate_series(1, 500) i;
         CREATE TABLE public.bulk (id integer PRIMARY KEY, v integer NOT NULL);
         INSERT INTO public.bulk SELECT i, i % 7 FROM generate_series(1, 300000) i;
         ANALYZE public.big; ANALYZE public.bulk;",
    )
    .await
    .expect("the big table and its leaf on the old host");
    let big_bytes: i64 = old
        .query_one("SELECT pg_table_size('public.big')", &[])
        .await
        .expect("big's size")
        .get(0);
    let others: i64 = old
        .query_one(
            "SELECT coalesce(max(pg_table_size(c.oid)), 0) FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname <> 'big'",
            &[],
        )
        .await
        .expect("the other tables' sizes")
        .get(0);
    assert!(
        big_bytes > others,
        "big ({big_bytes} bytes) must be the biggest table (the largest other: {others})"
    );
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = sb.plan_path().display().to_string();
    let early = big_bytes.to_string();
    let out = rig::cli_in(
        &sb.dir,
        &["sync", "--json", "--only", "db", "--plan", &plan],
        &[("HOSTSHIFT_EARLY_INDEX_BYTES", early.as_str())],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.both());

    let journal = rig::cutover::read_journal(&sb.dir.join(".hostshift/test/journal.jsonl"));
    let at = |unit: &dyn Fn(&str) -> bool, status: &str| {
        journal
            .iter()
            .position(|e| e["status"] == status && e["unit"].as_str().is_some_and(unit))
    };
    let big_built = at(
        &|u| u == "database app schema (post-data, indexes of public.big)",
        "done",
    );
    let others_started = at(
        &|u| u == "database app schema (post-data, the other tables' indexes)",
        "started",
    );
    let others_done = at(
        &|u| u == "database app schema (post-data, the other tables' indexes)",
        "done",
    );
    let last_piece = journal.iter().rposition(|e| {
        e["status"] == "done" && e["unit"].as_str().is_some_and(|u| u.starts_with("table "))
    });
    let post = at(&|u| u == "database app schema (post-data)", "started");
    // The other tables' builds start once the copy ended, while big's still runs, and end before
    // it; the post-data step (foreign keys, triggers) starts only after both.
    assert!(
        matches!(
            (last_piece, others_started, others_done, big_built, post),
            (Some(l), Some(s), Some(o), Some(b), Some(p)) if l < s && o < b && b < p
        ),
        "copy end {last_piece:?} < others' builds {others_started:?}..{others_done:?} < big's build done {big_built:?} < post-data {post:?}: {journal:#?}"
    );

    // Every index, key (the foreign key to big's late unique index too) and trigger once, and
    // the same data.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    assert_eq!(
        rig::post_data_objects(&new).await,
        rig::post_data_objects(&old).await
    );
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);
}

#[tokio::test]
async fn a_first_copy_by_pages_under_moving_rows_is_one_snapshot_no_row_twice_or_lost() {
    let mut sb = Sandbox::new("db_pages_live").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    // Full pages (fillfactor 100): an update cannot stay on its page, so each transfer moves two
    // rows to other pages, mostly past the first piece's pages.
    old.batch_execute(
        "CREATE TABLE ledger (id bigint PRIMARY KEY, balance bigint NOT NULL, pad text NOT NULL)
           WITH (fillfactor = 100);
         INSERT INTO ledger SELECT g, 100, repeat('x', 40) FROM generate_series(1, 300000) g;
         ANALYZE ledger;",
    )
    .await
    .expect("a big ledger");
    sb.start(sb.old_setup(), sb.new_setup()).await;

    // Transfers between a row of the first pages and a row of the last ones, one transaction
    // each: the ledger's row count and total never change in any snapshot.
    let stop = CancellationToken::new();
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, committed) = (stop.clone(), committed.clone());
        let client = sb.world.old_pg.connect(&sb.old_db).await;
        tokio::spawn(async move {
            let mut n: i64 = 0;
            while !stop.is_cancelled() {
                n += 1;
                let (a, b) = (1 + (n * 7919) % 30_000, 270_000 + (n * 104_729) % 30_000);
                client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE ledger SET balance = balance - 1 WHERE id = {a};
                         UPDATE ledger SET balance = balance + 1 WHERE id = {b}; COMMIT;"
                    ))
                    .await
                    .expect("a transfer");
                committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let count = || committed.load(std::sync::atomic::Ordering::SeqCst);
    rig::eventually(
        Duration::from_secs(30),
        "the writer commits transfers",
        || async { (count() >= 20).then_some(()) },
    )
    .await;
    let before = count();
    let out = sb.cli(&["sync", "--json", "--only", "db"]).await;
    let during = count() - before;
    stop.cancel();
    writer.await.expect("writer");
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(during > 0, "no transfer committed while the sync ran");
    let u = &out.json()["units"][0];
    assert!(
        u["ranges"].as_u64() > u["files"].as_u64(),
        "the ledger was copied in pieces: {}",
        out.stdout
    );

    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let row = new
        .query_one(
            "SELECT count(*), count(DISTINCT id), sum(balance)::int8 FROM ledger",
            &[],
        )
        .await
        .expect("the copied ledger");
    let (rows, ids, total): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (rows, ids, total),
        (300_000, 300_000, 30_000_000),
        "every row once, at one moment ({during} transfers committed during the sync)"
    );
    // The next sync brings the transfers since the snapshot.
    let again = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(digest(&sb, false).await, digest(&sb, true).await);
}
