//! A local moto server: the AWS API stand-in for tests and for `hostshift rehearse`.
//!
//! [`MotoServer::start`] runs `moto_server` from the test environment's venv
//! (`${HOSTSHIFT_TESTENV:-/opt/hostshift-testenv}/moto/bin/moto_server`) on a free port of
//! 127.0.0.1, in its own process group, with its output in a log file, and waits until
//! `GET /moto-api/` answers. Dropping the server kills the whole process group. Talking to moto's
//! own API needs no HTTP library: the few requests here are hand-written HTTP/1.0 over a
//! `TcpStream`, which also keeps this module free of any TLS or proxy setting.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long moto may take to answer its first request (it usually takes about half a second).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Limit for one request to moto's own API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when another process took the chosen one first.
const PORT_ATTEMPTS: u32 = 3;
/// Lines of the server's log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// Why a moto server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// moto is not installed where the test environment keeps it.
    #[error(
        "moto_server not found at {}: install it with: python3 -m venv {venv} && \
         {venv}/bin/pip install 'moto[server]'  (or run scripts/install-test-deps)",
        path.display(), venv = venv.display()
    )]
    Missing {
        /// Where `moto_server` was looked for.
        path: PathBuf,
        /// The venv it should be installed in.
        venv: PathBuf,
    },
    /// The process could not be spawned, or its log file created.
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The program or file involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The server exited before it was ready.
    #[error(
        "moto_server exited before it was ready ({status}); last lines of its log:\n{log_tail}"
    )]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its output.
        log_tail: String,
    },
    /// The server did not answer within the deadline.
    #[error(
        "moto_server did not answer GET /moto-api/ within {waited:?}; last lines of its log:\n\
         {log_tail}"
    )]
    NotReady {
        /// How long it was given.
        waited: Duration,
        /// The end of its output.
        log_tail: String,
    },
    /// A request to moto's own API failed.
    #[error("moto request {request} failed: {message}")]
    Request {
        /// Method and path.
        request: String,
        /// What went wrong, or the status and body that came back.
        message: String,
    },
}

/// Two instances and an Elastic IP on the first (see [`MotoServer::seed_elastic_ip`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElasticIpSetup {
    /// The old host's instance; the address starts here.
    pub old_instance: String,
    /// The new host's instance.
    pub new_instance: String,
    /// The Elastic IP's allocation id.
    pub allocation_id: String,
}

/// A running moto server on 127.0.0.1; killed (with its whole process group) on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    pid: Pid,
    port: u16,
    /// Holds the log file; removed on drop.
    log_dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts a moto server on a free loopback port and waits until it answers.
    ///
    /// # Errors
    ///
    /// [`MotoError::Missing`] (with the install command) when moto is not installed;
    /// [`MotoError::Spawn`], [`MotoError::Exited`] or [`MotoError::NotReady`] with the server's
    /// log when it does not come up.
    pub async fn start() -> Result<MotoServer, MotoError> {
        let venv = std::env::var_os("HOSTSHIFT_TESTENV")
            .map_or_else(|| PathBuf::from("/opt/hostshift-testenv"), PathBuf::from)
            .join("moto");
        let program = venv.join("bin").join("moto_server");
        if !program.is_file() {
            return Err(MotoError::Missing {
                path: program,
                venv,
            });
        }
        let mut attempt = 1;
        loop {
            match MotoServer::start_once(&program).await {
                // Another process may take the port between our probe and moto's bind.
                Err(MotoError::Exited { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(program: &Path) -> Result<MotoServer, MotoError> {
        let spawn_err = |path: &Path| {
            let path = path.to_owned();
            move |source| MotoError::Spawn { path, source }
        };
        let log_dir = tempfile::Builder::new()
            .prefix("hostshift-moto-")
            .tempdir()
            .map_err(spawn_err(Path::new("a temporary directory")))?;
        let log_path = log_dir.path().join("moto_server.log");
        let log = std::fs::File::create(&log_path).map_err(spawn_err(&log_path))?;
        let log_err = log.try_clone().map_err(spawn_err(&log_path))?;
        let port = free_port().map_err(spawn_err(Path::new("127.0.0.1:0")))?;
        let mut command = Command::new(program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Explicit environment: nothing of the caller's (AWS keys, proxies) leaks into moto.
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", log_dir.path())
            .env("LANG", "C.UTF-8")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(log_dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(spawn_err(program))?;
        let raw_pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| MotoError::Spawn {
                path: program.to_owned(),
                source: io::Error::other("spawned process has no pid"),
            })?;
        let mut server = MotoServer {
            child,
            pid: Pid::from_raw(raw_pid),
            port,
            log_dir,
        };
        server.wait_ready().await?;
        tracing::debug!(port, pid = raw_pid, "moto server ready");
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), MotoError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(MotoError::Exited {
                    status,
                    log_tail: self.log_tail(),
                });
            }
            // The log line proves that *our* child holds the port: a 200 alone could come from
            // another server that took the port between `free_port` and moto's bind.
            if self.log_says_listening()
                && let Ok((200, _)) = self.request("GET", "/moto-api/", &[], "").await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MotoError::NotReady {
                    waited: READY_TIMEOUT,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The URL to give the SDK as `endpoint_url`, e.g. `http://127.0.0.1:41234`.
    #[must_use]
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where and who to be for this server: its endpoint, region `us-east-1`, and the static
    /// credentials moto accepts.
    #[must_use]
    pub fn target(&self) -> crate::AwsTarget {
        crate::AwsTarget {
            region: "us-east-1".into(),
            endpoint_url: Some(self.endpoint_url()),
            profile: None,
            static_credentials: Some(("testing".into(), "testing".into())),
        }
    }

    /// Creates two running instances and an Elastic IP associated with the first: the old and
    /// the new host as the rehearsal and the tests switch them.
    ///
    /// # Errors
    /// [`MotoError::Request`] naming the EC2 call that failed.
    pub async fn seed_elastic_ip(&self) -> Result<ElasticIpSetup, MotoError> {
        let ec2 = aws_sdk_ec2::Client::new(&crate::sdk_config(&self.target()).await);
        let failed = |call: &str, e: &dyn std::fmt::Debug| MotoError::Request {
            request: call.into(),
            message: format!("{e:?}"),
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let run = ec2
                .run_instances()
                .image_id("ami-12c6146b")
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .min_count(1)
                .max_count(1)
                .send()
                .await
                .map_err(|e| failed("RunInstances", &e))?;
            let id = run
                .instances()
                .first()
                .and_then(|i| i.instance_id())
                .ok_or_else(|| failed("RunInstances", &"no instance id in the answer"))?;
            ids.push(id.to_owned());
        }
        let alloc = ec2
            .allocate_address()
            .send()
            .await
            .map_err(|e| failed("AllocateAddress", &e))?;
        let allocation_id = alloc
            .allocation_id()
            .ok_or_else(|| failed("AllocateAddress", &"no allocation id in the answer"))?
            .to_owned();
        ec2.associate_address()
            .allocation_id(&allocation_id)
            .instance_id(&ids[0])
            .send()
            .await
            .map_err(|e| failed("AssociateAddress", &e))?;
        Ok(ElasticIpSetup {
            old_instance: ids[0].clone(),
            new_instance: ids[1].clone(),
            allocation_id,
        })
    }

    /// The server's combined stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("moto_server.log")
    }

    /// Forgets every resource of every service (`POST /moto-api/reset`).
    ///
    /// # Errors
    ///
    /// [`MotoError::Request`] when moto does not answer 200.
    pub async fn reset(&self) -> Result<(), MotoError> {
        self.post("/moto-api/reset", &[], "").await.map(drop)
    }

    /// Sends a raw `POST` to the server and returns the body of a 2xx answer. For moto's own API
    /// (`/moto-api/...`) and for unsigned setup calls to services this crate has no SDK for.
    ///
    /// # Errors
    ///
    /// [`MotoError::Request`] on a connection failure, a timeout or a non-2xx status.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<String, MotoError> {
        match self.request("POST", path, headers, body).await {
            Ok((200..=299, body)) => Ok(body),
            Ok((status, body)) => Err(MotoError::Request {
                request: format!("POST {path}"),
                message: format!("HTTP {status}: {body}"),
            }),
            Err(message) => Err(MotoError::Request {
                request: format!("POST {path}"),
                message,
            }),
        }
    }

    /// One HTTP/1.0 exchange: the server closes the connection after the response, so the
    /// response is everything until EOF.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let exchange = async {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await?;
            let mut head = format!(
                "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n",
                self.port
            );
            for (name, value) in headers {
                let _ = write!(head, "{name}: {value}\r\n");
            }
            let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// werkzeug prints this line once it has bound the socket.
    fn log_says_listening(&self) -> bool {
        std::fs::read_to_string(self.log_path())
            .is_ok_and(|log| log.contains(&format!("Running on http://127.0.0.1:{}", self.port)))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // The group id is the leader's pid (process_group(0)); this also ends anything moto
        // spawned. kill_on_drop then only reaps the leader.
        if let Err(err) = killpg(self.pid, Signal::SIGKILL)
            && err != nix::errno::Errno::ESRCH
        {
            tracing::warn!(pid = %self.pid, %err, "could not kill the moto server's process group");
        }
    }
}

/// A port nobody listens on right now (the kernel's choice for port 0).
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}
