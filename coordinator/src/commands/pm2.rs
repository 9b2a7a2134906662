//! `hostshift pm2 list|start|stop|restart|reload|save --host old|new`: the PM2 apps an agent's
//! config declares, controlled through that agent. Each action waits until the apps really are
//! online (and stay up) or stopped; a crash-looping app fails the command, by name.

use std::time::Duration;

use clap::{Args, Subcommand};
use hostshift_proto::v1::{
    Pm2ActionRequest, Pm2ActionResponse, Pm2ListRequest, Pm2ListResponse, Pm2SaveRequest,
};
use serde_json::{Value, json};

use crate::cli::{Global, PlanArg};
use crate::client::{self, Agent};
use crate::error::{CliResult, failed};
use crate::output;
use crate::plan::Side;

/// PM2 apps on one host.
#[derive(Args)]
#[command(after_help = AFTER_HELP)]
pub struct Pm2Cmd {
    #[command(subcommand)]
    cmd: Pm2Sub,
    #[command(flatten)]
    plan: PlanArg,
}

const AFTER_HELP: &str = "\
Only apps declared in the agent's `[pm2] apps` can be controlled, and only when its config has
`[allow] control_services = true`; `list` needs neither. PM2 runs as the agent config's
`[pm2] user` with its `home` as PM2_HOME. Process environments are never shown: they hold secrets.

Examples:
  hostshift pm2 list --host old
  hostshift pm2 start --host new                     # every declared app
  hostshift pm2 reload --host new backend --update-env
  hostshift pm2 stop --host old backend --wait 60
  hostshift pm2 save --host new

Exit codes: 0 every app reached the state; 1 refused, or an app did not get there (crash loop,
deadline) — the message names it; 2 usage or plan error.";

/// `--host`, required: these commands act on a live host, so there is no default side.
#[derive(Args)]
struct HostArg {
    /// Which host's agent: `old` or `new`.
    #[arg(long, value_enum)]
    host: Side,
}

#[derive(Args)]
struct AppsArgs {
    #[command(flatten)]
    target: HostArg,
    /// PM2 app names from the agent's `[pm2] apps`; none means every declared app.
    #[arg(value_name = "APP")]
    apps: Vec<String>,
    /// Seconds to wait for the requested state. A crash loop is reported as soon as it is seen.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u32,
}

#[derive(Args)]
struct RestartArgs {
    #[command(flatten)]
    apps: AppsArgs,
    /// Give the apps a fresh environment: pm2 re-reads the ecosystem file (`[pm2] ecosystem` in
    /// the agent's config), so an env block that reads a `.env` file picks up its new values.
    /// Without it PM2 keeps each app's old environment.
    #[arg(long)]
    update_env: bool,
}

#[derive(Subcommand)]
enum Pm2Sub {
    /// Every PM2 process: name, id, status, pid, restarts, uptime, memory, CPU (never the
    /// environment), and declared apps PM2 does not know. Changes nothing, and starts no PM2
    /// daemon when none runs.
    List(HostArg),
    /// Start apps (from the agent's ecosystem file when its config names one) and wait until
    /// they are online and stable. Apps already online are left alone.
    Start(AppsArgs),
    /// Stop apps and wait until they are stopped.
    Stop(AppsArgs),
    /// Restart apps (stop, then start) and wait until they are online and stable.
    Restart(RestartArgs),
    /// Reload apps (zero-downtime in cluster mode, a restart in fork mode) and wait until they
    /// are online and stable.
    Reload(RestartArgs),
    /// `pm2 save`: the current process list becomes the one PM2 resurrects at boot.
    Save(HostArg),
}

/// Runs `pm2 ...`.
///
/// # Errors
/// Plan errors, an unreachable agent, a refusal, or an app that did not reach the state (exit 1).
pub async fn run(g: &Global, c: Pm2Cmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let (host, action) = match &c.cmd {
        Pm2Sub::List(h) => (h.host, "list"),
        Pm2Sub::Save(h) => (h.host, "save"),
        Pm2Sub::Start(a) => (a.target.host, "start"),
        Pm2Sub::Stop(a) => (a.target.host, "stop"),
        Pm2Sub::Restart(r) => (r.apps.target.host, "restart"),
        Pm2Sub::Reload(r) => (r.apps.target.host, "reload"),
    };
    let agent = client::connect(&plan, host).await.map_err(failed)?;
    let refused = |s: tonic::Status| {
        crate::error::from_status(
            &s,
            anyhow::anyhow!(
                "pm2 {action} on the {host} host: {}",
                client::explain_status(&s)
            ),
        )
    };
    match c.cmd {
        Pm2Sub::List(_) => {
            let list = agent
                .pm2()
                .list(client::request(Pm2ListRequest {}))
                .await
                .map_err(refused)?
                .into_inner();
            print_list(g, host, &list);
            Ok(())
        }
        Pm2Sub::Save(_) => {
            let saved = agent
                .pm2()
                .save(client::request(Pm2SaveRequest {}))
                .await
                .map_err(refused)?
                .into_inner();
            if g.json {
                output::print_json(
                    &json!({"host": host, "dump_path": saved.dump_path, "apps": saved.apps}),
                );
            } else {
                println!(
                    "saved {} process(es) to {} on the {host} host: {}",
                    saved.apps.len(),
                    saved.dump_path,
                    saved.apps.join(", ")
                );
            }
            Ok(())
        }
        Pm2Sub::Start(a) => act(g, &agent, host, "start", a, false).await,
        Pm2Sub::Stop(a) => act(g, &agent, host, "stop", a, false).await,
        Pm2Sub::Restart(r) => act(g, &agent, host, "restart", r.apps, r.update_env).await,
        Pm2Sub::Reload(r) => act(g, &agent, host, "reload", r.apps, r.update_env).await,
    }
}

async fn act(
    g: &Global,
    agent: &Agent,
    host: Side,
    action: &str,
    a: AppsArgs,
    update_env: bool,
) -> CliResult {
    let req = Pm2ActionRequest {
        apps: a.apps,
        update_env,
        wait_secs: a.wait,
    };
    let mut request = tonic::Request::new(req);
    // The agent waits up to `wait` for the apps; pm2 commands themselves get the rest.
    request.set_timeout(Duration::from_secs(u64::from(a.wait.max(30))) + client::RPC_TIMEOUT);
    let mut pm2 = agent.pm2();
    let resp = match action {
        "start" => pm2.start(request).await,
        "stop" => pm2.stop(request).await,
        "restart" => pm2.restart(request).await,
        _ => pm2.reload(request).await,
    }
    .map_err(|s| {
        crate::error::from_status(
            &s,
            anyhow::anyhow!(
                "pm2 {action} on the {host} host: {}",
                client::explain_status(&s)
            ),
        )
    })?
    .into_inner();
    if g.json {
        let mut j = action_json(&resp);
        j["host"] = json!(host);
        output::print_json(&j);
    } else {
        print!("{}", action_table(&resp));
    }
    match action_failure(&resp) {
        None => Ok(()),
        Some(why) => Err(failed(anyhow::anyhow!(
            "pm2 {action} on the {host} host: {why}"
        ))),
    }
}

/// An action's apps as a table: APP, STATUS, PIDS, RESTARTS, RESULT.
pub fn action_table(r: &Pm2ActionResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .apps
        .iter()
        .map(|a| {
            let pids = if a.pids.is_empty() {
                "-".to_string()
            } else {
                a.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let result = match (a.ok, a.detail.is_empty()) {
                (true, true) => "ok".to_string(),
                (true, false) => format!("ok ({})", a.detail),
                (false, _) => format!("FAILED: {}", a.detail),
            };
            vec![
                a.name.clone(),
                a.status.clone(),
                pids,
                a.restarts.to_string(),
                result,
            ]
        })
        .collect();
    output::table(&["APP", "STATUS", "PIDS", "RESTARTS", "RESULT"], &rows)
}

/// An action's result as JSON.
pub fn action_json(r: &Pm2ActionResponse) -> Value {
    json!({
        "action": r.action,
        "ok": r.ok,
        "duration_ms": r.duration_ms,
        "commands": r.commands,
        "apps": r.apps.iter().map(|a| json!({
            "name": a.name, "ok": a.ok, "status": a.status, "pids": a.pids,
            "restarts": a.restarts, "detail": a.detail,
        })).collect::<Vec<_>>(),
    })
}

/// Why an action failed, naming each failed app with its restart count; `None` when it did not.
pub fn action_failure(r: &Pm2ActionResponse) -> Option<String> {
    let failed: Vec<String> = r
        .apps
        .iter()
        .filter(|a| !a.ok)
        .map(|a| {
            format!(
                "{} ({}, {} restarts): {}",
                a.name, a.status, a.restarts, a.detail
            )
        })
        .collect();
    if failed.is_empty() && r.ok {
        None
    } else if failed.is_empty() {
        Some("the agent reports a failure without naming an app".into())
    } else {
        Some(failed.join("; "))
    }
}

fn print_list(g: &Global, host: Side, l: &Pm2ListResponse) {
    if g.json {
        output::print_json(&json!({
            "host": host,
            "daemon_running": l.daemon_running,
            "missing": l.missing,
            "processes": l.processes.iter().map(|p| json!({
                "name": p.name, "pm_id": p.pm_id, "status": p.status, "pid": p.pid,
                "restarts": p.restarts, "uptime_ms": p.uptime_ms, "memory_bytes": p.memory_bytes,
                "cpu_percent": p.cpu_percent, "exec_mode": p.exec_mode, "declared": p.declared,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    if !l.daemon_running {
        println!("no PM2 daemon runs for the {host} agent's PM2_HOME: nothing to list");
    } else {
        let rows: Vec<Vec<String>> = l
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.pm_id.to_string(),
                    p.status.clone(),
                    if p.pid == 0 {
                        "-".into()
                    } else {
                        p.pid.to_string()
                    },
                    p.restarts.to_string(),
                    uptime(p.uptime_ms),
                    output::bytes(p.memory_bytes),
                    format!("{:.0}%", p.cpu_percent),
                    p.exec_mode.clone(),
                    if p.declared { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &[
                    "APP", "ID", "STATUS", "PID", "RESTARTS", "UPTIME", "MEMORY", "CPU", "MODE",
                    "DECLARED"
                ],
                &rows
            )
        );
    }
    if !l.missing.is_empty() {
        println!("declared but not in PM2: {}", l.missing.join(", "));
    }
}

/// `0s`, `42s`, `3m 5s`, `2h 10m`, `4d 3h`.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostshift_proto::v1::Pm2AppOutcome;

    #[test]
    fn uptime_is_short_and_human() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(61_000), "1m 1s");
        assert_eq!(uptime(7_260_000), "2h 1m");
        assert_eq!(uptime(90_000_000), "1d 1h");
    }

    #[test]
    fn a_failed_action_names_each_failed_app_and_its_restarts() {
        let r = Pm2ActionResponse {
            action: "start".into(),
            ok: false,
            apps: vec![
                Pm2AppOutcome {
                    name: "backend".into(),
                    ok: true,
                    status: "online".into(),
                    pids: vec![7],
                    restarts: 0,
                    detail: String::new(),
                },
                Pm2AppOutcome {
                    name: "crashy".into(),
                    ok: false,
                    status: "errored".into(),
                    pids: vec![],
                    restarts: 15,
                    detail: "crash-looping".into(),
                },
            ],
            commands: vec![],
            duration_ms: 1,
        };
        let why = action_failure(&r).expect("failure");
        assert!(
            why.contains("crashy (errored, 15 restarts): crash-looping"),
            "{why}"
        );
        assert!(!why.contains("backend"), "{why}");
        let t = action_table(&r);
        assert!(
            t.contains("FAILED: crash-looping") && t.contains("backend  online"),
            "{t}"
        );
    }
}
