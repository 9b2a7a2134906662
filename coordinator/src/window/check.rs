//! `hostshift check` rows about the rollback window: whether the new host can be followed back
//! after the switch (`wal_level = logical`, its agent's `[allow] follow_databases`), and the WAL
//! an open window's slot keeps there.

use hostshift_proto::v1::SourceStatusRequest;

use super::reverse_id;
use crate::client::{self, Agent};
use crate::follow::RETAINED_WARN_BYTES;
use crate::output::bytes;
use crate::plan::{OnNew, Plan};
use crate::preflight::{Check, Verdict};

fn row(check: String, result: Verdict, detail: String, hint: &str) -> Check {
    Check {
        host: "new".into(),
        check,
        result,
        detail,
        hint: hint.into(),
    }
}

/// One or two rows per database. A database the new agent allows following on a cluster
/// without `wal_level = logical` is a warning (the operator asked for a window it cannot
/// have); one it does not allow only says what the window would take.
pub async fn rows(plan: &Plan, new: &Agent) -> Vec<Check> {
    let mut out = Vec::new();
    for d in &plan.databases {
        let Ok(s) = new
            .follow()
            .source_status(client::request(SourceStatusRequest {
                database: d.on_new().to_string(),
                id: reverse_id(plan),
                flush: false,
            }))
            .await
            .map(tonic::Response::into_inner)
        else {
            // An agent without `service Follow`, or a database it cannot reach (reported above).
            continue;
        };
        let check = format!("database {}: rollback window after the switch", d.on_new());
        let needs = "to have one: `ALTER SYSTEM SET wal_level = logical;` and a restart of the new host's PostgreSQL before the cutover, the database in the new agent's [allow] follow_databases and freeze_databases, and in the old agent's [allow] restore_databases (docs/cutover.md, The rollback window)";
        match (s.wal_level == "logical", s.follow_allowed) {
            (true, true) => out.push(row(
                check,
                Verdict::Ok,
                "possible: after the switch the old host follows the new one, a rollback loses no write".into(),
                "",
            )),
            (false, true) => out.push(row(
                check,
                Verdict::Warn,
                format!("wal_level = {} on the new host: no rollback window", s.wal_level),
                needs,
            )),
            (_, false) => out.push(row(
                check,
                Verdict::Ok,
                format!(
                    "not configured (wal_level = {}): a rollback after the switch reports the new host's writes as at risk; {needs}",
                    s.wal_level
                ),
                "",
            )),
        }
        if s.slot_exists {
            let check = format!(
                "database {}: WAL kept by the rollback window's slot",
                d.on_new()
            );
            let detail = format!("{} retained", bytes(s.retained_bytes));
            if s.retained_bytes > RETAINED_WARN_BYTES {
                out.push(row(
                    check,
                    Verdict::Warn,
                    detail,
                    "the old host's follower is behind or down: `hostshift window` shows it; bring the old agent back or close the window with `hostshift finish --yes` before the new host's disk fills",
                ));
            } else {
                out.push(row(check, Verdict::Ok, detail, ""));
            }
        }
    }
    out
}
