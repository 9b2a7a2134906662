//! The machine side of the benchmark: running shell pipelines with a deadline (and killing their
//! whole process group if the benchmark is interrupted), the pids file `bench/run` cleans up from,
//! free disk, and a description of the machine for the results.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::AsyncReadExt;

/// Most bytes of a failing command's stderr kept for the error message.
const STDERR_TAIL: usize = 4096;

/// Kills a process group when dropped, unless disarmed: a pipeline started by [`shell`] dies with
/// the benchmark even when it is interrupted half way (kill_on_drop would only kill `bash`).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// What a finished command left.
pub struct Output {
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// Its stdout (only when asked for).
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of its stderr.
    pub stderr: String,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
}

/// Runs `script` with `bash -c` under `set -euo pipefail` (a failing stage of a pipeline fails the
/// whole), with `env` added, in a process group of its own; returns its wall time. Fails with the
/// exit status and the end of stderr unless `allow_failure`.
///
/// # Errors
/// Spawn failure, timeout, or a non-zero exit.
pub async fn shell(
    what: &str,
    script: &str,
    env: &[(&str, String)],
    timeout: Duration,
    capture_stdout: bool,
    allow_failure: bool,
) -> Result<Output> {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .stdin(Stdio::null())
        .stdout(if capture_stdout { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("{what}: cannot start bash"))?;
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let mut out = child.stdout.take();
    let mut err = child.stderr.take().context("stderr is piped")?;
    let work = async {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let read_out = async {
            if let Some(o) = out.as_mut() {
                o.read_to_end(&mut stdout).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (a, b) = tokio::join!(read_out, err.read_to_end(&mut stderr));
        a?;
        b?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, stdout, stderr))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.with_context(|| format!("{what}: waiting for it"))?,
        Err(_) => bail!("{what}: still running after {timeout:?}, killed"),
    };
    let wall = started.elapsed();
    // bash waited for every stage of its pipelines: nothing of the group is left to kill (and
    // its pid, reaped now, may be reused).
    guard.0 = None;
    let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL)..];
    let stderr = String::from_utf8_lossy(tail).into_owned();
    if !status.success() && !allow_failure {
        bail!("{what} failed ({status}); end of its stderr:\n{stderr}");
    }
    Ok(Output { wall, stdout, stderr, code: status.code() })
}

/// The file `bench/run` reads on exit to stop whatever the benchmark left running (when it was
/// killed before its own cleanup ran): one `kind pid` per line.
pub struct PidsFile(PathBuf);

impl PidsFile {
    /// Starts an empty pids file.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::write(path, "").with_context(|| format!("write {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }

    /// Records a long-lived process: `postmaster` (stopped with SIGINT), anything else SIGTERM.
    pub fn add(&self, kind: &str, pid: u32) {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.0) {
            let _ = writeln!(f, "{kind} {pid}");
        }
    }
}

impl Drop for PidsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
///
/// # Errors
/// When `statvfs` fails.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// The machine the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal in GiB.
    pub ram_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// The block device and file system holding the work folder.
    pub disk: String,
    /// PostgreSQL server version.
    pub postgres: String,
    /// `tar`, `gzip`, `rsync` versions.
    pub tools: String,
    /// The hostshift source the binaries were built from (commit and changed files).
    pub source: String,
}

fn first_line_of(cmd: &str) -> String {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// Describes this machine (best effort: unknown fields stay empty).
pub fn machine(work: &Path, pg_bin: &Path, source: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let w = work.display();
    let disk = first_line_of(&format!(
        "df -h --output=source,fstype,size '{w}' | tail -1 | tr -s ' '"
    ));
    let rotational = first_line_of(&format!(
        "d=$(df --output=source '{w}' | tail -1); d=${{d##*/}}; cat /sys/class/block/$d/queue/rotational 2>/dev/null"
    ));
    let disk = match rotational.as_str() {
        "" => disk,
        r => format!("{disk}, queue/rotational={r}"),
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        ram_gib: (ram_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: first_line_of("uname -r"),
        disk,
        postgres: first_line_of(&format!("'{}/postgres' --version", pg_bin.display())),
        tools: [
            first_line_of("tar --version"),
            first_line_of("gzip --version"),
            first_line_of("rsync --version | sed 's/  */ /g'"),
        ]
        .join("; "),
        source: source.to_string(),
    }
}

/// The 1/5/15-minute load averages.
pub fn load() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Flushes dirty pages machine-wide, so a measurement does not pay for the write-back of the
/// previous one (hostshift ends its storage sync with `syncfs`; the tools do not sync at all).
pub fn settle() {
    nix::unistd::sync();
}

/// Before a copy is timed: dirty pages flushed, the page cache emptied, then `sources` read back
/// into it (two readers). Every copy then starts from the same memory: its sources cached, no
/// earlier copy's pages to reclaim before it can write. Without it the figures depended on what
/// the previous measurement left (the same binaries' storage unit took 8.05 s and 9.84 s in two
/// runs twenty minutes apart, the slower one right after a 4 x round had filled the cache).
///
/// # Errors
/// When the cache cannot be dropped (not root) or a source cannot be read.
pub async fn cold_start(sources: &[&Path]) -> Result<()> {
    settle();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop the page cache (/proc/sys/vm/drop_caches; run as root)")?;
    for s in sources {
        shell("read the sources into the page cache", r#"find "$SRC" -type f -print0 | xargs -0 -r -n 200 -P 2 cat >/dev/null"#, &[("SRC", s.display().to_string())], Duration::from_secs(600), false, false).await?;
    }
    Ok(())
}

/// Where [`set_aside`] moves copied trees during the full-copy rounds (`None`: it deletes them).
static TRASH: std::sync::Mutex<Option<(PathBuf, u64)>> = std::sync::Mutex::new(None);

/// From now on [`set_aside`] and [`fresh_dir`] move trees into `dir` (created; on the same file
/// system) instead of deleting them; `None` deletes again. The caller removes `dir` at the end.
///
/// Why: this machine's ext4 has no journal, and then ext4 skips every inode deleted within the
/// last minute when it allocates a new one (`recently_deleted()` in `fs/ext4/ialloc.c`), looking
/// each one up in the buffer cache. Creating 10,000 small files right after 10,000 were deleted
/// in the same block group took 3.3–4.4 s instead of 0.26 s (measured here, 2026-12-06), and the
/// profile of a full sync showed 27 % of the new agent's CPU in `find_inode_bit` /
/// `recently_deleted`: the copy measured first after a deletion paid for it, whichever tool it
/// was. Moved trees free no inodes, so no measured copy pays for an earlier one.
///
/// # Errors
/// I/O errors creating `dir`.
pub fn use_trash(dir: Option<&Path>) -> Result<()> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    *TRASH.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = dir.map(|d| (d.to_path_buf(), 0));
    Ok(())
}

/// Removes a copied tree: moved into the trash when one is in use ([`use_trash`]), else deleted.
///
/// # Errors
/// I/O errors other than "not found".
pub fn set_aside(path: &Path) -> Result<()> {
    let mut trash = TRASH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((dir, n)) = trash.as_mut() else {
        return remove_dir(path);
    };
    *n += 1;
    match std::fs::rename(path, dir.join(n.to_string())) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("move {} into {}", path.display(), dir.display())),
    }
}

/// [`set_aside`] then an empty folder in its place.
///
/// # Errors
/// I/O errors.
pub fn fresh_dir(path: &Path) -> Result<()> {
    set_aside(path)?;
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}

/// Removes a folder's contents (or the folder) if present.
///
/// # Errors
/// I/O errors other than "not found".
pub fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// `remove_dir` then an empty folder in its place.
///
/// # Errors
/// I/O errors.
pub fn empty_dir(path: &Path) -> Result<()> {
    remove_dir(path)?;
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}
