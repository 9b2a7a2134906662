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

/// Issue 14 (smaller): under `ProtectSystem=strict`, a `ReadWritePaths=` entry that does not
/// exist makes the unit fail to start (226/NAMESPACE). Every entry the shipped units set is
/// optional (`-` prefix), so a host without nginx, PostgreSQL's socket folder or a backup folder
/// yet still starts the agent. (`systemd-analyze verify` does not catch this: it is a start-time
/// failure.)
#[test]
fn every_read_write_path_of_the_shipped_units_is_optional() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).expect("systemd folder") {
        let path = e.expect("entry").path();
        if path.extension().is_none_or(|x| x != "service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read the unit");
        for line in text.lines().map(str::trim) {
            let Some(paths) = line.strip_prefix("ReadWritePaths=") else {
                continue;
            };
            for p in paths.split_whitespace() {
                seen += 1;
                assert!(
                    p.starts_with('-'),
                    "{}: ReadWritePaths entry {p} is not optional: a host without it cannot start the unit (226/NAMESPACE); write -{p}",
                    path.display()
                );
            }
        }
    }
    assert!(seen > 0, "no ReadWritePaths= found in {}", dir.display());
}
