//! Guards against the wrong peer, the wrong caller and the wrong folder (issue 9): a plan whose
//! addresses point at the wrong agents, an agent asked to be the target while it is a source, a
//! peer grant used to read the catalog, overlapping storage trees, two mutating commands at once,
//! the peer's certificate used as the coordinator's, and names no agent declares.

use hostshift_tests::rig::{self, Sandbox, fs};

/// `plan.toml` with the `[old]` and `[new]` addresses exchanged; `names_too` also exchanges the
/// agent names (a consistent plan that simply runs the sync backwards).
fn swap_plan(sb: &Sandbox, names_too: bool) {
    let plan = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let (a, b) = (&sb.addresses.0, &sb.addresses.1);
    let (old_name, new_name) = if names_too {
        ("new", "old")
    } else {
        ("old", "new")
    };
    let swapped = plan
        .replace(&format!("address = \"{a}\"\nagent = \"old\""), "@@OLD@@")
        .replace(
            &format!("address = \"{b}\"\nagent = \"new\""),
            &format!("address = \"{a}\"\nagent = \"{new_name}\""),
        )
        .replace(
            "@@OLD@@",
            &format!("address = \"{b}\"\nagent = \"{old_name}\""),
        );
    assert_ne!(swapped, plan, "the plan changed");
    std::fs::write(sb.plan_path(), swapped).expect("plan");
}

/// The old agent's config as if copied from the new host: it allows writing the tree.
fn old_allowing_writes(sb: &Sandbox) -> rig::AgentSetup {
    let mut old = sb.old_setup();
    old.write_storage.push("evaluations".into());
    old.write_files.push("backend-env".into());
    old
}

#[tokio::test]
async fn sync_with_swapped_addresses_fails_before_writing_in_pull_and_relay_mode() {
    let mut sb = Sandbox::new("guard_swapped").await;
    sb.plan_databases = false;
    // Something only the new host has, so a backwards sync would have something to send.
    std::fs::create_dir_all(&sb.new_storage).expect("new storage");
    std::fs::write(sb.new_storage.join("only-on-new.txt"), b"new").expect("file");
    sb.start(old_allowing_writes(&sb), sb.new_setup()).await;
    swap_plan(&sb, false);
    let before = fs::snapshot(&sb.old_storage);
    let env_before = std::fs::read(&sb.old_env).expect("env");
    for mode in [&[][..], &["--relay"][..]] {
        let mut args = vec!["sync", "--only", "storage"];
        args.extend_from_slice(mode);
        let out = sb.cli(&args).await;
        assert_ne!(out.code, 0, "{mode:?}: {}", out.both());
        assert!(
            out.both().contains("is agent:new, not agent:old")
                || out.both().contains("is agent:old, not agent:new"),
            "{mode:?}: names who answered and who was expected: {}",
            out.both()
        );
        assert_eq!(
            fs::snapshot(&sb.old_storage),
            before,
            "{mode:?}: the old tree is unchanged"
        );
        let files = sb.cli(&["sync", "--only", "files"]).await;
        assert_ne!(files.code, 0, "{mode:?}: {}", files.both());
        assert_eq!(std::fs::read(&sb.old_env).expect("env"), env_before);
    }
    assert!(
        !sb.old().log_text().contains("deleted"),
        "the old agent never got as far as deleting"
    );
    // Every other command that acts checks the identities the same way before its first call.
    for args in [
        &["verify"][..],
        &["cutover", "--dry-run"][..],
        &["backup", "--host", "old"][..],
        &["unfreeze", "--host", "new", "--yes"][..],
    ] {
        let out = sb.cli(args).await;
        assert_ne!(out.code, 0, "{args:?}: {}", out.both());
        assert!(
            out.both().contains("is agent:new, not agent:old")
                || out.both().contains("is agent:old, not agent:new"),
            "{args:?}: names who answered and who was expected: {}",
            out.both()
        );
    }
    assert_eq!(fs::snapshot(&sb.old_storage), before);
}

#[tokio::test]
async fn an_agent_declared_as_sync_source_refuses_to_be_the_target() {
    // A consistent plan run backwards (names and addresses swapped), against an old host whose
    // config allows writing the tree: only its sync role stops the sync.
    let mut sb = Sandbox::new("guard_source_role").await;
    sb.plan_databases = false;
    sb.start(old_allowing_writes(&sb), sb.new_setup()).await;
    swap_plan(&sb, true);
    let before = fs::snapshot(&sb.old_storage);
    assert!(!before.is_empty(), "the old tree has files to lose");
    for mode in [&[][..], &["--relay"][..]] {
        let mut args = vec!["sync", "--only", "storage"];
        args.extend_from_slice(mode);
        let out = sb.cli(&args).await;
        assert_eq!(out.code, 1, "{mode:?}: {}", out.both());
        assert!(
            out.stdout.contains("this agent is a sync source"),
            "{mode:?}: {}",
            out.both()
        );
        assert_eq!(
            fs::snapshot(&sb.old_storage),
            before,
            "{mode:?}: the old tree is unchanged"
        );
    }
    // `check` says so before any sync.
    let check = sb.cli(&["check"]).await;
    assert_ne!(check.code, 0, "{}", check.both());
    assert!(
        check.stdout.contains("is a sync target"),
        "{}",
        check.stdout
    );
}

#[tokio::test]
async fn check_still_reports_who_answers_at_swapped_addresses() {
    let mut sb = Sandbox::new("guard_check_swapped").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    swap_plan(&sb, false);
    let out = sb.cli(&["check"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout
            .contains("the agent at this address is agent:new, the plan expects agent:old"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn overlapping_trees_on_the_new_host_cannot_delete_each_others_files() {
    // The new host declares a second tree inside the first. Before the guard, syncing the outer
    // tree deleted the inner tree's files (they are not on the old host); now the agent refuses
    // to start with such a config, naming the key.
    let mut sb = Sandbox::new("guard_overlap").await;
    sb.plan_databases = false;
    let inner = sb.new_storage.join("uploads");
    std::fs::create_dir_all(&inner).expect("inner tree");
    std::fs::write(inner.join("user-upload.bin"), b"precious").expect("file");
    let mut new = sb.new_setup();
    new.storage.push(("uploads".into(), inner.clone()));
    new.write_storage.push("uploads".into());
    let world = sb.world;
    let started = hostshift::lab::agent::LabAgent::start(
        &new,
        &world.certs_agent("new"),
        &world.certs_coordinator(),
        &sb.dir,
    )
    .await;
    match started {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("key `storage.1.path`")
                    && text.contains("overlaps storage tree \"evaluations\""),
                "{text}"
            );
        }
        Ok(agent) => {
            // The old behaviour: run the sync the config allows and see what it does.
            drop(agent);
            sb.start(sb.old_setup(), new).await;
            let out = sb.cli(&["sync", "--only", "storage"]).await;
            assert!(
                inner.join("user-upload.bin").exists(),
                "the sync of `evaluations` deleted the `uploads` tree's file: {}",
                out.both()
            );
            panic!("an agent with overlapping trees started: {}", out.both());
        }
    }
    assert_eq!(
        std::fs::read(inner.join("user-upload.bin")).expect("still there"),
        b"precious"
    );
}

#[tokio::test]
async fn a_second_sync_of_the_same_plan_fails_at_once_naming_the_first() {
    use nix::sys::signal::{Signal, kill};
    let mut sb = Sandbox::new("guard_lock").await;
    sb.plan_databases = false;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let lock = hostshift::plan::Plan::load(&sb.plan_path())
        .expect("plan")
        .state_dir()
        .join("lock");
    // A stopped new agent keeps the first sync waiting in its TLS handshake, holding the lock,
    // for as long as the test needs (no timing guesswork).
    let new_pid = nix::unistd::Pid::from_raw(sb.new_agent().pid() as i32);
    kill(new_pid, Signal::SIGSTOP).expect("SIGSTOP");
    let first = sb.cli(&["sync", "--only", "storage"]);
    let second = async {
        let holder = rig::eventually(
            std::time::Duration::from_secs(30),
            "the first sync to hold the plan's lock",
            || async {
                std::fs::read_to_string(&lock)
                    .ok()
                    .filter(|t| t.contains("hostshift sync (pid"))
            },
        )
        .await;
        let out = sb.cli(&["sync", "--only", "storage"]).await;
        kill(new_pid, Signal::SIGCONT).expect("SIGCONT");
        (holder, out)
    };
    let (first, (holder, second)) = tokio::join!(first, second);
    assert_eq!(second.code, 2, "{}", second.both());
    assert!(
        second.stderr.contains("the plan is busy"),
        "{}",
        second.both()
    );
    assert!(
        second.stderr.contains(holder.trim()),
        "names the holder {holder:?}: {}",
        second.both()
    );
    assert_eq!(first.code, 0, "the first sync finishes: {}", first.both());
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    // Released at exit: the next sync runs.
    let again = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
}

/// The grant a sync issues to the new agent for database `app` (coordinator → old agent), with
/// `selections` (empty: every table).
async fn peer_grant(sb: &Sandbox, selections: Vec<hostshift_proto::v1::DbSelection>) -> String {
    use hostshift_proto::v1::CreateGrantRequest;
    use hostshift_proto::v1::grants_client::GrantsClient;
    GrantsClient::new(sb.old().channel(&sb.world.certs_coordinator()).await)
        .create(CreateGrantRequest {
            peer: "new".into(),
            scopes: vec!["database:app".into()],
            ttl_secs: 600,
            selections,
        })
        .await
        .expect("grant")
        .into_inner()
        .token
}

/// A raw `Source.Read` of one table with the peer agent's certificate and `grant`: the rows'
/// bytes, or the refusal.
async fn peer_reads_table(
    sb: &Sandbox,
    grant: &str,
    schema: &str,
    table: &str,
    columns: &[&str],
) -> Result<usize, tonic::Status> {
    let mut stream = peer_read(sb, grant, schema, table, columns).await?;
    let mut bytes = 0;
    while let Some(frame) = stream.message().await? {
        if let Some(hostshift_proto::v1::frame::Kind::Chunk(c)) = frame.kind {
            bytes += c.data.len();
        }
    }
    Ok(bytes)
}

/// The stream of a raw `Source.Read` of one table (text `COPY`), as [`peer_reads_table`] reads it.
async fn peer_read(
    sb: &Sandbox,
    grant: &str,
    schema: &str,
    table: &str,
    columns: &[&str],
) -> Result<tonic::Streaming<hostshift_proto::v1::Frame>, tonic::Status> {
    use hostshift_agent::postgres::{CopyFormat, TableInfo, TableKind, TableRef};
    use hostshift_proto::v1::source_client::SourceClient;
    use hostshift_proto::v1::{DbTable, ReadRequest, read_request::What};
    let info = TableInfo {
        table: TableRef::new(schema, table),
        kind: TableKind::Ordinary,
        columns: columns.iter().map(|c| c.to_string()).collect(),
        format: CopyFormat::Text,
        int_key: None,
        estimated_rows: None,
        estimated_bytes: 0,
    };
    let ch = sb.old().channel(&sb.world.certs_agent("new")).await;
    let stream = SourceClient::new(ch)
        .read(ReadRequest {
            grant: grant.to_string(),
            what: Some(What::DbTable(DbTable {
                database: "app".into(),
                table: Some(info.into()),
                range: None,
                pages: None,
                snapshot: String::new(),
                mode: String::new(),
            })),
        })
        .await?
        .into_inner();
    Ok(stream)
}

#[tokio::test]
async fn a_peer_grant_reads_only_existing_columns_of_the_plans_selected_user_tables() {
    use hostshift_proto::v1::DbSelection;
    let mut sb = Sandbox::new("guard_peer_read").await;
    sb.plan_databases = false;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // The grant a sync of a plan excluding one table issues (coordinator → old agent).
    let grant = peer_grant(
        &sb,
        vec![DbSelection {
            database: "app".into(),
            include: vec![],
            exclude: vec!["public.project_evaluation_runs".into()],
        }],
    )
    .await;

    let refused = |r: Result<usize, tonic::Status>, what: &str| -> tonic::Status {
        match r {
            Ok(n) => panic!("{what}: the peer read {n} bytes"),
            Err(s) => s,
        }
    };
    let s = refused(
        peer_reads_table(
            &sb,
            &grant,
            "pg_catalog",
            "pg_authid",
            &["rolname", "rolpassword"],
        )
        .await,
        "pg_authid",
    );
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("pg_catalog.pg_authid"), "{s:?}");
    let s = refused(
        peer_reads_table(&sb, &grant, "public", "project_evaluation_runs", &["id"]).await,
        "a table the plan excludes",
    );
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("public.project_evaluation_runs"),
        "{s:?}"
    );
    let s = refused(
        peer_reads_table(&sb, &grant, "public", "users", &["id", "(select 1)"]).await,
        "a column that does not exist",
    );
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("(select 1)"), "{s:?}");
    // A selected table with its real columns is served.
    let n = peer_reads_table(&sb, &grant, "public", "users", &["id"])
        .await
        .expect("a selected table");
    assert!(n > 0, "rows of public.users");

    // A sync of that plan still works, through the grant the coordinator issues.
    sb.write_plan(
        "[[databases]]\nname = \"app\"\nexclude = [\"public.project_evaluation_runs\"]\n",
    );
    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let users: i64 = new
        .query_one("SELECT count(*) FROM public.users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(users, sb.world.seed.rows["users"]);
}

#[tokio::test]
async fn verify_with_an_agents_certificate_fails_as_unauthorised_not_as_differs() {
    let mut sb = Sandbox::new("guard_verify_peer_cert").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let sync = sb.cli(&["sync"]).await;
    assert_eq!(sync.code, 0, "{}", sync.both());
    // The plan's client certificate is the new agent's, not the coordinator's.
    let peer = sb.world.certs_agent("new");
    let c = &sb.world.certs;
    let plan = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let swapped = plan
        .replace(
            &format!("cert = {:?}", c.coordinator_cert.display().to_string()),
            &format!("cert = {:?}", peer.cert.display().to_string()),
        )
        .replace(
            &format!("key = {:?}", c.coordinator_key.display().to_string()),
            &format!("key = {:?}", peer.key.display().to_string()),
        );
    assert_ne!(swapped, plan, "the plan changed");
    std::fs::write(sb.plan_path(), swapped).expect("plan");
    for json in [false, true] {
        let args: &[&str] = if json {
            &["verify", "--json"]
        } else {
            &["verify"]
        };
        let out = sb.cli(args).await;
        assert!(
            !out.stdout.contains("DIFFERS") && !out.stdout.contains("differs"),
            "{args:?}: {}",
            out.both()
        );
        assert!(
            out.both()
                .contains("is agent:new's certificate, not a coordinator's"),
            "{args:?}: says the certificate is not the coordinator's: {}",
            out.both()
        );
        assert_eq!(out.code, 2, "{args:?}: a plan error: {}", out.both());
    }
}

#[tokio::test]
async fn names_the_agents_do_not_declare_are_usage_errors_exit_2() {
    let mut sb = Sandbox::new("guard_undeclared").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    for args in [
        &["hook", "run", "no-such-hook"][..],
        &["db", "stats", "--host", "old", "--database", "no_such_db"][..],
        &["env", "get", "--host", "new", "--file", "no-such-file"][..],
        &[
            "backup",
            "restore",
            "--host",
            "new",
            "--id",
            "no-such-backup",
            "--yes",
        ][..],
    ] {
        let out = sb.cli(args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.both());
        assert!(
            out.both().contains("not declared") || out.both().contains("no-such"),
            "{args:?}: names what is unknown: {}",
            out.both()
        );
    }
}

/// A peer that stops reading a table halfway leaves nothing behind on the old host: dropping
/// the stream ends the copy's connection — no session left in `COPY` holding its snapshot and
/// its lock, no task reading the table to its end for nobody.
#[tokio::test]
async fn a_table_read_dropped_halfway_ends_its_session_on_the_old_database() {
    let (sb, old) = started_with_table(
        "guard_read_dropped",
        "CREATE TABLE wide (id bigint PRIMARY KEY, body text);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 1000000) g;",
    )
    .await;
    let grant = peer_grant(&sb, vec![]).await;
    let copying = || async {
        old.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %wide%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
    };
    let mut stream = peer_read(&sb, &grant, "public", "wide", &["id", "body"])
        .await
        .expect("the read starts");
    let first = stream.message().await.expect("a first frame");
    assert!(first.is_some(), "the table has rows");
    assert_eq!(copying().await, 1, "the old server is still copying");
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while copying().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old server still runs the COPY 15 s after its reader went away"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Ended, not read to its end by a thread nobody listens to any more.
    let read: i64 = old
        .query_one(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'wide'",
            &[],
        )
        .await
        .expect("pg_stat_user_tables")
        .get(0);
    assert!(
        read < 1_000_000,
        "the COPY read {read} of 1,000,000 rows after its reader went away"
    );
    // And the session is gone, not kept for the next read (it is mid-COPY).
    assert_eq!(
        agent_sessions(&old).await,
        Vec::<i32>::new(),
        "the torn read's session is closed"
    );
}

/// A sandbox (no databases in its plan) whose old database first ran `sql`, its agents started,
/// and a client of that database: the table-read guards' opening.
async fn started_with_table(name: &str, sql: &str) -> (Sandbox, tokio_postgres::Client) {
    let mut sb = Sandbox::new(name).await;
    sb.plan_databases = false;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{name}: create the table on the old database: {e}"));
    sb.start(sb.old_setup(), sb.new_setup()).await;
    (sb, old)
}

/// The old agent's sessions on the old database (their backend pids), idle or not.
async fn agent_sessions(old: &tokio_postgres::Client) -> Vec<i32> {
    old.query_one(
        "SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
        &[&hostshift_agent::postgres::connect::APPLICATION_NAME],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

#[tokio::test]
async fn table_reads_in_turn_share_one_session_on_the_old_database() {
    let (sb, old) = started_with_table(
        "guard_read_session",
        "CREATE TABLE piece (id bigint PRIMARY KEY, body text);
         INSERT INTO piece SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    )
    .await;
    let grant = peer_grant(&sb, vec![]).await;
    let first = peer_reads_table(&sb, &grant, "public", "piece", &["id", "body"])
        .await
        .expect("a first read");
    // The session that read it waits for the next piece (a fresh session per piece made the old
    // server map its shared buffers again each time: docs/BENCHMARKS.md).
    let kept = agent_sessions(&old).await;
    assert_eq!(kept.len(), 1, "one session kept after the read: {kept:?}");
    let second = peer_reads_table(&sb, &grant, "public", "piece", &["id", "body"])
        .await
        .expect("a second read");
    assert_eq!(first, second, "the same rows both times");
    assert_eq!(
        agent_sessions(&old).await,
        kept,
        "the second read ran in the first one's session"
    );
}

#[tokio::test]
async fn a_kept_session_is_closed_after_its_idle_limit() {
    use hostshift_agent::config::DatabaseConfig;
    use hostshift_agent::postgres::ReadPool;
    let sb = Sandbox::new("guard_read_pool_limit").await;
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let db = DatabaseConfig {
        name: "app".into(),
        conninfo: sb.world.old_pg.conninfo(&sb.old_db),
        password_file: None,
        ca_file: None,
    };
    let pool = std::sync::Arc::new(ReadPool::with_limit(std::time::Duration::from_millis(300)));
    drop(pool.take(&db).await.expect("a session"));
    assert_eq!(pool.idle_count("app"), 1, "an idle session is kept");
    assert_eq!(agent_sessions(&old).await.len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent_sessions(&old).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the kept session still exists 10 s after its 0.3 s limit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(pool.idle_count("app"), 0);
}
