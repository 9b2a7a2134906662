//! A managed-like PostgreSQL target (an RDS stand-in), started once per test binary on first
//! use: TLS only (`hostssl … scram-sha-256`, every other TCP connection refused), a server
//! certificate from a CA of its own, and a **non-superuser** master role
//! (`LOGIN CREATEROLE CREATEDB`, like the RDS master user) that tests connect as.
//!
//! What the RDS master gets through `rds_superuser` and a plain PostgreSQL needs a superuser to
//! grant is granted here as docs/rds.md tells an operator: `SET` on `session_replication_role`
//! and `EXECUTE` on the `pg_replication_origin_*` functions following uses.
//! A second role, `lesser` (`LOGIN CREATEDB` only), lacks both that and `CREATEROLE`, for tests of
//! what `check` reports; a third, `noorigin`, is the master without the origin functions (it can
//! sync, not follow). The rig itself keeps a superuser door over the unix socket
//! ([`Managed::admin`]) that a managed service would not give: for set-up and inspection only.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

use hostshift::lab::pg::PgCluster;
use hostshift_shared::pki::{self, AgentSpec, PkiRequest};

use super::world::{PgInfo, World, world};

/// The managed database's loopback address.
pub const MANAGED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The master role's name (not a superuser).
pub const MASTER: &str = "master";
/// A role with `LOGIN CREATEDB` only.
pub const LESSER: &str = "lesser";
/// The master's attributes and `SET` on `session_replication_role`, but no `EXECUTE` on the
/// replication-origin functions.
pub const NO_ORIGIN: &str = "noorigin";

/// The managed-like cluster of this test binary.
pub struct Managed {
    /// Socket, port, binaries (the socket is the rig's superuser door).
    pub pg: PgInfo,
    /// PEM of the CA that signed the server's certificate (the agent's `ca_file`).
    pub ca_file: PathBuf,
    /// Password file of [`MASTER`] (mode 0600).
    pub master_password_file: PathBuf,
    /// Password file of [`LESSER`] (mode 0600).
    pub lesser_password_file: PathBuf,
    /// Password file of [`NO_ORIGIN`] (mode 0600).
    pub no_origin_password_file: PathBuf,
    /// Serializes tests that create cluster-wide roles (two first syncs at once would race).
    pub roles_lock: tokio::sync::Mutex<()>,
    _cluster: std::sync::Mutex<PgCluster>,
    _rt: tokio::runtime::Runtime,
}

static MANAGED: OnceLock<Managed> = OnceLock::new();

/// The managed-like cluster, started on first use (a second or two), in [`world`]'s folder.
pub fn managed() -> &'static Managed {
    managed_in(world())
}

/// The managed-like cluster, kept in `w`'s folder (e.g. [`super::logical_world`], so that a
/// test binary of that world does not start the plain one too). The first call of a binary
/// decides the world.
pub fn managed_in(w: &'static World) -> &'static Managed {
    MANAGED.get_or_init(|| {
        std::thread::spawn(move || start(w))
            .join()
            .unwrap_or_else(|_| panic!("the managed-like cluster failed to start (see above)"))
    })
}

extern "C" fn cleanup() {
    if let Some(m) = MANAGED.get()
        && let Ok(mut c) = m._cluster.lock()
    {
        c.kill_now();
    }
}

#[allow(unsafe_code)]
fn register_cleanup() {
    // SAFETY: `cleanup` is an `extern "C" fn()` with no arguments, as atexit(3) requires. Handlers
    // run in reverse order of registration: this one (registered after the world's) runs first,
    // before the world removes the folder the cluster lives in.
    let rc = unsafe { libc::atexit(cleanup) };
    assert_eq!(rc, 0, "atexit registration failed");
}

fn write_secret(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("password file");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod password file");
}

fn start(w: &'static World) -> Managed {
    let dir = w.dir.join("managed");
    std::fs::create_dir_all(&dir).expect("managed dir");
    let certs = pki::init(&PkiRequest {
        dir: dir.join("server-ca"),
        agents: vec![AgentSpec::parse(&format!("managed-pg={MANAGED_IP}")).expect("spec")],
        coordinator_name: "unused".into(),
        days: 2,
        force: false,
    })
    .expect("managed database certificates");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let master_pw = dir.join("master.password");
    let lesser_pw = dir.join("lesser.password");
    let no_origin_pw = dir.join("noorigin.password");
    write_secret(&master_pw, "m4ster-Pw\n");
    write_secret(&lesser_pw, "l3sser-Pw\n");
    write_secret(&no_origin_pw, "n0origin-Pw\n");
    let cluster = rt.block_on(async {
        let cluster = PgCluster::start(&w.dir.join("pg"), "managed", MANAGED_IP)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let data = cluster.data_dir().to_path_buf();
        let postgres = nix::unistd::User::from_name("postgres")
            .expect("lookup")
            .expect("postgres user");
        for (from, to) in [
            (&certs.agents[0].1, "server.crt"),
            (&certs.agents[0].2, "server.key"),
        ] {
            let dest = data.join(to);
            std::fs::copy(from, &dest).expect("copy the server certificate");
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            nix::unistd::chown(&dest, Some(postgres.uid), Some(postgres.gid)).expect("chown");
        }
        // Only the rig's superuser over the socket; every TCP client must use TLS and SCRAM.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        let admin = cluster
            .connect("postgres")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut statements: Vec<String> = [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET password_encryption = 'scram-sha-256'",
            "SELECT pg_reload_conf()",
            "CREATE ROLE master LOGIN CREATEROLE CREATEDB PASSWORD 'm4ster-Pw'",
            "CREATE ROLE lesser LOGIN CREATEDB PASSWORD 'l3sser-Pw'",
            // What rds_superuser gives the RDS master (docs/rds.md).
            "GRANT SET ON PARAMETER session_replication_role TO master",
            "CREATE ROLE noorigin LOGIN CREATEROLE CREATEDB PASSWORD 'n0origin-Pw'",
            "GRANT SET ON PARAMETER session_replication_role TO noorigin",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        // What rds_superuser gives the RDS master for following (docs/rds.md).
        for f in hostshift_agent::follow::apply::ORIGIN_FUNCTIONS {
            statements.push(format!("GRANT EXECUTE ON FUNCTION {f} TO master"));
        }
        for sql in &statements {
            admin
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        // A function's rights are per database: granted in template1 too, so that every
        // database created afterwards has them (as on RDS).
        let template = cluster
            .connect("template1")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for f in hostshift_agent::follow::apply::ORIGIN_FUNCTIONS {
            let sql = format!("GRANT EXECUTE ON FUNCTION {f} TO master");
            template
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} in template1: {e:?}"));
        }
        cluster
    });
    let pg = PgInfo {
        socket_dir: cluster.socket_dir().to_path_buf(),
        port: cluster.port(),
        listen: cluster.listen(),
        bin_dir: cluster.bin_dir().to_path_buf(),
    };
    register_cleanup();
    let m = Managed {
        pg,
        ca_file: certs.ca_cert.clone(),
        master_password_file: master_pw,
        lesser_password_file: lesser_pw,
        no_origin_password_file: no_origin_pw,
        roles_lock: tokio::sync::Mutex::new(()),
        _cluster: std::sync::Mutex::new(cluster),
        _rt: rt,
    };
    // The reload is asynchronous: wait until plain TCP is refused and TLS with SCRAM works.
    m._rt.block_on(async {
        let plain = format!(
            "host={MANAGED_IP} port={} user=master password=m4ster-Pw dbname=postgres sslmode=disable",
            m.pg.port
        );
        super::eventually(
            std::time::Duration::from_secs(10),
            "the managed-like cluster to refuse plain TCP",
            || {
                let plain = plain.clone();
                async move {
                    tokio_postgres::connect(&plain, tokio_postgres::NoTls)
                        .await
                        .is_err()
                        .then_some(())
                }
            },
        )
        .await;
    });
    m
}

impl Managed {
    /// The URL conninfo of database `db` as role `user` (no password: that is in a file).
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@{MANAGED_IP}:{}/{db}", self.pg.port)
    }

    /// A `[[databases]]` block for an agent config (append it with `AgentSetup::extra`): database
    /// `name` is `db` on this cluster as `user`, over verified TLS with the password in a file.
    pub fn agent_database(&self, name: &str, user: &str, db: &str) -> String {
        let pw = match user {
            LESSER => &self.lesser_password_file,
            NO_ORIGIN => &self.no_origin_password_file,
            _ => &self.master_password_file,
        };
        format!(
            "\n[[databases]]\nname = {:?}\nconninfo = {:?}\npassword_file = {:?}\nca_file = {:?}\n",
            name,
            self.conninfo(user, db),
            pw.display().to_string(),
            self.ca_file.display().to_string()
        )
    }

    /// A superuser connection over the unix socket: the rig's set-up and inspection door, which
    /// a managed service does not give; never what an agent uses.
    pub async fn admin(&self, db: &str) -> tokio_postgres::Client {
        self.pg.connect(db).await
    }

    /// Creates database `name` as the master does on RDS (so the master owns it).
    pub async fn create_database_as_master(&self, name: &str) {
        self.create_database_as(MASTER, name).await;
    }

    /// Creates database `name` as `role` (so `role` owns it).
    pub async fn create_database_as(&self, role: &str, name: &str) {
        let admin = self.admin("postgres").await;
        // One statement per call: CREATE DATABASE refuses to run inside a transaction block.
        for sql in [
            format!("SET ROLE {role}"),
            format!("CREATE DATABASE \"{name}\""),
            "RESET ROLE".to_string(),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} (as {role}): {e}"));
        }
    }
}
