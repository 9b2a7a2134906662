//! The checks that need both hosts' databases: a plan database the new host's server lacks
//! (created by sync when allowed, else the statements to run), and the owners and roles the old
//! databases use, which must exist on the new host.

use hostshift_proto::v1::InfoResponse;

use super::Collector;
use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan};

/// The plan's databases the new host's server does not have: sync creates them as the old
/// host defines them (owner, encoding, locale, settings) when the new agent may restore them
/// and its role may create databases; otherwise the statements to run by hand.
pub(super) async fn missing_databases(
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
pub(super) async fn owner_checks(plan: &Plan, old: &Agent, new: &Agent, c: &mut Collector) {
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
