//! A managed PostgreSQL (RDS) as the target: TLS only, SCRAM, and a master role that is not a
//! superuser (`LOGIN CREATEROLE CREATEDB`). `check` says beforehand what such a role lacks; sync,
//! its reruns, verify and a backup restore work as that role. (The cluster: `rig::managed`.)

use hostshift_tests::rig::managed::{LESSER, MASTER, managed};
use hostshift_tests::rig::{AgentSetup, NEW_IP, Sandbox};

/// The sandbox's new agent with its database `app` on the managed cluster as `user`.
async fn managed_target(sb: &Sandbox, user: &str) -> AgentSetup {
    let m = managed();
    m.create_database_as_master(&sb.new_db).await;
    let mut new = sb.new_setup();
    new.databases.clear();
    new.extra
        .push_str(&m.agent_database("app", user, &sb.new_db));
    let _ = NEW_IP;
    new
}

#[tokio::test]
async fn first_sync_and_reruns_into_a_non_superuser_master_work_and_verify_equal() {
    let m = managed();
    let _roles = m.roles_lock.lock().await;
    let mut sb = Sandbox::new("managed_sync").await;
    let new = managed_target(&sb, MASTER).await;
    sb.start(sb.old_setup(), new).await;

    let check = sb.cli(&["check"]).await;
    assert_eq!(check.code, 0, "{}", check.both());

    for round in ["first", "second", "third"] {
        let out = sb.cli(&["sync"]).await;
        assert_eq!(out.code, 0, "{round} sync: {}", out.both());
        let verify = sb.cli(&["verify"]).await;
        assert_eq!(verify.code, 0, "{round} verify: {}", verify.both());
    }
    // The master was never made a superuser, and the app's roles own the app's tables.
    let admin = m.admin(&sb.new_db).await;
    let row = admin
        .query_one(
            "SELECT r.rolsuper, (SELECT tableowner::text FROM pg_tables WHERE tablename = 'users')
             FROM pg_roles r WHERE rolname = $1",
            &[&MASTER],
        )
        .await
        .expect("query");
    assert!(!row.get::<_, bool>(0), "the master became a superuser");
    assert_eq!(row.get::<_, String>(1), "app");
}

#[tokio::test]
async fn check_names_what_a_role_without_createrole_or_replica_mode_lacks() {
    let mut sb = Sandbox::new("managed_check").await;
    let new = managed_target(&sb, LESSER).await;
    sb.start(sb.old_setup(), new).await;
    let check = sb.cli(&["check"]).await;
    assert_eq!(check.code, 1, "{}", check.both());
    let text = check.stdout.clone();
    assert!(
        text.contains("CREATEROLE") && text.contains("session_replication_role"),
        "{}",
        check.both()
    );
    assert!(text.contains("docs/rds.md"), "{}", check.both());
}

#[tokio::test]
async fn backup_restore_into_the_managed_target_needs_and_works_with_no_owner() {
    let m = managed();
    let _roles = m.roles_lock.lock().await;
    // The app's roles exist on the managed cluster (an earlier sync made them), but the master
    // is not necessarily a member and they have no rights in this fresh database.
    let admin = m.admin("postgres").await;
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN; END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_ro') THEN CREATE ROLE app_ro LOGIN; END IF;
             END $$",
        )
        .await
        .expect("roles");
    let mut sb = Sandbox::new("managed_restore").await;
    let (old_dir, new_dir) = (sb.dir.join("old-backups"), sb.dir.join("new-backups"));
    let mut old = sb.old_setup();
    old.extra.push_str(&format!(
        "\n[backup]\ndir = {:?}\n",
        old_dir.display().to_string()
    ));
    let mut new = managed_target(&sb, MASTER).await;
    new.extra.push_str(&format!(
        "\n[backup]\ndir = {:?}\n",
        new_dir.display().to_string()
    ));
    sb.start(old, new).await;
    let out = sb.cli(&["backup", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let id = out.json()["id"].as_str().expect("id").to_string();
    std::fs::create_dir_all(&new_dir).expect("new backup dir");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(old_dir.join(&id))
        .arg(&new_dir)
        .status()
        .expect("cp");
    assert!(cp.success());

    let plain = sb
        .cli(&[
            "backup",
            "restore",
            "--id",
            &id,
            "--host",
            "new",
            "--database",
            "app",
            "--yes",
        ])
        .await;
    assert_eq!(plain.code, 1, "{}", plain.both());
    assert!(plain.stderr.contains("--no-owner"), "{}", plain.both());

    let out = sb
        .cli(&[
            "backup",
            "restore",
            "--id",
            &id,
            "--host",
            "new",
            "--database",
            "app",
            "--no-owner",
            "--yes",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.both());
    let count = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT count(*) FROM public.users", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let old_rows = count(sb.world.old_pg.connect(&sb.old_db).await).await;
    let new_rows = count(m.admin(&sb.new_db).await).await;
    assert_eq!(old_rows, new_rows);
    assert!(new_rows > 0);
    // The tables belong to the master now.
    let owner: String = m
        .admin(&sb.new_db)
        .await
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'users'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, MASTER);
}

/// `verify`'s exit code when a comparison could not run (`shared/src/exit.rs`).
const COULD_NOT_COMPARE: i32 = 5;

/// Runs `verify` and `verify --json` and asserts they say "could not run" — not "differs" — for
/// the database, name its connection, and exit with [`COULD_NOT_COMPARE`].
async fn verify_could_not_run(sb: &Sandbox, names: &[&str]) {
    // Files and storage are equal: only the database cannot be compared.
    for only in ["files", "storage"] {
        let out = sb.cli(&["sync", "--only", only]).await;
        assert_eq!(out.code, 0, "sync --only {only}: {}", out.both());
    }
    let v = sb.cli(&["verify"]).await;
    assert_eq!(v.code, COULD_NOT_COMPARE, "{}", v.both());
    let text = v.both();
    assert!(
        !text.contains("DIFFERS") && !text.contains("not equal"),
        "{text}"
    );
    assert!(text.contains("COULD NOT RUN"), "{text}");
    assert!(text.contains("database app"), "{text}");
    for n in names {
        assert!(text.contains(n), "{n} not named: {text}");
    }
    let j = sb.cli(&["verify", "--json"]).await;
    assert_eq!(j.code, COULD_NOT_COMPARE, "{}", j.both());
    let doc = j.json();
    assert_eq!(doc["ok"], false, "{}", j.stdout);
    let rows = doc["rows"].as_array().expect("rows");
    let db_rows: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["name"] == "app" && (r["kind"] == "schema" || r["kind"] == "database"))
        .collect();
    assert!(!db_rows.is_empty(), "{}", j.stdout);
    for r in db_rows {
        assert_eq!(r["status"], "could not run", "{r}");
    }
    assert!(
        rows.iter().all(|r| r["status"] != "differs"),
        "{}",
        j.stdout
    );
}

#[tokio::test]
async fn verify_with_a_wrong_database_ca_file_could_not_run_and_names_the_ca_file() {
    let mut sb = Sandbox::new("managed_verify_ca").await;
    let mut new = sb.new_setup();
    new.databases.clear();
    let m = managed();
    m.create_database_as_master(&sb.new_db).await;
    let good = m.ca_file.display().to_string();
    let wrong = sb.world.foreign_certs.ca_cert.display().to_string();
    new.extra.push_str(
        &m.agent_database("app", MASTER, &sb.new_db)
            .replace(&good, &wrong),
    );
    sb.start(sb.old_setup(), new).await;
    verify_could_not_run(&sb, &["ca_file", &wrong]).await;
    // The cutover's gate says the same: no verdict, not "found differences".
    let gates = sb.cli(&["cutover", "--dry-run"]).await;
    assert_ne!(gates.code, 0, "{}", gates.both());
    assert!(
        gates.both().contains("could not compare") && !gates.both().contains("found differences"),
        "{}",
        gates.both()
    );
}

#[tokio::test]
async fn verify_against_a_stopped_new_database_could_not_run() {
    let mut sb = Sandbox::new("managed_verify_down").await;
    let m = managed();
    // Where a database was and nothing listens any more: a stopped cluster, as the agent sees it.
    let port = std::net::TcpListener::bind((hostshift_tests::rig::managed::MANAGED_IP, 0))
        .expect("bind")
        .local_addr()
        .expect("port")
        .port();
    let mut new = sb.new_setup();
    new.databases.clear();
    new.extra.push_str(
        &m.agent_database("app", MASTER, &sb.new_db)
            .replace(&format!(":{}/", m.pg.port), &format!(":{port}/")),
    );
    sb.start(sb.old_setup(), new).await;
    verify_could_not_run(&sb, &["PostgreSQL running"]).await;
}
