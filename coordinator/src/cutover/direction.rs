//! Which way a migration's journal moves data, for blue/green pairs that swap back and forth.
//!
//! A cutover records its direction (`<old agent> -> <new agent>`, the certificate names of the
//! plan's `[old]` and `[new]`) in the detail of its `started` journal event. After that cutover
//! switched traffic (or while it is unfinished) the journal describes that move: its freeze
//! state is about *its* old host and its "new host writes" list is about *its* new host. A plan
//! with the hosts swapped — the way back — would misread all of it (say "frozen" about the host
//! now serving, refuse the cutover as "already finished"), so every command that acts on a plan
//! checks here first and asks for the way back to get its own `[migration] name`: each leg of a
//! blue/green swap is a migration of its own, with its own journal and status.

use crate::plan::Plan;

use super::state::{Stage, State};

/// `<old agent> -> <new agent>` of `plan`.
pub fn of(plan: &Plan) -> String {
    format!("{} -> {}", plan.old.agent, plan.new.agent)
}

/// Refuses a plan that moves the other way than the journal's switched or unfinished cutover.
///
/// # Errors
/// The message saying which way the journal moved, and what to name the way back.
pub fn check(plan: &Plan, st: &State) -> Result<(), String> {
    let Some(journal) = st.direction.as_deref() else {
        return Ok(());
    };
    let wanted = of(plan);
    if journal == wanted || !matches!(st.state, Stage::Switched | Stage::InProgress) {
        return Ok(());
    }
    Err(format!(
        "{REVERSED}: the journal of [migration] name = {:?} ({}) holds a cutover {journal} that {}, and this plan moves {wanted}. Give the way back its own [migration] name (e.g. {:?}): each leg of a blue/green swap has its own journal (docs/cutover.md, Blue/green)",
        plan.migration.name,
        plan.state_dir().display(),
        if st.state == Stage::Switched {
            "switched traffic"
        } else {
            "is unfinished"
        },
        format!("{}-back", plan.migration.name),
    ))
}

/// The start of [`check`]'s refusal (the docs match it).
pub const REVERSED: &str = "this plan moves data the other way";
