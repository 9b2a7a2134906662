//! `hostshift cutover`: the moment traffic moves. Gates → freeze writes on the old host → final
//! delta sync → proof of equality (and that the old host did not change during the freeze) →
//! traffic switch → verification through the public endpoint; undone on any failure.
//!
//! # Journal and state machine
//! Every step writes `started` to the journal (`<state_dir>/<name>/journal.jsonl`, fsynced)
//! before it acts and `done`/`failed` after, under the phase `cutover`; the run itself is the
//! unit `cutover` (its `done` detail is the outcome). [`state::of`] reads it back, so after a
//! crash `cutover --resume` continues and `rollback` knows what to undo — and a plain `cutover`
//! refuses while one is unfinished.
//!
//! # Failure handling
//! - Before anything is frozen (gates): nothing to undo; exit 1.
//! - After the freeze began, before the switch: every freeze method applied (or started) is
//!   undone in reverse order; exit 1, the old host serving as before.
//! - During or after the switch: traffic is switched back to the old host first (a no-op when it
//!   never moved), then the freeze is undone; exit 1.
//! - An undo that fails: exit 3 with the exact commands to finish it by hand (and `hostshift
//!   rollback`, which repeats every undo; each is safe to repeat).
//!
//! The old host's data is never written: the freeze methods are the only changes there, and each
//! is reversible. After a successful cutover the old host **stays frozen** — a write accepted
//! there would be lost — until `rollback` or its decommissioning.
//!
//! # The freeze window
//! From the moment the first freeze method starts until traffic is confirmed on the new host (or,
//! when the cutover is undone, until the old host is unfrozen): the time no write is accepted
//! anywhere. With `method = "none"` it ends when the cutover tells the operator to switch.

pub mod direction;
pub mod error;
pub mod freeze;
pub mod gates;
pub mod new_writes;
pub mod state;
pub mod traffic;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{self, Agent};
use crate::commands::health::run_checks;
use crate::plan::{CheckFrom, FreezeMethod, Plan, Side};
use crate::report::{self, Builder, Kind, Status};
use crate::sync::journal::{self, Journal, Mark, Step as JStep};
use crate::sync::progress::{Mode, Progress};
use crate::sync::{SyncOptions, SyncReport, verify};
use gates::Gate;
use state::{PHASE, ROLLBACK};

pub use error::CutoverError;

/// How long the traffic switch may take to be confirmed.
const SWITCH_DEADLINE: Duration = Duration::from_secs(180);
/// Attempts per public URL after the switch (pauses double from 0.5 s; DNS may need more).
const VERIFY_ATTEMPTS: u32 = 8;

/// How to run the cutover.
pub struct Options {
    /// Check the gates only.
    pub dry_run: bool,
    /// Continue an unfinished cutover from the freeze (its gates passed before).
    pub resume: bool,
    /// Skip the backup gate, with this reason (journaled).
    pub skip_backup_check: Option<String>,
    /// Progress on stderr.
    pub progress: Mode,
    /// `hostshift rehearse --plan`: the same run against scratch targets, except that the old
    /// host is never frozen and traffic never switched (the gates that concern them, the
    /// freeze, the switch and the public checks are skipped). The time of delta + proof is
    /// reported as `rehearsed_freeze_ms`: what the freeze would have lasted.
    pub rehearsal: bool,
    /// Write the cutover's own report folder (the local rehearsal folds it into its own).
    pub write_report: bool,
}

/// How a cutover (or rollback) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Traffic is on the new host; the old host stays frozen.
    Switched,
    /// `--dry-run`: the gates were checked, nothing was touched.
    DryRun,
    /// A gate failed; nothing was touched.
    GatesFailed,
    /// A step failed and everything was undone: the old host serves as before.
    RolledBack,
    /// A step failed and the undo failed too: operator action needed.
    UndoFailed,
    /// The journal could not be written: the run stopped where it was, undoing nothing
    /// unrecorded; the report says where the hosts stand. Operator action needed.
    JournalFailed,
}

impl Outcome {
    /// The journal's and JSON's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Switched => "switched",
            Outcome::DryRun => "dry-run",
            Outcome::GatesFailed => "gates-failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::UndoFailed => "undo-failed",
            Outcome::JournalFailed => "journal-failed",
        }
    }
}

/// One step as it ran (the report's and `--json`'s view; the journal's is
/// [`crate::sync::journal::Step`]).
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// `freeze read-only`, `delta`, `prove`, `switch`, `verify`, `unfreeze …`, `switch back`.
    pub name: String,
    /// `done`, `failed`, `skipped`.
    pub status: String,
    /// Wall time.
    pub ms: u64,
    /// What it did or why it failed.
    pub detail: String,
}

/// What the final delta moved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeltaSummary {
    /// Bytes streamed.
    pub bytes: u64,
    /// Tables that differed.
    pub tables: u64,
    /// Table pieces (key ranges or whole tables) re-copied.
    pub ranges: u64,
    /// Files (storage and config) copied.
    pub files: u64,
}

/// The result of `cutover` or `rollback`.
#[derive(Clone, Debug, Serialize)]
pub struct CutoverReport {
    /// Did what was asked (switched, a dry run whose gates pass, a rollback).
    pub ok: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// The journal's run id.
    pub run: String,
    /// The measured write freeze (see the module docs), when writes were frozen.
    pub freeze_ms: Option<u64>,
    /// The gates' prediction.
    pub predicted_freeze_ms: Option<u64>,
    /// A rehearsal: the delta and proof, timed without freezing anything.
    pub rehearsed_freeze_ms: Option<u64>,
    /// The gates' verdicts (empty on resume and rollback).
    pub gates: Vec<Gate>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// What the delta moved.
    pub delta: DeltaSummary,
    /// The proof: every compared item.
    pub verification: Vec<verify::Row>,
    /// The cause of a failure.
    pub error: Option<String>,
    /// When the undo failed: what to do, in order.
    pub undo_instructions: Vec<String>,
    /// Rollback: tables written on the new host since the switch (not copied back), as
    /// `database schema.table: how the rows moved`.
    pub new_host_writes: Vec<String>,
    /// The report folder.
    pub report_dir: Option<String>,
    /// The journal file.
    pub journal: String,
}

/// A cutover that could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal cannot be written: nothing is done without one.
    #[error("cannot write the journal in {path}: {source}; nothing was done")]
    Journal {
        /// Its folder or file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A journal failure before anything was done.
    fn from_cutover(e: CutoverError, plan: &Plan) -> StartError {
        match e {
            CutoverError::Journal { path, source } => StartError::Journal {
                path: path.display().to_string(),
                source,
            },
            other => StartError::Journal {
                path: plan.state_dir().display().to_string(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// A test-only failure injected at `step` (debug builds: `HOSTSHIFT_TEST_FAIL_AT=step[,step]`),
/// so the tests can prove the undo from every step with real agents, PM2, nginx and AWS.
/// `journal` makes every journal write fail once the freeze is complete.
fn injected(step: &str) -> Result<(), CutoverError> {
    if cfg!(debug_assertions)
        && std::env::var("HOSTSHIFT_TEST_FAIL_AT")
            .is_ok_and(|v| v.split(',').any(|s| s.trim() == step))
    {
        return Err(CutoverError::Injected(step.to_string()));
    }
    Ok(())
}

fn now_ms() -> u64 {
    report::now_ms()
}

/// A cutover or rollback in flight.
struct Cut<'a> {
    plan: &'a Plan,
    journal: Journal,
    progress: Progress,
    rep: Builder,
    out: CutoverReport,
    old: Option<Agent>,
    new: Option<Agent>,
    /// Why an agent could not be reached (agent, address and cause), kept for `--resume`.
    connect_errors: Vec<String>,
    /// Freeze methods applied or started, in order.
    frozen: Vec<FreezeMethod>,
    /// The switch was attempted.
    switched: bool,
    /// Every freeze method of the plan was applied (the injected journal failure starts here).
    freeze_complete: bool,
    /// Wall-clock start of the freeze (ms since the epoch).
    freeze_started_ms: Option<u64>,
    phase: &'static str,
    /// A rehearsal (see [`Options::rehearsal`]).
    rehearsal: bool,
    /// The new host's table fingerprints as the proof found them.
    new_at_proof: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl<'a> Cut<'a> {
    fn new(plan: &'a Plan, mode: Mode, kind_phase: &'static str) -> Result<Cut<'a>, StartError> {
        let dir = plan.state_dir();
        let journal = Journal::open(&dir).map_err(|source| StartError::Journal {
            path: dir.display().to_string(),
            source,
        })?;
        let out = CutoverReport {
            ok: false,
            outcome: Outcome::GatesFailed,
            run: journal.run().to_string(),
            freeze_ms: None,
            predicted_freeze_ms: None,
            rehearsed_freeze_ms: None,
            gates: vec![],
            steps: vec![],
            delta: DeltaSummary::default(),
            verification: vec![],
            error: None,
            undo_instructions: vec![],
            new_host_writes: vec![],
            report_dir: None,
            journal: journal.path().display().to_string(),
        };
        Ok(Cut {
            plan,
            journal,
            progress: Progress::new(mode),
            rep: Builder::for_plan(
                if kind_phase == ROLLBACK {
                    Kind::Rollback
                } else {
                    Kind::Cutover
                },
                plan,
            ),
            out,
            old: None,
            new: None,
            connect_errors: vec![],
            frozen: vec![],
            switched: false,
            freeze_complete: false,
            freeze_started_ms: None,
            phase: kind_phase,
            rehearsal: false,
            new_at_proof: Default::default(),
        })
    }

    /// Journals `step` (fsynced).
    ///
    /// # Errors
    /// [`CutoverError::Journal`]: the caller stops — acting on without a record is not allowed.
    fn record(&self, step: JStep, mark: Mark, detail: &str) -> Result<(), CutoverError> {
        let written = if self.freeze_complete && injected("journal").is_err() {
            Err(std::io::Error::other(
                "injected failure at journal (HOSTSHIFT_TEST_FAIL_AT, debug builds only)",
            ))
        } else {
            self.journal.record_step(self.phase, step, mark, detail)
        };
        written.map_err(|source| CutoverError::Journal {
            path: self.journal.path().to_path_buf(),
            source,
        })
    }

    /// Journals `step` as started; returns its start time.
    fn begin(&mut self, step: JStep) -> Result<Instant, CutoverError> {
        self.progress.say(&format!("{step} ..."));
        self.record(step, Mark::Started, "")?;
        Ok(Instant::now())
    }

    /// Journals and reports how `step` ended; passes the result on (a journal that cannot be
    /// written turns it into that failure: acting on without a record is not allowed).
    fn end(
        &mut self,
        step: JStep,
        t: Instant,
        r: Result<String, CutoverError>,
    ) -> Result<String, CutoverError> {
        let (mark, detail) = match &r {
            Ok(d) => (Mark::Done, d.clone()),
            Err(e) => (Mark::Failed, e.to_string()),
        };
        let r = match self.record(step, mark, &detail) {
            Err(j) => Err(j),
            Ok(()) => r,
        };
        let shown = match &r {
            Ok(d) => d.clone(),
            Err(e) => e.to_string(),
        };
        self.progress.say(&format!(
            "{step}: {} — {shown}",
            if r.is_ok() { "ok" } else { "FAILED" },
        ));
        self.out.steps.push(StepReport {
            name: step.to_string(),
            status: if r.is_ok() { "done" } else { "failed" }.into(),
            ms: t.elapsed().as_millis() as u64,
            detail: shown.clone(),
        });
        self.rep.phase_since(
            step.to_string(),
            t,
            if r.is_ok() {
                Status::Ok
            } else {
                Status::Failed
            },
            shown,
        );
        r
    }

    fn skipped(&mut self, step: JStep, why: &str) -> Result<(), CutoverError> {
        self.record(step, Mark::Skipped, why)?;
        self.progress.say(&format!("{step}: skipped — {why}"));
        self.out.steps.push(StepReport {
            name: step.to_string(),
            status: "skipped".into(),
            ms: 0,
            detail: why.into(),
        });
        self.rep.skipped(step.to_string(), why);
        Ok(())
    }

    async fn connect(&mut self) {
        let (old, new) = tokio::join!(
            client::connect(self.plan, Side::Old),
            client::connect(self.plan, Side::New)
        );
        match old {
            Ok(a) => self.old = Some(a),
            Err(e) => self.connect_errors.push(e.to_string()),
        }
        match new {
            Ok(a) => self.new = Some(a),
            Err(e) => self.connect_errors.push(e.to_string()),
        }
    }

    fn old(&self) -> Result<&Agent, CutoverError> {
        self.old
            .as_ref()
            .ok_or(CutoverError::NotConnected(Side::Old))
    }

    async fn freeze(&mut self) -> Result<(), CutoverError> {
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

    async fn delta(&mut self) -> Result<SyncReport, CutoverError> {
        let t = self.begin(JStep::Delta)?;
        let opts = SyncOptions {
            progress: if self.progress_quiet() {
                Mode::Quiet
            } else {
                Mode::Human
            },
            baseline: true,
            ..SyncOptions::default()
        };
        let r = match crate::sync::run(self.plan, &opts).await {
            Err(e) => Err(CutoverError::Delta(e.to_string())),
            Ok(s) if !s.ok => Err(CutoverError::Delta(s.failures())),
            // A rehearsal does not freeze: its old host may well still be writing.
            Ok(s) if self.rehearsal => Ok(s),
            Ok(s) => deferred_in_freeze(s),
        };
        let r = r.and_then(|s| injected("delta").map(|()| s));
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
        self.end(JStep::Delta, t, summary)?;
        r.ok_or_else(|| CutoverError::Delta("the delta left no report".into()))
    }

    fn progress_quiet(&self) -> bool {
        self.progress.mode() == Mode::Quiet
    }

    async fn prove(&mut self, delta: &SyncReport) -> Result<(), CutoverError> {
        let t = self.begin(JStep::Prove)?;
        let r = async {
            let v = verify::run(self.plan)
                .await
                .map_err(|e| CutoverError::Agent(e.to_string()))?;
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
                    for (table, fp_end) in &end {
                        if u.old_fingerprints.get(table) != Some(fp_end) {
                            changed.push(format!("{} {table}", u.name));
                        }
                    }
                }
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
            Ok(format!(
                "{} item(s) equal; the old databases did not change during the freeze",
                v.rows.len()
            ))
        }
        .await;
        self.end(JStep::Prove, t, r).map(|_| ())
    }

    async fn switch(&mut self) -> Result<(), CutoverError> {
        let switcher = traffic::switcher(self.plan).await?;
        let Some(s) = switcher else {
            self.skipped(
                JStep::Switch,
                "method none: move traffic to the new host now",
            )?;
            self.progress
                .say(">>> Switch traffic to the new host now (plan [switch] method = \"none\").");
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

    async fn verify_public(&mut self) -> Result<(), CutoverError> {
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

    fn freeze_ms(&self) -> Option<u64> {
        self.freeze_started_ms.map(|s| now_ms().saturating_sub(s))
    }

    /// Where the hosts stand, from what this run did (and the run it resumed): for a message
    /// that stops without undoing.
    fn hosts_state(&self) -> String {
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
    fn journal_instructions(&self, finished: bool) -> Vec<String> {
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
    async fn undo(&mut self, methods: Vec<FreezeMethod>, switch_back: bool) -> Vec<String> {
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
    async fn fail(&mut self, cause: CutoverError) {
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
        let methods = self.frozen.clone();
        let switch_back = self.switched;
        let manual = self.undo(methods, switch_back).await;
        self.rep.freeze_ends();
        if self.out.freeze_ms.is_none() || switch_back {
            self.out.freeze_ms = self.freeze_ms();
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
    fn journal_failed_at_the_end(&mut self, e: &CutoverError) {
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
    async fn new_host_writes(&mut self) -> Result<(), CutoverError> {
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

    fn finish(mut self, quiet: bool, write_report: bool) -> CutoverReport {
        if let Some(ms) = self.out.freeze_ms {
            self.rep.note(format!("write freeze: {ms} ms"));
        }
        if self.out.delta.bytes > 0 || self.out.delta.ranges > 0 {
            self.rep.note(format!(
                "final delta: {} bytes, {} table(s), {} range(s), {} file(s)",
                self.out.delta.bytes,
                self.out.delta.tables,
                self.out.delta.ranges,
                self.out.delta.files
            ));
        }
        let plan_path = self.plan.path.display().to_string();
        match self.out.outcome {
            Outcome::Switched => {
                self.rep.next_step(format!(
                    "Watch the new host; to go back: hostshift rollback --plan {plan_path} --yes (writes made on the new host since the switch are not copied back)"
                ));
                self.rep.next_step(
                    "The old host stays frozen (read-only, maintenance page): decommission it once you trust the new one, keeping its last backup",
                );
            }
            Outcome::UndoFailed | Outcome::JournalFailed => {
                for i in &self.out.undo_instructions {
                    self.rep.next_step(i.clone());
                }
            }
            _ => {}
        }
        let ok = self.out.ok;
        if write_report && !matches!(self.out.outcome, Outcome::DryRun) {
            self.out.report_dir = report::publish(self.plan, &self.rep.finish(ok), quiet)
                .map(|d| d.display().to_string());
        }
        self.out
    }
}

/// Runs the cutover (or, with `opts.resume`, continues one whose gates passed earlier: `st` is
/// the journal's state).
///
/// # Errors
/// [`StartError`] when the journal cannot be opened or written before anything was done; every
/// later failure is in the report.
pub async fn run(
    plan: &Plan,
    opts: &Options,
    st: &state::State,
) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, opts.progress, PHASE)?;
    c.rehearsal = opts.rehearsal;
    let quiet = opts.progress == Mode::Quiet;
    c.connect().await;
    if opts.resume {
        c.freeze_started_ms = st.freeze_started_ms;
        // The earlier run's freeze and switch count: a failure undoes them too.
        for m in &st.frozen_methods {
            if !c.frozen.contains(m) {
                c.frozen.push(*m);
            }
        }
        c.switched |= st.switched;
        c.record(
            JStep::Cutover,
            Mark::Resumed,
            st.run.as_deref().unwrap_or(""),
        )
        .map_err(|e| StartError::from_cutover(e, plan))?;
    } else {
        if !opts.dry_run {
            c.record(JStep::Cutover, Mark::Started, &direction::of(plan))
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let t = Instant::now();
        if !opts.dry_run {
            c.record(JStep::Gates, Mark::Started, "")
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let events = journal::read(&plan.state_dir()).map_err(|source| StartError::Journal {
            path: plan.state_dir().display().to_string(),
            source,
        })?;
        let inputs = gates::Inputs {
            plan,
            old: c.old.as_ref(),
            new: c.new.as_ref(),
            connect_errors: c.connect_errors.clone(),
            events: &events,
            skip_backup: opts.skip_backup_check.as_deref(),
            rehearsal: opts.rehearsal,
        };
        let (g, predicted) = gates::check(&inputs).await;
        c.out.gates = g;
        c.out.predicted_freeze_ms = predicted;
        let failed: Vec<String> = c
            .out
            .gates
            .iter()
            .filter(|g| !g.ok)
            .map(|g| format!("{}: {}", g.name, g.detail))
            .collect();
        let verdict = if failed.is_empty() {
            Ok(format!("{} gates pass", c.out.gates.len()))
        } else {
            Err(CutoverError::Gate(failed.join("; ")))
        };
        if let Some(reason) = &opts.skip_backup_check
            && !opts.dry_run
        {
            c.record(JStep::BackupCheckSkipped, Mark::Done, reason)
                .map_err(|e| StartError::from_cutover(e, plan))?;
        }
        let verdict = if opts.dry_run {
            // A dry run journals nothing.
            c.out.steps.push(StepReport {
                name: JStep::Gates.to_string(),
                status: if verdict.is_ok() { "done" } else { "failed" }.into(),
                ms: t.elapsed().as_millis() as u64,
                detail: match &verdict {
                    Ok(d) => d.clone(),
                    Err(e) => e.to_string(),
                },
            });
            verdict
        } else {
            c.end(JStep::Gates, t, verdict)
        };
        if let Err(e) = verdict {
            c.out.error = Some(e.to_string());
            c.out.outcome = Outcome::GatesFailed;
            if e.is_journal() {
                // Nothing was touched: the journal's unfinished run counts as stopped at the
                // gates (see `state::of`).
                return Err(StartError::from_cutover(e, plan));
            }
            if !opts.dry_run
                && let Err(j) = c.record(JStep::Cutover, Mark::Done, Outcome::GatesFailed.as_str())
            {
                c.out.error = Some(format!(
                    "{e}; {j} (nothing was touched, so nothing is lost)"
                ));
            }
            return Ok(c.finish(quiet, opts.write_report));
        }
        if opts.dry_run {
            c.out.ok = true;
            c.out.outcome = Outcome::DryRun;
            return Ok(c.finish(quiet, opts.write_report));
        }
    }
    let result: Result<(), CutoverError> = async {
        if c.old.is_none() || c.new.is_none() {
            return Err(CutoverError::Unreachable(c.connect_errors.clone()));
        }
        if c.rehearsal {
            let t = Instant::now();
            c.skipped(JStep::FreezeAll, "rehearsal: the old host keeps serving")?;
            let delta = c.delta().await?;
            c.prove(&delta).await?;
            c.out.rehearsed_freeze_ms = Some(t.elapsed().as_millis() as u64);
            c.skipped(JStep::Switch, "rehearsal: traffic stays where it is")?;
            return Ok(());
        }
        c.freeze().await?;
        let delta = c.delta().await?;
        c.prove(&delta).await?;
        // Nothing writes to the new host before traffic moves: what the proof saw is the state
        // at the switch, against which a rollback finds the writes it would leave behind.
        new_writes::record_baseline(
            plan,
            &new_writes::Baseline {
                run: c.out.run.clone(),
                databases: c.new_at_proof.clone(),
            },
        )?;
        c.switch().await?;
        c.verify_public().await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            c.out.ok = true;
            c.out.outcome = Outcome::Switched;
            if let Err(e) = c.record(JStep::Cutover, Mark::Done, Outcome::Switched.as_str()) {
                c.journal_failed_at_the_end(&e);
            }
        }
        Err(cause) => c.fail(cause).await,
    }
    Ok(c.finish(quiet, opts.write_report))
}

/// `hostshift rollback`: traffic back to the old host (when the plan has a switch) and every
/// freeze method of the plan undone there — whatever the journal says, since each undo is
/// idempotent.
///
/// # Errors
/// [`StartError`] when the journal cannot be opened or written before anything was done.
pub async fn rollback(plan: &Plan, mode: Mode) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, mode, ROLLBACK)?;
    let quiet = mode == Mode::Quiet;
    c.connect().await;
    c.record(JStep::Rollback, Mark::Started, "")
        .map_err(|e| StartError::from_cutover(e, plan))?;
    if !c.connect_errors.is_empty() {
        c.progress.say(&c.connect_errors.join("; "));
    }
    let methods = plan.freeze.methods.clone();
    // Everything is undone regardless of the journal (each undo is idempotent), so the state
    // reported on a journal failure is "may still be frozen".
    c.frozen = methods.clone();
    c.switched = true;
    let manual = c.undo(methods, true).await;
    c.rep.skipped("freeze", "rollback");
    let writes = c.new_host_writes().await;
    let recorded = match writes {
        Err(e) => Err(e),
        Ok(()) if manual.is_empty() => {
            c.out.ok = true;
            c.out.outcome = Outcome::RolledBack;
            c.record(JStep::Rollback, Mark::Done, "")
        }
        Ok(()) => {
            c.out.outcome = Outcome::UndoFailed;
            c.out.error = Some(match &c.connect_errors[..] {
                [] => "part of the rollback failed".to_string(),
                e => format!("part of the rollback failed: {}", e.join("; ")),
            });
            c.out.undo_instructions = manual;
            c.record(JStep::Rollback, Mark::Failed, "")
        }
    };
    if let Err(e) = recorded {
        c.journal_failed_at_the_end(&e);
    }
    Ok(c.finish(quiet, true))
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
