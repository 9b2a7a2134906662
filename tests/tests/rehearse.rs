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
        "catch-up",
        "cutover",
        "verify-after",
    ] {
        let p = phases
            .iter()
            .find(|p| p["phase"] == want)
            .unwrap_or_else(|| panic!("no phase {want}: {}", out.stdout));
        assert_eq!(p["status"], "ok", "{}", out.stdout);
    }
    // The cutover froze writes for a measured, non-zero time within the plan's 30 s budget, and
    // the catch-up moved the app's late writes as key ranges, not whole tables.
    let freeze = j["freeze_ms"].as_u64().expect("freeze_ms");
    assert!(freeze > 0 && freeze < 30_000, "{freeze} ms");
    let catch_up = phases
        .iter()
        .find(|p| p["phase"] == "catch-up")
        .expect("catch-up");
    assert!(
        catch_up["detail"]
            .as_str()
            .is_some_and(|d| d.contains("table range(s)") && !d.contains(" 0 table range")),
        "{catch_up}"
    );
    assert!(!lab.exists(), "the lab folder is removed");
    // The report outlives the lab: one self-contained page with the phases.
    let report = std::path::PathBuf::from(j["report"].as_str().expect("report folder"));
    let html = std::fs::read_to_string(report.join("report.html")).expect("report.html");
    assert!(
        html.contains("sync")
            && html.contains("cutover")
            && html.contains("freeze")
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
