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

/// `hostshift ARGS` in `dir` on a pseudo-terminal (util-linux's `script`, as a person would run
/// it) with `env`; returns the exit code and what the terminal showed (stdout and stderr
/// together). A missing `script` fails the test with the install command.
pub async fn on_a_terminal(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let script = which("script").unwrap_or_else(|| {
        panic!(
            "`script` (util-linux) is needed to give hostshift a terminal: apt-get install bsdutils"
        )
    });
    let mut line = shell_quote(&hostshift_bin().display().to_string());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let mut cmd = tokio::process::Command::new(script);
    // -q no banner, -e the command's exit code, -c the command; the typescript is discarded.
    cmd.args(["-qec", &line, "/dev/null"])
        .current_dir(dir)
        .env("TERM", "xterm-256color")
        .env_remove("HOSTSHIFT_PLAN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("hostshift {args:?} on a terminal did not finish within 120 s"))
        .expect("run script");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `name` in a folder of `PATH`, as a shell would find it.
pub(crate) fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
