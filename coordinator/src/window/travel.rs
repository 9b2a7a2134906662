//! What the rollback window's follower does not carry (it follows the database's rows only),
//! found inside the rollback's freeze: the plan's config files changed on the new host since the
//! switch (their SHA-256 there is recorded at the switch, after the cutover wrote them with the
//! plan's overrides), the storage trees whose files differ between the hosts (new uploads,
//! changed or deleted files on the new host), and the large objects created or removed there.
//! Read-only on both hosts: [`super::carry`] carries back what the old agent allows and names
//! the rest with these lines.

use std::collections::{BTreeMap, BTreeSet};

use hostshift_proto::v1::{
    DbReadRequest, DbSelection, FileRead, LargeObject, ReadRequest, read_request,
};
use hostshift_shared::digest::Sha256Digest;

use crate::client::{self, Agent};
use crate::plan::{OnNew, Plan, PlanFile, PlanStorage};
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
/// All read at once: this runs inside the write freeze.
pub async fn files_at_switch(plan: &Plan, new: &Agent) -> BTreeMap<String, String> {
    let read = plan
        .files
        .iter()
        .map(|f| async move { (f.name.clone(), digest_on(new, f.on_new()).await) });
    futures::future::join_all(read)
        .await
        .into_iter()
        .filter_map(|(name, d)| d.ok().map(|d| (name, d)))
        .collect()
}

/// Whether config file `f` changed on the new host since the switch; `Err` is the line naming
/// it when that cannot be told (not recorded at the switch, not readable now).
pub async fn file_changed(
    new: &Agent,
    f: &PlanFile,
    at_switch: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let Some(before) = at_switch.get(&f.name) else {
        return Err(format!(
            "file {}: its content on the new host at the switch was not recorded; compare it with the old host's by hand",
            f.name
        ));
    };
    match digest_on(new, f.on_new()).await {
        Ok(now) => Ok(&now != before),
        Err(e) => Err(format!(
            "file {}: cannot be read on the new host ({e}); compare it with the old host's by hand",
            f.name
        )),
    }
}

/// The line naming a config file changed on the new host since the switch.
pub fn file_line(f: &PlanFile) -> String {
    format!("file {}: changed on the new host since the switch", f.name)
}

/// One line per storage tree of `trees` whose files differ between the hosts (new uploads,
/// changed or deleted files on the new host), each ending with `why` (what would carry it back).
pub async fn storage_lines(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    trees: &[&PlanStorage],
    why: impl Fn(&PlanStorage) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    if trees.is_empty() {
        return out;
    }
    let grant = crate::sync::verify::storage_grant(plan, old).await;
    for s in trees {
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
                    out.push(format!(
                        "storage {}: {}{}",
                        s.name,
                        parts.join("; "),
                        why(s)
                    ));
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

async fn objects(agent: &Agent, db: &str) -> Result<Vec<LargeObject>, String> {
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
        .map(|r| r.into_inner().objects)
        .map_err(|s| client::explain_status(&s))
}

/// Large objects created or removed on the new host since the switch (the window's follower
/// carries none): the OIDs on both hosts compared after the rollback's catch-up — the ones only
/// on the new host (with their owner and ACL there) and the OIDs only on the old host. A large
/// object rewritten in place (same OID) is not seen here: `hostshift verify` compares their
/// content. `Err` is the line naming the database when they cannot be listed.
pub async fn large_objects(
    old: &Agent,
    new: &Agent,
    db: &str,
    on_new: &str,
) -> Result<(Vec<LargeObject>, Vec<u32>), String> {
    let (a, b) = tokio::join!(objects(old, db), objects(new, on_new));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!(
                "large objects of database {db}: cannot be listed ({e}); compare them with `hostshift verify`"
            ));
        }
    };
    let on_old: BTreeSet<u32> = a.iter().map(|o| o.oid).collect();
    let on_new: BTreeSet<u32> = b.iter().map(|o| o.oid).collect();
    let created = b.into_iter().filter(|o| !on_old.contains(&o.oid)).collect();
    let removed = on_old.difference(&on_new).copied().collect();
    Ok((created, removed))
}

/// The line naming the large objects of `db` created (`only_new`) and removed (`gone`) on the
/// new host, ending with `why`; `None` when there are none.
pub fn large_objects_line(db: &str, only_new: &[u32], gone: &[u32], why: &str) -> Option<String> {
    let show = |v: &[u32]| {
        let shown: Vec<String> = v.iter().take(10).map(ToString::to_string).collect();
        if v.len() > shown.len() {
            format!("{} and {} more", shown.join(", "), v.len() - shown.len())
        } else {
            shown.join(", ")
        }
    };
    let mut parts = Vec::new();
    if !only_new.is_empty() {
        parts.push(format!("only on the new host: oid {}", show(only_new)));
    }
    if !gone.is_empty() {
        parts.push(format!("deleted on the new host: oid {}", show(gone)));
    }
    (!parts.is_empty())
        .then(|| format!("large objects of database {db}: {}{why}", parts.join("; ")))
}
