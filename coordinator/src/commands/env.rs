//! `hostshift env get|set|unset --host old|new --file NAME`: reads and edits a `.env` file an
//! agent's config declares, shows the change with secrets redacted, and optionally restarts or
//! reloads a PM2 app so that it runs with the new values.

use std::time::Duration;

use clap::{Args, Subcommand};
use hostshift_proto::v1::env_change::Op;
use hostshift_proto::v1::{EnvApply, EnvChange, EnvEditRequest, EnvEditResponse, EnvGetRequest};
use serde_json::json;

use crate::cli::{Global, PlanArg};
use crate::client;
use crate::error::{CliError, CliResult, failed, usage};
use crate::output;
use crate::plan::Side;

/// `.env` files on one host.
#[derive(Args)]
#[command(after_help = AFTER_HELP)]
pub struct EnvCmd {
    #[command(subcommand)]
    cmd: EnvSub,
    #[command(flatten)]
    plan: PlanArg,
}

const AFTER_HELP: &str = "\
The file is named by its `[[files]] name` in the agent's config, never by path. Editing needs the
name in the agent's `[allow] write_files`; --restart/--reload also need
`[allow] control_services = true`, the app in `[pm2] apps`, and `[pm2] ecosystem`.

The edit is atomic (temporary file, fsync, rename) and keeps comments, blank lines, order, the
quoting of other lines, line endings, and the file's mode and owner. A key that is not in the file
is appended. Values of keys matching SECRET, PASSWORD, PASSWD, TOKEN, KEY, PRIVATE, CREDENTIAL,
DATABASE_URL or DSN are shown as ***** (get --show-secret shows them).

How new values reach the app: PM2 hands an app new environment values only from its ecosystem
file (`pm2 reload ECOSYSTEM --only APP --update-env` re-reads it, so an env block that reads the
.env gets the new values). A removed key would survive any reload, so when PM2 still hands it to
the app, the app is deleted from PM2 and started again from the ecosystem file. Afterwards the
agent checks that PM2 hands the app the file's values, and the command fails naming any key it
does not.

Examples:
  hostshift env get --host new --file backend-env
  hostshift env get --host new --file backend-env JWT_SECRET --show-secret
  hostshift env set --host new --file backend-env FEATURE_FLAG=on USE_POSTGRES=true --reload backend
  hostshift env unset --host new --file backend-env LEGACY_MODE --restart backend
  hostshift env set --host new --file backend-env PORT=3667 --dry-run";

#[derive(Args)]
struct FileArgs {
    /// Which host's agent: `old` or `new`.
    #[arg(long, value_enum)]
    host: Side,
    /// The file's name in the agent's config (`[[files]] name`), e.g. `backend-env`.
    #[arg(long, value_name = "NAME")]
    file: String,
}

#[derive(Args)]
struct ApplyArgs {
    /// Afterwards, restart this PM2 app (stop, then start) so that it runs with the new values.
    #[arg(long, value_name = "APP", conflicts_with = "reload")]
    restart: Option<String>,
    /// Afterwards, reload this PM2 app (zero-downtime in cluster mode) with the new values.
    #[arg(long, value_name = "APP")]
    reload: Option<String>,
    /// Seconds to wait for the app to be online and stable again.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u32,
    /// Show what would change; write nothing and restart nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum EnvSub {
    /// Show values as `KEY=VALUE` lines (every key when none is named); secrets as *****.
    Get {
        #[command(flatten)]
        file: FileArgs,
        /// Keys to show.
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        /// Show secret values in clear.
        #[arg(long)]
        show_secret: bool,
    },
    /// Set keys (`KEY=VALUE`, the value is everything after the first `=`); show the diff.
    Set {
        #[command(flatten)]
        file: FileArgs,
        /// `KEY=VALUE` pairs, applied in order.
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// Remove keys (every line that sets them); show the diff.
    Unset {
        #[command(flatten)]
        file: FileArgs,
        /// Keys to remove.
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        apply: ApplyArgs,
    },
}

/// Splits `KEY=VALUE` pairs. The error never repeats the argument: it may hold a secret.
fn parse_pairs(pairs: &[String]) -> Result<Vec<EnvChange>, CliError> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(EnvChange {
                key: k.to_string(),
                op: Some(Op::Set(v.to_string())),
            }),
            _ => Err(usage(anyhow::anyhow!(
                "argument {} of `env set` is not KEY=VALUE",
                i + 1
            ))),
        })
        .collect()
}

/// Runs `env ...`.
///
/// # Errors
/// Usage and plan errors (exit 2); an unreachable agent, a refusal, a missing key (get), or an
/// app that does not come back with the new values (exit 1).
pub async fn run(g: &Global, c: EnvCmd) -> CliResult {
    let plan = super::load_plan(&c.plan.plan)?;
    match c.cmd {
        EnvSub::Get {
            file,
            keys,
            show_secret,
        } => {
            let agent = client::connect(&plan, file.host).await.map_err(failed)?;
            let host = file.host;
            let r = agent
                .env_files()
                .get(client::request(EnvGetRequest {
                    file: file.file.clone(),
                    keys,
                    show_secrets: show_secret,
                }))
                .await
                .map_err(|s| {
                    crate::error::from_status(
                        &s,
                        anyhow::anyhow!(
                            "env get {} on the {host} host: {}",
                            file.file,
                            client::explain_status(&s)
                        ),
                    )
                })?
                .into_inner();
            if g.json {
                output::print_json(&json!({
                    "host": host, "file": r.file, "path": r.path,
                    "values": r.values.iter().map(|v| json!({
                        "key": v.key, "present": v.present, "value": v.value,
                        "secret": v.secret, "redacted": v.redacted,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for v in r.values.iter().filter(|v| v.present) {
                    println!("{}={}", v.key, v.value);
                }
            }
            let missing: Vec<&str> = r
                .values
                .iter()
                .filter(|v| !v.present)
                .map(|v| v.key.as_str())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(failed(anyhow::anyhow!(
                    "not set in {} ({}) on the {host} host: {}",
                    r.file,
                    r.path,
                    missing.join(", ")
                )))
            }
        }
        EnvSub::Set { file, pairs, apply } => {
            let changes = parse_pairs(&pairs)?;
            edit(g, &plan, file, changes, apply, "set").await
        }
        EnvSub::Unset { file, keys, apply } => {
            let changes = keys
                .into_iter()
                .map(|key| EnvChange {
                    key,
                    op: Some(Op::Unset(true)),
                })
                .collect();
            edit(g, &plan, file, changes, apply, "unset").await
        }
    }
}

async fn edit(
    g: &Global,
    plan: &crate::plan::Plan,
    file: FileArgs,
    changes: Vec<EnvChange>,
    apply: ApplyArgs,
    verb: &str,
) -> CliResult {
    let host = file.host;
    let (app, how) = match (apply.restart, apply.reload) {
        (Some(a), _) => (a, EnvApply::Restart),
        (None, Some(a)) => (a, EnvApply::Reload),
        (None, None) => (String::new(), EnvApply::Unspecified),
    };
    let agent = client::connect(plan, host).await.map_err(failed)?;
    let mut request = tonic::Request::new(EnvEditRequest {
        file: file.file.clone(),
        changes,
        dry_run: apply.dry_run,
        app: app.clone(),
        apply: how as i32,
        wait_secs: apply.wait,
    });
    request.set_timeout(Duration::from_secs(u64::from(apply.wait.max(30))) + client::RPC_TIMEOUT);
    let r = agent
        .env_files()
        .edit(request)
        .await
        .map_err(|s| {
            crate::error::from_status(
                &s,
                anyhow::anyhow!(
                    "env {verb} {} on the {host} host: {}",
                    file.file,
                    client::explain_status(&s)
                ),
            )
        })?
        .into_inner();
    if g.json {
        output::print_json(&json!({
            "host": host, "file": r.file, "path": r.path, "written": r.written,
            "dry_run": apply.dry_run,
            "changes": r.diff.iter().map(|d| json!({
                "key": d.key, "old": d.old_display, "new": d.new_display, "secret": d.secret,
            })).collect::<Vec<_>>(),
            "app": r.app.as_ref().map(super::pm2::action_json),
            "stale_keys": r.stale_keys,
            "notes": r.notes,
        }));
    } else {
        print_edit(host, &r, apply.dry_run);
    }
    edit_failure(host, &r).map_or(Ok(()), |why| Err(failed(anyhow::anyhow!(why))))
}

fn print_edit(host: Side, r: &EnvEditResponse, dry_run: bool) {
    let state = if dry_run {
        "dry run, nothing written"
    } else if r.written {
        "written"
    } else {
        "unchanged"
    };
    println!(
        "{} on the {host} host ({}): {} change(s), {state}",
        r.file,
        r.path,
        r.diff.len()
    );
    for d in &r.diff {
        println!("  {}: {} → {}", d.key, d.old_display, d.new_display);
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if let Some(a) = &r.app {
        println!("{} of the app:", a.action);
        print!("{}", super::pm2::action_table(a));
    }
}

/// Why the edit's restart failed: the app did not come back, or does not run with the values.
fn edit_failure(host: Side, r: &EnvEditResponse) -> Option<String> {
    let app = r.app.as_ref()?;
    if let Some(why) = super::pm2::action_failure(app) {
        return Some(format!(
            "{} was {} but the app {} on the {host} host did not come back: {why}",
            r.file,
            if r.written { "written" } else { "unchanged" },
            app.action
        ));
    }
    if r.stale_keys.is_empty() {
        return None;
    }
    let name = app.apps.first().map_or("the app", |a| a.name.as_str());
    Some(format!(
        "{name} on the {host} host does not run with the new value of {}: PM2 still hands it a different one. Does the env block in the ecosystem file read {}?",
        r.stale_keys.join(", "),
        r.path
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_and_errors_do_not_echo_the_argument() {
        let c = parse_pairs(&["A=b=c".into(), "E=".into()]).expect("pairs");
        assert_eq!(c[0].key, "A");
        assert_eq!(c[0].op, Some(Op::Set("b=c".into())));
        assert_eq!(c[1].op, Some(Op::Set(String::new())));
        let e = parse_pairs(&["OK=1".into(), "hunter2".into()]).expect_err("no =");
        let text = format!("{:#}", e.error());
        assert!(
            text.contains("argument 2") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(e.code(), hostshift_shared::exit::USAGE);
    }
}
