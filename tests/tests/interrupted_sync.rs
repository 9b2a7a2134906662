//! Issue 9.6 with real processes: a first database sync interrupted in its post-data (indexes,
//! constraints, triggers) — by `kill -9` of the new agent, or by an immediate stop of the new
//! PostgreSQL (`pg_ctl stop -m immediate`) — is resumed by the next `sync`: `verify` reports the
//! schema difference before the rerun, the rerun finishes the post-data and succeeds, and every
//! index, constraint and trigger is then on the new host exactly once. A `kill -9` of the old
//! agent at that point fails the sync too, and the rerun succeeds the same way.
//!
//! The post-data is hit reliably with an index whose build takes seconds on the new host only: its
//! expression calls a function that sleeps per row when the database's name ends in `_new` (the
//! sandbox's target), so the old host builds it at once.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hostshift::lab::pg::PgCluster;
use hostshift::lab::seed;
use hostshift_tests::rig::{self, AgentProc, NEW_IP, Sandbox, eventually};

/// Rows of the slow table; with [`SLEEP_PER_ROW`] its index takes ~8 s to build on the new host.
const SLOW_ROWS: i32 = 400;
const SLEEP_PER_ROW: &str = "0.02";

/// A table whose expression index builds slowly on the new host (see the module doc).
async fn add_slow_index(sb: &Sandbox) {
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute(&format!(
        "CREATE FUNCTION public.slow_key(i integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE
             SET search_path = pg_catalog AS $$
         BEGIN
             IF pg_catalog.current_database() LIKE '%\\_new' THEN
                 PERFORM pg_catalog.pg_sleep({SLEEP_PER_ROW});
             END IF;
             RETURN i;
         END $$;
         CREATE TABLE public.slow_rows (id integer PRIMARY KEY);
         INSERT INTO public.slow_rows SELECT generate_series(1, {SLOW_ROWS});
         CREATE INDEX slow_rows_key_idx ON public.slow_rows (public.slow_key(id));"
    ))
    .await
    .expect("add the slow index on the old host");
}

/// `hostshift sync` started in the background, output into files.
struct Running {
    child: tokio::process::Child,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    fn start(sb: &Sandbox) -> Running {
        let (out, err) = (sb.dir.join("sync.stdout"), sb.dir.join("sync.stderr"));
        let child = tokio::process::Command::new(rig::hostshift_bin())
            .args(["sync", "--plan"])
            .arg(sb.plan_path())
            .current_dir(&sb.dir)
            .env_remove("HOSTSHIFT_PLAN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start hostshift sync");
        Running { child, out, err }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Its exit code; it must end within two minutes of its agent or server going away.
    async fn finish(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the interrupted sync did not end:\n{}", self.output()))
            .expect("wait for hostshift");
        (status.code().unwrap_or(-1), self.output())
    }
}

/// Waits until the new host builds the slow index: the sync is in its post-data.
async fn wait_for_post_data(new: &tokio_postgres::Client, db: &str, sync: &Running) {
    eventually(
        Duration::from_secs(120),
        "the sync to build the slow index on the new host (post-data)",
        || async {
            let n: i64 = new
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND state = 'active' AND pid <> pg_backend_pid() \
                     AND query LIKE '%slow_rows_key_idx%'",
                    &[&db],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if n == 0
                && std::fs::read_to_string(&sync.err)
                    .is_ok_and(|e| e.contains("FAIL") || e.contains("error"))
            {
                panic!("the sync failed before its post-data:\n{}", sync.output());
            }
            (n > 0).then_some(())
        },
    )
    .await;
}

/// What the interruptions of the target must lead to: verify names the schema difference, the
/// rerun finishes the post-data, verify is then equal and every post-data object is there once.
async fn resume_and_prove(sb: &Sandbox, new: &tokio_postgres::Client) {
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let want = rig::post_data_objects(&old).await;
    let half = rig::post_data_objects(new).await;
    assert_ne!(
        half, want,
        "the interruption left the post-data half applied (the test hit the post-data)"
    );
    let journal =
        std::fs::read_to_string(sb.dir.join(".hostshift/test/journal.jsonl")).expect("journal");
    assert!(
        !journal
            .lines()
            .any(|l| l.contains("schema (post-data)") && l.contains("\"status\":\"done\"")),
        "the journal has no finished post-data:\n{journal}"
    );

    let out = sb.cli(&["verify"]).await;
    assert_eq!(
        out.code,
        1,
        "verify reports the half-applied schema: {}",
        out.both()
    );
    let schema = out
        .stdout
        .lines()
        .find(|l| l.starts_with("schema") && l.contains(" app "))
        .unwrap_or_else(|| panic!("no schema row: {}", out.stdout));
    assert!(
        schema.contains("DIFFERS"),
        "verify names the schema difference: {}",
        out.stdout
    );

    rerun_and_prove(sb, new, &want).await;
}

/// The rerun succeeds (no "the schema differs" refusal), verify is equal, and the new host holds
/// every post-data object of the old one (`want`) once.
async fn rerun_and_prove(sb: &Sandbox, new: &tokio_postgres::Client, want: &[String]) {
    let out = sb.cli(&["sync"]).await;
    assert_eq!(
        out.code,
        0,
        "the rerun finishes the interrupted post-data: {}",
        out.both()
    );
    assert!(
        !out.both().contains("apply the same change"),
        "no schema-change refusal: {}",
        out.both()
    );
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(
        rig::post_data_objects(new).await,
        want.to_vec(),
        "every index, constraint and trigger on the new host, each once"
    );
}

#[tokio::test]
async fn kill_9_of_the_new_agent_in_the_post_data_is_resumed_by_the_next_sync() {
    let mut sb = Sandbox::new("kill9_post_data").await;
    add_slow_index(&sb).await;
    let new_setup = sb.new_setup();
    sb.start(sb.old_setup(), new_setup.clone()).await;
    let new = sb.world.new_pg.connect(&sb.new_db).await;

    let sync = Running::start(&sb);
    wait_for_post_data(&new, &sb.new_db, &sync).await;
    let agent = sb.new.as_mut().expect("new agent");
    let pid = agent.pid();
    agent.kill();
    assert!(rig::process_gone(pid), "the new agent was killed (-9)");
    let (code, output) = sync.finish().await;
    assert_ne!(code, 0, "a sync whose target died fails: {output}");

    // The same agent comes back (a restart by systemd).
    sb.new = Some(AgentProc::start(&new_setup, &sb.dir, sb.world).await);
    sb.addresses.1 = sb.new_agent().address();
    sb.write_plan("");
    resume_and_prove(&sb, &new).await;
}

#[tokio::test]
async fn an_immediate_stop_of_the_new_postgres_in_the_post_data_is_resumed_by_the_next_sync() {
    let mut sb = Sandbox::new("pg_stop_post_data").await;
    add_slow_index(&sb).await;
    // The new host's own cluster: stopping the binary's shared one would break other tests.
    let root = sb.dir.join("pg");
    let cluster = PgCluster::start(&root, "new", NEW_IP)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    seed::ensure_roles(&cluster.connect("postgres").await.expect("connect"))
        .await
        .expect("roles");
    cluster
        .create_database(&sb.new_db, None)
        .await
        .expect("create the target database");
    let (base, new_db) = (sb.new_setup(), sb.new_db.clone());
    let setup = |c: &PgCluster| {
        let mut s = base.clone();
        s.databases = vec![("app".into(), c.conninfo(&new_db))];
        s
    };
    sb.start(sb.old_setup(), setup(&cluster)).await;
    let new = cluster.connect(&sb.new_db).await.expect("connect");

    let sync = Running::start(&sb);
    wait_for_post_data(&new, &sb.new_db, &sync).await;
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let stop = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&pg_ctl)
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(cluster.data_dir())
        .output()
        .expect("run pg_ctl through runuser (util-linux: apt-get install util-linux)");
    assert!(
        stop.status.success(),
        "pg_ctl stop -m immediate: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let (code, output) = sync.finish().await;
    assert_ne!(code, 0, "a sync whose target server died fails: {output}");
    drop(new);

    // PostgreSQL comes back (crash recovery) on a new port; the agent's config follows it.
    drop(cluster);
    let cluster = PgCluster::start_existing(&root, "new", NEW_IP)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(sb.new.take());
    sb.new = Some(AgentProc::start(&setup(&cluster), &sb.dir, sb.world).await);
    sb.addresses.1 = sb.new_agent().address();
    sb.write_plan("");
    let new = cluster.connect(&sb.new_db).await.expect("connect");
    resume_and_prove(&sb, &new).await;
}

#[tokio::test]
async fn kill_9_of_the_old_agent_in_the_post_data_is_resumed_by_the_next_sync() {
    let mut sb = Sandbox::new("kill9_old_post_data").await;
    add_slow_index(&sb).await;
    let old_setup = sb.old_setup();
    sb.start(old_setup.clone(), sb.new_setup()).await;
    let new = sb.world.new_pg.connect(&sb.new_db).await;

    let sync = Running::start(&sb);
    wait_for_post_data(&new, &sb.new_db, &sync).await;
    let agent = sb.old.as_mut().expect("old agent");
    let pid = agent.pid();
    agent.kill();
    assert!(rig::process_gone(pid), "the old agent was killed (-9)");
    let (code, output) = sync.finish().await;
    assert_ne!(code, 0, "a sync whose source died fails: {output}");

    // The new agent already holds the whole section (the old one sent it before the index
    // builds began): its post-data runs to the end without the old agent, and the sync fails
    // at its next step. The rerun must not take that for a schema change.
    sb.old = Some(AgentProc::start(&old_setup, &sb.dir, sb.world).await);
    sb.addresses.0 = sb.old().address();
    sb.write_plan("");
    let want = rig::post_data_objects(&sb.world.old_pg.connect(&sb.old_db).await).await;
    rerun_and_prove(&sb, &new, &want).await;
}
