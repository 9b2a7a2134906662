//! Backups made on a host by its real agent, driven through the real CLI against real PostgreSQL
//! clusters: the artifacts restore by hand with plain `pg_restore` and `tar`, `verify` names a
//! damaged artifact, retention never deletes the newest backup that verifies, `restore` works where
//! `[allow]` permits and changes nothing where it does not, the S3 upload round-trips against moto,
//! and a backup never changes the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use hostshift::lab::seed::{self, TABLES};
use hostshift_tests::rig::{AgentProc, AgentSetup, PgInfo, Sandbox, fs};
use serde_json::Value;

/// Appends `[backup]` with `dir` and `more` (raw TOML lines) to an agent's config.
fn with_backups(mut s: AgentSetup, dir: &Path, more: &str) -> AgentSetup {
    let dir = toml::Value::String(dir.display().to_string());
    s.extra
        .push_str(&format!("\n[backup]\ndir = {dir}\n{more}\n"));
    s
}

/// `hostshift backup --json` on the old host; its result.
async fn backup(sb: &Sandbox) -> Value {
    let out = sb.cli(&["backup", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    // Progress: one JSON event per line on stderr, a `done` per artifact written.
    let done: Vec<Value> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "done")
        .collect();
    assert!(
        done.iter().any(|e| e["unit"] == "database app"
            && e["ok"] == true
            && e["bytes"].as_u64() > Some(0)),
        "no progress event for the database artifact: {}",
        out.stderr
    );
    out.json()
}

/// Row counts per seeded table and the content digest of `db`.
async fn db_state(pg: &PgInfo, db: &str) -> (BTreeMap<String, i64>, BTreeMap<String, String>) {
    let c = pg.connect(db).await;
    let mut counts = BTreeMap::new();
    for t in TABLES {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {t} in {db}: {e}"))
            .get(0);
        counts.insert(t.to_string(), n);
    }
    let digest = seed::content_digest(&c)
        .await
        .unwrap_or_else(|e| panic!("digest of {db}: {e}"));
    (counts, digest)
}

/// A program the test runs itself; a missing one fails the test with the install command.
fn tool(path: PathBuf, install: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: install it with `{install}`",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn flip_a_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = b.len() / 2;
    b[i] ^= 0x40;
    std::fs::write(path, b).expect("write back");
}

fn ids(list: &Value) -> Vec<String> {
    list["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_string())
        .collect()
}

/// Files only (tar recreates parent folders with default modes): path → (digest, mode).
fn files_of(root: &Path) -> BTreeMap<String, (String, u32)> {
    fs::snapshot(root)
        .into_iter()
        .filter(|(_, s)| s.kind == "file")
        .map(|(k, s)| (k, (s.content, s.mode)))
        .collect()
}

#[tokio::test]
async fn a_backup_restores_by_hand_with_plain_pg_restore_and_tar_and_leaves_the_source_unchanged() {
    let mut sb = Sandbox::new("backup_plain").await;
    let dir = sb.dir.join("old-backups");
    sb.start(with_backups(sb.old_setup(), &dir, ""), sb.new_setup())
        .await;
    let (old_pg, new_pg) = (sb.world.old_pg.clone(), sb.world.new_pg.clone());
    let db_before = db_state(&old_pg, &sb.old_db).await;
    let tree_before = fs::snapshot(&sb.old_storage);
    let env_before = std::fs::read(&sb.old_env).expect("env");

    let j = backup(&sb).await;
    let id = j["id"].as_str().expect("id").to_string();
    let path = dir.join(&id);
    assert_eq!(j["path"], path.display().to_string().as_str());
    let kinds: Vec<&str> = j["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["database", "storage", "storage-index", "file"],
        "{j}"
    );
    assert!(
        !dir.join(format!(".incomplete-{id}")).exists(),
        "the staging folder is renamed away"
    );

    // manifest.json: every artifact's size and SHA-256, tool versions, host and time.
    let m: Value =
        serde_json::from_slice(&std::fs::read(path.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(m["id"], id.as_str());
    assert!(
        m["tools"]["pg_dump"]
            .as_str()
            .expect("pg_dump version")
            .starts_with("pg_dump (PostgreSQL) "),
        "{m}"
    );
    assert!(!m["hostname"].as_str().expect("hostname").is_empty());
    assert!(
        m["created_at"].as_str().expect("time").ends_with('Z'),
        "{m}"
    );
    for a in m["artifacts"].as_array().expect("artifacts") {
        let bytes = std::fs::read(path.join(a["file"].as_str().expect("file"))).expect("artifact");
        assert_eq!(a["size"].as_u64(), Some(bytes.len() as u64), "{a}");
        assert_eq!(
            a["sha256"],
            hostshift_shared::digest::Sha256Digest::of(&bytes)
                .to_string()
                .as_str(),
            "{a}"
        );
    }
    assert!(
        m["artifacts"][0]["server_version"]
            .as_str()
            .expect("server version")
            .starts_with("15"),
        "{m}"
    );

    // The database: plain pg_restore into a fresh database on the new cluster.
    let fresh = format!("{}_plain", sb.new_db);
    let admin = new_pg.connect("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{fresh}\""))
        .await
        .expect("create db");
    let pg_restore = tool(
        new_pg.bin_dir.join("pg_restore"),
        "apt-get install -y postgresql-client-15",
    );
    run(Command::new(pg_restore)
        .args(["--no-password", "--exit-on-error", "-h"])
        .arg(&new_pg.socket_dir)
        .args([
            "-p",
            &new_pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            &fresh,
        ])
        .arg(path.join("databases/app.dump")));
    assert_eq!(
        db_state(&new_pg, &fresh).await,
        db_before,
        "restored rows and content equal the source"
    );
    let n_users = db_before.0["users"];
    assert_eq!(n_users, sb.world.seed.rows["users"]);

    // The tree: plain tar -xzf.
    let tar = ["/usr/bin/tar", "/bin/tar"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file());
    let tar = tool(
        tar.unwrap_or_else(|| PathBuf::from("/usr/bin/tar")),
        "apt-get install -y tar",
    );
    let out = sb.dir.join("by-hand");
    std::fs::create_dir_all(&out).expect("dir");
    run(Command::new(tar)
        .arg("-xzf")
        .arg(path.join("storage/evaluations.tar.gz"))
        .arg("-C")
        .arg(&out));
    assert_eq!(
        files_of(&out),
        files_of(&sb.old_storage),
        "tar -xzf gives the same files, bytes and modes"
    );
    assert_eq!(
        std::fs::read(path.join("files/backend-env")).expect("env copy"),
        env_before
    );

    // Nothing of the source changed.
    assert_eq!(db_state(&old_pg, &sb.old_db).await, db_before);
    assert_eq!(fs::snapshot(&sb.old_storage), tree_before);
    assert_eq!(std::fs::read(&sb.old_env).expect("env"), env_before);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE \"{fresh}\""))
        .await;
}

#[tokio::test]
async fn verify_passes_then_a_flipped_byte_fails_naming_the_artifact() {
    let mut sb = Sandbox::new("backup_verify").await;
    let dir = sb.dir.join("old-backups");
    sb.start(with_backups(sb.old_setup(), &dir, ""), sb.new_setup())
        .await;
    let id = backup(&sb).await["id"].as_str().expect("id").to_string();

    let ok = sb.cli(&["backup", "verify"]).await;
    assert_eq!(ok.code, 0, "{}", ok.both());
    assert!(
        ok.stdout.contains(&id) && ok.stdout.contains("ok"),
        "{}",
        ok.stdout
    );

    flip_a_byte(&dir.join(&id).join("databases/app.dump"));
    let bad = sb.cli(&["backup", "verify", "--id", &id, "--json"]).await;
    assert_eq!(bad.code, 1, "{}", bad.both());
    assert!(
        bad.stderr.contains("databases/app.dump") && bad.stderr.contains("SHA-256"),
        "{}",
        bad.stderr
    );
    let v = &bad.json()["verdicts"][0];
    assert_eq!(
        (v["ok"].as_bool(), v["problems"][0]["file"].as_str()),
        (Some(false), Some("databases/app.dump")),
        "{v}"
    );
    let list = sb.cli(&["backup", "list"]).await;
    assert_eq!(list.code, 0, "{}", list.both());
}

#[tokio::test]
async fn retention_never_deletes_the_newest_backup_that_verifies_nor_one_in_progress() {
    let mut sb = Sandbox::new("backup_retention").await;
    let dir = sb.dir.join("old-backups");
    sb.start(with_backups(sb.old_setup(), &dir, ""), sb.new_setup())
        .await;
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(backup(&sb).await["id"].as_str().expect("id").to_string());
    }
    // The two newest are damaged: keep_last = 2 keeps only damaged backups.
    for id in &made[2..] {
        flip_a_byte(&dir.join(id).join("storage/evaluations.tar.gz"));
    }
    // Same agent, now with retention.
    sb.old = None;
    // No age rule (keep_days = 0 is refused now: 1..=3650): only keep_last decides.
    let setup = with_backups(sb.old_setup(), &dir, "keep_last = 2");
    let agent = AgentProc::start(&setup, &sb.dir, sb.world).await;
    sb.addresses.0 = agent.address();
    sb.old = Some(agent);
    sb.write_plan("");

    // A backup in progress holds the folder's lock: prune waits for nothing and deletes nothing.
    let staging = dir.join(".incomplete-20990101T000000Z-abcdef");
    std::fs::create_dir(&staging).expect("staging");
    let lock_file = std::fs::File::open(dir.join(".lock")).expect("lock file");
    let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .expect("hold the lock");
    let busy = sb.cli(&["backup", "prune"]).await;
    assert_eq!(busy.code, 1, "{}", busy.both());
    assert!(
        busy.stderr.contains("try again when it ends"),
        "{}",
        busy.stderr
    );
    assert!(
        staging.is_dir() && made.iter().all(|id| dir.join(id).is_dir()),
        "nothing touched"
    );
    drop(held);

    let out = sb.cli(&["backup", "prune", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["deleted"], serde_json::json!([made[0]]), "{j}");
    assert_eq!(
        j["stale_removed"],
        serde_json::json!([".incomplete-20990101T000000Z-abcdef"])
    );
    let reasons = |id: &str| -> Vec<String> {
        j["kept"]
            .as_array()
            .expect("kept")
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| serde_json::from_value(k["reasons"].clone()).expect("reasons"))
            .unwrap_or_default()
    };
    assert_eq!(reasons(&made[1]), ["newest that verifies"], "{j}");
    assert_eq!(reasons(&made[3]), ["keep_last"]);
    let list = sb.cli(&["backup", "list", "--json"]).await;
    assert_eq!(
        ids(&list.json()),
        [made[3].clone(), made[2].clone(), made[1].clone()]
    );

    // A new backup prunes by itself: now it is the newest good one, and keep_last keeps two.
    let j = backup(&sb).await;
    let newest = j["id"].as_str().expect("id").to_string();
    let mut pruned: Vec<String> = serde_json::from_value(j["pruned"].clone()).expect("pruned");
    let mut expected = vec![made[1].clone(), made[2].clone()];
    pruned.sort();
    expected.sort();
    assert_eq!(pruned, expected, "{j}");
    let list = sb.cli(&["backup", "list", "--json"]).await;
    assert_eq!(ids(&list.json()), [newest, made[3].clone()]);
}

#[tokio::test]
async fn restore_works_on_the_new_host_where_allowed_and_is_refused_changing_nothing_where_not() {
    let mut sb = Sandbox::new("backup_restore").await;
    let (old_dir, new_dir) = (sb.dir.join("old-backups"), sb.dir.join("new-backups"));
    sb.start(
        with_backups(sb.old_setup(), &old_dir, ""),
        with_backups(sb.new_setup(), &new_dir, ""),
    )
    .await;
    let (old_pg, new_pg) = (sb.world.old_pg.clone(), sb.world.new_pg.clone());
    let id = backup(&sb).await["id"].as_str().expect("id").to_string();
    let db_before = db_state(&old_pg, &sb.old_db).await;
    let tree_before = fs::snapshot(&sb.old_storage);
    let env_before = std::fs::read(&sb.old_env).expect("env");

    // The old host allows nothing destructive: refused, naming every key, nothing changed.
    let refused = sb
        .cli(&["backup", "restore", "--id", &id, "--host", "old", "--yes"])
        .await;
    assert_eq!(refused.code, 1, "{}", refused.both());
    for key in [
        "[allow] restore_databases",
        "[allow] write_storage",
        "[allow] write_files",
    ] {
        assert!(
            refused.stderr.contains(key),
            "{key} not named:\n{}",
            refused.stderr
        );
    }
    assert_eq!(db_state(&old_pg, &sb.old_db).await, db_before);
    assert_eq!(fs::snapshot(&sb.old_storage), tree_before);
    assert_eq!(std::fs::read(&sb.old_env).expect("env"), env_before);
    // Without a terminal, a restore needs --yes (usage error, nothing sent).
    let unconfirmed = sb
        .cli(&["backup", "restore", "--id", &id, "--host", "new"])
        .await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.both());
    assert!(
        unconfirmed.stderr.contains("--yes"),
        "{}",
        unconfirmed.stderr
    );

    // The operator copies the backup to the new host (docs/backups.md); the restore is by name.
    std::fs::create_dir_all(&new_dir).expect("new backup dir");
    run(Command::new("cp")
        .arg("-a")
        .arg(old_dir.join(&id))
        .arg(&new_dir));
    std::fs::write(sb.new_storage.join("stale.json"), b"{}").expect("a file the backup lacks");
    std::fs::write(&sb.new_env, b"PORT=1\n").expect("an older env");
    let out = sb
        .cli(&[
            "backup", "restore", "--id", &id, "--host", "new", "--yes", "--json",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.both());
    let kinds: Vec<String> = out.json()["restored"]
        .as_array()
        .expect("restored")
        .iter()
        .map(|r| r["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(kinds, ["database", "storage", "file"]);
    assert_eq!(
        db_state(&new_pg, &sb.new_db).await,
        db_before,
        "the new database equals the old one"
    );
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    assert_eq!(std::fs::read(&sb.new_env).expect("new env"), env_before);
    // Restoring again is safe: the database is replaced, not doubled.
    let again = sb
        .cli(&["backup", "restore", "--id", &id, "--host", "new", "--yes"])
        .await;
    assert_eq!(again.code, 0, "{}", again.both());
    assert_eq!(db_state(&new_pg, &sb.new_db).await, db_before);
}

#[tokio::test]
async fn s3_upload_round_trips_against_moto_with_the_digest_as_metadata() {
    use aws_sdk_s3::config::{Credentials, Region};
    let moto = hostshift_switch::moto::MotoServer::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sb = Sandbox::new("backup_s3").await;
    // 20 MiB of incompressible data: the tree's .tar.gz goes up as a multipart upload.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(sb.old_storage.join("2026/big.bin"), &big).expect("big file");
    let creds = sb.dir.join("aws-credentials");
    std::fs::write(
        &creds,
        "[backups]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .expect("creds");
    let s3 = format!(
        "[backup.s3]\nbucket = \"hs-backups\"\nprefix = \"hostshift/old\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nprofile = \"backups\"\ncredentials_file = {}\nupload = true",
        moto.endpoint_url(),
        toml::Value::String(creds.display().to_string())
    );
    let dir = sb.dir.join("old-backups");
    sb.start(with_backups(sb.old_setup(), &dir, &s3), sb.new_setup())
        .await;

    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint_url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    );
    client
        .create_bucket()
        .bucket("hs-backups")
        .send()
        .await
        .expect("create the bucket");

    // upload = true: the backup goes up as soon as it is complete.
    let j = backup(&sb).await;
    let id = j["id"].as_str().expect("id").to_string();
    assert_eq!(j["upload_error"], "", "{j}");
    assert_eq!(
        j["upload"]["key_prefix"],
        format!("hostshift/old/{id}/").as_str(),
        "{j}"
    );
    // And by hand, again (it replaces the same objects).
    let out = sb.cli(&["backup", "upload", "--id", &id, "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let objects = out.json()["upload"]["objects"]
        .as_array()
        .expect("objects")
        .clone();
    assert_eq!(
        objects.last().expect("last")["key"],
        format!("hostshift/old/{id}/manifest.json").as_str()
    );
    let tar = objects
        .iter()
        .find(|o| o["key"].as_str().is_some_and(|k| k.ends_with(".tar.gz")))
        .expect("tar object");
    assert_eq!(tar["multipart"], true, "{tar}");

    let m: Value = serde_json::from_slice(
        &std::fs::read(dir.join(&id).join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let mut files: Vec<(String, String)> = m["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| {
            (
                a["file"].as_str().expect("file").to_string(),
                a["sha256"].as_str().expect("sha").to_string(),
            )
        })
        .collect();
    let manifest_bytes = std::fs::read(dir.join(&id).join("manifest.json")).expect("manifest");
    files.push((
        "manifest.json".into(),
        hostshift_shared::digest::Sha256Digest::of(&manifest_bytes).to_string(),
    ));
    for (file, sha) in files {
        let key = format!("hostshift/old/{id}/{file}");
        let got = client
            .get_object()
            .bucket("hs-backups")
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
        assert_eq!(
            got.metadata()
                .and_then(|md| md.get("sha256"))
                .map(String::as_str),
            Some(sha.as_str()),
            "{key}"
        );
        let body = got.body.collect().await.expect("body").into_bytes();
        assert_eq!(
            hostshift_shared::digest::Sha256Digest::of(&body).to_string(),
            sha,
            "{key}: downloaded bytes"
        );
        assert_eq!(
            body.as_ref(),
            std::fs::read(dir.join(&id).join(&file))
                .expect("local")
                .as_slice(),
            "{key}"
        );
    }
}

#[tokio::test]
async fn the_agent_backup_command_backs_up_everything_declared_and_prunes() {
    let mut sb = Sandbox::new("backup_local").await;
    let dir = sb.dir.join("old-backups");
    sb.start(
        with_backups(sb.old_setup(), &dir, "keep_last = 1"),
        sb.new_setup(),
    )
    .await;
    let config = sb.old().config.clone();
    let local = || {
        let out = Command::new(hostshift_tests::rig::agent_bin())
            .arg("--config")
            .arg(&config)
            .arg("backup")
            .env("HOSTSHIFT_LOG", "warn")
            .output()
            .expect("run hostshift-agent backup");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let first = local();
    assert!(first.contains("complete: 4 artifacts"), "{first}");
    let second = local();
    assert!(second.contains("retention: deleted "), "{second}");
    // What the timer made is what the daemon lists: one backup left, and it verifies.
    let list = sb.cli(&["backup", "list", "--json"]).await;
    assert_eq!(ids(&list.json()).len(), 1, "{}", list.stdout);
    let verify = sb.cli(&["backup", "verify"]).await;
    assert_eq!(verify.code, 0, "{}", verify.both());
}

#[tokio::test]
async fn restoring_only_a_file_from_a_backup_with_a_damaged_dump_is_refused_changing_nothing() {
    let mut sb = Sandbox::new("backup_partial_damaged").await;
    let dir = sb.dir.join("backups");
    // One backup folder for both agents' configs: the new host restores what the old one made.
    sb.start(
        with_backups(sb.old_setup(), &dir, ""),
        with_backups(sb.new_setup(), &dir, ""),
    )
    .await;
    let id = backup(&sb).await["id"].as_str().expect("id").to_string();
    flip_a_byte(&dir.join(&id).join("databases/app.dump"));
    std::fs::write(&sb.new_env, b"PORT=1\n").expect("an older env");
    let out = sb
        .cli(&[
            "backup",
            "restore",
            "--id",
            &id,
            "--host",
            "new",
            "--file",
            "backend-env",
            "--yes",
        ])
        .await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(out.stderr.contains("databases/app.dump"), "{}", out.both());
    assert_eq!(std::fs::read(&sb.new_env).expect("env"), b"PORT=1\n");
}

/// Issue 14 (smaller): a restored storage tree's top folder keeps the mtime it had when the
/// backup was made, not the time of the restore.
#[tokio::test]
async fn a_restored_storage_tree_keeps_the_mtime_of_its_top_folder() {
    use std::os::unix::fs::MetadataExt;
    let mut sb = Sandbox::new("backup_root_mtime").await;
    let dir = sb.dir.join("backups");
    sb.start(
        with_backups(sb.old_setup(), &dir, ""),
        with_backups(sb.new_setup(), &dir, ""),
    )
    .await;
    // 2024-03-01 12:00:00.5 UTC on the old host's top folder.
    let (secs, nsecs) = (1_709_294_400_i64, 500_000_000_i64);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &sb.old_storage,
        &nix::sys::time::TimeSpec::new(secs, nsecs),
        &nix::sys::time::TimeSpec::new(secs, nsecs),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("set the old top folder's mtime");
    let id = backup(&sb).await["id"].as_str().expect("id").to_string();
    let out = sb
        .cli(&[
            "backup",
            "restore",
            "--id",
            &id,
            "--host",
            "new",
            "--storage",
            "evaluations",
            "--yes",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.both());
    fs::assert_same_content(&sb.old_storage, &sb.new_storage);
    let m = std::fs::metadata(&sb.new_storage).expect("stat the restored top folder");
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (secs, nsecs),
        "the restored top folder keeps its original mtime"
    );
}
