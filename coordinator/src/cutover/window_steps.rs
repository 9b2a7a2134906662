//! The rollback window's steps inside a cutover and a rollback (the work is in
//! [`crate::window`]; this file journals it and decides what a failure means).
//!
//! - Cutover: [`Cut::window_prepare`] right before the switch, [`Cut::window_open`] right after
//!   it. Neither fails the cutover: without a window the cutover says so, and a rollback reports
//!   the new host's writes as at risk, as before the window existed. Only a journal failure is
//!   passed on. [`Cut::window_abandon`] removes a window when the cutover is undone.
//! - Rollback: [`Cut::window_drain`] freezes the new host (the plan's freeze methods, on the new
//!   host), waits until the old host applied everything, copies the sequences;
//!   [`Cut::window_carry_back`], still inside the freeze, carries storage, config files and
//!   large objects back (what the old agent allows); then the usual switch back and unfreeze of
//!   the old host run; [`Cut::window_end`] closes the window and leaves the new host frozen (as
//!   a cutover leaves the old one).

use std::time::{Duration, Instant};

use hostshift_proto::v1::SetReadOnlyRequest;

use super::cut::Cut;
use super::error::{self, CutoverError};
use super::{freeze, new_writes};
use crate::client::{self, Agent};
use crate::journal::{Mark, Step as JStep};
use crate::plan::{FreezeMethod, OnNew, Side};
use crate::report::now_ms;
use crate::window;

/// The longest a rollback waits for the old host's follower inside its freeze.
fn drain_timeout(budget_secs: u64) -> Duration {
    Duration::from_secs(budget_secs.max(30))
}

fn werr(e: window::WindowError) -> CutoverError {
    CutoverError::Agent(e.to_string())
}

/// One freeze method on the new host (the plan's databases by their new names).
async fn freeze_new(
    plan: &crate::plan::Plan,
    new: &Agent,
    m: FreezeMethod,
    on: bool,
) -> Result<String, CutoverError> {
    if m != FreezeMethod::ReadOnly {
        return if on {
            freeze::apply(plan, new, m).await
        } else {
            freeze::undo(plan, new, m).await
        };
    }
    let mut done = Vec::new();
    for d in &plan.databases {
        let r = new
            .database()
            .set_read_only(client::request(SetReadOnlyRequest {
                database: d.on_new().to_string(),
                read_only: on,
                end_sessions: on,
            }))
            .await
            .map_err(|s| error::agent(format!("database {} on the new host", d.on_new()), &s))?
            .into_inner();
        done.push(format!(
            "{} {} ({} session(s) ended)",
            d.on_new(),
            if on { "read-only" } else { "writable" },
            r.sessions_ended
        ));
    }
    Ok(done.join("; "))
}

impl Cut<'_> {
    fn new_agent(&self) -> Result<Agent, CutoverError> {
        self.new
            .clone()
            .ok_or(CutoverError::NotConnected(Side::New))
    }

    /// Before the switch: the window's anchor on the new host ([`Cut::window_prepare_begin`],
    /// [`Cut::window_prepare_work`], [`Cut::window_prepare_end`], run beside the proof by
    /// `prove_hold_anchor`). Without one the cutover goes on: a host that cannot be followed
    /// (its `wal_level`, its agent's config) makes the step `skipped` with the reason, an agent
    /// failure makes it `failed`; neither fails the run.
    ///
    /// This part: whether the anchor is to be taken now (journaled as started), and on which
    /// agent; `None`: kept from an earlier run (journaled as skipped) or no new agent.
    pub(super) fn window_prepare_begin(
        &mut self,
    ) -> Result<Option<(Instant, Agent)>, CutoverError> {
        if let Ok(Some(r)) = window::load(self.plan)
            && r.is_active()
            && r.state != "slot"
            && (self.resumed || r.state == "open")
        {
            // A resumed run may have switched already: the earlier anchor stays (a new one
            // would skip the writes the new host took since).
            self.skipped(
                JStep::WindowPrepare,
                &format!("the rollback window of run {} is kept", r.run),
            )?;
            return Ok(None);
        }
        let Ok(new) = self.new_agent() else {
            // Not reached: the cutover itself fails on that; no window either way.
            return Ok(None);
        };
        let t = Instant::now();
        self.record(JStep::WindowPrepare, Mark::Started, "")?;
        Ok(Some((t, new)))
    }

    /// The anchor itself: only reads `self` (it runs beside the proof inside the freeze).
    pub(super) async fn window_prepare_work(
        &self,
        new: &Agent,
    ) -> Result<window::Record, window::WindowError> {
        window::prepare(self.plan, new, &self.out.run, false).await
    }

    /// Journals how the anchor went; a failure removes the window (the cutover goes on).
    pub(super) async fn window_prepare_end(
        &mut self,
        t: Instant,
        ended: Instant,
        r: Result<window::Record, window::WindowError>,
    ) -> Result<(), CutoverError> {
        let r = match r {
            Ok(rec) => {
                let mut detail = format!(
                    "slot hostshift_{} on the new host for {} database(s)",
                    rec.id,
                    rec.databases.len()
                );
                for w in &rec.databases {
                    let hint = window::carry_whole_hint(&w.on_new, &w.not_followed);
                    if !hint.is_empty() {
                        self.progress.say(&format!("window prepare: {hint}"));
                        detail.push_str("; ");
                        detail.push_str(&hint);
                    }
                }
                Ok(detail)
            }
            Err(window::WindowError::Unavailable(why)) => {
                self.record(JStep::WindowPrepare, Mark::Skipped, &why)?;
                let msg = format!(
                    "no rollback window: {why}; a rollback will report the new host's writes as at risk"
                );
                // Said on stderr and journaled; not a step of the report, whose steps are the
                // cutover's own (most plans have no window).
                self.progress
                    .say(&format!("{}: skipped — {msg}", JStep::WindowPrepare));
                return Ok(());
            }
            Err(e) => Err(CutoverError::Agent(format!(
                "no rollback window ({e}): a rollback will report the new host's writes as at risk"
            ))),
        };
        let failed = r.is_err();
        match self.end_at(JStep::WindowPrepare, t, ended, r) {
            Err(e) if e.is_journal() => return Err(e),
            _ => {}
        }
        if failed {
            // A slot created for part of the databases must not keep WAL.
            self.window_abandon().await;
        }
        Ok(())
    }

    /// Before the freeze: the window's slot on the new host, without its anchor (see
    /// [`window::prepare`]); [`Cut::window_prepare`] takes the anchor inside the freeze. Not
    /// journaled as a step (the window's record holds it; an undo or `finish` drops it): a
    /// failure or a host that cannot be followed is left to `window prepare`, which says so.
    pub(super) async fn window_slot(&mut self) {
        if matches!(window::load(self.plan), Ok(Some(r)) if r.is_active()) {
            return;
        }
        let Ok(new) = self.new_agent() else { return };
        match window::prepare(self.plan, &new, &self.out.run, true).await {
            Ok(_) | Err(window::WindowError::Unavailable(_)) => {}
            Err(e) => {
                self.progress.say(&format!(
                    "the rollback window's slot could not be created before the freeze ({e}): trying again inside it"
                ));
                self.window_abandon().await;
            }
        }
    }

    /// After the switch: the old host's follower. Without one the window is removed.
    pub(super) async fn window_open(&mut self) -> Result<(), CutoverError> {
        if !matches!(window::load(self.plan), Ok(Some(r)) if r.state == "prepared") {
            return Ok(());
        }
        let old = self.old()?.clone();
        let t = self.begin(JStep::WindowOpen)?;
        let r = window::open(self.plan, &old)
            .await
            .map(|rec| {
                format!(
                    "the old host follows the new one ({} database(s)); `hostshift rollback` loses nothing, `hostshift finish` closes the window",
                    rec.databases.len()
                )
            })
            .map_err(|e| {
                CutoverError::Agent(format!(
                    "no rollback window ({e}): a rollback will report the new host's writes as at risk"
                ))
            });
        let failed = r.is_err();
        match self.end(JStep::WindowOpen, t, r) {
            Err(e) if e.is_journal() => return Err(e),
            _ => {}
        }
        if failed {
            self.window_abandon().await;
        }
        Ok(())
    }

    /// Removes a prepared or open window (the cutover undone, or it could not open); a failure
    /// is reported with what to run.
    pub(super) async fn window_abandon(&mut self) {
        if !matches!(window::load(self.plan), Ok(Some(r)) if r.is_active()) {
            return;
        }
        let _ = self.window_close_step().await;
    }

    async fn window_close_step(&mut self) -> Result<(), CutoverError> {
        let t = self.begin(JStep::WindowClose)?;
        let r = match (self.old(), self.new_agent()) {
            (Ok(old), Ok(new)) => window::close(self.plan, old, &new).await.map_err(werr),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if r.is_err() {
            self.out.undo_instructions.push(format!(
                "the rollback window may still keep a slot on the new host: run `hostshift finish --plan {} --yes`",
                self.plan.path.display()
            ));
        }
        self.end(JStep::WindowClose, t, r).map(|_| ())
    }

    /// Rollback: with an open window, freeze the new host and drain it into the old one.
    /// `Some(true)`: drained, go on (switch back, unfreeze old, then [`Cut::window_end`]);
    /// `Some(false)`: no open window, the rollback goes on as before; `None`: the drain failed,
    /// the new host was unfrozen again and the rollback stops (traffic stays on the new host,
    /// the window stays open; the report says why).
    pub(super) async fn window_drain(&mut self) -> Option<bool> {
        match window::load(self.plan) {
            Ok(Some(r)) if r.state == "open" => {}
            // An earlier rollback drained it and stopped (killed, or its undo failed): the new
            // host is frozen and everything is on the old host; go on from the switch back.
            Ok(Some(r)) if r.state == "drained" => {
                self.progress.say(
                    "the rollback window was drained by an earlier rollback: going on from the switch back",
                );
                return Some(true);
            }
            // Prepared, never opened (a cutover stopped between the two): the old host applied
            // nothing, so this is a rollback without a window; its slot must not keep WAL.
            Ok(Some(r)) if r.state == "prepared" || r.state == "slot" => {
                self.window_abandon().await;
                return Some(false);
            }
            _ => return Some(false),
        }
        let methods = self.plan.freeze.methods.clone();
        let mut frozen = Vec::new();
        self.freeze_started_ms = Some(now_ms());
        self.rep.freeze_begins();
        let mut r: Result<(), CutoverError> = Ok(());
        for m in &methods {
            let t = match self.begin(JStep::FreezeNew(*m)) {
                Ok(t) => t,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            };
            frozen.push(*m);
            let x = match self.new_agent() {
                Ok(new) => freeze_new(self.plan, &new, *m, true).await,
                Err(e) => Err(e),
            };
            if let Err(e) = self.end(JStep::FreezeNew(*m), t, x) {
                r = Err(e);
                break;
            }
        }
        if r.is_ok() {
            r = async {
                let t = self.begin(JStep::WindowCatchUp)?;
                let x = match (self.old(), self.new_agent()) {
                    (Ok(old), Ok(new)) => {
                        let timeout = drain_timeout(self.plan.freeze.budget_secs);
                        window::drain(self.plan, old, &new, timeout)
                            .await
                            .map_err(werr)
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
                self.end(JStep::WindowCatchUp, t, x).map(|_| ())
            }
            .await;
        }
        match r {
            Ok(()) => Some(true),
            Err(e) => {
                self.out.error = Some(format!(
                    "the rollback stopped before traffic moved: {e}; the new host keeps serving, the window stays open (fix the cause and run `hostshift rollback` again, or `hostshift finish`)"
                ));
                self.out.outcome = super::Outcome::UndoFailed;
                self.unfreeze_new(frozen).await;
                self.rep.freeze_ends();
                self.out.freeze_ms = self.freeze_ms();
                None
            }
        }
    }

    async fn unfreeze_new(&mut self, methods: Vec<FreezeMethod>) {
        for m in methods.into_iter().rev() {
            let Ok(t) = self.begin(JStep::UnfreezeNew(m)) else {
                self.out
                    .undo_instructions
                    .push(format!("unfreeze the new host by hand: {}", m.as_str()));
                continue;
            };
            let x = match self.new_agent() {
                Ok(new) => freeze_new(self.plan, &new, m, false).await,
                Err(e) => Err(e),
            };
            if self.end(JStep::UnfreezeNew(m), t, x).is_err() {
                self.out.undo_instructions.push(format!(
                    "the new host may still be frozen ({}): undo it with `hostshift unfreeze` on the new host or by hand",
                    m.as_str()
                ));
            }
        }
    }

    /// After a drained rollback switched traffic back: the window closed. The new host stays
    /// frozen, as the old host does after a cutover — a write accepted there now would be lost
    /// (`hostshift unfreeze --host new` lifts it, e.g. before syncing into it again). Only a
    /// journal failure is passed on.
    pub(super) async fn window_end(&mut self) -> Result<(), CutoverError> {
        self.progress.say(&format!(
            "the new host stays frozen: `hostshift unfreeze --host new --plan {} --yes` lifts it",
            self.plan.path.display()
        ));
        match self.window_close_step().await {
            Err(e) if e.is_journal() => Err(e),
            _ => Ok(()),
        }
    }

    /// Inside the rollback's freeze, after the drain: the storage trees, config files and large
    /// objects the new host changed since the switch carried back into the old host as far as
    /// its agent allows ([`window::carry`]); the rest named (`not_carried_back`, exit 3). Runs
    /// once per window: a rollback resumed after it finds what it did in the window's record.
    /// Only a journal failure is passed on.
    pub(super) async fn window_carry_back(&mut self) -> Result<(), CutoverError> {
        let Ok(Some(rec)) = window::load(self.plan) else {
            return Ok(());
        };
        if let Some(carried) = &rec.carried_back {
            self.out.carried_back = carried.clone();
            self.out.not_carried_back = rec.not_carried_back.clone();
            return self.skipped(
                JStep::WindowCarryBack,
                "done by an earlier rollback of this window",
            );
        }
        let (Some(old), Ok(new)) = (self.old.clone(), self.new_agent()) else {
            // Not reached: the drain needs both agents.
            return Ok(());
        };
        let t = self.begin(JStep::WindowCarryBack)?;
        let progress = self.progress.clone();
        let c =
            window::carry::carry_back(self.plan, &old, &new, &rec, &self.journal, progress).await;
        for line in &c.carried {
            self.progress.say(&format!("carried back: {line}"));
        }
        for line in &c.not_carried {
            self.progress.say(&format!("NOT carried back: {line}"));
        }
        let saved = window::record_carry_back(self.plan, &c).map_err(werr);
        self.out.carried_back = c.carried.clone();
        self.out.not_carried_back = c.not_carried.clone();
        let r = saved.map(|()| {
            format!(
                "{} carried back, {} named (not carried back){}",
                c.carried.len(),
                c.not_carried.len(),
                if c.carried.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.carried.join("; "))
                }
            )
        });
        match self.end(JStep::WindowCarryBack, t, r) {
            Err(e) if e.is_journal() => Err(e),
            _ => Ok(()),
        }
    }

    /// The rollback's freeze ends when the old host is writable again (after the undo).
    pub(super) fn window_freeze_ends(&mut self, drained: bool) {
        if drained {
            self.rep.freeze_ends();
            self.out.freeze_ms = self.freeze_ms();
        }
    }

    /// After a drained rollback: the writes the window did not carry back — tables without a
    /// replica identity that differ between the hosts (updated or deleted on the new host: only
    /// their inserts travel), and tables created on the new host since the switch (not in its
    /// publications) — named as at risk (and kept, so that `sync` refuses to overwrite
    /// them), like every write of a rollback without a window. Only a journal failure is
    /// passed on.
    pub(super) async fn window_not_carried(&mut self) -> Result<(), CutoverError> {
        let record = window::load(self.plan).ok().flatten();
        let differing: Vec<(String, String)> = match &record {
            Some(r) => r
                .databases
                .iter()
                .flat_map(|d| d.differing.iter().map(|t| (d.database.clone(), t.clone())))
                .collect(),
            _ => vec![],
        };
        // Files, storage and large objects were carried back or named inside the freeze
        // (`window_carry_back`).
        let t = self.begin(JStep::NewHostWrites)?;
        let found = match self.new_agent() {
            Ok(new) => new_writes::find(self.plan, &new).await,
            Err(e) => Err(e),
        };
        let r = found.and_then(|all| {
            let left: Vec<new_writes::TableWrites> = all
                .into_iter()
                .filter(|w| {
                    // Differing without a replica identity, or created since the switch.
                    w.rows_at_switch.is_none()
                        || differing
                            .iter()
                            .any(|(d, t)| d == &w.database && t == &w.table)
                })
                .collect();
            self.out.new_host_writes = left.iter().map(ToString::to_string).collect();
            new_writes::record_pending(self.plan, &left)?;
            Ok(if left.is_empty() {
                "every write since the switch was carried back by the window".to_string()
            } else {
                format!(
                    "{} table(s) without a replica identity written on the new host since the switch, NOT carried back: {} (the new agent's [allow] replica_identity_full carries such tables whole in the next window)",
                    left.len(),
                    left.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })
        });
        match self.end(JStep::NewHostWrites, t, r) {
            Err(e) if e.is_journal() => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rollback_waits_at_least_thirty_seconds_for_the_old_host() {
        assert_eq!(drain_timeout(1), Duration::from_secs(30));
        assert_eq!(drain_timeout(60), Duration::from_secs(60));
    }
}
