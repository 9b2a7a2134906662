//! The preflight of both hosts (`hostshift check`), as a library function the cutover gates and
//! the rehearsal reuse. It only reads: nothing on either host changes.
//!
//! Checks: each agent reachable over mutual TLS and carrying the certificate identity the plan
//! expects; protocol versions compatible; tools present (pg_dump/pg_restore/psql when the plan
//! moves databases, pm2 when it has apps, nginx when it uses it); every database of the plan
//! declared and reachable on both sides; storage roots and files present on the old host; the new
//! host's config allowing the writes a sync needs, and the old host's *not* allowing them; free
//! disk on the new host ≥ 1.2 × what will be copied; and the baseline row count of every table.

use std::collections::BTreeMap;

use hostshift_proto::v1::{InfoRequest, InfoResponse, InventoryRequest, InventoryResponse};
use serde::Serialize;

use crate::client::{self, Agent};
use crate::plan::{FreezeMethod, OnNew, Plan, Side};

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
    fn ok(&mut self, host: &str, check: impl Into<String>, detail: impl Into<String>) {
        self.push(host, check, Verdict::Ok, detail, "");
    }
    fn fail(
        &mut self,
        host: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(host, check, Verdict::Fail, detail, hint);
    }
    fn warn(
        &mut self,
        host: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(host, check, Verdict::Warn, detail, hint);
    }
}

async fn reach(plan: &Plan, side: Side) -> Result<(Agent, InfoResponse), String> {
    // Any agent of the CA: the identity is reported as a check of its own below.
    let agent = client::connect_any(plan, side)
        .await
        .map_err(|e| e.message)?;
    let info = agent
        .info()
        .info(client::request(InfoRequest {}))
        .await
        .map_err(|s| client::explain_first_rpc(&s))?
        .into_inner();
    Ok((agent, info))
}

async fn inventory(agent: &Agent, row_counts: bool) -> Result<InventoryResponse, String> {
    agent
        .info()
        .inventory(client::request(InventoryRequest {
            databases: vec![],
            storage: vec![],
            row_counts,
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| client::explain_status(&s))
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
                c.fail(h, "reachable over mutual TLS", e, format!("start the agent on the {h} host and check [{h}] address and [tls] in the plan"));
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
            Err(e) => c.warn("old", "open snapshots", e, "see the old agent's log"),
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
                e,
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
                e,
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

fn host_checks(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
    let h = side.as_str();
    let want = format!("agent:{}", plan.host(side).agent);
    if info.identity == want {
        c.ok(h, "certificate identity", want);
    } else {
        c.fail(
            h,
            "certificate identity",
            format!(
                "the agent at this address is {}, the plan expects {want}",
                info.identity
            ),
            format!("fix [{h}] agent or address in the plan"),
        );
    }
    if info.protocol_version == hostshift_proto::PROTOCOL_VERSION {
        c.ok(
            h,
            "protocol version",
            format!(
                "{} (agent {}, coordinator {})",
                info.protocol_version,
                info.agent_version,
                hostshift_shared::VERSION
            ),
        );
    } else {
        c.fail(
            h,
            "protocol version",
            format!(
                "agent speaks {}, this coordinator {}",
                info.protocol_version,
                hostshift_proto::PROTOCOL_VERSION
            ),
            "install the same hostshift release on both hosts and the jump box",
        );
    }
    let mut needed: Vec<&str> = Vec::new();
    if !plan.databases.is_empty() {
        needed.extend(["pg_dump", "pg_restore", "psql"]);
    }
    if !plan.pm2.apps.is_empty() {
        needed.push("pm2");
    }
    if plan.nginx.enabled {
        needed.push("nginx");
    }
    for name in needed {
        match info.tools.iter().find(|t| t.name == name) {
            Some(t) if t.present => c.ok(h, format!("tool {name}"), t.version.clone()),
            Some(t) => c.fail(h, format!("tool {name}"), "missing", t.problem.clone()),
            None => c.fail(
                h,
                format!("tool {name}"),
                "not reported by the agent",
                "upgrade the agent",
            ),
        }
    }
    // The name each resource has on this host (the plan's `target` on the new one).
    let here = |plan_name: &str, target: &str| -> String {
        if side == Side::New { target } else { plan_name }.to_string()
    };
    for d in &plan.databases {
        let name = here(&d.name, d.on_new());
        let check = format!("database {name}");
        match info.databases.iter().find(|x| x.name == name) {
            None => c.fail(
                h,
                check,
                "not declared in the agent's config",
                format!("add [[databases]] name = \"{name}\" to the {h} agent's config"),
            ),
            // Reported once both hosts answered (it needs the old database's definition).
            Some(x) if side == Side::New && x.missing => {}
            Some(x) if !x.reachable => c.fail(
                h,
                check,
                x.problem.clone(),
                "check the conninfo in the agent's config and that PostgreSQL runs",
            ),
            Some(x) => {
                c.ok(
                    h,
                    check.clone(),
                    format!("reachable, PostgreSQL {}", x.server_version),
                );
                if side == Side::New && !x.load_missing.is_empty() {
                    c.fail(
                        h,
                        format!("{check}: rights to load a sync"),
                        format!("the connecting role lacks: {}", x.load_missing.join("; ")),
                        "grant them (docs/rds.md lists what a managed database's master needs), or connect as a superuser",
                    );
                }
            }
        }
    }
    for s in &plan.storage {
        let name = here(&s.name, s.on_new());
        let check = format!("storage {name}");
        match info
            .roots
            .iter()
            .find(|r| r.kind == "storage" && r.name == name)
        {
            None => c.fail(
                h,
                check,
                "not declared in the agent's config",
                format!("add [[storage]] name = \"{name}\" to the {h} agent's config"),
            ),
            Some(r) if r.exists => c.ok(h, check, r.path.clone()),
            Some(r) if side == Side::Old => c.fail(
                h,
                check,
                format!("{} does not exist", r.path),
                "fix its path in the old agent's config",
            ),
            Some(r) => c.warn(
                h,
                check,
                format!("{} does not exist yet", r.path),
                "sync will create it",
            ),
        }
    }
    for f in &plan.files {
        let name = here(&f.name, f.on_new());
        let check = format!("file {name}");
        match info
            .roots
            .iter()
            .find(|r| r.kind == "file" && r.name == name)
        {
            None => c.fail(
                h,
                check,
                "not declared in the agent's config",
                format!("add [[files]] name = \"{name}\" to the {h} agent's config"),
            ),
            Some(r) if r.exists => c.ok(h, check, r.path.clone()),
            Some(r) if side == Side::Old => c.fail(
                h,
                check,
                format!("{} does not exist", r.path),
                "fix its path in the old agent's config",
            ),
            Some(r) => c.ok(h, check, format!("{} (will be created)", r.path)),
        }
    }
    let wanted: Vec<String> = plan
        .databases
        .iter()
        .map(|d| format!("restore-database:{}", here(&d.name, d.on_new())))
        .chain(
            plan.storage
                .iter()
                .map(|s| format!("write-storage:{}", here(&s.name, s.on_new()))),
        )
        .chain(
            plan.files
                .iter()
                .map(|f| format!("write-file:{}", here(&f.name, f.on_new()))),
        )
        .collect();
    match side {
        Side::New => {
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|w| !info.permits.contains(w))
                .collect();
            if !wanted.is_empty() {
                if info.permits.iter().any(|p| p == "sync-target") {
                    c.ok(
                        h,
                        "is a sync target",
                        if info.permits.iter().any(|p| p == "sync-either") {
                            "sync_role = \"either\""
                        } else {
                            "sync_role = \"target\""
                        },
                    );
                } else {
                    c.fail(
                        h,
                        "is a sync target",
                        "its config says it is a sync source (sync_role missing or \"source\")",
                        "set sync_role = \"target\" in the new agent's config (only there)",
                    );
                }
            }
            if !info.frozen_databases.is_empty() {
                c.fail(
                    h,
                    "is not frozen",
                    format!(
                        "an earlier cutover left it frozen: database(s) {} read-only with CONNECT revoked; a sync refuses to write here",
                        info.frozen_databases.join(", ")
                    ),
                    "on the way back of a blue/green swap: hostshift unfreeze --host new --yes (docs/cutover.md, Blue/green)",
                );
            }
            if missing.is_empty() {
                c.ok(
                    h,
                    "allows the writes a sync needs",
                    format!("{} permits", wanted.len()),
                );
            } else {
                c.fail(h, "allows the writes a sync needs", format!("missing: {}", join(&missing)), "list them in [allow] of the new agent's config (restore_databases, write_storage, write_files)");
            }
        }
        Side::Old => {
            if plan.freeze.methods.contains(&FreezeMethod::ReadOnly) {
                let missing: Vec<String> = plan
                    .databases
                    .iter()
                    .map(|d| format!("freeze-database:{}", d.name))
                    .filter(|p| !info.permits.contains(p))
                    .collect();
                if missing.is_empty() {
                    c.ok(
                        h,
                        "allows the cutover's read-only freeze",
                        format!("{} database(s)", plan.databases.len()),
                    );
                } else {
                    c.fail(
                        h,
                        "allows the cutover's read-only freeze",
                        format!("missing: {}", missing.join(", ")),
                        "add the databases to `freeze_databases` in [allow] of the old agent's config (or drop \"read-only\" from the plan's [freeze] methods)",
                    );
                }
            }
            if info.permits.iter().any(|p| p == "sync-either") {
                c.ok(
                    h,
                    "is a sync source",
                    "sync_role = \"either\" (blue/green pair): the plan decides the direction; the certificate check keeps a plan with swapped addresses from writing here, and a sync refuses a frozen target",
                );
            } else if info.permits.iter().any(|p| p == "sync-target") {
                c.warn(
                    h,
                    "is a sync source",
                    "its config says sync_role = \"target\": a sync with a wrong plan could write here",
                    "remove sync_role (default \"source\") from the old agent's config",
                );
            } else {
                c.ok(h, "is a sync source", "a sync can never write here");
            }
            let risky: Vec<&String> = wanted.iter().filter(|w| info.permits.contains(w)).collect();
            if info.permits.iter().any(|p| p == "sync-either") {
                // A blue/green pair needs both sides' write permits; the plan picks the side.
                c.ok(
                    h,
                    "refuses writes to the source",
                    "sync_role = \"either\": this plan reads here and writes only the new host",
                );
            } else if risky.is_empty() {
                c.ok(
                    h,
                    "refuses writes to the source",
                    "no destructive permits for plan resources",
                );
            } else {
                c.warn(
                    h,
                    "refuses writes to the source",
                    format!("the old host allows: {}", join(&risky)),
                    "remove them from [allow] in the old agent's config: it is the source of truth",
                );
            }
        }
    }
}

/// The plan's databases the new host's server does not have: sync creates them as the old
/// host defines them (owner, encoding, locale, settings) when the new agent may restore them
/// and its role may create databases; otherwise the statements to run by hand.
async fn missing_databases(
    plan: &Plan,
    old: Option<&Agent>,
    new_info: &InfoResponse,
    c: &mut Collector,
) {
    use hostshift_proto::v1::DescribeDatabaseRequest;
    use hostshift_shared::dbspec;
    for d in &plan.databases {
        let name = d.on_new();
        let Some(x) = new_info
            .databases
            .iter()
            .find(|x| x.name == name && x.missing)
        else {
            continue;
        };
        let check = format!("database {name}");
        let spec = match old {
            None => Err("the old host is not reachable".to_string()),
            Some(a) => a
                .database()
                .describe_database(DescribeDatabaseRequest {
                    database: d.name.clone(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| client::explain_status(&s)),
        };
        let permitted = new_info
            .permits
            .iter()
            .any(|p| p == &format!("restore-database:{name}"));
        match spec {
            Err(e) => c.fail(
                "new",
                check,
                format!("does not exist on the new host; the old one's definition is unknown: {e}"),
                "fix the old host's check first; sync then creates it",
            ),
            Ok(spec) if permitted && x.can_create => c.ok(
                "new",
                check,
                format!(
                    "does not exist yet: will be created by sync ({})",
                    dbspec::summary(&spec)
                ),
            ),
            Ok(spec) => {
                let target = if x.dbname.is_empty() {
                    name
                } else {
                    x.dbname.as_str()
                };
                let mut sql = vec![dbspec::create_sql(target, &spec, true)];
                sql.extend(
                    spec.settings
                        .iter()
                        .filter_map(|s| dbspec::set_sql(target, s)),
                );
                let why = if permitted {
                    x.create_problem.clone()
                } else {
                    format!(
                        "the new agent's config does not allow restoring it ([allow] restore_databases lacks \"{name}\")"
                    )
                };
                c.fail(
                    "new",
                    check,
                    format!("does not exist on the new host and sync cannot create it: {why}"),
                    format!(
                        "as a superuser on the new host (after creating role {} if needed): {};",
                        spec.owner,
                        sql.join("; ")
                    ),
                );
            }
        }
    }
}

/// Per storage tree: the old host's owners (users and groups, by name) the new host lacks. The
/// new agent, running as root, gives every file its owner by name; a name it does not know
/// leaves the old numeric id, which there belongs to nobody or to someone else.
async fn owner_checks(plan: &Plan, old: &Agent, new: &Agent, c: &mut Collector) {
    use crate::sync::verify::{CompareFailure, compare_tree, storage_grant};
    // The new agent reads each old manifest itself (no manifest passes through here).
    let grant = if plan.storage.is_empty() {
        None
    } else {
        storage_grant(plan, old).await
    };
    for s in &plan.storage {
        let check = format!("owners of storage {}", s.name);
        let compared = compare_tree(plan, old, new, s, grant.as_deref(), false).await;
        match compared {
            Err(CompareFailure::Old(e)) => c.fail("old", check, e, "see the old agent's log"),
            Err(CompareFailure::New(e)) => c.fail("new", check, e, "see the new agent's log"),
            Ok(r) if r.unknown_owners.is_empty() => {
                c.ok("new", check, "every owner and group exists here (or the agent does not run as root: files belong to its user)");
            }
            Ok(r) => {
                let unknown = &r.unknown_owners;
                let users: Vec<&str> = unknown
                    .iter()
                    .filter_map(|u| u.strip_prefix("user "))
                    .collect();
                let groups: Vec<&str> = unknown
                    .iter()
                    .filter_map(|g| g.strip_prefix("group "))
                    .filter(|g| !users.contains(g))
                    .collect();
                let fix: Vec<String> = users
                    .iter()
                    .map(|u| format!("useradd --system {u}"))
                    .chain(groups.iter().map(|g| format!("groupadd --system {g}")))
                    .collect();
                c.fail(
                    "new",
                    check,
                    format!(
                        "the old tree's files belong to {} that this host does not have: they would keep the old host's numeric ids",
                        unknown.join(", ")
                    ),
                    format!("create them on the new host before the sync: {}", fix.join("; ")),
                );
            }
        }
    }
    if let Some(token) = grant {
        crate::sync::verify::revoke(old, token).await;
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn disk_checks(plan: &Plan, old: &InventoryResponse, new_info: &InfoResponse, c: &mut Collector) {
    for s in &plan.storage {
        let Some(inv) = old.storage.iter().find(|x| x.name == s.name) else {
            continue;
        };
        let Some(root) = new_info
            .roots
            .iter()
            .find(|r| r.kind == "storage" && r.name == s.on_new())
        else {
            continue;
        };
        space(
            c,
            &format!("disk for storage {}", s.name),
            inv.bytes,
            root.free_bytes,
            &root.path,
        );
    }
    for d in &plan.databases {
        let Some(inv) = old.databases.iter().find(|x| x.name == d.name) else {
            continue;
        };
        match new_info.databases.iter().find(|x| x.name == d.on_new()) {
            Some(x) if x.data_dir_known => space(
                c,
                &format!("disk for database {}", d.name),
                inv.size_bytes,
                x.data_dir_free_bytes,
                "the PostgreSQL data directory",
            ),
            Some(x) => c.warn(
                "new",
                format!("disk for database {}", d.name),
                format!(
                    "needs ~{}; free space of the target cluster is not visible to the agent: {}",
                    crate::output::bytes(inv.size_bytes),
                    if x.data_dir_problem.is_empty() {
                        "managed database or no pg_read_all_settings"
                    } else {
                        x.data_dir_problem.as_str()
                    }
                ),
                "check the target's free storage yourself (e.g. RDS FreeStorageSpace)",
            ),
            None => {}
        }
    }
}

fn space(c: &mut Collector, check: &str, need: u64, free: u64, where_: &str) {
    let want = (need as f64 * DISK_FACTOR) as u64;
    let detail = format!(
        "{} free at {where_}, {} needed (1.2 × {})",
        crate::output::bytes(free),
        crate::output::bytes(want),
        crate::output::bytes(need)
    );
    if free >= want {
        c.ok("new", check, detail);
    } else {
        c.fail(
            "new",
            check,
            detail,
            "free space on the new host or grow its volume before syncing",
        );
    }
}
