//! Database sync and verify between two real clusters through two real agents: the seeded app
//! schema (foreign keys, sequences, jsonb, a view, a function and trigger, pgcrypto, large
//! objects, a non-superuser owner) arrives whole; reruns copy only what differs; verify catches a
//! single changed row; the old database is never changed; writes happen only where allowed.

use hostshift::lab::seed;
use hostshift_tests::rig::Sandbox;

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

    let again = sb.cli(&["sync", "--json", "--only", "db"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
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
