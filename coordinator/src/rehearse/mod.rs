//! The local rehearsal: two throwaway hosts on loopback and the whole flow against them.
//!
//! [`LocalLab::build`] creates, under one folder: the migration certificates, two PostgreSQL
//! clusters ("old" on 127.0.0.2, "new" on 127.0.0.3), the app database seeded on the old one, a
//! storage tree of user artifacts and `.env` files, two real agents with generated configs (the
//! new one allowed to be written, the old one not), and a plan for them. The `rehearse` command
//! then runs the phases against it and tears it down (or leaves it running with `--keep`).
//! Nothing outside that folder and the loopback interface is touched.
//!
//! The flow lives here too, so that `commands/rehearse.rs` only parses flags and prints:
//! [`local`] runs the rehearsal on the lab (check, backup, sync, verify, then `runbook`: the
//! live app, follow, cutover, look-ups, rollback), [`on_plan`] runs it against a plan's real
//! agents into scratch targets; [`phase`] is a phase's row and error, `steps` the phases that
//! are one library call each, `moto` the lab's traffic switch.

mod content;
pub mod local;
mod moto;
pub mod on_plan;
pub mod phase;
pub mod round_trip;
mod runbook;
mod session;
mod steps;
pub mod uploader;
pub mod writer;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hostshift_shared::pki::{self, AgentSpec, PkiFiles, PkiRequest};
use hostshift_shared::tls::TlsFiles;

use crate::lab::LabError;
use crate::lab::agent::{AgentLaunchError, AgentSetup, LabAgent};
use crate::lab::pg::{PgCluster, WalLevel};
use crate::lab::seed::{self, Scale, SeedSummary};

pub use content::{NON_ROOT_DIR, StorageSummary};
pub use session::LiveAppError;

/// The old host's storage tree of a lab.
pub fn old_storage_dir(lab: &LocalLab) -> PathBuf {
    content::storage_dir(&lab.dir.join("old"))
}

/// The new host's storage tree of a lab.
pub fn new_storage_dir(lab: &LocalLab) -> PathBuf {
    content::storage_dir(&lab.dir.join("new"))
}

/// The old host's address.
pub const OLD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The new host's address.
pub const NEW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Why the lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RehearseError {
    /// A cluster or seeding step failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// An agent did not start.
    #[error(transparent)]
    Agent(#[from] AgentLaunchError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Files of the lab.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RehearseError {
    let what = what.into();
    move |source| RehearseError::Io { what, source }
}

/// Two throwaway hosts and a plan for them.
pub struct LocalLab {
    /// The lab folder.
    pub dir: PathBuf,
    /// Certificates.
    pub certs: PkiFiles,
    /// The old host's cluster.
    pub old_pg: PgCluster,
    /// The new host's cluster.
    pub new_pg: PgCluster,
    /// The old host's agent.
    pub old: LabAgent,
    /// The new host's agent.
    pub new: LabAgent,
    /// The plan file.
    pub plan: PathBuf,
    /// What was seeded into the old database.
    pub seed: SeedSummary,
    /// What was written into the old storage tree.
    pub storage: StorageSummary,
}

impl LocalLab {
    /// Builds the lab in `dir` (created; must be empty or absent). `say` receives progress lines.
    ///
    /// # Errors
    /// Any step that fails, with what to do (e.g. install PostgreSQL, run as root).
    pub async fn build(
        dir: &Path,
        scale: Scale,
        say: &dyn Fn(&str),
    ) -> Result<LocalLab, RehearseError> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        // The postgres user must be able to enter it.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io(format!("chmod {}", dir.display())))?;
        say("certificates: migration CA, agents old (127.0.0.2) and new (127.0.0.3), coordinator");
        let certs = pki::init(&PkiRequest {
            dir: dir.join("certs"),
            agents: vec![
                AgentSpec {
                    name: "old".into(),
                    sans: vec![OLD_IP.to_string()],
                },
                AgentSpec {
                    name: "new".into(),
                    sans: vec![NEW_IP.to_string()],
                },
            ],
            coordinator_name: "coordinator".into(),
            days: 1,
            force: false,
        })?;
        say("PostgreSQL clusters: old on 127.0.0.2, new on 127.0.0.3 (both wal_level = logical)");
        let pg_root = dir.join("pg");
        let (old_pg, new_pg) = tokio::join!(
            // Logical decoding: the rehearsal follows the old database up to the cutover.
            PgCluster::start_with(&pg_root, "old", OLD_IP, WalLevel::Logical),
            // ... and the rollback window follows the new one back after the switch.
            PgCluster::start_with(&pg_root, "new", NEW_IP, WalLevel::Logical)
        );
        let (old_pg, new_pg) = (old_pg?, new_pg?);
        say(&format!(
            "seeding the app database on the old host ({scale} scale)"
        ));
        old_pg.create_database("app", None).await?;
        let seed = seed::seed(&old_pg.connect("app").await?, scale).await?;
        // A populated materialized view: the new host must get it populated, not just created.
        seed::add_materialized_view(&old_pg.connect("app").await?).await?;
        let admin = new_pg.connect("postgres").await?;
        seed::ensure_roles(&admin).await?;
        new_pg.create_database("app", None).await?;
        drop(admin);

        say("storage tree and config files of the old host");
        let old_root = dir.join("old");
        let new_root = dir.join("new");
        let storage =
            content::write_old_host(&old_root, scale).map_err(io("write the old host's files"))?;
        content::prepare_new_host(&new_root).map_err(io("prepare the new host's folders"))?;

        say("agents: old (read-only) and new (allowed to be written)");
        let mut old = AgentSetup::new("old", OLD_IP);
        old.databases.push(("app".into(), old_pg.conninfo("app")));
        // The cutover's write freeze (read-only + end sessions) is the old host's one permit.
        old.freeze_databases.push("app".into());
        // ... and `hostshift follow` may create its slot there.
        old.follow_databases.push("app".into());
        // The rollback window: the old agent applies the new host's changes back.
        old.restore_databases.push("app".into());
        old.storage
            .push(("evaluations".into(), content::storage_dir(&old_root)));
        for (name, rel) in content::FILES {
            old.files.push((name.to_string(), old_root.join(rel)));
        }
        let mut new = AgentSetup::new("new", NEW_IP);
        new.databases.push(("app".into(), new_pg.conninfo("app")));
        new.storage
            .push(("evaluations".into(), content::storage_dir(&new_root)));
        for (name, rel) in content::FILES {
            new.files.push((name.to_string(), new_root.join(rel)));
            new.write_files.push(name.to_string());
        }
        // Backups stay inside the lab folder (the default /var/backups/hostshift is the host's).
        for (setup, name) in [(&mut old, "old"), (&mut new, "new")] {
            setup.extra.push_str(&format!(
                "[backup]\ndir = {}\nkeep_last = 3\n",
                toml::Value::String(dir.join("backups").join(name).display().to_string())
            ));
        }
        new.restore_databases.push("app".into());
        // The rollback window: its slot on the new host, and the rollback's freeze of it.
        new.follow_databases.push("app".into());
        new.freeze_databases.push("app".into());
        new.write_storage.push("evaluations".into());
        new.control_services = true;
        let coordinator = TlsFiles {
            cert: certs.coordinator_cert.clone(),
            key: certs.coordinator_key.clone(),
            ca: certs.ca_cert.clone(),
        };
        let own = |i: usize| TlsFiles {
            cert: certs.agents[i].1.clone(),
            key: certs.agents[i].2.clone(),
            ca: certs.ca_cert.clone(),
        };
        let agents_dir = dir.join("agents");
        let (old_tls, new_tls) = (own(0), own(1));
        let (old, new) = tokio::join!(
            LabAgent::start(&old, &old_tls, &coordinator, &agents_dir),
            LabAgent::start(&new, &new_tls, &coordinator, &agents_dir)
        );
        let (old, new) = (old?, new?);

        let plan = dir.join("plan.toml");
        std::fs::write(&plan, plan_text(&certs, &old, &new))
            .map_err(io(format!("write {}", plan.display())))?;
        say(&format!("plan: {}", plan.display()));
        Ok(LocalLab {
            dir: dir.to_path_buf(),
            certs,
            old_pg,
            new_pg,
            old,
            new,
            plan,
            seed,
            storage,
        })
    }

    /// Stops everything and removes the folder.
    pub async fn teardown(mut self) {
        drop(self.old);
        drop(self.new);
        let _ = self.old_pg.stop().await;
        let _ = self.new_pg.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Leaves everything running after this process exits, and writes `stop.sh` that ends it.
    ///
    /// # Errors
    /// When `stop.sh` cannot be written.
    pub fn keep(self) -> Result<PathBuf, RehearseError> {
        let script = self.dir.join("stop.sh");
        let text = format!(
            "#!/bin/sh\n# Stops the hostshift rehearsal lab and removes {dir}\nkill {a} {b} 2>/dev/null\nkill -INT {p} {q} 2>/dev/null\nsleep 2\nrm -rf '{dir}'\n",
            dir = self.dir.display(),
            a = self.old.pid(),
            b = self.new.pid(),
            p = self.old_pg.pid(),
            q = self.new_pg.pid(),
        );
        std::fs::write(&script, text).map_err(io(format!("write {}", script.display())))?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io(format!("chmod {}", script.display())))?;
        // Dropping these would stop them: the operator asked to keep them running.
        std::mem::forget(self.old);
        std::mem::forget(self.new);
        std::mem::forget(self.old_pg);
        std::mem::forget(self.new_pg);
        Ok(script)
    }
}

fn plan_text(certs: &PkiFiles, old: &LabAgent, new: &LabAgent) -> String {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut files = String::new();
    for (name, _) in content::FILES {
        files.push_str(&format!("[[files]]\nname = \"{name}\"\n"));
        if name == "frontend-env" {
            files.push_str("overrides = { VITE_API_URL = \"https://new.app.example\" }\n");
        }
        files.push('\n');
    }
    format!(
        "# Plan of the local rehearsal (generated by `hostshift rehearse`).\n\
         [migration]\nname = \"rehearsal\"\n\n\
         [old]\naddress = \"{}\"\nagent = \"old\"\n\n\
         [new]\naddress = \"{}\"\nagent = \"new\"\n\n\
         [tls]\nca = {}\ncert = {}\nkey = {}\n\n\
         [[databases]]\nname = \"app\"\n\n\
         [[storage]]\nname = \"evaluations\"\n\n\
         {files}\
         [freeze]\nmethods = [\"read-only\"]\nbudget_secs = 30\n\n\
         [switch]\nmethod = \"none\"\n",
        old.address(),
        new.address(),
        q(&certs.ca_cert),
        q(&certs.coordinator_cert),
        q(&certs.coordinator_key),
    )
}
