//! `hostshift check` rows about following: whether the old host's PostgreSQL can be followed
//! (`wal_level = logical`), and the WAL a follow's slot keeps there.

use hostshift_proto::v1::{InfoResponse, SourceStatusRequest};

use super::{RETAINED_WARN_BYTES, follow_id};
use crate::client::{self, Agent};
use crate::output::bytes;
use crate::plan::{OnNew, Plan};
use crate::preflight::{Check, Verdict};

fn row(check: String, result: Verdict, detail: String, hint: &str) -> Check {
    Check {
        host: "old".into(),
        check,
        result,
        detail,
        hint: hint.into(),
    }
}

/// One or two rows per database of the plan. Not being able to follow a database the old agent
/// allows following is a warning, not a failure (the cutover then copies the changes by
/// key-range delta inside the freeze); for one it does not allow, the row only says what
/// following would take. For a database the old agent allows following, `new` (the new
/// agent's `Info`, when it answered) adds a warning when the new host's role lacks what applying
/// the changes needs (the grants an RDS master has; `follow start` refuses without them).
pub async fn rows(plan: &Plan, old: &Agent, new: Option<&InfoResponse>) -> Vec<Check> {
    let mut out = Vec::new();
    for d in &plan.databases {
        let r = old
            .follow()
            .source_status(client::request(SourceStatusRequest {
                database: d.name.clone(),
                id: follow_id(plan),
                flush: false,
            }))
            .await;
        let s = match r {
            Ok(s) => s.into_inner(),
            // An agent without `service Follow`, or a database it cannot reach (reported above).
            Err(_) => continue,
        };
        let check = format!("database {}: can be followed (wal_level)", d.name);
        if s.wal_level == "logical" {
            out.push(row(check, Verdict::Ok, "wal_level = logical".into(), ""));
        } else if !s.follow_allowed {
            // Not asked for: say what following would take, without a warning.
            out.push(row(
                check,
                Verdict::Ok,
                format!(
                    "wal_level = {}: not followed, the cutover copies the changes inside the freeze (to follow: ALTER SYSTEM SET wal_level = logical and a restart of PostgreSQL, [allow] follow_databases on the old agent)",
                    s.wal_level
                ),
                "",
            ));
        } else {
            out.push(row(
                check,
                Verdict::Warn,
                format!("wal_level = {}", s.wal_level),
                "to follow it (`hostshift follow start`, a short freeze): as a superuser `ALTER SYSTEM SET wal_level = logical;`, then restart PostgreSQL at a quiet moment — hostshift never restarts it; and list the database in the old agent's [allow] follow_databases. Without it the cutover copies the changes inside the freeze",
            ));
        }
        let missing = new.and_then(|i| {
            i.databases
                .iter()
                .find(|x| x.name == d.on_new() && !x.follow_missing.is_empty())
        });
        if let (true, Some(x)) = (s.follow_allowed, missing) {
            out.push(Check {
                host: "new".into(),
                check: format!("database {}: can apply followed changes", d.on_new()),
                result: Verdict::Warn,
                detail: format!(
                    "the role lacks: {}",
                    x.follow_missing.join(" ")
                ),
                hint: "`hostshift follow start` refuses until a superuser connected to that database runs these GRANTs (on RDS the master has them through rds_superuser; docs/rds.md), or the conninfo names a superuser".into(),
            });
        }
        if s.slot_exists {
            let check = format!("database {}: WAL kept by the follow slot", d.name);
            let detail = format!("{} retained", bytes(s.retained_bytes));
            if s.retained_bytes > RETAINED_WARN_BYTES {
                out.push(row(
                    check,
                    Verdict::Warn,
                    detail,
                    "the slot keeps WAL until the new host confirms it: check `hostshift follow status`; if the migration is abandoned, `hostshift follow cleanup` drops it before the old host's disk fills",
                ));
            } else {
                out.push(row(check, Verdict::Ok, detail, ""));
            }
        }
    }
    out
}
