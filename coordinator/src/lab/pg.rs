//! Throwaway PostgreSQL clusters: initdb, a postmaster we own as a child process, connections,
//! and a shutdown that never leaves a server behind.
//!
//! A cluster lives in `root/<name>/` (`data/`, `sock/`, `postgres.log`), belongs to the `postgres`
//! system user, and listens on its own unix socket directory and on one loopback address with a
//! free port. The postmaster is started directly (not through `pg_ctl`) as our child, in its own
//! process group, so [`PgCluster::stop`] and [`Drop`] can signal it and the children it forked
//! (which leave its group: see `kill_tree`), and judge it dead by reaping it rather than by
//! polling `kill -0` (PID 1 here reaps orphans late). The settings
//! trade durability for speed (`fsync=off`, `wal_level=minimal`): lab data is disposable.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

use super::LabError;
use super::process::{
    RunAs, command_line, kill_tree, run_checked, tail_of_file, to_pid, wait_dead,
};

/// Where Debian's server packages put their binaries, newest supported first after 15 (the
/// version the product targets).
const BIN_DIR_CANDIDATES: [&str; 3] = [
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
];

/// How long the postmaster may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes while the postmaster starts.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a fast shutdown (SIGINT) may take before the postmaster and its children are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `kill_now` waits to reap the postmaster after SIGKILL.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// initdb takes about a second; this only catches a hung one.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for one client connection (including the start-up handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times to pick another port when a racing process took ours.
const PORT_ATTEMPTS: u32 = 3;

/// Returns the directory holding `initdb` and `postgres`: the first of
/// `/usr/lib/postgresql/{15,16,17}/bin` that has them, else the directory `initdb` on PATH
/// resolves to.
///
/// # Errors
///
/// [`LabError::PgBinariesMissing`] (with the install command) when none is found.
pub fn pg_bin_dir() -> Result<PathBuf, LabError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = BIN_DIR_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|d| has_server(d))
    {
        return Ok(dir.to_path_buf());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file())
        // Debian links /usr/local/bin/initdb etc. to the versioned directory: follow the link so
        // `postgres` is found next to it.
        .and_then(|initdb| fs::canonicalize(initdb).ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| has_server(dir));
    on_path.ok_or_else(|| LabError::PgBinariesMissing {
        searched: BIN_DIR_CANDIDATES.join(", "),
    })
}

/// The `wal_level` a lab cluster runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalLevel {
    /// Fastest: lab data is disposable (the default).
    Minimal,
    /// Enough for physical replication, not for logical decoding.
    Replica,
    /// Logical decoding (`hostshift follow`).
    Logical,
}

impl WalLevel {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            WalLevel::Minimal => "minimal",
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        }
    }
}

/// A throwaway PostgreSQL cluster whose postmaster is a child of this process.
///
/// Stop it with [`PgCluster::stop`]; dropping it kills the postmaster and its children instead.
#[derive(Debug)]
pub struct PgCluster {
    name: String,
    bin_dir: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    listen: Ipv4Addr,
    port: u16,
    pid: u32,
    /// `None` once the postmaster has been reaped.
    child: Option<Child>,
}

impl PgCluster {
    /// Creates `root/<name>/{data,sock}` owned by `postgres`, runs initdb, and starts a postmaster
    /// on `listen` (a loopback address) with a free port; returns once it accepts connections.
    ///
    /// Superuser `postgres`, `trust` authentication on the socket and on 127.0.0.0/8.
    ///
    /// # Errors
    ///
    /// Missing binaries or `postgres` user, not running as root or postgres, a non-loopback
    /// `listen`, a non-empty data directory, an unreachable `root`, a failing initdb (with its
    /// output), or a postmaster that exits or is not ready within 30 s (with its log).
    pub async fn start(root: &Path, name: &str, listen: Ipv4Addr) -> Result<PgCluster, LabError> {
        Self::start_with(root, name, listen, WalLevel::Minimal).await
    }

    /// As [`PgCluster::start`], with `wal_level` set to `wal` (`logical` for a cluster whose
    /// changes are followed by logical decoding).
    ///
    /// # Errors
    ///
    /// As [`PgCluster::start`].
    pub async fn start_with(
        root: &Path,
        name: &str,
        listen: Ipv4Addr,
        wal: WalLevel,
    ) -> Result<PgCluster, LabError> {
        if !listen.is_loopback() {
            return Err(LabError::NotLoopback { addr: listen });
        }
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain {
            return Err(LabError::InvalidName {
                name: name.to_owned(),
            });
        }
        let bin_dir = pg_bin_dir()?;
        let run_as = RunAs::detect()?;

        let dir = root.join(name);
        let data_dir = dir.join("data");
        let socket_dir = dir.join("sock");
        if fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(LabError::DataDirNotEmpty { path: data_dir });
        }
        fs::create_dir_all(root).map_err(LabError::io("create directory", root))?;
        if let RunAs::Postgres { uid, gid } = run_as {
            check_reachable(root, uid, gid)?;
        }
        // The data directory must be private to postgres (the server checks); the rest only
        // needs to be reachable.
        for (path, mode) in [(&dir, 0o755), (&data_dir, 0o700), (&socket_dir, 0o755)] {
            fs::create_dir_all(path).map_err(LabError::io("create directory", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(LabError::io("chmod", path))?;
            run_as.own(path)?;
        }

        let started = Instant::now();
        initdb(&bin_dir, &data_dir, &dir, run_as).await?;
        allow_loopback_tcp(&data_dir)?;
        tracing::debug!(cluster = name, elapsed = ?started.elapsed(), "initdb done");

        launch(
            name,
            bin_dir,
            dir,
            listen,
            run_as,
            started,
            "lab cluster ready",
            wal,
        )
        .await
    }

    /// Starts a postmaster on a cluster that an earlier [`PgCluster::start`] created in
    /// `root/<name>` and [`PgCluster::stop`] left on disk, with the same settings, on `listen`
    /// and a free port; returns once it accepts connections. For data worth keeping between
    /// runs (the benchmark's reference database takes minutes to build).
    ///
    /// # Errors
    ///
    /// As [`PgCluster::start`], and [`LabError::Io`] when `root/<name>/data` holds no cluster.
    pub async fn start_existing(
        root: &Path,
        name: &str,
        listen: Ipv4Addr,
    ) -> Result<PgCluster, LabError> {
        if !listen.is_loopback() {
            return Err(LabError::NotLoopback { addr: listen });
        }
        let bin_dir = pg_bin_dir()?;
        let run_as = RunAs::detect()?;
        let dir = root.join(name);
        let data_dir = dir.join("data");
        let socket_dir = dir.join("sock");
        let version = data_dir.join("PG_VERSION");
        fs::metadata(&version).map_err(LabError::io("find a lab cluster at", &version))?;
        if let RunAs::Postgres { uid, gid } = run_as {
            check_reachable(root, uid, gid)?;
        }
        fs::create_dir_all(&socket_dir).map_err(LabError::io("create directory", &socket_dir))?;
        run_as.own(&socket_dir)?;
        let started = Instant::now();
        launch(
            name,
            bin_dir,
            dir,
            listen,
            run_as,
            started,
            "existing lab cluster ready",
            WalLevel::Minimal,
        )
        .await
    }

    /// The cluster's name (its directory under the lab root).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's directory, `root/<name>`, holding `data/`, `sock/` and `postgres.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port, on [`PgCluster::listen`] and in the socket file name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket (libpq's `host` for a socket connection).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (the postmaster's stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The directory of the PostgreSQL binaries this cluster runs (for `pg_dump`, `pgbench`…).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The loopback address the server listens on.
    pub fn listen(&self) -> Ipv4Addr {
        self.listen
    }

    /// The postmaster's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A key=value connection string over the unix socket, for tokio-postgres and libpq.
    pub fn conninfo(&self, db: &str) -> String {
        let host = self.socket_dir.to_string_lossy();
        format!(
            "host={} port={} user=postgres dbname={}",
            conninfo_value(&host),
            self.port,
            conninfo_value(db)
        )
    }

    /// A key=value connection string over TCP to [`PgCluster::listen`].
    pub fn tcp_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            self.listen,
            self.port,
            conninfo_value(db)
        )
    }

    /// Connects as `postgres` over the unix socket; the connection runs on a spawned task that
    /// ends when the client is dropped.
    ///
    /// # Errors
    ///
    /// [`LabError::Postgres`] when the connection fails or takes longer than 10 s.
    pub async fn connect(&self, db: &str) -> Result<Client, LabError> {
        let what = || format!("connect to database {db:?} of lab cluster {}", self.name);
        let mut config: tokio_postgres::Config =
            self.conninfo(db).parse().map_err(LabError::pg(what()))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = config.connect(NoTls).await.map_err(LabError::pg(what()))?;
        let cluster = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(cluster, %error, "lab database connection failed");
            }
        });
        Ok(client)
    }

    /// Creates database `name`, owned by role `owner` (which must exist) or by `postgres`.
    ///
    /// # Errors
    ///
    /// [`LabError::Postgres`] when the connection or the `CREATE DATABASE` fails.
    pub async fn create_database(&self, name: &str, owner: Option<&str>) -> Result<(), LabError> {
        let client = self.connect("postgres").await?;
        let mut sql = format!("CREATE DATABASE {}", quote_ident(name));
        if let Some(owner) = owner {
            write!(sql, " OWNER {}", quote_ident(owner)).expect("writing to a String cannot fail");
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(LabError::pg(format!("{sql} on lab cluster {}", self.name)))
    }

    /// Fast shutdown: SIGINT to the postmaster, up to 15 s for it to exit, then SIGKILL to it, its
    /// process group and its children. Returns once the postmaster is reaped (a fast shutdown
    /// waits for every backend). Calling it again is a no-op.
    ///
    /// # Errors
    ///
    /// [`LabError::Exited`] if the postmaster had already died on its own (it is reaped all the
    /// same), [`LabError::Signal`] or [`LabError::Io`] if it cannot be signalled or waited for.
    pub async fn stop(&mut self) -> Result<(), LabError> {
        let postmaster = to_pid(self.pid);
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let wait_error = LabError::io("wait for the postmaster of", self.data_dir.clone());
        if let Some(status) = child.try_wait().map_err(wait_error)? {
            self.child = None;
            return Err(self.exited(status));
        }
        let started = Instant::now();
        signal::kill(postmaster, Signal::SIGINT).map_err(|source| LabError::Signal {
            signal: "SIGINT",
            pid: self.pid,
            source,
        })?;
        let status = match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(waited) => waited.map_err(LabError::io(
                "wait for the postmaster of",
                self.data_dir.clone(),
            ))?,
            Err(_elapsed) => {
                tracing::warn!(
                    cluster = self.name,
                    pid = self.pid,
                    "fast shutdown timed out, killing the postmaster and its children"
                );
                // Still unreaped, so the pid is still ours. Blocks for milliseconds at most.
                let deadline = Instant::now() + KILL_REAP_TIMEOUT;
                let children = kill_tree(self.pid, deadline);
                let status = child.wait().await.map_err(LabError::io(
                    "wait for the postmaster of",
                    self.data_dir.clone(),
                ))?;
                if !wait_dead(&children, deadline) {
                    tracing::warn!(
                        cluster = self.name,
                        ?children,
                        "lab backends still running after SIGKILL"
                    );
                }
                status
            }
        };
        self.child = None;
        let elapsed = started.elapsed();
        tracing::info!(cluster = self.name, %status, ?elapsed, "lab cluster stopped");
        Ok(())
    }

    /// Kills the postmaster, its process group and its children with SIGKILL, reaps the
    /// postmaster and waits (up to 5 s) until none of its children runs. Needs no async runtime:
    /// for [`Drop`] and at-exit cleanup. A no-op once the cluster is stopped.
    pub fn kill_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Only signal while the postmaster is unreaped: until then its pid (our pgid) cannot be
        // reused by anyone else.
        let deadline = Instant::now() + KILL_REAP_TIMEOUT;
        let children = kill_tree(self.pid, deadline);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    tracing::warn!(
                        cluster = self.name,
                        pid = self.pid,
                        "lab postmaster not reaped after SIGKILL"
                    );
                    return;
                }
                Err(error) => {
                    let pid = self.pid;
                    tracing::warn!(cluster = self.name, pid, %error, "could not reap the lab postmaster");
                    return;
                }
            }
        }
        if !wait_dead(&children, deadline) {
            tracing::warn!(
                cluster = self.name,
                ?children,
                "lab backends still running after SIGKILL"
            );
        }
    }

    fn exited(&self, status: ExitStatus) -> LabError {
        LabError::Exited {
            data_dir: self.data_dir.clone(),
            status,
            log: self.log_path.clone(),
            log_tail: tail_of_file(&self.log_path),
        }
    }

    /// Polls a socket connection until it succeeds, the postmaster exits, or `deadline` passes.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), LabError> {
        let conninfo = self.conninfo("postgres");
        let mut last_error = String::from("none yet");
        loop {
            let child = self
                .child
                .as_mut()
                .expect("wait_ready runs on a started cluster");
            let exited = child.try_wait().map_err(LabError::io(
                "wait for the postmaster of",
                self.data_dir.clone(),
            ))?;
            if let Some(status) = exited {
                self.child = None;
                return Err(self.exited(status));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LabError::StartTimeout {
                    data_dir: self.data_dir.clone(),
                    waited: START_TIMEOUT,
                    last_error,
                    log: self.log_path.clone(),
                    log_tail: tail_of_file(&self.log_path),
                });
            }
            match tokio::time::timeout(remaining, tokio_postgres::connect(&conninfo, NoTls)).await {
                Ok(Ok((client, connection))) => {
                    // Dropping the client makes the connection send Terminate and finish.
                    drop(client);
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, connection).await;
                    return Ok(());
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(_elapsed) => last_error = "connection attempt timed out".to_owned(),
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            tracing::debug!(
                cluster = self.name,
                pid = self.pid,
                "lab cluster dropped while running, killing it"
            );
            self.kill_now();
        }
    }
}

/// Runs initdb, falling back to `--locale=C` where C.UTF-8 is not available.
async fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    cwd: &Path,
    run_as: RunAs,
) -> Result<(), LabError> {
    let run = |locale: &'static str| {
        let mut cmd = Command::new(bin_dir.join("initdb"));
        cmd.arg("-D")
            .arg(data_dir)
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .arg(format!("--locale={locale}"));
        run_as.apply(&mut cmd, cwd);
        run_checked(cmd, INITDB_TIMEOUT)
    };
    match run("C.UTF-8").await {
        Err(LabError::Command { stderr_tail, .. }) if stderr_tail.contains("locale") => {
            tracing::debug!(%stderr_tail, "initdb refused C.UTF-8, using the C locale");
            run("C").await
        }
        other => other,
    }
}

/// Lets clients on any loopback address in: the lab gives each "host" its own 127.x address,
/// and initdb's defaults only trust 127.0.0.1.
fn allow_loopback_tcp(data_dir: &Path) -> Result<(), LabError> {
    use std::io::Write as _;
    let hba = data_dir.join("pg_hba.conf");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&hba)
        .map_err(LabError::io("open", &hba))?;
    file.write_all(b"\n# hostshift lab: every loopback address\nhost all all 127.0.0.0/8 trust\n")
        .map_err(LabError::io("append to", &hba))
}

/// Starts the postmaster of the cluster in `dir` (`data/`, `sock/`, `postgres.log`) on `listen`
/// and a free port, retrying with another port when a racing process took the chosen one, and
/// returns once it accepts connections (killing it if it never does).
#[allow(clippy::too_many_arguments)]
async fn launch(
    name: &str,
    bin_dir: PathBuf,
    dir: PathBuf,
    listen: Ipv4Addr,
    run_as: RunAs,
    started: Instant,
    ready: &'static str,
    wal: WalLevel,
) -> Result<PgCluster, LabError> {
    let data_dir = dir.join("data");
    let socket_dir = dir.join("sock");
    let log_path = dir.join("postgres.log");
    let mut attempt = 1;
    loop {
        let port = free_port(listen)?;
        let child = spawn_postmaster(
            &bin_dir,
            &dir,
            &data_dir,
            &socket_dir,
            &log_path,
            listen,
            port,
            run_as,
            wal,
        )?;
        let pid = child
            .id()
            .expect("a child that was just spawned has not been reaped");
        let mut cluster = PgCluster {
            name: name.to_owned(),
            bin_dir: bin_dir.clone(),
            dir: dir.clone(),
            data_dir: data_dir.clone(),
            socket_dir: socket_dir.clone(),
            log_path: log_path.clone(),
            listen,
            port,
            pid,
            child: Some(child),
        };
        match cluster.wait_ready(Instant::now() + START_TIMEOUT).await {
            Ok(()) => {
                let elapsed = started.elapsed();
                tracing::info!(cluster = name, %listen, port, pid, ?elapsed, "{ready}");
                return Ok(cluster);
            }
            // Another process took the port between our probe and the postmaster's bind.
            Err(LabError::Exited { ref log_tail, .. })
                if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") =>
            {
                tracing::debug!(cluster = name, port, "port taken meanwhile, trying another");
                attempt += 1;
            }
            Err(error) => {
                cluster.kill_now();
                return Err(error);
            }
        }
    }
}

/// Reserves a port the kernel considers free on `listen`, then releases it for the postmaster.
fn free_port(listen: Ipv4Addr) -> Result<u16, LabError> {
    let probe = TcpListener::bind((listen, 0)).map_err(|source| LabError::NoFreePort {
        addr: listen,
        source,
    })?;
    let port = probe
        .local_addr()
        .map_err(|source| LabError::NoFreePort {
            addr: listen,
            source,
        })?
        .port();
    Ok(port)
}

#[allow(clippy::too_many_arguments)]
fn spawn_postmaster(
    bin_dir: &Path,
    dir: &Path,
    data_dir: &Path,
    socket_dir: &Path,
    log_path: &Path,
    listen: Ipv4Addr,
    port: u16,
    run_as: RunAs,
    wal: WalLevel,
) -> Result<Child, LabError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(LabError::io("open", log_path))?;
    run_as.own(log_path)?;
    let log_err = log
        .try_clone()
        .map_err(LabError::io("duplicate the handle of", log_path))?;

    let mut cmd = Command::new(bin_dir.join("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-k")
        .arg(socket_dir)
        .arg("-p")
        .arg(port.to_string());
    let settings = [
        format!("listen_addresses={listen}"),
        "fsync=off".to_owned(),
        "synchronous_commit=off".to_owned(),
        "full_page_writes=off".to_owned(),
        "max_connections=100".to_owned(),
        "shared_buffers=64MB".to_owned(),
        // minimal needs no WAL senders; replica and logical keep a few.
        format!(
            "max_wal_senders={}",
            if wal == WalLevel::Minimal { 0 } else { 4 }
        ),
        format!("wal_level={}", wal.as_str()),
    ];
    for setting in settings {
        cmd.arg("-c").arg(setting);
    }
    run_as.apply(&mut cmd, dir);
    cmd.stdout(log).stderr(log_err).process_group(0);
    cmd.spawn().map_err(|source| LabError::Spawn {
        command: command_line(&cmd),
        source,
    })
}

/// Fails early, with a fix, when the postgres user could not reach `root` (e.g. a 0700 temp dir).
fn check_reachable(root: &Path, pg_uid: u32, pg_gid: u32) -> Result<(), LabError> {
    let root = fs::canonicalize(root).map_err(LabError::io("resolve", root))?;
    for dir in root.ancestors() {
        let meta = fs::metadata(dir).map_err(LabError::io("inspect", dir))?;
        let mode = meta.mode();
        let bit = if meta.uid() == pg_uid {
            0o100
        } else if meta.gid() == pg_gid {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Err(LabError::NotReachable {
                path: dir.to_path_buf(),
                mode: mode & 0o7777,
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

/// Quotes a value for a libpq key=value string when it needs it.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
pub(crate) mod tests {
    use nix::unistd::geteuid;

    use super::*;

    /// A lab root the postgres user can enter; clusters are dropped before it is removed
    /// (declare it first).
    pub(crate) fn lab_root() -> tempfile::TempDir {
        let root = tempfile::Builder::new()
            .prefix("hostshift-lab-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the lab root");
        root
    }

    /// Starts a cluster or fails the test with the error's message (which says what to install).
    pub(crate) async fn start_or_fail(root: &Path, name: &str, listen: Ipv4Addr) -> PgCluster {
        PgCluster::start(root, name, listen)
            .await
            .unwrap_or_else(|error| panic!("could not start a lab cluster: {error}"))
    }

    /// True while `pid` is a live process: gone, or a zombie, counts as dead.
    pub(crate) fn process_alive(pid: u32) -> bool {
        hostshift_shared::procfs::alive(pid)
    }

    #[test]
    fn pg_bin_dir_finds_the_server_or_says_how_to_install_it() {
        let dir = pg_bin_dir().unwrap_or_else(|error| panic!("{error}"));
        assert!(dir.join("postgres").is_file(), "{}", dir.display());
    }

    #[tokio::test]
    async fn cluster_serves_socket_and_loopback_tcp_then_stops_cleanly() {
        let root = lab_root();
        let mut cluster = start_or_fail(root.path(), "old", Ipv4Addr::new(127, 0, 0, 2)).await;
        let pid = cluster.pid();
        assert!(process_alive(pid));

        cluster
            .create_database("shop", None)
            .await
            .expect("create database");
        let client = cluster.connect("shop").await.expect("socket connection");
        let row = client
            .query_one("SELECT current_database(), current_user", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "shop");
        assert_eq!(row.get::<_, String>(1), "postgres");

        let (tcp, connection) = tokio_postgres::connect(&cluster.tcp_conninfo("shop"), NoTls)
            .await
            .expect("TCP connection to 127.0.0.2");
        let connection = tokio::spawn(connection);
        let addr = tcp
            .query_one("SELECT host(inet_server_addr())", &[])
            .await
            .expect("query over TCP");
        assert_eq!(addr.get::<_, String>(0), "127.0.0.2");
        drop((client, tcp));
        let _ = connection.await;

        cluster.stop().await.expect("stop");
        assert!(
            !process_alive(pid),
            "postmaster {pid} still running after stop()"
        );
        cluster.stop().await.expect("a second stop() is a no-op");
    }

    #[tokio::test]
    async fn dropped_cluster_leaves_no_postmaster_behind() {
        let root = lab_root();
        let cluster = start_or_fail(root.path(), "dropped", Ipv4Addr::LOCALHOST).await;
        let pid = cluster.pid();
        let client = cluster.connect("postgres").await.expect("connect");
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("query")
            .get(0);
        let backend = u32::try_from(backend).expect("positive pid");
        drop(cluster);
        assert!(!process_alive(pid), "postmaster {pid} survived drop");
        // Backends leave the postmaster's process group (setsid): they must be killed too.
        assert!(!process_alive(backend), "backend {backend} survived drop");
    }

    #[tokio::test]
    async fn start_refuses_addresses_outside_loopback() {
        let root = lab_root();
        let error = PgCluster::start(root.path(), "x", Ipv4Addr::new(10, 0, 0, 1))
            .await
            .expect_err("10.0.0.1 is not loopback");
        assert!(matches!(error, LabError::NotLoopback { .. }), "{error}");
    }

    #[tokio::test]
    async fn start_refuses_a_root_the_postgres_user_cannot_enter() {
        if !geteuid().is_root() {
            return; // As postgres, our own 0700 dir is reachable: nothing to refuse.
        }
        let root = lab_root();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let error = PgCluster::start(root.path(), "closed", Ipv4Addr::LOCALHOST)
            .await
            .expect_err("a 0700 root-owned dir is closed to postgres");
        assert!(matches!(error, LabError::NotReachable { .. }), "{error}");
        assert!(error.to_string().contains("chmod o+x"), "{error}");
    }

    #[test]
    fn conninfo_values_with_spaces_and_quotes_are_quoted() {
        assert_eq!(conninfo_value("/tmp/a"), "/tmp/a");
        assert_eq!(conninfo_value("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(conninfo_value(r"it's\"), r"'it\'s\\'");
        assert_eq!(conninfo_value(""), "''");
    }
}
