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
pub mod freeze;
pub mod gates;
pub mod new_writes;
pub mod state;
pub mod traffic;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{self, Agent};
use crate::commands::health::run_checks;
use crate::plan::{CheckFrom, FreezeMethod, Plan, Side};
use crate::report::{self, Builder, Kind, Status};
use crate::sync::journal::{self, Journal};
use crate::sync::progress::{Mode, Progress};
use crate::sync::{SyncOptions, SyncReport, verify};
use gates::Gate;
use state::{PHASE, ROLLBACK, RUN_UNIT};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
        }
    }
}

/// One step as it ran.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
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
    pub steps: Vec<Step>,
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
    #[error("cannot write the journal in {path}: {source}")]
    Journal {
        /// Its folder.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A test-only failure injected at `step` (debug builds: `HOSTSHIFT_TEST_FAIL_AT=step[,step]`),
/// so the tests can prove the undo from every step with real agents, PM2, nginx and AWS.
fn injected(step: &str) -> Result<(), String> {
    if cfg!(debug_assertions)
        && std::env::var("HOSTSHIFT_TEST_FAIL_AT")
            .is_ok_and(|v| v.split(',').any(|s| s.trim() == step))
    {
        return Err(format!(
            "injected failure at {step} (HOSTSHIFT_TEST_FAIL_AT, debug builds only)"
        ));
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
    /// Freeze methods applied or started, in order.
    frozen: Vec<FreezeMethod>,
    /// The switch was attempted.
    switched: bool,
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
            frozen: vec![],
            switched: false,
            freeze_started_ms: None,
            phase: kind_phase,
            rehearsal: false,
            new_at_proof: Default::default(),
        })
    }

    fn record(&self, unit: &str, status: &str, detail: &str) -> Result<(), String> {
        self.journal
            .record(self.phase, unit, status, 0, 0, detail)
            .map_err(|e| {
                format!(
                    "cannot write the journal {}: {e}",
                    self.journal.path().display()
                )
            })
    }

    /// Journals `name` as started; returns its start time.
    fn begin(&mut self, name: &str) -> Result<Instant, String> {
        self.progress.say(&format!("{name} ..."));
        self.record(name, "started", "")?;
        Ok(Instant::now())
    }

    /// Journals and reports how `name` ended; passes the result on.
    fn end(&mut self, name: &str, t: Instant, r: Result<String, String>) -> Result<String, String> {
        let (status, detail) = match &r {
            Ok(d) => ("done", d.clone()),
            Err(e) => ("failed", e.clone()),
        };
        // A journal that cannot be written turns success into failure: acting on without a
        // record is not allowed.
        let r = match (self.record(name, status, &detail), r) {
            (Err(j), Ok(_)) => Err(j),
            (_, r) => r,
        };
        self.progress.say(&format!(
            "{name}: {} — {}",
            if r.is_ok() { "ok" } else { "FAILED" },
            r.as_ref().unwrap_or_else(|e| e)
        ));
        self.out.steps.push(Step {
            name: name.into(),
            status: if r.is_ok() { "done" } else { "failed" }.into(),
            ms: t.elapsed().as_millis() as u64,
            detail: r.clone().unwrap_or_else(|e| e),
        });
        self.rep.phase_since(
            name,
            t,
            if r.is_ok() {
                Status::Ok
            } else {
                Status::Failed
            },
            r.clone().unwrap_or_else(|e| e),
        );
        r
    }

    fn skipped(&mut self, name: &str, why: &str) -> Result<(), String> {
        self.record(name, "skipped", why)?;
        self.progress.say(&format!("{name}: skipped — {why}"));
        self.out.steps.push(Step {
            name: name.into(),
            status: "skipped".into(),
            ms: 0,
            detail: why.into(),
        });
        self.rep.skipped(name, why);
        Ok(())
    }

    async fn connect(&mut self) -> Vec<String> {
        let (old, new) = tokio::join!(
            client::connect(self.plan, Side::Old),
            client::connect(self.plan, Side::New)
        );
        let mut errors = Vec::new();
        match old {
            Ok(a) => self.old = Some(a),
            Err(e) => errors.push(e.to_string()),
        }
        match new {
            Ok(a) => self.new = Some(a),
            Err(e) => errors.push(e.to_string()),
        }
        errors
    }

    fn old(&self) -> Result<&Agent, String> {
        self.old
            .as_ref()
            .ok_or_else(|| "the old agent is not connected".to_string())
    }

    async fn freeze(&mut self) -> Result<(), String> {
        for m in self.plan.freeze.methods.clone() {
            let name = format!("freeze {}", freeze::name(m));
            let t = self.begin(&name)?;
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
            self.end(&name, t, r)?;
        }
        if self.plan.freeze.methods.is_empty() {
            self.freeze_started_ms.get_or_insert_with(now_ms);
            self.rep.freeze_begins();
        }
        Ok(())
    }

    async fn delta(&mut self) -> Result<SyncReport, String> {
        let t = self.begin("delta")?;
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
            Err(e) => Err(e.to_string()),
            Ok(s) if !s.ok => Err(s.failures()),
            // A rehearsal does not freeze: its old host may well still be writing.
            Ok(s) if self.rehearsal => Ok(s),
            Ok(s) => deferred_in_freeze(s),
        };
        let r = r.and_then(|s| injected("delta").map(|()| s));
        let summary = r.as_ref().map(|s| {
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
            format!(
                "{} bytes: {} table(s) in {} range(s), {} file(s)",
                s.bytes, self.out.delta.tables, self.out.delta.ranges, self.out.delta.files
            )
        });
        if let Ok(s) = &r {
            self.rep.add_sync(s);
        }
        self.end("delta", t, summary.clone().map_err(Clone::clone))?;
        r
    }

    fn progress_quiet(&self) -> bool {
        self.progress.mode() == Mode::Quiet
    }

    async fn prove(&mut self, delta: &SyncReport) -> Result<(), String> {
        let t = self.begin("prove")?;
        let r = async {
            let v = verify::run(self.plan).await.map_err(|e| e.to_string())?;
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
                    return Err(format!(
                        "the old database changed during the freeze ({}): something still writes to it — a superuser session, or an app the freeze methods do not cover{}",
                        changed.join(", "),
                        if differ.is_empty() {
                            String::new()
                        } else {
                            format!("; the hosts now differ in: {}", differ.join("; "))
                        }
                    ));
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
                return Err(format!(
                    "{STORAGE_WRITER} ({}): an app or job the freeze methods do not stop",
                    storage.join("; ")
                ));
            }
            if !differ.is_empty() {
                return Err(format!(
                    "the hosts differ after the delta: {}",
                    differ.join("; ")
                ));
            }
            if !not_run.is_empty() {
                return Err(format!(
                    "the proof could not compare (no verdict, not a difference): {}",
                    not_run.join("; ")
                ));
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
        self.end("prove", t, r).map(|_| ())
    }

    async fn switch(&mut self) -> Result<(), String> {
        let switcher = traffic::switcher(self.plan).await?;
        let Some(s) = switcher else {
            self.skipped("switch", "method none: move traffic to the new host now")?;
            self.progress
                .say(">>> Switch traffic to the new host now (plan [switch] method = \"none\").");
            self.rep.freeze_ends();
            self.out.freeze_ms = self.freeze_ms();
            return Ok(());
        };
        let t = self.begin("switch")?;
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
            Err(e) => Err(e.to_string()),
        };
        if r.is_ok() {
            self.rep.freeze_ends();
            self.out.freeze_ms = self.freeze_ms();
        }
        self.end("switch", t, r).map(|_| ())
    }

    async fn verify_public(&mut self) -> Result<(), String> {
        let t = self.begin("verify")?;
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
                return Err(format!("after the switch: {}", failed.join("; ")));
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
        self.end("verify", t, r).map(|_| ())
    }

    fn freeze_ms(&self) -> Option<u64> {
        self.freeze_started_ms.map(|s| now_ms().saturating_sub(s))
    }

    /// Undoes what was done, newest first: the switch (if attempted), then each freeze method.
    /// Returns the instructions for what could not be undone (empty = all undone).
    async fn undo(&mut self, methods: Vec<FreezeMethod>, switch_back: bool) -> Vec<String> {
        let mut manual = Vec::new();
        let fail_undo = injected("undo").is_err();
        if switch_back {
            let name = "switch back";
            let r = match self.begin(name) {
                Err(e) => Err(e),
                Ok(t) => {
                    let r = async {
                        if fail_undo {
                            return Err("injected failure at undo (HOSTSHIFT_TEST_FAIL_AT, debug builds only)".to_string());
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
                                .map_err(|e| e.to_string()),
                        }
                    }
                    .await;
                    self.end(name, t, r)
                }
            };
            if r.is_err() {
                manual.push(traffic::manual_switch_back(self.plan));
            }
        }
        for m in methods.into_iter().rev() {
            let name = format!("unfreeze {}", freeze::name(m));
            let r = match self.begin(&name) {
                Err(e) => Err(e),
                Ok(t) => {
                    let r = if fail_undo {
                        Err(
                            "injected failure at undo (HOSTSHIFT_TEST_FAIL_AT, debug builds only)"
                                .to_string(),
                        )
                    } else {
                        match self.old() {
                            Ok(old) => freeze::undo(self.plan, old, m).await,
                            Err(e) => Err(e),
                        }
                    };
                    self.end(&name, t, r)
                }
            };
            if r.is_err() {
                manual.push(freeze::manual_undo(self.plan, m));
            }
        }
        if !manual.is_empty() {
            manual.insert(
                0,
                format!(
                    "When the cause is fixed, run `hostshift rollback --plan {} --yes`: it repeats every undo (each is safe to repeat). Or by hand:",
                    self.plan.path.display()
                ),
            );
        }
        manual
    }

    /// A step failed: undo everything and record how it ended.
    async fn fail(&mut self, cause: String) {
        self.progress
            .say(&format!("cutover failed: {cause}; undoing"));
        self.out.error = Some(cause);
        let methods = self.frozen.clone();
        let switch_back = self.switched;
        let manual = self.undo(methods, switch_back).await;
        self.rep.freeze_ends();
        if self.out.freeze_ms.is_none() || switch_back {
            self.out.freeze_ms = self.freeze_ms();
        }
        if manual.is_empty() {
            self.out.outcome = Outcome::RolledBack;
            let _ = self.record(RUN_UNIT, "done", Outcome::RolledBack.as_str());
        } else {
            self.out.outcome = Outcome::UndoFailed;
            self.out.undo_instructions = manual;
            let _ = self.record(RUN_UNIT, "undo-failed", "");
        }
        self.out.ok = false;
    }

    /// Rollback: names the tables written on the new host since the switch (they are not copied
    /// back) and keeps the list so that `sync` refuses to overwrite them.
    async fn new_host_writes(&mut self) {
        let name = "new-host writes";
        let Ok(t) = self.begin(name) else { return };
        let found = match &self.new {
            Some(new) => new_writes::find(self.plan, new).await,
            None => Err("the new agent is not connected".to_string()),
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
                Err(format!(
                    "cannot check the new host for writes since the switch: {e}"
                )),
            ),
        };
        self.out.new_host_writes = found.iter().map(ToString::to_string).collect();
        let kept = new_writes::record_pending(self.plan, &found);
        let r = match (r, kept) {
            (r, Ok(())) => r,
            (Ok(d), Err(e)) | (Err(d), Err(e)) => Err(format!("{d}; {e}")),
        };
        // Reported, not a failure of the rollback: traffic is back either way.
        let _ = self.end(name, t, r);
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
            Outcome::UndoFailed => {
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
/// [`StartError`] when the journal cannot be opened; every later failure is in the report.
pub async fn run(
    plan: &Plan,
    opts: &Options,
    st: &state::State,
) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, opts.progress, PHASE)?;
    c.rehearsal = opts.rehearsal;
    let quiet = opts.progress == Mode::Quiet;
    let errors = c.connect().await;
    if opts.resume {
        c.freeze_started_ms = st.freeze_started_ms;
        let _ = c.record(RUN_UNIT, "resumed", st.run.as_deref().unwrap_or(""));
    } else {
        if !opts.dry_run && c.record(RUN_UNIT, "started", &direction::of(plan)).is_err() {
            return Err(StartError::Journal {
                path: plan.state_dir().display().to_string(),
                source: std::io::Error::other("journal write failed"),
            });
        }
        let t = Instant::now();
        let _ = c.record("gates", "started", "");
        let events = journal::read(&plan.state_dir()).unwrap_or_default();
        let inputs = gates::Inputs {
            plan,
            old: c.old.as_ref(),
            new: c.new.as_ref(),
            connect_errors: errors.clone(),
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
            Err(failed.join("; "))
        };
        if let Some(reason) = &opts.skip_backup_check {
            let _ = c.record("backup check skipped", "done", reason);
        }
        if let Err(e) = c.end("gates", t, verdict) {
            c.out.error = Some(e);
            c.out.outcome = Outcome::GatesFailed;
            if !opts.dry_run {
                let _ = c.record(RUN_UNIT, "done", Outcome::GatesFailed.as_str());
            }
            return Ok(c.finish(quiet, opts.write_report));
        }
        if opts.dry_run {
            c.out.ok = true;
            c.out.outcome = Outcome::DryRun;
            return Ok(c.finish(quiet, opts.write_report));
        }
    }
    if !opts.resume && c.old.is_none() {
        c.out.error = Some("the old agent is not connected".into());
        return Ok(c.finish(quiet, opts.write_report));
    }
    let result: Result<(), String> = async {
        if c.old.is_none() || c.new.is_none() {
            return Err(format!(
                "{}: fix it and run `hostshift cutover --resume --yes` again (or `hostshift rollback --yes`)",
                errors.join("; ")
            ));
        }
        if c.rehearsal {
            let t = Instant::now();
            c.skipped("freeze", "rehearsal: the old host keeps serving")?;
            let delta = c.delta().await?;
            c.prove(&delta).await?;
            c.out.rehearsed_freeze_ms = Some(t.elapsed().as_millis() as u64);
            c.skipped("switch", "rehearsal: traffic stays where it is")?;
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
            let _ = c.record(RUN_UNIT, "done", Outcome::Switched.as_str());
        }
        Err(cause) => {
            // On resume the earlier run's freeze and switch count too.
            if opts.resume {
                for m in &st.frozen_methods {
                    if let Some(fm) = plan.freeze.methods.iter().find(|x| freeze::name(**x) == m)
                        && !c.frozen.contains(fm)
                    {
                        c.frozen.push(*fm);
                    }
                }
                c.switched |= st.switched;
            }
            c.fail(cause).await;
        }
    }
    Ok(c.finish(quiet, opts.write_report))
}

/// `hostshift rollback`: traffic back to the old host (when the plan has a switch) and every
/// freeze method of the plan undone there — whatever the journal says, since each undo is
/// idempotent.
///
/// # Errors
/// [`StartError`] when the journal cannot be opened.
pub async fn rollback(plan: &Plan, mode: Mode) -> Result<CutoverReport, StartError> {
    let mut c = Cut::new(plan, mode, ROLLBACK)?;
    let quiet = mode == Mode::Quiet;
    let errors = c.connect().await;
    let _ = c.record("rollback", "started", "");
    if !errors.is_empty() {
        c.progress.say(&errors.join("; "));
    }
    let methods = plan.freeze.methods.clone();
    let manual = c.undo(methods, true).await;
    c.rep.skipped("freeze", "rollback");
    c.new_host_writes().await;
    if manual.is_empty() {
        c.out.ok = true;
        c.out.outcome = Outcome::RolledBack;
        let _ = c.record("rollback", "done", "");
    } else {
        c.out.outcome = Outcome::UndoFailed;
        c.out.error = Some("part of the rollback failed".into());
        c.out.undo_instructions = manual;
        let _ = c.record("rollback", "failed", "");
    }
    Ok(c.finish(quiet, true))
}

/// The freeze's storage delta must leave nothing deferred: a file that still changed while it
/// was read means something still writes to the old tree, and the hosts would differ.
fn deferred_in_freeze(s: SyncReport) -> Result<SyncReport, String> {
    let changing: Vec<String> = s
        .units
        .iter()
        .filter(|u| u.deferred > 0)
        .map(|u| format!("storage {}: {}", u.name, crate::sync::deferred_summary(u)))
        .collect();
    if changing.is_empty() {
        return Ok(s);
    }
    Err(format!(
        "{STORAGE_WRITER}: files changed on the old host while the delta read them ({}): an app or job the freeze methods do not stop",
        changing.join("; ")
    ))
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
        let err = deferred_in_freeze(report(vec![storage(1)])).unwrap_err();
        assert!(
            err.contains("during the freeze") && err.contains("up-0.bin"),
            "{err}"
        );
    }
}
