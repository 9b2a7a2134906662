//! Sync and verify of storage trees and config files between two real agents: delta transfer,
//! integrity (corrupted chunks are caught and never committed), resume after a kill, refusals,
//! and the promise that the old host is never changed; a sync's units running at once (or in turn
//! when asked).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hostshift::plan::Plan;
use hostshift::progress;
use hostshift::sync::{self, ErrorKind, SyncOptions, TapFactory};
use hostshift_proto::v1::frame::Kind;
use hostshift_tests::rig::{self, Sandbox, fs};

async fn sandbox(test: &str, extra_files: usize) -> Sandbox {
    let mut sb = Sandbox::new(test).await;
    sb.plan_databases = false;
    for i in 0..extra_files {
        let d = sb.old_storage.join(format!("bulk/{:02}", i % 10));
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(
            d.join(format!("f{i}.bin")),
            vec![(i % 251) as u8; 1000 + i * 37],
        )
        .expect("file");
    }
    sb
}

fn opts() -> SyncOptions {
    SyncOptions {
        progress: progress::Mode::Quiet,
        ..SyncOptions::default()
    }
}

#[tokio::test]
async fn sync_copies_files_and_storage_then_verify_is_equal_and_the_old_host_is_unchanged() {
    let mut sb = sandbox("sync_equal", 40).await;
    std::os::unix::fs::symlink("2026/01/eval-0.json", sb.old_storage.join("latest.json"))
        .expect("symlink");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let old_before = fs::snapshot(&sb.old_storage);
    let env_before = std::fs::read(&sb.old_env).expect("env");

    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["mode"], "pull");
    let storage = j["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["kind"] == "storage")
        .expect("storage unit");
    assert_eq!(storage["files"].as_u64(), Some(44), "{}", out.stdout);

    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    assert_eq!(std::fs::read(&sb.new_env).expect("new env"), env_before);
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    assert!(verify.stdout.contains("equal"), "{}", verify.stdout);

    assert_eq!(
        fs::snapshot(&sb.old_storage),
        old_before,
        "the old host's tree must be untouched"
    );
    assert_eq!(std::fs::read(&sb.old_env).expect("env"), env_before);
}

#[tokio::test]
async fn second_sync_sends_only_what_changed_and_deletes_what_was_removed() {
    let mut sb = sandbox("sync_delta", 60).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let first = sb.cli(&["sync", "--json", "--only", "storage"]).await;
    assert_eq!(first.code, 0, "{}", first.both());

    let again = sb.cli(&["sync", "--json", "--only", "storage"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    let u = &again.json()["units"][0];
    assert_eq!(
        (u["files"].as_u64(), u["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{}",
        again.stdout
    );
    assert_eq!(u["skipped_files"].as_u64(), Some(63));

    // Change one file (1 KiB more), delete another, add a new one.
    let changed = sb.old_storage.join("bulk/03/f3.bin");
    std::fs::write(&changed, vec![7u8; 2048]).expect("change");
    std::fs::remove_file(sb.old_storage.join("bulk/04/f4.bin")).expect("delete");
    std::fs::write(sb.old_storage.join("2026/new.json"), b"{}").expect("add");
    let delta = sb.cli(&["sync", "--json", "--only", "storage"]).await;
    assert_eq!(delta.code, 0, "{}", delta.both());
    let u = &delta.json()["units"][0];
    assert_eq!(u["files"].as_u64(), Some(2), "{}", delta.stdout);
    // Only the changed and the new file travel: their bytes plus tar headers, far below the tree.
    let sent = u["bytes"].as_u64().expect("bytes");
    assert!(
        (2048 + 2..8 * 1024).contains(&sent),
        "sent {sent} bytes:\n{}",
        delta.stdout
    );
    assert!(
        !sb.new_storage.join("bulk/04/f4.bin").exists(),
        "deleted on old → deleted on new"
    );
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    // The deletion is counted everywhere it is reported (it happens in the prepare step, before
    // the batches): the sync's own table, the journal, the report and the new agent's log.
    assert!(
        u["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 deleted")),
        "the unit's detail counts the deletion: {}",
        delta.stdout
    );
    let journal =
        std::fs::read_to_string(sb.dir.join(".hostshift/test/journal.jsonl")).expect("journal");
    let last_done = journal
        .lines()
        .rfind(|l| l.contains("storage") && l.contains("\"status\":\"done\""))
        .expect("a done line for the storage unit");
    assert!(last_done.contains("1 deleted"), "journal: {last_done}");
    let reports = sb.dir.join(".hostshift/test/reports");
    let newest = std::fs::read_dir(&reports)
        .expect("reports folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .max()
        .expect("a report");
    let md = std::fs::read_to_string(newest.join("report.md")).expect("report.md");
    assert!(md.contains("1 deleted"), "report.md: {md}");
    let prepared = new_agent_lines(&sb, "tree prepared");
    assert!(
        prepared.iter().any(|l| l.contains("deleted=1")),
        "the new agent logs what prepare deleted: {prepared:#?}"
    );
}

/// A tap that flips one byte of the first chunk of every relayed storage batch stream it is
/// given for (`attempts` decides which attempts).
fn corrupt_first_chunk(attempts: fn(u32) -> bool, seen: Option<Arc<AtomicU32>>) -> TapFactory {
    Arc::new(move |unit: &str, attempt: u32| {
        if !unit.contains("batch") {
            return None;
        }
        if let Some(s) = &seen {
            s.fetch_add(1, Ordering::SeqCst);
        }
        attempts(attempt).then(|| {
            Arc::new(|index: u64, f: &mut hostshift_proto::v1::Frame| {
                if let (0, Some(Kind::Chunk(c))) = (index, &mut f.kind) {
                    let mut d = c.data.to_vec();
                    d[600] ^= 0x20;
                    c.data = d.into();
                }
            }) as sync::Tap
        })
    })
}

#[tokio::test]
async fn a_corrupted_chunk_is_caught_retried_and_never_committed() {
    let mut sb = sandbox("sync_corrupt", 10).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = Plan::load(&sb.plan_path()).expect("plan");
    let files_only = |root: &std::path::Path| {
        fs::content(root)
            .into_iter()
            .filter(|(_, v)| v.0 != "dir")
            .collect::<Vec<_>>()
    };
    let target_before = files_only(&sb.new_storage);

    // Corrupt one byte of the first chunk of every attempt: the stream can never be accepted.
    let always = corrupt_first_chunk(|_| true, None);
    let report = sync::run(
        &plan,
        &SyncOptions {
            relay: true,
            only: Some(sync::Only::Storage),
            tap: Some(always),
            ..opts()
        },
    )
    .await
    .expect("sync runs");
    assert!(!report.ok);
    let u = &report.units[0];
    assert_eq!(u.status, "failed");
    assert!(
        u.detail.contains("integrity check failed") || u.detail.contains("corrupt"),
        "{}",
        u.detail
    );
    // Issue 9 (smaller): said once, not "integrity check failed: integrity check failed: …".
    assert_eq!(
        u.detail.matches("integrity check failed").count(),
        1,
        "{}",
        u.detail
    );
    assert!(
        u.retried.iter().all(|e| e.kind == ErrorKind::DataLoss) && u.retried.len() >= 2,
        "{:?}",
        u.retried
    );
    // Directories may have been prepared; no file may have been committed.
    assert_eq!(
        files_only(&sb.new_storage),
        target_before,
        "nothing unverified may be committed"
    );
    assert!(
        !std::fs::read_dir(&sb.new_storage)
            .expect("ls")
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(".hostshift-staging")),
        "no staging folder may be left"
    );

    // Corrupt only the first attempt: the retry is sent again and accepted.
    let attempts = Arc::new(AtomicU32::new(0));
    let once = corrupt_first_chunk(|attempt| attempt == 1, Some(attempts.clone()));
    let report = sync::run(
        &plan,
        &SyncOptions {
            relay: true,
            only: Some(sync::Only::Storage),
            tap: Some(once),
            ..opts()
        },
    )
    .await
    .expect("sync runs");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.units[0].retried.len(), 1);
    assert_eq!(report.units[0].retried[0].kind, ErrorKind::DataLoss);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
}

/// Issue 15: a storage batch is proved by its files' digests and its seal, so its chunks carry
/// no SHA-256 of their own (which cost each side a second pass over every byte).
#[tokio::test]
async fn storage_batches_travel_without_chunk_digests_and_with_a_seal_in_their_trailer() {
    let mut sb = sandbox("sync_sealed", 10).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = Plan::load(&sb.plan_path()).expect("plan");
    // (chunks, chunks with a digest, trailers, trailers with a 32-byte seal)
    let seen = Arc::new(std::sync::Mutex::new((0u32, 0u32, 0u32, 0u32)));
    let record = seen.clone();
    let tap: TapFactory = Arc::new(move |unit: &str, _attempt: u32| {
        if !unit.contains("batch") {
            return None;
        }
        let record = record.clone();
        Some(Arc::new(move |_: u64, f: &mut hostshift_proto::v1::Frame| {
            let mut r = record.lock().expect("lock");
            match &f.kind {
                Some(Kind::Chunk(c)) => {
                    r.0 += 1;
                    r.1 += u32::from(!c.sha256.is_empty());
                }
                Some(Kind::Trailer(t)) => {
                    r.2 += 1;
                    r.3 += u32::from(t.sha256.len() == 32);
                }
                None => {}
            }
        }) as sync::Tap)
    });
    let report = sync::run(
        &plan,
        &SyncOptions {
            relay: true,
            only: Some(sync::Only::Storage),
            tap: Some(tap),
            ..opts()
        },
    )
    .await
    .expect("sync runs");
    assert!(report.ok, "{report:?}");
    let (chunks, hashed, trailers, sealed) = *seen.lock().expect("lock");
    assert!(chunks > 0 && trailers > 0, "no storage batch was relayed");
    assert_eq!(hashed, 0, "storage chunks carry no digest");
    assert_eq!(
        sealed, trailers,
        "every storage batch's trailer carries its seal"
    );
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
}

#[tokio::test]
async fn verify_catches_a_single_flipped_byte_even_with_size_and_mtime_kept() {
    let mut sb = sandbox("verify_flip", 5).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    assert_eq!(sb.cli(&["sync"]).await.code, 0);
    let victim = sb.new_storage.join("bulk/02/f2.bin");
    let meta = std::fs::metadata(&victim).expect("meta");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[10] ^= 1;
    std::fs::write(&victim, &bytes).expect("write");
    let mtime = filetime_of(&meta);
    set_mtime(&victim, mtime);
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("content differs: bulk/02/f2.bin"),
        "{}",
        out.stdout
    );
    // Only the file is blamed: its folders are identical to the nanosecond.
    assert!(
        !out.stdout.contains("mode/mtime/owner differ"),
        "a folder whose file changed is not itself different: {}",
        out.stdout
    );
    assert!(out.stderr.contains("storage evaluations"), "{}", out.stderr);

    // The config file: a changed byte there is named too.
    std::fs::write(
        &sb.new_env,
        std::fs::read_to_string(&sb.new_env)
            .expect("env")
            .replace("3666", "3667"),
    )
    .expect("env");
    let out = sb.cli(&["verify", "--json"]).await;
    let rows = out.json()["rows"].as_array().expect("rows").clone();
    assert!(
        rows.iter()
            .any(|r| r["name"] == "backend-env" && r["equal"] == false),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn verify_ignores_a_file_only_on_the_new_host_when_the_plan_keeps_extra_files() {
    let mut sb = sandbox("verify_keep_extra", 5).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let keep = plan.replacen(
        "name = \"evaluations\"\n",
        "name = \"evaluations\"\ndelete = false\n",
        1,
    );
    assert_ne!(plan, keep, "the plan names the tree");
    std::fs::write(sb.plan_path(), keep).expect("plan with delete = false");
    assert_eq!(sb.cli(&["sync"]).await.code, 0);
    // The app on the new host writes a file: its folder's mtime moves with it.
    std::fs::write(sb.new_storage.join("bulk/03/uploaded-on-new.bin"), b"x").expect("extra");
    let out = sb.cli(&["verify"]).await;
    assert_eq!(
        out.code,
        0,
        "an extra file only counts when the plan deletes: {}",
        out.both()
    );
    assert!(!out.stdout.contains("differ:"), "{}", out.stdout);
    // A sync keeps it and verify stays clean.
    assert_eq!(sb.cli(&["sync"]).await.code, 0);
    assert!(sb.new_storage.join("bulk/03/uploaded-on-new.bin").is_file());
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());

    // A folder whose mode differs is still reported.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        sb.new_storage.join("bulk/04"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("mode/mtime/owner differ: bulk/04"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_user_folder_named_like_the_staging_folder_is_never_skipped_silently() {
    let mut sb = sandbox("staging_named", 3).await;
    let theirs = sb.old_storage.join(".hostshift-staging-photos");
    std::fs::create_dir_all(&theirs).expect("dir");
    std::fs::write(theirs.join("a.jpg"), b"user data").expect("file");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["sync"]).await;
    assert_ne!(
        out.code,
        0,
        "the sync must not report success: {}",
        out.both()
    );
    assert!(
        out.both().contains(".hostshift-staging-photos") && out.both().contains("rename"),
        "names the folder and what to do: {}",
        out.both()
    );
    let out = sb.cli(&["verify"]).await;
    assert_ne!(out.code, 0, "verify must not call it equal: {}", out.both());
    assert!(
        out.both().contains(".hostshift-staging-photos"),
        "{}",
        out.both()
    );
    // Renamed, it is copied like any folder.
    std::fs::rename(&theirs, sb.old_storage.join("hostshift-staging-photos")).expect("rename");
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(
        std::fs::read(sb.new_storage.join("hostshift-staging-photos/a.jpg")).expect("copied"),
        b"user data"
    );
}

/// A 1 MiB tmpfs mounted on a folder for the test's life (the rig runs as root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path) -> SmallDisk {
        Self::mount_sized(at, "1m")
    }

    fn mount_sized(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount (util-linux)");
        assert!(
            ok.success(),
            "mount a tmpfs on {} (needs root)",
            at.display()
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_sync_that_cannot_fit_on_the_new_disk_is_refused_before_writing_anything() {
    let mut sb = sandbox("sync_small_disk", 0).await;
    let big = sb.old_storage.join("big");
    std::fs::create_dir_all(&big).expect("dir");
    for i in 0..3 {
        std::fs::write(big.join(format!("b{i}.bin")), vec![i as u8; 1 << 20]).expect("file");
    }
    let _disk = SmallDisk::mount(&sb.new_storage);
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.both().contains("free") && out.both().contains("evaluations"),
        "the refusal says how much is needed and free: {}",
        out.both()
    );
    let left: Vec<_> = std::fs::read_dir(&sb.new_storage)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "nothing written on the new host: {left:?}");
}

#[tokio::test]
async fn an_old_host_whose_disk_is_full_still_syncs_and_verifies_its_tree() {
    // The old agent keeps its manifest of the tree as a walk file in its state folder. A full
    // disk there (a common reason to move) must not stop the move: the walk falls back to
    // memory. 600 files make a walk file of ~80 KiB, more than the 16 KiB disk holds.
    let mut sb = sandbox("sync_full_old_disk", 600).await;
    let manifests = sb.dir.join("state-old/manifests");
    let disk = SmallDisk::mount_sized(&manifests, "16k");
    let filler = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1000"])
        .arg(format!("of={}", manifests.join("filler").display()))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run dd");
    assert!(!filler.success(), "dd stops at the full disk");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let before = fs::snapshot(&sb.old_storage);

    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    assert!(verify.stdout.contains("equal"), "{}", verify.stdout);
    assert_eq!(fs::snapshot(&sb.new_storage), before, "the copy is exact");
    assert_eq!(
        fs::snapshot(&sb.old_storage),
        before,
        "the old tree untouched"
    );
    let left: Vec<_> = std::fs::read_dir(&manifests)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "filler")
        .collect();
    assert!(left.is_empty(), "no half-written walk file left: {left:?}");
    drop(disk);
}

fn filetime_of(meta: &std::fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime(), meta.mtime_nsec())
}

fn set_mtime(path: &std::path::Path, (s, ns): (i64, i64)) {
    let out = std::process::Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{s}.{ns:09}"))
        .arg(path)
        .status()
        .expect("touch");
    assert!(out.success());
}

#[tokio::test]
async fn sync_is_refused_where_the_new_agent_does_not_allow_writes() {
    let mut sb = sandbox("sync_refused", 3).await;
    let mut new = sb.new_setup();
    new.write_storage.clear();
    new.write_files.clear();
    sb.start(sb.old_setup(), new).await;
    let before = fs::snapshot(&sb.new_storage);
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("add it to [allow] write_storage"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("add it to [allow] write_files"),
        "{}",
        out.stdout
    );
    assert_eq!(fs::snapshot(&sb.new_storage), before);
    assert!(!sb.new_env.exists());
}

#[tokio::test]
async fn a_link_escaping_the_old_tree_stops_the_sync_naming_it() {
    let mut sb = sandbox("sync_escape", 3).await;
    std::os::unix::fs::symlink("/etc/passwd", sb.old_storage.join("2026/evil")).expect("symlink");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(out.stdout.contains("2026/evil"), "{}", out.both());
    assert!(!sb.new_storage.join("2026/evil").exists());
}

#[tokio::test]
async fn a_sync_killed_midway_resumes_without_resending_finished_batches() {
    let mut sb = sandbox("sync_resume", 300).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = sb.plan_path().display().to_string();
    // Small batches, so the kill lands between batches; stop the coordinator hard.
    let mut child = tokio::process::Command::new(rig::hostshift_bin())
        .args([
            "sync",
            "--only",
            "storage",
            "--relay",
            "--batch-files",
            "10",
            "--plan",
            &plan,
            "-q",
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sync");
    let journal = sb.dir.join(".hostshift/test/journal.jsonl");
    rig::eventually(
        Duration::from_secs(60),
        "three finished batches in the journal",
        || {
            let j = journal.clone();
            async move {
                let text = std::fs::read_to_string(j).ok()?;
                (text.matches("\"status\":\"done\"").count() >= 3).then_some(())
            }
        },
    )
    .await;
    child.kill().await.expect("kill the coordinator");
    // The new agent notices the broken stream a moment later; count once its tree is still.
    let copied_before = rig::eventually(
        Duration::from_secs(30),
        "the new tree to settle after the kill",
        || {
            let root = sb.new_storage.clone();
            async move {
                let a = fs::content(&root);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let b = fs::content(&root);
                (a == b).then(|| b.values().filter(|v| v.0 == "file").count())
            }
        },
    )
    .await;
    assert!(
        (30..303).contains(&copied_before),
        "{copied_before} files copied before the kill"
    );

    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    let u = j["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["kind"] == "storage")
        .expect("storage");
    assert!(
        u["skipped_files"].as_u64().expect("skipped") >= copied_before as u64 - 10,
        "{}",
        out.stdout
    );
    assert_eq!(
        u["files"].as_u64().expect("files") + u["skipped_files"].as_u64().expect("skipped"),
        303
    );
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
}

#[tokio::test]
async fn a_file_changed_between_manifest_and_pack_is_deferred_and_the_rerun_copies_the_new_content()
{
    let mut sb = sandbox("sync_changed_midway", 20).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let plan = Plan::load(&sb.plan_path()).expect("plan");
    let victim = sb.old_storage.join("bulk/05/f5.bin");
    let original = std::fs::read(&victim).expect("read");
    let mut changed = original.clone();
    changed[0] ^= 0xff;
    // Rewritten after the manifest was read and before the batch is packed: same size, mtime
    // put back, so only the file's ctime and content tell.
    let rewrite: TapFactory = {
        let (victim, changed) = (victim.clone(), changed.clone());
        let done = Arc::new(AtomicU32::new(0));
        Arc::new(move |unit: &str, _attempt: u32| {
            if unit.contains("batch") && done.fetch_add(1, Ordering::SeqCst) == 0 {
                let mtime = filetime_of(&std::fs::metadata(&victim).expect("meta"));
                std::fs::write(&victim, &changed).expect("rewrite");
                set_mtime(&victim, mtime);
            }
            None
        })
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        sync::run(
            &plan,
            &SyncOptions {
                relay: true,
                only: Some(sync::Only::Storage),
                tap: Some(rewrite),
                ..opts()
            },
        ),
    )
    .await
    .expect("the sync ends")
    .expect("sync runs");
    // Deferred, not fatal: the rest of the batch committed, the file is named.
    assert!(report.ok, "{report:?}");
    let u = &report.units[0];
    assert_eq!(u.deferred, 1, "{u:?}");
    assert_eq!(u.deferred_names, ["bulk/05/f5.bin"], "{u:?}");
    assert!(u.detail.contains("bulk/05/f5.bin"), "{u:?}");
    assert!(u.retried.is_empty(), "{u:?}");
    let mut others = fs::content(&sb.old_storage);
    others.remove("bulk/05/f5.bin");
    let mut new = fs::content(&sb.new_storage);
    new.remove("bulk/05/f5.bin");
    assert_eq!(others, new, "the rest of the batch committed");
    let copied = sb.new_storage.join("bulk/05/f5.bin");
    assert!(
        std::fs::read(&copied).ok().as_deref() != Some(&changed[..]),
        "content the manifest did not describe was committed"
    );
    assert!(
        !std::fs::read_dir(&sb.new_storage)
            .expect("ls")
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(".hostshift-staging")),
        "no staging folder may be left"
    );

    let out = sb.cli(&["sync", "--json", "--only", "storage"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(std::fs::read(&copied).expect("copied"), changed);
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
}

/// The new agent's `tree finalized` log lines (colour codes removed), oldest first.
fn finalized(sb: &Sandbox) -> Vec<String> {
    new_agent_lines(sb, "tree finalized")
}

/// The new agent's log lines containing `needle` (colour codes removed), oldest first.
fn new_agent_lines(sb: &Sandbox, needle: &str) -> Vec<String> {
    sb.new_agent()
        .log_text()
        .lines()
        .map(|l| {
            let mut out = String::new();
            let mut skipping = false;
            for c in l.chars() {
                match c {
                    '\u{1b}' => skipping = true,
                    c if skipping && c.is_ascii_alphabetic() => skipping = false,
                    _ if skipping => {}
                    c => out.push(c),
                }
            }
            out
        })
        .filter(|l| l.contains(needle))
        .collect()
}

#[tokio::test]
async fn a_second_sync_with_nothing_changed_finalizes_nothing_and_one_that_deletes_flushes() {
    let mut sb = sandbox("sync_no_flush", 30).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let first = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(first.code, 0, "{}", first.both());
    let after_first = finalized(&sb);
    assert_eq!(after_first.len(), 1, "{after_first:#?}");
    assert!(after_first[0].contains("flushed=true"), "{after_first:#?}");

    let again = sb.cli(&["sync", "--json", "--only", "storage"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(again.json()["units"][0]["status"], "unchanged");
    // Nothing to send, fix or delete: the coordinator skips prepare and finalize altogether,
    // so nothing is walked again and nothing flushed.
    let lines = finalized(&sb);
    assert_eq!(
        lines.len(),
        1,
        "no finalize when nothing changed: {lines:#?}"
    );

    std::fs::remove_file(sb.old_storage.join("bulk/07/f7.bin")).expect("delete");
    let delta = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(delta.code, 0, "{}", delta.both());
    let lines = finalized(&sb);
    // `prepare` deleted the file before the batches; finalize set its folder's mtime back and
    // flushed both to disk.
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("dirs_fixed=1") && lines[1].contains("flushed=true"),
        "a deletion is flushed to disk: {lines:#?}"
    );
    assert!(!sb.new_storage.join("bulk/07/f7.bin").exists());
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
}

/// Bytes of content staged so far on the new host (any `.hostshift-staging-*` folder).
fn staged_bytes(root: &std::path::Path) -> u64 {
    let Ok(list) = std::fs::read_dir(root) else {
        return 0;
    };
    list.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".hostshift-staging-")
        })
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_file_changed_while_it_is_read_is_deferred_and_the_rest_of_its_batch_commits() {
    use std::os::unix::fs::FileExt;
    let mut sb = sandbox("sync_defer_one", 30).await;
    // First in the stream (paths are sent in order), and far larger than everything the
    // pipeline buffers between the old agent's read and the new host's staging folder
    // (frame queues and HTTP/2 windows: well under 16 MiB), so it is still being read on the
    // old host when its first bytes reach the new one.
    let size: usize = 48 << 20;
    let big = sb.old_storage.join("00-big.bin");
    std::fs::write(
        &big,
        (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    )
    .expect("big");
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let new_root = sb.new_storage.clone();

    let sync = sb.cli(&["sync", "--json", "--only", "storage"]);
    let change = async {
        rig::eventually(
            Duration::from_secs(120),
            "the big file's first bytes staged on the new host",
            || {
                let r = new_root.clone();
                async move { (staged_bytes(&r) > 0).then_some(()) }
            },
        )
        .await;
        // An in-place write of its last byte while the old agent reads it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&big)
            .expect("open big");
        f.write_all_at(&[0xff], size as u64 - 1).expect("change");
    };
    let (out, ()) = tokio::join!(sync, change);
    assert_eq!(out.code, 0, "the sync finishes: {}", out.both());
    let u = &out.json()["units"][0];
    assert_eq!(u["deferred"].as_u64(), Some(1), "{}", out.stdout);
    assert_eq!(u["deferred_names"], serde_json::json!(["00-big.bin"]));
    assert_eq!(
        u["retried"].as_array().map(Vec::len),
        Some(0),
        "one changed file neither aborts its batch nor re-plans the tree: {}",
        out.stdout
    );
    // Never committed half-read: absent on the new host (first sync), every other file there.
    assert!(!sb.new_storage.join("00-big.bin").exists());
    let mut old = fs::content(&sb.old_storage);
    old.remove("00-big.bin");
    assert_eq!(
        old,
        fs::content(&sb.new_storage),
        "the rest of the batch committed"
    );
    let journal =
        std::fs::read_to_string(sb.dir.join(".hostshift/test/journal.jsonl")).expect("journal");
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"deferred\"") && l.contains("00-big.bin")),
        "the journal names the deferred file: {journal}"
    );
    let reports = sb.dir.join(".hostshift/test/reports");
    let newest = std::fs::read_dir(&reports)
        .expect("reports folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .max()
        .expect("a report");
    let md = std::fs::read_to_string(newest.join("report.md")).expect("report.md");
    assert!(
        md.contains("1 deferred") && md.contains("00-big.bin"),
        "the report names the deferred file: {md}"
    );
    // Not equal: verify names it; the next pass sends it.
    let verify = sb.cli(&["verify"]).await;
    assert_ne!(verify.code, 0, "{}", verify.both());
    assert!(verify.stdout.contains("00-big.bin"), "{}", verify.stdout);
    // (A whole sync: verify also compares the config files.)
    let again = sb.cli(&["sync"]).await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert!(!again.stdout.contains("deferred"), "{}", again.stdout);
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    assert_eq!(
        std::fs::read(sb.new_storage.join("00-big.bin")).expect("big on new"),
        std::fs::read(&big).expect("big on old")
    );
}

#[tokio::test]
async fn storage_sync_finishes_while_users_upload_and_reports_what_it_deferred() {
    use hostshift_tests::rig::uploader::{KEEPS, Uploader, uploaded_files};
    let mut sb = sandbox("sync_uploads", 200).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let mut up = Uploader::start(&sb.old_storage);
    let old_root = sb.old_storage.clone();
    // Until the uploader deletes as well as creates and overwrites: the two syncs below take
    // about a second since they stopped walking the whole tree at their end, and once all of
    // it went by before the first delete.
    rig::eventually(
        Duration::from_secs(30),
        "the first uploads and deletes",
        || {
            let r = old_root.clone();
            async move { (uploaded_files(&r).len() >= KEEPS + 2).then_some(()) }
        },
    )
    .await;
    // Small batches: many streams, so uploads land between the manifest and the reads.
    let out = sb
        .cli(&["sync", "--json", "--only", "storage", "--batch-files", "20"])
        .await;
    let human = sb
        .cli(&["sync", "--only", "storage", "--batch-files", "20"])
        .await;
    let stats = up.stop();
    assert!(
        stats.ops_per_sec >= 10.0 && stats.overwritten > 0 && stats.deleted > 0,
        "{stats:?}"
    );
    for o in [&out, &human] {
        assert_eq!(
            o.code,
            0,
            "the sync finishes while users upload: {}",
            o.both()
        );
    }
    let u = &out.json()["units"][0];
    assert_eq!(
        u["retried"].as_array().map(Vec::len),
        Some(0),
        "changed files are deferred, not a reason to re-plan: {}",
        out.stdout
    );
    let deferred = u["deferred"].as_u64().expect("deferred count");
    eprintln!("uploads during the syncs: {stats:?}; the first sync deferred {deferred}");
    let names = u["deferred_names"].as_array().expect("deferred names");
    assert_eq!(names.len() as u64, deferred.min(10), "{}", out.stdout);
    // Every upload on the new host is a state the old host held — never a torn read.
    for (rel, path) in uploaded_files(&sb.new_storage) {
        let bytes = std::fs::read(&path).expect("read new copy");
        if let Some(why) = up.check_copy(&rel, &bytes) {
            panic!("{why}");
        }
    }
    // Once the uploads stop, one more pass makes the trees equal.
    // (A whole sync: verify also compares the config files.)
    let last = sb.cli(&["sync", "--json"]).await;
    assert_eq!(last.code, 0, "{}", last.both());
    let storage = last.json()["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["kind"] == "storage")
        .expect("storage unit")
        .clone();
    assert_eq!(storage["deferred"].as_u64(), Some(0), "{}", last.stdout);
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
}

/// Issue 14 (smaller): a config file equal on both hosts (bytes after the plan's overrides, mode,
/// owner) is not written again — same inode, same mtime — and counts as unchanged; one that
/// differs is rewritten.
#[tokio::test]
async fn an_equal_config_file_is_not_rewritten_and_counts_as_unchanged() {
    use std::os::unix::fs::MetadataExt;
    let mut sb = sandbox("file_unchanged", 0).await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    sb.write_plan("");
    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).expect("stat the new .env");
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let first = stamp(&sb.new_env);
    let file_unit = |j: &serde_json::Value| {
        j["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["kind"] == "file")
            .cloned()
            .expect("the file unit")
    };
    assert_eq!(file_unit(&out.json())["status"], "copied", "{}", out.stdout);

    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let unit = file_unit(&out.json());
    assert_eq!(unit["status"], "unchanged", "{unit}");
    assert_eq!(unit["files"], 0, "{unit}");
    assert_eq!(
        stamp(&sb.new_env),
        first,
        "an equal file keeps its inode and mtime"
    );
    let human = sb.cli(&["sync"]).await;
    assert_eq!(human.code, 0, "{}", human.both());
    assert!(!human.both().contains("copied 1 files"), "{}", human.both());

    // A real change is still copied.
    std::fs::write(&sb.old_env, "PORT=3667\n").expect("change the old .env");
    let out = sb.cli(&["sync", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(file_unit(&out.json())["status"], "copied", "{}", out.stdout);
    assert_eq!(std::fs::read(&sb.new_env).expect("read"), b"PORT=3667\n");
    assert_ne!(stamp(&sb.new_env).0, first.0);
}

/// The top-level units' (`file …`, `storage …`, `database …`) journal marks of run `run`, in
/// order: `(unit, status)`.
fn unit_marks(sb: &Sandbox, run: &str) -> Vec<(String, String)> {
    let journal = sb.dir.join(".hostshift/test/journal.jsonl");
    rig::cutover::read_journal(&journal)
        .into_iter()
        .filter(|e| e["phase"] == "sync" && e["run"] == run)
        .filter_map(|e| {
            let unit = e["unit"].as_str()?.to_string();
            let top = ["file ", "storage ", "database "]
                .iter()
                .any(|k| unit.starts_with(k))
                && !unit.contains(" batch ")
                && unit.split(' ').count() == 2;
            (top && (e["status"] == "started" || e["status"] == "done"))
                .then(|| (unit, e["status"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// The run id of the latest `sync` in the sandbox's journal.
fn last_run(sb: &Sandbox) -> String {
    let journal = sb.dir.join(".hostshift/test/journal.jsonl");
    rig::cutover::read_journal(&journal)
        .into_iter()
        .rev()
        .find(|e| e["unit"] == "sync" && e["status"] == "started")
        .and_then(|e| e["run"].as_str().map(str::to_string))
        .expect("a sync run in the journal")
}

/// A sync runs its units at once — every unit has started before the first one ends, so the
/// database copies while the tree is walked and sent (issue 15: the whole takes less than the
/// sum); `--one-at-a-time` keeps them in turn, each done before the next starts.
#[tokio::test]
async fn a_sync_runs_its_units_at_once_and_in_turn_when_asked() {
    let mut sb = Sandbox::new("units_at_once").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;

    let out = sb.cli(&["sync", "--one-at-a-time"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let marks = unit_marks(&sb, &last_run(&sb));
    let kinds = |m: &[(String, String)]| {
        ["file ", "storage ", "database "]
            .iter()
            .filter(|k| m.iter().any(|(u, _)| u.starts_with(*k)))
            .count()
    };
    assert_eq!(kinds(&marks), 3, "files, a tree and a database: {marks:?}");
    // In turn: each unit's marks are together, its `done` before the next unit's `started`.
    let mut seen: Vec<&str> = Vec::new();
    for (unit, _) in &marks {
        if seen.last() != Some(&unit.as_str()) {
            assert!(
                !seen.contains(&unit.as_str()),
                "{unit} came back after another unit began: {marks:?}"
            );
            seen.push(unit);
        }
    }

    std::fs::write(
        sb.old_storage.join("late.bin"),
        b"written after the first sync",
    )
    .expect("a new file");
    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let marks = unit_marks(&sb, &last_run(&sb));
    let first_done = marks
        .iter()
        .position(|(_, s)| s == "done")
        .expect("a unit finished");
    for kind in ["storage ", "database "] {
        let start = marks
            .iter()
            .position(|(u, s)| u.starts_with(kind) && s == "started")
            .unwrap_or_else(|| panic!("the {kind}unit's start is journaled: {marks:?}"));
        assert!(
            start < first_done,
            "the {kind}unit started before any unit ended: {marks:?}"
        );
    }
    let verify = sb.cli(&["verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
}
