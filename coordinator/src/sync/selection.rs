//! Which tables of a plan database a sync, verify or cutover reads, as each agent names the
//! database ([`Selections`]). Its own file so that the copy (`database.rs`), the range
//! comparison ([`delta`](super::delta)) and the checks import it without importing each other.

use hostshift_proto::v1::DbSelection;

use crate::plan::{OnNew, PlanDatabase};

/// A database's table selection as each agent names the database (the new host's name may differ:
/// the plan's `target`).
#[derive(Clone, Debug)]
pub struct Selections {
    /// For the old agent.
    pub old: DbSelection,
    /// For the new agent.
    pub new: DbSelection,
}

impl Selections {
    /// From the plan.
    pub fn of(d: &PlanDatabase) -> Self {
        let old = DbSelection {
            database: d.name.clone(),
            include: d.include.clone(),
            exclude: d.exclude.clone(),
        };
        let new = DbSelection {
            database: d.on_new().to_string(),
            ..old.clone()
        };
        Self { old, new }
    }
}
