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
