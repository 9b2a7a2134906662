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

use super::error::CutoverError;
use super::state::{Stage, State};

/// `<old agent> -> <new agent>` of `plan`.
pub fn of(plan: &Plan) -> String {
    format!("{} -> {}", plan.old.agent, plan.new.agent)
}

/// Refuses a plan that moves the other way than the journal's switched or unfinished cutover.
///
/// # Errors
/// The message saying which way the journal moved, and what to name the way back.
pub fn check(plan: &Plan, st: &State) -> Result<(), CutoverError> {
    let Some(journal) = st.direction.as_deref() else {
        return Ok(());
    };
    let wanted = of(plan);
    if journal == wanted || !matches!(st.state, Stage::Switched | Stage::InProgress) {
        return Ok(());
    }
    Err(CutoverError::Reversed(format!(
        "{REVERSED}: the journal of [migration] name = {:?} ({}) holds a cutover {journal} that {}, and this plan moves {wanted}. Give the way back its own [migration] name (e.g. {:?}): each leg of a blue/green swap has its own journal (docs/cutover.md, Blue/green)",
        plan.migration.name,
        plan.state_dir().display(),
        if st.state == Stage::Switched {
            "switched traffic"
        } else {
            "is unfinished"
        },
        format!("{}-back", plan.migration.name),
    )))
}

/// The start of [`check`]'s refusal (the docs match it).
pub const REVERSED: &str = "this plan moves data the other way";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Event;

    fn ev(unit: &str, status: &str, detail: &str) -> Event {
        Event {
            time_ms: 1,
            run: "1".into(),
            phase: super::super::state::PHASE.into(),
            unit: unit.into(),
            status: status.into(),
            bytes: 0,
            files: 0,
            detail: detail.into(),
            step: None,
        }
    }

    fn plan(old: &str, new: &str) -> Plan {
        let text = format!(
            "[migration]\nname = \"m\"\n[old]\naddress = \"https://127.0.0.2:7443\"\nagent = \"{old}\"\n\
             [new]\naddress = \"https://127.0.0.3:7443\"\nagent = \"{new}\"\n\
             [tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n[switch]\nmethod = \"none\"\n"
        );
        toml::from_str(&text).expect("plan")
    }

    #[test]
    fn a_switched_cutover_refuses_the_reverse_plan_and_names_what_to_do() {
        let st = super::super::state::of(&[
            ev("cutover", "started", "a -> b"),
            ev("switch", "done", ""),
            ev("cutover", "done", "switched"),
        ]);
        assert_eq!(st.direction.as_deref(), Some("a -> b"));
        assert!(check(&plan("a", "b"), &st).is_ok());
        let e = check(&plan("b", "a"), &st)
            .expect_err("the way back under the same name")
            .to_string();
        assert!(e.starts_with(REVERSED) && e.contains("\"m-back\""), "{e}");
    }

    #[test]
    fn a_rolled_back_or_unrecorded_cutover_does_not_bind_the_direction() {
        let rolled = super::super::state::of(&[
            ev("cutover", "started", "a -> b"),
            ev("cutover", "done", "gates-failed"),
        ]);
        assert!(check(&plan("b", "a"), &rolled).is_ok());
        let old_journal = super::super::state::of(&[
            ev("cutover", "started", ""),
            ev("switch", "done", ""),
            ev("cutover", "done", "switched"),
        ]);
        assert!(check(&plan("b", "a"), &old_journal).is_ok());
    }
}
