//! What one timed run cost: wall time, and CPU seconds per process group (each agent, each
//! PostgreSQL cluster with its backends, the tools this benchmark ran), plus what the rest of the
//! machine — other people's builds and tests — used meanwhile, so a slow run can be told from a
//! busy machine.
//!
//! CPU per group comes from `/proc/<pid>/stat`: a group's root process (an agent, a postmaster,
//! this process for the tools) counts with the time of its reaped children (`cutime`, `cstime`;
//! PostgreSQL backends are the postmaster's children, `pg_dump` is the old agent's), plus every
//! live descendant. Sampling before and after is enough: a child that exits in between has its
//! time moved into its parent's `cutime` when it is reaped.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

/// A named process group: its root pid.
#[derive(Clone, Debug)]
pub struct Group {
    /// Shown in the results ("old agent", "new postgres", "tools").
    pub name: &'static str,
    /// The root of the group's process tree.
    pub pid: u32,
}

#[derive(Clone, Copy)]
struct Proc {
    ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some(Proc { ppid: u32::try_from(n(1)).unwrap_or(0), ticks: n(11) + n(12) + n(13) + n(14) })
}

fn all_procs() -> HashMap<u32, Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect()
}

/// Machine-wide CPU time from /proc/stat: (busy, total) in clock ticks over all cores.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn clock_ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU counters at one instant.
pub struct Snapshot {
    at: Instant,
    groups: Vec<u64>,
    busy: u64,
    total: u64,
}

/// Takes a snapshot of `groups` (each process counted in the first group found walking up from
/// it to a root, so an agent is not counted again in "tools").
pub fn snapshot(groups: &[Group]) -> Snapshot {
    let procs = all_procs();
    let mut sums = vec![0u64; groups.len()];
    for (&pid, p) in &procs {
        let mut cur = pid;
        for _ in 0..64 {
            if let Some(i) = groups.iter().position(|g| g.pid == cur) {
                sums[i] += p.ticks;
                break;
            }
            match procs.get(&cur) {
                Some(q) if q.ppid > 1 => cur = q.ppid,
                _ => break,
            }
        }
    }
    let (busy, total) = machine_ticks();
    Snapshot { at: Instant::now(), groups: sums, busy, total }
}

/// CPU seconds of one group during a run.
#[derive(Clone, Debug, Serialize)]
pub struct GroupCpu {
    /// The group.
    pub name: String,
    /// CPU seconds.
    pub cpu_s: f64,
}

/// Where the CPU went during one run.
#[derive(Clone, Debug, Serialize)]
pub struct Cpu {
    /// Per group.
    pub groups: Vec<GroupCpu>,
    /// Everything else on the machine (other people's work), CPU seconds.
    pub others_s: f64,
    /// Machine-wide busy share of all cores, 0..1.
    pub machine_busy: f64,
    /// Cores × wall seconds: the CPU time there was.
    pub available_s: f64,
}

/// The CPU used between `a` and `b`.
pub fn cpu_between(groups: &[Group], a: &Snapshot, b: &Snapshot) -> Cpu {
    let hz = clock_ticks_per_sec();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let g: Vec<GroupCpu> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| GroupCpu {
            name: g.name.to_string(),
            cpu_s: round2(b.groups[i].saturating_sub(a.groups[i]) as f64 / hz),
        })
        .collect();
    let ours: f64 = g.iter().map(|x| x.cpu_s).sum();
    // /proc/stat counts in USER_HZ too.
    let busy = b.busy.saturating_sub(a.busy) as f64 / hz;
    let total = b.total.saturating_sub(a.total) as f64;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    Cpu {
        groups: g,
        others_s: round2((busy - ours).max(0.0)),
        machine_busy: if total > 0.0 { round2(b.busy.saturating_sub(a.busy) as f64 / total) } else { 0.0 },
        available_s: round2(wall * cores),
    }
}

/// Rounds to 2 decimals (results are read by people).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The median of `v` (mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// A process's peak resident set (`VmHWM`) in MiB, if it runs.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
    Some(round2(kib / 1024.0))
}

/// Resets a process's `VmHWM` to its current RSS (`echo 5 > /proc/PID/clear_refs`), so the next
/// reading is the peak of what ran since.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Milliseconds since the Unix epoch (the coordinator journal's clock).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// CPU counters sampled on a thread of its own every `interval`, stamped with [`epoch_ms`], to
/// split a run's CPU by the phases its journal shows. Reading /proc costs a few ms per sample:
/// only the profiled run uses it.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(u64, Snapshot)>>>,
}

impl Sampler {
    /// Starts sampling `groups`.
    pub fn start(groups: Vec<Group>, interval: std::time::Duration) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                v.push((epoch_ms(), snapshot(&groups)));
                std::thread::sleep(interval);
            }
            v.push((epoch_ms(), snapshot(&groups)));
            v
        });
        Sampler { stop, handle: Some(handle) }
    }

    /// Stops and returns the samples.
    pub fn stop(mut self) -> Vec<(u64, Snapshot)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The CPU used between two wall-clock instants, from the samples nearest to them.
pub fn cpu_in(groups: &[Group], samples: &[(u64, Snapshot)], from_ms: u64, to_ms: u64) -> Option<Cpu> {
    let nearest = |t: u64| samples.iter().min_by_key(|(at, _)| at.abs_diff(t)).map(|(_, s)| s);
    let (a, b) = (nearest(from_ms)?, nearest(to_ms)?);
    (b.at > a.at).then(|| cpu_between(groups, a, b))
}
