//! `hostshift health [--host old|new|coordinator]`: runs the plan's `[[health]]` checks where each
//! one says (`from`): on the old or new host through its agent — so `localhost` is that host's
//! app — or here, for public URLs. The runner is the library's [`crate::health::run_checks`],
//! which the cutover shares; this file only parses flags and prints.

use clap::{Args, ValueEnum};

use crate::cli::{Global, PlanArg};
use crate::error::{CliResult, failed, usage};
use crate::health::run_checks;
use crate::output::{print_json, table};
use crate::plan::CheckFrom;

/// Health checks.
#[derive(Args)]
#[command(after_help = "\
Examples:
  hostshift health                       # every [[health]] check, each where its `from` says
  hostshift health --host new            # only the checks the new host's agent runs
  hostshift health --host coordinator --json

A check passes when one of its `retries` attempts gets `expect_status` (and, when set, a body
containing `body_contains` and a JSON body with `json_field`). The pause between attempts starts
at 0.5 s and doubles. Exit 1 when any check fails.")]
pub struct HealthCmd {
    #[command(flatten)]
    plan: PlanArg,
    /// Only the checks run from here (the plan's `from`); default: all of them.
    #[arg(long, value_enum)]
    host: Option<Where>,
    /// Only the checks with this name (repeatable).
    #[arg(long)]
    name: Vec<String>,
}

/// Where checks run (the plan's `from`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Where {
    /// On the old host, by its agent.
    Old,
    /// On the new host, by its agent.
    New,
    /// Here, by the coordinator.
    Coordinator,
}

impl From<Where> for CheckFrom {
    fn from(w: Where) -> Self {
        match w {
            Where::Old => CheckFrom::Old,
            Where::New => CheckFrom::New,
            Where::Coordinator => CheckFrom::Coordinator,
        }
    }
}

fn from_word(f: CheckFrom) -> &'static str {
    match f {
        CheckFrom::Old => "old",
        CheckFrom::New => "new",
        CheckFrom::Coordinator => "coordinator",
    }
}

/// Runs `health`.
///
/// # Errors
/// Usage error for an invalid plan or when no check matches; failure (exit 1) when any check
/// fails, naming them.
pub async fn run(g: &Global, c: HealthCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    let only = c.host.map(CheckFrom::from);
    let outcomes = run_checks(&plan, only, &c.name).await;
    if outcomes.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "no [[health]] check in {} matches{}{}",
            plan.path.display(),
            only.map(|f| format!(" from = \"{}\"", from_word(f)))
                .unwrap_or_default(),
            if c.name.is_empty() {
                String::new()
            } else {
                format!(" name in {:?}", c.name)
            }
        )));
    }
    let failing: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.result.ok)
        .map(|o| o.result.name.as_str())
        .collect();
    if g.json {
        print_json(&serde_json::json!({ "ok": failing.is_empty(), "checks": outcomes }));
    } else {
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .map(|o| {
                let r = &o.result;
                vec![
                    r.name.clone(),
                    from_word(o.from).into(),
                    if r.ok { "ok" } else { "FAIL" }.into(),
                    r.status.map_or("-".into(), |s| s.to_string()),
                    r.attempts.to_string(),
                    format!("{} ms", r.elapsed_ms),
                    r.detail.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "CHECK", "FROM", "RESULT", "STATUS", "ATTEMPTS", "TIME", "DETAIL"
                ],
                &rows
            )
        );
    }
    if failing.is_empty() {
        Ok(())
    } else {
        Err(failed(anyhow::anyhow!(
            "{} of {} health checks failed: {}",
            failing.len(),
            outcomes.len(),
            failing.join(", ")
        )))
    }
}
