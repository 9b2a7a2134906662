//! `--scale N` for the full copy (issue 15, "how cost grows"): the old host at N × the reference
//! — the cached N × database (`dataset::scaled_db`, the same one the cutover round uses) and a
//! storage tree of N × the files and bytes — copied by one `hostshift sync` into an empty new
//! host, then `hostshift verify`, with both agents' peak RSS. The report sets each figure beside
//! the reference round's median of the same run and the growth of the data.
//!
//! The N × tree is N hard-linked copies of the reference tree (`copy-1/…`, `copy-N/…`): N × the
//! paths, files and bytes for the agents (each path is walked, hashed, sent and written on its
//! own; hostshift never sends hard links as links), without writing N × 2.96 GB on the old side
//! first. Its source bytes are as warm in the page cache as the reference tree's are in the
//! reference rounds. The best tools run at N × too, as yardsticks of what the machine itself does
//! at that size (the new side's N × 3 GB no longer fit the page cache's dirty limit, and verify
//! reads them back from the disk): the binary COPY pipes + `pg_restore -j 2` of the database, and
//! `tar | tar` with `--hard-dereference` (each link copied as a file, as hostshift does). CPU
//! seconds per process group are recorded beside the wall times: the agents' CPU is the cost
//! hostshift itself controls.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hostshift::lab::pg::PgCluster;
use hostshift::lab::seed;
use serde_json::json;

use crate::baselines::{self, Baselines};
use crate::dataset::{Dataset, OLD_IP};
use crate::hs::{self, HsLab, OldHost};
use crate::measure::{Group, Snapshot};
use crate::report::{Report, Sample};
use crate::{Args, measure, say, sys};

/// `tar | tar` copying hard links as files (the N × tree is made of them).
const TAR_PIPE_DEREFERENCE: &str = r#"tar -C "$SRC" --hard-dereference -cf - . | tar -C "$DST" -xf -"#;

/// The full copy and verify at `n` ×, into `report` (samples `scaled.*`). The reference cluster
/// must be stopped (the N × one takes its address).
///
/// # Errors
/// Any step failing, named.
pub async fn run(args: &Args, data: &Dataset, n: u32, pids: &sys::PidsFile, report: &mut Report) -> Result<()> {
    let (_, db_bytes) = crate::dataset::scaled_db(&args.work, n, &say).await?;
    let dir = args.work.join(format!("run-scaled-x{n}"));
    sys::empty_dir(&dir)?;
    // The new host's copy: the tree and the database (with its WAL), and slack.
    // The new host's copies: the tree twice (`tar | tar`'s, kept aside while hostshift copies),
    // the database (with its WAL; the best tools' copy is dropped before), and slack.
    let need = 2 * u64::from(n) * crate::rounds::TREE_BYTES + 2 * u64::try_from(db_bytes).unwrap_or(0) + (2 << 30);
    let free = sys::free_bytes(&args.work)?;
    anyhow::ensure!(
        free >= need,
        "not enough free disk for the x{n} full copy at {}: {:.1} GiB free, {:.1} GiB needed (a smaller --scale, or --work on a bigger disk)",
        args.work.display(),
        free as f64 / f64::from(1u32 << 30),
        need as f64 / f64::from(1u32 << 30)
    );
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let cache = args.work.join(format!("cache-x{n}"));
    let mut old = PgCluster::start_existing(&cache.join("pg"), "old", OLD_IP).await.with_context(|| format!("start the x{n} database in {}", cache.display()))?;
    pids.add("postmaster", old.pid());
    let mut new = PgCluster::start(&dir.join("pg"), "new", hs::NEW_IP).await?;
    pids.add("postmaster", new.pid());
    let outcome = with_hosts(args, data, n, db_bytes, &dir, &old, &new, pids, report).await;
    let _ = new.stop().await;
    let _ = old.stop().await;
    match &outcome {
        Ok(()) => sys::remove_dir(&dir)?,
        Err(_) => say(&format!("the failed x{n} full copy's files are left in {} for inspection", dir.display())),
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn with_hosts(args: &Args, data: &Dataset, n: u32, db_bytes: i64, dir: &Path, old: &PgCluster, new: &PgCluster, pids: &sys::PidsFile, report: &mut Report) -> Result<()> {
    let admin = new.connect("postgres").await?;
    seed::ensure_roles(&admin).await?;
    new.create_database("app", None).await?;
    drop(admin);
    let storage = dir.join("old-host/storage");
    std::fs::create_dir_all(&storage)?;
    for k in 1..=n {
        let to = storage.join(format!("copy-{k}"));
        sys::shell("link the reference tree", r#"cp -al "$FROM" "$TO""#, &[("FROM", data.storage.display().to_string()), ("TO", to.display().to_string())], Duration::from_secs(600), false, false)
            .await?;
    }
    let (files, bytes) = (data.meta.storage.files * u64::from(n), data.meta.storage.bytes * u64::from(n));
    let src = OldHost { conninfo: old.conninfo("app"), storage: storage.clone(), host: data.host.clone(), files: data.files.clone(), follow: false };
    let lab = HsLab::start_for(&dir.join("hostshift"), &src, new, &args.bin_dir).await.context("start the agents")?;
    pids.add("agent", lab.old.pid());
    pids.add("agent", lab.new.pid());
    let load = sys::load();
    say(&format!(
        "full copy x{n}: database {:.2} GB, storage {files} files / {:.2} GB (load average {:.2} {:.2} {:.2})",
        db_bytes as f64 / 1e9,
        bytes as f64 / 1e9,
        load[0],
        load[1],
        load[2]
    ));
    report.loads.push((format!("full copy x{n}"), load));
    let groups = vec![
        Group { name: "old agent", pid: lab.old.pid() },
        Group { name: "new agent", pid: lab.new.pid() },
        Group { name: "old postgres", pid: old.pid() },
        Group { name: "new postgres", pid: new.pid() },
        Group { name: "client tools (pg_dump, psql, tar, hostshift CLI)", pid: std::process::id() },
    ];
    let begin = || {
        sys::settle();
        measure::snapshot(&groups)
    };
    let cpu = |snap: &Snapshot| Some(measure::cpu_between(&groups, snap, &measure::snapshot(&groups)));
    // Each copy starts from an emptied page cache holding only the sources (`sys::cold_start`).
    let sources = [storage.as_path(), old.data_dir()];

    // The yardsticks first (their copies are dropped or moved aside before hostshift's).
    let scratch = dir.join("scratch");
    sys::empty_dir(&scratch)?;
    let bl = Baselines { old_conninfo: old.conninfo("app"), pg_bin: old.bin_dir().to_path_buf(), new, src: storage.clone(), scratch };
    bl.fresh_db("bl_best").await?;
    sys::cold_start(&sources).await?;
    let snap = measure::snapshot(&groups);
    let (out, phases) = bl.run_marked("best tools, database", baselines::BEST_DB, "bl_best", Path::new("/nonexistent")).await?;
    push(report, n, "scaled.best.db", out.wall.as_secs_f64(), cpu(&snap), json!({ "phases": phases }));
    bl.drop_db("bl_best").await?;
    let tar_copy = bl.scratch.join("tar-pipe");
    sys::empty_dir(&tar_copy)?;
    sys::cold_start(&sources).await?;
    let snap = measure::snapshot(&groups);
    let out = bl.run("tar | tar", TAR_PIPE_DEREFERENCE, "-", &tar_copy).await?;
    push(report, n, "scaled.best.storage", out.wall.as_secs_f64(), cpu(&snap), json!(null));
    // Right after the copy, as at 1 x: what making it durable costs (hostshift's copy is durable
    // when its sync ends; `tar` leaves that to the kernel).
    let snap = measure::snapshot(&groups);
    let out = bl.run("syncfs", baselines::SYNCFS, "-", &tar_copy).await?;
    push(report, n, "scaled.best.storage.syncfs", out.wall.as_secs_f64(), cpu(&snap), json!(null));
    let tar_files = crate::storage_tree::listing(&tar_copy)?.len() as u64;
    anyhow::ensure!(tar_files == files, "tar | tar copied {tar_files} files of the x{n} tree's {files}");
    // Moved aside, not deleted: creating files right after deleting as many is slow on this
    // machine's journal-less ext4 (see `sys::use_trash`).
    let aside = dir.join("tar-pipe-done");
    std::fs::rename(&tar_copy, &aside)?;

    let agents = [("old", lab.old.pid()), ("new", lab.new.pid())];
    report.agent_peaks(&agents, &format!("idle x{n}"));
    sys::cold_start(&sources).await?;
    let snap = measure::snapshot(&groups);
    // One unit at a time, like `hostshift.serial` it is compared with: each unit's own growth.
    let run = lab.sync("--one-at-a-time").await?;
    let rss = report.agent_peaks(&agents, &format!("full sync x{n}"));
    let info = json!({ "scale": n, "db_bytes": db_bytes, "storage_files": files, "storage_bytes": bytes, "rss": rss, "units": run.units });
    push(report, n, "scaled.full", run.wall_s, cpu(&snap), info);
    push(report, n, "scaled.full.db", run.unit_s("database"), None, json!(null));
    push(report, n, "scaled.full.storage", run.unit_s("storage"), None, json!(null));
    let snap = begin();
    let wall = lab.verify().await?;
    let rss = report.agent_peaks(&agents, &format!("verify x{n}"));
    push(report, n, "scaled.verify", wall, cpu(&snap), json!({ "rss": rss }));
    let snap = begin();
    let out = bl.run("sha256sum of the copy", baselines::HASH_TREE, "-", &lab.new_storage).await?;
    push(report, n, "scaled.yardstick.hash_copy", out.wall.as_secs_f64(), cpu(&snap), json!(null));
    Ok(())
}

fn push(report: &mut Report, n: u32, name: &str, s: f64, cpu: Option<measure::Cpu>, info: serde_json::Value) {
    say(&format!("  {name:<34} {s:>8.2} s   (x{n})"));
    report.samples.push(Sample { name: name.into(), round: 0, s: measure::round2(s), cpu, info });
}
