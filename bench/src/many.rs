//! `--many-files N`: a storage tree of N tiny files (the 1,000,000-file acceptance of issue 11.3),
//! on its own — no database, no reference data. Two agents (mutual TLS, agent-to-agent pull: the
//! new agent fetches the old manifest itself), then: first sync, 1 % of the files rewritten,
//! `rsync -a --delete` of that change into a mirror against hostshift's second sync, `verify`,
//! and both agents' and the coordinator's peak RSS. Prints one line per measurement and writes
//! them to the results JSON.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostshift::lab::agent::{AgentSetup, LabAgent};
use hostshift_shared::pki::{self, AgentSpec, PkiRequest};
use hostshift_shared::tls::TlsFiles;

use crate::dataset::OLD_IP;
use crate::hs::NEW_IP;
use crate::{measure, say, sys};

/// Files per folder.
const PER_FOLDER: u64 = 250;
/// Deadline of one command.
const TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn file(root: &Path, i: u64) -> std::path::PathBuf {
    root.join(format!("d{:05}/f{i:07}.json", i / PER_FOLDER))
}

/// Runs the scenario in `work/many-N` with the binaries of `bin_dir`; results to `results`.
///
/// # Errors
/// Any step failing (named).
pub async fn run(work: &Path, files: u64, bin_dir: &Path, results: &Path) -> Result<()> {
    let dir = work.join(format!("many-{files}"));
    sys::remove_dir(&dir)?;
    let old_tree = dir.join("old/tree");
    let new_tree = dir.join("new/tree");
    let mirror = dir.join("mirror");
    sys::empty_dir(&new_tree)?;
    let t = Instant::now();
    for i in 0..files {
        let p = file(&old_tree, i);
        if i % PER_FOLDER == 0 {
            std::fs::create_dir_all(p.parent().context("parent")?)?;
        }
        std::fs::write(&p, format!("{{\"n\":{i}}}\n"))?;
    }
    say(&format!("many files: {files} files made in {:.1} s", t.elapsed().as_secs_f64()));
    let certs = pki::init(&PkiRequest {
        dir: dir.join("certs"),
        agents: vec![
            AgentSpec { name: "old".into(), sans: vec![OLD_IP.to_string()] },
            AgentSpec { name: "new".into(), sans: vec![NEW_IP.to_string()] },
        ],
        coordinator_name: "coordinator".into(),
        days: 1,
        force: true,
    })?;
    let mut old = AgentSetup::new("old", OLD_IP);
    old.storage.push(("tree".into(), old_tree.clone()));
    let mut new = AgentSetup::new("new", NEW_IP);
    new.storage.push(("tree".into(), new_tree.clone()));
    new.write_storage.push("tree".into());
    let coordinator = TlsFiles { cert: certs.coordinator_cert.clone(), key: certs.coordinator_key.clone(), ca: certs.ca_cert.clone() };
    let own = |i: usize| TlsFiles { cert: certs.agents[i].1.clone(), key: certs.agents[i].2.clone(), ca: certs.ca_cert.clone() };
    let agents = dir.join("agents");
    let (a, b) = (own(0), own(1));
    let (old_agent, new_agent) =
        tokio::join!(LabAgent::start(&old, &a, &coordinator, &agents), LabAgent::start(&new, &b, &coordinator, &agents));
    let (old_agent, new_agent) = (old_agent?, new_agent?);
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[migration]\nname = \"many\"\n\n[old]\naddress = \"{}\"\nagent = \"old\"\n\n[new]\naddress = \"{}\"\nagent = \"new\"\n\n\
             [tls]\nca = {}\ncert = {}\nkey = {}\n\n[[storage]]\nname = \"tree\"\ndelete = true\n\n[freeze]\nmethods = []\n\n[switch]\nmethod = \"none\"\n",
            old_agent.address(),
            new_agent.address(),
            q(&certs.ca_cert),
            q(&certs.coordinator_cert),
            q(&certs.coordinator_key),
        ),
    )?;
    let cli = bin_dir.join("hostshift");
    let hs = |args: &'static str| {
        let (cli, plan) = (cli.clone(), plan.clone());
        async move {
            // `command time` is not everywhere: the coordinator's peak RSS comes from /proc below.
            let script = format!("\"$CLI\" {args} --plan \"$PLAN\" & pid=$!; peak=0; \
                 while kill -0 $pid 2>/dev/null; do \
                   v=$(awk '/VmHWM/ {{print $2}}' /proc/$pid/status 2>/dev/null || true); \
                   [[ -n $v && $v -gt $peak ]] && peak=$v; sleep 0.01; done; \
                 wait $pid; echo \"coordinator-peak-kib $peak\" >&2");
            let env = [("CLI", cli.display().to_string()), ("PLAN", plan.display().to_string())];
            let out = sys::shell(&format!("hostshift {args}"), &script, &env, TIMEOUT, true, true).await?;
            if out.code != Some(0) {
                bail!("hostshift {args} failed (exit {:?}): {}", out.code, out.stderr);
            }
            let peak = out
                .stderr
                .lines()
                .find_map(|l| l.strip_prefix("coordinator-peak-kib "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0;
            anyhow::Ok((out.wall.as_secs_f64(), peak))
        }
    };
    let mut rows: Vec<(String, f64, &str)> = Vec::new();
    sys::settle();
    let (s, p) = hs("sync --quiet").await?;
    rows.push(("first sync (wall)".into(), s, "s"));
    rows.push(("coordinator peak RSS, first sync".into(), p, "MiB"));
    // The mirror rsync updates starts equal too.
    sys::shell("rsync (mirror)", "rsync -a --delete \"$SRC/\" \"$DST/\"", &[("SRC", old_tree.display().to_string()), ("DST", mirror.display().to_string())], TIMEOUT, false, false).await?;
    for i in (0..files).step_by(100) {
        std::fs::write(file(&old_tree, i), format!("{{\"n\":{i},\"changed\":1}}\n"))?;
    }
    sys::settle();
    let out = sys::shell("rsync -a --delete", "rsync -a --delete \"$SRC/\" \"$DST/\"", &[("SRC", old_tree.display().to_string()), ("DST", mirror.display().to_string())], TIMEOUT, false, false).await?;
    rows.push(("second sync after 1%: rsync -a --delete".into(), out.wall.as_secs_f64(), "s"));
    sys::settle();
    let (s, p) = hs("sync --quiet").await?;
    rows.push(("second sync after 1%: hostshift (wall)".into(), s, "s"));
    rows.push(("coordinator peak RSS, second sync".into(), p, "MiB"));
    let (s, p) = hs("verify").await?;
    rows.push(("verify (every file re-hashed on both hosts)".into(), s, "s"));
    rows.push(("coordinator peak RSS, verify".into(), p, "MiB"));
    for (name, pid) in [("old", old_agent.pid()), ("new", new_agent.pid())] {
        rows.push((format!("{name} agent peak RSS (VmHWM)"), measure::peak_rss_mib(pid).unwrap_or(0.0), "MiB"));
    }
    println!("\nmany files: {files} files in {} folders", files.div_ceil(PER_FOLDER));
    for (name, v, unit) in &rows {
        println!("  {name:<48} {v:>9.2} {unit}");
    }
    std::fs::create_dir_all(results)?;
    let stamp = chrono_stamp();
    let json: serde_json::Value = serde_json::json!({
        "scenario": "many-files",
        "files": files,
        "load": sys::load(),
        "rows": rows.iter().map(|(n, v, u)| serde_json::json!({"name": n, "value": v, "unit": u})).collect::<Vec<_>>(),
    });
    let path = results.join(format!("{stamp}-many-{files}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)?;
    say(&format!("many files: results in {}", path.display()));
    drop((old_agent, new_agent));
    // As for the cutover round: `HOSTSHIFT_BENCH_KEEP=1` keeps the agents' logs and the journal.
    if std::env::var_os("HOSTSHIFT_BENCH_KEEP").is_some() {
        say(&format!("many files: files kept in {} (HOSTSHIFT_BENCH_KEEP)", dir.display()));
    } else {
        sys::remove_dir(&dir)?;
    }
    Ok(())
}

/// Seconds since the epoch (a unique, sortable file name).
fn chrono_stamp() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
