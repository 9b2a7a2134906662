//! `hostshift cutover`, `rollback` and `status` end to end: two real app hosts (PostgreSQL
//! clusters, agents, PM2 with the fixture backend, nginx in front of it), an Elastic IP in a real
//! moto server moved through the real AWS SDK, and the app writing to the old database while the
//! cutover runs.
//!
//! What each test claims is checked on the hosts themselves, never taken from `hostshift`'s own
//! output alone: the old database is probed with a fresh session as the app's role, nginx with
//! HTTP, PM2 with the test's own `pm2 jlist`, the Elastic IP with `DescribeAddresses`, the data
//! with content digests of both databases and the writer's list of acknowledged commits.
//!
//! Failures are injected with `HOSTSHIFT_TEST_FAIL_AT` (debug builds of `hostshift` only), except
//! the one that matters most in production: a client that ignores the read-only freeze, which
//! the cutover's proof must catch by itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostshift_tests::rig::cutover::{
    APP, BUDGET_SECS, CutoverRig, CutoverSetup, ENV_DB_PASSWORD, ENV_JWT_SECRET, GATES, STEPS,
    StatusEndpoint,
};
use hostshift_tests::rig::writer::{Writer, WriterOptions};
use hostshift_tests::rig::{CliOutput, FIXTURE_DB_PASSWORD, FIXTURE_JWT_SECRET, fs};
use serde_json::Value;

/// Enough acknowledged writes before the cutover starts to know the writer is really writing.
const WRITES_BEFORE: usize = 20;
/// Generous limit for waits on the writer (it writes about 100 times a second).
const WRITER_WAIT: Duration = Duration::from_secs(30);

// -------------------------------------------------------------------------------------------
// Reading the result

/// `cutover ARGS --yes --json --skip-backup-check REASON` with `env`.
async fn cutover(rig: &CutoverRig, reason: &str, more: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut args = vec!["cutover", "--yes", "--json", "--skip-backup-check", reason];
    args.extend_from_slice(more);
    rig.cli_with(&args, env).await
}

/// The gate called `name` in a cutover's JSON.
fn gate<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no gate {name:?} in the result:\n{j:#}"))
}

/// The names of the steps in a cutover's JSON, in order.
fn step_names(j: &Value) -> Vec<String> {
    j["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps array in the result:\n{j:#}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The step called `name` in a cutover's JSON.
fn step<'a>(j: &'a Value, name: &str) -> &'a Value {
    j["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name:?} in the result:\n{j:#}"))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// For each step in `steps`, in order: a `started` event, then its `done`, before the next step
/// starts. Other units (gates, details) may come in between.
fn assert_journal_order(events: &[Value], steps: &[&str]) {
    let listing = || {
        events
            .iter()
            .map(|e| format!("{} {}", text(&e["unit"]), text(&e["status"])))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut at = 0;
    for s in steps {
        let started = events[at..]
            .iter()
            .position(|e| e["unit"] == *s && e["status"] == "started")
            .map(|i| i + at)
            .unwrap_or_else(|| {
                panic!(
                    "the journal has no {s:?} started after event {at}:\n{}",
                    listing()
                )
            });
        let done = events[started..]
            .iter()
            .position(|e| e["unit"] == *s && e["status"] == "done")
            .map(|i| i + started)
            .unwrap_or_else(|| {
                panic!(
                    "the journal has no {s:?} done after it started:\n{}",
                    listing()
                )
            });
        at = done + 1;
    }
}

/// The journal's cutover events of any run say nothing of a freeze: nothing was touched.
fn assert_no_freeze_in_journal(rig: &CutoverRig, why: &str) {
    let frozen: Vec<String> = rig
        .cutover_events(None)
        .iter()
        .map(|e| text(&e["unit"]))
        .filter(|u| u.starts_with("freeze"))
        .collect();
    assert!(
        frozen.is_empty(),
        "{why}: the journal shows freeze steps: {frozen:?}"
    );
}

fn assert_no_secrets(what: &str, body: &str) {
    for s in [
        ENV_JWT_SECRET,
        ENV_DB_PASSWORD,
        FIXTURE_JWT_SECRET,
        FIXTURE_DB_PASSWORD,
    ] {
        assert!(!body.contains(s), "{what} holds the secret {s:?}:\n{body}");
    }
}

/// The report folder named in the result: report.json (a cutover report), report.md and
/// report.html, none holding a secret of the moved `.env` or of the apps' environment.
fn assert_report(j: &Value) -> Value {
    let dir = PathBuf::from(
        j["report_dir"]
            .as_str()
            .unwrap_or_else(|| panic!("no report_dir in the result:\n{j:#}")),
    );
    for f in ["report.json", "report.md", "report.html"] {
        let p = dir.join(f);
        let body = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("the report {} is missing: {e}", p.display()));
        assert_no_secrets(&p.display().to_string(), &body);
    }
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    assert_eq!(report["kind"], "cutover", "{report:#}");
    report
}

async fn status(rig: &CutoverRig) -> Value {
    let out = rig.cli(&["status", "--json"]).await;
    assert_eq!(out.code, 0, "status: {}", out.both());
    out.json()
}

fn app_writer(rig: &CutoverRig) -> Writer {
    Writer::start(WriterOptions::new(
        &rig.sb.world.old_pg,
        &rig.sb.old_db,
        "app",
        "app-writer",
    ))
}

// -------------------------------------------------------------------------------------------
// The whole cutover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_with_the_app_writing_moves_every_acknowledged_write_switches_the_elastic_ip_and_leaves_the_old_host_frozen()
 {
    let rig = CutoverRig::start(CutoverSetup::new("co_happy")).await;
    rig.assert_old_may_freeze();
    let eip = rig.eip.as_ref().expect("an Elastic IP");
    rig.sync_and_verify().await;
    let out = rig.cli(&["backup", "--host", "old"]).await;
    assert_eq!(out.code, 0, "backup of the old host: {}", out.both());

    // Changes after the last sync that only the delta can carry: a new storage file, an edited
    // .env, and the app's writes (inserts and updates) right up to the freeze.
    std::fs::write(
        rig.sb.old_storage.join("2026/03/late.json"),
        "{\"run\":99,\"late\":true}",
    )
    .expect("late storage file");
    let mut env = std::fs::read_to_string(&rig.sb.old_env).expect("old .env");
    env.push_str("FEATURE_LATE=on\n");
    std::fs::write(&rig.sb.old_env, env).expect("edit the old .env");
    let writer = app_writer(&rig);
    writer.wait_acked(WRITES_BEFORE, WRITER_WAIT).await;

    let out = rig
        .cli_with(
            &["cutover", "--yes", "--json"],
            &[("HOSTSHIFT_LOG", "hostshift=debug")],
        )
        .await;
    // The old database stays read-only: the writer's next rounds are refused, none acknowledged.
    if out.code == 0 {
        writer.wait_refused(WRITER_WAIT).await;
    }
    let w = writer.stop().await;
    assert_eq!(out.code, 0, "cutover: {}", out.both());
    let j = out.json();
    assert_no_secrets("the cutover's stdout", &out.stdout);
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(j["outcome"], "switched", "{j:#}");
    assert!(j["error"].is_null(), "{j:#}");
    for g in GATES {
        assert_eq!(gate(&j, g)["ok"], true, "gate {g}: {j:#}");
    }
    // Step 1, the gates, may be listed as a step of its own.
    let names: Vec<String> = step_names(&j)
        .into_iter()
        .filter(|n| n != "gates")
        .collect();
    assert_eq!(names, STEPS, "the steps, in order: {j:#}");
    // HOSTSHIFT_LOG=debug tells the run as a story: every step in its own span, saying when it
    // ends and how long it took, the delta's units and database steps nested inside it.
    for span in [
        "step{name=gates}",
        "step{name=freeze}",
        "step{name=delta}",
        "step{name=prove}",
        "step{name=switch}",
        "step{name=verify}",
        "step{name=delta}:unit{kind=database name=app}:db{step=data}",
        "step{name=prove}:verify",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(span) && l.contains("ends ms=")),
            "no span {span} ending in the debug log:\n{}",
            out.stderr
        );
    }
    for s in STEPS {
        let st = text(&step(&j, s)["status"]);
        assert!(
            st != "failed" && st != "skipped",
            "step {s} is {st:?}: {j:#}"
        );
    }

    // The freeze window was measured, and fits the budget the gate predicted it would.
    let budget_ms = BUDGET_SECS * 1000;
    let freeze_ms = j["freeze_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("freeze_ms: {j:#}"));
    assert!(
        freeze_ms > 0 && freeze_ms <= budget_ms,
        "freeze_ms {freeze_ms}: {j:#}"
    );
    let predicted = j["predicted_freeze_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("predicted_freeze_ms: {j:#}"));
    assert!(predicted <= budget_ms, "predicted {predicted} ms: {j:#}");

    // Only what changed moved: the late file and .env, and ranges of the two tables the writer
    // touched (assessments, users) — not the four it did not.
    let delta = &j["delta"];
    assert!(
        delta["bytes"].as_u64().is_some_and(|b| b > 0),
        "delta: {j:#}"
    );
    assert!(
        delta["files"].as_u64().is_some_and(|f| f >= 2),
        "delta files: {j:#}"
    );
    assert!(
        delta["ranges"].as_u64().is_some_and(|r| r >= 1),
        "delta ranges: {j:#}"
    );
    assert!(
        delta["tables"]
            .as_u64()
            .is_some_and(|t| (1..=2).contains(&t)),
        "delta tables (only assessments and users changed): {j:#}"
    );

    // Traffic: the address is on the new instance, as EC2 itself says.
    eip.assert_on_new("after the cutover").await;

    // Data: every acknowledged write is on the new host, and both databases are equal.
    assert!(w.acked.len() >= WRITES_BEFORE, "{w:?}");
    assert!(
        w.refused_read_only > 0,
        "the writer was never refused: {w:?}"
    );
    let missing = rig.missing_on_new(&w.acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not on the new host: {missing:?}",
        missing.len(),
        w.acked.len()
    );
    let (old_counts, new_counts) = rig.row_counts().await;
    assert_eq!(new_counts, old_counts, "row counts");
    let (old_digest, new_digest) = rig.digests().await;
    assert_eq!(
        new_digest, old_digest,
        "content digests (tables, sequences, large objects)"
    );
    fs::assert_same_content(&rig.sb.old_storage, &rig.sb.new_storage);
    assert_eq!(
        std::fs::read(&rig.sb.new_env).expect("new .env"),
        std::fs::read(&rig.sb.old_env).expect("old .env"),
        "the .env edited after the sync arrived"
    );

    // The old host stays frozen (writes there would be lost); the new one serves.
    rig.assert_old_frozen("after a successful cutover").await;
    assert_eq!(rig.new_pm2.proc(APP).await.status, "online");
    assert_eq!(rig.new_nginx.get("/health").await.status, 200);

    // The journal has every step, started then done, in order.
    let run = text(&j["run"]);
    assert!(!run.is_empty(), "{j:#}");
    assert_journal_order(&rig.cutover_events(Some(&run)), &STEPS);
    let s = status(&rig).await;
    assert_eq!(s["state"], "switched", "{s:#}");
    assert_eq!(s["run"], run.as_str(), "{s:#}");

    // A second cutover, and its dry run, have nothing to do: exit 4, never 0, nothing touched.
    for more in [&["--dry-run"][..], &[][..]] {
        let again = cutover(&rig, "test: again", more, &[]).await;
        assert_eq!(again.code, 4, "{more:?}: {}", again.both());
        assert!(
            again.stderr.contains("already finished"),
            "{}",
            again.both()
        );
    }
    rig.assert_old_frozen("after a cutover with nothing to do")
        .await;

    let report = assert_report(&j);
    let window = (
        report["freeze"]["start_ms"].as_u64(),
        report["freeze"]["end_ms"].as_u64(),
    );
    assert!(
        matches!(window, (Some(start), Some(end)) if end > start),
        "the report shows the freeze window: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_on_a_terminal_shows_each_step_live_and_leaves_one_line_per_step() {
    let rig = CutoverRig::start(CutoverSetup::new("co_tty")).await;
    rig.sync_and_verify().await;
    let (code, screen) = rig
        .on_a_terminal(&["cutover", "--yes", "--skip-backup-check", "test"])
        .await;
    assert_eq!(code, 0, "{screen}");
    // Each step: a spinner while it runs (its name, then a braille frame), then one line that
    // stays — not the `STEP ...` line a log gets.
    let spinner = |step: &str| {
        screen.match_indices(&format!("{step} ")).any(|(i, m)| {
            screen[i + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| ('\u{2800}'..='\u{28ff}').contains(&c))
        })
    };
    for step in STEPS {
        assert!(spinner(step), "no spinner for {step}:\n{screen}");
        assert_eq!(
            screen.matches(&format!("{step}: ok — ")).count(),
            1,
            "one line for {step}:\n{screen}"
        );
        assert!(
            !screen.contains(&format!("{step} ...")),
            "a terminal shows a spinner, not a line, while {step} runs:\n{screen}"
        );
    }
    // The delta's own units are drawn in the same place and leave their lines too.
    assert!(
        screen.contains("ok   storage evaluations: "),
        "the delta's storage unit:\n{screen}"
    );
}

// -------------------------------------------------------------------------------------------
// Gates: nothing is touched unless all pass

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_fails_the_verify_fresh_gate_without_a_verify_passes_after_one_and_touches_nothing()
{
    let rig = CutoverRig::start(CutoverSetup::new("co_dry")).await;
    let eip = rig.eip.as_ref().expect("an Elastic IP");
    let out = rig.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "sync: {}", out.both());
    let before = rig.old_data().await;

    // No --yes and no terminal to ask on: refused before anything.
    let out = rig.cli(&["cutover", "--skip-backup-check", "test"]).await;
    assert_eq!(out.code, 2, "cutover without --yes: {}", out.both());
    assert!(out.stderr.contains("--yes"), "{}", out.both());
    assert_no_freeze_in_journal(&rig, "cutover without --yes");

    // No verify has run: the freshness gate fails, and a dry run stops after the gates anyway.
    let out = cutover(&rig, "dry run", &["--dry-run"], &[]).await;
    assert_eq!(out.code, 1, "dry run without a verify: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], false, "{j:#}");
    let fresh = gate(&j, "verify fresh");
    assert_eq!(fresh["ok"], false, "{j:#}");
    assert!(
        !text(&fresh["detail"]).is_empty(),
        "the gate says why: {j:#}"
    );
    for g in ["agents", "new apps", "health", "schema", "switch"] {
        assert_eq!(gate(&j, g)["ok"], true, "gate {g}: {j:#}");
    }
    assert!(
        !step_names(&j).iter().any(|s| s.starts_with("freeze")),
        "a dry run freezes nothing: {j:#}"
    );
    rig.assert_old_serving("after a dry run whose gate failed")
        .await;
    eip.assert_on_old("after a dry run").await;
    assert_no_freeze_in_journal(&rig, "dry run");

    // After a verify, the same dry run passes every gate and still changes nothing.
    let out = rig.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "verify: {}", out.both());
    let out = cutover(&rig, "dry run", &["--dry-run"], &[]).await;
    assert_eq!(out.code, 0, "dry run after a verify: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], true, "{j:#}");
    assert_eq!(j["outcome"], "dry-run", "{j:#}");
    for g in GATES {
        assert_eq!(gate(&j, g)["ok"], true, "gate {g}: {j:#}");
    }
    assert!(
        j["predicted_freeze_ms"]
            .as_u64()
            .is_some_and(|p| p <= BUDGET_SECS * 1000),
        "{j:#}"
    );
    rig.assert_old_serving("after a dry run that passed").await;
    eip.assert_on_old("after a dry run that passed").await;
    assert_no_freeze_in_journal(&rig, "dry run");
    assert_eq!(rig.old_data().await, before, "the old host's data");
    assert_eq!(
        status(&rig).await["state"],
        "none",
        "dry runs leave no cutover state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_on_the_old_host_after_the_last_sync_fails_the_schema_gate_naming_the_table()
 {
    let rig = CutoverRig::start(CutoverSetup::new("co_schema").without_switch()).await;
    rig.sync_and_verify().await;
    let old = rig.sb.world.old_pg.connect(&rig.sb.old_db).await;
    old.batch_execute("ALTER TABLE public.questions ADD COLUMN hint text")
        .await
        .expect("alter the old table");
    let before = rig.old_data().await;

    let out = cutover(&rig, "schema test", &[], &[]).await;
    assert_eq!(out.code, 1, "cutover: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["outcome"], "gates-failed", "{j:#}");
    let schema = gate(&j, "schema");
    assert_eq!(schema["ok"], false, "{j:#}");
    assert!(
        text(&schema["detail"]).contains("questions"),
        "the gate names the table: {j:#}"
    );
    assert!(
        !step_names(&j).iter().any(|s| s.starts_with("freeze")),
        "nothing frozen: {j:#}"
    );
    rig.assert_old_serving("after the schema gate failed").await;
    assert_no_freeze_in_journal(&rig, "schema gate");
    assert_eq!(rig.old_data().await, before, "the old host's data");
}

// -------------------------------------------------------------------------------------------
// Injected failures: before the switch, and after it

/// A cutover whose step `at` fails after it began: exit 1, rolled back, the old host serving,
/// unfrozen and unchanged, the Elastic IP on the old instance.
async fn an_injected_failure_rolls_back(at: &str, name: &'static str) {
    let rig = CutoverRig::start(CutoverSetup::new(name)).await;
    rig.assert_old_may_freeze();
    let eip = rig.eip.as_ref().expect("an Elastic IP");
    rig.sync_and_verify().await;
    let before = rig.old_data().await;
    let reason = format!("no backup in the {at} fault test");

    let out = cutover(&rig, &reason, &[], &[("HOSTSHIFT_TEST_FAIL_AT", at)]).await;
    assert_eq!(out.code, 1, "cutover failing at {at}: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["outcome"], "rolled-back", "{j:#}");
    let error = text(&j["error"]).to_lowercase();
    assert!(error.contains("inject"), "the error names the cause: {j:#}");

    let names = step_names(&j);
    let failed: Vec<&str> = j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["status"] == "failed")
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        failed.iter().any(|s| s.starts_with(at)),
        "the {at} step is the one that failed ({failed:?}): {j:#}"
    );
    // The freeze is undone in reverse order (all of it, once it was complete).
    let unfreeze: Vec<&String> = names.iter().filter(|n| n.starts_with("unfreeze")).collect();
    assert!(!unfreeze.is_empty(), "no unfreeze steps: {j:#}");
    if at != "freeze" {
        let order: Vec<&str> = ["read-only", "stop-apps", "maintenance-page"]
            .into_iter()
            .filter(|m| unfreeze.iter().any(|u| u.contains(m)))
            .collect();
        assert_eq!(order.len(), 3, "each freeze method undone: {unfreeze:?}");
        let pos = |m: &str| unfreeze.iter().position(|u| u.contains(m));
        assert!(
            pos("read-only") < pos("stop-apps") && pos("stop-apps") < pos("maintenance-page"),
            "undone in reverse order: {unfreeze:?}"
        );
    }
    let run = text(&j["run"]);
    let events = rig.cutover_events(Some(&run));
    if at == "verify" {
        // After the switch: traffic was switched back.
        assert_journal_order(&events, &["switch"]);
        let back = step(&j, "switch back");
        assert_ne!(back["status"], "failed", "{j:#}");
    } else if at != "switch" {
        assert!(
            !events
                .iter()
                .any(|e| e["unit"] == "switch" && e["status"] == "started"),
            "a failure at {at} comes before any switch: {events:#?}"
        );
    }
    assert!(
        events.iter().any(|e| text(&e["detail"]).contains(&reason)),
        "the skipped backup check is journaled with its reason: {events:#?}"
    );

    eip.assert_on_old(&format!("after a failure at {at}")).await;
    rig.assert_old_serving(&format!("after a failure at {at}"))
        .await;
    assert_eq!(
        rig.old_data().await,
        before,
        "the old host's data is unchanged after a failure at {at}"
    );
    let s = status(&rig).await;
    assert_eq!(s["state"], "rolled-back", "{s:#}");
    assert_eq!(s["frozen"], false, "{s:#}");
    assert_report(&j);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_injected_in_the_freeze_undoes_it_and_the_old_host_serves_unchanged() {
    an_injected_failure_rolls_back("freeze", "co_f_freeze").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_injected_in_the_delta_unfreezes_the_old_host_in_reverse_order() {
    an_injected_failure_rolls_back("delta", "co_f_delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_injected_in_the_proof_unfreezes_the_old_host_in_reverse_order() {
    an_injected_failure_rolls_back("prove", "co_f_prove").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_injected_in_the_switch_leaves_the_elastic_ip_on_the_old_instance() {
    an_injected_failure_rolls_back("switch", "co_f_switch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_injected_after_the_switch_moves_the_elastic_ip_back_and_unfreezes_the_old_host()
{
    an_injected_failure_rolls_back("verify", "co_f_verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_undo_exits_3_with_instructions_and_rollback_then_restores_the_old_host() {
    let rig = CutoverRig::start(CutoverSetup::new("co_undo")).await;
    rig.assert_old_may_freeze();
    let eip = rig.eip.as_ref().expect("an Elastic IP");
    rig.sync_and_verify().await;
    let before = rig.old_data().await;

    let out = cutover(
        &rig,
        "undo test",
        &[],
        &[("HOSTSHIFT_TEST_FAIL_AT", "verify,undo")],
    )
    .await;
    assert_eq!(out.code, 3, "cutover whose undo fails: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["outcome"], "undo-failed", "{j:#}");
    let instructions: Vec<String> = j["undo_instructions"]
        .as_array()
        .unwrap_or_else(|| panic!("undo_instructions: {j:#}"))
        .iter()
        .map(text)
        .collect();
    assert!(
        instructions
            .iter()
            .any(|i| i.contains("hostshift rollback")),
        "the instructions say what to run: {instructions:?}"
    );
    let s = status(&rig).await;
    assert!(
        s["state"] == "failed" || s["state"] == "in-progress",
        "an unfinished undo needs attention: {s:#}"
    );
    // The by-hand database undo works while the database is frozen (run here for the plan's
    // database `app`, which is this sandbox's old database).
    let psql = instructions
        .iter()
        .find(|i| i.contains("psql"))
        .unwrap_or_else(|| panic!("no psql instruction: {instructions:?}"));
    let (cmd, _) = psql.split_once(" (").expect("a command, then its note");
    let cmd = cmd.replace("\"app\"", &format!("\"{}\"", rig.sb.old_db));
    let pg = &rig.sb.world.old_pg;
    let ran = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{}/{cmd}", pg.bin_dir.display()))
        .env("PGHOST", &pg.socket_dir)
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", "postgres")
        .output()
        .expect("run psql");
    assert!(
        ran.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&ran.stderr)
    );

    // Following the instructions restores the old host; doing it again changes nothing.
    for attempt in ["rollback", "rollback again"] {
        let out = rig.cli(&["rollback", "--yes"]).await;
        assert_eq!(out.code, 0, "{attempt}: {}", out.both());
        eip.assert_on_old(&format!("after {attempt}")).await;
        rig.assert_old_serving(&format!("after {attempt}")).await;
    }
    assert_eq!(rig.old_data().await, before, "the old host's data");
    let s = status(&rig).await;
    assert_eq!(s["state"], "rolled-back", "{s:#}");
    assert_eq!(s["frozen"], false, "{s:#}");
}

// -------------------------------------------------------------------------------------------
// A real failure: a client that ignores the freeze

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_through_the_read_only_freeze_fails_the_proof_and_the_cutover_rolls_back()
{
    let rig = CutoverRig::start(CutoverSetup::new("co_rogue").without_switch()).await;
    rig.assert_old_may_freeze();
    rig.sync_and_verify().await;
    // A superuser session that turns read-only off for itself, reconnecting when it is ended.
    let mut rogue = WriterOptions::new(&rig.sb.world.old_pg, &rig.sb.old_db, "postgres", "rogue");
    rogue.override_read_only = true;
    let rogue = Writer::start(rogue);
    rogue.wait_acked(WRITES_BEFORE, WRITER_WAIT).await;

    let out = cutover(&rig, "rogue test", &[], &[]).await;
    let w = rogue.stop().await;
    assert_eq!(out.code, 1, "cutover: {}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["outcome"], "rolled-back", "{j:#}");
    assert_eq!(step(&j, "prove")["status"], "failed", "{j:#}");
    // The freeze did end the rogue's session; it came back and wrote anyway.
    assert!(
        w.sessions_lost > 0,
        "the freeze never ended the rogue session: {w:?}"
    );
    rig.assert_old_serving("after the proof failed").await;
    assert_eq!(status(&rig).await["state"], "rolled-back");
    // The cause named is the real one: something still writes to the old database (not "the
    // delta copied wrongly", which sends the operator to look in the wrong place).
    let error = text(&j["error"]).to_lowercase();
    assert!(
        error.contains("old database changed during the freeze"),
        "the error says the old database changed during the freeze: {j:#}"
    );
}

// -------------------------------------------------------------------------------------------
// A coordinator killed mid-cutover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_leaves_a_cutover_that_status_reports_and_resume_finishes_without_loss()
 {
    // The public endpoint fails until the test says otherwise: the killed run cannot get past its
    // verify step, so it is surely still running when the freeze is in place.
    let endpoint = StatusEndpoint::start(503).await;
    let rig = CutoverRig::start(CutoverSetup {
        verify_urls: Some(vec![endpoint.url("/health")]),
        ..CutoverSetup::new("co_kill")
    })
    .await;
    rig.assert_old_may_freeze();
    let eip = rig.eip.as_ref().expect("an Elastic IP");
    rig.sync_and_verify().await;
    let writer = app_writer(&rig);
    writer.wait_acked(WRITES_BEFORE, WRITER_WAIT).await;

    let mut child = rig.spawn_cli(
        &[
            "cutover",
            "--yes",
            "--json",
            "--skip-backup-check",
            "kill test",
        ],
        "cutover-killed",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let frozen = rig
            .cutover_events(None)
            .iter()
            .any(|e| e["unit"] == "freeze read-only" && e["status"] == "done");
        if frozen {
            break;
        }
        if let Some(code) = child.exited() {
            panic!(
                "the cutover ended (exit {code}) before the journal showed the read-only freeze:\n{}",
                child.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no \"freeze read-only\" done in the journal after 90 s:\n{}",
            child.output()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        child.exited(),
        None,
        "still running when killed:\n{}",
        child.output()
    );
    child.kill9().await;
    eprintln!("killed after the freeze; its output:\n{}", child.output());

    // Frozen, with nobody running the cutover: a plain cutover refuses and says what to do.
    rig.assert_old_frozen("after the coordinator was killed")
        .await;
    let out = cutover(&rig, "kill test", &[], &[]).await;
    assert_eq!(
        out.code,
        3,
        "cutover over an unfinished one: {}",
        out.both()
    );
    let both = out.both();
    assert!(
        both.contains("hostshift cutover --resume") && both.contains("hostshift rollback"),
        "it names both ways out: {both}"
    );
    let s = status(&rig).await;
    assert_eq!(s["state"], "in-progress", "{s:#}");
    assert_eq!(s["frozen"], true, "{s:#}");

    endpoint.set(200);
    let out = rig.cli(&["cutover", "--resume", "--yes", "--json"]).await;
    let w = writer.stop().await;
    assert_eq!(out.code, 0, "cutover --resume: {}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "switched", "{j:#}");
    eip.assert_on_new("after the resumed cutover").await;
    let missing = rig.missing_on_new(&w.acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not on the new host: {missing:?}",
        missing.len(),
        w.acked.len()
    );
    let (old_digest, new_digest) = rig.digests().await;
    assert_eq!(new_digest, old_digest, "content digests after the resume");
    rig.assert_old_frozen("after the resumed cutover").await;
    let s = status(&rig).await;
    assert_eq!(s["state"], "switched", "{s:#}");
    assert!(
        endpoint.hits.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "verify used the URL"
    );
}
