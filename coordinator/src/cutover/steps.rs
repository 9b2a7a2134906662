//! The cutover's forward steps, each journaled by [`Cut::begin`]/[`Cut::end`]: the freeze of the
//! old host, the final delta sync, the proof of equality (and that the old host did not change),
//! the traffic switch and the checks through the public endpoint.

use super::cut::{Cut, ended};
use super::error::CutoverError;
use super::outcome::DeltaSummary;
use super::{SWITCH_DEADLINE, VERIFY_ATTEMPTS, freeze, injected, traffic};
use crate::health::run_checks;
use crate::journal::Step as JStep;
use crate::phase::traced;
use crate::plan::CheckFrom;
use crate::progress::Mode;
use crate::report::now_ms;
use crate::sync::{SyncOptions, SyncReport, verify};
use futures::FutureExt;

/// What the proof's comparisons found: the verify report, and the followed tables written after
/// the freeze position (empty when none is followed).
pub(super) type ProveWork = (
    Result<verify::Report, crate::sync::SyncError>,
    Result<Vec<String>, CutoverError>,
);

impl Cut<'_> {
    pub(super) async fn freeze(&mut self) -> Result<(), CutoverError> {
        for m in self.plan.freeze.methods.clone() {
            let step = JStep::Freeze(m);
            let t = self.begin(step)?;
            if self.freeze_started_ms.is_none() {
                self.freeze_started_ms = Some(now_ms());
                self.rep.freeze_begins();
            }
            // Counted before it acts: a half-applied method is undone too.
            if !self.frozen.contains(&m) {
                self.frozen.push(m);
            }
            let r = match freeze::apply(self.plan, self.old()?, m).await {
                Ok(d) => injected("freeze").map(|()| d),
                Err(e) => Err(e),
            };
            self.end(step, t, r)?;
        }
        if self.plan.freeze.methods.is_empty() {
            self.freeze_started_ms.get_or_insert_with(now_ms);
            self.rep.freeze_begins();
        }
        self.freeze_complete = true;
        Ok(())
    }

    /// The freeze's delta sync, on its own (no database followed, or a rehearsal).
    pub(super) async fn delta(&mut self) -> Result<SyncReport, CutoverError> {
        let t = self.begin(JStep::Delta)?;
        let opts = self.delta_options();
        let r = self.delta_work(&opts).await;
        self.delta_end(t, (r, std::time::Instant::now()))
    }

    pub(super) fn delta_options(&self) -> SyncOptions {
        SyncOptions {
            progress: if self.progress_quiet() {
                Mode::Quiet
            } else {
                Mode::Human
            },
            baseline: true,
            // Followed databases: the follower carried their tables up to the freeze position;
            // only the tables it does not carry are compared (and sequences, large objects).
            following: !self.followed.is_empty(),
            followed: self.followed.iter().cloned().collect(),
            // Inside the freeze: files, trees and databases at once (the freeze would last
            // their sum).
            concurrent: true,
            reporter: Some(self.progress.clone()),
            ..SyncOptions::default()
        }
    }

    /// The delta itself: only reads `self` (it runs beside the catch-up).
    pub(super) async fn delta_work(&self, opts: &SyncOptions) -> Result<SyncReport, CutoverError> {
        let r = match crate::sync::run(self.plan, opts).await {
            Err(e) => Err(CutoverError::Delta(e.to_string())),
            Ok(s) if !s.ok => Err(CutoverError::Delta(s.failures())),
            // A rehearsal does not freeze: its old host may well still be writing.
            Ok(s) if self.rehearsal => Ok(s),
            Ok(s) => deferred_in_freeze(s),
        };
        r.and_then(|s| injected("delta").map(|()| s))
    }

    /// Journals and reports how the delta ended.
    pub(super) fn delta_end(
        &mut self,
        t: std::time::Instant,
        (r, ended): (Result<SyncReport, CutoverError>, std::time::Instant),
    ) -> Result<SyncReport, CutoverError> {
        let (r, summary) = match r {
            Err(e) => (None, Err(e)),
            Ok(s) => {
                let db = |f: fn(&crate::sync::UnitReport) -> u64| {
                    s.units
                        .iter()
                        .filter(|u| u.kind == "database")
                        .map(f)
                        .sum::<u64>()
                };
                self.out.delta = DeltaSummary {
                    bytes: s.bytes,
                    tables: db(|u| u.files),
                    ranges: db(|u| u.ranges),
                    files: s
                        .units
                        .iter()
                        .filter(|u| u.kind != "database")
                        .map(|u| u.files)
                        .sum(),
                };
                let summary = format!(
                    "{} bytes: {} table(s) in {} range(s), {} file(s)",
                    s.bytes, self.out.delta.tables, self.out.delta.ranges, self.out.delta.files
                );
                self.rep.add_sync(&s);
                (Some(s), Ok(summary))
            }
        };
        self.end_at(JStep::Delta, t, ended, summary)?;
        r.ok_or_else(|| CutoverError::Delta("the delta left no report".into()))
    }

    pub(super) fn progress_quiet(&self) -> bool {
        self.progress.mode() == Mode::Quiet
    }

    pub(super) async fn prove(&mut self, delta: &SyncReport) -> Result<(), CutoverError> {
        super::paused("prove").await;
        let t = self.begin(JStep::Prove)?;
        let w = self.prove_work().await;
        self.prove_end(t, delta, (w, std::time::Instant::now()))
    }

    /// The databases whose tables are proven after the switch, under a snapshot of the new
    /// host (see `held_proof`): the followed ones, outside a rehearsal.
    fn proven_later(&self) -> std::collections::BTreeSet<String> {
        if self.rehearsal {
            Default::default()
        } else {
            self.followed.iter().map(|(db, _)| db.clone()).collect()
        }
    }

    /// The comparisons of the proof: only reads both hosts (and `self`).
    pub(super) async fn prove_work(&self) -> ProveWork {
        let later = self.proven_later();
        // The WAL check runs alongside the comparison: both only read.
        tokio::join!(
            async {
                if later.is_empty() {
                    verify::run(self.plan).await
                } else {
                    verify::run_in_freeze(self.plan, &later).await
                }
            },
            async {
                if later.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.wal_quiet().await
                }
            }
        )
    }

    /// The proof's verdict on what [`Cut::prove_work`] found, journaled.
    pub(super) fn prove_end(
        &mut self,
        t: std::time::Instant,
        delta: &SyncReport,
        ((v, wal), ended): (ProveWork, std::time::Instant),
    ) -> Result<(), CutoverError> {
        let later = self.proven_later();
        let r = (|| {
            let v = v.map_err(|e| CutoverError::Agent(e.to_string()))?;
            let wal = wal?;
            self.rep.add_verify(&v);
            self.out.verification = v.rows.clone();
            self.new_at_proof = v.new_tables.clone();
            let differ: Vec<String> = v
                .rows
                .iter()
                .filter(|r| r.status == verify::RowStatus::Differs)
                .map(|r| format!("{} {}: {}", r.kind, r.name, r.detail))
                .collect();
            // Comparisons that could not run are no proof either way: said as such, never as
            // "the hosts differ".
            let not_run: Vec<String> = v
                .rows
                .iter()
                .filter(|r| r.status == verify::RowStatus::CouldNotRun)
                .map(|r| format!("{} {}: {}", r.kind, r.name, r.detail))
                .collect();
            // First: did the old host change since the delta began? Then the freeze did not hold,
            // and that — not the delta — is what the operator must look at.
            if !self.rehearsal {
                let mut changed = Vec::new();
                for u in delta.units.iter().filter(|u| u.kind == "database") {
                    let end = v.old_tables.get(&u.name).cloned().unwrap_or_default();
                    // A followed database's delta fingerprinted only the tables the follower
                    // does not carry; the others are proven by the comparison with the new host.
                    let only = self
                        .followed
                        .iter()
                        .find(|(db, _)| db == &u.name)
                        .map(|(_, t)| t);
                    for (table, fp_end) in &end {
                        if only.is_some_and(|t| !t.contains(table)) {
                            continue;
                        }
                        if u.old_fingerprints.get(table) != Some(fp_end) {
                            changed.push(format!("{} {table}", u.name));
                        }
                    }
                }
                // Followed tables: nothing after the freeze position in the old host's WAL.
                changed.extend(wal);
                if !changed.is_empty() {
                    return Err(CutoverError::OldDatabaseChanged {
                        tables: changed,
                        differ,
                    });
                }
            }
            // The delta has just copied the storage trees inside the freeze: a tree that differs
            // again is one the old host wrote to since — say so, as for the database.
            let storage: Vec<String> = v
                .rows
                .iter()
                .filter(|r| r.status == verify::RowStatus::Differs && r.kind == "storage")
                .map(|r| format!("storage {}: {}", r.name, r.detail))
                .collect();
            if !self.rehearsal && !storage.is_empty() {
                return Err(CutoverError::StorageWritten(format!(
                    " (the trees differ again right after the delta: {})",
                    storage.join("; ")
                )));
            }
            if !differ.is_empty() {
                return Err(CutoverError::Differ(differ));
            }
            if !not_run.is_empty() {
                return Err(CutoverError::CouldNotCompare(not_run));
            }
            injected("prove")?;
            if self.rehearsal {
                return Ok(format!(
                    "{} item(s) equal (a rehearsal does not freeze the old host, so it may change meanwhile)",
                    v.rows.len()
                ));
            }
            if !later.is_empty() {
                return Ok(format!(
                    "{} item(s) equal; no data change reached the old host's WAL after the freeze position; the tables of database(s) {} are proven after the switch",
                    v.rows.len(),
                    later.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            Ok(format!(
                "{} item(s) equal; the old databases did not change during the freeze",
                v.rows.len()
            ))
        })();
        self.end_at(JStep::Prove, t, ended, r).map(|_| ())
    }

    /// Inside the freeze, after the delta: the proof, the snapshots of the new host held for
    /// the proof after the switch, and the rollback window's anchor — at once. All three only
    /// read the hosts, and nothing writes to the new host any more (the followers stopped, the
    /// delta done), so they see the same state; the freeze lasts the longest of them, not their
    /// sum. Journaled one by one as before; when the proof fails, the snapshots and the window
    /// are released by the undo.
    pub(super) async fn prove_hold_anchor(
        &mut self,
        delta: &SyncReport,
    ) -> Result<(), CutoverError> {
        super::paused("prove").await;
        let t_prove = self.begin(JStep::Prove)?;
        let t_hold = self.hold_begin()?;
        let window = self.window_prepare_begin()?;
        let (proved, held, anchored) = tokio::join!(
            traced(super::step_span("prove"), self.prove_work()).then(ended),
            traced(super::step_span("hold snapshots"), async {
                match t_hold {
                    Some(_) => Some(self.hold_work().await),
                    None => None,
                }
            })
            .then(ended),
            traced(super::step_span("window prepare"), async {
                match &window {
                    Some((_, new)) => Some(self.window_prepare_work(new).await),
                    None => None,
                }
            })
            .then(ended)
        );
        let proved = self.prove_end(t_prove, delta, proved);
        let held = match (t_hold, held) {
            (Some(t), (Some(h), at)) => self.hold_end(t, at, delta, h, proved.is_ok()),
            _ => Ok(()),
        };
        let baseline = if proved.is_ok() && held.is_ok() && !self.baseline_pending {
            // Nothing writes to the new host before traffic moves: what the proof saw is the
            // state at the switch, against which a rollback finds the writes it would leave
            // behind.
            super::new_writes::record_baseline(
                self.plan,
                &super::new_writes::Baseline {
                    run: self.out.run.clone(),
                    databases: self.new_at_proof.clone(),
                    ..super::new_writes::Baseline::default()
                },
            )
        } else {
            Ok(())
        };
        // Journaled whatever happened above: a window left `started` would be an open question.
        let anchored = match (window, anchored) {
            (Some((t, _)), (Some(a), at)) => self.window_prepare_end(t, at, a).await,
            _ => Ok(()),
        };
        proved?;
        held?;
        baseline?;
        anchored
    }

    pub(super) async fn switch(&mut self) -> Result<(), CutoverError> {
        let switcher = traffic::switcher(self.plan).await?;
        let Some(s) = switcher else {
            self.skipped(
                JStep::Switch,
                "method none: move traffic to the new host now",
            )?;
            self.progress
                .say(">>> Switch traffic to the new host now (plan [switch] method = \"none\").");
            // The operator may move traffic from here: an undo tells them to move it back.
            self.switched = true;
            self.rep.freeze_ends();
            self.out.freeze_ms = self.freeze_ms();
            return Ok(());
        };
        let t = self.begin(JStep::Switch)?;
        self.switched = true;
        let r = match s
            .switch_to(hostshift_switch::Side::New, SWITCH_DEADLINE)
            .await
        {
            Ok(o) => injected("switch").map(|()| {
                format!(
                    "{} ({} ms){}",
                    o.detail,
                    o.elapsed.as_millis(),
                    if o.changed {
                        ""
                    } else {
                        "; it already pointed there"
                    }
                )
            }),
            Err(e) => Err(CutoverError::Switch(e.to_string())),
        };
        if r.is_ok() {
            self.rep.freeze_ends();
            self.out.freeze_ms = self.freeze_ms();
        }
        self.end(JStep::Switch, t, r).map(|_| ())
    }

    pub(super) async fn verify_public(&mut self) -> Result<(), CutoverError> {
        let t = self.begin(JStep::Verify)?;
        let method_none = self.plan.switch.method == crate::plan::SwitchMethod::None;
        let r = async {
            let mut failed = Vec::new();
            let mut passed = 0;
            if !method_none {
                let specs: Vec<hostshift_shared::health::CheckSpec> = self
                    .plan
                    .switch
                    .verify_urls
                    .iter()
                    .map(|u| {
                        let mut s = hostshift_shared::health::CheckSpec::new(u.clone(), u.clone());
                        s.attempts = VERIFY_ATTEMPTS;
                        s
                    })
                    .collect();
                for r in futures::future::join_all(specs.iter().map(hostshift_shared::health::run)).await {
                    if r.ok {
                        passed += 1;
                    } else {
                        failed.push(format!("{}: {}", r.name, r.detail));
                    }
                }
            }
            for c in run_checks(self.plan, Some(CheckFrom::New), &[]).await {
                if c.result.ok {
                    passed += 1;
                } else {
                    failed.push(format!("{} (new): {}", c.result.name, c.result.detail));
                }
            }
            if !failed.is_empty() {
                return Err(CutoverError::AfterSwitch(failed));
            }
            injected("verify")?;
            if passed == 0 {
                return Ok("no [switch] verify_urls or from = \"new\" health checks in the plan: nothing to check".to_string());
            }
            Ok(if method_none {
                format!("{passed} new-host check(s) pass; [switch] verify_urls are yours to check once you moved traffic")
            } else {
                format!("{passed} check(s) pass through the switched endpoint")
            })
        }
        .await;
        self.end(JStep::Verify, t, r).map(|_| ())
    }
}

/// The freeze's storage delta must leave nothing deferred: a file that still changed while it
/// was read means something still writes to the old tree, and the hosts would differ.
fn deferred_in_freeze(s: SyncReport) -> Result<SyncReport, CutoverError> {
    let changing: Vec<String> = s
        .units
        .iter()
        .filter(|u| u.deferred > 0)
        .map(|u| format!("storage {}: {}", u.name, crate::sync::deferred_summary(u)))
        .collect();
    if changing.is_empty() {
        return Ok(s);
    }
    Err(CutoverError::StorageWritten(format!(
        ": files changed on the old host while the delta read them ({})",
        changing.join("; ")
    )))
}

/// How the cutover names storage written on the old host during the freeze (the docs match it).
pub const STORAGE_WRITER: &str = "something still writes to storage during the freeze";

#[cfg(test)]
mod deferred_tests {
    use super::*;
    use crate::sync::UnitReport;

    fn storage(deferred: u64) -> UnitReport {
        UnitReport {
            kind: "storage".into(),
            name: "uploads".into(),
            status: "copied".into(),
            bytes: 0,
            files: 0,
            skipped_files: 0,
            skipped_bytes: 0,
            ms: 0,
            attempts: 1,
            retried: vec![],
            changes: vec![],
            detail: String::new(),
            ranges: 0,
            old_fingerprints: Default::default(),
            deferred,
            deferred_names: (0..deferred).map(|i| format!("up-{i}.bin")).collect(),
        }
    }

    fn report(units: Vec<UnitReport>) -> SyncReport {
        SyncReport {
            ok: true,
            mode: "pull".into(),
            units,
            bytes: 0,
            files: 0,
            skipped_files: 0,
            ms: 0,
            journal: String::new(),
        }
    }

    #[test]
    fn a_file_deferred_inside_the_freeze_fails_the_delta_naming_it() {
        assert!(deferred_in_freeze(report(vec![storage(0)])).is_ok());
        let err = deferred_in_freeze(report(vec![storage(1)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(STORAGE_WRITER) && err.contains("up-0.bin"),
            "{err}"
        );
    }
}
