//! hostshift's side of the benchmark, built like the rehearsal's `LocalLab`: certificates, two
//! real agents (mutual TLS, SHA-256 framing: nothing is switched off) and a plan; then timed
//! `hostshift sync` and `hostshift verify` runs of the release binaries, with per-unit times read
//! from `--json` and per-piece times from the coordinator's journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostshift::lab::agent::{AgentSetup, LabAgent};
use hostshift::lab::pg::PgCluster;
use hostshift_shared::pki::{self, AgentSpec, PkiRequest};
use hostshift_shared::tls::TlsFiles;

use crate::dataset::{Dataset, OLD_IP};
use crate::journal::{self, Span};
use crate::sys;

/// The new host's loopback address (as in the rehearsal).
pub const NEW_IP: std::net::Ipv4Addr = hostshift::rehearse::NEW_IP;
/// Deadline of one hostshift command.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Two agents and a plan.
pub struct HsLab {
    /// The plan file.
    pub plan: PathBuf,
    /// The old host's agent.
    pub old: LabAgent,
    /// The new host's agent.
    pub new: LabAgent,
    /// The new host's storage tree (the sync's target).
    pub new_storage: PathBuf,
    cli: PathBuf,
    journal: PathBuf,
    agent_states: [PathBuf; 2],
}

/// What the old host's agent serves.
pub struct OldHost {
    /// Connection string of database `app`.
    pub conninfo: String,
    /// The storage tree.
    pub storage: PathBuf,
    /// The host folder the config files are under.
    pub host: PathBuf,
    /// The config files: `(name, path)`.
    pub files: Vec<(String, PathBuf)>,
    /// The agent may freeze database `app` and create a logical slot in it, and take the rollback
    /// window's changes back into it; the new agent may freeze and follow its `app` too (the
    /// cutover round: its new PostgreSQL runs at `wal_level = logical`).
    pub follow: bool,
}

/// One `hostshift sync` run.
pub struct SyncRun {
    /// Wall time of the command.
    pub wall_s: f64,
    /// Its `--json` report.
    pub report: serde_json::Value,
    /// Per unit of the report: `(kind name, ms)`.
    pub units: Vec<(String, f64)>,
    /// Pieces from the journal (tables, ranges, batches, schema sections).
    pub spans: Vec<Span>,
    /// When the sync started (ms since the epoch, the journal's clock).
    pub t0_ms: u64,
}

impl SyncRun {
    /// Seconds of the first report unit of `kind` (`database`, `storage`, `file`: summed).
    pub fn unit_s(&self, kind: &str) -> f64 {
        self.units.iter().filter(|(k, _)| k.starts_with(&format!("{kind} "))).map(|(_, ms)| ms / 1000.0).sum()
    }
}

impl HsLab {
    /// The coordinator's journal (`journal.jsonl`).
    pub fn journal(&self) -> &Path {
        &self.journal
    }

    /// Certificates, agent configs, agents and the plan in `dir`. The old agent reads the
    /// reference data; the new one may write database `app`, tree `evaluations` and the files.
    ///
    /// # Errors
    /// Certificate, I/O or agent start-up failures.
    pub async fn start(dir: &Path, data: &Dataset, new_pg: &PgCluster, bin_dir: &Path) -> Result<HsLab> {
        let src = OldHost { conninfo: data.old.conninfo("app"), storage: data.storage.clone(), host: data.host.clone(), files: data.files.clone(), follow: false };
        Self::start_for(dir, &src, new_pg, bin_dir).await
    }

    /// As [`HsLab::start`], for any old host (the cutover round's copy of the reference data,
    /// whose agent may also freeze and follow its database).
    ///
    /// # Errors
    /// Certificate, I/O or agent start-up failures.
    pub async fn start_for(dir: &Path, data: &OldHost, new_pg: &PgCluster, bin_dir: &Path) -> Result<HsLab> {
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
        let new_host = dir.join("new-host");
        let new_storage = new_host.join("app/backend/storage/project-evaluations");
        sys::empty_dir(&new_storage)?;
        let mut old = AgentSetup::new("old", OLD_IP);
        old.databases.push(("app".into(), data.conninfo.clone()));
        old.storage.push(("evaluations".into(), data.storage.clone()));
        let mut new = AgentSetup::new("new", NEW_IP);
        new.databases.push(("app".into(), new_pg.conninfo("app")));
        new.storage.push(("evaluations".into(), new_storage.clone()));
        new.restore_databases.push("app".into());
        new.write_storage.push("evaluations".into());
        if data.follow {
            // The cutover's write freeze (read-only + end sessions) and `hostshift follow`'s slot.
            old.freeze_databases.push("app".into());
            old.follow_databases.push("app".into());
            // The rollback window: the new host's slot, the old agent applying its changes, and a
            // rollback's freeze of the new host.
            old.restore_databases.push("app".into());
            new.follow_databases.push("app".into());
            new.freeze_databases.push("app".into());
        }
        for (name, path) in &data.files {
            old.files.push((name.clone(), path.clone()));
            let target = new_host.join(path.strip_prefix(&data.host).unwrap_or(path));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            new.files.push((name.clone(), target));
            new.write_files.push(name.clone());
        }
        let coordinator = TlsFiles { cert: certs.coordinator_cert.clone(), key: certs.coordinator_key.clone(), ca: certs.ca_cert.clone() };
        let own = |i: usize| TlsFiles { cert: certs.agents[i].1.clone(), key: certs.agents[i].2.clone(), ca: certs.ca_cert.clone() };
        let agents = dir.join("agents");
        let agent_states = [agents.join("state-old"), agents.join("state-new")];
        let (old_tls, new_tls) = (own(0), own(1));
        let (old_agent, new_agent) = tokio::join!(
            LabAgent::start(&old, &old_tls, &coordinator, &agents),
            LabAgent::start(&new, &new_tls, &coordinator, &agents)
        );
        let (old_agent, new_agent) = (old_agent?, new_agent?);
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let files: String = data.files.iter().map(|(n, _)| format!("[[files]]\nname = \"{n}\"\n\n")).collect();
        let plan_text = format!(
            "# Plan of the benchmark (bench/run).\n[migration]\nname = \"bench\"\n\n\
             [old]\naddress = \"{}\"\nagent = \"old\"\n\n[new]\naddress = \"{}\"\nagent = \"new\"\n\n\
             [tls]\nca = {}\ncert = {}\nkey = {}\n\n[[databases]]\nname = \"app\"\n\n\
             [[storage]]\nname = \"evaluations\"\n\n{files}\
             [freeze]\nmethods = [\"read-only\"]\nbudget_secs = {}\n\n[switch]\nmethod = \"none\"\n",
            old_agent.address(),
            new_agent.address(),
            q(&certs.ca_cert),
            q(&certs.coordinator_cert),
            q(&certs.coordinator_key),
            // The cutover round measures the freeze, whatever it is: a budget the gates and the
            // catch-up wait never stop it at (the proof inside the freeze grows with the data).
            if data.follow { 600 } else { 30 },
        );
        let plan = dir.join("plan.toml");
        std::fs::write(&plan, plan_text)?;
        Ok(HsLab {
            plan,
            old: old_agent,
            new: new_agent,
            new_storage,
            cli: bin_dir.join("hostshift"),
            journal: dir.join(".hostshift/bench/journal.jsonl"),
            agent_states,
        })
    }

    /// Makes the new host empty again for a first sync: database `app` dropped and recreated, the
    /// storage tree emptied, and both agents' manifest caches removed (a first sync hashes every
    /// file on the old host).
    ///
    /// # Errors
    /// SQL or I/O errors.
    pub async fn reset_target(&self, new_pg: &PgCluster) -> Result<()> {
        let c = new_pg.connect("postgres").await?;
        c.batch_execute("DROP DATABASE IF EXISTS app WITH (FORCE)").await?;
        c.batch_execute("CREATE DATABASE app").await?;
        sys::fresh_dir(&self.new_storage)?;
        for s in &self.agent_states {
            sys::remove_dir(&s.join("manifests"))?;
        }
        Ok(())
    }

    /// Runs `hostshift --json --yes ARGS --plan PLAN` (allowed to fail); returns its output and
    /// its JSON report (`null` when it printed none).
    ///
    /// # Errors
    /// The command could not run or timed out.
    pub async fn json(&self, args: &str) -> Result<(sys::Output, serde_json::Value)> {
        let out = self.cli(&format!("hostshift {args}"), &format!("--yes {args}")).await?;
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((out, report))
    }

    async fn cli(&self, what: &str, args: &str) -> Result<sys::Output> {
        let script = format!("\"$CLI\" --json {args} --plan \"$PLAN\"");
        let env = [("CLI", self.cli.display().to_string()), ("PLAN", self.plan.display().to_string())];
        sys::shell(what, &script, &env, TIMEOUT, true, true).await
    }

    /// `hostshift --json sync FLAGS` (e.g. `--only storage`, `--one-at-a-time`; empty: every
    /// unit at once); fails unless every unit succeeded.
    ///
    /// # Errors
    /// The command failing, or a unit failing.
    pub async fn sync(&self, flags: &str) -> Result<SyncRun> {
        let offset = std::fs::metadata(&self.journal).map_or(0, |m| m.len());
        let args = format!("sync {flags}").trim_end().to_string();
        let out = self.cli(&format!("hostshift {args}"), &args).await?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("hostshift {args} printed no JSON report (exit {:?}); stderr:\n{}", out.code, out.stderr))?;
        if out.code != Some(0) || report["ok"] != serde_json::Value::Bool(true) {
            let failed: Vec<String> = report["units"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|u| u["status"] == "failed")
                .map(|u| format!("{} {}: {}", u["kind"], u["name"], u["detail"]))
                .collect();
            bail!("hostshift {args} failed (exit {:?}): {}\n{}", out.code, failed.join("; "), out.stderr);
        }
        let units = report["units"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                (
                    format!("{} {}", u["kind"].as_str().unwrap_or("?"), u["name"].as_str().unwrap_or("?")),
                    u["ms"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        let (t0_ms, spans) = journal::spans_since(&self.journal, offset).unwrap_or_default();
        Ok(SyncRun { wall_s: out.wall.as_secs_f64(), report, units, spans, t0_ms })
    }

    /// `hostshift --json verify`; fails naming what differs.
    ///
    /// # Errors
    /// The command failing or any item differing.
    pub async fn verify(&self) -> Result<f64> {
        let out = self.cli("hostshift verify", "verify").await?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.code != Some(0) || report["ok"] != serde_json::Value::Bool(true) {
            let differs: Vec<String> = report["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["equal"] != serde_json::Value::Bool(true))
                .map(|r| format!("{} {}: {}", r["kind"], r["name"], r["detail"]))
                .collect();
            bail!("hostshift verify failed (exit {:?}): {}\n{}", out.code, differs.join("; "), out.stderr);
        }
        Ok(out.wall.as_secs_f64())
    }
}
