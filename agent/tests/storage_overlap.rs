//! `check-config` (and `serve`) refuse storage trees that a sync could turn against the host:
//! the filesystem root or a system folder however it is spelt (`/tmp/..`, a symlink to `/`),
//! trees overlapping each other, and trees holding the agent's own backup folder, state, config
//! or keys — exit 78 naming the file, line and key.

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

/// A config whose line 10 is the first `[[storage]]`'s `path` when `body` starts with one.
fn config(pki: &PkiFiles, state_dir: &Path, body: &str) -> String {
    format!(
        "listen = \"127.0.0.2:0\"\nrole = \"old\"\nstate_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n{body}",
        state_dir.display().to_string(),
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

fn storage(trees: &[(&str, &str)]) -> String {
    trees
        .iter()
        .map(|(n, p)| format!("[[storage]]\nname = \"{n}\"\npath = \"{p}\"\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs check-config (and serve) on `body`; returns stderr after asserting exit 78.
fn refused(tmp: &Path, pki: &PkiFiles, body: &str) -> String {
    let path = tmp.join("agent.toml");
    std::fs::write(&path, config(pki, &tmp.join("state"), body)).expect("write");
    let mut last = String::new();
    for cmd in ["check-config", "serve"] {
        let out = agent(&["--config", path.to_str().expect("utf8"), cmd]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(78), "{cmd} on\n{body}\n{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        last = err;
    }
    last
}

#[test]
fn the_root_and_system_folders_are_refused_however_they_are_spelt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let link = tmp.path().join("looks-harmless");
    std::os::unix::fs::symlink("/", &link).expect("symlink");
    let link = link.display().to_string();
    let usr = format!("{link}/usr");
    for p in [
        "/tmp/..",
        "/tmp/../",
        "/tmp/x/../..",
        link.as_str(),
        "/",
        "/etc",
        usr.as_str(),
    ] {
        let err = refused(tmp.path(), &pki, &storage(&[("s", p)]));
        assert!(err.contains(":10: key `storage.0.path`"), "{p}: {err}");
        assert!(
            err.contains("the filesystem root or a system folder cannot be a storage tree"),
            "{p}: {err}"
        );
    }
}

#[test]
fn overlapping_trees_are_refused_also_through_dots_and_symlinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let a = tmp.path().join("srv/a");
    std::fs::create_dir_all(&a).expect("dir");
    let alias = tmp.path().join("alias");
    std::os::unix::fs::symlink(&a, &alias).expect("symlink");
    let a_s = a.display().to_string();
    for other in [
        format!("{a_s}/inner"),
        format!("{a_s}/x/../"),
        format!("{}/inner", alias.display()),
        tmp.path().join("srv").display().to_string(),
    ] {
        let err = refused(
            tmp.path(),
            &pki,
            &storage(&[("first", &a_s), ("second", &other)]),
        );
        assert!(err.contains("key `storage.1.path`"), "{other}: {err}");
        assert!(
            err.contains("overlaps storage tree \"first\""),
            "{other}: {err}"
        );
    }
    // Side by side is fine.
    let path = tmp.path().join("agent.toml");
    let ok = storage(&[
        ("first", &a_s),
        ("second", &tmp.path().join("srv/ab").display().to_string()),
    ]);
    std::fs::write(&path, config(&pki, &tmp.path().join("state"), &ok)).expect("write");
    let out = agent(&["--config", path.to_str().expect("utf8"), "check-config"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn trees_holding_the_agents_own_files_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = certs(tmp.path());
    let t = tmp.path().display().to_string();
    // The state folder, the certificates and the config file all lie under the tmp folder.
    let err = refused(tmp.path(), &pki, &storage(&[("everything", &t)]));
    for what in ["state_dir", "tls.key", "the config file"] {
        assert!(err.contains(&format!("overlaps {what}")), "{what}: {err}");
    }
    // A backup folder inside a tree.
    let body = format!(
        "{}\n[backup]\ndir = \"{t}/data/backups\"\n",
        storage(&[("data", &format!("{t}/data"))])
    );
    let err = refused(tmp.path(), &pki, &body);
    assert!(err.contains("overlaps backup.dir"), "{err}");
}
