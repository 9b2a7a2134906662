//! The write freeze on the old host, one method at a time, each reversible and idempotent:
//!
//! | method | freeze | undo |
//! |---|---|---|
//! | `maintenance-page` | nginx answers 503 + `Retry-After` (the plan's `maintenance_pass` paths still reach the app) | the original site file back, byte for byte |
//! | `stop-apps` | the plan's `[pm2] apps` stopped (and waited for) | started again, waited until online |
//! | `read-only` | each plan database `default_transaction_read_only = on`, `CONNECT` taken from every other non-superuser role, other sessions ended | the database's own earlier setting and the recorded privileges back |
//!
//! The agents keep what they changed on their own disk (the saved site file, the recorded
//! database setting), so an undo works after an agent restart and repeating either direction is
//! harmless — which is what lets `rollback` simply undo every method the plan names.

use hostshift_proto::v1::{
    MaintenanceOffRequest, MaintenanceOnRequest, Pm2ActionRequest, SetReadOnlyRequest,
};

use super::error::{self, CutoverError};
use crate::client::{self, Agent};
use crate::plan::{FreezeMethod, Plan};

/// Seconds the agent waits for PM2 apps to stop or come online.
const PM2_WAIT_SECS: u32 = 60;

/// Applies one method on the old host; returns what was done.
///
/// # Errors
/// The agent's refusal or failure, explained.
pub async fn apply(plan: &Plan, old: &Agent, m: FreezeMethod) -> Result<String, CutoverError> {
    match m {
        FreezeMethod::MaintenancePage => {
            let r = old
                .nginx()
                .maintenance_on(client::request(MaintenanceOnRequest {
                    pass_paths: plan.nginx.maintenance_pass.clone(),
                    retry_after_secs: 0,
                    dry_run: false,
                }))
                .await
                .map_err(|s| error::status(&s))?
                .into_inner();
            Ok(format!(
                "maintenance page on ({}{})",
                r.site,
                if r.changed { "" } else { ", already on" }
            ))
        }
        FreezeMethod::StopApps => {
            if plan.pm2.apps.is_empty() {
                return Ok("no [pm2] apps in the plan: nothing to stop".into());
            }
            pm2(old, &plan.pm2.apps, false).await
        }
        FreezeMethod::ReadOnly => read_only(plan, old, true).await,
    }
}

/// Undoes one method on the old host; returns what was done.
///
/// # Errors
/// The agent's refusal or failure, explained.
pub async fn undo(plan: &Plan, old: &Agent, m: FreezeMethod) -> Result<String, CutoverError> {
    match m {
        FreezeMethod::MaintenancePage => {
            let r = old
                .nginx()
                .maintenance_off(client::request(MaintenanceOffRequest {}))
                .await
                .map_err(|s| error::status(&s))?
                .into_inner();
            Ok(format!(
                "original site restored ({}{}){}",
                r.site,
                if r.changed {
                    ""
                } else {
                    ", was not in maintenance"
                },
                if r.edited_copy.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; warning: the site was edited during maintenance, those edits are not \
                         in the restored original (kept in {} on the old host)",
                        r.edited_copy
                    )
                }
            ))
        }
        FreezeMethod::StopApps => {
            if plan.pm2.apps.is_empty() {
                return Ok("no [pm2] apps in the plan".into());
            }
            pm2(old, &plan.pm2.apps, true).await
        }
        FreezeMethod::ReadOnly => read_only(plan, old, false).await,
    }
}

/// Every plan database read-only (ending its other sessions) or writable again.
async fn read_only(plan: &Plan, old: &Agent, on: bool) -> Result<String, CutoverError> {
    let mut done = Vec::new();
    for d in &plan.databases {
        let r = old
            .database()
            .set_read_only(client::request(SetReadOnlyRequest {
                database: d.name.clone(),
                read_only: on,
                end_sessions: on,
            }))
            .await
            .map_err(|s| error::agent(format!("database {}", d.name), &s))?
            .into_inner();
        let again = if r.changed { "" } else { ", already" };
        done.push(if on {
            format!(
                "{} read-only ({} session(s) ended{again})",
                d.name, r.sessions_ended
            )
        } else {
            format!(
                "{} writable{}",
                d.name,
                if r.changed { "" } else { " (was not frozen)" }
            )
        });
    }
    Ok(done.join("; "))
}

async fn pm2(old: &Agent, apps: &[String], start: bool) -> Result<String, CutoverError> {
    let req = client::request(Pm2ActionRequest {
        apps: apps.to_vec(),
        update_env: false,
        wait_secs: PM2_WAIT_SECS,
    });
    let mut c = old.pm2();
    let r = if start {
        c.start(req).await
    } else {
        c.stop(req).await
    }
    .map_err(|s| error::status(&s))?
    .into_inner();
    let states: Vec<String> = r
        .apps
        .iter()
        .map(|a| format!("{} {}", a.name, a.status))
        .collect();
    if r.ok {
        Ok(states.join(", "))
    } else {
        Err(CutoverError::Pm2 {
            action: r.action,
            states,
        })
    }
}

/// What an operator runs by hand to undo `m` when hostshift cannot.
pub fn manual_undo(plan: &Plan, m: FreezeMethod) -> String {
    let p = plan.path.display();
    match m {
        FreezeMethod::MaintenancePage => {
            format!("hostshift nginx maintenance off --host old --plan {p} --yes")
        }
        FreezeMethod::StopApps => format!(
            "hostshift pm2 start --host old --plan {p} {}",
            plan.pm2.apps.join(" ")
        ),
        FreezeMethod::ReadOnly => plan
            .databases
            .iter()
            .map(|d| {
                // Connected to `postgres`: a session on the frozen database itself is read-only
                // and cannot run ALTER DATABASE.
                format!(
                    "psql -d postgres -c 'ALTER DATABASE \"{}\" RESET default_transaction_read_only' (on the old host, as the database's owner or a superuser; \"{}\" is the database the old agent's [[databases]] {} conninfo names), \
                     then GRANT CONNECT ON DATABASE back to each role listed under connect_revoked in the old agent's <state_dir>/freeze/{}.json",
                    d.name, d.name, d.name, d.name
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}
