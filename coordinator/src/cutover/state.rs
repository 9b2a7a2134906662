//! Where a migration stands, read back from the journal alone (no agent is asked): whether a
//! cutover is in progress, which freeze methods are still in force on the old host, whether
//! traffic was switched, and when the last sync and verify finished. `cutover`, `cutover --resume`,
//! `rollback` and `status` all decide from this, so a killed coordinator leaves enough behind.
//!
//! The journal is append-only; each step writes `started` before it acts and `done`/`failed`
//! after. A step that only has `started` may have acted (the process died in between), so it is
//! counted as having acted: a freeze method `started` is treated as in force until an `unfreeze`
//! of it is `done`.

use serde::Serialize;

use super::Outcome;
use crate::journal::{Event, Mark, Step};
use crate::plan::FreezeMethod;

/// Journal phase of the cutover's steps.
pub const PHASE: &str = "cutover";
/// Journal phase of `hostshift rollback`.
pub const ROLLBACK: &str = "rollback";
/// The unit that opens and closes a cutover run (its `done` detail is the outcome).
pub const RUN_UNIT: &str = "cutover";

/// The state of the last cutover.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// No cutover was ever started.
    None,
    /// Started, not finished: frozen and/or switched, or killed before it could say.
    InProgress,
    /// Finished with traffic on the new host.
    Switched,
    /// Undone (by the cutover itself or by `rollback`): the old host serves.
    RolledBack,
    /// Stopped before it changed anything (gates) or a dry run.
    Failed,
}

/// What the journal says about the last cutover.
#[derive(Clone, Debug, Serialize)]
pub struct State {
    /// The stage.
    pub state: Stage,
    /// Whether any freeze method may still be in force on the old host.
    pub frozen: bool,
    /// Freeze methods in force, in the order they were applied.
    pub frozen_methods: Vec<FreezeMethod>,
    /// Whether traffic was (or may have been) switched and not switched back.
    pub switched: bool,
    /// The cutover's run id.
    pub run: Option<String>,
    /// Which way it moved (`<old agent> -> <new agent>`, see [`super::direction`]); `None` for
    /// journals written before directions were recorded.
    pub direction: Option<String>,
    /// When the first freeze method started (ms since the epoch).
    pub freeze_started_ms: Option<u64>,
    /// Traffic was (or may have been) switched after the new host's snapshots were held, and
    /// the proof after the switch has not finished (`cutover --resume` runs it while the
    /// snapshots are still held; see `held_proof`).
    #[serde(default)]
    pub proof_pending: bool,
    /// The last cutover's events (and the rollbacks after it), in order.
    pub steps: Vec<Event>,
}

/// How the last run ended, as far as the journal says.
enum End {
    /// The run's `done` with its outcome (`None`: a detail that names no outcome).
    Outcome(Option<Outcome>),
    /// Any other end of the run (`undo-failed`, `resumed`, `stopped`, `failed`).
    Other,
    /// A rollback finished.
    RolledBack,
}

/// Finds the last cutover run in `events` and what it left behind.
pub fn of(events: &[Event]) -> State {
    let start = events.iter().rposition(|e| {
        e.phase == PHASE && e.step() == Some(Step::Cutover) && e.mark() == Some(Mark::Started)
    });
    let Some(start) = start else {
        return State {
            state: Stage::None,
            frozen: false,
            frozen_methods: vec![],
            switched: false,
            run: None,
            direction: None,
            freeze_started_ms: None,
            proof_pending: false,
            steps: vec![],
        };
    };
    let run = events[start].run.clone();
    let direction = Some(events[start].detail.clone()).filter(|d| !d.is_empty());
    // This run's events and every rollback (or resumed run) after it.
    let steps: Vec<Event> = events[start..]
        .iter()
        .filter(|e| e.phase == PHASE || e.phase == ROLLBACK)
        .cloned()
        .collect();
    let mut frozen: Vec<FreezeMethod> = Vec::new();
    let mut switched = false;
    let mut freeze_started_ms = None;
    let mut end: Option<End> = None;
    let (mut held, mut proved) = (false, false);
    for e in &steps {
        let (Some(step), Some(mark)) = (e.step(), e.mark()) else {
            continue;
        };
        match (step, mark) {
            // Started counts: the method may have acted before the process died.
            (Step::Freeze(m), Mark::Started | Mark::Done) => {
                if !frozen.contains(&m) {
                    frozen.push(m);
                }
                freeze_started_ms.get_or_insert(e.time_ms);
            }
            (Step::Unfreeze(m), Mark::Done) => frozen.retain(|x| *x != m),
            (Step::Switch, Mark::Started | Mark::Done) => switched = true,
            // `method = "none"`: the cutover told the operator to move traffic (a rehearsal's
            // skipped switch moves nothing).
            (Step::Switch, Mark::Skipped) if e.detail.starts_with("method none") => {
                switched = true;
            }
            (Step::HoldSnapshots, Mark::Done) => held = true,
            // Done, or skipped by the operator (`--accept-unproven`).
            (Step::ProveAfterSwitch, Mark::Done | Mark::Skipped) => proved = true,
            (Step::SwitchBack, Mark::Done) => switched = false,
            (Step::Cutover, Mark::Started) => {}
            // `done` carries the outcome in its detail; a later resume/rollback may follow.
            (Step::Cutover, Mark::Done) => {
                end = Some(End::Outcome(
                    serde_json::from_value(serde_json::Value::String(e.detail.clone())).ok(),
                ));
            }
            (Step::Cutover, _) => end = Some(End::Other),
            (Step::Rollback, Mark::Done) if e.phase == ROLLBACK => end = Some(End::RolledBack),
            (Step::Rollback, Mark::Started) if e.phase == ROLLBACK => end = None,
            _ => {}
        }
    }
    let touched = !frozen.is_empty() || switched;
    let state = match end {
        Some(End::Outcome(Some(Outcome::Switched))) => Stage::Switched,
        Some(End::RolledBack) if !touched => Stage::RolledBack,
        Some(End::Outcome(Some(Outcome::RolledBack))) if !touched => Stage::RolledBack,
        // Stopped at the gates, a dry run, or killed before the first freeze method started
        // (during the gates): nothing was touched, so there is nothing to resume — a new
        // cutover checks the gates again.
        _ if !touched => Stage::Failed,
        _ => Stage::InProgress,
    };
    let proof_pending = held && switched && !proved && state == Stage::InProgress;
    State {
        state,
        frozen: !frozen.is_empty(),
        frozen_methods: frozen,
        switched,
        run: Some(run),
        direction,
        freeze_started_ms,
        proof_pending,
        steps,
    }
}

/// `(started_ms, done_ms)` of the last finished `unit` of `phase` (its `started` and `done`
/// events of one run), e.g. the last `sync` or `verify`.
pub fn last_finished(events: &[Event], phase: &str, unit: &str) -> Option<(u64, u64, String)> {
    let done = events
        .iter()
        .rev()
        .find(|e| e.phase == phase && e.unit == unit && e.status == "done")?;
    let started = events
        .iter()
        .find(|e| e.phase == phase && e.unit == unit && e.status == "started" && e.run == done.run)
        .map_or(done.time_ms, |e| e.time_ms);
    Some((started, done.time_ms, done.detail.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(run: &str, phase: &str, unit: &str, status: &str, t: u64) -> Event {
        Event {
            time_ms: t,
            run: run.into(),
            phase: phase.into(),
            unit: unit.into(),
            status: status.into(),
            bytes: 0,
            files: 0,
            detail: if unit == RUN_UNIT && status == "done" {
                "switched".into()
            } else {
                String::new()
            },
            step: None,
        }
    }

    #[test]
    fn no_cutover_is_none() {
        assert_eq!(of(&[ev("1", "sync", "sync", "done", 1)]).state, Stage::None);
    }

    #[test]
    fn a_killed_cutover_after_the_freeze_is_in_progress_and_frozen() {
        let s = of(&[
            ev("1", PHASE, RUN_UNIT, "started", 1),
            ev("1", PHASE, "gates", "done", 2),
            ev("1", PHASE, "freeze read-only", "started", 3),
        ]);
        assert_eq!(s.state, Stage::InProgress);
        assert!(s.frozen);
        assert_eq!(s.frozen_methods, vec![FreezeMethod::ReadOnly]);
        assert_eq!(s.freeze_started_ms, Some(3));
        assert!(!s.switched);
    }

    #[test]
    fn a_cutover_killed_during_the_gates_touched_nothing_and_is_not_resumable() {
        let s = of(&[
            ev("1", PHASE, RUN_UNIT, "started", 1),
            ev("1", PHASE, "gates", "started", 2),
        ]);
        assert_eq!(s.state, Stage::Failed);
        assert!(!s.frozen && !s.switched);
    }

    #[test]
    fn a_rollback_after_a_switch_leaves_nothing_in_force() {
        let mut events = vec![
            ev("1", PHASE, RUN_UNIT, "started", 1),
            ev("1", PHASE, "freeze stop-apps", "done", 2),
            ev("1", PHASE, "switch", "done", 3),
            ev("1", PHASE, RUN_UNIT, "done", 4),
        ];
        let s = of(&events);
        assert_eq!(s.state, Stage::Switched);
        assert!(s.frozen && s.switched);
        events.extend([
            ev("2", ROLLBACK, "rollback", "started", 5),
            ev("2", ROLLBACK, "switch back", "done", 6),
            ev("2", ROLLBACK, "unfreeze stop-apps", "done", 7),
            ev("2", ROLLBACK, "rollback", "done", 8),
        ]);
        let s = of(&events);
        assert_eq!(s.state, Stage::RolledBack);
        assert!(!s.frozen && !s.switched);
    }

    #[test]
    fn a_crash_between_the_switch_and_the_proof_after_it_leaves_the_proof_pending() {
        let mut events = vec![
            ev("1", PHASE, RUN_UNIT, "started", 1),
            ev("1", PHASE, "freeze read-only", "done", 2),
            ev("1", PHASE, "hold snapshots", "done", 3),
            ev("1", PHASE, "switch", "done", 4),
            ev("1", PHASE, "prove after switch", "started", 5),
        ];
        let s = of(&events);
        assert_eq!(s.state, Stage::InProgress);
        assert!(s.switched && s.proof_pending);
        events.push(ev("1", PHASE, "prove after switch", "done", 6));
        assert!(!of(&events).proof_pending);
        // Held but never switched: nothing to prove after a switch.
        let s = of(&[
            ev("1", PHASE, RUN_UNIT, "started", 1),
            ev("1", PHASE, "freeze read-only", "done", 2),
            ev("1", PHASE, "hold snapshots", "done", 3),
        ]);
        assert!(!s.proof_pending);
    }

    #[test]
    fn last_finished_pairs_start_and_end_of_one_run() {
        let events = vec![
            ev("a", "verify", "verify", "started", 10),
            ev("a", "verify", "verify", "done", 30),
            ev("b", "verify", "verify", "started", 40),
            ev("b", "verify", "verify", "failed", 45),
        ];
        assert_eq!(
            last_finished(&events, "verify", "verify").map(|x| (x.0, x.1)),
            Some((10, 30))
        );
    }
}
