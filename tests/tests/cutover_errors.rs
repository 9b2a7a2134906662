//! What the cutover and the rollback say when something is off, with real agents, real
//! PostgreSQL and the real CLI (no PM2, nginx or AWS: the plan freezes with `read-only` and
//! switches with `method = "none"`): a journal that cannot be written, an agent that cannot be
//! reached on `--resume`, a journal written by an earlier hostshift, storage written during the
//! freeze, a freeze undone by hand, a rollback on a host whose config no longer allows freezing,
//! and the words `plan check`, the gates and the report folders use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostshift_tests::rig::uploader::Uploader;
use hostshift_tests::rig::{CliOutput, Sandbox, eventually};
use serde_json::Value;

/// `<sandbox>/.hostshift/test/journal.jsonl` (the plan's default state folder and name).
fn journal(sb: &Sandbox) -> PathBuf {
    sb.dir.join(".hostshift/test/journal.jsonl")
}

/// The old agent's freeze record of the plan database `app`.
fn freeze_record(sb: &Sandbox) -> PathBuf {
    sb.dir.join("state-old/freeze/app.json")
}

/// `default_transaction_read_only` as a fresh session on the old database sees it.
async fn old_read_only(sb: &Sandbox) -> String {
    let c = sb.world.old_pg.connect(&sb.old_db).await;
    let row = c
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .expect("show");
    row.get(0)
}

async fn sync_and_verify(sb: &Sandbox) {
    let out = sb.cli(&["sync", "--yes"]).await;
    assert_eq!(out.code, 0, "sync: {}", out.both());
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "verify: {}", out.both());
}

async fn cutover(sb: &Sandbox, env: &[(&str, &str)]) -> CliOutput {
    let plan = sb.plan_path().display().to_string();
    hostshift_tests::rig::cli_in(
        &sb.dir,
        &[
            "cutover",
            "--yes",
            "--json",
            "--skip-backup-check",
            "test",
            "--plan",
            &plan,
        ],
        env,
    )
    .await
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

async fn started(name: &str) -> Sandbox {
    let mut sb = Sandbox::new(name).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    sb
}

/// Issue 11 item 2: journal writes are never ignored. When the journal cannot be written after
/// the freeze, the cutover stops there (it does not act on unrecorded), says why, and says what
/// state the hosts are in and what to run — exit 3, the old host really frozen as it says.
#[tokio::test]
async fn a_cutover_that_cannot_write_its_journal_stops_and_says_what_state_the_hosts_are_in() {
    let sb = started("journal_fails").await;
    sync_and_verify(&sb).await;
    let out = cutover(&sb, &[("HOSTSHIFT_TEST_FAIL_AT", "journal")]).await;
    assert_eq!(out.code, 3, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "journal-failed", "{j:#}");
    let error = text(&j["error"]);
    assert!(
        error.contains("cannot write the journal") && error.contains("journal.jsonl"),
        "the cause names the journal file: {j:#}"
    );
    let said = format!("{error} {}", j["undo_instructions"]);
    assert!(
        said.contains("frozen") && said.contains("read-only"),
        "it says the old host is frozen, by which method: {j:#}"
    );
    assert!(
        said.contains("hostshift rollback"),
        "it says what to run: {j:#}"
    );
    assert_eq!(
        old_read_only(&sb).await,
        "on",
        "the old host is frozen, as the message says"
    );
    // Following the instructions works.
    let out = sb.cli(&["rollback", "--yes"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(old_read_only(&sb).await, "off");
}

/// Issue 11 items 2 and 7: a journal written by today's hostshift (plain `unit` strings, no
/// typed step) still loads: `status` reads the unfinished cutover and its freeze; and
/// `cutover --resume` with an agent down says which agent and why, not just "an agent".
#[tokio::test]
async fn resume_with_the_new_agent_down_names_it_and_why_and_an_older_journal_still_loads() {
    let mut sb = started("resume_down").await;
    sync_and_verify(&sb).await;
    let path = journal(&sb);
    let mut text_before = std::fs::read_to_string(&path).expect("journal after sync");
    // A cutover killed after its read-only freeze, as the previous release wrote it.
    for line in [
        r#"{"time_ms":1764900000000,"run":"1764900000000-4242","phase":"cutover","unit":"cutover","status":"started","bytes":0,"files":0,"detail":"old -> new"}"#,
        r#"{"time_ms":1764900000010,"run":"1764900000000-4242","phase":"cutover","unit":"gates","status":"started","bytes":0,"files":0,"detail":""}"#,
        r#"{"time_ms":1764900000020,"run":"1764900000000-4242","phase":"cutover","unit":"gates","status":"done","bytes":0,"files":0,"detail":"8 gates pass"}"#,
        r#"{"time_ms":1764900000030,"run":"1764900000000-4242","phase":"cutover","unit":"freeze read-only","status":"started","bytes":0,"files":0,"detail":""}"#,
        r#"{"time_ms":1764900000040,"run":"1764900000000-4242","phase":"cutover","unit":"freeze read-only","status":"done","bytes":0,"files":0,"detail":"app read-only (0 session(s) ended)"}"#,
    ] {
        text_before.push_str(line);
        text_before.push('\n');
    }
    std::fs::write(&path, text_before).expect("write the journal");
    let s = sb.cli(&["status", "--json"]).await;
    assert_eq!(s.code, 0, "{}", s.both());
    let s = s.json();
    assert_eq!(s["state"], "in-progress", "{s:#}");
    assert_eq!(s["frozen"], true, "{s:#}");
    assert_eq!(
        s["frozen_methods"],
        serde_json::json!(["read-only"]),
        "{s:#}"
    );

    let plain = sb.cli(&["cutover", "--yes"]).await;
    assert_eq!(plain.code, 3, "{}", plain.both());
    assert!(
        plain.both().contains("hostshift cutover --resume --yes"),
        "the suggested resume works in a script (--yes): {}",
        plain.both()
    );

    let new_address = sb.addresses.1.clone();
    drop(sb.new.take());
    let out = sb.cli(&["cutover", "--resume", "--yes", "--json"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    let j = out.json();
    let error = text(&j["error"]);
    assert!(
        error.contains("new agent") && error.contains(&new_address),
        "the error names the unreachable agent and its address: {j:#}"
    );
    assert!(
        error.to_lowercase().contains("refused") || error.to_lowercase().contains("connect"),
        "the error says why it could not be reached: {j:#}"
    );
}

/// Issue 10 item 5: files written to the old storage during the freeze are reported as what
/// they are — something still writes to storage during the freeze — naming a path, like the
/// database's message, not as "the hosts differ after the delta: storage …: missing".
#[tokio::test]
async fn storage_written_during_the_freeze_is_reported_as_a_writer_naming_the_path() {
    let sb = started("storage_writer").await;
    sync_and_verify(&sb).await;
    let mut up = Uploader::start(&sb.old_storage);
    // Writing for real before the cutover starts.
    eventually(Duration::from_secs(10), "a few uploads", || async {
        (up.paths().len() >= 3).then_some(())
    })
    .await;
    let out = cutover(&sb, &[]).await;
    up.stop();
    assert_eq!(out.code, 1, "{}", out.both());
    let j = out.json();
    assert_eq!(j["outcome"], "rolled-back", "{j:#}");
    let error = text(&j["error"]);
    assert!(
        error.contains("something still writes to storage during the freeze"),
        "{j:#}"
    );
    assert!(
        up.paths().iter().any(|p| error.contains(p.as_str())),
        "the error names a path the writer wrote: {j:#}"
    );
    assert!(
        !error.contains("the hosts differ after the delta"),
        "not reported as a copy difference: {j:#}"
    );
}

/// Issue 14 item 8: a read-only freeze undone by hand (the printed psql commands) is noticed at
/// the agent's next contact: its freeze record goes, so nothing calls the host frozen any more.
/// On the way: a cutover's delta does not carry the freeze's `default_transaction_read_only`
/// to the new database (it did, and failed at its first `setval`).
#[tokio::test]
async fn a_freeze_undone_by_hand_is_noticed_and_the_agents_record_removed() {
    let sb = started("undone_by_hand").await;
    sync_and_verify(&sb).await;
    let out = cutover(&sb, &[]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(old_read_only(&sb).await, "on");
    // The delta carried the database's own settings, never the freeze's read-only.
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let row = new
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "off", "the new host is writable");
    let record: Value = serde_json::from_slice(
        &std::fs::read(freeze_record(&sb)).expect("the agent recorded the freeze"),
    )
    .expect("record JSON");

    // By hand, as the printed undo says: from the `postgres` database, then CONNECT back.
    let admin = sb.world.old_pg.connect("postgres").await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" RESET default_transaction_read_only",
            sb.old_db
        ))
        .await
        .expect("reset");
    // Only half done so far (CONNECT not back): the record must stay, it lists what to give back.
    let out = sb.cli(&["check"]).await;
    assert!(
        freeze_record(&sb).exists(),
        "a half-done undo keeps the record: {}",
        out.both()
    );
    for g in record["connect_revoked"]
        .as_array()
        .expect("connect_revoked")
    {
        let to = g["grantee"]
            .as_str()
            .map_or("PUBLIC".to_string(), |r| format!("\"{r}\""));
        admin
            .batch_execute(&format!(
                "GRANT CONNECT ON DATABASE \"{}\" TO {to}",
                sb.old_db
            ))
            .await
            .expect("grant");
    }
    let out = sb.cli(&["check"]).await;
    assert!(
        !freeze_record(&sb).exists(),
        "the agent noticed the freeze is gone and removed its record: {}",
        out.both()
    );
    assert_eq!(old_read_only(&sb).await, "off");
}

/// Issue 14 item 8 and issue 10 items 5, 6: `rollback` on an old host whose config no longer
/// allows `freeze_databases` (a blue/green swap made it a target) and which holds no freeze
/// succeeds — an undo needs no permit — and tells a `method = "none"` operator to move traffic
/// back by hand; its report folder is named `…-rollback`.
#[tokio::test]
async fn rollback_needs_no_freeze_permit_says_move_traffic_by_hand_and_reports_in_a_rollback_folder()
 {
    let mut sb = Sandbox::new("rollback_words").await;
    let mut old = sb.old_setup();
    old.freeze_databases.clear();
    sb.start(old, sb.new_setup()).await;
    let out = sb.cli(&["rollback", "--yes", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    let dir = text(&j["report_dir"]);
    assert!(
        dir.ends_with("-rollback"),
        "the rollback's report folder: {j:#}"
    );
    let back = j["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "switch back"))
        .unwrap_or_else(|| panic!("no switch back step: {j:#}"));
    assert!(
        text(&back["detail"]).contains("by hand now"),
        "method none: the operator moves traffic back, now: {j:#}"
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&dir).join("report.json")).expect("report.json"),
    )
    .expect("report JSON");
    assert_eq!(report["kind"], "rollback", "{report:#}");
}

/// Issue 10 item 6: `plan check` and the health gate speak the plan's words (`none`, `new`),
/// not Rust's (`None`, `New`).
#[tokio::test]
async fn plan_check_and_the_health_gate_use_the_plans_words() {
    let sb = started("plan_words").await;
    sb.write_plan(
        "[[health]]\nname = \"api\"\nurl = \"http://127.0.0.3:9/health\"\nfrom = \"new\"\n",
    );
    let out = sb.cli(&["plan", "check"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("switch none") && !out.stdout.contains("None"),
        "{}",
        out.both()
    );
    let out = sb.cli(&["cutover", "--dry-run", "--json"]).await;
    let j = out.json();
    let health = j["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "health"))
        .unwrap_or_else(|| panic!("no health gate: {j:#}"));
    let detail = text(&health["detail"]);
    assert!(
        detail.contains("(from new)") && !detail.contains("New"),
        "{j:#}"
    );
}
