//! A CPU profile of one extra `hostshift sync` with `perf record` (the `cpu-clock` software
//! event: this VM has no hardware counters), system-wide, then flat reports by program and
//! library, by symbol, and by symbol for each agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::sys;

/// Samples per second per CPU.
const FREQUENCY: u32 = 499;

/// True when `perf record` works here.
pub async fn available() -> bool {
    sys::shell("perf", "perf record -e cpu-clock -o /dev/null -- true", &[], Duration::from_secs(20), false, true)
        .await
        .is_ok_and(|o| o.code == Some(0))
}

/// Running `perf record`s: one of every CPU, one per agent (with DWARF call graphs, to see
/// which step calls the hot functions).
pub struct Recording {
    children: Vec<tokio::process::Child>,
    /// `(title, data file, pid filter)`.
    files: Vec<(String, PathBuf)>,
}

impl Recording {
    /// Starts recording every CPU into `dir/perf-all.data` and each of `agents` (`(name, pid)`)
    /// into `dir/perf-<name>.data`.
    ///
    /// # Errors
    /// When perf cannot be started.
    pub async fn start(dir: &Path, agents: &[(&str, u32)]) -> Result<Recording> {
        let mut children = Vec::new();
        let mut files = Vec::new();
        let all = dir.join("perf-all.data");
        let mut jobs: Vec<(String, PathBuf, Vec<String>)> =
            vec![("all".into(), all, vec!["-a".into(), "-F".into(), FREQUENCY.to_string()])];
        for (name, pid) in agents {
            jobs.push((
                (*name).to_string(),
                dir.join(format!("perf-{}.data", name.replace(' ', "-"))),
                vec!["-p".into(), pid.to_string(), "-F".into(), "199".into(), "--call-graph".into(), "dwarf,16384".into()],
            ));
        }
        for (name, file, args) in jobs {
            let child = tokio::process::Command::new("perf")
                .arg("record")
                .args(["-e", "cpu-clock", "-o"])
                .arg(&file)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("start perf record")?;
            children.push(child);
            files.push((name, file));
        }
        // perf needs a moment to open its events.
        tokio::time::sleep(Duration::from_millis(700)).await;
        Ok(Recording { children, files })
    }

    /// The recorders' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(tokio::process::Child::id).collect()
    }

    /// Stops recording (SIGINT: perf writes its file and exits); returns `(name, data file)`.
    ///
    /// # Errors
    /// When perf does not exit in time.
    pub async fn stop(mut self) -> Result<Vec<(String, PathBuf)>> {
        for c in &self.children {
            if let Some(pid) = c.id() {
                let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(0)), Signal::SIGINT);
            }
        }
        for c in &mut self.children {
            tokio::time::timeout(Duration::from_secs(120), c.wait()).await.context("perf did not stop")??;
        }
        Ok(std::mem::take(&mut self.files))
    }
}

/// The flat reports of the recordings, as text: every CPU by program+library and by symbol; each
/// agent by symbol (share of that agent's own CPU time) and the call chains of its hottest
/// symbols.
///
/// # Errors
/// When `perf report` fails.
pub async fn report(files: &[(String, PathBuf)]) -> Result<String> {
    let mut parts = Vec::new();
    for (name, file) in files {
        let d = file.display();
        if name == "all" {
            parts.push(("all CPUs, by program and library (idle = swapper)".to_string(), format!("perf report -i '{d}' --stdio -q --sort comm,dso --percent-limit 1"), 40));
            parts.push(("all CPUs, by symbol".to_string(), format!("perf report -i '{d}' --stdio -q --sort comm,dso,sym --percent-limit 0.7"), 40));
        } else {
            parts.push((format!("{name}: by symbol, share of its own CPU time"), format!("perf report -i '{d}' --stdio -q --no-children --sort dso,sym -g none --percent-limit 1.5"), 40));
            parts.push((format!("{name}: inclusive time of its functions (what a step costs with all it calls)"), format!("perf report -i '{d}' --stdio -q --children --sort sym -g none --percent-limit 2.5"), 60));
            parts.push((format!("{name}: who calls the hottest symbols"), format!("perf report -i '{d}' --stdio -q --no-children --sort sym -g caller,2,callee,function,percent --percent-limit 8"), 140));
        }
    }
    let mut text = String::new();
    for (title, cmd, lines) in parts {
        let out = sys::shell("perf report", &format!("{cmd} 2>/dev/null | sed 's/[[:space:]]*$//' | grep -v '^$' | head -{lines}"), &[], Duration::from_secs(600), true, true).await?;
        text.push_str(&format!("## {title}\n$ {cmd}\n{}\n", String::from_utf8_lossy(&out.stdout)));
    }
    Ok(text)
}
