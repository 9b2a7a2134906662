//! Logging set-up shared by both binaries: `tracing` only, filter from `HOSTSHIFT_LOG`
//! (e.g. `HOSTSHIFT_LOG=hostshift=debug`), human text on a terminal, JSON lines on request.
//! Logs always go to stderr: stdout belongs to command results. With `HOSTSHIFT_LOG_SPANS=1`
//! every span (one per agent RPC, one per coordinator phase and cutover step) also logs a line
//! when it closes, with its busy and idle time: where a slow step spent its time.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `default_level` applies when `HOSTSHIFT_LOG` is unset.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("HOSTSHIFT_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: an agent's stderr is usually a file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_span_events(if span_times() {
            FmtSpan::CLOSE
        } else {
            FmtSpan::NONE
        });
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether `HOSTSHIFT_LOG_SPANS` asks for a line per closed span.
fn span_times() -> bool {
    std::env::var("HOSTSHIFT_LOG_SPANS").is_ok_and(|v| !v.is_empty() && v != "0")
}
