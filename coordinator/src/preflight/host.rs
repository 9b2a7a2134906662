//! The checks one host's `Info` answer settles on its own: the certificate identity and protocol,
//! the tools the plan needs, the plan's databases, trees and files declared in the agent's config,
//! and the permits that config grants (the new host must allow a sync's writes, the old host must
//! not).

use hostshift_proto::v1::InfoResponse;

use super::{Collector, join};
use crate::plan::{FreezeMethod, OnNew, Plan, Side};

/// The checks of one host from its `Info` answer alone, in the order they are printed.
pub(super) fn host_checks(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
    identity(plan, side, info, c);
    tools(plan, side, info, c);
    resources(plan, side, info, c);
    permits(plan, side, info, c);
}

/// The certificate identity the plan expects, and a protocol this coordinator speaks.
fn identity(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
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
}

/// The programs the plan's resources need on the host (pg_dump & co., pm2, nginx).
fn tools(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
    let h = side.as_str();
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
}

/// The name a resource has on this host (the plan's `target` on the new one).
fn here(side: Side, plan_name: &str, target: &str) -> String {
    if side == Side::New { target } else { plan_name }.to_string()
}

/// Every database, storage tree and file of the plan declared in the agent's config, reachable
/// or present (on the new host: what sync will create).
fn resources(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
    let h = side.as_str();
    for d in &plan.databases {
        let name = here(side, &d.name, d.on_new());
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
        let name = here(side, &s.name, s.on_new());
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
        let name = here(side, &f.name, f.on_new());
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
}

/// The agent's config allows what the plan needs of it, and nothing dangerous: the new host the
/// writes of a sync, the old host the freeze and no writes to the source.
fn permits(plan: &Plan, side: Side, info: &InfoResponse, c: &mut Collector) {
    let wanted: Vec<String> = plan
        .databases
        .iter()
        .map(|d| format!("restore-database:{}", here(side, &d.name, d.on_new())))
        .chain(
            plan.storage
                .iter()
                .map(|s| format!("write-storage:{}", here(side, &s.name, s.on_new()))),
        )
        .chain(
            plan.files
                .iter()
                .map(|f| format!("write-file:{}", here(side, &f.name, f.on_new()))),
        )
        .collect();
    match side {
        Side::New => new_permits(info, &wanted, c),
        Side::Old => old_permits(plan, info, &wanted, c),
    }
}

fn new_permits(info: &InfoResponse, wanted: &[String], c: &mut Collector) {
    let h = Side::New.as_str();
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

fn old_permits(plan: &Plan, info: &InfoResponse, wanted: &[String], c: &mut Collector) {
    let h = Side::Old.as_str();
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
