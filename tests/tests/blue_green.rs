//! Blue/green: a swap old → new → old → new between two agents whose configs allow both
//! directions (`sync_role = "either"`), each leg its own `[migration] name`, the app writing
//! during every sync and into every freeze, and not one acknowledged write lost. Only the steps
//! docs/cutover.md ("Blue/green: moving back and forth") prescribes: a plan per direction,
//! `hostshift unfreeze --host new` before syncing into the host the previous leg froze, sync,
//! verify, cutover.

use std::time::Duration;

use hostshift_tests::rig::PgInfo;
use hostshift_tests::rig::cutover::{CutoverRig, CutoverSetup};
use hostshift_tests::rig::writer::{Writer, WriterOptions};

const WRITES: usize = 20;
const WAIT: Duration = Duration::from_secs(30);

/// One host of the pair, as the test knows it.
struct Host<'a> {
    agent: &'static str,
    address: String,
    pg: &'a PgInfo,
    db: String,
    app_port: u16,
    nginx_health: String,
}

fn hosts(rig: &CutoverRig) -> (Host<'_>, Host<'_>) {
    let w = rig.sb.world;
    (
        Host {
            agent: "old",
            address: rig.sb.addresses.0.clone(),
            pg: &w.old_pg,
            db: rig.sb.old_db.clone(),
            app_port: rig.old_pm2.port,
            nginx_health: rig.old_nginx.url("/health"),
        },
        Host {
            agent: "new",
            address: rig.sb.addresses.1.clone(),
            pg: &w.new_pg,
            db: rig.sb.new_db.clone(),
            app_port: rig.new_pm2.port,
            nginx_health: rig.new_nginx.url("/health"),
        },
    )
}

/// The plan of one leg: data from `from` to `to`, under its own migration name.
fn write_leg_plan(rig: &CutoverRig, name: &str, from: &Host<'_>, to: &Host<'_>) {
    let c = &rig.sb.world.certs;
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let text = format!(
        "[migration]\nname = {name}\n\n\
         [old]\naddress = {oa}\nagent = {oag}\n\n\
         [new]\naddress = {na}\nagent = {nag}\n\n\
         [tls]\nca = {ca}\ncert = {cert}\nkey = {key}\n\n\
         [[databases]]\nname = \"app\"\n\n\
         [[storage]]\nname = \"evaluations\"\n\n\
         [[files]]\nname = \"backend-env\"\n\n\
         [pm2]\napps = [\"backend\"]\n\n\
         [nginx]\nenabled = true\nmaintenance_pass = [\"/health\"]\n\n\
         [[health]]\nname = \"backend-new\"\nurl = {new_health}\nfrom = \"new\"\n\
         json_field = \"status=ok\"\ntimeout_secs = 2\nretries = 3\n\n\
         [[health]]\nname = \"site-old\"\nurl = {old_health}\nfrom = \"old\"\n\
         json_field = \"status=ok\"\ntimeout_secs = 2\nretries = 3\n\n\
         [freeze]\nmethods = [\"maintenance-page\", \"stop-apps\", \"read-only\"]\n\
         budget_secs = 30\n\n\
         [switch]\nmethod = \"none\"\nverify_urls = [{verify}]\n\n\
         [cutover]\nverify_freshness_mins = 60\nbackup_max_age_hours = 24\n",
        name = q(name),
        oa = q(&from.address),
        oag = q(from.agent),
        na = q(&to.address),
        nag = q(to.agent),
        ca = q(&c.ca_cert.display().to_string()),
        cert = q(&c.coordinator_cert.display().to_string()),
        key = q(&c.coordinator_key.display().to_string()),
        new_health = q(&format!("http://127.0.0.1:{}/health", to.app_port)),
        old_health = q(&from.nginx_health),
        verify = q(&to.nginx_health),
    );
    std::fs::write(rig.sb.plan_path(), text).expect("write the leg's plan");
}

fn writer(h: &Host<'_>, label: &str) -> Writer {
    Writer::start(WriterOptions::new(h.pg, &h.db, "app", label))
}

async fn missing(h: &Host<'_>, ids: &[i64]) -> Vec<i64> {
    let c = h.pg.connect(&h.db).await;
    c.query(
        "SELECT x FROM unnest($1::bigint[]) AS x \
         WHERE NOT EXISTS (SELECT 1 FROM public.assessments a WHERE a.id = x) ORDER BY x",
        &[&ids],
    )
    .await
    .expect("look up the acknowledged ids")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// One leg: the app writes on `from` during the sync and into the cutover's freeze; afterwards
/// every acknowledged write is on `to`, and `status` names `from` as the frozen host.
async fn leg(rig: &CutoverRig, n: usize, from: &Host<'_>, to: &Host<'_>) {
    let name = format!("leg{n}");
    let during_sync = writer(from, &format!("{name}-sync"));
    during_sync.wait_acked(WRITES, WAIT).await;
    let out = rig.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{name}: sync while writing: {}", out.both());
    let w1 = during_sync.stop().await;
    rig.sync_and_verify().await;

    let into_freeze = writer(from, &format!("{name}-freeze"));
    into_freeze.wait_acked(WRITES, WAIT).await;
    let out = rig
        .cli(&[
            "cutover",
            "--yes",
            "--json",
            "--skip-backup-check",
            "blue/green test: each host keeps the other as its copy",
        ])
        .await;
    if out.code == 0 {
        into_freeze.wait_refused(WAIT).await;
    }
    let w2 = into_freeze.stop().await;
    assert_eq!(out.code, 0, "{name}: cutover: {}", out.both());
    let acked: Vec<i64> = w1.acked.iter().chain(&w2.acked).copied().collect();
    assert!(acked.len() >= 2 * WRITES, "{name}: {acked:?}");
    let lost = missing(to, &acked).await;
    assert!(
        lost.is_empty(),
        "{name}: acknowledged writes on {} missing on {}: {lost:?}",
        from.agent,
        to.agent
    );

    let st = rig.cli(&["status", "--json"]).await;
    assert_eq!(st.code, 0, "{name}: status: {}", st.both());
    let j = st.json();
    assert_eq!(j["state"], "switched", "{name}: {j:#}");
    assert_eq!(j["frozen_agent"], from.agent, "{name}: {j:#}");
    assert_eq!(
        j["direction"],
        format!("{} -> {}", from.agent, to.agent),
        "{name}: {j:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_swap_old_new_old_new_with_the_app_writing_loses_no_acknowledged_write() {
    let rig = CutoverRig::start(CutoverSetup {
        blue_green: true,
        ..CutoverSetup::new("bg_swap").without_switch()
    })
    .await;
    let (a, b) = hosts(&rig);

    write_leg_plan(&rig, "leg1", &a, &b);
    let out = rig.cli(&["check"]).await;
    assert_eq!(out.code, 0, "check of a blue/green pair: {}", out.both());
    leg(&rig, 1, &a, &b).await;

    // The way back under the first leg's name: refused, naming what to do.
    write_leg_plan(&rig, "leg1", &b, &a);
    let out = rig.cli(&["sync"]).await;
    assert_eq!(out.code, 3, "{}", out.both());
    assert!(
        out.stderr.contains("this plan moves data the other way")
            && out.stderr.contains("[migration] name"),
        "{}",
        out.both()
    );

    // Its own name, but `a` is still frozen: the sync says so and writes nothing.
    write_leg_plan(&rig, "leg2", &b, &a);
    let env_before = std::fs::read(&rig.sb.old_env).expect("a's .env");
    std::fs::write(&rig.sb.new_env, b"# edited on b\nPORT=3666\n").expect("edit b's .env");
    let out = rig.cli(&["sync"]).await;
    assert_eq!(out.code, 3, "sync into a frozen host: {}", out.both());
    assert!(
        out.stderr.contains("frozen by an earlier cutover")
            && out.stderr.contains("hostshift unfreeze --host new"),
        "{}",
        out.both()
    );
    assert_eq!(
        std::fs::read(&rig.sb.old_env).expect("a's .env"),
        env_before,
        "nothing may be written into the frozen host"
    );
    rig.assert_old_frozen("before the unfreeze").await;

    let out = rig.cli(&["unfreeze", "--host", "new", "--yes"]).await;
    assert_eq!(out.code, 0, "unfreeze: {}", out.both());
    rig.assert_old_serving("after the unfreeze").await;
    leg(&rig, 2, &b, &a).await;

    write_leg_plan(&rig, "leg3", &a, &b);
    let out = rig.cli(&["unfreeze", "--host", "new", "--yes"]).await;
    assert_eq!(out.code, 0, "unfreeze: {}", out.both());
    leg(&rig, 3, &a, &b).await;
}
