//! `hostshift nginx test|reload|maintenance on|off|status --host old|new`: the nginx in front of
//! a host's apps, through that host's agent (which acts only on the `[nginx]` of its own config).

use clap::{Args, Subcommand};
use hostshift_proto::v1::{
    MaintenanceOffRequest, MaintenanceOnRequest, MaintenanceResponse, MaintenanceStatusRequest,
    NginxReloadRequest, NginxTestRequest,
};
use serde_json::json;

use super::confirm;
use crate::cli::{Global, PlanArg};
use crate::client;
use crate::error::{CliError, CliResult, failed, usage};
use crate::plan::Side;

/// nginx on one host.
#[derive(Args)]
#[command(after_help = "\
Examples:
  hostshift nginx test --host new
  hostshift nginx reload --host new
  hostshift nginx maintenance on --host old --yes
  hostshift nginx maintenance on --host old --dry-run   # print the site it would write
  hostshift nginx maintenance off --host old

Everything but `test`, `maintenance status` and `--dry-run` needs `control_services = true` in
[allow] of that host's agent config.")]
pub struct NginxCmd {
    #[command(subcommand)]
    cmd: NginxSub,
    #[command(flatten)]
    plan: PlanArg,
    /// Which host's nginx (required).
    #[arg(long, value_enum, global = true)]
    host: Option<Side>,
}

#[derive(Subcommand)]
enum NginxSub {
    /// Run `nginx -t` on the host and show nginx's verdict; exit 1 when it rejects the config.
    Test,
    /// Test the config, then `nginx -s reload`. A config that fails the test is not reloaded
    /// (exit 1, nginx's message shown) and the running nginx keeps serving its old config.
    Reload,
    /// Switch the host's site into or out of maintenance mode.
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceSub,
    },
}

#[derive(Subcommand)]
enum MaintenanceSub {
    /// Every request gets 503 with `Retry-After` and a small page, except the pass paths (the
    /// plan's `[nginx] maintenance_pass`, e.g. /health), which still reach the app. The agent
    /// keeps the original site file and tests the new one before reloading; running it again
    /// keeps the first saved original.
    On {
        /// A path that still reaches the app (repeatable); replaces the plan's
        /// `[nginx] maintenance_pass`.
        #[arg(long = "pass", value_name = "PATH")]
        pass: Vec<String>,
        /// Seconds sent in the `Retry-After` header.
        #[arg(long, default_value_t = 120)]
        retry_after: u32,
        /// Print the maintenance site that would be written; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Put the original site file back byte for byte, test and reload. Nothing to do when
    /// maintenance is not on.
    Off,
    /// Whether maintenance is on, since when, and which paths pass.
    Status,
}

fn rpc_error(what: &str, side: Side, s: &tonic::Status) -> CliError {
    crate::error::from_status(
        s,
        anyhow::anyhow!("{what} on the {side} host: {}", client::explain_status(s)),
    )
}

/// Asks before taking a site down, unless `--yes`; without a terminal to ask on, refuses.
fn maintenance_json(side: Side, r: &MaintenanceResponse) -> serde_json::Value {
    json!({
        "host": side,
        "on": r.on,
        "changed": r.changed,
        "site": r.site,
        "saved_original": r.saved_original,
        "original_sha256": r.original_sha256,
        "site_sha256": r.site_sha256,
        "pass_paths": r.pass_paths,
        "retry_after_secs": r.retry_after_secs,
        "since_unix": r.since_unix,
        "test_message": r.test_message,
    })
}

fn print_maintenance(side: Side, r: &MaintenanceResponse, status_only: bool) {
    if r.on {
        let change = if status_only {
            format!("since {}", ago(r.since_unix))
        } else if r.changed {
            "switched on".to_string()
        } else {
            "it already was; the saved original is kept".to_string()
        };
        println!("Maintenance ON on the {side} host ({change}): {}", r.site);
        let pass = if r.pass_paths.is_empty() {
            "none (every request gets the page)".to_string()
        } else {
            r.pass_paths.join(", ")
        };
        println!(
            "  every request: 503 + Retry-After: {} s, except: {pass}",
            r.retry_after_secs
        );
        println!(
            "  original saved in {} (sha256 {})",
            r.saved_original, r.original_sha256
        );
        println!("  undo with: hostshift nginx maintenance off --host {side}");
    } else if !status_only && (r.changed || !r.original_sha256.is_empty()) {
        println!(
            "Maintenance OFF on the {side} host: {} is the original again, byte for byte (sha256 {})",
            r.site, r.site_sha256
        );
        if !r.edited_copy.is_empty() {
            println!(
                "  WARNING: the site file was edited during maintenance; those edits are NOT in \
                 the restored original. The edited file is kept in {} on the {side} host: apply \
                 the edits again, then `hostshift nginx test --host {side}` and `reload`",
                r.edited_copy
            );
        }
    } else {
        println!("Maintenance is off on the {side} host ({})", r.site);
    }
}

/// "12 min ago" from unix seconds.
fn ago(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match now.saturating_sub(unix) {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

/// Runs `nginx ...`.
///
/// # Errors
/// Usage errors (no `--host`, no confirmation); failure (exit 1) with the agent's or nginx's
/// reason: unreachable agent, no `[nginx]` section, `control_services` not allowed, a config
/// that fails `nginx -t`, a reload nginx refuses.
pub async fn run(g: &Global, c: NginxCmd) -> CliResult {
    let side = c
        .host
        .ok_or_else(|| usage(anyhow::anyhow!("say which host: --host old or --host new")))?;
    let plan = super::load_plan(&c.plan.plan)?;
    if let NginxSub::Maintenance {
        action: MaintenanceSub::On { dry_run: false, .. },
    } = &c.cmd
    {
        confirm(
            g,
            &format!("Put the {side} host's site into maintenance (visitors get a 503 page)?"),
        )?;
    }
    let agent = client::connect(&plan, side).await.map_err(failed)?;
    let mut nginx = agent.nginx();
    match c.cmd {
        NginxSub::Test => {
            let t = nginx
                .test(client::request(NginxTestRequest {}))
                .await
                .map_err(|s| rpc_error("nginx -t", side, &s))?
                .into_inner();
            if g.json {
                crate::output::print_json(&json!({
                    "host": side, "ok": t.ok, "message": t.message,
                    "command": t.command, "duration_ms": t.duration_ms,
                }));
            } else if t.ok {
                println!("nginx on the {side} host accepts its configuration:");
                println!("{}", indent(&t.message));
            }
            if t.ok {
                Ok(())
            } else {
                Err(failed(anyhow::anyhow!(
                    "nginx on the {side} host rejects its configuration (`{}`):\n{}",
                    t.command,
                    indent(&t.message)
                )))
            }
        }
        NginxSub::Reload => {
            let r = nginx
                .reload(client::request(NginxReloadRequest {}))
                .await
                .map_err(|s| rpc_error("nginx reload", side, &s))?
                .into_inner();
            if g.json {
                crate::output::print_json(&json!({
                    "host": side, "reloaded": true, "test_message": r.test_message,
                }));
            } else {
                println!(
                    "nginx on the {side} host reloaded (the configuration passed `nginx -t` first):"
                );
                println!("{}", indent(&r.test_message));
            }
            Ok(())
        }
        NginxSub::Maintenance { action } => {
            let status_only = matches!(action, MaintenanceSub::Status);
            let r = match action {
                MaintenanceSub::On {
                    pass,
                    retry_after,
                    dry_run,
                } => {
                    let pass_paths = if pass.is_empty() {
                        plan.nginx.maintenance_pass.clone()
                    } else {
                        pass
                    };
                    let r = nginx
                        .maintenance_on(client::request(MaintenanceOnRequest {
                            pass_paths,
                            retry_after_secs: retry_after,
                            dry_run,
                        }))
                        .await
                        .map_err(|s| rpc_error("maintenance on", side, &s))?
                        .into_inner();
                    if dry_run {
                        if g.json {
                            let mut j = maintenance_json(side, &r);
                            j["dry_run"] = json!(true);
                            j["generated"] = json!(r.generated);
                            crate::output::print_json(&j);
                        } else {
                            eprintln!(
                                "hostshift: dry run: this is what {} on the {side} host would become (nothing was changed)",
                                r.site
                            );
                            print!("{}", r.generated);
                        }
                        return Ok(());
                    }
                    r
                }
                MaintenanceSub::Off => nginx
                    .maintenance_off(client::request(MaintenanceOffRequest {}))
                    .await
                    .map_err(|s| rpc_error("maintenance off", side, &s))?
                    .into_inner(),
                MaintenanceSub::Status => nginx
                    .maintenance_status(client::request(MaintenanceStatusRequest {}))
                    .await
                    .map_err(|s| rpc_error("maintenance status", side, &s))?
                    .into_inner(),
            };
            if g.json {
                crate::output::print_json(&maintenance_json(side, &r));
            } else {
                print_maintenance(side, &r, status_only);
            }
            Ok(())
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
