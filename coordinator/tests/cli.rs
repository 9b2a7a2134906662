//! The `hostshift` binary on its own: certificates, plan files, help and exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn hostshift(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hostshift"))
        .args(args)
        .current_dir(dir)
        .env_remove("HOSTSHIFT_PLAN")
        .output()
        .expect("run hostshift");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn certs_init_writes_keys_0600_and_never_overwrites_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = [
        "certs",
        "init",
        "--dir",
        "c",
        "--agent",
        "old=10.0.0.5,old.internal",
        "--agent",
        "new=10.0.0.6",
    ];
    let (code, out, err) = hostshift(tmp.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    for key in [
        "ca.key",
        "coordinator.key",
        "agent-old.key",
        "agent-new.key",
    ] {
        let mode = std::fs::metadata(tmp.path().join("c").join(key))
            .expect(key)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let before = std::fs::read(tmp.path().join("c/ca.key")).expect("read");
    let (code, _, err) = hostshift(tmp.path(), &args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("c/ca.key")).expect("read"),
        before
    );

    let mut forced = args.to_vec();
    forced.push("--force");
    let (code, _, err) = hostshift(tmp.path(), &forced);
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        std::fs::read(tmp.path().join("c/ca.key")).expect("read"),
        before
    );
}

#[test]
fn certs_init_rejects_a_malformed_agent_flag_with_usage_exit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = hostshift(tmp.path(), &["certs", "init", "--agent", "old"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("NAME=HOST"), "{err}");
}

#[test]
fn plan_init_then_check_passes_once_certificates_exist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = hostshift(tmp.path(), &["plan", "init"]);
    assert_eq!(code, 0, "{err}");
    // Without certificates, plan check names the missing files and exits 2.
    let (code, _, err) = hostshift(tmp.path(), &["plan", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("key `tls.ca`") && err.contains("certs init"),
        "{err}"
    );
    let (code, _, err) = hostshift(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "certs",
            "--agent",
            "old=10.0.0.5",
            "--agent",
            "new=10.0.0.6",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = hostshift(tmp.path(), &["plan", "check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("plan.toml: ok"), "{out}");
    // plan init never overwrites silently.
    let (code, _, err) = hostshift(tmp.path(), &["plan", "init"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn plan_check_on_a_broken_plan_exits_2_naming_each_line_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    hostshift(tmp.path(), &["plan", "init"]);
    hostshift(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "certs",
            "--agent",
            "old=10.0.0.5",
            "--agent",
            "new=10.0.0.6",
        ],
    );
    let plan = tmp.path().join("plan.toml");
    let text = std::fs::read_to_string(&plan)
        .expect("read")
        .replace(
            "address = \"https://10.0.0.6:7443\"",
            "address = \"http://10.0.0.6:7443\"",
        )
        .replace("budget_secs = 30", "budget_secs = 0");
    std::fs::write(&plan, &text).expect("write");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).expect("line") + 1;
    let (code, _, err) = hostshift(tmp.path(), &["plan", "check", "--plan", "plan.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "plan.toml:{}: key `new.address`",
            line_of("http://10.0.0.6")
        )),
        "{err}"
    );
    assert!(err.contains("use https://HOST:PORT"), "{err}");
    assert!(
        err.contains(&format!(
            "plan.toml:{}: key `freeze.budget_secs`",
            line_of("budget_secs = 0")
        )),
        "{err}"
    );

    // A syntax error names its line too, and --json reports it as data.
    std::fs::write(&plan, "[migration]\nname = \"x\"\n[old\n").expect("write");
    let (code, out, _) = hostshift(tmp.path(), &["plan", "check", "--json"]);
    assert_eq!(code, 2);
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(j["ok"], false);
    assert_eq!(j["problems"][0]["line"], 3, "{out}");
}

#[test]
fn plan_check_refuses_an_override_value_that_sync_would_refuse() {
    let tmp = tempfile::tempdir().expect("tempdir");
    hostshift(tmp.path(), &["plan", "init"]);
    hostshift(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "certs",
            "--agent",
            "old=10.0.0.5",
            "--agent",
            "new=10.0.0.6",
        ],
    );
    let (code, _, err) = hostshift(tmp.path(), &["plan", "check"]);
    assert_eq!(code, 0, "the template passes: {err}");
    let plan = tmp.path().join("plan.toml");
    let text = std::fs::read_to_string(&plan).expect("read").replace(
        "overrides = { CORS_ORIGIN = \"https://app.example.com\" }",
        "overrides = { CORS_ORIGIN = \"https://a.example.com\\nEVIL=1\" }",
    );
    assert!(text.contains("EVIL=1"), "the template has the override");
    std::fs::write(&plan, &text).expect("write");
    let (code, _, err) = hostshift(tmp.path(), &["plan", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key `files.0.overrides`"), "{err}");
    assert!(err.contains("line break"), "{err}");
}

#[test]
fn help_teaches_the_workflow_and_exit_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = hostshift(tmp.path(), &["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "certs init",
        "plan check",
        "Exit codes",
        "3 operator action needed",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
    let (code, _, err) = hostshift(tmp.path(), &["no-such-command"]);
    assert_eq!(code, 2, "{err}");
}

/// Issue 9.5: `certs init --force` never writes through a symlink planted in the output folder
/// (the key would land wherever it points), and creates the folder 0700 whatever the umask.
#[test]
fn certs_init_force_replaces_planted_symlinks_and_makes_the_folder_0700() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} certs init --dir c --agent old=10.0.0.5",
            env!("CARGO_BIN_EXE_hostshift")
        ))
        .current_dir(tmp.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the certificate folder under umask 000");

    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "someone else's file\n").expect("victim");
    for name in ["agent-old.key", "ca.key", "coordinator.crt"] {
        std::fs::remove_file(dir.join(name)).expect("rm");
        std::os::unix::fs::symlink(&victim, dir.join(name)).expect("plant symlink");
    }
    let (code, _, err) = hostshift(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "c",
            "--agent",
            "old=10.0.0.5",
            "--force",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "someone else's file\n",
        "a key was written through a planted symlink"
    );
    for name in ["agent-old.key", "ca.key", "coordinator.crt"] {
        let m = std::fs::symlink_metadata(dir.join(name)).expect(name);
        assert!(m.file_type().is_file(), "{name} is a regular file again");
    }
    let key_mode = std::fs::metadata(dir.join("agent-old.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
}

/// Issue 9.5: the CLI refuses a private key that group or others can read, with the chmod.
#[test]
fn plan_check_refuses_a_private_key_readable_by_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = hostshift(tmp.path(), &["plan", "init"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = hostshift(
        tmp.path(),
        &[
            "certs",
            "init",
            "--dir",
            "certs",
            "--agent",
            "old=10.0.0.5",
            "--agent",
            "new=10.0.0.6",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let key = tmp.path().join("certs/coordinator.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (code, _, err) = hostshift(tmp.path(), &["plan", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("key `tls.key`") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn certs_init_refuses_a_validity_outside_one_day_to_ten_years_with_usage_exit() {
    let tmp = tempfile::tempdir().expect("tmp");
    for days in ["0", "1000000", "3651"] {
        let (code, _, err) = hostshift(
            tmp.path(),
            &["certs", "init", "--agent", "old=127.0.0.2", "--days", days],
        );
        assert_eq!(code, 2, "--days {days}: {err}");
        assert!(
            err.contains("--days") && err.contains("1..=3650"),
            "--days {days}: {err}"
        );
        assert!(
            !tmp.path().join("certs").exists(),
            "--days {days}: nothing written"
        );
    }
    let (code, _, err) = hostshift(
        tmp.path(),
        &["certs", "init", "--agent", "old=127.0.0.2", "--days", "1"],
    );
    assert_eq!(code, 0, "{err}");
}
