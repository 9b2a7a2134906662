//! Faults while following (issue 12, "Kill -9 of either agent or the coordinator, and a dropped
//! connection"), on real clusters (old: wal_level = logical) through real agents and a real
//! loopback TCP proxy between the new host's follower and the old host's agent:
//! - the follower's connection cut (both sides closed, the port refusing for a while), then
//!   silently stalled (a partition: no byte passes, nothing is closed), then a kill -9 of the OLD
//!   agent, restarted on the same port as systemd would: with a writer of numbered rows
//!   (inserts, updates, deletes) running throughout, every row arrives with its final value, none
//!   lost, none applied twice;
//! - a kill -9 of the coordinator during `follow start`, after the slot exists and before the
//!   follower starts: a second `follow start` finishes and follows; `follow cleanup` leaves no
//!   slot, publication, origin or open hostshift session behind.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostshift_tests::rig::{self, AgentProc, OLD_IP, Sandbox, logical_world};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SCHEMA: &str = "
CREATE TABLE ff_rows (id int PRIMARY KEY, v int NOT NULL, note text);
CREATE TABLE ff_pair (a int, b uuid DEFAULT gen_random_uuid(), n int, PRIMARY KEY (a, b));
CREATE TABLE ff_nopk (a int, b text);
INSERT INTO ff_nopk SELECT g, 'seed' FROM generate_series(1, 10) g;
INSERT INTO ff_rows SELECT g, 0, 'seed' FROM generate_series(1, 20) g;
";

/// Tables with a primary key: followed whatever the config says.
const TABLES: [&str; 2] = ["ff_rows", "ff_pair"];

/// One transaction of the app per round `i`: a new numbered row, an update of an earlier one
/// (its value counts the updates it got), a delete of a still earlier one, a row of a second
/// table, and on the table without a primary key two equal rows, an update of both of an
/// earlier pair, an update of one of two equal rows, a delete.
fn round(i: i64) -> String {
    format!(
        "BEGIN;
         INSERT INTO ff_rows VALUES ({i}, 0, 'new');
         UPDATE ff_rows SET v = v + 1, note = 'updated in {i}' WHERE id IN ({a}, {b});
         DELETE FROM ff_rows WHERE id = {d};
         INSERT INTO ff_pair (a, n) VALUES ({i}, {i});
         INSERT INTO ff_nopk VALUES ({i}, 'n'), ({i}, 'n');
         UPDATE ff_nopk SET b = 'both' WHERE a = {a};
         UPDATE ff_nopk SET b = 'one' WHERE ctid = (SELECT ctid FROM ff_nopk WHERE a = {c} LIMIT 1);
         DELETE FROM ff_nopk WHERE a = {d};
         COMMIT;",
        c = i - 3,
        a = i - 1,
        b = i - 7,
        d = i - 13
    )
}

/// Writes rounds on the old host until stopped; any failed round is kept (none may fail: the
/// old database is not frozen here).
async fn start_writer(sb: &Sandbox, from: i64) -> rig::RoundWriter {
    rig::RoundWriter::start(sb, from, Duration::from_millis(20), |i| vec![round(i)]).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes pass both ways.
    Forward,
    /// New connections are closed at once (the port refuses).
    Down,
    /// No byte passes and nothing is closed: a network partition. Connections alive then (and
    /// accepted meanwhile) stay stalled for good; with a new epoch the live ones are closed
    /// first.
    Stall,
}

/// Stalled connections (client side, server side), kept open until the proxy is dropped.
type Held = Arc<Mutex<Vec<(TcpStream, Option<TcpStream>)>>>;

/// A real loopback TCP proxy in front of the old agent: the follower's (and the coordinator's)
/// connections to the old host pass through it, so the test can cut them or stall them.
struct Proxy {
    addr: SocketAddr,
    /// (epoch, mode): a new epoch closes every live connection.
    state: watch::Sender<(u64, Mode)>,
    held: Held,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((OLD_IP, 0)).await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel((0u64, Mode::Forward));
        let held: Held = Arc::default();
        let (st, h) = (state.clone(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = st.subscribe();
                let (epoch, mode) = *rx.borrow_and_update();
                let h = h.clone();
                tokio::spawn(async move {
                    match mode {
                        Mode::Down => return,
                        Mode::Stall => {
                            h.lock().expect("held").push((client, None));
                            return;
                        }
                        Mode::Forward => {}
                    }
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            changed = rx.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                let (e, m) = *rx.borrow_and_update();
                                if e != epoch {
                                    return;
                                }
                                if m == Mode::Stall {
                                    h.lock().expect("held").push((client, Some(server)));
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            state,
            held,
            accept,
        }
    }

    fn address(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn set(&self, mode: Mode, new_epoch: bool) {
        self.state.send_modify(|(e, m)| {
            if new_epoch {
                *e += 1;
            }
            *m = mode;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut h) = self.held.lock() {
            h.clear();
        }
    }
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

async fn schema(sb: &Sandbox) {
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
}

async fn tables_on_new(sb: &Sandbox) -> i64 {
    sb.world
        .new_pg
        .connect(&sb.new_db)
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('ff_rows', 'ff_pair')",
            &[],
        )
        .await
        .expect("tables")
        .get(0)
}

/// `relreplident` of `ff_nopk` on the old host.
async fn identity(sb: &Sandbox) -> String {
    sb.world
        .old_pg
        .connect(&sb.old_db)
        .await
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'ff_nopk'::regclass",
            &[],
        )
        .await
        .expect("identity")
        .get(0)
}

async fn compare(sb: &Sandbox, why: &str, tables: &[&str]) {
    rig::wait_caught_up(sb, "app", why).await;
    for t in tables {
        let (a, b) = (
            rig::table_rows(&sb.world.old_pg, &sb.old_db, t).await,
            rig::table_rows(&sb.world.new_pg, &sb.new_db, t).await,
        );
        assert!(a.len() > 20, "{t} has rows ({})", a.len());
        assert_eq!(
            a, b,
            "{why}: table {t}: every row on the new host equals the old host's (none lost, none applied twice)"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((OLD_IP, 0))
        .expect("bind a free port")
        .local_addr()
        .expect("address")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_cut_and_stalled_connections_and_a_kill_of_the_old_agent() {
    let mut sb = Sandbox::new_in(logical_world(), "ff_old_agent").await;
    schema(&sb).await;
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    // A fixed port: the restarted agent comes back where its peers look for it.
    old_setup.port = free_port();
    sb.start(old_setup.clone(), sb.new_setup()).await;
    let backend = sb.old().addr;
    let proxy = Proxy::start(backend).await;
    // The plan (and so the follower's source address) names the proxy.
    sb.addresses.0 = proxy.address();
    sb.write_plan("");
    rename_plan(&sb, "ff-old-agent");

    let writer = start_writer(&sb, 1000).await;
    writer.wait_rounds(5).await;
    let out = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.json()["databases"][0]["not_followed"]
            .to_string()
            .contains("public.ff_nopk"),
        "without [allow] replica_identity_full the table without a primary key is not followed: {}",
        out.stdout
    );
    assert_eq!(identity(&sb).await, "d", "nothing changed on the old host");
    // status says what the table not followed costs: copied whole in the freeze, its size.
    let st = sb.cli(&["follow", "status", "--json"]).await;
    let d = &st.json()["databases"][0];
    let i = d["not_followed"]
        .as_array()
        .and_then(|v| v.iter().position(|t| t == "public.ff_nopk"))
        .unwrap_or_else(|| panic!("{}", st.stdout));
    assert!(
        d["not_followed_bytes"][i].as_u64().is_some_and(|b| b > 0),
        "{}",
        st.stdout
    );
    let text = sb.cli(&["follow", "status"]).await;
    assert!(
        text.stdout.contains("not followed: public.ff_nopk (")
            && text.stdout.contains("copied whole in the freeze")
            && text.stdout.contains("replica_identity_full"),
        "{}",
        text.both()
    );
    assert_eq!(
        tables_on_new(&sb).await,
        2,
        "the first sync created the tables"
    );
    rig::wait_caught_up(&sb, "app", "the follower applies").await;

    // 1. The connection cut: every live connection closed, the port refusing for 2 s.
    proxy.set(Mode::Down, true);
    writer.wait_rounds(40).await;
    proxy.set(Mode::Forward, false);
    rig::wait_caught_up(&sb, "app", "the follower resumes after the cut").await;

    // 2. A partition: nothing passes and nothing is closed; the follower must notice by itself.
    proxy.set(Mode::Stall, false);
    writer.wait_rounds(40).await;
    proxy.set(Mode::Forward, false);
    rig::wait_caught_up(
        &sb,
        "app",
        "the follower gives up the stalled connection and resumes",
    )
    .await;

    // 3. The connection cut and the partition at once: the follower's reconnect is accepted and
    //    then hears nothing (no TLS handshake).
    proxy.set(Mode::Stall, true);
    writer.wait_rounds(40).await;
    proxy.set(Mode::Forward, false);
    rig::wait_caught_up(
        &sb,
        "app",
        "the follower gives up a connect that never completes its handshake",
    )
    .await;

    // 4. kill -9 of the old agent, restarted on the same port while the app writes on.
    sb.old.as_mut().expect("old agent").kill();
    writer.wait_rounds(40).await;
    let restarted = AgentProc::start(&old_setup, &sb.dir, sb.world).await;
    assert_eq!(restarted.addr, backend, "the old agent is back on its port");
    sb.old = Some(restarted);
    rig::wait_caught_up(
        &sb,
        "app",
        "the follower resumes after the old agent's kill",
    )
    .await;
    writer.wait_rounds(20).await;
    let errors = writer.finish().await;
    assert!(
        errors.is_empty(),
        "the app's writes kept working: {errors:?}"
    );
    compare(
        &sb,
        "after the cut, the stall and the kill of the old agent",
        &TABLES,
    )
    .await;
    assert_eq!(
        identity(&sb).await,
        "d",
        "without [allow] replica_identity_full the table without a primary key keeps its identity"
    );

    let clean = sb.cli(&["follow", "cleanup", "--yes"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
    assert_eq!(
        rig::follow_leftovers(&sb, "hostshift_ff_old_agent").await,
        (0, 0, 0),
        "no slot, publication or origin of hostshift remains"
    );
}

/// hostshift's sessions on the old database that hold a transaction open (an exported snapshot
/// left behind would hold back the old host's vacuum).
async fn open_hostshift_transactions(sb: &Sandbox) -> Vec<String> {
    let c = sb.world.old_pg.connect(&sb.old_db).await;
    c.query(
        "SELECT application_name || ': ' || state || ': ' || left(query, 80) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND application_name LIKE 'hostshift%' AND xact_start IS NOT NULL",
        &[],
    )
    .await
    .expect("sessions")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_of_the_coordinator_during_follow_start_leaves_nothing_a_second_start_or_cleanup_cannot_finish()
 {
    let mut sb = Sandbox::new_in(logical_world(), "ff_coordinator").await;
    schema(&sb).await;
    let mut old_setup = sb.old_setup();
    old_setup.follow_databases.push("app".into());
    old_setup.replica_identity_full.push("app".into());
    sb.start(old_setup, sb.new_setup()).await;
    rename_plan(&sb, "ff-coordinator");
    let writer = start_writer(&sb, 1000).await;
    writer.wait_rounds(5).await;

    // kill -9 of `hostshift follow start` as soon as the slot exists (the sync is under way).
    let plan = sb.plan_path().display().to_string();
    let mut child = tokio::process::Command::new(rig::hostshift_bin())
        .args(["follow", "start", "--plan", &plan])
        .current_dir(&sb.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .env_remove("HOSTSHIFT_PLAN")
        .spawn()
        .expect("start hostshift");
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    rig::eventually(Duration::from_secs(60), "the slot", || async {
        let n: i64 = old
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'hostshift_ff_coordinator'",
                &[],
            )
            .await
            .expect("slots")
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    child.start_kill().expect("kill -9 the coordinator");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let st = sb.cli(&["follow", "status", "--json"]).await;
    assert_eq!(
        st.json()["databases"][0]["state"],
        "not following",
        "the kill landed between the slot and the follower: {}",
        st.stdout
    );

    // A second start finishes and follows from the kept slot.
    let again = sb.cli(&["follow", "start", "--json"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(
        again.json()["databases"][0]["created"],
        false,
        "{}",
        again.stdout
    );
    // [allow] replica_identity_full: the table without a primary key is followed too.
    assert_eq!(
        again.json()["databases"][0]["not_followed"],
        serde_json::json!([]),
        "{}",
        again.stdout
    );
    assert_eq!(
        identity(&sb).await,
        "f",
        "REPLICA IDENTITY FULL while following"
    );
    let record = sb.dir.join("state-old/follow/identity-app.json");
    assert!(
        std::fs::read_to_string(&record).is_ok_and(|t| t.contains("ff_nopk")),
        "the original identity is recorded in the old agent's state_dir: {}",
        record.display()
    );
    writer.wait_rounds(30).await;
    let errors = writer.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    compare(
        &sb,
        "after a second start",
        &["ff_rows", "ff_pair", "ff_nopk"],
    )
    .await;

    // The idle follower peeks every 200 ms through one PostgreSQL session of the old agent, not
    // one session per peek (sessions established on the old database, counted by PostgreSQL).
    let opened = || async {
        sb.world
            .old_pg
            .connect(&sb.old_db)
            .await
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .expect("sessions")
            .get::<_, i64>(0)
    };
    let before = opened().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = opened().await - before;
    assert!(
        during <= 3,
        "3 s of an idle follower (about 15 peeks) opened {during} sessions on the old database"
    );

    // Cleanup leaves nothing behind.
    let clean = sb.cli(&["follow", "cleanup", "--yes"]).await;
    assert_eq!(clean.code, 0, "{}", clean.both());
    assert_eq!(
        rig::follow_leftovers(&sb, "hostshift_ff_coordinator").await,
        (0, 0, 0),
        "no slot, publication or origin of hostshift remains"
    );
    assert_eq!(
        identity(&sb).await,
        "d",
        "cleanup put the original identity back"
    );
    let on_new: String = sb
        .world
        .new_pg
        .connect(&sb.new_db)
        .await
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'ff_nopk'::regclass",
            &[],
        )
        .await
        .expect("identity on the new host")
        .get(0);
    assert_eq!(
        on_new, "d",
        "the copy carried REPLICA IDENTITY FULL to the new host: cleanup puts the original back there too"
    );
    assert!(!record.exists(), "and forgot the record");
    let open = rig::eventually(
        Duration::from_secs(20),
        "hostshift's transactions to end",
        || async {
            let v = open_hostshift_transactions(&sb).await;
            v.is_empty().then_some(v)
        },
    )
    .await;
    assert!(open.is_empty());
}
