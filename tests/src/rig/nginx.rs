//! Private nginx instances for tests, a tiny upstream app inside the test process, and a
//! minimal HTTP client to look at what nginx answers.
//!
//! Each [`NginxProc`] lives in its own prefix (`conf/`, `logs/`, `tmp/`; pid file, error log and
//! every `*_temp_path` inside it), listens on one loopback address (127.0.0.2 for the old host,
//! 127.0.0.3 for the new) and includes its site from `conf/sites-enabled/*` — the layout of a
//! Debian host, so a stray file next to the site would be loaded too. Dropping it stops nginx
//! (SIGQUIT to the master, then SIGKILL to its whole process group), so no nginx outlives its
//! test — even one whose test left the config broken or panicked half-way.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where nginx is looked for.
const NGINX_CANDIDATES: [&str; 3] = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"];

/// The nginx binary; the test fails with the install command when there is none.
pub fn nginx_bin() -> PathBuf {
    NGINX_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: install it with `apt-get install -y nginx` (or scripts/install-test-deps)"
            )
        })
}

/// A running private nginx in front of an upstream app.
pub struct NginxProc {
    /// The prefix (`-p`).
    pub prefix: PathBuf,
    /// `PREFIX/conf/nginx.conf` (`-c`).
    pub conf: PathBuf,
    /// The site file, `PREFIX/conf/sites-enabled/app`.
    pub site: PathBuf,
    /// The site file as first written (what "byte for byte" compares with).
    pub original_site: Vec<u8>,
    /// Where the agent keeps maintenance state for this instance (outside the prefix's conf).
    pub state_dir: PathBuf,
    /// Where nginx listens.
    pub addr: SocketAddr,
    stopped: bool,
}

impl NginxProc {
    /// Starts nginx in `dir/nginx-<name>/` on `ip`, proxying to `127.0.0.1:<upstream>`.
    pub async fn start(dir: &Path, name: &str, ip: Ipv4Addr, upstream: u16) -> NginxProc {
        let bin = nginx_bin();
        let prefix = dir.join(format!("nginx-{name}"));
        for sub in ["conf/sites-enabled", "logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(sub)).expect("nginx prefix folders");
        }
        let conf = prefix.join("conf/nginx.conf");
        let site = prefix.join("conf/sites-enabled/app");
        std::fs::write(&conf, main_conf(&prefix)).expect("write nginx.conf");
        let state_dir = dir.join(format!("nginx-{name}-state"));
        // A port that was free a moment ago can be taken by then: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from((ip, port));
            let text = site_conf(addr, upstream);
            std::fs::write(&site, &text).expect("write the site file");
            let mut n = NginxProc {
                prefix: prefix.clone(),
                conf: conf.clone(),
                site: site.clone(),
                original_site: text.into_bytes(),
                state_dir: state_dir.clone(),
                addr,
                stopped: false,
            };
            let out = Command::new(&bin)
                .arg("-p")
                .arg(&prefix)
                .args(["-c", "conf/nginx.conf", "-e", "logs/error.log"])
                .output()
                .expect("run nginx");
            if !out.status.success() {
                n.stopped = true;
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                if err.contains("Address already in use") {
                    continue;
                }
                panic!("nginx did not start ({}):\n{err}", out.status);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            // Ready: it listens and its master has forked the workers.
            while TcpStream::connect(addr).await.is_err()
                || n.master_pid().is_none_or(|m| children(m).is_empty())
            {
                assert!(
                    Instant::now() < deadline,
                    "nginx does not serve on {addr}:\n{}",
                    n.error_log()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return n;
        }
        panic!("no free port for nginx on {ip} after 5 tries");
    }

    /// The `[nginx]` section of an agent config for this instance.
    pub fn agent_toml(&self) -> String {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        format!(
            "[nginx]\nbin = {}\nconfig = {}\nprefix = {}\nsite = {}\nstate_dir = {}\n",
            q(&nginx_bin()),
            q(&self.conf),
            q(&self.prefix),
            q(&self.site),
            q(&self.state_dir)
        )
    }

    /// `http://IP:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` from this nginx.
    pub async fn get(&self, path: &str) -> HttpReply {
        http_get(self.addr, path, &[]).await
    }

    /// The site file now.
    pub fn site_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.site).expect("read the site file")
    }

    /// The master's pid, from the pid file.
    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.prefix.join("logs/nginx.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// What nginx logged.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// Stops nginx: SIGQUIT to the master (not `nginx -s quit`, which re-reads the config and
    /// fails when a test left it broken), then SIGKILL to its whole process group if anything
    /// of it is still there after 5 s. Returns once no process of the group is alive.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Some(master) = self.master_pid() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(master as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        if !wait_group_gone(master, Duration::from_secs(5)) {
            // One signal for the whole group: killing workers one by one would let the master
            // respawn them.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(master as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_group_gone(master, Duration::from_secs(5));
        }
    }
}

impl Drop for NginxProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The child processes of `pid` (nginx's workers, for its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Live (not zombie) processes whose process group is `pgid`. nginx's master is a session
/// leader (it daemonizes with `setsid`), so its group is exactly the master and its workers.
pub fn process_group(pgid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                // After "(comm)": state ppid pgrp ...
                let rest: Vec<&str> = s
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                rest.first().is_some_and(|st| *st != "Z")
                    && rest.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            })
        })
        .collect()
}

fn wait_group_gone(pgid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if process_group(pgid).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main_conf(prefix: &Path) -> String {
    format!(
        "# private nginx of a hostshift test\n\
         worker_processes 1;\n\
         pid logs/nginx.pid;\n\
         error_log logs/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path tmp/client_body;\n\
         \x20   proxy_temp_path tmp/proxy;\n\
         \x20   fastcgi_temp_path tmp/fastcgi;\n\
         \x20   uwsgi_temp_path tmp/uwsgi;\n\
         \x20   scgi_temp_path tmp/scgi;\n\
         \x20   include {}/conf/sites-enabled/*;\n\
         }}\n",
        prefix.display()
    )
}

/// A site like the one the app's operators run: an upstream, `location /` proxied, and an
/// exact-match `/health` location (so maintenance must beat an exact match).
fn site_conf(listen: SocketAddr, upstream: u16) -> String {
    format!(
        "# the app's site (hostshift test)\n\
         upstream app_backend {{\n\
         \x20   server 127.0.0.1:{upstream};\n\
         }}\n\
         \n\
         server {{\n\
         \x20   listen {listen};\n\
         \x20   server_name app.test;\n\
         \n\
         \x20   location / {{\n\
         \x20       proxy_pass http://app_backend;\n\
         \x20       proxy_set_header Host $host;\n\
         \x20   }}\n\
         \n\
         \x20   location = /health {{\n\
         \x20       proxy_pass http://app_backend;\n\
         \x20   }}\n\
         }}\n"
    )
}

/// What an HTTP request got.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// A header's value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`, extra headers as given; 5 s deadline.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} from {addr}: not an HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A tiny HTTP app in the test process, standing in for the PM2 backend behind nginx:
/// - `GET /` → 200 [`UpstreamApp::ROOT_BODY`]
/// - `GET /health` → 200 [`UpstreamApp::HEALTH_BODY`] (JSON)
/// - `GET /private` → 200 with `Authorization: Bearer <TOKEN>`, else 401
/// - anything else → 404
///
/// It runs on the test's runtime and stops with it (or when dropped).
pub struct UpstreamApp {
    pub addr: SocketAddr,
    /// Requests served so far.
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl UpstreamApp {
    pub const ROOT_BODY: &'static str = "hello from the app";
    pub const HEALTH_BODY: &'static str =
        r#"{"status":"ok","app":"backend","db":{"ok":true,"latency_ms":3}}"#;
    pub const TOKEN: &'static str = "s3cret-health-token";

    /// Listens on `127.0.0.1:<free port>`.
    pub async fn start() -> UpstreamApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream app");
        let addr = listener.local_addr().expect("address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream));
            }
        });
        UpstreamApp { addr, hits, task }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for UpstreamApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let auth = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let (status, reason, ctype, body) = match path.split('?').next().unwrap_or("/") {
        "/" => (200, "OK", "text/plain", UpstreamApp::ROOT_BODY.to_string()),
        "/health" => (
            200,
            "OK",
            "application/json",
            UpstreamApp::HEALTH_BODY.to_string(),
        ),
        "/private" if auth == format!("Bearer {}", UpstreamApp::TOKEN) => {
            (200, "OK", "text/plain", "private ok".to_string())
        }
        "/private" => (
            401,
            "Unauthorized",
            "text/plain",
            "who are you?".to_string(),
        ),
        _ => (404, "Not Found", "text/plain", "not found".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}
