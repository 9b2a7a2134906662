//! The command line: global flags, the command tree, and dispatch. Each command lives in its
//! own file under `commands/`; help text comes from the doc comments below.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostshift_shared::telemetry::{self, LogFormat};

use crate::commands;
use crate::error::{CliError, CliResult};

/// Move a live app host (PostgreSQL, PM2 apps, nginx, storage, config files) to a new machine,
/// with checksums, a write-freeze of seconds, and rollback.
#[derive(Parser)]
#[command(name = "hostshift", version, about, long_about, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
A typical move:
  hostshift certs init --agent old=10.0.0.5 --agent new=10.0.0.6
  hostshift plan init            # then edit plan.toml
  hostshift plan check
  hostshift check                # preflight both hosts
  hostshift backup --host old    # take a backup on the old host
  hostshift sync                 # copy everything (again: only what changed)
  hostshift verify               # prove equality
  hostshift cutover --dry-run    # the gates only
  hostshift cutover --yes        # freeze, delta, prove, switch, verify (undone on failure)
  hostshift rollback --yes       # back to the old host (within the window: nothing lost)
  hostshift finish --yes         # close the rollback window when confident
Try it first on two throwaway local hosts: hostshift rehearse

Exit codes: 0 ok; 1 the operation failed and the old host is untouched;
2 usage or plan error; 3 operator action needed (the message says what to do).
Logs: HOSTSHIFT_LOG=debug (stderr). Docs: docs/README.md";

/// Flags every command takes.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Machine-readable result on stdout (one JSON document); logs stay on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less logging on stderr (errors only).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Answer yes to every confirmation (for scripts).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
}

/// The `--plan` flag shared by commands that read a plan.
#[derive(Args, Clone, Debug)]
pub struct PlanArg {
    /// The plan file.
    #[arg(
        long,
        short,
        env = "HOSTSHIFT_PLAN",
        default_value = "plan.toml",
        global = true
    )]
    pub plan: PathBuf,
}

/// Commands.
#[derive(Subcommand)]
pub enum Command {
    /// Create the migration CA and the certificates for agents and the coordinator.
    Certs(commands::certs::CertsCmd),
    /// Write a commented plan template, or validate a plan.
    Plan(commands::plan::PlanCmd),
    /// Preflight both hosts: reachability over mutual TLS, versions, tools, databases, storage,
    /// permissions, free disk, baseline row counts. Changes nothing.
    Check(commands::check::CheckCmd),
    /// List or run the hooks an agent's config declares.
    Hook(commands::hook::HookCmd),
    /// Test or reload a host's nginx, or switch its site into maintenance (503 + Retry-After,
    /// health paths still pass) and back to the original, byte for byte.
    Nginx(commands::nginx::NginxCmd),
    /// Run the plan's [[health]] HTTP checks where each says: on the old or new host (through
    /// its agent) or from here. Exit 1 when any fails.
    Health(commands::health::HealthCmd),
    /// Database statistics of a host: sizes per table, row estimates, sessions, cache hit ratio.
    Db(commands::db::DbCmd),
    /// List, start, stop, restart, reload or save the PM2 apps an agent's config declares,
    /// waiting until they really are online or stopped (crash loops fail, by app name).
    Pm2(commands::pm2::Pm2Cmd),
    /// Get, set or unset keys of a `.env` file an agent's config declares (atomic, secrets
    /// redacted in the diff), optionally restarting a PM2 app so it runs with the new values.
    Env(commands::env::EnvCmd),
    /// Backups made ON a host by its agent (data never crosses this machine): each database as
    /// `pg_dump -Fc`, each storage tree as .tar.gz, each config file, with a manifest of SHA-256
    /// digests. Also list, verify, restore (where the host's [allow] permits), prune, upload to S3.
    Backup(commands::backup::BackupCmd),
    /// Rehearse the whole move — check, backup, sync, verify, cutover — on two throwaway hosts on
    /// this machine, then tear them down (needs root and the PostgreSQL server binaries; loopback
    /// only). With --plan: against the real hosts, into scratch targets, never freezing or
    /// switching anything.
    Rehearse(commands::rehearse::RehearseCmd),
    /// Copy the plan's config files, storage trees and databases from the old host to the new
    /// one while the old keeps serving. Only what differs travels; every stream is SHA-256
    /// checked before anything is committed; safe to run again (it resumes).
    Sync(commands::sync::SyncCmd),
    /// Keep the new host's databases current by logical decoding: start (slot on the old host,
    /// sync, follower on the new host), status (lag, WAL retained), stop, cleanup.
    Follow(commands::follow::FollowCmd),
    /// Move traffic to the new host: gates, write freeze on the old host, final delta sync, proof
    /// of equality, traffic switch, verification — journaled, undone on any failure.
    Cutover(commands::cutover::CutoverCmd),
    /// Undo a cutover: traffic back to the old host and its write freeze lifted.
    Rollback(commands::cutover::RollbackCmd),
    /// Lift the write freeze an earlier cutover left on one host (maintenance page, stopped
    /// apps, read-only databases) without moving traffic: the step before syncing into it on
    /// the way back of a blue/green swap.
    Unfreeze(commands::unfreeze::UnfreezeCmd),
    /// Where the migration stands, from the journal: last sync and verify, the cutover's steps,
    /// whether the old host is frozen.
    Status(commands::cutover::StatusCmd),
    /// The rollback window after a cutover: since when the old host follows the new one, the
    /// follower's lag, the WAL its slot keeps on the new host.
    Window(commands::finish::WindowCmd),
    /// Close the rollback window: stop the old host's follower, drop the slots; the old host
    /// stays frozen (ready to be decommissioned).
    Finish(commands::finish::FinishCmd),
    /// Prove the new host holds what the old one holds: every file re-hashed on both sides,
    /// config files compared after the plan's overrides, every table's rows and content
    /// fingerprint. Read-only; exit 1 naming what differs.
    Verify(commands::verify::VerifyCmd),
}

/// Parses flags, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // The subcommand names the span every log event of this run belongs to.
    let command = matches.subcommand_name().unwrap_or("hostshift").to_owned();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let level = if cli.global.quiet {
        "error"
    } else {
        match cli.global.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    telemetry::init(level, LogFormat::Text);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostshift: cannot start the runtime: {e}");
            return ExitCode::from(hostshift_shared::exit::FAILED);
        }
    };
    let json = cli.global.json;
    let span = tracing::info_span!("command", name = %command);
    let result = rt.block_on(tracing::Instrument::instrument(run(cli), span));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            // `--json` promises one document on stdout, also when the command failed before
            // it had one (an agent unreachable, a bad plan): scripts read `ok` and `error`.
            if json && !crate::output::json_printed() {
                crate::output::print_json(&serde_json::json!({
                    "ok": false,
                    "error": format!("{:#}", e.error()),
                    "exit_code": e.code(),
                }));
            }
            ExitCode::from(e.code())
        }
    }
}

fn report(e: &CliError) {
    let kind = match e {
        CliError::Usage(_) => "error",
        CliError::Failed(_) => "failed",
        CliError::OperatorAction(_) => "ACTION NEEDED",
        CliError::NothingToDo(_) => "nothing to do",
        CliError::CouldNotCompare(_) => "could not compare",
    };
    eprintln!(
        "hostshift: {kind}: {}",
        crate::output::printable(&format!("{:#}", e.error()))
    );
}

/// Runs one parsed command.
///
/// # Errors
/// The command's [`CliError`].
pub async fn run(cli: Cli) -> CliResult {
    let g = cli.global;
    match cli.command {
        Command::Certs(c) => commands::certs::run(&g, c),
        Command::Plan(c) => commands::plan::run(&g, c),
        Command::Check(c) => commands::check::run(&g, c).await,
        Command::Hook(c) => commands::hook::run(&g, c).await,
        Command::Nginx(c) => commands::nginx::run(&g, c).await,
        Command::Health(c) => commands::health::run(&g, c).await,
        Command::Db(c) => commands::db::run(&g, c).await,
        Command::Pm2(c) => commands::pm2::run(&g, c).await,
        Command::Env(c) => commands::env::run(&g, c).await,
        Command::Backup(c) => commands::backup::run(&g, c).await,
        Command::Rehearse(c) => Box::pin(commands::rehearse::run(&g, c)).await,
        Command::Sync(c) => commands::sync::run(&g, c).await,
        Command::Verify(c) => commands::verify::run(&g, c).await,
        Command::Follow(c) => commands::follow::run(&g, c).await,
        // Boxed: the cutover's future nests the sync's and the AWS SDK's deeply.
        Command::Cutover(c) => Box::pin(commands::cutover::run(&g, c)).await,
        Command::Rollback(c) => Box::pin(commands::cutover::rollback(&g, c)).await,
        Command::Status(c) => commands::cutover::status(&g, c).await,
        Command::Unfreeze(c) => commands::unfreeze::run(&g, c).await,
        Command::Window(c) => commands::finish::status(&g, c).await,
        Command::Finish(c) => commands::finish::finish(&g, c).await,
    }
}
