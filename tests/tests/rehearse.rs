//! `hostshift rehearse`, the README's main job: it builds two throwaway hosts, runs the phases,
//! and leaves nothing behind — no process, no folder.

use hostshift_tests::rig;

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if rig::process_gone(pid) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn rehearse_runs_the_whole_move_through_the_cutover_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let lab = tmp.path().join("lab");
    let lab_s = lab.display().to_string();
    let out = rig::cli_in(
        tmp.path(),
        &[
            "rehearse", "--size", "tiny", "--dir", &lab_s, "--json", "-q",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], true);
    let phases = j["phases"].as_array().expect("phases");
    for want in [
        "lab",
        "check",
        "backup",
        "sync",
        "verify",
        "writes",
        "follow",
        "cutover",
        "live-app",
        "live-uploads",
        "verify-after",
        "rollback",
    ] {
        let p = phases
            .iter()
            .find(|p| p["phase"] == want)
            .unwrap_or_else(|| panic!("no phase {want}: {}", out.stdout));
        assert_eq!(p["status"], "ok", "{}", out.stdout);
    }
    // Issue 10: the lab holds what makes an app fail on a new host when it is lost — a populated
    // materialized view and a storage sub-folder owned by a non-root user — and the final verify
    // covers both (the view populated on both hosts, the owner kept on the new one).
    let detail = |phase: &str| {
        phases
            .iter()
            .find(|p| p["phase"] == phase)
            .and_then(|p| p["detail"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let lab_detail = detail("lab");
    assert!(
        lab_detail.contains("materialized view public.course_stats (populated)")
            && lab_detail.contains("sub-folder 2024 owned by nobody"),
        "{lab_detail}"
    );
    let after = detail("verify-after");
    assert!(
        after.contains("materialized view public.course_stats populated,")
            && after.contains("storage owners compared, sub-folder 2024 owned by nobody"),
        "{after}"
    );
    // The cutover froze writes for a measured, non-zero time within the plan's 30 s budget.
    let freeze = j["freeze_ms"].as_u64().expect("freeze_ms");
    // moto is part of the test environment (scripts/install-test-deps): the rehearsal moved a
    // real (stand-in) Elastic IP through the AWS SDK.
    assert_eq!(
        j["switch"], "elastic-ip (local moto server)",
        "{}",
        out.stdout
    );
    assert!(freeze > 0 && freeze < 30_000, "{freeze} ms");
    // The old database was followed by logical decoding while the app wrote (no pause, no
    // clean verify needed by the gates).
    let follow = phases
        .iter()
        .find(|p| p["phase"] == "follow")
        .expect("follow");
    assert!(
        follow["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 database(s) followed")),
        "{follow}"
    );
    // The live app wrote into the freeze: the old host acknowledged writes up to it, refused the
    // ones during it, and every acknowledged one is on the new host (the rehearsal looked each up
    // there); the cutover waited for the follower instead of comparing the database, and says
    // what the freeze spent its time on.
    let live = &j["live_writes"];
    assert!(
        live["acknowledged"].as_u64().expect("acknowledged") > 0,
        "{live}"
    );
    assert!(live["refused"].as_u64().expect("refused") > 0, "{live}");
    assert_eq!(live["lost"], 0, "{live}");
    // And it uploaded files (new, overwritten, deleted) into the old storage tree up to the
    // freeze: the freeze refused the uploads after it (their database row was refused), and
    // every acknowledged one is on the new host with the same content, every delete absent.
    let up = &j["live_uploads"];
    for k in [
        "created",
        "overwritten",
        "deleted",
        "refused",
        "files_checked",
    ] {
        assert!(up[k].as_u64().is_some_and(|n| n > 0), "{k}: {up}");
    }
    assert_eq!(up["lost"], 0, "{up}");
    let cutover = phases
        .iter()
        .find(|p| p["phase"] == "cutover")
        .expect("cutover");
    assert!(
        cutover["detail"]
            .as_str()
            .is_some_and(|d| d.contains("database app followed up to") && d.contains("steps: ")),
        "{cutover}"
    );
    // Issue 13: the way back. After the cutover (which opened the rollback window) the app wrote
    // on the new host — sign-ups, edits, deletions — and `rollback` within the window froze it
    // and moved back: every write the new host acknowledged is on the old host with its final
    // value (looked up row by row, deleted rows gone), the old host takes writes again, no slot
    // is left, and the rollback's freeze is measured and in the timeline.
    let cutover_steps = cutover["detail"].as_str().unwrap_or_default();
    assert!(cutover_steps.contains("window open"), "{cutover}");
    let rt = &j["round_trip"];
    assert!(
        rt["acknowledged"].as_u64().expect("acknowledged") > 20,
        "{rt}"
    );
    assert!(rt["deletes"].as_u64().expect("deletes") > 0, "{rt}");
    assert_eq!(rt["lost"], 0, "{rt}");
    assert!(rt["refused"].as_u64().expect("refused") > 0, "{rt}");
    assert_eq!(rt["old_writable"], true, "{rt}");
    assert_eq!(rt["slots_left"], 0, "{rt}");
    // Files, storage and large objects compared at the rollback: the lab's app changed none.
    assert_eq!(rt["not_carried_back"], serde_json::json!([]), "{rt}");
    let rollback_freeze = rt["rollback_freeze_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rollback freeze measured: {rt}"));
    assert!(
        rollback_freeze > 0 && rollback_freeze < 30_000,
        "{rollback_freeze} ms"
    );
    assert!(
        rt["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("window catch-up"))),
        "{rt}"
    );
    assert!(
        detail("rollback").contains(&format!("rollback freeze {rollback_freeze} ms")),
        "{}",
        detail("rollback")
    );
    assert!(!lab.exists(), "the lab folder is removed");
    // The report outlives the lab: one self-contained page with the phases.
    let report = std::path::PathBuf::from(j["report"].as_str().expect("report folder"));
    let html = std::fs::read_to_string(report.join("report.html")).expect("report.html");
    assert!(
        html.contains("sync")
            && html.contains("cutover")
            && html.contains("freeze")
            && html.contains("rollback within the window: write freeze")
            && !html.contains("<script"),
        "{}",
        report.display()
    );
    std::fs::remove_dir_all(&report).expect("clean up the report");
    assert!(
        processes_mentioning(&lab_s).is_empty(),
        "left behind: {:?}",
        processes_mentioning(&lab_s)
    );
    // Nothing outside the lab: the temp dir holds nothing else.
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
}

#[tokio::test]
async fn rehearse_refuses_a_non_empty_folder_without_touching_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("keep.txt"), b"mine").expect("write");
    let dir = tmp.path().display().to_string();
    let out = rig::cli_in(tmp.path(), &["rehearse", "--dir", &dir], &[]).await;
    assert_eq!(out.code, 2, "{}", out.both());
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(tmp.path().join("keep.txt")).expect("read"),
        b"mine"
    );
}

/// `rehearse --plan`: the whole flow against real agents, into the scratch resources the plan's
/// [rehearsal] names — the real targets on the new host stay empty, and the old host is only
/// read (never frozen).
#[tokio::test]
async fn rehearse_against_a_plan_copies_into_scratch_targets_and_never_freezes_the_old_host() {
    use hostshift_tests::rig::{Sandbox, fs};
    let mut sb = Sandbox::new("rehearse_plan").await;
    let scratch_db = format!("{}_scratch", sb.new_db);
    sb.world
        .new_pg
        .connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{scratch_db}\""))
        .await
        .expect("create the scratch database");
    let scratch_storage = sb.dir.join("new/scratch/evaluations");
    let scratch_env = sb.dir.join("new/scratch/backend.env");
    std::fs::create_dir_all(&scratch_storage).expect("scratch dir");
    let mut new = sb.new_setup();
    new.databases.push((
        "app_rehearsal".into(),
        sb.world.new_pg.conninfo(&scratch_db),
    ));
    new.storage
        .push(("evaluations-rehearsal".into(), scratch_storage.clone()));
    new.files
        .push(("backend-env-rehearsal".into(), scratch_env.clone()));
    new.restore_databases.push("app_rehearsal".into());
    new.write_storage.push("evaluations-rehearsal".into());
    new.write_files.push("backend-env-rehearsal".into());
    sb.start(sb.old_setup(), new).await;
    sb.write_plan(
        "[rehearsal]\n\
         databases = { app = \"app_rehearsal\" }\n\
         storage = { evaluations = \"evaluations-rehearsal\" }\n\
         files = { backend-env = \"backend-env-rehearsal\" }\n",
    );
    let old_tree = fs::snapshot(&sb.old_storage);

    let out = sb.cli(&["rehearse", "--json", "-q"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    for want in ["check", "sync", "catch-up", "cutover"] {
        let p = j["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .find(|p| p["phase"] == want)
            .unwrap_or_else(|| panic!("no phase {want}: {}", out.stdout));
        assert_eq!(p["status"], "ok", "{}", out.stdout);
    }
    assert!(j["rehearsed_freeze_ms"].as_u64().expect("timed") > 0);

    // The scratch targets hold the copy...
    let count = |client: tokio_postgres::Client| async move {
        client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .expect("count users")
            .get::<_, i64>(0)
    };
    let old_users = count(sb.world.old_pg.connect(&sb.old_db).await).await;
    assert!(old_users > 0);
    assert_eq!(
        count(sb.world.new_pg.connect(&scratch_db).await).await,
        old_users
    );
    fs::assert_same_content(&sb.old_storage, &scratch_storage);
    assert!(scratch_env.is_file());
    // ...the real targets were never touched...
    let real = sb.world.new_pg.connect(&sb.new_db).await;
    let tables: i64 = real
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .expect("count tables")
        .get(0);
    assert_eq!(tables, 0, "the real new database stays empty");
    assert_eq!(
        std::fs::read_dir(&sb.new_storage).expect("ls").count(),
        0,
        "the real new storage stays empty"
    );
    assert!(!sb.new_env.exists());
    // ...and the old host was only read: same files, still writable, no freeze setting.
    assert_eq!(fs::snapshot(&sb.old_storage), old_tree);
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    old.batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("the old database still takes writes");
    let settings: i64 = old
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .expect("settings")
        .get(0);
    assert_eq!(settings, 0, "the old database was never made read-only");
}

#[tokio::test]
async fn rehearse_against_a_plan_without_scratch_names_refuses_and_names_them() {
    use hostshift_tests::rig::Sandbox;
    let mut sb = Sandbox::new("rehearse_plan_missing").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["rehearse"]).await;
    assert_eq!(out.code, 2, "{}", out.both());
    for want in [
        "[rehearsal]",
        "databases.app",
        "storage.evaluations",
        "files.backend-env",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    assert_eq!(
        std::fs::read_dir(&sb.new_storage).expect("ls").count(),
        0,
        "nothing was copied"
    );
}
