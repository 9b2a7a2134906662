//! The sync engine run backwards, for a rollback within the rollback window
//! ([`crate::window::carry`]): the new host is read and the frozen old host written, by the very
//! units a sync runs ([`super::units`]) with the roles of [`Run`] swapped — the old agent pulls
//! from the new one over a grant the new agent issues it, plans the storage delta against its
//! own tree (digest caches on both sides: the cost follows what changed), stages, verifies every
//! SHA-256 and renames, and deletes what the new host deleted. Every write names the window, so
//! the old agent admits it although the cutover froze that host (and refuses it otherwise).
//!
//! What is carried back is chosen by the caller: the storage trees, the config files changed on
//! the new host since the switch (with the plan's overrides reversed, see [`reversed`]), and the
//! large objects the new host created or removed since the switch.

use std::collections::BTreeMap;
use std::sync::Arc;

use hostshift_proto::v1::{
    ApplyHeader, CreateGrantRequest, DbLargeObject, DbSelection, FileRead, LargeObject,
    ReadRequest, RemoveLargeObjectsRequest, RevokeGrantRequest, apply_header, read_request,
};
use hostshift_shared::dotenv::EnvFile;

use super::stream::{self, PullSource};
use super::units::{self, transfer};
use super::{Run, SyncOptions, UnitError, UnitReport};
use crate::client::{self, Agent};
use crate::journal::Journal;
use crate::plan::{OnNew, Plan, PlanFile, PlanStorage};
use crate::progress::Progress;

/// A carry-back in progress: the swapped run and the grant the new agent gave the old one.
pub struct Back<'a> {
    run: Run<'a>,
    grant: Option<String>,
}

/// What the old agent is granted to read on the new one: the plan's storage trees, config files
/// and databases, by their names on the new host.
fn scopes(plan: &Plan) -> (Vec<String>, Vec<DbSelection>) {
    let mut scopes: Vec<String> = plan
        .files
        .iter()
        .map(|f| format!("file:{}", f.on_new()))
        .collect();
    scopes.extend(
        plan.storage
            .iter()
            .map(|s| format!("storage:{}", s.on_new())),
    );
    scopes.extend(
        plan.databases
            .iter()
            .map(|d| format!("database:{}", d.on_new())),
    );
    let selections = plan
        .databases
        .iter()
        .map(|d| super::selection::Selections::of(d).new)
        .collect();
    (scopes, selections)
}

impl<'a> Back<'a> {
    /// Swaps the roles: `new` becomes the source, `old` the target; `window` is the rollback
    /// window's id. The old agent pulls from the new one; when the new agent refuses a grant the
    /// streams are relayed through this process instead.
    pub async fn open(
        plan: &Plan,
        old: &Agent,
        new: &Agent,
        window: &str,
        journal: &'a Journal,
        progress: Arc<Progress>,
        opts: &'a SyncOptions,
    ) -> Back<'a> {
        let (scopes, selections) = scopes(plan);
        let granted = new
            .grants()
            .create(client::request(CreateGrantRequest {
                peer: plan.old.agent.clone(),
                scopes,
                ttl_secs: 3600,
                selections,
            }))
            .await;
        let grant = match granted {
            Ok(g) => Some(g.into_inner().token),
            Err(s) => {
                tracing::warn!(error = %client::explain_status(&s), "no grant for the old agent: the carry-back is relayed");
                None
            }
        };
        let pull_source = grant.as_ref().map(|g| PullSource {
            address: plan.new.address.clone(),
            tls_name: plan.new.server_name(),
            grant: g.clone(),
        });
        Back {
            run: Run {
                old: new.clone(),
                new: old.clone(),
                pull_source,
                opts,
                journal,
                progress,
                phase: "rollback",
                window: window.to_string(),
            },
            grant,
        }
    }

    /// One storage tree of the plan made on the old host what it is on the new one.
    pub async fn storage(&self, s: &PlanStorage) -> UnitReport {
        let swapped = PlanStorage {
            name: s.on_new().to_string(),
            target: Some(s.name.clone()),
            // What the new host deleted since the switch goes on the old one too.
            delete: true,
        };
        let mut r = units::storage(&self.run, &swapped).await;
        r.name = s.name.clone();
        r
    }

    /// One config file: the new host's content with the plan's overrides reversed (`overrides`,
    /// from [`reversed`]) written on the old host.
    pub async fn file(&self, f: &PlanFile, overrides: BTreeMap<String, String>) -> UnitReport {
        let swapped = PlanFile {
            name: f.on_new().to_string(),
            target: Some(f.name.clone()),
            overrides,
        };
        let mut r = units::file(&self.run, &swapped).await;
        r.name = f.name.clone();
        r
    }

    /// Large objects of database `db` (`on_new` there): `create` copied from the new host,
    /// `remove` unlinked on the old one. Returns what was done.
    ///
    /// # Errors
    /// The first object that could not be copied, or the removal.
    pub async fn large_objects(
        &self,
        db: &str,
        on_new: &str,
        create: Vec<LargeObject>,
        remove: Vec<u32>,
    ) -> Result<String, UnitError> {
        let mut bytes = 0;
        let mut retried = Vec::new();
        let copied = create.len();
        for m in create {
            let oid = m.oid;
            let read = ReadRequest {
                grant: String::new(),
                what: Some(read_request::What::DbLargeObject(DbLargeObject {
                    database: on_new.to_string(),
                    oid,
                    snapshot: String::new(),
                    meta: Some(m.clone()),
                    rollback_window: String::new(),
                })),
            };
            let header = ApplyHeader {
                what: Some(apply_header::What::DbLargeObject(DbLargeObject {
                    database: db.to_string(),
                    oid,
                    snapshot: String::new(),
                    meta: Some(m),
                    rollback_window: self.run.window.clone(),
                })),
            };
            let unit = format!("database {db} large object {oid}");
            let (res, _) = transfer(&self.run, &unit, read, header, 0, &mut retried).await?;
            bytes += res.bytes;
        }
        let mut removed = 0;
        if !remove.is_empty() {
            let unit = format!("database {db} large objects removed");
            self.run.record(&unit, "started", 0, 0, "")?;
            removed = self
                .run
                .new
                .target()
                .remove_large_objects(client::request(RemoveLargeObjectsRequest {
                    database: db.to_string(),
                    oids: remove,
                    rollback_window: self.run.window.clone(),
                }))
                .await
                .map_err(UnitError::from_status)?
                .into_inner()
                .removed;
            self.run.record(&unit, "done", 0, removed, "")?;
        }
        Ok(format!(
            "{copied} copied ({}), {removed} removed",
            crate::output::bytes(bytes)
        ))
    }

    /// Revokes the grant (best effort: it expires anyway).
    pub async fn close(self) {
        if let Some(token) = self.grant {
            let _ = self
                .run
                .old
                .grants()
                .revoke(client::request(RevokeGrantRequest { token }))
                .await;
        }
    }
}

/// The plan's overrides of `f` reversed: each key the plan sets on the new host takes the value
/// the old host's copy holds now, so carrying the new host's file back keeps the old host's own
/// settings (its `DATABASE_URL`, its `CORS_ORIGIN`) and brings every other change.
///
/// # Errors
/// The old host's file cannot be read, is not `.env` text, or does not set a key the plan
/// overrides (there is no value to go back to; the file is then named, not carried).
pub async fn reversed(old: &Agent, f: &PlanFile) -> Result<BTreeMap<String, String>, String> {
    if f.overrides.is_empty() {
        return Ok(BTreeMap::new());
    }
    let bytes = stream::read_all(
        old,
        ReadRequest {
            grant: String::new(),
            what: Some(read_request::What::File(FileRead {
                name: f.name.clone(),
            })),
        },
        client::MAX_MESSAGE,
    )
    .await
    .map_err(|e| format!("cannot be read on the old host ({e})"))?;
    reverse_overrides(&bytes, &f.overrides)
}

fn reverse_overrides(
    old_bytes: &[u8],
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(old_bytes)
        .map_err(|_| "its copy on the old host is not .env text".to_string())?;
    let env = EnvFile::parse(text);
    overrides
        .keys()
        .map(|k| match env.get(k) {
            Some(v) => Ok((k.clone(), v.to_string())),
            None => Err(format!(
                "the plan overrides {k} on the new host, and the old host's copy does not set it (no value to reverse to)"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_overrides_take_the_old_hosts_current_values() {
        let old = b"# backend\nPORT=3666\nCORS_ORIGIN='https://old.example'\n";
        let plan: BTreeMap<String, String> = [
            ("CORS_ORIGIN".to_string(), "https://new.example".to_string()),
            ("PORT".to_string(), "4000".to_string()),
        ]
        .into_iter()
        .collect();
        let r = reverse_overrides(old, &plan).expect("reversed");
        assert_eq!(r["CORS_ORIGIN"], "https://old.example");
        assert_eq!(r["PORT"], "3666");
    }

    #[test]
    fn a_key_the_old_host_does_not_set_cannot_be_reversed() {
        let plan: BTreeMap<String, String> = [("NEW_ONLY".to_string(), "x".to_string())]
            .into_iter()
            .collect();
        let e = reverse_overrides(b"A=1\n", &plan).expect_err("no value to reverse to");
        assert!(e.contains("NEW_ONLY"), "{e}");
    }
}
