//! Free disk on the new host against what a sync will copy there ([`super::DISK_FACTOR`] × the
//! size of each database and tree on the old host).

use hostshift_proto::v1::{InfoResponse, InventoryResponse};

use super::{Collector, DISK_FACTOR};
use crate::plan::{OnNew, Plan};

/// One row per storage tree and per database of the plan (a warning where the new side cannot
/// see its free space: a managed database).
pub(super) fn disk_checks(
    plan: &Plan,
    old: &InventoryResponse,
    new_info: &InfoResponse,
    c: &mut Collector,
) {
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
