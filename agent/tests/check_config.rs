//! `hostshift-agent check-config` as systemd's ExecStartPre runs it: exit 0 for a valid config,
//! 78 (EX_CONFIG) naming the file, line and key otherwise — and `serve` refuses the same way.

use std::path::Path;
use std::process::Command;

use hostshift_shared::pki::{AgentSpec, PkiFiles, PkiRequest, init};

fn certs(dir: &Path) -> PkiFiles {
    init(&PkiRequest {
        dir: dir.join("certs"),
        agents: vec![AgentSpec::parse("old=127.0.0.2").expect("spec")],
        coordinator_name: "coordinator".into(),
        days: 1,
        force: false,
    })
    .expect("certs")
}

fn config(pki: &PkiFiles, body: &str) -> String {
    format!(
        "listen = \"127.0.0.2:0\"\nrole = \"old\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n{body}",
        pki.agents[0].1.display().to_string(),
        pki.agents[0].2.display().to_string(),
        pki.ca_cert.display().to_string()
    )
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hostshift-agent"))
        .args(args)
        .env_remove("HOSTSHIFT_AGENT_CONFIG")
        .output()
        .expect("run hostshift-agent")
}

#[test]
fn valid_config_passes_check_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let path = tmp.path().join("agent.toml");
    std::fs::write(
        &path,
        config(&pki, "[[storage]]\nname = \"s\"\npath = \"/srv/s\"\n"),
    )
    .expect("write");
    let out = agent(&["--config", path.to_str().expect("utf8"), "check-config"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn unknown_key_exits_78_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let path = tmp.path().join("agent.toml");
    // Line 8 holds the misspelt key.
    std::fs::write(&path, config(&pki, "[[storage]]\nnmae = \"s\"\n")).expect("write");
    for cmd in ["check-config", "serve"] {
        let out = agent(&["--config", path.to_str().expect("utf8"), cmd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {err}");
        assert!(
            err.contains(&format!("{}:8: key `nmae`", path.display())),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn semantic_errors_exit_78_and_list_every_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let path = tmp.path().join("agent.toml");
    let body =
        "[[storage]]\nname = \"s\"\npath = \"relative\"\n\n[allow]\nwrite_storage = [\"nope\"]\n";
    std::fs::write(&path, config(&pki, body)).expect("write");
    let out = agent(&["--config", path.to_str().expect("utf8"), "check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(":9: key `storage.0.path`: relative must be an absolute path"),
        "{err}"
    );
    assert!(
        err.contains("key `allow.write_storage.0`: \"nope\" is not declared in [[storage]]"),
        "{err}"
    );
}

#[test]
fn missing_config_file_exits_78_with_the_path() {
    let out = agent(&["--config", "/nonexistent/agent.toml", "check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("/nonexistent/agent.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn coordinator_certificate_is_not_accepted_as_the_agent_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let path = tmp.path().join("agent.toml");
    let text = config(&pki, "")
        .replace(
            &pki.agents[0].1.display().to_string(),
            &pki.coordinator_cert.display().to_string(),
        )
        .replace(
            &pki.agents[0].2.display().to_string(),
            &pki.coordinator_key.display().to_string(),
        );
    std::fs::write(&path, text).expect("write");
    let out = agent(&["--config", path.to_str().expect("utf8"), "check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("key `tls.cert`") && err.contains("coordinator:coordinator"),
        "{err}"
    );
}

#[test]
fn systemd_unit_checks_the_config_first_and_does_not_restart_on_a_bad_one() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/hostshift-agent.service"
    ))
    .expect("unit file");
    let line = |key: &str| {
        unit.lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_string()
    };
    assert!(line("ExecStartPre").ends_with("hostshift-agent check-config"));
    assert!(line("ExecStart").contains("hostshift-agent serve"));
    assert_eq!(
        line("RestartPreventExitStatus"),
        "RestartPreventExitStatus=78"
    );
    assert_eq!(line("KillSignal"), "KillSignal=SIGTERM");
    assert_eq!(line("NoNewPrivileges"), "NoNewPrivileges=true");
    assert_eq!(line("ProtectSystem"), "ProtectSystem=strict");
    // The exit code the unit relies on is the one the binary uses.
    assert_eq!(hostshift_shared::exit::CONFIG, 78);
}

/// The exit code and stderr of `check-config` for a config with `body` appended.
fn check(tmp: &Path, pki: &PkiFiles, body: &str) -> (Option<i32>, String) {
    let path = tmp.join("agent.toml");
    std::fs::write(&path, config(pki, body)).expect("write");
    let out = agent(&["--config", path.to_str().expect("utf8"), "check-config"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 9.5 / 14.4: every spelling of a password in `conninfo` is refused by one real parser
/// (spaces around `=`, quotes, a URI's user:password@, a percent-encoded query key), naming the
/// key and never echoing the secret.
#[test]
fn every_spelling_of_a_password_in_conninfo_exits_78() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    for conninfo in [
        "host=/run/postgresql dbname=app password = hunter2",
        "host=/run/postgresql dbname=app password='hunter2'",
        "postgresql://app:hunter2@localhost/app",
        "postgresql://app@localhost/app?pass%77ord=hunter2",
    ] {
        let body = format!("[[databases]]\nname = \"app\"\nconninfo = {conninfo:?}\n");
        let (code, err) = check(tmp.path(), &pki, &body);
        assert_eq!(code, Some(78), "{conninfo}: {err}");
        assert!(
            err.contains("key `databases.0.conninfo`") && err.contains("password_file"),
            "{conninfo}: {err}"
        );
        assert!(!err.contains("hunter2"), "the secret is echoed: {err}");
    }
}

/// Issue 14.4: `sslmode=disable` (or allow/prefer) to a host that is not this machine, and any
/// of them next to a `ca_file`, are refused: the server's certificate is always verified.
#[test]
fn unverified_tls_to_a_remote_database_exits_78() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let ca = pki.ca_cert.display().to_string();
    for (conninfo, ca_file, expect) in [
        (
            "host=db.example.com dbname=app sslmode=disable",
            None,
            "sslmode=disable",
        ),
        (
            "postgresql://app@10.0.0.5/app?sslmode=prefer",
            None,
            "sslmode=prefer",
        ),
        ("host=db.example.com dbname=app", None, "ca_file"),
        (
            "host=127.0.0.1 dbname=app sslmode=disable",
            Some(&ca),
            "ca_file",
        ),
    ] {
        let mut body = format!("[[databases]]\nname = \"app\"\nconninfo = {conninfo:?}\n");
        if let Some(ca) = ca_file {
            body.push_str(&format!("ca_file = {ca:?}\n"));
        }
        let (code, err) = check(tmp.path(), &pki, &body);
        assert_eq!(code, Some(78), "{conninfo}: {err}");
        assert!(
            err.contains("key `databases.0.conninfo`") && err.contains(expect),
            "{conninfo}: {err}"
        );
    }
    // A local socket without TLS, and a remote host with a CA, stay fine.
    for body in [
        "[[databases]]\nname = \"app\"\nconninfo = \"host=/run/postgresql sslmode=disable\"\n"
            .to_string(),
        format!(
            "[[databases]]\nname = \"app\"\nconninfo = \"host=db.example.com dbname=app\"\nca_file = {ca:?}\n"
        ),
    ] {
        let (code, err) = check(tmp.path(), &pki, &body);
        assert_eq!(code, Some(0), "{body}: {err}");
    }
}

/// Issue 14.4: a `password_file` readable by group or others is refused with the chmod to run.
#[test]
fn password_file_readable_by_others_exits_78() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let pw = tmp.path().join("db.password");
    std::fs::write(&pw, "hunter2\n").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let body = format!(
        "[[databases]]\nname = \"app\"\nconninfo = \"host=/run/postgresql\"\npassword_file = {:?}\n",
        pw.display().to_string()
    );
    let (code, err) = check(tmp.path(), &pki, &body);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("key `databases.0.password_file`")
            && err.contains(&format!("chmod 600 {}", pw.display())),
        "{err}"
    );
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, err) = check(tmp.path(), &pki, &body);
    assert_eq!(code, Some(0), "{err}");
}

/// Issue 9.5: like ssh, the agent refuses a private key that group or others can read, in
/// check-config and serve alike, with the chmod to run.
#[test]
fn private_key_readable_by_others_exits_78() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let key = &pki.agents[0].2;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, config(&pki, "")).expect("write");
    for cmd in ["check-config", "serve"] {
        let out = agent(&["--config", path.to_str().expect("utf8"), cmd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {err}");
        assert!(
            err.contains("key `tls.key`") && err.contains(&format!("chmod 600 {}", key.display())),
            "{cmd}: {err}"
        );
    }
}
