//! `hostshift-bench`: the host-to-host sync benchmark. Builds (or reuses) the reference data set,
//! then times — side by side, in interleaved rounds, on this machine — the classic runbook, the
//! best standard tools and `hostshift sync`, checks every copy, profiles where hostshift's time
//! goes, prints a table of medians with a verdict per target and writes
//! `bench/results/<timestamp>.json`. Start it with `bench/run` (see docs/BENCHMARKS.md).
//!
//! Everything it starts — PostgreSQL clusters, agents, `perf`, pipelines — is stopped when it
//! returns, fails or is interrupted (Ctrl-C / SIGTERM drop the run, whose parts stop themselves);
//! `bench/run` also stops what a killed run left, from the pids file.

mod baselines;
mod cutover;
mod dataset;
mod dbcheck;
mod hs;
mod journal;
mod many;
mod measure;
mod profile;
mod report;
mod rounds;
mod scaled;
mod storage_tree;
mod sys;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Parts of the benchmark that can be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// pg_dump -Fc + pg_restore, tar -czf + tar -xzf (the slowest part: ~2.5 min a round).
    Classic,
    /// Binary COPY pipes + pg_restore -j 2, tar | tar.
    Best,
    /// hostshift sync of everything into an empty new host, then verify.
    Hostshift,
    /// The 1% change: rsync -a --delete against hostshift's second sync.
    Delta,
    /// One extra hostshift sync under `perf record`.
    Profile,
    /// A live app moved by `hostshift follow` + `cutover`, beside the runbook's and the standard
    /// tools' freeze (about 4 minutes at the reference size; `--scale N` adds a round at N ×).
    Cutover,
    /// `tar | tar` and `hostshift sync --only storage` into an empty tree, in turn, `--reps`
    /// times (~20 s a round): a quick A/B of a storage change. Runs only when named in `--only`.
    Storage,
}

impl Args {
    /// True when part `p` is not to run (`--skip p`, or `--only` without `p`).
    pub fn skips(&self, p: Part) -> bool {
        if p == Part::Storage {
            return !self.only.contains(&p);
        }
        self.skip.contains(&p) || (!self.only.is_empty() && !self.only.contains(&p))
    }
}

/// Time hostshift sync against the classic runbook and the best standard tools.
#[derive(Parser, Debug)]
#[command(name = "hostshift-bench", about)]
pub struct Args {
    /// Folder for the cached reference data (`cache/`, ~4.5 GB) and the run's scratch space
    /// (`run/`, up to ~10 GB, removed at the end).
    #[arg(long, default_value = "/var/tmp/hostshift-bench")]
    pub work: PathBuf,
    /// Rebuild the reference data even if a cached copy exists.
    #[arg(long)]
    pub fresh: bool,
    /// Rounds of the cheaper measurements (best tools, hostshift, deltas).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Rounds of the classic runbook (a round takes ~2.5 minutes).
    #[arg(long, default_value_t = 2)]
    pub classic_reps: usize,
    /// Delta rounds that also change 1% of the rows and time `hostshift sync --only db` (about a
    /// minute each); the others change files only.
    #[arg(long, default_value_t = 2)]
    pub db_delta_reps: usize,
    /// Skip parts (comma separated): classic, best, hostshift, delta, profile, cutover.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Part>,
    /// Run only these parts (comma separated), e.g. `--only cutover`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// The full copy (with `hostshift` rounds) and the cutover round once more at this many
    /// times the reference: the database N × (built once, cached in `cache-x<N>`; ~1.5 GB of
    /// disk per unit, twice over while it runs), the tree N × the files (N hard-linked copies of
    /// the reference tree; the full copy writes N × 2.96 GB on the new side).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=8))]
    pub scale: Option<u32>,
    /// Only build (or check) the reference data, then stop.
    #[arg(long)]
    pub prepare_only: bool,
    /// Folder holding the release `hostshift` and `hostshift-agent` to measure.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Folder for the results JSON (and the profile text).
    #[arg(long)]
    pub results: PathBuf,
    /// Instead of everything else: a storage tree of this many tiny files (no database, no
    /// reference data) — first sync, 1% change against `rsync -a --delete`, verify, peak RSS.
    #[arg(long)]
    pub many_files: Option<u64>,
    /// Which source the binaries were built from, for the results (`bench/run` says).
    #[arg(long, default_value = "unknown")]
    pub source: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            () = interrupted() => Err(anyhow::anyhow!("interrupted: everything started was stopped")),
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut a), Ok(mut b)) => {
            tokio::select! {
                _ = a.recv() => {}
                _ = b.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Prints a progress line on stderr (results go to stdout).
pub fn say(s: &str) {
    eprintln!("bench: {s}");
}

async fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: lab clusters run as the postgres user, which needs root to switch to");
    }
    for tool in ["pg_dump", "pg_restore", "psql", "pgbench"] {
        let p = hostshift::lab::pg::pg_bin_dir()?.join(tool);
        anyhow::ensure!(p.is_file(), "{} missing: apt-get install -y postgresql-15", p.display());
    }
    for (tool, pkg) in [("tar", "tar"), ("gzip", "gzip"), ("rsync", "rsync"), ("xargs", "findutils")] {
        let ok = sys::shell("which", &format!("command -v {tool}"), &[], std::time::Duration::from_secs(5), false, true)
            .await
            .is_ok_and(|o| o.code == Some(0));
        anyhow::ensure!(ok, "`{tool}` is missing: apt-get install -y {pkg}");
    }
    for bin in ["hostshift", "hostshift-agent"] {
        let p = args.bin_dir.join(bin);
        anyhow::ensure!(p.is_file(), "{} missing: cargo build --release --bins (bench/run does it)", p.display());
    }
    std::fs::create_dir_all(&args.work).with_context(|| format!("create {}", args.work.display()))?;
    std::fs::set_permissions(&args.work, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    if let Some(files) = args.many_files {
        return many::run(&args.work, files, &args.bin_dir, &args.results).await;
    }
    let cache = args.work.join("cache");
    let cached = !args.fresh && dataset::is_cached(&cache);
    let free = sys::free_bytes(&args.work)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // Copies moved aside during the rounds (`sys::use_trash`): per round a `tar | tar` copy and a
    // hostshift copy (and the profiled sync's), per classic round a `tar -xzf` copy.
    let copies = 2 * args.reps as u64 + args.classic_reps as u64 + 1;
    let trash = copies * rounds::TREE_BYTES;
    let need = rounds::RUN_BYTES + trash + if cached { 0 } else { dataset::BUILD_BYTES };
    say(&format!(
        "disk: {:.1} GiB free at {}; this run needs ~{:.1} GiB ({}~{:.1} GiB of scratch: two copies of the tree, a database copy, a .tar.gz; ~{:.1} GiB of copies set aside until the end)",
        gib(free),
        args.work.display(),
        gib(need),
        if cached { String::new() } else { format!("~{:.1} GiB for the reference data + ", gib(dataset::BUILD_BYTES)) },
        gib(rounds::RUN_BYTES),
        gib(trash)
    ));
    if free < need {
        bail!("not enough free disk at {}: {:.1} GiB free, ~{:.1} GiB needed (use --work on a bigger disk)", args.work.display(), gib(free), gib(need));
    }
    let pids = sys::PidsFile::create(&args.work.join("pids"))?;
    let mut data = dataset::Dataset::open_or_build(&cache, args.fresh, &say).await?;
    pids.add("postmaster", data.old.pid());
    let outcome = if args.prepare_only {
        say(&format!(
            "reference data ready: database {:.2} GB, {} files / {:.2} GB in {} folders",
            data.meta.db_bytes as f64 / 1e9,
            data.meta.storage.files,
            data.meta.storage.bytes as f64 / 1e9,
            data.meta.storage.folders
        ));
        Ok(())
    } else {
        rounds::run_all(&args, &mut data, &pids).await
    };
    // The cache keeps its data: a fast shutdown, not a kill.
    let stopped = data.old.stop().await;
    outcome?;
    stopped?;
    Ok(())
}
