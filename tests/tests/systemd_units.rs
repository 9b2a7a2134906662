//! The shipped systemd units pass `systemd-analyze verify`: no key systemd would ignore (such as
//! `StartLimitIntervalSec` in `[Service]`), no unknown section. The binaries the units run are not
//! installed on a test machine, so only that complaint is tolerated. A missing `systemd-analyze`
//! fails the test with the command that installs it.

use std::path::PathBuf;

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("systemd folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "timer")
        })
        .collect();
    units.sort();
    assert!(units.len() >= 3, "{units:?}");
    for unit in units {
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap_or_else(|e| {
                panic!("systemd-analyze not runnable ({e}): install it with `apt-get install -y systemd` (scripts/install-test-deps)")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("is not executable"))
            .collect();
        assert!(
            problems.is_empty(),
            "{}: {}",
            unit.display(),
            problems.join("\n")
        );
    }
}
