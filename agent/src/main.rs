//! `hostshift-agent`: parses flags, sets up logging, loads the config, binds, and calls
//! [`hostshift_agent::serve`]. Exit codes: 0 after a clean shutdown, 1 on a runtime failure,
//! 78 (`EX_CONFIG`) when the config is invalid — the systemd unit does not restart on 78.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostshift_agent::config::{AgentConfig, DEFAULT_PATH};
use hostshift_shared::exit;
use hostshift_shared::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// The hostshift agent: serves gRPC over mutual TLS on one host, acting only on what its config
/// declares.
///
/// Install it with systemd (see docs/install.md); check a config with `check-config`.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Config file.
    #[arg(long, short, env = "HOSTSHIFT_AGENT_CONFIG", default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT (the default).
    Serve {
        /// Write the bound address (`IP:PORT`) to this file once listening (useful with port 0).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate the config and exit: 0 when valid, 78 naming the file, line and key otherwise.
    CheckConfig,
    /// Back up everything the config declares into `[backup] dir`, on this host, then upload
    /// (`[backup.s3] upload = true`) and prune. For hostshift-backup.timer (docs/backups.md).
    /// Exit 0 when all of it worked, 1 otherwise.
    Backup,
}

/// Most malloc arenas glibc may create. By default it makes up to eight per core, one for each
/// thread that allocates while the others' are busy; memory freed in one arena is not reused by
/// the others, so the agent's many short-lived blocking threads (walks, hashing, tar) left its
/// peak resident memory well above what it held at any moment: in the `storage_scale` test
/// (50,000 files, debug build) two arenas took the new agent's peak from 104 to 81 MiB and the
/// old agent's from 90 to 76 MiB (docs/BENCHMARKS.md).
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`] (before any thread is started). Other C
/// libraries have no such setting and are left alone.
#[allow(unsafe_code)]
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists. A refusal (return value 0) leaves glibc's default, which is only less frugal.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

fn main() -> ExitCode {
    bound_malloc_arenas();
    let cli = Cli::parse();
    telemetry::init(
        "info",
        match cli.log_format {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        },
    );
    let config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("hostshift-agent: invalid config:\n{problems}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve { ready_file: None }) {
        Command::CheckConfig => {
            if let Err(e) = config.tls.files().server_config() {
                eprintln!(
                    "hostshift-agent: invalid config: {}: {e}",
                    cli.config.display()
                );
                return ExitCode::from(exit::CONFIG);
            }
            println!("{}: ok", cli.config.display());
            ExitCode::from(exit::OK)
        }
        Command::Backup => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(backup(config)),
            Err(e) => {
                eprintln!("hostshift-agent: cannot start the runtime: {e}");
                ExitCode::from(exit::FAILED)
            }
        },
        Command::Serve { ready_file } => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hostshift-agent: cannot start the runtime: {e}");
                    return ExitCode::from(exit::FAILED);
                }
            };
            rt.block_on(run(config, cli.config, ready_file))
        }
    }
}

async fn run(config: AgentConfig, path: PathBuf, ready_file: Option<PathBuf>) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "hostshift-agent: cannot listen on {} (key `listen` in {}): {e}",
                config.listen,
                path.display()
            );
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Some(f) = ready_file {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if let Err(e) = std::fs::write(&f, addr) {
            eprintln!("hostshift-agent: cannot write {}: {e}", f.display());
            return ExitCode::from(exit::FAILED);
        }
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match hostshift_agent::serve(config, path, listener, shutdown).await {
        Ok(()) => {
            tracing::info!("agent stopped");
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("hostshift-agent: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// `hostshift-agent backup`: the report on stdout, failures on stderr.
async fn backup(config: AgentConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match hostshift_agent::backup::run_local(&config, &shutdown).await {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            ExitCode::from(if report.ok { exit::OK } else { exit::FAILED })
        }
        Err(e) => {
            eprintln!("hostshift-agent backup: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// SIGTERM or SIGINT → cancel.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
