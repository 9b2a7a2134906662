//! What the rollback window does not carry back, named instead of lost silently: the plan's
//! config files changed on the new host since the switch (their SHA-256 there is recorded at
//! the switch, after the cutover wrote them with the plan's overrides), and the storage trees
//! whose files differ between the hosts once a rollback has caught up (new uploads, changed or
//! deleted files on the new host). Both are read-only on both hosts.

use std::collections::{BTreeMap, BTreeSet};

use hostshift_proto::v1::{DbReadRequest, DbSelection, FileRead, ReadRequest, read_request};
use hostshift_shared::digest::Sha256Digest;

use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan};
use crate::sync::stream;

async fn digest_on(agent: &Agent, name: &str) -> Result<String, String> {
    stream::read_all(
        agent,
        ReadRequest {
            grant: String::new(),
            what: Some(read_request::What::File(FileRead { name: name.into() })),
        },
        client::MAX_MESSAGE,
    )
    .await
    .map(|b| Sha256Digest::of(&b).to_string())
    .map_err(|e| e.message)
}

/// The plan's config files on the new host (plan name → SHA-256), at the switch. A file that
/// cannot be read is left out (the rollback then cannot tell whether it changed, and says so).
pub async fn files_at_switch(plan: &Plan, new: &Agent) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in &plan.files {
        if let Ok(d) = digest_on(new, f.on_new()).await {
            out.insert(f.name.clone(), d);
        }
    }
    out
}

/// Each thing of the new host the window did not carry back, by name, with what changed: one
/// line per config file and per storage tree.
pub async fn not_carried_back(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    at_switch: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for f in &plan.files {
        let Some(before) = at_switch.get(&f.name) else {
            out.push(format!(
                "file {}: its content on the new host at the switch was not recorded; compare it with the old host's by hand",
                f.name
            ));
            continue;
        };
        match digest_on(new, f.on_new()).await {
            Ok(now) if &now == before => {}
            Ok(_) => out.push(format!(
                "file {}: changed on the new host since the switch",
                f.name
            )),
            Err(e) => out.push(format!(
                "file {}: cannot be read on the new host ({e}); compare it with the old host's by hand",
                f.name
            )),
        }
    }
    for d in &plan.databases {
        out.extend(large_objects(old, new, &d.name, d.on_new()).await);
    }
    if plan.storage.is_empty() {
        return out;
    }
    let grant = crate::sync::verify::storage_grant(plan, old).await;
    for s in &plan.storage {
        match crate::sync::verify::compare_tree(plan, old, new, s, grant.as_deref(), false).await {
            Ok(c) => {
                let parts: Vec<String> = [
                    (&c.extra, c.extra_count, "only on the new host"),
                    (&c.changed, c.changed_count, "changed on the new host"),
                    (&c.missing, c.missing_count, "deleted on the new host"),
                ]
                .into_iter()
                .filter(|(v, _, _)| !v.is_empty())
                .map(|(v, n, what)| {
                    let n = n.max(v.len() as u64);
                    let shown: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
                    let more = if n > shown.len() as u64 {
                        format!(" and {} more", n - shown.len() as u64)
                    } else {
                        String::new()
                    };
                    format!("{what}: {}{more}", shown.join(", "))
                })
                .collect();
                if !parts.is_empty() {
                    out.push(format!("storage {}: {}", s.name, parts.join("; ")));
                }
            }
            Err(e) => out.push(format!(
                "storage {}: cannot be compared ({}); compare it with the old host's by hand",
                s.name,
                match e {
                    crate::sync::verify::CompareFailure::Old(m)
                    | crate::sync::verify::CompareFailure::New(m) => m,
                }
            )),
        }
    }
    if let Some(token) = grant {
        crate::sync::verify::revoke(old, token).await;
    }
    out
}

async fn oids(agent: &Agent, db: &str) -> Result<BTreeSet<u32>, String> {
    agent
        .database()
        .large_objects(client::request(DbReadRequest {
            selection: Some(DbSelection {
                database: db.to_string(),
                include: vec![],
                exclude: vec![],
            }),
            snapshot: String::new(),
        }))
        .await
        .map(|r| r.into_inner().objects.into_iter().map(|o| o.oid).collect())
        .map_err(|s| client::explain_status(&s))
}

/// Large objects created or removed on the new host since the switch (the window carries none):
/// the OIDs on both hosts compared after the rollback's catch-up. A large object rewritten in
/// place (same OID) is not seen here: `hostshift verify` compares their content.
async fn large_objects(old: &Agent, new: &Agent, db: &str, on_new: &str) -> Vec<String> {
    let (a, b) = tokio::join!(oids(old, db), oids(new, on_new));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return vec![format!(
                "large objects of database {db}: cannot be listed ({e}); compare them with `hostshift verify`"
            )];
        }
    };
    let show = |v: Vec<&u32>| {
        let n = v.len();
        let shown: Vec<String> = v.iter().take(10).map(ToString::to_string).collect();
        if n > shown.len() {
            format!("{} and {} more", shown.join(", "), n - shown.len())
        } else {
            shown.join(", ")
        }
    };
    let only_new: Vec<&u32> = b.difference(&a).collect();
    let gone: Vec<&u32> = a.difference(&b).collect();
    let mut parts = Vec::new();
    if !only_new.is_empty() {
        parts.push(format!("only on the new host: oid {}", show(only_new)));
    }
    if !gone.is_empty() {
        parts.push(format!("deleted on the new host: oid {}", show(gone)));
    }
    if parts.is_empty() {
        vec![]
    } else {
        vec![format!(
            "large objects of database {db}: {}",
            parts.join("; ")
        )]
    }
}
