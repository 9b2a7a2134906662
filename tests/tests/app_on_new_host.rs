//! The app must work on the new host, not only hold equal bytes (issue 10): materialized views
//! arrive populated and `verify` compares them; storage keeps its owner and group; a missing
//! target database is created with the old one's owner and settings; a rollback names the rows
//! written on the new host and a later sync refuses to overwrite them unless told to.
//! Real clusters, real agents, real CLI, real files.

use hostshift_tests::rig::Sandbox;

fn rows_of_kind<'a>(v: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0)
}

async fn populated(c: &tokio_postgres::Client, name: &str) -> bool {
    c.query_one(
        "SELECT ispopulated FROM pg_matviews WHERE matviewname = $1",
        &[&name],
    )
    .await
    .expect("pg_matviews")
    .get(0)
}

#[tokio::test]
async fn sync_populates_materialized_views_and_verify_compares_them() {
    let mut sb = Sandbox::new("matviews").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "CREATE MATERIALIZED VIEW user_stats AS SELECT count(*) AS users, max(id) AS last FROM users;
         CREATE MATERIALIZED VIEW user_stats_2 AS SELECT users * 2 AS twice FROM user_stats;
         CREATE MATERIALIZED VIEW never_filled AS SELECT id FROM users WITH NO DATA;
         ALTER MATERIALIZED VIEW user_stats OWNER TO app;",
    )
    .await
    .expect("create the views");
    sb.start(sb.old_setup(), sb.new_setup()).await;

    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    assert!(populated(&new, "user_stats").await, "{}", out.stdout);
    assert!(
        populated(&new, "user_stats_2").await,
        "a view on a view is refreshed after it"
    );
    assert!(
        !populated(&new, "never_filled").await,
        "an empty view stays empty"
    );
    let twice: i64 = new
        .query_one("SELECT twice FROM user_stats_2", &[])
        .await
        .expect("the app's query of the view works")
        .get(0);
    let users: i64 = old
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(twice, users * 2);

    let verify = sb.cli(&["verify", "--json"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    let vj = verify.json();
    let mv = rows_of_kind(&vj, "materialized view");
    assert_eq!(mv.len(), 3, "{}", verify.stdout);
    assert!(mv.iter().all(|r| r["equal"] == true), "{}", verify.stdout);

    // Emptied on the new host: verify says so, and the next sync refreshes it.
    new.batch_execute("REFRESH MATERIALIZED VIEW user_stats_2 WITH NO DATA")
        .await
        .expect("empty it");
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 1, "{}", verify.both());
    assert!(
        verify
            .stdout
            .contains("materialized view app public.user_stats_2: not populated on the new host"),
        "{}",
        verify.stdout
    );
    let again = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert!(populated(&new, "user_stats_2").await, "{}", again.both());

    // The old host's view is stale (its table changed after its last refresh) while the new
    // host's was refreshed since: the new one holds what a refresh stores now, and verify
    // accepts that, saying so.
    old.batch_execute(
        "INSERT INTO users (email, display_name) VALUES ('late@example.com', 'Late')",
    )
    .await
    .expect("a new user on the old host");
    let again = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    new.batch_execute("REFRESH MATERIALIZED VIEW user_stats")
        .await
        .expect("refresh on the new host");
    let verify = sb.cli(&["verify", "--json"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    let j = verify.json();
    let stats = rows_of_kind(&j, "materialized view")
        .into_iter()
        .find(|r| r["name"] == "app public.user_stats")
        .expect("user_stats row")
        .clone();
    assert!(
        stats["detail"].as_str().unwrap_or("").contains("predates"),
        "{stats}"
    );
}

#[tokio::test]
async fn rollback_names_new_host_writes_and_sync_refuses_to_overwrite_them_without_the_flag() {
    let mut sb = Sandbox::new("rollback_writes").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    for args in [&["sync"][..], &["verify"][..]] {
        let out = sb.cli(args).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.both());
        if args == ["sync"] {
            assert!(
                out.stdout.contains("4 files and 6 tables ("),
                "the summary counts tables apart from files: {}",
                out.stdout
            );
        }
    }
    let out = sb
        .cli(&["cutover", "--yes", "--skip-backup-check", "test"])
        .await;
    assert_eq!(out.code, 0, "cutover: {}", out.both());

    // The app, now on the new host, writes two rows.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    new.batch_execute(
        "INSERT INTO users (email, display_name) VALUES ('n1@example.com', 'N1'), ('n2@example.com', 'N2')",
    )
    .await
    .expect("write on the new host");
    let on_new = count(&new).await;

    let out = sb.cli(&["rollback", "--yes"]).await;
    assert_eq!(out.code, 0, "rollback: {}", out.both());
    let both = out.both();
    assert!(
        both.contains("app public.users: 2 row(s) more than at the switch"),
        "the rollback names the table and the rows: {both}"
    );
    assert!(
        both.contains("move traffic back to the old host by hand now"),
        "with switch method none the operator is told to move traffic back: {both}"
    );

    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 3, "sync after the rollback: {}", out.both());
    assert!(
        out.stderr.contains("--discard-new-host-writes") && out.stderr.contains("public.users"),
        "{}",
        out.both()
    );
    assert_eq!(
        count(&new).await,
        on_new,
        "the new host's rows are untouched"
    );

    let out = sb.cli(&["sync", "--discard-new-host-writes"]).await;
    assert_eq!(out.code, 0, "sync with the flag: {}", out.both());
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    assert_eq!(count(&new).await, count(&old).await, "overwritten as asked");
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "nothing left to protect: {}", out.both());
}

#[tokio::test]
async fn storage_keeps_owner_and_group_by_name_and_verify_compares_them() {
    use std::os::unix::fs::MetadataExt;
    let mut sb = Sandbox::new("owners").await;
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("the system user nobody exists");
    // The tree belongs to a non-root user, as an app's uploads do.
    for e in walk(&sb.old_storage) {
        std::os::unix::fs::lchown(&e, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .expect("chown the old tree");
    }
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let paths = walk(&sb.new_storage);
    assert!(paths.len() >= 6, "{paths:?}");
    for p in &paths {
        let m = std::fs::symlink_metadata(p).expect("stat");
        assert_eq!(
            (m.uid(), m.gid()),
            (nobody.uid.as_raw(), nobody.gid.as_raw()),
            "{} keeps the old owner",
            p.display()
        );
    }
    let out = sb.cli(&["sync", "--only", "files"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let verify = sb.cli(&["verify", "--json"]).await;
    let vj = verify.json();
    let storage = rows_of_kind(&vj, "storage");
    assert_eq!(storage[0]["equal"], true, "{}", verify.stdout);

    // Given to root on the new host: verify names the owner difference; sync repairs it.
    let file = sb.new_storage.join("2026/01/eval-0.json");
    std::os::unix::fs::lchown(&file, Some(0), Some(0)).expect("chown");
    let verify = sb.cli(&["verify", "--json"]).await;
    let vj = verify.json();
    let detail = rows_of_kind(&vj, "storage")[0]["detail"].to_string();
    assert!(
        detail.contains("owner differs: 2026/01/eval-0.json (old nobody:"),
        "{}",
        verify.stdout
    );
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let m = std::fs::symlink_metadata(&file).expect("stat");
    assert_eq!(m.uid(), nobody.uid.as_raw(), "the sync gave it back");
}

/// Every path below `root` (not `root` itself).
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A system user and group created for one test, removed when dropped.
struct TestUser(&'static str);

impl TestUser {
    fn create(name: &'static str) -> TestUser {
        let _ = std::process::Command::new("userdel").arg(name).status();
        let st = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", name])
            .status()
            .expect("run useradd (apt-get install -y passwd)");
        assert!(st.success(), "useradd {name}: {st}");
        TestUser(name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(self.0).status();
    }
}

#[tokio::test]
async fn check_refuses_a_tree_owned_by_a_user_the_new_host_lacks() {
    let mut sb = Sandbox::new("unknown-owner").await;
    let user = TestUser::create("hs-only-old");
    let u = nix::unistd::User::from_name(user.0)
        .expect("getpwnam")
        .expect("just created");
    for e in walk(&sb.old_storage) {
        std::os::unix::fs::lchown(&e, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
            .expect("chown the old tree");
    }
    // The new host has neither that user nor that group: its agent sees copies of /etc/passwd and
    // /etc/group without them (a mount namespace of its own).
    let hide = |file: &str| {
        let text = std::fs::read_to_string(format!("/etc/{file}")).expect("read");
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{}:", user.0)))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = sb.dir.join(format!("new-{file}"));
        std::fs::write(&p, kept).expect("write");
        p
    };
    let (passwd, group) = (hide("passwd"), hide("group"));
    let mut new = sb.new_setup();
    new.wrapper = vec![
        "unshare".into(),
        "--mount".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount --bind {} /etc/passwd && mount --bind {} /etc/group && exec \"$0\" \"$@\"",
            passwd.display(),
            group.display()
        ),
    ];
    sb.start(sb.old_setup(), new).await;
    let out = sb.cli(&["check"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("user hs-only-old")
            && out.stdout.contains("group hs-only-old")
            && out.stdout.contains("useradd --system hs-only-old"),
        "{}",
        out.both()
    );
    // Owned by a user both hosts have, the same tree passes.
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("nobody");
    for e in walk(&sb.old_storage) {
        std::os::unix::fs::lchown(&e, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .expect("chown");
    }
    let out = sb.cli(&["check"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
}

#[tokio::test]
async fn sync_creates_a_missing_database_with_the_old_ones_owner_encoding_and_settings() {
    let mut sb = Sandbox::new("missing-db").await;
    let old_admin = sb.world.old_pg.connect(&sb.old_db).await;
    old_admin
        .batch_execute(&format!(
            "DO $$BEGIN CREATE ROLE hs_db_owner; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
             ALTER DATABASE \"{db}\" OWNER TO hs_db_owner;
             ALTER DATABASE \"{db}\" SET work_mem = '7MB';
             ALTER DATABASE \"{db}\" SET search_path = \"$user\", public;",
            db = sb.old_db
        ))
        .await
        .expect("give the old database an owner and settings");
    let new_admin = sb.world.new_pg.connect("postgres").await;
    new_admin
        .batch_execute(&format!("DROP DATABASE \"{}\"", sb.new_db))
        .await
        .expect("the new host has no such database yet");
    sb.start(sb.old_setup(), sb.new_setup()).await;

    let check = sb.cli(&["check"]).await;
    assert_eq!(check.code, 0, "{}", check.both());
    assert!(
        check
            .stdout
            .contains("will be created by sync (owner hs_db_owner, encoding UTF8"),
        "{}",
        check.stdout
    );
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());

    let describe = "SELECT pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text,
                           d.datcollate::text, d.datctype::text,
                           (SELECT s.setconfig FROM pg_db_role_setting s
                            WHERE s.setdatabase = d.oid AND s.setrole = 0)::text[]
                    FROM pg_database d WHERE d.datname = $1";
    let row = |r: tokio_postgres::Row| -> (String, String, String, String, Vec<String>) {
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    let old = row(old_admin
        .query_one(describe, &[&sb.old_db])
        .await
        .expect("old"));
    let new = row(new_admin
        .query_one(describe, &[&sb.new_db])
        .await
        .expect("created on the new host"));
    assert_eq!(new, old, "owner, encoding, locale and settings carried");
    assert_eq!(new.0, "hs_db_owner");

    // An existing database owned by someone else gets the owner too.
    new_admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" OWNER TO postgres",
            sb.new_db
        ))
        .await
        .expect("alter");
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let again = row(new_admin
        .query_one(describe, &[&sb.new_db])
        .await
        .expect("new"));
    assert_eq!(
        again.0, "hs_db_owner",
        "the owner carried to an existing database"
    );
}

/// The `check --json` entry named `name`.
fn check_entry<'a>(j: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    j["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name:?}: {j:#}"))
}

/// Issue 10.6: `check`'s baseline shows a partitioned table with the size of its partitions
/// (its own relation holds nothing), not 0 B.
#[tokio::test]
async fn check_shows_a_partitioned_table_with_the_size_of_its_partitions() {
    let mut sb = Sandbox::new("partitioned-size").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, region text NOT NULL, body text,
             PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, md5(g::text)
             FROM generate_series(1, 3000) g;",
    )
    .await
    .expect("a partitioned table on the old host");
    let partitions: i64 = old
        .query_one(
            "SELECT (pg_total_relation_size('events_eu') + pg_total_relation_size('events_us'))::int8",
            &[],
        )
        .await
        .expect("sizes")
        .get(0);
    assert!(partitions > 0);
    sb.start(sb.old_setup(), sb.new_setup()).await;

    let out = sb.cli(&["check", "--json"]).await;
    let j = out.json();
    let row = j["baseline"]
        .as_array()
        .expect("baseline")
        .iter()
        .find(|b| b["table"] == "public.events")
        .unwrap_or_else(|| panic!("no baseline row for events: {}", out.stdout));
    assert_eq!(row["rows"], 3000, "{row}");
    assert_eq!(
        row["size_bytes"].as_i64(),
        Some(partitions),
        "the partitioned table counts its partitions' bytes: {row}"
    );
    let human = sb.cli(&["check"]).await;
    let line = human
        .stdout
        .lines()
        .find(|l| l.contains("public.events"))
        .unwrap_or_else(|| panic!("{}", human.stdout));
    assert!(!line.trim_end().ends_with(" 0 B"), "{line}");
}

/// Issue 10.6: a local cluster reached as superuser shows its free space in `check` — also when
/// the target database does not exist yet (the sync creates it in that cluster) — instead of
/// "not visible (managed database or no pg_read_all_settings)".
#[tokio::test]
async fn check_sees_the_free_space_of_a_local_cluster_reached_as_superuser() {
    let mut sb = Sandbox::new("local-free-space").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    for missing in [false, true] {
        if missing {
            sb.world
                .new_pg
                .connect("postgres")
                .await
                .batch_execute(&format!("DROP DATABASE \"{}\"", sb.new_db))
                .await
                .expect("drop the new database");
        }
        let out = sb.cli(&["check", "--json"]).await;
        let j = out.json();
        let disk = check_entry(&j, "disk for database app");
        assert_eq!(
            disk["result"], "ok",
            "missing={missing}: the free space of the data directory is seen: {disk}"
        );
        assert!(
            disk["detail"]
                .as_str()
                .is_some_and(|d| d.contains("free at the PostgreSQL data directory")),
            "{disk}"
        );
    }
}

/// Issue 10.3: a missing target database the new agent's role may not create (no CREATEDB) is a
/// `check` failure that says exactly what to create — the old database's owner and settings
/// included — instead of "does not exist (3D000) … check the conninfo"; `sync` changes nothing.
#[tokio::test]
async fn check_prints_what_to_create_when_the_role_may_not_create_the_missing_database() {
    let mut sb = Sandbox::new("missing-db-no-createdb").await;
    let old_admin = sb.world.old_pg.connect(&sb.old_db).await;
    old_admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET work_mem = '9MB'",
            sb.old_db
        ))
        .await
        .expect("a setting on the old database");
    let new_admin = sb.world.new_pg.connect("postgres").await;
    new_admin
        .batch_execute(&format!("DROP DATABASE \"{}\"", sb.new_db))
        .await
        .expect("the new host has no such database yet");
    let createdb: bool = new_admin
        .query_one(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = 'app_ro'",
            &[],
        )
        .await
        .expect("app_ro")
        .get(0);
    assert!(!createdb, "app_ro may not create databases");
    let mut new = sb.new_setup();
    new.databases = vec![(
        "app".into(),
        sb.world
            .new_pg
            .conninfo(&sb.new_db)
            .replace("user=postgres", "user=app_ro"),
    )];
    sb.start(sb.old_setup(), new).await;

    let out = sb.cli(&["check", "--json"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    let j = out.json();
    let entry = j["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == "database app" && c["host"] == "new" && c["result"] == "fail")
        .unwrap_or_else(|| panic!("no failed check \"database app\" on the new host: {j:#}"));
    let detail = entry["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("sync cannot create it")
            && detail.contains("app_ro may not create databases (no CREATEDB)"),
        "{entry}"
    );
    let hint = entry["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!(
            "CREATE DATABASE \"{}\" TEMPLATE template0 OWNER \"app\" ENCODING 'UTF8'",
            sb.new_db
        )) && hint.contains(&format!(
            "ALTER DATABASE \"{}\" SET \"work_mem\" TO '9MB'",
            sb.new_db
        )),
        "{entry}"
    );

    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    let exists: bool = new_admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            &[&sb.new_db],
        )
        .await
        .expect("pg_database")
        .get(0);
    assert!(!exists, "nothing was created");
}
