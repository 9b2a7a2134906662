//! Two whole app hosts for cutover tests, and the test's own view of what the cutover did to them.
//!
//! A [`CutoverRig`] is a [`Sandbox`] (databases, storage trees, `backend/.env`, two agents) plus
//! what runs on an app host: on each side a real PM2 with the fixture `backend` online and a real
//! nginx in front of it (old on 127.0.0.2, new on 127.0.0.3); optionally an Elastic IP in moto on
//! the old instance ([`super::moto::Eip`]); and a plan with `[pm2]`, `[nginx]`, `[[health]]`,
//! `[freeze]` (all three methods), `[switch]` and `[cutover]`. The old agent may control services
//! (maintenance page, stopping apps) and keeps backups in `<sandbox>/old-backups`.
//!
//! The checks ([`CutoverRig::assert_old_serving`], [`CutoverRig::assert_old_frozen`], ...) look at
//! the hosts the way a user would — a fresh database session as the app role, HTTP through nginx,
//! the test's own `pm2 jlist`, the site file's bytes — never at what `hostshift` reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use hostshift::lab::seed::{self, TABLES};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::error::SqlState;

use super::moto::Eip;
use super::{CliOutput, NEW_IP, NginxProc, OLD_IP, Pm2Rig, Sandbox, cli_in, fs, hostshift_bin};

/// A secret in the old host's `backend/.env` (which the plan moves): never in a report.
pub const ENV_JWT_SECRET: &str = "cutover-jwt-0a9f3c51e7";
/// The password inside that file's `DATABASE_URL`.
pub const ENV_DB_PASSWORD: &str = "cutover-dbpw-77e2b4d1";
/// `[freeze] budget_secs` of the rig's plan.
pub const BUDGET_SECS: u64 = 30;
/// The PM2 app on both hosts (the fixture's `backend`).
pub const APP: &str = "backend";
/// The steps of a cutover, in order, as the JSON result and the journal name them.
pub const STEPS: [&str; 7] = [
    "freeze maintenance-page",
    "freeze stop-apps",
    "freeze read-only",
    "delta",
    "prove",
    "switch",
    "verify",
];
/// The gates, as the JSON result names them.
pub const GATES: [&str; 8] = [
    "agents",
    "new apps",
    "health",
    "verify fresh",
    "backup",
    "schema",
    "switch",
    "freeze budget",
];

/// How a rig is built.
#[derive(Clone, Debug)]
pub struct CutoverSetup {
    /// Names the sandbox (keep it short: PM2 puts unix sockets below it).
    pub name: &'static str,
    /// Switch with an Elastic IP in moto (else `[switch] method = "none"`).
    pub elastic_ip: bool,
    /// `[switch] verify_urls`; default: `/health` through the new host's nginx.
    pub verify_urls: Option<Vec<String>>,
    /// A blue/green pair: both agents `sync_role = "either"`, each allowing the writes a sync
    /// needs and the read-only freeze (docs/agent-config.md, Blue/green).
    pub blue_green: bool,
}

impl CutoverSetup {
    /// An Elastic IP switch verified through the new nginx.
    pub fn new(name: &'static str) -> CutoverSetup {
        CutoverSetup {
            name,
            elastic_ip: true,
            verify_urls: None,
            blue_green: false,
        }
    }

    /// `[switch] method = "none"`.
    pub fn without_switch(mut self) -> CutoverSetup {
        self.elastic_ip = false;
        self
    }
}

/// Two app hosts, their agents and a cutover plan.
pub struct CutoverRig {
    pub sb: Sandbox,
    pub old_pm2: Pm2Rig,
    pub new_pm2: Pm2Rig,
    pub old_nginx: NginxProc,
    pub new_nginx: NginxProc,
    pub eip: Option<Eip>,
    /// The old agent's `[backup] dir`.
    pub backup_dir: PathBuf,
    /// The plan's extra TOML (everything after the sandbox's own tables).
    pub plan_extra: String,
}

impl CutoverRig {
    /// Builds both hosts, starts the agents and the apps (online, answering through nginx),
    /// sets up moto when asked, and writes the plan.
    pub async fn start(setup: CutoverSetup) -> CutoverRig {
        let mut sb = Sandbox::new(setup.name).await;
        std::fs::write(
            &sb.old_env,
            format!(
                "# backend (hostshift cutover test)\nPORT=3666\n\
                 DATABASE_URL=postgres://app:{ENV_DB_PASSWORD}@localhost/app\n\
                 JWT_SECRET={ENV_JWT_SECRET}\n"
            ),
        )
        .expect("write the old .env");
        // Apart from the sandbox's backend-env: that file is synced, and must not move the new
        // app's port.
        let old_pm2 = Pm2Rig::prepare(&sb.dir.join("pm2-old"));
        let new_pm2 = Pm2Rig::prepare(&sb.dir.join("pm2-new"));
        let (old_nginx, new_nginx, eip) = tokio::join!(
            NginxProc::start(&sb.dir, "old", OLD_IP, old_pm2.port),
            NginxProc::start(&sb.dir, "new", NEW_IP, new_pm2.port),
            async {
                if setup.elastic_ip {
                    Some(Eip::start().await)
                } else {
                    None
                }
            }
        );
        let backup_dir = sb.dir.join("old-backups");

        let mut old = sb.old_setup();
        old.control_services = true;
        old.extra.push_str(&old_pm2.agent_toml(&[APP]));
        old.extra.push_str(&old_nginx.agent_toml());
        old.extra.push_str(&format!(
            "\n[backup]\ndir = {}\n",
            toml::Value::String(backup_dir.display().to_string())
        ));
        let mut new = sb.new_setup();
        new.extra.push_str(&new_pm2.agent_toml(&[APP]));
        new.extra.push_str(&new_nginx.agent_toml());
        if setup.blue_green {
            for s in [&mut old, &mut new] {
                s.sync_role = "either".into();
                s.control_services = true;
                for (list, v) in [
                    (&mut s.restore_databases, "app"),
                    (&mut s.freeze_databases, "app"),
                    (&mut s.write_storage, "evaluations"),
                    (&mut s.write_files, "backend-env"),
                ] {
                    if !list.iter().any(|x| x == v) {
                        list.push(v.into());
                    }
                }
            }
        }
        sb.start(old, new).await;

        let verify_urls = setup
            .verify_urls
            .clone()
            .unwrap_or_else(|| vec![new_nginx.url("/health")]);
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        let switch = match &eip {
            Some(e) => e.plan_switch(&verify_urls),
            None => format!(
                "[switch]\nmethod = \"none\"\nverify_urls = [{}]\n\n",
                verify_urls
                    .iter()
                    .map(|u| q(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let plan_extra = format!(
            "[pm2]\napps = [{app}]\n\n\
             [nginx]\nenabled = true\nmaintenance_pass = [\"/health\"]\n\n\
             [[health]]\nname = \"backend-new\"\nurl = {new_health}\nfrom = \"new\"\n\
             json_field = \"status=ok\"\ntimeout_secs = 2\nretries = 3\n\n\
             [[health]]\nname = \"site-old\"\nurl = {old_health}\nfrom = \"old\"\n\
             json_field = \"status=ok\"\ntimeout_secs = 2\nretries = 3\n\n\
             [freeze]\nmethods = [\"maintenance-page\", \"stop-apps\", \"read-only\"]\n\
             budget_secs = {BUDGET_SECS}\n\n\
             {switch}\
             [cutover]\nverify_freshness_mins = 60\nbackup_max_age_hours = 24\n",
            app = q(APP),
            new_health = q(&format!("http://127.0.0.1:{}/health", new_pm2.port)),
            old_health = q(&old_nginx.url("/health")),
        );
        let rig = CutoverRig {
            sb,
            old_pm2,
            new_pm2,
            old_nginx,
            new_nginx,
            eip,
            backup_dir,
            plan_extra,
        };
        rig.write_plan("");
        for side in ["old", "new"] {
            let out = rig.cli(&["pm2", "start", "--host", side, APP]).await;
            assert_eq!(out.code, 0, "start {APP} on {side}: {}", out.both());
        }
        for (side, pm2, nginx) in [
            ("old", &rig.old_pm2, &rig.old_nginx),
            ("new", &rig.new_pm2, &rig.new_nginx),
        ] {
            assert_eq!(pm2.proc(APP).await.status, "online", "{side} {APP}");
            let r = nginx.get("/health").await;
            assert_eq!(r.status, 200, "{side} nginx → {APP} /health: {r:?}");
        }
        rig
    }

    /// Writes the plan: the sandbox's tables, the rig's extra tables and `more` (raw TOML), and
    /// the instance ids in `[old]` / `[new]` when switching with an Elastic IP.
    pub fn write_plan(&self, more: &str) {
        self.sb.write_plan(&format!("{}{more}", self.plan_extra));
        if let Some(eip) = &self.eip {
            let path = self.sb.plan_path();
            let text = std::fs::read_to_string(&path).expect("read the plan");
            let mut with_ids = text.clone();
            for (agent, id) in [("old", &eip.old_instance), ("new", &eip.new_instance)] {
                let line = format!("agent = \"{agent}\"\n");
                assert!(
                    with_ids.contains(&line),
                    "the plan has no {line:?}:\n{text}"
                );
                with_ids = with_ids.replacen(&line, &format!("{line}instance_id = \"{id}\"\n"), 1);
            }
            std::fs::write(&path, with_ids).expect("write the plan");
        }
    }

    /// `hostshift ARGS --plan <plan>` in the sandbox with the AWS credentials moto accepts and
    /// `env`.
    pub async fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let plan = self.sb.plan_path().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--plan", &plan]);
        let mut vars: Vec<(&str, &str)> = Eip::cli_env().to_vec();
        vars.extend_from_slice(env);
        cli_in(&self.sb.dir, &all, &vars).await
    }

    /// `hostshift ARGS --plan <plan>` (see [`CutoverRig::cli_with`]).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with(args, &[]).await
    }

    /// [`CutoverRig::cli`] on a pseudo-terminal: the exit code and what the terminal showed.
    pub async fn on_a_terminal(&self, args: &[&str]) -> (i32, String) {
        let plan = self.sb.plan_path().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--plan", &plan]);
        super::on_a_terminal(&self.sb.dir, &all, &Eip::cli_env()).await
    }

    /// `sync` then `verify`, both succeeding: what the cutover's gates want to see.
    pub async fn sync_and_verify(&self) {
        let out = self.cli(&["sync"]).await;
        assert_eq!(out.code, 0, "sync: {}", out.both());
        let out = self.cli(&["verify"]).await;
        assert_eq!(out.code, 0, "verify: {}", out.both());
    }

    /// The old agent's config must allow the read-only freeze of `app`.
    pub fn assert_old_may_freeze(&self) {
        let config = std::fs::read_to_string(&self.sb.old().config).expect("old agent config");
        assert!(
            config
                .lines()
                .any(|l| l.trim_start().starts_with("freeze_databases") && l.contains("\"app\"")),
            "the old agent's config lacks `[allow] freeze_databases = [\"app\"]` (Sandbox::old_setup \
             is meant to grant it), so no read-only freeze can work:\n{config}"
        );
    }

    // ---------------------------------------------------------------------------------------
    // The journal

    /// `<plan dir>/.hostshift/test`.
    pub fn state_dir(&self) -> PathBuf {
        self.sb.dir.join(".hostshift/test")
    }

    /// Every journal line, parsed (a torn last line is left out).
    pub fn journal(&self) -> Vec<Value> {
        read_journal(&self.state_dir().join("journal.jsonl"))
    }

    /// The journal's `cutover` events, of run `run` when given.
    pub fn cutover_events(&self, run: Option<&str>) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["phase"] == "cutover" && run.is_none_or(|r| e["run"] == r))
            .collect()
    }

    // ---------------------------------------------------------------------------------------
    // The old host as its users see it

    /// A write probe in a fresh session as the app's role on the old database: an `INSERT` (with
    /// an explicit id, so no sequence moves) inside a transaction that is then rolled back. A
    /// read-only database refuses the INSERT (25006); otherwise nothing changes.
    pub async fn old_write_probe_as_app(&self) -> Result<(), tokio_postgres::Error> {
        let pg = &self.sb.world.old_pg;
        let (mut client, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=app dbname={} application_name=hostshift-test-probe \
                 connect_timeout=5",
                pg.listen, pg.port, self.sb.old_db
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = async {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO public.assessments (id, user_id, question_id, answer, is_correct) \
                 VALUES (-1, 1, 1, '{\"probe\": true}', false)",
                &[],
            )
            .await?;
            tx.rollback().await
        };
        let r = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("the write probe on the old database answers within 10 s");
        drop(client);
        conn.abort();
        r
    }

    /// The old host serves and takes writes: a fresh app session may INSERT, the site file is the
    /// original byte for byte, `/health` through nginx reaches the running app, `/` is not a
    /// maintenance page, and PM2 shows the app online.
    pub async fn assert_old_serving(&self, why: &str) {
        if let Err(e) = self.old_write_probe_as_app().await {
            panic!(
                "{why}: the old database must take writes again, but an INSERT as app failed: {e:?}"
            );
        }
        assert!(
            self.old_nginx.site_bytes() == self.old_nginx.original_site,
            "{why}: the old nginx site must be the original byte for byte; it is:\n{}",
            String::from_utf8_lossy(&self.old_nginx.site_bytes())
        );
        let root = self.old_nginx.get("/").await;
        assert_ne!(
            root.status, 503,
            "{why}: old nginx still shows maintenance: {root:?}"
        );
        let health = self.old_nginx.get("/health").await;
        assert_eq!(
            health.status, 200,
            "{why}: /health through the old nginx: {health:?}"
        );
        let p = self.old_pm2.proc(APP).await;
        assert_eq!(
            p.status, "online",
            "{why}: the old {APP} must be online: {p:?}"
        );
    }

    /// The old host is frozen: the app's role refused (its connection for want of `CONNECT`,
    /// 42501, or its INSERT as read-only, 25006), `/` a 503 maintenance page
    /// with `Retry-After`, `/health` passed through to the (stopped) app rather than answered by
    /// the maintenance page, the app stopped in PM2.
    pub async fn assert_old_frozen(&self, why: &str) {
        match self.old_write_probe_as_app().await {
            Ok(()) => panic!("{why}: the old database took a write; it must be read-only"),
            Err(e) => assert!(
                e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
                    || e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{why}: the app's write on the old database must be refused by the freeze \
                 (connection refused, 42501, or read-only, 25006): {e:?}"
            ),
        }
        let root = self.old_nginx.get("/").await;
        assert_eq!(root.status, 503, "{why}: GET / on the old nginx: {root:?}");
        assert!(
            root.header("retry-after").is_some(),
            "{why}: the maintenance page needs Retry-After: {root:?}"
        );
        // /health is passed to the app, which is stopped: nginx's own 502, not the 503 page.
        let health = self.old_nginx.get("/health").await;
        assert_eq!(
            health.status, 502,
            "{why}: /health must pass maintenance and reach the stopped app (502): {health:?}"
        );
        let p = self.old_pm2.proc(APP).await;
        assert_eq!(
            p.status, "stopped",
            "{why}: the old {APP} must be stopped: {p:?}"
        );
    }

    /// What must never change on the old host except by the reversible freeze: the database's
    /// content (tables, sequences, large objects), the storage tree, the `.env` bytes.
    pub async fn old_data(&self) -> OldData {
        let c = self.sb.world.old_pg.connect(&self.sb.old_db).await;
        OldData {
            db: seed::content_digest(&c)
                .await
                .expect("digest of the old database"),
            storage: fs::content(&self.sb.old_storage),
            env: std::fs::read(&self.sb.old_env).expect("read the old .env"),
        }
    }

    /// Content digests of the old and the new database.
    pub async fn digests(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let old = self.sb.world.old_pg.connect(&self.sb.old_db).await;
        let new = self.sb.world.new_pg.connect(&self.sb.new_db).await;
        (
            seed::content_digest(&old)
                .await
                .expect("digest of the old database"),
            seed::content_digest(&new)
                .await
                .expect("digest of the new database"),
        )
    }

    /// Row counts of the seeded tables: (old, new).
    pub async fn row_counts(&self) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let count = |pg: &'static super::PgInfo, db: String| async move {
            let c = pg.connect(&db).await;
            let mut counts = BTreeMap::new();
            for t in TABLES {
                let n: i64 = c
                    .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
                    .await
                    .unwrap_or_else(|e| panic!("count {t} in {db}: {e}"))
                    .get(0);
                counts.insert(t.to_string(), n);
            }
            counts
        };
        let w = self.sb.world;
        (
            count(&w.old_pg, self.sb.old_db.clone()).await,
            count(&w.new_pg, self.sb.new_db.clone()).await,
        )
    }

    /// Which of `ids` (of `assessments`) the new database lacks.
    pub async fn missing_on_new(&self, ids: &[i64]) -> Vec<i64> {
        let c = self.sb.world.new_pg.connect(&self.sb.new_db).await;
        let rows = c
            .query(
                "SELECT x FROM unnest($1::bigint[]) AS x \
                 WHERE NOT EXISTS (SELECT 1 FROM public.assessments a WHERE a.id = x) ORDER BY x",
                &[&ids],
            )
            .await
            .expect("look up the acknowledged ids on the new database");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Starts `hostshift ARGS --plan <plan>` without waiting for it (output into files in the
    /// sandbox), to kill it half-way.
    pub fn spawn_cli(&self, args: &[&str], tag: &str) -> RunningCli {
        let stdout = self.sb.dir.join(format!("{tag}.stdout"));
        let stderr = self.sb.dir.join(format!("{tag}.stderr"));
        let mut cmd = tokio::process::Command::new(hostshift_bin());
        cmd.args(args)
            .arg("--plan")
            .arg(self.sb.plan_path())
            .current_dir(&self.sb.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .env_remove("HOSTSHIFT_PLAN");
        for (k, v) in Eip::cli_env() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start hostshift");
        RunningCli {
            child,
            stdout,
            stderr,
        }
    }
}

/// The old host's data, for "unchanged" comparisons.
#[derive(Debug, PartialEq, Eq)]
pub struct OldData {
    pub db: BTreeMap<String, String>,
    pub storage: BTreeMap<String, (String, String, u32)>,
    pub env: Vec<u8>,
}

/// Reads a journal file (one JSON object a line; unparsable lines are left out).
pub fn read_journal(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A `hostshift` process the test may kill.
pub struct RunningCli {
    child: tokio::process::Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl RunningCli {
    /// Its exit code if it has ended.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .expect("poll hostshift")
            .map(|st| st.code().unwrap_or(-1))
    }

    /// SIGKILL, as a crash or `kill -9` would; waits until it is gone.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("kill hostshift");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("hostshift gone within 10 s of SIGKILL")
            .expect("wait for hostshift");
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

/// An HTTP endpoint in the test process whose answer the test sets: `GET` anything → the current
/// status (body `ok` for 200, `unavailable` otherwise). Stands in for the public URL the cutover
/// verifies after its switch.
pub struct StatusEndpoint {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    /// Requests answered so far.
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusEndpoint {
    /// Listens on `127.0.0.1:<free port>`, answering `status`.
    pub async fn start(status: u16) -> StatusEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the endpoint");
        let addr = listener.local_addr().expect("address");
        let status = Arc::new(AtomicU16::new(status));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, s.load(Ordering::SeqCst)));
            }
        });
        StatusEndpoint {
            addr,
            status,
            hits,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer `status` from now on.
    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for StatusEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut s: TcpStream, status: u16) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let body = if status == 200 { "ok" } else { "unavailable" };
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}
