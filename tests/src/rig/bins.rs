//! The real binaries under test, and running the `hostshift` CLI with a deadline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn target_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/; the binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable is inside target/<profile>/deps")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run the whole suite with `cargo test --workspace` (it builds the \
         hostshift and hostshift-agent binaries), or `cargo build --bins` first",
        p.display()
    );
    p
}

/// `target/<profile>/hostshift-agent`.
pub fn agent_bin() -> PathBuf {
    bin("hostshift-agent")
}

/// `target/<profile>/hostshift`.
pub fn hostshift_bin() -> PathBuf {
    bin("hostshift")
}

/// What a CLI run printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.both()))
    }
}

/// Runs `hostshift ARGS` in the current directory with a 120 s deadline.
pub async fn cli(args: &[&str]) -> CliOutput {
    cli_in(Path::new("."), args, &[]).await
}

/// Runs `hostshift ARGS` in `dir` with extra environment variables, with a 120 s deadline
/// (the child is killed if it overruns, and the test fails saying so).
pub async fn cli_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(hostshift_bin());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("HOSTSHIFT_PLAN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("hostshift {args:?} did not finish within 120 s"))
        .expect("run hostshift");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
