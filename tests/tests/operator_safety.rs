//! What the operator's host and terminal are protected from (issue 9 items 5, 7, 12 and smaller
//! ones), with real agents, real PostgreSQL and the real CLI: a killed coordinator leaves no
//! snapshot transaction open on the old database past its lease, and `status`/`check` list one
//! that is open; backups are owner-only files; `.env` override values appear in no output; every
//! `--json` run prints a document, `ok: false` with the error, even when an agent is unreachable;
//! file names with terminal escape codes are escaped in human output; damaged journal lines are
//! warned about with file and line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hostshift_proto::v1::database_client::DatabaseClient;
use hostshift_proto::v1::{CloseSnapshotRequest, OpenSnapshotRequest};
use hostshift_tests::rig::{self, AgentSetup, Sandbox, eventually};

/// Sessions of the agent on `db` that sit idle inside a transaction: an exported snapshot.
async fn idle_snapshots(sb: &Sandbox) -> i64 {
    let admin = sb.world.old_pg.connect("postgres").await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'hostshift-agent' AND state LIKE 'idle in transaction%'",
            &[&sb.old_db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Issue 9.7: kill -9 of the coordinator while its sync holds a snapshot on the old database;
/// the old agent closes the snapshot's transaction once its lease (3 s here, through the
/// documented test knob HOSTSHIFT_SNAPSHOT_LEASE_SECS) runs out, not after the 6 h deadline.
#[tokio::test]
async fn a_killed_coordinator_leaves_no_snapshot_open_past_its_lease() {
    let mut sb = Sandbox::new("snapshot_lease").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // Hold the sync inside its snapshot: a lock on a table of the old database makes the
    // schema dump (which imports the snapshot) wait.
    let locker = sb.world.old_pg.connect(&sb.old_db).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let plan = sb.plan_path().display().to_string();
    let mut coordinator = tokio::process::Command::new(rig::hostshift_bin())
        .args(["sync", "--only", "db", "--plan", &plan])
        .env("HOSTSHIFT_SNAPSHOT_LEASE_SECS", "3")
        .env_remove("HOSTSHIFT_PLAN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the coordinator");
    let admin = sb.world.old_pg.connect("postgres").await;
    eventually(
        Duration::from_secs(60),
        "the sync to wait on the lock inside its snapshot",
        || async {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name LIKE 'hostshift%' AND wait_event_type = 'Lock'",
                    &[&sb.old_db],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            (waiting > 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        idle_snapshots(&sb).await,
        1,
        "the sync holds one exported snapshot"
    );

    coordinator.start_kill().expect("kill -9 the coordinator");
    let _ = coordinator.wait().await;
    // Lease 3 s; allow for the agent's timer and scheduling, far below any TTL.
    eventually(
        Duration::from_secs(30),
        "the snapshot's transaction to end after its lease",
        || async { (idle_snapshots(&sb).await == 0).then_some(()) },
    )
    .await;
    locker.batch_execute("ROLLBACK").await.expect("unlock");
}

/// Issue 9.7: `status` and `check` list a snapshot the old agent holds open.
#[tokio::test]
async fn status_and_check_list_a_snapshot_left_open() {
    let mut sb = Sandbox::new("snapshot_listed").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let mut old = DatabaseClient::new(sb.old().channel(&sb.world.certs_coordinator()).await);
    let snapshot = old
        .open_snapshot(OpenSnapshotRequest {
            database: "app".into(),
            ttl_secs: 600,
            lease_secs: 600,
        })
        .await
        .expect("OpenSnapshot")
        .into_inner()
        .snapshot;

    let out = sb.cli(&["status"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("open snapshots on the old host")
            && out.stdout.contains(&snapshot)
            && out.stdout.contains("database app"),
        "{}",
        out.both()
    );
    let out = sb.cli(&["status", "--json"]).await;
    assert_eq!(
        out.json()["open_snapshots"][0]["snapshot"],
        snapshot.as_str(),
        "{}",
        out.both()
    );
    let out = sb.cli(&["check", "--json"]).await;
    let j = out.json();
    let listed = j["checks"].as_array().expect("checks").iter().any(|c| {
        c["check"] == "open snapshot"
            && c["result"] == "warn"
            && c["detail"].as_str().is_some_and(|d| d.contains(&snapshot))
    });
    assert!(listed, "{}", out.both());

    old.close_snapshot(CloseSnapshotRequest {
        snapshot: snapshot.clone(),
    })
    .await
    .expect("CloseSnapshot");
    let out = sb.cli(&["status"]).await;
    assert!(
        out.stdout.contains("open snapshots on the old host: none"),
        "{}",
        out.both()
    );
}

/// Issue 9.5: every file of a backup is owner-only (0600) and every folder 0700, the database
/// dump included (pg_dump would create it with the umask's 0644).
#[tokio::test]
async fn backup_files_are_owner_only() {
    let mut sb = Sandbox::new("backup_modes").await;
    let dir = sb.dir.join("backups");
    let mut old = sb.old_setup();
    old.extra.push_str(&format!(
        "\n[backup]\ndir = {}\n",
        toml::Value::String(dir.display().to_string())
    ));
    sb.start(old, sb.new_setup()).await;
    let out = sb.cli(&["backup", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let mut seen_dump = false;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let m = std::fs::symlink_metadata(e.path()).expect("meta");
            let mode = m.permissions().mode() & 0o777;
            if m.is_dir() {
                assert_eq!(mode, 0o700, "{}", e.path().display());
                stack.push(e.path());
            } else {
                assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
                seen_dump |= e.path().extension().is_some_and(|x| x == "dump");
            }
        }
    }
    assert!(seen_dump, "the backup holds a database dump");
}

/// Every file under `root` except `skip`, as (path, bytes).
fn files_under(root: &Path, skip: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && p != skip
                && let Ok(b) = std::fs::read(&p)
            {
                out.push((p, b));
            }
        }
    }
    out
}

/// Issue 9.5: override values whose keys look harmless (`SMTP_PASS`, `STRIPE_SK`) are secrets
/// too: sync's human output, its `--json`, the journal and the reports show the keys and
/// digests, never the values.
#[tokio::test]
async fn env_override_values_appear_in_no_output() {
    let mut sb = Sandbox::new("override_secrets").await;
    sb.plan_databases = false;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let plan = plan.replacen(
        "name = \"backend-env\"\n",
        "name = \"backend-env\"\noverrides = { SMTP_PASS = \"smtp-hunter2\", STRIPE_SK = \"sk_live_hunter3\", PORT = \"4000\" }\n",
        1,
    );
    std::fs::write(sb.plan_path(), plan).expect("plan");

    let human = sb.cli(&["sync", "--only", "files"]).await;
    assert_eq!(human.code, 0, "{}", human.both());
    std::fs::remove_file(&sb.new_env).expect("remove to sync again");
    let json = sb.cli(&["sync", "--only", "files", "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.both());
    let new_env = std::fs::read_to_string(&sb.new_env).expect("new env");
    assert!(
        new_env.contains("SMTP_PASS=smtp-hunter2"),
        "overrides applied: {new_env}"
    );
    let changes = json.json()["units"][0]["changes"].to_string();
    assert!(
        changes.contains("SMTP_PASS") && changes.contains("sha256:"),
        "keys and digests are shown: {changes}"
    );
    for secret in ["smtp-hunter2", "sk_live_hunter3", "4000"] {
        for out in [&human, &json] {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "{secret} printed:\n{}",
                out.both()
            );
        }
        // Everything the run wrote: journal, reports, agent logs and state (not the plan that
        // names the values, nor the .env that must hold them).
        for (path, bytes) in files_under(&sb.dir, &sb.new_env) {
            if path == sb.plan_path() {
                continue;
            }
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "{secret} written to {}",
                path.display()
            );
        }
    }
}

/// Issue 9.12: with an agent unreachable, every `--json` command still prints one JSON
/// document with `ok: false` and the error.
#[tokio::test]
async fn json_prints_ok_false_with_the_error_when_an_agent_is_unreachable() {
    let mut sb = Sandbox::new("json_unreachable").await;
    // Nothing listens on the discard port of these loopback addresses.
    sb.addresses = (
        format!("https://{}:9", rig::OLD_IP),
        format!("https://{}:9", rig::NEW_IP),
    );
    sb.write_plan("");
    for args in [
        &["verify", "--json"][..],
        &["sync", "--json"],
        &["backup", "--json"],
        &["check", "--json"],
    ] {
        let out = sb.cli(args).await;
        assert_ne!(out.code, 0, "{args:?}: {}", out.both());
        let j = out.json();
        assert_eq!(j["ok"], false, "{args:?}: {}", out.both());
        let text = j.to_string();
        assert!(
            text.contains(&format!("{}:9", rig::OLD_IP)),
            "{args:?}: the error names the address: {text}"
        );
    }
}

/// Issue 9.12: a file name carrying terminal escape codes (clear screen, set title) reaches
/// the operator's terminal escaped, in `verify` and `sync` human output alike.
#[tokio::test]
async fn file_names_with_terminal_escapes_are_escaped_in_human_output() {
    let mut sb = Sandbox::new("escape_names").await;
    sb.plan_databases = false;
    std::fs::write(
        sb.old_storage.join("evil\u{1b}[2J\u{1b}]0;pwned\u{7}.json"),
        "{}",
    )
    .expect("evil file");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 1, "{}", verify.both());
    assert!(
        verify
            .stdout
            .contains("evil\\x1b[2J\\x1b]0;pwned\\x07.json"),
        "the name is shown, escaped: {}",
        verify.both()
    );
    let sync = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(sync.code, 0, "{}", sync.both());
    for out in [&verify, &sync] {
        for raw in ['\u{1b}', '\u{7}', '\u{9b}'] {
            assert!(
                !out.stdout.contains(raw) && !out.stderr.contains(raw),
                "a raw control character reached the terminal: {:?}",
                out.both()
            );
        }
    }
}

/// Issue 9 (smaller): a damaged journal line is not skipped silently: a warning names the
/// file and the line.
#[tokio::test]
async fn damaged_journal_lines_are_warned_about_with_file_and_line() {
    let mut sb = Sandbox::new("journal_damage").await;
    sb.plan_databases = false;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["sync", "--only", "files"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let journal = eventually(Duration::from_secs(5), "the journal", || async {
        files_under(&sb.dir, Path::new("/"))
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| p.file_name().is_some_and(|n| n == "journal.jsonl"))
    })
    .await;
    let text = std::fs::read_to_string(&journal).expect("journal");
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    lines.insert(1, "{\"time_ms\": garbage");
    std::fs::write(&journal, lines.join("\n") + "\n").expect("damage the journal");
    let out = sb.cli(&["status"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr.contains(&format!("{}:2", journal.display())) && out.stderr.contains("damaged"),
        "{}",
        out.both()
    );
}

/// Issue 9 (smaller): `[backup] keep_days` outside 1..=3650 is a config error, not a silent
/// surprise (0 kept nothing by age; a million days overflowed nothing but meant "forever").
#[tokio::test]
async fn keep_days_out_of_range_is_refused() {
    let sb = Sandbox::new("keep_days").await;
    for days in ["0", "1000000"] {
        let mut s: AgentSetup = sb.old_setup();
        s.extra.push_str(&format!(
            "\n[backup]\ndir = {}\nkeep_days = {days}\n",
            toml::Value::String(sb.dir.join("b").display().to_string())
        ));
        let dir = sb.dir.join(format!("cfg-{days}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("agent.toml");
        std::fs::write(&cfg, s.toml(&sb.world.certs_agent("old"), &dir)).expect("write");
        let out = tokio::process::Command::new(rig::agent_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("check-config")
            .output()
            .await
            .expect("check-config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "keep_days = {days}: {err}");
        assert!(
            err.contains("key `backup.keep_days`") && err.contains("3650"),
            "{err}"
        );
    }
}

/// Issue 9.5: the database password (from `password_file`) never shows on a `pg_dump` command
/// line, where `ps` would show it to every user of the host: the running `pg_dump` of a real
/// backup is caught (a lock makes it wait) and its `/proc` command line read; the password is in
/// its environment instead.
#[tokio::test]
async fn a_running_pg_dump_has_no_password_on_its_command_line() {
    const PASSWORD: &str = "pw-in-a-file-4711";
    let mut sb = Sandbox::new("pg_dump_argv").await;
    let pw = sb.dir.join("app-db.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("password file");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut old = sb.old_setup();
    old.databases.clear();
    let s = |p: &Path| toml::Value::String(p.display().to_string());
    old.extra.push_str(&format!(
        "\n[[databases]]\nname = \"app\"\nconninfo = {}\npassword_file = {}\n\n[backup]\ndir = {}\n",
        toml::Value::String(sb.world.old_pg.conninfo(&sb.old_db)),
        s(&pw),
        s(&sb.dir.join("backups"))
    ));
    sb.start(old, sb.new_setup()).await;
    // pg_dump waits for this lock, long enough to be read from /proc.
    let locker = sb.world.old_pg.connect(&sb.old_db).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let plan = sb.plan_path().display().to_string();
    let mut backup = tokio::process::Command::new(rig::hostshift_bin())
        .args(["backup", "--host", "old", "--plan", &plan])
        .env_remove("HOSTSHIFT_PLAN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the backup");
    let read = |pid: &str, what: &str| {
        std::fs::read(format!("/proc/{pid}/{what}"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    let (cmdline, environ) = eventually(
        Duration::from_secs(60),
        "the backup's pg_dump to run",
        || async {
            std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|p| p.parse::<u32>().is_ok())
                .map(|p| (read(&p, "cmdline"), read(&p, "environ")))
                .find(|(c, _)| {
                    c.split(' ').next().is_some_and(|a| a.ends_with("pg_dump"))
                        && c.contains(&sb.old_db)
                })
        },
    )
    .await;
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert!(
        !cmdline.contains(PASSWORD),
        "the password is on pg_dump's command line: {cmdline}"
    );
    assert!(
        environ.contains(&format!("PGPASSWORD={PASSWORD}")),
        "pg_dump gets the password through its environment"
    );
    let status = tokio::time::timeout(Duration::from_secs(120), backup.wait())
        .await
        .expect("the backup ends")
        .expect("wait");
    assert!(status.success(), "the backup succeeds once unlocked");
}
