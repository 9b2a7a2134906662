//! `hostshift db stats`: read-only statistics of a real seeded PostgreSQL database, through a real
//! agent and the real CLI, checked against what the test reads from the database itself.

use hostshift::lab::seed;
use hostshift_tests::rig::Sandbox;

#[tokio::test]
async fn db_stats_lists_the_app_tables_with_sizes_and_a_cache_hit_ratio() {
    let mut sb = Sandbox::new("db_stats").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // Planner estimates are exact for small tables right after ANALYZE.
    let db = sb.world.old_pg.connect(&sb.old_db).await;
    db.batch_execute("ANALYZE").await.expect("analyze");
    let before = seed::content_digest(&db).await.expect("digest");

    let out = sb.cli(&["db", "stats", "--host", "old", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["host"], "old");
    let d = &j["databases"][0];
    assert_eq!(d["database"], "app");
    assert_eq!(d["server_database"], sb.old_db.as_str());
    assert!(d["size_bytes"].as_u64().expect("size") > 1_000_000, "{d}");
    let ratio = d["cache_hit_ratio"]
        .as_f64()
        .expect("a ratio once blocks were read");
    assert!((0.0..=1.0).contains(&ratio), "cache hit ratio {ratio}");
    assert!(d["max_connections"].as_u64().expect("max") > 0);
    // Our test connection is idle in this database; the agent's own session is not counted.
    let sessions: u64 = d["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["count"].as_u64().unwrap_or(0))
        .sum();
    assert!(sessions >= 1, "{d}");

    let tables = d["tables"].as_array().expect("tables");
    for (name, rows) in &sb.world.seed.rows {
        let t = tables
            .iter()
            .find(|t| t["schema"] == "public" && t["table"] == *name)
            .unwrap_or_else(|| panic!("no public.{name} in {d}"));
        let (total, table, index) = (
            t["total_bytes"].as_u64().expect("total"),
            t["table_bytes"].as_u64().expect("table"),
            t["index_bytes"].as_u64().expect("index"),
        );
        assert!(table > 0 && total == table + index, "public.{name}: {t}");
        assert_eq!(
            t["row_estimate"].as_f64(),
            Some(*rows as f64),
            "public.{name}: {t}"
        );
    }
    let totals: Vec<u64> = tables
        .iter()
        .map(|t| t["total_bytes"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] >= w[1]),
        "biggest first: {totals:?}"
    );

    let human = sb
        .cli(&["db", "stats", "--host", "old", "--database", "app"])
        .await;
    assert_eq!(human.code, 0, "{}", human.both());
    for want in [
        "Database app on the old host",
        "cache hit ratio:",
        "sessions:",
        "TABLE",
        "public.users",
        "public.questions",
    ] {
        assert!(
            human.stdout.contains(want),
            "{want:?} missing:\n{}",
            human.stdout
        );
    }

    let after = seed::content_digest(&db).await.expect("digest");
    assert_eq!(before, after, "stats must not change the database");
}

#[tokio::test]
async fn db_stats_of_an_undeclared_database_names_the_agent_config() {
    let mut sb = Sandbox::new("db_stats_undeclared").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb
        .cli(&["db", "stats", "--host", "new", "--database", "nope"])
        .await;
    assert_eq!(out.code, 2, "{}", out.both());
    assert!(
        out.stderr
            .contains("database \"nope\" is not declared in this agent's config"),
        "{}",
        out.both()
    );
    assert!(out.stderr.contains("agent-new.toml"), "{}", out.both());

    let out = sb.cli(&["db", "stats", "--database", "app"]).await;
    assert_eq!(out.code, 2, "{}", out.both());
    assert!(
        out.stderr.contains("--host old or --host new"),
        "{}",
        out.both()
    );
}
