//! The measurements, in interleaved rounds so that a change in the machine's load (other people
//! build and test here) hits every method alike:
//!
//! 1. rounds of full copies into an empty new host — best tools (DB, then storage), hostshift sync
//!    (then verify), and in the first `classic_reps` rounds the classic runbook;
//! 2. one extra hostshift sync under `perf` (not counted in the medians);
//! 3. the 1% change: per round a new generation of 1% of rows and files on the old host, then
//!    `rsync -a --delete` and hostshift's second sync (`--only storage`, `--only db`), alternating
//!    which goes first, then verify; finally the change is reverted.
//!
//! Every copy is checked; every hostshift run is followed by `hostshift verify`.

use std::path::Path;

use anyhow::{Context, Result};
use hostshift::lab::pg::PgCluster;
use hostshift::lab::seed;
use serde_json::json;

use crate::baselines::{self, Baselines};
use crate::dataset::Dataset;
use crate::hs::{self, HsLab, SyncRun};
use crate::measure::{self, Group, Snapshot};
use crate::report::{Report, Sample};
use crate::{Args, Part, dbcheck, journal, profile, say, storage_tree, sys};

/// Scratch space a run needs at its peak: the hostshift copy and the rsync copy of the tree, a
/// second database, a .tar.gz and its unpacked copy, with slack.
pub const RUN_BYTES: u64 = 14 * 1024 * 1024 * 1024;
/// One copy of the reference tree (2.96 GB), for the copies set aside during the rounds.
pub const TREE_BYTES: u64 = 3 * 1024 * 1024 * 1024;

struct Ctx<'a> {
    args: &'a Args,
    /// The old cluster's data directory (a source of every full copy).
    old_data: std::path::PathBuf,
    old_shape: dbcheck::Shape,
    bl: Baselines<'a>,
    lab: HsLab,
    new_pg: &'a PgCluster,
    groups: Vec<Group>,
    report: Report,
}

impl Ctx<'_> {
    fn skip(&self, p: Part) -> bool {
        self.args.skips(p)
    }

    /// Flushes dirty pages (untimed), then snapshots the CPU counters.
    fn begin(&self) -> Snapshot {
        sys::settle();
        measure::snapshot(&self.groups)
    }

    /// [`Ctx::begin`] for a full copy: from an emptied page cache holding only the sources
    /// (`sys::cold_start`).
    async fn begin_copy(&self) -> Result<Snapshot> {
        sys::cold_start(&[&self.bl.src, self.old_data.as_path()]).await?;
        Ok(measure::snapshot(&self.groups))
    }

    fn end(&mut self, name: &str, round: usize, snap: &Snapshot, wall_s: f64, info: serde_json::Value) {
        let cpu = measure::cpu_between(&self.groups, snap, &measure::snapshot(&self.groups));
        say(&format!("  {name:<34} {wall_s:>8.2} s   (round {})", round + 1));
        self.report.samples.push(Sample { name: name.into(), round, s: measure::round2(wall_s), cpu: Some(cpu), info });
    }

    fn derived(&mut self, name: &str, round: usize, s: f64) {
        self.report.samples.push(Sample { name: name.into(), round, s: measure::round2(s), cpu: None, info: json!(null) });
    }

    /// Both agents' peak RSS since the last call (then reset), recorded under `what`.
    fn agent_peaks(&mut self, what: &str) -> serde_json::Value {
        self.report.agent_peaks(&[("old", self.lab.old.pid()), ("new", self.lab.new.pid())], what)
    }

    fn sync_info(&mut self, run: &SyncRun, what: &str) -> serde_json::Value {
        json!({
            "units": run.units,
            "phases": journal::phases(&run.spans),
            "table_pieces": journal::table_pieces(&run.spans),
            "bytes": run.report["bytes"],
            "files": run.report["files"],
            "skipped_files": run.report["skipped_files"],
            "rss": self.agent_peaks(what),
            "spans": run.spans,
        })
    }
}

/// Runs every measurement against the data set and writes the results.
///
/// # Errors
/// Any step failing, a copy that does not check out, or `hostshift verify` failing.
pub async fn run_all(args: &Args, data: &mut Dataset, pids: &sys::PidsFile) -> Result<()> {
    let sync_parts = [Part::Classic, Part::Best, Part::Hostshift, Part::Delta, Part::Profile, Part::Storage];
    let mut report = if sync_parts.iter().all(|p| args.skips(*p)) {
        Report::new(args, sys::machine(&args.work, data.old.bin_dir(), &args.source), data.meta.clone())
    } else {
        let run_dir = args.work.join("run");
        sys::empty_dir(&run_dir)?;
        std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let mut new_pg = PgCluster::start(&run_dir.join("pg"), "new", hs::NEW_IP).await?;
        pids.add("postmaster", new_pg.pid());
        let outcome = with_new_host(args, data, &new_pg, &run_dir, pids).await;
        sys::use_trash(None)?;
        let _ = new_pg.stop().await;
        match &outcome {
            Ok(_) => sys::remove_dir(&run_dir)?,
            Err(_) => say(&format!("the failed run's files are left in {} for inspection", run_dir.display())),
        }
        outcome?
    };
    let mut failed = None;
    if let Some(n) = args.scale
        && !args.skips(Part::Hostshift)
    {
        // The N x cluster takes the reference cluster's address; the cutover rounds after it
        // copy the clusters' files and need neither running.
        data.old.stop().await?;
        if let Err(e) = crate::scaled::run(args, data, n, pids, &mut report).await {
            say(&format!("the x{n} full copy FAILED: {e:#}"));
            report.notes.push(format!("the x{n} full copy failed: {e:#}"));
            failed = Some(e);
        }
    }
    if !args.skips(Part::Cutover)
        && let Err(e) = cutover_rounds(args, data, pids, &mut report).await
    {
        say(&format!("the cutover round FAILED: {e:#}"));
        report.notes.push(format!("the cutover round failed: {e:#}"));
        failed = Some(e);
    }
    let load = sys::load();
    report.loads.push(("end".into(), load));
    report.finish(&args.results)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The cutover round at the reference size, then at `--scale N` ×. The round copies the cached
/// cluster's files: the reference cluster is stopped first (nothing after it needs it).
async fn cutover_rounds(args: &Args, data: &mut Dataset, pids: &sys::PidsFile, report: &mut Report) -> Result<()> {
    let pg_bin = data.old.bin_dir().to_path_buf();
    data.old.stop().await?;
    let mut sizes = vec![(1, crate::dataset::pg_data(&args.work.join("cache")), data.meta.db_bytes)];
    if let Some(n) = args.scale {
        let (path, bytes) = crate::dataset::scaled_db(&args.work, n, &say).await?;
        sizes.push((n, path, bytes));
    }
    for (scale, pg_data, db_bytes) in sizes {
        let src = crate::cutover::Source { pg_data, pg_bin: pg_bin.clone(), data, scale, db_bytes };
        let v = crate::cutover::round(&args.work, &src, &args.bin_dir, pids).await?;
        report.cutover.push(v);
    }
    Ok(())
}

async fn with_new_host(args: &Args, data: &mut Dataset, new_pg: &PgCluster, run_dir: &Path, pids: &sys::PidsFile) -> Result<Report> {
    let admin = new_pg.connect("postgres").await?;
    seed::ensure_roles(&admin).await?;
    new_pg.create_database("app", None).await?;
    drop(admin);
    let old_shape = dbcheck::shape(&data.old.connect("app").await?).await?;
    let lab = HsLab::start(&run_dir.join("hostshift"), data, new_pg, &args.bin_dir).await.context("start the agents")?;
    pids.add("agent", lab.old.pid());
    pids.add("agent", lab.new.pid());
    let groups = vec![
        Group { name: "old agent", pid: lab.old.pid() },
        Group { name: "new agent", pid: lab.new.pid() },
        Group { name: "old postgres", pid: data.old.pid() },
        Group { name: "new postgres", pid: new_pg.pid() },
        Group { name: "client tools (pg_dump, psql, tar, rsync, hostshift CLI)", pid: std::process::id() },
    ];
    let scratch = run_dir.join("scratch");
    sys::empty_dir(&scratch)?;
    // Copies made during the rounds are moved aside, not deleted, until the run ends (why:
    // `sys::use_trash`); `run_all` removes the run folder with them.
    sys::use_trash(Some(&run_dir.join("trash")))?;
    let machine = sys::machine(&args.work, data.old.bin_dir(), &args.source);
    let report = Report::new(args, machine, data.meta.clone());
    let bl = Baselines {
        old_conninfo: data.old.conninfo("app"),
        pg_bin: data.old.bin_dir().to_path_buf(),
        new: new_pg,
        src: data.storage.clone(),
        scratch,
    };
    let mut cx = Ctx { args, old_data: data.old.data_dir().to_path_buf(), old_shape, bl, lab, new_pg, groups, report };

    for r in 0..args.reps.max(args.classic_reps) {
        let load = sys::load();
        say(&format!("round {} of full copies (load average {:.2} {:.2} {:.2})", r + 1, load[0], load[1], load[2]));
        cx.report.loads.push((format!("full copies, round {}", r + 1), load));
        if r < args.reps && !cx.skip(Part::Best) {
            best_db(&mut cx, r).await?;
            tar_pipe(&mut cx, r).await?;
            best_at_once(&mut cx, r).await?;
        }
        if r < args.reps && !cx.skip(Part::Hostshift) {
            hostshift_full(&mut cx, r).await?;
        }
        if r < args.reps && !cx.skip(Part::Storage) {
            storage_only(&mut cx, r).await?;
        }
        if r < args.classic_reps && !cx.skip(Part::Classic) {
            classic(&mut cx, r).await?;
        }
    }
    // The profile is of what the rounds measured: the whole sync, or (`--only storage,profile`)
    // the storage unit alone.
    let profiled = if !cx.skip(Part::Hostshift) {
        Some("--one-at-a-time")
    } else if !cx.skip(Part::Storage) {
        Some("--only storage")
    } else {
        None
    };
    if let (false, Some(flags)) = (cx.skip(Part::Profile), profiled) {
        if profile::available().await {
            profiled_sync(&mut cx, run_dir, pids, flags).await?;
        } else {
            cx.report.notes.push("perf record does not work here: no CPU profile (apt-get install linux-perf)".into());
        }
    }
    if !cx.skip(Part::Delta) {
        deltas(&mut cx, data).await?;
    }
    Ok(cx.report)
}

async fn best_db(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    cx.bl.fresh_db("bl_best").await?;
    let snap = cx.begin_copy().await?;
    let (out, phases) = cx.bl.run_marked("best tools, database", baselines::BEST_DB, "bl_best", Path::new("/nonexistent")).await?;
    cx.end("best.db", r, &snap, out.wall.as_secs_f64(), json!({ "phases": phases }));
    dbcheck::check(&cx.old_shape, &cx.new_pg.connect("bl_best").await?, "the best-tools copy").await?;
    cx.bl.drop_db("bl_best").await
}

async fn tar_pipe(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    let dst = cx.bl.scratch.join("tar-pipe");
    sys::fresh_dir(&dst)?;
    let snap = cx.begin_copy().await?;
    let out = cx.bl.run("tar | tar", baselines::TAR_PIPE, "-", &dst).await?;
    cx.end("best.storage", r, &snap, out.wall.as_secs_f64(), json!(null));
    // Measured on its own right after the copy: what making the copy durable costs.
    let snap = measure::snapshot(&cx.groups);
    let out = cx.bl.run("syncfs", baselines::SYNCFS, "-", &dst).await?;
    cx.end("best.storage.syncfs", r, &snap, out.wall.as_secs_f64(), json!(null));
    check_tree(&cx.bl.src, &dst).await?;
    sys::set_aside(&dst)
}

/// A yardstick, not a target: the best tools' database and storage scripts started together, as
/// a hand-written script could (hostshift runs its units at once by default).
async fn best_at_once(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    cx.bl.fresh_db("bl_best").await?;
    let dst = cx.bl.scratch.join("tar-pipe");
    sys::fresh_dir(&dst)?;
    let snap = cx.begin_copy().await?;
    let out = cx.bl.run("best tools at once", &baselines::best_at_once(), "bl_best", &dst).await?;
    cx.end("best.at_once", r, &snap, out.wall.as_secs_f64(), json!(null));
    dbcheck::check(&cx.old_shape, &cx.new_pg.connect("bl_best").await?, "the best-tools copy at once").await?;
    check_tree(&cx.bl.src, &dst).await?;
    sys::set_aside(&dst)?;
    cx.bl.drop_db("bl_best").await
}

async fn check_tree(src: &Path, dst: &Path) -> Result<u64> {
    let (a, b) = (src.to_path_buf(), dst.to_path_buf());
    tokio::task::spawn_blocking(move || storage_tree::check_copy(&a, &b)).await?
}

/// `hostshift sync FLAGS` into an emptied target from a cold page cache, recorded as `name`.
async fn fresh_sync(cx: &mut Ctx<'_>, r: usize, flags: &str, name: &str, what: &str) -> Result<SyncRun> {
    cx.lab.reset_target(cx.new_pg).await?;
    cx.agent_peaks("idle");
    let snap = cx.begin_copy().await?;
    let run = cx.lab.sync(flags).await?;
    let info = cx.sync_info(&run, what);
    cx.end(name, r, &snap, run.wall_s, info);
    Ok(run)
}

/// `hostshift sync` as it runs by default (every unit at once), then `--one-at-a-time` into a
/// fresh target again: each unit's own time (`hostshift.full.db`, `.storage`, `.files`) and where
/// it goes. Verify and the hash yardstick run after the second.
async fn hostshift_full(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    fresh_sync(cx, r, "", "hostshift.full", "full sync").await?;
    let run = fresh_sync(cx, r, "--one-at-a-time", "hostshift.serial", "full sync, one unit at a time").await?;
    cx.derived("hostshift.full.db", r, run.unit_s("database"));
    cx.derived("hostshift.full.storage", r, run.unit_s("storage"));
    cx.derived("hostshift.full.files", r, run.unit_s("file"));
    let snap = cx.begin();
    let wall = cx.lab.verify().await?;
    let info = json!({ "rss": cx.agent_peaks("verify") });
    cx.end("hostshift.verify", r, &snap, wall, info);
    let snap = cx.begin();
    let out = cx.bl.run("sha256sum of the copy", baselines::HASH_TREE, "-", &cx.lab.new_storage).await?;
    cx.end("yardstick.hash_copy", r, &snap, out.wall.as_secs_f64(), json!(null));
    Ok(())
}

/// `--only storage`: `tar | tar`, then the storage unit alone into an empty tree, from the same
/// cold page cache; recorded as the full rounds' `best.storage` and `hostshift.full.storage`, so
/// the storage verdict applies (do not combine with `best` or `hostshift`: they would share
/// the samples).
async fn storage_only(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    tar_pipe(cx, r).await?;
    let run = fresh_sync(cx, r, "--only storage", "hostshift.storage_only", "storage unit alone").await?;
    cx.derived("hostshift.full.storage", r, run.unit_s("storage"));
    check_tree(&cx.bl.src, &cx.lab.new_storage).await?;
    Ok(())
}

async fn classic(cx: &mut Ctx<'_>, r: usize) -> Result<()> {
    cx.bl.fresh_db("bl_classic").await?;
    let none = Path::new("/nonexistent");
    let snap = cx.begin();
    let dump = cx.bl.run("pg_dump -Fc", baselines::CLASSIC_DUMP, "-", none).await?;
    let dump_bytes = cx.bl.scratch_size("app.dump");
    cx.end("classic.db.dump", r, &snap, dump.wall.as_secs_f64(), json!({ "dump_bytes": dump_bytes }));
    let snap = cx.begin();
    let restore = cx.bl.run("pg_restore", baselines::CLASSIC_RESTORE, "bl_classic", none).await?;
    cx.end("classic.db.restore", r, &snap, restore.wall.as_secs_f64(), json!(null));
    cx.derived("classic.db", r, (dump.wall + restore.wall).as_secs_f64());
    dbcheck::check(&cx.old_shape, &cx.new_pg.connect("bl_classic").await?, "the pg_dump/pg_restore copy").await?;
    cx.bl.drop_db("bl_classic").await?;
    std::fs::remove_file(cx.bl.scratch.join("app.dump"))?;

    let dst = cx.bl.scratch.join("tar-gz");
    sys::fresh_dir(&dst)?;
    let snap = cx.begin();
    let c = cx.bl.run("tar -czf", baselines::CLASSIC_TAR_C, "-", &dst).await?;
    let tgz_bytes = cx.bl.scratch_size("storage.tar.gz");
    cx.end("classic.storage.tar_czf", r, &snap, c.wall.as_secs_f64(), json!({ "tgz_bytes": tgz_bytes }));
    let snap = cx.begin();
    let x = cx.bl.run("tar -xzf", baselines::CLASSIC_TAR_X, "-", &dst).await?;
    cx.end("classic.storage.tar_xzf", r, &snap, x.wall.as_secs_f64(), json!(null));
    cx.derived("classic.storage", r, (c.wall + x.wall).as_secs_f64());
    check_tree(&cx.bl.src, &dst).await?;
    sys::set_aside(&dst)?;
    std::fs::remove_file(cx.bl.scratch.join("storage.tar.gz"))?;
    Ok(())
}

/// One more `hostshift sync <flags>` under `perf record` (not in the medians).
async fn profiled_sync(cx: &mut Ctx<'_>, run_dir: &Path, pids: &sys::PidsFile, flags: &str) -> Result<()> {
    say(&format!("profile: one more hostshift sync {flags} under perf record -a (not in the medians)"));
    cx.lab.reset_target(cx.new_pg).await?;
    sys::settle();
    let agents = [("old agent", cx.lab.old.pid()), ("new agent", cx.lab.new.pid())];
    let rec = profile::Recording::start(run_dir, &agents).await?;
    for pid in rec.pids() {
        pids.add("perf", pid);
    }
    let snap = cx.begin();
    let sampler = measure::Sampler::start(cx.groups.clone(), std::time::Duration::from_millis(500));
    // One unit at a time: each phase's CPU is then its own.
    let run = cx.lab.sync(flags).await;
    let samples = sampler.stop();
    let data = rec.stop().await?;
    let run = run?;
    for p in journal::phases(&run.spans) {
        if let Some(cpu) = measure::cpu_in(&cx.groups, &samples, run.t0_ms + p.start_ms, run.t0_ms + p.end_ms) {
            cx.report.phase_cpu.push((p.phase, p.s, cpu));
        }
    }
    let info = cx.sync_info(&run, "full sync");
    cx.end("profile.hostshift.full", 0, &snap, run.wall_s, info);
    let text = profile::report(&data).await?;
    cx.report.profile = Some(text);
    Ok(())
}

async fn deltas(cx: &mut Ctx<'_>, data: &mut Dataset) -> Result<()> {
    if cx.skip(Part::Hostshift) {
        say("delta: the new host needs a first sync (untimed)");
        cx.lab.reset_target(cx.new_pg).await?;
        cx.lab.sync("").await?;
    }
    let mirror = cx.bl.scratch.join("rsync");
    sys::empty_dir(&mirror)?;
    let snap = cx.begin();
    let out = cx.bl.run("rsync (full)", baselines::RSYNC, "-", &mirror).await?;
    cx.end("best.rsync.full", 0, &snap, out.wall.as_secs_f64(), json!(null));
    check_tree(&cx.bl.src, &mirror).await?;
    let outcome = delta_rounds(cx, data, &mirror).await;
    say("delta: reverting the 1% change on the old host");
    data.set_files_generation(0)?;
    data.set_db_generation(0).await?;
    outcome
}

async fn delta_rounds(cx: &mut Ctx<'_>, data: &mut Dataset, mirror: &Path) -> Result<()> {
    let rounds = cx.args.reps;
    for r in 0..rounds {
        let generation = u32::try_from(r + 1).unwrap_or(1);
        // The database's second sync is the expensive one: fewer rounds of it.
        let with_db = r < cx.args.db_delta_reps;
        let rows = if with_db { data.set_db_generation(generation).await? } else { 0 };
        let files = data.set_files_generation(generation)?;
        let load = sys::load();
        say(&format!(
            "delta round {}: {rows} rows and {files} files changed on the old host (load average {:.2} {:.2} {:.2})",
            r + 1,
            load[0],
            load[1],
            load[2]
        ));
        cx.report.loads.push((format!("delta, round {}", r + 1), load));
        for step in if r % 2 == 0 { ["rsync", "hostshift"] } else { ["hostshift", "rsync"] } {
            if step == "rsync" {
                let snap = cx.begin();
                let out = cx.bl.run("rsync (delta)", baselines::RSYNC, "-", mirror).await?;
                cx.end("best.rsync.delta", r, &snap, out.wall.as_secs_f64(), json!({ "files_changed": files }));
                check_tree(&cx.bl.src, mirror).await?;
                continue;
            }
            cx.agent_peaks("idle");
            let snap = cx.begin();
            let run = cx.lab.sync("--only storage").await?;
            let info = cx.sync_info(&run, "second sync");
            cx.end("hostshift.second.storage", r, &snap, run.wall_s, info);
            cx.derived("hostshift.second.storage.unit", r, run.unit_s("storage"));
            if with_db {
                let snap = cx.begin();
                let run = cx.lab.sync("--only db").await?;
                let mut info = cx.sync_info(&run, "second sync");
                info["rows_changed"] = json!(rows);
                cx.end("hostshift.second.db", r, &snap, run.wall_s, info);
                cx.derived("hostshift.second.db.unit", r, run.unit_s("database"));
            }
        }
        // Verify costs two full reads of both hosts: after the first and the last round.
        if r == 0 || r + 1 == rounds {
            let snap = cx.begin();
            let wall = cx.lab.verify().await?;
            let info = json!({ "rss": cx.agent_peaks("verify") });
            cx.end("hostshift.verify.after_delta", r, &snap, wall, info);
        }
    }
    Ok(())
}
