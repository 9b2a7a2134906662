//! Undoing a cutover, newest first: the switch back (when traffic may have moved), then each
//! freeze method; what cannot be undone becomes instructions to run by hand. A journal that
//! cannot be written stops the run where it is ([`Cut::fail`]), since an unrecorded undo would
//! leave a journal that contradicts the hosts. Rollback also names the new host's writes since
//! the switch ([`Cut::new_host_writes`]).

use super::cut::Cut;
use super::error::CutoverError;
use super::outcome::Outcome;
use super::{SWITCH_DEADLINE, freeze, injected, new_writes, traffic};
use crate::journal::{Mark, Step as JStep};
use crate::plan::{FreezeMethod, Side};

impl Cut<'_> {
    /// Where the hosts stand, from what this run did (and the run it resumed): for a message
    /// that stops without undoing.
    pub(super) fn hosts_state(&self) -> String {
        let frozen = if self.frozen.is_empty() {
            "the old host is not frozen".to_string()
        } else {
            format!(
                "the old host is frozen ({})",
                self.frozen
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let traffic = if self.switched {
            "traffic was (or may have been) switched to the new host"
        } else {
            "traffic is on the old host"
        };
        format!("{frozen}; {traffic}")
    }

    /// What to run once the journal can be written again (the commands are safe to repeat).
    pub(super) fn journal_instructions(&self, finished: bool) -> Vec<String> {
        let p = self.plan.path.display();
        let mut out = vec![format!(
            "Make the journal writable again ({}: a full disk, a read-only mount, its permissions).",
            self.journal.path().display()
        )];
        if finished {
            out.push(format!(
                "The cutover did finish but the journal does not say so: run `hostshift rollback --plan {p} --yes` to go back, or `hostshift cutover --resume --plan {p} --yes` to record it (it repeats the delta, proof and switch; each is safe to repeat)."
            ));
        } else {
            out.push(format!(
                "Then undo with `hostshift rollback --plan {p} --yes` (each undo is safe to repeat), or finish with `hostshift cutover --resume --plan {p} --yes`."
            ));
        }
        out
    }

    /// Undoes what was done, newest first: the switch (if attempted), then each freeze method.
    /// Returns the instructions for what could not be undone (empty = all undone). A journal
    /// that cannot be written stops the undo there (nothing is undone unrecorded).
    pub(super) async fn undo(
        &mut self,
        methods: Vec<FreezeMethod>,
        switch_back: bool,
    ) -> Vec<String> {
        let mut manual = Vec::new();
        let fail_undo = injected("undo").is_err();
        let mut journal_error: Option<CutoverError> = None;
        if switch_back {
            let step = JStep::SwitchBack;
            let r = match self.begin(step) {
                Err(e) => Err(e),
                Ok(t) => {
                    let r = async {
                        if fail_undo {
                            return Err(CutoverError::Injected("undo".into()));
                        }
                        match traffic::switcher(self.plan).await? {
                            None => {
                                self.progress.say(
                                    ">>> Move traffic back to the old host NOW, by hand (plan [switch] method = \"none\": hostshift cannot).",
                                );
                                Ok("method none: move traffic back to the old host by hand now (DNS, load balancer or address): hostshift does not switch it".to_string())
                            }
                            Some(s) => s
                                .switch_to(hostshift_switch::Side::Old, SWITCH_DEADLINE)
                                .await
                                .map(|o| o.detail)
                                .map_err(|e| CutoverError::Switch(e.to_string())),
                        }
                    }
                    .await;
                    self.end(step, t, r)
                }
            };
            if let Err(e) = r {
                manual.push(traffic::manual_switch_back(self.plan));
                if e.is_journal() {
                    journal_error = Some(e);
                }
            }
        }
        for m in methods.into_iter().rev() {
            if journal_error.is_some() {
                manual.push(freeze::manual_undo(self.plan, m));
                continue;
            }
            let step = JStep::Unfreeze(m);
            let r = match self.begin(step) {
                Err(e) => Err(e),
                Ok(t) => {
                    let r = if fail_undo {
                        Err(CutoverError::Injected("undo".into()))
                    } else {
                        match self.old() {
                            Ok(old) => freeze::undo(self.plan, old, m).await,
                            Err(e) => Err(e),
                        }
                    };
                    self.end(step, t, r)
                }
            };
            if let Err(e) = r {
                manual.push(freeze::manual_undo(self.plan, m));
                if e.is_journal() {
                    journal_error = Some(e);
                }
            }
        }
        if !manual.is_empty() {
            manual.insert(
                0,
                match &journal_error {
                    Some(e) => format!(
                        "The undo stopped: {e}. {} Or by hand:",
                        self.journal_instructions(false).join(" ")
                    ),
                    None => format!(
                        "When the cause is fixed, run `hostshift rollback --plan {} --yes`: it repeats every undo (each is safe to repeat). Or by hand:",
                        self.plan.path.display()
                    ),
                },
            );
        }
        manual
    }

    /// A step failed: undo everything and record how it ended — unless the failure is the
    /// journal itself: then nothing more is done (an unrecorded undo would leave a journal that
    /// contradicts the hosts), and the report says where the hosts stand and what to run.
    pub(super) async fn fail(&mut self, cause: CutoverError) {
        if cause.is_journal() {
            self.progress
                .say(&format!("cutover stopped: {cause}; {}", self.hosts_state()));
            self.out.error = Some(format!(
                "{cause}: the cutover stopped there, undoing nothing; {}",
                self.hosts_state()
            ));
            self.out.outcome = Outcome::JournalFailed;
            self.out.undo_instructions = self.journal_instructions(false);
            self.out.ok = false;
            return;
        }
        self.progress
            .say(&format!("cutover failed: {cause}; undoing"));
        self.out.error = Some(cause.to_string());
        self.held_after_failure().await;
        let methods = self.frozen.clone();
        let switch_back = self.switched;
        let manual = self.undo(methods, switch_back).await;
        // The proof after the switch failed while the new host served: name what it took
        // meanwhile (not copied back), as a rollback does.
        if self.proof_after_switch_started
            && switch_back
            && let Err(e) = self.new_host_writes().await
        {
            self.out.outcome = Outcome::RolledBack;
            self.journal_failed_at_the_end(&e);
            self.out.ok = false;
            return;
        }
        self.rep.freeze_ends();
        if self.out.freeze_ms.is_none() || switch_back {
            self.out.freeze_ms = self.freeze_ms();
        }
        // The old host serves again: the follow is removed so that no slot keeps WAL there
        // (start it again for the next attempt). Not while the old host is still frozen.
        let cleaned = if self.follow_used && manual.is_empty() {
            self.follow_cleanup().await
        } else {
            Ok(())
        };
        if let Err(e) = cleaned {
            self.out.outcome = Outcome::RolledBack;
            self.journal_failed_at_the_end(&e);
            self.out.ok = false;
            return;
        }
        let recorded = if manual.is_empty() {
            self.out.outcome = Outcome::RolledBack;
            self.record(JStep::Cutover, Mark::Done, Outcome::RolledBack.as_str())
        } else {
            self.out.outcome = Outcome::UndoFailed;
            self.out.undo_instructions = manual;
            self.record(JStep::Cutover, Mark::UndoFailed, "")
        };
        if let Err(e) = recorded {
            self.journal_failed_at_the_end(&e);
        }
        self.out.ok = false;
    }

    /// The run's last journal line could not be written: said in the report, with what to run.
    pub(super) fn journal_failed_at_the_end(&mut self, e: &CutoverError) {
        let finished = self.out.outcome == Outcome::Switched;
        self.out.error = Some(format!(
            "{}{e}: the journal does not know how this run ended; {}",
            self.out
                .error
                .as_deref()
                .map(|c| format!("{c}; then "))
                .unwrap_or_default(),
            self.hosts_state()
        ));
        self.out.outcome = Outcome::JournalFailed;
        self.out.ok = false;
        let mut i = self.journal_instructions(finished);
        i.append(&mut self.out.undo_instructions);
        self.out.undo_instructions = i;
    }

    /// Rollback: names the tables written on the new host since the switch (they are not copied
    /// back) and keeps the list so that `sync` refuses to overwrite them.
    ///
    /// # Errors
    /// Only [`CutoverError::Journal`]: what it finds is reported, not a failure of the rollback.
    pub(super) async fn new_host_writes(&mut self) -> Result<(), CutoverError> {
        let step = JStep::NewHostWrites;
        let t = self.begin(step)?;
        let found = match &self.new {
            Some(new) => new_writes::find(self.plan, new).await,
            None => Err(CutoverError::NotConnected(Side::New)),
        };
        let (found, r) = match found {
            Ok(w) if w.is_empty() => (w, Ok("none since the switch".to_string())),
            Ok(w) => {
                let r = Ok(format!(
                    "{} table(s) written on the new host since the switch, NOT copied back: {}",
                    w.len(),
                    w.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                (w, r)
            }
            Err(e) => (
                vec![new_writes::TableWrites {
                    database: "?".into(),
                    table: format!("(not checked: {e})"),
                    rows_at_switch: None,
                    rows_now: None,
                }],
                Err(CutoverError::Agent(format!(
                    "cannot check the new host for writes since the switch: {e}"
                ))),
            ),
        };
        self.out.new_host_writes = found.iter().map(ToString::to_string).collect();
        let kept = new_writes::record_pending(self.plan, &found);
        let r = match (r, kept) {
            (r, Ok(())) => r,
            (Ok(d), Err(e)) => Err(CutoverError::Agent(format!("{d}; {e}"))),
            (Err(d), Err(e)) => Err(CutoverError::Agent(format!("{d}; {e}"))),
        };
        // Reported, not a failure of the rollback: traffic is back either way.
        match self.end(step, t, r) {
            Err(e) if e.is_journal() => Err(e),
            _ => Ok(()),
        }
    }
}
