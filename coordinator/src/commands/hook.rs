//! `hostshift hook list|run`: hooks an agent's config declares, run by name, output streamed.

use std::io::Write;

use clap::{Args, Subcommand};
use hostshift_proto::v1::{ListHooksRequest, RunHookRequest, hook_event::Event};
use serde_json::json;

use crate::cli::{Global, PlanArg};
use crate::client;
use crate::error::{CliError, CliResult, failed};
use crate::plan::Side;

/// Hooks.
#[derive(Args)]
pub struct HookCmd {
    #[command(subcommand)]
    cmd: HookSub,
    #[command(flatten)]
    plan: PlanArg,
    /// Which host's agent.
    #[arg(long, value_enum, global = true, default_value = "new")]
    host: Side,
}

#[derive(Subcommand)]
enum HookSub {
    /// List the hooks the agent's config declares.
    List,
    /// Run a hook by name; its output streams here; the exit status is the hook's verdict.
    Run {
        /// The hook's name in the agent's config (`[hooks.<name>]`).
        name: String,
    },
}

/// Runs `hook ...`.
///
/// # Errors
/// Plan errors, an unreachable agent, an unknown hook, or a hook that failed (exit 1).
pub async fn run(g: &Global, c: HookCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let agent = client::connect(&plan, c.host).await.map_err(failed)?;
    match c.cmd {
        HookSub::List => {
            let hooks = agent
                .hooks()
                .list(client::request(ListHooksRequest {}))
                .await
                .map_err(|s| failed(anyhow::anyhow!(client::explain_status(&s))))?
                .into_inner()
                .hooks;
            if g.json {
                crate::output::print_json(&json!(hooks.iter().map(|h| json!({"name": h.name, "description": h.description, "timeout_secs": h.timeout_secs})).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = hooks
                    .iter()
                    .map(|h| {
                        vec![
                            h.name.clone(),
                            format!("{} s", h.timeout_secs),
                            h.description.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::output::table(&["HOOK", "TIMEOUT", "DESCRIPTION"], &rows)
                );
            }
            Ok(())
        }
        HookSub::Run { name } => {
            let mut stream = agent
                .hooks()
                .run(RunHookRequest { name: name.clone() })
                .await
                .map_err(|s| {
                    crate::error::from_status(
                        &s,
                        anyhow::anyhow!(
                            "hook {name} on {}: {}",
                            c.host,
                            client::explain_status(&s)
                        ),
                    )
                })?
                .into_inner();
            let mut exit = None;
            loop {
                let ev = stream.message().await.map_err(|s| {
                    crate::error::from_status(
                        &s,
                        anyhow::anyhow!(
                            "hook {name} on {}: {}",
                            c.host,
                            client::explain_status(&s)
                        ),
                    )
                })?;
                let Some(ev) = ev else { break };
                match ev.event {
                    // With --json, the hook's output goes to stderr so stdout stays one document.
                    Some(Event::Stdout(b)) if !g.json => {
                        let _ = std::io::stdout().write_all(&b);
                    }
                    Some(Event::Stdout(b) | Event::Stderr(b)) => {
                        let _ = std::io::stderr().write_all(&b);
                    }
                    Some(Event::Exit(x)) => exit = Some(x),
                    None => {}
                }
            }
            let x = exit.ok_or_else(|| {
                failed(anyhow::anyhow!(
                    "hook {name}: the stream ended without an exit status"
                ))
            })?;
            if g.json {
                crate::output::print_json(
                    &json!({"hook": name, "host": c.host, "code": x.code, "signal": x.signal, "timed_out": x.timed_out, "duration_ms": x.duration_ms}),
                );
            }
            if x.code == 0 {
                Ok(())
            } else {
                let why = if x.timed_out {
                    "timed out".to_string()
                } else if x.code < 0 {
                    format!("was killed by signal {}", x.signal)
                } else {
                    format!("exited with {}", x.code)
                };
                Err(CliError::Failed(anyhow::anyhow!(
                    "hook {name} on the {} host {why}",
                    c.host
                )))
            }
        }
    }
}
