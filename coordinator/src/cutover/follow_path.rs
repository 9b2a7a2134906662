//! The cutover of a followed database (see `docs/cutover.md`, "The follow path"): after the
//! freeze, the old host's WAL position is read and the cutover waits until the new host's
//! follower applied everything committed before it — no table is scanned for that. Meanwhile
//! ([`Cut::catch_up_and_delta`]: both at once) the freeze's delta settles only what the stream
//! does not carry: sequences, large objects and the tables without a replica identity (with the
//! key-range delta), plus files and storage as always. After the cutover, after its undo and
//! after a rollback the follow is removed ([`Cut::follow_cleanup`]): follower stopped and
//! forgotten, slot and publication dropped on the old host, so no slot keeps WAL there.
//!
//! A database whose follower does not run (never started, stopped, failed) takes the fallback:
//! today's key-range delta of every table inside the freeze.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::cut::{Cut, ended};
use super::error::CutoverError;
use crate::follow;
use crate::journal::Step as JStep;
use crate::phase::traced;
use crate::plan::OnNew;
use crate::sync::SyncReport;
use futures::FutureExt;

/// One followed database's catch-up inside the freeze (the report's and `--json`'s view).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowCatchUp {
    /// The plan's database.
    pub database: String,
    /// The old host's WAL position read after the freeze (`X/Y`): the follower applied up to it.
    pub lsn: String,
    /// The same position as a number.
    #[serde(skip)]
    pub at: u64,
    /// How long the wait took.
    pub waited_ms: u64,
    /// Tables the follower does not carry (no replica identity): compared and copied with the
    /// key-range delta inside the freeze.
    pub not_followed: Vec<String>,
}

/// The longest the cutover waits for a follower inside the freeze: the freeze budget, at least
/// 5 s.
fn catch_up_timeout(budget_secs: u64) -> Duration {
    Duration::from_secs(budget_secs.max(5))
}

impl Cut<'_> {
    /// The databases whose follower runs (plan name, tables it does not carry), asked of the new
    /// agent right after the freeze: their delta covers only what the stream does not carry.
    /// Empty: the fallback, today's key-range delta of every table (nothing is journaled).
    pub(super) async fn followed_now(
        &mut self,
    ) -> Result<Vec<(String, Vec<String>)>, CutoverError> {
        let new = self
            .new
            .clone()
            .ok_or(CutoverError::NotConnected(crate::plan::Side::New))?;
        let followed = follow::following_with_tables(self.plan, &new)
            .await
            .map_err(|e| CutoverError::Agent(format!("the new agent's followers: {e}")))?;
        if followed.is_empty() && self.resumed {
            // A resumed run whose first run caught up and stopped the followers: their slot is
            // still there, and is removed at the end like any other.
            self.follow_used = matches!(
                follow::status(self.plan).await,
                Ok(s) if s.iter().any(|d| d.slot || d.publication)
            );
        }
        Ok(followed)
    }

    /// The catch-up of `followed` (from [`Cut::followed_now`]) and the freeze's delta, at once:
    /// the delta settles only what the stream does not carry (sequences, large objects, tables
    /// without a replica identity, files, storage), none of which the follower writes, so it
    /// need not wait for the follower — the freeze lasts the longer of the two, not their sum.
    /// Both steps are journaled as usual (`catch-up` only when a database is followed).
    pub(super) async fn catch_up_and_delta(
        &mut self,
        followed: Vec<(String, Vec<String>)>,
    ) -> Result<SyncReport, CutoverError> {
        if followed.is_empty() {
            return traced(super::step_span("delta"), self.delta()).await;
        }
        let t_catch = self.begin(JStep::CatchUp)?;
        self.follow_used = true;
        self.followed = followed;
        let t_delta = self.begin(JStep::Delta)?;
        let opts = self.delta_options();
        let (new, old) = (self.new.clone(), self.old.clone());
        let timeout = catch_up_timeout(self.plan.freeze.budget_secs);
        let (caught, delta) = tokio::join!(
            async {
                let old = old.ok_or(CutoverError::NotConnected(crate::plan::Side::Old))?;
                let new = new.ok_or(CutoverError::NotConnected(crate::plan::Side::New))?;
                traced(
                    super::step_span("catch-up"),
                    catch_up(self.plan, &old, &new, &self.followed, timeout),
                )
                .await
            }
            .then(ended),
            traced(super::step_span("delta"), self.delta_work(&opts)).then(ended)
        );
        let caught = self.catch_up_end(t_catch, caught);
        let delta = self.delta_end(t_delta, delta);
        // The catch-up's failure first: it is why the delta cannot be trusted either.
        caught?;
        delta
    }

    /// Journals and reports how the catch-up ended.
    fn catch_up_end(
        &mut self,
        t: Instant,
        (r, ended): (Result<Vec<FollowCatchUp>, CutoverError>, Instant),
    ) -> Result<String, CutoverError> {
        let detail = r.map(|done| {
            let d = done
                .iter()
                .map(|c| {
                    format!(
                        "database {}: follower applied up to {} in {} ms; {} table(s) not followed (key-range delta)",
                        c.database,
                        c.lsn,
                        c.waited_ms,
                        c.not_followed.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            self.out.follow = done;
            d
        });
        self.end_at(JStep::CatchUp, t, ended, detail)
    }

    /// Removes the follow (follower, origin, slot, publication, grant) after a cutover, its undo
    /// or a rollback. A failure is reported with what to run, never a failure of the run: traffic
    /// is where it should be either way. Only a journal failure is passed on.
    pub(super) async fn follow_cleanup(&mut self) -> Result<(), CutoverError> {
        let t = self.begin(JStep::FollowCleanup)?;
        let r = match follow::cleanup(self.plan).await {
            Ok(c) => Ok(c
                .iter()
                .map(|c| {
                    format!(
                        "database {}: slot {}, publication {}",
                        c.database,
                        if c.dropped_slot { "dropped" } else { "none" },
                        if c.dropped_publication {
                            "dropped"
                        } else {
                            "none"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")),
            Err(e) => {
                let hint = format!(
                    "the follow's slot may still keep WAL on the old host: run `hostshift follow cleanup --plan {}`",
                    self.plan.path.display()
                );
                self.out.undo_instructions.push(hint.clone());
                Err(CutoverError::Agent(format!("{e}; {hint}")))
            }
        };
        match self.end(JStep::FollowCleanup, t, r) {
            Err(e) if e.is_journal() => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the old host still has a follow of this plan (slot or publication) or the new
    /// host a follower: then a rollback removes it.
    pub(super) async fn follow_present(&self) -> bool {
        match follow::status(self.plan).await {
            Ok(s) => s
                .iter()
                .any(|d| d.slot || d.publication || d.state != "not following"),
            // Unknown: cleanup is idempotent, and its failure is reported.
            Err(_) => true,
        }
    }
}

/// Waits (inside the freeze) until each followed database's follower applied up to the old
/// host's current position, then stops the followers: nothing but the delta writes to the new
/// host from then on.
async fn catch_up(
    plan: &crate::plan::Plan,
    old: &crate::client::Agent,
    new: &crate::client::Agent,
    followed: &[(String, Vec<String>)],
    timeout: Duration,
) -> Result<Vec<FollowCatchUp>, CutoverError> {
    let mut done = Vec::new();
    for (db, not_followed) in followed {
        let d = plan
            .databases
            .iter()
            .find(|d| &d.name == db)
            .ok_or_else(|| CutoverError::Agent(format!("database {db} is not in the plan")))?;
        let lsn = follow::old_position(plan, old, db)
            .await
            .map_err(|e| CutoverError::CatchUp(e.to_string()))?;
        let started = Instant::now();
        follow::wait_applied(new, d.on_new(), lsn, timeout)
            .await
            .map_err(|e| CutoverError::CatchUp(e.to_string()))?;
        done.push(FollowCatchUp {
            database: db.to_string(),
            lsn: follow::lsn_text(lsn),
            at: lsn,
            waited_ms: started.elapsed().as_millis() as u64,
            not_followed: not_followed.clone(),
        });
    }
    // Caught up and the old host frozen: nothing is left for the followers to apply.
    follow::stop(plan)
        .await
        .map_err(|e| CutoverError::CatchUp(e.to_string()))?;
    super::injected("catch-up")?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_waits_at_least_five_seconds_and_otherwise_the_freeze_budget() {
        assert_eq!(catch_up_timeout(0), Duration::from_secs(5));
        assert_eq!(catch_up_timeout(30), Duration::from_secs(30));
    }
}
