//! A test's own corner of the world: a folder, databases cloned from the seeded template, two
//! agents, and a plan for them.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::agent::{AgentProc, AgentSetup};
use super::world::{NEW_IP, OLD_IP, TEMPLATE_DB, World, world};

static NEXT: AtomicUsize = AtomicUsize::new(1);

/// One test's folder, databases, agents and plan.
pub struct Sandbox {
    pub world: &'static World,
    /// The test's folder.
    pub dir: PathBuf,
    /// Database on the old cluster, a clone of the seeded template.
    pub old_db: String,
    /// Empty database on the new cluster.
    pub new_db: String,
    /// Storage tree of the old host (seeded with a few files).
    pub old_storage: PathBuf,
    /// Storage tree of the new host (empty).
    pub new_storage: PathBuf,
    /// `backend/.env` of the old host.
    pub old_env: PathBuf,
    /// Where the new host keeps it.
    pub new_env: PathBuf,
    pub old: Option<AgentProc>,
    pub new: Option<AgentProc>,
    /// Addresses the plan uses (kept when an agent is stopped).
    pub addresses: (String, String),
    /// Whether the plan written by [`Sandbox::start`] moves the database `app`.
    pub plan_databases: bool,
}

impl Sandbox {
    /// A fresh sandbox named after the test.
    pub async fn new(test: &str) -> Sandbox {
        Self::new_in(world(), test).await
    }

    /// A fresh sandbox in `world` (e.g. [`super::logical_world`]).
    pub async fn new_in(world: &'static World, test: &str) -> Sandbox {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = world.dir.join("tests").join(format!("{test}-{n}"));
        std::fs::create_dir_all(&dir).expect("sandbox dir");
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let old_db = format!("t{n}_{slug}_old");
        let new_db = format!("t{n}_{slug}_new");
        clone_template(world, &old_db).await;
        let admin = world.new_pg.connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{new_db}\""))
            .await
            .expect("create the new host's database");

        let old_storage = dir.join("old/storage/project-evaluations");
        let new_storage = dir.join("new/storage/project-evaluations");
        for (i, sub) in ["2026/01", "2026/02", "2026/03"].iter().enumerate() {
            let d = old_storage.join(sub);
            std::fs::create_dir_all(&d).expect("storage dir");
            std::fs::write(
                d.join(format!("eval-{i}.json")),
                format!("{{\"run\":{i},\"score\":0.{i}}}"),
            )
            .expect("storage file");
        }
        std::fs::create_dir_all(&new_storage).expect("new storage dir");
        let old_env = dir.join("old/backend/.env");
        let new_env = dir.join("new/backend/.env");
        std::fs::create_dir_all(old_env.parent().expect("parent")).expect("backend dir");
        std::fs::create_dir_all(new_env.parent().expect("parent")).expect("backend dir");
        std::fs::write(
            &old_env,
            "# backend\nPORT=3666\nDATABASE_URL=postgres://app@localhost/app\nJWT_SECRET=s3cr3t\n",
        )
        .expect("env file");
        Sandbox {
            world,
            dir,
            old_db,
            new_db,
            old_storage,
            new_storage,
            old_env,
            new_env,
            old: None,
            new: None,
            addresses: (String::new(), String::new()),
            plan_databases: true,
        }
    }

    /// The old agent's usual config: database `app`, storage `evaluations`, file `backend-env`;
    /// nothing destructive allowed but the cutover's write freeze of `app`.
    pub fn old_setup(&self) -> AgentSetup {
        let mut s = AgentSetup::new("old", OLD_IP);
        s.databases
            .push(("app".into(), self.world.old_pg.conninfo(&self.old_db)));
        s.freeze_databases.push("app".into());
        s.storage
            .push(("evaluations".into(), self.old_storage.clone()));
        s.files.push(("backend-env".into(), self.old_env.clone()));
        s
    }

    /// The new agent's usual config: the same names, and every write a sync needs allowed.
    pub fn new_setup(&self) -> AgentSetup {
        let mut s = AgentSetup::new("new", NEW_IP);
        s.databases
            .push(("app".into(), self.world.new_pg.conninfo(&self.new_db)));
        s.storage
            .push(("evaluations".into(), self.new_storage.clone()));
        s.files.push(("backend-env".into(), self.new_env.clone()));
        s.restore_databases.push("app".into());
        s.write_storage.push("evaluations".into());
        s.write_files.push("backend-env".into());
        s.control_services = true;
        s
    }

    /// Starts both agents (concurrently) and writes `plan.toml` for them.
    pub async fn start(&mut self, old: AgentSetup, new: AgentSetup) {
        let (o, n) = tokio::join!(
            AgentProc::start(&old, &self.dir, self.world),
            AgentProc::start(&new, &self.dir, self.world)
        );
        self.addresses = (o.address(), n.address());
        self.old = Some(o);
        self.new = Some(n);
        self.write_plan("");
    }

    /// The old agent (started).
    pub fn old(&self) -> &AgentProc {
        self.old.as_ref().expect("old agent started")
    }

    /// The new agent (started).
    pub fn new_agent(&self) -> &AgentProc {
        self.new.as_ref().expect("new agent started")
    }

    /// `dir/plan.toml`.
    pub fn plan_path(&self) -> PathBuf {
        self.dir.join("plan.toml")
    }

    /// Writes the plan for the agents started by [`Sandbox::start`]; `extra` is appended as raw TOML
    /// (with its own `[freeze]` or `[switch]` table, that default is left out).
    pub fn write_plan(&self, extra: &str) {
        let c = &self.world.certs;
        let mut t = String::new();
        let _ = writeln!(t, "[migration]\nname = \"test\"\n");
        let _ = writeln!(
            t,
            "[old]\naddress = \"{}\"\nagent = \"old\"\n",
            self.addresses.0
        );
        let _ = writeln!(
            t,
            "[new]\naddress = \"{}\"\nagent = \"new\"\n",
            self.addresses.1
        );
        let _ = writeln!(
            t,
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            c.ca_cert.display().to_string(),
            c.coordinator_cert.display().to_string(),
            c.coordinator_key.display().to_string()
        );
        if self.plan_databases {
            let _ = writeln!(t, "[[databases]]\nname = \"app\"\n");
        }
        let _ = writeln!(
            t,
            "[[storage]]\nname = \"evaluations\"\n\n[[files]]\nname = \"backend-env\"\n"
        );
        let freeze = if self.plan_databases {
            "[\"read-only\"]"
        } else {
            "[]"
        };
        // `extra` may bring its own [freeze] / [switch] (a table cannot be defined twice).
        if !extra.contains("[freeze]") {
            let _ = writeln!(t, "[freeze]\nmethods = {freeze}\n");
        }
        if !extra.contains("[switch]") {
            let _ = writeln!(t, "[switch]\nmethod = \"none\"\n");
        }
        t.push_str(extra);
        std::fs::write(self.plan_path(), t).expect("write plan");
    }

    /// Runs `hostshift ARGS --plan <plan>` in the sandbox folder.
    pub async fn cli(&self, args: &[&str]) -> super::CliOutput {
        let plan = self.plan_path().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--plan", &plan]);
        super::cli_in(&self.dir, &all, &[]).await
    }
}

async fn clone_template(world: &World, name: &str) {
    let admin = world.old_pg.connect("postgres").await;
    let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE {TEMPLATE_DB} OWNER app");
    // Concurrent clones of one template can collide ("being accessed by other users"): retry.
    for attempt in 0..50 {
        match admin.batch_execute(&sql).await {
            Ok(()) => return,
            Err(e) if attempt < 49 && e.to_string().contains("being accessed") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("clone the seeded database: {e}"),
        }
    }
}
