//! Waits until apps reach the state an action asked for, polling `pm2 jlist` with a deadline,
//! and tells a crash-looping app from a slow one.
//!
//! "Online" is not enough: an app that exits at once is online for a moment between PM2's
//! restarts. An app counts as up when every instance is online, has been for
//! [`STABLE_UPTIME`] (PM2's own `min_uptime` default: a shorter life counts as an unstable
//! restart), and its restart counter has not moved since our first look. A counter that moves
//! while we wait, or the `errored` state (PM2 gave up), is a crash loop and fails at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::cli::Pm2;
use super::jlist::{Process, Status};
use super::{AppOutcome, Want};
use crate::error::AgentError;

/// Pause between two `jlist` polls (a poll itself takes ~0.2 s).
pub const POLL_INTERVAL: Duration = Duration::from_millis(150);
/// How long an app must have been online to count as up (PM2's default `min_uptime`).
pub const STABLE_UPTIME: Duration = Duration::from_secs(1);
/// Deadline when the request gives none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest deadline a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The deadline a request asks for in seconds: 0 means [`DEFAULT_WAIT`]; capped at [`MAX_WAIT`].
pub fn deadline(secs: u32) -> Duration {
    if secs == 0 {
        DEFAULT_WAIT
    } else {
        Duration::from_secs(u64::from(secs)).min(MAX_WAIT)
    }
}

/// What one look at one app says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In the requested state.
    Reached,
    /// Not yet; why (for the deadline message).
    Pending(String),
    /// Will not get there: crash loop, or PM2 does not know the app.
    Failed(String),
}

/// Judges one app from its instances in one `jlist`. `baseline` is the app's restart counter at
/// our first look; `waited` how long we have been looking.
pub fn judge(
    procs: &[&Process],
    want: Want,
    baseline: u32,
    waited: Duration,
    now_ms: u64,
) -> Verdict {
    let restarts = restarts(procs);
    match want {
        Want::Stopped => {
            if procs
                .iter()
                .all(|p| matches!(p.status, Status::Stopped | Status::Errored))
            {
                Verdict::Reached
            } else {
                Verdict::Pending(format!("still {}", worst(procs)))
            }
        }
        Want::Online => {
            if procs.is_empty() {
                return Verdict::Failed("PM2 does not know this app".into());
            }
            if procs.iter().any(|p| p.status == Status::Errored) {
                return Verdict::Failed("crash-looping: PM2 gave up restarting it".to_string());
            }
            if restarts > baseline {
                return Verdict::Failed(format!(
                    "crash-looping: restarted {} times in {:.1} s while we waited",
                    restarts - baseline,
                    waited.as_secs_f64()
                ));
            }
            let stable = STABLE_UPTIME.as_millis() as u64;
            if procs
                .iter()
                .all(|p| p.status == Status::Online && p.uptime_ms(now_ms) >= stable)
            {
                Verdict::Reached
            } else {
                Verdict::Pending(format!("{} for less than {STABLE_UPTIME:?}", worst(procs)))
            }
        }
    }
}

fn restarts(procs: &[&Process]) -> u32 {
    procs.iter().map(|p| p.restarts).sum()
}

/// The least advanced status among the instances, for messages.
fn worst(procs: &[&Process]) -> String {
    procs
        .iter()
        .find(|p| p.status != Status::Online)
        .or(procs.first())
        .map_or_else(|| "absent".into(), |p| p.status.as_str().to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls until every app in `apps` has a final verdict or `deadline` passes; one outcome per app,
/// in order. Apps still pending at the deadline fail, saying what they were doing.
///
/// # Errors
/// A failing `pm2 jlist`, or [`AgentError::Cancelled`].
pub async fn until(
    pm2: &Pm2,
    apps: &[String],
    want: Want,
    deadline: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<AppOutcome>, AgentError> {
    let started = Instant::now();
    let mut baseline: BTreeMap<&str, u32> = BTreeMap::new();
    let mut done: BTreeMap<&str, AppOutcome> = BTreeMap::new();
    loop {
        let procs = pm2.processes(cancel).await?;
        let waited = started.elapsed();
        let now = now_ms();
        let mut pending = Vec::new();
        let open: Vec<&String> = apps
            .iter()
            .filter(|a| !done.contains_key(a.as_str()))
            .collect();
        for app in open {
            let mine: Vec<&Process> = procs.iter().filter(|p| p.name == *app).collect();
            let base = *baseline.entry(app).or_insert_with(|| restarts(&mine));
            let verdict = judge(&mine, want, base, waited, now);
            match verdict {
                Verdict::Reached => {
                    done.insert(app, outcome(app, &mine, true, String::new()));
                }
                Verdict::Failed(why) => {
                    done.insert(app, outcome(app, &mine, false, why));
                }
                Verdict::Pending(why) if waited >= deadline => {
                    let why = format!(
                        "not {} after {} s: {why}",
                        want.as_str(),
                        deadline.as_secs()
                    );
                    done.insert(app, outcome(app, &mine, false, why));
                }
                Verdict::Pending(_) => pending.push(app),
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = cancel.cancelled() => return Err(AgentError::Cancelled),
        }
    }
    Ok(apps
        .iter()
        .filter_map(|a| done.remove(a.as_str()))
        .collect())
}

/// An app's outcome from its instances.
pub fn outcome(app: &str, procs: &[&Process], ok: bool, detail: String) -> AppOutcome {
    AppOutcome {
        name: app.to_string(),
        ok,
        status: worst(procs),
        pids: procs.iter().map(|p| p.pid).filter(|&p| p != 0).collect(),
        restarts: restarts(procs),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_010_000;

    fn p(status: Status, restarts: u32, up_ms: u64) -> Process {
        Process {
            name: "app".into(),
            pm_id: 0,
            pid: if status == Status::Online { 99 } else { 0 },
            status,
            restarts,
            started_at_ms: Some(NOW - up_ms),
            memory_bytes: 0,
            cpu_percent: 0.0,
            exec_mode: "fork".into(),
        }
    }

    #[test]
    fn online_counts_only_after_a_stable_second() {
        let young = p(Status::Online, 0, 200);
        let old = p(Status::Online, 0, 1_500);
        let w = Duration::from_millis(300);
        assert!(matches!(
            judge(&[&young], Want::Online, 0, w, NOW),
            Verdict::Pending(_)
        ));
        assert_eq!(judge(&[&old], Want::Online, 0, w, NOW), Verdict::Reached);
    }

    #[test]
    fn a_rising_restart_counter_or_errored_is_a_crash_loop() {
        let w = Duration::from_millis(800);
        let looping = p(Status::Online, 7, 50);
        match judge(&[&looping], Want::Online, 2, w, NOW) {
            Verdict::Failed(why) => {
                assert!(why.contains("restarted 5 times"), "{why}");
            }
            v => panic!("{v:?}"),
        }
        let errored = p(Status::Errored, 15, 0);
        match judge(&[&errored], Want::Online, 15, w, NOW) {
            Verdict::Failed(why) => assert!(why.contains("gave up"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn an_unknown_app_fails_at_once_when_it_should_be_online_and_is_fine_when_stopped() {
        let w = Duration::ZERO;
        assert!(matches!(
            judge(&[], Want::Online, 0, w, NOW),
            Verdict::Failed(_)
        ));
        assert_eq!(judge(&[], Want::Stopped, 0, w, NOW), Verdict::Reached);
    }

    #[test]
    fn every_cluster_instance_must_be_there() {
        let a = p(Status::Online, 0, 5_000);
        let b = p(Status::Stopping, 0, 0);
        let w = Duration::ZERO;
        assert!(matches!(
            judge(&[&a, &b], Want::Stopped, 0, w, NOW),
            Verdict::Pending(_)
        ));
        assert!(matches!(
            judge(&[&a, &b], Want::Online, 0, w, NOW),
            Verdict::Pending(_)
        ));
        let o = outcome("app", &[&a, &b], false, String::new());
        assert_eq!((o.status.as_str(), o.pids), ("stopping", vec![99]));
    }
}
