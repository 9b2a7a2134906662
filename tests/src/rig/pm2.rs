//! PM2 for cross-host tests: a private `PM2_HOME` inside the test's folder, the fixture app
//! (`tests/fixtures/app`: `server.js`, `crash.js`, `ecosystem.config.cjs`) copied beside it with a
//! free port in its `.env`, the agent's `[pm2]` section for it, and the test's *own* view of PM2
//! (`pm2 jlist` run by the test, plain HTTP GETs to the app) to check what the agent claims.
//!
//! Dropping a [`Pm2Rig`] runs `pm2 kill` for its `PM2_HOME` (and, should that fail, kills the
//! daemon and the apps from their pid files), so no PM2 daemon outlives the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `JWT_SECRET` in the fixture `.env`: must never show up in output the agent produces.
pub const FIXTURE_JWT_SECRET: &str = "jwt-fixture-s3cr3t-4711";
/// The password inside the fixture's `DATABASE_URL`.
pub const FIXTURE_DB_PASSWORD: &str = "db-pass-fixture-0815";

/// The `pm2` program on `PATH`; fails the test with the install command when there is none.
pub fn pm2_bin() -> PathBuf {
    super::bins::which("pm2").unwrap_or_else(|| {
        panic!(
            "pm2 is not installed (not found on PATH): install it with `npm install -g pm2@7` \
                 (or scripts/install-test-deps)"
        )
    })
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/app")
}

/// A port for the fixture app on 127.0.0.1, free when picked, and never from the kernel's
/// ephemeral range (`ip_local_port_range`, 32768–60999 by default): a port `bind(0)` hands out
/// and releases can become, before the app binds it, the local port of any outgoing connection
/// from 127.0.0.1 (the agents', the PostgreSQL clients'), and the app then crash-loops on
/// `EADDRINUSE` (seen once in a full suite: "crash-looping: restarted 4 times"). Each port is
/// handed out once per test process; where the walk through the range starts depends on the pid.
fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Coprime with SPAN: the walk visits every port of the range once.
    const STEP: u32 = 37;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = LOW + (start + i * STEP) % SPAN;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{} on 127.0.0.1", LOW + SPAN)
}

/// One PM2 process as the test itself sees it in `pm2 jlist`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pm2Proc {
    pub name: String,
    pub pid: u32,
    pub status: String,
    pub restarts: u64,
}

/// A private PM2 and the fixture app for one test.
pub struct Pm2Rig {
    pub bin: PathBuf,
    /// `PM2_HOME` (kept short: PM2 puts unix sockets in it).
    pub home: PathBuf,
    /// The app folder: the fixture files and the ecosystem file.
    pub app_dir: PathBuf,
    pub ecosystem: PathBuf,
    /// `app_dir/backend/.env`, which the ecosystem file reads.
    pub env_file: PathBuf,
    /// The backend's port (free when prepared).
    pub port: u16,
    /// The `.env` as first written.
    pub env_text: String,
}

impl Pm2Rig {
    /// Copies the fixture app into `app_dir`, writes `app_dir/backend/.env` (a free port,
    /// `FEATURE_FLAG=off`, secrets), and picks `app_dir/.pm2` as `PM2_HOME`. Starts nothing.
    pub fn prepare(app_dir: &Path) -> Pm2Rig {
        let bin = pm2_bin();
        std::fs::create_dir_all(app_dir.join("backend")).expect("app dir");
        for f in ["server.js", "crash.js", "ecosystem.config.cjs"] {
            std::fs::copy(fixture_dir().join(f), app_dir.join(f))
                .unwrap_or_else(|e| panic!("copy fixture {f}: {e}"));
        }
        let port = free_port();
        let env_text = format!(
            "# backend settings (hostshift test fixture)\n\
             PORT={port}\n\
             \n\
             FEATURE_FLAG=off\n\
             USE_POSTGRES=false\n\
             export DATABASE_URL=\"postgres://app:{FIXTURE_DB_PASSWORD}@127.0.0.1:5432/app\"\n\
             JWT_SECRET='{FIXTURE_JWT_SECRET}'  # rotate yearly\n"
        );
        let env_file = app_dir.join("backend/.env");
        std::fs::write(&env_file, &env_text).expect("write .env");
        Pm2Rig {
            bin,
            home: app_dir.join(".pm2"),
            app_dir: app_dir.to_path_buf(),
            ecosystem: app_dir.join("ecosystem.config.cjs"),
            env_file,
            port,
            env_text,
        }
    }

    /// The agent's `[pm2]` section (for `AgentSetup::extra`): this PM2_HOME, the current user,
    /// the ecosystem file, and `apps` as declared apps.
    pub fn agent_toml(&self, apps: &[&str]) -> String {
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "root".to_string(), |u| u.name);
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let p = |v: &Path| s(&v.display().to_string());
        let apps: Vec<String> = apps.iter().map(|a| s(a)).collect();
        format!(
            "[pm2]\nbin = {}\nuser = {}\nhome = {}\napps = [{}]\necosystem = {}\n",
            p(&self.bin),
            s(&user),
            p(&self.home),
            apps.join(", "),
            p(&self.ecosystem)
        )
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env(
                "HOME",
                std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            )
            .env("PM2_HOME", &self.home)
            .env("PM2_DISCRETE_MODE", "true")
            .stdin(Stdio::null());
        c
    }

    /// The raw `pm2 jlist` output, as the test sees it (it holds the apps' environments).
    pub async fn jlist_raw(&self) -> String {
        let cmd = tokio::process::Command::from(self.command())
            .arg("jlist")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), cmd)
            .await
            .expect("pm2 jlist within 30 s")
            .expect("run pm2 jlist");
        assert!(
            out.status.success(),
            "pm2 jlist failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pm2 jlist`, parsed by the test.
    pub async fn jlist(&self) -> Vec<Pm2Proc> {
        let raw = self.jlist_raw().await;
        let start = raw.find('[').expect("jlist prints a JSON array");
        let v: Vec<serde_json::Value> = serde_json::from_str(&raw[start..]).expect("jlist JSON");
        v.iter()
            .map(|p| Pm2Proc {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                pid: p["pid"].as_u64().unwrap_or(0) as u32,
                status: p["pm2_env"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                restarts: p["pm2_env"]["restart_time"].as_u64().unwrap_or(0),
            })
            .collect()
    }

    /// The process named `name` in the test's own `pm2 jlist`.
    pub async fn proc(&self, name: &str) -> Pm2Proc {
        self.jlist()
            .await
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} is not in pm2 jlist"))
    }

    /// `GET path` on the backend (HTTP/1.0): `(status, body)`, or `None` when nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", self.port));
        let mut s = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .ok()?
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    }

    /// The PM2 daemon's pid from `$PM2_HOME/pm2.pid`, when one is running.
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (!super::process_gone(pid)).then_some(pid)
    }

    fn app_pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.home.join("pids"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    }

    /// `pm2 kill` for this PM2_HOME, then makes sure the daemon and its apps are gone.
    pub fn kill(&mut self) {
        let Some(daemon) = self.daemon_pid() else {
            return;
        };
        let apps = self.app_pids();
        let killed = self
            .command()
            .arg("kill")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
            .is_some_and(|mut child| {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break st.success(),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break false;
                        }
                    }
                }
            });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(super::process_gone(daemon) && apps.iter().all(|p| super::process_gone(*p))) {
            if !killed || Instant::now() > deadline {
                eprintln!(
                    "pm2 kill for {} did not stop everything: killing the daemon and apps",
                    self.home.display()
                );
                for pid in std::iter::once(daemon).chain(apps.iter().copied()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pm2Rig {
    fn drop(&mut self) {
        self.kill();
    }
}
