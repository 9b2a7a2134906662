//! Progress a person can watch: on a terminal (a real pseudo-terminal from util-linux's
//! `script`), `hostshift sync` draws live bars and leaves one summary line per unit; without a
//! terminal the same run prints plain lines with no cursor codes, for logs and CI consoles.

use std::process::Stdio;
use std::time::Duration;

use hostshift_tests::rig::{self, Sandbox};

/// A storage-only sandbox whose tree is big enough (48 MiB) for bars to be drawn.
async fn sandbox(test: &str) -> Sandbox {
    let mut sb = Sandbox::new(test).await;
    sb.plan_databases = false;
    let d = sb.old_storage.join("big");
    std::fs::create_dir_all(&d).expect("dir");
    for i in 0..6u8 {
        std::fs::write(d.join(format!("blob-{i}.bin")), vec![i; 8 << 20]).expect("file");
    }
    sb.start(sb.old_setup(), sb.new_setup()).await;
    sb
}

/// Runs `hostshift ARGS --plan <plan>` on a pseudo-terminal; returns the exit code and what the
/// terminal showed (stdout and stderr together, as a person sees them).
async fn on_a_terminal(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let script = which("script").unwrap_or_else(|| {
        panic!(
            "`script` (util-linux) is needed to give hostshift a terminal: apt-get install bsdutils"
        )
    });
    let mut line = shell_quote(&rig::hostshift_bin().display().to_string());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    line.push_str(" --plan ");
    line.push_str(&shell_quote(&sb.plan_path().display().to_string()));
    let child = tokio::process::Command::new(script)
        // -q no banner, -e the command's exit code, -c the command; the typescript is discarded.
        .args(["-qec", &line, "/dev/null"])
        .current_dir(&sb.dir)
        .env("TERM", "xterm-256color")
        .env_remove("HOSTSHIFT_PLAN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("hostshift on a terminal did not finish within 120 s")
        .expect("run script");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test]
async fn sync_on_a_terminal_draws_bars_and_leaves_one_summary_line_per_unit() {
    let sb = sandbox("progress_tty").await;
    let (code, screen) = on_a_terminal(&sb, &["sync", "--only", "storage"]).await;
    assert_eq!(code, 0, "{screen}");
    // A bar was drawn: its frame and figures, redrawn in place with cursor codes.
    assert!(screen.contains("ETA"), "no bar was drawn:\n{screen}");
    assert!(screen.contains("] "), "no bar frame:\n{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "bars redraw with terminal codes:\n{screen}"
    );
    // The unit's summary line stays once the bar is gone: once.
    assert_eq!(
        screen.matches("ok   storage evaluations:").count(),
        1,
        "one summary line for the unit:\n{screen}"
    );
}

#[tokio::test]
async fn sync_without_a_terminal_prints_plain_lines_without_cursor_codes() {
    let sb = sandbox("progress_plain").await;
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no terminal codes in a log:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("ok   storage")),
        "{}",
        out.stderr
    );
}
