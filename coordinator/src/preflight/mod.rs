//! The preflight of both hosts (`hostshift check`), as a library function the cutover gates and
//! the rehearsal reuse. It only reads: nothing on either host changes.
//!
//! Checks: each agent reachable over mutual TLS and carrying the certificate identity the plan
//! expects; protocol versions compatible; tools present (pg_dump/pg_restore/psql when the plan
//! moves databases, pm2 when it has apps, nginx when it uses it); every database of the plan
//! declared and reachable on both sides; storage roots and files present on the old host; the new
//! host's config allowing the writes a sync needs, and the old host's *not* allowing them; free
//! disk on the new host ≥ 1.2 × what will be copied; and the baseline row count of every table.
//!
//! # Files
//! - `mod.rs` — the report's types and [`run`]: reaching both agents, then each group of checks.
//! - `host.rs` — what one host's `Info` answer shows: identity, protocol, tools, the plan's
//!   resources declared there, the permits its config grants.
//! - `databases.rs` — databases the new host lacks (created by sync, or the SQL to run) and the
//!   owners and roles the old databases use.
//! - `disk.rs` — free space on the new host against what will be copied.

use std::collections::BTreeMap;

use hostshift_proto::v1::{InfoRequest, InfoResponse, InventoryRequest, InventoryResponse};
use serde::Serialize;

use crate::client::{self, Agent};
use crate::plan::{Plan, Side};

mod databases;
mod disk;
mod host;

use databases::{missing_databases, owner_checks};
use disk::disk_checks;
use host::host_checks;

/// Required free space on the new host, as a multiple of what will be copied.
pub const DISK_FACTOR: f64 = 1.2;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Worth knowing, not blocking.
    Warn,
    /// Blocks the move.
    Fail,
}

/// One line of the preflight.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `old`, `new` or `both`.
    pub host: String,
    /// What was checked.
    pub check: String,
    /// The verdict.
    pub result: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do, for warnings and failures.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// A tool as one agent reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ToolRow {
    /// `old` / `new`.
    pub host: String,
    /// Tool name.
    pub tool: String,
    /// Found.
    pub present: bool,
    /// Version line.
    pub version: String,
    /// Program path.
    pub path: String,
}

/// What one agent said about itself.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostFacts {
    /// Address from the plan.
    pub address: String,
    /// Reached and answered `Info`.
    pub reachable: bool,
    /// Its hostname.
    pub hostname: String,
    /// Certificate identity.
    pub identity: String,
    /// Role label from its config.
    pub role: String,
    /// hostshift version.
    pub agent_version: String,
    /// Protocol version.
    pub protocol_version: u32,
    /// Destructive operations its config allows.
    pub permits: Vec<String>,
    /// Database name → PostgreSQL server version (reachable ones).
    pub databases: BTreeMap<String, String>,
}

/// Baseline row count of one table on the old host.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// Plan database name.
    pub database: String,
    /// `schema.table`.
    pub table: String,
    /// Exact rows.
    pub rows: i64,
    /// Bytes including indexes and TOAST.
    pub size_bytes: u64,
}

/// The whole preflight.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// The plan file.
    pub plan: String,
    /// Per side.
    pub hosts: BTreeMap<String, HostFacts>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Tools of both hosts.
    pub tools: Vec<ToolRow>,
    /// Row counts on the old host.
    pub baseline: Vec<Baseline>,
}

/// The checks as they are found, in order.
struct Collector(Vec<Check>);

impl Collector {
    fn push(
        &mut self,
        host: &str,
        check: impl Into<String>,
        result: Verdict,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Check {
            host: host.into(),
            check: check.into(),
            result,
            detail: detail.into(),
            hint: hint.into(),
        });
    }
    pub(super) fn ok(&mut self, host: &str, check: impl Into<String>, detail: impl Into<String>) {
        self.push(host, check, Verdict::Ok, detail, "");
    }
    pub(super) fn fail(
        &mut self,
        host: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(host, check, Verdict::Fail, detail, hint);
    }
    pub(super) fn warn(
        &mut self,
        host: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(host, check, Verdict::Warn, detail, hint);
    }
}

/// Why a host counts as unreachable. The check's row names the host, so the connect error's
/// text is its message alone.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    /// No TLS connection.
    #[error("{}", .0.message)]
    Connect(client::ConnectError),
    /// The first RPC failed (a refused certificate shows here).
    #[error("{}", client::explain_first_rpc(.0))]
    FirstRpc(tonic::Status),
}

async fn reach(plan: &Plan, side: Side) -> Result<(Agent, InfoResponse), Unreachable> {
    // Any agent of the CA: the identity is reported as a check of its own below.
    let agent = client::connect_any(plan, side)
        .await
        .map_err(Unreachable::Connect)?;
    let info = agent
        .info()
        .info(client::request(InfoRequest { brief: false }))
        .await
        .map_err(Unreachable::FirstRpc)?
        .into_inner();
    Ok((agent, info))
}

async fn inventory(agent: &Agent, row_counts: bool) -> Result<InventoryResponse, client::RpcError> {
    agent
        .info()
        .inventory(client::request(InventoryRequest {
            databases: vec![],
            storage: vec![],
            row_counts,
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(client::RpcError)
}

/// Runs the preflight. Never fails as a whole: unreachable hosts become failed checks.
pub async fn run(plan: &Plan) -> Report {
    let mut c = Collector(Vec::new());
    let mut hosts = BTreeMap::new();
    let mut tools = Vec::new();
    let (old, new) = tokio::join!(reach(plan, Side::Old), reach(plan, Side::New));
    let mut reached: BTreeMap<Side, (Agent, InfoResponse)> = BTreeMap::new();
    for (side, r) in [(Side::Old, old), (Side::New, new)] {
        let h = side.as_str();
        let address = plan.host(side).address.clone();
        match r {
            Err(e) => {
                c.fail(h, "reachable over mutual TLS", e.to_string(), format!("start the agent on the {h} host and check [{h}] address and [tls] in the plan"));
                hosts.insert(
                    h.to_string(),
                    HostFacts {
                        address,
                        ..Default::default()
                    },
                );
            }
            Ok((agent, info)) => {
                c.ok(
                    h,
                    "reachable over mutual TLS",
                    format!(
                        "{} at {} — host {}, hostshift {}",
                        info.identity, address, info.hostname, info.agent_version
                    ),
                );
                host_checks(plan, side, &info, &mut c);
                tools.extend(info.tools.iter().map(|t| ToolRow {
                    host: h.into(),
                    tool: t.name.clone(),
                    present: t.present,
                    version: if t.present {
                        t.version.clone()
                    } else {
                        t.problem.clone()
                    },
                    path: t.path.clone(),
                }));
                hosts.insert(
                    h.to_string(),
                    HostFacts {
                        address,
                        reachable: true,
                        hostname: info.hostname.clone(),
                        identity: info.identity.clone(),
                        role: info.role.clone(),
                        agent_version: info.agent_version.clone(),
                        protocol_version: info.protocol_version,
                        permits: info.permits.clone(),
                        databases: info
                            .databases
                            .iter()
                            .filter(|d| d.reachable)
                            .map(|d| (d.name.clone(), d.server_version.clone()))
                            .collect(),
                    },
                );
                reached.insert(side, (agent, info));
            }
        }
    }
    if let Some((old_agent, _)) = reached.get(&Side::Old) {
        match crate::snapshots::of(old_agent).await {
            Ok(list) if list.is_empty() => c.ok("old", "open snapshots", "none"),
            Ok(list) => {
                for s in list {
                    c.warn(
                        "old",
                        "open snapshot",
                        s.to_string(),
                        "a sync holds it (it holds back VACUUM); if no sync runs, the agent closes it when its lease runs out",
                    );
                }
            }
            Err(e) => c.warn(
                "old",
                "open snapshots",
                e.to_string(),
                "see the old agent's log",
            ),
        }
    }
    // Following: can the old database be followed, and what WAL does a follow's slot keep.
    if let Some((old_agent, _)) = reached.get(&Side::Old) {
        let new_info = reached.get(&Side::New).map(|(_, i)| i);
        c.0.extend(crate::follow::check::rows(plan, old_agent, new_info).await);
    }
    // The rollback window: can the new host be followed back after the switch.
    if let Some((new_agent, _)) = reached.get(&Side::New) {
        c.0.extend(crate::window::check::rows(plan, new_agent).await);
    }
    let mut baseline = Vec::new();
    if let (Some((old_agent, _)), Some((new_agent, new_info))) =
        (reached.get(&Side::Old), reached.get(&Side::New))
    {
        let (old_inv, new_inv) =
            tokio::join!(inventory(old_agent, true), inventory(new_agent, false));
        match old_inv {
            Err(e) => c.fail(
                "old",
                "inventory (sizes, row counts)",
                e.to_string(),
                "see the old agent's log (journalctl -u hostshift-agent)",
            ),
            Ok(inv) => {
                disk_checks(plan, &inv, new_info, &mut c);
                for d in inv
                    .databases
                    .iter()
                    .filter(|d| plan.databases.iter().any(|p| p.name == d.name))
                {
                    if !d.problem.is_empty() {
                        c.fail(
                            "old",
                            format!("row counts of database {}", d.name),
                            d.problem.clone(),
                            "",
                        );
                    }
                    for t in &d.tables {
                        baseline.push(Baseline {
                            database: d.name.clone(),
                            table: format!("{}.{}", t.schema, t.table),
                            rows: t.rows,
                            size_bytes: t.size_bytes,
                        });
                    }
                }
            }
        }
        if let Err(e) = new_inv {
            c.fail(
                "new",
                "inventory (sizes)",
                e.to_string(),
                "see the new agent's log (journalctl -u hostshift-agent)",
            );
        }
        owner_checks(plan, old_agent, new_agent, &mut c).await;
    }
    if let Some((_, new_info)) = reached.get(&Side::New) {
        missing_databases(
            plan,
            reached.get(&Side::Old).map(|x| &x.0),
            new_info,
            &mut c,
        )
        .await;
    }
    let ok = c.0.iter().all(|x| x.result != Verdict::Fail);
    Report {
        ok,
        plan: plan.path.display().to_string(),
        hosts,
        checks: c.0,
        tools,
        baseline,
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}
