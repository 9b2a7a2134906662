//! The world one test binary shares: certificates and two PostgreSQL clusters, started once,
//! torn down at process exit (also after failing tests), with a watchdog against hangs.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hostshift::lab::pg::{PgCluster, WalLevel};
use hostshift::lab::seed::{self, Scale, SeedSummary};
use hostshift_shared::pki::{self, AgentSpec, PkiFiles, PkiRequest};

/// The old host's loopback address.
pub const OLD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The new host's loopback address.
pub const NEW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Database on the old cluster seeded with the app schema; tests clone it.
pub const TEMPLATE_DB: &str = "app_template";
/// A test binary running longer than this is ended (after cleanup) instead of hanging CI.
const WATCHDOG: Duration = Duration::from_secs(20 * 60);

/// Connection facts of one cluster.
#[derive(Clone, Debug)]
pub struct PgInfo {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub listen: Ipv4Addr,
    pub bin_dir: PathBuf,
}

impl PgInfo {
    /// libpq key=value string over the unix socket, as superuser `postgres`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// A connection (its task runs on the caller's runtime).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.conninfo(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {db} on port {}: {e}", self.port));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

/// What every test of a binary shares.
pub struct World {
    /// Root folder of everything this test binary creates.
    pub dir: PathBuf,
    /// Certificates: CA, coordinator, agents `old` (127.0.0.2) and `new` (127.0.0.3).
    pub certs: PkiFiles,
    /// A second, unrelated CA with its own coordinator and `old` agent certificates.
    pub foreign_certs: PkiFiles,
    pub old_pg: PgInfo,
    pub new_pg: PgInfo,
    /// Row counts of the seeded template.
    pub seed: SeedSummary,
    clusters: Mutex<Vec<PgCluster>>,
    // Keeps alive the runtime that owns the postmaster child handles.
    _rt: tokio::runtime::Runtime,
}

static WORLD: OnceLock<World> = OnceLock::new();
static LOGICAL: OnceLock<World> = OnceLock::new();
static ROUND_TRIP: OnceLock<World> = OnceLock::new();

/// The shared world, started on first use (a few seconds).
pub fn world() -> &'static World {
    WORLD.get_or_init(|| {
        // Started on a thread of its own: the caller may be inside a test's runtime.
        std::thread::spawn(|| start(WalLevel::Minimal, WalLevel::Minimal))
            .join()
            .unwrap_or_else(|_| panic!("the test world failed to start (see the message above)"))
    })
}

/// A world whose old cluster runs `wal_level = logical` (its new cluster `replica`: a source
/// that cannot be followed), for `hostshift follow`. Use it in a test binary instead of
/// [`world`], through [`super::Sandbox::new_in`].
pub fn logical_world() -> &'static World {
    LOGICAL.get_or_init(|| {
        std::thread::spawn(|| start(WalLevel::Logical, WalLevel::Replica))
            .join()
            .unwrap_or_else(|_| panic!("the test world failed to start (see the message above)"))
    })
}

/// A world whose clusters both run `wal_level = logical`: the new host can be followed back
/// (the rollback window), for a test binary of its own.
pub fn round_trip_world() -> &'static World {
    ROUND_TRIP.get_or_init(|| {
        std::thread::spawn(|| start(WalLevel::Logical, WalLevel::Logical))
            .join()
            .unwrap_or_else(|_| panic!("the test world failed to start (see the message above)"))
    })
}

fn start(old_wal: WalLevel, new_wal: WalLevel) -> World {
    let dir = std::env::temp_dir().join(format!(
        "hostshift-test-{}{}",
        std::process::id(),
        match (old_wal, new_wal) {
            (WalLevel::Minimal, _) => "",
            (_, WalLevel::Logical) => "-round-trip",
            _ => "-logical",
        }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test world folder");
    // The postgres user must be able to enter it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the test world folder");
    register_cleanup();
    start_watchdog();

    let certs = pki::init(&PkiRequest {
        dir: dir.join("certs"),
        agents: vec![
            AgentSpec::parse(&format!("old={OLD_IP},localhost")).expect("spec"),
            AgentSpec::parse(&format!("new={NEW_IP},localhost")).expect("spec"),
        ],
        coordinator_name: "coordinator".into(),
        days: 2,
        force: false,
    })
    .expect("certificates");
    let foreign_certs = pki::init(&PkiRequest {
        dir: dir.join("foreign-certs"),
        agents: vec![AgentSpec::parse(&format!("old={OLD_IP}")).expect("spec")],
        coordinator_name: "coordinator".into(),
        days: 2,
        force: false,
    })
    .expect("foreign certificates");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (old, new, seed) = rt.block_on(async {
        let pg_root = dir.join("pg");
        let (old, new) = tokio::join!(
            PgCluster::start_with(&pg_root, "old", OLD_IP, old_wal),
            PgCluster::start_with(&pg_root, "new", NEW_IP, new_wal)
        );
        let old = old.unwrap_or_else(|e| panic!("{e}"));
        let new = new.unwrap_or_else(|e| panic!("{e}"));
        old.create_database(TEMPLATE_DB, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let client = old
            .connect(TEMPLATE_DB)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let summary = seed::seed(&client, Scale::Tiny)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client);
        // Roles are cluster-wide: the new cluster needs them for ownership to carry over.
        let client = new
            .connect("postgres")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        seed::ensure_roles(&client)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (old, new, summary)
    });
    let info = |c: &PgCluster| PgInfo {
        socket_dir: c.socket_dir().to_path_buf(),
        port: c.port(),
        listen: c.listen(),
        bin_dir: c.bin_dir().to_path_buf(),
    };
    World {
        old_pg: info(&old),
        new_pg: info(&new),
        dir,
        certs,
        foreign_certs,
        seed,
        clusters: Mutex::new(vec![old, new]),
        _rt: rt,
    }
}

extern "C" fn cleanup() {
    for w in [WORLD.get(), LOGICAL.get(), ROUND_TRIP.get()]
        .into_iter()
        .flatten()
    {
        if let Ok(mut clusters) = w.clusters.lock() {
            for c in clusters.iter_mut() {
                c.kill_now();
            }
        }
        if std::env::var_os("HOSTSHIFT_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&w.dir);
        }
    }
}

#[allow(unsafe_code)]
fn register_cleanup() {
    // SAFETY: `cleanup` is an `extern "C" fn()` with no arguments, as atexit(3) requires; it runs
    // once at normal process exit (the test harness exits normally after failures too).
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let rc = unsafe { libc::atexit(cleanup) };
        assert_eq!(rc, 0, "atexit registration failed");
    });
}

fn start_watchdog() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(start_watchdog_thread);
}

fn start_watchdog_thread() {
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!(
            "hostshift-tests: this test binary ran for more than {} minutes; ending it (cleanup runs)",
            WATCHDOG.as_secs() / 60
        );
        std::process::exit(101);
    });
}
