//! Reads `pm2 jlist` output into [`Process`], a struct with **no environment field**.
//!
//! PM2 puts each app's whole environment into its jlist entry twice: under `pm2_env.env`, and
//! flattened into `pm2_env` itself (that flattened copy is what the app's process receives). It
//! holds the app's secrets. So the raw output is never logged, kept or returned: it is parsed
//! into the few fields we show, and a parse error reports a position only (serde's own messages
//! can quote a value). [`env_mismatches`] is the one place that looks at environment values, to
//! answer "does the app run with these values?" with key names only.

use std::collections::BTreeSet;

use serde::Deserialize;

/// One PM2 process (cluster instances of an app share its name).
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    /// App name.
    pub name: String,
    /// PM2's id.
    pub pm_id: u32,
    /// OS process id; 0 when not running.
    pub pid: u32,
    /// State as PM2 reports it.
    pub status: Status,
    /// PM2's restart counter (`restart_time`).
    pub restarts: u32,
    /// When the current process started (ms since the epoch), when PM2 says.
    pub started_at_ms: Option<u64>,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
    /// CPU use in percent.
    pub cpu_percent: f64,
    /// `fork` or `cluster`.
    pub exec_mode: String,
}

/// A PM2 process state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running.
    Online,
    /// Stopped on purpose.
    Stopped,
    /// Being stopped.
    Stopping,
    /// Being started.
    Launching,
    /// PM2 gave up restarting it (too many unstable restarts).
    Errored,
    /// Anything else PM2 may report ("waiting restart", "one-launch-status").
    Other(String),
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "online" => Self::Online,
            "stopped" => Self::Stopped,
            "stopping" => Self::Stopping,
            "launching" => Self::Launching,
            "errored" => Self::Errored,
            other => Self::Other(other.to_string()),
        }
    }

    /// PM2's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Online => "online",
            Self::Stopped => "stopped",
            Self::Stopping => "stopping",
            Self::Launching => "launching",
            Self::Errored => "errored",
            Self::Other(s) => s,
        }
    }
}

impl Process {
    /// Milliseconds since the process started, when it is running.
    pub fn uptime_ms(&self, now_ms: u64) -> u64 {
        match (&self.status, self.started_at_ms) {
            (Status::Online, Some(t)) => now_ms.saturating_sub(t),
            _ => 0,
        }
    }
}

/// `pm2 jlist` output that is not the JSON we expect. Carries a position, never content.
#[derive(Debug, thiserror::Error)]
#[error("cannot read `pm2 jlist` output ({kind} error at line {line}, column {column})")]
pub struct ParseError {
    kind: &'static str,
    line: usize,
    column: usize,
}

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        Self {
            kind: match e.classify() {
                Category::Io => "I/O",
                Category::Syntax => "syntax",
                Category::Data => "data",
                Category::Eof => "truncated input",
            },
            line: e.line(),
            column: e.column(),
        }
    }
}

// Wire shapes: only the fields we use. serde skips everything else (the environment included)
// without storing it.
#[derive(Deserialize)]
struct WireProcess {
    name: String,
    pm_id: u32,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    monit: Option<WireMonit>,
    pm2_env: WireEnv,
}

#[derive(Deserialize)]
struct WireMonit {
    #[serde(default)]
    memory: Option<f64>,
    #[serde(default)]
    cpu: Option<f64>,
}

#[derive(Deserialize)]
struct WireEnv {
    status: String,
    #[serde(default)]
    restart_time: Option<u32>,
    #[serde(default)]
    pm_uptime: Option<f64>,
    #[serde(default)]
    exec_mode: Option<String>,
}

/// Parses `pm2 jlist` output. PM2 may print a banner line before the JSON on a fresh
/// `PM2_HOME` when `PM2_DISCRETE_MODE` is unset; it is skipped.
///
/// # Errors
/// [`ParseError`] (a position only) when the output is not a JSON array of processes.
pub fn parse(raw: &[u8]) -> Result<Vec<Process>, ParseError> {
    let wire: Vec<WireProcess> = serde_json::from_slice(json_part(raw))?;
    Ok(wire
        .into_iter()
        .map(|w| {
            let monit = w.monit.unwrap_or(WireMonit {
                memory: None,
                cpu: None,
            });
            Process {
                name: w.name,
                pm_id: w.pm_id,
                pid: w.pid.unwrap_or(0),
                status: Status::parse(&w.pm2_env.status),
                restarts: w.pm2_env.restart_time.unwrap_or(0),
                started_at_ms: w.pm2_env.pm_uptime.map(|t| t.max(0.0) as u64),
                memory_bytes: monit.memory.unwrap_or(0.0).max(0.0) as u64,
                cpu_percent: monit.cpu.unwrap_or(0.0),
                exec_mode: w
                    .pm2_env
                    .exec_mode
                    .unwrap_or_default()
                    .trim_end_matches("_mode")
                    .to_string(),
            }
        })
        .collect())
}

fn json_part(raw: &[u8]) -> &[u8] {
    match raw.iter().position(|&b| b == b'[') {
        Some(i) => &raw[i..],
        None => raw,
    }
}

/// Which of `expected` the app `app` does **not** get from PM2 as expected: for `(key,
/// Some(v))`, PM2 hands the app a different value of `key`; for `(key, None)`, PM2 still hands
/// it `key`. A key PM2 does not set at all is fine for `Some` (the app may read its `.env`
/// itself). Looks at every instance of the app; returns key names only, never values.
///
/// # Errors
/// [`ParseError`] when the output is not a JSON array.
pub fn env_mismatches(
    raw: &[u8],
    app: &str,
    expected: &[(String, Option<String>)],
) -> Result<Vec<String>, ParseError> {
    let all: Vec<serde_json::Value> = serde_json::from_slice(json_part(raw))?;
    let mut out = BTreeSet::new();
    for p in all
        .iter()
        .filter(|p| p.get("name").and_then(|n| n.as_str()) == Some(app))
    {
        // The flattened copy in `pm2_env` is what the process receives (PM2 merges new values
        // into it and never removes a key on restart or reload).
        let Some(env) = p.get("pm2_env").and_then(|e| e.as_object()) else {
            continue;
        };
        for (key, want) in expected {
            let have = env.get(key);
            let mismatch = match (want, have) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(w), Some(h)) => h.as_str() != Some(w.as_str()),
            };
            if mismatch {
                out.insert(key.clone());
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from real PM2 7.0.4 output, with a secret where PM2 puts the environment.
    const SAMPLE: &str = r#"[
      {"pid":4242,"name":"backend","pm2_env":{"status":"online","restart_time":3,"unstable_restarts":0,
        "pm_uptime":1700000000000,"exec_mode":"fork_mode","JWT_SECRET":"hunter2","FEATURE_FLAG":"on",
        "env":{"JWT_SECRET":"hunter2","FEATURE_FLAG":"on"}},
       "pm_id":0,"monit":{"memory":52428800,"cpu":1.5}},
      {"pid":0,"name":"worker","pm2_env":{"status":"stopped","restart_time":0,"exec_mode":"cluster_mode",
        "env":{"API_TOKEN":"tok-123"}},"pm_id":1,"monit":{"memory":0,"cpu":0}}
    ]"#;

    #[test]
    fn jlist_is_parsed_into_fields_without_the_environment() {
        let procs = parse(SAMPLE.as_bytes()).expect("parse");
        assert_eq!(procs.len(), 2);
        let b = &procs[0];
        assert_eq!(
            (b.name.as_str(), b.pm_id, b.pid, &b.status, b.restarts),
            ("backend", 0, 4242, &Status::Online, 3)
        );
        assert_eq!(b.memory_bytes, 52_428_800);
        assert_eq!(b.exec_mode, "fork");
        assert_eq!(b.uptime_ms(1_700_000_002_500), 2_500);
        assert_eq!(procs[1].status, Status::Stopped);
        assert_eq!(procs[1].uptime_ms(1_700_000_002_500), 0);
        assert_eq!(procs[1].exec_mode, "cluster");
        let shown = format!("{procs:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-123"),
            "{shown}"
        );
    }

    #[test]
    fn a_banner_before_the_json_is_skipped_and_an_empty_list_is_fine() {
        let raw = b"PM2 banner text\n[]";
        assert_eq!(parse(raw).expect("parse"), vec![]);
    }

    #[test]
    fn parse_errors_carry_a_position_but_never_content() {
        // A value of the wrong type: serde's own message would quote it.
        let raw = br#"[{"name":"a","pm_id":"secret-value-here","pm2_env":{"status":"online"}}]"#;
        let e = parse(raw).expect_err("wrong type");
        let text = e.to_string();
        assert!(!text.contains("secret-value-here"), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn env_mismatches_names_stale_and_lingering_keys_only() {
        let expected = vec![
            ("FEATURE_FLAG".to_string(), Some("on".to_string())),
            ("JWT_SECRET".to_string(), Some("new".to_string())),
            ("REMOVED".to_string(), None),
            ("NOT_FROM_PM2".to_string(), Some("x".to_string())),
        ];
        let got = env_mismatches(SAMPLE.as_bytes(), "backend", &expected).expect("check");
        assert_eq!(got, vec!["JWT_SECRET".to_string()]);
        let got = env_mismatches(
            SAMPLE.as_bytes(),
            "backend",
            &[("FEATURE_FLAG".to_string(), None)],
        )
        .expect("check");
        assert_eq!(got, vec!["FEATURE_FLAG".to_string()]);
        assert!(
            env_mismatches(SAMPLE.as_bytes(), "nope", &expected)
                .expect("check")
                .is_empty()
        );
    }
}
