//! Inside a rollback's freeze (the new host frozen and drained, traffic not yet moved back):
//! what the window's follower does not carry — storage trees, the plan's config files and large
//! objects the new host changed since the switch ([`super::travel`] finds them) — carried back
//! into the old host, when its agent accepts writes, by the sync engine with the roles swapped
//! ([`crate::sync::reverse`]):
//!
//! - each storage tree: a reverse delta new → old (manifest diff through the digest caches,
//!   SHA-256 verified, staged then renamed, deletions too);
//! - each config file changed on the new host since the switch: the new host's content with
//!   the plan's overrides reversed (those keys keep the old host's current values);
//! - the large objects created on the new host since the switch copied, the removed ones
//!   unlinked.
//!
//! The old agent must be a sync target (`sync_role = "either"` or `"target"`) and allow the
//! write in `[allow]` (`write_storage`, `write_files`, `restore_databases`). What it does not
//! allow — or what fails — is named, as before the carry-back existed, with the config key that
//! would allow it; the rollback then exits 3.

use std::sync::Arc;

use hostshift_proto::v1::InfoRequest;

use super::{Record, travel};
use crate::client::{self, Agent};
use crate::journal::Journal;
use crate::plan::{OnNew, Plan, PlanStorage};
use crate::progress::Progress;
use crate::sync::SyncOptions;
use crate::sync::reverse::{self, Back};

/// What a carry-back did: one line per thing carried back, one per thing named instead.
#[derive(Clone, Debug, Default)]
pub struct Carried {
    /// Carried back into the old host.
    pub carried: Vec<String>,
    /// Not carried back (the operator copies them): what, and why.
    pub not_carried: Vec<String>,
}

/// What the old agent's config allows a carry-back to write (its `Info` permits).
struct Permits {
    receives: bool,
    list: Vec<String>,
}

impl Permits {
    async fn of(old: &Agent) -> Result<Permits, String> {
        let list = old
            .info()
            .info(client::request(InfoRequest { brief: true }))
            .await
            .map_err(|s| client::explain_status(&s))?
            .into_inner()
            .permits;
        Ok(Permits {
            receives: list.iter().any(|p| p == "sync-target"),
            list,
        })
    }

    /// `None`: allowed; else why not, naming the config keys that would allow it.
    fn refusal(&self, permit: &str, key: &str, name: &str) -> Option<String> {
        let listed = self.list.iter().any(|p| p == &format!("{permit}:{name}"));
        let mut need = Vec::new();
        if !self.receives {
            need.push("sync_role = \"either\"".to_string());
        }
        if !listed {
            need.push(format!("\"{name}\" in [allow] {key}"));
        }
        (!need.is_empty()).then(|| {
            format!(
                " (not carried back: the old agent's config needs {} for that)",
                need.join(" and ")
            )
        })
    }
}

/// Carries back what the old agent allows; names the rest. Never fails: a failure is named.
pub async fn carry_back(
    plan: &Plan,
    old: &Agent,
    new: &Agent,
    rec: &Record,
    journal: &Journal,
    progress: Arc<Progress>,
) -> Carried {
    let mut out = Carried::default();
    let permits = match Permits::of(old).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "the old agent's permits are unknown: nothing is carried back");
            Permits {
                receives: false,
                list: vec![],
            }
        }
    };
    let opts = SyncOptions {
        progress: progress.mode(),
        ..SyncOptions::default()
    };
    let back = Back::open(plan, old, new, &rec.id, journal, progress, &opts).await;

    for f in &plan.files {
        match travel::file_changed(new, f, &rec.files_at_switch).await {
            Ok(false) => {}
            Err(line) => out.not_carried.push(line),
            Ok(true) => {
                if let Some(why) = permits.refusal("write-file", "write_files", &f.name) {
                    out.not_carried
                        .push(format!("{}{why}", travel::file_line(f)));
                    continue;
                }
                let overrides = match reverse::reversed(old, f).await {
                    Ok(o) => o,
                    Err(e) => {
                        out.not_carried
                            .push(format!("{}; not carried back: {e}", travel::file_line(f)));
                        continue;
                    }
                };
                let keys: Vec<String> = overrides.keys().cloned().collect();
                let r = back.file(f, overrides).await;
                if r.status == "failed" {
                    out.not_carried.push(format!(
                        "{}; carrying it back failed: {}",
                        travel::file_line(f),
                        r.detail
                    ));
                } else {
                    out.carried.push(format!(
                        "file {}: the new host's copy written on the old host{}",
                        f.name,
                        if keys.is_empty() {
                            String::new()
                        } else {
                            format!(" with its own values of {}", keys.join(", "))
                        }
                    ));
                }
            }
        }
    }

    let mut named: Vec<&PlanStorage> = Vec::new();
    for s in &plan.storage {
        if permits
            .refusal("write-storage", "write_storage", &s.name)
            .is_some()
        {
            named.push(s);
            continue;
        }
        let r = back.storage(s).await;
        if r.status == "failed" {
            out.not_carried.push(format!(
                "storage {}: carrying it back failed ({}); compare it with the old host's by hand",
                s.name, r.detail
            ));
        } else if r.deferred > 0 {
            out.not_carried.push(format!(
                "storage {}: changing on the new host while carried back, not carried: {}",
                s.name,
                r.deferred_names.join(", ")
            ));
        } else if r.status != "unchanged" {
            out.carried.push(format!(
                "storage {}: {} file(s) ({}) copied to the old host; {}",
                s.name,
                r.files,
                crate::output::bytes(r.bytes),
                r.detail
            ));
        }
    }
    out.not_carried.extend(
        travel::storage_lines(plan, old, new, &named, |s| {
            permits
                .refusal("write-storage", "write_storage", &s.name)
                .unwrap_or_default()
        })
        .await,
    );

    for d in &plan.databases {
        let (created, removed) = match travel::large_objects(old, new, &d.name, d.on_new()).await {
            Ok(x) => x,
            Err(line) => {
                out.not_carried.push(line);
                continue;
            }
        };
        let oids: Vec<u32> = created.iter().map(|o| o.oid).collect();
        let refusal = permits.refusal("restore-database", "restore_databases", &d.name);
        let why = match refusal {
            Some(why) => why,
            None if oids.is_empty() && removed.is_empty() => continue,
            None => match back
                .large_objects(&d.name, d.on_new(), created, removed.clone())
                .await
            {
                Ok(done) => {
                    out.carried
                        .push(format!("large objects of database {}: {done}", d.name));
                    continue;
                }
                Err(e) => format!("; carrying them back failed: {e}"),
            },
        };
        out.not_carried
            .extend(travel::large_objects_line(&d.name, &oids, &removed, &why));
    }
    back.close().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(list: &[&str]) -> Permits {
        Permits {
            receives: list.contains(&"sync-target"),
            list: list.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_refusal_names_every_config_key_the_old_agent_lacks() {
        let source = permits(&["restore-database:app"]);
        assert_eq!(
            source.refusal("restore-database", "restore_databases", "app"),
            Some(
                " (not carried back: the old agent's config needs sync_role = \"either\" for that)"
                    .into()
            )
        );
        assert_eq!(
            source
                .refusal("write-file", "write_files", "backend-env")
                .as_deref(),
            Some(
                " (not carried back: the old agent's config needs sync_role = \"either\" and \"backend-env\" in [allow] write_files for that)"
            )
        );
        let either = permits(&["sync-target", "sync-either", "write-storage:evaluations"]);
        assert_eq!(
            either.refusal("write-storage", "write_storage", "evaluations"),
            None
        );
    }
}
