//! Lab agents: real `hostshift-agent` processes with generated configs, for the rehearsal and
//! the test rig.
//!
//! [`AgentSetup`] says what an agent's config declares and renders it as TOML; [`LabAgent`]
//! writes it, starts the binary that sits next to the running `hostshift` (or on `PATH`), and
//! returns once the agent answers an `Info` RPC — with TLS 1.3 a listening socket proves nothing
//! until a call succeeds. Dropping a [`LabAgent`] stops it (SIGTERM, then SIGKILL).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hostshift_proto::v1::InfoRequest;
use hostshift_proto::v1::agent_client::AgentClient;
use hostshift_shared::tls::TlsFiles;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long an agent may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a channel to a lab agent could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] hostshift_shared::tls::TlsError),
    /// The address or TLS settings were refused by the endpoint builder.
    #[error("endpoint: {0}")]
    Endpoint(tonic::transport::Error),
    /// The connection failed (explained: refused, TLS, timeout).
    #[error("{}", crate::client::explain(.0))]
    Connect(tonic::transport::Error),
}

/// Why a lab agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AgentLaunchError {
    /// No agent binary.
    #[error(
        "hostshift-agent not found next to {beside} nor on PATH: build it with `cargo build --bins` (or install it beside hostshift)"
    )]
    Missing {
        /// The folder searched first.
        beside: String,
    },
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The agent exited or did not answer in time.
    #[error("agent {name} did not start: {why}\n--- its log ({log}):\n{tail}")]
    NotReady {
        /// Agent name.
        name: String,
        /// What was seen.
        why: String,
        /// Log path.
        log: String,
        /// Last lines of the log.
        tail: String,
    },
}

/// What a lab agent's config declares.
#[derive(Clone, Debug)]
pub struct AgentSetup {
    /// Certificate name (`old`/`new`), also the role label.
    pub name: String,
    /// Loopback address to listen on.
    pub ip: Ipv4Addr,
    /// Port to listen on; 0 (the default): chosen by the OS. A fixed one lets a restarted agent
    /// come back where its peers look for it, as systemd restarts it.
    pub port: u16,
    /// `(name, conninfo)`
    pub databases: Vec<(String, String)>,
    /// `(name, path)`
    pub storage: Vec<(String, PathBuf)>,
    /// `(name, path)`
    pub files: Vec<(String, PathBuf)>,
    /// `(name, shell command)`
    pub hooks: Vec<(String, String)>,
    /// `[allow] restore_databases`
    pub restore_databases: Vec<String>,
    /// `[allow] write_storage`
    pub write_storage: Vec<String>,
    /// `[allow] write_files`
    pub write_files: Vec<String>,
    /// `[allow] control_services`
    pub control_services: bool,
    /// `[allow] freeze_databases` (the old host: the cutover makes these read-only)
    pub freeze_databases: Vec<String>,
    /// `[allow] follow_databases` (the old host: `hostshift follow` may create a slot)
    pub follow_databases: Vec<String>,
    /// `[allow] replica_identity_full`.
    pub replica_identity_full: Vec<String>,
    /// `sync_role`: `"target"` for the agent named `new`, `"source"` for every other one.
    pub sync_role: String,
    /// `[limits] shutdown_grace_secs`
    pub grace_secs: u64,
    /// `ca_file` for every database (TLS to PostgreSQL).
    pub db_ca_file: Option<PathBuf>,
    /// The agent's state folder; default `<lab dir>/state-<name>`.
    pub state_dir: Option<PathBuf>,
    /// Raw TOML appended as is (e.g. `[pm2]` or `[nginx]` sections).
    pub extra: String,
    /// A program and its arguments the agent is started through (its own command line follows
    /// them), e.g. `unshare` giving a test's "new host" users of its own; empty: started directly.
    pub wrapper: Vec<String>,
}

impl AgentSetup {
    /// An agent named `name` on `ip` declaring nothing and allowing nothing.
    pub fn new(name: &str, ip: Ipv4Addr) -> Self {
        Self {
            name: name.into(),
            ip,
            port: 0,
            databases: vec![],
            storage: vec![],
            files: vec![],
            hooks: vec![],
            restore_databases: vec![],
            write_storage: vec![],
            write_files: vec![],
            control_services: false,
            freeze_databases: vec![],
            follow_databases: vec![],
            replica_identity_full: vec![],
            sync_role: if name == "new" { "target" } else { "source" }.into(),
            grace_secs: 5,
            db_ca_file: None,
            state_dir: None,
            extra: String::new(),
            wrapper: Vec::new(),
        }
    }

    /// The config file text for certificate `cert`/`key` and CA `ca`; the state folder defaults
    /// to `state-<name>` under `dir`.
    pub fn toml(&self, tls: &TlsFiles, dir: &Path) -> String {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut t = String::new();
        let state = self
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.join(format!("state-{}", self.name)));
        let _ = writeln!(
            t,
            "listen = \"{}:{}\"\nrole = {}\nsync_role = {}\nstate_dir = {}\n",
            self.ip,
            self.port,
            s(&self.name),
            s(&self.sync_role),
            q(&state)
        );
        let _ = writeln!(
            t,
            "[tls]\ncert = {}\nkey = {}\nca = {}\n",
            q(&tls.cert),
            q(&tls.key),
            q(&tls.ca)
        );
        for (n, c) in &self.databases {
            let _ = writeln!(t, "[[databases]]\nname = {}\nconninfo = {}", s(n), s(c));
            if let Some(ca) = &self.db_ca_file {
                let _ = writeln!(t, "ca_file = {}", q(ca));
            }
            t.push('\n');
        }
        for (n, p) in &self.storage {
            let _ = writeln!(t, "[[storage]]\nname = {}\npath = {}\n", s(n), q(p));
        }
        for (n, p) in &self.files {
            let _ = writeln!(t, "[[files]]\nname = {}\npath = {}\n", s(n), q(p));
        }
        for (n, c) in &self.hooks {
            let _ = writeln!(t, "[hooks.{n}]\ncommand = {}\ntimeout_secs = 600\n", s(c));
        }
        let _ = writeln!(
            t,
            "[allow]\nrestore_databases = {}\nwrite_storage = {}\nwrite_files = {}\ncontrol_services = {}\nfreeze_databases = {}\nfollow_databases = {}\nreplica_identity_full = {}\n",
            list(&self.restore_databases),
            list(&self.write_storage),
            list(&self.write_files),
            self.control_services,
            list(&self.freeze_databases),
            list(&self.follow_databases),
            list(&self.replica_identity_full)
        );
        let _ = writeln!(t, "[limits]\nshutdown_grace_secs = {}\n", self.grace_secs);
        t.push_str(&self.extra);
        t
    }
}

/// The `hostshift-agent` binary: beside the running executable, else on `PATH`.
///
/// # Errors
/// [`AgentLaunchError::Missing`] with the build command.
pub fn agent_binary() -> Result<PathBuf, AgentLaunchError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // Test executables sit one level down, in target/<profile>/deps.
    for dir in [
        beside.clone(),
        beside.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        let p = dir.join("hostshift-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("hostshift-agent"))
        .find(|p| p.is_file())
        .ok_or(AgentLaunchError::Missing {
            beside: beside.display().to_string(),
        })
}

/// A running lab agent.
pub struct LabAgent {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl LabAgent {
    /// Writes `setup` as `dir/agent-<name>.toml` (certificates from `own`), starts the agent and
    /// waits until it answers `Info` to a client presenting `coordinator`.
    ///
    /// # Errors
    /// A missing binary, an I/O failure, or an agent that exits or stays silent (with its log).
    pub async fn start(
        setup: &AgentSetup,
        own: &TlsFiles,
        coordinator: &TlsFiles,
        dir: &Path,
    ) -> Result<LabAgent, AgentLaunchError> {
        let io = |what: String| move |source| AgentLaunchError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let config = dir.join(format!("agent-{}.toml", setup.name));
        std::fs::write(&config, setup.toml(own, dir))
            .map_err(io(format!("write {}", config.display())))?;
        let ready = dir.join(format!("agent-{}.ready", setup.name));
        let _ = std::fs::remove_file(&ready);
        let log = dir.join(format!("agent-{}.log", setup.name));
        let logf = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let logf2 = logf
            .try_clone()
            .map_err(io("duplicate the log handle".into()))?;
        let binary = agent_binary()?;
        let mut command = match setup.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .arg("--ready-file")
            .arg(&ready)
            // `info` unless the caller asked for more (e.g. `HOSTSHIFT_LOG=debug
            // HOSTSHIFT_LOG_SPANS=1` to see where an RPC spent its time).
            .env(
                "HOSTSHIFT_LOG",
                std::env::var("HOSTSHIFT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf2)
            .stderr(logf)
            .spawn()
            .map_err(io("start hostshift-agent".into()))?;
        let mut agent = LabAgent {
            name: setup.name.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        agent.addr = loop {
            if let Ok(s) = std::fs::read_to_string(&ready)
                && let Ok(a) = s.trim().parse::<SocketAddr>()
            {
                break a;
            }
            if let Some(c) = agent.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(agent.not_ready(format!("exited with {st} before listening")));
            }
            if Instant::now() > deadline {
                return Err(agent.not_ready(format!("not listening after {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let channel = agent
            .channel(coordinator)
            .await
            .map_err(|e| agent.not_ready(format!("cannot connect: {e}")))?;
        AgentClient::new(channel)
            .info(InfoRequest { brief: true })
            .await
            .map_err(|s| agent.not_ready(format!("Info failed: {}", s.message())))?;
        Ok(agent)
    }

    fn not_ready(&self, why: String) -> AgentLaunchError {
        let text = self.log_text();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        AgentLaunchError::NotReady {
            name: self.name.clone(),
            why,
            log: self.log.display().to_string(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// `https://IP:PORT`
    pub fn address(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A channel presenting `files` to this agent.
    ///
    /// # Errors
    /// TLS files or the connection failing.
    pub async fn channel(&self, files: &TlsFiles) -> Result<Channel, ChannelError> {
        let tls = files.client_config(&self.addr.ip().to_string())?;
        self.channel_with(tls).await
    }

    /// A channel with a hand-made TLS config (e.g. no client certificate).
    ///
    /// # Errors
    /// The connection failing.
    pub async fn channel_with(&self, tls: ClientTlsConfig) -> Result<Channel, ChannelError> {
        Endpoint::from_shared(self.address())
            .map_err(ChannelError::Endpoint)?
            .tls_config(tls)
            .map_err(ChannelError::Endpoint)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(ChannelError::Connect)
    }

    /// Sends SIGTERM and waits up to `limit`; `None` if it still runs then.
    pub fn sigterm_and_wait(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        while started.elapsed() < limit {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some((st, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Kills the agent at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LabAgent {
    fn drop(&mut self) {
        if self.child.is_some() && self.sigterm_and_wait(Duration::from_secs(8)).is_none() {
            self.kill();
        }
    }
}
